"""End to end on a real local Ray (loopback): every stage's outputs, reruns
that do no work, SIGKILL mid-training and mid-analysis, truncated files.

One uninterrupted `bnrep run --smoke-test` (module fixture) is the reference
the other runs are compared with.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch


pytestmark = pytest.mark.slow

CNN_CHANNELS = {"conv1": 16, "conv2": 32, "conv3": 64, "conv4": 128, "fc1": 100}
MODELS = ["cnn-bn-s0", "cnn-bn-s1", "cnn-nobn-s0", "cnn-nobn-s1"]  # --smoke-test: 2 seeds x BN
K_VALUES = range(2, 7)  # --smoke-test: k = 2..6
SORT = {"training": ["model_id"], "channel_sparsity": ["model_id", "layer_index", "channel"],
        "layer_sparsity": ["model_id", "layer_index"], "class_dbi": ["model_id", "layer_index"],
        "kmeans": ["model_id", "layer_index", "k"], "samples": ["purpose", "position"]}


def bnrep(*args, out, timeout=600, **popen):
    cmd = [sys.executable, "-m", "bnrep", *args, "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=out.parent, **popen)


def table(out, name):
    df = pd.read_parquet(out / "digits-cnn" / "results" / name)
    return df.sort_values(SORT[name]).reset_index(drop=True) if name in SORT else df


def snapshot(out):
    """path -> (size, mtime_ns) of every file under the experiment."""
    root = out / "digits-cnn"
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and "/tune/" not in f"/{p.relative_to(root)}"}


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
    assert (km.groupby(["model_id", "layer"])["optimal"].sum() == 1).all()
    samples = table(out, "samples")
    assert samples.groupby("purpose").size().to_dict() == {"sparsity": 128, "cluster": 160}

    for f in ("report.md", "report.html", "table1.md", "fig_layer_sparsity.png", "fig_class_dbi.png"):
        assert (exp / "report" / f).stat().st_size > 0, f
    cfg = pd.read_json(exp / "config.json", typ="series")
    assert cfg["experiment"]["max_epochs"] == 3 and cfg["train_hash"] and cfg["analysis_hash"]
    assert "report.html" in log


def test_second_run_does_no_work(reference, tmp_path):
    src, _ = reference
    out = tmp_path / "runs"
    shutil.copytree(src, out)
    before = snapshot(out)
    r = bnrep("run", "--smoke-test", out=out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[hparam] complete: nothing to do" in r.stdout
    assert "[final] 4 of 4 models already trained" in r.stdout
    assert "4 models complete, 0 tasks to run" in r.stdout
    assert "report is up to date" in r.stdout
    after = snapshot(out)
    changed = {k for k in before if before[k] != after.get(k)} | (set(after) - set(before))
    assert changed <= {"config.json"}, changed


# ==== interruption ====
def run_and_kill(out, when, *args, timeout=300):
    """Start `bnrep run`, SIGKILL its whole process group once when(out) holds."""
    p = subprocess.Popen([sys.executable, "-m", "bnrep", "run", "--smoke-test", *args, "--out", str(out)],
                         cwd=out.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    t0 = time.time()
    try:
        while not when(out):
            assert p.poll() is None, "the run ended before it could be interrupted"
            assert time.time() - t0 < timeout
            time.sleep(0.02)
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # the driver and the local Ray it started
        p.wait()


def parts(out, name):
    d = out / "digits-cnn" / "results" / name
    return sorted(p.name for p in d.glob("*.parquet") if not p.name.startswith(".")) if d.exists() else []


def assert_tables_equal(out, ref, names):
    for name in names:
        got, want = table(out, name), table(ref, name)
        assert not got.duplicated(SORT[name]).any(), name
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-6, obj=name)


def test_killed_during_training_resumes_to_the_same_results(reference, tmp_path):
    ref, _ = reference
    out = tmp_path / "runs"
    copy_stages(ref, out, "config.json", "hparam", "results/hparam_trials")  # same best hparams as ref
    run_and_kill(out, lambda o: len(parts(o, "training")) >= 1)
    n_done = len(parts(out, "training"))
    assert n_done < len(MODELS), "training finished before the kill"
    r = bnrep("run", "--smoke-test", out=out)
    assert r.returncode == 0, r.stderr[-3000:]
    # Ray workers can outlive the killed driver by a moment and finish one more model
    already = int(re.search(r"\[final\] (\d+) of 4 models already trained", r.stdout).group(1))
    assert n_done <= already < len(MODELS)  # the rerun trained what was missing, no more
    assert "[final] resuming the interrupted grid" in r.stdout  # Tuner.restore
    assert_tables_equal(out, ref, ["training", "layer_sparsity", "channel_sparsity", "class_dbi", "kmeans"])


def test_killed_during_analysis_resumes_to_the_same_results(reference, tmp_path):
    ref, _ = reference
    out = tmp_path / "runs"
    copy_stages(ref, out, "config.json", "hparam", "train/models", "results/hparam_trials",
                "results/training", "results/training_history")
    run_and_kill(out, lambda o: len(parts(o, "kmeans")) >= 1)
    done = set(parts(out, "kmeans")) & set(parts(out, "class_dbi"))
    assert len(done) < len(MODELS) * len(CNN_CHANNELS), "analysis finished before the kill"
    missing = {m: [l for l in CNN_CHANNELS if f"{m}-{l}.parquet" not in done] for m in MODELS}
    sparse = set(parts(out, "channel_sparsity")) & set(parts(out, "layer_sparsity"))
    todo = [m for m in MODELS if missing[m] or f"{m}.parquet" not in sparse]
    r = bnrep("run", "--smoke-test", out=out)
    assert r.returncode == 0, r.stderr[-3000:]
    n_tasks = sum(1 + len(missing[m]) for m in todo)  # only the unfinished work is redone
    assert f"{len(MODELS) - len(todo)} models complete, {n_tasks} tasks to run" in r.stdout
    assert_tables_equal(out, ref, ["samples", "layer_sparsity", "channel_sparsity", "class_dbi", "kmeans"])


def test_truncated_part_and_checkpoint_are_recomputed(reference, tmp_path):
    ref, _ = reference
    out = tmp_path / "runs"
    shutil.copytree(ref, out)
    exp = out / "digits-cnn"
    for f in (exp / "results" / "kmeans" / "cnn-nobn-s1-conv3.parquet", exp / "train/models/cnn-bn-s0/model.pt"):
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])  # killed mid-write (without the atomic rename)
    r = bnrep("run", "--smoke-test", out=out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[final] 3 of 4 models already trained" in r.stdout
    torch.load(exp / "train/models/cnn-bn-s0/model.pt", weights_only=True)  # whole again
    assert_tables_equal(out, ref, ["training", "layer_sparsity", "class_dbi", "kmeans"])


def test_killed_during_the_sweep_resumes_through_tuner_restore(tmp_path):
    out = tmp_path / "runs"
    tune_dir = out / "digits-cnn" / "hparam" / "tune" / "bn"
    run_and_kill(out, lambda o: any(tune_dir.glob("*/checkpoint_*")))
    assert not (out / "digits-cnn" / "hparam" / "best_hparams.json").exists(), "the sweep ended before the kill"
    r = bnrep("run", "--smoke-test", out=out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[hparam] bn: resuming the interrupted search" in r.stdout
    trials = table(out, "hparam_trials")
    assert trials.groupby("bn").size().to_dict() == {False: 2, True: 2} and trials["trial_id"].is_unique
    assert (trials["error"] == "").all()
    assert len(table(out, "training")) == len(MODELS)
