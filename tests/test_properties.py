"""Property-based tests (hypothesis): drawn shapes, label patterns (1..8 positives per row, rows with none,
all candidates -1 but one), temperatures 0.01..10, dtypes and scales; every fused backend that runs on the
CPU against the float64 reference, values and gradients, held to the tolerances each backend declares
(Backend.tolerances) times the problem's conditioning (triton: under TRITON_INTERPRET=1, run by
tests/test_triton.py in a subprocess). 200 examples per op and backend in CI (profile "ci", derandomized so
CI is reproducible); HYPOTHESIS_PROFILE=dev draws 1000 fresh ones."""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import synthcl_fast.losses as L
from synthcl_fast import reference as ref
from conftest import (assert_close, cancellation_floor, conformance_lanes, min_row_norm, representation_floor,
                      total_upstream_weight)

settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

LANES = {lane.name: lane for lane in conformance_lanes() if lane.fused and lane.device.type == "cpu"}
BACKENDS = list(LANES)
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no fused CPU backend available")


def tolerances(backend, dtype, temperature=None):
    """(value, gradient) tolerances: the backend's declared ones, the fp32 part scaled by the conditioning 1/t
    of the logits (they carry an absolute error ~ eps sqrt(D) / t; declared for t >= 0.05). 16-bit inputs are
    computed in fp32: their values are held to fp32's tolerance, their gradients also to the 16-bit rounding."""
    value, grad = LANES[backend].tolerances(dtype)
    fp32_value, fp32_grad = LANES[backend].tolerances(torch.float32)
    conditioning = 1.0 if temperature is None else max(1.0, 0.05 / temperature)
    if dtype == torch.float64:
        return value * conditioning, grad * conditioning
    return fp32_value * conditioning, max(fp32_grad * conditioning, grad)


@st.composite
def contrastive_problems(draw):
    n_rows = draw(st.integers(1, 40))
    self_candidates = draw(st.booleans())
    n_cols = n_rows if self_candidates else draw(st.integers(1, 60))
    dim = draw(st.integers(1, 24))
    pattern = draw(st.sampled_from(["classes", "one_positive_only", "unique"]))
    n_classes = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    anchor_labels = torch.randint(0, n_classes, (n_rows,), generator=g)
    if self_candidates:
        candidate_labels = anchor_labels
    elif pattern == "one_positive_only":  # every candidate -1 but one
        candidate_labels = torch.full((n_cols,), -1)
        candidate_labels[draw(st.integers(0, n_cols - 1))] = int(anchor_labels[0])
    elif pattern == "unique":
        candidate_labels = torch.arange(n_cols)
    else:
        candidate_labels = torch.randint(-1, n_classes, (n_cols,), generator=g)
    return dict(
        n_rows=n_rows, n_cols=n_cols, dim=dim, self_candidates=self_candidates, seed=seed,
        anchor_labels=anchor_labels, candidate_labels=candidate_labels,
        exclude_self=draw(st.booleans()),
        temperature=draw(st.floats(0.01, 10.0)),
        dtype=draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16, torch.float16])),
        scale=draw(st.sampled_from([1e-2, 1.0, 30.0])),
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@given(problem=contrastive_problems())
def test_contrastive_op(backend, problem):
    g = torch.Generator().manual_seed(problem["seed"])
    dtype, scale = problem["dtype"], problem["scale"]
    anchors = (torch.randn(problem["n_rows"], problem["dim"], generator=g, dtype=torch.float64) * scale).to(dtype)
    candidates = (anchors if problem["self_candidates"] else
                  (torch.randn(problem["n_cols"], problem["dim"], generator=g, dtype=torch.float64) * scale).to(dtype))
    anchors.requires_grad_()
    if not problem["self_candidates"]:
        candidates.requires_grad_()
    t = torch.tensor(problem["temperature"], dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                     requires_grad=True)
    kwargs = dict(exclude_self=problem["exclude_self"], reduction=problem["reduction"])
    inputs = [anchors, t] if problem["self_candidates"] else [anchors, candidates, t]
    got = L.contrastive_loss(anchors, None if problem["self_candidates"] else candidates, problem["anchor_labels"],
                             problem["candidate_labels"], temperature=t, backend=backend, **kwargs)
    inputs64 = [x.detach().double().requires_grad_() for x in inputs]
    a64 = inputs64[0]
    c64 = None if problem["self_candidates"] else inputs64[1]
    exp = ref.contrastive_loss(a64, c64, problem["anchor_labels"], problem["candidate_labels"],
                               temperature=inputs64[-1], **kwargs)
    value_tol, tol = tolerances(backend, dtype, problem["temperature"])
    # the rows' terms, each ~ 1/t, cancel in "sum" with upstream weights of both signs (R rows)
    n_terms = problem["n_rows"] if problem["reduction"] == "sum" else 1
    assert_close(got, exp, value_tol, "value",
                 floor=cancellation_floor(n_terms / problem["temperature"], dtype, value_tol))
    upstream = torch.randn(exp.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(got, inputs, upstream.to(got.dtype))
    grads64 = torch.autograd.grad(exp, inputs64, upstream)
    # Sizes of the terms that cancel in each gradient, per unit of upstream weight W: du / ||x|| ~
    # 1 / (t ||x||) for the features, (1/t) sum_j G_ij s_ij ~ 1 / t^2 for the temperature.
    t = problem["temperature"]
    weight = total_upstream_weight(problem["reduction"], upstream, problem["n_rows"])
    feature_floor = max(cancellation_floor(weight / (t * min_row_norm(*inputs[:-1])), dtype, tol),
                        representation_floor(dtype, tol, upstream))
    floors = [feature_floor] * (len(inputs) - 1) + [cancellation_floor(weight / t**2, dtype, tol)]
    for i, (x, e) in enumerate(zip(grads, grads64)):
        assert_close(x, e, tol, f"grad {i}", floor=floors[i])


@st.composite
def positive_pair_problems(draw):
    return dict(n_rows=draw(st.integers(1, 50)), dim=draw(st.integers(1, 40)), seed=draw(st.integers(0, 2**31 - 1)),
                mode=draw(st.sampled_from(["two_sided", "floor"])),
                per_row_target=draw(st.booleans()), target=draw(st.floats(-1.0, 1.0)),
                dtype=draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16, torch.float16])),
                scale=draw(st.sampled_from([1e-2, 1.0, 30.0])),
                correlation=draw(st.floats(0.0, 1.0)),
                reduction=draw(st.sampled_from(["mean", "sum", "none"])))


@pytest.mark.parametrize("backend", BACKENDS)
@given(problem=positive_pair_problems())
def test_positive_pair_op(backend, problem):
    g = torch.Generator().manual_seed(problem["seed"])
    shape, dtype = (problem["n_rows"], problem["dim"]), problem["dtype"]
    a = torch.randn(shape, generator=g, dtype=torch.float64)
    b = problem["correlation"] * a + torch.randn(shape, generator=g, dtype=torch.float64)
    a, b = (a * problem["scale"]).to(dtype).requires_grad_(), (b * problem["scale"]).to(dtype).requires_grad_()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    target = (torch.rand(shape[0], generator=g, dtype=acc) * 2 - 1 if problem["per_row_target"]
              else torch.tensor(problem["target"], dtype=acc)).requires_grad_()
    kwargs = dict(mode=problem["mode"], reduction=problem["reduction"])
    got = L.positive_pair_loss(a, b, target, backend=backend, **kwargs)
    a64, b64, t64 = (x.detach().double().requires_grad_() for x in (a, b, target))
    exp = ref.positive_pair_loss(a64, b64, t64, **kwargs)
    value_tol, tol = tolerances(backend, dtype)
    # (c - s*)^2 with c, s* ~ 1: terms of size 1 cancel (per row, R rows for "sum")
    n_terms = problem["n_rows"] if problem["reduction"] == "sum" else 1
    assert_close(got, exp, value_tol, "value", floor=cancellation_floor(n_terms, dtype, value_tol))
    upstream = torch.randn(exp.shape, generator=g, dtype=torch.float64)
    # Terms that cancel, per unit of upstream weight W: dc/da ~ 1 / ||a|| (per row), dL/ds* ~ 1 per row.
    weight = total_upstream_weight(problem["reduction"], upstream, problem["n_rows"])
    floors = [max(cancellation_floor(weight / min_row_norm(x), dtype, tol), representation_floor(dtype, tol, upstream))
              for x in (a, b)]
    floors.append(cancellation_floor(weight, dtype, tol))
    for i, (x, e) in enumerate(zip(torch.autograd.grad(got, (a, b, target), upstream.to(got.dtype)),
                                   torch.autograd.grad(exp, (a64, b64, t64), upstream))):
        assert_close(x, e, tol, f"grad {i}", floor=floors[i])
