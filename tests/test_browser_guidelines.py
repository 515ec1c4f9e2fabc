"""In Chromium: a team's guidelines written in the Guidelines & prompts tab are shown beside the
pair and reach the judge's stored prompt; a prompt version made from a copy is refused when
malformed (with the reason), and once saved and chosen, it judges and its judgments carry it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from conftest import free_port
from desk import open_desk, pair_on_screen
from fakes import FakeBackend

from settings import load_settings
from storage.queries import NotFoundError

pytestmark = pytest.mark.browser

ANSWER = "Principles: Be short.\nCritique: A is short; B is long.\nVerdict: [[A]]"
RULE = "Prefer the answer that keeps to the word limit."
GUIDELINES = f"- {RULE}\n- Never reward <b>bold</b> claims {{or braces}}."


@pytest.fixture(scope="module")
def team_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    from app import build_app, serve
    from services import Services

    home = tmp_path_factory.mktemp("team-home")
    settings = load_settings(home=home, database_url=None, port=free_port())
    services = Services.open(settings)
    judge = FakeBackend(script=lambda messages: ANSWER)
    judge.supports_prefill = True
    services.use_backend(judge)
    rows = [{"prompt": f"Say hi in {n} words.", "response_a": "Hi.", "response_b": "Hello " * n}
            for n in range(2, 6)]  # fmt: skip
    source = home / "team.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    services.import_file(source, dataset="team")
    demo = build_app(services)
    _, url = serve(demo, settings, prevent_thread_lock=True, quiet=True)
    yield SimpleNamespace(url=url, services=services)
    demo.close()


def choose(page, box: str, option: str) -> None:
    """Pick `option` in the Gradio dropdown `box` (type to filter, then click it)."""
    field = page.locator(f"{box} input").first
    field.click()
    field.fill(option)
    page.locator("li[role=option]", has_text=option).first.click()


def wait_for_text(page, selector: str, text: str) -> None:
    page.wait_for_function(
        "([sel, text]) => document.querySelector(sel)?.innerText.includes(text)",
        arg=[selector, text],
    )


def judge_pair_on_screen(page, services) -> list[dict]:
    """Judge the pair on screen and return its new run's rows (an earlier test may have judged
    the same pair: its stored run must not be taken for this one)."""
    pair_id = pair_on_screen(page)
    before = {row["id"] for row in services.latest_judgment_run(pair_id)}
    page.click("#grm-judge")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = services.latest_judgment_run(pair_id)
        if run and not {row["id"] for row in run} & before:
            return run
        page.wait_for_timeout(100)  # polling for the stored run, not a wait for nothing
    raise AssertionError(f"no new judgment of pair {pair_id} was stored")


def test_guidelines_are_shown_beside_the_pair_and_reach_the_judge(browser, team_app) -> None:
    page = open_desk(browser, team_app.url, "team-lead")
    page.get_by_role("tab", name="Guidelines & prompts").click()
    choose(page, "#grm-g-ds", "team")
    wait_for_text(page, "#grm-g-msg", "team has no guidelines yet")  # loaded: typing is kept
    page.locator("#grm-guidelines-text textarea").fill(GUIDELINES)
    page.click("#grm-g-save")
    page.wait_for_function(
        "() => document.querySelector('#grm-g-msg')?.innerText.includes('Saved')"
    )

    page.get_by_role("tab", name="Label").click()
    choose(page, "#grm-dataset", "team")
    page.get_by_text("Guidelines for this dataset").click()
    wait_for_text(page, "#grm-guidelines", RULE)
    shown = page.inner_text("#grm-guidelines")
    assert "<b>bold</b>" in shown and "{or braces}" in shown  # shown as written, never as HTML
    assert page.locator("#grm-guidelines b").count() == 0

    run = judge_pair_on_screen(page, team_app.services)
    sent = "\n".join(m["content"] for m in run[0]["prompt_messages"])
    assert RULE in sent and "<b>bold</b> claims {or braces}" in sent
    page.context.close()


def test_a_prompt_version_from_a_copy_is_checked_saved_and_judges(browser, team_app) -> None:
    page = open_desk(browser, team_app.url, "prompt-writer")
    page.get_by_role("tab", name="Guidelines & prompts").click()
    choose(page, "#grm-p-version", "pairwise-v3 (built in)")
    user = page.locator("#grm-p-user textarea")
    page.wait_for_function(
        "() => (document.querySelector('#grm-p-user textarea')?.value || '')"
        ".includes('{response_b}')"
    )
    original = user.input_value()
    page.locator("#grm-p-name input, #grm-p-name textarea").first.fill("team-v1")
    user.fill(original.replace("{response_a}", "(response A left out)"))
    page.click("#grm-p-save")
    page.wait_for_function(
        "() => document.querySelector('#grm-p-msg')?.innerText.includes('Not saved')"
    )
    assert "response_a" in page.inner_text("#grm-p-msg")
    with pytest.raises(NotFoundError, match="not found"):
        team_app.services.prompt_version("team-v1")  # refused: nothing stored

    user.fill(original + " Count the words of each response first.")
    page.click("#grm-p-save")
    page.wait_for_function(
        "() => document.querySelector('#grm-p-msg')?.innerText.includes('Saved team-v1')"
    )
    page.click("#grm-p-use")
    page.wait_for_function(
        "() => document.querySelector('#grm-p-msg')?.innerText.includes('now uses team-v1')"
    )

    page.get_by_role("tab", name="Label").click()
    run = judge_pair_on_screen(page, team_app.services)
    assert {row["prompt_version"] for row in run} == {"team-v1"}
    assert "Count the words of each response first." in run[0]["prompt_messages"][1]["content"]
    page.context.close()
