"""Database faults as reasons a person can read: the one place a driver error becomes
"busy" (retrying is safe) or "not saved: ..." (nothing of the write was stored)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError, InternalError, OperationalError


class SaveFailed(RuntimeError):
    """A write the database refused; nothing of it was stored. str() is the sentence to show,
    e.g. "not saved: the database is read-only". The caller keeps the person's input."""

    retryable = False


class DatabaseBusy(SaveFailed):
    """Another process held the database past the lock timeout; nothing stored yet, and trying
    the same save again is safe (labels are idempotent on their client token)."""

    retryable = True


@dataclass(frozen=True)
class _Fault:
    codes: tuple[str, ...]  # SQLite error names (prefixes) and PostgreSQL SQLSTATEs
    fragments: tuple[str, ...]  # in the driver's message (Python < 3.11 gives SQLite no name)
    message: str
    busy: bool = False


BUSY_MESSAGE = "busy, retrying is safe: the database is locked by another writer (not saved yet)"
_FAULTS = (
    _Fault(
        ("SQLITE_BUSY", "SQLITE_LOCKED", "55P03", "40001", "40P01"),
        ("database is locked",),
        BUSY_MESSAGE,
        busy=True,
    ),
    _Fault(
        ("SQLITE_READONLY", "25006"), ("readonly database",), "not saved: the database is read-only"
    ),
    _Fault(("SQLITE_FULL", "53100"), ("database or disk is full",), "not saved: the disk is full"),
    _Fault(("SQLITE_IOERR", "58030"), ("disk I/O error",), "not saved: disk I/O error"),
    _Fault(
        ("SQLITE_CANTOPEN",),
        ("unable to open database file",),
        "not saved: the database file cannot be opened",
    ),
    _Fault(
        ("08",),
        ("connection failed", "server closed the connection"),
        "not saved: the database server cannot be reached",
    ),
)


def storage_fault(exc: DBAPIError) -> SaveFailed | None:
    """The typed error for a database fault (locked, read-only, disk full, I/O, connection);
    None for errors that are bugs or bad input (constraint violations, bad SQL, bad data)."""
    if not isinstance(exc, (OperationalError, InternalError)):
        return None
    orig = exc.orig
    code = getattr(orig, "sqlite_errorname", None) or getattr(orig, "sqlstate", None) or ""
    code = code or getattr(orig, "pgcode", None) or ""  # psycopg2
    message = str(orig)
    for fault in _FAULTS:
        if (code and code.startswith(fault.codes)) or any(f in message for f in fault.fragments):
            return DatabaseBusy(fault.message) if fault.busy else SaveFailed(fault.message)
    if isinstance(exc, OperationalError):  # the database failed, not the request
        return SaveFailed(f"not saved: database error ({message.splitlines()[0][:200]})")
    return None
