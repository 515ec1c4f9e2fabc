"""The accuracy benchmark's report on fake judgments: three rules from one set, the paired test."""

from __future__ import annotations

import json
import sys

import pytest
from fakes import FakeBackend, user_text

import judges.backends
from benchmarks import bench_judge_accuracy as bench
from benchmarks.bench_judge_accuracy import RULES, format_table, report_set
from judges.metrics import mcnemar_exact
from judges.scaling import aggregate, unswap
from judges.types import Judgment, Status, Verdict

A, B = Verdict.A, Verdict.B


def said(verdict: Verdict, p: float | None, *, pair_id: int, swapped: bool = False) -> Judgment:
    """A pairwise sample as the judge stated it in the order it saw (un-swapped when swapped)."""
    judgment = Judgment(
        protocol="pairwise",
        prompt_version="pairwise-v2",
        verdict=verdict,
        status=Status.COMPLETE if verdict is not Verdict.NONE else Status.ERROR,
        verdict_probability=p,
        pair_id=pair_id,
    )
    return unswap(judgment) if swapped else judgment


def biased_run(gold: list[Verdict], probabilities: bool = True) -> list:
    """A judge that always names the second slot, surer (0.8 vs 0.6) when that slot is right."""
    results = []
    for pair_id, right in enumerate(gold):
        # original order: slot B is response B; swapped order: slot B is response A
        p_original = 0.8 if right is B else 0.6
        p_swapped = 0.8 if right is A else 0.6
        samples = [
            said(B, p_original if probabilities else None, pair_id=pair_id),
            said(B, p_swapped if probabilities else None, pair_id=pair_id, swapped=True),
        ]
        results.append(aggregate(samples))
    return results


GOLD = [A, B, A, A, B, A, B, A]


def test_one_set_of_judgments_gives_all_three_rules() -> None:
    report = report_set(biased_run(GOLD), GOLD)
    rules = report["rules"]
    assert list(rules) == [rule.name for rule in RULES]
    assert rules["one-order"]["accuracy"] == pytest.approx(GOLD.count(B) / len(GOLD))
    assert rules["one-order"]["chose_a_rate"] == 0.0
    assert (rules["swap-vote"]["accuracy"], rules["swap-vote"]["tie_rate"]) == (0.0, 1.0)
    assert (rules["swap-mean"]["accuracy"], rules["swap-mean"]["tie_rate"]) == (1.0, 0.0)
    assert rules["swap-mean"]["fell_back_to_vote"] == 0.0
    assert rules["swap-vote"]["fell_back_to_vote"] is None
    for figures in rules.values():
        assert figures["ci_low"] <= figures["accuracy"] <= figures["ci_high"]
    assert (report["position_consistency"], report["orders_compared"]) == (0.0, len(GOLD))
    test = report["paired_test"]
    assert (test["first"], test["second"]) == ("swap-mean", "one-order")
    assert (test["only_first"], test["only_second"]) == (GOLD.count(A), 0)
    assert test["p_value"] == pytest.approx(2 * 0.5 ** GOLD.count(A))
    assert len(report["per_pair"]) == len(GOLD)
    assert report["per_pair"][0] == {
        "gold": "A",
        "one-order": "B",
        "swap-vote": "tie",
        "swap-mean": "A",
        "margin": pytest.approx(report["per_pair"][0]["margin"]),
    }
    json.dumps(report)  # the report is saved as JSON


def test_without_logprobs_swap_mean_is_swap_vote_and_says_so() -> None:
    report = report_set(biased_run(GOLD, probabilities=False), GOLD)
    mean, vote = report["rules"]["swap-mean"], report["rules"]["swap-vote"]
    assert mean["fell_back_to_vote"] == 1.0
    assert mean["accuracy"] == vote["accuracy"] and mean["tie_rate"] == vote["tie_rate"] == 1.0


def test_a_failed_order_is_no_verdict_for_one_order_not_a() -> None:
    gold = [A, B]
    results = [
        aggregate([said(Verdict.NONE, None, pair_id=0), said(B, 0.7, pair_id=0, swapped=True)]),
        aggregate([said(Verdict.NONE, None, pair_id=1), said(Verdict.NONE, None, pair_id=1)]),
    ]
    report = report_set(results, gold)
    assert [p["one-order"] for p in report["per_pair"]] == ["none", "none"]
    assert [p["swap-mean"] for p in report["per_pair"]] == ["A", "none"]
    assert report["rules"]["one-order"]["no_verdict_rate"] == 1.0


@pytest.mark.parametrize(
    ("only_first", "only_second", "p_value"),
    [
        (0, 0, 1.0),
        (5, 0, 2 / 32),
        (0, 5, 2 / 32),
        (10, 2, 2 * (1 + 12 + 66) / 4096),
        (3, 3, 1.0),
        (1, 2, 1.0),
    ],
)
def test_mcnemar_exact_is_the_two_sided_binomial_of_discordant_pairs(
    only_first, only_second, p_value
) -> None:
    first = [True] * only_first + [False] * only_second + [True, False]
    second = [False] * only_first + [True] * only_second + [True, False]
    result = mcnemar_exact(first, second)
    assert (result["only_first"], result["only_second"]) == (only_first, only_second)
    assert result["p_value"] == pytest.approx(p_value)


def test_the_table_names_every_rule_and_the_paired_test() -> None:
    table = format_table({"fake": report_set(biased_run(GOLD), GOLD)})
    for rule in RULES:
        assert rule.name in table
    assert "position consistency 0.00" in table and "McNemar exact p" in table


def test_the_script_judges_each_pair_once_per_order_and_saves_json(
    tmp_path, monkeypatch, capsys
) -> None:
    rows = [
        {"input": f"q{i}", "output_1": f"r{i}a", "output_2": f"r{i}b", "label": 1 + i % 2}
        for i in range(3)
    ]
    (tmp_path / "Tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def probe(messages, prefix):  # the second slot, surer when it holds the gold response
        slot_b = user_text(messages).split("[Response B]", 1)[1]
        gold_b = any(gold in slot_b for gold in ("r0a", "r1b", "r2a"))  # labels 1, 2, 1
        return {"A": -1.6, "B": -0.22} if gold_b else {"A": -0.9, "B": -0.5}

    backend = FakeBackend(lambda m: "Critique: c.\nVerdict: [[B]]", probe=probe)
    monkeypatch.setattr(bench, "LLMBAR", tmp_path)
    monkeypatch.setattr(judges.backends, "make_backend", lambda settings: backend)
    out = tmp_path / "out.json"
    argv = ["bench", "--sets", "Tiny", "--limit", "0", "--max-new-tokens", "16", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()

    assert len(backend.batches) >= 1 and sum(backend.batches) == 6  # 3 pairs x 2 orders, once
    report = json.loads(out.read_text())
    assert report["options"]["swap"] is True and report["options"]["max_new_tokens"] == 16
    figures = report["sets"]["Tiny"]["rules"]
    assert figures["swap-mean"]["accuracy"] == 1.0 and figures["swap-vote"]["tie_rate"] == 1.0
    assert "swap-mean" in capsys.readouterr().out
