"""What bnrep's stages cost beyond their work: `bnrep run`, then the same work in one plain process.

    python benchmarks/overhead.py                                   # digits-cnn, ~8 min on 2 idle cores
    python benchmarks/overhead.py --experiment fashion-mnist-cnn --fake-data --train-size 2000 \\
        --max-epochs 5 --num-samples 4 --seeds 2 --samples-sparsity 500 --samples-cluster 1000   # 28x28

1. `bnrep run` (a subprocess, as a user types it) into a temporary --out; each
   stage's wall time is read from when its header line appears; `startup` is
   the time before the first stage (imports, every check, Ray's start).
2. The same work by bnrep's own functions in this process, with no Ray, no
   Tune and no progress display, on the experiment and settings bnrep ran:
   - sweep: every trial of results/hparam_trials (its lr and momentum) trained
     with Trainer from the sweep's seed for the epochs it trained (ASHA stops
     some early);
   - grid: every model of results/training, its hyperparameters and seed;
   - analysis: the analysis' own task functions (extraction with the sparsity
     parts, each (model, layer) task, each CKA pair) on a copy of the trained
     models, writing their Parquet parts (a few ms each) to a second store.
   Each unit runs with the threads Ray gives a trial or task (--cpus-per-trial
   / --cpus-per-task, 1 by default: torch.set_num_threads). The plain wall
   time of a stage is the measured units list-scheduled, in bnrep's order, on
   the slots Ray runs at once (cores // cpus per trial): what a perfect
   scheduler with no overhead would take for the same work.
3. Checks that it is the same work: epochs per trial and model equal, and the
   accuracies and every analysis table equal bnrep's. sweep_epochs_trained
   counts the epochs bnrep's trials trained, sweep_epochs_in_rows those the
   plain sweep trains: more in the first when a trial trained on past a rung,
   waiting on a trial planned before it, and was stopped there
   (bnrep.stages.schedule).

Prints one JSON line per stage: bnrep's wall, the plain wall, their ratio, the
plain serial sum and the unit count, then a summary line with the load average
before and after.
"""

from __future__ import annotations

import argparse
import glob
import heapq
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch

from study import ANALYSIS_FLAGS, TRAIN_FLAGS, flags, write_fake_idx  # benchmarks/study.py (the script's folder)

HEADER = re.compile(r"^==== stage \d+/\d+: (\w+)")


# ==== 1. bnrep run ====
def bnrep_run(argv: list[str], log) -> dict[str, float]:
    """Wall seconds per stage of `bnrep run ARGV` (plus startup and total), from its header lines."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "bnrep", "run", *argv], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    marks = [("startup", t0)]
    for line in p.stdout:
        log.write(line)
        m = HEADER.match(line)
        if m:
            marks.append((m.group(1), time.perf_counter()))
    if p.wait():
        raise SystemExit(f"overhead: bnrep run failed (exit {p.returncode}); see the log")
    marks.append(("end", time.perf_counter()))
    walls = {name: marks[i + 1][1] - t for i, (name, t) in enumerate(marks[:-1])}
    walls["total"] = marks[-1][1] - t0
    return walls


# ==== 2. the same work, plain ====
def list_schedule(times: list[float], slots: int) -> float:
    """Makespan of `times` started in order, each on the first free slot."""
    free = [0.0] * max(1, slots)
    for t in times:
        heapq.heappush(free, heapq.heappop(free) + t)
    return max(free)


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def sweep_epochs_trained(out: str, experiment: str) -> int:
    """Epochs bnrep's sweep trials trained (the last iteration each reported to Tune). More than its
    rows say when a trial trained on past a rung while a trial planned before it had not reached it,
    and was then stopped there (bnrep.stages.schedule): work the plain process does not do."""
    total = 0
    for tdir in glob.glob(os.path.join(out, experiment, "hparam", "tune", "sweep", "*", "result.json")):
        with open(tdir) as f:
            total += max((json.loads(line).get("training_iteration", 0) for line in f if line.strip()), default=0)
    return total


def plain_sweep(exp, data, trials: pd.DataFrame) -> tuple[list[float], list[int]]:
    from bnrep.stages.hparam import SWEEP_SEED
    from bnrep.train import Trainer

    times, epochs = [], []
    for r in trials.sort_values("trial_id").itertuples() if "trial_id" in trials else trials.itertuples():
        hp = {"lr": r.lr, **({"momentum": r.momentum} if exp.optimizer == "sgd" else {})}

        def work():
            t = Trainer(exp, data, r.norm, hp, SWEEP_SEED, max_epochs=exp.sweep_max_epochs or exp.max_epochs)
            while not t.done and t.epoch < r.epochs:  # ASHA stopped some trials early: as many epochs
                t.step_epoch()
            return t.epoch

        s, e = timed(work)
        times.append(s)
        epochs.append(e)
    return times, epochs


def plain_grid(exp, data, models: pd.DataFrame, store) -> tuple[list[float], pd.DataFrame]:
    """Every model of the grid, in the order bnrep's grid starts them (bnrep.stages.final)."""
    from bnrep.stages.final import longest_first
    from bnrep.train import Trainer

    by = {(r.condition, int(r.seed)): r for r in models.itertuples()}
    grid = [{"norm": n, "seed": s} for s in range(exp.seeds) for n in exp.norms if (n, s) in by]
    times, rows = [], []
    for r in (by[g["norm"], g["seed"]] for g in longest_first(grid, store, paper=False)):
        hp = {"lr": r.lr, "momentum": r.momentum}

        def work():
            t = Trainer(exp, data, r.norm, hp, int(r.seed))
            while not t.done:
                t.step_epoch()
            return t.finish()

        s, res = timed(work)
        times.append(s)
        rows.append({"model_id": r.model_id, "epochs": res.epochs, "test_acc": res.test_acc,
                     "val_acc": res.val_acc, "train_acc": res.train_acc})
    return times, pd.DataFrame(rows)


def plain_analysis(exp, data, out: str) -> list[float]:
    """The analysis stage's task functions, one after another, as its plan lays them out."""
    from bnrep.config import table_hashes
    from bnrep.represent import AnalysisSamples, model_probes
    from bnrep.stages import analysis
    from bnrep.store import Store

    store = Store(out, exp.name)
    models = analysis.trained_models(store, exp)
    probes = model_probes(exp)
    samples = AnalysisSamples.draw(len(data.train), exp.samples_sparsity, exp.samples_cluster, exp.split_seed)
    hashes = table_hashes(exp)
    store.write_part("samples", "indices", samples.table(), hashes["samples"])
    todo = analysis.plan(store, exp, models, probes)
    images = data.train.X[torch.as_tensor(samples.order)]
    labels = data.train.y[torch.as_tensor(samples.indices("cluster"))].numpy()
    sample_labels = data.train.y[torch.as_tensor(samples.order)]
    rows = {r["model_id"]: r for r in models.to_dict("records")}
    times, arrays = [], {}
    for mid in sorted(todo.extract()):
        s, arrays[mid] = timed(lambda: analysis.extract(out, exp, rows[mid], images, sample_labels, samples.n_sparsity,
                                                        samples.n_cluster, probes, todo.models.get(mid, ()), hashes))
        times.append(s)
        at = {p.index: i for i, p in enumerate(probes)}
        for q, work in todo.layers.get(mid, []):
            times.append(timed(lambda: analysis.layer_task(out, exp, rows[mid], q, arrays[mid][at[q.index]], labels,
                                                           work, "torch", hashes))[0])
    at = {p.index: i for i, p in enumerate(probes)}
    for a, b, name, index, work in todo.pairs:
        times.append(timed(lambda: analysis.pair_task(out, exp, a, b, name, index, arrays[a["model_id"]][at[index]],
                                                      arrays[b["model_id"]][at[index]], samples.n_cluster,
                                                      work, hashes))[0])
    return times


def same_tables(a: str, b: str, names) -> list[str]:
    """The analysis tables that differ between two results roots (sorted rows, measured columns)."""
    from bnrep.store import TABLES

    differ = []
    for name in names:
        x, y = (pd.read_parquet(os.path.join(r, "results", name)) for r in (a, b))
        key = [c for c in TABLES[name].keys if c in x]
        x, y = (d.sort_values(key).reset_index(drop=True) for d in (x, y))
        try:
            pd.testing.assert_frame_equal(x, y[x.columns], check_exact=False, rtol=1e-5)
        except AssertionError:
            differ.append(name)
    return differ


# ==== main ====
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="digits-cnn")
    p.add_argument("--fake-data", action="store_true", help="synthetic 28x28 IDX files (MNIST-family presets)")
    p.add_argument("--fake-images", type=int, nargs=2, default=(8000, 2000), metavar=("TRAIN", "TEST"))
    p.add_argument("--keep", default=None, metavar="DIR", help="keep both results roots and the log here")
    for name in TRAIN_FLAGS + ANALYSIS_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=float if name.startswith("gpus") else int, default=None)
    a = p.parse_args()
    load_before = os.getloadavg()
    tmp = a.keep or tempfile.mkdtemp(prefix="bnrep-overhead-")
    os.makedirs(tmp, exist_ok=True)
    data_root = None
    if a.fake_data:
        data_root = os.path.join(tmp, "data")
        write_fake_idx(data_root, a.experiment.removesuffix("-cnn"), *a.fake_images)
    out = os.path.join(tmp, "bnrep")
    argv = ["--experiment", a.experiment, "--out", out, *flags(a, TRAIN_FLAGS + ANALYSIS_FLAGS)]
    argv += ["--data-root", data_root] if data_root else []
    with open(os.path.join(tmp, "run.log"), "w") as log:
        walls = bnrep_run(argv, log)

    from bnrep.config import load_experiment
    from bnrep.data import load_data
    from bnrep.store import Store, tables

    store = Store(out, a.experiment)
    exp = load_experiment(store)
    torch.set_num_threads(int(a.cpus_per_trial or 1))
    data = load_data(exp, data_root)
    slots = max(1, (os.cpu_count() or 1) // int(a.cpus_per_trial or 1))
    trials, models = store.read_table("hparam_trials"), store.read_table("training")

    sweep_t, sweep_epochs = plain_sweep(exp, data, trials)
    grid_t, grid = plain_grid(exp, data, models, store)
    want = models.set_index("model_id").loc[grid["model_id"]]
    same_epochs = (list(sweep_epochs) == [int(e) for e in (trials.sort_values("trial_id") if "trial_id" in trials
                                                           else trials)["epochs"]]
                   and list(grid["epochs"]) == [int(e) for e in want["epochs"]])
    same_acc = bool(np.allclose(grid["test_acc"], want["test_acc"], rtol=0, atol=1e-12))

    plain_out = os.path.join(tmp, "plain")
    for rel in ("config.json", "train/models", "results/training"):
        src, dst = os.path.join(out, a.experiment, rel), os.path.join(plain_out, a.experiment, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.isdir(src):
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)
    torch.set_num_threads(int(a.cpus_per_task or 1))
    analysis_t = plain_analysis(exp, data, plain_out)
    differ = same_tables(os.path.join(out, a.experiment), os.path.join(plain_out, a.experiment),
                         [t for t in tables("analysis") if t != "samples"])

    cpu = os.cpu_count()
    for stage, times in (("hparam", sweep_t), ("final", grid_t), ("analysis", analysis_t)):
        plain = list_schedule(times, slots)
        print(json.dumps({"stage": stage, "experiment": a.experiment, "bnrep_s": round(walls[stage], 1),
                          "plain_s": round(plain, 1), "ratio": round(walls[stage] / plain, 2),
                          "plain_serial_s": round(sum(times), 1), "units": len(times), "slots": slots}), flush=True)
    print(json.dumps({"summary": a.experiment, "bnrep_run_s": round(walls["total"], 1),
                      "startup_s": round(walls["startup"], 1), "report_s": round(walls.get("report", 0), 1),
                      "same_epochs": same_epochs, "sweep_epochs_in_rows": int(trials["epochs"].sum()),
                      "sweep_epochs_trained": sweep_epochs_trained(out, a.experiment),
                      "same_test_acc": same_acc, "analysis_tables_differ": differ,
                      "cpus": cpu, "load_before": [round(x, 2) for x in load_before],
                      "load_after": [round(x, 2) for x in os.getloadavg()]}), flush=True)
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
