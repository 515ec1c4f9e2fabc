"""A judge served by any OpenAI-compatible server, streamed over SSE with plain httpx.

Works with `vllm serve`, `transformers serve`, llama.cpp's server and the OpenAI API itself.
Per-token log-probabilities are requested when asked for and kept when the server sends them
(transformers serve ignores the request; the Generation then has `token_logprobs=None`).

`next_token_logprobs` needs the server to continue a partial assistant message, which the
OpenAI API cannot do; vLLM can (`continue_final_message`). A server that silently ignored that
field would answer from the wrong position, so it is used only when `assistant_prefill=True`
says the server is known to honour it; otherwise the method returns None.

A stream that goes on well past `max_new_tokens` (a server ignoring max_tokens, repeating
itself forever) is cut off with a BackendError that says so; the text so far stays the caller's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from judges.backends import base

log = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20  # the OpenAI API's and vLLM's default ceiling


@dataclass
class ChunkDelta:
    """What one streamed chunk adds: text, token log-probs, and (at the end) reason and usage."""

    text: str = ""
    logprobs: list[base.TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class OpenAIBackend(base.Backend):
    """Chat completions from a server at `base_url` (e.g. http://127.0.0.1:8000/v1)."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str = "not-needed",
        timeout_s: float = 60.0,
        max_batch_size: int = 8,
        assistant_prefill: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model  # None: let a single-model server use the model it serves
        self.timeout_s = timeout_s
        self.max_batch_size = max_batch_size
        self.assistant_prefill = assistant_prefill
        self.supports_logprobs = assistant_prefill  # i.e. next_token_logprobs can answer
        self.load_seconds = 0.0
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
        )

    @property
    def model_name(self) -> str:
        return f"{self.model or 'default'} @ {self.base_url}"

    def stream(
        self, messages: base.Messages, options: base.GenerationOptions
    ) -> Iterator[str | base.Generation]:
        """Yield content deltas as the server sends them, then one Generation."""
        body = build_chat_request(self.model, messages, options, stream=True)
        pieces: list[str] = []
        logprobs: list[base.TokenLogprob] = []
        end = ChunkDelta()
        limit = max_text_chunks(options.max_new_tokens)
        with self._errors_as_backend_errors(pieces):
            with self._client.stream("POST", "/chat/completions", json=body) as response:
                self._raise_for_status(response)
                for payload in iter_sse_data(response.iter_lines()):
                    delta = parse_chunk(self._decode(payload))
                    logprobs.extend(delta.logprobs)
                    _merge_end(end, delta)
                    if delta.text:
                        if len(pieces) >= limit:  # leaving the block closes the connection
                            raise base.BackendError(self._overrun_message(options, pieces))
                        pieces.append(delta.text)
                        yield delta.text
        if end.finish_reason is None:
            raise base.BackendError(
                f"the judge server at {self.base_url} ended the stream without finishing the "
                f"answer ({len(''.join(pieces))} characters received)"
            )
        yield base.Generation(
            text="".join(pieces),
            finish_reason="length" if end.finish_reason == "length" else "stop",
            prompt_tokens=end.prompt_tokens or 0,
            completion_tokens=end.completion_tokens or 0,
            token_logprobs=logprobs or None,
        )

    def generate_batch(
        self, conversations: list[base.Messages], options: base.GenerationOptions
    ) -> list[base.Generation]:
        """Send up to `max_batch_size` requests at once; the server batches them."""
        workers = max(1, min(self.max_batch_size, len(conversations)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda m: self._collect(m, options), conversations))

    def next_token_logprobs(
        self, requests: list[tuple[base.Messages, str]], top_k: int = 20
    ) -> list[dict[str, float]] | None:
        """Only with `assistant_prefill` (vLLM): one-token completions continuing each prefix."""
        if not self.assistant_prefill:
            return None
        workers = max(1, min(self.max_batch_size, len(requests)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            tables = list(pool.map(lambda r: self._prefix_logprobs(*r, top_k), requests))
        return None if any(t is None for t in tables) else tables

    def close(self) -> None:
        self._client.close()

    # -- internals -------------------------------------------------------------------------

    def _prefix_logprobs(self, messages: base.Messages, prefix: str, top_k: int) -> dict | None:
        body = build_prefill_request(self.model, messages, prefix, top_k)
        with self._errors_as_backend_errors([]):
            response = self._client.post("/chat/completions", json=body)
            self._raise_for_status(response)
        choices = self._decode(response.text).get("choices") or [{}]
        content = (choices[0].get("logprobs") or {}).get("content") or []
        return parse_token_logprobs(content[:1])[0].top if content else None

    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        response.read()
        raise base.BackendError(
            f"the judge server at {self.base_url} answered HTTP {response.status_code}: "
            f"{server_message(response.text)}"
        )

    def _decode(self, payload: str) -> dict:
        try:
            data = json.loads(payload)
        except json.JSONDecodeError:
            raise base.BackendError(
                f"the judge server at {self.base_url} sent malformed data: {payload[:200]!r}"
            ) from None
        if not isinstance(data, dict):
            raise base.BackendError(f"the judge server at {self.base_url} sent {payload[:200]!r}")
        if data.get("error"):
            raise base.BackendError(
                f"the judge server at {self.base_url} reported an error: {server_message(payload)}"
            )
        return data

    @contextmanager
    def _errors_as_backend_errors(self, pieces: list[str]) -> Iterator[None]:
        """Turn httpx failures into BackendErrors that say what happened, for a person."""
        try:
            yield
        except httpx.HTTPError as exc:
            raise base.BackendError(self._transport_message(exc, pieces)) from exc

    def _overrun_message(self, options: base.GenerationOptions, pieces: list[str]) -> str:
        return (
            f"the judge server at {self.base_url} kept streaming past max_new_tokens="
            f"{options.max_new_tokens} (it ignores max_tokens); cut off after "
            f"{len(pieces)} pieces, {len(''.join(pieces))} characters"
        )

    def _transport_message(self, exc: httpx.HTTPError, pieces: list[str]) -> str:
        received = f" after {len(''.join(pieces))} characters" if pieces else ""
        if isinstance(exc, httpx.ConnectError):
            return f"cannot reach the judge server at {self.base_url}: connection refused"
        if isinstance(exc, httpx.TimeoutException):
            return (
                f"the judge server at {self.base_url} did not answer within "
                f"{self.timeout_s:g}s{received}"
            )
        return f"the judge server at {self.base_url} broke off the answer{received}: {exc}"


def max_text_chunks(max_new_tokens: int) -> int:
    """How many text chunks a stream may carry before the server is known to overrun its limit.

    A server sends at least one token per non-empty chunk, so more than `max_new_tokens` chunks
    means it ignored max_tokens (a server repeating itself forever would otherwise hold the
    judge, and its queue slot, for good). Twice the limit plus a margin leaves room for servers
    that split a token over two chunks.
    """
    return 2 * max_new_tokens + 16


def build_chat_request(
    model: str | None, messages: base.Messages, options: base.GenerationOptions, stream: bool
) -> dict:
    """The JSON body of a chat completion request for these options."""
    body: dict = {
        "messages": messages,
        "stream": stream,
        "max_tokens": options.max_new_tokens,
        "temperature": options.temperature,
        "top_p": options.top_p,
    }
    if model:
        body["model"] = model
    if stream:
        body["stream_options"] = {"include_usage": True}
    if options.seed is not None:
        body["seed"] = options.seed
    if options.top_logprobs > 0:
        body["logprobs"] = True
        body["top_logprobs"] = min(options.top_logprobs, MAX_TOP_LOGPROBS)
    return body


def build_prefill_request(
    model: str | None, messages: base.Messages, prefix: str, top_k: int
) -> dict:
    """A one-token request continuing `prefix` as the assistant (vLLM's extra fields)."""
    options = base.GenerationOptions(max_new_tokens=1, temperature=0.0, top_logprobs=top_k)
    prefilled = [*messages, {"role": "assistant", "content": prefix}]
    body = build_chat_request(model, prefilled, options, stream=False)
    body.update(add_generation_prompt=False, continue_final_message=True)
    return body


def iter_sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The `data` of each server-sent event, until `[DONE]`; comments and other fields skipped."""
    data: list[str] = []
    for line in lines:
        line = line.rstrip("\r")
        if not line:
            if data:
                payload = "\n".join(data)
                data = []
                if payload.strip() == "[DONE]":
                    return
                yield payload
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data and "\n".join(data).strip() != "[DONE]":
        yield "\n".join(data)  # a last event without its blank line


def parse_chunk(chunk: dict) -> ChunkDelta:
    """One `chat.completion.chunk` (or a whole `chat.completion`) as a ChunkDelta."""
    delta = ChunkDelta()
    usage = chunk.get("usage") or {}
    delta.prompt_tokens = usage.get("prompt_tokens")
    delta.completion_tokens = usage.get("completion_tokens")
    for choice in chunk.get("choices") or []:
        content = (choice.get("delta") or choice.get("message") or {}).get("content")
        delta.text += content or ""
        delta.logprobs += parse_token_logprobs((choice.get("logprobs") or {}).get("content") or [])
        delta.finish_reason = choice.get("finish_reason") or delta.finish_reason
    return delta


def parse_token_logprobs(content: list[dict]) -> list[base.TokenLogprob]:
    """OpenAI `logprobs.content` entries as TokenLogprobs."""
    return [
        base.TokenLogprob(
            token=entry.get("token", ""),
            logprob=float(entry.get("logprob", float("-inf"))),
            top={alt["token"]: float(alt["logprob"]) for alt in entry.get("top_logprobs") or []},
        )
        for entry in content
    ]


def server_message(text: str) -> str:
    """The human part of a server's error body (OpenAI, FastAPI or plain text)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text.strip()[:500] or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error") or data.get("detail") or data.get("message")
        if isinstance(error, dict):
            error = error.get("message") or error
        if error:
            return str(error)[:500]
    return text.strip()[:500]


def _merge_end(end: ChunkDelta, delta: ChunkDelta) -> None:
    end.finish_reason = delta.finish_reason or end.finish_reason
    end.prompt_tokens = delta.prompt_tokens or end.prompt_tokens
    end.completion_tokens = delta.completion_tokens or end.completion_tokens
