"""Where an experiment stands, stage by stage, read from the results store."""

from __future__ import annotations

from bnrep.experiments import ConfigError, Experiment, get_experiment
from bnrep.report import report_is_current  # no matplotlib: figures load only when a report is drawn
from bnrep.store import Store

ANALYSIS_PER_LAYER = ("class_dbi", "kmeans")
ANALYSIS_PER_MODEL = ("channel_sparsity", "layer_sparsity")


def resolved_experiment(store: Store, name: str) -> Experiment | None:
    """The configuration the results were made with (config.json), else the preset."""
    if store.exists("config.json"):
        return Experiment.from_dict(store.read_json("config.json")["experiment"])
    try:
        return get_experiment(name)
    except ConfigError:
        return None


def _state(done: int, total: int) -> str:
    return "complete" if total and done >= total else ("partial" if done else "missing")


def stage_status(out: str, name: str) -> list[tuple[str, str, str]]:
    """(stage, complete|partial|missing, detail) for hparam, final, analysis, report."""
    store = Store(out, name)
    exp = resolved_experiment(store, name)
    if exp is None or not store.exists():
        return [(s, "missing", "no results") for s in ("hparam", "final", "analysis", "report")]
    rows = []
    best = store.read_json("hparam/best_hparams.json") if store.exists("hparam/best_hparams.json") else {}
    done = sum(t in best and store.has_part("hparam_trials", t) for t in ("bn", "nobn"))
    resumable = [t for t in ("bn", "nobn") if t not in best and store.exists("hparam", "tune", t)]
    rows.append(("hparam", _state(done, 2), f"{done}/2 BatchNorm settings searched"
                 + (f"; interrupted search to resume: {', '.join(resumable)}" if resumable else "")))

    models = sorted(set(store.parts("training")))
    want = 2 * exp.seeds
    trained = [m for m in models if store.exists("train", "models", m, "model.pt")]
    rows.append(("final", _state(len(trained), want), f"{len(trained)}/{want} models trained"))

    n_layers = _n_layers(exp)
    parts = {t: set(store.parts(t)) for t in ANALYSIS_PER_MODEL + ANALYSIS_PER_LAYER}
    total = len(trained) * (len(ANALYSIS_PER_MODEL) + len(ANALYSIS_PER_LAYER) * n_layers)
    have = sum(any(p == m or p.startswith(m + "-") for m in trained) for t in parts for p in parts[t])
    rows.append(("analysis", _state(min(have, total), total), f"{have}/{total} Parquet parts"))

    if not store.exists("report", "report.md"):
        rows.append(("report", "missing", "no report yet"))
    else:
        current = report_is_current(out, name)
        rows.append(("report", "complete" if current else "partial",
                     f"{store.out}/{name}/report/report.html" + ("" if current else " (older than the results)")))
    return rows


def _n_layers(exp: Experiment) -> int:
    from bnrep.models import build_model

    channels = 3 if exp.dataset == "cifar10" else (exp.image_shape[0] if exp.dataset == "synthetic" else 1)
    return len(build_model(exp.arch, False, channels).probes())
