"""The command line: flags -> (Experiment, RunOptions) -> a stage.

The one place argparse lives (besides `bnrep.cli`'s subcommands). The stage
scripts in sweeps/ and analysis/ are `exit_process(run_stage("final", argv))`.

    resolve_experiment(args)   preset, then --smoke-test, then explicit flags; validated
    options(args)              where and how the stage runs (bnrep.config.RunOptions)
    run_stage(name, argv)      parse, check, run; bad input -> one line on stderr, exit 2
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import math
import os
import re
import signal
import sys
import warnings
from typing import NoReturn

from bnrep.config import DEFAULT_OUT, RunOptions, StageFailed, UsageError
from bnrep.address import check_address
from bnrep.axis import twin_conditions
from bnrep.raysession import INTERRUPTED, STOPPED_BY, STOPPED_CODES, noting_interrupts, stop_on_sigterm
from bnrep.results import and_list
from bnrep.datasets import DATA_ROOT_HELP, DATASETS, DatasetError, absolute_dataset
from bnrep.lock import LockError
from bnrep.experiments import DEFAULT_EXPERIMENT, PRESETS, ConfigError, Experiment, capped_conditions, \
    get_experiment, smoke
from bnrep.studies import NAME_RULE, STUDY_NAME, named_experiment, named_study_file, recorded_data, study_name
from bnrep.models import BUILTIN, ModelError
from bnrep.norms import NAMES as NORMS, NormError
from bnrep.probes import ProbeError
from bnrep.store import StoreWriteError, write_error

SCRIPTS = {  # stage -> script, in pipeline order
    "hparam": "sweeps/hparam.py",
    "final": "sweeps/final.py",
    "analysis": "analysis/run.py",
    "report": "analysis/report.py",
}
DESCRIPTIONS = {
    "hparam": "Stage 1: Ray Tune hyperparameter sweep, one search per condition (a normalisation, or one with "
              "training overrides).",
    "final": "Stage 2: train the seed x condition grid with Ray Tune.",
    "analysis": "Stage 3: measure every trained model's representations with Ray tasks.",
    "report": "Write the report: Table 1, the paper's Figures 1-6, findings, as Markdown and HTML.",
}


# ==== flags ====
def add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, metavar="NAME",
                   help=f"experiment preset (default: {DEFAULT_EXPERIMENT}; valid: {', '.join(PRESETS)}), a study "
                        "file NAME.toml (base = a preset, then any experiment field), or the name of one that "
                        "--out holds")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="PATH|URI",
                   help=f"results root, a local path or an s3:// or file:// URI (default: {DEFAULT_OUT})")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="join this Ray cluster (default: $RAY_ADDRESS, else the one `ray start` runs on this "
                        "machine, else a private local Ray)")
    p.add_argument("--model", default=None, metavar="SPEC",
                   help=f"the network: {', '.join(BUILTIN)}, torchvision:NAME, timm:NAME or "
                        "package.module:function (a callable(num_classes, in_channels) -> nn.Module); "
                        "default: the preset's")
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help=f"the data: {', '.join(DATASETS)}, or imagefolder:PATH (PATH/train/<class>/*.png, "
                        "PATH/test/<class>/..., PATH/val/ optional); default: the preset's")
    p.add_argument("--image-size", type=int, default=None, metavar="S",
                   help="imagefolder: resize the shorter side to S and centre-crop S x S (default: as stored)")
    p.add_argument("--smoke-test", action="store_true",
                   help="tiny everything (few epochs, trials, seeds and samples; sizes already smaller "
                        "stay): seconds per stage. A study of your own (--experiment NAME) made with it keeps "
                        "those sizes in its config.json, flag or not; a preset's results need the flag again "
                        "(a preset stands for its full sizes). Each stage's first line says which")
    p.add_argument("--fresh", action="store_true",
                   help="delete this stage's earlier results (and what depends on them) and start over")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help=DATA_ROOT_HELP)


def add_training_args(p: argparse.ArgumentParser) -> None:
    axis = p.add_mutually_exclusive_group()
    axis.add_argument("--norms", default=None, metavar="LIST",
                      help=f"normalisations to compare, comma-separated, of {', '.join(NORMS)} "
                           "(default: preset; the paper's: batch,none; as-built: the model's own)")
    axis.add_argument("--conditions", default=None, metavar="LIST",
                      help="conditions to compare, ';'-separated: a norm, or TAG:NORM,FIELD=VALUE,... with training "
                           "overrides, e.g. 'batch; bn-b8:batch,batch_size=8; gn-b8:group,batch_size=8' "
                           "(fields: batch_size, weight_decay, lr, ...; label=, color= for the figures)")
    p.add_argument("--reference", default=None, metavar="NAME",
                   help="the condition every claim is judged against (default: the preset's or study's; none "
                        "for the paper's presets)")
    p.add_argument("--seeds", type=int, default=None, metavar="N", help="model seeds 0..N-1 (default: preset, 4)")
    p.add_argument("--max-epochs", type=int, default=None, metavar="N", help="epoch cap per model (default: preset)")
    p.add_argument("--num-samples", type=int, default=None, metavar="N",
                   help="hparam trials per condition (default: preset)")
    p.add_argument("--train-size", type=int, default=None, metavar="N",
                   help="train on the first N images of the seeded training split (default: all)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="images per step (default: preset, 64)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="N", help="CPUs per Tune trial (default: 1)")
    p.add_argument("--gpus-per-trial", type=float, default=None, metavar="F",
                   help="GPUs per Tune trial, fractions allowed (default: 1 if the cluster has GPUs, else 0)")
    p.add_argument("--max-failures", type=int, default=3, metavar="N",
                   help="retries of a failed trial from its last checkpoint; an epoch that fails twice "
                        "with the same error is not tried again (default: 3)")
    p.add_argument("--checkpoint-every", type=float, default=RunOptions.checkpoint_every, metavar="SECONDS",
                   help="a trial checkpoints after the first epoch that ends SECONDS after its start or its last "
                        "checkpoint: a failure loses at most SECONDS of its training plus one epoch; 0: every "
                        "epoch (default: %(default)g)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on GPU (ignored on CPU)")


def add_paper_hparams(p: argparse.ArgumentParser) -> None:
    p.add_argument("--paper-hparams", action="store_true",
                   help="skip the sweep: the preset's (paper's) lr and momentum instead of the sweep's best")
    p.add_argument("--lr", type=float, default=None, help="learning rate for --paper-hparams runs (default: preset)")
    p.add_argument("--momentum", type=float, default=None,
                   help="SGD Nesterov momentum for --paper-hparams runs (default: preset)")


def add_analysis_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples-sparsity", type=int, default=None, metavar="N",
                   help="training images for sparsity (default: preset, 5000)")
    p.add_argument("--samples-cluster", type=int, default=None, metavar="N",
                   help="training images for clustering (default: preset, 15000)")
    p.add_argument("--k-min", type=int, default=None, help="smallest k of the k-means sweep (default: 2)")
    p.add_argument("--k-max", type=int, default=None, help="largest k of the k-means sweep (default: 15)")
    p.add_argument("--n-init", type=int, default=None, help="k-means restarts per k (default: preset)")
    p.add_argument("--eps", default=None, metavar="LIST",
                   help="sparsity thresholds, comma-separated: |x| <= eps counts as zero, all counted in one "
                        "pass (default: 0, the paper's; e.g. 0,1e-3,1e-2,1e-1)")
    p.add_argument("--probes", default=None, metavar="RULE",
                   help="activations to measure: all (default), comma-separated globs on probe names "
                        "('layer*.relu*'), or activation types ('type:ReLU,GELU')")
    p.add_argument("--kmeans-backend", choices=("torch", "sklearn"), default="torch",
                   help="batched torch k-means (default) or scikit-learn's KMeans per k")
    p.add_argument("--cpus-per-task", type=float, default=1.0, metavar="N", help="CPUs per analysis task (default: 1)")
    p.add_argument("--gpus-per-task", type=float, default=None, metavar="F",
                   help="GPUs per extraction task, fractions allowed (default: 1 if the cluster has GPUs, else 0)")


def add_snapshot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--snapshots", default=None, metavar="LIST",
                   help="epochs to keep and measure besides the final model, comma-separated: the grid saves the "
                        "weights after each (a model trained without one is trained again), the analysis "
                        "measures them; 0 = the initialisation, rebuilt from the seed (k-means: final models only)")
    p.add_argument("--snapshot-kmeans", action="store_true", default=None,
                   help="run the k-means sweep at every snapshot epoch too (by default the final models only: it "
                        "is the expensive measure)")


def add_report_args(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                       help=f"experiment to report on (default {DEFAULT_EXPERIMENT})")
    which.add_argument("--experiments", nargs="+", metavar="NAME",
                       help="several experiments: a report for each, plus a combined one with a panel per "
                            "experiment side by side in <out>/combined/")
    which.add_argument("--all", action="store_true",
                       help="every experiment that has results under --out, plus a combined report")
    p.add_argument("--force", action="store_true", help="rebuild the report even when it is up to date")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="PATH|URI",
                   help=f"results root, a local path or an s3:// or file:// URI (default: {DEFAULT_OUT})")


STAGE_FLAGS = {
    "hparam": (add_experiment_args, add_training_args),
    "final": (add_experiment_args, add_training_args, add_paper_hparams, add_snapshot_args),
    "analysis": (add_experiment_args, add_analysis_args, add_snapshot_args),
    "report": (add_report_args,),
    "run": (add_experiment_args, add_training_args, add_paper_hparams, add_analysis_args, add_snapshot_args),
}


class Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (the usage block is --help's), and no abbreviated flags: argparse
    would take `--norm batch` for `--norms` and `--seed 3` for `--seeds`, while a misspelt flag is refused."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def error(self, message: str):
        prog = self._command().prog  # `bnrep run --smoketest`: argparse says it as `bnrep`; the flags are run's
        command = f"python {prog}" if prog.endswith(".py") else prog
        self.exit(2, f"error: {prog}: {message}{self._did_you_mean(message)} (see {command} --help)\n")

    def _command(self) -> argparse.ArgumentParser:
        """The parser of the subcommand typed (`bnrep run ...`: run's), else this one."""
        return next((self._commands[w] for w in self._argv if w in self._commands), self)

    _argv: list[str] = []
    _commands: dict = {}  # bnrep's subcommands' parsers, by name

    def add_subparsers(self, **kwargs):
        action = super().add_subparsers(**kwargs)
        self._commands = action.choices
        return action

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)  # what _did_you_mean reads the command from
        return super().parse_known_args(args, namespace)

    def _did_you_mean(self, message: str) -> str:
        """'; did you mean --smoke-test?' for a mistyped flag (argparse's 'unrecognized arguments: --smoketest')."""
        import difflib

        if not message.startswith("unrecognized arguments: "):
            return ""
        own = self._command()
        flags = usage_flags(own)
        typed = [w.split("=")[0] for w in message.split(": ", 1)[1].split() if w.startswith("--")]
        bnrep = own.prog.startswith("bnrep")
        for w in typed:  # a flag of another command (--paper-hparams given to the sweep)
            if others := commands_with(w, bnrep):
                return f"; {w} is a flag of {and_list(others)}"
        everyone = sorted({f for stage in (*SCRIPTS, "run") for f in usage_flags(build_parser(stage))})
        for w in typed:  # a flag shortened, else the closest flag of this command or another
            close = [f for f in flags if f.startswith(w)][:1] or difflib.get_close_matches(w, everyone, n=1)
            if close:
                return f"; did you mean {close[0]}?" + ("" if close[0] in flags else
                                                        f" (a flag of {and_list(commands_with(close[0], bnrep))})")
        return ""


def usage_flags(parser: argparse.ArgumentParser) -> list[str]:
    """The --flags `parser` takes, as its usage line lists them (not those its help text mentions)."""
    return sorted(set(re.findall(r"--[A-Za-z0-9][\w-]*", parser.format_usage())))


def commands_with(flag: str, bnrep: bool) -> list[str]:
    """The stage commands and `bnrep run` that take `flag`: `bnrep STAGE` or its script, as `bnrep` says."""
    return [("bnrep " + stage if bnrep or stage == "run" else SCRIPTS[stage])
            for stage in (*SCRIPTS, "run") if flag in usage_flags(build_parser(stage, prog=f"bnrep {stage}"))]


def build_parser(stage: str, parser: argparse.ArgumentParser | None = None,
                 prog: str | None = None) -> argparse.ArgumentParser:
    """The flags of `stage` (a stage name or "run"), on `parser` or a new one (named `prog`: the command
    typed, default the stage's script)."""
    p = parser or Parser(prog=prog or SCRIPTS.get(stage), description=DESCRIPTIONS.get(stage))
    for add in STAGE_FLAGS[stage]:
        add(p)
    return p


# ==== flags -> Experiment, RunOptions ====
OVERRIDE_FLAGS = ("norms", "conditions", "reference", "seeds", "max_epochs", "num_samples", "train_size",
                  "batch_size", "lr", "momentum",
                  "samples_sparsity", "samples_cluster", "k_min", "k_max", "n_init", "eps",
                  "probes", "snapshots", "snapshot_kmeans", "dataset", "image_size")  # = Experiment fields


def _new_study(args: argparse.Namespace, unknown: ConfigError) -> Experiment:
    """--experiment NAME that is no preset, study file or experiment under --out, with --dataset: a new study
    of that name (the default preset's recipe on that data), as `bnrep import` makes one; else `unknown`."""
    name, dataset = args.experiment, getattr(args, "dataset", None)
    plain = not (name.endswith(".toml") or "/" in name)
    trains = hasattr(args, "max_epochs")  # a training stage or `bnrep run`: a new study can start there
    if not dataset and trains and plain and str(unknown).startswith("unknown experiment"):
        raise ConfigError(f"{unknown} (a new study of that name needs --dataset)") from None
    if not dataset or not plain:
        raise unknown
    if not STUDY_NAME.fullmatch(name):
        raise ConfigError(f"--experiment {name!r}: {NAME_RULE}") from None
    return get_experiment(DEFAULT_EXPERIMENT).override(
        name=name, description=f"{name}: the {DEFAULT_EXPERIMENT} recipe on {absolute_dataset(dataset)}")


def resolve_experiment(args: argparse.Namespace) -> Experiment:
    """Preset (or study file, or an experiment --out holds by name) with the model and data --out recorded for it
    (recorded_data), then --smoke-test, then explicit flags; validated (ConfigError)."""
    try:
        exp = named_experiment(args.experiment, getattr(args, "out", None))
    except ConfigError as e:
        exp = _new_study(args, e)
    held = recorded_data(args, exp.name)
    exp = exp.with_model(getattr(args, "model", None) or held.get("model"))
    flags = {f: getattr(args, f, None) for f in OVERRIDE_FLAGS}
    if flags.get("dataset") is None and held.get("dataset"):
        flags["dataset"] = held["dataset"]
    if flags.get("lr") is not None:  # an explicit lr applies to every normalisation
        flags["lr_nobn"] = flags["lr"]
    if flags.get("dataset"):  # imagefolder:PATH as the folder it names, wherever a later command runs
        flags["dataset"] = absolute_dataset(flags["dataset"])
    twins = twin_conditions(exp.override(**flags))  # the study as asked: --smoke-test's caps may make two alike
    if twins:
        raise ConfigError(twins)
    if args.smoke_test:
        exp = smoke(exp)
    exp = exp.override(**flags)
    if args.smoke_test:  # conditions given as a flag
        exp = capped_conditions(exp)
    if exp.sweep_max_epochs and exp.sweep_max_epochs > exp.max_epochs:
        exp = exp.override(sweep_max_epochs=exp.max_epochs)
    return exp


def options(args: argparse.Namespace) -> RunOptions:
    """The RunOptions fields that `args` has (the rest keep their defaults), paths absolute."""
    fields = RunOptions.__dataclass_fields__
    return RunOptions(**{f: getattr(args, f) for f in fields if hasattr(args, f)}).absolute()


POSITIVE = ("seeds", "max_epochs", "num_samples", "train_size", "batch_size", "cpus_per_trial",
            "samples_sparsity", "samples_cluster", "n_init", "cpus_per_task")


RESOURCES = ("cpus_per_trial", "cpus_per_task", "gpus_per_trial", "gpus_per_task")
RAY_PRECISION = 10_000  # Ray counts a resource in steps of 1/10,000


def check_flags(args: argparse.Namespace) -> None:
    """Counts > 0, GPU fractions, retries and the checkpoint interval >= 0 (Tune would read --max-failures -1
    as retrying for ever),
    finite, resources in Ray's steps, named by their flag (UsageError)."""
    for n in (*POSITIVE, "gpus_per_trial", "gpus_per_task", "max_failures", "checkpoint_every"):
        v, flag = getattr(args, n, None), f"--{n.replace('_', '-')}"
        if v is None:
            continue
        if not math.isfinite(v):
            raise UsageError(f"{flag} must be a finite number, got {v}")
        if v < 0 or (v == 0 and n in POSITIVE):
            raise UsageError(f"{flag} must be {'>' if n in POSITIVE else '>='} 0, got {v}")
        if n in RESOURCES and abs(v * RAY_PRECISION - round(v * RAY_PRECISION)) > 1e-6:
            raise UsageError(f"{flag} {v}: Ray counts resources in steps of {1 / RAY_PRECISION:g}")
    chosen = [f"--{n}" for n in ("lr", "momentum") if getattr(args, n, None) is not None]
    if chosen and not getattr(args, "paper_hparams", False):
        raise UsageError(f"{' and '.join(chosen)} set{'s' * (len(chosen) == 1)} the hyperparameters of --paper-hparams "
                         f"runs; without it the sweep chooses them (its lr range: lr_range in a study file)")
    if getattr(args, "paper_hparams", False) and getattr(args, "num_samples", None) is not None:
        raise UsageError("--num-samples sizes the sweep, which --paper-hparams skips: give one of them")
    if hasattr(args, "address"):
        check_address(args.address)  # a typo in a cluster address: one line now, not minutes of retries


def run_parsed(module, stage: str, argv: list[str] | None, prog: str | None = None) -> int:
    """A training or analysis stage on its flags, checked and resolved before any work."""
    args = build_parser(stage, prog=prog).parse_args(argv)
    check_flags(args)
    exp, opts = resolve_experiment(args), options(args)
    with named_study_file(args.experiment):
        return module.run(exp, opts)


# ==== running ====
def run_stage(stage: str, argv: list[str] | None = None, prog: str | None = None) -> int:
    """`python sweeps/final.py ARGS` == run_stage("final", ARGS) (`bnrep final ARGS`: prog "bnrep final")."""
    module = importlib.import_module(f"bnrep.stages.{stage}")
    if stage == "report":
        args = build_parser("report", prog=prog).parse_args(argv)
        def report() -> int:
            chosen = None if args.all else [study_name(e) for e in args.experiments or [args.experiment]]
            return module.run(args.out, chosen, several=bool(args.experiments), force=args.force)

        return main_guard(report)
    fresh = "--fresh" in (sys.argv[1:] if argv is None else argv)
    return main_guard(lambda: run_parsed(module, stage, argv, prog), fresh)


def plain_warnings() -> None:
    """Python warnings as one plain line (no file path, no source line)."""
    warnings.formatwarning = lambda message, category, *a, **k: f"note: {message}\n"


def exit_process(code: int) -> NoReturn:
    """End a command's process with `code` (its entry point's last call). After Ctrl-C (130) the process
    ends at once, bnrep's own cleanup done (the writer lock released, Ray shut down, in their `finally`):
    the KeyboardInterrupt may have stopped another library mid-operation, and its exit handlers (Tune's
    TensorBoard writers join their threads and queues at exit) could then wait forever. Otherwise, with no
    other thread left, the exit handlers run as at any exit, and the process then ends without Python's
    teardown of every module it imported (torch, Ray, pandas: 0.8-1 s of every command)."""
    import atexit
    import threading

    if code not in STOPPED_CODES:
        if threading.active_count() > 1:  # a normal exit, which waits for them
            sys.exit(code)
        atexit._run_exitfuncs()  # Ray's, logging's, temporary folders' ...: what a normal exit runs (once)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - a closed pipe, a full disk: Python's own exit says so (exit 120)
            sys.exit(code)
        os._exit(code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a pipe whose reader the same Ctrl-C ended (`| tee`)
            stream.flush()
    os._exit(code)


def without_fresh(line: str, fresh: bool) -> str:
    """An error's line; after a command with --fresh, its advice to rerun the same command says to leave
    --fresh out (it would delete the results the line says are kept)."""
    return line.replace(RERUN, f"{RERUN} without --fresh") if fresh else line


RERUN = "rerun the same command"  # (the advice of a failure whose results are kept)


def rerun_hint(fresh: bool) -> str:
    """How to resume a stopped command: as typed, or (it had --fresh, which would start over) without --fresh."""
    return "rerun the same command without --fresh to resume" if fresh else "rerun the same command to resume"


OUTPUT_ERRORS = {errno.EPIPE: "its reader has gone", errno.ENOSPC: "", errno.EDQUOT: ""}  # not bnrep's fault


def cannot_write(e: OSError) -> int:
    """A write that the system refused (`> /dev/full`, a pipe whose reader has gone, a full disk outside the
    results, whose own writes name their file): one line, exit 1."""
    why = OUTPUT_ERRORS[e.errno]
    with contextlib.suppress(OSError, ValueError):
        print(f"error: cannot write: {os.strerror(e.errno)}" + (f" ({why})" if why else ""), file=sys.stderr)
    return 1


def main_guard(fn, fresh: bool = False) -> int:
    """Run `fn()`: bad input -> one line on stderr, exit 2; a write the system refuses -> one line, exit 1;
    Ctrl-C -> exit 130, SIGTERM -> 143, SIGHUP -> 129 (`fresh`: the command had --fresh, which its rerun should not have)."""
    plain_warnings()
    STOPPED_BY.clear()  # (this command's: bnrep.run may run several in one process)
    INTERRUPTED.clear()
    stop_on_sigterm()
    with noting_interrupts():
        return _guarded(fn, fresh)


def _guarded(fn, fresh: bool) -> int:
    try:
        return fn() or 0
    except KeyboardInterrupt:
        return _stopped(fresh)
    except Exception as e:
        if INTERRUPTED or STOPPED_BY:  # what the stop caused (an import it cut midway, a connection it broke)
            return _stopped(fresh)
        return _error(e, fresh)


def _error(e: Exception, fresh: bool) -> int:
    """Bad input -> one line, exit 2; a failed stage, a write the system refused -> one line, exit 1; any other
    error is raised again (a defect: its traceback)."""
    if isinstance(e, (UsageError, ConfigError, DatasetError, LockError, ModelError, NormError, ProbeError)):
        print(f"error: {e}", file=sys.stderr)
        return 2
    if isinstance(e, StageFailed):
        print(f"error: {without_fresh(str(e), fresh)}", file=sys.stderr)
        return 1
    if isinstance(e, StoreWriteError):  # disk full, permission denied: the locks are released on the way out
        print(f"error: {without_fresh(str(write_error(e) or e), fresh)}", file=sys.stderr)
        return 1
    if isinstance(e, OSError) and e.errno in OUTPUT_ERRORS:
        return cannot_write(e)
    raise e


def _stopped(fresh: bool) -> int:
    """One line, and the shell's exit status for the signal (128 + its number). The line may find no terminal
    left to write to (SIGHUP: it closed)."""
    if STOPPED_BY:
        line, code = f"stopped ({signal.Signals(STOPPED_BY[0]).name}): ", 128 + STOPPED_BY[0]
    else:
        line, code = "interrupted: ", 130
    with contextlib.suppress(OSError, ValueError):
        print(line + rerun_hint(fresh), file=sys.stderr)
    return code
