"""Judgments and judge versions: the judge's samples on pairs, which pairs a judge version has
still to judge, and which version is active.

Every function takes the session first and leaves the transaction to the caller; rows come
out as plain dicts (see storage.rows). A judge call's run is in storage.judgment_runs.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from storage.models import JudgeVersion, Judgment, JudgmentRun, Pair
from storage.pairs import PairView, pair_views
from storage.rows import FAILED_JUDGMENT_STATUS, NotFoundError, as_dicts, chunks, in_dataset

JUDGMENT_COLUMNS = frozenset(c.name for c in Judgment.__table__.columns) - {"id"}
REQUIRED_JUDGMENT_COLUMNS = ("pair_id", "protocol", "prompt_version", "verdict", "status")


def judge_verdict():
    """The judge's decision for a judgment (a column expression over Judgment outer-joined to
    JudgmentRun): its run's verdict, its own when it has no run."""
    return func.coalesce(JudgmentRun.verdict, Judgment.verdict)


# --- judgments ------------------------------------------------------------------------------


def add_judgments(s: Session, rows: list[dict[str, Any]]) -> list[int]:
    """Store judge samples (dicts keyed by judgment column names); their ids in input order."""
    for index, row in enumerate(rows):
        unknown = set(row) - JUDGMENT_COLUMNS
        if unknown:
            raise ValueError(f"judgment row {index}: unknown columns {sorted(unknown)}")
        for required in REQUIRED_JUDGMENT_COLUMNS:
            if row.get(required) is None:
                raise ValueError(f"judgment row {index}: missing {required!r}")
    _check_pairs_exist(s, {row["pair_id"] for row in rows})
    judgments = [Judgment(**row) for row in rows]
    s.add_all(judgments)
    s.flush()
    return [j.id for j in judgments]


def _check_pairs_exist(s: Session, pair_ids: set[int]) -> None:
    found: set[int] = set()
    for chunk in chunks(pair_ids):
        found.update(s.scalars(select(Pair.id).where(Pair.id.in_(chunk))))
    missing = pair_ids - found
    if missing:
        raise NotFoundError(f"pairs not found: {sorted(missing)[:10]}")


def pair_judgments(s: Session, pair_id: int) -> list[dict[str, Any]]:
    """Every judgment of a pair, oldest first, with its judge version's name."""
    stmt = (
        select(*Judgment.__table__.columns, JudgeVersion.name.label("judge_version_name"))
        .outerjoin(JudgeVersion, JudgeVersion.id == Judgment.judge_version_id)
        .where(Judgment.pair_id == pair_id)
        .order_by(Judgment.id)
    )
    return as_dicts(s.execute(stmt))


def _judged_by(judge_version_id: int | None, protocol: str):
    version_match = (
        Judgment.judge_version_id.is_(None)
        if judge_version_id is None
        else Judgment.judge_version_id == judge_version_id
    )
    return exists().where(
        Judgment.pair_id == Pair.id,
        version_match,
        Judgment.protocol == protocol,
        Judgment.status != FAILED_JUDGMENT_STATUS,
    )


def pending_pairs(
    s: Session,
    judge_version_id: int | None,
    protocol: str,
    dataset_id: int | None = None,
    limit: int | None = None,
    *,
    through_pair_id: int | None = None,
    judging_job_id: int | None = None,
) -> list[PairView]:
    """Pairs this judge version has not judged with this protocol (failed attempts count as
    not judged, so they are retried), lowest id first. A judging job's pairs left: ids up to
    `through_pair_id`, and none that job already stored a run for (failed or not)."""
    stmt = select(Pair).where(~_judged_by(judge_version_id, protocol)).order_by(Pair.id)
    stmt = in_dataset(stmt, dataset_id)
    if through_pair_id is not None:
        stmt = stmt.where(Pair.id <= through_pair_id)
    if judging_job_id is not None:
        stmt = stmt.where(
            ~exists().where(
                JudgmentRun.judging_job_id == judging_job_id, JudgmentRun.pair_id == Pair.id
            )
        )
    return pair_views(s, stmt if limit is None else stmt.limit(limit))


def version_judgments(
    s: Session, pair_ids: list[int], judge_version_id: int | None
) -> dict[int, list[dict[str, Any]]]:
    """The judgments (with raw text) of one judge version (None: of every version) for these
    pairs, by pair, oldest first; a few queries whatever the number of pairs."""
    columns = (
        Judgment.id,
        Judgment.pair_id,
        Judgment.judge_version_id,
        Judgment.sample_index,
        Judgment.verdict,
        Judgment.raw_text,
        Judgment.swapped,
        Judgment.protocol,
        Judgment.status,
    )
    found: dict[int, list[dict[str, Any]]] = {}
    for chunk in chunks(pair_ids):
        stmt = select(*columns).where(Judgment.pair_id.in_(chunk)).order_by(Judgment.id)
        if judge_version_id is not None:
            stmt = stmt.where(Judgment.judge_version_id == judge_version_id)
        for row in s.execute(stmt):
            found.setdefault(row.pair_id, []).append(dict(row._mapping))
    return found


# --- judge versions -------------------------------------------------------------------------


def ensure_judge_version(
    s: Session,
    name: str,
    base_model: str,
    backend: str,
    *,
    adapter_path: str | None = None,
    parent_id: int | None = None,
    training_run_id: int | None = None,
    metrics: dict[str, Any] | None = None,
    activate: bool = False,
) -> int:
    """The id of judge version `name`, registering it when new.

    An existing version with the same name but another model, backend or adapter is an
    error: judgments must never be credited to the wrong judge.
    """
    existing = s.scalar(select(JudgeVersion).where(JudgeVersion.name == name))
    if existing is None:
        existing = JudgeVersion(
            name=name,
            base_model=base_model,
            backend=backend,
            adapter_path=adapter_path,
            parent_id=parent_id,
            training_run_id=training_run_id,
            metrics=metrics,
            is_active=False,
        )
        s.add(existing)
        s.flush()
    else:
        _check_same_judge(existing, base_model, backend, adapter_path)
    if activate:
        set_active_version(s, existing.id)
    return existing.id


def _check_same_judge(
    version: JudgeVersion, base_model: str, backend: str, adapter_path: str | None
) -> None:
    stored = (version.base_model, version.backend, version.adapter_path)
    if stored != (base_model, backend, adapter_path):
        raise ValueError(
            f"judge version {version.name!r} already exists as (model, backend, adapter) "
            f"{stored}, not {(base_model, backend, adapter_path)}"
        )


def set_active_version(s: Session, version_id: int) -> None:
    """Make one judge version the active one (and no other)."""
    if s.get(JudgeVersion, version_id) is None:
        raise NotFoundError(f"judge version {version_id} not found")
    s.execute(update(JudgeVersion).where(JudgeVersion.is_active).values(is_active=False))
    s.execute(update(JudgeVersion).where(JudgeVersion.id == version_id).values(is_active=True))
    s.expire_all()  # the bulk updates bypassed any loaded JudgeVersion objects


def _judge_version_stmt():
    return select(*JudgeVersion.__table__.columns)


def active_judge_version(s: Session) -> dict[str, Any] | None:
    """The active judge version as a dict, or None when none is active."""
    rows = as_dicts(s.execute(_judge_version_stmt().where(JudgeVersion.is_active)))
    return rows[0] if rows else None


def list_judge_versions(s: Session) -> list[dict[str, Any]]:
    """Every judge version, oldest first."""
    return as_dicts(s.execute(_judge_version_stmt().order_by(JudgeVersion.id)))
