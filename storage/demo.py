"""Give a new user something to label: load the shipped demo pairs into an empty database."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage.db import reading
from storage.importer import ImportReport, import_file
from storage.models import Pair

log = logging.getLogger(__name__)

DEMO_DATASET = "demo"


def load_demo_if_empty(
    session_factory: sessionmaker[Session], path: str | Path
) -> ImportReport | None:
    """Import `path` as dataset "demo" when the database holds no pairs; None when it has some."""
    with reading(session_factory) as session:
        has_pairs = session.scalar(select(Pair.id).limit(1)) is not None
    if has_pairs:
        return None
    report = import_file(session_factory, path, dataset=DEMO_DATASET, format="pairs")
    log.info("loaded %d demo pairs from %s", report.new, path)
    return report
