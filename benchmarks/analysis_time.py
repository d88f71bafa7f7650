"""Analysis stage timing: extraction per model and the k-means sweep per layer, cifar10-vgg16 shape.

    python benchmarks/analysis_time.py --device cuda                 # 15,000 images, 13 layers, 2 models
    python benchmarks/analysis_time.py --device cpu --quick          # tiny: checks that it runs (~1 min)

What one analysis task does for the cifar10-vgg16 preset (paper 5.1:
5,000 sparsity and 15,000 clustering samples, k = 2..15, the preset's
n_init), timed on one device:

    extract   bnrep.represent.extract_representations of a VGG16 with BatchNorm on
              --images synthetic class-structured 3x32x32 images (bnrep's synthetic
              dataset): one line per model
    kmeans    bnrep.kmeans.sweep_kmeans (k-means for every k plus the DBI of each
              labelling, as the clustering task) of each probe layer's reduced
              representations on the same device: one line per (model, layer)

The VGG16s train --train-epochs epochs (Adam lr 1e-3, the preset's recipe)
on the same images first, so the representations have class structure
(k-means iteration counts depend on it); each model uses another seed.
Ends with a summary line: seconds per model for extraction and for all
layers' k-means, and the sums. Timings synchronise CUDA before reading the clock.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from bnrep.data import load_data
from bnrep.experiments import get_experiment
from bnrep.kmeans import sweep_kmeans
from bnrep.represent import extract_representations
from bnrep.train import Trainer


def clock(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def trained_model(data, exp, seed: int, epochs: int, device: str):
    """A VGG16 with BatchNorm after `epochs` epochs of the preset's recipe (0: random weights)."""
    t = Trainer(exp.override(max_epochs=max(epochs, 1)), data, "batch", {"lr": exp.lr}, seed, device=device)
    for _ in range(epochs):
        t.train_one_epoch()
    return t.model.eval()


def time_model(model, X, exp, device: str, model_no: int, k_max: int) -> tuple[float, float]:
    """Extraction and per-layer k-means of one model; prints a line each. (extract s, k-means s)."""
    t = clock(device)
    reps = extract_representations(model, X, exp.samples_sparsity, (exp.eps,), device=device)
    extract_s = clock(device) - t
    emit(kind="extract", model=model_no, images=len(X), layers=len(reps), seconds=extract_s)
    total = 0.0
    for rep in reps:
        R = rep.reduced.to(device)
        t = clock(device)
        sweep_kmeans(R, 2, k_max, n_init=exp.n_init, seed=0, device=device)
        s = clock(device) - t
        total += s
        emit(kind="kmeans", model=model_no, layer=rep.name, n=R.shape[0], d=R.shape[1], seconds=s)
    return extract_s, total


def emit(**fields) -> None:
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in fields.items()}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=15000, help="clustering samples (paper 5.1: 15,000)")
    p.add_argument("--models", type=int, default=2, help="models timed (the study has 4 seeds x 2 norms)")
    p.add_argument("--train-epochs", type=int, default=1, help="epochs each model trains before extraction")
    p.add_argument("--k-max", type=int, default=15, help="largest k (k = 2..k_max)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (256 images, 1 model, no training, k <= 5)")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    if a.quick:
        a.images, a.models, a.train_epochs, a.k_max = 256, 1, 0, 5
    exp = get_experiment("cifar10-vgg16").override(
        dataset="synthetic", image_shape=(3, 32, 32), num_images=int(a.images / 0.72) + 50, val_size=0.1,
        train_size=a.images, samples_sparsity=min(5000, a.images))
    data = load_data(exp, device=a.device)
    emit(kind="env", device=a.device, gpu=torch.cuda.get_device_name(0) if a.device == "cuda" else None,
         torch=torch.__version__, threads=torch.get_num_threads(), cpus=os.cpu_count(), images=a.images,
         samples_sparsity=exp.samples_sparsity, n_init=exp.n_init, k=[2, a.k_max], train_epochs=a.train_epochs)
    sums = [0.0, 0.0]
    for m in range(a.models):
        model = trained_model(data, exp, seed=m, epochs=a.train_epochs, device=a.device)
        for i, s in enumerate(time_model(model, data.train.X, exp, a.device, m, a.k_max)):
            sums[i] += s
    emit(kind="summary", models=a.models, extract_s_per_model=sums[0] / a.models,
         kmeans_s_per_model=sums[1] / a.models, total_s=sum(sums))


if __name__ == "__main__":
    main()
