"""Drop-ins for lightly's `NTXentLoss`, `DCLLoss` and `DCLWLoss` (tested against lightly 1.6.0).

    from lightly.loss import NTXentLoss, DCLLoss, DCLWLoss
    ->  from synthcl_fast.compat.lightly import NTXentLoss, DCLLoss, DCLWLoss

The losses come back in the dtype of out0 (computed in fp32 for fp16/bf16), as lightly's do. Unlike lightly, the
temperature must be > 0: lightly also takes negative ones (NTXentLoss: any with abs >= 1e-8; DCLLoss: any).

Without a memory bank this is synthcl_fast.losses.nt_xent; with gather_distributed=True, every rank's views
are candidates, as in lightly (label offsets, self-masks and gradients: see synthcl_fast.distributed). Unlike
lightly, ranks may hold batches of different sizes.

With a memory bank (MoCo-style, memory_bank_size=(num_features, dim)), row i of out0 classifies its positive
out1_i against the bank only (lightly's definition; not symmetric, no in-batch negatives):

    p_i = cos(out0_i, out1_i) / t,   n_ik = cos(out0_i, bank_k) / t
    L   = mean_i  logaddexp(p_i, logsumexp_k n_ik) - p_i

The bank is read before it is updated with the normalized out1 (only when out0 requires grad, as lightly does;
gathered over ranks first when gather_distributed=True).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .. import distributed
from ..losses import contrastive_loss, dcl, nt_xent


def _check_temperature(temperature) -> None:
    """lightly's rule for NTXentLoss (abs(t) >= 1e-8), plus ours: a float temperature must be > 0."""
    if isinstance(temperature, Tensor):
        return  # checked in the forward pass
    if abs(temperature) < 1e-8:
        raise ValueError("Illegal temperature: abs({}) < 1e-8".format(temperature))
    if temperature < 0:
        raise ValueError(f"temperature must be > 0, got {temperature}: synthcl_fast's drop-in does not take "
                         "negative temperatures (lightly does)")


def _check_gather_distributed(gather_distributed: bool) -> None:
    if gather_distributed and not torch.distributed.is_available():
        raise ValueError("gather_distributed is True but torch.distributed is not available")


def _bank_logsumexp(out0: Tensor, bank: Tensor, temperature) -> Tensor:
    """(R,) logsumexp_k cos(out0_i, bank_k) / t, with the fused op (the R x K logits are never stored).

    With bank row 0 as the only positive of every row, the op's row loss is logsumexp_k n_ik - n_i0.
    """
    anchor_labels = torch.zeros(out0.shape[0], dtype=torch.int64, device=out0.device)
    bank_labels = torch.full((bank.shape[0],), -1, dtype=torch.int64, device=out0.device)
    bank_labels[0] = 0
    row_loss = contrastive_loss(out0, bank, anchor_labels, bank_labels, temperature=temperature, exclude_self=False,
                                reduction="none")
    first_logit = F.normalize(out0, dim=1) @ F.normalize(bank[0], dim=0) / temperature
    return row_loss + first_logit


class NTXentLoss(nn.Module):
    """lightly's NTXentLoss: forward(out0, out1), both (batch_size, dim); returns the scalar loss.

    Args:
        temperature: > 0 (float or 0-d tensor).
        memory_bank_size: 0 (SimCLR) or (num_features, dim) (MoCo-style negatives).
        gather_distributed: candidates from every torch.distributed rank (and, with a bank, bank updates).
    """

    def __init__(self, temperature: float = 0.5, memory_bank_size: Union[int, Sequence[int]] = 0,
                 gather_distributed: bool = False):
        super().__init__()
        _check_temperature(temperature)
        size = (memory_bank_size,) if isinstance(memory_bank_size, int) else tuple(memory_bank_size)
        if any(x < 0 for x in size) or (size != (0,) and len(size) != 2):
            raise ValueError(f"Illegal memory bank size {memory_bank_size}: expected 0 (no memory bank) or a "
                             "(num_features, dim) tuple")
        _check_gather_distributed(gather_distributed)
        self.temperature, self.memory_bank_size, self.gather_distributed = temperature, size, gather_distributed
        bank = F.normalize(torch.randn(size), dim=-1) if len(size) == 2 else torch.empty(0)
        self.register_buffer("bank", bank, persistent=False)
        self.register_buffer("bank_ptr", torch.zeros(1, dtype=torch.long), persistent=False)

    def forward(self, out0: Tensor, out1: Tensor) -> Tensor:
        if self.memory_bank_size[0] == 0:
            loss = nt_xent(out0, out1, temperature=self.temperature, gather_distributed=self.gather_distributed)
            return loss.to(out0.dtype)
        negatives = self.bank.clone().to(out0.dtype)
        if out0.requires_grad:
            self._enqueue(F.normalize(out1.detach(), dim=1))
        positive = (F.normalize(out0, dim=1) * F.normalize(out1, dim=1)).sum(dim=1) / self.temperature
        loss = (torch.logaddexp(positive, _bank_logsumexp(out0, negatives, self.temperature)) - positive).mean()
        return loss.to(out0.dtype)

    @torch.no_grad()
    def _enqueue(self, batch: Tensor) -> None:
        """lightly's ring buffer: write from bank_ptr; a batch that reaches the end is cut there and the pointer
        goes back to 0."""
        if self.gather_distributed and distributed.is_distributed():
            batch, _ = distributed.all_gather(batch, with_grad=False)
        size, ptr = self.memory_bank_size[0], int(self.bank_ptr)
        if ptr + batch.shape[0] >= size:
            self.bank[ptr:] = batch[: size - ptr]
            self.bank_ptr.zero_()
        else:
            self.bank[ptr: ptr + batch.shape[0]] = batch
            self.bank_ptr[0] = ptr + batch.shape[0]


def negative_mises_fisher_weights(out0: Tensor, out1: Tensor, sigma: float = 0.5) -> Tensor:
    """lightly's DCLW weights of the rows as given (DCLLoss passes them normalized), detached (N,):

        w_i = 2 - N softmax_i(out0_i . out1_i / sigma)
    """
    similarity = torch.einsum("nm,nm->n", out0.detach(), out1.detach()) / sigma
    return 2 - out0.shape[0] * torch.softmax(similarity, dim=0)


class DCLLoss(nn.Module):
    """lightly's DCLLoss (decoupled contrastive learning, Yeh et al. 2022): forward(out0, out1), both (batch_size,
    dim); the mean over the rows of [out0; out1] of

        L_i = -w_i s(i, its other view) + log sum_{j not i, not its other view} e^{s_ij},   s = cos / t

    with w = weight_fn(out0, out1) for the rows of out0 and weight_fn(out1, out0) for those of out1 (both
    normalized; w = 1 without weight_fn). This is synthcl_fast.losses.dcl.

    Args:
        temperature: > 0 (float or 0-d tensor).
        weight_fn: None or a function of the two normalized views returning (batch_size,) weights (gradients
            through it are kept, as in lightly).
        gather_distributed: candidates from every torch.distributed rank.
    """

    def __init__(self, temperature: float = 0.1, weight_fn: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
                 gather_distributed: bool = False):
        super().__init__()
        _check_temperature(temperature)
        _check_gather_distributed(gather_distributed)
        self.temperature, self.weight_fn, self.gather_distributed = temperature, weight_fn, gather_distributed

    def forward(self, out0: Tensor, out1: Tensor) -> Tensor:
        weight = None
        if self.weight_fn is not None:
            u0, u1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
            weight = torch.cat([self.weight_fn(u0, u1), self.weight_fn(u1, u0)])
        loss = dcl(out0, out1, temperature=self.temperature, positive_weight=weight,
                   gather_distributed=self.gather_distributed)
        return loss.to(out0.dtype)


class DCLWLoss(DCLLoss):
    """lightly's DCLWLoss: DCLLoss with weight_fn = negative_mises_fisher_weights(sigma=sigma)."""

    def __init__(self, temperature: float = 0.1, sigma: float = 0.5, gather_distributed: bool = False):
        super().__init__(temperature, partial(negative_mises_fisher_weights, sigma=sigma), gather_distributed)
