"""Stage 1: Ray Tune hyperparameter sweep, one search per BatchNorm setting.

    python sweeps/hparam.py                                   # digits-cnn, private local Ray
    python sweeps/hparam.py --experiment mnist-cnn --num-samples 16
    ray submit cluster.yaml sweeps/hparam.py -- --experiment cifar10-vgg16 --out s3://bucket/bnrep

Searches learning rate (log-uniform) x momentum (SGD presets) with an ASHA
scheduler. Objective (paper 3.1.1): validation accuracy at the epoch a model
first interpolates, non-interpolating trials ranked below all that do; for
early-stopping presets (paper 3.1.2) the best validation accuracy.

Writes, under <out>/<experiment>/:
    results/hparam_trials/{bn,nobn}.parquet   one row per trial
    hparam/best_hparams.json                  best trial per BatchNorm setting
    hparam/tune/{bn,nobn}/                    Ray Tune state (resumed with Tuner.restore)

digits-cnn on 2 CPU cores: about a minute. A rerun skips finished searches.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pandas as pd  # noqa: E402

from bnrep import driver  # noqa: E402
from bnrep.data import load_data  # noqa: E402
from bnrep.experiments import Experiment  # noqa: E402
from bnrep.train import Trainer, best_device  # noqa: E402

SWEEP_SEED = 0  # model seed of every sweep trial; the search itself is seeded too
BN_SETTINGS = {"bn": True, "nobn": False}


def trial(config: dict, exp: Experiment, data_root: str | None, amp: bool) -> None:
    """One Tune trial: train with the sampled hparams, report every epoch."""
    data = load_data(exp, data_root, device=best_device())
    trainer = Trainer(exp, data, config["bn"], config, SWEEP_SEED, amp=amp,
                      max_epochs=exp.sweep_max_epochs or exp.max_epochs)
    driver.train_in_tune(trainer)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    driver.add_experiment_args(p)
    driver.add_training_args(p)
    return p


def search_space(exp: Experiment, bn: bool) -> dict:
    from ray import tune

    space = {"bn": bn, "lr": tune.loguniform(*exp.lr_range)}
    if exp.optimizer == "sgd":
        space["momentum"] = tune.choice(list(exp.momentum_choices))
    return space


def run_search(exp: Experiment, args, store, tag: str, gpus: float) -> pd.DataFrame:
    """One Tune search for one BatchNorm setting; resumes an interrupted one."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    fn = tune.with_resources(
        tune.with_parameters(trial, exp=exp, data_root=args.data_root, amp=args.amp),
        {"cpu": args.cpus_per_trial, "gpu": gpus})
    path = store.uri("hparam", "tune", tag)
    if tune.Tuner.can_restore(path):
        print(f"[hparam] {tag}: resuming the interrupted search in {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable=fn, resume_errored=True)
    else:
        max_t = exp.sweep_max_epochs or exp.max_epochs
        tuner = tune.Tuner(
            fn,
            param_space=search_space(exp, BN_SETTINGS[tag]),
            tune_config=tune.TuneConfig(
                metric="objective", mode="max", num_samples=exp.num_samples,
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                                        grace_period=max(1, max_t // 4), reduction_factor=3),
                search_alg=BasicVariantGenerator(random_state=exp.split_seed),
                trial_dirname_creator=driver.trial_dirname),
            run_config=tune.RunConfig(
                name=tag, storage_path=store.uri("hparam", "tune"), verbose=0,
                callbacks=[driver.tune_progress(f"hparam {tag}", exp.num_samples, describe_trial)],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=args.max_failures)))
    grid = tuner.fit()
    rows = []
    for r in grid:
        m, cfg = r.metrics or {}, r.config or {}
        rows.append({"trial_id": m.get("trial_id", ""), "bn": BN_SETTINGS[tag], "lr": float(cfg.get("lr", "nan")),
                     "momentum": float(cfg.get("momentum", 0.0)), "epochs": int(m.get("epoch", 0)),
                     "train_acc": float(m.get("train_acc", "nan")), "val_acc": float(m.get("val_acc", "nan")),
                     "interpolated": bool(m.get("interpolated", False)),
                     "objective": float(m.get("objective", "nan")), "error": str(r.error or ""),
                     "node_id": str(m.get("node_id", ""))})  # the Ray node of its last epoch
    return pd.DataFrame(rows)


def describe_trial(r: dict) -> str:
    return (f"trials done; last: lr {r.get('lr', float('nan')):.3g}, {r.get('epoch', 0)} epochs, "
            f"val_acc {r.get('val_acc', float('nan')):.4f}"
            + (", interpolated" if r.get("interpolated") else ""))


def best_trial(trials: pd.DataFrame) -> dict:
    ok = trials[trials["error"] == ""].dropna(subset=["objective"])
    if ok.empty:
        raise RuntimeError("every trial failed; see the Ray Tune logs above")
    b = ok.sort_values(["objective", "val_acc"], ascending=False).iloc[0]
    return {"lr": float(b["lr"]), "momentum": float(b["momentum"]), "objective": float(b["objective"]),
            "val_acc": float(b["val_acc"]), "epochs": int(b["epochs"]), "trial_id": b["trial_id"]}


def print_best(best: dict) -> None:
    print("\nBest trial per BatchNorm setting")
    print(f"{'setting':8} {'lr':>10} {'momentum':>9} {'epochs':>7} {'val_acc':>8} {'objective':>10}")
    for tag, b in best.items():
        print(f"{tag:8} {b['lr']:10.3g} {b['momentum']:9.3g} {b['epochs']:7d} {b['val_acc']:8.4f} {b['objective']:10.4f}")


def main(argv: list[str] | None = None) -> int:
    # ==== validate everything before Ray starts ====
    args = build_parser().parse_args(argv)
    exp, store, record = driver.open_training_stage(args, "hparam")
    driver.print_header("hparam sweep", exp, store)

    # ==== skip what is done ====
    best = store.read_json("hparam/best_hparams.json") if store.exists("hparam/best_hparams.json") else {}
    todo = [t for t in BN_SETTINGS if not (t in best and store.has_part("hparam_trials", t))]
    if not todo:
        print("[hparam] complete: nothing to do")
        print_best(best)
        return 0
    driver.write_config(store, record)

    # ==== search, one BatchNorm setting at a time ====
    with driver.ray_session(args.address) as ray:
        driver.check_shared_out(ray, store)
        gpus = driver.default_gpus(ray, args.gpus_per_trial)
        for tag in todo:
            print(f"[hparam] {tag}: {exp.num_samples} trials, lr in {exp.lr_range}"
                  + (f", momentum in {exp.momentum_choices}" if exp.optimizer == "sgd" else ""), flush=True)
            trials = run_search(exp, args, store, tag, gpus)
            best[tag] = best_trial(trials)
            store.write_part("hparam_trials", tag, trials, driver.stage_hashes(exp)["train_hash"])
            store.write_json("hparam/best_hparams.json", best)
    print_best(best)
    print(f"\nwrote {store.out}/{exp.name}/hparam/best_hparams.json")
    return 0


if __name__ == "__main__":
    sys.exit(driver.main_guard(main))
