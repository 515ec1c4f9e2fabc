"""Nothing lost (issue 6, storage side): labels survive a killed process, a read-only or full
database, a lock held by another process, and double submits; faults come out as typed errors.

Every test runs on SQLite and on PostgreSQL (the `db` fixture). Two threads saving at once with
no lost writes is tests/test_storage.py::test_concurrent_label_saves_lose_nothing (and
::test_two_tabs_saving_the_same_pairs_keep_one_label_each), on both backends as well.

This file is also the child process the tests start: `python test_reliability.py save-loop` (saves
labels through Services, printing each one after its commit) and `hold-lock URL` (holds the
database's write lock until told to let go).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from seeding import add_pairs, numbered_pair
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, InternalError, OperationalError, ProgrammingError

from services import DatabaseBusy, SaveFailed, Services, storage_fault
from storage import queries as q
from storage.models import Label, LabelEvent

ANNOTATOR = "alice"
VERDICT_CYCLE = ("A", "B", "tie")
READ_ONLY_MESSAGE = "not saved: the database is read-only"


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def pairs(db) -> list[int]:
    return seed_pairs(db.factory, 5)


def seed_pairs(factory, count: int) -> list[int]:
    return add_pairs(factory, "reliability", count, numbered_pair, source="test", format="pairs")


def current_verdict(services: Services, pair_id: int) -> str | None:
    labels = services.pair_history(pair_id)["labels"]
    return next((label["verdict"] for label in labels if label["annotator"] == ANNOTATOR), None)


def actions(services: Services, pair_id: int) -> list[str]:
    return [event["action"] for event in services.pair_history(pair_id)["events"]]


def child(*args: str, stdin: int | None = None) -> subprocess.Popen:
    """This file run as a child process, with the test's GRM_HOME and GRM_DATABASE_URL."""
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


def expect_line(proc: subprocess.Popen, expected: str) -> None:
    line = proc.stdout.readline().strip()
    if line != expected:
        proc.kill()
        raise AssertionError(f"child said {line!r}, not {expected!r}: {proc.stderr.read()}")


# --- a killed process loses nothing it acknowledged -----------------------------------------


def kill_mid_stream(acks_before_kill: int) -> dict[int, str]:
    """Start the save loop, SIGKILL it once it has acknowledged this many labels, and return
    every label it acknowledged (lines already in the pipe count: the person saw them)."""
    proc = child("save-loop")
    try:
        expect_line(proc, "ready")
        lines = []
        while len(lines) < acks_before_kill:
            line = proc.stdout.readline()
            assert line, f"save loop ended early: {proc.stderr.read()}"
            lines.append(line)
        proc.send_signal(signal.SIGKILL)  # most likely inside the next save's transaction
        lines += proc.stdout.read().splitlines()
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {int(pair_id): verdict for pair_id, verdict in (line.split() for line in lines)}


def assert_nothing_lost(db, acknowledged: dict[int, str], kills: int) -> None:
    with db.factory() as s:
        labels = dict(
            s.execute(
                select(Label.pair_id, Label.verdict).where(Label.annotator == ANNOTATOR)
            ).all()
        )
        events = s.execute(
            select(LabelEvent.pair_id, LabelEvent.action, LabelEvent.verdict).where(
                LabelEvent.annotator == ANNOTATOR
            )
        ).all()
    assert {p: labels.get(p) for p in acknowledged} == acknowledged  # every acknowledged label
    # None half-written: each label has exactly its one save event, and no event lacks its label.
    assert sorted((p, v) for p, action, v in events if action == "save") == sorted(labels.items())
    assert len(events) == len(labels)
    # At most the one save in flight at each kill was committed before it was acknowledged.
    assert len(labels.keys() - acknowledged.keys()) <= kills


def assert_sqlite_intact(db) -> None:
    if db.engine.dialect.name != "sqlite":
        return
    connection = sqlite3.connect(make_url(db.url).database)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        connection.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_mid_stream_keeps_every_acknowledged_label(db, services):
    seed_pairs(db.factory, 400)
    acknowledged: dict[int, str] = {}
    rng = random.Random(6)
    kills = 3
    for _ in range(kills):  # each restart reopens the database the last process died in
        acknowledged |= kill_mid_stream(acks_before_kill=rng.randint(5, 40))
        db.engine.dispose()
        assert_sqlite_intact(db)
        assert_nothing_lost(db, acknowledged, kills)
    # The app carries on after the last kill: the queue resumes where the labels end.
    next_pair = services.next_item(ANNOTATOR)
    assert next_pair.id not in acknowledged
    assert services.save_label(next_pair.id, ANNOTATOR, "A").verdict == "A"


# --- read-only, full and locked databases -----------------------------------------------------


def _open_read_only(dialect, connection_record, cargs, cparams) -> None:
    path = cargs[0] if cargs else cparams.pop("database")
    cargs[:] = [Path(path).as_uri() + "?mode=ro"]
    cparams["uri"] = True


def _admin(url: str, *statements: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


@contextmanager
def database_read_only(db) -> Iterator[None]:
    """The database turns read-only under the running app, then writable again.

    SQLite: the app's new connections open the file read-only, which is what SQLite does with
    a write-protected file (chmod cannot protect a file from root, and CI runs as root).
    PostgreSQL: the database's default_transaction_read_only, as an operator would set it.
    """
    if db.engine.dialect.name == "sqlite":
        event.listen(db.engine, "do_connect", _open_read_only)
        db.engine.dispose()
        try:
            yield
        finally:
            event.remove(db.engine, "do_connect", _open_read_only)
            db.engine.dispose()
        return
    name = db.engine.url.database
    _admin(db.url, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    db.engine.dispose()
    try:
        yield
    finally:
        _admin(
            db.url,
            "SET default_transaction_read_only = off",
            f'ALTER DATABASE "{name}" RESET default_transaction_read_only',
        )
        db.engine.dispose()


def test_read_only_database_refuses_the_save_with_the_reason_and_recovers(db, services, pairs):
    first, second = pairs[:2]
    services.save_label(first, ANNOTATOR, "A")
    with database_read_only(db):
        with pytest.raises(SaveFailed) as refused:
            services.save_label(second, ANNOTATOR, "B", client_token="tab-1:2")
        assert str(refused.value) == READ_ONLY_MESSAGE
        assert not isinstance(refused.value, DatabaseBusy) and not refused.value.retryable
        with pytest.raises(SaveFailed, match="read-only"):
            services.undo_last_label(ANNOTATOR)
        # Nothing else breaks: the queue and the counts still read.
        assert services.next_item(ANNOTATOR).id == second
        assert services.stats()["labels"] == 1
    # Writable again: the label the page kept is saved on retry, once, and nothing else moved.
    saved = services.save_label(second, ANNOTATOR, "B", client_token="tab-1:2")
    assert (saved.verdict, saved.duplicate) == ("B", False)
    assert actions(services, second) == ["save"]
    assert current_verdict(services, first) == "A"


def test_full_disk_refuses_the_save_with_the_reason_and_recovers(db, services, pairs):
    if db.engine.dialect.name != "sqlite":
        pytest.skip(
            "a full disk is simulated with SQLite's max_page_count; PostgreSQL's code "
            "(53100) is covered by test_storage_faults_become_typed_errors"
        )
    with db.engine.connect() as connection:
        pages = connection.exec_driver_sql("PRAGMA page_count").scalar()

    def no_room_to_grow(dbapi_connection, _record) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    long_note = "a long note " * 20_000  # needs new pages, which the full disk cannot give
    event.listen(db.engine, "connect", no_room_to_grow)
    db.engine.dispose()
    try:
        with pytest.raises(SaveFailed) as refused:
            services.save_label(pairs[0], ANNOTATOR, "A", note=long_note)
        assert str(refused.value) == "not saved: the disk is full"
        assert services.next_item(ANNOTATOR).id == pairs[0]
    finally:
        event.remove(db.engine, "connect", no_room_to_grow)
        db.engine.dispose()
    assert services.save_label(pairs[0], ANNOTATOR, "A", note=long_note).note == long_note
    assert actions(services, pairs[0]) == ["save"]


@contextmanager
def lock_held_by_another_process() -> Iterator[None]:
    holder = child("hold-lock", stdin=subprocess.PIPE)
    try:
        expect_line(holder, "locked")
        yield
    finally:
        if holder.poll() is None:
            holder.stdin.write("release\n")
            holder.stdin.flush()
        holder.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_lock_held_past_the_timeout_is_busy_and_the_retry_saves(db, services, pairs):
    first, second = pairs[:2]
    services.save_label(first, ANNOTATOR, "A")
    with lock_held_by_another_process():
        assert services.next_item(ANNOTATOR).id == second  # readers do not wait for the lock
        with pytest.raises(DatabaseBusy) as busy:  # after the busy / lock timeout (5 s)
            services.save_label(second, ANNOTATOR, "B", client_token="tab-1:2")
        assert str(busy.value).startswith("busy, retrying is safe")
        assert busy.value.retryable
    retried = services.save_label(second, ANNOTATOR, "B", client_token="tab-1:2")
    assert (retried.verdict, retried.duplicate) == ("B", False)
    assert actions(services, second) == ["save"]  # the busy attempt left nothing behind
    assert current_verdict(services, first) == "A"


# --- double submits ---------------------------------------------------------------------------


def test_double_click_keeps_one_label_and_both_events(services, pairs):
    first = services.save_label(pairs[0], ANNOTATOR, "B", client_token="click-7")
    again = services.save_label(pairs[0], ANNOTATOR, "B", client_token="click-7")
    assert again.duplicate and again.id == first.id
    assert len(services.pair_history(pairs[0])["labels"]) == 1
    assert actions(services, pairs[0]) == ["save", "duplicate"]


def test_two_tabs_without_a_token_keep_one_current_label(services, pairs):
    services.save_label(pairs[0], ANNOTATOR, "B")
    services.save_label(pairs[0], ANNOTATOR, "A")  # the other tab, a moment later
    history = services.pair_history(pairs[0])
    assert [(label["annotator"], label["verdict"]) for label in history["labels"]] == [
        (ANNOTATOR, "A")
    ]
    assert [(e["action"], e["previous_verdict"]) for e in history["events"]] == [
        ("save", None),
        ("save", "B"),
    ]


def test_same_submit_from_two_threads_at_once_keeps_one_label(services, pairs):
    start, errors = threading.Barrier(2), []

    def submit() -> None:
        try:
            start.wait()
            services.save_label(pairs[0], ANNOTATOR, "B", client_token="click-9")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert current_verdict(services, pairs[0]) == "B"
    assert len(services.pair_history(pairs[0])["labels"]) == 1
    assert len(actions(services, pairs[0])) == 2  # both submits are in the history


# --- the one place faults are classified ------------------------------------------------------


def _sqlite_error(message: str, name: str | None = None) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    if name:
        error.sqlite_errorname = name
    return error


def _psycopg_error(name: str, message: str) -> Exception:
    errors = pytest.importorskip("psycopg.errors")
    return getattr(errors, name)(message)


FAULTS = [
    # (wrapper, driver error, typed error, message start)
    (OperationalError, lambda: _sqlite_error("database is locked"), DatabaseBusy, "busy"),
    (OperationalError, lambda: _sqlite_error("x", "SQLITE_BUSY_SNAPSHOT"), DatabaseBusy, "busy"),
    (
        OperationalError,
        lambda: _sqlite_error("attempt to write a readonly database"),
        SaveFailed,
        READ_ONLY_MESSAGE,
    ),
    (
        OperationalError,
        lambda: _sqlite_error("x", "SQLITE_READONLY_DBMOVED"),
        SaveFailed,
        READ_ONLY_MESSAGE,
    ),
    (
        OperationalError,
        lambda: _sqlite_error("database or disk is full"),
        SaveFailed,
        "not saved: the disk is full",
    ),
    (
        OperationalError,
        lambda: _sqlite_error("disk I/O error"),
        SaveFailed,
        "not saved: disk I/O error",
    ),
    (
        OperationalError,
        lambda: _sqlite_error("unable to open database file"),
        SaveFailed,
        "not saved: the database file cannot be opened",
    ),
    (
        OperationalError,
        lambda: _psycopg_error("LockNotAvailable", "canceling statement due to lock timeout"),
        DatabaseBusy,
        "busy",
    ),
    (
        OperationalError,
        lambda: _psycopg_error("SerializationFailure", "could not serialize access"),
        DatabaseBusy,
        "busy",
    ),
    (
        InternalError,
        lambda: _psycopg_error("ReadOnlySqlTransaction", "cannot execute INSERT"),
        SaveFailed,
        READ_ONLY_MESSAGE,
    ),
    (
        OperationalError,
        lambda: _psycopg_error("DiskFull", "could not extend file"),
        SaveFailed,
        "not saved: the disk is full",
    ),
    (
        OperationalError,
        lambda: _psycopg_error("OperationalError", "connection failed: port 1 failed: refused"),
        SaveFailed,
        "not saved: the database server cannot be reached",
    ),
    (
        OperationalError,
        lambda: _sqlite_error("something new went wrong"),
        SaveFailed,
        "not saved: database error (something new went wrong)",
    ),
]


@pytest.mark.parametrize(("wrapper", "make_error", "typed", "message"), FAULTS)
def test_storage_faults_become_typed_errors(wrapper, make_error, typed, message):
    fault = storage_fault(wrapper("INSERT INTO label ...", {}, make_error()))
    assert type(fault) is typed
    assert str(fault).startswith(message)


@pytest.mark.parametrize(
    "error",
    [
        IntegrityError("INSERT", {}, sqlite3.IntegrityError("pair 40001: database is locked")),
        ProgrammingError("SELECT", {}, sqlite3.ProgrammingError("no such column")),
        InternalError("INSERT", {}, sqlite3.InternalError("55P03 in a message is not a code")),
    ],
)
def test_bugs_and_bad_data_are_not_dressed_up_as_faults(error):
    assert storage_fault(error) is None


def test_bad_input_still_raises_its_own_error(services, pairs):
    with pytest.raises(ValueError, match="verdict"):
        services.save_label(pairs[0], ANNOTATOR, "maybe")
    with pytest.raises(q.NotFoundError):
        services.save_label(10**9, ANNOTATOR, "A")


# --- the child processes ----------------------------------------------------------------------


def _save_loop() -> int:
    """Label the queue in order through Services; print each label only after its commit."""
    from settings import load_settings

    services = Services.open(load_settings())
    print("ready", flush=True)
    while (pair := services.next_item(ANNOTATOR)) is not None:
        verdict = VERDICT_CYCLE[pair.id % len(VERDICT_CYCLE)]
        services.save_label(pair.id, ANNOTATOR, verdict, client_token=f"loop-{pair.id}")
        print(pair.id, verdict, flush=True)  # acknowledged: the person is told it is saved
    return 0


def _hold_lock() -> int:
    """Hold the database's write lock until a line arrives on stdin."""
    url = make_url(os.environ["GRM_DATABASE_URL"])
    if url.get_backend_name() == "sqlite":
        connection = sqlite3.connect(url.database, isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
    else:
        import psycopg

        connection = psycopg.connect(url.set(drivername="postgresql").render_as_string(False))
        connection.execute("LOCK TABLE label IN EXCLUSIVE MODE")  # blocks writers, not readers
    print("locked", flush=True)
    sys.stdin.readline()
    connection.rollback()
    connection.close()
    return 0


if __name__ == "__main__":
    sys.exit({"save-loop": _save_loop, "hold-lock": _hold_lock}[sys.argv[1]]())
