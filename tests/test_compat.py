"""The drop-ins of synthcl_fast.compat against the real libraries: values and gradients, fp32, relative error
under 1e-5, on random inputs. Each library's tests are skipped when it is not installed (.ci/run installs them).

solo-learn 1.0.2 (its only release on PyPI) pins torch==1.9.1 and its package __init__ imports its whole
training stack (pytorch-lightning 1.4, lightning-bolts, wandb, DALI...), which cannot be installed beside a
current torch. It is installed with --no-deps and its loss file, solo/losses/simclr.py (which imports only
torch), is loaded from the installed package without running solo/__init__.py.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
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


# lightly's DCLW weights copy a tensor with torch.tensor(tensor), which warns on every call.
pytestmark = pytest.mark.filterwarnings("ignore:To copy construct from a tensor:UserWarning")


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


def test_lightly_negative_temperature_is_refused(lightly_loss):
    """A documented difference (docs/ecosystem.md): lightly takes negative temperatures, the drop-ins refuse them."""
    x, y = features(4, 8, seed=1), features(4, 8, seed=2)
    for name in ("NTXentLoss", "DCLLoss", "DCLWLoss"):
        assert torch.isfinite(getattr(lightly_loss, name)(temperature=-1.0)(x, y))
        with pytest.raises(ValueError, match="negative temperatures"):
            getattr(our_lightly, name)(temperature=-1.0)


@pytest.mark.parametrize("name", ["DCLLoss", "DCLWLoss"])
@pytest.mark.parametrize("n, dim", [(2, 2), (3, 5), (16, 33)])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_lightly_dcl(lightly_loss, name, n, dim, temperature):
    """Values and gradients, the temperature learned (a tensor that requires grad) too."""
    assert_same_loss_and_grads(
        lambda a, b, t: getattr(our_lightly, name)(temperature=t)(a, b),
        lambda a, b, t: getattr(lightly_loss, name)(temperature=t)(a, b),
        features(n, dim, seed=1), features(n, dim, seed=2), torch.tensor(temperature, requires_grad=True))


def test_lightly_dcl_weight_fn_with_gradient(lightly_loss):
    """lightly's documented custom weight_fn: not detached, so its gradient reaches the features."""
    def weight_fn(out0, out1):
        return torch.sum((out0 - out1) ** 2, dim=1)
    assert_same_loss_and_grads(our_lightly.DCLLoss(weight_fn=weight_fn), lightly_loss.DCLLoss(weight_fn=weight_fn),
                               features(7, 6, seed=1), features(7, 6, seed=2))


@pytest.mark.parametrize("sigma", [1e-7, 0.5, 1e4])
def test_lightly_negative_mises_fisher_weights(lightly_loss, sigma):
    from lightly.loss.dcl_loss import negative_mises_fisher_weights
    out0, out1 = features(5, 3, seed=1, requires_grad=False), features(5, 3, seed=2, requires_grad=False)
    assert_close(our_lightly.negative_mises_fisher_weights(out0, out1, sigma),
                 negative_mises_fisher_weights(out0, out1, sigma), RTOL, "weights")


def test_lightly_dcl_single_pair_is_minus_infinity(lightly_loss):
    """One image, two views: no negative at all, so the decoupled loss is -inf, in lightly as in the drop-in."""
    x, y = features(1, 4, seed=1), features(1, 4, seed=2)
    assert lightly_loss.DCLLoss()(x, y).item() == our_lightly.DCLLoss()(x, y).item() == -math.inf


def ntxent_loops(z1, z2, t):
    """SimCLR's Algorithm 1 as loops (float64): the independent form lightly's own tests compare NTXentLoss with."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n, total = z1.shape[0], 0.0
    for i in range(2 * n):
        denominator = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total -= math.log(math.exp(float(z[i] @ z[(i + n) % (2 * n)]) / t) / denominator)
    return total / (2 * n)


def dcl_loops(z1, z2, t):
    """The decoupled loss as loops (float64): every row but i and its other view is a negative."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n, total = z1.shape[0], 0.0
    for i in range(2 * n):
        other = (i + n) % (2 * n)
        negatives = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k not in (i, other))
        total += math.log(negatives) - float(z[i] @ z[other]) / t
    return total / (2 * n)


@pytest.mark.parametrize("n, dim", [(1, 3), (2, 1), (4, 16)])
@pytest.mark.parametrize("temperature", [0.1, 1.0, 10.0])
def test_lightly_properties(n, dim, temperature):
    """What lightly's own test files check, on the drop-ins: the loop forms, symmetry in the views, and the known
    value log(2n - 1) (log(M + 1) with a bank of M) when every row points the same way."""
    out0, out1 = features(n, dim, seed=1, requires_grad=False), features(n, dim, seed=2, requires_grad=False)
    ntxent = our_lightly.NTXentLoss(temperature=temperature)
    assert float(ntxent(out0, out1)) == pytest.approx(ntxent_loops(out0, out1, temperature), rel=1e-5)
    assert float(ntxent(out0, out1)) == pytest.approx(float(ntxent(out1, out0)), rel=1e-6)
    if n > 1:
        dcl = our_lightly.DCLLoss(temperature=temperature)
        assert float(dcl(out0, out1)) == pytest.approx(dcl_loops(out0, out1, temperature), rel=1e-5)
        for loss in (dcl, our_lightly.DCLWLoss(temperature=temperature)):
            assert float(loss(out0, out1)) == pytest.approx(float(loss(out1, out0)), rel=1e-6)
    ray = torch.rand(n, 1, generator=torch.Generator().manual_seed(3)) * torch.tensor([[1.0, 2.0]])
    assert float(ntxent(ray, 3 * ray)) == pytest.approx(math.log(2 * n - 1) if n > 1 else 0.0, abs=1e-5)
    bank = our_lightly.NTXentLoss(temperature=temperature, memory_bank_size=(8, 2))
    for _ in range(8 // n + 2):  # fill the bank with the same ray
        loss = bank(ray.clone().requires_grad_(), 3 * ray)
    assert float(loss.detach()) == pytest.approx(math.log(8 + 1), abs=1e-5)


# ---------------------------------------------------------------------------------- pytorch-metric-learning
@pytest.fixture(scope="module")
def pml_losses():
    return pytest.importorskip("pytorch_metric_learning.losses", reason="pytorch-metric-learning is not installed")


# Two views of 7 instances and 3 rows whose label appears once (no positive); labels may be negative.
SIMCLR_LABELS = shuffled(torch.cat([torch.arange(-3, 4).repeat(2), torch.tensor([10, 11, 12])]))
CLASS_LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 3, 3, 3, 4, -2, 1])


@pytest.mark.parametrize("name", ["NTXentLoss", "SupConLoss"])
@pytest.mark.parametrize("labels", [SIMCLR_LABELS, CLASS_LABELS, torch.tensor([0, 0, 1, 2])],
                         ids=["simclr", "classes", "documented_example"])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_pml(pml_losses, name, labels, temperature):
    """Several positives per anchor included (NT-Xent: each positive pair against its anchor's negatives)."""
    assert_same_loss_and_grads(
        lambda x: getattr(our_pml, name)(temperature)(x, labels),
        lambda x: getattr(pml_losses, name)(temperature)(x, labels),
        features(len(labels), 24))


@pytest.mark.parametrize("name", ["NTXentLoss", "SupConLoss"])
def test_pml_ref_emb(pml_losses, name):
    for labels, ref_labels in ((torch.tensor([0, 1, 2, 3, 9]), shuffled(torch.arange(8), seed=3)),
                               (torch.tensor([0, 1, 2, 0, 5]), torch.tensor([2, 0, 0, 1, 3, 3, 2, 4]))):
        assert_same_loss_and_grads(
            lambda x, ref: getattr(our_pml, name)(0.1)(x, labels, ref_emb=ref, ref_labels=ref_labels),
            lambda x, ref: getattr(pml_losses, name)(0.1)(x, labels, ref_emb=ref, ref_labels=ref_labels),
            features(5, 12, seed=1), features(8, 12, seed=2))


@pytest.mark.parametrize("name", ["NTXentLoss", "SupConLoss"])
@pytest.mark.parametrize("labels", [torch.arange(6), torch.tensor([0, 1, 0, 2, 1, 2])], ids=["ids", "classes"])
def test_pml_same_labels_object_leaves_out_self_pairs(pml_losses, name, labels):
    """The library drops the pairs (i, i) when ref_labels *is* labels (issue 15: the drop-in returned 5.80 where
    the library returns 0), and also when ref_emb comes without ref_labels; an equal copy keeps them."""
    for ref_labels in (labels, labels.clone(), None):  # (the library's zero loss has no graph to ref_emb)
        assert_same_loss_and_grads(
            lambda x, ref: getattr(our_pml, name)(0.1)(x, labels, ref_emb=ref, ref_labels=ref_labels),
            lambda x, ref: getattr(pml_losses, name)(0.1)(x, labels, ref_emb=ref, ref_labels=ref_labels),
            features(6, 12, seed=1), features(6, 12, seed=2, requires_grad=False))
    x, ref = features(6, 4, seed=1), features(6, 4, seed=2)
    if name == "NTXentLoss" and labels.unique().numel() == 6:
        assert getattr(pml_losses, name)()(x, labels, ref_emb=ref, ref_labels=labels).item() == 0.0
        assert getattr(our_pml, name)()(x, labels, ref_emb=ref, ref_labels=labels).item() == 0.0


def mined(pml, miner, x, labels, ref=None, ref_labels=None):
    from pytorch_metric_learning import miners
    from pytorch_metric_learning.utils import loss_and_miner_utils
    if miner == "all_pairs":
        return loss_and_miner_utils.get_all_pairs_indices(labels, ref_labels)
    make = {"MultiSimilarityMiner": lambda: miners.MultiSimilarityMiner(0.1),
            "TripletMarginMiner": lambda: miners.TripletMarginMiner(margin=0.3),
            "PairMarginMiner": lambda: miners.PairMarginMiner(pos_margin=0.2, neg_margin=1.3)}[miner]
    return make()(x.detach(), labels, None if ref is None else ref.detach(), ref_labels)


@pytest.mark.parametrize("name", ["NTXentLoss", "SupConLoss"])
@pytest.mark.parametrize("miner", ["all_pairs", "MultiSimilarityMiner", "TripletMarginMiner", "PairMarginMiner"])
@pytest.mark.parametrize("use_ref", [False, True])
def test_pml_indices_tuple(pml_losses, name, miner, use_ref):
    """Miner output: the loss over the listed pairs (triplets list pairs several times), with and without labels."""
    generator = torch.Generator().manual_seed(5)
    x, labels = features(20, 12, seed=1), torch.randint(0, 4, (20,), generator=generator)
    ref, ref_labels = (features(15, 12, seed=2), torch.randint(0, 4, (15,), generator=generator)) if use_ref \
        else (None, None)
    indices = mined(pml_losses, miner, x, labels, ref, ref_labels)
    assert all(len(i) > 1 for i in indices), "the miner found no pairs: the case checks nothing"
    for with_labels in (True, False):
        def call(loss_class):
            if use_ref:
                return lambda a, r: loss_class(0.2)(a, labels if with_labels else None, indices, r, ref_labels)
            return lambda a: loss_class(0.2)(a, labels if with_labels else None, indices)
        inputs = (x, ref) if use_ref else (x,)
        assert_same_loss_and_grads(call(getattr(our_pml, name)), call(getattr(pml_losses, name)), *inputs)


def test_pml_indices_tuple_repeated_pairs(pml_losses):
    """NT-Xent counts a pair as often as it is listed (in the numerator and among the negatives); SupCon once."""
    a1, p = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([1, 1, 0, 3, 3])
    a2, n = torch.tensor([0, 0, 0, 1, 2, 2, 3]), torch.tensor([2, 2, 3, 2, 0, 0, 1])
    for name in ("NTXentLoss", "SupConLoss"):
        assert_same_loss_and_grads(lambda x: getattr(our_pml, name)(0.3)(x, indices_tuple=(a1, p, a2, n)),
                                   lambda x: getattr(pml_losses, name)(0.3)(x, indices_tuple=(a1, p, a2, n)),
                                   features(4, 5))


def test_pml_indices_tuple_bad_input(pml_losses):
    x = features(4, 8)
    pairs = (torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0, 2]), torch.tensor([2, 0]))
    for name in ("NTXentLoss", "SupConLoss"):
        loss = getattr(our_pml, name)()
        with pytest.raises(ValueError, match="indices_tuple must be"):
            loss(x, indices_tuple=pairs[:2])
        with pytest.raises(ValueError, match=r"n indices must be in \[0, 4\)"):
            loss(x, indices_tuple=(*pairs[:3], torch.tensor([2, 4])))
        with pytest.raises(ValueError, match="same length"):
            loss(x, indices_tuple=(pairs[0], pairs[1][:1], *pairs[2:]))
    with pytest.raises(ValueError, match="both as a positive and as a negative"):
        our_pml.SupConLoss()(x, indices_tuple=(pairs[0], pairs[1], pairs[0], pairs[1]))


@pytest.mark.parametrize("name", ["NTXentLoss", "SupConLoss"])
def test_pml_cross_batch_memory(pml_losses, name):
    """Seven steps of 8 rows through a memory of 20 (it wraps): the drop-in's fused path, the library's
    CrossBatchMemory around the drop-in loss (pairs listed), and both against the library; values, gradients and
    the memory itself."""
    ours = our_pml.CrossBatchMemory(getattr(our_pml, name)(0.1), embedding_size=6, memory_size=20)
    library_around_ours = pml_losses.CrossBatchMemory(getattr(our_pml, name)(0.1), embedding_size=6, memory_size=20)
    theirs, theirs_again = (pml_losses.CrossBatchMemory(getattr(pml_losses, name)(0.1), embedding_size=6,
                                                        memory_size=20) for _ in range(2))  # (a call enqueues)
    assert isinstance(ours, pml_losses.CrossBatchMemory)
    generator = torch.Generator().manual_seed(7)
    for step in range(7):
        x, labels = features(8, 6, seed=100 + step), torch.randint(0, 5, (8,), generator=generator)
        assert_same_loss_and_grads(lambda e: ours(e, labels), lambda e: theirs(e, labels), x)
        assert_same_loss_and_grads(lambda e: library_around_ours(e, labels), lambda e: theirs_again(e, labels), x)
        assert ours.queue_idx == theirs.queue_idx and ours.has_been_filled == theirs.has_been_filled
        assert torch.equal(ours.embedding_memory, theirs.embedding_memory)
        assert torch.equal(ours.label_memory, theirs.label_memory)


def test_pml_cross_batch_memory_with_miner_and_enqueue_mask(pml_losses):
    """What the fused path does not take goes to the library's forward (a miner, an enqueue mask)."""
    from pytorch_metric_learning.miners import TripletMarginMiner
    generator = torch.Generator().manual_seed(8)
    for options in ({"miner": TripletMarginMiner(margin=0.5)}, {}):
        ours = our_pml.CrossBatchMemory(our_pml.NTXentLoss(0.1), embedding_size=6, memory_size=12, **options)
        theirs = pml_losses.CrossBatchMemory(pml_losses.NTXentLoss(0.1), embedding_size=6, memory_size=12, **options)
        for step in range(4):
            x, labels = features(8, 6, seed=200 + step), torch.randint(0, 3, (8,), generator=generator)
            mask = None if options else torch.arange(8) % 2 == 0
            assert_same_loss_and_grads(lambda e: ours(e, labels, enqueue_mask=mask),
                                       lambda e: theirs(e, labels, enqueue_mask=mask), x)


def test_pml_wrappers_take_the_drop_ins(pml_losses, tmp_path):
    """DistributedLossWrapper (one gloo process: it checks isinstance BaseMetricLossFunction / CrossBatchMemory,
    then calls the loss) and SelfSupervisedLoss; several processes: tests/test_distributed.py."""
    import torch.distributed as dist
    from pytorch_metric_learning.utils.distributed import DistributedLossWrapper
    x, labels = features(10, 8), torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 4, 0])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        for name in ("NTXentLoss", "SupConLoss"):
            for efficient in (False, True):
                assert_same_loss_and_grads(DistributedLossWrapper(getattr(our_pml, name)(), efficient=efficient),
                                           DistributedLossWrapper(getattr(pml_losses, name)(), efficient=efficient),
                                           x, labels)
        memory = DistributedLossWrapper(our_pml.CrossBatchMemory(our_pml.NTXentLoss(), 8, memory_size=16))
        assert torch.isfinite(memory(x, labels))
    finally:
        dist.destroy_process_group()
    for name in ("NTXentLoss", "SupConLoss"):
        for symmetric in (True, False):
            assert_same_loss_and_grads(pml_losses.SelfSupervisedLoss(getattr(our_pml, name)(), symmetric=symmetric),
                                       pml_losses.SelfSupervisedLoss(getattr(pml_losses, name)(), symmetric=symmetric),
                                       features(9, 8, seed=1), features(9, 8, seed=2))


@pytest.mark.parametrize("name", ["NTXentLoss", "SupConLoss"])
def test_pml_zero_rules(pml_losses, name):
    """The library's zero loss (value 0, zero gradients): no positive pair, no negative pair, or at most one of each
    (PML's own test_with_no_valid_pairs cases, and one anchor against two candidates)."""
    for x, labels, ref, ref_labels in (
            (features(1, 2), torch.tensor([0]), None, None),
            (features(3, 2), torch.tensor([0, 0, 0]), None, None),
            (features(3, 2), torch.tensor([1, 2, 3]), None, None),
            (features(1, 3), torch.tensor([0]), features(2, 3, seed=1), torch.tensor([0, 1]))):
        ours = getattr(our_pml, name)()(x, labels, ref_emb=ref, ref_labels=ref_labels)
        theirs = getattr(pml_losses, name)()(x, labels, ref_emb=ref, ref_labels=ref_labels)
        assert ours.item() == theirs.item() == 0.0
        grad, = torch.autograd.grad(ours, x)
        assert torch.equal(grad, torch.zeros_like(x))


def test_pml_supcon_leaves_out_rows_whose_loss_is_zero(pml_losses):
    """AvgNonZeroReducer: a row that is perfectly separated (loss exactly 0 in fp32) is left out of the mean."""
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 0.9]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 2])
    assert_same_loss_and_grads(lambda e: our_pml.SupConLoss(0.01)(e, labels),
                               lambda e: pml_losses.SupConLoss(0.01)(e, labels), x)


def test_pml_options(pml_losses):
    from pytorch_metric_learning import distances, reducers, regularizers
    x, labels = features(6, 8), torch.tensor([0, 0, 1, 1, 2, 2])
    for name, default in (("NTXentLoss", reducers.MeanReducer), ("SupConLoss", reducers.AvgNonZeroReducer)):
        loss_class = getattr(our_pml, name)
        explicit = loss_class(distance=distances.CosineSimilarity(), reducer=default(), collect_stats=False)
        assert_close(explicit(x, labels), loss_class()(x, labels), 0.0, "explicit defaults")
        for option, value in (("distance", distances.LpDistance()), ("distance", distances.DotProductSimilarity()),
                              ("reducer", reducers.PerAnchorReducer(reducers.AvgNonZeroReducer())),
                              ("reducer", reducers.ThresholdReducer(low=0.1)),
                              ("embedding_regularizer", regularizers.LpRegularizer()), ("collect_stats", True)):
            with pytest.raises(NotImplementedError, match=option):
                loss_class(**{option: value})
        with pytest.raises(ValueError, match="cannot both be None"):
            loss_class()(x)
        with pytest.raises(ValueError, match="ref_emb without ref_labels"):
            loss_class()(x, labels, ref_emb=features(4, 8))
        assert loss_class().temperature == getattr(pml_losses, name)().temperature  # the library's defaults


def test_pml_without_the_library():
    """Without pytorch-metric-learning installed the module imports and the losses work (as nn.Modules);
    CrossBatchMemory then says it needs the library."""
    script = (
        "import sys; sys.modules['pytorch_metric_learning'] = None\n"
        "import torch\n"
        "from synthcl_fast.compat import pytorch_metric_learning as pml\n"
        "x, labels = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 0])\n"
        "assert type(pml.NTXentLoss()).__bases__[-1] is torch.nn.Module\n"
        "print(float(pml.NTXentLoss()(x, labels)), float(pml.SupConLoss()(x, labels)))\n"
        "try:\n    pml.CrossBatchMemory(pml.NTXentLoss(), 4)\nexcept ImportError as e:\n    print('ImportError', e)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    values, error = result.stdout.splitlines()
    assert all(math.isfinite(float(v)) for v in values.split())
    assert error.startswith("ImportError") and "install pytorch-metric-learning" in error


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


# ------------------------------------------------------------------------------------------ fp16 / bf16 inputs
def low_precision_case(request, case):
    """(ours, theirs, inputs): the drop-in and the real loss on the same inputs."""
    library, name = case.split(".")
    if library == "lightly":
        module = request.getfixturevalue("lightly_loss")
        return getattr(our_lightly, name)(), getattr(module, name)(), (features(6, 8, seed=1), features(6, 8, seed=2))
    if library == "pml":
        module, labels = request.getfixturevalue("pml_losses"), torch.tensor([0, 1, 2, 0, 1, 3, 3, 0])
        return (lambda x: getattr(our_pml, name)()(x, labels), lambda x: getattr(module, name)()(x, labels),
                (features(8, 8, seed=1),))
    if library == "solo":
        function = request.getfixturevalue("solo_simclr")
        return our_solo.simclr_loss_func, function, (features(6, 8, seed=1), features(6, 8, seed=2))
    module = request.getfixturevalue("open_clip_loss")
    image, text = (F.normalize(features(6, 8, seed=seed, requires_grad=False), dim=-1) for seed in (1, 2))
    scale = torch.tensor(14.0)
    return (lambda x, y: our_open_clip.ClipLoss()(x, y, scale), lambda x, y: module.ClipLoss()(x, y, scale),
            (image, text))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", ["lightly.NTXentLoss", "lightly.DCLLoss", "lightly.DCLWLoss", "pml.NTXentLoss",
                                  "pml.SupConLoss", "solo.simclr_loss_func", "open_clip.ClipLoss"])
def test_low_precision_inputs(request, case, dtype):
    """The loss comes back in the dtype the library returns (issue 15: fp32 came back; PML's own fp16 test failed on
    it), and it is the library's loss computed in fp32 on the same (rounded) inputs, rounded once."""
    ours, theirs, inputs = low_precision_case(request, case)
    low = [x.detach().to(dtype) for x in inputs]
    our_loss, their_loss = ours(*low), theirs(*low)
    assert our_loss.dtype == their_loss.dtype == dtype
    if case.startswith("open_clip"):  # open_clip takes rows as given, synthcl_fast normalizes them: compare alike
        their_fp32 = theirs(*(F.normalize(x.float(), dim=-1) for x in low))
    else:
        their_fp32 = theirs(*(x.float() for x in low))
    assert_close(our_loss, their_fp32, torch.finfo(dtype).eps, "loss")


def test_pml_ntxent_fp16_does_not_saturate(pml_losses):
    """A documented difference: the library adds the smallest normal number of the dtype inside the log of each
    pair's probability, so in fp16 (6.1e-5) a pair's loss stops at -log(6.1e-5) = 9.70 and its gradient vanishes.
    The drop-in computes in fp32: its fp16 loss is the fp32 loss, rounded."""
    x, labels = features(8, 8, seed=1, requires_grad=False), torch.tensor([0, 1, 2, 0, 1, 3, 3, 0])
    theirs_fp16 = pml_losses.NTXentLoss()(x.half(), labels)
    theirs_fp32 = pml_losses.NTXentLoss()(x.half().float(), labels)
    assert float(theirs_fp16) < 0.9 * float(theirs_fp32)
    assert_close(our_pml.NTXentLoss()(x.half(), labels), theirs_fp32, torch.finfo(torch.float16).eps, "loss")


def test_loss_and_grads_sees_a_difference():
    """The comparison itself can fail: a 1e-4 change of temperature is caught."""
    x, y = features(6, 8, seed=1), features(6, 8, seed=2)
    ours, _ = loss_and_grads(lambda a, b: our_solo.simclr_loss_func(a, b, temperature=0.1), x, y)
    shifted, _ = loss_and_grads(lambda a, b: our_solo.simclr_loss_func(a, b, temperature=0.1 * (1 + 1e-4)), x, y)
    with pytest.raises(AssertionError):
        assert_close(shifted, ours, RTOL, "loss")


# --------------------------------------------------------------------- the drop-ins on the fused variant op
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_variant_drop_ins_run_fused(request, monkeypatch, backend):
    """lightly's DCLLoss / DCLWLoss and PML's NTXentLoss with several positives per anchor run on the fused
    variant op (denominator "negatives" with the DCLW weights; "per_positive"): with the backend named in
    SYNTHCL_FAST_BACKEND an unfused option would raise, so agreeing with the real classes here is the fused path's
    agreement (values and gradients, fp32)."""
    from conftest import fused_cpu_backends
    from synthcl_fast.backends import BACKEND_ENV

    if backend not in fused_cpu_backends():
        pytest.skip(f"backend {backend!r} does not run on CPU tensors in this session")
    monkeypatch.setenv(BACKEND_ENV, backend)
    lightly = pytest.importorskip("lightly.loss", reason="lightly is not installed")
    pml = pytest.importorskip("pytorch_metric_learning.losses", reason="pytorch-metric-learning is not installed")
    for name in ("DCLLoss", "DCLWLoss"):
        assert_same_loss_and_grads(
            lambda a, b, t: getattr(our_lightly, name)(temperature=t)(a, b),
            lambda a, b, t: getattr(lightly, name)(temperature=t)(a, b),
            features(9, 17, seed=1), features(9, 17, seed=2), torch.tensor(0.2, requires_grad=True))
    for labels in (CLASS_LABELS, torch.tensor([0, 0, 1, 2])):
        assert_same_loss_and_grads(lambda x: our_pml.NTXentLoss(0.1)(x, labels),
                                   lambda x: pml.NTXentLoss(0.1)(x, labels), features(len(labels), 24))
