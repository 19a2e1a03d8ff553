"""Every fused backend that runs on CPU against synthcl_fast.reference: values and gradients (inputs and
temperature), every reduction, odd shapes, labels with 0..5 positives per row, -1 labels, negatives."""

import pytest
import torch

import synthcl_fast.losses as L
from synthcl_fast import reference as ref
from conftest import assert_close, fused_cpu_backends, labels_with_positives

BACKENDS = fused_cpu_backends()
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no fused CPU backend available")

F64_TOL = 1e-10  # float64 kernels against the float64 reference: only summation order differs
F32_TOL = 1e-5   # issue 2: fp32 kernels against the float64 reference
HALF_TOLS = {torch.float16: 2e-3, torch.bfloat16: 1e-2}  # gradients are rounded to the input dtype

# (R, K, D): primes, R != K, R = 1, D = 1, D not a multiple of anything; the last one has K large enough
# that a block of rows no longer fits one logits tile (the online log-sum-exp across column tiles).
SHAPES = [(1, 5, 3), (2, 2, 1), (7, 7, 5), (33, 50, 17), (131, 97, 130), (257, 300, 64), (20, 17011, 3)]


def _grads(loss, inputs, upstream):
    return torch.autograd.grad(loss, inputs, upstream)


def _compare(fn, inputs, backend, tol, what, seed=0):
    """fn(backend=...) on the fused backend and the reference; same random upstream gradient for both."""
    expected = fn(backend="reference")
    actual = fn(backend=backend)
    upstream = torch.randn(expected.shape, generator=torch.Generator().manual_seed(seed), dtype=expected.dtype)
    assert actual.dtype == expected.dtype, f"{what}: loss dtype {actual.dtype} != {expected.dtype}"
    assert_close(actual, expected, tol, f"{what} value")
    wanted = [x for x in inputs if x.requires_grad]
    for i, (got, exp) in enumerate(zip(_grads(actual, wanted, upstream), _grads(expected, wanted, upstream))):
        assert got.dtype == wanted[i].dtype, f"{what}: grad {i} dtype {got.dtype}"
        assert_close(got, exp, tol, f"{what} grad of input {i}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_general_op_float64(backend, shape, exclude_self, reduction, generator):
    n_rows, n_cols, dim = shape
    anchors = torch.randn(n_rows, dim, generator=generator, dtype=torch.float64).requires_grad_()
    candidates = torch.randn(n_cols, dim, generator=generator, dtype=torch.float64).requires_grad_()
    anchor_labels = torch.randint(0, 4, (n_rows,), generator=generator)
    candidate_labels = torch.randint(-1, 4, (n_cols,), generator=generator)
    temperature = torch.tensor(0.37, dtype=torch.float64, requires_grad=True)

    def fn(backend):
        return L.contrastive_loss(anchors, candidates, anchor_labels, candidate_labels, temperature=temperature,
                                  exclude_self=exclude_self, reduction=reduction, backend=backend)

    _compare(fn, [anchors, candidates, temperature], backend, F64_TOL, f"contrastive {shape}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("max_group", [1, 2, 6])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_self_candidates_with_grouped_labels(backend, max_group, reduction, generator):
    """Candidates are the anchors (one tensor, gradients from both roles): 0..max_group-1 positives per row."""
    features = torch.randn(61, 19, generator=generator, dtype=torch.float64).requires_grad_()
    labels = labels_with_positives(61, max_group, generator)

    def fn(backend):
        return L.supcon(features, labels, temperature=0.2, reduction=reduction, backend=backend)

    _compare(fn, [features], backend, F64_TOL, f"supcon groups<={max_group}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(257, 300, 64), (1024, 1024, 128)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_float32_against_float64_reference(backend, shape, temperature, generator):
    n_rows, n_cols, dim = shape
    a64 = torch.randn(n_rows, dim, generator=generator, dtype=torch.float64)
    c64 = torch.randn(n_cols, dim, generator=generator, dtype=torch.float64)
    anchor_labels = torch.randint(0, 8, (n_rows,), generator=generator)
    candidate_labels = torch.randint(-1, 8, (n_cols,), generator=generator)
    a32, c32 = a64.float().requires_grad_(), c64.float().requires_grad_()
    a64 = a32.detach().double().requires_grad_()  # the same values, so only the arithmetic differs
    c64 = c32.detach().double().requires_grad_()
    t32 = torch.tensor(temperature, requires_grad=True)
    t64 = torch.tensor(temperature, dtype=torch.float64, requires_grad=True)
    got = L.contrastive_loss(a32, c32, anchor_labels, candidate_labels, temperature=t32, backend=backend)
    exp = ref.contrastive_loss(a64, c64, anchor_labels, candidate_labels, temperature=t64)
    assert got.dtype == torch.float32
    assert_close(got, exp, F32_TOL, "fp32 value")
    for g, e, name in zip(torch.autograd.grad(got, (a32, c32, t32)), torch.autograd.grad(exp, (a64, c64, t64)),
                          ("anchors", "candidates", "temperature")):
        assert_close(g, e, F32_TOL, f"fp32 grad {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(backend, dtype, generator):
    z1 = torch.randn(97, 40, generator=generator).to(dtype).requires_grad_()
    z2 = torch.randn(97, 40, generator=generator).to(dtype).requires_grad_()
    got = L.nt_xent(z1, z2, temperature=0.1, backend=backend)
    z1_64, z2_64 = (z.detach().double().requires_grad_() for z in (z1, z2))
    exp = ref.nt_xent(z1_64, z2_64, temperature=0.1)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    assert_close(got, exp, 1e-5, f"{dtype} value (computed in fp32)")
    for g, e in zip(torch.autograd.grad(got, (z1, z2)), torch.autograd.grad(exp, (z1_64, z2_64))):
        assert g.dtype == dtype
        assert_close(g, e, HALF_TOLS[dtype], f"{dtype} grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_negatives", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_nt_xent(backend, with_negatives, reduction, generator):
    z1 = torch.randn(45, 23, generator=generator, dtype=torch.float64).requires_grad_()
    z2 = torch.randn(45, 23, generator=generator, dtype=torch.float64).requires_grad_()
    negatives = torch.randn(29, 23, generator=generator, dtype=torch.float64).requires_grad_()
    kwargs = dict(temperature=0.5, negatives=negatives if with_negatives else None, reduction=reduction)
    inputs = [z1, z2] + ([negatives] if with_negatives else [])
    expected = ref.nt_xent(z1, z2, **kwargs)
    actual = L.nt_xent(z1, z2, backend=backend, **kwargs)
    _check_against(actual, expected, inputs, "nt_xent")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_negatives", [False, True])
def test_supcon(backend, with_negatives, generator):
    features = torch.randn(70, 16, generator=generator, dtype=torch.float64).requires_grad_()
    labels = labels_with_positives(70, 5, generator)
    negatives = torch.randn(13, 16, generator=generator, dtype=torch.float64).requires_grad_()
    kwargs = dict(temperature=0.1, negatives=negatives if with_negatives else None)
    expected = ref.supcon(features, labels, **kwargs)
    actual = L.supcon(features, labels, backend=backend, **kwargs)
    _check_against(actual, expected, [features] + ([negatives] if with_negatives else []), "supcon")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_real,n_synthetic", [(24, 9), (24, 0), (0, 7), (1, 1)])
@pytest.mark.parametrize("with_negatives", [False, True])
def test_ppcl(backend, n_real, n_synthetic, with_negatives, generator):
    real = torch.randn(2, n_real, 12, generator=generator, dtype=torch.float64).requires_grad_()
    synthetic = torch.randn(4, n_synthetic, 12, generator=generator, dtype=torch.float64).requires_grad_()
    negatives = torch.randn(5, 12, generator=generator, dtype=torch.float64)
    kwargs = dict(temperature=0.5, negatives=negatives if with_negatives else None, reduction="none")
    expected = ref.ppcl(real, synthetic, **kwargs)
    actual = L.ppcl(real, synthetic, backend=backend, **kwargs)
    _check_against(actual, expected, [real, synthetic], "ppcl")


@pytest.mark.parametrize("backend", BACKENDS)
def test_ppcl_without_synthetic_is_nt_xent(backend, generator):
    real = torch.randn(2, 31, 8, generator=generator, dtype=torch.float64)
    empty = real.new_zeros(4, 0, 8)
    assert_close(L.ppcl(real, empty, backend=backend), L.nt_xent(real[0], real[1], backend=backend), 1e-12,
                 "ppcl(real only) vs nt_xent")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("queue", [0, 200])
def test_info_nce(backend, queue, generator):
    query = torch.randn(37, 32, generator=generator, dtype=torch.float64).requires_grad_()
    key = torch.randn(37, 32, generator=generator, dtype=torch.float64).requires_grad_()
    negatives = torch.randn(queue, 32, generator=generator, dtype=torch.float64) if queue else None
    temperature = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
    expected = ref.info_nce(query, key, negatives=negatives, temperature=temperature)
    actual = L.info_nce(query, key, negatives=negatives, temperature=temperature, backend=backend)
    _check_against(actual, expected, [query, key, temperature], "info_nce")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_clip_loss(backend, symmetric, generator):
    image = torch.randn(53, 24, generator=generator, dtype=torch.float64).requires_grad_()
    text = torch.randn(53, 24, generator=generator, dtype=torch.float64).requires_grad_()
    logit_scale = torch.tensor(14.3, dtype=torch.float64, requires_grad=True)
    expected = ref.clip_loss(image, text, logit_scale=logit_scale, symmetric=symmetric)
    actual = L.clip_loss(image, text, logit_scale=logit_scale, symmetric=symmetric, backend=backend)
    _check_against(actual, expected, [image, text, logit_scale], "clip")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["two_sided", "floor"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("per_row_target", [False, True])
def test_positive_pair(backend, mode, reduction, per_row_target, generator):
    a = torch.randn(83, 29, generator=generator, dtype=torch.float64).requires_grad_()
    b = (a.detach() + 0.8 * torch.randn(83, 29, generator=generator, dtype=torch.float64)).requires_grad_()
    target = (torch.rand(83, generator=generator, dtype=torch.float64) if per_row_target
              else torch.tensor(0.6, dtype=torch.float64)).requires_grad_()
    expected = ref.positive_pair_loss(a, b, target, mode=mode, reduction=reduction)
    actual = L.positive_pair_loss(a, b, target, mode=mode, reduction=reduction, backend=backend)
    _check_against(actual, expected, [a, b, target], f"positive_pair {mode}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_positive_pair_dtypes(backend, dtype, generator):
    a = torch.randn(300, 64, generator=generator).to(dtype).requires_grad_()
    b = torch.randn(300, 64, generator=generator).to(dtype)
    actual = L.positive_pair_loss(a, b, 0.3, backend=backend)
    a64 = a.detach().double().requires_grad_()
    expected = ref.positive_pair_loss(a64, b.double(), 0.3)
    assert_close(actual, expected, 1e-5, "value")
    (grad,), (grad64,) = torch.autograd.grad(actual, [a]), torch.autograd.grad(expected, [a64])
    assert grad.dtype == dtype
    assert_close(grad, grad64, 1e-5 if dtype == torch.float32 else HALF_TOLS[dtype], "grad")


def _check_against(actual, expected, inputs, what, tol=F64_TOL):
    assert_close(actual, expected, tol, f"{what} value")
    upstream = torch.randn(expected.shape, generator=torch.Generator().manual_seed(7), dtype=expected.dtype)
    for i, (g, e) in enumerate(zip(torch.autograd.grad(actual, inputs, upstream),
                                   torch.autograd.grad(expected, inputs, upstream))):
        assert_close(g, e, tol, f"{what} grad of input {i}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(backend, reduction, generator):
    """Finite differences in float64, through both gradient paths (computed in forward; recomputed)."""
    anchors = torch.randn(6, 4, generator=generator, dtype=torch.float64).requires_grad_()
    candidates = torch.randn(9, 4, generator=generator, dtype=torch.float64).requires_grad_()
    temperature = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    anchor_labels = torch.tensor([0, 1, 2, 0, 5, 1])
    candidate_labels = torch.tensor([0, 1, 2, 0, -1, 1, 2, 2, 0])

    def fn(a, c, t):
        return L.contrastive_loss(a, c, anchor_labels, candidate_labels, temperature=t, exclude_self=True,
                                  reduction=reduction, backend=backend)

    assert torch.autograd.gradcheck(fn, (anchors, candidates, temperature))
    a = torch.randn(5, 3, generator=generator, dtype=torch.float64).requires_grad_()
    b = torch.randn(5, 3, generator=generator, dtype=torch.float64).requires_grad_()
    for mode in ("two_sided", "floor"):
        assert torch.autograd.gradcheck(
            lambda x, y: L.positive_pair_loss(x, y, 0.2, mode=mode, reduction=reduction, backend=backend), (a, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_without_grad_matches(backend, generator):
    z1, z2 = torch.randn(2, 40, 8, generator=generator, dtype=torch.float64)
    with_grad = L.nt_xent(z1.requires_grad_(), z2, backend=backend)
    with torch.no_grad():
        without = L.nt_xent(z1, z2, backend=backend)
    assert without.grad_fn is None
    assert with_grad.item() == without.item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_positive_anywhere_gives_zero(backend, generator):
    """All labels distinct and the self pair excluded: no row has a positive; the mean is 0, gradients 0."""
    features = torch.randn(9, 5, generator=generator, dtype=torch.float64).requires_grad_()
    loss = L.supcon(features, torch.arange(9), backend=backend)
    (grad,) = torch.autograd.grad(loss, features)
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0
    single = torch.randn(1, 5, generator=generator, dtype=torch.float64).requires_grad_()
    loss = L.contrastive_loss(single, backend=backend)  # R = K = 1 with exclude_self: empty denominator
    assert loss.item() == 0.0 and torch.isfinite(torch.autograd.grad(loss, single)[0]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend, generator):
    z1 = torch.randn(300, 50, generator=generator).requires_grad_()
    z2 = torch.randn(300, 50, generator=generator).requires_grad_()
    runs = []
    for _ in range(2):
        loss = L.nt_xent(z1, z2, temperature=0.2, backend=backend)
        runs.append((loss, *torch.autograd.grad(loss, (z1, z2))))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@pytest.mark.parametrize("backend", BACKENDS)
def test_once_differentiable(backend, generator):
    """A second derivative through the fused op would be silently wrong: it must raise instead."""
    z1 = torch.randn(8, 4, generator=generator, dtype=torch.float64).requires_grad_()
    z2 = torch.randn(8, 4, generator=generator, dtype=torch.float64)
    loss = L.nt_xent(z1, z2, backend=backend)
    with pytest.raises(RuntimeError, match="once-differentiable"):
        torch.autograd.grad(loss, z1, create_graph=True)
