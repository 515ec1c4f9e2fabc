"""The judge orchestrator on the real embedded SmolLM2-135M judge: streaming, probes, batching."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from judges.backends.base import Backend
from judges.judge import JudgeOptions, judge_pairs, stream_judgment
from judges.types import PairInput, Status, Verdict

pytestmark = pytest.mark.slow

PAIR = PairInput(
    "Name a yellow fruit. Answer in one word.", "Banana", "The sky is blue.", pair_id=3
)


@pytest.fixture(scope="module")
def embedded() -> Iterator[Backend]:
    from judges.backends import make_backend
    from settings import load_settings

    backend = make_backend(load_settings(judge_backend="transformers", judge_model=None))
    yield backend
    backend.close()


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
