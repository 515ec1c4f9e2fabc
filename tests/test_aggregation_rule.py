"""The aggregation rule end to end (issue 16): the CLI flag, the stored rule, the Label tab;
and the stored judgment run that carries the decision to the Label tab and to agreement.

A judge that always names the second slot, but whose log-probs still lean to the right answer:
by vote the two orders make a tie; by the mean of log-odds the evidence decides, and the Label
tab shows both orders' verdicts and P(A) so the position bias is on screen.
"""

from __future__ import annotations

import html
import math
import uuid
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from fakes import FakeBackend, user_text
from stand_ins import stand_ins

from cli import _judge_options, build_parser
from judges.judge import JudgeOptions
from judges.types import Aggregation
from services import Services
from storage import queries
from storage.models import JudgmentRun, Pair
from webui.judge_view import JudgeDisplay, apply_update, display_from_rows
from webui.label_handlers import LabelHandlers, LabelScreen


def second_slot_judge(messages) -> str:
    return "Principles: p.\nCritique: c.\nVerdict: [[B]]"


def surer_when_b_holds_the_answer(messages, prefix) -> dict[str, float]:
    """P(B) 0.8 when slot B holds the right answer, 0.6 when it holds the wrong one."""
    slot_b = user_text(messages).split("[Response B]", 1)[1].split("[", 1)[0]
    p_b = 0.8 if "right" in slot_b else 0.6
    return {"A": math.log(1 - p_b), "B": math.log(p_b)}


@dataclass
class Judged:
    services: Services
    pair_id: int


@pytest.fixture
def judged(settings):
    opened = Services.open(settings)
    opened.use_backend(FakeBackend(second_slot_judge, probe=surer_when_b_holds_the_answer))
    with opened.sessions.begin() as s:
        dataset_id = queries.get_or_create_dataset(s, "rule")
        pair = Pair(
            dataset_id=dataset_id,
            prompt="Which is right?",
            response_a="wrong answer",
            response_b="right answer",
            content_hash=uuid.uuid4().hex,
        )
        s.add(pair)
        s.flush()
        pair_id = pair.id
    yield Judged(opened, pair_id)
    opened.reload_judge()


@pytest.mark.parametrize(
    ("argv", "rule"),
    [([], Aggregation.MEAN), (["--aggregate", "vote"], Aggregation.VOTE)],
)
def test_the_judge_command_passes_the_rule_through(settings, argv, rule) -> None:
    args = build_parser().parse_args(["judge", "--swap", *argv])
    assert _judge_options(args, settings).aggregate is rule


def test_the_judge_command_refuses_an_unknown_rule() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["judge", "--aggregate", "median"])


@pytest.mark.parametrize(("rule", "verdict"), [("mean", "B"), ("vote", "tie")])
def test_the_rule_is_stored_and_the_label_tab_decides_by_it(judged, rule, verdict) -> None:
    options = JudgeOptions(swap=True, aggregate=rule)
    report = judged.services.judge_pending(options=options)
    assert report.judged == 1
    rows = judged.services.latest_judgment_run(judged.pair_id)
    assert [r["aggregation"] for r in rows] == [rule, rule]
    view = display_from_rows(rows)
    assert (view.verdict, view.aggregation, view.position_consistent) == (verdict, rule, False)
    badge, table = html.unescape(view.badge()), html.unescape(view.samples_html())
    assert "flips with order" in badge
    # Both orders, as said and as meant, with P(A): original said B at 0.8 -> P(A) 0.20;
    # swapped said B (= A) at 0.6 -> P(A) 0.60.
    assert "Original order: said B" in table and "P(A) 0.20" in table
    assert "Swapped order: said B (in the pair's order: A)" in table
    assert "P(A) 0.60" in table
    if rule == "mean":
        margin = (math.log(0.2 / 0.8) + math.log(0.6 / 0.4)) / 2
        assert f"log-odds A:B {margin:+.2f}" in badge
        assert f"p = {1 / (1 + math.exp(margin)):.2f}" in badge
    else:
        assert "vote of 2" in badge


def test_live_and_stored_displays_agree(judged) -> None:
    live = JudgeDisplay()
    for update in judged.services.stream_pair_judgment(judged.pair_id, JudgeOptions(swap=True)):
        apply_update(live, update)
    stored = display_from_rows(judged.services.latest_judgment_run(judged.pair_id))
    assert (live.verdict, live.aggregation, live.margin) == (
        stored.verdict,
        stored.aggregation,
        stored.margin,
    )
    assert live.verdict == "B"


def _row(verdict: str, swapped: bool, p: float | None, aggregation: str | None = None) -> dict:
    return {
        "id": 1 + swapped,
        "sample_index": 0,
        "swapped": swapped,
        "verdict": verdict,
        "status": "complete",
        "verdict_probability": p,
        "verdict_source": "text" if p is None else "logprobs",
        "protocol": "pairwise",
        "pair_id": 3,
        "aggregation": aggregation,
    }


@pytest.mark.parametrize(
    ("aggregation", "verdict"),
    [(None, "A"), ("mean", "A"), ("vote", "tie"), ("unknown-rule", "A")],
)
def test_stored_rows_are_decided_by_their_rule(aggregation, verdict) -> None:
    # original said B at 0.7 (P(A) 0.3); swapped said B = A at 0.8 (P(A) 0.8): mean favours A.
    rows = [_row("B", False, 0.7, aggregation), _row("A", True, 0.8, aggregation)]
    assert display_from_rows(rows).verdict == verdict


def test_stored_rows_without_probabilities_vote_as_before() -> None:
    view = display_from_rows([_row("B", False, None), _row("A", True, None)])
    assert (view.verdict, view.aggregation) == ("tie", "vote")
    assert "vote of 2: A 1 · B 1" in html.unescape(view.badge())


# --- the stored judgment run: written once by Judging.store, read by the tab and agreement ---


def test_a_streamed_swap_judgment_is_stored_as_one_run(judged) -> None:
    live = JudgeDisplay()
    for update in judged.services.stream_pair_judgment(judged.pair_id, JudgeOptions(swap=True)):
        apply_update(live, update)
    stored = judged.services.latest_judgment_run_record(judged.pair_id)
    run, samples = stored["run"], stored["samples"]
    assert [(s["sample_index"], s["swapped"], s["verdict"]) for s in samples] == [
        (0, False, "B"),
        (0, True, "A"),  # said B with the responses swapped
    ]
    assert {s["run_id"] for s in samples} == {run["id"]}
    assert (run["pair_id"], run["protocol"], run["k"], run["swap"]) == (
        judged.pair_id,
        "pairwise",
        1,
        True,
    )
    assert (run["verdict"], run["aggregation"], run["position_consistent"]) == ("B", "mean", False)
    assert run["votes"] == {"A": 1, "B": 1}
    margin = (math.log(0.2 / 0.8) + math.log(0.6 / 0.4)) / 2
    assert run["margin"] == pytest.approx(margin) == live.margin
    assert run["verdict_probability"] == pytest.approx(1 / (1 + math.exp(margin)))
    assert judged.services.latest_judgment_run(judged.pair_id) == samples


def _stored_run_says(judged, verdict: str, probability: float) -> int:
    """Judge the pair (swap, mean: B), then make its stored run's decision another one, which
    the samples themselves would not give: what is shown must come from the run."""
    judged.services.judge_pending(options=JudgeOptions(swap=True))
    run = judged.services.latest_judgment_run_record(judged.pair_id)["run"]
    with judged.services.sessions.begin() as s:
        s.execute(
            sa.update(JudgmentRun)
            .where(JudgmentRun.id == run["id"])
            .values(verdict=verdict, verdict_probability=probability)
        )
    return run["id"]


def test_the_label_tab_shows_the_stored_runs_decision(judged) -> None:
    _stored_run_says(judged, "A", 0.91)
    stored = judged.services.latest_judgment_run_record(judged.pair_id)
    view = display_from_rows(stored["samples"], stored["run"])
    assert (view.verdict, view.probability, view.aggregation) == ("A", 0.91, "mean")
    assert display_from_rows(stored["samples"]).verdict == "B"  # recomputed: only without a run
    handlers = LabelHandlers(judged.services, stand_ins(LabelScreen))
    screen = handlers.open_next("ana", None, None)
    badge = html.unescape(screen[handlers.ui.badge])
    assert 'data-verdict="A"' in badge and "p = 0.91" in badge, badge
    assert screen[handlers.ui.judged]["verdict"] == "A"  # what a label is compared with on save


def test_agreement_compares_each_label_with_its_runs_verdict(judged) -> None:
    judged.services.judge_pending(options=JudgeOptions(swap=True))
    stored = judged.services.latest_judgment_run_record(judged.pair_id)
    swapped_sample = next(s for s in stored["samples"] if s["swapped"])
    assert (stored["run"]["verdict"], swapped_sample["verdict"]) == ("B", "A")
    # The person answers the swapped sample (alone it says A); the run it belongs to says B.
    label = judged.services.save_label(judged.pair_id, "ana", "B", judgment_id=swapped_sample["id"])
    assert (label.judgment_run_id, label.agreed_with_judge) == (stored["run"]["id"], True)
    report = judged.services.agreement()
    assert (report["accuracy"], report["n"]) == (1.0, 1)
    assert report["confusion"]["matrix"][1][report["confusion"]["columns"].index("B")] == 1
    consistency = report["position_consistency"]
    assert (consistency["n"], consistency["compared"], consistency["consistent"]) == (1, 1, 0)
    assert consistency["rate"] == 0.0
