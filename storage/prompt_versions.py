"""A dataset's guidelines, judge prompts as stored versions, and the judgment runs of one judge
setup (what `grm compare` reuses instead of judging again).

Like storage.queries, every function takes the session first, leaves the transaction to the
caller and returns plain dicts. What a guideline or a template may hold is checked before it
gets here (services.prompts); this module stores it as given and never changes a version.
"""

from __future__ import annotations

from datetime import timezone
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.models import Dataset, Judgment, JudgmentRun, PromptVersion
from storage.queries import FAILED_JUDGMENT_STATUS, ID_CHUNK, NotFoundError
from storage.rows import check_columns

VERSION_COLUMNS = frozenset(c.name for c in PromptVersion.__table__.columns) - {"id"}
REQUIRED_VERSION_COLUMNS = ("version", "protocol", "system", "user")


class VersionExists(ValueError):
    """A prompt version of that name is already stored (versions are never replaced)."""


def _dicts(result: Any) -> list[dict[str, Any]]:
    """Rows as dicts; a stored time in UTC (SQLite hands back naive ones, written in UTC)."""
    rows = [dict(row._mapping) for row in result]
    for row in rows:
        created = row.get("created_at")
        if created is not None and created.tzinfo is None:
            row["created_at"] = created.replace(tzinfo=timezone.utc)
    return rows


# --- guidelines -------------------------------------------------------------------------------


def dataset_guidelines(s: Session, dataset_id: int) -> str | None:
    """The dataset's guidelines, None when none were set; NotFoundError for an unknown id."""
    dataset = s.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFoundError(f"dataset {dataset_id} not found")
    return dataset.guidelines


def set_dataset_guidelines(s: Session, dataset_id: int, text: str | None) -> None:
    """Replace the dataset's guidelines (None clears them)."""
    dataset = s.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFoundError(f"dataset {dataset_id} not found")
    dataset.guidelines = text
    s.flush()


# --- prompt versions --------------------------------------------------------------------------


def add_prompt_version(s: Session, row: dict[str, Any]) -> int:
    """Store a new version (a dict keyed by prompt_version columns); its id. VersionExists
    when the name is taken, also by a writer that was first a moment ago."""
    check_columns("prompt version", row, VERSION_COLUMNS, REQUIRED_VERSION_COLUMNS)
    if get_prompt_version(s, row["version"]) is not None:
        raise VersionExists(f"prompt version {row['version']!r} already exists")
    try:
        with s.begin_nested():
            stored = PromptVersion(**row)
            s.add(stored)
    except IntegrityError:
        raise VersionExists(f"prompt version {row['version']!r} already exists") from None
    return stored.id


def add_missing_prompt_versions(s: Session, rows: list[dict[str, Any]]) -> list[str]:
    """Store the versions whose names are not stored yet (the built-ins on first use); the
    names stored now."""
    stored = set(s.scalars(select(PromptVersion.version)))
    added = []
    for row in rows:
        if row["version"] in stored:
            continue
        try:
            add_prompt_version(s, row)
        except VersionExists:
            continue  # another process stored it first
        added.append(row["version"])
    return added


def _version_stmt():
    return select(*PromptVersion.__table__.columns)


def get_prompt_version(s: Session, version: str) -> dict[str, Any] | None:
    """One stored version by name, None when there is none."""
    rows = _dicts(s.execute(_version_stmt().where(PromptVersion.version == version)))
    return rows[0] if rows else None


def list_prompt_versions(s: Session, protocol: str | None = None) -> list[dict[str, Any]]:
    """Every stored version (of one protocol), oldest first."""
    stmt = _version_stmt().order_by(PromptVersion.id)
    if protocol is not None:
        stmt = stmt.where(PromptVersion.protocol == protocol)
    return _dicts(s.execute(stmt))


# --- judgment runs of one judge setup ---------------------------------------------------------


def setup_runs(
    s: Session,
    pair_ids: list[int],
    *,
    judge_version_id: int,
    protocol: str,
    prompt_version: str,
    k: int,
    swap: bool,
    sampling: dict[str, Any],
) -> dict[int, dict[str, Any]]:
    """Per pair, the newest run of this setup (judge version, protocol, prompt version, k,
    swap, and the `sampling` columns' values, JudgeOptions.sampling) that has a sample which
    did not fail: {pair_id: {"run": row, "samples": rows}}, samples ordered by (sample index,
    order). Pairs without such a run are left out, and so are runs stored without their
    sampling (before migration 0006): NULL equals no value."""
    has_result = exists().where(
        Judgment.run_id == JudgmentRun.id, Judgment.status != FAILED_JUDGMENT_STATUS
    )
    sampled_so = [JudgmentRun.__table__.c[name] == value for name, value in sampling.items()]
    newest = select(func.max(JudgmentRun.id), JudgmentRun.pair_id).where(
        JudgmentRun.judge_version_id == judge_version_id,
        JudgmentRun.protocol == protocol,
        JudgmentRun.prompt_version == prompt_version,
        JudgmentRun.k == k,
        JudgmentRun.swap == swap,
        *sampled_so,
        has_result,
    )
    run_ids: list[int] = []
    for start in range(0, len(pair_ids), ID_CHUNK):
        chunk = pair_ids[start : start + ID_CHUNK]
        stmt = newest.where(JudgmentRun.pair_id.in_(chunk)).group_by(JudgmentRun.pair_id)
        run_ids += [row[0] for row in s.execute(stmt)]
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(run_ids), ID_CHUNK):
        found.update(_runs_with_samples(s, run_ids[start : start + ID_CHUNK]))
    return found


def _runs_with_samples(s: Session, run_ids: list[int]) -> dict[int, dict[str, Any]]:
    runs = select(*JudgmentRun.__table__.columns).where(JudgmentRun.id.in_(run_ids))
    found = {run["pair_id"]: {"run": run, "samples": []} for run in _dicts(s.execute(runs))}
    samples = (
        select(*Judgment.__table__.columns)
        .where(Judgment.run_id.in_(run_ids))
        .order_by(Judgment.sample_index, Judgment.swapped, Judgment.id)
    )
    for row in _dicts(s.execute(samples)):
        found[row["pair_id"]]["samples"].append(row)
    return found


__all__ = [
    "VersionExists",
    "add_missing_prompt_versions",
    "add_prompt_version",
    "dataset_guidelines",
    "get_prompt_version",
    "list_prompt_versions",
    "set_dataset_guidelines",
    "setup_runs",
]
