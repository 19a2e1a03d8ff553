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
