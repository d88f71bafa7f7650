"""Stage 4: the report of one or several experiments (no Ray, no GPU).

Reads only <out>/<experiment>/results/ and config.json and writes
<out>/<experiment>/report/ (and <out>/combined/ for several experiments).
A report whose inputs have not changed is not rebuilt (`force` rebuilds it).

Exit codes: 0 written, 1 the report could not be written, 2 bad arguments
(an unknown experiment, or none named with results: the message names the
stage to run).
"""

from __future__ import annotations

import sys

from bnrep import report
from bnrep.config import check_readable, load_experiment, out_flag, refuse_study_folder
from bnrep.lock import writer_lock
from bnrep.store import Store, StoreWriteError, git_commit


def check_name(out: str, name: str) -> None:
    """A preset, or an experiment whose resolved config.json is under `out` and reads (ConfigError otherwise)."""
    load_experiment(Store(out, name), name)


def has_results(out: str, name: str) -> bool:
    return any(Store(out, name).has_table(t) for t in report.REPORT_TABLES)


def names(out: str, experiments: list[str] | None) -> list[str]:
    """The experiments to report on; None: every experiment with results under `out`."""
    for n in experiments or [None]:
        refuse_study_folder(out, n)
    if experiments is None:
        found = report.find_experiments(out)
        if not found:
            raise report.ReportError(f"no experiment has results under {out}: run "
                                     f"`bnrep final --experiment NAME{out_flag(out)}` (or `bnrep run{out_flag(out)}`) first")
        return found
    for n in experiments:
        check_name(out, n)
    return experiments


def run(out: str, experiments: list[str] | None, several: bool = False, force: bool = False) -> int:
    """Report on `experiments` (None: all under `out`); `several` adds the combined report."""
    check_readable(out)
    try:
        todo = names(out, experiments)
        if not any(has_results(out, n) for n in todo):  # said before the banner, as the other stages do
            raise report.no_results(todo[0], out)
    except report.ReportError as e:  # nothing to report on: bad input, as a stage run out of order
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"bnrep report ({git_commit() or 'unknown commit'}) | {out}", flush=True)
    try:
        return write(out, todo, several or experiments is None, force)
    except StoreWriteError:  # names its file: one line from the caller (bnrep.flags.main_guard)
        raise
    except OSError as e:
        print(f"error: cannot write the report under {out}: {e}", file=sys.stderr)
        return 1


def write(out: str, todo: list[str], several: bool, force: bool) -> int:
    written = 0
    for n in todo:
        if not force and report.report_is_current(out, n):
            print(f"[report] {n}: report is up to date (--force rebuilds it)")
            print(report.saved_summary(Store(out, n)), flush=True)
            written += 1
            continue
        try:
            if not has_results(out, n):  # before the lock: no trace
                raise report.no_results(n, out)
            with writer_lock(Store(out, n), "report"):
                res = report.build_report(out, n)
        except report.ReportError as e:
            print(f"{'skipped' if several else 'error'}: {e}", file=sys.stderr)
            continue
        print(res.summary, flush=True)
        written += 1
    if several and written:
        try:
            with writer_lock(Store(out, "combined"), "report"):
                res = report.build_report(out, todo)  # a list: the combined report
        except report.ReportError as e:  # (each experiment's own report is written)
            print(f"error: combined report: {e}", file=sys.stderr)
            return 2
        print(f"combined report: {res.html}")
    return 0 if written else 2  # every experiment without results (each said why)

