"""Norm-table entries against computations written here: ghost batch norm (Hoffer et al. 2017),
batch renormalization (Ioffe 2017) and weight standardisation + GroupNorm (Qiao et al. 2019), in
built-in nets and in swapped ones."""

import numpy as np
import pytest
import torch
from torch import nn

from bnrep.models import build_model
from bnrep.norm_layers import BatchRenorm1d, BatchRenorm2d, GhostBatchNorm1d, GhostBatchNorm2d, WSConv2d
from bnrep.norms import get_norm
from bnrep.swap import norm_modules


def _bn_numpy(x: np.ndarray, axes: tuple[int, ...], eps: float = 1e-5) -> np.ndarray:
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


@pytest.mark.parametrize("n,virtual", [(16, 4), (18, 4), (5, 8)])
def test_ghost_batchnorm_is_batchnorm_per_virtual_batch(n, virtual):
    """Train mode: each chunk of `virtual` samples normalised by its own statistics (a short last chunk
    joins the one before); running statistics: one momentum update per chunk; eval mode: BatchNorm."""
    torch.manual_seed(0)
    x = torch.randn(n, 3, 4, 5, dtype=torch.float64) * 2 + 1
    gbn = GhostBatchNorm2d(3, virtual).double().train()
    out = gbn(x).detach().numpy()
    sizes = [virtual] * max(1, n // virtual)
    sizes[-1] += n - sum(sizes)
    bounds = np.cumsum([0] + sizes)
    X, mean, var = x.numpy(), np.zeros(3), np.ones(3)
    for a, b in zip(bounds[:-1], bounds[1:]):
        np.testing.assert_allclose(out[a:b], _bn_numpy(X[a:b], (0, 2, 3)), rtol=1e-10, atol=1e-10)
        chunk = X[a:b].transpose(1, 0, 2, 3).reshape(3, -1)
        mean = 0.9 * mean + 0.1 * chunk.mean(axis=1)
        var = 0.9 * var + 0.1 * chunk.var(axis=1, ddof=1)  # torch's running var is unbiased
    np.testing.assert_allclose(gbn.running_mean.numpy(), mean, rtol=1e-10)
    np.testing.assert_allclose(gbn.running_var.numpy(), var, rtol=1e-10)
    gbn.eval()
    ref = nn.BatchNorm2d(3).double().eval()
    ref.load_state_dict(gbn.state_dict())
    torch.testing.assert_close(gbn(x), ref(x))


def test_ghost_batchnorm_after_linear_layers():
    x = torch.randn(12, 7, dtype=torch.float64)
    out = GhostBatchNorm1d(7, 4).double().train()(x).detach().numpy()
    for a in range(0, 12, 4):
        np.testing.assert_allclose(out[a:a + 4], _bn_numpy(x.numpy()[a:a + 4], (0,)), rtol=1e-10, atol=1e-10)


def _renorm_numpy(x, axes, mu, var_run, r_max, d_max, eps=1e-5):
    """Ioffe 2017, Algorithm 1, written out: the output, r and d."""
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    std, std_run = np.sqrt(var + eps), np.sqrt(var_run + eps)
    r = np.clip(std / std_run, 1 / r_max, r_max)
    d = np.clip((mean - mu) / std_run, -d_max, d_max)
    return (x - mean) / std * r + d, r, d


def test_batch_renorm_is_batchnorm_before_its_warm_up_and_ioffes_algorithm_after():
    """Step 0: r_max = 1, d_max = 0, BatchNorm's output and running statistics exactly; after the W-batch warm-up:
    Algorithm 1 with r_max = 3, d_max = 5, clipping where the running statistics are far off; halfway, 2 and 2.5."""
    torch.manual_seed(0)
    x = torch.randn(16, 3, 4, 5, dtype=torch.float64) * torch.tensor([2.0, 0.1, 30.0]).view(1, 3, 1, 1) + 4
    brn, bn = BatchRenorm2d(3, 10).double().train(), nn.BatchNorm2d(3).double().train()
    torch.testing.assert_close(brn(x), bn(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(brn.state_dict(), bn.state_dict())
    brn.num_batches_tracked.fill_(5)
    assert tuple(map(float, brn.limits())) == (2.0, 2.5)
    brn.num_batches_tracked.fill_(10)
    assert tuple(map(float, brn.limits())) == (3.0, 5.0)
    mu, var_run = brn.running_mean.numpy().copy(), brn.running_var.numpy().copy()
    want, r, d = _renorm_numpy(x.numpy(), (0, 2, 3), mu.reshape(1, 3, 1, 1), var_run.reshape(1, 3, 1, 1), 3.0, 5.0)
    assert (r.ravel() == 3.0).any() or (r.ravel() == 1 / 3).any()  # a channel clipped: the test sees the clip
    np.testing.assert_allclose(brn(x).detach().numpy(), want, rtol=1e-10, atol=1e-10)
    chunk = x.numpy().transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(brn.running_mean.numpy(), 0.9 * mu + 0.1 * chunk.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(brn.running_var.numpy(), 0.9 * var_run + 0.1 * chunk.var(axis=1, ddof=1), rtol=1e-12)
    assert int(brn.num_batches_tracked) == 11
    brn.eval()
    ref = nn.BatchNorm2d(3).double().eval()
    ref.load_state_dict(brn.state_dict())
    torch.testing.assert_close(brn(x), ref(x))


def test_batch_renorm_gradient_treats_r_and_d_as_constants():
    """The gradient of Algorithm 1 with r and d held fixed (Ioffe 2017, section 3), against autograd through
    the same formula with r and d detached by hand, after linear layers."""
    torch.manual_seed(1)
    x = (torch.randn(8, 6, dtype=torch.float64) * 3 + 2).requires_grad_()
    brn = BatchRenorm1d(6, 1).double().train()
    brn.num_batches_tracked.fill_(1)  # past its one-batch warm-up
    brn.running_mean.fill_(0.5)
    brn.running_var.fill_(4.0)
    g = torch.randn(8, 6, dtype=torch.float64)
    (brn(x) * g).sum().backward()
    got = x.grad.clone()
    x.grad = None
    mean, var = x.mean(0), x.var(0, unbiased=False)
    std = (var + 1e-5).sqrt()
    r = (std / (4.0 + 1e-5) ** 0.5).clamp(1 / 3, 3).detach()
    d = ((mean - 0.5) / (4.0 + 1e-5) ** 0.5).clamp(-5, 5).detach()
    (((x - mean) / std * r + d) * g).sum().backward()
    torch.testing.assert_close(got, x.grad, rtol=1e-10, atol=1e-12)


def test_batch_renorm_running_statistics_as_batchnorm_with_a_cumulative_average_too():
    """momentum=None: BatchNorm's cumulative average of the batch statistics (the output renormalised, the
    statistics the batches' own)."""
    torch.manual_seed(2)
    brn, bn = BatchRenorm2d(3, 1).double().train(), nn.BatchNorm2d(3).double().train()
    brn.momentum = bn.momentum = None
    for _ in range(3):
        x = torch.randn(8, 3, 2, 2, dtype=torch.float64) * 3 + 1
        brn(x), bn(x)
    torch.testing.assert_close(brn.state_dict(), bn.state_dict())


def test_batch_renorm_under_bfloat16_autocast_keeps_float32_statistics():
    """--amp: a conv's bf16 output into Batch Renorm (it raised on its running statistics' dtype); statistics
    in float32 as BatchNorm keeps them, the output in the input's dtype."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), BatchRenorm2d(4, 1)).train()
    net[1].num_batches_tracked.fill_(1)  # renormalising
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(6, 3, 8, 8))
    assert out.dtype == torch.bfloat16 and net[1].running_mean.dtype == torch.float32
    assert net[1].running_mean.abs().sum() > 0 and int(net[1].num_batches_tracked) == 2


def test_batch_statistics_copy_of_batch_renorm_updates_nothing_and_starts_as_batchnorm():
    """The analysis' training-mode copy (epoch 0, gradient norms, train- against eval-mode): Batch Renorm
    updated its running statistics and step count after every analysis batch, so from the second batch on its
    epoch-0 representations drifted from BatchNorm's (0.2-0.7 relative) though both nets are one at a seed."""
    from bnrep.represent import with_batch_statistics

    x = torch.randn(4 * 16, 3, 16, 16)
    outs = {}
    for norm in ("batch", "renorm:20"):
        torch.manual_seed(0)
        model = build_model("cnn", norm, 3, 10, (16, 16))
        copy = with_batch_statistics(model)
        outs[norm] = torch.cat([copy(b) for b in x.split(16)])
        before = {k: v.clone() for k, v in copy.state_dict().items()}
        copy(x[:16])
        torch.testing.assert_close(copy.state_dict(), before)  # nothing moved, the step count included
        torch.testing.assert_close(model.state_dict(), build_model_state(norm))  # nor the model's
    torch.testing.assert_close(outs["renorm:20"], outs["batch"], rtol=1e-4, atol=1e-5)


def build_model_state(norm):
    torch.manual_seed(0)
    return build_model("cnn", norm, 3, 10, (16, 16)).state_dict()


def test_batch_renorm_entry_builds_trains_and_checks_its_batch_size():
    from bnrep.experiments import ConfigError, get_experiment

    e = get_norm("renorm:100")
    assert (e.tag, e.short, e.label, e.starts_as, e.batch_statistics) == (
        "brn100", "BRN100", "Batch Renorm (100-batch warm-up)", "batch", True)
    assert not get_norm("group").batch_statistics and get_norm("ghost:4").batch_statistics
    torch.manual_seed(0)
    model = build_model("tests.labnets.nets:wide_cnn", "renorm:3", 3, 10, (16, 16))
    assert {type(m) for _, m in norm_modules(model)} <= {BatchRenorm2d, BatchRenorm1d}
    assert all(m.warmup == 3 for _, m in norm_modules(model))
    assert model.train()(torch.randn(8, 3, 16, 16)).shape == (8, 10)
    with pytest.raises(ConfigError, match="renorm:3 normalises with batch statistics and cannot train on batches of 1"):
        get_experiment("digits-cnn").override(norms="renorm:3,none", batch_size=1)


def test_weight_standardised_filters_have_mean_0_std_1():
    torch.manual_seed(0)
    conv = WSConv2d(3, 5, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.mul_(7).add_(torch.arange(5.0).view(5, 1, 1, 1))  # far from standardised
    w = conv.weight.detach().numpy().reshape(5, -1)
    ref = (w - w.mean(axis=1, keepdims=True)) / (w.std(axis=1, keepdims=True) + 1e-5)  # numpy std: population
    std = conv.standardised_weight().detach().reshape(5, -1)
    np.testing.assert_allclose(std.numpy(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.mean(dim=1).numpy(), 0, atol=1e-6)
    np.testing.assert_allclose(std.std(dim=1, unbiased=False).numpy(), 1, atol=1e-4)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(conv(x), nn.functional.conv2d(x, torch.tensor(ref.reshape(5, 3, 3, 3)), padding=1),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", ["cnn", "resnet18", "torchvision:resnet18", "tests.labnets.nets:wide_cnn"])
def test_ws_group_and_ghost_in_any_model(spec):
    """Built-in nets build them; swapped nets get every conv standardised (weights kept) or every BN ghosted."""
    torch.manual_seed(0)
    ws = build_model(spec, "ws+group", 3, 10, (16, 16))
    convs = [m for m in ws.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(c) is WSConv2d for c in convs)
    assert {type(m) for _, m in norm_modules(ws)} == {nn.GroupNorm}
    ghost = build_model(spec, "ghost:4", 3, 10, (16, 16))
    assert {type(m) for _, m in norm_modules(ghost)} <= {GhostBatchNorm2d, GhostBatchNorm1d}
    assert all(m.virtual == 4 for _, m in norm_modules(ghost))
    for model in (ws, ghost):
        assert model.train()(torch.randn(8, 3, 16, 16)).shape == (8, 10)


class SqueezeExcite(nn.Module):
    """conv -> BatchNorm -> ReLU, then a squeeze-excitation gate of two 1x1 convs with no norm after them."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.reduce, self.expand = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return self.head((x * gate).mean((2, 3)))


def test_ws_standardises_the_convs_a_norm_follows_not_a_gate():
    from bnrep.swap import swap_norms

    model = swap_norms(SqueezeExcite(), "ws+group", torch.zeros(2, 3, 8, 8))
    assert [p for p, m in model.named_modules() if type(m) is WSConv2d] == ["conv"]
    assert type(model.reduce) is type(model.expand) is nn.Conv2d


def test_ws_swap_keeps_the_weights():
    torch.manual_seed(0)
    ref = build_model("torchvision:resnet18", "batch", 3, 10, (16, 16))
    torch.manual_seed(0)
    ws = build_model("torchvision:resnet18", "ws+group", 3, 10, (16, 16))
    torch.testing.assert_close(ws.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)


def test_entries():
    g = get_norm("ghost:16")
    assert (g.tag, g.short, g.label) == ("gbn16", "GBN16", "ghost BatchNorm (16 per virtual batch)")
    w = get_norm("ws+group")
    assert (w.tag, w.short, w.conv_type) == ("wsgn", "WSGN", WSConv2d)


class RMSNet(nn.Module):
    """A conv, torch's RMSNorm over channels last (as a ConvNeXt block keeps its LayerNorm), a head."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.RMSNorm(8), nn.Linear(8, 10)

    def forward(self, x):
        x = self.norm(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(torch.relu(x).mean((2, 3)))


@pytest.mark.parametrize("name", ["batch", "group", "none"])
def test_torch_rmsnorm_is_a_normalisation_a_swap_replaces(name):
    """(it was not one: `none` kept it, and `batch` was refused as "has no normalisation")"""
    from bnrep.swap import check_norm_kind, swap_norms

    x = torch.randn(4, 3, 6, 6)
    model = swap_norms(RMSNet(), name, x)
    assert not any(isinstance(m, nn.RMSNorm) for m in model.modules())
    check_norm_kind(model, name)
    assert [type(m) for _, m in norm_modules(model)] == {"batch": [nn.BatchNorm2d], "group": [nn.GroupNorm],
                                                          "none": []}[name]
    assert model(x).shape == (4, 10)
    if name == "batch":  # channels last: it normalises each of the 8 channels over the batch and the positions
        h = model.conv(x)
        torch.testing.assert_close(model.norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2),
                                   nn.BatchNorm2d(8).train()(h))


class ChannelRMSNorm(nn.Module):
    """A table entry's own module: x / rms over the channels of each position."""

    def __init__(self, c):
        super().__init__()
        self.num_features, self.weight = c, nn.Parameter(torch.ones(c))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-6) * self.weight.view(1, -1, 1, 1)


def test_a_new_entrys_module_is_found_in_any_model(monkeypatch):
    """A norm added as one table entry: its module in a model is swapped away by another norm, and one left
    after a swap is refused (a hand-written list of types knew only torch's)."""
    from bnrep import norms
    from bnrep.norms import NormError
    from bnrep.swap import check_norm_kind, swap_norms

    entry = norms.Norm("rms", "rms", "RMS", "RMSNorm", "tab:red", ChannelRMSNorm, nn.LayerNorm, bias=False,
                       kinds=(ChannelRMSNorm, nn.LayerNorm))
    monkeypatch.setitem(norms.NORMS, "rms", entry)
    model = build_model("cnn", "rms", 1, 10, (28, 28))
    assert sum(isinstance(m, ChannelRMSNorm) for m in model.modules()) == 4
    none = swap_norms(build_model("cnn", "rms", 1, 10, (28, 28)), "none", torch.zeros(2, 1, 28, 28))
    assert not any(isinstance(m, ChannelRMSNorm) for m in none.modules())
    with pytest.raises(NormError, match=r"still has a ChannelRMSNorm at .* after the swap to batch"):
        check_norm_kind(model, "batch")


# ==== normalisations a swap does not know ====

class EvoNormLike2d(nn.Module):
    """A normalisation of a model's own with no width to swap it at (as timm's EvoNorm2dS0 or
    FilterResponseNormTlu2d): x over the std of each sample's (C, H, W), times a weight."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, c, 1, 1))

    def forward(self, x):
        return x / (x.var((1, 2, 3), keepdim=True) + 1e-5).sqrt() * self.weight


class PixelNorm(nn.Module):  # no parameters at all (StyleGAN's): a normalisation all the same
    def __init__(self, c):
        super().__init__()

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-8)


class OwnRmsNorm2d(nn.Module):
    """A model's own RMSNorm over an image's channels, with a `normalized_shape` (as timm's RmsNorm2d)."""

    def __init__(self, c):
        super().__init__()
        self.normalized_shape, self.weight = (c,), nn.Parameter(torch.ones(c))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-6) * self.weight.view(1, -1, 1, 1)


class Normalize(nn.Module):  # a fixed scaling of the input: not a normalisation layer
    def forward(self, x):
        return (x - 0.5) / 0.25


class NormedLinear(nn.Linear):  # a cosine classifier: not a normalisation layer
    def forward(self, x):
        return nn.functional.linear(nn.functional.normalize(x, dim=1), nn.functional.normalize(self.weight, dim=1))


class PreNorm(nn.Module):  # a block that holds a norm: its LayerNorm is swapped, the block is not a norm
    def __init__(self, c):
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(c), nn.Linear(c, c)

    def forward(self, x):
        return self.fc(self.norm(x))


class Net(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.scale, self.conv, self.norm = Normalize(), nn.Conv2d(3, 8, 3, padding=1), norm(8)
        self.block, self.head = PreNorm(8), NormedLinear(8, 10)

    def forward(self, x):
        x = torch.relu(self.norm(self.conv(self.scale(x)))).mean((2, 3))
        return self.head(torch.relu(self.block(x)))


@pytest.mark.parametrize("kind", [EvoNormLike2d, PixelNorm])
@pytest.mark.parametrize("name", ["batch", "group", "none"])
def test_a_normalisation_a_swap_cannot_replace_is_refused_not_kept(kind, name):
    """timm's EvoNorm, FilterResponseNorm, GlobalResponseNorm and a norm of a model's own were not seen: `batch`
    was refused as "has no normalisation" and `none` trained the model with its norms in place, under the label
    "no norm". Refused in one line now; as-built keeps it."""
    from bnrep.norms import NormError
    from bnrep.swap import swap_norms

    x = torch.randn(4, 3, 6, 6)
    with pytest.raises(NormError, match=rf"^the model: {kind.__name__} at norm cannot be swapped for {name} \(swapped: "
                                        r"BatchNorm, GroupNorm, .*\); study the model as-built$"):
        swap_norms(Net(kind), name, x)
    assert isinstance(swap_norms(Net(kind), "as-built", x).norm, kind)


@pytest.mark.parametrize("name", ["batch", "none"])
def test_a_norm_with_a_normalized_shape_is_swapped_and_names_that_say_norm_otherwise_are_not_norms(name):
    """A model's own RMSNorm2d (a `normalized_shape`, channels first) is swapped as torch's are; an input
    Normalize, a NormedLinear head and a PreNorm block (whose LayerNorm is swapped) stay as they are."""
    from bnrep.swap import ChannelBias, check_norm_kind, swap_norms

    x = torch.randn(4, 3, 6, 6)
    model = swap_norms(Net(OwnRmsNorm2d), name, x)
    check_norm_kind(model, name)
    assert (type(model.norm), type(model.block.norm)) == {"batch": (nn.BatchNorm2d, nn.BatchNorm1d),
                                                          "none": (ChannelBias, ChannelBias)}[name]
    assert (type(model.scale), type(model.block), type(model.head)) == (Normalize, PreNorm, NormedLinear)
    if name == "batch":  # channels first: each of the 8 channels over the batch and the positions
        h = model.conv(model.scale(x))
        torch.testing.assert_close(model.norm.train()(h), nn.BatchNorm2d(8).train()(h))


def test_blocks_named_after_their_norm_and_weight_reparametrisations_are_not_norms():
    """Conv2dNormActivation without its norm (torchvision's MaxViT stem), a NormFree block, weight_norm and
    spectral_norm (a weight's, not a layer's) were refused as normalisations a swap cannot replace."""
    import torchvision
    from torchvision.ops import Conv2dNormActivation

    from bnrep.swap import foreign_norms

    reparametrised = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(3, 4)), nn.ReLU(),
                                   nn.utils.parametrizations.spectral_norm(nn.Linear(4, 2)))
    for model in (torchvision.models.maxvit_t(), Conv2dNormActivation(3, 4, norm_layer=None), reparametrised):
        assert foreign_norms(model) == []
    assert foreign_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.LocalResponseNorm(2))) == [("1", "LocalResponseNorm")]
    timm = pytest.importorskip("timm")
    for name in ("nf_resnet26", "efficientvit_b0", "rdnet_tiny"):
        assert foreign_norms(timm.create_model(name)) == [], name


def test_timm_norms_a_swap_cannot_replace_are_refused_and_its_rmsnorm2d_is_swapped():
    pytest.importorskip("timm")
    from bnrep.norms import NormError

    with pytest.raises(NormError, match=r"^timm:test_efficientnet_evos: EvoNorm2dS0 at bn1 and 12 more cannot be "
                                        r"swapped for none "):
        build_model("timm:test_efficientnet_evos", "none", 3, 3, (32, 32))
    model = build_model("timm:convnext_atto_rms", "none", 3, 3, (32, 32))
    assert not [m for m in model.modules() if type(m).__name__.startswith("RmsNorm")]


def test_ws_standardises_a_conv_whose_output_a_norm_takes_permuted():
    """torchvision's ConvNeXt and Swin permute a conv's output to NHWC for its LayerNorm: the norm takes a view
    of the conv's output, not the tensor itself, and `ws+group` left those convs as they were (ConvNeXt-T: 1 of
    its 22 convs standardised, the stem; WS + GroupNorm was GroupNorm there)."""
    from bnrep.swap import swap_norms

    model = swap_norms(RMSNet(), "ws+group", torch.zeros(2, 3, 6, 6))
    assert type(model.conv) is WSConv2d
    convnext = build_model("torchvision:convnext_tiny", "ws+group", 3, 10, (32, 32))
    plain = [p for p, m in convnext.named_modules() if type(m) is nn.Conv2d]
    assert plain == ["features.2.1", "features.4.1", "features.6.1"]  # the downsampling convs: after a norm
    assert sum(type(m) is WSConv2d for m in convnext.modules()) == 19


def test_members_of_one_family_are_not_one_network():
    """Two conditions that build the same network are refused (bnrep.models.check_model compares the built
    modules): ghost BatchNorm and Batch Renorm at two sizes differ only in their argument, which their modules
    now show, and are not refused."""
    from bnrep.models import check_model

    check_model("cnn", ["batch", "ghost:4", "ghost:8", "renorm:10", "renorm:20", "none"], (1, 8, 8), 10)
