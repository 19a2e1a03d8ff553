"""Drop-ins for pytorch-metric-learning's `NTXentLoss`, `SupConLoss` and `CrossBatchMemory` (tested against 2.9.0).

    from pytorch_metric_learning.losses import NTXentLoss, SupConLoss, CrossBatchMemory
    ->  from synthcl_fast.compat.pytorch_metric_learning import NTXentLoss, SupConLoss, CrossBatchMemory

Where pytorch-metric-learning is installed, the losses extend its BaseMetricLossFunction and CrossBatchMemory
extends its CrossBatchMemory, so the library's wrappers take them (DistributedLossWrapper, SelfSupervisedLoss,
CrossBatchMemory). The library is imported when a class is first used, not with this module; the losses also
work without it (CrossBatchMemory needs it).

forward(embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None), as in the library:
anchors are the embeddings, candidates ref_emb (labels ref_labels) or the embeddings themselves. With labels,
(i, j) is a positive pair when labels[i] == ref_labels[j], else a negative pair; the pair (i, i) is neither when
ref_labels *is* labels (the same tensor object; also when ref_emb or ref_labels is not given), the library's rule.
With indices_tuple, the pairs are the ones listed: (a1, p, a2, n), or triplets (a, p, n) read as (a, p, a, n).
s = cos / temperature.

- NTXentLoss: each positive pair (a, p) against a's negative pairs only, averaged over the positive pairs (the
  library's MeanReducer); a pair listed twice counts twice:
      loss(a, p) = softplus(log sum_{n: (a, n) negative} e^{s_an} - s_ap)
  With labels this is synthcl_fast's op with denominator="per_positive", weighted by each row's positive count.
- SupConLoss: per row, log sum over its positive and negative pairs of e^{s} minus the mean of its positive
  logits (pairs listed twice count once), averaged over the rows whose loss is > 0 (AvgNonZeroReducer).
- Both return 0 when there is no positive or no negative pair, or when each index list has at most one entry
  (the library's rules), and the loss in the embeddings' dtype (computed in fp32 for fp16/bf16).

Miner output (indices_tuple) is computed from the listed pairs alone: a gather and a dot product per pair,
O(#pairs * D) work and O(#pairs) memory, never the R x K logits (unless the list holds R x K pairs), in plain
PyTorch (not fused yet). CrossBatchMemory without a miner stays on the fused op: the queue is passed as
candidates with labels, this batch's own slots first, so that exclude_self removes each row's own copy.

Not supported (NotImplementedError naming the option): distance= other than CosineSimilarity(), reducer= other
than the loss's default reducer, embedding_regularizer=, collect_stats=True.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .. import _validation as check
from ..distributed import count_matches
from ..losses import contrastive_loss
from ..reference import DEFAULT_EPS, l2_normalize

__all__ = ["NTXentLoss", "SupConLoss", "CrossBatchMemory"]


def _library():
    """pytorch_metric_learning.losses, or None where it is not installed."""
    try:
        import pytorch_metric_learning.losses as library_losses
    except ImportError:
        return None
    return library_losses


def _to_device(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The library's c_f.to_device: the same object when it is already on like's device (labels identity counts)."""
    return x if x.device == like.device else x.to(like.device)


def _zero_loss(embeddings: torch.Tensor) -> torch.Tensor:
    """The library's zero loss (its reducers' zero_loss): 0 in the embeddings' dtype, with zero gradients."""
    return torch.sum(embeddings * 0)


# --------------------------------------------------------------------------------------------- pairs from a list
class _PairDot(torch.autograd.Function):
    """(P,) u[rows] . v[cols] in chunks: O(chunk * D) scratch memory, only the indices saved for backward."""

    CHUNK_ELEMENTS = 1 << 22

    @staticmethod
    def forward(ctx, u, v, rows, cols):
        ctx.save_for_backward(u, v, rows, cols)
        chunk = max(1, _PairDot.CHUNK_ELEMENTS // u.shape[1])
        out = u.new_empty(rows.shape[0])
        for start in range(0, rows.shape[0], chunk):
            r, c = rows[start: start + chunk], cols[start: start + chunk]
            out[start: start + chunk] = (u[r] * v[c]).sum(dim=1)
        return out

    @staticmethod
    def backward(ctx, grad):
        u, v, rows, cols = ctx.saved_tensors
        chunk = max(1, _PairDot.CHUNK_ELEMENTS // u.shape[1])
        grad_u, grad_v = torch.zeros_like(u), torch.zeros_like(v)
        for start in range(0, rows.shape[0], chunk):
            r, c, g = rows[start: start + chunk], cols[start: start + chunk], grad[start: start + chunk, None]
            grad_u.index_add_(0, r, g * v[c])
            grad_v.index_add_(0, c, g * u[r])
        return grad_u, grad_v, None, None


def _segment_logsumexp(values: torch.Tensor, segments: torch.Tensor, n_segments: int) -> torch.Tensor:
    """(n_segments,) log sum_{k: segments[k] == i} e^{values[k]}; -inf for a segment without values."""
    peak = values.new_full((n_segments,), float("-inf")).scatter_reduce(0, segments, values.detach(), "amax")
    shift = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = values.new_zeros(n_segments).index_add(0, segments, torch.exp(values - shift[segments]))
    return torch.log(total) + shift


def _pairs(indices_tuple, n_rows: int, n_cols: int, device) -> tuple[torch.Tensor, ...]:
    """(a1, p, a2, n) as int64 tensors on `device`, from a miner's pairs or triplets, checked against the shapes."""
    if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) not in (3, 4):
        raise ValueError("indices_tuple must be (anchors, positives, negatives) or (anchors1, positives, anchors2, "
                         f"negatives), got {type(indices_tuple).__name__} of length {len(indices_tuple)}")
    if len(indices_tuple) == 3:
        anchors, positives, negatives = indices_tuple
        indices_tuple = (anchors, positives, anchors, negatives)
    pairs = tuple(torch.as_tensor(x, device=device).reshape(-1).long() for x in indices_tuple)
    for name, x, bound in zip(("a1", "p", "a2", "n"), pairs, (n_rows, n_cols, n_rows, n_cols)):
        if x.numel() and bool((x.min() < 0) | (x.max() >= bound)):
            raise ValueError(f"indices_tuple: {name} indices must be in [0, {bound}), got {int(x.min())} .. "
                             f"{int(x.max())}")
    if pairs[0].shape != pairs[1].shape or pairs[2].shape != pairs[3].shape:
        raise ValueError("indices_tuple: anchors and their positives (negatives) must have the same length")
    return pairs


class _PairLogits:
    """s = cos / t for listed pairs: the embeddings normalized once, each pair one dot product."""

    def __init__(self, embeddings, ref_emb, temperature):
        self.u = l2_normalize(embeddings, DEFAULT_EPS)
        self.v = self.u if ref_emb is embeddings else l2_normalize(ref_emb, DEFAULT_EPS)
        self.temperature = check.check_temperature(temperature, embeddings)

    def __call__(self, rows, cols):
        return _PairDot.apply(self.u, self.v, rows, cols) / self.temperature


# ------------------------------------------------------------------------------------------------------ losses
class _MetricLoss:
    """The library's forward, mapped onto synthcl_fast's op (labels) or onto the listed pairs (indices_tuple).

    Mixed in before the library's BaseMetricLossFunction (or nn.Module without the library)."""

    DEFAULT_REDUCER = ""  # the library's reducer class name for this loss

    def __init__(self, temperature, **kwargs):
        unsupported = [key for key, value in kwargs.items() if not self._is_default_option(key, value)]
        if unsupported:
            raise NotImplementedError(
                f"{type(self).__name__}: option(s) {sorted(unsupported)} are not supported by synthcl_fast's "
                "drop-in (it computes cosine similarity with the library's default reducer); use "
                f"pytorch_metric_learning.losses.{type(self).__name__} for them")
        with_library = _library() is not None
        super().__init__(**(kwargs if with_library else {}))  # without the library: nn.Module, defaults only
        self.temperature = temperature
        if with_library:
            self.add_to_recordable_attributes(list_of_names=["temperature"], is_stat=False)

    def _is_default_option(self, key, value) -> bool:
        """Options the library takes that leave the loss as computed here (e.g. distance=CosineSimilarity())."""
        if key == "embedding_reg_weight" or (value is None and key in ("distance", "reducer",
                                                                       "embedding_regularizer")):
            return True
        if key == "collect_stats":
            return not value
        if _library() is None:
            return False
        from pytorch_metric_learning import distances, reducers
        if key == "distance":
            return (type(value) is distances.CosineSimilarity and value.p == 2 and value.power == 1
                    and value.normalize_embeddings and value.is_inverted)
        if key == "reducer":
            default = getattr(reducers, self.DEFAULT_REDUCER)
            if type(value) is not default:
                return False
            return default is not reducers.AvgNonZeroReducer or (value.low == 0 and value.high is None)
        return False

    # The library's base class asks for these while it is constructed.
    def get_default_distance(self):
        from pytorch_metric_learning.distances import CosineSimilarity
        return CosineSimilarity()

    def get_default_reducer(self):
        from pytorch_metric_learning import reducers
        return getattr(reducers, self.DEFAULT_REDUCER)()

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        if labels is None and indices_tuple is None:
            raise ValueError("labels and indices_tuple cannot both be None")
        check.check_features(embeddings, "embeddings")
        if labels is not None:
            labels = _to_device(torch.as_tensor(labels), embeddings)
            if labels.shape != embeddings.shape[:1]:
                raise ValueError(f"Number of embeddings must equal number of labels: labels has shape "
                                 f"{tuple(labels.shape)} for {embeddings.shape[0]} embeddings")
        if ref_emb is None:
            ref_emb, ref_labels = embeddings, labels
        else:
            check.check_features(ref_emb, "ref_emb")
            check.check_like(ref_emb, "ref_emb", embeddings, "embeddings")
            if ref_labels is not None:
                ref_labels = _to_device(torch.as_tensor(ref_labels), ref_emb)
                if ref_labels.shape != ref_emb.shape[:1]:
                    raise ValueError(f"Number of embeddings must equal number of labels: ref_labels has shape "
                                     f"{tuple(ref_labels.shape)} for {ref_emb.shape[0]} ref_emb rows")
        if indices_tuple is not None:
            pairs = _pairs(indices_tuple, embeddings.shape[0], ref_emb.shape[0], embeddings.device)
            loss = self._listed_pairs_loss(embeddings, ref_emb, pairs)
        else:
            # The library matches labels with ref_labels, and drops the pairs (i, i) when they are one object.
            exclude_self = ref_labels is None or ref_labels is labels
            if ref_labels is None:
                if ref_emb.shape[0] != labels.shape[0]:
                    raise ValueError(f"ref_emb without ref_labels: the library pairs embeddings[i] with ref_emb[j] "
                                     f"by labels[j], so ref_emb needs {labels.shape[0]} rows, got {ref_emb.shape[0]}")
                ref_labels = labels
            loss = self._labels_loss(embeddings, labels, ref_emb, ref_labels, exclude_self)
        return loss.to(embeddings.dtype)

    def _labels_loss(self, embeddings, labels, ref_emb, ref_labels, exclude_self):
        """The loss over every pair given by labels, on synthcl_fast's op (fused where the backend fuses it)."""
        for name, x in (("labels", labels), ("ref_labels", ref_labels)):
            if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
                raise TypeError(f"{name} must have an integer dtype, got {x.dtype}")
        # Any integer is a class here; the op reserves -1 (never a positive), so labels are shifted to >= 0.
        lowest = torch.minimum(labels.min(), ref_labels.min())
        labels, ref_labels = labels - lowest, ref_labels - lowest
        matches = count_matches(labels, ref_labels)
        n_positive = matches - int(exclude_self)
        n_positive_pairs = n_positive.sum()
        n_negative_pairs = labels.shape[0] * ref_labels.shape[0] - matches.sum()
        # The library returns 0 without a positive or a negative pair, or with at most one of each.
        library_zero = (n_positive_pairs == 0) | (n_negative_pairs == 0) | ((n_positive_pairs <= 1)
                                                                            & (n_negative_pairs <= 1))
        candidates = None if ref_emb is embeddings and exclude_self else ref_emb
        loss = self._reduce_rows(embeddings, candidates, labels, ref_labels, exclude_self, n_positive)
        return torch.where(library_zero, _zero_loss(embeddings).to(loss.dtype), loss)


class _NTXentLoss(_MetricLoss):
    """pytorch-metric-learning's NTXentLoss(temperature=0.07): each positive pair against its anchor's negatives,
    mean over the positive pairs."""

    DEFAULT_REDUCER = "MeanReducer"

    def __init__(self, temperature=0.07, **kwargs):
        super().__init__(temperature, **kwargs)

    def _reduce_rows(self, embeddings, candidates, labels, ref_labels, exclude_self, n_positive):
        # Row i's loss is the mean over its positives of softplus(lse_neg - s_ip); weighted by |P(i)|, the mean
        # over the rows is the library's mean over positive pairs.
        row_loss = contrastive_loss(embeddings, candidates, labels, ref_labels, temperature=self.temperature,
                                    exclude_self=exclude_self, denominator="per_positive", reduction="none")
        weight = n_positive.to(row_loss.dtype)
        return (row_loss * weight).sum() / weight.sum().clamp_min(1)

    def _listed_pairs_loss(self, embeddings, ref_emb, pairs):
        a1, p, a2, n = pairs
        if all(x.numel() <= 1 for x in pairs) or a1.numel() == 0 or a2.numel() == 0:
            return _zero_loss(embeddings)
        logits = _PairLogits(embeddings, ref_emb, self.temperature)
        log_negative_sum = _segment_logsumexp(logits(a2, n), a2, embeddings.shape[0])
        return F.softplus(log_negative_sum[a1] - logits(a1, p)).mean()


class _SupConLoss(_MetricLoss):
    """pytorch-metric-learning's SupConLoss(temperature=0.1): SupCon's row loss, mean over rows with loss > 0."""

    DEFAULT_REDUCER = "AvgNonZeroReducer"

    def __init__(self, temperature=0.1, **kwargs):
        super().__init__(temperature, **kwargs)

    @staticmethod
    def _average_non_zero(row_loss):
        counted = row_loss > 0
        return torch.where(counted, row_loss, torch.zeros_like(row_loss)).sum() / counted.sum().clamp_min(1)

    def _reduce_rows(self, embeddings, candidates, labels, ref_labels, exclude_self, n_positive):
        row_loss = contrastive_loss(embeddings, candidates, labels, ref_labels, temperature=self.temperature,
                                    exclude_self=exclude_self, reduction="none")
        return self._average_non_zero(row_loss)

    def _listed_pairs_loss(self, embeddings, ref_emb, pairs):
        if all(x.numel() <= 1 for x in pairs):
            return _zero_loss(embeddings)
        n_rows, n_cols = embeddings.shape[0], ref_emb.shape[0]
        a1, p, a2, n = pairs
        # The library marks pairs in R x K masks: a pair listed twice counts once.
        positive_keys, negative_keys = torch.unique(a1 * n_cols + p), torch.unique(a2 * n_cols + n)
        if bool(torch.isin(positive_keys, negative_keys).any()):
            raise ValueError("indices_tuple: a pair is listed both as a positive and as a negative pair")
        if positive_keys.numel() == 0 or negative_keys.numel() == 0:
            return _zero_loss(embeddings)
        logits = _PairLogits(embeddings, ref_emb, self.temperature)
        positive_rows, negative_rows = positive_keys // n_cols, negative_keys // n_cols
        positive_logits = logits(positive_rows, positive_keys % n_cols)
        log_denominator = _segment_logsumexp(torch.cat([positive_logits, logits(negative_rows, negative_keys % n_cols)]),
                                             torch.cat([positive_rows, negative_rows]), n_rows)
        n_positive = torch.bincount(positive_rows, minlength=n_rows)
        positive_sum = positive_logits.new_zeros(n_rows).index_add(0, positive_rows, positive_logits)
        has_positive = n_positive > 0
        row_loss = torch.where(has_positive, log_denominator - positive_sum / n_positive.clamp_min(1),
                               torch.zeros_like(positive_sum))
        return self._average_non_zero(row_loss)


# ------------------------------------------------------------------------------------------- CrossBatchMemory
class _CrossBatchMemory:
    """pytorch-metric-learning's CrossBatchMemory(loss, embedding_size, memory_size=1024, miner=None): the same
    queue; with one of these drop-in losses, no miner, no indices_tuple and no enqueue_mask, the loss runs on
    synthcl_fast's op with the queue as candidates (this batch's own slots first, left out by exclude_self)
    instead of the library's list of every pair. Anything else goes to the library's forward."""

    def forward(self, embeddings, labels, indices_tuple=None, enqueue_mask=None):
        fused = (isinstance(self.loss, _MetricLoss) and self.miner is None and indices_tuple is None
                 and enqueue_mask is None)
        if not fused:
            return super().forward(embeddings, labels, indices_tuple, enqueue_mask)
        if embeddings.shape[0] > self.memory_size:
            raise ValueError(f"CrossBatchMemory: a batch of {embeddings.shape[0]} rows does not fit a memory of "
                             f"{self.memory_size}")
        self.reset_stats()
        labels = _to_device(torch.as_tensor(labels), embeddings)
        self.embedding_memory = self.embedding_memory.to(embeddings.device, embeddings.dtype)
        self.label_memory = self.label_memory.to(embeddings.device, labels.dtype)
        first_slot = self.queue_idx
        self.add_to_memory(embeddings, labels, embeddings.shape[0])
        size = self.memory_size if self.has_been_filled else self.queue_idx
        order = (first_slot + torch.arange(size, device=embeddings.device)) % size  # own slots first
        loss = self.loss._labels_loss(embeddings, labels, self.embedding_memory[order], self.label_memory[order],
                                      exclude_self=True)
        return loss.to(embeddings.dtype)


class _CrossBatchMemoryWithoutLibrary(nn.Module):
    def __init__(self, *args, **kwargs):
        raise ImportError("synthcl_fast's CrossBatchMemory extends pytorch-metric-learning's; install "
                          "pytorch-metric-learning to use it")


# --------------------------------------------------------------------------------- classes built on first use
_IMPLEMENTATIONS = {"NTXentLoss": _NTXentLoss, "SupConLoss": _SupConLoss, "CrossBatchMemory": _CrossBatchMemory}
_BUILT: dict[str, type] = {}


def _build(name: str) -> type:
    """The public class: the implementation, then the library's base class (or nn.Module without the library)."""
    library = _library()
    implementation = _IMPLEMENTATIONS[name]
    if name == "CrossBatchMemory":
        bases = (implementation, library.CrossBatchMemory) if library else (_CrossBatchMemoryWithoutLibrary,)
    else:
        bases = (implementation, library.BaseMetricLossFunction if library else nn.Module)
    return type(name, bases, {"__module__": __name__, "__qualname__": name, "__doc__": implementation.__doc__})


def __getattr__(name: str):
    if name not in _IMPLEMENTATIONS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _BUILT:
        _BUILT[name] = _build(name)
    return _BUILT[name]
