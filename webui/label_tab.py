"""The Label tab: one pair at a time, the judge reasoning live, one keystroke to decide."""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from contextlib import closing
from typing import Any

import gradio as gr

from webui import history
from webui.common import (
    ALL_DATASETS,
    annotator_of,
    check_name,
    dataset_choices,
    dataset_id_of,
    explain,
    refresh_datasets,
)
from webui.judge_view import JudgeDisplay, apply_update, attach_ids, display_from_rows
from webui.render import chat_html, panel, safe_markdown, safe_text

log = logging.getLogger(__name__)

PRIVATE = {"api_visibility": "private"}
MAX_SESSIONS = 10_000  # sessions whose shown pair is remembered (oldest forgotten first)
HIDDEN = "hidden"
BADGE_STOPPED = '<div class="grm-badge" data-state="stopped">Stopped — press <kbd>J</kbd></div>'

STREAM_INTERVAL_S = 0.08  # repaint at most ~12 times a second; the first text goes out at once
NO_PAIR = {"pair_id": None, "token": None}
NO_JUDGE = {"pair_id": None, "verdict": None, "judgment_id": None}
# meta, prompt, A, B, principles, critique, verdict, badge, samples, current, judged,
# corrected critique, note, status
SCREEN_OUTPUTS = 14
BUTTONS = [  # (label on screen, elem_id the keyboard script clicks, stored verdict)
    ("Agree with judge  ⏎ / Y", "grm-agree", "agree"),
    ("A is better  1", "grm-label-a", "A"),
    ("B is better  2", "grm-label-b", "B"),
    ("Tie  3", "grm-label-tie", "tie"),
    ("Both bad  4", "grm-label-bad", "both_bad"),
    ("Skip  S", "grm-skip", "skip"),
]


class LabelHandlers:
    """The Label tab's event handlers; each is short and returns plain component values."""

    def __init__(self, services: Any) -> None:
        self.services = services
        # Which pair each browser session shows: a judgment still streaming for a pair the
        # person has left stops itself instead of painting over the next pair.
        self._showing: OrderedDict[str, int | None] = OrderedDict()

    def _show(self, request: gr.Request, pair: Any, status: str) -> tuple:
        session = _session(request)
        self._showing[session] = pair.id if pair is not None else None
        self._showing.move_to_end(session)
        while len(self._showing) > MAX_SESSIONS:
            self._showing.popitem(last=False)
        return self._screen(pair, status)

    # --- who is labeling ----------------------------------------------------------------------

    def on_load(self, remembered: str | None, typed: str, request: gr.Request) -> tuple:
        """Page opened: with auth the user is known; otherwise offer the remembered name.
        Dataset choices are read now, so datasets imported since the app started are there."""
        user = annotator_of(request, None)
        return (
            user or "",
            gr.update(visible=user is None),
            gr.update(visible=True if user else HIDDEN),
            # Only fill an empty box: the person may have typed while the page was loading.
            gr.update(value=user or remembered)
            if (user or remembered) and not typed
            else gr.skip(),
            gr.update(choices=dataset_choices(self.services)),
        )

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
        if judge_ok and kind != "skip":
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
        yield self._judge_out(view, judged, "")

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
            outputs = (*self._view_outputs(view), NO_PAIR, NO_JUDGE, "", "", _status(status))
            return (done, "", "", "", *outputs)
        rows = self.services.latest_judgment_run(pair.id)
        view = display_from_rows(rows)
        judged = {"pair_id": pair.id, "verdict": view.verdict, "judgment_id": view.judgment_id()}
        current = {"pair_id": pair.id, "token": uuid.uuid4().hex}
        return (
            _meta_html(pair),
            panel("Prompt", chat_html(_text_prompt(pair), _turns(pair)), "grm-box-prompt"),
            _response_html("A", pair.response_a),
            _response_html("B", pair.response_b),
            *self._view_outputs(view),
            current,
            judged if rows else NO_JUDGE,
            "",
            "",
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


def build_label_tab(services: Any, demo: gr.Blocks, judge_limit: int) -> gr.Tab:
    """Lay out the Label tab and wire its events; returns the tab (its select refreshes lists)."""
    h = LabelHandlers(services)
    with gr.Tab("Label", id="label", elem_id="grm-tab-label") as tab:
        name = gr.State("")
        remembered = gr.BrowserState("", storage_key="grm-annotator")
        current, judged = gr.State(dict(NO_PAIR)), gr.State(dict(NO_JUDGE))
        with gr.Column(visible=True, elem_id="grm-gate") as gate:
            gr.Markdown("### Who is labeling?\nYour name is stored with every label you save.")
            with gr.Row():
                name_box = gr.Textbox(
                    label="Your name", max_length=80, scale=3, elem_id="grm-name", autofocus=True
                )
                start = gr.Button("Start labeling", variant="primary", elem_id="grm-start")
            gate_msg = gr.Markdown(elem_id="grm-gate-msg")
        # "hidden", not False: the desk's components stay mounted, so a pair sent right after
        # the name is accepted is never dropped by a component that is not there yet.
        with gr.Column(visible=HIDDEN, elem_id="grm-desk") as desk:
            ui = _desk_components(services, judge_limit)
    screen = [
        ui["meta"],
        ui["prompt"],
        ui["a"],
        ui["b"],
        ui["principles"],
        ui["critique"],
        ui["verdict"],
        ui["badge"],
        ui["samples"],
        current,
        judged,
        ui["fix"],
        ui["note"],
        ui["status"],
    ]
    judge_out = [ui[k] for k in ("principles", "critique", "verdict", "badge", "samples")]
    judge_out += [judged, ui["status"]]
    judge_event = ui["judge"].click(
        h.judge,
        [current],
        judge_out,
        api_name="judge",
        concurrency_id="judge",
        concurrency_limit=judge_limit,
        show_progress="hidden",
    )
    # Pressed by the page script (webui/keys.py) when a label is saved mid-judgment: the client
    # drops what the cancelled stream still sends, so no stale chunk lands on the next pair.
    ui["cancel_judge"].click(None, None, None, cancels=[judge_event], **PRIVATE)
    ui["stop"].click(None, None, None, cancels=[judge_event], **PRIVATE).then(
        h.stopped, None, [ui["badge"], ui["status"]], **PRIVATE
    )
    after_inputs = [name, ui["dataset"], current]
    auto_js = "(auto) => { if (auto) document.getElementById('grm-judge')?.click(); }"

    def chain(event: Any) -> None:
        # The pair is on screen already; progress and history follow, then auto-judge.
        after = [ui["progress"], ui["history"]]
        event = event.then(h.after_screen, after_inputs, after, show_progress="hidden", **PRIVATE)
        event.then(None, [ui["auto"]], None, js=auto_js)

    started = start.click(
        h.start, [name_box], [name, gate, desk, gate_msg, remembered], api_name="set_annotator"
    )
    name_box.submit(h.start, [name_box], [name, gate, desk, gate_msg, remembered])
    opened = started.then(h.open_next, [name, ui["dataset"]], screen, api_visibility="private")
    chain(opened)
    chain(ui["dataset"].input(h.open_next, [name, ui["dataset"]], screen))
    chain(ui["next"].click(h.open_next, [name, ui["dataset"]], screen, api_name="next_pair"))
    inputs = [name, ui["dataset"], current, judged, ui["fix"], ui["note"]]
    for _, elem_id, kind in BUTTONS:
        chain(
            ui[elem_id].click(
                _saver(h, kind),
                inputs,
                screen,
                api_name=f"label_{kind}",
                show_progress="hidden",
            )
        )
    chain(ui["grm-undo"].click(h.undo, [name, ui["dataset"]], screen, api_name="undo"))
    loaded = demo.load(
        h.on_load, [remembered, name_box], [name, gate, desk, name_box, ui["dataset"]]
    )
    chain(loaded.then(h.open_next, [name, ui["dataset"]], screen, api_visibility="private"))
    tab.select(
        lambda value: refresh_datasets(services, value), [ui["dataset"]], [ui["dataset"]], **PRIVATE
    )
    return tab


def _saver(h: LabelHandlers, kind: str):
    """A save handler for one button (a real function: Gradio reads its gr.Request hint)."""

    def save(
        name: str,
        dataset: Any,
        current: dict,
        judged: dict,
        critique: str,
        note: str,
        request: gr.Request,
    ) -> tuple:
        return h.save(kind, name, dataset, current, judged, critique, note, request)

    save.__name__ = f"label_{kind}"
    return save


def _desk_components(services: Any, judge_limit: int) -> dict[str, Any]:
    """The labeling desk: progress, prompt, A | B, judge panels, decision buttons, history."""
    ui: dict[str, Any] = {}
    with gr.Row(equal_height=True, elem_id="grm-topbar"):
        ui["dataset"] = gr.Dropdown(
            choices=dataset_choices(services),
            value=ALL_DATASETS,
            label="Dataset",
            scale=1,
            min_width=220,
            elem_id="grm-dataset",
            container=False,
        )
        ui["progress"] = gr.HTML(elem_id="grm-progress", js_on_load=None)
        ui["next"] = gr.Button("↻ Reload", size="sm", scale=0, min_width=90, elem_id="grm-next")
    ui["meta"] = gr.HTML(elem_id="grm-meta", js_on_load=None)
    with gr.Row(elem_id="grm-main"):
        with gr.Column(scale=3, min_width=480):
            ui["prompt"] = gr.HTML(elem_id="grm-prompt", js_on_load=None)
            with gr.Row(equal_height=False):
                ui["a"] = gr.HTML(elem_id="grm-response-a", js_on_load=None, min_width=220)
                ui["b"] = gr.HTML(elem_id="grm-response-b", js_on_load=None, min_width=220)
        with gr.Column(scale=2, min_width=360, elem_id="grm-judge-col"):
            with gr.Row(equal_height=True):
                ui["judge"] = gr.Button(
                    "Judge  J", elem_id="grm-judge", size="md", scale=0, min_width=110
                )
                ui["stop"] = gr.Button("Stop", elem_id="grm-stop", size="md", scale=0, min_width=70)
                ui["cancel_judge"] = gr.Button(elem_id="grm-cancel-judge", visible=HIDDEN)
                ui["auto"] = gr.Checkbox(
                    label="Auto-judge when a pair opens", elem_id="grm-auto", container=False
                )
            ui["badge"] = gr.HTML(elem_id="grm-badge", js_on_load=None)
            for key in ("principles", "critique", "verdict"):
                ui[key] = gr.HTML(elem_id=f"grm-{key}", js_on_load=None)
            ui["samples"] = gr.HTML(elem_id="grm-samples", js_on_load=None)
    with gr.Row(elem_id="grm-actions"):
        for label, elem_id, _ in BUTTONS:
            variant = "primary" if elem_id == "grm-agree" else "secondary"
            ui[elem_id] = gr.Button(label, variant=variant, elem_id=elem_id, size="md")
        ui["grm-undo"] = gr.Button("Undo  U", variant="stop", elem_id="grm-undo", size="md")
    ui["status"] = gr.HTML(elem_id="grm-status", js_on_load=None)
    with gr.Accordion("Correct the judge (optional: stored with your next label)", open=False):
        ui["fix"] = gr.Textbox(label="Corrected critique", lines=3, elem_id="grm-fix")
        ui["note"] = gr.Textbox(label="Note", lines=1, elem_id="grm-note")
    with gr.Accordion("History of this pair", open=False):
        ui["history"] = gr.HTML(elem_id="grm-history", js_on_load=None)
    gr.Markdown(_shortcut_help(), elem_id="grm-keys")
    return ui


def _response_html(side: str, text: str) -> str:
    return panel(f"Response {side}", safe_markdown(text), "grm-box-response")


def _shortcut_help() -> str:
    return (
        "Keys (outside text fields): **Enter / Y** agree with the judge · **1** A better · "
        "**2** B better · **3** tie · **4** both bad · **S** skip · **U** undo · **J** judge"
    )
