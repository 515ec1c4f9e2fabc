"""Migrations keep what people and judges stored: a database at 0002, filled the way the app
stored judgments and labels then, upgraded to head (on SQLite and on PostgreSQL)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from alembic import command
from sqlalchemy import text

from storage import judgment_runs
from storage import queries as q
from storage.db import current_revision, head_revision, init_db, make_alembic_config

BEFORE_RUNS = "0002_judgment_prompt_and_rule"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def at_0002(db):
    """The `db` database taken back to revision 0002 (empty), as a database made then."""
    config = make_alembic_config()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
        command.upgrade(config, BEFORE_RUNS)
    assert current_revision(db.engine) == BEFORE_RUNS
    return db


def _insert(connection, table: str, **values) -> None:
    names = ", ".join(values)
    marks = ", ".join(f":{name}" for name in values)
    connection.execute(text(f"INSERT INTO {table} ({names}) VALUES ({marks})"), values)


def _judgment(connection, id, pair, version, verdict, sample=0, swapped=False, **more) -> None:
    """A judgment row as 0002's app stored it (one sample; a run was only its neighbours)."""
    values = {
        "id": id,
        "pair_id": pair,
        "judge_version_id": version,
        "protocol": "pairwise",
        "prompt_version": "pairwise-v2",
        "verdict": verdict,
        "status": "complete" if verdict != "none" else "no_verdict",
        "principles": "",
        "critique": f"critique {id}",
        "verdict_source": "text",
        "raw_text": f"[[{verdict}]]",
        "swapped": swapped,
        "sample_index": sample,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "latency_s": 0.0,
        "created_at": T0 + timedelta(seconds=id),
        **more,
    }
    _insert(connection, "judgment", **values)


def _fill_0002(connection) -> None:
    """Four pairs, two judge versions; runs of several shapes, their rows interleaved."""
    _insert(connection, "dataset", id=1, name="old", source="", format="", pair_count=4,
            created_at=T0)  # fmt: skip
    for pair in (1, 2, 3, 4):
        _insert(connection, "pair", id=pair, dataset_id=1, prompt=f"q{pair}", response_a="a",
                response_b="b", content_hash=f"h{pair}", created_at=T0)  # fmt: skip
    for version in (1, 2):
        _insert(connection, "judge_version", id=version, name=f"v{version}", base_model="m",
                backend="fake", is_active=version == 1, created_at=T0)  # fmt: skip
    _judgment(connection, 1, 1, 1, "A")  # pair 1, run 1: k=1, one order
    for sample, verdict in enumerate(("A", "A", "B")):  # pair 2, run 1: k=3
        _judgment(connection, 2 + sample, 2, 1, verdict, sample=sample)
    # pair 1, run 2: swap, the orders disagree (original B, swapped said B = A), judged by mean
    _judgment(connection, 5, 1, 1, "B", verdict_probability=0.7, aggregation="mean")
    _judgment(connection, 6, 1, 1, "A", swapped=True, verdict_probability=0.8, aggregation="mean")
    _judgment(connection, 7, 2, 2, "A")  # pair 2, run 2: another judge version
    _judgment(connection, 8, 3, 1, "A")  # pair 3, run 1: swap, the same in both orders
    _judgment(connection, 9, 3, 1, "A", swapped=True)
    _judgment(connection, 10, 3, 1, "none")  # pair 3, run 2: no verdict
    _judgment(connection, 11, 4, 1, "A", protocol="pointwise", score_a=7.0, score_b=5.0)
    _judgment(connection, 12, 4, 1, "B", sample=1, protocol="pointwise", score_a=4.0, score_b=6.0)
    labels = [
        (1, 1, "alice", "A", 5, False),  # answered the swap run
        (2, 1, "bob", "A", 1, True),  # answered the k=1 run before it
        (3, 2, "alice", "B", None, None),  # labeled without a judgment
        (4, 3, "alice", "A", 9, True),
        (5, 4, "alice", "skip", None, None),
    ]
    for id, pair, who, verdict, judgment, agreed in labels:
        _insert(connection, "label", id=id, pair_id=pair, annotator=who, verdict=verdict,
                judgment_id=judgment, agreed_with_judge=agreed, created_at=T0,
                updated_at=T0)  # fmt: skip
        _insert(connection, "label_event", pair_id=pair, annotator=who, action="save",
                verdict=verdict, judgment_id=judgment, created_at=T0)  # fmt: skip
    if connection.dialect.name == "postgresql":  # ids were given: move the sequences past them
        for table in ("dataset", "pair", "judge_version", "judgment", "label"):
            sequence = f"pg_get_serial_sequence('{table}', 'id')"
            connection.execute(text(f"SELECT setval({sequence}, max(id)) FROM {table}"))


def _runs(connection) -> dict[tuple[int, ...], dict]:
    """Every run keyed by its judgments' ids."""
    members: dict[int, list[int]] = {}
    for judgment_id, run_id in connection.execute(
        text("SELECT id, run_id FROM judgment ORDER BY id")
    ):
        members.setdefault(run_id, []).append(judgment_id)
    rows = connection.execute(text("SELECT * FROM judgment_run ORDER BY id")).mappings()
    runs = {tuple(members[r["id"]]): dict(r) for r in rows}
    for run in runs.values():  # raw SQL: SQLite hands JSON back as text
        if isinstance(run["votes"], str):
            run["votes"] = json.loads(run["votes"])
    return runs


def _count(connection, table: str) -> int:
    return connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_upgrade_groups_existing_judgments_into_runs_and_keeps_everything(at_0002):
    with at_0002.engine.begin() as connection:
        _fill_0002(connection)
    init_db(at_0002.engine)  # what the app does when it starts
    assert current_revision(at_0002.engine) == head_revision() == "0006_run_sampling"
    with at_0002.engine.connect() as connection:
        counts = {t: _count(connection, t) for t in ("judgment", "label", "label_event", "pair")}
        runs = _runs(connection)
        labels = dict(connection.execute(text("SELECT id, judgment_run_id FROM label")).all())
    assert counts == {"judgment": 12, "label": 5, "label_event": 5, "pair": 4}
    assert list(runs) == [(1,), (2, 3, 4), (5, 6), (7,), (8, 9), (10,), (11, 12)]
    fields = ("pair_id", "judge_version_id", "k", "swap", "verdict", "position_consistent")
    assert [tuple(run[f] for f in fields) for run in runs.values()] == [
        (1, 1, 1, False, "A", None),
        (2, 1, 3, False, "A", None),
        (1, 1, 1, True, "tie", False),  # a vote of B and A; the rows keep "mean"
        (2, 2, 1, False, "A", None),
        (3, 1, 1, True, "A", True),
        (3, 1, 1, False, "none", None),
        (4, 1, 2, False, "tie", None),
    ]
    assert [run["votes"] for run in runs.values()][1:3] == [{"A": 2, "B": 1}, {"A": 1, "B": 1}]
    swap_run = runs[(5, 6)]
    assert (swap_run["aggregation"], swap_run["verdict_probability"], swap_run["margin"]) == (
        "vote",
        None,
        None,
    )
    assert (runs[(11, 12)]["score_a"], runs[(11, 12)]["score_b"]) == (11.0, 11.0)
    assert runs[(11, 12)]["protocol"] == "pointwise"
    run_id = {members: run["id"] for members, run in runs.items()}
    assert labels == {1: run_id[(5, 6)], 2: run_id[(1,)], 3: None, 4: run_id[(8, 9)], 5: None}


def test_the_app_reads_the_filled_runs_and_adds_new_ones(at_0002):
    with at_0002.engine.begin() as connection:
        _fill_0002(connection)
    init_db(at_0002.engine)
    with at_0002.factory.begin() as s:
        latest = judgment_runs.latest_run(s, 1)
        records = {(r["pair_id"], r["annotator"]): r for r in q.labeled_records(s)}
        # A new run after the filled ones (PostgreSQL: the id sequence was moved past them).
        new_id = judgment_runs.add_judgment_run(
            s,
            {"pair_id": 2, "protocol": "pairwise", "prompt_version": "v", "verdict": "B"},
            [
                {
                    "pair_id": 2,
                    "protocol": "pairwise",
                    "prompt_version": "v",
                    "verdict": "B",
                    "status": "complete",
                }
            ],  # fmt: skip
        )
    assert [r["id"] for r in latest["samples"]] == [5, 6]
    assert latest["run"]["verdict"] == "tie"
    assert records[(1, "alice")]["judge_verdict"] == "tie"  # the run's, not sample 5's B
    assert records[(1, "bob")]["judge_verdict"] == "A"
    assert records[(3, "alice")]["judge_position_consistent"] is True
    assert new_id == 8
