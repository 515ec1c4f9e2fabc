"""The judge orchestrator and protocols against a scripted FakeBackend (no model needed)."""

from __future__ import annotations

import math

import pytest
from fakes import FakeBackend, FakeReply, user_text
from pydantic import ValidationError

from judges.backends.base import TokenLogprob
from judges.judge import SAMPLING_TEMPERATURE, JudgeOptions, judge_pairs, stream_judgment
from judges.protocols import get_protocol, question_prefix, verdict_prefix
from judges.types import PairInput, Section, Status, Verdict
from vocabulary import DEFAULT_REPETITION_PENALTY

GOOD = (
    "Principles: Be correct.\nCritique: Response A is wrong. Response B is right.\nVerdict: [[B]]"
)
PAIR = PairInput(prompt="What is 2+2?", response_a="5", response_b="4", pair_id=1)


def prefers(word: str):
    """A judge that picks whichever response contains `word` (so it is order-consistent)."""

    def reply(messages) -> str:
        text = user_text(messages)
        a = text.split("[Response A]", 1)[1].split("[Response B]", 1)[0]
        letter = "A" if word in a else "B"
        return f"Principles: p.\nCritique: c.\nVerdict: [[{letter}]]"

    return reply


def softmax_share(logprobs: dict[str, float], *wanted: str) -> float:
    total = sum(math.exp(v) for v in logprobs.values())
    return sum(math.exp(logprobs[w]) for w in wanted) / total


# --- streaming ------------------------------------------------------------------------------------


def test_stream_goes_principles_then_critique_then_verdict_and_ends_with_the_aggregate() -> None:
    backend = FakeBackend([GOOD], chunk_size=2)
    updates = list(stream_judgment(backend, PAIR, JudgeOptions(), judge_version="v3"))
    sections = [u.section for u in updates if u.section is not None]
    firsts = [s for i, s in enumerate(sections) if i == 0 or sections[i - 1] != s]
    assert firsts == [Section.PRINCIPLES, Section.CRITIQUE, Section.VERDICT]
    assert len(updates) > 10  # one update per streamed piece
    assert all(u.judgment is None and u.aggregate is None for u in updates[:-1])
    last = updates[-1]
    assert last.judgment is not None and last.aggregate is not None
    assert (last.principles, last.verdict_text) == ("Be correct.", "[[B]]")
    judgment = last.judgment
    assert (judgment.verdict, judgment.status, judgment.verdict_source) == (
        Verdict.B,
        Status.COMPLETE,
        "text",
    )
    assert judgment.raw_text == GOOD and judgment.critique.startswith("Response A is wrong")
    assert (judgment.judge_version, judgment.prompt_version, judgment.pair_id) == (
        "v3",
        "pairwise-v2",
        1,
    )
    assert judgment.latency_s > 0 and judgment.completion_tokens > 0
    assert last.aggregate.verdict is Verdict.B and last.aggregate.votes == {"B": 1}


def test_backend_error_mid_stream_keeps_the_partial_text_and_goes_on() -> None:
    broken = FakeReply(GOOD, fail_after=50, error="server went away")
    backend = FakeBackend([broken, GOOD])
    updates = list(stream_judgment(backend, PAIR, JudgeOptions(swap=True)))
    done = [u.judgment for u in updates if u.judgment is not None]
    assert len(done) == 2, "the second sample still ran"
    failed, fine = done
    assert failed.status is Status.ERROR and failed.error == "server went away"
    assert failed.raw_text == GOOD[:50] and "Response A" in failed.critique
    assert failed.verdict is Verdict.NONE
    assert fine.swapped and fine.verdict is Verdict.A  # said [[B]] on the swapped pair
    assert updates[-1].aggregate.verdict is Verdict.A
    assert updates[-1].aggregate.position_consistent is None  # one order has no verdict


def test_an_unexpected_backend_exception_is_reported_not_raised() -> None:
    class Exploding(FakeBackend):
        def stream(self, messages, options):
            yield "Principles: x"
            raise KeyError("boom")

    updates = list(stream_judgment(Exploding(), PAIR, JudgeOptions()))
    judgment = updates[-1].judgment
    assert judgment.status is Status.ERROR and "KeyError" in judgment.error
    assert judgment.principles == "x"


def test_swap_streams_both_orders_and_unswaps_in_the_judgment() -> None:
    always_first = "Principles: p.\nCritique: c.\nVerdict: [[A]]"
    backend = FakeBackend([always_first, always_first])
    updates = list(stream_judgment(backend, PAIR, JudgeOptions(swap=True)))
    assert {(u.sample_index, u.swapped, u.sample_count) for u in updates} == {
        (0, False, 2),
        (0, True, 2),
    }
    second_user = user_text(backend.streamed[1][0])
    assert second_user.index("[Response A]\n4") < second_user.index("[Response B]\n5")
    result = updates[-1].aggregate
    assert [s.verdict for s in result.samples] == [Verdict.A, Verdict.B]
    assert result.position_consistent is False and result.verdict is Verdict.TIE


def test_k_samples_use_their_own_seeds_and_a_sampling_temperature() -> None:
    backend = FakeBackend([GOOD] * 3)
    options = JudgeOptions(k=3, seed=10)
    list(stream_judgment(backend, PAIR, options))
    assert [o.seed for _, o in backend.streamed] == [10, 11, 12]
    assert {o.temperature for _, o in backend.streamed} == {SAMPLING_TEMPERATURE}


def test_the_penalty_reaches_backends_that_apply_it_and_no_others() -> None:
    options = JudgeOptions(repetition_penalty=1.3)
    applies, cannot = FakeBackend([GOOD]), FakeBackend([GOOD])
    applies.supports_repetition_penalty = True
    list(stream_judgment(applies, PAIR, options))
    list(stream_judgment(cannot, PAIR, options))
    assert applies.streamed[0][1].repetition_penalty == 1.3
    assert cannot.streamed[0][1].repetition_penalty == 1.0  # an OpenAI server would refuse it
    assert JudgeOptions().repetition_penalty == DEFAULT_REPETITION_PENALTY
    with pytest.raises(ValidationError):
        JudgeOptions(repetition_penalty=0.9)  # below 1 would favour repeating


# --- options --------------------------------------------------------------------------------------


def test_a_verdict_alone_is_decoded_without_the_penalty() -> None:
    """A verdict-only answer is one letter from the prompt's own [[A]]/[[B]]/[[C]]: the
    penalty would only push it off them. A reasoning answer keeps the options' penalty."""
    options = JudgeOptions(repetition_penalty=1.3, max_new_tokens=4)
    verdict_only = options.model_copy(update={"prompt_version": "pairwise-v3-verdict"})
    streaming, batching = FakeBackend(["A]]"]), FakeBackend(["A]]"] * 2)
    streaming.supports_repetition_penalty = batching.supports_repetition_penalty = True
    list(stream_judgment(streaming, PAIR, verdict_only))
    judge_pairs(batching, [PAIR], verdict_only.model_copy(update={"swap": True}))
    assert streaming.streamed[0][1].repetition_penalty == 1.0
    assert [o.repetition_penalty for o in batching.batch_options] == [1.0]
    reasoning = FakeBackend([GOOD])
    reasoning.supports_repetition_penalty = True
    list(stream_judgment(reasoning, PAIR, options))
    assert reasoning.streamed[0][1].repetition_penalty == 1.3


def test_stored_options_read_back_as_they_ran() -> None:
    """Options stored before `repetition_penalty` existed ran without one; stored values win."""
    stored = JudgeOptions(k=2, swap=True).model_dump(mode="json")
    without = {k: v for k, v in stored.items() if k != "repetition_penalty"}
    assert JudgeOptions.from_stored(without).repetition_penalty == 1.0
    assert JudgeOptions.from_stored(without).model_dump(mode="json") == {
        **stored,
        "repetition_penalty": 1.0,
    }
    assert JudgeOptions.from_stored(stored) == JudgeOptions(k=2, swap=True)
    with pytest.raises(ValidationError, match="extra"):
        JudgeOptions.from_stored({**stored, "protocl": "pairwise"})


def test_options_refuse_unknown_keys_and_mismatched_prompts() -> None:
    with pytest.raises(ValidationError, match="extra"):
        JudgeOptions(protocl="pairwise")
    with pytest.raises(ValidationError, match="pointwise-v1"):
        JudgeOptions(protocol="pairwise", prompt_version="pointwise-v1")
    with pytest.raises(ValidationError):
        JudgeOptions(k=0)
    assert JudgeOptions(k=1).temperature == 0.0
    assert JudgeOptions(k=5).temperature == SAMPLING_TEMPERATURE
    assert JudgeOptions(k=5, temperature=1.0).temperature == 1.0


# --- batching -------------------------------------------------------------------------------------


def test_judge_pairs_batches_several_pairs_and_reports_progress() -> None:
    pairs = [PairInput("q", f"good {i}", f"bad {i}", pair_id=i) for i in range(5)]
    backend = FakeBackend(prefers("good"), max_batch_size=4)
    progress = []
    results = judge_pairs(
        backend, pairs, JudgeOptions(swap=True), on_progress=lambda d, t: progress.append((d, t))
    )
    assert backend.streamed == []  # batched, not streamed
    assert backend.batches == [4, 4, 2]  # two pairs x two orders per batch
    assert [r.pair_id for r in results] == [0, 1, 2, 3, 4]
    assert all(r.verdict is Verdict.A and r.position_consistent for r in results)
    assert progress == [(0, 5), (2, 5), (4, 5), (5, 5)]
    assert all(len(r.samples) == 2 and r.samples[1].swapped for r in results)


def test_batched_samples_of_one_index_share_a_seed_and_different_indices_do_not() -> None:
    pairs = [PairInput("q", "good", "bad", pair_id=i) for i in range(3)]
    backend = FakeBackend(prefers("good"), max_batch_size=8)
    results = judge_pairs(backend, pairs, JudgeOptions(k=2, seed=5))
    assert backend.batches == [3, 3]  # one batch per sample index over all three pairs
    assert [o.seed for o in backend.batch_options] == [5, 6]
    assert [[s.sample_index for s in r.samples] for r in results] == [[0, 1]] * 3
    assert all(r.votes == {"A": 2} for r in results)


def test_batched_and_streamed_judgments_agree() -> None:
    pairs = [PairInput("q", "good", "bad", pair_id=1), PairInput("q", "bad", "good", pair_id=2)]
    options = JudgeOptions(swap=True)
    batched = judge_pairs(FakeBackend(prefers("good")), pairs, options)
    for pair, result in zip(pairs, batched, strict=True):
        streamed = list(stream_judgment(FakeBackend(prefers("good")), pair, options))[-1]
        assert streamed.aggregate.verdict is result.verdict
        assert [(s.verdict, s.swapped) for s in streamed.aggregate.samples] == [
            (s.verdict, s.swapped) for s in result.samples
        ]


def test_should_stop_returns_the_pairs_finished_so_far() -> None:
    pairs = [PairInput("q", "good", "bad", pair_id=i) for i in range(6)]
    backend = FakeBackend(prefers("good"), max_batch_size=2)
    progress = []
    results = judge_pairs(
        backend,
        pairs,
        JudgeOptions(),
        on_progress=lambda d, t: progress.append(d),
        should_stop=lambda: len(progress) >= 3,
    )
    assert [r.pair_id for r in results] == [0, 1, 2, 3]
    assert backend.batches == [2, 2]


def test_a_failed_batch_marks_its_samples_as_errors_and_the_run_goes_on() -> None:
    pairs = [PairInput("q", "good", "bad", pair_id=i) for i in range(4)]
    script = [GOOD, FakeReply("x", fail_after=0, error="out of memory"), GOOD, GOOD]
    results = judge_pairs(FakeBackend(script, max_batch_size=2), pairs, JudgeOptions())
    statuses = [r.samples[0].status for r in results]
    assert statuses == [Status.ERROR, Status.ERROR, Status.COMPLETE, Status.COMPLETE]
    assert results[0].verdict is Verdict.NONE and results[0].samples[0].error == "out of memory"


def test_an_empty_list_is_judged_at_once() -> None:
    progress = []
    assert (
        judge_pairs(FakeBackend([]), [], JudgeOptions(), on_progress=lambda *a: progress.append(a))
        == []
    )
    assert progress == [(0, 0)]


# --- verdict probabilities and sources ------------------------------------------------------------


def test_no_stated_verdict_is_read_from_logprobs_and_labelled_so() -> None:
    text = "Principles: Be correct.\nCritique: Response A is wrong."
    logprobs = {" A": -2.5, "A": -3.0, "B": -0.2, "b": -4.0, "\n": -1.0}
    backend = FakeBackend([text], probe=lambda messages, prefix: logprobs)
    judgment = list(stream_judgment(backend, PAIR, JudgeOptions()))[-1].judgment
    assert backend.probes[0][1] == text + "\n\nVerdict: [["
    assert (judgment.verdict, judgment.verdict_source, judgment.status) == (
        Verdict.B,
        "logprobs",
        Status.COMPLETE,
    )
    expected = softmax_share({k: v for k, v in logprobs.items() if k != "\n"}, "B", "b")
    assert judgment.verdict_probability == pytest.approx(expected)


def test_a_stated_verdict_stays_text_and_gets_its_probability_at_the_verdict_position() -> None:
    backend = FakeBackend([GOOD], probe=lambda messages, prefix: {"A": -1.0, "B": -0.5})
    judgment = list(stream_judgment(backend, PAIR, JudgeOptions()))[-1].judgment
    assert backend.probes[0][1] == GOOD[: GOOD.index("[[B") + 2]
    assert (judgment.verdict, judgment.verdict_source) == (Verdict.B, "text")
    assert judgment.verdict_probability == pytest.approx(softmax_share({"A": -1.0, "B": -0.5}, "B"))


@pytest.mark.parametrize(("stated", "expected"), [("B", 0.3 / 0.5), ("C", 0.5), ("A", 0.2 / 0.5)])
def test_verdict_probability_sets_a_against_b_and_a_tie_against_all(stated, expected) -> None:
    text = f"Critique: x.\nVerdict: [[{stated}]]"
    probe = {"A": math.log(0.2), " B": math.log(0.3), "C": math.log(0.5)}
    backend = FakeBackend([text], probe=lambda messages, prefix: probe)
    judgment = list(stream_judgment(backend, PAIR, JudgeOptions()))[-1].judgment
    assert judgment.verdict_probability == pytest.approx(expected)


def test_generation_logprobs_are_used_without_probing() -> None:
    text = "Critique: ok.\nVerdict: [[A]]"
    tokens = [
        TokenLogprob("Critique: ok.\nVerdict:", -0.1),
        TokenLogprob(" [[", -0.1),
        TokenLogprob("A", -0.3, top={"A": -0.3, " B": -1.5}),
        TokenLogprob("]]", -0.01),
    ]
    backend = FakeBackend([FakeReply(text, token_logprobs=tokens)], probe=lambda m, p: {"B": 0.0})
    judgment = list(stream_judgment(backend, PAIR, JudgeOptions()))[-1].judgment
    assert backend.probes == []
    assert judgment.verdict_probability == pytest.approx(softmax_share({"A": -0.3, "B": -1.5}, "A"))


def test_conflicting_verdicts_are_not_rescued_by_logprobs() -> None:
    text = "Critique: both.\nVerdict: [[A]] or [[B]]"
    backend = FakeBackend([text], probe=lambda m, p: {"A": 0.0})
    judgment = list(stream_judgment(backend, PAIR, JudgeOptions()))[-1].judgment
    assert backend.probes == []
    assert (judgment.verdict, judgment.status, judgment.verdict_source) == (
        Verdict.NONE,
        Status.NO_VERDICT,
        "none",
    )


def test_without_logprobs_a_missing_verdict_stays_missing() -> None:
    backend = FakeBackend(["Critique: hmm."])
    judgment = list(stream_judgment(backend, PAIR, JudgeOptions()))[-1].judgment
    assert (judgment.verdict, judgment.status, judgment.verdict_probability) == (
        Verdict.NONE,
        Status.NO_VERDICT,
        None,
    )
    off = FakeBackend(["Critique: hmm."], probe=lambda m, p: {"A": 0.0})
    judgment = list(stream_judgment(off, PAIR, JudgeOptions(logprobs=False)))[-1].judgment
    assert off.probes == [] and judgment.verdict is Verdict.NONE


def test_an_exact_draw_in_the_logprobs_is_a_tie_not_a() -> None:
    backend = FakeBackend(["Critique: hmm."], probe=lambda m, p: {"A": -0.7, "B": -0.7})
    judgment = list(stream_judgment(backend, PAIR, JudgeOptions()))[-1].judgment
    assert (judgment.verdict, judgment.verdict_source) == (Verdict.TIE, "logprobs")
    assert judgment.verdict_probability is None


def test_truncated_output_rescued_by_logprobs_stays_truncated() -> None:
    backend = FakeBackend(
        [FakeReply("Critique: Response B is", finish_reason="length")],
        probe=lambda m, p: {"B": -0.1, "A": -2.0},
    )
    judgment = list(stream_judgment(backend, PAIR, JudgeOptions()))[-1].judgment
    assert (judgment.verdict, judgment.status, judgment.verdict_source) == (
        Verdict.B,
        Status.TRUNCATED,
        "logprobs",
    )


def test_a_logprob_verdict_on_the_swapped_pair_is_unswapped_too() -> None:
    backend = FakeBackend(["Critique: x.", "Critique: y."], probe=lambda m, p: {"A": 0.0})
    result = list(stream_judgment(backend, PAIR, JudgeOptions(swap=True)))[-1].aggregate
    assert [(s.verdict, s.verdict_source) for s in result.samples] == [
        (Verdict.A, "logprobs"),
        (Verdict.B, "logprobs"),
    ]


def test_prefixes_continue_where_the_decision_comes() -> None:
    assert verdict_prefix("Critique: x.\nVerdict:") == "Critique: x.\nVerdict: [["
    assert verdict_prefix("Critique: x.\n**Verdict**") == "Critique: x.\n**Verdict** [["
    assert verdict_prefix("Critique: x.\nVerdict: [[") == "Critique: x.\nVerdict: [["
    assert verdict_prefix("") == "Verdict: [["
    assert question_prefix("Verification: ok.") == (
        "Verification: ok.\nIs the answer correct (Yes/No)?"
    )
    assert question_prefix("ok.\nIs the answer correct (Yes/No)? ") == (
        "ok.\nIs the answer correct (Yes/No)?"
    )


# --- pointwise and verifier -----------------------------------------------------------------------


def test_pointwise_verdict_comes_from_the_scores() -> None:
    text = "Specific Criteria: c.\nAnalysis: a.\nScores: \\boxed{4, 9}"
    backend = FakeBackend([text, text], probe=lambda m, p: {"A": 0.0})
    result = list(stream_judgment(backend, PAIR, JudgeOptions(protocol="pointwise", swap=True)))
    first, second = result[-1].aggregate.samples
    assert (first.verdict, first.scores, first.verdict_source) == (Verdict.B, (4.0, 9.0), "scores")
    assert (second.verdict, second.scores) == (Verdict.A, (9.0, 4.0))
    assert backend.probes == []
    assert result[-1].aggregate.scores == (6.5, 6.5)  # mean scores over samples and orders
    assert result[-1].aggregate.verdict is Verdict.TIE


def verifier_script(messages) -> str:
    response = user_text(messages).split("[Response]\n", 1)[1].split("\n", 1)[0]
    answer = "Yes" if response == "4" else "No"
    return f"Verification: it says {response}.\nIs the answer correct (Yes/No)? {answer}"


def test_verifier_reward_is_p_yes_per_response() -> None:
    def probe(messages, prefix):
        said_four = "[Response]\n4" in user_text(messages)
        return {" Yes": -0.1, "yes": -3.0, " No": -2.0} if said_four else {"Yes": -1.5, "No": -0.3}

    backend = FakeBackend(verifier_script, probe=probe)
    updates = list(stream_judgment(backend, PAIR, JudgeOptions(protocol="verifier")))
    assert len(backend.streamed) == 2  # one conversation per response
    assert all(p.endswith("(Yes/No)? ") or p.endswith("(Yes/No)?") for _, p in backend.probes)
    judgment = updates[-1].judgment
    reward_a = softmax_share({"Yes": -1.5, "No": -0.3}, "Yes")
    reward_b = softmax_share({" Yes": -0.1, "yes": -3.0, " No": -2.0}, " Yes", "yes")
    assert judgment.scores == pytest.approx((reward_a, reward_b))
    assert (judgment.verdict, judgment.verdict_source) == (Verdict.B, "logprobs")
    assert 0.5 < judgment.verdict_probability < 1
    assert "Response A: it says 5." in judgment.critique and "Response B:" in judgment.critique
    assert "[Response A]" in judgment.raw_text and "[Response B]" in judgment.raw_text
    streamed_critiques = [u.critique for u in updates]
    assert any(c.startswith("Response A:") and "Response B:" not in c for c in streamed_critiques)


def test_verifier_without_logprobs_uses_the_stated_answers() -> None:
    backend = FakeBackend(verifier_script)
    judgment = list(stream_judgment(backend, PAIR, JudgeOptions(protocol="verifier")))[-1].judgment
    assert (judgment.verdict, judgment.scores, judgment.verdict_source) == (
        Verdict.B,
        (0.0, 1.0),
        "text",
    )
    assert judgment.status is Status.COMPLETE


def test_verifier_with_one_failed_response_has_no_verdict() -> None:
    script = [
        FakeReply("Verification: fine", fail_after=5),
        verifier_script([{"role": "user", "content": "[Response]\n4\n"}]),
    ]
    judgment = list(stream_judgment(FakeBackend(script), PAIR, JudgeOptions(protocol="verifier")))[
        -1
    ].judgment
    assert (judgment.verdict, judgment.status) == (Verdict.NONE, Status.ERROR)


def test_get_protocol_names_the_known_ones() -> None:
    assert get_protocol("verifier").calls_per_sample == 2
    with pytest.raises(ValueError, match="pairwise, pointwise, verifier"):
        get_protocol("listwise")


# --- a judge whose answer is started for it ----------------------------------------------------


class PrefillBackend(FakeBackend):
    """A scripted backend that continues a final assistant message, as local models do."""

    supports_prefill = True


def test_a_prefilled_answer_is_continued_and_kept_whole() -> None:
    reply = " Be correct.\nCritique: A is wrong.\nVerdict: [[B]]"
    backend = PrefillBackend(script=[reply, reply])
    updates = list(stream_judgment(backend, PAIR, JudgeOptions()))
    sent = backend.streamed[0][0]
    assert sent[-1] == {"role": "assistant", "content": "Principles:"}
    assert updates[0].section is Section.PRINCIPLES and updates[0].principles
    judgment = updates[-1].judgment
    assert judgment.raw_text == "Principles:" + reply
    assert (judgment.principles, judgment.verdict) == ("Be correct.", Verdict.B)
    (batched,) = judge_pairs(backend, [PAIR], JudgeOptions())
    assert batched.samples[0].raw_text == judgment.raw_text


def test_a_backend_that_cannot_continue_gets_no_prefill() -> None:
    backend = FakeBackend(script=[GOOD])
    list(stream_judgment(backend, PAIR, JudgeOptions()))
    assert backend.streamed[0][0][-1]["role"] == "user"


def test_token_probabilities_still_line_up_after_a_prefill() -> None:
    tokens = [
        TokenLogprob(" p.\nVerdict: [[", -0.1),
        TokenLogprob("B", math.log(0.75), {"A": math.log(0.25)}),
        TokenLogprob("]]", -0.01),
    ]
    backend = PrefillBackend(script=[FakeReply(" p.\nVerdict: [[B]]", token_logprobs=tokens)])
    judgment = list(stream_judgment(backend, PAIR, JudgeOptions()))[-1].judgment
    assert (judgment.verdict, judgment.verdict_source) == (Verdict.B, "text")
    assert judgment.verdict_probability == pytest.approx(0.75)


# --- aggregation rule (issue 16) ------------------------------------------------------------------


def second_slot_judge(messages) -> str:
    """Always says [[B]]: a judge whose stated verdict is pure position bias."""
    return "Principles: p.\nCritique: c.\nVerdict: [[B]]"


def surer_when_b_holds_4(messages, prefix) -> dict[str, float]:
    """Its log-probs still know better: P(B) 0.8 when slot B holds "4" (right), else 0.6."""
    text = user_text(messages)
    p_b = 0.8 if text.split("[Response B]", 1)[1].lstrip().startswith("4") else 0.6
    return {"A": math.log(1 - p_b), "B": math.log(p_b)}


@pytest.mark.parametrize(
    ("rule", "verdict", "margin"),
    [
        # original: said B at 0.8, P(A) 0.2; swapped: said B (= A) at 0.6, P(A) 0.6
        ("mean", Verdict.B, (math.log(0.2 / 0.8) + math.log(0.6 / 0.4)) / 2),
        ("vote", Verdict.TIE, None),
    ],
)
def test_swap_keeps_the_evidence_under_mean_and_votes_a_tie_under_vote(rule, verdict, margin):
    options = JudgeOptions(swap=True, aggregate=rule)
    streamed = list(
        stream_judgment(FakeBackend(second_slot_judge, probe=surer_when_b_holds_4), PAIR, options)
    )[-1].aggregate
    (batched,) = judge_pairs(
        FakeBackend(second_slot_judge, probe=surer_when_b_holds_4), [PAIR], options
    )
    for result in (streamed, batched):
        assert (result.verdict, result.aggregation) == (verdict, rule)
        assert result.position_consistent is False
        assert result.margin == (None if margin is None else pytest.approx(margin))


def test_mean_falls_back_to_vote_when_the_backend_gives_no_logprobs() -> None:
    (result,) = judge_pairs(FakeBackend(second_slot_judge), [PAIR], JudgeOptions(swap=True))
    assert (result.verdict, result.aggregation) == (Verdict.TIE, "vote")


def test_the_aggregation_option_is_checked_and_mean_by_default() -> None:
    assert JudgeOptions().aggregate == "mean"
    assert JudgeOptions(aggregate="vote").model_dump()["aggregate"] == "vote"
    with pytest.raises(ValidationError):
        JudgeOptions(aggregate="median")
