"""Differentiable data augmentation (kornia), applied to real and generated images alike.

The augmentations are differentiable in their input, so the contrastive loss of the views of a
generated image G(z) back-propagates into G: that is how G learns to make hard samples. Random
parameters are drawn from torch's global generator (saved in checkpoints, so resuming is exact).
"""

from __future__ import annotations

import kornia.augmentation as K
import torch


def make_augmentation(channels: int, image_size: int) -> K.AugmentationSequential:
    """SimCLR-style views. Digits keep their orientation (no flip: a mirrored 2 is no longer a 2) and,
    being grayscale, get brightness/contrast jitter only; colour images get the usual SimCLR recipe."""
    size = (image_size, image_size)
    if channels == 1:
        steps = [
            K.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(0.8, 1.25)),
            K.RandomAffine(degrees=10.0, translate=(0.1, 0.1), p=0.5),
            K.ColorJitter(brightness=0.4, contrast=0.4, p=0.8),
        ]
    else:
        steps = [
            K.RandomResizedCrop(size, scale=(0.2, 1.0)),
            K.RandomHorizontalFlip(),
            K.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
        ]
    return K.AugmentationSequential(*steps)


def two_views(augment: K.AugmentationSequential, images: torch.Tensor) -> torch.Tensor:
    """(2, N, C, S, S): two independently augmented views of each image."""
    return torch.stack([augment(images), augment(images)])


def paired_views(augment: K.AugmentationSequential, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(4, M, C, S, S): [first v1, first v2, second v1, second v2], where `second` view k is augmented with
    the same random parameters as `first` view k. For the pair (G(z), G_ema(z)) the views 1 and 3 (and 2 and
    4) then differ only by the generator, which is what the positive-pair similarity should measure."""
    views = []
    for _ in range(2):
        params = augment.forward_parameters(first.shape)
        views.append((augment(first, params=params), augment(second, params=params)))
    (first_1, second_1), (first_2, second_2) = views
    return torch.stack([first_1, first_2, second_1, second_2])
