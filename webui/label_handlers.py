"""The Label tab's handlers: open a pair, stream the judge, save or undo a decision.

Each handler returns plain values for the components `webui.label_tab` lays out; the services
do the work. Per-session state lives in gr.State (the pair on screen, the judge's decision).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from contextlib import closing
from typing import Any

import gradio as gr

from vocabulary import LabelVerdict
from webui import history
from webui.common import annotator_of, check_name, dataset_choices, dataset_id_of, explain
from webui.judge_saw import judge_saw_html
from webui.judge_view import JudgeDisplay, apply_update, attach_ids, display_from_rows
from webui.render import panel, prompt_views, safe_text, text_views

log = logging.getLogger(__name__)

PRIVATE = {"api_visibility": "private"}
MAX_SESSIONS = 10_000  # sessions whose shown pair is remembered (oldest forgotten first)
HIDDEN = "hidden"
BADGE_STOPPED = '<div class="grm-badge" data-state="stopped">Stopped — press <kbd>J</kbd></div>'

STREAM_INTERVAL_S = 0.08  # repaint at most ~12 times a second; the first text goes out at once
NO_PAIR = {"pair_id": None, "token": None}
NO_JUDGE = {"pair_id": None, "verdict": None, "judgment_id": None}
# meta, prompt, A, B, principles, critique, verdict, badge, samples, current, judged,
# corrected critique, note, what the judge saw, status
SCREEN_OUTPUTS = 15


class LabelHandlers:
    """The Label tab's event handlers; each is short and returns plain component values."""

    def __init__(self, services: Any) -> None:
        self.services = services
        # Which pair each browser session shows: a judgment still streaming for a pair the
        # person has left stops itself instead of painting over the next pair.
        self._showing: OrderedDict[str, int | None] = OrderedDict()
        # Sessions that have asked the judge: only their next pairs are read ahead, so people
        # who label without the judge cost it no CPU on every pair they open.
        self._judging: set[str] = set()

    def _show(self, request: gr.Request, pair: Any, status: str) -> tuple:
        session = _session(request)
        self._showing[session] = pair.id if pair is not None else None
        self._showing.move_to_end(session)
        while len(self._showing) > MAX_SESSIONS:
            self._judging.discard(self._showing.popitem(last=False)[0])
        if pair is not None and session in self._judging:
            self.services.warm_pair(pair)  # the judge reads it while the person does
        return self._screen(pair, status)

    # --- who is labeling ----------------------------------------------------------------------

    def on_load(self, remembered: str | None, typed: str, request: gr.Request) -> tuple:
        """Page opened: with auth the user is known; otherwise offer the remembered name.
        Dataset choices are read now, so datasets imported since the app started are there.
        Nothing else is touched: re-rendering the name form would swallow a click on Start."""
        user = annotator_of(request, None)
        datasets = gr.update(choices=dataset_choices(self.services))
        if user:
            return user, gr.update(visible=False), gr.update(visible=True), gr.skip(), datasets
        # Only fill an empty box: the person may have typed while the page was loading.
        fill = gr.update(value=remembered) if remembered and not typed else gr.skip()
        return gr.skip(), gr.skip(), gr.skip(), fill, datasets

    def start(self, raw_name: str, request: gr.Request) -> tuple:
        """The name typed once per browser session (ignored when auth names the user)."""
        try:
            name = annotator_of(request, None) or check_name(raw_name)
        except ValueError as exc:
            return gr.skip(), gr.skip(), gr.skip(), str(exc), gr.skip()
        return name, gr.update(visible=False), gr.update(visible=True), "", name

    # --- the queue ----------------------------------------------------------------------------

    def open_next(self, name: str, dataset: Any, request: gr.Request) -> tuple:
        """Show this person's next unlabeled pair (and its stored judgment, if any)."""
        annotator = annotator_of(request, name)
        if not annotator:
            return self._unchanged("")
        return self._show(request, self.services.next_item(annotator, dataset_id_of(dataset)), "")

    def save(
        self,
        kind: str,
        name: str,
        dataset: Any,
        current: dict,
        judged: dict,
        critique: str,
        note: str,
        request: gr.Request,
    ) -> tuple:
        """Store the decision on the pair on screen, then show the next pair at once."""
        annotator = annotator_of(request, name)
        pair_id = (current or {}).get("pair_id")
        if not annotator or not pair_id:
            return self._unchanged("Nothing to label here.")
        decision = self._decision(kind, pair_id, judged or NO_JUDGE)
        if isinstance(decision, str):
            return self._unchanged(decision)
        try:
            self.services.save_label(
                pair_id,
                annotator,
                decision["verdict"],
                judgment_id=decision["judgment_id"],
                agreed_with_judge=decision["agreed"],
                corrected_critique=(critique or "").strip() or None,
                note=(note or "").strip() or None,
                client_token=current.get("token"),
            )
        except Exception as exc:  # the person keeps the pair and their text, and can retry
            return self._unchanged(f"Not saved: {explain(exc)}. Your label is still here; retry.")
        saved = f"Saved #{pair_id}: {decision['verdict']}."
        return self._show(
            request, self.services.next_item(annotator, dataset_id_of(dataset)), saved
        )

    def _decision(self, kind: str, pair_id: int, judged: dict) -> dict | str:
        judge_ok = judged.get("pair_id") == pair_id and judged.get("verdict") not in (None, "none")
        judgment_id = judged.get("judgment_id") if judged.get("pair_id") == pair_id else None
        if kind == "agree":
            if not judge_ok:
                return "No judge verdict to agree with: press J to judge, or choose 1-4."
            return {"verdict": judged["verdict"], "judgment_id": judgment_id, "agreed": True}
        agreed = None
        if judge_ok and kind != LabelVerdict.SKIP:
            agreed = kind == judged["verdict"]
        return {"verdict": kind, "judgment_id": judgment_id, "agreed": agreed}

    def undo(self, name: str, dataset: Any, request: gr.Request) -> tuple:
        """Take back this person's last label and show that pair again."""
        annotator = annotator_of(request, name)
        if not annotator:
            return self._unchanged("Type your name first.")
        try:
            pair_id = self.services.undo_last_label(annotator, dataset_id_of(dataset))
        except Exception as exc:
            return self._unchanged(f"Undo failed: {explain(exc)}")
        if pair_id is None:
            return self._unchanged("Nothing to undo.")
        return self._show(request, self.services.pair(pair_id), f"Undid your label on #{pair_id}.")

    def after_screen(self, name: str, dataset: Any, current: dict, request: gr.Request) -> tuple:
        """What may follow the pair by a moment: the progress line and the pair's history."""
        return self.progress(name, dataset, request), self.pair_history(current)

    def progress(self, name: str, dataset: Any, request: gr.Request | None) -> str:
        """Labeled / remaining in the chosen dataset and agreement with the judge so far."""
        annotator = annotator_of(request, name)
        if not annotator:
            return ""
        p = self.services.annotator_progress(annotator, dataset_id_of(dataset))
        agree = (
            f" · agreed with the judge on {p['agreed']} of {p['compared']} "
            f"({p['agreed'] / p['compared']:.0%})"
            if p["compared"]
            else " · no judged labels yet"
        )
        return (
            f'<div class="grm-progress">Labeling as <b>{safe_text(annotator)}</b> · '
            f"{p['done']} labeled / {p['remaining']} remaining of {p['total']}{agree}</div>"
        )

    def pair_history(self, current: dict) -> str:
        pair_id = (current or {}).get("pair_id")
        return history.render(self.services.pair_history(pair_id)) if pair_id else ""

    # --- the judge ----------------------------------------------------------------------------

    def judge(self, current: dict, request: gr.Request):
        """Stream the judge's principles, critique and verdict into their panels."""
        pair_id = (current or {}).get("pair_id")
        if not pair_id:
            yield self._judge_out(JudgeDisplay(), NO_JUDGE, "Open a pair first.")
            return
        view = JudgeDisplay(running=True)
        yield self._judge_out(view, gr.skip(), "Judging…")
        session = _session(request)
        self._judging.add(session)
        try:
            with closing(self._stream(pair_id, view)) as stream:
                for out in stream:
                    if self._showing.get(session, pair_id) != pair_id:
                        return  # the person moved on; closing the stream stops the model
                    yield out
        except Exception as exc:  # a failing backend is a message, never a stack trace
            view.failed = True
            yield self._judge_out(view, NO_JUDGE, f"The judge failed: {explain(exc)}")
            return
        if self._showing.get(session, pair_id) != pair_id:
            return
        attach_ids(view, self.services.latest_judgment_run(pair_id))
        judged = {"pair_id": pair_id, "verdict": view.verdict, "judgment_id": view.judgment_id()}
        yield self._judge_out(view, judged, view.problem() or "")

    def judge_saw(self, current: dict) -> str:
        """After a judgment: which texts the judge's prompt cut, and the prompt it received."""
        pair_id = (current or {}).get("pair_id")
        if not pair_id:
            return ""
        return self._judge_saw(
            self.services.pair(pair_id), self.services.latest_judgment_run(pair_id)
        )

    def _judge_saw(self, pair: Any, rows: list[dict]) -> str:
        try:
            return judge_saw_html(rows, self.services.prompt_cuts(pair, rows) if rows else [])
        except Exception:  # a malformed stored prompt must not keep the pair off the screen
            log.warning("what the judge saw of pair %s cannot be shown", pair.id, exc_info=True)
            return ""

    def stopped(self) -> tuple:
        """The person pressed Stop: the badge says so; what the judge wrote stays readable."""
        return BADGE_STOPPED, _status("Judging stopped. Press J to judge again.")

    def _stream(self, pair_id: int, view: JudgeDisplay):
        with closing(self.services.stream_pair_judgment(pair_id)) as updates:
            yield from self._paced(updates, view)

    def _paced(self, updates: Any, view: JudgeDisplay):
        """Repaint at most every STREAM_INTERVAL_S, and always when a sample ends."""
        last = 0.0
        for update in updates:
            apply_update(view, update)
            now = time.monotonic()
            if now - last >= STREAM_INTERVAL_S or update.judgment is not None:
                last = now
                yield self._judge_out(view, gr.skip(), gr.skip())

    def _judge_out(self, view: JudgeDisplay, judged: Any, status: Any) -> tuple:
        principles, critique, verdict = view.panels()
        status = _status(status)
        return principles, critique, verdict, view.badge(), view.samples_html(), judged, status

    # --- what the screen shows ----------------------------------------------------------------

    def _screen(self, pair: Any, status: str) -> tuple:
        """Every Label-tab output for `pair` (None: the queue is empty)."""
        if pair is None:
            done = "<div class='grm-done'>Nothing left to label here. Pick another dataset.</div>"
            view = JudgeDisplay()
            outputs = (*self._view_outputs(view), NO_PAIR, NO_JUDGE, "", "", "", _status(status))
            return (done, "", "", "", *outputs)
        stored = self.services.latest_judgment_run_record(pair.id)
        rows = stored["samples"]
        view = display_from_rows(rows, stored["run"])
        judged = {"pair_id": pair.id, "verdict": view.verdict, "judgment_id": view.judgment_id()}
        current = {"pair_id": pair.id, "token": uuid.uuid4().hex}
        prompt, prompt_differs = prompt_views(_text_prompt(pair), _turns(pair))
        return (
            _meta_html(pair),
            panel("Prompt", prompt, "grm-box-prompt", differs=prompt_differs),
            _response_html("A", pair.response_a),
            _response_html("B", pair.response_b),
            *self._view_outputs(view),
            current,
            judged if rows else NO_JUDGE,
            "",
            "",
            self._judge_saw(pair, rows),
            _status(status),
        )

    def _view_outputs(self, view: JudgeDisplay) -> tuple:
        return (*view.panels(), view.badge(), view.samples_html())

    def _unchanged(self, status: str) -> tuple:
        return (*[gr.skip()] * (SCREEN_OUTPUTS - 1), _status(status))


def _status(text: Any) -> Any:
    """A status line as safe HTML (messages may quote what a person typed or a file held)."""
    if not isinstance(text, str):
        return text  # gr.skip()
    return f'<div class="grm-status-text">{safe_text(text)}</div>' if text else ""


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "default"


def _text_prompt(pair: Any) -> str:
    return pair.prompt if isinstance(pair.prompt, str) else ""


def _turns(pair: Any) -> list[dict] | None:
    return pair.prompt if isinstance(pair.prompt, list) else None


def _meta_html(pair: Any) -> str:
    bits = [f"#{pair.id}", pair.dataset]
    if pair.category:
        bits.append(pair.category)
    return f'<div class="grm-meta" data-pair-id="{pair.id}">{safe_text(" · ".join(bits))}</div>'


def _response_html(side: str, text: str) -> str:
    views, differs = text_views(text)
    return panel(f"Response {side}", views, "grm-box-response", differs=differs)
