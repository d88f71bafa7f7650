"""Results written before the norm axis (bnrep 0.1.0, commit f0f5254: no
`norm` column, `eps` a number, no model sha256) still report, show their
status and resume: a rerun finds every model and every part complete.

The fixture is `bnrep run --experiment synthetic-cnn --paper-hparams` as
that code wrote it (config.json, results/, train/models/).
"""

import json

import pandas as pd
import pytest

from bnrep import flags
from bnrep.lock import writer_lock
from bnrep.measures import MEASURES
from bnrep.status import stage_status
from bnrep.store import Store
from tests.conftest import tree


def test_old_parts_read_with_a_norm_column(old_results):
    store = Store(str(old_results), "synthetic-cnn")
    assert "norm" not in pd.read_parquet(old_results / "synthetic-cnn/results/training").columns  # truly old
    for table in ("training", "layer_sparsity", "kmeans"):
        df = store.read_table(table)
        assert (df["norm"] == df["bn"].map({True: "batch", False: "none"})).all(), table


@pytest.mark.slow
def test_old_results_resume_computing_only_the_new_measures(old_results, capsys):
    """Same hashes as then: no model retrained, no part recomputed; the rerun adds
    only the measures that came later (NC1, effective rank, CKA, signal propagation, gradient norms, train
    against eval mode)."""
    before = tree(old_results)
    args = ["--experiment", "synthetic-cnn", "--out", str(old_results)]
    assert flags.run_stage("final", [*args, "--paper-hparams"]) == 0
    assert "[final] 4 of 4 models already trained" in capsys.readouterr().out
    assert tree(old_results) == before
    assert flags.run_stage("analysis", args) == 0
    printed = capsys.readouterr().out
    n_layers, n_pairs = 5, 4  # 2 seeds x (batch, none): 2 norm pairs at one seed + 2 seed pairs in one norm
    assert f"0 models complete, {4 + 4 * n_layers + n_pairs * n_layers} tasks to run" in printed
    after = {k: v for k, v in tree(old_results).items() if "/.lock/" not in k}  # the writer lock's own file
    assert {k: v for k, v in after.items() if k in before} == {**before, "synthetic-cnn/config.json":
                                                               after["synthetic-cnn/config.json"]}
    added = {k.split("/")[2] for k in set(after) - set(before)}
    held = {k.split("/")[2] for k in before if k.startswith("synthetic-cnn/results/")}
    assert added == set(MEASURES) - held and {"nc1", "cka", "train_eval"} <= added  # every measure after 0.1
    assert flags.run_stage("analysis", args) == 0  # and now nothing is left
    assert "4 models complete, 0 tasks to run" in capsys.readouterr().out


def test_status_partial_in_every_stage(old_results):
    """One model's row gone, one norm searched, one figure newer than the report: partial, counted."""
    store = Store(str(old_results), "synthetic-cnn")
    (old_results / "synthetic-cnn/results/training" / store.part_name("training", "cnn-nobn-s1").split("/")[-1]).unlink()
    store.write_json("hparam/best_hparams.json", {"bn": {"lr": 0.01, "momentum": 0.9}})
    store.write_part("hparam_trials", "bn", pd.DataFrame([{"trial_id": "t0", "norm": "batch"}]))
    store.write_bytes("report/report.md", b"an old report")  # not made from these results
    rows = {s: (state, detail) for s, state, detail in stage_status(str(old_results), "synthetic-cnn")}
    assert rows["hparam"] == ("partial", "1/2 normalisations searched")
    store.write_json("hparam/tune/plan.json", [{"norm": "batch", "lr": 0.01}, {"norm": "none", "lr": 0.01}])
    assert stage_status(str(old_results), "synthetic-cnn")[0][2] == "1/2 normalisations searched"  # no Tune state
    store.write_bytes("hparam/tune/sweep/tuner.pkl", b"Tune's state of the interrupted sweep")
    assert stage_status(str(old_results), "synthetic-cnn")[0] == (
        "hparam", "partial", "1/2 normalisations searched; unfinished sweep to resume: nobn")
    with writer_lock(store, "hparam"):  # a run holds the lock: that sweep is under way, not interrupted
        assert stage_status(str(old_results), "synthetic-cnn")[0] == (
            "hparam", "partial", "1/2 normalisations searched; sweep running: nobn")
    assert rows["final"] == ("partial", "3/4 models trained")
    # 3 extractions, NC1 + rank on 3 x 5 layers, CKA of 2 pairs (bn-s0 with nobn-s0 and with bn-s1) x 5 layers
    assert rows["analysis"] == ("partial", f"{3 + 3 * 5 + 2 * 5} tasks left (of the trained models; 1 to train first)")
    assert rows["report"][0] == "partial" and rows["report"][1].endswith("(older than the results)")


def test_a_sweep_is_skipped_only_when_every_model_trained_with_the_preset_s_hyperparameters(old_results):
    store = Store(str(old_results), "synthetic-cnn")
    row = store.read_table("training").query("model_id == 'cnn-nobn-s1'")
    store.write_part("training", "cnn-nobn-s1", row.assign(lr=row["lr"] * 2))  # not the preset's lr
    assert stage_status(str(old_results), "synthetic-cnn")[0] == ("hparam", "missing", "0/2 normalisations searched")


def test_old_results_status_and_report(old_results, capsys):
    rows = {s: (state, detail) for s, state, detail in stage_status(str(old_results), "synthetic-cnn")}
    assert rows["hparam"] == ("skipped", "the grid trained with the preset's hyperparameters (--paper-hparams)")
    assert rows["final"] == ("complete", "4/4 models trained")
    assert rows["analysis"] == ("partial", f"{4 + 4 * 5 + 4 * 5} tasks left")  # the measures added since
    assert flags.run_stage("report", ["--experiment", "synthetic-cnn", "--out", str(old_results)]) == 0
    md = (old_results / "synthetic-cnn/report/report.md").read_text()
    assert "BatchNorm" in md and "| BN |" in md and "| NBN |" in md
    # the measures added since are not there: the report says the analysis is not finished, at the top
    said = f"synthetic-cnn: the analysis stage is not finished ({4 + 4 * 5 + 4 * 5} tasks left): this report covers"
    assert said in md.split("## Settings")[0] and said in capsys.readouterr().out


def test_more_thresholds_are_recorded_once_their_work_lands(old_results, monkeypatch):
    """`--eps 0,0.1` only adds to the results: an analysis interrupted before its work landed leaves
    config.json as it was, so the earlier command (the default eps) still runs instead of being refused
    as another configuration."""
    from bnrep.stages import analysis

    args = ["--experiment", "synthetic-cnn", "--out", str(old_results)]
    config = old_results / "synthetic-cnn" / "config.json"
    before = config.read_bytes()

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(analysis, "launch", interrupted)
    assert flags.run_stage("analysis", [*args, "--eps", "0,0.1"]) == 130
    assert config.read_bytes() == before
    monkeypatch.setattr(analysis, "launch", lambda *a, **kw: None)  # (the work itself is not the point)
    assert flags.run_stage("analysis", args) == 0
    assert flags.run_stage("analysis", [*args, "--eps", "0,0.1"]) == 0  # landed: recorded
    assert json.loads(config.read_text())["experiment"]["eps"] == [0.0, 0.1]
