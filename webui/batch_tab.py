"""The Batch tab: judge every pending pair of a dataset, with progress, time left and cancel."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import gradio as gr

from webui.common import ALL_DATASETS, Changes, dataset_choices, dataset_name_of, explain
from webui.render import error_box, ok_box

if TYPE_CHECKING:
    from services import Services


class BatchHandlers:
    """Cancel flags are per browser session: one person's Cancel never stops another's run."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._stops: dict[str, threading.Event] = {}

    def run(
        self,
        dataset: Any,
        limit: float | None,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008 (Gradio finds the progress bar by this default)
    ) -> str:
        stop = self._stops.setdefault(_session(request), threading.Event())
        stop.clear()
        started = time.monotonic()

        def on_progress(done: int, total: int) -> None:
            progress((done, max(total, 1)), desc=_eta(done, total, time.monotonic() - started))

        progress(0, desc="Loading the judge…")
        try:
            report = self.services.judge_pending(
                dataset=dataset_name_of(self.services, dataset),
                limit=int(limit) if limit and limit > 0 else None,
                on_progress=on_progress,
                should_stop=stop.is_set,
            )
        except Exception as exc:
            return error_box(f"Batch judging failed: {explain(exc)}")
        finally:
            self._stops.pop(_session(request), None)
        verb = "Cancelled after judging" if report.cancelled else "Judged"
        return ok_box(
            f"{verb} {report.judged} pairs ({report.stored_judgments} judgments stored, "
            f"{report.no_verdict} without a verdict) in {report.seconds:.1f} s.",
        )

    def cancel(self, request: gr.Request) -> str:
        stop = self._stops.get(_session(request))
        if stop is None:
            return ok_box("Nothing is running.")
        stop.set()
        return ok_box("Cancelling: the batch in flight finishes and is stored, then it stops.")

    def pending(self, dataset: Any) -> str:
        datasets = self.services.datasets()
        chosen = [d for d in datasets if d.id == dataset] if dataset else datasets
        total = sum(d.pair_count for d in chosen)
        judged = sum(d.judged for d in chosen)
        return ok_box(f"{judged} of {total} pairs judged at least once.")


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "default"


def _eta(done: int, total: int, elapsed: float) -> str:
    if done == 0:
        return f"0 / {total} pairs"
    left = elapsed / done * (total - done)
    return f"{done} / {total} pairs · about {left:.0f} s left"


def build_batch_tab(services: Services, judge_limit: int) -> gr.Tab:
    h = BatchHandlers(services)
    with gr.Tab("Batch", id="batch", elem_id="grm-tab-batch") as tab:
        gr.Markdown(
            "Judge every pair the active judge has not judged yet with the current Judge-tab "
            "settings. Results are stored as judgments and show up in the Label tab."
        )
        with gr.Row():
            dataset = gr.Dropdown(dataset_choices(services), value=ALL_DATASETS, label="Dataset")
            limit = gr.Number(value=None, label="At most (empty: all)", precision=0)
        with gr.Row():
            run = gr.Button("Judge pending pairs", variant="primary", elem_id="grm-batch-run")
            cancel = gr.Button("Cancel", variant="stop", elem_id="grm-batch-cancel")
        info = gr.HTML(js_on_load=None)
        result = gr.HTML(js_on_load=None, elem_id="grm-batch-result")
    run.click(
        h.run,
        [dataset, limit],
        [result],
        api_name="judge_pending",
        concurrency_id="judge",
        concurrency_limit=judge_limit,
    )
    cancel.click(h.cancel, None, [result], api_name="cancel_batch")
    dataset.change(h.pending, [dataset], [info], api_visibility="private")

    def opened(chosen: Any) -> Changes:  # fresh dataset choices and counts
        return {dataset: gr.update(choices=dataset_choices(services)), info: h.pending(chosen)}

    tab.select(opened, [dataset], [dataset, info], api_visibility="private")
    return tab
