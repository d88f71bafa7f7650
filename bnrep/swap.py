"""Swapping the normalisation of any model for a table entry's (bnrep.norms).

`swap_norms(model, norm, example)` replaces every normalisation module of any model
(BatchNorm, GroupNorm, LayerNorm, InstanceNorm, RMSNorm, their subclasses, the
channels-last LayerNorm of ConvNeXt blocks and the LayerNorm2d variants, and norms
with a one-dimensional `normalized_shape`) by `norm`'s module at the same width,
and for `none` by a per-channel bias (`ChannelBias`, the function class of the
conv bias the norm made redundant). It finds where each module keeps its channels
from one forward pass, and proves afterwards that no module of another kind is
left (`check_norm_kind`). A module named as a norm that it cannot replace
(`foreign_norms`: timm's EvoNorm) is refused, not kept.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from bnrep.norms import AS_BUILT, NORMS, Norm, NormError, get_norm

_LAST_DIM = (nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))  # over the last dims they are given
_TORCH_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, *_LAST_DIM)


def norm_types() -> tuple[type, ...]:
    """The module types a swap replaces: torch's normalisations and every type a table entry builds (a new
    entry's own module is found in any model, and refused where it is left after a swap)."""
    return (*_TORCH_NORMS, *dict.fromkeys(k for n in NORMS.values() for k in n.kinds))


class ChannelBias(nn.Module):
    """A learnable per-channel bias along dim 1: what `none` leaves where a norm stood."""

    def __init__(self, width: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(width))

    def extra_repr(self) -> str:
        return str(len(self.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.view(-1, *([1] * (x.dim() - 2)))  # (N, C, ...) + (C, 1, ...)


class ChannelsLast(nn.Module):
    """Runs a channels-first module on a channels-last input: (N, ..., C) -> (N, C, ...) and back."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.movedim(-1, 1)).movedim(1, -1)


class NormThen(nn.Module):
    """A swapped norm followed by what the replaced module applied after normalising: timm's
    BatchNormAct2d and friends hold their activation (and dropout) as children, run in
    registration order after the norm; they keep their names (`bn1.act` stays a probe)."""

    def __init__(self, norm: nn.Module, after: dict[str, nn.Module]):
        super().__init__()
        self.norm = norm
        for name, m in after.items():
            self.add_module(name, m)
        self.after = list(after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        for name in self.after:
            x = getattr(self, name)(x)
        return x


class PerToken(nn.Module):
    """Runs a module made for (N, C) features on each token of (N, T, C): a transformer's LayerNorm
    swapped for another norm normalises each token's features, as after a linear layer."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.reshape(-1, x.shape[-1])).view_as(x)


class Sequence1d(nn.Module):
    """Runs a module made for (N, C, H, W) on (N, C, L) as (N, C, L, 1)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.unsqueeze(-1)).squeeze(-1)


def norm_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every normalisation module a swap replaces, in registration order."""
    types = norm_types()
    return [(n, m) for n, m in model.named_modules() if isinstance(m, types) or _last_dim_norm(m)]


# a class named as a normalisation: its name ends in Norm and at most a short suffix (EvoNorm2dS0,
# FilterResponseNormTlu2d, GlobalResponseNorm, PixelNorm, mynorm) or in Normalization; not NormedLinear (a cosine
# classifier), Normalize (a fixed input scaling), Conv2dNormActivation or NormFreeBlock (blocks)
_NAMED_AS_NORM = re.compile(r"(Norm|norm)(?![a-z])\w{0,6}$|Normali[sz]ation\w{0,3}$")


def _named_as_norm(m: nn.Module) -> bool:
    return bool(_NAMED_AS_NORM.search(type(m).__name__))


def _last_dim_norm(m: nn.Module) -> bool:
    """torch's LayerNorm and RMSNorm, and any normalisation with a one-dimensional `normalized_shape` (timm's
    RmsNorm and RmsNorm2d, a LayerNorm of a model's own): over the last dim they are given, or over an image's
    channels for a 2d variant (_channels_last)."""
    if isinstance(m, _LAST_DIM):
        return True
    shape = getattr(m, "normalized_shape", None)
    return _named_as_norm(m) and isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 1


def foreign_norms(model: nn.Module) -> list[tuple[str, str]]:
    """(path, class name) of each module named as a normalisation that a swap cannot replace (timm's EvoNorm and
    FilterResponseNorm, ConvNeXt-V2's GlobalResponseNorm, torchvision's FrozenBatchNorm2d, a norm of a model's
    own): left in place, `none` would not be no normalisation. Innermost ones only: a block that holds norms
    (a PreNorm wrapper, timm's NormMlpClassifierHead) is not one."""
    known = {id(m) for _, m in norm_modules(model)}
    return [(path, type(m).__name__) for path, m in model.named_modules()
            if id(m) not in known and not isinstance(m, NormThen) and _named_as_norm(m)
            and "parametrizations" not in path.split(".")  # weight_norm, spectral_norm: a weight's, not a layer's
            and (not list(m.children()) or any(True for _ in m.parameters(recurse=False))
                 or any(True for _ in m.buffers(recurse=False)))  # its own computation: not a block of others
            and not any(id(c) in known or _named_as_norm(c) for c in list(m.modules())[1:])]


def _width(m: nn.Module) -> int:
    if isinstance(m, nn.GroupNorm):
        return m.num_channels
    if hasattr(m, "normalized_shape"):  # LayerNorm, RMSNorm
        if len(m.normalized_shape) != 1:
            raise NormError(f"a {type(m).__name__} over {tuple(m.normalized_shape)} has no channel dimension to swap")
        return m.normalized_shape[0]
    for name in ("num_features", "num_channels"):
        if isinstance(getattr(m, name, None), int):
            return getattr(m, name)
    raise NormError(f"a {type(m).__name__} says nothing of its width (num_features, num_channels or "
                    f"normalized_shape): it cannot be swapped")


def _channels_last(m: nn.Module, shape: torch.Size) -> bool:
    """Where the module keeps its channels, from the input shape it saw (one forward pass).

    BatchNorm, GroupNorm and InstanceNorm: dim 1. LayerNorm over the last dim
    (ConvNeXt blocks, transformers): channels last, unless it is a LayerNorm2d
    variant that permutes an (N, C, H, W) input itself (torchvision, timm)."""
    if not _last_dim_norm(m) or len(shape) == 2:
        return False
    c = _width(m)
    return not (shape[1] == c and (shape[-1] != c or "2d" in type(m).__name__.lower()))


def _input_shapes(model: nn.Module, example: torch.Tensor) -> tuple[dict[str, torch.Size], set[str]]:
    """One forward pass: the input shape of each norm module, and the convs whose output a norm takes (as it is,
    or a view of it: torchvision's ConvNeXt permutes a conv's output to NHWC for its LayerNorm)."""
    shapes: dict[str, torch.Size] = {}
    made: dict[int, tuple[str, torch.Tensor]] = {}  # a conv's output's storage -> (its path, the tensor: kept alive)
    fed: set[str] = set()

    def record(path: str):
        def hook(module, args) -> None:
            x = args[0]
            shapes.setdefault(path, x.shape)
            path_out = made.get(x.untyped_storage().data_ptr())
            if path_out and path_out[1].numel() == x.numel():
                fed.add(path_out[0])
        return hook

    def conv_out(path: str):
        def hook(module, args, out) -> None:
            made[out.untyped_storage().data_ptr()] = (path, out)
        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in norm_modules(model)]
    hooks += [m.register_forward_hook(conv_out(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return shapes, fed


def _replacement(norm: Norm, m: nn.Module, shape: torch.Size, where: str) -> nn.Module:
    try:
        c, last = _width(m), _channels_last(m, shape)
    except NormError as e:
        raise NormError(f"{e} ({where})") from None
    dims = len(shape)  # (N, C) = 2, (N, C, L) or (N, L, C) = 3, images 4
    tokens = dims == 3 and last  # (N, T, C): a transformer's tokens, normalised as after a linear layer
    try:
        new = norm.build(c, conv=dims > 2 and not tokens) or ChannelBias(c)
    except NormError as e:
        raise NormError(f"{e} ({where})") from None
    _keep_settings(new, m)
    if tokens and isinstance(new, (nn.GroupNorm, nn.LayerNorm)):
        new = PerToken(new)  # each token's features
    else:  # BatchNorm1d on tokens moved to (N, C, T): statistics over the batch's tokens
        if dims == 3 and not tokens and not isinstance(new, ChannelBias):
            new = Sequence1d(new)  # a module for (N, C, H, W) on (N, C, L)
        new = ChannelsLast(new) if last else new
    after = dict(m.named_children())  # a norm with its activation inside (timm's norm_act layers)
    return NormThen(new, after) if after else new


def _keep_settings(new: nn.Module, old: nn.Module) -> None:
    """A norm replaced by one of its own kind keeps its author's settings and initial values (eps, momentum,
    the affine weights: timm zero-initialises a block's last BatchNorm): the swap changes kinds only."""
    batch = nn.modules.batchnorm._BatchNorm
    same = (isinstance(new, batch) and isinstance(old, batch)
            or type(new) is nn.GroupNorm and isinstance(old, nn.GroupNorm) and new.num_groups == old.num_groups
            or type(new) is nn.LayerNorm and isinstance(old, nn.LayerNorm)
            and new.normalized_shape == old.normalized_shape)
    if not same:
        return
    new.eps = old.eps
    if isinstance(new, batch):
        new.momentum = old.momentum
    mine = new.state_dict()  # (not the step count: training's, and Batch Renorm's warm-up counts from it)
    new.load_state_dict({k: v for k, v in old.state_dict().items() if k in mine and v.shape == mine[k].shape
                         and k != "num_batches_tracked"}, strict=False)


def swap_norms(model: nn.Module, name: str, example: torch.Tensor, what: str = "the model") -> nn.Module:
    """`model` with every normalisation module replaced by `name`'s (in place; returned).

    `example` is one small input batch: a forward pass tells where each norm
    keeps its channels. NormError (one line) when there is nothing to swap or
    a width does not fit the norm (group:G).
    """
    norm = get_norm(name)
    if norm.name == AS_BUILT:
        return model
    if foreign := foreign_norms(model):
        path, kind = foreign[0]
        raise NormError(f"{what}: {kind} at {path}" + (f" and {len(foreign) - 1} more" if len(foreign) > 1 else "")
                        + f" cannot be swapped for {name} (swapped: BatchNorm, GroupNorm, InstanceNorm, LayerNorm, "
                        f"RMSNorm, their subclasses, norms with a normalized_shape); study the model as-built")
    found = norm_modules(model)
    if not found and norm.name == "none":
        return model  # a model built without norms is `none` as it is
    if not found:
        raise NormError(f"{what} has no normalisation layer to swap for {name} (it has no normalisation: it is "
                        f"`none` as built)")
    shapes, fed = _input_shapes(model, example)
    for path, m in found:
        if path not in shapes:
            continue  # never called in a forward pass: leave it (check_norm_kind says so)
        _replace(model, path, _replacement(norm, m, shapes[path], f"{what}: {path}"))
    if norm.conv_type is not nn.Conv2d:  # weight standardisation: each conv a norm takes the output of (Qiao et
        # al.; not a squeeze-excitation gate), weights kept
        for path, conv in [(p, c) for p, c in model.named_modules() if type(c) is nn.Conv2d and p in fed]:
            _replace(model, path, _as_conv_type(conv, norm.conv_type))
    check_norm_kind(model, norm.name, what)
    return model


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path), attr, new)


def _as_conv_type(conv: nn.Conv2d, kind: type) -> nn.Conv2d:
    new = kind(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
               conv.groups, conv.bias is not None, conv.padding_mode)
    new.load_state_dict(conv.state_dict())
    return new


def check_norm_kind(model: nn.Module, name: str, what: str = "the model") -> None:
    """Every normalisation module of `model` is one that `name` builds (none: there are none)."""
    norm = get_norm(name)
    if norm.name == AS_BUILT:
        return
    wrong = [(p, type(m).__name__) for p, m in norm_modules(model) if type(m) not in norm.kinds]
    if wrong:
        path, kind = wrong[0]
        raise NormError(f"{what} still has a {kind} at {path} after the swap to {name} "
                        f"({len(wrong)} module(s) of another kind)")


