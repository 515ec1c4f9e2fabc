"""The workflows both front doors (web app and CLI) share, written once.

Judge pending pairs and store the judgments, stream one judgment, save a label, import, export,
start a training run. Holds the session factory and the one loaded judge backend; hands out plain
values, never ORM objects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError, InternalError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from judges.backends import make_backend
from judges.backends.base import Backend
from judges.judge import (
    JudgeOptions,
    StreamUpdate,
    judge_pairs,
    stream_judgment,
    warm_judgment,
)
from judges.prompts import Cut
from judges.protocols import prompt_cuts
from judges.types import AggregateJudgment, ChatTurn, Judgment, PairInput
from settings import Settings, load_settings
from storage import queries
from storage.db import init_db, make_engine, make_session_factory, read_session
from vocabulary import UNFINISHED_RUN_STATUSES, RunStatus

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


def judgment_row(
    judgment: Judgment, judge_version_id: int | None, aggregation: str | None = None
) -> dict[str, Any]:
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
        "prompt_messages": judgment.prompt_messages,
        "aggregation": aggregation,
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


class VersionRefused(ValueError):
    """A judge version that cannot be activated (its adapter cannot be loaded); str() says
    why, and the active version has not changed."""


MAX_WARM_WAITING = 2  # read-aheads queued at once; more are dropped, not queued
ADAPTER_BACKENDS = ("transformers", "vllm")  # the backends that load LoRA adapters


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
        self._warmer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grm-warm")
        self._warm_lock = threading.Lock()
        self._warm_waiting = 0
        self.backend_load_seconds: float | None = None
        self._workers: dict[int, subprocess.Popen] = {}  # training workers this process started

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

    def warm_pair(self, pair: queries.PairView) -> Future | None:
        """Let the loaded judge read this pair's prompt in the background, so a click on Judge
        shows its first words sooner. Never loads a model, never raises, never blocks the
        caller; skipped while earlier read-aheads still wait (they are only a speed-up)."""
        backend, options = self._backend, self.judge.options
        with self._warm_lock:
            if backend is None or self._warm_waiting >= MAX_WARM_WAITING:
                return None
            self._warm_waiting += 1
        # One worker: read-aheads never compete with each other for the CPU. An executor,
        # not a bare thread, because Python joins it at exit (a torch op still running in a
        # daemon thread at interpreter exit aborts the process).
        return self._warmer.submit(self._warm, backend, pair_input(pair), options)

    def _warm(self, backend: Backend, pair: PairInput, options: JudgeOptions) -> None:
        try:
            warm_judgment(backend, pair, options)
        except Exception:  # a read-ahead that fails costs only its speed-up
            log.warning("reading pair %s ahead for the judge failed", pair.pair_id, exc_info=True)
        finally:
            with self._warm_lock:
                self._warm_waiting -= 1

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
        rows = [judgment_row(j, version_id, r.aggregation) for r in results for j in r.samples]
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

    def prompt_cuts(self, pair: queries.PairView, run: list[dict[str, Any]]) -> list[Cut] | None:
        """What the judge of `run` (latest_judgment_run's rows) did not see of `pair`: the cuts
        its prompt made, from the function that made them, checked against the stored prompt
        ([] when nothing was cut; None when it cannot be told)."""
        if not run:
            return []
        shown = next((r for r in run if not r["swapped"] and r.get("prompt_messages")), run[0])
        sent = None if shown["swapped"] else shown.get("prompt_messages")
        return prompt_cuts(pair_input(pair), shown["protocol"], shown["prompt_version"], sent)

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

    # --- retraining (issue 5): start, watch, cancel a run; activate / roll back versions -------

    def start_training_run(self, config: Any, judge_options: JudgeOptions | None = None) -> int:
        """Snapshot the labels, record the run and start its worker process; the run's id.

        Raises judges.train.TrainingRefused (nothing stored) for a bad config, too few labels,
        one class, a judge that is not a local model, or a run already going.
        """
        from judges.train import TrainingRefused, check_labels, prepare_split
        from judges.training_data import parse_records

        config.validate()
        options = _training_options(judge_options or self.judge.options, config.protocol)
        base_model = self._local_base_model()
        version_id = self.judge_version_id()
        with self._writing() as s:
            self._refuse_if_running(s)
            active = queries.active_judge_version(s) or {}
            records = training_records(s, version_id, config.protocol)
            pairs = check_labels(parse_records(records), config.min_labels)
            prepare_split(pairs, config)
            run_id = queries.create_training_run(s, config.method, {}, version_id)
            snapshot = json.dumps(records, default=str)
            run_dir = self.runs_dir() / str(run_id)
            if run_dir.exists():
                raise TrainingRefused(f"run directory {run_dir} already exists")
            job = {
                "records_path": str(run_dir / "records.json"),
                "base_model_path": str(base_model),
                "parent_adapter_path": active.get("adapter_path"),
                "base_model_name": active.get("base_model") or str(base_model),
                "judge_options": options.model_dump(),
            }
            config = dataclasses.replace(config, output_dir=str(run_dir / "adapter"))
            queries.update_training_run(
                s,
                run_id,
                config={**dataclasses.asdict(config), "job": job},
                label_snapshot=snapshot_record(records, snapshot),
                log_path=str(run_dir / "train.log"),
            )
            run_dir.mkdir(parents=True)
            (run_dir / "records.json").write_text(snapshot)
        self._spawn_worker(run_id, run_dir)
        return run_id

    def runs_dir(self) -> Path:
        """Where each run keeps its records snapshot, log and adapter (GRM_HOME/runs/<id>)."""
        return self.settings.home.resolve() / "runs"

    def _local_base_model(self) -> Path:
        from judges.embedded import resolve_model_path
        from judges.train import TrainingRefused

        chosen = self.settings.model_copy(update={"judge_model": self.judge.model})
        path = Path(str(resolve_model_path(chosen)))
        if self.judge.backend != "transformers" or not path.is_dir():
            raise TrainingRefused(
                f"retraining needs a local model directory on the transformers backend; the "
                f"judge is {self.judge.backend} / {self.judge.model or 'embedded'}"
            )
        return path

    def _refuse_if_running(self, s: Session) -> None:
        from judges.train import TrainingRefused

        running = queries.running_training_run(s)
        if running is not None and self._run_alive(running):
            raise TrainingRefused(
                f"training run {running['id']} is already {running['status']}; "
                "wait for it or cancel it first"
            )
        if running is not None:
            _mark_ended(s, running["id"])

    def _spawn_worker(self, run_id: int, run_dir: Path) -> None:
        env = {
            **os.environ,
            "GRM_HOME": str(self.settings.home.resolve()),
            "GRM_DATABASE_URL": self.settings.db_url,
            "GRM_MODEL_CACHE": str(Path(self.settings.model_cache).resolve()),
            "GRM_JUDGE_BACKEND": "transformers",
        }
        try:
            with (run_dir / "train.log").open("ab") as log_file:
                process = subprocess.Popen(
                    [sys.executable, "-m", "cli", "train-worker", str(run_id)],
                    cwd=Path(__file__).resolve().parent,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C in the app does not kill the run
                )
        except OSError as exc:
            with self._writing() as s:
                _finish(s, run_id, RunStatus.FAILED, error=f"the worker could not start: {exc}")
            raise
        self._workers[process.pid] = process
        with self._writing() as s:
            queries.update_training_run(
                s, run_id, pid=process.pid, only_if_status=(RunStatus.QUEUED,)
            )

    def _run_alive(self, run: dict[str, Any]) -> bool:
        if run["pid"] is None:  # between the row and the spawn; a crash there must not block
            age = time.time() - run["created_at"].timestamp()
            return age < QUEUED_GRACE_S
        process = self._workers.get(run["pid"])
        if process is not None:
            return process.poll() is None
        return pid_alive(run["pid"])

    def training_run(self, run_id: int) -> dict[str, Any]:
        """One run as a dict; a run whose process died shows (and is stored) as failed."""
        with read_session(self.sessions) as s:
            run = queries.get_training_run(s, run_id)
        if run["status"] in UNFINISHED_RUN_STATUSES and not self._run_alive(run):
            with self._writing() as s:  # conditional: a run that just finished stays finished
                _mark_ended(s, run_id)
                run = queries.get_training_run(s, run_id)
        return run

    def training_runs(self, limit: int | None = 50) -> list[dict[str, Any]]:
        """Runs, newest first, dead ones shown as failed."""
        with read_session(self.sessions) as s:
            runs = queries.list_training_runs(s, limit=limit)
        return [
            self.training_run(r["id"]) if r["status"] in UNFINISHED_RUN_STATUSES else r
            for r in runs
        ]

    def cancel_training_run(self, run_id: int) -> dict[str, Any]:
        """Stop a queued or running run (SIGTERM its worker) and mark it cancelled."""
        run = self.training_run(run_id)
        if run["status"] not in UNFINISHED_RUN_STATUSES:
            raise ValueError(f"training run {run_id} is {run['status']}, not running")
        with self._writing() as s:
            _finish(s, run_id, RunStatus.CANCELLED, error="cancelled by the user")
        if run["pid"] is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(run["pid"], signal.SIGTERM)
            process = self._workers.pop(run["pid"], None)
            if process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
        return self.training_run(run_id)

    def versions(self) -> list[dict[str, Any]]:
        """Every judge version, oldest first (id, name, parent, run, active, figures)."""
        with read_session(self.sessions) as s:
            return queries.list_judge_versions(s)

    def activate_version(self, version_id: int) -> dict[str, Any]:
        """Make a version the active judge (and the loaded one).

        A version with an adapter is checked and, on the transformers backend, loaded before
        anything changes: an adapter that is missing, corrupt, truncated, a pickle, or made for
        another base model raises VersionRefused with the reason, and the active version stays
        active and keeps judging (issue 6). The candidate loads beside the current judge, so
        judgments in progress are not interrupted while it loads.
        """
        with read_session(self.sessions) as s:
            version = _version(s, version_id)
            previous = queries.active_judge_version(s)
        loaded = None
        if version["adapter_path"] and not version["is_active"]:
            loaded = self._load_candidate(version, previous)
        with self._writing() as s:
            queries.set_active_version(s, version_id)
            active = queries.active_judge_version(s)
        if loaded is None:
            self.reload_judge()
        else:
            self._replace_backend(loaded)
        return active or {}

    def _load_candidate(
        self, version: dict[str, Any], previous: dict[str, Any] | None
    ) -> Backend | None:
        """The version's judge, loaded and checked (None: checked, loaded on first use);
        VersionRefused when it cannot be."""
        from judges.backends.adapters import check_adapter_files

        try:
            if self.judge.backend not in ADAPTER_BACKENDS:
                raise ValueError(
                    f"the {self.judge.backend} backend cannot load a LoRA adapter; choose "
                    f"{' or '.join(sorted(ADAPTER_BACKENDS))} in the Judge tab first"
                )
            check_adapter_files(Path(version["adapter_path"]))  # no model needed, never unpickles
            if self.judge.backend != "transformers":
                return None  # a GPU engine is not loaded twice; it checks shapes when it loads
            backend, _ = self._version_backend(version)
            return backend
        except Exception as exc:  # any reason to refuse is said to the person, nothing changes
            log.warning("judge version %s not activated: %s", version["id"], exc)
            stays = f"{previous['name']} stays active" if previous else "nothing changed"
            raise VersionRefused(
                f"judge version {version['id']} ({version['name']}) not activated: {exc}; {stays}"
            ) from exc

    def _replace_backend(self, backend: Backend) -> None:
        with self._backend_lock:
            if self._backend is not None and self._backend is not backend:
                self._backend.close()
            self._backend = backend
            self.backend_load_seconds = getattr(backend, "load_seconds", None)

    def rollback_version(self) -> dict[str, Any]:
        """Activate the active version's parent (the judge it was trained from)."""
        with read_session(self.sessions) as s:
            active = queries.active_judge_version(s)
        if active is None or active["parent_id"] is None:
            name = active["name"] if active else "none"
            raise ValueError(f"the active judge version ({name}) has no parent to roll back to")
        return self.activate_version(active["parent_id"])

    def evaluate_version(
        self,
        version_id: int | None = None,
        dataset: str | None = None,
        options: JudgeOptions | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """A version's figures against the human labels (of one dataset, or all)."""
        from judges.evaluation import evaluate_judge
        from judges.training_data import parse_records

        options = options or self.judge.options
        version_id = version_id or self.judge_version_id()
        with read_session(self.sessions) as s:
            version = _version(s, version_id)
            dataset_id = queries.dataset_id(s, dataset) if dataset else None
            records = training_records(s, None, options.protocol, dataset_id=dataset_id)
        pairs = [p for p in parse_records(records) if p.trainable][:limit]
        if not pairs:
            raise ValueError(
                f"no A/B/tie labels to evaluate against{' in ' + dataset if dataset else ''}"
            )
        backend, owned = self._version_backend(version)
        try:
            report = evaluate_judge(
                backend,
                [p.pair for p in pairs],
                [p.label for p in pairs],
                options,
                categories=[p.category for p in pairs],
            )
        finally:
            if owned:
                backend.close()
        report["version"] = version["name"]
        return report

    def _version_backend(self, version: dict[str, Any]) -> tuple[Backend, bool]:
        if version["is_active"]:
            return self.backend(), False
        chosen = self.settings.model_copy(
            update={"judge_backend": self.judge.backend, "judge_model": self.judge.model}
        )
        extra = {"adapter_path": version["adapter_path"]} if version["adapter_path"] else {}
        return make_backend(chosen, **extra), True


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


# --- retraining (issue 5): module-level helpers and the worker process ----------------------

QUEUED_GRACE_S = 60.0
PROGRESS_EVERY_S = 1.0
ENDED_MESSAGE = "process ended without finishing"


def _training_options(options: JudgeOptions, protocol: str) -> JudgeOptions:
    """The judge options both evaluations use, with the protocol being trained."""
    return (
        options
        if options.protocol == protocol
        else options.model_copy(update={"protocol": protocol})
    )


def _version(s: Session, version_id: int) -> dict[str, Any]:
    versions = queries.list_judge_versions(s)
    chosen = [v for v in versions if v["id"] == version_id]
    if not chosen:
        raise queries.NotFoundError(f"judge version {version_id} not found")
    return chosen[0]


def training_records(
    s: Session, version_id: int | None, protocol: str, dataset_id: int | None = None
) -> list[dict[str, Any]]:
    """One record per labeled pair (its latest label) with the version's judgments of it, in the
    shape judges.training_data.parse_records reads."""
    latest: dict[int, dict[str, Any]] = {}
    for record in queries.labeled_records(s, dataset_id=dataset_id):
        latest[record["pair_id"]] = record  # ordered by label id: the newest label wins
    judgments = queries.version_judgments(s, list(latest), version_id) if version_id else {}
    return [_training_record(r, judgments.get(r["pair_id"], []), protocol) for r in latest.values()]


def snapshot_record(records: list[dict[str, Any]], snapshot: str) -> dict[str, Any]:
    """What a run records of the labels it trains on: each label id with the verdict it had
    (a label changed later keeps its id), and a hash of the exact records file it was given.

    The records come from one SELECT (one consistent view of the labels on SQLite and on
    PostgreSQL alike), and the worker reads only that file, so labels changed while the run
    goes on do not leak into it."""
    return {
        "pairs": len(records),
        "label_ids": [r["label_id"] for r in records],
        "labels": {str(r["label_id"]): r["label"] for r in records},
        "records_sha256": hashlib.sha256(snapshot.encode()).hexdigest(),
    }


def _training_record(
    record: dict[str, Any], judgments: list[dict[str, Any]], protocol: str
) -> dict[str, Any]:
    prompt = record["prompt"]
    out = {
        "pair_id": record["pair_id"],
        "label_id": record["label_id"],
        "label": record["label"],
        "response_a": record["response_a"],
        "response_b": record["response_b"],
        "reference": record["reference"],
        "category": record["category"],
        "corrected_critique": record["corrected_critique"],
        "judgments": [
            {k: j[k] for k in ("id", "verdict", "raw_text", "swapped", "protocol", "status")}
            for j in judgments
            if j["protocol"] == protocol
        ],
    }
    out["prompt_turns" if isinstance(prompt, list) else "prompt"] = prompt
    return out


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid is running (not a zombie) on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _finish(s: Session, run_id: int, status: str, **values: Any) -> bool:
    return queries.update_training_run(
        s,
        run_id,
        only_if_status=UNFINISHED_RUN_STATUSES,
        status=status,
        finished_at=datetime.now(timezone.utc),
        **values,
    )


def _mark_ended(s: Session, run_id: int) -> None:
    _finish(s, run_id, RunStatus.FAILED, error=ENDED_MESSAGE)


class _ProgressWriter:
    """The worker's on_progress: the latest update plus the loss curve, written to the run's
    row at most once a second (and at every phase change)."""

    def __init__(self, services: Services, run_id: int) -> None:
        self.services = services
        self.run_id = run_id
        self.state: dict[str, Any] = {"phase": "starting", "losses": []}
        self.written_at = 0.0

    def __call__(self, update: dict[str, Any]) -> None:
        phase_changed = update.get("phase") != self.state.get("phase")
        if update.get("loss") is not None:
            self.state["losses"].append({"step": update["step"], "loss": update["loss"]})
        self.state.update({k: v for k, v in update.items() if k != "losses"})
        if phase_changed or time.monotonic() - self.written_at >= PROGRESS_EVERY_S:
            self.flush()

    def flush(self) -> None:
        try:
            with self.services._writing() as s:
                queries.update_training_run(
                    s, self.run_id, progress=dict(self.state), only_if_status=(RunStatus.RUNNING,)
                )
            self.written_at = time.monotonic()
        except SaveFailed as exc:  # progress is best effort; the run goes on
            log.warning("progress of run %d not saved: %s", self.run_id, exc)


def run_training_worker(run_id: int, services: Services | None = None) -> int:
    """The worker process's job (`grm train-worker RUN_ID`): train, evaluate, register the new
    version (not active) and mark the run done; failures and refusals mark it failed."""
    from judges.train import TrainConfig, TrainingRefused, run_job

    services = services or Services.open(load_settings())
    with services._writing() as s:
        run = queries.get_training_run(s, run_id)
        started = queries.update_training_run(
            s,
            run_id,
            status=RunStatus.RUNNING,
            pid=os.getpid(),
            only_if_status=UNFINISHED_RUN_STATUSES,
        )
    if not started:
        log.warning("training run %d is %s; not starting", run_id, run["status"])
        return 1
    job = run["config"]["job"]
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in run["config"].items() if k in names})
    progress = _ProgressWriter(services, run_id)
    try:
        records = json.loads(Path(job["records_path"]).read_text())
        result = run_job(
            config,
            records,
            job["base_model_path"],
            _backend_maker(services.settings, job["base_model_path"]),
            JudgeOptions(**job["judge_options"]),
            progress,
            parent_adapter_path=job["parent_adapter_path"],
        )
    except TrainingRefused as exc:
        return _fail(services, run_id, f"refused: {exc}", 2)
    except Exception as exc:  # any crash: the run says why, nothing is registered
        log.exception("training run %d failed", run_id)
        return _fail(services, run_id, f"{type(exc).__name__}: {exc}", 1)
    progress.state.update(phase="done", result=_result_summary(result))
    progress.flush()
    return _register(services, run, job, result)


def _backend_maker(settings: Settings, base_model_path: str) -> Callable[[Path | None], Backend]:
    local = settings.model_copy(update={"judge_backend": "transformers"})

    def make(adapter_path: Path | None) -> Backend:
        extra = {"adapter_path": adapter_path} if adapter_path else {}
        return make_backend(local, model_path=base_model_path, **extra)

    return make


def _fail(services: Services, run_id: int, reason: str, code: int) -> int:
    with services._writing() as s:
        _finish(s, run_id, RunStatus.FAILED, error=reason)
    return code


def _result_summary(result: Any) -> dict[str, Any]:
    record = result.as_record()
    for key in ("metrics_before", "metrics_after", "log_history", "label_snapshot"):
        record.pop(key, None)
    return record


class _RunEnded(Exception):
    """The run was cancelled (or marked failed) while it finished: register nothing."""


def _register(services: Services, run: dict[str, Any], job: dict[str, Any], result: Any) -> int:
    """Record the figures, register the new version and mark the run done, all or nothing."""
    figures = {k: v for k, v in (result.metrics_after or {}).items() if k != "per_pair"}
    try:
        with services._writing() as s:
            if not _finish(
                s,
                run["id"],
                RunStatus.DONE,
                metrics_before=result.metrics_before,
                metrics_after=result.metrics_after,
                label_snapshot={**(run["label_snapshot"] or {}), **result.label_snapshot},
            ):
                raise _RunEnded
            queries.ensure_judge_version(
                s,
                name=f"run{run['id']}-{result.method}",
                base_model=job["base_model_name"],
                backend="transformers",
                adapter_path=str(Path(result.adapter_path).resolve()),
                parent_id=run["base_version_id"],
                training_run_id=run["id"],
                metrics={**figures, "training": _result_summary(result)},
            )
    except _RunEnded:
        log.warning("training run %d ended before it finished; nothing registered", run["id"])
        return 1
    return 0


METRIC_FIGURES = [
    ("accuracy", "accuracy"),
    ("accuracy 95% CI", "ci"),
    ("Cohen's kappa", "kappa"),
    ("position consistency", "position_consistency"),
    ("no-verdict rate", "no_verdict_rate"),
    ("pairs scored", "n"),
]


def metric_value(metrics: dict[str, Any] | None, key: str) -> str:
    """One figure of an evaluation report, formatted for a table ("-" when absent)."""
    metrics = metrics or {}
    if key == "ci":
        low, high = metrics.get("ci_low"), metrics.get("ci_high")
        return "-" if low is None or high is None else f"[{low:.3f}, {high:.3f}]"
    value = metrics.get(key)
    if isinstance(value, dict):  # position consistency
        value = value.get("rate")
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)


def metric_rows(
    *reports: dict[str, Any] | None, names: tuple[str, ...] = ("before", "after")
) -> list[dict[str, str]]:
    """Evaluation reports side by side: one row per figure, one column per report."""
    return [
        {"figure": title, **{n: metric_value(r, key) for n, r in zip(names, reports, strict=True)}}
        for title, key in METRIC_FIGURES
    ]
