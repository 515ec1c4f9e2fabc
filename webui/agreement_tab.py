"""The Agreement tab: how often the judge agrees with people, overall and per group, with plots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd
from gradio.blocks import Block

from webui.common import ALL_DATASETS, Changes, TabHandlers, dataset_choices, dataset_id_of, explain
from webui.compare_panel import build_compare_panel
from webui.render import error_box, safe_text

if TYPE_CHECKING:
    from services import Services

GROUP_COLUMNS = ["group", "n", "accuracy", "ci_low", "ci_high", "kappa", "no_verdict_rate"]
GROUP_HEADERS = ["group", "n", "accuracy", "CI low", "CI high", "κ", "no verdict"]


@dataclass(frozen=True)
class AgreementView:
    """The Agreement tab's components its handlers write to."""

    dataset: gr.Dropdown
    cards: gr.HTML
    plot: gr.BarPlot
    confusion: gr.Dataframe
    by_category: gr.Dataframe
    by_version: gr.Dataframe
    by_annotator: gr.Dataframe
    inter: gr.Dataframe

    def report_outputs(self) -> list[Block]:
        """What the report fills; this order is the API's (/agreement)."""
        return [
            *(self.cards, self.confusion, self.by_category, self.plot),
            *(self.by_version, self.by_annotator, self.inter),
        ]


class AgreementHandlers(TabHandlers[AgreementView]):
    def report(self, dataset: Any) -> Changes:
        """Headline figures, confusion matrix, per-group tables and plots, inter-annotator."""
        ui = self.ui
        try:
            r = self.services.agreement(dataset_id_of(dataset))
        except Exception as exc:
            failed = error_box(f"Could not compute agreement: {explain(exc)}")
            empty = {output: pd.DataFrame() for output in ui.report_outputs()}
            return empty | {ui.cards: failed}
        by_category = _groups(r.get("by_category", {}))
        return {
            ui.cards: _headline(r),
            ui.confusion: _confusion(r["confusion"]),
            ui.by_category: by_category,
            ui.plot: _plot_frame(by_category),
            ui.by_version: _groups(r.get("by_judge_version", {})),
            ui.by_annotator: _groups(r.get("by_annotator", {})),
            ui.inter: _inter_annotator(r.get("inter_annotator", [])),
        }

    def opened(self, dataset: Any) -> Changes:
        """The tab was opened: fresh dataset choices, then the report."""
        choices = gr.update(choices=dataset_choices(self.services))
        return {self.ui.dataset: choices} | self.report(dataset)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _headline(r: dict[str, Any]) -> str:
    pc = r.get("position_consistency") or {}
    cards = [
        ("Accuracy", _pct(r["accuracy"]), f"95% CI {_pct(r['ci_low'])} – {_pct(r['ci_high'])}"),
        ("Cohen's κ", _num(r["kappa"]), f"{r['n']} labels compared"),
        ("No verdict", _pct(r["no_verdict_rate"]), f"{r['no_verdict']} judgments"),
        ("Position consistency", _pct(pc.get("rate")), f"{pc.get('compared', 0)} swapped pairs"),
        ("Not judged", str(r.get("unjudged_labels", 0)), f"of {r.get('labels', 0)} labels"),
    ]
    html = "".join(
        f'<div class="grm-card"><div class="grm-card-title">{safe_text(t)}</div>'
        f'<div class="grm-card-value">{safe_text(v)}</div>'
        f'<div class="grm-card-note">{safe_text(n)}</div></div>'
        for t, v, n in cards
    )
    return f'<div class="grm-cards" id="grm-agreement-cards">{html}</div>'


def _confusion(c: dict[str, Any]) -> pd.DataFrame:
    frame = pd.DataFrame(c["matrix"], columns=[f"judge {x}" for x in c["columns"]])
    frame.insert(0, "human ↓ / judge →", [f"human {x}" for x in c["rows"]])
    return frame


def _groups(groups: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = [[name, *(g.get(key) for key in GROUP_COLUMNS[1:])] for name, g in groups.items()]
    return pd.DataFrame(rows, columns=GROUP_HEADERS).round(3)


def _plot_frame(by_category: pd.DataFrame) -> pd.DataFrame:
    frame = by_category[["group", "accuracy"]].dropna()
    return frame.rename(columns={"group": "category"})


def _inter_annotator(rows: list[dict[str, Any]]) -> pd.DataFrame:
    data = [[" & ".join(r["annotators"]), r["n_shared"], r["agreement"], r["kappa"]] for r in rows]
    return pd.DataFrame(data, columns=["annotators", "shared pairs", "agreement", "kappa"]).round(3)


def build_agreement_tab(services: Services) -> gr.Tab:
    with gr.Tab("Agreement", id="agreement", elem_id="grm-tab-agreement") as tab:
        ui, refresh = _layout(services)
        compare = build_compare_panel(services, ui.dataset)
    h = AgreementHandlers(services, ui)
    outputs = ui.report_outputs()
    refresh.click(h.report, [ui.dataset], outputs, api_name="agreement")
    ui.dataset.input(h.report, [ui.dataset], outputs, api_visibility="private")
    tab.select(h.opened, [ui.dataset], [ui.dataset, *outputs], api_visibility="private")
    tab.select(compare.choices, None, compare.choice_fields(), api_visibility="private")
    return tab


def _layout(services: Services) -> tuple[AgreementView, gr.Button]:
    """Dataset and Refresh over the cards, the plot and the tables; returns them and Refresh."""
    with gr.Row(equal_height=True):
        dataset = gr.Dropdown(
            dataset_choices(services),
            value=ALL_DATASETS,
            label="Dataset",
            scale=3,
            container=False,
        )
        refresh = gr.Button(
            "Refresh", size="md", scale=0, min_width=110, elem_id="grm-agreement-refresh"
        )
    cards = gr.HTML(js_on_load=None, elem_id="grm-agreement")
    with gr.Row():
        with gr.Column(scale=2):
            plot = gr.BarPlot(
                x="category",
                y="accuracy",
                y_lim=[0, 1],
                title="Accuracy by category",
                height=240,
                elem_id="grm-plot-category",
            )
        with gr.Column(scale=3):
            confusion = gr.Dataframe(label="Confusion: human x judge", interactive=False)
    with gr.Row():
        by_category = gr.Dataframe(label="By category", interactive=False)
        by_version = gr.Dataframe(label="By judge version", interactive=False)
    with gr.Row():
        by_annotator = gr.Dataframe(label="By annotator", interactive=False)
        inter = gr.Dataframe(label="Inter-annotator agreement", interactive=False)
    view = AgreementView(
        dataset=dataset,
        cards=cards,
        plot=plot,
        confusion=confusion,
        by_category=by_category,
        by_version=by_version,
        by_annotator=by_annotator,
        inter=inter,
    )
    return view, refresh
