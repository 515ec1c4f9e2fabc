"""The web app in a real browser (Debian's Chromium through Playwright): streaming panels, the
keyboard, hostile content that must run and fetch nothing, two annotators at once, screenshots.

Chromium missing: skipped locally, a failure when GRM_REQUIRE_BROWSER=1 (CI sets it).
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

from judges.backends.base import Backend, Generation
from storage import queries

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREEN = {"width": 1366, "height": 768}
SCREENS_FOR_LEAD = Path("/tmp/grm-screens")
WAIT_MS = 60_000
SCRIPTED_JUDGMENT = (
    "Principles: The answer must be practical. It must be kind.\n"
    "Critique: Response A gives steps a person can use today. Response B talks about memory "
    "research and never answers.\n"
    "Verdict: [[A]]"
)


class PacedJudge(Backend):
    """A scripted judge that writes at a readable pace, so the test can watch the stream."""

    name = "paced"

    def __init__(self, text: str, delay_s: float = 0.04, chunk: int = 6) -> None:
        self.text, self.delay_s, self.chunk = text, delay_s, chunk

    @property
    def model_name(self) -> str:
        return "paced-test-judge"

    def stream(self, messages, options) -> Iterator[str | Generation]:
        for start in range(0, len(self.text), self.chunk):
            time.sleep(self.delay_s)
            yield self.text[start : start + self.chunk]
        yield Generation(text=self.text, finish_reason="stop", completion_tokens=len(self.text))


@pytest.fixture
def scripted_judge(running_app) -> Iterator[PacedJudge]:
    """Swap the app's judge for a paced script for one test, then give the embedded one back."""
    services = running_app.services
    previous = services.backend()
    judge = PacedJudge(SCRIPTED_JUDGMENT)
    services.use_backend(judge)
    try:
        yield judge
    finally:
        services.use_backend(previous, services.backend_load_seconds)


@pytest.fixture
def listener() -> Iterator[list[str]]:
    """A local HTTP server standing in for 'the outside': every request it gets is recorded."""
    hits: list[str] = []

    class Record(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Record)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hits.append(f"port:{server.server_address[1]}")  # first entry: where it listens
    yield hits
    server.shutdown()


def open_desk(browser, url: str, name: str):
    """A new browser context (its own session) that signs in as `name` and shows a pair."""
    context = browser.new_context(viewport=SCREEN)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
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


def labels_of(running_app, annotator: str) -> dict[int, dict]:
    with running_app.services.sessions.begin() as s:
        records = queries.labeled_records(s)
    return {r["pair_id"]: r for r in records if r["annotator"] == annotator}


WATCH_STREAM = """() => {
  const seen = {principlesAt: null, badgeThen: null, doneAt: null, running: false};
  window.__grmSeen = seen;
  const check = () => {
    const box = document.querySelector('#grm-principles .grm-box');
    const badge = document.querySelector('#grm-badge .grm-badge');
    const state = badge ? badge.dataset.state : null;
    // A pair judged earlier shows its stored judgment until this run starts: only text that
    // arrives after the badge went to "running" is this judgment's.
    if (state === 'running') seen.running = true;
    if (seen.running && seen.principlesAt === null && box && !box.querySelector('.grm-empty')
        && box.innerText.trim()) {
      seen.principlesAt = performance.now(); seen.badgeThen = state;
    }
    if (seen.running && seen.doneAt === null && (state === 'done' || state === 'none')) {
      seen.doneAt = performance.now();
    }
  };
  new MutationObserver(check).observe(document.body,
    {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def test_principles_stream_before_the_badge_then_agree_key_saves(browser, running_app) -> None:
    # The real embedded judge: its answer starts at "Principles:", so principle text must show
    # in its panel while the badge is still running.
    page = open_desk(browser, running_app.url, "browser-stream")
    first = pair_on_screen(page)
    page.evaluate(WATCH_STREAM)
    page.click("#grm-judge")
    page.wait_for_function("() => window.__grmSeen.doneAt !== null", timeout=180_000)
    seen = page.evaluate("() => window.__grmSeen")
    assert seen["principlesAt"] is not None, "no principle text ever appeared"
    assert seen["badgeThen"] not in ("done", "none"), "the badge was filled before the principles"
    assert seen["principlesAt"] < seen["doneAt"]
    verdict = page.get_attribute("#grm-badge .grm-badge", "data-verdict")
    stored = running_app.services.latest_judgment_run(first)
    assert stored and stored[0]["principles"].strip()
    words = re.findall(r"[A-Za-z]{4,}", stored[0]["principles"])[:3]
    panel_text = page.inner_text("#grm-principles")
    assert words and all(word in panel_text for word in words), (words, panel_text)
    assert verdict in ("A", "B", "tie"), "the embedded judge reads a verdict from its logprobs"

    page.keyboard.press("Enter")  # focus is still on the Judge button: the key must agree
    second = wait_for_new_pair(page, first)
    assert second != first
    label = labels_of(running_app, "browser-stream")[first]
    assert (label["label"], label["agreed_with_judge"]) == (verdict, True)
    assert label["judgment_id"] is not None
    page.context.close()


def test_hostile_content_runs_nothing_and_fetches_nothing(
    browser, running_app, scripted_judge, listener, tmp_path: Path
) -> None:
    port = listener[0].split(":")[1]
    outside = f"http://127.0.0.1:{port}"
    hostile = {
        "prompt": f"Describe this ![logo]({outside}/prompt.png) <script>window.__pwned=1</script>",
        "response_a": f'<img src="{outside}/a.png" onerror="window.__pwned=2"> plain A',
        "response_b": f"<script>window.__pwned=3</script>[x](javascript:window.__pwned=4) "
        f'<iframe src="{outside}/frame"></iframe> ![b]({outside}/b.png) plain B',
    }
    dataset = f"hostile-{uuid.uuid4().hex[:6]}"
    source = tmp_path / f"{dataset}.jsonl"
    source.write_text(json.dumps(hostile) + "\n", encoding="utf-8")
    running_app.services.import_file(source, dataset=dataset)
    scripted_judge.text = (
        f'Principles: <img src="{outside}/judge.png" onerror="window.__pwned=5">\n'
        "Critique: <script>window.__pwned=6</script>\nVerdict: [[A]]"
    )
    page = open_desk(browser, running_app.url, "browser-xss")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    choose_dataset(page, dataset)
    page.wait_for_function(
        "() => (document.querySelector('#grm-response-b') || {}).innerText?.includes('plain B')"
    )
    page.click("#grm-judge")
    page.wait_for_selector('#grm-badge .grm-badge[data-state="done"]')
    time.sleep(0.5)  # give any injected handler or image load the chance to run

    assert page.evaluate("() => window.__pwned") is None
    assert "<script>window.__pwned=3</script>" in page.inner_text("#grm-response-b")
    assert page.locator("#grm-response-a img, #grm-response-b img, #grm-prompt img").count() == 0
    assert page.locator("#grm-principles img, #grm-response-b iframe").count() == 0
    assert listener[1:] == [], f"the page fetched from outside: {listener[1:]}"
    app_host = urlparse(running_app.url).netloc
    strangers = [u for u in requests if urlparse(u).scheme in ("http", "https")]
    assert all(urlparse(u).netloc == app_host for u in strangers), strangers
    page.context.close()


def choose_dataset(page, dataset: str) -> None:
    """Pick a dataset in the Label tab's dropdown (type to filter, then click the option)."""
    box = page.locator("#grm-dataset input").first
    box.click()
    box.fill(dataset)
    page.locator("li[role=option]", has_text=dataset).first.click()
    page.wait_for_function(
        "name => (document.querySelector('#grm-meta') || {}).innerText?.includes(name)",
        arg=dataset,
    )


def test_two_annotators_labeling_at_once_lose_nothing(browser, running_app) -> None:
    first = open_desk(browser, running_app.url, "duo-1")
    second = open_desk(browser, running_app.url, "duo-2")
    shown: dict[str, list[int]] = {"duo-1": [], "duo-2": []}
    for _ in range(4):
        a, b = pair_on_screen(first), pair_on_screen(second)
        shown["duo-1"].append(a)
        shown["duo-2"].append(b)
        first.keyboard.press("1")  # both saves are in flight at the same time
        second.keyboard.press("2")
        wait_for_new_pair(first, a)
        wait_for_new_pair(second, b)
    for name, verdict in (("duo-1", "A"), ("duo-2", "B")):
        labels = labels_of(running_app, name)
        assert sorted(labels) == sorted(shown[name])
        assert {r["label"] for r in labels.values()} == {verdict}
    assert set(shown["duo-1"]) & set(shown["duo-2"]), "they should have labeled the same pairs"
    first.context.close()
    second.context.close()


def test_a_long_judgment_blocks_no_save_and_stops_when_its_person_moves_on(
    browser, running_app, scripted_judge
) -> None:
    scripted_judge.delay_s = 0.25  # about 12 s for the whole script
    judging = open_desk(browser, running_app.url, "slow-judge")
    other = open_desk(browser, running_app.url, "quick-saver")
    judging.click("#grm-judge")
    judging.wait_for_function("() => !document.querySelector('#grm-principles .grm-empty')")
    before = pair_on_screen(other)
    other.keyboard.press("1")
    wait_for_new_pair(other, before)
    badge = judging.get_attribute("#grm-badge .grm-badge", "data-state")
    assert badge == "running", "the save had to wait for someone else's judgment"
    assert before in labels_of(running_app, "quick-saver")

    left = pair_on_screen(judging)
    judging.keyboard.press("2")  # decide before the judge finishes, and move on
    wait_for_new_pair(judging, left)
    shown = _judge_area(judging)
    judging.wait_for_timeout(1500)  # the old stream would have painted over it by now
    assert _judge_area(judging) == shown
    assert 'data-state="running"' not in shown[1]
    assert labels_of(running_app, "slow-judge")[left]["label"] == "B"

    scripted_judge.delay_s = 0.01  # the judge slot is free again for the next pair
    judging.click("#grm-judge")
    judging.wait_for_selector('#grm-badge .grm-badge[data-state="done"]')
    judging.context.close()
    other.context.close()


def test_keys_typed_into_a_note_are_text_and_the_note_is_saved(browser, running_app) -> None:
    page = open_desk(browser, running_app.url, "typist")
    first = pair_on_screen(page)
    page.get_by_text("Correct the judge").click()
    note = page.locator("#grm-note textarea, #grm-note input").first
    note.click()
    note.type("12 3 4 s u y")  # every one of them is a shortcut outside a text field
    note.press("Enter")
    page.wait_for_timeout(800)
    assert pair_on_screen(page) == first and labels_of(running_app, "typist") == {}
    page.locator("#grm-label-b").click()
    wait_for_new_pair(page, first)
    label = labels_of(running_app, "typist")[first]
    assert (label["label"], label["note"]) == ("B", "12 3 4 s u y")
    page.context.close()


def _judge_area(page) -> tuple[str, str]:
    """The principles panel and the badge as the judge views render them."""
    return (
        page.inner_html("#grm-principles .grm-panel"),
        page.eval_on_selector("#grm-badge .grm-badge", "e => e.outerHTML"),
    )


def test_auto_judge_judges_each_pair_as_it_opens(browser, running_app, scripted_judge) -> None:
    scripted_judge.delay_s = 0.005
    page = open_desk(browser, running_app.url, "auto-judge")
    page.locator("#grm-auto input").check()
    before = pair_on_screen(page)
    page.keyboard.press("s")
    opened = wait_for_new_pair(page, before)
    # The badge may first show an earlier test's stored judgment of this pair ("done" with
    # other text), so wait for this judge's own principles, then for its run to finish.
    page.wait_for_function(
        "() => document.querySelector('#grm-principles')?.innerText.includes('practical')"
    )
    page.wait_for_selector('#grm-badge .grm-badge[data-state="done"]')
    run = running_app.services.latest_judgment_run(opened)
    assert any("practical" in row["principles"] for row in run), "the judgment was not stored"
    page.context.close()


def test_screenshots_of_label_and_agreement_tabs(
    browser, running_app, scripted_judge, tmp_path: Path
) -> None:
    _seed_agreement(running_app)
    page = open_desk(browser, running_app.url, "browser-shots")
    page.evaluate(WATCH_STREAM)
    page.click("#grm-judge")
    page.wait_for_function("() => window.__grmSeen.doneAt !== null")
    page.wait_for_function("() => !document.body.innerText.includes('Judging…')")
    # Only buttons a person can use are on screen (a hidden helper once showed as "Run").
    assert not page.is_visible("#grm-cancel-judge")
    assert page.get_by_role("button", name="Run", exact=True).count() == 0
    shots = [_shoot(page, tmp_path, "label")]
    page.get_by_role("tab", name="Agreement").click()
    page.wait_for_selector("#grm-agreement-cards")
    page.wait_for_timeout(800)  # let the plot draw
    shots.append(_shoot(page, tmp_path, "agreement"))
    assert "Accuracy" in page.inner_text("#grm-agreement-cards")
    for shot in shots:
        assert shot.stat().st_size > 10_000
    page.context.close()


def _shoot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}-1366x768.png"
    page.screenshot(path=str(path))
    SCREENS_FOR_LEAD.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENS_FOR_LEAD / path.name)
    return path


def _seed_agreement(running_app) -> None:
    """Judgments and two people's labels on a few demo pairs, so the figures have data."""
    services = running_app.services
    version = services.judge_version_id()
    pattern = ["A", "B", "A", "tie", "B", "A", "B", "A"]
    demo = next(d.id for d in services.datasets() if d.name == "demo")
    with services.sessions.begin() as s:
        pairs = [p.id for p in queries.pending_pairs(s, None, "pairwise", dataset_id=demo)][-8:]
        rows = [_judgment(pid, version, v) for pid, v in zip(pairs, pattern, strict=True)]
        ids = queries.add_judgments(s, rows)
    for i, (pid, jid) in enumerate(zip(pairs, ids, strict=True)):
        for who, flip in (("seed-ana", i % 3 == 0), ("seed-ben", i % 4 == 0)):
            verdict = ("B" if pattern[i] == "A" else "A") if flip else pattern[i]
            services.save_label(pid, who, verdict, judgment_id=jid)


def _judgment(pair_id: int, version: int, verdict: str) -> dict:
    return {
        "pair_id": pair_id,
        "judge_version_id": version,
        "protocol": "pairwise",
        "prompt_version": "pairwise-v1",
        "verdict": verdict,
        "status": "complete",
        "verdict_probability": 0.6,
        "verdict_source": "text",
    }
