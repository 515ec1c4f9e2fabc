"""The judge orchestrator on the real embedded SmolLM2-135M judge: streaming, probes, batching."""

from __future__ import annotations

import math
import re
from collections import Counter

import pytest

from judges.backends.base import Backend
from judges.judge import JudgeOptions, judge_pairs, stream_judgment, warm_judgment
from judges.scaling import TIE_BAND
from judges.types import Aggregation, PairInput, Section, Status, Verdict

pytestmark = pytest.mark.slow

PAIR = PairInput(
    "Name a yellow fruit. Answer in one word.", "Banana", "The sky is blue.", pair_id=3
)


@pytest.fixture
def embedded(embedded_backend) -> Backend:
    return embedded_backend  # the session's one load of the embedded judge


def test_streamed_pairwise_judgment_always_ends_with_a_labelled_verdict(embedded) -> None:
    updates = list(stream_judgment(embedded, PAIR, JudgeOptions(max_new_tokens=32)))
    assert len(updates) > 2, "text arrives in pieces before the judgment"
    judgment = updates[-1].judgment
    assert judgment.status in (Status.COMPLETE, Status.TRUNCATED)
    # A 135M judge rarely writes a parseable verdict; then it must be read from the
    # log-probabilities and say so, never be passed off as text.
    assert judgment.verdict is not Verdict.NONE
    assert judgment.verdict_source in ("text", "logprobs")
    assert 0.0 < judgment.verdict_probability <= 1.0
    assert judgment.completion_tokens > 0 and judgment.raw_text


def test_verifier_rewards_are_probabilities(embedded) -> None:
    options = JudgeOptions(protocol="verifier", max_new_tokens=24)
    judgment = list(stream_judgment(embedded, PAIR, options))[-1].judgment
    assert judgment.scores is not None and all(0.0 <= r <= 1.0 for r in judgment.scores)
    assert judgment.verdict_source == "logprobs"


def test_batched_greedy_judgments_match_streamed_ones(embedded) -> None:
    pairs = [PAIR, PairInput("What is 2+2?", "5", "4", pair_id=4)]
    options = JudgeOptions(max_new_tokens=16, swap=True)
    batched = judge_pairs(embedded, pairs, options)
    for pair, result in zip(pairs, batched, strict=True):
        streamed = list(stream_judgment(embedded, pair, options))[-1].aggregate
        assert [s.verdict for s in streamed.samples] == [s.verdict for s in result.samples]
        assert [s.raw_text for s in streamed.samples] == [s.raw_text for s in result.samples]


def test_the_real_judge_writes_its_principles_first(embedded) -> None:
    # The answer is started at "Principles:", so the small judge's first words are principles
    # (without it, SmolLM2 skipped that header and the principles panel stayed empty).
    updates = list(stream_judgment(embedded, PAIR, JudgeOptions(max_new_tokens=24)))
    first_text = next(u for u in updates if u.principles or u.critique or u.verdict_text)
    assert first_text.section is Section.PRINCIPLES and first_text.principles
    judgment = updates[-1].judgment
    assert judgment.raw_text.startswith("Principles:") and judgment.principles
    assert judgment.prompt_version == "pairwise-v2"


def test_a_prompt_read_ahead_gives_the_same_judgment(embedded) -> None:
    pair = PairInput("Which planet is the largest?", "Jupiter.", "Mars is.", pair_id=9)
    options = JudgeOptions(max_new_tokens=12)
    cold = list(stream_judgment(embedded, pair, options))[-1].judgment
    assert warm_judgment(embedded, pair, options) is True
    warmed = list(stream_judgment(embedded, pair, options))[-1].judgment
    again = list(stream_judgment(embedded, pair, options))[-1].judgment  # the cache is reusable
    assert warmed.raw_text == cold.raw_text == again.raw_text
    assert warmed.verdict is cold.verdict
    assert warmed.verdict_probability == pytest.approx(cold.verdict_probability, abs=1e-4)


def test_pointwise_scores_are_the_ones_the_judge_wrote(embedded) -> None:
    options = JudgeOptions(protocol="pointwise", max_new_tokens=64)
    judgment = list(stream_judgment(embedded, PAIR, options))[-1].judgment
    written = re.findall(
        r"\\boxed\{\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*\}", judgment.raw_text
    )
    if not written:  # the small judge wrote no scores: that must be said, never made up
        assert judgment.scores is None and judgment.verdict is Verdict.NONE
        return
    a, b = (float(x) for x in written[0])
    assert judgment.scores == (a, b) and judgment.verdict_source == "scores"
    assert judgment.verdict is (Verdict.A if a > b else Verdict.B if b > a else Verdict.TIE)


@pytest.mark.parametrize("rule", [Aggregation.VOTE, Aggregation.MEAN])
def test_k_samples_in_both_orders_combine_by_the_chosen_rule(embedded, rule) -> None:
    options = JudgeOptions(k=3, swap=True, temperature=0.9, max_new_tokens=16, aggregate=rule)
    result = list(stream_judgment(embedded, PAIR, options))[-1].aggregate
    samples = result.samples
    assert len(samples) == 6 and sum(s.swapped for s in samples) == 3
    assert sum(result.votes.values()) == 6
    assert result.votes == dict(Counter(s.verdict.value for s in samples))
    if rule is Aggregation.VOTE:
        counts = Counter(s.verdict for s in samples if s.verdict is not Verdict.NONE)
        top = max(counts.values())
        leaders = [v for v, c in counts.items() if c == top]
        assert result.verdict is (leaders[0] if len(leaders) == 1 else Verdict.TIE)
        return

    # Mean: the sign of the mean log-odds of A over B, each sample's P(A) in the pair's order:
    # the P(A) read at its verdict position, else its stated verdict's probability.
    def log_odds(s) -> float:
        if s.p_a is not None:
            p_a = s.p_a
        else:
            p = s.verdict_probability
            p_a = {Verdict.A: p, Verdict.B: 1 - p}.get(s.verdict, 0.5)
        p_a = min(max(p_a, 1e-6), 1 - 1e-6)
        return math.log(p_a / (1 - p_a))

    decided = [s for s in samples if s.verdict is not Verdict.NONE]
    margin = sum(log_odds(s) for s in decided) / len(decided)
    assert result.aggregation == "mean" and result.margin == pytest.approx(margin, abs=1e-6)
    expected = Verdict.TIE if abs(margin) <= TIE_BAND else Verdict.A if margin > 0 else Verdict.B
    assert result.verdict is expected


def test_a_verdict_alone_states_an_offered_letter(embedded, llmbar_dir) -> None:
    """An MT-Bench pair on which the embedded judge, asked for its verdict alone under the
    default penalty, wrote "[[D" in both orders: decoded without it, it states A, B or C."""
    import json

    from judges.backends.base import GenerationOptions
    from judges.protocols import get_protocol

    row = json.loads((llmbar_dir / "Processed_MT-Bench.jsonl").read_text().splitlines()[3])
    pair = PairInput(row["input"], row["output_1"], row["output_2"])
    options = JudgeOptions(prompt_version="pairwise-v3-verdict", max_new_tokens=4, swap=True)
    assert options.repetition_penalty > 1.0  # the default

    (messages,) = get_protocol("pairwise", "pairwise-v3-verdict").conversations(pair)
    started = [*messages, {"role": "assistant", "content": "Verdict: [["}]
    penalized = GenerationOptions(max_new_tokens=1, repetition_penalty=1.1)
    assert embedded.generate_batch([started], penalized)[0].text.strip() not in "ABC"

    (result,) = judge_pairs(embedded, [pair], options)
    for sample in result.samples:
        assert sample.verdict_source == "text" and sample.verdict in (Verdict.A, Verdict.B)
        assert re.match(r"Verdict: \[\[[ABC]\]\]", sample.raw_text), sample.raw_text
