"""Shared pytest fixtures: settings on a temp data directory, a migrated database, data paths."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from settings import Settings, load_settings
from storage.db import init_db, make_engine, make_session_factory

# Set to a PostgreSQL URL to run the storage tests there; its public schema is wiped per test.
TEST_DATABASE_URL_ENV = "GRM_TEST_DATABASE_URL"
REPO_ROOT = Path(__file__).resolve().parent.parent


class DatabaseFixture(NamedTuple):
    """What the `db` fixture gives: unpack as `engine, factory = db` or use the names."""

    engine: Engine
    factory: sessionmaker[Session]
    url: str


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose data directory is this test's tmp_path (and the test database, if set)."""
    monkeypatch.setenv("GRM_HOME", str(tmp_path / "grm-home"))
    monkeypatch.delenv("GRM_DATABASE_URL", raising=False)
    if os.environ.get(TEST_DATABASE_URL_ENV):
        monkeypatch.setenv("GRM_DATABASE_URL", os.environ[TEST_DATABASE_URL_ENV])
    return load_settings()


@pytest.fixture
def db(settings: Settings) -> Iterator[DatabaseFixture]:
    """A fresh database migrated with init_db: SQLite in tmp_path, or GRM_TEST_DATABASE_URL."""
    url = settings.db_url
    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        _wipe_postgres(engine)
    init_db(engine)
    yield DatabaseFixture(engine, make_session_factory(engine), url)
    engine.dispose()


def _wipe_postgres(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))


@pytest.fixture
def llmbar_dir() -> Path:
    """The shared, human-labeled LLMBar files (read in place, never copied into the repo)."""
    path = REPO_ROOT.parent / "shared" / "data" / "llmbar"
    if not path.is_dir():
        pytest.skip(f"LLMBar data not found at {path}")
    return path
