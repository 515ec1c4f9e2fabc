"""Fit a pair's texts into a training prompt budget, cut by the judge prompt's own rule.

Training counts its budget in tokens (the model's context is tokens); the judge's prompt cuts
each text to a character budget (`judges.prompts.truncate_middle`: two thirds head, one third
tail, at word boundaries, the cut marked "[... N characters omitted ...]"). Both apply to a
training prompt, so there is one rule: `truncate_to_fit` searches for the character budget whose
cut fits the token budget and lets the prompt's function make the cut. A text cut for training
then reads like a text cut at inference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from judges.prompts import truncate_middle
from judges.types import ChatTurn, PairInput

# How long a text is for a budget: characters by default, or a tokenizer's tokens.
Measure = Callable[[str], int]
CHARACTERS: Measure = len


def token_length(tokenizer: Any) -> Measure:
    """A Measure in tokens of a Hugging Face tokenizer (no special tokens added)."""

    def length(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    return length


def truncate_to_fit(text: str, keep: int, measure: Measure = CHARACTERS) -> str:
    """`text` cut by `truncate_middle` so that it measures at most `keep` (marker included).

    In characters that is one cut; in tokens the character budget starts at the text's own
    characters-per-token share and shrinks until the cut fits.
    """
    length = measure(text)
    if length <= keep:
        return text
    chars = len(text) * keep // length
    while chars > 0:
        cut = truncate_middle(text, chars)
        size = measure(cut)
        if size <= keep:
            return cut
        chars = min(chars - 1, chars * keep // size)
    return ""


def allocate_budget(lengths: Sequence[int], budget: int) -> list[int]:
    """Share `budget` among texts: short ones keep everything, long ones split the rest evenly."""
    allowances = [0] * len(lengths)
    remaining = budget
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    for position, index in enumerate(order):
        share = remaining // (len(order) - position)
        allowances[index] = min(lengths[index], share)
        remaining -= allowances[index]
    return allowances


def truncate_pair(pair: PairInput, budget: int | None, measure: Measure = CHARACTERS) -> PairInput:
    """The pair with prompt turns, both responses and the reference fitted into `budget` together.

    The budget covers the texts only, not the protocol's template around them. A pair that
    already fits is returned unchanged.
    """
    if budget is None:
        return pair
    texts = _pair_texts(pair)
    lengths = [measure(t) for t in texts]
    if sum(lengths) <= budget:
        return pair
    allowances = allocate_budget(lengths, budget)
    cut = [truncate_to_fit(t, keep, measure) for t, keep in zip(texts, allowances, strict=True)]
    return _with_texts(pair, cut)


def _pair_texts(pair: PairInput) -> list[str]:
    prompt = [pair.prompt] if isinstance(pair.prompt, str) else [t.content for t in pair.prompt]
    reference = [pair.reference] if pair.reference else []
    return [*prompt, pair.response_a, pair.response_b, *reference]


def _with_texts(pair: PairInput, texts: list[str]) -> PairInput:
    turns = 1 if isinstance(pair.prompt, str) else len(pair.prompt)
    prompt_texts, rest = texts[:turns], texts[turns:]
    if isinstance(pair.prompt, str):
        prompt: str | list[ChatTurn] = prompt_texts[0]
    else:
        prompt = [replace(t, content=c) for t, c in zip(pair.prompt, prompt_texts, strict=True)]
    reference = rest[2] if pair.reference else pair.reference
    return replace(pair, prompt=prompt, response_a=rest[0], response_b=rest[1], reference=reference)
