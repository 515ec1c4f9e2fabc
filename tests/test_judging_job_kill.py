"""A real `grm judge --dataset` process, SIGKILLed in the middle of its job and started again on
the same SQLite file: the second process says it continues the job, and every pair ends with
exactly one judgment run (none lost, none twice).

The judge is the openai backend at a slow fake server (tests/fake_openai_server.py, mode
"slow"), running in this test process, so the killed process can be any batch into the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_openai_server import FakeJudgeServer
from seeding import add_pairs, numbered_pair
from sqlalchemy import select

from services import Services
from storage.models import JudgingJob, JudgmentRun

pytestmark = pytest.mark.timeout(180)

REPO_ROOT = Path(__file__).resolve().parent.parent
PAIRS = 16
BATCH = 2  # GRM_JUDGE_BATCH_SIZE: pairs stored per transaction
WAIT_S = 90.0


@pytest.fixture
def server() -> Iterator[FakeJudgeServer]:
    fake = FakeJudgeServer("slow").start()
    yield fake
    fake.stop()


def grm_judge(settings, server: FakeJudgeServer, out: Path) -> subprocess.Popen:
    """`grm judge --dataset kill` in its own process on the test's SQLite file."""
    env = {
        **os.environ,
        "GRM_HOME": str(settings.home),
        "GRM_JUDGE_BACKEND": "openai",
        "GRM_OPENAI_BASE_URL": server.url,
        "GRM_JUDGE_BATCH_SIZE": str(BATCH),
        "GRM_MAX_NEW_TOKENS": "24",
    }
    env.pop("GRM_DATABASE_URL", None)
    command = [sys.executable, "cli.py", "judge", "--dataset", "kill"]
    with out.open("w") as sink:
        return subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT
        )


def job_done(services: Services) -> int:
    with services.sessions.begin() as s:
        return max(s.scalars(select(JudgingJob.done)), default=0)


def runs_per_pair(services: Services) -> Counter:
    with services.sessions.begin() as s:
        return Counter(s.scalars(select(JudgmentRun.pair_id)))


def test_a_killed_grm_judge_is_continued_by_the_next_one_with_no_pair_lost_or_twice(
    settings, server, tmp_path
):
    settings.database_url = None  # this test is about a SQLite file that two processes share
    services = Services.open(settings)
    pair_ids = add_pairs(services.sessions, "kill", PAIRS, numbered_pair)

    first = grm_judge(settings, server, tmp_path / "first.log")
    deadline = time.monotonic() + WAIT_S
    while job_done(services) < BATCH and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # polling the database for the first stored batch
    assert first.poll() is None, (tmp_path / "first.log").read_text()
    first.send_signal(signal.SIGKILL)
    first.wait()
    stored = job_done(services)
    assert BATCH <= stored < PAIRS, "the kill should land inside the job"
    assert sum(runs_per_pair(services).values()) == stored  # runs and progress moved together

    second = grm_judge(settings, server, tmp_path / "second.log")
    assert second.wait(timeout=WAIT_S) == 0, (tmp_path / "second.log").read_text()
    out = (tmp_path / "second.log").read_text()
    assert "continued judging job 1 where it stopped" in out, out
    assert f"judged {PAIRS - stored} pairs" in out, out
    assert f"judging job 1: {PAIRS} of {PAIRS} pairs, done" in out, out
    counts = runs_per_pair(services)
    assert sorted(counts) == pair_ids and set(counts.values()) == {1}, counts
