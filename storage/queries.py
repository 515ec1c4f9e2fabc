"""Query functions over the GRM Studio tables: label queue, labels, judgments, judge versions.

Every function takes the session first and leaves the transaction to the caller
(`with factory.begin() as s:`). What comes out is plain values (dataclasses, dicts), never
ORM objects, so nothing leaks into UI state or outlives its session.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Select, delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.models import (
    Dataset,
    JudgeVersion,
    Judgment,
    JudgmentRun,
    Label,
    LabelEvent,
    Pair,
    TrainingRun,
    utcnow,
)
from vocabulary import UNFINISHED_RUN_STATUSES, LabelVerdict, RunStatus

# A judgment that failed (timeout, refused connection) does not count as judged: retry it.
FAILED_JUDGMENT_STATUS = "error"
MAX_ANNOTATOR_LENGTH = 200
ID_CHUNK = 500
JUDGMENT_COLUMNS = frozenset(c.name for c in Judgment.__table__.columns) - {"id"}


SKIP = LabelVerdict.SKIP.value  # a skip is stored like a label but is not a decision


class NotFoundError(LookupError):
    """A pair, judgment or judge version id that is not in the database."""


@dataclass(frozen=True)
class DatasetInfo:
    id: int
    name: str
    source: str
    format: str
    pair_count: int
    labeled: int  # pairs with at least one non-skip label
    judged: int  # pairs with at least one judgment that did not fail


@dataclass(frozen=True)
class PairView:
    id: int
    dataset_id: int
    dataset: str
    external_id: str | None
    prompt: str | list[dict[str, Any]]  # text, or chat turns [{role, content}, ...]
    response_a: str
    response_b: str
    reference: str | None
    category: str | None
    gold_label: str | None
    meta: dict[str, Any] | None

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)


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


@dataclass(frozen=True)
class QueueCounts:
    done: int
    remaining: int
    total: int


# --- datasets -------------------------------------------------------------------------------


def get_or_create_dataset(s: Session, name: str, source: str = "", format: str = "") -> int:
    """The id of dataset `name`, creating it (with source and format) when new."""
    if not name or not name.strip():
        raise ValueError("dataset name is empty")
    found = s.scalar(select(Dataset.id).where(Dataset.name == name))
    if found is not None:
        return found
    try:
        with s.begin_nested():  # another writer (PostgreSQL) may create it first
            dataset = Dataset(name=name, source=source, format=format, pair_count=0)
            s.add(dataset)
        return dataset.id
    except IntegrityError:
        return s.scalar(select(Dataset.id).where(Dataset.name == name))


def dataset_id(s: Session, name: str) -> int:
    """The id of dataset `name`; NotFoundError (listing the known names) when there is none."""
    found = s.scalar(select(Dataset.id).where(Dataset.name == name))
    if found is None:
        known = s.scalars(select(Dataset.name).order_by(Dataset.id).limit(20)).all()
        raise NotFoundError(f"dataset {name!r} not found (known: {', '.join(known) or 'none'})")
    return found


def list_datasets(s: Session) -> list[DatasetInfo]:
    """Every dataset with its pair, labeled and judged counts, in creation order."""
    pairs = _count_by_dataset(s, select(Pair.dataset_id, func.count(Pair.id)))
    labeled = _count_by_dataset(s, _labeled_pairs_by_dataset())
    judged = _count_by_dataset(s, _judged_pairs_by_dataset())
    rows = s.execute(select(Dataset).order_by(Dataset.id)).scalars()
    return [
        DatasetInfo(
            id=d.id,
            name=d.name,
            source=d.source,
            format=d.format,
            pair_count=pairs.get(d.id, 0),
            labeled=labeled.get(d.id, 0),
            judged=judged.get(d.id, 0),
        )
        for d in rows
    ]


def _count_by_dataset(s: Session, stmt: Select) -> dict[int, int]:
    return dict(s.execute(stmt.group_by(Pair.dataset_id)).all())


def _labeled_pairs_by_dataset() -> Select:
    has_label = exists().where(Label.pair_id == Pair.id, Label.verdict != SKIP)
    return select(Pair.dataset_id, func.count(Pair.id)).where(has_label)


def _judged_pairs_by_dataset() -> Select:
    has_judgment = exists().where(
        Judgment.pair_id == Pair.id, Judgment.status != FAILED_JUDGMENT_STATUS
    )
    return select(Pair.dataset_id, func.count(Pair.id)).where(has_judgment)


# --- pairs and the label queue --------------------------------------------------------------


def _pair_views(s: Session, stmt: Select) -> list[PairView]:
    rows = s.execute(stmt.add_columns(Dataset.name).join(Dataset, Dataset.id == Pair.dataset_id))
    return [_to_pair_view(pair, dataset) for pair, dataset in rows]


def _to_pair_view(pair: Pair, dataset: str) -> PairView:
    return PairView(
        id=pair.id,
        dataset_id=pair.dataset_id,
        dataset=dataset,
        external_id=pair.external_id,
        prompt=list(pair.prompt_turns) if pair.prompt_turns is not None else pair.prompt,
        response_a=pair.response_a,
        response_b=pair.response_b,
        reference=pair.reference,
        category=pair.category,
        gold_label=pair.gold_label,
        meta=dict(pair.meta) if pair.meta is not None else None,
    )


def get_pair(s: Session, pair_id: int) -> PairView:
    """One pair; NotFoundError when the id is unknown."""
    views = _pair_views(s, select(Pair).where(Pair.id == pair_id))
    if not views:
        raise NotFoundError(f"pair {pair_id} not found")
    return views[0]


def _unlabeled_by(annotator: str):
    # NOT EXISTS probes the (annotator, pair_id) index once per candidate pair.
    return ~exists().where(Label.annotator == annotator, Label.pair_id == Pair.id)


def _in_dataset(stmt: Select, dataset_id: int | None) -> Select:
    return stmt if dataset_id is None else stmt.where(Pair.dataset_id == dataset_id)


def next_pair(
    s: Session, annotator: str, dataset_id: int | None = None, from_id: int = 0
) -> PairView | None:
    """The lowest-id pair (from `from_id` on) this annotator has neither labeled nor skipped;
    None when done. The walk costs one index probe per labeled pair it passes, so a caller that
    knows every pair below some id is labeled passes that id (see services.labeling)."""
    stmt = select(Pair).where(Pair.id >= from_id, _unlabeled_by(annotator))
    stmt = stmt.order_by(Pair.id).limit(1)
    views = _pair_views(s, _in_dataset(stmt, dataset_id))
    return views[0] if views else None


def queue_counts(s: Session, annotator: str, dataset_id: int | None = None) -> QueueCounts:
    """How many pairs this annotator has labeled or skipped, and how many are left."""
    total = s.scalar(_in_dataset(select(func.count(Pair.id)), dataset_id))
    done_stmt = select(func.count(Label.id)).where(Label.annotator == annotator)
    if dataset_id is not None:
        done_stmt = done_stmt.join(Pair, Pair.id == Label.pair_id).where(
            Pair.dataset_id == dataset_id
        )
    done = s.scalar(done_stmt)
    return QueueCounts(done=done, remaining=total - done, total=total)


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


# --- labels ---------------------------------------------------------------------------------


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
        select(Judgment.pair_id, Judgment.run_id, _judge_verdict().label("verdict"))
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


def _judge_verdict():
    """The judge's decision for a judgment: its run's verdict, its own when it has no run."""
    return func.coalesce(JudgmentRun.verdict, Judgment.verdict)


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
    fields["created_at"] = _aware(fields["created_at"])
    fields["updated_at"] = _aware(fields["updated_at"])
    return LabelView(**fields, duplicate=duplicate)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they were written in UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


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
    return _dicts(s.execute(stmt.order_by(LabelEvent.id)))


def _dicts(result) -> list[dict[str, Any]]:
    rows = [dict(row._mapping) for row in result]
    for row in rows:
        for key in ("created_at", "updated_at", "finished_at"):
            if key in row:
                row[key] = _aware(row[key])
    return rows


# --- judgments ------------------------------------------------------------------------------


def add_judgments(s: Session, rows: list[dict[str, Any]]) -> list[int]:
    """Store judge samples (dicts keyed by judgment column names); their ids in input order."""
    for index, row in enumerate(rows):
        unknown = set(row) - JUDGMENT_COLUMNS
        if unknown:
            raise ValueError(f"judgment row {index}: unknown columns {sorted(unknown)}")
        for required in ("pair_id", "protocol", "prompt_version", "verdict", "status"):
            if row.get(required) is None:
                raise ValueError(f"judgment row {index}: missing {required!r}")
    _check_pairs_exist(s, {row["pair_id"] for row in rows})
    judgments = [Judgment(**row) for row in rows]
    s.add_all(judgments)
    s.flush()
    return [j.id for j in judgments]


def _check_pairs_exist(s: Session, pair_ids: set[int]) -> None:
    ordered, found = sorted(pair_ids), set()
    for start in range(0, len(ordered), ID_CHUNK):
        chunk = ordered[start : start + ID_CHUNK]
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
    return _dicts(s.execute(stmt))


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
) -> list[PairView]:
    """Pairs this judge version has not judged with this protocol (failed attempts count as
    not judged, so they are retried), lowest id first."""
    stmt = select(Pair).where(~_judged_by(judge_version_id, protocol)).order_by(Pair.id)
    stmt = _in_dataset(stmt, dataset_id)
    return _pair_views(s, stmt if limit is None else stmt.limit(limit))


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


def _judge_version_stmt() -> Select:
    return select(*JudgeVersion.__table__.columns)


def active_judge_version(s: Session) -> dict[str, Any] | None:
    """The active judge version as a dict, or None when none is active."""
    rows = _dicts(s.execute(_judge_version_stmt().where(JudgeVersion.is_active)))
    return rows[0] if rows else None


def list_judge_versions(s: Session) -> list[dict[str, Any]]:
    """Every judge version, oldest first."""
    return _dicts(s.execute(_judge_version_stmt().order_by(JudgeVersion.id)))


# --- records for metrics and training -------------------------------------------------------


def labeled_records(
    s: Session, dataset_id: int | None = None, judge_version_id: int | None = None
) -> list[dict[str, Any]]:
    """Each current non-skip label with its pair and a judge verdict to compare it with.

    The judgment is the one the person answered (label.judgment_id) if any, else the pair's
    latest judgment that did not fail; with `judge_version_id`, the latest of that version.
    The judge's verdict is that judgment's run's (the aggregated decision), its own when it has
    no run. Judge fields are None when the pair has no such judgment.
    """
    compared = _compared_judgment_id(judge_version_id).label("compared_judgment_id")
    stmt = (
        select(Label, Pair, Dataset.name, compared)
        .join(Pair, Pair.id == Label.pair_id)
        .join(Dataset, Dataset.id == Pair.dataset_id)
        .where(Label.verdict != SKIP)
        .order_by(Label.id)
    )
    rows = s.execute(_in_dataset(stmt, dataset_id)).all()
    judgments = _judgment_fields(s, {row[3] for row in rows if row[3] is not None})
    return [
        _record(label, pair, dataset, judgments.get(judgment_id))
        for label, pair, dataset, judgment_id in rows
    ]


def _compared_judgment_id(judge_version_id: int | None):
    latest = select(func.max(Judgment.id)).where(
        Judgment.pair_id == Label.pair_id, Judgment.status != FAILED_JUDGMENT_STATUS
    )
    if judge_version_id is not None:
        return latest.where(Judgment.judge_version_id == judge_version_id).scalar_subquery()
    return func.coalesce(Label.judgment_id, latest.scalar_subquery())


def _judgment_fields(s: Session, ids: set[int]) -> dict[int, dict[str, Any]]:
    columns = (
        Judgment.id,
        _judge_verdict().label("verdict"),
        Judgment.status,
        Judgment.judge_version_id,
        Judgment.protocol,
        Judgment.swapped,
        Judgment.run_id,
        JudgmentRun.swap,
        JudgmentRun.position_consistent,
    )
    stmt = select(*columns).outerjoin(JudgmentRun, JudgmentRun.id == Judgment.run_id)
    ordered, found = sorted(ids), {}
    for start in range(0, len(ordered), ID_CHUNK):  # stay under SQLite's bound-parameter cap
        chunk = ordered[start : start + ID_CHUNK]
        for row in s.execute(stmt.where(Judgment.id.in_(chunk))):
            found[row.id] = dict(row._mapping)
    return found


def _record(
    label: Label, pair: Pair, dataset: str, judgment: dict[str, Any] | None
) -> dict[str, Any]:
    judgment = judgment or {}
    return {
        "label_id": label.id,
        "pair_id": pair.id,
        "dataset_id": pair.dataset_id,
        "dataset": dataset,
        "annotator": label.annotator,
        "label": label.verdict,
        "agreed_with_judge": label.agreed_with_judge,
        "corrected_critique": label.corrected_critique,
        "note": label.note,
        "labeled_at": _aware(label.updated_at),
        "label_judgment_id": label.judgment_id,
        "external_id": pair.external_id,
        "prompt": list(pair.prompt_turns) if pair.prompt_turns is not None else pair.prompt,
        "response_a": pair.response_a,
        "response_b": pair.response_b,
        "reference": pair.reference,
        "category": pair.category,
        "gold_label": pair.gold_label,
        "judgment_id": judgment.get("id"),
        "judge_verdict": judgment.get("verdict"),
        "judge_status": judgment.get("status"),
        "judge_version_id": judgment.get("judge_version_id"),
        "judge_protocol": judgment.get("protocol"),
        "judge_swapped": judgment.get("swapped"),
        "judge_run_id": judgment.get("run_id"),
        "judge_swap": judgment.get("swap"),  # the run judged both orders
        "judge_position_consistent": judgment.get("position_consistent"),
    }


def stats(s: Session) -> dict[str, Any]:
    """Counts for `grm stats`: datasets, pairs, labeled and judged pairs, per annotator."""
    per_annotator = s.execute(
        select(
            Label.annotator,
            func.count(Label.id).filter(Label.verdict != SKIP),
            func.count(Label.id).filter(Label.verdict == SKIP),
            func.max(Label.updated_at),
        )
        .group_by(Label.annotator)
        .order_by(Label.annotator)
    )
    datasets = list_datasets(s)
    return {
        "datasets": len(datasets),
        "pairs": sum(d.pair_count for d in datasets),
        "labeled": sum(d.labeled for d in datasets),
        "judged": sum(d.judged for d in datasets),
        "labels": s.scalar(select(func.count(Label.id)).where(Label.verdict != SKIP)),
        "judgments": s.scalar(select(func.count(Judgment.id))),
        "label_events": s.scalar(select(func.count(LabelEvent.id))),
        "per_annotator": [
            {"annotator": a, "labeled": n, "skipped": k, "last_label_at": _aware(last)}
            for a, n, k, last in per_annotator
        ],
        "per_dataset": [asdict(d) for d in datasets],
    }


# --- training runs (issue 5) -----------------------------------------------------------------

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
    rows = _dicts(s.execute(_training_run_stmt().where(TrainingRun.id == run_id)))
    if not rows:
        raise NotFoundError(f"training run {run_id} not found")
    return rows[0]


def list_training_runs(s: Session, limit: int | None = None) -> list[dict[str, Any]]:
    """Training runs, newest first."""
    stmt = _training_run_stmt().order_by(TrainingRun.id.desc())
    return _dicts(s.execute(stmt if limit is None else stmt.limit(limit)))


def running_training_run(s: Session) -> dict[str, Any] | None:
    """The newest run still queued or running (by its row; the caller checks its process)."""
    stmt = _training_run_stmt().where(
        TrainingRun.status.in_([x.value for x in UNFINISHED_RUN_STATUSES])
    )
    rows = _dicts(s.execute(stmt.order_by(TrainingRun.id.desc()).limit(1)))
    return rows[0] if rows else None


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
    ordered = sorted(set(pair_ids))
    for start in range(0, len(ordered), ID_CHUNK):
        chunk = ordered[start : start + ID_CHUNK]
        stmt = select(*columns).where(Judgment.pair_id.in_(chunk)).order_by(Judgment.id)
        if judge_version_id is not None:
            stmt = stmt.where(Judgment.judge_version_id == judge_version_id)
        for row in s.execute(stmt):
            found.setdefault(row.pair_id, []).append(dict(row._mapping))
    return found


__all__ = [
    "DatasetInfo",
    "LabelView",
    "NotFoundError",
    "PairView",
    "QueueCounts",
    "add_judgments",
    "create_training_run",
    "get_training_run",
    "list_training_runs",
    "running_training_run",
    "update_training_run",
    "version_judgments",
    "active_judge_version",
    "current_labels",
    "dataset_id",
    "ensure_judge_version",
    "get_or_create_dataset",
    "get_pair",
    "label_history",
    "labeled_records",
    "list_datasets",
    "list_judge_versions",
    "next_pair",
    "pair_judgments",
    "pending_pairs",
    "queue_counts",
    "save_label",
    "set_active_version",
    "stats",
    "undo_last_label",
]
