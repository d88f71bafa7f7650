"""Stage 2: train the seed x {BatchNorm, no BatchNorm} grid with Ray Tune.

    python sweeps/final.py                                    # digits-cnn, best hparams from stage 1
    python sweeps/final.py --experiment mnist-cnn --paper-hparams
    ray submit cluster.yaml sweeps/final.py -- --experiment cifar10-vgg16 --out s3://bucket/bnrep

Each model trains to its preset's stopping rule, reporting a checkpoint to
Tune every epoch; a failed trial (a node lost) restarts from its last
checkpoint (FailureConfig), an interrupted grid resumes with Tuner.restore.

Writes, under <out>/<experiment>/:
    train/models/<model_id>/model.pt       weights, preset, hparams, metrics
    results/training/<model_id>.parquet    one row per model (schema: design.md)
    results/training_history/<model_id>.parquet   one row per epoch

digits-cnn (4 seeds x 2) on 2 CPU cores: about 2 minutes. A rerun trains
only the models that are missing.
"""

from __future__ import annotations

import argparse
import io
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from bnrep import driver  # noqa: E402
from bnrep.data import load_data  # noqa: E402
from bnrep.experiments import Experiment  # noqa: E402
from bnrep.store import Store  # noqa: E402
from bnrep.train import Trainer, best_device, model_id  # noqa: E402


def model_path(mid: str) -> str:
    return f"train/models/{mid}/model.pt"


def is_trained(store: Store, mid: str, train_hash: str) -> bool:
    """Complete: the training row (current configuration) and a loadable model file."""
    if not store.has_part("training", mid, train_hash) or not store.exists(model_path(mid)):
        return False
    try:
        torch.load(io.BytesIO(store.read_bytes(model_path(mid))), map_location="cpu", weights_only=True)
        return True
    except Exception:  # truncated or corrupt: train again
        return False


def trial(config: dict, exp: Experiment, out: str, data_root: str | None, amp: bool, train_hash: str) -> None:
    """One Tune trial = one model of the grid; saves it and its Parquet rows."""
    from ray import tune

    seed, bn, hp = config["run"]["seed"], config["run"]["bn"], config["run"]["hparams"]
    mid = model_id(exp.arch, bn, seed)
    store = Store(out, exp.name)
    data = load_data(exp, data_root, device=best_device())
    trainer = Trainer(exp, data, bn, hp, seed, amp=amp)
    resumed_from = driver.train_in_tune(trainer, extra={"model_id": mid})
    r = trainer.finish()
    row = {"model_id": mid, "experiment": exp.name, "dataset": exp.dataset, "arch": exp.arch, "bn": bn,
           "seed": seed, "lr": float(hp["lr"]), "momentum": float(hp.get("momentum", 0.0)), "epochs": r.epochs,
           "best_epoch": r.best_epoch, "train_acc": r.train_acc, "val_acc": r.val_acc, "test_acc": r.test_acc,
           "interpolated": r.interpolated}
    buf = io.BytesIO()
    torch.save({"state_dict": {k: v.cpu() for k, v in r.model.state_dict().items()},
                "experiment": exp.to_dict(), "hparams": dict(hp), "metrics": row}, buf)
    store.write_bytes(model_path(mid), buf.getvalue())
    history = pd.DataFrame([{"model_id": mid, "bn": bn, "seed": seed, **vars(m)} for m in r.history])
    where = {"node_id": driver.node_id(), "resumed_from_epoch": resumed_from}  # provenance of a resumed trial
    store.write_part("training_history", mid, history, train_hash, **where)
    store.write_part("training", mid, pd.DataFrame([row]), train_hash, **where)  # last: marks the model complete
    tune.report({"model_id": mid, "test_acc": r.test_acc, "saved": True})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    driver.add_experiment_args(p)
    driver.add_training_args(p)
    p.add_argument("--paper-hparams", action="store_true",
                   help="use the preset's (paper's) lr and momentum instead of the sweep's best")
    return p


def grid_hparams(exp: Experiment, store: Store, paper: bool) -> dict[bool, dict]:
    """hparams per BatchNorm setting: the sweep's best, or the preset's."""
    if paper:
        return {bn: exp.paper_hparams(bn) for bn in (True, False)}
    if not store.exists("hparam/best_hparams.json"):
        raise driver.UsageError(f"no sweep results in {store.out}/{exp.name}/hparam: run sweeps/hparam.py "
                                f"--experiment {exp.name} first, or pass --paper-hparams")
    best = store.read_json("hparam/best_hparams.json")
    missing = [t for t in ("bn", "nobn") if t not in best]
    if missing:
        raise driver.UsageError(f"best_hparams.json lacks {', '.join(missing)}: rerun sweeps/hparam.py")
    return {bn: {k: best[tag][k] for k in ("lr", "momentum")} for bn, tag in ((True, "bn"), (False, "nobn"))}


def forget_analysis(store: Store, mids: list[str]) -> None:
    """Delete the analysis parts of models about to be trained anew (stale, valid or not)."""
    for table in driver.ANALYSIS_TABLES:
        for name in store.list_dir(f"results/{table}"):
            part = name.removesuffix(".parquet")
            if any(part == m or part.startswith(m + "-") for m in mids):
                store.delete(f"results/{table}/{name}")


def print_summary(df: pd.DataFrame) -> None:
    """Table-1-style: accuracy in percent, mean +- std over seeds."""
    print(f"\n{'model':16} {'seeds':>5} {'train %':>16} {'val %':>16} {'test %':>16} {'epochs':>7}")
    for (arch, bn), g in df.groupby(["arch", "bn"], sort=False):
        cells = [f"{100 * g[c].mean():7.3f} ± {100 * g[c].std():5.3f}" for c in ("train_acc", "val_acc", "test_acc")]
        name = f"{arch} {'BN' if bn else 'NBN'}"
        print(f"{name:16} {len(g):5d} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16} {g['epochs'].mean():7.1f}")


def run_grid(exp: Experiment, args, store: Store, todo: list[dict], gpus: float, train_hash: str) -> None:
    """Train `todo` in one Tune grid; resume the interrupted grid when it planned the same models."""
    from ray import tune

    fn = tune.with_resources(
        tune.with_parameters(trial, exp=exp, out=store.out, data_root=args.data_root, amp=args.amp,
                             train_hash=train_hash),
        {"cpu": args.cpus_per_trial, "gpu": gpus})
    path = store.uri("train", "tune", "final")
    planned = store.read_json("train/tune/plan.json") if store.exists("train/tune/plan.json") else []
    if planned and all(g in planned for g in todo) and tune.Tuner.can_restore(path):
        print(f"[final] resuming the interrupted grid in {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable=fn, resume_errored=True)
    else:
        store.delete("train/tune/final")
        store.write_json("train/tune/plan.json", todo)
        tuner = tune.Tuner(
            fn,
            param_space={"run": tune.grid_search(todo)},
            tune_config=tune.TuneConfig(trial_dirname_creator=driver.trial_dirname),
            run_config=tune.RunConfig(
                name="final", storage_path=store.uri("train", "tune"), verbose=0,
                callbacks=[driver.tune_progress("final", len(todo), describe_model)],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=args.max_failures)))
    errors = [r.error for r in tuner.fit() if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} model(s) failed after retries; first error: {errors[0]}")


def describe_model(r: dict) -> str:
    return f"models trained; last: {r.get('model_id', '?')}, test_acc {r.get('test_acc', float('nan')):.4f}"


def untrained(exp: Experiment, store: Store, grid: list[dict], train_hash: str) -> list[dict]:
    return [g for g in grid if not is_trained(store, model_id(exp.arch, g["bn"], g["seed"]), train_hash)]


def main(argv: list[str] | None = None) -> int:
    # ==== validate everything before Ray starts ====
    args = build_parser().parse_args(argv)
    exp, store, record = driver.open_training_stage(args, "final")
    hparams = grid_hparams(exp, store, args.paper_hparams)
    driver.print_header("final grid", exp, store)
    train_hash = driver.stage_hashes(exp)["train_hash"]

    # ==== skip trained models ====
    grid = [{"seed": s, "bn": bn, "hparams": hparams[bn]} for s in range(exp.seeds) for bn in (True, False)]
    todo = untrained(exp, store, grid, train_hash)
    print(f"[final] {len(grid) - len(todo)} of {len(grid)} models already trained", flush=True)
    if todo:
        driver.write_config(store, record)
        forget_analysis(store, [model_id(exp.arch, g["bn"], g["seed"]) for g in todo])  # now stale
        with driver.ray_session(args.address) as ray:
            driver.check_shared_out(ray, store)
            gpus = driver.default_gpus(ray, args.gpus_per_trial)
            run_grid(exp, args, store, todo, gpus, train_hash)
            todo = untrained(exp, store, grid, train_hash)
            if todo:  # a restored grid whose trials ended without saving: train them anew
                store.delete("train/tune/plan.json")
                run_grid(exp, args, store, todo, gpus, train_hash)

    df = store.read_table("training")
    wanted = {model_id(exp.arch, g["bn"], g["seed"]) for g in grid}
    print_summary(df[df["model_id"].isin(wanted)])
    print(f"\nwrote {store.out}/{exp.name}/results/training ({len(df)} models)")
    return 0


if __name__ == "__main__":
    sys.exit(driver.main_guard(main))
