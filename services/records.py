"""The hand-offs between storage and judges: a stored pair as a judge's input, a judge's sample
as a judgment row, dataclasses as plain dicts."""

from __future__ import annotations

import dataclasses
from typing import Any

from judges.types import ChatTurn, Judgment, PairInput
from storage import queries


def pair_input(view: queries.PairView) -> PairInput:
    """A stored pair as the judges see it (chat turns stay turns)."""
    prompt: str | list[ChatTurn] = view.prompt  # type: ignore[assignment]
    if view.is_chat:
        prompt = [ChatTurn(t["role"], t["content"]) for t in view.prompt]
    return PairInput(
        prompt=prompt,
        response_a=view.response_a,
        response_b=view.response_b,
        reference=view.reference,
        pair_id=view.id,
    )


def judgment_row(
    judgment: Judgment, judge_version_id: int | None, aggregation: str | None = None
) -> dict[str, Any]:
    """A judges.Judgment as the column values of storage's judgment table."""
    scores = judgment.scores or (None, None)
    return {
        "pair_id": judgment.pair_id,
        "judge_version_id": judge_version_id,
        "protocol": judgment.protocol,
        "prompt_version": judgment.prompt_version,
        "verdict": judgment.verdict.value,
        "status": judgment.status.value,
        "principles": judgment.principles,
        "critique": judgment.critique,
        "score_a": scores[0],
        "score_b": scores[1],
        "verdict_probability": judgment.verdict_probability,
        "verdict_source": judgment.verdict_source,
        "raw_text": judgment.raw_text,
        "error": judgment.error,
        "swapped": judgment.swapped,
        "sample_index": judgment.sample_index,
        "prompt_tokens": judgment.prompt_tokens,
        "completion_tokens": judgment.completion_tokens,
        "latency_s": judgment.latency_s,
        "prompt_messages": judgment.prompt_messages,
        "aggregation": aggregation,
    }


def as_dict(value: Any) -> Any:
    """Dataclass values as plain dicts (for JSON output and UI tables)."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
