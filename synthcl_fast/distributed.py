"""Contrastive losses across processes (torch.distributed): every rank's rows become candidates of every rank.

With `gather_distributed=True` (nt_xent, supcon, ppcl, info_nce, clip_loss and their modules), each rank
keeps its own rows as anchors and gathers the candidates of all ranks:

    anchors      local rows (R_r of them)
    candidates   the rows of every rank (sum_q R_q), then this rank's `negatives` (never gathered)
    labels       instance ids made unique per rank (label * world_size + rank); class labels (supcon) as given
    self-mask    this rank's own rows are put first among the candidates, so row i's self is candidate i

Gradient convention (the one DDP expects). Rank r returns

    L_r = world_size * (sum of its anchors' row losses) / (rows with a positive, over all ranks)   ("mean")

so that the mean of L_r over the ranks is exactly the loss of one process on the concatenated batch, and the
backward of the gather sums, on the rank that owns a row, the gradients every rank computed for it. DDP then
averages the parameter gradients over the ranks and gets the gradient of that single-process loss: nothing
is off by the world size. Ranks may hold different numbers of rows (an uneven last batch).

Every rank must call the loss (and its backward) the same number of times: the gather is a collective.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed(group=None) -> bool:
    """True inside an initialized process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def world_size(group=None) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def rank(group=None) -> int:
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def _supports_reduce_scatter(group) -> bool:
    return dist.get_backend(group) in ("nccl", "xccl")


class _AllGather(torch.autograd.Function):
    """Concatenation of every rank's rows; backward: the sum over ranks of the gradient of this rank's rows."""

    @staticmethod
    def forward(ctx, x, sizes, group):
        ctx.sizes, ctx.group = sizes, group
        longest = max(sizes)
        padded = x
        if x.shape[0] < longest:  # all_gather needs one shape on every rank
            padded = x.new_zeros((longest, *x.shape[1:]))
            padded[: x.shape[0]] = x
        out = x.new_empty((len(sizes) * longest, *x.shape[1:]))
        dist.all_gather_into_tensor(out, padded, group=group)
        return torch.cat([out[q * longest: q * longest + n] for q, n in enumerate(sizes)])

    @staticmethod
    def backward(ctx, grad):
        sizes, group, longest = ctx.sizes, ctx.group, max(ctx.sizes)
        padded = grad.new_zeros((len(sizes) * longest, *grad.shape[1:]))
        for q, chunk in enumerate(grad.split(sizes)):
            padded[q * longest: q * longest + chunk.shape[0]] = chunk
        own = dist.get_rank(group)
        if _supports_reduce_scatter(group):
            mine = grad.new_empty((longest, *grad.shape[1:]))
            dist.reduce_scatter_tensor(mine, padded, group=group)
        else:  # gloo has no reduce-scatter
            dist.all_reduce(padded, group=group)
            mine = padded[own * longest: (own + 1) * longest]
        return mine[: sizes[own]], None, None


def gather_sizes(n_rows: int, device: torch.device, group=None) -> list[int]:
    """The number of rows of every rank (one small all_gather)."""
    sizes = torch.zeros(world_size(group), dtype=torch.int64, device=device)
    dist.all_gather_into_tensor(sizes, torch.tensor([n_rows], dtype=torch.int64, device=device), group=group)
    return sizes.tolist()


def all_gather(x: torch.Tensor, sizes: list[int] | None = None, group=None, *, with_grad: bool = True):
    """Rows of every rank concatenated in rank order, and the list of row counts per rank.

    Args:
        x: (R_r, ...) this rank's rows; R_r may differ between ranks.
        sizes: every rank's R_q if already known (saves one collective).
        with_grad: gradients flow back to every rank's x (summed over the ranks that used the row);
            else the result is detached.
    Returns:
        ((sum_q R_q, ...) tensor, sizes)
    """
    if sizes is None:
        sizes = gather_sizes(x.shape[0], x.device, group)
    if with_grad:
        return _AllGather.apply(x.contiguous(), sizes, group), sizes
    with torch.no_grad():
        return _AllGather.apply(x.detach().contiguous(), sizes, group), sizes


def unique_per_rank(labels: torch.Tensor, group=None) -> torch.Tensor:
    """Instance ids made distinct between ranks: label * world_size + rank (-1 stays -1)."""
    return torch.where(labels >= 0, labels * world_size(group) + rank(group), labels)


def count_matches(labels: torch.Tensor, candidate_labels: torch.Tensor) -> torch.Tensor:
    """(R,) how many candidate labels equal each label. Sort-based, O((R + K) log K), no R x K matrix."""
    ordered = candidate_labels.sort().values
    return torch.searchsorted(ordered, labels, right=True) - torch.searchsorted(ordered, labels)


def rows_with_positive(labels: torch.Tensor) -> torch.Tensor:
    """How many rows have another row with the same label (>= 0): the rows that count in a self-contrastive
    mean."""
    return ((count_matches(labels, labels) > 1) & (labels >= 0)).sum()


def self_candidates(features: torch.Tensor, labels: torch.Tensor, group=None):
    """Candidates of a self-contrastive loss across ranks: [this rank's rows; every other rank's rows].

    Returns (candidates, candidate_labels, rows with a positive over all ranks). This rank's rows come first,
    so anchor i's self is candidate i and exclude_self applies unchanged.
    """
    gathered, sizes = all_gather(features, group=group)
    gathered_labels, _ = all_gather(labels, sizes, group, with_grad=False)
    start = sum(sizes[: rank(group)])
    end = start + features.shape[0]
    candidates = torch.cat([features, gathered[:start], gathered[end:]])
    candidate_labels = torch.cat([labels, gathered_labels[:start], gathered_labels[end:]])
    return candidates, candidate_labels, rows_with_positive(gathered_labels)


def key_candidates(keys: torch.Tensor, group=None):
    """Candidates of a query-key loss across ranks (key i is the positive of query i on the same rank).

    Returns (candidates: every rank's keys in rank order, anchor labels, candidate labels, total rows).
    """
    gathered, sizes = all_gather(keys, group=group)
    start = sum(sizes[: rank(group)])
    anchor_labels = torch.arange(start, start + keys.shape[0], device=keys.device)
    return gathered, anchor_labels, torch.arange(gathered.shape[0], device=keys.device), sum(sizes)


def share_of_global(row_loss_sum: torch.Tensor, n_global_rows, reduction: str, group=None) -> torch.Tensor:
    """This rank's share of a loss over all ranks, scaled so that the mean over ranks is the global loss."""
    scaled = row_loss_sum * world_size(group)
    if reduction == "mean":
        return scaled / torch.as_tensor(n_global_rows, device=scaled.device).clamp_min(1)
    return scaled
