"""`bnrep import`: models a researcher already trained, measured like the grid's own.

    bnrep import --experiment mine --dataset imagefolder:~/leaves --models models.csv
    bnrep analysis --experiment mine                # then the analysis and the report, unchanged
    bnrep report --experiment mine

The models file is a CSV with the columns `model_id,model,norm,seed,weights`
(any other column is kept as a label in results/training), or a TOML file of
`[[models]]` tables with the same keys. `model` is a model spec
(`torchvision:resnet18`, `mylab.nets:wide_cnn`, a built-in); every model of an
experiment has the same one, so that its layers compare one by one. `norm`
is `as-built` (the spec's own normalisation) or a norm of bnrep.norms, which
the spec is built with and the report groups by. `weights` (relative to the
models file's folder, or absolute) is a state_dict, or a checkpoint dict
holding one under `state_dict`, `model_state_dict` or `model`, read with
`torch.load(weights_only=True)`; the `module.` prefix of DataParallel and the
`_orig_mod.` prefix of torch.compile are removed. A model without norms saved
from code that put `nn.Identity` where they stood lacks the per-channel bias
that bnrep's `none` keeps there: it loads with that bias zero, the same function.

Every entry is checked before anything is written: the file loads, its keys
and shapes fit the spec (one line names the first that does not). Then each
model is evaluated on the experiment's train/validation/test splits (Table 1)
and recorded exactly as the grid records a trained model: train/models/<id>/
model.pt with its sha256 in a results/training part under the train hash.
config.json says `"imported": true`; the training stages refuse such an
experiment, `bnrep run` analyses and reports it, and the report says which
training facts (stopping rule, sweep) are not known for imported models.
Importing again skips the models already there from the same file contents.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import dataclasses
from dataclasses import dataclass

import pandas as pd
import torch

from bnrep.checkpoints import is_trained, sha256, weights_sha256
from bnrep.config import RunOptions, UsageError, command, header, open_store, prepare, read_config, stage_hashes, \
    start_fresh, write_config
from bnrep.data import check_data, input_shape, load_data
from bnrep.datasets import absolute_dataset, class_names
from bnrep.experiments import ConfigError, Experiment
from bnrep.lock import writer_lock
from bnrep.models import ModelError, build_model, check_forward
from bnrep.norms import NORMS, NormError, get_norm, ordered
from bnrep.swap import ChannelBias, ChannelsLast, NormThen, PerToken
from bnrep.store import Store, norm_columns

COLUMNS = ("model_id", "model", "norm", "seed", "weights")  # what every entry names
WRITTEN = ("experiment", "dataset", "arch", "bn", "condition", "lr", "momentum", "epochs", "best_epoch", "train_acc",
           "val_acc", "test_acc", "interpolated", "diverged", "diverged_epoch", "steps", "imported")  # bnrep's columns
PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile
STATE_KEYS = ("state_dict", "model_state_dict", "model")  # where checkpoint dicts keep their weights
NEW_VAL_SIZE = 0.1  # a new experiment's validation split, when the data has no val/: a tenth of train
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ImportRefused(UsageError):
    """A models file, entry or weights file that cannot be imported; one line, nothing written."""


@dataclass(frozen=True)
class Entry:
    model_id: str
    model: str
    norm: str
    seed: int
    weights: str  # absolute path
    labels: dict  # the models file's other columns


# ==== the models file ====
def read_models(path: str) -> list[Entry]:
    """The entries of a CSV or TOML models file, checked (ImportRefused names the file, entry and key)."""
    if not os.path.isfile(path):
        raise ImportRefused(f"models file {path} does not exist")
    try:
        rows = _toml_rows(path) if path.endswith(".toml") else _csv_rows(path)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ImportRefused(f"models file {path}: {getattr(e, 'strerror', None) or e}") from None
    if not rows:
        raise ImportRefused(f"models file {path} names no models (columns: {','.join(COLUMNS)})")
    folder, entries = os.path.dirname(os.path.abspath(path)), []
    for where, row in rows:
        at = f"models file {path}, {where}"
        missing = [c for c in COLUMNS if row.get(c) in (None, "")]
        typo = _near_miss(row)
        if missing:
            raise ImportRefused(f"{at}: no {', '.join(missing)} (every entry names {', '.join(COLUMNS)})"
                                + (f"; is {typo[0]!r} meant to be {typo[1]!r}?" if typo else ""))
        if typo:  # it would be kept as a label, silently
            raise ImportRefused(f"{at}: column {typo[0]!r} is a letter or two from {typo[1]!r}: fix the typo, or "
                                f"rename it if it is a label of your own")
        clash = [c for c in row if c in WRITTEN]
        if clash:
            raise ImportRefused(f"{at}: column {clash[0]!r} is one bnrep writes itself; rename it")
        mid, seed = str(row["model_id"]), str(row["seed"]).strip()
        if not MODEL_ID.fullmatch(mid):
            raise ImportRefused(f"{at}: model_id {mid!r} must be letters, digits, '_', '-' or '.'")
        if not seed.isdigit():
            raise ImportRefused(f"{at}: seed {row['seed']!r} must be a whole number >= 0 (a name belongs in "
                                f"another column, kept as a label)")
        try:
            norm = get_norm(str(row["norm"])).name
        except NormError as e:
            raise ImportRefused(f"{at}: {e}") from None
        weights = os.path.join(folder, os.path.expanduser(str(row["weights"])))
        labels = {k: v for k, v in row.items() if k not in COLUMNS}
        entries.append(Entry(mid, str(row["model"]), norm, int(seed), os.path.normpath(weights), labels))
    keys = list(dict.fromkeys(k for e in entries for k in e.labels))  # every part has every label column:
    entries = [dataclasses.replace(e, labels={k: e.labels.get(k, "") for k in keys})  # pandas reads a table's
               for e in entries]  # columns from its first part
    seen = set()
    for e in entries:
        if e.model_id in seen:
            raise ImportRefused(f"models file {path}: model_id {e.model_id!r} appears twice")
        seen.add(e.model_id)
    for i, e in enumerate(entries):
        _one_per_seed(f"models file {path}", e, entries[:i])
    specs = list(dict.fromkeys(e.model for e in entries))
    if len(specs) > 1:
        raise ImportRefused(f"models file {path} names {len(specs)} model specs ({', '.join(specs)}): an "
                            f"experiment compares one network layer by layer; import each into its own")
    return entries


def _near_miss(row: dict) -> tuple[str, str] | None:
    """(a column, the entry's column it nearly spells: 'weight' or 'wieghts' for 'weights'), or None."""
    import difflib

    for k in row:
        close = difflib.get_close_matches(str(k), [c for c in COLUMNS if c != k], n=1, cutoff=0.85)
        if k not in COLUMNS and close:
            return k, close[0]
    return None


def _one_per_seed(where: str, e, others) -> None:
    """ImportRefused when a model other than `e` has e's norm and seed (`others`: entries or recorded rows)."""
    for o in others:
        o = vars(o) if isinstance(o, Entry) else o
        mid, norm, seed = o["model_id"], o["norm"], o["seed"]
        if mid != e.model_id and (norm, int(seed)) == (e.norm, e.seed):
            raise ImportRefused(f"{where}: {mid} and {e.model_id} are both {e.norm} at seed {e.seed}; the analysis "
                                f"pairs models by normalisation and seed: give each model its own seed")


def _csv_rows(path: str) -> list[tuple[str, dict]]:
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's "CSV UTF-8" starts with a BOM
        reader, rows = csv.DictReader(f), []
        header = reader.fieldnames or []
        other = next((sep for sep in (";", "\t") if len(header) == 1 and sep in header[0]), None)
        if other:
            raise ImportRefused(f"models file {path}, line 1: one column, {header[0]!r}: columns are separated by "
                                f"commas, not {'tabs' if other == chr(9) else repr(other)} (save it as CSV with commas)")
        for row in reader:
            extra = row.pop(None, None)  # cells beyond the header's columns (an unquoted comma in a label)
            if extra and any(v.strip() for v in extra):
                raise ImportRefused(f"models file {path}, line {reader.line_num}: {len(extra)} more cell(s) than the "
                                    f"header's {len(reader.fieldnames)} columns ({', '.join(extra)}): quote a value "
                                    f"that holds a comma, or name the column in the header")
            if any((v or "").strip() for v in row.values()):
                rows.append((f"line {reader.line_num}", {k.strip(): (v or "").strip() for k, v in row.items() if k}))
        return rows


def _toml_rows(path: str) -> list[tuple[str, dict]]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    with open(path, "rb") as f:
        try:
            d = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ImportRefused(f"models file {path}: not valid TOML ({e})") from None
    models = d.get("models")
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models) or set(d) - {"models"}:
        raise ImportRefused(f"models file {path}: expected [[models]] tables only (keys: {', '.join(COLUMNS)})")
    return [(f"[[models]] #{i}", m) for i, m in enumerate(models, 1)]


# ==== the experiment ====
def import_experiment(exp: Experiment | None, name: str, entries: list[Entry], dataset: str | None,
                      image_size: int | None, earlier: tuple[str, ...] = ()) -> Experiment:
    """The experiment the entries are recorded in: `exp` (a preset, a study file, an earlier import) with
    their model and norms (and the `earlier` import's norms), or a new one called `name` on `dataset`."""
    spec, norms = entries[0].model, tuple(ordered({e.norm for e in entries} | set(earlier)))
    dataset = absolute_dataset(dataset) if dataset else dataset  # the folder it names, from any directory
    if exp is None:
        if not dataset:
            raise ConfigError(f"unknown experiment {name!r}: name a preset or a study file, or pass --dataset "
                              f"to import into a new experiment called {name}")
        return Experiment(name=name, dataset=dataset, model=spec, conditions=norms, channel_layers=(),
                          image_size=image_size, val_size=NEW_VAL_SIZE, description="imported models")
    return exp.with_model(spec).override(norms=norms, dataset=dataset, image_size=image_size)


# ==== the weights ====
def state_dict(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """(the weights of `path` without DataParallel / torch.compile prefixes, the file's sha256)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImportRefused(f"weights {path}: {e.strerror or e}") from None
    try:
        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a torch file, truncated, or objects beyond weights
        found = re.search(r"GLOBAL ([\w.]*\w)", str(e))  # torch names the first object it refused to build
        if found:
            raise ImportRefused(f"weights {path} holds Python objects besides tensors ({found.group(1)}; a whole "
                                f"model saved with torch.save(model), or a checkpoint with its arguments or "
                                f"metrics): save model.state_dict(), or a dict of tensors, instead; bnrep loads "
                                f"weights only (torch.load(weights_only=True))") from None
        raise ImportRefused(f"weights {path} is not a PyTorch checkpoint (torch.load: {type(e).__name__}; "
                            f"truncated, or another format)") from None
    sd = _tensors(blob) or next((_tensors(blob[k]) for k in STATE_KEYS if isinstance(blob, dict) and k in blob),
                                None)
    if not sd:
        raise ImportRefused(f"weights {path} holds no state_dict (a dict of tensors, or a checkpoint dict with "
                            f"one under {', '.join(repr(k) for k in STATE_KEYS)})")
    return {_unprefixed(k): v for k, v in sd.items()}, sha256(data)


def _tensors(x) -> dict | None:
    return x if isinstance(x, dict) and x and all(isinstance(v, torch.Tensor) for v in x.values()) else None


def _unprefixed(key: str) -> str:
    while key.startswith(PREFIXES):
        key = key.split(".", 1)[1]
    return key


def fitted(entry: Entry, exp: Experiment, shape: tuple[int, int, int], num_classes: int,
           sd: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """The entry's model with its weights (`sd`: read from its file when not given); ImportRefused naming
    the first key that does not fit, and the norms the weights would fit (a BatchNorm model given as `none`)."""
    given = sd if sd is not None else state_dict(entry.weights)[0]
    sd, (C, H, W) = dict(given), shape
    model = build_model(entry.model, entry.norm, C, num_classes, (H, W))
    why = _misfit(model, sd)
    if why:  # (the norms tried on the file's tensors, not on `sd` as _misfit left it)
        fits = [n for n in NORMS if n != entry.norm and _fits(entry.model, n, C, num_classes, (H, W), given)]
        raise ImportRefused(f"weights {entry.weights} do not fit {entry.model} ({entry.norm}, {C} channels, "
                            f"{num_classes} classes): {why}"
                            + (f"; they fit norm {' or '.join(fits)}" if fits else ""))
    model.load_state_dict(sd)
    return model


def _fits(spec: str, norm: str, C: int, num_classes: int, size: tuple[int, int], sd: dict) -> bool:
    """The tensors `sd` fit `spec` built under `norm` (False where that norm cannot be built into it)."""
    try:
        return _misfit(build_model(spec, norm, C, num_classes, size), dict(sd)) is None
    except (ModelError, NormError):
        return False


def _misfit(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> str | None:
    """Why the tensors `sd` do not fit `model` (the first key that does not), or None; `sd` is completed in
    place for load_state_dict: keys renamed to the model's, zero biases where `none` keeps them."""
    want = model.state_dict()
    # `none` keeps a per-channel bias where a norm stood (swap.ChannelBias, zero at first); a model built
    # without norms (norm_layer=nn.Identity) has none: zero is exactly its function
    zero = {f"{p}.bias" for p, m in model.named_modules() if isinstance(m, ChannelBias)}
    plain = _unwrapped(model)
    for k, v in want.items():
        if k not in sd and plain[k] in sd:  # the file has the module the swap wrapped, under its own name
            sd[k] = sd.pop(plain[k])
        if k not in sd and k in zero:
            sd[k] = torch.zeros_like(v)
        elif k not in sd:
            return f"{k} is missing from the file"
        if tuple(sd[k].shape) != tuple(v.shape):
            return f"{k} has shape {tuple(sd[k].shape)} in the file, {tuple(v.shape)} in the model"
    extra = [k for k in sd if k not in want]
    if extra:
        return f"the file's {extra[0]} is not in the model" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
    return None


def _unwrapped(model: torch.nn.Module) -> dict[str, str]:
    """Each state_dict key of `model` -> its key in the model as its author built it: a norm the swap
    wrapped (swap.NormThen's `norm`: timm's BatchNormAct2d; swap.ChannelsLast's `inner`: ConvNeXt's
    LayerNorm) holds its tensors one level down."""
    wraps = [(f"{p}.{a}." if p else f"{a}.", f"{p}." if p else "") for p, m in model.named_modules()
             for a in (("norm",) if isinstance(m, NormThen) else ("inner",) if isinstance(m, (ChannelsLast, PerToken))
                       else ())]
    wraps.sort(key=lambda w: -len(w[0]))  # the innermost first: a wrapper inside a wrapper, then the outer one
    out = {}
    for k in model.state_dict():
        plain = k
        for full, short in wraps:
            if plain.startswith(full):
                plain = short + plain[len(full):]
        out[k] = plain
    return out


# ==== the stage ====
def _changed(row: dict | None, e: Entry) -> list[str]:
    """'seed 0 (now 5)', ... : what the models file says of an imported model that its record does not."""
    if row is None:
        return []
    now = {"model": e.model, "norm": e.norm, "seed": e.seed, **{k: str(v) for k, v in e.labels.items()}}
    was = {k: row.get(k) for k in now}
    dropped = [f"{k} {v} (now none)" for k, v in row.items()  # a label the file no longer gives
               if k not in (*COLUMNS, *WRITTEN, *now) and isinstance(v, str) and v]
    return [f"{k} {was[k]} (now {v})" for k, v in now.items()
            if (int(was[k]) if k == "seed" and was[k] is not None else was[k]) != v] + dropped


def imported_models(store: Store) -> dict[str, tuple[str, str]]:
    """model_id -> (sha256 of the weights file it was imported from, of its weights: weights_sha256; '' for
    a model imported before it was recorded), for the models already here."""
    df = store.read_table("training")
    if df.empty or "imported" not in df:
        return {}
    meta = {r["model_id"]: store.part_metadata("training", r["model_id"]) or {}
            for r in df.to_dict("records") if r.get("imported")}
    return {m: (d.get("source_sha256", ""), d.get("weights_sha256", "")) for m, d in meta.items()}


def run(exp: Experiment | None, name: str, models_file: str, opts: RunOptions, dataset: str | None = None,
        image_size: int | None = None) -> int:
    # ==== every check before anything is written ====
    entries = read_models(models_file)
    store = open_store(opts.out, exp or name)
    old = read_config(store)
    earlier = () if opts.fresh or not old.get("imported") else Experiment.from_dict(old["experiment"]).norms
    exp = import_experiment(exp, name, entries, dataset, image_size, earlier)
    check_data(exp, opts.data_root)
    shape, num_classes = input_shape(exp), len(class_names(exp.dataset))
    if old and not old.get("imported") and not opts.fresh and store.has_table("training"):
        raise UsageError(f"{store.out}/{exp.name} holds models that bnrep trained: import into another experiment "
                         f"(--experiment NEW --dataset {exp.dataset}) or another --out")
    record = {**prepare(store, exp, "final", opts.fresh), "imported": True}
    for key in ("analysis_hash", "table_hashes"):  # the analysis records its own settings when it runs
        record.pop(key)
    train_hash = stage_hashes(exp)["train_hash"]
    earlier = {} if opts.fresh else imported_models(store)
    have = {m: file for m, (file, _) in earlier.items()}  # model_id -> the file's sha256
    recorded = {} if not have else {r["model_id"]: r for r in store.read_table("training").to_dict("records")}
    sources = {}  # model_id -> the file's sha256; same: the weights' (bnrep.checkpoints.weights_sha256)
    same = {m: weights for m, (_, weights) in earlier.items() if weights}
    for e in entries:  # each file read once here, and once more to record it (one model in memory at a time)
        sd, sources[e.model_id] = state_dict(e.weights)
        twin = next((m for m, h in {**have, **sources}.items() if m != e.model_id and h == sources[e.model_id]), None)
        if twin:
            raise ImportRefused(f"{twin} and {e.model_id} hold the same weights ({e.weights}): one model would count "
                                f"as two seeds; import it once")
        if have.get(e.model_id) not in (None, sources[e.model_id]):
            raise ImportRefused(f"{store.out}/{exp.name} has {e.model_id} imported from other weights than "
                                f"{e.weights}: use another model_id, or --fresh to import every model anew")
        changed = _changed(recorded.get(e.model_id), e) if have.get(e.model_id) else []
        if changed:  # the same weights, described otherwise: the analysis groups by these
            raise ImportRefused(f"{store.out}/{exp.name} has {e.model_id} imported with {', '.join(changed)}: "
                                f"use another model_id, or --fresh to import every model anew")
        model = fitted(e, exp, shape, num_classes, sd)
        same[e.model_id] = weights_sha256(model)  # the same tensors in another file (a prefix, a checkpoint dict)
        twin = next((m for m, h in same.items() if m != e.model_id and h == same[e.model_id]), None)
        if twin:
            raise ImportRefused(f"{twin} and {e.model_id} hold the same weights ({e.weights}, saved another way): "
                                f"one model would count as two seeds; import it once")
        check_forward(model, e.model, e.norm, shape, num_classes)
        _one_per_seed(f"{store.out}/{exp.name}", e, recorded.values())
    todo = [e for e in entries if not (have.get(e.model_id) and is_trained(store, e.model_id, train_hash))]
    from bnrep.train import accuracy, best_device

    device = best_device()
    data = load_data(exp, opts.data_root, device=device) if todo else None  # splits it, or one line
    print(header("import", exp, store), flush=True)
    print(f"[import] {len(entries)} models; {len(entries) - len(todo)} already imported, {len(todo)} to "
          f"evaluate", flush=True)
    kept = sorted(set(have) - {e.model_id for e in entries})
    if kept:  # imported before, and not in this file: still in the study, its tables and its report
        print(f"[import] note: {store.out}/{exp.name} also holds {len(kept)} model{'s' * (len(kept) != 1)} imported "
              f"before and not in {models_file} ({', '.join(kept)}): {'they stay' if len(kept) > 1 else 'it stays'} in "
              f"the study; --fresh imports this file's models alone", flush=True)
    if not todo:
        return 0

    # ==== evaluate and record, one writer ====
    from bnrep.checkpoints import save_model

    with writer_lock(store, "import"):
        if opts.fresh:
            start_fresh(store, "hparam")  # everything: imported models replace whatever was there
        write_config(store, record)
        for e in todo:
            model = fitted(e, exp, shape, num_classes).to(device)
            acc = {s: accuracy(model, getattr(data, s), device) for s in ("train", "val", "test")}
            row = {"model_id": e.model_id, "experiment": exp.name, "dataset": exp.dataset, "arch": e.model,
                   "model": e.model, **norm_columns(e.norm, e.norm),
                   "seed": e.seed,
                   "lr": math.nan, "momentum": math.nan, "epochs": math.nan, "best_epoch": math.nan,
                   "train_acc": acc["train"], "val_acc": acc["val"], "test_acc": acc["test"],
                   "interpolated": acc["train"] >= 1.0, "diverged": False, "diverged_epoch": math.nan, "steps": math.nan,
                   "imported": True, "weights": e.weights, **{k: str(v) for k, v in e.labels.items()}}
            digest = save_model(store, e.model_id, model, exp, {}, row, num_classes)
            store.write_part("training", e.model_id, pd.DataFrame([row]), train_hash, model_sha256=digest,
                             source=e.weights, source_sha256=sources[e.model_id], weights_sha256=same[e.model_id])
            print(f"[import] {e.model_id}: {get_norm(e.norm).label}, seed {e.seed}, test_acc {acc['test']:.4f} "
                  f"({e.weights})", flush=True)
    print(f"[import] wrote {store.out}/{exp.name}/train/models and results/training; next: "
          f"{command('run', exp.name, opts.out)} (the analysis and the report)", flush=True)
    return 0

