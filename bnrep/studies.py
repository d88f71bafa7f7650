"""A study in a file: the experiment a TOML study file defines (`--experiment path/to/study.toml`),
the names a study may take (a folder under --out), and the study a name finds (named_experiment) with what
--out recorded of it (recorded_data)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re

from bnrep.axis import ConditionError, from_table
from bnrep.datasets import DataError, absolute_dataset
from bnrep.experiments import OLD_NAMES, PRESETS, ConfigError, Experiment, get_experiment, renamed

_TOML_TYPES = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,), "tuple": (list, str)}  # "a,b" too


_WORDS = {"float": ("a number", "numbers"), "int": ("a whole number", "whole numbers"), "str": ("a string", "strings"),
          "bool": ("true or false", "")}


def _in_words(annotation: str) -> str:
    """A field's type as a study file gives it: 'tuple[str, ...]' -> 'a list of strings ([...] or "a,b")'."""
    kinds = [a.strip() for a in annotation.split("|") if a.strip() != "None"]
    if "int" in kinds and "float" in kinds:  # int | float: a number
        kinds.remove("int")
    words = []
    for k in kinds:
        if k.startswith("tuple["):
            items = [i.strip() for i in k[len("tuple["):-1].split(",")]
            n = "" if items[-1] == "..." else f"{len(items)} "
            words.append(f'a list of {n}{_WORDS[items[0]][1]} ([...] or "a,b")')
        else:
            words.append(_WORDS[k][0])
    return " or ".join(words)


def _toml_types(annotation: str) -> tuple[type, ...]:
    """The TOML values a field takes, from its annotation ('float | None' -> int, float)."""
    kinds = [a.strip().split("[")[0] for a in annotation.split("|")]
    return tuple(t for k in kinds for t in _TOML_TYPES.get(k, ()))


STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")  # a study's name: a folder under --out
NAME_RULE = "a study's name is letters, digits and . _ + - (at most 64, starting with a letter or digit)"


def load_study(path: str) -> Experiment:
    """The experiment a TOML study file defines: `base = "PRESET"` (optional), then any Experiment
    field; its name is the file's stem unless it sets `name`. ConfigError (one line, naming the file
    and the key) for a file that does not read or parse, an unknown key, a value of the wrong type."""
    from pathlib import Path

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"study file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"study file {path}: not valid TOML ({e})") from None
    except UnicodeDecodeError as e:  # (TOML is UTF-8: a comment saved as Latin-1 by an editor)
        line = e.object[:e.start].count(b"\n") + 1
        raise ConfigError(f"study file {path}: line {line} is not UTF-8 (byte {e.object[e.start]:#04x}), which TOML "
                          f"files must be: save it as UTF-8") from None
    fields = {f.name: f for f in dataclasses.fields(Experiment)}
    base = d.pop("base", None)
    if base is not None and (not isinstance(base, str) or base not in PRESETS):
        raise ConfigError(f"study file {path}: base = {base!r} is not a preset (valid: {', '.join(PRESETS)})")
    both = [(old, new) for old, new in OLD_NAMES.items() if old in d and new in d]  # one would silently win
    if both:
        raise ConfigError(f"study file {path}: {both[0][0]} and {both[0][1]} are both set: give {both[0][1]} "
                          f"alone ({both[0][0]} is its old name)")
    written = {new: old for old, new in OLD_NAMES.items() if old in d}  # a key under its old name, as written
    d = renamed(d)
    if isinstance(d.get("conditions"), dict):  # [conditions] tag = {norm = ..., batch_size = ...}
        try:
            d["conditions"] = from_table(d["conditions"])
        except ConditionError as e:
            raise ConfigError(f"study file {path}: {e}") from None
    for key, value in d.items():
        if key not in fields:
            import difflib

            close = difflib.get_close_matches(key, ["base", *fields, *OLD_NAMES], n=1)
            raise ConfigError(f"study file {path}: unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close
                              else f" (allowed: base, {', '.join(fields)}; norms for conditions)"))
        types = _toml_types(str(fields[key].type))
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise ConfigError(f"study file {path}: {written.get(key, key)} = {value!r} should be "
                              f"{_in_words(str(fields[key].type))}")
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    if "dataset" in d:  # a relative image folder: next to the file, wherever the command runs
        d["dataset"] = absolute_dataset(d["dataset"], os.path.dirname(os.path.abspath(path)))
    d.setdefault("name", Path(path).stem)
    if not STUDY_NAME.fullmatch(d["name"]):  # a folder under --out: no '..', no '/', not empty
        raise ConfigError(f"study file {path}: name = {d['name']!r}: {NAME_RULE}")
    if d["name"] in PRESETS:  # its results would go into (and mix with) the preset's folder under --out
        raise ConfigError(f"study file {path}: its name {d['name']!r} is a preset's, whose results it would "
                          f"mix with: give it a name of its own (name = \"...\", or rename the file)")
    missing = [k for k in ("dataset", "model") if k not in d and base is None]
    if missing:
        raise ConfigError(f"study file {path}: set {' and '.join(missing)} (or base = \"PRESET\" to start "
                          f"from one: {', '.join(PRESETS)})")
    own = [k for k in d if k != "name"]
    if base and "description" not in d:  # not the preset's own words: what this file changes
        d["description"] = f"{base} with this study's {', '.join(own)}" if own else f"{base}, as it is"
    try:
        return PRESETS[base].with_model(d.pop("model", None)).override(**d) if base else Experiment(**d)
    except ConfigError as e:  # a value out of range: the experiment's own check, said of the file
        raise ConfigError(f"study file {path}: {str(e).split(': ', 1)[-1]}") from None


@contextlib.contextmanager
def named_study_file(experiment: str):
    """Within it, a data check that refuses a value of the experiment (DataError.field: val_size, test_fraction)
    names the study file `experiment` is, as the file's own errors do."""
    try:
        yield
    except DataError as e:
        if not (e.field and experiment.endswith(".toml")):
            raise
        raise DataError(f"study file {experiment}: {e}", field=e.field) from None


def study_name(experiment: str) -> str:
    """The name results are stored under for `--experiment`: a study file's own (its `name`, else its stem),
    else the argument itself (a preset, or a study found by name under --out)."""
    return load_study(experiment).name if experiment.endswith(".toml") else experiment


def held_studies(out: str, presets: bool = False) -> list[str]:
    """The names of the studies `out` holds (a folder with a config.json), sorted, presets left out unless
    `presets`; none when `out` does not open."""
    from bnrep.store import Store

    try:
        return sorted(n for n in Store(out, "").list_dir("") if (presets or n not in PRESETS)
                      and Store(out, n).exists("config.json"))
    except (OSError, ValueError):
        return []


def unknown_experiment(name: str, out: str) -> ConfigError:
    """One line for an --experiment that names nothing: the presets, the studies --out holds, the closest."""
    import difflib

    held = held_studies(out)
    close = difflib.get_close_matches(name, [*PRESETS, *held], n=1)
    from bnrep.config import DEFAULT_OUT

    missing = (out and "://" not in out and not os.path.isdir(out)  # where a study made by flags would be
               and os.path.abspath(out) != os.path.abspath(DEFAULT_OUT))  # (--out given: a typo there?)
    return ConfigError(f"unknown experiment {name!r} (valid: {', '.join([*PRESETS, *held])}, or a study file "
                       f"NAME.toml)" + (f"; did you mean {close[0]!r}?" if close else "")
                       + (f"; the results folder --out {out} does not exist" if missing else ""))


def named_experiment(name: str, out: str | None) -> Experiment:
    """A preset or a study file (get_experiment); else an experiment that --out holds (its config.json:
    a study run from its file before, found by its name)."""
    try:
        return get_experiment(name)
    except ConfigError:
        if out is None or name.endswith(".toml") or "/" in name:
            raise
        from bnrep.config import load_experiment, read_config
        from bnrep.store import Store

        try:
            store = Store(out, name)
            if read_config(store):
                return load_experiment(store, name)
        except (OSError, ValueError):  # an --out that does not open: the unknown name is the error to show
            pass
        raise unknown_experiment(name, out) from None


def recorded_data(args, name: str) -> dict:
    """The model and dataset the preset `name`'s study under --out was made with (its config.json), where no flag
    names them: a later stage, or a rerun, goes on with them ({} where --out holds nothing). Not under --fresh
    (which starts the preset's study anew), nor for a study file or a study found by its name (their model and
    data are their own). A local --out only: an object store is reached once its checks have run (an endpoint
    that does not answer would hang here), and its stages take --model and --dataset as given."""
    from bnrep.config import read_config
    from bnrep.store import Store, is_uri

    out = getattr(args, "out", None)
    if not out or is_uri(out) or getattr(args, "experiment", None) not in PRESETS or getattr(args, "fresh", False):
        return {}

    try:
        made = renamed(read_config(Store(out, name)).get("experiment", {}))  # (older files: arch, not model)
    except (OSError, ValueError):  # an --out that does not open: the stage's own check says so
        return {}
    return {f: made[f] for f in ("model", "dataset") if made.get(f) and getattr(args, f, None) is None}
