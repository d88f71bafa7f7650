"""The normalisation axis end to end: a synthetic study over batch, group,
layer and none through every stage, its tables per norm and a report that
names all four; then more sparsity thresholds added to the finished run
compute only the sparsity rows (no retraining, no second k-means sweep).
"""

import subprocess
import sys

import pandas as pd
import pytest

from bnrep.store import Store

pytestmark = pytest.mark.slow

NORMS = ["batch", "group", "layer", "none"]
FLAGS = ["--experiment", "synthetic-cnn", "--smoke-test", "--norms", ",".join(NORMS)]
MODELS = [f"cnn-{tag}-s{s}" for tag in ("bn", "gn", "ln", "nobn") for s in (0, 1)]
LAYERS = 5


def bnrep(*args, out):
    r = subprocess.run([sys.executable, "-m", "bnrep", *args, "--out", str(out)], capture_output=True, text=True,
                       cwd=out.parent)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("norms") / "runs"
    return out, bnrep("run", *FLAGS, out=out)


def test_every_stage_covers_every_norm(study):
    out, log = study
    res = out / "synthetic-cnn" / "results"
    trials = pd.read_parquet(res / "hparam_trials")
    assert trials.groupby("norm").size().to_dict() == {n: 2 for n in NORMS}  # one search per norm
    best = pd.read_json(out / "synthetic-cnn" / "hparam" / "best_hparams.json")
    assert sorted(best.columns) == ["bn", "gn", "ln", "nobn"]
    training = pd.read_parquet(res / "training")
    assert sorted(training["model_id"]) == sorted(MODELS)
    assert (training["bn"] == (training["norm"] == "batch")).all()
    for name, per_model in [("layer_sparsity", LAYERS), ("class_dbi", LAYERS), ("nc1", LAYERS),
                            ("effective_rank", LAYERS), ("kmeans", LAYERS * 5)]:  # smoke: k = 2..6
        df = pd.read_parquet(res / name)
        assert df.groupby("norm").size().to_dict() == {n: 2 * per_model for n in NORMS}, name
    cka = pd.read_parquet(res / "cka")
    pairs = set(zip(cka.model_a, cka.model_b))
    assert len(pairs) == 2 * 6 + 4 * 1 and len(cka) == len(pairs) * LAYERS  # 6 norm pairs x 2 seeds, 4 seed pairs
    md = (out / "synthetic-cnn" / "report" / "report.md").read_text()
    for name in ("BatchNorm", "GroupNorm", "LayerNorm", "no norm"):
        assert name in md, name
    t1 = pd.read_csv(out / "synthetic-cnn" / "report" / "table1.csv")
    assert sorted(t1["bn"]) == ["BN", "GN", "LN", "NBN"]  # a Table 1 row per (architecture, norm)


def test_more_thresholds_compute_only_sparsity(study):
    out, _ = study
    store = Store(str(out), "synthetic-cnn")
    kept = {t: {p: store.part_metadata(t, p) for p in store.parts(t)} for t in ("kmeans", "class_dbi", "cka")}
    before = {p.name: p.stat().st_mtime_ns for p in (out / "synthetic-cnn" / "results" / "kmeans").glob("*.parquet")}
    log = bnrep("analysis", *FLAGS[:3], "--eps", "0,0.01,0.1", out=out)
    assert f"{len(MODELS)} models x {LAYERS} layers; 0 models complete, {len(MODELS)} tasks to run" in log
    after = {p.name: p.stat().st_mtime_ns for p in (out / "synthetic-cnn" / "results" / "kmeans").glob("*.parquet")}
    assert after == before  # no second k-means sweep
    assert {t: {p: store.part_metadata(t, p) for p in store.parts(t)} for t in kept} == kept
    ls = pd.read_parquet(out / "synthetic-cnn" / "results" / "layer_sparsity")
    assert ls.groupby("eps").size().to_dict() == {0.0: 40, 0.01: 40, 0.1: 40}
    grows = ls.sort_values("eps").groupby(["model_id", "layer"])["sparsity"].is_monotonic_increasing
    assert grows.all()  # |x| <= eps counts more as eps grows
    assert "[final]" not in log  # the analysis alone: nothing retrained


def test_the_schema_in_bnrep_store_names_every_column_the_stages_write(study):
    """bnrep.store's docstring is where the schema is written down (the README points there): every column of
    every table a run writes is named in its table's entry (a measure added without its schema failed this)."""
    import re

    import bnrep.store
    from bnrep.store import TABLES

    entries, name = {}, None
    for line in bnrep.store.__doc__.splitlines():
        head = re.match(r"^    (\w+) ", line)
        if head and head.group(1) in TABLES:
            name = head.group(1)
        elif not line.startswith("        "):
            name = None
        if name:
            entries.setdefault(name, set()).update(re.findall(r"[a-z_][a-z0-9_]*", line))
    out, _ = study
    store = Store(str(out), "synthetic-cnn")
    assert set(TABLES) == set(entries)
    for table in TABLES:
        written = set(store.read_table(table).columns) - ({"epoch"} if TABLES[table].stage == "analysis" else set())
        assert written and written <= entries[table], (table, written - entries[table])  # (epoch: said once for all)
