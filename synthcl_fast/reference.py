"""Plain PyTorch reference: materializes the R x K logits. The ground truth for every backend.

Nothing here is fast; everything here is obviously right. Tests compare every fused kernel
against these functions in float64, and benchmarks time the fused kernels against them.

The math (DESIGN.md section 2). Rows are L2-normalized, u = x / max(||x||, eps):

    s_ij = u(A_i) . u(C_j) / t
    P(i) = { j : c_j == a_i, c_j >= 0, j != i if exclude_self }         # positives
    N(i) = all j, minus j == i if exclude_self                          # denominator
    L_i  = logsumexp_{j in N(i)} s_ij - mean_{p in P(i)} s_ip            # rows with |P(i)| >= 1
    L    = sum_i L_i / max(#rows with a positive, 1)                     # "mean"

Rows without a positive contribute 0 to every reduction (and report 0 under "none").
"""

from __future__ import annotations

import torch

DEFAULT_EPS = 1e-12  # same as torch.nn.functional.normalize, so drop-in replacements agree


def l2_normalize(x: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """u = x / max(||x||, eps) row-wise, computed in at least float32.

    A row no longer than eps (a zero row, say) is treated as a constant: it gets no gradient. Its exact
    gradient, du / eps (about 1e12 du), would overflow fp16 and is useless to an optimizer; every backend
    follows this convention.
    """
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    norm = x.norm(dim=-1, keepdim=True)
    u = x / norm.clamp_min(eps)
    return torch.where(norm > eps, u, u.detach())


def reduce_rows(row_loss: torch.Tensor, has_positive: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply a reduction to per-row losses; rows without a positive are left out of the mean."""
    if reduction == "none":
        return row_loss
    if reduction == "sum":
        return row_loss.sum()
    if reduction == "mean":
        return row_loss.sum() / has_positive.sum().clamp_min(1)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def contrastive_loss(
    anchors: torch.Tensor,
    candidates: torch.Tensor | None = None,
    anchor_labels: torch.Tensor | None = None,
    candidate_labels: torch.Tensor | None = None,
    *,
    temperature: float | torch.Tensor = 0.1,
    exclude_self: bool | None = None,
    reduction: str = "mean",
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """General contrastive op, materializing the logits. Shapes: anchors (R, D), candidates (K, D),
    anchor_labels (R,), candidate_labels (K,). Defaults: candidates=None means the anchors themselves
    with exclude_self=True; anchor_labels=None means arange(R); candidate_labels=None means the anchor
    labels when candidates is None, else arange(K) (candidate j is the positive of anchor j)."""
    self_candidates = candidates is None
    if self_candidates:
        candidates = anchors
    if exclude_self is None:
        exclude_self = self_candidates
    n_rows, n_cols = anchors.shape[0], candidates.shape[0]
    device = anchors.device
    if anchor_labels is None:
        anchor_labels = torch.arange(n_rows, device=device)
    if candidate_labels is None:
        candidate_labels = anchor_labels if self_candidates else torch.arange(n_cols, device=device)

    u, v = l2_normalize(anchors, eps), l2_normalize(candidates, eps)
    logits = (u @ v.T) / temperature
    positive = (anchor_labels[:, None] == candidate_labels[None, :]) & (candidate_labels[None, :] >= 0)
    if exclude_self:
        is_self = torch.eye(n_rows, n_cols, dtype=torch.bool, device=device)
        positive = positive & ~is_self
        logits = logits.masked_fill(is_self, float("-inf"))
    n_positive = positive.sum(dim=1)
    has_positive = n_positive > 0
    lse = torch.logsumexp(torch.where(has_positive[:, None], logits, torch.zeros_like(logits)), dim=1)
    positive_sum = torch.where(positive, logits, torch.zeros_like(logits)).sum(dim=1)
    row_loss = lse - positive_sum / n_positive.clamp_min(1)
    row_loss = torch.where(has_positive, row_loss, torch.zeros_like(row_loss))
    return reduce_rows(row_loss, has_positive, reduction)


# The named losses below are written in their textbook form (cross-entropy over materialized logits,
# or SupCon's mask form), independently of contrastive_loss: they check how synthcl_fast.losses maps
# each of them onto the general op, not only the kernels.

def _cross_entropy_rows(logits, target, reduction):
    row_loss = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    return reduce_rows(row_loss, torch.ones_like(row_loss, dtype=torch.bool), reduction)


def nt_xent(z1, z2, *, temperature=0.5, negatives=None, reduction="mean", eps=DEFAULT_EPS):
    """SimCLR's NT-Xent over two views z1, z2 (N, D); optional extra negatives (M, D) from a generator.
    Row i of [z1; z2] classifies its other view among all other rows (and the negatives)."""
    n = z1.shape[0]
    z = l2_normalize(torch.cat([z1, z2]), eps)
    logits = (z @ z.T) / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    if negatives is not None:
        logits = torch.cat([logits, (z @ l2_normalize(negatives, eps).T) / temperature], dim=1)
    target = torch.arange(2 * n, device=z.device).roll(n)
    return _cross_entropy_rows(logits, target, reduction)


def supcon(features, labels, *, temperature=0.1, negatives=None, reduction="mean", eps=DEFAULT_EPS):
    """Supervised contrastive loss (Khosla et al. 2020, "L_out") in its mask form: for each row, minus the
    mean log-probability of the other rows with its label; rows without such a row are left out."""
    u = l2_normalize(features, eps)
    n = u.shape[0]
    logits = (u @ u.T) / temperature
    not_self = ~torch.eye(n, dtype=torch.bool, device=u.device)
    positive = (labels[:, None] == labels[None, :]) & not_self & (labels[None, :] >= 0)
    logits = logits.masked_fill(~not_self, float("-inf"))
    if negatives is not None:
        logits = torch.cat([logits, (u @ l2_normalize(negatives, eps).T) / temperature], dim=1)
        positive = torch.cat([positive, positive.new_zeros(n, negatives.shape[0])], dim=1)
    log_prob = torch.log_softmax(logits, dim=1)
    n_positive = positive.sum(1)
    row_loss = -torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(1) / n_positive.clamp_min(1)
    return reduce_rows(row_loss, n_positive > 0, reduction)


def ppcl_labels(n_real: int, n_synthetic: int, device=None) -> torch.Tensor:
    """Labels of the PPCL batch [real view 1; real view 2; synthetic views 1..4 flattened view-major].

    Real image n gets label n in both views; synthetic pair k gets pseudo-label n_real + k in all 4 views.
    """
    real = torch.arange(n_real, device=device).repeat(2)
    synthetic = torch.arange(n_real, n_real + n_synthetic, device=device).repeat(4)
    return torch.cat([real, synthetic])


def ppcl(real_views, synthetic_views, *, temperature=0.5, negatives=None, reduction="mean", eps=DEFAULT_EPS):
    """Partially pseudo-labeled contrastive loss: real_views (2, N, D), synthetic_views (4, M, D)."""
    n_real, n_synthetic, dim = real_views.shape[1], synthetic_views.shape[1], real_views.shape[2]
    features = torch.cat([real_views.reshape(-1, dim), synthetic_views.reshape(-1, dim)])
    labels = ppcl_labels(n_real, n_synthetic, device=features.device)
    return supcon(features, labels, temperature=temperature, negatives=negatives, reduction=reduction, eps=eps)


def info_nce(query, key, *, negatives=None, temperature=0.07, reduction="mean", eps=DEFAULT_EPS):
    """InfoNCE / MoCo: query i classifies key i among all keys and the queue (M, D)."""
    q, k = l2_normalize(query, eps), l2_normalize(key, eps)
    logits = (q @ k.T) / temperature
    if negatives is not None:
        logits = torch.cat([logits, (q @ l2_normalize(negatives, eps).T) / temperature], dim=1)
    return _cross_entropy_rows(logits, torch.arange(q.shape[0], device=q.device), reduction)


def clip_loss(image_features, text_features, *, logit_scale, symmetric=True, reduction="mean", eps=DEFAULT_EPS):
    """CLIP: image i matches text i. logit_scale = 1 / temperature. Symmetric: mean of both directions."""
    image, text = l2_normalize(image_features, eps), l2_normalize(text_features, eps)
    logits = logit_scale * image @ text.T
    target = torch.arange(image.shape[0], device=image.device)
    image_to_text = _cross_entropy_rows(logits, target, reduction)
    if not symmetric:
        return image_to_text
    return (image_to_text + _cross_entropy_rows(logits.T, target, reduction)) / 2


def positive_pair_loss(a, b, target, *, mode="two_sided", reduction="mean", eps=DEFAULT_EPS):
    """Similarity-controlled positive-pair loss on paired rows a, b (R, D), target s* (float or (R,)):

        c_k = cos(a_k, b_k);  "two_sided": (c_k - s*)^2;  "floor": relu(s* - c_k)^2
    """
    cosine = (l2_normalize(a, eps) * l2_normalize(b, eps)).sum(dim=1)
    if mode == "two_sided":
        row_loss = (cosine - target) ** 2
    elif mode == "floor":
        row_loss = torch.relu(target - cosine) ** 2
    else:
        raise ValueError(f"mode must be 'two_sided' or 'floor', got {mode!r}")
    if reduction == "none":
        return row_loss
    if reduction == "sum":
        return row_loss.sum()
    if reduction == "mean":
        return row_loss.mean()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
