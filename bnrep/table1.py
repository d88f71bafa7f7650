"""The paper's Table 1: accuracies per (experiment, normalisation), mean and std over seeds, as a
frame, Markdown/HTML rows, LaTeX and its caption, and the diverged models named beside it."""

from __future__ import annotations

import pandas as pd

from bnrep.axis import axis_word  # a condition's short name is its tag
from bnrep.norms import sort_key
from bnrep.results import (SHORT, distinct_labels, fmt_pm, imported_mask, is_paper_pair, label_and_tag, model_label,
                           norm_labels, ordered)


def diverged_note(training: pd.DataFrame) -> str:
    """'Diverged (training loss NaN or inf): 2 of 4 NBN models (epochs 3, 5)...' or '' (none, or older tables)."""
    if "diverged" not in training or not training["diverged"].fillna(False).astype(bool).any():
        return ""
    d = training[training["diverged"].fillna(False).astype(bool)]
    per = "; ".join(f"{len(g)} of {(training['condition'] == n).sum()} {SHORT.get(n, n)} models (epoch "
                    f"{', '.join(str(int(e)) for e in sorted(g['diverged_epoch']))})"
                    for n, g in d.groupby("condition", sort=False))
    return (f"Diverged (training loss NaN or inf, training stopped): {per}. Their rows are kept as evidence; "
            f"their accuracies are those of the diverged weights, which are not analysed: every measure of "
            f"them is NaN with the epoch it diverged.")


def imported_note(training: pd.DataFrame) -> str:
    """'Imported (bnrep import): 2 BN models, 1 NBN model, ...' or '' (none imported)."""
    t = training[imported_mask(training)]
    if t.empty:
        return ""
    per = ", ".join(f"{len(g)} {SHORT.get(n, n)} model{'s' * (len(g) != 1)}" for n, g in t.groupby("condition", sort=False))
    return (f"Imported (bnrep import; trained elsewhere, evaluated here on the same splits): {per}. Their "
            f"training history, stopping rule and sweep are not known. Their validation split is bnrep's: unless "
            f"the data has one of its own (an image folder's val/), a seeded hold-out of the training split, "
            f"which they may have trained on.")


def table1(training: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 1: accuracies in percent, mean and std over seeds, per (experiment, condition); `bn` is
    the paper's column (its short name: BN, NBN, bn-b8), `condition` and `norm` as in every table."""
    t = training.assign(**{c: training[c] * 100 for c in ("train_acc", "val_acc", "test_acc")})
    order = list(dict.fromkeys(t["experiment"]))
    rows = []
    for (exp, norm), g in t.groupby(["experiment", "condition"], sort=False):
        row = {"experiment": exp, "model": model_label(g["arch"].iloc[0], g["dataset"].iloc[0]),
               "bn": SHORT.get(norm, norm), "condition": norm, "norm": g["norm"].iloc[0] if "norm" in g else norm,
               "_n": sort_key(norm), "seeds": g["seed"].nunique(),
               "interpolated": int(g["interpolated"].sum())}
        for c in ("train_acc", "val_acc", "test_acc"):
            row[f"{c}_mean"], row[f"{c}_std"] = g[c].mean(), g[c].std()
        rows.append(row)
    df = pd.DataFrame(rows)
    df["model"] = df["experiment"].map(distinct_labels(dict(zip(df["experiment"], df["model"]))))
    df["_o"] = df["experiment"].map(order.index)  # experiments as given; norms in display order (_n)
    return df.sort_values(["_o", "_n"], ignore_index=True).drop(columns=["_o", "_n"])


ACC_COLS = [("train_acc", "Training acc (%)"), ("val_acc", "Validation acc (%)"),
            ("test_acc", "Evaluation (test) acc (%)")]


def table1_rows(t: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    paper = set(t["bn"]) <= {"BN", "NBN"}
    header = ["Model", "BN" if paper else axis_word(t["bn"]).capitalize(), "Seeds"] + [h for _, h in ACC_COLS]
    rows = [[r.model, r.bn, str(r.seeds)] + [fmt_pm(getattr(r, f"{c}_mean"), getattr(r, f"{c}_std"))
                                              for c, _ in ACC_COLS] for r in t.itertuples()]
    return header, rows


TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
       "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}  # LaTeX text mode


def tex_text(s: str) -> str:
    """`s` as LaTeX text: its special characters escaped (a condition tag bn_b16, a study my_study)."""
    return "".join(TEX.get(ch, ch) for ch in s)


def table1_tex(t: pd.DataFrame) -> str:
    header, rows = table1_rows(t)
    lines = [r"\begin{tabular}{llr" + "c" * len(ACC_COLS) + "}", r"\hline",
             " & ".join(map(tex_text, header)) + r" \\", r"\hline"]
    lines += [" & ".join(map(tex_text, r)) + r" \\" for r in rows]
    return "\n".join(lines + [r"\hline", r"\end{tabular}"]) + "\n"


def table1_caption(norms) -> str:
    tags = ", ".join(label_and_tag(norm_labels(norms)[n], SHORT[n]) for n in ordered(norms))
    if is_paper_pair(norms):
        tags = "BatchNorm (BN) and no-BatchNorm (NBN)"
    return (f"Train, validation and evaluation (test) accuracy in percent for the {tags} models; "
            f"± is the standard deviation across seeds.")
