"""SQLAlchemy 2.0 typed tables: what was imported, what judges said, what people decided."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# Every constraint gets a predictable name, so later Alembic batch migrations on SQLite
# (which rebuild tables) can find and drop them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Dataset(Base):
    """A named import: one or more files loaded under one name."""

    __tablename__ = "dataset"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(Text, default="")
    format: Mapped[str] = mapped_column(String(40), default="")
    pair_count: Mapped[int] = mapped_column(Integer, default=0)
    # The team's guidelines (markdown): shown to annotators, given to the judge as principles.
    guidelines: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Pair(Base):
    """A prompt and two responses. The prompt is text, or chat turns kept as JSON turns."""

    __tablename__ = "pair"
    __table_args__ = (
        UniqueConstraint("dataset_id", "content_hash", name="uq_pair_dataset_hash"),
        Index("ix_pair_dataset_position", "dataset_id", "id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dataset.id", ondelete="CASCADE"))
    external_id: Mapped[str | None] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text, default="")  # text prompt ("" when chat)
    prompt_turns: Mapped[list[Any] | None] = mapped_column(JSON)  # [{role, content}, ...]
    response_a: Mapped[str] = mapped_column(Text)
    response_b: Mapped[str] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(200))
    gold_label: Mapped[str | None] = mapped_column(String(10))  # "A" | "B" | "tie"
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JudgeVersion(Base):
    """A judge that can be asked: base model + backend (+ a LoRA adapter trained here)."""

    __tablename__ = "judge_version"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    base_model: Mapped[str] = mapped_column(Text)
    backend: Mapped[str] = mapped_column(String(40))
    adapter_path: Mapped[str | None] = mapped_column(Text)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("judge_version.id"))
    training_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("training_run.id", use_alter=True, name="fk_judge_version_training_run")
    )
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PromptVersion(Base):
    """A judge prompt as stored data: one protocol's template under a unique version name.

    Never edited in place: a change is a new version (`parent_version` names the one it was
    copied from; an imported version may name one this database does not hold). The built-in
    templates are stored with `read_only` set; judgments record the version name they used.
    """

    __tablename__ = "prompt_version"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(40), unique=True)  # judgment.prompt_version
    protocol: Mapped[str] = mapped_column(String(40))
    system: Mapped[str] = mapped_column(Text)
    user: Mapped[str] = mapped_column(Text)
    answer_prefix: Mapped[str] = mapped_column(Text, default="")
    budgets: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # field -> characters
    parent_version: Mapped[str | None] = mapped_column(String(40))
    read_only: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JudgmentRun(Base):
    """One judge call on a pair: k samples (in one or both orders) and the verdict they make.

    Written once, with its samples, by services.judging.Judging.store; the Label tab, agreement
    and the labels' records read its verdict instead of recombining the samples.
    """

    __tablename__ = "judgment_run"
    __table_args__ = (
        Index("ix_judgment_run_pair", "pair_id", "id"),
        Index("ix_judgment_run_job", "judging_job_id", "pair_id"),  # a job's pairs judged
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pair.id", ondelete="CASCADE"))
    judge_version_id: Mapped[int | None] = mapped_column(ForeignKey("judge_version.id"))
    protocol: Mapped[str] = mapped_column(String(40))
    prompt_version: Mapped[str] = mapped_column(String(40))
    k: Mapped[int] = mapped_column(Integer, default=1)  # samples per order
    swap: Mapped[bool] = mapped_column(Boolean, default=False)  # both orders judged
    aggregation: Mapped[str | None] = mapped_column(String(20))  # the rule that decided
    # The sampling it was judged with (judges.judge.SAMPLING_OPTIONS); NULL for runs stored
    # before migration 0006, whose sampling is not known.
    temperature: Mapped[float | None] = mapped_column(Float)
    repetition_penalty: Mapped[float | None] = mapped_column(Float)
    max_new_tokens: Mapped[int | None] = mapped_column(Integer)
    seed: Mapped[int | None] = mapped_column(Integer)
    logprobs: Mapped[bool | None] = mapped_column(Boolean)
    verdict: Mapped[str] = mapped_column(String(10))  # "A" | "B" | "tie" | "none"
    votes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # stated verdict -> count
    verdict_probability: Mapped[float | None] = mapped_column(Float)
    margin: Mapped[float | None] = mapped_column(Float)  # the mean rule's evidence for A over B
    position_consistent: Mapped[bool | None] = mapped_column(Boolean)
    score_a: Mapped[float | None] = mapped_column(Float)
    score_b: Mapped[float | None] = mapped_column(Float)
    # The batch judging job that made it (NULL: judged live, or before jobs were recorded).
    judging_job_id: Mapped[int | None] = mapped_column(
        ForeignKey("judging_job.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Judgment(Base):
    """One judge sample for one pair, stored in the pair's original order."""

    __tablename__ = "judgment"
    __table_args__ = (
        Index("ix_judgment_pair", "pair_id", "judge_version_id"),
        Index("ix_judgment_run", "run_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pair.id", ondelete="CASCADE"))
    # The run it is a sample of (NULL only for rows written outside Judging.store).
    run_id: Mapped[int | None] = mapped_column(ForeignKey("judgment_run.id", ondelete="CASCADE"))
    judge_version_id: Mapped[int | None] = mapped_column(ForeignKey("judge_version.id"))
    protocol: Mapped[str] = mapped_column(String(40))
    prompt_version: Mapped[str] = mapped_column(String(40))
    verdict: Mapped[str] = mapped_column(String(10))  # "A" | "B" | "tie" | "none"
    status: Mapped[str] = mapped_column(String(20))
    principles: Mapped[str] = mapped_column(Text, default="")
    critique: Mapped[str] = mapped_column(Text, default="")
    score_a: Mapped[float | None] = mapped_column(Float)
    score_b: Mapped[float | None] = mapped_column(Float)
    verdict_probability: Mapped[float | None] = mapped_column(Float)
    verdict_source: Mapped[str] = mapped_column(String(20), default="none")
    raw_text: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    swapped: Mapped[bool] = mapped_column(Boolean, default=False)
    sample_index: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    # The chat messages the judge was given (answer prefill included): what the judge saw.
    prompt_messages: Mapped[list[Any] | None] = mapped_column(JSON)
    aggregation: Mapped[str | None] = mapped_column(String(20))  # rule that combined its run
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Label(Base):
    """A person's current decision on a pair: one row per (pair, annotator)."""

    __tablename__ = "label"
    __table_args__ = (
        UniqueConstraint("pair_id", "annotator", name="uq_label_pair_annotator"),
        Index("ix_label_annotator_pair", "annotator", "pair_id"),
        Index("ix_label_annotator_updated", "annotator", "updated_at"),  # undo: latest label
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pair.id", ondelete="CASCADE"))
    annotator: Mapped[str] = mapped_column(String(200))
    verdict: Mapped[str] = mapped_column(String(12))  # "A" | "B" | "tie" | "both_bad" | "skip"
    judgment_id: Mapped[int | None] = mapped_column(ForeignKey("judgment.id"))
    # The run it agreed with or corrected (the run of judgment_id), filled by save_label.
    judgment_run_id: Mapped[int | None] = mapped_column(ForeignKey("judgment_run.id"))
    agreed_with_judge: Mapped[bool | None] = mapped_column(Boolean)
    corrected_critique: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LabelEvent(Base):
    """Append-only history of every label change; nothing a person did is ever lost."""

    __tablename__ = "label_event"
    __table_args__ = (
        Index("ix_label_event_annotator", "annotator", "id"),
        Index("ix_label_event_pair", "pair_id", "id"),  # a pair's history; client_token lookup
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pair.id", ondelete="CASCADE"))
    annotator: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(20))  # "save" | "undo"
    verdict: Mapped[str | None] = mapped_column(String(12))  # verdict after the event
    previous_verdict: Mapped[str | None] = mapped_column(String(12))
    judgment_id: Mapped[int | None] = mapped_column(Integer)
    corrected_critique: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    client_token: Mapped[str | None] = mapped_column(String(64))  # dedupes a double submit
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TrainingRun(Base):
    """One retraining job: what it used, how far it got, what it measured, why it failed."""

    __tablename__ = "training_run"
    id: Mapped[int] = mapped_column(primary_key=True)
    method: Mapped[str] = mapped_column(String(20))  # a vocabulary.TrainingMethod value
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    base_version_id: Mapped[int | None] = mapped_column(ForeignKey("judge_version.id"))
    label_snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # ids + split
    status: Mapped[str] = mapped_column(String(20), default="queued")
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # step, loss, eta ...
    metrics_before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    metrics_after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    log_path: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JudgingJob(Base):
    """One batch judging of a dataset's pending pairs (or of every dataset's): the judge and
    options it uses, how far it got, and which process is running it.

    Each batch's judgment runs (pointing here) and the advance of `done` are written in one
    transaction, so a killed job loses at most the batch in flight and is continued from the
    pairs it has left. `owner` says which process runs it ("host:pid:token"; NULL: none), and
    `heartbeat_at` when that process last showed it was alive (see storage.judging_jobs).
    """

    __tablename__ = "judging_job"
    __table_args__ = (Index("ix_judging_job_status", "status", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("dataset.id", ondelete="CASCADE"))
    judge_version_id: Mapped[int] = mapped_column(ForeignKey("judge_version.id"))
    protocol: Mapped[str] = mapped_column(String(40))
    prompt_version: Mapped[str | None] = mapped_column(String(40))  # None: protocol's latest
    k: Mapped[int] = mapped_column(Integer, default=1)
    swap: Mapped[bool] = mapped_column(Boolean, default=False)
    aggregate: Mapped[str] = mapped_column(String(20))
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # every JudgeOptions field
    # The job's pairs: those pending when it started, up to this id (pairs come in id order).
    last_pair_id: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="running")
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    busy_seconds: Mapped[float] = mapped_column(Float, default=0.0)  # judging time, all runs
    owner: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
