"""Drop-in for solo-learn's `solo.losses.simclr.simclr_loss_func` (tested against solo-learn 1.0.2, the release
on PyPI).

    from solo.losses.simclr import simclr_loss_func   ->   from synthcl_fast.compat.solo import simclr_loss_func

Later solo-learn versions (installed from its repository, not from PyPI) changed the signature to
simclr_loss_func(z, indexes, temperature) and gather across GPUs inside; for those use
synthcl_fast.losses.nt_xent(z1, z2, temperature=t, gather_distributed=True), which is the same loss for two views.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..losses import nt_xent


def simclr_loss_func(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1,
                     extra_pos_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SimCLR's loss of solo-learn: z1, z2 (N, D) are two views; returns the scalar NT-Xent loss in z1's dtype.

    extra_pos_mask (an arbitrary (2N, 2N) mask of extra positives) raises NotImplementedError: the fused op
    takes positives as labels. For supervised SimCLR (positives = same class) use
    synthcl_fast.losses.supcon(torch.cat([z1, z2]), labels.repeat(2), temperature=t).
    """
    if extra_pos_mask is not None:
        raise NotImplementedError(
            "simclr_loss_func: extra_pos_mask is not supported by synthcl_fast's drop-in (positives must be given "
            "as labels); for supervised SimCLR use synthcl_fast.losses.supcon(torch.cat([z1, z2]), "
            "labels.repeat(2), temperature=t)")
    return nt_xent(z1, z2, temperature=temperature).to(z1.dtype)
