"""Normalisations: one table, and `swap_norms` for any model.

Every fact about a normalisation lives in its `Norm` entry: the name a user
types, the model_id tag, the short and long labels of tables and legends, the
colour of every figure, how it is built after a conv (N, C, H, W) or a linear
layer (N, C) of a given width, and whether the layer before it keeps a bias.
Results, figures, findings, the trainer and the model code read this table;
adding a normalisation is one entry here plus its tests, and its layer in
bnrep.norm_layers where torch has none (as timm's `layers/create_norm.py` does
with `_NORM_MAP`, its layers in modules of their own).

    batch      BatchNorm2d after convs, BatchNorm1d after hidden linear layers (the paper's BN)
    group      GroupNorm with 32 groups where 32 divides C, else the largest divisor of C below 32
    group:G    GroupNorm with G groups (Lubana et al. 2021: the group size matters); G must divide
               every width; group:1 normalises (C, H, W) per sample
    layer      GroupNorm(1, C) after convs, LayerNorm(C) after linear layers
    instance   GroupNorm(C, C) (= InstanceNorm2d with affine parameters) after convs;
               LayerNorm(C) after linear layers, where one value per channel has nothing to normalise
    ghost:B    BatchNorm whose training statistics come from virtual batches of B samples (Hoffer
               et al. 2017, "Train longer, generalize better"); running statistics updated per
               virtual batch, eval mode as BatchNorm
    renorm:W   Batch Renormalization (Ioffe 2017): BatchNorm whose training output is corrected toward the
               running statistics by r and d (constants to the gradient), clipped to |log r| <= log r_max
               and |d| <= d_max; r_max and d_max grow linearly from 1 and 0 (BatchNorm) to 3 and 5 over
               the first W training batches; eval mode as BatchNorm
    ws+group   weight standardisation of every conv (each filter mean 0, std 1 over its fan-in in
               the forward pass; Qiao et al. 2019) followed by `group`'s GroupNorm
    none       no norm module; the layer before keeps its bias (the paper's no-BN)
    as-built   a model's own normalisation, untouched (models a researcher brings)

`swap_norms(model, norm, example)` replaces every normalisation module of any model
(BatchNorm, GroupNorm, LayerNorm, the channels-last LayerNorm of ConvNeXt
blocks and the LayerNorm2d variants, InstanceNorm) by `norm`'s module at the
same width, and for `none` by a per-channel bias (`ChannelBias`, the function
class of the conv bias the norm made redundant). It finds where each module
keeps its channels from one forward pass, and proves afterwards that no
module of another kind is left (`check_norm_kind`). A module named as a norm that
it cannot replace (`foreign_norms`: timm's EvoNorm) is refused, not kept.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from bnrep.norm_layers import BatchRenorm1d, BatchRenorm2d, GhostBatchNorm1d, GhostBatchNorm2d, WSConv2d

GN_GROUPS = 32  # Wu & He 2018's default group count
AS_BUILT = "as-built"
REF = "none"  # the reference every claim compares against


class NormError(ValueError):
    """A normalisation that cannot be built or swapped; the message is one line."""


def group_count(channels: int, groups: int = GN_GROUPS) -> int:
    """`groups` if it divides `channels`, else the largest divisor of `channels` below it."""
    return max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)


def _exact_groups(groups: int) -> Callable[[int], nn.Module]:
    def build(width: int) -> nn.Module:
        if width % groups:
            raise NormError(f"group:{groups}: {groups} groups do not divide a layer of width {width}")
        return nn.GroupNorm(groups, width)
    return build


@dataclass(frozen=True)
class Norm:
    name: str  # as a user types it: batch, group:8
    tag: str  # in model_id and part names: bn, gn8
    short: str  # Table 1 and compact legends: BN, GN8
    label: str  # figure legends and prose: BatchNorm
    color: str  # one colour in every figure
    conv: Callable[[int], nn.Module] | None  # width -> module after a conv; None: nothing
    linear: Callable[[int], nn.Module] | None  # width -> module after a hidden linear layer
    bias: bool  # the layer before keeps its bias (no norm shift to make it redundant)
    kinds: tuple[type, ...] = ()  # the module types it builds: after a swap, no other norm type is left
    conv_type: type = nn.Conv2d  # the conv it asks for before it (weight standardisation: WSConv2d)
    base: str = ""  # a condition (bnrep.axis): the normalisation it builds; "" for a normalisation itself
    overrides: tuple[tuple[str, object], ...] = ()  # a condition's training fields, (field, value) sorted
    starts_as: str = ""  # the normalisation whose network it is at initialisation, where not its own
    ramp: int = 0  # training batches before it is wholly itself (Batch Renorm's warm-up W); 0: from the first

    @property
    def batch_statistics(self) -> bool:
        """Whether it trains on each batch's statistics (BatchNorm and its kin): a batch of one image cannot train it."""
        return any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in self.kinds)

    @property
    def norm(self) -> str:
        """The normalisation this entry builds: its own name, or a condition's base."""
        return self.base or self.name

    def build(self, width: int, conv: bool) -> nn.Module | None:
        make = self.conv if conv else self.linear
        return make(width) if make is not None else None


# ==== the table (display order: none, the reference, last) ====
NORMS: dict[str, Norm] = {n.name: n for n in [
    Norm("batch", "bn", "BN", "BatchNorm", "tab:blue", nn.BatchNorm2d, nn.BatchNorm1d, bias=False,
         kinds=(nn.BatchNorm2d, nn.BatchNorm1d)),
    Norm("group", "gn", "GN", "GroupNorm", "tab:green", lambda c: nn.GroupNorm(group_count(c), c),
         lambda c: nn.GroupNorm(group_count(c), c), bias=False, kinds=(nn.GroupNorm,)),
    Norm("ws+group", "wsgn", "WSGN", "WS + GroupNorm", "tab:pink", lambda c: nn.GroupNorm(group_count(c), c),
         lambda c: nn.GroupNorm(group_count(c), c), bias=False, kinds=(nn.GroupNorm,), conv_type=WSConv2d),
    Norm("layer", "ln", "LN", "LayerNorm", "tab:purple", lambda c: nn.GroupNorm(1, c), nn.LayerNorm, bias=False,
         kinds=(nn.GroupNorm, nn.LayerNorm)),
    Norm("instance", "in", "IN", "InstanceNorm", "tab:brown", lambda c: nn.GroupNorm(c, c), nn.LayerNorm,
         bias=False, kinds=(nn.GroupNorm, nn.LayerNorm)),
    Norm(AS_BUILT, "asbuilt", "AB", "as built", "tab:gray", None, None, bias=True),
    Norm("none", "nobn", "NBN", "no norm", "tab:orange", None, None, bias=True),
]}
# Families with an argument, `name:arg`: family -> (what the argument is called, arg -> the entry).
# by log2(B) and log2(G): apart from each other and from the shades of batch and group conditions (bnrep.axis.SHADES)
GHOST_SHADES = ("turquoise", "lightsteelblue", "dodgerblue", "mediumblue", "darkcyan", "cornflowerblue")
RENORM_SHADES = ("firebrick", "salmon", "darkred", "indianred", "orangered", "rosybrown")
GROUP_SHADES = ("lightgreen", "mediumaquamarine", "tab:olive", "tab:cyan", "olivedrab", "springgreen")
FAMILIES: dict[str, tuple[str, Callable[[int], Norm]]] = {
    "ghost": ("B", lambda b: Norm(f"ghost:{b}", f"gbn{b}", f"GBN{b}", f"ghost BatchNorm ({b} per virtual batch)",
                            GHOST_SHADES[b.bit_length() % len(GHOST_SHADES)], lambda c: GhostBatchNorm2d(c, b),
                            lambda c: GhostBatchNorm1d(c, b), bias=False, kinds=(GhostBatchNorm2d, GhostBatchNorm1d),
                            starts_as="batch")),  # BatchNorm's parameters and statistics until it trains
    "renorm": ("W", lambda w: Norm(f"renorm:{w}", f"brn{w}", f"BRN{w}", f"Batch Renorm ({w}-batch warm-up)",
                                   RENORM_SHADES[w.bit_length() % len(RENORM_SHADES)], lambda c: BatchRenorm2d(c, w),
                                   lambda c: BatchRenorm1d(c, w), bias=False, kinds=(BatchRenorm2d, BatchRenorm1d),
                                   starts_as="batch", ramp=w)),  # BatchNorm's parameters and statistics until it trains
    "group": ("G", lambda g: Norm(f"group:{g}", f"gn{g}", f"GN{g}", f"GroupNorm ({g} group{'s' * (g != 1)})",
                            GROUP_SHADES[g.bit_length() % len(GROUP_SHADES)], _exact_groups(g),
                            _exact_groups(g), bias=False, kinds=(nn.GroupNorm,))),
}
NAMES = (*NORMS, *(f"{f}:{arg}" for f, (arg, _) in FAMILIES.items()))  # what help texts and errors list
FAMILY_SHADES = {"ghost": GHOST_SHADES, "renorm": RENORM_SHADES, "group": GROUP_SHADES}  # each member's, by its argument
# Members that share their argument's shade with an earlier member of the study that named them: the family's next
# free shade there (place_members), so that no two members of one study look alike (ghost:8 and ghost:12).
_PLACED: dict[str, str] = {}


def place_members(names) -> None:
    """Colour the family members among a study's conditions `names` apart from each other: in order of their
    argument, each keeps its argument's shade, or takes the family's first shade no earlier member took."""
    for family, shades in FAMILY_SHADES.items():
        members = sorted({n for n in names if n.partition(":")[0] == family and n.partition(":")[2].isdigit()},
                         key=lambda n: int(n.partition(":")[2]))
        used = set()
        for name in members:
            _PLACED.pop(name, None)
            own = get_norm(name).color
            color = own if own not in used else next((s for s in shades if s not in used), own)
            if color != own:
                _PLACED[name] = color
            used.add(color)

# Conditions (a normalisation plus training overrides, bnrep.axis) by tag, registered by the
# experiments that define them, so that every lookup below (tag, label, colour, order, the
# modules it builds) answers for a condition as for the normalisation it builds.
CONDITIONS: dict[str, Norm] = {}


def register(condition: Norm) -> None:
    CONDITIONS[condition.name] = condition


def get_norm(name: str) -> Norm:
    """The entry for `name` (`batch`, `group:8`, a registered condition's tag, ...); NormError (one
    line) for an unknown one."""
    if name in NORMS:
        return NORMS[name]
    if name in CONDITIONS:
        return CONDITIONS[name]
    family, _, arg = str(name).partition(":")
    if family in FAMILIES and arg:
        what, make = FAMILIES[family]
        if not arg.isdigit() or int(arg) < 1:
            raise NormError(f"{name}: {family}:{what} needs a whole number {what} >= 1{did_you_mean(name)}")
        entry = make(int(arg))
        return dataclasses.replace(entry, color=_PLACED[name]) if name in _PLACED else entry
    if family in FAMILIES:  # renorm, ghost: the argument left out
        what = FAMILIES[family][0]
        raise NormError(f"{name}: the norm needs its {what}, {family}:{what} (a whole number {what} >= 1)")
    raise NormError(f"unknown norm {name!r} (valid: {', '.join(NAMES)}){did_you_mean(str(name))}")


def did_you_mean(name: str) -> str:
    """'; did you mean ghost:4?' for a name a case, a space or a slip of the keys away from a norm's (Ghost:4,
    ghost: 4, ghots:4, batchh, WS+Group), or a norm's tag (bn, GN), else ''."""
    said = re.sub(r"\s+", "", name.lower())
    family, colon, arg = said.partition(":")
    if colon:
        near = difflib.get_close_matches(family, FAMILIES, n=1, cutoff=0.6)
        guess = f"{near[0]}:{arg}" if near and arg.isdigit() and int(arg) >= 1 else ""
    else:  # a norm's tag or short name (bn, GN) is its name's
        tags = {k.lower(): n.name for n in NORMS.values() for k in (n.tag, n.short)}
        near = [tags[said]] if said in tags else difflib.get_close_matches(said, [*NORMS, *FAMILIES], n=1, cutoff=0.6)
        guess = (f"{near[0]}:{FAMILIES[near[0]][0]}" if near[0] in FAMILIES else near[0]) if near else ""  # ghots: ghost:B
    return f"; did you mean {guess}?" if guess and guess != name else ""


def same_start(a: str, b: str) -> bool:
    """Whether models of conditions `a` and `b` are one network at initialisation, with the same weights at one
    seed: one normalisation (conditions that change the recipe only), or BatchNorm and a norm built on it
    (its entry's starts_as: ghost BatchNorm, Batch Renorm)."""
    first = [get_norm(n).starts_as or get_norm(n).norm for n in (a, b)]
    return first[0] == first[1]


def sort_key(name: str) -> tuple:
    """Display order: the table's, a family's members by their argument, a condition after the
    normalisation it builds (by its overrides' values, then its tag), unknown names last."""
    if name in CONDITIONS:
        c = CONDITIONS[name]
        values = tuple((k, v if isinstance(v, (int, float)) else math.inf, str(v)) for k, v in c.overrides)
        return (*sort_key(c.base)[:2], 1, values, name)
    order = list(NORMS)
    family, _, arg = str(name).partition(":")
    if family in NORMS:
        return (order.index(family), int(arg) if arg.isdigit() else -1, 0, (), "")
    if family in FAMILIES:  # a family without a plain entry (ghost:B, renorm:W): after BatchNorm, in the table's order
        return (order.index("batch") + (1 + list(FAMILIES).index(family)) / (1 + len(FAMILIES)),
                int(arg) if arg.isdigit() else -1, 0, (), "")
    return (len(order), 0, 0, (), str(name))


def ordered(names) -> list[str]:
    return sorted(set(names), key=sort_key)


class NormField(dict):
    """A read-only view of one field of the table: SHORT["group:8"] == "GN8"; unknown -> KeyError."""

    def __init__(self, field: str):
        super().__init__()
        self.field = field

    def __missing__(self, name: str):
        try:
            return getattr(get_norm(name), self.field)
        except NormError:
            raise KeyError(name) from None

    def __contains__(self, name) -> bool:
        try:
            get_norm(name)
            return True
        except (NormError, TypeError):
            return False

    def get(self, name, default=None):
        return self[name] if name in self else default


TAGS, SHORT, LABELS, COLORS = (NormField(f) for f in ("tag", "short", "label", "color"))


# ==== swapping the normalisation of any model ====
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


