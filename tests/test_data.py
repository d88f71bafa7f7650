"""bnrep.data: deterministic splits, normalisation, torchvision files, offline errors.

The torchvision tests write tiny datasets in the official on-disk formats
(IDX for MNIST/Fashion-MNIST, python pickles for CIFAR10) into tmp_path and
load them through torchvision's own dataset classes.
"""

import hashlib
import pickle
import struct
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from torchvision import datasets

from bnrep.data import DataError, batches, check_data, default_data_root, load_data, _holdout
from bnrep.datasets import DATASETS
from bnrep.experiments import get_experiment

DIGITS = get_experiment("digits-cnn")
SYNTH = get_experiment("synthetic-cnn")
N_TRAIN, N_TEST, N_VAL = 60, 20, 10  # tiny official-format sets


def assert_same(a, b):
    for s, t in [(a.train, b.train), (a.val, b.val), (a.test, b.test)]:
        assert torch.equal(s.X, t.X) and torch.equal(s.y, t.y)


# ==== splits ====

@pytest.mark.parametrize("exp", [DIGITS, SYNTH, SYNTH.override(image_shape=(3, 32, 32), num_images=200)],
                         ids=["digits", "synthetic-1x8x8", "synthetic-3x32x32"])
def test_same_experiment_same_tensors_whatever_the_global_seed(exp):
    torch.manual_seed(0), np.random.seed(0)
    a = load_data(exp)
    torch.manual_seed(1), np.random.seed(1)
    torch.rand(10), np.random.rand(10)
    assert_same(a, load_data(exp))


def test_split_seed_changes_the_split():
    a, b = load_data(DIGITS), load_data(DIGITS.override(split_seed=1))
    assert not torch.equal(a.train.y, b.train.y)


@pytest.mark.parametrize("exp, sizes", [
    (DIGITS, (1294, 144, 359)),  # 1797 images: 20% test = 359, 10% of the 1438 left = 144 val
    (DIGITS.override(val_size=100), (1338, 100, 359)),  # int val_size: a count
    (DIGITS.override(test_fraction=0.5, val_size=0.5), (449, 450, 898)),
    (SYNTH, (432, 48, 120)),  # 600 images
], ids=["digits", "digits-val-count", "digits-halves", "synthetic"])
def test_split_sizes(exp, sizes):
    d = load_data(exp)
    assert (len(d.train), len(d.val), len(d.test)) == sizes


@pytest.mark.parametrize("exp, shape", [
    (DIGITS, (1, 8, 8)),
    (SYNTH.override(image_shape=(3, 32, 32), num_images=100), (3, 32, 32)),
    (SYNTH.override(image_shape=(1, 28, 28), num_images=100), (1, 28, 28)),
], ids=["digits", "synthetic-rgb32", "synthetic-28"])
def test_shapes_dtypes_and_metadata(exp, shape):
    d = load_data(exp)
    assert (d.channels, d.size, d.size) == shape and d.num_classes == 10 and d.name == exp.dataset
    for s in (d.train, d.val, d.test):
        assert s.X.shape[1:] == shape and s.X.dtype == torch.float32 and s.y.dtype == torch.int64
        assert s.y.min() >= 0 and s.y.max() < 10


@pytest.mark.parametrize("exp", [DIGITS, SYNTH.override(image_shape=(3, 16, 16), num_images=300)],
                         ids=["digits", "synthetic-rgb"])
def test_train_split_is_normalised_per_channel(exp):
    X = load_data(exp).train.X
    assert torch.allclose(X.mean(dim=(0, 2, 3)), torch.zeros(X.shape[1]), atol=1e-5)
    assert torch.allclose(X.std(dim=(0, 2, 3), correction=0), torch.ones(X.shape[1]), atol=1e-4)


def test_holdout_is_disjoint_complete_and_stratified():
    y = torch.arange(1000) % 10
    keep, hold = _holdout(y, 0.2, seed=3, what="test_fraction")
    assert sorted(torch.cat([keep, hold]).tolist()) == list(range(1000))
    assert torch.equal(y[hold].bincount(), torch.full((10,), 20))


def test_train_size_takes_the_first_images_of_the_training_split():
    full, small = load_data(DIGITS), load_data(DIGITS.override(train_size=100))
    assert len(small.train) == 100
    assert torch.equal(small.train.X, full.train.X[:100]) and torch.equal(small.train.y, full.train.y[:100])
    assert torch.equal(small.val.X, full.val.X) and torch.equal(small.test.X, full.test.X)


def test_train_size_larger_than_the_split_keeps_all_and_warns():
    with pytest.warns(UserWarning, match="train_size"):
        d = load_data(DIGITS.override(train_size=10**6))
    assert len(d.train) == 1294


@pytest.mark.parametrize("change", [dict(val_size=1438), dict(val_size=0.9999), dict(test_fraction=0.9999)],
                         ids=["val-count-too-big", "val-fraction-everything", "test-everything"])
def test_impossible_split_is_a_data_error(change):
    with pytest.raises(DataError, match="holds out"):
        load_data(DIGITS.override(**change))


def split_refusals(exp, root=None, keep=1) -> tuple[int, str, str]:
    """(images val_size is held out from, as load_data splits them; check_data's and load_data's error
    for a val_size of all of them). One that keeps `keep` images passes."""
    d = load_data(exp, root, download=False)
    n = len(d.train) + len(d.val)
    errors = []
    for read in (check_data, load_data):
        with pytest.raises(DataError) as e:
            read(exp.override(val_size=n), root, download=False)
        errors.append(str(e.value))
    check_data(exp.override(val_size=n - keep), root, download=False)  # images left to train on: fine
    return n, *errors


def dataset_case(dataset: str, tmp_path, monkeypatch):
    """(experiment, data root) of a split test: official-format files written for mnist and cifar10, else
    digits (its first 500 training images for "digits, train_size") or 150 synthetic images."""
    if dataset in ("mnist", "cifar10"):
        preset, cls, _ = TV_CASES[TV_IDS.index(dataset)]
        write_dataset(cls, tmp_path, monkeypatch)
        return get_experiment(preset).override(val_size=N_VAL), str(tmp_path)
    if dataset == "synthetic":
        return SYNTH.override(num_images=150), None
    return DIGITS.override(train_size=500 if "train_size" in dataset else None), None


@pytest.mark.parametrize("dataset", ["digits", "synthetic", "mnist", "cifar10"])
def test_an_impossible_split_is_refused_before_the_data_is_read(dataset, tmp_path, monkeypatch):
    """check_data, which every stage runs before Ray starts, refuses a val_size that leaves nothing to
    train on with load_data's own words, counting the images from the dataset table or the files'
    headers; digits and synthetic also through test_fraction."""
    exp, root = dataset_case(dataset, tmp_path, monkeypatch)
    n, before, after = split_refusals(exp, root)
    assert before == after == (f"val_size={n} holds out {n} of {n} images; it must leave 1..{n - 1} (a study file "
                                f"sets it: val_size = a count or a fraction)")
    assert n == {"digits": 1438, "synthetic": 120, "mnist": N_TRAIN, "cifar10": N_TRAIN}[dataset]
    if root is None:
        with pytest.raises(DataError, match="^test_fraction=0.9999 holds out"):
            check_data(exp.override(test_fraction=0.9999))


@pytest.mark.parametrize("dataset", ["digits", "digits, train_size", "synthetic", "mnist", "cifar10"])
def test_check_data_counts_the_training_split_as_load_data_splits_it(dataset, tmp_path, monkeypatch):
    """What `bnrep run` checks the analysis settings against before Ray starts (k_max below the clustering
    samples the training split holds): check_data's count equals load_data's training split."""
    exp, root = dataset_case(dataset, tmp_path, monkeypatch)
    n = check_data(exp, root, download=False)
    assert n == len(load_data(exp, root, download=False).train) == {
        "digits": 1294, "digits, train_size": 500, "synthetic": 108, "mnist": N_TRAIN - N_VAL,
        "cifar10": N_TRAIN - N_VAL}[dataset]
    assert check_data(exp, root, download=False, split=False) is None


def test_split_to_device_and_len():
    s = load_data(SYNTH).val
    t = s.to("cpu")
    assert len(t) == len(s) == 48 and torch.equal(t.X, s.X)


def test_data_crosses_ray_and_moves_to_a_device_whole():
    """A trial gets the driver's data through Ray's object store and moves it to its device: every
    tensor of it (the meta device stands in for a GPU here), the original left where it was."""
    import ray.cloudpickle as cp

    data = load_data(SYNTH)
    moved = cp.loads(cp.dumps(data)).to("meta")
    for s in ("train", "val", "test"):
        a, b = getattr(data, s), getattr(moved, s)
        assert (b.X.device.type, b.y.device.type) == ("meta", "meta") and b.X.shape == a.X.shape, s
        assert a.X.device.type == "cpu", s
    assert (moved.mean.device.type, moved.std.device.type) == ("meta", "meta")
    assert (moved.num_classes, moved.classes, moved.size) == (data.num_classes, data.classes, data.size)
    back = cp.loads(cp.dumps(data)).to("cpu")
    assert torch.equal(back.train.X, data.train.X) and torch.equal(back.test.y, data.test.y)


# ==== batches ====

@pytest.mark.parametrize("n, batch_size, sizes", [(10, 4, [4, 4, 2]), (8, 4, [4, 4]), (3, 64, [3])])
def test_batches_cover_every_index_once(n, batch_size, sizes):
    idx = list(batches(n, batch_size, torch.Generator().manual_seed(0), "cpu"))
    assert [len(b) for b in idx] == sizes
    assert sorted(torch.cat(idx).tolist()) == list(range(n))


def test_batches_follow_the_generator():
    def order(seed):
        return torch.cat(list(batches(100, 7, torch.Generator().manual_seed(seed), "cpu")))
    assert torch.equal(order(0), order(0)) and not torch.equal(order(0), order(1))
    g = torch.Generator().manual_seed(0)
    batches(100, 7, g, "cpu")  # drawn at call time, not lazily
    assert not torch.equal(torch.cat(list(batches(100, 7, g, "cpu"))), order(0))


# ==== torchvision datasets from official-format files ====

def write_idx(path, array):
    """IDX (LeCun) file: magic 0x00000800 | ndim, big-endian int32 dims, uint8 values."""
    header = struct.pack(">I", 0x800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root, cls, rng):
    raw = root / cls.__name__ / "raw"
    raw.mkdir(parents=True)
    written = {}
    for split, n in [("train", N_TRAIN), ("t10k", N_TEST)]:
        X, y = rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10
        write_idx(raw / f"{split}-images-idx3-ubyte", X)
        write_idx(raw / f"{split}-labels-idx1-ubyte", y)
        written[split] = (X, y)
    return written


def write_cifar(root, monkeypatch, rng):
    """Five training batches, a test batch and the meta file, pickled as the official release.

    torchvision checks each file's md5 against the release's; the test points
    those checksums at the files it wrote, so the real integrity check runs.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    def dump(name, obj):
        (folder / name).write_bytes(pickle.dumps(obj))
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]
    per_batch = N_TRAIN // 5
    X = rng.integers(0, 256, (N_TRAIN + N_TEST, 3 * 32 * 32)).astype(np.uint8)  # rows: R plane, G plane, B plane
    y = list(np.arange(N_TRAIN + N_TEST) % 10)
    train = [dump(f"data_batch_{i + 1}", {"data": X[i * per_batch:(i + 1) * per_batch],
                                          "labels": y[i * per_batch:(i + 1) * per_batch]}) for i in range(5)]
    test = [dump("test_batch", {"data": X[N_TRAIN:], "labels": y[N_TRAIN:]})]
    meta = dump("batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    monkeypatch.setattr(datasets.CIFAR10, "train_list", train)
    monkeypatch.setattr(datasets.CIFAR10, "test_list", test)
    monkeypatch.setattr(datasets.CIFAR10, "meta", {"filename": meta[0], "key": "label_names", "md5": meta[1]})
    return {"train": (X[:N_TRAIN], np.array(y[:N_TRAIN])), "test": (X[N_TRAIN:], np.array(y[N_TRAIN:]))}


@pytest.fixture
def offline(monkeypatch):
    """Every download attempt fails as it does without a network."""
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)


TV_CASES = [("mnist-cnn", datasets.MNIST, (1, 28)), ("fashion-mnist-cnn", datasets.FashionMNIST, (1, 28)),
            ("cifar10-vgg16", datasets.CIFAR10, (3, 32)), ("kmnist", datasets.KMNIST, (1, 28))]
TV_IDS = ["mnist", "fashion-mnist", "cifar10", "kmnist"]


def tv_experiment(preset: str):
    """A preset, or a dataset with no preset of its own on the MNIST-shaped CNN (as --dataset gives it)."""
    return get_experiment("mnist-cnn").override(dataset=preset) if preset in DATASETS else get_experiment(preset)


def write_dataset(cls, root, monkeypatch):
    rng = np.random.default_rng(0)
    return write_cifar(root, monkeypatch, rng) if cls is datasets.CIFAR10 else write_mnist(root, cls, rng)


@pytest.mark.parametrize("preset, cls, shape", TV_CASES, ids=TV_IDS)
def test_torchvision_dataset_loads_from_official_files(preset, cls, shape, tmp_path, monkeypatch, offline):
    written = write_dataset(cls, tmp_path, monkeypatch)
    exp = tv_experiment(preset).override(val_size=N_VAL)
    check_data(exp, str(tmp_path))
    d = load_data(exp, str(tmp_path))
    assert (d.channels, d.size) == shape
    assert (len(d.train), len(d.val), len(d.test)) == (N_TRAIN - N_VAL, N_VAL, N_TEST)
    # train + val are the official training set, reshuffled; labels survive the split
    train_y = torch.cat([d.train.y, d.val.y]).sort().values
    assert torch.equal(train_y, torch.as_tensor(written["train"][1]).sort().values)
    # the official test set keeps its order; un-normalised pixels are the written bytes / 255 in CHW
    X_test, y_test = written["t10k" if "t10k" in written else "test"]
    pixels = d.test.X * d.std.view(1, -1, 1, 1) + d.mean.view(1, -1, 1, 1)
    expected = torch.as_tensor(X_test, dtype=torch.float32).view(N_TEST, shape[0], shape[1], shape[1]) / 255
    assert torch.allclose(pixels, expected, atol=1e-5)
    assert torch.equal(d.test.y, torch.as_tensor(y_test, dtype=torch.long))


def test_idx_files_placed_gzipped_load_as_the_plain_ones(tmp_path, monkeypatch, offline):
    """MNIST's files as distributed (NAME.gz), re-gzipped (so not the official checksum torchvision wants):
    read offline, the same data; a .gz that does not decompress is one line."""
    import gzip

    write_dataset(datasets.MNIST, tmp_path / "plain", monkeypatch)
    raw, gz = tmp_path / "plain" / "MNIST" / "raw", tmp_path / "gz" / "MNIST" / "raw"
    gz.mkdir(parents=True)
    for f in raw.iterdir():
        (gz / f"{f.name}.gz").write_bytes(gzip.compress(f.read_bytes()))
    exp = get_experiment("mnist-cnn").override(val_size=N_VAL)
    a, b = load_data(exp, str(tmp_path / "plain")), load_data(exp, str(tmp_path / "gz"))
    assert torch.equal(a.train.X, b.train.X) and torch.equal(a.test.y, b.test.y)
    (gz / "t10k-labels-idx1-ubyte").unlink()
    (gz / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: does not decompress \(.*\); replace it with"):
        check_data(exp, str(tmp_path / "gz"))
    assert not list(gz.glob("*.part-*"))


@pytest.mark.parametrize("preset, cls, shape", TV_CASES, ids=TV_IDS)
def test_torchvision_split_is_deterministic_and_normalised(preset, cls, shape, tmp_path, monkeypatch):
    write_dataset(cls, tmp_path, monkeypatch)
    exp = tv_experiment(preset).override(val_size=N_VAL)
    torch.manual_seed(0)
    a = load_data(exp, str(tmp_path), download=False)
    torch.manual_seed(1)
    assert_same(a, load_data(exp, str(tmp_path), download=False))
    assert torch.allclose(a.train.X.mean(dim=(0, 2, 3)), torch.zeros(shape[0]), atol=1e-5)


# ==== missing, offline, unreadable ====

EXPECTED_FILES = {
    "mnist-cnn": ("MNIST/raw", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    "fashion-mnist-cnn": ("FashionMNIST/raw", ["train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"]),
    "cifar10-vgg16": ("cifar-10-batches-py", ["data_batch_1", "data_batch_5", "test_batch", "batches.meta"]),
    "kmnist": ("KMNIST/raw", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
}


@pytest.mark.parametrize("download, why", [(True, "download failed"), (False, "download disabled")])
@pytest.mark.parametrize("preset", list(EXPECTED_FILES))
@pytest.mark.parametrize("load", [check_data, load_data], ids=["check_data", "load_data"])
def test_missing_offline_is_one_line_naming_files_and_folder(load, preset, download, why, tmp_path, offline):
    folder, names = EXPECTED_FILES[preset]
    with pytest.raises(DataError) as err:
        load(tv_experiment(preset), str(tmp_path / "data"), download=download)
    msg = str(err.value)
    assert "\n" not in msg and why in msg and str(tmp_path / "data" / folder) in msg
    assert all(name in msg for name in names)


def test_non_official_files_are_a_one_line_error(tmp_path, offline):
    mp = pytest.MonkeyPatch()
    write_cifar(tmp_path, mp, np.random.default_rng(0))
    mp.undo()  # torchvision's official md5s again: the files written no longer match
    with pytest.raises(DataError, match="did not load") as err:
        load_data(get_experiment("cifar10-vgg16"), str(tmp_path), download=False)
    assert "\n" not in str(err.value)


def test_unreadable_data_root(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(DataError, match="not a readable directory"):
        check_data(get_experiment("mnist-cnn"), str(not_a_dir))


@pytest.mark.parametrize("exp", [DIGITS, SYNTH], ids=["digits", "synthetic"])
def test_offline_datasets_need_no_data_root(exp, tmp_path):
    (tmp_path / "file").write_text("")
    check_data(exp, str(tmp_path / "file"))  # never looked at


def test_default_data_root(monkeypatch):
    monkeypatch.setenv("BNREP_DATA", "/somewhere/data")
    assert default_data_root() == "/somewhere/data"
    monkeypatch.delenv("BNREP_DATA")
    assert default_data_root().endswith(".cache/bnrep/data")


@pytest.mark.parametrize("preset, cls, shape", TV_CASES, ids=TV_IDS)
def test_preset_validation_holdout_is_5000_images(preset, cls, shape, tmp_path, monkeypatch, offline):
    """The presets' own hold-out (every other test overrides it): 5,000 of the official training set."""
    monkeypatch.setitem(globals(), "N_TRAIN", 5600)  # a training set with a 5,000 hold-out to spare
    write_dataset(cls, tmp_path, monkeypatch)
    exp = tv_experiment(preset)
    assert exp.val_size == 5000
    d = load_data(exp, str(tmp_path))
    assert (len(d.val), len(d.train), len(d.test)) == (5000, 600, N_TEST)
    assert np.bincount(d.val.y.numpy(), minlength=10).tolist() == [500] * 10  # stratified


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _wrong_labels(path):
    data = bytearray(path.read_bytes())
    data[-1] = 12
    path.write_bytes(bytes(data))


BROKEN = [  # (case, dataset class, file, how, the line's ending)
    ("truncated images", datasets.MNIST, "MNIST/raw/train-images-idx3-ubyte", _truncate,
     "train-images-idx3-ubyte: 46,940 bytes of data where its header says 47,040 (truncated or padded); "
     "replace it with the official file"),
    ("labels out of range", datasets.FashionMNIST, "FashionMNIST/raw/t10k-labels-idx1-ubyte", _wrong_labels,
     "t10k-labels-idx1-ubyte: labels up to 12, outside 0..9; replace it with the official file"),
    ("images of another size", datasets.MNIST, "MNIST/raw/t10k-images-idx3-ubyte",
     lambda p: write_idx(p, np.zeros((N_TEST, 32, 32))),
     "t10k-images-idx3-ubyte: images of 32x32 where 28x28 were expected; replace it with the official file"),
    ("not an IDX file", datasets.MNIST, "MNIST/raw/train-labels-idx1-ubyte", lambda p: p.write_text("<html>"),
     "train-labels-idx1-ubyte: not an IDX label file (magic 3c68746d); replace it with the official file"),
    ("header cut mid-number", datasets.MNIST, "MNIST/raw/train-labels-idx1-ubyte", lambda p: p.write_bytes(
        p.read_bytes()[:6]), "train-labels-idx1-ubyte: a truncated header; replace it with the official file"),
    ("no images", datasets.MNIST, "MNIST/raw/t10k-images-idx3-ubyte", lambda p: write_idx(p, np.zeros((0, 28, 28))),
     "t10k-images-idx3-ubyte: no image (its header counts 0); replace it with the official file"),
    ("CIFAR batch of another shape", datasets.CIFAR10, "cifar-10-batches-py/data_batch_2",
     lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((4, 100), np.uint8), "labels": [0, 1, 2, 3]})),
     "data_batch_2: data of shape (4, 100) where (N, 3072) was expected; replace it with the official file"),
    ("CIFAR batch without labels", datasets.CIFAR10, "cifar-10-batches-py/data_batch_1",
     lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((4, 3072), np.uint8)})),
     "data_batch_1: no labels (neither 'labels' nor 'fine_labels'); replace it with the official file"),
    ("CIFAR meta that is not the release's", datasets.CIFAR10, "cifar-10-batches-py/batches.meta",
     lambda p: p.write_bytes(pickle.dumps({"label_names": ["a"] * 10})),
     "batches.meta: not the release's file (its MD5 differs), which torchvision does not load; replace it"),
    ("CIFAR batch that is not a pickle", datasets.CIFAR10, "cifar-10-batches-py/test_batch",
     lambda p: p.write_bytes(b"\x00" * 64), "test_batch: does not unpickle as a CIFAR batch"),
]


@pytest.mark.parametrize("case,cls,rel,break_it,ending", BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_dataset_files_are_one_line_before_any_work(case, cls, rel, break_it, ending, tmp_path, monkeypatch,
                                                           offline):
    write_dataset(cls, tmp_path, monkeypatch)
    break_it(tmp_path / rel)
    preset = {datasets.MNIST: "mnist-cnn", datasets.FashionMNIST: "fashion-mnist-cnn",
              datasets.CIFAR10: "cifar10-vgg16"}[cls]
    with pytest.raises(DataError) as err:
        check_data(get_experiment(preset), str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / rel)) and ending in msg
