// Shared by the CPU kernels: argument checks at the C++ boundary and a vectorizable exp.
//
// The Python layer validates user input with friendly messages; these checks are the last line of
// defence so that a direct call of the registered op (torch.ops.synthcl_fast.*) can never read out
// of bounds, whatever shapes, strides or dtypes it is handed.
#pragma once

#include <ATen/ATen.h>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace synthcl_fast {

// Below this the logits (|s| <= 1/t) and the temperature gradient (~ 1/t^2) leave fp32's range.
// Mirrored by synthcl_fast/_validation.py MIN_TEMPERATURE.
constexpr double kMinTemperature = 1e-6;

inline void check_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, name, " must be a 2-D tensor (rows, dim), got ", t.dim(), " dimensions");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must be floating point, got ", t.scalar_type());
  TORCH_CHECK(t.size(0) > 0 && t.size(1) > 0, name, " must not be empty, got shape ", t.sizes());
}

inline void check_vector(const at::Tensor& t, const char* name, int64_t length, at::ScalarType dtype) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == length, name, " must have shape (", length, ",), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ", t.scalar_type());
}

inline void check_scalar(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.numel() == 1 && at::isFloatingType(t.scalar_type()), name,
              " must be a floating-point tensor with one element, got shape ", t.sizes(), " and dtype ",
              t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but the features are on ", ref.device());
}

// Outputs are allocated uninitialized. With SYNTHCL_FAST_POISON_OUTPUTS=1 (set by the test suite) they
// are filled with NaN (integers: the lowest value) first, so an element a kernel forgets to write shows.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  const char* poison = std::getenv("SYNTHCL_FAST_POISON_OUTPUTS");
  if (poison != nullptr && poison[0] == '1') {
    if (at::isFloatingType(out.scalar_type())) out.fill_(std::numeric_limits<double>::quiet_NaN());
    else out.fill_(std::numeric_limits<int32_t>::lowest());
  }
  return out;
}

// exp(x) for x <= 0 (every caller subtracts a running max first). Cephes' expf: x = n ln2 + r with
// |r| <= ln2/2, exp(r) by a degree-6 polynomial (relative error ~1e-7), 2^n through the exponent bits.
// Branch-free and written with plain arithmetic so that GCC vectorizes the loops that call it.
// Inputs below -87 return ~1e-38 rather than 0; callers that need an exact 0 (the excluded self pair)
// write it explicitly.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float rounding = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float n = (x * 1.44269504088896341f + rounding) - rounding;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline double exp_nonpositive(double x) { return std::exp(x); }

}  // namespace synthcl_fast
