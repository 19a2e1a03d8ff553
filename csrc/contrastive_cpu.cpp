// Fused CPU kernels for the general contrastive op. The math (s_ij, m_i, log S_i, L_i, G_ij and the
// gradients) is stated once, in synthcl_fast/reference.py; the op contract is synthcl_fast/backends/_ops.py.
//
// Row statistics are kept online over column tiles: per row the running max m, S = sum exp(s - m), the
// positive gap sum_p (s_ip - m) (rescaled when m moves) and |P|; then L_i = -gap_i / |P(i)| + log S_i,
// formed from quantities of the loss's own size, and the backward gets (m_i, log S_i).
//
// Work layout: rows in blocks of at most 256; for each block the logits strip S = (U_b / t) V^T is
// formed one column tile at a time in a buffer of at most kStripBytes (never R x K), with an online
// log-sum-exp across tiles. When the strip fits in one tile and the gradient is wanted in forward
// (reduction "mean"/"sum": the upstream gradient is a scalar), the strip is reused for the gradient:
// three matrix products per row block (S, G V, G^T U) instead of four. Matrix products go to ATen's
// multi-threaded BLAS; per-row passes are spread over threads with at::parallel_for; per-row partial
// sums are reduced in a fixed order, so results are deterministic for a fixed thread count.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common.h"

namespace synthcl_fast {
namespace {

constexpr int64_t kStripBytes = 2 << 20;
constexpr int64_t kMaxBlockRows = 256;
constexpr int64_t kMinBlockRows = 16;
constexpr int64_t kRowGrain = 8;

at::ScalarType accumulate_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// u = x / max(||x||, eps) in the accumulation type, and the clamped norms (float64). The squares are
// summed in float64, so fp32 rows neither overflow (|x| up to fp32's max) nor underflow (subnormals).
template <typename scalar_t, typename acc_t>
void normalize_rows_kernel(const scalar_t* x, int64_t n_rows, int64_t dim, double eps, acc_t* u, double* norms) {
  at::parallel_for(0, n_rows, kRowGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const scalar_t* xi = x + i * dim;
      double squares = 0;
#pragma omp simd reduction(+ : squares)
      for (int64_t d = 0; d < dim; ++d) squares += static_cast<double>(xi[d]) * static_cast<double>(xi[d]);
      const double norm = std::max(std::sqrt(squares), eps), inv_norm = 1.0 / norm;
      norms[i] = norm;
      for (int64_t d = 0; d < dim; ++d) u[i * dim + d] = static_cast<acc_t>(static_cast<double>(xi[d]) * inv_norm);
    }
  });
}

std::pair<at::Tensor, at::Tensor> normalize_rows(const at::Tensor& x, double eps) {
  const at::Tensor xc = x.contiguous();
  const int64_t n_rows = x.size(0), dim = x.size(1);
  at::Tensor u = at::empty({n_rows, dim}, x.options().dtype(accumulate_type(x.scalar_type())));
  at::Tensor norms = at::empty({n_rows}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "normalize_rows", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    normalize_rows_kernel<scalar_t, acc_t>(xc.data_ptr<scalar_t>(), n_rows, dim, eps, u.data_ptr<acc_t>(),
                                           norms.data_ptr<double>());
  });
  return {u, norms};
}

// dx = (du - u (u . du)) / ||x||; a row no longer than eps is a constant and gets no gradient.
// Overwrites du (no temporaries of its size), then casts to the input dtype.
template <typename acc_t>
at::Tensor normalize_backward(at::Tensor du, const at::Tensor& u, const at::Tensor& norms, double eps,
                              at::ScalarType out_dtype) {
  const int64_t dim = u.size(1);
  acc_t* du_ptr = du.data_ptr<acc_t>();
  const acc_t* u_ptr = u.data_ptr<acc_t>();
  const double* norm_ptr = norms.data_ptr<double>();
  at::parallel_for(0, u.size(0), kRowGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      acc_t* g = du_ptr + i * dim;
      const acc_t* ui = u_ptr + i * dim;
      if (!(norm_ptr[i] > eps)) {
        std::fill(g, g + dim, acc_t(0));
        continue;
      }
      acc_t radial = 0;
#pragma omp simd reduction(+ : radial)
      for (int64_t d = 0; d < dim; ++d) radial += ui[d] * g[d];
      const acc_t inv_norm = static_cast<acc_t>(1.0 / norm_ptr[i]);
#pragma omp simd
      for (int64_t d = 0; d < dim; ++d) g[d] = (g[d] - ui[d] * radial) * inv_norm;
    }
  });
  return du.to(out_dtype);
}

// Gradients w.r.t. the raw anchors and candidates from those w.r.t. the normalized rows. When the candidates
// are the anchors and the input dtype is narrower than the accumulation type, the two parts are summed
// before the one rounding to the input dtype: rounded separately and added by autograd, parts that largely
// cancel would lose the sum's precision. The candidates' gradient is then zero (autograd adds it exactly).
template <typename acc_t>
std::pair<at::Tensor, at::Tensor> input_gradients(at::Tensor grad_u, at::Tensor grad_v, const at::Tensor& u,
                                                  const at::Tensor& norm_a, const at::Tensor& v,
                                                  const at::Tensor& norm_c, const at::Tensor& anchors,
                                                  const at::Tensor& candidates, double eps) {
  if (candidates.is_same(anchors) && anchors.scalar_type() != grad_u.scalar_type()) {
    return {normalize_backward<acc_t>(grad_u.add_(grad_v), u, norm_a, eps, anchors.scalar_type()),
            at::zeros(candidates.sizes(), candidates.options())};
  }
  return {normalize_backward<acc_t>(grad_u, u, norm_a, eps, anchors.scalar_type()),
          normalize_backward<acc_t>(grad_v, v, norm_c, eps, candidates.scalar_type())};
}

// Calls fn(lo, hi) on [begin, end) minus the excluded self column, so the inner loops stay branch-free.
template <typename Fn>
inline void for_each_allowed(int64_t begin, int64_t end, int64_t self, Fn fn) {
  if (self >= begin && self < end) {
    if (self > begin) fn(begin, self);
    if (self + 1 < end) fn(self + 1, end);
  } else {
    fn(begin, end);
  }
}

// What every pass needs to know about the problem; pointers are to contiguous host memory.
template <typename acc_t>
struct Problem {
  at::Tensor u;  // (R, D) u_i
  at::Tensor v;  // (K, D) v_j (the same tensor as u when the candidates are the anchors)
  const int64_t* anchor_labels;
  const int64_t* candidate_labels;
  int64_t n_rows, n_cols, dim;
  bool exclude_self;
  acc_t inv_t;
  int64_t block_rows, tile_cols;
};

template <typename acc_t>
Problem<acc_t> make_problem(const at::Tensor& u, const at::Tensor& v, const at::Tensor& anchor_labels,
                            const at::Tensor& candidate_labels, bool exclude_self, double inv_t) {
  Problem<acc_t> p;
  p.u = u;
  p.v = v;
  p.anchor_labels = anchor_labels.data_ptr<int64_t>();
  p.candidate_labels = candidate_labels.data_ptr<int64_t>();
  p.n_rows = u.size(0);
  p.n_cols = v.size(0);
  p.dim = u.size(1);
  p.exclude_self = exclude_self;
  p.inv_t = static_cast<acc_t>(inv_t);
  // A block of rows spans the whole strip when it fits; otherwise the columns are tiled.
  const int64_t strip_rows = kStripBytes / (static_cast<int64_t>(sizeof(acc_t)) * p.n_cols);
  p.block_rows = std::min(p.n_rows, std::clamp(strip_rows, kMinBlockRows, kMaxBlockRows));
  p.tile_cols = std::min(p.n_cols, std::max<int64_t>(1, kStripBytes / (static_cast<int64_t>(sizeof(acc_t)) * p.block_rows)));
  return p;
}

// S[0:bm, 0:tn] = (1/t) U_b V_tile^T into the front of the strip buffer (1/t folded into the product's
// alpha); returns that (bm, tn) view.
template <typename acc_t>
at::Tensor logits_tile(const Problem<acc_t>& p, at::Tensor& strip, int64_t r0, int64_t bm, int64_t c0, int64_t tn) {
  at::Tensor tile = strip.narrow(0, 0, bm * tn).view({bm, tn});
  at::addmm_out(tile, tile, p.u.narrow(0, r0, bm), p.v.narrow(0, c0, tn).t(), /*beta=*/0, /*alpha=*/p.inv_t);
  return tile;
}

// Online row statistics of rows [r0, r0+bm) over the tile of columns [c0, c0+tn): max, sum of exp(s - max),
// the positive gap sum_p (s_p - max) (shifted with the max, so it stays the size of the loss) and |P|.
template <typename acc_t>
void accumulate_row_stats(const Problem<acc_t>& p, const acc_t* tile, int64_t r0, int64_t bm, int64_t c0,
                          int64_t tn, acc_t* row_max, acc_t* row_sum_exp, acc_t* row_positive_gap,
                          int64_t* row_n_positive) {
  constexpr acc_t kMinusInf = -std::numeric_limits<acc_t>::infinity();
  at::parallel_for(0, bm, kRowGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t row = r0 + i;
      const acc_t* s = tile + i * tn;
      const int64_t self = p.exclude_self ? row - c0 : -1;
      const int64_t label = p.anchor_labels[row];
      const int64_t* labels = p.candidate_labels + c0;
      if (tn == 1 && self == 0) continue;  // the tile holds only the excluded self column
      acc_t tile_max = kMinusInf;
      for_each_allowed(0, tn, self, [&](int64_t a, int64_t b) {
#pragma omp simd reduction(max : tile_max)
        for (int64_t j = a; j < b; ++j) tile_max = std::max(tile_max, s[j]);
      });
      // The max skips NaN logits (NaN features or an invalid temperature); the sums below do not, so NaN
      // reaches the loss. -inf only then: shift by 0 so that the sums are NaN, not skipped.
      const acc_t new_max = std::max(row_max[i], tile_max);
      const acc_t shift = new_max == kMinusInf ? acc_t(0) : new_max;
      acc_t sum_exp = 0, positive_gap = 0;
      int64_t n_positive = 0;
      for_each_allowed(0, tn, self, [&](int64_t a, int64_t b) {
#pragma omp simd reduction(+ : sum_exp, positive_gap, n_positive)
        for (int64_t j = a; j < b; ++j) {
          const acc_t shifted = s[j] - shift;
          const bool positive = labels[j] == label && labels[j] >= 0;
          sum_exp += exp_nonpositive(shifted);
          positive_gap += positive ? shifted : acc_t(0);
          n_positive += positive ? 1 : 0;
        }
      });
      if (row_max[i] != kMinusInf && shift != row_max[i]) {  // the earlier tiles' terms, moved to the new max
        row_sum_exp[i] *= exp_nonpositive(row_max[i] - shift);
        row_positive_gap[i] += static_cast<acc_t>(row_n_positive[i]) * (row_max[i] - shift);
      }
      row_sum_exp[i] += sum_exp;
      row_positive_gap[i] += positive_gap;
      row_n_positive[i] += n_positive;
      row_max[i] = shift;
    }
  });
}

// Overwrites the logits tile with G_ij = w_i (exp((s_ij - m_i) - log S_i) - [j in P(i)] / |P(i)|) and adds
// sum_j G_ij (s_ij - m_i) of each row to row_gs (for the temperature gradient; the shift by m_i removes the
// 1/t-sized common part, as sum_j G_ij = 0). The self column gets G = 0.
template <typename acc_t>
void gradient_tile(const Problem<acc_t>& p, acc_t* tile, int64_t r0, int64_t bm, int64_t c0, int64_t tn,
                   const acc_t* max, const acc_t* log_sum, const int32_t* n_positive, const acc_t* weight,
                   double* row_gs) {
  at::parallel_for(0, bm, kRowGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t row = r0 + i;
      acc_t* s = tile + i * tn;
      const int64_t self = p.exclude_self ? row - c0 : -1;
      const acc_t w = n_positive[row] > 0 ? weight[row] : acc_t(0);
      if (w == acc_t(0)) {  // a row without positives (or zero upstream weight) adds nothing
        std::fill(s, s + tn, acc_t(0));
        continue;
      }
      const int64_t label = p.anchor_labels[row];
      const int64_t* labels = p.candidate_labels + c0;
      const acc_t row_max = max[row], row_log_sum = log_sum[row];
      const acc_t positive_weight = acc_t(1) / static_cast<acc_t>(n_positive[row]);
      acc_t gs = 0;
      for_each_allowed(0, tn, self, [&](int64_t a, int64_t b) {
#pragma omp simd reduction(+ : gs)
        for (int64_t j = a; j < b; ++j) {
          const acc_t shifted = s[j] - row_max;
          const bool positive = labels[j] == label && labels[j] >= 0;
          const acc_t g = w * (exp_nonpositive(shifted - row_log_sum) - (positive ? positive_weight : acc_t(0)));
          gs += g * shifted;
          s[j] = g;
        }
      });
      if (self >= 0 && self < tn) s[self] = 0;
      row_gs[row] += static_cast<double>(gs);
    }
  });
}

// dU_b += G V_tile (the factor 1/t is applied once at the end) and dV_tile += (1/t) G^T U_b.
template <typename acc_t>
void accumulate_feature_grads(const Problem<acc_t>& p, const at::Tensor& g, int64_t r0, int64_t bm, int64_t c0,
                              int64_t tn, at::Tensor& grad_u, at::Tensor& grad_v) {
  at::Tensor grad_u_block = grad_u.narrow(0, r0, bm);
  at::Tensor grad_v_tile = grad_v.narrow(0, c0, tn);
  grad_u_block.addmm_(g, p.v.narrow(0, c0, tn));
  grad_v_tile.addmm_(g.t(), p.u.narrow(0, r0, bm), /*beta=*/1, /*alpha=*/p.inv_t);
}

struct Gradients {
  at::Tensor grad_u, grad_v;  // w.r.t. the normalized rows
  double sum_gs = 0;          // sum_ij G_ij s_ij
};

// Gradient pass over all row blocks with known (m, log S, |P|) (the recompute backward).
template <typename acc_t>
Gradients gradient_pass(const Problem<acc_t>& p, const acc_t* max, const acc_t* log_sum, const int32_t* n_positive,
                        const acc_t* weight) {
  auto opts = p.v.options();
  Gradients out{at::zeros({p.n_rows, p.dim}, opts), at::zeros({p.n_cols, p.dim}, opts)};
  at::Tensor strip = empty_output({p.block_rows * p.tile_cols}, opts);  // scratch: poisoned in tests too
  std::vector<double> row_gs(p.n_rows, 0.0);
  for (int64_t r0 = 0; r0 < p.n_rows; r0 += p.block_rows) {
    const int64_t bm = std::min(p.block_rows, p.n_rows - r0);
    for (int64_t c0 = 0; c0 < p.n_cols; c0 += p.tile_cols) {
      const int64_t tn = std::min(p.tile_cols, p.n_cols - c0);
      at::Tensor tile = logits_tile(p, strip, r0, bm, c0, tn);
      gradient_tile(p, tile.data_ptr<acc_t>(), r0, bm, c0, tn, max, log_sum, n_positive, weight, row_gs.data());
      accumulate_feature_grads(p, tile, r0, bm, c0, tn, out.grad_u, out.grad_v);
    }
  }
  for (double gs : row_gs) out.sum_gs += gs;
  out.grad_u.mul_(p.inv_t);
  return out;
}

struct ForwardResult {
  at::Tensor row_loss, max, log_sum, n_positive;
  int64_t n_valid = 0;
  bool has_grads = false;
  Gradients grads;
};

// Forward pass; with want_grad, also the gradient for upstream weight 1 on every row with a positive
// (the caller scales it by the reduction). Reuses the logits when a row block's strip is one tile.
template <typename acc_t>
ForwardResult forward_pass(const Problem<acc_t>& p, bool want_grad) {
  auto opts = p.v.options();
  ForwardResult out;
  out.row_loss = empty_output({p.n_rows}, opts);
  out.max = empty_output({p.n_rows}, opts);
  out.log_sum = empty_output({p.n_rows}, opts);
  out.n_positive = empty_output({p.n_rows}, opts.dtype(at::kInt));
  acc_t* loss_ptr = out.row_loss.data_ptr<acc_t>();
  acc_t* max_ptr = out.max.data_ptr<acc_t>();
  acc_t* log_sum_ptr = out.log_sum.data_ptr<acc_t>();
  int32_t* npos_ptr = out.n_positive.data_ptr<int32_t>();
  const bool single_tile = p.tile_cols >= p.n_cols;
  if (want_grad) {
    out.has_grads = true;
    out.grads = Gradients{at::zeros({p.n_rows, p.dim}, opts), at::zeros({p.n_cols, p.dim}, opts)};
  }
  std::vector<acc_t> unit_weight(want_grad ? p.n_rows : 0, acc_t(1));
  std::vector<double> row_gs(want_grad ? p.n_rows : 0, 0.0);
  at::Tensor strip = empty_output({p.block_rows * p.tile_cols}, opts);  // scratch: poisoned in tests too
  std::vector<acc_t> row_max(p.block_rows), row_sum_exp(p.block_rows), row_positive_gap(p.block_rows);
  std::vector<int64_t> row_n_positive(p.block_rows);

  for (int64_t r0 = 0; r0 < p.n_rows; r0 += p.block_rows) {
    const int64_t bm = std::min(p.block_rows, p.n_rows - r0);
    std::fill(row_max.begin(), row_max.end(), -std::numeric_limits<acc_t>::infinity());
    std::fill(row_sum_exp.begin(), row_sum_exp.end(), acc_t(0));
    std::fill(row_positive_gap.begin(), row_positive_gap.end(), acc_t(0));
    std::fill(row_n_positive.begin(), row_n_positive.end(), 0);
    at::Tensor tile;
    for (int64_t c0 = 0; c0 < p.n_cols; c0 += p.tile_cols) {
      const int64_t tn = std::min(p.tile_cols, p.n_cols - c0);
      tile = logits_tile(p, strip, r0, bm, c0, tn);
      accumulate_row_stats(p, tile.data_ptr<acc_t>(), r0, bm, c0, tn, row_max.data(), row_sum_exp.data(),
                           row_positive_gap.data(), row_n_positive.data());
    }
    for (int64_t i = 0; i < bm; ++i) {
      const int64_t row = r0 + i;
      // A row whose denominator is empty (R = K = 1 with exclude_self) has no positive either: m = -inf.
      max_ptr[row] = row_max[i];
      log_sum_ptr[row] = std::log(row_sum_exp[i]);
      npos_ptr[row] = static_cast<int32_t>(row_n_positive[i]);
      loss_ptr[row] = row_n_positive[i] > 0
                          ? log_sum_ptr[row] - row_positive_gap[i] / static_cast<acc_t>(row_n_positive[i])
                          : acc_t(0);
      out.n_valid += row_n_positive[i] > 0;
    }
    if (!want_grad) continue;
    for (int64_t c0 = 0; c0 < p.n_cols; c0 += p.tile_cols) {
      const int64_t tn = std::min(p.tile_cols, p.n_cols - c0);
      if (!single_tile) tile = logits_tile(p, strip, r0, bm, c0, tn);
      gradient_tile(p, tile.data_ptr<acc_t>(), r0, bm, c0, tn, max_ptr, log_sum_ptr, npos_ptr, unit_weight.data(),
                    row_gs.data());
      accumulate_feature_grads(p, tile, r0, bm, c0, tn, out.grads.grad_u, out.grads.grad_v);
    }
  }
  if (want_grad) {
    for (double gs : row_gs) out.grads.sum_gs += gs;
    out.grads.grad_u.mul_(p.inv_t);
  }
  return out;
}

// 1/t, or NaN for a temperature out of range (finite and >= kMinTemperature): the results are then NaN,
// as on every backend (the value is checked where it lives, without a host synchronization on a GPU).
double inverse_temperature(const at::Tensor& temperature) {
  const double t = temperature.item<double>();  // a CPU tensor: no device to wait for
  return std::isfinite(t) && t >= kMinTemperature ? 1.0 / t : std::numeric_limits<double>::quiet_NaN();
}

// Returns (loss, row_max, row_log_sum, row_n_positive, grad_anchors, grad_candidates, grad_temperature).
// loss: (R,) for reduction none, else a scalar, in float32 (float64 for float64 inputs). With
// compute_grad (reduction mean or sum only) the gradients of that loss are returned, else empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
contrastive_forward_cpu(const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& anchor_labels,
                        const at::Tensor& candidate_labels, const at::Tensor& temperature, bool exclude_self,
                        int64_t reduction, double eps, bool compute_grad) {
  check_contrastive_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, eps, c10::kCPU);
  check_reduction(reduction);
  TORCH_CHECK(!(compute_grad && reduction == kNone), "compute_grad needs a scalar loss (reduction mean or sum)");
  const double inv_t = inverse_temperature(temperature);
  auto [u, norm_a] = normalize_rows(anchors, eps);
  auto [v, norm_c] = candidates.is_same(anchors) ? std::pair{u, norm_a} : normalize_rows(candidates, eps);
  at::Tensor a_labels = anchor_labels.contiguous(), c_labels = candidate_labels.contiguous();

  ForwardResult fwd;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "contrastive_forward_cpu", [&] {
    auto p = make_problem<scalar_t>(u, v, a_labels, c_labels, exclude_self, inv_t);
    fwd = forward_pass<scalar_t>(p, compute_grad);
  });

  const double scale = reduction == kMean ? 1.0 / static_cast<double>(std::max<int64_t>(fwd.n_valid, 1)) : 1.0;
  at::Tensor loss = reduction == kNone ? fwd.row_loss
                                       : (fwd.row_loss.to(at::kDouble).sum() * scale).to(u.scalar_type());
  at::Tensor grad_anchors = at::empty({0}, anchors.options());
  at::Tensor grad_candidates = at::empty({0}, candidates.options());
  at::Tensor grad_temperature = at::empty({0}, temperature.options());
  if (compute_grad) {
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "contrastive_forward_cpu_grad", [&] {
      std::tie(grad_anchors, grad_candidates) = input_gradients<scalar_t>(
          fwd.grads.grad_u.mul_(scale), fwd.grads.grad_v.mul_(scale), u, norm_a, v, norm_c, anchors, candidates, eps);
    });
    grad_temperature = at::full({}, -inv_t * fwd.grads.sum_gs * scale, temperature.options());
  }
  return {loss, fwd.max, fwd.log_sum, fwd.n_positive, grad_anchors, grad_candidates, grad_temperature};
}

// Recompute backward. grad_rows (R,) is dLoss/dL_i (the reduction weight already folded in).
// Returns (grad_anchors, grad_candidates, grad_temperature).
std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_backward_cpu(
    const at::Tensor& grad_rows, const at::Tensor& anchors, const at::Tensor& candidates,
    const at::Tensor& anchor_labels, const at::Tensor& candidate_labels, const at::Tensor& temperature,
    const at::Tensor& row_max, const at::Tensor& row_log_sum, const at::Tensor& row_n_positive, bool exclude_self,
    double eps) {
  check_contrastive_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, eps, c10::kCPU);
  const int64_t n_rows = anchors.size(0);
  const auto acc = accumulate_type(anchors.scalar_type());
  check_vector(row_max, "row_max", n_rows, acc);
  check_vector(row_log_sum, "row_log_sum", n_rows, acc);
  check_vector(row_n_positive, "row_n_positive", n_rows, at::kInt);
  TORCH_CHECK(grad_rows.dim() == 1 && grad_rows.size(0) == n_rows, "grad_rows must have shape (", n_rows, ",), got ",
              grad_rows.sizes());
  const double inv_t = inverse_temperature(temperature);
  auto [u, norm_a] = normalize_rows(anchors, eps);
  auto [v, norm_c] = candidates.is_same(anchors) ? std::pair{u, norm_a} : normalize_rows(candidates, eps);
  at::Tensor a_labels = anchor_labels.contiguous(), c_labels = candidate_labels.contiguous();
  at::Tensor max = row_max.contiguous(), log_sum = row_log_sum.contiguous(), npos = row_n_positive.contiguous();
  at::Tensor weight = grad_rows.to(acc).contiguous();

  at::Tensor grad_anchors, grad_candidates;
  double sum_gs = 0;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "contrastive_backward_cpu", [&] {
    auto p = make_problem<scalar_t>(u, v, a_labels, c_labels, exclude_self, inv_t);
    Gradients grads = gradient_pass<scalar_t>(p, max.data_ptr<scalar_t>(), log_sum.data_ptr<scalar_t>(),
                                              npos.data_ptr<int32_t>(), weight.data_ptr<scalar_t>());
    std::tie(grad_anchors, grad_candidates) =
        input_gradients<scalar_t>(grads.grad_u, grads.grad_v, u, norm_a, v, norm_c, anchors, candidates, eps);
    sum_gs = grads.sum_gs;
  });
  return {grad_anchors, grad_candidates, at::full({}, -inv_t * sum_gs, temperature.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(synthcl_fast, CPU, m) {
  m.impl("contrastive_forward", &contrastive_forward_cpu);
  m.impl("contrastive_backward", &contrastive_backward_cpu);
}

}  // namespace synthcl_fast
