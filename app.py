"""GRM Studio's web app: the Gradio Blocks over the shared services, launched with safe defaults.

`python app.py` (or `grm serve`, `make run`) opens it on http://127.0.0.1:7860 with the embedded
judge and the demo pairs. Each tab is built by its own function in `webui/`; handlers only call
`services.Services`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

# Set before Gradio reads them: no telemetry or version checks leave the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402

from assets import asset_path  # noqa: E402
from settings import Settings, load_settings  # noqa: E402
from vocabulary import BackendName  # noqa: E402
from webui.agreement_tab import build_agreement_tab  # noqa: E402
from webui.batch_tab import build_batch_tab  # noqa: E402
from webui.data_tab import build_data_tab  # noqa: E402
from webui.judge_tab import build_judge_tab  # noqa: E402
from webui.keys import shortcut_script  # noqa: E402
from webui.label_tab import build_label_tab  # noqa: E402
from webui.prompts_tab import build_prompts_tab  # noqa: E402
from webui.retrain_tab import build_retrain_tab  # noqa: E402

if TYPE_CHECKING:
    from services import Services

log = logging.getLogger(__name__)

# One model answers one request at a time in-process; served models take several at once.
JUDGE_CONCURRENCY = {BackendName.TRANSFORMERS: 1, BackendName.OPENAI: 4, BackendName.VLLM: 8}
# Label saves, next pair, undo, tables: a separate, wider lane than the judge's.
DEFAULT_CONCURRENCY = 16
QUEUE_MAX_SIZE = 256


def judge_concurrency(backend: str) -> int:
    """How many judge requests may run at once for this backend."""
    return JUDGE_CONCURRENCY.get(backend, 1)


def build_app(services: Services) -> gr.Blocks:
    """The whole app over `services`: Label, Data, Judge, Batch, Agreement, Retrain tabs."""
    limit = judge_concurrency(services.settings.judge_backend)
    with gr.Blocks(title="GRM Studio", analytics_enabled=False, fill_width=True) as demo:
        gr.HTML('<div class="grm-header">GRM Studio</div>', js_on_load=None)
        with gr.Tabs(elem_id="grm-tabs"):
            build_label_tab(services, demo, limit)
            build_data_tab(services, services.settings.max_import_mb)
            build_judge_tab(services, limit)
            build_batch_tab(services, limit)
            build_agreement_tab(services)
            build_retrain_tab(services)
            build_prompts_tab(services)
    demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY, max_size=QUEUE_MAX_SIZE)
    return demo


def parse_auth(spec: str | None) -> list[tuple[str, str]] | None:
    """GRM_AUTH="alice:pw1,bob:pw2" as Gradio's list of (user, password); None when unset."""
    if not spec or not spec.strip():
        return None
    pairs = []
    for item in spec.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError("GRM_AUTH must look like 'user:password,user2:password2'")
        pairs.append((user, password))
    return pairs


def launch_options(settings: Settings) -> dict[str, Any]:
    """Safe launch settings: loopback, no share link, no telemetry, data and models not served."""
    blocked = {str(settings.home.resolve()), str(settings.model_cache.expanduser().resolve())}
    return {
        "server_name": settings.host,
        "server_port": settings.port,
        "share": False,
        "auth": parse_auth(settings.auth),
        "auth_message": "GRM Studio: sign in to label.",
        "max_file_size": f"{settings.max_import_mb}mb",
        "blocked_paths": sorted(blocked),
        "show_error": False,  # people see our one-line messages, never a stack trace
        "enable_monitoring": False,
        "mcp_server": False,
        "ssr_mode": False,
        "pwa": False,
        "run_history": False,  # prompts and labels are not copied into browser storage
        "footer_links": ["api", "settings"],
        "css_paths": [asset_path("app.css")],
        "head": shortcut_script(),
    }


def serve(
    demo: gr.Blocks, settings: Settings, *, prevent_thread_lock: bool = False, **overrides: Any
) -> tuple[Any, str]:
    """Launch `demo` with `launch_options(settings)` (overrides win); returns (app, local URL)."""
    options = {**launch_options(settings), **overrides}
    app, url, _ = demo.launch(prevent_thread_lock=prevent_thread_lock, **options)
    return app, url


def share_cores_with_saves(settings: Settings, cores: int | None = None) -> Settings:
    """While serving, a local judge runs on all cores but one (GRM_JUDGE_THREADS overrides),
    so label saves and page updates always find a free core. Measured with 20 annotators and
    3 of them judging on 2 cores: with the judge on every core, saves waited 2.4-3.8 s (p50)
    instead of 0.18 s. Returns the settings with `judge_threads` filled in for the local
    judges. llama.cpp decodes on that many threads and reads a prompt (a burst of under a
    second) on every core; outside the app (`grm judge`) it measures its own."""
    if settings.judge_backend not in (BackendName.TRANSFORMERS, BackendName.LLAMACPP):
        return settings
    threads = settings.judge_threads or max(1, (cores or os.cpu_count() or 1) - 1)
    settings = settings.model_copy(update={"judge_threads": threads})
    if settings.judge_backend != BackendName.TRANSFORMERS:
        return settings
    import judges  # noqa: F401 (sets OpenMP's passive waits, which must precede torch)

    # isort: split
    import torch

    torch.set_num_threads(threads)
    return settings


def main(host: str | None = None, port: int | None = None) -> int:
    """Open the app: database migrated, demo pairs loaded when empty, embedded judge ready."""
    from services import Services

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings = share_cores_with_saves(load_settings(**overrides))
    if settings.judge_threads is not None:
        log.info(
            "the judge uses %d CPU thread(s); the rest serve the pages", settings.judge_threads
        )
    services = Services.open(settings)
    report = services.load_demo_if_empty()
    if report is not None:
        log.info("loaded %s demo pairs into dataset %r", report.new, report.dataset)
    # Batch judging jobs a killed process left go on by themselves, in the background; on the
    # way out the running one stores its finished pairs and stays continuable.
    services.resume_judging_jobs()
    try:
        serve(build_app(services), settings)
    finally:
        services.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
