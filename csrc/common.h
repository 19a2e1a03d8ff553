// Shared by the CPU and CUDA kernels: the ops' integer codes, argument checks at the C++ boundary, and
// (CPU) a vectorizable exp.
//
// The Python layer validates user input with friendly messages; these checks are the last line of
// defence so that a direct call of the registered op (torch.ops.synthcl_fast.*) can never read out
// of bounds, whatever shapes, strides or dtypes it is handed.
#pragma once

#include <ATen/ATen.h>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace synthcl_fast {

// Below this the logits (|s| <= 1/t) and the temperature gradient (~ 1/t^2) leave fp32's range.
// Mirrored by synthcl_fast/reference.py MIN_TEMPERATURE (below it the results are NaN, on every backend).
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

// Integer codes of the op schemas (bindings.cpp).
enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };
enum Mode : int64_t { kTwoSided = 0, kFloor = 1 };
// Denominator codes of the variant ops: 0 is the plain op (every candidate but self). The Triton kernels take the
// same names and values as their MODE (synthcl_fast/backends/triton_tiles.py, Mode), and one more, for the
// hard-negative statistics' gradient, which no schema takes (hard_negative_stats is an op of its own).
enum Denominator : int { kAll = 0, kNegatives = 1, kPerPositive = 2 };
constexpr int kHardNegatives = 3;

// A contrastive op's gradient mask (bindings.cpp: compute_grad, output_mask): which of the anchors, the
// candidates and the temperature get a gradient. When the candidates are the anchors (one tensor) its two roles
// are one gradient: on for both if asked for either.
struct GradMask {
  bool anchors, candidates, temperature;
  GradMask(const std::array<bool, 3>& mask, bool one_tensor)
      : anchors(mask[0] || (one_tensor && mask[1])), candidates(mask[1] || (one_tensor && mask[0])),
        temperature(mask[2]) {}
  bool any() const { return anchors || candidates || temperature; }
  bool features() const { return anchors || candidates; }
};

inline void check_reduction(int64_t reduction) {
  TORCH_CHECK(reduction == kNone || reduction == kMean || reduction == kSum, "reduction code must be 0, 1 or 2, got ",
              reduction);
}

// The checks every implementation of contrastive_forward / contrastive_backward makes; device_type is the
// one its kernels run on.
inline void check_contrastive_inputs(const at::Tensor& anchors, const at::Tensor& candidates,
                                     const at::Tensor& anchor_labels, const at::Tensor& candidate_labels,
                                     const at::Tensor& temperature, double eps, c10::DeviceType device_type) {
  check_matrix(anchors, "anchors");
  check_matrix(candidates, "candidates");
  TORCH_CHECK(anchors.size(1) == candidates.size(1), "anchors and candidates must have the same feature dimension, got ",
              anchors.size(1), " and ", candidates.size(1));
  TORCH_CHECK(anchors.scalar_type() == candidates.scalar_type(), "anchors and candidates must have the same dtype, got ",
              anchors.scalar_type(), " and ", candidates.scalar_type());
  check_vector(anchor_labels, "anchor_labels", anchors.size(0), at::kLong);
  check_vector(candidate_labels, "candidate_labels", candidates.size(0), at::kLong);
  check_scalar(temperature, "temperature");
  for (const auto& [t, name] : {std::pair{&candidates, "candidates"}, {&anchor_labels, "anchor_labels"},
                                {&candidate_labels, "candidate_labels"}, {&temperature, "temperature"}}) {
    check_same_device(*t, anchors, name);
  }
  TORCH_CHECK(anchors.device().type() == device_type, "the ", device_type, " kernel got tensors on ", anchors.device());
  TORCH_CHECK(eps > 0, "eps must be positive, got ", eps);
}

// The variant op's denominator code (1 = "negatives", 2 = "per_positive") and positive_weight ((R,) in the
// accumulation dtype acc of the backend): checked here, as every caller of the op could pass anything.
inline void check_variant(int64_t denominator, const at::Tensor& positive_weight, const at::Tensor& anchors,
                          at::ScalarType acc) {
  TORCH_CHECK(denominator == kNegatives || denominator == kPerPositive,
              "denominator code must be 1 (negatives) or 2 (per_positive), got ", denominator);
  check_vector(positive_weight, "positive_weight", anchors.size(0), acc);
  check_same_device(positive_weight, anchors, "positive_weight");
}

// hard_negative_stats: beta, and the backward's per-row inputs (R = n_rows; acc the accumulation dtype).
constexpr int kHardSets = 3;  // X0, X1 over the negatives; X2 over the positives

inline void check_beta(double beta) { TORCH_CHECK(std::isfinite(beta), "beta must be finite, got ", beta); }

inline void check_hard_backward_inputs(const at::Tensor& grad_lse, const at::Tensor& grad_positive_mean,
                                       const at::Tensor& row_n_negative, const at::Tensor& row_n_positive,
                                       const at::Tensor& row_reference, const at::Tensor& row_log_sum,
                                       const at::Tensor& anchors, at::ScalarType acc) {
  const int64_t n_rows = anchors.size(0);
  for (const auto& [t, name] : {std::pair{&grad_lse, "grad_lse"}, {&row_reference, "row_reference"},
                                {&row_log_sum, "row_log_sum"}}) {
    TORCH_CHECK(t->dim() == 2 && t->size(0) == n_rows && t->size(1) == kHardSets, name, " must have shape (", n_rows,
                ", ", kHardSets, "), got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == acc, name, " must have dtype ", acc, ", got ", t->scalar_type());
  }
  check_vector(grad_positive_mean, "grad_positive_mean", n_rows, acc);
  check_vector(row_n_negative, "row_n_negative", n_rows, at::kInt);
  check_vector(row_n_positive, "row_n_positive", n_rows, at::kInt);
  for (const auto& [t, name] : {std::pair{&grad_lse, "grad_lse"}, {&grad_positive_mean, "grad_positive_mean"},
                                {&row_n_negative, "row_n_negative"}, {&row_n_positive, "row_n_positive"},
                                {&row_reference, "row_reference"}, {&row_log_sum, "row_log_sum"}}) {
    check_same_device(*t, anchors, name);
  }
}

// The checks every implementation of positive_pair_forward makes (target: float32, float64 for float64 rows).
inline void check_positive_pair_inputs(const at::Tensor& a, const at::Tensor& b, const at::Tensor& target,
                                       int64_t mode, int64_t reduction, double eps, c10::DeviceType device_type) {
  check_matrix(a, "a");
  check_matrix(b, "b");
  TORCH_CHECK(a.sizes() == b.sizes(), "a and b must have the same shape, got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "a and b must have the same dtype, got ", a.scalar_type(), " and ",
              b.scalar_type());
  check_same_device(b, a, "b");
  check_same_device(target, a, "target");
  TORCH_CHECK(a.device().type() == device_type, "the ", device_type, " kernel got tensors on ", a.device());
  TORCH_CHECK(mode == kTwoSided || mode == kFloor, "mode code must be 0 or 1, got ", mode);
  check_reduction(reduction);
  TORCH_CHECK(eps > 0, "eps must be positive, got ", eps);
  check_vector(target, "target", a.size(0), a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
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

// The range reduction exp_nonpositive and exp_minus share: y = n ln2 + r with |r| <= ln2 / 2 and n an integer
// (Cody-Waite, y clamped below at -87); returns e^r - 1 (Cephes' expf polynomial) and sets scale = 2^n. Inlined
// into the callers' loops, which vectorize as before. NaN in, NaN out (through r); the exponent of a NaN is taken
// as 0 (casting NaN to an integer is undefined).
inline float expm1_reduced(float y, float& scale) {
  y = y < -87.0f ? -87.0f : y;
  const float rounding = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float n = (y * 1.44269504088896341f + rounding) - rounding;
  const float r = y - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const int32_t bits = (static_cast<int32_t>(n == n ? n : 0.0f) + 127) << 23;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * r * r + r;
}

// exp(x) for x <= 0 (every caller subtracts a running max first), relative error ~1e-7, 2^n (e^r - 1 + 1).
// Branch-free and written with plain arithmetic so that GCC vectorizes the loops that call it.
// Inputs below -87 return ~1e-38 rather than 0; callers that need an exact 0 (the excluded self pair)
// write it explicitly. NaN propagates.
inline float exp_nonpositive(float x) {
  float scale;
  const float q = expm1_reduced(x, scale);
  return (q + 1.0f) * scale;
}

inline double exp_nonpositive(double x) { return std::exp(x); }

// e^y - b for 0 <= b <= 1, branch-free (vectorizes as exp_nonpositive does), formed from the same reduction
// y = n ln2 + r as 2^n expm1(r) + (2^n - b), never as a rounded e^y minus b: where b is a power of two near e^y
// (the gradient's positive term p - 1/|P| at a small loss: b = 1, e^y = 1 - (the loss) for one positive) 2^n - b
// is exact and the difference keeps expm1(r)'s relative accuracy; e^y rounded first would keep it only to eps
// absolute (eps / loss relative). For other b, 2^n - b rounds by eps |2^n - b|, as e^y - b would. b = 0: e^y.
// Clamped below at -87 as exp_nonpositive; y may be positive (up to ~88).
inline float exp_minus(float y, float b) {
  float scale;
  const float q = expm1_reduced(y, scale);
  return scale * q + (scale - b);  // 2^n (e^r - 1) + 2^n - b = e^y - b
}

// b expm1(y - log b) = e^y - b without rounding e^y first (b = 1: expm1(y)).
inline double exp_minus(double y, double b) { return b == 0.0 ? std::exp(y) : b * std::expm1(y - std::log(b)); }

}  // namespace synthcl_fast
