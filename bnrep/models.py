"""Models: one spec string -> an nn.Module, for any normalisation.

A model is named by a spec (the experiment's `model`, the `--model` flag):

    cnn, vgg16, resnet18        the built-in nets below (the paper's StandardCNN and VGG16, CIFAR ResNet-18)
    torchvision:NAME            torchvision.models.get_model(NAME, weights=None, num_classes=...)
    timm:NAME                   timm.create_model(NAME, pretrained=False, num_classes=..., in_chans=...)
                                (pip install "bnrep[timm]")
    package.module:function     a researcher's own code: function(num_classes, in_channels) -> nn.Module

`build_model(spec, norm, in_channels, num_classes, size)` is the one place a model is
made (training, loading, analysis, status). The built-in nets take the norm
as they are built; any other model is built as its authors wrote it and its
normalisation modules are swapped (`bnrep.swap.swap_norms`), unless the norm
is `as-built`. The data's channel and class counts reach every builder
(torchvision's models take 3 channels: their first conv is rebuilt for others).
`check_model` builds every norm of a study at the data's shape, runs one
forward pass and finds the probes, so a model that cannot work is refused
with one line before any work starts.

The built-in nets themselves: bnrep.nets.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import nn

from bnrep.datasets import one_line
from bnrep.nets import resnet18, standard_cnn, vgg16
from bnrep.norms import AS_BUILT, NormError, get_norm
from bnrep.swap import norm_modules, swap_norms

class ModelError(ValueError):
    """A spec that names no model, or a model that cannot take the data; the message is one line."""


# ==== specs: the one table of model sources ====
class Builtin(NamedTuple):
    build: Callable[[str, int, int], nn.Module]  # (norm, in_channels, num_classes) -> model
    label: str  # in Table 1 and figure titles, as the paper writes it


BUILTIN = {"cnn": Builtin(standard_cnn, "CNN"), "vgg16": Builtin(vgg16, "VGG-16"),
           "resnet18": Builtin(resnet18, "ResNet-18")}
SOURCES = ("torchvision", "timm")  # `source:NAME`; anything else with a colon is `package.module:function`
TRY_SIZES = (8, 16, 28, 32, 64, 96, 128, 224)  # image sizes tried to tell a user what a model needs


@dataclass(frozen=True)
class Spec:
    text: str  # as given: "torchvision:resnet18"
    source: str  # builtin | torchvision | timm | module
    name: str  # "resnet18", or "mylab.nets:wide_cnn" for a module


def parse_spec(text: str) -> Spec:
    """The spec's parts, from its text alone (nothing imported); ModelError for a malformed one."""
    text = str(text).strip()
    if text in BUILTIN:
        return Spec(text, "builtin", text)
    source, _, name = text.partition(":")
    if source in SOURCES and name:
        return Spec(text, source, name)
    if source.endswith(".py") and name.isidentifier():  # mynets.py:tiny, ./lab/mynets.py:tiny: a file, not a module
        module = os.path.basename(source)[:-3]
        where = os.path.dirname(source)
        raise ModelError(f"model {text!r} names a file; a model in your own code is module:function: give "
                         f"{module}:{name}" + (f", run from {where} or with it on PYTHONPATH" if where else ""))
    if name and re.fullmatch(r"[A-Za-z_][\w.]*", source) and name.isidentifier():
        return Spec(text, "module", text)
    raise ModelError(f"unknown model {text!r} (valid: {', '.join(BUILTIN)}, torchvision:NAME, timm:NAME, "
                     f"or package.module:function){_builtin_or_torchvision(text)}")


def _builtin_or_torchvision(text: str) -> str:
    """'; did you mean ...?' for an unknown model name: torchvision's of that name, else a close built-in."""
    import torchvision  # (only on this error's path)

    return f"; did you mean torchvision:{text}?" if text in torchvision.models.list_models() else _did_you_mean(
        text, list(BUILTIN))


def _did_you_mean(name: str, names: list[str], prefix: str = "") -> str:
    """'; did you mean PREFIX+CLOSEST?' for a mistyped name, else ''."""
    import difflib

    close = difflib.get_close_matches(name, names, n=1)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


def model_label(spec: str) -> str:
    """How tables and figures name the model: the paper's names for the built-in nets, else the spec."""
    return BUILTIN[spec].label if spec in BUILTIN else spec


def model_slug(spec: str) -> str:
    """The spec as it appears in model_id and file names: safe on local disks and S3 (no ':' or '/')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", parse_spec(spec).text).strip("-")


def model_id(spec: str, norm: str, seed: int) -> str:
    """`<model>-<norm tag>-s<seed>`: cnn-bn-s0, torchvision-resnet18-gn8-s1 (the paper's keep their old ids)."""
    return f"{model_slug(spec)}-{get_norm(norm).tag}-s{seed}"


AUX_HEADS = ("googlenet", "inception_v3")  # torchvision models with auxiliary classifiers (trained: a tuple out)


def _torchvision(name: str, in_channels: int, num_classes: int) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        raise ModelError(f"unknown torchvision model {name!r} (torchvision.models.list_models() has them)"
                         + _did_you_mean(name, torchvision.models.list_models(), "torchvision:"))
    extra = {"aux_logits": False, "init_weights": True} if name in AUX_HEADS else {}  # logits alone, in training too
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)
    return _first_conv_takes(model, in_channels) if in_channels != 3 else model


def _first_conv_takes(model: nn.Module, in_channels: int) -> nn.Module:
    """torchvision's models are built for RGB: rebuild the first conv for `in_channels`."""
    path, conv = next((p, m) for p, m in model.named_modules() if isinstance(m, nn.Conv2d))
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups if conv.groups == 1 else in_channels, conv.bias is not None, conv.padding_mode)
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)
    return model


def _timm(name: str, in_channels: int, num_classes: int) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ModelError(f"timm:{name} needs timm: pip install \"bnrep[timm]\"") from None
    if not timm.is_model(name):
        raise ModelError(f"unknown timm model {name!r} (timm.list_models() has them)"
                         + _did_you_mean(name, timm.list_models(), "timm:"))
    base, tag = timm.models.split_model_name_tag(name)
    if tag:  # timm's pretrained-weights tag: bnrep never loads pretrained weights
        raise ModelError(f"timm:{name} names pretrained weights ({tag}), but bnrep trains from random initial "
                         f"weights: give timm:{base}; to measure pretrained weights, save them with torch.save("
                         f"model.state_dict()) and bnrep import them")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def _is_prefix(name: str, module: str) -> bool:
    """Whether `name` is `module` or one of its parent packages."""
    return module == name or module.startswith(name + ".")


def _import_user_module(module: str):
    """importlib.import_module, also from the current folder as `python -m bnrep` finds it (first on
    sys.path there): the `bnrep` command's sys.path has its script's folder instead. The current folder
    then comes last, so it never hides an installed package (a folder named bnrep, a results folder)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        here = os.getcwd()
        if not (e.name and _is_prefix(e.name, module)) or here in sys.path or "" in sys.path:
            raise
        sys.path.append(here)
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as again:
            if again.name and _is_prefix(again.name, module):  # not here either: as it was
                sys.path.remove(here)
            raise


def _user(text: str, in_channels: int, num_classes: int) -> nn.Module:
    module, _, fn = text.partition(":")
    see = f"(python -c 'import {module}; {module}.{fn}({num_classes}, {in_channels})' shows where)"
    import difflib

    try:
        mod = _import_user_module(module)
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and e.name and not _is_prefix(e.name, module):  # found; it imports
            raise ModelError(f"importing {module} for model {text} failed: it needs {e.name}, which is not "  # another
                             f"installed (python -c 'import {module}' shows where)") from None
        source = difflib.get_close_matches(module, SOURCES, n=1, cutoff=0.8)  # torchvison:resnet18
        raise ModelError(f"cannot import {module} for model {text} ({type(e).__name__}: {one_line(e)}); "
                         + (f"did you mean {source[0]}:{fn}?" if source else
                            "install it or put its folder on PYTHONPATH")) from None
    except Exception as e:  # noqa: BLE001 - the user's module fails as it is imported (SyntaxError, NameError, ...)
        raise ModelError(f"importing {module} for model {text} failed: {type(e).__name__}: {one_line(e)} "
                         f"(python -c 'import {module}' shows where)") from None
    build = getattr(mod, fn, None)
    if build is None:
        close = difflib.get_close_matches(fn, [n for n in dir(mod) if callable(getattr(mod, n, None))], n=1)
        where = getattr(mod, "__file__", None) or ", ".join(getattr(mod, "__path__", [])) or "a namespace package"
        raise ModelError(f"{module} (imported from {where}) has no {fn!r} for model {text}"
                         + (f"; did you mean {module}:{close[0]}?" if close else ""))
    try:
        model = build(num_classes, in_channels)
    except Exception as e:  # noqa: BLE001 - any error of the user's builder is one line
        raise ModelError(f"{text}({num_classes}, {in_channels}) failed: {type(e).__name__}: {one_line(e)} (bnrep "
                         f"calls it with the class count and the image channels, in that order) {see}") from None
    if not isinstance(model, nn.Module):
        kind = type(model).__name__
        raise ModelError(f"{text}(num_classes, in_channels) returned {'an' if kind[0] in 'aeiouAEIOU' else 'a'} "
                         f"{kind}, not an nn.Module")
    return model


def build_model(spec: str, norm: str, in_channels: int, num_classes: int = 10,
                size: tuple[int, int] = (32, 32)) -> nn.Module:
    """The model `spec` under `norm`, for `in_channels` x `size` images and `num_classes` classes.

    Weights come from torch's RNG as the builder draws them: seed it first for
    reproducible weights. NormError or ModelError (one line) when it cannot be built."""
    s, n = parse_spec(spec), get_norm(norm)
    if s.source == "builtin":
        if n.name == AS_BUILT:
            raise NormError(f"{spec} is built for a norm: as-built is for models that bring their own "
                            f"(try batch)")
        return BUILTIN[s.text].build(n.name, in_channels, num_classes)
    model = _from_elsewhere(spec, in_channels, num_classes)
    try:
        return swap_norms(model, n.name, torch.zeros(2, in_channels, *size), spec)
    except NormError as e:
        if "no normalisation layer" in str(e) and s.source == "torchvision" and f"{s.name}_bn" in _torchvision_names():
            raise NormError(f"{e}; use its BatchNorm variant {spec}_bn") from None
        if "no normalisation layer" in str(e) and s.source == "module":  # the researcher's own: what to change
            raise NormError(f"{e}; put a norm layer (nn.BatchNorm2d, which bnrep swaps for each norm) where each "
                            f"should go in it, or study it as it is with --norms none") from None
        raise
    except Exception as e:  # noqa: BLE001 - the forward pass that finds the norms' shapes failed
        raise _cannot_take(spec, norm, in_channels, size, num_classes, e) from None


def seeded_model(spec: str, norm: str, seed: int, in_channels: int, num_classes: int,
                 size: tuple[int, int]) -> nn.Module:
    """The model training starts from at `seed`: torch's RNG seeded, then built (its initial weights
    depend on the seed alone)."""
    torch.manual_seed(seed)
    return build_model(spec, norm, in_channels, num_classes, size)


def _from_elsewhere(spec: str, in_channels: int, num_classes: int) -> nn.Module:
    """A torchvision, timm or user model as its builder makes it."""
    s = parse_spec(spec)
    return {"torchvision": _torchvision, "timm": _timm, "module": _user}[s.source](s.name, in_channels, num_classes)


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models()


def check_model(spec: str, norms, shape: tuple[int, int, int], num_classes: int, training: bool = True) -> nn.Module:
    """Build `spec` under every norm and run one forward pass of a (2, C, H, W) batch;
    returns the model of the first norm. One line (ModelError, NormError) for any failure. `training`: bnrep
    will train it (a norm of two values per group is refused then; models already trained are analysed)."""
    C, H, W = shape
    first, built = None, {}
    for norm in norms:
        model = build_model(spec, norm, C, num_classes, (H, W))
        check_forward(model, spec, norm, shape, num_classes, backward=True, refuse=FEW_PER_GROUP if training else ONE)
        twin = built.setdefault((repr(model), get_norm(norm).overrides), norm)  # (the modules, their settings)
        if twin != norm and training:
            kinds = sorted({type(m).__name__ for _, m in norm_modules(model)})
            raise ModelError(f"{spec}: conditions {twin} and {norm} build the same network "
                             f"({', '.join(kinds) or 'no normalisation layer'}, the same modules and settings) and "
                             f"train with the same recipe: they would train the same models; list one of them")
        first = first or model
    return first


# what a GroupNorm / LayerNorm does with so few values per group: standardised, one value is always 0 and two are
# always -1 and +1, so its output is its bias, or its bias plus or minus its weight: one bit per group
FEW_PER_GROUP = {1: ("one value", "its output is its bias whatever the image, and the model cannot learn"),
                 2: ("two values", "each group's output is its bias plus or minus its weight, one bit, through "
                                   "which no gradient reaches the layers before it")}
ONE = {1: FEW_PER_GROUP[1]}  # what refuses a model already trained too: it outputs the same whatever the image


def _per_group(m: nn.Module, x: torch.Tensor) -> int:
    """How many values a GroupNorm (of a sample's) or LayerNorm (of its normalized_shape) standardises together."""
    return math.prod(m.normalized_shape) if isinstance(m, nn.LayerNorm) else x[0].numel() // m.num_groups


def check_forward(model: nn.Module, spec: str, norm: str, shape: tuple[int, int, int], num_classes: int,
                  backward: bool = False, refuse: dict = ONE) -> None:
    """One forward pass of a (2, C, H, W) batch in eval mode and one in training mode (on a copy; with its
    backward pass if `backward`, for a model bnrep trains): logits of shape (2, num_classes) both times, or
    one line (ModelError); a GroupNorm / LayerNorm of as few values per group as `refuse` names is refused.
    Leaves `model` in eval mode."""
    C, H, W = shape
    model.eval()
    few = []  # GroupNorm / LayerNorm that normalise so few values per group (FEW_PER_GROUP)
    hooks = [m.register_forward_pre_hook(lambda m, a, p=p: few.append((p, tuple(a[0].shape), per))
                                         if (per := _per_group(m, a[0])) in refuse else None)
             for p, m in model.named_modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))]
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, C, H, W))
    except Exception as e:  # noqa: BLE001 - any failure of the forward pass is the same refusal
        raise _cannot_take(spec, norm, C, (H, W), num_classes, e) from None
    finally:
        for h in hooks:
            h.remove()
    if few:
        path, inp, per = few[0]
        what, then = FEW_PER_GROUP[per]
        raise ModelError(f"{spec} under {norm} on {C}x{H}x{W} images: {path} normalises {what} per group (its "
                         f"input is {inp}), so {then}; choose fewer groups (group:G), another norm, or larger images")
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"{spec} gives a {type(out).__name__}, not a tensor of logits: bnrep needs a model "
                         f"whose forward returns the (N, {num_classes}) logits alone (wrap it: "
                         f"`lambda x: model(x)[0]` in a Module)")
    if tuple(out.shape) != (2, num_classes):
        raise ModelError(f"{spec} gives outputs of shape {tuple(out.shape)} for 2 images, "
                         f"not (2, {num_classes}) logits")
    try:
        trained = _training_output(model, torch.zeros(2, C, H, W), backward)
    except Exception as e:  # noqa: BLE001 - a forward pass that works in eval mode only
        raise ModelError(f"{spec} under {norm} fails in training mode on 2 images of {C}x{H}x{W}: "
                         f"{type(e).__name__}: {one_line(e)}") from None
    if not isinstance(trained, torch.Tensor):
        raise ModelError(f"{spec} gives a {type(trained).__name__} in training mode, not a tensor of logits "
                         f"(auxiliary heads? build it without them)")


def _training_output(model: nn.Module, x: torch.Tensor, backward: bool):
    """What a training step would get from `model`, its backward pass run too if `backward` (on a copy: the
    model's weights, running statistics and gradients and the RNG stay as they were)."""
    import copy

    with torch.random.fork_rng(), torch.set_grad_enabled(backward):
        out = copy.deepcopy(model).train()(x)
        if backward and isinstance(out, torch.Tensor) and out.requires_grad:
            out.float().sum().backward()  # fails where the model changes in place a tensor autograd needs
        return out.detach() if isinstance(out, torch.Tensor) else out


def _cannot_take(spec: str, norm: str, C: int, size: tuple[int, int], num_classes: int,
                 e: Exception) -> ModelError:
    H, W = size
    why = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    needs = _needs(spec, norm, C, max(H, W), num_classes)
    if needs.startswith("no size"):  # no size works: the channels, when another count does
        other = [c for c in (3, 1, 4) if c != C and _runs(spec, norm, c, max(H, W), num_classes)]
        if other:
            return ModelError(f"{spec} takes {other[0]}-channel images, not the data's {C} channel{'s' * (C != 1)}: "
                              f"its first layer must use the in_channels bnrep passes it ({spec}(num_classes, "
                              f"in_channels)); {why}")
        # nothing runs: the forward pass itself fails, whatever the images (not a question of their size)
        return ModelError(f"{spec}'s forward pass fails on 2 images of {C}x{H}x{W}, and on every other size from "
                          f"{TRY_SIZES[0]}x{TRY_SIZES[0]} to {TRY_SIZES[-1]}x{TRY_SIZES[-1]} and channel count "
                          f"tried: {why}")
    return ModelError(f"{spec} cannot take {C}x{H}x{W} images ({needs}; {why})")


def _runs(spec: str, norm: str, C: int, size: int, num_classes: int, built: nn.Module | None = None) -> bool:
    """Whether the model, built for C channels, runs on 2 images of C x size x size. `built`: a model from
    elsewhere, built for C channels once (its size does not enter; building Inception v3 takes 2 s),
    copied for each size."""
    import copy

    try:
        with torch.no_grad():
            x = torch.zeros(2, C, size, size)
            if parse_spec(spec).source == "builtin":
                model = build_model(spec, norm, C, num_classes, (size, size))
            else:  # (no _cannot_take)
                model = copy.deepcopy(built) if built is not None else _from_elsewhere(spec, C, num_classes)
                model = swap_norms(model, norm, x, spec)
            model.eval()(x)
        return True
    except Exception:  # noqa: BLE001
        return False


def _needs(spec: str, norm: str, C: int, H: int, num_classes: int) -> str:
    """What TRY_SIZES say of the sizes the model takes: 'it needs at least 32x32' (every size from one on
    runs), 'of the sizes tried (8x8 to 224x224) only 224x224 runs' (a ViT's fixed size), or none runs."""
    tried = [s for s in TRY_SIZES if s != H]
    built = None
    if parse_spec(spec).source != "builtin":
        with contextlib.suppress(Exception):  # (one that cannot be built fails in _runs, size by size)
            built = _from_elsewhere(spec, C, num_classes)
    ok = [s for s in tried if _runs(spec, norm, C, s, num_classes, built)]
    if len(ok) > 1 and ok == tried[-len(ok):] and ok[0] > H:
        lo, hi = max([H, *(s for s in tried if s < ok[0])]), ok[0]  # the least size that runs lies in (lo, hi]
        while hi - lo > 1:  # (inception_v3: 75x75, not the 96x96 tried)
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if _runs(spec, norm, C, mid, num_classes, built) else (mid, hi)
        return f"it needs at least {hi}x{hi}"
    sizes = f"{TRY_SIZES[0]}x{TRY_SIZES[0]} to {TRY_SIZES[-1]}x{TRY_SIZES[-1]}"
    if not ok:
        return f"no size from {sizes} works either"
    return f"of the sizes tried ({sizes}) only {', '.join(f'{s}x{s}' for s in ok)} run{'s' * (len(ok) == 1)}"


def user_module_path(spec: str) -> str | None:
    """The local file or folder of a `package.module:function` spec's top-level package, for Ray's
    runtime_env py_modules (every worker imports it); None for other specs and installed packages."""
    s = parse_spec(spec)
    if s.source != "module":
        return None
    name = s.name.split(".")[0].split(":")[0]
    try:
        top = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - (building the model imported it already: rare)
        raise ModelError(f"importing {name} for model {spec} failed: {type(e).__name__}: {one_line(e)}") from None
    path = list(getattr(top, "__path__", []))[:1] or [getattr(top, "__file__", None)]
    if not path[0] or any(part in ("site-packages", "dist-packages") for part in re.split(r"[\\/]", path[0])):
        return None
    return path[0]
