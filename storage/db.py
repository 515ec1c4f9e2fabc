"""Engine and session set-up, and the two ways to touch the database: `reading` and `writing`.
Nothing is created at import: callers build and pass them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from storage.faults import storage_fault

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Execution option marking a connection whose transactions only read (see reading).
READ_ONLY_OPTION = "grm_read_only"


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, synchronous=FULL, busy_timeout and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, connect_args=_server_connect_args(parsed))
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    )
    _configure_sqlite(engine)
    return engine


def _server_connect_args(parsed: URL) -> dict[str, str]:
    """PostgreSQL (libpq drivers): a writer waiting for a lock gives up after as long as SQLite's
    busy_timeout, with an error the caller can report, instead of hanging a request forever."""
    driver = parsed.get_driver_name()
    if parsed.get_backend_name() != "postgresql" or driver not in ("psycopg", "psycopg2"):
        return {}
    if "options" in parsed.query:  # the URL's own server options win
        return {}
    return {"options": f"-c lock_timeout={SQLITE_BUSY_TIMEOUT_MS}"}


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # a label acknowledged is a label on disk
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            # A WAL reader needs no lock and must not queue behind writers.
            connection.exec_driver_sql("BEGIN")
            return
        # Take the write lock up front: a writer waits at BEGIN (busy_timeout) instead of
        # failing half-way when a reader upgrades to a writer.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded values readable after commit (we hand out plain values)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def reading(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction for reads only: on SQLite a plain (deferred) BEGIN, so it never waits for
    the write lock; it is rolled back at the end. Writes belong in `writing`."""
    with factory() as session:
        session.connection(execution_options={READ_ONLY_OPTION: True})
        try:
            yield session
        finally:
            session.rollback()


@contextmanager
def writing(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A write transaction (BEGIN IMMEDIATE on SQLite), committed at the end. A database fault
    comes out as SaveFailed / DatabaseBusy with its reason: the transaction is rolled back and
    nothing of it is stored. Other errors (bugs, bad input) pass through unchanged."""
    try:
        with factory.begin() as session:
            yield session
    except DBAPIError as exc:
        fault = storage_fault(exc)
        if fault is None:
            raise
        log.warning("%s [%s]", fault, str(exc.orig).splitlines()[0])
        raise fault from exc


def open_database(url: str) -> tuple[Engine, sessionmaker[Session]]:
    """Engine + session factory for `url`, with the schema migrated to the latest revision."""
    engine = make_engine(url)
    init_db(engine)
    return engine, make_session_factory(engine)


def make_alembic_config(url: str | None = None) -> Config:
    """Alembic configuration built in code: users need no alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest schema revision this code knows."""
    head = ScriptDirectory.from_config(make_alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no Alembic revisions in {MIGRATIONS_DIR}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None: never migrated)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def init_db(engine: Engine) -> None:
    """Upgrade the schema to head: creates everything on an empty database, no-op when current.

    The whole upgrade is one transaction (SQLite and PostgreSQL both have transactional DDL):
    a failed migration leaves the database as it was, and on SQLite the BEGIN IMMEDIATE
    serialises two processes starting at once.
    """
    config = make_alembic_config()
    with engine.connect() as connection:
        is_sqlite = connection.dialect.name == "sqlite"
        if is_sqlite:
            # Batch migrations rebuild tables with DROP TABLE; with foreign keys on that
            # would cascade-delete child rows (labels!). The pragma only works outside a
            # transaction, so set it on the raw connection before BEGIN.
            _sqlite_foreign_keys(connection, on=False)
        try:
            with connection.begin():
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                if is_sqlite:
                    _raise_on_foreign_key_violations(connection)
        finally:
            if is_sqlite:
                _sqlite_foreign_keys(connection, on=True)


def _sqlite_foreign_keys(connection: Connection, *, on: bool) -> None:
    connection.connection.driver_connection.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def _raise_on_foreign_key_violations(connection: Connection) -> None:
    rows = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if rows:
        raise RuntimeError(f"migration left broken foreign keys (table, rowid, parent): {rows[:5]}")
