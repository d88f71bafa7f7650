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
from bnrep.results import SHORT, cka_pairs, norm_pairs


def initial_kernels(exp: Experiment, condition: str, seed: int = 0) -> dict[str, str]:
    """name -> digest (the class of the module using it, shape and bytes) of every kernel (a parameter of
    2+ dimensions: convolutions, linear layers) of `condition`'s model as `seed` initialises it. Torch's
    global RNG is left as it was."""
    return _kernels(exp, condition, seed)[0]


def kernel_layers(exp: Experiment, condition: str, seed: int = 0) -> dict[str, str]:
    """name -> the layer (a probe, as the tables name it) each kernel of `condition`'s model feeds: the
    first activation called after its module in a forward pass; 'the output' after the last one."""
    return _kernels(exp, condition, seed)[1]


@functools.lru_cache(maxsize=32)
def _kernels(exp: Experiment, condition: str, seed: int) -> tuple[dict[str, str], dict[str, str]]:
    from bnrep.data import input_shape
    from bnrep.datasets import num_classes
    from bnrep.models import seeded_model
    from bnrep.probes import find_probes, tap

    C, H, W = input_shape(exp)
    with torch.random.fork_rng(devices=[]):
        model = seeded_model(exp.model, condition, seed, C, num_classes(exp.dataset), (H, W))
    owned = {path: [f"{path}.{n}" if path else n for n, p in m.named_parameters(recurse=False) if p.dim() > 1]
             for path, m in model.named_modules()}
    used_by = {name: type(m).__qualname__ for path, m in model.named_modules() for name in owned[path]}
    digests = {name: f"{used_by[name]}{tuple(p.shape)}:"
                     f"{hashlib.sha256(p.detach().contiguous().numpy().tobytes()).hexdigest()}"
               for name, p in model.named_parameters() if p.dim() > 1}
    example = torch.zeros(2, C, H, W)
    probes = [p.name for p in find_probes(model, example)]
    calls, waiting, layers = [], [], {}  # in forward order: ("kernels", names) after a module, ("probe", index)
    handles = [m.register_forward_hook(lambda mod, a, out, names=owned[path]: calls.append(("kernels", names)))
               for path, m in model.named_modules() if owned[path]]
    try:
        with torch.no_grad(), tap(model.eval(), lambda index, *_: calls.append(("probe", index))):
            model(example)
    finally:
        for h in handles:
            h.remove()
    for what, x in calls:
        if what == "kernels":
            waiting += [n for n in x if n not in layers and n not in waiting]
        else:
            layers.update({n: probes[x - 1] for n in waiting})
            waiting = []
    return digests, {n: layers.get(n, "the output") for n in digests}


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
            if names:
                fed = list(dict.fromkeys(kernel_layers(r.experiment, a)[n] for n in names))  # as the tables name them
                which = (f"all {total} kernels" if len(names) == total else
                         f"{len(names)} of {total} kernels (into {', '.join(fed[:3])}{', ...' if len(fed) > 3 else ''})")
                groups.setdefault(which, []).append(f"{SHORT[a]} and {SHORT[b]}")
        said.append(at + ("; ".join(f"{', '.join(pairs)}: {which}" for which, pairs in groups.items()) if groups
                          else "no pair shares a kernel"))
    if not said:
        return ""
    return ("At one seed, the models of two conditions start from the same convolution and linear kernels where "
            "the normalisation draws no weights of its own (read off the models, built as training builds them): "
            + "; ".join(said) + ". A same-seed CKA of such a pair can start above the baselines of independent seeds: in the layers "
            "those kernels feed, a CKA at or above the baselines does not by itself show that training left the "
            "representations alike.")
