"""Models: shapes, probe layers, the norm axis, ResNet-18, input sizes, bad input."""

import re

import pytest
import torch
from torch import nn

from bnrep.experiments import PAPER_NORMS as NORMS
from bnrep.models import BUILTIN, build_model, model_id
from bnrep.nets import BasicBlock
from bnrep.norms import NAMES, group_count
from bnrep.probes import find_probes

CNN_NAMES = ["conv1", "conv2", "conv3", "conv4", "fc1"]
VGG_NAMES = [f"conv{i}" for i in range(1, 14)]
RESNET_NAMES = ["stem"] + [f"s{i}b{j}.{p}" for i in range(1, 5) for j in (1, 2) for p in ("relu1", "out")]

CASES = [  # (arch, channels, size, probe names)
    ("cnn", 1, 8, CNN_NAMES),
    ("cnn", 1, 28, CNN_NAMES),
    ("cnn", 3, 32, CNN_NAMES),
    ("vgg16", 3, 32, VGG_NAMES),
    ("vgg16", 1, 28, VGG_NAMES),
    ("vgg16", 1, 8, VGG_NAMES),
    ("resnet18", 3, 16, RESNET_NAMES),
    ("resnet18", 1, 8, RESNET_NAMES),
]
CASE_IDS = [f"{c[0]}-{c[1]}x{c[2]}" for c in CASES]

# Hand-computed: 32 when it divides C, else the largest divisor of C below 32.
GROUPS = {7: 7, 16: 16, 32: 32, 48: 24, 64: 32, 66: 22, 100: 25, 128: 32, 256: 32, 512: 32}


def _norm_modules(model):
    return [m for m in model.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("arch,channels,size,names", CASES, ids=CASE_IDS)
def test_shapes_and_probes(arch, channels, size, names, norm):
    torch.manual_seed(0)
    model = build_model(arch, norm, channels, num_classes=10).eval()
    assert model.norm == norm
    fired = []  # probe ReLUs in the order a forward pass runs them
    probes = find_probes(model, torch.zeros(2, channels, size, size))
    modules = dict(model.named_modules())
    relus = [modules[p.path] for p in probes]
    for p, relu in zip(probes, relus):
        relu.register_forward_hook(lambda m, i, o, name=p.name: fired.append(name))
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 10)
    assert [p.name for p in probes] == names
    assert fired == names
    assert [p.index for p in probes] == list(range(1, len(names) + 1))
    assert all(isinstance(r, nn.ReLU) and not r.inplace for r in relus)
    assert len({id(r) for r in relus}) == len(probes)  # every probe has its own ReLU
    assert all(p.activation == "ReLU" and p.rectifier for p in probes)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("arch", ["cnn", "vgg16", "resnet18"])
def test_norm_modules_and_bias(arch, norm):
    model = build_model(arch, norm, 3)
    norms = _norm_modules(model)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert has_bn == (norm == "batch")
    assert (len(norms) == 0) == (norm == "none")
    for m in norms:
        if isinstance(m, nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0
            assert m.num_groups == {"group": GROUPS[m.num_channels], "layer": 1}[norm]
        elif isinstance(m, nn.LayerNorm):
            assert norm == "layer" and arch == "cnn"  # only StandardCNN has a hidden FC layer
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all((c.bias is not None) == (norm == "none") for c in convs)
    hidden_fc = [m for m in model.classifier if isinstance(m, nn.Linear)][:-1]
    assert all((f.bias is not None) == (norm == "none") for f in hidden_fc)
    assert model.classifier[-1].bias is not None


@pytest.mark.parametrize("norm,kinds", [
    ("batch", [nn.BatchNorm2d] * 4 + [nn.BatchNorm1d]),
    ("group", [nn.GroupNorm] * 5),
    ("layer", [nn.GroupNorm] * 4 + [nn.LayerNorm]),
])
def test_cnn_norm_placement(norm, kinds):
    """The norm sits between each linear map and its ReLU; widths 16-128, FC-100."""
    model = build_model("cnn", norm, 1)
    seq = list(model.features) + list(model.classifier)
    lin = [i for i, m in enumerate(seq) if isinstance(m, (nn.Conv2d, nn.Linear))][:-1]
    assert [type(seq[i + 1]) for i in lin] == kinds
    assert all(isinstance(seq[i + 2], nn.ReLU) for i in lin)
    assert [seq[i].out_channels if isinstance(seq[i], nn.Conv2d) else seq[i].out_features for i in lin] == \
        [16, 32, 64, 128, 100]


@pytest.mark.parametrize("channels,groups", sorted(GROUPS.items()))
def test_group_count(channels, groups):
    assert group_count(channels) == groups


def test_vgg16_widths():
    convs = [m for m in build_model("vgg16", "none", 3).modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


# ==== batch and none are built exactly as before the norm axis (commit 6959f65) ====

def _frozen_cnn(bn, c_in, n_out):
    layers, c = [], c_in
    for i, w in enumerate((16, 32, 64, 128), start=1):
        layers += [nn.Conv2d(c, w, 3, padding=1, bias=not bn), *([nn.BatchNorm2d(w)] if bn else []), nn.ReLU()]
        if i in (2, 3):
            layers.append(nn.MaxPool2d(2))
        c = w
    head = [nn.Linear(c, 100, bias=not bn), *([nn.BatchNorm1d(100)] if bn else []), nn.ReLU(), nn.Linear(100, n_out)]
    return layers, head


def _frozen_vgg16(bn, c_in, n_out):
    layers, c = [], c_in
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(c, v, 3, padding=1, bias=not bn), *([nn.BatchNorm2d(v)] if bn else []), nn.ReLU()]
        c = v
    return layers, [nn.Linear(c, n_out)]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("norm", ["batch", "none"])
@pytest.mark.parametrize("arch", ["cnn", "vgg16"])
def test_paper_models_unchanged(arch, norm, channels):
    """Same modules in the same order and bit-identical initial weights for a given seed."""
    torch.manual_seed(7)
    model = build_model(arch, norm, channels)
    torch.manual_seed(7)
    layers, head = {"cnn": _frozen_cnn, "vgg16": _frozen_vgg16}[arch](norm == "batch", channels, 10)
    ref = nn.Module()
    ref.features, ref.classifier = nn.Sequential(*layers), nn.Sequential(*head)
    kind = [type(m).__mro__[1] if type(m).__name__ == "_MaybePool" else type(m) for m in model.modules()]
    assert kind[1:] == [type(m) for m in ref.modules()][1:]
    got, want = model.state_dict(), ref.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


# ==== ResNet-18 ====

def _reference_resnet18_params(c_in: int, n_out: int, norm_params: int = 2) -> int:
    """Parameter arithmetic of the CIFAR ResNet-18 (convs without bias, 2 affine params per norm channel)."""
    conv = lambda i, o, k: i * o * k * k  # noqa: E731
    total, c = conv(c_in, 64, 3) + norm_params * 64, 64
    for stage, w in enumerate((64, 128, 256, 512)):
        for block in range(2):
            total += conv(c, w, 3) + conv(w, w, 3) + 2 * norm_params * w
            if c != w or (stage > 0 and block == 0):  # projection shortcut: 1x1 conv + norm
                total += conv(c, w, 1) + norm_params * w
            c = w
    return total + 512 * n_out + n_out


@pytest.mark.parametrize("norm,channels,expected", [
    ("batch", 3, 11_173_962),  # kuangliu/pytorch-cifar ResNet18, the usual CIFAR reference
    ("batch", 3, _reference_resnet18_params(3, 10)),
    ("batch", 1, _reference_resnet18_params(1, 10)),
    ("group", 3, _reference_resnet18_params(3, 10)),
    ("layer", 3, _reference_resnet18_params(3, 10)),
])
def test_resnet18_parameter_count(norm, channels, expected):
    model = build_model("resnet18", norm, channels)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("channels,size", [(1, 8), (1, 12), (1, 28), (3, 32)])
def test_resnet18_input_sizes(channels, size):
    """Odd map sizes on the way down (12 -> 6 -> 3 -> 2, 28 -> 14 -> 7 -> 4) and 32x32 all run."""
    with torch.no_grad():
        assert build_model("resnet18", "none", channels)(torch.randn(1, channels, size, size)).shape == (1, 10)


def test_resnet18_structure():
    """Strides, projection shortcuts, the `.out` probe is the block output, global average pool."""
    model = build_model("resnet18", "batch", 3).eval()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8
    projected = [not isinstance(b.shortcut, nn.Identity) for b in blocks]
    assert projected == [False, False, True, False, True, False, True, False]
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    seen, modules = {}, dict(model.named_modules())
    for p in find_probes(model, torch.zeros(2, 3, 16, 16)):
        modules[p.path].register_forward_hook(lambda m, i, o, name=p.name: seen.__setitem__(name, o))
    block_out = []
    for b in blocks:
        b.register_forward_hook(lambda m, i, o: block_out.append(o))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        model(x)
    assert seen["stem"].shape == (2, 64, 16, 16)
    shapes = {f"s{i}b{j}.{p}": (2, w, 16 // s, 16 // s) for i, (w, s) in enumerate(
        [(64, 1), (128, 2), (256, 4), (512, 8)], start=1) for j in (1, 2) for p in ("relu1", "out")}
    assert {k: tuple(v.shape) for k, v in seen.items() if k != "stem"} == shapes
    outs = [seen[f"s{i}b{j}.out"] for i in range(1, 5) for j in (1, 2)]
    assert all(torch.equal(a, b) for a, b in zip(outs, block_out))
    pooled = block_out[-1].mean(dim=(2, 3))  # (N, 512)
    with torch.no_grad():
        assert torch.allclose(model(x), model.classifier(pooled), atol=1e-6)


@pytest.fixture
def one_thread():
    """Tiny batches run faster on one thread, and do not fight other processes for cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_resnet18_none_skipinit_trains(one_thread):
    """norm none: every block starts as its shortcut (gain 0), and a few steps fit a tiny batch."""
    torch.manual_seed(0)
    model = build_model("resnet18", "none", 3)
    gains = [b.skip_gain for b in model.modules() if isinstance(b, BasicBlock)]
    assert len(gains) == 8 and all(g.item() == 0.0 for g in gains)
    x, y = torch.randn(16, 3, 8, 8), torch.arange(16) % 10
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):  # 2.30 -> 0.71 at torch seed 0 (torch 2.14, CPU)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(g.item() != 0.0 for g in gains)  # the residual branches came alive


# ==== ids and bad input ====

@pytest.mark.parametrize("arch,norm,seed,expected", [
    ("cnn", "batch", 0, "cnn-bn-s0"),
    ("cnn", "none", 3, "cnn-nobn-s3"),
    ("vgg16", "group", 1, "vgg16-gn-s1"),
    ("resnet18", "layer", 12, "resnet18-ln-s12"),
])
def test_model_id(arch, norm, seed, expected):
    assert model_id(arch, norm, seed) == expected


@pytest.mark.parametrize("arch,norm,match", [
    ("cnn", "instancenorm", rf"unknown norm 'instancenorm' \(valid: {re.escape(', '.join(NAMES))}\)"),
    ("cnn", True, rf"unknown norm True \(valid: {re.escape(', '.join(NAMES))}\)"),
    ("resnet50", "batch", rf"unknown model 'resnet50' \(valid: {re.escape(', '.join(BUILTIN))}, torchvision:NAME, "
                          r"timm:NAME, or package.module:function\)"),
    ("cnn", "as-built", r"cnn is built for a norm: as-built is for models that bring their own \(try batch\)"),
])
def test_bad_input(arch, norm, match):
    with pytest.raises(ValueError, match=match):
        build_model(arch, norm, 3)


def test_model_id_bad_norm():
    with pytest.raises(ValueError, match="unknown norm 'bn'"):
        model_id("cnn", "bn", 0)


def test_the_least_size_a_model_takes_is_found_between_the_sizes_tried():
    """inception_v3 was said to need at least 96x96, the first of the sizes tried that ran; 75x75 runs."""
    from bnrep.models import ModelError, check_model

    with pytest.raises(ModelError, match=r"^torchvision:inception_v3 cannot take 1x8x8 images \(it needs at least "
                                         r"75x75; "):
        check_model("torchvision:inception_v3", ["batch"], (1, 8, 8), 10)
