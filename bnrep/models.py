"""StandardCNN, VGG16 and ResNet-18 under four normalisations, and their probe layers.

Every hidden layer is linear map -> [norm] -> ReLU, and every ReLU is its own
module, never in place, so a forward hook on it sees exactly the post-ReLU
representation the paper measures (paper 3.2). `ProbedNet.probes()` finds the
ReLUs in module registration order and pairs them with the names the builder
gives, so a builder must register its ReLUs in forward order.

Normalisations (`norm`, the axis of the study; Lubana et al. 2021, "Beyond BatchNorm"):

    batch  BatchNorm2d after convs, BatchNorm1d after hidden FC layers (the paper's BN)
    group  GroupNorm(G, C) with G = GN_GROUPS (32, Wu & He 2018) when it divides C,
           else the largest divisor of C that is at most 32; so C <= 32 gives one
           channel per group (instance norm), e.g. StandardCNN's 16 channels ->
           16 groups and its FC-100 -> 25 groups of 4 features
    layer  GroupNorm(1, C) after convs: normalises C, H, W per sample;
           LayerNorm(C) over the features of hidden FC layers
    none   no norm module (the paper's no-BN)

The linear maps have a bias only with `none`: with a norm, the norm's shift
makes a bias redundant. The classifier always has a bias. With `batch` and
`none`, StandardCNN and VGG16 are built exactly as before the norm axis
existed (same modules, same order), so a torch seed gives the same weights.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

ARCHS = ("cnn", "vgg16", "resnet18")
NORMS = ("batch", "group", "layer", "none")
NORM_TAGS = {"batch": "bn", "none": "nobn", "group": "gn", "layer": "ln"}  # model_id spelling
GN_GROUPS = 32  # Wu & He 2018's default group count

CNN_WIDTHS = (16, 32, 64, 128)  # Nakkiran et al. 2019 'standard CNN'
CNN_POOL_AFTER = (2, 3)  # 2x2 max pooling after conv2 and conv3 (paper 3.1.1)
CNN_FC = 100  # hidden fully connected layer added by the paper
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
RESNET18_STAGES = (64, 128, 256, 512)  # He et al. 2016, two BasicBlocks per stage


class Probe(NamedTuple):
    name: str  # e.g. "conv3", "fc1", "s2b1.out"
    index: int  # 1-based, as in the paper's figures
    module: nn.ReLU


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r} (valid: {', '.join(NORMS)})")


def model_id(arch: str, norm: str, seed: int) -> str:
    """`<arch>-<bn|nobn|gn|ln>-s<seed>`: the paper's two keep their old ids."""
    check_norm(norm)
    return f"{arch}-{NORM_TAGS[norm]}-s{seed}"


def group_count(channels: int) -> int:
    """GN_GROUPS if it divides `channels`, else the largest divisor of `channels` below it."""
    return max(g for g in range(1, min(GN_GROUPS, channels) + 1) if channels % g == 0)


def norm_layer(norm: str, width: int, conv: bool) -> nn.Module | None:
    """The norm module after a conv (conv=True) or hidden FC layer of `width` channels; None for none."""
    if norm == "batch":
        return (nn.BatchNorm2d if conv else nn.BatchNorm1d)(width)
    if norm == "group":
        return nn.GroupNorm(group_count(width), width)  # (N, C) or (N, C, H, W) alike
    if norm == "layer":
        return nn.GroupNorm(1, width) if conv else nn.LayerNorm(width)
    return None


def _block(layer: nn.Module, width: int, norm: str, conv: bool) -> list[nn.Module]:
    return [m for m in (layer, norm_layer(norm, width, conv), nn.ReLU(inplace=False)) if m is not None]


class ProbedNet(nn.Module):
    """features -> global pool -> classifier, with the ReLUs to probe named.

    `probe_names` lists one name per ReLU in module registration order.
    `pool` is "max" (StandardCNN, VGG16) or "avg" (ResNet-18).
    """

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, norm: str,
                 probe_names: list[str], pool: str = "max"):
        super().__init__()
        self.norm = norm
        self.pool = pool
        self.probe_names = list(probe_names)
        self.features = features
        self.classifier = classifier
        n_relu = sum(isinstance(m, nn.ReLU) for m in self.modules())
        if n_relu != len(self.probe_names):
            raise ValueError(f"{n_relu} ReLU modules but {len(self.probe_names)} probe names")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, C, h, w)
        x = torch.amax(x, dim=(2, 3)) if self.pool == "max" else x.mean(dim=(2, 3))  # (N, C)
        return self.classifier(x)

    def probes(self) -> list[Probe]:
        relus = [m for m in self.modules() if isinstance(m, nn.ReLU)]
        return [Probe(name, i + 1, relu) for i, (name, relu) in enumerate(zip(self.probe_names, relus))]


def _conv_fc_names(n_conv: int, n_fc: int) -> list[str]:
    return [f"conv{i + 1}" for i in range(n_conv)] + [f"fc{i + 1}" for i in range(n_fc)]


def standard_cnn(norm: str, in_channels: int = 1, num_classes: int = 10) -> ProbedNet:
    """Four 3x3 convs (16, 32, 64, 128), pools after conv2/conv3, FC-100, FC-out."""
    bias = norm == "none"
    layers: list[nn.Module] = []
    c = in_channels
    for i, width in enumerate(CNN_WIDTHS, start=1):
        layers += _block(nn.Conv2d(c, width, 3, padding=1, bias=bias), width, norm, conv=True)
        if i in CNN_POOL_AFTER:
            layers.append(nn.MaxPool2d(2))
        c = width
    # The original's final MaxPool(4) does not fit 8x8 or 28x28 inputs: global max pool instead.
    classifier = nn.Sequential(*_block(nn.Linear(c, CNN_FC, bias=bias), CNN_FC, norm, conv=False),
                               nn.Linear(CNN_FC, num_classes))
    return ProbedNet(nn.Sequential(*layers), classifier, norm, _conv_fc_names(len(CNN_WIDTHS), 1))


def vgg16(norm: str, in_channels: int = 3, num_classes: int = 10) -> ProbedNet:
    """VGG16, CIFAR variant: 13 convs, 5 pools, linear classifier.

    Pools that would shrink a map below 1x1 (8x8 inputs) are skipped.
    """
    layers: list[nn.Module] = []
    c = in_channels
    for v in VGG16_CFG:
        if v == "M":
            layers.append(_MaybePool())
            continue
        layers += _block(nn.Conv2d(c, v, 3, padding=1, bias=norm == "none"), v, norm, conv=True)
        c = v
    n_conv = sum(v != "M" for v in VGG16_CFG)
    return ProbedNet(nn.Sequential(*layers), nn.Sequential(nn.Linear(c, num_classes)), norm,
                     _conv_fc_names(n_conv, 0))


class _MaybePool(nn.MaxPool2d):
    """2x2 max pool that passes a map through once it is down to 1 pixel."""

    def __init__(self):
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if min(x.shape[-2:]) < 2 else super().forward(x)


def _conv_norm(c_in: int, c_out: int, k: int, stride: int, norm: str) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=norm == "none")
    return [m for m in (conv, norm_layer(norm, c_out, conv=True)) if m is not None]


class BasicBlock(nn.Module):
    """conv3x3 -> norm -> relu1 -> conv3x3 -> norm, plus the shortcut, -> relu2 (He et al. 2016).

    Registration order (conv1, norm1, relu1, conv2, norm2, shortcut, relu2) is
    forward order, so the probes are relu1 ("s<i>b<j>.relu1") then relu2
    ("s<i>b<j>.out"). The shortcut is the identity, or a 1x1 conv + norm where
    the stride or width changes (option B).

    With norm none the residual branch is multiplied by a learnable scalar
    `skip_gain` that starts at 0 (SkipInit, De & Smith 2020): every block starts
    as the identity, so the unnormalised 18-layer net trains without the
    signal growing with depth, while all convs keep their usual He init (so the
    relu1 probes see ordinarily initialised layers) and the model with a norm
    has exactly the reference parameter count. Zero-initialising conv2
    instead would leave conv2 unlike every other layer at the start.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        self.branch1 = nn.Sequential(*_conv_norm(c_in, c_out, 3, stride, norm))
        self.relu1 = nn.ReLU(inplace=False)
        self.branch2 = nn.Sequential(*_conv_norm(c_out, c_out, 3, 1, norm))
        self.skip_gain = nn.Parameter(torch.zeros(())) if norm == "none" else None
        project = stride != 1 or c_in != c_out
        self.shortcut = nn.Sequential(*_conv_norm(c_in, c_out, 1, stride, norm)) if project else nn.Identity()
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.branch2(self.relu1(self.branch1(x)))  # (N, c_out, H/stride, W/stride)
        if self.skip_gain is not None:
            r = self.skip_gain * r
        return self.relu2(r + self.shortcut(x))


def resnet18(norm: str, in_channels: int = 3, num_classes: int = 10) -> ProbedNet:
    """ResNet-18, CIFAR variant (He et al. 2016; as in kuangliu/pytorch-cifar).

    3x3 stem conv with 64 channels (stride 1, no max pool), four stages of two
    BasicBlocks (64, 128, 256, 512 channels; stride 2 in the first block of
    stages 2-4), global average pool, linear classifier. 8x8 inputs end at
    1x1 in stage 4. Probes (17, in forward order): "stem" (1), then per stage i
    and block j "s<i>b<j>.relu1" (after the block's first conv + norm) and
    "s<i>b<j>.out" (after the residual addition + ReLU): s1b1.relu1 is 2,
    s1b2.out is 5, s2b2.out 9, s3b2.out 13, s4b2.out 17.
    """
    stem = [*_conv_norm(in_channels, RESNET18_STAGES[0], 3, 1, norm), nn.ReLU(inplace=False)]
    blocks: list[nn.Module] = []
    names = ["stem"]
    c = RESNET18_STAGES[0]
    for i, width in enumerate(RESNET18_STAGES, start=1):
        for j in (1, 2):
            stride = 2 if i > 1 and j == 1 else 1
            blocks.append(BasicBlock(c, width, stride, norm))
            names += [f"s{i}b{j}.relu1", f"s{i}b{j}.out"]
            c = width
    features = nn.Sequential(*stem, *blocks)
    return ProbedNet(features, nn.Sequential(nn.Linear(c, num_classes)), norm, names, pool="avg")


def build_model(arch: str, norm: str, in_channels: int, num_classes: int = 10) -> ProbedNet:
    check_norm(norm)
    builders = {"cnn": standard_cnn, "vgg16": vgg16, "resnet18": resnet18}
    if arch not in builders:
        raise ValueError(f"unknown arch {arch!r} (valid: {', '.join(ARCHS)})")
    return builders[arch](norm, in_channels, num_classes)
