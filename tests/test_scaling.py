"""Un-swapping and k-sample aggregation: the one place order and votes are handled."""

from __future__ import annotations

import math

import pytest

from judges.scaling import TIE_BAND, aggregate, log_odds, majority, position_consistency, unswap
from judges.types import Aggregation, Judgment, Status, Verdict


def judgment(
    verdict: Verdict,
    *,
    protocol: str = "pairwise",
    swapped: bool = False,
    scores: tuple[float, float] | None = None,
    status: Status = Status.COMPLETE,
    p: float | None = None,
) -> Judgment:
    return Judgment(
        protocol=protocol,
        prompt_version=f"{protocol}-v1",
        verdict=verdict,
        status=status,
        scores=scores,
        verdict_probability=p,
        swapped=swapped,
        pair_id=7,
    )


def flipped(verdict: Verdict, **kwargs) -> Judgment:
    """A judgment made on the swapped pair, un-swapped: `verdict` is what the judge said."""
    return unswap(judgment(verdict, **kwargs))


@pytest.mark.parametrize(
    ("said", "means"),
    [
        (Verdict.A, Verdict.B),
        (Verdict.B, Verdict.A),
        (Verdict.TIE, Verdict.TIE),
        (Verdict.NONE, Verdict.NONE),
    ],
)
def test_unswap_maps_the_verdict_back_and_a_failure_stays_a_failure(said, means) -> None:
    original = judgment(said, status=Status.ERROR if said is Verdict.NONE else Status.COMPLETE)
    back = unswap(original)
    assert back.verdict is means
    assert back.swapped is True
    assert back.status is original.status
    assert original.swapped is False and original.verdict is said  # the input is not mutated


def test_unswap_reverses_scores_and_keeps_the_probability_of_the_same_response() -> None:
    original = judgment(Verdict.A, protocol="pointwise", scores=(8.0, 3.0))
    original.verdict_probability = 0.9
    back = unswap(original)
    assert back.scores == (3.0, 8.0)
    assert (back.verdict, back.verdict_probability) == (Verdict.B, 0.9)


def test_unswap_refuses_to_run_twice() -> None:
    with pytest.raises(ValueError, match="already"):
        unswap(unswap(judgment(Verdict.A)))


def test_majority_vote_ignores_failures_and_ties_between_leaders() -> None:
    assert majority([Verdict.A, Verdict.A, Verdict.B]) is Verdict.A
    assert majority([Verdict.A, Verdict.NONE, Verdict.NONE, Verdict.NONE]) is Verdict.A
    assert majority([Verdict.A, Verdict.B]) is Verdict.TIE
    assert majority([Verdict.NONE, Verdict.NONE]) is Verdict.NONE
    assert majority([]) is Verdict.NONE


def test_aggregate_keeps_the_vote_split() -> None:
    samples = [
        judgment(Verdict.B),
        judgment(Verdict.B),
        judgment(Verdict.A),
        judgment(Verdict.NONE, status=Status.NO_VERDICT),
    ]
    result = aggregate(samples)
    assert result.verdict is Verdict.B
    assert result.votes == {"A": 1, "B": 2, "none": 1}
    assert result.samples == samples and result.pair_id == 7
    assert result.position_consistent is None  # no swapped samples
    assert result.scores is None


def test_all_failures_aggregate_to_no_verdict_even_with_swap() -> None:
    result = aggregate([judgment(Verdict.NONE), flipped(Verdict.NONE)])
    assert result.verdict is Verdict.NONE
    assert result.position_consistent is None


@pytest.mark.parametrize(
    ("rule", "scores"), [(Aggregation.VOTE, (13, 20)), (Aggregation.MEAN, (13 / 3, 20 / 3))]
)
def test_pointwise_combines_scores_rather_than_counting_votes(rule, scores) -> None:
    # Two narrow wins for A, one large win for B: votes would say A, scores say B.
    samples = [
        judgment(Verdict.A, protocol="pointwise", scores=(6, 5)),
        judgment(Verdict.A, protocol="pointwise", scores=(6, 5)),
        judgment(Verdict.B, protocol="pointwise", scores=(1, 10)),
        judgment(Verdict.NONE, protocol="pointwise", scores=None),
    ]
    result = aggregate(samples, rule)
    assert result.scores == pytest.approx(scores)
    assert result.verdict is Verdict.B
    assert result.votes == {"A": 2, "B": 1, "none": 1}
    assert result.aggregation == rule.value


@pytest.mark.parametrize(
    ("rule", "scores", "margin"),
    [(Aggregation.VOTE, (17, 7), None), (Aggregation.MEAN, (8.5, 3.5), 5.0)],
)
def test_pointwise_swapped_scores_are_combined_in_the_original_order(rule, scores, margin) -> None:
    samples = [
        judgment(Verdict.A, protocol="pointwise", scores=(8, 4)),
        flipped(Verdict.B, protocol="pointwise", scores=(3, 9)),  # said B=9 -> original A=9
    ]
    result = aggregate(samples, rule)
    assert result.scores == scores and result.margin == margin
    assert (result.verdict, result.position_consistent) == (Verdict.A, True)


def test_verifier_aggregates_by_vote_and_reports_mean_rewards() -> None:
    samples = [
        judgment(Verdict.A, protocol="verifier", scores=(0.9, 0.2)),
        judgment(Verdict.B, protocol="verifier", scores=(0.4, 0.6)),
        judgment(Verdict.A, protocol="verifier", scores=(0.8, 0.1)),
    ]
    result = aggregate(samples)
    assert result.verdict is Verdict.A
    assert result.scores == pytest.approx((0.7, 0.3))


@pytest.mark.parametrize(
    ("first", "second_said", "consistent", "overall"),
    [
        (Verdict.A, Verdict.B, True, Verdict.A),  # said B on the swapped pair = A
        (Verdict.A, Verdict.A, False, Verdict.TIE),  # position bias: always the first slot
        (Verdict.TIE, Verdict.TIE, True, Verdict.TIE),
        (Verdict.A, Verdict.NONE, None, Verdict.A),
        (Verdict.NONE, Verdict.B, None, Verdict.A),
    ],
)
def test_position_consistency(first, second_said, consistent, overall) -> None:
    samples = [judgment(first), flipped(second_said)]
    assert position_consistency(samples) is consistent
    result = aggregate(samples)
    assert result.position_consistent is consistent
    assert result.verdict is overall


def test_inconsistent_orders_keep_the_majority_over_all_samples() -> None:
    # k=2 with swap: original order says A, A; swapped order says (un-swapped) B, A.
    samples = [judgment(Verdict.A), flipped(Verdict.A), judgment(Verdict.A), flipped(Verdict.B)]
    result = aggregate(samples)
    assert result.position_consistent is False  # original: A; swapped side: tie of B and A
    assert result.verdict is Verdict.A
    assert result.votes == {"A": 3, "B": 1}


def test_aggregate_refuses_mixed_inputs() -> None:
    with pytest.raises(ValueError, match="no judgments"):
        aggregate([])
    with pytest.raises(ValueError, match="protocols"):
        aggregate([judgment(Verdict.A), judgment(Verdict.A, protocol="pointwise")])
    other = judgment(Verdict.A)
    other.pair_id = 8
    with pytest.raises(ValueError, match="pairs"):
        aggregate([judgment(Verdict.A), other])


# --- the MEAN rule: the judge's evidence, not hard votes (issue 16) ------------------------------

A, B, TIE, NONE = Verdict.A, Verdict.B, Verdict.TIE, Verdict.NONE


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def p_for(margin: float) -> float:
    """The verdict probability of a stated A whose log-odds of A over B is `margin`."""
    return sigmoid(margin)


@pytest.mark.parametrize(
    ("first", "p1", "second_said", "p2", "verdict", "probability"),
    [
        # both orders pick the same response: said B on the swapped pair is A
        (A, 0.9, B, 0.9, A, 0.9),
        # pure position bias (always the first slot, equally sure): no evidence either way
        (A, 0.7, A, 0.7, TIE, None),
        # always the second slot, but surer when it is response A: the flip still says A
        (B, 0.7, B, 0.8, A, sigmoid((log_odds(0.3) + log_odds(0.8)) / 2)),
        # always the first slot, surer when it is response B
        (A, 0.6, A, 0.9, B, sigmoid(-(log_odds(0.6) + log_odds(0.1)) / 2)),
        # a stated tie adds 0 whatever its probability (P(tie), not A against B)
        (TIE, 0.8, B, 0.9, A, sigmoid(log_odds(0.9) / 2)),
        # certainty (B absent from the top log-probs) is large, not infinite
        (A, 1.0, A, 0.6, A, sigmoid((log_odds(1.0) + log_odds(0.4)) / 2)),
    ],
)
def test_log_odds_of_both_orders_combine_in_the_original_order(
    first, p1, second_said, p2, verdict, probability
) -> None:
    samples = [judgment(first, p=p1), flipped(second_said, p=p2)]
    result = aggregate(samples)
    assert result.aggregation == "mean"
    assert result.verdict is verdict
    if probability is None:
        assert result.verdict_probability is None
    else:
        assert result.verdict_probability == pytest.approx(probability)
    assert math.isfinite(result.margin)


def test_a_biased_judge_is_a_tie_by_vote_but_keeps_its_evidence_by_mean() -> None:
    samples = [judgment(B, p=0.7), flipped(B, p=0.8)]  # the second slot, whatever it holds
    voted, mean = aggregate(samples, Aggregation.VOTE), aggregate(samples, "mean")
    assert (voted.verdict, voted.aggregation, voted.margin) == (TIE, "vote", None)
    assert (mean.verdict, mean.aggregation) == (A, "mean")
    assert voted.position_consistent is mean.position_consistent is False
    assert voted.votes == mean.votes == {"A": 1, "B": 1}


@pytest.mark.parametrize(
    ("margin", "tie_band", "verdict"),
    [
        (0.0, TIE_BAND, TIE),  # exactly balanced evidence (pure position bias)
        (0.05, TIE_BAND, A),  # the default band: any preference decides
        (-0.06, TIE_BAND, B),
        (0.05, 0.1, TIE),  # a band, asked for
        (-0.09, 0.1, TIE),
        (0.11, 0.1, A),
        (-0.11, 0.1, B),
        (0.5, 1.0, TIE),
    ],
)
def test_tie_band_around_zero(margin, tie_band, verdict) -> None:
    both_orders = [judgment(A, p=p_for(margin)), flipped(B, p=p_for(margin))]
    result = aggregate(both_orders, tie_band=tie_band)
    assert result.margin == pytest.approx(margin)
    assert result.verdict is verdict
    assert (result.verdict_probability is None) == (verdict is TIE)


def test_the_tie_band_is_stated_in_log_odds() -> None:
    assert TIE_BAND == 0.0  # only balanced evidence is a tie; measured, see judges.scaling
    assert sigmoid(0.1) == pytest.approx(0.525, abs=1e-3)  # what a band of 0.1 would mean


@pytest.mark.parametrize(
    ("samples", "rule_used", "verdict"),
    [
        # k = 3 with log-probs: two faint A against one sure B; the mean says B, a vote says A
        ([(A, 0.55), (A, 0.55), (B, 0.95)], "mean", B),
        ([(A, 0.9), (A, 0.6), (B, 0.7)], "mean", A),
        # without log-probs the stated verdicts vote, as before
        ([(A, None), (A, None), (B, None)], "vote", A),
        ([(A, None), (B, None)], "vote", TIE),
        # one sample without a probability: the whole pair votes, never a partial mean
        ([(A, 0.55), (A, None), (B, 0.95)], "vote", A),
        # a sample without a verdict gives no evidence, under either rule
        ([(A, 0.55), (NONE, None), (B, 0.95)], "mean", B),
        ([(NONE, None), (NONE, None)], "mean", NONE),
        # stated ties count as 0 evidence
        ([(TIE, 0.9), (TIE, 0.6), (A, 0.6)], "mean", A),
        ([(TIE, None), (TIE, None)], "mean", TIE),
    ],
)
def test_k_samples_with_and_without_logprobs(samples, rule_used, verdict) -> None:
    judged = [
        judgment(v, p=p, status=Status.NO_VERDICT if v is NONE else Status.COMPLETE)
        for v, p in samples
    ]
    for index, item in enumerate(judged):
        item.sample_index = index
    result = aggregate(judged)
    assert (result.aggregation, result.verdict) == (rule_used, verdict)
    assert aggregate(judged, Aggregation.VOTE).aggregation == "vote"


@pytest.mark.parametrize("rule", list(Aggregation))
@pytest.mark.parametrize(
    ("original", "swapped_said", "verdict"),
    [
        ((NONE, None), (A, 0.8), B),  # the original order failed; the swapped one said A = B
        ((B, 0.8), (NONE, None), B),  # the swapped order failed
        ((NONE, None), (TIE, None), TIE),
        ((NONE, None), (NONE, None), NONE),  # nothing said: no verdict, never A
        ((NONE, 0.9), (NONE, 0.9), NONE),  # a stray probability without a verdict is no vote
    ],
)
def test_a_missing_order_never_becomes_a(rule, original, swapped_said, verdict) -> None:
    def sample(v, p, **kwargs):
        return judgment(v, p=p, status=Status.ERROR if v is NONE else Status.COMPLETE, **kwargs)

    result = aggregate([sample(*original), unswap(sample(*swapped_said))], rule)
    assert result.verdict is verdict
    assert result.position_consistent is None


@pytest.mark.parametrize(
    ("rule", "verdict", "scores"),
    [(Aggregation.VOTE, A, (0.41, 0.623)), (Aggregation.MEAN, B, (0.41, 0.623))],
)
def test_verifier_mean_compares_mean_p_yes_per_response(rule, verdict, scores) -> None:
    # Two narrow wins for A, one clear win for B: the vote says A, the mean P(Yes) says B.
    samples = [
        judgment(A, protocol="verifier", scores=(0.52, 0.49)),
        judgment(A, protocol="verifier", scores=(0.53, 0.48)),
        judgment(B, protocol="verifier", scores=(0.18, 0.9)),
    ]
    result = aggregate(samples, rule)
    assert result.verdict is verdict
    assert result.scores == pytest.approx(scores, abs=1e-3)
    if rule is Aggregation.MEAN:
        assert result.margin == pytest.approx(log_odds(0.41) - log_odds(1.87 / 3))
        assert result.verdict_probability == pytest.approx(sigmoid(-result.margin))


@pytest.mark.parametrize(
    ("scores", "verdict"),
    [([(1.0, 1.0), (1.0, 0.0)], A), ([(1.0, 1.0), (0.0, 0.0)], TIE), ([(0.0, 1.0)], B)],
)
def test_verifier_without_logprobs_averages_its_stated_yes_and_no(scores, verdict) -> None:
    samples = [judgment(stated(*s), protocol="verifier", scores=s) for s in scores]
    assert aggregate(samples).verdict is verdict


def stated(a: float, b: float) -> Verdict:
    return A if a > b else B if b > a else TIE


@pytest.mark.parametrize(
    ("samples", "verdict", "probability"),
    [
        ([judgment(A, p=0.4)], A, 0.4),  # its text says [[A]]; the decision does not contradict it
        ([judgment(A, p=0.51)], A, 0.51),  # inside the band, still its own verdict
        ([judgment(NONE, status=Status.ERROR), flipped(A, p=0.4)], B, 0.4),
        ([judgment(TIE, p=0.7)], TIE, None),
    ],
)
def test_a_lone_judgment_keeps_its_stated_verdict(samples, verdict, probability) -> None:
    result = aggregate(samples)
    assert (result.aggregation, result.verdict) == ("mean", verdict)
    assert result.verdict_probability == probability
    assert result.margin is not None  # the evidence is still reported


def test_an_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError):
        aggregate([judgment(A, p=0.9)], "median")


def test_a_stated_tie_still_weighs_a_against_b_when_the_probabilities_were_read() -> None:
    # Both orders say [[C]], but the judge's P(A) vs P(B) leans to the same response twice:
    # 0.8 for A shown first, 0.3 for A shown second (so 0.7 for the original A).
    first = Judgment("pairwise", "v", verdict=Verdict.TIE, verdict_probability=0.6, p_a=0.8)
    second = Judgment("pairwise", "v", verdict=Verdict.TIE, verdict_probability=0.6, p_a=0.3)
    result = aggregate([first, unswap(second)], Aggregation.MEAN)
    expected = (math.log(0.8 / 0.2) + math.log(0.7 / 0.3)) / 2
    assert result.margin == pytest.approx(expected) and result.verdict is Verdict.A
    # Without read probabilities a stated tie stays evidence of nothing.
    bare = [Judgment("pairwise", "v", verdict=Verdict.TIE, verdict_probability=0.6)] * 2
    assert aggregate(bare, Aggregation.MEAN).verdict is Verdict.TIE
