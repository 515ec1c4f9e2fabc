"""The Judge tab: which backend, model and protocol judge, how many samples, loaded or not."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
from gradio.blocks import Block

from vocabulary import BackendName, ProtocolName
from webui.common import Changes, TabHandlers, explain
from webui.render import safe_text

if TYPE_CHECKING:
    from services import Services

MODEL_HINT = (
    "empty: the embedded SmolLM2-135M-Instruct; or a local directory, a .gguf, a served name"
)


@dataclass(frozen=True)
class JudgeFields:
    """The Judge tab's settings and status line, which its handlers write to."""

    backend: gr.Dropdown
    model: gr.Textbox
    protocol: gr.Dropdown
    k: gr.Slider
    swap: gr.Checkbox
    temperature: gr.Slider
    repetition_penalty: gr.Slider
    max_new_tokens: gr.Slider
    status: gr.HTML

    def settings(self) -> list[Block]:
        """The settings in `JudgeHandlers.apply`'s order (the API's /configure_judge)."""
        return [
            *(self.backend, self.model, self.protocol, self.k, self.swap),
            *(self.temperature, self.repetition_penalty, self.max_new_tokens),
        ]


class JudgeHandlers(TabHandlers[JudgeFields]):
    def status(self) -> str:
        """Backend, model, loaded or not (with load time), and the options in use."""
        return status_html(self.services)

    def apply(
        self,
        backend: str,
        model: str,
        protocol: str,
        k: float,
        swap: bool,
        temperature: float,
        repetition_penalty: float,
        max_new_tokens: float,
    ) -> str:
        """Use these settings for every judgment from now on (everyone shares one judge)."""
        from judges.judge import JudgeOptions

        try:
            options = JudgeOptions(
                protocol=protocol,
                k=int(k),
                swap=bool(swap),
                temperature=float(temperature),
                repetition_penalty=float(repetition_penalty),
                max_new_tokens=int(max_new_tokens),
            )
            self.services.configure_judge(backend, (model or "").strip() or None, options)
        except Exception as exc:
            return _error(f"Settings refused: {explain(exc)}")
        return self.status()

    def load(self) -> str:
        """Load the model now so the first judgment is fast; a failure is a message."""
        try:
            self.services.backend()
        except Exception as exc:
            return _error(f"The judge could not be loaded: {explain(exc)}")
        return self.status()

    def current_values(self) -> Changes:
        """The tab was opened: the settings in use now (another person may have changed them)."""
        ui, now = self.ui, judge_settings(self.services)
        return {
            ui.backend: now["backend"],
            ui.model: now["model"],
            ui.protocol: now["protocol"],
            ui.k: now["k"],
            ui.swap: now["swap"],
            ui.temperature: now["temperature"],
            ui.repetition_penalty: now["repetition_penalty"],
            ui.max_new_tokens: now["max_new_tokens"],
            ui.status: self.status(),
        }


def judge_settings(services: Services) -> dict[str, Any]:
    """The judge's settings in use, by name."""
    info = services.judge_info()
    o = info["options"]
    return {
        "backend": info["backend"],
        "model": info["model"] or "",
        "protocol": o.get("protocol"),
        "k": o.get("k"),
        "swap": o.get("swap"),
        "temperature": o.get("temperature"),
        "repetition_penalty": o.get("repetition_penalty"),
        "max_new_tokens": o.get("max_new_tokens"),
    }


def status_html(services: Services) -> str:
    """Backend, model, loaded or not (with load time), and the options in use."""
    info = services.judge_info()
    model = info["model"] or "SmolLM2-135M-Instruct (embedded)"
    if info["loaded"] and info["load_seconds"] is not None:
        loaded = f"loaded in {info['load_seconds']:.1f} s"
    elif info["loaded"]:
        loaded = "loaded"
    else:
        loaded = "not loaded yet (it loads on the first judgment, or press Load now)"
    o = info["options"]
    options = (
        f"protocol {o.get('protocol')}, k = {o.get('k')}, "
        f"swap {'on' if o.get('swap') else 'off'}, "
        f"temperature {o.get('temperature')}, "
        f"repetition penalty {o.get('repetition_penalty')}, "
        f"max new tokens {o.get('max_new_tokens')}"
    )
    return (
        f'<div class="grm-msg grm-msg-ok" id="grm-judge-status"><b>{safe_text(info["backend"])}'
        f"</b> · {safe_text(model)} · {safe_text(loaded)}<br>{safe_text(options)}</div>"
    )


def _error(text: str) -> str:
    return f'<div class="grm-msg grm-msg-error" id="grm-judge-status">{safe_text(text)}</div>'


def build_judge_tab(services: Services, judge_limit: int) -> gr.Tab:
    with gr.Tab("Judge", id="judge", elem_id="grm-tab-judge") as tab:
        ui, apply, load = _layout(judge_settings(services), status_html(services))
    h = JudgeHandlers(services, ui)
    apply.click(h.apply, ui.settings(), [ui.status], api_name="configure_judge")
    load.click(
        h.load,
        None,
        [ui.status],
        api_name="load_judge",
        concurrency_id="judge",
        concurrency_limit=judge_limit,
    )
    tab.select(h.current_values, None, [*ui.settings(), ui.status], api_visibility="private")
    return tab


def _layout(now: dict[str, Any], status: str) -> tuple[JudgeFields, gr.Button, gr.Button]:
    """The settings showing `now`, Apply and Load now, the status line."""
    gr.Markdown("These settings apply to everyone using this app: there is one loaded judge.")
    with gr.Row():
        backend = gr.Dropdown(
            BackendName.values(), value=now["backend"], label="Backend", elem_id="grm-backend"
        )
        model = gr.Textbox(label="Model", value=now["model"], placeholder=MODEL_HINT, scale=2)
        protocol = gr.Dropdown(ProtocolName.values(), value=now["protocol"], label="Protocol")
    with gr.Row():
        k = gr.Slider(1, 16, value=now["k"], step=1, label="Samples k (majority vote)")
        swap = gr.Checkbox(value=now["swap"], label="Swap: also judge with A and B exchanged")
        temperature = gr.Slider(0.0, 1.5, value=now["temperature"], step=0.05, label="Temperature")
        penalty = gr.Slider(
            1.0, 2.0, value=now["repetition_penalty"], step=0.05, label="Repetition penalty"
        )
        max_new = gr.Slider(32, 2048, value=now["max_new_tokens"], step=16, label="Max new tokens")
    with gr.Row():
        apply = gr.Button("Apply", variant="primary", elem_id="grm-judge-apply")
        load = gr.Button("Load now", elem_id="grm-judge-load")
    fields = JudgeFields(
        backend=backend,
        model=model,
        protocol=protocol,
        k=k,
        swap=swap,
        temperature=temperature,
        repetition_penalty=penalty,
        max_new_tokens=max_new,
        status=gr.HTML(status, js_on_load=None),
    )
    return fields, apply, load
