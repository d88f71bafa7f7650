"""The whole study, timed stage by stage through the command line.

    python benchmarks/study.py --experiment digits-cnn                      # ~10-20 min on 2 idle cores
    python benchmarks/study.py --experiment fashion-mnist-cnn --fake-data \\
        --train-size 1000 --max-epochs 5 --num-samples 2 --seeds 2 \\
        --samples-sparsity 500 --samples-cluster 1000                       # 28x28 StandardCNN, synthetic pixels
    python benchmarks/study.py --experiment cifar10-vgg16 --train-size 2000 --max-epochs 3 ...   # on a GPU

Runs `python -m bnrep hparam`, `final`, `analysis` and `report` one after the
other (the same stages, flags and order as `bnrep run`) with --out in a
temporary directory (or --out), then reads what each stage wrote and prints
one JSON line per stage:

    {"stage": "final", "experiment": "digits-cnn", "wall_s": 41.2, "trials": 8, "epochs": 123,
     "train_images": 1293, "images": 159039, "img_s": 3860.2, "s_per_epoch": 0.335, "device": "cpu", ...}

    trials        hparam: sweep trials; final: trained models
    tasks         analysis: extraction tasks (one per model) + clustering tasks (one per model and layer)
    epochs        sum over trials of the epochs trained
    images        training images through an optimiser step (epochs x train_images; evaluation passes
                  not counted); analysis: images extracted (models x analysis samples)
    s_per_epoch   wall_s / epochs x concurrent trials (Ray runs `cpus // cpus-per-trial` at once on CPU,
                  `1 / gpus-per-trial` per GPU): the wall time of one trial's epoch, stage overhead included
    device        where the stage's work ran (cuda when torch sees a GPU: the stages use it)

--fake-data (fashion-mnist-cnn or mnist-cnn only): writes seeded,
class-structured 28x28 images in the official IDX format into a temporary
--data-root, so the real preset's code path (torchvision reader, 5,000-image
validation hold-out, StandardCNN at 28x28) runs offline; the accuracies mean
nothing, the timings are those of the real shape. Only the command line is
used, so the benchmark survives any restructuring of the stage code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch

TRAIN_FLAGS = ("train_size", "max_epochs", "num_samples", "seeds", "cpus_per_trial", "gpus_per_trial")
ANALYSIS_FLAGS = ("samples_sparsity", "samples_cluster", "n_init", "cpus_per_task", "gpus_per_task")
IDX_FILES = {  # MNIST family, torchvision's names: (images, labels) per split, image count
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# ==== fake MNIST-family files: the preset's shape without the download ====

def write_fake_idx(root: str, dataset: str, n_train: int, n_test: int, seed: int = 0) -> None:
    """Seeded class-structured 28x28 uint8 images (10 class templates + noise) as IDX files."""
    folder = os.path.join(root, {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}[dataset], "raw")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    templates = rng.random((10, 28, 28)) * 255  # one smooth-free template per class
    for train, n in ((True, n_train), (False, n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        X = np.clip(0.6 * templates[y] + 0.4 * rng.random((n, 28, 28)) * 255, 0, 255).astype(np.uint8)
        images, labels = IDX_FILES[train]
        with open(os.path.join(folder, images), "wb") as f:  # IDX: magic 0x803, dims big-endian, bytes
            f.write(np.array([0x803, n, 28, 28], ">i4").tobytes() + X.tobytes())
        with open(os.path.join(folder, labels), "wb") as f:
            f.write(np.array([0x801, n], ">i4").tobytes() + y.tobytes())


# ==== one stage through the CLI ====

def run_stage(stage: str, argv: list[str], log) -> float:
    """Run `python -m bnrep <stage> ...`; its output goes to `log`. Wall seconds."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "bnrep", stage, *argv], capture_output=True, text=True)
    log.write(r.stdout + r.stderr)
    if r.returncode:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-5:])
        raise SystemExit(f"study: `bnrep {stage}` failed (exit {r.returncode}):\n{tail}")
    return time.perf_counter() - t


def flags(args, names) -> list[str]:
    out = []
    for name in names:
        v = getattr(args, name)
        if v is not None:
            out += ["--" + name.replace("_", "-"), str(v)]
    return out


def table(root: str, name: str) -> pd.DataFrame:
    path = os.path.join(root, "results", name)
    return pd.read_parquet(path) if os.path.isdir(path) else pd.DataFrame()


def train_images(root: str, data_root: str | None) -> int:
    """Images in the resolved experiment's training split (after --train-size)."""
    from bnrep.data import load_data
    from bnrep.experiments import Experiment

    with open(os.path.join(root, "config.json")) as f:
        exp = Experiment.from_dict(json.load(f)["experiment"])
    return len(load_data(exp, data_root, download=False).train)


def concurrency(args, stage: str) -> float:
    """Trials Ray runs at once on this machine (see the docstring)."""
    if torch.cuda.is_available():
        g = args.gpus_per_trial or 1.0
        return torch.cuda.device_count() / g
    return max(1, (os.cpu_count() or 1) // (args.cpus_per_trial or 1))


def describe(stage: str, root: str, args, n_train: int) -> dict:
    """Counts read back from the tables the stage wrote."""
    if stage in ("hparam", "final"):
        t = table(root, "hparam_trials" if stage == "hparam" else "training")
        epochs = int(t["epochs"].sum()) if len(t) else 0
        return {"trials": len(t), "epochs": epochs, "train_images": n_train, "images": epochs * n_train,
                "concurrent_trials": concurrency(args, stage)}
    if stage == "analysis":
        s, k = table(root, "samples"), table(root, "class_dbi")
        models = k["model_id"].nunique() if len(k) else 0
        n_images = int(s["index"].nunique()) if len(s) else 0  # the union of sparsity and cluster samples
        return {"tasks": models + len(k), "models": models, "layers": len(k), "images": models * n_images}
    return {"tasks": 1}


# ==== main ====

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="digits-cnn")
    p.add_argument("--out", default=None, help="results root (default: a temporary directory, deleted after)")
    p.add_argument("--data-root", default=None, help="torchvision data root (default: bnrep's)")
    p.add_argument("--fake-data", action="store_true",
                   help="write synthetic 28x28 IDX files for an MNIST-family preset into a temporary data root")
    p.add_argument("--fake-images", type=int, nargs=2, default=(8000, 2000), metavar=("TRAIN", "TEST"),
                   help="--fake-data: official train and test images written (default: 8000 2000)")
    for name in TRAIN_FLAGS + ANALYSIS_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=float if name.startswith("gpus") else int, default=None)
    p.add_argument("--stages", default="hparam,final,analysis,report")
    a = p.parse_args()
    if a.fake_data and a.experiment not in ("mnist-cnn", "fashion-mnist-cnn"):
        p.error("--fake-data needs an MNIST-family preset (mnist-cnn, fashion-mnist-cnn)")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="bnrep-study-") as tmp:
        out = a.out or os.path.join(tmp, "out")
        if a.fake_data:
            a.data_root = os.path.join(tmp, "data")
            write_fake_idx(a.data_root, a.experiment.removesuffix("-cnn"), *a.fake_images)
        common = ["--experiment", a.experiment, "--out", out]
        data = ["--data-root", a.data_root] if a.data_root else []
        argv = {"hparam": common + data + flags(a, TRAIN_FLAGS), "final": common + data + flags(a, TRAIN_FLAGS),
                "analysis": common + data + flags(a, ANALYSIS_FLAGS), "report": common}
        if flags(a, ANALYSIS_FLAGS):  # the grid recorded the preset's analysis settings in config.json;
            argv["analysis"].append("--fresh")  # --fresh accepts the new ones (nothing to delete yet)
        root = os.path.join(out, a.experiment)
        n_train = None
        with open(os.path.join(tmp, "stages.log"), "w") as log:
            for stage in a.stages.split(","):
                wall = run_stage(stage, argv[stage], log)
                n_train = n_train or train_images(root, a.data_root)
                row = {"stage": stage, "experiment": a.experiment, "wall_s": round(wall, 2),
                       **describe(stage, root, a, n_train), "device": device, "torch_threads": torch.get_num_threads(),
                       "cpus": os.cpu_count(), "fake_data": a.fake_data}
                if row.get("epochs"):
                    row["img_s"] = round(row["images"] / wall, 1)
                    row["s_per_epoch"] = round(wall / row["epochs"] * row["concurrent_trials"], 3)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
