"""Stand-in components for calling a tab's handlers without laying the tab out."""

from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

import gradio as gr

View = TypeVar("View")


def stand_ins(view: type[View]) -> View:
    """`view` (a tab's dataclass of components) filled with fresh, unrendered components: the
    handlers key what they return by them, and a test reads it back by the same names."""
    return view(**{field.name: gr.State() for field in fields(view)})  # type: ignore[arg-type]
