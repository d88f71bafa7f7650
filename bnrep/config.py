"""A run's identity: its options, the stage hashes in config.json, --fresh.

`<out>/<experiment>/config.json` is the one record of the configuration that
results were made with:

    {"experiment": {...resolved Experiment...}, "train_hash": "...",
     "analysis_hash": "...", "table_hashes": {"kmeans": "...", ...},
     "bnrep_version": "...", "git_commit": "...", "written": "..."}

`train_hash` covers every field that changes the models, `analysis_hash`
every field that changes the measurements too, and `table_hashes` what each
analysis table depends on (TABLE_FIELDS). They are the only configuration
hashes: every Parquet part carries one as its `config_hash` (training tables:
train_hash; each analysis table: its table hash), and the report shows them,
so a report traces to the parts it read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import bnrep
from bnrep.axis import name_of
from bnrep.datasets import FOLDER, class_names, folder_fingerprint, parse_dataset
from bnrep.experiments import ConfigError, Experiment, get_experiment, renamed
from bnrep.lock import refuse_if_held
from bnrep.measures import MEASURES
from bnrep.store import Store, git_commit, is_uri, tables
from bnrep.studies import unknown_experiment

# Fields that change what the analysis stage computes but not the models.
ANALYSIS_FIELDS = ("samples_sparsity", "samples_cluster", "k_min", "k_max", "n_init", "eps")
# Fields that change neither
# (more seeds or conditions only add models, a condition keeps its definition: prepare; the reference
# only changes what is judged against what; figures only choose layers; probes only add or skip layers)
FREE_FIELDS = ("description", "seeds", "conditions", "reference", "channel_layers", "first_shown_layer", "probes",
               "snapshots", "snapshot_kmeans")
NEW_FIELDS = ("image_size",)  # training fields added since results were first written (None: absent then)


OUT_SCHEMES = ("file", "s3")  # where results may live: the schemes the writer lock can make safe (bnrep.lock)


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2, before any work."""


class StageFailed(RuntimeError):
    """Work that failed beyond its retries: one line, exit status 1; a rerun resumes."""


DEFAULT_OUT = "./runs"  # the results root when --out is not given


@dataclass(frozen=True)
class RunOptions:
    """How a stage runs (where, on what resources), as opposed to what it computes (Experiment)."""
    out: str = DEFAULT_OUT  # results root: a local path or a URI in OUT_SCHEMES (s3://, file://)
    address: str | None = None  # Ray cluster to join (None: $RAY_ADDRESS, else this machine's `ray start` one, else a private local Ray)
    data_root: str | None = None  # torchvision datasets (None: bnrep.data.default_data_root)
    fresh: bool = False  # delete this stage's earlier results (and what depends on them) first
    paper_hparams: bool = False  # grid: the preset's lr/momentum instead of the sweep's best
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 when the cluster has GPUs, else 0
    max_failures: int = 3  # retries of a failed trial from its last checkpoint
    checkpoint_every: float = 60.0  # seconds of a trial's training between its checkpoints (0: every epoch)
    amp: bool = False  # bf16 autocast on GPU (ignored on CPU)
    cpus_per_task: float = 1.0
    gpus_per_task: float | None = None  # None: 1 when the cluster has GPUs, else 0
    kmeans_backend: str = "torch"  # torch (batched) | sklearn (reference)
    notes: bool = True  # a stage's header says the study's notes (bnrep run: its first stage's alone)

    def absolute(self) -> "RunOptions":
        """Ray workers and Tune trials run in other directories: absolute local paths."""
        root = self.data_root
        if root and not is_uri(root):
            root = os.path.abspath(os.path.expanduser(root))
        return RunOptions(**{**vars(self), "data_root": root})


# What each analysis table depends on besides the models (train_hash). A part
# carries its table's hash (`table_hashes`), so a change that leaves a table's
# fields alone (more eps thresholds; a new measure) recomputes only the rest.
TABLE_FIELDS = {"samples": ("samples_sparsity", "samples_cluster"),
                **{m.table: m.fields for m in MEASURES.values()}}  # bnrep.measures


# Tables whose measures changed since parts were first written (a column added): parts of an older
# version carry another hash, so a rerun recomputes that table once and nothing else.
TABLE_VERSIONS = {m.table: m.version for m in MEASURES.values() if m.version > 1}


def _hash(x) -> str:
    return hashlib.sha256(json.dumps(x, sort_keys=True, default=list).encode()).hexdigest()[:12]


def table_hashes(exp: Experiment) -> dict[str, str]:
    """The hash each analysis table's parts carry (recorded in config.json): the
    train hash and the fields the table depends on."""
    train = stage_hashes(exp)["train_hash"]
    return {t: _hash({"train_hash": train, **{f: getattr(exp, f) for f in fields},
                      **({"version": TABLE_VERSIONS[t]} if t in TABLE_VERSIONS else {})})
            for t, fields in TABLE_FIELDS.items()}


def stage_hashes(exp: Experiment) -> dict[str, str]:
    """{"train_hash", "analysis_hash"} of `exp`; fields added since the first
    results were written hash as they did then (one eps: the number), so
    older results directories keep their hashes and resume."""
    d = exp.to_dict()
    for f in FREE_FIELDS:
        d.pop(f)
    for f in NEW_FIELDS:  # at their defaults, hashed as before they existed
        if d[f] is None:
            d.pop(f)
    d["arch"] = d.pop("model")  # hashed under the name it had before model specs, so old runs keep their hashes
    if len(d["eps"]) == 1:
        d["eps"] = d["eps"][0]
    train = {k: v for k, v in d.items() if k not in ANALYSIS_FIELDS}
    return {"train_hash": _hash(train), "analysis_hash": _hash(d)}


# ==== config.json ====
def read_config(store: Store) -> dict:
    """config.json as a dict ({} when there is none); ConfigError (one line) naming the file when it
    is not a JSON object (a hand edit gone wrong, a truncated write)."""
    if not store.exists("config.json"):
        return {}
    try:
        rec = store.read_json("config.json")
    except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
        raise ConfigError(f"{store.uri('config.json')} is not valid JSON ({str(e).splitlines()[0]}): repair it, "
                          f"or delete it to start this experiment over") from None
    if not isinstance(rec, dict):
        raise ConfigError(f"{store.uri('config.json')} is not a JSON object: repair it, or delete it to start "
                          f"this experiment over")
    return rec


def out_flag(out: str) -> str:
    """' --out OUT' for a command printed as a hint; '' for the default results root."""
    return "" if os.path.normpath(out) == os.path.normpath(DEFAULT_OUT) else f" --out {shlex.quote(str(out))}"


def command(stage: str, experiment: str, out: str = "runs", show_out: bool = True) -> str:
    """A stage's command printed as a hint: `bnrep STAGE --experiment NAME [--out OUT]`, which works from any
    directory (python sweeps/STAGE.py and analysis/*.py are the same commands in a checkout of the repository).
    A study --out does not hold yet is found by its file only: a placeholder names it. `show_out` False: without
    --out (a document that stays true wherever its folder is moved names it otherwise)."""
    from bnrep.experiments import PRESETS

    store = Store(out, experiment)
    held = experiment in PRESETS or store.exists("config.json")
    smoke_flag = " --smoke-test" if stage != "report" and made_by_smoke_test(store) else ""
    return (f"bnrep {stage} --experiment {experiment if held else f'<the study file of {experiment}>'}"
            f"{smoke_flag}{out_flag(out) if show_out else ''}")


def made_by_smoke_test(store: Store, exp: Experiment | None = None) -> bool:
    """Whether the models under `store` were trained by `--smoke-test` of `exp` (default: the preset the
    experiment is named after) and `exp` itself is not at the smoke test's sizes (most of them: it was given
    --smoke-test, and another flag made the difference): a rerun that leaves the flag out is refused, so
    hints carry it."""
    from bnrep.experiments import PRESETS, SMOKE, smoke

    exp = exp or PRESETS.get(store.experiment)
    if exp is None or 2 * sum(getattr(exp, k) == v for k, v in SMOKE.items()) >= len(SMOKE):
        return False
    try:
        made = read_config(store).get("train_hash")
    except ConfigError:
        return False
    return made is not None and made == stage_hashes(smoke(exp))["train_hash"] != stage_hashes(exp)["train_hash"]


def is_imported(store: Store) -> bool:
    """The experiment's models were imported (`bnrep import`; config.json says so), not trained by bnrep."""
    return bool(read_config(store).get("imported"))


def same_hparams(a: dict, b: dict) -> bool:
    """Two {lr, momentum} alike (as stored and read back: within float rounding)."""
    return all(math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12) for k in ("lr", "momentum"))


def trained_with_preset_hparams(exp: Experiment, training) -> bool:
    """Whether the grid has models (the training table) and every one trained with its condition's preset lr
    and momentum (--paper-hparams), not with the sweep's best."""
    if not len(training) or not {"condition", "lr", "momentum"} <= set(training.columns):
        return False
    rows = [r for r in zip(training["condition"], training["lr"], training["momentum"]) if r[0] in exp.norms]
    return bool(rows) and all(same_hparams(exp.for_condition(c).paper_hparams(c), {"lr": lr, "momentum": m})
                              for c, lr, m in rows)


def load_experiment(store: Store, name: str | None = None) -> Experiment:
    """The experiment the results under `store` were made with (config.json),
    else the preset called `name` (default: the store's experiment).
    ConfigError (one line) when neither exists or config.json is unreadable."""
    rec = read_config(store)
    if rec:
        try:
            return Experiment.from_dict(rec["experiment"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{store.out}/{store.experiment}/config.json is unreadable "
                              f"({type(e).__name__}: {e}); use another --out or --fresh") from None
    try:
        return get_experiment(name or store.experiment)
    except ConfigError as e:  # a name that is no preset and no study here: which are, and the closest
        if not str(e).startswith("unknown experiment"):
            raise
        raise unknown_experiment(name or store.experiment, store.out) from None


def read_hashes(store: Store) -> dict[str, str]:
    """The stage hashes recorded in config.json ({} when there is none)."""
    rec = read_config(store)
    return {k: rec[k] for k in ("train_hash", "analysis_hash") if k in rec}


def with_trained_config(store: Store, exp: Experiment) -> Experiment:
    """The analysis of existing models: training fields as they were trained
    (config.json), analysis fields (and the probes, and the reference the report judges against) from this
    run's preset and flags."""
    if not store.exists("config.json"):
        return exp
    return load_experiment(store).override(**{f: getattr(exp, f) for f in (*ANALYSIS_FIELDS, "probes", "snapshots",
                                                                           "snapshot_kmeans", *REPORT_FIELDS)})


# What --fresh deletes for each stage: its own outputs and everything downstream.
FRESH = {
    "hparam": ("hparam", "train", "results", "report", "config.json"),
    "final": ("train", "report", *(f"results/{t}" for t in (*tables("final"), *tables("analysis")))),
    "analysis": ("report", *(f"results/{t}" for t in tables("analysis"))),
}


def start_fresh(store: Store, stage: str) -> None:
    """--fresh: delete the stage's earlier outputs and everything downstream
    (call it holding the writer lock, once work starts)."""
    for rel in FRESH[stage]:
        store.delete(rel)


def prepare(store: Store, exp: Experiment, stage: str, fresh: bool) -> dict:
    """Unless --fresh (which will replace them), refuse to mix results of a
    different configuration. Returns the configuration record to write
    (write_config) once the stage starts work. Writes nothing."""
    hashes = stage_hashes(exp)
    record = {"experiment": exp.to_dict(), **hashes, "table_hashes": table_hashes(exp),
              "classes": class_names(exp.dataset),  # the report's class names and count, wherever it runs
              "bnrep_version": bnrep.__version__,
              "git_commit": git_commit(), "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    family, path = parse_dataset(exp.dataset)
    if family == FOLDER:  # what the folder held (names and sizes): a folder that changes between stages is refused
        record["data"] = folder_fingerprint(path)
    if fresh or not store.exists("config.json"):
        return record
    old = read_config(store)
    redefined(store, old, exp)
    changed = folder_changed(old, exp, record.get("data"))
    if changed:
        raise UsageError(f"{store.out}/{exp.name}: the image folder {path} changed since its results were made "
                         f"({changed}): one table would mix models of both; restore it, use another --out, or --fresh "
                         f"to start over")
    keys = ["train_hash"] + (["analysis_hash"] if stage == "analysis" else [])
    for key in keys:
        if key in old and old[key] != hashes[key] and not (key == "analysis_hash" and (
                adds_only(old, exp) or not any(store.list_dir(f"results/{t}") for t in tables("analysis")))):
            # (analysis settings with no analysis results yet: nothing to mix with, the new ones hold)
            before, now = old.get("experiment", {}), exp.to_dict()
            what = "training" if key == "train_hash" else "analysis"
            other = [k for k in ("dataset", "model") if k in before and before[k] != now[k]]
            advice = ("another study: give it a name of its own (--experiment NAME, beside this one), use another "
                      "--out" if other else "they were made with --smoke-test: add it, use another --out"
                      if key == "train_hash" and made_by_smoke_test(store, exp) else
                      "use the same settings as before (the flags, or the study file's values), another --out")
            raise UsageError(
                f"{store.out}/{exp.name} holds {what} results of a different configuration "
                f"({describe_diff(before, now)}); {advice}, or --fresh to delete those results and start over")
    return record


def folder_changed(old: dict, exp: Experiment, now: str | None = None) -> str | None:
    """How the image folder of `exp` differs from the one its results were made from (`old`: their
    config.json): 'then <fingerprint>; now <fingerprint>' (`now`: the folder's, when known); None when it
    is the same, or the study's data is not an image folder it recorded."""
    family, path = parse_dataset(exp.dataset)
    if family != FOLDER or "data" not in old or old.get("experiment", {}).get("dataset") != exp.dataset:
        return None
    now = now or folder_fingerprint(path)
    return None if old["data"] == now else f"then {old['data']}; now {now}"


def redefined(store: Store, old: dict, exp: Experiment) -> None:
    """UsageError when a condition the results hold is defined otherwise now (its models would not be
    what its name says); new conditions only add models."""
    before = renamed(old.get("experiment", {})).get("conditions") or ()
    before = {name_of(c): c for c in ([before] if isinstance(before, str) else before)}
    for c in exp.conditions:
        was = before.get(name_of(c))
        if was is not None and was != c:
            raise UsageError(f"{store.out}/{exp.name} holds condition {name_of(c)} as {was!r}, now {c!r}: "
                             f"give the new one another tag, or --fresh to start over")


def adds_only(old: dict, exp: Experiment) -> bool:
    """The analysis change only adds to what is there (more eps thresholds):
    nothing computed before is replaced, so the rerun computes the rest."""
    before = old.get("experiment", {})
    changed = [f for f in ANALYSIS_FIELDS
               if json.dumps(before.get(f), default=list) != json.dumps(getattr(exp, f), default=list)]
    old_eps = before.get("eps", 0.0)
    old_eps = set(old_eps) if isinstance(old_eps, list) else {old_eps}
    return changed == ["eps"] and old_eps <= set(exp.eps)


def describe_diff(old: dict, new: dict) -> str:
    old = renamed(old)  # config.json before model specs
    changed = [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in new
               if k not in FREE_FIELDS and json.dumps(old.get(k), default=list) != json.dumps(new[k], default=list)]
    return ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "") if changed else "config hash differs"


REPORT_FIELDS = ("reference",)  # free fields only the report reads: the run's own (with_trained_config)


def report_fields_changed(store: Store, exp: Experiment) -> bool:
    """config.json records other values of a field only the report reads (a new --reference) than `exp`:
    the stage records them even with no work to do, so the report (config.json among its inputs) is
    made anew rather than found up to date."""
    old = read_config(store).get("experiment", {})
    return bool(old) and any(json.dumps(old.get(f), default=list) != json.dumps(getattr(exp, f), default=list)
                             for f in REPORT_FIELDS)


def write_config(store: Store, record: dict) -> None:
    old = read_config(store)
    store.write_json("config.json", {**old, **record})


# ==== the results directory ====
def check_scheme(out: str, named: str | None = None) -> None:
    """UsageError (one line) unless `out` is a local path or a URI of OUT_SCHEMES: results are neither written
    nor read elsewhere (reading gs:// without its network waits on retries for many minutes). `named`: how
    the message names `out` (the notebook API: out='...'; by default, the flag: --out ...)."""
    if not str(out).strip():  # (would be the current folder)
        raise UsageError(f"{named or '--out'} is empty: give the folder (or URI) to keep results under, such as "
                         f"{DEFAULT_OUT}")
    named = named or f"--out {out}"
    scheme = str(out).split("://", 1)[0] if is_uri(out) else "file"
    if scheme not in OUT_SCHEMES:
        raise UsageError(f"{named}: bnrep keeps results in a local or shared path, file:// or s3:// only "
                         f"(its one-writer lock needs create-if-absent writes; for Google Cloud Storage use its "
                         f"S3 endpoint: s3://BUCKET/PATH?endpoint_override=storage.googleapis.com with HMAC keys)")
    if scheme == "s3" and not re.split(r"[/?]", str(out).split("://", 1)[1], maxsplit=1)[0]:
        raise UsageError(f"{named} names no bucket: give s3://BUCKET or s3://BUCKET/PATH")


def check_readable(out: str, named: str | None = None) -> None:
    """check_scheme, and for a URI one request to it: readers (status, report, the notebook API) refuse an
    object store they cannot reach (no network, a wrong endpoint, no access) in one line (UsageError)."""
    check_scheme(out, named)
    if not is_uri(out):
        return
    try:
        Store(out, "").exists("")
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {named or f'--out {out}'}: {str(e).splitlines()[0]}") from None


def study_folder(out: str, name: str | None = None) -> str | None:
    """The folder above `out` when `out` is itself a study's folder (its config.json there) and holds no
    study `name`: the --out meant (a study folder given as --out would get a study nested in it). Local only."""
    if is_uri(str(out)) or not os.path.isfile(os.path.join(out, "config.json")) \
            or (name is not None and os.path.isfile(os.path.join(out, name, "config.json"))):
        return None
    return os.path.dirname(os.path.abspath(out))


def refuse_study_folder(out: str, name: str | None = None) -> None:
    """UsageError (one line) when --out names a study's own folder rather than the folder of studies."""
    parent = study_folder(out, name)
    if parent is not None:
        raise UsageError(f"--out {out} is a study's own folder (its config.json is there): give the folder that "
                         f"holds it, --out {parent}")


def open_store(out: str, exp: Experiment | str) -> Store:
    """The store of the experiment `exp` (or of that name), checked writable without creating anything
    (UsageError otherwise), so a refused run leaves --out as it was; LockError when another run writes it."""
    name = exp if isinstance(exp, str) else exp.name
    check_scheme(out)
    refuse_study_folder(out, name)
    try:
        store = Store(out, name)  # an s3:// URI resolves its bucket's region here: the network
        if store.local_path() is not None:
            _check_local_writable(Path(store.local_path()))
        else:  # object stores have no directories: a probe object, then gone
            probe = f".write-probe-{os.getpid()}"
            store.write_bytes(probe, b"")
            store.delete(probe)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot write to --out {out}: {str(e).splitlines()[0]}") from None
    refuse_if_held(store)  # another run writes it now: that, before what its half-made results would say
    return store


def _check_local_writable(path: Path) -> None:
    while not path.exists():  # the nearest existing ancestor must be a writable directory
        path = path.parent
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{path} is not writable")


def header(stage: str, exp: Experiment, store: Store, fresh: bool = False, notes: bool = True) -> str:
    """The first lines a stage prints: version, commit, what and where, the stage hashes (`fresh`: the
    stage will delete its earlier results, FRESH), then, with `notes`, what the study holds besides this
    run's conditions and the lack of a reference condition."""
    from bnrep.experiments import at_smoke_sizes, reference_note

    h = stage_hashes(exp)
    sizes = " at --smoke-test sizes" if at_smoke_sizes(exp) else ""
    gone = FRESH.get(stage.split()[0], ()) if fresh else ()  # what the stage deletes before its work
    kept = [t for t in ("hparam_trials", "training") if "results" not in gone and f"results/{t}" not in gone]
    said = stage == "import" or not notes
    models = [] if said else held_conditions(store, exp, [t for t in kept if t == "training"])
    seeds = [] if said or "training" not in kept or is_imported(store) else held_seeds(store, exp)  # (imported
    # models carry the seeds their CSV gave them)
    trials = [] if said else [c for c in held_conditions(store, exp, [t for t in kept if t != "training"])
                              if c not in models]  # (a --fresh grid deleted their models)
    how = f"`bnrep run --experiment {exp.name}{out_flag(store.out)} --reference TAG`" if stage == "import" else None
    no_reference = notes and stage != "analysis" and reference_note(exp, models, how)  # said before training
    return (f"bnrep {bnrep.__version__} ({git_commit() or 'unknown commit'}) | {stage}{sizes} | "
            f"experiment {exp.name} -> {store.out}/{exp.name}\n"
            f"config: train {h['train_hash']}, analysis {h['analysis_hash']} "
            f"({store.uri('config.json')})" + (
                f"\n{no_reference}" if no_reference else "") + (
                f"\nnote: {store.out}/{exp.name} also holds results of {', '.join(models)}, not among this run's "
                f"conditions: they stay in its tables and its report (for these conditions alone: another --out, "
                f"or the grid's --fresh: bnrep final or bnrep run)" if models else "") + (
                f"\nnote: {store.out}/{exp.name} also holds models of seed{'s' * (len(seeds) > 1)} "
                f"{', '.join(map(str, seeds))}, beyond this run's {exp.seeds}: they stay in its tables and its report "
                f"(for {exp.seeds} seed{'s' * (exp.seeds > 1)} alone: another --out, or the grid's --fresh: "
                f"bnrep final or bnrep run)" if seeds else "") + (
                f"\nnote: {store.out}/{exp.name} also holds sweep trials of {', '.join(trials)} (no models), not among "
                f"this run's conditions: they stay in results/hparam_trials" if trials else ""))


def held_seeds(store: Store, exp: Experiment) -> list[int]:
    """The seeds of this run's conditions whose models the study holds beyond `exp.seeds` (a rerun with fewer
    seeds than before: the analysis and the report take every model the study holds)."""
    if not store.has_table("training"):
        return []
    t = store.read_table("training")
    if "seed" not in t:
        return []
    from bnrep.store import with_norm

    t = with_norm(t)
    return sorted({int(s) for s in t.loc[t["condition"].isin(exp.norms), "seed"] if int(s) >= exp.seeds})


def held_conditions(store: Store, exp: Experiment, tables=("hparam_trials", "training")) -> list[str]:
    """The conditions whose sweep trials or models the study holds (in `tables`) and `exp` does not ask
    for (a rerun with fewer conditions than before)."""
    from bnrep.store import with_norm

    held = set()
    for table in tables:
        if store.has_table(table):
            held |= set(with_norm(store.read_table(table)).get("condition", []))
    return sorted(held - set(exp.norms))
