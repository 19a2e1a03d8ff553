"""The CUDA backend (csrc/*_cuda.cu) against synthcl_fast.reference in float64: values and every gradient
(inputs and temperature), every reduction, odd shapes that exercise each path of the kernels (split
candidates, several D panels, owner rows streamed instead of resident, the in-forward and the recomputed
gradient), fp32/bf16/fp16 inputs, and outputs pre-filled with NaN (conftest: SYNTHCL_FAST_POISON_OUTPUTS=1).

GPU tests skip without a CUDA device. Inputs are fresh random draws on every run; the seed is printed in
every failure message and SYNTHCL_FAST_TEST_SEED=<seed> reproduces a run. The tests at the end (backend
availability and registration) run everywhere.

Tolerances (relative to the largest expected magnitude, against float64 on the same rounded inputs):
fp32 3e-4 (issue 4; the kernels split fp32 into bf16 hi + lo, ~1e-5 in practice), bf16 1e-2 (issue 4),
fp16 2e-3 (11-bit products and fp16 gradients; the CPU suite's fp16 bar).
"""

import json
import os
import random
import zlib
from pathlib import Path

import pytest
import torch

import synthcl_fast
import synthcl_fast.losses as L
from synthcl_fast import reference as ref
from synthcl_fast.backends import BACKENDS, BackendUnavailableError, resolve_backend
from synthcl_fast.backends.native import has_cuda_kernels, load_error
from conftest import assert_close, labels_with_positives

SEED = int(os.environ.get("SYNTHCL_FAST_TEST_SEED", random.randrange(2**31)))
TOLS = {torch.float32: 3e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}
DTYPES = list(TOLS)


def _gpu_unavailable_reason():
    if not torch.cuda.is_available():
        return "no CUDA device"
    return BACKENDS["cuda"].unavailable_reason(torch.device("cuda"), torch.float32)


def gpu(test):
    """Marks a test `gpu` (select with -m gpu) and skips it where the cuda backend cannot run."""
    reason = _gpu_unavailable_reason()
    return pytest.mark.gpu(pytest.mark.skipif(reason is not None, reason=f"cuda backend: {reason}")(test))


def _generator(salt: str) -> torch.Generator:
    return torch.Generator().manual_seed(SEED * 2**32 + zlib.crc32(salt.encode()))


def _on_gpu(x, dtype, requires_grad=True):
    """(low-precision CUDA tensor, float64 CUDA tensor with exactly the same values) that require grad."""
    low = x.to(dtype).cuda().requires_grad_(requires_grad)
    return low, low.detach().double().requires_grad_(requires_grad)


def _check(actual, expected, low_inputs, ref_inputs, tol, what, generator):
    """Loss values, then the gradients of every input under one random upstream gradient."""
    what = f"{what} (seed {SEED})"
    assert actual.dtype == torch.float32, f"{what}: loss dtype {actual.dtype}"
    assert_close(actual, expected, tol, f"{what} value")
    upstream = torch.randn(expected.shape, generator=generator, dtype=torch.float64).cuda()
    got = torch.autograd.grad(actual, low_inputs, upstream.float())
    exp = torch.autograd.grad(expected, ref_inputs, upstream)
    for i, (g, e, x) in enumerate(zip(got, exp, low_inputs)):
        assert g.dtype == x.dtype, f"{what}: grad {i} dtype {g.dtype} != {x.dtype}"
        assert_close(g, e, tol, f"{what} grad of input {i}")


# (R, K, D): R = 1, D = 1, primes, R != K; (20, 17011, 3): few rows and many candidates (the candidates are
# split over CTAs, online log-sum-exp over 266 tiles); (300, 1000, 769): 7 panels of D in the backward and,
# for fp32, owner rows streamed through the pipeline (they do not fit in shared memory); (70, 300, 2000):
# the same for bf16/fp16.
SHAPES = [(1, 5, 3), (2, 2, 1), (7, 7, 5), (33, 50, 17), (131, 97, 130), (257, 300, 64), (20, 17011, 3),
          (300, 1000, 769), (70, 300, 2000)]


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_general_op(dtype, shape, exclude_self, reduction):
    n_rows, n_cols, dim = shape
    gen = _generator(f"general{shape}{dtype}{exclude_self}{reduction}")
    anchors, anchors64 = _on_gpu(torch.randn(n_rows, dim, generator=gen), dtype)
    candidates, candidates64 = _on_gpu(torch.randn(n_cols, dim, generator=gen), dtype)
    anchor_labels = torch.randint(0, 4, (n_rows,), generator=gen).cuda()
    candidate_labels = torch.randint(-1, 4, (n_cols,), generator=gen).cuda()
    t = 0.05 + 0.5 * float(torch.rand((), generator=gen))
    temperature = torch.tensor(t, device="cuda", requires_grad=True)
    temperature64 = torch.tensor(t, device="cuda", dtype=torch.float64, requires_grad=True)
    actual = L.contrastive_loss(anchors, candidates, anchor_labels, candidate_labels, temperature=temperature,
                                exclude_self=exclude_self, reduction=reduction, backend="cuda")
    expected = ref.contrastive_loss(anchors64, candidates64, anchor_labels, candidate_labels,
                                    temperature=temperature64, exclude_self=exclude_self, reduction=reduction)
    _check(actual, expected, [anchors, candidates, temperature], [anchors64, candidates64, temperature64],
           TOLS[dtype], f"contrastive {shape} {dtype} t={t:.3f}", gen)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("max_group", [1, 2, 6])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_self_candidates_with_grouped_labels(dtype, max_group, reduction):
    """Candidates are the anchors (one tensor: both gradient roles summed); 0..max_group-1 positives per row."""
    gen = _generator(f"supcon{dtype}{max_group}{reduction}")
    features, features64 = _on_gpu(torch.randn(203, 96, generator=gen), dtype)
    labels = labels_with_positives(203, max_group, gen).cuda()
    actual = L.supcon(features, labels, temperature=0.1, reduction=reduction, backend="cuda")
    expected = ref.supcon(features64, labels, temperature=0.1, reduction=reduction)
    _check(actual, expected, [features], [features64], TOLS[dtype], f"supcon groups<={max_group} {dtype}", gen)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_named_losses(dtype):
    """Each public loss maps onto the op as the reference says: NT-Xent with generator negatives, MoCo with a
    queue, symmetric CLIP with a learnable logit scale, PPCL."""
    gen = _generator(f"named{dtype}")
    tol = TOLS[dtype]
    z1, z1_64 = _on_gpu(torch.randn(45, 64, generator=gen), dtype)
    z2, z2_64 = _on_gpu(torch.randn(45, 64, generator=gen), dtype)
    g, g64 = _on_gpu(torch.randn(29, 64, generator=gen), dtype)
    _check(L.nt_xent(z1, z2, negatives=g, backend="cuda"), ref.nt_xent(z1_64, z2_64, negatives=g64),
           [z1, z2, g], [z1_64, z2_64, g64], tol, f"nt_xent {dtype}", gen)

    q, q64 = _on_gpu(torch.randn(37, 128, generator=gen), dtype)
    k, k64 = _on_gpu(torch.randn(37, 128, generator=gen), dtype)
    queue, queue64 = _on_gpu(torch.randn(5000, 128, generator=gen), dtype, requires_grad=False)
    _check(L.info_nce(q, k, negatives=queue, backend="cuda"), ref.info_nce(q64, k64, negatives=queue64),
           [q, k], [q64, k64], tol, f"info_nce {dtype}", gen)

    image, image64 = _on_gpu(torch.randn(53, 96, generator=gen), dtype)
    text, text64 = _on_gpu(torch.randn(53, 96, generator=gen), dtype)
    scale = torch.tensor(14.3, device="cuda", requires_grad=True)
    scale64 = torch.tensor(14.3, device="cuda", dtype=torch.float64, requires_grad=True)
    _check(L.clip_loss(image, text, logit_scale=scale, backend="cuda"),
           ref.clip_loss(image64, text64, logit_scale=scale64), [image, text, scale], [image64, text64, scale64],
           tol, f"clip {dtype}", gen)

    real, real64 = _on_gpu(torch.randn(2, 24, 32, generator=gen), dtype)
    synthetic, synthetic64 = _on_gpu(torch.randn(4, 9, 32, generator=gen), dtype)
    _check(L.ppcl(real, synthetic, reduction="none", backend="cuda"), ref.ppcl(real64, synthetic64, reduction="none"),
           [real, synthetic], [real64, synthetic64], tol, f"ppcl {dtype}", gen)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_without_positives(dtype):
    """No row has a positive: the mean is 0 and every gradient 0; R = K = 1 with exclude_self: an empty
    denominator, loss 0, finite gradients."""
    gen = _generator(f"nopos{dtype}")
    features = torch.randn(9, 5, generator=gen).to(dtype).cuda().requires_grad_()
    loss = L.supcon(features, torch.arange(9).cuda(), backend="cuda")
    (grad,) = torch.autograd.grad(loss, features)
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0
    single = torch.randn(1, 5, generator=gen).to(dtype).cuda().requires_grad_()
    loss = L.contrastive_loss(single, backend="cuda")
    assert loss.item() == 0.0 and torch.isfinite(torch.autograd.grad(loss, single)[0]).all()
    per_row = L.contrastive_loss(single, reduction="none", backend="cuda")
    assert per_row.tolist() == [0.0]


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_deterministic(dtype):
    """No float atomics: the same inputs give bitwise the same loss and gradients (split candidates too)."""
    gen = _generator(f"det{dtype}")
    z1 = torch.randn(40, 64, generator=gen).to(dtype).cuda().requires_grad_()
    z2 = torch.randn(40, 64, generator=gen).to(dtype).cuda().requires_grad_()
    queue = torch.randn(9000, 64, generator=gen).to(dtype).cuda()
    runs = []
    for _ in range(2):
        loss = L.info_nce(z1, z2, negatives=queue, backend="cuda")
        runs.append((loss, *torch.autograd.grad(loss, (z1, z2))))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@gpu
def test_numerics():
    """Norms of 1e25 (x^2 overflows fp32) keep their direction; zero rows get no gradient; low temperature."""
    gen = _generator("numerics")
    z = torch.randn(30, 8, generator=gen).cuda() * 1e25
    small = z / 1e25
    assert_close(L.nt_xent(z[:15], z[15:], backend="cuda"), L.nt_xent(small[:15], small[15:], backend="reference"),
                 1e-5, f"scaled by 1e25 (seed {SEED})")
    for dtype in DTYPES:
        x = torch.randn(48, 24, generator=gen)
        x[::3] = 0
        z = x.to(dtype).cuda().requires_grad_()
        loss = L.supcon(z, torch.arange(48).cuda() // 2, temperature=0.01, backend="cuda")
        z64 = z.detach().double().requires_grad_()
        expected = ref.supcon(z64, torch.arange(48).cuda() // 2, temperature=0.01)
        (grad,), (grad64,) = torch.autograd.grad(loss, z), torch.autograd.grad(expected, z64)
        assert torch.isfinite(loss) and not torch.isnan(grad).any(), dtype
        assert torch.count_nonzero(grad[::3]) == 0, f"{dtype}: zero rows must get no gradient"
        assert_close(grad, grad64, TOLS[dtype], f"{dtype} t=0.01 grad (seed {SEED})")


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", [1, 29, 64, 256, 4100])
@pytest.mark.parametrize("mode", ["two_sided", "floor"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_positive_pair(dtype, dim, mode, reduction):
    """D = 1 and 29: one element per load; 64, 256: 16-byte loads, rows cached in registers; 4100: rows read
    twice. Per-row targets, gradients of a, b and the target."""
    gen = _generator(f"pair{dtype}{dim}{mode}{reduction}")
    a, a64 = _on_gpu(torch.randn(1037, dim, generator=gen), dtype)
    b, b64 = _on_gpu(torch.randn(1037, dim, generator=gen) + 0.5 * a.detach().float().cpu(), dtype)
    target = torch.rand(1037, generator=gen).cuda().requires_grad_()
    target64 = target.detach().double().requires_grad_()
    actual = L.positive_pair_loss(a, b, target, mode=mode, reduction=reduction, backend="cuda")
    expected = ref.positive_pair_loss(a64, b64, target64, mode=mode, reduction=reduction)
    # values and the target's gradient are computed in float64 and rounded once to fp32
    tol = 1e-5 if dtype == torch.float32 else TOLS[dtype]
    _check(actual, expected, [a, b, target], [a64, b64, target64], tol, f"positive_pair D={dim} {dtype}", gen)


@gpu
def test_positive_pair_misaligned_rows():
    """A view that starts one element into its storage is not 16-byte aligned: the element-wise path."""
    gen = _generator("misaligned")
    storage = torch.randn(257 * 64 + 1, generator=gen).cuda()
    a = storage[1:].view(257, 64).requires_grad_()
    b = torch.randn(257, 64, generator=gen).cuda()
    a64 = a.detach().double().requires_grad_()
    actual = L.positive_pair_loss(a, b, 0.3, backend="cuda")
    expected = ref.positive_pair_loss(a64, b.double(), 0.3)
    assert_close(actual, expected, 1e-5, f"value (seed {SEED})")
    assert_close(torch.autograd.grad(actual, a)[0], torch.autograd.grad(expected, a64)[0], 1e-5,
                 f"grad (seed {SEED})")


@gpu
def test_current_stream_and_non_contiguous():
    """Work is queued on the caller's stream; transposed inputs give the contiguous result."""
    gen = _generator("stream")
    x = torch.randn(96, 160, generator=gen).cuda()
    labels = torch.arange(160).cuda() // 2
    expected = L.contrastive_loss(x.t().contiguous(), anchor_labels=labels, backend="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        actual = L.contrastive_loss(x.t(), anchor_labels=labels, backend="cuda")
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(actual, expected)


@gpu
def test_opcheck():
    """The registered ops with their fake and autograd registrations pass torch.library.opcheck on CUDA."""
    gen = _generator("opcheck")
    ops = torch.ops.synthcl_fast
    for dtype in DTYPES:
        a = torch.randn(70, 40, generator=gen).to(dtype).cuda().requires_grad_()
        c = torch.randn(90, 40, generator=gen).to(dtype).cuda().requires_grad_()
        la, lc = torch.randint(0, 5, (70,)).cuda(), torch.randint(-1, 5, (90,)).cuda()
        t = torch.tensor(0.2, device="cuda", requires_grad=True)
        for reduction, compute_grad in ((0, False), (1, True), (2, False)):
            torch.library.opcheck(ops.contrastive_forward, (a, c, la, lc, t, False, reduction, 1e-12, compute_grad))
        b = torch.randn(70, 40, generator=gen).to(dtype).cuda()
        target = torch.rand(70).cuda()
        torch.library.opcheck(ops.positive_pair_forward, (a, b, target, 0, 1, 1e-12, True, False))


@gpu
def test_compiles_without_graph_break():
    """torch.compile(fullgraph=True) of a loss on the cuda backend: no graph break, the same loss and gradients."""
    gen = _generator("compile")
    z1 = torch.randn(64, 32, generator=gen).cuda().requires_grad_()
    z2 = torch.randn(64, 32, generator=gen).cuda().requires_grad_()

    def step(a, b):
        return L.nt_xent(a, b, temperature=0.2, backend="cuda")

    explanation = torch._dynamo.explain(step)(z1, z2)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    eager = step(z1, z2)
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)(z1, z2)
    assert_close(compiled, eager, 1e-6, f"compiled loss (seed {SEED})")
    for got, want in zip(torch.autograd.grad(compiled, (z1, z2)), torch.autograd.grad(eager, (z1, z2))):
        assert_close(got, want, 1e-6, f"compiled gradient (seed {SEED})")


@gpu
def test_poisoned_outputs_are_on():
    """The comparisons above see NaN wherever a kernel leaves an output element unwritten."""
    assert os.environ.get("SYNTHCL_FAST_POISON_OUTPUTS") == "1"


# ---- everywhere: availability and registration -------------------------------------------------------

def _built_with_cuda() -> bool:
    info = Path(synthcl_fast.__file__).with_name("_build_info.json")
    return info.exists() and json.loads(info.read_text()).get("cuda") is not None


def test_cuda_backend_refuses_cpu_tensors():
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' cannot run .* CUDA tensors only"):
        L.nt_xent(torch.randn(4, 3), torch.randn(4, 3), backend="cuda")


def test_cuda_backend_refuses_float64():
    reason = BACKENDS["cuda"].unavailable_reason(torch.device("cuda"), torch.float64)
    assert reason is not None and "float32, float16 or bfloat16" in reason
    with pytest.raises(BackendUnavailableError, match="float64"):
        resolve_backend("cuda", torch.device("cuda"), torch.float64)


@pytest.mark.skipif(load_error() is not None, reason="the extension is not loaded")
def test_cuda_kernels_registered_as_built():
    """An extension built with nvcc registers CUDA kernels for every op (checked through the dispatcher, no GPU
    needed); one built without reports why the backend is unavailable."""
    reason = BACKENDS["cuda"].unavailable_reason(torch.device("cuda"), torch.float32)
    if _built_with_cuda():
        assert has_cuda_kernels()
        for op in ("contrastive_forward", "contrastive_backward", "positive_pair_forward"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"synthcl_fast::{op}", "CUDA"), op
        assert reason is None
    else:
        assert not has_cuda_kernels()
        assert "no CUDA kernels" in reason


@pytest.mark.skipif(load_error() is not None, reason="the extension is not loaded")
def test_backend_check_traces_without_graph_break():
    """backend="cuda" under torch.compile: checking whether the backend can run traces without a graph break."""
    def fn(x):
        available = BACKENDS["cuda"].unavailable_reason(torch.device("cuda"), torch.float32) is None
        return x + (1.0 if available else 2.0)

    explanation = torch._dynamo.explain(fn)(torch.ones(3))
    assert explanation.graph_break_count == 0, explanation.break_reasons
