"""Inference-time scaling: un-swap judgments of the swapped pair, aggregate k samples per pair.

`unswap` is the one place a judgment made on `pair.swapped()` is turned back into the pair's
original order. Aggregation rules:

- pairwise and verifier: majority vote over the samples' verdicts; samples without a verdict do
  not vote; a tie between the leading verdicts (e.g. A 1 : B 1) gives Verdict.TIE.
- pointwise: scores summed over the samples that have them; the higher sum wins, equal is a tie.
- `votes` keeps the split of every sample, "none" included ({"A": 3, "B": 1, "none": 1}).
- position consistency (with swap): each order's samples are aggregated alone; True when both
  orders give the same verdict, False when they differ, None when an order is missing or has no
  verdict. An inconsistent pair keeps the overall vote (with k = 1 that is A against B, a tie)
  and says `position_consistent=False`; it is never silently turned into either order's answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from judges.types import AggregateJudgment, Judgment, Verdict

_VOTE_ORDER = (Verdict.A, Verdict.B, Verdict.TIE, Verdict.NONE)


def unswap(judgment: Judgment) -> Judgment:
    """A judgment made on the swapped pair, expressed in the original order (swapped=True kept).

    The verdict flips A<->B (tie and none stay: a failure stays a failure), scores swap places,
    and the verdict probability is unchanged because it belongs to the same response. The texts
    (critique, raw text) stay as the judge wrote them, naming the responses as it saw them.
    """
    if judgment.swapped:
        raise ValueError("unswap: this judgment is already in the original order (swapped=True)")
    scores = (judgment.scores[1], judgment.scores[0]) if judgment.scores is not None else None
    return replace(judgment, verdict=judgment.verdict.swapped(), scores=scores, swapped=True)


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


def verdict_from_scores(scores: tuple[float, float] | None) -> Verdict:
    if scores is None:
        return Verdict.NONE
    a, b = scores
    return Verdict.A if a > b else Verdict.B if b > a else Verdict.TIE


def vote_split(judgments: Sequence[Judgment]) -> dict[str, int]:
    counts = Counter(j.verdict for j in judgments)
    return {v.value: counts[v] for v in _VOTE_ORDER if counts[v]}


def combined_verdict(judgments: Sequence[Judgment]) -> Verdict:
    """The protocol's aggregation: summed scores (pointwise) or majority vote (others)."""
    if judgments and judgments[0].protocol == "pointwise":
        return verdict_from_scores(summed_scores(judgments))
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


def aggregate(judgments: Sequence[Judgment]) -> AggregateJudgment:
    """One pair's samples (already un-swapped) combined, with the vote split kept."""
    if not judgments:
        raise ValueError("aggregate: no judgments to combine")
    protocols = {j.protocol for j in judgments}
    if len(protocols) > 1:
        raise ValueError(f"aggregate: judgments of different protocols {sorted(protocols)}")
    pair_ids = {j.pair_id for j in judgments}
    if len(pair_ids) > 1:
        raise ValueError(f"aggregate: judgments of different pairs {sorted(map(str, pair_ids))}")
    scores = summed_scores(judgments)
    if scores is not None and judgments[0].protocol == "verifier":
        count = sum(1 for j in judgments if j.scores is not None)
        scores = (scores[0] / count, scores[1] / count)  # mean P(Yes): stays a probability
    if judgments[0].protocol == "pairwise":
        scores = None
    return AggregateJudgment(
        verdict=combined_verdict(judgments),
        samples=list(judgments),
        votes=vote_split(judgments),
        position_consistent=position_consistency(judgments),
        pair_id=judgments[0].pair_id,
        scores=scores,
    )
