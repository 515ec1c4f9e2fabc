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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError, InternalError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from judges.backends import make_backend
from judges.backends.base import Backend
from judges.judge import JudgeOptions, StreamUpdate, judge_pairs, stream_judgment
from judges.types import AggregateJudgment, ChatTurn, Judgment, PairInput
from settings import Settings
from storage import queries
from storage.db import init_db, make_engine, make_session_factory, read_session

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
    prompt: str | list[ChatTurn] = view.prompt  # type: ignore[assignment]
    if view.is_chat:
        prompt = [ChatTurn(t["role"], t["content"]) for t in view.prompt]
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


# --- storage faults (issue 6, reliability): the one place database errors become reasons ---


class SaveFailed(RuntimeError):
    """A write the database refused; nothing of it was stored. str() is the sentence to show,
    e.g. "not saved: the database is read-only". The caller keeps the person's input."""

    retryable = False


class DatabaseBusy(SaveFailed):
    """Another process held the database past the lock timeout; nothing stored yet, and trying
    the same save again is safe (labels are idempotent on their client token)."""

    retryable = True


@dataclass(frozen=True)
class _Fault:
    codes: tuple[str, ...]  # SQLite error names (prefixes) and PostgreSQL SQLSTATEs
    fragments: tuple[str, ...]  # in the driver's message (Python < 3.11 gives SQLite no name)
    message: str
    busy: bool = False


BUSY_MESSAGE = "busy, retrying is safe: the database is locked by another writer (not saved yet)"
_FAULTS = (
    _Fault(
        ("SQLITE_BUSY", "SQLITE_LOCKED", "55P03", "40001", "40P01"),
        ("database is locked",),
        BUSY_MESSAGE,
        busy=True,
    ),
    _Fault(
        ("SQLITE_READONLY", "25006"), ("readonly database",), "not saved: the database is read-only"
    ),
    _Fault(("SQLITE_FULL", "53100"), ("database or disk is full",), "not saved: the disk is full"),
    _Fault(("SQLITE_IOERR", "58030"), ("disk I/O error",), "not saved: disk I/O error"),
    _Fault(
        ("SQLITE_CANTOPEN",),
        ("unable to open database file",),
        "not saved: the database file cannot be opened",
    ),
    _Fault(
        ("08",),
        ("connection failed", "server closed the connection"),
        "not saved: the database server cannot be reached",
    ),
)


def storage_fault(exc: DBAPIError) -> SaveFailed | None:
    """The typed error for a database fault (locked, read-only, disk full, I/O, connection);
    None for errors that are bugs or bad input (constraint violations, bad SQL, bad data)."""
    if not isinstance(exc, (OperationalError, InternalError)):
        return None
    orig = exc.orig
    code = getattr(orig, "sqlite_errorname", None) or getattr(orig, "sqlstate", None) or ""
    code = code or getattr(orig, "pgcode", None) or ""  # psycopg2
    message = str(orig)
    for fault in _FAULTS:
        if (code and code.startswith(fault.codes)) or any(f in message for f in fault.fragments):
            return DatabaseBusy(fault.message) if fault.busy else SaveFailed(fault.message)
    if isinstance(exc, OperationalError):  # the database failed, not the request
        return SaveFailed(f"not saved: database error ({message.splitlines()[0][:200]})")
    return None


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
                # make_backend reads backend and model from the settings; only real
                # constructor arguments may go in as overrides (fixed by the web-app helper).
                chosen = self.settings.model_copy(
                    update={"judge_backend": self.judge.backend, "judge_model": self.judge.model}
                )
                adapter = self._active_adapter()
                extra = {"adapter_path": adapter} if adapter else {}
                self._backend = make_backend(chosen, **extra)
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
        # Reads never queue behind a writer (SQLite: no BEGIN IMMEDIATE), so the queue still
        # shows while another process holds the write lock (issue 6).
        with read_session(self.sessions) as s:
            return queries.next_pair(s, annotator, dataset_id=dataset_id)

    def save_label(self, pair_id: int, annotator: str, verdict: str, **details: Any) -> Any:
        """Save a person's decision (upsert + history event) in its own write transaction.
        SaveFailed / DatabaseBusy when the database refuses it (nothing stored)."""
        with self._writing() as s:
            return queries.save_label(s, pair_id, annotator, verdict, **details)

    def undo_last_label(self, annotator: str, dataset_id: int | None = None) -> int | None:
        with self._writing() as s:
            return queries.undo_last_label(s, annotator, dataset_id=dataset_id)

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        """A write transaction whose database faults come out as SaveFailed / DatabaseBusy
        (issue 6): the transaction is rolled back, the connection goes back to the pool."""
        try:
            with self.sessions.begin() as s:
                yield s
        except DBAPIError as exc:
            fault = storage_fault(exc)
            if fault is None:
                raise
            log.warning("%s [%s]", fault, str(exc.orig).splitlines()[0])
            raise fault from exc

    def queue_counts(self, annotator: str, dataset_id: int | None = None) -> Any:
        with read_session(self.sessions) as s:
            return queries.queue_counts(s, annotator, dataset_id=dataset_id)

    def stats(self) -> dict[str, Any]:
        with read_session(self.sessions) as s:
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

    # --- web app additions (issue 4: app.py / webui) -----------------------------------------

    def use_backend(self, backend: Backend, load_seconds: float | None = None) -> None:
        """Judge with an already loaded backend (tests and benchmarks share one model)."""
        with self._backend_lock:
            self._backend = backend
            self.backend_load_seconds = load_seconds or getattr(backend, "load_seconds", None)

    def datasets(self) -> list[queries.DatasetInfo]:
        """Every dataset with its pair, labeled and judged counts."""
        with self.sessions.begin() as s:
            return queries.list_datasets(s)

    def pair(self, pair_id: int) -> queries.PairView:
        with self.sessions.begin() as s:
            return queries.get_pair(s, pair_id)

    def pair_history(self, pair_id: int) -> dict[str, Any]:
        """A pair's judgments (with version names), label events and current labels."""
        with self.sessions.begin() as s:
            return {
                "judgments": queries.pair_judgments(s, pair_id),
                "events": queries.label_history(s, pair_id),
                "labels": [as_dict(v) for v in queries.current_labels(s, pair_id)],
            }

    def latest_judgment_run(self, pair_id: int) -> list[dict[str, Any]]:
        """The rows of the pair's most recent judging run (k samples x orders), first first.

        A run's samples are stored together, so walk back from the newest row while the
        version and protocol match and no (sample, order) repeats.
        """
        with self.sessions.begin() as s:
            rows = queries.pair_judgments(s, pair_id)
        run: list[dict[str, Any]] = []
        seen: set[tuple[int, bool]] = set()
        for row in reversed(rows):
            key = (row["sample_index"], bool(row["swapped"]))
            same_run = not run or (
                (row["judge_version_id"], row["protocol"])
                == (run[0]["judge_version_id"], run[0]["protocol"])
            )
            if not same_run or key in seen:
                break
            seen.add(key)
            run.insert(0, row)
        return sorted(run, key=lambda r: (r["sample_index"], bool(r["swapped"])))

    def judge_info(self) -> dict[str, Any]:
        """The configured judge, whether it is loaded and how long loading took."""
        return {
            "backend": self.judge.backend,
            "model": self.judge.model,
            "loaded": self._backend is not None,
            "load_seconds": self.backend_load_seconds,
            "options": self.judge.options.model_dump(),
        }

    def annotator_progress(self, annotator: str, dataset_id: int | None = None) -> dict[str, int]:
        """Labeled / remaining for one person and how often they agreed with the judge."""
        with self.sessions.begin() as s:
            counts = queries.queue_counts(s, annotator, dataset_id=dataset_id)
            records = queries.labeled_records(s, dataset_id=dataset_id)
        mine = [r for r in records if r["annotator"] == annotator]
        compared = [r for r in mine if r["agreed_with_judge"] is not None]
        return {
            "done": counts.done,
            "remaining": counts.remaining,
            "total": counts.total,
            "compared": len(compared),
            "agreed": sum(1 for r in compared if r["agreed_with_judge"]),
        }

    def agreement(self, dataset_id: int | None = None) -> dict[str, Any]:
        """Judge vs human on labeled pairs: the metrics report by category, judge version and
        annotator, plus inter-annotator agreement and how many labels had no judgment."""
        from judges import metrics

        with self.sessions.begin() as s:
            records = queries.labeled_records(s, dataset_id=dataset_id)
            names = {v["id"]: v["name"] for v in queries.list_judge_versions(s)}
            swapped = {r["pair_id"]: _other_order(s, r) for r in records if r["judgment_id"]}
        judged = [r for r in records if r["judgment_id"] is not None]
        rows = [
            {
                "judge": r["judge_verdict"],
                "human": r["label"],
                "judge_swapped": swapped.get(r["pair_id"]),
                "category": r["category"],
                "judge_version": names.get(r["judge_version_id"], r["judge_version_id"]),
                "annotator": r["annotator"],
            }
            for r in judged
        ]
        report = metrics.agreement_report(rows, group_by=("category", "judge_version", "annotator"))
        people = [
            {"pair_id": r["pair_id"], "annotator": r["annotator"], "verdict": r["label"]}
            for r in records
        ]
        report["inter_annotator"] = metrics.inter_annotator_table(people)
        report["labels"] = len(records)
        report["unjudged_labels"] = len(records) - len(judged)
        return report


def _other_order(s: Session, record: dict[str, Any]) -> str | None:
    """The verdict the same judge run gave with the responses in the other order, if any."""
    rows = queries.pair_judgments(s, record["pair_id"])
    target = next((r for r in rows if r["id"] == record["judgment_id"]), None)
    if target is None:
        return None
    matches = [
        r["verdict"]
        for r in rows
        if r["judge_version_id"] == target["judge_version_id"]
        and r["protocol"] == target["protocol"]
        and r["sample_index"] == target["sample_index"]
        and bool(r["swapped"]) != bool(target["swapped"])
    ]
    return matches[-1] if matches else None


def as_dict(value: Any) -> Any:
    """Dataclass values as plain dicts (for JSON output and UI tables)."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
