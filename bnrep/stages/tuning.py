"""What both training stages (sweep and grid) share: the checks before Ray
starts, and the loop a Tune trial runs."""

from __future__ import annotations

import logging
import os
import tempfile

from bnrep.config import RunOptions, open_store, prepare
from bnrep.data import check_data
from bnrep.experiments import Experiment
from bnrep.raysession import placement
from bnrep.store import Store

CHECKPOINT_FILE = "trainer.pt"


def open_training_stage(exp: Experiment, opts: RunOptions, stage: str) -> tuple[Store, dict]:
    """Every check of a training stage ('hparam' or 'final') before Ray starts:
    (store, the configuration record to write once work starts)."""
    check_data(exp, opts.data_root)
    store = open_store(opts.out, exp)
    return store, prepare(store, exp, stage, opts.fresh)


def trial_dirname(trial) -> str:
    """Short trial directory names (Tune's default spells out the whole config)."""
    return trial.trial_id


def train_in_tune(trainer, extra: dict | None = None) -> int:
    """Run `trainer` to its stopping rule inside a Tune trial: resume from the
    trial's last checkpoint if Tune restarted it, report every epoch with a
    checkpoint so a failed trial loses at most one epoch. Returns the epoch it
    resumed from (0: a fresh start)."""
    from ray import tune

    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # one line per checkpoint
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d, open(os.path.join(d, CHECKPOINT_FILE), "rb") as f:
            trainer.load_checkpoint(f.read())
    resumed_from = trainer.epoch
    while not trainer.done:
        m = trainer.step_epoch()
        metrics = {**vars(m), **(extra or {}), **placement(),
                   "stopped": trainer.done}  # not "done": Tune would end the trial
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, CHECKPOINT_FILE), "wb") as f:
                f.write(trainer.save_checkpoint())
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
    return resumed_from


def run_config(opts: RunOptions, name: str, storage: str, callback):
    """Tune's RunConfig for a bnrep stage: quiet, one checkpoint kept, retries."""
    from ray import tune

    return tune.RunConfig(name=name, storage_path=storage, verbose=0, callbacks=[callback],
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                          failure_config=tune.FailureConfig(max_failures=opts.max_failures))
