"""The study's axis: conditions, each a normalisation plus optional training overrides.

A study compares conditions. A condition without overrides is a normalisation
(`batch`, `group:8`, `none`: bnrep.norms), so `--norms batch,none` is the
paper's axis as before. A condition with overrides has a tag of its own:

    --conditions "batch; bn-b8:batch,batch_size=8; gn-b8:group:32,batch_size=8; ghost:16; ws+group"

    ITEM      [TAG:]NORM[,FIELD=VALUE ...][,label=TEXT][,color=COLOUR]
    TAG       letters, digits and . _ + - (it names the models: cnn-bn-b8-s0); not a
              normalisation's name or tag
    FIELD     a training field of the experiment (OVERRIDES): batch_size, weight_decay, lr, ...

Items are separated by `;`. A plain normalisation needs no tag (a tag given to
it is dropped: its models are the normalisation's). The label defaults to the
normalisation's label and the overrides ("BatchNorm at batch size 8": no comma, since
captions list conditions with commas), the colour to a shade of the normalisation's colour
family (ghost BatchNorm's is BatchNorm's). Each condition is stored in
one canonical spelling (`bn-b8:batch,batch_size=8`), which is what
config.json records; `register` makes its tag known to every lookup of
bnrep.norms (tag, label, colour, display order, the modules it builds).

A study file (TOML) gives the same as a string, a list of items, or a table:

    [conditions]
    batch = {}                                   # a normalisation
    bn-b8 = {norm = "batch", batch_size = 8, label = "BatchNorm, batch 8"}
"""

from __future__ import annotations

import dataclasses
import re

from bnrep.norms import CONDITIONS, FAMILIES, NORMS, Norm, NormError, get_norm, register, sort_key

# Training fields a condition may change, with their types (the rest of the recipe is shared).
OVERRIDES = {"batch_size": int, "weight_decay": float, "optimizer": str, "lr": float, "momentum": float,
             "lr_gamma": float, "lr_step_epochs": int, "max_epochs": int, "stop": str, "patience": float}
KINDS = {int: "a whole number", float: "a number", str: "a word"}
DISPLAY = ("label", "color")
TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,31}")
SHADES = {  # colours of conditions built on a normalisation, by their order among its conditions; apart (RGB >= 0.15)
    # from every norm's own colour and the ghost/group sizes' (test_every_condition_of_a_study_wears_its_own_colour)
    "batch": ("navy", "royalblue", "deepskyblue", "lightskyblue", "slateblue", "cadetblue"),
    "group": ("darkgreen", "limegreen", "yellowgreen", "olive", "seagreen", "darkseagreen"),
    "none": ("saddlebrown", "gold", "peru", "tan", "khaki", "chocolate"),  # apart from none's tab:orange
    "renorm": ("red", "mediumvioletred", "tomato", "deeppink", "palevioletred", "darkmagenta"),  # its sizes' reds
}
OTHER_SHADES = ("crimson", "teal", "indigo", "goldenrod", "magenta", "dimgray")


class ConditionError(ValueError):
    """A condition that cannot be parsed; the message is one line."""


def split_items(text) -> list[str]:
    """`a; b` or `a,b` (--norms: norms only), or a list of items -> items, stripped, empty ones dropped."""
    if isinstance(text, str):
        parts = text.split(";") if ";" in text or "=" in text else text.split(",")
    elif isinstance(text, (list, tuple)):
        parts = list(text)
    else:  # one value (a number in a hand-written file): the one-line error of an unknown norm follows
        parts = [str(text)]
    return [str(p).strip() for p in parts if str(p).strip()]


def parse(item: str) -> tuple[str, str, dict, dict]:
    """'bn-b8:batch,batch_size=8' -> (tag, norm, overrides, display); tag '' for a plain norm."""
    head, *rest = [p.strip() for p in item.split(",")]
    if "=" in head or head.endswith(":"):  # b8:batch_size=8, batch_size=8, b8: (the norm left out)
        tag, colon, first = head.partition(":")
        if not colon or "=" in tag:
            tag, first = "TAG", head
        field = next((kv for kv in (first, *rest) if "=" in kv), "batch_size=8")
        raise ConditionError(f"condition {item!r} names no normalisation: a condition is TAG:NORM,FIELD=VALUE,... "
                             f"(e.g. {tag}:batch,{field})")
    if is_norm(head):
        tag, norm = "", head
    else:
        tag, _, norm = head.partition(":")
        if not norm or (tag in FAMILIES or tag in NORMS) and not is_norm(norm):  # no norm; ghost:x, batch:8
            try:
                get_norm(head)
            except NormError as e:
                raise ConditionError(str(e)) from None
        if norm in CONDITIONS:
            raise ConditionError(f"condition {item!r}: {norm!r} is a condition's tag, not a normalisation")
        try:  # Renorm:20, ghots:4: a family's member miscased or misspelt, read as TAG:NORM: said as the whole
            get_norm(head if norm.isdigit() else norm)
        except NormError as e:
            raise ConditionError(f"condition {item!r}: {e}") from None
    overrides, display = {}, {}
    for kv in rest:
        key, eq, value = (x.strip() for x in kv.partition("="))
        if not eq or not value:
            raise ConditionError(f"condition {item!r}: {kv!r} is not FIELD=VALUE")
        if key in DISPLAY:
            if key == "color" and not _is_colour(value):
                raise ConditionError(f"condition {item!r}: color {value!r} is not a colour matplotlib knows "
                                     f"(a name like tab:red or navy, or #rrggbb)")
            display[key] = value
        elif key in OVERRIDES:
            try:
                overrides[key] = OVERRIDES[key](value)
            except ValueError:
                raise ConditionError(f"condition {item!r}: {key} needs {KINDS[OVERRIDES[key]]}, "
                                     f"got {value!r}") from None
        else:
            raise ConditionError(f"condition {item!r}: {key!r} is not a field a condition can change "
                                 f"(valid: {', '.join(OVERRIDES)}, label, color)")
    if overrides and not tag:
        raise ConditionError(f"condition {item!r} changes {', '.join(overrides)}: give it a tag, "
                             f"e.g. mine:{item}")
    if not overrides:
        if display:
            raise ConditionError(f"condition {item!r}: label and color belong to conditions with overrides; "
                                 f"a normalisation keeps its own")
        tag = ""
    if tag:
        check_tag(tag, item)
    return tag, norm, overrides, display


def _is_colour(value: str) -> bool:
    from matplotlib.colors import is_color_like

    return is_color_like(value)


def is_norm(name: str) -> bool:
    """A normalisation of bnrep.norms (not a condition's tag)."""
    if name in CONDITIONS:
        return False
    try:
        get_norm(name)
        return True
    except NormError:
        return False


def check_tag(tag: str, item: str) -> None:
    if not TAG.fullmatch(tag):
        raise ConditionError(f"condition {item!r}: tag {tag!r} must be letters, digits and . _ + - "
                             f"(at most 32, starting with a letter or digit)")
    taken = {*NORMS, *FAMILIES, *(n.tag for n in NORMS.values())}
    family_tags = "|".join(re.escape(make(1).tag.removesuffix("1")) for _, make in FAMILIES.values())  # gn, gbn
    if tag in taken or re.fullmatch(rf"(?:{family_tags})\d+", tag):  # a family member's tag: group:8 -> gn8
        raise ConditionError(f"condition {item!r}: tag {tag!r} is a normalisation's name or tag; choose another")


def dropped_tag(item: str) -> str:
    """The tag given to a plain normalisation (`x:group`), which parse drops; '' when there is none."""
    head = item.split(",")[0].strip()
    if is_norm(head) or ":" not in head:
        return ""
    return head.partition(":")[0] if not parse(item)[0] else ""


def check_tags(items) -> None:
    """ConditionError when a tag dropped from a plain normalisation names another condition of `items` (the user
    meant two conditions of that tag; the tables would show one under it, the other under the norm's name)."""
    names = {name_of(c) for c in items}
    for c in items:
        tag = dropped_tag(c)
        if tag in names:
            raise ConditionError(f"condition {c!r}: tag {tag!r} names another condition too; a plain "
                                 f"normalisation needs no tag (its models are {parse(c)[1]}'s): give a tag once")


def canonical(item: str) -> str:
    """The one spelling config.json stores: the norm's name, or TAG:NORM,fields sorted,label,color."""
    return _spell(*parse(item))


def with_overrides(item: str, **changes) -> str:
    """The condition `item` with some of its overrides' values changed (canonical spelling)."""
    tag, norm, overrides, display = parse(item)
    return _spell(tag, norm, {**overrides, **changes}, display)


def _spell(tag: str, norm: str, overrides: dict, display: dict) -> str:
    if not tag:
        return norm
    fields = [f"{k}={v}" for k, v in sorted(overrides.items())] + [f"{k}={display[k]}" for k in DISPLAY if k in display]
    return ",".join([f"{tag}:{norm}", *fields])


def name_of(item: str) -> str:
    """The condition's name on the axis and in every table: its tag, or the norm's name."""
    tag, norm, _, _ = parse(item)
    return tag or norm


def hue_family(name: str) -> str:
    """The family of hues a condition's colour is drawn from: its normalisation's SHADES family (batch, group,
    none, renorm), else that of the norm it starts as (ghost:B: batch's); "" for the other norms, which share
    OTHER_SHADES."""
    entry = get_norm(name)
    base = get_norm(entry.base) if entry.base else entry
    family = base.name.partition(":")[0].removeprefix("ws+")
    return family if family in SHADES else base.starts_as if base.starts_as in SHADES else ""


def entries(items) -> list[Norm]:
    """The norm-table entries of conditions with overrides, coloured by their order per normalisation (the shades
    are apart from every norm's own colour: SHADES)."""
    out, per_base = [], {}
    parsed = [p for p in map(parse, items) if p[0]]
    # coloured in display order (the normalisation's, then the overrides' values): the same colours however given
    parsed.sort(key=lambda p: (sort_key(p[1])[:2], [(k, str(v).zfill(12)) for k, v in sorted(p[2].items())], p[0]))
    for tag, norm, overrides, display in parsed:
        base = get_norm(norm)
        family = hue_family(base.name)
        shades = SHADES.get(family, OTHER_SHADES)
        i = per_base[family] = per_base.get(family, -1) + 1
        said = " and ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(overrides.items()))
        out.append(dataclasses.replace(
            base, name=tag, tag=tag, short=tag, label=display.get("label", f"{base.label} at {said}"),
            color=display.get("color", shades[i % len(shades)]), base=base.name,
            overrides=tuple(sorted(overrides.items()))))
    return out


def register_all(items) -> None:
    for entry in entries(items):
        register(entry)


def redefined(studies: dict[str, tuple[str, ...]]) -> str | None:
    """A line naming a tag two studies ({name: conditions}) define differently, else None: one process
    knows one definition per tag (register), so a report over both would label one study's models with
    the other's definition."""
    seen: dict[str, tuple[str, str]] = {}
    for study, items in studies.items():
        for item in items:
            name = name_of(item)
            if name in seen and seen[name][1] != item:
                return (f"{seen[name][0]} and {study} define condition {name} differently ({seen[name][1]} / "
                        f"{item}): report them one by one, or give one of them another tag")
            seen.setdefault(name, (study, item))
    return None


def axis_word(names) -> str:
    """What the axis is called in tables and prose: 'norm' while every entry is a normalisation,
    else 'condition'."""
    return "condition" if any(name in CONDITIONS for name in names) else "norm"


def overrides_of(name: str) -> dict:
    """The training fields condition `name` changes ({} for a normalisation)."""
    return dict(get_norm(name).overrides)


def from_table(table: dict) -> list[str]:
    """A study file's [conditions] table -> items: tag = {norm = ..., FIELD = VALUE, label, color}."""
    items = []
    for tag, spec in table.items():
        if isinstance(spec, str):
            spec = {"norm": spec}
        if not isinstance(spec, dict):
            raise ConditionError(f"[conditions] {tag}: give a table {{norm = ..., batch_size = ...}} or a norm name")
        spec = dict(spec)
        norm = str(spec.pop("norm", tag))
        commas = [k for k, v in spec.items() if "," in str(v)]
        if commas:  # a condition's fields are separated by commas (config.json keeps it as one string)
            raise ConditionError(f"[conditions] {tag}: {commas[0]} {spec[commas[0]]!r} holds a comma, which "
                                 f"separates a condition's fields: write it without one")
        if not spec and tag != norm:
            raise ConditionError(f"[conditions] {tag} = {{norm = {norm!r}}} changes no field: list it as {norm} "
                                 f"(a normalisation keeps its own name), or give it a field to change")
        fields = [f"{k}={v}" for k, v in spec.items()]
        items.append(",".join([f"{tag}:{norm}" if fields else norm, *fields]))
    return items


def twin_conditions(e) -> str | None:
    """Why two of the conditions of `e` (a bnrep.experiments.Experiment) would train the same models (an
    override that repeats the study's own value: `batch` beside `bn-b64:batch,batch_size=64` at batch size 64),
    or None. Checked where a run is asked for (bnrep.flags.resolve_experiment), not where results are read:
    results made so still open."""
    recipes: dict = {}
    for n in e.norms:
        norm, changes = e.condition(n)  # (an lr or momentum set is fixed, not swept: never the study's own)
        own = {k: v for k, v in changes.items() if k in ("lr", "momentum") or getattr(e, k) != v}
        twin = recipes.setdefault((norm, tuple(sorted(own.items()))), n)
        if twin != n:
            said = ", ".join(f"{k}={v}" for k, v in changes.items()) or "the study's recipe"
            return (f"{e.name}: conditions {twin} and {n} train the same models ({n} trains {norm} with {said}, as "
                    f"{twin} does); list one of them")
    return None
