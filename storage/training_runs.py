"""Training runs: one row per retraining job, its status and progress, and which is running.

Every function takes the session first and leaves the transaction to the caller; runs come
out as plain dicts (see storage.rows).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from storage.models import TrainingRun
from storage.rows import NotFoundError, as_dicts, newest_rows, row_by_id
from vocabulary import UNFINISHED_RUN_STATUSES, RunStatus

RUN_FIELDS = frozenset(
    {"status", "progress", "metrics_before", "metrics_after", "error", "pid", "log_path"}
    | {"label_snapshot", "config", "finished_at"}
)


def create_training_run(
    s: Session,
    method: str,
    config: dict[str, Any],
    base_version_id: int | None,
    label_snapshot: dict[str, Any] | None = None,
    status: str = RunStatus.QUEUED,
) -> int:
    """Record a new training run; its id."""
    run = TrainingRun(
        method=str(method),
        config=config,
        base_version_id=base_version_id,
        label_snapshot=label_snapshot,
        status=_run_status(status),
    )
    s.add(run)
    s.flush()
    return run.id


def update_training_run(
    s: Session, run_id: int, *, only_if_status: tuple[str, ...] | None = None, **values: Any
) -> bool:
    """Set some of a run's columns (RUN_FIELDS); False when `only_if_status` did not match.

    `only_if_status` makes the update conditional in one statement, so a cancel and a finish
    racing each other cannot both win.
    """
    unknown = set(values) - RUN_FIELDS
    if unknown:
        raise ValueError(f"training_run has no updatable field {sorted(unknown)}")
    if "status" in values:
        values["status"] = _run_status(values["status"])
    stmt = update(TrainingRun).where(TrainingRun.id == run_id).values(**values)
    if only_if_status is not None:
        stmt = stmt.where(TrainingRun.status.in_([_run_status(x) for x in only_if_status]))
    changed = s.execute(stmt).rowcount
    if not changed and s.get(TrainingRun, run_id) is None:
        raise NotFoundError(f"training run {run_id} not found")
    s.expire_all()
    return bool(changed)


def _run_status(status: str) -> str:
    """The status as the plain string stored (enum members included), or ValueError."""
    if status not in RunStatus.values():
        raise ValueError(f"training run status {status!r} is not one of {RunStatus.values()}")
    return RunStatus(status).value


def _training_run_stmt() -> Select:
    return select(*TrainingRun.__table__.columns)


def get_training_run(s: Session, run_id: int) -> dict[str, Any]:
    """One training run as a dict; NotFoundError when there is none."""
    return row_by_id(s, TrainingRun, run_id, "training run")


def list_training_runs(s: Session, limit: int | None = None) -> list[dict[str, Any]]:
    """Training runs, newest first."""
    return newest_rows(s, TrainingRun, limit)


def running_training_run(s: Session) -> dict[str, Any] | None:
    """The newest run still queued or running (by its row; the caller checks its process)."""
    stmt = _training_run_stmt().where(
        TrainingRun.status.in_([x.value for x in UNFINISHED_RUN_STATUSES])
    )
    rows = as_dicts(s.execute(stmt.order_by(TrainingRun.id.desc()).limit(1)))
    return rows[0] if rows else None
