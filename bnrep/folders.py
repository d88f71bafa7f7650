"""Reading an image folder (`imagefolder:PATH`, torchvision's ImageFolder layout; the layout itself:
bnrep.datasets): every image into memory, or one batch at a time when the folder does not fit.

    read_folder(path, size)        {split: ((N, C, H, W) uint8, (N,) labels)}, every image checked
    FolderImages(files, size, ...) a split not in memory: X[idx] decodes those images
    pixel_stats(chunks)            per-channel mean and std as exact integer sums (either path, same bits)
    streams(path, size)            whether a folder streams: $BNREP_STREAMING, else its size against memory

bnrep.data splits and normalises what these read, as for every other dataset.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

from bnrep.datasets import DataError, folder_classes, folder_splits, image_files, one_line

STREAM_FRACTION = 0.25  # an image folder above this share of memory (float32, every split) streams
DECODE_THREADS = 8  # a streamed batch's images decode in parallel (PIL releases the GIL)


GREY_MODES = ("1", "L", "LA")  # one channel; every other mode but WIDE_MODES is read as RGB
# one channel of 16-bit integers or floats -> the top of their range, mapped to 255 (PIL's convert("L")
# would clip them to 0 and 255)
WIDE_MODES = {"I": 65535.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "F": 1.0}


def folder_image(path: str, size: int | None) -> torch.Tensor:
    """One image as (C, H, W) uint8 (C: 1 for grey, 3 for colour), resized and centre-cropped to
    size x size when `size` is given; DataError naming the file when it does not decode. A 16-bit
    image is scaled from 0..65535, a float one from 0..1, to 0..255 (one line when its values are
    outside that range)."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in WIDE_MODES:
                a = np.asarray(im, dtype=np.float64)  # decodes: a truncated file fails here
            else:
                im = im.convert("L" if mode in GREY_MODES else "RGB")
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        raise DataError(f"{path}: not a readable image ({one_line(e)}); replace or remove it") from None
    if mode in WIDE_MODES:
        top = WIDE_MODES[mode]
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if not (np.isfinite(a).all() and lo >= 0 and hi <= top):
            raise DataError(f"{path}: {mode} image with values {lo:g}..{hi:g}, outside 0..{top:g}: scale the "
                            f"folder's images to 0..{top:g} (or to 8 bits)")
        x = torch.from_numpy(np.rint(a * (255 / top)).astype(np.uint8))[None]
    else:
        x = TF.pil_to_tensor(im)
    if size is not None:
        x = TF.center_crop(TF.resize(x, size, antialias=True), size)
    return x


def read_folder(path: str, size: int | None, keep: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every split of an image folder as ((N, C, H, W) uint8, (N,) labels); labels index the sorted
    class folders. One line naming the file for an unreadable image, a channel count or size that
    differs from the first image's. keep=False: only those checks, one image in memory at a time
    (a folder that streams does not fit)."""
    classes, out, first = folder_classes(path), {}, None
    for split, root in folder_splits(path).items():
        images, (files, labels) = [], folder_files(root, classes)
        for f in files:
            x = folder_image(f, size)
            if first is None:
                first = (f, x.shape)
            elif x.shape[0] != first[1][0]:
                raise DataError(f"{f}: {x.shape[0]} channel(s) where {first[0]} has {first[1][0]}: "
                                f"convert the folder's images to one kind (grey or colour)")
            elif x.shape != first[1]:
                raise DataError(f"{f}: {x.shape[1]}x{x.shape[2]} pixels where {first[0]} has "
                                f"{first[1][1]}x{first[1][2]}: pass --image-size S to resize every image")
            if keep:
                images.append(x)
        if keep:
            out[split] = (torch.stack(images), torch.tensor(labels, dtype=torch.long))
    return out


def folder_files(root: str, classes: list[str]) -> tuple[list[str], list[int]]:
    """(image paths, labels) of one split: class by class in sorted order, files in name order."""
    files, labels = [], []
    for label, c in enumerate(classes):
        names = list(image_files(os.path.join(root, c)))
        files += names
        labels += [label] * len(names)
    return files, labels


class FolderImages:
    """An image folder split that is not in memory: `X[idx]` (an index tensor or a slice) decodes those
    images, resized as in memory, and normalises them exactly as the in-memory path does."""

    def __init__(self, files: list[str], size: int | None, shape: tuple[int, int, int], mean=None, std=None,
                 device="cpu"):
        self.files, self.size, self.mean, self.std, self.device = files, size, mean, std, torch.device(device)
        self.shape = torch.Size((len(files), *shape))

    def __len__(self) -> int:
        return len(self.files)

    def pixels(self, idx) -> torch.Tensor:
        """(B, C, H, W) uint8 of the images at `idx`, in that order."""
        picked = self.files[idx] if isinstance(idx, slice) else [self.files[i] for i in torch.as_tensor(idx).tolist()]
        with ThreadPoolExecutor(min(DECODE_THREADS, max(len(picked), 1))) as pool:
            images = list(pool.map(lambda f: folder_image(f, self.size), picked))
        return torch.stack(images) if images else torch.zeros((0, *self.shape[1:]), dtype=torch.uint8)

    def __getitem__(self, idx) -> torch.Tensor:
        x = self.pixels(idx).float().div_(255.0)  # the in-memory path's operations, in its order
        if self.mean is not None:
            x.sub_(self.mean.view(1, -1, 1, 1)).div_(self.std.view(1, -1, 1, 1))
        return x.to(self.device)

    def subset(self, idx) -> "FolderImages":
        files = self.files[idx] if isinstance(idx, slice) else [self.files[i] for i in torch.as_tensor(idx).tolist()]
        return FolderImages(files, self.size, tuple(self.shape[1:]), self.mean, self.std, self.device)

    def to(self, device, non_blocking: bool = False) -> "FolderImages":
        return FolderImages(self.files, self.size, tuple(self.shape[1:]), self.mean, self.std, device)


STATS_CHUNK = 1024  # images per step of pixel_stats


def pixel_stats(chunks) -> tuple[torch.Tensor, torch.Tensor]:
    """(C,) mean and population std of [0, 1] pixels from uint8 (B, C, H, W) chunks: exact integer sums,
    so any chunking (in memory or streamed) gives the same bits."""
    s1 = s2 = n = 0
    for x in chunks:
        x = x.to(torch.int64)
        s1, s2, n = s1 + x.sum(dim=(0, 2, 3)), s2 + (x * x).sum(dim=(0, 2, 3)), n + x.shape[0] * x.shape[2] * x.shape[3]
    mean = s1.double() / n
    std = (s2.double() / n - mean * mean).clamp_min(0).sqrt()
    return (mean / 255).float(), (std / 255).float().clamp_min(1e-6)


def streams(path: str, size: int | None) -> bool:
    """Whether the image folder at `path` is streamed: $BNREP_STREAMING (always|never), else when its
    splits as float32 tensors would exceed STREAM_FRACTION of this machine's memory."""
    force = os.environ.get("BNREP_STREAMING", "").strip().lower()
    if force in ("always", "never"):
        return force == "always"
    if force:
        raise DataError(f"BNREP_STREAMING={force}: expected always or never (or unset: by size)")
    C, H, W = folder_shape(path, size)
    classes = folder_classes(path)
    n = sum(len(folder_files(root, classes)[0]) for root in folder_splits(path).values())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return n * C * H * W * 4 > STREAM_FRACTION * memory


def folder_shape(path: str, size: int | None) -> tuple[int, int, int]:
    """(C, H, W) of the folder's images, from its first training image."""
    first = next(image_files(os.path.join(folder_splits(path)["train"], folder_classes(path)[0])))
    C, H, W = folder_image(first, size).shape
    return C, H, W
