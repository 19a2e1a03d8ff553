"""Bad input gets a clear error naming the argument, on every public function and backend; the compiled
ops check their arguments too, so a direct call can never read out of bounds. (Values of tensors are not read
on the host: tests/test_conformance.py checks what an out-of-range temperature tensor and negative labels do.)"""

import math

import pytest
import torch

import synthcl_fast.losses as L
from synthcl_fast.backends import BackendUnavailableError, resolve_backend
from conftest import fused_cpu_backends

BACKENDS = ["reference"] + fused_cpu_backends()
X = torch.randn(6, 4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call,error,message", [
    (lambda b: L.contrastive_loss(X, torch.randn(5, 3), backend=b), ValueError, "candidates has feature dimension"),
    (lambda b: L.contrastive_loss(X.double(), X, backend=b), TypeError, "candidates has dtype"),
    (lambda b: L.contrastive_loss(X, anchor_labels=torch.zeros(5, dtype=torch.long), backend=b), ValueError,
     r"anchor_labels must have shape \(6,\)"),
    (lambda b: L.contrastive_loss(X, anchor_labels=torch.zeros(6), backend=b), TypeError,
     "anchor_labels must have an integer dtype"),
    (lambda b: L.contrastive_loss(X, temperature=0.0, backend=b), ValueError, "temperature must be finite and > 0"),
    (lambda b: L.contrastive_loss(X, temperature=-1.0, backend=b), ValueError, "temperature"),
    (lambda b: L.contrastive_loss(X, temperature=math.nan, backend=b), ValueError, "temperature"),
    (lambda b: L.contrastive_loss(X, temperature=1e-9, backend=b), ValueError, r"temperature must be in \[1e-06"),
    (lambda b: L.clip_loss(X, X, logit_scale=1e9, backend=b), ValueError, "logit_scale must be in"),
    (lambda b: L.contrastive_loss(X, temperature=torch.ones(2), backend=b), ValueError, "temperature must be"),
    (lambda b: L.contrastive_loss(X, temperature="0.1", backend=b), TypeError, "temperature"),
    (lambda b: L.contrastive_loss(X, reduction="avg", backend=b), ValueError, "reduction"),
    (lambda b: L.contrastive_loss(torch.randn(0, 4), backend=b), ValueError, "anchors must not be empty"),
    (lambda b: L.contrastive_loss(torch.randn(6, 0), backend=b), ValueError, "anchors must not be empty"),
    (lambda b: L.contrastive_loss(torch.randn(6), backend=b), ValueError, "anchors must have 2 dimensions"),
    (lambda b: L.contrastive_loss(torch.ones(6, 4, dtype=torch.long), backend=b), TypeError, "anchors must be float"),
    (lambda b: L.contrastive_loss([[1.0]], backend=b), TypeError, "anchors must be a torch.Tensor"),
    (lambda b: L.contrastive_loss(X, eps=0.0, backend=b), ValueError, "eps"),
    (lambda b: L.nt_xent(X, X[:5], backend=b), ValueError, "z1 and z2 must have the same shape"),
    (lambda b: L.nt_xent(X, X, negatives=torch.randn(3, 5), backend=b), ValueError, "negatives has feature dimension"),
    (lambda b: L.supcon(X, torch.zeros(6, 1, dtype=torch.long), backend=b), ValueError, "labels must have shape"),
    (lambda b: L.ppcl(torch.randn(3, 4, 4), torch.randn(4, 2, 4), backend=b), ValueError, r"real_views must have shape \(2"),
    (lambda b: L.ppcl(torch.randn(2, 4, 4), torch.randn(2, 2, 4), backend=b), ValueError, r"synthetic_views must have shape \(4"),
    (lambda b: L.ppcl(torch.randn(2, 0, 4), torch.randn(4, 0, 4), backend=b), ValueError, "at least one"),
    (lambda b: L.info_nce(X, X[:3], backend=b), ValueError, "key must have as many rows"),
    (lambda b: L.clip_loss(X, X, logit_scale=0.0, backend=b), ValueError, "logit_scale"),
    (lambda b: L.positive_pair_loss(X, X[:2], 0.5, backend=b), ValueError, "a and b must have the same shape"),
    (lambda b: L.positive_pair_loss(X, X, math.inf, backend=b), ValueError, "target"),
    (lambda b: L.positive_pair_loss(X, X, torch.zeros(5), backend=b), ValueError, "target must be"),
    (lambda b: L.positive_pair_loss(X, X, 0.5, mode="ceiling", backend=b), ValueError, "mode"),
])
def test_clear_errors(backend, call, error, message):
    with pytest.raises(error, match=message):
        call(backend)


def test_unknown_and_unavailable_backends():
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        L.nt_xent(X, X, backend="fastest")
    if torch.cuda.is_available():
        pytest.skip("the machine has a GPU")
    with pytest.raises(BackendUnavailableError, match="backend 'cpu' cannot run"):
        resolve_backend("cpu", torch.device("meta"), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_expanded_inputs(backend):
    """Transposed, sliced and stride-0 (expanded) inputs give the same result as their contiguous copies."""
    base = torch.randn(9, 14, dtype=torch.float64)
    transposed = base.t()[:, :9]                    # (14, 9) with strides (1, 14), then sliced to (14, 9)
    expanded = torch.randn(1, 9, dtype=torch.float64).expand(14, 9)
    for features in (transposed, expanded, base[::2]):
        expected = L.contrastive_loss(features.contiguous(), backend="reference", anchor_labels=torch.arange(
            features.shape[0]) // 2)
        actual = L.contrastive_loss(features, backend=backend, anchor_labels=torch.arange(features.shape[0]) // 2)
        assert torch.allclose(actual, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_input_propagates(backend):
    """Documented behaviour: NaN in the features gives a NaN loss (no silent finite answer)."""
    features = torch.randn(8, 3)
    features[3, 1] = math.nan
    assert torch.isnan(L.contrastive_loss(features, anchor_labels=torch.arange(8) // 2, backend=backend))
    a = torch.randn(8, 3)
    a[0, 0] = math.inf
    assert torch.isnan(L.positive_pair_loss(a, torch.randn(8, 3), 0.5, backend=backend))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="CPU kernels unavailable")
def test_compiled_ops_check_their_arguments():
    """The registered ops, called directly (no Python checks), reject inconsistent shapes and dtypes."""
    ops = torch.ops.synthcl_fast
    a, c = torch.randn(4, 3), torch.randn(5, 3)
    la, lc, t = torch.arange(4), torch.arange(5), torch.tensor(0.1)
    bad_calls = {
        "candidates": (a, torch.randn(5, 2), la, lc, t),
        "anchor_labels": (a, c, torch.arange(3), lc, t),
        "candidate_labels": (a, c, la, lc.int(), t),
        "temperature": (a, c, la, lc, torch.ones(2)),
        "anchors": (torch.randn(0, 3), c, torch.arange(0), lc, t),
    }
    for name, args in bad_calls.items():
        with pytest.raises(RuntimeError, match=name):
            ops.contrastive_forward(*args, False, 1, 1e-12, [False] * 3)
    with pytest.raises(RuntimeError, match="compute_grad"):
        ops.contrastive_forward(a, c, la, lc, t, False, 0, 1e-12, [False, True, False])
    with pytest.raises(RuntimeError, match="target"):
        ops.positive_pair_forward(a, a, torch.zeros(3), 0, 1, 1e-12, False, False)
    # the variant op: its denominator code and positive_weight, named
    w = torch.ones(4)
    for denominator, weight, match in ((0, w, "denominator code"), (3, w, "denominator code"),
                                       (1, torch.ones(5), "positive_weight"), (2, w.double(), "positive_weight")):
        with pytest.raises(RuntimeError, match=match):
            ops.contrastive_variant_forward(a, c, la, lc, t, weight, denominator, False, 1, 1e-12, [False] * 3)
    with pytest.raises(RuntimeError, match="row_coef"):
        ops.contrastive_variant_backward(torch.ones(4), a, c, la, lc, t, w, torch.zeros(4), torch.zeros(4),
                                         torch.ones(4, dtype=torch.int32), torch.ones(3), 1, False, 1e-12, [True] * 3)
    # the hard-negative statistics op: beta, and each per-row input of its backward, named
    with pytest.raises(RuntimeError, match="beta"):
        ops.hard_negative_stats_forward(a, c, la, lc, t, float("inf"), False, 1e-12)
    stats = ops.hard_negative_stats_forward(a, c, la, lc, t, 0.5, False, 1e-12)
    n_negative, n_positive, reference, log_sum = stats[2:]
    good = dict(grad_lse=torch.ones(4, 3), grad_positive_mean=torch.ones(4), row_n_negative=n_negative,
                row_n_positive=n_positive, row_reference=reference, row_log_sum=log_sum)
    for name, bad in (("grad_lse", torch.ones(4, 2)), ("grad_positive_mean", torch.ones(5)),
                      ("row_n_negative", n_negative.float()), ("row_reference", reference.double()),
                      ("row_log_sum", torch.ones(3, 3))):
        args = {**good, name: bad}
        with pytest.raises(RuntimeError, match=name):
            ops.hard_negative_stats_backward(args["grad_lse"], args["grad_positive_mean"], a, c, la, lc, t, 0.5,
                                             args["row_n_negative"], args["row_n_positive"], args["row_reference"],
                                             args["row_log_sum"], False, 1e-12, [True] * 3)


def test_auto_warns_once_when_it_falls_back_to_the_reference(monkeypatch):
    """backend="auto" never degrades silently: where no fused backend can run, it warns once per device and
    dtype, naming why, and computes with the reference."""
    from synthcl_fast import backends

    monkeypatch.setattr(backends.BACKENDS["cpu"], "unavailable_reason", lambda device, dtype: "the test said so")
    monkeypatch.setattr(backends, "_warned_fallbacks", set())
    with pytest.warns(RuntimeWarning, match="falls back to the materializing reference.*cpu: the test said so"):
        first = L.nt_xent(X, X + 1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is quiet
        second = L.nt_xent(X, X + 1)
    assert torch.equal(first, second)
    assert torch.equal(first, L.nt_xent(X, X + 1, backend="reference"))
