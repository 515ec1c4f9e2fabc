"""Which labeled pairs a run trains on and which it holds out to measure the judge.

Held-out pairs are chosen by a seeded hash of the pair id, so a pair's side never changes when
more labels arrive, and a stored split reads back as the same value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Split:
    """Which labeled pairs train and which are held out; stored with the run as-is."""

    train: tuple[int, ...]
    heldout: tuple[int, ...]
    seed: int
    heldout_share: float
    method: str = "sha256(seed:pair_id) < share"

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
            method=record.get("method", cls.method),
        )


def split_unit(pair_id: int, seed: int) -> float:
    """A pair's fixed position in [0, 1): it lands in held-out when below the share."""
    digest = hashlib.sha256(f"grm-split:{seed}:{pair_id}".encode()).hexdigest()
    return int(digest[:16], 16) / float(1 << 64)


def split_pairs(pair_ids: Iterable[int], heldout_share: float, seed: int = 0) -> Split:
    """Deterministic train / held-out split; a pair's side depends only on its id and the seed.

    So later runs with more labels never move a held-out pair into training. With at least two
    pairs and 0 < share, each side gets at least one pair (the extreme hash values move).
    """
    if not 0.0 <= heldout_share < 1.0:
        raise ValueError(f"heldout_share must be in [0, 1), got {heldout_share}")
    ids = list(pair_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("split_pairs got the same pair id twice")
    ranked = sorted(ids, key=lambda pid: (split_unit(pid, seed), pid))
    heldout = {pid for pid in ranked if split_unit(pid, seed) < heldout_share}
    if heldout_share > 0 and len(ranked) >= 2:
        if not heldout:
            heldout.add(ranked[0])
        if len(heldout) == len(ranked):
            heldout.discard(ranked[-1])
    train = tuple(sorted(pid for pid in ids if pid not in heldout))
    return Split(
        train=train, heldout=tuple(sorted(heldout)), seed=seed, heldout_share=heldout_share
    )
