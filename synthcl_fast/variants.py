"""Variants of the general contrastive op (issue 15) and the backend that computes them.

The options (formulas: synthcl_fast/reference.py, above contrastive_loss_variant):

    denominator="all"            the plain op: lse over every candidate but self
    denominator="negatives"      the positives left out of the denominator (DCL, Yeh et al. 2022)
    denominator="per_positive"   each positive against the negatives alone, averaged over the positives
                                 (pytorch-metric-learning's NTXentLoss with several positives per anchor)
    beta, tau_plus               hard negatives weighted by e^{beta s} and the debiasing prior tau_plus
                                 (HCL, Robinson et al. 2021; Chuang et al. 2020)
    positive_weight              a weight w_i on row i's positive term (DCLW, lightly's DCLLoss weight_fn)

A backend that fuses some of them lists their names in FUSED_OPTIONS (its contrastive_variant_forward op,
backends/_ops.py); `auto` takes it when it fuses every option in use, else the reference, and an explicit fused
backend that does not raises BackendUnavailableError naming the option (backend_for_variant). Fused now:

    cpu      denominator="negatives" / "per_positive", with or without positive_weight
             (csrc/contrastive_cpu.cpp, the general plan also for the symmetric problems); beta and tau_plus
             with denominator "all" or "negatives" (the hard_negative_stats op: the row statistics fused, the
             loss formed from them by reference.hard_negative_row_loss)
    triton   the same (backends/triton_contrastive.py: the forward kernel's NEGATIVES_ONLY statistics, a
             positives' pass for "per_positive"; triton_gradients.py: the backward kernel's _variant_term; beta /
             tau_plus: triton_hard_negatives.py's _hard_stats_kernel and the backward kernel's _hard_term)
    cuda     the same (csrc/contrastive_cuda.cu: the tile kernel's denominator mask and element_gradient, a
             positives' pass for "per_positive"; beta / tau_plus: the tile kernel's HCL statistics (TileParams::hard,
             finish_hard_kernel) and hard_element_gradient; compiled and its machine code checked in CI, not yet
             run on a GPU)

positive_weight is fused only with a denominator other than "all" (the plain op's kernels carry no weight), or
with beta / tau_plus; beta / tau_plus are not fused with denominator="per_positive" (its per-pair softplus
needs a pass of its own over the positives with the estimate).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .backends import BACKEND_ENV, BACKENDS, Backend, BackendUnavailableError, resolve_backend

# Option names (as ContrastiveVariant.options() spells them) that each fused backend computes.
_DENOMINATORS = frozenset({"denominator='negatives'", "denominator='per_positive'", "positive_weight"})
_HARD_NEGATIVES = frozenset({"beta", "tau_plus"})
FUSED_OPTIONS: dict[str, frozenset[str]] = {name: _DENOMINATORS | _HARD_NEGATIVES for name in ("cpu", "triton", "cuda")}
# Combinations no backend fuses although it fuses each option (named so in the error)
WEIGHT_WITHOUT_DENOMINATOR = "positive_weight with denominator='all'"
HARD_PER_POSITIVE = "beta / tau_plus with denominator='per_positive'"


@dataclass(frozen=True)
class ContrastiveVariant:
    """Validated variant options of one call (see synthcl_fast._validation); the defaults are the plain op."""

    denominator: str = "all"
    beta: float = 0.0
    tau_plus: float = 0.0
    positive_weight: torch.Tensor | None = None  # (R,)

    def options(self) -> tuple[str, ...]:
        """The options that differ from the plain op, e.g. ("denominator='negatives'", "beta")."""
        names = []
        if self.denominator != "all":
            names.append(f"denominator={self.denominator!r}")
        if self.beta != 0.0:
            names.append("beta")
        if self.tau_plus != 0.0:
            names.append("tau_plus")
        if self.positive_weight is not None:
            names.append("positive_weight")
        return tuple(names)


PLAIN = ContrastiveVariant()


def backend_for_variant(backend: str, device: torch.device, dtype: torch.dtype,
                        variant: ContrastiveVariant) -> Backend:
    """The backend that computes `variant` for backend=`backend`: the one resolve_backend picks when it fuses
    every option in use; else the reference under "auto", and BackendUnavailableError for a backend asked for by
    name (argument or SYNTHCL_FAST_BACKEND)."""
    chosen = resolve_backend(backend, device, dtype)
    if chosen.name == "reference":
        return chosen
    missing = [option for option in variant.options() if option not in FUSED_OPTIONS.get(chosen.name, ())]
    hard = [option for option in ("beta", "tau_plus") if option in variant.options()]
    if variant.denominator == "all" and variant.positive_weight is not None and not hard \
            and "positive_weight" not in missing:
        missing.append(WEIGHT_WITHOUT_DENOMINATOR)
    if variant.denominator == "per_positive" and hard and not set(hard) & set(missing):
        missing.append(HARD_PER_POSITIVE)
    if not missing:
        return chosen
    requested = os.environ.get(BACKEND_ENV, "auto") if backend == "auto" else backend
    if requested == "auto":
        return BACKENDS["reference"]
    raise BackendUnavailableError(
        f"backend {chosen.name!r} does not fuse {', '.join(missing)} yet; use backend='auto' or 'reference' "
        "(which materialize the logits for these options)")
