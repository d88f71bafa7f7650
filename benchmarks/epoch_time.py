"""Epoch wall time of Trainer.step_epoch, this checkout against an earlier commit.

    python benchmarks/epoch_time.py --before 6959f65                 # both cases, ~5 min on 2 idle cores
    python benchmarks/epoch_time.py --before 6959f65 --cases vgg16 --rounds 5

Two preset-shaped trials on synthetic class-structured images (bnrep's
`synthetic` dataset), both with 10% of the images held out for validation
as the real presets do (CIFAR10: 45,000 train / 5,000 val):

    vgg16   cifar10-vgg16-shaped: 3x32x32, VGG16 with BatchNorm, Adam lr 1e-3,
            early stopping (the preset's stop rule; --epochs epochs timed)
    cnn     mnist-cnn-shaped: 1x28x28, StandardCNN with BatchNorm, SGD Nesterov
            0.99 lr 0.01, stop at interpolation (run to the stop or --epochs)

`--before REV` exports bnrep/ at REV (git archive) into a temporary
directory; each round runs one child process per version (before, after,
alternating which goes first), each training the same trial from scratch
and timing every epoch (time.perf_counter around step_epoch). Epoch 1 is a
warm-up (oneDNN primitives, allocator) and is left out. Prints one JSON line
per case with, per version, the minimum and median epoch time over all
rounds and the epochs each version trained (the stopping decisions must
agree), and speedup = before / after of the minimum and of the median.
Other processes on the same cores slow both versions alike only when the
versions interleave, hence the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {  # name: overrides of the synthetic-cnn preset; train images; epochs cap
    "vgg16": (dict(arch="vgg16", image_shape=(3, 32, 32), optimizer="adam", lr=1e-3, stop="early-stop",
                   patience=1.0, lr_step_epochs=1, lr_gamma=0.99), 576),
    "cnn": (dict(arch="cnn", image_shape=(1, 28, 28), optimizer="sgd", lr=0.01, momentum=0.99,
                 stop="interpolate", lr_step_epochs=10, lr_gamma=0.99), 2048),
}


# ==== child: one trial, one version (whatever bnrep PYTHONPATH gives) ====

def child(case: str, epochs: int, seed: int) -> dict:
    import torch

    from bnrep.data import load_data
    from bnrep.experiments import get_experiment
    from bnrep.train import Trainer

    over, n = CASES[case]
    exp = get_experiment("synthetic-cnn").override(
        **over, num_images=int(n / 0.72) + 50,  # 20% test, then 10% val: n train images
        train_size=n, batch_size=64, max_epochs=epochs, val_size=0.1)
    data = load_data(exp)
    t = Trainer(exp, data, "batch", {"lr": exp.lr, "momentum": exp.momentum}, seed, device="cpu")
    secs = []
    while not t.done:
        s = time.perf_counter()
        t.step_epoch()
        secs.append(time.perf_counter() - s)
    return {"epochs": t.epoch, "secs": secs, "train": len(data.train), "val": len(data.val),
            "threads": torch.get_num_threads()}


# ==== parent: interleave the versions ====

def export(rev: str, repo: str, dest: str) -> None:
    """bnrep/ at `rev` into dest/bnrep."""
    tar = subprocess.run(["git", "-C", repo, "archive", rev, "bnrep"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=tar, check=True)


def run_child(path: str, case: str, epochs: int, seed: int) -> dict:
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, os.path.abspath(__file__), "--child", case, "--epochs", str(epochs), "--seed", str(seed)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def compare(case: str, versions: dict[str, str], rounds: int, epochs: int, seed: int) -> dict:
    secs = {v: [] for v in versions}
    trained = {v: set() for v in versions}
    info = {}
    for r in range(rounds):
        order = list(versions) if r % 2 == 0 else list(reversed(versions))
        for v in order:
            out = run_child(versions[v], case, epochs, seed)
            secs[v] += out["secs"][1:]  # epoch 1: warm-up
            trained[v].add(out["epochs"])
            info = {"train_images": out["train"], "val_images": out["val"], "threads": out["threads"]}
            print(f"[{case}] round {r + 1}/{rounds} {v}: epochs {out['epochs']}, "
                  + " ".join(f"{s:.2f}" for s in out["secs"]) + " s", file=sys.stderr, flush=True)
    row = {"case": case, **info, "rounds": rounds, "load_1m": round(os.getloadavg()[0], 2)}
    for v, s in secs.items():
        row[v] = {"min_s": round(min(s), 3), "median_s": round(statistics.median(s), 3), "n": len(s),
                  "epochs_trained": sorted(trained[v])}
    if len(versions) == 2:
        b, a = (row[v] for v in versions)
        row["speedup_min"] = round(b["min_s"] / a["min_s"], 3)
        row["speedup_median"] = round(b["median_s"] / a["median_s"], 3)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", default=None, help="git revision to compare against (default: time this checkout only)")
    p.add_argument("--cases", default="vgg16,cnn", help="comma-separated: " + ", ".join(CASES))
    p.add_argument("--rounds", type=int, default=3, help="child processes per version, interleaved")
    p.add_argument("--epochs", type=int, default=4, help="epoch cap per trial (epoch 1 is not timed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.epochs, a.seed)), flush=True)
        return
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="bnrep-before-") as tmp:
        versions = {"after": repo}
        if a.before:
            export(a.before, repo, tmp)
            versions = {"before": tmp, "after": repo}
        for case in a.cases.split(","):
            print(json.dumps(compare(case, versions, a.rounds, a.epochs, a.seed)), flush=True)


if __name__ == "__main__":
    main()
