"""Small helpers every tab shares: who is asking, which dataset is chosen, readable errors."""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import gradio as gr
from gradio.blocks import Block
from pydantic import ValidationError

if TYPE_CHECKING:
    from services import Services

log = logging.getLogger(__name__)

Changes = dict[Block, Any]  # what a handler returns: each component it changes -> new value
ALL_DATASETS = 0  # dropdown value meaning "every dataset"
MAX_NAME_LENGTH = 80


def annotator_of(request: gr.Request | None, chosen_name: str | None) -> str | None:
    """Who is labeling: the logged-in user when auth is on (a name sent by the page is ignored,
    so nobody can label as someone else), else the name this browser session gave."""
    user = getattr(request, "username", None) if request is not None else None
    if user:
        return str(user)
    return chosen_name or None


def check_name(raw: str | None) -> str:
    """A person's display name, stripped; ValueError says what is wrong with it."""
    name = unicodedata.normalize("NFC", (raw or "").strip())
    if not name:
        raise ValueError("Type your name to start labeling.")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"Names are at most {MAX_NAME_LENGTH} characters.")
    if any(unicodedata.category(ch)[0] == "C" for ch in name):
        raise ValueError("Names cannot contain control or invisible characters.")
    return name


def dataset_choices(services: Services) -> list[tuple[str, int]]:
    """Dropdown choices: every dataset by name with its size, and "All datasets" first."""
    datasets = services.datasets()
    total = sum(d.pair_count for d in datasets)
    choices = [(f"All datasets ({total} pairs)", ALL_DATASETS)]
    return choices + [(f"{d.name} ({d.pair_count} pairs)", d.id) for d in datasets]


def dataset_id_of(value: Any) -> int | None:
    """The dropdown value as a dataset id (None for all datasets)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number or None


def dataset_name_of(services: Services, value: Any) -> str | None:
    """The dropdown value as a dataset name (services' batch/export calls take names)."""
    dataset_id = dataset_id_of(value)
    if dataset_id is None:
        return None
    return next((d.name for d in services.datasets() if d.id == dataset_id), None)


def refresh_datasets(services: Services, current: Any = None) -> Any:
    """An update for a dataset dropdown with fresh counts. The value is sent only when the
    current choice is gone: the person may have picked another dataset while this ran, and an
    update carrying the value seen when it started would undo their pick."""
    choices = dataset_choices(services)
    if current in {value for _, value in choices}:
        return gr.update(choices=choices)
    return gr.update(choices=choices, value=ALL_DATASETS)


# Database failures a person can act on, in their words (matched in the driver's message).
PLAIN_REASONS = {
    "database is locked": "the database is busy (another program holds it); retry in a moment",
    "disk is full": "the disk is full",
    "readonly database": "the database is read-only",
    "could not connect": "the database server cannot be reached",
}


def explain(exc: BaseException) -> str:
    """A failure as one line for a person; the stack trace goes to the log only."""
    log.warning("request failed: %s", exc, exc_info=exc)
    if isinstance(exc, ValidationError):  # its first line names only the model, not the field
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()
        )
    message = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    for needle, reason in PLAIN_REASONS.items():
        if needle in message.lower():
            return reason
    return re.sub(r"^\([\w.]+\)\s*", "", message)[:500]  # drop "(sqlite3.OperationalError) "


View = TypeVar("View")


class TabHandlers(Generic[View]):
    """What a tab's handlers hold: the services they call and the tab's components (`ui`),
    the keys of the {component: value} changes they return."""

    def __init__(self, services: Services, ui: View) -> None:
        self.services = services
        self.ui = ui


class ExportFolders:
    """Fresh folders for files handed to the browser, inside this app's own temp folder:
    Gradio copies a file for the download after the handler returns, so older ones are
    removed here (the newest `keep` stay while their downloads may still be copied), and the
    whole folder when the app's process ends."""

    def __init__(self, prefix: str, keep: int = 8) -> None:
        self.prefix = prefix
        self.keep = keep
        self._root: tempfile.TemporaryDirectory | None = None

    def fresh(self) -> Path:
        if self._root is None:
            self._root = tempfile.TemporaryDirectory(prefix=self.prefix)
        root = Path(self._root.name)
        for old in sorted(root.iterdir(), key=lambda p: p.stat().st_mtime)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=root))


EXPORTS = ExportFolders("grm-exports-")  # one per app process: Data tab and prompt exports
