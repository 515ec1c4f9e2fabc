"""What every query module shares: the not-found error, the verdicts that are not decisions,
and rows turned into plain dicts with timezone-aware times.

The query modules (storage.pairs, storage.labels, storage.judgments, storage.records,
storage.training_runs) take the session first and leave the transaction to the caller
(`with factory.begin() as s:`); what comes out is plain values, never ORM objects.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from storage.models import Pair
from vocabulary import LabelVerdict

# A judgment that failed (timeout, refused connection) does not count as judged: retry it.
FAILED_JUDGMENT_STATUS = "error"
SKIP = LabelVerdict.SKIP.value  # a skip is stored like a label but is not a decision
ID_CHUNK = 500  # ids per IN (...): stays under SQLite's bound-parameter cap
TIME_COLUMNS = ("created_at", "updated_at", "finished_at")


class NotFoundError(LookupError):
    """A pair, judgment or judge version id that is not in the database."""


def aware(value: datetime | None) -> datetime | None:
    """A stored time in UTC: SQLite hands back naive datetimes; they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def as_dicts(result: Any) -> list[dict[str, Any]]:
    """Result rows as dicts, their times timezone-aware."""
    rows = [dict(row._mapping) for row in result]
    for row in rows:
        for key in TIME_COLUMNS:
            if key in row:
                row[key] = aware(row[key])
    return rows


def in_dataset(stmt: Select, dataset_id: int | None) -> Select:
    """`stmt` (over Pair) kept to one dataset; every dataset for None."""
    return stmt if dataset_id is None else stmt.where(Pair.dataset_id == dataset_id)


def check_columns(
    what: str, row: dict[str, Any], known: frozenset[str], required: tuple[str, ...]
) -> None:
    """ValueError, naming `what`, where `row` has a column not `known` or leaves a `required`
    one empty."""
    unknown = set(row) - known
    if unknown:
        raise ValueError(f"{what}: unknown columns {sorted(unknown)}")
    missing = [name for name in required if row.get(name) is None]
    if missing:
        raise ValueError(f"{what}: missing {missing}")


def chunks(ids: set[int] | list[int]) -> list[list[int]]:
    """Sorted ids in slices of ID_CHUNK, one IN (...) each."""
    ordered = sorted(set(ids))
    return [ordered[start : start + ID_CHUNK] for start in range(0, len(ordered), ID_CHUNK)]


def row_by_id(s: Session, model: type, row_id: int, what: str) -> dict[str, Any]:
    """One row of `model`'s table as a dict; NotFoundError naming `what` when there is none."""
    rows = as_dicts(s.execute(select(*model.__table__.columns).where(model.id == row_id)))
    if not rows:
        raise NotFoundError(f"{what} {row_id} not found")
    return rows[0]


def newest_rows(s: Session, model: type, limit: int | None = None) -> list[dict[str, Any]]:
    """`model`'s rows as dicts, newest (highest id) first, at most `limit`."""
    stmt = select(*model.__table__.columns).order_by(model.id.desc())
    return as_dicts(s.execute(stmt if limit is None else stmt.limit(limit)))
