"""StandardCNN and VGG16, with and without BatchNorm, and their probe layers.

Every hidden layer is linear map -> [BatchNorm] -> ReLU, and every ReLU is
its own module, never in place, so a forward hook on it sees exactly the
post-ReLU representation the paper measures (paper 3.2).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

CNN_WIDTHS = (16, 32, 64, 128)  # Nakkiran et al. 2019 'standard CNN'
CNN_POOL_AFTER = (2, 3)  # 2x2 max pooling after conv2 and conv3 (paper 3.1.1)
CNN_FC = 100  # hidden fully connected layer added by the paper
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class Probe(NamedTuple):
    name: str  # e.g. "conv3", "fc1"
    index: int  # 1-based, as in the paper's figures
    module: nn.ReLU


def _block(layer: nn.Module, width: int, bn: bool, conv: bool) -> list[nn.Module]:
    norm = (nn.BatchNorm2d if conv else nn.BatchNorm1d)(width) if bn else None
    return [m for m in (layer, norm, nn.ReLU(inplace=False)) if m is not None]


class ProbedNet(nn.Module):
    """features -> global pool -> classifier, with the ReLUs to probe listed."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, bn: bool):
        super().__init__()
        self.bn = bn
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, C, h, w)
        x = torch.amax(x, dim=(2, 3))  # global max pool -> (N, C)
        return self.classifier(x)

    def probes(self) -> list[Probe]:
        relus = [m for m in self.modules() if isinstance(m, nn.ReLU)]
        n_conv = sum(isinstance(m, nn.Conv2d) for m in self.features)
        names = [f"conv{i + 1}" for i in range(n_conv)] + [f"fc{i + 1}" for i in range(len(relus) - n_conv)]
        return [Probe(name, i + 1, relu) for i, (name, relu) in enumerate(zip(names, relus))]


def standard_cnn(bn: bool, in_channels: int = 1, num_classes: int = 10) -> ProbedNet:
    """Four 3x3 convs (16, 32, 64, 128), pools after conv2/conv3, FC-100, FC-out."""
    layers: list[nn.Module] = []
    c = in_channels
    for i, width in enumerate(CNN_WIDTHS, start=1):
        layers += _block(nn.Conv2d(c, width, 3, padding=1, bias=not bn), width, bn, conv=True)
        if i in CNN_POOL_AFTER:
            layers.append(nn.MaxPool2d(2))
        c = width
    # The original's final MaxPool(4) does not fit 8x8 or 28x28 inputs: global max pool instead.
    classifier = nn.Sequential(*_block(nn.Linear(c, CNN_FC, bias=not bn), CNN_FC, bn, conv=False),
                               nn.Linear(CNN_FC, num_classes))
    return ProbedNet(nn.Sequential(*layers), classifier, bn)


def vgg16(bn: bool, in_channels: int = 3, num_classes: int = 10) -> ProbedNet:
    """VGG16, CIFAR variant: 13 convs, 5 pools, linear classifier.

    Pools that would shrink a map below 1x1 (8x8 inputs) are skipped.
    """
    layers: list[nn.Module] = []
    c = in_channels
    for v in VGG16_CFG:
        if v == "M":
            layers.append(_MaybePool())
            continue
        layers += _block(nn.Conv2d(c, v, 3, padding=1, bias=not bn), v, bn, conv=True)
        c = v
    return ProbedNet(nn.Sequential(*layers), nn.Sequential(nn.Linear(c, num_classes)), bn)


class _MaybePool(nn.MaxPool2d):
    """2x2 max pool that passes a map through once it is down to 1 pixel."""

    def __init__(self):
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if min(x.shape[-2:]) < 2 else super().forward(x)


def build_model(arch: str, bn: bool, in_channels: int, num_classes: int = 10) -> ProbedNet:
    if arch == "cnn":
        return standard_cnn(bn, in_channels, num_classes)
    if arch == "vgg16":
        return vgg16(bn, in_channels, num_classes)
    raise ValueError(f"unknown arch {arch!r} (valid: cnn, vgg16)")
