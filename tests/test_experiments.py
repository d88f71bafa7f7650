"""Experiments: the norms and eps lists, old config.json, learning rate per norm, presets."""

import json

import pytest
import torch

from bnrep.data import load_data
from bnrep.experiments import DEFAULT_EXPERIMENT, PRESETS, ConfigError, Experiment, get_experiment
from bnrep.experiments import PAPER_NORMS as NORMS
from bnrep.models import BUILTIN, build_model
from bnrep.norms import NAMES
from bnrep.probes import find_probes
from bnrep.store import Store

BASE = get_experiment("synthetic-cnn")

# config.json["experiment"] as the code before the norm axis wrote it (commit 6959f65:
# synthetic-vgg16 with --eps 0.01 --seeds 3): eps a float, no norms field.
OLD_CONFIG = json.loads("""{"name": "synthetic-vgg16", "dataset": "synthetic", "arch": "vgg16",
 "optimizer": "adam", "lr": 0.001, "lr_nobn": 0.0001, "momentum": 0.0, "lr_gamma": 0.99,
 "lr_step_epochs": 1, "batch_size": 32, "max_epochs": 5, "stop": "early-stop", "patience": 0.2,
 "weight_decay": 0.0, "val_size": 0.1, "test_fraction": 0.2, "train_size": null, "split_seed": 0,
 "image_shape": [3, 32, 32], "num_images": 200, "lr_range": [1e-05, 0.01], "momentum_choices": [0.0],
 "num_samples": 2, "sweep_max_epochs": null, "seeds": 3, "samples_sparsity": 100, "samples_cluster": 150,
 "k_min": 2, "k_max": 15, "n_init": 3, "eps": 0.01, "channel_layers": [6, 10, 13], "first_shown_layer": 6,
 "description": "seeded class-structured 3x32x32 images through VGG16, for tests"}""")

NORM_NAMES = ", ".join(NAMES)  # the table's (a new entry joins every message)
MODEL_NAMES = f"{', '.join(BUILTIN)}, torchvision:NAME, timm:NAME, or package.module:function"
BAD = [  # (case, field changes, message)
    ("unknown norm", {"norms": ("batch", "batchnorm")},
     f"synthetic-cnn: unknown norm 'batchnorm' (valid: {NORM_NAMES}); did you mean batch?"),
    ("unknown norm in a flag", {"norms": "batch,bn"},
     f"synthetic-cnn: unknown norm 'bn' (valid: {NORM_NAMES}); did you mean batch?"),
    ("group count not a number", {"norms": "group:x"},
     "synthetic-cnn: group:x: group:G needs a whole number G >= 1"),
    ("group count zero", {"norms": "group:0"},
     "synthetic-cnn: group:0: group:G needs a whole number G >= 1"),
    ("empty norms", {"norms": ()}, f"synthetic-cnn: norms is empty: name at least one of {NORM_NAMES}"),
    ("empty norms flag", {"norms": ""}, f"synthetic-cnn: norms is empty: name at least one of {NORM_NAMES}"),
    ("duplicate norm", {"norms": ("batch", "none", "batch")}, "synthetic-cnn: norms lists batch more than once"),
    ("duplicate norm flag", {"norms": "none,group,none,group"},
     "synthetic-cnn: norms lists group, none more than once"),
    ("norms not a list", {"norms": 3.5}, f"synthetic-cnn: unknown norm '3.5' (valid: {NORM_NAMES})"),
    ("negative eps", {"eps": (0.0, -0.1)}, "synthetic-cnn: eps thresholds must be >= 0, got 0, -0.1"),
    ("nan eps", {"eps": float("nan")}, "synthetic-cnn: eps thresholds must be >= 0, got nan"),
    ("duplicate eps", {"eps": (0.01, 0, 0.01)}, "synthetic-cnn: eps lists 0.01 more than once"),
    ("duplicate eps, int and float", {"eps": "0,0.0"}, "synthetic-cnn: eps lists 0 more than once"),
    ("empty eps", {"eps": ()}, "synthetic-cnn: eps is empty: give at least one threshold (the paper's: 0)"),
    ("eps not numbers", {"eps": "0,abc"}, "synthetic-cnn: eps must be a list of numbers, got ['0', 'abc']"),
    ("unknown model", {"model": "resnet50"},
     f"synthetic-cnn: unknown model 'resnet50' (valid: {MODEL_NAMES}); did you mean torchvision:resnet50?"),
    ("model spec with a path", {"model": "my/nets.py:net"}, "synthetic-cnn: model 'my/nets.py:net' names a file; a "
     "model in your own code is module:function: give nets:net, run from my or with it on PYTHONPATH"),
    ("model spec with a dotted path", {"model": "my.nets/x:net"}, f"synthetic-cnn: unknown model 'my.nets/x:net' "
     f"(valid: {MODEL_NAMES})"),
]


@pytest.mark.parametrize("changes,message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_values_are_one_line_config_errors(changes, message):
    for make in (lambda: BASE.override(**changes),
                 lambda: Experiment.from_dict({**BASE.to_dict(), **changes})):
        with pytest.raises(ConfigError) as err:
            make()
        assert str(err.value) == message
        assert "\n" not in str(err.value)


LISTS = [  # (case, field, given, stored)
    ("norms default", "norms", None, ("batch", "none")),
    ("norms canonical order", "norms", ("none", "layer", "batch"), ("batch", "layer", "none")),
    ("norms from a flag", "norms", "none, group", ("group", "none")),
    ("norms from JSON", "norms", ["layer"], ("layer",)),
    ("eps default", "eps", None, (0.0,)),
    ("eps one float (old config)", "eps", 0.01, (0.01,)),
    ("eps one int", "eps", 0, (0.0,)),
    ("eps sorted", "eps", (0.1, 0.0, 1e-3), (0.0, 1e-3, 0.1)),
    ("eps from a flag", "eps", "0,1e-3,1e-2,1e-1", (0.0, 1e-3, 1e-2, 1e-1)),
    ("eps from JSON", "eps", [1e-2, 0], (0.0, 1e-2)),
]


@pytest.mark.parametrize("field,given,stored", [c[1:] for c in LISTS], ids=[c[0] for c in LISTS])
def test_list_fields_are_normalised(field, given, stored):
    e = BASE.override(**{field: given})
    assert getattr(e, field) == stored
    assert all(type(v) is type(stored[0]) for v in getattr(e, field))
    assert Experiment.from_dict(json.loads(json.dumps(e.to_dict()))) == e


def test_old_config_loads():
    e = Experiment.from_dict(OLD_CONFIG)
    assert e.norms == ("batch", "none")  # what runs before the norm axis trained
    assert e.eps == (0.01,)
    assert e == get_experiment("synthetic-vgg16").override(eps=0.01, seeds=3)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_json(name):
    e = PRESETS[name]
    assert Experiment.from_dict(json.loads(json.dumps(e.to_dict()))) == e


LR = [  # (preset, norm, lr): lr_nobn only for norm none, else lr
    ("cifar10-vgg16", "batch", 1e-3), ("cifar10-vgg16", "group", 1e-3), ("cifar10-vgg16", "layer", 1e-3),
    ("cifar10-vgg16", "none", 1e-4),
    ("cifar10-resnet18", "none", 1e-4), ("cifar10-resnet18", "layer", 1e-3),
    ("digits-cnn", "batch", 0.01), ("digits-cnn", "none", 0.01),  # lr_nobn None: the same lr
]


@pytest.mark.parametrize("preset,norm,lr", LR, ids=[f"{p}-{n}" for p, n, _ in LR])
def test_lr_per_norm(preset, norm, lr):
    e = get_experiment(preset)
    assert e.lr_for(norm) == lr
    momentum = 0.99 if e.optimizer == "sgd" else 0.0
    assert e.paper_hparams(norm) == {"lr": lr, "momentum": momentum}


def test_a_conditions_lr_is_its_lr_with_norm_none_too():
    e = get_experiment("cifar10-vgg16").override(conditions="batch; none; nb-fast:none,lr=0.003; bn-fast:batch,lr=0.003")
    hp = {n: e.for_condition(n).paper_hparams(n)["lr"] for n in e.norms}
    assert hp == {"batch": 1e-3, "bn-fast": 0.003, "none": 1e-4, "nb-fast": 0.003}  # not the preset's lr_nobn
    assert e.for_condition("nb-fast").lr_range == (0.003, 0.003) and e.for_condition("none").lr_range == e.lr_range


def test_lr_for_unknown_norm():
    with pytest.raises(ValueError, match="unknown norm 'bn'"):
        get_experiment("digits-cnn").lr_for("bn")


PRESET_TABLE = [  # (preset, dataset, arch, norms)
    ("digits-cnn", "digits", "cnn", ("batch", "none")),
    ("digits-cnn-norms", "digits", "cnn", NORMS),
    ("cifar10-vgg16", "cifar10", "vgg16", ("batch", "none")),
    ("cifar10-vgg16-norms", "cifar10", "vgg16", NORMS),
    ("cifar10-resnet18", "cifar10", "resnet18", NORMS),
    ("synthetic-resnet18", "synthetic", "resnet18", NORMS),
]


@pytest.mark.parametrize("preset,dataset,arch,norms", PRESET_TABLE, ids=[c[0] for c in PRESET_TABLE])
def test_presets(preset, dataset, arch, norms):
    e = get_experiment(preset)
    assert (e.dataset, e.model, e.norms) == (dataset, arch, norms)


@pytest.mark.parametrize("variant,base", [("digits-cnn-norms", "digits-cnn"),
                                          ("cifar10-vgg16-norms", "cifar10-vgg16"),
                                          ("cifar10-resnet18", "cifar10-vgg16")])
def test_norms_presets_keep_their_recipe(variant, base):
    """The -norms presets and ResNet-18 change only the norms, the architecture and its figure layers."""
    a, b = get_experiment(variant).to_dict(), get_experiment(base).to_dict()
    changed = {k for k in a if a[k] != b[k]}
    assert changed <= {"name", "description", "conditions", "model", "channel_layers", "first_shown_layer"}


def test_default_experiment():
    assert DEFAULT_EXPERIMENT == "digits-cnn"


@pytest.mark.parametrize("preset", ["cifar10-resnet18", "synthetic-resnet18"])
def test_resnet18_figure_layers(preset):
    """Channel figures show each stage's output; Figures 4-6 start at stage 3."""
    e = get_experiment(preset)
    names = {p.index: p.name for p in find_probes(build_model("resnet18", "batch", 3), torch.zeros(2, 3, 16, 16))}
    assert [names[i] for i in e.channel_layers] == ["s1b2.out", "s2b2.out", "s3b2.out", "s4b2.out"]
    assert names[e.first_shown_layer] == "s3b1.relu1"


def test_synthetic_resnet18_fits_its_data():
    """Its samples fit the training split (no capping), and the model runs on its images."""
    e = get_experiment("synthetic-resnet18")
    data = load_data(e)
    assert data.train.X.shape[1:] == e.image_shape
    assert max(e.samples_sparsity, e.samples_cluster) <= len(data.train)
    with torch.no_grad():
        assert build_model(e.model, "none", e.image_shape[0])(data.train.X[:2]).shape == (2, 10)


@pytest.mark.parametrize("position,edge", [(0.0, "low"), (0.05, "low"), (0.15, None), (0.5, None), (0.85, None),
                                           (0.95, "high"), (1.0, "high")])
def test_lr_edge_one_rule(position, edge):
    """The sweep's note and the findings' caveat apply this one rule (10% of the log range, inclusive)."""
    from bnrep.experiments import lr_edge
    lo, hi = 1e-4, 1e-1
    assert lr_edge(lo * (hi / lo) ** position, (lo, hi)) == edge


def test_a_study_file_is_a_preset_plus_fields(tmp_path):
    from bnrep.experiments import get_experiment

    study = tmp_path / "bn-vs-gn.toml"
    study.write_text('base = "cifar10-vgg16"\nmodel = "torchvision:resnet50"\nnorms = ["batch", "group", "none"]\n'
                     'seeds = 3\nlr = 0.002\neps = "0,0.01"\n')
    e = get_experiment(str(study))
    base = get_experiment("cifar10-vgg16")
    assert (e.name, e.model, e.norms, e.seeds, e.lr, e.eps) == (
        "bn-vs-gn", "torchvision:resnet50", ("batch", "group", "none"), 3, 0.002, (0.0, 0.01))
    assert (e.dataset, e.optimizer, e.max_epochs) == (base.dataset, base.optimizer, base.max_epochs)
    assert e.channel_layers == () and e.first_shown_layer == 1  # another model: figure layers that fit any
    assert e.description == "cifar10-vgg16 with this study's model, conditions, seeds, lr, eps"  # not the preset's words
    study.write_text('name = "mine"\ndataset = "digits"\nmodel = "cnn"\n')
    e = get_experiment(str(study))
    assert (e.name, e.dataset, e.model, e.norms) == ("mine", "digits", "cnn", ("batch", "none"))
    # every list as a TOML array or as "a,b", as the README says
    study.write_text('base = "synthetic-cnn"\nlr_range = "1e-3,1e-1"\nmomentum_choices = "0.0,0.9"\n'
                     'image_shape = "1,8,8"\nsnapshots = "0,2"\n')
    e = get_experiment(str(study))
    assert (e.lr_range, e.momentum_choices, e.image_shape, e.snapshots) == ((1e-3, 1e-1), (0.0, 0.9), (1, 8, 8), (0, 2))


@pytest.mark.parametrize("conditions, said", [
    ("batch; bn-b64:batch,batch_size=64", "conditions batch and bn-b64 train the same models (bn-b64 trains batch with "
                                          "batch_size=64, as batch does); list one of them"),  # 64: the study's own
    ("x:group,batch_size=8; y:group,batch_size=8", "conditions x and y train the same models (y trains group with "
                                                   "batch_size=8, as x does); list one of them"),
])
def test_two_conditions_that_would_train_the_same_models_are_refused_before_a_run(conditions, said, tmp_path, capsys):
    """They were accepted, and the grid trained the same models twice under two tags. Refused where a run is asked
    for; an experiment holding them (results made before) still opens."""
    from bnrep import flags
    from bnrep.axis import twin_conditions

    e = get_experiment("synthetic-cnn").override(conditions=conditions)  # (opens: config.json of earlier results)
    assert twin_conditions(e) == f"synthetic-cnn: {said}"
    rc = flags.run_stage("final", ["--experiment", "synthetic-cnn", "--conditions", conditions, "--paper-hparams",
                                   "--out", str(tmp_path / "runs")])
    assert (rc, capsys.readouterr().err) == (2, f"error: synthetic-cnn: {said}\n")
    assert not (tmp_path / "runs").exists()
    assert twin_conditions(get_experiment("synthetic-cnn").override(conditions="batch; bn-b8:batch,batch_size=8; "
                                                                    "l:batch,lr=0.01; l2:batch,lr=0.02")) is None


@pytest.mark.parametrize("text, line", [
    ('base = "digits-cnn"\nlearning_rate = 0.1\n', "unknown key 'learning_rate' (allowed: base, name, dataset, "),
    ('base = "digits-cnn"\nseeds = "three"\n', "seeds = 'three' should be a whole number"),
    ('base = "digits-cnn"\nnorms = 5\n', "norms = 5 should be a list of strings ([...] or \"a,b\")"),  # as written
    ('base = "digits-cnn"\nmax_epoch = 3\n', "unknown key 'max_epoch'; did you mean 'max_epochs'?"),
    ('base = "digits-cnn"\nlr = -1\n', "learning rate must be > 0 and finite, got lr=-1"),
    ('base = "digits-cnnn"\n', "base = 'digits-cnnn' is not a preset (valid: digits-cnn, "),
    ('model = "cnn"\n', 'set dataset (or base = "PRESET" to start from one: digits-cnn, '),
    ('norms = [\n', "not valid TOML ("),
    ('base = "digits-cnn"\n# \xe9tude\nseeds = 2\n'.encode("latin-1"),  # a comment saved as Latin-1: a traceback
     "line 2 is not UTF-8 (byte 0xe9), which TOML files must be: save it as UTF-8"),
    (None, "No such file or directory"),
    ('base = "digits-cnn"\nname = "../escaped"\n', "name = '../escaped': a study's name is letters, digits and "),
    ('base = "digits-cnn"\nname = ""\n', "name = '': a study's name is letters, digits and . _ + - "),
    ('base = "digits-cnn"\nlr_range = ["a", "b"]\n', "lr_range must be a list of numbers, got ('a', 'b')"),
    ('base = "digits-cnn"\nlr_range = [0.001, 0.01, 0.1]\n', "learning rate range must be two numbers 0 < low"),
    ('base = "digits-cnn"\nmomentum_choices = "0.0,high"\n', "momentum_choices must be a list of numbers"),
    ('base = "synthetic-cnn"\nimage_shape = [1, 8]\n', "image_shape must be (C, H, W) > 0, got (1, 8)"),
    ('base = "digits-cnn"\nsnapshots = [0.5]\n', "snapshots must be a list of whole numbers, got (0.5,)"),
    ('base = "digits-cnn"\nval_size = 1.5\n', "val_size must be a whole number of images > 0 or a fraction in "),
    ('base = "digits-cnn"\nsnapshots = [inf]\n', "snapshots must be a list of whole numbers, got (inf,)"),
    ('base = "digits-cnn"\nmomentum_choices = []\n', "momentum_choices is empty: the sweep draws from it"),
    ('base = "digits-cnn"\ntest_fraction = 1.5\n', "test_fraction must be in (0, 1), got 1.5"),
    ('base = "digits-cnn"\nnorms = ["batch"]\nconditions = ["group"]\n',
     "norms and conditions are both set: give conditions alone (norms is its old name)"),
    ('base = "digits-cnn"\nmodel = "cnn"\narch = "vgg16"\n', "arch and model are both set: give model alone"),
    ('base = "digits-cnn"\nname = "digits-cnn"\nnorms = ["group"]\n', "its name 'digits-cnn' is a preset's, whose"),
])
def test_a_bad_study_file_is_one_line_naming_the_file(text, line, tmp_path, capsys):
    from bnrep import flags

    study = tmp_path / "study.toml"
    if text is not None:
        study.write_bytes(text if isinstance(text, bytes) else text.encode())
    rc = flags.run_stage("final", ["--experiment", str(study), "--paper-hparams", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: study file {study}: {line}"), err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, smoke", [(["--snapshots", "0,4"], False), (["--snapshots", "0,1,2,5"], False),
                                         (["--smoke-test", "--snapshots", "0,2"], True), (["--smoke-test"], True),
                                         ([], False)])
def test_the_header_says_smoke_sizes_only_of_a_study_at_them_and_takes_a_snapshot_past_them(argv, smoke):
    """Each stage's header says "at --smoke-test sizes" of a study no bigger than the smoke test makes it.
    Deciding that built the smoke-sized study, which refused a snapshot past its 3 epochs: `--snapshots 0,4`
    (the README's 0,1,5 too) failed in every stage with "snapshot epoch 4 is beyond max_epochs 3"."""
    from bnrep import flags
    from bnrep.config import header
    from bnrep.experiments import at_smoke_sizes

    exp = flags.resolve_experiment(flags.build_parser("final").parse_args(["--paper-hparams", *argv]))
    assert at_smoke_sizes(exp) is smoke
    assert ("at --smoke-test sizes" in header("final grid", exp, Store("/tmp/runs", exp.name), False)) is smoke


def test_an_unknown_study_key_lists_norms_too(tmp_path):
    """The allowed keys are Experiment's fields; `norms`, the README's key for the conditions, was not among them."""
    from bnrep.experiments import ConfigError

    (tmp_path / "s.toml").write_text('base = "digits-cnn"\nlearning_rate = 0.1\n')
    with pytest.raises(ConfigError, match=r", description; norms for conditions\)$"):
        get_experiment(str(tmp_path / "s.toml"))
