"""What a trial's per-epoch checkpoint costs: bnrep's own trial loop with the training taken out.

    python benchmarks/checkpoint_cost.py                          # cnn and vgg16 on CPU, ~1 min on 2 cores
    python benchmarks/checkpoint_cost.py --device cuda --results 100

For each case of benchmarks/epoch_time.py (`cnn`: the mnist-cnn-shaped
StandardCNN, `vgg16`: the cifar10-vgg16-shaped VGG16, both with BatchNorm),
a Trainer is built and trained one small epoch (so that the optimiser holds
its state), on --device. Then, in one Tune run on a private Ray (one trial
at a time, one kept checkpoint, as bnrep's stages run them):

- `checkpoint`: bnrep.stages.tuning.train_in_tune, the loop every sweep trial
  and grid model runs, with a trainer whose epoch is free: each of --results
  epochs serialises the real trainer's state (Trainer.save_checkpoint: model,
  optimiser, RNG) and reports it to Tune with the epoch's metrics;
- `report`: the same metrics reported without a checkpoint.

Prints one JSON line per case: the checkpoint's size, its serialisation in
ms, and the ms per epoch of each mode measured inside the trial (what the
trial waits before its next epoch); `checkpoint_ms - report_ms` is what a
checkpoint every epoch adds to each epoch. Compare with the epoch's own time
(benchmarks/train_throughput.py, or the epochs of a run).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from epoch_time import CASES  # benchmarks/epoch_time.py (the script's folder)


def trainer_for(case: str, device: str):
    from bnrep.data import load_data
    from bnrep.experiments import get_experiment
    from bnrep.train import Trainer

    over, _ = CASES[case]
    exp = get_experiment("synthetic-cnn").override(**over, num_images=200, train_size=128, batch_size=64,
                                                   max_epochs=1, val_size=0.1)
    t = Trainer(exp, load_data(exp), "batch", {"lr": exp.lr, "momentum": exp.momentum}, 0, device=device)
    t.step_epoch()  # the optimiser's state exists from the first step on
    return t


class FreeEpochs:
    """A Trainer whose epochs cost nothing: `results` epochs, each returning the real trainer's last
    metrics and saving the real trainer's state."""

    def __init__(self, trainer, results: int):
        self.trainer, self.results, self.epoch = trainer, results, 0
        self.metrics = trainer.history[-1]
        self.times: list[float] = []
        self.since = time.perf_counter()

    @property
    def done(self) -> bool:
        return self.epoch >= self.results

    def step_epoch(self):
        now = time.perf_counter()
        if self.epoch:  # from the end of the last epoch to this one's start: the report (and checkpoint)
            self.times.append(now - self.since)
        self.epoch += 1
        self.since = time.perf_counter()
        return self.metrics

    def save_checkpoint(self) -> bytes:
        return self.trainer.save_checkpoint()

    def load_checkpoint(self, blob: bytes) -> None:
        raise AssertionError("a benchmark trial is never restored")


def trial(config: dict, case: str, device: str, results: int) -> None:
    from ray import tune

    from bnrep.stages.tuning import train_in_tune

    free = FreeEpochs(trainer_for(case, device), results)
    if config["mode"] == "checkpoint":
        train_in_tune(free)
    else:
        while not free.done:
            tune.report({**vars(free.step_epoch())})
    free.step_epoch()  # times the last report
    tune.report({"ms": 1000 * sum(free.times) / len(free.times), "mode": config["mode"]})


def measure(case: str, device: str, results: int) -> dict:
    from ray import tune

    t = trainer_for(case, device)
    blob = t.save_checkpoint()
    s = time.perf_counter()
    for _ in range(5):
        t.save_checkpoint()
    serialise_ms = 1000 * (time.perf_counter() - s) / 5
    with tempfile.TemporaryDirectory(prefix="bnrep-ckpt-") as storage:
        fn = tune.with_resources(tune.with_parameters(trial, case=case, device=device, results=results),
                                 {"cpu": 1, "gpu": 1 if device == "cuda" else 0})
        grid = tune.Tuner(fn, param_space={"mode": tune.grid_search(["report", "checkpoint"])},
                          tune_config=tune.TuneConfig(max_concurrent_trials=1),
                          run_config=tune.RunConfig(storage_path=storage, verbose=0,
                                                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1))).fit()
        ms = {r.metrics["mode"]: r.metrics["ms"] for r in grid}
    return {"case": case, "device": device, "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "checkpoint_mb": round(len(blob) / 2**20, 2), "serialise_ms": round(serialise_ms, 2),
            "report_ms": round(ms["report"], 2), "checkpoint_ms": round(ms["checkpoint"], 2),
            "results": results, "load_1m": round(os.getloadavg()[0], 2)}


def main() -> None:
    import ray

    from bnrep.raysession import QUIET_ENV

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="cnn,vgg16", help="comma-separated: " + ", ".join(CASES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--results", type=int, default=40, help="epochs reported per trial")
    a = p.parse_args()
    os.environ.update(QUIET_ENV)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.path.dirname(os.path.abspath(__file__))}})
    try:
        for case in a.cases.split(","):
            print(json.dumps(measure(case, a.device, a.results)), flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
