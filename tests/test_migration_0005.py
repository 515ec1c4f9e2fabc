"""Migration 0005 (judging jobs) keeps what was there, on SQLite and PostgreSQL: judgment runs
stored before it belong to no job, and it goes back down to 0004 without losing a run."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect, text

from storage.db import current_revision, head_revision, init_db, make_alembic_config

BEFORE = "0004_guidelines_and_prompts"
NOW = "CURRENT_TIMESTAMP"


def _to(db, revision: str, down: bool = False) -> None:
    """Migrate as init_db does: on SQLite with foreign keys off, because a batch migration
    rebuilds judgment_run with DROP TABLE, which would cascade to its judgments."""
    config = make_alembic_config()
    with db.engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:  # outside a transaction, where the pragma works
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        with connection.begin():
            config.attributes["connection"] = connection
            (command.downgrade if down else command.upgrade)(config, revision)
        if sqlite:
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")


def _fill_0004(connection) -> None:
    """A dataset, a pair, a judge version and one judgment run with its sample, as 0004 had."""
    statements = [
        "INSERT INTO dataset (id, name, source, format, pair_count, created_at) "
        f"VALUES (1, 'kept', 'f.jsonl', 'pairs', 1, {NOW})",
        "INSERT INTO pair (id, dataset_id, prompt, response_a, response_b, content_hash, "
        f"created_at) VALUES (1, 1, 'q', 'a', 'b', 'h1', {NOW})",
        "INSERT INTO judge_version (id, name, base_model, backend, is_active, created_at) "
        f"VALUES (1, 'base', 'm', 'transformers', TRUE, {NOW})",
        "INSERT INTO judgment_run (id, pair_id, judge_version_id, protocol, prompt_version, k, "
        "swap, verdict, votes, created_at) VALUES (1, 1, 1, 'pairwise', 'pairwise-v2', 1, "
        f"FALSE, 'A', '{{\"A\": 1}}', {NOW})",
        "INSERT INTO judgment (id, pair_id, run_id, judge_version_id, protocol, prompt_version, "
        "verdict, status, principles, critique, verdict_source, raw_text, swapped, "
        "sample_index, prompt_tokens, completion_tokens, latency_s, created_at) VALUES "
        "(1, 1, 1, 1, 'pairwise', 'pairwise-v2', 'A', 'complete', '', '', 'text', '[[A]]', "
        f"FALSE, 0, 1, 1, 0.5, {NOW})",
    ]
    for statement in statements:
        connection.execute(text(statement))


def test_upgrade_keeps_runs_outside_any_job_and_downgrade_keeps_them(db):
    _to(db, BEFORE, down=True)
    assert "judging_job" not in inspect(db.engine).get_table_names()
    with db.engine.begin() as connection:
        _fill_0004(connection)
    init_db(db.engine)  # what the app does when it starts
    assert current_revision(db.engine) == head_revision() == "0006_run_sampling"
    with db.engine.connect() as connection:
        runs = connection.execute(text("SELECT id, verdict, judging_job_id FROM judgment_run"))
        assert [tuple(r) for r in runs] == [(1, "A", None)]
        assert connection.execute(text("SELECT count(*) FROM judgment")).scalar_one() == 1
        assert connection.execute(text("SELECT count(*) FROM judging_job")).scalar_one() == 0

    _to(db, BEFORE, down=True)
    assert current_revision(db.engine) == BEFORE
    assert "judging_job_id" not in {
        c["name"] for c in inspect(db.engine).get_columns("judgment_run")
    }
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT id FROM judgment_run")).scalars().all() == [1]
        assert connection.execute(text("SELECT run_id FROM judgment")).scalars().all() == [1]
