"""Measure the web app in a real browser, warm: Judge click -> first reasoning on screen, and the
agree keystroke -> next pair on screen. Prints and saves benchmarks/results/bench_ui.json.

    .venv/bin/python benchmarks/bench_ui.py --runs 5
    GRM_JUDGE_BACKEND=vllm .venv-vllm/bin/python benchmarks/bench_ui.py --output \
        benchmarks/results/bench_ui_vllm.json    # the same app judging on vLLM's CPU build

Launches the app in-process on a free loopback port over a fresh data directory (demo pairs,
embedded SmolLM2 judge), drives Debian's Chromium through Playwright, and times everything in the
page itself: from the input event's timestamp to the first animation frame after the DOM shows
the result (what a person sees), so network, server, rendering and paint are all included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.desk import CHROMIUM, CHROMIUM_ARGS, open_desk, pair_on_screen  # noqa: E402
from vocabulary import BackendName  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_ui.json"

# In-page probes: t0 = the event's own timestamp; t1 = first frame after the DOM changed.
WATCH_JUDGE = """() => {
  const OBSERVE = {subtree: true, childList: true, characterData: true, attributes: true};
  const b = window.__bench = {t0: null, principles: null, reasoning: null, verdict: null};
  document.getElementById('grm-judge').addEventListener('click',
    (e) => { if (b.t0 === null) b.t0 = e.timeStamp; }, {capture: true, once: true});
  const has = (id) => { const box = document.querySelector(`#${id} .grm-box`);
    return box && !box.querySelector('.grm-empty') && box.innerText.trim().length > 0; };
  const frame = (key) => requestAnimationFrame(() => {
    if (b[key] === null) b[key] = performance.now(); });
  new MutationObserver(() => {
    if (b.t0 === null) return;
    if (has('grm-principles')) frame('principles');
    if (has('grm-principles') || has('grm-critique') || has('grm-verdict')) frame('reasoning');
    const badge = document.querySelector('#grm-badge .grm-badge');
    if (badge && ['done', 'none'].includes(badge.dataset.state)) frame('verdict');
  }).observe(document.body, OBSERVE);
}"""

WATCH_KEY = """(from) => {
  const OBSERVE = {subtree: true, childList: true, characterData: true, attributes: true};
  const b = window.__bench = {t0: null, shown: null, from};
  window.addEventListener('keydown', (e) => { if (b.t0 === null) b.t0 = e.timeStamp; },
    {capture: true, once: true});
  new MutationObserver(() => {
    const m = document.querySelector('#grm-meta [data-pair-id]');
    if (b.t0 !== null && m && Number(m.dataset.pairId) !== from && b.shown === null)
      requestAnimationFrame(() => { if (b.shown === null) b.shown = performance.now(); });
  }).observe(document.body, OBSERVE);
}"""


def start_app(max_new_tokens: int, judged_pairs: int):
    """The app on a free port over a temp data directory; the judge loaded and some pairs judged."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app import build_app, serve, share_cores_with_saves
    from services import Services
    from settings import load_settings

    home = Path(tempfile.mkdtemp(prefix="grm-bench-ui-"))
    settings = load_settings(
        home=home, database_url=None, max_new_tokens=max_new_tokens, port=_free_port()
    )
    settings = share_cores_with_saves(settings)  # as `grm serve` runs it, before the judge loads
    threads = settings.judge_threads
    services = Services.open(settings)
    services.load_demo_if_empty()
    services.backend()  # load the model now: the benchmark is about a warm app
    # Agreeing needs a verdict on screen: judge the first pairs of the queue ahead (batch).
    services.judge_pending(limit=judged_pairs)
    _, url = serve(build_app(services), settings, prevent_thread_lock=True, quiet=True)
    return url, services, threads


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def time_judge(page, read_ms: int = 0) -> dict:
    """One Judge click: ms to the first principles text, to any reasoning, to the verdict.
    `read_ms` first: the time a person looks at the pair before asking the judge (the app
    reads the pair's prompt into the judge meanwhile)."""
    page.wait_for_timeout(read_ms)
    page.evaluate(WATCH_JUDGE)
    page.click("#grm-judge")
    page.wait_for_function("() => window.__bench.verdict !== null")
    b = page.evaluate("() => window.__bench")
    since = lambda key: None if b[key] is None else b[key] - b["t0"]  # noqa: E731
    return {key: since(key) for key in ("principles", "reasoning", "verdict")}


def time_key(page, key: str, read_ms: int = 0) -> float:
    """One keystroke: ms until the next pair is on screen. `read_ms` first: a person reads the
    pair before deciding, so the page has settled (progress line, history) when the key comes."""
    page.wait_for_timeout(read_ms)
    before = pair_on_screen(page)
    page.evaluate(WATCH_KEY, before)
    page.keyboard.press(key)
    page.wait_for_function("() => window.__bench.shown !== null")
    b = page.evaluate("() => window.__bench")
    return b["shown"] - b["t0"]


def summary(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values), 1),
        "min_ms": round(min(values), 1),
        "max_ms": round(max(values), 1),
        "all_ms": [round(v, 1) for v in values],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--read-ms", type=int, default=1000, help="pause before each keystroke")
    parser.add_argument("--read-before-judge-ms", type=int, default=3000,
                        help="pause between a pair opening and the Judge click")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=96,
                        help="judge length (first-text latency does not depend on it)")  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    started = time.perf_counter()
    url, services, threads = start_app(args.max_new_tokens, judged_pairs=args.runs + 2)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        page = open_desk(browser, url, "bench", wait_ms=300_000)
        time_judge(page)  # warm-up: one judgment and one save before measuring
        time_key(page, "s")
        keys, judge = [], []
        for _ in range(args.runs):  # pairs judged ahead: their verdict is on screen
            verdict = page.get_attribute("#grm-badge .grm-badge", "data-verdict")
            key = "Enter" if verdict in ("A", "B", "tie") else "1"
            keys.append((key, time_key(page, key, read_ms=args.read_ms)))
        for _ in range(args.runs):
            time_key(page, "s")  # a pair never judged: its panels start empty
            judge.append(time_judge(page, args.read_before_judge_ms))
        at_once = []  # clicked the moment the pair shows: no time to read it ahead
        for _ in range(args.runs):
            time_key(page, "s")
            at_once.append(time_judge(page))
        browser.close()
    result = {
        "what": "warm web app, real Chromium, embedded SmolLM2-135M judge on CPU",
        "judge_click_to_first_principles": summary([j["principles"] for j in judge]),
        "judge_click_to_first_reasoning": summary([j["reasoning"] for j in judge]),
        "judge_click_to_verdict": summary([j["verdict"] for j in judge]),
        "read_ms_before_judge_click": args.read_before_judge_ms,
        "judge_clicked_at_once_to_first_principles": summary([j["principles"] for j in at_once]),
        "agree_key_to_next_pair": summary([ms for k, ms in keys if k == "Enter"]),
        "label_key_to_next_pair": summary([ms for _, ms in keys]),
        "keys_pressed": [k for k, _ in keys],
        "read_ms_before_each_key": args.read_ms,
        "max_new_tokens": args.max_new_tokens,
        "judge_backend": BackendName(services.settings.judge_backend).value,
        "judge_load_seconds": services.backend_load_seconds,
        "judge_threads": threads,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
