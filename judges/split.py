"""Which labeled pairs a run trains on and which it holds out to measure the judge.

Held-out pairs are chosen by a seeded hash of their prompt: pairs that share a prompt (MT-Bench
has several answer pairs per question) land on the same side, so the held-out figure is never
measured on a question the judge was trained on. A pair's side never changes when more labels
arrive, and a stored split reads back as the same value.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

BY_PROMPT = "sha256(seed:prompt) < share, pairs of one prompt together"
# The rule before prompts were grouped; a stored split without a method was made by it.
BY_PAIR = "sha256(seed:pair_id) < share"


@dataclass(frozen=True)
class Split:
    """Which labeled pairs train and which are held out; stored with the run as-is."""

    train: tuple[int, ...]
    heldout: tuple[int, ...]
    seed: int
    heldout_share: float
    method: str = BY_PROMPT

    def as_record(self) -> dict[str, Any]:
        return asdict(self) | {"train": list(self.train), "heldout": list(self.heldout)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Split:
        """The split `as_record` stored."""
        return cls(
            train=tuple(record["train"]),
            heldout=tuple(record["heldout"]),
            seed=record["seed"],
            heldout_share=record["heldout_share"],
            method=record.get("method", BY_PAIR),
        )


def split_unit(key: str, seed: int) -> float:
    """A prompt's (or pair id's) fixed position in [0, 1): held out when below the share."""
    digest = hashlib.sha256(f"grm-split:{seed}:{key}".encode()).hexdigest()
    return int(digest[:16], 16) / float(1 << 64)


def split_pairs(prompts: Iterable[tuple[int, str]], heldout_share: float, seed: int = 0) -> Split:
    """Deterministic train / held-out split of (pair id, prompt text) items, a prompt at a time.

    A pair's side depends only on its prompt and the seed, so later runs with more labels never
    move a held-out pair into training. With at least two prompts and 0 < share, each side gets
    at least one prompt (the extreme hash values move). Labels that all share one prompt are
    split a pair at a time (`BY_PAIR`): there is no other prompt to hold out.
    """
    if not 0.0 <= heldout_share < 1.0:
        raise ValueError(f"heldout_share must be in [0, 1), got {heldout_share}")
    groups, method = _pairs_by_prompt(prompts), BY_PROMPT
    if len(groups) == 1:
        groups, method = {str(pid): [pid] for pid in next(iter(groups.values()))}, BY_PAIR
    ranked = sorted(groups, key=lambda key: (split_unit(key, seed), key))
    heldout = {key for key in ranked if split_unit(key, seed) < heldout_share}
    if heldout_share > 0 and len(ranked) >= 2:
        if not heldout:
            heldout.add(ranked[0])
        if len(heldout) == len(ranked):
            heldout.discard(ranked[-1])
    held = sorted(pid for key in heldout for pid in groups[key])
    train = sorted(pid for key in ranked if key not in heldout for pid in groups[key])
    return Split(tuple(train), tuple(held), seed, heldout_share, method)


def _pairs_by_prompt(prompts: Iterable[tuple[int, str]]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    seen: set[int] = set()
    for pair_id, prompt in prompts:
        if pair_id in seen:
            raise ValueError(f"split_pairs got pair id {pair_id} twice")
        seen.add(pair_id)
        groups[prompt.strip()].append(pair_id)
    return groups
