"""Labels: a person's decision on a pair, saved (once per client token), undone, and the
history of every change (label_event).

Every function takes the session first and leaves the transaction to the caller; labels come
out as LabelView values (see storage.rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from storage.judgments import judge_verdict
from storage.models import Judgment, JudgmentRun, Label, LabelEvent, Pair, utcnow
from storage.rows import SKIP, NotFoundError, as_dicts, aware
from vocabulary import LabelVerdict

MAX_ANNOTATOR_LENGTH = 200


@dataclass(frozen=True)
class LabelView:
    id: int
    pair_id: int
    annotator: str
    verdict: str
    judgment_id: int | None
    agreed_with_judge: bool | None
    corrected_critique: str | None
    note: str | None
    created_at: datetime
    updated_at: datetime
    judgment_run_id: int | None = None  # the run of judgment_id
    duplicate: bool = False  # the client_token was already saved: the label was left as it was


def save_label(
    s: Session,
    pair_id: int,
    annotator: str,
    verdict: str,
    *,
    judgment_id: int | None = None,
    agreed_with_judge: bool | None = None,
    corrected_critique: str | None = None,
    note: str | None = None,
    client_token: str | None = None,
) -> LabelView | None:
    """Set the annotator's current label on a pair and append the change to label_event.

    A client_token already saved for this pair and annotator (a double click, a retried
    request, a second tab) is recorded as a "duplicate" event and leaves the current label as
    it is, so a late replay can never overwrite a newer decision. Returns the current label
    (`duplicate=True` for a replay); None only for a replay of a label undone since.
    """
    _check_label_input(verdict, annotator, client_token)
    verdict = LabelVerdict(verdict).value  # stored as the plain string, whatever was passed
    if s.get(Pair, pair_id) is None:
        raise NotFoundError(f"pair {pair_id} not found")
    run_id = None
    if judgment_id is not None:
        agreed_with_judge, run_id = _judgment_agreement(
            s, pair_id, judgment_id, verdict, agreed_with_judge
        )
    current = _current_label(s, pair_id, annotator)
    if client_token is not None and _token_seen(s, pair_id, annotator, client_token):
        return _record_duplicate(s, current, pair_id, annotator, client_token)
    values = {
        "verdict": verdict,
        "judgment_id": judgment_id,
        "judgment_run_id": run_id,
        "agreed_with_judge": agreed_with_judge,
        "corrected_critique": corrected_critique,
        "note": note,
    }
    label_id = _upsert_label(s, pair_id, annotator, values)
    s.add(
        LabelEvent(
            pair_id=pair_id,
            annotator=annotator,
            action="save",
            verdict=verdict,
            previous_verdict=current.verdict if current else None,
            judgment_id=judgment_id,
            corrected_critique=corrected_critique,
            note=note,
            client_token=client_token,
        )
    )
    s.flush()
    return _label_view(s, label_id)


def _check_label_input(verdict: str, annotator: str, client_token: str | None) -> None:
    if verdict not in LabelVerdict.values():
        raise ValueError(f"verdict {verdict!r} is not one of {LabelVerdict.values()}")
    if not isinstance(annotator, str) or not annotator.strip():
        raise ValueError("annotator is empty")
    if len(annotator) > MAX_ANNOTATOR_LENGTH:
        raise ValueError(f"annotator name longer than {MAX_ANNOTATOR_LENGTH} characters")
    if client_token is not None and not 0 < len(client_token) <= 64:
        raise ValueError("client_token must be 1 to 64 characters")


def _judgment_agreement(
    s: Session, pair_id: int, judgment_id: int, verdict: str, agreed: bool | None
) -> tuple[bool | None, int | None]:
    """Check the judgment belongs to the pair; derive agreement (with its run's verdict, or its
    own without a run) when the caller did not say. Agreement and the judgment's run id."""
    stmt = (
        select(Judgment.pair_id, Judgment.run_id, judge_verdict().label("verdict"))
        .outerjoin(JudgmentRun, JudgmentRun.id == Judgment.run_id)
        .where(Judgment.id == judgment_id)
    )
    found = s.execute(stmt).first()
    if found is None:
        raise NotFoundError(f"judgment {judgment_id} not found")
    if found.pair_id != pair_id:
        raise ValueError(f"judgment {judgment_id} belongs to pair {found.pair_id}, not {pair_id}")
    if agreed is None and verdict != LabelVerdict.SKIP:
        agreed = found.verdict == verdict
    return agreed, found.run_id


def _current_label(s: Session, pair_id: int, annotator: str) -> Label | None:
    stmt = select(Label).where(Label.pair_id == pair_id, Label.annotator == annotator)
    return s.scalar(stmt.execution_options(populate_existing=True))


def _token_seen(s: Session, pair_id: int, annotator: str, client_token: str) -> bool:
    stmt = select(LabelEvent.id).where(
        LabelEvent.pair_id == pair_id,
        LabelEvent.annotator == annotator,
        LabelEvent.client_token == client_token,
    )
    return s.scalar(stmt.limit(1)) is not None


def _record_duplicate(
    s: Session, current: Label | None, pair_id: int, annotator: str, client_token: str
) -> LabelView | None:
    verdict = current.verdict if current else None
    s.add(
        LabelEvent(
            pair_id=pair_id,
            annotator=annotator,
            action="duplicate",
            verdict=verdict,
            previous_verdict=verdict,
            client_token=client_token,
        )
    )
    s.flush()
    if current is None:  # saved once, then undone: the replay does not bring it back
        return None
    return _label_view(s, current.id, duplicate=True)


def _upsert_label(s: Session, pair_id: int, annotator: str, values: dict[str, Any]) -> int:
    """Insert or update the (pair, annotator) label in one statement, so two tabs saving the
    same pair at once on PostgreSQL update the one row instead of failing on the unique key."""
    dialect = s.get_bind().dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        return _upsert_label_portable(s, pair_id, annotator, values)
    now = utcnow()
    stmt = insert(Label).values(
        pair_id=pair_id, annotator=annotator, created_at=now, updated_at=now, **values
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[Label.pair_id, Label.annotator],
        set_={**values, "updated_at": now},
    )
    return s.execute(stmt.returning(Label.id)).scalar_one()


def _upsert_label_portable(s: Session, pair_id: int, annotator: str, values: dict) -> int:
    label = _current_label(s, pair_id, annotator)
    if label is None:
        label = Label(pair_id=pair_id, annotator=annotator, **values)
        s.add(label)
    else:
        for key, value in values.items():
            setattr(label, key, value)
        label.updated_at = utcnow()
    s.flush()
    return label.id


def _label_view(s: Session, label_id: int, duplicate: bool = False) -> LabelView:
    row = s.execute(select(*Label.__table__.columns).where(Label.id == label_id)).one()
    fields = dict(row._mapping)
    fields["created_at"] = aware(fields["created_at"])
    fields["updated_at"] = aware(fields["updated_at"])
    return LabelView(**fields, duplicate=duplicate)


def undo_last_label(s: Session, annotator: str, dataset_id: int | None = None) -> int | None:
    """Delete the annotator's most recently saved label (put its pair back in the queue) and
    record an "undo" event. Returns that pair's id, or None when there is nothing to undo."""
    stmt = select(Label.id, Label.pair_id, Label.verdict).where(Label.annotator == annotator)
    if dataset_id is not None:
        stmt = stmt.join(Pair, Pair.id == Label.pair_id).where(Pair.dataset_id == dataset_id)
    last = s.execute(stmt.order_by(Label.updated_at.desc(), Label.id.desc()).limit(1)).first()
    if last is None:
        return None
    s.execute(delete(Label).where(Label.id == last.id))
    s.add(
        LabelEvent(
            pair_id=last.pair_id,
            annotator=annotator,
            action="undo",
            verdict=None,
            previous_verdict=last.verdict,
        )
    )
    s.flush()
    return last.pair_id


def current_labels(s: Session, pair_id: int) -> list[LabelView]:
    """Every annotator's current label on a pair."""
    ids = s.scalars(select(Label.id).where(Label.pair_id == pair_id).order_by(Label.id))
    return [_label_view(s, label_id) for label_id in ids.all()]


def label_history(s: Session, pair_id: int) -> list[dict[str, Any]]:
    """Every label event on a pair, oldest first (saves, duplicates and undos)."""
    stmt = select(*LabelEvent.__table__.columns).where(LabelEvent.pair_id == pair_id)
    return as_dicts(s.execute(stmt.order_by(LabelEvent.id)))


def judge_agreement_counts(
    s: Session, annotator: str, dataset_id: int | None = None
) -> tuple[int, int]:
    """(compared, agreed): this annotator's labels made beside a judgment, and how many of
    them agreed with it. Counted in the database: no label is loaded."""
    stmt = select(
        func.count(Label.agreed_with_judge), func.count().filter(Label.agreed_with_judge.is_(True))
    ).where(Label.annotator == annotator, Label.verdict != SKIP)
    if dataset_id is not None:
        stmt = stmt.join(Pair, Pair.id == Label.pair_id).where(Pair.dataset_id == dataset_id)
    compared, agreed = s.execute(stmt).one()
    return compared, agreed
