"""Reports: the paper's Table 1, Figures 1-6 and section 6 findings, for your runs.

Reads only the Parquet tables the stages wrote (schema: `bnrep.store`) and
writes one self-contained report per experiment, or one for several side by
side (no Ray here):

    <out>/<experiment>/
      config.json                     resolved experiment and stage hashes (train_hash, analysis_hash)
      results/<table>/                the tables of bnrep.store.TABLES
      report/                         <- written here
        report.md, report.html        settings, provenance, Table 1, findings (claim 1 per eps),
                                      which measure predicts generalisation, figures
        table1.md, table1.csv, table1.tex
        fig_*.png, fig_*.svg          paper Figures 1-6, then beyond the paper (k sweep, thresholds, NC1,
                                      effective rank, linear probe, CKA, learning curves); no data: a note
        findings.json                 {"findings": verdicts and numbers, "predictors": correlations,
                                       "measures": per-layer seed statistics of each measure,
                                       "initialisation": the initialisation table}, for machines
        summary.txt                   what the terminal shows
        report_inputs.json            fingerprint of the input parts (report_is_current)
        .bnrep-staging/               the files of a report being written, moved into place when all are
    <out>/combined/                   build_report(out, [A, B]): the same files, a panel per experiment

Accuracies and sparsities are fractions in the tables, percent in the report.
Tables in memory and the norm axis: `bnrep.results`; claims, verdict rules and
statistics: `bnrep.findings`, as the report's blocks `bnrep.verdicts`; correlations
with generalisation: `bnrep.correlations`; the Settings table: `bnrep.settings`;
Markdown / HTML: `bnrep.documents`; figures: `bnrep.figures`, the only matplotlib
importer, loaded only when a report is written (`bnrep status` never loads it).

    >>> res = build_report("runs", "digits-cnn"); print(res.summary)
    >>> res = build_report("runs", ["mnist-cnn", "cifar10-vgg16"])   # -> runs/combined/
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass

import pandas as pd
import pyarrow.fs as pafs

import bnrep
from bnrep.config import command, load_experiment, read_config, read_hashes
from bnrep.datasets import cut_words
from bnrep.documents import json_text, md_table, render_html, render_md
from bnrep.correlations import predictors
from bnrep.experiments import at_smoke_sizes, smoke_sizes_text
from bnrep.findings import Finding, findings
from bnrep.axis import redefined
from bnrep.settings import settings_rows
from bnrep.results import Results, experiment_label, tell_apart, measure_numbers, side_by_side
from bnrep.verdicts import across_findings, combined_findings_blocks, findings_blocks, initialisation, predictor_blocks
from bnrep.verdicts import lines as finding_lines  # (the summary's text)
from bnrep.measures import MEASURES, all_nan
from bnrep.table1 import diverged_note, imported_note, table1, table1_caption, table1_rows, table1_tex
from bnrep.store import TABLES, Store, git_commit, is_uri, tables

TRAINING_TABLES = tables(stage="final")
MEASURE_TABLES = tuple(t for t in tables(stage="analysis") if TABLES[t].part != "samples")
REPORT_TABLES = TRAINING_TABLES + MEASURE_TABLES  # a report needs at least one of these


class ReportError(RuntimeError):
    """No results to report on; the message is one line naming the stage to run."""


# ==== loading ====

def missing(r: Results) -> list[str]:
    """The tables a stage has yet to write (a pair table cannot exist with one model: not missing)."""
    return [t for t in REPORT_TABLES if r.table(t).empty and not (TABLES[t].part == "pair" and _one_model(r))]


def _one_model(r: Results) -> bool:
    return r.table("training")["model_id"].nunique() < 2 if len(r.table("training")) else False


def load_results(out: str, name: str) -> Results:
    """One experiment's tables, its resolved experiment and its stage hashes (config.json)."""
    store = Store(out, name)
    return Results(load_experiment(store, name), {t: store.read_table(t) for t in TABLES},
                   config=read_hashes(store), classes=tuple(read_config(store).get("classes", ())), out=out)


def stage_command(table: str, experiment: str, out: str = "runs") -> str:
    return command(TABLES[table].stage, experiment, out)


def find_experiments(out: str) -> list[str]:
    """Experiments under `out` with at least one valid part of a report table."""
    fs_store = Store(out, "")
    base = fs_store.root.rstrip("/")
    infos = fs_store.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)
    return [n for n in names if any(Store(out, n).has_table(t) for t in REPORT_TABLES)]


def inputs_fingerprint(store: Store) -> dict:
    """Hash of the input part listing (name, size, mtime) and bnrep version."""
    listing = []
    for t in TABLES:
        sel = pafs.FileSelector(store.path("results", t), allow_not_found=True)
        for i in store.fs.get_file_info(sel):
            if i.base_name.endswith(".parquet") and not i.base_name.startswith("."):
                listing.append([t, i.base_name, i.size, i.mtime_ns])
    if store.exists("config.json"):
        i = store.fs.get_file_info(store.path("config.json"))
        listing.append(["config.json", "", i.size, i.mtime_ns])
    listing.sort(key=str)
    blob = json.dumps({"bnrep": bnrep.__version__, "parts": listing}, default=str).encode()
    return {"inputs_hash": hashlib.sha256(blob).hexdigest(), "parts": len(listing),
            "tables": {t: sum(1 for x in listing if x[0] == t) for t in TABLES}}


def report_is_current(out: str, experiment: str) -> bool:
    """True when the report exists and its inputs have not changed since it was written."""
    store = Store(out, experiment)
    try:
        rec = store.read_json("report/report_inputs.json")
    except (OSError, ValueError):
        return False
    return (rec.get("inputs_hash") == inputs_fingerprint(store)["inputs_hash"]
            and store.exists("report/report.html"))


# ==== provenance, notes (the settings table: bnrep.settings) ====

def provenance_rows(rs: list[Results]) -> list[list[str]]:
    models = set()
    for r in rs:
        for t in REPORT_TABLES:
            if "model_id" in r.table(t):
                models |= {(r.experiment.name, m) for m in r.table(t)["model_id"]}
    return [["bnrep version", bnrep.__version__], ["git commit", git_commit() or "unknown"],
            ["written", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")],
            ["models", str(len(models))],
            ["tables", "; ".join(f"{r.experiment.name}: " + ", ".join(
                f"{t} ({_rows(r, t)})" for t in REPORT_TABLES if t not in missing(r)) for r in rs)]]


def _rows(r: Results, t: str) -> str:
    """'120 rows', or '120 rows, 360 more at snapshot epochs 0, 1, 5' (analysis --snapshots)."""
    early = r.snapshots.get(t, pd.DataFrame())
    epochs = sorted(set(early["epoch"])) if "epoch" in early else []
    return f"{len(r.table(t))} rows" + (f", {len(early)} more at snapshot epoch{'s' * (len(epochs) != 1)} "
                                        f"{', '.join(map(str, epochs))}" if len(early) else "")



def missing_notes(r: Results, out: str) -> list[str]:
    e, notes = r.experiment, []
    if at_smoke_sizes(e):  # what the terminal's header said; a report passed around says it too
        notes.append(f"{e.name}: run at --smoke-test sizes ({smoke_sizes_text(e)}): a check that the study runs "
                     f"end to end; its verdicts say nothing of the paper's claims.")
    if r.imported:  # no sweep, no training history: nothing a stage could produce
        notes.append(f"{r.experiment.name}: imported models (bnrep import): no training history or sweep; the "
                     f"parts that need them are left out.")
    for group in (() if r.imported else TRAINING_TABLES, MEASURE_TABLES):
        miss = [t for t in group if t in missing(r)]
        if miss:
            them = "them" if len(miss) > 1 else "it"
            notes.append(f"{r.experiment.name}: no results/{', results/'.join(miss)} yet; run "
                         f"`{stage_command(miss[0], r.experiment.name, out)}` to produce {them}; "
                         f"the parts below that need {them} are left out.")
    store = Store(out, r.experiment.name)
    for t in TABLES:
        bad = store.unreadable(t)
        if bad:
            notes.append(f"{r.experiment.name}: {len(bad)} part(s) of results/{t} do not read ("
                         f"{store.display(f'results/{t}/{bad[0]}.parquet')}{', ...' if len(bad) > 1 else ''}: damaged, "
                         f"or a copy cut short): they count as missing; `{stage_command(t, r.experiment.name, out)}` "
                         f"writes them again.")
    from bnrep.status import unfinished

    return notes + unfinished(out, r.experiment.name)


# ==== writing ====

@dataclass
class ReportResult:
    experiment: str  # experiment name, or "combined"
    report_dir: str  # where the files are (path or URI)
    files: list[str]  # names inside report_dir
    missing: list[str]  # tables that were absent
    findings: list[Finding]
    summary: str  # Table 1 and findings as plain text, for printing

    @property
    def html(self) -> str:
        return f"{self.report_dir}/report.html"


STAGING = ".bnrep-staging/"  # a report's files are written here first, then moved into place (_Writer.commit)


class _Writer:
    """Writes report files through a Store (works on s3:// too) and remembers their names. Each file goes to
    a staging folder first; `commit` moves them all into place, so that a report that fails midway (a full
    disk, Ctrl-C) leaves the one before it whole, not its report.md beside the earlier report.html."""

    def __init__(self, store: Store, prefix: str):
        self.store, self.prefix, self.files = store, prefix, []
        store.delete(f"{prefix}{STAGING}")  # (the files of a report stopped before its commit)

    def put(self, name: str, data: bytes | str) -> None:
        self.store.write_bytes(f"{self.prefix}{STAGING}{name}", data.encode() if isinstance(data, str) else data)
        self.files.append(name)

    def commit(self, fingerprint: dict | None = None) -> None:
        """Every file put into place, with Ctrl-C and SIGTERM held until the last is (a failed move of an object
        store's copy can still leave a mix, which the missing marker says); the figures of an earlier report that
        this one does not draw removed; `fingerprint` (report_inputs.json, which marks a report complete) last."""
        from bnrep.figures import FIGURES
        from bnrep.raysession import interrupts_held

        ours = {f"{spec.name}.{ext}" for spec in FIGURES for ext in ("png", "svg")}  # (only bnrep's own names)
        with interrupts_held():
            if fingerprint is not None:
                self.store.delete(f"{self.prefix}report_inputs.json")
            for name in self.files:
                self.store.move(f"{self.prefix}{STAGING}{name}", f"{self.prefix}{name}")
            for name in set(self.store.list_dir(self.prefix.rstrip("/"))) & ours - set(self.files):
                self.store.delete(f"{self.prefix}{name}")
            self.store.delete(f"{self.prefix}{STAGING}")
            if fingerprint is not None:
                self.store.write_json(f"{self.prefix}report_inputs.json", fingerprint)
                self.files.append("report_inputs.json")

    def figures(self, rs: list[Results], out: str) -> list[tuple]:
        from bnrep import figures  # matplotlib only when drawing: `bnrep status` imports this module
        from bnrep.captions import caption
        from bnrep.drawing import draw

        blocks, drawn = [], draw(rs)  # every figure, on every core
        for spec in figures.FIGURES:
            if drawn[spec.name] is None:
                blocks += [("note", skipped_note(spec, rs, out))] if spec.noted else []
                continue
            png, svg = drawn[spec.name]
            self.put(f"{spec.name}.png", png)
            self.put(f"{spec.name}.svg", svg)
            blocks.append(("fig", spec.name, caption(spec, rs), png))
        return blocks

    def table1(self, rs: list[Results]) -> tuple[list[tuple], str]:
        training = pd.concat([r.table("training") for r in rs if len(r.table("training"))] or [pd.DataFrame()],
                             ignore_index=True)
        if training.empty:
            return [("p", "No training results yet.")], ""
        t = table1(training)
        header, rows = table1_rows(t)
        self.put("table1.md", md_table(header, rows) + "\n")
        self.put("table1.csv", t.to_csv(index=False, float_format="%.4f"))
        self.put("table1.tex", table1_tex(t))
        text = pd.DataFrame(rows, columns=header).to_string(index=False)
        blocks = [("p", table1_caption(set(training["condition"]))), ("table", header, rows)]
        for note in (diverged_note(training), imported_note(training)):
            if note:
                blocks.append(("p", note))
                text += f"\n{note}"
        return blocks, text

    def documents(self, blocks: list[tuple], title: str) -> None:
        self.put("report.md", render_md(blocks))
        self.put("report.html", render_html(blocks, title))


def skipped_note(spec, rs: list[Results], out: str) -> str:
    """Why a figure (a bnrep.figures.FigureSpec) is not in the report, and what would draw it."""
    name = spec.title or spec.name
    absent = [t for t in spec.tables if all(r.table(t).empty for r in rs)]
    if all(r.imported for r in rs) and (spec.from_training or absent and TABLES[absent[0]].stage in ("hparam", "final")):
        return f"{name} not drawn: imported models (bnrep import) were trained elsewhere, without bnrep's record of it."
    if absent and TABLES[absent[0]].part == "pair" and all(_one_model(r) for r in rs):
        return f"{name} not drawn: it compares two models, and {'this study has' if len(rs) == 1 else 'each has'} one."
    if absent:
        return (f"{name} not drawn: no results/{absent[0]} (results written before this measure existed, or "
                f"the stage has not run; `{stage_command(absent[0], rs[0].experiment.name, out)}` adds it).")
    m = MEASURES.get(spec.tables[0]) if spec.name == f"fig_{spec.tables[0]}" else None  # a measure's own figure
    if m is not None and all_nan(m, rs):
        from bnrep.captions import why_nan

        df = pd.concat([r.table(m.table) for r in rs], ignore_index=True)
        return f"{name} not drawn: all {len(df)} {why_nan(df, m.values[0], m)}."
    return f"{name} not drawn: {spec.needs or 'no data to plot'}."


def _findings_json(r: Results, fs: list[Finding]) -> dict:
    """Verdicts with their numbers (claim 1 per eps inside), the generalisation correlations, per-layer measures,
    and (with snapshots at epoch 0) which final differences were there at initialisation."""
    return {"findings": [f.record() for f in fs], "predictors": predictors(r),
            "measures": measure_numbers(r), "initialisation": initialisation(r)}


WHERE = "\nreport: "  # the summary's last line names the report's file


SUMMARY_LINE_MAX = 1000  # characters of a finding's line in the terminal (a deep model's per-layer lists run to 7,000)


def _summary(title: str, table_text: str, fs: dict[str, list[Finding]], notes: list[str], where: str) -> str:
    """Plain text for the terminal; `fs` maps a heading to its findings, each line cut at SUMMARY_LINE_MAX."""
    parts = [title, "", "Table 1 (accuracy %, mean ± std over seeds):", table_text or "(no training results)"]
    for head, group in fs.items():
        parts += ["", f"{head}:"] + [cut_words(line, SUMMARY_LINE_MAX, f" ... ({len(line):,} characters: in full in "
                                                                       f"report.md and findings.json)")
                                     for said in finding_lines(group) for line in said.split("\n")]
    return "\n".join(parts + [f"Note: {n}" for n in notes]) + "\n" + WHERE + where


def saved_summary(store: Store) -> str:
    """The summary an up-to-date report printed when it was made, naming the report where it is now (the
    results folder may have been copied or moved since: `ray rsync-down`, another disk)."""
    text = store.read_bytes("report/summary.txt").decode().rstrip("\n")
    head, found, _ = text.rpartition(WHERE)
    return head + WHERE + store.uri("report", "report.html") if found else text


def no_results(name: str, out: str) -> ReportError:
    from bnrep.lock import current_writer

    try:
        writer = current_writer(Store(out, name))
    except (OSError, ValueError):  # (several studies named at once, or an --out that does not open)
        writer = None
    if writer:  # a run is making them now: a stage run beside it would be refused
        return ReportError(f"no results for {name} under {out} yet: {writer.get('stage', 'a run')} on host "
                           f"{writer.get('host')}, pid {writer.get('pid')}, is writing them; report once it is done")
    return ReportError(f"no results for {name} under {out}: run `{stage_command('training', name, out)}` "
                       f"(or `{command('run', name, out)}`) first")


def _dest_store(out: str, dest: str | None) -> Store:
    """A Store whose root is the combined report's directory (default <out>/combined)."""
    if dest is None:
        return Store(out, "combined")
    parent, sep, name = str(dest).rstrip("/").rpartition("/")
    return Store((parent or "/") if sep else ".", name)


def build_report(out: str, experiments: str | list[str], dest: str | None = None) -> ReportResult:
    """One experiment (a name): <out>/<name>/report/. Several (a list): one report with a panel per
    experiment side by side in `dest` (default <out>/combined); experiments without results are noted.

    Raises ReportError when no table has results, ConfigError when a name is
    neither a preset nor has a config.json under `out`.
    """
    if isinstance(experiments, str):
        return _build_one(out, experiments)
    return _build_combined(out, list(experiments), dest)


def _shown(out: str) -> str:
    """`out` as the documents' commands give it: a local path made absolute (a report is read from anywhere)."""
    return out if is_uri(out) else os.path.abspath(out)


def _build_one(out: str, name: str) -> ReportResult:
    store = Store(out, name)
    fingerprint = inputs_fingerprint(store)  # before reading: a part landing meanwhile marks it stale
    r = load_results(out, name)
    if len(missing(r)) == len(REPORT_TABLES):
        raise no_results(name, out)
    w = _Writer(store, "report/")
    notes, fs = missing_notes(r, _shown(out)), findings(r)
    t1_blocks, t1_text = w.table1([r])
    fig_blocks = w.figures([r], _shown(out))
    title = f"bnrep report: {r.experiment.name} ({r.label})"
    blocks = [("h1", title), *[("note", n) for n in notes],
              ("h2", "Settings"), ("table", ["setting", "value"], settings_rows(r)),
              ("h2", "Provenance"), ("table", ["item", "value"], provenance_rows([r])),
              ("h2", "Table 1: accuracy"), *t1_blocks,
              ("h2", "Findings (paper section 6)"), *findings_blocks(r, fs), *predictor_blocks(r),
              ("h2", "Figures"), *fig_blocks]
    w.documents(blocks, title)
    w.put("findings.json", json_text(_findings_json(r, fs)))
    summary = _summary(title, t1_text, {"Findings": fs}, notes, store.uri("report", "report.html"))
    w.put("summary.txt", summary + "\n")
    w.commit(fingerprint)
    return ReportResult(r.experiment.name, store.uri("report"), w.files, missing(r), fs, summary)


def _build_combined(out: str, names: list[str], dest: str | None) -> ReportResult:
    if twice := next((n for n in names if names.count(n) > 1), None):  # its models would count twice in Table 1
        raise ReportError(f"--experiments names {twice} twice: a combined report shows each experiment once")
    loaded = [load_results(out, n) for n in names]
    rs = [r for r in loaded if len(missing(r)) < len(REPORT_TABLES)]
    if not rs:
        raise no_results(" / ".join(names), out)
    if clash := redefined({r.experiment.name: r.experiment.conditions for r in rs}):
        raise ReportError(clash)
    store = _dest_store(out, dest)
    w = _Writer(store, "")
    notes = [f"{r.experiment.name}: no results; run `{stage_command('training', r.experiment.name, _shown(out))}`."
             for r in loaded if r not in rs] + [n for r in rs for n in missing_notes(r, _shown(out))]
    tell_apart(rs)  # panel titles: experiments of the same model and data, by name
    per_exp = {r.experiment.name: findings(r) for r in rs}
    t1_blocks, t1_text = w.table1(rs)
    fig_blocks = w.figures(rs, _shown(out))
    across = across_findings(per_exp)
    title = "bnrep combined report: " + ", ".join(f"{r.experiment.name} ({experiment_label(r.experiment)})" for r in rs)
    blocks = [("h1", title), *[("note", n) for n in notes],
              *[b for r in rs for b in (("h2", f"Settings: {r.experiment.name}"),
                                         ("table", ["setting", "value"], settings_rows(r)))],
              ("h2", "Provenance"), ("table", ["item", "value"], provenance_rows(rs)),
              ("h2", "Table 1: accuracy"), *t1_blocks,
              ("h2", "Architectures side by side"),
              ("p", "Mean ± std over seeds; layer sparsity averaged over the layers of each model first."),
              ("table", *side_by_side(rs)),
              *combined_findings_blocks(rs, per_exp, across), ("h2", "Figures"), *fig_blocks]
    w.documents(blocks, title)
    w.put("findings.json", json_text({"across": [f.record() for f in across],
                                      **{r.experiment.name: _findings_json(r, per_exp[r.experiment.name]) for r in rs}}))
    where = store.uri()
    lost = sorted({f"{r.experiment.name}/{t}" for r in loaded for t in missing(r)})
    summary = _summary(title, t1_text, {"Findings across experiments": across,
                                        **{f"Findings {n}": f for n, f in per_exp.items()}},
                       notes, f"{where}/report.html")
    w.commit()
    return ReportResult("combined", where, w.files, lost, across + [f for fs in per_exp.values() for f in fs],
                        summary)
