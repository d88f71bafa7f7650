"""The findings as a report's blocks (bnrep.documents renders them) and as the summary's text (`lines`, the
caveats every claim names said once above them): the paper's section 6 table, a claim
per condition with its evidence, claim 1 per sparsity threshold, the initialisation table, which measure
predicts generalisation, and the combined report's findings across experiments. The verdicts themselves
are bnrep.findings'; the correlations bnrep.correlations'."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bnrep.axis import axis_word
from bnrep.correlations import (MIN_MODELS, P_MAX, between_groups_reason, group_word, limits_sentence, p_text,
                                predictor_rows, predictors)
from bnrep.findings import (Finding, _names, compare_layers, finding_sparsity_across, headline_rows, judged_norms,
                            names_reference, snapshot_measures, worded)
from bnrep.rules import CLAIMS, RULES, SPARSITY_TOL, rules
from bnrep.norms import same_start, sort_key
from bnrep.results import LABELS, REF, SHORT, Results, is_paper_pair, label_and_tag, rankings


def common_caveats(fs: list[Finding]) -> tuple[str, ...]:
    """The caveats every one of several findings names: said once, above them."""
    return tuple(c for c in fs[0].caveats if all(c in f.caveats for f in fs[1:])) if len(fs) > 1 else ()


def said_once(fs: list[Finding]) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """The caveats said once above findings: those every one of them names, then per condition (of
    several) those every one of its findings names besides (a condition's seeds, its dead channels)."""
    common, per = common_caveats(fs), {}
    for norm in dict.fromkeys(f.norm for f in fs):
        mine = [f for f in fs if f.norm == norm]
        if 1 < len(mine) < len(fs):
            per[norm] = tuple(c for c in common_caveats(mine) if c not in common)
    return common, {n: c for n, c in per.items() if c}


def lines(fs: list[Finding]) -> list[str]:
    """Findings as text, a caveat every one of them names said once above them, one every finding of a
    condition names said once above its first."""
    common, per = said_once(fs)
    out = [f"{COMMON_HEAD}:", *(f"    - {c}" for c in common)] if common else []
    for f in fs:
        if f.norm in per and f is next(g for g in fs if g.norm == f.norm):
            out += [f"{common_head(f.norm)}:", *(f"    - {c}" for c in per[f.norm])]
        out.append(f.line(common + per.get(f.norm, ())))
    return out


COMMON_HEAD = "Named for every claim below"


def common_head(norm: str) -> str:
    """The heading of the caveats every claim about `norm` names (said_once)."""
    return f"Named for every claim about {SHORT[norm]}"


def findings_blocks(r: Results, fs: list[Finding]) -> list[tuple]:
    """The paper pair: one table as the paper's section 6. Several norms: claims x norms, evidence, rankings."""
    judged, (said, per) = judged_norms(r), said_once(fs)
    head = [("p", f"{COMMON_HEAD}:"), ("ul", list(said))] if said else []  # (a page of dead channels, once)
    head += [b for n, c in per.items() for b in (("p", f"{common_head(n)}:"), ("ul", list(c)))]
    if len(judged) == 1:
        rows = [[str(f.number), f.claim, f.verdict_said(said), f.detail] for f in fs]
        return [*head, ("table", ["#", "Claim (paper section 6)", "Verdict", "Evidence"], rows), *eps_blocks(fs),
                *initialisation_blocks(r), ("p", "How verdicts are decided:"), ("ul", rules(r.norms, r.ref))]
    by = {(f.number, f.norm): f for f in fs}
    matrix = [[str(i), c] + [by[(i, n)].verdict for n in judged] for i, c in _claims(fs)]
    evidence = [[str(f.number), SHORT[f.norm], f.claim, f.verdict_said(said + per.get(f.norm, ())), f.detail]
                for f in fs]
    against = (f"no normalisation ({SHORT[REF]})" if r.ref == REF else
               f"the reference {label_and_tag(LABELS[r.ref], SHORT[r.ref])}")
    each = group_word(r.norms)
    blocks = [*head, ("p", f"Each claim judged for each {each} against {against}; the second table gives each claim "
                           f"as worded for the {each} it judges, with its evidence:"),
              ("table", ["#", f"Claim (paper section 6, worded for the {each} judged)"]
               + [f"{SHORT[n]} vs {SHORT[r.ref]}" for n in judged], matrix),
              ("table", ["#", axis_word(r.norms).capitalize(), "Claim tested", "Verdict", "Evidence"], evidence)]
    ranks = rankings(r)
    if ranks:
        blocks += [("p", "Rankings (best first; mean ± std over seeds):"), ("table", ["measure", "ranking"], ranks)]
    return blocks + eps_blocks(fs) + initialisation_blocks(r) + [("p", "How verdicts are decided:"), ("ul", rules(r.norms, r.ref))]


def eps_blocks(fs: list[Finding]) -> list[tuple]:
    """Claim 1 at each sparsity threshold: a row per eps, a column per normalisation judged, and
    whether each verdict is robust to the threshold. Nothing with one threshold."""
    ones = [f for f in fs if f.number == 1 and "by_eps" in f.numbers]
    if not ones:
        return []
    cell = lambda g, n: g["verdict"] + ("" if g["verdict"] == "not evaluated" else  # noqa: E731
                                        f" ({SHORT[n]} sparser in {len(g['sparser'])}, less sparse in "
                                        f"{len(g['less_sparse'])} layers)")
    rows = [[e] + [cell(f.numbers["by_eps"][e], f.norm) if e in f.numbers["by_eps"] else "-" for f in ones]
            for e in dict.fromkeys(e for f in ones for e in f.numbers["by_eps"])]
    said = [f"{SHORT[f.norm]} vs {SHORT[f.ref]}: {_robustness(f.numbers)}" for f in ones]
    alone = any(f.verdict == "inconclusive" for f in ones)
    return [("p", "Claim 1 at each sparsity threshold eps (|x| <= eps counts as zero). The verdict above and "
                  "every other sparsity number use the smallest eps (the paper's exact zero when eps = 0)" +
                  (". These are the rule's verdicts alone: where the conditions named above make a verdict "
                   "inconclusive, they make it so at every eps" if alone else "") + ":"),
            ("table", ["eps"] + [f"{SHORT[f.norm]} vs {SHORT[f.ref]}" for f in ones], rows), ("ul", said)]


def _robustness(n: dict) -> str:
    """Whether claim 1's verdict and direction hold at every eps (eps_robustness' numbers)."""
    why = ([f"the verdict changes at eps {', '.join(n['changed_at'])}"] if n["changed_at"] else []) + (
        [f"more layers go the other way at eps {', '.join(n['direction_reversed_at'])}"]
        if n.get("direction_reversed_at") else [])
    if why:
        return f"not robust to the threshold ({'; '.join(why)})"
    return ("robust to the threshold (the same verdict at every eps)" if not n["not_evaluated_at"] else
            f"robust to the threshold where it could be judged (not evaluated at eps {', '.join(n['not_evaluated_at'])}"
            f": no results on both sides)")


def predictor_blocks(r: Results, heading: str = "Which measure predicts generalisation") -> list[tuple]:
    """The correlations of each layer-averaged measure with test accuracy and the gap, strongest first."""
    rows = predictors(r)
    if not rows:
        return [("h2", heading), ("p", f"Not computed: needs results/training and a measure for at least "
                                       f"{MIN_MODELS} models.")]
    header, cells = predictor_rows(rows, r.norms)
    word = group_word(r.norms)  # normalisation, or condition
    blocks = [("h2", heading),
              ("p", "Per model, each measure is averaged over its layers (those with a value; sparsity at the "
                    "smallest eps, k-means DBI at the optimal k) and correlated with test accuracy and with the "
                    "generalisation gap (train - test accuracy). Sorted by strength: the larger |r| of Pearson "
                    "and Spearman across all models."),
              ("table", header, cells), ("p", limits_sentence(r, rows))]

    def vs(x) -> str:
        return f"{x['measure']} vs {'test accuracy' if x['target'] == 'test_acc' else 'the gap'}"

    def partial(x) -> dict:
        return {"pearson_r": x["partial_pearson_r"], "pearson_p": x["partial_pearson_p"]}

    def both(x) -> str:
        return (f"{vs(x)} (partial r = {x['partial_pearson_r']:.2f}, p = {p_text(x['partial_pearson_p'])}; across "
                f"models r = {x['pearson_r']:.2f}, p = {p_text(x['pearson_p'])})")

    only = [x for x in rows if (x["between_groups_only"] or x["too_few_within"]) and not x.get("reverses_within")]
    if only:
        kinds = {bool(x["too_few_within"]) for x in only}
        last = {frozenset({False}): "None of these shows a link between the measure and generalisation beyond the "
                                    f"difference between the {word} groups.",
                frozenset({True}): f"Too few models lie within the {word} groups to tell whether the link holds "
                                   "there: the data cannot decide.",
                frozenset({False, True}): "Where the sign comes from the difference between the groups, no link "
                                          "between the measure and generalisation shows beyond it; where too few "
                                          "models lie within the groups, the data cannot decide."}[frozenset(kinds)]
        blocks.append(("note", f"Across models, then within the {word} groups: "
                               f"{'; '.join(f'{vs(x)} {between_groups_reason(x, partial(x), word)}' for x in only)}. "
                               f"{last}"))
    hidden = [both(x) for x in rows if x.get("within_groups_only")]
    if hidden:
        blocks.append(("note", f"Within the {word} groups, not across them: {'; '.join(hidden)}. Once the "
                               f"{word} is controlled for, the measure and generalisation move together, which the "
                               f"difference between the groups hides across models; a link within these groups, "
                               f"not a cause."))
    turned = [both(x) for x in rows if x.get("reverses_within")]
    if turned:
        blocks.append(("note", f"Reversed within the {word} groups: {'; '.join(turned)}. Across models the sign "
                               f"is the difference between the groups; within them the measure and generalisation "
                               f"move the other way: a link within these groups, not a cause."))
    return blocks


def _claims(fs: list[Finding]) -> list[tuple[int, str]]:
    """(number, claim) for the claims in `fs`, worded for every column of a matrix of them: the paper's words
    where each is BatchNorm against none, else for 'the condition judged' against 'the reference'."""
    numbers = sorted({f.number for f in fs})
    if all((f.norm, f.ref) == ("batch", REF) for f in fs):
        return [(i, CLAIMS[i]) for i in numbers]
    judged = f"the {group_word({f.norm for f in fs} | {f.ref for f in fs})} judged"
    other = "the reference" if any(names_reference(f.norm, f.ref) for f in fs) else None  # else 'trained without'
    return [(i, worded(i, judged, other)) for i in numbers]


def combined_findings_blocks(rs: list[Results], per_exp: dict[str, list[Finding]],
                             across: list[Finding]) -> list[tuple]:
    """Claim 1 across experiments, a verdict matrix (claim x experiment and norm), then each experiment's evidence."""
    paper = is_paper_pair({n for r in rs for n in r.norms}) and {r.ref for r in rs} == {REF}
    word = axis_word({n for r in rs for n in r.norms}).capitalize()  # Norm, or Condition
    cols = [(name, n) for name, fs in per_exp.items() for n in dict.fromkeys(f.norm for f in fs)]
    ref_of = {r.experiment.name: r.ref for r in rs}
    by = {(name, f.number, f.norm): f for name, fs in per_exp.items() for f in fs}
    matrix = [[str(i), c] + [by[(name, i, n)].verdict for name, n in cols]
              for i, c in _claims([f for fs in per_exp.values() for f in fs])]
    blocks = [("h2", "Findings (paper section 6)"), ("p", "Claim 1 across experiments:"),
              ("table", [word, "Verdict", "Evidence"] if not paper else ["Verdict", "Evidence"],
               [([] if paper else [_against(f.norm, f.ref)]) + [f.verdict_text, f.detail] for f in across]),
              ("table", ["#", "Claim"] + [name if paper else f"{name} {_against(n, ref_of[name])}" for name, n in cols],
               matrix)]
    for name, fs in per_exp.items():
        head = ["#", "Verdict", "Evidence"] if paper else ["#", word, "Claim tested", "Verdict", "Evidence"]
        blocks += [("h2", f"Findings: {name}"),
                   ("table", head, [[str(f.number)] + ([] if paper else [SHORT[f.norm], f.claim]) + [f.verdict_text,
                                                                                                    f.detail] for f in fs])]
        r = next(r for r in rs if r.experiment.name == name)
        ranks = rankings(r)
        if ranks:
            blocks += [("table", ["measure", "ranking (best first; mean ± std over seeds)"], ranks)]
        blocks += eps_blocks(fs) + predictor_blocks(r, f"Which measure predicts generalisation: {name}")
    return blocks + [("p", "How verdicts are decided:"), ("ul", combined_rules(rs))]


def _against(norm: str, ref: str) -> str:
    """'BN', or 'BN vs bn-b16' for a condition judged against a reference other than none."""
    return SHORT[norm] if ref == REF else f"{SHORT[norm]} vs {SHORT[ref]}"


def combined_rules(rs: list[Results]) -> list[str]:
    """The rules; experiments judged against different references each say which is theirs."""
    refs: dict[str, list[str]] = {}
    for r in rs:
        refs.setdefault(r.ref, []).append(r.experiment.name)
    norms = {n for r in rs for n in r.norms}
    if len(refs) == 1:
        return rules(norms, next(iter(refs)))
    return rules(norms, next(iter(refs)))[:len(RULES)] + [f"{', '.join(names)}: {line}" for ref, names in refs.items()
                    for line in rules(norms, ref)[len(RULES):] or [f"every condition is judged against {LABELS[ref]}."]]


def across_findings(per_exp: dict[str, list[Finding]]) -> list[Finding]:
    """Claim 1 across experiments, one finding per normalisation and reference judged (experiments judged
    against different references are not one comparison)."""
    pairs = sorted({(f.norm, f.ref) for fs in per_exp.values() for f in fs}, key=lambda p: (sort_key(p[0]), sort_key(p[1])))
    return [finding_sparsity_across({name: f for name, fs in per_exp.items() for f in fs
                                     if f.number == 1 and (f.norm, f.ref) == pair}) for pair in pairs]


# ==== at initialisation: were the final differences there before training? ====

# a pair of conditions that is one network at initialisation (bnrep.norms.same_start) and differed there
ONE_NETWORK = (" (at initialisation the two are one network with the same weights: their epoch-0 differences come "
               "only from the batch statistics each normalises with there, at its batch size or in its virtual "
               "batches)")


def initialisation(r: Results) -> list[dict]:
    """Per measure and condition against the reference: the layers that differ beyond seed noise at the final
    epoch, those of them that differed the same way at initialisation (epoch 0), and the reading; [] without
    epoch 0. As findings.json has them: `measure` (its table), `condition`, `ref` (the reference, as each finding
    names it), `final_layers`, `initial_layers`, `reading`, `one_network` (the two are one network at
    initialisation)."""
    out = []
    for m in snapshot_measures():
        early = r.snapshots.get(m.table, pd.DataFrame())
        early = early[early["epoch"] == 0] if len(early) else early
        if early.empty or r.table(m.table).empty:
            continue
        for n in [c for c in r.norms if c != r.ref]:
            fin, ini = (compare_layers(headline_rows(m, d), m.values[0], n, r.ref) for d in (r.table(m.table), early))
            tol = SPARSITY_TOL if m.table == "layer_sparsity" else 0  # claim 1's rule: within 1 pp is no difference
            fin = fin[(fin["p"] < P_MAX) & ((fin["a"] - fin["ref"]).abs() > tol)]
            ini = ini.set_index("layer_index")
            gap = {x.layer: (x.a - x.ref, *(ini.loc[x.layer_index, ["a", "ref", "p"]] if x.layer_index in ini.index
                                            else (math.nan,) * 3)) for x in fin.itertuples()}
            same = [l for l, (g, a, b, p) in gap.items()
                    if p < P_MAX and abs(a - b) > tol and np.sign(a - b) == np.sign(g)]
            like = [l for l, (g, a, b, p) in gap.items() if l not in same and (a - b) / g >= 0.5]  # >= half, noisy
            said = ("no layer differs at the final epoch" if fin.empty else "already at initialisation"
                    if len(same) == len(fin) else "partly at initialisation" if same else "appeared in training"
                    if not like else f"unclear: {_names(like)} at least half as large at epoch 0, within seed noise")
            one = bool(not fin.empty and same_start(n, r.ref) and (same or like))
            out.append(dict(measure=m.table, condition=n, ref=r.ref, final_layers=list(fin["layer"]),
                            initial_layers=same, reading=said + (ONE_NETWORK if one else ""),
                            one_network=bool(same_start(n, r.ref))))  # (the note: where it explains a difference)
    return out


def initialisation_rows(r: Results) -> list[list[str]]:
    """The initialisation table's rows (`initialisation`), as the report shows them."""
    names = {m.table: m.name or m.table.replace("_", " ") for m in snapshot_measures()}
    return [[names[x["measure"]], f"{SHORT[x['condition']]} vs {SHORT[x['ref']]}",
             f"{len(x['final_layers'])} ({_names(x['final_layers'])})" if x["final_layers"] else "0",
             f"{len(x['initial_layers'])} ({_names(x['initial_layers'])})" if x["initial_layers"] else "0",
             x["reading"]] for x in initialisation(r)]


def initialisation_blocks(r: Results) -> list[tuple]:
    """Report blocks, with --snapshots 0: which differences between conditions at the final epoch were there at initialisation."""
    rows = initialisation_rows(r)
    return [("p", f"At initialisation (epoch 0) against the final epoch: per measure, the layers where a condition "
                  f"differs from {SHORT[r.ref]} beyond seed noise (Welch, p < {P_MAX}) at the final epoch, and how "
                  f"many of those differed the same way before training:"),
            ("table", ["measure", "pair", "layers that differ, final", "of those, the same at initialisation",
                       "reading"], rows)] if rows else []
