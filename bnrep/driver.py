"""What every stage script shares: flags, the resolved experiment, the
configuration check that keeps results of different configurations apart,
and the Ray connection.

This is the command-line layer (used by sweeps/, analysis/ and bnrep.cli);
the rest of bnrep is a library with no argparse and no Ray.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import bnrep
from bnrep.data import DataError
from bnrep.experiments import DEFAULT_EXPERIMENT, SMOKE, ConfigError, Experiment, PRESETS, get_experiment
from bnrep.store import Store, git_commit, is_uri

# Fields that change what the analysis stage computes but not the models.
ANALYSIS_FIELDS = ("samples_sparsity", "samples_cluster", "k_min", "k_max", "n_init", "eps")
# Fields that change neither (more seeds only add models; figures only choose layers).
FREE_FIELDS = ("description", "seeds", "channel_layers", "first_shown_layer")


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2, before any work."""


def stage_hashes(exp: Experiment) -> dict[str, str]:
    d = exp.to_dict()
    for f in FREE_FIELDS:
        d.pop(f)
    train = {k: v for k, v in d.items() if k not in ANALYSIS_FIELDS}

    def h(x):
        return hashlib.sha256(json.dumps(x, sort_keys=True, default=list).encode()).hexdigest()[:12]

    return {"train_hash": h(train), "analysis_hash": h(d)}


# ==== flags ====
def add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, metavar="NAME",
                   help=f"experiment preset (default: {DEFAULT_EXPERIMENT}; valid: {', '.join(PRESETS)})")
    p.add_argument("--out", default="./runs", metavar="PATH|URI",
                   help="results root, a local path or s3:// gs:// file:// URI (default: ./runs)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="join this Ray cluster (default: $RAY_ADDRESS, else a private local Ray)")
    p.add_argument("--smoke-test", action="store_true",
                   help="tiny everything (few epochs, trials, seeds and samples): seconds per stage")
    p.add_argument("--fresh", action="store_true",
                   help="delete this stage's earlier results (and what depends on them) and start over")


def add_training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="where torchvision datasets live (default: $BNREP_DATA or ~/.cache/bnrep/data)")
    p.add_argument("--seeds", type=int, default=None, metavar="N", help="model seeds 0..N-1 (default: preset, 4)")
    p.add_argument("--max-epochs", type=int, default=None, metavar="N", help="epoch cap per model (default: preset)")
    p.add_argument("--num-samples", type=int, default=None, metavar="N",
                   help="hparam trials per BatchNorm setting (default: preset)")
    p.add_argument("--train-size", type=int, default=None, metavar="N",
                   help="train on the first N images of the seeded training split (default: all)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="images per step (default: preset, 64)")
    p.add_argument("--lr", type=float, default=None, help="learning rate for --paper-hparams runs (default: preset)")
    p.add_argument("--momentum", type=float, default=None, help="SGD Nesterov momentum (default: preset)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="N", help="CPUs per Tune trial (default: 1)")
    p.add_argument("--gpus-per-trial", type=float, default=None, metavar="F",
                   help="GPUs per Tune trial, fractions allowed (default: 1 if the cluster has GPUs, else 0)")
    p.add_argument("--max-failures", type=int, default=3, metavar="N",
                   help="retries of a failed trial from its last checkpoint (default: 3)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on GPU (ignored on CPU)")


def add_analysis_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples-sparsity", type=int, default=None, metavar="N",
                   help="training images for sparsity (default: preset, 5000)")
    p.add_argument("--samples-cluster", type=int, default=None, metavar="N",
                   help="training images for clustering (default: preset, 15000)")
    p.add_argument("--k-min", type=int, default=None, help="smallest k of the k-means sweep (default: 2)")
    p.add_argument("--k-max", type=int, default=None, help="largest k of the k-means sweep (default: 15)")
    p.add_argument("--n-init", type=int, default=None, help="k-means restarts per k (default: preset)")
    p.add_argument("--eps", type=float, default=None, help="|x| <= eps counts as zero (default: 0, the paper's)")
    p.add_argument("--kmeans-backend", choices=("torch", "sklearn"), default="torch",
                   help="batched torch k-means (default) or scikit-learn's KMeans per k")
    p.add_argument("--cpus-per-task", type=float, default=1.0, metavar="N", help="CPUs per analysis task (default: 1)")
    p.add_argument("--gpus-per-task", type=float, default=None, metavar="F",
                   help="GPUs per extraction task, fractions allowed (default: 1 if the cluster has GPUs, else 0)")


OVERRIDE_FLAGS = {  # flag attribute -> Experiment field
    "seeds": "seeds", "max_epochs": "max_epochs", "num_samples": "num_samples", "train_size": "train_size",
    "batch_size": "batch_size", "lr": "lr", "momentum": "momentum",
    "samples_sparsity": "samples_sparsity", "samples_cluster": "samples_cluster",
    "k_min": "k_min", "k_max": "k_max", "n_init": "n_init", "eps": "eps",
}


def absolute_data_root(args: argparse.Namespace) -> None:
    """Ray workers and Tune trials run in other directories: make --data-root absolute."""
    if getattr(args, "data_root", None) and not is_uri(args.data_root):
        args.data_root = os.path.abspath(os.path.expanduser(args.data_root))


def resolve_experiment(args: argparse.Namespace) -> Experiment:
    """Preset, then --smoke-test, then explicit flags; validated (ConfigError)."""
    absolute_data_root(args)
    exp = get_experiment(args.experiment)
    if args.smoke_test:
        exp = exp.override(**SMOKE)
        if exp.sweep_max_epochs and exp.sweep_max_epochs > exp.max_epochs:
            exp = exp.override(sweep_max_epochs=exp.max_epochs)
    flags = {field: getattr(args, a, None) for a, field in OVERRIDE_FLAGS.items()}
    if flags.get("lr") is not None:  # an explicit lr applies to both BatchNorm settings
        flags["lr_nobn"] = flags["lr"]
    exp = exp.override(**flags)
    if exp.sweep_max_epochs and exp.sweep_max_epochs > exp.max_epochs:
        exp = exp.override(sweep_max_epochs=exp.max_epochs)
    return exp


def with_trained_config(store: Store, exp: Experiment) -> Experiment:
    """The analysis of existing models: training fields as they were trained
    (config.json), analysis fields from this run's preset and flags."""
    if not store.exists("config.json"):
        return exp
    trained = Experiment.from_dict(store.read_json("config.json")["experiment"])
    return trained.override(**{f: getattr(exp, f) for f in ANALYSIS_FIELDS})


def open_training_stage(args: argparse.Namespace, stage: str) -> tuple[Experiment, Store, dict]:
    """Every check of a training stage ('hparam' or 'final'), before Ray starts:
    (experiment, store, the configuration record to write once work starts)."""
    from bnrep.data import check_data

    check_positive(args, "seeds", "max_epochs", "num_samples", "train_size", "batch_size", "cpus_per_trial")
    exp = resolve_experiment(args)
    check_data(exp, args.data_root)
    store = open_store(args, exp)
    return exp, store, prepare(store, exp, stage, args.fresh)


def check_positive(args: argparse.Namespace, *names: str) -> None:
    for n in names:
        v = getattr(args, n, None)
        if v is not None and v <= 0:
            raise UsageError(f"--{n.replace('_', '-')} must be > 0, got {v}")
    for n in ("gpus_per_trial", "gpus_per_task"):
        v = getattr(args, n, None)
        if v is not None and v < 0:
            raise UsageError(f"--{n.replace('_', '-')} must be >= 0, got {v}")


# ==== the results directory and its configuration ====
def open_store(args: argparse.Namespace, exp: Experiment) -> Store:
    """The experiment's store, checked writable without creating anything
    (UsageError otherwise), so a refused run leaves --out as it was."""
    store = Store(args.out, exp.name)
    try:
        if store.local_path() is not None:
            _check_local_writable(Path(store.local_path()))
        else:  # object stores have no directories: a probe object, then gone
            probe = f".write-probe-{os.getpid()}"
            store.write_bytes(probe, b"")
            store.delete(probe)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot write to --out {args.out}: {str(e).splitlines()[0]}") from None
    return store


def _check_local_writable(path: Path) -> None:
    while not path.exists():  # the nearest existing ancestor must be a writable directory
        path = path.parent
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{path} is not writable")


ANALYSIS_TABLES = ("samples", "channel_sparsity", "layer_sparsity", "class_dbi", "kmeans")
# What --fresh deletes for each stage: its own outputs and everything downstream.
FRESH = {
    "hparam": ("hparam", "train", "results", "report", "config.json"),
    "final": ("train", "results/training", "results/training_history", "report",
              *(f"results/{t}" for t in ANALYSIS_TABLES)),
    "analysis": ("report", *(f"results/{t}" for t in ANALYSIS_TABLES)),
}


def prepare(store: Store, exp: Experiment, stage: str, fresh: bool) -> dict:
    """--fresh: delete the stage's earlier outputs; otherwise refuse to mix
    results of a different configuration. Returns the configuration record
    to write (write_config) once the stage starts work."""
    hashes = stage_hashes(exp)
    record = {"experiment": exp.to_dict(), **hashes, "bnrep_version": bnrep.__version__,
              "git_commit": git_commit(), "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if fresh:
        for rel in FRESH[stage]:
            store.delete(rel)
        return record
    if not store.exists("config.json"):
        return record
    old = store.read_json("config.json")
    keys = ["train_hash"] + (["analysis_hash"] if stage == "analysis" else [])
    for key in keys:
        if old.get(key) != hashes[key]:
            diff = describe_diff(old.get("experiment", {}), exp.to_dict())
            what = "training" if key == "train_hash" else "analysis"
            raise UsageError(
                f"{store.out}/{exp.name} holds {what} results of a different configuration ({diff}); "
                f"use another --out, the same flags as before, or --fresh to start over")
    return record


def describe_diff(old: dict, new: dict) -> str:
    changed = [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in new
               if k not in FREE_FIELDS and json.dumps(old.get(k), default=list) != json.dumps(new[k], default=list)]
    return ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "") if changed else "config hash differs"


def write_config(store: Store, record: dict) -> None:
    old = store.read_json("config.json") if store.exists("config.json") else {}
    store.write_json("config.json", {**old, **record})


def print_header(stage: str, exp: Experiment, store: Store) -> None:
    commit = git_commit() or "unknown commit"
    print(f"bnrep {bnrep.__version__} ({commit}) | {stage} | experiment {exp.name} -> {store.out}/{exp.name}")
    print("config: " + json.dumps({k: v for k, v in exp.to_dict().items() if k != "description"},
                                  default=list, separators=(",", ":")), flush=True)


# ==== Ray ====
@contextlib.contextmanager
def ray_session(address: str | None):
    """Join `address` / $RAY_ADDRESS, or start a private local Ray; shut down
    only what this process started. The dashboard is never started here."""
    import ray

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    quiet = {"log_to_driver": True, "configure_logging": True, "logging_level": "WARNING"}
    address = address or os.environ.get("RAY_ADDRESS")
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(include_dashboard=False, **quiet)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def check_shared_out(ray, store: Store) -> None:
    """Warn when a multi-node cluster writes to a local path: every node must
    see the same results (a shared mount at that path, or an s3:// gs:// URI)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and not is_uri(store.out):
        print(f"warning: --out {store.out} is a local path on a {len(nodes)}-node cluster; it must be "
              "a filesystem shared by every node at that path, else use an s3:// or gs:// URI", flush=True)


def node_id() -> str:
    """The Ray node this task or trial runs on ('' outside Ray): provenance."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def default_gpus(ray, requested: float | None) -> float:
    """GPUs per trial/task: the flag, else 1 when the cluster has GPUs, else 0."""
    if requested is not None:
        return requested
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def main_guard(fn, argv=None) -> int:
    """Run a stage's main: bad input -> one line on stderr, exit 2."""
    try:
        return fn(argv) or 0
    except (UsageError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130


def tune_progress(stage: str, total: int, describe):
    """A Tune callback printing one line per finished trial (instead of Tune's
    tables); `describe(last_result) -> str` says what the trial achieved."""
    import time

    from ray import tune

    class Progress(tune.Callback):
        def __init__(self):
            self.done, self.t0 = 0, time.time()

        def _line(self, trial, what: str) -> None:
            self.done += 1
            print(f"[{stage}] {self.done}/{total} {what} ({time.time() - self.t0:.0f} s)", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trial, describe(trial.last_result or {}))

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, f"trial {trial.trial_id} failed: see {trial.local_path or 'the Tune logs'}")

    return Progress()


# ==== inside a Tune trial ====
def trial_dirname(trial) -> str:
    """Short trial directory names (Tune's default spells out the whole config)."""
    return trial.trial_id

CHECKPOINT_FILE = "trainer.pt"


def train_in_tune(trainer, extra: dict | None = None, checkpoint_every: int = 1) -> int:
    """Run `trainer` to its stopping rule inside a Tune trial: resume from the
    trial's last checkpoint if Tune restarted it, report every epoch with a
    checkpoint so a failed trial loses at most one epoch. Returns the epoch it
    resumed from (0: a fresh start)."""
    import tempfile

    from ray import tune

    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # one line per checkpoint
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d, open(os.path.join(d, CHECKPOINT_FILE), "rb") as f:
            trainer.load_checkpoint(f.read())
    resumed_from = trainer.epoch
    while not trainer.done:
        m = trainer.step_epoch()
        metrics = {**vars(m), **(extra or {}), "node_id": node_id(),
                   "stopped": trainer.done}  # not "done": Tune would end the trial
        if trainer.epoch % checkpoint_every and not trainer.done:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, CHECKPOINT_FILE), "wb") as f:
                f.write(trainer.save_checkpoint())
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
    return resumed_from
