"""The Label tab's layout and wiring: one pair at a time, the judge live, one key to decide."""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any

import gradio as gr

from vocabulary import LabelVerdict, QueueOrder
from webui.common import ALL_DATASETS, dataset_choices, refresh_datasets
from webui.label_handlers import HIDDEN, NO_JUDGE, NO_PAIR, PRIVATE, LabelHandlers, LabelScreen

if TYPE_CHECKING:
    from services import Services

BUTTONS = [  # (label on screen, elem_id the keyboard script clicks, stored verdict)
    ("Agree with judge  ⏎ / Y", "grm-agree", "agree"),
    ("A is better  1", "grm-label-a", LabelVerdict.A),
    ("B is better  2", "grm-label-b", LabelVerdict.B),
    ("Tie  3", "grm-label-tie", LabelVerdict.TIE),
    ("Both bad  4", "grm-label-bad", LabelVerdict.BOTH_BAD),
    ("Skip  S", "grm-skip", LabelVerdict.SKIP),
]
TEXT_VIEWS = [("Rendered", "rendered"), ("Exact", "exact")]
# Each person's choice of text view, kept in this browser (localStorage); the page shows one of
# the two views every text panel carries (assets/app.css), so switching needs no server call.
VIEW_KEY = "grm-text-view"
APPLY_VIEW_JS = (
    "(view) => { view = view === 'exact' ? 'exact' : 'rendered';"
    " document.documentElement.dataset.grmTextView = view;"
    f" try {{ localStorage.setItem('{VIEW_KEY}', view); }} catch (e) {{}} return view; }}"
)
REMEMBERED_VIEW_JS = (
    f"() => {{ let view = 'rendered'; try {{ view = localStorage.getItem('{VIEW_KEY}') || view; }}"
    " catch (e) {} return view === 'exact' ? 'exact' : 'rendered'; }"
)


def build_label_tab(services: Services, demo: gr.Blocks, judge_limit: int) -> gr.Tab:
    """Lay out the Label tab and wire its events; returns the tab (its select refreshes lists)."""
    with gr.Tab("Label", id="label", elem_id="grm-tab-label") as tab:
        ui, controls = _layout(services)
    h = LabelHandlers(services, ui)
    _wire_text_view(demo, controls["text_view"])
    _wire_judge(h, controls, judge_limit)
    _wire_queue(h, controls, demo)
    tab.select(
        lambda value: refresh_datasets(services, value), [ui.dataset], [ui.dataset], **PRIVATE
    )
    return tab


def _layout(services: Services) -> tuple[LabelScreen, dict[str, Any]]:
    """The name gate over the desk: the components handlers write, and the other controls."""
    parts: dict[str, Any] = {
        "name": gr.State(""),
        "remembered": gr.BrowserState("", storage_key="grm-annotator"),
        "current": gr.State(dict(NO_PAIR)),
        "judged": gr.State(dict(NO_JUDGE)),
    }
    with gr.Column(visible=True, elem_id="grm-gate") as parts["gate"]:
        gr.Markdown("### Who is labeling?\nYour name is stored with every label you save.")
        with gr.Row():
            parts["name_box"] = gr.Textbox(
                label="Your name", max_length=80, scale=3, elem_id="grm-name", autofocus=True
            )
            parts["start"] = gr.Button("Start labeling", variant="primary", elem_id="grm-start")
        parts["gate_msg"] = gr.Markdown(elem_id="grm-gate-msg")
    # "hidden", not False: the desk's components stay mounted, so a pair sent right after
    # the name is accepted is never dropped by a component that is not there yet.
    with gr.Column(visible=HIDDEN, elem_id="grm-desk") as parts["desk"]:
        parts |= _desk_components(services)
    screen = LabelScreen(**{f.name: parts.pop(f.name) for f in fields(LabelScreen)})
    return screen, parts


def _wire_judge(h: LabelHandlers, controls: dict[str, Any], judge_limit: int) -> None:
    """J streams the judge; Stop and the page's cancel end the stream."""
    ui = h.ui
    judge_event = controls["judge"].click(
        h.judge,
        [ui.current],
        ui.judge_outputs(),
        api_name="judge",
        concurrency_id="judge",
        concurrency_limit=judge_limit,
        show_progress="hidden",
    )
    judge_event.then(h.judge_saw, [ui.current], [ui.judge_saw], show_progress="hidden", **PRIVATE)
    # Pressed by the page script (webui/keys.py) when a label is saved mid-judgment: the client
    # drops what the cancelled stream still sends, so no stale chunk lands on the next pair.
    controls["cancel_judge"].click(None, None, None, cancels=[judge_event], **PRIVATE)
    controls["stop"].click(None, None, None, cancels=[judge_event], **PRIVATE).then(
        h.stopped, None, [ui.badge, ui.status], **PRIVATE
    )


def _wire_queue(h: LabelHandlers, controls: dict[str, Any], demo: gr.Blocks) -> None:
    """Name, next pair, the decision buttons and undo; each new pair then gets its progress
    line and history, and is judged when auto-judge is on."""
    ui = h.ui
    screen = ui.pair_outputs()
    auto_js = "(auto) => { if (auto) document.getElementById('grm-judge')?.click(); }"

    def chain(event: Any) -> None:
        # The pair is on screen already; progress and history follow, then auto-judge.
        after_inputs = [ui.name, ui.dataset, ui.current]
        after = [ui.progress, ui.history, ui.guidelines]
        event = event.then(h.after_screen, after_inputs, after, show_progress="hidden", **PRIVATE)
        event.then(None, [controls["auto"]], None, js=auto_js)

    named = [ui.name, ui.gate, ui.desk, ui.gate_msg, ui.remembered]
    started = controls["start"].click(h.start, [ui.name_box], named, api_name="set_annotator")
    ui.name_box.submit(h.start, [ui.name_box], named)
    opened = started.then(h.open_next, [ui.name, ui.dataset], screen, api_visibility="private")
    chain(opened)
    chain(ui.dataset.input(h.open_next, [ui.name, ui.dataset], screen))
    controls["queue_order"].input(h.set_order, [controls["queue_order"]], None, **PRIVATE)
    chain(controls["next"].click(h.open_next, [ui.name, ui.dataset], screen, api_name="next_pair"))
    inputs = [ui.name, ui.dataset, ui.current, ui.judged, ui.fix, ui.note]
    for _, elem_id, kind in BUTTONS:
        chain(
            controls[elem_id].click(
                _saver(h, kind),
                inputs,
                screen,
                api_name=f"label_{kind}",
                show_progress="hidden",
            )
        )
    chain(controls["grm-undo"].click(h.undo, [ui.name, ui.dataset], screen, api_name="undo"))
    loaded = demo.load(
        h.on_load,
        [ui.remembered, ui.name_box],
        [ui.name, ui.gate, ui.desk, ui.name_box, ui.dataset],
    )
    chain(loaded.then(h.open_next, [ui.name, ui.dataset], screen, api_visibility="private"))


def _wire_text_view(demo: gr.Blocks, choice: gr.Radio) -> None:
    """Rendered or exact text: the browser's remembered choice on load, kept on change."""
    demo.load(None, None, [choice], js=REMEMBERED_VIEW_JS, **PRIVATE)
    choice.change(None, [choice], None, js=APPLY_VIEW_JS, **PRIVATE)


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
    ) -> dict:
        return h.save(kind, name, dataset, current, judged, critique, note, request)

    save.__name__ = f"label_{kind}"
    return save


def _desk_components(services: Services) -> dict[str, Any]:
    """The labeling desk: progress, prompt, A | B, judge panels, decision buttons, history."""
    ui = _topbar(services)
    ui["meta"] = gr.HTML(elem_id="grm-meta", js_on_load=None)
    # The team's guidelines for this dataset: the same text the judge is given as principles.
    with gr.Accordion("Guidelines for this dataset", open=False, elem_id="grm-guidelines-box"):
        ui["guidelines"] = gr.HTML(elem_id="grm-guidelines", js_on_load=None)
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
                ui["cancel_judge"] = gr.Button(
                    "Cancel judge", elem_id="grm-cancel-judge", visible=HIDDEN
                )
                ui["auto"] = gr.Checkbox(
                    label="Auto-judge when a pair opens", elem_id="grm-auto", container=False
                )
            ui["badge"] = gr.HTML(elem_id="grm-badge", js_on_load=None)
            for key in ("principles", "critique", "verdict"):
                ui[key] = gr.HTML(elem_id=f"grm-{key}", js_on_load=None)
            ui["samples"] = gr.HTML(elem_id="grm-samples", js_on_load=None)
            # Beside the responses: what the judge's prompt cut of them, and that prompt.
            ui["judge_saw"] = gr.HTML(elem_id="grm-judge-saw", js_on_load=None)
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


def _topbar(services: Services) -> dict[str, Any]:
    """Dataset, progress line, text view and Reload, in one row over the pair."""
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
        # Compact choices: no label shown, no frame, as wide as their options.
        compact = {"show_label": False, "container": False, "scale": 0}
        ui["text_view"] = gr.Radio(
            TEXT_VIEWS,
            value="rendered",
            label="Text",
            min_width=210,
            elem_id="grm-text-view",
            **compact,
        )
        ui["queue_order"] = gr.Dropdown(
            QueueOrder.values(),
            value=QueueOrder.IN_ORDER.value,
            label="Queue",
            min_width=190,
            elem_id="grm-queue-order",
            **compact,
        )
        ui["next"] = gr.Button("↻ Reload", size="sm", scale=0, min_width=90, elem_id="grm-next")
    return ui


def _shortcut_help() -> str:
    return (
        "Keys (outside text fields): **Enter / Y** agree with the judge · **1** A better · "
        "**2** B better · **3** tie · **4** both bad · **S** skip · **U** undo · **J** judge"
    )
