"""The Retrain tab: start a run on the labels, watch it, compare before/after, activate."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from judges.backends.adapters import weights_label
from judges.train_config import TrainConfig, config_choices, config_default
from vocabulary import UNFINISHED_RUN_STATUSES, RunStatus
from webui.common import explain
from webui.render import error_box, ok_box

POLL_S = 2.0
VERSION_COLUMNS = ["id", "name", "active", "parent", "run", "accuracy", "kappa", "weights", "path"]
LOSS_COLUMNS = ["step", "loss"]
PHASES = {
    "starting": "Starting",
    "evaluating_before": "Judging the held-out pairs with the current judge",
    "sampling": "Sampling more judgments for pairs with no agreeing one",
    "training": "Training",
    "evaluating_after": "Judging the held-out pairs with the new judge",
    "done": "Finished",
}


def progress_text(run: dict[str, Any] | None) -> str:
    """One paragraph on a run: status, phase, step / loss / time left, or why it failed."""
    if run is None:
        return "No training run yet."
    p = run.get("progress") or {}
    head = f"Run {run['id']} ({run['method']}): {run['status']}"
    if run["status"] in (RunStatus.FAILED, RunStatus.CANCELLED):
        return f"{head}. {run['error'] or ''}".strip()
    if run["status"] == RunStatus.DONE:
        return f"{head}. A new judge version is registered; activate it below to judge with it."
    parts = [head, PHASES.get(p.get("phase"), p.get("phase") or "waiting for the worker")]
    if p.get("phase") == "training" and p.get("max_steps"):
        parts.append(f"step {p.get('step', 0)} of {p['max_steps']}")
        if p.get("loss") is not None:
            parts.append(f"loss {p['loss']:.4f}")
        if p.get("eta_s") is not None:
            parts.append(f"about {p['eta_s']:.0f} s left")
    elif p.get("total") and str(p.get("phase")).startswith("evaluating"):
        parts.append(f"{p.get('done', 0)} of {p['total']} pairs")
    return " · ".join(parts)


def loss_frame(run: dict[str, Any] | None) -> pd.DataFrame:
    losses = ((run or {}).get("progress") or {}).get("losses") or []
    return pd.DataFrame(losses, columns=LOSS_COLUMNS)


def metrics_frame(run: dict[str, Any] | None) -> pd.DataFrame:
    from judges.evaluation import before_after
    from webui.figures import metric_rows, paired_rows

    run = run or {}
    before, after = run.get("metrics_before"), run.get("metrics_after")
    paired = before_after(before, after) if before and after else None
    return pd.DataFrame(metric_rows(before, after) + paired_rows(paired))


def versions_frame(versions: list[dict[str, Any]]) -> pd.DataFrame:
    from webui.figures import metric_value

    rows = [
        [
            v["id"],
            v["name"],
            "yes" if v["is_active"] else "",
            v["parent_id"] or "",
            v["training_run_id"] or "",
            metric_value(v["metrics"], "accuracy"),
            metric_value(v["metrics"], "kappa"),
            weights_label(v["adapter_path"]),
            v["adapter_path"] or "",
        ]
        for v in versions
    ]
    return pd.DataFrame(rows, columns=VERSION_COLUMNS)


CURVE_SERIES = ("before (parent judge)", "after (retrained)")


def curve_frame(versions: list[dict[str, Any]]) -> pd.DataFrame:
    """The user's own learning curve: for each retrained version, held-out accuracy against
    the labels it was trained on, before (its parent) and after, on the same held-out pairs."""
    rows = []
    for v in versions:
        metrics = v.get("metrics") or {}
        paired, training = metrics.get("paired"), metrics.get("training") or {}
        split = training.get("split") or {}
        if not paired or "train" not in split:
            continue  # a base version, or one registered without a paired evaluation
        labels = len(split["train"])
        before, after = paired["first_accuracy"], paired["second_accuracy"]
        rows += [
            [labels, before, CURVE_SERIES[0], v["name"]],
            [labels, after, CURVE_SERIES[1], v["name"]],
        ]
    frame = pd.DataFrame(rows, columns=["labels used", "held-out accuracy", "judge", "version"])
    return frame.sort_values("labels used", kind="stable", ignore_index=True)  # before, after


class RetrainHandlers:
    """Each handler is one services call and a rendering; errors come back as a message."""

    def __init__(self, services: Any) -> None:
        self.services = services

    def start(
        self,
        method: str,
        weights: str,
        epochs: float,
        rank: float,
        lr: float | None,
        share: float,
        blocks: float | None = None,
    ) -> str:
        """`lr` None (the field left blank): the measured default for the weights trained;
        `blocks` None or 0 (the field left blank): every block trains."""
        try:
            config = TrainConfig(
                method=method,
                weights=weights,
                epochs=float(epochs),
                lora_rank=int(rank),
                learning_rate=float(lr) if lr else None,
                heldout_share=float(share),
                trained_layers=int(blocks) if blocks else None,
            )
            run_id = self.services.start_training_run(config)
        except Exception as exc:
            return error_box(f"Not started: {explain(exc)}")
        return ok_box(f"Run {run_id} started.")

    def cancel(self) -> str:
        run = self._latest()
        if run is None or run["status"] not in UNFINISHED_RUN_STATUSES:
            return ok_box("Nothing is running.")
        try:
            run = self.services.cancel_training_run(run["id"])
        except Exception as exc:
            return error_box(f"Not cancelled: {explain(exc)}")
        return ok_box(f"Run {run['id']} {run['status']}.")

    def poll(self) -> tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        run = self._latest()
        versions = self.services.versions()
        return (
            ok_box(progress_text(run)),
            loss_frame(run),
            metrics_frame(run),
            versions_frame(versions),
            curve_frame(versions),
        )

    def activate(self, version_id: float | None, force: bool = False) -> tuple[str, pd.DataFrame]:
        if not version_id:
            return error_box("Give the id of the version to activate."), self._versions()
        return self._switch(lambda: self.services.activate_version(int(version_id), bool(force)))

    def rollback(self) -> tuple[str, pd.DataFrame]:
        return self._switch(self.services.rollback_version)

    def _switch(self, action) -> tuple[str, pd.DataFrame]:
        try:
            active = action()
        except Exception as exc:
            return error_box(f"Not changed: {explain(exc)}"), self._versions()
        message = f"Active judge: {active['name']}. The Label tab judges with it from now on."
        return ok_box(message), self._versions()

    def _latest(self) -> dict[str, Any] | None:
        runs = self.services.training_runs(limit=1)
        return runs[0] if runs else None

    def _versions(self) -> pd.DataFrame:
        return versions_frame(self.services.versions())


def build_retrain_tab(services: Any) -> gr.Tab:
    """Settings and Start / Cancel; progress, loss curve and before/after; versions. The
    settings' defaults and choices are TrainConfig's own."""
    h = RetrainHandlers(services)
    with gr.Tab("Retrain", id="retrain", elem_id="grm-tab-retrain") as tab:
        gr.Markdown(
            "Retrain the judge on your labels (every weight, or a LoRA adapter), measured on "
            "held-out labeled pairs before and after. The new judge is registered but not used "
            "until you activate it."
        )
        with gr.Row():
            method = gr.Dropdown(
                config_choices("method"), value=config_default("method"), label="Method"
            )
            weights = gr.Dropdown(
                config_choices("weights"), value=config_default("weights"), label="Weights trained"
            )
            epochs = gr.Number(value=config_default("epochs"), label="Epochs", minimum=0.1)
            rank = gr.Number(
                value=config_default("lora_rank"), label="LoRA rank", precision=0, minimum=1
            )
            lr = gr.Number(
                value=config_default("learning_rate"),
                label="Learning rate (blank: measured default)",
            )
            share = gr.Slider(
                0.05, 0.5, value=config_default("heldout_share"), step=0.05, label="Held-out share"
            )
            # No minimum: Gradio sends a blank field as 0 and would refuse it before the handler.
            blocks = gr.Number(
                value=config_default("trained_layers"),
                label="Blocks trained, from the top (blank: all)",
                precision=0,
            )
        with gr.Row():
            start = gr.Button("Start training", variant="primary", elem_id="grm-retrain-start")
            cancel = gr.Button("Cancel", variant="stop", elem_id="grm-retrain-cancel")
        message = gr.HTML(elem_id="grm-retrain-message")
        status = gr.HTML(elem_id="grm-retrain-status")
        with gr.Row():
            loss = gr.LinePlot(loss_frame(None), x="step", y="loss", title="Training loss")
            metrics = gr.Dataframe(metrics_frame(None), label="Held-out figures", interactive=False)
        versions = gr.Dataframe(versions_frame([]), label="Judge versions", interactive=False)
        curve = gr.LinePlot(
            curve_frame([]),
            x="labels used",
            y="held-out accuracy",
            color="judge",
            y_lim=[0, 1],
            title="Your learning curve: held-out accuracy vs labels used",
            elem_id="grm-retrain-curve",
        )
        with gr.Row():
            version_id = gr.Number(value=None, label="Version id", precision=0)
            force = gr.Checkbox(
                False, label="Activate even if significantly worse", elem_id="grm-retrain-force"
            )
            activate = gr.Button("Activate", elem_id="grm-retrain-activate")
            rollback = gr.Button("Roll back to parent", elem_id="grm-retrain-rollback")
        timer = gr.Timer(POLL_S)
    outputs = [status, loss, metrics, versions, curve]
    start.click(
        h.start,
        [method, weights, epochs, rank, lr, share, blocks],
        [message],
        api_name="start_training",
    )
    cancel.click(h.cancel, None, [message], api_name="cancel_training")
    activate.click(
        h.activate, [version_id, force], [message, versions], api_name="activate_version"
    )
    rollback.click(h.rollback, None, [message, versions], api_name="rollback_version")
    timer.tick(h.poll, None, outputs, api_visibility="private", show_progress="hidden")
    tab.select(h.poll, None, outputs, api_visibility="private")
    return tab
