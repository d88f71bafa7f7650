"""End to end on a real local Ray (loopback): every stage's outputs, reruns
that do no work, SIGKILL mid-training and mid-analysis, truncated files.

One uninterrupted `bnrep run --smoke-test` (module fixture) is the reference
the other runs are compared with.
"""

import contextlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

import bnrep as api
from bnrep.store import TABLES, Store, tables
from tests.conftest import injected
from tests.processes import freeze_tree, kill_tree, stopped, thaw


pytestmark = pytest.mark.slow

CNN_CHANNELS = {"conv1": 16, "conv2": 32, "conv3": 64, "conv4": 128, "fc1": 100}
MODELS = ["cnn-bn-s0", "cnn-bn-s1", "cnn-nobn-s0", "cnn-nobn-s1"]  # --smoke-test: 2 seeds x BN
K_VALUES = range(2, 7)  # --smoke-test: k = 2..6
SORT = {name: list(t.keys) for name, t in TABLES.items()}
ANALYSIS = list(tables("analysis"))
# CKA pairs of the smoke grid: the two norms at one seed, the two seeds in one norm
PAIRS = [("cnn-bn-s0", "cnn-nobn-s0"), ("cnn-bn-s1", "cnn-nobn-s1"), ("cnn-bn-s0", "cnn-bn-s1"),
         ("cnn-nobn-s0", "cnn-nobn-s1")]


def bnrep(*args, out, **popen):  # ~1 min idle; no deadline: a loaded machine is slower, not wrong
    cmd = [sys.executable, "-m", "bnrep", *args, "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent, **popen)


def table(out, name):
    df = pd.read_parquet(out / "digits-cnn" / "results" / name)
    return df.sort_values(SORT[name]).reset_index(drop=True) if name in SORT else df


def snapshot(out):
    """path -> (size, mtime_ns) of every file under the experiment."""
    root = out / "digits-cnn"
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and not {"tune", ".lock"} & set(p.relative_to(root).parts)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "runs"
    r = bnrep("run", "--smoke-test", out=out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout


def copy_stages(src, dst, *rels):
    for rel in rels:
        s, d = src / "digits-cnn" / rel, dst / "digits-cnn" / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if s.is_dir() else shutil.copy2)(s, d)


# ==== outputs ====
def test_every_stage_writes_its_outputs(reference):
    out, log = reference
    exp = out / "digits-cnn"
    trials = table(out, "hparam_trials")
    assert len(trials) == 4 and set(trials["bn"]) == {True, False}  # 2 trials per BN setting
    assert (trials["lr"] > 0).all() and trials["trial_id"].is_unique
    best = pd.read_json(exp / "hparam" / "best_hparams.json")
    assert set(best.columns) == {"bn", "nobn"} and (best.loc["lr"] > 0).all()

    training = table(out, "training")
    assert list(training["model_id"]) == MODELS
    assert training[["train_acc", "val_acc", "test_acc"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (training["steps"] == training["best_epoch"] * 4).all()  # 256 smoke training images, batches of 64
    assert (training["batch_size"] == 64).all()  # the recipe's, as a batch-size study groups models by it
    history = pd.read_parquet(exp / "results" / "training_history")
    assert history.groupby("model_id")["epoch"].max().to_dict() == dict(zip(training.model_id, training.epochs))
    for mid in MODELS:
        blob = torch.load(exp / "train" / "models" / mid / "model.pt", weights_only=True)
        assert blob["metrics"]["model_id"] == mid and "state_dict" in blob

    assert len(table(out, "channel_sparsity")) == len(MODELS) * sum(CNN_CHANNELS.values())
    for name in ("layer_sparsity", "class_dbi"):
        assert len(table(out, name)) == len(MODELS) * len(CNN_CHANNELS)
    km = table(out, "kmeans")
    assert len(km) == len(MODELS) * len(CNN_CHANNELS) * len(K_VALUES)
    assert set(km["k"]) == set(K_VALUES)
    n_opt = km.groupby(["model_id", "layer"]).agg(optimal=("optimal", "sum"), finite=("dbi", "count"))
    assert (n_opt["optimal"] == (n_opt["finite"] > 0)).all()  # one optimal k; none for a dead layer
    for name in ("nc1", "effective_rank"):
        assert len(table(out, name)) == len(MODELS) * len(CNN_CHANNELS), name
    cka = table(out, "cka")
    assert sorted(set(zip(cka.model_a, cka.model_b))) == sorted(PAIRS) and len(cka) == len(PAIRS) * len(CNN_CHANNELS)
    assert cka["cka"].between(0, 1 + 1e-6).all()
    assert cka["cka_debiased"].between(-1, 1 + 1e-6).all() and (cka["debiased_reason"] == "").all()
    samples = table(out, "samples")
    assert samples.groupby("purpose").size().to_dict() == {"sparsity": 128, "cluster": 160}

    for f in ("report.md", "report.html", "table1.md", "fig_layer_sparsity.png", "fig_class_dbi.png"):
        assert (exp / "report" / f).stat().st_size > 0, f
    smoke = ("digits-cnn: run at --smoke-test sizes (at most 3 epochs, 2 seeds, up to 256 training images (fewer where "
             "the data has fewer), k up to 6): a check that the study runs end to end; its verdicts say nothing of the "
             "paper's claims.")
    for f in ("report.md", "report.html", "summary.txt"):  # said where the terminal's header is not at hand
        assert smoke in html.unescape((exp / "report" / f).read_text()), f
    assert "no download) at --smoke-test sizes |" in (exp / "report" / "report.md").read_text()  # Settings
    study = api.open_results(str(out), "digits-cnn")  # a notebook's way to the report
    assert study.findings() == json.loads((exp / "report" / "findings.json").read_text())
    assert study.figures == sorted(str(p) for p in (exp / "report").glob("fig_*.png")) and len(study.figures) > 5
    store = Store(str(out), "digits-cnn")
    assert {store.part_metadata("training", m)["resumed_from_epoch"] for m in MODELS} == {"0"}  # uninterrupted
    cfg = pd.read_json(exp / "config.json", typ="series")
    assert cfg["experiment"]["max_epochs"] == 3 and cfg["train_hash"] and cfg["analysis_hash"]
    assert "report.html" in log


def test_diverged_models_are_results_not_crashes(tmp_path):
    """`--lr 10000`: every model's loss becomes NaN. Training records the epoch; the analysis measures no
    diverged weights (no task: every row NaN with the epoch); the report is written and says so. Before:
    the analysis died in k-means with a 70-line RayTaskError, exit 1, no report. (`--train-size` above the
    data: the analysis says so under its header, with its other notes.)"""
    from bnrep.stages.analysis import NOT_TRAINED

    out = tmp_path / "runs"
    r = bnrep("run", "--smoke-test", "--paper-hparams", "--lr", "10000", "--train-size", "99999", out=out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    said = r.stdout.split("==== stage 2/3: analysis")[1].splitlines()
    assert said[1].startswith("bnrep ") and said[2].startswith("config: ")
    assert said[3] == "note: train_size=99999 exceeds the 1294 training images; using all of them"
    training = table(out, "training")
    assert list(training["model_id"]) == MODELS and training["diverged"].all()
    assert (training["diverged_epoch"] == training["epochs"]).all()  # stopped at once
    history = table(out, "training_history")
    assert history.groupby("model_id")["diverged"].sum().to_dict() == dict.fromkeys(MODELS, 1)
    why = {m: NOT_TRAINED.format(epoch=e) for m, e in zip(training["model_id"], training["diverged_epoch"])}
    for name, value, reason in (("channel_sparsity", "sparsity", "reason"), ("layer_sparsity", "sparsity", "reason"),
                                ("class_dbi", "dbi", "dbi_reason"), ("kmeans", "dbi", "dbi_reason"),
                                ("nc1", "value", "reason"), ("effective_rank", "value", "reason")):
        t = table(out, name)
        per_model = {"channel_sparsity": sum(CNN_CHANNELS.values()), "kmeans": len(CNN_CHANNELS) * len(K_VALUES)}
        assert len(t) == len(MODELS) * per_model.get(name, len(CNN_CHANNELS)), name
        assert t[value].isna().all() and (t[reason] == t["model_id"].map(why)).all(), name
    cka = table(out, "cka")
    assert len(cka) == len(PAIRS) * len(CNN_CHANNELS) and cka["cka"].isna().all()
    assert (cka["reason"] == cka["model_a"].map(why)).all()
    assert "Diverged (training loss NaN or inf, training stopped): 2 of 2 BN models (epoch" in r.stdout
    assert (out / "digits-cnn" / "report" / "report.html").stat().st_size > 0
    assert "Traceback" not in r.stdout + r.stderr


def test_second_run_does_no_work(reference, tmp_path):
    src, _ = reference
    out = tmp_path / "runs"
    shutil.copytree(src, out)
    before = snapshot(out)
    r = bnrep("run", "--smoke-test", out=out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[hparam] complete: nothing to do" in r.stdout
    assert "[final] 4 of 4 models already trained" in r.stdout
    assert "wrote" not in r.stdout  # no stage says it wrote
    assert "4 models complete, 0 tasks to run" in r.stdout
    assert "report is up to date" in r.stdout
    assert f"report: {out}/digits-cnn/report/report.html" in r.stdout and str(src) not in r.stdout  # copied here
    after = snapshot(out)
    changed = {k for k in before if before[k] != after.get(k)} | (set(after) - set(before))
    assert changed <= {"config.json"}, changed


# ==== interruption ====
def run_and_kill(out, when, *args, frozen=lambda out: True, env=None):
    """Start `bnrep run`, SIGKILL it and every process it started (Ray included)
    once when(out) holds and, with every one of them frozen, frozen(out) holds
    too (else thaw and wait on); when this returns, nothing of that run can
    still write. No clock: however slow the machine, the run either reaches
    the moment or ends."""
    p = subprocess.Popen([sys.executable, "-m", "bnrep", "run", "--smoke-test", *args, "--out", str(out)],
                         cwd=out.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, env=env)
    try:
        while True:
            assert p.poll() is None, "the run ended before it could be interrupted"
            if when(out):
                tree = freeze_tree(p.pid)  # nothing writes now: frozen(out) reads files that stand still
                if frozen(out):
                    return
                thaw(tree)
            time.sleep(0.02)
    finally:
        kill_tree(p.pid)  # the driver and the local Ray it started, all at once
        p.wait()


def tune_whole(out, rel):
    """Tune's state under <experiment>/rel is whole: Tuner.restore can use it."""
    from bnrep.stages.tuning import tune_state_problem

    return tune_state_problem(Store(str(out), "digits-cnn"), rel) is None


def resumable(out, rel, done=lambda trial: False):
    """Tune's state under <experiment>/rel is whole and names a checkpoint of
    a trial that has not finished (nor is `done`): a restore resumes a trial past epoch 0."""
    from ray.tune import ExperimentAnalysis

    return tune_whole(out, rel) and any(t.status != "TERMINATED" and t.checkpoint is not None and not done(t)
                                        for t in ExperimentAnalysis(str(out / "digits-cnn" / rel)).trials)


def saved(out):
    """Whether a grid trial's model has its training row (the model is done, whatever Tune's state says of
    its trial: the resumed grid reruns that trial without training)."""
    from bnrep.models import model_id

    return lambda t: f"{model_id('cnn', t.config['run']['norm'], t.config['run']['seed'])}.parquet" in parts(
        out, "training")


def parts(out, name):
    d = out / "digits-cnn" / "results" / name
    return sorted(p.name for p in d.glob("*.parquet") if not p.name.startswith(".")) if d.exists() else []


def assert_tables_equal(out, ref, names, exact=False):
    for name in names:
        got, want = table(out, name), table(ref, name)
        assert not got.duplicated(SORT[name]).any(), name
        pd.testing.assert_frame_equal(got, want, check_exact=exact, rtol=1e-6, obj=name)


DONE_BEFORE = {"final": ("config.json", "hparam", "results/hparam_trials"),
               "analysis": ("config.json", "hparam", "results/hparam_trials", "train/models", "results/training",
                            "results/training_history"),
               "report": ("config.json", "hparam", "train/models", "results")}
STAGE_ARGS = {"final": ("final", "--smoke-test"), "analysis": ("analysis", "--smoke-test"), "report": ("report",)}


@pytest.mark.parametrize("stage, rel", [("final", "train/models/cnn-nobn-s1/model.pt"),  # in a Tune trial
                                        ("analysis", "results/kmeans/cnn-bn-s0-conv2.parquet"),  # in a Ray task
                                        ("report", "report/.bnrep-staging/report.html")])  # in the driver
def test_a_full_disk_is_one_line_and_the_rerun_completes(reference, tmp_path, stage, rel):
    """Disk full while a stage writes one file (half its bytes written, then ENOSPC, in whichever process
    writes it): one line naming the file, exit 1, no half-written or temporary file left, the lock free;
    the same command, once there is space, finishes with the reference's results."""
    ref, _ = reference
    out = tmp_path / "runs"
    copy_stages(ref, out, *DONE_BEFORE[stage])
    r = bnrep(*STAGE_ARGS[stage], out=out, env=injected(BNREP_FULL_DISK=rel))
    root = out / "digits-cnn"
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [
        f"error: cannot write {root / rel}: No space left on device; free space or fix permissions there, then "
        f"rerun the same command (results already written are kept)"]
    assert not (root / rel).exists()
    assert "restarting it from" not in r.stdout  # not retried: it would fail again, retrained
    assert not [p for p in root.rglob(".tmp-*") if "tune" not in p.parts]
    r = bnrep(*STAGE_ARGS[stage], out=out)  # the lock is free, nothing half-written is read
    assert r.returncode == 0, r.stderr[-3000:]
    assert_tables_equal(out, ref, {"final": ["training", "training_history"], "analysis": ANALYSIS}.get(stage, []),
                        exact=True)
    assert (root / rel.replace(".bnrep-staging/", "")).stat().st_size > 0  # (a report's files: moved into place)


EVERY_EPOCH = ("--checkpoint-every", "0")  # a checkpoint after each epoch: the first one's is there to read


@pytest.mark.parametrize("stage, rel", [("hparam", "hparam/tune/sweep"), ("final", "train/tune/final")])
def test_a_checkpoint_the_full_disk_refuses_stops_the_stage_at_once(reference, tmp_path, stage, rel):
    """Ray Tune's copy of an epoch's checkpoint into a full results disk: one line naming the Tune run's
    folder under --out, exit 1, and no trial retried (each retry failed the same way: the sweep took 49 s
    instead of 15 s on a 6 MiB disk); the same command, once there is space, finishes."""
    ref, _ = reference
    out = tmp_path / "runs"
    copy_stages(ref, out, *({"final": DONE_BEFORE["final"]}.get(stage, ())))
    args = (stage, "--smoke-test", *EVERY_EPOCH)  # (a smoke trial is done before a 60 s interval)
    r = bnrep(*args, out=out, env=injected(BNREP_FULL_CHECKPOINTS="1"))
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [
        f"error: cannot write {out / 'digits-cnn' / rel}: No space left on device; free space or fix permissions "
        f"there, then rerun the same command (results already written are kept)"]
    assert "restarting it from" not in r.stdout
    r = bnrep(*args, out=out)
    assert r.returncode == 0, r.stderr[-3000:]


FINAL_TUNE = "train/tune/final"


@pytest.fixture(scope="module")
def killed_grid(reference, tmp_path_factory):
    """A run killed in the final grid once a model is done, Tune's state on disk
    is whole and it names a checkpoint of a model not yet saved; (runs, models done)."""
    ref, _ = reference
    out = tmp_path_factory.mktemp("killed_grid") / "runs"
    copy_stages(ref, out, "config.json", "hparam", "results/hparam_trials")  # same best hparams as ref
    run_and_kill(out, lambda o: len(parts(o, "training")) >= 1, *EVERY_EPOCH, frozen=lambda o: resumable(o, FINAL_TUNE, saved(o)))
    n_done = len(parts(out, "training"))
    assert n_done < len(MODELS), "training finished before the kill"
    return out, n_done


@contextlib.contextmanager
def moved_away(folder):
    """`folder` renamed while the block runs: a copy of it resumes with nothing at the path it was written
    under (Tune's state holds that absolute path), as in a results folder moved to another disk."""
    away = folder.with_name(folder.name + "-moved-away")
    folder.rename(away)
    try:
        yield
    finally:
        away.rename(folder)


def test_killed_during_training_resumes_to_the_same_results(reference, killed_grid, tmp_path):
    ref, _ = reference
    out = tmp_path / "runs"
    shutil.copytree(killed_grid[0], out)
    n_done = killed_grid[1]
    status = bnrep("status", "--experiment", "digits-cnn", out=out)
    left = len(MODELS) - n_done  # Tune's state of the grid holds them: `bnrep status` says they resume
    assert (f"final      partial   {n_done}/4 models trained; unfinished grid to resume: {left} "
            f"model{'s' * (left != 1)}") in status.stdout
    done = [name.removesuffix(".parquet") for name in parts(out, "training")]  # (a model.pt without its row: not done)
    saved = {p: p.stat().st_mtime_ns for p in (out / "digits-cnn" / "train" / "models" / m / "model.pt" for m in done)}
    with moved_away(killed_grid[0]):
        r = bnrep("run", "--smoke-test", out=out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"[final] {n_done} of 4 models already trained" in r.stdout  # nothing of the killed run wrote later
    assert len(saved) == n_done and {p: p.stat().st_mtime_ns for p in saved} == saved  # not trained again
    assert "[final] resuming the interrupted grid" in r.stdout  # Tuner.restore
    assert_tables_equal(out, ref, ["training", "training_history"], exact=True)  # resume is bit-exact
    store = Store(str(out), "digits-cnn")
    resumed = {m: int(store.part_metadata("training", m)["resumed_from_epoch"]) for m in MODELS}
    assert max(resumed.values()) > 0, resumed  # a resume, not a restart from scratch
    assert_tables_equal(out, ref, ["layer_sparsity", "channel_sparsity", "class_dbi", "kmeans"])


def test_a_grid_trial_of_a_model_saved_before_the_stop_trains_nothing(reference, tmp_path, monkeypatch):
    """A Ctrl-C between a model's save and Tune's next save of its state: the resumed grid reruns that trial,
    which Tune's state holds unfinished. The trial reports the saved model and trains nothing: it trained the
    model again, from its start (no checkpoint within --checkpoint-every), over the saved files."""
    from ray import tune

    from bnrep.config import load_experiment, read_hashes
    from bnrep.stages import final
    from tests.conftest import tree

    out = tmp_path / "runs"
    shutil.copytree(reference[0], out)
    store = Store(str(out), "digits-cnn")
    exp, before, said = load_experiment(store), tree(out), []
    monkeypatch.setattr(final, "Trainer", lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr(tune, "report", said.append)
    hp = {"lr": 0.01, "momentum": 0.9}
    final.trial({"run": {"seed": 1, "norm": "none", "hparams": hp}}, exp, str(out), None, False, 60.0,
                read_hashes(store)["train_hash"])
    test_acc = store.read_table("training").set_index("model_id").loc["cnn-nobn-s1", "test_acc"]
    assert said == [{"model_id": "cnn-nobn-s1", "test_acc": test_acc, "saved": True, "already_trained": True}]
    assert tree(out) == before
    assert final.describe_model({}, said[0]).endswith(" (saved before the stop: not trained again)")


def truncate_state(tune_dir):  # killed while Tune copied its state to storage
    state = max(tune_dir.glob("experiment_state-*.json"))
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])


def remove_checkpoints(tune_dir):  # killed after Tune replaced a checkpoint, before it saved its state
    from ray.tune import ExperimentAnalysis

    gone = [t.checkpoint.path for t in ExperimentAnalysis(str(tune_dir)).trials
            if t.status != "TERMINATED" and t.checkpoint is not None]
    assert gone
    for path in gone:
        shutil.rmtree(path)


@pytest.mark.parametrize("damage", [truncate_state, remove_checkpoints])
def test_unusable_tune_state_trains_the_unfinished_models_anew(reference, killed_grid, tmp_path, damage):
    ref, _ = reference
    out = tmp_path / "runs"
    shutil.copytree(killed_grid[0], out)
    n_done = killed_grid[1]
    done = set(m.removesuffix(".parquet") for m in parts(out, "training"))
    damage(out / "digits-cnn" / FINAL_TUNE)
    r = bnrep("run", "--smoke-test", out=out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"[final] {n_done} of 4 models already trained" in r.stdout
    assert "[final] cannot resume the interrupted grid in" in r.stdout
    assert f"training its {len(MODELS) - n_done} unfinished models from the start" in r.stdout
    assert_tables_equal(out, ref, ["training", "training_history"], exact=True)
    store = Store(str(out), "digits-cnn")
    resumed = {m: int(store.part_metadata("training", m)["resumed_from_epoch"]) for m in MODELS if m not in done}
    assert set(resumed.values()) == {0}, resumed  # trained from the start
    assert_tables_equal(out, ref, ["layer_sparsity", "class_dbi"])


def test_a_folder_named_bnrep_in_the_current_folder_is_not_imported_in_bnrep_s_place(tmp_path):
    """The quickstart's `bnrep run --out /tmp/bnrep` typed in /tmp: Ray puts the current folder first on its
    workers' path, where `bnrep/` (the results) would be an empty namespace package instead of the editable
    install's bnrep, and every trial failed on `bnrep.__version__`. (The console script: `python -m bnrep`
    itself would import the folder there, before any of bnrep's code runs.)"""
    console = os.path.join(os.path.dirname(sys.executable), "bnrep")
    r = subprocess.run([console, "final", "--smoke-test", "--paper-hparams", "--seeds", "1", "--max-failures", "0",
                        "--out", str(tmp_path / "bnrep")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert len(list((tmp_path / "bnrep" / "digits-cnn" / "results" / "training").glob("*.parquet"))) == 2


def test_a_new_reference_on_finished_results_makes_the_report_anew(reference, tmp_path):
    """Nothing to train or measure: the new reference is recorded all the same, and the report, found out
    of date, judges every claim against it (it said 'up to date' and kept judging against none)."""
    ref, _ = reference
    out = tmp_path / "runs"
    copy_stages(ref, out, "config.json", "hparam", "train/models", "results", "report")
    r = bnrep("run", "--smoke-test", "--reference", "batch", out=out)
    assert r.returncode == 0 and "0 tasks to run" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
    assert "up to date" not in r.stdout and "[final] 4 of 4 models already trained" in r.stdout
    assert json.loads((out / "digits-cnn" / "config.json").read_text())["experiment"]["reference"] == "batch"
    fj = json.loads((out / "digits-cnn" / "report" / "findings.json").read_text())
    assert {f["ref"] for f in fj["findings"]} == {"batch"}


def test_one_probe_is_measured_as_in_the_full_analysis(reference, tmp_path):
    """--probes naming one layer (or a net with one activation): its rows are the full analysis' rows of
    that layer (Ray returns a task's single result whole, not split into one object per probe)."""
    ref, _ = reference
    out = tmp_path / "runs"
    copy_stages(ref, out, *DONE_BEFORE["analysis"])
    r = bnrep("analysis", "--smoke-test", "--probes", "conv3", out=out)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for name in ("class_dbi", "kmeans", "nc1", "effective_rank", "cka", "layer_sparsity"):
        got, want = table(out, name), table(ref, name)
        want = want[want["layer"] == "conv3"].reset_index(drop=True)
        assert len(want) and set(got["layer"]) == {"conv3"}, name
        pd.testing.assert_frame_equal(got, want, rtol=1e-6, obj=name)


def test_killed_during_analysis_resumes_to_the_same_results(reference, tmp_path):
    ref, _ = reference
    out = tmp_path / "runs"
    copy_stages(ref, out, "config.json", "hparam", "train/models", "results/hparam_trials",
                "results/training", "results/training_history")
    run_and_kill(out, lambda o: len(parts(o, "kmeans")) >= 1)
    have = {t: set(parts(out, t)) for t in ANALYSIS}
    assert len(have["kmeans"]) < len(MODELS) * len(CNN_CHANNELS), "analysis finished before the kill"
    # what is left, derived here from the files: a task per (model, layer) with any of its tables missing,
    # a CKA task per missing (layer, pair), an extraction per model with any of that or its sparsity missing
    layer_tasks = {m: sum(any(f"{m}-{l}.parquet" not in have[t] for t in ("class_dbi", "kmeans", "nc1", "effective_rank"))
                          for l in CNN_CHANNELS) for m in MODELS}
    cka_left = [(a, b) for a, b in PAIRS for l in CNN_CHANNELS if f"{l}-{a}-{b}.parquet" not in have["cka"]]
    own = {m for m in MODELS if layer_tasks[m] or any(f"{m}.parquet" not in have[t]
                                                      for t in ("channel_sparsity", "layer_sparsity"))}
    extract = own | {m for pair in cka_left for m in pair}
    n_tasks = len(extract) + sum(layer_tasks.values()) + len(cka_left)
    again = f" ({len(extract - own)} of them extracted again for the CKA left to compute)" if extract - own else ""
    r = bnrep("analysis", "--smoke-test", out=out)  # the stage the kill hit (only its results are checked)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next((l for l in r.stdout.splitlines() if "tasks to run" in l), r.stdout[-2000:])
    assert f"{len(MODELS) - len(own)} models complete{again}, {n_tasks} tasks to run" in line, (
        line, {t: sorted(v) for t, v in have.items() if t != "samples"})
    assert_tables_equal(out, ref, ANALYSIS)


def test_truncated_part_and_checkpoint_are_recomputed(reference, tmp_path):
    ref, _ = reference
    out = tmp_path / "runs"
    shutil.copytree(ref, out)
    exp = out / "digits-cnn"
    for f in (exp / "results" / "kmeans" / "cnn-nobn-s1-conv3.parquet", exp / "train/models/cnn-bn-s0/model.pt"):
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])  # killed mid-write (without the atomic rename)
    flipped = exp / "train/models/cnn-nobn-s0/model.pt"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the middle: it still loads, but is not the model trained
    flipped.write_bytes(bytes(data))
    torch.load(flipped, weights_only=True)
    status = bnrep("status", "--experiment", "digits-cnn", out=out).stdout
    assert "final      partial   2/4 models trained" in status, status  # the analysis is not complete either
    assert "analysis   partial   " in status and "(of the trained models; 2 to train first)" in status, status
    r = bnrep("run", "--smoke-test", out=out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[final] 2 of 4 models already trained" in r.stdout  # both retrained, each said why
    for mid in ("cnn-bn-s0", "cnn-nobn-s0"):
        assert (f"[final] {mid} trains again: {exp}/train/models/{mid}/model.pt is not the model that was trained "
                f"(sha256 differs: corrupt or replaced)") in r.stdout, r.stdout
    torch.load(exp / "train/models/cnn-bn-s0/model.pt", weights_only=True)  # whole again
    assert (exp / "train/models/cnn-nobn-s0/model.pt").read_bytes() == (ref / "digits-cnn/train/models/cnn-nobn-s0/model.pt").read_bytes()
    assert_tables_equal(out, ref, ["training", "layer_sparsity", "class_dbi", "kmeans"])


SWEEP_TUNE = "hparam/tune/sweep"


@pytest.fixture(scope="module")
def killed_sweep(tmp_path_factory):
    """A run killed in the sweep once a trial has a checkpoint and Tune's state on disk is whole. Each case
    resumes a copy of it: the kill is the same in both, only the damage done to the copy differs."""
    out = tmp_path_factory.mktemp("killed_sweep") / "runs"
    tune_dir = out / "digits-cnn" / SWEEP_TUNE
    run_and_kill(out, lambda o: any(tune_dir.glob("*/checkpoint_*")), *EVERY_EPOCH,
                 frozen=lambda o: tune_whole(o, SWEEP_TUNE))
    return out


@pytest.mark.parametrize("damage", [None, truncate_state])
def test_killed_during_the_sweep_resumes_through_tuner_restore(reference, killed_sweep, tmp_path, damage):
    ref, _ = reference
    out = tmp_path / "runs"
    shutil.copytree(killed_sweep, out)
    tune_dir = out / "digits-cnn" / SWEEP_TUNE
    assert not (out / "digits-cnn" / "hparam" / "best_hparams.json").exists(), "the sweep ended before the kill"
    from bnrep.stages.tuning import tune_state_problem

    store = Store(str(out), "digits-cnn")  # a search begun with other keys (one search per norm) is not resumed
    assert tune_state_problem(store, SWEEP_TUNE, {"norm": 1, "lr": 1, "momentum": 1}) == (
        "it searched other keys (run/grid_search)")
    if damage:
        damage(tune_dir)
    with moved_away(killed_sweep):
        r = bnrep("run", "--smoke-test", out=out)
    assert r.returncode == 0, r.stderr[-3000:]
    if damage:
        assert "[hparam] cannot resume the interrupted sweep in" in r.stdout
        assert "searching anew (seeded: the same configurations)" in r.stdout
    else:
        assert "[hparam] resuming the interrupted sweep" in r.stdout
    trials = table(out, "hparam_trials")
    assert trials.groupby("bn").size().to_dict() == {False: 2, True: 2} and trials["trial_id"].is_unique
    assert (trials["error"] == "").all()
    assert len(table(out, "training")) == len(MODELS)
    # The search is seeded and its stopping rule does not depend on the order results arrive
    # (bnrep.stages.schedule): the same trials, stopped at the same epochs, with the same results as the
    # uninterrupted sweep, exactly (NaN, no full pass, equals NaN)
    keys = ["norm", "lr", "momentum"]
    mine, ref_trials = (t.drop(columns=["trial_id", "node_id"]).sort_values(keys).reset_index(drop=True)
                        for t in (trials, table(ref, "hparam_trials")))
    pd.testing.assert_frame_equal(mine, ref_trials, check_exact=True)


def test_a_sweep_killed_before_any_checkpoint_resumes_its_trials_from_their_start(reference, tmp_path):
    """With the default --checkpoint-every (60 s), a smoke trial never checkpoints: a run killed once
    trials have reported epochs resumes them from their start (all they lose is those epochs) and the sweep
    ends as the uninterrupted one did, the same trials stopped at the same epochs."""
    ref, _ = reference
    out = tmp_path / "runs"
    tune_dir = out / "digits-cnn" / SWEEP_TUNE

    def reported(o):
        return any(f.stat().st_size for f in tune_dir.glob("*/result.json"))

    # Tune saves its state at most every 10 s by default: a smoke sweep on a loaded machine could end before a
    # state it wrote was whole at a moment trials had reported, and the run was killed past the sweep (the rerun
    # had nothing to resume; seen once in a full-suite run). Saved at every step, the moment comes early.
    run_and_kill(out, reported, frozen=lambda o: tune_whole(o, SWEEP_TUNE),
                 env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0"})
    assert not list(tune_dir.glob("*/checkpoint_*"))
    r = bnrep("hparam", "--smoke-test", out=out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[hparam] resuming the interrupted sweep" in r.stdout
    keys = ["norm", "lr", "momentum"]
    mine, ref_trials = (t.drop(columns=["trial_id", "node_id"]).sort_values(keys).reset_index(drop=True)
                        for t in (table(out, "hparam_trials"), table(ref, "hparam_trials")))
    pd.testing.assert_frame_equal(mine, ref_trials, check_exact=True)


def test_fresh_recomputes_the_stage_and_downstream_only(reference, tmp_path):
    ref, _ = reference
    out = tmp_path / "runs"
    shutil.copytree(ref, out)
    before = snapshot(out)
    r = bnrep("analysis", "--smoke-test", "--fresh", out=out)
    assert r.returncode == 0, r.stderr[-3000:]
    after = snapshot(out)
    upstream = [k for k in before if k.startswith(("train/", "hparam/", "results/training", "results/hparam"))]
    assert upstream and all(after[k] == before[k] for k in upstream)  # untouched
    analysis = [k for k in before if k.split("/")[:2] in [["results", t] for t in ANALYSIS]]
    assert analysis and all(after[k][1] != before[k][1] for k in analysis)  # every part written anew
    assert not any(k.startswith("report/") for k in after)  # downstream of the analysis: gone
    assert_tables_equal(out, ref, ANALYSIS)


def test_models_trained_with_other_hyperparameters_are_not_kept_under_the_ones_asked(reference, tmp_path):
    """--paper-hparams on a study whose grid the sweep's best trained printed '[final] 4 of 4 models already
    trained' and reported the sweep's models as the run asked; without it, on a grid the preset's values trained,
    a new sweep ran and the grid kept the old models. Both are refused before any work, files untouched."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bnrep import config
    from bnrep.experiments import get_experiment

    ref, _ = reference
    out = tmp_path / "runs"
    shutil.copytree(ref, out)
    before = snapshot(out)
    preset = get_experiment("digits-cnn").paper_hparams("batch")
    for stage in ("run", "final"):
        r = bnrep(stage, "--smoke-test", "--paper-hparams", out=out)
        assert r.returncode == 2 and r.stdout == "", r.stdout[-2000:]
        (line,) = r.stderr.strip().splitlines()
        assert "holds models trained with the sweep's best hyperparameters (cnn-bn-s0: lr " in line, line
        assert (f"and keeps them; this run gives the grid the preset's (lr {preset['lr']:.4g}, momentum "
                f"{preset['momentum']:g}): run without --paper-hparams to go on with them, or --fresh") in line, line
    assert snapshot(out) == before
    # a condition added to the swept study: the sweep has yet to choose its values, the models kept are the sweep's
    from bnrep import flags
    from bnrep.stages.final import check_kept_hparams, untrained

    more = flags.resolve_experiment(flags.build_parser("run").parse_args(
        ["--smoke-test", "--norms", "batch,group,none", "--out", str(out)]))
    store = Store(str(out), "digits-cnn")
    grid = [{"seed": s, "norm": n} for s in range(more.seeds) for n in more.norms]
    assert len(untrained(more, store, grid, config.stage_hashes(more)["train_hash"])) == 2  # GN's alone: 4 kept
    check_kept_hparams(more, store, paper=False)  # (refused: "best_hparams.json lacks gn")
    # the reverse: a grid the preset's values trained (each condition's), no sweep run yet
    exp = out / "digits-cnn"
    for f in (exp / "results" / "training").glob("*.parquet"):
        t = pq.read_table(f)
        hp = [get_experiment("digits-cnn").paper_hparams(n) for n in t.column("norm").to_pylist()]
        for col in ("lr", "momentum"):
            t = t.set_column(t.schema.get_field_index(col), col, pa.array([h[col] for h in hp], pa.float64()))
        pq.write_table(t, f)
    shutil.rmtree(exp / "hparam")
    shutil.rmtree(exp / "results" / "hparam_trials")
    before = snapshot(out)
    r = bnrep("run", "--smoke-test", out=out)
    assert r.returncode == 2 and r.stdout == "", r.stdout[-2000:]
    (line,) = r.stderr.strip().splitlines()
    assert "holds models trained with the preset's (--paper-hparams) hyperparameters (cnn-bn-s0: lr " in line, line
    assert ("this run gives the grid the sweep's best (the sweep has yet to run): pass --paper-hparams to go on with "
            "them, or --fresh to train the grid anew (another --out keeps both)") in line, line
    assert snapshot(out) == before
    r = bnrep("status", "--experiment", "digits-cnn", out=out)  # the models are still whole: kept as they are
    assert r.returncode == 0 and "4/4 models trained" in r.stdout, r.stdout


def test_killed_during_the_report_gives_a_complete_report_on_rerun(reference, tmp_path):
    ref, _ = reference
    out = tmp_path / "runs"
    shutil.copytree(ref, out)
    report = out / "digits-cnn" / "report"
    shutil.rmtree(report)
    p = subprocess.Popen([sys.executable, "-m", "bnrep", "report", "--out", str(out)], cwd=out.parent,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                         env=injected(BNREP_STOP_AFTER="report/fig_layer_sparsity.png"))
    try:  # it stops itself once that figure is written, before it marks itself complete: no race
        while not stopped(p.pid):
            assert p.poll() is None, "the report ended without writing fig_layer_sparsity.png"
            time.sleep(0.02)
        assert (report / "fig_layer_sparsity.png").exists()
    finally:
        kill_tree(p.pid)
        p.wait()
    assert not (report / "report_inputs.json").exists()
    r = bnrep("report", out=out)
    assert r.returncode == 0 and "up to date" not in r.stdout, r.stderr[-3000:]
    from bnrep.report import report_is_current

    assert report_is_current(str(out), "digits-cnn")
    for f in ("report.md", "report.html", "table1.csv", "findings.json", "fig_layer_sparsity.png"):
        assert (report / f).stat().st_size > 0, f


def test_killed_while_a_new_report_is_written_leaves_the_one_before_whole(reference, tmp_path):
    """Killed once a figure of the new report is written (staged, not in place yet): the report folder is the
    one before it, file for file, still marked complete; the rerun moves the new one into place."""
    ref, _ = reference
    out = tmp_path / "runs"
    shutil.copytree(ref, out)
    report = out / "digits-cnn" / "report"
    before = {p.name: p.read_bytes() for p in report.iterdir() if p.is_file()}
    p = subprocess.Popen([sys.executable, "-m", "bnrep", "report", "--force", "--out", str(out)], cwd=out.parent,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                         env=injected(BNREP_STOP_AFTER="report/.bnrep-staging/fig_layer_sparsity.png"))
    try:
        while not stopped(p.pid):
            assert p.poll() is None, "the report ended without staging fig_layer_sparsity.png"
            time.sleep(0.02)
        assert (report / ".bnrep-staging" / "fig_layer_sparsity.png").exists()
    finally:
        kill_tree(p.pid)
        p.wait()
    assert {p.name: p.read_bytes() for p in report.iterdir() if p.is_file()} == before
    from bnrep.report import report_is_current

    assert report_is_current(str(out), "digits-cnn")
    r = bnrep("report", "--force", out=out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (report / ".bnrep-staging").exists() and {p.name for p in report.iterdir()} == set(before)


FAULTS = '''
import os
if os.environ.get("BNREP_TEST_FAILS"):  # every Python process of the run, Ray workers included
    import bnrep.train as train

    step_epoch = train.Trainer.step_epoch

    def failing(self):
        """cnn-bn-s0's second epoch fails, the first BNREP_TEST_FAILS times (counted in files), each time
        alike, or with BNREP_TEST_ALIKE=0 each time with another message."""
        d = os.environ["BNREP_TEST_FAIL_DIR"]
        n = len(os.listdir(d))
        if self.epoch == 1 and self.seed == 0 and self.norm == "batch" and n < int(os.environ["BNREP_TEST_FAILS"]):
            open(os.path.join(d, str(n)), "w").close()
            raise RuntimeError(f"injected failure{'' if os.environ['BNREP_TEST_ALIKE'] == '1' else f' {n}'} of cnn-bn-s0")
        return step_epoch(self)

    train.Trainer.step_epoch = failing
if os.environ.get("BNREP_TEST_KEEP_PLAN"):  # the driver stops before it deletes the grid's plan (a Ctrl-C then)
    import bnrep.stages.tuning as tuning

    tuning.forget_repeated = lambda *args: None
'''


@pytest.mark.parametrize("fails, alike, retries, survives, every", [
    (1, True, 1, True, "0"), (1, True, 1, True, None), (2, False, 1, False, "0"), (3, True, 3, False, "0")])
def test_max_failures(fails, alike, retries, survives, every, tmp_path):
    """--max-failures 1: one failure of a trial is survived (it resumes from its checkpoint: with
    --checkpoint-every 0 the one after epoch 1; with the default, 60 s, a smoke trial has none yet and starts
    again), a second ends the grid with a one-line error naming the flag; the other models are trained. An
    epoch that fails twice alike (the same error) is not tried a third time, whatever --max-failures allows:
    the trial's training is seeded, so it would fail alike again."""
    from bnrep.checkpoints import load_model, saved_snapshots
    from bnrep.experiments import SMOKE, get_experiment

    hooks, counts, out = tmp_path / "hooks", tmp_path / "failures", tmp_path / "runs"
    hooks.mkdir()
    counts.mkdir()
    (hooks / "sitecustomize.py").write_text(FAULTS)
    env = {**os.environ, "PYTHONPATH": f"{hooks}:{os.environ.get('PYTHONPATH', '')}",
           "BNREP_TEST_FAILS": str(fails), "BNREP_TEST_FAIL_DIR": str(counts), "BNREP_TEST_ALIKE": str(int(alike)),
           **({"BNREP_TEST_KEEP_PLAN": "1"} if alike else {})}
    r = bnrep("final", "--smoke-test", "--paper-hparams", "--max-failures", str(retries), "--snapshots", "1",
              *(("--checkpoint-every", every) if every else ()), out=out, env=env)
    assert len(os.listdir(counts)) == min(fails, 2 if alike else fails)  # the failures happened, in Ray workers
    said = [s for s in r.stdout.splitlines() if " failed" in s]  # each, as it happens: the model and its error
    since = "its last checkpoint" if every == "0" else "the start (no checkpoint yet)"
    assert said[0].startswith(f"[final] bn-s0 failed (RuntimeError: injected failure{'' if alike else ' 0'} of "
                              f"cnn-bn-s0); restarting it from {since}, try 2 of {retries + 1} (its log: "), said
    if survives:
        assert len(said) == 1
    elif alike:  # its end, among the others' (in whichever order they end): the second try failed alike
        assert len(said) == 2 and re.match(r"\[final\] [1-4]/4 bn-s0 failed twice in epoch 2 with the same error "
                                           r"\(RuntimeError: injected failure of cnn-bn-s0\): not tried again \(its "
                                           r"training is seeded, so a try fails alike\); see ", said[1]), said
    else:
        assert len(said) == 2 and re.match(r"\[final\] [1-4]/4 bn-s0 failed 2 times \(RuntimeError: injected failure "
                                           r"1 of cnn-bn-s0\): see ", said[1]), said
    store = Store(str(out), "digits-cnn")
    if survives:
        assert r.returncode == 0, r.stderr[-3000:]
        assert sorted(store.parts("training")) == MODELS
        md = store.part_metadata("training", "cnn-bn-s0")
        assert md["resumed_from_epoch"] == ("1" if every == "0" else "0")  # its last checkpoint, or none
        # the snapshot of epoch 1, saved before the failure: its digest came back with the checkpoint (or the
        # trial trained epoch 1 again and saved it again)
        assert list(saved_snapshots(md)[1]) == [1]
        load_model(store, "cnn-bn-s0", get_experiment("digits-cnn").override(**SMOKE), epoch=1)  # verified
    else:
        err = r.stderr.strip().splitlines()
        why = ("failed twice in the same epoch with the same error (cnn-bn-s0), not tried again (their training is "
               "seeded, so a try fails alike)" if alike else "failed 2 times (cnn-bn-s0), more than --max-failures 1")
        assert r.returncode == 1 and err[-1].startswith(f"error: 1 model(s) {why}; last error: RuntimeError: "
                                                       f"injected failure{'' if alike else ' 1'} of cnn-bn-s0 (Tune "
                                                       f"logs: "), err[-1]
        assert sorted(store.parts("training")) == [m for m in MODELS if m != "cnn-bn-s0"]
        if alike:  # the model's code fixed, the same command trains it: a restored grid held it as ended (its plan
            # is deleted when the stage ends; here, as after a Ctrl-C, it was not)
            r = bnrep("final", "--smoke-test", "--paper-hparams", "--max-failures", str(retries), "--snapshots", "1",
                      "--checkpoint-every", every, out=out)
            assert r.returncode == 0, r.stderr[-3000:]
            assert "[final] 3 of 4 models already trained" in r.stdout and "resuming" not in r.stdout, r.stdout
            assert re.search(r"\[final\] cannot resume the interrupted grid in .* \(trial \w+ ended after its epoch "
                             r"failed twice alike\): training its 1 unfinished models from the start", r.stdout), r.stdout
            assert sorted(store.parts("training")) == MODELS


def measured(df, epoch, models=MODELS):
    """(model or pair, layer, row count) of a table's rows at `epoch`, of the models in `models`."""
    who = ["model_a", "model_b"] if "model_a" in df else ["model_id"]
    d = df[(df["epoch"] == epoch) & df[who].isin(models).all(axis=1)]
    return [(*k, n) for k, n in d.groupby([*who, "layer"]).size().items()]


def test_snapshots_keep_the_weights_of_their_epochs_and_compute_only_their_parts(reference, tmp_path):
    """--snapshots on a trained and analysed grid: the grid trains its models again to keep epochs 1 and 2
    (the same final weights, so their analysis stays); the analysis at epochs 0 and 1 computes only those
    parts (no k-means, no train against eval mode at 0), leaves every final row as it was; one more snapshot
    computes only its own parts, --snapshot-kmeans only the k-means sweeps; the report draws each measure
    through training; an epoch the grid did not keep is a one-line error."""
    from bnrep.checkpoints import snapshot_path
    from bnrep.experiments import SMOKE, get_experiment
    from bnrep.measures import MEASURES

    ref, _ = reference
    exp = get_experiment("digits-cnn").override(**SMOKE)
    out = tmp_path / "runs"
    copy_stages(ref, out, "config.json", "hparam", "train/models", "results")
    store, before_store = Store(str(out), "digits-cnn"), Store(str(ref), "digits-cnn")
    final = {t: store.read_table(t) for t in ANALYSIS if t != "samples"}
    r = bnrep("final", "--smoke-test", "--snapshots", "1,2", out=out)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"[final] {len(MODELS)} trained without a snapshot at epoch 1, 2: trained again" in r.stdout
    epochs = store.read_table("training").set_index("model_id")["epochs"]
    for mid in MODELS:  # training is exact: the same final weights, each asked epoch it reached kept
        md = store.part_metadata("training", mid)
        assert md["weights_sha256"] == before_store.part_metadata("training", mid)["weights_sha256"], mid
        kept = {e for e in (1, 2) if (out / "digits-cnn" / snapshot_path(mid, e)).exists()}
        assert kept == {e for e in (1, 2) if e <= epochs[mid]} and md["snapshots_asked"] == "1,2", mid
    reached = {e: [m for m in MODELS if epochs[m] >= e] for e in (0, 1, 2)}
    layers = 5  # digits-cnn: conv1-4, fc1

    def tasks(e):  # an extraction per model, a task per (model, layer) and per (pair, layer) at epoch e
        pairs = [p for p in PAIRS if set(p) <= set(reached[e])]
        return len(reached[e]) * (1 + layers) + len(pairs) * layers

    r = bnrep("analysis", "--smoke-test", "--snapshots", "0,1", out=out)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (f"{len(MODELS)} models (final and epoch 0, 1) x {layers} layers; 0 models complete, "
            f"{tasks(0) + tasks(1)} tasks to run") in r.stdout
    for t, before in final.items():
        df = store.read_table(t)
        assert not df.duplicated(list(TABLES[t].keys)).any(), t
        by = [k for k in TABLES[t].keys if k != "epoch"]
        old = df[df["epoch"] == -1].sort_values(by).reset_index(drop=True)
        pd.testing.assert_frame_equal(old, before.sort_values(by).reset_index(drop=True), obj=t)
        for e in (0, 1):  # the same rows at each epoch, but no k-means sweep (nor train against eval mode at 0)
            assert sorted(measured(df, e)) == (sorted(measured(before, -1, reached[e]))
                                               if MEASURES[t].measured_at(e, exp) else []), (t, e)
    assert {t for t in final if not MEASURES[t].measured_at(0, exp)} == {"kmeans", "train_eval"}
    assert {t for t in final if not MEASURES[t].measured_at(1, exp)} == {"kmeans"}
    sp = store.read_table("signal_propagation")
    bn0 = sp[(sp["epoch"] == 0) & (sp["norm"] == "batch")]
    # at initialisation BatchNorm (weight 1, bias 0) normalises each batch: every pre-activation has variance ~1
    assert len(bn0) == 2 * layers and bn0["input_var"].between(0.95, 1.0 + 1e-6).all(), bn0["input_var"].tolist()
    ls = store.read_table("layer_sparsity").set_index(["model_id", "layer", "epoch"])["sparsity"]
    assert (ls.xs(1, level="epoch") != ls.xs(-1, level="epoch").loc[ls.xs(1, level="epoch").index]).any()

    # the notebook API recomputes a snapshot's representations as the analysis measured them
    from sklearn.metrics import davies_bouldin_score

    study, dbi = api.open_results(str(out), "digits-cnn"), store.read_table("class_dbi")
    for mid, epoch in (("cnn-bn-s0", 0), ("cnn-bn-s0", 1), ("cnn-nobn-s1", 1)):
        X = study.representations(mid, "conv3", epoch=epoch).numpy().astype("float64")
        want = dbi[(dbi["model_id"] == mid) & (dbi["layer"] == "conv3") & (dbi["epoch"] == epoch)]["dbi"]
        assert davies_bouldin_score(X, study.labels().numpy()) == pytest.approx(want.item(), rel=1e-5), (mid, epoch)

    r = bnrep("analysis", "--smoke-test", "--snapshots", "0,1,2", out=out)
    assert f"{len(MODELS) - len(reached[2])} models complete, {tasks(2)} tasks to run" in r.stdout, r.stdout
    for t, before in final.items():
        df = store.read_table(t)
        assert not df.duplicated(list(TABLES[t].keys)).any(), t
        assert sorted(measured(df, 2)) == (sorted(measured(before, -1, reached[2]))
                                           if MEASURES[t].measured_at(2, exp) else []), t
    r = bnrep("analysis", "--smoke-test", "--snapshots", "0,1,2", out=out)
    assert f"{len(MODELS)} models complete, 0 tasks to run" in r.stdout
    # asked for, the k-means sweep at every snapshot: a forward pass and a layer task per model and epoch
    r = bnrep("analysis", "--smoke-test", "--snapshots", "0,1,2", "--snapshot-kmeans", out=out)
    n = sum(len(reached[e]) for e in (0, 1, 2))
    assert f"0 models complete, {n * (1 + layers)} tasks to run" in r.stdout, r.stdout
    km = store.read_table("kmeans")
    assert not km.duplicated(list(TABLES["kmeans"].keys)).any()
    for e in (0, 1, 2):
        assert sorted(measured(km, e)) == sorted(measured(final["kmeans"], -1, reached[e])), e
    r = bnrep("report", out=out)
    assert r.returncode == 0, r.stderr[-2000:]
    md = (out / "digits-cnn" / "report" / "report.md").read_text()
    assert "fig_initialisation.png" in md and "At initialisation (epoch 0) against the final epoch" in md
    init = json.loads((out / "digits-cnn" / "report" / "findings.json").read_text())["initialisation"]
    assert {(x["condition"], x["ref"]) for x in init} == {("batch", "none")} and len(init) >= 5, init
    assert all(x["reading"] in md and set(x["initial_layers"]) <= set(x["final_layers"]) for x in init), init
    assert "fig_layer_sparsity_epochs.png" in md and "fig_gradient_norms_epochs.png" in md and "fig_cka_epochs.png" in md
    st = bnrep("status", out=out)  # what was measured, said where a study's state is read
    assert "analysis   complete  every part current (final weights and epochs 0, 1 and 2)" in st.stdout, st.stdout
    bad = bnrep("analysis", "--smoke-test", "--snapshots", "0,3", out=out)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        f"error: cnn-bn-s0 was trained without a snapshot at epoch 3: run `bnrep final --experiment digits-cnn "
        f"--smoke-test --out {out} --snapshots 0,3` first, with the flags the grid was trained with (it trains the "
        f"models again, keeping those epochs)"), bad.stderr
