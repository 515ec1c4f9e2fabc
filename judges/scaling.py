"""Inference-time scaling: un-swap judgments of the swapped pair, aggregate k samples per pair.

`unswap` is the one place a judgment made on `pair.swapped()` is turned back into the pair's
original order. `aggregate` is the one place a pair's samples (k of them, in one or both orders,
already un-swapped) become one verdict, by one of two rules (judges.types.Aggregation); the rule
it actually used is set on the result, and stored with every sample of the run.

MEAN (the default) keeps the judge's evidence instead of hard votes:
- pairwise: a sample that states A or B gives the log-odds of A over B, log(P(A) / P(B)), from its
  verdict probability (P(stated letter) / (P(A) + P(B)); un-swapping keeps it with the response
  it belongs to, so a swapped sample's P(A) is already in the original order). A stated tie gives
  0: its probability is P(tie) against A, B and tie and says nothing about A against B. A sample
  without a verdict (no verdict, an error) gives nothing, so a missing order never counts as a
  side. The verdict is the sign of the mean over samples and orders; a tie when |mean| <=
  `tie_band` (TIE_BAND); none when no sample gave evidence. When a sample states A or B without a
  probability (a backend without log-probs, a failed probe) the pair falls back to VOTE, and the
  result says "vote".
- pointwise: the mean of score_a - score_b over the samples with scores; the sign decides and
  an exact 0 is a tie (integer scores have no rounding to absorb); `scores` are the mean scores.
  Its verdict is always the one VOTE's summed scores give; `scores` and `margin` differ.
- verifier: the mean P(Yes) per response over the samples with rewards; the verdict is the sign of
  logit(mean P(Yes) of A) - logit(mean P(Yes) of B), a tie within `tie_band`. Without log-probs a
  verifier's rewards are its stated Yes/No as 1/0, so the mean is each response's share of Yes.
- `margin` keeps the mean evidence for A over B, `verdict_probability` its P(verdict) (the
  logistic of |margin|; pairwise and verifier, None for a tie).
- A lone judgment (one sample with a verdict: k = 1 without swap, or the other order failed)
  keeps its stated verdict and probability: there is nothing to weigh it against, and a decision
  that contradicted the [[A]] in its own text (a stated verdict with P < 0.5, or inside the
  band) would leave the person reading it with two answers. `margin` still holds its evidence.

VOTE (`--aggregate vote`; FastChat / MT-Bench practice, and the rule before MEAN):
- pairwise and verifier: majority vote over the samples' verdicts; samples without a verdict do
  not vote; a tie between the leading verdicts (e.g. A 1 : B 1) gives Verdict.TIE, so with k = 1
  two orders that disagree make a tie.
- pointwise: scores summed over the samples that have them; the higher sum wins, equal is a tie.

TIE_BAND = 0 log-odds: a tie only when the evidence is exactly balanced. A judge with pure
position bias gives log-odds l in one order and -l in the other, a mean of exactly 0: a tie.
A band of 0.1 was tried first (about the rounding of a bf16 logit between 8 and 16) and
measured: the embedded bf16 judge's margins come in steps of about 0.06, so that band made 64%
of the 526 shared pairs ties and swap-mean scored 0.19 against one order's 0.44; with no band,
swap-mean scored 0.49 (above one order on every set; bench_judge_accuracy, see the README's
benchmarks). A caller that wants one states it (`tie_band`, `--tie-band`).
Probabilities are held inside [PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR] before the logit: 0 or 1
means the other letter was not among the top log-probs, a small probability, not an infinite one.

Under both rules `votes` keeps the split of every sample's stated verdict, "none" included
({"A": 3, "B": 1, "none": 1}), and position consistency (with swap) compares the stated verdicts:
each order's samples are combined alone by VOTE; True when both orders give the same verdict,
False when they differ, None when an order is missing or has no verdict.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from judges.types import AggregateJudgment, Aggregation, Judgment, Verdict, verdict_from_scores
from vocabulary import ProtocolName

_VOTE_ORDER = (Verdict.A, Verdict.B, Verdict.TIE, Verdict.NONE)
TIE_BAND = 0.0  # |mean log-odds| at or below this is a tie (see the module's docstring)
PROBABILITY_FLOOR = 1e-6  # log-odds stay within about +-13.8


def unswap(judgment: Judgment) -> Judgment:
    """A judgment made on the swapped pair, expressed in the original order (swapped=True kept).

    The verdict flips A<->B (tie and none stay: a failure stays a failure), scores swap places,
    and the verdict probability is unchanged because it belongs to the same response. The texts
    (critique, raw text) stay as the judge wrote them, naming the responses as it saw them.
    """
    if judgment.swapped:
        raise ValueError("unswap: this judgment is already in the original order (swapped=True)")
    scores = (judgment.scores[1], judgment.scores[0]) if judgment.scores is not None else None
    p_a = 1.0 - judgment.p_a if judgment.p_a is not None else None  # A shown second was "B"
    return replace(
        judgment, verdict=judgment.verdict.swapped(), scores=scores, p_a=p_a, swapped=True
    )


def majority(verdicts: Sequence[Verdict]) -> Verdict:
    """The most frequent verdict; NONE does not vote; a tie between leaders is Verdict.TIE."""
    counts = Counter(v for v in verdicts if v is not Verdict.NONE)
    if not counts:
        return Verdict.NONE
    top = max(counts.values())
    leaders = [v for v, c in counts.items() if c == top]
    return leaders[0] if len(leaders) == 1 else Verdict.TIE


def summed_scores(judgments: Sequence[Judgment]) -> tuple[float, float] | None:
    """Per-response score sums over the samples that have scores; None when none has."""
    scored = [j.scores for j in judgments if j.scores is not None]
    if not scored:
        return None
    return (sum(s[0] for s in scored), sum(s[1] for s in scored))


def vote_split(judgments: Sequence[Judgment]) -> dict[str, int]:
    counts = Counter(j.verdict for j in judgments)
    return {v.value: counts[v] for v in _VOTE_ORDER if counts[v]}


def combined_verdict(judgments: Sequence[Judgment]) -> Verdict:
    """The protocol's aggregation: summed scores (pointwise) or majority vote (others)."""
    if judgments and judgments[0].protocol == ProtocolName.POINTWISE:
        scores = summed_scores(judgments)
        return Verdict.NONE if scores is None else verdict_from_scores(*scores)
    return majority([j.verdict for j in judgments])


def position_consistency(judgments: Sequence[Judgment]) -> bool | None:
    """Whether both orders agree (each aggregated alone); None without both orders' verdicts."""
    original = [j for j in judgments if not j.swapped]
    flipped = [j for j in judgments if j.swapped]
    if not original or not flipped:
        return None
    first, second = combined_verdict(original), combined_verdict(flipped)
    if Verdict.NONE in (first, second):
        return None
    return first == second


def aggregate(
    judgments: Sequence[Judgment],
    rule: Aggregation | str = Aggregation.MEAN,
    tie_band: float = TIE_BAND,
) -> AggregateJudgment:
    """One pair's samples (already un-swapped) combined by `rule`, with the vote split kept."""
    if not judgments:
        raise ValueError("aggregate: no judgments to combine")
    protocols = {j.protocol for j in judgments}
    if len(protocols) > 1:
        raise ValueError(f"aggregate: judgments of different protocols {sorted(protocols)}")
    pair_ids = {j.pair_id for j in judgments}
    if len(pair_ids) > 1:
        raise ValueError(f"aggregate: judgments of different pairs {sorted(map(str, pair_ids))}")
    result = AggregateJudgment(
        verdict=Verdict.NONE,
        samples=list(judgments),
        votes=vote_split(judgments),
        position_consistent=position_consistency(judgments),
        pair_id=judgments[0].pair_id,
    )
    if Aggregation(rule) is Aggregation.MEAN and _by_mean(result, judgments, tie_band):
        return result
    return _by_vote(result, judgments)


def log_odds(probability: float) -> float:
    """log(p / (1 - p)), with p held inside [PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR]."""
    p = min(max(probability, PROBABILITY_FLOOR), 1.0 - PROBABILITY_FLOOR)
    return math.log(p / (1.0 - p))


def verdict_from_margin(margin: float | None, tie_band: float = 0.0) -> Verdict:
    """A when the evidence for A over B is above the band, B below minus the band, else a tie."""
    if margin is None:
        return Verdict.NONE
    return Verdict.A if margin > tie_band else Verdict.B if margin < -tie_band else Verdict.TIE


def pairwise_evidence(judgments: Sequence[Judgment]) -> list[float] | None:
    """Each voting sample's log-odds of A over B; None when a stated A or B has no probability.

    The judge's own P(A) against P(B) at the verdict position (`p_a`) is the evidence where it
    was read, whatever letter the sample stated; otherwise a stated tie gives 0 and a stated A
    or B its probability. A sample without a verdict gives nothing (it is left out).
    """
    evidence: list[float] = []
    for judgment in judgments:
        if judgment.verdict is not Verdict.NONE and judgment.p_a is not None:
            evidence.append(log_odds(judgment.p_a))
        elif judgment.verdict is Verdict.TIE:
            evidence.append(0.0)
        elif judgment.verdict in (Verdict.A, Verdict.B):
            p = judgment.verdict_probability
            if p is None or not math.isfinite(p):
                return None
            evidence.append(log_odds(p if judgment.verdict is Verdict.A else 1.0 - p))
    return evidence


def _by_mean(result: AggregateJudgment, judgments: Sequence[Judgment], tie_band: float) -> bool:
    """Fill `result` by the MEAN rule; False (untouched) where the pair must fall back to VOTE."""
    protocol = judgments[0].protocol
    if protocol == ProtocolName.PAIRWISE:
        evidence = pairwise_evidence(judgments)
        if evidence is None:
            return False
        margin = sum(evidence) / len(evidence) if evidence else None
        band = tie_band
    else:
        scores = _mean_scores(judgments)
        result.scores = scores
        if scores is None:
            margin = None
        elif protocol == ProtocolName.VERIFIER:
            margin = log_odds(scores[0]) - log_odds(scores[1])
        else:
            margin = scores[0] - scores[1]
        band = tie_band if protocol == ProtocolName.VERIFIER else 0.0
    result.verdict = verdict_from_margin(margin, band)
    result.margin = margin
    if (
        margin is not None
        and protocol != ProtocolName.POINTWISE
        and result.verdict in (Verdict.A, Verdict.B)
    ):
        result.verdict_probability = 1.0 / (1.0 + math.exp(-abs(margin)))
    stated = [j for j in judgments if j.verdict is not Verdict.NONE]
    if len(stated) == 1:  # a lone judgment keeps its stated verdict (see the module docstring)
        result.verdict = stated[0].verdict
        decided = protocol != ProtocolName.POINTWISE and result.verdict in (Verdict.A, Verdict.B)
        result.verdict_probability = stated[0].verdict_probability if decided else None
    result.aggregation = Aggregation.MEAN.value
    return True


def _by_vote(result: AggregateJudgment, judgments: Sequence[Judgment]) -> AggregateJudgment:
    result.verdict = combined_verdict(judgments)
    protocol = judgments[0].protocol
    if protocol == ProtocolName.POINTWISE:
        result.scores = summed_scores(judgments)
    elif protocol == ProtocolName.VERIFIER:
        result.scores = _mean_scores(judgments)  # mean P(Yes): stays a probability
    result.aggregation = Aggregation.VOTE.value
    return result


def _mean_scores(judgments: Sequence[Judgment]) -> tuple[float, float] | None:
    scored = [j.scores for j in judgments if j.scores is not None]
    if not scored:
        return None
    return (sum(s[0] for s in scored) / len(scored), sum(s[1] for s in scored) / len(scored))
