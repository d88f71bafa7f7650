"""Training-loop throughput: bnrep's Trainer against a plain DataLoader loop, on CPU or CUDA.

    python benchmarks/train_throughput.py                  # CPU: both cases, ~2 min on an idle 2-core box
    python benchmarks/train_throughput.py --cases cnn --repeats 3   # ~30 s
    python benchmarks/train_throughput.py --device cuda --precision fp32,amp            # GPU: full-size epochs
    python benchmarks/train_throughput.py --device cuda --pack 1,2,4,8                  # trials sharing one GPU
    python benchmarks/train_throughput.py --device cpu --quick --pack 1,2 --precision fp32,amp   # smoke test
                                           # (on CPU, amp is ignored as in the Trainer: rows say fp32)

GPU (--device cuda): each case trains on a full-size synthetic epoch (cnn
55,000 images = MNIST less validation, vgg16 45,000 = CIFAR10 less
validation) held on the GPU, at batch 64; one line per case and precision
(fp32, or amp = bf16 autocast as `--amp` in the stages) with bnrep_img_s and
epoch_s (a timed epoch). No DataLoader reference on GPU unless --workers is
given. --compile wraps the model in torch.compile (compile time is in the
warm-up epoch, not in the figures). --pack 1,2,4,8 instead starts that many
training processes at once on the same device (as `--gpus-per-trial 1/P`
packs Tune trials), each with its own model and data, runs them for
--seconds after a shared start signal, and prints per P the aggregate
images/s (sum over processes) and the scaling over P = 1. --quick shrinks
every size (cnn 256, vgg16 64 images, 1 repeat, 2 s packs) to check that the
code runs.

Both loops train the same model (same seed, same init) with the same
optimiser (SGD, Nesterov momentum 0.99, lr 0.01, paper 3.1.1), batch 64,
cross-entropy, on the same synthetic class-structured images (bnrep's
`synthetic` dataset at the case's shape), in one process on the same cores:

    bnrep      Trainer.train_one_epoch: the whole split is one tensor, batches
               are seeded index permutations (bnrep.data.batches). Timed apart:
               the per-epoch eval-mode accuracy on the whole training split
               (bnrep.train.accuracy), which the reference loop does not do.
    reference  a torchvision-style Dataset returning (image tensor, int label)
               per index + DataLoader(batch_size=64, shuffle=True), for each
               num_workers in --workers (persistent workers, so process start
               is not counted); the best of them is the reference figure.

Each repeat times one epoch of every loop in turn (interleaved, so a busy
neighbour slows all loops alike) after one warm-up epoch each; *_img_s are
medians over --repeats, *_best_img_s the fastest repeat. On a shared machine
check the per-repeat lines on stderr: two processes each running 2 OpenMP
threads on 2 cores slow each other down up to ~50x, and then only the best
figures mean anything. Prints one JSON line per case:

    {"case": "cnn", "arch": "cnn", "input": "1x28x28", "n_images": 4096, "bn": true,
     "bnrep_img_s": ..., "bnrep_eval_img_s": ..., "bnrep_epoch_img_s": ...,
     "reference_img_s": ..., "reference_workers": 0, "reference_img_s_by_workers": {...},
     "ratio": bnrep_img_s / reference_img_s, "torch_threads": 2, ...}

bnrep_epoch_img_s counts an epoch as training plus the eval pass over the
training split (what Trainer.step_epoch adds, minus the smaller val split).

Measured on 2 vCPU (AMD EPYC, KVM, AVX-512), torch 2.14.1, 2 intra-op
threads, BatchNorm on, no other job running (2026-11-25, default command):

    img/s   bnrep train   reference: best (num_workers 0 / 1 / 2)   ratio   bnrep eval   bnrep epoch
    cnn            3984    2755 (2755 / 2529 / 2531)                  1.45x        14469          3119
    vgg16           199     188 (185 / 188 / 187)                     1.06x          674           154

(bnrep eval: bnrep.train.accuracy over the training split; bnrep epoch: train + that eval.)

Before the speed-ups in bnrep/train.py (channels_last on CPU, foreach
optimiser, on-device loss/accuracy sums, eval batch 64 on CPU), same
machine, interleaved old/new/reference epochs, undisturbed repeats:

    cnn     train 2470-2580 img/s (1.02x the reference), eval 2300-2400 img/s
    vgg16   train 186 img/s (1.02x), eval 381 img/s

So StandardCNN now trains 1.45x faster than the reference loop, and a whole
bnrep epoch (train + eval on the training split) is 2.5x faster than before
(1250 -> 3120 img/s). VGG16 stays at ~1.05x, below the 1.3x target: over 80%
of its step is oneDNN convolution forward/backward, the same kernels in both
loops, so even making everything else free would give ~1.2x; nothing that
keeps the fp32 math reaches 1.3x there (torch.compile: ~10% on StandardCNN
after a 22 s compile; not used). Data loading is < 1% of a step in both loops
(DataLoader: 0.14 ms per batch of 64; bnrep's index gather: 0.02 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bnrep.data import Data, load_data
from bnrep.experiments import get_experiment
from bnrep.models import build_model
from bnrep.train import Trainer, accuracy

GPU_IMAGES = {"cnn": 55000, "vgg16": 45000}  # a real epoch: MNIST / CIFAR10 training sets less 5,000 validation
QUICK_IMAGES = {"cnn": 256, "vgg16": 64}

HPARAMS = {"lr": 0.01, "momentum": 0.99}  # paper 3.1.1 (MNIST recipe), used for both archs here
BATCH = 64  # images per optimiser step (paper 3.1)
CASES = {  # name: (arch, (C, H, W), default number of training images)
    "cnn": ("cnn", (1, 28, 28), 4096),
    "vgg16": ("vgg16", (3, 32, 32), 512),
}


# ==== data and the two loops ====

def synthetic_data(arch: str, shape: tuple[int, int, int], n: int, seed: int, device="cpu"):
    """(Experiment, Data on `device`) with exactly n training images of `shape`; SGD recipe above."""
    exp = get_experiment("synthetic-cnn").override(
        arch=arch, image_shape=shape, num_images=int(n / 0.72) + 50,  # 20% test, 10% val, rest train
        train_size=n, optimizer="sgd", lr=HPARAMS["lr"], momentum=HPARAMS["momentum"], batch_size=BATCH,
        split_seed=seed)
    return exp, load_data(exp, device=device)


def make_trainer(name: str, n: int, bn: bool, seed: int, device: str, amp: bool, compile_: bool):
    """(Trainer on `device`, its Data) for one case."""
    arch, shape, _ = CASES[name]
    exp, data = synthetic_data(arch, shape, n, seed, device)
    trainer = Trainer(exp, data, "batch" if bn else "none", HPARAMS, seed, device=device, amp=amp)
    if compile_:  # same parameters, so the optimiser built in Trainer still updates them
        trainer.model = torch.compile(trainer.model)
    return trainer, data


class TensorImages(Dataset):
    """torchvision-style: one (image tensor, int label) per index, collated by the DataLoader."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor):
        self.X, self.y = X, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.X[i], int(self.y[i])


class Reference:
    """The plain PyTorch loop: DataLoader, zero_grad, forward, backward, step, loss.item()."""

    def __init__(self, arch: str, bn: bool, data: Data, workers: int, seed: int):
        torch.manual_seed(seed)
        self.model = build_model(arch, "batch" if bn else "none", data.channels, data.num_classes)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=HPARAMS["lr"], momentum=HPARAMS["momentum"],
                                   nesterov=True)
        self.loss_fn = nn.CrossEntropyLoss()
        self.loader = DataLoader(TensorImages(data.train.X, data.train.y), batch_size=BATCH, shuffle=True,
                                 num_workers=workers, persistent_workers=workers > 0)

    def epoch(self) -> float:
        self.model.train()
        total, n = 0.0, 0
        for xb, yb in self.loader:
            loss = self.loss_fn(self.model(xb), yb)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            total += loss.item() * len(yb)
            n += len(yb)
        return total / n


def timed(fn) -> float:
    """Wall seconds of fn(), GPU work included."""
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


# ==== one case ====

def run_case(name: str, n: int, bn: bool, workers: list[int], repeats: int, seed: int,
             device: str = "cpu", amp: bool = False, compile_: bool = False) -> dict:
    arch, shape, _ = CASES[name]
    trainer, data = make_trainer(name, n, bn, seed, device, amp, compile_)
    refs = {w: Reference(arch, bn, data, w, seed) for w in workers}  # CPU data only (main() checks)
    loops = {"bnrep": trainer.train_one_epoch,
             "eval": lambda: accuracy(trainer.model, data.train, trainer.device),
             **{f"ref{w}": r.epoch for w, r in refs.items()}}
    load0 = os.getloadavg()[0]
    for fn in loops.values():  # warm-up: allocator, oneDNN primitives, worker processes
        fn()
    secs = {k: [] for k in loops}
    for r in range(repeats):
        for k, fn in loops.items():
            secs[k].append(timed(fn))
        print(f"[{name}] repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {n / s[-1]:.0f} img/s" for k, s in secs.items()),
              file=sys.stderr, flush=True)
    rate = {k: n / statistics.median(s) for k, s in secs.items()}
    best = {k: n / min(s) for k, s in secs.items()}  # least disturbed by neighbours
    epoch_s = statistics.median(a + b for a, b in zip(secs["bnrep"], secs["eval"]))
    row = {
        "case": name, "arch": arch, "input": "x".join(map(str, shape)), "n_images": n, "batch_size": BATCH,
        "bn": bn, "optimizer": "sgd-nesterov-0.99-lr0.01", **device_info(device, amp, compile_),
        "bnrep_img_s": round(rate["bnrep"], 1), "bnrep_eval_img_s": round(rate["eval"], 1),
        "bnrep_epoch_img_s": round(n / epoch_s, 1), "bnrep_best_img_s": round(best["bnrep"], 1),
        "train_epoch_s": round(statistics.median(secs["bnrep"]), 3),
        "repeats": repeats, "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)], "commit": git_commit(),
    }
    if workers:
        by_w = {w: rate[f"ref{w}"] for w in workers}
        best_w = max(by_w, key=by_w.get)
        ref_best = max(best[f"ref{w}"] for w in workers)
        row.update({"reference_img_s": round(by_w[best_w], 1), "reference_workers": best_w,
                    "reference_img_s_by_workers": {str(w): round(v, 1) for w, v in by_w.items()},
                    "ratio": round(rate["bnrep"] / by_w[best_w], 3), "reference_best_img_s": round(ref_best, 1),
                    "ratio_best": round(best["bnrep"] / ref_best, 3)})
    return row


def device_info(device: str, amp: bool, compile_: bool) -> dict:
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    return {"device": device, "gpu": gpu, "precision": "amp-bf16" if amp and device == "cuda" else "fp32",
            "compile": compile_,
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__}


# ==== several trials on one device (--pack) ====

def pack_child(name: str, n: int, bn: bool, seed: int, device: str, amp: bool, compile_: bool,
               seconds: float) -> dict:
    """One packed trial: warm up, say "ready", wait for "go" on stdin, train whole epochs for `seconds`."""
    trainer, _ = make_trainer(name, n, bn, seed, device, amp, compile_)
    trainer.train_one_epoch()  # warm-up (and compilation)
    print("ready", flush=True)
    sys.stdin.readline()
    t, images = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        timed(trainer.train_one_epoch)
        images += n
    return {"images": images, "seconds": time.perf_counter() - t}


def run_pack(name: str, P: int, a, n: int, amp: bool) -> dict:
    """P pack_child processes started together; aggregate images/s."""
    cmd = [sys.executable, os.path.abspath(__file__), "--pack-child", name, "--images", str(n), "--seed", str(a.seed),
           "--device", a.device, "--seconds", str(a.seconds), "--bn", a.bn] + ["--amp"] * amp + ["--compile"] * a.compile + ["--quick"] * a.quick
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(P)]
    for pr in procs:  # all warmed up before any timing starts
        if pr.stdout.readline().strip() != "ready":
            raise SystemExit(f"train_throughput: a packed trial failed to start (exit {pr.wait()})")
    for pr in procs:
        pr.stdin.write("go\n")
        pr.stdin.flush()
    outs = [json.loads(pr.communicate()[0].strip().splitlines()[-1]) for pr in procs]
    per = [o["images"] / o["seconds"] for o in outs]
    return {"case": name, "mode": "pack", "trials": P, "n_images": n, "batch_size": BATCH, "seconds": a.seconds,
            **device_info(a.device, amp, a.compile), "aggregate_img_s": round(sum(per), 1),
            "per_trial_img_s": [round(r, 1) for r in per]}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="cnn,vgg16", help="comma-separated: cnn (1x28x28), vgg16 (3x32x32)")
    p.add_argument("--images", type=int, default=None,
                   help="training images per case (default CPU: cnn 4096, vgg16 512; CUDA: 55000, 45000)")
    p.add_argument("--bn", choices=["on", "off", "both"], default="on", help="BatchNorm in the model")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp32", help="comma-separated: fp32, amp (bf16 autocast, CUDA only)")
    p.add_argument("--amp", action="store_true", help="same as --precision amp")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (compile time not timed)")
    p.add_argument("--workers", default=None,
                   help="DataLoader num_workers values tried for the reference (default: 0,1,2 on CPU; none on CUDA)")
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per loop; the median is reported")
    p.add_argument("--pack", default=None, help="comma-separated trial counts run at once on the device, e.g. 1,2,4,8")
    p.add_argument("--seconds", type=float, default=20.0, help="--pack: seconds each packed trial trains")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a check that everything runs")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pack-child", default=None, help=argparse.SUPPRESS)
    return p


def main() -> None:
    p = build_parser()
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    precisions = ["amp"] if a.amp else a.precision.split(",")
    if set(precisions) - {"fp32", "amp"} or (a.device == "cpu" and "amp" in precisions and not a.quick):
        p.error("--precision takes fp32 and amp; amp (bf16 autocast) runs on CUDA only (CPU: only with --quick)")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.quick:
        a.repeats, a.seconds = 1, min(a.seconds, 2.0)
    if a.pack_child:
        n, bn = a.images, a.bn != "off"
        print(json.dumps(pack_child(a.pack_child, n, bn, a.seed, a.device, a.amp, a.compile, a.seconds)), flush=True)
        return
    workers = [int(w) for w in (a.workers or ("0,1,2" if a.device == "cpu" and not a.quick else "")).split(",") if w]
    if workers and a.device != "cpu":
        p.error("--workers: the DataLoader reference runs on CPU only")
    for name in a.cases.split(","):
        n = a.images or (QUICK_IMAGES if a.quick else GPU_IMAGES if a.device == "cuda" else
                         {k: v[2] for k, v in CASES.items()})[name]
        for amp in (pr == "amp" for pr in precisions):
            if a.pack:
                for P in (int(x) for x in a.pack.split(",")):
                    print(json.dumps(run_pack(name, P, a, n, amp)), flush=True)
                continue
            for bn in {"on": [True], "off": [False], "both": [True, False]}[a.bn]:
                print(json.dumps(run_case(name, n, bn, workers, a.repeats, a.seed, a.device, amp, a.compile)),
                      flush=True)


if __name__ == "__main__":
    main()
