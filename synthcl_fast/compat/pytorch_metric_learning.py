"""Drop-ins for pytorch-metric-learning's `NTXentLoss` and `SupConLoss` (tested against 2.9.0).

    from pytorch_metric_learning.losses import NTXentLoss, SupConLoss
    ->  from synthcl_fast.compat.pytorch_metric_learning import NTXentLoss, SupConLoss

forward(embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None), as in the library:
anchors are the embeddings; candidates are ref_emb (labels ref_labels), or the embeddings themselves with
each row's self left out. Rows sharing a label are positives, all others negatives.

- SupConLoss: minus the mean log-probability of a row's positives; averaged over the rows that have one (the
  library's AvgNonZeroReducer); 0 when the batch has no positive pair or no negative pair.
- NTXentLoss: the library scores each positive pair (a, p) against a's negatives only. That equals the fused
  op (whose softmax also holds a's other positives) when every anchor has at most one positive, the SimCLR
  setting (labels = arange(N) twice); with more, NotImplementedError (use SupConLoss or
  synthcl_fast.losses.supcon for several positives per anchor).

Not supported (NotImplementedError): `indices_tuple` (miner output) and the constructor's keyword options
(distance, reducer, embedding_regularizer, ...): the fused op is cosine similarity with these reductions.
"""

from __future__ import annotations

import torch
from torch import nn

from ..distributed import count_matches
from ..losses import contrastive_loss


class _PairLoss(nn.Module):
    """What both losses share: the library's forward signature, mapped onto the fused op's inputs."""

    def __init__(self, temperature, **kwargs):
        super().__init__()
        if kwargs:
            raise NotImplementedError(
                f"{type(self).__name__}: option(s) {sorted(kwargs)} are not supported by synthcl_fast's drop-in "
                "(it computes cosine similarity and the library's default reduction)")
        self.temperature = temperature

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        if indices_tuple is not None:
            raise NotImplementedError(f"{type(self).__name__}: indices_tuple (pairs chosen by a miner) is not "
                                      "supported by synthcl_fast's drop-in; pass labels")
        if labels is None:
            raise ValueError("labels and indices_tuple cannot both be None")
        labels = torch.as_tensor(labels, device=embeddings.device)
        if ref_emb is None:
            # Candidates are the embeddings themselves: the pair (i, i) is neither positive nor negative.
            candidates, ref_labels, exclude_self = None, labels, True
        elif ref_labels is None:
            # The library then matches embeddings[i] with ref_emb[j] by `labels`, leaving out j == i.
            candidates, ref_labels, exclude_self = ref_emb, labels, True
        else:
            candidates, exclude_self = ref_emb, False
            ref_labels = torch.as_tensor(ref_labels, device=embeddings.device)
        # The fused op reserves negative labels (-1: never a positive); any integer is a class here.
        lowest = torch.minimum(labels.min(), ref_labels.min())
        labels, ref_labels = labels - lowest, ref_labels - lowest
        self._check_labels(labels, ref_labels, exclude_self)
        loss = contrastive_loss(embeddings, candidates, labels, ref_labels, temperature=self.temperature,
                                exclude_self=exclude_self)
        return self._finish(loss, labels, ref_labels)

    def _check_labels(self, labels, ref_labels, exclude_self):
        pass

    def _finish(self, loss, labels, ref_labels):
        return loss


class NTXentLoss(_PairLoss):
    """pytorch-metric-learning's NTXentLoss(temperature=0.07)."""

    def __init__(self, temperature=0.07, **kwargs):
        super().__init__(temperature, **kwargs)

    def _check_labels(self, labels, ref_labels, exclude_self):
        if bool((count_matches(labels, ref_labels) - int(exclude_self) > 1).any()):
            raise NotImplementedError(
                "NTXentLoss: an anchor with several positives (a label shared by more than two rows) is scored "
                "per positive pair by pytorch-metric-learning, which the fused op does not compute; use "
                "synthcl_fast.compat.pytorch_metric_learning.SupConLoss or synthcl_fast.losses.supcon")


class SupConLoss(_PairLoss):
    """pytorch-metric-learning's SupConLoss(temperature=0.1)."""

    def __init__(self, temperature=0.1, **kwargs):
        super().__init__(temperature, **kwargs)

    def _finish(self, loss, labels, ref_labels):
        # The library returns 0 for a batch without any negative pair (all labels equal); no host sync here.
        has_negative = torch.minimum(labels.min(), ref_labels.min()) != torch.maximum(labels.max(), ref_labels.max())
        return loss * has_negative
