"""The one interface every judge backend implements: stream text, batch, next-token logprobs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from vocabulary import DEFAULT_MAX_NEW_TOKENS

Messages = list[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": "..."}]


def split_prefill(messages: Messages) -> tuple[Messages, str]:
    """(the conversation, text the assistant already said): a final assistant message is a prefill.

    A judge whose answer is started for it ("Principles:") continues that text instead of
    choosing its own first words; backends that can render a prompt do so by appending it.
    """
    if messages and messages[-1].get("role") == "assistant":
        return messages[:-1], messages[-1].get("content", "")
    return messages, ""


class BackendError(RuntimeError):
    """A backend could not produce (all of) an answer; the message says why, for a person."""


class GenerationOptions(BaseModel):
    """Sampling options; unknown keys are refused rather than silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    # >1 makes a token already in the prompt or the answer less likely (CTRL's rule, as in
    # transformers and vLLM: a positive logit is divided by it, a negative one multiplied).
    # The log-probs a backend reports stay the model's own, before the penalty.
    repetition_penalty: float = 1.0
    seed: int | None = None
    top_logprobs: int = 0  # >0: keep that many alternatives per generated token


@dataclass
class TokenLogprob:
    """One generated token with the log-probabilities of the best alternatives at its position."""

    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass
class Generation:
    """The end of one generation: its whole text, why it stopped, and what it cost."""

    text: str
    finish_reason: str  # "stop" | "length" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    token_logprobs: list[TokenLogprob] | None = None
    error: str | None = None
    cached_prompt_tokens: int = 0  # prompt tokens read from the engine's cache, not computed


class Backend(ABC):
    """A model that answers chat messages. Heavy libraries are imported by the subclass only."""

    name: str = "base"
    supports_logprobs: bool = False
    supports_prefill: bool = False  # continues a final assistant message (see split_prefill)
    supports_repetition_penalty: bool = False  # applies GenerationOptions.repetition_penalty
    max_batch_size: int = 1  # how many requests one batched call should carry

    @property
    @abstractmethod
    def model_name(self) -> str: ...

    @abstractmethod
    def stream(self, messages: Messages, options: GenerationOptions) -> Iterator[str | Generation]:
        """Yield text pieces as they are generated, then exactly one Generation summary.

        Raises BackendError when the backend fails; text already yielded stays the caller's.
        """

    def generate_batch(
        self, conversations: list[Messages], options: GenerationOptions
    ) -> list[Generation]:
        """Answer many conversations; backends that can batch override this."""
        return [self._collect(messages, options) for messages in conversations]

    def next_token_logprobs(
        self, requests: list[tuple[Messages, str]], top_k: int = 20
    ) -> list[dict[str, float]] | None:
        """For each (messages, assistant_prefix): log-probs of the likeliest next tokens.

        Returns None when the backend cannot give them (the caller then reports no probability).
        """
        return None

    def warm(self, messages: Messages) -> bool:
        """Read a prompt ahead of its judgment, where that makes the first words come sooner;
        True when it is ready. The default reads nothing."""
        return False

    def close(self) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Free the model; the default holds nothing."""

    def _collect(self, messages: Messages, options: GenerationOptions) -> Generation:
        pieces: list[str] = []
        try:
            for item in self.stream(messages, options):
                if isinstance(item, Generation):
                    return item
                pieces.append(item)
        except BackendError as exc:
            # Keep what arrived before the failure: the caller marks it, never discards it.
            return Generation(text="".join(pieces), finish_reason="error", error=str(exc))
        error = "backend ended without a summary"
        return Generation(text="".join(pieces), finish_reason="error", error=error)
