"""The Triton backend's internals, beside the contract (tests/test_conformance.py): which launches and plans
run, direct op calls, and what the interpreter cannot execute as the GPU does.

Not collected by a plain `pytest tests/` (the file name does not start with test_): tests/test_triton.py
runs it with the conformance suite in a subprocess with TRITON_INTERPRET=1 on the CPU, and on CUDA where a
GPU is present:

    TRITON_INTERPRET=1 python -m pytest tests/test_conformance.py tests/triton_internals.py
"""

import os

import pytest
import torch

import synthcl_fast.losses as L
from synthcl_fast import reference as ref
from synthcl_fast.backends import BACKENDS, resolve_backend
from conftest import assert_close, labels_with_positives

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = torch.device("cuda" if torch.cuda.is_available() and not INTERPRETER else "cpu")
REASON = BACKENDS["triton"].unavailable_reason(DEVICE, torch.float32)
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"triton backend unavailable: {REASON}")
TILED = "block_m=16,block_n=16,block_d=16,block_do=16,splits=3"
SPLIT = "block_m=32,block_n=16,block_do=16,splits=2"


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


def _randn(*shape, generator, dtype=torch.float64, grad=True):
    x = torch.randn(*shape, generator=generator, dtype=dtype).to(DEVICE)
    return x.requires_grad_() if grad else x


@pytest.mark.parametrize("labels", ["same_object", "asymmetric"])
def test_one_tensor_same_labels_is_one_backward_launch(labels, generator, monkeypatch):
    """Candidates are the anchors. With the same label tensor, s and the positive mask are symmetric and one
    backward launch computes the whole gradient (sum_j (G_ij + G_ji) u_j); with other candidate labels
    (with -1s: P is not symmetric) both launches run. The values: tests/test_conformance.py."""
    from synthcl_fast.backends import triton_gradients

    launches = []
    original = triton_gradients._launch_backward
    monkeypatch.setattr(triton_gradients, "_launch_backward", lambda *a: launches.append(1) or original(*a))
    x = _randn(47, 21, generator=generator)
    anchor_labels = labels_with_positives(47, 4, generator).to(DEVICE)
    candidate_labels = anchor_labels if labels == "same_object" else torch.where(
        torch.rand(47, generator=generator).to(DEVICE) < 0.3, -1, anchor_labels)
    for reduction in ("mean", "none"):
        launches.clear()
        loss = L.contrastive_loss(x, x, anchor_labels, candidate_labels, temperature=0.25, exclude_self=True,
                                  reduction=reduction, backend="triton")
        torch.autograd.grad(loss.sum(), x)
        assert len(launches) == (1 if labels == "same_object" else 2)


def test_clip_symmetric_is_one_call(generator, monkeypatch):
    """The symmetric CLIP loss goes through the symmetric op (both directions from the same tiles), not
    through two one-direction calls."""
    from synthcl_fast.backends import triton_ops

    calls = []
    for name in ("contrastive_forward", "symmetric_contrastive_forward"):
        original = getattr(triton_ops, name)
        monkeypatch.setattr(triton_ops, name,
                            lambda *a, _name=name, _f=original: calls.append(_name) or _f(*a))
    image, text = _randn(9, 8, generator=generator), _randn(9, 8, generator=generator)
    L.clip_loss(image, text, logit_scale=10.0, backend="triton").backward()
    assert calls == ["symmetric_contrastive_forward"]
    calls.clear()
    L.clip_loss(image, text, logit_scale=10.0, symmetric=False, backend="triton").backward()
    assert calls == ["contrastive_forward"]


def test_direct_op_call_checks_arguments(generator):
    from synthcl_fast.backends.triton_contrastive import contrastive_forward

    a = _randn(4, 3, generator=generator, grad=False)
    t = torch.tensor(0.5, dtype=torch.float64, device=DEVICE)
    labels = torch.arange(4, device=DEVICE)
    with pytest.raises(RuntimeError, match="anchor_labels must be int64 of shape"):
        contrastive_forward(a, a, labels.int(), labels, t, False, 1, 1e-12, [False] * 3)
    with pytest.raises(RuntimeError, match="same feature dimension"):
        contrastive_forward(a, a[:, :2], labels, labels, t, False, 1, 1e-12, [False] * 3)
    with pytest.raises(RuntimeError, match="compute_grad needs a scalar loss"):
        contrastive_forward(a, a, labels, labels, t, False, 0, 1e-12, [False, False, True])


def test_coexists_with_cpu_backend(generator):
    """The C++ ops (TORCH_LIBRARY synthcl_fast) and the Triton custom ops share the namespace."""
    if BACKENDS["cpu"].unavailable_reason(torch.device("cpu"), torch.float64) is not None:
        pytest.skip("the CPU extension is not available")
    z1, z2 = _randn(10, 4, generator=generator, grad=False), _randn(10, 4, generator=generator, grad=False)
    triton_loss = L.nt_xent(z1, z2, backend="triton")
    cpu_loss = L.nt_xent(z1.cpu(), z2.cpu(), backend="cpu")
    assert_close(triton_loss.cpu(), cpu_loss, 1e-12, "triton vs cpu")
    assert torch.ops.synthcl_fast.triton_contrastive_forward.default is not None


def test_tile_overrides_reach_every_path(monkeypatch):
    """The 'tiled' plan really loops over D, chunks the gradient features and splits the columns."""
    from synthcl_fast.backends.triton_tiles import _backward_tiles, _forward_tiles

    monkeypatch.setenv("SYNTHCL_FAST_TRITON_TILES", TILED)
    forward = _forward_tiles(61, 37, 40, torch.float64, DEVICE)
    backward = _backward_tiles(37, 61, 40, torch.float64, DEVICE)
    assert forward.splits >= 3 and forward.block_d < 40
    assert backward.splits >= 3 and backward.block_do < 40
    monkeypatch.setenv("SYNTHCL_FAST_TRITON_TILES", SPLIT)
    forward = _forward_tiles(61, 37, 40, torch.float64, DEVICE)
    assert forward.splits >= 2 and forward.block_d >= 40


def test_gpu_plan_fills_the_device(monkeypatch):
    """Host-side plan for an H100 (132 SMs): MoCo's 256 queries x 65536 keys split the keys over enough
    programs; SimCLR's 16384 rows do not need to; the gradient accumulator stays within 16K fp32."""
    from synthcl_fast.backends import triton_tiles as tc

    monkeypatch.setattr(tc, "plan_multiprocessors", lambda device: 132)
    monkeypatch.delenv("SYNTHCL_FAST_TRITON_TILES", raising=False)
    cuda = torch.device("cuda", 0)
    moco = tc._forward_tiles(256, 65536, 128, torch.bfloat16, cuda)
    assert moco.splits * triton_cdiv(256, moco.block_m) >= 2 * 132 and moco.n_per_split >= 4 * moco.block_n
    moco_keys = tc._backward_tiles(65536, 256, 128, torch.bfloat16, cuda)  # the keys' gradient: no split
    assert moco_keys.splits == 1
    simclr = tc._forward_tiles(16384, 16384, 256, torch.bfloat16, cuda)
    assert simclr.splits * triton_cdiv(16384, simclr.block_m) >= 132
    assert simclr.block_d >= 256  # D = 256 held whole: the row tile is loaded once per program
    clip = tc._backward_tiles(65536, 65536, 768, torch.bfloat16, cuda)
    assert clip.block_m * clip.block_do <= 16384 and clip.block_d < 768
    small = tc._forward_tiles(20, 30, 8, torch.float32, cuda)
    assert (small.block_m, small.block_n, small.splits) == (32, 32, 1)


@pytest.mark.parametrize("beta,exclude_self", [(0.5, False), (-0.5, False), (-1.7, True)])
def test_hard_negative_stats_over_split_columns(beta, exclude_self, generator, monkeypatch):
    """HCL's statistics with the columns split over programs (_hard_stats_kernel per split, merged by
    _merge_hard_stats_kernel): the op's outputs equal the cpu kernel's (float64), the debiased loss and its
    gradients the reference's. The first 16 candidates (one split) all have label 0, so the rows of label 0 have a
    split with positives only and those of label 1 one with negatives only; row 0 has no positive; beta = -0.5
    gives the negatives' sets scales of both signs (one reference is their max, the other their min), beta = -1.7
    two negative scales."""
    from synthcl_fast.backends.triton_tiles import _forward_tiles

    if BACKENDS["cpu"].unavailable_reason(torch.device("cpu"), torch.float64) is not None:
        pytest.skip("the CPU extension is not available")
    monkeypatch.setenv("SYNTHCL_FAST_TRITON_TILES", TILED)
    anchors = _randn(21, 5, generator=generator)
    candidates = anchors if exclude_self else _randn(53, 5, generator=generator)
    anchor_labels = torch.randint(0, 4, (21,), generator=generator)
    anchor_labels[0] = 99
    candidate_labels = anchor_labels if exclude_self else torch.randint(0, 4, (53,), generator=generator)
    if not exclude_self:
        candidate_labels[:16] = 0
    anchor_labels, candidate_labels = anchor_labels.to(DEVICE), candidate_labels.to(DEVICE)
    assert _forward_tiles(21, candidates.shape[0], 5, torch.float64, DEVICE).splits > 1
    t = torch.tensor(0.3, dtype=torch.float64, device=DEVICE)
    args = (anchors.detach(), candidates.detach(), anchor_labels, candidate_labels, t, beta, exclude_self, 1e-8)
    split = torch.ops.synthcl_fast.triton_hard_negative_stats_forward(*args)
    cpu = torch.ops.synthcl_fast.hard_negative_stats_forward(*(a.cpu() if torch.is_tensor(a) else a for a in args))
    for name, actual, expected in zip(("lse", "positive_mean", "n_negative", "n_positive", "reference", "log_sum"),
                                      split, cpu):
        assert torch.equal(actual.isfinite().cpu(), expected.isfinite()), name
        finite = expected.isfinite()
        assert_close(actual.cpu()[finite], expected[finite], 1e-12, f"split columns: {name}")
    kwargs = dict(temperature=0.3, exclude_self=exclude_self, beta=beta, tau_plus=0.1 if beta > 0 else 0.0)
    other = None if exclude_self else candidates
    loss = L.contrastive_loss(anchors, other, anchor_labels, None if exclude_self else candidate_labels,
                              backend="triton", **kwargs)
    anchors64 = anchors.detach().requires_grad_()
    other64 = None if exclude_self else candidates.detach().requires_grad_()
    expected = ref.contrastive_loss_variant(anchors64, other64, anchor_labels,
                                            None if exclude_self else candidate_labels, **kwargs)
    assert_close(loss, expected, 1e-10, "split columns: loss")
    leaves = [anchors] + ([] if exclude_self else [candidates])
    leaves64 = [anchors64] + ([] if exclude_self else [other64])
    for actual, wanted in zip(torch.autograd.grad(loss, leaves), torch.autograd.grad(expected, leaves64)):
        assert_close(actual, wanted, 1e-10, "split columns: gradient")


@pytest.mark.parametrize("tiles", ["splits=1", SPLIT])
def test_float32_expsum_knob(tiles, generator, monkeypatch):
    """SYNTHCL_FAST_TRITON_EXPSUM=float32 (the GPU sweep's measure of what the float64 sum costs) reaches the
    forward kernel and the split merge: on float64 rows the loss then has float32's accuracy (it differs from the
    float64 sum's, which has float64's), and so do the gradients (the backward reads the forward's log-sum)."""
    from synthcl_fast.backends.triton_tiles import _forward_tiles

    monkeypatch.setenv("SYNTHCL_FAST_TRITON_TILES", tiles)
    anchors, candidates = _randn(45, 7, generator=generator), _randn(64, 7, generator=generator)
    anchor_labels = torch.randint(0, 5, (45,), generator=generator).to(DEVICE)
    candidate_labels = torch.randint(0, 5, (64,), generator=generator).to(DEVICE)
    assert (_forward_tiles(45, 64, 7, torch.float64, DEVICE).splits > 1) == (tiles == SPLIT)
    kwargs = dict(temperature=0.2, reduction="none")
    expected = ref.contrastive_loss(anchors, candidates, anchor_labels, candidate_labels, **kwargs)
    losses = {}
    for dtype in ("float64", "float32"):
        monkeypatch.setenv("SYNTHCL_FAST_TRITON_EXPSUM", dtype)
        losses[dtype] = L.contrastive_loss(anchors, candidates, anchor_labels, candidate_labels, backend="triton",
                                           **kwargs)
    assert_close(losses["float64"], expected, 1e-12, "float64 sum: loss")
    assert_close(losses["float32"], expected, 1e-6, "float32 sum: loss")
    assert not torch.equal(losses["float32"], losses["float64"]), "the setting did not reach the kernel"
    wanted = torch.autograd.grad(expected.sum(), [anchors, candidates])
    for actual, grad in zip(torch.autograd.grad(losses["float32"].sum(), [anchors, candidates]), wanted):
        assert_close(actual, grad, 1e-6, "float32 sum: gradient")


def triton_cdiv(a, b):
    return -(-a // b)


def test_backend_resolution():
    assert resolve_backend("triton", DEVICE, torch.float32).name == "triton"
    if DEVICE.type == "cuda":
        assert resolve_backend("auto", DEVICE, torch.bfloat16).name == "triton"
    else:
        assert resolve_backend("auto", DEVICE, torch.float32).name != "triton"  # the interpreter is for tests


def test_interpreter_plans_split_the_columns_as_a_gpu_would(monkeypatch):
    """Under the interpreter the planner assumes an H200 (triton_support.plan_multiprocessors), so the automatic
    plan of few rows against many columns splits the columns, and the split-K merge runs in CI."""
    from synthcl_fast.backends import triton_tiles as tc

    monkeypatch.delenv("SYNTHCL_FAST_TRITON_TILES", raising=False)
    plan = tc._forward_tiles(20, 4113, 3, torch.float64, DEVICE)
    assert plan.splits > 1
    q, k = _randn(20, 3, generator=torch.Generator().manual_seed(0)), _randn(20, 3, generator=torch.Generator())
    queue = _randn(4093, 3, generator=torch.Generator().manual_seed(1), grad=False)
    loss = L.info_nce(q, k, negatives=queue, backend="triton")
    assert_close(loss, ref.info_nce(q, k, negatives=queue, temperature=0.07), 1e-10, "split-K plan")


def test_interpreter_differences_are_listed_with_their_gpu_tests():
    """What the interpreter cannot execute as the GPU does is listed in one place, each with the GPU test that
    covers it, and the kernels take their interpreter-only choices from that place."""
    from synthcl_fast.backends import triton_common, triton_support

    assert set(triton_support.INTERPRETER_DIFFERENCES) == {"16-bit tl.dot", "bf16 cast", "fp32 tl.dot", "resources"}
    for what, text in triton_support.INTERPRETER_DIFFERENCES.items():
        assert "GPU:" in text, what
    assert triton_common.round_by_hand(torch.bfloat16) == INTERPRETER
    import triton.language as tl

    for dtype in (torch.float16, torch.bfloat16):
        assert (triton_support.half_dot_operand(dtype) == tl.float32) == INTERPRETER


@pytest.mark.parametrize("option", ["plain", "negatives", "per_positive", "hard_negatives"])
def test_float16_gradient_scale_bounds_every_term(option, generator, monkeypatch):
    """float16: the backward divides G by one scale before rounding it to float16 for the products, which must
    bound |G_ij| (else a large positive_weight w' overflows float16 while every gradient fits): the same rule as
    csrc/contrastive_cuda.cu's weight_max, max_i |w_i| (|w'_i| + 2) for the variants, max_i sum_k |a_k| for the
    hard negatives, max_i |w_i| for the plain op, over the rows with a positive. Checked on the scale passed to
    the kernels: the interpreter multiplies float16 operands in float32 (INTERPRETER_DIFFERENCES), where no
    overflow shows; tests/test_conformance.py's test_variant_large_positive_weight_in_float16 shows it on a GPU."""
    from synthcl_fast.backends import triton_gradients

    scales = []
    original = triton_gradients._launch_backward
    monkeypatch.setattr(triton_gradients, "_launch_backward",
                        lambda *a: scales.append((a[2], a[6])) or original(*a))
    x = (torch.randn(24, 8, generator=generator) * 3).half().to(DEVICE).requires_grad_()
    labels = (torch.arange(24) // 2).to(DEVICE)
    labels[-1] = 99  # a row without a positive: its weight is left out of the bound
    positive_weight = (2e5 * (1 + torch.rand(24, generator=generator))).to(DEVICE)
    kwargs = {"plain": {}, "negatives": {"denominator": "negatives", "positive_weight": positive_weight},
              "per_positive": {"denominator": "per_positive", "positive_weight": positive_weight},
              "hard_negatives": {"denominator": "negatives", "beta": 0.5, "tau_plus": 0.1}}[option]
    upstream = torch.rand(24, generator=generator).to(DEVICE) / 24
    upstream[-1] = 1.0  # the largest weight, on the row without a positive (whose G is 0)
    loss = L.contrastive_loss(x, None, labels, temperature=0.5, reduction="none", backend="triton", **kwargs)
    torch.autograd.grad(loss, x, upstream)
    assert scales, "no backward launch"
    live = labels != 99
    for stats, scale in scales:
        if option == "hard_negatives":
            want = stats.coefficients.abs().sum(dim=1).amax()
        elif option == "plain":
            want = upstream[live].amax()
        else:
            want = (upstream * (positive_weight + 2))[live].amax()
        assert_close(scale, want.float(), 1e-6, f"{option}: the float16 gradient scale")
