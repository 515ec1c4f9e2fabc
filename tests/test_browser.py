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
from conftest import store_judgments, textbook_kappa
from desk import WAIT_MS, open_desk, pair_on_screen, wait_for_new_pair

from judges.backends.base import Backend, Generation
from storage import queries

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENS_FOR_LEAD = Path("/tmp/grm-screens")
SCRIPTED_JUDGMENT = (
    "Principles: The answer must be practical. It must be kind.\n"
    "Critique: Response A gives steps a person can use today. Response B talks about memory "
    "research and never answers.\n"
    "Verdict: [[A]]"
)


class PacedJudge(Backend):
    """A scripted judge that writes at a readable pace, so the test can watch the stream.

    `hold_at(n)` makes a stream wait after its first n characters until `release()`. `ends`
    records how each stream ended: "finished" (all text written) or "stopped" (its reader
    closed it early); `ended` is set when one ends.
    """

    name = "paced"

    def __init__(self, text: str, delay_s: float = 0.04, chunk: int = 6) -> None:
        self.text, self.delay_s, self.chunk = text, delay_s, chunk
        self.held_from: int | None = None
        self.released = threading.Event()
        self.ends: list[str] = []
        self.ended = threading.Event()

    @property
    def model_name(self) -> str:
        return "paced-test-judge"

    def hold_at(self, chars: int) -> None:
        self.held_from = chars
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    def stream(self, messages, options) -> Iterator[str | Generation]:
        end = "stopped"
        try:
            for start in range(0, len(self.text), self.chunk):
                if self.held_from is not None and start >= self.held_from:
                    self.released.wait(WAIT_MS / 1000)
                time.sleep(self.delay_s)
                yield self.text[start : start + self.chunk]
            end = "finished"
            yield Generation(text=self.text, finish_reason="stop", completion_tokens=len(self.text))
        finally:
            self.ends.append(end)
            self.ended.set()


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
        judge.release()  # no stream stays held after its test
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
    # The control: an image the test itself adds after all that content was on the page. Once
    # its request has reached the listener and its handler has run, the page demonstrably could
    # fetch from outside and run handlers, and the hostile ones had their chance first.
    control = f"{outside}/control.png"
    page.evaluate(
        """src => new Promise(done => {
          const img = document.createElement('img');
          img.onload = img.onerror = () => { window.__grmControl = src; done(); };
          img.src = src;
          document.body.appendChild(img);
        })""",
        control,
    )
    assert page.evaluate("() => window.__grmControl") == control
    assert "/control.png" in listener

    assert page.evaluate("() => window.__pwned") is None
    assert "<script>window.__pwned=3</script>" in page.inner_text("#grm-response-b")
    assert page.locator("#grm-response-a img, #grm-response-b img, #grm-prompt img").count() == 0
    assert page.locator("#grm-principles img, #grm-response-b iframe").count() == 0
    assert listener[1:] == ["/control.png"], f"the page fetched from outside: {listener[1:]}"
    app_host = urlparse(running_app.url).netloc
    strangers = [u for u in requests if urlparse(u).scheme in ("http", "https") and u != control]
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
    scripted_judge.delay_s = 0.25  # every chunk is painted on its own
    scripted_judge.hold_at(SCRIPTED_JUDGMENT.index("Critique:"))  # mid-judgment until released
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
    assert 'data-state="running"' not in shown[1]
    scripted_judge.release()  # the judge could write on: the app must stop it instead
    assert scripted_judge.ended.wait(WAIT_MS / 1000), "the judge's stream never ended"
    assert scripted_judge.ends == ["stopped"], "the judge wrote on for a pair nobody sees"
    round_trip(judging)  # whatever the old stream sent before it stopped has reached the page
    assert _judge_area(judging) == shown
    assert labels_of(running_app, "slow-judge")[left]["label"] == "B"

    scripted_judge.delay_s = 0.01  # the judge slot is free again for the next pair
    judging.click("#grm-judge")
    judging.wait_for_selector('#grm-badge .grm-badge[data-state="done"]')
    judging.context.close()
    other.context.close()


def test_keys_typed_into_a_note_are_text_and_the_note_is_saved(browser, running_app) -> None:
    from playwright.sync_api import expect

    page = open_desk(browser, running_app.url, "typist")
    first = pair_on_screen(page)
    page.get_by_text("Correct the judge").click()
    note = page.locator("#grm-note textarea, #grm-note input").first
    page.evaluate(WATCH_STATUS)
    note.click()
    note.type("12 3 4 s u y")  # every one of them is a shortcut outside a text field
    note.press("Enter")
    expect(note).to_have_value("12 3 4 s u y")  # each key went into the note
    assert pair_on_screen(page) == first
    page.locator("#grm-label-b").click()
    wait_for_new_pair(page, first)
    # The click's answer came after anything a shortcut would have sent: the only label is
    # this one, and the only message the person saw is its "Saved".
    labels = labels_of(running_app, "typist")
    assert {p: (r["label"], r["note"]) for p, r in labels.items()} == {first: ("B", "12 3 4 s u y")}
    assert page.evaluate("() => window.__grmStatuses") == [f"Saved #{first}: B."]
    page.context.close()


# Every message the status line shows from now on (a shortcut answers there: "Nothing to
# undo", "No judge verdict", "Saved").
WATCH_STATUS = """() => {
  const seen = window.__grmStatuses = [];
  const line = document.querySelector('#grm-status');
  new MutationObserver(() => {
    const text = line.querySelector('.grm-status-text')?.innerText.trim();
    if (text && seen[seen.length - 1] !== text) seen.push(text);
  }).observe(line, {subtree: true, childList: true, characterData: true});
}"""


def round_trip(page) -> None:
    """Open the Agreement tab (a request of this page's session, answered through the same
    event stream as every earlier one) and wait for its answer, then go back to Label."""
    page.get_by_role("tab", name="Agreement").click()
    page.wait_for_selector("#grm-agreement-cards")
    page.get_by_role("tab", name="Label").click()
    page.wait_for_selector("#grm-tab-label", state="visible")


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


def test_the_retrain_tab_sends_the_weights_chosen_and_a_bad_setting_stores_nothing(
    browser, running_app
) -> None:
    """The Retrain form as a person fills it: the weights trained default to the measured
    setting (full) and can be changed, the form's values reach the run's config in their
    places, and a setting that cannot make a run is refused by name with nothing stored."""
    services = running_app.services
    runs_before = len(services.training_runs())
    page = open_desk(browser, running_app.url, "browser-retrain")
    page.get_by_role("tab", name="Retrain").click()
    weights = page.get_by_label("Weights trained")
    assert weights.input_value() == "full"
    weights.click()
    page.locator("li[role=option]", has_text="lora").first.click()
    assert weights.input_value() == "lora"
    page.get_by_label("Learning rate (blank: measured default)").fill("-1")
    page.click("#grm-retrain-start")
    message = page.locator("#grm-retrain-message")
    message.get_by_text("Not started").wait_for()
    assert "learning_rate must be positive" in message.inner_text()
    assert len(services.training_runs()) == runs_before
    page.context.close()


def test_screenshots_of_label_and_agreement_tabs(
    browser, running_app, scripted_judge, tmp_path: Path
) -> None:
    dataset, categories = _seed_agreement(running_app, tmp_path)
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
    box = page.locator("#grm-tab-agreement input").first
    box.click()
    box.fill(dataset)
    page.locator("li[role=option]", has_text=dataset).first.click()
    # The report for the seeded dataset has arrived (with its cards) and its plot is drawn:
    # one bar per seeded category, named on the axis.
    page.wait_for_function(PLOT_DRAWN, arg=categories)
    shots.append(_shoot(page, tmp_path, "agreement"))

    cards = _card_values(page)
    judge = SEED_PATTERN * 2
    human = [_seeded_label(who, i) for who in SEED_ANNOTATORS for i in range(len(SEED_PATTERN))]
    correct = sum(j == h for j, h in zip(judge, human, strict=True))
    assert cards["Accuracy"][0] == f"{correct / len(human):.1%}" == "68.8%"  # 11 of 16
    kappa = textbook_kappa(judge, human)
    assert cards["Cohen's κ"] == (f"{kappa:.3f}", f"{len(human)} labels compared")
    assert cards["Not judged"] == ("0", f"of {len(human)} labels")
    for shot in shots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    page.context.close()


PLOT_DRAWN = """cats => {
  const svg = document.querySelector('#grm-plot-category svg.marks');
  if (!svg) return false;
  const names = [...svg.querySelectorAll('.role-axis-label text')].map(t => t.textContent);
  const bars = svg.querySelectorAll('.mark-rect.role-mark path').length;
  return bars === cats.length && cats.every(c => names.includes(c));
}"""


def _card_values(page) -> dict[str, tuple[str, str]]:
    """The agreement cards as {title: (value, note)}, as the person reads them."""
    return {
        card.locator(".grm-card-title").inner_text(): (
            card.locator(".grm-card-value").inner_text(),
            card.locator(".grm-card-note").inner_text(),
        )
        for card in page.locator("#grm-agreement-cards .grm-card").all()
    }


def _shoot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}-1366x768.png"
    page.screenshot(path=str(path))
    SCREENS_FOR_LEAD.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENS_FOR_LEAD / path.name)
    return path


SEED_PATTERN = ["A", "B", "A", "tie", "B", "A", "B", "A"]  # the judge's verdicts, in order
SEED_ANNOTATORS = ("seed-ana", "seed-ben")


def _seeded_label(annotator: str, index: int) -> str:
    """What a seeded person said on pair `index`: the judge's verdict, except on every third
    (ana) or fourth (ben) pair, where they chose the other side (A for a tie)."""
    every = 3 if annotator == "seed-ana" else 4
    said = SEED_PATTERN[index]
    return ("B" if said == "A" else "A") if index % every == 0 else said


def _seed_agreement(running_app, tmp_path: Path) -> tuple[str, list[str]]:
    """A dataset of its own (eight pairs in two categories) with judgments and two people's
    labels, so the figures have data; its name and categories."""
    services = running_app.services
    tag = uuid.uuid4().hex[:6]
    dataset, categories = f"agreement-{tag}", [f"writing-{tag}", f"coding-{tag}"]
    source = tmp_path / f"{dataset}.jsonl"
    rows = [
        {
            "prompt": f"Seeded question {i}?",
            "response_a": f"First answer to question {i}.",
            "response_b": f"Second answer to question {i}.",
            "category": categories[i % 2],
        }
        for i in range(len(SEED_PATTERN))
    ]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    services.import_file(source, dataset=dataset)
    dataset_id = next(d.id for d in services.datasets() if d.name == dataset)
    with services.sessions.begin() as s:
        pairs = [p.id for p in queries.pending_pairs(s, None, "pairwise", dataset_id=dataset_id)]
    judgments = store_judgments(services, pairs, SEED_PATTERN)
    for i, (pair_id, judgment_id) in enumerate(zip(pairs, judgments, strict=True)):
        for who in SEED_ANNOTATORS:
            services.save_label(pair_id, who, _seeded_label(who, i), judgment_id=judgment_id)
    return dataset, categories
