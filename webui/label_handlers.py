"""The Label tab's handlers: open a pair, stream the judge, save or undo a decision.

Each handler returns a dict from components of `LabelScreen` (laid out by `webui.label_tab`) to
their new values; a component left out keeps what it shows. The services do the work.
Per-session state lives in gr.State (the pair on screen, the judge's decision).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
from gradio.blocks import Block

from vocabulary import LabelVerdict, QueueOrder
from webui import history
from webui.common import (
    Changes,
    annotator_of,
    check_name,
    dataset_choices,
    dataset_id_of,
    explain,
)
from webui.judge_saw import judge_saw_html
from webui.judge_view import JudgeDisplay, apply_update, attach_ids, display_from_rows
from webui.render import pair_panels, safe_markdown, safe_text

if TYPE_CHECKING:
    from services import Services

log = logging.getLogger(__name__)

PRIVATE = {"api_visibility": "private"}
MAX_SESSIONS = 10_000  # sessions whose shown pair is remembered (oldest forgotten first)
HIDDEN = "hidden"
BADGE_STOPPED = '<div class="grm-badge" data-state="stopped">Stopped — press <kbd>J</kbd></div>'

STREAM_INTERVAL_S = 0.08  # repaint at most ~12 times a second; the first text goes out at once
NO_PAIR = {"pair_id": None, "token": None}
NO_JUDGE = {"pair_id": None, "verdict": None, "judgment_id": None}


@dataclass(frozen=True)
class LabelScreen:
    """The Label tab's components its handlers write to (webui.label_tab lays them out)."""

    name: gr.State  # who labels, once accepted
    remembered: gr.BrowserState  # the name this browser typed last time
    name_box: gr.Textbox
    gate: gr.Column  # "who is labeling?"
    gate_msg: gr.Markdown
    desk: gr.Column  # everything below, shown once a name is accepted
    dataset: gr.Dropdown
    progress: gr.HTML
    meta: gr.HTML
    prompt: gr.HTML
    a: gr.HTML
    b: gr.HTML
    principles: gr.HTML
    critique: gr.HTML
    verdict: gr.HTML
    badge: gr.HTML
    samples: gr.HTML
    current: gr.State  # the pair on screen: NO_PAIR or {"pair_id", "token"}
    judged: gr.State  # the judge's decision on it: NO_JUDGE or {"pair_id", "verdict", ...}
    fix: gr.Textbox  # corrected critique
    note: gr.Textbox
    judge_saw: gr.HTML
    guidelines: gr.HTML  # the dataset's guidelines, as the judge is given them
    status: gr.HTML
    history: gr.HTML

    def pair_outputs(self) -> list[Block]:
        """What opening a pair writes; this order is the API's (/next_pair, /label_*, /undo)."""
        return [
            *(self.meta, self.prompt, self.a, self.b),
            *(self.principles, self.critique, self.verdict, self.badge, self.samples),
            *(self.current, self.judged, self.fix, self.note, self.judge_saw, self.status),
        ]

    def judge_outputs(self) -> list[Block]:
        """What the judge writes; this order is the API's (/judge)."""
        panels = [self.principles, self.critique, self.verdict, self.badge, self.samples]
        return [*panels, self.judged, self.status]


class LabelHandlers:
    """The Label tab's event handlers; each is short and returns {component: value}."""

    def __init__(self, services: Services, ui: LabelScreen) -> None:
        self.services = services
        self.ui = ui
        # Which pair each browser session shows: a judgment still streaming for a pair the
        # person has left stops itself instead of painting over the next pair.
        self._showing: OrderedDict[str, int | None] = OrderedDict()
        # Each browser session's queue order (QueueOrder), chosen in the top bar.
        self._orders: dict[str, str] = {}
        # Sessions that have asked the judge: only their next pairs are read ahead, so people
        # who label without the judge cost it no CPU on every pair they open.
        self._judging: set[str] = set()

    def _show(self, request: gr.Request | None, pair: Any, status: str) -> Changes:
        session = _session(request)
        self._showing[session] = pair.id if pair is not None else None
        self._showing.move_to_end(session)
        while len(self._showing) > MAX_SESSIONS:
            self._judging.discard(self._showing.popitem(last=False)[0])
        if pair is not None and session in self._judging:
            self.services.warm_pair(pair)  # the judge reads it while the person does
        return self._screen(pair, status)

    # --- who is labeling ----------------------------------------------------------------------

    def on_load(self, remembered: str | None, typed: str, request: gr.Request) -> Changes:
        """Page opened: with auth the user is known; otherwise offer the remembered name.
        Dataset choices are read now, so datasets imported since the app started are there.
        Nothing else is touched: re-rendering the name form would swallow a click on Start."""
        ui = self.ui
        user = annotator_of(request, None)
        changes: Changes = {ui.dataset: gr.update(choices=dataset_choices(self.services))}
        if user:
            hide, show = gr.update(visible=False), gr.update(visible=True)
            changes |= {ui.name: user, ui.gate: hide, ui.desk: show}
        elif remembered and not typed:  # only fill an empty box: the person may have typed
            changes[ui.name_box] = gr.update(value=remembered)
        return changes

    def start(self, raw_name: str, request: gr.Request) -> Changes:
        """The name typed once per browser session (ignored when auth names the user)."""
        ui = self.ui
        try:
            name = annotator_of(request, None) or check_name(raw_name)
        except ValueError as exc:
            return {ui.gate_msg: str(exc)}
        return {
            ui.name: name,
            ui.gate: gr.update(visible=False),
            ui.desk: gr.update(visible=True),
            ui.gate_msg: "",
            ui.remembered: name,
        }

    # --- the queue ----------------------------------------------------------------------------

    def open_next(self, name: str, dataset: Any, request: gr.Request | None) -> Changes:
        """Show this person's next unlabeled pair (and its stored judgment, if any)."""
        annotator = annotator_of(request, name)
        if not annotator:
            return self._status_only("")
        return self._show(request, self._next(annotator, dataset, request), "")

    def save(
        self,
        kind: str,
        name: str,
        dataset: Any,
        current: dict,
        judged: dict,
        critique: str,
        note: str,
        request: gr.Request | None,
    ) -> Changes:
        """Store the decision on the pair on screen, then show the next pair at once."""
        annotator = annotator_of(request, name)
        pair_id = (current or {}).get("pair_id")
        if not annotator or not pair_id:
            return self._status_only("Nothing to label here.")
        decision = self._decision(kind, pair_id, judged or NO_JUDGE)
        if isinstance(decision, str):
            return self._status_only(decision)
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
            return self._status_only(f"Not saved: {explain(exc)}. Your label is still here; retry.")
        saved = f"Saved #{pair_id}: {decision['verdict']}."
        return self._show(request, self._next(annotator, dataset, request), saved)

    def _next(self, annotator: str, dataset: Any, request: gr.Request | None) -> Any:
        order = self._orders.get(_session(request), QueueOrder.IN_ORDER)
        return self.services.next_item(annotator, dataset_id_of(dataset), order)

    def set_order(self, order: str, request: gr.Request | None) -> None:
        """The queue order for this session's next pairs (the pair on screen stays)."""
        if order in QueueOrder.values():
            self._orders[_session(request)] = order

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

    def undo(self, name: str, dataset: Any, request: gr.Request | None) -> Changes:
        """Take back this person's last label and show that pair again."""
        annotator = annotator_of(request, name)
        if not annotator:
            return self._status_only("Type your name first.")
        try:
            pair_id = self.services.undo_last_label(annotator, dataset_id_of(dataset))
        except Exception as exc:
            return self._status_only(f"Undo failed: {explain(exc)}")
        if pair_id is None:
            return self._status_only("Nothing to undo.")
        return self._show(request, self.services.pair(pair_id), f"Undid your label on #{pair_id}.")

    def after_screen(
        self, name: str, dataset: Any, current: dict, request: gr.Request | None
    ) -> Changes:
        """What may follow the pair by a moment: the progress line, the pair's history and its
        dataset's guidelines."""
        ui = self.ui
        return {
            ui.progress: self.progress(name, dataset, request),
            ui.history: self.pair_history(current),
            ui.guidelines: self.guidelines(current),
        }

    def guidelines(self, current: dict) -> str:
        pair_id = (current or {}).get("pair_id")
        text = (
            self.services.dataset_guidelines(self.services.pair(pair_id).dataset_id)
            if pair_id
            else ""
        )
        if not text.strip():
            return '<div class="grm-empty">No guidelines for this dataset.</div>'
        return safe_markdown(text)

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

    def judge(self, current: dict, request: gr.Request | None):
        """Stream the judge's principles, critique and verdict into their panels."""
        pair_id = (current or {}).get("pair_id")
        if not pair_id:
            yield self._judge_out(JudgeDisplay(), NO_JUDGE, "Open a pair first.")
            return
        view = JudgeDisplay(running=True)
        yield self._judge_out(view, status="Judging…")
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

    def stopped(self) -> Changes:
        """The person pressed Stop: the badge says so; what the judge wrote stays readable."""
        return {
            self.ui.badge: BADGE_STOPPED,
            self.ui.status: _status("Judging stopped. Press J to judge again."),
        }

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
                yield self._judge_out(view)

    def _judge_out(
        self, view: JudgeDisplay, judged: dict | None = None, status: str | None = None
    ) -> Changes:
        """The judge's panels; `judged` and `status` only when given (None: left as they are)."""
        changes = self._panels(view)
        if judged is not None:
            changes[self.ui.judged] = judged
        if status is not None:
            changes[self.ui.status] = _status(status)
        return changes

    def _panels(self, view: JudgeDisplay) -> Changes:
        ui = self.ui
        principles, critique, verdict = view.panels()
        return {
            ui.principles: principles,
            ui.critique: critique,
            ui.verdict: verdict,
            ui.badge: view.badge(),
            ui.samples: view.samples_html(),
        }

    # --- what the screen shows ----------------------------------------------------------------

    def _screen(self, pair: Any, status: str) -> Changes:
        """Every output of opening `pair` (None: the queue is empty)."""
        ui = self.ui
        cleared = {ui.fix: "", ui.note: "", ui.status: _status(status)}
        if pair is None:
            done = "<div class='grm-done'>Nothing left to label here. Pick another dataset.</div>"
            shown = {ui.meta: done, ui.prompt: "", ui.a: "", ui.b: ""}
            states = {ui.current: NO_PAIR, ui.judged: NO_JUDGE, ui.judge_saw: ""}
            return shown | self._panels(JudgeDisplay()) | states | cleared
        stored = self.services.latest_judgment_run_record(pair.id)
        rows = stored["samples"]
        view = display_from_rows(rows, stored["run"])
        judged = {"pair_id": pair.id, "verdict": view.verdict, "judgment_id": view.judgment_id()}
        prompt, a, b = pair_panels(pair.prompt, pair.response_a, pair.response_b)
        shown = {ui.meta: _meta_html(pair), ui.prompt: prompt, ui.a: a, ui.b: b}
        states = {
            ui.current: {"pair_id": pair.id, "token": uuid.uuid4().hex},
            ui.judged: judged if rows else NO_JUDGE,
            ui.judge_saw: self._judge_saw(pair, rows),
        }
        return shown | self._panels(view) | states | cleared

    def _status_only(self, status: str) -> Changes:
        """A message; the pair, the person's text and note stay as they are on screen."""
        return {self.ui.status: _status(status)}


def _status(text: str) -> str:
    """A status line as safe HTML (messages may quote what a person typed or a file held)."""
    return f'<div class="grm-status-text">{safe_text(text)}</div>' if text else ""


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "default"


def _meta_html(pair: Any) -> str:
    bits = [f"#{pair.id}", pair.dataset]
    if pair.category:
        bits.append(pair.category)
    return f'<div class="grm-meta" data-pair-id="{pair.id}">{safe_text(" · ".join(bits))}</div>'
