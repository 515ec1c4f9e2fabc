"""Judge faults (issue 6): the judge times out, is refused, dies mid-stream, repeats itself
without end, states no verdict or two, or gets a prompt larger than its context window.

In every case the partial text is kept and marked (status and error on the stored judgment,
"failed" / "no verdict" on the page, never a verdict A), the judge's slot is freed (the next
judgment runs), another annotator's label save goes through, and a retry works.

The openai backend talks to a real HTTP server on loopback (tests/fake_openai_server.py), in a
thread or as its own process when it must be killed. The faults are checked through the
services (streamed and batch), through the Label tab's handler, and through the launched web app
with gradio_client.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import seeding
from fake_openai_server import (
    GOOD_ANSWER,
    NO_VERDICT_ANSWER,
    PARTIAL_TEXT,
    REPEATED,
    FakeJudgeServer,
)
from stand_ins import stand_ins

from judges.backends.base import Backend
from judges.backends.openai_backend import OpenAIBackend
from judges.judge import JudgeOptions, StreamUpdate
from judges.types import Judgment, Status, Verdict
from services import Services
from storage import queries
from webui.label_handlers import LabelHandlers, LabelScreen

pytestmark = pytest.mark.timeout(300)  # a hang here is the bug being tested: fail, don't wait

SERVER_SCRIPT = Path(__file__).resolve().parent / "fake_openai_server.py"
TIMEOUT_S = 2.0  # the judge server's read timeout in these tests (the default is 60 s)
WEB_TIMEOUT_S = 3.0  # the app test: a loaded machine must not time out the good answers
MAX_NEW_TOKENS = 24
OPTIONS = JudgeOptions(max_new_tokens=MAX_NEW_TOKENS, logprobs=False)
JUDGE_OUT = ("principles", "critique", "verdict", "badge", "samples", "judged", "status")


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FakeJudgeServer]:
    fake = FakeJudgeServer().start()
    yield fake
    fake.stop()


@pytest.fixture
def services(settings, server: FakeJudgeServer) -> Iterator[Services]:
    """Services judging through the openai backend at the fake server, with a few pairs."""
    settings.judge_backend = "openai"
    settings.openai_base_url = server.url
    settings.openai_timeout_s = TIMEOUT_S
    settings.max_new_tokens = MAX_NEW_TOKENS
    opened = Services.open(settings)
    opened.judge.options = OPTIONS
    add_pairs(opened, 4)
    yield opened
    opened.reload_judge()


def add_pairs(services: Services, count: int, response_b: str | None = None) -> list[int]:
    return seeding.add_pairs(
        services.sessions,
        "faults",
        count,
        lambda i: {
            "prompt": f"What is {i} times 3?",
            "response_a": f"{3 * i}",
            "response_b": response_b or f"{3 * i + 1}",
        },
    )


def first_pair(services: Services) -> int:
    return services.next_item("alice").id


def judge(
    services: Services, pair_id: int, during: Callable[[], None] | None = None
) -> tuple[list[StreamUpdate], Judgment]:
    """Stream one judgment through the services; `during` runs once the first text is shown."""
    updates: list[StreamUpdate] = []
    for update in services.stream_pair_judgment(pair_id):
        updates.append(update)
        if during is not None and (update.principles or update.critique):
            during()
            during = None
    assert updates and updates[-1].aggregate is not None, "the stream did not finish"
    return updates, updates[-1].judgment


def stored(services: Services, pair_id: int) -> dict:
    (row,) = services.latest_judgment_run(pair_id)
    return row


def assert_marked(services: Services, pair_id: int, judgment: Judgment, status: Status) -> None:
    """No verdict, the status says why, and the database row says the same."""
    assert judgment.status is status, judgment
    assert judgment.verdict is Verdict.NONE, "a failed judgment must never read as a verdict"
    row = stored(services, pair_id)
    assert (row["status"], row["verdict"]) == (status.value, "none")
    assert row["raw_text"] == judgment.raw_text and row["error"] == judgment.error


def assert_others_unaffected(services: Services, pair_id: int, annotator: str = "bob") -> None:
    """Another person's label is saved and their queue moves on."""
    services.save_label(pair_id, annotator, "B")
    labels = services.pair_history(pair_id)["labels"]
    assert [(x["annotator"], x["verdict"]) for x in labels] == [(annotator, "B")]
    following = services.next_item(annotator)
    assert following is None or following.id != pair_id


def assert_retry_works(services: Services, server: FakeJudgeServer, pair_id: int) -> None:
    server.set_mode("verdict")
    _, judgment = judge(services, pair_id)
    assert (judgment.status, judgment.verdict) == (Status.COMPLETE, Verdict.A)
    assert judgment.raw_text == GOOD_ANSWER
    assert stored(services, pair_id)["verdict"] == "A"


def judged_in_mode(
    services: Services, server: FakeJudgeServer, mode: str, status: Status
) -> Judgment:
    """The first pair judged with the server in `mode`: marked `status`, another person's
    labeling unaffected, and a retry in "verdict" mode judges it. The failed judgment."""
    server.set_mode(mode)
    pair_id = first_pair(services)
    _, judgment = judge(services, pair_id)
    assert_marked(services, pair_id, judgment, status)
    assert_others_unaffected(services, pair_id)
    assert_retry_works(services, server, pair_id)
    return judgment


@contextmanager
def server_process(mode: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """The fake server as its own process (so it can be SIGKILLed); (process, base url)."""
    process = subprocess.Popen(
        [sys.executable, str(SERVER_SCRIPT), mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("PORT "), f"the fake server did not start: {line!r}"
        yield process, f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        process.stdout.close()


def dead_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    from tests.served import free_port

    return f"http://127.0.0.1:{free_port()}/v1"


# --- each fault through the services ---------------------------------------------------------


def test_a_stalled_server_times_out_keeping_the_partial_text(services, server):
    server.set_mode("stall")
    pair_id = first_pair(services)
    saved_during: list[str] = []

    def another_annotator_labels() -> None:  # while the judge is stuck waiting
        other = add_pairs(services, 1)[0]
        services.save_label(other, "carol", "tie")
        saved_during.append("carol")

    updates, judgment = judge(services, pair_id, during=another_annotator_labels)
    assert saved_during == ["carol"]
    assert_marked(services, pair_id, judgment, Status.ERROR)
    assert judgment.raw_text == PARTIAL_TEXT
    assert f"did not answer within {TIMEOUT_S:g}s" in judgment.error
    assert "correctness first." in updates[-1].principles  # still on screen at the end
    assert_others_unaffected(services, pair_id)
    assert_retry_works(services, server, pair_id)


def test_a_refused_connection_is_an_error_and_labeling_goes_on(services, server):
    services.use_backend(OpenAIBackend(dead_url(), timeout_s=TIMEOUT_S))
    pair_id = first_pair(services)
    _, judgment = judge(services, pair_id)
    assert_marked(services, pair_id, judgment, Status.ERROR)
    assert judgment.raw_text == ""
    assert "connection refused" in judgment.error
    assert_others_unaffected(services, pair_id)
    services.use_backend(OpenAIBackend(server.url, timeout_s=TIMEOUT_S))
    assert_retry_works(services, server, pair_id)


def test_a_server_killed_mid_stream_keeps_what_it_sent(services, server):
    pair_id = first_pair(services)
    with server_process("hang") as (process, url):
        services.use_backend(OpenAIBackend(url, timeout_s=30.0))  # the kill, not a timeout

        def kill_the_server() -> None:
            assert process.stdout.readline().strip() == "SENT"  # every partial chunk is out
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

        _, judgment = judge(services, pair_id, during=kill_the_server)
    assert process.returncode == -signal.SIGKILL
    assert_marked(services, pair_id, judgment, Status.ERROR)
    assert judgment.raw_text == PARTIAL_TEXT
    assert "broke off the answer" in judgment.error
    assert_others_unaffected(services, pair_id)
    services.use_backend(OpenAIBackend(server.url, timeout_s=TIMEOUT_S))
    assert_retry_works(services, server, pair_id)


def test_endless_repetition_stops_at_max_new_tokens_as_truncated(services, server):
    judgment = judged_in_mode(services, server, "repeat", Status.TRUNCATED)
    assert judgment.raw_text == REPEATED * MAX_NEW_TOKENS
    assert judgment.completion_tokens == MAX_NEW_TOKENS


def test_a_server_that_ignores_max_tokens_is_cut_off_with_the_reason(services, server):
    """A server that streams forever must not hold the judge (and its slot) forever: the
    client cuts it off a little past max_new_tokens and says the server overran it."""
    judgment = judged_in_mode(services, server, "repeat_forever", Status.ERROR)
    assert judgment.raw_text.startswith(REPEATED * MAX_NEW_TOKENS)
    assert len(judgment.raw_text) < len(REPEATED) * MAX_NEW_TOKENS * 10
    assert f"kept streaming past max_new_tokens={MAX_NEW_TOKENS}" in judgment.error


def test_a_missing_verdict_is_no_verdict(services, server):
    judgment = judged_in_mode(services, server, "no_verdict", Status.NO_VERDICT)
    assert judgment.raw_text == NO_VERDICT_ANSWER
    assert "hard to say" in judgment.critique


def test_two_contradicting_verdicts_are_no_verdict_never_the_first(services, server):
    """ "[[A]] ... [[B]]": a person expects no verdict (the judge contradicted itself), never A
    because it came first nor B because it came last."""
    judgment = judged_in_mode(services, server, "twice", Status.NO_VERDICT)
    assert "[[A]]" in judgment.raw_text and "[[B]]" in judgment.raw_text


def test_batch_judging_marks_failed_pairs_and_a_retry_judges_them(services, server):
    server.set_mode("stall")
    report = services.judge_pending(limit=2)
    assert (report.judged, report.stored_judgments, report.no_verdict) == (2, 2, 2)
    with services.sessions.begin() as s:
        pending = [p.id for p in queries.pending_pairs(s, services.judge_version_id(), "pairwise")]
    rows = [r for pid in pending for r in services.latest_judgment_run(pid)]
    errors = [r for r in rows if r["status"] == "error"]
    assert len(errors) == 2 and all(r["raw_text"] == PARTIAL_TEXT for r in errors)
    assert all("did not answer within" in r["error"] for r in errors)
    assert len(pending) == 4, "failed pairs must stay pending, so a retry judges them"

    server.set_mode("verdict")
    report = services.judge_pending()
    assert (report.judged, report.no_verdict) == (4, 0)
    assert all(services.latest_judgment_run(pid)[0]["verdict"] == "A" for pid in pending)


# --- a prompt larger than the context window (the embedded model) ----------------------------


class Recording(Backend):
    """The embedded backend, recording the conversations it is sent."""

    name = "recording"

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.sent: list[str] = []

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    def stream(self, messages, options):
        self.sent.append("\n".join(m["content"] for m in messages))
        yield from self.inner.stream(messages, options)

    def generate_batch(self, conversations, options):
        self.sent.extend("\n".join(m["content"] for m in c) for c in conversations)
        return self.inner.generate_batch(conversations, options)


@pytest.mark.slow
def test_a_response_beyond_the_context_window_is_cut_with_a_stated_marker(
    settings, embedded_backend
):
    """A 50,000-token response: the prompt says what was cut, the judgment runs, no crash."""
    recording = Recording(embedded_backend)
    services = Services.open(settings)
    services.use_backend(recording)
    services.judge.options = JudgeOptions(max_new_tokens=4, logprobs=False)
    context = embedded_backend.model.config.max_position_embeddings
    huge = " ".join(["banana"] * (6 * context))  # about 50,000 tokens for an 8,192 context
    (big,) = add_pairs(services, 1, response_b=huge)

    _, judgment = judge(services, big)
    assert judgment.status in (Status.COMPLETE, Status.NO_VERDICT, Status.TRUNCATED), judgment
    assert judgment.error is None and 0 < judgment.prompt_tokens < context
    (sent,) = recording.sent
    omitted = re.search(r"\[\.\.\. (\d+) characters omitted \.\.\.\]", sent)
    assert omitted and int(omitted.group(1)) > len(huge) - 2000, "the cut must be stated"
    assert stored(services, big)["status"] == judgment.status.value

    (again,) = add_pairs(services, 1, response_b=huge)
    report = services.judge_pending()  # the same text in a batch: judged, no crash
    assert report.judged == 1 and stored(services, again)["status"] != "error"
    assert "characters omitted" in recording.sent[-1]


@pytest.mark.slow
def test_a_judgment_that_cannot_fit_the_context_is_a_clear_error(settings, embedded_backend):
    """Prompt plus max_new_tokens beyond the context window: an error that says so, stored,
    the pair stays pending, and the next judgment with a sane limit works."""
    services = Services.open(settings)
    services.use_backend(embedded_backend)
    context = embedded_backend.model.config.max_position_embeddings
    services.judge.options = JudgeOptions(max_new_tokens=context, logprobs=False)
    (pair_id,) = add_pairs(services, 1)

    _, judgment = judge(services, pair_id)
    assert_marked(services, pair_id, judgment, Status.ERROR)
    assert f"exceeds the model's context of {context} tokens" in judgment.error
    report = services.judge_pending()
    assert (report.judged, report.no_verdict) == (1, 1)
    assert "exceeds the model's context" in stored(services, pair_id)["error"]
    shown = handler_judge(services, pair_id)
    assert 'data-state="error"' in shown["badge"]
    assert "The judge failed: prompt of" in shown["status"]
    assert "exceeds the model" in shown["status"]
    assert_others_unaffected(services, pair_id)

    services.judge.options = JudgeOptions(max_new_tokens=4, logprobs=False)
    _, judgment = judge(services, pair_id)
    assert judgment.status is not Status.ERROR, judgment.error


# --- the Label tab's handler: what a person sees ---------------------------------------------


def handler_judge(services: Services, pair_id: int, session: str = "s1") -> dict:
    """The Label tab's judge handler, run to the end; its last outputs by name."""
    request = SimpleNamespace(session_hash=session, username=None)
    handlers = LabelHandlers(services, stand_ins(LabelScreen))
    *_, last = handlers.judge({"pair_id": pair_id}, request)
    assert set(last) == set(handlers.ui.judge_outputs())
    return {name: last[getattr(handlers.ui, name)] for name in JUDGE_OUT}


@pytest.mark.parametrize(
    ("mode", "badge_state", "badge_words", "status_words"),
    [
        ("stall", "error", "failed", "did not answer within"),
        ("suicide", "error", "failed", "broke off the answer"),
        ("repeat", "none", "no verdict", "cut off"),
        ("no_verdict", "none", "no verdict", "no verdict"),
        ("twice", "none", "no verdict", "no verdict"),
    ],
)
def test_the_page_says_what_went_wrong_and_keeps_the_text(
    services, server, mode, badge_state, badge_words, status_words
):
    pair_id = first_pair(services)
    if mode == "suicide":
        with server_process(mode) as (process, url):
            services.use_backend(OpenAIBackend(url, timeout_s=30.0))
            shown = handler_judge(services, pair_id)
            process.wait(timeout=30)
        services.use_backend(OpenAIBackend(server.url, timeout_s=TIMEOUT_S))
    else:
        server.set_mode(mode)
        shown = handler_judge(services, pair_id)
    badge = shown["badge"]
    assert f'data-state="{badge_state}"' in badge and badge_words in badge.lower(), badge
    assert 'data-verdict="A"' not in badge and "A is better" not in badge
    assert status_words in shown["status"].lower(), shown["status"]
    assert shown["judged"]["verdict"] in (None, "none")  # nothing to "agree" with
    assert "Traceback" not in shown["status"]
    if mode in ("stall", "suicide"):
        assert "correctness first." in shown["principles"]  # the partial text stays readable
    assert_others_unaffected(services, pair_id)
    server.set_mode("verdict")
    again = handler_judge(services, pair_id)
    assert 'data-verdict="A"' in again["badge"] and 'data-state="done"' in again["badge"]


# --- the launched web app through gradio_client ----------------------------------------------


@pytest.fixture
def web(settings, server, monkeypatch) -> Iterator[SimpleNamespace]:
    """The app on loopback, judging through the fake server with ONE judge slot: a judgment
    that does not free its slot would block the next one."""
    import app as app_module
    from app import build_app, serve
    from tests.served import free_port

    monkeypatch.setitem(app_module.JUDGE_CONCURRENCY, "openai", 1)
    settings.judge_backend = "openai"
    settings.openai_base_url = server.url
    settings.openai_timeout_s = WEB_TIMEOUT_S
    settings.max_new_tokens = MAX_NEW_TOKENS
    settings.port = free_port()
    services = Services.open(settings)
    services.judge.options = OPTIONS
    add_pairs(services, 6)
    demo = build_app(services)
    _, url = serve(demo, settings, prevent_thread_lock=True, quiet=True)
    yield SimpleNamespace(url=url, services=services, server=server)
    demo.close()
    services.reload_judge()


def client_for(web: SimpleNamespace, name: str):
    from gradio_client import Client

    client = Client(web.url, verbose=False, analytics_enabled=False, download_files=False)
    client.predict(name, api_name="/set_annotator")
    screen = client.predict(0, api_name="/next_pair")
    found = re.search(r'data-pair-id="(\d+)"', screen[0])
    assert found, screen
    return client, int(found.group(1))


def web_judge(client) -> list:
    """The last outputs of /judge: principles, critique, verdict, badge, samples, status."""
    updates = list(client.submit(api_name="/judge"))
    assert updates, "the judge endpoint sent nothing"
    return updates[-1]


def label_b(web: SimpleNamespace, name: str) -> int:
    """Another person saves B on their pair through the app; the pair id."""
    client, pair_id = client_for(web, name)
    screen = client.predict(0, "", "", api_name="/label_B")
    assert f"Saved #{pair_id}: B" in screen[-1], screen[-1]
    labels = web.services.pair_history(pair_id)["labels"]
    assert (name, "B") in [(x["annotator"], x["verdict"]) for x in labels]
    return pair_id


@pytest.mark.slow
def test_web_stalled_judge_fails_visibly_while_others_label(web):
    web.server.set_mode("stall")
    client, pair_id = client_for(web, "ana")
    job = client.submit(api_name="/judge")
    deadline = time.monotonic() + 60
    while "correctness" not in "".join(map(str, job.outputs()[-1:])):  # partial text is shown
        assert time.monotonic() < deadline and not job.done(), job.outputs()
        time.sleep(0.05)
    label_b(web, "ben")  # while ana's judgment is stuck, ben's save goes through
    job.result()
    principles, _critique, _verdict, badge, _samples, status = job.outputs()[-1]
    assert 'data-state="error"' in badge and "failed" in badge.lower()
    assert f"did not answer within {WEB_TIMEOUT_S:g}s" in status
    assert "correctness first." in principles
    assert web.services.latest_judgment_run(pair_id)[0]["status"] == "error"
    label_b(web, "cleo")  # and right after

    web.server.set_mode("verdict")  # the one judge slot is free again: the retry runs
    *_, badge, _samples, status = web_judge(client)
    assert 'data-verdict="A"' in badge and 'data-state="done"' in badge, badge
    screen = client.predict(0, "", "", api_name="/label_agree")  # labeling goes on
    assert f"Saved #{pair_id}: A" in screen[-1]


@pytest.mark.slow
def test_web_killed_server_and_contradicting_verdicts(web):
    client, pair_id = client_for(web, "dan")
    with server_process("suicide") as (process, url):
        web.services.use_backend(OpenAIBackend(url, timeout_s=30.0))
        principles, *_, badge, _samples, status = web_judge(client)
        process.wait(timeout=30)
    assert 'data-state="error"' in badge and "broke off the answer" in status
    assert "correctness first." in principles
    label_b(web, "eve")

    web.services.use_backend(OpenAIBackend(web.server.url, timeout_s=WEB_TIMEOUT_S))
    web.server.set_mode("twice")
    *_, badge, _samples, status = web_judge(client)
    assert 'data-state="none"' in badge and "no verdict" in badge
    assert 'data-verdict="A"' not in badge and 'data-verdict="B"' not in badge
    screen = client.predict(0, "", "", api_name="/label_agree")
    assert "No judge verdict to agree with" in screen[-1]  # nothing silently agreed to
    assert all(x["annotator"] != "dan" for x in web.services.pair_history(pair_id)["labels"])

    web.server.set_mode("verdict")
    *_, badge, _samples, _status = web_judge(client)
    assert 'data-verdict="A"' in badge
    label_b(web, "fay")
