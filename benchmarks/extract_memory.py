"""Peak memory of streaming representation extraction, VGG16 (or any model spec) on CIFAR-sized images.

    python benchmarks/extract_memory.py                # about 1-3 minutes on 2 CPU cores
    python benchmarks/extract_memory.py --images 2000  # quick check
    python benchmarks/extract_memory.py --model torchvision:resnet50 --images 1000   # 49 probes

Each measurement runs in a fresh subprocess (`--child`), so nothing the
parent imported or allocated counts. The child imports torch and bnrep,
builds a VGG16 with random weights (seed 0, BatchNorm on, eval mode), draws
N random 3x32x32 inputs, records its resident set (baseline), resets the
kernel's high-water mark (writing 5 to /proc/self/clear_refs), runs
bnrep.represent.extract_representations exactly as analysis/run.py does
(cifar10-vgg16 preset: 5,000 sparsity samples, eps (0.0,), default batch
size) and reads the high-water mark again. Prints one JSON line:

    {"n_images": 15000, "batch_size": 500, "baseline_rss_mib": ...,   # after imports + model + inputs
     "peak_rss_mib": ...,            # VmHWM during extraction (includes the baseline)
     "extraction_mib": ...,          # peak - baseline: what extraction itself added
     "ru_maxrss_mib": ...,           # getrusage high-water mark over the child's whole life
     "full_activations_mib": ...,    # sum over probe layers of N*C*H*W*4 bytes: a non-streaming extractor
     "outputs_mib": ...,             # the returned (N, C) float32 buffers, sum over layers
     "under_2gib": true, "seconds": ..., "torch_threads": 2, ...}

Measured on 2 vCPU (AMD EPYC, KVM), 23 GiB RAM, torch 2.14.1, 2 threads,
default command (15,000 images, batch 500, 13 probe layers), 2026-11-25:

    baseline RSS (imports + VGG16 + 176 MiB of inputs)     758 MiB
    peak RSS during extraction                             1528 MiB  (under 2 GiB: yes)
    added by extraction                                     770 MiB  (242 MiB of it the returned N x C buffers)
    full activations, sum of N*C*H*W*4 over probe layers  15820 MiB  (15.4 GiB)
    wall time                                              127-141 s (machine shared with another job)

Before the memory changes in bnrep/represent.py (zero counts without a
transposed float copy, chunked so the int64 cast of the mask stays small;
rows normalised in place): peak 1784 MiB, extraction +1026 MiB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

MIB = 2 ** 20
TARGET_BYTES = 2 * 2 ** 30  # 2 GiB


def status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ==== child: one measurement in a clean process ====

def child(spec: str, n: int, batch_size: int, n_sparsity: int, seed: int) -> dict:
    import torch

    from bnrep.experiments import get_experiment
    from bnrep.models import build_model
    from bnrep.represent import extract_representations

    exp = get_experiment("cifar10-vgg16")
    torch.manual_seed(seed)
    model = build_model(spec, "batch", 3, 10, (32, 32)).eval()  # random weights
    X = torch.randn(n, 3, 32, 32)  # (N, C, H, W) float32, as data.train.X[idx]
    shapes = probe_shapes(model, X[:2])
    baseline = status_kib("VmRSS") * 1024
    hwm_reset = reset_hwm()
    t = time.perf_counter()
    reps = extract_representations(model, X, n_sparsity, exp.eps, batch_size=batch_size, device="cpu")
    seconds = time.perf_counter() - t
    peak = status_kib("VmHWM") * 1024
    full = sum(n * math.prod(s) * 4 for s in shapes)
    outputs = sum(r.reduced.numel() * r.reduced.element_size() for r in reps)
    return {
        "model": spec, "n_images": n, "batch_size": batch_size, "n_sparsity": n_sparsity, "probe_layers": len(reps),
        "baseline_rss_mib": round(baseline / MIB, 1), "peak_rss_mib": round(peak / MIB, 1),
        "extraction_mib": round((peak - baseline) / MIB, 1), "hwm_reset": hwm_reset,
        "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # KiB on Linux
        "full_activations_mib": round(full / MIB, 1), "outputs_mib": round(outputs / MIB, 1),
        "under_2gib": peak < TARGET_BYTES, "seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
    }


def probe_shapes(model, x) -> list[tuple[int, ...]]:
    """The per-image shape of every probe's output (values per image: their product)."""
    import torch

    from bnrep.probes import tap

    shapes = []
    with torch.inference_mode(), tap(model, lambda index, path, act, out: shapes.append(tuple(out.shape[1:]))):
        model(x)
    return [s + (1,) * (3 - len(s)) for s in shapes]  # FC outputs (C,) count as (C, 1, 1)


# ==== parent: run the child, print its line ====

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vgg16", help="model spec (bnrep.models), BatchNorm, random weights")
    p.add_argument("--images", type=int, default=15000, help="inputs to extract (paper 5.1: 15,000)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass (default: extract_representations' default)")
    p.add_argument("--sparsity-samples", type=int, default=5000, help="first N inputs count toward sparsity")
    p.add_argument("--seed", type=int, default=0, help="weights of the random VGG16")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.batch_size is None:
        import inspect

        from bnrep.represent import extract_representations
        a.batch_size = inspect.signature(extract_representations).parameters["batch_size"].default
    if a.child:
        print(json.dumps(child(a.model, a.images, a.batch_size, a.sparsity_samples, a.seed)), flush=True)
        return
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--model", a.model, "--images", str(a.images),
           "--batch-size", str(a.batch_size), "--sparsity-samples", str(a.sparsity_samples), "--seed", str(a.seed)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
