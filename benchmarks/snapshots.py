"""What snapshots cost the analysis: one trained grid, analysed with and without --snapshots, interleaved.

    python benchmarks/snapshots.py                                        # digits-cnn-norms, ~6 min on 2 cores
    python benchmarks/snapshots.py --experiment digits-cnn --snapshots 0,1 --repeats 1 --smoke-test   # a check

1. `bnrep final --paper-hparams --snapshots S` trains the grid once into a
   temporary --out, keeping the snapshot epochs (with --paper-hparams: no sweep).
2. `bnrep analysis --fresh` then runs --repeats times each way, alternating: the
   final models only, and with `--snapshots S` (and --snapshot-kmeans when given).
   Each run is a subprocess as a user types it; its wall time includes Ray's start.

Prints one JSON line per analysis run (wall seconds, tasks, the task phase's seconds
from the progress line, load average before and after), then a summary: the mean
wall each way, seconds per snapshot epoch and per (model, epoch) measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

TASKS = re.compile(r"(\d+) models \(.*?\) x \d+ layers; \d+ models complete, (\d+) tasks to run|"
                   r"(\d+) models x \d+ layers; \d+ models complete, (\d+) tasks to run")
PHASE = re.compile(r"tasks done \((\d+) s\)")
STOPPED = re.compile(r"note: (\d+) of \d+ models stopped training before epoch (\d+)")


def bnrep(stage: str, argv: list[str]) -> tuple[float, str]:
    """Run `python -m bnrep STAGE ARGV`; (wall seconds, its output). A failure ends the benchmark."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "bnrep", stage, *argv], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"bnrep {stage} failed ({r.returncode}): {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    return wall, r.stdout


def load() -> float:
    return os.getloadavg()[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="digits-cnn-norms")
    p.add_argument("--snapshots", default="0,1,2,5", metavar="LIST")
    p.add_argument("--snapshot-kmeans", action="store_true", help="the k-means sweep at the snapshots too")
    p.add_argument("--repeats", type=int, default=2, help="analysis runs each way (default 2)")
    p.add_argument("--smoke-test", action="store_true", help="bnrep's tiny settings (a check, not a figure)")
    a = p.parse_args()
    common = ["--experiment", a.experiment, *(["--smoke-test"] if a.smoke_test else [])]
    with tempfile.TemporaryDirectory(prefix="bnrep-snapshots-") as out:
        wall, log = bnrep("final", [*common, "--paper-hparams", "--snapshots", a.snapshots, "--out", out])
        print(json.dumps({"stage": "final", "wall_s": round(wall, 1), "snapshots": a.snapshots}), flush=True)
        ways = {"final only": [], "with snapshots": []}
        asked = ["--snapshots", a.snapshots, *(["--snapshot-kmeans"] if a.snapshot_kmeans else [])]
        for i in range(a.repeats):
            for way, extra in (("final only", []), ("with snapshots", asked)):
                before = load()
                wall, log = bnrep("analysis", [*common, "--fresh", *extra, "--out", out])
                m, phase = TASKS.search(log), PHASE.findall(log)
                row = {"run": i + 1, "way": way, "wall_s": round(wall, 1),
                       "models": int(m.group(1) or m.group(3)), "tasks": int(m.group(2) or m.group(4)),
                       "task_phase_s": int(phase[-1]) if phase else None,
                       "load_before": round(before, 2), "load_after": round(load(), 2)}
                row["stopped_before"] = {int(e): int(n) for n, e in STOPPED.findall(log)}
                ways[way].append(row)
                print(json.dumps(row), flush=True)
    base, snap = (sum(r["wall_s"] for r in ways[w]) / a.repeats for w in ways)
    epochs = [int(e) for e in a.snapshots.split(",")]
    last = ways["with snapshots"][-1]
    units = sum(last["models"] - last["stopped_before"].get(e, 0) for e in epochs)
    print(json.dumps({"summary": a.experiment, "final_only_s": round(base, 1), "with_snapshots_s": round(snap, 1),
                      "per_snapshot_epoch_s": round((snap - base) / len(epochs), 2),
                      "per_model_epoch_s": round((snap - base) / max(units, 1), 3), "model_epochs": units}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
