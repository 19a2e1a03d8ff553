"""The data generator: G, its moving average G_ema, a spectral-normalized discriminator D, and the hinge
GAN losses (SN-GAN). D keeps G's samples realistic while G also plays against the contrastive model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class Generator(nn.Module):
    """z (M, latent_dim) -> images (M, C, S, S) in [0, 1]: a linear layer to S/4 x S/4, then two
    (upsample x2, 3x3 convolution) stages, DCGAN-sized.

    Batch norm uses batch statistics only (no running averages): G(z) and G_ema(z) are then computed the
    same way in training and at sampling time, and G has no buffers for the moving average to track."""

    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int = 32):
        super().__init__()
        self.latent_dim, self.base = latent_dim, image_size // 4
        self.project = nn.Linear(latent_dim, 4 * width * self.base * self.base)
        self.net = nn.Sequential(
            nn.BatchNorm2d(4 * width, track_running_stats=False), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(4 * width, 2 * width, 3, 1, 1),
            nn.BatchNorm2d(2 * width, track_running_stats=False), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * width, width, 3, 1, 1),
            nn.BatchNorm2d(width, track_running_stats=False), nn.ReLU(),
            nn.Conv2d(width, channels, 3, 1, 1), nn.Sigmoid())

    def forward(self, z):
        return self.net(self.project(z).view(z.shape[0], -1, self.base, self.base))


class Discriminator(nn.Module):
    """Images (N, C, S, S) in [0, 1] -> realness scores (N,). Every layer spectral-normalized (SN-GAN)."""

    def __init__(self, channels: int, image_size: int, width: int = 32):
        super().__init__()
        act = nn.LeakyReLU(0.1)
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(channels, width, 3, 1, 1)), act,
            spectral_norm(nn.Conv2d(width, 2 * width, 4, 2, 1)), act,
            spectral_norm(nn.Conv2d(2 * width, 2 * width, 3, 1, 1)), act,
            spectral_norm(nn.Conv2d(2 * width, 4 * width, 4, 2, 1)), act,
            nn.Flatten(), spectral_norm(nn.Linear(4 * width * (image_size // 4) ** 2, 1)))

    def forward(self, images):
        return self.net(images * 2 - 1).squeeze(1)


def discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Hinge loss: push real scores above 1 and fake scores below -1."""
    return torch.relu(1 - real_scores).mean() + torch.relu(1 + fake_scores).mean()


def generator_adversarial_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Hinge generator loss: raise D's score of the samples."""
    return -fake_scores.mean()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, weight: float | torch.Tensor) -> None:
    """ema <- ema + weight * (model - ema), parameter by parameter: weight = 1 - decay (a float, or a 0-d tensor
    on the parameters' device, which the host need not read)."""
    for ema_param, param in zip(ema.parameters(), model.parameters()):
        ema_param.lerp_(param, weight)
