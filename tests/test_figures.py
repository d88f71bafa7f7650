"""Figures a reader can read: legends off the curves, tick labels apart, error bars within what was measured,
captions that say what is drawn and how it was measured (the report tests check the plotted values)."""

import numpy as np
import pandas as pd
import pytest

from bnrep import captions, figures, findings, results
from bnrep.experiments import get_experiment
from bnrep.findings import snapshot_measures
from bnrep.represent import snapshot_mode
from tests.report_fixtures import make_tables

SMALL = dict(channels=[3] * 5, k_range=range(2, 13), epochs=6)  # small and fast to draw
COLOURS = "BatchNorm (blue) and no BatchNorm (orange)"


def cnn(**kw) -> findings.Results:
    return results.Results(get_experiment("digits-cnn"), make_tables(**{**SMALL, **kw}))


def with_snapshots(r: findings.Results, table: str, epochs=(0, 1)) -> findings.Results:
    """`r` with its final rows of `table` repeated at the snapshot `epochs`."""
    final = r.tables[table]
    return findings.Results(r.experiment, {**r.tables, table: pd.concat([final, *(final.assign(epoch=e)
                                                                                   for e in epochs)])})


def caption(name: str, r: findings.Results) -> str:
    return captions.caption(figures.figure(name), [r])


# ==== captions ====

@pytest.mark.parametrize("name", ["fig_optimal_k", "fig_kmeans_dbi", "fig_learning_curves"])
def test_per_layer_and_learning_curve_captions_name_the_condition_colours(name):
    assert f"for {COLOURS} models" in caption(name, cnn())


# How each snapshot epoch is measured, as the code does it: the representations with batch statistics at epoch 0
# and running statistics after (bnrep.represent.snapshot_mode); gradient norms always with batch statistics;
# train- against eval-mode from epoch 1
EPOCH_0 = ("At epoch 0 (the initialisation) norms with running statistics normalise with batch statistics, at the "
           "condition's batch size, as the first step did; at every later snapshot and in the final model they run "
           "in eval mode, with the running statistics as they stood then, so the values of BatchNorm at early epochs "
           "reflect running statistics that have not converged yet.")
MEASURED = {"gradient_norms": "Every epoch is measured as a training step runs (norms with running statistics in "
                              "training mode on each analysis batch, whatever batch size the model trained with: "
                              "BatchNorm with the batch's own statistics, its running statistics not used); "
                              "nothing is updated.",
            "train_eval": "It starts at epoch 1 (at epoch 0 the running statistics are still 0 and 1: nothing to "
                          "compare): at each epoch, batch statistics against the running statistics as they stood "
                          "then, which have not converged yet at early epochs."}


@pytest.mark.parametrize("table", [m.table for m in snapshot_measures()])
def test_a_figure_against_epoch_says_how_each_epoch_is_measured(table):
    exp = get_experiment("digits-cnn")
    assert snapshot_mode(exp, "batch", 0) == {"batch_stats": True, "batch_size": exp.batch_size}
    assert snapshot_mode(exp, "batch", 1) == {}  # eval mode: the running statistics
    r = with_snapshots(cnn(), table, (1,) if table == "train_eval" else (0, 1))
    assert MEASURED.get(table, EPOCH_0) in caption(f"fig_{table}_epochs", r)


def test_a_sentence_on_batch_renorm_is_in_a_caption_only_where_batch_renorm_is_drawn():
    """The train- against eval-mode and gradient captions explained Batch Renorm in studies without it."""
    swap = {"condition": {"batch": "renorm:20"}, "norm": {"batch": "renorm:20"}}
    for table, sentence in (("train_eval", "Batch Renorm's train mode is corrected toward its running statistics, so "
                                           "it reaches 1 wherever its r and d are not clipped. Error bars"),
                            ("gradient_norms", "its running statistics not used; Batch Renorm with them, corrected "
                                               "toward its running statistics as they stood); nothing is updated.")):
        r = with_snapshots(cnn(), table, (1,))
        brn = findings.Results(r.experiment.override(norms="batch,renorm:20,none"),
                               {k: pd.concat([v, v[v["condition"] == "batch"].replace(swap)]) if "condition" in v else v
                                for k, v in r.tables.items()})
        name = f"fig_{table}_epochs" if table == "gradient_norms" else f"fig_{table}"
        plain, with_brn = caption(name, r), caption(name, brn)
        assert "Renorm" not in plain and "<<" not in plain and "  " not in plain, plain
        assert sentence in with_brn and "<<" not in with_brn, with_brn


def test_the_gradient_captions_say_ghost_batchnorm_normalises_in_its_virtual_batches():
    """Ghost BatchNorm's gradient norms are measured as it trains, each virtual batch of the analysis batch apart:
    its epoch-0 values differ from BatchNorm's (same weights), which the captions said were equal there."""
    swap = {"condition": {"batch": "ghost:8"}, "norm": {"batch": "ghost:8"}}
    r = with_snapshots(cnn(), "gradient_norms", (0, 1))
    ghost = findings.Results(r.experiment.override(norms="batch,ghost:8,none"),
                             {k: pd.concat([v, v[v["condition"] == "batch"].replace(swap)]) if "condition" in v else v
                              for k, v in r.tables.items()})
    for name, sentence in (("fig_gradient_norms", "ghost BatchNorm: each virtual batch's, so its statistics are of "
                                                  "fewer samples than BatchNorm's here"),
                           ("fig_gradient_norms_epochs", "; ghost BatchNorm with each of its virtual batches'")):
        assert sentence in caption(name, ghost) and "ghost" not in caption(name, r).lower(), name


def test_a_figure_against_epoch_labels_its_y_axis_once_per_row_in_lines_that_fit():
    """'linear probe accuracy (cross-validated)' on every panel ran into the next panel and under the title."""
    fig = figures.figure("fig_linear_probe_epochs").make(with_snapshots(cnn(), "linear_probe", (0, 1)))
    labels = [ax.get_ylabel() for ax in fig.axes if ax.axison]
    assert labels[0] == "linear probe accuracy\n(cross-validated)" and not any(labels[1:]), labels


def test_a_figure_against_epoch_names_the_conditions_with_running_statistics_and_no_others():
    """It said 'BatchNorm's values ... have not converged yet' in a study of GroupNorm and no norm."""
    r = with_snapshots(cnn(), "nc1", (0, 1))
    swap = {"condition": {"batch": "group"}, "norm": {"batch": "group"}, "bn": {True: False}}
    gn = findings.Results(r.experiment.override(norms="group,none"), {k: v.replace(swap) for k, v in r.tables.items()})
    said = caption("fig_nc1_epochs", gn)
    assert "No condition here keeps running statistics: every epoch is measured as training normalised" in said
    assert "BatchNorm" not in said and "running statistics that have not converged" not in said
    mixed = {"condition": {"batch": "ghost:8"}, "norm": {"batch": "ghost:8"}}
    r8 = findings.Results(r.experiment.override(norms="ghost:8,none"), {k: v.replace(mixed) for k, v in r.tables.items()})
    assert ("so the values of ghost BatchNorm (8 per virtual batch) at early epochs reflect running statistics that "
            "have not converged yet (ghost BatchNorm's, updated once per virtual batch, converge sooner).") in caption(
        "fig_nc1_epochs", r8)


def test_a_nan_note_names_no_norm_as_the_study_does():
    """A study of ghost BatchNorm and no norm: the train- against eval-mode caption said '... of no BatchNorm' (the
    paper pair's word, judged from the NaN rows' conditions alone) where every other place says 'no norm'."""
    r = cnn()
    ghost = {"condition": {"batch": "ghost:8"}, "norm": {"batch": "ghost:8"}}
    r8 = findings.Results(r.experiment.override(norms="ghost:8,none"), {k: v.replace(ghost) for k, v in r.tables.items()})
    said = caption("fig_train_eval", r8)
    assert "of no norm: without running statistics" in said and "no BatchNorm" not in said
    assert "of no BatchNorm: without running statistics" in caption("fig_train_eval", r)  # the paper's pair


def test_the_snapshots_cka_has_its_own_figure_whose_caption_says_how_the_snapshots_ran():
    """The CKA caption said where the snapshots' CKA was, that no figure drew; fig_cka_epochs draws it, and says
    how each epoch's models ran and which kernels a pair shares at one seed."""
    r = with_snapshots(cnn(), "cka", (0, 1, 2))
    assert "snapshot" not in caption("fig_cka", r)
    said = caption("fig_cka_epochs", r)
    assert EPOCH_0 in said and "BN and NBN: 1 of 6 kernels (into conv1)." in said, said
    assert said.endswith("Mean over the pairs (4 seeds), error bars: standard deviation over the pairs, cut at 0 and 1.")


def test_the_cka_through_training_legend_has_one_entry_per_line_kind_not_one_per_pair():
    """A row per pair of conditions, its title naming the pair: the legend listed every pair's same-seed line,
    all of them black squares."""
    r = with_snapshots(cnn(norms=("batch", "group", "none")), "cka", (0, 1))
    fig = figures.fig_cka_epochs(r)
    assert len(fig.axes) >= 3 and [t.get_text() for t in fig.legends[0].get_texts()] == [
        "the row's two conditions, same seed", "BN seed vs seed", "GN seed vs seed", "NBN seed vs seed"]


@pytest.mark.parametrize("label,lines", [
    ("CKA (train mode, eval mode)", "CKA\n(train mode, eval mode)"),  # was "CKA(train mode, eval" / "mode)"
    ("NC1 (lower = more collapsed)", "NC1\n(lower = more collapsed)"),
    ("linear probe accuracy (cross-validated)", "linear probe accuracy\n(cross-validated)"),
    ("k-means DBI (optimal k)", "k-means DBI (optimal k)"),  # fits one line
    ("a long label with no parenthesis in it", "a long label with no\nparenthesis in it"),
])
def test_a_y_label_breaks_before_its_parenthesis_not_inside_it(label, lines):
    from bnrep.plotting import ylabel_lines
    assert ylabel_lines(label) == lines


def test_conditions_of_one_family_of_hues_differ_in_marker_too():
    """BatchNorm, BatchNorm at batch size 16 and ghost BatchNorm wear three blues that a reader could not tell
    apart, all with circles; now each its own marker, the same in every figure; other families keep circles."""
    from matplotlib.figure import Figure

    from bnrep.axis import register_all
    from bnrep.plotting import condition_lines, condition_markers
    register_all(["bn-b16:batch,batch_size=16"])
    names = ["none", "ghost:16", "bn-b16", "batch", "group", "group:8", "renorm:4", "layer"]
    assert condition_markers(names) == {"batch": "o", "bn-b16": "s", "ghost:16": "^", "renorm:4": "o", "group": "o",
                                        "group:8": "s", "layer": "o", "none": "o"}
    assert set(condition_markers(["batch", "none"]).values()) == {"o"}  # the paper's pair as before
    df = pd.DataFrame([dict(condition=c, model_id=f"{c}{s}", seed=s, layer="l1", layer_index=1, v=float(s))
                       for c in ("batch", "bn-b16", "ghost:16", "none") for s in (0, 1)])
    ax = Figure().add_subplot()
    condition_lines(ax, df, "v", results.norm_labels(names))
    assert [ln.get_marker() for ln in ax.get_lines()] == ["o", "s", "^", "o"]


# ==== learning curves ====

def test_the_learning_curves_legend_is_below_the_panels_and_the_caption_says_what_train_running_is():
    r = cnn()
    h = r.tables["training_history"]
    r = findings.Results(r.experiment, {**r.tables, "training_history": h.assign(train_acc_running=h["train_acc"])})
    for res, train in ((r, "train (running)"), (cnn(), "train")):  # (results before 0.2.0: a full pass each epoch)
        fig = figures.fig_learning_curves(res)
        assert [ax.get_legend() for ax in fig.axes] == [None, None]  # (inside, it hid the curves)
        assert [t.get_text() for t in fig.legends[0].get_texts()] == [
            "BatchNorm (4 seeds)", "no BatchNorm (4 seeds)", train, "validation"]
    text = caption("fig_learning_curves", cnn())
    assert ("Solid, train (running): the fraction of each epoch's own training batches classified correctly as they "
            "trained (train mode, each batch before its optimiser step") in text
    assert ("Table 1's training accuracy is a full pass over the training split in eval mode after training, so for "
            "norms with running statistics (here BatchNorm) it can differ from the last running value, by much where "
            "those statistics lag the weights.") in text
    # the conditions of the study drawn, not BatchNorm always
    assert captions.running_text(["none", "ghost:16", "group", "batch"]) == \
        " (here BatchNorm and ghost BatchNorm (16 per virtual batch))"
    assert captions.running_text(["none", "as-built"]) == " (here as built models, where their own norms keep them)"
    assert "norms with running statistics (none here) it" in caption("fig_learning_curves",
                                                                      cnn(norms=("group", "none")))


# ==== optimal k ====

def bars(ax) -> dict[str, tuple[list, list, list, list]]:
    """label -> (x, y, bottom, top of each error bar) of the error-bar series on an axes."""
    out = {}
    for c in ax.containers:
        line, _, (segments,) = c.lines
        ends = [(seg[0][1], seg[1][1]) for seg in segments.get_segments()]
        out[c.get_label()] = (list(line.get_xdata()), list(line.get_ydata()), [min(e) for e in ends],
                              [max(e) for e in ends])
    return out


def test_optimal_k_error_bars_stay_within_the_k_searched_and_equal_values_stay_apart():
    """A sweep of k = 2..6 where half the seeds find 2 clusters and half 6, in both conditions alike: mean 4, std
    2.31, whose bars ran past 2 and 6 (no seed's k lies there), and one condition's line hid the other's."""
    r = cnn()
    km = r.tables["kmeans"].query("k <= 6")
    km = km.assign(optimal=km["k"] == km["seed"].map(lambda s: 2 if s % 2 else 6))
    (ax,) = figures.fig_optimal_k(findings.Results(r.experiment, {**r.tables, "kmeans": km})).axes
    (xb, yb, bottom_b, top_b), (xn, yn, bottom_n, top_n) = bars(ax)["BatchNorm"], bars(ax)["no BatchNorm"]
    assert yb == yn == [4.0] * 5 and 4 + pd.Series([2, 6, 2, 6]).std() > 6
    assert bottom_b == bottom_n == [2.0] * 5 and top_b == top_n == [6.0] * 5  # cut at the k searched
    off = [x - li for x, li in zip(xb, range(1, 6))]
    assert off[0] < 0 and off == pytest.approx([off[0]] * 5)  # side by side, about the layer
    assert [x - li for x, li in zip(xn, range(1, 6))] == pytest.approx([-off[0]] * 5)
    # seeds that disagree a little (k_jitter): each bar the std both ways, cut only at 2 and 12
    r = cnn(k_jitter=1)
    (ax,) = figures.fig_optimal_k(r).axes
    for label, norm in (("BatchNorm", "batch"), ("no BatchNorm", "none")):
        x, y, bottom, top = bars(ax)[label]
        k = r.tables["kmeans"].query("optimal and norm == @norm").groupby("layer_index")["k"]
        assert y == pytest.approx(k.mean().tolist())
        assert bottom == pytest.approx([max(m - s, 2) for m, s in zip(k.mean(), k.std())])
        assert top == pytest.approx([min(m + s, 12) for m, s in zip(k.mean(), k.std())])
    assert bars(ax)["BatchNorm"][2][0] == 2 and k.std().max() > 0  # (BN's conv1, 2.25 +- 0.5: cut)


# ==== log axes ====

def y_labels(ax) -> list:
    """The window extents of the y tick labels drawn on `ax` (powers of ten and the ticks between), bottom up."""
    box = ax.get_window_extent()
    drawn = [t for t in ax.yaxis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]
    extents = [t.get_window_extent() for t in drawn]
    return sorted((e for e in extents if box.y0 - 1 <= (e.y0 + e.y1) / 2 <= box.y1 + 1), key=lambda e: e.y0)


def gradient_norms_at(batch: float, none: float) -> findings.Results:
    """cnn() with every gradient norm of BatchNorm `batch` and of no BatchNorm `none`, at epochs 0, 1 and final."""
    r = cnn()
    g = r.tables["gradient_norms"]
    g = g.assign(gradient_norm=g["condition"].map({"batch": batch, "none": none}))
    return with_snapshots(findings.Results(r.experiment, {**r.tables, "gradient_norms": g}), "gradient_norms", (0, 1))


@pytest.mark.parametrize("name,batch,none", [
    ("two decades, a short panel", 0.3, 0.003),  # 4e-3 ran into 3e-3 (fig_gradient_norms_epochs)
    ("within a decade", 0.8, 0.3),  # 10^0 alone, or no label at all, would not say where the values sit
])
def test_log_axis_labels_between_powers_of_ten_only_where_they_do_not_collide(name, batch, none):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    r = gradient_norms_at(batch, none)
    for fig in (figures.figure("fig_gradient_norms_epochs").make(r), figures.figure("fig_gradient_norms").make(r)):
        FigureCanvasAgg(fig).draw()
        for ax in [a for a in fig.axes if a.get_yscale() == "log"]:
            labels = y_labels(ax)
            assert all(a.y1 <= b.y0 for a, b in zip(labels, labels[1:])), name  # none overlaps the next
            assert len(labels) >= 2, name  # (labelled between the powers of ten where those are few)


# ==== channel sparsity ====

def test_channel_sparsity_ticks_only_channels_that_exist():
    """conv3's 64 channels (0-63) had a tick at 64, past the last one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figures.fig_channel_sparsity(cnn(channels=[16, 32, 64, 128, 100]))
    FigureCanvasAgg(fig).draw()
    for ax, n in zip([a for a in fig.axes if a.axison], (16, 32, 64, 128)):  # digits-cnn's channel layers 1-4
        lo, hi = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert len(shown) > 2 and all(t == int(t) and 0 <= t <= n - 1 for t in shown), (n, shown)
        assert (lo, hi) == (0, n - 1)


def test_a_log_axis_caption_says_where_a_bar_below_zero_goes():
    """On a log axis a bar whose mean - std is 0 or below runs to the panel's edge, which read as a huge
    uncertainty (ghost BN's conv1 signal propagation): every figure with a log y axis says so, the linear
    ones do not."""
    logged = {f.name for f in figures.FIGURES if "a bar whose mean - std is 0 or below runs to the panel's lower edge"
              in f.caption}
    assert logged == {"fig_nc1", "fig_gradient_norms", "fig_signal_propagation", "fig_nc1_epochs",
                      "fig_signal_propagation_epochs", "fig_gradient_norms_epochs", "fig_initialisation"}


def test_signal_propagation_has_a_legend_entry_per_condition_and_one_per_line_style():
    """Its legend listed every condition twice (', pre-activation' and ', output'): ten long entries wider than
    the figure's single column of panels. A colour per condition, then what the solid and dashed lines are."""
    r = cnn()
    fig = figures.fig_signal_propagation(findings.Results(r.experiment.override(norms="batch,group,none"),
                                                          make_tables(norms=("batch", "group", "none"))))
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["BatchNorm", "GroupNorm", "no norm", "pre-activation",
                                                         "output"]
    styles = legend.legend_handles[-2:]
    assert [(h.get_linestyle(), h.get_marker()) for h in styles] == [("-", "o"), ("--", "x")]


def test_a_legend_entry_of_a_label_in_parentheses_takes_the_seeds_inside_them():
    """'ghost BatchNorm (8 per virtual batch) (2 seeds)' in the learning curves' and channel sparsity's legends."""
    e = cnn().experiment.override(norms="ghost:8,none")  # (ghost:8 known from here on)
    ghost = {"condition": {"batch": "ghost:8"}, "norm": {"batch": "ghost:8"}}
    t = {k: v.replace(ghost) for k, v in make_tables().items()}
    fig = figures.fig_learning_curves(findings.Results(e, t))
    assert "ghost BatchNorm (8 per virtual batch; 4 seeds)" in [x.get_text() for x in fig.legends[0].get_texts()]


def test_a_condition_that_trained_one_epoch_is_a_point_in_the_learning_curves():
    """BatchNorm models that interpolated after epoch 1: a line through one point is not drawn, so its legend
    entry had nothing in the panels; the point now has a marker (o train, x validation), the others none."""
    r = cnn()
    h = r.tables["training_history"]
    r.tables["training_history"] = h[(h["condition"] != "batch") | (h["epoch"] == 1)]
    loss, acc = figures.fig_learning_curves(r).axes
    one = h[(h["condition"] == "batch") & (h["epoch"] == 1)]
    points = {(ax, l.get_marker()): (list(l.get_xdata()), list(l.get_ydata()))
              for ax in (loss, acc) for l in ax.lines if l.get_linestyle() == "None"}
    assert points == {(loss, "o"): ([1], [pytest.approx(one["train_loss"].mean())]),
                      (acc, "o"): ([1], [pytest.approx(100 * one["train_acc"].mean())]),
                      (acc, "x"): ([1], [pytest.approx(100 * one["val_acc"].mean())])}


def test_sparsity_error_bars_and_shading_stay_within_0_and_1():
    """A fraction of zeros: a layer 96% zero in one seed and 44% in the other drew a bar to 1.07, and channel
    sparsity's shading went above 1 (ResNet-18's no-norm s4b2.relu1)."""
    r = cnn()
    ls = r.tables["layer_sparsity"]
    last = ls["layer_index"] == ls["layer_index"].max()
    ls = ls.assign(sparsity=ls["sparsity"].where(~last, np.where(ls["seed"] % 2, 0.98, 0.5)))
    cs = r.tables["channel_sparsity"]
    cs = cs.assign(sparsity=np.where(cs["seed"] % 2, 0.99, 0.2))
    r = findings.Results(r.experiment, {**r.tables, "layer_sparsity": ls, "channel_sparsity": cs})
    (ax,) = figures.fig_layer_sparsity(r).axes
    tops = [seg[:, 1].max() for c in ax.containers for col in c.lines[2] for seg in col.get_segments()]
    assert max(tops) == pytest.approx(1.0) and min(
        seg[:, 1].min() for c in ax.containers for col in c.lines[2] for seg in col.get_segments()) >= 0
    for ax in figures.fig_channel_sparsity(r).axes:
        for band in ax.collections:
            ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
            assert ys.max() <= 1.0 + 1e-12 and ys.min() >= -1e-12


def test_a_bounded_measure_s_bars_stop_at_its_bounds_through_training_and_at_initialisation_too():
    """The linear probe's accuracy (bounds 0 and 1): cut in its per-layer figure only, its bars ran past 1 in the
    figures against epoch and at initialisation."""
    r = cnn()
    lp = r.tables["linear_probe"]
    lp = lp.assign(accuracy=np.where(lp["seed"] % 2, 1.0, 0.6))  # every layer: 0.8 +- 0.23
    r = with_snapshots(findings.Results(r.experiment, {**r.tables, "linear_probe": lp}), "linear_probe", (0, 1))

    def tops(fig):
        return [seg[:, 1].max() for ax in fig.axes for c in ax.containers for col in c.lines[2]
                for seg in col.get_segments()]

    for fig in (figures.figure("fig_linear_probe_epochs").make(r), figures.fig_initialisation(r)):
        assert tops(fig) and max(tops(fig)) == pytest.approx(1.0)


def test_cka_error_bars_stop_at_the_values_cka_can_take():
    """Two pairs at 0.05 and 0.95 (0.5 +- 0.64): the bars ran below 0 and above 1; the debiased CKA's, at -0.95 and
    0.95, stop at -1 and 1."""
    r = cnn()
    ck = r.tables["cka"]
    odd = (ck["seed_a"] % 2).to_numpy()
    ck = ck.assign(cka=np.where(odd, 0.95, 0.05), cka_debiased=np.where(odd, 0.95, -0.95))
    fig = figures.fig_cka(findings.Results(r.experiment, {**r.tables, "cka": ck}))
    ends = {}
    for ax in fig.axes:
        for c in ax.containers:
            ys = np.concatenate([seg[:, 1] for col in c.lines[2] for seg in col.get_segments()])
            ends.setdefault(c.get_label(), []).extend([ys.min(), ys.max()])
    cross = next(k for k in ends if k.endswith("same seed"))
    assert min(ends[cross]) == pytest.approx(0.0) and max(ends[cross]) == pytest.approx(1.0)
    assert min(ends["the same, debiased"]) == pytest.approx(-1.0) and max(ends["the same, debiased"]) == pytest.approx(1.0)
    # a CKA a rounding past 1 (linear_cka(X, 3X) = 1.0000000000000002): matplotlib refused the negative bar
    at_one = findings.Results(r.experiment, {**r.tables, "cka": ck.assign(cka=1.0 + 2e-16, cka_debiased=1.0 + 4e-16)})
    assert figures.fig_cka(at_one) is not None


def test_a_bounded_measure_s_conditions_sit_apart_so_that_equal_values_stay_visible():
    """Every probe at accuracy 1.0: the no-BN line lay on the BN line at every layer, which vanished; they sit
    side by side now (as the optimal k's), and the caption says so."""
    r = cnn()
    r.tables["linear_probe"] = r.tables["linear_probe"].assign(accuracy=1.0)
    (ax,) = figures.figure("fig_linear_probe").make(r).axes
    xs = [list(c.lines[0].get_xdata()) for c in ax.containers]
    assert len(xs) == 2 and all(b - a == pytest.approx(figures.DODGE) for a, b in zip(*xs))
    assert figures.SIDE_BY_SIDE in figures.figure("fig_linear_probe").caption
    assert figures.SIDE_BY_SIDE not in figures.figure("fig_nc1").caption  # unbounded: no pile-up at a bound


def test_the_initialisation_figure_has_a_legend_entry_per_condition_and_one_per_line_style():
    """Its legend listed every condition twice (', final' and ', init'); the final and the initialisation are
    the line styles, said once."""
    fig = figures.figure("fig_initialisation").make(with_snapshots(cnn(), "layer_sparsity", (0,)))
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["BatchNorm", "no BatchNorm", "final epoch",
                                                         "initialisation (epoch 0)"]
