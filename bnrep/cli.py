"""`bnrep`: the whole study in one command, and where it stands.

    bnrep run                          # digits-cnn: sweep -> grid -> analysis -> report
    bnrep run --experiment mnist-cnn --data-root ~/data
    bnrep run --smoke-test --out /tmp/bnrep      # every stage, tiny, seconds
    bnrep list                         # experiments, their data, whether it is here
    bnrep status --experiment digits-cnn

`bnrep run` runs each stage through the same code as its script
(sweeps/hparam.py, sweeps/final.py, analysis/run.py, analysis/report.py) on
one Ray session. A rerun of the same command redoes no finished work; an
interrupted one resumes; --fresh starts over.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

from bnrep import __version__, driver
from bnrep.experiments import PRESETS, Experiment

ROOT = Path(__file__).resolve().parents[1]
STAGES = {  # name -> script, in pipeline order
    "hparam": "sweeps/hparam.py",
    "final": "sweeps/final.py",
    "analysis": "analysis/run.py",
    "report": "analysis/report.py",
}


def load_stage(name: str):
    """The stage script as a module (its main, build_parser, ...)."""
    path = ROOT / STAGES[name]
    if not path.exists():
        raise driver.UsageError(f"{path} not found: install bnrep from a checkout (pip install -e .)")
    mod_name = f"bnrep_stage_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    spec.loader.exec_module(mod)
    import ray.cloudpickle  # trial and task functions travel to Ray workers by value

    ray.cloudpickle.register_pickle_by_value(mod)
    return mod


# ==== bnrep run ====
def run_parser(p: argparse.ArgumentParser) -> None:
    driver.add_experiment_args(p)
    driver.add_training_args(p)
    driver.add_analysis_args(p)
    p.add_argument("--paper-hparams", action="store_true",
                   help="skip the sweep; train the grid with the preset's (paper's) lr and momentum")


def stage_argv(args: argparse.Namespace, stage_parser: argparse.ArgumentParser) -> list[str]:
    """The flags of `args` that the stage's own parser knows, as argv."""
    argv = []
    for a in stage_parser._actions:
        if not a.option_strings or a.dest in ("help", "fresh") or not hasattr(args, a.dest):
            continue
        v = getattr(args, a.dest)
        if v is None or v is False or v == a.default:
            continue
        argv += [a.option_strings[0]] if v is True else [a.option_strings[0], str(v)]
    return argv


def validate_run(args: argparse.Namespace) -> Experiment:
    """Every check of every stage, before any work starts."""
    exp = driver.resolve_experiment(args)
    driver.check_positive(args, "seeds", "max_epochs", "num_samples", "train_size", "batch_size",
                          "cpus_per_trial", "samples_sparsity", "samples_cluster", "n_init", "cpus_per_task")
    load_stage("analysis").validate(args, exp)
    from bnrep.data import check_data

    check_data(exp, args.data_root)
    store = driver.open_store(args, exp)
    driver.prepare(store, exp, "hparam" if args.fresh else "analysis", args.fresh)
    return exp


def cmd_run(args: argparse.Namespace) -> int:
    exp = validate_run(args)
    t0 = time.time()
    names = ["final", "analysis", "report"] if args.paper_hparams else list(STAGES)
    with driver.ray_session(args.address):
        for i, name in enumerate(names, 1):
            stage = load_stage(name)
            argv = stage_argv(args, stage.build_parser())
            print(f"\n==== stage {i}/{len(names)}: {name} ({STAGES[name]} {' '.join(argv)}) ====", flush=True)
            rc = stage.main(argv)
            if rc:
                print(f"error: stage {name} failed (exit {rc}); rerun `bnrep run` to resume", file=sys.stderr)
                return rc
    store = driver.open_store(args, exp)
    print(f"\n==== done in {time.time() - t0:.0f} s: {store.uri('report', 'report.html')} ====")
    return 0


# ==== bnrep list ====
def cmd_list(args: argparse.Namespace) -> int:
    from bnrep.data import DataError, check_data, default_data_root

    root = args.data_root or default_data_root()
    print(f"{'experiment':20} {'dataset':14} {'model':9} {'data here':10} description")
    for name, e in PRESETS.items():
        try:
            check_data(e, root, download=False)
            here = "yes"
        except DataError:
            here = "no"
        print(f"{name:20} {e.dataset:14} {e.arch:9} {here:10} {e.description}")
    print(f"\n(data root: {root}; datasets download there on first use when the network allows)")
    return 0


# ==== bnrep status ====
def cmd_status(args: argparse.Namespace) -> int:
    from bnrep.status import stage_status

    rows = stage_status(args.out, args.experiment)
    print(f"{args.out}/{args.experiment}")
    for stage, state, detail in rows:
        print(f"  {stage:10} {state:9} {detail}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bnrep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"bnrep {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_parser(sub.add_parser("run", help="the whole study: sweep, grid, analysis, report"))
    lp = sub.add_parser("list", help="experiments, their dataset and model, whether the data is here")
    lp.add_argument("--data-root", default=None, metavar="DIR",
                    help="where torchvision datasets live (default: $BNREP_DATA or ~/.cache/bnrep/data)")
    sp = sub.add_parser("status", help="per stage: complete, partial or missing")
    sp.add_argument("--experiment", default="digits-cnn", metavar="NAME", help="experiment (default: digits-cnn)")
    sp.add_argument("--out", default="./runs", metavar="PATH|URI", help="results root (default: ./runs)")
    for name in STAGES:
        sub.add_parser(name, help=f"one stage: same as python {STAGES[name]}", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in STAGES:  # bnrep final --seeds 2 == python sweeps/final.py --seeds 2
        return driver.main_guard(lambda a: load_stage(argv[0]).main(a), argv[1:])
    args = build_parser().parse_args(argv)
    fn = {"run": cmd_run, "list": cmd_list, "status": cmd_status}[args.command]
    return driver.main_guard(lambda _: fn(args))


if __name__ == "__main__":
    sys.exit(main())
