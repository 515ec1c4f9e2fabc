"""Migration 0004 (dataset guidelines, stored prompt versions) keeps what was there, on SQLite
and PostgreSQL, and goes back down to 0003 without losing a dataset."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect, text

from storage.db import current_revision, init_db, make_alembic_config

BEFORE = "0003_judgment_run"


def _to(db, revision: str, down: bool = False) -> None:
    config = make_alembic_config()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def test_upgrade_keeps_datasets_without_guidelines_and_downgrade_keeps_them(db):
    _to(db, BEFORE, down=True)
    assert "prompt_version" not in inspect(db.engine).get_table_names()
    with db.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO dataset (name, source, format, pair_count, created_at) "
                "VALUES ('kept', 'f.jsonl', 'pairs', 0, CURRENT_TIMESTAMP)"
            )
        )
    init_db(db.engine)
    with db.engine.connect() as connection:
        rows = connection.execute(text("SELECT name, guidelines FROM dataset")).all()
        versions = connection.execute(text("SELECT count(*) FROM prompt_version")).scalar_one()
    assert [tuple(row) for row in rows] == [("kept", None)] and versions == 0

    with db.engine.begin() as connection:
        connection.execute(text("UPDATE dataset SET guidelines = 'Cite the docs.'"))
    _to(db, BEFORE, down=True)
    assert current_revision(db.engine) == BEFORE
    columns = {c["name"] for c in inspect(db.engine).get_columns("dataset")}
    assert "guidelines" not in columns
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT name FROM dataset")).scalars().all() == ["kept"]
