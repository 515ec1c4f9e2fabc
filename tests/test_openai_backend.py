"""The openai backend against a real `transformers serve` on loopback, and against a tiny
scripted SSE server for the cases a real server will not produce on demand."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from judges.backends.base import BackendError, Generation, GenerationOptions
from judges.backends.openai_backend import OpenAIBackend, iter_sse_data, parse_chunk
from tests.served import free_port, start_server, stop_server

HELLO = [{"role": "user", "content": "Say hi."}]
STORY = [{"role": "user", "content": "Write a long story about a cat who learns to sail."}]
SERVER_START_LIMIT_S = 300  # loading the model under a busy CPU; bounded all the same


# -- a scripted SSE server --------------------------------------------------------------------


@dataclass
class Script:
    """What the scripted server answers to the next requests."""

    status: int = 200
    parts: list[bytes] = field(default_factory=list)
    delay_s: float = 0.0
    die_mid_stream: bool = False  # close the socket without ending the chunked body
    barrier: threading.Barrier | None = None  # requests wait here for each other


def sse(payload: dict | str) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {text}\n\n".encode()


def chunk(content: str | None = None, finish: str | None = None, logprobs=None, usage=None):
    choice: dict = {"index": 0, "delta": {"content": content} if content else {}}
    if finish:
        choice["finish_reason"] = finish
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    body: dict = {"object": "chat.completion.chunk", "choices": [choice]}
    if usage:
        body["usage"] = usage
    return sse(body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        script: Script = self.server.script
        time.sleep(script.delay_s)
        if script.barrier is not None:
            try:
                script.barrier.wait()
            except threading.BrokenBarrierError:
                self.send_error(500, "requests did not arrive together")
                return
        self.send_response(script.status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for part in script.parts:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.flush()
        if script.die_mid_stream:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


class ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = Script()
        self.requests: list[dict] = []

    def handle_error(self, request, client_address) -> None:
        pass  # clients that hang up early (timeout tests) are expected here

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _consume(backend: OpenAIBackend, messages, options: GenerationOptions | None = None):
    """(pieces, summary or None, error or None) from one stream."""
    options = options or GenerationOptions()
    pieces: list[str] = []
    try:
        for item in backend.stream(messages, options):
            if isinstance(item, Generation):
                return pieces, item, None
            pieces.append(item)
    except BackendError as exc:
        return pieces, None, exc
    raise AssertionError("stream ended without a Generation")


def test_stream_maps_text_usage_and_logprobs(scripted):
    top_a = [{"token": "A", "logprob": -0.2}, {"token": "B", "logprob": -1.8}]
    scripted.script = Script(
        parts=[
            sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
            b": keep-alive comment\n\n",
            chunk("[[", logprobs=[{"token": "[[", "logprob": -0.01, "top_logprobs": []}]),
            chunk("A", logprobs=[{"token": "A", "logprob": -0.2, "top_logprobs": top_a}]),
            chunk("]]", finish="stop"),
            sse({"choices": [], "usage": {"prompt_tokens": 31, "completion_tokens": 3}}),
            sse("[DONE]"),
        ]
    )
    backend = OpenAIBackend(scripted.url, model="judge", timeout_s=5)
    pieces, summary, error = _consume(backend, HELLO, GenerationOptions(top_logprobs=30))
    assert error is None and pieces == ["[[", "A", "]]"]
    assert (summary.text, summary.finish_reason) == ("[[A]]", "stop")
    assert (summary.prompt_tokens, summary.completion_tokens) == (31, 3)
    assert [t.token for t in summary.token_logprobs] == ["[[", "A"]
    assert summary.token_logprobs[1].top == {"A": -0.2, "B": -1.8}
    sent = scripted.requests[0]
    assert sent["model"] == "judge" and sent["stream"] is True and sent["messages"] == HELLO
    assert sent["logprobs"] is True and sent["top_logprobs"] == 20  # capped at the API limit
    assert sent["max_tokens"] == 320 and sent["temperature"] == 0.0


def test_no_logprobs_requested_unless_asked_and_model_left_to_the_server(scripted):
    scripted.script = Script(parts=[chunk("hi", finish="length")])
    pieces, summary, _ = _consume(OpenAIBackend(scripted.url, timeout_s=5), HELLO)
    assert summary.finish_reason == "length" and summary.token_logprobs is None
    assert "logprobs" not in scripted.requests[0] and "model" not in scripted.requests[0]


def test_malformed_event_is_a_backend_error_after_the_good_text(scripted):
    scripted.script = Script(parts=[chunk("Princ"), sse("{not json")])
    pieces, _, error = _consume(OpenAIBackend(scripted.url, timeout_s=5), HELLO)
    assert pieces == ["Princ"] and "malformed data" in str(error)


def test_error_event_in_the_stream_is_reported(scripted):
    scripted.script = Script(parts=[chunk("a"), sse({"error": "CUDA out of memory"})])
    _, _, error = _consume(OpenAIBackend(scripted.url, timeout_s=5), HELLO)
    assert "reported an error: CUDA out of memory" in str(error)


def test_http_error_gives_status_and_server_message(scripted):
    message = {"error": {"message": "model 'x' not found", "type": "invalid_request_error"}}
    scripted.script = Script(status=404, parts=[json.dumps(message).encode()])
    _, _, error = _consume(OpenAIBackend(scripted.url, model="x", timeout_s=5), HELLO)
    assert "HTTP 404: model 'x' not found" in str(error)


def test_stream_that_stops_without_finishing_keeps_the_partial_text(scripted):
    scripted.script = Script(parts=[chunk("Principles: be"), chunk(" fair")])
    pieces, _, error = _consume(OpenAIBackend(scripted.url, timeout_s=5), HELLO)
    assert "".join(pieces) == "Principles: be fair"
    assert "without finishing the answer (19 characters received)" in str(error)


def test_server_dying_mid_stream_is_a_backend_error(scripted):
    scripted.script = Script(parts=[chunk("Critique: A is")], die_mid_stream=True)
    backend = OpenAIBackend(scripted.url, timeout_s=5)
    pieces, _, error = _consume(backend, HELLO)
    assert pieces == ["Critique: A is"] and "broke off the answer after 14 characters" in str(error)
    collected = backend.generate_batch([HELLO], GenerationOptions())[0]
    assert collected.finish_reason == "error" and collected.text == "Critique: A is"


def test_silent_server_times_out(scripted):
    scripted.script = Script(parts=[chunk("late", finish="stop")], delay_s=2.0)
    _, _, error = _consume(OpenAIBackend(scripted.url, timeout_s=0.3), HELLO)
    assert "did not answer within 0.3s" in str(error)


def test_refused_connection_names_the_url():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the socket closes
    url = f"http://127.0.0.1:{port}/v1"
    _, _, error = _consume(OpenAIBackend(url, timeout_s=5), HELLO)
    assert str(error) == f"cannot reach the judge server at {url}: connection refused"


def test_generate_batch_keeps_order_and_runs_concurrently(scripted):
    # Each request waits until all four have arrived: sequential requests would fail here.
    barrier = threading.Barrier(4, timeout=10)
    scripted.script = Script(parts=[chunk("same", finish="stop")], barrier=barrier)
    backend = OpenAIBackend(scripted.url, timeout_s=20, max_batch_size=4)
    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(4)]
    results = backend.generate_batch(conversations, GenerationOptions())
    assert [(r.text, r.error) for r in results] == [("same", None)] * 4
    asked = sorted(r["messages"][0]["content"] for r in scripted.requests)
    assert asked == ["q0", "q1", "q2", "q3"]


def test_next_token_logprobs_only_with_assistant_prefill(scripted):
    assert OpenAIBackend(scripted.url).next_token_logprobs([(HELLO, "[[")]) is None
    top = [{"token": "A", "logprob": -0.4}, {"token": "B", "logprob": -1.1}]
    reply = {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "A"},
                "logprobs": {"content": [{"token": "A", "logprob": -0.4, "top_logprobs": top}]},
                "finish_reason": "length",
            }
        ],
    }
    scripted.script = Script(parts=[json.dumps(reply).encode()])
    backend = OpenAIBackend(scripted.url, timeout_s=5, assistant_prefill=True)
    assert backend.next_token_logprobs([(HELLO, "[[")], top_k=5) == [{"A": -0.4, "B": -1.1}]
    sent = scripted.requests[-1]
    assert sent["messages"][-1] == {"role": "assistant", "content": "[["}
    assert sent["continue_final_message"] is True and sent["add_generation_prompt"] is False
    assert sent["max_tokens"] == 1 and sent["top_logprobs"] == 5 and sent["stream"] is False


@pytest.mark.parametrize(
    ("lines", "events"),
    [
        (["data: a", "", "data: b", ""], ["a", "b"]),
        (["data: line1", "data: line2", ""], ["line1\nline2"]),
        ([": comment", "event: x", "data:tight", "", "data: [DONE]", "", "data: after"], ["tight"]),
        (["data: last-without-blank"], ["last-without-blank"]),
        (["data: x\r", "\r"], ["x"]),
    ],
)
def test_iter_sse_data(lines, events):
    assert list(iter_sse_data(lines)) == events


def test_parse_chunk_reads_a_whole_completion_too():
    delta = parse_chunk({"choices": [{"message": {"content": "[[B]]"}, "finish_reason": "stop"}]})
    assert (delta.text, delta.finish_reason) == ("[[B]]", "stop")


# -- a real OpenAI-compatible server: transformers serve --------------------------------------


@dataclass
class ServedModel:
    url: str
    model: str
    process: subprocess.Popen
    log: Path


def start_transformers_serve(model_dir: Path, log: Path, dtype: str = "auto") -> ServedModel:
    """`transformers serve MODEL_DIR` on a free loopback port, ready, or a failed test."""
    pytest.importorskip("fastapi", reason="needs transformers[serving]")
    pytest.importorskip("uvicorn", reason="needs transformers[serving]")
    port = free_port()
    launcher = "import sys; from transformers.cli.transformers import main; sys.exit(main())"
    command = [sys.executable, "-c", launcher, "serve", str(model_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", dtype]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    process = start_server(command, f"http://127.0.0.1:{port}/health", log,
                           SERVER_START_LIMIT_S, env=env)  # fmt: skip
    return ServedModel(f"http://127.0.0.1:{port}/v1", str(model_dir), process, log)


def local_dtype() -> str:
    """The dtype name the local backend resolves "auto" to on this CPU."""
    from judges.backends.transformers_backend import resolve_dtype

    return str(resolve_dtype("auto", "cpu")).removeprefix("torch.")


def stop(served: ServedModel) -> None:
    stop_server(served.process, grace_s=15)


@pytest.fixture(scope="session")
def served_judge(embedded_model_dir, tmp_path_factory) -> Iterator[ServedModel]:
    # The server computes in the dtype the local backend picks on this CPU (bf16 where the CPU
    # has native bf16, else fp32): the same weights in another dtype can pick another first
    # greedy token ("Hello there!" in fp32, "I'm here" in bf16 on an AVX512-BF16 machine).
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    served = start_transformers_serve(embedded_model_dir, log, dtype=local_dtype())
    yield served
    stop(served)


@pytest.fixture
def served_backend(served_judge) -> Iterator[OpenAIBackend]:
    backend = OpenAIBackend(served_judge.url, model=served_judge.model, timeout_s=120)
    yield backend
    backend.close()


@pytest.mark.slow
def test_real_server_streams_and_agrees_with_the_local_backend(served_backend, embedded_backend):
    options = GenerationOptions(max_new_tokens=12)
    pieces, summary, error = _consume(served_backend, HELLO, options)
    assert error is None and len(pieces) > 1 and summary.text == "".join(pieces)
    assert summary.finish_reason in {"stop", "length"} and summary.prompt_tokens > 0
    local = embedded_backend.generate_batch([HELLO], options)[0]
    assert summary.text == local.text  # same weights, greedy: the same words
    assert summary.completion_tokens == local.completion_tokens


@pytest.mark.slow
def test_real_server_reports_length_and_ignores_logprob_requests(served_backend):
    options = GenerationOptions(max_new_tokens=4, top_logprobs=3)
    _, summary, error = _consume(served_backend, STORY, options)
    assert error is None and summary.finish_reason == "length"
    assert summary.completion_tokens == 4
    assert summary.token_logprobs is None  # transformers serve does not send them
    assert served_backend.next_token_logprobs([(HELLO, "[[")]) is None


@pytest.mark.slow
def test_real_server_batch_and_http_error(served_backend, served_judge):
    results = served_backend.generate_batch([HELLO, STORY], GenerationOptions(max_new_tokens=6))
    assert all(r.finish_reason in {"stop", "length"} and r.text for r in results)
    wrong = OpenAIBackend(served_judge.url, model="some-other-model", timeout_s=30)
    _, _, error = _consume(wrong, HELLO)
    assert "HTTP 400" in str(error) and "pinned" in str(error)


@pytest.mark.slow
def test_real_server_killed_mid_stream_keeps_the_partial_text(
    embedded_model_dir, embedded_backend, tmp_path
):
    served = start_transformers_serve(embedded_model_dir, tmp_path / "doomed.log", local_dtype())
    backend = OpenAIBackend(served.url, model=served.model, timeout_s=120)
    pieces: list[str] = []
    try:
        with pytest.raises(BackendError, match="broke off the answer after") as raised:
            for item in backend.stream(STORY, GenerationOptions(max_new_tokens=300)):
                assert not isinstance(item, Generation), "the answer finished before the kill"
                pieces.append(item)
                if len(pieces) == 1:
                    served.process.send_signal(signal.SIGKILL)
                    served.process.wait()
    finally:
        stop(served)
        backend.close()
    partial = "".join(pieces)
    assert partial and f"{len(partial)} characters" in str(raised.value)
    # What was kept is the start of the real greedy answer, not a placeholder.
    local = embedded_backend.generate_batch([STORY], GenerationOptions(max_new_tokens=16))[0]
    assert local.text.startswith(partial)
