"""Evaluating a judge on held-out labels, against a scripted judge whose answers are known."""

from __future__ import annotations

import pytest
from fakes import FakeBackend, user_text

from judges.evaluation import evaluate_judge, heldout_inputs, judgment_record, make_sampler
from judges.judge import JudgeOptions, judge_pairs
from judges.training_data import parse_records
from judges.types import PairInput

PAIRS = [
    PairInput("q1", "good one", "bad one", pair_id=1),
    PairInput("q2", "bad two", "good two", pair_id=2),
    PairInput("q3", "good three", "bad three", pair_id=3),
    PairInput("q4", "bad four", "bad four too", pair_id=4),
]
LABELS = ["A", "B", "A", "B"]


def picks_good(messages) -> str:
    """Picks the response with "good" in it, else A: consistent where it knows, biased where not."""
    text = user_text(messages)
    a = text.split("[Response A]", 1)[1].split("[Response B]", 1)[0]
    b = text.split("[Response B]", 1)[1]
    letter = "A" if "good" in a else "B" if "good" in b else "A"
    return f"Critique: Response {letter} is good.\nVerdict: [[{letter}]]"


def test_accuracy_kappa_and_per_pair_verdicts():
    options = JudgeOptions(logprobs=False)
    report = evaluate_judge(FakeBackend(script=picks_good), PAIRS, LABELS, options, n_boot=200)
    assert report["n"] == 4 and report["accuracy"] == 0.75  # pair 4: "A", human said B
    assert report["no_verdict_rate"] == 0.0
    assert report["kappa"] == pytest.approx(0.5)
    assert [row["judge"] for row in report["per_pair"]] == ["A", "B", "A", "A"]
    assert [row["judge_swapped"] for row in report["per_pair"]] == [None] * 4
    assert report["position_consistency"]["compared"] == 0  # no swap, nothing to compare
    assert report["model"] == "fake-judge" and report["options"]["swap"] is False


def test_swap_measures_position_consistency_on_each_orders_own_verdict():
    options = JudgeOptions(swap=True, logprobs=False)
    report = evaluate_judge(FakeBackend(script=picks_good), PAIRS, LABELS, options, n_boot=200)
    rows = report["per_pair"]
    # pair 4 has no "good" response: "A" in both orders is A, then B once un-swapped
    assert [(r["judge_original"], r["judge_swapped"]) for r in rows][3] == ("A", "B")
    assert rows[3]["judge"] == "tie"  # the vote of A against B
    consistency = report["position_consistency"]
    assert (consistency["compared"], consistency["consistent"]) == (4, 3)
    assert report["accuracy"] == 0.75


def test_no_verdict_counts_as_wrong_and_is_reported():
    backend = FakeBackend(script=lambda messages: "Critique: I cannot decide.")
    report = evaluate_judge(backend, PAIRS, LABELS, JudgeOptions(logprobs=False), n_boot=50)
    assert report["accuracy"] == 0.0 and report["no_verdict_rate"] == 1.0


def test_labels_by_pair_id_and_categories():
    labels = {1: "A", 2: "B", 3: "B", 4: "tie"}
    report = evaluate_judge(
        FakeBackend(script=picks_good),
        PAIRS,
        labels,
        JudgeOptions(logprobs=False),
        categories=["x", "x", "y", None],
        n_boot=50,
    )
    assert report["by_category"]["x"]["accuracy"] == 1.0
    assert report["by_category"]["y"]["accuracy"] == 0.0
    assert report["by_category"]["(none)"]["n"] == 1


@pytest.mark.parametrize(
    ("labels", "message"),
    [({1: "A"}, "no human label for pairs \\[2, 3, 4\\]"), (["A"], "1 labels for 4 pairs")],
)
def test_labels_must_cover_every_pair(labels, message):
    with pytest.raises(ValueError, match=message):
        evaluate_judge(FakeBackend(script=picks_good), PAIRS, labels, JudgeOptions())


def test_sampler_draws_fresh_samples_in_the_original_order():
    backend = FakeBackend(script=picks_good)
    sample_more = make_sampler(backend, JudgeOptions(swap=True, logprobs=False, seed=5))
    results = sample_more(PAIRS[:2], 3)
    assert [len(r) for r in results] == [3, 3]
    assert results[1][0] == {
        "verdict": "B",
        "raw_text": "Critique: Response B is good.\nVerdict: [[B]]",
        "swapped": False,
        "protocol": "pairwise",
        "status": "complete",
    }
    used = backend.batch_options[0]
    assert used.temperature > 0 and used.seed == 1005  # sampled, past the stored seeds


def test_sampled_records_feed_the_training_data_builder():
    records = [
        {
            "pair_id": 1,
            "prompt": "q1",
            "response_a": "good one",
            "response_b": "bad one",
            "label": "A",
            "category": "chat",
            "judgments": [
                judgment_record(
                    judge_pairs(
                        FakeBackend(script=picks_good), PAIRS[:1], JudgeOptions(logprobs=False)
                    )[0].samples[0]
                )
            ],
        }
    ]
    (pair,) = parse_records(records)
    assert pair.judgments[0].verdict.value == "A"
    inputs, labels, categories = heldout_inputs([pair], [1])
    assert (inputs[0].response_a, labels, categories) == ("good one", ["A"], ["chat"])
