"""Plain PyTorch reference: materializes the R x K logits. The ground truth for every backend, and the one
place where the math of the library is written out; every kernel file points here.

Nothing here is fast; everything here is obviously right. Tests compare every fused kernel against these
functions in float64, and benchmarks time the fused kernels against them.

The general contrastive op
--------------------------
Anchors A (R, D), candidates C (K, D), anchor labels a (R,), candidate labels c (K,), temperature t:

    u_i  = A_i / max(||A_i||, eps)       v_j = C_j / max(||C_j||, eps)     (||.|| accumulated in float64)
    s_ij = (u_i . v_j) / t
    N(i) = all j, minus j == i if exclude_self                              # the denominator
    P(i) = { j in N(i) : c_j == a_i and c_j >= 0 }                          # the positives
    m_i  = max_{j in N(i)} s_ij                                              # the row max
    S_i  = sum_{j in N(i)} exp(s_ij - m_i)                                   # in [1, K]
    L_i  = (1/|P(i)|) sum_{p in P(i)} (m_i - s_ip)  +  log S_i              # rows with |P(i)| >= 1
         = logsumexp_{j in N(i)} s_ij - mean_{p in P(i)} s_ip
    L    = sum_i L_i / max(#rows with a positive, 1)     ("mean"; "sum": sum_i L_i; "none": L_i, 0 without P)

The row loss is formed from quantities of its own size: (m_i - s_ip) is exact when the positive is (near)
the row max, and log S_i is a logarithm of a number in [1, K]. Forming it as lse_i - mean s_ip instead
subtracts two numbers of size ~1/t and loses ~eps/t absolute, which is most of a small loss at t = 0.01.
For the same reason the kernels keep (m_i, log S_i) as the row statistics for the backward, not their sum.

Gradients, with w_i = dLoss/dL_i (1/#rows with a positive for "mean"; 0 for a row without positives):

    p_ij       = exp((s_ij - m_i) - log S_i)                                 # softmax over N(i)
    G_ij       = dLoss/ds_ij = w_i (p_ij - [j in P(i)] / |P(i)|)             # 0 for j not in N(i)
               = w_i c expm1((s_ij - m_i) - log S_i - log c)  for j in P(i), c = 1/|P(i)|
                 (never a rounded p_ij minus c: at a small loss p_ij -> c and the difference, ~ the loss, would
                 keep only eps absolute; here log S_i = log1p(S_i - 1) from the terms other than the max)
    dLoss/du_i = (1/t) sum_j G_ij v_j          dLoss/dv_j = (1/t) sum_i G_ij u_i   (summed when A is C)
    dLoss/dt   = -(1/t) sum_ij G_ij s_ij = -(1/t) sum_ij G_ij (s_ij - m_i)   # sum_j G_ij = 0: shift-free form
    dLoss/dx   = (du - u (u . du)) / ||x||       and 0 for a row with ||x|| <= eps (a constant: see below)

The fused kernels recompute s tile by tile in the backward (or reuse it in the forward for a scalar loss),
so memory is O((R + K) D), never O(R K).

Every named loss is this op with particular inputs (synthcl_fast.losses): NT-Xent (anchors [z1; z2], the same
rows as candidates, exclude_self, instance ids twice), + generated negatives (label -1), SupCon / PPCL
(class or pseudo-labels), InfoNCE / MoCo (q against [k; queue]), CLIP (image against text, and the
transpose for the symmetric loss).

The positive-pair loss
----------------------
Paired rows a_k, b_k (R, D), target s*_k (float or per row):

    c_k = u(a_k) . u(b_k)          "two_sided": L_k = (c_k - s*_k)^2        "floor": L_k = relu(s*_k - c_k)^2
    dL_k/dc_k = 2 (c_k - s*_k) ("floor": only where c_k < s*_k)
    dc_k/du(a_k) = u(b_k), then through the normalization as above; "mean" averages over all R rows.

Conventions (every backend follows them; the README's conventions section states them for users)
-----------------------------------------------------------------------------------------------
- Labels are integers; a negative label (-1, or any negative value such as an ignore index) is never a
  positive: a candidate with one is a pure negative, an anchor with one has no positive.
- A row no longer than eps (a zero row) is a constant: u = x / eps and no gradient. Its exact gradient,
  du / eps (about 1e12 du), would overflow fp16 and is useless to an optimizer.
- fp16/bf16 inputs are computed in fp32; losses come back in fp32 (fp64 for fp64), gradients in the input
  dtype. Norms are accumulated in float64, so fp32 rows of norm 1e-30 or 1e30 keep their direction.
- The temperature must be finite and >= MIN_TEMPERATURE (logit_scale <= 1 / MIN_TEMPERATURE). A Python
  float is checked on the host (ValueError). A tensor is checked where it lives, without a host
  synchronization: out of range, the loss and every gradient are NaN (SYNTHCL_FAST_CHECK_VALUES=1 checks on
  the host instead and raises ValueError, at the cost of one synchronization per call).
"""

from __future__ import annotations

import math

import torch

DEFAULT_EPS = 1e-12  # same as torch.nn.functional.normalize, so drop-in replacements agree
# Below this the logits (|s| <= 1/t) and the temperature gradient (~ 1/t^2) leave fp32's range.
# Mirrored by csrc/common.h kMinTemperature and the Triton kernels (triton_common.MIN_TEMPERATURE).
MIN_TEMPERATURE = 1e-6


def l2_normalize(x: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """u = x / max(||x||, eps) row-wise, computed in at least float32, with the norm accumulated in float64
    (x^2 of an fp32 row of norm 1e20 overflows fp32). A row no longer than eps gets no gradient."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    # x is used once: the radial and tangential parts of its gradient, which nearly cancel, are summed in
    # float64 and rounded to x's dtype once (rounded separately, a 16-bit sum would lose most of it)
    x64 = x.to(torch.float64)
    norm = x64.norm(dim=-1, keepdim=True)
    u = (x64 / norm.clamp_min(eps)).to(compute)
    return torch.where(norm > eps, u, u.detach())


def valid_temperature(temperature):
    """The temperature, or NaN where a tensor temperature is out of range (no host synchronization)."""
    if not isinstance(temperature, torch.Tensor):
        return temperature
    valid = torch.isfinite(temperature) & (temperature >= MIN_TEMPERATURE)
    # NaN added (not substituted), so that the temperature's own gradient is NaN too, as in the kernels
    return temperature + torch.where(valid, 0.0, float("nan")).to(temperature.dtype)


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
    logits = (u @ v.T) / valid_temperature(temperature)
    allowed = torch.ones(n_rows, n_cols, dtype=torch.bool, device=device)
    if exclude_self:
        allowed &= ~torch.eye(n_rows, n_cols, dtype=torch.bool, device=device)
    positive = (anchor_labels[:, None] == candidate_labels[None, :]) & (candidate_labels[None, :] >= 0) & allowed
    n_positive = positive.sum(dim=1)
    has_positive = n_positive > 0
    # Rows without a positive contribute 0; their logits are replaced so that an empty denominator
    # (R = K = 1 with exclude_self) gives no NaN, not even in the gradient of the unused branch.
    logits = torch.where(has_positive[:, None], logits.masked_fill(~allowed, float("-inf")), torch.zeros_like(logits))
    # m_i = s_ik, the logit itself (k = argmax, chosen without gradient), and
    # log S_i = log1p(sum_{j != k} e^{s_ij - m_i}): near a small loss S_i = 1 + (the loss), and a log of S_i rounded
    # first (logsumexp) keeps that part only to eps absolute; log1p keeps it to eps relative. m_i is differentiated,
    # not detached, and the gap leaves out the term m_i - s_ik (0, whether or not k is a positive): the derivative
    # for s_ik is then -sum_{j != k} p_ij (+ 1 from the gap's other terms' m_i), i.e. p_ik - 1 for a positive max,
    # never formed as a rounded 1 minus 1 (a detached m_i makes autograd add e^{s_ik - lse_i} ~ 1 and -1; a gap
    # term m_i - s_ik adds +1 and -1).
    top = logits.detach().argmax(dim=1, keepdim=True)
    row_max = logits.gather(1, top)
    shifted = logits - row_max  # s_ij - m_i
    others = torch.ones_like(allowed).scatter_(1, top, False)
    log_sum = torch.log1p(torch.where(others, shifted.exp(), torch.zeros_like(shifted)).sum(dim=1))  # log S_i
    positive_gap = (torch.where(positive & others, -shifted, torch.zeros_like(shifted)).sum(dim=1)
                    / n_positive.clamp_min(1))
    row_loss = torch.where(has_positive, positive_gap + log_sum, torch.zeros_like(log_sum))
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


# ---------------------------------------------------------------------------------------------------------------
# Variants of the general op (issue 15): the positives out of the denominator, hard-negative reweighting with
# debiasing, a per-anchor weight on the positive term. Same s, P(i), N(i) as contrastive_loss; in addition
#
#     Neg(i) = N(i) \ P(i)                    the negatives of row i,  n_i = |Neg(i)|
#     w_i    = positive_weight[i]             (1 when None)
#
# The negatives' mass E_i = sum_{Neg(i)} e^{s_ij} (log E_i = lse_{Neg(i)} s_ij), or, with beta != 0 or
# tau_plus != 0, its hard / debiased estimate (Robinson et al. 2021, "HCL"; Chuang et al. 2020; their public
# code computes exactly this for one positive):
#
#     H_i  = n_i * exp(lse_{Neg(i)} (1 + beta) s_ij  -  lse_{Neg(i)} beta s_ij)   # negatives weighted by e^{beta s}
#     M_i  = mean_{p in P(i)} e^{s_ip}                                           # Chuang et al.'s positive estimate
#     Ng_i = max((H_i - tau_plus n_i M_i) / (1 - tau_plus),  n_i e^{-1/t})        # clamped at its smallest value
#
# and the row loss, for each denominator:
#
#     "all"           L_i = log(sum_{p in P(i)} e^{s_ip} + Ng_i)        - w_i mean_{P(i)} s_ip   (= the plain op)
#     "negatives"     L_i = log Ng_i                                    - w_i mean_{P(i)} s_ip   (DCL, DCLW)
#     "per_positive"  L_i = mean_{p in P(i)} log(e^{s_ip} + Ng_i)       - w_i mean_{P(i)} s_ip
#                         = mean_{p in P(i)} softplus(log Ng_i - s_ip)   for w_i = 1  (PML's NTXentLoss)
#
# Rows without a positive contribute 0 and are left out of the mean, as in contrastive_loss. A row with
# positives but no negative has Ng_i = 0: its "negatives" loss is -inf (as in lightly's DCLLoss).
# Everything is computed in log space: e^{s} is never formed, so fp32 at t = 0.01 is safe.
#
# The fused form (cpu: csrc/contrastive_cpu.cpp, triton: backends/triton_contrastive.py; beta = tau_plus = 0):
# online over column tiles, m_i = max_{Neg(i)} s_ij, S_i = sum_{Neg(i)} e^{s_ij - m_i} (so lse_Neg = m_i + log S_i),
# gap_i = sum_{P(i)} (s_ip - m_i); with z_ip = lse_Neg(i) - s_ip, mean_p s_ip = m_i + gap_i / |P(i)|:
#
#     "negatives"     L_i = log S_i - gap_i / |P(i)|        + (1 - w_i) mean_p s_ip
#     "per_positive"  L_i = mean_p softplus(z_ip)           + (1 - w_i) mean_p s_ip     (a second pass over P(i))
#
# and the gradient, recomputed tile by tile (p_ij = e^{s_ij - lse_Neg(i)}, W_i = dLoss/dL_i):
#
#     "negatives"     G_ij = W_i (p_ij [j in Neg(i)] - w_i [j in P(i)] / |P(i)|)
#     "per_positive"  G_ij = W_i (c_i p_ij [j in Neg(i)] + (sigmoid(-z_ij) - w_i) [j in P(i)] / |P(i)|),
#                     c_i = mean_p sigmoid(z_ip)
#     dLoss/dw_i = -W_i mean_p s_ip;  sum_j G_ij = W_i (1 - w_i), so dLoss/dt = -(1/t) sum_ij G_ij (s_ij - m_i)
#                  - (1/t) sum_i m_i W_i (1 - w_i)
# ---------------------------------------------------------------------------------------------------------------

def _masked_logsumexp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise log sum_{mask} e^x: -inf for a row with an empty mask, with zero (not NaN) gradients there."""
    empty = ~mask.any(dim=1)
    safe = torch.where(mask & ~empty[:, None], x, torch.where(empty[:, None], torch.zeros_like(x),
                                                               torch.full_like(x, float("-inf"))))
    return torch.where(empty, torch.full_like(empty, float("-inf"), dtype=x.dtype), torch.logsumexp(safe, dim=1))


def hard_negative_row_stats(logits, positive, negative, beta=0.0):
    """The row statistics the HCL estimate is formed from (fused: the hard_negative_stats op, backends/_ops.py):
    (lse_{Neg(i)} (1 + beta) s_ij, lse_{Neg(i)} beta s_ij, lse_{P(i)} s_ij, mean_{P(i)} s_ij, n_i, |P(i)|);
    an empty set's log-sum-exp is -inf, its mean 0."""
    n_negative, n_positive = negative.sum(dim=1), positive.sum(dim=1)
    positive_mean = torch.where(positive, logits, torch.zeros_like(logits)).sum(dim=1) / n_positive.clamp_min(1)
    return (_masked_logsumexp((1 + beta) * logits, negative), _masked_logsumexp(beta * logits, negative),
            _masked_logsumexp(logits, positive), positive_mean, n_negative, n_positive)


def log_negative_mass_from_stats(lse_hard, lse_soft, lse_positive, n_negative, n_positive, temperature, beta=0.0,
                                 tau_plus=0.0):
    """(R,) log Ng_i of the formulas above from the row statistics (hard_negative_row_stats); -inf for rows
    without negatives. Shared by the reference and the fused backends, which differentiate through it."""
    if beta == 0.0 and tau_plus == 0.0:
        return lse_hard  # lse_Neg s
    n = n_negative.to(lse_hard.dtype)
    has_negative = n_negative > 0
    log_n = torch.log(n.clamp_min(1))
    # rows without negatives: -inf - -inf is NaN; replaced (with a zero gradient) before it spreads
    log_h = torch.where(has_negative, log_n + lse_hard - torch.where(has_negative, lse_soft, 0.0), 0.0)
    log_estimate = log_h
    if tau_plus > 0:
        has_positive = n_positive > 0
        log_m = torch.where(has_positive, lse_positive, 0.0) - torch.log(n_positive.clamp_min(1).to(lse_hard.dtype))
        # log(H - tau_plus n M) = log H + log(1 - e^{d}),  d = log(tau_plus n M) - log H  (H <= tau_plus n M: -inf)
        d = math.log(tau_plus) + log_n + log_m - log_h
        below = d < 0
        log_difference = log_h + torch.log1p(-torch.exp(torch.where(below, d, torch.full_like(d, -1.0))))
        log_estimate = torch.where(below, log_difference, torch.full_like(d, float("-inf"))) - math.log1p(-tau_plus)
    log_floor = log_n - 1 / torch.as_tensor(temperature, dtype=lse_hard.dtype, device=lse_hard.device)
    log_ng = torch.maximum(log_estimate, log_floor)
    return torch.where(has_negative, log_ng, torch.full_like(log_ng, float("-inf")))


def log_negative_mass(logits, positive, negative, temperature, beta=0.0, tau_plus=0.0):
    """(R,) log Ng_i of the formulas above (log E_i when beta == tau_plus == 0); -inf for rows without negatives.

    logits (R, K) = s; positive, negative: (R, K) masks of P(i) and Neg(i); temperature: t (float or 0-d tensor).
    """
    lse_hard, lse_soft, lse_positive, _, n_negative, n_positive = hard_negative_row_stats(logits, positive, negative,
                                                                                          beta)
    return log_negative_mass_from_stats(lse_hard, lse_soft, lse_positive, n_negative, n_positive, temperature, beta,
                                        tau_plus)


def hard_negative_row_loss(lse_hard, lse_soft, lse_positive, positive_mean, n_negative, n_positive, temperature,
                           beta, tau_plus, denominator, positive_weight=None):
    """(R,) L_i of the denominators "all" and "negatives" from the row statistics (hard_negative_row_stats):
    0 for rows without a positive. The fused backends form their beta / tau_plus losses with this code."""
    has_positive = n_positive > 0
    log_ng = log_negative_mass_from_stats(lse_hard, lse_soft, lse_positive, n_negative, n_positive, temperature,
                                          beta, tau_plus)
    weight = 1.0 if positive_weight is None else positive_weight
    if denominator == "all":
        # log(e^a + e^b) - mean_p s_ip with a = lse_P(i) s, b = log Ng_i, formed as (max(a, b) - mean_p s_ip) +
        # log1p(e^{-|a - b|}) (+ (1 - w_i) mean_p s_ip): at a small loss a >> b, max - mean is exactly 0 for one
        # positive, and log1p keeps the loss's own accuracy where logaddexp(a, b) - mean would keep eps |a| absolute
        # (rows without a positive get 0 in place of -inf: -inf - -inf has a NaN derivative)
        a = torch.where(has_positive, lse_positive, 0.0)
        high, low = torch.maximum(a, log_ng), torch.minimum(a, log_ng)
        row_loss = (high - positive_mean) + torch.log1p(torch.exp(low - high)) + (1 - weight) * positive_mean
    elif denominator == "negatives":
        row_loss = log_ng - weight * positive_mean
    else:
        raise ValueError(f"denominator must be 'all' or 'negatives' here, got {denominator!r}")
    return torch.where(has_positive, row_loss, torch.zeros_like(row_loss))


def contrastive_loss_variant(
    anchors: torch.Tensor,
    candidates: torch.Tensor | None = None,
    anchor_labels: torch.Tensor | None = None,
    candidate_labels: torch.Tensor | None = None,
    *,
    temperature: float | torch.Tensor = 0.1,
    exclude_self: bool | None = None,
    denominator: str = "all",
    beta: float = 0.0,
    tau_plus: float = 0.0,
    positive_weight: torch.Tensor | None = None,
    reduction: str = "mean",
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """The general op with the variant options above, materializing the logits. Shapes and defaults as in
    contrastive_loss; positive_weight: (R,) or None. With the defaults this is contrastive_loss."""
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
    # the validated temperature, as in contrastive_loss: out of range, NaN (the fused ops' contract), also in the
    # floor n_i e^{-1/t} of log_negative_mass
    temperature = valid_temperature(temperature)
    logits = (u @ v.T) / temperature
    positive = (anchor_labels[:, None] == candidate_labels[None, :]) & (candidate_labels[None, :] >= 0)
    in_denominator = torch.ones_like(positive)
    if exclude_self:
        is_self = torch.eye(n_rows, n_cols, dtype=torch.bool, device=device)
        positive, in_denominator = positive & ~is_self, ~is_self
    negative = in_denominator & ~positive
    n_positive = positive.sum(dim=1)
    has_positive = n_positive > 0
    count = n_positive.clamp_min(1).to(logits.dtype)

    if denominator in ("all", "negatives"):
        row_loss = hard_negative_row_loss(*hard_negative_row_stats(logits, positive, negative, beta), temperature,
                                          beta, tau_plus, denominator, positive_weight)
    elif denominator == "per_positive":
        # L_i = mean_p log(e^{s_ip} + Ng_i) - w_i mean_p s_ip = mean_p softplus(log Ng_i - s_ip) + (1 - w_i) mean_p s_ip:
        # the softplus kept apart from s_ip, else a loss far below s_ip ~ 1/t would be rounded away at s_ip's spacing
        log_ng = log_negative_mass(logits, positive, negative, temperature, beta, tau_plus)
        per_pair = torch.logaddexp(log_ng[:, None] - logits, torch.zeros_like(logits))
        softplus_mean = torch.where(positive, per_pair, torch.zeros_like(per_pair)).sum(dim=1) / count
        positive_mean = torch.where(positive, logits, torch.zeros_like(logits)).sum(dim=1) / count
        weight = 1.0 if positive_weight is None else positive_weight
        row_loss = torch.where(has_positive, softplus_mean + (1 - weight) * positive_mean, torch.zeros_like(log_ng))
    else:
        raise ValueError(f"denominator must be 'all', 'negatives' or 'per_positive', got {denominator!r}")
    return reduce_rows(row_loss, has_positive, reduction)


# Textbook forms of the variants, written independently of contrastive_loss_variant (as the named losses above
# are of contrastive_loss), in the authors' own terms.

def dcl(z1, z2, *, temperature=0.1, positive_weight=None, reduction="mean", eps=DEFAULT_EPS):
    """Decoupled contrastive loss (Yeh et al. 2022, eq. 6) over two views z1, z2 (N, D): row i of [z1; z2] gets
    -w_i s(i, other view) + log sum over every row but itself and its other view of e^{s}. positive_weight: (2N,)
    per row (DCLW: von_mises_fisher_weights twice), or None."""
    n = z1.shape[0]
    z = l2_normalize(torch.cat([z1, z2]), eps)
    logits = (z @ z.T) / temperature
    other = torch.arange(2 * n, device=z.device).roll(n)
    positive_logit = logits.gather(1, other[:, None]).squeeze(1)
    leave_out = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    leave_out[torch.arange(2 * n), other] = True
    negative_term = torch.logsumexp(logits.masked_fill(leave_out, float("-inf")), dim=1)
    weight = 1.0 if positive_weight is None else positive_weight
    row_loss = negative_term - weight * positive_logit
    return reduce_rows(row_loss, torch.ones_like(row_loss, dtype=torch.bool), reduction)


def von_mises_fisher_weights(z1, z2, sigma, eps=DEFAULT_EPS):
    """DCLW's weights (Yeh et al. 2022): w_i = 2 - N softmax_i(cos(z1_i, z2_i) / sigma), detached."""
    cosine = (l2_normalize(z1.detach(), eps) * l2_normalize(z2.detach(), eps)).sum(dim=1)
    return 2 - z1.shape[0] * torch.softmax(cosine / sigma, dim=0)


def hard_negative_loss(positive_logit, negative_logits, temperature, beta, tau_plus, reduction="mean"):
    """HCL's estimator (Robinson et al. 2021) in their exponential form: one positive logit (R,) and n negative
    logits (R, n) per row, s = cos / t.

        imp = e^{beta s_neg};  reweight = sum(imp e^{s_neg}) / mean(imp)
        Ng  = max((reweight - tau_plus n e^{s_pos}) / (1 - tau_plus), n e^{-1/t})
        L   = -log(e^{s_pos} / (e^{s_pos} + Ng))
    Overflows for small t outside float64; used by the tests in float64."""
    pos, neg = torch.exp(positive_logit), torch.exp(negative_logits)
    n = negative_logits.shape[1]
    imp = torch.exp(beta * negative_logits)
    reweight = (imp * neg).sum(dim=1) / imp.mean(dim=1)
    estimate = (reweight - tau_plus * n * pos) / (1 - tau_plus)
    estimate = torch.maximum(estimate, n * torch.exp(-1 / torch.as_tensor(temperature, dtype=pos.dtype)))
    row_loss = -torch.log(pos / (pos + estimate))
    return reduce_rows(row_loss, torch.ones_like(row_loss, dtype=torch.bool), reduction)


def hard_negative_nt_xent(z1, z2, *, temperature=0.5, beta=0.0, tau_plus=0.0, reduction="mean", eps=DEFAULT_EPS):
    """NT-Xent with HCL's estimator, as Robinson et al.'s code computes it: row i of [z1; z2], its other view
    the positive, the 2N - 2 other rows its negatives."""
    n = z1.shape[0]
    z = l2_normalize(torch.cat([z1, z2]), eps)
    logits = (z @ z.T) / temperature
    other = torch.arange(2 * n, device=z.device).roll(n)
    keep = ~torch.eye(2 * n, dtype=torch.bool, device=z.device)
    keep[torch.arange(2 * n), other] = False
    negative_logits = logits[keep].view(2 * n, 2 * n - 2)
    return hard_negative_loss(logits.gather(1, other[:, None]).squeeze(1), negative_logits, temperature, beta,
                              tau_plus, reduction)


def hard_negative_info_nce(query, key, *, negatives=None, temperature=0.07, beta=0.0, tau_plus=0.0,
                           reduction="mean", eps=DEFAULT_EPS):
    """InfoNCE / MoCo with HCL's estimator: query i's positive is key i; the other keys and the queue are its
    negatives."""
    q, k = l2_normalize(query, eps), l2_normalize(key, eps)
    logits = (q @ k.T) / temperature
    n = q.shape[0]
    negative_logits = logits[~torch.eye(n, dtype=torch.bool, device=q.device)].view(n, n - 1)
    if negatives is not None:
        negative_logits = torch.cat([negative_logits, (q @ l2_normalize(negatives, eps).T) / temperature], dim=1)
    return hard_negative_loss(logits.diagonal(), negative_logits, temperature, beta, tau_plus, reduction)
