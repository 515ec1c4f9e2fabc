"""Migration 0006 (a run's sampling) keeps what was there, on SQLite and PostgreSQL: runs
stored before it keep their verdicts with no sampling recorded (so `grm compare` does not take
them for any setup), and it goes back down to 0005 without losing a run."""

from __future__ import annotations

from sqlalchemy import inspect, text
from test_migration_0005 import _fill_0004, _to

from judges.judge import SAMPLING_OPTIONS
from storage.db import current_revision, head_revision, init_db

BEFORE = "0005_judging_job"


def _columns(db) -> set[str]:
    return {c["name"] for c in inspect(db.engine).get_columns("judgment_run")}


def test_upgrade_keeps_runs_with_unknown_sampling_and_downgrade_keeps_them(db):
    _to(db, BEFORE, down=True)
    assert not _columns(db) & set(SAMPLING_OPTIONS)
    with db.engine.begin() as connection:
        _fill_0004(connection)  # 0005 added only a table and a NULL column: the same rows fit
    init_db(db.engine)  # what the app does when it starts
    assert current_revision(db.engine) == head_revision() == "0006_run_sampling"
    with db.engine.connect() as connection:
        run = connection.execute(text("SELECT * FROM judgment_run")).mappings().one()
        assert (run["id"], run["verdict"]) == (1, "A")
        assert [run[name] for name in SAMPLING_OPTIONS] == [None] * len(SAMPLING_OPTIONS)
        assert connection.execute(text("SELECT run_id FROM judgment")).scalars().all() == [1]

    _to(db, BEFORE, down=True)
    assert current_revision(db.engine) == BEFORE
    assert not _columns(db) & set(SAMPLING_OPTIONS)
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT id FROM judgment_run")).scalars().all() == [1]
        assert connection.execute(text("SELECT run_id FROM judgment")).scalars().all() == [1]
