"""The built-in nets: the paper's StandardCNN and VGG16, and the CIFAR ResNet-18 (bnrep.models names them
`cnn`, `vgg16`, `resnet18`).

Every hidden layer is linear map -> [norm] -> ReLU, each ReLU its own module, never in place (paper
3.2). The linear maps have a bias only where the norm table says so (`none`): a norm's shift makes a
bias redundant. With `batch` and `none`, StandardCNN and VGG16 are built exactly as before the norm
axis existed (same modules, same order), so a torch seed gives the same weights. Their probes keep the
names the builders give (`probe_names`).
"""

from __future__ import annotations

import torch
from torch import nn

from bnrep.norms import get_norm

CNN_WIDTHS = (16, 32, 64, 128)  # Nakkiran et al. 2019 'standard CNN'
CNN_POOL_AFTER = (2, 3)  # 2x2 max pooling after conv2 and conv3 (paper 3.1.1)
CNN_FC = 100  # hidden fully connected layer added by the paper
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
RESNET18_STAGES = (64, 128, 256, 512)  # He et al. 2016, two BasicBlocks per stage


def _bias(norm: str) -> bool:
    return get_norm(norm).bias


def _conv(norm: str) -> type:
    """The conv class `norm` asks for (nn.Conv2d but for weight standardisation)."""
    return get_norm(norm).conv_type


def _block(layer: nn.Module, width: int, norm: str, conv: bool) -> list[nn.Module]:
    return [m for m in (layer, get_norm(norm).build(width, conv), nn.ReLU(inplace=False)) if m is not None]


class ProbedNet(nn.Module):
    """features -> global pool -> classifier, with the ReLUs to probe named.

    `probe_names` lists one name per ReLU in forward order (bnrep.probes finds
    the ReLUs and gives them these names). `pool` is "max" (StandardCNN,
    VGG16) or "avg" (ResNet-18).
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


def _conv_fc_names(n_conv: int, n_fc: int) -> list[str]:
    return [f"conv{i + 1}" for i in range(n_conv)] + [f"fc{i + 1}" for i in range(n_fc)]


def standard_cnn(norm: str, in_channels: int = 1, num_classes: int = 10) -> ProbedNet:
    """Four 3x3 convs (16, 32, 64, 128), pools after conv2/conv3, FC-100, FC-out."""
    bias = _bias(norm)
    layers: list[nn.Module] = []
    c = in_channels
    for i, width in enumerate(CNN_WIDTHS, start=1):
        layers += _block(_conv(norm)(c, width, 3, padding=1, bias=bias), width, norm, conv=True)
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
        layers += _block(_conv(norm)(c, v, 3, padding=1, bias=_bias(norm)), v, norm, conv=True)
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
    conv = _conv(norm)(c_in, c_out, k, stride=stride, padding=k // 2, bias=_bias(norm))
    return [m for m in (conv, get_norm(norm).build(c_out, conv=True)) if m is not None]


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
        self.skip_gain = nn.Parameter(torch.zeros(())) if get_norm(norm).conv is None else None
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
