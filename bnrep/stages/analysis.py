"""Stage 3: measure every trained model's representations with Ray tasks.

The measures are bnrep.measures' table; this stage runs them. One task per model
extracts the post-activation representations (every probe of bnrep.probes, or
those --probes chooses) of the analysis samples (GPU when the cluster has one)
in one streaming pass and writes the model measures (sparsity at every eps,
paper eq. 3-4; signal propagation; gradient norms; batch against running
statistics); its outputs are the per-layer N x C reduced representations
(eq. 5), one object per layer, never written to disk. One task per (model,
layer) then computes the layer measures (class-based DBI, the k-means sweep
k = 2..15 with the DBI of each k and the optimal k, paper 3.3; NC1; effective
rank); one task per (layer, pair of models) the pair measures (linear and
debiased CKA). The sampled images travel to the tasks once, through the object store.

Each analysis table's parts carry that table's hash (bnrep.config.TABLE_FIELDS),
so a rerun with more eps thresholds, or with measures added since, computes
only what is missing: no retraining, no second k-means sweep.

Writes, under <out>/<experiment>/results/ (one Parquet part per task; schema
in bnrep.store): samples and one table per measure.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from bnrep.checkpoints import ModelFileError, load_model, saved_snapshots
from bnrep.config import (RunOptions, UsageError, command, header, is_imported, open_store, out_flag, prepare, read_config,
                          report_fields_changed, stage_hashes, start_fresh, table_hashes, with_trained_config,
                          write_config)
from bnrep.data import check_data, load_data
from bnrep.experiments import Experiment
from bnrep.lock import stop_requested, stopping, writer_lock
from bnrep.measures import FINAL, MEASURES, NONFINITE, ModelRun, of_kind  # noqa: F401 (NONFINITE: re-exported)
from bnrep.norms import sort_key
from bnrep.probes import Probe
from bnrep.progress import wait_tasks
from bnrep.raysession import check_nodes, check_resources, default_gpus, placement, quiet_when_stopped, ray_session
from bnrep.represent import AnalysisSamples, extract_representations, model_probes, snapshot_mode
from bnrep.store import Store, norm_columns, tables
from bnrep.train import best_device


# ==== the work of one task ====
NOT_TRAINED = "diverged at epoch {epoch}: its weights are not a trained model (not analysed)"


def not_trained(row: dict) -> str:
    """Why a diverged model's rows are NaN."""
    return NOT_TRAINED.format(epoch=int(row["diverged_epoch"]))


def model_keys(row: dict) -> dict:
    """The columns that name a model in every analysis table."""
    return {"model_id": row["model_id"], **norm_columns(row["norm"], row["condition"]), "seed": row["seed"],
            "epoch": row.get("epoch", FINAL)}


def pair_keys(a: dict, b: dict, layer: str, index: int) -> dict:
    """The columns that name a pair of models and a layer in a pair table."""
    return {"model_a": a["model_id"], "model_b": b["model_id"], "norm_a": a["norm"], "norm_b": b["norm"],
            "condition_a": a["condition"], "condition_b": b["condition"], "seed_a": a["seed"], "seed_b": b["seed"],
            "epoch": a.get("epoch", FINAL), "layer": layer, "layer_index": index}


def _frame(keys: dict, rows) -> pd.DataFrame:
    """A measure's rows with the key columns in front."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    for i, (k, v) in enumerate(keys.items()):
        if k not in df:
            df.insert(i, k, [v] * len(df))
    return df


def _layer_keys(row: dict, probes: list[Probe]) -> dict[int, dict]:
    return {q.index: {**model_keys(row), "layer": q.name, "layer_index": q.index, "activation": q.activation}
            for q in probes}


def write_model_rows(store: Store, m, row: dict, probes: list[Probe], rows, hashes: dict[str, str]) -> None:
    """One model table's part: rows with a layer_index each, the model's and layer's keys in front."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    keys = pd.DataFrame(list(_layer_keys(row, probes).values()))
    df = keys.merge(df, on="layer_index", how="right")
    store.write_part(m.table, unit(row), df, hashes[m.table], **placement())


def extract(out: str, exp: Experiment, row: dict, images: torch.Tensor, labels: torch.Tensor, n_sparsity: int,
            n_cluster: int, probes: list[Probe], todo: tuple[str, ...], hashes: dict[str, str]) -> list[np.ndarray]:
    """Extract one model's representations of `images` (the analysis samples, in order); write the
    model measures' parts in `todo` (bnrep.measures); return one (N, C) float32 array per probe."""
    quiet_when_stopped()
    store, device = Store(out, exp.name), best_device()
    if stop_requested(store):  # the run is stopping (Ctrl-C, a failed task): no work, nothing written
        return [None] * len(probes)
    epoch = row.get("epoch", FINAL)
    model = load_model(store, row["model_id"], exp, device, epoch)
    reps = extract_representations(model, images, n_sparsity, exp.eps, device=device, probes=probes,  # every eps
                                   **snapshot_mode(exp, row["condition"], epoch))
    run = ModelRun(exp.for_condition(row["condition"]), row, model, reps, probes, images, labels, n_cluster, device)
    for table in todo:
        write_model_rows(store, MEASURES[table], row, probes, MEASURES[table].compute(run), hashes)
    return [r.reduced.numpy() for r in reps]


def extract_one(*args) -> np.ndarray:
    """extract's one array for a single probe: Ray keeps a task's single return whole (the list itself),
    where it splits several returns into an object each."""
    (X,) = extract(*args)
    return X


def layer_task(out: str, exp: Experiment, row: dict, probe: Probe, X: np.ndarray, y: np.ndarray,
               todo: tuple[str, ...], backend: str, hashes: dict[str, str]) -> None:
    """One (model, layer) on the clustering samples: the layer measures in `todo` (bnrep.measures)."""
    quiet_when_stopped()
    store = Store(out, exp.name)
    if stop_requested(store):
        return
    Xt = torch.tensor(X[: len(y)], device=best_device())  # the clustering samples lead the extracted rows
    yt = torch.tensor(y, device=Xt.device)
    keys, where = _layer_keys(row, [probe])[probe.index], placement()
    for table in todo:
        rows = MEASURES[table].compute(Xt, yt, exp, row["seed"], backend)
        store.write_part(table, f"{unit(row)}-{probe.name}", _frame(keys, rows), hashes[table], **where)


def pair_task(out: str, exp: Experiment, a: dict, b: dict, layer: str, index: int, Xa: np.ndarray,
              Xb: np.ndarray, n: int, todo: tuple[str, ...], hashes: dict[str, str]) -> None:
    """One layer of two models (the n clustering samples): the pair measures in `todo` (bnrep.measures)."""
    quiet_when_stopped()
    store, dev = Store(out, exp.name), best_device()
    if stop_requested(store):
        return
    A, B = torch.tensor(Xa[:n], device=dev), torch.tensor(Xb[:n], device=dev)
    for table in todo:
        rows = MEASURES[table].compute(A, B, (a["model_id"], b["model_id"]))
        write_pair(store, table, a, b, layer, index, rows, hashes)


def write_pair(store: Store, table: str, a: dict, b: dict, layer: str, index: int, rows: list[dict],
               hashes: dict[str, str]) -> None:
    store.write_part(table, pair_part(layer, a, b), _frame(pair_keys(a, b, layer, index), rows), hashes[table],
                     **placement())


def write_not_analysed(store: Store, exp: Experiment, row: dict, probes: list[Probe], todo: "Plan",
                       hashes: dict[str, str]) -> None:
    """A diverged model's missing parts, on the driver: every measure NaN with the reason, no forward
    pass (the grid keeps its row as evidence; its weights are not a trained model's)."""
    why, mid, where = not_trained(row), unit(row), placement()
    for table in todo.models.get(mid, ()):
        m = MEASURES[table]
        write_model_rows(store, m, row, probes, [{"layer_index": q.index, **r} for q in probes
                                                 for r in m.not_analysed(exp, q, why)], hashes)
    keys = _layer_keys(row, probes)
    for q, tables_left in todo.layers.get(mid, []):
        for table in tables_left:
            store.write_part(table, f"{mid}-{q.name}", _frame(keys[q.index], MEASURES[table].not_analysed(exp, q, why)),
                             hashes[table], **where)


def unit(row: dict) -> str:
    """What a part is named by: the model (its final weights), or the model at a snapshot epoch (m@e0)."""
    epoch = row.get("epoch", FINAL)
    return row["model_id"] if epoch == FINAL else f"{row['model_id']}@e{epoch}"


def units(models: pd.DataFrame, exp: Experiment) -> list[dict]:
    """Every model at its final weights, then at each snapshot epoch of the experiment it reached (0, its
    initialisation, always; `trained_models`' column snapshot_epochs, the others)."""
    rows = models.to_dict("records")
    return [{**r, "epoch": e} for e in (FINAL, *exp.snapshots) for r in rows
            if e in (FINAL, 0) or e in r.get("snapshot_epochs", ())]


def pair_part(layer: str, a: dict, b: dict) -> str:
    return f"{layer}-{unit(a)}-{unit(b)}"


def model_pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
    """Every pair of conditions at one seed, and every pair of seeds within one condition (the baseline),
    at one epoch (`rows`: `units`)."""
    rows = sorted(rows, key=lambda r: (r["epoch"], sort_key(r["condition"]), r["seed"]))
    return [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:] if a["epoch"] == b["epoch"]
            and (a["seed"] == b["seed"]) != (a["condition"] == b["condition"])]


# ==== the plan ====
def diverged_mask(models: pd.DataFrame) -> pd.Series:
    """Models whose training diverged (results before 0.3 have no column: none)."""
    return models["diverged"].fillna(False).astype(bool) if "diverged" in models else pd.Series(False, models.index)


def trained_models(store: Store, exp: Experiment) -> pd.DataFrame:
    """The experiment's trained models, each verified (UsageError names the file), with the column
    snapshot_epochs: the epochs of exp.snapshots after 0 whose weights the grid kept (verified too)."""
    df = store.read_table("training")
    if df.empty:
        raise UsageError(f"no trained models in {store.out}/{exp.name}: run `{command('final', exp.name, store.out)}` "
                         f"first")
    later = [e for e in exp.snapshots if e > 0]
    if exp.snapshots and is_imported(store):
        raise UsageError(f"{store.out}/{exp.name} holds imported models: they have no training to take --snapshots "
                         f"from (measure snapshots of models the grid trains)")
    kept, earlier = [], []  # earlier: models of an earlier run's condition, trained without the snapshots
    condition = dict(zip(df["model_id"], df["condition"]))
    for mid in df["model_id"]:
        asked, saved = saved_snapshots(store.part_metadata("training", mid))
        if not set(later) <= asked and condition[mid] not in exp.norms:  # kept in the study, not asked for now:
            earlier.append(mid)  # measured at its initialisation and final weights (without_snapshots says so)
            asked = saved = set()
        elif not set(later) <= asked:
            missing = ", ".join(str(e) for e in later if e not in asked)
            raise UsageError(f"{mid} was trained without a snapshot at epoch {missing}: run "
                             f"`{command('final', exp.name, store.out)} --snapshots "
                             f"{','.join(map(str, exp.snapshots))}` first, with the flags the grid was trained with "
                             f"(it trains the models again, keeping those epochs)")
        kept.append(tuple(e for e in later if e in saved))  # an epoch after the model stopped: not there
        try:
            for e in (FINAL, *kept[-1]):
                load_model(store, mid, exp, epoch=e)
        except ModelFileError as e:
            again = (f"import it again (bnrep import --fresh --experiment {exp.name}{out_flag(store.out)} --models "
                     f"FILE)" if is_imported(store) else f"rerun `{command('final', exp.name, store.out)}` to retrain it")
            raise UsageError(f"checkpoint {e}; {again}") from None
    df["snapshot_epochs"] = kept
    df["without_snapshots"] = df["model_id"].isin(earlier)
    return df.sort_values("model_id").reset_index(drop=True)


def stopped_before(models: pd.DataFrame, exp: Experiment) -> list[str]:
    """Notes on the snapshot epochs some models never reached (they stopped training before)."""
    trained = models[~models["without_snapshots"]] if "without_snapshots" in models else models
    said = [f"{n} of {len(models)} models stopped training before epoch {e}: measured without it"
            for e in exp.snapshots if e > 0 for n in [sum(e not in k for k in trained["snapshot_epochs"])] if n]
    earlier = models.loc[models.get("without_snapshots", pd.Series(False, models.index)), "condition"]
    later = [e for e in exp.snapshots if e > 0]
    if len(earlier):
        said.append(f"{len(earlier)} model{'s' * (len(earlier) != 1)} of {', '.join(dict.fromkeys(earlier))} (an earlier run's conditions, not "
                    f"among this run's) were trained without snapshots at epoch {', '.join(map(str, later))}: measured "
                    f"at their initialisation and final weights only (through training too: run bnrep final with "
                    f"--conditions naming them as well, and --snapshots {','.join(map(str, exp.snapshots))})")
    return said


def check_k_max(exp: Experiment, n_cluster: int) -> None:
    # k_min >= 2, k_max >= k_min and eps >= 0 are checked by the experiment itself.
    if exp.k_max >= n_cluster:
        raise UsageError(f"k_max {exp.k_max} (--k-max) must be below the number of clustering samples "
                         f"({n_cluster}: samples_cluster {exp.samples_cluster}, at most the training split's images): "
                         f"pass a smaller --k-max" + (", or a larger --samples-cluster" if n_cluster == exp.samples_cluster
                                                      else ", or give the study more training images"))


@dataclass
class Plan:
    """What is left to compute (table names of bnrep.measures); everything else has a current part."""
    models: dict[str, tuple[str, ...]] = field(default_factory=dict)  # model id -> model tables missing
    layers: dict[str, list] = field(default_factory=dict)  # model id -> [(probe, layer tables missing)]
    pairs: list = field(default_factory=list)  # (row a, row b, layer, index, pair tables missing)

    def extract(self) -> set[str]:
        """Models that need a forward pass."""
        return set(self.models) | set(self.layers) | {unit(r) for a, b, *_ in self.pairs for r in (a, b)}

    def n_tasks(self) -> int:
        return len(self.extract()) + sum(map(len, self.layers.values())) + len(self.pairs)


def plan(store: Store, exp: Experiment, models: pd.DataFrame, probes: list[Probe]) -> Plan:
    """Compare the store with what the experiment needs. A part is current when it
    carries its table's hash, or the whole analysis hash (parts written before
    tables had their own hashes)."""
    th, ah = table_hashes(exp), stage_hashes(exp)["analysis_hash"]
    have = lambda t, part: store.has_part(t, part, (th[t], ah))  # noqa: E731
    p, every = Plan(), units(models, exp)
    for row in every:
        mid, measures = unit(row), [m for m in MEASURES.values() if m.measured_at(row["epoch"], exp)]
        missing = tuple(m.table for m in measures if m.kind == "model" and not have(m.table, mid))
        if missing:
            p.models[mid] = missing
        for q in probes:
            missing = tuple(m.table for m in measures if m.kind == "layer" and not have(m.table, f"{mid}-{q.name}"))
            if missing:
                p.layers.setdefault(mid, []).append((q, missing))
    for a, b in model_pairs(every):
        for q in probes:
            missing = tuple(m.table for m in of_kind("pair") if not have(m.table, pair_part(q.name, a, b)))
            if missing:
                p.pairs.append((a, b, q.name, q.index, missing))
    return p


# ==== the stage ====
def resolve(exp: Experiment, opts: RunOptions) -> tuple[Experiment, Store]:
    """The experiment as trained (config.json) with this run's analysis fields; checks that need no data."""
    store = open_store(opts.out, exp)
    trained = with_trained_config(store, exp)  # training flags are final.py's, not ours
    if trained.model != exp.model:
        raise UsageError(f"{store.out}/{exp.name} trained {trained.model}; --model {exp.model} is another model "
                         f"(analyse it in another --out, or train it with --fresh)")
    if trained.dataset != exp.dataset:  # (the images a model is measured on are those it was trained on)
        raise UsageError(f"{store.out}/{exp.name} was trained on {trained.dataset}, not {exp.dataset}: analyse it "
                         f"with --dataset {trained.dataset}, or the other data in another --out")
    exp = trained
    check_k_max(exp, exp.samples_cluster)
    return exp, store


def run(exp: Experiment, opts: RunOptions) -> int:
    # ==== every check before Ray starts ====
    exp, store = resolve(exp, opts)
    check_data(exp, opts.data_root)
    probes = model_probes(exp, training=False)  # the model checked at the data's shape; its activations
    record = prepare(store, exp, "analysis", opts.fresh)
    with warnings.catch_warnings(record=True) as said:  # said under the header, with the stage's other notes
        data = load_data(exp, opts.data_root, device="cpu")
    models = trained_models(store, exp)
    samples = AnalysisSamples.draw(len(data.train), exp.samples_sparsity, exp.samples_cluster, exp.split_seed)
    check_k_max(exp, samples.n_cluster)  # capped at what the training split holds
    print(header("analysis", exp, store, opts.fresh, opts.notes), flush=True)
    for note in (*(w.message for w in said), *samples.notes, *stopped_before(models, exp)):
        print(f"note: {note}", flush=True)

    # ==== skip complete work; one writer from here on ====
    with contextlib.ExitStack() as held:
        if opts.fresh:  # the lock, the resource check, then the deletion (a refused run deletes nothing)
            held.enter_context(writer_lock(store, "analysis"))
            check_resources(held.enter_context(ray_session(opts.address, exp.model)), opts, ["analysis"])
            start_fresh(store, "analysis")
        todo = plan(store, exp, models, probes)
        every = units(models, exp)
        own = {r["model_id"] for r in every if unit(r) in todo.models or unit(r) in todo.layers}  # its measures
        again = {r["model_id"] for r in every if unit(r) in todo.extract()} - own  # for CKA with other models only
        at = f" (final and epoch {', '.join(map(str, exp.snapshots))})" if exp.snapshots else ""
        print(f"[analysis] {len(models)} models{at} x {len(probes)} layers; {len(models) - len(own)} models complete"
              + (f" ({len(again)} of them extracted again for the CKA left to compute)" if again else "")
              + f", {todo.n_tasks()} tasks to run", flush=True)
        # settings that only add to recorded results (more eps) are recorded once their work has landed: an
        # interrupted or failed run leaves the record as it was, and the earlier command still runs
        grows = not opts.fresh and read_config(store).get("analysis_hash") not in (None, record["analysis_hash"])
        if not todo.n_tasks():
            if grows or report_fields_changed(store, exp):  # (all of it landed before a run could record it)
                with writer_lock(store, "analysis"):
                    write_config(store, record)
            return 0
        held.enter_context(writer_lock(store, "analysis"))  # LockError: one line
        if not grows:
            write_config(store, record)
        hashes = table_hashes(exp)
        if not store.has_part("samples", "indices", (hashes["samples"], stage_hashes(exp)["analysis_hash"])):
            store.write_part("samples", "indices", samples.table(), hashes["samples"])
        launch(exp, opts, store, data, models, samples, probes, todo, hashes)
        if grows:
            write_config(store, record)
    print(f"[analysis] wrote {store.out}/{exp.name}/results/{{{','.join(tables('analysis'))}}}")
    return 0


def launch(exp: Experiment, opts: RunOptions, store: Store, data, models: pd.DataFrame, samples: AnalysisSamples,
           probes: list[Probe], todo: Plan, hashes: dict[str, str]) -> None:
    """Ray tasks: extract per model; one per (model, layer); CKA per (layer, pair). A diverged model
    gets no task: its rows (NaN, the epoch it diverged) are written here."""
    diverged = set(models.loc[diverged_mask(models), "model_id"])
    with ray_session(opts.address, exp.model) as ray:
        check_nodes(ray, store, exp.dataset)
        gpus = default_gpus(ray, opts.gpus_per_task, opts.cpus_per_task, "task")
        task = {"num_cpus": opts.cpus_per_task, "num_gpus": gpus, "max_retries": 3}
        remote = {f.__name__: ray.remote(f).options(**task) for f in (layer_task, pair_task)}
        remote["extract"] = ray.remote(extract if len(probes) > 1 else extract_one).options(num_returns=len(probes),
                                                                                           **task)
        order = torch.as_tensor(samples.order)
        images = ray.put(data.train.X[order])  # shipped once, to every task
        sample_labels = ray.put(data.train.y[order])
        labels = ray.put(data.train.y[torch.as_tensor(samples.indices("cluster"))].numpy())
        rows = {unit(r): r for r in units(models, exp)}
        at = {p.index: i for i, p in enumerate(probes)}  # layer index -> position of its array
        arrays, pending, names = {}, [], {}  # names: what each task does, for its one-line failure
        for mid in sorted(todo.extract()):
            if rows[mid]["model_id"] in diverged and rows[mid]["epoch"] == FINAL:  # its rows say so; no task
                write_not_analysed(store, exp, rows[mid], probes, todo, hashes)
                continue
            refs = remote["extract"].remote(store.out, exp, rows[mid], images, sample_labels, samples.n_sparsity,
                                            samples.n_cluster, probes, todo.models.get(mid, ()), hashes)
            arrays[mid] = refs if isinstance(refs, list) else [refs]
            pending.append(arrays[mid][-1])  # completes with the extraction (and its model parts)
            names[pending[-1]] = f"extracting {mid}'s representations"
            for q, left in todo.layers.get(mid, []):
                pending.append(remote["layer_task"].remote(store.out, exp, rows[mid], q, arrays[mid][at[q.index]],
                                                           labels, left, opts.kmeans_backend, hashes))
                names[pending[-1]] = f"measuring {mid} {q.name}"
        for a, b, name, index, left in todo.pairs:
            if a["epoch"] == FINAL and diverged & {a["model_id"], b["model_id"]}:
                why = next(not_trained(m) for m in (a, b) if m["model_id"] in diverged)
                q = next(q for q in probes if q.index == index)
                for table in left:
                    write_pair(store, table, a, b, name, index, MEASURES[table].not_analysed(exp, q, why), hashes)
            else:
                pending.append(remote["pair_task"].remote(store.out, exp, a, b, name, index,
                                                          arrays[unit(a)][at[index]], arrays[unit(b)][at[index]],
                                                          samples.n_cluster, left, hashes))
                names[pending[-1]] = f"comparing {unit(a)} and {unit(b)} at {name}"
        wait_tasks(ray, pending, "analysis", stopping=stopping(store), names=names)
