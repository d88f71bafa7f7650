"""Bad input: one line on stderr, exit 2, before Ray starts, earlier results untouched."""

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from types import SimpleNamespace

import pandas as pd
import pytest
import ray

from bnrep import cli, config, flags
from bnrep.experiments import get_experiment
from bnrep.norms import NAMES
from bnrep.store import Store
from tests.conftest import ROOT, injected, tree


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    def refuse(*a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def results(tmp_path):
    """An --out holding earlier results of the smoke configuration (made by hand, no Ray)."""
    out = tmp_path / "runs"
    exp = flags.resolve_experiment(flags.build_parser("final").parse_args(["--smoke-test"]))
    store = Store(str(out), exp.name)
    store.mkdir()
    config.write_config(store, config.prepare(store, exp, "final", fresh=False))
    store.write_part("training", "cnn-bn-s0", pd.DataFrame([{"model_id": "cnn-bn-s0", "bn": True, "seed": 0}]))
    store.write_json("hparam/best_hparams.json", {"bn": {"lr": 0.01, "momentum": 0.9}})
    return out



def test_a_later_stage_goes_on_with_the_model_and_data_its_study_was_made_with(tmp_path, capsys):
    """`bnrep analysis --out X` after `bnrep run --model torchvision:resnet18 --out X` was refused with '--model
    cnn is another model', a flag never typed; every stage now takes the model and data --out recorded for the
    study where no flag names them."""
    out = tmp_path / "runs"
    made = flags.resolve_experiment(flags.build_parser("final").parse_args(
        ["--smoke-test", "--model", "tests.labnets.nets:wide_cnn", "--dataset", "synthetic", "--out", str(out)]))
    store = Store(str(out), made.name)
    store.mkdir()
    config.write_config(store, config.prepare(store, made, "final", fresh=False))
    for stage in ("hparam", "final", "analysis", "run"):
        e = flags.resolve_experiment(flags.build_parser(stage).parse_args(["--smoke-test", "--out", str(out)]))
        assert (e.model, e.dataset) == ("tests.labnets.nets:wide_cnn", "synthetic"), stage
    named = flags.resolve_experiment(flags.build_parser("analysis").parse_args(["--model", "cnn", "--out", str(out)]))
    assert (named.model, named.dataset) == ("cnn", "synthetic")  # a flag still says what it says
    elsewhere = flags.resolve_experiment(flags.build_parser("analysis").parse_args(["--out", str(tmp_path / "x")]))
    assert (elsewhere.model, elsewhere.dataset) == ("cnn", "digits")  # nothing recorded: the preset's
    fresh = flags.resolve_experiment(flags.build_parser("run").parse_args(["--fresh", "--out", str(out)]))
    assert (fresh.model, fresh.dataset) == ("cnn", "digits")  # --fresh starts the preset's study anew
    study = tmp_path / "mine.toml"  # a study file's model and data are its own, whatever --out recorded
    study.write_text('base = "digits-cnn"\nmodel = "cnn"\n')
    Store(str(out), "mine").mkdir()
    config.write_config(Store(str(out), "mine"), config.prepare(Store(str(out), "mine"), made.override(name="mine"),
                                                                "final", fresh=False))
    own = flags.resolve_experiment(flags.build_parser("run").parse_args(["--experiment", str(study), "--out",
                                                                         str(out)]))
    assert (own.name, own.model, own.dataset) == ("mine", "cnn", "digits")
    assert flags.run_stage("analysis", ["--smoke-test", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "another model" not in err and "no trained models" in err, err  # (it goes on: nothing trained yet)


def test_smoke_test_shrinks_and_never_raises_a_size(tmp_path):
    from bnrep.experiments import SMOKE

    parse = flags.build_parser("final").parse_args
    plain = flags.resolve_experiment(parse(["--smoke-test"]))
    assert {k: getattr(plain, k) for k in SMOKE} == SMOKE  # a preset's sizes are all larger
    study = tmp_path / "tiny.toml"
    study.write_text('base = "digits-cnn"\nseeds = 1\nsamples_cluster = 100\nmax_epochs = 50\n')
    e = flags.resolve_experiment(parse(["--experiment", str(study), "--smoke-test"]))
    assert (e.seeds, e.samples_cluster, e.max_epochs, e.num_samples) == (1, 100, 3, 2)  # 1 and 100 stay
    assert flags.resolve_experiment(parse(["--experiment", str(study), "--smoke-test", "--seeds", "3"])).seeds == 3
    # a condition's own cap shrinks too; a smaller one stays (long and batch train alike at smoke sizes: no twins
    # there, the study as asked is what they are judged by)
    e = flags.resolve_experiment(parse(["--smoke-test", "--conditions",
                                        "batch; long:batch,max_epochs=150,label=long; short:batch,max_epochs=2"]))
    assert [e.for_condition(c).max_epochs for c in ("batch", "long", "short")] == [3, 3, 2]
    assert "long:batch,max_epochs=3,label=long" in e.conditions
    study.write_text('base = "digits-cnn"\nconditions = "batch; long:batch,max_epochs=150"\n')
    e = flags.resolve_experiment(parse(["--experiment", str(study), "--smoke-test"]))
    assert [e.for_condition(c).max_epochs for c in ("batch", "long")] == [3, 3]


CASES = [  # (name, stage, argv, words the message must contain)
    ("unknown experiment", "hparam", ["--experiment", "nope"], ["unknown experiment 'nope'", "digits-cnn"]),
    ("lr zero", "final", ["--paper-hparams", "--lr", "0"], ["learning rate must be > 0"]),
    ("lr negative", "final", ["--paper-hparams", "--lr", "-1"], ["learning rate must be > 0"]),
    ("lr without paper hparams", "final", ["--lr", "0.05"], ["--lr sets the hyperparameters of --paper-hparams runs; "
                                                               "without it the sweep chooses them"]),
    ("image size of digits", "final", ["--paper-hparams", "--image-size", "32"],
     ["image_size resizes the images of an imagefolder:PATH dataset; digits has a size of its own"]),
    ("momentum one", "final", ["--paper-hparams", "--momentum", "1.0"], ["momentum must be in [0, 1)"]),
    ("no seeds", "final", ["--seeds", "0"], ["--seeds must be > 0"]),
    ("retries for ever", "hparam", ["--max-failures", "-1"], ["--max-failures must be >= 0, got -1"]),
    ("negative checkpoint interval", "final", ["--checkpoint-every", "-5"], ["--checkpoint-every must be >= 0, got -5"]),
    ("checkpoint interval not a number", "hparam", ["--checkpoint-every", "nan"],
     ["--checkpoint-every must be a finite number, got nan"]),
    ("batch size", "hparam", ["--batch-size", "0"], ["--batch-size must be > 0"]),
    ("epochs", "hparam", ["--max-epochs", "-3"], ["--max-epochs must be > 0"]),
    ("gpus", "hparam", ["--gpus-per-trial", "-1"], ["--gpus-per-trial must be >= 0"]),
    ("missing mnist", "hparam", ["--experiment", "mnist-cnn", "--data-root", "{empty}"],
     ["MNIST not found", "train-images-idx3-ubyte"]),
    ("unreadable data root", "final", ["--experiment", "cifar10-vgg16", "--data-root", "{tmp}/nowhere"],
     ["nowhere"]),
    ("k_min < 2", "analysis", ["--k-min", "1"], ["k_min must be >= 2"]),
    ("k_max < k_min", "analysis", ["--k-min", "5", "--k-max", "4"], ["k_max must be >= k_min"]),
    ("k_max >= samples", "analysis", ["--samples-cluster", "10", "--k-max", "10"],
     ["must be below the number of clustering samples (10: samples_cluster 10,", "or a larger --samples-cluster"]),
    ("negative eps", "analysis", ["--eps", "-0.1"], ["eps thresholds must be >= 0, got -0.1"]),
    ("eps twice", "analysis", ["--eps", "0,0.01,0"], ["eps lists 0 more than once"]),
    ("unknown norm", "final", ["--norms", "batch,weight"], ["unknown norm 'weight'", ", ".join(NAMES)]),
    ("no norms", "hparam", ["--norms", ""], ["norms is empty"]),
    ("k-means at snapshots, without snapshots", "analysis", ["--snapshot-kmeans"],  # (accepted, did nothing)
     ["snapshot_kmeans (--snapshot-kmeans) runs the k-means sweep at the snapshot epochs, and there are none"]),
    ("a sweep's size without the sweep", "final", ["--paper-hparams", "--num-samples", "4"],
     ["--num-samples sizes the sweep, which --paper-hparams skips: give one of them"]),
    ("unknown model", "hparam", ["--model", "resnet50"], ["unknown model 'resnet50'", "torchvision:NAME",
                                                          "; did you mean torchvision:resnet50?"]),
    ("model misspelt", "hparam", ["--model", "cnnn"], ["unknown model 'cnnn'", "; did you mean cnn?"]),
    ("torchvision model misspelt", "final", ["--model", "torchvision:resnet188"],
     ["unknown torchvision model 'resnet188' (torchvision.models.list_models() has them); did you mean "
      "torchvision:resnet18?"]),
    ("a source misspelt", "final", ["--model", "torchvison:resnet18"],
     ["cannot import torchvison for model torchvison:resnet18 (ModuleNotFoundError: No module named 'torchvison'); "
      "did you mean torchvision:resnet18?"]),
    ("model module does not import", "final", ["--model", "nolab.nets:wide_cnn"],
     ["cannot import nolab.nets for model nolab.nets:wide_cnn", "No module named 'nolab'", "PYTHONPATH"]),
    ("model function missing", "final", ["--model", "tests.labnets.nets:wide_cn"],  # which file: a package may shadow it
     ["tests.labnets.nets (imported from ", "tests/labnets/nets.py) has no 'wide_cn' for model tests.labnets.nets:wide_cn; "
      "did you mean tests.labnets.nets:wide_cnn?"]),
    ("model callable returns no module", "hparam", ["--model", "tests.labnets.nets:not_a_module"],
     ["tests.labnets.nets:not_a_module(num_classes, in_channels) returned a dict, not an nn.Module"]),
    ("model callable returns a number", "hparam", ["--model", "tests.labnets.nets:a_number"],
     ["tests.labnets.nets:a_number(num_classes, in_channels) returned an int, not an nn.Module"]),
    ("model module raises AttributeError on import", "final", ["--model", "tests.labnets.attr_on_import:net"],
     ["importing tests.labnets.attr_on_import for model tests.labnets.attr_on_import:net failed: AttributeError: "
      "'types.SimpleNamespace' object has no attribute 'width'"]),  # (UnboundLocalError, a traceback)
    ("model module needs a package", "final", ["--model", "tests.labnets.needs_a_package:net"],
     ["importing tests.labnets.needs_a_package for model tests.labnets.needs_a_package:net failed: it needs "
      "bnrep_tests_not_installed, which is not installed (python -c 'import tests.labnets.needs_a_package' shows "
      "where)"]),  # (was: "cannot import ...; install it or put its folder on PYTHONPATH", about the wrong module)
    ("model module fails on import", "final", ["--model", "tests.labnets.fails_on_import:net"],
     ["importing tests.labnets.fails_on_import for model tests.labnets.fails_on_import:net failed: RuntimeError: "
      "CONFIG_PATH is not set"]),
    ("model builder raises", "hparam", ["--model", "tests.labnets.nets:needs_a_config"],
     ["tests.labnets.nets:needs_a_config(10, 1) failed: RuntimeError: my builder needs a config file (bnrep calls "
      "it with the class count and the image channels, in that order)"]),
    ("model gives a tuple in training", "final", ["--model", "tests.labnets.nets:aux_heads"],
     ["tests.labnets.nets:aux_heads gives a tuple in training mode, not a tensor of logits"]),
    ("own model without norm layers", "final", ["--model", "tests.labnets.nets:plain_cnn"],
     ["tests.labnets.nets:plain_cnn has no normalisation layer to swap for batch (it has no normalisation: it is "
      "`none` as built); put a norm layer (nn.BatchNorm2d, which bnrep swaps for each norm) where each should go in "
      "it, or study it as it is with --norms none"]),
    ("two conditions of one network: no norms", "final", ["--model", "tests.labnets.nets:plain_cnn", "--norms",
                                                             "none,as-built"],
     ["tests.labnets.nets:plain_cnn: conditions as-built and none build the same network (no normalisation layer, the "
      "same modules and settings) and train with the same recipe: they would train the same models; list one of them"]),
    ("two conditions of one network: its own norm", "final", ["--model", "tests.labnets.nets:wide_cnn", "--norms",
                                                              "batch,as-built"],
     ["tests.labnets.nets:wide_cnn: conditions batch and as-built build the same network (BatchNorm2d, the same "
      "modules and settings)"]),
    ("model fails whatever the images", "final", ["--model", "tests.labnets.nets:unfinished"],
     ["tests.labnets.nets:unfinished's forward pass fails on 2 images of 1x8x8, and on every other size from 8x8 to "
      "224x224 and channel count tried: NotImplementedError: the attention block is not written yet"]),
    ("model fails in its backward pass", "final", ["--model", "tests.labnets.nets:inplace_gate"],
     ["tests.labnets.nets:inplace_gate under batch fails in training mode on 2 images of 1x8x8: RuntimeError: one of "
      "the variables needed for gradient computation has been modified by an inplace operation"]),  # (was: every trial
     # failed in Ray, max-failures + 1 times)
    ("instance norm on 1x1 maps", "hparam", ["--model", "vgg16", "--norms", "batch,instance"],
     ["vgg16 under instance on 1x8x8 images: features.25 normalises one value per group (its input is "
      "(2, 512, 1, 1)), so its output is its bias whatever the image"]),
    ("timm pretrained tag", "hparam", ["--model", "timm:resnet18.a1_in1k"],
     ["timm:resnet18.a1_in1k names pretrained weights (a1_in1k), but bnrep trains from random initial weights: give "
      "timm:resnet18"]),
    ("model gives a tuple", "hparam", ["--model", "tests.labnets.nets:with_features"],
     ["tests.labnets.nets:with_features gives a tuple, not a tensor of logits"]),
    ("model cannot take the images", "hparam", ["--model", "torchvision:convnext_tiny", "--norms", "batch"],
     ["torchvision:convnext_tiny cannot take 1x8x8 images (it needs at least 32x32;"]),
    ("a file for a module", "hparam", ["--model", "mynets.py:tiny"],
     ["model 'mynets.py:tiny' names a file; a model in your own code is module:function: give mynets:tiny"]),
    ("a file path for a module", "final", ["--model", "/lab/code/mynets.py:Tiny"],
     ["give mynets:Tiny, run from /lab/code or with it on PYTHONPATH"]),
    ("user model ignores in_channels", "final", ["--model", "tests.labnets.nets:rgb_only"],
     ["tests.labnets.nets:rgb_only takes 3-channel images, not the data's 1 channel: its first layer must use the "
      "in_channels bnrep passes it (tests.labnets.nets:rgb_only(num_classes, in_channels)); RuntimeError: "]),
    ("user model needs another size", "hparam", ["--model", "tests.labnets.nets:flat_mlp"],
     ["tests.labnets.nets:flat_mlp cannot take 1x8x8 images (of the sizes tried (8x8 to 224x224) only 28x28 runs;"]),
    ("swap without norm layers", "final", ["--model", "torchvision:vgg11"],
     ["torchvision:vgg11 has no normalisation layer to swap for batch (it has no normalisation: it is `none` as "
      "built); use its BatchNorm variant torchvision:vgg11_bn"]),
    ("group count does not divide", "hparam", ["--norms", "group:3"],
     ["group:3: 3 groups do not divide a layer of width 16"]),
    ("group count does not divide a swapped net", "final", ["--model", "torchvision:resnet18", "--norms", "group:5"],
     ["group:5: 5 groups do not divide a layer of width 64 (torchvision:resnet18: bn1)"]),
    ("as-built on a built-in net", "hparam", ["--norms", "as-built"], ["cnn is built for a norm"]),
    ("analysis of another model", "analysis", ["--smoke-test", "--model", "vgg16"],
     ["trained cnn; --model vgg16 is another model (analyse it in another --out, or train it with --fresh)"]),
    ("model with a TorchScript block", "hparam", ["--model", "tests.labnets.nets:scripted"],  # (was a traceback)
     ["tests.labnets.nets:scripted: its activations cannot be read: bnrep reads each through a forward hook, and "
      "with the hooks on, RuntimeError: register_forward_pre_hook is not supported on ScriptModules (a TorchScript "
      "module takes no hooks: build the model of plain nn.Modules, torch.jit.script left out)"]),
    ("model without activations", "hparam", ["--model", "tests.labnets.nets:gated"],
     ["tests.labnets.nets:gated calls no activation bnrep knows"]),
    ("analysis on other data", "analysis", ["--smoke-test", "--dataset", "synthetic"],
     ["runs/digits-cnn was trained on digits, not synthetic: analyse it with --dataset digits, or the other data in "
      "another --out"]),
    ("probes match nothing", "analysis", ["--smoke-test", "--probes", "layer9*"],
     ["--probes 'layer9*' matches none of the 5 probes of cnn (names like conv1; types ReLU)"]),
    ("norm twice", "final", ["--norms", "group,none,group"], ["norms lists group more than once"]),
    ("different config", "final", ["--smoke-test", "--max-epochs", "5", "--paper-hparams"],
     ["different configuration", "max_epochs 3 -> 5", "use the same settings as before (the flags, or the study "
      "file's values), another --out, or --fresh to delete those results and start over"]),
    ("a smoke test's folder without --smoke-test", "final", ["--paper-hparams"],
     ["different configuration (max_epochs 3 -> 200", "they were made with --smoke-test: add it, use another --out, "
      "or --fresh to delete those results"]),
    ("another model in a study's folder", "final", ["--smoke-test", "--paper-hparams", "--model", "vgg16"],
     ["different configuration (model 'cnn' -> 'vgg16'", "another study: give it a name of its own (--experiment "
      "NAME, beside this one), use another --out, or --fresh to delete those results"]),
    ("analysis of another config", "analysis", ["--smoke-test", "--k-max", "5"],
     ["analysis results of a different configuration"]),
    ("no sweep yet", "final", ["--smoke-test", "--experiment", "synthetic-cnn"],
     ["run `bnrep hparam --experiment synthetic-cnn --out ", "` first, or pass --paper-hparams"]),
    ("no trained models", "analysis", ["--smoke-test", "--experiment", "synthetic-cnn"],
     ["run `bnrep final --experiment synthetic-cnn --out "]),
    ("unknown report experiment", "report", ["--experiment", "nope"], ["unknown experiment 'nope'"]),
    ("gpus not a number", "final", ["--gpus-per-trial", "nan"], ["--gpus-per-trial must be a finite number, got nan"]),
    ("cpus infinite", "analysis", ["--cpus-per-task", "inf"], ["--cpus-per-task must be a finite number, got inf"]),
    ("cpus finer than Ray counts", "hparam", ["--cpus-per-trial", "0.33333"],
     ["--cpus-per-trial 0.33333: Ray counts resources in steps of 0.0001"]),
    ("report with no results", "report", ["--experiment", "digits-cnn-norms"],
     ["no results for digits-cnn-norms under ", "`) first"]),
    ("val_size leaves nothing to train on", "hparam", ["--experiment", "{tmp}/wide.toml"],
     ["error: study file {tmp}/wide.toml: val_size=5000 holds out 5000 of 1438 images; it must leave 1..1437"]),
]


@pytest.mark.parametrize("name,stage_name,argv,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, stage_name, argv, words, results, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "wide.toml").write_text('base = "digits-cnn"\nval_size = 5000\n')  # digits' 1,438 after the test split
    if name == "analysis of another config":  # earlier analysis with the smoke defaults
        store = Store(str(results), "digits-cnn")
        cfg = store.read_json("config.json")
        cfg["analysis_hash"] = "0" * 12
        store.write_json("config.json", cfg)
        store.write_bytes("results/kmeans/cnn-bn-s0-conv1.parquet", b"")  # its results (their presence counts)
    argv = [a.format(empty=tmp_path / "empty", tmp=tmp_path) for a in argv] + ["--out", str(results)]
    before = tree(results)
    rc = flags.run_stage(stage_name, argv)
    said = capsys.readouterr()
    err = said.err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert said.out == "", said.out  # refused before the stage's banner
    for w in words:
        assert w.format(tmp=tmp_path) in err
    assert not ray.is_initialized()
    assert tree(results) == before
    if name == "val_size leaves nothing to train on":  # bnrep run names the file too; a preset's own value, no file
        assert cli.main(["run", *argv]) == 2 and capsys.readouterr().err.strip() == err
        from bnrep.datasets import DataError
        from bnrep.studies import named_study_file

        with pytest.raises(DataError, match="^val_size=5000 holds"), named_study_file("digits-cnn"):
            raise DataError("val_size=5000 holds out 5000 of 1438 images", field="val_size")


def test_the_bnrep_command_finds_a_model_module_in_the_current_folder(tmp_path):
    """`python -m bnrep` finds mylab.nets in the current folder (Python puts it first on sys.path); the
    `bnrep` command, whose sys.path has its script's folder instead, finds it too."""
    import shutil
    import subprocess
    import sys

    command = shutil.which("bnrep", path=os.path.dirname(sys.executable)) or shutil.which("bnrep")
    assert command, "the bnrep command is not installed beside this Python"
    (tmp_path / "mylab").mkdir()
    (tmp_path / "mylab" / "nets.py").write_text("def text(num_classes, in_channels):\n    return 'a net'\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([command, "final", "--paper-hparams", "--model", "mylab.nets:text", "--out", "out"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    # imported and called: its result is refused, in one line, before any work
    assert (r.returncode, r.stderr) == (2, "error: mylab.nets:text(num_classes, in_channels) returned a str, not an "
                                           "nn.Module\n"), r.stderr
    assert not (tmp_path / "out").exists()


def test_the_grid_summary_keeps_its_columns_under_a_long_model_name(capsys):
    from bnrep.stages.final import print_summary

    rows = [dict(arch=arch, condition=c, train_acc=1.0, val_acc=0.9, test_acc=0.8, epochs=3)
            for arch in ("torchvision:resnet18", "cnn") for c in ("batch", "none") for _ in range(2)]
    print_summary(pd.DataFrame(rows))
    header, *lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["torchvision:resnet18", "cnn"] * 2
    assert {line.index(" 2 ") + 2 for line in lines} == {header.index("seeds") + 5}  # right-aligned under it


def test_the_grid_summary_says_which_models_diverged(capsys):
    """(the grid's table showed a diverged model's accuracy like any other; only the report named it)"""
    from bnrep.stages.final import print_summary

    rows = [dict(model_id=f"cnn-{t}-s{s}", arch="cnn", condition=c, train_acc=0.1, val_acc=0.1, test_acc=0.1,
                 epochs=3, diverged=(c == "batch" and s == 1) or (c == "none" and s == 0),
                 diverged_epoch=2 if c == "batch" and s == 1 else 1 if c == "none" and s == 0 else 0)
            for c, t in (("batch", "bn"), ("none", "nobn")) for s in range(2)]
    print_summary(pd.DataFrame(rows))
    assert capsys.readouterr().out.splitlines()[-1] == (
        "note: Diverged (training loss NaN or inf, training stopped): 1 of 2 BN models (epoch 2); 1 of 2 NBN models "
        "(epoch 1). Their rows are kept as evidence; their accuracies are those of the diverged weights, which are "
        "not analysed: every measure of them is NaN with the epoch it diverged.")
    print_summary(pd.DataFrame(rows).assign(diverged=False))
    assert "diverged" not in capsys.readouterr().out


def test_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rc = flags.run_stage("hparam", ["--smoke-test", "--out", str(blocker / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: cannot write to --out") and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "not a directory"


def test_checkpoint_that_does_not_load(results, capsys):
    store = Store(str(results), "digits-cnn")
    store.write_bytes("train/models/cnn-bn-s0/model.pt", b"not a checkpoint")
    before = tree(results)
    rc = flags.run_stage("analysis", ["--smoke-test", "--out", str(results)])
    err = capsys.readouterr().err
    assert rc == 2 and "train/models/cnn-bn-s0/model.pt does not load" in err
    assert tree(results) == before and not ray.is_initialized()


def test_checkpoint_with_a_flipped_byte(results, capsys):
    """A model.pt that loads but is not the one trained (sha256 in its training part differs)."""
    import torch

    from bnrep.checkpoints import save_model
    from bnrep.models import build_model

    store = Store(str(results), "digits-cnn")
    exp = flags.resolve_experiment(flags.build_parser("final").parse_args(["--smoke-test"]))
    row = {"model_id": "cnn-bn-s0", "bn": True, "norm": "batch", "seed": 0}
    digest = save_model(store, "cnn-bn-s0", build_model("cnn", "batch", 1), exp, {"lr": 0.01}, row)
    store.write_part("training", "cnn-bn-s0", pd.DataFrame([row]), config.stage_hashes(exp)["train_hash"],
                     model_sha256=digest)
    path = results / "digits-cnn/train/models/cnn-bn-s0/model.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, mid-file: torch.load would still read it
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)
    before = tree(results)
    rc = flags.run_stage("analysis", ["--smoke-test", "--out", str(results)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "train/models/cnn-bn-s0/model.pt is not the model that was trained" in err
    assert tree(results) == before and not ray.is_initialized()


@pytest.mark.parametrize("argv", [["final", "--paper-hparams"], ["run", "--paper-hparams"], ["hparam"],
                                  ["analysis"],  # (no trained models yet: the run under way makes them)
                                  ["hparam", "--num-samples", "5"]])  # (another configuration than the run's)
def test_a_second_writer_is_refused_before_ray_starts(argv, results, capsys):
    from bnrep import lock

    store = Store(str(results), "digits-cnn")
    held = lock.acquire(store, "final", renew=False)  # a first writer (this process: alive)
    try:
        store.write_part("training", "cnn-bn-s0", pd.DataFrame([{"model_id": "cnn-bn-s0"}]))  # work left to do
        store.delete("results/training/cnn-bn-s0.parquet")
        before = tree(results)
        rc = cli.main([argv[0], "--smoke-test", *argv[1:], "--out", str(results)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1, err
        assert f"is being written by final on host {held.record['host']}, pid {held.record['pid']}" in err
        assert tree(results) == before and not ray.is_initialized()
        assert cli.main(["status", "--experiment", "digits-cnn", "--out", str(results)]) == 0
        assert f"writer     running   final on host {held.record['host']}" in capsys.readouterr().out
    finally:
        held.release()


@pytest.mark.parametrize("stage,argv,line", [
    ("final", ["--paper-hparams", "--cpus-per-trial", "3"], "a trial asks 3 CPUs (--cpus-per-trial / --gpus-per-trial)"),
    ("hparam", ["--gpus-per-trial", "1"], "a trial asks 1 GPU (--cpus-per-trial / --gpus-per-trial)"),
])
def test_more_than_the_private_ray_has_is_one_line_not_a_wait(stage, argv, line, results, capsys, monkeypatch):
    """Ray would wait for resources no node of the private local Ray can ever offer; nothing is written."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = {k: v for k, v in tree(results).items() if ".lock" not in k}
    rc = flags.run_stage(stage, ["--smoke-test", *argv, "--out", str(results)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith(f"error: {line}, more than this machine's Ray "
                                                                     f"has ("), err
    assert {k: v for k, v in tree(results).items() if ".lock" not in k} == before and not ray.is_initialized()


@pytest.mark.parametrize("command,line", [
    (["final", "--paper-hparams", "--fresh", "--cpus-per-trial", "3"], "a trial asks 3 CPUs"),  # (deleted all first)
    (["hparam", "--fresh", "--gpus-per-trial", "1"], "a trial asks 1 GPU"),
    (["run", "--paper-hparams", "--fresh", "--cpus-per-trial", "3"], "a trial asks 3 CPUs"),
    (["run", "--paper-hparams", "--gpus-per-task", "1"], "a task asks 1 GPU"),  # (after the grid had trained)
])
def test_a_run_the_private_ray_cannot_serve_is_refused_before_it_deletes_or_trains(command, line, results, capsys,
                                                                                   monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = {k: v for k, v in tree(results).items() if ".lock" not in k}
    argv = [*command, "--smoke-test", "--out", str(results)]
    rc = cli.main(argv) if command[0] == "run" else flags.run_stage(command[0], argv[1:])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.splitlines()[-1].startswith(f"error: {line} "), err
    assert {k: v for k, v in tree(results).items() if ".lock" not in k} == before and not ray.is_initialized()


def test_bnrep_run_validates_every_stage_first(results, capsys):
    before = tree(results)
    rc = cli.main(["run", "--smoke-test", "--k-max", "1", "--out", str(results)])
    err = capsys.readouterr().err
    assert rc == 2 and "k_max must be >= k_min" in err
    assert tree(results) == before and not ray.is_initialized()


def test_stage_scripts_are_thin_and_import_nothing_by_path():
    """Scripts parse flags and call the library; bnrep never loads a script or edits sys.path."""
    for script in flags.SCRIPTS.values():
        text = (ROOT / script).read_text()
        assert "run_stage(" in text and "sys.path" not in text, script
    for path in (ROOT / "bnrep").rglob("*.py"):
        text = path.read_text()
        for banned in ("spec_from_file_location", "register_pickle_by_value", "sys.path.insert", "_actions"):
            assert banned not in text, f"{path.name}: {banned}"


def test_ray_runs_library_functions_by_reference():
    """The functions Ray runs live in the installed package, so they pickle by reference."""
    import ray.cloudpickle as cp

    from bnrep.stages import analysis, final, hparam

    for fn in (hparam.trial, final.trial, analysis.extract, analysis.layer_task, analysis.pair_task):
        blob = cp.dumps(fn)
        assert fn.__module__.startswith("bnrep.stages.") and len(blob) < 200, (fn.__name__, len(blob))


@pytest.mark.parametrize("argv,line", [
    (["final", "--seeds", "abc"], "error: bnrep final: argument --seeds: invalid int value: 'abc' "
                                  "(see bnrep final --help)"),
    (["report", "--smoke-test"], "error: bnrep report: unrecognized arguments: --smoke-test; --smoke-test is a flag of "
                                 "bnrep hparam, bnrep final, bnrep analysis and bnrep run (see bnrep report --help)"),
    # a flag of another command, named as such (it was 'did you mean' the flag typed, or one its help mentions)
    (["hparam", "--paper-hparams"], "error: bnrep hparam: unrecognized arguments: --paper-hparams; --paper-hparams is "
                                    "a flag of bnrep final and bnrep run (see bnrep hparam --help)"),
    (["hparam", "--lr", "0.1"], "error: bnrep hparam: unrecognized arguments: --lr 0.1; --lr is a flag of bnrep final "
                                "and bnrep run (see bnrep hparam --help)"),  # (the sweep's help listed it)
    (["analysis", "--paper-hparam"], "error: bnrep analysis: unrecognized arguments: --paper-hparam; did you mean "
                                     "--paper-hparams? (a flag of bnrep final and bnrep run) (see bnrep analysis --help)"),
    (["run", "--smoketest"], "error: bnrep run: unrecognized arguments: --smoketest; did you mean --smoke-test? (see "
                             "bnrep run --help)"),  # (argparse's error comes from bnrep's parser; the flag is run's)
    (["analysis", "--k-mx", "5"], "error: bnrep analysis: unrecognized arguments: --k-mx 5; did you mean --k-max?"),
    (["status", "--zzz"], "error: bnrep status: unrecognized arguments: --zzz (see bnrep status --help)"),
    # a flag shortened is refused as a misspelt one is (argparse would take --norm for --norms, --seed for --seeds)
    (["run", "--norm", "batch"], "error: bnrep run: unrecognized arguments: --norm batch; did you mean --norms? (see "
                                 "bnrep run --help)"),
    (["final", "--seed", "3"], "error: bnrep final: unrecognized arguments: --seed 3; did you mean --seeds? (see "
                               "bnrep final --help)"),
    (["status", "--exp", "x"], "error: bnrep status: unrecognized arguments: --exp x; did you mean --experiment? (see "
                               "bnrep status --help)"),
    (["frobnicate"], "error: bnrep: argument COMMAND: invalid choice: 'frobnicate'"),
])
def test_a_flag_argparse_refuses_is_one_line_naming_the_command(argv, line, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(line) and err.count("\n") == 1, err


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["status", "--help"], ["list", "--help"],
                                  ["hparam", "--help"], ["final", "--help"], ["analysis", "--help"],
                                  ["report", "--help"]])
def test_help_lists_flags_with_defaults(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    out = capsys.readouterr().out
    assert e.value.code == 0 and "usage:" in out, out
    if argv[0] in ("run", "hparam", "final"):
        for flag in ("--experiment", "--out", "--seeds", "--max-epochs", "--smoke-test", "--gpus-per-trial"):
            assert flag in out
        assert "default" in out


def test_list_shows_every_experiment(tmp_path, capsys):
    from bnrep.studies import load_study

    study = tmp_path / "leaves.toml"
    study.write_text('base = "digits-cnn"\ndescription = "my leaves"\nmodel = "tests.labnets.nets:wide_cnn"\n')
    store = Store(str(tmp_path / "runs"), "leaves")  # a study run before, found by name under --out
    store.mkdir()
    config.write_config(store, config.prepare(store, load_study(str(study)), "final", fresh=False))
    assert cli.main(["list", "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    for name in ("digits-cnn", "mnist-cnn", "fashion-mnist-cnn", "cifar10-vgg16"):
        assert name in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert rows["digits-cnn"].split()[1:5] == ["digits", "cnn", "yes", "no"]
    assert rows["leaves"].split()[1:] == ["digits", "tests.labnets.nets:wide_cnn", "yes", "started", "my", "leaves"]
    header = rows["experiment"]  # the columns line up, however long a study's dataset or model
    assert {r.index(" yes ") + 1 for r in rows.values() if " yes " in r} == {header.index("data here")}
    assert rows["leaves"].index("started") == header.index("results here")
    assert rows["leaves"].index("my leaves") == header.index("description")
    assert out.endswith(f"--out {tmp_path / 'runs'}: 1 more study (the table's last row), each run by its name)\n")
    # a preset's results under --out: counted, and how far they got (they read as no study at all)
    for name, report in (("digits-cnn", True), ("mnist-cnn", False)):
        preset = Store(str(tmp_path / "runs"), name)
        preset.mkdir()
        config.write_config(preset, config.prepare(preset, get_experiment(name), "final", fresh=False))
        if report:
            preset.write_bytes("report/report.md", b"# report\n")
    assert cli.main(["list", "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert rows["digits-cnn"].split()[4] == "report" and rows["mnist-cnn"].split()[4] == "started"
    assert rows["cifar10-vgg16"].split()[4] == "no"
    assert out.endswith(f"--out {tmp_path / 'runs'}: results of 2 presets (digits-cnn, mnist-cnn; bnrep status "
                        f"--out {tmp_path / 'runs'} says how far each got); 1 more study (the table's last row), each run by its name)\n")
    assert cli.main(["list", "--out", str(tmp_path / "none")]) == 0
    assert capsys.readouterr().out.endswith(f"--out {tmp_path / 'none'}: no such folder yet)\n")
    assert cli.main(["list", "--out", str(study)]) == 2  # (was: the presets, "studies: those leaves.toml holds")
    assert capsys.readouterr() == ("", f"error: --out {study} is a file, not a folder of results\n")


def test_list_does_not_decode_a_study_s_image_folder(tmp_path, capsys, monkeypatch):
    """An image-folder study is 'here' when its folder is: listing does not read tens of thousands of images."""
    import bnrep.data
    from bnrep.studies import load_study

    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "pics" / split / c).mkdir(parents=True)
            Image.new("L", (8, 8)).save(tmp_path / "pics" / split / c / "x.png")
    study = tmp_path / "pics.toml"
    study.write_text(f'base = "digits-cnn"\ndataset = "imagefolder:{tmp_path / "pics"}"\n')
    store = Store(str(tmp_path / "runs"), "pics")
    store.mkdir()
    config.write_config(store, config.prepare(store, load_study(str(study)), "final", fresh=False))

    def decoded(exp, *a, **k):
        assert not exp.dataset.startswith("imagefolder:"), "listing decoded an image folder"

    monkeypatch.setattr(bnrep.data, "check_data", decoded)
    assert cli.main(["list", "--out", str(tmp_path / "runs")]) == 0
    assert [line.split()[3] for line in capsys.readouterr().out.splitlines() if line.startswith("pics ")] == ["yes"]


def test_status_counts_only_complete_work(results, capsys):
    assert cli.main(["status", "--experiment", "digits-cnn", "--out", str(results)]) == 0
    out = capsys.readouterr().out
    assert "hparam     missing   0/2 normalisations searched" in out  # best_hparams but no trials table
    assert "final      missing   0/4 models trained" in out  # a training row without its model file
    assert "report     missing" in out
    # its heading says the sizes: a smoke test's counts (4 models, not the preset's 8); without config.json (a
    # run stopped in its first seconds) the counts are the preset's, which the heading says too
    assert out.splitlines()[0] == (f"{results}/digits-cnn  (at --smoke-test sizes: at most 3 epochs, 2 seeds, up to "
                                   f"256 training images (fewer where the data has fewer), k up to 6)")  # (as the
    # report's note says them; synthetic-resnet18's training split holds 144)
    Store(str(results), "digits-cnn").delete("config.json")
    assert cli.main(["status", "--experiment", "digits-cnn", "--out", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (f"{results}/digits-cnn  (no config.json yet: the run stopped before it wrote it; "
                                   f"the counts are digits-cnn's as named, without that run's flags such as "
                                   f"--smoke-test or --seeds)") and "0/8 models trained" in out, out


def test_status_names_an_interrupted_grid_and_a_running_one(results):
    """A grid stopped (Ctrl-C, a kill) before its first model was saved has Tune's state to resume from: the
    stage is partial, not missing, and says what resumes; while a run holds the lock, that grid is running.
    The sweep likewise."""
    from bnrep.lock import writer_lock
    from bnrep.status import stage_status
    from bnrep.store import GRID, GRID_PLAN, SWEEP, SWEEP_PLAN

    store = Store(str(results), "digits-cnn")
    assert stage_status(str(results), "digits-cnn")[1] == ("final", "missing", "0/4 models trained")
    plan = [{"seed": s, "norm": n, "hparams": {}} for s in (0, 1) for n in ("batch", "none")]
    store.write_json(GRID_PLAN, plan[:3])
    assert stage_status(str(results), "digits-cnn")[1][1] == "missing"  # a plan, but no Tune state: nothing resumes
    store.write_bytes(f"{GRID}/tuner.pkl", b"Tune's state of the interrupted grid")
    store.write_json(SWEEP_PLAN, [{"norm": "none"}])
    store.write_bytes(f"{SWEEP}/tuner.pkl", b"Tune's state of the interrupted sweep")
    store.delete("hparam/best_hparams.json")
    rows = stage_status(str(results), "digits-cnn")
    assert rows[:2] == [("hparam", "partial", "0/2 normalisations searched; unfinished sweep to resume: nobn"),
                        ("final", "partial", "0/4 models trained; unfinished grid to resume: 3 models")]
    with writer_lock(store, "final"):
        assert stage_status(str(results), "digits-cnn")[1] == ("final", "partial",
                                                              "0/4 models trained; grid running: 3 models")


def test_status_without_the_models_code_answers_from_the_store(results, monkeypatch):
    """A study of a researcher's own model, looked at where its code is not (a laptop away from the
    cluster): the analysis' line says what the store holds and why the rest is not known, instead of the
    whole command failing on the import (`bnrep report` too, whose notes ask for the same status)."""
    import bnrep.represent
    from bnrep import status
    from bnrep.models import ModelError

    why = "cannot import mylab for model mylab.nets:net (ModuleNotFoundError: No module named 'mylab')"

    def gone(exp, training=True):
        raise ModelError(why)

    monkeypatch.setattr(bnrep.represent, "model_probes", gone)
    store = Store(str(results), "digits-cnn")
    exp = config.load_experiment(store, "digits-cnn")
    assert status._analysis(store, exp, ["cnn-bn-s0"]) == (
        "analysis", "missing", f"0 parts written; the parts left are known with the model's code and data: {why}")
    store.write_part("kmeans", "cnn-bn-s0-conv1", pd.DataFrame([{"model_id": "cnn-bn-s0", "k": 2}]))
    assert status._analysis(store, exp, ["cnn-bn-s0"]) == (
        "analysis", "unknown", f"1 part written; the parts left are known with the model's code and data: {why}")
    monkeypatch.setattr(status, "stage_status", lambda out, name: [("final", "complete", "4/4 models trained"),
                                                                   status._analysis(store, exp, ["cnn-bn-s0"])])
    assert status.unfinished(str(results), "digits-cnn") == [  # the report's note
        f"digits-cnn: the analysis stage is perhaps not finished (1 part written; the parts left are known with "
        f"the model's code and data: {why}): this report covers what it has done; run the stage again with the "
        f"flags it was started with (or `bnrep run` with them) to finish it."]


def test_a_rerun_with_fewer_seeds_says_the_study_holds_more(results):
    """`bnrep run --seeds 3` on a study of 4 seeds: the grid said '6 of 6 models already trained', the analysis
    and the report then took all 8 models without a word."""
    from bnrep.config import header

    store = Store(str(results), "digits-cnn")
    exp = config.load_experiment(store, "digits-cnn")  # 2 seeds at --smoke-test sizes
    assert "also holds" not in header("final grid", exp, store)
    for s in (2, 3):
        store.write_part("training", f"cnn-bn-s{s}", pd.DataFrame([{"model_id": f"cnn-bn-s{s}", "norm": "batch",
                                                                   "condition": "batch", "seed": s}]))
    assert header("analysis", exp, store).splitlines()[-1] == (
        f"note: {results}/digits-cnn also holds models of seeds 2, 3, beyond this run's 2: they stay in its tables "
        f"and its report (for 2 seeds alone: another --out, or the grid's --fresh: bnrep final or bnrep run)")
    assert "also holds" not in header("final grid", exp.override(seeds=4), store)
    assert "also holds" not in header("final grid", exp, store, fresh=True)  # --fresh deletes the grid's models
    store.write_json("config.json", {**store.read_json("config.json"), "imported": True})
    assert "also holds" not in header("analysis", exp, store)  # imported models: the seeds their CSV gave them


def test_a_rerun_with_fewer_conditions_says_what_the_study_still_holds(results):
    """A study that trained bn-b8 too, rerun with the conditions 'batch; none': its sweep, grid table and
    report still hold bn-b8 (rows are never deleted but by --fresh); each stage's header says so, where the
    output showed three conditions for two asked without a word."""
    from bnrep.config import header

    store = Store(str(results), "digits-cnn")
    exp = config.load_experiment(store, "digits-cnn")
    assert "also holds" not in header("final grid", exp, store)
    store.write_part("training", "cnn-bn-b8-s0", pd.DataFrame([{"model_id": "cnn-bn-b8-s0", "norm": "batch",
                                                               "condition": "bn-b8", "seed": 0}]))
    assert header("final grid", exp, store).splitlines()[-1] == (
        f"note: {results}/digits-cnn also holds results of bn-b8, not among this run's conditions: they stay in its "
        f"tables and its report (for these conditions alone: another --out, or the grid's --fresh: bnrep final or "
        f"bnrep run)")
    assert "also holds" not in header("final grid", exp, store, fresh=True)  # --fresh deletes the grid's models
    assert "also holds" in header("analysis", exp, store, fresh=True)  # (the analysis' deletes its own tables)
    # bn-b8 searched in the sweep, its models gone with a --fresh grid: its sweep trials alone stay, said so (the
    # note said they "stay in its tables and its report", of models neither holds)
    store.write_part("hparam_trials", "bn-b8", pd.DataFrame([{"trial_id": "t1", "norm": "batch", "condition": "bn-b8"}]))
    trials_only = (f"note: {results}/digits-cnn also holds sweep trials of bn-b8 (no models), not among this run's "
                   f"conditions: they stay in results/hparam_trials")
    assert header("final grid", exp, store, fresh=True).splitlines()[-1] == trials_only
    store.delete("results/training/cnn-bn-b8-s0.parquet")
    assert header("analysis", exp, store).splitlines()[-1] == trials_only


def test_bnrep_run_says_the_study_notes_in_its_first_stage_alone(tmp_path, monkeypatch):
    """bnrep run's stages each print their header: the study's notes (what it holds besides this run's
    conditions, no reference condition) came once per training stage; the first stage run says them."""
    import contextlib

    from bnrep import cli, raysession
    from bnrep.config import RunOptions, header
    from bnrep.experiments import get_experiment
    from bnrep.stages import analysis, final, hparam, report

    store = Store(str(tmp_path), "digits-cnn")
    exp = get_experiment("digits-cnn").override(conditions=("batch", "group"))
    store.write_part("training", "cnn-bn-b8-s0", pd.DataFrame([{"model_id": "cnn-bn-b8-s0", "norm": "batch",
                                                               "condition": "bn-b8", "seed": 0}]))
    with_notes = header("final grid", exp, store)
    assert "also holds results of bn-b8" in with_notes and "reference condition" in with_notes, with_notes
    assert "note:" not in header("final grid", exp, store, notes=False)
    seen = []
    for name, module in (("hparam", hparam), ("final", final), ("analysis", analysis)):
        monkeypatch.setattr(module, "run", lambda exp, opts, name=name: seen.append((name, opts.notes)) or 0)
    monkeypatch.setattr(report, "run", lambda out, names: seen.append(("report", None)) or 0)
    monkeypatch.setattr(raysession, "ray_session", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(raysession, "check_resources", lambda *a, **k: None)
    opts = RunOptions(out=str(tmp_path))
    for kw, first in (({}, "hparam"), ({"paper_hparams": True}, "final"), ({"imported": True}, "analysis")):
        seen.clear()
        imported = kw.pop("imported", False)
        assert cli.run_stages(exp, dataclasses.replace(opts, **kw), store, imported) == 0
        assert [n for n, on in seen if on] == [first] and seen[-1] == ("report", None), seen


def test_new_analysis_settings_before_any_analysis_result_are_not_a_conflict(tmp_path):
    """A grid trained with one set of analysis settings, then analysed with others: no analysis result exists
    to mix with, so the new settings hold (it was refused as 'holds analysis results of a different
    configuration'); once a part exists, a change is refused as before."""
    from bnrep.config import UsageError
    from bnrep.experiments import SMOKE, get_experiment

    smoke = get_experiment("digits-cnn").override(**SMOKE)
    store = Store(str(tmp_path), "digits-cnn")
    store.mkdir()
    config.write_config(store, config.prepare(store, smoke, "final", fresh=False))
    other = smoke.override(k_max=5)
    assert config.prepare(store, other, "analysis", fresh=False)["analysis_hash"] != store.read_json(
        "config.json")["analysis_hash"]
    store.write_bytes("results/kmeans/cnn-bn-s0-conv1.parquet", b"")  # (any part: its presence is what counts)
    with pytest.raises(UsageError, match="holds analysis results of a different configuration"):
        config.prepare(store, other, "analysis", fresh=False)


def test_status_of_a_file_as_out_is_one_line(tmp_path, capsys):
    (tmp_path / "runs").write_text("not results")
    assert cli.main(["status", "--out", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr() == ("", f"error: --out {tmp_path / 'runs'} is a file, not a folder of results\n")
    (tmp_path / "runs").unlink()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "digits-cnn").write_text("not a study")  # (it said "no config.json yet", every stage missing)
    for argv in (["--experiment", "digits-cnn"], []):
        assert cli.main(["status", "--out", str(tmp_path / "runs"), *argv]) == 2
        assert capsys.readouterr() == ("", f"error: {tmp_path / 'runs' / 'digits-cnn'} is a file, not a study's folder\n")


def test_status_of_an_unknown_experiment_is_one_line(results, capsys):
    assert cli.main(["status", "--experiment", "nope", "--out", str(results)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: unknown experiment 'nope' (valid: digits-cnn") and err.count("\n") == 1


def test_a_study_name_with_an_out_that_does_not_exist_says_so(tmp_path, capsys):
    """(a typo in --out read as an unknown study, and nothing said of the folder)"""
    assert cli.main(["report", "--experiment", "folder1", "--out", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown experiment 'folder1'") and err.count("\n") == 1
    assert err.endswith(f"; the results folder --out {tmp_path / 'nope'} does not exist\n")
    assert cli.main(["report", "--experiment", "folder1", "--out", str(tmp_path)]) == 2
    assert "does not exist" not in capsys.readouterr().err


def test_status_without_an_experiment_tells_of_every_study_out_holds(tmp_path, capsys):
    """`bnrep status --out runs` where runs holds synthetic-resnet18 and a study of one's own: it told of
    digits-cnn, missing at every stage, and of neither; with nothing there yet, of the default experiment."""
    from bnrep.experiments import get_experiment

    out = tmp_path / "runs"
    for name, preset in (("synthetic-resnet18", "synthetic-resnet18"), ("mine", "digits-cnn")):
        Store(str(out), name).write_json("config.json", {"experiment": get_experiment(preset).override(
            name=name).to_dict()})
    assert cli.main(["status", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert [line for line in said.splitlines() if line.startswith(str(out))] == [f"{out}/mine",
                                                                                 f"{out}/synthetic-resnet18"], said
    assert cli.main(["status", "--out", str(tmp_path / "new")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (f"{tmp_path / 'new'}/digits-cnn  (no such folder: nothing "
                                                       f"has run with this --out yet)")


@pytest.mark.parametrize("argv", [["status"], ["report"], ["hparam"], ["run"]])
def test_a_mistyped_study_name_names_the_studies_out_holds_and_the_closest(argv, tmp_path, capsys):
    """`--experiment mien` where --out holds the study `mine`: the one line lists it with the presets and
    asks about it (the training commands add that a new study needs --dataset); nothing is written."""
    from bnrep.experiments import PRESETS, get_experiment

    out = tmp_path / "runs"
    Store(str(out), "mine").write_json("config.json", {"experiment": get_experiment("digits-cnn").override(
        name="mine").to_dict()})
    before = tree(out)
    assert cli.main([*argv, "--experiment", "mien", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    line = (f"error: unknown experiment 'mien' (valid: {', '.join(PRESETS)}, mine, or a study file NAME.toml); "
            f"did you mean 'mine'?")
    assert err == line + (" (a new study of that name needs --dataset)" if argv[0] in ("hparam", "run") else "") + "\n"
    assert tree(out) == before and not ray.is_initialized()


def test_a_hint_names_the_study_file_of_a_study_out_does_not_hold(tmp_path, capsys):
    """A study run from its file, before --out holds it, is found by that file only: the printed next step
    names the file (a placeholder), not the study's name, which would be unknown there; the analysis,
    where a new study cannot start, does not suggest --dataset."""
    study = tmp_path / "mine.toml"
    study.write_text('base = "digits-cnn"\n')
    out = tmp_path / "runs"
    assert flags.run_stage("final", ["--experiment", str(study), "--smoke-test", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"run `bnrep hparam --experiment <the study file of mine> --out {out}` first" in err, err
    assert flags.run_stage("analysis", ["--experiment", "mien", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown experiment 'mien'") and "--dataset" not in err, err


def test_analysis_takes_training_fields_from_the_trained_config(results):
    """final.py --max-epochs 3 (smoke) then analysis/run.py --k-max 4: the analysis
    keeps the models' training settings and applies only its own flags."""
    store = Store(str(results), "digits-cnn")
    plain = flags.resolve_experiment(flags.build_parser("analysis").parse_args(["--k-max", "4"]))
    exp = config.with_trained_config(store, plain)
    assert exp.max_epochs == 3 and exp.train_size == 256  # as trained (smoke)
    assert exp.k_max == 4 and exp.samples_cluster == plain.samples_cluster  # this run's analysis flags
    assert config.stage_hashes(exp)["train_hash"] == store.read_json("config.json")["train_hash"]


GS_LINE = ("--out gs://bucket/bnrep: bnrep keeps results in a local or shared path, file:// or s3:// only (its "
           "one-writer lock needs create-if-absent writes; for Google Cloud Storage use its S3 endpoint: "
           "s3://BUCKET/PATH?endpoint_override=storage.googleapis.com with HMAC keys)")


@pytest.mark.parametrize("stage,argv,line", [
    ("final", ["--out", "gs://bucket/bnrep"], "error: " + GS_LINE),
    ("hparam", ["--out", ""], "error: --out is empty: give the folder (or URI) to keep results under, such as ./runs"),
    ("hparam", ["--address", "127.0.0.1:1"], "error: no Ray cluster at 127.0.0.1:1 (nothing listens there): check "
     "the address (`ray status` on the head shows it), or leave --address and RAY_ADDRESS unset for a private "
     "local Ray"),
    ("analysis", ["--address", "127.0.0.1"], "error: --address 127.0.0.1: expected HOST:PORT of a Ray head (as "
     "`ray start --head` prints it)"),
    ("hparam", ["--address", "127.0.0.1:99999"], "error: --address 127.0.0.1:99999: port 99999 is not a TCP port "
     "(1-65535); the head's address is HOST:PORT as `ray start --head` prints it"),
    ("final", ["--address", "http://127.0.0.1:1"], "error: --address http://127.0.0.1:1: a Ray head's address has "
     "no scheme: HOST:PORT as `ray start --head` prints it (127.0.0.1:1?); an http:// address is the dashboard's, "
     "for `ray job submit`"),
    ("final", ["--address", "tcp://127.0.0.1:1"], "error: --address tcp://127.0.0.1:1: a Ray head's address has "
     "no scheme: HOST:PORT as `ray start --head` prints it (127.0.0.1:1?)"),  # (at a head's own port it passed the check, and ray.init failed with a traceback)
    ("final", ["--address", "ray://127.0.0.1:10001"], "error: --address ray://127.0.0.1:10001 is a Ray Client "
     "address, which bnrep does not use: run bnrep on a node of the cluster with the head's HOST:PORT (as `ray start "
     "--head` prints it), or on the head (ray submit, Ray Jobs: README, Cluster)"),
])
def test_unreachable_places_are_one_line_before_any_work(stage, argv, line, tmp_path, capsys, monkeypatch):
    """A typo in a cluster address (nothing listens: refused at once) and a results URI bnrep cannot lock."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    rc = flags.run_stage(stage, ["--smoke-test", *argv])
    assert (rc, capsys.readouterr().err.strip()) == (2, line)
    assert not ray.is_initialized() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv", [["status", "--experiment", "digits-cnn"], ["report"], ["report", "--experiment",
                                                                                    "digits-cnn"]])
def test_readers_refuse_a_results_uri_bnrep_does_not_keep_results_in(argv, capsys):
    """status and report read only where stages write: gs:// is one line at once, as for a stage (pyarrow's
    GCS client, with no network, retries for many minutes first); and so is the notebook API."""
    from bnrep import open_results
    from bnrep.config import UsageError

    assert cli.main([*argv, "--out", "gs://bucket/bnrep"]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"error: {GS_LINE}\n")
    with pytest.raises(UsageError, match="^" + re.escape(GS_LINE.replace("--out gs://bucket/bnrep", "out='gs://bucket/"
                                                                              "bnrep'"))):  # its argument's name
        open_results("gs://bucket/bnrep", "digits-cnn")


@pytest.mark.parametrize("uri, line", [
    ("s3://", "--out s3:// names no bucket: give s3://BUCKET or s3://BUCKET/PATH"),
    ("s3://?endpoint_override=127.0.0.1:1", "--out s3://?endpoint_override=127.0.0.1:1 names no bucket"),
    ("s3://bucket/bnrep?endpoint_override=127.0.0.1:1&scheme=http",  # nothing listens there
     "cannot read --out s3://bucket/bnrep?endpoint_override=127.0.0.1:1&scheme=http: "),
])
def test_readers_say_in_one_line_when_an_s3_uri_cannot_be_read(uri, line, capsys, monkeypatch):
    """status, report and the notebook API on an s3:// URI with no bucket, or whose endpoint does not
    answer: one line (they printed pyarrow's traceback). (The endpoint that does not answer: report, which
    runs the same check, is left out; pyarrow retries each read for 6 s.)"""
    from bnrep import open_results
    from bnrep.config import UsageError

    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no credentials looked up on a network
    for k, v in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(k, v)
    for argv in [["status"], ["report"]][: 1 if "bucket" in uri else 2]:
        assert cli.main([*argv, "--out", uri]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(f"error: {line}") and err.count("\n") == 1, err
    with pytest.raises(UsageError, match="^" + re.escape(line.replace(f"--out {uri}", f"out={uri!r}"))):
        open_results(uri, "digits-cnn")


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_address_auto_with_no_cluster_is_one_line(how, tmp_path, capsys, monkeypatch):
    """`auto` (Ray's word for the cluster `ray start` started here) finds none: one line, nothing written.
    Ray's lookup itself is what runs; only what it finds on this machine is set (nothing)."""
    from ray._private import services

    monkeypatch.setattr(services, "find_gcs_addresses", lambda: [])
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if how == "environment":
        monkeypatch.setenv("RAY_ADDRESS", "auto")
    rc = flags.run_stage("final", ["--smoke-test", "--paper-hparams", *(["--address", "auto"] * (how == "flag"))])
    named = "--address auto" if how == "flag" else "RAY_ADDRESS=auto"  # as the user gave it
    assert (rc, capsys.readouterr().err.strip()) == (2, f"error: {named}: no running Ray cluster on this "
                                                        "machine (start one with `ray start --head`, or leave "
                                                        "--address and RAY_ADDRESS unset for a private local Ray)")
    assert not ray.is_initialized() and not list(tmp_path.iterdir())


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="a /proc file system (Linux)")
def test_an_out_where_no_folder_can_be_made_is_one_line(capsys):
    """/proc looks writable to the checks (a directory, access granted to root) but takes no folder: the
    lock's first write fails, and says so in one line naming where."""
    rc = flags.run_stage("final", ["--smoke-test", "--paper-hparams", "--out", "/proc/bnrep-runs"])
    err = capsys.readouterr().err.strip()
    assert rc in (1, 2) and len(err.splitlines()) == 1 and err.startswith("error: cannot write"), err
    assert err.endswith("; free space or fix permissions there, then rerun the same command (results already "
                        "written are kept)"), err  # what to do, as every refused write says
    assert not os.path.exists("/proc/bnrep-runs") and not ray.is_initialized()


@pytest.mark.parametrize("refused", [True, False])
def test_a_cluster_that_refuses_to_be_joined_is_one_line(refused, monkeypatch, capfd):
    """A Ray head that answers but refuses this process (its token authentication, RAY_AUTH_MODE unset
    here) or its connection: one line saying what to set, not Ray's 70-line traceback, nor the warning its
    C++ client writes to stderr once a second while it retries (20 lines). (The refusal's exceptions are
    raised as ray.init raises them: a ConnectionError from a RuntimeError whose context is the
    AuthenticationError.)"""
    from ray.exceptions import AuthenticationError

    from bnrep.config import UsageError
    from bnrep.address import join

    def init(address, **kw):
        for _ in range(20):  # as gcs_client.cc does, on file descriptor 2
            os.write(2, b"[2026-12-07 01:51:53,819 W 19556 19556] gcs_client.cc:210: Failed to get cluster ID "
                        b"from GCS server: Unauthenticated: RPC error: InvalidAuthToken\n")
        try:
            try:
                raise (AuthenticationError("Authentication token is missing or incorrect") if refused
                       else OSError("connection reset"))
            except Exception:
                raise RuntimeError("Failed to connect to GCS.")  # (its context: the refusal)
        except RuntimeError as e:
            raise ConnectionError(f"Failed to connect to Ray cluster at {address}") from e

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(UsageError) as e:
        join(SimpleNamespace(init=init), "10.0.0.1:6379", {})
    assert str(e.value) == (
        "the Ray cluster at 10.0.0.1:6379 uses token authentication and refused this process (RAY_AUTH_MODE is "
        "unset): export RAY_AUTH_MODE=token, with the cluster's token in RAY_AUTH_TOKEN, in the file "
        "RAY_AUTH_TOKEN_PATH names, or in ~/.ray/auth_token (README, Security)" if refused else
        "cannot join the Ray cluster at 10.0.0.1:6379: Failed to connect to Ray cluster at 10.0.0.1:6379")
    assert capfd.readouterr() == ("", "")  # the one line above is all the user sees

    def joins(address, **kw):
        os.write(2, b"a line Ray writes while it joins\n")

    join(SimpleNamespace(init=joins), "10.0.0.1:6379", {})
    assert capfd.readouterr() == ("", "a line Ray writes while it joins\n")  # shown once joined


def test_ray_address_from_the_environment_is_checked_too(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert flags.run_stage("final", ["--smoke-test", "--paper-hparams"]) == 2
    assert capsys.readouterr().err.startswith("error: no Ray cluster at 127.0.0.1:1 (nothing listens there)")


@pytest.mark.parametrize("case", ["path unreadable, a cluster", "path unreadable, a private Ray", "path empty",
                                  "no token, a cluster", "empty --address"])
def test_a_process_without_the_token_it_is_told_to_use_is_one_line(case, tmp_path, capsys, monkeypatch):
    """RAY_AUTH_MODE=token with a token file that cannot be read: Ray's client ended the process with exit 1 and
    no word (joining a cluster), or ray.init raised a 38-line traceback (a private Ray). Neither starts now. An
    empty --address ran a private Ray without a word."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    gone, empty = tmp_path / "gone", tmp_path / "empty"
    empty.write_text("\n")
    path, address, said = {
        "path unreadable, a cluster": (gone, "127.0.0.1:1", f"RAY_AUTH_TOKEN_PATH={gone} cannot be read (No such file or "
                                                            f"directory) and RAY_AUTH_TOKEN is unset; put the "
                                                            f"cluster's token there, or export RAY_AUTH_TOKEN"),
        "path unreadable, a private Ray": (gone, None, f"RAY_AUTH_TOKEN_PATH={gone} cannot be read (No such file or "
                                                       f"directory) and RAY_AUTH_TOKEN is unset; fix or unset "
                                                       f"RAY_AUTH_TOKEN_PATH (a private Ray makes ~/.ray/auth_token "
                                                       f"itself)"),
        "path empty": (empty, "127.0.0.1:1", f"RAY_AUTH_TOKEN_PATH={empty} is empty"),
        "no token, a cluster": (None, "127.0.0.1:1", f"{tmp_path}/.ray/auth_token cannot be read"),
        "empty --address": (None, "", "--address is empty: give the head's HOST:PORT"),
    }[case]
    if path:
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    else:
        monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    argv = ["--smoke-test", "--paper-hparams", *(["--address", address] if address is not None else [])]
    assert flags.run_stage("final", argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and said in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)  # a token in the environment: the next check (nothing listens)
    if address:
        assert flags.run_stage("final", argv) == 2
        assert capsys.readouterr().err.startswith("error: no Ray cluster at 127.0.0.1:1 (nothing listens there)")


@pytest.mark.parametrize("server", ["http", "silent"])
def test_an_address_where_something_other_than_ray_listens_is_one_line(server, tmp_path, capsys, monkeypatch):
    """An HTTP server (the dashboard's port given by mistake) or a listener that never answers: Ray would
    retry for minutes; the check says so at once. A Ray head's GCS answers (the cluster tests join one)."""
    import http.server
    import socket
    import threading

    from bnrep import address

    monkeypatch.setattr(address, "CONNECT_TIMEOUT_S", 2)  # the silent listener's wait, shortened
    if server == "http":
        quiet = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
        srv = http.server.HTTPServer(("127.0.0.1", 0), quiet)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        port, stop = srv.server_address[1], srv.shutdown
    else:
        srv = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel's backlog), never writes
        port, stop = srv.getsockname()[1], srv.close
    monkeypatch.chdir(tmp_path)
    try:
        rc = flags.run_stage("final", ["--smoke-test", "--paper-hparams", "--address", f"127.0.0.1:{port}"])
    finally:
        stop()
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == (f"error: no Ray cluster at 127.0.0.1:{port} (something listens there, but not a Ray "
                               f"head: it does not answer as gRPC does; the dashboard's port is another): check the "
                               f"address (`ray status` on the head shows it)")
    assert not ray.is_initialized() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("text,why", [('{"experiment": {"name": ', "is not valid JSON (Expecting value: line 2 "
                                       "column 1 (char 25))"), ("[1, 2]", "is not a JSON object")])
def test_hand_edited_config_json_is_one_line_naming_the_file(text, why, tmp_path, capsys):
    """Every stage and `bnrep status` name the file; nothing under --out changes."""
    from bnrep.status import stage_status

    out = tmp_path / "runs"
    (out / "digits-cnn").mkdir(parents=True)
    (out / "digits-cnn" / "config.json").write_text(text + "\n")
    before = tree(out)
    line = f"error: {out}/digits-cnn/config.json {why}"
    for stage, argv in [("hparam", []), ("final", ["--paper-hparams"]), ("analysis", []), ("report", [])]:
        assert flags.run_stage(stage, [*argv, "--out", str(out)]) == 2, stage
        err = capsys.readouterr().err.strip()
        assert err.startswith(line) and len(err.splitlines()) == 1, (stage, err)
    assert {state for _, state, _ in stage_status(str(out), "digits-cnn")} == {"unknown"}
    assert tree(out) == before and not ray.is_initialized()


@pytest.mark.parametrize("how", ["refused", "region"])
def test_unreachable_bucket_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, how):
    """An s3:// --out that cannot be reached: nothing listens at its endpoint, or its region cannot be
    resolved (the first network call, when the store opens: a stand-in raises as pyarrow does offline)."""
    import bnrep.store

    out = "s3://bucket/runs?endpoint_override=127.0.0.1:1&scheme=http"  # port 1: connection refused
    if how == "region":
        def offline(out):
            raise OSError("When resolving region for bucket 'bucket': AWS Error NETWORK_CONNECTION during "
                          "HeadBucket operation: curlCode: 6, Could not resolve hostname")
        monkeypatch.setattr(bnrep.store, "resolve", offline)
        out = "s3://bucket/runs"
    rc = flags.run_stage("hparam", ["--smoke-test", "--out", out])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: cannot write to --out {out}: ") and "bucket" in err
    assert not ray.is_initialized()


def test_a_stage_that_fails_in_bnrep_run_says_to_rerun_the_same_command(monkeypatch, tmp_path, capsys):
    """`bnrep run --smoke-test` resumes only with --smoke-test: the hint names no other command."""
    import contextlib

    from bnrep.experiments import get_experiment
    from bnrep.stages import report

    monkeypatch.setattr("bnrep.raysession.ray_session", lambda *a: contextlib.nullcontext())
    monkeypatch.setattr("bnrep.raysession.check_resources", lambda *a: None)
    monkeypatch.setattr(report, "run", lambda *a, **k: 1)  # e.g. the report could not be written
    opts = config.RunOptions(out=str(tmp_path), paper_hparams=True)
    monkeypatch.setattr("bnrep.stages.final.run", lambda *a: 0)
    monkeypatch.setattr("bnrep.stages.analysis.run", lambda *a: 0)
    assert cli.run_stages(get_experiment("digits-cnn"), opts, Store(str(tmp_path), "digits-cnn")) == 1
    assert capsys.readouterr().err == "error: stage report failed (exit 1); rerun the same command to resume\n"


def test_status_and_report_take_a_study_file_as_the_other_stages_do(tmp_path, capsys):
    """--experiment path/to/study.toml names the study the file defines (its `name`), in status and report too."""
    from bnrep.studies import load_study
    from tests.report_fixtures import make_tables, write_tables

    study, out = tmp_path / "files" / "bs.toml", tmp_path / "runs"
    study.parent.mkdir()
    study.write_text('base = "digits-cnn"\nname = "leaves"\n')
    assert cli.main(["status", "--experiment", str(study), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"{out}/leaves  (no such folder: nothing has run with this --out yet)"  # (or a typo)
    assert printed[1].split() == ["hparam", "missing", "no", "results"]
    store = Store(str(out), "leaves")
    store.mkdir()
    config.write_config(store, config.prepare(store, load_study(str(study)), "final", fresh=False))
    tables = make_tables("digits-cnn", seeds=2)  # (the study's recipe is digits-cnn's)
    write_tables(out, "leaves", {k: t.assign(experiment="leaves") if "experiment" in t else t for k, t in tables.items()})
    assert flags.run_stage("report", ["--experiment", str(study), "--out", str(out)]) == 0
    assert (out / "leaves" / "report" / "report.html").is_file() and not (out / "bs.toml").exists()
    assert cli.main(["status", "--experiment", str(study), "--out", str(out)]) == 0
    assert "report     complete" in capsys.readouterr().out


def test_a_command_with_fresh_stopped_says_to_rerun_it_without_fresh(capsys):
    """Rerun as typed, --fresh would start over again: the line says to leave it out."""
    def stopped():
        raise KeyboardInterrupt

    assert flags.main_guard(stopped, fresh=True) == 130
    assert capsys.readouterr().err == "interrupted: rerun the same command without --fresh to resume\n"
    assert flags.main_guard(stopped) == 130
    assert capsys.readouterr().err == "interrupted: rerun the same command to resume\n"
    # a task that failed, a write the disk refused: what was written is kept, which --fresh would delete
    from bnrep.progress import task_failed
    from bnrep.store import cannot_write

    for error, said in ((task_failed(ValueError("bad forward"), "analysis", "measuring m-s0 conv2"),
                         "every part written is kept (rerun the same command without --fresh to resume once it is "
                         "fixed)\n"),
                        (cannot_write("results/x.parquet", "No space left on device"),
                         "then rerun the same command without --fresh (results already written are kept)\n")):
        def fails():
            raise error

        assert flags.main_guard(fails, fresh=True) == 1
        assert capsys.readouterr().err.endswith(said)
        assert flags.main_guard(fails) == 1
        assert capsys.readouterr().err.endswith(said.replace(" without --fresh", ""))


def test_a_printed_command_pastes_back_as_it_reads(tmp_path):
    """The fix-it commands in messages quote a results folder with a space (pasted, `--out /a/out späce` was
    two arguments); the default folder is left out."""
    import shlex

    out = str(tmp_path / "out späce ü")
    line = config.command("final", "digits-cnn", out)
    assert shlex.split(line) == ["bnrep", "final", "--experiment", "digits-cnn", "--out", out]
    assert config.command("final", "digits-cnn", "./runs") == config.command("final", "digits-cnn", "runs/") == \
        "bnrep final --experiment digits-cnn"


def test_a_header_says_when_a_study_is_at_smoke_test_sizes(tmp_path):
    """--smoke-test, or a study made with it and read back from its config.json without the flag: the
    header of every stage says so (a later run keeps the study's sizes); a full-size study's does not."""
    from bnrep.experiments import Experiment

    parse, store = flags.build_parser("final").parse_args, Store(str(tmp_path), "mine")
    said = "| final grid at --smoke-test sizes |"
    small = flags.resolve_experiment(parse(["--experiment", "mine", "--dataset", "digits", "--smoke-test"]))
    assert said in config.header("final grid", small, store)
    again = Experiment.from_dict(json.loads(json.dumps(small.to_dict())))  # as config.json gives it back
    assert again == small and said in config.header("final grid", again, store)
    for argv in ([], ["--experiment", "mine", "--dataset", "digits"], ["--max-epochs", "3"]):
        assert "smoke-test" not in config.header("final grid", flags.resolve_experiment(parse(argv)), store)


def test_a_study_with_no_reference_condition_is_told_before_it_trains(tmp_path):
    """Without `none` among the conditions and no --reference, every claim of the report is 'not evaluated':
    said when training starts, not first by the report hours later."""
    import pandas as pd

    parse = flags.build_parser("final").parse_args
    store = Store(str(tmp_path), "digits-cnn")
    note = ("note: digits-cnn has no models of its reference condition 'none': the report's claims compare with it, "
            "so none will be judged; add none to the conditions, or name one of batch, group with --reference TAG")
    without = flags.resolve_experiment(parse(["--norms", "batch,group"]))
    assert note in config.header("final grid", without, store) and note in config.header("hparam sweep", without, store)
    assert note not in config.header("analysis", without, store)  # (the training stages said it)
    for argv in ([], ["--norms", "batch,group", "--reference", "group"], ["--norms", "batch,none"]):
        assert "reference condition" not in config.header("final grid", flags.resolve_experiment(parse(argv)), store)
    # bnrep import takes no --reference: the note names the command that does
    imported = config.header("import", without, store)
    assert ("or name one of batch, group with `bnrep run --experiment digits-cnn --out "
            f"{tmp_path} --reference TAG`") in imported, imported
    # a run of some conditions of a study that holds models of the reference: the report judges against them
    store.write_part("training", "cnn-none-s0", pd.DataFrame([{"model_id": "cnn-none-s0", "norm": "none",
                                                               "condition": "none", "seed": 0}]), "h")
    header = config.header("final grid", without, store)
    assert "reference condition" not in header and "also holds results of none" in header, header


def test_a_printed_command_for_a_smoke_test_folder_carries_the_flag(results, tmp_path):
    """Pasted without --smoke-test, a stage command on a smoke test's results was refused as a different
    configuration; `bnrep report` takes no such flag, and other folders get none."""
    import shlex

    for stage in ("hparam", "final", "analysis", "run"):
        argv = shlex.split(config.command(stage, "digits-cnn", str(results)))
        assert argv == ["bnrep", stage, "--experiment", "digits-cnn", "--smoke-test", "--out", str(results)]
        args = flags.build_parser(stage).parse_args(argv[2:])
        exp = flags.resolve_experiment(args)
        assert config.prepare(Store(str(results), exp.name), exp, "final", fresh=False)  # not refused
    assert "--smoke-test" not in config.command("report", "digits-cnn", str(results))
    assert "--smoke-test" not in config.command("final", "digits-cnn", str(tmp_path / "elsewhere"))
    store = Store(str(tmp_path / "full"), "digits-cnn")  # the preset itself, trained in full
    store.mkdir()
    full = flags.resolve_experiment(flags.build_parser("final").parse_args([]))
    config.write_config(store, config.prepare(store, full, "final", fresh=False))
    assert "--smoke-test" not in config.command("final", "digits-cnn", str(tmp_path / "full"))


def test_a_report_asked_for_while_a_run_writes_the_results_names_that_run(tmp_path, capsys):
    """(it said to run bnrep final first, which the running writer's lock then refused)"""
    from bnrep import lock

    store = Store(str(tmp_path / "runs"), "digits-cnn")
    held = lock.acquire(store, "final", renew=False)
    try:
        rc = cli.main(["report", "--out", str(tmp_path / "runs")])
        err = capsys.readouterr().err.strip()
        assert rc != 0 and err.splitlines()[-1].endswith(
            f"yet: final on host {held.record['host']}, pid {held.record['pid']}, is writing them; report once it "
            f"is done"), err
    finally:
        held.release()


def test_run_draws_the_report_after_its_ray_session(tmp_path, capsys, monkeypatch):
    """`bnrep run`'s report stage runs once Ray is shut down: its figures are drawn by processes forked from
    the driver (bnrep.drawing), which must not copy a running Ray; the stages before it run inside Ray."""
    from bnrep.stages import analysis, final, report

    seen = []
    monkeypatch.setattr(final, "run", lambda exp, opts: seen.append(("final", ray.is_initialized())) or 0)
    monkeypatch.setattr(analysis, "run", lambda exp, opts: seen.append(("analysis", ray.is_initialized())) or 0)
    monkeypatch.setattr(report, "run", lambda out, names: seen.append(("report", ray.is_initialized())) or 0)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cli.main(["run", "--smoke-test", "--paper-hparams", "--out", str(tmp_path / "runs")]) == 0
    assert seen == [("final", True), ("analysis", True), ("report", False)]
    assert "==== stage 3/3: report" in capsys.readouterr().out


@pytest.mark.parametrize("thread", [False, True])
def test_a_command_runs_its_exit_handlers_and_waits_for_its_threads(thread, tmp_path):
    """A command's process ends without Python's teardown of its modules (bnrep.flags.exit_process), as a
    normal exit otherwise: its exit handlers run, a thread still running when it returns is waited for,
    and its output and exit status are complete."""
    marks = tmp_path / "marks"
    marks.mkdir()
    env = injected(BNREP_EXIT_MARKS=str(marks), **({"BNREP_EXIT_THREAD": "1"} if thread else {}))
    for argv, rc, said in ((["list"], 0, "synthetic-resnet18"),  # the last line of its table
                           (["status", "--experiment", "nosuch"], 2, "error: unknown experiment 'nosuch'")):
        r = subprocess.run([sys.executable, "-m", "bnrep", *argv, "--out", str(tmp_path / "runs")], cwd=tmp_path,
                           capture_output=True, text=True, env=env)
        assert r.returncode == rc and said in r.stdout + r.stderr, r.stdout[-1000:] + r.stderr[-1000:]
        assert sorted(p.name for p in marks.iterdir()) == ["atexit", "thread"][: 1 + thread]
        for p in marks.iterdir():
            p.unlink()


@pytest.mark.parametrize("where", ["full", "closed"])
def test_output_that_cannot_be_written_is_one_line(where, tmp_path):
    """Standard output on a full device (`> /dev/full`) or a pipe whose reader has gone: one line on stderr
    and exit 1, not a traceback, and no second complaint from the process's exit."""
    if where == "full":
        out = os.open("/dev/full", os.O_WRONLY)
        said = "error: cannot write: No space left on device"
    else:
        reader, out = os.pipe()
        os.close(reader)  # gone before the command writes a byte
        said = "error: cannot write: Broken pipe (its reader has gone)"
    try:
        for argv in (["list"], ["status"]):
            r = subprocess.run([sys.executable, "-m", "bnrep", *argv, "--out", str(tmp_path)], cwd=tmp_path,
                               stdout=out, stderr=subprocess.PIPE, text=True, env=injected())
            assert (r.returncode, r.stderr) == (1, said + "\n"), (argv, r.returncode, r.stderr[-2000:])
    finally:
        os.close(out)


@pytest.mark.parametrize("argv", [["status"], ["report"], ["report", "--all"], ["final", "--paper-hparams"],
                                  ["run", "--smoke-test"], ["analysis"]])
def test_a_study_s_own_folder_as_out_is_one_line_naming_the_folder_above(argv, results, capsys):
    """`--out runs/digits-cnn` (the study's folder, not the folder of studies): status listed an empty
    runs/digits-cnn/digits-cnn and the report suggested a command that would nest a new study inside it."""
    study = results / "digits-cnn"
    before = tree(results)
    rc = (cli.main([*argv, "--out", str(study)]) if argv[0] in ("status", "run")
          else flags.run_stage(argv[0], [*argv[1:], "--out", str(study)]))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == (f"error: --out {study} is a study's own folder (its config.json is there): give the "
                               f"folder that holds it, --out {results}"), err
    assert tree(results) == before and not ray.is_initialized()


def test_holding_stderr_where_there_is_none():
    """A process without file descriptor 2 (a daemon's) joins as any other: nothing to hold back."""
    code = ("from bnrep.address import held_stderr\nwith held_stderr() as said:\n    x = 1\n"
            "print(said)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=False, stdout=subprocess.PIPE, text=True,
                       preexec_fn=lambda: os.close(2))
    assert (r.returncode, r.stdout) == (0, "[b'']\n")


def test_a_ctrl_c_after_an_earlier_commands_sigterm_is_a_ctrl_c(capsys):
    """STOPPED_BY outlived its command: in one process (bnrep.run, twice), a Ctrl-C after a run that SIGTERM
    stopped was 'stopped (SIGTERM)', exit 143."""
    import signal

    from bnrep.raysession import STOPPED_BY

    def interrupted():
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGTERM)
    try:
        STOPPED_BY.append(signal.SIGTERM)  # an earlier command's
        assert flags.main_guard(interrupted) == 130
        assert capsys.readouterr().err.startswith("interrupted: ")
    finally:
        STOPPED_BY.clear()
        signal.signal(signal.SIGTERM, before)


def test_sighup_stops_a_command_as_sigterm_does_unless_nohup_ignores_it(capsys):
    """A closed terminal or a dropped SSH connection (SIGHUP) killed a command without its cleanup (the lock
    held, Ray's processes left): it now stops as SIGTERM does, one line, exit 129. Under `nohup` (SIGHUP
    ignored) the command goes on."""
    import signal

    from bnrep.raysession import STOPPED_BY

    def hung_up():
        signal.raise_signal(signal.SIGHUP)
        return 0

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        assert flags.main_guard(hung_up) == 129
        assert capsys.readouterr().err == "stopped (SIGHUP): rerun the same command to resume\n"
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
        assert flags.main_guard(hung_up) == 0
        assert capsys.readouterr().err == ""
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        STOPPED_BY.clear()
        for s, h in before.items():
            signal.signal(s, h)


def test_an_error_that_a_ctrl_c_caused_is_the_ctrl_c(capsys):
    """A Ctrl-C that cut an import midway (numpy's, under scikit-learn's) surfaced later as a RecursionError
    traceback, exit 1: the command was interrupted, and says so (130). Without a Ctrl-C the error is its own;
    SIGINT's handler is Python's again afterwards."""
    import signal

    def import_cut_midway():
        try:
            signal.raise_signal(signal.SIGINT)  # the handler runs here: KeyboardInterrupt
        except KeyboardInterrupt:
            pass  # a library that met it and went on, half-imported
        raise RecursionError("maximum recursion depth exceeded")

    def plain_bug():
        raise RecursionError("maximum recursion depth exceeded")

    def connection_cut():  # an OSError of no output errno, and an error of bnrep's own, after the Ctrl-C
        with contextlib.suppress(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        raise ConnectionError("the GCS closed the connection")

    def config_cut():
        with contextlib.suppress(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        raise flags.UsageError("cannot import mylab.nets (KeyboardInterrupt)")

    signal.signal(signal.SIGINT, signal.default_int_handler)  # a command in a terminal's (a suite started in the
    # background ignores SIGINT; the autouse fixture ctrl_c_as_found puts it back)
    assert flags.main_guard(import_cut_midway) == 130
    assert capsys.readouterr().err == "interrupted: rerun the same command to resume\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    for cut in (connection_cut, config_cut):  # (the first was a traceback, the second 'error: ...', exit 2)
        assert flags.main_guard(cut) == 130
        assert capsys.readouterr().err == "interrupted: rerun the same command to resume\n"
    with pytest.raises(RecursionError):
        flags.main_guard(plain_bug)


def test_a_failed_task_quotes_its_error_whole_or_cut_between_words():
    """A model's one-line error (about 230 characters) was cut at 160 in the middle of its cause's word ('boom in
    a wo'); a library's long line is cut between words, marked."""
    from bnrep.datasets import ONE_LINE_MAX, one_line
    from bnrep.models import ModelError
    from bnrep.progress import task_failed

    own = ModelError("mylab.nets:flag_fails's forward pass fails on 2 images of 1x8x8, and on every other size from "
                     "8x8 to 224x224 and channel count tried: RuntimeError: boom in a worker's eval forward")
    assert f"ModelError: {own}; the other tasks were stopped" in str(task_failed(own, "analysis", "extracting m"))
    long = "Traceback (most recent call last):\n  ...\n" + "word " * 100 + "end"
    cut = one_line(RuntimeError(long))
    assert cut.endswith(" ...") and len(cut) <= ONE_LINE_MAX + 4 and cut[:-4].split(" ")[-1] == "word"


def test_a_grid_whose_trials_leave_no_results_here_fails_in_one_line(tmp_path, monkeypatch, capsys):
    """Trials that wrote where the driver does not look (a node with a disk of its own at --out's path) left the
    grid 'done' with nothing in the training table: the stage ended in a KeyError traceback, and so did every
    rerun. Trained twice and still missing: one line, exit 1."""
    from bnrep.stages import final

    monkeypatch.setattr(final, "run_grid", lambda *a, **k: None)  # trials that end, their results elsewhere
    out = tmp_path / "runs"
    assert flags.run_stage("final", ["--smoke-test", "--paper-hparams", "--out", str(out)]) == 1
    assert capsys.readouterr().err == (f"error: 4 of the grid's models ended without their results in {out}/digits-cnn "
                                       f"(first cnn-bn-s0), trained twice: were they trained on a node that does not "
                                       f"share that path? Every node must see it (a shared filesystem), or give an "
                                       f"s3:// URI\n")
