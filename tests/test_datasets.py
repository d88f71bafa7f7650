"""Data a researcher brings: an image folder (imagefolder:PATH) and CIFAR-100, read as torchvision reads
them; the class count comes from the data everywhere; bad folders are one line before any work."""

import os
import pickle
import re
import shutil

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bnrep import flags
from bnrep.data import input_shape, load_data
from bnrep.datasets import num_classes
from bnrep.experiments import SMOKE, ConfigError, get_experiment
from tests.conftest import tree

CLASSES = ("ash", "beech", "oak")


def write_folder(root, splits=(("train", 12), ("test", 4)), classes=CLASSES, size=(8, 8), mode="RGB", seed=0):
    """Class-structured PNGs: root/<split>/<class>/NNN.png."""
    rng = np.random.default_rng(seed)
    for split, n in splits:
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                px = np.clip(rng.normal(0.2 + 0.3 * c, 0.1, (*size, 3)), 0, 1)
                im = Image.fromarray((px * 255).astype(np.uint8))
                (im.convert("L") if mode == "L" else im).save(d / f"{i:03d}.png")
    return root


def folder_exp(root, **kw):
    return get_experiment("digits-cnn").override(dataset=f"imagefolder:{root}", **kw)


def test_an_impossible_split_of_a_folder_is_refused_before_the_data_is_read(tmp_path):
    """A folder without val/ holds val_size out of train/: check_data counts its files and refuses a
    val_size of all of them with load_data's words; a folder with val/ holds nothing out."""
    from bnrep.data import DataError, check_data
    from tests.test_data import split_refusals

    n, before, after = split_refusals(folder_exp(write_folder(tmp_path / "leaves"), val_size=6), keep=3)  # 1 a class
    assert n == 36 and before == after == ("val_size=36 holds out 36 of 36 images; it must leave 1..35 (a study "
                                         "file sets it: val_size = a count or a fraction)")
    with_val = write_folder(tmp_path / "split", splits=(("train", 12), ("val", 2), ("test", 4)))
    check_data(folder_exp(with_val, val_size=10**6))  # its own val/: val_size is not used
    with pytest.raises(DataError, match="holds out"):
        check_data(folder_exp(tmp_path / "leaves", val_size=10**6))


def test_a_class_the_hold_out_takes_whole_is_refused_before_the_data_is_read(tmp_path):
    """A class of one training image cannot be stratified, so the hold-out is a seeded random one and can
    take it: check_data (before Ray) and load_data refuse that split in one line naming the class; a seed
    that leaves it in training passes. Which seeds take it: scikit-learn's split, computed here."""
    from sklearn.model_selection import train_test_split

    from bnrep.data import DataError, check_data

    root = write_folder(tmp_path / "leaves", splits=(("train", 20), ("test", 2)))
    for f in sorted((root / "train" / "oak").iterdir())[1:]:
        f.unlink()  # oak: one training image, the last of the 41 labels
    takes = [s for s in range(40) if 40 in train_test_split(np.arange(41), test_size=4, random_state=s)[1]]
    keeps = [s for s in range(40) if s not in takes]
    assert takes and keeps
    for seed in (takes[0], keeps[0]):
        exp = folder_exp(root, val_size=4, split_seed=seed)
        if seed in keeps:
            check_data(exp)
            assert 2 in load_data(exp).train.y.tolist()
            continue
        line = f"class 'oak' has no training image once val_size=4 holds out its 1 image(s) (split_seed {seed})"
        for read in (check_data, load_data):
            with pytest.raises(DataError, match=re.escape(line)):
                read(exp)


def test_a_folder_too_small_for_the_k_means_sweep_is_refused_before_any_work(tmp_path, capsys):
    """`bnrep run` on a folder whose training split holds no more images than k_max: one line before Ray
    starts (not after the sweep and the grid), naming the count; check_data counts a folder's training
    split as load_data splits it, with and without its own val/."""
    import ray

    from bnrep import cli
    from bnrep.data import check_data

    tiny = write_folder(tmp_path / "tiny", splits=(("train", 4), ("test", 2)))  # 12 images, 11 after the hold-out (0.1)
    with_val = write_folder(tmp_path / "split", splits=(("train", 5), ("val", 2), ("test", 2)))
    for exp in (folder_exp(tiny, val_size=2), folder_exp(with_val)):
        assert check_data(exp) == len(load_data(exp).train)
    out = tmp_path / "runs"
    rc = cli.main(["run", "--dataset", f"imagefolder:{tiny}", "--out", str(out)])  # k_max 15, val_size 0.1
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("error: k_max 15 (--k-max) must be below the number of clustering samples (11: "), err
    assert not ray.is_initialized() and not out.exists()


def test_a_relative_image_folder_is_recorded_as_the_folder_it_names(tmp_path, monkeypatch):
    """imagefolder:PATH relative to the current directory (--dataset, bnrep import --dataset) or to the study
    file (dataset = in a study file) is recorded absolute (config.json, the hashes): a later command from
    another directory reads the same folder, or says it is not there, and never another folder of that
    relative name. Results recorded before with a relative path keep it (their hashes, and a run by name)."""
    from bnrep import config
    from bnrep.stages.imports import import_experiment
    from bnrep.store import Store
    from bnrep.studies import load_study

    root = write_folder(tmp_path / "data" / "leaves")
    monkeypatch.chdir(tmp_path / "data")
    for given in ("leaves", "./leaves/../leaves"):
        args = flags.build_parser("hparam").parse_args(["--dataset", f"imagefolder:{given}"])
        exp = flags.resolve_experiment(args)
        assert exp.dataset == f"imagefolder:{root}" and exp.to_dict()["dataset"] == f"imagefolder:{root}"
    assert import_experiment(None, "mine", [SimpleNamespace(model="cnn", norm="batch")], "imagefolder:leaves",
                             None).dataset == f"imagefolder:{root}"
    (tmp_path / "studies").mkdir()
    study = tmp_path / "studies" / "mine.toml"
    study.write_text('base = "digits-cnn"\ndataset = "imagefolder:../data/leaves"\n')
    monkeypatch.chdir(tmp_path)  # not where the study file is
    assert load_study(str(study)).dataset == f"imagefolder:{root}"
    monkeypatch.setenv("HOME", str(tmp_path / "data"))
    args = flags.build_parser("hparam").parse_args(["--dataset", "imagefolder:~/leaves"])
    assert flags.resolve_experiment(args).dataset == f"imagefolder:{root}"
    args = flags.build_parser("hparam").parse_args(["--dataset", "mnist"])
    assert flags.resolve_experiment(args).dataset == "mnist"  # names stay names
    # results written before, with the relative path: loaded as recorded, so their hashes still match
    monkeypatch.chdir(tmp_path / "data")
    old = folder_exp("leaves")
    store = Store(str(tmp_path / "runs"), old.name)
    store.mkdir()
    config.write_config(store, config.prepare(store, old, "analysis", fresh=False))
    again = config.load_experiment(store)
    assert again.dataset == "imagefolder:leaves" and config.stage_hashes(again) == config.stage_hashes(old)
    config.prepare(store, again, "analysis", fresh=False)  # no "different configuration"


def test_an_image_folder_reads_as_torchvision_s_imagefolder(tmp_path):
    """Classes, labels and pixels equal torchvision's ImageFolder (the reference reader) on the same files;
    the normalisation uses the training split's channel statistics."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.v2.functional import pil_to_tensor

    root = write_folder(tmp_path / "leaves")
    exp = folder_exp(root, val_size=6)
    data = load_data(exp)
    assert data.classes == CLASSES and data.num_classes == num_classes(exp.dataset) == 3
    assert input_shape(exp) == (3, 8, 8) and tuple(data.train.X.shape[1:]) == (3, 8, 8)
    ref = ImageFolder(str(root / "test"))
    assert tuple(ref.classes) == CLASSES
    pixels = torch.stack([pil_to_tensor(ref.loader(p)) for p, _ in ref.samples]).float() / 255
    want = (pixels - data.mean.view(1, -1, 1, 1)) / data.std.view(1, -1, 1, 1)
    torch.testing.assert_close(data.test.X, want)
    assert data.test.y.tolist() == [t for _, t in ref.samples]
    assert len(data.train) + len(data.val) == 36 and len(data.val) == 6
    train = torch.cat([data.train.X, data.val.X]) * data.std.view(1, -1, 1, 1) + data.mean.view(1, -1, 1, 1)
    torch.testing.assert_close(data.mean, train[: len(data.train)].mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)


def test_images_in_sub_folders_of_a_class_count_as_imagefolder_counts_them(tmp_path):
    """ImageFolder walks each class folder's sub-folders (sessions, sources): the same images, in its order."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.v2.functional import pil_to_tensor

    root = write_folder(tmp_path / "leaves")
    for c in ("ash", "oak"):
        (root / "test" / c / "session2" / "b").mkdir(parents=True)
        os.rename(root / "test" / c / "001.png", root / "test" / c / "session2" / "001.png")
        os.rename(root / "test" / c / "002.png", root / "test" / c / "session2" / "b" / "000.png")
    data = load_data(folder_exp(root, val_size=6))
    ref = ImageFolder(str(root / "test"))
    assert len(data.test) == len(ref) == 12 and data.test.y.tolist() == [t for _, t in ref.samples]
    pixels = torch.stack([pil_to_tensor(ref.loader(p)) for p, _ in ref.samples]).float() / 255
    torch.testing.assert_close(data.test.X, (pixels - data.mean.view(1, -1, 1, 1)) / data.std.view(1, -1, 1, 1))


def test_hidden_files_and_folders_are_not_part_of_an_image_folder(tmp_path):
    """Jupyter's .ipynb_checkpoints/ beside the classes (it was a class that 'holds no image'), one inside a
    class with a copy of an image (counted twice), and macOS's ._001.png (not an image at all): left out, so
    the folder reads as it does without them."""
    import shutil

    root = write_folder(tmp_path / "leaves")
    want = load_data(folder_exp(root, val_size=6))
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "test" / "ash" / ".ipynb_checkpoints").mkdir()
    shutil.copy(root / "test" / "ash" / "001.png", root / "test" / "ash" / ".ipynb_checkpoints" / "001.png")
    (root / "test" / "oak" / "._001.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    got = load_data(folder_exp(root, val_size=6))
    assert got.classes == want.classes == CLASSES
    for split in ("train", "val", "test"):
        torch.testing.assert_close(getattr(got, split).X, getattr(want, split).X, rtol=0, atol=0)
        assert getattr(got, split).y.tolist() == getattr(want, split).y.tolist()


def test_a_new_study_name_with_an_image_folder(tmp_path, monkeypatch):
    """`bnrep run --experiment leaves --dataset imagefolder:PATH`: a study called leaves (the default recipe
    on those images), as `bnrep import` makes one; its later runs find it under --out by that name."""
    root = write_folder(tmp_path / "leaves")
    out = tmp_path / "runs"
    argv = ["--experiment", "leaves", "--dataset", f"imagefolder:{root}", "--out", str(out)]
    exp = flags.resolve_experiment(flags.build_parser("run").parse_args(argv))
    assert exp.name == "leaves" and exp.dataset == f"imagefolder:{root}" and exp.model == "cnn"
    assert exp.description.startswith("leaves: the digits-cnn recipe on imagefolder:")
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path / "proj")
    typed = ["--experiment", "leaves", "--dataset", "imagefolder:../leaves", "--out", str(out)]
    exp = flags.resolve_experiment(flags.build_parser("run").parse_args(typed))  # a path relative to here
    assert exp.description == f"leaves: the digits-cnn recipe on imagefolder:{root}"  # as results record it
    for bad, line in ((["--experiment", "leaves"], "unknown experiment 'leaves'"),  # no data named: no study
                      (["--experiment", "my leaves", "--dataset", f"imagefolder:{root}"], "a study's name is")):
        with pytest.raises(ConfigError, match=line):
            flags.resolve_experiment(flags.build_parser("run").parse_args(bad))


def test_val_folder_and_image_size(tmp_path):
    """PATH/val/ is the validation split when present; --image-size resizes the shorter side and centre-crops,
    as torchvision's Resize + CenterCrop do; grey images stay one channel."""
    from torchvision.transforms import v2

    root = write_folder(tmp_path / "grey", splits=(("train", 6), ("val", 2), ("test", 2)), size=(12, 8), mode="L")
    exp = folder_exp(root, image_size=6)
    data = load_data(exp)
    assert input_shape(exp) == (1, 6, 6) and len(data.val) == 6 and len(data.train) == 18
    first = Image.open(root / "val" / "ash" / "000.png")
    ref = v2.Compose([v2.PILToTensor(), v2.Resize(6, antialias=True), v2.CenterCrop(6)])(first).float() / 255
    got = data.val.X[0] * data.std.view(-1, 1, 1) + data.mean.view(-1, 1, 1)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def write_cifar100(root, n_train=30, n_test=10):
    """CIFAR-100 python files as torchvision reads them (cifar-100-python/{train,test,meta})."""
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) * 7) % 100
        with open(d / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(labels),
                         "coarse_labels": list(labels // 5)}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)],
                     "coarse_label_names": [f"g{i}" for i in range(20)]}, f)


def test_cifar100_class_count_reaches_the_head_and_claim_4(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    import pandas as pd

    from bnrep.findings import finding_early_clusters
    from bnrep.results import Results
    from bnrep.train import Trainer

    monkeypatch.setattr(tv_cifar.CIFAR100, "_check_integrity", lambda self: True)  # the files are ours, not official
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    write_cifar100(tmp_path)
    exp = get_experiment("cifar100-resnet18").override(**SMOKE, val_size=5, model="cnn")
    data = load_data(exp, str(tmp_path), download=False)
    assert data.num_classes == 100 and len(data.train) == 25 and len(data.test) == 10
    trainer = Trainer(exp, data, "batch", {"lr": 0.01, "momentum": 0.0}, 0)
    assert trainer.model(data.test.X[:2]).shape == (2, 100)
    assert Results(exp).n_classes == 100
    km = pd.DataFrame([dict(model_id=f"m-{n}-{s}", norm=n, condition=n, bn=n == "batch", seed=s, layer=f"l{i}", layer_index=i, k=k, dbi=1.0,
                            optimal=k == 14) for n in ("batch", "none") for s in range(2) for i in (1, 2) for k in
                       (2, 14)])
    assert "of 100 classes" in finding_early_clusters(km, 1, Results(exp).n_classes).detail


def _truncate(root):
    p = root / "train" / "oak" / "003.png"
    p.write_bytes(p.read_bytes()[:60])
    return p


def test_16_bit_and_float_grey_images_keep_their_levels(tmp_path):
    """A 16-bit grey image (microscopy, X-ray) is scaled from 0..65535 and a float one from 0..1 to
    0..255, not clipped to two values; a float image outside 0..1 is one line naming the file."""
    from bnrep.datasets import DataError
    from bnrep.folders import folder_image

    a = np.linspace(0, 65535, 64).reshape(8, 8).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    f = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(f, mode="F").save(tmp_path / "f.tif")
    for name, want in (("g16.png", a / 65535), ("f.tif", f)):
        x = folder_image(str(tmp_path / name), None)
        assert x.dtype == torch.uint8 and x.shape == (1, 8, 8)
        assert torch.equal(x[0], torch.from_numpy(np.rint(want * 255).astype(np.uint8))), name
    Image.fromarray(f * 4, mode="F").save(tmp_path / "big.tif")
    with pytest.raises(DataError, match=r"big.tif: F image with values 0..4, outside 0..1: scale"):
        folder_image(str(tmp_path / "big.tif"), None)


def _mixed(root):
    p = root / "test" / "beech" / "001.png"
    Image.open(p).convert("L").save(p)
    return p


def _sizes(root):
    p = root / "train" / "ash" / "002.png"
    Image.open(p).resize((10, 8)).save(p)
    return p


@pytest.mark.parametrize("name,line", [
    ("imagefolder:s3://bucket/leaves", "dataset 'imagefolder:s3://bucket/leaves': an image folder is read from a "
                                       "local or shared path"),
    ("imagefolder:{file}", "imagefolder:{file}: a file, not a folder"),
])
def test_an_image_folder_that_is_a_uri_or_a_file_is_named_as_such(name, line, tmp_path):
    from bnrep.datasets import DatasetError, folder_splits, parse_dataset

    (tmp_path / "leaves.zip").write_bytes(b"PK")
    name, line = (x.format(file=tmp_path / "leaves.zip") for x in (name, line))
    with pytest.raises(DatasetError) as err:
        folder_splits(parse_dataset(name)[1])
    assert line in str(err.value)


def test_a_split_folder_or_a_bare_path_for_a_dataset_is_told_the_spec_it_meant(tmp_path, monkeypatch):
    from bnrep.datasets import DatasetError, folder_splits, parse_dataset

    root = write_folder(tmp_path / "leaves")
    with pytest.raises(DatasetError, match=f"; train/ is a split of {root}: give imagefolder:{root}$"):
        folder_splits(parse_dataset(f"imagefolder:{root}/train")[1])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match=r"unknown dataset 'leaves' \(valid: .*\); the folder leaves is there: "
                                           r"give imagefolder:leaves$"):
        parse_dataset("leaves")
    with pytest.raises(DatasetError, match=r"or imagefolder:PATH\)$"):  # no such folder: no hint
        parse_dataset("beeches")
    for typo, meant in (("mnst", "mnist"), ("CIFAR-10", "cifar10"), ("fashion_mnist", "fashion-mnist"),
                        ("imagefoldr:leaves", "imagefolder:leaves"), ("image-folder", "imagefolder:PATH")):
        with pytest.raises(DatasetError, match=rf"^unknown dataset '{typo}' \(valid: .*\); did you mean {meant}\?$"):
            parse_dataset(typo)


@pytest.mark.parametrize("case, damage, line", [
    ("no train/", lambda r: os.rename(r / "train", r / "training"),
     "imagefolder:{root}: no train/ folder (expected {root}/train/<class>/<image>)"),
    ("class missing in test", lambda r: [os.remove(p) for p in (r / "test" / "oak").iterdir()] and
     os.rmdir(r / "test" / "oak"),
     "imagefolder:{root}: class 'oak' is in train/ but not in test/ (1 class(es) missing there)"),
    ("one class", lambda r: [os.rename(r / s / c, r / "gone" / s / c) for s in ("train", "test") for c in ("beech", "oak")
                             if (r / "gone" / s).mkdir(parents=True, exist_ok=True) is None],
     "imagefolder:{root}: 1 class folder(s) in train/; need at least 2"),
    ("truncated image", _truncate, "{file}: not a readable image ("),
    ("mixed channels", _mixed, "{file}: 1 channel(s) where {root}/train/ash/000.png has 3: convert the folder's "
                               "images to one kind (grey or colour)"),
    ("sizes differ", _sizes, "{file}: 8x10 pixels where {root}/train/ash/000.png has 8x8: pass --image-size S to "
                             "resize every image"),
])
def test_bad_image_folders_are_one_line_before_any_work(case, damage, line, tmp_path, capsys):
    root = write_folder(tmp_path / "leaves")
    file = damage(root)
    out = tmp_path / "runs"
    before = tree(tmp_path)
    rc = flags.run_stage("final", ["--smoke-test", "--paper-hparams", "--dataset", f"imagefolder:{root}",
                                   "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and line.format(root=root, file=file) in err, err
    assert tree(tmp_path) == before and not out.exists()


@pytest.mark.slow
def test_a_study_file_on_an_image_folder_through_every_stage(tmp_path):
    """A study file (base preset, the folder, three norms) through `bnrep run --smoke-test` on 16x16 PNGs in
    3 classes: the heads have 3 outputs, claim 4 counts 3 classes, the report names the classes; afterwards
    the report and status find the study by its name."""
    import subprocess
    import sys

    root = write_folder(tmp_path / "leaves", splits=(("train", 60), ("test", 20)), size=(16, 16))
    study = tmp_path / "leaf-study.toml"
    study.write_text(f'base = "digits-cnn"\ndataset = "imagefolder:{root}"\nnorms = ["batch", "group", "none"]\n')
    out = tmp_path / "runs"

    def bnrep(*args):
        r = subprocess.run([sys.executable, "-m", "bnrep", *args, "--out", str(out)], capture_output=True, text=True,
                           cwd=tmp_path)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout

    bnrep("run", "--experiment", str(study), "--smoke-test", "--paper-hparams")
    exp = out / "leaf-study"
    blob = torch.load(exp / "train" / "models" / "cnn-gn-s0" / "model.pt", weights_only=True)
    assert blob["num_classes"] == 3 and list(blob["state_dict"].values())[-1].shape == (3,)
    report = (exp / "report" / "report.md").read_text()
    assert "3 (ash, beech, oak)" in report and "of 3 classes" in report
    assert "final      complete  6/6 models trained" in bnrep("status", "--experiment", "leaf-study")
    assert "is up to date" in bnrep("report", "--experiment", "leaf-study")


def test_claim_4_is_not_judged_against_an_unknown_class_count(tmp_path):
    """Results of an image folder that is not here, with no classes recorded: claim 4 says so."""
    import pandas as pd

    from bnrep.findings import finding_early_clusters
    from bnrep.results import Results

    r = Results(folder_exp(tmp_path / "elsewhere"))
    assert r.n_classes == 0
    km = pd.DataFrame([dict(model_id=f"m-{n}", norm=n, condition=n, bn=n == "batch", seed=0, layer="l1", layer_index=1, k=2,
                            dbi=1.0, optimal=True) for n in ("batch", "none")])
    f = finding_early_clusters(km, 1, r.n_classes)
    assert f.verdict == "not evaluated" and "class count is not known" in f.detail
    assert Results(folder_exp(tmp_path / "elsewhere"), classes=("a", "b", "c")).n_classes == 3


@pytest.mark.parametrize("val", [False, True])  # held out from train/, or the folder's own val/
def test_a_streamed_folder_trains_exactly_as_one_in_memory(tmp_path, monkeypatch, val):
    """BNREP_STREAMING=always decodes batch by batch (FolderImages), =never reads the folder into memory:
    the same splits, pixels and statistics, so a seeded model trains to the same bits either way."""
    from bnrep.folders import FolderImages
    from bnrep.train import Trainer

    splits = (("train", 14), ("val", 3), ("test", 4)) if val else (("train", 14), ("test", 4))
    root = write_folder(tmp_path / "leaves", splits=splits, size=(12, 10))
    exp = folder_exp(root, image_size=8, val_size=6, train_size=30, max_epochs=2, batch_size=8, stop="early-stop")
    runs = {}
    for mode in ("never", "always"):
        monkeypatch.setenv("BNREP_STREAMING", mode)
        data = load_data(exp)
        assert isinstance(data.train.X, FolderImages) == (mode == "always")
        t = Trainer(exp, data, "batch", {"lr": 0.05, "momentum": 0.9}, seed=3)
        while not t.done:
            t.step_epoch()
        r = t.finish()
        runs[mode] = (data, r)
    (mem, a), (streamed, b) = runs["never"], runs["always"]
    for s in ("train", "val", "test"):
        x, y = getattr(mem, s), getattr(streamed, s)
        assert torch.equal(x.y, y.y), s
        assert torch.equal(x.X[torch.arange(len(x))], y.X[torch.arange(len(y))]), s
    assert torch.equal(mem.mean, streamed.mean) and torch.equal(mem.std, streamed.std)
    pd.testing.assert_frame_equal(pd.DataFrame([vars(m) for m in a.history]), pd.DataFrame([vars(m) for m in b.history]),
                                  check_exact=True)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert (a.train_acc, a.val_acc, a.test_acc) == (b.train_acc, b.val_acc, b.test_acc)


def test_a_streamed_folder_moves_to_a_device_and_normalises_on_the_cpu(tmp_path, monkeypatch):
    """A trial moves the driver's streamed splits to its device: the images decoded there are those of
    the driver (they normalise on the CPU, where they are decoded, then move)."""
    import ray.cloudpickle as cp

    monkeypatch.setenv("BNREP_STREAMING", "always")
    exp = folder_exp(write_folder(tmp_path / "leaves", splits=(("train", 14), ("test", 4)), size=(12, 10)),
                     image_size=8, val_size=6)
    data = load_data(exp)
    idx = torch.arange(5)
    assert data.train.X.mean.device.type == "cpu"
    moved = cp.loads(cp.dumps(data)).to("meta")  # the meta device stands in for a GPU
    assert moved.train.X[idx].device.type == "meta" and moved.train.y.device.type == "meta"
    assert torch.equal(cp.loads(cp.dumps(data)).to("cpu").train.X[idx], data.train.X[idx])
    direct = load_data(exp, device="meta")  # loaded for a device directly: decoded and normalised on the CPU
    assert direct.test.X.mean.device.type == "cpu" and direct.test.X[idx[:3]].device.type == "meta"


def test_streaming_is_chosen_by_size(tmp_path, monkeypatch):
    """Unforced, a folder streams when its float32 splits exceed STREAM_FRACTION of the memory."""
    from bnrep import folders
    from bnrep.folders import streams

    root = write_folder(tmp_path / "leaves", splits=(("train", 4), ("test", 2)), size=(8, 8))
    exp = folder_exp(root)
    monkeypatch.delenv("BNREP_STREAMING", raising=False)
    need = 18 * 3 * 8 * 8 * 4  # bytes of every split as float32
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    monkeypatch.setattr(folders, "STREAM_FRACTION", need / memory * 1.01)
    assert not streams(str(root), exp.image_size)
    monkeypatch.setattr(folders, "STREAM_FRACTION", need / memory * 0.99)
    assert streams(str(root), exp.image_size)


BLIND = '''
import os
hidden = os.environ.get("BNREP_TEST_HIDE")
if hidden:  # this node does not mount that folder
    import builtins
    _isdir, _open = os.path.isdir, builtins.open
    os.path.isdir = lambda p: False if str(p).startswith(hidden) else _isdir(p)

    def _hidden_open(p, *a, **k):
        if str(p).startswith(hidden):
            raise FileNotFoundError(2, "No such file or directory", str(p))
        return _open(p, *a, **k)
    builtins.open = _hidden_open
'''


@pytest.mark.slow
def test_a_folder_that_one_node_does_not_see_is_one_line(tmp_path):
    """On a cluster every node reads the image folder at its path: a node that does not see it (here: a node
    whose processes find no such folder, as on a disk only the head has) is named before any work; a
    folder that every node sees passes."""
    import ray
    from ray.cluster_utils import Cluster

    from bnrep.datasets import DatasetError, folder_fingerprint
    from bnrep.raysession import check_data_on_nodes

    hidden, shared = write_folder(tmp_path / "local"), write_folder(tmp_path / "shared")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(BLIND)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        c.add_node(num_cpus=1)
        blind = c.add_node(num_cpus=1, env_vars={"PYTHONPATH": f"{hooks}:{os.environ.get('PYTHONPATH', '')}",
                                                 "BNREP_TEST_HIDE": str(hidden)})
        c.wait_for_nodes()
        ray.init(address=c.address)
        check_data_on_nodes(ray, f"imagefolder:{shared}")
        with pytest.raises(DatasetError) as e:
            check_data_on_nodes(ray, f"imagefolder:{hidden}")
        assert str(e.value) == (
            f"imagefolder:{hidden} differs on node 127.0.0.1 ({blind.node_id[:8]}: no such folder; here: "
            f"{folder_fingerprint(str(hidden))}): every node must see the folder at that path, on a filesystem "
            f"they all mount")
        assert folder_fingerprint(str(hidden)).startswith("3 classes; train 36, test 12 images; ")
        # the results directory too (bnrep.raysession.check_shared_out): a node with its own disk at --out's path
        from bnrep.config import UsageError
        from bnrep.raysession import check_shared_out
        from bnrep.store import Store

        check_shared_out(ray, Store(str(shared / "runs"), "x"))
        with pytest.raises(UsageError) as e:
            check_shared_out(ray, Store(str(hidden / "runs"), "x"))
        assert str(e.value) == (f"--out {hidden}/runs is not the same directory on node 127.0.0.1 "
                                f"({blind.node_id[:8]}): every node must see the results at that path (a filesystem "
                                f"they all mount, at the same path), or give an s3:// URI")
        assert os.listdir(hidden / "runs" / "x") == []  # the driver's file removed
    finally:
        ray.shutdown()
        c.shutdown()


def test_an_image_folder_that_changed_since_its_results_is_refused(tmp_path):
    """Seeds or conditions added later, or the analysis rerun, would train or measure on other images than
    the models already there: config.json keeps what the folder held (names and sizes) and a stage compares."""
    from bnrep import config
    from bnrep.store import Store

    folder = write_folder(tmp_path / "leaves")
    exp = get_experiment("digits-cnn").override(name="leaves", dataset=f"imagefolder:{folder}")
    store = Store(str(tmp_path / "runs"), "leaves")
    config.write_config(store, config.prepare(store, exp, "final", fresh=False))
    assert store.read_json("config.json")["data"] == "3 classes; train 36, test 12 images; " + \
        f"{sum(p.stat().st_size for p in folder.rglob('*.png')):,} bytes"
    config.prepare(store, exp, "analysis", fresh=False)  # the same folder: fine
    from bnrep.status import stage_status

    assert [s for s, *_ in stage_status(store.out, "leaves")] == ["hparam", "final", "analysis", "report", "writer"]
    shutil.copy(folder / "train" / CLASSES[0] / "000.png", folder / "train" / CLASSES[0] / "999.png")
    with pytest.raises(config.UsageError, match=r"the image folder .*leaves changed since its results were made "
                                                r"\(then 3 classes; train 36, .*; now 3 classes; train 37, "):
        config.prepare(store, exp, "final", fresh=False)
    # bnrep status says so first (its stages read what the results hold, as they were)
    stage, state, detail = stage_status(store.out, "leaves")[0]
    assert (stage, state) == ("data", "changed") and detail.startswith(
        f"the image folder {folder} changed since the results were made (then 3 classes; train 36, "), detail
    assert detail.endswith("): a run refuses it; restore it, or --fresh to start over") and "now 3 classes; train 37," in detail
    config.prepare(store, exp, "final", fresh=True)  # --fresh starts over on the folder as it is


# ---- a dataset entry of one's own: a reader named in the table ----

def read_iris(exp):
    """scikit-learn's iris as 1x2x2 images (its 4 features), 3 classes."""
    from sklearn.datasets import load_iris

    d = load_iris()
    return torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 2, 2), torch.tensor(d.target), 1.0


def read_iris_as_4x4(exp):
    X, y, scale = read_iris(exp)
    return X.repeat(1, 1, 2, 2), y, scale


@pytest.mark.parametrize("entry,line", [
    (dict(reader="tests.test_datasets:read_iris"), None),
    (dict(reader="tests.test_datasets:read_iris", images=100), r"^dataset iris: its reader tests\.test_datasets:read_iris "
                                                                r"gave 150 images where its entry says 100$"),
    (dict(reader="tests.test_datasets:read_iris_as_4x4"), r"gave images of shape \(1, 4, 4\) where its entry says "
                                                          r"\(1, 2, 2\)$"),
    (dict(reader="tests.test_datasets:read_iri"), r"^dataset iris: its reader tests\.test_datasets:read_iri failed "
                                                  r"\(AttributeError: "),
    (dict(), r"^dataset iris: its entry in bnrep.datasets names neither a torchvision class nor a reader"),
])
def test_a_dataset_entry_reads_through_its_reader_and_is_checked_against_it(entry, line, monkeypatch):
    """One entry, its reader named there; a reader that does not match its entry is one line before any work
    (an entry without a reader read 1,440 synthetic 28x28 images of 10 classes)."""
    from bnrep import data, datasets
    from bnrep.datasets import DataError, Dataset

    monkeypatch.setitem(datasets.DATASETS, "iris", Dataset("iris", (1, 2, 2), 3, label="Iris", **entry))
    exp = get_experiment("digits-cnn").override(dataset="iris", test_fraction=0.2, val_size=0.1)
    if line:
        with pytest.raises(DataError, match=line):
            data.check_data(exp)
        return
    assert data.check_data(exp) == 150 - 30 - 12
    d = load_data(exp)
    assert (len(d.train), len(d.val), len(d.test)) == (108, 12, 30) and tuple(d.train.X.shape[1:]) == (1, 2, 2)
    X, y, _ = read_iris(exp)
    got = torch.cat([d.train.y, d.val.y, d.test.y])
    assert sorted(got.tolist()) == sorted(y.tolist())  # every image once, with its own label
    assert input_shape(exp) == (1, 2, 2) and num_classes("iris") == 3


def test_a_torchvision_class_bnrep_does_not_read_is_one_line(monkeypatch, tmp_path):
    from bnrep import data, datasets
    from bnrep.datasets import DataError, Dataset

    monkeypatch.setitem(datasets.DATASETS, "svhn", Dataset("svhn", (3, 32, 32), 10, "SVHN"))
    exp = get_experiment("digits-cnn").override(dataset="svhn")
    with pytest.raises(DataError, match=r"^dataset svhn: torchvision\.datasets\.SVHN is not a kind bnrep reads \(MNIST"):
        data.check_data(exp, str(tmp_path), download=False)  # (was AttributeError: ... no attribute 'train_list')


def test_every_dataset_entry_has_a_reader_and_a_label():
    from bnrep.datasets import DATASETS

    for d in DATASETS.values():
        assert bool(d.torchvision) != bool(d.reader) and d.label, d.name
