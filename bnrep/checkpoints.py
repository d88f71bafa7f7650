"""Trained model files: the one place they are written, read and verified.

    train/models/<model_id>/model.pt    {"state_dict", "experiment", "hparams", "metrics", "num_classes"}
    train/models/<model_id>/epoch-<e>.pt   {"state_dict", "epoch"}: the weights after epoch e (--snapshots)

A model is trained when its `results/training` part exists under the
current train hash and its model.pt has the sha256 recorded in that part's
metadata (`model_sha256`): a truncated file or one with a flipped byte is
treated like a missing one (the grid trains it again; the analysis refuses
it with one line naming the file). Files are loaded with
`torch.load(..., weights_only=True)`.

Snapshots (`--snapshots 1,5`): the grid also keeps the weights after each
asked epoch the model reaches, verified the same way (`snapshot_sha256` in
the training part's metadata, epoch -> sha256; `snapshots_asked`, the epochs
the grid was asked for, so that a model which stopped before epoch 5 is told
apart from one trained without it). Epoch 0, the initialisation, is no file:
it is rebuilt from the model's seed (`initial_model`).
"""

from __future__ import annotations

import hashlib
import io
import json

import torch

from bnrep.data import NUM_CLASSES, input_shape
from bnrep.experiments import Experiment
from bnrep.measures import FINAL
from bnrep.models import build_model, seeded_model
from bnrep.store import Store


class ModelFileError(ValueError):
    """A model file that is missing, corrupt or not the one recorded; one line."""


def model_path(mid: str) -> str:
    return f"train/models/{mid}/model.pt"


def snapshot_path(mid: str, epoch: int) -> str:
    return f"train/models/{mid}/epoch-{epoch}.pt"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """A digest of the weights alone (names, dtypes, shapes, values): equal for equal weights whatever else a
    model file records (the experiment it was trained in, with its snapshot epochs, for one)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)};".encode())
        h.update(v.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _write(store: Store, rel: str, blob: dict) -> str:
    """torch.save `blob` to `rel` atomically; its sha256."""
    buf = io.BytesIO()
    torch.save(blob, buf)
    data = buf.getvalue()
    store.write_bytes(rel, data)
    return sha256(data)


def save_model(store: Store, mid: str, model: torch.nn.Module, exp: Experiment, hparams: dict,
               row: dict, num_classes: int = NUM_CLASSES) -> str:
    """Write model.pt atomically; returns its sha256 (record it with the training row)."""
    return _write(store, model_path(mid), {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                                           "experiment": exp.to_dict(), "hparams": dict(hparams), "metrics": row,
                                           "num_classes": num_classes})


def save_snapshot(store: Store, mid: str, model: torch.nn.Module, epoch: int) -> str:
    """Write the weights after `epoch` atomically; returns their sha256 (record it with the training row)."""
    return _write(store, snapshot_path(mid, epoch),
                  {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "epoch": epoch})


def snapshot_record(asked, digests: dict[int, str]) -> dict[str, str]:
    """The training part's metadata on its snapshots (see the module docstring)."""
    return {"snapshots_asked": ",".join(map(str, sorted(asked))),
            "snapshot_sha256": json.dumps({str(e): d for e, d in sorted(digests.items())})}


def saved_snapshots(md: dict | None) -> tuple[set[int], dict[int, str]]:
    """(the epochs the grid was asked to keep, epoch -> sha256 of those the model reached) from a training
    part's metadata; parts written before snapshots: none."""
    md = md or {}
    asked = {int(e) for e in md.get("snapshots_asked", "").split(",") if e}
    return asked, {int(e): d for e, d in json.loads(md.get("snapshot_sha256") or "{}").items()}


def _read_verified(store: Store, mid: str, md: dict | None = None, epoch: int = FINAL) -> bytes:
    """model.pt's bytes (or the snapshot's after `epoch`), checked against the sha256 its training part
    records (`md`: that part's metadata, when the caller has it already)."""
    rel = model_path(mid) if epoch == FINAL else snapshot_path(mid, epoch)
    where = f"{store.out}/{store.experiment}/{rel}"
    md = md if md is not None else store.part_metadata("training", mid)
    if md is None:
        raise ModelFileError(f"{where} has no training record (results/training/{mid}.parquet)")
    asked, saved = saved_snapshots(md)
    want = md.get("model_sha256") if epoch == FINAL else saved.get(epoch)
    if epoch != FINAL and not want:
        from bnrep.config import command

        cap = (store.read_json("config.json").get("experiment", {}).get("max_epochs")
               if store.exists("config.json") else None)
        why = (f"the model stopped before epoch {epoch}" if epoch in asked else
               f"the grid trains at most {cap} epochs" if isinstance(cap, int) and epoch > cap else
               f"the grid kept {'epochs ' + ', '.join(map(str, sorted(asked))) if asked else 'no snapshot'}: "
               f"`{command('final', store.experiment, store.out)} --snapshots {epoch}` trains the models again, "
               f"keeping it")
        raise ModelFileError(f"{where} was not saved by the grid ({why})")
    try:
        data = store.read_bytes(rel)
    except (OSError, FileNotFoundError):
        raise ModelFileError(f"{where} is missing") from None
    if want and sha256(data) != want:
        raise ModelFileError(f"{where} is not the model that was trained (sha256 differs: corrupt or replaced)")
    return data


def _load_blob(data: bytes, where: str, device="cpu") -> dict:
    try:
        return torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to load is the same problem
        raise ModelFileError(f"{where} does not load ({type(e).__name__})") from None


def initial_model(store: Store, mid: str, exp: Experiment, device="cpu") -> torch.nn.Module:
    """The model `mid` as its training started (epoch 0): built under its seed exactly as bnrep.train.Trainer
    builds it (weights depend on the model seed only), with the architecture, norm and classes its verified
    model file records."""
    where = f"{store.out}/{store.experiment}/{model_path(mid)}"
    blob = _load_blob(_read_verified(store, mid), where, "cpu")
    m = blob["metrics"]
    if m.get("imported"):  # trained elsewhere: bnrep's draw under its seed is not how it started
        raise ValueError(f"{mid} was imported (bnrep import): its initialisation is not known, so there is no "
                         f"epoch 0 to load")
    C, H, W = input_shape(exp)
    with torch.random.fork_rng(devices=[]):
        model = seeded_model(m.get("model") or exp.model, m.get("norm") or ("batch" if m["bn"] else "none"),
                             int(m["seed"]), C, blob.get("num_classes", NUM_CLASSES), (H, W))
    return model.to(device)


def is_trained(store: Store, mid: str, train_hash: str, snapshots=()) -> bool:
    """Complete: the training part (current configuration) and a verified model file; with `snapshots`,
    trained by a grid asked for every one of those epochs after 0, each it reached verified too."""
    return _training_state(store, mid, train_hash, snapshots) == (True, None)


def damage(store: Store, mid: str, train_hash: str, snapshots=()) -> str | None:
    """Why a model trained in the current configuration is not complete after all, in words (its model
    file or a snapshot missing, truncated or replaced; its model file there without its training record);
    None when it is complete, or was never trained in this configuration (nothing to say: it trains)."""
    return _training_state(store, mid, train_hash, snapshots)[1]


def _training_state(store: Store, mid: str, train_hash: str, snapshots) -> tuple[bool, str | None]:
    """(complete, what is damaged)."""
    md = store.part_metadata("training", mid)  # one footer read for the hash and the sha256
    if md is None:
        return False, (f"its model file is there but not its training record (results/training/{mid}.parquet)"
                       if store.exists(model_path(mid)) else None)
    if md.get("config_hash") != train_hash:
        return False, None
    asked, saved = saved_snapshots(md)
    if not {e for e in snapshots if e > 0} <= asked:
        return False, None
    try:
        data = _read_verified(store, mid, md)
        if not md.get("model_sha256"):
            _load_blob(data, mid)  # parts written before sha256 was recorded: does it load?
        for e in saved:
            _read_verified(store, mid, md, e)
        return True, None
    except ModelFileError as e:
        return False, str(e)


def load_model(store: Store, mid: str, exp: Experiment, device="cpu", epoch: int = FINAL) -> torch.nn.Module:
    """The trained model `mid` with its weights (its final ones, or those after a snapshot `epoch`; 0: its
    initialisation), verified (ModelFileError otherwise)."""
    if epoch == 0:
        return initial_model(store, mid, exp, device)
    md = store.part_metadata("training", mid)
    where = f"{store.out}/{store.experiment}/{model_path(mid)}"
    blob = _load_blob(_read_verified(store, mid, md), where, device)
    m = blob["metrics"]  # files written before the norm axis record only bn, before model specs only arch
    C, H, W = input_shape(exp)
    model = build_model(m.get("model") or exp.model, m.get("norm") or ("batch" if m["bn"] else "none"), C,
                        blob.get("num_classes", NUM_CLASSES), (H, W))  # files before 0.3: 10 classes
    if epoch != FINAL:
        where = f"{store.out}/{store.experiment}/{snapshot_path(mid, epoch)}"
        blob = _load_blob(_read_verified(store, mid, md, epoch), where, device)
    model.load_state_dict(blob["state_dict"])
    return model.to(device)
