"""Models a researcher trained elsewhere: `bnrep import` checks torchvision-format checkpoints (saved by
plain torch code, with DataParallel's and torch.compile's prefixes), evaluates them, and records them so
that the analysis, the report, status and open_results work unchanged; every bad entry is one line that
leaves the results directory as it was."""

import argparse
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torchvision

from bnrep import cli, flags
from bnrep.data import load_data
from bnrep.train import accuracy
from tests.conftest import tree
from tests.test_datasets import write_folder

SPEC = "torchvision:resnet18"


def resnet(seed: int, norm_layer=None) -> torch.nn.Module:
    """A torchvision resnet18 for 3 classes, as a researcher's own code builds it (not bnrep)."""
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=3, **({"norm_layer": norm_layer} if norm_layer else {}))


def no_norm(width: int) -> torch.nn.Module:
    return torch.nn.Identity()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """An image folder (3 classes, 16x16 RGB), three checkpoints written by plain torch code in three
    formats, and models.csv naming them: (folder, models.csv, {model_id: the model as saved})."""
    d = tmp_path_factory.mktemp("import")
    root = write_folder(d / "leaves", splits=(("train", 20), ("test", 8)), size=(16, 16))
    models = {"bn-s0": resnet(0), "bn-s1": resnet(1), "none-s0": resnet(2, no_norm)}
    (d / "ckpt").mkdir()
    torch.save(models["bn-s0"].state_dict(), d / "ckpt" / "plain.pt")  # a bare state_dict
    torch.save({"epoch": 90, "model_state_dict": torch.nn.DataParallel(models["bn-s1"]).state_dict()},
               d / "ckpt" / "parallel.pt")  # a training checkpoint; keys "module.conv1.weight", ...
    torch.save({"state_dict": torch.compile(models["none-s0"]).state_dict()},  # keys "_orig_mod.conv1.weight"
               d / "ckpt" / "compiled.pt")
    (d / "models.csv").write_text("model_id,model,norm,seed,weights,lab_run\n"
                                  f"bn-s0,{SPEC},batch,0,ckpt/plain.pt,run-a\n"
                                  f"bn-s1,{SPEC},batch,1,ckpt/parallel.pt,run-b\n"
                                  f"none-s0,{SPEC},none,0,{d / 'ckpt' / 'compiled.pt'},run-c\n")
    return root, d / "models.csv", models


def bnrep(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnrep", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow
def test_imported_checkpoints_through_analysis_and_report(checkpoints, tmp_path):
    """Import (no training stage), then `bnrep run` measures and reports them: the accuracies are those of
    the researcher's own models on the same splits, every model has its analysis rows, the report says
    they were imported and what is not known, status and open_results find them; a second import
    changes nothing; the training stages refuse the experiment."""
    from bnrep.api import open_results
    from bnrep.config import load_experiment
    from bnrep.store import Store

    root, csv, models = checkpoints
    out = tmp_path / "runs"
    args = ("--experiment", "leaves", "--models", csv, "--out", out)
    r = bnrep("import", *args, "--dataset", f"imagefolder:{root}", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "[import] 3 models; 0 already imported, 3 to evaluate" in r.stdout
    store = Store(str(out), "leaves")
    exp = load_experiment(store)
    data = load_data(exp)
    training = store.read_table("training").set_index("model_id").sort_index()
    assert list(training.index) == ["bn-s0", "bn-s1", "none-s0"] and training["imported"].all()
    assert list(training["lab_run"]) == ["run-a", "run-b", "run-c"] and training["lr"].isna().all()
    for mid, model in models.items():  # the reference: the researcher's model itself, on bnrep's splits
        for split in ("train", "val", "test"):
            want = accuracy(model, getattr(data, split), torch.device("cpu"))
            assert training.loc[mid, f"{split}_acc"] == pytest.approx(want, abs=1e-12), (mid, split)

    before = tree(out)
    again = bnrep("import", *args, cwd=tmp_path)  # found by name now; nothing to do
    assert again.returncode == 0 and "3 already imported, 0 to evaluate" in again.stdout, again.stderr
    assert tree(out) == before
    refused = bnrep("final", "--experiment", "leaves", "--out", out, cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr == (
        f"error: {out}/leaves holds imported models (bnrep import): there is no grid to train; measure them "
        f"with `bnrep analysis --experiment leaves --out {out}`, or train in another experiment\n")

    run = bnrep("run", "--experiment", "leaves", "--out", out, "--probes", "layer4*", "--samples-sparsity", "40",
                "--samples-cluster", "40", "--k-max", "4", "--n-init", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "leaves: imported models (bnrep import); no sweep, no training" in run.stdout
    assert "==== stage 1/2: analysis" in run.stdout and "hparam" not in run.stdout.split("stage 1/2")[1][:40]
    for table in ("layer_sparsity", "class_dbi", "kmeans"):
        assert set(store.read_table(table)["model_id"]) == set(models), table
    report = (out / "leaves" / "report" / "report.md").read_text()
    assert "Imported (bnrep import; trained elsewhere, evaluated here on the same splits): 2 BN models, " \
           "1 NBN model." in report
    assert "| imported (BN) | 2 models, seeds 0, 1, weights plain.pt, parallel.pt |" in report
    assert "stopping rule and learning-rate sweep not known for imported models (3 of 3 imported)" in report
    assert "models missed their stopping rule" not in report and "bnrep hparam" not in report
    status = bnrep("status", "--experiment", "leaves", "--out", out, cwd=tmp_path).stdout
    assert "import     complete  3/3 imported models recorded" in status
    assert "analysis   complete  every part current" in status
    models_before, training_before = tree(out / "leaves" / "train"), store.read_table("training")
    again = bnrep("run", "--experiment", "leaves", "--out", out, "--probes", "layer4*", "--samples-sparsity", "40",
                  "--samples-cluster", "40", "--k-max", "3", "--n-init", "1", "--fresh", cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]  # --fresh: the analysis anew
    assert tree(out / "leaves" / "train") == models_before  # the imported models stay
    pd.testing.assert_frame_equal(store.read_table("training"), training_before)
    assert store.read_table("kmeans")["k"].max() == 3
    study = open_results(str(out), "leaves")
    assert sorted(study.training["model_id"]) == sorted(models) and study.training["imported"].all()
    with torch.no_grad():  # a notebook gets the researcher's model back
        x = study.data.test.X[:4]
        torch.testing.assert_close(study.model("bn-s1").eval()(x), models["bn-s1"].eval()(x))


def test_the_imported_note_says_their_validation_images_may_be_training_images():
    """Without a val/ folder the validation split is held out of train/, on which a model trained elsewhere may
    have trained: the README said so, Table 1's note did not."""
    from bnrep.table1 import imported_note

    t = pd.DataFrame(dict(condition=["batch", "batch", "none"], imported=[True, True, True]))
    assert imported_note(t) == (
        "Imported (bnrep import; trained elsewhere, evaluated here on the same splits): 2 BN models, 1 NBN model. "
        "Their training history, stopping rule and sweep are not known. Their validation split is bnrep's: unless "
        "the data has one of its own (an image folder's val/), a seeded hold-out of the training split, which they "
        "may have trained on.")
    assert imported_note(t.assign(imported=False)) == ""


def test_imported_weights_load_back_equal(checkpoints, tmp_path, capsys):
    """Each imported model.pt holds exactly the researcher's tensors (prefixes removed; a no-norm model
    gains zero biases where the norms stood), loads back through the analysis' own loader
    (checkpoints.load_model, sha256 verified) and computes the researcher's model's logits."""
    from bnrep.checkpoints import load_model
    from bnrep.config import load_experiment
    from bnrep.store import Store

    root, csv, models = checkpoints
    out = tmp_path / "runs"
    assert cli.main(["import", "--experiment", "leaves", "--models", str(csv), "--out", str(out),
                     "--dataset", f"imagefolder:{root}"]) == 0, capsys.readouterr().err
    store = Store(str(out), "leaves")
    exp = load_experiment(store)
    assert exp.model == SPEC and exp.norms == ("batch", "none") and exp.dataset == f"imagefolder:{root}"
    x = load_data(exp).test.X[:8]
    for mid, model in models.items():
        loaded = load_model(store, mid, exp).eval()
        got, want = loaded.state_dict(), model.state_dict()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
        extra = set(got) - set(want)  # none: the zero bias bnrep's `none` keeps where a norm stood
        assert all(k.endswith(".bias") and not got[k].any() for k in extra) and bool(extra) == (mid == "none-s0")
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model.eval()(x))  # the researcher's model, the same function
        with pytest.raises(ValueError, match=f"{mid} was imported .bnrep import.: its initialisation is not known"):
            load_model(store, mid, exp, epoch=0)  # (bnrep's own draw under the seed would be made up)


REFUSALS = {  # name -> (models.csv body, or a callable writing weights first; the one line)
    "does not fit the spec": (
        "bad,{spec},batch,0,ten.pt",
        "weights {d}/ten.pt do not fit torchvision:resnet18 (batch, 3 channels, 3 classes): fc.weight has shape "
        "(10, 512) in the file, (3, 512) in the model"),
    "norm the file lacks": (
        "bad,{spec},batch,0,none.pt",
        "weights {d}/none.pt do not fit torchvision:resnet18 (batch, 3 channels, 3 classes): bn1.weight is "
        "missing from the file; they fit norm none"),
    "a BatchNorm model given as none": (  # its norm named from the norms its tensors fit
        "bad,{spec},none,0,ok.pt",
        "weights {d}/ok.pt do not fit torchvision:resnet18 (none, 3 channels, 3 classes): the file's bn1.weight is "
        "not in the model (and 79 more); they fit norm batch or as-built"),
    "missing file": ("bad,{spec},batch,0,absent.pt", "weights {d}/absent.pt: No such file or directory"),
    "not a checkpoint": (
        "bad,{spec},batch,0,notes.pt",
        "weights {d}/notes.pt is not a PyTorch checkpoint (torch.load: KeyError; truncated, or another format)"),
    "truncated": (
        "bad,{spec},batch,0,truncated.pt",
        "weights {d}/truncated.pt is not a PyTorch checkpoint (torch.load: RuntimeError; truncated, or another "
        "format)"),
    "text torch cannot unpickle": (  # (torch says "Weights only load failed" of it too)
        "bad,{spec},batch,0,text.pt",
        "weights {d}/text.pt is not a PyTorch checkpoint (torch.load: UnpicklingError; truncated, or another format)"),
    "a whole pickled model": (
        "bad,{spec},batch,0,whole.pt",
        "weights {d}/whole.pt holds Python objects besides tensors (torchvision.models.resnet.ResNet; a whole model "
        "saved with torch.save(model), or a checkpoint with its arguments or metrics): save model.state_dict(), or "
        "a dict of tensors, instead; bnrep loads weights only (torch.load(weights_only=True))"),
    "a checkpoint with its arguments": (
        "bad,{spec},batch,0,with_args.pt",
        "weights {d}/with_args.pt holds Python objects besides tensors (argparse.Namespace; a whole model saved with "
        "torch.save(model), or a checkpoint with its arguments or metrics): save model.state_dict(), or a dict of "
        "tensors, instead; bnrep loads weights only (torch.load(weights_only=True))"),
    "no state_dict": (
        "bad,{spec},batch,0,epoch.pt",
        "weights {d}/epoch.pt holds no state_dict (a dict of tensors, or a checkpoint dict with one under "
        "'state_dict', 'model_state_dict', 'model')"),
    "two specs": (
        "a,{spec},batch,0,ok.pt\nb,torchvision:resnet34,batch,1,ok.pt",
        "models file {d}/models.csv names 2 model specs (torchvision:resnet18, torchvision:resnet34): an "
        "experiment compares one network layer by layer; import each into its own"),
    "a model_id twice": (
        "a,{spec},batch,0,ok.pt\na,{spec},batch,1,ok.pt",
        "models file {d}/models.csv: model_id 'a' appears twice"),
    "a norm and seed twice": (
        "a,{spec},batch,0,ok.pt\nb,{spec},batch,0,ok.pt",
        "models file {d}/models.csv: a and b are both batch at seed 0; the analysis pairs models by normalisation "
        "and seed: give each model its own seed"),
    "no weights": ("a,{spec},batch,0,", "models file {d}/models.csv, line 2: no weights (every entry names "
                                        "model_id, model, norm, seed, weights)"),
    "a seed that is a name": (
        "a,{spec},batch,first,ok.pt",
        "models file {d}/models.csv, line 2: seed 'first' must be a whole number >= 0 (a name belongs in another "
        "column, kept as a label)"),
    "an unknown norm": ("a,{spec},batchy,0,ok.pt", "models file {d}/models.csv, line 2: unknown norm 'batchy'"),
    "the same weights twice": (  # one model counted as two seeds
        "a,{spec},batch,7,ok.pt\nb,{spec},batch,8,ok_copy.pt",
        "a and b hold the same weights ({d}/ok_copy.pt): one model would count as two seeds; import it once"),
    "the same weights in a checkpoint dict": (
        "a,{spec},batch,7,ok.pt\nb,{spec},batch,8,ok_in_dict.pt",
        "a and b hold the same weights ({d}/ok_in_dict.pt, saved another way): one model would count as two "
        "seeds; import it once"),
    "the weights of a model imported before": (
        "a,{spec},batch,7,bn_s0_again.pt",
        "bn-s0 and a hold the same weights ({d}/bn_s0_again.pt, saved another way): one model would count as two "
        "seeds; import it once"),
    "the same weights from DataParallel": (
        "a,{spec},batch,7,ok.pt\nb,{spec},batch,8,ok_parallel.pt",
        "a and b hold the same weights ({d}/ok_parallel.pt, saved another way): one model would count as two "
        "seeds; import it once"),
    "more cells than columns": (  # a label with an unquoted comma would be cut short
        "a,{spec},batch,0,ok.pt,extra",
        "models file {d}/models.csv, line 2: 1 more cell(s) than the header's 5 columns (extra): quote a value that "
        "holds a comma, or name the column in the header"),
}


@pytest.fixture(scope="module")
def weights(checkpoints, tmp_path_factory):
    """The files the refusals name, beside a models.csv of the case's rows."""
    d = tmp_path_factory.mktemp("weights")
    torch.save(resnet(5).state_dict(), d / "ok.pt")  # (seeds the imported models do not have)
    (d / "ok_copy.pt").write_bytes((d / "ok.pt").read_bytes())
    torch.save({"model_state_dict": resnet(5).state_dict(), "epoch": 9}, d / "ok_in_dict.pt")
    torch.save({f"module.{k}": v for k, v in resnet(5).state_dict().items()}, d / "ok_parallel.pt")
    torch.save({"model_state_dict": resnet(0).state_dict()}, d / "bn_s0_again.pt")  # the imported bn-s0's
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), d / "ten.pt")
    torch.save(resnet(6, no_norm).state_dict(), d / "none.pt")
    (d / "notes.pt").write_text("hello")
    (d / "truncated.pt").write_bytes((d / "ok.pt").read_bytes()[:4000])
    torch.save(resnet(0), d / "whole.pt")
    (d / "text.pt").write_text("not a checkpoint\n")
    torch.save({"state_dict": resnet(0).state_dict(), "args": argparse.Namespace(lr=0.1)}, d / "with_args.pt")
    torch.save({"epoch": 3}, d / "epoch.pt")
    return d


@pytest.fixture(scope="module")
def imported(checkpoints, tmp_path_factory):
    """A results root that already holds the imported experiment: a refusal must leave it as it was."""
    root, csv, _ = checkpoints
    out = tmp_path_factory.mktemp("held") / "runs"
    assert cli.main(["import", "--experiment", "leaves", "--models", str(csv), "--out", str(out),
                     "--dataset", f"imagefolder:{root}"]) == 0
    return out


def test_a_notebook_asking_imported_models_for_training_tables_is_told_why_there_are_none(imported):
    """(it was told to run `bnrep final` or `bnrep hparam`, which refuse imported models)"""
    from bnrep.api import open_results

    study = open_results(str(imported), "leaves")
    for table in ("training_history", "hparam_trials"):
        with pytest.raises(LookupError, match=f"^leaves holds imported models \\(bnrep import\\): bnrep did not "
                                              f"train them, so there is no {table} table"):
            study.table(table)
    assert "imported" in study.training.columns  # what the import wrote is there


def test_a_smoke_test_of_imported_models_shrinks_only_the_analysis(imported):
    """`bnrep run --smoke-test` on imported models: nothing trains, so --smoke-test's training settings do not
    apply (they were refused as a different configuration, and the --fresh the line suggested is refused
    for imported models); its analysis settings do. --dataset or --model other than recorded is refused."""
    from bnrep.config import UsageError, load_experiment
    from bnrep.experiments import SMOKE

    args = cli.build_parser().parse_args(["run", "--experiment", "leaves", "--smoke-test", "--out", str(imported)])
    before = tree(imported)
    exp, _, store = cli.validate_run(args)
    recorded = load_experiment(store)
    assert (exp.max_epochs, exp.train_size, exp.seeds) == (recorded.max_epochs, recorded.train_size, recorded.seeds)
    assert (exp.samples_sparsity, exp.samples_cluster, exp.k_max) != (recorded.samples_sparsity,
                                                                      recorded.samples_cluster, recorded.k_max)
    assert (exp.samples_sparsity, exp.samples_cluster, exp.k_max) == (SMOKE["samples_sparsity"],
                                                                      SMOKE["samples_cluster"], SMOKE["k_max"])
    for flag, value in (("--dataset", "synthetic"), ("--model", "vgg16")):  # not silently measured on the old
        args = cli.build_parser().parse_args(["run", "--experiment", "leaves", flag, value, "--out", str(imported)])
        with pytest.raises(UsageError, match=f"holds models imported as {SPEC} on imagefolder:.*: {flag} {value} "
                                             f"would be other models or data"):
            cli.validate_run(args)
    assert tree(imported) == before


def test_a_damaged_imported_model_is_imported_again_not_retrained(imported, tmp_path, capsys):
    """An imported model.pt with a flipped bit: the analysis refuses it in one line that says to import it
    again (bnrep final, which retrains a grid's model, refuses an experiment of imported models)."""
    import shutil

    out = tmp_path / "runs"
    shutil.copytree(imported, out)
    f = out / "leaves" / "train" / "models" / "bn-s0" / "model.pt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    before = tree(out)
    assert flags.run_stage("analysis", ["--experiment", "leaves", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: checkpoint ") and err.endswith(
        f"; import it again (bnrep import --fresh --experiment leaves --out {out} --models FILE)\n"), err
    assert tree(out) == before


def test_a_model_left_out_of_the_file_is_said_to_stay(checkpoints, imported, capsys):
    """A row deleted from the models file: the model imported before stays in the study (its tables, its
    report): said, naming it, with how to import the file's models alone; nothing changes."""
    root, csv, _ = checkpoints
    fewer = csv.parent / "fewer.csv"
    fewer.write_text("\n".join(csv.read_text().splitlines()[:3]) + "\n")  # the header, bn-s0 and bn-s1
    before = tree(imported)
    assert cli.main(["import", "--experiment", "leaves", "--models", str(fewer), "--out", str(imported)]) == 0
    out = capsys.readouterr().out
    assert "[import] 2 models; 2 already imported, 0 to evaluate" in out
    assert (f"[import] note: {imported}/leaves also holds 1 model imported before and not in {fewer} (none-s0): "
            f"it stays in the study; --fresh imports this file's models alone") in out
    assert tree(imported) == before


@pytest.mark.parametrize("case", REFUSALS)
def test_a_bad_entry_is_one_line_and_changes_nothing(case, checkpoints, weights, imported, capsys):
    rows, line = REFUSALS[case]
    (weights / "models.csv").write_text("model_id,model,norm,seed,weights\n" + rows.format(spec=SPEC) + "\n")
    before = tree(imported)
    rc = cli.main(["import", "--experiment", "leaves", "--models", str(weights / "models.csv"),
                   "--out", str(imported)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert line.format(d=weights) in err, err
    assert tree(imported) == before


def test_other_weights_under_an_imported_id_are_refused(checkpoints, weights, imported, capsys):
    """A model_id that is already imported from other file contents: one line, nothing changed."""
    (weights / "models.csv").write_text(f"model_id,model,norm,seed,weights\nbn-s0,{SPEC},batch,0,ok.pt\n")
    torch.save(resnet(5).state_dict(), weights / "ok.pt")
    before = tree(imported)
    rc = cli.main(["import", "--experiment", "leaves", "--models", str(weights / "models.csv"),
                   "--out", str(imported)])
    err = capsys.readouterr().err
    assert rc == 2 and err == (f"error: {imported}/leaves has bn-s0 imported from other weights than "
                               f"{weights}/ok.pt: use another model_id, or --fresh to import every model anew\n")
    assert tree(imported) == before


def test_the_same_weights_described_otherwise_are_refused(checkpoints, imported, capsys):
    """A corrected seed or label for a model already imported from the same file: one line naming what
    changed, nothing changed (the rerun said '3 already imported' and kept the old seed and label)."""
    _, csv, _ = checkpoints
    changed = csv.parent / "models-changed.csv"
    changed.write_text(csv.read_text().replace("bn-s0,{0},batch,0,ckpt/plain.pt,run-a".format(SPEC),
                                               "bn-s0,{0},batch,5,ckpt/plain.pt,run-z".format(SPEC)))
    before = tree(imported)
    rc = cli.main(["import", "--experiment", "leaves", "--models", str(changed), "--out", str(imported)])
    err = capsys.readouterr().err
    assert rc == 2 and err == (f"error: {imported}/leaves has bn-s0 imported with seed 0 (now 5), lab_run run-a "
                               f"(now run-z): use another model_id, or --fresh to import every model anew\n"), err
    assert tree(imported) == before


def test_a_norm_and_seed_the_experiment_holds_and_a_dropped_label_are_refused(checkpoints, weights, imported, capsys):
    """Another model at an imported model's norm and seed; the same weights with a label column left out."""
    _, csv, _ = checkpoints
    (weights / "models.csv").write_text(f"model_id,model,norm,seed,weights\nnew,{SPEC},batch,0,ok.pt\n")
    dropped = csv.parent / "models-dropped.csv"
    dropped.write_text("\n".join(line.rsplit(",", 1)[0] for line in csv.read_text().splitlines()) + "\n")
    before = tree(imported)
    for models, line in ((weights / "models.csv", f"error: {imported}/leaves: bn-s0 and new are both batch at seed 0; "
                          f"the analysis pairs models by normalisation and seed: give each model its own seed\n"),
                         (dropped, f"error: {imported}/leaves has bn-s0 imported with lab_run run-a (now none): use "
                          f"another model_id, or --fresh to import every model anew\n")):
        rc = cli.main(["import", "--experiment", "leaves", "--models", str(models), "--out", str(imported)])
        assert (rc, capsys.readouterr().err) == (2, line)
    assert tree(imported) == before


@pytest.mark.parametrize("name", ["..", "", "my leaves"])
def test_a_new_experiment_s_name_is_a_folder_under_out(name, checkpoints, tmp_path, capsys):
    _, csv, _ = checkpoints
    rc = cli.main(["import", "--experiment", name, "--dataset", "synthetic", "--models", str(csv),
                   "--out", str(tmp_path / "runs")])
    assert (rc, capsys.readouterr().err) == (2, f"error: --experiment {name!r}: a study's name is letters, digits "
                                                f"and . _ + - (at most 64, starting with a letter or digit)\n")
    assert list(tmp_path.iterdir()) == []  # nothing written, under --out or beside it


def test_training_flags_on_imported_models_are_refused(imported, capsys):
    """bnrep run on imported models runs the analysis and the report: --seeds, --norms, --max-epochs change nothing
    there (they were dropped silently, or refused as 'another configuration')."""
    before = tree(imported)
    for flags_given, named in ((["--seeds", "7", "--norms", "batch,none"], "--norms, --seeds"),
                               (["--max-epochs", "5"], "--max-epochs")):
        rc = cli.main(["run", "--experiment", "leaves", "--out", str(imported), *flags_given])
        assert (rc, capsys.readouterr().err) == (2, f"error: {imported}/leaves holds imported models (bnrep import): "
                                                    f"nothing is trained, so {named} would change nothing; measure "
                                                    f"them without it\n")
    assert tree(imported) == before


def test_a_norm_the_swap_wraps_imports_under_its_own_names(tmp_path):
    """Under batch, a norm holding its activation (timm's BatchNormAct2d) is swapped for a wrapper whose
    BatchNorm sits one level down (`1.norm.weight`); the researcher's file names it `1.weight`. It imports,
    and the imported model computes the researcher's function (eps and all)."""
    from bnrep.experiments import get_experiment
    from bnrep.stages.imports import Entry, fitted
    from tests.labnets.nets import bnact_cnn

    torch.manual_seed(0)
    net = bnact_cnn(3, 3)
    for t in net[1].weight, net[1].bias, net[1].running_mean:
        t.data.normal_()
    net[1].running_var.data.uniform_(0.5, 2)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    entry = Entry("m", "tests.labnets.nets:bnact_cnn", "batch", 0, str(tmp_path / "w.pt"), {})
    model = fitted(entry, get_experiment("digits-cnn"), (3, 8, 8), 3)
    assert "1.norm.weight" in model.state_dict()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), net.eval()(x))


def test_a_toml_models_file_reads_as_the_csv(checkpoints, tmp_path):
    from bnrep.stages.imports import read_models

    _, csv, _ = checkpoints
    toml = csv.parent / "models.toml"
    toml.write_text("".join(
        f'[[models]]\nmodel_id = "{r.model_id}"\nmodel = "{r.model}"\nnorm = "{r.norm}"\nseed = {r.seed}\n'
        f'weights = "{r.weights}"\nlab_run = "{r.lab_run}"\n\n' for r in pd.read_csv(csv).itertuples()))
    assert read_models(str(toml)) == read_models(str(csv))
    # a label given in some entries only is empty in the others, as a CSV's empty cell: every part of the
    # training table then has the column (pandas takes a table's columns from its first part)
    toml.write_text(toml.read_text().replace('lab_run = "run-a"\n', ""))
    assert [e.labels for e in read_models(str(toml))] == [{"lab_run": ""}, {"lab_run": "run-b"}, {"lab_run": "run-c"}]


def test_a_spreadsheets_csv_reads_as_the_csv_and_another_separator_is_named(checkpoints, capsys):
    from bnrep.stages.imports import ImportRefused, read_models

    _, csv, _ = checkpoints
    bom = csv.parent / "excel.csv"  # Excel's "CSV UTF-8": a byte-order mark before the header
    bom.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())
    assert read_models(str(bom)) == read_models(str(csv))
    semi = csv.parent / "semi.csv"
    semi.write_text(csv.read_text().replace(",", ";"))
    with pytest.raises(ImportRefused, match=r"line 1: one column, 'model_id;model;norm;seed;weights;lab_run': "
                                            r"columns are separated by commas, not ';' \(save it as CSV with commas\)$"):
        read_models(str(semi))


@pytest.mark.parametrize("spec,norm,line", [
    ("tests.labnets.nets:with_features", "batch", "tests.labnets.nets:with_features gives a tuple, not a tensor "
                                                  "of logits"),
    ("tests.labnets.nets:flat_mlp", "as-built", "tests.labnets.nets:flat_mlp cannot take 3x16x16 images"),
])
def test_a_model_that_cannot_give_logits_is_refused_before_anything_is_written(spec, norm, line, checkpoints,
                                                                               tmp_path, capsys):
    """Weights that fit a model whose forward pass gives no logits for the images (a (logits, features) tuple;
    an as-built model for other image sizes, which no norm swap runs first): one line, and the new
    experiment's folder is not made (a config.json there refused the corrected file as another configuration)."""
    from bnrep.models import build_model

    root, _, _ = checkpoints
    torch.save(build_model(spec, norm, 3, 3, (16, 16)).state_dict(), tmp_path / "w.pt")
    (tmp_path / "models.csv").write_text(f"model_id,model,norm,seed,weights\nm,{spec},{norm},0,w.pt\n")
    out = tmp_path / "runs"
    rc = cli.main(["import", "--experiment", "mine", "--models", str(tmp_path / "models.csv"), "--out", str(out),
                   "--dataset", f"imagefolder:{root}"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and line in err, err
    assert not (out / "mine").exists()


def test_a_new_experiment_needs_a_dataset(checkpoints, tmp_path, capsys):
    _, csv, _ = checkpoints
    rc = cli.main(["import", "--experiment", "mine", "--models", str(csv), "--out", str(tmp_path / "runs")])
    assert rc == 2 and capsys.readouterr().err == (
        "error: unknown experiment 'mine': name a preset or a study file, or pass --dataset to import into a new "
        "experiment called mine\n")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("body,line", [
    ("model_id,model,norm,seed,weight\na,cnn,batch,0,ok.pt",  # (said "no weights" alone)
     r"line 2: no weights \(every entry names model_id, model, norm, seed, weights\); is 'weight' meant to be 'weights'\?$"),
    ("model_id,model,norm,seed,weights,wieghts\na,cnn,batch,0,ok.pt,oops",  # (kept as a label column, silently)
     r"line 2: column 'wieghts' is a letter or two from 'weights': fix the typo, or rename it if it is a label"),
])
def test_a_column_one_typo_from_a_required_one_is_named(body, line, tmp_path):
    from bnrep.stages.imports import ImportRefused, read_models

    (tmp_path / "models.csv").write_text(body + "\n")
    with pytest.raises(ImportRefused, match=line):
        read_models(str(tmp_path / "models.csv"))
    (tmp_path / "labels.csv").write_text("model_id,model,norm,seed,weights,weight_decay,run\na,cnn,batch,0,ok.pt,0.1,x\n")
    assert read_models(str(tmp_path / "labels.csv"))[0].labels == {"weight_decay": "0.1", "run": "x"}  # labels stay
