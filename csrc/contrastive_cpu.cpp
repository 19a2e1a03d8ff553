// Fused CPU kernels for the general contrastive op. The math (s_ij, m_i, log S_i, L_i, G_ij and the
// gradients) is stated once, in synthcl_fast/reference.py; the op contract is synthcl_fast/backends/_ops.py.
//
// Row statistics are kept online over column tiles: per row the running max m, S = sum exp(s - m), the
// positive gap sum_p (s_ip - m) (moved with m) and |P|; then L_i = -gap_i / |P(i)| + log S_i, formed from
// quantities of the loss's own size, and the backward gets (m_i, log S_i).
//
// Threads (cpu_threads.h): each pass runs its work groups (row blocks, or pairs of row blocks) on threads
// that take them as they finish and never spin; every matrix product and row loop runs on one thread, with
// single-threaded MKL. What groups share (the candidates' gradient, and in the symmetric plan the row
// statistics and the whole gradient) is accumulated in per-group buffers (at most 4 per thread, each
// O((R + K) D)) merged in group order: bit-identical results run to run for a fixed thread count.
//
// Plans.
//  - General: rows in blocks; for each block the logits strip S = (U_b / t) V^T is formed one column tile at a
//    time in a per-thread buffer (never R x K), with the online statistics across tiles. For a scalar loss
//    (the gradient is computed in forward) a strip that is one tile is reused for the gradient: three
//    products per block (S, G V, G^T U): 6 R K D flops for forward + backward.
//  - Symmetric: the candidates are the anchors with the same labels (NT-Xent, SupCon, PPCL without extra
//    negatives): s and the positive mask are symmetric, so each pair of row blocks (I <= J) is formed once.
//    Forward: S_IJ gives the statistics of rows I (over columns J) and, transposed, of rows J (over columns
//    I): R K D flops. Gradient: M_IJ = G_IJ + G_JI^T from the recomputed S_IJ with both rows' statistics, then
//    dU_I += M_IJ U_J and dU_J += M_IJ^T U_I: 3 R K D flops. 4 R K D for forward + backward.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "common.h"
#include "cpu_threads.h"

namespace synthcl_fast {
namespace {

constexpr int64_t kStripBytes = 4 << 20;  // one thread's logits strip
constexpr int64_t kMaxBlockRows = 256;
constexpr int64_t kMinSingleTileRows = 64;  // below this a row block is too thin for an efficient product
constexpr int64_t kSymmetricBlock = 256;
constexpr int64_t kNoSelf = std::numeric_limits<int64_t>::min() / 2;

at::ScalarType accumulate_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// ---------------------------------------------------------------------------------------------------------
// Normalization and its backward
// ---------------------------------------------------------------------------------------------------------

// u = x / max(||x||, eps) in the accumulation type, and the clamped norms (float64). The squares are
// summed in float64, so fp32 rows neither overflow (|x| up to fp32's max) nor underflow (subnormals).
template <typename scalar_t, typename acc_t>
void normalize_rows_kernel(const scalar_t* x, int64_t n_rows, int64_t dim, double eps, acc_t* u, double* norms) {
  parallel_items(n_rows, dim, [&](int64_t lo, int64_t hi) {
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

// A gradient w.r.t. the normalized rows as parts (per-thread partial sums, and both roles of one tensor), each
// with the factor it still needs (1/t, the reduction's weight).
struct GradParts {
  std::vector<at::Tensor> parts;
  std::vector<double> factors;
  void add(const std::vector<at::Tensor>& more, double factor) {
    for (const auto& part : more) {
      parts.push_back(part);
      factors.push_back(factor);
    }
  }
};

// dx = (du - u (u . du)) / ||x|| with du = sum over the parts, in order, of factor * part; a row no longer than
// eps is a constant and gets no gradient. Written into the first part, then cast to the input dtype: one
// rounding of the whole gradient. (One parallel region: the factors are applied here, not by extra passes.)
template <typename acc_t>
at::Tensor normalize_backward(const GradParts& grad, const at::Tensor& u, const at::Tensor& norms, double eps,
                              at::ScalarType out_dtype) {
  const int64_t dim = u.size(1);
  acc_t* du_ptr = grad.parts[0].data_ptr<acc_t>();
  const acc_t first_factor = static_cast<acc_t>(grad.factors[0]);
  std::vector<const acc_t*> others;
  std::vector<acc_t> other_factors;
  for (size_t k = 1; k < grad.parts.size(); ++k) {
    others.push_back(grad.parts[k].data_ptr<acc_t>());
    other_factors.push_back(static_cast<acc_t>(grad.factors[k]));
  }
  const acc_t* u_ptr = u.data_ptr<acc_t>();
  const double* norm_ptr = norms.data_ptr<double>();
  parallel_items(u.size(0), dim * int64_t(1 + others.size()), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      acc_t* g = du_ptr + i * dim;
#pragma omp simd
      for (int64_t d = 0; d < dim; ++d) g[d] *= first_factor;
      for (size_t k = 0; k < others.size(); ++k) {
        const acc_t* other = others[k] + i * dim;
        const acc_t factor = other_factors[k];
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) g[d] += factor * other[d];
      }
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
  return grad.parts[0].to(out_dtype);
}

// ---------------------------------------------------------------------------------------------------------
// The problem, its per-thread partial sums, and the tile routines (each runs on one thread)
// ---------------------------------------------------------------------------------------------------------

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
  // The variant (synthcl_fast/reference.py, contrastive_loss_variant): 0 = the plain op; 1 = "negatives" (the
  // positives out of the log-sum-exp); 2 = "per_positive" (each positive against the negatives alone).
  int64_t denominator = 0;
  const acc_t* positive_weight = nullptr;  // (R,) w'_i on the positive term, or nullptr for 1 (variants only)
  // Which gradient products run (the op's gradient mask, GradMask): dU += G V for the anchors, dV += G^T U for
  // the candidates. A side that is off (a frozen tower, a MoCo queue) costs no product and no buffer.
  bool want_u = true, want_v = true;
};

// One zeroed buffer per group, created by the thread that runs the group; merged in group order by the caller.
struct PerGroup {
  std::vector<at::Tensor> buffers;
  std::vector<int64_t> shape;
  at::TensorOptions options;
  PerGroup(int64_t n_groups, std::vector<int64_t> shape_, at::TensorOptions options_)
      : buffers(n_groups), shape(std::move(shape_)), options(options_) {}
  at::Tensor& of(int64_t g) {
    if (!buffers[g].defined()) buffers[g] = at::zeros(shape, options);
    return buffers[g];
  }
  std::vector<at::Tensor> used() const {
    std::vector<at::Tensor> out;
    for (const auto& b : buffers)
      if (b.defined()) out.push_back(b);
    return out;
  }
};

// Per-group sums (the temperature gradient's terms, counts), added in group order.
struct GroupSums {
  std::vector<double> values;
  explicit GroupSums(int64_t n_groups) : values(n_groups, 0.0) {}
  double total() const {
    double sum = 0;
    for (double v : values) sum += v;
    return sum;
  }
};

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

// tile[0:bm, 0:tn] = (1/t) A B^T (rows of u or v): one product on this thread.
template <typename acc_t>
at::Tensor logits(const Problem<acc_t>& p, at::Tensor& buffer, const at::Tensor& a, const at::Tensor& b) {
  at::Tensor tile = buffer.narrow(0, 0, a.size(0) * b.size(0)).view({a.size(0), b.size(0)});
  at::addmm_out(tile, tile, a, b.t(), /*beta=*/0, /*alpha=*/p.inv_t);
  return tile;
}

// A diagonal block's logits U_I U_I^T / t made exactly symmetric (the upper triangle copied onto the lower). The
// symmetric plan reads s_ji as s_ij (row j's statistics from the transposed pair, M = G + G'^T), but a
// multi-threaded GEMM does not return an exactly symmetric product (MKL with 2 threads: s_ij and s_ji 1 ulp
// apart); at a small loss that ulp (2.4e-6 at 1/t = 25) is the size of the positive's gradient term itself, and
// the gradient came out ~1e-3 off instead of ~1e-6.
template <typename acc_t>
void make_symmetric(at::Tensor& tile) {
  acc_t* s = tile.data_ptr<acc_t>();
  const int64_t n = tile.size(0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) s[j * n + i] = s[i * n + j];
}

// ---------------------------------------------------------------------------------------------------------
// Hot loops: one row of one tile. The build is portable (no -march=native), so these are compiled for several
// instruction sets and the best one the CPU has is picked when the library loads (target_clones): the exp and
// label passes vectorize 16 floats wide with AVX-512, 8 with AVX2, 4 otherwise.
// ---------------------------------------------------------------------------------------------------------

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define SYNTHCL_FAST_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SYNTHCL_FAST_CLONES
#endif
#define SYNTHCL_FAST_INLINE inline __attribute__((always_inline))

// The max of a row segment, skipping NaN. Written as 16 running lanes (an element-wise max the compiler
// vectorizes): GCC does not vectorize a max reduction without -ffast-math. kNegativesOnly (the variants, which
// leave the positives out of the log-sum-exp): over the negatives only, so that a positive far above every
// negative cannot shift their sum into underflow (labels / label are read only then).
template <bool kNegativesOnly, typename T>
SYNTHCL_FAST_INLINE T row_max_impl(const T* s, int64_t n, const int64_t* labels = nullptr, int64_t label = 0) {
  constexpr int kLanes = 16;
  constexpr T kMinusInf = -std::numeric_limits<T>::infinity();
  const auto value = [&](int64_t j) {
    if constexpr (kNegativesOnly) return labels[j] == label && labels[j] >= 0 ? kMinusInf : s[j];
    return s[j];
  };
  T lanes[kLanes];
  for (int k = 0; k < kLanes; ++k) lanes[k] = kMinusInf;
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const T x = value(j + k);
      lanes[k] = x > lanes[k] ? x : lanes[k];
    }
  T m = kMinusInf;
  for (; j < n; ++j) {
    const T x = value(j);
    m = x > m ? x : m;
  }
  for (int k = 0; k < kLanes; ++k) m = lanes[k] > m ? lanes[k] : m;
  return m;
}

// Sums of one row segment against the shift (the row's max): the terms below the max, summed in T (each < 1, so
// that a sum near 1 is never rounded at 1's spacing), how many terms equal the max (exactly 1 each), the
// positive gap sum_p (s_p - shift) and |P|. NaN terms reach `rest` (NaN == 0 is false). kNegativesOnly (the
// variants' denominator): `rest` and `n_max` count the negatives only (shifted <= 0 for them; a positive's
// shifted may be > 0 and is never exponentiated).
template <typename T>
struct RowSums {
  T rest = 0, gap = 0;
  int64_t n_max = 0, n_positive = 0;
};

template <bool kNegativesOnly, typename T>
SYNTHCL_FAST_INLINE void row_sums_impl(const T* s, int64_t n, T shift, const int64_t* labels, int64_t label,
                                       RowSums<T>& out) {
  T rest = 0, gap = 0;
  int64_t n_max = 0, n_positive = 0;
#pragma omp simd reduction(+ : rest, gap, n_max, n_positive)
  for (int64_t j = 0; j < n; ++j) {
    const T shifted = s[j] - shift;
    const bool positive = labels[j] == label && labels[j] >= 0;
    const bool skipped = kNegativesOnly && positive;
    const bool at_max = !skipped && shifted == T(0);
    rest += (skipped || at_max) ? T(0) : exp_nonpositive(skipped ? T(0) : shifted);
    n_max += at_max ? 1 : 0;
    gap += positive ? shifted : T(0);
    n_positive += positive ? 1 : 0;
  }
  out.rest += rest;
  out.gap += gap;
  out.n_max += n_max;
  out.n_positive += n_positive;
}

// w (p_j - [j in P] c) with p_j = e^{x_j}, x_j = (s_j - m) - log S, c = 1/|P|, formed by exp_minus (e^x - c from
// 2^n expm1(r) + (2^n - c)), not as a rounded e^{x_j} minus c: at a small loss p_j -> c (for |P| = 1,
// x_j = -L_i), and e^{x_j} rounded near c keeps p_j - c only to eps c absolute, eps / L_i relative (the error of
// a plain fp32 cross-entropy's softmax - 1). The same operations per element as e^x - c.
template <typename T>
SYNTHCL_FAST_INLINE T softmax_term(T shifted, T log_sum, bool positive, T w, T c) {
  return w * exp_minus(shifted - log_sum, positive ? c : T(0));
}

// G_j = w (exp((s_j - m) - log S) - [j in P] / |P|) in place of s_j (softmax_term); returns sum_j G_j (s_j - m).
template <typename T>
SYNTHCL_FAST_INLINE T row_gradient_impl(T* s, int64_t n, T row_max, T row_log_sum, T w, T positive_weight,
                                        const int64_t* labels, int64_t label) {
  T gs = 0;
#pragma omp simd reduction(+ : gs)
  for (int64_t j = 0; j < n; ++j) {
    const T shifted = s[j] - row_max;
    const bool positive = labels[j] == label && labels[j] >= 0;
    const T g = softmax_term(shifted, row_log_sum, positive, w, positive_weight);
    gs += g * shifted;
    s[j] = g;
  }
  return gs;
}

// Per-column quantities of the other term of the symmetric plan (indexed by the tile's column).
template <typename T>
struct ColumnTerms {
  const T *weight, *max, *log_sum, *inv_positives;
};

// The symmetric plan's M_j = G_j (own row's statistics) + G'_j (column j's statistics, the transposed pair) in
// place of s_j; returns the sum of each term times (s_j - its max). A column without positives has weight 0.
template <typename T>
SYNTHCL_FAST_INLINE T row_gradient_both_impl(T* s, int64_t n, T row_max, T row_log_sum, T w, T positive_weight,
                                             const int64_t* labels, int64_t label, ColumnTerms<T> col) {
  T gs = 0;
#pragma omp simd reduction(+ : gs)
  for (int64_t j = 0; j < n; ++j) {
    const bool positive = labels[j] == label && labels[j] >= 0;  // the same seen from either end
    const bool col_live = col.weight[j] != T(0);
    const T own_shifted = s[j] - row_max;
    const T other_shifted = s[j] - (col_live ? col.max[j] : T(0));
    const T own = softmax_term(own_shifted, row_log_sum, positive, w, positive_weight);
    const T other =
        col_live ? softmax_term(other_shifted, col.log_sum[j], positive, col.weight[j], col.inv_positives[j]) : T(0);
    gs += own * own_shifted + other * other_shifted;
    s[j] = own + other;
  }
  return gs;
}

// The variants' G_j in place of s_j (x_j = s_j - m - log S = s_j - lse_Neg; x_j <= 0 for a negative):
//   negative:  w coef e^{x_j}                          (coef: 1 for "negatives"; c_i for "per_positive")
//   positive:  w (pos_scale sigmoid(x_j) - pos_weight) (pos_scale: 0, or 1/|P| for "per_positive";
//                                                       pos_weight = w'_i / |P|)
//            = w ((pos_scale - pos_weight) - pos_scale sigmoid(-x_j)): at a small "per_positive" loss x_j >> 0,
//              sigmoid(x_j) -> 1, and a rounded sigmoid(x_j) minus w' = 1 would keep sigmoid(-x_j) (~ the loss)
//              only to eps absolute.
// Returns sum_j G_j (s_j - m).
template <typename T>
SYNTHCL_FAST_INLINE T row_gradient_variant_impl(T* s, int64_t n, T row_max, T row_log_sum, T w, T coef, T pos_scale,
                                                T pos_weight, const int64_t* labels, int64_t label) {
  T gs = 0;
#pragma omp simd reduction(+ : gs)
  for (int64_t j = 0; j < n; ++j) {
    const T shifted = s[j] - row_max;
    const bool positive = labels[j] == label && labels[j] >= 0;
    const T x = shifted - row_log_sum;
    const T e = exp_nonpositive(positive ? -std::abs(x) : x);  // e^{-|x|} for a positive: sigmoid without overflow
    const T sigmoid_minus = x <= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);  // sigmoid(-x)
    const T g = w * (positive ? (pos_scale - pos_weight) - pos_scale * sigmoid_minus : coef * e);
    gs += g * shifted;
    s[j] = g;
  }
  return gs;
}

// The compiled entry points (one per type and instruction set).
SYNTHCL_FAST_CLONES float row_max(const float* s, int64_t n) { return row_max_impl<false>(s, n); }
SYNTHCL_FAST_CLONES double row_max(const double* s, int64_t n) { return row_max_impl<false>(s, n); }
SYNTHCL_FAST_CLONES void row_sums(const float* s, int64_t n, float shift, const int64_t* labels, int64_t label,
                                  RowSums<float>& out) {
  row_sums_impl<false>(s, n, shift, labels, label, out);
}
SYNTHCL_FAST_CLONES void row_sums(const double* s, int64_t n, double shift, const int64_t* labels, int64_t label,
                                  RowSums<double>& out) {
  row_sums_impl<false>(s, n, shift, labels, label, out);
}
SYNTHCL_FAST_CLONES float row_gradient(float* s, int64_t n, float row_max, float row_log_sum, float w,
                                       float positive_weight, const int64_t* labels, int64_t label) {
  return row_gradient_impl(s, n, row_max, row_log_sum, w, positive_weight, labels, label);
}
SYNTHCL_FAST_CLONES double row_gradient(double* s, int64_t n, double row_max, double row_log_sum, double w,
                                        double positive_weight, const int64_t* labels, int64_t label) {
  return row_gradient_impl(s, n, row_max, row_log_sum, w, positive_weight, labels, label);
}
SYNTHCL_FAST_CLONES float row_gradient_both(float* s, int64_t n, float row_max, float row_log_sum, float w,
                                            float positive_weight, const int64_t* labels, int64_t label,
                                            ColumnTerms<float> col) {
  return row_gradient_both_impl(s, n, row_max, row_log_sum, w, positive_weight, labels, label, col);
}
SYNTHCL_FAST_CLONES double row_gradient_both(double* s, int64_t n, double row_max, double row_log_sum, double w,
                                             double positive_weight, const int64_t* labels, int64_t label,
                                             ColumnTerms<double> col) {
  return row_gradient_both_impl(s, n, row_max, row_log_sum, w, positive_weight, labels, label, col);
}

SYNTHCL_FAST_CLONES float row_max_negatives(const float* s, int64_t n, const int64_t* labels, int64_t label) {
  return row_max_impl<true>(s, n, labels, label);
}
SYNTHCL_FAST_CLONES double row_max_negatives(const double* s, int64_t n, const int64_t* labels, int64_t label) {
  return row_max_impl<true>(s, n, labels, label);
}
SYNTHCL_FAST_CLONES void row_sums_negatives(const float* s, int64_t n, float shift, const int64_t* labels,
                                            int64_t label, RowSums<float>& out) {
  row_sums_impl<true>(s, n, shift, labels, label, out);
}
SYNTHCL_FAST_CLONES void row_sums_negatives(const double* s, int64_t n, double shift, const int64_t* labels,
                                            int64_t label, RowSums<double>& out) {
  row_sums_impl<true>(s, n, shift, labels, label, out);
}
SYNTHCL_FAST_CLONES float row_gradient_variant(float* s, int64_t n, float row_max, float row_log_sum, float w,
                                               float coef, float pos_scale, float pos_weight, const int64_t* labels,
                                               int64_t label) {
  return row_gradient_variant_impl(s, n, row_max, row_log_sum, w, coef, pos_scale, pos_weight, labels, label);
}
SYNTHCL_FAST_CLONES double row_gradient_variant(double* s, int64_t n, double row_max, double row_log_sum, double w,
                                                double coef, double pos_scale, double pos_weight,
                                                const int64_t* labels, int64_t label) {
  return row_gradient_variant_impl(s, n, row_max, row_log_sum, w, coef, pos_scale, pos_weight, labels, label);
}

// HCL's row statistics (hard_negative_stats, below): one row segment's extremes and counts ...
template <typename T>
struct HardExtremes {
  T negative_max, negative_min, positive_max;
  double positive_sum = 0;
  int64_t n_negative = 0, n_positive = 0;
};

template <typename T>
SYNTHCL_FAST_INLINE void hard_extremes_impl(const T* s, int64_t n, const int64_t* labels, int64_t label,
                                            HardExtremes<T>& out) {
  constexpr int kLanes = 16;  // running lanes, as in row_max_impl (NaN skipped)
  constexpr T kInf = std::numeric_limits<T>::infinity();
  T neg_max[kLanes], neg_min[kLanes], pos_max[kLanes];
  for (int k = 0; k < kLanes; ++k) neg_max[k] = pos_max[k] = -kInf, neg_min[k] = kInf;
  T positive_sum = 0;
  int64_t n_positive = 0;
  int64_t j = 0;
  const auto visit = [&](int64_t jj, int k) {
    const T x = s[jj];
    const bool positive = labels[jj] == label && labels[jj] >= 0;
    const T as_negative_max = positive ? -kInf : x, as_negative_min = positive ? kInf : x;
    const T as_positive = positive ? x : -kInf;
    neg_max[k] = as_negative_max > neg_max[k] ? as_negative_max : neg_max[k];
    neg_min[k] = as_negative_min < neg_min[k] ? as_negative_min : neg_min[k];
    pos_max[k] = as_positive > pos_max[k] ? as_positive : pos_max[k];
    positive_sum += positive ? x : T(0);
    n_positive += positive ? 1 : 0;
  };
  for (; j + kLanes <= n; j += kLanes)
    for (int k = 0; k < kLanes; ++k) visit(j + k, k);
  for (; j < n; ++j) visit(j, 0);
  for (int k = 0; k < kLanes; ++k) {
    out.negative_max = neg_max[k] > out.negative_max ? neg_max[k] : out.negative_max;
    out.negative_min = neg_min[k] < out.negative_min ? neg_min[k] : out.negative_min;
    out.positive_max = pos_max[k] > out.positive_max ? pos_max[k] : out.positive_max;
  }
  out.positive_sum += static_cast<double>(positive_sum);
  out.n_positive += n_positive;
  out.n_negative += n - n_positive;
}

// ... its sums against the references: part[k] += sum_{set k} e^{c_k (s_j - r_k)} (every exponent <= 0)
template <typename T>
SYNTHCL_FAST_INLINE void hard_sums_impl(const T* s, int64_t n, const int64_t* labels, int64_t label, const T* c,
                                        const T* r, T* part) {
  const T c0 = c[0], c1 = c[1], r0 = r[0], r1 = r[1], r2 = r[2];
  T p0 = 0, p1 = 0, p2 = 0;
#pragma omp simd reduction(+ : p0, p1, p2)
  for (int64_t j = 0; j < n; ++j) {
    const T x = s[j];
    const bool positive = labels[j] == label && labels[j] >= 0;
    const T e0 = exp_nonpositive(positive ? T(0) : c0 * (x - r0));
    const T e1 = exp_nonpositive(positive ? T(0) : c1 * (x - r1));
    const T e2 = exp_nonpositive(positive ? x - r2 : T(0));
    p0 += positive ? T(0) : e0;
    p1 += positive ? T(0) : e1;
    p2 += positive ? e2 : T(0);
  }
  part[0] += p0;
  part[1] += p1;
  part[2] += p2;
}

// ... and its gradient G_j in place of s_j (a: the sets' coefficients, a[3] = h / |P|; l: log S per set);
// returns sum_j G_j (s_j - rho).
template <typename T>
SYNTHCL_FAST_INLINE T hard_gradient_impl(T* s, int64_t n, const int64_t* labels, int64_t label, const T* c,
                                         const T* r, const T* l, const T* a, T rho) {
  const T c0 = c[0], c1 = c[1], r0 = r[0], r1 = r[1], r2 = r[2], l0 = l[0], l1 = l[1], l2 = l[2];
  const T a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
  T gs = 0;
#pragma omp simd reduction(+ : gs)
  for (int64_t j = 0; j < n; ++j) {
    const T x = s[j];
    const bool positive = labels[j] == label && labels[j] >= 0;
    const T e0 = exp_nonpositive(positive ? T(0) : c0 * (x - r0) - l0);
    const T e1 = exp_nonpositive(positive ? T(0) : c1 * (x - r1) - l1);
    const T e2 = exp_nonpositive(positive ? (x - r2) - l2 : T(0));
    const T g = positive ? a2 * e2 + a3 : a0 * e0 + a1 * e1;
    gs += g * (x - rho);
    s[j] = g;
  }
  return gs;
}

SYNTHCL_FAST_CLONES void hard_extremes(const float* s, int64_t n, const int64_t* labels, int64_t label,
                                       HardExtremes<float>& out) {
  hard_extremes_impl(s, n, labels, label, out);
}
SYNTHCL_FAST_CLONES void hard_extremes(const double* s, int64_t n, const int64_t* labels, int64_t label,
                                       HardExtremes<double>& out) {
  hard_extremes_impl(s, n, labels, label, out);
}
SYNTHCL_FAST_CLONES void hard_sums(const float* s, int64_t n, const int64_t* labels, int64_t label, const float* c,
                                   const float* r, float* part) {
  hard_sums_impl(s, n, labels, label, c, r, part);
}
SYNTHCL_FAST_CLONES void hard_sums(const double* s, int64_t n, const int64_t* labels, int64_t label, const double* c,
                                   const double* r, double* part) {
  hard_sums_impl(s, n, labels, label, c, r, part);
}
SYNTHCL_FAST_CLONES float hard_gradient(float* s, int64_t n, const int64_t* labels, int64_t label, const float* c,
                                        const float* r, const float* l, const float* a, float rho) {
  return hard_gradient_impl(s, n, labels, label, c, r, l, a, rho);
}
SYNTHCL_FAST_CLONES double hard_gradient(double* s, int64_t n, const int64_t* labels, int64_t label, const double* c,
                                         const double* r, const double* l, const double* a, double rho) {
  return hard_gradient_impl(s, n, labels, label, c, r, l, a, rho);
}

// Running statistics of rows (arrays indexed by the tile's row): max m, S = sum of exp(s - m) kept as two parts,
// at_max (the terms at the max, each exactly 1) and rest (the others), positive gap sum_p (s_p - m), |P|. Why two
// parts: a small loss is log S = log(1 + rest) with rest << 1, and the log of a rounded 1 + rest keeps only eps
// absolute (eps / loss relative: 2e-7 at a loss of 1e-10 in float64); log_sum_exp forms log1p(rest) instead. S is
// summed in float64: in float32 every term added to a running S near 1 would round at 1.2e-7 of S.
template <typename acc_t>
struct RowStats {
  acc_t *max, *gap;
  double *at_max, *rest;
  int64_t* n_positive;
};

// log S = log(at_max + rest) without rounding the sum first: log(at_max) + log1p(rest / at_max).
inline double log_sum_exp(double at_max, double rest) {
  return at_max > 0.0 ? std::log(at_max) + std::log1p(rest / at_max) : std::log(at_max + rest);
}

// The terms of S moved to a higher max (factor = e^(old max - new max) < 1): none of them is at it any more.
inline void move_to_higher_max(double& at_max, double& rest, double factor) {
  rest = (at_max + rest) * factor;
  at_max = 0.0;
}

// Online update of the statistics of the tile's rows with its columns. row_labels / col_labels: the tile's
// labels; the self column of tile row i is self0 + i (kNoSelf: none).
template <typename acc_t>
void update_row_stats(const acc_t* tile, int64_t bm, int64_t tn, const int64_t* row_labels, const int64_t* col_labels,
                      int64_t self0, RowStats<acc_t> st) {
  constexpr acc_t kMinusInf = -std::numeric_limits<acc_t>::infinity();
  for (int64_t i = 0; i < bm; ++i) {
    const acc_t* s = tile + i * tn;
    const int64_t self = self0 + i;
    if (tn == 1 && self == 0) continue;  // the tile holds only the excluded self column
    const int64_t label = row_labels[i];
    acc_t tile_max = kMinusInf;
    for_each_allowed(0, tn, self, [&](int64_t a, int64_t b) { tile_max = std::max(tile_max, row_max(s + a, b - a)); });
    // The max skips NaN logits (NaN features); the sums below do not, so NaN
    // reaches the loss. -inf only then: shift by 0 so that the sums are NaN, not skipped.
    const acc_t new_max = std::max(st.max[i], tile_max);
    const acc_t shift = new_max == kMinusInf ? acc_t(0) : new_max;
    RowSums<acc_t> sums;
    for_each_allowed(0, tn, self, [&](int64_t a, int64_t b) { row_sums(s + a, b - a, shift, col_labels + a, label, sums); });
    if (st.max[i] != kMinusInf && shift != st.max[i]) {  // the earlier tiles' terms, moved to the new max
      move_to_higher_max(st.at_max[i], st.rest[i], static_cast<double>(exp_nonpositive(st.max[i] - shift)));
      st.gap[i] += static_cast<acc_t>(st.n_positive[i]) * (st.max[i] - shift);
    }
    st.at_max[i] += static_cast<double>(sums.n_max);
    st.rest[i] += static_cast<double>(sums.rest);
    st.gap[i] += sums.gap;
    st.n_positive[i] += sums.n_positive;
    st.max[i] = shift;
  }
}

// update_row_stats for the variants: m, S over the negatives only. Until a row has seen a negative (S == 0) its
// positives' gap is kept relative to the previous shift (0 at first) and the first negatives set the max: a
// stand-in max must never stay as the shift of the real sum (exp_nonpositive flushes below e^-87).
template <typename acc_t>
void update_row_stats_negatives(const acc_t* tile, int64_t bm, int64_t tn, const int64_t* row_labels,
                                const int64_t* col_labels, int64_t self0, RowStats<acc_t> st) {
  constexpr acc_t kMinusInf = -std::numeric_limits<acc_t>::infinity();
  for (int64_t i = 0; i < bm; ++i) {
    const acc_t* s = tile + i * tn;
    const int64_t self = self0 + i;
    if (tn == 1 && self == 0) continue;
    const int64_t label = row_labels[i];
    acc_t tile_max = kMinusInf;
    for_each_allowed(0, tn, self, [&](int64_t a, int64_t b) {
      tile_max = std::max(tile_max, row_max_negatives(s + a, b - a, col_labels + a, label));
    });
    const bool seen = !(st.at_max[i] + st.rest[i] == 0.0);  // a NaN sum counts as seen
    const acc_t previous = st.max[i] == kMinusInf ? acc_t(0) : st.max[i];
    const acc_t new_max = std::max(seen ? st.max[i] : kMinusInf, tile_max);
    const acc_t shift = new_max == kMinusInf ? previous : new_max;
    RowSums<acc_t> sums;
    for_each_allowed(0, tn, self, [&](int64_t a, int64_t b) {
      row_sums_negatives(s + a, b - a, shift, col_labels + a, label, sums);
    });
    if (shift != previous) {  // the earlier tiles' terms, moved to the new shift
      if (seen) move_to_higher_max(st.at_max[i], st.rest[i], static_cast<double>(exp_nonpositive(previous - shift)));
      st.gap[i] += static_cast<acc_t>(st.n_positive[i]) * (previous - shift);
    }
    st.at_max[i] += static_cast<double>(sums.n_max);
    st.rest[i] += static_cast<double>(sums.rest);
    st.gap[i] += sums.gap;
    st.n_positive[i] += sums.n_positive;
    st.max[i] = shift;
  }
}

// "per_positive": once the row's m and S over the negatives are final, sum_p softplus(z_ip) and
// sum_p sigmoid(z_ip) over the positives of the tile, z_ip = lse_Neg(i) - s_ip = log S_i - (s_ip - m_i)
// (-inf without negatives: softplus 0, sigmoid 0), in float64.
template <typename acc_t>
void positive_terms(const acc_t* tile, int64_t bm, int64_t tn, const int64_t* row_labels, const int64_t* col_labels,
                    int64_t self0, const acc_t* max, const double* at_max, const double* rest, double* softplus_sum,
                    double* sigmoid_sum) {
  for (int64_t i = 0; i < bm; ++i) {
    const acc_t* s = tile + i * tn;
    const int64_t self = self0 + i, label = row_labels[i];
    const double log_sum = log_sum_exp(at_max[i], rest[i]), m = static_cast<double>(max[i]);
    for (int64_t j = 0; j < tn; ++j) {
      if (j == self || !(col_labels[j] == label && col_labels[j] >= 0)) continue;
      const double z = log_sum - (static_cast<double>(s[j]) - m);
      const double e = std::exp(-std::abs(z));  // NaN z: NaN sums
      softplus_sum[i] += std::max(z, 0.0) + std::log1p(e);
      sigmoid_sum[i] += z >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
    }
  }
}

// Per-row quantities of the gradient, indexed by problem row: m, log S, |P| and the upstream weight. For the
// column side of the symmetric plan also, per row, the weight (0 without positives) and 1/|P|, so that the
// inner loop reads them as vectors.
template <typename acc_t>
struct GradStats {
  const acc_t *max, *log_sum, *weight;
  const int32_t* n_positive;
  std::vector<acc_t> live_weight, inv_positives;
  // The variants (Problem::denominator): c_i of "per_positive" (mean_p sigmoid(lse_Neg(i) - s_ip)) and w'_i.
  int64_t denominator = 0;
  const acc_t *coef = nullptr, *positive_weight = nullptr;

  GradStats(const acc_t* max_, const acc_t* log_sum_, const int32_t* n_positive_, const acc_t* weight_)
      : max(max_), log_sum(log_sum_), weight(weight_), n_positive(n_positive_) {}

  void precompute(int64_t n) {  // for the column side
    live_weight.resize(n);
    inv_positives.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      const bool live = n_positive[i] > 0;
      inv_positives[i] = live ? acc_t(1) / static_cast<acc_t>(n_positive[i]) : acc_t(0);
      live_weight[i] = live ? weight[i] : acc_t(0);
    }
  }
};

// Overwrites the tile with G: for tile row i (problem row r0 + i) and tile column j (problem row c0 + j of the
// column side),
//   G_ij = w_i (exp((s_ij - m_i) - log S_i) - [j in P(i)] / |P(i)|)                                   (own term)
//        + w'_j (exp((s_ij - m'_j) - log S'_j) - [i in P'(j)] / |P'(j)|)   with cols (the symmetric plan)
// and returns the sum of each term times (s_ij - its row's max) (for the temperature gradient: sum_j G_ij = 0
// per row, so the shift removes the 1/t-sized common part). The self column gets G = 0.
template <typename acc_t>
double gradient_tile(acc_t* tile, int64_t bm, int64_t tn, const int64_t* row_labels, const int64_t* col_labels,
                     int64_t self0, const GradStats<acc_t>& rows, int64_t r0, const GradStats<acc_t>* cols,
                     int64_t c0) {
  double gs_total = 0;
  for (int64_t i = 0; i < bm; ++i) {
    acc_t* s = tile + i * tn;
    const int64_t row = r0 + i, self = self0 + i;
    const int64_t label = row_labels[i];
    const bool live = rows.n_positive[row] > 0;
    const acc_t w = live ? rows.weight[row] : acc_t(0);
    const acc_t row_max = live ? rows.max[row] : acc_t(0), row_log_sum = live ? rows.log_sum[row] : acc_t(0);
    const acc_t positive_weight = live ? acc_t(1) / static_cast<acc_t>(rows.n_positive[row]) : acc_t(0);
    acc_t gs = 0;
    if (cols == nullptr && rows.denominator != kAll) {
      if (w == acc_t(0)) {
        std::fill(s, s + tn, acc_t(0));
        continue;
      }
      // sum_j G_ij = w_i (1 - w'_i) for both variants (with negatives; without them m_i is 0): the shift-free
      // sum of the temperature gradient gets m_i w_i (1 - w'_i) back.
      const acc_t wp = rows.positive_weight ? rows.positive_weight[row] : acc_t(1);
      const bool per_positive = rows.denominator == kPerPositive;
      const acc_t coef = per_positive ? rows.coef[row] : acc_t(1);
      const acc_t pos_scale = per_positive ? positive_weight : acc_t(0);
      for_each_allowed(0, tn, self, [&](int64_t a, int64_t b) {
        gs += row_gradient_variant(s + a, b - a, row_max, row_log_sum, w, coef, pos_scale, wp * positive_weight,
                                   col_labels + a, label);
      });
      if (c0 == 0) gs += row_max * w * (acc_t(1) - wp);  // once per row: on its first column tile
    } else if (cols == nullptr) {
      if (w == acc_t(0)) {  // a row without positives (or zero upstream weight) adds nothing
        std::fill(s, s + tn, acc_t(0));
        continue;
      }
      for_each_allowed(0, tn, self, [&](int64_t a, int64_t b) {
        gs += row_gradient(s + a, b - a, row_max, row_log_sum, w, positive_weight, col_labels + a, label);
      });
    } else {
      // Columns without positives have weight 0 and may have m = -inf: their max is read as 0 (the term is 0).
      for_each_allowed(0, tn, self, [&](int64_t a, int64_t b) {
        const ColumnTerms<acc_t> col{cols->live_weight.data() + c0 + a, cols->max + c0 + a, cols->log_sum + c0 + a,
                                     cols->inv_positives.data() + c0 + a};
        gs += row_gradient_both(s + a, b - a, row_max, row_log_sum, w, positive_weight, col_labels + a, label, col);
      });
    }
    if (self >= 0 && self < tn) s[self] = 0;
    gs_total += static_cast<double>(gs);
  }
  return gs_total;
}

struct Gradients {
  std::vector<at::Tensor> grad_u, grad_v;  // w.r.t. the normalized rows: parts, summed in order
  double factor_u = 1, factor_v = 1;       // what each still needs (1/t; the caller's reduction weight)
  bool combined = false;                   // grad_u holds both roles (one tensor; grad_v empty)
  double sum_gs = 0;                       // sum_ij G_ij (s_ij - m_i)
};

// {t} for a computed gradient buffer, {} for one that was not asked for (Problem::want_u).
inline std::vector<at::Tensor> defined_parts(const at::Tensor& t) {
  return t.defined() ? std::vector<at::Tensor>{t} : std::vector<at::Tensor>{};
}

struct ForwardResult {
  at::Tensor row_loss, max, log_sum, n_positive;
  at::Tensor coef, positive_mean;  // the variants only: c_i ("per_positive"; 1 otherwise), mean_p s_ip (0 w/o P)
  int64_t n_valid = 0;
};

template <typename acc_t>
ForwardResult new_forward_result(const Problem<acc_t>& p) {
  auto opts = p.v.options();
  ForwardResult out{empty_output({p.n_rows}, opts), empty_output({p.n_rows}, opts), empty_output({p.n_rows}, opts),
                    empty_output({p.n_rows}, opts.dtype(at::kInt))};
  if (p.denominator != kAll) {
    out.coef = empty_output({p.n_rows}, opts);
    out.positive_mean = empty_output({p.n_rows}, opts);
  }
  return out;
}

// Writes m, log S, |P| and L_i of the rows [r0, r0 + n) from their statistics; returns how many have a positive.
// The variants' rows (m, S over the negatives; softplus_sum and sigmoid_sum: positive_terms, "per_positive"):
//   mean_p s_ip = m_i + gap_i / |P(i)|
//   "negatives"     L_i = log S_i - gap_i / |P(i)|            + (1 - w'_i) mean_p s_ip   (= lse_Neg - w' mean_p s)
//   "per_positive"  L_i = softplus_sum_i / |P(i)|              + (1 - w'_i) mean_p s_ip
//                   c_i = sigmoid_sum_i / |P(i)|
// (for w' = 1 the loss is formed from quantities of its own size, as in finish_rows).
template <typename acc_t>
int64_t finish_variant_rows(RowStats<acc_t> st, const double* softplus_sum, const double* sigmoid_sum, int64_t r0,
                            int64_t n, const Problem<acc_t>& p, ForwardResult& out) {
  acc_t* loss = out.row_loss.data_ptr<acc_t>();
  acc_t* max = out.max.data_ptr<acc_t>();
  acc_t* log_sum = out.log_sum.data_ptr<acc_t>();
  acc_t* coef = out.coef.data_ptr<acc_t>();
  acc_t* positive_mean = out.positive_mean.data_ptr<acc_t>();
  int32_t* npos = out.n_positive.data_ptr<int32_t>();
  int64_t n_valid = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = r0 + i;
    const bool live = st.n_positive[i] > 0;
    const acc_t count = static_cast<acc_t>(std::max<int64_t>(st.n_positive[i], 1));
    const acc_t wp = p.positive_weight ? p.positive_weight[row] : acc_t(1);
    max[row] = st.max[i];
    log_sum[row] = static_cast<acc_t>(log_sum_exp(st.at_max[i], st.rest[i]));
    npos[row] = static_cast<int32_t>(st.n_positive[i]);
    const acc_t mean_s = live ? st.max[i] + st.gap[i] / count : acc_t(0);
    positive_mean[row] = mean_s;
    const acc_t weight_term = wp == acc_t(1) ? acc_t(0) : (acc_t(1) - wp) * mean_s;
    acc_t row_loss;
    if (p.denominator == kPerPositive) {
      row_loss = static_cast<acc_t>(softplus_sum[i] / static_cast<double>(count)) + weight_term;
      coef[row] = static_cast<acc_t>(sigmoid_sum[i] / static_cast<double>(count));
    } else {
      row_loss = log_sum[row] - st.gap[i] / count + weight_term;
      coef[row] = acc_t(1);
    }
    loss[row] = live ? row_loss : acc_t(0);
    n_valid += live;
  }
  return n_valid;
}

template <typename acc_t>
int64_t finish_rows(RowStats<acc_t> st, int64_t r0, int64_t n, ForwardResult& out) {
  acc_t* loss = out.row_loss.data_ptr<acc_t>();
  acc_t* max = out.max.data_ptr<acc_t>();
  acc_t* log_sum = out.log_sum.data_ptr<acc_t>();
  int32_t* npos = out.n_positive.data_ptr<int32_t>();
  int64_t n_valid = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = r0 + i;
    // A row whose denominator is empty (R = K = 1 with exclude_self) has no positive either: m = -inf.
    max[row] = st.max[i];
    log_sum[row] = static_cast<acc_t>(log_sum_exp(st.at_max[i], st.rest[i]));
    npos[row] = static_cast<int32_t>(st.n_positive[i]);
    loss[row] = st.n_positive[i] > 0 ? log_sum[row] - st.gap[i] / static_cast<acc_t>(st.n_positive[i]) : acc_t(0);
    n_valid += st.n_positive[i] > 0;
  }
  return n_valid;
}

// ---------------------------------------------------------------------------------------------------------
// General plan: row blocks, column tiles
// ---------------------------------------------------------------------------------------------------------

struct BlockPlan {
  int64_t block_rows, tile_cols, n_blocks;
};

// A block of rows spans the whole strip when that leaves it at least kMinSingleTileRows rows (the strip is
// then reused for the gradient); otherwise blocks of kMaxBlockRows rows stream the columns in tiles (few rows
// against many columns: MoCo's queue).
template <typename acc_t>
BlockPlan block_plan(int64_t n_rows, int64_t n_cols) {
  const int64_t bytes = static_cast<int64_t>(sizeof(acc_t));
  const int64_t strip_rows = kStripBytes / (bytes * n_cols);
  const int64_t block_rows = std::min(n_rows, strip_rows >= kMinSingleTileRows ? std::min(strip_rows, kMaxBlockRows)
                                                                                : kMaxBlockRows);
  const int64_t tile_cols = std::min(n_cols, std::max<int64_t>(1, kStripBytes / (bytes * block_rows)));
  return {block_rows, tile_cols, (n_rows + block_rows - 1) / block_rows};
}

// The gradient of row block [r0, r0 + bm) over every column tile: dU_b += G V_tile (1/t applied by the caller)
// into grad_u, dV_tile += (1/t) G^T U_b into grad_v (this thread's part); fill(tile, bm, tn, r0, c0) overwrites a
// tile's logits with G and returns its part of sum_ij G_ij (s_ij - m_i). `tile`, when defined, already holds the
// block's logits over all the columns (one tile): reused, not recomputed. Only the products p.want_u / p.want_v
// ask for run (grad_u / grad_v are undefined otherwise); G itself is needed by either side and the temperature.
template <typename acc_t, typename Fill>
double gradient_block(const Problem<acc_t>& p, const BlockPlan& plan, int64_t r0, int64_t bm, at::Tensor tile,
                      at::Tensor& strip, const Fill& fill, at::Tensor& grad_u, at::Tensor& grad_v) {
  double gs = 0;
  const at::Tensor u_block = p.u.narrow(0, r0, bm);
  at::Tensor grad_u_block = p.want_u ? grad_u.narrow(0, r0, bm) : at::Tensor();
  for (int64_t c0 = 0; c0 < p.n_cols; c0 += plan.tile_cols) {
    const int64_t tn = std::min(plan.tile_cols, p.n_cols - c0);
    const at::Tensor v_tile = p.v.narrow(0, c0, tn);
    if (!tile.defined() || tn != p.n_cols) tile = logits(p, strip, u_block, v_tile);
    gs += fill(tile.data_ptr<acc_t>(), bm, tn, r0, c0);
    if (p.want_u) grad_u_block.addmm_(tile, v_tile);
    if (p.want_v) grad_v.narrow(0, c0, tn).addmm_(tile.t(), u_block, /*beta=*/1, /*alpha=*/p.inv_t);
  }
  return gs;
}

// fill for gradient_block: the plain op's and the variants' G (gradient_tile) for the given statistics.
template <typename acc_t>
auto softmax_gradient(const Problem<acc_t>& p, const GradStats<acc_t>& stats) {
  return [&p, &stats](acc_t* tile, int64_t bm, int64_t tn, int64_t r0, int64_t c0) {
    return gradient_tile<acc_t>(tile, bm, tn, p.anchor_labels + r0, p.candidate_labels + c0,
                                p.exclude_self ? r0 - c0 : kNoSelf, stats, r0, nullptr, c0);
  };
}

// The recompute backward of the general plan: the logits recomputed tile by tile, overwritten by fill (see
// gradient_block), and multiplied into both gradients.
template <typename acc_t, typename Fill>
Gradients recompute_backward(const Problem<acc_t>& p, const Fill& fill) {
  const BlockPlan plan = block_plan<acc_t>(p.n_rows, p.n_cols);
  auto opts = p.v.options();
  const int64_t groups = n_groups(plan.n_blocks, p.want_v ? p.n_cols * p.dim * int64_t(sizeof(acc_t)) : 0,
                                  p.n_rows * p.n_cols * p.dim);
  at::Tensor grad_u = p.want_u ? at::zeros({p.n_rows, p.dim}, opts) : at::Tensor();
  PerGroup grad_v(groups, {p.n_cols, p.dim}, opts);
  GroupSums gs(groups);
  for_each_group(groups, [&](int64_t g) {
    const auto [b_lo, b_hi] = group_range(g, groups, plan.n_blocks);
    at::Tensor strip = empty_output({plan.block_rows * plan.tile_cols}, opts);
    at::Tensor no_grad_v;
    for (int64_t b = b_lo; b < b_hi; ++b) {
      const int64_t r0 = b * plan.block_rows, bm = std::min(plan.block_rows, p.n_rows - r0);
      gs.values[g] += gradient_block(p, plan, r0, bm, at::Tensor(), strip, fill, grad_u,
                                     p.want_v ? grad_v.of(g) : no_grad_v);
    }
  });
  return Gradients{defined_parts(grad_u), grad_v.used(), static_cast<double>(p.inv_t), 1.0, false, gs.total()};
}

// Forward over row blocks (groups of consecutive blocks taken by the threads as they finish); with want_grad
// also the gradient for upstream weight 1 on every row with a positive (the caller scales it by the reduction).
template <typename acc_t>
ForwardResult general_forward(const Problem<acc_t>& p, std::optional<Gradients>* grads) {
  const BlockPlan plan = block_plan<acc_t>(p.n_rows, p.n_cols);
  const bool want_grad = grads != nullptr;
  ForwardResult out = new_forward_result(p);
  auto opts = p.v.options();
  const int64_t groups = n_groups(plan.n_blocks, want_grad && p.want_v ? p.n_cols * p.dim * int64_t(sizeof(acc_t)) : 0,
                                  p.n_rows * p.n_cols * p.dim);
  at::Tensor grad_u = want_grad && p.want_u ? at::zeros({p.n_rows, p.dim}, opts) : at::Tensor();
  PerGroup grad_v(groups, {p.n_cols, p.dim}, opts);
  GroupSums gs(groups), valid(groups);
  std::vector<acc_t> unit_weight(want_grad ? p.n_rows : 0, acc_t(1));
  GradStats<acc_t> stats(out.max.data_ptr<acc_t>(), out.log_sum.data_ptr<acc_t>(),
                         out.n_positive.data_ptr<int32_t>(), unit_weight.data());
  if (p.denominator != kAll) {
    stats.denominator = p.denominator;
    stats.coef = out.coef.data_ptr<acc_t>();
    stats.positive_weight = p.positive_weight;
  }

  for_each_group(groups, [&](int64_t g) {
    const auto [b_lo, b_hi] = group_range(g, groups, plan.n_blocks);
    at::Tensor strip = empty_output({plan.block_rows * plan.tile_cols}, opts);  // scratch: poisoned in tests too
    std::vector<acc_t> max(plan.block_rows), gap(plan.block_rows);
    std::vector<double> at_max(plan.block_rows), rest(plan.block_rows);
    std::vector<int64_t> npos(plan.block_rows);
    std::vector<double> softplus_sum(p.denominator == kPerPositive ? plan.block_rows : 0),
        sigmoid_sum(p.denominator == kPerPositive ? plan.block_rows : 0);
    for (int64_t b = b_lo; b < b_hi; ++b) {
      const int64_t r0 = b * plan.block_rows, bm = std::min(plan.block_rows, p.n_rows - r0);
      std::fill(max.begin(), max.end(), -std::numeric_limits<acc_t>::infinity());
      std::fill(at_max.begin(), at_max.end(), 0.0);
      std::fill(rest.begin(), rest.end(), 0.0);
      std::fill(gap.begin(), gap.end(), acc_t(0));
      std::fill(npos.begin(), npos.end(), 0);
      const RowStats<acc_t> st{max.data(), gap.data(), at_max.data(), rest.data(), npos.data()};
      const at::Tensor u_block = p.u.narrow(0, r0, bm);
      at::Tensor tile;
      for (int64_t c0 = 0; c0 < p.n_cols; c0 += plan.tile_cols) {
        const int64_t tn = std::min(plan.tile_cols, p.n_cols - c0);
        tile = logits(p, strip, u_block, p.v.narrow(0, c0, tn));
        if (p.denominator == kAll) {
          update_row_stats(tile.data_ptr<acc_t>(), bm, tn, p.anchor_labels + r0, p.candidate_labels + c0,
                           p.exclude_self ? r0 - c0 : kNoSelf, st);
        } else {
          update_row_stats_negatives(tile.data_ptr<acc_t>(), bm, tn, p.anchor_labels + r0, p.candidate_labels + c0,
                                     p.exclude_self ? r0 - c0 : kNoSelf, st);
        }
      }
      if (p.denominator == kPerPositive) {  // a second pass over the positives, once m and S are final
        std::fill(softplus_sum.begin(), softplus_sum.end(), 0.0);
        std::fill(sigmoid_sum.begin(), sigmoid_sum.end(), 0.0);
        for (int64_t c0 = 0; c0 < p.n_cols; c0 += plan.tile_cols) {
          const int64_t tn = std::min(plan.tile_cols, p.n_cols - c0);
          if (tn != p.n_cols) tile = logits(p, strip, u_block, p.v.narrow(0, c0, tn));  // one tile: still there
          positive_terms(tile.data_ptr<acc_t>(), bm, tn, p.anchor_labels + r0, p.candidate_labels + c0,
                         p.exclude_self ? r0 - c0 : kNoSelf, max.data(), at_max.data(), rest.data(), softplus_sum.data(),
                         sigmoid_sum.data());
        }
      }
      valid.values[g] += static_cast<double>(
          p.denominator == kAll ? finish_rows(st, r0, bm, out)
                             : finish_variant_rows(st, softplus_sum.data(), sigmoid_sum.data(), r0, bm, p, out));
      if (want_grad) {
        at::Tensor no_grad_v;
        gs.values[g] += gradient_block(p, plan, r0, bm, plan.tile_cols >= p.n_cols ? tile : at::Tensor(), strip,
                                       softmax_gradient(p, stats), grad_u, p.want_v ? grad_v.of(g) : no_grad_v);
      }
    }
  });
  out.n_valid = static_cast<int64_t>(valid.total());
  if (want_grad)
    *grads = Gradients{defined_parts(grad_u), grad_v.used(), static_cast<double>(p.inv_t), 1.0, false, gs.total()};
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Symmetric plan: the candidates are the anchors with the same labels; each pair of row blocks once
// ---------------------------------------------------------------------------------------------------------

// The pairs (I, J), I <= J, of row blocks, in row-major order of the upper triangle.
std::vector<std::pair<int64_t, int64_t>> block_pairs(int64_t n_blocks) {
  std::vector<std::pair<int64_t, int64_t>> pairs;
  for (int64_t i = 0; i < n_blocks; ++i)
    for (int64_t j = i; j < n_blocks; ++j) pairs.emplace_back(i, j);
  return pairs;
}

// Running statistics of every row, one set per thread (the pairs of a thread touch any row).
template <typename acc_t>
struct SharedRowStats {
  std::vector<acc_t> max, gap;
  std::vector<double> at_max, rest;
  std::vector<int64_t> n_positive;
  explicit SharedRowStats(int64_t n)
      : max(n, -std::numeric_limits<acc_t>::infinity()), gap(n, 0), at_max(n, 0), rest(n, 0), n_positive(n, 0) {}
  RowStats<acc_t> at(int64_t r0) {
    return {max.data() + r0, gap.data() + r0, at_max.data() + r0, rest.data() + r0, n_positive.data() + r0};
  }
};

// Merges the threads' statistics row by row in thread order (the log-sum-exp merge: sums and gaps moved to
// the common max) and writes the results.
template <typename acc_t>
int64_t merge_row_stats(std::vector<std::optional<SharedRowStats<acc_t>>>& parts, int64_t n_rows, ForwardResult& out) {
  SharedRowStats<acc_t> total(n_rows);
  const auto st = total.at(0);
  for (auto& part : parts) {
    if (!part) continue;
    for (int64_t i = 0; i < n_rows; ++i) {
      const acc_t m = part->max[i];
      if (m == -std::numeric_limits<acc_t>::infinity() && part->at_max[i] + part->rest[i] == 0.0) continue;  // untouched
      const acc_t new_max = std::max(st.max[i], m);
      const acc_t shift = new_max == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : new_max;
      if (st.max[i] != -std::numeric_limits<acc_t>::infinity() && st.max[i] != shift) {
        move_to_higher_max(st.at_max[i], st.rest[i], static_cast<double>(exp_nonpositive(st.max[i] - shift)));
        st.gap[i] += static_cast<acc_t>(st.n_positive[i]) * (st.max[i] - shift);
      }
      if (m == shift) {  // the part's terms at the max stay there
        st.at_max[i] += part->at_max[i];
        st.rest[i] += part->rest[i];
      } else {
        st.rest[i] += (part->at_max[i] + part->rest[i]) * static_cast<double>(exp_nonpositive(m - shift));
      }
      st.gap[i] += part->gap[i] + static_cast<acc_t>(part->n_positive[i]) * (part->n_positive[i] > 0 ? m - shift : acc_t(0));
      st.n_positive[i] += part->n_positive[i];
      st.max[i] = shift;
    }
  }
  return finish_rows(st, 0, n_rows, out);
}

// Statistics of every row from each pair of row blocks once: S_IJ for rows I and, transposed, for rows J.
template <typename acc_t>
ForwardResult symmetric_forward(const Problem<acc_t>& p) {
  const int64_t block = std::min(p.n_rows, kSymmetricBlock), n_blocks = (p.n_rows + block - 1) / block;
  const auto pairs = block_pairs(n_blocks);
  const int64_t n_pairs = static_cast<int64_t>(pairs.size());
  // A group's statistics take 28 bytes per row: many small groups.
  const int64_t groups = n_groups(n_pairs, p.n_rows * 28, p.n_rows * p.n_rows * p.dim / 2);
  ForwardResult out = new_forward_result(p);
  auto opts = p.v.options();
  std::vector<std::optional<SharedRowStats<acc_t>>> parts(groups);
  for_each_group(groups, [&](int64_t g) {
    const auto [lo, hi] = group_range(g, groups, n_pairs);
    auto& part = parts[g];
    part.emplace(p.n_rows);
    at::Tensor strip = empty_output({block * block}, opts), transposed = empty_output({block * block}, opts);
    for (int64_t k = lo; k < hi; ++k) {
      const auto [bi, bj] = pairs[k];
      const int64_t r0 = bi * block, c0 = bj * block;
      const int64_t bm = std::min(block, p.n_rows - r0), tn = std::min(block, p.n_rows - c0);
      at::Tensor tile = logits(p, strip, p.u.narrow(0, r0, bm), p.u.narrow(0, c0, tn));
      if (bi == bj) make_symmetric<acc_t>(tile);
      update_row_stats(tile.data_ptr<acc_t>(), bm, tn, p.anchor_labels + r0, p.anchor_labels + c0,
                       p.exclude_self ? r0 - c0 : kNoSelf, part->at(r0));
      if (bi == bj) continue;
      at::Tensor tile_t = transposed.narrow(0, 0, tn * bm).view({tn, bm}).copy_(tile.t());
      update_row_stats(tile_t.data_ptr<acc_t>(), tn, bm, p.anchor_labels + c0, p.anchor_labels + r0, kNoSelf,
                       part->at(c0));
    }
  });
  out.n_valid = merge_row_stats(parts, p.n_rows, out);
  return out;
}

// The whole gradient of the one tensor (both roles) for per-row weights, from each pair of row blocks once:
// M_IJ = G_IJ + (G_JI)^T, dU_I += M_IJ U_J, dU_J += M_IJ^T U_I (I < J); dU_I += M_II U_I.
template <typename acc_t>
Gradients symmetric_gradients(const Problem<acc_t>& p, GradStats<acc_t>& stats) {
  const int64_t block = std::min(p.n_rows, kSymmetricBlock), n_blocks = (p.n_rows + block - 1) / block;
  const auto pairs = block_pairs(n_blocks);
  const int64_t n_pairs = static_cast<int64_t>(pairs.size());
  const int64_t groups = n_groups(n_pairs, p.want_u ? p.n_rows * p.dim * int64_t(sizeof(acc_t)) : 0,
                                  p.n_rows * p.n_rows * p.dim);
  stats.precompute(p.n_rows);
  auto opts = p.v.options();
  PerGroup grad(groups, {p.n_rows, p.dim}, opts);
  GroupSums gs(groups);
  for_each_group(groups, [&](int64_t g) {
    const auto [lo, hi] = group_range(g, groups, n_pairs);
    at::Tensor strip = empty_output({block * block}, opts);
    at::Tensor mine = p.want_u ? grad.of(g) : at::Tensor();
    for (int64_t k = lo; k < hi; ++k) {
      const auto [bi, bj] = pairs[k];
      const int64_t r0 = bi * block, c0 = bj * block;
      const int64_t bm = std::min(block, p.n_rows - r0), tn = std::min(block, p.n_rows - c0);
      const at::Tensor u_i = p.u.narrow(0, r0, bm), u_j = p.u.narrow(0, c0, tn);
      at::Tensor tile = logits(p, strip, u_i, u_j);
      if (bi == bj) make_symmetric<acc_t>(tile);  // as in symmetric_forward: the same logits in both passes
      // Both terms of every pair (i, j), i in I, j in J; a diagonal block holds each unordered pair twice.
      const double terms = gradient_tile<acc_t>(tile.data_ptr<acc_t>(), bm, tn, p.anchor_labels + r0,
                                                p.anchor_labels + c0, p.exclude_self ? r0 - c0 : kNoSelf, stats, r0,
                                                &stats, c0);
      gs.values[g] += bi == bj ? 0.5 * terms : terms;
      if (!p.want_u) continue;  // the temperature's gradient alone: G's sum, no product (one tensor: want_v too)
      mine.narrow(0, r0, bm).addmm_(tile, u_j);
      if (bi != bj) mine.narrow(0, c0, tn).addmm_(tile.t(), u_i);
    }
  });
  return Gradients{grad.used(), {}, static_cast<double>(p.inv_t), 1.0, true, gs.total()};
}

// ---------------------------------------------------------------------------------------------------------
// The ops
// ---------------------------------------------------------------------------------------------------------

// 1/t, or nullopt for a temperature out of range (finite and >= kMinTemperature): the results are then NaN,
// as on every backend (the value is checked where it lives, without a host synchronization on a GPU).
std::optional<double> inverse_temperature(const at::Tensor& temperature) {
  const double t = temperature.item<double>();  // a CPU tensor: no device to wait for
  if (std::isfinite(t) && t >= kMinTemperature) return 1.0 / t;
  return std::nullopt;
}

// An invalid temperature is not passed on as a NaN scale: BLAS treats a zero or NaN alpha as "skip the
// product" (MKL's gemm returns zeros), which would give a finite loss. The kernels run with t = 1 and the
// results are overwritten: NaN statistics and gradients, NaN loss for every row that has a positive.
constexpr double kStandInInverseTemperature = 1.0;

void poison_gradients(std::initializer_list<at::Tensor*> grads) {
  for (at::Tensor* g : grads)
    if (g->numel() > 0) g->fill_(std::numeric_limits<double>::quiet_NaN());
}

// The candidates are the anchors (one tensor object) with the same labels (one tensor object): the logits and
// the positive mask are symmetric.
bool symmetric_problem(const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& anchor_labels,
                       const at::Tensor& candidate_labels) {
  return candidates.is_same(anchors) && candidate_labels.is_same(anchor_labels);
}

// Gradients w.r.t. the raw anchors and candidates from the parts of those w.r.t. the normalized rows. When the
// candidates are the anchors and the input dtype is narrower than the accumulation type (or the plan produced
// the whole gradient of the one tensor), both roles are summed before the one rounding to the input dtype:
// rounded separately and added by autograd, parts that largely cancel would lose the sum's precision. The
// candidates' gradient is then zero (autograd adds it exactly). A side the mask leaves out (its product was not
// run: Problem::want_u / want_v) gets an empty (0,) tensor.
template <typename acc_t>
std::pair<at::Tensor, at::Tensor> input_gradients(Gradients grads, const at::Tensor& u, const at::Tensor& norm_a,
                                                  const at::Tensor& v, const at::Tensor& norm_c,
                                                  const at::Tensor& anchors, const at::Tensor& candidates,
                                                  double eps, const GradMask& mask) {
  const bool one_tensor = candidates.is_same(anchors);
  at::Tensor none_a = at::empty({0}, anchors.options()), none_c = at::empty({0}, candidates.options());
  if (!mask.features()) return {none_a, none_c};  // the temperature's gradient alone
  GradParts du, dv;
  du.add(grads.grad_u, grads.factor_u);
  if (grads.combined || (one_tensor && anchors.scalar_type() != u.scalar_type())) {
    du.add(grads.grad_v, grads.factor_v);
    return {normalize_backward<acc_t>(du, u, norm_a, eps, anchors.scalar_type()),
            at::zeros(candidates.sizes(), candidates.options())};
  }
  dv.add(grads.grad_v, grads.factor_v);
  if (dv.parts.empty()) dv.add({at::zeros(v.sizes(), v.options())}, 1.0);
  return {mask.anchors ? normalize_backward<acc_t>(du, u, norm_a, eps, anchors.scalar_type()) : none_a,
          mask.candidates ? normalize_backward<acc_t>(dv, v, norm_c, eps, candidates.scalar_type()) : none_c};
}

// A recompute backward's outputs from the gradients w.r.t. the normalized rows: (grad_anchors, grad_candidates,
// grad_temperature = -(1/t) sum_ij G_ij s_ij), NaN for an invalid temperature; empty (0,) where the mask is off.
template <typename acc_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_outputs(Gradients grads, const at::Tensor& u,
                                                                const at::Tensor& norm_a, const at::Tensor& v,
                                                                const at::Tensor& norm_c, const at::Tensor& anchors,
                                                                const at::Tensor& candidates,
                                                                const at::Tensor& temperature, double eps,
                                                                double inv_t, bool valid_t, const GradMask& mask) {
  const double sum_gs = grads.sum_gs;
  auto [grad_anchors, grad_candidates] =
      input_gradients<acc_t>(std::move(grads), u, norm_a, v, norm_c, anchors, candidates, eps, mask);
  at::Tensor grad_temperature = mask.temperature ? at::full({}, -inv_t * sum_gs, temperature.options())
                                                 : at::empty({0}, temperature.options());
  if (!valid_t) poison_gradients({&grad_anchors, &grad_candidates, &grad_temperature});
  return {grad_anchors, grad_candidates, grad_temperature};
}

// The forward of the plain op (denominator 0, positive_weight undefined) and of its variants.
struct ForwardOutputs {
  at::Tensor loss, max, log_sum, n_positive, coef, positive_mean, grad_anchors, grad_candidates, grad_temperature;
};

ForwardOutputs forward_impl(const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& anchor_labels,
                            const at::Tensor& candidate_labels, const at::Tensor& temperature,
                            const at::Tensor& positive_weight, int64_t denominator, bool exclude_self,
                            int64_t reduction, double eps, const std::array<bool, 3>& compute_grad_mask) {
  check_contrastive_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, eps, c10::kCPU);
  const GradMask mask(compute_grad_mask, candidates.is_same(anchors));
  const bool compute_grad = mask.any();
  if (positive_weight.defined())  // the variant op
    check_variant(denominator, positive_weight, anchors, accumulate_type(anchors.scalar_type()));
  check_reduction(reduction);
  TORCH_CHECK(!(compute_grad && reduction == kNone), "compute_grad needs a scalar loss (reduction mean or sum)");
  const std::optional<double> valid_inv_t = inverse_temperature(temperature);
  const double inv_t = valid_inv_t.value_or(kStandInInverseTemperature);
  // The variants run the general plan (also when the candidates are the anchors): the symmetric plan's
  // transposed statistics are those of the plain op.
  const bool symmetric = denominator == kAll && symmetric_problem(anchors, candidates, anchor_labels, candidate_labels);
  auto [u, norm_a] = normalize_rows(anchors, eps);
  auto [v, norm_c] = candidates.is_same(anchors) ? std::pair{u, norm_a} : normalize_rows(candidates, eps);
  at::Tensor a_labels = anchor_labels.contiguous(), c_labels = candidate_labels.contiguous();
  at::Tensor weight_in = positive_weight.defined() ? positive_weight.contiguous() : at::Tensor();

  ForwardResult fwd;
  std::optional<Gradients> grads;
  at::Tensor grad_anchors = at::empty({0}, anchors.options());
  at::Tensor grad_candidates = at::empty({0}, candidates.options());
  at::Tensor grad_temperature = at::empty({0}, temperature.options());
  double scale = 1.0;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "contrastive_forward_cpu", [&] {
    Problem<scalar_t> p{u, v, a_labels.data_ptr<int64_t>(), c_labels.data_ptr<int64_t>(), u.size(0),
                        v.size(0), u.size(1), exclude_self, static_cast<scalar_t>(inv_t)};
    p.denominator = denominator;
    p.positive_weight = weight_in.defined() ? weight_in.data_ptr<scalar_t>() : nullptr;
    p.want_u = mask.anchors;
    p.want_v = mask.candidates;
    if (symmetric) {
      fwd = symmetric_forward(p);
      if (compute_grad) {
        std::vector<scalar_t> unit_weight(p.n_rows, scalar_t(1));
        GradStats<scalar_t> stats(fwd.max.data_ptr<scalar_t>(), fwd.log_sum.data_ptr<scalar_t>(),
                                  fwd.n_positive.data_ptr<int32_t>(), unit_weight.data());
        grads = symmetric_gradients(p, stats);
      }
    } else {
      fwd = general_forward(p, compute_grad ? &grads : nullptr);
    }
    scale = reduction == kMean ? 1.0 / static_cast<double>(std::max<int64_t>(fwd.n_valid, 1)) : 1.0;
    if (compute_grad) {
      grads->factor_u *= scale;
      grads->factor_v *= scale;
      std::tie(grad_anchors, grad_candidates) =
          input_gradients<scalar_t>(*grads, u, norm_a, v, norm_c, anchors, candidates, eps, mask);
      if (mask.temperature) grad_temperature = at::full({}, -inv_t * grads->sum_gs * scale, temperature.options());
    }
  });
  if (!valid_inv_t) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    fwd.row_loss.masked_fill_(fwd.n_positive > 0, nan);
    fwd.max.fill_(nan);
    fwd.log_sum.fill_(nan);
    if (fwd.coef.defined()) {
      fwd.coef.fill_(nan);
      fwd.positive_mean.masked_fill_(fwd.n_positive > 0, nan);
    }
    poison_gradients({&grad_anchors, &grad_candidates, &grad_temperature});
  }
  at::Tensor loss = reduction == kNone ? fwd.row_loss
                                       : (fwd.row_loss.to(at::kDouble).sum() * scale).to(u.scalar_type());
  return {loss, fwd.max, fwd.log_sum, fwd.n_positive, fwd.coef, fwd.positive_mean, grad_anchors, grad_candidates,
          grad_temperature};
}

// Returns (loss, row_max, row_log_sum, row_n_positive, grad_anchors, grad_candidates, grad_temperature).
// loss: (R,) for reduction none, else a scalar, in float32 (float64 for float64 inputs). The gradients of
// that loss that compute_grad asks for (reduction mean or sum only) are returned, the others are empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
contrastive_forward_cpu(const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& anchor_labels,
                        const at::Tensor& candidate_labels, const at::Tensor& temperature, bool exclude_self,
                        int64_t reduction, double eps, std::array<bool, 3> compute_grad) {
  ForwardOutputs o = forward_impl(anchors, candidates, anchor_labels, candidate_labels, temperature, at::Tensor(), 0,
                                  exclude_self, reduction, eps, compute_grad);
  return {o.loss, o.max, o.log_sum, o.n_positive, o.grad_anchors, o.grad_candidates, o.grad_temperature};
}

// The variants (synthcl_fast/reference.py, contrastive_loss_variant, with beta = tau_plus = 0). Returns (loss,
// row_max, row_log_sum, row_n_positive, row_coef, row_positive_mean, grad_anchors, grad_candidates,
// grad_temperature): m and S over the negatives, c_i ("per_positive"; 1 otherwise) and mean_p s_ip (for the
// gradient of positive_weight, dL_i/dw'_i = -mean_p s_ip).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
contrastive_variant_forward_cpu(const at::Tensor& anchors, const at::Tensor& candidates,
                                const at::Tensor& anchor_labels, const at::Tensor& candidate_labels,
                                const at::Tensor& temperature, const at::Tensor& positive_weight, int64_t denominator,
                                bool exclude_self, int64_t reduction, double eps, std::array<bool, 3> compute_grad) {
  ForwardOutputs o = forward_impl(anchors, candidates, anchor_labels, candidate_labels, temperature, positive_weight,
                                  denominator, exclude_self, reduction, eps, compute_grad);
  return {o.loss, o.max, o.log_sum, o.n_positive, o.coef, o.positive_mean, o.grad_anchors, o.grad_candidates,
          o.grad_temperature};
}

// Recompute backward of the plain op (denominator 0) and of the variants. grad_rows (R,) is dLoss/dL_i (the
// reduction weight already folded in). Returns (grad_anchors, grad_candidates, grad_temperature), each empty
// (0,) where output_mask is off (its product not run).
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_impl(
    const at::Tensor& grad_rows, const at::Tensor& anchors, const at::Tensor& candidates,
    const at::Tensor& anchor_labels, const at::Tensor& candidate_labels, const at::Tensor& temperature,
    const at::Tensor& positive_weight, const at::Tensor& row_max, const at::Tensor& row_log_sum,
    const at::Tensor& row_n_positive, const at::Tensor& row_coef, int64_t denominator, bool exclude_self,
    double eps, const std::array<bool, 3>& output_mask) {
  check_contrastive_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, eps, c10::kCPU);
  if (positive_weight.defined())  // the variant op
    check_variant(denominator, positive_weight, anchors, accumulate_type(anchors.scalar_type()));
  const int64_t n_rows = anchors.size(0);
  const auto acc = accumulate_type(anchors.scalar_type());
  check_vector(row_max, "row_max", n_rows, acc);
  check_vector(row_log_sum, "row_log_sum", n_rows, acc);
  check_vector(row_n_positive, "row_n_positive", n_rows, at::kInt);
  if (denominator != kAll) check_vector(row_coef, "row_coef", n_rows, acc);
  TORCH_CHECK(grad_rows.dim() == 1 && grad_rows.size(0) == n_rows, "grad_rows must have shape (", n_rows, ",), got ",
              grad_rows.sizes());
  const std::optional<double> valid_inv_t = inverse_temperature(temperature);
  const double inv_t = valid_inv_t.value_or(kStandInInverseTemperature);
  const bool symmetric = denominator == kAll && symmetric_problem(anchors, candidates, anchor_labels, candidate_labels);
  auto [u, norm_a] = normalize_rows(anchors, eps);
  auto [v, norm_c] = candidates.is_same(anchors) ? std::pair{u, norm_a} : normalize_rows(candidates, eps);
  at::Tensor a_labels = anchor_labels.contiguous(), c_labels = candidate_labels.contiguous();
  at::Tensor max = row_max.contiguous(), log_sum = row_log_sum.contiguous(), npos = row_n_positive.contiguous();
  at::Tensor coef = denominator != kAll ? row_coef.contiguous() : at::Tensor();
  at::Tensor weight_in = positive_weight.defined() ? positive_weight.contiguous() : at::Tensor();
  at::Tensor weight = grad_rows.to(acc).contiguous();
  const GradMask mask(output_mask, candidates.is_same(anchors));

  std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "contrastive_backward_cpu", [&] {
    Problem<scalar_t> p{u, v, a_labels.data_ptr<int64_t>(), c_labels.data_ptr<int64_t>(), u.size(0),
                        v.size(0), u.size(1), exclude_self, static_cast<scalar_t>(inv_t)};
    p.want_u = mask.anchors;
    p.want_v = mask.candidates;
    GradStats<scalar_t> stats(max.data_ptr<scalar_t>(), log_sum.data_ptr<scalar_t>(), npos.data_ptr<int32_t>(),
                              weight.data_ptr<scalar_t>());
    if (denominator != kAll) {
      p.denominator = stats.denominator = denominator;
      p.positive_weight = stats.positive_weight = weight_in.defined() ? weight_in.data_ptr<scalar_t>() : nullptr;
      stats.coef = coef.data_ptr<scalar_t>();
    }
    Gradients grads = symmetric ? symmetric_gradients(p, stats) : recompute_backward(p, softmax_gradient(p, stats));
    out = backward_outputs<scalar_t>(std::move(grads), u, norm_a, v, norm_c, anchors, candidates, temperature, eps,
                                     inv_t, valid_inv_t.has_value(), mask);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_backward_cpu(
    const at::Tensor& grad_rows, const at::Tensor& anchors, const at::Tensor& candidates,
    const at::Tensor& anchor_labels, const at::Tensor& candidate_labels, const at::Tensor& temperature,
    const at::Tensor& row_max, const at::Tensor& row_log_sum, const at::Tensor& row_n_positive, bool exclude_self,
    double eps, std::array<bool, 3> output_mask) {
  return backward_impl(grad_rows, anchors, candidates, anchor_labels, candidate_labels, temperature, at::Tensor(),
                       row_max, row_log_sum, row_n_positive, at::Tensor(), 0, exclude_self, eps, output_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_variant_backward_cpu(
    const at::Tensor& grad_rows, const at::Tensor& anchors, const at::Tensor& candidates,
    const at::Tensor& anchor_labels, const at::Tensor& candidate_labels, const at::Tensor& temperature,
    const at::Tensor& positive_weight, const at::Tensor& row_max, const at::Tensor& row_log_sum,
    const at::Tensor& row_n_positive, const at::Tensor& row_coef, int64_t denominator, bool exclude_self,
    double eps, std::array<bool, 3> output_mask) {
  return backward_impl(grad_rows, anchors, candidates, anchor_labels, candidate_labels, temperature, positive_weight,
                       row_max, row_log_sum, row_n_positive, row_coef, denominator, exclude_self, eps, output_mask);
}

// ---------------------------------------------------------------------------------------------------------
// Hard negatives and debiasing (HCL; synthcl_fast/reference.py, hard_negative_row_stats): the row statistics
//
//     X0_i = lse_{Neg(i)} (1 + beta) s_ij     X1_i = lse_{Neg(i)} beta s_ij     X2_i = lse_{P(i)} s_ij
//     Y_i  = mean_{P(i)} s_ij                 n_i = |Neg(i)|                    |P(i)|
//
// from which Python forms the loss (reference.hard_negative_row_loss, the same code for every backend), with
// autograd through it. Each X_k is kept as (r_k, log S_k): r_k the raw max of s over its set (the min for a
// negative scale c_k), S_k = sum e^{c_k (s_j - r_k)}, so that c_k (s_j - r_k) is formed from the difference of
// two logits of the same tile and every exponent is <= 0. The gradient, for upstream g_ik = dLoss/dX_ik and
// h_i = dLoss/dY_i:
//
//     G_ij = g_i0 c_0 e^{c_0 (s_ij - r_i0) - log S_i0} + g_i1 c_1 e^{c_1 (s_ij - r_i1) - log S_i1}   j in Neg(i)
//     G_ij = g_i2 e^{(s_ij - r_i2) - log S_i2} + h_i / |P(i)|                                       j in P(i)
//     dLoss/dt = -(1/t) sum_ij G_ij s_ij,  sum_j G_ij = g_i0 c_0 + g_i1 c_1 + g_i2 + h_i (over nonempty sets)
// ---------------------------------------------------------------------------------------------------------

template <typename acc_t>
struct HardScales {
  acc_t c[kHardSets];
  explicit HardScales(double beta) : c{static_cast<acc_t>(1 + beta), static_cast<acc_t>(beta), acc_t(1)} {}
};

// Running statistics of a block's rows (indexed by tile row): per set the reference r and sum S (0: empty so
// far), the positives' sum of s and both counts.
template <typename acc_t>
struct HardRunning {
  std::vector<acc_t> ref;     // (rows, 3)
  std::vector<double> sum;    // (rows, 3)
  std::vector<double> positive_sum;
  std::vector<int64_t> n_negative, n_positive;
  explicit HardRunning(int64_t rows)
      : ref(rows * kHardSets), sum(rows * kHardSets), positive_sum(rows), n_negative(rows), n_positive(rows) {}
  void reset() {
    std::fill(sum.begin(), sum.end(), 0.0);
    std::fill(positive_sum.begin(), positive_sum.end(), 0.0);
    std::fill(n_negative.begin(), n_negative.end(), 0);
    std::fill(n_positive.begin(), n_positive.end(), 0);
  }
};

// Online update of the running statistics with one tile (self column of tile row i: self0 + i).
template <typename acc_t>
void update_hard_stats(const acc_t* tile, int64_t bm, int64_t tn, const int64_t* row_labels, const int64_t* col_labels,
                       int64_t self0, const HardScales<acc_t>& scales, HardRunning<acc_t>& run) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  for (int64_t i = 0; i < bm; ++i) {
    const acc_t* s = tile + i * tn;
    const int64_t self = self0 + i, label = row_labels[i];
    if (tn == 1 && self == 0) continue;  // the tile holds only the excluded self column
    HardExtremes<acc_t> tile_stats{-kInf, kInf, -kInf};  // NaN skipped: the sums below are NaN then
    for_each_allowed(0, tn, self, [&](int64_t a, int64_t b) {
      hard_extremes(s + a, b - a, col_labels + a, label, tile_stats);
    });
    run.positive_sum[i] += tile_stats.positive_sum;
    run.n_positive[i] += tile_stats.n_positive;
    run.n_negative[i] += tile_stats.n_negative;
    acc_t* ref = run.ref.data() + i * kHardSets;
    double* sum = run.sum.data() + i * kHardSets;
    const acc_t tile_ref[kHardSets] = {scales.c[0] >= 0 ? tile_stats.negative_max : tile_stats.negative_min,
                                       scales.c[1] >= 0 ? tile_stats.negative_max : tile_stats.negative_min,
                                       tile_stats.positive_max};
    for (int k = 0; k < kHardSets; ++k) {
      // the new reference: the extreme in the direction of c_k of the old one and the tile's; while a set has
      // no finite logit yet, 0 (its terms are NaN then, or it has none)
      const bool seen = sum[k] != 0.0;
      if (std::abs(tile_ref[k]) != kInf) {
        const acc_t next = !seen ? tile_ref[k]
                                 : (scales.c[k] >= 0 ? std::max(ref[k], tile_ref[k]) : std::min(ref[k], tile_ref[k]));
        if (seen && next != ref[k]) sum[k] *= std::exp(static_cast<double>(scales.c[k] * (ref[k] - next)));
        ref[k] = next;
      } else if (!seen) {
        ref[k] = 0;
      }
    }
    acc_t part[kHardSets] = {0, 0, 0};
    for_each_allowed(0, tn, self, [&](int64_t a, int64_t b) {
      hard_sums(s + a, b - a, col_labels + a, label, scales.c, ref, part);
    });
    for (int k = 0; k < kHardSets; ++k) sum[k] += static_cast<double>(part[k]);
  }
}

struct HardStats {
  at::Tensor lse, positive_mean, n_negative, n_positive, ref, log_sum;
};

template <typename acc_t>
HardStats hard_forward(const Problem<acc_t>& p, const HardScales<acc_t>& scales) {
  const BlockPlan plan = block_plan<acc_t>(p.n_rows, p.n_cols);
  auto opts = p.v.options();
  HardStats out{empty_output({p.n_rows, kHardSets}, opts), empty_output({p.n_rows}, opts),
                empty_output({p.n_rows}, opts.dtype(at::kInt)), empty_output({p.n_rows}, opts.dtype(at::kInt)),
                empty_output({p.n_rows, kHardSets}, opts), empty_output({p.n_rows, kHardSets}, opts)};
  const int64_t groups = n_groups(plan.n_blocks, 0, p.n_rows * p.n_cols * p.dim);
  for_each_group(groups, [&](int64_t g) {
    const auto [b_lo, b_hi] = group_range(g, groups, plan.n_blocks);
    at::Tensor strip = empty_output({plan.block_rows * plan.tile_cols}, opts);
    HardRunning<acc_t> run(plan.block_rows);
    for (int64_t b = b_lo; b < b_hi; ++b) {
      const int64_t r0 = b * plan.block_rows, bm = std::min(plan.block_rows, p.n_rows - r0);
      run.reset();
      const at::Tensor u_block = p.u.narrow(0, r0, bm);
      for (int64_t c0 = 0; c0 < p.n_cols; c0 += plan.tile_cols) {
        const int64_t tn = std::min(plan.tile_cols, p.n_cols - c0);
        at::Tensor tile = logits(p, strip, u_block, p.v.narrow(0, c0, tn));
        update_hard_stats(tile.data_ptr<acc_t>(), bm, tn, p.anchor_labels + r0, p.candidate_labels + c0,
                          p.exclude_self ? r0 - c0 : kNoSelf, scales, run);
      }
      acc_t* lse = out.lse.data_ptr<acc_t>() + r0 * kHardSets;
      acc_t* ref = out.ref.data_ptr<acc_t>() + r0 * kHardSets;
      acc_t* log_sum = out.log_sum.data_ptr<acc_t>() + r0 * kHardSets;
      for (int64_t i = 0; i < bm; ++i) {
        for (int k = 0; k < kHardSets; ++k) {
          const double sum = run.sum[i * kHardSets + k];
          const bool empty = (k == 2 ? run.n_positive[i] : run.n_negative[i]) == 0;
          const acc_t r = empty ? acc_t(0) : run.ref[i * kHardSets + k];  // an empty set: X = -inf, r unused
          ref[i * kHardSets + k] = r;
          log_sum[i * kHardSets + k] = static_cast<acc_t>(std::log(sum));
          lse[i * kHardSets + k] = empty ? -std::numeric_limits<acc_t>::infinity()
                                         : scales.c[k] * r + static_cast<acc_t>(std::log(sum));
        }
        const int64_t npos = run.n_positive[i];
        out.positive_mean.data_ptr<acc_t>()[r0 + i] =
            npos > 0 ? static_cast<acc_t>(run.positive_sum[i] / static_cast<double>(npos)) : acc_t(0);
        out.n_negative.data_ptr<int32_t>()[r0 + i] = static_cast<int32_t>(run.n_negative[i]);
        out.n_positive.data_ptr<int32_t>()[r0 + i] = static_cast<int32_t>(npos);
      }
    }
  });
  return out;
}

// Overwrites the tile with G (above); returns sum_ij G_ij (s_ij - rho_i), rho_i a reference of the row.
template <typename acc_t>
double hard_gradient_tile(acc_t* tile, int64_t bm, int64_t tn, const int64_t* row_labels, const int64_t* col_labels,
                          int64_t self0, const HardScales<acc_t>& scales, const acc_t* grad_lse,
                          const acc_t* grad_mean, const acc_t* ref, const acc_t* log_sum, const int32_t* n_positive,
                          const int32_t* n_negative) {
  double total = 0;
  for (int64_t i = 0; i < bm; ++i) {
    acc_t* s = tile + i * tn;
    const int64_t self = self0 + i, label = row_labels[i];
    const acc_t* r = ref + i * kHardSets;
    const bool has_negative = n_negative[i] > 0, has_positive = n_positive[i] > 0;
    // coefficients of each set's softmax (0 for an empty set: its log S is -inf and its exponent never formed)
    const acc_t a[4] = {has_negative ? grad_lse[i * kHardSets] * scales.c[0] : acc_t(0),
                        has_negative ? grad_lse[i * kHardSets + 1] * scales.c[1] : acc_t(0),
                        has_positive ? grad_lse[i * kHardSets + 2] : acc_t(0),
                        has_positive ? grad_mean[i] / static_cast<acc_t>(n_positive[i]) : acc_t(0)};
    const acc_t l[kHardSets] = {has_negative ? log_sum[i * kHardSets] : acc_t(0),
                                has_negative ? log_sum[i * kHardSets + 1] : acc_t(0),
                                has_positive ? log_sum[i * kHardSets + 2] : acc_t(0)};
    const acc_t rho = has_negative ? r[0] : r[2];
    acc_t gs = 0;
    for_each_allowed(0, tn, self, [&](int64_t lo, int64_t hi) {
      gs += hard_gradient(s + lo, hi - lo, col_labels + lo, label, scales.c, r, l, a, rho);
    });
    if (self >= 0 && self < tn) s[self] = 0;
    total += static_cast<double>(gs);
  }
  return total;
}

template <typename acc_t>
Gradients hard_backward(const Problem<acc_t>& p, const HardScales<acc_t>& scales, const acc_t* grad_lse,
                        const acc_t* grad_mean, const acc_t* ref, const acc_t* log_sum, const int32_t* n_positive,
                        const int32_t* n_negative) {
  Gradients grads = recompute_backward(p, [&](acc_t* tile, int64_t bm, int64_t tn, int64_t r0, int64_t c0) {
    return hard_gradient_tile(tile, bm, tn, p.anchor_labels + r0, p.candidate_labels + c0,
                              p.exclude_self ? r0 - c0 : kNoSelf, scales, grad_lse + r0 * kHardSets, grad_mean + r0,
                              ref + r0 * kHardSets, log_sum + r0 * kHardSets, n_positive + r0, n_negative + r0);
  });
  // rho_i sum_j G_ij, the part of sum_ij G_ij s_ij taken out of the tiles' sums (closed form)
  for (int64_t i = 0; i < p.n_rows; ++i) {
    const bool has_negative = n_negative[i] > 0, has_positive = n_positive[i] > 0;
    const double rho = static_cast<double>(has_negative ? ref[i * kHardSets] : ref[i * kHardSets + 2]);
    double row_sum = 0;
    if (has_negative) row_sum += double(grad_lse[i * kHardSets]) * scales.c[0] +
                                 double(grad_lse[i * kHardSets + 1]) * scales.c[1];
    if (has_positive) row_sum += double(grad_lse[i * kHardSets + 2]) + double(grad_mean[i]);
    grads.sum_gs += rho * row_sum;
  }
  return grads;
}

// Returns (row_lse (R, 3), row_positive_mean, row_n_negative, row_n_positive, row_reference (R, 3),
// row_log_sum (R, 3)): X0, X1, X2 and Y above, both counts, and what the backward needs to recompute each
// softmax. An empty set has X = -inf. An invalid temperature gives NaN statistics (as contrastive_forward).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> hard_negative_stats_forward_cpu(
    const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& anchor_labels,
    const at::Tensor& candidate_labels, const at::Tensor& temperature, double beta, bool exclude_self, double eps) {
  check_contrastive_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, eps, c10::kCPU);
  check_beta(beta);
  const std::optional<double> valid_inv_t = inverse_temperature(temperature);
  auto [u, norm_a] = normalize_rows(anchors, eps);
  auto [v, norm_c] = candidates.is_same(anchors) ? std::pair{u, norm_a} : normalize_rows(candidates, eps);
  at::Tensor a_labels = anchor_labels.contiguous(), c_labels = candidate_labels.contiguous();
  HardStats out;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "hard_negative_stats_forward_cpu", [&] {
    Problem<scalar_t> p{u, v, a_labels.data_ptr<int64_t>(), c_labels.data_ptr<int64_t>(), u.size(0), v.size(0),
                        u.size(1), exclude_self,
                        static_cast<scalar_t>(valid_inv_t.value_or(kStandInInverseTemperature))};
    out = hard_forward(p, HardScales<scalar_t>(beta));
  });
  if (!valid_inv_t) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (at::Tensor* t : {&out.lse, &out.positive_mean, &out.ref, &out.log_sum}) t->fill_(nan);
  }
  return {out.lse, out.positive_mean, out.n_negative, out.n_positive, out.ref, out.log_sum};
}

// grad_lse (R, 3) = dLoss/dX, grad_positive_mean (R,) = dLoss/dY. Returns (grad_anchors, grad_candidates,
// grad_temperature), each empty (0,) where output_mask is off (its product not run).
std::tuple<at::Tensor, at::Tensor, at::Tensor> hard_negative_stats_backward_cpu(
    const at::Tensor& grad_lse, const at::Tensor& grad_positive_mean, const at::Tensor& anchors,
    const at::Tensor& candidates, const at::Tensor& anchor_labels, const at::Tensor& candidate_labels,
    const at::Tensor& temperature, double beta, const at::Tensor& row_n_negative, const at::Tensor& row_n_positive,
    const at::Tensor& row_reference, const at::Tensor& row_log_sum, bool exclude_self, double eps,
    std::array<bool, 3> output_mask) {
  check_contrastive_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, eps, c10::kCPU);
  check_beta(beta);
  const GradMask mask(output_mask, candidates.is_same(anchors));
  check_hard_backward_inputs(grad_lse, grad_positive_mean, row_n_negative, row_n_positive, row_reference,
                             row_log_sum, anchors, accumulate_type(anchors.scalar_type()));
  const std::optional<double> valid_inv_t = inverse_temperature(temperature);
  const double inv_t = valid_inv_t.value_or(kStandInInverseTemperature);
  auto [u, norm_a] = normalize_rows(anchors, eps);
  auto [v, norm_c] = candidates.is_same(anchors) ? std::pair{u, norm_a} : normalize_rows(candidates, eps);
  at::Tensor a_labels = anchor_labels.contiguous(), c_labels = candidate_labels.contiguous();
  at::Tensor g_lse = grad_lse.contiguous(), g_mean = grad_positive_mean.contiguous();
  at::Tensor ref = row_reference.contiguous(), log_sum = row_log_sum.contiguous();
  at::Tensor n_neg = row_n_negative.contiguous(), n_pos = row_n_positive.contiguous();
  std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "hard_negative_stats_backward_cpu", [&] {
    Problem<scalar_t> p{u, v, a_labels.data_ptr<int64_t>(), c_labels.data_ptr<int64_t>(), u.size(0), v.size(0),
                        u.size(1), exclude_self, static_cast<scalar_t>(inv_t)};
    p.want_u = mask.anchors;
    p.want_v = mask.candidates;
    Gradients grads = hard_backward(p, HardScales<scalar_t>(beta), g_lse.data_ptr<scalar_t>(),
                                    g_mean.data_ptr<scalar_t>(), ref.data_ptr<scalar_t>(),
                                    log_sum.data_ptr<scalar_t>(), n_pos.data_ptr<int32_t>(),
                                    n_neg.data_ptr<int32_t>());
    out = backward_outputs<scalar_t>(std::move(grads), u, norm_a, v, norm_c, anchors, candidates, temperature, eps,
                                     inv_t, valid_inv_t.has_value(), mask);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(synthcl_fast, CPU, m) {
  m.impl("contrastive_forward", &contrastive_forward_cpu);
  m.impl("contrastive_backward", &contrastive_backward_cpu);
  m.impl("contrastive_variant_forward", &contrastive_variant_forward_cpu);
  m.impl("contrastive_variant_backward", &contrastive_variant_backward_cpu);
  m.impl("hard_negative_stats_forward", &hard_negative_stats_forward_cpu);
  m.impl("hard_negative_stats_backward", &hard_negative_stats_backward_cpu);
}

}  // namespace synthcl_fast
