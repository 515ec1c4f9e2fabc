"""A scripted judge backend for unit tests: known texts, known log-probabilities, recorded calls."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from judges.backends import base


@dataclass
class FakeReply:
    """One scripted answer. `fail_after` characters are streamed, then BackendError is raised."""

    text: str
    finish_reason: str = "stop"
    token_logprobs: list[base.TokenLogprob] | None = None
    fail_after: int | None = None
    error: str = "connection reset by fake server"


Script = Sequence[str | FakeReply] | Callable[[base.Messages], str | FakeReply]
ProbeScript = Callable[[base.Messages, str], dict[str, float] | None]


@dataclass
class FakeBackend(base.Backend):
    """Answers from a script: a list consumed in call order, or a function of the messages.

    `probe` answers next_token_logprobs (None: this backend has no log-probabilities).
    Every call is recorded: `streamed` (messages, options), `batches` (sizes), `probes`.
    """

    script: Script = field(default_factory=list)
    probe: ProbeScript | None = None
    chunk_size: int = 3
    max_batch_size: int = 4
    streamed: list[tuple[base.Messages, base.GenerationOptions]] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    batch_options: list[base.GenerationOptions] = field(default_factory=list)
    probes: list[tuple[base.Messages, str]] = field(default_factory=list)
    name: str = "fake"

    def __post_init__(self) -> None:
        self._queue = [] if callable(self.script) else list(self.script)
        self.supports_logprobs = self.probe is not None

    @property
    def model_name(self) -> str:
        return "fake-judge"

    def _reply(self, messages: base.Messages) -> FakeReply:
        if callable(self.script):
            reply = self.script(messages)
        elif self._queue:
            reply = self._queue.pop(0)
        else:
            raise AssertionError("FakeBackend: the script ran out of replies")
        return reply if isinstance(reply, FakeReply) else FakeReply(reply)

    def stream(
        self, messages: base.Messages, options: base.GenerationOptions
    ) -> Iterator[str | base.Generation]:
        self.streamed.append((messages, options))
        reply = self._reply(messages)
        text = reply.text if reply.fail_after is None else reply.text[: reply.fail_after]
        for start in range(0, len(text), self.chunk_size):
            yield text[start : start + self.chunk_size]
        if reply.fail_after is not None:
            raise base.BackendError(reply.error)
        yield self._generation(reply)

    def generate_batch(
        self, conversations: list[base.Messages], options: base.GenerationOptions
    ) -> list[base.Generation]:
        if len(conversations) > self.max_batch_size:
            raise AssertionError(f"batch of {len(conversations)} > {self.max_batch_size}")
        self.batches.append(len(conversations))
        self.batch_options.append(options)
        out = []
        for messages in conversations:
            reply = self._reply(messages)
            if reply.fail_after is not None:
                raise base.BackendError(reply.error)
            out.append(self._generation(reply))
        return out

    def next_token_logprobs(
        self, requests: list[tuple[base.Messages, str]], top_k: int = 20
    ) -> list[dict[str, float]] | None:
        if self.probe is None:
            return None
        self.probes.extend(requests)
        return [self.probe(messages, prefix) or {} for messages, prefix in requests]

    @staticmethod
    def _generation(reply: FakeReply) -> base.Generation:
        return base.Generation(
            text=reply.text,
            finish_reason=reply.finish_reason,
            prompt_tokens=100,
            completion_tokens=max(1, len(reply.text) // 4),
            token_logprobs=reply.token_logprobs,
        )


def user_text(messages: base.Messages) -> str:
    """The user message a judge was sent (to script replies by content)."""
    return next(m["content"] for m in messages if m["role"] == "user")
