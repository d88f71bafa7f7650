"""Conditions (bnrep.axis): a normalisation plus training overrides, through parsing, the
experiment, config.json, the study file, Ray's pickling, and one end-to-end run with a rerun
that adds a condition."""

import json
import pickle
import re
import subprocess
import sys

import pytest
import torch

from bnrep import rules as verdict_rules
from bnrep.config import UsageError, load_experiment, prepare, stage_hashes
from bnrep.experiments import ConfigError, Experiment, get_experiment
from bnrep.studies import load_study
from bnrep.models import model_id
from bnrep.norms import COLORS, LABELS, SHORT, TAGS, get_norm
from bnrep.store import TABLES, Store, tables

BASE = get_experiment("digits-cnn")
AXIS = "batch; bn-b8:batch,batch_size=8; gn-b8:group:32,batch_size=8,label=GN small; ghost:16; ws+group; none"


def test_conditions_parse_to_one_spelling_and_register_their_tags():
    e = BASE.override(conditions=AXIS)
    assert e.conditions == ("batch", "bn-b8:batch,batch_size=8", "ghost:16",
                            "gn-b8:group:32,batch_size=8,label=GN small", "ws+group", "none")
    assert e.norms == ("batch", "bn-b8", "ghost:16", "gn-b8", "ws+group", "none")
    assert (TAGS["bn-b8"], SHORT["bn-b8"], LABELS["bn-b8"]) == ("bn-b8", "bn-b8", "BatchNorm at batch size 8")
    assert LABELS["gn-b8"] == "GN small" and get_norm("gn-b8").norm == "group:32"
    assert model_id("cnn", "bn-b8", 0) == "cnn-bn-b8-s0" and model_id("cnn", "batch", 0) == "cnn-bn-s0"
    assert e.for_condition("bn-b8").batch_size == 8 and e.batch_size == 64
    assert e.for_condition("batch") is e  # a normalisation is the recipe as it is
    # the modules a condition builds are its normalisation's
    assert type(get_norm("gn-b8").build(64, conv=True)) is type(get_norm("group:32").build(64, conv=True))


def test_each_experiment_trains_its_own_definition_of_a_tag():
    """Two studies in one process (a notebook) may give one tag two meanings: each trains its own."""
    a = BASE.override(conditions="batch; x:batch,batch_size=8")
    b = BASE.override(conditions="batch; x:group,batch_size=16,weight_decay=0.001")
    assert a.condition("x") == ("batch", {"batch_size": 8}) and a.for_condition("x").batch_size == 8
    assert b.condition("x") == ("group", {"batch_size": 16, "weight_decay": 0.001})
    assert (b.for_condition("x").batch_size, a.for_condition("x").weight_decay) == (16, 0.0)


def test_norms_is_one_condition_per_norm_and_hashes_do_not_move():
    assert BASE.override(norms="batch,none") == BASE
    assert BASE.override(conditions="bn:batch; none") == BASE  # a tag on a plain norm is dropped: its models
    for name in ("digits-cnn", "digits-cnn-norms", "mnist-cnn", "cifar10-vgg16"):
        e = get_experiment(name)
        # the hashes of every results directory written before conditions (recorded in tests/fixtures too)
        assert stage_hashes(e.override(conditions=e.conditions + ("bn-b8:batch,batch_size=8",))) == stage_hashes(e)
    # config.json written before conditions names the axis `norms`
    old = {k: v for k, v in BASE.to_dict().items() if k not in ("conditions", "reference")}
    assert Experiment.from_dict({**old, "norms": ["batch", "none"]}) == BASE


def test_a_tag_dropped_from_a_plain_norm_may_not_name_another_condition():
    """`bn-b8:group` is group (its tag dropped): beside a condition tagged bn-b8 the user meant two of that tag,
    and the tables would have shown one under bn-b8, the other under group, without a word."""
    with pytest.raises(ConfigError, match=r"^digits-cnn: condition 'bn-b8:group': tag 'bn-b8' names another "
                                          r"condition too; a plain normalisation needs no tag"):
        BASE.override(conditions="batch; bn-b8:batch,batch_size=8; bn-b8:group")
    assert BASE.override(conditions="x:batch; x:none") == BASE  # dropped twice: two norms, no tag to confuse


def test_old_results_keep_their_hashes(tmp_path):
    import shutil
    from pathlib import Path

    src = Path(__file__).parent / "fixtures" / "results_v0_1_0"
    shutil.copytree(src, tmp_path / "runs")
    store = Store(str(tmp_path / "runs"), "synthetic-cnn")
    rec = json.loads((tmp_path / "runs" / "synthetic-cnn" / "config.json").read_text())
    assert stage_hashes(load_experiment(store)) == {k: rec[k] for k in ("train_hash", "analysis_hash")}
    df = store.read_table("layer_sparsity")
    assert (df["condition"] == df["norm"]).all()  # written before conditions: each model's is its norm


def test_the_same_colours_however_the_conditions_are_given():
    a = BASE.override(conditions="bn-b4:batch,batch_size=4; bn-b64:batch,batch_size=64; gn-b4:group,batch_size=4")
    colours = [COLORS[n] for n in a.norms]
    b = BASE.override(conditions="gn-b4:group,batch_size=4; bn-b64:batch,batch_size=64; bn-b4:batch,batch_size=4")
    assert [COLORS[n] for n in b.norms] == colours and len(set(colours)) == 3
    assert a.norms == ("bn-b4", "bn-b64", "gn-b4")  # by normalisation, then the overrides' values


BAD = [
    ("override without a tag", "batch,batch_size=8", "changes batch_size: give it a tag"),
    ("not a field", "bn:batch,depth=3", "'depth' is not a field a condition can change"),
    ("not a number", "bn:batch,batch_size=x", "batch_size needs a whole number, got 'x'"),
    ("tag of a norm", "gn8:group,batch_size=8", "tag 'gn8' is a normalisation's name or tag"),
    ("name of a norm", "layer:group,batch_size=8", "tag 'layer' is a normalisation's name or tag; choose another"),
    ("its own norm's name", "batch:batch,batch_size=8", "tag 'batch' is a normalisation's name or tag"),
    ("a family's name", "group:batch,batch_size=8", "tag 'group' is a normalisation's name or tag"),
    ("an argument a norm does not take", "batch:8", "unknown norm 'batch:8' (valid: batch, group, "),
    ("unknown norm", "mine:batchnorm,batch_size=8", "unknown norm 'batchnorm'"),
    ("no norm", "b8:batch_size=8", "condition 'b8:batch_size=8' names no normalisation: a condition is "
                                   "TAG:NORM,FIELD=VALUE,... (e.g. b8:batch,batch_size=8)"),
    ("no tag nor norm", "batch_size=8,lr=0.1", "condition 'batch_size=8,lr=0.1' names no normalisation: a "
                                               "condition is TAG:NORM,FIELD=VALUE,... (e.g. TAG:batch,batch_size=8)"),
    ("nothing after the tag", "b8:", "condition 'b8:' names no normalisation: a condition is TAG:NORM,FIELD=VALUE,"
                                     "... (e.g. b8:batch,batch_size=8)"),
    ("bad tag", "my tag:batch,batch_size=8", "must be letters, digits"),
    ("out of range", "b0:batch,batch_size=0", "condition b0: batch_size must be > 0, got 0"),
    ("BatchNorm on single images", "b1:batch,batch_size=1", "condition b1: batch normalises with batch statistics "
                                                           "and cannot train on batches of 1 image"),
    ("ghost of one", "ghost:1", "ghost:1 needs virtual batches of 2 or more images, fewer than the batch size 64"),
    ("ghost of the batch", "g8:ghost:8,batch_size=8", "condition g8: ghost:8 needs virtual batches of 2 or more"),
    ("infinite lr", "x:batch,lr=inf", "condition x: learning rate must be > 0 and finite, got lr=inf"),
    ("infinite weight decay", "x:batch,weight_decay=inf", "condition x: weight_decay must be >= 0 and finite"),
    ("not a colour", "b2:batch,batch_size=8,color=notacolour", "condition 'b2:batch,batch_size=8,color=notacolour': "
                                                               "color 'notacolour' is not a colour matplotlib knows"),
    ("label on a norm", "batch,label=BN", "label and color belong to conditions with overrides"),
    ("twice", "a:batch,batch_size=8; a:batch,batch_size=4", "norms lists a more than once"),
    ("reference absent", None, "reference 'group' is not one of the conditions"),
]


@pytest.mark.parametrize("conditions, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_conditions_are_one_line_config_errors(conditions, message):
    with pytest.raises(ConfigError) as err:
        BASE.override(conditions=conditions) if conditions else BASE.override(reference="group")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("digits-cnn: ")


def test_a_worker_rebuilds_the_conditions_it_is_sent():
    """Ray pickles the experiment to its workers: the tags must mean the same there (a fresh process)."""
    e = BASE.override(conditions="batch; bn-b8:batch,batch_size=8")
    code = ("import pickle, sys; from bnrep.norms import get_norm; e = pickle.load(sys.stdin.buffer); "
            "print(e.for_condition('bn-b8').batch_size, get_norm('bn-b8').norm, get_norm('bn-b8').color)")
    r = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(e), capture_output=True)
    assert r.stdout.decode().split() == ["8", "batch", COLORS["bn-b8"]], r.stderr.decode()[-2000:]


def test_a_condition_redefined_under_its_tag_is_refused(tmp_path):
    store = Store(str(tmp_path), "digits-cnn")
    e = BASE.override(conditions="batch; bn-b8:batch,batch_size=8")
    store.write_json("config.json", prepare(store, e, "final", fresh=False))
    prepare(store, e.override(conditions=e.conditions + ("gn-b8:group,batch_size=8",)), "final", False)  # adds
    with pytest.raises(UsageError, match=r"holds condition bn-b8 as 'bn-b8:batch,batch_size=8', now "
                                         r"'bn-b8:batch,batch_size=16': give the new one another tag"):
        prepare(store, e.override(conditions="batch; bn-b8:batch,batch_size=16"), "final", False)


def test_a_study_file_takes_conditions_as_a_table(tmp_path):
    f = tmp_path / "bs.toml"
    f.write_text('base = "digits-cnn"\nreference = "bn-b32"\n[conditions]\nbatch = {}\n'
                 'bn-b8 = {norm = "batch", batch_size = 8}\nbn-b32 = {norm = "batch", batch_size = 32}\n'
                 'gn-b8 = {norm = "group:32", batch_size = 8, label = "GN at 8"}\n')
    e = load_study(str(f))
    assert e == BASE.override(name="bs", reference="bn-b32", conditions="batch; bn-b8:batch,batch_size=8; "
                              "bn-b32:batch,batch_size=32; gn-b8:group:32,batch_size=8,label=GN at 8")
    f.write_text('base = "digits-cnn"\n[conditions]\nbn-b8 = {norm = "batch", batch_size = "eight"}\n')
    with pytest.raises(ConfigError, match=r"^study file .*bs.toml: condition .*batch_size needs a whole number"):
        load_study(str(f))
    f.write_text('base = "digits-cnn"\n[conditions]\nbn-b8 = {norm = "batch", batch_size = 8, label = "BN, batch 8"}\n')
    with pytest.raises(ConfigError, match=r"^study file .*bs.toml: \[conditions\] bn-b8: label 'BN, batch 8' holds a "
                                          r"comma, which separates a condition's fields: write it without one$"):
        load_study(str(f))
    f.write_text('base = "digits-cnn"\nreference = "gh"\n[conditions]\ngh = {norm = "ghost:16"}\nnone = {}\n')
    with pytest.raises(ConfigError, match=r"^study file .*bs.toml: \[conditions\] gh = \{norm = 'ghost:16'\} changes "
                                          r"no field: list it as ghost:16 \(a normalisation keeps its own name\)"):
        load_study(str(f))


# ==== end to end: three conditions, then a fourth ====
EXP = "synthetic-cnn"  # seeded class-structured 8x8 images, generated on the spot
ARGS = ["--experiment", EXP, "--smoke-test", "--conditions", "batch; bn-b8:batch,batch_size=8; none"]
KEYS = {name: list(t.keys) for name, t in TABLES.items()}


def bnrep(*args, out):
    return subprocess.run([sys.executable, "-m", "bnrep", *args, "--out", str(out)], capture_output=True, text=True)


def mtimes(out, table):
    return {p.name: p.stat().st_mtime_ns for p in (out / EXP / "results" / table).glob("*.parquet")}


@pytest.mark.slow
def test_conditions_end_to_end_and_a_rerun_adding_one(tmp_path):
    out = tmp_path / "runs"
    r = bnrep("run", *ARGS, out=out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    store = Store(str(out), EXP)
    t = store.read_table("training")
    assert sorted(t["model_id"]) == sorted(f"cnn-{c}-s{s}" for c in ("bn", "bn-b8", "nobn") for s in (0, 1))
    assert dict(zip(t["model_id"], t["condition"]))["cnn-bn-b8-s0"] == "bn-b8"
    assert set(t.loc[t["condition"] == "bn-b8", "norm"]) == {"batch"}
    recipe = {m: torch.load(out / EXP / "train" / "models" / m / "model.pt", weights_only=True)["experiment"]
              for m in ("cnn-bn-b8-s1", "cnn-bn-s1")}
    assert (recipe["cnn-bn-b8-s1"]["batch_size"], recipe["cnn-bn-s1"]["batch_size"]) == (8, 64)  # the trainer's
    assert dict(zip(t["model_id"], t["batch_size"])) == {m: 8 if "b8" in m else 64 for m in t["model_id"]}  # its row's
    h = store.read_table("training_history")
    assert set(h["condition"]) == {"batch", "bn-b8", "none"}
    trials = store.read_table("hparam_trials")
    assert trials.groupby("condition").size().to_dict() == {"batch": 2, "bn-b8": 2, "none": 2}
    for name in (*tables("final"), *(t for t in tables("analysis") if t != "samples"), "hparam_trials"):
        df = store.read_table(name)
        cols = ["condition_a", "condition_b"] if name == "cka" else ["condition"]
        assert set(cols) <= set(df) and df[cols].notna().all().all(), name
        assert not df.duplicated(KEYS[name]).any(), name
    cka = store.read_table("cka")
    assert {"bn-b8"} <= set(cka["condition_a"]) | set(cka["condition_b"])
    md = (out / EXP / "report" / "report.md").read_text()
    assert "BatchNorm at batch size 8" in md and "| bn-b8 |" in md and "| Model | Condition | Seeds |" in md

    before = {name: mtimes(out, name) for name in ("training", "layer_sparsity", "kmeans", "hparam_trials")}
    r = bnrep("run", *ARGS[:3], "--conditions", "batch; bn-b8:batch,batch_size=8; gn-b8:group,batch_size=8; none",
              out=out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[final] 6 of 8 models already trained" in r.stdout
    # their own measures are current; their representations are needed again for CKA with the new models
    assert "; 6 models complete (6 of them extracted again for the CKA left to compute), " in r.stdout, r.stdout
    for name, old in before.items():
        now = mtimes(out, name)
        assert {k: v for k, v in now.items() if k in old} == old, name  # nothing done again
        assert all("gn-b8" in k for k in set(now) - set(old)) and set(now) - set(old), name
    t = store.read_table("training")
    assert len(t) == 8 and set(t.loc[t["condition"] == "gn-b8", "norm"]) == {"group"}
    # TensorBoard (`--logdir train/tune`, `hparam/tune`) still shows the first run's models and trials
    runs = {stage: {p.parent.relative_to(out / EXP / stage / "tune").as_posix().rsplit("_", 1)[0][:-6]
                    for p in (out / EXP / stage / "tune").rglob("events.out.tfevents.*")} for stage in ("train", "hparam")}
    assert runs["train"] == {f"earlier/1/{c}-s{s}" for c in ("bn", "bn-b8", "nobn") for s in (0, 1)} | {
        f"final/gn-b8-s{s}" for s in (0, 1)}, runs["train"]
    assert runs["hparam"] == {f"earlier/1/{c}" for c in ("bn", "bn-b8", "nobn")} | {"sweep/gn-b8"}, runs["hparam"]
    redefine = bnrep("final", *ARGS[:3], "--paper-hparams", "--conditions", "batch; bn-b8:batch,batch_size=4",
                     out=out)
    assert redefine.returncode == 2 and "holds condition bn-b8 as" in redefine.stderr
    assert len(redefine.stderr.strip().splitlines()) == 1


def test_claims_are_judged_against_the_reference_condition():
    """bn-b4 sparser than bn-b64 in every layer (5 seeds, clear gap); gn-b4's rows must be left out."""
    import numpy as np
    import pandas as pd

    from bnrep import findings, rules
    from bnrep.results import Results

    e = BASE.override(conditions="bn-b4:batch,batch_size=4; bn-b64:batch,batch_size=64; gn-b4:group,batch_size=4",
                      reference="bn-b64")
    level = {"bn-b4": 0.6, "bn-b64": 0.3, "gn-b4": 0.9}
    rng = np.random.default_rng(0)
    ls = pd.DataFrame([dict(model_id=f"{c}-{s}", norm=get_norm(c).norm, condition=c, seed=s, layer=f"l{i}",
                            layer_index=i, eps=0.0, activation="ReLU", sparsity=level[c] + rng.normal() * 0.01)
                       for c in level for s in range(5) for i in range(1, 6)])
    r = Results(e, {"layer_sparsity": ls})
    assert r.ref == "bn-b64" and findings.judged_norms(r) == ["bn-b4", "gn-b4"]
    f = findings.finding_sparsity(ls, "bn-b4", r.ref)
    assert f.verdict == "not supported" and f.ref == "bn-b64"
    assert f.claim == ("BatchNorm at batch size 4 does not consistently induce nor prevent sparsity in hidden "
                       "representations, compared with BatchNorm at batch size 64.")
    assert findings.claim(2, "bn-b4", "bn-b64").endswith("(models with BatchNorm at batch size 4 and with BatchNorm at "
                                                         "batch size 64).")
    assert "than models with BatchNorm at batch size 64, especially" in findings.claim(3, "bn-b4", "bn-b64")
    assert "earlier in the network than BatchNorm at batch size 64, and" in findings.claim(4, "bn-b4", "bn-b64")
    assert [findings.claim(n) for n in range(1, 5)] == list(rules.CLAIMS.values())  # the paper's words
    diff = lambda d, a: float(re.search(rf"mean difference {a} - bn-b64 \+([\d.]+) pp", d).group(1))  # noqa: E731
    assert "bn-b4 sparser in 5 of 5 layers" in f.detail and diff(f.detail, "bn-b4") == pytest.approx(30, abs=1)
    g = findings.finding_sparsity(ls, "gn-b4", r.ref)
    assert diff(g.detail, "gn-b4") == pytest.approx(60, abs=1)  # against bn-b64, bn-b4 left out
    assert "judged against the reference condition BatchNorm at batch size 64 (bn-b64)" in rules.rules(r.norms, r.ref)[-1]


@pytest.mark.parametrize("norms,ref", [(("batch", "group", "none"), "none"), (("batch", "group", "none"), "batch"),
                                       (("group", "layer"), "layer")])
def test_the_rules_of_other_conditions_say_the_condition_judged_and_the_reference_not_bn_and_no_bn(norms, ref):
    """Against the reference BatchNorm, 'no BN' stood for BatchNorm itself: the rules said 'BN' and 'no BN' and a
    line that they stand for the condition judged and the reference. The paper's pair keeps the paper's words."""
    said = " ".join(verdict_rules.rules(norms, ref)).replace("BatchNorm (BN)", "")  # (the reference's own label and tag)
    assert not re.search(r"\bBN\b", said), said
    assert "with the condition judged and with the reference" in said and "only the condition judged reaches" in said
    paper = " ".join(verdict_rules.rules(("batch", "none")))
    assert "with and without BN" in paper and "the condition judged" not in paper


def _per_layer(level: dict, value: str, ks=(None,)):
    """Rows of 4 seeds x 5 layers per condition: `value` = level[condition] (+ k, the first k optimal) + noise."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    return pd.DataFrame([dict(model_id=f"{c}-{s}", bn=c == "batch", norm=c, condition=c, seed=s, layer=f"l{i}",
                              layer_index=i,
                              **({} if k is None else {"k": k, "optimal": k == ks[0]}),
                              **{value: level[c] + (k or 0) + rng.normal() * 0.01})
                         for c in level for s in range(4) for i in range(1, 6) for k in ks])


def test_claim_3_is_judged_against_the_reference_condition():
    """Both parts of claim 3 compare with the reference (here GN, purer than BN), not with a `none`
    condition beside it (less pure than BN): judged against none, BN would look purer."""
    from bnrep import findings

    level = {"batch": 3.0, "group": 2.0, "none": 4.0}
    f = findings.finding_purity(_per_layer(level, "dbi"), _per_layer(level, "dbi", ks=(2, 3)), 1, "batch", "group")
    assert f.verdict == "not supported" and f.ref == "group", f.detail
    k = f.numbers["kmeans_dbi"]
    assert k["final_layer"] == "l5" and k["final"] == pytest.approx(5.0, abs=0.05)
    assert k["final_ref"] == pytest.approx(4.0, abs=0.05), "the reference's k-means DBI, not none's"
    assert "final shown layer l5: BN 5.00 vs GN 4.00" in f.detail
    # both directions named, as for class DBI: BN is detectably less pure than GN in every layer
    assert (k["lower"], k["higher"]) == ([], ["l1", "l2", "l3", "l4", "l5"])
    assert ("k-means DBI at optimal k detectably lower with BN in 0 of 5 layers (none), higher in 5 (l1, l2, l3, l4, "
            "l5);") in f.detail
    assert ("class DBI lower with BN in 0 of 5 shown layers (none), higher in 5 (l1, l2, l3, l4, l5), no detectable "
            "difference in 0") in f.detail  # the layers named, as claim 1 names them


def test_claim_2_names_its_reference():
    import pandas as pd

    from bnrep import findings

    norm = ["batch" if i % 2 == 0 else "group" for i in range(8)]
    ids = [f"m{i}" for i in range(8)]
    tr = pd.DataFrame(dict(model_id=ids, norm=norm, condition=norm, seed=range(8), train_acc=1.0,
                           test_acc=[.90, .95, .92, .97, .97, .92, .95, .90]))
    ls = pd.DataFrame(dict(model_id=ids, norm=norm, condition=norm, seed=range(8), layer="l1", layer_index=1,
                           sparsity=[(i + 1) / 10 for i in range(8)]))
    f = findings.finding_generalisation(tr, ls, "batch", "group")
    assert f.verdict != "not evaluated" and f.ref == "group"


def test_every_condition_of_a_study_wears_its_own_colour():
    """Ghost and group sizes, batch and group conditions, plain norms: no two alike (RGB distance >= 0.15;
    ghost:4 wore bn-b8's navy, ghost:16 a near-identical darkblue)."""
    import itertools

    import matplotlib.colors as mc
    import numpy as np

    e = BASE.override(conditions="batch; ghost:2; ghost:4; ghost:8; ghost:16; ghost:32; bn-b4:batch,batch_size=4; "
                                 "bn-b8:batch,batch_size=8; bn-b16:batch,batch_size=16; bn-b32:batch,batch_size=32; "
                                 "group; group:2; group:4; group:8; group:16; gn-b4:group,batch_size=4; "
                                 "gn-b8:group,batch_size=8; layer; none; ws+group; n4:none,batch_size=4; "
                                 "n8:none,batch_size=8; n16:none,batch_size=16; n32:none,batch_size=32; "
                                 "gbn4-b16:ghost:4,batch_size=16; renorm:2; renorm:4; renorm:8; renorm:16; renorm:32; "
                                 "renorm:64; brn-b8:renorm:100,batch_size=8; ln-b8:layer,batch_size=8")
    # members of a family a study sweeps within one power of two (their arguments' shade: ghost:8 and ghost:12 alike)
    sweep = BASE.override(conditions="batch; ghost:8; ghost:12; renorm:20; renorm:30; renorm:1000; group:2; group:3; "
                                     "none; ln-b8:layer,batch_size=8")
    for study in (sweep, e):  # (the last study's placing holds, as its report draws)
        rgb = {n: np.array(mc.to_rgb(get_norm(n).color)) for n in study.norms}
        closest = min((np.linalg.norm(rgb[a] - rgb[b]), a, b) for a, b in itertools.combinations(study.norms, 2))
        assert closest[0] >= 0.15, closest
    # the small-batch comparison: BatchNorm at batch 8 (the first batch condition's navy) beside ghost:4, :8 and :16
    # differs in hue or in lightness, not only by RGB distance (ghost:8's darkslateblue read as navy in the figures)
    import colorsys

    study = BASE.override(conditions="bn-b8:batch,batch_size=8; bn-b64:batch,batch_size=64; ghost:4; ghost:8; ghost:16")
    hsv = {n: colorsys.rgb_to_hsv(*mc.to_rgb(get_norm(n).color)) for n in study.norms}
    for g in ("ghost:4", "ghost:8", "ghost:16"):
        (h1, _, v1), (h2, _, v2) = hsv["bn-b8"], hsv[g]
        assert min(abs(h1 - h2), 1 - abs(h1 - h2)) * 360 >= 20 or abs(v1 - v2) >= 0.25, (g, get_norm(g).color)
    # a ghost condition is drawn as BatchNorm's kin, as plain ghost sizes are (it wore crimson, an outsider's)
    from bnrep.axis import SHADES

    assert get_norm("gbn4-b16").color in SHADES["batch"] and get_norm("brn-b8").color in SHADES["renorm"]
    # every norm of the table with a batch-8 condition and a batch-4 one (layer's and instance's wore one crimson)
    from bnrep.norms import NORMS

    e = BASE.override(conditions="; ".join(f"{n}; {t}-b8:{n},batch_size=8; {t}-b4:{n},batch_size=4"
                                           for n, t in ((n, get_norm(n).tag) for n in NORMS if n != "as-built")))
    rgb = {n: np.array(mc.to_rgb(get_norm(n).color)) for n in e.norms}
    closest = min((np.linalg.norm(rgb[a] - rgb[b]), a, b) for a, b in itertools.combinations(e.norms, 2))
    assert closest[0] >= 0.15, closest


def test_a_study_without_its_reference_is_told_so_before_it_trains():
    from bnrep.experiments import reference_note

    e = get_experiment("digits-cnn").override(conditions="batch,group")
    assert reference_note(e) == ("note: digits-cnn has no models of its reference condition 'none': the report's "
                                 "claims compare with it, so none will be judged; add none to the conditions, or "
                                 "name one of batch, group with --reference TAG")
    assert reference_note(e.override(reference="group")) is None and reference_note(get_experiment("digits-cnn")) is None
    assert reference_note(e, held=["none"]) is None  # models of it already in the study's results
    one = get_experiment("digits-cnn").override(conditions="batch")  # nothing else to name as the reference
    assert reference_note(one) == ("note: digits-cnn has no models of its reference condition 'none': the report's "
                                   "claims compare with it, so none will be judged; add none to the conditions "
                                   "(batch, the one condition, judged against itself would compare nothing)")


def test_a_reference_that_is_the_only_condition_is_never_judged_against_itself():
    """Imported BatchNorm models alone, with --reference batch: the claims are the paper's other side (none
    against BatchNorm), not evaluated for want of its models; never BN - BN +0.0 pp with p 1."""
    from bnrep.findings import findings
    from bnrep.results import Results
    from tests.report_fixtures import make_tables

    tables = {k: t[t["condition"] == "batch"] if "condition" in t else t
              for k, t in make_tables("digits-cnn", seeds=2).items()}
    r = Results(get_experiment("digits-cnn").override(conditions="batch", reference="batch"), tables)
    fs = findings(r)
    assert [(f.norm, f.ref) for f in fs] == [("none", "batch")] * 4
    assert [f.verdict for f in fs] == ["not evaluated"] * 4, [f.detail for f in fs]


def test_a_batch_size_above_the_training_split_is_said_once_per_size(capsys):
    """A condition whose batch holds more images than the training split trains one full-batch step per
    epoch: it runs as asked, and the stage says so under its lines (its label's batch size does not apply)."""
    from bnrep.config import RunOptions
    from bnrep.experiments import smoke
    from bnrep.stages.tuning import training_data

    exp = smoke(BASE).override(conditions="batch; big:batch,batch_size=300; huge:none,batch_size=5000; "
                                          "also:group:4,batch_size=300; none")
    data = training_data(exp, RunOptions(), "final", exp.norms)
    assert len(data.train) == 256
    assert capsys.readouterr().out == (
        "[final] note: batch size 300 (big, also) is above the 256 training images: each epoch is one step on all "
        "of them\n"
        "[final] note: batch size 5000 (huge) is above the 256 training images: each epoch is one step on all of "
        "them\n")
    training_data(exp, RunOptions(), "hparam", ["batch", "none"])  # 64 of 256: nothing to say
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("change, line", [
    (dict(eps=(-1.0,)), "digits-cnn: eps thresholds must be >= 0, got -1"),
    (dict(k_min=1), "digits-cnn: k_min must be >= 2, got 1"),
    (dict(snapshots=(0, 1, 9999)), "digits-cnn: snapshot epoch 9999 is beyond"),
])
def test_a_setting_of_the_whole_experiment_is_not_blamed_on_a_condition(change, line):
    """(it read 'digits-cnn: condition bn-b8: eps thresholds must be >= 0': the first condition's recipe,
    the experiment with its overrides, was validated before the experiment's own settings)"""
    with pytest.raises(ConfigError) as e:
        BASE.override(conditions="batch; bn-b8:batch,batch_size=8; none", **change)
    assert str(e.value).startswith(line) and "condition" not in str(e.value), str(e.value)


def _batch_size_study():
    """bn-b16 sparser and better than bn-b64 (the reference), 2 seeds each; within each condition no link."""
    import pandas as pd

    from bnrep.results import Results

    e = BASE.override(conditions="bn-b16:batch,batch_size=16; bn-b64:batch,batch_size=64", reference="bn-b64")
    cond = ["bn-b16", "bn-b16", "bn-b64", "bn-b64"]
    key = dict(model_id=[f"m{i}" for i in range(4)], norm="batch", condition=cond, seed=[0, 1, 0, 1])
    tr = pd.DataFrame(dict(key, train_acc=1.0, test_acc=[.9805, .9795, .9005, .8995]))
    ls = pd.DataFrame(dict(key, layer="l1", layer_index=1, eps=0.0, activation="ReLU", sparsity=[.51, .49, .09, .11]))
    return Results(e, {"training": tr, "layer_sparsity": ls})


def test_claim_2_names_the_groups_it_controls_for_as_conditions():
    """bn-b16 and bn-b64 are one normalisation: what is controlled for is the condition (the batch size), and a
    within-condition Spearman r is n/a for a reason the finding gives."""
    from bnrep import findings

    r = _batch_size_study()
    f = findings.finding_generalisation(r.table("training"), r.table("layer_sparsity"), "bn-b16", r.ref)
    assert f.verdict == "inconclusive", f.detail
    assert ("Within one condition, Spearman vs test accuracy: n/a (fewer than 3 models of each). Controlling for "
            "the condition (partial Pearson): vs test accuracy r = 0.00 (p = 1)") in f.detail
    assert f.caveats == [f"the correlation with {y} comes only from the difference between the condition groups "
                         f"(partial r = {r}, p = 1)" for y, r in (("test accuracy", "0.00"), ("the gap", "-0.00"))]
    assert "normalisation" not in f.detail


def test_which_measure_predicts_generalisation_names_the_groups_as_conditions_with_two_seeds():
    """The header said 'norm' in every study with fewer than 3 seeds (decided from the within-group values,
    none of which exist then); the n/a of the within column is said once, with its reason."""
    from bnrep import correlations, verdicts

    r = _batch_size_study()
    blocks = verdicts.predictor_blocks(r)
    (header, rows), = [b[1:] for b in blocks if b[0] == "table"]
    assert header[5:7] == ["Spearman within each condition", "partial Pearson r (p), condition controlled"]
    assert rows[0][5] == "n/a" and rows[0][-1] == "sign only from the difference between the condition groups"
    limits = correlations.limits_sentence(r, correlations.predictors(r))
    assert limits.endswith("Across conditions, a correlation can be the difference between the condition groups "
                           "alone (both the measure and the accuracy differ by condition): the within-condition and "
                           "partial columns show what is left inside the groups. A Spearman r within a condition "
                           "needs at least 3 models of it: every condition has fewer, hence n/a.")
    (note,) = [b[1] for b in blocks if b[0] == "note"]
    assert note.startswith("Across models, then within the condition groups: layer sparsity")
    assert "comes only from the difference between the condition groups (partial r = 0.00, p = 1)" in note
    rule = next(x for x in findings_rules(r) if x.startswith("2 (sparsity"))
    assert ("the Spearman correlation within each condition and the partial (Pearson) correlation controlling for "
            "the condition") in rule


def findings_rules(r):
    from bnrep.rules import rules

    return rules(r.norms, r.ref)


def test_a_claim_against_a_reference_with_overrides_names_the_judged_side_s_recipe_too():
    """Against bn-b4, BatchNorm at the default batch read 'BatchNorm ... compared with BatchNorm at batch size 4', and
    claim 3's 'where BatchNorm clusters are again purer' named neither side."""
    from bnrep import findings

    BASE.override(conditions="batch; bn-b4:batch,batch_size=4; none")  # registers bn-b4
    assert findings.claim(1, "batch", "bn-b4") == ("BatchNorm at the study's batch size does not consistently induce "
                                                   "nor prevent sparsity in hidden representations, compared with "
                                                   "BatchNorm at batch size 4.")
    assert findings.claim(3, "batch", "bn-b4").endswith("where its clusters are again purer.")
    assert findings.claim(1, "none", "bn-b4").startswith("No norm at the study's batch size does not")


def test_a_claim_against_none_names_it_where_the_condition_changes_the_recipe_too():
    """gbn4-b16 differs from none in its norm and its batch size: "than models trained without" left open
    without what; a plain ghost:8 keeps the paper's words. A claim starts with a capital."""
    from bnrep import findings

    BASE.override(conditions="batch; gbn4-b16:ghost:4,batch_size=16; ghost:8; none")  # registers gbn4-b16
    assert findings.claim(1, "gbn4-b16") == (
        "Ghost BatchNorm (4 per virtual batch) at batch size 16 does not consistently induce nor prevent sparsity in "
        "hidden representations, compared with no norm at the study's batch size.")
    assert findings.claim(3, "gbn4-b16") == (
        "Ghost BatchNorm (4 per virtual batch) at batch size 16 tends to produce purer representational clusters "
        "than models with no norm at the study's batch size, especially in the case of class-based representations. "
        "For class-agnostic representation, results are less clear, except at the final layer, where its clusters "
        "are again purer.")
    assert findings.claim(4, "gbn4-b16").startswith("Ghost BatchNorm (4 per virtual batch) at batch size 16 forms "
                                                    "class-agnostic clusters earlier in the network than no norm at "
                                                    "the study's batch size, and")
    assert findings.claim(3, "ghost:8").startswith("Ghost BatchNorm (8 per virtual batch) tends to produce purer "
                                                   "representational clusters than models trained without, especially")
    assert findings.claim(1, "bn-b4", "bn-b64").endswith("compared with BatchNorm at batch size 64.")  # its own size
    level = {"gbn4-b16": 0.0, "none": 0.0}
    f = findings.finding_early_clusters(_per_layer(level, "dbi", ks=(2, 3)), 1, 10, "gbn4-b16")
    assert "first within +-1 of 10 classes never with gbn4-b16, never with no norm; mean" in f.detail, f.detail


def test_the_findings_matrix_words_each_claim_for_the_condition_judged_and_the_reference():
    """Columns 'bn-b4 vs bn-b64' under the paper's 'BatchNorm ... than models trained without' read as a claim
    nobody tested: the matrix words the claim for any column, the evidence table gives each as tested."""
    import pandas as pd

    from bnrep import findings, verdicts
    from bnrep.results import Results

    e = BASE.override(conditions="bn-b4:batch,batch_size=4; bn-b16:batch,batch_size=16; bn-b64:batch,batch_size=64",
                      reference="bn-b64")
    cond = [c for c in ("bn-b4", "bn-b16", "bn-b64") for _ in range(3)]
    key = dict(model_id=[f"m{i}" for i in range(9)], norm="batch", condition=cond, seed=[0, 1, 2] * 3)
    r = Results(e, {"training": pd.DataFrame(dict(key, train_acc=1.0, test_acc=[.9, .91, .92] * 3)),
                    "layer_sparsity": pd.DataFrame(dict(key, layer="l1", layer_index=1, eps=0.0, activation="ReLU",
                                                        sparsity=[.5, .52, .51] * 3))})
    fs = findings.findings(r)
    blocks = verdicts.findings_blocks(r, fs)
    (matrix, evidence) = [b[1:] for b in blocks if b[0] == "table"][:2]
    assert matrix[0] == ["#", "Claim (paper section 6, worded for the condition judged)", "bn-b4 vs bn-b64",
                         "bn-b16 vs bn-b64"]
    assert [row[1] for row in matrix[1]] == [
        "The condition judged does not consistently induce nor prevent sparsity in hidden representations, compared "
        "with the reference.",
        "Sparse representations do not correlate with better generalization (models with the condition judged and "
        "with the reference).",
        "The condition judged tends to produce purer representational clusters than models with the reference, "
        "especially in the case of class-based representations. For class-agnostic representation, results are less "
        "clear, except at the final layer, where its clusters are again purer.",
        "The condition judged forms class-agnostic clusters earlier in the network than the reference, and these "
        "early clusters are more consistent with the actual number of classes."]
    assert evidence[0] == ["#", "Condition", "Claim tested", "Verdict", "Evidence"]
    assert evidence[1][0][:3] == ["1", "bn-b4", "BatchNorm at batch size 4 does not consistently induce nor prevent "
                                  "sparsity in hidden representations, compared with BatchNorm at batch size 64."]
    assert [row[2] for row in evidence[1]] == [f.claim for f in fs]
    assert ("p", "Each claim judged for each condition against the reference BatchNorm at batch size 64 (bn-b64); "
                 "the second table gives each claim as worded for the condition it judges, with its evidence:") in blocks


@pytest.mark.parametrize("given,said", [
    ("Renorm:20,none", r"condition 'Renorm:20': unknown norm 'Renorm:20' \(valid: .*\); did you mean renorm:20\?$"),
    ("Ghost:8,none", r"did you mean ghost:8\?$"),
    ("batch,ghots:4", r"condition 'ghots:4': unknown norm 'ghots:4' \(valid: .*\); did you mean ghost:4\?$"),
    ("renrom:10,none", r"unknown norm 'renrom:10' .*; did you mean renorm:10\?$"),  # (was: unknown norm '10')
    ("ghost: 4,none", r"ghost: 4: ghost:B needs a whole number B >= 1; did you mean ghost:4\?$"),
    ("WS+Group,none", r"unknown norm 'WS\+Group' .*; did you mean ws\+group\?$"),
    ("batchh,none", r"unknown norm 'batchh' .*; did you mean batch\?$"),
    ("bn-b4:batchh,batch_size=4; none", r"condition 'bn-b4:batchh,batch_size=4': unknown norm 'batchh' .*; did you "
                                        r"mean batch\?$"),
    ("mine:7,none", r"condition 'mine:7': unknown norm 'mine:7' \(valid: [^;]*\)$"),  # nothing near it
    ("batch,ghots", r"unknown norm 'ghots' .*; did you mean ghost:B\?$"),  # a family misspelt, its argument left out
    ("Renorm:0,none", r"unknown norm 'Renorm:0' \(valid: [^;]*\)$"),  # renorm:0 is no norm either
    ("renorm,none", r"renorm: the norm needs its W, renorm:W \(a whole number W >= 1\)$"),
    ("ghost,none", r"ghost: the norm needs its B, ghost:B \(a whole number B >= 1\)$"),
])
def test_a_family_typed_without_its_argument_or_capitalised_is_named(given, said):
    """'Renorm:20' read as a tag and '20' as its norm; a bare 'renorm' got the list of every norm; a misspelt
    family ('ghots:4') was named as an unknown norm '4', and a misspelt norm got no suggestion."""
    with pytest.raises(ConfigError, match=said):
        get_experiment("digits-cnn").override(norms=given)
