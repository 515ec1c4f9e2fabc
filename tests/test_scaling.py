"""Un-swapping and k-sample aggregation: the one place order and votes are handled."""

from __future__ import annotations

import pytest

from judges.scaling import aggregate, majority, position_consistency, unswap
from judges.types import Judgment, Status, Verdict


def judgment(
    verdict: Verdict,
    *,
    protocol: str = "pairwise",
    swapped: bool = False,
    scores: tuple[float, float] | None = None,
    status: Status = Status.COMPLETE,
) -> Judgment:
    return Judgment(
        protocol=protocol,
        prompt_version=f"{protocol}-v1",
        verdict=verdict,
        status=status,
        scores=scores,
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


def test_pointwise_sums_scores_rather_than_counting_votes() -> None:
    # Two narrow wins for A, one large win for B: votes say A, sums say B.
    samples = [
        judgment(Verdict.A, protocol="pointwise", scores=(6, 5)),
        judgment(Verdict.A, protocol="pointwise", scores=(6, 5)),
        judgment(Verdict.B, protocol="pointwise", scores=(1, 10)),
        judgment(Verdict.NONE, protocol="pointwise", scores=None),
    ]
    result = aggregate(samples)
    assert result.scores == (13, 20)
    assert result.verdict is Verdict.B
    assert result.votes == {"A": 2, "B": 1, "none": 1}


def test_pointwise_swapped_scores_are_summed_in_the_original_order() -> None:
    samples = [
        judgment(Verdict.A, protocol="pointwise", scores=(8, 4)),
        flipped(Verdict.B, protocol="pointwise", scores=(3, 9)),  # said B=9 -> original A=9
    ]
    result = aggregate(samples)
    assert result.scores == (17, 7)
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
