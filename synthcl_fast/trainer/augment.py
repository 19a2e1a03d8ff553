"""Differentiable data augmentation (kornia), applied to real and generated images alike.

The augmentations are differentiable in their input, so the contrastive loss of the views of a
generated image G(z) back-propagates into G: that is how G learns to make hard samples. Random
parameters are drawn from torch's global generator (saved in checkpoints, so resuming is exact).

Every view of a training step is made by one kornia call (`augment_views`): kornia's per-call overhead
(parameter sampling, matrix set-up) is paid once, not once per view and image group.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch

# kornia's per-sample parameters that are not indexed by the sample (a batch shape, a batch-wide order)
_BATCH_WIDE_PARAMETERS = ("forward_input_shape", "order")


def make_augmentation(channels: int, image_size: int) -> K.AugmentationSequential:
    """SimCLR-style views. Digits keep their orientation (no flip: a mirrored 2 is no longer a 2) and,
    being grayscale, get brightness/contrast jitter only; colour images get the usual SimCLR recipe.

    The crop is resampled by one batched warp (`cropping_mode="resample"`): the same crop boxes and bilinear
    interpolation as kornia's default "slice" mode, which crops and resizes image by image in a Python loop."""
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


def _parameter_rows(params: list, rows: torch.Tensor) -> list:
    """kornia's sampled parameters (one ParamItem per step) for a new batch whose sample i takes the
    parameters of sample rows[i]."""
    picked = []
    for item in params:
        data = dict(item.data)
        batch = int(data["forward_input_shape"][0])
        for key, value in data.items():
            if key == "forward_input_shape":
                data[key] = torch.cat([value.new_tensor([rows.numel()]), value[1:]])
            elif (key not in _BATCH_WIDE_PARAMETERS and torch.is_tensor(value) and value.dim()
                  and value.shape[0] == batch):
                data[key] = value[rows.to(value.device)]
        picked.append(type(item)(item.name, data))
    return picked


def augment_views(augment: K.AugmentationSequential, real: torch.Tensor, synthetic: torch.Tensor | None = None,
                  partner: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every view of one step, in one kornia call.

    Returns (real_views (2, N, C, S, S), synthetic_views (4, M, C, S, S) or None):
    - real: two independently augmented views of each image;
    - synthetic with a partner: [synthetic v1, synthetic v2, partner v1, partner v2], where the partner's view k
      is augmented with the same random parameters as the synthetic image's view k (for the pair (G(z), G_ema(z))
      the views 1 and 3, and 2 and 4, then differ only by the generator);
    - synthetic alone: four independent views of each image.
    """
    n = real.shape[0]
    groups = [real, real] if synthetic is None else [real, real] + [synthetic] * (2 if partner is not None else 4)
    images = torch.cat(groups)
    if partner is None:
        views = augment(images)
    else:  # sample the parameters of the distinct views, then give the partner's views the synthetic ones'
        params = augment.forward_parameters(images.shape)
        m = synthetic.shape[0]
        rows = torch.cat([torch.arange(images.shape[0]), torch.arange(2 * n, 2 * n + 2 * m)])
        views = augment(torch.cat([images, partner, partner]), params=_parameter_rows(params, rows))
    real_views = views[:2 * n].unflatten(0, (2, n))
    synthetic_views = None if synthetic is None else views[2 * n:].unflatten(0, (4, synthetic.shape[0]))
    return real_views, synthetic_views
