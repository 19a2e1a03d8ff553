// Fused CPU kernel for the similarity-controlled positive-pair loss; the math (c_k, L_k and the
// gradients) is stated once, in synthcl_fast/reference.py.
//
// Memory-bound: each row reads a_k and b_k once for the three dot products and, when gradients are
// wanted, once more from L1 to write them. Every row is independent, so the per-row gradients of the
// reduced loss are written in forward and the backward only scales them by the upstream gradient.

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "common.h"
#include "cpu_threads.h"

namespace synthcl_fast {
namespace {

// Sums in float64: fp32 rows neither overflow nor underflow in the norms (see normalize_rows).
template <typename scalar_t, typename acc_t>
void positive_pair_rows(const scalar_t* a, const scalar_t* b, const acc_t* target, int64_t n_rows, int64_t dim,
                        int64_t mode, double eps, double weight, acc_t* loss, acc_t* cosine, scalar_t* grad_a,
                        scalar_t* grad_b, acc_t* grad_target) {
  parallel_items(n_rows, dim, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      const scalar_t* ak = a + k * dim;
      const scalar_t* bk = b + k * dim;
      double aa = 0, bb = 0, ab = 0;
#pragma omp simd reduction(+ : aa, bb, ab)
      for (int64_t d = 0; d < dim; ++d) {
        const double x = static_cast<double>(ak[d]), y = static_cast<double>(bk[d]);
        aa += x * x;
        bb += y * y;
        ab += x * y;
      }
      const double norm_a_raw = std::sqrt(aa), norm_b_raw = std::sqrt(bb);
      const double norm_a = std::max(norm_a_raw, eps), norm_b = std::max(norm_b_raw, eps);
      const double c = ab / norm_a / norm_b;
      const double s = static_cast<double>(target[k]);
      const double gap = mode == kTwoSided ? c - s : std::max(s - c, 0.0);
      loss[k] = static_cast<acc_t>(gap * gap);
      cosine[k] = static_cast<acc_t>(c);
      const double dc = weight * (mode == kTwoSided ? 2 * gap : -2 * gap);  // dL/dc_k, reduction folded in
      grad_target[k] = static_cast<acc_t>(-dc);
      // dc/da = (b/||b|| - c a/||a||) / ||a||. A row shorter than eps is a constant (no gradient), as in
      // normalize_backward of the contrastive kernel.
      if (grad_a != nullptr) {
        const bool live = norm_a_raw > eps;
        const double fb = live ? dc / (norm_a * norm_b) : 0.0, fa = live ? dc * c / (norm_a * norm_a) : 0.0;
        scalar_t* ga = grad_a + k * dim;
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d)
          ga[d] = static_cast<scalar_t>(fb * static_cast<double>(bk[d]) - fa * static_cast<double>(ak[d]));
      }
      if (grad_b != nullptr) {
        const bool live = norm_b_raw > eps;
        const double fa = live ? dc / (norm_a * norm_b) : 0.0, fb = live ? dc * c / (norm_b * norm_b) : 0.0;
        scalar_t* gb = grad_b + k * dim;
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d)
          gb[d] = static_cast<scalar_t>(fa * static_cast<double>(ak[d]) - fb * static_cast<double>(bk[d]));
      }
    }
  });
}

// Returns (loss, cosine, grad_a, grad_b, grad_target): loss (R,) or scalar; cosine (R,); gradients of
// the reduced loss (per row for reduction none) or empty tensors where not asked for.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> positive_pair_forward_cpu(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& target, int64_t mode, int64_t reduction, double eps,
    bool compute_grad_a, bool compute_grad_b) {
  check_positive_pair_inputs(a, b, target, mode, reduction, eps, c10::kCPU);
  const int64_t n_rows = a.size(0), dim = a.size(1);
  const auto acc = a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor ac = a.contiguous(), bc = b.contiguous(), tc = target.contiguous();
  auto acc_opts = a.options().dtype(acc);
  at::Tensor loss = empty_output({n_rows}, acc_opts), cosine = empty_output({n_rows}, acc_opts);
  at::Tensor grad_target = empty_output({n_rows}, acc_opts);
  at::Tensor grad_a = compute_grad_a ? empty_output(ac.sizes(), ac.options()) : at::empty({0}, a.options());
  at::Tensor grad_b = compute_grad_b ? empty_output(bc.sizes(), bc.options()) : at::empty({0}, b.options());
  const double weight = reduction == kMean ? 1.0 / static_cast<double>(n_rows) : 1.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "positive_pair_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    positive_pair_rows<scalar_t, acc_t>(
        ac.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), tc.data_ptr<acc_t>(), n_rows, dim, mode, eps, weight,
        loss.data_ptr<acc_t>(), cosine.data_ptr<acc_t>(),
        compute_grad_a ? grad_a.data_ptr<scalar_t>() : nullptr, compute_grad_b ? grad_b.data_ptr<scalar_t>() : nullptr,
        grad_target.data_ptr<acc_t>());
  });
  if (reduction != kNone) loss = (loss.to(at::kDouble).sum() * weight).to(acc);
  return {loss, cosine, grad_a, grad_b, grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(synthcl_fast, CPU, m) { m.impl("positive_pair_forward", &positive_pair_forward_cpu); }

}  // namespace synthcl_fast
