// Fuzz test of the compiled ops' entry points, called through the dispatcher as any C++ or Python caller
// could (no Python-side checks in between): random shapes (0 included), strides (transposed, sliced,
// expanded with stride 0), dtypes, label lengths and dtypes, temperatures (0, negative, NaN, Inf),
// reduction codes and eps. Every call must either raise a c10::Error or return well-formed outputs: finite
// for a valid temperature, NaN (where any row has a positive) for a temperature value out of range. Built by CMakeLists.txt with AddressSanitizer + UBSan in CI: an out-of-bounds read or write,
// or undefined behaviour, aborts the run.
//
//   fuzz_ops [iterations] [seed]

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <array>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace {

using Tensors7 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Tensors9 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                            at::Tensor, at::Tensor>;
using Tensors5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Tensors3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using Tensors6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

struct Fuzzer {
  std::mt19937_64 rng;
  explicit Fuzzer(uint64_t seed) : rng(seed) {}

  int64_t uniform(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); }
  bool chance(double p) { return std::bernoulli_distribution(p)(rng); }
  template <typename T>
  T pick(const std::vector<T>& options) { return options[uniform(0, options.size() - 1)]; }

  at::ScalarType feature_dtype() {
    if (chance(0.9)) return pick<at::ScalarType>({at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
    return pick<at::ScalarType>({at::kLong, at::kInt, at::kBool});
  }

  // A (rows, cols) matrix in one of several memory layouts, or occasionally a tensor of the wrong rank.
  at::Tensor matrix(int64_t rows, int64_t cols, at::ScalarType dtype) {
    auto opts = at::TensorOptions().dtype(at::kFloat);
    at::Tensor t;
    switch (uniform(0, 5)) {
      case 0: t = at::randn({cols, rows}, opts).t(); break;                       // transposed
      case 1: t = at::randn({rows * 2 + 1, cols}, opts).slice(0, 0, rows * 2, 2); break;  // row stride 2
      case 2: t = at::randn({1, cols}, opts).expand({rows, cols}); break;         // stride 0
      case 3: t = chance(0.5) ? at::randn({rows}, opts) : at::randn({rows, cols, 2}, opts); break;  // wrong rank
      default: t = at::randn({rows, cols}, opts);
    }
    return dtype == at::kBool ? t > 0 : t.to(dtype);
  }

  at::Tensor labels(int64_t length) {
    if (chance(0.05)) length += uniform(-2, 2);
    length = std::max<int64_t>(length, 0);
    at::Tensor t = at::randint(-3, 6, {length}, at::kLong);
    if (chance(0.02)) t.fill_(std::numeric_limits<int64_t>::max());
    if (chance(0.05)) return t.to(pick<at::ScalarType>({at::kInt, at::kFloat}));
    if (chance(0.1)) return at::randint(-1, 4, {length * 2 + 1}, at::kLong).slice(0, 0, length * 2, 2);
    return t;
  }

  // A gradient mask (anchors, candidates, temperature), each side on or off.
  std::array<bool, 3> mask() { return {chance(0.7), chance(0.7), chance(0.7)}; }

  at::Tensor temperature() {
    const double value = chance(0.85) ? pick<double>({0.01, 0.1, 0.5, 3.0})
                                      : pick<double>({0.0, -1.0, NAN, INFINITY, 1e-300});
    if (chance(0.03)) return at::full({2}, value, at::kFloat);
    if (chance(0.03)) return at::full({}, 1, at::kLong);
    return at::full({}, value, chance(0.5) ? at::kFloat : at::kDouble);
  }
};

int failures = 0;

// The shape a masked gradient output must have: the input's where the mask is on (both roles of one tensor are
// one gradient: on if either is), empty (0,) where it is off.
bool masked_shapes(const std::array<bool, 3>& mask, const at::Tensor& anchors, const at::Tensor& candidates,
                   const at::Tensor& grad_a, const at::Tensor& grad_c, const at::Tensor& grad_t) {
  const bool one = candidates.is_same(anchors);
  const bool on_a = mask[0] || (one && mask[1]), on_c = mask[1] || (one && mask[0]);
  return (on_a ? grad_a.sizes() == anchors.sizes() : grad_a.numel() == 0) &&
         (on_c ? grad_c.sizes() == candidates.sizes() : grad_c.numel() == 0) &&
         (mask[2] ? grad_t.numel() == 1 : grad_t.numel() == 0);
}

void require(bool ok, const std::string& what, int64_t iteration) {
  if (!ok) {
    std::fprintf(stderr, "iteration %lld: %s\n", static_cast<long long>(iteration), what.c_str());
    ++failures;
  }
}

bool all_finite(const at::Tensor& t) {
  return t.numel() == 0 || !at::isFloatingType(t.scalar_type()) || at::isfinite(t).all().item<bool>();
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t iterations = argc > 1 ? std::atoll(argv[1]) : 2000;
  Fuzzer fuzz(argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 20261123);
  auto& dispatcher = c10::Dispatcher::singleton();
  auto forward = dispatcher.findSchemaOrThrow("synthcl_fast::contrastive_forward", "")
                     .typed<Tensors7(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     const at::Tensor&, bool, int64_t, double, std::array<bool, 3>)>();
  auto backward = dispatcher.findSchemaOrThrow("synthcl_fast::contrastive_backward", "")
                      .typed<Tensors3(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, bool, double, std::array<bool, 3>)>();
  auto positive_pair = dispatcher.findSchemaOrThrow("synthcl_fast::positive_pair_forward", "")
                           .typed<Tensors5(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                           int64_t, double, bool, bool)>();
  auto variant_forward =
      dispatcher.findSchemaOrThrow("synthcl_fast::contrastive_variant_forward", "")
          .typed<Tensors9(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                          const at::Tensor&, const at::Tensor&, int64_t, bool, int64_t, double,
                          std::array<bool, 3>)>();
  auto variant_backward =
      dispatcher.findSchemaOrThrow("synthcl_fast::contrastive_variant_backward", "")
          .typed<Tensors3(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                          const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                          const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, bool, double,
                          std::array<bool, 3>)>();
  auto hard_forward =
      dispatcher.findSchemaOrThrow("synthcl_fast::hard_negative_stats_forward", "")
          .typed<Tensors6(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                          const at::Tensor&, double, bool, double)>();
  auto hard_backward =
      dispatcher.findSchemaOrThrow("synthcl_fast::hard_negative_stats_backward", "")
          .typed<Tensors3(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                          const at::Tensor&, const at::Tensor&, const at::Tensor&, double, const at::Tensor&,
                          const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, double,
                          std::array<bool, 3>)>();
  int64_t accepted = 0, rejected = 0;

  for (int64_t it = 0; it < iterations; ++it) {
    const int64_t rows = fuzz.uniform(0, 37), cols = fuzz.chance(0.3) ? rows : fuzz.uniform(0, 300);
    const int64_t dim = fuzz.uniform(0, 19), dim_c = fuzz.chance(0.05) ? fuzz.uniform(0, 19) : dim;
    const auto dtype = fuzz.feature_dtype();
    const auto dtype_c = fuzz.chance(0.05) ? fuzz.feature_dtype() : dtype;
    at::Tensor anchors = fuzz.matrix(rows, dim, dtype);
    at::Tensor candidates = fuzz.chance(0.2) ? anchors : fuzz.matrix(cols, dim_c, dtype_c);
    at::Tensor anchor_labels = fuzz.labels(rows), candidate_labels = fuzz.labels(candidates.size(0));
    at::Tensor temperature = fuzz.temperature();
    const bool exclude_self = fuzz.chance(0.5), compute_grad = fuzz.chance(0.5);
    // the forward's gradient mask (all off without compute_grad) and the recompute backward's
    const std::array<bool, 3> grad_mask = compute_grad ? fuzz.mask() : std::array<bool, 3>{false, false, false};
    const std::array<bool, 3> output_mask = fuzz.mask();
    const bool any_grad = grad_mask[0] || grad_mask[1] || grad_mask[2];
    const int64_t reduction = fuzz.chance(0.95) ? fuzz.uniform(0, 2) : fuzz.pick<int64_t>({-1, 3});
    const double eps = fuzz.chance(0.97) ? 1e-12 : fuzz.pick<double>({0.0, -1.0});

    try {
      auto [loss, row_max, log_sum, n_positive, grad_a, grad_c, grad_t] = forward.call(
          anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self, reduction, eps, grad_mask);
      ++accepted;
      const int64_t n_rows = anchors.size(0);
      // An out-of-range temperature value gives NaN results (checked where it lives, as on every backend).
      const double t = temperature.item<double>();
      const bool valid_t = std::isfinite(t) && t >= 1e-6;
      const bool any_positive = (n_positive > 0).any().item<bool>();
      require(loss.numel() == (reduction == 0 ? n_rows : 1), "loss has the wrong size", it);
      require(row_max.numel() == n_rows && log_sum.numel() == n_rows && n_positive.numel() == n_rows,
              "row statistics have the wrong size", it);
      require(valid_t ? all_finite(loss) : !any_positive || !all_finite(loss),
              valid_t ? "non-finite loss from finite inputs" : "finite loss from an invalid temperature", it);
      require((n_positive >= 0).all().item<bool>(), "negative positive count", it);
      if (any_grad) {
        require(masked_shapes(grad_mask, anchors, candidates, grad_a, grad_c, grad_t), "gradient shapes", it);
        require(!valid_t || (all_finite(grad_a) && all_finite(grad_c) && all_finite(grad_t)), "non-finite gradients",
                it);
      }
      // The recompute backward on the same inputs, with a random (and sometimes mis-shaped) upstream.
      at::Tensor grad_rows = at::randn({fuzz.chance(0.9) ? n_rows : n_rows + 1}, at::kFloat);
      auto [bwd_a, bwd_c, bwd_t] = backward.call(grad_rows, anchors, candidates, anchor_labels, candidate_labels,
                                                 temperature, row_max, log_sum, n_positive, exclude_self, eps,
                                                 output_mask);
      require(masked_shapes(output_mask, anchors, candidates, bwd_a, bwd_c, bwd_t), "backward shapes", it);
      require(!valid_t || (all_finite(bwd_a) && all_finite(bwd_c) && all_finite(bwd_t)), "non-finite backward", it);
    } catch (const c10::Error&) {
      ++rejected;
    }

    // The variants (denominator 1 "negatives", 2 "per_positive"; sometimes an invalid code or weight): a row with
    // positives but no negative has a "negatives" loss of -inf (as in lightly's DCLLoss), never NaN.
    try {
      const int64_t denominator = fuzz.chance(0.95) ? fuzz.uniform(1, 2) : fuzz.pick<int64_t>({0, 3});
      const auto acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
      at::Tensor weight = 2 * at::rand({fuzz.chance(0.95) ? rows : rows + 1}, fuzz.chance(0.97) ? acc : at::kHalf);
      auto [loss, row_max, log_sum, n_positive, coef, positive_mean, grad_a, grad_c, grad_t] = variant_forward.call(
          anchors, candidates, anchor_labels, candidate_labels, temperature, weight, denominator, exclude_self,
          reduction, eps, grad_mask);
      ++accepted;
      const int64_t n_rows = anchors.size(0);
      const double t = temperature.item<double>();
      const bool valid_t = std::isfinite(t) && t >= 1e-6;
      require(loss.numel() == (reduction == 0 ? n_rows : 1), "variant loss has the wrong size", it);
      require(coef.numel() == n_rows && positive_mean.numel() == n_rows, "variant row statistics' size", it);
      require(!valid_t || !at::isnan(loss).any().item<bool>(), "NaN variant loss from finite inputs", it);
      require(!valid_t || denominator == 1 || all_finite(loss), "non-finite per_positive loss", it);
      if (any_grad)
        require(!valid_t || (all_finite(grad_a) && all_finite(grad_c) && all_finite(grad_t)),
                "non-finite variant gradients", it);
      at::Tensor grad_rows = at::randn({fuzz.chance(0.9) ? n_rows : n_rows + 1}, at::kFloat);
      auto [bwd_a, bwd_c, bwd_t] =
          variant_backward.call(grad_rows, anchors, candidates, anchor_labels, candidate_labels, temperature, weight,
                                row_max, log_sum, n_positive, coef, denominator, exclude_self, eps, output_mask);
      require(masked_shapes(output_mask, anchors, candidates, bwd_a, bwd_c, bwd_t), "variant backward shapes", it);
      require(!valid_t || (all_finite(bwd_a) && all_finite(bwd_c) && all_finite(bwd_t)),
              "non-finite variant backward", it);
    } catch (const c10::Error&) {
      ++rejected;
    }

    // HCL's row statistics (beta any finite value, sometimes not finite; a mis-shaped upstream sometimes): an
    // empty set's log-sum-exp is -inf, a nonempty one finite; never NaN from finite inputs.
    try {
      const double beta = fuzz.chance(0.97) ? fuzz.pick<double>({0.0, 0.5, 2.0, -0.5, -1.5})
                                            : std::numeric_limits<double>::quiet_NaN();
      auto [lse, positive_mean, n_negative, n_positive, reference, log_sum] = hard_forward.call(
          anchors, candidates, anchor_labels, candidate_labels, temperature, beta, exclude_self, eps);
      ++accepted;
      const int64_t n_rows = anchors.size(0);
      const double t = temperature.item<double>();
      const bool valid_t = std::isfinite(t) && t >= 1e-6;
      require(lse.sizes() == at::IntArrayRef({n_rows, 3}) && positive_mean.numel() == n_rows,
              "hard statistics' size", it);
      if (valid_t) {
        at::Tensor nonempty = at::stack({n_negative > 0, n_negative > 0, n_positive > 0}, 1);
        require(at::isfinite(lse).eq(nonempty).all().item<bool>(), "hard statistics: finite iff nonempty", it);
        require(!at::isnan(lse).any().item<bool>() && all_finite(positive_mean), "NaN hard statistics", it);
      }
      const auto acc = lse.scalar_type();
      at::Tensor grad_lse = at::randn({fuzz.chance(0.9) ? n_rows : n_rows + 1, 3}, acc);
      auto [bwd_a, bwd_c, bwd_t] =
          hard_backward.call(grad_lse, at::randn({n_rows}, acc), anchors, candidates, anchor_labels,
                             candidate_labels, temperature, beta, n_negative, n_positive, reference, log_sum,
                             exclude_self, eps, output_mask);
      require(masked_shapes(output_mask, anchors, candidates, bwd_a, bwd_c, bwd_t), "hard backward shapes", it);
      require(!valid_t || (all_finite(bwd_a) && all_finite(bwd_c) && all_finite(bwd_t)),
              "non-finite hard backward", it);
    } catch (const c10::Error&) {
      ++rejected;
    }

    try {
      at::Tensor a = fuzz.matrix(rows, dim, dtype);
      at::Tensor b = fuzz.chance(0.9) ? fuzz.matrix(rows, dim, dtype) : fuzz.matrix(cols, dim_c, dtype_c);
      const auto acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
      at::Tensor target = at::rand({fuzz.chance(0.95) ? rows : cols}, fuzz.chance(0.95) ? acc : at::kHalf);
      const int64_t mode = fuzz.chance(0.95) ? fuzz.uniform(0, 1) : 2;
      auto [loss, cosine, grad_a, grad_b, grad_target] =
          positive_pair.call(a, b, target, mode, reduction, eps, fuzz.chance(0.5), fuzz.chance(0.5));
      ++accepted;
      require(cosine.numel() == a.size(0) && all_finite(loss) && all_finite(cosine), "positive pair outputs", it);
      require((cosine.abs() <= 1 + 1e-3).all().item<bool>(), "cosine outside [-1, 1]", it);
      require(all_finite(grad_a) && all_finite(grad_b) && all_finite(grad_target), "positive pair gradients", it);
    } catch (const c10::Error&) {
      ++rejected;
    }
  }
  std::printf("fuzz_ops: %lld calls accepted, %lld rejected with an error, %d failures\n",
              static_cast<long long>(accepted), static_cast<long long>(rejected), failures);
  return failures == 0 && accepted > 0 && rejected > 0 ? 0 : 1;
}
