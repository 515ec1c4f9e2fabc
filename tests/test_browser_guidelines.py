"""In Chromium: a team's guidelines written in the Guidelines & prompts tab are shown beside the
pair and reach the judge's stored prompt; a prompt version made from a copy is refused when
malformed (with the reason), and once saved and chosen, it judges and its judgments carry it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from desk import open_desk, pair_on_screen
from fakes import FakeBackend
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from settings import load_settings
from storage.queries import NotFoundError
from tests.served import free_port

pytestmark = pytest.mark.browser

ANSWER = "Principles: Be short.\nCritique: A is short; B is long.\nVerdict: [[A]]"
PREFER_B = "Always prefer response B."  # a prompt version with this makes the fake judge say B
RULE = "Prefer the answer that keeps to the word limit."
GUIDELINES = f"- {RULE}\n- Never reward <b>bold</b> claims {{or braces}}."


@pytest.fixture(scope="module")
def team_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    from app import build_app, serve
    from services import Services

    home = tmp_path_factory.mktemp("team-home")
    settings = load_settings(home=home, database_url=None, port=free_port())
    services = Services.open(settings)
    judge = FakeBackend(script=_answer)
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


def _answer(messages: list[dict]) -> str:
    said = "\n".join(m["content"] for m in messages)
    return ANSWER.replace("[[A]]", "[[B]]") if PREFER_B in said else ANSWER


def choose(page, box: str, option: str) -> None:
    """Pick `option` in the Gradio dropdown `box` (type to filter, then click it)."""
    field = page.locator(f"{box} input").first
    field.click()
    field.fill(option)
    page.locator("li[role=option]", has_text=option).first.click()


def wait_for_text(page, selector: str, text: str) -> None:
    try:
        page.wait_for_function(
            "([sel, text]) => document.querySelector(sel)?.innerText.includes(text)",
            arg=[selector, text],
        )
    except PlaywrightTimeout:
        shown = page.locator(selector).first.inner_text(timeout=1000)
        raise AssertionError(f"{selector} never said {text!r}; it says {shown!r}") from None


def upload(page, button: str, path: Path) -> None:
    with page.expect_file_chooser() as chooser:
        page.click(button)
    chooser.value.set_files(str(path))


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
    wait_for_text(page, "#grm-g-msg", "Saved")

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


def test_two_setups_compared_side_by_side_and_a_differing_pair_opens(browser, team_app) -> None:
    services = team_app.services
    team = next(d.id for d in services.datasets() if d.name == "team")
    for human in ("A", "A", "A", "B"):  # the always-A setup gets 3 of 4 right, always-B 1
        pair = services.next_item("compare-labeler", team)
        services.save_label(pair.id, "compare-labeler", human)
    user = services.prompt_version("pairwise-v3")["user"]
    services.new_prompt_version("prefers-b", "pairwise-v3", user=f"{user}\n{PREFER_B}")

    page = open_desk(browser, team_app.url, "compare-lead")
    page.get_by_role("tab", name="Agreement").click()
    choose(page, "#grm-tab-agreement", "team")
    page.get_by_text("Compare judge setups").click()
    choose(page, "#grm-compare-a", "pairwise-v3 (built in)")
    choose(page, "#grm-compare-b", "prefers-b (from pairwise-v3)")
    page.click("#grm-compare-run")
    wait_for_text(page, "#grm-compare-msg", "McNemar")
    said = page.inner_text("#grm-compare-msg")
    assert "only A right 3, only B right 1, p = 0.625" in said
    assert "They differ on 4 pairs." in said
    figures = page.inner_text("#grm-compare-figures")
    assert "0.750" in figures and "0.250" in figures and "4 / 0" in figures

    ids = "#grm-compare-differ [role=gridcell][data-col='0']"  # the grid's pair column
    page.wait_for_function(f"() => document.querySelectorAll({ids!r}).length === 4")
    first = page.locator(ids).first
    pair_id = int(first.inner_text())
    first.click()
    wait_for_text(page, "#grm-compare-pair", "Say hi in")
    shown = page.get_attribute("#grm-compare-pair [data-pair-id]", "data-pair-id")
    assert int(shown) == pair_id
    assert services.pair(pair_id).prompt in page.inner_text("#grm-compare-pair")
    page.context.close()


def test_a_prompt_version_exports_and_a_bad_import_is_refused(browser, team_app, tmp_path) -> None:
    page = open_desk(browser, team_app.url, "prompt-keeper")
    page.get_by_role("tab", name="Guidelines & prompts").click()
    choose(page, "#grm-p-version", "pairwise-v2 (built in)")
    with page.expect_download() as download:
        page.click("#grm-p-export")
        page.locator("#grm-p-file a").first.click()
    exported = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert exported == json.loads(team_app.services.prompt_version_json("pairwise-v2"))

    broken = tmp_path / "broken.json"
    broken.write_text('{"version": "half", "user": "no closing brace', encoding="utf-8")
    upload(page, "#grm-p-import", broken)
    wait_for_text(page, "#grm-p-msg", "Not imported")
    with pytest.raises(NotFoundError):
        team_app.services.prompt_version("half")

    exported.update(version="team-v2-copy", parent_version="pairwise-v2")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(exported), encoding="utf-8")
    upload(page, "#grm-p-import", good)
    wait_for_text(page, "#grm-p-msg", "Imported team-v2-copy")
    stored = team_app.services.prompt_version("team-v2-copy")
    assert stored["user"] == team_app.services.prompt_version("pairwise-v2")["user"]
    page.wait_for_function(
        "() => (document.querySelector('#grm-p-user textarea')?.value || '')"
        ".includes('{response_b}')"
    )
    page.context.close()
