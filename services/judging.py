"""The judge room: the one loaded judge (load, switch, reload), its read-ahead, live judging of
stored pairs, and the judgments it stores and hands back (batch judging jobs are in
services.judging_jobs)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from judges.backends import make_backend
from judges.backends.base import Backend
from judges.judge import JudgeOptions, StreamUpdate, stream_judgment, warm_judgment
from judges.prompts import Cut
from judges.protocols import prompt_cuts
from judges.types import AggregateJudgment
from services.prompts import judge_protocol, resolve_template
from services.records import judgment_row, pair_input
from settings import Settings
from storage import judgment_runs, prompt_versions, queries
from storage.db import reading, writing

log = logging.getLogger(__name__)

MAX_WARM_WAITING = 2  # read-aheads queued at once; more are dropped, not queued
EMBEDDED_NAME = "SmolLM2-135M-Instruct (embedded)"


@dataclass
class JudgeSettings:
    """The judge a person chose in the Judge tab or on the command line."""

    backend: str
    model: str | None
    options: JudgeOptions = field(default_factory=JudgeOptions)


class Judging:
    """One per process: the loaded judge shared by every user's requests."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self.judge = JudgeSettings(
            backend=settings.judge_backend,
            model=settings.judge_model,
            options=JudgeOptions(
                protocol=settings.judge_protocol,
                temperature=settings.temperature,
                repetition_penalty=settings.repetition_penalty,
                max_new_tokens=settings.max_new_tokens,
            ),
        )
        self._backend: Backend | None = None
        self._backend_lock = threading.Lock()
        self._warmer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grm-warm")
        self._warm_lock = threading.Lock()
        self._warm_waiting = 0
        self.backend_load_seconds: float | None = None

    # --- the loaded judge ----------------------------------------------------------------------

    def backend(self) -> Backend:
        """The loaded judge, loading it on first use (one load shared by every caller)."""
        with self._backend_lock:
            if self._backend is None:
                started = time.perf_counter()
                adapter = self._active_adapter()
                self._backend = self.make_backend(adapter)
                self.backend_load_seconds = time.perf_counter() - started
                log.info("judge loaded in %.1f s", self.backend_load_seconds)
            return self._backend

    def make_backend(self, adapter_path: str | None = None) -> Backend:
        """A new backend of the configured judge (with an adapter when given), not shared."""
        # make_backend reads backend and model from the settings; only real constructor
        # arguments may go in as overrides.
        chosen = self.settings.model_copy(
            update={"judge_backend": self.judge.backend, "judge_model": self.judge.model}
        )
        return make_backend(chosen, **({"adapter_path": adapter_path} if adapter_path else {}))

    def configure(self, backend: str, model: str | None, options: JudgeOptions) -> None:
        """Switch judge settings; a new backend or model is loaded on the next use."""
        with self._backend_lock:
            if (backend, model) != (self.judge.backend, self.judge.model) and self._backend:
                self._backend.close()
                self._backend = None
            self.judge = JudgeSettings(backend=backend, model=model, options=options)

    def reload(self) -> None:
        """Forget the loaded judge (e.g. after activating another version)."""
        with self._backend_lock:
            if self._backend is not None:
                self._backend.close()
            self._backend = None

    def use_backend(self, backend: Backend, load_seconds: float | None = None) -> None:
        """Judge with an already loaded backend (tests and benchmarks share one model; the
        backend it replaces is left open for its owner)."""
        with self._backend_lock:
            self._backend = backend
            self.backend_load_seconds = load_seconds or getattr(backend, "load_seconds", None)

    def replace_backend(self, backend: Backend) -> None:
        """Judge with `backend` from now on and close the one it replaces."""
        with self._backend_lock:
            if self._backend is not None and self._backend is not backend:
                self._backend.close()
            self._backend = backend
            self.backend_load_seconds = getattr(backend, "load_seconds", None)

    def info(self) -> dict[str, Any]:
        """The configured judge, whether it is loaded and how long loading took."""
        return {
            "backend": self.judge.backend,
            "model": self.judge.model,
            "loaded": self._backend is not None,
            "load_seconds": self.backend_load_seconds,
            "options": self.judge.options.model_dump(),
        }

    def version_id(self) -> int:
        """The active judge version, registering the configured base judge on first use."""
        with reading(self.sessions) as s:
            active = queries.active_judge_version(s)
        if active is not None:
            return active["id"]
        with writing(self.sessions) as s:
            active = queries.active_judge_version(s)  # another process may have been first
            if active is not None:
                return active["id"]
            model = self.judge.model or EMBEDDED_NAME
            version_id = queries.ensure_judge_version(
                s, name=f"base:{model}", base_model=model, backend=self.judge.backend
            )
            queries.set_active_version(s, version_id)
            return version_id

    def _active_adapter(self) -> str | None:
        with reading(self.sessions) as s:
            active = queries.active_judge_version(s)
        return active.get("adapter_path") if active else None

    # --- judging -------------------------------------------------------------------------------

    def stream(self, pair_id: int, options: JudgeOptions | None = None) -> Iterator[StreamUpdate]:
        """Stream one pair's judgment live; store every finished sample when it ends."""
        version_id = self.version_id()
        options = options or self.judge.options
        with reading(self.sessions) as s:
            view = queries.get_pair(s, pair_id)
            protocol = judge_protocol(s, options, view.dataset_id)
        final: AggregateJudgment | None = None
        for update in stream_judgment(
            self.backend(), pair_input(view), options, str(version_id), protocol
        ):
            if update.aggregate is not None:
                final = update.aggregate
            yield update
        if final is not None:
            self.store([final], version_id, options)

    def warm(self, pair: queries.PairView) -> Future | None:
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
        return self._warmer.submit(self._warm, backend, pair, options)

    def _warm(self, backend: Backend, pair: queries.PairView, options: JudgeOptions) -> None:
        try:
            with reading(self.sessions) as s:
                protocol = judge_protocol(s, options, pair.dataset_id)
            warm_judgment(backend, pair_input(pair), options, protocol)
        except Exception:  # a read-ahead that fails costs only its speed-up
            log.warning("reading pair %s ahead for the judge failed", pair.id, exc_info=True)
        finally:
            with self._warm_lock:
                self._warm_waiting -= 1

    def store(
        self, results: list[AggregateJudgment], version_id: int, options: JudgeOptions
    ) -> int:
        """Each result (judged with `options`) as a judgment run with its samples, all in one
        write; how many sample rows were stored."""
        with writing(self.sessions) as s:
            return store_runs(s, results, version_id, options)

    # --- what was judged -----------------------------------------------------------------------

    def latest_run_record(self, pair_id: int) -> dict[str, Any]:
        """The pair's most recent judging run as {"run": its stored row (the decision), or None
        for a judgment stored without a run; "samples": its judgment rows, first first}."""
        with reading(self.sessions) as s:
            found = judgment_runs.latest_run(s, pair_id)
        return found or {"run": None, "samples": []}

    def latest_run(self, pair_id: int) -> list[dict[str, Any]]:
        """The rows of the pair's most recent judging run (k samples x orders), first first."""
        return self.latest_run_record(pair_id)["samples"]

    def prompt_cuts(self, pair: queries.PairView, run: list[dict[str, Any]]) -> list[Cut] | None:
        """What the judge of `run` (latest_run's rows) did not see of `pair`: the cuts its
        prompt made, from the function that made them (its prompt version's template, the
        dataset's guidelines), checked against the stored prompt ([] when nothing was cut;
        None when it cannot be told)."""
        if not run:
            return []
        shown = next((r for r in run if not r["swapped"] and r.get("prompt_messages")), run[0])
        sent = None if shown["swapped"] else shown.get("prompt_messages")
        try:
            with reading(self.sessions) as s:
                template = resolve_template(s, shown["prompt_version"])
                guidelines = prompt_versions.dataset_guidelines(s, pair.dataset_id) or ""
        except (queries.NotFoundError, ValueError):
            return None
        return prompt_cuts(pair_input(pair), shown["protocol"], template, sent, guidelines)


def store_runs(
    s: Session,
    results: list[AggregateJudgment],
    version_id: int,
    options: JudgeOptions,
    judging_job_id: int | None = None,
) -> int:
    """Each result, judged with `options`, as a judgment run with its samples in the caller's
    transaction (a batch judging job's, with the job's progress); how many sample rows were
    stored. The one place a run is written."""
    stored = 0
    for result in results:
        if not result.samples:
            continue  # nothing was judged: no run to record
        samples = [judgment_row(j, version_id, result.aggregation) for j in result.samples]
        run = {
            **judgment_run_row(result, version_id),
            **options.sampling(),
            "judging_job_id": judging_job_id,
        }
        judgment_runs.add_judgment_run(s, run, samples)
        stored += len(samples)
    return stored


def judgment_run_row(result: AggregateJudgment, version_id: int | None) -> dict[str, Any]:
    """A judge's AggregateJudgment as the column values of storage's judgment_run table."""
    first = result.samples[0]
    scores = result.scores or (None, None)
    return {
        "pair_id": result.pair_id if result.pair_id is not None else first.pair_id,
        "judge_version_id": version_id,
        "protocol": first.protocol,
        "prompt_version": first.prompt_version,
        "k": len({j.sample_index for j in result.samples}),
        "swap": any(j.swapped for j in result.samples),
        "aggregation": result.aggregation,
        "verdict": result.verdict.value,
        "votes": dict(result.votes),
        "verdict_probability": result.verdict_probability,
        "margin": result.margin,
        "position_consistent": result.position_consistent,
        "score_a": scores[0],
        "score_b": scores[1],
    }
