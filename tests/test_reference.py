"""The reference itself: its general op against the textbook forms of each loss, a hand-computed case,
finite-difference gradients, and the similarity schedule."""

import math

import pytest
import torch

import synthcl_fast.losses as L
from synthcl_fast import reference as ref
from conftest import assert_close, labels_with_positives


def test_hand_computed_two_rows():
    """Rows e1, 2 e2, 3 e1 with labels 0, 1, 0 at t = 0.5: row 0 sees row 1 at cosine 0 (negative) and row 2
    at cosine 1 (positive), so L_0 = log(e^0 + e^2) - 2; row 1 has no positive; row 2 mirrors row 0."""
    anchors = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0])
    t = 0.5
    # Row 0: others are row 1 (cos 0, negative) and row 2 (cos 1, positive): log(e^0 + e^2) - 2.
    # Row 1: no positive -> 0, left out of the mean. Row 2: same as row 0.
    expected_row = math.log(1 + math.exp(2)) - 2
    loss = ref.contrastive_loss(anchors, None, labels, temperature=t, reduction="none")
    assert torch.allclose(loss, torch.tensor([expected_row, 0.0, expected_row], dtype=torch.float64))
    assert ref.contrastive_loss(anchors, None, labels, temperature=t).item() == pytest.approx(expected_row)


def test_textbook_forms_equal_general_op(generator):
    z1, z2 = torch.randn(2, 17, 9, generator=generator, dtype=torch.float64)
    negatives = torch.randn(5, 9, generator=generator, dtype=torch.float64)
    anchors = torch.cat([z1, z2])
    ids = torch.arange(17).repeat(2)
    general = ref.contrastive_loss(anchors, torch.cat([anchors, negatives]), ids,
                                   torch.cat([ids, torch.full((5,), -1)]), temperature=0.3, exclude_self=True)
    assert_close(ref.nt_xent(z1, z2, temperature=0.3, negatives=negatives), general, 1e-12, "nt_xent")

    labels = labels_with_positives(34, 4, generator)
    assert_close(ref.supcon(anchors, labels, temperature=0.2),
                 ref.contrastive_loss(anchors, None, labels, temperature=0.2), 1e-12, "supcon")

    query, key = z1, z2
    general = ref.contrastive_loss(query, torch.cat([key, negatives]), torch.arange(17),
                                   torch.cat([torch.arange(17), torch.full((5,), -1)]), temperature=0.07)
    assert_close(ref.info_nce(query, key, negatives=negatives, temperature=0.07), general, 1e-12, "info_nce")

    one_way = ref.contrastive_loss(query, key, temperature=0.1)
    other_way = ref.contrastive_loss(key, query, temperature=0.1)
    assert_close(ref.clip_loss(query, key, logit_scale=10.0), (one_way + other_way) / 2, 1e-12, "clip")


def test_ppcl_labels_layout():
    assert ref.ppcl_labels(2, 1).tolist() == [0, 1, 0, 1, 2, 2, 2, 2]


def test_reference_gradcheck(generator):
    anchors = torch.randn(5, 3, generator=generator, dtype=torch.float64).requires_grad_()
    candidates = torch.randn(7, 3, generator=generator, dtype=torch.float64).requires_grad_()
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    labels_a, labels_c = torch.tensor([0, 1, 1, 2, 3]), torch.tensor([0, 1, -1, 2, 1, 0, 4])
    assert torch.autograd.gradcheck(
        lambda a, c, t: ref.contrastive_loss(a, c, labels_a, labels_c, temperature=t, exclude_self=True),
        (anchors, candidates, t))


def test_similarity_schedule():
    linear = L.SimilaritySchedule(start=0.9, end=0.5, total_steps=100, warmup_steps=20, shape="linear")
    assert linear(0) == linear(20) == pytest.approx(0.9)
    assert linear(60) == pytest.approx(0.7)
    assert linear(100) == linear(1000) == pytest.approx(0.5)
    cosine = L.SimilaritySchedule(start=0.9, end=0.5, total_steps=100, shape="cosine")
    assert cosine(50) == pytest.approx(0.7)
    assert cosine(10) > linear(28)  # the cosine path starts slower than the linear one
    values = [cosine(s) for s in range(0, 101, 5)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="start"):
        L.SimilaritySchedule(start=1.5)
    with pytest.raises(ValueError, match="warmup_steps"):
        L.SimilaritySchedule(total_steps=10, warmup_steps=11)
    with pytest.raises(ValueError, match="step"):
        cosine(-1)


def test_positive_pair_module_uses_schedule(generator):
    a, b = torch.randn(2, 10, 4, generator=generator, dtype=torch.float64)
    schedule = L.SimilaritySchedule(start=0.9, end=0.1, total_steps=10, shape="linear")
    module = L.PositivePairLoss(schedule, mode="floor")
    assert module(a, b, step=5).item() == pytest.approx(
        ref.positive_pair_loss(a, b, 0.5, mode="floor").item(), rel=1e-9)
    with pytest.raises(ValueError, match="step"):
        module(a, b)


# ------------------------------------------------------------------------------- variants of the op (issue 15)
def loop_variant(anchors, candidates, anchor_labels, candidate_labels, t, exclude_self, denominator, beta, tau_plus,
                 weight):
    """The variant formulas of reference.py written as plain loops over rows and pairs, in exp space (float64,
    moderate temperatures): the independent implementation contrastive_loss_variant is checked against."""
    u = anchors / anchors.norm(dim=1, keepdim=True)
    v = candidates / candidates.norm(dim=1, keepdim=True)
    row_losses = []
    for i in range(u.shape[0]):
        positives, negatives = [], []
        for j in range(v.shape[0]):
            if exclude_self and i == j:
                continue
            s = (u[i] @ v[j]) / t
            is_positive = int(candidate_labels[j]) >= 0 and int(candidate_labels[j]) == int(anchor_labels[i])
            (positives if is_positive else negatives).append(s)
        if not positives:
            continue
        n = len(negatives)
        if n == 0:
            negative_mass = torch.zeros((), dtype=u.dtype)
        elif beta == 0 and tau_plus == 0:
            negative_mass = sum(torch.exp(s) for s in negatives)
        else:
            reweighted = n * sum(torch.exp((1 + beta) * s) for s in negatives) / sum(torch.exp(beta * s)
                                                                                    for s in negatives)
            positive_mean_mass = sum(torch.exp(s) for s in positives) / len(positives)
            negative_mass = torch.maximum((reweighted - tau_plus * n * positive_mean_mass) / (1 - tau_plus),
                                          n * torch.exp(-1 / t))
        if denominator == "all":
            log_denominator = torch.log(sum(torch.exp(s) for s in positives) + negative_mass)
        elif denominator == "negatives":
            log_denominator = torch.log(negative_mass)
        else:
            log_denominator = sum(torch.log(torch.exp(s) + negative_mass) for s in positives) / len(positives)
        w = 1.0 if weight is None else weight[i]
        row_losses.append(log_denominator - w * sum(positives) / len(positives))
    return sum(row_losses) / max(len(row_losses), 1)


def variant_inputs(generator, n_rows=7, n_cols=9, dim=4):
    anchors = torch.randn(n_rows, dim, generator=generator, dtype=torch.float64).requires_grad_()
    candidates = torch.randn(n_cols, dim, generator=generator, dtype=torch.float64).requires_grad_()
    anchor_labels = torch.tensor([0, 1, 2, 1, 3, 0, 5])[:n_rows]   # 5: no positive
    candidate_labels = torch.tensor([0, 1, -1, 2, 1, 0, 1, 3, -1])[:n_cols]
    t = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    weight = (1 + torch.rand(n_rows, generator=generator, dtype=torch.float64)).requires_grad_()
    return anchors, candidates, anchor_labels, candidate_labels, t, weight


@pytest.mark.parametrize("exclude_self", [False, True])
def test_variant_defaults_are_the_plain_op(generator, exclude_self):
    anchors, candidates, anchor_labels, candidate_labels, t, _ = variant_inputs(generator)
    inputs = (anchors, candidates, t)
    plain = torch.autograd.functional.jacobian(
        lambda a, c, temp: ref.contrastive_loss(a, c, anchor_labels, candidate_labels, temperature=temp,
                                                exclude_self=exclude_self), inputs)
    variant = torch.autograd.functional.jacobian(
        lambda a, c, temp: ref.contrastive_loss_variant(a, c, anchor_labels, candidate_labels, temperature=temp,
                                                        exclude_self=exclude_self), inputs)
    for p, q in zip(plain, variant):
        assert_close(q, p, 1e-12, "gradient")
    assert_close(ref.contrastive_loss_variant(anchors, candidates, anchor_labels, candidate_labels, temperature=t,
                                              exclude_self=exclude_self),
                 ref.contrastive_loss(anchors, candidates, anchor_labels, candidate_labels, temperature=t,
                                      exclude_self=exclude_self), 1e-12, "loss")


@pytest.mark.parametrize("denominator", ["all", "negatives", "per_positive"])
@pytest.mark.parametrize("beta, tau_plus", [(0.0, 0.0), (1.5, 0.0), (0.0, 0.3), (0.7, 0.1), (-0.5, 0.2)])
@pytest.mark.parametrize("weighted, exclude_self", [(False, True), (True, False)])
def test_variant_against_loops(generator, denominator, beta, tau_plus, weighted, exclude_self):
    """Values and gradients (features, temperature, positive weights) in float64 against the loops."""
    anchors, candidates, anchor_labels, candidate_labels, t, weight = variant_inputs(generator)
    if exclude_self:
        candidates = torch.cat([anchors.detach(), candidates.detach()[: 2]]).requires_grad_()
        candidate_labels = torch.cat([anchor_labels, candidate_labels[:2]])
    weight = weight if weighted else None
    inputs = [x for x in (anchors, candidates, t, weight) if x is not None]

    def ours(a, c, temp, *w):
        return ref.contrastive_loss_variant(a, c, anchor_labels, candidate_labels, temperature=temp,
                                            exclude_self=exclude_self, denominator=denominator, beta=beta,
                                            tau_plus=tau_plus, positive_weight=w[0] if w else None)

    def loops(a, c, temp, *w):
        return loop_variant(a, c, anchor_labels, candidate_labels, temp, exclude_self, denominator, beta, tau_plus,
                            w[0] if w else None)

    assert_close(ours(*inputs), loops(*inputs), 1e-12, "loss")
    for mine, theirs in zip(torch.autograd.grad(ours(*inputs), inputs), torch.autograd.grad(loops(*inputs), inputs)):
        assert_close(mine, theirs, 1e-10, "gradient")


def test_variant_gradcheck(generator):
    anchors, candidates, anchor_labels, candidate_labels, t, weight = variant_inputs(generator, 5, 6, 3)
    for denominator, beta, tau_plus in (("negatives", 0.0, 0.0), ("per_positive", 0.0, 0.0), ("all", 1.0, 0.2),
                                        ("per_positive", 0.5, 0.1)):
        assert torch.autograd.gradcheck(
            lambda a, c, temp, w: ref.contrastive_loss_variant(
                a, c, anchor_labels, candidate_labels, temperature=temp, denominator=denominator, beta=beta,
                tau_plus=tau_plus, positive_weight=w), (anchors, candidates, t, weight))


def test_hard_negative_clamp_is_reached_and_differentiated(generator):
    """tau_plus = 0.9 on well-aligned positives makes the debiased estimate fall below n e^{-1/t}: the clamp then
    holds the loss at log(e^{s_p} + n e^{-1/t}) - s_p, and the temperature gradient goes through the bound."""
    z1 = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    z2 = z1 + 0.01 * torch.randn(6, 5, generator=generator, dtype=torch.float64)
    t = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    loss = ref.contrastive_loss_variant(torch.cat([z1, z2]), None, torch.arange(6).repeat(2), temperature=t,
                                        tau_plus=0.9, reduction="none")
    u = ref.l2_normalize(torch.cat([z1, z2]))
    positive = (u * u.roll(6, dims=0)).sum(1) / t
    clamped = torch.log(torch.exp(positive) + 10 * torch.exp(-1 / t)) - positive
    assert_close(loss, clamped, 1e-12, "clamped loss")
    assert_close(torch.autograd.grad(loss.sum(), t)[0], torch.autograd.grad(clamped.sum(), t)[0], 1e-12, "dL/dt")


def test_rows_without_negatives():
    """A row whose candidates are all positives: Ng = 0, so "negatives" gives -inf (lightly's DCLLoss with one
    pair does too), "per_positive" gives 0 (pytorch-metric-learning's NTXentLoss does too), "all" the plain op."""
    x = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    assert ref.contrastive_loss_variant(x, None, labels, denominator="negatives").item() == -math.inf
    assert ref.contrastive_loss_variant(x, None, labels, denominator="per_positive").item() == 0.0
    for beta, tau_plus in ((0.0, 0.0), (1.0, 0.5)):
        assert ref.contrastive_loss_variant(x, None, labels, beta=beta, tau_plus=tau_plus).item() == 0.0


@pytest.mark.parametrize("denominator", ["all", "negatives", "per_positive"])
def test_variant_fp32_at_small_temperature(generator, denominator):
    """Log space throughout: t = 0.01 with beta = 2 in fp32 stays finite and agrees with float64."""
    anchors, candidates, anchor_labels, candidate_labels, _, weight = variant_inputs(generator)
    kwargs = dict(temperature=0.01, denominator=denominator, beta=2.0, tau_plus=0.2, reduction="none")
    fp64 = ref.contrastive_loss_variant(anchors.detach(), candidates.detach(), anchor_labels, candidate_labels,
                                        **kwargs)
    fp32 = ref.contrastive_loss_variant(anchors.detach().float(), candidates.detach().float(), anchor_labels,
                                        candidate_labels, **kwargs)
    assert torch.isfinite(fp32).all()
    assert_close(fp32, fp64, 1e-5, "fp32 row losses")


# Textbook forms: the named losses of synthcl_fast.losses mapped onto the variants, against the authors' forms.
@pytest.mark.parametrize("beta, tau_plus", [(0.0, 0.0), (1.0, 0.0), (0.0, 0.1), (0.5, 0.1), (2.0, 0.05)])
def test_hard_negative_nt_xent_and_info_nce_textbook(generator, beta, tau_plus):
    """nt_xent / info_nce with beta, tau_plus against HCL's estimator in Robinson et al.'s exponential form."""
    z1, z2 = (torch.randn(9, 6, generator=generator, dtype=torch.float64).requires_grad_() for _ in range(2))
    queue = torch.randn(5, 6, generator=generator, dtype=torch.float64).requires_grad_()
    t = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    cases = [
        (lambda a, b, q, temp: L.nt_xent(a, b, temperature=temp, beta=beta, tau_plus=tau_plus, backend="reference"),
         lambda a, b, q, temp: ref.hard_negative_nt_xent(a, b, temperature=temp, beta=beta, tau_plus=tau_plus)),
        (lambda a, b, q, temp: L.info_nce(a, b, negatives=q, temperature=temp, beta=beta, tau_plus=tau_plus),
         lambda a, b, q, temp: ref.hard_negative_info_nce(a, b, negatives=q, temperature=temp, beta=beta,
                                                          tau_plus=tau_plus)),
    ]
    inputs = (z1, z2, queue, t)
    for ours, textbook in cases:
        assert_close(ours(*inputs), textbook(*inputs), 1e-12, "loss")
        for mine, theirs in zip(torch.autograd.grad(ours(*inputs), inputs, allow_unused=True),
                                torch.autograd.grad(textbook(*inputs), inputs, allow_unused=True)):
            if theirs is not None:
                assert_close(mine, theirs, 1e-10, "gradient")


@pytest.mark.parametrize("sigma", [None, 0.5, 3.0])
def test_dcl_textbook(generator, sigma):
    z1, z2 = (torch.randn(8, 5, generator=generator, dtype=torch.float64).requires_grad_() for _ in range(2))
    t = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    weight = None if sigma is None else ref.von_mises_fisher_weights(z1, z2, sigma).repeat(2)
    inputs = (z1, z2, t)
    ours = L.dcl(*inputs[:2], temperature=t, sigma=sigma)
    textbook = ref.dcl(*inputs[:2], temperature=t, positive_weight=weight)
    assert_close(ours, textbook, 1e-12, "loss")
    for mine, theirs in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(textbook, inputs)):
        assert_close(mine, theirs, 1e-10, "gradient")
