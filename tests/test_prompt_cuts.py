"""The cuts a judge prompt makes come from the function that makes them, and every judgment
keeps the exact messages its judge was sent (answer prefill included)."""

from __future__ import annotations

import pytest
from fakes import FakeBackend

from judges.judge import JudgeOptions, judge_pairs, stream_judgment
from judges.prompts import OMITTED, cut_middle, get_prompt, truncate_middle
from judges.protocols import get_protocol, prompt_cuts
from judges.types import PairInput

ANSWER = "Principles: p.\nCritique: c.\nVerdict: [[A]]"
LONG_B = " ".join(f"word{i}" for i in range(900))  # ~7,000 characters: over any budget


@pytest.mark.parametrize("length", [0, 10, 99, 100, 101, 150, 1000, 5000])
@pytest.mark.parametrize("budget", [5, 40, 100, 1200])
def test_the_cut_reported_is_exactly_the_cut_made(length: int, budget: int) -> None:
    text = "".join("ab cd\n"[i % 6] for i in range(length))
    shown, cut = cut_middle(text, budget, "response_b")
    assert shown == truncate_middle(text, budget)
    if cut is None:
        assert shown == text and len(text) <= budget
        return
    assert (cut.field, cut.length) == ("response_b", len(text))
    head, tail = text[: cut.kept_head], text[len(text) - cut.kept_tail :]
    if cut.kept_tail == 0 and OMITTED.format(n=cut.omitted) not in shown:
        assert shown == head  # a budget too small for the marker: a hard cut, said as such
    else:
        assert shown == f"{head}\n{OMITTED.format(n=cut.omitted)}\n{tail}"
    assert cut.kept_head + cut.kept_tail + cut.omitted == len(text)


def test_render_with_cuts_gives_renders_messages_and_names_the_cut_text() -> None:
    template = get_prompt("pairwise")
    messages, cuts = template.render_with_cuts("Q?", None, response_a="short", response_b=LONG_B)
    assert messages == template.render("Q?", None, response_a="short", response_b=LONG_B)
    (cut,) = cuts
    assert cut.field == "response_b" and cut.length == len(LONG_B)
    user = messages[1]["content"]
    assert LONG_B[: cut.kept_head] in user and LONG_B[-cut.kept_tail :] in user
    assert OMITTED.format(n=cut.omitted) in user


def test_verifier_cuts_name_the_pairs_response_not_the_templates_placeholder() -> None:
    pair = PairInput(prompt="Q" * 3000, response_a="a", response_b=LONG_B)
    cuts = get_protocol("verifier").cuts(pair)
    assert sorted(c.field for c in cuts) == ["prompt", "response_b"]


def _backend(prefill: bool) -> FakeBackend:
    backend = FakeBackend(script=lambda messages: ANSWER)
    backend.supports_prefill = prefill
    return backend


@pytest.mark.parametrize("prefill", [True, False])
def test_streamed_judgments_keep_the_exact_messages_the_backend_got(prefill: bool) -> None:
    backend = _backend(prefill)
    pair = PairInput(prompt="Q?", response_a="A text", response_b=LONG_B)
    updates = list(stream_judgment(backend, pair, JudgeOptions(k=2, swap=True)))
    samples = updates[-1].aggregate.samples
    assert [m for m, _ in backend.streamed] == [j.prompt_messages for j in samples]
    shown, swapped = samples[0], next(j for j in samples if j.swapped)
    assert shown.prompt_messages != swapped.prompt_messages  # the judge saw B first there
    assert (shown.prompt_messages[-1]["role"] == "assistant") is prefill


def test_batched_judgments_keep_the_exact_messages_the_backend_got() -> None:
    seen: list[list[dict]] = []
    backend = FakeBackend(script=lambda messages: seen.append(messages) or ANSWER)
    pairs = [PairInput(prompt=f"Q{i}", response_a="a", response_b="b") for i in range(3)]
    (first, *_) = judge_pairs(backend, pairs, JudgeOptions(protocol="verifier"))
    (sample,) = first.samples
    assert sample.prompt_messages == [*seen[0], *seen[1]]  # both calls, one after the other


def test_stored_messages_check_the_cuts_or_they_are_not_claimed() -> None:
    pair = PairInput(prompt="Q?", response_a="A text", response_b=LONG_B)
    (update,) = [u for u in stream_judgment(_backend(True), pair, JudgeOptions()) if u.judgment]
    sent = update.judgment.prompt_messages
    (cut,) = prompt_cuts(pair, "pairwise", "pairwise-v2", sent)
    assert cut.field == "response_b"
    tampered = [dict(m) for m in sent]
    tampered[1]["content"] = tampered[1]["content"].replace("A text", "B text")
    assert prompt_cuts(pair, "pairwise", "pairwise-v2", tampered) is None
    assert prompt_cuts(pair, "pairwise", "pairwise-v0-unknown", sent) is None
    assert prompt_cuts(pair, "pairwise", "pairwise-v2") == [cut]  # older rows: no check
