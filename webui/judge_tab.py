"""The Judge tab: which backend, model and protocol judge, how many samples, loaded or not."""

from __future__ import annotations

from typing import Any

import gradio as gr

from vocabulary import BackendName, ProtocolName
from webui.common import explain
from webui.render import safe_text

MODEL_HINT = (
    "empty: the embedded SmolLM2-135M-Instruct; or a local directory, a .gguf, a served name"
)


class JudgeHandlers:
    def __init__(self, services: Any) -> None:
        self.services = services

    def status(self) -> str:
        """Backend, model, loaded or not (with load time), and the options in use."""
        info = self.services.judge_info()
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
            f"temperature {o.get('temperature')}, max new tokens {o.get('max_new_tokens')}"
        )
        return (
            f'<div class="grm-msg grm-msg-ok" id="grm-judge-status"><b>{safe_text(info["backend"])}'
            f"</b> · {safe_text(model)} · {safe_text(loaded)}<br>{safe_text(options)}</div>"
        )

    def apply(
        self,
        backend: str,
        model: str,
        protocol: str,
        k: float,
        swap: bool,
        temperature: float,
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

    def current_values(self) -> tuple:
        info = self.services.judge_info()
        o = info["options"]
        return (
            info["backend"],
            info["model"] or "",
            o.get("protocol"),
            o.get("k"),
            o.get("swap"),
            o.get("temperature"),
            o.get("max_new_tokens"),
            self.status(),
        )


def _error(text: str) -> str:
    return f'<div class="grm-msg grm-msg-error" id="grm-judge-status">{safe_text(text)}</div>'


def build_judge_tab(services: Any, judge_limit: int) -> gr.Tab:
    h = JudgeHandlers(services)
    names = ["backend", "model", "protocol", "k", "swap", "t", "max", "status"]
    v = dict(zip(names, h.current_values(), strict=True))
    with gr.Tab("Judge", id="judge", elem_id="grm-tab-judge") as tab:
        gr.Markdown("These settings apply to everyone using this app: there is one loaded judge.")
        with gr.Row():
            backend = gr.Dropdown(
                BackendName.values(), value=v["backend"], label="Backend", elem_id="grm-backend"
            )
            model = gr.Textbox(
                label="Model",
                value=v["model"],
                placeholder=MODEL_HINT,
                scale=2,
            )
            protocol = gr.Dropdown(ProtocolName.values(), value=v["protocol"], label="Protocol")
        with gr.Row():
            k = gr.Slider(1, 16, value=v["k"], step=1, label="Samples k (majority vote)")
            swap = gr.Checkbox(value=v["swap"], label="Swap: also judge with A and B exchanged")
            temperature = gr.Slider(0.0, 1.5, value=v["t"], step=0.05, label="Temperature")
            max_new = gr.Slider(32, 2048, value=v["max"], step=16, label="Max new tokens")
        with gr.Row():
            apply = gr.Button("Apply", variant="primary", elem_id="grm-judge-apply")
            load = gr.Button("Load now", elem_id="grm-judge-load")
        status = gr.HTML(v["status"], js_on_load=None)
    fields = [backend, model, protocol, k, swap, temperature, max_new]
    apply.click(h.apply, fields, [status], api_name="configure_judge")
    load.click(
        h.load,
        None,
        [status],
        api_name="load_judge",
        concurrency_id="judge",
        concurrency_limit=judge_limit,
    )
    tab.select(h.current_values, None, [*fields, status], api_visibility="private")
    return tab
