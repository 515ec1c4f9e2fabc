"""What the judge saw, on the Label tab: the cuts its prompt made in words, and the exact
prompt stored with the judgment."""

from __future__ import annotations

import re

import pytest
from fakes import FakeBackend
from stand_ins import stand_ins
from test_prompt_cuts import ANSWER, LONG_B

from judges.prompts import Cut
from judges.protocols import get_protocol
from judges.types import PairInput
from webui.judge_saw import cut_sentence, judge_saw_html
from webui.label_handlers import LabelHandlers, LabelScreen
from webui.render import visible_text


@pytest.mark.parametrize(
    "cut,words",
    [
        (Cut("response_b", 2000, 800, 400), "the first 800 and last 400 characters of Response B"),
        (Cut("prompt", 5000, 1200, 0), "the first 1,200 characters of the question"),
        (Cut("reference", 900, 500, 250), "the first 500 and last 250 characters of the reference"),
    ],
)
def test_a_cut_in_words(cut: Cut, words: str) -> None:
    assert words in cut_sentence(cut)
    assert f"{cut.omitted:,} of its {cut.length:,} characters" in cut_sentence(cut)


def test_the_label_tab_says_what_the_judge_saw_of_a_stored_judgment(settings) -> None:
    from services import Services

    services = Services.open(settings)
    services.load_demo_if_empty()
    backend = FakeBackend(script=lambda messages: ANSWER)
    backend.supports_prefill = True
    services.use_backend(backend)
    pair = services.next_item("ana")
    long_pair = PairInput(prompt=pair.prompt, response_a=pair.response_a, response_b=LONG_B)
    with services.sessions.begin() as s:  # this pair's response B, made longer than the budget
        from storage.models import Pair

        s.get(Pair, pair.id).response_b = LONG_B
    list(services.stream_pair_judgment(pair.id))

    run = services.latest_judgment_run(pair.id)
    assert run[0]["prompt_messages"] == backend.streamed[0][0]
    (cut,) = services.prompt_cuts(services.pair(pair.id), run)
    assert cut == get_protocol("pairwise").cuts(long_pair)[0]

    handlers = LabelHandlers(services, stand_ins(LabelScreen))
    notice = handlers.judge_saw({"pair_id": pair.id})
    text = re.sub(r"\s+", " ", visible_text(notice))
    assert f"the first {cut.kept_head:,} and last {cut.kept_tail:,} characters of Response B" in (
        text
    )
    assert 'data-state="cut"' in notice and "grm-judge-prompt" in notice
    screen = handlers.open_next("ana", None, None)
    assert screen[handlers.ui.judge_saw] == notice  # the same notice when the pair is reopened
    for message in run[0]["prompt_messages"]:
        assert message["content"] in visible_text(notice)


def test_nothing_cut_and_nothing_judged_read_differently() -> None:
    row = {"swapped": False, "prompt_messages": [{"role": "user", "content": "hi"}]}
    assert judge_saw_html([], []) == ""
    assert "whole question and both responses" in visible_text(judge_saw_html([row], []))
    assert "cannot be told" in visible_text(judge_saw_html([row], None))
    old = visible_text(judge_saw_html([{"swapped": False}], []))
    assert "before the judge's prompts were kept" in old


def test_a_malformed_stored_prompt_leaves_the_pair_on_screen(settings) -> None:
    from services import Services
    from storage import queries

    services = Services.open(settings)
    services.load_demo_if_empty()
    pair = services.next_item("ana")
    row = {"pair_id": pair.id, "judge_version_id": services.judge_version_id(),
           "protocol": "pairwise", "prompt_version": "pairwise-v2", "verdict": "A",
           "status": "complete", "prompt_messages": ["not a message"]}  # fmt: skip
    with services.sessions.begin() as s:
        queries.add_judgments(s, [row])
    handlers = LabelHandlers(services, stand_ins(LabelScreen))
    screen = handlers.open_next("ana", None, None)
    assert f'data-pair-id="{pair.id}"' in screen[handlers.ui.meta]
    assert screen[handlers.ui.judge_saw] == ""  # nothing claimed about what the judge saw
