"""Stage 1: Ray Tune hyperparameter sweep, one search per condition (a normalisation, bnrep.axis).

Searches learning rate (log-uniform) x momentum (SGD presets) with an ASHA
scheduler. Objective (paper 3.1.1): validation accuracy at the epoch a model
first interpolates, non-interpolating trials ranked below all that do; for
early-stopping presets (paper 3.1.2) the best validation accuracy.

Writes, under <out>/<experiment>/:
    results/hparam_trials/<tag>.parquet   one row per trial; tag = bn, nobn, gn, ln ... (bnrep.norms.TAGS)
    hparam/best_hparams.json              best trial per normalisation, keyed by tag
    hparam/tune/<tag>/                    Ray Tune state (resumed with Tuner.restore)
"""

from __future__ import annotations

import contextlib

import pandas as pd

from bnrep.config import RunOptions, StageFailed, header, stage_hashes, start_fresh, write_config
from bnrep.data import load_data
from bnrep.experiments import Experiment, lr_edge
from bnrep.lock import writer_lock
from bnrep.norms import TAGS
from bnrep.progress import tune_progress
from bnrep.raysession import check_nodes, default_gpus, quiet_when_stopped, ray_session
from bnrep.stages.tuning import can_resume, open_training_stage, run_config, train_in_tune, tune_config
from bnrep.store import Store
from bnrep.train import Trainer, best_device

SWEEP_SEED = 0  # model seed of every sweep trial; the search itself is seeded too


# ==== the work of one trial ====
def trial(config: dict, exp: Experiment, data_root: str | None, amp: bool) -> None:
    """One Tune trial: train with the sampled hparams, report every epoch."""
    quiet_when_stopped()
    data = load_data(exp, data_root, device=best_device())
    cond = exp.for_condition(config["norm"])  # config["norm"]: the condition (bnrep.axis)
    trainer = Trainer(cond, data, exp.condition(config["norm"])[0], config, SWEEP_SEED, amp=amp,
                      max_epochs=cond.sweep_max_epochs or cond.max_epochs)
    train_in_tune(trainer)


# ==== one search ====
def search_space(exp: Experiment, norm: str) -> dict:
    from ray import tune

    exp = exp.for_condition(norm)
    space = {"norm": norm, "lr": tune.loguniform(*exp.lr_range)}
    if exp.optimizer == "sgd":
        space["momentum"] = tune.choice(list(exp.momentum_choices))
    return space


def run_search(exp: Experiment, opts: RunOptions, store: Store, norm: str, gpus: float) -> pd.DataFrame:
    """One Tune search for one normalisation; resumes an interrupted one."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    fn = tune.with_resources(tune.with_parameters(trial, exp=exp, data_root=opts.data_root, amp=opts.amp),
                             {"cpu": opts.cpus_per_trial, "gpu": gpus})
    tag = TAGS[norm]
    path = store.uri("hparam", "tune", tag)
    space, rel = search_space(exp, norm), f"hparam/tune/{tag}"
    if can_resume(store, rel, space, f"[hparam] {tag}:", "search", "searching anew (seeded: the same configurations)"):
        print(f"[hparam] {tag}: resuming the interrupted search in {path}", flush=True)
        restored = tune.Tuner.restore(path, trainable=fn, param_space=space, resume_errored=True)
        return trials_table(restored.fit(), norm, exp.condition(norm)[0])
    store.delete(rel)  # what a run killed before Tune saved a usable state left
    recipe = exp.for_condition(norm)
    max_t = recipe.sweep_max_epochs or recipe.max_epochs
    progress = tune_progress(f"hparam {tag}", exp.num_samples, max_t, describe_config, describe_trial)
    tuner = tune.Tuner(
        fn, param_space=space,
        tune_config=tune_config(
            metric="objective", mode="max", num_samples=exp.num_samples,
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                                    grace_period=max(1, max_t // 4), reduction_factor=3),
            search_alg=BasicVariantGenerator(random_state=exp.split_seed)),
        run_config=run_config(opts, tag, store.uri("hparam", "tune"), progress))
    return trials_table(tuner.fit(), norm, exp.condition(norm)[0])


def trials_table(grid, cond: str, norm: str) -> pd.DataFrame:
    """One row per trial of condition `cond`, which builds normalisation `norm`."""
    rows = []
    for r in grid:
        m, cfg = r.metrics or {}, r.config or {}
        rows.append({"trial_id": m.get("trial_id", ""), "bn": norm == "batch", "norm": norm, "condition": cond,
                     "lr": float(cfg.get("lr", "nan")),
                     "momentum": float(cfg.get("momentum", 0.0)), "epochs": int(m.get("epoch", 0)),
                     "train_acc": float(m.get("train_acc", "nan")),
                     "train_acc_running": float(m.get("train_acc_running", "nan")),
                     "val_acc": float(m.get("val_acc", "nan")),
                     "interpolated": bool(m.get("interpolated", False)),
                     "diverged": bool(m.get("diverged", False)),  # its loss became NaN or inf: scored last
                     "objective": float(m.get("objective", "nan")), "error": str(r.error or ""),
                     "node_id": str(m.get("node_id", ""))})  # the Ray node of its last epoch
    return pd.DataFrame(rows)


def describe_config(config: dict) -> str:
    return f"lr {config.get('lr', float('nan')):.3g}" + (
        f", momentum {config['momentum']:g}" if "momentum" in config else "")


def describe_trial(r: dict) -> str:
    return (f"trials done; last: lr {r.get('lr', float('nan')):.3g}, {r.get('epoch', 0)} epochs, "
            f"val_acc {r.get('val_acc', float('nan')):.4f}"
            + (", interpolated" if r.get("interpolated") else ""))


# ==== the best trial ====
def best_trial(trials: pd.DataFrame) -> dict:
    ok = trials[trials["error"] == ""].dropna(subset=["objective"])
    if ok.empty:
        raise StageFailed(f"every trial failed ({trials['error'].iloc[0].strip().splitlines()[-1][:300]})")
    b = ok.sort_values(["objective", "val_acc"], ascending=False).iloc[0]
    return {"lr": float(b["lr"]), "momentum": float(b["momentum"]), "objective": float(b["objective"]),
            "val_acc": float(b["val_acc"]), "epochs": int(b["epochs"]), "trial_id": b["trial_id"]}


def print_best(best: dict, exp: Experiment) -> None:
    print("\nBest trial per normalisation")
    print(f"{'norm':8} {'lr':>10} {'momentum':>9} {'epochs':>7} {'val_acc':>8} {'objective':>10}")
    for tag, b in best.items():
        print(f"{tag:8} {b['lr']:10.3g} {b['momentum']:9.3g} {b['epochs']:7d} {b['val_acc']:8.4f} {b['objective']:10.4f}")
    for tag, b in best.items():
        edge = lr_edge(b["lr"], exp.lr_range)
        if edge:
            print(f"note: {tag}'s best lr {b['lr']:.3g} lies at the {edge} edge of the search range "
                  f"{exp.lr_range}; the optimum may lie outside it: widen lr_range", flush=True)


# ==== the stage ====
def run(exp: Experiment, opts: RunOptions) -> int:
    store, record = open_training_stage(exp, opts, "hparam")  # every check before Ray starts
    print(header("hparam sweep", exp, store), flush=True)
    with contextlib.ExitStack() as held:
        if opts.fresh:  # the lock, then the deletion
            held.enter_context(writer_lock(store, "hparam"))
            start_fresh(store, "hparam")
        best = store.read_json("hparam/best_hparams.json") if store.exists("hparam/best_hparams.json") else {}
        todo = [n for n in exp.norms if not (TAGS[n] in best and store.has_part("hparam_trials", TAGS[n]))]
        if not todo:
            print("[hparam] complete: nothing to do")
            print_best(best, exp)
            return 0
        held.enter_context(writer_lock(store, "hparam"))  # one writer from here on (LockError: one line)
        write_config(store, record)
        with ray_session(opts.address, exp.model) as ray:
            check_nodes(ray, store, exp.dataset)
            gpus = default_gpus(ray, opts.gpus_per_trial)
            for norm in todo:
                tag = TAGS[norm]
                print(f"[hparam] {tag}: {exp.num_samples} trials, lr in {exp.lr_range}"
                      + (f", momentum in {exp.momentum_choices}" if exp.for_condition(norm).optimizer == "sgd" else ""),
                      flush=True)
                trials = run_search(exp, opts, store, norm, gpus)
                best[tag] = best_trial(trials)
                if trials["diverged"].any():
                    print(f"[hparam] {tag}: {int(trials['diverged'].sum())} of {len(trials)} trials diverged "
                          f"(loss NaN or inf; scored below every other)", flush=True)
                store.write_part("hparam_trials", tag, trials, stage_hashes(exp)["train_hash"])
                store.write_json("hparam/best_hparams.json", best)
    print_best(best, exp)
    print(f"\nwrote {store.out}/{exp.name}/hparam/best_hparams.json")
    return 0
