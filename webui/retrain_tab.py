"""The Retrain tab (placeholder until the retraining helper fills in start, watch, activate)."""

from __future__ import annotations

from typing import Any

import gradio as gr


def build_retrain_tab(services: Any) -> gr.Tab:
    """A note until the retraining job's tab lands (issue 5)."""
    with gr.Tab("Retrain", id="retrain", elem_id="grm-tab-retrain") as tab:
        gr.Markdown(
            "Retraining the judge on your corrections is coming here: start a run, watch its "
            "progress, compare the new judge with the current one and activate it. "
            "Until then use `grm train`."
        )
    return tab
