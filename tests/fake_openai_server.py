"""A small OpenAI-compatible judge server for fault tests: /v1/chat/completions, streamed as SSE.

Each request is answered according to the server's `mode` (one of MODES), so a test can make a
real HTTP server stall, repeat itself, forget the verdict, contradict itself or die:

- "verdict": a well-formed judgment ending in "[[A]]" (the good case, used to retry)
- "slow": the same judgment, each answer started after SLOW_DELAY_S (a judge to kill mid-batch)
- "stall": a few chunks, then silence until the server is released or shut down
- "repeat": the same phrase once per token until the request's max_tokens, finish_reason "length"
- "repeat_forever": the same phrase without end, ignoring max_tokens (a misbehaving server)
- "no_verdict": a complete answer that never states a verdict
- "twice": "[[A]]" and then "[[B]]" in one answer
- "hang": a few chunks, then waits (the test SIGKILLs the process)
- "suicide": a few chunks, then the process SIGKILLs itself

Run in-process (`FakeJudgeServer().start()`) or as its own process, so that it can be killed:
`python tests/fake_openai_server.py MODE` prints "PORT <n>" once it listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = (
    "verdict",
    "slow",
    "stall",
    "repeat",
    "repeat_forever",
    "no_verdict",
    "twice",
    "hang",
    "suicide",
)
GOOD_ANSWER = (
    "Principles: the better answer is correct and answers the question asked.\n"
    "Critique: Response A answers the question correctly; Response B does not.\n"
    "Verdict: [[A]]"
)
PARTIAL_CHUNKS = ["Principles: ", "correctness ", "first.\n", "Critique: ", "Response A "]
PARTIAL_TEXT = "".join(PARTIAL_CHUNKS)
REPEATED = "I keep thinking. "
NO_VERDICT_ANSWER = (
    "Principles: helpfulness.\nCritique: Both responses have merits and flaws; hard to say."
)
TWICE_ANSWER = (
    "Critique: Response A is accurate.\nVerdict: [[A]]\n"
    "On reflection Response B is more complete.\nVerdict: [[B]]"
)
SLOW_DELAY_S = 0.25
STALL_LIMIT_S = 60.0  # a stalled handler gives up by itself, so no thread outlives a test run


def words(text: str) -> list[str]:
    """The text in word-sized chunks (spaces kept), the way a server streams tokens."""
    pieces, current = [], ""
    for char in text:
        current += char
        if char in " \n":
            pieces.append(current)
            current = ""
    return pieces + ([current] if current else [])


def event(content: str | None = None, finish: str | None = None, usage: dict | None = None):
    """One `chat.completion.chunk` as an SSE event."""
    delta = {"content": content} if content is not None else {}
    body: dict = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "fake-judge",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        body = {**body, "choices": [], "usage": usage}
    return f"data: {json.dumps(body)}\n\n".encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeJudgeServer

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.requests.append(body)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            getattr(self, f"_{self.server.mode}")(int(body.get("max_tokens") or 64))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout, token bound): nothing more to say

    def _send(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _finish(self, finish: str, completion_tokens: int) -> None:
        self._send(event(finish=finish))
        self._send(event(usage={"prompt_tokens": 50, "completion_tokens": completion_tokens}))
        self._send(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _answer(self, text: str) -> None:
        pieces = words(text)
        for piece in pieces:
            self._send(event(piece))
        self._finish("stop", len(pieces))

    def _partial(self) -> None:
        for piece in PARTIAL_CHUNKS:
            self._send(event(piece))

    def _verdict(self, max_tokens: int) -> None:
        self._answer(GOOD_ANSWER)

    def _slow(self, max_tokens: int) -> None:
        self.server.released.wait(SLOW_DELAY_S)
        self._answer(GOOD_ANSWER)

    def _no_verdict(self, max_tokens: int) -> None:
        self._answer(NO_VERDICT_ANSWER)

    def _twice(self, max_tokens: int) -> None:
        self._answer(TWICE_ANSWER)

    def _stall(self, max_tokens: int) -> None:
        self._partial()
        self.server.released.wait(STALL_LIMIT_S)
        self.close_connection = True

    def _repeat(self, max_tokens: int) -> None:
        for _ in range(max_tokens):
            self._send(event(REPEATED))
        self._finish("length", max_tokens)

    def _repeat_forever(self, max_tokens: int) -> None:
        for _ in range(1_000_000):  # bounded all the same: the client must hang up long before
            if self.server.released.is_set():
                break
            self._send(event(REPEATED))
        self.close_connection = True

    def _hang(self, max_tokens: int) -> None:
        self._partial()
        print("SENT", flush=True)  # tells a test driving this process that the chunks are out
        self.server.released.wait(STALL_LIMIT_S)
        self.close_connection = True

    def _suicide(self, max_tokens: int) -> None:
        self._partial()
        os.kill(os.getpid(), signal.SIGKILL)

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


class FakeJudgeServer(ThreadingHTTPServer):
    """The fake server on a free loopback port; `mode` may be changed between requests."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, mode: str = "verdict") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = mode
        self.requests: list[dict] = []
        self.released = threading.Event()  # set: stalled handlers end
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        self.mode = mode

    def start(self) -> FakeJudgeServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self.shutdown()
        self.server_close()

    def handle_error(self, request: socket.socket, client_address: object) -> None:
        pass  # clients that hang up early are what these tests are about


def main(argv: list[str]) -> int:
    server = FakeJudgeServer()
    server.set_mode(argv[0] if argv else "verdict")
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
