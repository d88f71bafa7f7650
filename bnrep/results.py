"""One experiment's result tables in memory, and the normalisation axis they are read along.

The vocabulary every report part shares (one home): the order, colour, label
and short tag of each normalisation; the `Results` container; seed means and
standard deviations (pandas' sample std, ddof=1); the optimal-k rows of the
kmeans table. No file access (bnrep.report loads) and no plotting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from bnrep.experiments import Experiment
from bnrep.store import with_norm

N_CLASSES = 10  # every dataset here has 10 classes

# ==== the normalisation axis: one colour, label and tag per norm, everywhere ====

NORMS = ("batch", "group", "layer", "none")  # display order; `none` is the reference
REF = "none"
COLORS = {"batch": "tab:blue", "none": "tab:orange", "group": "tab:green", "layer": "tab:purple"}  # paper: blue/orange
SHORT = {"batch": "BN", "group": "GN", "layer": "LN", "none": "NBN"}
NORM_NAMES = {"batch": "BatchNorm", "group": "GroupNorm", "layer": "LayerNorm", "none": "no norm"}


def is_paper_pair(norms) -> bool:
    """Only BatchNorm and no normalisation: the paper's study, worded as the paper words it."""
    return set(norms) <= {"batch", "none"}


def norm_labels(norms) -> dict[str, str]:
    """Legend labels; 'no BatchNorm' while the study is the paper's pair."""
    return {**NORM_NAMES, "none": "no BatchNorm" if is_paper_pair(norms) else "no norm"}


def ordered(norms) -> list[str]:
    return sorted(set(norms), key=lambda n: NORMS.index(n) if n in NORMS else len(NORMS))


def present_norms(*dfs: pd.DataFrame) -> list[str]:
    return ordered({n for df in dfs if "norm" in df for n in df["norm"].dropna().unique()})


def pair_names(norm: str, norms) -> tuple[str, str]:
    """How the evidence names the two sides: ('BN', 'no BN') or ('GN', 'no norm')."""
    return SHORT[norm], "no BN" if is_paper_pair(norms) else "no norm"


# ==== one experiment's tables ====

@dataclass(eq=False)
class Results:
    """One experiment's tables (empty DataFrame where a table is missing) and its config.json record."""
    experiment: Experiment
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    n_classes: int = N_CLASSES
    config: dict = field(default_factory=dict)  # config.json: train_hash, analysis_hash, ...

    def __post_init__(self) -> None:
        self.tables = {k: with_norm(v.copy()) for k, v in self.tables.items() if v is not None}

    def table(self, name: str) -> pd.DataFrame:
        df = self.tables.get(name)
        return df if df is not None else pd.DataFrame()

    @property
    def norms(self) -> list[str]:
        """Normalisations with results, else those the experiment lists."""
        have = present_norms(*self.tables.values())
        return have or ordered(getattr(self.experiment, "norms", ("batch", "none")))

    @property
    def label(self) -> str:
        return experiment_label(self.experiment)


def model_label(arch: str, dataset: str) -> str:
    """As in the paper's Table 1: 'CNN MNIST', 'VGG-16 CIFAR10'."""
    arch = {"cnn": "CNN", "vgg16": "VGG-16", "resnet18": "ResNet-18"}.get(arch, arch)
    data = {"digits": "Digits", "mnist": "MNIST", "fashion-mnist": "Fashion-MNIST",
            "cifar10": "CIFAR10", "synthetic": "Synthetic"}.get(dataset, dataset)
    return f"{arch} {data}"


def experiment_label(e: Experiment) -> str:
    return model_label(e.arch, e.dataset)


# ==== aggregation ====

def seed_stats(df: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """mean, std (ddof=1), n (non-NaN) and n_nan of `value` per `keys`, over seeds."""
    g = df.groupby(keys, sort=True)[value]
    s = g.agg(mean="mean", std="std", n="count", size="size").reset_index()
    s["n_nan"] = s.pop("size") - s["n"]
    return s


def n_seeds(df: pd.DataFrame) -> dict[str, int]:
    return {n: int(k) for n, k in df.groupby("norm")["seed"].nunique().items()} if len(df) else {}


def seeds_text(df: pd.DataFrame) -> str:
    n = n_seeds(df)
    if len(set(n.values())) == 1:
        k = next(iter(n.values()))
        return f"{k} seed" + ("s" if k != 1 else "")
    return " / ".join(f"{n[m]} ({SHORT.get(m, m)})" for m in ordered(n)) + " seeds"


def shown(df: pd.DataFrame, first_layer: int) -> pd.DataFrame:
    return df[df["layer_index"] >= first_layer] if len(df) else df


def at_eps(df: pd.DataFrame) -> pd.DataFrame:
    """Sparsity rows at the smallest threshold (the paper's exact zero when eps = 0 was asked)."""
    return df[df["eps"] == df["eps"].min()] if len(df) and "eps" in df else df


def optimal_k(kmeans: pd.DataFrame) -> pd.DataFrame:
    """Per model and layer, the optimal k (the analysis stage's `optimal` row) and its DBI.

    The analysis stage marks at most one row per (model, layer) and none for a
    dead layer (every DBI NaN), so such a layer has no row here.
    """
    cols = ["model_id", "bn", "norm", "seed", "layer", "layer_index", "k_opt", "dbi"]
    if kmeans.empty or "optimal" not in kmeans:
        return pd.DataFrame(columns=cols)
    best = kmeans[kmeans["optimal"].astype(bool)].sort_values(["model_id", "layer_index"])
    return best.rename(columns={"k": "k_opt"})[cols].reset_index(drop=True)


def pair(df: pd.DataFrame, norm: str) -> pd.DataFrame:
    """The rows of `norm` and of the reference (none)."""
    return df[df["norm"].isin([norm, REF])] if len(df) else df
