"""The Label tab as a person meets it in Chromium: open a session, sign in, see which pair is on
screen, wait for the next one. Shared by the browser tests and benchmarks/bench_ui.py."""

from __future__ import annotations

from pathlib import Path

# Debian's Chromium, headless in a container (no sandbox, no GPU, nothing fetched on the side).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREEN = {"width": 1366, "height": 768}
WAIT_MS = 60_000


def open_desk(browser, url: str, name: str, context=None, wait_ms: int = WAIT_MS):
    """A page in `context` (default: a new browser context, its own session) that signs in as
    `name` and shows a pair; it waits up to `wait_ms` for anything."""
    context = context or browser.new_context(viewport=SCREEN)
    page = context.new_page()
    page.set_default_timeout(wait_ms)
    page.goto(url)
    page.locator("#grm-name textarea, #grm-name input").first.fill(name)
    page.click("#grm-start")
    page.wait_for_selector("#grm-meta [data-pair-id]")
    return page


def pair_on_screen(page) -> int:
    return int(page.get_attribute("#grm-meta [data-pair-id]", "data-pair-id"))


def wait_for_new_pair(page, old: int) -> int:
    page.wait_for_function(
        "old => { const m = document.querySelector('#grm-meta [data-pair-id]');"
        " return m && Number(m.dataset.pairId) !== old; }",
        arg=old,
    )
    return pair_on_screen(page)
