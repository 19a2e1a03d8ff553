"""The variant options of the op through the public API (synthcl_fast.variants): which backend computes them, the
errors that name a bad option, and the named losses and modules built on them. Their math: test_reference.py;
against the peer libraries: test_compat.py."""

import re

import pytest
import torch

import synthcl_fast.losses as L
from conftest import assert_close, fused_cpu_backends
from synthcl_fast import reference as ref
from synthcl_fast.backends import BACKEND_ENV, BackendUnavailableError
from synthcl_fast.variants import (FUSED_OPTIONS, HARD_PER_POSITIVE, WEIGHT_WITHOUT_DENOMINATOR, ContrastiveVariant,
                                   backend_for_variant)

VARIANT_OPTIONS = {
    "denominator='negatives'": {"denominator": "negatives"},
    "denominator='per_positive'": {"denominator": "per_positive"},
    "beta": {"beta": 0.5},
    "tau_plus": {"tau_plus": 0.1},
    "positive_weight": {"positive_weight": 0.5},
    "beta, positive_weight": {"beta": 0.5, "positive_weight": 0.5},
    "per_positive, tau_plus": {"denominator": "per_positive", "tau_plus": 0.1},
}


def inputs(generator, dtype=torch.float32):
    x = torch.randn(10, 6, generator=generator, dtype=dtype)
    return x, torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 4, 0])


def _unfused(backend, kwargs):
    """The options of kwargs that `backend` does not fuse, as its error names them."""
    variant = ContrastiveVariant(**{**kwargs, "positive_weight": torch.ones(10) if "positive_weight" in kwargs
                                    else None})
    missing = [o for o in variant.options() if o not in FUSED_OPTIONS[backend]]
    hard = {"beta", "tau_plus"} & set(variant.options())
    if variant.denominator == "all" and variant.positive_weight is not None and "positive_weight" not in missing \
            and not hard:
        missing.append(WEIGHT_WITHOUT_DENOMINATOR)
    if variant.denominator == "per_positive" and hard and not hard & set(missing):
        missing.append(HARD_PER_POSITIVE)
    return missing


@pytest.mark.parametrize("option", VARIANT_OPTIONS)
def test_fused_backends_refuse_unfused_variants_by_name(generator, option):
    x, labels = inputs(generator)
    kwargs = VARIANT_OPTIONS[option]
    for backend in fused_cpu_backends():
        missing = _unfused(backend, kwargs)
        if not missing:
            continue
        with pytest.raises(BackendUnavailableError,
                           match=f"backend '{backend}' does not fuse {re.escape(', '.join(missing))} yet"):
            L.contrastive_loss(x, None, labels, backend=backend, **kwargs)


@pytest.mark.parametrize("option", VARIANT_OPTIONS)
def test_auto_takes_the_fused_backend_where_it_fuses_the_variant(generator, monkeypatch, option):
    """auto: the fused backend when it fuses every option in use (its value then agrees with the reference),
    else the reference itself; the environment override names a backend, so it is explicit and raises."""
    x, labels = inputs(generator)
    kwargs = VARIANT_OPTIONS[option]
    auto = L.contrastive_loss(x, None, labels, **kwargs)
    expected = ref.contrastive_loss_variant(x, None, labels, **kwargs)
    if _unfused("cpu", kwargs) or "cpu" not in fused_cpu_backends():
        assert torch.equal(auto, expected)
    else:
        assert_close(auto, ref.contrastive_loss_variant(x.double(), None, labels, **kwargs), 1e-5, option)
        variant = L._variant(x, x.shape[0], **kwargs)
        assert backend_for_variant("auto", x.device, x.dtype, variant).name == "cpu"
    for backend in fused_cpu_backends():
        monkeypatch.setenv(BACKEND_ENV, backend)
        missing = _unfused(backend, kwargs)
        if missing:
            with pytest.raises(BackendUnavailableError, match=re.escape(", ".join(missing))):
                L.contrastive_loss(x, None, labels, **kwargs)
        else:
            assert_close(L.contrastive_loss(x, None, labels, **kwargs),
                         ref.contrastive_loss_variant(x.double(), None, labels, **kwargs), 1e-5, option)
        monkeypatch.delenv(BACKEND_ENV)


def test_fused_options_of_each_backend(generator):
    """Every fused backend computes every option (each alone; HARD_PER_POSITIVE names the one combination none
    fuses)."""
    options = {"denominator='negatives'", "denominator='per_positive'", "positive_weight", "beta", "tau_plus"}
    assert FUSED_OPTIONS["cpu"] == FUSED_OPTIONS["triton"] == FUSED_OPTIONS["cuda"] == options


def test_hard_negatives_with_per_positive_are_not_fused(generator):
    """beta / tau_plus with PML's per-positive denominator: the reference under auto, refused by name where
    the backend fuses each option alone."""
    x, labels = inputs(generator)
    for backend in fused_cpu_backends():
        if {"beta", "denominator='per_positive'"} <= FUSED_OPTIONS[backend]:
            with pytest.raises(BackendUnavailableError, match=re.escape(HARD_PER_POSITIVE)):
                L.contrastive_loss(x, None, labels, backend=backend, denominator="per_positive", beta=0.5)
    assert torch.equal(L.contrastive_loss(x, None, labels, denominator="per_positive", beta=0.5),
                       ref.contrastive_loss_variant(x, None, labels, denominator="per_positive", beta=0.5))


def test_weight_alone_is_not_fused(generator):
    """positive_weight with the plain denominator is computed by the reference (auto) and refused by name."""
    x, labels = inputs(generator)
    for backend in fused_cpu_backends():
        with pytest.raises(BackendUnavailableError, match="positive_weight with denominator='all'"):
            L.contrastive_loss(x, None, labels, backend=backend, positive_weight=0.5)


def test_default_options_stay_fused(generator):
    """Spelling out the defaults changes nothing: the fused backend still runs (and agrees with the reference)."""
    x, labels = inputs(generator)
    defaults = dict(denominator="all", beta=0.0, tau_plus=0.0, positive_weight=None)
    for backend in fused_cpu_backends():
        assert_close(L.contrastive_loss(x, None, labels, backend=backend, **defaults),
                     L.contrastive_loss(x.double(), None, labels, backend="reference"), 1e-5, backend)


def test_bad_options_name_the_argument(generator):
    x, labels = inputs(generator)
    for kwargs, match in (({"denominator": "positives"}, "denominator must be one of"),
                          ({"beta": float("nan")}, "beta must be a finite float"),
                          ({"beta": True}, "beta must be a finite float"),
                          ({"tau_plus": 1.0}, r"tau_plus must be a float in \[0, 1\)"),
                          ({"tau_plus": -0.1}, r"tau_plus must be a float in \[0, 1\)"),
                          ({"positive_weight": torch.ones(11)}, r"positive_weight must be .* shape \(\) or \(10,\)"),
                          ({"positive_weight": torch.ones(10, dtype=torch.int64)}, "positive_weight must be"),
                          ({"positive_weight": float("inf")}, "positive_weight must be a finite float")):
        with pytest.raises(ValueError, match=match):
            L.contrastive_loss(x, None, labels, **kwargs)
    z1, z2 = x[:5], x[5:]
    with pytest.raises(ValueError, match="not both"):
        L.dcl(z1, z2, sigma=0.5, positive_weight=torch.ones(5))
    for sigma in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="sigma must be a finite float > 0"):
            L.dcl(z1, z2, sigma=sigma)
    for module, kwargs in ((L.NTXentLoss, {"beta": "hard"}), (L.InfoNCELoss, {"tau_plus": 2.0}),
                           (L.ContrastiveLoss, {"denominator": "none"})):
        with pytest.raises(ValueError):
            module(**kwargs)


def test_dcl_weights_per_image_or_per_row(generator):
    z1, z2 = torch.randn(2, 5, 4, generator=generator, dtype=torch.float64).unbind(0)
    per_image = torch.rand(5, generator=generator, dtype=torch.float64)
    assert_close(L.dcl(z1, z2, positive_weight=per_image), L.dcl(z1, z2, positive_weight=per_image.repeat(2)),
                 0.0, "(N,) weights are both views' weights")
    assert_close(L.dcl(z1, z2, positive_weight=1.0), L.dcl(z1, z2), 0.0, "weight 1 is DCL")
    weights = ref.von_mises_fisher_weights(z1, z2, 0.5)
    assert_close(L.dcl(z1, z2, sigma=0.5), L.dcl(z1, z2, positive_weight=weights), 1e-15, "sigma is DCLW")


def test_modules(generator):
    z1, z2 = torch.randn(2, 6, 5, generator=generator, dtype=torch.float64).unbind(0)
    assert_close(L.DCLLoss(temperature=0.3, sigma=0.5)(z1, z2), L.dcl(z1, z2, temperature=0.3, sigma=0.5), 0.0,
                 "DCLLoss")
    assert_close(L.NTXentLoss(beta=1.0, tau_plus=0.1)(z1, z2), L.nt_xent(z1, z2, beta=1.0, tau_plus=0.1), 0.0,
                 "NTXentLoss")
    assert_close(L.InfoNCELoss(beta=1.0, tau_plus=0.1)(z1, z2), L.info_nce(z1, z2, beta=1.0, tau_plus=0.1), 0.0,
                 "InfoNCELoss")
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    weight = torch.rand(6, generator=generator, dtype=torch.float64)
    module = L.ContrastiveLoss(denominator="per_positive", beta=0.5)
    assert_close(module(z1, None, labels, positive_weight=weight),
                 L.contrastive_loss(z1, None, labels, denominator="per_positive", beta=0.5, positive_weight=weight),
                 0.0, "ContrastiveLoss")
    assert "denominator='per_positive'" in repr(module)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_variant_reductions_and_low_precision(generator, reduction):
    """Reductions as in the plain op (rows without a positive report 0 and leave the mean); fp16/bf16 features are
    computed in fp32 and come back in fp32, gradients in the input dtype (the README's convention)."""
    x, labels = inputs(generator, torch.float64)
    labels[-1] = 9  # rows 8 and 9 have no positive
    rows = L.contrastive_loss(x, None, labels, denominator="negatives", reduction="none")
    assert rows[8] == rows[9] == 0
    expected = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / 8}[reduction]
    assert_close(L.contrastive_loss(x, None, labels, denominator="negatives", reduction=reduction), expected, 1e-15,
                 reduction)
    for dtype in (torch.float16, torch.bfloat16):
        low = x.to(dtype).requires_grad_()
        loss = L.contrastive_loss(low, None, labels, tau_plus=0.1, reduction=reduction)
        assert loss.dtype == torch.float32
        grad, = torch.autograd.grad(loss.sum(), low)
        assert grad.dtype == dtype and torch.isfinite(grad).all()


def test_cuda_takes_the_hard_negatives_and_names_the_combination_it_does_not_fuse(generator, monkeypatch):
    """backend='cuda' resolves HCL's options (csrc/contrastive_cuda.cu, hard_negative_stats) and raises naming
    beta / tau_plus with denominator='per_positive' (checked here without a GPU by letting the resolver hand out
    the cuda backend)."""
    import synthcl_fast.variants as variants
    from synthcl_fast.backends import BACKENDS

    monkeypatch.setattr(variants, "resolve_backend", lambda *args: BACKENDS["cuda"])
    cpu = torch.device("cpu")
    hard = L._variant(torch.zeros(4, 3), 4, "negatives", beta=0.5, tau_plus=0.1, positive_weight=0.5)
    assert backend_for_variant("cuda", cpu, torch.float32, hard).name == "cuda"
    assert backend_for_variant("auto", cpu, torch.float32, hard).name == "cuda"
    per_positive = L._variant(torch.zeros(4, 3), 4, "per_positive", beta=0.5)
    with pytest.raises(BackendUnavailableError, match=re.escape(f"backend 'cuda' does not fuse {HARD_PER_POSITIVE}")):
        backend_for_variant("cuda", cpu, torch.float32, per_positive)
    assert backend_for_variant("auto", cpu, torch.float32, per_positive).name == "reference"


@pytest.mark.parametrize("option", VARIANT_OPTIONS)
def test_invalid_temperature_tensor_gives_nan_on_every_path(generator, option):
    """A tensor temperature out of range gives NaN (loss, feature and temperature gradients) whichever path computes
    the variant: the reference (the fallback of "auto" for what no fused backend takes, e.g. per_positive with
    tau_plus) follows the fused ops' contract, not finite values from the raw temperature."""
    x, labels = inputs(generator)
    kwargs = VARIANT_OPTIONS[option]
    for backend in ["auto", "reference"] + [b for b in fused_cpu_backends() if not _unfused(b, kwargs)]:
        for bad in (0.0, -0.5, 1e-9, float("inf"), float("nan")):
            features = x.clone().requires_grad_()
            t = torch.tensor(bad, requires_grad=True)
            loss = L.contrastive_loss(features, None, labels, temperature=t, backend=backend, **kwargs)
            grad_x, grad_t = torch.autograd.grad(loss, (features, t))
            assert torch.isnan(loss) and torch.isnan(grad_x).all() and torch.isnan(grad_t), \
                f"{option}, backend {backend}, temperature {bad}: loss {float(loss)}"
