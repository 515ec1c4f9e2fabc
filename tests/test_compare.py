"""Two judge setups on the same labels: a scripted judge with known verdicts gives known
accuracy, kappa, position consistency and McNemar p; stored runs of a setup are reused only
while its prompt (template and guidelines) is what it would send now."""

from __future__ import annotations

import json
import re

import pytest
from seeding import add_pairs, label_pairs, numbered_pair
from sqlalchemy import select

import cli
from judges.judge import JudgeOptions
from services import Services, parse_setup
from storage.db import reading
from storage.models import JudgmentRun
from tests.fakes import FakeBackend, user_text

B_SYSTEM = "You are the second judge."
HUMAN = ["A", "A", "A", "A", "B", "B", "tie", "both_bad"]
A_SAYS = ["A", "A", "A", "B", "B", "A", "tie", "A"]  # in the original order
B_SAYS = ["A", "B", "B", "B", "B", "B", "A", "A"]
# Setup A judges both orders; it says the same letter for pair 7 in both (position-inconsistent),
# so its two orders vote A and B there: a tie. Setup B judges one order.
A_VERDICTS = ["A", "A", "A", "B", "B", "A", "tie", "tie"]
LETTERS = {"A": "A", "B": "B", "tie": "C"}


def scripted_judge(messages) -> str:
    user = user_text(messages)
    index = int(re.search(r"question (\d+)", user)[1])
    says = (B_SAYS if messages[0]["content"] == B_SYSTEM else A_SAYS)[index]
    if f"[Response A]\nanswer b {index}" in user and index != 7:  # swapped: the same choice
        says = {"A": "B", "B": "A"}.get(says, says)
    return f"Principles: p\nCritique: c\nVerdict: [[{LETTERS[says]}]]"


@pytest.fixture
def judge() -> FakeBackend:
    return FakeBackend(script=scripted_judge)


@pytest.fixture
def services(db, settings, judge) -> Services:
    """Dataset "cmp" with the HUMAN labels, a stored version "pairwise-b" (B's system)."""
    opened = Services(settings, db.factory)
    opened.use_backend(judge)
    ids = add_pairs(opened.sessions, "cmp", len(HUMAN), numbered_pair)
    label_pairs(opened, ids, HUMAN, annotator="alice")
    opened.new_prompt_version("pairwise-b", "pairwise-v3", system=B_SYSTEM)
    return opened


A = "prompt=pairwise-v3,swap=1"
B = "prompt=pairwise-b"


def test_known_verdicts_give_known_figures(services, judge):
    report = services.compare_setups(A, B, "cmp")
    a, b = report["a"], report["b"]
    assert (report["dataset"], report["pairs"], report["scored"]) == ("cmp", 8, 7)
    # A right on 5 of the 7 A/B/tie labels; kappa: observed 5/7, chance (16+4+1)/49 = 3/7.
    assert (a["n"], a["correct"], a["excluded"]) == (7, 5, 1)
    assert a["accuracy"] == pytest.approx(5 / 7)
    assert a["kappa"] == pytest.approx(0.5)
    # B right on 3; chance (2*4 + 5*2)/49 = 18/49, kappa (21-18)/(49-18) = 3/31.
    assert b["accuracy"] == pytest.approx(3 / 7)
    assert b["kappa"] == pytest.approx(3 / 31)
    assert (a["no_verdict"], b["no_verdict"]) == (0, 0)
    # Only A right on pairs 1, 2, 6; only B on pair 5: p = 2 * P(X <= 1 | 4, 1/2) = 10/16.
    assert report["mcnemar"] == {"only_first": 3, "only_second": 1, "p_value": 0.625}
    consistency = a["position_consistency"]
    assert (consistency["n"], consistency["consistent"], consistency["rate"]) == (8, 7, 0.875)
    assert (b["position_consistency"]["n"], b["position_consistency"]["rate"]) == (0, None)
    assert [(r["human"], r["a"], r["b"]) for r in report["differ"]] == [
        (HUMAN[i], A_VERDICTS[i], B_SAYS[i]) for i in (1, 2, 5, 6, 7)
    ]
    assert report["differ"][0]["prompt"] == "question 1"
    assert (a["judged_now"], a["reused"], b["judged_now"], b["reused"]) == (8, 0, 8, 0)
    assert len(judge.batches) and sum(judge.batches) == 8 * 2 + 8
    assert a["setup"]["prompt_version"] == "pairwise-v3" and a["setup"]["swap"] is True


def test_stored_runs_are_reused_until_the_prompt_they_were_sent_changes(services, judge):
    services.compare_setups(A, B, "cmp")
    calls = sum(judge.batches)
    again = services.compare_setups(A, B, "cmp")
    assert sum(judge.batches) == calls  # nothing judged twice
    assert (again["a"]["reused"], again["b"]["reused"]) == (8, 8)
    assert again["mcnemar"]["p_value"] == 0.625

    services.set_dataset_guidelines("cmp", "Prefer the right answer.")
    changed = services.compare_setups(A, B, "cmp")
    assert (changed["a"]["judged_now"], changed["b"]["judged_now"]) == (8, 8)
    pair_id = changed["differ"][0]["pair_id"]
    sent = services.latest_judgment_run(pair_id)[0]["prompt_messages"]
    assert "[Team guidelines]\nPrefer the right answer." in user_text(sent)


def test_judgments_of_another_prompt_or_k_are_not_taken_for_the_setups(services, judge):
    services.judge_pending(dataset="cmp", options=JudgeOptions(prompt_version="pairwise-v3"))
    report = services.compare_setups("prompt=pairwise-v3", "prompt=pairwise-v3,k=2", "cmp")
    assert (report["a"]["reused"], report["a"]["judged_now"]) == (8, 0)
    assert report["b"]["judged_now"] == 8
    assert report["a"]["accuracy"] == pytest.approx(5 / 7)  # one order: A_SAYS as said


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.7},
        {"repetition_penalty": 1.0},
        {"max_new_tokens": 64},
        {"seed": 3},
        {"logprobs": False},
    ],
)
def test_runs_sampled_otherwise_are_not_taken_for_the_setup(services, judge, change):
    current = services.judging.judge.options
    other = JudgeOptions(**{**current.model_dump(), "prompt_version": "pairwise-v3", **change})
    assert other.sampling() != current.sampling()
    services.judge_pending(dataset="cmp", options=other)
    columns = [JudgmentRun.__table__.c[name] for name in other.sampling()]
    with reading(services.sessions) as s:
        stored = [dict(row) for row in s.execute(select(*columns)).mappings()]
    assert stored == [other.sampling()] * 8

    report = services.compare_setups("prompt=pairwise-v3", B, "cmp")
    assert (report["a"]["reused"], report["a"]["judged_now"]) == (0, 8)
    again = services.compare_setups("prompt=pairwise-v3", B, "cmp")
    assert (again["a"]["reused"], again["a"]["judged_now"]) == (8, 0)  # its own runs fit


def test_a_limit_compares_the_first_labeled_pairs_and_the_latest_label_counts(services):
    first = services.compare_setups(A, B, "cmp", limit=3)["differ"][0]["pair_id"]
    services.save_label(first, "bob", "B")  # later than alice's A: the pair's label is now B
    report = services.compare_setups(A, B, "cmp", limit=3)
    assert report["pairs"] == 3
    assert report["differ"][0]["human"] == "B"


def test_setups_take_what_is_not_said_from_the_current_judge(services):
    default = services.judge_setup("")
    assert (default.protocol, default.prompt_version, default.k, default.swap) == (
        "pairwise",
        "pairwise-v2",
        1,
        False,
    )
    assert default.aggregate == "mean" and default.judge_version.startswith("base:")
    pointwise = services.judge_setup({"prompt": "pointwise-v3", "k": 3, "aggregate": "vote"})
    assert (pointwise.protocol, pointwise.k, pointwise.aggregate) == ("pointwise", 3, "vote")
    assert services.judge_setup(f"judge={default.judge_version}").judge_version_id == (
        default.judge_version_id
    )
    assert services.judge_setup("protocol=verifier").prompt_version == "verifier-v2"


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("k", "is not key=value"),
        ("temperature=1", "unknown setup key 'temperature'"),
        ("k=1,k=2", "given twice"),
        ("swap=maybe", "swap must be 1 or 0"),
        ("k=two", "k must be a whole number"),
        ("prompt=pairwise-v2,protocol=verifier", "is for pairwise, not verifier"),
        ("protocol=listwise", "unknown protocol 'listwise'"),
        ("prompt=nope", "prompt version 'nope' not found"),
        ("judge=99", "judge version '99' not found"),
        ("aggregate=median", "'median' is not a valid Aggregation"),
    ],
)
def test_a_bad_setup_says_what_is_wrong(services, spec, error):
    with pytest.raises((ValueError, LookupError), match=re.escape(error)):
        services.judge_setup(spec)


def test_the_setup_syntax():
    assert parse_setup(" prompt=pairwise-v2, k=3 ,swap=1,") == {
        "prompt": "pairwise-v2",
        "k": "3",
        "swap": "1",
    }


def test_grm_compare_prints_the_figures_side_by_side(services, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_services", lambda: services)
    assert cli.main(["compare", "--a", A, "--b", B, "--dataset", "cmp"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^accuracy\s+0\.714\s+0\.429$", out, re.M), out
    assert re.search(r"^cohen's kappa\s+0\.500\s+0\.097$", out, re.M), out
    assert re.search(r"^position consistency\s+0\.875\s+-$", out, re.M), out
    assert "McNemar exact: only A right 3, only B right 1, p = 0.625" in out
    assert "pairs where they differ: 5" in out
    assert "A: pairwise-v3 by judge" in out and "B: pairwise-b by judge" in out

    assert cli.main(["compare", "--a", A, "--b", B, "--dataset", "cmp", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mcnemar"]["p_value"] == 0.625 and report["a"]["reused"] == 8

    assert cli.main(["compare", "--a", "k=0x", "--b", B, "--dataset", "cmp"]) == 2
    assert "not compared: k must be a whole number" in capsys.readouterr().err
    assert cli.main(["compare", "--a", A, "--b", B, "--dataset", "nope"]) == 2
    assert "dataset 'nope' not found" in capsys.readouterr().err


def test_gold_compares_on_the_labels_imported_with_the_dataset(
    services, tmp_path, monkeypatch, capsys
):
    """LLMBar-like data comes with its human labels: --gold scores against them, no one has
    to label the pairs again in the app; a dataset imported without labels is refused."""
    rows = [numbered_pair(i) | {"label": human} for i, human in enumerate(HUMAN[:7])]
    rows.append(numbered_pair(7))  # imported without a label: left out
    source = tmp_path / "gold.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    services.import_file(source, dataset="gold")

    report = services.compare_setups(A, B, "gold", gold=True)
    assert (report["dataset"], report["pairs"], report["scored"]) == ("gold", 7, 7)
    assert report["a"]["accuracy"] == pytest.approx(5 / 7)
    assert report["b"]["accuracy"] == pytest.approx(3 / 7)
    assert report["mcnemar"] == {"only_first": 3, "only_second": 1, "p_value": 0.625}
    assert [r["human"] for r in report["differ"]] == [HUMAN[i] for i in (1, 2, 5, 6)]
    with pytest.raises(ValueError, match="no labeled pairs"):
        services.compare_setups(A, B, "gold")  # nobody labeled these in the app
    unlabeled = tmp_path / "plain.jsonl"
    unlabeled.write_text(json.dumps(numbered_pair(0)) + "\n", encoding="utf-8")
    services.import_file(unlabeled, dataset="plain")
    with pytest.raises(ValueError, match=r"no imported labels \(gold_label\)"):
        services.compare_setups(A, B, "plain", gold=True)

    monkeypatch.setattr(cli, "_services", lambda: services)
    assert cli.main(["compare", "--a", A, "--b", B, "--dataset", "gold", "--gold"]) == 0
    out = capsys.readouterr().out
    assert "dataset gold: 7 imported labels" in out
    assert re.search(r"^accuracy\s+0\.714\s+0\.429$", out, re.M), out
