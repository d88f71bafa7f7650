"""bnrep: what normalisation does to a network's hidden representations.

Reproduces Potgieter, Mouton & Davel, "Impact of Batch Normalization on
Convolutional Network Representations", as a Ray-distributed sweep system,
and generalises it (normalisations, architectures, measures).

    >>> study = bnrep.open_results("runs", "digits-cnn")   # results in a notebook (bnrep.api)
    >>> study = bnrep.run(out="runs", smoke_test=True)     # or the whole study, as `bnrep run` runs it
"""

__version__ = "0.3.0"  # the one place the version lives (pyproject.toml reads it)


_LAZY = ("open_results", "Study", "run", "RunFailed")  # bnrep.api's, imported on first use (`bnrep status` needs no torch)
__all__ = [*_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from bnrep import api

        return getattr(api, name)
    raise AttributeError(f"module 'bnrep' has no attribute {name!r}")


def __dir__():  # tab completion and help(bnrep) offer them too
    return sorted([*globals(), *_LAZY])
