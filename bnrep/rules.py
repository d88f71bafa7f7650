"""The verdict rules: the paper's section 6 claims in its words, the thresholds that judge them, and
the rules as every report states them (`rules`: worded for the study's axis and reference). The
judging itself is bnrep.findings'."""

from __future__ import annotations

from bnrep.conditions import EVAL_GAP, MIN_SEEDS, MOSTLY_ZERO
from bnrep.correlations import MIN_MODELS, P_MAX, R_MIN, group_word
from bnrep.experiments import LR_EDGE
from bnrep.probes import RECTIFIERS
from bnrep.results import LABELS, REF, SHORT, is_paper_pair, label_and_tag

SPARSITY_TOL = 0.01  # layer sparsity differences within 1 percentage point count as equal
MOSTLY = 0.75  # one direction in >= 75% of layers (but not all) is a tendency: "mixed"
K_TOL = 1  # "reaches the number of classes": seed-mean optimal k within +-1 of it

CLAIMS = {
    1: "BatchNorm does not consistently induce nor prevent sparsity in hidden representations.",
    2: "Sparse representations do not correlate with better generalization.",
    3: "BatchNorm tends to produce purer representational clusters than models trained without, especially "
       "in the case of class-based representations. For class-agnostic representation, results are less "
       "clear, except at the final layer, where BatchNorm clusters are again purer.",
    4: "BatchNorm forms class-agnostic clusters earlier in the network, and these early clusters "
       "are more consistent with the actual number of classes.",
}
JUDGED = ("supported", "not supported", "mixed")  # verdicts a condition can turn into "inconclusive"

RULES = [
    f"Per-layer comparisons count a layer for one direction only when the difference exceeds seed noise: "
    f"Welch's t-test over seeds (scipy.stats.ttest_ind, equal_var=False), two-sided p < {P_MAX} (two groups "
    f"without spread and different means count as different; one seed: untestable). Other layers: no "
    f"detectable difference.",
    f"1 (sparsity): per layer, compare the seed-mean layer sparsity with and without BN; "
    f"differences within {SPARSITY_TOL * 100:g} percentage point, or not detectable, count as equal. BN "
    f"sparser in every layer, or less sparse in every layer: not supported (it consistently induces / "
    f"prevents). Only one direction (other layers equal), or one direction in at least {MOSTLY:.0%} of the "
    f"layers: mixed. Otherwise (both directions, or no difference anywhere): supported.",
    f"2 (sparsity vs generalisation): per model, mean layer sparsity over all layers against test "
    f"accuracy and against the generalisation gap (train - test accuracy), Pearson and Spearman, "
    f"across all models (BN and no BN). A correlation counts when |r| >= {R_MIN} and p < {P_MAX}. "
    f"One that links sparser to better generalisation (higher test accuracy or smaller gap): not "
    f"supported. Only links to worse generalisation: mixed. None: supported. Needs >= {MIN_MODELS} models. "
    f"BN changes both sparsity and accuracy, so an across-model correlation can be the BN effect "
    f"alone: the Spearman correlation within each BN setting and the partial (Pearson) correlation "
    f"controlling for the normalisation are shown, and a counted correlation whose partial correlation "
    f"does not count with the same sign makes the verdict inconclusive.",
    "3 (purer clusters): over the shown layers, (a) class-based DBI detectably lower with BN in more than "
    "half the layers and lower on average; (b) k-means DBI at the optimal k detectably lower with BN at the "
    "last shown layer. Both hold: supported; one: mixed; neither: not supported (a missing table leaves "
    "only the other part to decide).",
    f"4 (early clusters): the optimal k is the k with the lowest k-means DBI per model and layer, "
    f"chosen by the analysis stage. (a) earlier: the first shown layer whose seed-mean optimal k is "
    f"within +-{K_TOL} of the number of classes comes strictly earlier with BN (or only BN reaches it); "
    f"(b) closer: over the first half of the shown layers, the mean |optimal k - classes| per model is "
    f"detectably smaller with BN. Both: supported; one: mixed; neither: not supported.",
    f"Inconclusive: a verdict built on models that missed their stopping rule (interpolate: not "
    f"interpolated; early-stop: trained to the epoch cap) or diverged (training loss NaN or inf), on fewer "
    f"than {MIN_SEEDS} seeds per normalisation (seeds with values in the tables the claim reads), "
    f"or on a sweep whose best learning rate (the one the models used) lies within {LR_EDGE:.0%} (log scale) "
    f"of an end of the search range (all claims); on layers above {MOSTLY_ZERO:.0%} zeros (claims 1-2); on an "
    f"optimal k at the largest k searched in the early layers (claim 4: the optimum may lie above it). Dead "
    f"channels (zero on every sparsity sample at the smallest eps; layer_sparsity's dead_channels) are named next to "
    f"the verdicts without changing them, as is, for models trained elsewhere (bnrep import), that their "
    f"stopping rule and sweep are not known, and models whose norm had not ended its warm-up (Batch Renorm's "
    f"W batches) at the weights kept, and models whose training accuracy in eval mode (running statistics, as "
    f"every measure is taken) lies more than {EVAL_GAP * 100:g} percentage points below their train-mode "
    f"accuracy over the epoch kept. "
    f"Claims 1-2 count exact zeros after rectifiers ({', '.join(sorted(RECTIFIERS))}) only: "
    f"probes after other activations are named next to the verdict and left out.",
    "Thresholds: claims 1 and 2 and the figures use the smallest sparsity threshold eps (the paper: 0, "
    "exactly zero). Where several thresholds were measured, claim 1 is also judged at each eps by the same "
    "rule, and its evidence says whether the verdict is robust to the threshold (the same at every eps) or "
    "at which eps it changes.",
]
OTHER_NORMS_RULE = ("Every condition is judged against no normalisation (the reference) by the same rules, the "
                    "claim's 'BatchNorm' read as the condition judged; models of other conditions are left out.")
# the rules' words for the paper's pair (BN, no BN) as a study of other conditions says them, in this order
JUDGED_WORDS = (("with and without BN", "with the condition judged and with the reference"),
                ("(BN and no BN)", "(the condition judged and the reference)"),
                ("BN changes both sparsity and accuracy, so an across-model correlation can be the BN effect alone",
                 "The condition changes both sparsity and accuracy, so an across-model correlation can be its effect "
                 "alone"),
                ("equal. BN sparser", "equal. The condition judged sparser"),
                ("only BN reaches it", "only the condition judged reaches it"),
                ("with BN", "with the condition judged"))


def rules(norms, ref: str = REF) -> list[str]:
    """RULES, their groups named as the study's axis names them (conditions: BatchNorm at batch 16 and at 64 are
    one normalisation), and the paper's 'BN' and 'no BN' worded as the condition judged and the reference where
    the study is not the paper's pair."""
    if is_paper_pair(norms) and ref == REF:
        return RULES
    word = group_word(norms)
    worded = [x.replace("each BN setting", f"each {word}").replace("for the normalisation", f"for the {word}")
              .replace("seeds per normalisation", f"seeds per {word}") for x in RULES]
    for paper, judged in JUDGED_WORDS:
        worded = [x.replace(paper, judged) for x in worded]
    if ref != REF:
        return worded + [f"Here every condition is judged against the reference condition "
                         f"{label_and_tag(LABELS[ref], SHORT[ref])} by the same rules, the claim's 'BatchNorm' read as "
                         f"the condition judged; models of other conditions are left out."]
    return worded + [OTHER_NORMS_RULE]
