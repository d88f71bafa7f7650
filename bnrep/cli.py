"""`bnrep`: the whole study in one command, and where it stands.

    bnrep run                          # digits-cnn: sweep -> grid -> analysis -> report
    bnrep run --experiment mnist-cnn --data-root ~/data
    bnrep run --smoke-test --out /tmp/bnrep      # every stage, tiny, seconds
    bnrep list                         # experiments, their data, whether it is here
    bnrep status --experiment digits-cnn
    bnrep final --seeds 2              # one stage: the same as python sweeps/final.py --seeds 2
    bnrep import --experiment mine --dataset imagefolder:~/leaves --models models.csv
                                       # models you trained: evaluated, recorded, then `bnrep run` measures them

`bnrep run` calls the same library stage functions as the scripts
(bnrep.stages.hparam, final, analysis, report) in order on one Ray session.
A rerun of the same command redoes no finished work; an interrupted one
resumes; --fresh starts over.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time

from bnrep import __version__
from bnrep.config import DEFAULT_OUT, UsageError
from bnrep.datasets import DATA_ROOT_HELP
from bnrep.experiments import DEFAULT_EXPERIMENT
from bnrep.flags import (SCRIPTS, Parser, build_parser as stage_parser, check_flags, exit_process, main_guard,
                         options, rerun_hint, resolve_experiment, run_stage)
from bnrep.studies import held_studies, named_study_file


# ==== bnrep run ====
def validate_run(args: argparse.Namespace):
    """Every check of every stage, before any work: (experiment, options, store)."""
    from bnrep.config import is_imported, open_store, prepare, stage_hashes, with_trained_config
    from bnrep.data import check_data
    from bnrep.represent import model_probes
    from bnrep.stages.analysis import check_k_max
    from bnrep.stages.final import check_kept_hparams, untrained

    check_flags(args)
    exp, opts = resolve_experiment(args), options(args)
    store = open_store(opts.out, exp)
    refuse_training_flags(args, store)
    imported = is_imported(store)
    if imported:  # nothing trains: training fields as recorded (--smoke-test's too), the analysis's from the flags
        recorded = with_trained_config(store, exp)
        other = [f"--{f} {getattr(args, f)}" for f in ("model", "dataset")
                 if getattr(args, f, None) is not None and getattr(exp, f) != getattr(recorded, f)]
        if other:
            raise UsageError(f"{store.out}/{store.experiment} holds models imported as {recorded.model} on "
                             f"{recorded.dataset}: {' and '.join(other)} would be other models or data (import "
                             f"them into another experiment)")
        exp = recorded
    n_train = check_data(exp, opts.data_root)
    check_k_max(exp, min(exp.samples_cluster, n_train))  # the analysis samples of the training split
    grid = [{"seed": s, "norm": n} for s in range(exp.seeds) for n in exp.norms]
    trains = not imported and (opts.fresh or bool(untrained(exp, store, grid, stage_hashes(exp)["train_hash"])))
    model_probes(exp, training=trains)  # the model builds under every norm and takes the data (to train: enough
    # values per norm group)
    prepare(store, exp, "hparam" if opts.fresh and not imported else "analysis", opts.fresh)
    if not imported and not opts.fresh:  # (before the sweep: a sweep whose grid would keep other models is refused)
        check_kept_hparams(exp, store, opts.paper_hparams)
    return exp, opts, store


TRAINING_FLAGS = ("norms", "conditions", "seeds", "max_epochs", "num_samples", "train_size", "batch_size", "lr",
                  "momentum", "paper_hparams")  # what the sweep and the grid train


def refuse_training_flags(args: argparse.Namespace, store) -> None:
    """`bnrep run` on imported models (bnrep import) trains nothing: a flag that says what to train is refused."""
    from bnrep.config import is_imported

    given = [f"--{f.replace('_', '-')}" for f in TRAINING_FLAGS if getattr(args, f, None) not in (None, False)]
    if given and is_imported(store):
        raise UsageError(f"{store.out}/{store.experiment} holds imported models (bnrep import): nothing is trained, "
                         f"so {', '.join(given)} would change nothing; measure them without it")


def cmd_run(args: argparse.Namespace) -> int:
    from bnrep.config import start_fresh
    from bnrep.lock import writer_lock

    from bnrep.config import is_imported

    with named_study_file(args.experiment):
        exp, opts, store = validate_run(args)
    imported = is_imported(store)
    with writer_lock(store, "run"):  # the stages find it held by this process
        # imported models stay (bnrep import --fresh imports them anew): the analysis starts over, as --fresh does
        first = None if imported or not opts.fresh else "hparam" if not opts.paper_hparams else "final"
        return run_stages(exp, dataclasses.replace(opts, fresh=opts.fresh and imported), store, imported,
                          fresh=lambda: start_fresh(store, first) if first else None)


def run_stages(exp, opts, store, imported: bool = False, fresh=lambda: None) -> int:
    """The stages in one Ray session (the report after it): every stage's resource check, then `fresh`
    (--fresh's deletion), then the work (a refused run deletes nothing and trains nothing)."""
    from bnrep.config import held_conditions
    from bnrep.experiments import reference_note
    from bnrep.raysession import check_resources, ray_session
    from bnrep.stages import analysis, final, hparam, report

    t0 = time.time()
    steps = [("hparam", lambda o: hparam.run(exp, o)), ("final", lambda o: final.run(exp, o)),
             ("analysis", lambda o: analysis.run(exp, o)), ("report", lambda o: report.run(o.out, [exp.name]))]
    if imported:  # models bnrep import recorded: nothing to sweep or train
        print(f"{exp.name}: imported models (bnrep import); no sweep, no training", flush=True)
        steps = steps[2:]
    elif opts.paper_hparams:
        steps = steps[1:]
    if imported and (note := reference_note(exp, held_conditions(store, exp, ["training"]))):  # (a training
        print(note, flush=True)  # stage's header says it)

    def stage(i: int, name: str, step) -> int:
        print(f"\n==== stage {i}/{len(steps)}: {name} (as python {SCRIPTS[name]}) ====", flush=True)
        rc = step(opts if i == 1 else dataclasses.replace(opts, notes=False))  # the study's notes said once
        if rc:
            print(f"error: stage {name} failed (exit {rc}); {rerun_hint(opts.fresh)}", file=sys.stderr)
        return rc

    with ray_session(opts.address, exp.model) as ray:
        check_resources(ray, opts, [name for name, _ in steps])
        fresh()
        for i, (name, step) in enumerate(steps[:-1], 1):
            if rc := stage(i, name, step):
                return rc
    # the report needs no Ray: after its shutdown the figures are drawn by processes forked from this one,
    # which have everything imported (a Ray worker imported matplotlib and bnrep.figures first: 1.7 s)
    if rc := stage(len(steps), *steps[-1]):
        return rc
    print(f"\n==== done in {time.time() - t0:.0f} s: {store.uri('report', 'report.html')} ====")
    return 0


# ==== bnrep import ====
def cmd_import(args: argparse.Namespace) -> int:
    from bnrep.experiments import ConfigError
    from bnrep.studies import named_experiment
    from bnrep.stages import imports
    from bnrep.studies import NAME_RULE, STUDY_NAME

    check_flags(args)
    try:
        exp = named_experiment(args.experiment, args.out)
    except ConfigError:
        if args.experiment.endswith(".toml") or "/" in args.experiment:
            raise
        if not STUDY_NAME.fullmatch(args.experiment):  # a folder under --out: no '..', not empty
            raise ConfigError(f"--experiment {args.experiment!r}: {NAME_RULE}") from None
        exp = None  # a new experiment of that name, on --dataset (one line without it)
    return imports.run(exp, args.experiment, args.models, options(args), args.dataset, args.image_size)


def import_parser(p: argparse.ArgumentParser) -> None:
    from bnrep.datasets import DATASETS

    p.add_argument("--experiment", required=True, metavar="NAME",
                   help="a preset, a study file NAME.toml, an experiment --out holds, or a new name (with --dataset)")
    p.add_argument("--models", required=True, metavar="FILE",
                   help="CSV (model_id,model,norm,seed,weights; other columns kept as labels) or TOML ([[models]])")
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help=f"the data to evaluate and measure them on: {', '.join(DATASETS)} or imagefolder:PATH "
                        "(default: the experiment's)")
    p.add_argument("--image-size", type=int, default=None, metavar="S",
                   help="imagefolder: resize the shorter side to S and centre-crop S x S (default: as stored)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="PATH|URI", help=f"results root (default: {DEFAULT_OUT})")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help=DATA_ROOT_HELP)
    p.add_argument("--fresh", action="store_true", help="delete the experiment's results and import every model anew")


# ==== bnrep list ====
def cmd_list(args: argparse.Namespace) -> int:
    from bnrep.data import check_data, default_data_root
    from bnrep.datasets import FOLDER, DatasetError, parse_dataset
    from bnrep.experiments import PRESETS
    from bnrep.store import Store, is_uri
    from bnrep.studies import held_studies

    if not_a_results_folder(args.out):
        return 2
    root = args.data_root or default_data_root()
    rows = [("experiment", "dataset", "model", "data here", "results here", "description")]
    held, with_results = studies_under(args.out), set(held_studies(args.out, presets=True))
    for name, e in [*PRESETS.items(), *held]:
        try:
            family, path = parse_dataset(e.dataset)
            if family != FOLDER:
                check_data(e, root, download=False, split=False)  # the files, not the study's split
            here = "yes" if family != FOLDER or os.path.isdir(path) else "no"  # (a folder: not every image decoded)
        except DatasetError:
            here = "no"
        results = ("no" if name not in with_results else  # its report written, or results short of one
                   "report" if Store(args.out, name).exists("report", "report.md") else "started")
        rows.append((name, e.dataset, e.model, here, results, e.description or "(a study under --out)"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]  # columns as wide as their longest entry
    for r in rows:
        print("  ".join(f"{v:{w}}" for v, w in zip(r, widths)) + f"  {r[5]}")
    if not is_uri(args.out) and not os.path.exists(args.out):
        held_said = "no such folder yet"
    else:
        presets = sorted(with_results & set(PRESETS))
        held_said = "; ".join(
            [f"results of {len(presets)} preset{'s' * (len(presets) != 1)} ({', '.join(presets)}; bnrep status "
             f"--out {args.out} says how far each got)"] * bool(presets)
            + [f"{len(held)} more {'study' if len(held) == 1 else 'studies'} (the table's last "
               f"{'row' if len(held) == 1 else f'{len(held)} rows'}), each run by its name"
               if held else "no studies besides the presets"])
    print(f"\n(data root: {root}; datasets download there on first use when the network allows; --out "
          f"{args.out}: {held_said})")
    return 0


def not_a_results_folder(out: str) -> bool:
    """check_readable, and a local `out` that is a file: one line on stderr (the caller exits 2)."""
    from bnrep.config import check_readable
    from bnrep.store import is_uri

    check_readable(out)
    if not is_uri(out) and os.path.exists(out) and not os.path.isdir(out):
        print(f"error: --out {out} is a file, not a folder of results", file=sys.stderr)
        return True
    return False


def studies_under(out: str) -> list[tuple[str, object]]:
    """(name, experiment) of each study `out` holds (its config.json), presets left out; none when `out`
    does not open."""
    from bnrep.config import load_experiment
    from bnrep.experiments import ConfigError
    from bnrep.store import Store

    found = []
    for n in held_studies(out):
        with contextlib.suppress(ConfigError, OSError, ValueError):  # a config.json that does not read: left out
            found.append((n, load_experiment(Store(out, n), n)))
    return found


# ==== bnrep status ====
def cmd_status(args: argparse.Namespace) -> int:
    from bnrep.config import refuse_study_folder
    from bnrep.status import sizes_note, stage_status
    from bnrep.store import is_uri
    from bnrep.studies import held_studies, load_study

    if not_a_results_folder(args.out):
        return 2
    local = not is_uri(args.out)
    # without --experiment: every study --out holds (presets too), else the default experiment's (none yet)
    for i, given in enumerate([args.experiment] if args.experiment else held_studies(args.out, presets=True)
                              or [DEFAULT_EXPERIMENT]):
        study = load_study(given) if given.endswith(".toml") else None
        name = study.name if study else given
        refuse_study_folder(args.out, name)
        rows = stage_status(args.out, name, study)
        unknown = {detail for _, state, detail in rows if state == "unknown"}
        if len(unknown) == 1 and all(state == "unknown" for _, state, _ in rows):  # the experiment itself: one line
            print(f"error: {unknown.pop()}", file=sys.stderr)
            return 2
        print(("\n" if i else "") + f"{args.out}/{name}" + (
            "  (no such folder: nothing has run with this --out yet)" if local and not os.path.exists(args.out)
            else sizes_note(args.out, name)))
        for stage, state, detail in rows:
            print(f"  {stage:10} {state:9} {detail}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="bnrep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"bnrep {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stage_parser("run", sub.add_parser("run", help="the whole study: sweep, grid, analysis, report"))
    lp = sub.add_parser("list", help="experiments, their dataset and model, whether the data is here")
    lp.add_argument("--out", default=DEFAULT_OUT, metavar="PATH|URI", help="results root whose studies to list too "
                                                                        f"(default: {DEFAULT_OUT})")
    lp.add_argument("--data-root", default=None, metavar="DIR",
                    help=DATA_ROOT_HELP)
    sp = sub.add_parser("status", help="per stage: complete, partial or missing (the sweep: skipped after "
                                       "--paper-hparams)")
    sp.add_argument("--experiment", default=None, metavar="NAME",
                    help=f"experiment (default: every study --out holds; {DEFAULT_EXPERIMENT} while it holds none)")
    sp.add_argument("--out", default=DEFAULT_OUT, metavar="PATH|URI", help=f"results root (default: {DEFAULT_OUT})")
    import_parser(sub.add_parser("import", help="models you trained: check, evaluate and record them for the "
                                                "analysis"))
    for name, script in SCRIPTS.items():
        sub.add_parser(name, help=f"one stage: same as python {script}", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SCRIPTS:  # bnrep final --seeds 2 == python sweeps/final.py --seeds 2
        return run_stage(argv[0], argv[1:], prog=f"bnrep {argv[0]}")
    args = build_parser().parse_args(argv)
    fn = {"run": cmd_run, "import": cmd_import, "list": cmd_list, "status": cmd_status}[args.command]
    return main_guard(lambda: fn(args), bool(getattr(args, "fresh", False)))


def console() -> None:
    """The `bnrep` command (and `python -m bnrep`)."""
    exit_process(main())


if __name__ == "__main__":
    console()
