"""The batch judging room: judging the pending pairs of a dataset (or of every dataset) as a
recorded job (storage's judging_job) that stores each batch as soon as it is judged, can be
cancelled from any process, and is continued where it stopped by the next process that starts.

A batch's judgment runs and the job's `done` are written in one transaction, so a killed
process loses at most the batch in flight and a continued job never judges a pair twice: the
pairs it has left are those its judge version has not judged with its protocol, and that it
stored no run for itself (storage.judging_jobs.job_pending_pairs).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from judges.backends.base import Backend
from judges.judge import JudgeOptions, judge_pairs, stored_as_ran
from judges.protocols import Protocol
from judges.types import AggregateJudgment, Verdict
from services.judging import Judging, store_runs
from services.prompts import judge_protocol
from services.records import pair_input
from services.training_runs import pid_alive
from storage import queries
from storage.db import reading, writing
from storage.faults import DatabaseBusy, SaveFailed
from storage.judging_jobs import heartbeat_age_seconds
from vocabulary import UNFINISHED_RUN_STATUSES, RunStatus

log = logging.getLogger(__name__)

# A job's owner on another machine cannot be asked whether it is alive: it is taken for gone
# when it has not written a heartbeat for this long. Generous, because one batch of a local
# judge on a busy CPU takes minutes and the heartbeat is written between generation batches.
STALE_AFTER_S = 600.0
HEARTBEAT_EVERY_S = 60.0
STATUS_EVERY_S = 2.0  # how often a running job reads its row (cancelled elsewhere? taken over?)

Progress = Callable[[int, int], None]


class JobRefused(RuntimeError):
    """A job that cannot be run now: another live process runs it, or it cannot be continued."""


@dataclass
class JudgeRunReport:
    """What one batch judging call did (this call's pairs), and where its job stands."""

    judged: int
    stored_judgments: int
    no_verdict: int
    seconds: float
    cancelled: bool = False
    job_id: int | None = None
    resumed: bool = False  # an unfinished job was continued
    done: int = 0  # the job's pairs done, over all the processes that ran it
    total: int = 0


def process_owner() -> str:
    """This run's owner name: host and pid (to tell whether it is alive), and a token that
    makes two runs in one process different owners."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_gone(owner: str | None, heartbeat_age: float | None) -> bool:
    """Whether the process named `owner` no longer runs its job: none, a pid on this machine
    that is not alive, or a heartbeat older than STALE_AFTER_S."""
    if owner is None:
        return True
    if heartbeat_age is None or heartbeat_age > STALE_AFTER_S:
        return True
    host, pid, _token = owner.rsplit(":", 2)
    return host == socket.gethostname() and not pid_alive(int(pid))


def job_view(job: dict[str, Any]) -> dict[str, Any]:
    """A job's row with what a person wants to read: pairs per minute, seconds left, and
    whether a live process runs it (`stalled`: unfinished, but its process is gone)."""
    rate = job["done"] / job["busy_seconds"] if job["busy_seconds"] > 0 else None
    left = max(0, job["total"] - job["done"])
    unfinished = job["status"] in UNFINISHED_RUN_STATUSES
    gone = owner_gone(job["owner"], heartbeat_age_seconds(job))
    return {
        **job,
        "pairs_per_min": rate * 60 if rate else None,
        "seconds_left": left / rate if rate else None,
        "stalled": unfinished and gone,
    }


class JudgingJobs:
    """Starting, continuing, watching and cancelling batch judging jobs."""

    def __init__(self, sessions: sessionmaker[Session], judging: Judging) -> None:
        self.sessions = sessions
        self.judging = judging
        self._closing = threading.Event()  # set: running jobs stop and stay continuable
        self._resumer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grm-jobs")

    # --- starting and continuing ----------------------------------------------------------------

    def judge_pending(
        self,
        dataset: str | None = None,
        options: JudgeOptions | None = None,
        limit: int | None = None,
        on_progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> JudgeRunReport:
        """Judge the pairs the active version has not judged with this protocol, in batches,
        as a job. An unfinished job of the same dataset, judge version and options whose
        process is gone is continued instead (its own scope: `limit` is not asked again); one
        that a live process runs is refused (JobRefused)."""
        options = options or self.judging.judge.options
        version_id = self.judging.version_id()
        wanted = options.model_dump(mode="json")
        owner = process_owner()
        with reading(self.sessions) as s:
            dataset_id = queries.dataset_id(s, dataset) if dataset else None
        # Looked for and made under one lock, so that two processes starting the same
        # judging at once make one job, which the second then continues or is refused. The
        # pending pairs are read under it too: read before, a job that finished meanwhile
        # would leave them stale, and a second job would count pairs already judged.
        with writing(self.sessions) as s:
            queries.lock_job_starts(s, version_id)
            pending = queries.pending_pairs(
                s, version_id, options.protocol, dataset_id=dataset_id, limit=limit
            )
            same = (dataset_id, version_id, wanted)
            found = [
                job
                for job in queries.unfinished_judging_jobs(s)
                if (job["dataset_id"], job["judge_version_id"], stored_as_ran(job["options"]))
                == same
            ]
            if not found:
                job_id = queries.create_judging_job(
                    s,
                    dataset_id=dataset_id,
                    judge_version_id=version_id,
                    options=wanted,
                    total=len(pending),
                    last_pair_id=pending[-1].id if pending else None,
                    owner=owner,
                )
        if found:
            return self._continue(found[0], on_progress, should_stop)
        return self._run(job_id, owner, False, on_progress, should_stop)

    def resume(
        self,
        job_id: int,
        on_progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> JudgeRunReport:
        """Continue an unfinished job whose process is gone. JobRefused when a live process
        runs it, when it has ended, or when its judge version is no longer the active one (it
        is then failed, with that reason: judging on with another judge would mix two)."""
        with reading(self.sessions) as s:
            job = queries.get_judging_job(s, job_id)
        if job["status"] not in UNFINISHED_RUN_STATUSES:
            raise JobRefused(f"judging job {job_id} has ended ({job['status']})")
        active = self.judging.version_id()
        if job["judge_version_id"] != active:
            reason = (
                f"judge version {job['judge_version_id']} is no longer active ({active} is): "
                "start a new job to judge the rest with it"
            )
            with writing(self.sessions) as s:
                queries.fail_judging_job(s, job_id, reason)
            raise JobRefused(f"judging job {job_id} cannot be continued: {reason}")
        return self._continue(job, on_progress, should_stop)

    def resume_unfinished(self) -> list[int]:
        """Continue, one after another in the background, every unfinished job whose process
        is gone (the app calls it when it starts); their ids."""
        with reading(self.sessions) as s:
            jobs = [job_view(j) for j in queries.unfinished_judging_jobs(s)]
        stalled = [j["id"] for j in jobs if j["stalled"]]
        if stalled:
            log.info("continuing judging jobs %s left by a stopped process", stalled)
            self._resumer.submit(self._resume_all, stalled)
        return stalled

    def _resume_all(self, job_ids: list[int]) -> None:
        for job_id in job_ids:
            if self._closing.is_set():
                return
            try:
                self.resume(job_id)
            except JobRefused as exc:
                log.info("%s", exc)
            except Exception:  # one job's failure is recorded on it; go on with the next
                log.exception("continuing judging job %s failed", job_id)

    def close(self) -> None:
        """Stop running jobs after the batch in flight (stored) and leave them continuable."""
        self._closing.set()
        self._resumer.shutdown(wait=True, cancel_futures=True)

    def _continue(
        self,
        job: dict[str, Any],
        on_progress: Progress | None,
        should_stop: Callable[[], bool] | None,
    ) -> JudgeRunReport:
        """Take the job over from its gone owner (compare-and-set on that owner) and run it."""
        if not owner_gone(job["owner"], heartbeat_age_seconds(job)):
            raise JobRefused(f"judging job {job['id']} is running in process {job['owner']}")
        owner = process_owner()
        with writing(self.sessions) as s:
            left = len(queries.job_pending_pairs(s, job))
            taken = queries.claim_judging_job(s, job["id"], owner, job["owner"], job["done"] + left)
        if not taken:
            raise JobRefused(f"judging job {job['id']} was just taken by another process")
        log.info("continuing judging job %s: %d of its pairs left", job["id"], left)
        return self._run(job["id"], owner, True, on_progress, should_stop)

    # --- running --------------------------------------------------------------------------------

    def _run(
        self,
        job_id: int,
        owner: str,
        resumed: bool,
        on_progress: Progress | None,
        should_stop: Callable[[], bool] | None,
    ) -> JudgeRunReport:
        """Judge the job's pairs left, batch by batch, and end (or release) the job."""
        started = time.perf_counter()
        with reading(self.sessions) as s:
            job = queries.get_judging_job(s, job_id)
            pending = queries.job_pending_pairs(s, job)
        report = JudgeRunReport(0, 0, 0, 0.0, job_id=job_id, resumed=resumed)
        report.done, report.total = job["done"], job["total"]
        watch = _Watch(self.sessions, job_id, owner, should_stop, self._closing)
        try:
            finished = self._judge_batches(job, owner, pending, watch, report, on_progress)
        except Exception as exc:
            self._end(job_id, owner, RunStatus.FAILED, f"{type(exc).__name__}: {exc}"[:2000])
            raise
        except BaseException:  # Ctrl-C, exit: the job stays continuable
            self._end(job_id, owner, None)
            raise
        ending = RunStatus.DONE if finished else RunStatus.CANCELLED if watch.by_caller else None
        self._end(job_id, owner, ending)
        report.seconds = time.perf_counter() - started
        report.cancelled = not finished
        return report

    def _judge_batches(
        self,
        job: dict[str, Any],
        owner: str,
        pending: list[queries.PairView],
        watch: _Watch,
        report: JudgeRunReport,
        on_progress: Progress | None,
    ) -> bool:
        """Judge and store `pending` a batch at a time; whether every pair was judged."""
        options = JudgeOptions.from_stored(job["options"])
        backend = self.judging.backend()
        protocols: dict[int, Protocol] = {}
        size = max(1, backend.max_batch_size)
        if on_progress is not None:
            on_progress(report.done, report.total)
        for start in range(0, len(pending), size):
            batch = pending[start : start + size]
            began = time.perf_counter()
            results = self._judge_batch(backend, job, batch, options, protocols, watch)
            if results:
                seconds = time.perf_counter() - began
                stored = self._store_batch(job, owner, options, results, seconds)
                if stored is None:
                    log.info("judging job %s is no longer this process's: stopping", job["id"])
                    return False
                report.judged += len(results)
                report.done += len(results)
                report.stored_judgments += stored
                report.no_verdict += sum(r.verdict is Verdict.NONE for r in results)
                if on_progress is not None:
                    on_progress(report.done, report.total)
            if len(results) < len(batch):
                return False
        return True

    def _judge_batch(
        self,
        backend: Backend,
        job: dict[str, Any],
        batch: list[queries.PairView],
        options: JudgeOptions,
        protocols: dict[int, Protocol],
        watch: _Watch,
    ) -> list[AggregateJudgment]:
        """One batch's pairs, each dataset's with its own guidelines, in order; the pairs
        finished so far when the watch says stop."""
        results: list[AggregateJudgment] = []
        for dataset_id, group in itertools.groupby(batch, key=lambda p: p.dataset_id):
            views = list(group)
            if dataset_id not in protocols:
                with reading(self.sessions) as s:
                    protocols[dataset_id] = judge_protocol(s, options, dataset_id)
            found = judge_pairs(
                backend,
                [pair_input(p) for p in views],
                options,
                str(job["judge_version_id"]),
                None,
                watch,
                protocols[dataset_id],
            )
            results += found
            if len(found) < len(views):
                break
        return results

    def _store_batch(
        self,
        job: dict[str, Any],
        owner: str,
        options: JudgeOptions,
        results: list[AggregateJudgment],
        seconds: float,
    ) -> int | None:
        """The batch's runs and the job's progress in one transaction; the sample rows stored,
        or None (nothing stored) when this process no longer runs the job."""
        with writing(self.sessions) as s:
            if not queries.advance_judging_job(s, job["id"], owner, len(results), seconds):
                return None  # nothing written yet: the transaction commits nothing
            return store_runs(s, results, job["judge_version_id"], options, job["id"])

    def _end(self, job_id: int, owner: str, status: str | None, error: str | None = None) -> None:
        try:
            with writing(self.sessions) as s:
                queries.end_judging_job(s, job_id, owner, status, error)
        except (DatabaseBusy, SaveFailed):  # the job stays running; its owner is gone with us
            log.warning("could not record the end of judging job %s", job_id, exc_info=True)

    # --- watching -------------------------------------------------------------------------------

    def job(self, job_id: int) -> dict[str, Any]:
        with reading(self.sessions) as s:
            return job_view(queries.get_judging_job(s, job_id))

    def jobs(self, limit: int | None = 20) -> list[dict[str, Any]]:
        """Jobs, newest first, with their progress figures (job_view)."""
        with reading(self.sessions) as s:
            return [job_view(j) for j in queries.list_judging_jobs(s, limit)]

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel an unfinished job: what it stored stays; its process stops at its next look
        at the job (the batch in flight is not stored)."""
        with writing(self.sessions) as s:
            queries.cancel_judging_job(s, job_id)
        return self.job(job_id)


class _Watch:
    """judge_pairs' should_stop for a job: the caller's stop, the process closing, or the job's
    row (cancelled elsewhere, taken over) read every STATUS_EVERY_S; it also writes the owner's
    heartbeat every HEARTBEAT_EVERY_S. Once it says stop, it keeps saying so."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: int,
        owner: str,
        should_stop: Callable[[], bool] | None,
        closing: threading.Event,
    ) -> None:
        self.sessions, self.job_id, self.owner = sessions, job_id, owner
        self.should_stop, self.closing = should_stop, closing
        self.by_caller = False  # the caller's stop: the job ends as cancelled
        self.stopped = False
        self._read_at = self._beat_at = time.monotonic()

    def __call__(self) -> bool:
        if not self.stopped:
            self.by_caller = self.should_stop is not None and self.should_stop()
            self.stopped = self.by_caller or self.closing.is_set() or self._job_moved()
        return self.stopped

    def _job_moved(self) -> bool:
        """Whether the job was cancelled or taken over (from its row, now and then)."""
        now = time.monotonic()
        try:
            if now - self._beat_at >= HEARTBEAT_EVERY_S:
                self._beat_at = self._read_at = now
                with writing(self.sessions) as s:
                    return not queries.heartbeat_judging_job(s, self.job_id, self.owner)
            if now - self._read_at >= STATUS_EVERY_S:
                self._read_at = now
                with reading(self.sessions) as s:
                    job = queries.get_judging_job(s, self.job_id)
                return job["status"] != RunStatus.RUNNING or job["owner"] != self.owner
        except (DatabaseBusy, SaveFailed):  # a busy database is no reason to stop judging
            log.warning("judging job %s: could not check its row", self.job_id, exc_info=True)
        return False
