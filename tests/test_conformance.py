"""One contract, every backend: the conformance suite.

Every backend that runs in this session (tests/conftest.py: conformance_lanes) against the float64 reference
(synthcl_fast/reference.py), parametrized over (op, backend, device, dtype, reduction, shape): values and
gradients (inputs and temperature) on fresh random inputs, odd shapes, outputs poisoned with NaN before every
kernel writes them (conftest: SYNTHCL_FAST_POISON_OUTPUTS=1), the numerics extremes, determinism, opcheck,
torch.compile, and no host synchronization. Each backend declares its tolerances by dtype in one place
(Backend.tolerances in synthcl_fast/backends/__init__.py); nothing here has a table of its own.

The lanes:
    python -m pytest tests/                               reference and cpu on CPU; on a GPU machine also
                                                          reference, triton and cuda on CUDA (marker gpu)
    TRITON_INTERPRET=1 python -m pytest tests/test_conformance.py
                                                          triton on CPU tensors under the interpreter (CI runs
                                                          it from tests/test_triton.py), with every tile plan
    python -m pytest -m gpu tests/test_conformance.py     the GPU lane alone

Triton lanes also run the forced tile plans of TILE_PLANS (feature loop, output chunks, split columns with
the log-sum-exp merge, the partial-sum backward); the automatic plans, split-K included, are those of an H200
(triton_support.plan_multiprocessors).
"""

from __future__ import annotations

import itertools
import math
import os

import pytest
import torch
import torch.nn.functional as F

import synthcl_fast.losses as L
from synthcl_fast import reference as ref
from conftest import (SEED, FailOnHostSync, assert_close, cancellation_floor, conformance_lanes, labels_with_positives,
                      lane_param, min_row_norm, relative_error, representation_floor, total_upstream_weight)

LANES = conformance_lanes()
FUSED = [lane for lane in LANES if lane.fused]
pytestmark = pytest.mark.skipif(not LANES, reason="no backend runs in this session")

# SYNTHCL_FAST_TRITON_TILES for the Triton lanes: "auto" is the shape-derived plan; "tiled" loops over D in
# chunks of 16, splits each gradient row over several output chunks and the columns over 3 programs (log-sum-exp
# merge, partial-sum backward); "split" keeps all of D in one tile but splits the columns and gradient features.
TILE_PLANS = {"auto": "", "tiled": "block_m=16,block_n=16,block_d=16,block_do=16,splits=3",
              "split": "block_m=32,block_n=16,block_do=16,splits=2"}

# (R, K, D): R = 1, D = 1, primes, R != K; (20, 17011, 3): few rows and many candidates (split columns, online
# statistics over hundreds of tiles, one row block whose strip is tiled on the CPU). On CUDA also the shapes
# that reach the cuda kernels' other paths: 7 panels of D with owner rows streamed (fp32), and D = 2000.
# Under the interpreter (numpy, one program at a time) few rows against many columns is (20, 2053, 3): the
# columns still split (split-K merge) and stream through 64 tiles per split, in a tenth of the time.
SHAPES = [(1, 5, 3), (2, 2, 1), (7, 7, 5), (33, 50, 17), (131, 97, 130), (257, 300, 64), (20, 17011, 3)]
INTERPRETER_SHAPES = SHAPES[:-1] + [(20, 2053, 3)]
GPU_SHAPES = [(300, 1000, 769), (70, 300, 2000)]
PLAN_SHAPES = [(1, 5, 3), (7, 7, 5), (33, 50, 17), (61, 37, 40)]


def plans(lane):
    return list(TILE_PLANS) if lane.name == "triton" else ["auto"]


def shapes(lane):
    if lane.device.type == "cuda":
        return SHAPES + GPU_SHAPES
    return INTERPRETER_SHAPES if lane.name == "triton" else SHAPES


@pytest.fixture
def tile_plan(request, monkeypatch):
    """Applies the tile plan named by the test's `plan` parameter (Triton lanes)."""
    plan = request.node.callspec.params.get("plan", "auto")
    monkeypatch.setenv("SYNTHCL_FAST_TRITON_TILES", TILE_PLANS[plan])
    return plan


def _what(what: str) -> str:
    return f"{what} (SYNTHCL_FAST_TEST_SEED={SEED})"


def _pair(lane, data: torch.Tensor, dtype, requires_grad=True):
    """(the input in dtype on the lane's device, the same values in float64) as leaves."""
    low = data.to(dtype).to(lane.device).requires_grad_(requires_grad)
    return low, low.detach().double().requires_grad_(requires_grad)


def _labels(rng, n, low, high, lane):
    return torch.randint(low, high, (n,), generator=rng).to(lane.device)


def compare(actual, expected, inputs, inputs64, tols, what, rng, grad_floors=None):
    """Loss values, then the gradient of every input under one random upstream gradient; the loss comes back
    in fp32 (fp64 for fp64 inputs) and each gradient in its input's dtype."""
    value_tol, grad_tol = tols
    what = _what(what)
    want_dtype = torch.float64 if inputs[0].dtype == torch.float64 else torch.float32
    assert actual.dtype == want_dtype, f"{what}: loss dtype {actual.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert_close(actual, expected, value_tol, f"{what} value")
    upstream = torch.randn(expected.shape, generator=rng, dtype=torch.float64).to(expected.device)
    wanted = [(x, x64) for x, x64 in zip(inputs, inputs64) if x.requires_grad]
    got = torch.autograd.grad(actual, [x for x, _ in wanted], upstream.to(actual.dtype))
    exp = torch.autograd.grad(expected, [x64 for _, x64 in wanted], upstream)
    if callable(grad_floors):
        grad_floors = grad_floors(upstream)
    for i, (g, e, (x, _)) in enumerate(zip(got, exp, wanted)):
        assert g.dtype == x.dtype, f"{what}: grad {i} dtype {g.dtype} != {x.dtype}"
        floor = grad_floors[i] if grad_floors else 0.0
        assert_close(g, e, grad_tol, f"{what} grad of input {i}", floor=floor)


def cancellation_floors(features64, temperature, reduction, tol, dtype, row_dt=None):
    """Floors for the gradients of the features, then of the temperature, given the upstream gradient.
    Per unit of total upstream weight W, the terms that cancel into a feature gradient are du / ||x|| ~
    1 / (t ||x||) (all of it for D = 1, whose gradient is exactly 0), into the temperature's
    (1/t) sum_j G_ij (s_ij - m_i) ~ 1/t^2 per row (conftest.cancellation_floor). With reduction "none" and
    upstream weights of both signs, dLoss/dt = sum_i w_i dL_i/dt cancels across rows: its rounding is relative
    to sum_i |w_i dL_i/dt| (row_dt: dL_i/dt per row)."""
    def floors(upstream):
        n_rows = features64[0].shape[0]
        weight = total_upstream_weight(reduction, upstream, n_rows)
        t = float(temperature)
        t_floor = cancellation_floor(weight / t**2, dtype, tol)
        if row_dt is not None and reduction == "none":
            t_floor = max(t_floor, float((upstream * row_dt).abs().sum()))
        return [cancellation_floor(weight / (t * min_row_norm(x)), dtype, tol) for x in features64] + [t_floor]
    return floors


# ------------------------------------------------------------------------------------------------ general op

def _general_cases():
    for lane in LANES:
        for plan in plans(lane):
            for shape, exclude_self, reduction in itertools.product(
                    shapes(lane) if plan == "auto" else PLAN_SHAPES, (False, True),
                    ("mean", "sum", "none") if plan == "auto" else ("mean", "none")):
                yield lane_param(lane, plan, shape, exclude_self, reduction)


@pytest.mark.parametrize("lane,plan,shape,exclude_self,reduction", list(_general_cases()))
def test_general_op(lane, plan, shape, exclude_self, reduction, tile_plan, rng):
    """The general op in the lane's most precise dtype: labels 0..3 and -1, 0..several positives per row."""
    n_rows, n_cols, dim = shape
    dtype = lane.exact_dtype
    anchors, anchors64 = _pair(lane, torch.randn(n_rows, dim, generator=rng), dtype)
    candidates, candidates64 = _pair(lane, torch.randn(n_cols, dim, generator=rng), dtype)
    anchor_labels, candidate_labels = _labels(rng, n_rows, 0, 4, lane), _labels(rng, n_cols, -1, 4, lane)
    t = 0.05 + 0.5 * float(torch.rand((), generator=rng))
    temperature, temperature64 = _pair(lane, torch.tensor(t), dtype if dtype == torch.float64 else torch.float32)
    actual = L.contrastive_loss(anchors, candidates, anchor_labels, candidate_labels, temperature=temperature,
                                exclude_self=exclude_self, reduction=reduction, backend=lane.name)
    expected = ref.contrastive_loss(anchors64, candidates64, anchor_labels, candidate_labels,
                                    temperature=temperature64, exclude_self=exclude_self, reduction=reduction)
    compare(actual, expected, [anchors, candidates, temperature], [anchors64, candidates64, temperature64],
            lane.tolerances(dtype), f"contrastive {shape} {dtype} t={t:.3f} plan={plan}", rng,
            grad_floors=cancellation_floors(
                [anchors64, candidates64], t, reduction, lane.tolerances(dtype)[1], dtype,
                _row_temperature_derivatives(anchors64, candidates64, anchor_labels, candidate_labels, temperature64,
                                             exclude_self)))


def _cuda_unchanged_param(lane, cuda_reason, *case):
    """lane_param, with the cuda lane marked xfail (not strict) for `cuda_reason`: issue 25 keeps the CUDA kernel
    bodies as they are until they have run on a GPU."""
    param = lane_param(lane, *case)
    if lane.name != "cuda":
        return param
    return pytest.param(*param.values, marks=[*param.marks, pytest.mark.xfail(reason=cuda_reason, strict=False)],
                        id=param.id)


def _tiny_loss_param(lane, *case):
    return _cuda_unchanged_param(lane, "csrc/contrastive_cuda.cu still takes log S of a rounded S (not log1p of "
                                       "the terms below the max): to be changed on a GPU", *case)


@pytest.mark.parametrize("lane,n_negatives,t", [_tiny_loss_param(lane, n, t) for lane in LANES
                                                for n, t in ((1, 0.088), (1, 0.05), (3000, 0.05))])
def test_a_tiny_loss_keeps_its_relative_accuracy(lane, n_negatives, t, tile_plan):
    """One positive far above its negatives, in the lane's most precise dtype: L = log(1 + sum_n e^{(s_n - s_p)/t})
    (1.4e-10 for one negative at t = 0.088, 4e-18 at t = 0.05; 3,000 negatives span several column tiles and
    splits) to the lane's value tolerance relative to L itself, against float64. The log of a rounded
    S = 1 + L keeps only eps absolute: 2e-7 relative at 1.4e-10 in float64, and 0 for L below eps."""
    dtype = lane.exact_dtype
    anchors = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    negative = torch.tensor([[-0.9, 0.19 ** 0.5]], dtype=torch.float64) if n_negatives > 1 else -anchors
    candidates64 = torch.cat([anchors, negative.expand(n_negatives, 2)])
    labels = torch.zeros(1, dtype=torch.long)
    candidate_labels = torch.cat([labels, torch.full((n_negatives,), -1)])
    expected = ref.contrastive_loss(anchors, candidates64, labels, candidate_labels, temperature=t, reduction="none")
    actual = L.contrastive_loss(anchors.to(lane.device, dtype), candidates64.to(lane.device, dtype),
                                labels.to(lane.device), candidate_labels.to(lane.device), temperature=t,
                                reduction="none", backend=lane.name)
    assert 0 < float(expected[0]) < 1e-9
    assert_close(actual, expected, lane.tolerances(dtype)[0], f"loss {float(expected[0]):.2e} {dtype}")


def _row_temperature_derivatives(anchors64, candidates64, anchor_labels, candidate_labels, temperature64,
                                 exclude_self):
    """dL_i/dt of every row (forward-mode AD on the reference)."""
    _, row_dt = torch.func.jvp(
        lambda t: ref.contrastive_loss(anchors64.detach(), candidates64.detach(), anchor_labels, candidate_labels,
                                       temperature=t, exclude_self=exclude_self, reduction="none"),
        (temperature64.detach(),), (torch.ones_like(temperature64),))
    return row_dt


def _dtype_cases():
    for lane in LANES:
        for plan in plans(lane)[:2]:
            for dtype, shape, reduction, t in itertools.product(
                    lane.dtypes, [(37, 46, 40)] + ([] if lane.name == "triton" and lane.device.type == "cpu"
                                                   else [(131, 97, 130)]), ("mean", "none"), (0.05, 0.5)):
                yield lane_param(lane, plan, dtype, shape, reduction, t)


@pytest.mark.parametrize("lane,plan,dtype,shape,reduction,t", list(_dtype_cases()))
def test_dtypes(lane, plan, dtype, shape, reduction, t, tile_plan, rng):
    """Every dtype against float64 on the same (rounded) inputs: the value to fp32 accuracy also for 16-bit
    inputs (computed in fp32), gradients in the input dtype to the lane's declared tolerance."""
    n_rows, n_cols, dim = shape
    anchors, anchors64 = _pair(lane, torch.randn(n_rows, dim, generator=rng), dtype)
    candidates, candidates64 = _pair(lane, torch.randn(n_cols, dim, generator=rng), dtype)
    anchor_labels, candidate_labels = _labels(rng, n_rows, 0, 8, lane), _labels(rng, n_cols, -1, 8, lane)
    temperature, temperature64 = _pair(lane, torch.tensor(t), torch.float64 if dtype == torch.float64
                                       else torch.float32)
    actual = L.contrastive_loss(anchors, candidates, anchor_labels, candidate_labels, temperature=temperature,
                                reduction=reduction, backend=lane.name)
    expected = ref.contrastive_loss(anchors64, candidates64, anchor_labels, candidate_labels,
                                    temperature=temperature64, reduction=reduction)
    compare(actual, expected, [anchors, candidates, temperature], [anchors64, candidates64, temperature64],
            lane.tolerances(dtype), f"{dtype} {shape} {reduction} t={t} plan={plan}", rng,
            grad_floors=cancellation_floors(
                [anchors64, candidates64], t, reduction, lane.tolerances(dtype)[1], dtype,
                _row_temperature_derivatives(anchors64, candidates64, anchor_labels, candidate_labels, temperature64,
                                             False)))


@pytest.mark.parametrize("lane,dtype", [lane_param(lane, dtype) for lane in LANES for dtype in lane.dtypes
                                        if dtype != torch.float64])
def test_low_precision_recompute_with_tiny_upstream(lane, dtype, rng):
    """Low precision through the recomputing backward (reduction none) with -1 labels and R != K. Small features
    (norm ~0.015) and upstream weights ~1e-6 give gradients ~1e-3 but G = w (p - P/|P|) ~ 1e-8, below
    float16's smallest subnormal: a kernel must rescale G before it rounds it for a product."""
    anchors, anchors64 = _pair(lane, 0.003 * torch.randn(43, 24, generator=rng), dtype)
    candidates, candidates64 = _pair(lane, 0.003 * torch.randn(58, 24, generator=rng), dtype)
    anchor_labels, candidate_labels = _labels(rng, 43, 0, 6, lane), _labels(rng, 58, -1, 6, lane)
    actual = L.contrastive_loss(anchors, candidates, anchor_labels, candidate_labels, temperature=0.1,
                                reduction="none", backend=lane.name)
    expected = ref.contrastive_loss(anchors64, candidates64, anchor_labels, candidate_labels, temperature=0.1,
                                    reduction="none")
    value_tol, grad_tol = lane.tolerances(dtype)
    assert_close(actual, expected, value_tol, _what(f"{dtype} values"))
    upstream = 1e-6 * torch.rand(43, generator=rng, dtype=torch.float64).to(lane.device)
    (g_a, g_c) = torch.autograd.grad(actual, (anchors, candidates), upstream.float())
    (e_a, e_c) = torch.autograd.grad(expected, (anchors64, candidates64), upstream)
    assert g_a.abs().max() > 0 and g_c.abs().max() > 0
    assert_close(g_a, e_a, grad_tol, _what(f"{dtype} anchors grad"))
    assert_close(g_c, e_c, grad_tol, _what(f"{dtype} candidates grad"))


# ----------------------------------------------------------------------------- one tensor as both sides

@pytest.mark.parametrize("lane,plan,max_group,reduction",
                         [lane_param(lane, plan, g, r) for lane in LANES for plan in plans(lane)
                          for g in (1, 2, 6) for r in ("mean", "none")])
def test_self_candidates_with_grouped_labels(lane, plan, max_group, reduction, tile_plan, rng):
    """Candidates are the anchors (one tensor: both gradient roles in one buffer); 0..max_group-1 positives."""
    dtype = lane.exact_dtype
    features, features64 = _pair(lane, torch.randn(61, 19, generator=rng), dtype)
    labels = labels_with_positives(61, max_group, rng).to(lane.device)
    temperature, temperature64 = _pair(lane, torch.tensor(0.2), dtype if dtype == torch.float64 else torch.float32)
    actual = L.supcon(features, labels, temperature=temperature, reduction=reduction, backend=lane.name)
    expected = ref.supcon(features64, labels, temperature=temperature64, reduction=reduction)
    compare(actual, expected, [features, temperature], [features64, temperature64], lane.tolerances(dtype),
            f"supcon groups<={max_group} plan={plan}", rng,
            grad_floors=cancellation_floors([features64], 0.2, reduction, lane.tolerances(dtype)[1], dtype,
                                            _row_temperature_derivatives(features64, features64, labels, labels,
                                                                         temperature64, True)))


@pytest.mark.parametrize("lane,plan,exclude_self,labels_kind",
                         [lane_param(lane, plan, e, k) for lane in LANES for plan in plans(lane)[:2]
                          for e in (False, True) for k in ("same_object", "asymmetric")])
def test_one_tensor_both_sides(lane, plan, exclude_self, labels_kind, tile_plan, rng):
    """The anchors passed again as candidates: with the same label tensor s and the positive mask are
    symmetric; with other candidate labels (here with -1s) they are not."""
    dtype = lane.exact_dtype
    x, x64 = _pair(lane, torch.randn(47, 21, generator=rng), dtype)
    anchor_labels = labels_with_positives(47, 4, rng).to(lane.device)
    candidate_labels = anchor_labels if labels_kind == "same_object" else torch.where(
        torch.rand(47, generator=rng).to(lane.device) < 0.3, -1, anchor_labels)
    for reduction in ("mean", "none"):
        actual = L.contrastive_loss(x, x, anchor_labels, candidate_labels, temperature=0.25,
                                    exclude_self=exclude_self, reduction=reduction, backend=lane.name)
        expected = ref.contrastive_loss(x64, x64, anchor_labels, candidate_labels, temperature=0.25,
                                        exclude_self=exclude_self, reduction=reduction)
        compare(actual, expected, [x], [x64], lane.tolerances(dtype), f"one tensor {labels_kind} {reduction}", rng)


@pytest.mark.parametrize("lane", [lane_param(lane) for lane in LANES])
def test_same_memory_different_tensors_keep_separate_gradients(lane, rng):
    """x and x.detach() share memory but only x wants a gradient: its gradient must not include the
    candidates' part (the one-buffer path is for one tensor object only)."""
    dtype = lane.exact_dtype
    x, x64 = _pair(lane, torch.randn(23, 7, generator=rng), dtype)
    for reduction in ("mean", "none"):
        actual = L.contrastive_loss(x, x.detach(), temperature=0.3, exclude_self=True, reduction=reduction,
                                    backend=lane.name)
        expected = ref.contrastive_loss(x64, x64.detach(), temperature=0.3, exclude_self=True, reduction=reduction)
        compare(actual, expected, [x], [x64], lane.tolerances(dtype), f"x vs x.detach() {reduction}", rng)


# ---------------------------------------------------------------------------------------------- named losses

@pytest.mark.parametrize("lane,dtype,with_negatives,reduction",
                         [lane_param(lane, d, n, r) for lane in LANES for d in lane.dtypes
                          for n in (False, True) for r in ("mean", "none")])
def test_nt_xent(lane, dtype, with_negatives, reduction, rng):
    """SimCLR's NT-Xent (and with generated negatives) against its textbook cross-entropy form."""
    z1, z1_64 = _pair(lane, torch.randn(45, 23, generator=rng), dtype)
    z2, z2_64 = _pair(lane, torch.randn(45, 23, generator=rng), dtype)
    g, g64 = _pair(lane, torch.randn(29, 23, generator=rng), dtype)
    negatives, negatives64 = (g, g64) if with_negatives else (None, None)
    actual = L.nt_xent(z1, z2, negatives=negatives, reduction=reduction, backend=lane.name)
    expected = ref.nt_xent(z1_64, z2_64, negatives=negatives64, reduction=reduction)
    inputs, inputs64 = ([z1, z2, g], [z1_64, z2_64, g64]) if with_negatives else ([z1, z2], [z1_64, z2_64])
    compare(actual, expected, inputs, inputs64, lane.tolerances(dtype), f"nt_xent {dtype}", rng)


@pytest.mark.parametrize("lane,dtype,with_negatives", [lane_param(lane, d, n) for lane in LANES for d in lane.dtypes
                                                       for n in (False, True)])
def test_supcon(lane, dtype, with_negatives, rng):
    features, features64 = _pair(lane, torch.randn(70, 16, generator=rng), dtype)
    labels = labels_with_positives(70, 5, rng).to(lane.device)
    g, g64 = _pair(lane, torch.randn(13, 16, generator=rng), dtype)
    actual = L.supcon(features, labels, temperature=0.1, negatives=g if with_negatives else None, backend=lane.name)
    expected = ref.supcon(features64, labels, temperature=0.1, negatives=g64 if with_negatives else None)
    inputs, inputs64 = ([features, g], [features64, g64]) if with_negatives else ([features], [features64])
    compare(actual, expected, inputs, inputs64, lane.tolerances(dtype), f"supcon {dtype}", rng)


@pytest.mark.parametrize("lane,n_real,n_synthetic,with_negatives",
                         [lane_param(lane, r, s, n) for lane in LANES for r, s in ((24, 9), (24, 0), (0, 7), (1, 1))
                          for n in (False, True)])
def test_ppcl(lane, n_real, n_synthetic, with_negatives, rng):
    """PPCL: 2 views per real image, 4 per synthetic pair (one pseudo-label), against SupCon's mask form."""
    dtype = lane.exact_dtype
    real, real64 = _pair(lane, torch.randn(2, n_real, 12, generator=rng), dtype)
    synthetic, synthetic64 = _pair(lane, torch.randn(4, n_synthetic, 12, generator=rng), dtype)
    negatives, negatives64 = _pair(lane, torch.randn(5, 12, generator=rng), dtype, requires_grad=False)
    kwargs = dict(temperature=0.5, reduction="none")
    actual = L.ppcl(real, synthetic, negatives=negatives if with_negatives else None, backend=lane.name, **kwargs)
    expected = ref.ppcl(real64, synthetic64, negatives=negatives64 if with_negatives else None, **kwargs)
    compare(actual, expected, [real, synthetic], [real64, synthetic64], lane.tolerances(dtype), "ppcl", rng)


@pytest.mark.parametrize("lane", [lane_param(lane) for lane in LANES])
def test_ppcl_without_synthetic_is_nt_xent(lane, rng):
    real = torch.randn(2, 31, 8, generator=rng).to(lane.exact_dtype).to(lane.device)
    empty = real.new_zeros(4, 0, 8)
    assert_close(L.ppcl(real, empty, backend=lane.name), L.nt_xent(real[0], real[1], backend=lane.name),
                 1e-12 if lane.exact_dtype == torch.float64 else 1e-6, _what("ppcl(real only) vs nt_xent"))


@pytest.mark.parametrize("lane,dtype,queue", [lane_param(lane, d, q) for lane in LANES for d in lane.dtypes
                                              for q in (0, 200, 5000)])
def test_info_nce(lane, dtype, queue, rng):
    """MoCo: queries against their keys and a queue of negatives (label -1), learnable temperature."""
    query, query64 = _pair(lane, torch.randn(37, 32, generator=rng), dtype)
    key, key64 = _pair(lane, torch.randn(37, 32, generator=rng), dtype)
    negatives, negatives64 = _pair(lane, torch.randn(queue, 32, generator=rng), dtype, requires_grad=False)
    t_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    temperature, temperature64 = _pair(lane, torch.tensor(0.07), t_dtype)
    actual = L.info_nce(query, key, negatives=negatives if queue else None, temperature=temperature,
                        backend=lane.name)
    expected = ref.info_nce(query64, key64, negatives=negatives64 if queue else None, temperature=temperature64)
    compare(actual, expected, [query, key, temperature], [query64, key64, temperature64], lane.tolerances(dtype),
            f"info_nce {dtype} queue {queue}", rng)


@pytest.mark.parametrize("lane,plan,dtype,symmetric,reduction",
                         [lane_param(lane, p, d, s, r) for lane in LANES for p in plans(lane)[:2]
                          for d in lane.dtypes for s in (False, True) for r in ("mean", "sum", "none")
                          if p == "auto" or d == lane.exact_dtype])
def test_clip_loss(lane, plan, dtype, symmetric, reduction, tile_plan, rng):
    """CLIP with a learnable logit scale, one direction or both (the symmetric op where a backend has one)."""
    image, image64 = _pair(lane, torch.randn(53, 24, generator=rng), dtype)
    text, text64 = _pair(lane, torch.randn(53, 24, generator=rng), dtype)
    s_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    scale, scale64 = _pair(lane, torch.tensor(14.3), s_dtype)
    kwargs = dict(symmetric=symmetric, reduction=reduction)
    actual = L.clip_loss(image, text, logit_scale=scale, backend=lane.name, **kwargs)
    expected = ref.clip_loss(image64, text64, logit_scale=scale64, **kwargs)
    compare(actual, expected, [image, text, scale], [image64, text64, scale64], lane.tolerances(dtype),
            f"clip {dtype} plan={plan}", rng)


@pytest.mark.parametrize("lane,shape,exclude_self,reduction",
                         [lane_param(lane, s, e, r) for lane in LANES if lane.backend.has_symmetric_op
                          for s, r in (((29, 29, 13), "mean"), ((29, 29, 13), "sum"), ((29, 29, 13), "none"),
                                       ((19, 41, 40), "mean"), ((19, 41, 40), "sum"))
                          for e in (False, True)])
def test_symmetric_op_general(lane, shape, exclude_self, reduction, rng):
    """A backend's symmetric op with general labels (-1, 0..5 positives per row and column), self-exclusion and
    R != K ("none" needs R == K): (row loss + column loss) / 2, the column loss being the op on the transposed
    problem; through both gradient paths (in forward, recomputed)."""
    from synthcl_fast.backends._ops import reduction_code

    n_rows, n_cols, dim = shape
    dtype = lane.exact_dtype
    anchors, anchors64 = _pair(lane, torch.randn(n_rows, dim, generator=rng), dtype)
    candidates, candidates64 = _pair(lane, torch.randn(n_cols, dim, generator=rng), dtype)
    anchor_labels, candidate_labels = _labels(rng, n_rows, -1, 5, lane), _labels(rng, n_cols, -1, 5, lane)
    temperature, temperature64 = _pair(lane, torch.tensor(0.3), dtype)
    op = lane.backend.ops().symmetric_contrastive_forward
    for compute_grad in ([True, False] if reduction != "none" else [False]):
        expected = (ref.contrastive_loss(anchors64, candidates64, anchor_labels, candidate_labels,
                                         temperature=temperature64, exclude_self=exclude_self, reduction=reduction)
                    + ref.contrastive_loss(candidates64, anchors64, candidate_labels, anchor_labels,
                                           temperature=temperature64, exclude_self=exclude_self,
                                           reduction=reduction)) / 2
        actual = op(anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self,
                    reduction_code(reduction), 1e-12, [compute_grad] * 3)[0]
        compare(actual, expected, [anchors, candidates, temperature], [anchors64, candidates64, temperature64],
                lane.tolerances(dtype), f"symmetric op compute_grad={compute_grad}", rng)


@pytest.mark.parametrize("lane,dtype", [lane_param(lane, d) for lane in LANES if lane.device.type == "cuda"
                                        for d in lane.dtypes if d != torch.float64])
def test_gpu_scale_named_losses(lane, dtype, rng):
    """The named losses at the sizes a GPU runs (more rows than one CTA or program holds, D of 100 and 512, a
    MoCo queue of 8192, 300 classes, t = 0.01 in 16-bit): what benchmarks/gpu_sweep.py checked before its
    timings, now here (the sweep only times)."""
    tols = lane.tolerances(dtype)

    def pair(*shape):
        return _pair(lane, torch.randn(*shape, generator=rng), dtype)

    (z1, z1_64), (z2, z2_64) = pair(1023, 100), pair(1023, 100)
    for t in (0.1, 0.01):
        compare(L.nt_xent(z1, z2, temperature=t, backend=lane.name), ref.nt_xent(z1_64, z2_64, temperature=t),
                [z1, z2], [z1_64, z2_64], tols, f"nt_xent R=K=2046 D=100 t={t} {dtype}", rng)
    x, x64 = pair(1999, 64)
    labels = torch.randint(0, 300, (1999,), generator=rng).to(lane.device)
    compare(L.supcon(x, labels, temperature=0.1, backend=lane.name), ref.supcon(x64, labels, temperature=0.1),
            [x], [x64], tols, f"supcon R=1999 D=64 300 classes {dtype}", rng)
    (q, q64), (k, k64), (queue, queue64) = pair(256, 128), pair(256, 128), pair(8192, 128)
    compare(L.info_nce(q, k, negatives=queue, backend=lane.name), ref.info_nce(q64, k64, negatives=queue64),
            [q, k, queue], [q64, k64, queue64], tols, f"info_nce 256 x 8192 D=128 {dtype}", rng)
    (image, image64), (text, text64) = pair(3000, 512), pair(3000, 512)
    scale, scale64 = _pair(lane, torch.tensor(14.3), torch.float32)
    compare(L.clip_loss(image, text, logit_scale=scale, backend=lane.name),
            ref.clip_loss(image64, text64, logit_scale=scale64), [image, text, scale], [image64, text64, scale64],
            tols, f"clip B=3000 D=512 {dtype}", rng)
    (a, a64), (b, b64) = pair(100003, 256), pair(100003, 256)
    compare(L.positive_pair_loss(a, b, 0.3, backend=lane.name), ref.positive_pair_loss(a64, b64, 0.3),
            [a, b], [a64, b64], tols, f"positive_pair R=100003 D=256 {dtype}", rng)


# ------------------------------------------------------------------------------------- positive-pair loss

@pytest.mark.parametrize("lane,dtype,dim,mode,reduction",
                         [lane_param(lane, d, dim, m, r) for lane in LANES for d in lane.dtypes
                          for dim in (1, 29, 1100) for m in ("two_sided", "floor") for r in ("mean", "sum", "none")
                          if d == lane.exact_dtype or (dim == 29 and r == "mean")])
def test_positive_pair(lane, dtype, dim, mode, reduction, rng):
    """Per-row targets; gradients of a, b and the target. D = 1100: rows longer than one register pass."""
    n_rows = 83 if dim < 1024 else 7
    a, a64 = _pair(lane, torch.randn(n_rows, dim, generator=rng), dtype)
    b_data = a.detach().float().cpu() + 0.8 * torch.randn(n_rows, dim, generator=rng)
    b, b64 = _pair(lane, b_data, dtype)
    t_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    target, target64 = _pair(lane, torch.rand(n_rows, generator=rng), t_dtype)
    actual = L.positive_pair_loss(a, b, target, mode=mode, reduction=reduction, backend=lane.name)
    expected = ref.positive_pair_loss(a64, b64, target64, mode=mode, reduction=reduction)
    compare(actual, expected, [a, b, target], [a64, b64, target64], lane.tolerances(dtype),
            f"positive_pair {mode} D={dim} {dtype}", rng, grad_floors=pair_floors(a64, b64, reduction, dtype,
                                                                                   lane.tolerances(dtype)[1]))


def pair_floors(a64, b64, reduction, dtype, tol):
    """Per unit of total upstream weight W the terms that cancel into dL/da are ~ 1 / ||a|| (all of it for D = 1,
    whose gradient is exactly 0), into dL/ds* ~ 1 per row; and gradients rounded to 16 bits keep up to a
    subnormal spacing (conftest.representation_floor)."""
    def floors(upstream):
        weight = total_upstream_weight(reduction, upstream, a64.shape[0])
        return [max(cancellation_floor(weight / min_row_norm(x), dtype, tol), representation_floor(dtype, tol, upstream))
                for x in (a64, b64)] + [cancellation_floor(weight, dtype, tol)]
    return floors


@pytest.mark.parametrize("lane,mode", [lane_param(lane, m) for lane in LANES for m in ("two_sided", "floor")])
def test_positive_pair_zero_and_misaligned_rows(lane, mode, rng):
    """Zero rows are constants (c = 0, no gradient of their own); a view that starts one element into its
    storage is not 16-byte aligned."""
    dtype = lane.exact_dtype
    storage = torch.randn(30 * 6 + 1, generator=rng)
    a_data = storage[1:].view(30, 6).clone()
    a_data[7] = 0.0
    b_data = torch.randn(30, 6, generator=rng)
    b_data[9] = 0.0
    a_storage = torch.cat([torch.zeros(1), a_data.reshape(-1)]).to(dtype).to(lane.device)
    a = a_storage[1:].view(30, 6).requires_grad_()
    a64 = a.detach().double().requires_grad_()
    b, b64 = _pair(lane, b_data, dtype)
    actual = L.positive_pair_loss(a, b, 0.3, mode=mode, backend=lane.name)
    expected = ref.positive_pair_loss(a64, b64, 0.3, mode=mode)
    compare(actual, expected, [a, b], [a64, b64], lane.tolerances(dtype), f"positive pair zero rows {mode}", rng)
    (grad_a,) = torch.autograd.grad(L.positive_pair_loss(a, b, 0.3, mode=mode, backend=lane.name), a)
    assert torch.count_nonzero(grad_a[7]) == 0


# ----------------------------------------------------------------------------------------- numerics extremes

# Scales each dtype holds (fp16: 6e-8 .. 65504).
SCALES = {torch.float64: [1e-30, 1.0, 1e30], torch.float32: [1e-30, 1e-8, 1.0, 1e20, 1e30],
          torch.bfloat16: [1e-30, 1.0, 1e30], torch.float16: [1e-2, 1.0, 1e3]}


def _extreme_features(kind, n, dim, rng):
    x = torch.randn(n, dim, generator=rng, dtype=torch.float64)
    if kind == "near_duplicates":
        x = x[:1] + 1e-4 * x  # every row within 1e-4 of the first
    elif kind == "aligned_views":
        x[1::2] = x[0::2] + 1e-2 * x[1::2]  # each pair (2k, 2k+1) nearly aligned: a small loss
    elif kind == "zero_rows":
        x[::3] = 0
    return x


def _plain_fp32_cross_entropy_error(x64, labels, temperature):
    """Relative errors (value, gradient) that plain fp32 PyTorch makes on this problem: F.normalize, a matmul
    and log_softmax in fp32 on the unit-norm rows (the same logits; relative errors do not depend on the
    rows' scale), against float64."""
    unit = x64 / x64.norm(dim=1, keepdim=True).clamp_min(1e-300)
    def supcon_plain(x):
        u = F.normalize(x, dim=1)
        n = u.shape[0]
        not_self = ~torch.eye(n, dtype=torch.bool, device=u.device)
        positive = (labels[:, None] == labels[None, :]) & not_self
        log_prob = torch.log_softmax((u @ u.T / temperature).masked_fill(~not_self, float("-inf")), dim=1)
        n_pos = positive.sum(1)
        rows = -torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(1) / n_pos.clamp_min(1)
        return rows[n_pos > 0].mean()
    x32, x64u = unit.float().requires_grad_(), unit.detach().clone().requires_grad_()
    got, exp = supcon_plain(x32), supcon_plain(x64u)
    (g32,), (g64,) = torch.autograd.grad(got, x32), torch.autograd.grad(exp, x64u)
    return relative_error(got, exp), relative_error(g32, g64)


EXTREME_CASES = [lane_param(lane, dtype, kind, t) for lane in LANES for dtype in lane.dtypes
                 for kind in ("random", "near_duplicates", "aligned_views", "zero_rows") for t in (0.01, 0.1, 10.0)]


@pytest.mark.parametrize("lane,dtype,kind,t", EXTREME_CASES)
def test_numerics_extremes(lane, dtype, kind, t, rng):
    """Norms 1e-30 .. 1e30, near-duplicate rows, nearly aligned views (small losses), zero rows, t = 0.01 in
    16-bit. Where float64 is finite no backend returns NaN or Inf, zero rows get no gradient, and loss and
    gradients are as accurate against float64 as plain fp32 PyTorch on the same logits: within 2x its error
    (the bar flash-attention sets against PyTorch in the same precision), or the lane's declared tolerance
    where that is the larger (the gradients of 16-bit inputs are rounded to 16 bits)."""
    value_tol, grad_tol = lane.tolerances(dtype)
    x = _extreme_features(kind, 48, 24, rng)
    labels = (torch.arange(48) // 2).to(lane.device)
    plain_value, plain_grad = _plain_fp32_cross_entropy_error(x, labels.cpu(), t)
    for scale in SCALES[dtype]:
        z, z64 = _pair(lane, x * scale, dtype)
        what = _what(f"{kind} {dtype} scale={scale:g} t={t}")
        expected = ref.supcon(z64, labels, temperature=t)
        assert torch.isfinite(expected), f"{what}: reference not finite"
        loss = L.supcon(z, labels, temperature=t, backend=lane.name)
        assert torch.isfinite(loss), f"{what}: loss {loss}"
        value_floor = cancellation_floor(1 / t, dtype, value_tol)  # the logits' size: a loss far below is noise
        assert_close(loss, expected, max(2 * plain_value, value_tol) if dtype != torch.float64 else value_tol,
                     f"{what} value (plain fp32: {plain_value:.1e})", floor=value_floor)
        (grad,), (grad64,) = torch.autograd.grad(loss, z), torch.autograd.grad(expected, z64)
        assert not torch.isnan(grad).any(), f"{what}: NaN gradient"
        tol = max(2 * plain_grad, grad_tol) if dtype != torch.float64 else grad_tol
        # Where the gradient is far smaller than the terms that cancel into it (aligned views at t = 0.01: a
        # loss ~1e-18), errors are relative to those terms; and 16-bit gradients keep subnormal spacings.
        live = z64.detach().norm(dim=1) > 0  # zero rows get no gradient (checked below)
        floor = max(cancellation_floor(1 / (t * min_row_norm(z64[live])), dtype, tol),
                    representation_floor(dtype, tol, torch.ones(())))
        assert_close(grad, grad64, tol, f"{what} gradient (plain fp32: {plain_grad:.1e})", floor=floor)
        if kind == "zero_rows":
            assert torch.count_nonzero(grad[::3]) == 0, f"{what}: zero rows must get no gradient"


@pytest.mark.parametrize("lane,dtype", [lane_param(lane, d) for lane in LANES for d in lane.dtypes])
def test_positive_pair_extremes(lane, dtype, rng):
    for scale, kind, mode in itertools.product(SCALES[dtype], ("random", "near_duplicates", "zero_rows"),
                                               ("two_sided", "floor")):
        a, a64 = _pair(lane, _extreme_features(kind, 40, 16, rng) * scale, dtype)
        b, b64 = _pair(lane, _extreme_features(kind, 40, 16, rng) * scale, dtype, requires_grad=False)
        loss = L.positive_pair_loss(a, b, 0.7, mode=mode, backend=lane.name)
        expected = ref.positive_pair_loss(a64, b64, 0.7, mode=mode)
        what = _what(f"{kind} {dtype} scale={scale:g} {mode}")
        value_tol, grad_tol = lane.tolerances(dtype)
        assert torch.isfinite(loss), what
        assert_close(loss, expected, value_tol, f"{what} value")
        (grad,), (grad64,) = torch.autograd.grad(loss, a), torch.autograd.grad(expected, a64)
        assert_close(grad, grad64, grad_tol, f"{what} gradient",
                     floor=representation_floor(dtype, grad_tol, torch.ones(())))


# (t, cone, noise): nearly aligned views with losses ~0.08 (t = 0.1), ~0.3 and ~0.003 (t = 0.01: the rows in a
# cone of that spread, so that the negatives are close enough to matter).
SMALL_LOSS_CASES = [(0.1, None, 3e-2), (0.01, 0.3, 1e-3), (0.01, 0.5, 1e-3)]


@pytest.mark.parametrize("lane,dtype,case", [lane_param(lane, d, c) for lane in LANES for d in lane.dtypes
                                             if d != torch.float64 for c in SMALL_LOSS_CASES])
def test_small_losses_as_accurate_as_plain_fp32(lane, dtype, case, rng):
    """NT-Xent on nearly aligned views (small losses, where lse - mean positive would lose ~eps/t): value and
    gradients within 2x the error plain fp32 cross-entropy makes on the same inputs."""
    t, cone, noise = case
    z1 = torch.randn(64, 16, generator=rng, dtype=torch.float64)
    if cone is not None:
        base = torch.randn(1, 16, generator=rng, dtype=torch.float64)
        z1 = base + cone * z1 * base.norm() / 4
    z2 = z1 + noise * torch.randn(64, 16, generator=rng, dtype=torch.float64) * z1.norm(dim=1, keepdim=True) / 4
    a, a64 = _pair(lane, z1, dtype)
    b, b64 = _pair(lane, z2, dtype)
    expected = ref.nt_xent(a64, b64, temperature=t)
    actual = L.nt_xent(a, b, temperature=t, backend=lane.name)
    # plain fp32: F.normalize, matmul, cross-entropy, on the same (rounded) inputs
    p1, p2 = (x.detach().float().cpu().requires_grad_() for x in (a, b))
    u = F.normalize(torch.cat([p1, p2]), dim=1)
    logits = (u @ u.T / t).masked_fill(torch.eye(128, dtype=torch.bool), float("-inf"))
    plain = F.cross_entropy(logits, torch.arange(128).roll(64))
    plain_value = relative_error(plain, expected.cpu())
    (plain_grad,), (grad64,) = torch.autograd.grad(plain, p1), torch.autograd.grad(expected, a64)
    value_tol, grad_tol = lane.tolerances(dtype)
    what = _what(f"{dtype} t={t} cone={cone} noise={noise} loss={float(expected):.2e}")
    assert_close(actual, expected, max(2 * plain_value, value_tol), f"{what} value (plain fp32 {plain_value:.1e})")
    (grad,) = torch.autograd.grad(actual, a)
    plain_grad_error = relative_error(plain_grad, grad64.cpu())
    assert_close(grad, grad64, max(2 * plain_grad_error, grad_tol), f"{what} grad (plain fp32 {plain_grad_error:.1e})")


# Small losses for every op, CLIP's two directions included: (name, t, cone, noise) with mean losses of about
# nt_xent t = 0.1: 3e-2, 0.04: 3e-6; info_nce (a queue of 40) 0.04: 3e-6; clip (logit_scale 100) cone 0.3: 9e-2,
# 0.5: 1e-4, 0.7: 7e-7; NT-Xent with denominator="per_positive" 0.04: 3e-5; with HCL's beta = 0.5 0.05: 5e-4.
# Rows in a cone of that relative spread around one direction (None: anywhere), each pair within `noise` of each
# other (D = 32).
SMALL_LOSS_OPS = [("nt_xent", 0.1, None, 3e-2), ("nt_xent", 0.04, None, 3e-2), ("info_nce", 0.04, None, 3e-2),
                  ("clip", 0.01, 0.3, 1e-2), ("clip", 0.01, 0.5, 1e-2), ("clip", 0.01, 0.7, 1e-2),
                  ("clip_one_direction", 0.01, 0.5, 1e-2), ("clip_one_direction", 0.01, 0.7, 1e-2),
                  ("per_positive", 0.04, None, 3e-2), ("hard_negatives", 0.05, None, 3e-2)]
# The variants' gradients are within the logits' rounding but not yet within 2x plain fp32's error on every draw
# (worst of 10 draws: per_positive 2.3x, hard negatives 5x; mean ~1x): not done (issue 25), so only their values
# are held to the 2x bar.
GRADIENT_NOT_YET_WITHIN_2X_PLAIN = ("per_positive", "hard_negatives")


def _small_loss_problem(op, t, backend, z1, z2, queue, reduction, plain=False):
    """The op on (z1, z2): the library's with `backend`; plain=True: F.normalize, a matmul and F.cross_entropy
    over the materialized logits (what open_clip, lightly and solo-learn compute), in the inputs' dtype; for the
    variants their authors' plain forms: per_positive as pytorch-metric-learning's NTXentLoss (softplus of the
    negatives' log-sum-exp minus the positive), hard_negatives as Robinson et al.'s code
    (reference.hard_negative_nt_xent)."""
    if op == "hard_negatives":
        if plain:
            return ref.hard_negative_nt_xent(z1, z2, temperature=t, beta=0.5, reduction=reduction)
        return L.nt_xent(z1, z2, temperature=t, beta=0.5, reduction=reduction, backend=backend)
    if op == "per_positive" and not plain:
        labels = torch.arange(z1.shape[0], device=z1.device).repeat(2)
        return L.contrastive_loss(torch.cat([z1, z2]), None, labels, temperature=t, denominator="per_positive",
                                  reduction=reduction, backend=backend)
    if not plain:
        if op == "nt_xent":
            return L.nt_xent(z1, z2, temperature=t, reduction=reduction, backend=backend)
        if op == "info_nce":
            return L.info_nce(z1, z2, negatives=queue, temperature=t, reduction=reduction, backend=backend)
        return L.clip_loss(z1, z2, logit_scale=1 / t, symmetric=op == "clip", reduction=reduction, backend=backend)
    n = z1.shape[0]
    if op in ("nt_xent", "per_positive"):
        u = F.normalize(torch.cat([z1, z2]), dim=1)
        logits = (u @ u.T / t).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=u.device), float("-inf"))
        other = torch.arange(2 * n, device=u.device).roll(n)
        if op == "nt_xent":
            return F.cross_entropy(logits, other, reduction=reduction)
        positive_logit = logits.gather(1, other[:, None]).squeeze(1)
        negatives = torch.logsumexp(logits.scatter(1, other[:, None], float("-inf")), dim=1)
        rows = F.softplus(negatives - positive_logit)
        return rows if reduction == "none" else rows.mean()
    q, k = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    target = torch.arange(n, device=q.device)
    if op == "info_nce":
        logits = torch.cat([q @ k.T, q @ F.normalize(queue, dim=1).T], dim=1) / t
        return F.cross_entropy(logits, target, reduction=reduction)
    logits = (1 / t) * q @ k.T
    image_to_text = F.cross_entropy(logits, target, reduction=reduction)
    if op == "clip_one_direction":
        return image_to_text
    return (image_to_text + F.cross_entropy(logits.T, target, reduction=reduction)) / 2


def _small_loss_case_param(lane, case):
    return _cuda_unchanged_param(lane, "csrc/contrastive_cuda.cu still forms the positive term as e^x - 1/|P| (not "
                                       "expm1): to be changed and checked on a GPU", *case)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_one_tensor_plan_is_accurate_at_a_small_loss_with_any_thread_count(threads):
    """The cpu backend's symmetric plan (one tensor: nt_xent) reads s_ji as s_ij, but a multi-threaded GEMM does not
    return an exactly symmetric diagonal block (MKL with 2 threads: 1 ulp apart). At a loss of ~4e-6 that ulp is
    the positive's gradient term itself: the gradient came out ~1e-3 off float64 with 2 threads (1e-6 with 1).
    Held to the logits' rounding bar of test_small_losses_every_op_against_plain_fp32, 16 eps / t."""
    from synthcl_fast.backends import BACKENDS

    if BACKENDS["cpu"].unavailable_reason(torch.device("cpu"), torch.float32) is not None:
        pytest.skip("no cpu backend here")
    t, previous = 0.04, torch.get_num_threads()
    generator = torch.Generator().manual_seed(1)
    z1 = torch.randn(64, 32, generator=generator, dtype=torch.float64)
    z2 = z1 + 0.03 * torch.randn(64, 32, generator=generator, dtype=torch.float64) * z1.norm(dim=1, keepdim=True) \
        / 32**0.5
    a64, b64 = (z.float().double().requires_grad_() for z in (z1, z2))
    expected = torch.autograd.grad(ref.nt_xent(a64, b64, temperature=t), (a64, b64))
    try:
        torch.set_num_threads(threads)
        a, b = (z.float().requires_grad_() for z in (z1, z2))
        actual = torch.autograd.grad(L.nt_xent(a, b, temperature=t, backend="cpu"), (a, b))
    finally:
        torch.set_num_threads(previous)
    assert float(ref.nt_xent(a64, b64, temperature=t)) < 1e-5
    for got, want in zip(actual, expected):
        error = float((got.double() - want).norm() / want.norm())
        assert error <= 16 * 2**-24 / t, f"{threads} threads: gradient error {error:.2e}"


@pytest.mark.parametrize("lane,op,t,cone,noise", [_small_loss_case_param(lane, case) for lane in LANES
                                                  for case in SMALL_LOSS_OPS])
def test_small_losses_every_op_against_plain_fp32(lane, op, t, cone, noise, rng):
    """fp32 at small losses, every op (CLIP both ways): the per-row values and the gradients of both inputs against
    float64 (the textbook forms of synthcl_fast.reference), pooled over three draws, are
    - within 2x the error of plain fp32 cross-entropy over the materialized logits on the same inputs (norm-wise
      relative errors), and
    - within the rounding of the logits: 16 eps / t (eps = 2^-24 in fp32; |s| <= 1/t, so every fp32 logit is off by
      up to ~eps / t, and each p_ij by as much relative), or the lane's declared tolerance where that is larger.
      Forming the positive's term as a rounded e^x minus 1/|P|, or the loss from a rounded S_i = 1 + (loss), errs
      by eps / L_i instead: far more at a small loss (plain fp32 cross-entropy does, hence the second bar)."""
    n, dim = 64, 32
    errors, plain_errors = {}, {}
    for _ in range(3):
        z1 = torch.randn(n, dim, generator=rng, dtype=torch.float64)
        if cone is not None:
            base = torch.randn(1, dim, generator=rng, dtype=torch.float64)
            z1 = base + cone * z1 * base.norm() / dim**0.5
        z2 = z1 + noise * torch.randn(n, dim, generator=rng, dtype=torch.float64) * z1.norm(dim=1, keepdim=True) \
            / dim**0.5
        queue = torch.randn(40, dim, generator=rng, dtype=torch.float64)
        a, a64 = _pair(lane, z1, torch.float32)
        b, b64 = _pair(lane, z2, torch.float32)
        q, q64 = _pair(lane, queue, torch.float32, requires_grad=False)
        kwargs = dict(negatives=q64) if op == "info_nce" else {}
        named = {"nt_xent": ref.nt_xent, "info_nce": ref.info_nce}.get(op)
        def expected(reduction):
            if op in ("per_positive", "hard_negatives"):  # the authors' forms, in float64
                return _small_loss_problem(op, t, None, a64, b64, q64, reduction, plain=True)
            if named is not None:
                return named(a64, b64, temperature=t, reduction=reduction, **kwargs)
            return ref.clip_loss(a64, b64, logit_scale=1 / t, symmetric=op == "clip", reduction=reduction)
        rows64 = expected("none").detach()
        grads64 = torch.autograd.grad(expected("mean"), (a64, b64))
        rows = _small_loss_problem(op, t, lane.name, a, b, q, "none").detach()
        grads = torch.autograd.grad(_small_loss_problem(op, t, lane.name, a, b, q, "mean"), (a, b))
        p1, p2 = (x.detach().cpu().requires_grad_() for x in (a, b))
        plain_rows = _small_loss_problem(op, t, None, p1, p2, q.cpu(), "none", plain=True).detach()
        plain_grads = torch.autograd.grad(_small_loss_problem(op, t, None, p1, p2, q.cpu(), "mean", plain=True),
                                          (p1, p2))
        for name, got, plain, want in [("value", rows, plain_rows, rows64), ("grad z1", grads[0], plain_grads[0],
                                       grads64[0]), ("grad z2", grads[1], plain_grads[1], grads64[1])]:
            errors.setdefault(name, []).append((got.cpu().double().flatten(), want.cpu().flatten()))
            plain_errors.setdefault(name, []).append(plain.double().flatten())
    value_tol, grad_tol = lane.tolerances(torch.float32)
    loss = float(torch.cat([w for _, w in errors["value"]]).mean())
    for name, pairs in errors.items():
        got, want = torch.cat([g for g, _ in pairs]), torch.cat([w for _, w in pairs])
        # norm-wise (not the largest element's): the error of every row and element counts, not the luck of one
        error, plain = ((x - want).norm() / want.norm() for x in (got, torch.cat(plain_errors[name])))
        error, plain = float(error), float(plain)
        logit_rounding = max(16 * 2.0**-24 / t, value_tol if name == "value" else grad_tol)
        what = _what(f"{op} t={t} cone={cone} loss {loss:.1e} {name}")
        if name == "value" or op not in GRADIENT_NOT_YET_WITHIN_2X_PLAIN:
            assert error <= 2 * plain, f"{what}: error {error:.2e} > 2x plain fp32 cross-entropy's {plain:.2e}"
        assert error <= logit_rounding, f"{what}: error {error:.2e} beyond the logits' rounding {logit_rounding:.2e}"


# --------------------------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("lane", [lane_param(lane) for lane in LANES])
def test_negative_labels_are_never_positive(lane, rng):
    """Any negative label (an ignore index of -100, say) behaves as -1: never a positive."""
    dtype = lane.exact_dtype
    anchors = torch.randn(11, 6, generator=rng).to(dtype).to(lane.device)
    candidates = torch.randn(17, 6, generator=rng).to(dtype).to(lane.device)
    anchor_labels, candidate_labels = _labels(rng, 11, -3, 3, lane), _labels(rng, 17, -100, 3, lane)
    as_minus_one = [torch.where(x < 0, -1, x) for x in (anchor_labels, candidate_labels)]
    got = L.contrastive_loss(anchors, candidates, anchor_labels, candidate_labels, reduction="none",
                             backend=lane.name)
    want = L.contrastive_loss(anchors, candidates, *as_minus_one, reduction="none", backend=lane.name)
    assert torch.equal(got, want)


@pytest.mark.parametrize("lane", [lane_param(lane) for lane in LANES])
def test_invalid_temperature_tensor_gives_nan(lane, rng, monkeypatch):
    """A temperature tensor out of range is not read on the host (no synchronization): the loss and every
    gradient are NaN; SYNTHCL_FAST_CHECK_VALUES=1 checks it on the host instead, naming the argument."""
    dtype = lane.exact_dtype
    z1 = torch.randn(9, 5, generator=rng).to(dtype).to(lane.device).requires_grad_()
    z2 = torch.randn(9, 5, generator=rng).to(dtype).to(lane.device)
    t_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    for bad in (0.0, -0.5, 1e-9, math.inf, math.nan):
        t = torch.tensor(bad, dtype=t_dtype, device=lane.device, requires_grad=True)
        loss = L.nt_xent(z1, z2, temperature=t, backend=lane.name)
        grad_z, grad_t = torch.autograd.grad(loss, (z1, t))
        assert torch.isnan(loss) and torch.isnan(grad_z).all() and torch.isnan(grad_t), f"temperature {bad}"
        scale = torch.tensor(1 / bad if bad not in (0.0,) else math.inf, dtype=t_dtype, device=lane.device)
        assert torch.isnan(L.clip_loss(z1, z2, logit_scale=scale, backend=lane.name)), f"logit_scale {scale}"
        # Per row: NaN exactly where a row has a positive, as in the reference (general and one-tensor plans;
        # a zero or NaN scale must not reach a GEMM as alpha, which BLAS may treat as "skip the product").
        labels = torch.tensor([0, 1, 2, 0, -1, 1, 7, 2, 9], device=lane.device)
        for candidates in (z2, z1):
            rows = L.contrastive_loss(z1, candidates, labels, labels, temperature=t, reduction="none",
                                      backend=lane.name)
            want = L.contrastive_loss(z1.detach(), candidates.detach(), labels, labels, temperature=t.detach(),
                                      reduction="none", backend="reference")
            assert torch.equal(torch.isnan(rows), torch.isnan(want)) and (rows[~torch.isnan(want)] == 0).all()
    monkeypatch.setenv("SYNTHCL_FAST_CHECK_VALUES", "1")
    with pytest.raises(ValueError, match="temperature"):
        L.nt_xent(z1, z2, temperature=torch.tensor(-0.5, device=lane.device), backend=lane.name)


@pytest.mark.parametrize("lane", [lane_param(lane) for lane in LANES])
def test_no_positive_anywhere_gives_zero(lane, rng):
    """No row has a positive: the mean is 0 and every gradient 0; R = K = 1 with exclude_self: an empty
    denominator, loss 0, finite gradients."""
    dtype = lane.exact_dtype
    features = torch.randn(9, 5, generator=rng).to(dtype).to(lane.device).requires_grad_()
    loss = L.supcon(features, torch.arange(9, device=lane.device), backend=lane.name)
    (grad,) = torch.autograd.grad(loss, features)
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0
    single = torch.randn(1, 5, generator=rng).to(dtype).to(lane.device).requires_grad_()
    loss = L.contrastive_loss(single, backend=lane.name)
    assert loss.item() == 0.0 and torch.isfinite(torch.autograd.grad(loss, single)[0]).all()
    assert L.contrastive_loss(single, reduction="none", backend=lane.name).tolist() == [0.0]


@pytest.mark.parametrize("lane,layout", [lane_param(lane, layout) for lane in LANES
                                         for layout in ("row_stride", "transposed", "expanded")])
def test_non_contiguous_inputs(lane, layout, rng):
    dtype = lane.exact_dtype
    base = torch.randn(40, 31, generator=rng).to(dtype).to(lane.device)
    if layout == "row_stride":
        anchors, candidates = base[:, :17], base[3:, 5:22]  # stride(0) = 31
    elif layout == "transposed":
        anchors, candidates = base.T[:17], base.T[5:27]  # stride(1) = 31
    else:
        anchors, candidates = base[:1].expand(9, 31), base[:20]  # stride(0) = 0
    anchors, candidates = anchors.detach().requires_grad_(), candidates.detach().requires_grad_()
    anchors64, candidates64 = (x.detach().double().requires_grad_() for x in (anchors, candidates))
    actual = L.contrastive_loss(anchors, candidates, temperature=0.3, reduction="none", backend=lane.name)
    expected = ref.contrastive_loss(anchors64, candidates64, temperature=0.3, reduction="none")
    compare(actual, expected, [anchors, candidates], [anchors64, candidates64], lane.tolerances(dtype),
            f"non-contiguous {layout}", rng)


@pytest.mark.parametrize("lane,plan", [lane_param(lane, plan) for lane in LANES for plan in plans(lane)[:2]])
def test_deterministic(lane, plan, tile_plan, rng):
    """No float atomics: the same inputs give bitwise the same loss and gradients (split columns too)."""
    for dtype in lane.dtypes if plan == "auto" else lane.dtypes[:1]:
        z1 = torch.randn(25, 40, generator=rng).to(dtype).to(lane.device).requires_grad_()
        z2 = torch.randn(25, 40, generator=rng).to(dtype).to(lane.device).requires_grad_()
        # a queue long enough to split the columns (under the interpreter, one tenth of it)
        queue = torch.randn(300 if lane.name == "triton" and lane.device.type == "cpu" else 3000, 40,
                            generator=rng).to(dtype).to(lane.device)
        t = torch.tensor(0.2, device=lane.device, requires_grad=True)
        runs = []
        for _ in range(2):
            loss = L.info_nce(z1, z2, negatives=queue, temperature=t, backend=lane.name)
            runs.append((loss, *torch.autograd.grad(loss, (z1, z2, t))))
        for first, second in zip(*runs):
            assert torch.equal(first, second), f"{dtype}"


@pytest.mark.parametrize("lane", [lane_param(lane) for lane in LANES])
def test_forward_without_grad_matches(lane, rng):
    z1 = torch.randn(40, 8, generator=rng).to(lane.device)
    z2 = torch.randn(40, 8, generator=rng).to(lane.device)
    with_grad = L.nt_xent(z1.requires_grad_(), z2, backend=lane.name)
    with torch.no_grad():
        without = L.nt_xent(z1, z2, backend=lane.name)
    assert without.grad_fn is None and torch.equal(with_grad.detach(), without)


@pytest.mark.parametrize("lane", [lane_param(lane) for lane in FUSED])
def test_once_differentiable(lane, rng):
    """A second derivative through a fused op would be silently wrong: it must raise instead."""
    z1 = torch.randn(8, 4, generator=rng).to(lane.device).requires_grad_()
    z2 = torch.randn(8, 4, generator=rng).to(lane.device)
    for loss in (L.nt_xent(z1, z2, backend=lane.name), L.positive_pair_loss(z1, z2, 0.5, backend=lane.name)):
        with pytest.raises(RuntimeError, match="once-differentiable"):
            torch.autograd.grad(loss, z1, create_graph=True)


@pytest.mark.parametrize("lane,reduction", [lane_param(lane, r) for lane in LANES
                                            if torch.float64 in lane.dtypes for r in ("mean", "none")])
def test_gradcheck(lane, reduction, rng):
    """Finite differences in float64 through both gradient paths (computed in forward; recomputed); fast mode
    (random projections of the Jacobian) keeps the number of calls small."""
    def leaf(*shape):
        return torch.randn(*shape, generator=rng, dtype=torch.float64).to(lane.device).requires_grad_()

    temperature = torch.tensor(0.4, dtype=torch.float64, device=lane.device, requires_grad=True)
    anchor_labels = torch.tensor([0, 1, 2, 0, 5, 1], device=lane.device)
    candidate_labels = torch.tensor([0, 1, 2, 0, -1, 1, 2, 2, 0], device=lane.device)

    def contrastive(a, c, t):
        return L.contrastive_loss(a, c, anchor_labels, candidate_labels, temperature=t, exclude_self=True,
                                  reduction=reduction, backend=lane.name)

    assert torch.autograd.gradcheck(contrastive, (leaf(6, 4), leaf(9, 4), temperature), fast_mode=True)
    scale = torch.tensor(3.0, dtype=torch.float64, device=lane.device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, t, s: L.clip_loss(i, t, logit_scale=s, reduction=reduction,
                                                                backend=lane.name), (leaf(5, 3), leaf(5, 3), scale),
                                    fast_mode=True)
    for mode in ("two_sided", "floor"):
        assert torch.autograd.gradcheck(
            lambda x, y: L.positive_pair_loss(x, y, 0.2, mode=mode, reduction=reduction, backend=lane.name),
            (leaf(5, 3), leaf(5, 3)), fast_mode=True)


# --------------------------------------------------------------------------- variants of the general op (issue 15)

def _fuses(lane, options) -> bool:
    """The reference lane computes every variant; a fused lane those its backend lists in FUSED_OPTIONS (the
    others raise: tests/test_variants.py)."""
    from synthcl_fast.variants import FUSED_OPTIONS

    return lane.name == "reference" or set(options) <= FUSED_OPTIONS.get(lane.name, frozenset())


DENOMINATOR_VARIANTS = ("negatives", "per_positive")


def _variant_cases():
    for lane in LANES:
        for plan in plans(lane):
            for denominator, weighted in itertools.product(DENOMINATOR_VARIANTS, (False, True)):
                options = [f"denominator={denominator!r}"] + (["positive_weight"] if weighted else [])
                if not _fuses(lane, options) or (weighted and plan != "auto"):
                    continue
                # the weight changes per-row scalars only: the tile plans and the largest shape run unweighted.
                # The reduction only scales the rows (shared Python code): it cycles over the shapes instead of
                # multiplying them; shifted by exclude_self, so that every (reduction, exclude_self) pair runs on
                # every lane and plan (as long as there are as many shapes as reductions).
                reductions = ("mean", "sum", "none") if plan == "auto" and not weighted else ("mean", "none")
                case_shapes = (shapes(lane)[:-1] if weighted else shapes(lane)) if plan == "auto" else PLAN_SHAPES
                assert len(case_shapes) >= len(reductions)
                for i, shape in enumerate(case_shapes):
                    for exclude_self in (False, True):
                        yield lane_param(lane, plan, denominator, weighted, shape, exclude_self,
                                         reductions[(i + exclude_self) % len(reductions)])


def _variant_row_temperature_derivatives(anchors64, candidates64, anchor_labels, candidate_labels, temperature64,
                                         exclude_self, **variant):
    _, row_dt = torch.func.jvp(
        lambda t: ref.contrastive_loss_variant(anchors64.detach(), candidates64.detach(), anchor_labels,
                                               candidate_labels, temperature=t, exclude_self=exclude_self,
                                               reduction="none", **variant),
        (temperature64.detach(),), (torch.ones_like(temperature64),))
    return row_dt


def _check_variant_case(lane, shape, exclude_self, reduction, weighted, variant, what, rng):
    """One variant (options `variant`; with a random per-row weight w'_i on the positive term when weighted)
    against contrastive_loss_variant in float64: values and the gradients of the features, the temperature and
    the weight. Candidates 0 and K - 1 are never positive, so that every row has a negative (a row without one
    has an infinite "negatives" loss, as in lightly's DCLLoss)."""
    n_rows, n_cols, dim = shape
    dtype = lane.exact_dtype
    anchors, anchors64 = _pair(lane, torch.randn(n_rows, dim, generator=rng), dtype)
    candidates, candidates64 = _pair(lane, torch.randn(n_cols, dim, generator=rng), dtype)
    anchor_labels, candidate_labels = _labels(rng, n_rows, 0, 4, lane), _labels(rng, n_cols, -1, 4, lane)
    candidate_labels[0] = candidate_labels[-1] = -1
    t = 0.05 + 0.5 * float(torch.rand((), generator=rng))
    acc = dtype if dtype == torch.float64 else torch.float32
    temperature, temperature64 = _pair(lane, torch.tensor(t), acc)
    inputs, inputs64 = [anchors, candidates, temperature], [anchors64, candidates64, temperature64]
    weight = weight64 = None
    if weighted:
        weight, weight64 = _pair(lane, 2 * torch.rand(n_rows, generator=rng), acc)
        inputs.append(weight)
        inputs64.append(weight64)
    actual = L.contrastive_loss(anchors, candidates, anchor_labels, candidate_labels, temperature=temperature,
                                exclude_self=exclude_self, reduction=reduction, backend=lane.name,
                                positive_weight=weight, **variant)
    expected = ref.contrastive_loss_variant(anchors64, candidates64, anchor_labels, candidate_labels,
                                            temperature=temperature64, exclude_self=exclude_self,
                                            reduction=reduction, positive_weight=weight64, **variant)
    tols = lane.tolerances(dtype)
    floors = cancellation_floors(
        [anchors64, candidates64], t, reduction, tols[1], dtype,
        _variant_row_temperature_derivatives(anchors64, candidates64, anchor_labels, candidate_labels,
                                             temperature64, exclude_self,
                                             positive_weight=None if weight64 is None else weight64.detach(),
                                             **variant))
    compare(actual, expected, inputs, inputs64, tols, f"{what} {shape} {dtype} t={t:.3f}", rng,
            grad_floors=lambda upstream: floors(upstream) + [0.0])


@pytest.mark.parametrize("lane,plan,denominator,weighted,shape,exclude_self,reduction", list(_variant_cases()))
def test_variant_op(lane, plan, denominator, weighted, shape, exclude_self, reduction, tile_plan, rng):
    """The positives out of the log-sum-exp (DCL's "negatives"; PML's "per_positive"), with and without a
    per-row weight w'_i on the positive term (DCLW), against contrastive_loss_variant in float64: values and the
    gradients of the features, the temperature and the weight. Candidates 0 and K - 1 are never positive, so that
    every row has a negative (a row without one has an infinite "negatives" loss, as in lightly's DCLLoss)."""
    _check_variant_case(lane, shape, exclude_self, reduction, weighted, {"denominator": denominator},
                        f"variant {denominator} weighted={weighted} plan={plan}", rng)


def _variant_dtype_cases():
    for lane in LANES:
        for denominator in DENOMINATOR_VARIANTS:
            if _fuses(lane, [f"denominator={denominator!r}"]):
                for dtype, reduction, t in itertools.product(lane.dtypes, ("mean", "none"), (0.05, 0.5)):
                    yield lane_param(lane, denominator, dtype, reduction, t)


@pytest.mark.parametrize("lane,denominator,dtype,reduction,t", list(_variant_dtype_cases()))
def test_variant_dtypes(lane, denominator, dtype, reduction, t, rng):
    """Every dtype of the lane against float64 on the same (rounded) inputs, with the self-candidates of NT-Xent /
    SupCon (the problem the CPU's symmetric plan takes for the plain op) and extra negatives."""
    n_rows, dim = 37, 40
    anchors, anchors64 = _pair(lane, torch.randn(n_rows, dim, generator=rng), dtype)
    labels = _labels(rng, n_rows, 0, 8, lane)
    temperature, temperature64 = _pair(lane, torch.tensor(t), torch.float64 if dtype == torch.float64
                                       else torch.float32)
    actual = L.contrastive_loss(anchors, None, labels, temperature=temperature, reduction=reduction,
                                backend=lane.name, denominator=denominator)
    expected = ref.contrastive_loss_variant(anchors64, None, labels, temperature=temperature64,
                                            reduction=reduction, denominator=denominator)
    compare(actual, expected, [anchors, temperature], [anchors64, temperature64], lane.tolerances(dtype),
            f"variant {denominator} {dtype} {reduction} t={t}", rng,
            grad_floors=cancellation_floors(
                [anchors64], t, reduction, lane.tolerances(dtype)[1], dtype,
                _variant_row_temperature_derivatives(anchors64, anchors64, labels, labels, temperature64, True,
                                                     denominator=denominator)))


@pytest.mark.parametrize("lane,denominator", [lane_param(lane, d) for lane in LANES for d in DENOMINATOR_VARIANTS
                                              if torch.float16 in lane.dtypes
                                              and _fuses(lane, [f"denominator={d!r}", "positive_weight"])])
def test_variant_large_positive_weight_in_float16(lane, denominator, rng):
    """float16 features with a large positive_weight w': |G_ij| reaches |w_i| (|w'_i| + 2), not |w_i|, so a kernel
    that scales G by max |w| before rounding it to float16 for the products overflows (w' = 2e5: G / max|w| ~ 1e5
    > 65504) although every gradient (~ w' / R) is well inside float16's range."""
    n_rows, dim = 64, 16
    x, x64 = _pair(lane, torch.randn(n_rows, dim, generator=rng), torch.float16)
    labels = (torch.arange(n_rows) // 2).to(lane.device)
    weight64 = 2e5 * (1 + torch.rand(n_rows, generator=rng, dtype=torch.float64)).to(lane.device)
    actual = L.contrastive_loss(x, None, labels, temperature=1.0, denominator=denominator,
                                positive_weight=weight64.float(), backend=lane.name)
    expected = ref.contrastive_loss_variant(x64, None, labels, temperature=1.0, denominator=denominator,
                                            positive_weight=weight64)
    value_tol, grad_tol = lane.tolerances(torch.float16)
    what = _what(f"{denominator} float16 positive_weight ~2e5")
    assert_close(actual, expected, value_tol, f"{what} value")
    (grad,), (grad64,) = torch.autograd.grad(actual, x), torch.autograd.grad(expected, x64)
    assert grad64.abs().max() < 6e4, "the test's gradients must fit float16"
    assert torch.isfinite(grad).all(), f"{what}: gradient not finite"
    assert_close(grad, grad64, grad_tol, f"{what} gradient")


@pytest.mark.parametrize("lane", [lane_param(lane) for lane in LANES
                                  if _fuses(lane, ["denominator='negatives'", "denominator='per_positive'"])])
def test_variant_positives_far_above_negatives(lane, rng):
    """At t = 1e-4 each positive (its other view, cosine ~1 - 1e-6) lies ~3000 above its negatives: the
    log-sum-exp over the negatives is shifted by their own max. Shifted by the positive's, every negative term
    would flush to 0 even in float64, and the "negatives" loss be -inf."""
    dtype = lane.exact_dtype
    base = torch.randn(6, 8, generator=rng, dtype=torch.float64)
    x = torch.cat([base, base + 1e-3 * torch.randn(6, 8, generator=rng, dtype=torch.float64)])
    labels = torch.arange(6).repeat(2).to(lane.device)
    for denominator in DENOMINATOR_VARIANTS:
        low, x64 = _pair(lane, x, dtype)
        actual = L.contrastive_loss(low, None, labels, temperature=1e-4, backend=lane.name, denominator=denominator,
                                    reduction="none")
        expected = ref.contrastive_loss_variant(x64, None, labels, temperature=1e-4, denominator=denominator,
                                                reduction="none")
        assert torch.isfinite(actual).all(), f"{denominator}: {actual}"
        assert_close(actual, expected, lane.tolerances(dtype)[0], f"{denominator} value")


@pytest.mark.parametrize("lane", [lane_param(lane) for lane in LANES if torch.float64 in lane.dtypes
                                  and _fuses(lane, ["denominator='negatives'", "denominator='per_positive'",
                                                    "positive_weight"])])
def test_variant_gradcheck(lane, rng):
    """Finite differences in float64 through both gradient paths (in forward for a scalar loss; recomputed for
    "none"), the weight's gradient included."""
    def leaf(*shape):
        return torch.randn(*shape, generator=rng, dtype=torch.float64).to(lane.device).requires_grad_()

    anchor_labels = torch.tensor([0, 1, 2, 0, 5, 1], device=lane.device)
    candidate_labels = torch.tensor([0, 1, 2, 0, -1, 1, 2, 2, 0], device=lane.device)
    for denominator, reduction in itertools.product(DENOMINATOR_VARIANTS, ("mean", "none")):
        def loss(a, c, t, w):
            return L.contrastive_loss(a, c, anchor_labels, candidate_labels, temperature=t, exclude_self=True,
                                      reduction=reduction, backend=lane.name, denominator=denominator,
                                      positive_weight=w)
        t = torch.tensor(0.4, dtype=torch.float64, device=lane.device, requires_grad=True)
        w = (1 + torch.rand(6, generator=rng, dtype=torch.float64)).to(lane.device).requires_grad_()
        assert torch.autograd.gradcheck(loss, (leaf(6, 4), leaf(9, 4), t, w), fast_mode=True), denominator


@pytest.mark.parametrize("lane,dtype", [lane_param(lane, d) for lane in FUSED for d in lane.dtypes
                                        if _fuses(lane, ["denominator='negatives'"])])
def test_variant_opcheck(lane, dtype, rng):
    """Schema, fake and autograd registrations of the variant op, both denominators, both gradient paths."""
    from synthcl_fast.backends._ops import accumulate_dtype, denominator_code, reduction_code

    op = lane.backend.ops().contrastive_variant_forward
    device, acc = lane.device, accumulate_dtype(dtype)
    a = torch.randn(7, 5, generator=rng).to(device, dtype).requires_grad_()
    c = torch.randn(9, 5, generator=rng).to(device, dtype).requires_grad_()
    a_labels = torch.tensor([0, 1, 2, 0, 1, 3, 2], device=device)
    c_labels = torch.tensor([0, -1, 2, 0, 1, 1, 2, 3, -1], device=device)
    t = torch.tensor(0.3, dtype=acc, device=device, requires_grad=True)
    w = torch.rand(7, generator=rng).to(device, acc).requires_grad_()
    for denominator, (reduction, compute_grad) in itertools.product(
            DENOMINATOR_VARIANTS, (("mean", True), ("sum", False), ("none", False))):
        torch.library.opcheck(op, (a, c, a_labels, c_labels, t, w, denominator_code(denominator), False,
                                   reduction_code(reduction), 1e-8, [compute_grad] * 3))


# ------------------------------------------------ hard negatives and debiasing (HCL: beta, tau_plus; issue 15)

# (beta, tau_plus): hard weights alone, debiasing alone, both, a negative beta, and beta < -1 (a negative scale
# 1 + beta: the negatives' min is the reference of its log-sum-exp). The debiased estimate H - tau_plus n M is
# ill-conditioned where it nearly cancels (its relative error grows as 1 / (1 - tau_plus n M / H), from any
# rounding of the logits, float64 reference or not); a negative beta (weights on the easy negatives: small H)
# makes that common at random inputs, so tau_plus is tested with beta >= 0 (the HCL setting).
HARD_SETTINGS = [(1.0, 0.0), (0.0, 0.1), (0.5, 0.1), (-0.5, 0.0), (-1.7, 0.0)]


def _hard_cases():
    for lane in LANES:
        if not _fuses(lane, ["beta", "tau_plus"]):
            continue
        for (beta, tau_plus), denominator in itertools.product(HARD_SETTINGS, ("all", "negatives")):
            # the shapes cycle over the settings (every other shape; every third under the interpreter, which
            # runs a program at a time) and the reductions over the shapes, as in _variant_cases
            cycle = 3 if lane.name == "triton" and lane.device.type == "cpu" else 2
            for i, shape in enumerate(shapes(lane)):
                if (i + HARD_SETTINGS.index((beta, tau_plus))) % cycle:
                    continue
                for exclude_self in (False, True):
                    reduction = ("mean", "sum", "none")[(i + exclude_self) % 3]
                    yield lane_param(lane, denominator, beta, tau_plus, shape, exclude_self, reduction,
                                     denominator == "all" and i % 3 == 0)


@pytest.mark.parametrize("lane,denominator,beta,tau_plus,shape,exclude_self,reduction,weighted",
                         list(_hard_cases()))
def test_hard_negative_op(lane, denominator, beta, tau_plus, shape, exclude_self, reduction, weighted, rng):
    """Negatives weighted by e^{beta s} (HCL) and the debiased estimate (tau_plus), with the denominators "all"
    (Robinson et al.'s loss) and "negatives", with and without a per-row weight on the positive term, against
    contrastive_loss_variant in float64: values and the gradients of the features, the temperature and the
    weight. Candidates 0 and K - 1 are never positive (every row has a negative)."""
    _check_variant_case(lane, shape, exclude_self, reduction, weighted,
                        {"denominator": denominator, "beta": beta, "tau_plus": tau_plus},
                        f"hard negatives beta={beta} tau_plus={tau_plus} {denominator} weighted={weighted}", rng)


def _hard_dtype_cases():
    for lane in LANES:
        if _fuses(lane, ["beta", "tau_plus"]):
            for dtype, (reduction, t) in itertools.product(lane.dtypes, (("mean", 0.05), ("none", 0.5))):
                yield lane_param(lane, dtype, reduction, t)


@pytest.mark.parametrize("lane,dtype,reduction,t", list(_hard_dtype_cases()))
def test_hard_negative_dtypes(lane, dtype, reduction, t, rng):
    """Every dtype of the lane on NT-Xent's self-candidates with class labels (several positives per row), the
    debiased hard-negative loss against float64 on the same (rounded) inputs."""
    n_rows, dim = 37, 40
    anchors, anchors64 = _pair(lane, torch.randn(n_rows, dim, generator=rng), dtype)
    labels = _labels(rng, n_rows, 0, 8, lane)
    temperature, temperature64 = _pair(lane, torch.tensor(t), torch.float64 if dtype == torch.float64
                                       else torch.float32)
    variant = {"beta": 1.0, "tau_plus": 0.1}
    actual = L.contrastive_loss(anchors, None, labels, temperature=temperature, reduction=reduction,
                                backend=lane.name, **variant)
    expected = ref.contrastive_loss_variant(anchors64, None, labels, temperature=temperature64,
                                            reduction=reduction, **variant)
    compare(actual, expected, [anchors, temperature], [anchors64, temperature64], lane.tolerances(dtype),
            f"hard negatives {dtype} {reduction} t={t}", rng,
            grad_floors=cancellation_floors(
                [anchors64], t, reduction, lane.tolerances(dtype)[1], dtype,
                _variant_row_temperature_derivatives(anchors64, anchors64, labels, labels, temperature64, True,
                                                     **variant)))


@pytest.mark.parametrize("lane", [lane_param(lane) for lane in LANES if _fuses(lane, ["beta", "tau_plus"])])
def test_hard_negative_extremes(lane, rng):
    """Log space at the edges: t = 1e-4 with each positive ~3000 above its negatives and beta = 2 (exponents
    of 3 (s - m) ~ -3e4 would flush any e^{s} formed directly); the floor n e^{-1/t} taken when the debiased
    estimate falls below it (tau_plus near 1); rows without a positive (0) or without a negative (-inf, as
    contrastive_loss_variant)."""
    dtype = lane.exact_dtype
    base = torch.randn(6, 8, generator=rng, dtype=torch.float64)
    x = torch.cat([base, base + 1e-3 * torch.randn(6, 8, generator=rng, dtype=torch.float64)])
    labels = torch.arange(6).repeat(2).to(lane.device)
    cases = [(x, labels, dict(temperature=1e-4, beta=2.0, tau_plus=0.1)),
             (x, labels, dict(temperature=0.5, beta=0.5, tau_plus=0.9)),
             (torch.randn(5, 4, generator=rng, dtype=torch.float64),
              torch.tensor([0, 0, 0, 1, 2], device=lane.device), dict(temperature=0.3, beta=1.0, tau_plus=0.2)),
             (torch.randn(4, 4, generator=rng, dtype=torch.float64), torch.zeros(4, dtype=torch.long,
                                                                                  device=lane.device),
              dict(temperature=0.3, beta=1.0, tau_plus=0.2))]
    for (features, row_labels, kwargs), denominator in itertools.product(cases, ("all", "negatives")):
        low, x64 = _pair(lane, features, dtype)
        actual = L.contrastive_loss(low, None, row_labels, backend=lane.name, denominator=denominator,
                                    reduction="none", **kwargs)
        expected = ref.contrastive_loss_variant(x64, None, row_labels, denominator=denominator, reduction="none",
                                                **kwargs)
        what = _what(f"{denominator} {kwargs}")
        assert torch.equal(torch.isfinite(actual), torch.isfinite(expected)), f"{what}: {actual} vs {expected}"
        assert torch.equal(actual[~torch.isfinite(expected)], expected[~torch.isfinite(expected)].to(actual.dtype))
        finite = torch.isfinite(expected)
        assert_close(actual[finite], expected[finite], lane.tolerances(dtype)[0], f"{what} value")


@pytest.mark.parametrize("lane", [lane_param(lane) for lane in LANES if torch.float64 in lane.dtypes
                                  and _fuses(lane, ["beta", "tau_plus", "positive_weight"])])
def test_hard_negative_gradcheck(lane, rng):
    """Finite differences in float64 through the fused statistics and the loss formed from them."""
    def leaf(*shape):
        return torch.randn(*shape, generator=rng, dtype=torch.float64).to(lane.device).requires_grad_()

    anchor_labels = torch.tensor([0, 1, 2, 0, 5, 1], device=lane.device)
    candidate_labels = torch.tensor([0, 1, 2, 0, -1, 1, 2, 2, 0], device=lane.device)
    for denominator, reduction in itertools.product(("all", "negatives"), ("mean", "none")):
        def loss(a, c, t, w):
            return L.contrastive_loss(a, c, anchor_labels, candidate_labels, temperature=t, exclude_self=True,
                                      reduction=reduction, backend=lane.name, denominator=denominator,
                                      beta=0.7, tau_plus=0.1, positive_weight=w)
        t = torch.tensor(0.4, dtype=torch.float64, device=lane.device, requires_grad=True)
        w = (1 + torch.rand(6, generator=rng, dtype=torch.float64)).to(lane.device).requires_grad_()
        assert torch.autograd.gradcheck(loss, (leaf(6, 4), leaf(9, 4), t, w), fast_mode=True), denominator


@pytest.mark.parametrize("lane,dtype", [lane_param(lane, d) for lane in FUSED for d in lane.dtypes
                                        if _fuses(lane, ["beta", "tau_plus"])])
def test_hard_negative_opcheck(lane, dtype, rng):
    """Schema, fake and autograd registrations of the hard_negative_stats op and of its backward."""
    from synthcl_fast.backends._ops import accumulate_dtype

    ops, device, acc = lane.backend.ops(), lane.device, accumulate_dtype(dtype)
    a = torch.randn(7, 5, generator=rng).to(device, dtype).requires_grad_()
    c = torch.randn(9, 5, generator=rng).to(device, dtype).requires_grad_()
    a_labels = torch.tensor([0, 1, 2, 0, 1, 3, 2], device=device)
    c_labels = torch.tensor([0, -1, 2, 0, 1, 1, 2, 3, -1], device=device)
    t = torch.tensor(0.3, dtype=acc, device=device, requires_grad=True)
    for beta, exclude_self in ((0.5, False), (-1.5, True)):
        torch.library.opcheck(ops.hard_negative_stats_forward, (a, c, a_labels, c_labels, t, beta, exclude_self,
                                                                1e-8))
    _, _, n_negative, n_positive, reference, log_sum = ops.hard_negative_stats_forward(
        a.detach(), c.detach(), a_labels, c_labels, t.detach(), 0.5, False, 1e-8)
    grad_lse = torch.randn(7, 3, generator=rng).to(device, acc)
    grad_mean = torch.randn(7, generator=rng).to(device, acc)
    torch.library.opcheck(ops.hard_negative_stats_backward,
                          (grad_lse, grad_mean, a.detach(), c.detach(), a_labels, c_labels, t.detach(), 0.5,
                           n_negative, n_positive, reference, log_sum, False, 1e-8, [True, True, True]))


# ---------------------------------------------------------------------------------- operators and compile

@pytest.mark.parametrize("lane,dtype", [lane_param(lane, d) for lane in FUSED for d in lane.dtypes])
def test_opcheck(lane, dtype, rng):
    """Schemas, fake (meta) implementations and autograd registrations of every op of the backend."""
    from synthcl_fast.backends._ops import reduction_code

    ops = lane.backend.ops()
    device = lane.device

    def leaf(*shape, grad=True):
        return torch.randn(*shape, generator=rng).to(dtype).to(device).requires_grad_(grad)

    a, c = leaf(7, 5), leaf(9, 5)
    la = torch.tensor([0, 1, 2, 0, 1, 2, 3], device=device)
    lc = torch.tensor([0, 1, 2, -1, 1, 2, 3, 3, 0], device=device)
    t = torch.tensor(0.3, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device,
                     requires_grad=True)
    # gradient masks (anchors, candidates, temperature): all, none, and one side frozen (empty outputs there)
    for reduction, compute_grad in (("mean", [True] * 3), ("mean", [False] * 3), ("none", [False] * 3),
                                    ("sum", [True] * 3), ("mean", [True, False, False]), ("sum", [False, True, True])):
        torch.library.opcheck(ops.contrastive_forward, (a, c, la, lc, t, True, reduction_code(reduction), 1e-12,
                                                        compute_grad))
    _, row_max, log_sum, npos, *_ = ops.contrastive_forward(a, c, la, lc, t, True, 0, 1e-12, [False] * 3)
    backward = torch.ops.synthcl_fast.contrastive_backward if lane.name != "triton" else \
        torch.ops.synthcl_fast.triton_contrastive_backward
    upstream = torch.rand(7, generator=rng).to(row_max.dtype).to(device)
    for output_mask in ([True] * 3, [False, True, False], [True, False, True]):
        torch.library.opcheck(backward, (upstream, a.detach(), c.detach(), la, lc, t.detach(), row_max, log_sum,
                                         npos, True, 1e-12, output_mask))
    if lane.backend.has_symmetric_op:
        square = leaf(9, 5)
        for reduction, compute_grad in (("mean", [True] * 3), ("sum", [False] * 3), ("none", [False] * 3),
                                        ("mean", [True, False, True])):
            torch.library.opcheck(ops.symmetric_contrastive_forward,
                                  (square, c, lc, lc, t, False, reduction_code(reduction), 1e-12, compute_grad))
        _, *stats = ops.symmetric_contrastive_forward(square, c, lc, lc, t, False, 0, 1e-12, [False] * 3)[:7]
        for output_mask in ([True] * 3, [False, True, False]):
            torch.library.opcheck(torch.ops.synthcl_fast.triton_symmetric_contrastive_backward,
                                  (upstream.new_ones(9), upstream.new_ones(9), square.detach(), c.detach(), lc, lc,
                                   t.detach(), *stats, False, 1e-12, output_mask))
    b = leaf(7, 5, grad=False)
    target = torch.rand(7, generator=rng).to(torch.float64 if dtype == torch.float64 else torch.float32).to(device)
    for mode, reduction in ((0, 1), (1, 0), (0, 2)):
        torch.library.opcheck(ops.positive_pair_forward, (a, b, target, mode, reduction, 1e-12, True, False))


@pytest.mark.parametrize("lane", [lane_param(lane) for lane in FUSED])
def test_torch_compile_fullgraph(lane, rng):
    """The ops trace into one graph (fake implementations, no graph break) and compute the same values."""
    dtype = lane.exact_dtype

    def leaf(*shape):
        return torch.randn(*shape, generator=rng).to(dtype).to(lane.device).requires_grad_()

    z1, z2, image, text = leaf(12, 8), leaf(12, 8), leaf(10, 8), leaf(10, 8)

    def step(z1, z2, image, text):
        return (L.nt_xent(z1, z2, backend=lane.name) + L.clip_loss(image, text, logit_scale=5.0, backend=lane.name)
                + L.positive_pair_loss(z1, z2, 0.5, backend=lane.name))

    explanation = torch._dynamo.explain(step)(z1, z2, image, text)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    eager = step(z1, z2, image, text)
    traced = torch.compile(step, fullgraph=True, backend="aot_eager")(z1, z2, image, text)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert_close(traced, eager, tol, "compiled vs eager")
    for g, e in zip(torch.autograd.grad(traced, (z1, z2, image, text)),
                    torch.autograd.grad(eager, (z1, z2, image, text))):
        assert_close(g, e, tol, "compiled grad")


@pytest.mark.parametrize("lane", [lane_param(lane) for lane in FUSED
                                  if _fuses(lane, ["denominator='negatives'", "denominator='per_positive'",
                                                   "positive_weight"])])
def test_variant_torch_compile_fullgraph(lane, rng):
    """The variant op traces into one graph too (DCLW's weights and PML's several positives per anchor)."""
    dtype = lane.exact_dtype
    z1 = torch.randn(12, 8, generator=rng).to(dtype).to(lane.device).requires_grad_()
    z2 = torch.randn(12, 8, generator=rng).to(dtype).to(lane.device).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 1, 4, 4, 0, 5], device=lane.device)

    def step(z1, z2):
        return (L.dcl(z1, z2, sigma=0.5, backend=lane.name)
                + L.contrastive_loss(z1, None, labels, denominator="per_positive", backend=lane.name))

    explanation = torch._dynamo.explain(step)(z1, z2)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    eager = step(z1, z2)
    traced = torch.compile(step, fullgraph=True, backend="aot_eager")(z1, z2)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert_close(traced, eager, tol, "compiled vs eager")
    for g, e in zip(torch.autograd.grad(traced, (z1, z2)), torch.autograd.grad(eager, (z1, z2))):
        assert_close(g, e, tol, "compiled grad")


# ------------------------------------------------------------------------------------- no host synchronization

def _every_op(lane, rng):
    dtype = lane.exact_dtype

    def leaf(*shape):
        return torch.randn(*shape, generator=rng).to(dtype).to(lane.device).requires_grad_()

    z1, z2, g = leaf(12, 8), leaf(12, 8), leaf(5, 8)
    labels = torch.arange(24, device=lane.device) // 3
    t = torch.tensor(0.2, device=lane.device, requires_grad=True)
    b = lane.name
    ops = {
        "contrastive_loss": lambda r: L.contrastive_loss(torch.cat([z1, z2]), temperature=t, reduction=r, backend=b),
        "nt_xent": lambda r: L.nt_xent(z1, z2, negatives=g, temperature=t, reduction=r, backend=b),
        "supcon": lambda r: L.supcon(torch.cat([z1, z2]), labels, temperature=t, reduction=r, backend=b),
        "ppcl": lambda r: L.ppcl(torch.stack([z1[:4], z2[:4]]), z1[4:].reshape(4, 2, 8), reduction=r, backend=b),
        "info_nce": lambda r: L.info_nce(z1, z2, negatives=g, temperature=t, reduction=r, backend=b),
        "clip_loss": lambda r: L.clip_loss(z1, z2, logit_scale=1 / t, reduction=r, backend=b),
        "clip_loss one way": lambda r: L.clip_loss(z1, z2, logit_scale=5.0, symmetric=False, reduction=r, backend=b),
        "positive_pair_loss": lambda r: L.positive_pair_loss(z1, z2, t, reduction=r, backend=b),
    }
    # the variant ops, where the lane computes them (the others raise: tests/test_variants.py)
    if _fuses(lane, ["denominator='negatives'", "positive_weight"]):
        ops["dcl (DCLW)"] = lambda r: L.dcl(z1, z2, temperature=t, sigma=0.5, reduction=r, backend=b)
    if _fuses(lane, ["denominator='per_positive'"]):
        ops["per_positive"] = lambda r: L.contrastive_loss(torch.cat([z1, z2]), anchor_labels=labels, temperature=t,
                                                           denominator="per_positive", reduction=r, backend=b)
    if _fuses(lane, ["beta", "tau_plus"]):
        ops["nt_xent (HCL)"] = lambda r: L.nt_xent(z1, z2, negatives=g, temperature=t, beta=1.0, tau_plus=0.1,
                                                   reduction=r, backend=b)
        ops["info_nce (HCL)"] = lambda r: L.info_nce(z1, z2, temperature=t, beta=0.5, reduction=r, backend=b)
    return ops, (z1, z2, g, t)


@pytest.mark.parametrize("lane", [lane_param(lane) for lane in LANES])
def test_no_host_synchronization(lane, rng):
    """Forward and backward of every op, with label and temperature tensors, read no value on the host: on a
    GPU nothing waits for the device and the call can be captured in a CUDA graph."""
    ops, inputs = _every_op(lane, rng)
    for name, call in ops.items():
        for reduction in ("mean", "none"):
            with FailOnHostSync():
                loss = call(reduction)
                torch.autograd.grad(loss.sum(), [x for x in inputs if x.requires_grad], allow_unused=True)


@pytest.mark.parametrize("lane", [lane_param(lane) for lane in LANES if lane.device.type == "cuda"])
def test_cuda_graph_capture(lane, rng):
    """A training step's loss, forward and backward, captured in a CUDA graph and replayed on new inputs."""
    ops, (z1, z2, g, t) = _every_op(lane, rng)
    static_z1, static_z2 = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()

    def step():
        loss = L.nt_xent(static_z1, static_z2, temperature=0.2, backend=lane.name)
        return (loss, *torch.autograd.grad(loss, (static_z1, static_z2)))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()  # warm-up: kernels compiled and loaded outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    new1, new2 = torch.randn_like(z1), torch.randn_like(z2)
    with torch.no_grad():
        static_z1.copy_(new1)
        static_z2.copy_(new2)
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    for got, want in zip(outputs, eager):
        assert torch.equal(got, want)


@pytest.mark.parametrize("lane", [lane_param(lane) for lane in FUSED if lane.device.type == "cuda"])
def test_current_stream(lane, rng):
    """Work is queued on the caller's stream."""
    x = torch.randn(96, 160, generator=rng).to(lane.device)
    labels = torch.arange(160, device=lane.device) // 2
    expected = L.contrastive_loss(x.t().contiguous(), anchor_labels=labels, backend=lane.name)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        actual = L.contrastive_loss(x.t(), anchor_labels=labels, backend=lane.name)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert torch.equal(actual, expected)


def test_outputs_are_poisoned():
    """The comparisons above see NaN wherever a kernel leaves an output element unwritten."""
    assert os.environ.get("SYNTHCL_FAST_POISON_OUTPUTS") == "1"
