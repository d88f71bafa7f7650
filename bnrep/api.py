"""Results for notebooks: one read-only object per experiment directory.

    >>> import bnrep
    >>> study = bnrep.open_results("runs", "digits-cnn")   # or "s3://bucket/bnrep"
    >>> study        # <bnrep.Study digits-cnn in /path/to/runs: cnn on digits, conditions batch, none; 8 models; ...>
    >>> study.experiment.norms, study.hashes               # the configuration it was made with
    >>> study.kmeans.query("optimal")                       # every table as a pandas DataFrame
    >>> model = study.model("cnn-bn-s0")                    # weights loaded, sha256 verified
    >>> X = study.representations("cnn-bn-s0", "conv3")    # (N, C) reduced, on the saved samples
    >>> X5 = study.representations("cnn-bn-s0", "conv3", epoch=5)  # a snapshot (--snapshots); 0: at init
    >>> study.findings(), study.figures                    # the report's findings.json, its PNG figures

Nothing here writes: a notebook can read results while a run is adding to them.
"""

from __future__ import annotations

import numbers
import os
from functools import cached_property

import pandas as pd
import torch

from bnrep.config import (check_readable, command, is_imported, load_experiment, read_hashes,
                          trained_with_preset_hparams)
from bnrep.experiments import Experiment
from bnrep.measures import FINAL
from bnrep.store import TABLES, Store, is_uri
from bnrep.studies import NAME_RULE, STUDY_NAME


class Study:
    """One experiment's results under `out` (a local path or a pyarrow URI)."""

    def __init__(self, out: str, experiment: str, data_root: str | None = None):
        out = _out(out)
        if not isinstance(experiment, str) or not STUDY_NAME.fullmatch(experiment):
            raise ValueError(f"experiment {experiment!r}: {NAME_RULE}")
        self.store = Store(out, experiment)
        if not self.store.exists("config.json"):
            raise FileNotFoundError(_not_held(out, experiment))
        self.data_root = data_root

    @cached_property
    def experiment(self) -> Experiment:
        """The resolved experiment the results were made with (config.json)."""
        return load_experiment(self.store)

    @property
    def hashes(self) -> dict[str, str]:
        """train_hash and analysis_hash (config.json); training parts carry train_hash as their config_hash, each
        analysis part its own table's hash (config.json's table_hashes)."""
        return read_hashes(self.store)

    @property
    def tables(self) -> list[str]:
        """Names of the tables that have at least one part."""
        return [t for t in TABLES if self.store.has_table(t)]

    def table(self, name: str) -> pd.DataFrame:
        """Every valid part of a results table as one DataFrame (schema: bnrep.store)."""
        if name not in TABLES:
            raise KeyError(f"unknown table {name!r} (valid: {', '.join(TABLES)})")
        df = self.store.read_table(name)
        stage = TABLES[name].stage
        if df.empty and stage in ("hparam", "final") and is_imported(self.store):
            raise LookupError(f"{self.experiment.name} holds imported models (bnrep import): bnrep did not train "
                              f"them, so there is no {name} table (study.tables lists the tables it has)")
        if df.empty and name == "hparam_trials" and trained_with_preset_hparams(self.experiment,
                                                                                 self.store.read_table("training")):
            raise LookupError(f"{self.experiment.name}'s grid trained with the preset's hyperparameters "
                              f"(--paper-hparams): no sweep ran, so there is no hparam_trials table (the lr and "
                              f"momentum each model trained with are in study.training)")
        if df.empty:  # (a frame without columns would fail later, on its first column)
            raise LookupError(f"{self.store.uri('results', name)} has no rows yet: the {TABLES[name].stage} stage "
                              f"writes them (`{command(TABLES[name].stage, self.experiment.name, self.store.out)}`; "
                              f"study.tables lists the tables written so far)")
        return df

    def __getattr__(self, name: str) -> pd.DataFrame:  # study.kmeans == study.table("kmeans")
        if name in TABLES:
            return self.table(name)
        if name.startswith("_"):  # copy, pickle and IPython probe these
            raise AttributeError(name)
        raise AttributeError(f"Study has no attribute {name!r} (its tables: {', '.join(TABLES)})")

    def __dir__(self):
        return [*super().__dir__(), *TABLES]

    def __repr__(self) -> str:
        """What a notebook shows for the study: its name and place, model, data, conditions, models trained
        and tables; never an error (a notebook shows the repr of whatever a cell returns)."""
        where = f"{self.store.experiment} in {self.store.out}"
        try:
            e, n = self.experiment, len(self.store.parts("training"))
            return (f"<bnrep.Study {where}: {e.model} on {e.dataset}, conditions {', '.join(e.norms)}; {n} "
                    f"model{'s' * (n != 1)}; tables {', '.join(self.tables) or 'none yet'}>")
        except Exception as err:  # (a config.json it cannot read: said, not raised)
            return f"<bnrep.Study {where} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})>"

    def findings(self) -> dict:
        """The report's findings.json: `findings` (each claim's verdict and its numbers), `predictors`,
        `measures` (README: Reading the report); as `bnrep report` last wrote it."""
        if not self.store.exists("report/findings.json"):
            raise FileNotFoundError(f"{self.store.uri('report')} has no findings.json yet: run "
                                    f"`{command('report', self.experiment.name, self.store.out)}`")
        return self.store.read_json("report/findings.json")

    @property
    def figures(self) -> list[str]:
        """Paths of the report's figures (PNG), a list sorted by file name; IPython.display.Image(path) shows
        one. Local paths for a local study (given as a path or a file:// URI), URIs on S3. Before the report
        is drawn: FileNotFoundError, saying the command that draws it (not an empty list)."""
        names = sorted(n for n in self.store.list_dir("report") if n.startswith("fig_") and n.endswith(".png"))
        if not names:
            raise FileNotFoundError(f"{self.store.uri('report')} has no figures yet: run "
                                    f"`{command('report', self.experiment.name, self.store.out)}`")
        return [self.store.display("report", n) for n in names]

    @cached_property
    def data(self):
        import warnings

        from bnrep.data import load_data

        with warnings.catch_warnings():  # said when the study ran; a notebook reads the same data
            warnings.filterwarnings("ignore", message=r"train_size=\d+ exceeds the")
            return load_data(self.experiment, self.data_root, device="cpu", download=False)

    def model(self, model_id: str, device="cpu", epoch: int = FINAL) -> torch.nn.Module:
        """A trained model with its weights, verified against the sha256 of its training row; `epoch`: its
        weights after a snapshot epoch the grid kept (--snapshots), 0 its initialisation."""
        from bnrep.checkpoints import load_model

        ids = list(self.training["model_id"]) if "training" in self.tables else []
        if model_id not in ids:
            raise KeyError(f"no model {model_id!r} in {self.experiment.name} (models: {', '.join(ids) or 'none yet'})")
        if epoch != FINAL and (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0):
            raise ValueError(f"epoch={epoch!r}: a snapshot epoch >= 0 (0: the initialisation), or leave it out "
                             f"for the final weights")
        return load_model(self.store, model_id, self.experiment, _device(device), epoch).eval()

    def representations(self, model_id: str, layer: str | int, purpose: str = "cluster",
                        epoch: int = FINAL) -> torch.Tensor:
        """A layer's reduced representations (paper eq. 5), recomputed on the saved samples of `purpose`
        ('cluster' or 'sparsity'), rows in the samples' order, as the analysis measured them: of the
        final model, or at a snapshot `epoch` (at 0 with batch statistics at the condition's batch size).
        `layer`: its name, or its number as the tables' layer_index gives it (1: the first)."""
        from bnrep.probes import find_probes
        from bnrep.represent import extract_representations, snapshot_mode

        model, X = self.model(model_id, epoch=epoch), self.data.train.X[self._indices(purpose)]
        probes = find_probes(model, X[:2])
        number = isinstance(layer, numbers.Integral) and not isinstance(layer, bool)  # numpy's too (a table's)
        layer = int(layer) if number else layer
        chosen = [p for p in probes if (p.index if number else p.name) == layer]
        if not chosen:
            raise KeyError(f"{model_id} has no layer {layer!r} (layers: "
                           + ", ".join(f"{p.index} {p.name}" if number else p.name for p in probes) + ")")
        condition = self.training.set_index("model_id").at[model_id, "condition"]
        (rep,) = extract_representations(model, X, 0, device="cpu", probes=chosen,
                                         **snapshot_mode(self.experiment, condition, epoch))  # as the analysis
        return rep.reduced

    def labels(self, purpose: str = "cluster") -> torch.Tensor:
        """Class labels of the saved samples of `purpose`, in their order."""
        return self.data.train.y[self._indices(purpose)]

    def _indices(self, purpose: str) -> torch.Tensor:
        from bnrep.represent import PURPOSES

        if purpose not in PURPOSES:
            raise ValueError(f"purpose {purpose!r}: the saved samples are {' or '.join(map(repr, PURPOSES))}")
        s = self.table("samples")
        return torch.as_tensor(s[s["purpose"] == purpose].sort_values("position")["index"].to_numpy().copy())


def _not_held(out: str, experiment: str) -> str:
    """Why `out` has no results of `experiment`: what it holds, and the closest name; `out` itself a study's."""
    import difflib

    line = f"no results of {experiment!r} under {out} (no config.json there)"
    if not is_uri(str(out)) and not os.path.isdir(out):
        return f"{line}: {out} is a file, not a folder" if os.path.exists(out) else f"{line}: there is no folder {out}"
    try:
        held = [n for n in Store(out, "").list_dir("") if Store(out, n).exists("config.json")]
    except (OSError, ValueError):
        return f"{line}; {out} does not open as a folder"
    if Store(out, "").exists("config.json"):
        parent, name = str(out).rstrip("/").rsplit("/", 1) if "/" in str(out).rstrip("/") else (".", str(out))
        return f"{line}: {out} is itself a study's folder; open it as open_results({parent!r}, {name!r})"
    close = difflib.get_close_matches(experiment, held, n=1)
    return line + (f"; it holds {', '.join(held)}" if held else "; it holds no study") + (
        f"; did you mean {close[0]!r}?" if close else "")


def open_results(out: str, experiment: str, data_root: str | None = None) -> Study:
    """The results of `experiment` under `out`, read-only (UsageError: `out` is no place results are kept)."""
    out = _out(out)
    check_readable(out, named=f"out={out!r}")
    return Study(out, experiment, data_root)


class RunFailed(RuntimeError):
    """bnrep.run ended with an error: the command's one line (`status`: its exit status, 2 for bad input)."""

    def __init__(self, line: str, status: int):
        super().__init__(line)
        self.status = status


def run(experiment: str = "digits-cnn", out: str | os.PathLike = "./runs", **flags) -> Study:
    """`bnrep run` from Python (a notebook): the same checks, stages, lines and resume as the command, in this
    process (its private Ray shut down at the end). Flags as keywords, named with underscores: smoke_test=True,
    norms="batch,none" (or a list), seeds=3, paper_hparams=True, address="10.0.0.5:6379". Returns the finished
    study (open_results). A flag the command refuses, or a stage that fails, is RunFailed with the command's
    one line; Ctrl-C, once the run has stopped, is KeyboardInterrupt (the same call resumes it). The process's
    signal handlers and warning filters are as they were after it."""
    import contextlib
    import signal
    import sys
    import threading
    import warnings

    from bnrep import cli
    from bnrep.raysession import STOP_SIGNALS, STOPPED_CODES

    out, experiment = _out(out), os.fspath(experiment)
    argv = ["run", "--experiment", experiment, "--out", out]
    for key, value in flags.items():
        if value is None or value is False:  # a switch left off
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, (list, tuple)):
            value = ("; " if key == "conditions" else ",").join(map(str, value))
        argv += [flag] if value is True else [flag, str(value)]
    said = _Kept(sys.stderr)
    main = threading.current_thread() is threading.main_thread()  # (signal handlers live in the main thread)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, *STOP_SIGNALS)} if main else {}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(said):
            try:
                status = cli.main(argv)
            except SystemExit as e:  # argparse's refusal of a flag: its line is on stderr
                status = e.code if isinstance(e.code, int) else 2
    finally:
        for s, h in handlers.items():
            if h is not None:  # (None: a handler not installed from Python, left as it is now)
                signal.signal(s, h)
    if status in STOPPED_CODES:
        raise KeyboardInterrupt(said.last_error() or "interrupted")
    if status:
        raise RunFailed(said.last_error() or f"bnrep run ended with exit status {status}", status)
    if experiment.endswith(".toml"):
        from bnrep.studies import load_study

        experiment = load_study(experiment).name
    return open_results(out, experiment)


class _Kept:
    """A text stream that writes through to `stream` and keeps the command's last one-line ending (error:,
    interrupted:, stopped (SIGTERM):, stopped (SIGHUP):)."""

    def __init__(self, stream):
        self.stream, self.error = stream, ""

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.startswith(("error: ", "interrupted: ", "stopped (")):
                self.error = line
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def last_error(self) -> str:
        return self.error.removeprefix("error: ")

    def __getattr__(self, name):  # isatty, fileno, encoding: the stream's
        return getattr(self.stream, name)


def _out(out) -> str:
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out={out!r}: the folder (or URI) results are kept under, such as 'runs'")
    return os.fspath(out)


def _device(device) -> torch.device:
    """`device` as torch.device, one that torch can use here (ValueError, one line): 'cpu:0' is 'cpu'."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={device!r}: not a device torch knows (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "meta":  # (loading weights into it fails deep in torch)
        raise ValueError(f"device={device!r}: a meta tensor holds no values; load the weights on cpu or cuda")
    if dev.type == "cpu":
        return torch.device("cpu")  # (torch.load cannot map storages to 'cpu:0')
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: no GPU is available to torch here")
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise ValueError(f"device={device!r}: not available to torch here ({str(e).splitlines()[0][:80]})") from None
    return dev
