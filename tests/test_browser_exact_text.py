"""Issue 15 in a real browser (Debian's Chromium through Playwright): the exact view's DOM text is
the stored string, the rendered view keeps every character outside its markup, the choice is
remembered by the browser, and after a judgment the page says what the judge's prompt cut and
shows the exact prompt it received.

A scripted judge answers (no model is loaded); the prompt it is sent is the one the app builds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from desk import SCREEN, open_desk, pair_on_screen
from exact_text_cases import EXACT_CASES, rendered_text, squashed
from fakes import FakeBackend

from settings import load_settings
from tests.served import free_port
from webui.judge_saw import cut_sentence

pytestmark = pytest.mark.browser

ANSWER = "Principles: Be exact.\nCritique: A is short; B is long.\nVerdict: [[A]]"
LONG_B = "\n".join(f"Line {i}: the answer goes on, * and _ and $ kept." for i in range(120))
PANELS = ("#grm-prompt", "#grm-response-a", "#grm-response-b")
TEXT_OF = """([panel, view]) => {
  const el = document.querySelector(`${panel} .grm-view-${view}`);
  return el ? el.textContent : null;
}"""
EXACT_OF = """(panel) => {
  const pre = document.querySelector(`${panel} .grm-view-exact pre.grm-exact`);
  return pre ? pre.textContent : null;
}"""


@pytest.fixture(scope="module")
def exact_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The app over a scripted judge: first a pair with a long response B, then the cases."""
    from app import build_app, serve
    from services import Services

    home = tmp_path_factory.mktemp("exact-home")
    settings = load_settings(home=home, database_url=None, port=free_port())
    services = Services.open(settings)
    judge = FakeBackend(script=lambda messages: ANSWER)
    judge.supports_prefill = True  # the stored prompt then ends with the judge's started answer
    services.use_backend(judge)
    long_pair = {"prompt": "Summarise the text.", "response_a": "Short.", "response_b": LONG_B}
    _import(services, home / "long.jsonl", [long_pair])
    texts = [text for _, text, _ in EXACT_CASES]
    texts += [texts[0]] * (-len(texts) % 3)
    rows = [
        {"prompt": texts[i], "response_a": texts[i + 1], "response_b": texts[i + 2]}
        for i in range(0, len(texts), 3)
    ]
    _import(services, home / "cases.jsonl", rows)
    demo = build_app(services)
    _, url = serve(demo, settings, prevent_thread_lock=True, quiet=True)
    yield SimpleNamespace(url=url, services=services, judge=judge, pair_count=1 + len(rows))
    demo.close()


def _import(services, path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    services.import_file(path, dataset=path.stem)


def shown_texts(page, view: str) -> list[str | None]:
    return [page.evaluate(TEXT_OF, [panel, view]) for panel in PANELS]


def test_exact_view_is_the_stored_text_and_rendered_view_keeps_the_characters(
    browser, exact_app
) -> None:
    services = exact_app.services
    services.save_label(1, "exact-reader", "skip")  # the long pair is the next test's
    rendered_of = {text: rendered for _, text, rendered in EXACT_CASES}
    page = open_desk(browser, exact_app.url, "exact-reader")
    checked = 0
    for _ in range(exact_app.pair_count - 1):
        pair = services.pair(pair_on_screen(page))
        stored = (pair.prompt, pair.response_a, pair.response_b)
        exact = [page.evaluate(EXACT_OF, panel) for panel in PANELS]
        assert exact == list(stored)  # the DOM's text, character for character
        for text, shown in zip(stored, shown_texts(page, "rendered"), strict=True):
            expected = rendered_text(text, rendered_of.get(text))
            assert squashed(shown) == expected, (text, shown)
            checked += 1
        page.click("#grm-skip")
        page.wait_for_function(
            "old => Number(document.querySelector('#grm-meta [data-pair-id]')"
            "?.dataset.pairId) !== old",
            arg=pair.id,
        )
    assert checked >= len(EXACT_CASES)
    page.context.close()


def test_the_view_choice_shows_one_view_and_is_remembered_by_the_browser(
    browser, exact_app
) -> None:
    context = browser.new_context(viewport=SCREEN)
    page = open_desk(browser, exact_app.url, "view-chooser", context)
    displayed = """(panel) => ['rendered', 'exact'].map(v => getComputedStyle(
        document.querySelector(`${panel} .grm-view-${v}`)).display !== 'none')"""
    assert page.evaluate(displayed, "#grm-response-b") == [True, False]
    page.locator("#grm-text-view label", has_text="Exact").click()
    page.wait_for_function("() => document.documentElement.dataset.grmTextView === 'exact'")
    assert page.evaluate(displayed, "#grm-response-b") == [False, True]

    again = open_desk(browser, exact_app.url, "view-chooser", context)  # same browser
    again.wait_for_function("() => document.documentElement.dataset.grmTextView === 'exact'")
    assert again.evaluate(displayed, "#grm-prompt") == [False, True]
    assert again.locator("#grm-text-view input[value=exact]").is_checked()
    context.close()


def test_a_direction_override_in_the_exact_view_reorders_nothing(browser, exact_app) -> None:
    (case,) = [text for name, text, _ in EXACT_CASES if name == "bidi-override"]
    services = exact_app.services
    pair_id = next(p for p in range(2, exact_app.pair_count + 1) if _holds(services.pair(p), case))
    for earlier in range(1, pair_id):
        services.save_label(earlier, "bidi-reader", "skip")
    page = open_desk(browser, exact_app.url, "bidi-reader")
    assert pair_on_screen(page) == pair_id
    page.locator("#grm-text-view label", has_text="Exact").click()
    page.wait_for_function("() => document.documentElement.dataset.grmTextView === 'exact'")
    lefts = page.evaluate(
        """() => {
          const pres = [...document.querySelectorAll('.grm-view-exact pre.grm-exact')];
          const pre = pres.find(p => p.textContent.includes('gpj.exe'));
          const walker = document.createTreeWalker(pre, NodeFilter.SHOW_TEXT);
          let node; while ((node = walker.nextNode()) && !node.data.includes('gpj')) {}
          const at = node.data.indexOf('gpj');
          return [0, 1, 2].map(i => { const r = document.createRange();
            r.setStart(node, at + i); r.setEnd(node, at + i + 1);
            return r.getBoundingClientRect().left; });
        }"""
    )
    assert lefts == sorted(lefts), f"'gpj' was drawn out of order: {lefts}"
    page.context.close()


def _holds(pair, text: str) -> bool:
    return text in (pair.prompt, pair.response_a, pair.response_b)


def test_a_long_response_shows_the_cut_and_the_exact_prompt_the_judge_got(
    browser, exact_app
) -> None:
    services, judge = exact_app.services, exact_app.judge
    page = open_desk(browser, exact_app.url, "cut-reader")
    assert pair_on_screen(page) == 1
    assert page.inner_text("#grm-judge-saw").strip() == ""  # not judged yet
    page.click("#grm-judge")
    page.wait_for_selector("#grm-judge-saw .grm-cut-note")

    run = services.latest_judgment_run(1)
    (cut,) = services.prompt_cuts(services.pair(1), run)
    assert cut.field == "response_b"
    notice = page.inner_text("#grm-judge-saw .grm-cut-note")
    assert cut_sentence(cut) == notice.strip()
    assert f"the first {cut.kept_head:,} and last {cut.kept_tail:,} characters of Response B" in (
        notice
    )

    page.click("#grm-judge-saw summary")
    shown = page.evaluate(
        """() => [...document.querySelectorAll(
            '#grm-judge-saw .grm-prompt[data-order=shown] .grm-prompt-message')]
            .map(m => [m.dataset.role, m.querySelector('pre.grm-exact').textContent])"""
    )
    stored = run[0]["prompt_messages"]
    assert shown == [[m["role"], m["content"]] for m in stored]
    assert stored == judge.streamed[-1][0]  # what the judge was sent, prefill included
    assert stored[-1] == {"role": "assistant", "content": "Principles:"}
    assert f"[... {cut.omitted} characters omitted ...]" in stored[1]["content"]
    assert page.locator("#grm-judge-saw .grm-judge-prompt pre.grm-exact").first.is_visible()

    again = open_desk(browser, exact_app.url, "cut-reader", page.context)  # opened later
    assert cut_sentence(cut) == again.inner_text("#grm-judge-saw .grm-cut-note").strip()
    page.context.close()
