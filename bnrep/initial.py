"""What two conditions' models start from: the weights they share at one seed, read off the models.

A normalisation draws no random weights (its scale is 1, its shift 0), so at one seed the models of
two normalisations can start from the same convolution and linear kernels: every kernel for BatchNorm
and GroupNorm of StandardCNN, the first convolution only for BatchNorm and none (whose convolutions
also draw a bias, which moves every later draw). Whether they do is decided by building both models
as training does (bnrep.models.seeded_model), not by a rule about norm names: a researcher's own
model draws in its own order. A kernel counts as shared when its bytes and the class of the module
that uses it are the same: weight standardisation's WSConv2d standardises the kernel it holds, so
its forward pass starts from another kernel than Conv2d's with the same bytes. A same-seed CKA of
such a pair can start above the baselines of independent seeds (the cka table's epoch-0 rows say whether
it did, where the analysis measured snapshots), which the CKA figure's caption says.
"""

from __future__ import annotations

import functools
import hashlib

import torch

from bnrep.experiments import Experiment
from bnrep.results import SHORT, and_list, cka_pairs, norm_pairs


def initial_kernels(exp: Experiment, condition: str, seed: int = 0) -> dict[str, str]:
    """name -> digest (the class of the module using it, shape and bytes) of every kernel (a parameter of
    2+ dimensions: convolutions, linear layers) of `condition`'s model as `seed` initialises it. Torch's
    global RNG is left as it was."""
    return _kernels(exp, condition, seed)[0]


def kernel_layers(exp: Experiment, condition: str, seed: int = 0) -> dict[str, str]:
    """name -> the layer (a probe, as the tables name it) each kernel of `condition`'s model feeds: the
    first activation called after its module in a forward pass; 'the output' after the last one."""
    return _kernels(exp, condition, seed)[1]


def norm_groups(exp: Experiment, condition: str) -> list[tuple[str, int, int]]:
    """(layer it feeds, groups, channels) of each GroupNorm of `condition`'s model, in forward order."""
    return _kernels(exp, condition, 0)[2]


@functools.lru_cache(maxsize=32)
def _kernels(exp: Experiment, condition: str, seed: int):
    from torch import nn

    from bnrep.data import input_shape
    from bnrep.datasets import num_classes
    from bnrep.models import seeded_model
    from bnrep.probes import layers_fed

    C, H, W = input_shape(exp)
    with torch.random.fork_rng(devices=[]):
        model = seeded_model(exp.model, condition, seed, C, num_classes(exp.dataset), (H, W))
    owned = {path: [f"{path}.{n}" if path else n for n, p in m.named_parameters(recurse=False) if p.dim() > 1]
             for path, m in model.named_modules()}
    used_by = {name: type(m).__qualname__ for path, m in model.named_modules() for name in owned[path]}
    digests = {name: f"{used_by[name]}{tuple(p.shape)}:"
                     f"{hashlib.sha256(p.detach().contiguous().numpy().tobytes()).hexdigest()}"
               for name, p in model.named_parameters() if p.dim() > 1}
    groups = {path: m for path, m in model.named_modules() if isinstance(m, nn.GroupNorm)}
    fed = layers_fed(model, torch.zeros(2, C, H, W), {path: m for path, m in model.named_modules()
                                                      if owned[path] or path in groups})
    layers = {name: fed[path] for path in fed for name in owned[path]}
    return (digests, {n: layers[n] for n in digests},
            [(fed[path], m.num_groups, m.num_channels) for path, m in groups.items()])


def shared_initial_weights(exp: Experiment, a: str, b: str, seed: int = 0) -> tuple[list[str], int]:
    """The kernels that the models of conditions `a` and `b` start from alike at `seed` (by name, in
    `a`'s order), and how many kernels `a`'s model has."""
    ka, kb = initial_kernels(exp, a, seed), initial_kernels(exp, b, seed)
    return [n for n, digest in ka.items() if kb.get(n) == digest], len(ka)


def shared_start_text(rs) -> str:
    """The CKA caption's sentence on the pairs of conditions (those its table compares) whose models start
    from shared weights at one seed, per experiment in `rs` (bnrep.results.Results)."""
    said = []
    for r in rs:
        at = f"{r.label}: " if len(rs) > 1 else ""
        if r.imported:  # trained elsewhere, from weights bnrep did not draw: nothing to say of their start
            continue
        try:
            shared = {(a, b): shared_initial_weights(r.experiment, a, b)
                      for a, b in norm_pairs(cka_pairs(r.table("cka")))}
        except (ValueError, OSError) as e:  # the model's code or its data is not here (ModelError, DatasetError)
            said.append(f"{at}not checked here ({str(e).splitlines()[0]})")
            continue
        groups: dict[str, list[str]] = {}
        for (a, b), (names, total) in shared.items():
            if not names:  # said too, so that a pair left out does not read as not checked
                groups.setdefault("none", []).append(f"{SHORT[a]} and {SHORT[b]}")
            else:
                fed = list(dict.fromkeys(kernel_layers(r.experiment, a)[n] for n in names))  # as the tables name them
                into = ", ".join(fed[:3]) + (", ..." if len(fed) > 3 else "")
                which = f"all {total} kernels" if len(names) == total else f"{len(names)} of {total} kernels (into {into})"
                groups.setdefault(which, []).append(f"{SHORT[a]} and {SHORT[b]}")
        none = groups.pop("none", [])
        said.append(at + ("; ".join(f"{', '.join(pairs)}: {which}" for which, pairs in [*groups.items(), ("none", none)]
                                    if pairs) if groups else "no pair shares a kernel"))
    if not said:
        return ""
    from bnrep.norms import get_norm

    ws = any(get_norm(n).norm.startswith("ws+") for r in rs for n in r.experiment.norms)
    return ("At one seed, the models of two conditions start from the same convolution and linear kernels where "
            "the normalisation draws no weights of its own (read off the models, built as training builds them): "
            + "; ".join(said) + ". A same-seed CKA of such a pair can start above the baselines of independent "
            "seeds: in the layers those kernels feed, a CKA at or above the baselines does not by itself show that "
            "training left the representations alike." + (WS_KERNELS if ws else ""))


WS_KERNELS = (" A weight-standardised convolution standardises the kernel it holds, so its start differs from a "
              "plain convolution's holding the same initial kernel, and is not counted as shared.")


def groups_text(r) -> str:
    """The Settings' line on the GroupNorm conditions of Results `r`: the groups of each norm layer, by the
    layer it feeds; conditions alike share one line. A group of one channel normalises each channel of each
    image alone, as InstanceNorm does (StandardCNN's conv1 and conv2 at 32 groups), which it says. ''
    without any such condition."""
    from bnrep.norms import get_norm

    said: dict[str, list[str]] = {}
    alone = []  # the conditions with a group of one channel
    for n in r.norms:
        if get_norm(n).norm.removeprefix("ws+").partition(":")[0] != "group":
            continue
        try:
            layers = norm_groups(r.experiment, n)
        except (ValueError, OSError):  # the model's code or its data is not here: nothing to read it from
            continue
        alone += [SHORT[n]] if any(g == c for _, g, c in layers) else []
        runs: list[list] = []  # [first layer, last layer, groups, channels per group]: consecutive alike, one
        for layer, g, c in layers:
            if runs and runs[-1][2:] == [g, c // g]:
                runs[-1][1] = layer
            else:
                runs.append([layer, layer, g, c // g])
        parts = [f"{a if a == b else f'{a} to {b}'} {g}" + (f" group{'s' * (g != 1)} of {k} channel{'s' * (k != 1)}"
                                                          if i == 0 else f" of {k}")
                 for i, (a, b, g, k) in enumerate(runs)]
        said.setdefault(", ".join(parts), []).append(SHORT[n])
    return "; ".join(f"{and_list(names)}: {text}" for text, names in said.items()) + (
        f". In {and_list(alone)}, a group of 1 channel normalises each channel of each image alone, as "
        f"InstanceNorm does" if alone else "")
