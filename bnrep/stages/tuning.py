"""What both training stages (sweep and grid) share: the checks before Ray
starts, and the loop a Tune trial runs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time

from bnrep.config import RunOptions, UsageError, command, is_imported, open_store, prepare
from bnrep.data import Data, check_data, load_data
from bnrep.progress import FAILED_AGAIN, failed_again
from bnrep.represent import model_probes
from bnrep.experiments import Experiment
from bnrep.raysession import placement
from bnrep.store import NO_WRITE, Store, StoreWriteError, cannot_write, storage_error

CHECKPOINT_FILE = "trainer.pt"
SNAPSHOTS_FILE = "snapshots.json"  # epoch -> sha256 of the snapshot files written so far
FAILURES = "bnrep-failures"  # beside a Tune run's local folders: each trial's last failure (failed_before)
# A trial's worker imports this module when it unpickles the trial, before Tune restores a restarted
# trial: that restart is a line of bnrep's progress (bnrep.progress), not Tune's "Restored on ... from
# checkpoint" on the console.
logging.getLogger("ray.tune.trainable.trainable").setLevel(logging.WARNING)


def training_data(exp: Experiment, opts: RunOptions, stage: str, conditions) -> Data:
    """The data the trials of `conditions` train on, loaded once in the driver. A condition whose batch size
    is above the training split trains one step on all of it per epoch: said under the stage's lines (it
    runs, as asked, but the number it is labelled with does not apply)."""
    data = load_data(exp, opts.data_root)
    n, over = len(data.train), {}
    for c in conditions:
        if (b := exp.for_condition(c).batch_size) > n:
            over.setdefault(b, []).append(c)
    for b, names in over.items():
        print(f"[{stage}] note: batch size {b} ({', '.join(names)}) is above the {n} training images: each epoch "
              f"is one step on all of them", flush=True)
    return data


def open_training_stage(exp: Experiment, opts: RunOptions, stage: str) -> tuple[Store, dict]:
    """Every check of a training stage ('hparam' or 'final') before Ray starts:
    (store, the configuration record to write once work starts)."""
    check_data(exp, opts.data_root)
    model_probes(exp)  # the model builds under every norm, takes the data and has activations to measure
    store = open_store(opts.out, exp)
    refuse_imported(store, stage)
    return store, prepare(store, exp, stage, opts.fresh)


def refuse_imported(store: Store, stage: str) -> None:
    """An experiment of imported models has no grid to sweep or train (UsageError)."""
    if is_imported(store):
        raise UsageError(f"{store.out}/{store.experiment} holds imported models (bnrep import): there is no grid "
                         f"to {'sweep' if stage == 'hparam' else 'train'}; measure them with "
                         f"`{command('analysis', store.experiment, store.out)}`, or train in another experiment")


def trial_dirname(trial) -> str:
    """Short trial directory names (Tune's default spells out the whole config)."""
    return trial.trial_id


TENSORBOARD = "events.out.tfevents"  # the prefix of a trial's TensorBoard event files (Tune's TBXLoggerCallback)


def keep_tensorboard(store: Store, rel: str) -> None:
    """Before a new Tune run replaces the one under `rel`: its trials' TensorBoard event files move to
    <rel's folder>/earlier/<k>/<trial folder> (k = 1, 2, ...), so that `tensorboard --logdir` on the stage's
    tune folder still shows the models and trials of earlier runs (a condition added later trains only its own)."""
    from pyarrow import fs as pafs

    found = store.fs.get_file_info(pafs.FileSelector(store.path(rel), allow_not_found=True))
    trials = {i.base_name: [n for n in store.list_dir(f"{rel}/{i.base_name}") if n.startswith(TENSORBOARD)]
              for i in found if i.type == pafs.FileType.Directory}
    trials = {t: names for t, names in trials.items() if names}
    if not trials:
        return
    earlier = f"{rel.rsplit('/', 1)[0]}/earlier"
    k = 1 + max((int(n) for n in store.list_dir(earlier) if n.isdigit()), default=0)
    for t, names in trials.items():
        store.mkdir(f"{earlier}/{k}/{t}")
        for n in names:
            store.fs.move(store.path(f"{rel}/{t}/{n}"), store.path(f"{earlier}/{k}/{t}/{n}"))


def train_in_tune(trainer, extra: dict | None = None, snapshots=(), keep=None, folder: str | None = None,
                  every: float = 0.0, clock=time.monotonic) -> tuple[int, dict[int, str]]:
    """Run `trainer` to its stopping rule inside a Tune trial: resume from the
    trial's last checkpoint if Tune restarted it, report every epoch (the
    stopping rules read each), with a checkpoint after the first epoch that
    ends `every` seconds (`clock`) after the trial began or resumed or last
    checkpointed (0: after every epoch), so a failed trial loses at most
    `every` seconds of training plus one epoch (a checkpoint's cost, the
    state's serialisation and Tune's copy of it: benchmarks/checkpoint_cost.py).
    After each epoch in `snapshots`, `keep(epoch, model)` saves the weights
    and returns their sha256; the digests travel in the checkpoint, so a
    resumed trial still has those of the epochs before it. Returns the epoch
    it resumed from (0: a fresh start) and the digests, epoch -> sha256. A
    checkpoint that the results' disk refuses (full, read-only) is
    StoreWriteError naming `folder` (the Tune run's folder there), not a
    failure for Tune to retry. An epoch that fails as it failed on the
    trial's last try (the same epoch, the same error) is RepeatedFailure: the
    training is seeded, so Tune's next try would fail the same way."""
    from ray import tune

    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # one line per checkpoint
    digests: dict[int, str] = {}
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            with open(os.path.join(d, CHECKPOINT_FILE), "rb") as f:
                trainer.load_checkpoint(f.read())
            if os.path.exists(os.path.join(d, SNAPSHOTS_FILE)):
                with open(os.path.join(d, SNAPSHOTS_FILE)) as f:
                    digests = {int(e): h for e, h in json.load(f).items()}
    resumed_from, last = trainer.epoch, clock()
    while not trainer.done:
        epoch = trainer.epoch + 1  # (step_epoch counts it before its evaluation, which may be what raises)
        try:
            m = trainer.step_epoch()
        except Exception as e:  # noqa: BLE001 - Tune retries it, unless this try repeats the last
            if failed_before(epoch, e):  # its first line: a CUDA error's last is advice on compiling torch
                raise RepeatedFailure(epoch, f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"[:300]) from e
            raise
        if trainer.epoch in snapshots:
            digests[trainer.epoch] = keep(trainer.epoch, trainer.model)
        metrics = {**vars(m), **(extra or {}), **placement(),
                   "stopped": trainer.done}  # not "done": Tune would end the trial
        if clock() - last < every:
            tune.report(metrics)
            continue
        last = clock()
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, CHECKPOINT_FILE), "wb") as f:
                f.write(trainer.save_checkpoint())
            if digests:
                with open(os.path.join(d, SNAPSHOTS_FILE), "w") as f:
                    json.dump(digests, f)
            try:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
            except OSError as e:  # Tune's copy of the checkpoint into the results: a full disk fails every retry
                if e.errno not in NO_WRITE:
                    raise
                raise cannot_write(folder or e.filename, os.strerror(e.errno)) from None
    return resumed_from, digests


class RepeatedFailure(Exception):
    """A trial's epoch failed as it did on the trial's last try: the same epoch, the same error. Training
    is seeded (the batch order travels in the checkpoint), so a further try fails alike; the trial
    reports FAILED_AGAIN instead of raising for Tune to retry it."""

    def __init__(self, epoch: int, error: str):
        super().__init__(epoch, error)
        self.epoch, self.error = epoch, error

    def result(self) -> dict:
        """The trial's last result: what the stage and its progress display read."""
        return {FAILED_AGAIN: self.error, "failed_epoch": self.epoch}


def failed_before(epoch: int, e: Exception) -> bool:
    """Whether this Tune trial's last try failed in `epoch` with the error `e` (its type and message);
    records this failure for the next try. The record is a file on the trial's node, beside Tune's local
    folders of the run (a trial's try runs in <run>/working_dirs/<trial> or <run>/driver_artifacts/<trial>):
    a try restarted on another node (its node lost) has its full --max-failures."""
    from ray import tune

    trial_dir = os.path.normpath(tune.get_context().get_trial_dir())
    folder = os.path.join(os.path.dirname(os.path.dirname(trial_dir)), FAILURES)
    path = os.path.join(folder, os.path.basename(trial_dir) + ".json")
    now = {"epoch": epoch, "error": f"{type(e).__name__}: {e}"}
    try:
        with open(path, encoding="utf-8") as f:
            before = json.load(f)
    except (OSError, ValueError):
        before = None
    with contextlib.suppress(OSError):  # unrecorded (a full disk): the next try is Tune's, as before
        os.makedirs(folder, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(now, f)
    return before == now


def tune_state_problem(store: Store, rel: str, param_space: dict | None = None) -> str | None:
    """Why the Tune state under `rel` cannot resume the run it belongs to, or
    None when Tuner.restore can use it (with `param_space`, when given: Tune
    takes only a space with the same keys).

    Tune copies its state files and checkpoints to storage with plain writes,
    in the background: a run killed mid-copy leaves a truncated file, or a
    state naming a checkpoint that was already replaced. Tune meets either by
    starting over with an empty configuration; bnrep checks first, and starts
    the stage's unfinished work anew instead."""
    import pickle

    from pyarrow import fs as pafs
    from ray.tune import ExperimentAnalysis

    names = store.list_dir(rel)
    try:  # (bnrep.raysession quiets ExperimentAnalysis' warning about trials with no result yet)
        tuner = pickle.loads(store.read_bytes(f"{rel}/tuner.pkl"))
        keys = tuner.get("__flattened_param_space_keys")
        scheduler = getattr(tuner.get("_tune_config"), "scheduler", None)
        # the searcher's state (basic-variant-state-<time>.json, a pickle): the newest of each kind
        for prefix in {n.split("-", 1)[0] for n in names if n.endswith(".json")} - {"experiment_state"}:
            pickle.loads(store.read_bytes(f"{rel}/{max(n for n in names if n.startswith(prefix + '-'))}"))
        trials = ExperimentAnalysis(store.uri(rel)).trials
    except Exception as e:  # a truncated or missing file: what a kill mid-copy leaves
        first = (str(e).splitlines() or [""])[0][:120]
        return f"its state does not load: {type(e).__name__}: {first}"
    if param_space is not None and keys is not None and keys != flat_keys(param_space):
        return f"it searched other keys ({', '.join(keys)})"
    version = getattr(type(scheduler), "STATE_VERSION", None)  # a scheduler whose state Tune restores
    if version is not None and getattr(scheduler, "state_version", 1) != version:
        return "an earlier bnrep began it, with a scheduler that keeps other state"
    for t in trials:
        c = t.checkpoint
        if t.status != "TERMINATED" and c is not None and c.filesystem.get_file_info(c.path).type == pafs.FileType.NotFound:
            return f"trial {t.trial_id}'s last checkpoint {c.path} is gone"
        if failed_again(t.last_result):  # restored, it stays ended (forget_repeated, for a run stopped before it)
            return f"trial {t.trial_id} ended after its epoch failed twice alike"
    return None


def can_resume(store: Store, rel: str, param_space: dict, label: str, what: str, otherwise: str) -> bool:
    """Whether Tuner.restore can resume the Tune run under `rel`. When its state
    is there but cannot be used, says so in one line: `otherwise` is what the
    stage does instead."""
    if not store.exists(rel, "tuner.pkl"):
        return False
    problem = tune_state_problem(store, rel, param_space)
    if problem:
        print(f"{label} cannot resume the interrupted {what} in {store.uri(rel)} ({problem}): {otherwise}", flush=True)
    return problem is None


def flat_keys(space: dict, prefix: str = "") -> list[str]:
    """The sorted '/'-joined key paths of a param_space, as Tune records them in tuner.pkl."""
    return sorted(k for name, v in space.items()
                  for k in (flat_keys(v, f"{prefix}{name}/") if isinstance(v, dict) else [f"{prefix}{name}"]))


def fit(tuner, store: Store, rel: str):
    """tuner.fit(); a failure of Tune's own writes under `rel` (a full disk) is StoreWriteError, one line."""
    try:
        return tuner.fit()
    except Exception as e:  # noqa: BLE001 - what is not a write error is raised as it was
        err = storage_error(e, store, rel)
        if err is None:
            raise
        raise err from None


def tune_config(**kwargs):
    """Tune's TuneConfig for a bnrep stage: short trial directories, and trials that reuse the worker
    process of a finished one. A new process per trial imports Ray Tune's trainable, torch and bnrep
    (about 2 s of CPU, once 9 s with scikit-learn and torch._dynamo): more than a digits-cnn model
    with BatchNorm trains (benchmarks/overhead.py)."""
    from ray import tune

    return tune.TuneConfig(**{"trial_dirname_creator": trial_dirname, "reuse_actors": True, **kwargs})


def run_config(opts: RunOptions, name: str, storage: str, callback, stop=None):
    """Tune's RunConfig for a bnrep stage: quiet, one checkpoint kept, retries; `stop`: a Stopper."""
    from ray import tune

    return tune.RunConfig(name=name, storage_path=storage, verbose=0, callbacks=[callback], stop=stop,
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                          failure_config=tune.FailureConfig(max_failures=opts.max_failures))


WRITE_FAILED = "write_failed"  # a trial's last result: the results directory refused a write (its one line)


def raise_write_failed(results, store: Store, plan: str) -> None:
    """The one line of a trial that reported WRITE_FAILED (the others were stopped, none retried), as
    StoreWriteError; its plan deleted, so the rerun starts the run anew (a restored one would end as this
    one did)."""
    failed = next((r.metrics[WRITE_FAILED] for r in results if (r.metrics or {}).get(WRITE_FAILED)), None)
    if failed:
        with contextlib.suppress(OSError, StoreWriteError):
            store.delete(plan)
        raise StoreWriteError(failed)


def forget_repeated(results, store: Store, plan: str) -> None:
    """A trial whose epoch failed twice alike (RepeatedFailure) ended, where a failed one erred: the Tune run
    restored would not train it again, once its model's code is fixed. So the run's plan is deleted, and
    the rerun starts the stage's unfinished work anew (models saved are kept; seeded, the same trials)."""
    if any(failed_again(r.metrics) for r in results):
        with contextlib.suppress(OSError, StoreWriteError):
            store.delete(plan)


class WriteFailed:
    """Tune's stop rule (a function of a trial's result): once a trial reports WRITE_FAILED (a full disk, a
    denied write), every trial stops at its next result (a trial that had not started: after its first
    epoch). Raised as an error, the write would be retried (FailureConfig) and fail again, each retry
    after training the model anew."""

    def __init__(self):
        self.failed = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.failed = self.failed or bool(result.get(WRITE_FAILED))
        return self.failed
