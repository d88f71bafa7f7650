"""Result tables with known values for the report tests (schema: design.md).

`make_tables` builds every table of one experiment from small per-layer
rules, so a test states the pattern it needs (BN sparser in these layers,
optimal k here) and the expected findings follow from it. Defaults look like
the paper's MNIST CNN: BN less sparse except the last layer, class DBI
falling with depth and lower with BN, optimal k growing to 10 clusters,
earlier with BN. Rules take (bn, layer_index) with bn True/False for the
paper's pair (batch/none) and the norm's name ("group", "layer") for the
others; the defaults give group and layer norm values of their own.

    python tests/report_fixtures.py /tmp/fx   # writes digits-cnn and cifar10-vgg16, then the reports
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bnrep.experiments import get_experiment
from bnrep.measures import NO_BATCH_STATISTICS
from bnrep.store import Store

CNN_LAYERS = ["conv1", "conv2", "conv3", "conv4", "fc1"]
CNN_CHANNELS = [16, 32, 64, 128, 100]
VGG_LAYERS = [f"conv{i}" for i in range(1, 14)]
VGG_CHANNELS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


TAGS = {"batch": "bn", "none": "nobn", "group": "gn", "layer": "ln"}  # model_id tags


def rule_arg(norm: str):
    """What a rule gets: True / False for batch / none (the paper's pair), else the norm's name."""
    return {"batch": True, "none": False}.get(norm, norm)


def cnn_sparsity(bn, li: int) -> float:
    return {True: [0.30, 0.35, 0.40, 0.45, 0.80], False: [0.40, 0.50, 0.55, 0.60, 0.70],
            "group": [0.20, 0.25, 0.30, 0.35, 0.40], "layer": [0.50, 0.55, 0.60, 0.65, 0.75]}[bn][li - 1]


def cnn_class_dbi(bn, li: int) -> float:
    return (6.0 - li) * {True: 0.8, False: 1.0, "group": 0.7, "layer": 0.9}[bn]


def cnn_kopt(bn, li: int) -> int:
    return {True: [2, 4, 10, 10, 10], False: [2, 2, 3, 9, 10], "group": [3, 10, 10, 10, 10],
            "layer": [2, 2, 2, 4, 10]}[bn][li - 1]


def cnn_kmeans_dbi(bn, li: int) -> float:
    better = 0.0 if bn is False else 0.1  # BN, GN, LN: a little worse early, purer at the end
    return [1.0, 1.5, 2.0, 1.5, 0.8][li - 1] + better * (li < 5) - 2 * better * (li == 5)


def cnn_nc1(bn, li: int) -> float:  # within-class variability falls with depth, lower with BN
    return 3.0 / li * {True: 0.5, False: 0.8, "group": 0.4, "layer": 0.7}[bn]


def cnn_erank(bn, li: int) -> float:
    return 4.0 + li * {True: 2.0, False: 1.0, "group": 2.5, "layer": 1.5}[bn]


def cnn_cka_within(bn, li: int) -> float:  # seed vs seed within one norm; BN seeds agree more
    return 0.95 * (0.98 if bn is True else 0.95) ** li


def cnn_cka_cross(bn_a, bn_b, li: int) -> float:  # norm A vs norm B, same seed: below the seed baseline
    return 0.85 * 0.9 ** li


def eps_growth(s: float, eps: float) -> float:
    """Sparsity at threshold eps from the exact-zero sparsity s: more values count as zero."""
    return s + (1 - s) * min(1.0, 2 * eps)


def optimal_rows(dbi: np.ndarray) -> np.ndarray:
    """The analysis stage's `optimal` column: lowest DBI, ties to the smallest k, none when all NaN."""
    flags = np.zeros(len(dbi), bool)
    if not np.isnan(dbi).all():
        flags[np.nanargmin(dbi)] = True  # first minimum: the smallest k, as k_range ascends
    return flags


def make_tables(experiment: str = "digits-cnn", seeds: int = 4, layers=CNN_LAYERS, channels=CNN_CHANNELS,
                sparsity=cnn_sparsity, class_dbi=cnn_class_dbi, kopt=cnn_kopt, kmeans_dbi=cnn_kmeans_dbi,
                acc=None, k_range=range(2, 16), noise: float = 0.01, k_jitter: int = 0, epochs: int = 20,
                rng: int = 0, norms=("batch", "none"), eps=(0.0,), sparsity_eps=None, nc1=cnn_nc1,
                erank=cnn_erank, cka_within=cnn_cka_within, cka_cross=cnn_cka_cross,
                new_tables: bool = True) -> dict[str, pd.DataFrame]:
    """Every report table; per-seed noise is +-`noise` (uniform) on top of the rules.

    `eps`: the sparsity thresholds (one row per eps in the sparsity tables), sparsity at
    eps from `sparsity_eps(bn, li, eps)` (default: `eps_growth` of the rule's value).
    `new_tables=False`: the tables as results written before nc1, effective_rank and
    cka existed (and without dead_channels).
    """
    e, g = get_experiment(experiment), np.random.default_rng(rng)
    acc = acc or (lambda bn, seed: (1.0, 0.99 if bn else 0.985, 0.985 if bn else 0.98))
    sparsity_eps = sparsity_eps or (lambda bn, li, x: eps_growth(sparsity(bn, li), x))
    t = {k: [] for k in ("training", "training_history", "channel_sparsity", "layer_sparsity", "class_dbi", "kmeans")}
    for norm in norms:
        bn = rule_arg(norm)
        for seed in range(seeds):
            key = dict(model_id=f"{TAGS[norm]}-s{seed}", bn=norm == "batch", norm=norm, condition=norm, seed=seed)
            tr, va, te = acc(bn, seed)
            t["training"].append(dict(key, experiment=e.name, dataset=e.dataset, arch=e.arch, lr=0.01,
                                      momentum=0.99, epochs=epochs, train_acc=tr, val_acc=va, test_acc=te,
                                      interpolated=tr >= 1.0))
            n_ep = epochs - (1 if bn is False else 0) * seed  # no-BN seeds stop at different epochs
            for ep in range(1, n_ep + 1):
                f = 1 - np.exp(-ep / (n_ep / (2.5 if bn is False else 4.0)))
                t["training_history"].append(dict(key, epoch=ep, lr=0.01, train_loss=2.3 * (1 - f) + 0.005,
                                                  train_acc=0.1 + 0.9 * f, val_acc=0.1 + (va - 0.1) * f))
            for li, (name, C) in enumerate(zip(layers, channels), start=1):
                lk = dict(key, layer=name, layer_index=li)
                for x in eps:
                    s = float(np.clip(sparsity_eps(bn, li, x) + g.uniform(-noise, noise), 0, 1))
                    cs = np.clip(s + g.uniform(-0.05, 0.05, C), 0, 1)
                    dead = dict(dead_channels=int((cs >= 1.0).sum())) if new_tables else {}
                    t["layer_sparsity"].append(dict(lk, eps=x, sparsity=s, **dead))
                    t["channel_sparsity"] += [dict(lk, eps=x, channel=c, sparsity=float(v)) for c, v in enumerate(cs)]
                cd = class_dbi(bn, li)
                t["class_dbi"].append(dict(lk, dbi=cd if np.isnan(cd) else cd + g.uniform(-noise, noise)))
                ko = kopt(bn, li) + (int(g.integers(-k_jitter, k_jitter + 1)) if li < len(layers) else 0)
                kd = kmeans_dbi(bn, li) + g.uniform(-noise, noise)
                dbi = np.array([kd + 0.05 * (k - ko) ** 2 for k in k_range])
                t["kmeans"] += [dict(lk, k=k, dbi=d, inertia=100.0 / k, optimal=o)
                                for k, d, o in zip(k_range, dbi, optimal_rows(dbi))]
    t = {k: pd.DataFrame(v) for k, v in t.items()}
    if new_tables:
        t.update(measure_tables(t["training"], layers, nc1, erank, cka_within, cka_cross, noise, rng))
    return t


def measure_tables(training, layers, nc1, erank, cka_within, cka_cross, noise, rng) -> dict[str, pd.DataFrame]:
    """nc1, effective_rank (model x layer) and cka (model pair x layer: every pair of norms at one seed,
    every pair of seeds in one norm), with their own random stream so the older tables keep their values."""
    g = np.random.default_rng(rng + 1000)
    per_layer = {"nc1": [], "effective_rank": [], "cka": []}
    models = training[["model_id", "bn", "norm", "condition", "seed"]].to_dict("records")
    for m in models:
        for li, name in enumerate(layers, start=1):
            lk = dict(m, layer=name, layer_index=li)
            for table, rule in (("nc1", nc1), ("effective_rank", erank)):
                v = rule(rule_arg(m["norm"]), li)
                per_layer[table].append(dict(lk, value=v + g.uniform(-noise, noise),
                                             reason="dead layer" if np.isnan(v) else ""))
    for i, a in enumerate(models):
        for b in models[i + 1:]:
            same_norm, same_seed = a["norm"] == b["norm"], a["seed"] == b["seed"]
            if same_norm == same_seed:
                continue  # neither a seed pair nor a norm pair
            for li, name in enumerate(layers, start=1):
                ra, rb = rule_arg(a["norm"]), rule_arg(b["norm"])
                v = cka_within(ra, li) if same_norm else cka_cross(ra, rb, li)
                per_layer["cka"].append(dict(model_a=a["model_id"], model_b=b["model_id"], norm_a=a["norm"], condition_a=a["norm"],
                                             norm_b=b["norm"], condition_b=b["norm"], seed_a=a["seed"], seed_b=b["seed"], layer=name,
                                             layer_index=li, cka=float(np.clip(v + g.uniform(-noise, noise), 0, 1))))
    per_layer |= later_measures(models, layers, np.random.default_rng(rng + 2000))
    per_layer["linear_probe"] = probe_rows(models, layers, np.random.default_rng(rng + 3000))
    return {k: pd.DataFrame(v) for k, v in per_layer.items()}


def probe_rows(models, layers, g) -> list[dict]:
    """linear_probe: accuracy rising with depth, to 0.99 with BatchNorm and 0.95 without."""
    return [dict(m, layer=name, layer_index=li, activation="ReLU", reason="",
                 accuracy=min(1.0, (0.99 if m["norm"] == "batch" else 0.95) - 0.05 * (len(layers) - li) + g.uniform(-0.01, 0.01)))
            for m in models for li, name in enumerate(layers, start=1)]


def later_measures(models, layers, g) -> dict[str, list[dict]]:
    """signal_propagation, gradient_norms and train_eval: variance grows with depth without a norm,
    gradients grow toward the input with BatchNorm (Yang et al. 2019); only BatchNorm has running statistics."""
    t = {"signal_propagation": [], "gradient_norms": [], "train_eval": []}
    for m in models:
        bn = m["norm"] == "batch"
        for li, name in enumerate(layers, start=1):
            lk = dict(m, layer=name, layer_index=li, activation="ReLU", reason="")
            var = 1.0 if bn else 1.5 ** li
            t["signal_propagation"].append(dict(lk, input_mean_sq=0.1 * var * g.uniform(0.9, 1.1), input_var=var,
                                                output_mean_sq=0.3 * var, output_var=0.35 * var * g.uniform(0.9, 1.1)))
            t["gradient_norms"].append(dict(lk, gradient_norm=(2.0 ** (len(layers) - li) if bn else 1.0)
                                            * g.uniform(0.9, 1.1)))
            t["train_eval"].append(dict(lk, cka=0.99 - 0.01 * li + g.uniform(-0.005, 0.005) if bn else math.nan,
                                        rel_diff=0.05 * li if bn else math.nan,
                                        reason="" if bn else NO_BATCH_STATISTICS))
    return t


def write_tables(out, experiment: str, tables: dict[str, pd.DataFrame], parts: int = 2) -> None:
    """Each table split over `parts` Parquet parts (by model), as the stages write them."""
    store = Store(str(out), experiment)
    for name, df in tables.items():
        key = "model_a" if name == "cka" else "model_id"
        ids = sorted(df[key].unique())
        for i in range(parts):
            chunk = df[df[key].isin(ids[i::parts])]
            if len(chunk):
                store.write_part(name, f"part-{i}", chunk, config_hash="fixture")


def vgg_sparsity(bn: bool, li: int) -> float:  # both grow to conv5; then BN keeps growing, no BN falls
    return min(0.2 + 0.05 * li, 0.85) if bn else 0.2 + 0.05 * min(li, 5) - 0.03 * max(li - 5, 0)


def vgg_class_dbi(bn: bool, li: int) -> float:  # BN purer except conv11-12, as in the paper
    return (14 - li) * 0.3 * (0.85 if bn and li not in (11, 12) else 1.0)


def vgg_kopt(bn: bool, li: int) -> int:
    return ([2] * 5 + ([5, 6, 6, 6, 6, 6, 10, 10] if bn else [9, 3, 3, 4, 4, 6, 8, 10]))[li - 1]


def vgg_kmeans_dbi(bn: bool, li: int) -> float:
    return 1.5 - 0.05 * li - (0.1 if bn and li not in (11, 12) else 0.0)


def vgg_acc(bn: bool, seed: int) -> tuple[float, float, float]:
    return (0.9999, 0.87 + 0.003 * seed, 0.86) if bn else (0.9998, 0.81 + 0.01 * seed, 0.79)


def vgg_tables(**kw) -> dict[str, pd.DataFrame]:
    """Paper-like VGG16 / CIFAR10: BN sparser, BN purer except conv11-12, optimal k jitters by seed."""
    kw = {"channels": VGG_CHANNELS, "k_jitter": 1, **kw}
    return make_tables("cifar10-vgg16", layers=VGG_LAYERS, sparsity=vgg_sparsity, class_dbi=vgg_class_dbi,
                       kopt=vgg_kopt, kmeans_dbi=vgg_kmeans_dbi, acc=vgg_acc, **kw)


if __name__ == "__main__":
    import sys

    from bnrep.report import build_report

    out = sys.argv[1]
    write_tables(out, "digits-cnn", make_tables())
    write_tables(out, "cifar10-vgg16", vgg_tables())
    for n in ("digits-cnn", "cifar10-vgg16"):
        print(build_report(out, n).summary)
    print(build_report(out, ["digits-cnn", "cifar10-vgg16"]).summary)
