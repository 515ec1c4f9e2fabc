"""The Agreement tab: how often the judge agrees with people, overall and per group, with plots."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from webui.common import ALL_DATASETS, dataset_choices, dataset_id_of, explain
from webui.render import safe_text

GROUP_COLUMNS = ["group", "n", "accuracy", "ci_low", "ci_high", "kappa", "no_verdict_rate"]
GROUP_HEADERS = ["group", "n", "accuracy", "CI low", "CI high", "κ", "no verdict"]


class AgreementHandlers:
    def __init__(self, services: Any) -> None:
        self.services = services

    def report(self, dataset: Any) -> tuple:
        """Headline figures, confusion matrix, per-group tables and plots, inter-annotator."""
        try:
            r = self.services.agreement(dataset_id_of(dataset))
        except Exception as exc:
            empty = pd.DataFrame()
            return (_box("error", f"Could not compute agreement: {explain(exc)}"),) + (empty,) * 6
        by_category = _groups(r.get("by_category", {}))
        return (
            _headline(r),
            _confusion(r["confusion"]),
            by_category,
            _plot_frame(by_category),
            _groups(r.get("by_judge_version", {})),
            _groups(r.get("by_annotator", {})),
            _inter_annotator(r.get("inter_annotator", [])),
        )


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


def _box(kind: str, text: str) -> str:
    return f'<div class="grm-msg grm-msg-{kind}">{safe_text(text)}</div>'


def build_agreement_tab(services: Any) -> gr.Tab:
    h = AgreementHandlers(services)
    with gr.Tab("Agreement", id="agreement", elem_id="grm-tab-agreement") as tab:
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
    outputs = [cards, confusion, by_category, plot, by_version, by_annotator, inter]
    refresh.click(h.report, [dataset], outputs, api_name="agreement")
    dataset.input(h.report, [dataset], outputs, api_visibility="private")
    tab.select(
        lambda d: (gr.update(choices=dataset_choices(services)), *h.report(d)),
        [dataset],
        [dataset, *outputs],
        api_visibility="private",
    )
    return tab
