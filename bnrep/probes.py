"""Probes: every activation of any model, found by running it once, named by module path.

A probe is one call of an activation: the output of an activation module
(ReLU, ReLU6, LeakyReLU, GELU, SiLU, Hardswish, ... and timm's own classes of
those names), or of an activation applied as a function in a `forward`
(`F.relu(x)`, `x.relu()`, `torch.relu_`). `tap` sees both in one forward
pass: hooks on the modules, and a TorchFunctionMode for the functions, so no
tracing is needed and models with data-dependent control flow work too.

Names (the `layer` column of every table):

    layer2.0.relu      an activation module, by its path in the model
    layer1.0.relu:2    the 2nd call of a module called more than once per forward
                       (torchvision's BasicBlock calls self.relu twice): one probe per call
    block1.relu        F.relu called inside the module `block1` (`relu` at the top level)

Probes are numbered in forward order (`index`, 1-based, the paper's layer
index), and the index is what identifies a probe during extraction: the same
model under another norm may have other module paths (a built-in net with no
norm module) but calls its activations in the same order. The built-in nets
keep their names (conv1..fc1, stem, s1b1.relu1, ...) through their `probe_names`.

Each output is handed to the callback when it is made, before any later
in-place operation can overwrite it: an in-place activation is measured as it
was. Only activations of the batch are probes: an activation applied to a
parameter (a ReZero gate `tanh(alpha)`, a `softplus` scale) or to a tensor
whose first axis is not the batch's is not a representation of the images.
`--probes` chooses among them (`select_probes`).
"""

from __future__ import annotations

import collections
import contextlib
import fnmatch
import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

# Activation modules by class name, lower case: every activation torch.nn defines, timm's of other names
# (and timm's memory-efficient `...Me` twins, `is_activation`), MetaFormer's StarReLU and SquaredReLU.
# Gates (Sigmoid, Hardsigmoid) and normalisers over a whole axis (Softmax and kin) are not hidden representations
# and are not probed.
ACTIVATION_MODULES = {"relu", "relu6", "leakyrelu", "prelu", "rrelu", "elu", "celu", "selu", "gelu", "geglu",
                      "gelutanh", "quickgelu", "silu", "swish", "mish", "hardswish", "hardmish", "softplus", "tanh",
                      "hardtanh", "softsign", "tanhshrink", "hardshrink", "softshrink", "threshold", "logsigmoid",
                      "glu", "starrelu", "squaredrelu"}
# Functional activations -> the activation's name in the tables.
ACTIVATION_FUNCTIONS = {
    F.relu: "ReLU", F.relu_: "ReLU", torch.relu: "ReLU", torch.relu_: "ReLU", torch.Tensor.relu: "ReLU",
    torch.Tensor.relu_: "ReLU", F.relu6: "ReLU6", F.leaky_relu: "LeakyReLU", F.leaky_relu_: "LeakyReLU",
    F.gelu: "GELU", F.silu: "SiLU", F.mish: "Mish", F.hardswish: "Hardswish", F.elu: "ELU", F.elu_: "ELU",
    F.selu: "SELU", F.selu_: "SELU", F.celu: "CELU", F.celu_: "CELU", F.prelu: "PReLU", F.rrelu: "RReLU",
    F.rrelu_: "RReLU", F.softplus: "Softplus", torch.tanh: "Tanh", torch.tanh_: "Tanh", torch.Tensor.tanh: "Tanh",
    torch.Tensor.tanh_: "Tanh", F.hardtanh: "Hardtanh", F.hardtanh_: "Hardtanh", F.softsign: "Softsign",
    F.tanhshrink: "Tanhshrink", F.hardshrink: "Hardshrink", F.softshrink: "Softshrink", F.threshold: "Threshold",
    F.threshold_: "Threshold", F.logsigmoid: "LogSigmoid", F.glu: "GLU",
}
RECTIFIERS = {"ReLU", "ReLU6", "SquaredReLU"}  # exact zeros below 0: what paper eq. 3-4 count
# The last of these before an activation, among those whose output has as many axes as the
# activation's, says which axis holds the channels: a convolution or a channel norm, axis 1 (NCHW,
# NCL); a linear layer, the last (ConvNeXt's NHWC blocks, a transformer's (N, T, C) tokens). A linear
# layer on pooled (N, C) features (a squeeze-excitation gate) says nothing about an NCHW map. LayerNorm
# says nothing: timm's LayerNorm2d permutes an NCHW map to NHWC and back around it.
LAYOUT_FUNCTIONS = {**dict.fromkeys((F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
                                     F.conv_transpose3d, F.batch_norm, F.group_norm, F.instance_norm), False),
                    F.linear: True}  # function -> its output has the channels last


class ProbeError(ValueError):
    """A probe rule that selects nothing, or a model whose probes changed; one line."""


@dataclass(frozen=True)
class Probe:
    name: str  # "layer1.0.relu:2", or a built-in net's name ("conv3")
    index: int  # 1-based, forward order over all of the model's activations: the probe's identity
    activation: str  # "ReLU", "GELU", ...
    path: str  # the module path (of the module calling the function, for a functional activation)
    channels_last: bool = False  # (N, H, W, C) or (N, T, C) output
    channels: int = 0  # C of its output (0: not known)
    gate: bool = False  # inside a squeeze-excitation module: the gate's bottleneck (measured when named only)

    @property
    def rectifier(self) -> bool:
        """Exact zeros mean something (sparsity, paper eq. 3-4) only after a rectifier."""
        return self.activation in RECTIFIERS


def is_activation(m: nn.Module) -> bool:
    name = type(m).__name__.lower()
    return name in ACTIVATION_MODULES or (name.endswith("me") and name[:-2] in ACTIVATION_MODULES)


class _Functions(TorchFunctionMode):
    """Reports activation functions called outside activation modules."""

    def __init__(self, tap: "_Tap"):
        super().__init__()
        self.tap = tap

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = ACTIVATION_FUNCTIONS.get(func)
        if name is not None and (self.tap.inside or not args or not self.tap.batched(args[0])):
            name = None  # inside an activation module, or not an activation of the batch
        if name is not None and self.tap.pre is not None:
            self.tap.pre(self.tap.index + 1, args[0])  # before an in-place function overwrites it
        out = func(*args, **(kwargs or {}))
        last = LAYOUT_FUNCTIONS.get(func)
        if last is not None and isinstance(out, torch.Tensor) and out.dim() >= 2:
            self.tap.layouts[out.dim()] = (last, tuple(out.shape))
        if name is not None:
            where = self.tap.stack[-1][0] if self.tap.stack else ""
            self.tap.report(f"{where}.{func.__name__.rstrip('_')}" if where else func.__name__.rstrip("_"),
                            name, out)
        return out


class _Tap:
    def __init__(self, model: nn.Module, fn: Callable[[int, str, str, torch.Tensor], None],
                 pre: Callable[[int, torch.Tensor], None] | None = None):
        self.model, self.fn, self.pre = model, fn, pre
        self.stack: list[tuple[str, bool]] = []  # (module path, a probe call) of the modules being run
        self.inside = 0  # depth inside activation modules (their own F.relu is not a second probe)
        self.index = 0  # activations called so far in this forward pass
        self.batch: int | None = None  # the batch size of this forward pass
        self.layouts: dict[int, tuple[bool, tuple]] = {}  # number of axes -> (channels last, its shape), as the last
        # LAYOUT_FUNCTIONS output of as many axes made

    def batched(self, x) -> bool:
        """An activation's input or output is a representation of the batch: (batch, C, ...)."""
        return isinstance(x, torch.Tensor) and x.dim() >= 2 and self.batch in (None, x.shape[0])

    def report(self, path: str, activation: str, out: torch.Tensor) -> None:
        self.index += 1
        self.fn(self.index, path, activation, out)

    def hooks(self) -> list:
        handles = []
        for path, m in self.model.named_modules():
            act = is_activation(m)
            handles.append(m.register_forward_pre_hook(lambda mod, a, p=path, act=act: self._enter(p, act, a)))
            handles.append(m.register_forward_hook(lambda mod, a, out, p=path, act=act: self._leave(p, act, mod, out)))
        return handles

    def _enter(self, path: str, act: bool, args: tuple) -> None:
        if not path:  # the model itself: a new forward pass
            self.stack, self.inside, self.index, self.layouts = [], 0, 0, {}
            first = args[0] if args else None
            self.batch = first.shape[0] if isinstance(first, torch.Tensor) and first.dim() else None
        probe = act and not self.inside and bool(args) and self.batched(args[0])
        if probe and self.pre is not None:
            self.pre(self.index + 1, args[0])  # the pre-activation, before an in-place module overwrites it
        self.stack.append((path, probe))
        self.inside += act

    def _leave(self, path: str, act: bool, mod: nn.Module, out) -> None:
        _, probe = self.stack.pop()
        self.inside -= act
        if probe:
            self.report(path, type(mod).__name__, out)


@contextlib.contextmanager
def tap(model: nn.Module, fn: Callable[[int, str, str, torch.Tensor], None],
        pre: Callable[[int, torch.Tensor], None] | None = None):
    """While open, every forward pass of `model` calls fn(index, path, activation, output) for each
    activation call (index: 1-based, in forward order), and pre(index, input) just before the call
    (the pre-activation, as it is before an in-place activation overwrites it). Yields the tap: its
    `layouts` say, per number of axes, the layout of the last LAYOUT_FUNCTIONS output of this pass."""
    t = _Tap(model, fn, pre)
    handles = t.hooks()
    try:
        with _Functions(t):
            yield t
    finally:
        for h in handles:
            h.remove()


def _is_channels_last(x: torch.Tensor, made: tuple[bool, tuple] | None) -> bool:
    """(N, H, W, C) or (N, T, C), as the layer that made it says (made: its layout and output shape, from
    LAYOUT_FUNCTIONS), unless `x` is that output permuted with its channels moved to the other end (a linear layer
    on NHWC, then back to NCHW); when no such layer ran before it, a 3-D output or square maps with C apart."""
    if x.dim() not in (3, 4):
        return False
    if made is not None:
        last, shape = made
        c = shape[-1] if last else shape[1]
        said, other = (x.shape[-1], x.shape[1]) if last else (x.shape[1], x.shape[-1])
        permuted = tuple(x.shape) != shape and sorted(x.shape) == sorted(shape)
        return not last if permuted and said != c and other == c else last
    return x.dim() == 3 or x.shape[1] == x.shape[2] != x.shape[3]


@torch.no_grad()
def find_probes(model: nn.Module, example: torch.Tensor) -> list[Probe]:
    """Every activation call of one forward pass of `example` (eval mode), in forward order."""
    seen: list[tuple[str, str, bool, int, bool]] = []  # (path, activation, channels last, channels, gate) per call

    def record(index, path, act, out):
        last = _is_channels_last(out, t.layouts.get(out.dim()))
        seen.append((path, act, last, out.shape[-1] if last else out.shape[1], in_gate(model, path, out, last)))

    was_training = model.training
    with tap(model.eval(), record) as t:
        model(example)
    model.train(was_training)
    counts, calls = collections.Counter(path for path, *_ in seen), collections.Counter()
    names = []
    for path, *_ in seen:  # a module called more than once: one probe per call, path:1, path:2
        calls[path] += 1
        names.append(path if counts[path] == 1 else f"{path}:{calls[path]}")
    given = getattr(model, "probe_names", None)  # the built-in nets' names
    if given is not None and len(given) == len(names):
        names = list(given)
    return [Probe(n, i, act, path, last, c, gate)
            for i, (n, (path, act, last, c, gate)) in enumerate(zip(names, seen), start=1)]


# a squeeze-excitation module by its class name: torchvision's SqueezeExcitation, timm's SqueezeExcite, SEModule and
# EffectiveSEModule, the SEBlock / SELayer of a model's own
GATE_MODULE = re.compile(r"^(\w*SqueezeExcit\w*|\w*SE(Module|Block|Layer)|SE)$")


def in_gate(model: nn.Module, path: str, out: torch.Tensor, last: bool) -> bool:
    """Whether the activation at `path` (its output `out`, channels `last` or not) runs inside a squeeze-excitation
    module on pooled channel descriptors, (N, C) or (N, C, 1, 1): it computes the gate that scales a block's maps,
    not a representation of the images."""
    spatial = out.shape[1:-1] if last else out.shape[2:]
    if any(n != 1 for n in spatial):
        return False
    parts = path.split(".") if path else []
    for i in range(len(parts)):
        try:
            m = model.get_submodule(".".join(parts[:i + 1]))
        except AttributeError:
            return False
        if GATE_MODULE.search(type(m).__name__) and not is_activation(m):
            return True
    return False


@torch.no_grad()
def layers_fed(model: nn.Module, example: torch.Tensor, modules: dict[str, nn.Module]) -> dict[str, str]:
    """path -> the layer (a probe, as the tables name it) each of `modules` feeds: the first activation called
    after it in a forward pass of `example` (eval mode); 'the output' after the last one."""
    probes = [p.name for p in find_probes(model, example)]
    calls: list[tuple[str, object]] = []  # in forward order: ("module", path) after it, ("probe", index)
    handles = [m.register_forward_hook(lambda mod, a, out, path=path: calls.append(("module", path)))
               for path, m in modules.items()]
    try:
        with tap(model.eval(), lambda index, *_: calls.append(("probe", index))):
            model(example)
    finally:
        for h in handles:
            h.remove()
    fed, waiting = {}, []
    for what, x in calls:
        if what == "module":
            waiting += [x] if x not in fed and x not in waiting else []
        else:
            fed.update({path: probes[x - 1] for path in waiting})
            waiting = []
    return {path: fed.get(path, "the output") for path in modules}


def select_probes(probes: list[Probe], rule: str = "all", what: str = "the model") -> list[Probe]:
    """`all`; comma-separated globs on names (`layer*.relu*`); or `type:ReLU,GELU` (activation types). `all` and
    `type:` leave out the activations inside squeeze-excitation gates (Probe.gate); a glob that names one takes it."""
    rule = (rule or "all").strip()
    if not probes:
        raise ProbeError(f"{what} calls no activation bnrep knows (modules or functions named ReLU, ReLU6, "
                         f"LeakyReLU, GELU, SiLU, Hardswish, Mish, ELU, Tanh, ...): nothing to measure")
    if rule == "all":
        chosen = [p for p in probes if not p.gate]
    elif rule.startswith("type:"):
        kinds = {k.strip().lower() for k in rule[5:].split(",") if k.strip()}
        chosen = [p for p in probes if p.activation.lower() in kinds and not p.gate]
    else:
        globs = [g.strip() for g in rule.split(",") if g.strip()]
        chosen = [p for p in probes if any(fnmatch.fnmatchcase(p.name, g) for g in globs)]
    if not chosen:
        kinds = sorted({p.activation for p in probes})
        raise ProbeError(f"--probes {rule!r} matches none of the {len(probes)} probes of {what} "
                         f"(names like {probes[0].name if probes else '-'}; types {', '.join(kinds) or '-'})")
    return chosen
