"""Typed values that cross the judges boundary: what is judged and what a judge said."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum


class Verdict(str, Enum):
    """A judge's decision. NONE is a real value, never silently turned into A."""

    A = "A"
    B = "B"
    TIE = "tie"
    NONE = "none"

    def swapped(self) -> Verdict:
        """The same decision seen from the other order (A<->B); tie and none stay."""
        return {Verdict.A: Verdict.B, Verdict.B: Verdict.A}.get(self, self)


class Aggregation(str, Enum):
    """How a pair's samples (k of them, in one or both orders) become one verdict.

    MEAN keeps the judge's evidence: the mean verdict log-odds (pairwise), score difference
    (pointwise) or P(Yes) per response (verifier); VOTE counts the stated verdicts, so two
    orders that disagree make a tie (FastChat / MT-Bench practice). judges.scaling defines both.
    """

    MEAN = "mean"
    VOTE = "vote"


def verdict_from_scores(a: float, b: float) -> Verdict:
    """The verdict two scores give: the higher one wins, equal is a tie. The one rule for
    pointwise scores, verifier rewards and aggregated score differences."""
    return Verdict.A if a > b else Verdict.B if b > a else Verdict.TIE


class Status(str, Enum):
    COMPLETE = "complete"
    NO_VERDICT = "no_verdict"
    TRUNCATED = "truncated"
    ERROR = "error"


class Section(str, Enum):
    """Where a streaming judge is in its answer; the UI fills one panel per section."""

    PRINCIPLES = "principles"
    CRITIQUE = "critique"
    VERDICT = "verdict"


@dataclass(frozen=True)
class ChatTurn:
    role: str
    content: str


@dataclass(frozen=True)
class PairInput:
    """One prompt and two responses, as a judge sees them (no database ids needed)."""

    prompt: str | list[ChatTurn]
    response_a: str
    response_b: str
    reference: str | None = None
    pair_id: int | None = None

    def swapped(self) -> PairInput:
        return replace(self, response_a=self.response_b, response_b=self.response_a)

    def prompt_text(self) -> str:
        """The prompt as plain text for templates; chat turns are shown one per block."""
        if isinstance(self.prompt, str):
            return self.prompt
        return "\n\n".join(f"[{t.role}]\n{t.content}" for t in self.prompt)


@dataclass
class Judgment:
    """Everything one judge sample produced for one pair, in the pair's original order."""

    protocol: str
    prompt_version: str
    verdict: Verdict = Verdict.NONE
    status: Status = Status.NO_VERDICT
    principles: str = ""
    critique: str = ""
    scores: tuple[float, float] | None = None
    verdict_probability: float | None = None  # P(verdict) from next-token log-probabilities
    verdict_source: str = "none"  # "text" | "logprobs" | "scores" | "none"
    raw_text: str = ""
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    judge_version: str = ""
    swapped: bool = False
    sample_index: int = 0
    pair_id: int | None = None
    # The chat messages the judge was given, answer prefill included: what the judge saw.
    prompt_messages: list[dict[str, str]] | None = None
    # Pairwise: P(A) / (P(A) + P(B)) at the verdict position, in this judgment's order, whatever
    # letter was stated (a stated tie still weighs A against B); None without log-probabilities.
    p_a: float | None = None


@dataclass
class AggregateJudgment:
    """The result of k samples (and optionally both orders) for one pair, with the vote kept."""

    verdict: Verdict
    samples: list[Judgment] = field(default_factory=list)
    votes: dict[str, int] = field(default_factory=dict)
    position_consistent: bool | None = None  # None when swap was off or a side had no verdict
    pair_id: int | None = None
    # pointwise: scores summed (VOTE) or averaged (MEAN) over samples; verifier: mean P(Yes);
    # pairwise: None
    scores: tuple[float, float] | None = None
    aggregation: str | None = None  # the rule that combined the samples; stored with each
    # The MEAN rule's evidence for A over B (None under VOTE): the mean verdict log-odds
    # (pairwise), log-odds of the mean P(Yes) (verifier), the mean score difference (pointwise).
    margin: float | None = None
    # P(verdict) of that evidence (pairwise, verifier; None for a tie or under VOTE).
    verdict_probability: float | None = None
