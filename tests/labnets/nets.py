"""Networks written the way researchers write them: activations as functions in `forward`,
a norm chosen by the author, a head that needs one input size."""

import torch
import torch.nn.functional as F
from torch import nn


class WideCNN(nn.Module):
    """conv -> BatchNorm -> F.relu, three times (the third conv reused twice), global average pool, linear."""

    def __init__(self, num_classes: int, in_channels: int, width: int = 24):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (N, w, H, W)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)  # (N, 2w, H/2, W/2)
        x = x + F.relu(self.bn3(self.conv3(x)))  # a residual step
        return self.head(x.mean(dim=(2, 3)))  # (N, classes)


def wide_cnn(num_classes: int, in_channels: int) -> nn.Module:
    return WideCNN(num_classes, in_channels)


def plain_cnn(num_classes: int, in_channels: int) -> nn.Module:
    """conv -> ReLU, no norm anywhere: a baseline as many researchers first write it."""
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))


def not_a_module(num_classes: int, in_channels: int):
    return {"layers": [num_classes, in_channels]}


def flat_mlp(num_classes: int, in_channels: int) -> nn.Module:
    """A head for 28x28 images only."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 28 * 28, 64), nn.BatchNorm1d(64), nn.ReLU(),
                         nn.Linear(64, num_classes))


def gated(num_classes: int, in_channels: int) -> nn.Module:
    """No activation bnrep probes: a sigmoid gate only."""
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.BatchNorm2d(4), nn.Sigmoid(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, num_classes))


def needs_a_config(num_classes: int, in_channels: int):
    raise RuntimeError("my builder needs a config file")


class InPlaceGate(nn.Module):
    """A sigmoid gate scaled in place: its forward pass works, its backward pass cannot (autograd needs the
    sigmoid's output as it was)."""

    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(in_channels, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.sigmoid(F.relu(self.bn(self.conv(x))))
        return self.head(x.mul_(2).mean((2, 3)))


def inplace_gate(num_classes: int, in_channels: int) -> nn.Module:
    return InPlaceGate(num_classes, in_channels)


class Unfinished(WideCNN):
    """A forward pass that raises whatever the images: a model its author has not finished."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("the attention block is not written yet")


def unfinished(num_classes: int, in_channels: int) -> nn.Module:
    return Unfinished(num_classes, in_channels)


class AuxHeads(WideCNN):
    """A second classifier on the way, returned next to the logits in training (GoogLeNet's habit)."""

    def forward(self, x: torch.Tensor):
        logits = super().forward(x)
        return (logits, logits.detach()) if self.training else logits


def aux_heads(num_classes: int, in_channels: int) -> nn.Module:
    return AuxHeads(num_classes, in_channels)


class BNAct(nn.BatchNorm2d):
    """timm's habit: the activation held inside the norm module (BatchNormAct2d)."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-3)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def bnact_cnn(num_classes: int, in_channels: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), BNAct(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))


class WithFeatures(WideCNN):
    """Returns (logits, features) always, as many research models do."""

    def forward(self, x: torch.Tensor):
        logits = super().forward(x)
        return logits, x.mean(dim=(2, 3))


def with_features(num_classes: int, in_channels: int) -> nn.Module:
    return WithFeatures(num_classes, in_channels)


def rgb_only(num_classes, in_channels):
    """Ignores in_channels: its first layer takes RGB whatever the data (bnrep must say so)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, num_classes))


def a_number(num_classes: int, in_channels: int):
    return num_classes


def scripted(num_classes: int, in_channels: int) -> nn.Module:
    """A TorchScript block inside a plain net: it trains, but takes no forward hooks."""
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4),
                         torch.jit.script(nn.Sequential(nn.ReLU())), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))
