"""The data room: import files, export labels, load the demo pairs on a first start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from assets import asset_path
from settings import Settings


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

        return export_labels(self.sessions, out_path, format=format, dataset=dataset)

    def load_demo_if_empty(self) -> Any:
        from storage.demo import load_demo_if_empty

        return load_demo_if_empty(self.sessions, asset_path("demo_pairs.jsonl"))
