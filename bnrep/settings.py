"""The report's Settings table: what the study was run with, as its results say it (the experiment, each
condition's recipe where conditions change it, the models trained or imported, the stage hashes)."""

from __future__ import annotations

import os

import pandas as pd

from bnrep.axis import axis_word, overrides_of
from bnrep.config import trained_with_preset_hparams
from bnrep.experiments import PRESETS, at_smoke_sizes
from bnrep.findings import _names  # "a, b" or "none", as the findings write lists
from bnrep.initial import groups_text
from bnrep.results import (SHORT, Results, and_list, first_shown_text, imported_mask, is_paper_pair, label_and_tag,
                           norm_labels, ordered)

AUTO_TEXT = "layers at a quarter, half, three quarters and all of the depth"  # channel_layers=()
IMPORTED = "not known for imported models (bnrep import: trained elsewhere)"


def _n_samples(r: Results, purpose: str, asked: int) -> str:
    """How many images the analysis used (results/samples), next to what the preset asked."""
    s = r.table("samples")
    used = int((s["purpose"] == purpose).sum()) if len(s) else None
    return str(asked) if used in (None, asked) else f"{used} (of {asked} asked: all the split holds)"


def class_text(r: Results) -> str:
    """'3 (ash, beech, oak)'; index names (0, 1, ...) only as a count."""
    names, n = r.classes, r.n_classes
    if not n:
        return "unknown (the data's classes were not recorded)"
    if not names or list(names) == [str(i) for i in range(len(names))]:
        return str(n)
    shown = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
    return f"{n} ({shown})"


def _field(r: Results, field: str, fmt: str = "{}") -> str:
    """A training field as the settings say it: the experiment's, or each condition's where a condition
    changes it ("batch (bn-b4 4, bn-b16 16)": no model trained at the experiment's own)."""
    values = {n: overrides_of(n).get(field, getattr(r.experiment, field)) for n in r.norms}
    if len(set(values.values())) <= 1:
        return fmt.format(getattr(r.experiment, field) if not values else next(iter(values.values())))
    return "(" + ", ".join(f"{SHORT.get(n, n)} {fmt.format(v)}" for n, v in values.items()) + ")"


def settings_rows(r: Results) -> list[list[str]]:
    e, t = r.experiment, r.table("training")
    setting = "BN setting" if is_paper_pair(r.norms) else {"norm": "normalisation"}.get(axis_word(r.norms), "condition")
    sizes = " at --smoke-test sizes" if at_smoke_sizes(e) else ""
    preset = PRESETS.get(e.name)
    own = (f"; this study's conditions, not the preset's {and_list(SHORT.get(n, n) for n in preset.norms)}"
           if preset is not None and set(preset.norms) != set(e.norms) else "")  # (in any order)
    rows = [["experiment", (f"{e.name} ({e.description}{own})" if e.description else e.name + own) + sizes],
            ["dataset / model", f"{e.dataset}{f' at {e.image_size} px' if e.image_size else ''} / {e.model}"],
            ["classes", class_text(r)],
            [{"norm": "normalisations"}.get(axis_word(r.norms), "conditions"),
             ", ".join(label_and_tag(norm_labels(r.norms)[n], SHORT[n]) for n in r.norms)],
            *([["GroupNorm groups", groups]] if (groups := groups_text(r)) else []),
            *([["training", IMPORTED]] if r.imported else [
                ["optimiser", f"{_field(r, 'optimizer')}, lr decay x{_field(r, 'lr_gamma', '{:g}')} every "
                              f"{_field(r, 'lr_step_epochs')} epochs, batch {_field(r, 'batch_size')}; lr and "
                              f"momentum per {setting}: "
                              + ("the preset's (--paper-hparams)" if trained_with_preset_hparams(e, t) else
                                 "the sweep's best") + " (rows 'trained' below)"],
                ["stopping", f"{_field(r, 'stop')}, at most {_field(r, 'max_epochs')} epochs"],
                ["seeds", f"{e.seeds} per {setting}"]]),
            ["analysis", f"{_n_samples(r, 'sparsity', e.samples_sparsity)} training images for sparsity, "
                         f"{_n_samples(r, 'cluster', e.samples_cluster)} for clustering, "
                         f"k = {e.k_min}..{e.k_max}, zero threshold eps = {_names(f'{x:g}' for x in e.eps)}"],
            ["layers shown", f"channel sparsity: {_names(e.channel_layers) if e.channel_layers else AUTO_TEXT}; "
                             f"Figures 4-6 from {first_shown_text(r)}"]]
    # The stage hashes of config.json: the config_hash each Parquet part carries.
    rows += [[f"{stage} hash", r.config.get(f"{stage}_hash") or "unknown (no config.json)"]
             for stage in ("train", "analysis")]
    imported = imported_mask(t) if len(t) else pd.Series(dtype=bool)
    for n in ordered(t.loc[imported, "condition"]) if len(t) else []:
        g = t[(t["condition"] == n) & imported]
        rows.append([f"imported ({SHORT[n]})", f"{len(g)} model{'s' * (len(g) != 1)}, seeds {_names(sorted(g['seed']))}, weights "
                     + _names(os.path.basename(w) for w in g["weights"])])
    for n in ordered(t.loc[~imported, "condition"]) if len(t) else []:
        g = t[(t["condition"] == n) & ~imported]
        ep = sorted({g["epochs"].min(), g["epochs"].max()})
        lr, mom = (_names(f"{x:.3g}" for x in sorted(g[c].unique())) for c in ("lr", "momentum"))  # 3 digits
        own = "".join(f"{k.replace('_', ' ')} {v}, " for k, v in sorted(e.condition(n)[1].items())
                      if k not in ("lr", "momentum"))  # its recipe's; lr and momentum: the models' own, next
        rows.append([f"trained ({SHORT[n]})", f"{len(g)} models, {own}lr {lr}, momentum {mom}, "
                     f"epochs {'-'.join(map(str, ep))}, interpolated {int(g['interpolated'].sum())}/{len(g)}"])
    return rows
