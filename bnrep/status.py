"""Where an experiment stands, stage by stage, read from the results store.

No Ray, no torch training, no matplotlib: `bnrep status` answers in a second.
"""

from __future__ import annotations

from bnrep.config import is_imported, load_experiment, read_hashes, trained_with_preset_hparams
from bnrep.experiments import ConfigError, Experiment
from bnrep.store import GRID, GRID_PLAN, SWEEP, SWEEP_PLAN, Store, tables


def _state(done: int, total: int) -> str:
    return "complete" if total and done >= total else ("partial" if done else "missing")


def stage_status(out: str, name: str, study: Experiment | None = None) -> list[tuple[str, str, str]]:
    """(stage, complete|partial|missing, detail) for hparam, final, analysis, report; `study`: the experiment
    of a study file (`name` is its name), for a study with no results yet."""
    store = Store(out, name)
    if store.is_file():  # (a run says the same and refuses it)
        return [(s, "unknown", f"{store.display()} is a file, not a study's folder")
                for s in ("hparam", "final", "analysis", "report")]
    try:
        exp = load_experiment(store, name)
    except ConfigError as e:
        if study is None:
            return [(s, "unknown", str(e)) for s in ("hparam", "final", "analysis", "report")]
        exp = study
    if not store.exists():
        return [(s, "missing", "no results") for s in ("hparam", "final", "analysis", "report")]
    writer, data = _writer(store), _data(store, exp)
    if is_imported(store):
        return [*data, *_imported_and_analysis(store, exp), _report(store), writer]
    running = writer[1] == "running"
    return [*data, _hparam(store, exp, running), *_final_and_analysis(store, exp, running), _report(store), writer]


def sizes_note(out: str, name: str) -> str:
    """What the status' heading says of the study's sizes: at --smoke-test sizes; or, for results with no
    config.json yet (a run stopped in its first seconds), that the counts are the experiment's as named,
    which the run's flags may have changed; else nothing."""
    from bnrep.config import read_config
    from bnrep.experiments import at_smoke_sizes, smoke_sizes_text

    store = Store(out, name)
    try:
        if not store.exists() or store.is_file():
            return ""
        if not read_config(store):
            return (f"  (no config.json yet: the run stopped before it wrote it; the counts are {name}'s as named, "
                    f"without that run's flags such as --smoke-test or --seeds)")
        exp = load_experiment(store, name)
    except (ConfigError, OSError):  # (the rows say it)
        return ""
    return f"  (at --smoke-test sizes: {smoke_sizes_text(exp)})" if at_smoke_sizes(exp) else ""


def _data(store: Store, exp: Experiment) -> list[tuple[str, str, str]]:
    """A row when the study's image folder is not what its results were made from (a run refuses it)."""
    from bnrep.config import folder_changed, read_config
    from bnrep.datasets import parse_dataset

    changed = folder_changed(read_config(store), exp)
    return [("data", "changed", f"the image folder {parse_dataset(exp.dataset)[1]} changed since the results were "
             f"made ({changed}): a run refuses it; restore it, or --fresh to start over")] if changed else []


def unfinished(out: str, name: str) -> list[str]:
    """The report's notes on the stages that stopped part-way (partial): it covers what they have done."""
    return [f"{name}: the {stage} stage is {'not finished' if state == 'partial' else 'perhaps not finished'} "
            f"({detail}): this report covers what it has done; run the stage again with the flags it was started "
            f"with (or `bnrep run` with them) to finish it."
            for stage, state, detail in stage_status(out, name)
            if state in ("partial", "unknown") and stage in ("final", "import", "analysis")]


def _writer(store: Store) -> tuple[str, str, str]:
    from bnrep.lock import current_writer, describe

    rec = current_writer(store)
    return ("writer", "running" if rec else "none", describe(rec) if rec else "no run holds the lock")


def _hparam(store: Store, exp: Experiment, running: bool = False) -> tuple[str, str, str]:
    """`running`: a writer holds the lock now, so a planned sweep is under way, not interrupted."""
    from bnrep.norms import TAGS

    tags = [TAGS[n] for n in exp.norms]
    best = store.read_json("hparam/best_hparams.json") if store.exists("hparam/best_hparams.json") else {}
    done = sum(t in best and store.has_part("hparam_trials", t) for t in tags)
    plan = store.read_json(SWEEP_PLAN) if store.exists(SWEEP_PLAN) and store.exists(SWEEP) else []
    planned = {TAGS.get(c.get("norm")) for c in plan}  # the conditions of the interrupted Tune run
    resumable = [t for t in tags if t not in best and t in planned]
    from bnrep.axis import axis_word

    word = {"norm": "normalisations", "condition": "conditions"}[axis_word(exp.norms)]
    if not done and not resumable and trained_with_preset_hparams(exp, store.read_table("training")):
        return ("hparam", "skipped", "the grid trained with the preset's hyperparameters (--paper-hparams)")
    state = _state(done, len(tags))
    return ("hparam", "partial" if resumable and state == "missing" else state, f"{done}/{len(tags)} {word} searched"
            + (f"; {'sweep running' if running else 'unfinished sweep to resume'}: {', '.join(resumable)}"
               if resumable else ""))


def _final_and_analysis(store: Store, exp: Experiment, running: bool = False) -> list[tuple[str, str, str]]:
    """`running`: a writer holds the lock now, so a planned grid is under way, not interrupted."""
    from bnrep.checkpoints import is_trained
    from bnrep.models import model_id

    hashes = read_hashes(store)
    want = [model_id(exp.model, n, s) for s in range(exp.seeds) for n in exp.norms]
    trained = [m for m in want if is_trained(store, m, hashes.get("train_hash", ""))]
    plan = store.read_json(GRID_PLAN) if store.exists(GRID_PLAN) and store.exists(GRID) else []
    resumable = [m for m in (model_id(exp.model, g["norm"], g["seed"]) for g in plan) if m in want and m not in trained]
    state = _state(len(trained), len(want))
    rows = [("final", "partial" if resumable and state == "missing" else state,
             f"{len(trained)}/{len(want)} models trained" + (
                 f"; {'grid running' if running else 'unfinished grid to resume'}: {len(resumable)} "
                 f"model{'s' * (len(resumable) != 1)}" if resumable else ""))]
    stage, state, detail = _analysis(store, exp, trained)
    if trained and len(trained) < len(want):  # what the untrained models need is not done either
        state = "partial" if state == "complete" else state
        detail += f" (of the trained models; {len(want) - len(trained)} to train first)"
    return rows + [(stage, state, detail)]


def _imported_and_analysis(store: Store, exp: Experiment) -> list[tuple[str, str, str]]:
    from bnrep.checkpoints import is_trained

    train_hash = read_hashes(store).get("train_hash", "")
    df = store.read_table("training")
    ids = list(df["model_id"]) if len(df) else []
    ok = [m for m in ids if is_trained(store, m, train_hash)]
    return [("import", _state(len(ok), len(ids)), f"{len(ok)}/{len(ids)} imported models recorded (bnrep import; "
             f"no sweep, no grid)"), _analysis(store, exp, ok)]


def _analysis(store: Store, exp: Experiment, trained: list[str]) -> tuple[str, str, str]:
    if not trained:
        return ("analysis", "missing", "no trained models")
    from bnrep.datasets import DatasetError
    from bnrep.models import ModelError
    from bnrep.represent import model_probes
    from bnrep.results import and_list
    from bnrep.stages.analysis import plan

    models = store.read_table("training")
    models = models[models["model_id"].isin(trained)]
    done = sum(len(store.parts(t)) for t in tables("analysis"))
    try:
        probes = model_probes(exp, training=False)  # the layers: from the model itself
    except (ModelError, DatasetError) as e:  # its code or its image folder is not here (a laptop away from the
        return ("analysis", "unknown" if done else "missing",  # cluster): what the store says
                f"{done} part{'s' * (done != 1)} written; the parts left are known with the model's code and "
                f"data: {e}")
    left = plan(store, exp, models, probes).n_tasks()
    state = "complete" if not left else "partial" if done else "missing"
    at = (f" (final weights and epoch{'s' * (len(exp.snapshots) > 1)} {and_list(map(str, exp.snapshots))})"
          if exp.snapshots else "")
    return ("analysis", state, (f"{left} tasks left" if left else "every part current") + at)


def _report(store: Store) -> tuple[str, str, str]:
    from bnrep.report import report_is_current

    if not store.exists("report", "report.md"):
        return ("report", "missing", "no report yet")
    current = report_is_current(store.out, store.experiment)
    return ("report", "complete" if current else "partial",
            f"{store.out}/{store.experiment}/report/report.html" + ("" if current else " (older than the results)"))

