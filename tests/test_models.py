"""Models: shapes, probe layers, BatchNorm on/off, input sizes."""

import pytest
import torch
from torch import nn

from bnrep.models import build_model

CASES = [  # (arch, channels, size, probe names)
    ("cnn", 1, 8, ["conv1", "conv2", "conv3", "conv4", "fc1"]),
    ("cnn", 1, 28, ["conv1", "conv2", "conv3", "conv4", "fc1"]),
    ("cnn", 3, 32, ["conv1", "conv2", "conv3", "conv4", "fc1"]),
    ("vgg16", 3, 32, [f"conv{i}" for i in range(1, 14)]),
    ("vgg16", 1, 28, [f"conv{i}" for i in range(1, 14)]),
    ("vgg16", 1, 8, [f"conv{i}" for i in range(1, 14)]),
]


@pytest.mark.parametrize("bn", [True, False], ids=["bn", "nobn"])
@pytest.mark.parametrize("arch,channels,size,names", CASES, ids=[f"{c[0]}-{c[1]}x{c[2]}" for c in CASES])
def test_shapes_and_probes(arch, channels, size, names, bn):
    torch.manual_seed(0)
    model = build_model(arch, bn, channels, num_classes=10).eval()
    out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, 10)
    probes = model.probes()
    assert [p.name for p in probes] == names
    assert [p.index for p in probes] == list(range(1, len(names) + 1))
    assert all(isinstance(p.module, nn.ReLU) and not p.module.inplace for p in probes)
    assert len({id(p.module) for p in probes}) == len(probes)  # every probe has its own ReLU
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert has_bn == bn


def test_cnn_widths_and_bn_placement():
    model = build_model("cnn", True, 1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128]
    seq = list(model.features)
    # BatchNorm sits between the linear map and its ReLU
    for i, m in enumerate(seq):
        if isinstance(m, nn.Conv2d):
            assert isinstance(seq[i + 1], nn.BatchNorm2d) and isinstance(seq[i + 2], nn.ReLU)
    fc = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [f.out_features for f in fc] == [100, 10]


def test_vgg16_widths():
    convs = [m for m in build_model("vgg16", False, 3).modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
