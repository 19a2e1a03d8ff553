"""The main model: a small ResNet-style encoder and an MLP projection head (SimCLR's layout).

The encoder's pooled features are what the linear probe and kNN evaluate; the contrastive losses act
on the projection head's output.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with batch norm, plus an identity or 1x1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """Images (N, C, S, S) in [0, 1] -> features (N, 4 * width): a 3x3 stride-2 stem, three stages of one
    basic block (width, 2 width, 4 width channels; the last two halve the resolution), global average pooling.

    The stem halves the resolution as ResNet's does: on CPU the full-resolution layers would cost most of
    the time, and the digits carry only 8x8 pixels of information anyway."""

    def __init__(self, in_channels: int, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.stages = nn.Sequential(BasicBlock(width, width, 1), BasicBlock(width, 2 * width, 2),
                                    BasicBlock(2 * width, 4 * width, 2))
        self.feature_dim = 4 * width
        # channels-last convolutions are about 25% faster on CPU (oneDNN) for these small images
        self.to(memory_format=torch.channels_last)

    def forward(self, images):
        out = self.stages(self.stem((images * 2 - 1).contiguous(memory_format=torch.channels_last)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class ProjectionHead(nn.Module):
    """SimCLR's MLP head: features -> hidden (batch norm, ReLU) -> projection."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, in_dim, bias=False), nn.BatchNorm1d(in_dim), nn.ReLU(),
                                 nn.Linear(in_dim, out_dim))

    def forward(self, features):
        return self.net(features)


class ContrastiveModel(nn.Module):
    """Encoder + projection head. forward: images -> projections; features: images -> encoder features."""

    def __init__(self, in_channels: int, width: int, projection_dim: int):
        super().__init__()
        self.encoder = ResNetEncoder(in_channels, width)
        self.head = ProjectionHead(self.encoder.feature_dim, projection_dim)

    def forward(self, images):
        return self.head(self.encoder(images))

    def features(self, images):
        return self.encoder(images)
