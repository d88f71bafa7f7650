"""Datasets -> whole splits as in-memory tensors, split deterministically.

    >>> data = load_data(get_experiment("digits-cnn"))      # Data(train, val, test)
    >>> for idx in batches(len(data.train), 64, torch.Generator().manual_seed(0), "cpu"):
    ...     xb, yb = data.train.X[idx], data.train.y[idx]  # (B, C, H, W), (B,)

Datasets (the table: bnrep.datasets):
    digits         scikit-learn's bundled 8x8 digits (1,797 images, offline); test = a
                   stratified `test_fraction` hold-out, validation = `val_size` of the rest
    mnist          torchvision MNIST, 28x28x1; test = official test set (10,000),
    fashion-mnist  torchvision FashionMNIST, 28x28x1;  validation = `val_size` held out
    cifar10        torchvision CIFAR10, 32x32x3;       from the official training set
    cifar100       torchvision CIFAR100, 32x32x3, 100 classes (fine labels); as cifar10
    kmnist         torchvision KMNIST (Kuzushiji-MNIST), 28x28x1; as mnist
    synthetic      seeded class-structured images of `image_shape`, split as digits
    imagefolder:PATH  your images: PATH/train/<class>/..., PATH/test/<class>/..., PATH/val/
                   optional (else `val_size` held out); `image_size` resizes the shorter side
                   and centre-crops; classes are the folder names

Splits depend only on `exp.split_seed` (private RNGs, never the global ones), so
every model seed sees the same train/val/test images. Pixels are scaled to
[0, 1], then normalised per channel with the mean/std of the seeded training
split (before any `train_size` cut, so val/test never change with it).

An image folder larger than STREAM_FRACTION of this machine's memory (as
float32 tensors) is not read into memory: its splits decode their images
batch by batch (FolderImages: the same batches, pixels and normalisation as the
in-memory path, so training does not depend on which path ran; statistics are
exact integer sums either way). $BNREP_STREAMING=always|never forces a path.

Real datasets are read from `data_root` (`$BNREP_DATA` or ~/.cache/bnrep/data)
and downloaded there when missing and the network allows. Call `check_data` in
the driver before starting Ray: it downloads once (not once per trial) and fails
with a one-line `DataError` naming the files to place when offline.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from bnrep.datasets import (DATA_ROOT, DATA_ROOT_ENV, DATASETS, FOLDER, DataError, class_names, folder_classes,
                            folder_splits, one_line, parse_dataset)
from bnrep.folders import STATS_CHUNK, FolderImages, folder_files, folder_shape, pixel_stats, read_folder, streams

if TYPE_CHECKING:
    from bnrep.experiments import Experiment

NUM_CLASSES = 10  # the class count of model files written before 0.3, which did not record it
SYNTHETIC_SEED = 20240901  # fixes the synthetic images; split_seed only splits them, as for real data


def default_data_root() -> str:
    return os.path.expanduser(os.environ.get(DATA_ROOT_ENV) or DATA_ROOT)


@dataclass
class Split:
    X: torch.Tensor  # (N, C, H, W) float32, normalised with training-split channel stats (or FolderImages)
    y: torch.Tensor  # (N,) int64 class labels

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "Split":
        return Split(self.X.to(device), self.y.to(device))


@dataclass
class Data:
    train: Split
    val: Split
    test: Split
    num_classes: int
    channels: int
    size: int  # H = W, pixels
    name: str  # dataset name, as in Experiment.dataset
    mean: torch.Tensor | None = None  # (C,) training-split channel mean of [0, 1] pixels, on the splits' device
    std: torch.Tensor | None = None  # (C,) training-split channel std; X = (pixels - mean) / std
    classes: tuple[str, ...] = ()  # class names (an image folder's folders; else "0", "1", ...)

    def to(self, device) -> "Data":
        """The same data on `device` (a trial loads nothing: the driver's copy comes through Ray's object
        store and moves to the trial's device here)."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device),
                       mean=move(self.mean), std=move(self.std))


# ==== public API ====

def check_data(exp: Experiment, data_root: str | None = None, download: bool = True,
               split: bool = True) -> int | None:
    """Fail fast (DataError) if `exp`'s dataset cannot be loaded, or (split) cannot be split as `exp` asks:
    `val_size` (and `test_fraction` where it applies) must leave images to train on, and an image folder's
    hold-out a training image of every class. Downloads it when missing. Returns (split) the number of
    images the training split will hold, as load_data splits it (train_size included); else None.

    Cheap when the files are present (existence and format checks, no image decoded but an image
    folder's). digits and synthetic need no files.
    """
    kind, path = parse_dataset(exp.dataset)
    n, n_train = None, None  # the images `val_size` is held out from; those left to train on
    if kind != FOLDER and DATASETS[kind].torchvision:
        cls, root = _torchvision_class(kind), _readable_root(data_root)
        if _missing_files(cls, root):
            _fetch(cls, root, download)
        n = _check_files(cls, root)
    elif kind == FOLDER:
        read_folder(path, exp.image_size, keep=False)  # every image decoded once: a bad one is named before Ray
        splits = folder_splits(path)
        labels = folder_files(splits["train"], folder_classes(path))[1]
        if "val" in splits:  # its own validation split: all of train/ trains
            n_train = len(labels)
        elif split:  # held out of train/: every class keeps a training image
            n_train = len(_train_val(torch.tensor(labels), exp)[0])
    else:  # read by its entry's reader (small: read here, checked against the entry): test_fraction is the test split
        every = len(_read_bundled(exp)[1])
        if split:
            n = every - holdout_count(every, exp.test_fraction, "test_fraction")
    if not split:
        return None
    if n is not None:
        n_train = n - holdout_count(n, exp.val_size, "val_size")
    return min(n_train, exp.train_size) if exp.train_size is not None else n_train


def input_shape(exp: Experiment) -> tuple[int, int, int]:
    """(C, H, W) of `exp`'s images, without reading them all (models are checked against it before Ray)."""
    kind, path = parse_dataset(exp.dataset)
    if kind == FOLDER:
        return folder_shape(path, exp.image_size)
    return DATASETS[kind].shape or tuple(exp.image_shape)  # (None: the experiment says, as synthetic)


def load_data(exp: Experiment, data_root: str | None = None, device="cpu", download: bool = True) -> Data:
    """All three splits of `exp.dataset` as normalised tensors on `device` (an image folder larger than
    memory allows: FolderImages, decoded batch by batch)."""
    kind, path = parse_dataset(exp.dataset)
    if kind == FOLDER and streams(path, exp.image_size):
        return _stream_folder(exp, path, device)
    (X, y), (X_test, y_test), scale, val = _read(exp, data_root, download)  # X: (N, C, H, W), pixels * scale
    if val is None:
        train_idx, val_idx = _train_val(y, exp)
        train, val = _subset(X, y, train_idx, scale), _subset(X, y, val_idx, scale)
    else:  # a folder's own val/: the seeded order still decides the training split's order
        train_idx = torch.from_numpy(np.random.default_rng(exp.split_seed).permutation(len(y)))
        train, val = _subset(X, y, train_idx, scale), _subset(*val, torch.arange(len(val[1])), scale)
    mean, std = _channel_stats(train.X)
    if kind == FOLDER:  # exact integer sums, as the streamed path computes them
        mean, std = pixel_stats(X[i] for i in train_idx.split(STATS_CHUNK))
    if exp.train_size is not None:
        train = _first(train, exp.train_size)
    splits = [train, val, _subset(X_test, y_test, torch.arange(len(y_test)), scale)]
    for s in splits:
        s.X.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
    train, val, test = (s.to(device) for s in splits)
    _, C, H, _ = train.X.shape
    classes = tuple(class_names(exp.dataset))
    return Data(train, val, test, len(classes), C, H, exp.dataset, mean.to(device), std.to(device), classes)


def _stream_folder(exp: Experiment, path: str, device) -> Data:
    """An image folder's splits as FolderImages: the in-memory path's files, order, split and statistics."""
    classes, roots = folder_classes(path), folder_splits(path)
    shape = input_shape(exp)
    split = {s: (FolderImages(files, exp.image_size, shape), torch.tensor(labels, dtype=torch.long))
             for s, (files, labels) in ((s, folder_files(r, classes)) for s, r in roots.items())}
    (images, y) = split["train"]
    if "val" not in split:
        train_idx, val_idx = _train_val(y, exp)
        val = (images.subset(val_idx), y[val_idx])
    else:
        train_idx = torch.from_numpy(np.random.default_rng(exp.split_seed).permutation(len(y)))
        val = split["val"]
    train = (images.subset(train_idx), y[train_idx])
    mean, std = pixel_stats(train[0].pixels(slice(i, i + STATS_CHUNK)) for i in range(0, len(train[1]), STATS_CHUNK))
    if exp.train_size is not None:
        if exp.train_size > len(train[1]):
            warnings.warn(f"train_size={exp.train_size} exceeds the {len(train[1])} training images; using all "
                          f"of them")
        train = (train[0].subset(slice(0, exp.train_size)), train[1][: exp.train_size])
    # normalised on the CPU, where the images are decoded, then moved to `device`
    out = [Split(FolderImages(X.files, exp.image_size, shape, mean, std, device), y.to(device))
           for X, y in (train, val, split["test"])]
    return Data(*out, len(classes), shape[0], shape[1], exp.dataset, mean.to(device), std.to(device), tuple(classes))


def batches(n: int, batch_size: int, generator: torch.Generator, device):
    """Index tensors on `device` of one seeded pass over range(n); the last batch may be short.

    The permutation is drawn when called (not lazily), so `generator`'s state
    after the call is the same however far the caller iterates.
    """
    if batch_size <= 0:
        raise DataError(f"batch_size must be > 0, got {batch_size}")
    perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
    return iter(perm.split(batch_size))


# ==== reading: (train images, labels), (test images, labels), pixel scale ====

def _read(exp: Experiment, data_root, download):
    """(train, test, pixel scale, val or None: held out from train)."""
    kind, path = parse_dataset(exp.dataset)
    if kind != FOLDER and DATASETS[kind].torchvision:
        return (*_read_torchvision(kind, data_root, download), 255.0, None)
    if kind == FOLDER:
        splits = read_folder(path, exp.image_size)
        return splits["train"], splits["test"], 255.0, splits.get("val")
    X, y, scale = _read_bundled(exp)
    rest, test = _holdout(y, exp.test_fraction, exp.split_seed, "test_fraction")
    return (X[rest], y[rest]), (X[test], y[test]), scale, None


def _read_bundled(exp: Experiment) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(images, labels, pixel scale) from the reader of `exp.dataset`'s entry, checked against the entry
    (DataError, one line: a reader that does not match its entry would train on the wrong data)."""
    import importlib

    d = DATASETS[exp.dataset]
    if not d.reader:
        raise DataError(f"dataset {d.name}: its entry in bnrep.datasets names neither a torchvision class nor a "
                        f"reader (reader=\"module:function\")")
    module, _, fn = d.reader.partition(":")
    try:
        X, y, scale = getattr(importlib.import_module(module), fn)(exp)
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        raise DataError(f"dataset {d.name}: its reader {d.reader} failed ({type(e).__name__}: {one_line(e)})") from None
    X, y = torch.as_tensor(X), torch.as_tensor(y).long()
    shape, k = d.shape or tuple(exp.image_shape), d.num_classes
    wrong = (f"images of shape {tuple(X.shape[1:])} where its entry says {shape}" if tuple(X.shape[1:]) != shape else
             f"{len(X)} images but {len(y)} labels" if len(X) != len(y) else
             f"labels outside 0..{k - 1} (its entry's {k} classes)" if len(y) and not 0 <= int(y.min()) <= int(y.max()) < k
             else f"{len(X)} images where its entry says {d.images}" if d.images not in (None, len(X)) else "")
    if wrong:
        raise DataError(f"dataset {d.name}: its reader {d.reader} gave {wrong}")
    return X, y, float(scale)


def read_digits(exp: Experiment) -> tuple[torch.Tensor, torch.Tensor, float]:
    """scikit-learn's bundled 8x8 digits: (1797, 1, 8, 8) uint8 pixels 0..16, labels, pixel scale 16."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.from_numpy(d.data.astype(np.uint8)).view(-1, 1, 8, 8)
    return X, torch.from_numpy(d.target).long(), 16.0


def read_synthetic(exp: Experiment) -> tuple[torch.Tensor, torch.Tensor, float]:
    """exp.num_images seeded class-structured images of exp.image_shape in [0, 1] (pixel scale 1)."""
    return (*_synthetic(exp.image_shape, exp.num_images), 1.0)


def _synthetic(shape: tuple[int, int, int], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class smooth random prototype + pixel noise, in [0, 1]; a small CNN learns it in a few epochs."""
    C, H, W = shape
    g = torch.Generator().manual_seed(SYNTHETIC_SEED)
    k = DATASETS["synthetic"].num_classes
    coarse = torch.rand(k, C, 4, 4, generator=g)  # 4x4 grid of class-specific intensities
    protos = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)  # (k, C, H, W)
    y = (torch.arange(n) % k)[torch.randperm(n, generator=g)]  # balanced classes
    X = protos[y] + 0.25 * torch.randn(n, C, H, W, generator=g)
    return X.clamp_(0, 1), y


def _read_torchvision(name: str, data_root, download):
    """Official (train, test) sets as uint8 (N, C, H, W) tensors, read once from the dataset's arrays."""
    cls, root = _torchvision_class(name), _readable_root(data_root)
    if _missing_files(cls, root):
        _fetch(cls, root, download)
    try:
        sets = [cls(root, train=train, download=False) for train in (True, False)]
    except Exception as e:  # corrupt or non-official files: torchvision raises many kinds
        folder, names = _expected_files(cls, root)
        raise DataError(f"{cls.__name__} files under {folder} did not load ({one_line(e)}): "
                        f"replace {', '.join(names)} with the official files") from None
    return [(_images(ds.data), torch.as_tensor(ds.targets, dtype=torch.long)) for ds in sets]


def _images(data) -> torch.Tensor:
    if isinstance(data, np.ndarray):  # CIFAR: (N, H, W, C) uint8
        return torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()
    return data.unsqueeze(1)  # MNIST family: (N, H, W) uint8 tensor


# ==== files: where torchvision looks, download, one-line errors ====

def _torchvision_class(name: str):
    """The entry's torchvision class, of a kind the reader and file checks know (DataError otherwise)."""
    from torchvision import datasets

    cls = getattr(datasets, DATASETS[name].torchvision, None)
    if cls is None or not (hasattr(cls, "resources") or hasattr(cls, "train_list")):
        raise DataError(f"dataset {name}: torchvision.datasets.{DATASETS[name].torchvision} is not a kind bnrep reads "
                        f"(MNIST-style IDX files or CIFAR-style pickles); save its images as an image folder "
                        f"and give imagefolder:PATH")
    return cls


def _expected_files(cls, root: str) -> tuple[str, list[str]]:
    """(folder, file names) torchvision's `cls` reads under `root`."""
    if hasattr(cls, "resources"):  # MNIST family: uncompressed IDX files in <root>/<Class>/raw
        return os.path.join(root, cls.__name__, "raw"), [os.path.splitext(f)[0] for f, _ in cls.resources]
    names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]  # CIFAR python pickles
    return os.path.join(root, cls.base_folder), names


def _missing_files(cls, root: str) -> list[str]:
    folder, names = _expected_files(cls, root)
    for f in names:  # NAME.gz placed by hand: torchvision unpacks only what it downloads (by its checksum)
        if not os.path.isfile(os.path.join(folder, f)) and os.path.isfile(os.path.join(folder, f + ".gz")):
            _gunzip(os.path.join(folder, f + ".gz"), os.path.join(folder, f))
    return [f for f in names if not os.path.isfile(os.path.join(folder, f))]


def _gunzip(src: str, dst: str) -> None:
    """`src` decompressed to `dst` (whole, or not at all); DataError (one line) when it does not decompress."""
    import gzip
    import shutil

    part = f"{dst}.part-{os.getpid()}"
    try:
        with gzip.open(src, "rb") as f, open(part, "wb") as out:
            shutil.copyfileobj(f, out)
        os.replace(part, dst)
    except (OSError, EOFError) as e:
        with contextlib.suppress(OSError):
            os.remove(part)
        raise DataError(f"{src}: does not decompress ({one_line(e)}); replace it with the official file") from None


def _fetch(cls, root: str, download: bool) -> None:
    """Download through torchvision, or raise DataError naming the files to place by hand."""
    if not download:
        raise _missing_error(cls, root, "download disabled", gz=False)
    try:
        cls(root, train=False, download=True)  # fetches both splits; the test split is the cheaper load
    except Exception as e:  # offline (URLError), unwritable root (OSError), bad checksum (RuntimeError), ...
        raise _missing_error(cls, root, f"download failed: {one_line(e)}", gz=True) from None


def _check_files(cls, root: str) -> int:
    """Each file parses, with the shape and label range of its dataset: DataError naming the first that
    does not (a truncated download, a file of another dataset), before any trial or task reads it.
    Returns the number of training images."""
    folder, names = _expected_files(cls, root)
    d = next(d for d in DATASETS.values() if d.torchvision == cls.__name__)
    (C, H, W), k = d.shape, d.num_classes
    counts = {}
    for name in names:
        path = os.path.join(folder, name)
        problem = (_idx_problem(path, (H, W), counts, k) if hasattr(cls, "resources")
                   else _cifar_problem(path, C * H * W, k, counts) if name != cls.meta["filename"] else None)
        if problem:
            raise DataError(f"{path}: {problem}; replace it with the official file")
    for split in ("train", "t10k"):
        n = (counts.get(f"{split}-images"), counts.get(f"{split}-labels"))
        if None not in n and n[0] != n[1]:
            raise DataError(f"{folder}: {n[0]:,} {split} images but {n[1]:,} labels; replace them with the "
                            f"official files")
    if not hasattr(cls, "resources"):  # CIFAR: torchvision loads only the release's files (their MD5)
        from torchvision.datasets import cifar

        md5 = {**dict(cls.train_list + cls.test_list), cls.meta["filename"]: cls.meta["md5"]}
        other = next((n for n in names if not cifar.check_integrity(os.path.join(folder, n), md5[n])), None)
        if other:
            raise DataError(f"{os.path.join(folder, other)}: not the release's file (its MD5 differs), which "
                            f"torchvision does not load; replace it with the official file")
    train = {f for f, _ in getattr(cls, "train_list", [])}  # CIFAR's training batches
    return counts["train-images"] if hasattr(cls, "resources") else sum(counts[f] for f in train)


def _idx_problem(path: str, hw: tuple[int, int], counts: dict, k: int) -> str | None:
    """Why an IDX file (LeCun's MNIST format) is not what it should be, or None."""
    images = "images" in os.path.basename(path)
    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[:3] != b"\x00\x00\x08" or head[3] != (3 if images else 1):
            return f"not an IDX {'image' if images else 'label'} file (magic {head.hex() or 'missing'})"
        raw = f.read(4 * head[3])
        if len(raw) != 4 * head[3]:
            return "a truncated header"
        dims = np.frombuffer(raw, ">u4")
        if dims[0] == 0:
            return f"no {'image' if images else 'label'} (its header counts 0)"
        if images and tuple(dims[1:]) != hw:
            return f"images of {dims[1]}x{dims[2]} where {hw[0]}x{hw[1]} were expected"
        body = f.read()
    want = int(np.prod(dims))
    if len(body) != want:
        return f"{len(body):,} bytes of data where its header says {want:,} (truncated or padded)"
    if not images and body and max(body) > k - 1:
        return f"labels up to {max(body)}, outside 0..{k - 1}"
    counts[os.path.basename(path).split("-")[0] + ("-images" if images else "-labels")] = int(dims[0])
    return None


def _cifar_problem(path: str, values: int, k: int, counts: dict) -> str | None:
    """Why a CIFAR python batch is not what it should be, or None (its image count into `counts`)."""
    import pickle

    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        data, labels = np.asarray(d["data"]), np.asarray(d.get("labels", d.get("fine_labels")))
    except Exception as e:  # noqa: BLE001 - not a pickle, not a dict, no data: the same problem
        return f"does not unpickle as a CIFAR batch ({one_line(e)})"
    if data.ndim != 2 or data.shape[1] != values:
        return f"data of shape {data.shape} where (N, {values}) was expected"
    if labels.ndim != 1:
        return "no labels (neither 'labels' nor 'fine_labels')" if labels.ndim == 0 else \
            f"labels of shape {labels.shape} where (N,) was expected"
    if len(labels) != len(data) or (len(labels) and not 0 <= labels.min() <= labels.max() < k):
        return f"{len(labels):,} labels for {len(data):,} images, or labels outside 0..{k - 1}"
    counts[os.path.basename(path)] = len(labels)
    return None


def _missing_error(cls, root: str, why: str, gz: bool) -> DataError:
    """gz: torchvision unpacks official MNIST .gz files itself, but only on its download path."""
    folder, missing = _expected_files(cls, root)[0], _missing_files(cls, root)
    if hasattr(cls, "resources"):  # MNIST family
        what = ", ".join(f + "(.gz)" * gz for f in missing) + " there"
    else:
        what = ", ".join(missing) + f" there (or {cls.filename} in {root})"
    return DataError(f"{cls.__name__} not found under {folder}: place {what} ({why})")


def _readable_root(data_root: str | None) -> str:
    root = os.path.expanduser(data_root) if data_root else default_data_root()
    if os.path.exists(root) and not (os.path.isdir(root) and os.access(root, os.R_OK | os.X_OK)):
        raise DataError(f"data root {root} is not a readable directory (set --data-root or $BNREP_DATA)")
    return root


# ==== splitting and normalising ====

def holdout_count(n: int, size: int | float, what: str) -> int:
    """How many of `n` images `size` holds out (a count, or a float fraction); DataError (one line) unless
    it leaves 1..n-1 of them."""
    n_hold = round(size * n) if isinstance(size, float) else int(size)
    if not 0 < n_hold < n:
        raise DataError(f"{what}={size} holds out {n_hold} of {n} images; it must leave 1..{n - 1} (a study file "
                        f"sets it: {what} = a count or a fraction)", field=what)
    return n_hold


def _holdout(y: torch.Tensor, size: int | float, seed: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) index tensors, both in seeded random order; stratified by class when possible."""
    from sklearn.model_selection import train_test_split  # here: scikit-learn takes 2 s to import, and an
    # analysis task or `bnrep status` never splits
    n = len(y)
    n_hold = holdout_count(n, size, what)
    idx = np.arange(n)
    try:
        keep, hold = train_test_split(idx, test_size=n_hold, random_state=seed, stratify=y.numpy())
    except ValueError:  # a class too small to stratify: plain seeded permutation
        keep, hold = train_test_split(idx, test_size=n_hold, random_state=seed)
    return torch.from_numpy(keep), torch.from_numpy(hold)


def _train_val(y: torch.Tensor, exp: Experiment) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, validation) indices of the seeded `val_size` hold-out; DataError (one line) when a class of
    an image folder would have no training image left (a class too small to stratify is split at random)."""
    keep, hold = _holdout(y, exp.val_size, exp.split_seed, "val_size")
    gone = sorted(set(y.tolist()) - set(y[keep].tolist())) if parse_dataset(exp.dataset)[0] == FOLDER else []
    if gone:  # (an image folder's classes are the researcher's: a class of one image is an easy mistake)
        name, n = class_names(exp.dataset)[gone[0]], int((y == gone[0]).sum())
        raise DataError(f"class {name!r} has no training image once val_size={exp.val_size} holds out its {n} "
                        f"image(s) (split_seed {exp.split_seed}): add images of it, or give the data its own "
                        f"val/ split")
    return keep, hold


def _subset(X: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, scale: float) -> Split:
    return Split(X[idx].float().div_(scale), y[idx])  # pixels -> [0, 1]; indexing copies, so in-place is safe


def _first(train: Split, n: int) -> Split:
    if n > len(train):
        warnings.warn(f"train_size={n} exceeds the {len(train)} training images; using all of them")
    return Split(train.X[:n].clone(), train.y[:n].clone())  # clone: don't keep the full split alive


def _channel_stats(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C,) mean and population std over N, H, W; std floored so constant channels stay finite."""
    std, mean = torch.std_mean(X, dim=(0, 2, 3), correction=0)
    return mean, std.clamp_min(1e-6)
