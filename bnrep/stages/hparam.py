"""Stage 1: Ray Tune hyperparameter sweep, one search per condition (a normalisation, bnrep.axis).

Searches learning rate (log-uniform) x momentum (SGD presets) with an ASHA
scheduler per condition, every condition's trials in one Tune run. Objective
(paper 3.1.1): validation accuracy at the epoch a model first interpolates,
non-interpolating trials ranked below all that do; for early-stopping presets
(paper 3.1.2) the best validation accuracy.

Writes, under <out>/<experiment>/:
    results/hparam_trials/<tag>.parquet   one row per trial; tag = bn, nobn, gn, ln ... (bnrep.norms.TAGS)
    hparam/best_hparams.json              best trial per normalisation, keyed by tag
    hparam/tune/sweep/<tag>-<trial id>/   Ray Tune state (resumed with Tuner.restore)
    hparam/tune/plan.json                 the configurations it searches
"""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd

from bnrep.config import RunOptions, StageFailed, header, stage_hashes, start_fresh, write_config
from bnrep.data import Data
from bnrep.experiments import Experiment, lr_edge
from bnrep.lock import writer_lock
from bnrep.norms import TAGS
from bnrep.progress import failed_again, tune_progress
from bnrep.raysession import check_nodes, check_resources, default_gpus, quiet_when_stopped, ray_session
from bnrep.stages.tuning import (WRITE_FAILED, RepeatedFailure, WriteFailed, can_resume, fit, forget_repeated,
                                 keep_tensorboard, open_training_stage, raise_write_failed, run_config, train_in_tune,
                                 training_data, tune_config)
from bnrep.store import SWEEP, SWEEP_PLAN, Store, StoreWriteError, norm_columns
from bnrep.train import DIVERGED, OBJECTIVE_WORDS, Trainer, best_device

SWEEP_SEED = 0  # model seed of every sweep trial; the search itself is seeded too


# ==== the work of one trial ====
def trial(config: dict, exp: Experiment, data: Data, amp: bool, every: float, folder: str | None = None) -> None:
    """One Tune trial: train with the sampled hparams, report every epoch, checkpoint every `every` s
    (train_in_tune). `data`: the driver's, through Ray's object store (a trial process loads nothing: no
    scikit-learn import, no split, no decoding)."""
    quiet_when_stopped()
    run = config["run"]  # {"norm": the condition (bnrep.axis), "lr", "momentum"}
    data = data.to(best_device())
    cond = exp.for_condition(run["norm"])
    trainer = Trainer(cond, data, exp.condition(run["norm"])[0], run, SWEEP_SEED, amp=amp,
                      max_epochs=cond.sweep_epochs)
    try:
        train_in_tune(trainer, extra={"condition": run["norm"]}, folder=folder,  # folder: the sweep's, under --out
                      every=every)
    except StoreWriteError as e:  # a full disk fails every retry the same way: a result that stops the sweep
        from ray import tune

        tune.report({"condition": run["norm"], "objective": DIVERGED, WRITE_FAILED: str(e.args[0])})
    except RepeatedFailure as e:  # the trial's end (its error in the sweep's table), not Tune's next try
        from ray import tune

        tune.report({"condition": run["norm"], "objective": DIVERGED, **e.result()})


# ==== the sweep: every condition's search in one Tune run ====
def sampled(exp: Experiment, norm: str) -> list[dict]:
    """The `num_samples` configurations searched for condition `norm`: learning rate log-uniform in its
    range, momentum one of its choices (SGD). Seeded by the experiment's split seed alone, so every
    condition with the same ranges tries the same configurations (a paired comparison). A condition that
    fixes lr or momentum (Experiment.for_condition) tries that value with the others' draws."""
    recipe = exp.for_condition(norm)
    rng = np.random.default_rng(exp.split_seed)
    lo, hi = recipe.lr_range
    out = []
    for _ in range(exp.num_samples):
        lr = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # drawn also when fixed: the same draws after
        c = {"norm": norm, "lr": lo if lo == hi else lr}  # a fixed lr exactly (exp(log(x)) may miss x by an ulp)
        if recipe.optimizer == "sgd":  # drawn from the study's choices (paired), then the condition's if fixed
            m = float(rng.choice(exp.momentum_choices))
            c["momentum"] = m if len(recipe.momentum_choices) > 1 else recipe.momentum_choices[0]
        out.append(c)
    return out


def searched(recipe: Experiment) -> str:
    """What a condition's sweep tries: 'lr in (0.001, 0.1), momentum in (0.0, 0.9)'; a value the condition
    fixes, as that value ('lr 0.05')."""
    lo, hi = recipe.lr_range
    parts = [f"lr {lo:g}" if lo == hi else f"lr in {recipe.lr_range}"]
    if recipe.optimizer == "sgd":
        m = recipe.momentum_choices
        parts.append(f"momentum {m[0]:g}" if len(m) == 1 else f"momentum in {m}")
    return ", ".join(parts)


def sweep_dirname(trial) -> str:
    """A trial's directory says its condition: hparam/tune/sweep/bn-<trial id>."""
    return f"{TAGS[trial.config['run']['norm']]}-{trial.trial_id}"


def run_sweep(exp: Experiment, opts: RunOptions, store: Store, todo: list[str], gpus: float) -> pd.DataFrame:
    """One Tune run searching every condition in `todo` (ASHA per condition); resumes an interrupted
    one that planned the same configurations. One row per trial (trials_table)."""
    from ray import tune

    from bnrep.stages.schedule import PerCondition

    # the data loaded once, here: every trial gets it from the object store (the driver keeps no copy)
    fn = tune.with_resources(
        tune.with_parameters(trial, exp=exp, data=training_data(exp, opts, "hparam", todo), amp=opts.amp,
                             every=opts.checkpoint_every,
                             folder=store.uri(*SWEEP.split("/"))),
        {"cpu": opts.cpus_per_trial, "gpu": gpus})
    configs = [c for norm in todo for c in sampled(exp, norm)]
    asha = {n: asha_spec(exp, n) for n in todo}
    space, path = {"run": tune.grid_search(configs)}, store.uri(*SWEEP.split("/"))
    planned = store.read_json(SWEEP_PLAN) if store.exists(SWEEP_PLAN) else []
    if planned == configs and can_resume(store, SWEEP, space, "[hparam]", "sweep",
                                         "searching anew (seeded: the same configurations)"):
        print(f"[hparam] resuming the interrupted sweep in {path}", flush=True)
        restored = tune.Tuner.restore(path, trainable=fn, param_space=space, resume_errored=True)
        return trials_table(written(fit(restored, store, SWEEP), store), exp, asha, configs)
    keep_tensorboard(store, SWEEP)
    store.delete(SWEEP)  # what a run killed before Tune saved a usable state left
    store.write_json(SWEEP_PLAN, configs)
    progress = tune_progress("hparam", len(configs), {n: s["max_t"] for n, s in asha.items()}, describe_config,
                             describe_trial)
    storage, name = SWEEP.rsplit("/", 1)  # Tune's storage path and the run's name in it
    tuner = tune.Tuner(
        fn, param_space=space,
        tune_config=tune_config(metric="objective", mode="max", scheduler=PerCondition(asha, configs),
                                trial_dirname_creator=sweep_dirname),
        run_config=run_config(opts, name, store.uri(storage), progress, stop=WriteFailed()))
    return trials_table(written(fit(tuner, store, SWEEP), store), exp, asha, configs)


def written(results, store: Store):
    """The sweep's results, unless a trial's checkpoint could not be written (StoreWriteError)."""
    raise_write_failed(results, store, SWEEP_PLAN)
    forget_repeated(results, store, SWEEP_PLAN)
    return results


def asha_spec(exp: Experiment, norm: str) -> dict:
    """ASHA's arguments for condition `norm`: its epoch budget, rungs at a quarter of it, then x3."""
    t = exp.for_condition(norm).sweep_epochs
    return dict(time_attr="training_iteration", max_t=t, grace_period=max(1, t // 4), reduction_factor=3)


def trials_table(grid, exp: Experiment, asha: dict[str, dict], plan: list[dict]) -> pd.DataFrame:
    """One row per trial; its condition from its configuration, the normalisation the condition builds.
    A trial the scheduler stopped at a rung after it trained on (bnrep.stages.schedule) has the
    results of that rung. Rows in plan order (Tune lists a resumed run's trials in another)."""
    from bnrep.stages.schedule import positions, stopped_results

    grid = list(grid)
    order = positions([r.config["run"] for r in grid], plan)
    grid, rows = [grid[k] for k in sorted(range(len(grid)), key=order.__getitem__)], []
    for r, m in zip(grid, stopped_results(grid, asha, plan)):
        cfg = (r.config or {}).get("run", {})
        cond = cfg["norm"]
        norm = exp.condition(cond)[0]
        rows.append({"trial_id": m.get("trial_id", ""), **norm_columns(norm, cond),
                     "lr": float(cfg.get("lr", "nan")),
                     "momentum": float(cfg.get("momentum", 0.0)), "epochs": int(m.get("epoch", 0)),
                     "train_acc": float(m.get("train_acc", "nan")),
                     "train_acc_running": float(m.get("train_acc_running", "nan")),
                     "val_acc": float(m.get("val_acc", "nan")),
                     "interpolated": bool(m.get("interpolated", False)),
                     "diverged": bool(m.get("diverged", False)),  # its loss became NaN or inf: scored last
                     "objective": float(m.get("objective", "nan")),
                     "error": str(r.error or failed_again(r.metrics)),
                     "node_id": str(m.get("node_id", ""))})  # the Ray node of the epoch the row holds
    return pd.DataFrame(rows)


def describe_config(config: dict) -> str:
    run = config.get("run", {})
    return f"{TAGS.get(run.get('norm'), '?')} lr {run.get('lr', float('nan')):.3g}" + (
        f", momentum {run['momentum']:g}" if "momentum" in run else "")


def describe_trial(config: dict, r: dict) -> str:
    """A finished trial: its configured rate (as hparam_trials and best_hparams.json say; the last result's
    `lr` has decayed), its last result's epoch and accuracy."""
    lr = config.get("run", {}).get("lr", float("nan"))
    if r.get(WRITE_FAILED):
        return f"ended: {TAGS.get(r.get('condition'), '?')} lr {lr:.3g} could not write its checkpoint"
    return (f"trials done; last: {TAGS.get(r.get('condition'), '?')} lr {lr:.3g}, "
            f"{r.get('epoch', 0)} epoch{'s' * (r.get('epoch', 0) != 1)}, val_acc {r.get('val_acc', float('nan')):.4f}"
            + (", interpolated" if r.get("interpolated") else ""))


# ==== the best trial ====
def first_error(trials: pd.DataFrame) -> str:
    """The last line of the first trial's error (its traceback's exception)."""
    return trials["error"].iloc[0].strip().splitlines()[-1][:300]


def best_trial(trials: pd.DataFrame, tag: str) -> dict:
    """The highest objective, then validation accuracy; of equals (ties are common: accuracies are
    fractions of one validation split), the trial planned first (trials_table's order)."""
    ok = trials[trials["error"] == ""].dropna(subset=["objective"])
    if ok.empty:
        raise StageFailed(f"every trial of {tag} failed ({first_error(trials)})")
    b = ok.sort_values(["objective", "val_acc"], ascending=False).iloc[0]  # (a sort on two columns is stable)
    return {"lr": float(b["lr"]), "momentum": float(b["momentum"]), "objective": float(b["objective"]),
            "val_acc": float(b["val_acc"]), "epochs": int(b["epochs"]), "trial_id": b["trial_id"]}


def print_best(best: dict, exp: Experiment) -> None:
    from bnrep.axis import axis_word

    word = axis_word(exp.norms)
    order = [TAGS[n] for n in exp.norms if TAGS[n] in best]  # the study's display order, every run alike
    best = {t: best[t] for t in order + [t for t in best if t not in order]}
    print(f"\nBest trial per {'normalisation' if word == 'norm' else word}")
    print(f"{word:9} {'lr':>10} {'momentum':>9} {'epochs':>7} {'val_acc':>8} {'objective':>10}")
    for tag, b in best.items():
        print(f"{tag:9} {b['lr']:10.3g} {b['momentum']:9.3g} {b['epochs']:7d} {b['val_acc']:8.4f} {b['objective']:10.4f}")
    rules = dict.fromkeys(exp.for_condition(n).stop for n in exp.norms)  # (a condition may set its own)
    print("objective: " + "; ".join(f"{OBJECTIVE_WORDS[r]}{f' ({r})' if len(rules) > 1 else ''}" for r in rules)
          + "; val_acc: at the trial's last epoch")
    ranges = {TAGS[n]: exp.for_condition(n).lr_range for n in exp.norms}  # a condition's lr: no range
    for tag, b in best.items():
        edge = lr_edge(b["lr"], ranges.get(tag, exp.lr_range))
        if edge:
            print(f"note: {tag}'s best lr {b['lr']:.3g} lies at the {edge} edge of the search range "
                  f"{exp.lr_range}; the optimum may lie outside it: widen lr_range", flush=True)


def record_best(store: Store, exp: Experiment, every: pd.DataFrame, todo: list[str], best: dict) -> None:
    """Each condition of `todo`: its trials' part and its best trial, into `best` and best_hparams.json. A
    condition whose trials all failed is StageFailed once the others are recorded, naming each such condition."""
    failed = []
    for norm in todo:
        tag, trials = TAGS[norm], every[every["condition"] == norm].reset_index(drop=True)
        try:
            best[tag] = best_trial(trials, tag)
        except StageFailed:
            failed.append((tag, trials))
            continue
        if trials["diverged"].any():
            print(f"[hparam] {tag}: {int(trials['diverged'].sum())} of {len(trials)} trials diverged "
                  f"(loss NaN or inf; scored below every other)", flush=True)
        store.write_part("hparam_trials", tag, trials, stage_hashes(exp)["train_hash"])
    store.write_json("hparam/best_hparams.json", best)
    if failed:  # each condition named; the first error (a fault of the model's code fails them all alike)
        tags = [t for t, _ in failed]
        named = ", ".join(tags[:-1]) + f" and {tags[-1]}" if len(tags) > 1 else tags[0]
        raise StageFailed(f"every trial of {named} failed ({f'{tags[0]}: ' if len(tags) > 1 else ''}"
                          f"{first_error(failed[0][1])})")


# ==== the stage ====
def run(exp: Experiment, opts: RunOptions) -> int:
    store, record = open_training_stage(exp, opts, "hparam")  # every check before Ray starts
    print(header("hparam sweep", exp, store, opts.fresh, opts.notes), flush=True)
    with contextlib.ExitStack() as held:
        if opts.fresh:  # the lock, the resource check, then the deletion (a refused run deletes nothing)
            held.enter_context(writer_lock(store, "hparam"))
            check_resources(held.enter_context(ray_session(opts.address, exp.model)), opts, ["hparam"])
            start_fresh(store, "hparam")
        best = store.read_json("hparam/best_hparams.json") if store.exists("hparam/best_hparams.json") else {}
        todo = [n for n in exp.norms if not (TAGS[n] in best and store.has_part("hparam_trials", TAGS[n]))]
        if not todo:
            print("[hparam] complete: nothing to do")
            print_best(best, exp)
            return 0
        held.enter_context(writer_lock(store, "hparam"))  # one writer from here on (LockError: one line)
        with ray_session(opts.address, exp.model) as ray:
            check_nodes(ray, store, exp.dataset)
            gpus = default_gpus(ray, opts.gpus_per_trial, opts.cpus_per_trial)  # (before any write)
            write_config(store, record)
            for norm in todo:
                recipe = exp.for_condition(norm)
                print(f"[hparam] {TAGS[norm]}: {exp.num_samples} trials, {searched(recipe)}", flush=True)
            every = run_sweep(exp, opts, store, todo, gpus)
        record_best(store, exp, every, todo, best)
    print_best(best, exp)
    print(f"\nwrote {store.out}/{exp.name}/hparam/best_hparams.json")
    return 0
