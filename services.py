"""The workflows both front doors (web app and CLI) share, written once.

Judge pending pairs and store the judgments, stream one judgment, save a label, import, export,
start a training run. Holds the session factory and the one loaded judge backend; hands out plain
values, never ORM objects.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from judges.backends import make_backend
from judges.backends.base import Backend
from judges.judge import JudgeOptions, StreamUpdate, judge_pairs, stream_judgment
from judges.types import AggregateJudgment, ChatTurn, Judgment, PairInput
from settings import Settings
from storage import queries
from storage.db import init_db, make_engine, make_session_factory

log = logging.getLogger(__name__)


@dataclass
class JudgeRunReport:
    """What a batch judging run did."""

    judged: int
    stored_judgments: int
    no_verdict: int
    seconds: float
    cancelled: bool = False


@dataclass
class JudgeSettings:
    """The judge a person chose in the Judge tab or on the command line."""

    backend: str
    model: str | None
    options: JudgeOptions = field(default_factory=JudgeOptions)


def pair_input(view: queries.PairView) -> PairInput:
    """A stored pair as the judges see it (chat turns stay turns)."""
    prompt: str | list[ChatTurn] = view.prompt
    if view.prompt_turns:
        prompt = [ChatTurn(t["role"], t["content"]) for t in view.prompt_turns]
    return PairInput(
        prompt=prompt,
        response_a=view.response_a,
        response_b=view.response_b,
        reference=view.reference,
        pair_id=view.id,
    )


def judgment_row(judgment: Judgment, judge_version_id: int | None) -> dict[str, Any]:
    """A judges.Judgment as the column values of storage's judgment table."""
    scores = judgment.scores or (None, None)
    return {
        "pair_id": judgment.pair_id,
        "judge_version_id": judge_version_id,
        "protocol": judgment.protocol,
        "prompt_version": judgment.prompt_version,
        "verdict": judgment.verdict.value,
        "status": judgment.status.value,
        "principles": judgment.principles,
        "critique": judgment.critique,
        "score_a": scores[0],
        "score_b": scores[1],
        "verdict_probability": judgment.verdict_probability,
        "verdict_source": judgment.verdict_source,
        "raw_text": judgment.raw_text,
        "error": judgment.error,
        "swapped": judgment.swapped,
        "sample_index": judgment.sample_index,
        "prompt_tokens": judgment.prompt_tokens,
        "completion_tokens": judgment.completion_tokens,
        "latency_s": judgment.latency_s,
    }


class Services:
    """One per process: the database and the loaded judge, shared by every user's requests."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = session_factory
        self.judge = JudgeSettings(
            backend=settings.judge_backend,
            model=settings.judge_model,
            options=JudgeOptions(
                protocol=settings.judge_protocol,
                temperature=settings.temperature,
                max_new_tokens=settings.max_new_tokens,
            ),
        )
        self._backend: Backend | None = None
        self._backend_lock = threading.Lock()
        self.backend_load_seconds: float | None = None

    @classmethod
    def open(cls, settings: Settings) -> Services:
        """Connect to (and migrate) the database named by the settings."""
        settings.home.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.db_url)
        init_db(engine)
        return cls(settings, make_session_factory(engine))

    # --- the judge -------------------------------------------------------------------------

    def backend(self) -> Backend:
        """The loaded judge, loading it on first use (one load shared by every caller)."""
        with self._backend_lock:
            if self._backend is None:
                started = time.perf_counter()
                self._backend = make_backend(
                    self.settings,
                    backend=self.judge.backend,
                    model=self.judge.model,
                    adapter_path=self._active_adapter(),
                )
                self.backend_load_seconds = time.perf_counter() - started
                log.info("judge loaded in %.1f s", self.backend_load_seconds)
            return self._backend

    def configure_judge(self, backend: str, model: str | None, options: JudgeOptions) -> None:
        """Switch judge settings; a new backend or model is loaded on the next use."""
        with self._backend_lock:
            if (backend, model) != (self.judge.backend, self.judge.model) and self._backend:
                self._backend.close()
                self._backend = None
            self.judge = JudgeSettings(backend=backend, model=model, options=options)

    def reload_judge(self) -> None:
        """Forget the loaded judge (e.g. after activating another version)."""
        with self._backend_lock:
            if self._backend is not None:
                self._backend.close()
            self._backend = None

    def judge_version_id(self) -> int:
        """The active judge version, registering the configured base judge on first use."""
        with self.sessions.begin() as s:
            active = queries.active_judge_version(s)
            if active is not None:
                return active["id"]
            model = self.judge.model or "SmolLM2-135M-Instruct (embedded)"
            version_id = queries.ensure_judge_version(
                s, name=f"base:{model}", base_model=model, backend=self.judge.backend
            )
            queries.set_active_version(s, version_id)
            return version_id

    def _active_adapter(self) -> str | None:
        with self.sessions.begin() as s:
            active = queries.active_judge_version(s)
        return active.get("adapter_path") if active else None

    def stream_pair_judgment(
        self, pair_id: int, options: JudgeOptions | None = None
    ) -> Iterator[StreamUpdate]:
        """Stream one pair's judgment live; store every finished sample when it ends."""
        version_id = self.judge_version_id()
        with self.sessions.begin() as s:
            pair = pair_input(queries.get_pair(s, pair_id))
        final: AggregateJudgment | None = None
        for update in stream_judgment(
            self.backend(), pair, options or self.judge.options, judge_version=str(version_id)
        ):
            if update.aggregate is not None:
                final = update.aggregate
            yield update
        if final is not None:
            self._store([final], version_id)

    def judge_pending(
        self,
        dataset: str | None = None,
        options: JudgeOptions | None = None,
        limit: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> JudgeRunReport:
        """Judge every pair the active version has not judged with this protocol, in batches."""
        options = options or self.judge.options
        version_id = self.judge_version_id()
        started = time.perf_counter()
        with self.sessions.begin() as s:
            dataset_id = queries.dataset_id(s, dataset) if dataset else None
            pending = queries.pending_pairs(
                s, version_id, options.protocol, dataset_id=dataset_id, limit=limit
            )
        results = judge_pairs(
            self.backend(),
            [pair_input(p) for p in pending],
            options,
            judge_version=str(version_id),
            on_progress=on_progress,
            should_stop=should_stop,
        )
        stored = self._store(results, version_id)
        return JudgeRunReport(
            judged=len(results),
            stored_judgments=stored,
            no_verdict=sum(1 for r in results if r.verdict.value == "none"),
            seconds=time.perf_counter() - started,
            cancelled=len(results) < len(pending),
        )

    def _store(self, results: list[AggregateJudgment], version_id: int) -> int:
        rows = [judgment_row(j, version_id) for r in results for j in r.samples]
        with self.sessions.begin() as s:
            queries.add_judgments(s, rows)
        return len(rows)

    # --- labels ----------------------------------------------------------------------------

    def next_item(self, annotator: str, dataset_id: int | None = None) -> queries.PairView | None:
        with self.sessions.begin() as s:
            return queries.next_pair(s, annotator, dataset_id=dataset_id)

    def save_label(self, pair_id: int, annotator: str, verdict: str, **details: Any) -> Any:
        """Save a person's decision (upsert + history event) in its own write transaction."""
        with self.sessions.begin() as s:
            return queries.save_label(s, pair_id, annotator, verdict, **details)

    def undo_last_label(self, annotator: str, dataset_id: int | None = None) -> int | None:
        with self.sessions.begin() as s:
            return queries.undo_last_label(s, annotator, dataset_id=dataset_id)

    def queue_counts(self, annotator: str, dataset_id: int | None = None) -> Any:
        with self.sessions.begin() as s:
            return queries.queue_counts(s, annotator, dataset_id=dataset_id)

    def stats(self) -> dict[str, Any]:
        with self.sessions.begin() as s:
            return queries.stats(s)

    # --- data in and out -------------------------------------------------------------------

    def import_file(self, path: Path, dataset: str | None = None, format: str = "auto") -> Any:
        from storage.importer import import_file

        max_bytes = self.settings.max_import_mb * 1024 * 1024
        return import_file(self.sessions, path, dataset=dataset, format=format, max_bytes=max_bytes)

    def export(self, out_path: Path, format: str, dataset: str | None = None) -> int:
        from storage.exporter import export_labels

        return export_labels(self.sessions, out_path, format=format, dataset=dataset)

    def load_demo_if_empty(self) -> Any:
        from storage.demo import load_demo_if_empty

        demo = Path(__file__).resolve().parent / "assets" / "demo_pairs.jsonl"
        return load_demo_if_empty(self.sessions, demo)


def as_dict(value: Any) -> Any:
    """Dataclass values as plain dicts (for JSON output and UI tables)."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
