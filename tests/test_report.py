"""Reports: Table 1 numbers, figure contents, findings verdicts, HTML, partial and missing results."""

import importlib.util
import json
import math
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from bnrep import report
from bnrep.experiments import get_experiment
from bnrep.store import Store
from tests.report_fixtures import CNN_LAYERS, cnn_kopt, make_tables, vgg_tables, write_tables

ROOT = report.__file__.rsplit("/bnrep/", 1)[0]
BLUE, ORANGE = "#1f77b4", "#ff7f0e"
SMALL = dict(channels=[3] * 5, k_range=range(2, 13), epochs=6)  # small and fast to draw


def acc(bn, seed):  # test accuracy 98/99 alternating (BN) -> 98.500 +- 0.577; 97 (no BN) -> 97.000 +- 0.000
    return (1.0, 0.99, (0.98, 0.99)[seed % 2]) if bn else (1.0, 0.985 - 0.01 * seed, 0.97)


def cnn(**kw) -> report.Results:
    return report.Results(get_experiment("digits-cnn"), make_tables(**{**SMALL, "acc": acc, **kw}))


def vgg() -> report.Results:
    return report.Results(get_experiment("cifar10-vgg16"), vgg_tables(channels=[2] * 13, seeds=2))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """One complete report on the small CNN fixture."""
    out = tmp_path_factory.mktemp("full")
    write_tables(out, "digits-cnn", cnn().tables)
    return out, report.build_report(str(out), "digits-cnn")


# ==== Table 1 ====

def test_table1_numbers_exact():
    t = report.table1(cnn().table("training")).set_index("bn")
    assert list(t.index) == ["BN", "NBN"] and list(t["model"]) == ["CNN Digits"] * 2
    assert t.loc["BN", "test_acc_mean"] == pytest.approx(98.5)
    assert t.loc["BN", "test_acc_std"] == pytest.approx(math.sqrt(1 / 3))  # ddof=1 over 4 seeds
    assert t.loc["NBN", "val_acc_mean"] == pytest.approx(97.0)  # 98.5, 97.5, 96.5, 95.5
    assert t.loc["NBN", "val_acc_std"] == pytest.approx(np.std([98.5, 97.5, 96.5, 95.5], ddof=1))
    assert t.loc["BN", "seeds"] == 4 and t.loc["BN", "interpolated"] == 4


def test_table1_files(full):
    out, res = full
    d = out / "digits-cnn" / "report"
    md, tex = (d / "table1.md").read_text(), (d / "table1.tex").read_text()
    assert "| CNN Digits | BN | 4 | 100.000 ± 0.000 | 99.000 ± 0.000 | 98.500 ± 0.577 |" in md
    assert r"CNN Digits & NBN & 4 & 100.000 $\pm$ 0.000 & 97.000 $\pm$ 1.291 & 97.000 $\pm$ 0.000 \\" in tex
    csv = pd.read_csv(d / "table1.csv")
    assert csv.loc[csv["bn"] == "BN", "test_acc_std"].item() == pytest.approx(0.5774, abs=1e-4)
    assert "98.500 ± 0.577" in res.summary


def test_one_seed_has_no_std():
    t = report.table1(make_tables(seeds=1, **SMALL)["training"])
    assert report.table1_rows(t)[1][0][3] == "100.000 ± n/a"


# ==== figures ====

def series(ax) -> dict[str, tuple[str, list]]:
    """label -> (colour, y values) of the error-bar series on an axes."""
    return {c.get_label(): (to_hex(c.lines[0].get_color()), list(c.lines[0].get_ydata())) for c in ax.containers}


def ticks(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def test_fig_layer_sparsity_series_colours_layers():
    r = cnn()
    fig = report.fig_layer_sparsity(r)
    (ax,) = fig.axes
    s = series(ax)
    want = r.table("layer_sparsity").groupby(["bn", "layer_index"])["sparsity"].mean()
    assert s["BatchNorm"] == (BLUE, pytest.approx(list(want[True])))
    assert s["no BatchNorm"][0] == ORANGE
    assert ticks(ax) == CNN_LAYERS
    assert "4 seeds" in ax.get_title() and ax.get_ylabel().startswith("layer sparsity")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["BatchNorm", "no BatchNorm"]


def test_fig_class_dbi_vgg_starts_at_first_shown_layer():
    (ax,) = report.fig_class_dbi(vgg()).axes
    assert ticks(ax) == [f"conv{i}" for i in range(6, 14)]
    assert "2 seeds" in ax.get_title() and set(series(ax)) == {"BatchNorm", "no BatchNorm"}


def test_fig_optimal_k_and_kmeans_dbi():
    r = cnn()
    (ax,) = report.fig_optimal_k(r).axes
    assert series(ax)["BatchNorm"][1] == [cnn_kopt(True, i) for i in range(1, 6)]
    assert series(ax)["no BatchNorm"][1] == [cnn_kopt(False, i) for i in range(1, 6)]
    assert [tuple(l.get_ydata()) for l in ax.lines if l.get_label() == "10 classes"] == [(10, 10)]
    (ax,) = report.fig_kmeans_dbi(r).axes
    assert {c for c, _ in series(ax).values()} == {BLUE, ORANGE} and ticks(ax) == CNN_LAYERS


@pytest.mark.parametrize("make,layers", [
    (cnn, ["conv1 (layer 1)", "conv2 (layer 2)", "conv3 (layer 3)", "conv4 (layer 4)"]),  # paper Figure 1
    (vgg, ["conv6 (layer 6)", "conv10 (layer 10)", "conv13 (layer 13)"]),  # paper Figure 2
])
def test_fig_channel_sparsity_panels(make, layers):
    r = make()
    axes = [a for a in report.fig_channel_sparsity(r).axes if a.axison]
    assert [a.get_title().split(": ", 1)[1] for a in axes] == layers
    for a in axes:
        assert [to_hex(l.get_color()) for l in a.lines] == [BLUE, ORANGE]
        assert len(a.lines[0].get_xdata()) == r.table("channel_sparsity").query("layer_index == 1")["channel"].nunique()
    assert "seeds" in axes[0].get_legend().get_texts()[0].get_text()


def test_beyond_the_paper_figures():
    axes = [a for a in report.fig_kmeans_sweep(vgg()).axes if a.axison]
    assert len(axes) == 8 and axes[0].get_title().endswith("conv6")  # layers 6..13, rows of 4
    assert [to_hex(l.get_color()) for l in axes[0].lines] == [BLUE, ORANGE]
    loss, accuracy = report.fig_learning_curves(cnn()).axes
    assert loss.get_yscale() == "log" and len(accuracy.lines) == 4  # train, validation x BN, no BN


def test_combined_figure_has_a_panel_per_experiment_and_missing_tables_give_none():
    fig = report.fig_layer_sparsity([cnn(), vgg()])
    assert [a.get_title().split(",")[0] for a in fig.axes] == ["(a) CNN Digits", "(b) VGG-16 CIFAR10"]
    empty = report.Results(get_experiment("digits-cnn"), {})
    assert all(spec.make(empty) is None for spec in report.FIGURES)


# ==== findings ====

def per_layer(value: str, bn_vals, nobn_vals, seeds: int = 2) -> pd.DataFrame:
    rows = [dict(model_id=f"{bn}-{s}", bn=bn, seed=s, layer=f"l{i}", layer_index=i, **{value: v + 1e-4 * s})
            for bn, vals in ((True, bn_vals), (False, nobn_vals)) for s in range(seeds)
            for i, v in enumerate(vals, start=1)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("name,bn,nobn,verdict", [
    ("both directions", [.5, .5, .3, .3, .3], [.3, .3, .5, .5, .5], "supported"),
    ("no difference", [.4] * 5, [.405] * 5, "supported"),
    ("BN sparser everywhere", [.6] * 5, [.4] * 5, "not supported"),
    ("BN less sparse everywhere", [.3] * 5, [.5] * 5, "not supported"),
    ("paper MNIST: less sparse but the last", [.3, .3, .3, .3, .8], [.5] * 5, "mixed"),
    ("sparser or equal", [.6, .6, .4, .4, .4], [.4] * 5, "mixed"),
])
def test_finding_sparsity(name, bn, nobn, verdict):
    f = report.finding_sparsity(per_layer("sparsity", bn, nobn))
    assert f.verdict == verdict, (name, f.detail)


def corr_data(test_acc) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = len(test_acc)
    ids = [f"m{i}" for i in range(n)]
    tr = pd.DataFrame(dict(model_id=ids, bn=[i % 2 == 0 for i in range(n)], seed=range(n),
                           train_acc=1.0, test_acc=test_acc))
    ls = pd.DataFrame(dict(model_id=ids, bn=tr["bn"], seed=range(n), layer="l1", layer_index=1,
                           sparsity=np.arange(1, n + 1) / 10))
    return tr, ls


@pytest.mark.parametrize("name,test_acc,verdict", [
    ("uncorrelated (symmetric)", [.90, .95, .92, .97, .97, .92, .95, .90], "supported"),
    ("sparser generalises better", [.90, .91, .92, .93, .94, .95, .96, .97], "not supported"),
    ("sparser generalises worse", [.97, .96, .95, .94, .93, .92, .91, .90], "mixed"),
    ("too few models", [.9, .95, .92], "not evaluated"),
])
def test_finding_generalisation(name, test_acc, verdict):
    f = report.finding_generalisation(*corr_data(test_acc))
    assert f.verdict == verdict, (name, f.detail)
    if verdict != "not evaluated":
        assert "Pearson r" in f.detail and "Spearman" in f.detail


FINAL_BN_WORSE = lambda bn, li: 1.0 + (0.3 if bn and li == 5 else 0.0)  # noqa: E731


@pytest.mark.parametrize("name,kw,verdict", [
    ("BN purer, final k-means purer", {}, "supported"),
    ("class purer, final k-means not", dict(kmeans_dbi=FINAL_BN_WORSE), "mixed"),
    ("BN worse everywhere", dict(class_dbi=lambda bn, li: 2.0 + bn, kmeans_dbi=FINAL_BN_WORSE), "not supported"),
])
def test_finding_purity(name, kw, verdict):
    t = make_tables(**SMALL, **kw)
    f = report.finding_purity(t["class_dbi"], t["kmeans"], 1)
    assert f.verdict == verdict, (name, f.detail)


def test_finding_purity_nan_and_one_part():
    dead = lambda bn, li: math.nan if bn and li == 1 else (6.0 - li) * (0.8 if bn else 1.0)  # noqa: E731
    t = make_tables(**SMALL, class_dbi=dead)
    f = report.finding_purity(t["class_dbi"], pd.DataFrame(), 1)
    assert f.verdict == "supported" and "4 of 4 shown layers" in f.detail
    assert "4 of 40 DBI values NaN" in f.detail and "only one of the two parts" in f.detail
    assert report.finding_purity(pd.DataFrame(), pd.DataFrame(), 1).verdict == "not evaluated"


KOPT = {"supported": cnn_kopt,
        "mixed": lambda bn, li: ([2, 2, 10, 10, 10] if bn else [6, 6, 6, 10, 10])[li - 1],  # earlier, not closer
        "not supported": lambda bn, li: cnn_kopt(not bn, li)}


@pytest.mark.parametrize("verdict", list(KOPT))
def test_finding_early_clusters(verdict):
    f = report.finding_early_clusters(make_tables(**SMALL, kopt=KOPT[verdict])["kmeans"], 1)
    assert f.verdict == verdict, f.detail


def test_optimal_k_skips_dead_layers_and_breaks_ties_low():
    km = pd.DataFrame(dict(model_id="m", bn=True, seed=0, layer=["a"] * 3 + ["b"] * 2, layer_index=[1] * 3 + [2] * 2,
                           k=[2, 3, 4, 2, 3], dbi=[0.5, 0.3, 0.3, math.nan, math.nan], inertia=1.0))
    best = report.optimal_k(km)
    assert best[["layer", "k_opt", "dbi"]].values.tolist() == [["a", 3, 0.3]]


def test_across_experiments_sparsity():
    less = report.finding_sparsity(per_layer("sparsity", [.3] * 4 + [.8], [.5] * 5))
    more = report.finding_sparsity(per_layer("sparsity", [.6] * 5, [.4] * 5))
    assert report.finding_sparsity_across({"a": less, "b": more}).verdict == "supported"
    assert report.finding_sparsity_across({"a": more, "b": more}).verdict == "not supported"


# ==== whole reports ====

def test_report_files_and_self_contained_html(full):
    out, res = full
    d = out / "digits-cnn" / "report"
    figs = [s.name for s in report.FIGURES]
    for name in ["report.md", "report.html", "findings.json", "report_inputs.json", "table1.csv"] + \
            [f"{f}.{x}" for f in figs for x in ("png", "svg")]:
        assert (d / name).is_file() and name in res.files, name
    html = (d / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(figs)
    assert not re.search(r"https?://|<script|<link|<iframe|@import|url\(", html, re.I)
    assert re.findall(r'src="([^"]{0,5})', html) == ["data:"] * len(figs)
    md = (d / "report.md").read_text()
    assert all(f"![{f}]({f}.png)" in md for f in figs) and "bnrep version" in md and "8 |" in md
    verdicts = [f["verdict"] for f in json.loads((d / "findings.json").read_text())]
    assert verdicts == [f.verdict for f in res.findings] and "not evaluated" not in verdicts
    assert res.missing == [] and res.html.endswith("digits-cnn/report/report.html")


def test_report_is_current(full, tmp_path):
    out, _ = full
    assert report.report_is_current(str(out), "digits-cnn")
    assert not report.report_is_current(str(tmp_path), "digits-cnn")
    Store(str(out), "digits-cnn").write_part("training", "late", cnn().table("training").head(1))
    assert not report.report_is_current(str(out), "digits-cnn")
    Store(str(out), "digits-cnn").delete("results/training/late.parquet")
    assert report.report_is_current(str(out), "digits-cnn")


def test_partial_results_on_a_uri(tmp_path):
    write_tables(tmp_path, "digits-cnn", {"training": cnn().table("training")})
    out = f"file://{tmp_path}"
    res = report.build_report(out, "digits-cnn")
    md = (tmp_path / "digits-cnn" / "report" / "report.md").read_text()
    assert f"`python analysis/run.py --experiment digits-cnn --out {out}`" in md
    assert "results/training_history" in md and "sweeps/final.py" in md
    assert not any(f.startswith("fig_") for f in res.files) and "table1.md" in res.files
    assert [f.verdict for f in res.findings] == ["not evaluated"] * 4
    assert "98.500 ± 0.577" in (tmp_path / "digits-cnn" / "report" / "report.html").read_text()


def test_no_results_is_a_one_line_error(tmp_path):
    with pytest.raises(report.ReportError) as e:
        report.build_report(str(tmp_path), "digits-cnn")
    msg = str(e.value)
    assert "\n" not in msg and "python sweeps/final.py --experiment digits-cnn" in msg and "bnrep run" in msg
    assert not (tmp_path / "digits-cnn" / "report").exists()


def test_combined_report(tmp_path):
    write_tables(tmp_path, "digits-cnn", cnn().tables)
    write_tables(tmp_path, "mnist-cnn", make_tables("mnist-cnn", seeds=2, **SMALL))
    res = report.build_combined_report(str(tmp_path), ["digits-cnn", "mnist-cnn", "fashion-mnist-cnn"],
                                       dest=str(tmp_path / "both"))
    d = tmp_path / "both"
    assert (d / "report.html").is_file() and (d / "fig_class_dbi.png").is_file()
    md = (d / "report.md").read_text()
    assert "fashion-mnist-cnn: no results" in md and "| CNN MNIST | NBN | 2 |" in md
    fj = json.loads((d / "findings.json").read_text())
    assert set(fj) == {"across", "digits-cnn", "mnist-cnn"}
    assert "Findings digits-cnn:" in res.summary and "Findings mnist-cnn:" in res.summary
    with pytest.raises(report.ReportError):
        report.build_combined_report(str(tmp_path), ["cifar10-vgg16"])


def test_config_json_overrides_the_preset(tmp_path):
    e = get_experiment("digits-cnn").override(first_shown_layer=3, name="my-digits")
    Store(str(tmp_path), "my-digits").write_json("config.json", {"experiment": e.to_dict(), "config_hash": "x"})
    assert report.load_experiment(Store(str(tmp_path), "my-digits"), "my-digits") == e
    assert report.load_experiment(Store(str(tmp_path), "digits-cnn"), "digits-cnn") == get_experiment("digits-cnn")


# ==== driver ====

@pytest.fixture(scope="module")
def driver():
    spec = importlib.util.spec_from_file_location("report_driver", f"{ROOT}/analysis/report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_driver_exit_codes(driver, tmp_path, capsys):
    out = str(tmp_path)
    assert driver.main(["--experiment", "nope", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown experiment 'nope'" in err
    assert driver.main(["--out", out]) == 1
    assert "python sweeps/final.py --experiment digits-cnn" in capsys.readouterr().err
    assert driver.main(["--all", "--out", out]) == 1
    for name in ("digits-cnn", "mnist-cnn"):
        write_tables(tmp_path, name, {"training": make_tables(name, **SMALL)["training"]})
    assert driver.main(["--experiment", "digits-cnn", "--out", out]) == 0
    assert "Table 1" in capsys.readouterr().out and (tmp_path / "digits-cnn/report/report.html").is_file()
    assert driver.main(["--all", "--out", out]) == 0
    assert (tmp_path / "mnist-cnn/report/report.md").is_file() and (tmp_path / "combined/report.html").is_file()
    assert report.find_experiments(out) == ["digits-cnn", "mnist-cnn"]


def test_driver_parser_is_reusable(driver):
    import argparse

    p = driver.add_args(argparse.ArgumentParser())
    assert vars(p.parse_args([])) == {"experiment": "digits-cnn", "experiments": None, "all": False, "force": False,
                                      "out": "./runs"}
    assert driver.build_parser().parse_args(["--experiments", "a", "b"]).experiments == ["a", "b"]
    with pytest.raises(SystemExit):
        driver.build_parser().parse_args(["--all", "--experiment", "x"])


def test_driver_runs_as_a_script(tmp_path):
    r = subprocess.run([sys.executable, "analysis/report.py", "--experiment", "nope", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: unknown experiment")


def test_driver_skips_an_up_to_date_report(tmp_path, capsys, driver):
    out = str(tmp_path)
    write_tables(tmp_path, "digits-cnn", make_tables("digits-cnn", **SMALL))
    assert driver.main(["--experiment", "digits-cnn", "--out", out]) == 0
    html = tmp_path / "digits-cnn" / "report" / "report.html"
    mtime = html.stat().st_mtime_ns
    capsys.readouterr()
    assert driver.main(["--experiment", "digits-cnn", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "report is up to date" in printed and "Table 1" in printed  # the summary, from summary.txt
    assert html.stat().st_mtime_ns == mtime
    assert driver.main(["--experiment", "digits-cnn", "--out", out, "--force"]) == 0
    assert html.stat().st_mtime_ns != mtime
