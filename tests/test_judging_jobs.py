"""Batch judging as a recorded job, through the services on SQLite and PostgreSQL with a scripted
judge: each batch is stored (runs and progress) as soon as it is judged, a cancel keeps what was
stored, and a job left behind by a dead process is continued with the pairs it has left, so
every pair ends with exactly one judgment run."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections import Counter
from types import SimpleNamespace

import pytest
from seeding import add_pairs, numbered_pair
from sqlalchemy import func, select, update

from judges.judge import JudgeOptions
from services import JobRefused, Services
from services.judging_jobs import owner_gone, process_owner
from storage import queries
from storage.models import JudgingJob, JudgmentRun
from tests.fakes import FakeBackend

PAIRS = 10
BATCH = 4  # the fake judge's max_batch_size: a job stores 4 pairs at a time
OPTIONS = JudgeOptions(logprobs=False)


class Killed(BaseException):
    """Stands for the process dying in the middle of a batch (not an Exception: nothing in the
    judge catches it, as nothing catches SIGKILL)."""


def judge_answering(kill_at_call: int | None = None) -> FakeBackend:
    """A judge that always says A; with `kill_at_call`, that call raises Killed."""
    calls = Counter()

    def answer(messages) -> str:
        calls["n"] += 1
        if calls["n"] == kill_at_call:
            raise Killed
        return "Principles: be right.\nCritique: A is right.\nVerdict: [[A]]"

    return FakeBackend(script=answer, max_batch_size=BATCH)


@pytest.fixture
def services(db, settings) -> Services:
    opened = Services(settings, db.factory)
    opened.use_backend(judge_answering())
    add_pairs(opened.sessions, "jobs", PAIRS, numbered_pair)
    return opened


def runs_per_pair(services: Services) -> Counter:
    with services.sessions.begin() as s:
        return Counter(s.scalars(select(JudgmentRun.pair_id)))


def job_runs(services: Services, job_id: int) -> int:
    with services.sessions.begin() as s:
        stmt = select(func.count()).where(JudgmentRun.judging_job_id == job_id)
        return s.scalar(stmt)


def dead_owner() -> str:
    """The owner name of a process on this machine that has exited (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return f"{socket.gethostname()}:{child.pid}:gone"


def set_owner(services: Services, job_id: int, owner: str | None) -> None:
    with services.sessions.begin() as s:
        s.execute(update(JudgingJob).where(JudgingJob.id == job_id).values(owner=owner))


def killed_job(services: Services, kill_at_call: int = BATCH + 2) -> int:
    """A job whose process died at the judge's call `kill_at_call` (by default in its second
    batch, the first one stored): its row still says running, owned by a process that is
    gone; its id."""
    services.use_backend(judge_answering(kill_at_call))
    with pytest.raises(Killed):
        services.judge_pending(dataset="jobs", options=OPTIONS)
    job = services.judging_jobs(1)[0]
    set_owner(services, job["id"], dead_owner())  # what SIGKILL leaves behind
    services.use_backend(judge_answering())
    return job["id"]


def test_a_job_is_recorded_and_stores_each_batch_as_it_is_judged(services):
    seen = []

    def on_progress(done: int, total: int) -> None:
        (job,) = services.judging_jobs()
        seen.append((done, total, job["done"], job_runs(services, job["id"])))

    report = services.judge_pending(dataset="jobs", options=OPTIONS, on_progress=on_progress)
    # Before the first batch, then after each: the row and the stored runs move together.
    assert seen == [(0, 10, 0, 0), (4, 10, 4, 4), (8, 10, 8, 8), (10, 10, 10, 10)]
    assert (report.judged, report.done, report.total, report.cancelled) == (10, 10, 10, False)
    job = services.judging_job(report.job_id)
    assert job["status"] == "done" and job["owner"] is None and job["finished_at"] is not None
    assert (job["protocol"], job["k"], job["swap"], job["aggregate"]) == (
        "pairwise",
        1,
        False,
        "mean",
    )
    assert job["options"] == OPTIONS.model_dump(mode="json")
    assert job["judge_version_id"] == services.judge_version_id()
    assert job["busy_seconds"] > 0 and job["pairs_per_min"] > 0 and job["seconds_left"] == 0
    assert not job["stalled"]
    assert set(runs_per_pair(services).values()) == {1} and len(runs_per_pair(services)) == PAIRS


def test_cancel_from_anywhere_keeps_the_stored_batches(services):
    job_ids = []

    def cancel_after_first_batch(done: int, total: int) -> None:
        if done == BATCH:
            (job,) = services.judging_jobs()
            job_ids.append(job["id"])
            services.cancel_judging_job(job["id"])  # as another process (or the tab) would

    report = services.judge_pending(
        dataset="jobs", options=OPTIONS, on_progress=cancel_after_first_batch
    )
    job = services.judging_job(job_ids[0])
    assert report.cancelled and job["status"] == "cancelled"
    # The batch judged after the cancel was not stored: the job ends where it was cancelled.
    assert (
        job["done"]
        == BATCH
        == job_runs(services, job["id"])
        == sum(runs_per_pair(services).values())
    )


def test_the_callers_stop_cancels_after_storing_what_it_finished(services):
    stop = []
    report = services.judge_pending(
        dataset="jobs",
        options=OPTIONS,
        on_progress=lambda done, total: stop.append(done >= BATCH),
        should_stop=lambda: stop[-1],
    )
    job = services.judging_job(report.job_id)
    assert report.cancelled and job["status"] == "cancelled" and job["owner"] is None
    assert report.judged == job["done"] == BATCH == len(runs_per_pair(services))
    # A cancelled job is not continued: the next call starts a new one with the rest.
    again = services.judge_pending(dataset="jobs", options=OPTIONS)
    assert again.job_id != report.job_id and not again.resumed and again.judged == PAIRS - BATCH


def test_a_killed_job_is_continued_with_only_the_pairs_it_has_left(services):
    job_id = killed_job(services)
    job = services.judging_job(job_id)
    assert (job["status"], job["done"], job["total"]) == ("running", BATCH, PAIRS)
    assert job["stalled"] and job_runs(services, job_id) == BATCH
    add_pairs(services.sessions, "jobs", 1, numbered_pair)  # imported after the job started

    report = services.judge_pending(dataset="jobs", options=OPTIONS)
    assert report.resumed and report.job_id == job_id
    assert (report.judged, report.done, report.total) == (PAIRS - BATCH, PAIRS, PAIRS)
    assert services.judging_job(job_id)["status"] == "done"
    counts = runs_per_pair(services)
    assert len(counts) == PAIRS and set(counts.values()) == {1}  # none lost, none twice
    # The pair imported later was not in the job's scope: a new job takes it.
    later = services.judge_pending(dataset="jobs", options=OPTIONS)
    assert not later.resumed and later.judged == 1
    assert set(runs_per_pair(services).values()) == {1}


def test_a_job_with_other_options_is_not_continued(services):
    job_id = killed_job(services)
    other = services.judge_pending(dataset="jobs", options=JudgeOptions(logprobs=False, k=2))
    assert not other.resumed and other.job_id != job_id and other.judged == PAIRS - BATCH
    # The killed job has nothing left (the other job judged its pairs): it ends, judging none.
    report = services.resume_judging_job(job_id)
    assert report.judged == 0 and services.judging_job(job_id)["status"] == "done"
    assert set(runs_per_pair(services).values()) == {1}


def test_a_job_stored_before_the_penalty_existed_continues_as_it_ran(services):
    """Options stored by an earlier version lack `repetition_penalty`: the judge then ran
    without one, so the job continues at 1.0, not at today's default; a request at 1.0 is that
    job, one at the default is another."""
    job_id = killed_job(services)
    stored = OPTIONS.model_dump(mode="json")
    del stored["repetition_penalty"]  # as an earlier version stored it
    with services.sessions.begin() as s:
        s.execute(update(JudgingJob).where(JudgingJob.id == job_id).values(options=stored))
    judge = judge_answering()
    judge.supports_repetition_penalty = True
    services.use_backend(judge)

    assert OPTIONS.repetition_penalty > 1.0
    other = services.judge_pending(dataset="jobs", options=OPTIONS, limit=1)
    assert not other.resumed and other.job_id != job_id and other.judged == 1
    as_ran = OPTIONS.model_copy(update={"repetition_penalty": 1.0})
    same = services.judge_pending(dataset="jobs", options=as_ran)
    assert same.resumed and same.job_id == job_id and same.judged == PAIRS - BATCH - 1
    penalties = [o.repetition_penalty for o in judge.batch_options]  # the new job's first
    assert penalties[0] == OPTIONS.repetition_penalty and set(penalties[1:]) == {1.0}
    assert set(runs_per_pair(services).values()) == {1}


def test_a_job_run_by_a_live_process_is_refused_and_a_claim_is_taken_once(services):
    job_id = killed_job(services)
    alive = process_owner()  # this process: alive
    set_owner(services, job_id, alive)
    assert not owner_gone(alive, 0.0)
    with pytest.raises(JobRefused, match="is running in process"):
        services.judge_pending(dataset="jobs", options=OPTIONS)
    with pytest.raises(JobRefused, match="is running in process"):
        services.resume_judging_job(job_id)
    assert job_runs(services, job_id) == BATCH
    # Two processes that both saw the owner gone: the compare-and-set lets one of them in.
    gone = dead_owner()
    set_owner(services, job_id, gone)
    with services.sessions.begin() as s:
        first = queries.claim_judging_job(s, job_id, "me:1:a", gone, PAIRS)
    with services.sessions.begin() as s:
        second = queries.claim_judging_job(s, job_id, "you:2:b", gone, PAIRS)
    assert (first, second) == (True, False)


def test_a_job_whose_judge_version_is_no_longer_active_is_failed_with_the_reason(services):
    job_id = killed_job(services)
    with services.sessions.begin() as s:
        newer = queries.ensure_judge_version(s, name="newer", base_model="m", backend="fake")
        queries.set_active_version(s, newer)
    with pytest.raises(JobRefused, match="no longer active"):
        services.resume_judging_job(job_id)
    job = services.judging_job(job_id)
    assert job["status"] == "failed" and "no longer active" in job["error"]


def test_the_app_start_continues_stalled_jobs_in_the_background(services):
    job_id = killed_job(services)
    assert services.resume_judging_jobs() == [job_id]
    deadline = time.monotonic() + 30
    while services.judging_job(job_id)["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the row, not waiting a fixed time
    assert services.judging_job(job_id)["status"] == "done"
    assert set(runs_per_pair(services).values()) == {1} and len(runs_per_pair(services)) == PAIRS
    services.stop_judging_jobs()


def test_two_starts_at_once_make_one_job_and_judge_each_pair_once(services, db, settings):
    others = [Services(settings, db.factory) for _ in range(2)]
    for other in others:
        other.use_backend(judge_answering())
    services.judge_version_id()  # registered once, before the race
    start, outcomes = threading.Barrier(len(others)), []

    def judge(other: Services) -> None:
        start.wait()
        try:
            outcomes.append(other.judge_pending(dataset="jobs", options=OPTIONS).judged)
        except JobRefused:
            outcomes.append("refused")

    threads = [threading.Thread(target=judge, args=(other,)) for other in others]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes, key=str) in ([0, PAIRS], [PAIRS, "refused"]), outcomes
    assert [job["total"] for job in services.judging_jobs()].count(PAIRS) == 1
    assert set(runs_per_pair(services).values()) == {1} and len(runs_per_pair(services)) == PAIRS


# --- the Batch tab ----------------------------------------------------------------------------


def test_the_batch_tab_lists_jobs_resumes_a_stopped_one_and_stops_one(services):
    from webui.batch_tab import BatchHandlers

    handler = BatchHandlers(services)
    assert handler.jobs()[1:] == ([], False)
    job_id = killed_job(services)
    html, choices, unfinished = handler.jobs()
    assert unfinished and choices == [(f"job {job_id}: jobs", job_id)]
    assert f"job {job_id}: jobs (pairwise, k 1, swap off) · 4 / 10 pairs · " in html
    assert "pairs/min" in html and "stopped: its process is gone" in html

    request, progress = SimpleNamespace(session_hash="s1"), lambda *args, **kwargs: None
    message = handler.resume(job_id, request, progress)
    assert f"Continued job {job_id}. Judged 6 pairs" in message and "10 of 10" in message
    assert "done" in handler.jobs()[0] and handler.jobs()[1:] == ([], False)

    add_pairs(services.sessions, "jobs", 2, numbered_pair)
    killed = killed_job(services, kill_at_call=2)
    assert f"Job {killed} stopped with 0 of 2 pairs judged" in handler.stop_job(killed)
    assert services.judging_job(killed)["status"] == "cancelled"
    assert "No job to resume" in handler.resume(None, request, progress)


def test_the_batch_api_judges_as_a_job_and_has_the_job_endpoints(settings):
    from gradio_client import Client

    from app import build_app, serve
    from tests.served import free_port

    settings.port = free_port()
    services = Services.open(settings)
    services.use_backend(judge_answering())
    add_pairs(services.sessions, "jobs", PAIRS, numbered_pair)
    demo = build_app(services)
    _, url = serve(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False, analytics_enabled=False, download_files=False)
        endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert {"/judge_pending", "/cancel_batch", "/resume_judging_job"} <= set(endpoints)
        assert "/cancel_judging_job" in endpoints
        dataset_id = services.datasets()[0].id
        message = client.predict(dataset_id, None, api_name="/judge_pending")
        assert "Judged 10 pairs" in message and "10 of 10 pairs" in message, message
    finally:
        demo.close()
    (job,) = services.judging_jobs()
    assert job["status"] == "done" and set(runs_per_pair(services).values()) == {1}
