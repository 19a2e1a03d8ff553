"""Differentiable data augmentation (kornia), applied to real and generated images alike.

The augmentations are differentiable in their input, so the contrastive loss of the views of a
generated image G(z) back-propagates into G: that is how G learns to make hard samples. Random
parameters are drawn from torch's global generator (saved in checkpoints, so resuming is exact).

The views of a training step are made by two kornia calls (`augment_views`), not one per view and image
group: kornia's per-call overhead (parameter sampling, matrix set-up) is paid twice a step, and only the views
of G(z) record a backward.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch


def make_augmentation(channels: int, image_size: int) -> K.AugmentationSequential:
    """SimCLR-style views. Digits keep their orientation (no flip: a mirrored 2 is no longer a 2) and,
    being grayscale, get brightness/contrast jitter only; colour images get the usual SimCLR recipe.

    The crop is resampled by one batched warp (`cropping_mode="resample"`): the same crop boxes, bilinear as kornia's
    default "slice" mode, which crops and resizes image by image in a Python loop."""
    size = (image_size, image_size)
    if channels == 1:
        steps = [
            K.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(0.8, 1.25), cropping_mode="resample"),
            K.RandomAffine(degrees=10.0, translate=(0.1, 0.1), p=0.5),
            K.ColorJitter(brightness=0.4, contrast=0.4, p=0.8),
        ]
    else:
        steps = [
            K.RandomResizedCrop(size, scale=(0.2, 1.0), cropping_mode="resample"),
            K.RandomHorizontalFlip(),
            K.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
        ]
    return K.AugmentationSequential(*steps)


def make_discriminator_augmentation(channels: int) -> K.AugmentationSequential:
    """DiffAugment's policy "color, translation, cutout" (Zhao et al., NeurIPS 2020) for what the discriminator
    sees, real and generated images alike: with few real images D otherwise memorizes them and its gradient stops
    teaching G. Differentiable, so G learns through it. Every transform on every image (p = 1), as DiffAugment."""
    colour = dict(brightness=0.5, contrast=0.5) | ({} if channels == 1 else dict(saturation=1.0))
    return K.AugmentationSequential(
        K.ColorJitter(**colour, p=1.0),
        K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), padding_mode="zeros", p=1.0),
        K.RandomErasing(scale=(0.25, 0.25), ratio=(1.0, 1.0), value=0.0, p=1.0),  # a square of half the side
    )


def augment_views(augment: K.AugmentationSequential, real: torch.Tensor, synthetic: torch.Tensor | None = None,
                  partner: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every view of one step, each with random parameters of its own, in two kornia calls: one for the images
    the loss differentiates (G(z): its gradient reaches G through the augmentation) and one for those it does
    not (real images, G_ema(z)), whose augmentation then records no backward at all.

    Returns (real_views (2, N, C, S, S), synthetic_views (4, M, C, S, S) or None):
    - real: two views of each image;
    - synthetic with a partner: [synthetic v1, synthetic v2, partner v1, partner v2], four independent views
      (for the pair (G(z), G_ema(z)) no two of them share a crop: each positive differs by the generator gap and
      by an augmentation, not by the generator gap alone);
    - synthetic alone: four views of each image.
    """
    n = real.shape[0]
    if synthetic is None:
        return augment(torch.cat([real, real])).unflatten(0, (2, n)), None
    m, copies = synthetic.shape[0], 2 if partner is not None else 4
    with torch.no_grad():
        fixed = augment(torch.cat([real, real] + ([partner, partner] if partner is not None else [])))
    differentiated = augment(torch.cat([synthetic] * copies))
    synthetic_views = torch.cat([differentiated, fixed[2 * n:]]).unflatten(0, (4, m))
    return fixed[:2 * n].unflatten(0, (2, n)), synthetic_views
