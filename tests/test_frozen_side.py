"""A side that needs no gradient costs no gradient work (issue 25, item 4): the conformance lanes again.

A frozen side (requires_grad False: a MoCo key and queue, one CLIP tower, a detached partner, a float
temperature) must leave the values and the other inputs' gradients as they are, and its gradient products
must not be computed at all (the ops' gradient masks, synthcl_fast/backends/_ops.py). Every fused lane of the
conformance suite (tests/conftest.py: conformance_lanes; the Triton lane under TRITON_INTERPRET=1 runs from
tests/test_triton.py), fresh random inputs of odd shapes, outputs poisoned with NaN (conftest):

- values and the trainable inputs' gradients equal the same call with every side trainable, and the float64
  reference within the lane's declared tolerances;
- the skipped products provably not run, counted where each backend does them: the CPU kernels' gradient
  products are at::addmm_ calls (one per tile and side: the torch profiler counts them), the Triton
  backward kernel's launches with its product on (OWN_GRAD), the CUDA tile kernels launched (profiler).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import synthcl_fast.losses as L
from conftest import assert_close, lane_param
from test_conformance import FUSED, plans, tile_plan  # noqa: F401  (tile_plan: the fixture the plans need)

pytestmark = pytest.mark.skipif(not FUSED, reason="no fused backend runs in this session")


@dataclass(frozen=True)
class Case:
    """A loss call and which of its inputs are trainable. shapes: the feature tensors' (rows, dim), in the
    order `call` takes them; trainable: which of them require grad; temperature: a learnable tensor or a
    float (never a gradient)."""

    shapes: tuple
    trainable: tuple
    learnable_temperature: bool
    call: object

    def side_rows(self) -> tuple[int, int]:
        """The op's two sides' row counts: the anchors (the first tensor) and the candidates (the others: InfoNCE's
        are [key; queue])."""
        return self.shapes[0][0], sum(shape[0] for shape in self.shapes[1:])

    @property
    def trainable_sides(self) -> int:
        """How many of the op's two sides (anchors, candidates) need a gradient."""
        return int(self.trainable[0]) + int(any(self.trainable[1:]))


def info_nce_call(tensors, temperature, **kwargs):
    query, key, queue = tensors
    return L.info_nce(query, key, negatives=queue, temperature=temperature, **kwargs)


def clip_call(tensors, temperature, **kwargs):
    image, text = tensors
    return L.clip_loss(image, text, logit_scale=1 / temperature, **kwargs)


def _labels(n_rows, n_cols):
    anchor = torch.arange(n_rows) % 5
    candidate = torch.arange(n_cols) % 7 - 1  # -1: never a positive
    return anchor, candidate


def general_call(tensors, temperature, **kwargs):
    anchors, candidates = tensors
    anchor_labels, candidate_labels = _labels(anchors.shape[0], candidates.shape[0])
    return L.contrastive_loss(anchors, candidates, anchor_labels.to(anchors.device),
                              candidate_labels.to(anchors.device), temperature=temperature, **kwargs)


def supcon_call(tensors, temperature, **kwargs):  # one tensor as both sides (the symmetric plans)
    (features,) = tensors
    return L.supcon(features, _labels(features.shape[0], 0)[0].to(features.device), temperature=temperature,
                    **kwargs)


def general_negatives_call(tensors, temperature, **kwargs):  # the variant op
    return general_call(tensors, temperature, denominator="negatives", **kwargs)


def general_hard_call(tensors, temperature, **kwargs):  # the hard-negative statistics op (HCL)
    return general_call(tensors, temperature, beta=0.5, tau_plus=0.1, **kwargs)


# (rows, dim) with R != K everywhere, so that a launch is attributed to its side by its row count
CASES = {
    # MoCo: the query learns; the key (momentum encoder) and the queue are frozen; a float temperature
    "info_nce_queue": Case(((37, 19), (37, 19), (211, 19)), (True, False, False), False, info_nce_call),
    # the same with a learnable temperature: its sums still run, the candidates' product does not
    "info_nce_learnable_t": Case(((37, 19), (37, 19), (211, 19)), (True, False, False), True, info_nce_call),
    # LiT: a frozen text tower, a learnable logit scale (both directions: the symmetric op where fused)
    "clip_frozen_text": Case(((29, 13), (29, 13)), (True, False), True, clip_call),
    "clip_frozen_image": Case(((29, 13), (29, 13)), (False, True), False, clip_call),
    # a detached partner as the anchors, the candidates learn
    "frozen_anchors": Case(((23, 11), (41, 11)), (False, True), False, general_call),
    # only the temperature learns: no feature product at all
    "temperature_only": Case(((23, 11), (41, 11)), (False, False), True, general_call),
    # SupCon's one tensor with only the temperature learnable: the symmetric plans' sums without a product
    "one_tensor_temperature_only": Case(((31, 9),), (False,), True, supcon_call),
    "negatives_variant": Case(((23, 11), (41, 11)), (True, False), True, general_negatives_call),
    "hard_negatives": Case(((23, 11), (41, 11)), (True, False), False, general_hard_call),
}


def _inputs(case, lane, dtype, rng, trainable):
    features = [torch.randn(*shape, generator=rng).to(dtype).to(lane.device).requires_grad_(grad)
                for shape, grad in zip(case.shapes, trainable)]
    t_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    t = 0.1 + 0.3 * float(torch.rand((), generator=rng))
    temperature = (torch.tensor(t, dtype=t_dtype, device=lane.device).requires_grad_()
                   if case.learnable_temperature else t)
    return features, temperature


def _copies(features, temperature, dtype, trainable):
    """The same values as new leaves in dtype, each requiring grad as `trainable` says (the temperature as given)."""
    copies = [f.detach().to(dtype).requires_grad_(grad) for f, grad in zip(features, trainable)]
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.detach().to(torch.float64 if dtype == torch.float64 else temperature.dtype)
        temperature.requires_grad_()
    return copies, temperature


def _grads(loss, features, temperature, upstream):
    wanted = [f for f in features if f.requires_grad]
    if isinstance(temperature, torch.Tensor):
        wanted.append(temperature)
    return torch.autograd.grad(loss, wanted, upstream.to(loss.dtype))


@pytest.mark.parametrize("lane,plan,case_name,reduction",
                         [lane_param(lane, plan, name, reduction) for lane in FUSED for plan in plans(lane)
                          for name in CASES for reduction in ("mean", "none", "sum")
                          if plan == "auto" or reduction != "sum"])
def test_frozen_side_values_and_gradients(lane, plan, case_name, reduction, tile_plan, rng):
    """With a side frozen, the values equal (bit for bit: the forward does not change) those of the same call
    with every side trainable, the trainable inputs' gradients equal that call's and the float64 reference's."""
    case = CASES[case_name]
    dtype = lane.exact_dtype
    value_tol, grad_tol = lane.tolerances(dtype)
    features, temperature = _inputs(case, lane, dtype, rng, case.trainable)
    loss = case.call(features, temperature, reduction=reduction, backend=lane.name)
    all_trainable = (True,) * len(features)
    both, both_t = _copies(features, temperature, dtype, all_trainable)
    loss_both = case.call(both, both_t, reduction=reduction, backend=lane.name)
    exact, exact_t = _copies(features, temperature, torch.float64, case.trainable)
    expected = case.call(exact, exact_t, reduction=reduction, backend="reference")

    what = f"{case_name} {reduction} plan={plan}"
    assert torch.equal(loss, loss_both), f"{what}: values differ from the all-trainable call"
    assert_close(loss, expected, value_tol, f"{what} value")
    upstream = torch.randn(expected.shape, generator=rng, dtype=torch.float64).to(lane.device)
    got = _grads(loss, features, temperature, upstream)
    reference_grads = _grads(expected, exact, exact_t, upstream)
    # the all-trainable call's gradients of the same inputs
    wanted = [b for b, grad in zip(both, case.trainable) if grad]
    wanted += [both_t] if isinstance(both_t, torch.Tensor) else []
    all_grads = torch.autograd.grad(loss_both, wanted, upstream.to(loss_both.dtype))
    assert len(got) == len(all_grads) == len(reference_grads) > 0
    for i, (g, g_both, g_ref) in enumerate(zip(got, all_grads, reference_grads)):
        assert g.shape == g_both.shape and g.dtype == g_both.dtype, f"{what}: grad {i} shape or dtype"
        assert_close(g, g_both, grad_tol, f"{what} grad {i} against the all-trainable call")
        assert_close(g, g_ref, grad_tol, f"{what} grad {i} against the float64 reference")


# ------------------------------------------------------------------------- the skipped products are not run

def _cpu_products(run) -> int:
    """The CPU kernels' gradient products in run(): each is one at::addmm_ (dU += G V or dV += G^T U, per tile)
    on the calling thread (one thread: the profiler records this thread's ops)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run()
    finally:
        torch.set_num_threads(threads)
    return sum(event.name == "aten::addmm_" for event in prof.events())


def _triton_products(run, monkeypatch) -> tuple[int, list[int]]:
    """The Triton backward kernel's launches in run(): how many form a gradient product (OWN_GRAD), and the row
    count of the side each of those owns."""
    from synthcl_fast.backends import triton_gradients as tc

    launches = []
    launch = tc._launch

    def recording(kernel, grid, *args, **kwargs):
        if kernel is tc._contrastive_backward_kernel and kwargs.get("OWN_GRAD", True):
            launches.append(args[0].shape[0])  # args[0]: the owned side's prepared rows
        return launch(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(tc, "_launch", recording)
    run()
    monkeypatch.setattr(tc, "_launch", launch)
    return len(launches), launches


def _cuda_tile_kernels(run) -> int:
    """The CUDA tile kernels (forward, row pass, column pass) launched in run()."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    return sum("tile_kernel" in event.name for event in prof.events())


@pytest.mark.parametrize("lane,case_name,reduction",
                         [lane_param(lane, name, reduction) for lane in FUSED for name in CASES
                          for reduction in ("mean", "none")])
def test_frozen_side_products_not_run(lane, case_name, reduction, rng, monkeypatch):
    """Forward and backward with a side frozen run the gradient products of the trainable sides only: a
    frozen side's product (and, with every side frozen, all of them) is never formed, not formed and
    dropped. Counted against the same call with every side trainable."""
    case = CASES[case_name]
    dtype = lane.exact_dtype
    features, temperature = _inputs(case, lane, dtype, rng, case.trainable)
    both, both_t = _copies(features, temperature, dtype, (True,) * len(features))

    def step(tensors, t):
        def run():
            loss = case.call(tensors, t, reduction=reduction, backend=lane.name)
            upstream = torch.ones_like(loss)
            _grads(loss, tensors, t, upstream)
        return run

    if lane.name == "cpu":
        frozen, everything = _cpu_products(step(features, temperature)), _cpu_products(step(both, both_t))
    elif lane.name == "triton":
        frozen, owners = _triton_products(step(features, temperature), monkeypatch)
        everything, _ = _triton_products(step(both, both_t), monkeypatch)
        anchors_rows, candidates_rows = case.side_rows()
        if anchors_rows != candidates_rows:  # a launch names its side by its row count
            frozen_rows = {rows for rows, grad in ((anchors_rows, case.trainable[0]),
                                                   (candidates_rows, any(case.trainable[1:]))) if not grad}
            assert not set(owners) & frozen_rows, f"{case_name}: a product launched for a frozen side {owners}"
    else:
        frozen, everything = _cuda_tile_kernels(step(features, temperature)), _cuda_tile_kernels(step(both, both_t))
        assert everything > frozen, f"{case_name}: {frozen} tile kernels with a side frozen, {everything} without"
        return
    # every side trainable: two products per tile (or launch); a frozen side removes its share
    assert everything > 0, f"{case_name}: no gradient product counted at all"
    assert frozen * 2 == everything * case.trainable_sides, \
        f"{case_name}: {frozen} gradient products with a side frozen, {everything} with both trainable"


@pytest.mark.parametrize("lane,reduction", [lane_param(lane, r) for lane in FUSED for r in ("mean", "none")])
def test_frozen_side_torch_compile_fullgraph(lane, reduction, rng):
    """The gradient masks are read from requires_grad and needs_input_grad, constants of the traced graph: a
    frozen MoCo key and queue and a frozen CLIP tower trace into one graph, with the eager values and
    gradients."""
    dtype = lane.exact_dtype

    def leaf(*shape, grad=True):
        return torch.randn(*shape, generator=rng).to(dtype).to(lane.device).requires_grad_(grad)

    query, key, queue = leaf(12, 8), leaf(12, 8, grad=False), leaf(31, 8, grad=False)
    image, text = leaf(10, 8, grad=False), leaf(10, 8)
    scale = torch.tensor(5.0, dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                         device=lane.device, requires_grad=True)

    def step(query, key, queue, image, text, scale):
        return (L.info_nce(query, key, negatives=queue, reduction=reduction, backend=lane.name).sum()
                + L.clip_loss(image, text, logit_scale=scale, reduction=reduction, backend=lane.name).sum())

    args = (query, key, queue, image, text, scale)
    explanation = torch._dynamo.explain(step)(*args)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    eager = step(*args)
    traced = torch.compile(step, fullgraph=True, backend="aot_eager")(*args)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert_close(traced, eager, tol, "compiled vs eager")
    trainable = (query, text, scale)
    for g, e in zip(torch.autograd.grad(traced, trainable), torch.autograd.grad(eager, trainable)):
        assert_close(g, e, tol, "compiled grad")


@pytest.mark.parametrize("lane", [lane_param(lane) for lane in FUSED])
def test_hard_negative_backward_with_one_statistic_used(lane, rng):
    """The hard-negative statistics op's backward always receives both upstream gradients: its registration
    keeps autograd's materialized (zero) gradients, which is why it has no `grad is None` branch (issue 25,
    item 5). A loss of one statistic alone, with the candidates frozen, gets the anchors' gradient of the
    float64 reference's same statistic."""
    from synthcl_fast import reference as ref

    dtype = lane.exact_dtype
    anchors = torch.randn(13, 6, generator=rng).to(dtype).to(lane.device).requires_grad_()
    candidates = torch.randn(17, 6, generator=rng).to(dtype).to(lane.device)
    anchor_labels, candidate_labels = (labels.to(lane.device) for labels in _labels(13, 17))
    t = torch.tensor(0.3, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=lane.device)
    lse = lane.backend.ops().hard_negative_stats_forward(anchors, candidates, anchor_labels, candidate_labels, t,
                                                         0.5, False, 1e-12)[0]
    anchors64 = anchors.detach().double().requires_grad_()
    logits = (torch.nn.functional.normalize(anchors64, dim=1)
              @ torch.nn.functional.normalize(candidates.double(), dim=1).T) / t.double()
    positive = (anchor_labels[:, None] == candidate_labels[None, :]) & (candidate_labels[None, :] >= 0)
    lse_hard64 = ref.hard_negative_row_stats(logits, positive, ~positive, beta=0.5)[0]
    (grad,) = torch.autograd.grad(lse[:, 0].sum(), anchors)  # positive_mean and the other sets unused
    (expected,) = torch.autograd.grad(lse_hard64.sum(), anchors64)
    assert_close(grad, expected, lane.tolerances(dtype)[1], "hard-negative lse_hard gradient")
