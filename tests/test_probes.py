"""Any model, any norm: a table of torchvision models and a researcher's own module, each with its
probes counted independently (torch.fx's traced graph), its norms swapped and checked, a forward
pass and a training step; probe hooks on reused and in-place activations; the swap on known tensors."""

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from bnrep.metrics import reduce_representation, sparsity_from_activations
from bnrep.models import build_model, check_model, model_id, model_slug
from bnrep.norms import NORMS, NormError, get_norm
from bnrep.swap import ChannelBias, ChannelsLast, PerToken, check_norm_kind, norm_modules, swap_norms
from bnrep.probes import ACTIVATION_FUNCTIONS, find_probes, is_activation, select_probes
from bnrep.represent import extract_representations
from bnrep.store import safe_key

SIZE = 32  # small CIFAR-sized inputs keep the big models fast (ResNet-50 at 32x32: 1x1 maps in layer4)

MODELS = [  # (spec, activation types, norms to swap to): the table
    ("torchvision:resnet18", {"ReLU"}, ("batch", "group", "layer", "instance", "none")),
    ("torchvision:resnet50", {"ReLU"}, ("batch", "group:8", "none")),
    ("torchvision:vgg11_bn", {"ReLU"}, ("batch", "none")),  # 129M parameters at any input size: two builds
    ("torchvision:mobilenet_v3_small", {"ReLU", "Hardswish"}, ("batch", "group:8", "none")),
    ("torchvision:efficientnet_b0", {"SiLU"}, ("batch", "layer", "none")),
    ("torchvision:convnext_tiny", {"GELU"}, ("batch", "group", "none", "as-built")),
    ("tests.labnets.nets:wide_cnn", {"ReLU"}, ("batch", "group:4", "instance", "none", "as-built")),
]


def traced_activation_calls(model: nn.Module) -> int:
    """The reference count: activation modules and functions in torch.fx's graph of the model."""
    class Leaves(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return is_activation(m) or super().is_leaf_module(m, qualname)

    graph = Leaves().trace(model.eval())
    modules = dict(model.named_modules())
    return sum((n.op == "call_module" and is_activation(modules[n.target]))
               or (n.op in ("call_function", "call_method") and _is_activation_fn(n.target)) for n in graph.nodes)


def _is_activation_fn(target) -> bool:
    return target in ACTIVATION_FUNCTIONS or (isinstance(target, str) and getattr(torch.Tensor, target, None)
                                                 in ACTIVATION_FUNCTIONS)


@pytest.fixture(scope="module", autouse=True)
def few_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("spec,kinds,norms", MODELS, ids=[m[0] for m in MODELS])
def test_model_table(spec, kinds, norms):
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 3])
    counts = []
    for norm in norms:
        model = build_model(spec, norm, 3, num_classes=10, size=(SIZE, SIZE))
        n = get_norm(norm)
        found = norm_modules(model)
        if n.name == "as-built":
            assert found  # the model's own norms, untouched
        else:  # no norm of another kind is left; none leaves per-channel biases only
            assert all(type(m) in n.kinds for _, m in found), {type(m).__name__ for _, m in found}
            assert bool(found) == (n.conv is not None)
            assert any(isinstance(m, ChannelBias) for m in model.modules()) == (n.conv is None)
        probes = find_probes(model, x[:2])
        assert [p.index for p in probes] == list(range(1, len(probes) + 1))
        assert {p.activation for p in probes} == kinds
        assert len({p.name for p in probes}) == len(probes)  # one name per call
        counts.append(len(probes))
        model.train()
        out = model(x)
        assert out.shape == (4, 10)
        F.cross_entropy(out, y).backward()  # one training step runs
        torch.optim.SGD(model.parameters(), lr=0.01).step()
    reference = traced_activation_calls(build_model(spec, "as-built" if spec.startswith("tests") else "batch", 3,
                                                    10, (SIZE, SIZE)))
    assert counts == [reference] * len(norms)


def test_model_table_probe_counts():
    """The counts the README quotes, from the models themselves."""
    x = torch.zeros(2, 3, SIZE, SIZE)
    got = {spec: len(find_probes(build_model(spec, "batch", 3, 10, (SIZE, SIZE)), x))
           for spec in ("torchvision:resnet18", "torchvision:resnet50", "torchvision:convnext_tiny")}
    assert got == {"torchvision:resnet18": 17, "torchvision:resnet50": 49, "torchvision:convnext_tiny": 18}


def test_torchvision_names_and_reused_relu():
    """BasicBlock calls self.relu twice: two probes, `:1` and `:2`; the stem's relu once: no suffix."""
    names = [p.name for p in find_probes(build_model("torchvision:resnet18", "batch", 3, 10, (SIZE, SIZE)),
                                          torch.zeros(2, 3, SIZE, SIZE))]
    assert names[:5] == ["relu", "layer1.0.relu:1", "layer1.0.relu:2", "layer1.1.relu:1", "layer1.1.relu:2"]
    assert names[-1] == "layer4.1.relu:2"
    assert safe_key("layer4.1.relu:2") == "layer4.1.relu~3a2" and safe_key("s1b1.relu1") == "s1b1.relu1"


def test_functional_activations_named_by_their_module():
    names = [p.name for p in find_probes(build_model("tests.labnets.nets:wide_cnn", "batch", 1, 10, (8, 8)),
                                          torch.zeros(2, 1, 8, 8))]
    assert names == ["relu:1", "relu:2", "relu:3"]  # three F.relu calls in the model's own forward


def test_one_channel_and_other_class_counts():
    model = build_model("torchvision:resnet18", "group", 1, num_classes=7, size=(8, 8))
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 7)


def test_timm_model():
    timm = pytest.importorskip("timm")
    model = check_model("timm:resnet10t", ["batch", "layer", "none"], (1, 8, 8), 10)
    assert timm.is_model("resnet10t")
    probes = find_probes(model, torch.zeros(2, 1, 8, 8))
    assert len(probes) == traced_activation_calls(build_model("timm:resnet10t", "batch", 1, 10, (8, 8)))
    # timm's EfficientNet holds each activation inside its norm module (BatchNormAct2d): kept by every swap
    x = torch.zeros(2, 3, SIZE, SIZE)
    counts = {n: len(find_probes(build_model("timm:efficientnet_b0", n, 3, 10, (SIZE, SIZE)), x))
              for n in ("as-built", "group", "none")}
    assert counts == {"as-built": 49, "group": 49, "none": 49}


class NHWCBlock(nn.Module):
    """A conv (NCHW) with F.relu, then ConvNeXt's NHWC half: LayerNorm and a linear layer over C, GELU."""

    def __init__(self, c: int):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, c, 3, padding=1), nn.LayerNorm(c)
        self.fc, self.act = nn.Linear(c, 5), nn.GELU()

    def forward(self, x):
        x = F.relu(self.conv(x))
        return self.act(self.fc(self.norm(x.permute(0, 2, 3, 1))))


@pytest.mark.parametrize("h,w", [(4, 8), (4, 4), (8, 4)])
def test_the_channel_axis_is_the_one_the_layer_before_made(h, w):
    """The conv's output has as many channels (4) as rows: its channels are still axis 1 (non-square
    images, a user's image folder), the GELU's after the linear layer the last; a Conv1d's axis 1.
    Extraction reduces each over its channels (eq. 5)."""
    torch.manual_seed(0)
    model, X = NHWCBlock(4).eval(), torch.randn(6, 3, h, w)
    probes = find_probes(model, X[:2])
    assert [(p.name, p.channels_last, p.channels) for p in probes] == [("relu", False, 4), ("act", True, 5)]
    with torch.no_grad():
        A = F.relu(model.conv(X))
        B = model.act(model.fc(model.norm(A.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
    reps = extract_representations(model, X, n_sparsity=6, batch_size=4, device="cpu")
    for r, T in zip(reps, (A, B)):
        assert r.channels == T.shape[1] and r.values_per_channel == 6 * h * w
        torch.testing.assert_close(r.reduced, reduce_representation(T))
    conv1d = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU())
    assert [(p.channels_last, p.channels) for p in find_probes(conv1d, torch.zeros(2, 2, 9))] == [(False, 3)]


class PermutedLinear(nn.Module):
    """A pointwise linear layer on NHWC, its output permuted back to NCHW before the GELU."""

    def __init__(self):
        super().__init__()
        self.conv, self.pw = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 6)

    def forward(self, x):
        return F.gelu(self.pw(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


def test_a_linear_layer_s_output_permuted_back_has_its_channels_first():
    """The linear layer made its output channels last, but the GELU takes it permuted back to NCHW: its 6
    channels are axis 1. They were read as the last axis (the image's 7 columns), and every measure of the
    layer reduced over the wrong axis."""
    torch.manual_seed(0)
    model, X = PermutedLinear().eval(), torch.randn(4, 3, 5, 7)
    (probe,) = find_probes(model, X[:2])
    assert (probe.channels_last, probe.channels) == (False, 6)
    (rep,) = extract_representations(model, X, n_sparsity=4, device="cpu")
    torch.testing.assert_close(rep.reduced, reduce_representation(model(X).detach()))


class SqueezeExcite(nn.Module):
    """A residual block with the classic squeeze-excitation gate: nn.Linear on pooled (N, C) features
    (the last linear layer before the block's ReLU), scaling an NCHW map of other width than C."""

    def __init__(self, c: int):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c)
        self.fc1, self.fc2, self.relu = nn.Linear(c, 2), nn.Linear(2, c), nn.ReLU()

    def forward(self, x):
        x = self.bn(self.conv(x))
        gate = torch.sigmoid(self.fc2(self.relu(self.fc1(x.mean(dim=(2, 3))))))
        return self.relu(x * gate[:, :, None, None] + x)


def test_a_linear_gate_on_pooled_features_leaves_the_map_channels_first():
    """The SE gate's linear layers make (N, C) outputs: they say nothing about the (N, C, H, W) map the
    block's ReLU makes after them, whose channels stay axis 1 (they were read as its width)."""
    torch.manual_seed(0)
    model, X = SqueezeExcite(8).eval(), torch.randn(6, 3, 16, 16)
    probes = find_probes(model, X[:2])
    assert [(p.name, p.channels_last, p.channels) for p in probes] == [("relu:1", False, 2), ("relu:2", False, 8)]
    with torch.no_grad():
        x = model.bn(model.conv(X))
        out = torch.relu(x * torch.sigmoid(model.fc2(torch.relu(model.fc1(x.mean(dim=(2, 3))))))[:, :, None, None]
                         + x)
    (rep,) = extract_representations(model, X, n_sparsity=6, batch_size=4, device="cpu", probes=probes[1:])
    torch.testing.assert_close(rep.reduced, reduce_representation(out))


class SEBlock(nn.Module):
    """A squeeze-excitation gate of a model's own: pooled channels, a 1x1 bottleneck with a ReLU, a sigmoid."""

    def __init__(self, c: int):
        super().__init__()
        self.reduce, self.relu, self.expand = nn.Conv2d(c, 2, 1), nn.ReLU(), nn.Conv2d(2, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.expand(self.relu(self.reduce(x.mean((2, 3), keepdim=True)))))


class SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.act, self.se, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), SEBlock(8), nn.Linear(8, 10)

    def forward(self, x):
        x = self.se(self.act(self.conv(x)))
        return self.head(F.relu(x).mean((2, 3)))


def test_the_bottleneck_of_a_squeeze_excitation_gate_is_measured_only_when_named():
    """The ReLU inside an SE gate acts on pooled (N, C, 1, 1) descriptors that compute the gate, not on the
    images' maps: probed by default it was 10 of MobileNetV3-Small's 14 rectifier layers, and claim 1 and the
    dead-channel lists were mostly about gates. Found (the index stays the identity), left out of `all` and
    `type:`, measured when a glob names it."""
    probes = find_probes(SENet(), torch.zeros(2, 3, 6, 6))
    assert [(p.name, p.index, p.gate) for p in probes] == [("act", 1, False), ("se.relu", 2, True), ("relu", 3, False)]
    assert [p.name for p in select_probes(probes)] == [p.name for p in select_probes(probes, "type:ReLU")] == \
        ["act", "relu"]
    assert [p.name for p in select_probes(probes, "se.*,act")] == ["act", "se.relu"]
    mnv3 = build_model("torchvision:mobilenet_v3_small", "batch", 3, 10, (32, 32))
    found = find_probes(mnv3, torch.zeros(2, 3, 32, 32))
    assert [p.name for p in found if p.gate] == [f"features.{i}.block.{2 if i > 3 else 1}.activation"
                                                 for i in (1, 4, 5, 6, 7, 8, 9, 10, 11)]
    assert len(select_probes(found)) == len(found) - 9 == 24


class Fire(nn.Module):
    """SqueezeNet's fire module: two convs of other widths, concatenated, then the ReLU."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 32, 3, padding=1)

    def forward(self, x):
        return F.relu(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3))


class BlockSE(nn.Module):  # a block named after its gate, holding the main path's activation
    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x)).mean((2, 3))


def test_a_concatenation_s_channels_stay_first_and_only_pooled_activations_in_an_se_module_are_gates():
    """The concatenation of a 16- and a 32-channel conv, 32 columns wide, was read as channels last (the width of
    the last conv on the last axis); a main-path activation inside a class named after its gate (timm's BlockESE,
    a SqueezeNet held as a backbone) was left out as a gate."""
    assert [(p.channels_last, p.channels) for p in find_probes(Fire(), torch.zeros(2, 3, 32, 32))] == [(False, 48)]
    assert [p.gate for p in find_probes(BlockSE(), torch.zeros(2, 3, 6, 6))] == [False]
    se = SEBlock(8)
    assert [p.gate for p in find_probes(nn.Sequential(nn.Conv2d(3, 8, 3), se), torch.zeros(2, 3, 6, 6))] == [True]
    squeezenet = nn.Sequential()
    squeezenet.backbone = build_model("torchvision:squeezenet1_1", "as-built", 3, 10, (64, 64))
    assert not any(p.gate for p in find_probes(squeezenet, torch.zeros(2, 3, 64, 64)))


class LinearNormTokens(nn.Module):
    """LeViT's LinearNorm on (N, T, C) tokens: a linear layer, then BatchNorm1d on the tokens flattened to
    (N * T, C) (channels first there), reshaped back; then the activation."""

    def __init__(self, c: int):
        super().__init__()
        self.fc, self.bn, self.act = nn.Linear(4, c), nn.BatchNorm1d(c), nn.Hardswish()

    def forward(self, x):  # (N, 4, H, W) -> tokens (N, H * W, 4)
        t = self.fc(x.flatten(2).transpose(1, 2))
        return self.act(self.bn(t.flatten(0, 1)).reshape_as(t)).mean(dim=1)


def test_tokens_normalised_flat_keep_their_channels_last():
    """The BatchNorm's 2-D output says nothing about the 3-D tokens: their channels stay the last axis
    (the linear layer's), not the 16 tokens."""
    torch.manual_seed(0)
    model, X = LinearNormTokens(6).eval(), torch.randn(5, 4, 4, 4)
    probes = find_probes(model, X[:2])
    assert [(p.channels_last, p.channels) for p in probes] == [(True, 6)]
    with torch.no_grad():
        t = model.fc(X.flatten(2).transpose(1, 2))
        A = model.act(model.bn(t.flatten(0, 1)).reshape_as(t)).transpose(1, 2)  # (N, C, T)
    (rep,) = extract_representations(model, X, n_sparsity=5, device="cpu")
    torch.testing.assert_close(rep.reduced, reduce_representation(A[..., None]))


class ParameterActivations(nn.Module):
    """Activations of parameters, not of the images: a ReZero gate tanh(alpha), a softplus scale of
    shape (1, C, 1, 1), and an activation module applied to a (C,) parameter."""

    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(2, 3, 3, padding=1), nn.SiLU()
        self.alpha, self.raw = nn.Parameter(torch.tensor(0.5)), nn.Parameter(torch.randn(1, 3, 1, 1))
        self.shift = nn.Parameter(torch.randn(3))

    def forward(self, x):
        y = F.relu(self.conv(x)) * torch.tanh(self.alpha) * F.softplus(self.raw)
        return self.act(y + self.act(self.shift)[:, None, None]).mean(dim=(2, 3))


def test_activations_of_parameters_are_not_probes():
    """Only the batch's activations are probes, the same ones at every batch size: 9 images in batches
    of 4 leave a last batch of one, where a (1, C, 1, 1) parameter would look like a batch."""
    torch.manual_seed(0)
    model, X = ParameterActivations().eval(), torch.randn(9, 2, 5, 5)
    probes = find_probes(model, X[:2])
    assert [(p.name, p.activation, p.channels) for p in probes] == [("relu", "ReLU", 3), ("act", "SiLU", 3)]
    with torch.no_grad():
        first = torch.relu(model.conv(X))
        second = F.silu(first * torch.tanh(model.alpha) * F.softplus(model.raw) + F.silu(model.shift)[:, None, None])
    reps = extract_representations(model, X, n_sparsity=9, batch_size=4, device="cpu")
    for r, A in zip(reps, (first, second)):
        torch.testing.assert_close(r.reduced, reduce_representation(A))


NOT_PROBED = {"Sigmoid", "Hardsigmoid", "Softmax", "Softmin", "LogSoftmax", "Softmax2d", "MultiheadAttention"}


class EachActivation(nn.Module):
    """A conv, then one of `acts` after the other, each as a module or a function."""

    def __init__(self, acts):
        super().__init__()
        self.conv, self.acts = nn.Conv2d(2, 4, 3, padding=1), acts

    def forward(self, x):
        x = self.conv(x)
        for a in self.acts:
            x = a(x)
        return x.sum(dim=(2, 3))


def test_every_activation_torch_and_timm_define_is_a_probe():
    """The reference: the classes torch.nn's activation module defines (but gates and softmaxes) and timm's
    activation layers, each probed under its own name; and every F.* activation function."""
    import inspect

    import torch.nn.modules.activation as torch_acts
    timm_layers = pytest.importorskip("timm.layers")
    args = {"Threshold": (0.1, 0.0), "GLU": (1,)}
    classes = [c for n, c in sorted(vars(torch_acts).items()) if inspect.isclass(c) and issubclass(c, nn.Module)
               and c.__module__ == torch_acts.__name__ and n not in NOT_PROBED]
    classes += [timm_layers.HardMish, timm_layers.QuickGELU, timm_layers.GELUTanh, timm_layers.Swish,
                timm_layers.activations_me.SwishMe, timm_layers.activations_me.HardMishMe]
    from timm.models.metaformer import SquaredReLU, StarReLU
    classes += [StarReLU, SquaredReLU]
    X = torch.randn(3, 2, 5, 5)
    for c in classes:
        acts = nn.ModuleList([c(*args.get(c.__name__, ())), nn.Conv2d(4 if c.__name__ != "GLU" else 2, 4, 1)])
        (p,) = find_probes(EachActivation(acts), X)
        assert (p.name, p.activation) == ("acts.0", c.__name__)
        assert p.rectifier == (c.__name__ in {"ReLU", "ReLU6", "SquaredReLU"})  # exact zeros below 0
    functions = {F.threshold: (0.1, 0.0), F.threshold_: (0.1, 0.0), F.glu: (1,)}
    for f, name in ACTIVATION_FUNCTIONS.items():
        fn = (lambda x, f=f: f(x.clone(), *functions.get(f, ()))) if f not in (F.prelu,) else \
            (lambda x: F.prelu(x, torch.full((1,), 0.25)))
        (p,) = find_probes(EachActivation([fn]), X)
        assert p.activation == name, f
    assert len(classes) >= 30  # 22 of torch.nn's, 8 of timm's
    assert not find_probes(EachActivation([nn.Sigmoid(), nn.Hardsigmoid(), nn.Softmax(1), torch.sigmoid]), X)


# ==== hooks: a reused module's calls, in-place activations ====

class Reused(nn.Module):
    """One ReLU module called after each of two convs."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.relu = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.conv1(x)))).sum(dim=(2, 3))


class InPlace(nn.Module):
    """An in-place ReLU whose output the next step overwrites in place."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu = nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.relu(self.conv(x))
        return y.add_(5.0).mul_(2.0).sum(dim=(2, 3))  # no zero survives: the probe must see y before this


def test_reused_module_gives_one_probe_per_call_never_mixed():
    torch.manual_seed(0)
    model, X = Reused().eval(), torch.randn(9, 2, 6, 6)
    with torch.no_grad():
        first = model.relu(model.conv1(X))
        second = model.relu(model.conv2(first))
    reps = extract_representations(model, X, n_sparsity=9, batch_size=4, device="cpu")
    assert [(r.name, r.channels) for r in reps] == [("relu:1", 3), ("relu:2", 4)]
    for r, A in zip(reps, (first, second)):
        torch.testing.assert_close(r.reduced, reduce_representation(A))
        chan, _ = sparsity_from_activations(A)
        torch.testing.assert_close(torch.tensor(r.zero_counts[0] / r.values_per_channel), torch.tensor(chan))


def test_inplace_activation_is_measured_before_it_is_overwritten():
    torch.manual_seed(0)
    model, X = InPlace().eval(), torch.randn(7, 2, 5, 5)
    with torch.no_grad():
        A = torch.relu(model.conv(X))
    (r,) = extract_representations(model, X, n_sparsity=7, device="cpu")
    chan, layer = sparsity_from_activations(A)
    assert layer > 0.2  # there are zeros to lose
    torch.testing.assert_close(torch.tensor(r.zero_counts[0] / r.values_per_channel), torch.tensor(chan))
    torch.testing.assert_close(r.reduced, reduce_representation(A))


def test_select_probes():
    probes = find_probes(build_model("torchvision:mobilenet_v3_small", "batch", 3, 10, (SIZE, SIZE)),
                         torch.zeros(2, 3, SIZE, SIZE))
    assert {p.activation for p in select_probes(probes, "type:hardswish")} == {"Hardswish"}
    chosen = select_probes(probes, "features.1*,classifier.*")
    assert chosen and all(p.name.startswith(("features.1", "classifier.")) for p in chosen)
    assert select_probes(probes, "all") == [p for p in probes if not p.gate]  # (squeeze-excitation gates: below)
    assert [p.rectifier for p in probes[:3]] == [p.activation == "ReLU" for p in probes[:3]]


# ==== the norm table and the swap, on known tensors ====

def test_group_g_and_the_default_group_rule():
    assert isinstance(get_norm("group:8").build(64, True), nn.GroupNorm)
    assert get_norm("group:8").build(64, True).num_groups == 8
    assert get_norm("group").build(48, True).num_groups == 24  # 32 does not divide 48
    assert get_norm("group:1").tag == "gn1" and get_norm("group:16").short == "GN16"
    with pytest.raises(NormError, match="group:3: 3 groups do not divide a layer of width 16"):
        get_norm("group:3").build(16, True)


def test_channels_last_layernorm_swapped_keeps_its_layout():
    """ConvNeXt's block norm: LayerNorm over C of an (N, H, W, C) tensor. Swapped to batch, it must be
    BatchNorm2d over C of the same values (train mode: batch statistics), in the same layout."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(6)

        def forward(self, x):  # (N, C, H, W)
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    torch.manual_seed(0)
    x = torch.randn(5, 6, 4, 3) * 3 + 1
    model = swap_norms(Block(), "batch", x[:2])
    assert isinstance(model.norm, ChannelsLast) and isinstance(model.norm.inner, nn.BatchNorm2d)
    mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(model.train()(x), (x - mean) / torch.sqrt(var + 1e-5))


class Tokens(nn.Module):
    """A transformer's habit: image patches embedded as (N, T, C) tokens, LayerNorm over each token's C."""

    def __init__(self):
        super().__init__()
        self.embed, self.norm, self.head = nn.Linear(4, 6), nn.LayerNorm(6, eps=1e-6), nn.Linear(6, 3)

    def tokens(self, x):  # (N, 4, H, W) -> (N, H * W, 4) -> (N, T, 6)
        return self.embed(x.flatten(2).transpose(1, 2))

    def forward(self, x):
        return self.head(self.norm(self.tokens(x)).mean(dim=1))


def test_a_transformer_s_tokens_are_normalised_as_after_a_linear_layer():
    """Swapped on (N, T, C) tokens, a norm works on each token's features (README's "after a hidden FC
    layer" column): `layer` is the model's own LayerNorm (its eps and weights), `group:2` two groups of
    each token's 6 features, `batch` each feature over the batch's tokens; not the tokens x features of
    a sample as one map."""
    import copy

    torch.manual_seed(0)
    model, x = Tokens(), torch.randn(5, 4, 3, 3)
    with torch.no_grad():
        model.norm.weight.uniform_(), model.norm.bias.uniform_()
        t = model.tokens(x)
    layer = swap_norms(copy.deepcopy(model), "layer", x[:2])
    assert isinstance(layer.norm, PerToken) and layer.norm.inner.eps == 1e-6
    torch.testing.assert_close(layer.eval()(x), model.eval()(x))
    g = t.reshape(5, 9, 2, 3)
    by_group = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(swap_norms(copy.deepcopy(model), "group:2", x[:2]).norm(t), by_group.reshape(5, 9, 6))
    mean, var = t.mean(dim=(0, 1)), t.var(dim=(0, 1), unbiased=False)
    torch.testing.assert_close(swap_norms(copy.deepcopy(model), "batch", x[:2]).norm.train()(t),
                               (t - mean) / torch.sqrt(var + 1e-5))


def test_a_norm_of_one_value_per_group_is_refused():
    """GroupNorm over groups of one feature (group's rule on a hidden layer of width 24: 24 groups) outputs its
    bias whatever the input: the model could not learn. LayerNorm over the 24 features is fine."""
    from bnrep.models import ModelError, check_forward

    def mlp(norm):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), norm, nn.ReLU(), nn.Linear(24, 10))

    with pytest.raises(ModelError, match=r"^mine under group on 1x8x8 images: 2 normalises one value per group "
                                         r"\(its input is \(2, 24\)\)"):
        check_forward(mlp(get_norm("group").build(24, conv=False)), "mine", "group", (1, 8, 8), 10)
    model = mlp(get_norm("group").build(24, conv=False))
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model(x), model(torch.randn(2, 1, 8, 8)))  # indeed: the input does not matter
    check_forward(mlp(nn.LayerNorm(24)), "mine", "layer", (1, 8, 8), 10)


def test_a_norm_of_two_values_per_group_is_refused():
    """GroupNorm over groups of two features (group's rule on a hidden layer of width 64: 32 groups) standardises
    each pair to -1 and +1: one bit per group (a study's whole GroupNorm result came from it). Refused for a model
    bnrep trains; one already trained is analysed. LayerNorm over two values likewise; groups of four, or two
    channels of a map, are fine."""
    from bnrep.models import ModelError, check_forward

    def mlp(norm, width=64):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, width), norm, nn.ReLU(), nn.Linear(width, 10))

    from bnrep.models import FEW_PER_GROUP

    with pytest.raises(ModelError, match=r"^mine under group on 1x8x8 images: 2 normalises two values per group \(its "
                                         r"input is \(2, 64\)\), so each group's output is its bias plus or minus "
                                         r"its weight, one bit, through which no gradient reaches the layers before "
                                         r"it; choose fewer groups"):
        check_forward(mlp(get_norm("group").build(64, conv=False)), "mine", "group", (1, 8, 8), 10, refuse=FEW_PER_GROUP)
    check_forward(mlp(get_norm("group").build(64, conv=False)), "mine", "group", (1, 8, 8), 10)  # trained: analysed
    assert get_norm("group").build(64, conv=False).num_groups == 32
    y = nn.GroupNorm(32, 64, affine=False)(100 * torch.randn(5, 64, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(y[:, 0::2], -y[:, 1::2], atol=1e-4, rtol=0)  # indeed: every pair standardised to -1 and +1
    torch.testing.assert_close(y.abs(), torch.ones(5, 64), atol=1e-3, rtol=0)
    with pytest.raises(ModelError, match="normalises two values per group"):
        check_forward(nn.Sequential(nn.Flatten(), nn.Linear(64, 20), nn.Unflatten(1, (10, 2)), nn.LayerNorm(2),
                                    nn.Flatten(), nn.Linear(20, 10)), "mine", "layer", (1, 8, 8), 10,
                      refuse=FEW_PER_GROUP)
    check_forward(mlp(nn.GroupNorm(16, 64)), "mine", "group:16", (1, 8, 8), 10, refuse=FEW_PER_GROUP)  # 4 per group
    check_forward(nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10)),
                  "mine", "group:2", (1, 8, 8), 10, refuse=FEW_PER_GROUP)  # 2 channels of 6x6: 72 values per group


def test_none_is_a_per_channel_bias():
    model = swap_norms(nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.BatchNorm2d(3)), "none",
                       torch.zeros(2, 2, 4, 4))
    assert isinstance(model[1], ChannelBias) and not norm_modules(model)
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([1.0, -2.0, 0.5]))
    x = torch.randn(2, 2, 4, 4)
    torch.testing.assert_close(model(x), model[0](x) + torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1))


def test_a_model_without_norms_is_none_as_built():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU())
    assert swap_norms(model, "none", torch.zeros(2, 2, 5, 5)) is model
    with pytest.raises(NormError, match=r"has no normalisation layer to swap for group \(it has no normalisation: "
                                        r"it is `none` as built\)"):
        swap_norms(model, "group", torch.zeros(2, 2, 5, 5))


def test_a_norm_holding_its_activation_keeps_it():
    """timm's BatchNormAct2d applies its activation inside the norm module: the swap keeps it, after the new norm."""
    class BNAct(nn.BatchNorm2d):
        def __init__(self, c):
            super().__init__(c)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(super().forward(x))

    model = swap_norms(nn.Sequential(nn.Conv2d(2, 4, 1), BNAct(4)), "group:2", torch.zeros(2, 2, 3, 3))
    assert [p.name for p in find_probes(model, torch.zeros(2, 2, 3, 3))] == ["1.act"]
    x = torch.randn(3, 2, 3, 3)
    gn = nn.GroupNorm(2, 4)
    torch.testing.assert_close(model(x), torch.relu(gn(model[0](x))))


@pytest.mark.parametrize("to,kept", [("batch", True), ("ghost:2", True), ("renorm:2", True), ("group", False)])
def test_a_norm_swapped_for_its_own_kind_keeps_its_settings(to, kept):
    """MobileNet's BatchNorm (eps 1e-3, momentum 0.01) and timm's zero-initialised last BatchNorm stay so under
    batch (and ghost BatchNorm): the weight initialisation is the model's own. Another kind starts as torch's."""
    bn = nn.BatchNorm2d(4, eps=1e-3, momentum=0.01)
    nn.init.zeros_(bn.weight)
    bn.num_batches_tracked.fill_(7)  # trained before: the new norm's own steps count from 0 (Batch Renorm's warm-up)
    model = swap_norms(nn.Sequential(nn.Conv2d(2, 4, 1), bn), to, torch.zeros(2, 2, 3, 3))
    new = model[1]
    assert (new.eps, getattr(new, "momentum", None), bool(new.weight.any())) == (
        (1e-3, 0.01, False) if kept else (1e-5, None, True))
    assert int(getattr(new, "num_batches_tracked", 0)) == 0


def test_check_norm_kind_finds_a_leftover():
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.GroupNorm(2, 4), nn.BatchNorm2d(4))
    with pytest.raises(NormError, match="still has a BatchNorm2d at 2 after the swap to group"):
        check_norm_kind(model, "group")


def test_every_table_entry_has_its_facts():
    for name, n in NORMS.items():
        assert n.name == name and n.tag and n.short and n.label and n.color
        assert (n.conv is None) == (not n.kinds) == n.bias  # a norm module, or the layer keeps its bias
    tags = [n.tag for n in NORMS.values()]
    assert len(set(tags)) == len(tags)


@pytest.mark.parametrize("spec,norm,seed,expected", [
    ("torchvision:resnet18", "group:8", 1, "torchvision-resnet18-gn8-s1"),
    ("tests.labnets.nets:wide_cnn", "as-built", 0, "tests.labnets.nets-wide_cnn-asbuilt-s0"),
    ("cnn", "instance", 2, "cnn-in-s2"),
])
def test_model_ids_are_file_and_s3_safe(spec, norm, seed, expected):
    mid = model_id(spec, norm, seed)
    assert mid == expected and ":" not in mid and "/" not in mid
    assert model_slug(spec) == expected.rsplit("-", 2)[0]


def test_a_model_file_knows_its_class_count(tmp_path):
    """load_model builds the head from the class count saved with the weights (a 7-class model loads)."""
    import pandas as pd

    from bnrep.checkpoints import load_model, save_model
    from bnrep.config import stage_hashes
    from bnrep.experiments import get_experiment
    from bnrep.store import Store

    exp, store = get_experiment("digits-cnn"), Store(str(tmp_path), "digits-cnn")
    row = {"model_id": "m", "bn": True, "norm": "batch", "seed": 0, "model": "torchvision:resnet18"}
    trained = build_model("torchvision:resnet18", "batch", 1, num_classes=7, size=(8, 8))
    digest = save_model(store, "m", trained, exp, {"lr": 0.01}, row, num_classes=7)
    store.write_part("training", "m", pd.DataFrame([row]), stage_hashes(exp)["train_hash"], model_sha256=digest)
    model = load_model(store, "m", exp).eval()
    assert model.fc.out_features == 7
    torch.testing.assert_close(model(torch.ones(2, 1, 8, 8)), trained.eval()(torch.ones(2, 1, 8, 8)))
