"""The drop-ins of synthcl_fast.compat against the real libraries: values and gradients, fp32, relative error
under 1e-5, on random inputs. Each library's tests are skipped when it is not installed (.ci/run installs them).

solo-learn 1.0.2 (its only release on PyPI) pins torch==1.9.1 and its package __init__ imports its whole
training stack (pytorch-lightning 1.4, lightning-bolts, wandb, DALI...), which cannot be installed beside a
current torch. It is installed with --no-deps and its loss file, solo/losses/simclr.py (which imports only
torch), is loaded from the installed package without running solo/__init__.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from conftest import assert_close
from ecosystem_helpers import RTOL, assert_same_loss_and_grads, loss_and_grads
from synthcl_fast.compat import lightly as our_lightly
from synthcl_fast.compat import open_clip as our_open_clip
from synthcl_fast.compat import pytorch_metric_learning as our_pml
from synthcl_fast.compat import solo as our_solo


def features(*shape, seed=0, requires_grad=True):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).requires_grad_(requires_grad)


def shuffled(labels: torch.Tensor, seed=0) -> torch.Tensor:
    return labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))]


# ----------------------------------------------------------------------------------------------- lightly
@pytest.fixture(scope="module")
def lightly_loss():
    return pytest.importorskip("lightly.loss", reason="lightly is not installed")


@pytest.mark.parametrize("n, dim", [(1, 4), (6, 33), (17, 8)])
@pytest.mark.parametrize("learned_temperature", [False, True])
def test_lightly_ntxent(lightly_loss, n, dim, learned_temperature):
    temperature = torch.tensor(0.3, requires_grad=True) if learned_temperature else torch.tensor(0.3)
    assert_same_loss_and_grads(
        lambda a, b, t: our_lightly.NTXentLoss(temperature=t if learned_temperature else 0.3)(a, b),
        lambda a, b, t: lightly_loss.NTXentLoss(temperature=t if learned_temperature else 0.3)(a, b),
        features(n, dim, seed=1), features(n, dim, seed=2), temperature)


def test_lightly_memory_bank(lightly_loss):
    """Three steps with a bank of 20 and batches of 8: the third write wraps around (lightly cuts the batch)."""
    theirs = lightly_loss.NTXentLoss(temperature=0.2, memory_bank_size=(20, 16))
    ours = our_lightly.NTXentLoss(temperature=0.2, memory_bank_size=(20, 16))
    ours.bank.copy_(theirs.memory_bank.bank)
    for step in range(3):
        out0, out1 = features(8, 16, seed=10 + step), features(8, 16, seed=20 + step)
        assert_same_loss_and_grads(ours, theirs, out0, out1)
        assert_close(ours.bank, theirs.memory_bank.bank, RTOL, f"bank after step {step}")
        assert int(ours.bank_ptr) == int(theirs.memory_bank.bank_ptr)
    # Without grad (evaluation) the bank is read but not written, in both.
    with torch.no_grad():
        out0, out1 = features(8, 16, seed=30, requires_grad=False), features(8, 16, seed=31, requires_grad=False)
        assert_close(ours(out0, out1), theirs(out0, out1), RTOL, "loss without grad")
    assert_close(ours.bank, theirs.memory_bank.bank, RTOL, "bank after a step without grad")


def test_lightly_rejects_what_lightly_rejects(lightly_loss):
    for kwargs in ({"temperature": 0.0}, {"memory_bank_size": 16}, {"memory_bank_size": (4, 4, 4)}):
        with pytest.raises(ValueError):
            lightly_loss.NTXentLoss(**kwargs)
        with pytest.raises(ValueError):
            our_lightly.NTXentLoss(**kwargs)


# ---------------------------------------------------------------------------------- pytorch-metric-learning
@pytest.fixture(scope="module")
def pml_losses():
    return pytest.importorskip("pytorch_metric_learning.losses", reason="pytorch-metric-learning is not installed")


# Two views of 7 instances and 3 rows whose label appears once (no positive); labels may be negative.
SIMCLR_LABELS = shuffled(torch.cat([torch.arange(-3, 4).repeat(2), torch.tensor([10, 11, 12])]))
CLASS_LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 3, 3, 3, 4, -2, 1])


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_pml_ntxent(pml_losses, temperature):
    assert_same_loss_and_grads(
        lambda x: our_pml.NTXentLoss(temperature)(x, SIMCLR_LABELS),
        lambda x: pml_losses.NTXentLoss(temperature)(x, SIMCLR_LABELS),
        features(len(SIMCLR_LABELS), 24))


def test_pml_ntxent_ref_emb(pml_losses):
    labels, ref_labels = torch.tensor([0, 1, 2, 3, 9]), shuffled(torch.arange(8), seed=3)
    assert_same_loss_and_grads(
        lambda x, ref: our_pml.NTXentLoss(0.1)(x, labels, ref_emb=ref, ref_labels=ref_labels),
        lambda x, ref: pml_losses.NTXentLoss(0.1)(x, labels, ref_emb=ref, ref_labels=ref_labels),
        features(5, 12, seed=1), features(8, 12, seed=2))


def test_pml_ntxent_several_positives_raise(pml_losses):
    x = features(len(CLASS_LABELS), 8)
    pml_losses.NTXentLoss()(x, CLASS_LABELS)  # the library scores each positive pair on its own ...
    with pytest.raises(NotImplementedError, match="several positives"):  # ... which the fused op does not
        our_pml.NTXentLoss()(x, CLASS_LABELS)


@pytest.mark.parametrize("temperature", [0.1, 0.7])
def test_pml_supcon(pml_losses, temperature):
    assert_same_loss_and_grads(
        lambda x: our_pml.SupConLoss(temperature)(x, CLASS_LABELS),
        lambda x: pml_losses.SupConLoss(temperature)(x, CLASS_LABELS),
        features(len(CLASS_LABELS), 20))


def test_pml_supcon_ref_emb(pml_losses):
    labels, ref_labels = torch.tensor([0, 1, 2, 0, 5]), torch.tensor([2, 0, 0, 1, 3, 3, 2, 4])
    assert_same_loss_and_grads(
        lambda x, ref: our_pml.SupConLoss()(x, labels, ref_emb=ref, ref_labels=ref_labels),
        lambda x, ref: pml_losses.SupConLoss()(x, labels, ref_emb=ref, ref_labels=ref_labels),
        features(5, 12, seed=1), features(8, 12, seed=2))


def test_pml_supcon_ref_emb_without_ref_labels(pml_losses):
    labels = torch.tensor([0, 1, 0, 2, 1, 2])
    assert_same_loss_and_grads(
        lambda x, ref: our_pml.SupConLoss()(x, labels, ref_emb=ref),
        lambda x, ref: pml_losses.SupConLoss()(x, labels, ref_emb=ref),
        features(6, 12, seed=1), features(6, 12, seed=2))


def test_pml_supcon_without_negatives_is_zero(pml_losses):
    x, labels = features(5, 8), torch.full((5,), 3)
    ours, theirs = our_pml.SupConLoss()(x, labels), pml_losses.SupConLoss()(x, labels)
    assert float(theirs.detach()) == 0.0 and float(ours.detach()) == 0.0


def test_pml_unsupported_options_raise(pml_losses):
    x = features(4, 8)
    for loss_class in (our_pml.NTXentLoss, our_pml.SupConLoss):
        with pytest.raises(NotImplementedError, match="indices_tuple"):
            loss_class()(x, torch.tensor([0, 0, 1, 1]), indices_tuple=(torch.tensor([0]), torch.tensor([1]),
                                                                         torch.tensor([0]), torch.tensor([2])))
        with pytest.raises(NotImplementedError, match="distance"):
            loss_class(distance=pml_losses.NTXentLoss().distance)
        with pytest.raises(ValueError, match="cannot both be None"):
            loss_class()(x)


# ------------------------------------------------------------------------------------------------ solo-learn
@pytest.fixture(scope="module")
def solo_simclr():
    spec = importlib.util.find_spec("solo")  # finds the package without running solo/__init__.py
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("solo-learn is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "losses" / "simclr.py"
    module_spec = importlib.util.spec_from_file_location("solo_losses_simclr", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.simclr_loss_func


@pytest.mark.parametrize("n, dim, temperature", [(1, 5, 0.1), (9, 32, 0.1), (16, 7, 0.5)])
def test_solo_simclr(solo_simclr, n, dim, temperature):
    assert_same_loss_and_grads(
        lambda a, b: our_solo.simclr_loss_func(a, b, temperature=temperature),
        lambda a, b: solo_simclr(a, b, temperature=temperature),
        features(n, dim, seed=1), features(n, dim, seed=2))


def test_solo_extra_pos_mask_raises(solo_simclr):
    z1, z2 = features(3, 4, seed=1), features(3, 4, seed=2)
    mask = torch.zeros(6, 6, dtype=torch.bool)
    solo_simclr(z1, z2, extra_pos_mask=mask)
    with pytest.raises(NotImplementedError, match="extra_pos_mask"):
        our_solo.simclr_loss_func(z1, z2, extra_pos_mask=mask)


# ------------------------------------------------------------------------------------------------- open_clip
@pytest.fixture(scope="module")
def open_clip_loss():
    return pytest.importorskip("open_clip.loss", reason="open_clip_torch is not installed")


def clip_inputs(batch, dim, *, requires_grad=True):
    """Raw features (normalized by the loss function, as a CLIP model's encode_* does) and log(logit_scale)."""
    log_scale = torch.tensor(2.659, requires_grad=requires_grad)  # open_clip's init: log(1 / 0.07)
    return features(batch, dim, seed=1), features(batch, dim, seed=2), log_scale


@pytest.mark.parametrize("batch, dim", [(1, 8), (10, 32), (23, 16)])
def test_open_clip(open_clip_loss, batch, dim):
    def run(loss_class):
        return lambda x, y, log_scale: loss_class()(F.normalize(x, dim=-1), F.normalize(y, dim=-1), log_scale.exp())
    assert_same_loss_and_grads(run(our_open_clip.ClipLoss), run(open_clip_loss.ClipLoss), *clip_inputs(batch, dim))


def test_open_clip_output_dict_and_logit_bias(open_clip_loss):
    """A scalar logit bias cancels in the softmax: same loss and feature gradients, and a bias gradient that is
    exactly 0 here and 0 up to fp32 rounding in open_clip."""
    def run(loss_class):
        def loss(x, y, log_scale, bias):
            return loss_class(cache_labels=True)(F.normalize(x, dim=-1), F.normalize(y, dim=-1), log_scale.exp(),
                                                 logit_bias=bias, output_dict=True)["contrastive_loss"]
        return loss
    inputs = (*clip_inputs(6, 8), torch.tensor(-10.0, requires_grad=True))
    our_loss, our_grads = loss_and_grads(run(our_open_clip.ClipLoss), *inputs)
    their_loss, their_grads = loss_and_grads(run(open_clip_loss.ClipLoss), *inputs)
    assert_close(our_loss, their_loss, RTOL, "loss")
    for index in range(3):
        assert_close(our_grads[index], their_grads[index], RTOL, f"gradient of input {index}")
    assert float(our_grads[3]) == 0.0
    assert abs(float(their_grads[3])) < 36 * torch.finfo(torch.float32).eps  # 6 x 6 logits, each rounded once


def test_open_clip_needs_normalized_features(open_clip_loss):
    x, y, log_scale = clip_inputs(4, 8, requires_grad=False)
    with pytest.raises(ValueError, match="L2-normalized"):
        our_open_clip.ClipLoss()(x, F.normalize(y, dim=-1), log_scale.exp())
    with pytest.raises(NotImplementedError, match="use_horovod"):
        our_open_clip.ClipLoss(use_horovod=True)


def test_loss_and_grads_sees_a_difference():
    """The comparison itself can fail: a 1e-4 change of temperature is caught."""
    x, y = features(6, 8, seed=1), features(6, 8, seed=2)
    ours, _ = loss_and_grads(lambda a, b: our_solo.simclr_loss_func(a, b, temperature=0.1), x, y)
    shifted, _ = loss_and_grads(lambda a, b: our_solo.simclr_loss_func(a, b, temperature=0.1 * (1 + 1e-4)), x, y)
    with pytest.raises(AssertionError):
        assert_close(shifted, ours, RTOL, "loss")
