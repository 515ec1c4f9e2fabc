"""The data room: import files, export labels, load the demo pairs on a first start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from assets import asset_path
from judges.protocols import get_protocol
from judges.training_data import default_render_verdict
from judges.types import ChatTurn, PairInput, Verdict
from settings import Settings
from storage.exporter import LabeledPair, taught_reasoning
from vocabulary import COMPARING_VERDICTS, ProtocolName


class DataIO:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions

    def import_file(self, path: Path, dataset: str | None = None, format: str = "auto") -> Any:
        from storage.importer import import_file

        max_bytes = self.settings.max_import_mb * 1024 * 1024
        return import_file(self.sessions, path, dataset=dataset, format=format, max_bytes=max_bytes)

    def export(self, out_path: Path, format: str, dataset: str | None = None) -> int:
        from storage.exporter import export_labels

        return export_labels(
            self.sessions, out_path, format=format, dataset=dataset, sft_example=sft_example
        )

    def load_demo_if_empty(self) -> Any:
        from storage.demo import load_demo_if_empty

        return load_demo_if_empty(self.sessions, asset_path("demo_pairs.jsonl"))


def sft_example(item: LabeledPair) -> list[dict[str, str]] | None:
    """One label as an SFT example in the judge's own words: the pairwise judge's prompt (as the
    judge is sent it) and the answer it should have given, verdict in its format ([[C]] a tie)."""
    if item.verdict not in COMPARING_VERDICTS:
        return None
    prompt = item.prompt
    if item.prompt_turns:
        prompt = [ChatTurn(t["role"], t["content"]) for t in item.prompt_turns]
    pair = PairInput(prompt, item.response_a, item.response_b, item.reference)
    (messages,) = get_protocol(ProtocolName.PAIRWISE).conversations(pair)
    verdict_line = default_render_verdict(Verdict(item.verdict))
    answer = "\n\n".join(part for part in (taught_reasoning(item), verdict_line) if part)
    return [*messages, {"role": "assistant", "content": answer}]
