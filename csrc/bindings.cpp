// Operator schemas of synthcl_fast (the contract: synthcl_fast/backends/_ops.py; the math:
// synthcl_fast/reference.py). Each backend file registers its implementations with
// TORCH_LIBRARY_IMPL(synthcl_fast, <CPU|CUDA>, m); autograd and fake (meta) implementations are
// registered from Python (synthcl_fast/backends/native.py) with torch.library.
//
// Integer codes: reduction 0 = none, 1 = mean, 2 = sum; mode 0 = two_sided, 1 = floor.
//
// Gradient masks, (anchors, candidates, temperature) in that order: a forward's compute_grad says which
// gradients of a scalar loss it computes (all false: none, the backward recomputes them); a backward's
// output_mask says which it computes. A side that is off gets no gradient product at all and an empty (0,)
// tensor in its place (a frozen tower, a MoCo queue, a float temperature).

#include <torch/library.h>

#ifdef TORCH_EXTENSION_NAME  // built as the Python extension synthcl_fast._C (not by CMakeLists.txt)
#include <Python.h>
#endif

TORCH_LIBRARY(synthcl_fast, m) {
  m.def(
      "contrastive_forward(Tensor anchors, Tensor candidates, Tensor anchor_labels, Tensor candidate_labels, "
      "Tensor temperature, bool exclude_self, int reduction, float eps, bool[3] compute_grad) -> "
      "(Tensor loss, Tensor row_max, Tensor row_log_sum, Tensor row_n_positive, Tensor grad_anchors, "
      "Tensor grad_candidates, Tensor grad_temperature)");
  m.def(
      "contrastive_backward(Tensor grad_rows, Tensor anchors, Tensor candidates, Tensor anchor_labels, "
      "Tensor candidate_labels, Tensor temperature, Tensor row_max, Tensor row_log_sum, Tensor row_n_positive, "
      "bool exclude_self, float eps, bool[3] output_mask) -> (Tensor grad_anchors, Tensor grad_candidates, "
      "Tensor grad_temperature)");
  // The variants of the general op (synthcl_fast/variants.py): denominator 1 = negatives, 2 = per_positive;
  // positive_weight (R,) in the accumulation dtype; per row also c_i and mean_p s_ip (synthcl_fast/backends/_ops.py).
  m.def(
      "contrastive_variant_forward(Tensor anchors, Tensor candidates, Tensor anchor_labels, Tensor candidate_labels, "
      "Tensor temperature, Tensor positive_weight, int denominator, bool exclude_self, int reduction, float eps, "
      "bool[3] compute_grad) -> (Tensor loss, Tensor row_max, Tensor row_log_sum, Tensor row_n_positive, "
      "Tensor row_coef, Tensor row_positive_mean, Tensor grad_anchors, Tensor grad_candidates, "
      "Tensor grad_temperature)");
  m.def(
      "contrastive_variant_backward(Tensor grad_rows, Tensor anchors, Tensor candidates, Tensor anchor_labels, "
      "Tensor candidate_labels, Tensor temperature, Tensor positive_weight, Tensor row_max, Tensor row_log_sum, "
      "Tensor row_n_positive, Tensor row_coef, int denominator, bool exclude_self, float eps, "
      "bool[3] output_mask) -> (Tensor grad_anchors, Tensor grad_candidates, Tensor grad_temperature)");
  // Hard negatives and debiasing (HCL): per row lse_Neg (1 + beta) s, lse_Neg beta s and lse_P s (row_lse, (R, 3)),
  // mean_P s, |Neg|, |P|, and per set the reference and log-sum the backward recomputes each softmax from; the
  // loss is formed from them in Python (synthcl_fast/reference.py, hard_negative_row_loss).
  m.def(
      "hard_negative_stats_forward(Tensor anchors, Tensor candidates, Tensor anchor_labels, Tensor candidate_labels, "
      "Tensor temperature, float beta, bool exclude_self, float eps) -> (Tensor row_lse, Tensor row_positive_mean, "
      "Tensor row_n_negative, Tensor row_n_positive, Tensor row_reference, Tensor row_log_sum)");
  m.def(
      "hard_negative_stats_backward(Tensor grad_lse, Tensor grad_positive_mean, Tensor anchors, Tensor candidates, "
      "Tensor anchor_labels, Tensor candidate_labels, Tensor temperature, float beta, Tensor row_n_negative, "
      "Tensor row_n_positive, Tensor row_reference, Tensor row_log_sum, bool exclude_self, float eps, "
      "bool[3] output_mask) -> "
      "(Tensor grad_anchors, Tensor grad_candidates, Tensor grad_temperature)");
  m.def(
      "positive_pair_forward(Tensor a, Tensor b, Tensor target, int mode, int reduction, float eps, "
      "bool compute_grad_a, bool compute_grad_b) -> "
      "(Tensor loss, Tensor cosine, Tensor grad_a, Tensor grad_b, Tensor grad_target)");
}

#ifdef TORCH_EXTENSION_NAME
// Lets `import synthcl_fast._C` load the library (and run the registrations above) like a Python module.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
#endif
