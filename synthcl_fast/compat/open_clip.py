"""Drop-in for open_clip's `open_clip.loss.ClipLoss` (tested against open_clip_torch 3.3.0).

    from open_clip.loss import ClipLoss   ->   from synthcl_fast.compat.open_clip import ClipLoss

open_clip's loss takes the features as they come: its models return L2-normalized features. The fused op
normalizes rows itself, so on normalized features both agree (values and gradients); rows that are not
unit-norm raise ValueError here (checked outside torch.compile) instead of silently giving another number.

Distributed (world_size > 1), the same four modes as open_clip, with open_clip's gradients:
    local_loss=False: every rank computes the loss over all ranks' pairs;
    local_loss=True:  every rank's own images/texts against all ranks' texts/images, mean over its own rows;
    gather_with_grad=True: gradients flow through the gather (summed over ranks);
    gather_with_grad=False: only a rank's own features carry gradient (with local_loss=False, open_clip puts
        them back into the gathered batch; with local_loss=True, only as anchors).
Unlike open_clip, ranks may hold batches of different sizes. `rank` and `world_size` must be those of the
default torch.distributed process group. use_horovod=True raises NotImplementedError (torch.distributed only).
cache_labels is accepted and changes nothing: open_clip caches its arange labels; here they are made per call.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed
from ..losses import clip_loss, contrastive_loss


def _check_unit_norm(x: torch.Tensor, name: str) -> None:
    if torch.compiler.is_compiling():
        return
    tolerance = torch.finfo(x.dtype).eps ** 0.5
    norms = torch.linalg.vector_norm(x.detach(), dim=-1, dtype=torch.float64 if x.dtype == torch.float64 else None)
    if not bool(((norms - 1).abs() <= tolerance).all()):
        raise ValueError(
            f"ClipLoss: {name} must have L2-normalized rows, as open_clip's models return them (open_clip's loss "
            "does not normalize; synthcl_fast's op does, so other rows would give another loss). Normalize them "
            "with torch.nn.functional.normalize, or use synthcl_fast.losses.clip_loss.")


class ClipLoss(nn.Module):
    """open_clip's ClipLoss; forward(image_features, text_features, logit_scale, logit_bias=None,
    output_dict=False) -> scalar loss, or {"contrastive_loss": loss} with output_dict."""

    def __init__(self, local_loss=False, gather_with_grad=False, cache_labels=False, rank=0, world_size=1,
                 use_horovod=False):
        super().__init__()
        if use_horovod:
            raise NotImplementedError("ClipLoss: use_horovod is not supported by synthcl_fast's drop-in "
                                      "(it gathers with torch.distributed)")
        self.local_loss, self.gather_with_grad, self.cache_labels = local_loss, gather_with_grad, cache_labels
        self.rank, self.world_size, self.use_horovod = rank, world_size, use_horovod

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        _check_unit_norm(image_features, "image_features")
        _check_unit_norm(text_features, "text_features")
        if self.world_size > 1:
            loss = self._distributed_loss(image_features, text_features, logit_scale)
        else:
            loss = clip_loss(image_features, text_features, logit_scale=logit_scale)
        if logit_bias is not None:
            loss = self._with_bias(loss, logit_bias)
        # open_clip's logits, logit_scale * image_features @ text_features.T, set the dtype of its loss.
        loss = loss.to(torch.result_type(logit_scale, image_features) if isinstance(logit_scale, torch.Tensor)
                       else image_features.dtype)
        return {"contrastive_loss": loss} if output_dict else loss

    @staticmethod
    def _with_bias(loss, logit_bias):
        """A scalar bias added to every logit cancels in the softmax cross-entropy: the loss is unchanged, and a
        bias tensor gets its (zero) gradient as in open_clip."""
        if not isinstance(logit_bias, torch.Tensor):
            return loss
        if logit_bias.numel() != 1:
            raise NotImplementedError("ClipLoss: a logit_bias with more than one element is not supported by "
                                      "synthcl_fast's drop-in")
        return loss + 0 * logit_bias.reshape(())

    def _distributed_loss(self, image_features, text_features, logit_scale):
        if (self.world_size, self.rank) != (distributed.world_size(), distributed.rank()):
            raise ValueError(f"ClipLoss: rank={self.rank}, world_size={self.world_size} but torch.distributed has "
                             f"rank {distributed.rank()} of {distributed.world_size()}")
        all_images, sizes = self._gather(image_features)
        all_texts, _ = self._gather(text_features, sizes)
        if not self.local_loss:
            return clip_loss(all_images, all_texts, logit_scale=logit_scale)
        start = sum(sizes[: self.rank])
        own = torch.arange(start, start + image_features.shape[0], device=image_features.device)
        every = torch.arange(all_images.shape[0], device=image_features.device)
        temperature = 1 / logit_scale
        image_to_text = contrastive_loss(image_features, all_texts, own, every, temperature=temperature,
                                         exclude_self=False)
        text_to_image = contrastive_loss(text_features, all_images, own, every, temperature=temperature,
                                         exclude_self=False)
        return (image_to_text + text_to_image) / 2

    def _gather(self, features, sizes=None):
        if self.gather_with_grad:
            return distributed.all_gather(features, sizes)
        gathered, sizes = distributed.all_gather(features, sizes, with_grad=False)
        if self.local_loss:
            return gathered, sizes
        start = sum(sizes[: self.rank])
        return torch.cat([gathered[:start], features, gathered[start + features.shape[0]:]]), sizes
