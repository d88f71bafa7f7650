"""Trained model files: the one place they are written, read and verified.

    train/models/<model_id>/model.pt    {"state_dict", "experiment", "hparams", "metrics", "num_classes"}

A model is trained when its `results/training` part exists under the
current train hash and its model.pt has the sha256 recorded in that part's
metadata (`model_sha256`): a truncated file or one with a flipped byte is
treated like a missing one (the grid trains it again; the analysis refuses
it with one line naming the file). Files are loaded with
`torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import io

import torch

from bnrep.data import NUM_CLASSES, input_shape
from bnrep.experiments import Experiment
from bnrep.models import build_model
from bnrep.store import Store


class ModelFileError(ValueError):
    """A model file that is missing, corrupt or not the one recorded; one line."""


def model_path(mid: str) -> str:
    return f"train/models/{mid}/model.pt"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_model(store: Store, mid: str, model: torch.nn.Module, exp: Experiment, hparams: dict,
               row: dict, num_classes: int = NUM_CLASSES) -> str:
    """Write model.pt atomically; returns its sha256 (record it with the training row)."""
    buf = io.BytesIO()
    torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                "experiment": exp.to_dict(), "hparams": dict(hparams), "metrics": row,
                "num_classes": num_classes}, buf)
    data = buf.getvalue()
    store.write_bytes(model_path(mid), data)
    return sha256(data)


def _read_verified(store: Store, mid: str, md: dict | None = None) -> bytes:
    """model.pt's bytes, checked against the sha256 its training part records (`md`: that part's
    metadata, when the caller has it already)."""
    where = f"{store.out}/{store.experiment}/{model_path(mid)}"
    md = md if md is not None else store.part_metadata("training", mid)
    if md is None:
        raise ModelFileError(f"{where} has no training record (results/training/{mid}.parquet)")
    try:
        data = store.read_bytes(model_path(mid))
    except (OSError, FileNotFoundError):
        raise ModelFileError(f"{where} is missing") from None
    want = md.get("model_sha256")
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
    C, H, W = input_shape(exp)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(m["seed"]))
        model = build_model(m.get("model") or exp.model, m.get("norm") or ("batch" if m["bn"] else "none"), C,
                            blob.get("num_classes", NUM_CLASSES), (H, W))
    return model.to(device)


def is_trained(store: Store, mid: str, train_hash: str) -> bool:
    """Complete: the training part (current configuration) and a verified model file."""
    md = store.part_metadata("training", mid)  # one footer read for the hash and the sha256
    if md is None or md.get("config_hash") != train_hash:
        return False
    try:
        data = _read_verified(store, mid, md)
        if not md.get("model_sha256"):
            _load_blob(data, mid)  # parts written before sha256 was recorded: does it load?
        return True
    except ModelFileError:
        return False


def load_model(store: Store, mid: str, exp: Experiment, device="cpu") -> torch.nn.Module:
    """The trained model `mid` with its weights, verified (ModelFileError otherwise)."""
    where = f"{store.out}/{store.experiment}/{model_path(mid)}"
    blob = _load_blob(_read_verified(store, mid), where, device)
    m = blob["metrics"]  # files written before the norm axis record only bn, before model specs only arch
    C, H, W = input_shape(exp)
    model = build_model(m.get("model") or exp.model, m.get("norm") or ("batch" if m["bn"] else "none"), C,
                        blob.get("num_classes", NUM_CLASSES), (H, W))  # files before 0.3: 10 classes
    model.load_state_dict(blob["state_dict"])
    return model.to(device)
