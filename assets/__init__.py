"""Files shipped with the app (demo pairs, CSS), installed as package data: find them with
`asset_path(name)`, which works from a wheel as well as from a source checkout."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def asset_path(name: str) -> Path:
    return Path(str(files(__name__).joinpath(name)))
