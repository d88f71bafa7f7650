"""Reports: Table 1 numbers, figure contents, findings verdicts, HTML, partial and missing results."""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import to_hex

from bnrep import captions, conditions, correlations, figures, findings, report, results, rules, verdicts
from bnrep.measures import NO_BATCH_STATISTICS
from bnrep.experiments import get_experiment
from bnrep.store import Store
from bnrep.results import COLORS, SHORT
from tests.report_fixtures import CNN_LAYERS, cnn_kopt, cnn_sparsity, make_tables, vgg_tables, write_tables

ROOT = report.__file__.rsplit("/bnrep/", 1)[0]
BLUE, ORANGE = "#1f77b4", "#ff7f0e"
SMALL = dict(channels=[3] * 5, k_range=range(2, 13), epochs=6)  # small and fast to draw
EPS3 = (0.0, 0.01, 0.1)  # sparsity thresholds


def acc(bn, seed):  # test accuracy 98/99 alternating (BN) -> 98.500 +- 0.577; 97 (no BN) -> 97.000 +- 0.000
    return (1.0, 0.99, (0.98, 0.99)[seed % 2]) if bn else (1.0, 0.985 - 0.01 * seed, 0.97)


def cnn(**kw) -> findings.Results:
    return results.Results(get_experiment("digits-cnn"), make_tables(**{**SMALL, "acc": acc, **kw}))


def vgg() -> findings.Results:
    return results.Results(get_experiment("cifar10-vgg16"), vgg_tables(channels=[2] * 13, seeds=2))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """One complete report on the small CNN fixture, every table, three sparsity thresholds."""
    out = tmp_path_factory.mktemp("full")
    write_tables(out, "digits-cnn", cnn(eps=EPS3).tables)
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
    assert csv[["bn", "condition", "norm"]].values.tolist() == [["BN", "batch", "batch"], ["NBN", "none", "none"]]
    assert "98.500 ± 0.577" in res.summary


def test_table1_tex_escapes_what_latex_reads_as_commands():
    from bnrep.table1 import tex_text

    assert tex_text("bn_b16 & my#1 50% {x} ~^ $5 a\\b ±") == (
        r"bn\_b16 \& my\#1 50\% \{x\} \textasciitilde{}\textasciicircum{} \$5 a\textbackslash{}b $\pm$")


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
    fig = figures.fig_layer_sparsity(r)
    (ax,) = fig.axes
    s = series(ax)
    want = r.table("layer_sparsity").groupby(["bn", "layer_index"])["sparsity"].mean()
    assert s["BatchNorm"] == (BLUE, pytest.approx(list(want[True])))
    assert s["no BatchNorm"][0] == ORANGE
    assert ticks(ax) == CNN_LAYERS
    assert "4 seeds" in ax.get_title() and ax.get_ylabel().startswith("layer sparsity")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["BatchNorm", "no BatchNorm"]


def test_fig_class_dbi_vgg_starts_at_first_shown_layer():
    (ax,) = figures.fig_class_dbi(vgg()).axes
    assert ticks(ax) == [f"conv{i}" for i in range(6, 14)]
    assert "2 seeds" in ax.get_title() and set(series(ax)) == {"BatchNorm", "no BatchNorm"}


def test_fig_optimal_k_and_kmeans_dbi():
    r = cnn()
    (ax,) = figures.fig_optimal_k(r).axes
    assert series(ax)["BatchNorm"][1] == [cnn_kopt(True, i) for i in range(1, 6)]
    assert series(ax)["no BatchNorm"][1] == [cnn_kopt(False, i) for i in range(1, 6)]
    assert [tuple(l.get_ydata()) for l in ax.lines if l.get_label() == "10 classes"] == [(10, 10)]
    assert ax.get_ylim() == (1.5, 12.5)  # the k searched, 2..12
    assert "the y axis spans the k searched, 2..12; dashed line: the 10 classes." in captions.caption(
        figures.figure("fig_optimal_k"), [r])
    # a sweep to k = 6 (a smoke test's): 10 clusters cannot be found, and no bar reaches past the k searched; the
    # dashed line at 10 with bars to 6.8 was drawn there
    small = findings.Results(r.experiment, {**r.tables, "kmeans": r.tables["kmeans"].query("k <= 6").assign(
        optimal=lambda d: d.groupby(["model_id", "layer"])["dbi"].transform("min") == d["dbi"])})
    (ax,) = figures.fig_optimal_k(small).axes
    assert ax.get_ylim() == (1.5, 6.5) and not [l for l in ax.lines if l.get_label() == "10 classes"]
    assert "the y axis spans the k searched, 2..6; beyond it (no line drawn) lie the 10 classes. Error bars: " \
           "standard deviation across 4 seeds, cut at the k searched." in captions.caption(
               figures.figure("fig_optimal_k"), [small])
    (ax,) = figures.fig_kmeans_dbi(r).axes
    assert {c for c, _ in series(ax).values()} == {BLUE, ORANGE} and ticks(ax) == CNN_LAYERS


@pytest.mark.parametrize("make,layers", [
    (cnn, ["conv1 (layer 1)", "conv2 (layer 2)", "conv3 (layer 3)", "conv4 (layer 4)"]),  # paper Figure 1
    (vgg, ["conv6 (layer 6)", "conv10 (layer 10)", "conv13 (layer 13)"]),  # paper Figure 2
])
def test_fig_channel_sparsity_panels(make, layers):
    r = make()
    axes = [a for a in figures.fig_channel_sparsity(r).axes if a.axison]
    assert [a.get_title().split(": ", 1)[1] for a in axes] == layers
    for a in axes:
        assert [to_hex(l.get_color()) for l in a.lines] == [BLUE, ORANGE]
        assert len(a.lines[0].get_xdata()) == r.table("channel_sparsity").query("layer_index == 1")["channel"].nunique()
        ticks = a.get_xticks()
        assert len(ticks) >= 2 and all(t == int(t) for t in ticks)  # whole channels (conv1's 16: no 2.5)
    fig = figures.fig_channel_sparsity(r)
    assert [a.get_legend() for a in fig.axes] == [None] * len(fig.axes)  # full panels: the legend below them
    assert "seeds" in fig.legends[0].get_texts()[0].get_text()


def test_beyond_the_paper_figures():
    axes = [a for a in figures.fig_kmeans_sweep(vgg()).axes if a.axison]
    assert len(axes) == 8 and axes[0].get_title().endswith("conv6")  # layers 6..13, rows of 4
    assert [to_hex(l.get_color()) for l in axes[0].lines] == [BLUE, ORANGE]
    loss, accuracy = figures.fig_learning_curves(cnn()).axes
    assert loss.get_yscale() == "log" and len(accuracy.lines) == 4  # train, validation x BN, no BN


def test_combined_figure_has_a_panel_per_experiment_and_missing_tables_give_none():
    fig = figures.fig_layer_sparsity([cnn(), vgg()])
    assert [a.get_title().split(",")[0] for a in fig.axes] == ["(a) CNN Digits", "(b) VGG-16 CIFAR10"]
    empty = results.Results(get_experiment("digits-cnn"), {})
    assert all(spec.make(empty) is None for spec in figures.FIGURES)


# ---- plotted values: every figure read back from its Axes against the tables ----

def errorbars(ax) -> dict[str, tuple[list, list, list]]:
    """label -> (x, y, half-length of each error bar) of the error-bar series on an axes."""
    out = {}
    for c in ax.containers:
        line, _, (bars,) = c.lines
        yerr = [(seg[1][1] - seg[0][1]) / 2 for seg in bars.get_segments()]
        out[c.get_label()] = (list(line.get_xdata()), list(line.get_ydata()), yerr)
    return out


def bands(ax) -> list[tuple[str, dict]]:
    """(colour, {x: (low, high)}) of each fill_between band, in drawing order."""
    out = []
    for coll in ax.collections:
        xy = np.concatenate([p.vertices for p in coll.get_paths()])
        band = {}
        for x, y in xy:
            lo, hi = band.get(x, (y, y))
            band[x] = (min(lo, y), max(hi, y))
        out.append((to_hex(coll.get_facecolor()[0], keep_alpha=False), band))
    return out


def expected(df: pd.DataFrame, x: str, value: str, norm: str, scale: float = 1.0):
    """Seed mean and std (ddof=1, NaN -> 0) of `value` per `x`, computed here with numpy."""
    d = df[df["norm"] == norm]
    xs = sorted(d[x].unique())
    vals = [d.loc[d[x] == v, value].dropna().to_numpy() * scale for v in xs]
    return xs, [v.mean() for v in vals], [v.std(ddof=1) if len(v) > 1 else 0.0 for v in vals]


LABEL = {"batch": "BatchNorm", "none": "no BatchNorm"}


def check_errorbars(ax, df, value, labels=LABEL, dx=None, clip=(-math.inf, math.inf)):
    """`dx`: norm -> how far its points sit from their layers, `clip`: where the bars are cut (the optimal-k
    figure's conditions side by side, its bars within the k searched)."""
    got = errorbars(ax)
    assert set(got) == set(labels[n] for n in df["norm"].unique())
    for norm in df["norm"].unique():
        xs, mean, std = expected(df, "layer_index", value, norm)
        gx, gy, gerr = got[labels[norm]]
        assert gx == pytest.approx([x + (dx or {}).get(norm, 0) for x in xs], abs=1e-12)
        half = [(min(m + s, clip[1]) - max(m - s, clip[0])) / 2 for m, s in zip(mean, std)]
        assert gy == pytest.approx(mean, abs=1e-12) and gerr == pytest.approx(half, abs=1e-12)


def check_bands(ax, df, x, value, norms, scale=1.0, lines=None):
    """Each norm's line is the seed mean and its band mean ± std (`lines`: the Line2D drawn per norm)."""
    lines = lines or ax.lines
    assert len(lines) == len(bands(ax)) == len(norms)
    for line, (colour, band), norm in zip(lines, bands(ax), norms):
        xs, mean, std = expected(df, x, value, norm, scale)
        assert list(line.get_xdata()) == xs and list(line.get_ydata()) == pytest.approx(mean, abs=1e-9)
        assert colour == to_hex(COLORS[norm]) == to_hex(line.get_color())
        assert [band[v] for v in xs] == [pytest.approx((m - s, m + s), abs=1e-9) for m, s in zip(mean, std)]


def optimal_rows(km: pd.DataFrame) -> pd.DataFrame:
    return km[km["optimal"]].rename(columns={"k": "k_opt"})


@pytest.mark.parametrize("make", [cnn, vgg])
def test_per_layer_figures_plot_the_table_values(make):
    r = make()
    first = r.experiment.first_shown_layer
    cases = [(figures.fig_layer_sparsity, r.table("layer_sparsity"), "sparsity"),
             (figures.fig_class_dbi, r.table("class_dbi").query("layer_index >= @first"), "dbi"),
             (figures.fig_optimal_k, optimal_rows(r.table("kmeans")).query("layer_index >= @first"), "k_opt"),
             (figures.fig_kmeans_dbi, optimal_rows(r.table("kmeans")).query("layer_index >= @first"), "dbi")]
    for make_fig, df, value in cases:
        (ax,) = make_fig(r).axes
        side_by_side = {"batch": -figures.DODGE / 2, "none": figures.DODGE / 2}
        if make_fig is figures.fig_optimal_k:
            check_errorbars(ax, df, value, dx=side_by_side, clip=figures.k_searched(r))
        else:
            check_errorbars(ax, df, value)


def test_band_figures_plot_the_table_values():
    r = cnn()
    cs, km, h = r.table("channel_sparsity"), r.table("kmeans"), r.table("training_history")
    axes = [a for a in figures.fig_channel_sparsity(r).axes if a.axison]
    for ax, li in zip(axes, r.experiment.channel_layers):
        check_bands(ax, cs[cs["layer_index"] == li], "channel", "sparsity", ["batch", "none"])
    axes = [a for a in figures.fig_kmeans_sweep(r).axes if a.axison]
    assert len(axes) == 5
    for ax, li in zip(axes, range(1, 6)):
        check_bands(ax, km[km["layer_index"] == li], "k", "dbi", ["batch", "none"])
    loss, acc = figures.fig_learning_curves(r).axes
    check_bands(loss, h, "epoch", "train_loss", ["batch", "none"])
    train = [l for l in acc.lines if l.get_linestyle() == "-"]
    val = [l for l in acc.lines if l.get_linestyle() == "--"]
    assert len(train) == len(val) == 2
    for norm, tl, vl in zip(["batch", "none"], train, val):
        for line, col in ((tl, "train_acc"), (vl, "val_acc")):
            xs, mean, _ = expected(h, "epoch", col, norm, 100)
            assert list(line.get_xdata()) == xs and list(line.get_ydata()) == pytest.approx(mean, abs=1e-9)


# ==== findings ====

def per_layer(value: str, bn_vals, nobn_vals, seeds: int = 2) -> pd.DataFrame:
    rows = [dict(model_id=f"{bn}-{s}", bn=bn, norm="batch" if bn else "none", condition="batch" if bn else "none", seed=s, layer=f"l{i}", layer_index=i,
                 **{value: v + 1e-4 * s})
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
    f = findings.finding_sparsity(per_layer("sparsity", bn, nobn))
    assert f.verdict == verdict, (name, f.detail)


def test_finding_sparsity_with_one_seed_says_its_gaps_were_untestable():
    """A 20 pp gap on one seed counts as no detectable difference: the detail says why (it said 'within 1 pp
    or Welch p >= 0.05' beside '-20.0 pp (p n/a)')."""
    f = findings.finding_sparsity(per_layer("sparsity", [.3] * 5, [.5] * 5, seeds=1))
    assert "no detectable difference (within 1 pp or Welch p >= 0.05, or untestable: under 2 seeds a side) in 5" in f.detail
    assert "untestable" not in findings.finding_sparsity(per_layer("sparsity", [.3] * 5, [.5] * 5)).detail


def test_a_claim_not_evaluated_names_the_side_without_values():
    """Every no-BN model diverged (its values NaN): the reason said 'no finite value of both BN and no BN
    models', as if BN's were missing too. Values on both sides but in no common layer say that."""
    ls = per_layer("sparsity", [.3] * 5, [.5] * 5).assign(eps=0.0, dead_channels=0)  # (its other columns: finite)
    diverged = ls.assign(sparsity=ls["sparsity"].where(ls["condition"] == "batch"))
    f = findings.finding_sparsity(diverged)
    assert f.verdict == "not evaluated"
    assert f.detail == ("results/layer_sparsity hold no finite value of no BN models (models that diverged are not "
                        "analysed).")
    apart = ls[((ls["condition"] == "batch") & (ls["layer_index"] <= 2)) | ((ls["condition"] == "none") &
                                                                             (ls["layer_index"] > 2))]
    assert findings.finding_sparsity(apart).detail == ("results/layer_sparsity hold no layer with a finite value of "
                                                       "both BN and no BN models.")


def corr_data(test_acc) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = len(test_acc)
    ids = [f"m{i}" for i in range(n)]
    bn = [i % 2 == 0 for i in range(n)]
    norm = ["batch" if b else "none" for b in bn]
    tr = pd.DataFrame(dict(model_id=ids, bn=bn, norm=norm, condition=norm, seed=range(n), train_acc=1.0, test_acc=test_acc))
    ls = pd.DataFrame(dict(model_id=ids, bn=bn, norm=norm, condition=norm, seed=range(n), layer="l1", layer_index=1,
                           sparsity=np.arange(1, n + 1) / 10))
    return tr, ls


@pytest.mark.parametrize("name,test_acc,verdict", [
    ("uncorrelated (symmetric)", [.90, .95, .92, .97, .97, .92, .95, .90], "supported"),
    ("sparser generalises better", [.90, .91, .92, .93, .94, .95, .96, .97], "not supported"),
    ("sparser generalises worse", [.97, .96, .95, .94, .93, .92, .91, .90], "mixed"),
    ("too few models", [.9, .95, .92], "not evaluated"),
    ("every model at 100%: nothing to correlate", [1.0] * 8, "inconclusive"),  # (was "supported")
])
def test_finding_generalisation(name, test_acc, verdict):
    f = findings.finding_generalisation(*corr_data(test_acc))
    assert f.verdict == verdict, (name, f.detail)
    if verdict != "not evaluated":
        assert "Pearson r" in f.detail and "Spearman" in f.detail and "nan" not in f.detail
    if verdict == "inconclusive":
        assert f.caveats == ["no correlation can be computed: test accuracy and the generalisation gap are the "
                             "same for every model"]
        assert "Pearson r = n/a (constant) (p = n/a)" in f.detail


def test_generalisation_without_reference_models_says_so():
    tr, ls = corr_data([.90, .95, .92, .97, .97, .92, .95, .90])
    tr, ls = (d.assign(condition=d["condition"].replace({"none": "group"})) for d in (tr, ls))  # batch and group
    f = findings.finding_generalisation(tr, ls)
    assert f.verdict == "not evaluated"  # (judged the 4 BN models alone: "supported")
    assert f.detail.startswith("this study has no models of its reference condition (no norm, `none`): every claim "
                               "compares BN with that condition")


FINAL_BN_WORSE = lambda bn, li: 1.0 + (0.3 if bn and li == 5 else 0.0)  # noqa: E731


@pytest.mark.parametrize("name,kw,verdict", [
    ("BN purer, final k-means purer", {}, "supported"),
    ("class purer, final k-means not", dict(kmeans_dbi=FINAL_BN_WORSE), "mixed"),
    ("BN worse everywhere", dict(class_dbi=lambda bn, li: 2.0 + bn, kmeans_dbi=FINAL_BN_WORSE), "not supported"),
])
def test_finding_purity(name, kw, verdict):
    t = make_tables(**SMALL, **kw)
    f = findings.finding_purity(t["class_dbi"], t["kmeans"], 1)
    assert f.verdict == verdict, (name, f.detail)


def test_finding_purity_writes_small_dbi_values_with_two_significant_digits():
    t = make_tables(**SMALL, kmeans_dbi=lambda bn, li: (0.004 if bn else 0.009) if li == 5 else 1.0)
    f = findings.finding_purity(t["class_dbi"], t["kmeans"], 1)
    end = results.optimal_k(t["kmeans"]).query("layer_index == 5").groupby("condition")["dbi"].mean()
    assert f"fc1: BN {end['batch']:.2g} vs no BN {end['none']:.2g} (Welch p" in f.detail, f.detail  # (0.00 vs 0.02)
    assert 0.001 < end["batch"] < 0.0095 and 0.01 < end["none"] < 0.1


def test_finding_purity_nan_and_one_part():
    dead = lambda bn, li: math.nan if bn and li == 1 else (6.0 - li) * (0.8 if bn else 1.0)  # noqa: E731
    t = make_tables(**SMALL, class_dbi=dead)
    f = findings.finding_purity(t["class_dbi"], pd.DataFrame(), 1)
    assert f.verdict == "supported" and "4 of 4 shown layers" in f.detail
    assert "4 of 40 DBI values NaN" in f.detail and "only one of the two parts" in f.detail
    assert findings.finding_purity(pd.DataFrame(), pd.DataFrame(), 1).verdict == "not evaluated"


def test_finding_purity_final_layer_dead_is_not_judged_on_an_earlier_one():
    """The claim's k-means part is about the final layer: when BN's final layer is dead (no optimal
    k in any seed), that part is not evaluated, not judged on the layer before it."""
    t = make_tables(**SMALL)
    km = t["kmeans"].copy()
    dead = km["bn"] & (km["layer_index"] == km["layer_index"].max())
    km.loc[dead, "dbi"], km.loc[dead, "optimal"] = math.nan, False
    f = findings.finding_purity(t["class_dbi"], km, 1)
    assert "final_layer" not in f.numbers["kmeans_dbi"] and f.numbers["kmeans_dbi"]["layers"] == 4
    assert "has no optimal k with BN (no finite DBI in any seed: a dead layer)" in f.detail
    assert "only one of the two parts" in f.detail
    assert f.verdict == findings.finding_purity(t["class_dbi"], pd.DataFrame(), 1).verdict


def test_finding_purity_final_layer_not_measured_yet_is_said_so_not_called_dead():
    """A report made while the analysis is unfinished: the no-BN models' final layer has no k-means rows
    yet. It said "no finite DBI in any seed: a dead layer" of a layer the finished study measures."""
    t = make_tables(**SMALL)
    km = t["kmeans"]
    km = km[~(~km["bn"] & (km["layer_index"] == km["layer_index"].max()))]
    f = findings.finding_purity(t["class_dbi"], km, 1)
    assert "has no optimal k with no BN (not measured yet: the analysis is not finished)" in f.detail, f.detail
    assert "dead layer" not in f.detail and "final_layer" not in f.numbers["kmeans_dbi"]


KOPT = {"supported": cnn_kopt,
        "mixed": lambda bn, li: ([2, 2, 10, 10, 10] if bn else [6, 6, 6, 10, 10])[li - 1],  # earlier, not closer
        "not supported": lambda bn, li: cnn_kopt(not bn, li)}


@pytest.mark.parametrize("verdict", list(KOPT))
def test_finding_early_clusters(verdict):
    f = findings.finding_early_clusters(make_tables(**SMALL, kopt=KOPT[verdict])["kmeans"], 1)
    assert f.verdict == verdict, f.detail
    if verdict == "mixed":  # layers by name, as the other claims and the figures say them (a Sequential's: "6")
        assert f.detail.startswith("seed-mean optimal k first within +-1 of 10 classes at conv3 with BN, at conv4 "
                                   "without; mean |optimal k - 10| over the early layers conv1, conv2, conv3: "), f.detail
        assert f.numbers["first_layer_reaching"] == {"batch": 3, "none": 4} and f.numbers["early_layers"] == [1, 2, 3]


def test_optimal_k_skips_dead_layers_and_breaks_ties_low(monkeypatch):
    """The analysis stage's rows (measures._kmeans, given each k's DBI) and the report reading them:
    ties to the lowest k, no optimal row for a dead (all-NaN) layer."""
    from bnrep import kmeans, measures

    dbis = {"a": {2: 0.5, 3: 0.3, 4: 0.3}, "b": {2: math.nan, 3: math.nan}}
    rows = []
    for i, (layer, dbi) in enumerate(dbis.items(), start=1):
        monkeypatch.setattr(kmeans, "sweep_kmeans", lambda X, *a, d=dbi, **kw: [
            kmeans.KMeansResult(k, np.zeros(4, np.int64), 1.0, v, None) for k, v in d.items()])
        exp = get_experiment("digits-cnn").override(k_min=2, k_max=max(dbi))
        rows += [dict(model_id="m", bn=True, norm="batch", condition="batch", seed=0, layer=layer, layer_index=i, **r)
                 for r in measures._kmeans(torch.zeros(4, 2), None, exp, 0, "torch")]
    best = results.optimal_k(pd.DataFrame(rows))
    assert best[["layer", "k_opt", "dbi"]].values.tolist() == [["a", 3, 0.3]]


def test_optimal_k_is_read_not_recomputed():
    """The report takes the stage's `optimal` row even where another k has a lower DBI."""
    km = pd.DataFrame(dict(model_id="m", bn=True, norm="batch", condition="batch", seed=0, layer="a", layer_index=1, k=[2, 3, 4],
                           dbi=[0.1, 0.3, 0.5], inertia=1.0, optimal=[False, False, True]))
    assert results.optimal_k(km)[["k_opt", "dbi"]].values.tolist() == [[4, 0.5]]


def test_across_experiments_sparsity():
    less = findings.finding_sparsity(per_layer("sparsity", [.3] * 4 + [.8], [.5] * 5))
    more = findings.finding_sparsity(per_layer("sparsity", [.6] * 5, [.4] * 5))
    assert findings.finding_sparsity_across({"a": less, "b": more}).verdict == "supported"
    assert findings.finding_sparsity_across({"a": more, "b": more}).verdict == "not supported"


def test_a_measure_through_training_plots_each_epochs_seed_mean_per_layer_group():
    """The figure against epoch: x = the snapshot epochs evenly spaced, then the final model; y = per model
    the measure averaged over the group's layers, then the mean over seeds (hand-computed here)."""
    final = cnn().tables["layer_sparsity"]
    early = [final.assign(epoch=e, sparsity=final["sparsity"] * f) for e, f in ((0, 0.5), (4, 0.8))]
    r = findings.Results(cnn().experiment, {**cnn().tables, "layer_sparsity": pd.concat([final, *early])})
    fig = figures.figure("fig_layer_sparsity_epochs").make(r)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["CNN Digits: early layers (conv1-conv2)",
                                                 "CNN Digits: middle layers (conv3-conv4)", "CNN Digits: late layer (fc1)"]
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["0", "4", "final"]
    for ax, idx in zip(panels, ([1, 2], [3, 4], [5])):
        for c, line in zip(("batch", "none"), (c.lines[0] for c in ax.containers)):
            rows = final[(final["condition"] == c) & final["layer_index"].isin(idx)]
            want = rows.groupby("seed")["sparsity"].mean().mean()
            np.testing.assert_allclose(np.asarray(line.get_xdata(), float), [0, 1, 2])
            np.testing.assert_allclose(np.asarray(line.get_ydata(), float), [0.5 * want, 0.8 * want, want], rtol=1e-12)
    assert figures.figure("fig_layer_sparsity_epochs").make(cnn()) is None  # no snapshots: not drawn


def test_a_condition_without_values_through_training_is_not_in_the_legend_and_the_caption_counts_every_epoch():
    """train_eval of `none` is NaN at every epoch (no running statistics): no legend entry; the caption's NaN
    count is over the rows the figure draws, the snapshot epoch's as well as the final models'."""
    final = cnn().tables["train_eval"]
    r = findings.Results(cnn().experiment, {**cnn().tables, "train_eval": pd.concat([final, final.assign(epoch=1)])})
    spec = figures.figure("fig_train_eval_epochs")
    fig = spec.make(r)
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {"BatchNorm"}  # (also listed no BatchNorm)
    nan = int(final["cka"].isna().sum())
    assert nan == len(final) / 2 and f" {2 * nan} of {2 * len(final)} values are NaN" in captions.caption(spec, [r])
    # the reasons are the table's, counted (the measure's general note blamed running statistics for all)
    few = "fewer clustering samples (55) than one batch of 64"
    bn = final["condition"] == "batch"
    final = final.assign(cka=final["cka"].where(~bn), reason=final["reason"].where(~bn, few))
    r = findings.Results(cnn().experiment, {**cnn().tables, "train_eval": final})
    said = (f" {len(final)} of {len(final)} values are NaN ({nan} of BatchNorm: {few}; {nan} of no BatchNorm: without "
            f"running statistics, train and eval mode normalise alike) and left out of the means.")
    assert said in captions.caption(figures.figure("fig_train_eval"), [r])
    # as an earlier analysis wrote the reason into the table (it read as the condition 'no norm'): as now
    old = final.assign(reason=final["reason"].replace(
        {NO_BATCH_STATISTICS: "no norm with running statistics: train and eval mode normalise alike"}))
    assert said in captions.caption(figures.figure("fig_train_eval"),
                                    [findings.Results(cnn().experiment, {**cnn().tables, "train_eval": old})])


# ==== whole reports ====
# drawn only from an analysis with --snapshots (tests/test_measures.py, tests/test_pipeline.py)
SNAPSHOT_FIGURES = {s.name for s in figures.FIGURES if s.name == "fig_initialisation" or s.name.endswith("_epochs")}


def test_report_files_and_self_contained_html(full):
    out, res = full
    d = out / "digits-cnn" / "report"
    figs = [s.name for s in figures.FIGURES if s.name not in SNAPSHOT_FIGURES]  # need --snapshots: test_pipeline
    for name in ["report.md", "report.html", "findings.json", "report_inputs.json", "table1.csv"] + \
            [f"{f}.{x}" for f in figs for x in ("png", "svg")]:
        assert (d / name).is_file() and name in res.files, name
    html = (d / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(figs)
    assert not re.search(r"https?://|<script|<link|<iframe|@import|url\(", html, re.I)
    assert re.findall(r'src="([^"]{0,5})', html) == ["data:"] * len(figs)
    md = (d / "report.md").read_text()
    assert all(f"![{f}]({f}.png)" in md for f in figs) and "bnrep version" in md and "8 |" in md
    verdicts = [f["verdict"] for f in json.loads((d / "findings.json").read_text())["findings"]]
    assert verdicts == [f.verdict for f in res.findings] and "not evaluated" not in verdicts
    assert res.missing == [] and res.html.endswith("digits-cnn/report/report.html")
    fj = json.loads((d / "findings.json").read_text())["findings"]
    numbers = fj[3]["numbers"]
    assert numbers["early_layers"] == [1, 2, 3]  # numbers, not numpy's written as text
    # every condition named as the tables name it (a script joins them): claim 2's keys were labels, claim 4's tags
    assert [(f["condition"], f["ref"]) for f in fj] == [("batch", "none")] * 4 and "norm" not in fj[0]
    assert set(fj[1]["numbers"]["within_spearman_test_acc"]) == set(numbers["first_layer_reaching"]) == \
        set(numbers["early_distance"]) == {"batch", "none"}
    assert not re.findall(r'": "-?[0-9][0-9.e+-]*"', (d / "findings.json").read_text())  # nowhere else either
    json.loads((d / "findings.json").read_text(), parse_constant=pytest.fail)  # no NaN: strict readers take it


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
    assert f"`bnrep analysis --experiment digits-cnn --out {out}`" in md
    assert "results/training_history" in md and f"`bnrep final --experiment digits-cnn --out {out}`" in md
    assert not any(f.startswith("fig_") for f in res.files) and "table1.md" in res.files
    assert [f.verdict for f in res.findings] == ["not evaluated"] * 4
    assert "98.500 ± 0.577" in (tmp_path / "digits-cnn" / "report" / "report.html").read_text()


def test_no_results_is_a_one_line_error(tmp_path):
    with pytest.raises(report.ReportError) as e:
        report.build_report(str(tmp_path), "digits-cnn")
    msg = str(e.value)
    out = f" --out {tmp_path}"  # both commands it names write where the report looks
    assert "\n" not in msg and f"`bnrep final --experiment digits-cnn{out}`" in msg
    assert f"`bnrep run --experiment digits-cnn{out}`" in msg
    assert not (tmp_path / "digits-cnn" / "report").exists()


def test_no_results_of_a_smoke_study_names_commands_with_the_flag_it_was_made_with(tmp_path):
    """Only a --smoke-test sweep done: both commands the report names carry --smoke-test (the second, `bnrep
    run`, left it out and was refused: "holds training results of a different configuration")."""
    from bnrep.config import prepare, write_config
    from bnrep.experiments import get_experiment, smoke

    store = Store(str(tmp_path), "digits-cnn")
    write_config(store, prepare(store, smoke(get_experiment("digits-cnn")), "hparam", False))
    with pytest.raises(report.ReportError) as e:
        report.build_report(str(tmp_path), "digits-cnn")
    out = f" --smoke-test --out {tmp_path}"
    assert f"`bnrep final --experiment digits-cnn{out}`" in str(e.value)
    assert f"`bnrep run --experiment digits-cnn{out}`" in str(e.value)


def test_combined_report(tmp_path):
    write_tables(tmp_path, "digits-cnn", cnn().tables)
    write_tables(tmp_path, "mnist-cnn", make_tables("mnist-cnn", seeds=2, **SMALL))
    res = report.build_report(str(tmp_path), ["digits-cnn", "mnist-cnn", "fashion-mnist-cnn"],
                                       dest=str(tmp_path / "both"))
    d = tmp_path / "both"
    assert (d / "report.html").is_file() and (d / "fig_class_dbi.png").is_file()
    md = (d / "report.md").read_text()
    assert "fashion-mnist-cnn: no results" in md and "| CNN MNIST | NBN | 2 |" in md
    fj = json.loads((d / "findings.json").read_text())
    assert set(fj) == {"across", "digits-cnn", "mnist-cnn"}
    assert "Findings digits-cnn:" in res.summary and "Findings mnist-cnn:" in res.summary
    with pytest.raises(report.ReportError):
        report.build_report(str(tmp_path), ["cifar10-vgg16"])


def test_a_combined_report_tells_apart_experiments_of_the_same_model_and_data(tmp_path):
    """digits-cnn and digits-cnn-norms are both 'CNN Digits': Table 1's rows and the figures' panels name the
    experiment beside it; a label of its own (CNN MNIST) stays as it is."""
    import matplotlib.pyplot as plt

    write_tables(tmp_path, "digits-cnn", cnn().tables)
    write_tables(tmp_path, "digits-cnn-norms", make_tables("digits-cnn-norms", seeds=2, norms=NORMS4, **SMALL))
    write_tables(tmp_path, "mnist-cnn", make_tables("mnist-cnn", seeds=2, **SMALL))
    names = ["digits-cnn", "digits-cnn-norms", "mnist-cnn"]
    report.build_report(str(tmp_path), names, dest=str(tmp_path / "both"))
    t1 = pd.read_csv(tmp_path / "both" / "table1.csv")
    assert dict(zip(t1["experiment"], t1["model"])) == {"digits-cnn": "CNN Digits (digits-cnn)", "mnist-cnn": "CNN MNIST",
                                                        "digits-cnn-norms": "CNN Digits (digits-cnn-norms)"}
    assert "| CNN Digits (digits-cnn-norms) | GN | 2 |" in (tmp_path / "both" / "report.md").read_text()
    rs = [report.load_results(str(tmp_path), n) for n in names]
    results.tell_apart(rs)  # as the combined report does before drawing
    fig = figures.figure("fig_layer_sparsity").make(rs)
    assert [ax.get_title() for ax in fig.axes] == ["(a) CNN Digits (digits-cnn), 4 seeds",
                                                  "(b) CNN Digits (digits-cnn-norms), 2 seeds", "(c) CNN MNIST, 2 seeds"]
    plt.close(fig)
    twice = [report.load_results(str(tmp_path), n) for n in ("digits-cnn", "digits-cnn", "digits-cnn-norms")]
    results.tell_apart(twice)  # (--experiments A A B)
    assert [r.label for r in twice] == ["CNN Digits (digits-cnn)"] * 2 + ["CNN Digits (digits-cnn-norms)"]
    assert report.load_results(str(tmp_path), "digits-cnn").label == "CNN Digits"  # its own report: as before


def test_config_json_overrides_the_preset(tmp_path):
    e = get_experiment("digits-cnn").override(first_shown_layer=3, name="my-digits")
    Store(str(tmp_path), "my-digits").write_json("config.json", {"experiment": e.to_dict(), "config_hash": "x"})
    assert report.load_experiment(Store(str(tmp_path), "my-digits"), "my-digits") == e
    assert report.load_experiment(Store(str(tmp_path), "digits-cnn"), "digits-cnn") == get_experiment("digits-cnn")


# ==== driver ====

@pytest.fixture(scope="module")
def driver():
    """analysis/report.py's command line, in process."""
    from types import SimpleNamespace

    from bnrep import flags

    return SimpleNamespace(main=lambda argv: flags.run_stage("report", argv), add_args=flags.add_report_args,
                           build_parser=lambda: flags.build_parser("report"))


def test_driver_exit_codes(driver, tmp_path, capsys):
    out = str(tmp_path)
    assert driver.main(["--experiment", "nope", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown experiment 'nope'" in err
    assert driver.main(["--out", out]) == 2  # nothing to report on: bad input, as a stage run before the one it needs
    assert f"bnrep final --experiment digits-cnn --out {out}" in capsys.readouterr().err
    assert driver.main(["--all", "--out", out]) == 2
    for name in ("digits-cnn", "mnist-cnn"):
        write_tables(tmp_path, name, {"training": make_tables(name, **SMALL)["training"]})
    assert driver.main(["--experiment", "digits-cnn", "--out", out]) == 0
    assert "Table 1" in capsys.readouterr().out and (tmp_path / "digits-cnn/report/report.html").is_file()
    assert driver.main(["--all", "--out", out]) == 0
    assert (tmp_path / "mnist-cnn/report/report.md").is_file() and (tmp_path / "combined/report.html").is_file()
    assert report.find_experiments(out) == ["digits-cnn", "mnist-cnn"]


def test_driver_parser_is_reusable(driver):
    import argparse

    p = argparse.ArgumentParser()
    driver.add_args(p)
    assert vars(p.parse_args([])) == {"experiment": "digits-cnn", "experiments": None, "all": False, "force": False,
                                      "out": "./runs"}
    assert driver.build_parser().parse_args(["--experiments", "a", "b"]).experiments == ["a", "b"]
    with pytest.raises(SystemExit):
        driver.build_parser().parse_args(["--all", "--experiment", "x"])


def test_driver_runs_as_a_script(tmp_path):
    r = subprocess.run([sys.executable, "analysis/report.py", "--experiment", "nope", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True)
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


# ==== the normalisation axis ====

NORMS4 = ("batch", "group", "layer", "none")
LABEL4 = {"batch": "BatchNorm", "group": "GroupNorm", "layer": "LayerNorm", "none": "no norm"}


def acc4(bn, seed):  # test accuracy: GN 99 > BN 98.5 > LN 97.5 > no norm 97 (+ 0.1 per seed)
    return 1.0, 0.99, {True: 0.985, "group": 0.99, "layer": 0.975, False: 0.97}[bn] + 0.001 * seed


def cnn4(**kw) -> findings.Results:
    return results.Results(get_experiment("digits-cnn"),
                            make_tables(**{**SMALL, "acc": acc4, "norms": NORMS4, **kw}))


def test_an_image_folder_is_labelled_by_its_name():
    """Panel titles and Table 1 name a study on an image folder by the folder, not its whole path."""
    assert results.model_label("torchvision:resnet18", "imagefolder:/data/field trips/leaves/") == \
        "torchvision:resnet18 leaves"
    assert results.model_label("cnn", "digits") == "CNN Digits"
    import matplotlib.pyplot as plt

    from bnrep.plotting import _panel
    fig, (short, long) = plt.subplots(1, 2)
    _panel(short, title="CNN Digits: conv1")
    _panel(long, title="timm:densenet121 leaves: features.denseblock4.denselayer16.relu2")  # ran into its neighbour
    assert (short.get_title(), long.get_title()) == ("CNN Digits: conv1", "timm:densenet121 leaves:\n"
                                                                         "features.denseblock4.denselayer16.relu2")
    plt.close(fig)


def test_long_layer_names_are_shortened_on_an_axis_but_stay_apart():
    from bnrep.plotting import _tick_names

    names = ["conv1", "layer1.0.relu:2", "features.denseblock3.denselayer14.norm2.act",
             "features.denseblock2.denselayer14.norm2.act", "features.denseblock2.denselayer13.norm2.act",
             "blocks.a_component_name_longer_than_the_limit"]
    assert _tick_names(names) == ["conv1", "layer1.0.relu:2", "…denseblock3.denselayer14.norm2.act",
                                  "…denseblock2.denselayer14.norm2.act", "…denselayer13.norm2.act",
                                  "…me_longer_than_the_limit"]  # its last 24 characters


def test_one_colour_and_label_per_norm_in_every_figure():
    r = cnn4()
    (ax,) = figures.fig_layer_sparsity(r).axes
    assert {l: c for l, (c, _) in series(ax).items()} == {LABEL4[n]: to_hex(COLORS[n]) for n in NORMS4}
    assert to_hex(COLORS["group"]) == to_hex("tab:green") and to_hex(COLORS["layer"]) == to_hex("tab:purple")
    check_errorbars(ax, r.table("layer_sparsity"), "sparsity", LABEL4)
    assert [t.get_text() for t in figures.fig_class_dbi(r).legends[0].get_texts()] == list(LABEL4.values())
    for ax in [a for a in figures.fig_channel_sparsity(r).axes if a.axison]:
        assert [to_hex(l.get_color()) for l in ax.lines] == [to_hex(COLORS[n]) for n in NORMS4]
    loss, _ = figures.fig_learning_curves(r).axes
    check_bands(loss, r.table("training_history"), "epoch", "train_loss", NORMS4)


def test_table1_has_a_row_per_architecture_and_norm():
    t = report.table1(pd.concat([cnn4().table("training"), vgg().table("training")]))
    assert list(zip(t["model"], t["bn"])) == [("CNN Digits", s) for s in ("BN", "GN", "LN", "NBN")] + \
        [("VGG-16 CIFAR10", "BN"), ("VGG-16 CIFAR10", "NBN")]
    gn = cnn4().table("training").query("norm == 'group'")["test_acc"] * 100
    assert t.set_index(["model", "bn"]).loc[("CNN Digits", "GN"), "test_acc_mean"] == pytest.approx(gn.mean())
    assert report.table1_rows(t)[0][1] == "Norm" and report.table1_rows(report.table1(cnn().table("training")))[0][1] == "BN"


def test_each_claim_judged_per_norm_against_none():
    fs = findings.findings(cnn4())
    assert [(f.number, f.norm) for f in fs] == [(i, n) for n in ("batch", "group", "layer") for i in (1, 2, 3, 4)]
    v = {(f.number, f.norm): f for f in fs}
    assert v[(1, "group")].verdict == "not supported" and "GN sparser in 0 of 5 layers" in v[(1, "group")].detail
    assert v[(1, "layer")].verdict == "not supported" and "LN sparser in 5 of 5" in v[(1, "layer")].detail
    assert "no norm" in v[(1, "group")].detail and "GroupNorm" in v[(3, "group")].claim
    assert v[(4, "group")].verdict == "supported" and v[(4, "layer")].verdict == "not supported"
    assert v[(2, "group")].numbers["models"] == 8  # GN and none models only
    # The paper's pair judged within a four-norm study gives the verdicts of the two-norm study.
    paper = findings.findings(cnn())
    assert [f.verdict for f in paper] == [v[(i, "batch")].verdict for i in (1, 2, 3, 4)]
    assert all("BN" in f.detail or f.number == 2 for f in paper) and not any("no norm" in f.detail for f in paper)


def test_rankings_per_measure_with_seed_spread():
    r = cnn4()
    rows = dict(results.rankings(r))
    assert results.rankings(cnn()) == []  # two norms: the verdicts say it all
    order = lambda text: re.findall(r"\d\. (\w+) ", text)  # noqa: E731
    assert order(rows["best test accuracy (%, per model)"]) == ["GN", "BN", "LN", "NBN"]
    assert order(rows["sparsest layers (mean layer sparsity over layers, %)"]) == ["LN", "NBN", "BN", "GN"]
    assert order(rows["purest class clusters, conv1 (class DBI, lower first)"]) == ["GN", "BN", "LN", "NBN"]
    t = r.table("training").query("norm == 'group'")["test_acc"].to_numpy() * 100
    assert f"1. GN {t.mean():.2f} ± {t.std(ddof=1):.2f};" in rows["best test accuracy (%, per model)"]


def test_equal_means_share_a_rank_in_display_order():
    """Every BN, GN and LN model at 100% test accuracy: ranked 1., 2., 3. before, as if one were better."""
    r = cnn4()
    t = r.tables["training"]
    r.tables["training"] = t.assign(test_acc=t["test_acc"].where(t["norm"] == "none", 1.0))
    got = dict(results.rankings(r))["best test accuracy (%, per model)"]
    nobn = t.query("norm == 'none'")["test_acc"].to_numpy() * 100
    assert got == (f"1. BN 100.00 ± 0.00; 1. GN 100.00 ± 0.00; 1. LN 100.00 ± 0.00; "
                   f"4. NBN {nobn.mean():.2f} ± {nobn.std(ddof=1):.2f}")
    near = r.tables["training"].assign(test_acc=lambda d: d["test_acc"] - np.where(d["norm"] == "batch", 4e-5, 0))
    got = dict(results.rankings(results.Results(r.experiment, {**r.tables, "training": near})))
    assert got["best test accuracy (%, per model)"].startswith("1. BN 100.00 ± 0.00; 1. GN 100.00")  # 99.996 shows 100


def test_four_norm_report_and_architectures_side_by_side(tmp_path):
    write_tables(tmp_path, "digits-cnn", cnn4().tables)
    write_tables(tmp_path, "mnist-cnn", make_tables("mnist-cnn", seeds=2, norms=NORMS4, **SMALL))
    res = report.build_report(str(tmp_path), "digits-cnn")
    md = (tmp_path / "digits-cnn" / "report" / "report.md").read_text()
    assert "| # | Claim (paper section 6, worded for the normalisation judged) | BN vs NBN | GN vs NBN | LN vs NBN |" in md
    assert "Rankings (best first; mean ± std over seeds):" in md and len(res.findings) == 12
    assert "GroupNorm (green)" in md and "LayerNorm (purple)" in md
    report.build_report(str(tmp_path), ["digits-cnn", "mnist-cnn"])
    md = (tmp_path / "combined" / "report.md").read_text()
    assert "| measure | norm | digits-cnn (CNN Digits) | mnist-cnn (CNN MNIST) |" in md
    gn = [make_tables(e, **SMALL, seeds=s, acc=a, norms=NORMS4)["training"].query("norm == 'group'")["test_acc"] * 100
          for e, s, a in (("digits-cnn", 4, acc4), ("mnist-cnn", 2, None))]
    assert f"| test accuracy (%) | GN | {results.fmt_pm(gn[0].mean(), gn[0].std(), 2)} | " \
           f"{results.fmt_pm(gn[1].mean(), gn[1].std(), 2)} |" in md


def test_settings_show_the_stage_hashes_of_config_json(tmp_path):
    write_tables(tmp_path, "digits-cnn", {"training": cnn().table("training")})
    e = get_experiment("digits-cnn")
    Store(str(tmp_path), "digits-cnn").write_json("config.json", {"experiment": e.to_dict(), "train_hash": "t1a2",
                                                                  "analysis_hash": "a3b4"})
    report.build_report(str(tmp_path), "digits-cnn")
    md = (tmp_path / "digits-cnn" / "report" / "report.md").read_text()
    assert "| train hash | t1a2 |" in md and "| analysis hash | a3b4 |" in md and "config hash" not in md


def test_status_does_not_import_matplotlib(full):
    out, _ = full
    code = ("import bnrep.status, sys; assert 'matplotlib' not in sys.modules; "
            f"rows = bnrep.status.stage_status({str(out)!r}, 'digits-cnn'); "
            "assert ('report', 'complete') in [r[:2] for r in rows], rows; assert 'matplotlib' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ==== findings that say when they cannot be trusted ====

def welch_reference(a, b) -> float:
    """Welch's t-test written out: t with unpooled variances, Welch-Satterthwaite degrees of freedom."""
    a, b = np.asarray(a), np.asarray(b)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    from scipy.stats import t as student_t
    return 2 * student_t.sf(abs(t), dof)


def noisy_layers(bn_vals, nobn_vals, noise) -> pd.DataFrame:
    """4 seeds; seed s adds noise[bn][s] to every layer."""
    rows = [dict(model_id=f"{bn}-{s}", bn=bn, norm="batch" if bn else "none", condition="batch" if bn else "none", seed=s, layer=f"l{i}", layer_index=i,
                 sparsity=v + noise[bn][s])
            for bn, vals in ((True, bn_vals), (False, nobn_vals)) for s in range(4) for i, v in enumerate(vals, 1)]
    return pd.DataFrame(rows)


WIDE = {True: [-.05, .05, -.03, .03], False: [.04, -.04, .02, -.02]}  # seed spread ~4 pp
NARROW = {k: [x / 100 for x in v] for k, v in WIDE.items()}  # ~0.04 pp


@pytest.mark.parametrize("name,noise,verdict,detectable", [
    ("2 pp apart, seeds spread 4 pp: no detectable difference", WIDE, "supported", 0),
    ("2 pp apart, seeds spread 0.04 pp: BN sparser everywhere", NARROW, "not supported", 5),
])
def test_claim_1_counts_a_layer_only_beyond_seed_noise(name, noise, verdict, detectable):
    df = noisy_layers([.50] * 5, [.48] * 5, noise)
    f = findings.finding_sparsity(df)
    assert f.verdict == verdict and len(f.numbers["sparser"]) == detectable, (name, f.detail)
    assert f"no detectable difference (within 1 pp or Welch p >= 0.05) in {5 - detectable}" in f.detail
    ref = welch_reference(df.query("bn and layer_index == 1")["sparsity"], df.query("~bn and layer_index == 1")["sparsity"])
    assert f.numbers["welch_p"]["l1"] == pytest.approx(ref, rel=1e-9) and f"l1 +2.0 pp (p {ref:.2g})" in f.detail


def test_a_p_value_below_float_precision_reads_as_such():
    """Seeds without spread: Welch's t is infinite and p is 0, which the finding says as p < 1e-16."""
    f = findings.finding_sparsity(noisy_layers([.50] * 5, [.48] * 5, {True: [0] * 4, False: [0] * 4}))
    assert f.numbers["welch_p"]["l1"] == 0.0
    assert "l1 +2.0 pp (p < 1e-16)" in f.detail and "(p 0)" not in f.detail
    assert [correlations.p_text(p) for p in (0.0, 3e-17, 0.0341, float("nan"))] == ["< 1e-16", "< 1e-16", "0.034", "n/a"]


@pytest.mark.parametrize("name,p,said", [
    ("just below the threshold: counted, so not 0.05", 0.0496, "0.0496"),
    ("just above it: not counted, told apart from the one below", 0.0502, "0.0502"),
    ("closer still", 0.04999, "0.04999"),
    ("the threshold itself: not counted", 0.05, "0.05"),
    ("two digits already on the right side", 0.049, "0.049"),
    ("far from it: two digits", 0.0549, "0.055"),
    ("far below it", 0.0341, "0.034"),
    ("within 1e-7 of it, below: counted, so its side", 0.0499999999, "< 0.05"),
])
def test_a_p_value_near_the_threshold_shows_its_side(name, p, said):
    """0.0496 (counted, p < 0.05) and 0.0502 (not) both read "0.05" in one report."""
    assert correlations.p_text(p) == said, name


def test_welch_rule_is_stated_in_the_report(full):
    out, _ = full
    md = (out / "digits-cnn" / "report" / "report.md").read_text()
    assert "Welch's t-test over seeds (scipy.stats.ttest_ind, equal_var=False), two-sided p < 0.05" in md
    assert "Inconclusive: a verdict built on models that missed their stopping rule" in md


def test_partial_correlation_against_regression_residuals():
    g = np.random.default_rng(1)
    m = pd.DataFrame(dict(norm=["batch"] * 5 + ["none"] * 5, condition=["batch"] * 5 + ["none"] * 5, x=g.normal(size=10), y=g.normal(size=10)))
    D = np.column_stack([np.ones(10), m["norm"] == "batch"]).astype(float)  # intercept + group dummy
    rx = m["x"] - D @ np.linalg.lstsq(D, m["x"], rcond=None)[0]
    ry = m["y"] - D @ np.linalg.lstsq(D, m["y"], rcond=None)[0]
    r = np.sum(rx * ry) / math.sqrt(np.sum(rx ** 2) * np.sum(ry ** 2))
    from scipy.stats import t as student_t
    p = 2 * student_t.sf(abs(r) * math.sqrt(7 / (1 - r ** 2)), 7)  # 10 models - 2 - 1 group dummy
    got = findings.partial_corr(m, "x", "y")
    assert got["pearson_r"] == pytest.approx(r, rel=1e-9) and got["pearson_p"] == pytest.approx(p, rel=1e-9)


def test_partial_correlation_counts_only_the_groups_that_vary():
    """Every BN and GN model at 100% test accuracy, the no-BN pair at 50 and 83%: only that pair varies within its
    group, so the partial r has no degree of freedom left (n/a), where counting every group's models gave 2 of
    them. Where the measure too varies in that pair alone, the two residuals correlate at -1 whatever they are,
    which at 2 degrees of freedom read as p = 0. A second varying group gives 1 degree of freedom."""
    m = pd.DataFrame(dict(condition=["batch"] * 2 + ["group"] * 2 + ["none"] * 2,
                          x=[.30, .34, .20, .26, .11, .19], y=[1.0, 1.0, 1.0, 1.0, .50, .83]))
    assert math.isnan(findings.partial_corr(m, "x", "y")["pearson_r"])
    alone = m.assign(x=[.3, .3, .2, .2, .19, .11])  # the measure as constant outside the no-BN pair
    assert math.isnan(findings.partial_corr(alone, "x", "y")["pearson_r"])  # (was r = -1.00, p = 0)
    m.loc[[2, 3], "y"] = [.97, .99]  # GN varies too: 4 models in 2 varying groups, 4 - 2 - 1 = 1 degree of freedom
    got = findings.partial_corr(m, "x", "y")
    rx = m["x"] - m.groupby("condition")["x"].transform("mean")
    ry = m["y"] - m.groupby("condition")["y"].transform("mean")
    r = np.sum(rx * ry) / math.sqrt(np.sum(rx ** 2) * np.sum(ry ** 2))
    from scipy.stats import t as student_t
    assert got["pearson_r"] == pytest.approx(r, rel=1e-9)
    assert got["pearson_p"] == pytest.approx(2 * student_t.sf(abs(r) * math.sqrt(1 / (1 - r ** 2)), 1), rel=1e-9)


def test_a_correlation_that_is_only_the_norm_groups_is_inconclusive():
    """BN models sparser and better, no BN models less sparse and worse; within each group no relation."""
    within_s, within_a = np.array([0, .02, .04, .06]), np.array([.015, -.005, -.015, .005])
    tr = pd.DataFrame(dict(model_id=[f"m{i}" for i in range(8)], bn=[True] * 4 + [False] * 4,
                           norm=["batch"] * 4 + ["none"] * 4, condition=["batch"] * 4 + ["none"] * 4, seed=list(range(4)) * 2, train_acc=1.0,
                           test_acc=np.r_[.98 + within_a, .90 + within_a]))
    ls = tr[["model_id", "bn", "norm", "condition", "seed"]].assign(layer="l1", layer_index=1, sparsity=np.r_[.5 + within_s, .1 + within_s])
    f = findings.finding_generalisation(tr, ls)
    assert f.numbers["test_acc"]["pearson_r"] > 0.9 and f.numbers["test_acc"]["pearson_p"] < 0.05  # counts across
    assert f.verdict == "inconclusive", f.detail  # without the partial correlation: "not supported"
    assert "comes only from the difference between the normalisation groups" in f.verdict_text
    assert f.numbers["partial"]["test_acc"]["pearson_r"] == pytest.approx(-0.4)


def test_a_correlation_as_strong_within_the_groups_but_not_significant_says_too_few_models():
    """3 models per group: within each, sparser is better too (partial r 0.65) but p = 0.23 at 3 degrees of
    freedom; the caveat says too few models, not that the link comes only from the groups."""
    within_s, within_a = np.array([0, .02, .04]), np.array([0, .03, .02])
    tr = pd.DataFrame(dict(model_id=[f"m{i}" for i in range(6)], bn=[True] * 3 + [False] * 3,
                           norm=["batch"] * 3 + ["none"] * 3, condition=["batch"] * 3 + ["none"] * 3,
                           seed=list(range(3)) * 2, train_acc=1.0, test_acc=np.r_[.98 + within_a, .90 + within_a]))
    ls = tr[["model_id", "bn", "norm", "condition", "seed"]].assign(layer="l1", layer_index=1,
                                                                    sparsity=np.r_[.5 + within_s, .1 + within_s])
    f = findings.finding_generalisation(tr, ls)
    assert f.verdict == "inconclusive" and f.numbers["partial"]["test_acc"]["pearson_r"] == pytest.approx(0.6547, abs=1e-4)
    assert f.caveats[0] == ("the correlation with test accuracy is not significant once the normalisation is "
                            "controlled for (partial r = 0.65, p = 0.23): too few models within the groups to tell "
                            "it from the difference between them")


def set_rows(tables, name, query, **values):
    t = {k: v.copy() for k, v in tables.items()}
    idx = t[name].query(query).index
    for col, v in values.items():
        t[name].loc[idx, col] = v
    return t


def trials(lr_bn: float, lr_nobn: float) -> pd.DataFrame:
    """Sweep trials: the best (objective 0.9) at the given learning rates, worse ones mid-range."""
    return pd.DataFrame([dict(trial_id=f"{n}{i}", bn=n == "batch", norm=n, condition=n, lr=lr, objective=obj)
                         for n, best in (("batch", lr_bn), ("none", lr_nobn))
                         for i, (lr, obj) in enumerate([(best, 0.9), (0.01, 0.8), (0.02, 0.7)])])


T = make_tables(**SMALL, acc=acc)


def running_accuracy(tables, gap: dict[str, float]) -> dict:
    """training_history's train-mode accuracy (train_acc_running) at the epoch kept (training's best_epoch, the
    last here): each norm's eval-mode train_acc plus its `gap` at that epoch."""
    t = {k: v.copy() for k, v in tables.items()}
    tr, h = t["training"], t["training_history"]
    tr["best_epoch"] = tr["model_id"].map(h.groupby("model_id")["epoch"].max())
    at = tr.set_index("model_id")
    h["train_acc_running"] = h["train_acc"]
    last = h["epoch"] == h["model_id"].map(at["best_epoch"])
    h.loc[last, "train_acc_running"] = (h["model_id"].map(at["train_acc"]) + h["norm"].map(gap).fillna(0))[last]
    return t


LAGGING = set_rows(T, "training", "norm == 'batch'", train_acc=0.62)  # (interpolated as built: one condition)
CONDITIONS = {  # name: (tables, experiment, text named, claims turned inconclusive)
    "healthy": (T, "digits-cnn", None, set()),
    "a model not interpolated": (set_rows(T, "training", "model_id == 'nobn-s1'", interpolated=False), "digits-cnn",
                                 "1 of 4 no BN models missed their stopping rule (not interpolated)", {1, 2, 3, 4}),
    "early stopping never triggered": (
        set_rows(vgg_tables(channels=[2] * 13, seeds=3), "training", "model_id == 'bn-s0'", epochs=300),
        "cifar10-vgg16", "1 of 3 BN models missed their stopping rule (trained to the 300-epoch cap without early "
                         "stopping)", {1, 2, 3, 4}),
    "two seeds": (make_tables(**SMALL, seeds=2), "digits-cnn", "only 2 seeds of BN (need 3)", {1, 2, 3, 4}),
    "running statistics that lag the weights (named only)": (
        running_accuracy(LAGGING, {"batch": 0.36, "none": 0.0}), "digits-cnn",
        "4 of 4 BN models classify their training data worse in eval mode, as every measure is taken (62% on "
        "average), than in train mode over the epoch kept (98%): their running statistics lag the weights (too few "
        "training steps?), so the network measured is not quite the one trained", set()),
    "eval-mode accuracy within 10 points of train mode's (nothing named)": (
        running_accuracy(LAGGING, {"batch": 0.09, "none": 0.0}), "digits-cnn", None, set()),
    "a norm without running statistics is not said to lag": (
        running_accuracy(set_rows(T, "training", "norm == 'none'", train_acc=0.62), {"none": 0.36}), "digits-cnn",
        None, set()),
    "best lr at the low edge": ({**set_rows(T, "training", "norm == 'none'", lr=0.00101), "hparam_trials": trials(0.01, 0.00101)},
                                "digits-cnn", "the sweep's best learning rate for no BN, 0.00101, lies at the low edge "
                                              "of its search range 0.001..0.1 (widen lr_range)", {1, 2, 3, 4}),
    "analysis of two of four seeds": (
        {**T, **{t: T[t][T[t]["seed"] < 2] for t in ("layer_sparsity", "class_dbi", "kmeans")}}, "digits-cnn",
        "only 2 seeds of BN (need 3)", {1, 2, 3, 4}),  # four trained: the verdicts rest on two
    "best lr tied, the one used at the edge": (  # the models used the tie at the edge (best_trial's val_acc rule)
        {**set_rows(T, "training", "norm == 'none'", lr=0.00101),
         "hparam_trials": pd.concat([trials(0.01, 0.02), trials(0.01, 0.00101).iloc[3:4]])},
        "digits-cnn", "the sweep's best learning rate for no BN, 0.00101, lies at the low edge "
                      "of its search range 0.001..0.1 (widen lr_range)", {1, 2, 3, 4}),
    "best lr inside the range": ({**set_rows(T, "training", "norm == 'none'", lr=0.0017), "hparam_trials": trials(0.01, 0.0017)},
                                 "digits-cnn", None, set()),  # 11.5% of the log range from the low end
    "edge lr not used (paper hparams)": ({**T, "hparam_trials": trials(0.01, 0.00101)}, "digits-cnn", None, set()),
    "a layer above 90% zeros": (set_rows(T, "layer_sparsity", "norm == 'none' and layer == 'conv4'", sparsity=0.95),
                                "digits-cnn", "layers above 90% zeros: no BN conv4 95%", {1, 2}),
    "a layer above 90% zeros in one model (named only)": (
        set_rows(T, "layer_sparsity", "model_id == 'nobn-s1' and layer == 'conv4'", sparsity=0.96), "digits-cnn",
        "a layer above 90% zeros in one model, not in the seed mean: no BN conv4 96% at seed 1 (mean 70%)", set()),
    "a dead channel (named only)": (set_rows(T, "layer_sparsity", "model_id == 'bn-s0' and layer == 'conv1'",
                                             dead_channels=1),
                                    "digits-cnn", "dead channels (zero on every sparsity sample), summed over models: BN conv1: 1 in 1 of 4 models",
                                    set()),
    "a dead channel, counted from channel_sparsity (tables before dead_channels)": (
        {**set_rows(T, "channel_sparsity", "model_id == 'bn-s0' and layer == 'conv1' and channel < 3", sparsity=1.0),
         "layer_sparsity": T["layer_sparsity"].drop(columns="dead_channels")},
        "digits-cnn", "dead channels (zero on every sparsity sample), summed over models: BN conv1: 3 in 1 of 4 models", set()),
    "an optimal k at the top of the k range early": (  # BN's conv1 at 12, the largest k of SMALL's k_range
        make_tables(**SMALL, acc=acc, kopt=lambda bn, li: 12 if bn is True and li == 1 else cnn_kopt(bn, li)),
        "digits-cnn", "optimal k at the largest k searched (12) in the early layers of 4 of 4 BN models: the optimum "
                      "may lie above it (`bnrep analysis --experiment digits-cnn --fresh --k-max 24` searches "
                      "further, the training kept, then `bnrep report --experiment digits-cnn`)",
        {4}),
    "one k searched (every optimum at it, nothing censored)": (
        make_tables(**{**SMALL, "k_range": range(12, 13)}, acc=acc), "digits-cnn", None, set()),
    "an optimal k at the top of the k range in the last layer only": (  # not an early layer: not claim 4's
        make_tables(**SMALL, acc=acc, kopt=lambda bn, li: 12 if li == 5 else cnn_kopt(bn, li)), "digits-cnn",
        None, set()),
    "dead channels at the larger eps only are not named": (
        make_tables(**SMALL, acc=acc, eps=(0.0, 0.5)), "digits-cnn", None, set()),  # eps 0.5: every channel zero
}


def test_the_command_a_finding_suggests_names_the_study_and_its_results_root(tmp_path):
    """Typed as shown, the k-means hint ran the default study in ./runs (and its --fresh deleted that analysis)."""
    out = tmp_path / "my results"
    write_tables(out, "digits-cnn", make_tables(**SMALL, acc=acc, kopt=lambda bn, li: 12 if bn is True and li == 1
                                                else cnn_kopt(bn, li)))
    (claim4,) = [f for f in findings.findings(report.load_results(str(out), "digits-cnn")) if f.number == 4]
    assert ("`bnrep analysis --experiment digits-cnn --out OUT --fresh --k-max 24` searches further, the training "
            "kept, then `bnrep report --experiment digits-cnn --out OUT` (OUT: the folder that holds digits-cnn)"
            ) in claim4.verdict_text  # (a path would be wrong once the study is moved: its report stays current)


def test_the_reference_s_dead_channels_are_said_once_above_every_condition_s_claims():
    """Dead channels of the reference (none) and of LN: the reference's line was repeated under every condition,
    merged into each condition's own."""
    t = make_tables(**SMALL, acc=acc, norms=("batch", "layer", "none"))
    t = set_rows(t, "layer_sparsity", "model_id == 'nobn-s0' and layer == 'fc1'", dead_channels=2)
    t = set_rows(t, "layer_sparsity", "model_id == 'ln-s1' and layer == 'conv1'", dead_channels=1)
    fs = findings.findings(results.Results(get_experiment("digits-cnn"), t))
    common, per = verdicts.said_once(fs)
    dead = "dead channels (zero on every sparsity sample), summed over models: "
    assert [c for c in common if c.startswith(dead)] == [dead + "no norm fc1: 2 in 1 of 4 models"]
    assert per == {"layer": (dead + "LN conv1: 1 in 1 of 4 models",)}


@pytest.mark.parametrize("name", list(CONDITIONS))
def test_conditions_named_next_to_the_verdicts_they_undermine(name):
    tables, exp, text, flipped = CONDITIONS[name]
    r = results.Results(get_experiment(exp), tables)
    fs = findings.findings(r)
    plain = [findings.finding_sparsity(results.at_eps(r.table("layer_sparsity"))),
             findings.finding_generalisation(r.table("training"), results.at_eps(r.table("layer_sparsity"))),
             findings.finding_purity(r.table("class_dbi"), r.table("kmeans"), r.experiment.first_shown_layer),
             findings.finding_early_clusters(r.table("kmeans"), r.experiment.first_shown_layer)]
    assert not flipped or any(p.verdict in rules.JUDGED for p in plain if p.number in flipped)  # a real flip
    for f, p in zip(fs, plain):
        if f.number in flipped:  # (claim 2 of these fixtures is inconclusive already: see the test above)
            assert f.verdict == "inconclusive" and text in f.caveats and text in f.verdict_text, (name, f.number)
        else:
            assert f.verdict == p.verdict, (name, f.number)
            named = name.startswith("a dead channel") or name.endswith("(named only)")  # named, judged alike
            assert (text in f.caveats) == (text is not None and named), (name, f.caveats)
    if text is None:  # no condition: nothing named beyond what a finding found itself
        assert [f.caveats for f in fs] == [p.caveats for p in plain]


def test_a_condition_s_own_epoch_cap_is_its_stopping_rule():
    """A condition that sets its own max_epochs (early stopping): a model trained to that cap missed its rule,
    though the study's cap (300) is far; one trained to the study's cap under the reference did too."""
    t = vgg_tables(channels=[2] * 13, seeds=3)
    t = {k: v.assign(condition=v["condition"].replace("batch", "bn-e20")) if "condition" in v else v
         for k, v in t.items()}
    t = set_rows(set_rows(t, "training", "condition == 'bn-e20'", epochs=12), "training", "model_id == 'bn-s0'",
                 epochs=20)
    e = get_experiment("cifar10-vgg16").override(conditions="bn-e20:batch,max_epochs=20; none")
    fs = findings.findings(results.Results(e, t))
    assert all(f.verdict == "inconclusive" for f in fs)
    assert "1 of 3 bn-e20 models missed their stopping rule (trained to the 20-epoch cap without early " \
           "stopping)" in fs[0].caveats, fs[0].caveats
    capped = set_rows(vgg_tables(channels=[2] * 13, seeds=3), "training", "model_id == 'nobn-s1'", epochs=300)
    fs = findings.findings(results.Results(get_experiment("cifar10-vgg16"), capped))
    assert "1 of 3 no BN models missed their stopping rule (trained to the 300-epoch cap without early stopping)" \
        in fs[0].caveats


def test_a_batch_renorm_model_kept_before_the_end_of_its_warm_up_is_named_beside_the_verdicts():
    """renorm:20 at batch 64 trained 12 steps of its 20-batch warm-up (r_max 2.2, d_max 3.0 at its end), and no
    report said so; the verdicts stand (named only), and results written before `steps` say nothing."""
    e = get_experiment("digits-cnn").override(norms="renorm:20,none")
    brn = {"condition": {"batch": "renorm:20"}, "norm": {"batch": "renorm:20"}}
    t = {k: v.replace(brn) for k, v in make_tables(seeds=3).items()}
    steps = t["training"]["model_id"].map({"bn-s0": 12, "bn-s1": 19, "bn-s2": 20}).fillna(400)
    t["training"] = t["training"].assign(steps=steps)
    said = "2 of 3 BRN20 models kept weights from before the end of their 20-batch warm-up (after 12-19 steps)"
    fs = findings.findings(results.Results(e, t))
    assert all(any(c.startswith(said) for c in f.caveats) for f in fs), fs[0].caveats
    plain = findings.findings(results.Results(e, {**t, "training": t["training"].drop(columns="steps")}))
    assert [f.verdict for f in fs] == [f.verdict for f in plain]
    assert not any("warm-up" in c for f in plain for c in f.caveats)


# ==== the measures beyond the paper: NC1, effective rank, CKA, sparsity thresholds ====

@pytest.mark.parametrize("make,labels", [(cnn, LABEL), (cnn4, LABEL4)])
@pytest.mark.parametrize("make_fig,table", [(figures.figure("fig_nc1").make, "nc1"), (figures.figure("fig_effective_rank").make, "effective_rank")])
def test_nc1_and_effective_rank_figures_plot_the_table_values(make, labels, make_fig, table):
    r = make()
    (ax,) = make_fig(r).axes
    check_errorbars(ax, r.table(table), "value", labels)
    assert ticks(ax) == CNN_LAYERS and ax.get_yscale() == ("log" if table == "nc1" else "linear")


def test_linear_probe_figure_plots_the_table_and_cuts_its_bars_at_1():
    """An accuracy: a layer at 1.0 in one seed and 0.7 in the next drew its bar past 1 before `bounds`. The
    conditions sit side by side at each layer (a bounded measure's)."""
    r = cnn()
    (ax,) = figures.figure("fig_linear_probe").make(r).axes
    apart = {"batch": -figures.DODGE / 2, "none": figures.DODGE / 2}
    check_errorbars(ax, r.table("linear_probe"), "accuracy", LABEL, dx=apart, clip=(0.0, 1.0))
    assert ticks(ax) == CNN_LAYERS and ax.get_yscale() == "linear"
    lp = r.tables["linear_probe"]
    lp = lp.assign(accuracy=lp["accuracy"].where(lp["layer_index"] != 5, np.where(lp["seed"] % 2, 1.0, 0.7)))
    r = results.Results(r.experiment, {**r.tables, "linear_probe": lp})
    (ax,) = figures.figure("fig_linear_probe").make(r).axes
    check_errorbars(ax, r.table("linear_probe"), "accuracy", LABEL, dx=apart, clip=(0.0, 1.0))
    tops = [seg[:, 1].max() for c in ax.containers for col in c.lines[2] for seg in col.get_segments()]
    assert max(tops) == pytest.approx(1.0)


def test_nc1_figure_leaves_nan_layers_out_of_the_means():
    t = set_rows(cnn().tables, "nc1", "model_id in ['bn-s0', 'nobn-s2'] and layer_index == 2", value=math.nan)
    r = results.Results(get_experiment("digits-cnn"), t)
    (ax,) = figures.figure("fig_nc1").make(r).axes
    check_errorbars(ax, r.table("nc1").dropna(subset=["value"]), "value")
    assert "2 of 40 values are NaN" in captions.caption(next(s for s in figures.FIGURES if s.name == "fig_nc1"), [r])


def test_a_condition_without_a_value_is_neither_drawn_nor_named():
    """Train- against eval-mode CKA has values only for norms with running statistics: the figure draws and
    its legend and caption name those, not the no-norm models whose every value is NaN."""
    t = set_rows(cnn().tables, "nc1", "norm == 'none'", value=math.nan)
    r = results.Results(get_experiment("digits-cnn"), t)
    fig = figures.figure("fig_nc1").make(r)
    (ax,) = fig.axes
    assert ax.get_legend_handles_labels()[1] == [LABEL["batch"]] and len(ax.containers) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [LABEL["batch"]]
    text = captions.caption(figures.figure("fig_nc1"), [r])
    assert "BatchNorm (blue) models" in text and "orange" not in text and "20 of 40 values are NaN" in text


def cka_expected(cka: pd.DataFrame, a: str, b: str) -> tuple[list, list, list]:
    """Per layer, mean and std (ddof=1) of CKA over the pairs of models with norms {a, b}: two norms at the same
    seed when a != b, two seeds of one norm when a == b; written out with numpy."""
    if a == b:
        d = cka[(cka["norm_a"] == a) & (cka["norm_b"] == a) & (cka["seed_a"] != cka["seed_b"])]
    else:
        d = cka[(cka["seed_a"] == cka["seed_b"]) & (((cka["norm_a"] == a) & (cka["norm_b"] == b)) |
                                                    ((cka["norm_a"] == b) & (cka["norm_b"] == a)))]
    xs = sorted(d["layer_index"].unique())
    vals = [d.loc[d["layer_index"] == li, "cka"].to_numpy() for li in xs]
    return xs, [v.mean() for v in vals], [v.std(ddof=1) for v in vals]


SHORT4 = {"batch": "BN", "group": "GN", "layer": "LN", "none": "NBN"}


@pytest.mark.parametrize("make,pairs", [
    (cnn, [("batch", "none")]),
    (cnn4, [("batch", "group"), ("batch", "layer"), ("batch", "none"), ("group", "layer"), ("group", "none"),
            ("layer", "none")]),
])
def test_cka_figure_cross_norm_next_to_seed_baselines(make, pairs):
    r = make()
    cka = r.table("cka")
    axes = [a for a in figures.fig_cka(r).axes if a.axison]
    assert [a.get_title() for a in axes] == [f"CNN Digits: {SHORT4[a]} vs {SHORT4[b]}" for a, b in pairs]
    for ax, (a, b) in zip(axes, pairs):
        got = errorbars(ax)
        want = {f"{SHORT4[a]} vs {SHORT4[b]}, same seed": cka_expected(cka, a, b),
                f"{SHORT4[a]} seed vs seed": cka_expected(cka, a, a), f"{SHORT4[b]} seed vs seed": cka_expected(cka, b, b)}
        assert set(got) == set(want)
        for label, (xs, mean, std) in want.items():
            gx, gy, gerr = got[label]
            assert gx == xs and gy == pytest.approx(mean, abs=1e-12) and gerr == pytest.approx(std, abs=1e-12), label
        colours = {c.get_label(): to_hex(c.lines[0].get_color()) for c in ax.containers}
        assert colours[f"{SHORT4[a]} seed vs seed"] == to_hex(COLORS[a]) and colours[f"{SHORT4[b]} seed vs seed"] == \
            to_hex(COLORS[b]) and colours[f"{SHORT4[a]} vs {SHORT4[b]}, same seed"] == "#000000"


def test_cka_through_training_averages_each_pair_of_models_over_a_group_then_over_the_pairs():
    """The snapshots' CKA was in the tables with no figure: now a row per pair of conditions, a panel per layer
    group, x the snapshot epochs then the final models; values by hand from the table."""
    r = cnn4()
    final = r.table("cka")
    scale = {0: 0.5, 2: 0.9}  # the snapshots' CKA: the final's, scaled per epoch
    snaps = pd.concat([final.assign(epoch=e, cka=final["cka"] * f) for e, f in scale.items()])
    r = results.Results(r.experiment, {**r.tables, "cka": pd.concat([final, snaps])})
    axes = [a for a in figures.figure("fig_cka_epochs").make(r).axes if a.axison]
    groups = GROUPS["CNN Digits"]
    pairs = [("batch", "group"), ("batch", "layer"), ("batch", "none"), ("group", "layer"), ("group", "none"),
             ("layer", "none")]
    assert [a.get_title().replace("\n", " ") for a in axes] == [f"CNN Digits: {SHORT4[a]} vs {SHORT4[b]}, {g}"
                                                                for a, b in pairs for g in groups]
    for i, (a, b) in enumerate(pairs):
        for j, idx in enumerate(groups.values()):
            ax = axes[i * len(groups) + j]
            assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "2", "final"]
            got = errorbars(ax)
            for label, (x, y) in {"the row's two conditions, same seed": (a, b), f"{SHORT4[a]} seed vs seed": (a, a),
                                  f"{SHORT4[b]} seed vs seed": (b, b)}.items():
                means, stds = [], []
                for epoch in (0, 2, -1):
                    d = r.table("cka") if epoch == -1 else snaps[snaps["epoch"] == epoch]
                    d = d[(((d["norm_a"] == x) & (d["norm_b"] == y)) | ((d["norm_a"] == y) & (d["norm_b"] == x)))
                          & ((d["seed_a"] == d["seed_b"]) == (x != y)) & d["layer_index"].isin(idx)]
                    per_pair = [g["cka"].mean() for _, g in d.groupby(["model_a", "model_b"])]
                    means.append(np.mean(per_pair))
                    stds.append(np.std(per_pair, ddof=1))
                gx, gy, gerr = got[label]
                assert gx == [0, 1, 2] and gy == pytest.approx(means, abs=1e-12), (label, idx)
                assert gerr == pytest.approx(stds, abs=1e-12), (label, idx)
    assert figures.figure("fig_cka_epochs").make(cnn4()) is None  # no snapshots: not drawn


GROUPS = {  # layer groups by hand: each layer alone up to 4 layers, else thirds (the larger first)
    "CNN Digits": {"early layers (conv1-conv2)": [1, 2], "middle layers (conv3-conv4)": [3, 4], "late layer (fc1)": [5]},
    "VGG-16 CIFAR10": {"early layers (conv1-conv5)": [1, 2, 3, 4, 5], "middle layers (conv6-conv9)": [6, 7, 8, 9],
                       "late layers (conv10-conv13)": [10, 11, 12, 13]},
}


@pytest.mark.parametrize("r", [cnn(eps=EPS3), cnn4(eps=EPS3),
                               results.Results(get_experiment("cifar10-vgg16"),
                                               vgg_tables(channels=[2] * 13, seeds=2, eps=EPS3))],
                         ids=["cnn", "cnn-4-norms", "vgg"])
def test_sparsity_threshold_figure_plots_group_means_over_seeds(r):
    ls = r.table("layer_sparsity")
    axes = [a for a in figures.fig_sparsity_thresholds(r).axes if a.axison]
    groups = GROUPS[r.label]
    assert [a.get_title() for a in axes] == [f"{r.label}: {g}" for g in groups]
    labels = LABEL4 if len(r.norms) == 4 else LABEL
    for ax, idx in zip(axes, groups.values()):
        got = errorbars(ax)
        assert set(got) == {labels[n] for n in r.norms}
        for n in r.norms:
            d = ls[(ls["norm"] == n) & ls["layer_index"].isin(idx)]
            per_model = {e: [d[(d["eps"] == e) & (d["model_id"] == m)]["sparsity"].mean() for m in d["model_id"].unique()]
                         for e in EPS3}
            gx, gy, gerr = got[labels[n]]
            assert gx == list(EPS3)
            assert gy == pytest.approx([np.mean(v) for v in per_model.values()], abs=1e-12)
            assert gerr == pytest.approx([np.std(v, ddof=1) for v in per_model.values()], abs=1e-12)
            assert ax.get_ylim()[0] < min(gy) and max(gy) < ax.get_ylim()[1]
        assert ax.get_xscale() == "symlog"
    assert len({a.get_ylim() for a in axes}) == 1  # one range for the row (plotting.fraction_range)


@pytest.mark.parametrize("lines,want", [
    ([0.40, 0.42], (0.29, 0.53)),  # close: the least span (0.2) about their middle, then the margin
    ([0.0, 0.9], (-0.02, 0.92)),  # wide: their own range
    ([0.99, 1.0], (0.78, 1.02)),  # close at the top: the least span ends at 1
    ([-0.3, 1.4], (-0.02, 1.02)),  # (bars past the ends: cut at 0..1)
])
def test_fraction_panels_share_the_range_their_lines_take(lines, want):
    """On the whole 0..1, five conditions a few points apart drew over each other in the threshold figure: its
    panels now take the range their lines take, shared, at least 0.2 wide, within 0..1 (and a margin)."""
    import matplotlib.pyplot as plt

    from bnrep.plotting import fraction_range

    fig, axes = plt.subplots(1, 3)
    axes[0].plot([0, 1], [lines[0]] * 2)
    axes[1].plot([0, 1], [lines[1]] * 2)  # (the third: nothing drawn)
    fraction_range(axes)
    assert [ax.get_ylim() for ax in axes] == [pytest.approx(want)] * 3
    fraction_range(axes[2:])  # a row with nothing drawn at all (every value NaN): the whole range
    assert axes[2].get_ylim() == pytest.approx((-0.02, 1.02))
    plt.close(fig)


def test_sparsity_threshold_figure_needs_two_thresholds():
    assert figures.fig_sparsity_thresholds(cnn()) is None  # eps 0 only: nothing to plot against


def test_the_other_sparsity_figures_and_claims_use_the_smallest_eps():
    r = cnn(eps=(0.0, 0.1))
    (ax,) = figures.fig_layer_sparsity(r).axes
    check_errorbars(ax, r.table("layer_sparsity").query("eps == 0"), "sparsity")
    f = findings.findings(r)[0]
    assert f.numbers["diff_pp"] == findings.finding_sparsity(r.table("layer_sparsity").query("eps == 0")).numbers["diff_pp"]


# ---- claim 1 at each threshold ----

FLIP = lambda bn, li, eps: (.9 if bn is True else .5) if eps >= 0.1 else cnn_sparsity(bn, li)  # noqa: E731


REVERSE = lambda bn, li, eps: (.7 - .2 * (li == 3) if bn is True else .6) if eps >= 0.1 else cnn_sparsity(bn, li)  # noqa: E731


@pytest.mark.parametrize("name,kw,by_eps,robust", [
    ("the same verdict at every eps", {}, {"0": "mixed", "0.01": "mixed", "0.1": "mixed"}, True),
    ("BN sparser everywhere at eps 0.1", dict(sparsity_eps=FLIP), {"0": "mixed", "0.01": "mixed", "0.1": "not supported"},
     False),
    ("the direction reverses at eps 0.1", dict(sparsity_eps=REVERSE), {"0": "mixed", "0.01": "mixed", "0.1": "mixed"},
     False),
])
def test_claim_1_per_threshold_and_its_robustness(name, kw, by_eps, robust, tmp_path):
    r = cnn(eps=EPS3, **kw)
    f = findings.findings(r)[0]
    ls = r.table("layer_sparsity")
    assert f.number == 1 and f.verdict == "mixed", name  # the verdict itself: at the smallest eps, as the paper
    assert {e: g["verdict"] for e, g in f.numbers["by_eps"].items()} == by_eps, name
    for e in EPS3:  # each threshold judged on exactly its own rows
        assert f.numbers["by_eps"][f"{e:g}"]["verdict"] == findings.finding_sparsity(ls[ls["eps"] == e]).verdict
    assert f.numbers["robust_to_eps"] is robust
    write_tables(tmp_path, "digits-cnn", r.tables)
    report.build_report(str(tmp_path), "digits-cnn")
    md = (tmp_path / "digits-cnn" / "report" / "report.md").read_text()
    said = "robust to the threshold (the same verdict at every eps)" if robust else \
        "not robust to the threshold (the verdict changes at eps 0.1)" if "sparser everywhere" in name else \
        "not robust to the threshold (more layers go the other way at eps 0.1)"
    assert f"- BN vs NBN: {said}" in md and ("not robust" in md) is not robust
    assert "| 0.1 | " + by_eps["0.1"] + " (BN sparser in" in md
    fj = json.loads((tmp_path / "digits-cnn" / "report" / "findings.json").read_text())
    assert fj["findings"][0]["numbers"]["robust_to_eps"] is robust


def test_claim_1_per_threshold_under_a_condition_that_undermines_it_says_they_are_the_rule_alone(tmp_path):
    """Two seeds make claim 1 inconclusive, while its per-eps verdicts read 'mixed' at every eps, 'robust to the
    threshold': they contradicted the headline without a word."""
    r = cnn(eps=EPS3, seeds=2)
    f = findings.findings(r)[0]
    assert f.verdict == "inconclusive" and set(g["verdict"] for g in f.numbers["by_eps"].values()) == {"mixed"}
    assert "By threshold (the rule alone: the conditions named make the verdict itself inconclusive): eps 0: mixed" \
        in f.detail
    write_tables(tmp_path, "digits-cnn", r.tables)
    report.build_report(str(tmp_path), "digits-cnn")
    md = (tmp_path / "digits-cnn" / "report" / "report.md").read_text()
    assert ("These are the rule's verdicts alone: where the conditions named above make a verdict inconclusive, they "
            "make it so at every eps:") in md
    healthy = findings.findings(cnn(eps=EPS3))[0]
    assert "the rule alone" not in healthy.detail


def test_claim_1_not_evaluated_at_a_threshold_is_not_a_change(tmp_path):
    """A threshold with no results on both sides (an interrupted analysis reached one model at eps 0.1)
    leaves the verdict robust where it could be judged; it does not make it 'not robust'."""
    r = cnn(eps=EPS3)
    ls = r.table("layer_sparsity")
    r = results.Results(r.experiment, {**r.tables, "layer_sparsity": ls[(ls["eps"] != 0.1) | ~ls["bn"]]})
    f = findings.findings(r)[0]
    assert f.numbers["by_eps"]["0.1"]["verdict"] == "not evaluated" and f.numbers["robust_to_eps"] is True
    assert f.numbers["not_evaluated_at"] == ["0.1"] and f.numbers["changed_at"] == []
    assert "robust to the threshold where it could be judged (not at eps 0.1" in f.detail
    write_tables(tmp_path, "digits-cnn", r.tables)
    report.build_report(str(tmp_path), "digits-cnn")
    md = (tmp_path / "digits-cnn" / "report" / "report.md").read_text()
    assert "BN vs NBN: robust to the threshold where it could be judged (not evaluated at eps 0.1" in md
    assert "not robust" not in md


def test_claim_1_with_one_threshold_says_nothing_of_robustness():
    f = findings.findings(cnn())[0]
    assert "by_eps" not in f.numbers and "robust" not in f.detail


# ---- which measure predicts generalisation ----

def acc_by_seed(bn, seed):  # test accuracy varies within each norm, so within-norm correlations exist
    return 1.0, 0.99, {True: 0.98, False: 0.97, "group": 0.985, "layer": 0.975}[bn] + 0.003 * seed - 0.001 * seed ** 2


def reference_correlations(r) -> dict[tuple[str, str], dict]:
    """Per model measures and their correlations, computed here from the tables with pandas and scipy."""
    from scipy import stats

    t = r.table("training").set_index("model_id")
    ls, km = r.table("layer_sparsity"), r.table("kmeans")
    ls = ls[ls["activation"].isin(["ReLU", "ReLU6"])] if "activation" in ls else ls
    per_model = {"layer sparsity (rectifiers, smallest eps)":
                 ls[ls["eps"] == ls["eps"].min()].groupby("model_id")["sparsity"].mean(),
                 "class DBI": r.table("class_dbi").groupby("model_id")["dbi"].mean(),
                 "NC1": r.table("nc1").groupby("model_id")["value"].mean(),
                 "effective rank": r.table("effective_rank").groupby("model_id")["value"].mean(),
                 "linear probe accuracy": r.table("linear_probe").groupby("model_id")["accuracy"].mean(),
                 "k-means DBI at optimal k": km[km["optimal"]].groupby("model_id")["dbi"].mean()}
    targets = {"test_acc": t["test_acc"], "gap": t["train_acc"] - t["test_acc"]}
    out = {}
    for name, x in per_model.items():
        for tname, y in targets.items():
            x_, y_ = x.loc[t.index].to_numpy(), y.to_numpy()
            D = np.column_stack([np.ones(len(t))] + [(t["norm"] == n).to_numpy(float) for n in sorted(t["norm"].unique())[1:]])
            rx, ry = x_ - D @ np.linalg.lstsq(D, x_, rcond=None)[0], y_ - D @ np.linalg.lstsq(D, y_, rcond=None)[0]
            pr = np.sum(rx * ry) / math.sqrt(np.sum(rx ** 2) * np.sum(ry ** 2))
            dof = len(t) - 2 - (D.shape[1] - 1)
            pp = 2 * stats.t.sf(abs(pr) * math.sqrt(dof / (1 - pr ** 2)), dof)
            within = {n: stats.spearmanr(x_[t["norm"] == n], y_[t["norm"] == n])[0] for n in t["norm"].unique()}
            spearman = stats.spearmanr(x_, y_)
            if len(x_) <= 8:  # exact over every pairing (scipy's permutation test), where the t approximation fails
                def rho(a, axis=-1):  # Spearman's rho of each pairing of a with y_ (vectorised: 40,320 at once)
                    ra, ry_ = stats.rankdata(a, axis=axis), stats.rankdata(y_)
                    ra, ry_ = ra - ra.mean(axis=-1, keepdims=True), ry_ - ry_.mean()
                    return ra @ ry_ / (np.linalg.norm(ra, axis=-1) * np.linalg.norm(ry_))
                spearman = (spearman[0], stats.permutation_test((x_,), rho, permutation_type="pairings",
                                                                n_resamples=np.inf, vectorized=True).pvalue)
            out[(name, tname)] = dict(pearson=stats.pearsonr(x_, y_), spearman=spearman, partial=(pr, pp),
                                      within=within)
    return out


@pytest.mark.parametrize("make", [cnn, cnn4], ids=["2-norms", "4-norms"])
def test_predictor_table_equals_scipy(make):
    from bnrep import correlations

    r = make(acc=acc_by_seed)
    rows, ref = correlations.predictors(r), reference_correlations(r)
    assert {(x["measure"], x["target"]) for x in rows} == set(ref) and len(rows) == 12
    for x in rows:
        want = ref[(x["measure"], x["target"])]
        assert x["models"] == len(r.table("training"))
        assert (x["pearson_r"], x["pearson_p"]) == pytest.approx(tuple(want["pearson"]), rel=1e-9)
        assert (x["spearman_r"], x["spearman_p"]) == pytest.approx(tuple(want["spearman"]), rel=1e-9)
        assert (x["partial_pearson_r"], x["partial_pearson_p"]) == pytest.approx(want["partial"], rel=1e-6)
        assert x["within_spearman"] == pytest.approx(want["within"], rel=1e-9)
    strength = [max(abs(x["pearson_r"]), abs(x["spearman_r"])) for x in rows]
    assert all(a >= b - 1e-9 for a, b in zip(strength, strength[1:]))  # strongest first


def measure_case(nc1_of_acc) -> results.Results:
    """8 models; BN models 4 pp better; NC1 per model from its norm, test accuracy and seed."""
    tr = pd.DataFrame(dict(model_id=[f"m{i}" for i in range(8)], bn=[True] * 4 + [False] * 4,
                           norm=["batch"] * 4 + ["none"] * 4, condition=["batch"] * 4 + ["none"] * 4, seed=list(range(4)) * 2, train_acc=1.0,
                           test_acc=np.r_[.98 + np.array([.01, -.01, .005, -.005]), .94 + np.array([.01, -.01, .005, -.005])]))
    nc1 = tr[["model_id", "bn", "norm", "seed"]].assign(layer="l1", layer_index=1,
                                                        value=[nc1_of_acc(n, a, s) for n, a, s in zip(tr["norm"], tr["test_acc"], tr["seed"])])
    return results.Results(get_experiment("digits-cnn"), {"training": tr, "nc1": nc1})


NOTE = "sign only from the difference between the normalisation groups"
FEW = "as strong within the groups, too few models to be significant"


@pytest.mark.parametrize("name,nc1,note", [
    ("NC1 follows accuracy within the groups too", lambda n, a, s: 10 - 100 * a, ""),
    ("NC1 differs by group only, within the sign turns", lambda n, a, s: {"batch": 1, "none": 2}[n] + [.3, .1, -.1, -.3][s],
     NOTE),
    ("NC1 follows accuracy within the groups, partial r -0.61 over 8 models: p 0.15",
     lambda n, a, s: {"batch": 1, "none": 2}[n] + {"batch": [0, .6, -.55, -.05], "none": [-.6, 0, .25, .35]}[n][s], FEW),
])
def test_a_predictor_whose_sign_is_only_the_groups_is_noted(name, nc1, note):
    from bnrep import correlations

    r = measure_case(nc1)
    (test, gap) = sorted(correlations.predictors(r), key=lambda x: x["target"] != "test_acc")
    assert test["pearson_r"] < -0.5 and test["pearson_p"] < 0.05, name  # counts across all 8 models
    for x in (test, gap):  # findings.json's flags say what the report's note says
        assert (x["between_groups_only"], x["too_few_within"]) == (note == NOTE, note == FEW), name
    header, rows = correlations.predictor_rows([test, gap], r.norms)
    assert [row[-1] for row in rows] == [note, note]
    from bnrep import verdicts
    notes = [b[1] for b in verdicts.predictor_blocks(r) if b[0] == "note"]
    assert notes == ([] if not note else [notes[0]]) and (not note or notes[0].endswith(CLOSING[note]))


CLOSING = {NOTE: "None of these shows a link between the measure and generalisation beyond the difference between "
                 "the normalisation groups.",
           FEW: "Too few models lie within the normalisation groups to tell whether the link holds there: the data "
                "cannot decide."}


def test_a_note_on_both_kinds_says_which_shows_no_link_and_which_cannot_decide():
    """'Neither kind shows a link' closed the note also where a row was as strong within the groups but over too
    few models: there the data cannot decide."""
    from bnrep import verdicts

    groups_only = measure_case(lambda n, a, s: {"batch": 1, "none": 2}[n] + [.3, .1, -.1, -.3][s])
    few = measure_case(lambda n, a, s: {"batch": 1, "none": 2}[n] + {"batch": [0, .6, -.55, -.05],
                                                                      "none": [-.6, 0, .25, .35]}[n][s])
    r = results.Results(get_experiment("digits-cnn"), {**groups_only.tables,
                                                       "effective_rank": few.tables["nc1"]})
    (note,) = [b[1] for b in verdicts.predictor_blocks(r) if b[0] == "note"]
    assert "NC1 vs test accuracy comes only from the difference" in note
    assert "effective rank vs test accuracy is not significant once the normalisation is controlled for" in note
    assert note.endswith("Where the sign comes from the difference between the groups, no link between the measure "
                         "and generalisation shows beyond it; where too few models lie within the groups, the data "
                         "cannot decide.")


WITHIN = ("counts only within the normalisation groups (their difference hides it across models)",
          "Within the normalisation groups, not across them: NC1 vs test accuracy (partial r = -1.00, p = 1e-06; across "
          "models r = 0.57, p = 0.14); NC1 vs the gap (partial r = 1.00, p = 1e-06; across models r = -0.57, p = 0.14). "
          "Once the normalisation is controlled for, the measure and generalisation move together, which the "
          "difference between the groups hides across models; a link within these groups, not a cause.")
REVERSED = ("reverses within the normalisation groups (across models, the sign is their difference)",
            "Reversed within the normalisation groups: NC1 vs test accuracy (partial r = -1.00, p = 1e-06; across "
            "models r = 0.90, p = 0.0021); NC1 vs the gap (partial r = 1.00, p = 1e-06; across models r = -0.90, p = "
            "0.0021). Across models the sign is the difference between the groups; within them the measure and "
            "generalisation move the other way: a link within these groups, not a cause.")


@pytest.mark.parametrize("bn_nc1,flag,said", [(1.2, "within_groups_only", WITHIN), (3, "reverses_within", REVERSED)])
def test_a_predictor_that_counts_within_the_groups_is_noted(bn_nc1, flag, said):
    """NC1 falls with accuracy inside each norm (partial r -1.00, p 1e-06), while BN models, better, have the
    higher NC1. A little higher: across all 8 models r +0.57, p 0.14, and the row sat low in the table (sorted by
    the across-model r) with an empty note. Much higher (Simpson's case): across models r +0.90, p 0.0021, and
    two notes applied that disagreed ('comes only from the difference between the groups ... neither kind shows a
    link' beside 'within the groups ... move together'); now one."""
    from bnrep import correlations, verdicts

    r = measure_case(lambda n, a, s: {"batch": bn_nc1, "none": 1}[n] - 10 * (a - {"batch": .98, "none": .94}[n])
                     + [.01, -.02, .015, -.005][s])
    rows = correlations.predictors(r)
    assert [(x["within_groups_only"], x["reverses_within"]) for x in rows] == [(flag == "within_groups_only",
                                                                                 flag == "reverses_within")] * 2
    assert not any(x["too_few_within"] for x in rows)
    _, cells = correlations.predictor_rows(rows, r.norms)
    assert [c[-1] for c in cells] == [said[0]] * 2
    assert [b[1] for b in verdicts.predictor_blocks(r) if b[0] == "note"] == [said[1]]


def test_predictor_section_in_the_report_with_the_real_model_count(tmp_path):
    r = cnn4(acc=acc_by_seed)
    write_tables(tmp_path, "digits-cnn", r.tables)
    report.build_report(str(tmp_path), "digits-cnn")
    d = tmp_path / "digits-cnn" / "report"
    md = (d / "report.md").read_text()
    assert "## Which measure predicts generalisation" in md
    assert "These are correlations over 16 models (4 BN, 4 GN, 4 LN, 4 NBN)" in md
    from scipy import stats
    t = stats.t.ppf(0.975, 14)
    assert f"|Pearson r| >= {t / math.sqrt(14 + t * t):.2f} for p < 0.05" in md
    from bnrep import correlations
    top = correlations.predictors(r)[0]
    assert f"| {top['measure']} | " in md.split("## Which measure predicts generalisation")[1].split("\n| ---")[1]
    fj = json.loads((d / "findings.json").read_text())
    assert fj["predictors"][0]["pearson_r"] == pytest.approx(top["pearson_r"])
    assert {m["condition"] for m in fj["measures"]["nc1"]} == set(NORMS4) and len(fj["measures"]["cka"]) == (6 + 4) * 5
    nc1 = r.table("nc1").query("norm == 'group' and layer_index == 2")["value"]
    row = next(m for m in fj["measures"]["nc1"] if m["condition"] == "group" and m["layer_index"] == 2)
    assert (row["mean"], row["std"]) == pytest.approx((nc1.mean(), nc1.std(ddof=1)))


def test_a_measure_whose_every_value_is_nan_is_a_note_saying_why_not_an_empty_figure(tmp_path):
    """A small image folder: fewer clustering samples than one batch, so train_eval has a row per layer and
    model, each NaN with its reason; the report says so where the figure would be, as for a table absent."""
    tables = cnn().tables
    why = "fewer clustering samples (48) than one batch of 64"
    tables["train_eval"] = tables["train_eval"].assign(cka=math.nan, rel_diff=math.nan, reason=why)
    write_tables(tmp_path, "digits-cnn", tables)
    report.build_report(str(tmp_path), "digits-cnn")
    d = tmp_path / "digits-cnn" / "report"
    assert (f"Train-mode against eval-mode CKA per layer not drawn: all 40 values are NaN (40 of BatchNorm and no "
            f"BatchNorm: {why}).") in (d / "report.md").read_text()
    assert not (d / "fig_train_eval.png").exists() and (d / "fig_nc1.png").exists()
    one = tables["train_eval"].index[0]  # one value: drawn, its caption counting the NaN
    tables["train_eval"].loc[one, ["cka", "reason"]] = [0.9, ""]
    write_tables(tmp_path, "digits-cnn", tables)
    report.build_report(str(tmp_path), "digits-cnn")
    assert (d / "fig_train_eval.png").exists() and "CKA per layer not drawn" not in (d / "report.md").read_text()


# ---- results written before the new tables ----

def test_report_builds_without_the_new_tables(tmp_path):
    write_tables(tmp_path, "digits-cnn", cnn(new_tables=False).tables)
    res = report.build_report(str(tmp_path), "digits-cnn")
    d = tmp_path / "digits-cnn" / "report"
    md, html = (d / "report.md").read_text(), (d / "report.html").read_text()
    for name, table in [("NC1 per layer", "nc1"), ("Effective rank per layer", "effective_rank"), ("CKA per layer", "cka")]:
        assert f"{name} not drawn: no results/{table} (results written before this measure existed" in md
        assert f"{name} not drawn: no results/{table}" in html
    assert "Layer sparsity against the threshold eps not drawn: it needs layer sparsity at two or more thresholds" in md
    held = cnn(new_tables=False).tables
    new = {s.name for s in figures.FIGURES if not set(s.tables) <= set(held)}  # a table the old results lack
    assert {"fig_nc1", "fig_cka", "fig_train_eval"} <= new  # (every measure after 0.1 and its figure)
    new |= {"fig_sparsity_thresholds", *SNAPSHOT_FIGURES}  # one eps; no snapshots
    drawn = {f.rsplit(".", 1)[0] for f in res.files if f.startswith("fig_")}
    assert drawn == {s.name for s in figures.FIGURES} - new
    assert md.count("![fig_") == len(drawn) and html.count("data:image/png;base64,") == len(drawn)
    fj = json.loads((d / "findings.json").read_text())
    assert fj["measures"] == {} and {x["measure"] for x in fj["predictors"]} == \
        {"layer sparsity (rectifiers, smallest eps)", "class DBI", "k-means DBI at optimal k"}
    assert [f.verdict for f in res.findings] == [f.verdict for f in findings.findings(cnn())]


def test_figures_stay_readable_at_49_probes():
    """ResNet-50 has 49 ReLU calls: the layer axis thins its labels, the panel grows, non-rectifier
    probes are marked in the sparsity figure, and the channel panels sit at fractions of the depth."""

    from bnrep.experiments import get_experiment
    from bnrep.figures import fig_channel_sparsity, fig_class_dbi, fig_layer_sparsity
    from bnrep.plotting import MAX_TICK_LABELS
    from bnrep.results import Results
    exp = get_experiment("cifar10-vgg16").with_model("torchvision:resnet50")
    rng, rows, chans = np.random.default_rng(0), [], []
    for norm in ("batch", "none"):
        for s in range(2):
            for i in range(1, 50):
                key = dict(model_id=f"m-{norm}-{s}", norm=norm, condition=norm, bn=norm == "batch", seed=s, layer=f"l{i}",
                           layer_index=i, activation="GELU" if i % 7 == 0 else "ReLU", eps=0.0)
                rows.append({**key, "sparsity": rng.random(), "dbi": rng.random()})
                chans += [{**key, "channel": c, "sparsity": rng.random()} for c in range(4)]
    r = Results(exp, {"layer_sparsity": pd.DataFrame(rows), "class_dbi": pd.DataFrame(rows),
                      "channel_sparsity": pd.DataFrame(chans)})
    ax = fig_layer_sparsity(r).axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert 12 < len(labels) <= MAX_TICK_LABELS and labels[0] == "l1" and labels[-1] == "l49*"
    assert "l7*" in labels and not any(l.endswith("*") and int(l[1:-1]) % 7 for l in labels)
    assert ax.get_xlabel() == "layer (*: not a rectifier)"
    assert fig_layer_sparsity(r).get_size_inches()[0] > 10  # grows with the layers
    assert not any(t.get_text().endswith("*") for t in fig_class_dbi(r).axes[0].get_xticklabels())  # DBI: no mark
    km = pd.DataFrame([{**row, "k": k, "dbi": row["dbi"] + k} for row in rows for k in (2, 3)])
    sweep = figures.fig_kmeans_sweep(Results(exp, {"kmeans": km}))
    panels = [a.get_title() for a in sweep.axes if a.get_title()]
    assert len(panels) == 16 and panels[0].endswith(": l1") and panels[-1].endswith(": l49")
    assert sweep._suptitle.get_text().endswith("16 of 49 layers, evenly over the depth")
    titles = [a.get_title() for a in fig_channel_sparsity(r).axes if a.get_title()]
    assert [t.split("(layer ")[1].rstrip(")") for t in titles] == ["13", "25", "37", "49"]  # quarters of 49


def test_sparsity_claims_judge_rectifier_layers_only():
    """Exact zeros mean something after a ReLU: GELU probes stay out of claims 1-2 and are named;
    a model without any rectifier probe gets 'not evaluated' instead of a verdict on near-zero sparsity."""
    from bnrep.experiments import get_experiment
    from bnrep.results import Results
    exp = get_experiment("synthetic-cnn").override(seeds=3)
    rows = [dict(model_id=f"m-{n}-{s}", norm=n, condition=n, bn=n == "batch", seed=s, layer=f"l{i}", layer_index=i, eps=0.0,
                 activation="ReLU" if i <= 3 else "GELU", sparsity=(0.6 if n == "batch" else 0.2) + 0.01 * s)
            for n in ("batch", "none") for s in range(3) for i in range(1, 6)]
    fs = {f.number: f for f in findings.findings(Results(exp, {"layer_sparsity": pd.DataFrame(rows)}))}
    assert set(fs[1].numbers["diff_pp"]) == {"l1", "l2", "l3"}
    assert fs[1].verdict == "not supported"  # BN sparser in every rectifier layer
    assert any("2 layer(s) after GELU (l4, l5) left out" in c for c in fs[1].caveats)
    only_gelu = pd.DataFrame(rows).assign(activation="GELU")
    fs = {f.number: f for f in findings.findings(Results(exp, {"layer_sparsity": only_gelu}))}
    assert fs[1].verdict == fs[2].verdict == "not evaluated"
    assert fs[1].detail.startswith("no probe is a rectifier (activations: GELU)")


@pytest.mark.parametrize("spread,lower", [(2.0, []), (0.01, ["l1", "l2", "l3"])])
def test_claim_3_counts_only_detectable_differences(spread, lower):
    """Class DBI lower with BN in every layer on average, but within seed noise (Welch p >= P_MAX) when the
    seeds spread widely: those layers do not count as lower, and claim 3 is not supported by them."""
    rows = [dict(model_id=f"m-{n}-{s}", norm=n, condition=n, bn=n == "batch", seed=s, layer=f"l{i}", layer_index=i,
                 dbi=(3.0 if n == "batch" else 3.2) + (s - 1) * (spread if n == "batch" else 0.3 * spread))
            for n in ("batch", "none") for s in range(3) for i in (1, 2, 3)]
    f = findings.finding_purity(pd.DataFrame(rows), pd.DataFrame(), 1)
    assert f.numbers["class_dbi"]["lower"] == lower
    assert f.verdict == ("supported" if lower else "not supported")


def test_settings_print_hyperparameters_at_three_digits():
    from bnrep.experiments import get_experiment
    from bnrep.results import Results
    t = pd.DataFrame([dict(model_id=f"m{s}", norm="batch", condition="batch", bn=True, seed=s, lr=0.01878985266149949, momentum=0.95,
                           epochs=3, interpolated=False, train_acc=0.5, val_acc=0.5, test_acc=0.5,
                           experiment="synthetic-cnn", dataset="synthetic", arch="cnn") for s in range(2)])
    rows = dict((r[0], r[1]) for r in report.settings_rows(Results(get_experiment("synthetic-cnn"), {"training": t})))
    assert rows["trained (BN)"].startswith("2 models, lr 0.0188, momentum 0.95, epochs 3")
    # the optimiser row gives no lr or momentum of its own: the models trained with the sweep's best, not the preset's
    assert rows["optimiser"] == ("sgd, lr decay x0.99 every 10 epochs, batch 64; lr and momentum per BN setting: the sweep's "
                                 "best (rows 'trained' below)")
    e = get_experiment("synthetic-cnn")
    preset = t.assign(**e.paper_hparams("batch"))
    rows = dict((r[0], r[1]) for r in report.settings_rows(Results(e, {"training": preset})))
    assert rows["optimiser"].endswith("per BN setting: the preset's (--paper-hparams) (rows 'trained' below)")


def test_settings_name_a_label_in_parentheses_with_its_tag_inside_them():
    from bnrep.experiments import get_experiment
    from bnrep.results import Results
    e = get_experiment("synthetic-cnn").override(conditions="batch; ghost:8; none")
    rows = dict((r[0], r[1]) for r in report.settings_rows(Results(e, {})))
    assert rows["normalisations"] == "BatchNorm (BN), ghost BatchNorm (8 per virtual batch; GBN8), no norm (NBN)"


def test_a_label_in_parentheses_takes_its_tag_inside_them_wherever_the_report_names_a_condition():
    """Table 1's caption and the rules for a ghost-BN reference said 'ghost BatchNorm (8 per virtual batch)
    (GBN8)'."""
    from bnrep.table1 import table1_caption

    assert "ghost BatchNorm (8 per virtual batch; GBN8)" in table1_caption(["batch", "ghost:8", "none"])
    assert "reference condition ghost BatchNorm (8 per virtual batch; GBN8) by" in rules.rules(
        ["batch", "ghost:8"], "ghost:8")[-1]


def test_settings_say_when_a_preset_s_study_has_conditions_of_its_own():
    """`bnrep run --conditions ...` on digits-cnn writes to digits-cnn: its report read as the preset's BN
    against none, description and all."""
    from bnrep.experiments import get_experiment
    from bnrep.results import Results

    e = get_experiment("digits-cnn")
    said = dict((r[0], r[1]) for r in report.settings_rows(Results(e.override(conditions="batch; ghost:8; none"), {})))
    assert said["experiment"].endswith("no download; this study's conditions, not the preset's BN and NBN)")
    said = dict((r[0], r[1]) for r in report.settings_rows(Results(e, {})))
    assert "this study's conditions" not in said["experiment"]


def test_settings_give_the_groups_of_each_groupnorm_layer_read_off_the_model():
    """GroupNorm at 32 groups on StandardCNN's 16- and 32-channel layers is one channel per group (as
    InstanceNorm normalises): the report named it GroupNorm only, while its conv1-2 CKA and channel means read
    as an instance norm's. Read off the built model, by the layer each norm feeds; conditions alike share one
    line; BatchNorm and LayerNorm have none."""
    from bnrep.experiments import get_experiment
    from bnrep.initial import norm_groups
    from bnrep.results import Results

    e = get_experiment("digits-cnn").override(conditions="batch; group; gn-b4:group,batch_size=4; group:4; "
                                                          "ws+group; layer; none")
    assert norm_groups(e, "group") == [("conv1", 16, 16), ("conv2", 32, 32), ("conv3", 32, 64), ("conv4", 32, 128),
                                       ("fc1", 25, 100)]  # fc1: 100 wide, 25 the largest count <= 32 dividing it
    rows = dict((r[0], r[1]) for r in report.settings_rows(Results(e, {})))
    assert rows["GroupNorm groups"] == (
        "GN, gn-b4 and WSGN: conv1 16 groups of 1 channel, conv2 32 of 1, conv3 32 of 2, conv4 32 of 4, "
        "fc1 25 of 4; GN4: conv1 4 groups of 4 channels, conv2 4 of 8, conv3 4 of 16, conv4 4 of 32, fc1 4 of 25. "
        "In GN, gn-b4 and WSGN, a group of 1 channel normalises each channel of each image alone, as InstanceNorm "
        "does")
    rows = dict((r[0], r[1]) for r in report.settings_rows(Results(e.override(conditions="batch; layer; none"), {})))
    assert "GroupNorm groups" not in rows
    # ResNet-18's 20 norm layers (a block's shortcut norm feeds the probe its second norm feeds): alike in a run,
    # said once (the first 8 were listed, the rest '...', and one probe twice)
    e = get_experiment("synthetic-resnet18")
    rows = dict((r[0], r[1]) for r in report.settings_rows(Results(e, {})))
    assert rows["GroupNorm groups"] == ("GN: stem to s1b2.out 32 groups of 2 channels, s2b1.relu1 to s2b2.out 32 of 4, "
                                        "s3b1.relu1 to s3b2.out 32 of 8, s4b1.relu1 to s4b2.out 32 of 16")


def test_settings_give_each_condition_its_own_recipe():
    from bnrep.experiments import get_experiment
    from bnrep.results import Results
    e = get_experiment("synthetic-cnn").override(conditions="batch; bn-b8:batch,batch_size=8,lr=0.05; none")
    t = pd.DataFrame([dict(model_id=f"m{c}{s}", norm="batch", condition=c, bn=True, seed=s, lr=0.01, momentum=0.9,
                           epochs=3, interpolated=False, train_acc=0.5, val_acc=0.5, test_acc=0.5,
                           experiment="synthetic-cnn", dataset="synthetic", arch="cnn")
                      for c in ("batch", "bn-b8") for s in range(2)])
    rows = dict((r[0], r[1]) for r in report.settings_rows(Results(e, {"training": t})))
    # lr once, the models' own (a swept grid trains with the sweep's, not the condition's)
    assert rows["trained (bn-b8)"].startswith("2 models, batch size 8, lr 0.01, momentum 0.9, epochs 3")
    assert rows["trained (BN)"].startswith("2 models, lr 0.01, momentum 0.9, epochs 3")
    assert rows["seeds"] == "2 per condition"
    assert rows["conditions"] == "BatchNorm (BN), BatchNorm at batch size 8 and lr 0.05 (bn-b8)" and "normalisations" not in rows
    assert ", batch (BN 64, bn-b8 8); " in rows["optimiser"]  # the models there (said "batch 64" alone)
    e = e.override(conditions="bn-b4:batch,batch_size=4,max_epochs=20; nb-b4:none,batch_size=4")
    t = t.assign(condition=["bn-b4", "nb-b4"] * 2)
    rows = dict((r[0], r[1]) for r in report.settings_rows(Results(e, {"training": t})))
    assert ", batch 4; " in rows["optimiser"] and rows["stopping"] == "interpolate, at most (bn-b4 20, nb-b4 30) epochs"


@pytest.mark.parametrize("layers,same,reading", [
    ([3], "1 (l3)", "already at initialisation"),
    ([2], "0", "appeared in training"),
    ([1, 2], "0", "unclear: l1 at least half as large at epoch 0, within seed noise"),  # 2 seeds: p 0.15 at init
    ([1, 2, 3], "1 (l3)", "partly at initialisation"),
])
def test_a_gap_as_large_at_initialisation_but_within_seed_noise_is_not_said_to_appear_in_training(layers, same, reading):
    """Final gap 5 in every layer (seeds +-0.1); at epoch 0: l1 the same gap with seeds +-2, l2 none, l3 the same
    gap with seeds +-0.1."""
    from bnrep.experiments import get_experiment
    from bnrep.results import Results
    at_init = {1: (5, 2), 2: (0, 0.1), 3: (5, 0.1)}  # layer -> (gap at epoch 0, seed spread there)
    rows = [dict(model_id=f"{c}{s}", condition=c, norm=c, bn=c == "batch", seed=s, layer=f"l{li}", layer_index=li,
                 epoch=epoch, value=10 + gap * (c == "batch") + (spread if s else -spread))
            for c in ("batch", "none") for s in (0, 1) for li in layers
            for epoch, gap, spread in ((-1, 5, 0.1), (0, *at_init[li]))]
    r = Results(get_experiment("synthetic-cnn"), {"effective_rank": pd.DataFrame(rows)})
    assert verdicts.initialisation_rows(r) == [["Effective rank", "BN vs NBN",
                                                f"{len(layers)} ({', '.join(f'l{i}' for i in layers)})", same, reading]]
    (x,) = verdicts.initialisation(r)  # as findings.json has it
    assert x == dict(measure="effective_rank", condition="batch", ref="none",
                     final_layers=[f"l{i}" for i in layers], initial_layers=["l3"] if 3 in layers else [],
                     reading=reading, one_network=False)


def test_the_initialisation_table_counts_a_sparsity_gap_as_claim_1_does():
    """Claim 1 counts a layer sparsity difference within 1 pp as none; the initialisation table counted any
    significant one (ResNet-18's stem, +0.5 pp: 11 layers differ there, 10 in claim 1 on the same page)."""
    from bnrep.experiments import get_experiment
    from bnrep.results import Results
    gaps = {1: 0.005, 2: 0.05}  # layer -> BN's sparsity above no BN's (seeds +-0.0002: significant both)
    rows = [dict(model_id=f"{c}{s}", condition=c, norm=c, bn=c == "batch", seed=s, layer=f"l{li}", layer_index=li,
                 epoch=epoch, eps=0.0, sparsity=0.4 + gap * (c == "batch") + (0.0002 if s else -0.0002))
            for c in ("batch", "none") for s in (0, 1) for li in gaps for epoch, gap in ((-1, gaps[li]), (0, gaps[li]))]
    r = Results(get_experiment("synthetic-cnn"), {"layer_sparsity": pd.DataFrame(rows)})
    (row,) = [x for x in verdicts.initialisation_rows(r) if x[0] == "Layer sparsity"]
    assert row == ["Layer sparsity", "BN vs NBN", "1 (l2)", "1 (l2)", "already at initialisation"]


def test_table1_names_diverged_models_per_norm():
    t = pd.DataFrame([dict(model_id=f"m-{n}-{s}", norm=n, condition=n, diverged=n == "none" and s < 2,
                           diverged_epoch=(3 + s) if n == "none" and s < 2 else 0) for n in ("batch", "none")
                      for s in range(3)])
    assert report.diverged_note(t).startswith("Diverged (training loss NaN or inf, training stopped): 2 of 3 NBN "
                                              "models (epoch 3, 4).")
    assert report.diverged_note(t.drop(columns=["diverged", "diverged_epoch"])) == ""  # older tables
    assert report.diverged_note(t.assign(diverged=False)) == ""


def test_figures_of_diverged_models_render():
    """Every model diverged: NaN losses and NaN measures. The learning curves draw (linear axes), no exception;
    a measure with no value is the note of why, not empty axes."""
    from bnrep.experiments import get_experiment
    from bnrep.results import Results
    h = pd.DataFrame([dict(model_id=f"m-{n}", norm=n, condition=n, bn=n == "batch", seed=0, epoch=e, train_loss=np.nan if e > 1
                           else np.inf, train_acc_running=0.1, val_acc=0.1, diverged=e == 2)
                      for n in ("batch", "none") for e in (1, 2)])
    nc = pd.DataFrame([dict(model_id=f"m-{n}", norm=n, condition=n, bn=n == "batch", seed=0, layer=f"l{i}", layer_index=i,
                            value=np.nan, reason="the representations contain NaN or inf")
                       for n in ("batch", "none") for i in (1, 2)])
    r = Results(get_experiment("synthetic-cnn"), {"training_history": h, "nc1": nc})
    assert figures.figure_bytes(figures.fig_learning_curves(r), "png").startswith(b"\x89PNG")
    assert figures.figure("fig_nc1").make(r) is None
    assert report.skipped_note(figures.figure("fig_nc1"), [r], "runs") == (
        "NC1 per layer not drawn: all 4 values are NaN (4 of BatchNorm and no BatchNorm: the representations contain "
        "NaN or inf).")


def test_diverged_models_make_the_verdicts_inconclusive():
    from bnrep.experiments import get_experiment
    from bnrep.results import Results
    t = pd.DataFrame([dict(model_id=f"m-{n}-{s}", norm=n, condition=n, bn=n == "batch", seed=s, interpolated=True, epochs=3,
                           test_acc=0.9, train_acc=1.0, val_acc=0.9, lr=0.01, diverged=n == "none" and s == 0,
                           diverged_epoch=2 if n == "none" and s == 0 else 0)
                      for n in ("batch", "none") for s in range(3)])
    conds = conditions.diverged_models(Results(get_experiment("synthetic-cnn"), {"training": t}), "batch")
    assert [c.text for c in conds] == ["1 of 3 no BN models diverged (training loss NaN or inf; not analysed, "
                                       "their measures are NaN and left out)"]
    assert conds[0].undermines and conds[0].claims == (1, 2, 3, 4)


def test_figures_drawn_on_every_core_are_the_bytes_drawn_here(monkeypatch):
    """The report's figures from forked workers (a report without Ray) and from Ray tasks (`bnrep run`)
    are byte for byte the PNGs drawn in this process, the same ones missing."""
    import ray

    from bnrep import drawing

    rs, names = [cnn()], ["fig_layer_sparsity", "fig_sparsity_thresholds", "fig_class_dbi", "fig_cka",
                          "fig_optimal_k"]
    here = drawing.draw_some(names, rs)
    assert [k for k, v in here.items() if v is None] == ["fig_sparsity_thresholds"]  # one threshold only
    monkeypatch.setenv(drawing.WORKERS_ENV, "2")
    forked = drawing.draw(rs, names)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        tasks = drawing.draw(rs, names)
    finally:
        ray.shutdown()
    for way in (forked, tasks):
        assert list(way) == list(here)
        assert {k: v and v[0] for k, v in way.items()} == {k: v and v[0] for k, v in here.items()}


def _freeze_count(names):  # a drawing worker's stand-in (module level: the pool pickles it by name)
    import gc

    return {name: (gc.get_freeze_count(), b"") for name in names}


def test_forked_drawing_workers_find_the_drivers_objects_frozen(monkeypatch):
    """A forked worker's garbage collection would write to every object it inherited (and each page
    written is copied): they are frozen while the workers run (gc.freeze), and only then."""
    import gc

    from bnrep import drawing

    monkeypatch.setenv(drawing.WORKERS_ENV, "2")
    monkeypatch.setattr(drawing, "_forked", _freeze_count)
    assert gc.get_freeze_count() == 0
    got = drawing.draw([cnn()], ["fig_a", "fig_b", "fig_c"])
    assert list(got) == ["fig_a", "fig_b", "fig_c"]
    assert all(frozen > 10_000 for frozen, _ in got.values())  # the test process's modules and objects
    assert gc.get_freeze_count() == 0


def test_a_figure_is_laid_out_once_for_its_png_and_svg(monkeypatch):
    """png_and_svg runs the constrained layout once (for the PNG) and keeps it for the SVG: the PNG is the
    bytes figure_bytes draws alone, the SVG the page and text figure_bytes lays out again, within 0.5 pt."""
    import re

    from matplotlib import layout_engine

    rs, calls = [cnn()], []
    layout = layout_engine.do_constrained_layout
    monkeypatch.setattr(layout_engine, "do_constrained_layout", lambda *a, **k: calls.append(1) or layout(*a, **k))
    make = figures.figure("fig_kmeans_sweep").make
    png, svg = figures.png_and_svg(make(rs))
    assert len(calls) == 1
    alone_png, alone_svg = figures.figure_bytes(make(rs), "png"), figures.figure_bytes(make(rs), "svg")
    assert len(calls) == 3 and png == alone_png

    def page(b):  # the SVG's width and height (pt) and its text, in order
        s = b.decode()
        return [float(v) for v in re.search(r'width="([\d.]+)pt" height="([\d.]+)pt"', s).groups()], \
            re.findall(r"<!-- (.*?) -->", s)

    (size, text), (alone_size, alone_text) = page(svg), page(alone_svg)
    assert text == alone_text and len(text) > 20
    assert np.allclose(size, alone_size, atol=0.5)


def test_the_predictor_layer_sparsity_reads_what_claim_2_reads():
    """Exact zeros after rectifiers only, as claim 2: a GELU layer whose 'sparsity' tracks test accuracy
    must not make the predictor table contradict claim 2 in the same report."""
    rows, models = [], []
    for c in ("batch", "none"):
        for s in range(4):
            mid = dict(model_id=f"{c}-{s}", condition=c, norm=c, bn=c == "batch", seed=s)
            models.append({**mid, "train_acc": 1.0, "test_acc": 0.9 + 0.01 * s})
            rows += [{**mid, "layer": "relu1", "layer_index": 1, "eps": 0.0, "activation": "ReLU",
                      "sparsity": 0.5 + 0.01 * ((s * 3) % 4)},
                     {**mid, "layer": "gelu2", "layer_index": 2, "eps": 0.0, "activation": "GELU", "sparsity": 0.1 * s}]
    r = results.Results(get_experiment("digits-cnn"), {"training": pd.DataFrame(models),
                                                        "layer_sparsity": pd.DataFrame(rows)})
    m = correlations.model_measures(r).set_index("model_id")
    relu = {f"{c}-{s}": 0.5 + 0.01 * ((s * 3) % 4) for c in ("batch", "none") for s in range(4)}
    assert m["layer sparsity (rectifiers, smallest eps)"].to_dict() == pytest.approx(relu)


def test_a_study_without_its_reference_says_so_not_that_models_diverged():
    """`--norms batch`: the reference (none) has no models, and every claim says that is why."""
    t = make_tables(**SMALL)
    only_bn = {k: v[v["condition"] == "batch"] if "condition" in v else v for k, v in t.items()}
    fs = findings.findings(results.Results(get_experiment("digits-cnn"), only_bn))
    for f in fs[:1] + fs[2:]:  # (claim 2 correlates across whichever models there are)
        assert f.verdict == "not evaluated"
        assert f.detail.startswith("this study has no models of its reference condition (no BN, `none`)"), f.detail


def test_a_claim_against_another_reference_names_it():
    """Judged against `none` the paper's words; against another reference, that reference by its label
    (the judged condition's own name put in first, so a reference label holding 'BatchNorm' stays whole)."""
    get_experiment("digits-cnn").override(conditions="batch; bn-b32:batch,batch_size=32; none")  # registers bn-b32
    assert findings.claim(3, "batch") == rules.CLAIMS[3]
    assert findings.claim(3, "none", "bn-b32").startswith(
        "No norm at the study's batch size tends to produce purer representational clusters than models with BatchNorm "
        "at batch size 32, especially")
    assert "trained without" not in findings.claim(3, "batch", "bn-b32")


def test_a_combined_report_of_studies_defining_one_tag_differently_is_refused(tmp_path, capsys):
    """One process knows one definition per tag: a combined report would label one study's condition with
    the other's. Each study's own report is still written; the combined one is refused in one line."""
    from bnrep import config
    from bnrep.stages import report as stage

    t = make_tables(**SMALL)
    for name, size in (("sa", 32), ("sb", 16)):
        exp = get_experiment("digits-cnn").override(name=name, conditions=f"batch; bn-bx:batch,batch_size={size}; none")
        store = Store(str(tmp_path), name)
        config.write_config(store, config.prepare(store, exp, "final", fresh=False))
        write_tables(tmp_path, name, {"training": t["training"]})
    line = ("sa and sb define condition bn-bx differently (bn-bx:batch,batch_size=32 / bn-bx:batch,batch_size=16): "
            "report them one by one, or give one of them another tag")
    with pytest.raises(report.ReportError, match=re.escape(line)):
        report.build_report(str(tmp_path), ["sa", "sb"])
    assert stage.run(str(tmp_path), ["sa", "sb"], several=True) == 2
    assert capsys.readouterr().err == f"error: combined report: {line}\n"
    assert (tmp_path / "sa/report/report.html").is_file() and not (tmp_path / "combined/report.html").exists()


def test_a_combined_report_keeps_each_study_s_reference(tmp_path):
    """ra judges BN against none, rb none against BN: claim 1 across experiments is two comparisons, not one
    pooled under the first study's reference; the rules say which study has which reference. A study
    named twice is refused (its models counted twice shrank Table 1's stds)."""
    from bnrep import config

    t = make_tables(**SMALL)
    for name, ref in (("ra", "none"), ("rb", "batch")):
        exp = get_experiment("digits-cnn").override(name=name, reference=ref)
        store = Store(str(tmp_path), name)
        config.write_config(store, config.prepare(store, exp, "final", fresh=False))
        write_tables(tmp_path, name, t)
    res = report.build_report(str(tmp_path), ["ra", "rb"])
    across = json.loads((tmp_path / "combined" / "findings.json").read_text())["across"]
    assert [(a["condition"], a["ref"]) for a in across] == [("batch", "none"), ("none", "batch")]
    assert [sorted(a["numbers"]["direction"]) for a in across] == [["ra"], ["rb"]]
    md = (tmp_path / "combined" / "report.md").read_text()
    assert "rb: Here every condition is judged against the reference condition BatchNorm (BN)" in md
    assert "| ra BN | rb NBN vs BN |" in md.replace("| # | Claim ", "|")
    with pytest.raises(report.ReportError, match="^--experiments names ra twice: a combined report shows each "
                                                 "experiment once$"):
        report.build_report(str(tmp_path), ["ra", "rb", "ra"])
    assert res.experiment


def _ctrl_c_here(share):
    import os
    import signal

    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C reaches every process of the terminal's group
    return {name: None for name in share}


def test_drawing_workers_leave_ctrl_c_to_the_report(monkeypatch):
    """The forked workers that draw the figures ignore Ctrl-C: the report's own process says
    `interrupted` in one line; each worker printed a KeyboardInterrupt traceback before it."""
    from bnrep import drawing

    monkeypatch.setenv(drawing.WORKERS_ENV, "2")
    monkeypatch.setattr(drawing, "_forked", _ctrl_c_here)
    assert drawing.draw([], ["a", "b"]) == {"a": None, "b": None}


def test_a_caveat_every_claim_names_is_said_once_in_the_summary(tmp_path):
    write_tables(tmp_path, "digits-cnn", make_tables(**SMALL, seeds=2))
    res = report.build_report(str(tmp_path), "digits-cnn")
    text = "only 2 seeds of BN (need 3)"
    assert all(text in f.caveats for f in res.findings) and len(res.findings) == 4
    assert res.summary.count(text) == 1 and f"Named for every claim below:\n    - {text}" in res.summary
    md = (tmp_path / "digits-cnn" / "report" / "report.md").read_text()  # (a page of dead channels in every cell)
    assert md.count(text) == 1 and f"Named for every claim below:\n\n- {text}\n" in md, md[:3000]
    # several conditions: what every claim about one of them names is said once, above its claims
    write_tables(tmp_path / "three", "digits-cnn", make_tables(**SMALL, seeds=2, norms=("batch", "layer", "none")))
    res = report.build_report(str(tmp_path / "three"), "digits-cnn")
    md = (tmp_path / "three" / "digits-cnn" / "report" / "report.md").read_text()
    for short in ("BN", "LN"):
        text = f"only 2 seeds of {short} (need 3)"
        mine = [f for f in res.findings if SHORT[f.norm] == short]
        assert len(mine) == 4 and all(text in f.caveats for f in mine) and len(res.findings) == 8
        assert res.summary.count(text) == 1, res.summary
        said = res.summary.index(f"Named for every claim about {short}:\n    - {text}")
        assert said < res.summary.index(f"1. {mine[0].claim}")  # above its first claim
        assert md.count(text) == 1 and f"Named for every claim about {short}:\n\n- {text}\n" in md, md[:3000]


@pytest.mark.parametrize("a,ref,one_network", [
    ("bn-b8", "bn-b64", True),  # a recipe change: the same network
    ("ghost:8", "bn-b64", True),  # a ghost BatchNorm is a BatchNorm until it trains
    ("group", "bn-b64", False),
])
def test_an_epoch_0_difference_between_one_network_measured_at_two_batch_sizes_is_not_the_architecture(a, ref,
                                                                                                     one_network):
    """bn-b8 and bn-b64 (and ghost:8) start from the same weights at one seed; at epoch 0 their batch statistics
    are taken at 8 and at 64 (ghost:8: in virtual batches of 8), which alone makes them differ there. The reading
    says so beside its count. (It once said "already at initialisation" alone, then "appeared in training" for
    any such pair, whatever the counts: wrong for gradient norms, measured with batch statistics at both epochs,
    and its "batch size" wrong for ghost:8 against bn-b64, both at 64.)"""
    from bnrep.experiments import get_experiment
    from bnrep.norms import same_start
    from bnrep.results import Results

    e = get_experiment("synthetic-cnn").override(
        conditions=f"bn-b8:batch,batch_size=8; bn-b64:batch,batch_size=64; {a if a != 'bn-b8' else ''}",
        reference=ref)
    assert same_start(a, ref) is one_network
    rows = [dict(model_id=f"{c}{s}", condition=c, norm=c, bn=False, seed=s, layer="l1", layer_index=1, epoch=epoch,
                 value=10 + 5 * (c == a) + (0.1 if s else -0.1))
            for c in (a, ref) for s in (0, 1) for epoch in (-1, 0)]
    r = Results(e, {"effective_rank": pd.DataFrame(rows)})
    (row,) = [x for x in verdicts.initialisation_rows(r) if x[1] == f"{SHORT[a]} vs {SHORT[ref]}"]
    assert row[3] == "1 (l1)"  # the same gap at epoch 0 ...
    assert row[4] == "already at initialisation" + (verdicts.ONE_NETWORK if one_network else "")  # its cause named
    assert "virtual batches" in verdicts.ONE_NETWORK and "batch size" in verdicts.ONE_NETWORK
    # findings.json's one_network says what its name says, whether or not the two differed at epoch 0 (it was the
    # note's flag: False for one network that did not differ there)
    same_at_0 = Results(e, {"effective_rank": pd.DataFrame([{**x, "value": 10 + (0.1 if x["seed"] else -0.1)}
                                                             if x["epoch"] == 0 else x for x in rows])})
    for res, reading in ((r, "already at initialisation"), (same_at_0, "appeared in training")):
        (rec,) = [x for x in verdicts.initialisation(res) if x["condition"] == a]
        assert rec["reading"].startswith(reading) and rec["one_network"] is one_network


def test_a_study_of_one_model_is_not_told_to_run_the_analysis_for_cka(tmp_path):
    """One model has no pair to compare: its report said 'no results/cka yet; run bnrep analysis ...', which
    could never add it."""
    tables = {t: (d[d["model_id"] == "bn-s0"] if "model_id" in d else d) for t, d in cnn().tables.items()
              if t != "cka"}
    assert tables["training"]["model_id"].tolist() == ["bn-s0"]
    write_tables(tmp_path, "digits-cnn", tables, parts=1)
    report.build_report(str(tmp_path), "digits-cnn")
    md = (tmp_path / "digits-cnn" / "report" / "report.md").read_text()
    assert "CKA per layer not drawn: it compares two models, and this study has one." in md
    assert "results/cka" not in md


def test_a_damaged_part_is_named_in_the_report_not_passed_over(tmp_path):
    """A part under its final name that does not read (a disk that filled during a copy, a file cut short)
    counted as missing without a word."""
    write_tables(tmp_path, "digits-cnn", cnn().tables)
    nc1 = sorted((tmp_path / "digits-cnn" / "results" / "nc1").glob("*.parquet"))
    nc1[0].write_bytes(nc1[0].read_bytes()[:100])
    report.build_report(str(tmp_path), "digits-cnn")
    md = (tmp_path / "digits-cnn" / "report" / "report.md").read_text()
    assert (f"digits-cnn: 1 part(s) of results/nc1 do not read ({nc1[0]}: damaged, or a copy cut short): they count "
            f"as missing; `bnrep analysis --experiment digits-cnn --out {tmp_path}` writes them again.") in md


def test_a_report_that_fails_midway_leaves_the_one_before_whole(tmp_path, monkeypatch):
    """A full disk while a new report was written (judged against another reference): report.md was the new
    one beside the earlier report.html, findings.json and summary.txt, report_inputs.json deleted. The files are
    staged and moved into place together now; the next report that succeeds leaves no staging folder."""
    from bnrep.store import Store, StoreWriteError, cannot_write

    write_tables(tmp_path, "digits-cnn", cnn().tables)
    report.build_report(str(tmp_path), "digits-cnn")
    folder = tmp_path / "digits-cnn" / "report"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real = Store.write_bytes

    def full_at_findings(self, rel, data):
        if rel.endswith("findings.json"):
            raise cannot_write(self.display(rel), "No space left on device")
        real(self, rel, data)

    monkeypatch.setattr(Store, "write_bytes", full_at_findings)
    (tmp_path / "digits-cnn" / "results" / "nc1").rename(tmp_path / "nc1-away")  # the new report would differ
    with pytest.raises(StoreWriteError):
        report.build_report(str(tmp_path), "digits-cnn")
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert after == before and "report_inputs.json" in after
    monkeypatch.setattr(Store, "write_bytes", real)
    (folder / "my notes.txt").write_text("mine")  # (not bnrep's: left alone)
    report.build_report(str(tmp_path), "digits-cnn")
    assert not (folder / ".bnrep-staging").exists() and (folder / "report.md").read_bytes() != before["report.md"]
    # the NC1 figure this report does not draw (its table moved away) is gone with the report that drew it
    assert {p.name for p in folder.iterdir()} == set(before) - {"fig_nc1.png", "fig_nc1.svg"} | {"my notes.txt"}


def test_the_cka_caption_names_the_kernels_two_conditions_start_from_at_one_seed():
    """Which pairs of models start from the same kernels is read off the models, built as training builds
    them: on StandardCNN, every kernel for BN, GN and LN (a norm draws no weights), the first convolution only
    against no BN (whose convolutions draw a bias too). The caption said that only one norm under two recipes
    (or ghost BN and BN) starts alike, which left the BN/GN CKA at one seed read as if from independent starts."""
    import torch

    from bnrep.models import build_model

    def kernels(norm):  # the test's own build: torch's RNG seeded, the model built, as Trainer does
        torch.manual_seed(0)
        return {n: p for n, p in build_model("cnn", norm, 1, 10, (8, 8)).named_parameters() if p.dim() > 1}

    k = {n: kernels(n) for n in NORMS4}
    same = {(a, b): [n.removesuffix(".weight") for n in k[a] if torch.equal(k[a][n], k[b].get(n, torch.empty(0)))]
            for a, b in [("batch", "group"), ("batch", "none")]}
    assert same[("batch", "group")] == [n.removesuffix(".weight") for n in k["batch"]] and len(k["batch"]) == 6
    assert same[("batch", "none")] == ["features.0"]
    text = captions.caption(figures.figure("fig_cka"), [cnn4()])
    assert ("(read off the models, built as training builds them): BN and GN, BN and LN, GN and LN: all 6 kernels; "
            "BN and NBN, GN and NBN, LN and NBN: 1 of 6 kernels (into conv1). A same-seed CKA of such a pair can "
            "start above the baselines of independent seeds") in text
    assert "BN and NBN: 1 of 6 kernels (into conv1)." in captions.caption(figures.figure("fig_cka"), [cnn()])


def test_a_kernel_that_weight_standardisation_uses_is_not_shared_with_a_plain_convolution_s():
    """WS + GroupNorm's convolutions hold the bytes BatchNorm's hold at one seed, but standardise them in
    their forward pass: the caption said the pair started from all 6 kernels alike (its epoch-0 CKA at conv1
    was 0.16, under both seed baselines). The linear layers, used as they are, are shared."""
    from bnrep.initial import shared_initial_weights

    exp = get_experiment("digits-cnn")
    assert shared_initial_weights(exp, "batch", "ws+group") == (["classifier.0.weight", "classifier.3.weight"], 6)
    every = ["features.0.weight", "features.3.weight", "features.7.weight", "features.11.weight",
             "classifier.0.weight", "classifier.3.weight"]
    assert shared_initial_weights(exp, "batch", "ghost:8") == (every, 6)
    assert shared_initial_weights(exp, "batch", "renorm:100") == (every, 6)
    # the caption names every pair compared, one that shares nothing too (left out, it read as not checked)
    from types import SimpleNamespace

    from bnrep.initial import shared_start_text

    e = exp.override(conditions="batch; ws+group; none")
    cka = pd.DataFrame([dict(condition_a=a, condition_b=b, seed_a=0, seed_b=0)
                        for a, b in (("batch", "ws+group"), ("batch", "none"), ("ws+group", "none"))])
    r = SimpleNamespace(label="x", imported=False, experiment=e, table=lambda name: cka)
    assert ("them): BN and WSGN: 2 of 6 kernels (into fc1, the output); BN and NBN: 1 of 6 kernels (into conv1); WSGN "
            "and NBN: none. A same-seed") in shared_start_text([r])
    assert shared_start_text([r]).endswith(" A weight-standardised convolution standardises the kernel it holds, so "
                                           "its start differs from a plain convolution's holding the same initial "
                                           "kernel, and is not counted as shared.")  # (a reader counted 2 of 6 wrong)
    r.experiment = exp.override(conditions="batch; none")
    assert "weight-standardised" not in shared_start_text([r])


def test_a_kernel_is_named_by_the_layer_it_feeds():
    """The CKA caption named the shared kernels by module path (features.0), a name no table or figure uses:
    each is named by the probe its module's output reaches first (the layer the figures call conv1)."""
    from bnrep.initial import kernel_layers

    exp = get_experiment("digits-cnn")
    assert kernel_layers(exp, "batch") == {"features.0.weight": "conv1", "features.3.weight": "conv2",
                                           "features.7.weight": "conv3", "features.11.weight": "conv4",
                                           "classifier.0.weight": "fc1", "classifier.3.weight": "the output"}
    fed = kernel_layers(exp.with_model("torchvision:resnet18"), "batch")  # a shortcut's 1x1 convolution: the
    assert fed["layer2.0.downsample.0.weight"] == fed["layer2.0.conv2.weight"] == "layer2.0.relu:2"  # block's end
    assert (fed["conv1.weight"], fed["layer1.0.conv1.weight"], fed["fc.weight"]) == ("relu", "layer1.0.relu:1",
                                                                                      "the output")


def test_the_cka_caption_on_imported_models_and_where_the_model_is_not_here():
    r = cnn()
    r.tables["training"] = r.tables["training"].assign(imported=True)  # trained elsewhere: no word of their start
    assert "at the baseline, it does not. Gray dotted: " in captions.caption(figures.figure("fig_cka"), [r])
    assert "BN and NBN: 1 of 6 kernels (into conv1). A same-seed" in captions.caption(  # beside a study it trained
        figures.figure("fig_cka"), [r, cnn()])
    away = results.Results(get_experiment("digits-cnn").with_model("nosuch_pkg.mod:build"), cnn().tables)
    assert ("them): not checked here (cannot import nosuch_pkg.mod for model nosuch_pkg.mod:build "
            "(ModuleNotFoundError: No module named 'nosuch_pkg'); install it or put its folder on PYTHONPATH). "
            ) in captions.caption(figures.figure("fig_cka"), [away])


@pytest.mark.parametrize("n, batches", [(5000, "4 batches of 64 analysis samples"),
                                        (160, "3 batches of analysis samples (64, 64 and 32)"),
                                        (65, "1 batch of 64 analysis samples")])
def test_the_gradient_norm_caption_gives_the_batches_the_analysis_had(n, batches):
    """A smoke-sized analysis has 160 samples: the gradient norms average 3 batches (64, 64, 32), which the
    caption said were 4 batches of 64 (a last batch of one image has no batch statistics and is left out),
    then '3 batches (64, 64, 32) analysis samples'."""
    r = cnn()
    r.tables["samples"] = pd.DataFrame({"purpose": "cluster", "position": range(n), "index": range(n)})
    assert (f"averaged over the same {batches} for every model" in
            captions.caption(figures.figure("fig_gradient_norms"), [r]))


def test_the_provenance_counts_the_rows_of_the_snapshot_epochs_too():
    """A table with snapshots holds the final models' rows and as many per snapshot epoch: the provenance
    counted the final ones only."""
    final = cnn().tables["layer_sparsity"]
    early = [final.assign(epoch=e) for e in (0, 4)]
    r = findings.Results(cnn().experiment, {**cnn().tables, "layer_sparsity": pd.concat([final, *early])})
    (tables,) = [v for k, v in report.provenance_rows([r]) if k == "tables"]
    assert f"layer_sparsity ({len(final)} rows, {2 * len(final)} more at snapshot epochs 0, 4)" in tables
    assert f"class_dbi ({len(cnn().tables['class_dbi'])} rows)" in tables


def test_the_notes_on_figures_imported_models_cannot_have_do_not_ask_for_training(tmp_path, monkeypatch):
    """An imported study has no training history and no snapshots: the report told the researcher to run
    `bnrep final` (refused: no grid to train) and the analysis with --snapshots (refused: no training to take
    them from). A note's command names --out as an absolute path: a report is read from anywhere."""
    r = cnn()
    r.tables["training"] = r.tables["training"].assign(imported=True)
    r.tables["training_history"] = pd.DataFrame()
    said = {n: report.skipped_note(figures.figure(n), [r], "runs") for n in ("fig_learning_curves",
                                                                             "fig_initialisation")}
    assert said == {n: f"{figures.figure(n).title or n} not drawn: imported models (bnrep import) were trained "
                       f"elsewhere, without bnrep's record of it." for n in said}
    trained = cnn()
    trained.tables["training_history"] = pd.DataFrame()
    monkeypatch.chdir(tmp_path)
    assert report.skipped_note(figures.figure("fig_learning_curves"), [trained], report._shown("runs")).endswith(
        f"`bnrep final --experiment digits-cnn --out {tmp_path / 'runs'}` adds it).")


def test_captions_and_settings_name_the_first_shown_layer_as_the_axes_do():
    """A Sequential model's layers are named by position ('2', '6'): the captions and the Settings say the
    first layer Figures 4-6 show by that name, with its position (they said 'layer 1' beside axes of 2 and 6)."""
    from bnrep.results import first_shown_text
    from bnrep.settings import settings_rows

    tables = {k: t.assign(layer=(t["layer_index"] * 4 - 2).astype(str)) if "layer" in t else t
              for k, t in cnn().tables.items()}  # conv1..fc1 -> "2", "6", "10", "14", "18"
    r = findings.Results(get_experiment("digits-cnn"), tables)
    assert first_shown_text(r) == "2 (layer 1)"
    assert "(CNN Digits: from 2 (layer 1))" in captions.caption(figures.figure("fig_optimal_k"), [r])
    assert dict(settings_rows(r))["layers shown"].endswith("; Figures 4-6 from 2 (layer 1)")
    half = findings.Results(get_experiment("digits-cnn").override(first_shown_layer=0.5), tables)
    assert first_shown_text(half) == "10 (layer 3, 0.5 of the depth)"
    assert first_shown_text(findings.Results(get_experiment("digits-cnn"), {})) == "layer 1"  # no table yet


def test_a_finding_of_a_deep_model_is_cut_in_the_terminal_and_whole_in_the_report():
    """DenseNet-121's claim 1 listed 121 layers on one terminal line of 7,143 characters: the summary cuts a line
    at SUMMARY_LINE_MAX between words and says where the rest is."""
    from bnrep.findings import Finding

    layers = ", ".join(f"features.denseblock{i % 4 + 1}.denselayer{i}.relu1 +1.0 pp (p 0.01)" for i in range(121))
    f = Finding(1, "BatchNorm does not consistently induce nor prevent sparsity.", "supported", f"per layer: {layers}")
    text = report._summary("title", "", {"Findings": [f]}, [], "report.html")
    (line,) = [x for x in text.splitlines() if "per layer:" in x]
    (whole,) = [x for x in f.line().split("\n") if "per layer:" in x]
    assert len(whole) > 7000 and len(line) < report.SUMMARY_LINE_MAX + 100
    assert line.endswith(f" ... ({len(whole):,} characters: in full in report.md and findings.json)")
    assert whole.startswith(line.split(" ... (")[0])
