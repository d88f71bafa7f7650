"""The datasets bnrep reads: one table entry each, and the `imagefolder:PATH` family.

    >>> DATASETS["cifar100"].num_classes
    100
    >>> parse_dataset("imagefolder:/data/leaves")       # ("imagefolder", "/data/leaves")

This module knows names, shapes and class counts only (no torch: `bnrep status`
and the experiment checks import it); bnrep.data reads the images. A dataset is
one entry here:

- read by torchvision: its class in `torchvision.datasets`, one of the kinds
  bnrep.data's reader and file checks know (MNIST-style IDX files: MNIST,
  FashionMNIST, KMNIST; CIFAR-style pickles: CIFAR10, CIFAR100); another class
  is refused in one line;
- anything else small enough to hold in memory: `reader = "module:function"`,
  a function of the experiment returning (images (N, C, H, W), labels (N,),
  pixel scale), as `bnrep.data:read_digits`; the test split is a seeded
  `test_fraction` hold-out. The images are checked against the entry's shape,
  class count and `images` before any work starts.

An image folder is torchvision's ImageFolder layout:

    PATH/train/<class>/*.png|jpg|...     required
    PATH/test/<class>/...                required, the same classes
    PATH/val/<class>/...                 optional (otherwise the seeded hold-out, `val_size`)

Its classes are the folder names (sorted, as ImageFolder numbers them), its
channels those of its images (1: grey, 3: colour; mixed is an error), its size
that of its images, or `image_size` (shorter side resized, then centre-cropped).
Hidden files and folders (a name that starts with '.': Jupyter's
.ipynb_checkpoints/, macOS's ._photo.jpg) are not part of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
FOLDER = "imagefolder"  # the family: imagefolder:PATH
DATA_ROOT_ENV, DATA_ROOT = "BNREP_DATA", "~/.cache/bnrep/data"  # where torchvision datasets live, by default
DATA_ROOT_HELP = f"where torchvision datasets live (default: ${DATA_ROOT_ENV} or {DATA_ROOT})"


@dataclass(frozen=True)
class Dataset:
    name: str
    shape: tuple[int, int, int] | None  # (C, H, W) of its images (None: synthetic's image_shape)
    num_classes: int
    torchvision: str = ""  # its class in torchvision.datasets, whose official test set is the test split
    reader: str = ""  # else "module:function": exp -> (images, labels, pixel scale); a seeded `test_fraction`
    #                   of them is the test split
    images: int | None = None  # how many a bundled dataset holds (checked before Ray; None: files or settings say)
    label: str = ""  # its name in figures and Table 1 ("CNN MNIST"); "": the name


DATASETS: dict[str, Dataset] = {d.name: d for d in [
    Dataset("digits", (1, 8, 8), 10, reader="bnrep.data:read_digits", images=1797,  # scikit-learn's 8x8 digits
            label="Digits"),
    Dataset("mnist", (1, 28, 28), 10, "MNIST", label="MNIST"),
    Dataset("fashion-mnist", (1, 28, 28), 10, "FashionMNIST", label="Fashion-MNIST"),
    Dataset("kmnist", (1, 28, 28), 10, "KMNIST", label="Kuzushiji-MNIST"),  # Clanuwat et al. 2018: cursive Japanese
    Dataset("cifar10", (3, 32, 32), 10, "CIFAR10", label="CIFAR10"),
    Dataset("cifar100", (3, 32, 32), 100, "CIFAR100", label="CIFAR100"),  # the 100 fine labels
    Dataset("synthetic", None, 10, reader="bnrep.data:read_synthetic",  # seeded class-structured images, for tests
            label="Synthetic"),
]}


class DatasetError(ValueError):
    """A dataset name or image folder that cannot work; the message is one line."""


class DataError(DatasetError):
    """Missing, unreadable or unsplittable data; the message is one line. `field`: the experiment field whose
    value the data refuses (val_size), where it is one."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


ONE_LINE_MAX = 300  # characters of an error's line quoted in another's (bnrep's own one-line errors fit)


def one_line(e: BaseException | str) -> str:
    """The last non-empty line of an exception's message, or of an error's text (its cause, as libraries
    word it), at most ONE_LINE_MAX characters, cut between words: for one-line errors."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return cut_words(lines[-1] if lines else type(e).__name__, ONE_LINE_MAX)


def cut_words(line: str, most: int, more: str = " ...") -> str:
    """`line` whole, or cut between words to at most `most` characters, `more` after it."""
    return line if len(line) <= most else line[:most].rsplit(" ", 1)[0] + more


def parse_dataset(name: str) -> tuple[str, str]:
    """("cifar10", "") for a table entry, ("imagefolder", PATH) for the family; DatasetError otherwise."""
    if name in DATASETS:
        return name, ""
    family, _, path = name.partition(":")
    if family == FOLDER:
        if not path:
            raise DatasetError(f"dataset {name!r}: name the folder, imagefolder:PATH")
        if "://" in path:
            raise DatasetError(f"dataset {name!r}: an image folder is read from a local or shared path (every node "
                               f"must see it), not a URI; copy or mount it there")
        return FOLDER, os.path.abspath(os.path.expanduser(path))
    import difflib

    folder = os.path.expanduser(name)
    if path:  # imagefoldr:PATH
        close = [f"{FOLDER}:{path}"] if difflib.get_close_matches(family.lower(), [FOLDER]) else []
    else:
        close = [c if c != FOLDER else f"{FOLDER}:PATH" for c in difflib.get_close_matches(name.lower(),
                                                                                          [*DATASETS, FOLDER], n=1)]
    hint = (f"; the folder {name} is there: give imagefolder:{name}" if os.path.isdir(os.path.join(folder, "train"))
            else f"; did you mean {close[0]}?" if close else "")
    raise DatasetError(f"unknown dataset {name!r} (valid: {', '.join(DATASETS)}, or imagefolder:PATH){hint}")


def absolute_dataset(name: str, base: str | None = None) -> str:
    """`name` with an image folder's path made absolute (a relative one: against `base`, default the current
    directory; ~ expanded), so that results record the folder they were made from wherever a later command
    runs. Any other name is returned as it is (parse_dataset judges it)."""
    family, _, path = name.partition(":")
    if family != FOLDER or not path or "://" in path:
        return name
    return f"{FOLDER}:{os.path.normpath(os.path.join(base or os.getcwd(), os.path.expanduser(path)))}"


# ==== image folders: layout, classes, one-line errors (no image decoded here) ====
def folder_splits(path: str) -> dict[str, str]:
    """{"train": dir, "test": dir, ["val": dir]} of an image folder; DatasetError when the layout is wrong."""
    if not os.path.isdir(path):
        raise DatasetError(f"imagefolder:{path}: " + ("a file, not a folder" if os.path.isfile(path) else
                                                      "no such folder"))
    splits = {s: os.path.join(path, s) for s in ("train", "val", "test") if os.path.isdir(os.path.join(path, s))}
    for need in ("train", "test"):
        if need not in splits:
            parent = os.path.dirname(path)  # imagefolder:leaves/train: the split's folder, not the dataset's
            above = (f"; {os.path.basename(path)}/ is a split of {parent}: give imagefolder:{parent}"
                     if os.path.basename(path) in ("train", "val", "test") and os.path.isdir(os.path.join(parent, need))
                     else "")
            raise DatasetError(f"imagefolder:{path}: no {need}/ folder (expected {path}/{need}/<class>/<image>){above}")
    return splits


def folder_classes(path: str) -> list[str]:
    """The class names of an image folder (its train/ subfolders, sorted), each present in every split
    with at least one image; at least 2 classes."""
    splits = folder_splits(path)
    per = {s: sorted(d.name for d in os.scandir(root) if d.is_dir() and not hidden(d.name))
           for s, root in splits.items()}
    classes = per["train"]
    if len(classes) < 2:
        raise DatasetError(f"imagefolder:{path}: {len(classes)} class folder(s) in train/; need at least 2")
    for split, names in per.items():
        missing, extra = sorted(set(classes) - set(names)), sorted(set(names) - set(classes))
        if missing:
            raise DatasetError(f"imagefolder:{path}: class {missing[0]!r} is in train/ but not in {split}/ "
                               f"({len(missing)} class(es) missing there)")
        if extra:
            raise DatasetError(f"imagefolder:{path}: class {extra[0]!r} is in {split}/ but not in train/")
        for c in classes:
            if not any(image_files(os.path.join(splits[split], c))):
                raise DatasetError(f"imagefolder:{path}: {split}/{c}/ holds no image "
                                   f"({', '.join(IMAGE_EXTENSIONS[:3])}, ...)")
    return classes


def image_files(folder: str):
    """The images of one class folder and its sub-folders, in ImageFolder's order (sorted os.walk,
    following links; names sorted in each folder)."""
    return (os.path.join(root, f) for root, _, names in sorted(_walk(folder))
            for f in sorted(names) if f.lower().endswith(IMAGE_EXTENSIONS) and not hidden(f))


def hidden(name: str) -> bool:
    """A hidden file or folder: not part of an image folder (.ipynb_checkpoints/, ._photo.jpg)."""
    return name.startswith(".")


def _walk(folder: str):
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not hidden(d)]  # (os.walk descends into what is left)
        yield root, dirs, names


def folder_fingerprint(path: str) -> str:
    """What a node sees of an image folder, cheaply (names and sizes, no decoding): '3 classes; train 120,
    test 30 images; 1,234,567 bytes', or why it sees nothing."""
    try:
        classes, splits = folder_classes(path), folder_splits(path)
    except DatasetError as e:
        return str(e).split(": ", 1)[-1]
    counts, size = [], 0
    for split, root in splits.items():
        files = [f for c in classes for f in image_files(os.path.join(root, c))]
        counts.append(f"{split} {len(files)}")
        size += sum(os.path.getsize(f) for f in files)
    return f"{len(classes)} classes; {', '.join(counts)} images; {size:,} bytes"


def num_classes(name: str) -> int:
    return len(class_names(name))


def class_names(name: str) -> list[str]:
    """The class names a report shows: an image folder's folder names, else the class indices."""
    kind, path = parse_dataset(name)
    return folder_classes(path) if kind == FOLDER else [str(i) for i in range(DATASETS[kind].num_classes)]
