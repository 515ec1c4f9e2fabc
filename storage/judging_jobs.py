"""Judging jobs: one row per batch judging, how far it got, which process runs it, and the pairs
it has left.

Ownership: `owner` names the process running the job ("host:pid:token"). A process takes a job
with `claim_judging_job`, a compare-and-set on the owner it read, so of two processes that try
at once only one gets it; every later write of the job (a batch's progress, a heartbeat, the
end) is conditional on still being its owner and the job still running, so a process that lost
the job (cancelled, or taken over as stale) can store nothing more for it. A database row, not
a lock file or an advisory lock, because the job is continued by whichever process starts next,
on SQLite and on PostgreSQL alike. Like storage.queries, every function takes the session first,
leaves the transaction to the caller and returns plain dicts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from storage.judgments import pending_pairs
from storage.models import JudgeVersion, JudgingJob, utcnow
from storage.pairs import PairView
from storage.rows import as_dicts, newest_rows, row_by_id
from vocabulary import UNFINISHED_RUN_STATUSES, RunStatus

UNFINISHED = [status.value for status in UNFINISHED_RUN_STATUSES]


def create_judging_job(
    s: Session,
    *,
    dataset_id: int | None,
    judge_version_id: int,
    options: dict[str, Any],
    total: int,
    last_pair_id: int | None,
    owner: str,
) -> int:
    """Record a running job owned by `owner` over `total` pairs (ids up to last_pair_id)."""
    now = utcnow()
    job = JudgingJob(
        dataset_id=dataset_id,
        judge_version_id=judge_version_id,
        protocol=str(options["protocol"]),
        prompt_version=options.get("prompt_version"),
        k=int(options.get("k", 1)),
        swap=bool(options.get("swap", False)),
        aggregate=str(options.get("aggregate", "")),
        options=options,
        last_pair_id=last_pair_id,
        status=RunStatus.RUNNING.value,
        total=total,
        done=0,
        busy_seconds=0.0,
        owner=owner,
        heartbeat_at=now,
        started_at=now,
        updated_at=now,
    )
    s.add(job)
    s.flush()
    return job.id


def lock_job_starts(s: Session, judge_version_id: int) -> None:
    """Make job starts for one judge version wait for each other until the caller's
    transaction ends: on PostgreSQL a row lock on the judge version (so two processes cannot
    both see no unfinished job and both make one); SQLite's write transaction already is one."""
    s.execute(select(JudgeVersion.id).where(JudgeVersion.id == judge_version_id).with_for_update())


def _job_stmt() -> Select:
    return select(*JudgingJob.__table__.columns)


def get_judging_job(s: Session, job_id: int) -> dict[str, Any]:
    """One job as a dict; NotFoundError when there is none."""
    return row_by_id(s, JudgingJob, job_id, "judging job")


def list_judging_jobs(s: Session, limit: int | None = None) -> list[dict[str, Any]]:
    """Jobs, newest first."""
    return newest_rows(s, JudgingJob, limit)


def unfinished_judging_jobs(s: Session) -> list[dict[str, Any]]:
    """Jobs still queued or running by their row (their owner may be gone), oldest first."""
    stmt = _job_stmt().where(JudgingJob.status.in_(UNFINISHED)).order_by(JudgingJob.id)
    return as_dicts(s.execute(stmt))


def claim_judging_job(
    s: Session, job_id: int, owner: str, previous_owner: str | None, total: int
) -> bool:
    """Make `owner` the job's owner if it is unfinished and still owned by `previous_owner`
    (what the caller read and judged gone); set its total (pairs done + pairs left)."""
    now = utcnow()
    stmt = (
        update(JudgingJob)
        .where(JudgingJob.id == job_id, JudgingJob.status.in_(UNFINISHED))
        .where(
            JudgingJob.owner.is_(None)
            if previous_owner is None
            else JudgingJob.owner == previous_owner
        )
        .values(owner=owner, heartbeat_at=now, updated_at=now, total=total, status="running")
    )
    return _changed(s, stmt)


def advance_judging_job(s: Session, job_id: int, owner: str, pairs: int, seconds: float) -> bool:
    """Count `pairs` more pairs done in `seconds` of judging; False (nothing changed) when
    `owner` no longer runs the job. Call it in the transaction that stores those pairs' runs,
    and roll back on False."""
    now = utcnow()
    stmt = (
        _owned(job_id, owner)
        .values(
            done=JudgingJob.done + pairs,
            busy_seconds=JudgingJob.busy_seconds + seconds,
            heartbeat_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return _changed(s, stmt)


def heartbeat_judging_job(s: Session, job_id: int, owner: str) -> bool:
    """Say that `owner` is alive and still running the job; False when it no longer runs it."""
    return _changed(s, _owned(job_id, owner).values(heartbeat_at=utcnow()))


def end_judging_job(
    s: Session, job_id: int, owner: str, status: str | None, error: str | None = None
) -> bool:
    """`owner` lets go of the job: with a status (done, failed, cancelled) it ends; with None it
    stays running, without an owner, for the next process to continue (a clean shutdown)."""
    now = utcnow()
    values: dict[str, Any] = {"owner": None, "updated_at": now}
    if status is not None:
        values.update(status=RunStatus(status).value, error=error, finished_at=now)
    return _changed(s, _owned(job_id, owner).values(**values))


def cancel_judging_job(s: Session, job_id: int) -> bool:
    """End an unfinished job as cancelled, whoever runs it (its owner stops at its next check
    and can store nothing more); False when it had already ended."""
    now = utcnow()
    stmt = (
        update(JudgingJob)
        .where(JudgingJob.id == job_id, JudgingJob.status.in_(UNFINISHED))
        .values(status=RunStatus.CANCELLED.value, finished_at=now, updated_at=now)
    )
    return _changed(s, stmt)


def fail_judging_job(s: Session, job_id: int, error: str) -> bool:
    """End an unfinished job as failed with `error`, whoever owned it (one that cannot be
    continued, e.g. its judge version is no longer active)."""
    now = utcnow()
    stmt = (
        update(JudgingJob)
        .where(JudgingJob.id == job_id, JudgingJob.status.in_(UNFINISHED))
        .values(status="failed", error=error, owner=None, finished_at=now, updated_at=now)
    )
    return _changed(s, stmt)


def job_pending_pairs(s: Session, job: dict[str, Any]) -> list[PairView]:
    """The pairs the job has left: in its scope (its dataset, ids up to its last pair), not
    judged by its judge version with its protocol, and without a run stored by the job itself
    (a pair it judged and that failed is not tried again by the same job)."""
    if job["last_pair_id"] is None:
        return []
    return pending_pairs(
        s,
        job["judge_version_id"],
        job["protocol"],
        dataset_id=job["dataset_id"],
        through_pair_id=job["last_pair_id"],
        judging_job_id=job["id"],
    )


def _owned(job_id: int, owner: str):
    return update(JudgingJob).where(
        JudgingJob.id == job_id,
        JudgingJob.owner == owner,
        JudgingJob.status == RunStatus.RUNNING.value,
    )


def _changed(s: Session, stmt) -> bool:
    changed = s.execute(stmt).rowcount
    s.expire_all()
    return bool(changed)


def heartbeat_age_seconds(job: dict[str, Any], now: datetime | None = None) -> float | None:
    """Seconds since the job's owner last showed it was alive (None: never)."""
    beat = job.get("heartbeat_at")
    if beat is None:
        return None
    now = now or utcnow()
    if beat.tzinfo is None:  # SQLite gives naive datetimes back (stored as UTC)
        now = now.replace(tzinfo=None)
    return (now - beat).total_seconds()
