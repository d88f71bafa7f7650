"""Write the report: Table 1, the paper's Figures 1-6, findings, as Markdown and HTML.

    python analysis/report.py --experiment digits-cnn            # -> runs/digits-cnn/report/
    python analysis/report.py --experiments mnist-cnn cifar10-vgg16   # each, plus runs/combined/
    python analysis/report.py --all --out s3://bucket/bnrep      # every experiment with results

Reads only <out>/<experiment>/results/ (the Parquet tables of sweeps/final.py
and analysis/run.py) and writes <out>/<experiment>/report/:
report.md, report.html (self-contained, opens offline), table1.{md,csv,tex},
fig_*.{png,svg}, findings.json, report_inputs.json. No Ray, no GPU; a few
seconds per experiment on 2 CPU cores.

Exit codes: 0 written, 1 no results (the message names the stage to run) or
the report could not be written, 2 bad arguments (unknown experiment).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from bnrep import report  # noqa: E402
from bnrep.experiments import DEFAULT_EXPERIMENT, ConfigError, get_experiment  # noqa: E402
from bnrep.store import Store, git_commit  # noqa: E402


def add_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                       help=f"experiment to report on (default {DEFAULT_EXPERIMENT})")
    which.add_argument("--experiments", nargs="+", metavar="NAME",
                       help="several experiments: a report for each, plus a combined one with a panel per "
                            "experiment side by side in <out>/combined/")
    which.add_argument("--all", action="store_true",
                       help="every experiment that has results under --out, plus a combined report")
    p.add_argument("--force", action="store_true", help="rebuild the report even when it is up to date")
    p.add_argument("--out", default="./runs", metavar="PATH|URI",
                   help="results root, a local path or s3:// gs:// file:// URI (default: ./runs)")
    return p


def build_parser() -> argparse.ArgumentParser:
    return add_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                            formatter_class=argparse.RawDescriptionHelpFormatter))


def check_name(out: str, name: str) -> None:
    """A preset, or an experiment whose resolved config.json is under --out."""
    if not Store(out, name).exists("config.json"):
        get_experiment(name)  # raises ConfigError with the valid names


def names_from(args) -> list[str]:
    if args.all:
        names = report.find_experiments(args.out)
        if not names:
            raise report.ReportError(f"no experiment has results under {args.out}: run "
                                     f"`python sweeps/final.py --experiment NAME` (or `bnrep run`) first")
        return names
    names = args.experiments or [args.experiment]
    for n in names:
        check_name(args.out, n)
    return names


def run(args) -> int:
    print(f"bnrep report  commit {git_commit() or 'unknown'}  args {vars(args)}", flush=True)
    try:
        names = names_from(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except report.ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        return write(args, names)
    except OSError as e:
        print(f"error: cannot write the report under {args.out}: {e}", file=sys.stderr)
        return 1


def write(args, names: list[str]) -> int:
    several = bool(args.experiments or args.all)
    written = 0
    for n in names:
        if not args.force and report.report_is_current(args.out, n):
            print(f"[report] {n}: report is up to date (--force rebuilds it)")
            print(Store(args.out, n).read_bytes("report/summary.txt").decode(), flush=True)
            written += 1
            continue
        try:
            res = report.build_report(args.out, n)
        except report.ReportError as e:
            print(f"{'skipped' if several else 'error'}: {e}", file=sys.stderr)
            continue
        print(res.summary, flush=True)
        written += 1
    if several and written:
        res = report.build_report(args.out, names)  # a list: the combined report
        print(f"combined report: {res.html}")
    return 0 if written else 1


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
