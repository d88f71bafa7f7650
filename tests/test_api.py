"""The notebook API: read-only access to a results directory, checked against
the Parquet files themselves and against scikit-learn on recomputed representations."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import davies_bouldin_score

import bnrep
from bnrep.checkpoints import ModelFileError, sha256
from bnrep.store import Store
from tests.conftest import tree


def test_configuration_and_tables(old_results):
    before = tree(old_results)
    study = bnrep.open_results(str(old_results), "synthetic-cnn")
    assert study.experiment.name == "synthetic-cnn" and study.experiment.norms == ("batch", "none")
    assert study.hashes == {"train_hash": "e5f7f537dd71", "analysis_hash": "bfc3ee710a61"}
    assert set(study.tables) >= {"training", "kmeans", "samples"}
    for name in ("training", "kmeans"):
        direct = pd.read_parquet(old_results / "synthetic-cnn" / "results" / name)
        got = getattr(study, name)
        pd.testing.assert_frame_equal(got.drop(columns=["norm", "condition", "epoch"], errors="ignore")
                                      .sort_values(list(direct.columns[:3]))
                                      .reset_index(drop=True),
                                      direct.sort_values(list(direct.columns[:3])).reset_index(drop=True))
    assert (study.kmeans["epoch"] == -1).all()  # written before snapshots: the final models' rows
    # what a notebook cell that returns the study shows (it showed <bnrep.api.Study object at 0x...>)
    n = len(pd.read_parquet(old_results / "synthetic-cnn" / "results" / "training"))
    assert repr(study) == (f"<bnrep.Study synthetic-cnn in {old_results}: cnn on synthetic, conditions batch, none; "
                           f"{n} models; tables {', '.join(study.tables)}>")
    with pytest.raises(KeyError, match="unknown table"):
        study.table("nope")
    assert tree(old_results) == before  # read-only


def test_figures_are_paths_a_notebook_opens_of_a_study_named_by_path_or_file_uri(old_results):
    """study.figures of a study opened as file:///...: they were file:// URIs, which neither os.path nor
    IPython.display.Image opens."""
    report = old_results / "synthetic-cnn" / "report"
    report.mkdir()
    for name in ("fig_b.png", "fig_a.png", "table1.md"):
        (report / name).write_bytes(b"png")
    want = [str(report / "fig_a.png"), str(report / "fig_b.png")]
    for out in (str(old_results), f"file://{old_results}"):
        assert bnrep.open_results(out, "synthetic-cnn").figures == want, out


def test_model_and_representations_reproduce_the_stored_dbi(old_results):
    before = tree(old_results)
    study = bnrep.open_results(str(old_results), "synthetic-cnn")
    dbi = study.class_dbi.set_index(["model_id", "layer"])["dbi"]
    for mid, layer in [("cnn-bn-s0", "conv2"), ("cnn-nobn-s1", "fc1")]:
        X = study.representations(mid, layer)
        assert X.shape == (300, {"conv2": 32, "fc1": 100}[layer])  # synthetic-cnn clusters 300 samples
        np.testing.assert_allclose(torch.linalg.vector_norm(X, dim=1)[X.abs().sum(1) > 0], 1, rtol=1e-5)
        ref = davies_bouldin_score(X.numpy().astype(np.float64), study.labels().numpy())  # scikit-learn
        assert ref == pytest.approx(dbi[(mid, layer)], rel=1e-5)
    assert len(study.labels("sparsity")) == 200  # synthetic-cnn's sparsity samples
    # a layer by its number, as the tables' layer_index gives it (1-based; it was a KeyError naming names)
    index = study.class_dbi.set_index("layer")["layer_index"].to_dict()
    assert torch.equal(study.representations("cnn-bn-s0", index["conv2"]), study.representations("cnn-bn-s0", "conv2"))
    number = study.class_dbi.query("layer == 'conv2'")["layer_index"].iloc[0]  # numpy's int, as a table gives it
    assert torch.equal(study.representations("cnn-bn-s0", number), study.representations("cnn-bn-s0", "conv2"))
    with pytest.raises(KeyError, match=r"cnn-bn-s0 has no layer 9 \(layers: 1 conv1, 2 conv2, "):
        study.representations("cnn-bn-s0", 9)
    for call in (lambda: study.labels("foo"), lambda: study.representations("cnn-bn-s0", "conv2", purpose="foo")):
        with pytest.raises(ValueError, match=r"^purpose 'foo': the saved samples are 'sparsity' or 'cluster'$"):
            call()
    assert tree(old_results) == before


def test_a_model_with_a_flipped_byte_is_refused(old_results):
    """As the grid records it since 0.2.0: model.pt's sha256 in its training part's metadata."""
    store = Store(str(old_results), "synthetic-cnn")
    row = pd.read_parquet(old_results / "synthetic-cnn/results/training/cnn-bn-s1.parquet")
    path = old_results / "synthetic-cnn/train/models/cnn-bn-s1/model.pt"
    store.write_part("training", "cnn-bn-s1", row, "e5f7f537dd71", model_sha256=sha256(path.read_bytes()))
    bnrep.open_results(str(old_results), "synthetic-cnn").model("cnn-bn-s1")  # intact: loads
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    study = bnrep.open_results(str(old_results), "synthetic-cnn")
    with pytest.raises(ModelFileError, match="cnn-bn-s1/model.pt"):
        study.model("cnn-bn-s1")


def test_a_wrong_name_id_or_argument_says_what_is_there(old_results, tmp_path):
    from bnrep.config import UsageError

    before = tree(old_results)
    cases = [
        (lambda: bnrep.open_results(str(old_results), "synthetic-cnx"), FileNotFoundError,
         r"no results of 'synthetic-cnx' under .*; it holds synthetic-cnn; did you mean 'synthetic-cnn'\?$"),
        (lambda: bnrep.open_results(str(old_results / "synthetic-cnn"), "synthetic-cnn"), FileNotFoundError,
         r"is itself a study's folder; open it as open_results\('.*runs', 'synthetic-cnn'\)$"),
        (lambda: bnrep.open_results(str(tmp_path / "nowhere"), "synthetic-cnn"), FileNotFoundError,
         r": there is no folder .*nowhere$"),
        (lambda: bnrep.open_results(str(old_results / "synthetic-cnn" / "config.json"), "synthetic-cnn"),
         FileNotFoundError, r": .*config\.json is a file, not a folder$"),  # (it said "there is no folder")
        (lambda: bnrep.open_results(str(old_results / "synthetic-cnn" / "results"), ".."), ValueError,
         r"^experiment '\.\.': a study's name is letters"),
    ]
    study = bnrep.open_results(str(old_results), "synthetic-cnn")
    cases += [
        (lambda: study.kmean, AttributeError, r"^Study has no attribute 'kmean' \(its tables: hparam_trials, "),
        (lambda: study.model("cnn-bn-s9"), KeyError,
         r"no model 'cnn-bn-s9' in synthetic-cnn \(models: cnn-bn-s0, cnn-bn-s1, cnn-nobn-s0, cnn-nobn-s1\)"),
        (lambda: study.representations("cnn-bn-s0", "conv2", epoch=-5), ValueError,
         r"^epoch=-5: a snapshot epoch >= 0 \(0: the initialisation\), or leave it out"),
        (lambda: study.model("cnn-bn-s0", epoch=True), ValueError, r"^epoch=True: a snapshot epoch >= 0"),
        (lambda: study.model("cnn-bn-s0", device="gpu"), ValueError,  # (the model file was blamed)
         r"^device='gpu': not a device torch knows \(cpu, cuda, cuda:1, ...\)$"),
        (lambda: study.model("cnn-bn-s0", device="meta"), ValueError, r"^device='meta': a meta tensor holds no "),
        (lambda: study.model("cnn-bn-s0", epoch=2), ModelFileError,  # (did not say how to keep one)
         r"cnn-bn-s0/epoch-2.pt was not saved by the grid \(the grid kept no snapshot: `bnrep final --experiment "
         r"synthetic-cnn --out .*runs --snapshots 2` trains the models again, keeping it\)$"),
        (lambda: study.model("cnn-bn-s0", epoch=10**6), ModelFileError,  # (offered --snapshots past max_epochs)
         r"cnn-bn-s0/epoch-1000000.pt was not saved by the grid \(the grid trains at most \d+ epochs\)$"),
        (lambda: study.nc1, LookupError,  # results from before nc1: a frame without columns failed on its first
         r"results/nc1 has no rows yet: the analysis stage writes them \(`bnrep analysis --experiment "
         r"synthetic-cnn --out .*runs`; study.tables lists the tables written so far\)$"),
        (lambda: bnrep.open_results(None, "synthetic-cnn"), TypeError,  # (os.stat's TypeError)
         r"^out=None: the folder \(or URI\) results are kept under, such as 'runs'$"),
        (lambda: bnrep.open_results("", "synthetic-cnn"), UsageError,  # (was: the current folder)
         r"^out='' is empty: give the folder \(or URI\) to keep results under, such as ./runs$"),
    ]
    cases.append((study.findings, FileNotFoundError, r"synthetic-cnn/report has no findings.json yet: run "
                  r"`bnrep report --experiment synthetic-cnn --out .*runs`$"))
    cases.append((lambda: study.figures, FileNotFoundError, r"synthetic-cnn/report has no figures yet: run "
                  r"`bnrep report --experiment synthetic-cnn --out .*runs`$"))  # (was [], and [0] an IndexError)
    if not torch.cuda.is_available():
        cases.append((lambda: study.model("cnn-bn-s0", device="cuda"), ValueError,
                      r"^device='cuda': no GPU is available to torch here$"))
    for call, kind, message in cases:
        with pytest.raises(kind, match=message):
            call()
    assert next(study.model("cnn-bn-s0", device="cpu:0").parameters()).device.type == "cpu"  # torch.load refused it
    assert tree(old_results) == before


def test_a_notebook_reading_before_the_analysis_wrote_its_samples_is_told_so(old_results):
    import shutil

    shutil.rmtree(old_results / "synthetic-cnn" / "results" / "samples")  # the analysis has not run yet
    study = bnrep.open_results(old_results, "synthetic-cnn")  # (a Path works too)
    for call in (study.labels, lambda: study.representations("cnn-bn-s0", "conv2")):
        with pytest.raises(LookupError, match=r"results/samples has no rows yet: the analysis stage writes them"):
            call()  # (was pandas' KeyError: 'purpose', six frames deep)
    assert "samples" not in study.tables and "training" in study.tables


def test_the_package_lists_what_it_offers():
    import pydoc

    assert {"open_results", "Study"} <= set(dir(bnrep))  # tab completion (they are imported on first use)
    text = pydoc.render_doc(bnrep, renderer=pydoc.plaintext)  # help(bnrep)
    assert "open_results(out" in text and "class Study" in text


def test_the_sweep_table_of_a_grid_trained_with_the_presets_hyperparameters_says_no_sweep_ran(old_results):
    """--paper-hparams skips the sweep: study.hparam_trials told the researcher to run `bnrep hparam`."""
    from bnrep.store import Store

    store = Store(str(old_results), "synthetic-cnn")
    assert not (old_results / "synthetic-cnn" / "results" / "hparam_trials").exists()  # (0.1.0 kept no trials)
    exp = bnrep.open_results(old_results, "synthetic-cnn").experiment

    def trained_with(hparams):
        for mid, row in store.read_table("training").groupby("model_id"):
            store.write_part("training", mid, row.assign(**hparams(row["condition"].iloc[0])),
                             store.part_metadata("training", mid)["config_hash"])
        return bnrep.open_results(old_results, "synthetic-cnn")

    with pytest.raises(LookupError, match=r"results/hparam_trials has no rows yet: the hparam stage writes them"):
        trained_with(lambda c: {"lr": 0.0123, "momentum": 0.9}).hparam_trials  # a sweep's best: run the sweep
    with pytest.raises(LookupError, match=r"^synthetic-cnn's grid trained with the preset's hyperparameters "
                                          r"\(--paper-hparams\): no sweep ran, so there is no hparam_trials table"):
        trained_with(lambda c: exp.for_condition(c).paper_hparams(c)).hparam_trials


def test_a_study_runs_from_python_and_its_errors_are_exceptions(tmp_path, capsys):
    """bnrep.run: `bnrep run` from a notebook. It was there only as bnrep.cli.main(["run", ...]), whose refusal
    of a flag was SystemExit(2) and which left its SIGTERM handler in the notebook's process."""
    import signal
    import warnings

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    filters = list(warnings.filters)
    out = tmp_path / "runs"
    with pytest.raises(bnrep.RunFailed, match=r"^--seeds must be > 0, got 0$") as e:
        bnrep.run(out=out, smoke_test=True, seeds=0)
    assert e.value.status == 2 and not out.exists()
    with pytest.raises(bnrep.RunFailed, match=r"^bnrep run: unrecognized arguments: --seed 3; did you mean --seeds\?"):
        bnrep.run(out=out, seed=3)
    assert "error: --seeds must be > 0, got 0" in capsys.readouterr().err  # (said as the command says it, too)
    study = bnrep.run(out=out, smoke_test=True, paper_hparams=True, norms=["batch", "none"], seeds=1)
    assert isinstance(study, bnrep.Study) and sorted(study.training["model_id"]) == ["cnn-bn-s0", "cnn-nobn-s0"]
    assert study.findings()["findings"] and len(study.figures) > 5
    trained = tree(out / "digits-cnn" / "results" / "training")
    again = bnrep.run(out=str(out), smoke_test=True, paper_hparams=True, norms="batch,none", seeds=1)  # done: no work
    assert tree(out / "digits-cnn" / "results" / "training") == trained
    pd.testing.assert_frame_equal(again.kmeans, study.kmeans)
    assert {s: signal.getsignal(s) for s in before} == before and warnings.filters == filters
    # from another thread (no signal handlers there): its outcome, not "signal only works in main thread"
    import threading

    raised = []
    t = threading.Thread(target=lambda: raised.append(pytest.raises(bnrep.RunFailed, bnrep.run, out=out, seed=3)))
    t.start()
    t.join()
    assert "unrecognized arguments: --seed 3" in str(raised[0].value)


def test_a_study_whose_config_cannot_be_read_still_has_a_repr(tmp_path):
    """A notebook shows the repr of whatever a cell returns: an unreadable config.json is said there, not
    raised (the error comes when the study is used)."""
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "config.json").write_text("{not json")
    study = bnrep.open_results(str(tmp_path), "s")
    assert repr(study).startswith(f"<bnrep.Study s in {tmp_path} (") and repr(study).endswith(")>")
    with pytest.raises(Exception):
        study.experiment
