"""The Agreement tab's "Compare judge setups": two setups (prompt version x judge version x
k / swap / aggregation rule) on the same labels of a dataset, figures side by side with
McNemar's test, and the pairs where they differ (select one to read it). The work is
services.compare_setups, the same as `grm compare`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from judges.types import Aggregation
from webui.common import Changes, dataset_id_of, explain
from webui.figures import comparison_rows, mcnemar_line
from webui.prompts_tab import version_choices
from webui.render import error_box, ok_box, pair_panels

if TYPE_CHECKING:
    from services import Services

ACTIVE = "active"
DIFFER_COLUMNS = ["pair", "human", "A", "B", "prompt"]


@dataclass(frozen=True)
class SetupFields:
    """One setup's inputs, in the order the handler takes them."""

    prompt: gr.Dropdown
    judge: gr.Dropdown
    k: gr.Number
    swap: gr.Checkbox
    aggregate: gr.Radio

    def inputs(self) -> list[Any]:
        return [self.prompt, self.judge, self.k, self.swap, self.aggregate]


@dataclass(frozen=True)
class CompareView:
    message: gr.HTML
    figures: gr.Dataframe
    differ: gr.Dataframe
    pair: gr.HTML


def setup_spec(prompt: str, judge: str, k: Any, swap: bool, aggregate: str) -> dict[str, Any]:
    """The fields as services' setup keys (empty ones left to the current judge's)."""
    return {
        "prompt": prompt,
        "judge": judge or ACTIVE,
        "k": int(k) if k else None,
        "swap": "1" if swap else "0",
        "aggregate": aggregate,
    }


class CompareHandlers:
    def __init__(
        self, services: Services, ui: CompareView, setups: tuple[SetupFields, ...]
    ) -> None:
        self.services = services
        self.ui = ui
        self.setups = setups

    def compare(  # noqa: PLR0913 (Gradio passes each field as an argument)
        self,
        dataset: Any,
        limit: Any,
        prompt_a: str,
        judge_a: str,
        k_a: Any,
        swap_a: bool,
        rule_a: str,
        prompt_b: str,
        judge_b: str,
        k_b: Any,
        swap_b: bool,
        rule_b: str,
        progress=gr.Progress(),  # noqa: B008 (Gradio finds the progress bar by this default)
    ) -> Changes:
        ui = self.ui
        if dataset_id_of(dataset) is None:
            return {ui.message: error_box("Choose one dataset: setups are compared on its labels.")}
        a = setup_spec(prompt_a, judge_a, k_a, swap_a, rule_a)
        b = setup_spec(prompt_b, judge_b, k_b, swap_b, rule_b)

        def judged(done: int, total: int) -> None:
            progress((done, total), desc="judging the pairs a setup has not judged yet")

        try:
            report = self.services.compare_setups(
                a, b, dataset_id_of(dataset), limit=int(limit) if limit else None,
                on_progress=judged,
            )  # fmt: skip
        except Exception as exc:  # refused or failed: the reason; stored judgments stay
            return {ui.message: error_box(f"Not compared: {explain(exc)}")}
        said = (
            f"{report['dataset']}: {report['pairs']} labeled pairs. A: {report['a']['describe']}. "
            f"B: {report['b']['describe']}. {mcnemar_line(report)}. "
            f"They differ on {len(report['differ'])} pairs."
        )
        differ = [[r["pair_id"], r["human"], r["a"], r["b"], r["prompt"]] for r in report["differ"]]
        return {
            ui.message: ok_box(said),
            ui.figures: pd.DataFrame(comparison_rows(report)),
            ui.differ: pd.DataFrame(differ, columns=DIFFER_COLUMNS),
            ui.pair: "",
        }

    def show_pair(self, evt: gr.SelectData) -> str:
        """The selected row's pair, as the Label tab shows it."""
        try:
            pair = self.services.pair(int(evt.row_value[0]))
        except Exception as exc:
            return error_box(f"Cannot open the pair: {explain(exc)}")
        prompt, a, b = pair_panels(pair.prompt, pair.response_a, pair.response_b)
        return f'<div class="grm-compare-pair" data-pair-id="{pair.id}">{prompt}{a}{b}</div>'

    def choice_fields(self) -> list[gr.Dropdown]:
        return [f.prompt for f in self.setups] + [f.judge for f in self.setups]

    def choices(self) -> Changes:
        """Fresh prompt and judge version choices for both setups; choices only, so a pick
        made meanwhile stays."""
        prompts = gr.update(choices=version_choices(self.services))
        judges = gr.update(choices=judge_choices(self.services))
        return {f.prompt: prompts for f in self.setups} | {f.judge: judges for f in self.setups}


def judge_choices(services: Services) -> list[tuple[str, str]]:
    versions = [(f"{v['id']} {v['name']}", str(v["id"])) for v in services.versions()]
    return [("the active version", ACTIVE), *versions]


def build_compare_panel(services: Services, dataset: gr.Dropdown) -> CompareHandlers:
    """Lay out the panel under the tab's dataset picker and wire it; returns its handlers (the
    tab refreshes the version choices when it is opened)."""
    with gr.Accordion("Compare judge setups", open=False, elem_id="grm-compare"):
        with gr.Row():
            setups = tuple(_setup_fields(services, name) for name in ("A", "B"))
        with gr.Row(equal_height=True):
            limit = gr.Number(
                label="Only the first N labeled pairs (empty or 0: all)",
                precision=0,
                minimum=0,
                elem_id="grm-compare-limit",
            )
            run = gr.Button("Compare", variant="primary", scale=0, elem_id="grm-compare-run")
        ui = CompareView(
            message=gr.HTML(js_on_load=None, elem_id="grm-compare-msg"),
            figures=gr.Dataframe(
                label="Side by side", interactive=False, elem_id="grm-compare-figures"
            ),
            differ=gr.Dataframe(
                label="Pairs where they differ (select one to read it)",
                interactive=False,
                elem_id="grm-compare-differ",
            ),
            pair=gr.HTML(js_on_load=None, elem_id="grm-compare-pair"),
        )
    h = CompareHandlers(services, ui, setups)
    fields = [field for setup in setups for field in setup.inputs()]
    outputs = [ui.message, ui.figures, ui.differ, ui.pair]
    run.click(h.compare, [dataset, limit, *fields], outputs, api_name="compare")
    ui.differ.select(h.show_pair, None, [ui.pair], api_visibility="private")
    return h


def _setup_fields(services: Services, name: str) -> SetupFields:
    prompts = version_choices(services)
    current = services.judge.options.prompt_version or (prompts[0][1] if prompts else None)
    with gr.Column(elem_id=f"grm-compare-{name.lower()}"):
        gr.Markdown(f"**Setup {name}**")
        return SetupFields(
            prompt=gr.Dropdown(prompts, value=current, label="Prompt version"),
            judge=gr.Dropdown(judge_choices(services), value=ACTIVE, label="Judge version"),
            k=gr.Number(value=1, precision=0, minimum=1, label="Samples (k)"),
            swap=gr.Checkbox(value=False, label="Judge both orders (swap)"),
            aggregate=gr.Radio(
                [rule.value for rule in Aggregation], value=Aggregation.MEAN.value, label="Rule"
            ),
        )
