"""Normalisations: one table of them (swapping them into any model: bnrep.swap).

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

How any model's normalisation modules are replaced by an entry's: `bnrep.swap`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass
from typing import Callable

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
