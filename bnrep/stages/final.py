"""Stage 2: train the seed x condition grid with Ray Tune (a condition: a normalisation, bnrep.axis).

Each model trains to its preset's stopping rule, reporting a checkpoint to
Tune every epoch; a failed trial (a node lost) restarts from its last
checkpoint (FailureConfig), an interrupted grid resumes with Tuner.restore.

Writes, under <out>/<experiment>/:
    train/models/<model_id>/model.pt       weights, preset, hparams, metrics (bnrep.checkpoints)
    train/models/<model_id>/epoch-<e>.pt   the weights after epoch e, for each --snapshots epoch it reached
    results/training/<model_id>.parquet    one row per model; its metadata holds model.pt's sha256
    results/training_history/<model_id>.parquet   one row per epoch
"""

from __future__ import annotations

import contextlib
import math
import re

import pandas as pd

from bnrep.checkpoints import (damage, is_trained, save_model, save_snapshot, saved_snapshots, snapshot_record,
                               weights_sha256)
from bnrep.config import (RunOptions, StageFailed, UsageError, command, header, same_hparams, stage_hashes, start_fresh,
                          write_config)
from bnrep.data import Data
from bnrep.experiments import Experiment
from bnrep.lock import writer_lock
from bnrep.models import model_id
from bnrep.norms import SHORT, TAGS, sort_key
from bnrep.progress import failed_again, tune_progress
from bnrep.raysession import check_nodes, check_resources, default_gpus, placement, quiet_when_stopped, ray_session
from bnrep.stages.tuning import (WRITE_FAILED, RepeatedFailure, WriteFailed, can_resume, fit, forget_repeated,
                                 keep_tensorboard, open_training_stage, raise_write_failed, run_config, train_in_tune,
                                 training_data, tune_config)
from bnrep.store import GRID, GRID_PLAN, Store, StoreWriteError, norm_columns, safe_key, tables, write_error
from bnrep.table1 import diverged_note
from bnrep.train import Trainer, best_device


# ==== the work of one trial ====
def trial(config: dict, exp: Experiment, out: str, data: Data, amp: bool, every: float, train_hash: str) -> None:
    """One Tune trial = one model of the grid; saves it and its Parquet rows; checkpoints every `every` s
    (train_in_tune). `data`: the driver's, through Ray's object store."""
    from ray import tune

    quiet_when_stopped()
    seed, cond, hp = config["run"]["seed"], config["run"]["norm"], config["run"]["hparams"]  # norm: the condition
    norm = exp.condition(cond)[0]
    mid = model_id(exp.model, cond, seed)
    store = Store(out, exp.name)
    if is_trained(store, mid, train_hash, exp.snapshots):  # saved before a stop that Tune's state had not recorded
        # yet (Ctrl-C, a kill, a lost node): the resumed grid reruns the trial; the model is not trained again
        t = store.read_table("training")
        tune.report({"model_id": mid, "test_acc": float(t.loc[t["model_id"] == mid, "test_acc"].iloc[0]),
                     "saved": True, "already_trained": True})
        return
    try:
        _train_and_save(store, mid, cond, norm, seed, hp, exp, data, amp, every, train_hash)
    except StoreWriteError as e:  # a full disk fails every retry the same way: a result that stops the grid
        tune.report({"model_id": mid, WRITE_FAILED: str(e.args[0])})
    except RepeatedFailure as e:  # the model's end (failed_models), not Tune's next try
        tune.report({"model_id": mid, **e.result()})


def _train_and_save(store: Store, mid: str, cond: str, norm: str, seed: int, hp: dict, exp: Experiment, data: Data,
                    amp: bool, every: float, train_hash: str) -> None:
    from ray import tune

    data = data.to(best_device())
    trainer = Trainer(exp.for_condition(cond), data, norm, hp, seed, amp=amp)  # the condition's recipe and norm
    resumed_from, digests = train_in_tune(trainer, extra={"model_id": mid}, snapshots=exp.snapshots,
                                          keep=lambda epoch, model: save_snapshot(store, mid, model, epoch),
                                          folder=store.uri(*GRID.split("/")), every=every)
    r = trainer.finish()
    row = {"model_id": mid, "experiment": exp.name, "dataset": exp.dataset, "arch": exp.model, "model": exp.model,
           **norm_columns(norm, cond), "seed": seed, "lr": float(hp["lr"]), "momentum": float(hp.get("momentum", 0.0)), "epochs": r.epochs,
           "best_epoch": r.best_epoch, "train_acc": r.train_acc, "val_acc": r.val_acc, "test_acc": r.test_acc,
           "interpolated": r.interpolated, "diverged": bool(r.diverged_epoch), "diverged_epoch": r.diverged_epoch,
           "steps": r.best_epoch * math.ceil(len(data.train) / trainer.exp.batch_size),  # to the kept weights
           "batch_size": trainer.exp.batch_size}  # the condition's (a batch-size study groups by it)
    digest = save_model(store, mid, r.model, trainer.exp, hp, row, data.num_classes)  # the recipe it trained with
    history = pd.DataFrame([{"model_id": mid, **norm_columns(norm, cond), "seed": seed, **vars(m)}
                            for m in r.history])
    where = {**placement(), "resumed_from_epoch": resumed_from}  # provenance, of a resumed trial too
    store.write_part("training_history", mid, history, train_hash, **where)
    kept = snapshot_record([e for e in exp.snapshots if e > 0], digests)  # asked epochs, digests of those reached
    store.write_part("training", mid, pd.DataFrame([row]), train_hash,  # last: marks the model complete
                     model_sha256=digest, weights_sha256=weights_sha256(r.model), **kept, **where)
    tune.report({"model_id": mid, "test_acc": r.test_acc, "saved": True})


# ==== the grid ====
def grid_hparams(exp: Experiment, store: Store, paper: bool) -> dict[str, dict]:
    """hparams per normalisation: the sweep's best, or the preset's."""
    if paper:
        return {n: exp.for_condition(n).paper_hparams(n) for n in exp.norms}
    if not store.exists("hparam/best_hparams.json"):
        raise UsageError(f"no sweep results in {store.out}/{exp.name}/hparam: run `{command('hparam', exp.name, store.out)}` "
                         f"first, or pass --paper-hparams")
    best = store.read_json("hparam/best_hparams.json")
    missing = [TAGS[n] for n in exp.norms if TAGS[n] not in best]
    if missing:
        raise UsageError(f"best_hparams.json lacks {', '.join(missing)}: rerun `{command('hparam', exp.name, store.out)}` "
                         f"with the same --norms, or pass --paper-hparams")
    return {n: {k: best[TAGS[n]][k] for k in ("lr", "momentum")} for n in exp.norms}


def check_kept_hparams(exp: Experiment, store: Store, paper: bool) -> None:
    """Refuse (UsageError, one line) a run whose grid would keep models trained with other hyperparameters than it
    gives the rest: the sweep's best against --paper-hparams' preset values, or the reverse (a model already
    trained is kept, and the report would call its study one of the hyperparameters asked). --fresh trains anew."""
    grid = [{"seed": s, "norm": n} for s in range(exp.seeds) for n in exp.norms]
    todo = untrained(exp, store, grid, stage_hashes(exp)["train_hash"])
    kept = {model_id(exp.model, g["norm"], g["seed"]): g["norm"] for g in grid if g not in todo}
    t = store.read_table("training") if kept else pd.DataFrame()
    if t.empty or not {"model_id", "lr", "momentum"} <= set(t):
        return
    t = t[t["model_id"].isin(kept)]
    preset = {n: exp.for_condition(n).paper_hparams(n) for n in exp.norms}
    best = store.read_json("hparam/best_hparams.json") if not paper and store.exists("hparam/best_hparams.json") \
        else {}
    for mid, lr, momentum in zip(t["model_id"], t["lr"], t["momentum"]):
        n = kept[mid]
        swept = not paper and TAGS[n] not in best  # the sweep has yet to choose this condition's
        want = preset[n] if paper or swept else {k: best[TAGS[n]][k] for k in ("lr", "momentum")}
        if same_hparams({"lr": lr, "momentum": momentum}, want) != swept:  # (yet to sweep: the preset's is the clash)
            continue
        if swept:
            given, keep = "the sweep's best (the sweep has yet to run)", "pass --paper-hparams to go on with them"
        else:
            given = (f"{'the preset' if paper else 'the sweep'}'s (lr {want['lr']:.4g}, momentum {want['momentum']:g})")
            keep = ("run without --paper-hparams" if paper else "pass --paper-hparams") + " to go on with them"
        trained = ("the preset's (--paper-hparams)" if same_hparams({"lr": lr, "momentum": momentum}, preset[n]) else
                   "the sweep's best" if paper else "other")
        raise UsageError(f"{store.out}/{exp.name} holds models trained with {trained} hyperparameters ({mid}: lr "
                         f"{lr:.4g}, momentum {momentum:g}), and keeps them; this run gives the grid {given}: {keep}, "
                         f"or --fresh to train the grid anew (another --out keeps both)")


def longest_first(todo: list[dict], store: Store, paper: bool) -> list[dict]:
    """The grid's models in the order Tune starts them: the conditions whose best sweep trial trained the
    most epochs first, seeds in order within each (the given order without a sweep). A long model started
    last trains alone at the end while the other slots idle; started first, the short ones fill the gaps.
    The order changes no result (each model trains from its own seed)."""
    if paper:  # (no sweep need have run)
        return todo
    best = store.read_json("hparam/best_hparams.json")  # (grid_hparams checked it)
    epochs = {n: best.get(TAGS[n], {}).get("epochs", 0) for n in {g["norm"] for g in todo}}
    return sorted(todo, key=lambda g: -epochs[g["norm"]])


def forget_analysis(store: Store, mids: list[str]) -> None:
    """Delete the analysis parts of models about to be trained anew (stale, valid or not): the parts of the
    model, of its snapshots (m@e1) and of its pairs (layer-a-b)."""
    if not mids:
        return
    at = re.escape(safe_key("@"))  # file names spell a part's @ so
    names = re.compile("|".join(rf"(?:^|-){re.escape(safe_key(m))}(?:{at}e\d+)?(?:-|$)" for m in mids))
    for table in tables("analysis"):
        for name in store.list_dir(f"results/{table}"):
            if names.search(name.removesuffix(".parquet")):
                store.delete(f"results/{table}/{name}")


def print_summary(df: pd.DataFrame) -> None:
    """Table-1-style: accuracy in percent, mean +- std over seeds."""
    groups = sorted(df.groupby(["arch", "condition"], sort=False), key=lambda kv: sort_key(kv[0][1]))
    names = [f"{arch} {SHORT.get(norm, norm)}" for (arch, norm), _ in groups]
    w = max([16, *map(len, names)])  # a long model spec (torchvision:resnet18) widens the first column
    print(f"\n{'model':{w}} {'seeds':>5} {'train %':>16} {'val %':>16} {'test %':>16} {'epochs':>7}")
    for name, (_, g) in zip(names, groups):
        cells = [f"{100 * g[c].mean():7.3f} ± " + (f"{100 * g[c].std():5.3f}" if len(g) > 1 else "  n/a")
                 for c in ("train_acc", "val_acc", "test_acc")]  # (one seed: no std)
        print(f"{name:{w}} {len(g):5d} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16} {g['epochs'].mean():7.1f}")
    if diverged := diverged_note(df):  # said where it happened, as Table 1 says it
        print(f"note: {diverged}")


def run_grid(exp: Experiment, opts: RunOptions, store: Store, todo: list[dict], gpus: float,
             train_hash: str) -> None:
    """Train `todo` in one Tune grid; resume the interrupted grid when it planned the same models."""
    from ray import tune

    fn = tune.with_resources(
        tune.with_parameters(trial, exp=exp, out=store.out, amp=opts.amp, every=opts.checkpoint_every,
                             data=training_data(exp, opts, "final", [n for n in exp.norms
                                                                    if any(g["norm"] == n for g in todo)]),
                             train_hash=train_hash),  # the data loaded once, here
        {"cpu": opts.cpus_per_trial, "gpu": gpus})
    path, space = store.uri(*GRID.split("/")), {"run": tune.grid_search(longest_first(todo, store,
                                                                                     opts.paper_hparams))}
    planned = store.read_json(GRID_PLAN) if store.exists(GRID_PLAN) else []
    if planned and all(g in planned for g in todo) and can_resume(
            store, GRID, space, "[final]", "grid", f"training its {len(todo)} unfinished models from the start"):
        print(f"[final] resuming the interrupted grid in {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable=fn, param_space=space, resume_errored=True)
    else:
        keep_tensorboard(store, GRID)
        store.delete(GRID)
        store.write_json(GRID_PLAN, todo)
        caps = {n: exp.for_condition(n).max_epochs for n in exp.norms}
        progress = tune_progress("final", len(todo), caps, describe_config, describe_model)
        storage, name = GRID.rsplit("/", 1)  # Tune's storage path and the run's name in it
        tuner = tune.Tuner(fn, param_space=space,
                           tune_config=tune_config(trial_dirname_creator=grid_dirname),
                           run_config=run_config(opts, name, store.uri(storage), progress, stop=WriteFailed()))
    results = fit(tuner, store, GRID)
    raise_write_failed(results, store, GRID_PLAN)  # the rerun trains them anew
    forget_repeated(results, store, GRID_PLAN)
    for e in (r.error for r in results if r.error):
        if write_error(e):  # disk full, permission denied: its one line
            raise write_error(e)
    if any(r.error or failed_again(r.metrics) for r in results):
        raise StageFailed(failed_models(results, exp, opts.max_failures, path))


def failed_models(results, exp: Experiment, max_failures: int, path: str) -> str:
    """The grid's one line for its failed models: those Tune tried --max-failures + 1 times, and those whose
    epoch failed twice alike (RepeatedFailure, not tried again); each named, with the first one's error."""
    def named(rs) -> str:
        names = sorted(model_id(exp.model, r.config["run"]["norm"], r.config["run"]["seed"]) for r in rs)
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    retried = [r for r in results if r.error]
    again = [r for r in results if not r.error and failed_again(r.metrics)]
    tries, said = max_failures + 1, []
    if retried:
        said.append(f"{len(retried)} model(s) failed {'once' if tries == 1 else f'{tries} times'} ({named(retried)}), "
                    f"more than --max-failures {max_failures}")
    if again:
        said.append(f"{len(again)} model(s) failed twice in the same epoch with the same error ({named(again)}), "
                    f"not tried again (their training is seeded, so a try fails alike)")
    first = (str(retried[0].error).strip().splitlines()[-1] if retried else failed_again(again[0].metrics))[:300]
    return f"{'; '.join(said)}; last error: {first} (Tune logs: {path})"


def grid_dirname(trial) -> str:
    """A grid trial's directory names its model: train/tune/final/bn-s0-<trial id>."""
    return f"{describe_config(trial.config)}-{trial.trial_id}"


def describe_config(config: dict) -> str:
    run = config.get("run", {})
    return f"{TAGS.get(run.get('norm'), '?')}-s{run.get('seed', '?')}"


def describe_model(config: dict, r: dict) -> str:
    if r.get(WRITE_FAILED):
        return f"ended: {r.get('model_id', '?')} could not be saved"
    return (f"models trained; last: {r.get('model_id', '?')}, test_acc {r.get('test_acc', float('nan')):.4f}"
            + (" (saved before the stop: not trained again)" if r.get("already_trained") else ""))


def untrained(exp: Experiment, store: Store, grid: list[dict], train_hash: str) -> list[dict]:
    """The grid's models to train: not trained under `train_hash`, or trained without an asked snapshot."""
    return [g for g in grid if not is_trained(store, model_id(exp.model, g["norm"], g["seed"]), train_hash,
                                              exp.snapshots)]


def unkept(store: Store, mids: list[str], snapshots) -> list[int]:
    """The epochs of `snapshots` after 0 that some of `mids` were trained without being asked to keep."""
    asked = [saved_snapshots(store.part_metadata("training", m))[0] for m in mids]  # one footer read a model
    return sorted({e for a in asked for e in snapshots if e > 0 and e not in a})


def weights_digests(store: Store, mids: list[str]) -> dict[str, str]:
    """model id -> the digest of its final weights its training record holds ('' for records before it)."""
    mds = {m: store.part_metadata("training", m) for m in mids}
    return {m: md.get("weights_sha256", "") for m, md in mds.items() if md}


# ==== the stage ====
def run(exp: Experiment, opts: RunOptions) -> int:
    store, record = open_training_stage(exp, opts, "final")  # every check before Ray starts
    hparams = grid_hparams(exp, store, opts.paper_hparams)
    if not opts.fresh:
        check_kept_hparams(exp, store, opts.paper_hparams)
    print(header("final grid", exp, store, opts.fresh, opts.notes), flush=True)
    train_hash = stage_hashes(exp)["train_hash"]
    grid = [{"seed": s, "norm": n, "hparams": hparams[n]} for s in range(exp.seeds) for n in exp.norms]
    with contextlib.ExitStack() as held:
        if opts.fresh:  # the lock, the resource check, then the deletion (a refused run deletes nothing)
            held.enter_context(writer_lock(store, "final"))
            check_resources(held.enter_context(ray_session(opts.address, exp.model)), opts, ["final"])
            start_fresh(store, "final")
        todo = untrained(exp, store, grid, train_hash)
        trained = bool(todo)
        mids = [model_id(exp.model, g["norm"], g["seed"]) for g in todo]
        again = [m for m in mids if is_trained(store, m, train_hash)]  # trained, but without an asked snapshot
        print(f"[final] {len(grid) - len(todo)} of {len(grid)} models already trained", flush=True)
        for m in mids:  # trained before, but a file is damaged or gone: say which, and why it trains again
            why = damage(store, m, train_hash, exp.snapshots)
            if why:
                print(f"[final] {m} trains again: {why}", flush=True)
        if again:
            print(f"[final] {len(again)} trained without a snapshot at epoch "
                  f"{', '.join(map(str, unkept(store, again, exp.snapshots)))}: trained again to keep those epochs "
                  f"(their analysis stays where the weights come out the same)", flush=True)
        if todo:
            held.enter_context(writer_lock(store, "final"))  # one writer from here on (LockError: one line)
            before = None
            try:
                with ray_session(opts.address, exp.model) as ray:
                    check_nodes(ray, store, exp.dataset)
                    gpus = default_gpus(ray, opts.gpus_per_trial, opts.cpus_per_trial)  # (before any write)
                    write_config(store, record)
                    forget_analysis(store, [m for m in mids if m not in again])  # now stale
                    before = weights_digests(store, again)
                    run_grid(exp, opts, store, todo, gpus, train_hash)
                    todo = untrained(exp, store, grid, train_hash)
                    if todo:  # a restored grid whose trials ended without saving: train them anew
                        store.delete(GRID_PLAN)
                        run_grid(exp, opts, store, todo, gpus, train_hash)
                        if left := untrained(exp, store, grid, train_hash):  # (a node with a disk of its own)
                            first = model_id(exp.model, left[0]["norm"], left[0]["seed"])
                            raise StageFailed(f"{len(left)} of the grid's models ended without their results in "
                                              f"{store.out}/{exp.name} (first {first}), trained twice: were they "
                                              f"trained on a node that does not share that path? Every node must "
                                              f"see it (a shared filesystem), or give an s3:// URI")
            finally:  # also when the grid failed: a model saved with other weights (a GPU) has no analysis
                if before is not None:
                    after = weights_digests(store, again)
                    forget_analysis(store, [m for m in again if not before.get(m) or after.get(m) != before[m]])

    df = store.read_table("training")
    wanted = {model_id(exp.model, g["norm"], g["seed"]) for g in grid}
    if len(df):
        print_summary(df[df["model_id"].isin(wanted)])
    if trained:  # (nothing written when every model was already trained)
        print(f"\nwrote {store.out}/{exp.name}/results/training ({len(df)} models)")
    return 0
