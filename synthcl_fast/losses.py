"""Public API: contrastive losses as functions and nn.Modules, every one a case of one fused op.

Every loss here is the general contrastive op (its math, gradients and conventions: the docstring of
synthcl_fast.reference) with particular inputs:

| loss                        | anchors  | candidates        | labels                                   |
|-----------------------------|----------|-------------------|------------------------------------------|
| nt_xent (SimCLR)            | [z1; z2] | same, exclude self| instance id, twice                       |
| nt_xent + negatives         | [z1; z2] | [z1; z2; g]       | ids; -1 for g                            |
| supcon / ppcl               | views    | same, exclude self| class or (pseudo-)label                  |
| info_nce (MoCo)             | q        | [k; queue]        | arange(R); arange(R) then -1             |
| clip_loss (one direction)   | image    | text              | arange(R) both                           |
| dcl (DCL, DCLW)             | [z1; z2] | same, exclude self| instance id, twice; denominator negatives|

Variants (contrastive_loss's denominator, beta, tau_plus, positive_weight; synthcl_fast.variants) change which
candidates form the log-sum-exp and how the negatives are weighted; which backend fuses which: synthcl_fast.variants.

Every function takes `reduction` ("mean" | "sum" | "none"), `backend` ("auto" | "reference" | "cpu" |
...) and `eps`; nt_xent, dcl, supcon, ppcl, info_nce and clip_loss also take `gather_distributed` (candidates
from every torch.distributed rank; see synthcl_fast.distributed for the exact semantics). `temperature`
(and `logit_scale`) may be a float or a one-element tensor that requires grad. Rows without any positive
contribute 0 and are left out of the mean; if no row has a positive, the mean is 0. Values of tensors are
never read on the host (that would synchronize the device): NaN or Inf in the features propagate to the
loss, any negative label is a never-positive one, and a temperature tensor out of range gives NaN.

Example:
    >>> z1, z2 = model(view1), model(view2)          # (N, D) each
    >>> loss = nt_xent(z1, z2, temperature=0.5)
    >>> loss.backward()
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _validation as check
from . import distributed, reference
from .backends import resolve_backend
from .reference import DEFAULT_EPS, ppcl_labels
from .variants import PLAIN, ContrastiveVariant, backend_for_variant

__all__ = [
    "contrastive_loss", "nt_xent", "supcon", "ppcl", "ppcl_labels", "info_nce", "clip_loss", "dcl",
    "positive_pair_loss", "ContrastiveLoss", "NTXentLoss", "SupConLoss", "PPCLLoss", "InfoNCELoss", "ClipLoss",
    "DCLLoss", "PositivePairLoss", "SimilaritySchedule",
]


def _contrastive(anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self, reduction,
                 backend, eps, n_global_rows=None, variant=PLAIN):
    """Validated inputs -> the chosen backend's contrastive op.

    n_global_rows: with candidates gathered over ranks, the rows with a positive over all ranks; the
    "mean" and "sum" losses are then this rank's share (synthcl_fast.distributed.share_of_global).
    variant: the op's variant options (synthcl_fast.variants), already validated.
    """
    temperature = check.check_temperature(temperature, anchors)
    reduction, eps = check.check_reduction(reduction), check.check_eps(eps)
    if variant.options():
        op = _variant_op(backend, anchors, variant)
    else:
        op = resolve_backend(backend, anchors.device, anchors.dtype).contrastive
    if n_global_rows is None or reduction == "none":
        return op(anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self, reduction, eps)
    row_loss_sum = op(anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self, "sum", eps)
    return distributed.share_of_global(row_loss_sum, n_global_rows, reduction)


def _variant_op(backend, anchors, variant: ContrastiveVariant):
    """The contrastive op (Backend.contrastive's signature) of a variant: the fused backend's variant op where
    synthcl_fast.variants.FUSED_OPTIONS lists every option in use, else (under "auto") the reference."""
    chosen = backend_for_variant(backend, anchors.device, anchors.dtype, variant)
    if chosen.name != "reference":
        def fused(*args):
            return chosen.contrastive_variant(*args, variant)
        return fused

    def op(anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self, reduction, eps):
        return reference.contrastive_loss_variant(
            anchors, candidates, anchor_labels, candidate_labels, temperature=temperature, exclude_self=exclude_self,
            denominator=variant.denominator, beta=variant.beta, tau_plus=variant.tau_plus,
            positive_weight=variant.positive_weight, reduction=reduction, eps=eps)
    return op


def _variant(like, n_rows, denominator="all", beta=0.0, tau_plus=0.0, positive_weight=None) -> ContrastiveVariant:
    return ContrastiveVariant(check.check_denominator(denominator), check.check_beta(beta),
                              check.check_tau_plus(tau_plus), check.check_positive_weight(positive_weight, n_rows, like))


def _self_contrastive(features, labels, negatives, temperature, reduction, backend, eps, gather_distributed,
                      instance_labels, variant=PLAIN):
    """Every row against every other row (itself excluded) and the negatives; with gather_distributed, against
    the rows of every rank. instance_labels: labels are per-rank instance ids, made unique across ranks."""
    if not (gather_distributed and distributed.is_distributed()):
        candidates, candidate_labels = _with_negatives(features, labels, negatives)
        return _contrastive(features, candidates, labels, candidate_labels, temperature, True, reduction, backend,
                            eps, variant=variant)
    if instance_labels:
        labels = distributed.unique_per_rank(labels)
    candidates, candidate_labels, n_global_rows = distributed.self_candidates(features, labels)
    candidates, candidate_labels = _with_negatives(candidates, candidate_labels, negatives)
    return _contrastive(features, candidates, labels, candidate_labels, temperature, True, reduction, backend, eps,
                        n_global_rows, variant)


def _with_negatives(features, labels, negatives):
    """Candidates [features; negatives] with label -1 for the negatives (never a positive)."""
    if negatives is None:
        return features, labels
    check.check_features(negatives, "negatives")
    check.check_like(negatives, "negatives", features, "the features")
    candidates = torch.cat([features, negatives])
    candidate_labels = torch.cat([labels, labels.new_full((negatives.shape[0],), -1)])
    return candidates, candidate_labels


def contrastive_loss(anchors, candidates=None, anchor_labels=None, candidate_labels=None, *, temperature=0.1,
                     exclude_self=None, reduction="mean", backend="auto", eps=DEFAULT_EPS, denominator="all",
                     beta=0.0, tau_plus=0.0, positive_weight=None):
    """The general contrastive op.

    Variants (formulas in synthcl_fast/reference.py, contrastive_loss_variant; Neg(i): the candidates in the
    denominator that are not positives; the cpu, triton and cuda backends fuse the denominators, positive_weight and
    beta / tau_plus (with "all" or "negatives"), and "auto" materializes the logits for what is not fused:
    synthcl_fast.variants):

        denominator="all"           L_i = log(sum_P e^s + Ng_i) - w_i mean_P s     (Ng_i = sum_Neg e^s: the plain op)
        denominator="negatives"     L_i = log Ng_i - w_i mean_P s                  (DCL: positives out of the sum)
        denominator="per_positive"  L_i = mean_P log(e^{s_ip} + Ng_i) - w_i mean_P s  (each positive on its own
                                    against the negatives: pytorch-metric-learning's NTXentLoss)
        beta, tau_plus              Ng_i = max((n_i e^{lse (1+beta) s - lse beta s} - tau_plus n_i mean_P e^s)
                                    / (1 - tau_plus), n_i e^{-1/t}) over the n_i negatives (HCL / debiased)
        positive_weight             w_i, per anchor (DCLW); 1 when None

    Args:
        anchors: (R, D) features.
        candidates: (K, D) features, or None for the anchors themselves (then exclude_self defaults to True).
        anchor_labels: (R,) integer labels; None means arange(R).
        candidate_labels: (K,) integer labels, -1 for a candidate that is never a positive; None means the
            anchor labels when candidates is None, else arange(K) (candidate j is the positive of anchor j).
        temperature: t > 0, float or one-element tensor (may require grad).
        exclude_self: remove the pair (i, i) from positives and denominator (candidate i is anchor i).
        denominator: "all" | "negatives" | "per_positive".
        beta: hardness of the negatives' weights e^{beta s} (HCL); any finite float, 0: unweighted.
        tau_plus: class prior of the debiased estimate, in [0, 1); 0: not debiased.
        positive_weight: None, a float, or a (R,) tensor (may require grad).
    Returns:
        The loss: a scalar, or (R,) per-row losses for reduction "none" (0 for rows without positive).
    """
    check.check_features(anchors, "anchors")
    self_candidates = candidates is None
    if self_candidates:
        candidates = anchors
    else:
        check.check_features(candidates, "candidates")
        check.check_like(candidates, "candidates", anchors, "anchors")
    n_rows, n_cols = anchors.shape[0], candidates.shape[0]
    if anchor_labels is None:
        anchor_labels = torch.arange(n_rows, device=anchors.device)
    anchor_labels = check.check_labels(anchor_labels, "anchor_labels", n_rows, anchors.device)
    if candidate_labels is None:
        candidate_labels = anchor_labels if self_candidates else torch.arange(n_cols, device=anchors.device)
    candidate_labels = check.check_labels(candidate_labels, "candidate_labels", n_cols, anchors.device)
    exclude_self = self_candidates if exclude_self is None else bool(exclude_self)
    variant = _variant(anchors, n_rows, denominator, beta, tau_plus, positive_weight)
    return _contrastive(anchors, candidates, anchor_labels, candidate_labels, temperature, exclude_self,
                        reduction, backend, eps, variant=variant)


def nt_xent(z1, z2, *, temperature=0.5, negatives=None, reduction="mean", backend="auto", eps=DEFAULT_EPS,
            gather_distributed=False, beta=0.0, tau_plus=0.0):
    """SimCLR's NT-Xent: row n of z1 and row n of z2 are two views of one image.

    Args:
        z1, z2: (N, D) embeddings of the two views.
        negatives: optional (M, D) extra negatives (e.g. generator samples), never positives; not gathered.
        gather_distributed: every torch.distributed rank's views are candidates (see synthcl_fast.distributed).
        beta, tau_plus: hard negatives (HCL, Robinson et al. 2021) and debiasing (Chuang et al. 2020): the
            negatives' sum is replaced by Ng = max((n e^{lse (1+beta) s - lse beta s} - tau_plus n e^{s_pos})
            / (1 - tau_plus), n e^{-1/t}) over the n negatives (see contrastive_loss).
    Returns:
        Scalar loss, or (2N,) per-view losses (z1 rows first) for reduction "none".
    """
    check.check_features(z1, "z1")
    check.check_features(z2, "z2")
    check.check_like(z2, "z2", z1, "z1")
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    labels = torch.arange(z1.shape[0], device=z1.device).repeat(2)
    variant = _variant(z1, 2 * z1.shape[0], beta=beta, tau_plus=tau_plus)
    return _self_contrastive(torch.cat([z1, z2]), labels, negatives, temperature, reduction, backend, eps,
                             gather_distributed, instance_labels=True, variant=variant)


def dcl(z1, z2, *, temperature=0.1, sigma=None, positive_weight=None, negatives=None, reduction="mean",
        backend="auto", eps=DEFAULT_EPS, gather_distributed=False):
    """Decoupled contrastive learning (DCL, Yeh et al. 2022): NT-Xent with the positive out of the denominator,

        L_i = -w_i s(i, other view of i) + log sum_{j not i, not its other view} e^{s_ij}

    over the 2N rows of [z1; z2] (mean over the rows). DCLW: with sigma, w_i = 2 - N softmax_n(cos(z1_n, z2_n)
    / sigma) for both views of image n, computed from the detached, normalized views of this rank (as lightly's
    DCLWLoss does); else w_i = 1.

    Args:
        z1, z2: (N, D) embeddings of the two views.
        sigma: None (DCL) or the von Mises-Fisher weighting's scale, > 0 (DCLW).
        positive_weight: instead of sigma, your own weights: a float, (N,) (both views of image n) or (2N,).
        negatives: optional (M, D) extra negatives; not gathered.
        gather_distributed: every torch.distributed rank's views are candidates (see synthcl_fast.distributed).
    """
    check.check_features(z1, "z1")
    check.check_features(z2, "z2")
    check.check_like(z2, "z2", z1, "z1")
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    if sigma is not None:
        if positive_weight is not None:
            raise ValueError("dcl takes sigma (DCLW's weights) or positive_weight, not both")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a finite float > 0, got {sigma!r}")
        positive_weight = reference.von_mises_fisher_weights(z1, z2, sigma, eps)
    if isinstance(positive_weight, torch.Tensor) and positive_weight.shape == (n,):
        positive_weight = positive_weight.repeat(2)
    labels = torch.arange(n, device=z1.device).repeat(2)
    variant = _variant(z1, 2 * n, "negatives", positive_weight=positive_weight)
    return _self_contrastive(torch.cat([z1, z2]), labels, negatives, temperature, reduction, backend, eps,
                             gather_distributed, instance_labels=True, variant=variant)


def supcon(features, labels, *, temperature=0.1, negatives=None, reduction="mean", backend="auto",
           eps=DEFAULT_EPS, gather_distributed=False):
    """Supervised contrastive loss (SupCon, "L_out"): every other row with the same label is a positive.

    Args:
        features: (R, D) embeddings (all views flattened into rows).
        labels: (R,) integer labels, the same classes on every rank.
        negatives: optional (M, D) extra negatives; not gathered.
        gather_distributed: every torch.distributed rank's rows are candidates (see synthcl_fast.distributed).
    """
    check.check_features(features, "features")
    labels = check.check_labels(labels, "labels", features.shape[0], features.device)
    return _self_contrastive(features, labels, negatives, temperature, reduction, backend, eps, gather_distributed,
                             instance_labels=False)


def ppcl(real_views, synthetic_views, *, temperature=0.5, negatives=None, reduction="mean", backend="auto",
         eps=DEFAULT_EPS, gather_distributed=False):
    """Partially pseudo-labeled contrastive loss of "Synthetic Data Can Also Teach".

    Real image n has 2 views (one label); synthetic pair k has 4 views that share one pseudo-label:
    [G(z_k) view 1, G(z_k) view 2, G_ema(z_k) view 1, G_ema(z_k) view 2]. With no synthetic views this is
    exactly nt_xent.

    Args:
        real_views: (2, N, D).
        synthetic_views: (4, M, D); M may be 0.
        negatives: optional (P, D) extra negatives; not gathered.
        gather_distributed: every torch.distributed rank's views are candidates (see synthcl_fast.distributed).
    Returns:
        Scalar loss, or (2N + 4M,) per-view losses in the order of ppcl_labels for reduction "none".
    """
    check.check_features(real_views, "real_views", ndim=3, allow_empty=True)
    check.check_features(synthetic_views, "synthetic_views", ndim=3, allow_empty=True)
    check.check_like(synthetic_views, "synthetic_views", real_views, "real_views")
    if real_views.shape[0] != 2:
        raise ValueError(f"real_views must have shape (2, N, D), got {tuple(real_views.shape)}")
    if synthetic_views.shape[0] != 4:
        raise ValueError(f"synthetic_views must have shape (4, M, D), got {tuple(synthetic_views.shape)}")
    n_real, n_synthetic, dim = real_views.shape[1], synthetic_views.shape[1], real_views.shape[2]
    if n_real + n_synthetic == 0:
        raise ValueError("ppcl needs at least one real or synthetic sample, got N = M = 0")
    features = torch.cat([real_views.reshape(-1, dim), synthetic_views.reshape(-1, dim)])
    labels = ppcl_labels(n_real, n_synthetic, device=features.device)
    return _self_contrastive(features, labels, negatives, temperature, reduction, backend, eps, gather_distributed,
                             instance_labels=True)


def info_nce(query, key, *, negatives=None, temperature=0.07, reduction="mean", backend="auto", eps=DEFAULT_EPS,
             gather_distributed=False, beta=0.0, tau_plus=0.0):
    """InfoNCE / MoCo: query i's positive is key i; the other keys and the queue are negatives.

    Args:
        query: (R, D). key: (R, D), row-aligned with query. negatives: optional (M, D) queue; not gathered.
        gather_distributed: every torch.distributed rank's keys are candidates (see synthcl_fast.distributed).
        beta, tau_plus: hard negatives and debiasing (HCL), as in nt_xent.
    """
    check.check_features(query, "query")
    check.check_features(key, "key")
    check.check_like(key, "key", query, "query")
    if key.shape[0] != query.shape[0]:
        raise ValueError(f"key must have as many rows as query ({query.shape[0]}), got {key.shape[0]}")
    if gather_distributed and distributed.is_distributed():
        candidates, labels, candidate_labels, n_global_rows = distributed.key_candidates(key)
    else:
        labels = torch.arange(query.shape[0], device=query.device)
        candidates, candidate_labels, n_global_rows = key, labels, None
    candidates, candidate_labels = _with_negatives(candidates, candidate_labels, negatives)
    variant = _variant(query, query.shape[0], beta=beta, tau_plus=tau_plus)
    return _contrastive(query, candidates, labels, candidate_labels, temperature, False, reduction, backend, eps,
                        n_global_rows, variant)


def clip_loss(image_features, text_features, *, logit_scale, symmetric=True, reduction="mean", backend="auto",
              eps=DEFAULT_EPS, gather_distributed=False):
    """CLIP's loss: image i matches text i. logit_scale = 1 / temperature (float or tensor, may require grad).

    Args:
        image_features, text_features: (B, D).
        symmetric: mean of image->text and text->image; else image->text only.
        gather_distributed: every torch.distributed rank's pairs are candidates (see synthcl_fast.distributed).
    """
    check.check_features(image_features, "image_features")
    check.check_features(text_features, "text_features")
    check.check_like(text_features, "text_features", image_features, "image_features")
    scale = check.check_logit_scale(logit_scale, image_features)
    temperature = scale.reciprocal()
    # A backend with a symmetric op computes both directions from the same tiles (not across ranks: gathered
    # candidates differ per direction); the others add two one-direction calls.
    if symmetric and not (gather_distributed and distributed.is_distributed()):
        if text_features.shape[0] != image_features.shape[0]:
            raise ValueError(f"text_features must have as many rows as image_features ({image_features.shape[0]}), "
                             f"got {text_features.shape[0]}")
        chosen = resolve_backend(backend, image_features.device, image_features.dtype)
        if chosen.has_symmetric_op:
            reduction, eps = check.check_reduction(reduction), check.check_eps(eps)
            labels = torch.arange(image_features.shape[0], device=image_features.device)
            return chosen.symmetric_contrastive(image_features, text_features, labels, labels, temperature, False,
                                                reduction, eps)
    kwargs = dict(temperature=temperature, reduction=reduction, backend=backend, eps=eps,
                  gather_distributed=gather_distributed)
    image_to_text = info_nce(image_features, text_features, **kwargs)
    if not symmetric:
        return image_to_text
    return (image_to_text + info_nce(text_features, image_features, **kwargs)) / 2


def positive_pair_loss(a, b, target, *, mode="two_sided", reduction="mean", backend="auto", eps=DEFAULT_EPS):
    """Similarity-controlled positive-pair loss: keeps cos(a_k, b_k) at the target similarity s*.

        c_k = cos(a_k, b_k);   "two_sided": (c_k - s*)^2;   "floor": relu(s* - c_k)^2

    (Our definition; the paper's exact equation is not public in a form we could read.)

    Args:
        a, b: (R, D) paired rows, e.g. G(z) and G_ema(z) embedded by the main model (b usually detached).
        target: s*, a float or a tensor of shape () or (R,).
        mode: "two_sided" or "floor" (only penalize pairs more dissimilar than s*).
    """
    check.check_features(a, "a")
    check.check_features(b, "b")
    check.check_like(b, "b", a, "a")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if mode not in ("two_sided", "floor"):
        raise ValueError(f"mode must be 'two_sided' or 'floor', got {mode!r}")
    reduction, eps = check.check_reduction(reduction), check.check_eps(eps)
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    n_rows = a.shape[0]
    if isinstance(target, torch.Tensor):
        if target.shape not in ((), (1,), (n_rows,)) or not target.dtype.is_floating_point:
            raise ValueError(f"target must be a float or a floating tensor of shape () or ({n_rows},), "
                             f"got shape {tuple(target.shape)} and dtype {target.dtype}")
        if target.device != a.device:
            raise ValueError(f"target is on {target.device} but a is on {a.device}")
        target = target.to(acc).reshape(-1).expand(n_rows).contiguous()
    elif isinstance(target, (int, float)) and not isinstance(target, bool) and math.isfinite(target):
        target = torch.full((n_rows,), float(target), dtype=acc, device=a.device)
    else:
        raise ValueError(f"target must be a finite float or a tensor, got {target!r}")
    chosen = resolve_backend(backend, a.device, a.dtype)
    return chosen.positive_pair(a, b, target, mode, reduction, eps)


class SimilaritySchedule:
    """Target similarity s*(step) for the positive-pair loss: `start` during `warmup_steps`, then falling
    to `end` at `total_steps` along a linear or cosine ("cosine": slow, fast, slow) path; `end` afterwards.

    Example:
        >>> schedule = SimilaritySchedule(start=0.9, end=0.5, total_steps=10_000, warmup_steps=1_000)
        >>> schedule(0), schedule(10_000)
        (0.9, 0.5)
    """

    def __init__(self, start: float = 0.9, end: float = 0.5, total_steps: int = 10_000, warmup_steps: int = 0,
                 shape: str = "cosine"):
        for name, value in (("start", start), ("end", end)):
            if not (isinstance(value, (int, float)) and -1.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a cosine similarity in [-1, 1], got {value!r}")
        if not (isinstance(total_steps, int) and total_steps > 0):
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
        if not (isinstance(warmup_steps, int) and 0 <= warmup_steps <= total_steps):
            raise ValueError(f"warmup_steps must be an int in [0, total_steps], got {warmup_steps!r}")
        if shape not in ("linear", "cosine"):
            raise ValueError(f"shape must be 'linear' or 'cosine', got {shape!r}")
        self.start, self.end, self.total_steps, self.warmup_steps, self.shape = (
            float(start), float(end), total_steps, warmup_steps, shape)

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        span = self.total_steps - self.warmup_steps
        progress = 1.0 if span == 0 else min(max(step - self.warmup_steps, 0) / span, 1.0)
        if self.shape == "cosine":
            progress = (1 - math.cos(math.pi * progress)) / 2
        return self.start + (self.end - self.start) * progress

    def __repr__(self):
        return (f"SimilaritySchedule(start={self.start}, end={self.end}, total_steps={self.total_steps}, "
                f"warmup_steps={self.warmup_steps}, shape={self.shape!r})")


class _LossModule(nn.Module):
    def __init__(self, reduction="mean", backend="auto"):
        super().__init__()
        self.reduction, self.backend = check.check_reduction(reduction), backend

    def extra_repr(self):
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "training"}
        return ", ".join(f"{k}={v!r}" for k, v in fields.items())


class ContrastiveLoss(_LossModule):
    """Module form of contrastive_loss; forward(anchors, candidates=None, anchor_labels=None, candidate_labels=None,
    positive_weight=None)."""

    def __init__(self, temperature=0.1, exclude_self=None, reduction="mean", backend="auto", denominator="all",
                 beta=0.0, tau_plus=0.0):
        super().__init__(reduction, backend)
        self.temperature, self.exclude_self = temperature, exclude_self
        self.denominator = check.check_denominator(denominator)
        self.beta, self.tau_plus = check.check_beta(beta), check.check_tau_plus(tau_plus)

    def forward(self, anchors, candidates=None, anchor_labels=None, candidate_labels=None, positive_weight=None):
        return contrastive_loss(anchors, candidates, anchor_labels, candidate_labels, temperature=self.temperature,
                                exclude_self=self.exclude_self, reduction=self.reduction, backend=self.backend,
                                denominator=self.denominator, beta=self.beta, tau_plus=self.tau_plus,
                                positive_weight=positive_weight)


class NTXentLoss(_LossModule):
    """Module form of nt_xent; forward(z1, z2, negatives=None)."""

    def __init__(self, temperature=0.5, reduction="mean", backend="auto", gather_distributed=False, beta=0.0,
                 tau_plus=0.0):
        super().__init__(reduction, backend)
        self.temperature, self.gather_distributed = temperature, gather_distributed
        self.beta, self.tau_plus = check.check_beta(beta), check.check_tau_plus(tau_plus)

    def forward(self, z1, z2, negatives=None):
        return nt_xent(z1, z2, temperature=self.temperature, negatives=negatives, reduction=self.reduction,
                       backend=self.backend, gather_distributed=self.gather_distributed, beta=self.beta,
                       tau_plus=self.tau_plus)


class DCLLoss(_LossModule):
    """Module form of dcl (DCL; DCLW with sigma); forward(z1, z2, negatives=None)."""

    def __init__(self, temperature=0.1, sigma=None, reduction="mean", backend="auto", gather_distributed=False):
        super().__init__(reduction, backend)
        self.temperature, self.sigma, self.gather_distributed = temperature, sigma, gather_distributed

    def forward(self, z1, z2, negatives=None):
        return dcl(z1, z2, temperature=self.temperature, sigma=self.sigma, negatives=negatives,
                   reduction=self.reduction, backend=self.backend, gather_distributed=self.gather_distributed)


class SupConLoss(_LossModule):
    """Module form of supcon; forward(features, labels, negatives=None)."""

    def __init__(self, temperature=0.1, reduction="mean", backend="auto", gather_distributed=False):
        super().__init__(reduction, backend)
        self.temperature, self.gather_distributed = temperature, gather_distributed

    def forward(self, features, labels, negatives=None):
        return supcon(features, labels, temperature=self.temperature, negatives=negatives,
                      reduction=self.reduction, backend=self.backend, gather_distributed=self.gather_distributed)


class PPCLLoss(_LossModule):
    """Module form of ppcl; forward(real_views (2, N, D), synthetic_views (4, M, D), negatives=None)."""

    def __init__(self, temperature=0.5, reduction="mean", backend="auto", gather_distributed=False):
        super().__init__(reduction, backend)
        self.temperature, self.gather_distributed = temperature, gather_distributed

    def forward(self, real_views, synthetic_views, negatives=None):
        return ppcl(real_views, synthetic_views, temperature=self.temperature, negatives=negatives,
                    reduction=self.reduction, backend=self.backend, gather_distributed=self.gather_distributed)


class InfoNCELoss(_LossModule):
    """Module form of info_nce; forward(query, key, negatives=None)."""

    def __init__(self, temperature=0.07, reduction="mean", backend="auto", gather_distributed=False, beta=0.0,
                 tau_plus=0.0):
        super().__init__(reduction, backend)
        self.temperature, self.gather_distributed = temperature, gather_distributed
        self.beta, self.tau_plus = check.check_beta(beta), check.check_tau_plus(tau_plus)

    def forward(self, query, key, negatives=None):
        return info_nce(query, key, negatives=negatives, temperature=self.temperature, reduction=self.reduction,
                        backend=self.backend, gather_distributed=self.gather_distributed, beta=self.beta,
                        tau_plus=self.tau_plus)


class ClipLoss(_LossModule):
    """Module form of clip_loss; forward(image_features, text_features, logit_scale)."""

    def __init__(self, symmetric=True, reduction="mean", backend="auto", gather_distributed=False):
        super().__init__(reduction, backend)
        self.symmetric, self.gather_distributed = symmetric, gather_distributed

    def forward(self, image_features, text_features, logit_scale):
        return clip_loss(image_features, text_features, logit_scale=logit_scale, symmetric=self.symmetric,
                         reduction=self.reduction, backend=self.backend, gather_distributed=self.gather_distributed)


class PositivePairLoss(_LossModule):
    """Module form of positive_pair_loss with a fixed target or a SimilaritySchedule.

    forward(a, b, step=None): with a schedule, the target is schedule(step) and `step` is required.
    """

    def __init__(self, target: float | SimilaritySchedule = 0.5, mode="two_sided", reduction="mean",
                 backend="auto"):
        super().__init__(reduction, backend)
        self.target, self.mode = target, mode

    def target_at(self, step=None) -> float:
        if isinstance(self.target, SimilaritySchedule):
            if step is None:
                raise ValueError("step is required when the target is a SimilaritySchedule")
            return self.target(step)
        return self.target

    def forward(self, a, b, step=None):
        return positive_pair_loss(a, b, self.target_at(step), mode=self.mode, reduction=self.reduction,
                                  backend=self.backend)
