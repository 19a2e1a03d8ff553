// Fused CUDA kernel for the similarity-controlled positive-pair loss; the math (c_k, L_k and the
// gradients) is stated once, in synthcl_fast/reference.py. Registered for the CUDA dispatch key with the same
// contract as positive_pair_cpu.cpp.
//
// Memory-bound, one pass: one warp per row, 16-byte loads (8 bf16/fp16 or 4 fp32 per lane and load)
// when rows are 16-byte aligned, else one element per lane and load. A row of up to kCachedVectors x 32
// vectors stays in registers between the dot products and the gradient writes, so a and b are read
// from device memory once and the gradients written once; longer rows are read a second time (L2).
// The three dot products and the per-row coefficients are in float64, as in the CPU kernel (fp32 rows
// of norm 1e30 or 1e-30 neither overflow nor underflow); gradients are written in the input dtype.
// Every row is independent, so the per-row gradients of the reduced loss are written in forward and
// the backward only scales them by the upstream gradient (backends/_ops.py).

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "common.h"
#include "cuda_utils.cuh"

namespace synthcl_fast {
namespace {

using namespace cuda;

constexpr int kWarpsPerBlock = 8;
constexpr int kCachedVectors = 4;  // per lane: rows up to 4 x 32 x 16 bytes (D = 1024 bf16, 512 fp32) stay cached

// kVec elements of T loaded together (16 bytes when kVec > 1).
template <typename T, int kVec>
struct Vec {
  T v[kVec];
};

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) AlignedVec : Vec<T, kVec> {};

template <typename T, int kVec>
__device__ __forceinline__ AlignedVec<T, kVec> load_vec(const T* p) {
  return *reinterpret_cast<const AlignedVec<T, kVec>*>(p);
}

template <typename T, int kVec>
__device__ __forceinline__ void store_vec(T* p, const AlignedVec<T, kVec>& v) {
  *reinterpret_cast<AlignedVec<T, kVec>*>(p) = v;
}

struct PairParams {
  int64_t n_rows, dim;
  int mode;
  double eps, weight;  // weight: the reduction's factor (1/R for mean)
  const float* target;
  float *loss, *cosine, *grad_target;
};

// ============================================================================================
// Forward (with the gradients of the reduced loss)
// ============================================================================================
template <typename T, int kVec>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    positive_pair_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ grad_a,
                         T* __restrict__ grad_b, const PairParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= p.n_rows) return;
  const T* ar = a + row * p.dim;
  const T* br = b + row * p.dim;
  const int64_t n_vec = p.dim / kVec;  // kVec divides dim (checked by the launcher)
  const bool cached = n_vec <= kCachedVectors * 32;

  // ---- pass over the row: the three dot products, all loads issued before the first use ----------
  AlignedVec<T, kVec> va[kCachedVectors], vb[kCachedVectors];
  double aa = 0, bb = 0, ab = 0;
  auto accumulate = [&](const AlignedVec<T, kVec>& x, const AlignedVec<T, kVec>& y) {
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const double xe = to_float(x.v[e]), ye = to_float(y.v[e]);
      aa += xe * xe;
      bb += ye * ye;
      ab += xe * ye;
    }
  };
  if (cached) {
#pragma unroll
    for (int i = 0; i < kCachedVectors; ++i) {
      const int64_t v = lane + 32 * i;
      if (v < n_vec) {
        va[i] = load_vec<T, kVec>(ar + v * kVec);
        vb[i] = load_vec<T, kVec>(br + v * kVec);
      }
    }
#pragma unroll
    for (int i = 0; i < kCachedVectors; ++i)
      if (lane + 32 * i < n_vec) accumulate(va[i], vb[i]);
  } else {
    for (int64_t v = lane; v < n_vec; v += 32) accumulate(load_vec<T, kVec>(ar + v * kVec), load_vec<T, kVec>(br + v * kVec));
  }
  aa = warp_sum(aa);
  bb = warp_sum(bb);
  ab = warp_sum(ab);

  // ---- the row's loss and coefficients -------------------------------------------------------------
  const double norm_a_raw = sqrt(aa), norm_b_raw = sqrt(bb);
  const double norm_a = fmax(norm_a_raw, p.eps), norm_b = fmax(norm_b_raw, p.eps);
  const double c = ab / norm_a / norm_b;
  const double s = p.target[row];
  const double gap = p.mode == kTwoSided ? c - s : fmax(s - c, 0.0);
  const double dc = p.weight * (p.mode == kTwoSided ? 2 * gap : -2 * gap);  // dL/dc_k, reduction folded in
  if (lane == 0) {
    p.loss[row] = static_cast<float>(gap * gap);
    p.cosine[row] = static_cast<float>(c);
    p.grad_target[row] = static_cast<float>(-dc);
  }
  if (grad_a == nullptr && grad_b == nullptr) return;

  // ---- gradients: ga = fb_a b - fa_a a, gb = fa_b a - fb_b b ----------------------------------------
  const bool live_a = norm_a_raw > p.eps, live_b = norm_b_raw > p.eps;
  const double cross = dc / (norm_a * norm_b);
  const double ga_b = live_a ? cross : 0.0, ga_a = live_a ? dc * c / (norm_a * norm_a) : 0.0;
  const double gb_a = live_b ? cross : 0.0, gb_b = live_b ? dc * c / (norm_b * norm_b) : 0.0;
  auto write = [&](int64_t v, const AlignedVec<T, kVec>& x, const AlignedVec<T, kVec>& y) {
    if (grad_a != nullptr) {
      AlignedVec<T, kVec> out;
#pragma unroll
      for (int e = 0; e < kVec; ++e)
        out.v[e] = from_float<T>(static_cast<float>(ga_b * to_float(y.v[e]) - ga_a * to_float(x.v[e])));
      store_vec<T, kVec>(grad_a + row * p.dim + v * kVec, out);
    }
    if (grad_b != nullptr) {
      AlignedVec<T, kVec> out;
#pragma unroll
      for (int e = 0; e < kVec; ++e)
        out.v[e] = from_float<T>(static_cast<float>(gb_a * to_float(x.v[e]) - gb_b * to_float(y.v[e])));
      store_vec<T, kVec>(grad_b + row * p.dim + v * kVec, out);
    }
  };
  if (cached) {
#pragma unroll
    for (int i = 0; i < kCachedVectors; ++i)
      if (lane + 32 * i < n_vec) write(lane + 32 * i, va[i], vb[i]);
  } else {
    for (int64_t v = lane; v < n_vec; v += 32) write(v, load_vec<T, kVec>(ar + v * kVec), load_vec<T, kVec>(br + v * kVec));
  }
}

// ============================================================================================
// Launcher and registered op (same schema and results as positive_pair_cpu.cpp)
// ============================================================================================
template <typename T, int kVec>
void launch_positive_pair(const at::Tensor& a, const at::Tensor& b, at::Tensor& grad_a, at::Tensor& grad_b,
                          const PairParams& p, cudaStream_t stream) {
  const int64_t blocks = ceil_div(p.n_rows, kWarpsPerBlock);
  positive_pair_kernel<T, kVec><<<blocks, kWarpsPerBlock * 32, 0, stream>>>(
      a.data_ptr<T>(), b.data_ptr<T>(), grad_a.numel() ? grad_a.data_ptr<T>() : nullptr,
      grad_b.numel() ? grad_b.data_ptr<T>() : nullptr, p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> positive_pair_forward_cuda(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& target, int64_t mode, int64_t reduction, double eps,
    bool compute_grad_a, bool compute_grad_b) {
  check_positive_pair_inputs(a, b, target, mode, reduction, eps, c10::kCUDA);
  TORCH_CHECK(a.scalar_type() != at::kDouble, "the CUDA kernels take float32, float16 or bfloat16 features, got ",
              a.scalar_type());
  const int64_t n_rows = a.size(0), dim = a.size(1);
  const c10::cuda::CUDAGuard guard(a.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor ac = a.contiguous(), bc = b.contiguous(), tc = target.contiguous();
  auto opts = a.options().dtype(at::kFloat);
  at::Tensor loss = empty_output({n_rows}, opts), cosine = empty_output({n_rows}, opts);
  at::Tensor grad_target = empty_output({n_rows}, opts);
  at::Tensor grad_a = compute_grad_a ? empty_output(ac.sizes(), ac.options()) : at::empty({0}, a.options());
  at::Tensor grad_b = compute_grad_b ? empty_output(bc.sizes(), bc.options()) : at::empty({0}, b.options());
  const double weight = reduction == kMean ? 1.0 / static_cast<double>(n_rows) : 1.0;
  const PairParams p{n_rows, dim, static_cast<int>(mode), eps, weight, tc.data_ptr<float>(),
                     loss.data_ptr<float>(), cosine.data_ptr<float>(), grad_target.data_ptr<float>()};
  auto launch = [&](auto element) {
    using T = decltype(element);
    constexpr int kVec = 16 / sizeof(T);
    const bool vectorized = dim % kVec == 0 && aligned16(ac) && aligned16(bc) &&
                            (!compute_grad_a || aligned16(grad_a)) && (!compute_grad_b || aligned16(grad_b));
    if (vectorized) launch_positive_pair<T, kVec>(ac, bc, grad_a, grad_b, p, stream);
    else launch_positive_pair<T, 1>(ac, bc, grad_a, grad_b, p, stream);
  };
  switch (a.scalar_type()) {
    case at::kFloat: launch(float{}); break;
    case at::kBFloat16: launch(c10::BFloat16{}); break;
    case at::kHalf: launch(c10::Half{}); break;
    default: TORCH_CHECK(false, "the CUDA kernels take float32, float16 or bfloat16 features, got ", a.scalar_type());
  }
  if (reduction != kNone) loss = (loss.to(at::kDouble).sum() * weight).to(at::kFloat);
  return {loss, cosine, grad_a, grad_b, grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(synthcl_fast, CUDA, m) { m.impl("positive_pair_forward", &positive_pair_forward_cuda); }

}  // namespace synthcl_fast
