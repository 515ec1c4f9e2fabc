"""Judgment runs: a judge call on a pair written with its samples, and a pair's latest run.

A run row holds the decision its samples made (services.judging.Judging.store writes it from
the judge's AggregateJudgment); readers take that decision instead of recombining samples.
Like storage.queries, every function takes the session first and returns plain dicts.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import JudgeVersion, Judgment, JudgmentRun, Pair
from storage.queries import NotFoundError, _dicts, add_judgments
from storage.rows import check_columns

RUN_COLUMNS = frozenset(c.name for c in JudgmentRun.__table__.columns) - {"id", "created_at"}
REQUIRED_RUN_COLUMNS = ("pair_id", "protocol", "prompt_version", "verdict")


def add_judgment_run(s: Session, run: dict[str, Any], samples: list[dict[str, Any]]) -> int:
    """Store one run (a dict keyed by judgment_run columns) and its samples (judgment rows, as
    for add_judgments) pointing at it; the run's id."""
    check_columns("judgment run", run, RUN_COLUMNS, REQUIRED_RUN_COLUMNS)
    if not samples:
        raise ValueError("judgment run: no samples")
    others = {row.get("pair_id") for row in samples} - {run["pair_id"]}
    if others:
        raise ValueError(f"judgment run of pair {run['pair_id']}: samples of pairs {others}")
    if s.get(Pair, run["pair_id"]) is None:
        raise NotFoundError(f"pair {run['pair_id']} not found")
    stored = JudgmentRun(**run)
    s.add(stored)
    s.flush()
    add_judgments(s, [{**row, "run_id": stored.id} for row in samples])
    return stored.id


def _sample_stmt():
    """Judgment rows with their judge version's name (the shape pair_judgments gives)."""
    name = JudgeVersion.name.label("judge_version_name")
    return select(*Judgment.__table__.columns, name).outerjoin(
        JudgeVersion, JudgeVersion.id == Judgment.judge_version_id
    )


def latest_run(s: Session, pair_id: int) -> dict[str, Any] | None:
    """The pair's newest run as {"run": its row, "samples": its judgment rows}, samples ordered
    by (sample index, order); None when the pair was never judged.

    A judgment stored without a run (add_judgments alone, outside Judging.store) that is newer
    than the newest run counts as a run of its own: {"run": None, "samples": [that row]}.
    """
    runs = _dicts(
        s.execute(
            select(*JudgmentRun.__table__.columns)
            .where(JudgmentRun.pair_id == pair_id)
            .order_by(JudgmentRun.id.desc())
            .limit(1)
        )
    )
    loose = s.scalar(
        select(func.max(Judgment.id)).where(Judgment.pair_id == pair_id, Judgment.run_id.is_(None))
    )
    if runs:
        samples = _dicts(s.execute(_sample_stmt().where(Judgment.run_id == runs[0]["id"])))
        if loose is None or loose < max((r["id"] for r in samples), default=0):
            samples.sort(key=lambda r: (r["sample_index"], bool(r["swapped"]), r["id"]))
            return {"run": runs[0], "samples": samples}
    if loose is None:
        return None
    return {"run": None, "samples": _dicts(s.execute(_sample_stmt().where(Judgment.id == loose)))}


__all__ = ["RUN_COLUMNS", "add_judgment_run", "latest_run"]
