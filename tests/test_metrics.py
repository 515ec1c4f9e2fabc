"""Judge-vs-human agreement figures, checked against values worked out by hand."""

from __future__ import annotations

import pytest

from judges.metrics import (
    accuracy_by_group,
    accuracy_with_interval,
    agreement_report,
    bootstrap_interval,
    cohen_kappa,
    confusion_matrix,
    inter_annotator_agreement,
    inter_annotator_table,
    normalize_verdict,
    paired_comparison,
    position_consistency,
)
from judges.types import Verdict


@pytest.mark.parametrize(
    ("judge", "human", "n", "correct", "accuracy", "no_verdict_rate", "excluded"),
    [
        (["A", "B", "A", "B"], ["A", "B", "B", "B"], 4, 3, 0.75, 0.0, 0),
        # a missing verdict is wrong, and reported on its own
        (["none", "A", "none", "B"], ["A", "A", "B", "B"], 4, 2, 0.5, 0.5, 0),
        # ties must be matched exactly
        (["tie", "A", "tie"], ["tie", "tie", "B"], 3, 1, 1 / 3, 0.0, 0),
        # human "both_bad" / "skip" are not scored, only counted
        (["A", "A", "B"], ["A", "both_bad", "skip"], 1, 1, 1.0, 0.0, 2),
        # Verdict enums and None are accepted
        ([Verdict.A, None, Verdict.TIE], ["A", "B", "tie"], 3, 2, 2 / 3, 1 / 3, 0),
    ],
)
def test_accuracy_counts(judge, human, n, correct, accuracy, no_verdict_rate, excluded):
    figures = accuracy_with_interval(judge, human, n_boot=200, seed=1)
    assert figures["n"] == n
    assert figures["correct"] == correct
    assert figures["accuracy"] == pytest.approx(accuracy)
    assert figures["no_verdict_rate"] == pytest.approx(no_verdict_rate)
    assert figures["excluded"] == excluded
    assert figures["ci_low"] <= figures["accuracy"] <= figures["ci_high"]


def test_accuracy_of_nothing_is_none_not_zero():
    figures = accuracy_with_interval([], [])
    assert figures["n"] == 0
    assert figures["accuracy"] is None and figures["ci_low"] is None
    assert figures["no_verdict_rate"] is None


def test_accuracy_refuses_lists_of_different_length():
    with pytest.raises(ValueError, match="differ in length: 2 vs 1"):
        accuracy_with_interval(["A", "B"], ["A"])


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [1.0] * 60 + [0.0] * 40
    first = bootstrap_interval(values, n_boot=500, seed=7)
    assert first == bootstrap_interval(values, n_boot=500, seed=7)
    low, high = first
    assert low < 0.6 < high
    # binomial standard error is ~0.049, so the 95% interval is about 0.50..0.70
    assert 0.48 < low < 0.53 and 0.67 < high < 0.72
    assert bootstrap_interval([1.0, 1.0, 1.0]) == (1.0, 1.0)
    assert bootstrap_interval([]) == (None, None)


@pytest.mark.parametrize(
    ("first", "second", "kappa"),
    [
        # sklearn's documented example with labels 0/1/2 mapped to A/B/tie
        (["tie", "A", "tie", "tie", "A", "B"], ["A", "A", "tie", "tie", "A", "tie"], 0.4285714),
        (["A", "A", "B", "B"], ["A", "B", "B", "B"], 0.5),
        (["A", "B", "A", "B"], ["A", "B", "A", "B"], 1.0),
        (["A", "B", "A", "B"], ["B", "A", "B", "A"], -1.0),
        (["A", "A"], ["A", "A"], 1.0),  # one category used by both: perfect agreement
        # "none" is its own category: it never agrees with a human label
        (["none", "A", "B", "B"], ["A", "A", "B", "B"], 0.6),
        ([], [], None),
    ],
)
def test_cohen_kappa(first, second, kappa):
    result = cohen_kappa(first, second)
    if kappa is None:
        assert result is None
    else:
        assert result == pytest.approx(kappa, abs=1e-6)


def test_confusion_matrix_rows_are_human_columns_are_judge():
    table = confusion_matrix(["A", "B", "none", "A", "tie"], ["A", "A", "B", "skip", "tie"])
    assert table["rows"] == ["A", "B", "tie"]
    assert table["columns"] == ["A", "B", "tie", "none"]
    assert table["matrix"] == [
        [1, 1, 0, 0],  # human A: judge said A once, B once
        [0, 0, 0, 1],  # human B: judge gave no verdict
        [0, 0, 1, 0],  # human tie
    ]  # the "skip" row is not scored


@pytest.mark.parametrize(
    ("original", "unswapped", "compared", "consistent", "incomplete", "rate"),
    [
        (["A", "B", "A"], ["A", "B", "B"], 3, 2, 0, 2 / 3),
        (["A", "none", "tie"], ["A", "B", "tie"], 2, 2, 1, 1.0),
        (["none"], ["none"], 0, 0, 1, None),
    ],
)
def test_position_consistency(original, unswapped, compared, consistent, incomplete, rate):
    figures = position_consistency(original, unswapped)
    assert figures["compared"] == compared
    assert figures["consistent"] == consistent
    assert figures["incomplete"] == incomplete
    assert figures["rate"] == (pytest.approx(rate) if rate is not None else None)


def test_accuracy_by_group_sorts_groups_and_collects_missing_keys():
    rows = [
        {"judge": "A", "human": "A", "category": "chat"},
        {"judge": "B", "human": "A", "category": "chat"},
        {"judge": "B", "human": "B", "category": "code"},
        {"judge": "A", "human": "B"},
    ]
    groups = accuracy_by_group(rows, "category", n_boot=100)
    assert list(groups) == ["(none)", "chat", "code"]
    assert groups["chat"]["accuracy"] == 0.5 and groups["chat"]["n"] == 2
    assert groups["code"]["accuracy"] == 1.0
    assert groups["(none)"]["accuracy"] == 0.0


def test_agreement_report_combines_every_figure():
    rows = [
        {"judge": "A", "human": "A", "judge_swapped": "A", "category": "x"},
        {"judge": "B", "human": "B", "judge_swapped": "A", "category": "x"},
        {"judge": "none", "human": "A", "judge_swapped": "B", "category": "y"},
        {"judge": "A", "human": "B", "category": "y"},
    ]
    report = agreement_report(rows, n_boot=100, seed=3, group_by=["category"])
    assert report["n"] == 4 and report["accuracy"] == 0.5
    assert report["no_verdict_rate"] == 0.25
    assert report["kappa"] == pytest.approx(
        cohen_kappa(["A", "B", "none", "A"], ["A", "B", "A", "B"])
    )
    assert report["position_consistency"]["compared"] == 2
    assert report["position_consistency"]["consistent"] == 1
    assert report["position_consistency"]["incomplete"] == 1
    assert report["by_category"]["x"]["accuracy"] == 1.0
    assert report["by_category"]["y"]["accuracy"] == 0.0
    assert report == agreement_report(rows, n_boot=100, seed=3, group_by=["category"])


def test_agreement_report_names_the_bad_row():
    with pytest.raises(ValueError, match="row 1 lacks human"):
        agreement_report([{"judge": "A", "human": "A"}, {"judge": "A"}])


LABELS = [
    {"pair_id": 1, "annotator": "ann", "verdict": "A"},
    {"pair_id": 2, "annotator": "ann", "verdict": "B"},
    {"pair_id": 3, "annotator": "ann", "verdict": "A"},
    {"pair_id": 4, "annotator": "ann", "verdict": "skip"},
    {"pair_id": 1, "annotator": "bob", "verdict": "A"},
    {"pair_id": 2, "annotator": "bob", "verdict": "A"},
    {"pair_id": 3, "annotator": "bob", "verdict": "A"},
    {"pair_id": 4, "annotator": "bob", "verdict": "B"},
    {"pair_id": 9, "annotator": "cy", "verdict": "B"},
]


def test_inter_annotator_agreement_on_shared_pairs():
    figures = inter_annotator_agreement(LABELS, "ann", "bob")
    assert figures["n_shared"] == 3  # pair 4 is skipped by ann
    assert figures["agreement"] == pytest.approx(2 / 3)
    assert figures["kappa"] == pytest.approx(cohen_kappa(["A", "B", "A"], ["A", "A", "A"]))
    assert inter_annotator_agreement(LABELS, "ann", "cy")["n_shared"] == 0
    assert inter_annotator_agreement(LABELS, "ann", "cy")["agreement"] is None


def test_inter_annotator_table_lists_only_people_who_overlap():
    table = inter_annotator_table(LABELS)
    assert [row["annotators"] for row in table] == [["ann", "bob"]]


def test_inter_annotator_refuses_duplicate_labels():
    rows = LABELS + [{"pair_id": 1, "annotator": "ann", "verdict": "B"}]
    with pytest.raises(ValueError, match="'ann' has two labels for pair 1"):
        inter_annotator_agreement(rows, "ann", "bob")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("a", "A"), ("B", "B"), ("TIE", "tie"), (None, "none"), ("", "none"), (Verdict.NONE, "none")],
)
def test_normalize_verdict(value, expected):
    assert normalize_verdict(value) == expected


def test_position_consistency_compares_each_orders_own_verdict():
    # With swap, the scored verdict is the vote of both orders (a tie when they disagree);
    # consistency must compare the two orders, not the vote with one of them.
    rows = [
        {"judge": "tie", "judge_original": "A", "judge_swapped": "B", "human": "A"},
        {"judge": "A", "judge_original": "A", "judge_swapped": "A", "human": "A"},
    ]
    figures = agreement_report(rows, n_boot=50)["position_consistency"]
    assert (figures["compared"], figures["consistent"]) == (2, 1)


@pytest.mark.parametrize(
    ("first", "second", "only_first", "only_second", "p_value"),
    [
        # 2 x 2 tables with known exact p: b = only the first right, c = only the second right.
        ([True] * 10 + [False] * 10, [True] * 10 + [True] * 10, 0, 10, 2 / 2**10),
        ([True, False] * 5, [False, True] * 5, 5, 5, 1.0),
        ([True] * 4, [True] * 4, 0, 0, 1.0),
        ([True, True, False, False, False], [False, True, True, True, True], 1, 3, 0.625),
    ],
)
def test_paired_comparison_matches_known_tables(first, second, only_first, only_second, p_value):
    result = paired_comparison(first, second)
    assert (result["only_first"], result["only_second"]) == (only_first, only_second)
    assert result["p_value"] == pytest.approx(p_value)
    assert result["difference"] == pytest.approx(
        sum(second) / len(second) - sum(first) / len(first)
    )
    assert result["difference_ci_low"] <= result["difference"] <= result["difference_ci_high"]


def test_paired_comparison_refuses_unequal_lists():
    with pytest.raises(ValueError, match="same length"):
        paired_comparison([True], [True, False])
