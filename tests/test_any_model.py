"""A torchvision network with its norms swapped, through every stage as a user runs it:

    bnrep run --smoke-test --model torchvision:resnet18 --norms batch,group

then status, the notebook API and a rerun that finds everything done. (A
researcher's own module on a multi-node cluster: tests/test_cluster.py.)
"""

import subprocess
import sys

import pandas as pd
import pytest

from bnrep.api import open_results
from bnrep.status import stage_status
from bnrep.store import Store
from tests.conftest import tree

pytestmark = pytest.mark.slow

SPEC = "torchvision:resnet18"
ARGS = ["run", "--smoke-test", "--model", SPEC, "--norms", "batch,group"]  # (none too: tests/test_probes.py)
MODELS = sorted(f"torchvision-resnet18-{tag}-s{s}" for tag in ("bn", "gn") for s in (0, 1))
LAYERS = ["relu"] + [f"layer{i}.{j}.relu:{c}" for i in range(1, 5) for j in (0, 1) for c in (1, 2)]


def bnrep(out, *args):
    r = subprocess.run([sys.executable, "-m", "bnrep", *args, "--out", str(out)], capture_output=True, text=True,
                       cwd=out.parent)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("anymodel") / "runs"
    return out, bnrep(out, *ARGS)


def test_every_stage_of_a_torchvision_model(run):
    out, log = run
    res = out / "digits-cnn" / "results"
    training = pd.read_parquet(res / "training")
    assert sorted(training["model_id"]) == MODELS
    assert (training["model"] == SPEC).all() and (training["arch"] == SPEC).all()
    ls = pd.read_parquet(res / "layer_sparsity")
    for mid, g in ls.groupby("model_id"):
        assert list(g.sort_values("layer_index")["layer"]) == LAYERS, mid  # 17 ReLU calls, one probe each
    assert (ls["activation"] == "ReLU").all()
    for table in ("class_dbi", "nc1", "effective_rank"):
        df = pd.read_parquet(res / table)
        assert len(df) == len(MODELS) * len(LAYERS) and not df.duplicated(["model_id", "layer_index"]).any()
    store = Store(str(out), "digits-cnn")
    assert store.has_part("kmeans", "torchvision-resnet18-gn-s1-layer4.1.relu:2")
    assert not [p for p in res.rglob("*") if ":" in p.name]  # file names safe on every filesystem and S3
    md = (out / "digits-cnn" / "report" / "report.md").read_text()
    assert "GroupNorm" in md and SPEC in md
    assert {s: state for s, state, _ in stage_status(str(out), "digits-cnn")} == {
        "hparam": "complete", "final": "complete", "analysis": "complete", "report": "complete", "writer": "none"}


def test_notebook_api_reads_a_reused_relu(run):
    out, _ = run
    study = open_results(str(out), "digits-cnn")
    X = study.representations("torchvision-resnet18-bn-s0", "layer1.0.relu:2")
    assert tuple(X.shape) == (160, 64)  # smoke: 160 clustering samples; layer1 has 64 channels
    with pytest.raises(KeyError, match="has no layer 'layer1.0.relu'"):
        study.representations("torchvision-resnet18-bn-s0", "layer1.0.relu")  # called twice: :1 and :2


def test_rerun_finds_everything_done(run):
    out, _ = run
    before = {k: v for k, v in tree(out).items() if "/.lock/" not in k}
    log = bnrep(out, *ARGS)
    assert "[final] 4 of 4 models already trained" in log
    assert f"[analysis] 4 models x {len(LAYERS)} layers; 4 models complete, 0 tasks to run" in log
    after = {k: v for k, v in tree(out).items() if "/.lock/" not in k}
    assert {k: v for k, v in after.items() if "/results/" in k or "/train/models/" in k} == \
        {k: v for k, v in before.items() if "/results/" in k or "/train/models/" in k}


def test_torchvision_models_with_auxiliary_heads_train_on_their_logits():
    """GoogLeNet and Inception v3 are built without their auxiliary classifiers: in training too they
    give a tensor of logits (with them, a named tuple the loss cannot take)."""
    import torch

    from bnrep.models import check_model

    for spec, size in (("torchvision:googlenet", 32), ("torchvision:inception_v3", 80)):
        model = check_model(spec, ["batch"], (1, size, size), 3).train()
        assert model(torch.zeros(2, 1, size, size)).shape == (2, 3), spec
