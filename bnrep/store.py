"""The results store: where every stage reads and writes, local or remote.

`<out>` is a local path or a pyarrow.fs URI (s3://, file://; gs:// is refused:
bnrep.config.OUT_SCHEMES). Under it,
one directory per experiment:

    <out>/<experiment>/
      config.json                   resolved experiment + config hash
      hparam/best_hparams.json      best trial per BatchNorm setting
      hparam/tune/sweep/            Ray Tune storage of the sweep (SWEEP), one run for every condition
      hparam/tune/plan.json         the configurations that run searches (SWEEP_PLAN)
      train/tune/final/             Ray Tune storage of the final grid (GRID)
      train/tune/plan.json          the models that run trains (GRID_PLAN)
      train/models/<model_id>/model.pt
      results/<table>/<part>.parquet   one part per unit of work
      report/                       report.md, report.html, table1.*, fig_*

Every write goes to a temporary name in the same directory and is then
renamed, so a reader never sees half a file; a part whose footer does not
read counts as absent.

The results schema (the one place it is written down; `TABLES` below holds
each table's stage, part layout and key columns). Part names pass through
`safe_key`: a layer named `layer1.0.relu:2` is the file `...-layer1.0.relu~3a2.parquet`. Accuracies and sparsities
are fractions in [0, 1]; `layer_index` is 1-based as in the paper's figures;
`bn` is "norm is batch", kept for notebooks written before the norm axis.

    hparam_trials      one row per sweep trial; part = condition tag (bn, nobn, gn, ln, bn-b8)
        trial_id, bn, norm, condition, lr, momentum, epochs, train_acc, train_acc_running,
        val_acc, interpolated, diverged, objective, error, node_id (of the epoch the row holds)
        (diverged: its training loss became NaN or inf; it stopped and scored -2. A trial stopped at a
        rung holds that rung's epoch and results, also when it trained on past it: bnrep.stages.schedule)
    training           one row per trained model; part = model_id
        model_id, experiment, dataset, arch, model, bn, norm, condition, seed, lr, momentum,
        epochs, best_epoch, train_acc, val_acc, test_acc, interpolated, diverged,
        diverged_epoch (0: never), steps (optimiser steps to the kept weights; results before it: none),
        batch_size (the condition's; results before it: none)
        (model: the model spec, bnrep.models; arch holds the same, for older notebooks)
        bnrep import adds: imported (True), weights (the file read), and the models file's other
        columns as text (labels, a batch_size among them); lr, momentum, epochs, best_epoch and steps are NaN there
    training_history   one row per model and epoch; part = model_id
        model_id, bn, norm, condition, seed, epoch, lr, train_loss, train_acc, val_acc,
        interpolated, objective, train_acc_running, diverged
        (train_acc: a full pass over the training split where one decided
        something, i.e. 1.0 on the epoch an interpolation preset interpolates,
        NaN otherwise; train_acc_running: the epoch's own batches as they
        trained, for the curves; results before 0.2.0: a full pass every epoch)
    samples            the analysis images; part = "indices"
        purpose (sparsity | cluster), position, index (into the training split)
    channel_sparsity   model x layer x eps x channel; part = model_id
        model_id, bn, norm, condition, seed, layer, layer_index, activation, channel, eps, sparsity,
        reason (why sparsity is NaN: a NaN or inf value in the channel, or a diverged
        model, not analysed; "" otherwise; parts before 0.3 have none)
    layer_sparsity     model x layer x eps; part = model_id
        model_id, bn, norm, condition, seed, layer, layer_index, activation, eps, sparsity,
        dead_channels (channels with |x| <= eps for every value of every sample), reason
        (activation: the probe's activation, ReLU, GELU, ...: exact zeros mean
        something only after a rectifier; older parts have none and were ReLU)
    class_dbi          model x layer; part = <model_id>-<layer>
        model_id, bn, norm, condition, seed, layer, layer_index, activation, dbi, dbi_reason
    kmeans             model x layer x k; part = <model_id>-<layer>
        model_id, bn, norm, condition, seed, layer, layer_index, activation, k, dbi, inertia,
        optimal (the k with the lowest DBI: chosen here, once), dbi_reason
    nc1                model x layer; part = <model_id>-<layer>
        model_id, bn, norm, condition, seed, layer, layer_index, activation, value, reason
        (within-class variability collapse, Papyan et al. 2020; NaN + reason where undefined)
    effective_rank     model x layer; part = <model_id>-<layer>
        model_id, bn, norm, condition, seed, layer, layer_index, activation, value, reason (Roy & Vetterli 2007)
    linear_probe       model x layer; part = <model_id>-<layer>
        model_id, bn, norm, condition, seed, layer, layer_index, activation, accuracy, reason
        (Alain & Bengio 2017: 5-fold cross-validated logistic regression accuracy, bnrep.metrics.linear_probe)
    cka                model pair x layer; part = <layer>-<model_a>-<model_b>
        model_a, model_b, norm_a, norm_b, condition_a, condition_b, seed_a, seed_b, layer, layer_index, cka,
        reason, cka_debiased, debiased_reason
        (linear CKA, Kornblith et al. 2019, of the reduced representations of the
        clustering samples; every pair of conditions at one seed, every pair of seeds in one;
        cka_debiased: with the unbiased HSIC estimator, Nguyen, Raghu & Kornblith 2021: about 0
        for independent data at any N, where linear CKA is inflated at small N)
    signal_propagation model x layer; part = model_id
        model_id, bn, norm, condition, seed, layer, layer_index, activation, input_mean_sq, input_var,
        output_mean_sq, output_var, reason (Brock, De & Smith 2021: over every analysis sample and
        position, the mean over channels of the squared channel mean and of the channel variance of
        the activation's input, the pre-activation, and of its output)
    gradient_norms     model x layer; part = model_id
        model_id, bn, norm, condition, seed, layer, layer_index, activation, gradient_norm, reason
        (||d loss / d activation output|| averaged over the same 4 batches of 64 analysis samples for
        every model, norms with running statistics using each batch's; Yang et al. 2019)
    train_eval         model x layer; part = model_id
        model_id, bn, norm, condition, seed, layer, layer_index, activation, cka, rel_diff, reason
        (the clustering samples' reduced representations with batch statistics, at the condition's
        batch size, against running statistics: linear CKA and ||R_batch - R_eval|| / ||R_eval||;
        NaN with a reason for a model without running statistics; Wu & Johnson 2021)

The analysis tables are bnrep.measures' table of measures: their stage, part, keys and hash come from it.

Every analysis table has `epoch`: -1 for the model's final weights (the rows the paper's figures and
claims use; parts written before snapshots read so), else the snapshot epoch the analysis ran with
(--snapshots: every measure, CKA between models at one epoch, but the k-means sweep unless
--snapshot-kmeans, and train_eval from epoch 1 only).
At 0, the initialisation, norms with running statistics normalise with batch statistics at the
condition's batch size, as the first training step did (their running statistics are still 0 and 1).
A snapshot's part is named by `<model_id>@e<epoch>` where the final model's is named by `<model_id>`.

`norm` is the normalisation a model was built with and `condition` the study axis's
entry it belongs to (bnrep.axis: the norm's name, or a condition's tag such as bn-b8);
parts written before conditions have none and read with condition = norm.

A model whose training diverged (training.diverged) is not analysed: every
analysis row of it is NaN with the reason "diverged at epoch N: ...".

Every part carries provenance in its schema metadata (`provenance`): bnrep
version, git commit, the stage hash of config.json it was computed under
(`config_hash`), and where it was computed: the Ray node (`node_id`) and the
GPUs Ray assigned the task or trial (`gpus`, 0 on CPU, 0.25 for a quarter).
Training parts also record the model file's sha256 (`model_sha256`, checked on
every load) and the epoch a restarted trial resumed from (`resumed_from_epoch`).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import bnrep
from bnrep.measures import FINAL, MEASURES

TEMPORARY = ".tmp-"  # a file being written: renamed when complete (Store.write_bytes)
LOCK_DIR = ".lock"  # the writer lock's records (bnrep.lock)
SWEEP, SWEEP_PLAN = "hparam/tune/sweep", "hparam/tune/plan.json"  # the sweep's Tune run and its plan
GRID, GRID_PLAN = "train/tune/final", "train/tune/plan.json"  # the final grid's Tune run and its plan


@dataclass(frozen=True)
class Table:
    stage: str  # the stage that writes it: hparam | final | analysis
    part: str  # one part per: norm | model | layer (model and layer) | pair (layer, two models) | samples
    keys: tuple[str, ...]  # columns that identify a row


TABLES: dict[str, Table] = {  # the schema is in the module docstring
    "hparam_trials": Table("hparam", "norm", ("trial_id",)),
    "training": Table("final", "model", ("model_id",)),
    "training_history": Table("final", "model", ("model_id", "epoch")),
    "samples": Table("analysis", "samples", ("purpose", "position")),
    **{m.table: Table("analysis", m.part, m.key_columns) for m in MEASURES.values()},  # bnrep.measures
}


def tables(stage: str | None = None, part: str | None = None) -> tuple[str, ...]:
    """Table names, in pipeline order, written by `stage` and/or split per `part`."""
    return tuple(n for n, t in TABLES.items()
                 if (stage is None or t.stage == stage) and (part is None or t.part == part))


def norm_columns(norm: str, condition: str) -> dict:
    """The columns that name a row's normalisation in every table; `bn` ("norm is batch") is kept for
    notebooks written before the norm axis."""
    return {"bn": norm == "batch", "norm": norm, "condition": condition}


def with_norm(df: pd.DataFrame) -> pd.DataFrame:
    """Parts written before the norm axis have only `bn`: norm is batch or none; parts written before
    conditions (bnrep.axis) have no `condition`: each model's condition is its norm."""
    if "bn" in df and "norm" not in df:
        df.insert(df.columns.get_loc("bn") + 1, "norm", df["bn"].map({True: "batch", False: "none"}))
    if "layer_index" in df and "epoch" not in df:  # an analysis part written before snapshots: the final model
        df.insert(df.columns.get_loc("layer_index"), "epoch", FINAL)
    for s in ("", "_a", "_b"):
        if f"norm{s}" in df and f"condition{s}" not in df:
            df.insert(df.columns.get_loc(f"norm{s}") + 1, f"condition{s}", df[f"norm{s}"])
        elif f"condition{s}" in df and f"norm{s}" in df:  # parts of both kinds: the old ones' condition is their norm
            df[f"condition{s}"] = df[f"condition{s}"].fillna(df[f"norm{s}"])
    return df


def safe_key(name: str) -> str:
    """`name` as a file name safe on local disks and S3: any character but letters, digits and
    . _ - ~ becomes ~ and its hex code (layer1.0.relu:2 -> layer1.0.relu~3a2); names of that
    alphabet (every model_id and every built-in layer name) are unchanged."""
    return re.sub(r"[^A-Za-z0-9._~-]", lambda m: "".join(f"~{b:02x}" for b in m.group().encode()), name)


class StoreWriteError(OSError):
    """A write the store could not make (disk full, permission denied, read-only, bucket gone):
    one line naming the file; nothing half-written is left where a reader would look."""


def write_error(err: BaseException | None) -> StoreWriteError | None:
    """The StoreWriteError behind an error (a Ray task's or a Tune trial's: their causes), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, StoreWriteError) and err.args and str(err.args[0]).startswith("cannot write "):
            return StoreWriteError(err.args[0])  # the message alone (Ray wraps it in a traceback)
        err = getattr(err, "cause", None) or err.__cause__
    return None


FULL_DISK = 16 * 2**20  # bytes free below which a failure of Ray Tune's own writes is taken as a full disk
NO_WRITE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)  # a write the system refuses: every retry too


def storage_error(err: BaseException, store: Store, rel: str) -> StoreWriteError | None:
    """Ray Tune failing on the store's disk (its state and checkpoints under `rel`) as the one line of a write
    that could not be made, or None. Tune's errors seldom carry the OSError (an empty state file reads as
    EOFError): a local disk with almost no space left is then taken as the cause."""
    seen, why = set(), None
    while err is not None and id(err) not in seen and why is None:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_WRITE:
            why = os.strerror(err.errno)
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    if why is None and not is_uri(store.out):
        folder = store.path(rel)
        while not os.path.exists(folder) and os.path.dirname(folder) != folder:
            folder = os.path.dirname(folder)
        free = shutil.disk_usage(folder).free
        why = f"No space left on device ({free / 2**20:.1f} MiB free)" if free < FULL_DISK else None
    return None if why is None else cannot_write(store.display(rel), why)


def cannot_write(where: str, why: str) -> StoreWriteError:
    """The one line of a write the results' disk refused: where, why, and what to do."""
    return StoreWriteError(f"cannot write {where}: {why}; free space or fix permissions there, then rerun the same "
                           f"command (results already written are kept)")


def is_uri(path: str) -> bool:
    return "://" in str(path)


def resolve(out: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, root path inside it) for a local path or URI."""
    out = str(out)
    if is_uri(out):
        fs, root = pafs.FileSystem.from_uri(out)
        return fs, root.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(out))


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit bnrep runs from, or '' outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        r = subprocess.run(["git", "-C", here, "rev-parse", "--short=12", "HEAD"],
                           capture_output=True, text=True, timeout=5)
        return r.stdout.strip() if r.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance(config_hash: str = "") -> dict[str, str]:
    return {"bnrep_version": bnrep.__version__, "git_commit": git_commit(), "config_hash": config_hash}


class Store:
    """One experiment's directory under `<out>`, on any pyarrow filesystem."""

    def __init__(self, out: str, experiment: str):
        self.experiment = experiment
        self.fs, base = resolve(out)
        # Absolute, so that Ray workers (other cwd; Tune trials chdir) find the same place.
        self.out = str(out) if is_uri(out) else base
        self.root = f"{base}/{experiment}"
        self._uri_prefix = self.out.split("://", 1)[0] + "://" if is_uri(self.out) else ""
        # Options such as ?endpoint_override=...&scheme=http must reach Ray Tune too.
        query = self.out.split("?", 1)[1] if is_uri(self.out) and "?" in self.out else ""
        self._uri_query = f"?{query}" if query else ""

    # ---- paths ----
    def path(self, *parts: str) -> str:
        """Path inside the filesystem (what pyarrow.fs calls take)."""
        return "/".join([self.root, *parts])

    def uri(self, *parts: str) -> str:
        """Path with the URI scheme and options (what Ray Tune's storage_path takes)."""
        p = self.path(*parts)
        if self._uri_prefix == "file://":
            return "file://" + p if p.startswith("/") else "file:///" + p
        return self._uri_prefix + p + self._uri_query

    def display(self, *parts: str) -> str:
        """The path as a user names it: a local path, or the URI without its options."""
        return self.local_path(*parts) or self._uri_prefix + self.path(*parts)

    def local_path(self, *parts: str) -> str | None:
        return self.path(*parts) if isinstance(self.fs, pafs.LocalFileSystem) else None

    # ---- files ----
    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def is_file(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type == pafs.FileType.File

    def mkdir(self, *parts: str) -> None:
        self.fs.create_dir(self.path(*parts), recursive=True)

    def remove_temporaries(self) -> list[str]:
        """Delete the temporary files of writes that a killed process left half done (`.tmp-*`; not in
        Ray Tune's folders, which Tune keeps, nor the lock's). Only the holder of the writer lock calls
        this, when no task of its own is writing. Returns the paths removed."""
        removed, dirs = [], [self.path()]
        while dirs:
            sel = pafs.FileSelector(dirs.pop(), allow_not_found=True)
            for info in self.fs.get_file_info(sel):
                if info.type == pafs.FileType.Directory and info.base_name not in ("tune", LOCK_DIR):
                    dirs.append(info.path)
                elif info.type == pafs.FileType.File and info.base_name.startswith(TEMPORARY):
                    with contextlib.suppress(OSError):  # gone meanwhile: nothing to do
                        self.fs.delete_file(info.path)
                        removed.append(info.path)
        return removed

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomic: temporary name in the same directory, then rename. A failed write (disk full,
        permission denied) removes its temporary file and raises StoreWriteError naming `rel`."""
        final = self.path(rel)
        parent = final.rsplit("/", 1)[0]
        tmp = f"{parent}/{TEMPORARY}{uuid.uuid4().hex}-{final.rsplit('/', 1)[1]}"
        try:
            self.fs.create_dir(parent, recursive=True)
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, final)
        except OSError as e:
            with contextlib.suppress(OSError):
                self.fs.delete_file(tmp)
            why = e.strerror or str(e).strip().splitlines()[0]
            raise cannot_write(self.display(rel), why) from None

    def move(self, rel: str, to: str) -> None:
        """`rel` renamed `to` (replacing it: one rename on a local disk); a refused move is StoreWriteError."""
        try:
            self.fs.move(self.path(rel), self.path(to))
        except OSError as e:
            raise cannot_write(self.display(to), e.strerror or str(e).strip().splitlines()[0]) from None

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def write_json(self, rel: str, obj) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

    def read_json(self, rel: str):
        return json.loads(self.read_bytes(rel))

    def delete(self, rel: str) -> None:
        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(rel))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(rel))

    def list_dir(self, rel: str) -> list[str]:
        """Names directly under `rel` (empty when it does not exist)."""
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(sel))

    # ---- Parquet datasets ----
    def part_name(self, table: str, part: str) -> str:
        return f"results/{table}/{safe_key(part)}.parquet"

    def write_part(self, table: str, part: str, df: pd.DataFrame, config_hash: str = "", **meta) -> None:
        """Write one part of a dataset atomically, with provenance in its schema metadata."""
        t = pa.Table.from_pandas(df, preserve_index=False)
        info = {**provenance(config_hash), **{k: str(v) for k, v in meta.items()}}
        t = t.replace_schema_metadata({**(t.schema.metadata or {}), b"bnrep": json.dumps(info).encode()})
        buf = io.BytesIO()
        pq.write_table(t, buf)
        self.write_bytes(self.part_name(table, part), buf.getvalue())

    def part_metadata(self, table: str, part: str) -> dict | None:
        """Provenance of a complete, readable part, or None if absent or corrupt."""
        try:
            with self.fs.open_input_file(self.path(self.part_name(table, part))) as f:
                md = pq.read_metadata(f).metadata or {}
            return json.loads(md.get(b"bnrep", b"{}"))
        except (OSError, pa.ArrowInvalid, ValueError):
            return None

    def has_part(self, table: str, part: str, config_hash: str | tuple[str, ...] | None = None) -> bool:
        """A complete, readable part (computed under `config_hash`, or one of several)."""
        md = self.part_metadata(table, part)
        if md is None or config_hash is None:
            return md is not None
        return md.get("config_hash") in ((config_hash,) if isinstance(config_hash, str) else config_hash)

    def parts(self, table: str, config_hash: str | tuple[str, ...] | None = None) -> list[str]:
        """Names of the parts of `table` that are complete and readable (and, given
        `config_hash`, computed under it)."""
        names = [n[: -len(".parquet")] for n in self.list_dir(f"results/{table}")
                 if n.endswith(".parquet") and not n.startswith(".")]
        return [n for n in names if self.has_part(table, n, config_hash)]

    def unreadable(self, table: str) -> list[str]:
        """Parts of `table` under their final name that do not read (writes are renamed into place whole: a
        damaged file, a copy cut short); they count as absent everywhere."""
        names = [n[: -len(".parquet")] for n in self.list_dir(f"results/{table}")
                 if n.endswith(".parquet") and not n.startswith(".")]
        return [n for n in names if self.part_metadata(table, n) is None]

    def read_table(self, table: str) -> pd.DataFrame:
        """Every valid part of `table` as one DataFrame (empty if none)."""
        frames = []
        for n in self.parts(table):
            with self.fs.open_input_file(self.path(self.part_name(table, n))) as f:
                frames.append(pq.read_table(f).to_pandas())
        frames = [with_norm(f) for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def has_table(self, table: str) -> bool:
        return bool(self.parts(table))
