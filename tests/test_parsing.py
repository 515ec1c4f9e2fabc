"""Judge-output parsing, table-driven over tests/data/judge_outputs.jsonl, whole and streamed."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from judges.parsing import ParseState, StreamingParser, get_grammar, parse
from judges.prompts import get_prompt, truncate_middle
from judges.types import Section, Status, Verdict

CASES_FILE = Path(__file__).parent / "data" / "judge_outputs.jsonl"
CASES = [json.loads(line) for line in CASES_FILE.read_text(encoding="utf-8").splitlines() if line]
SECTION_ORDER = {None: -1, Section.PRINCIPLES: 0, Section.CRITIQUE: 1, Section.VERDICT: 2}


def case_id(case: dict) -> str:
    return f"{case['protocol']}-{case.get('origin', 'hand')}-{case['note'][:40]}"


def test_the_table_covers_every_protocol_and_outcome() -> None:
    seen = {(c["protocol"], c["status"]) for c in CASES}
    for protocol in ("pairwise", "pointwise", "verifier"):
        for status in ("complete", "no_verdict", "truncated"):
            assert (protocol, status) in seen, (protocol, status)
    assert {c["verdict"] for c in CASES if c["protocol"] == "pairwise"} >= {"A", "B", "tie", "none"}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_whole_text_parse_matches_the_table(case: dict) -> None:
    state = parse(case["protocol"], case["text"], case["finish_reason"])
    assert state.status == Status(case["status"])
    assert state.verdict == Verdict(case["verdict"])
    if case["protocol"] == "pointwise":
        assert state.scores == (tuple(case["scores"]) if case["scores"] else None)
    if case["protocol"] == "verifier":
        expected = {"yes": True, "no": False, None: None}[case["answer"]]
        assert state.answer is expected
    for name, fragment in case["sections"].items():
        text = getattr(state, name)
        if fragment is None:
            assert text == "", f"{name} should be empty, got {text!r}"
        else:
            assert fragment in text, f"{fragment!r} not in {name}: {text!r}"


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_streaming_in_random_chunks_ends_exactly_like_whole_text(case: dict, seed: int) -> None:
    rng = random.Random(seed)
    text, parser = case["text"], StreamingParser(case["protocol"])
    position, states = 0, []
    while position < len(text):
        size = rng.randint(1, 12)
        states.append(parser.feed(text[position : position + size]))
        position += size
    final = parser.finish(case["finish_reason"])
    assert final == parse(case["protocol"], text, case["finish_reason"])
    assert all(s.status is None for s in states), "no status before the stream ends"
    for state in states:
        assert SECTION_ORDER[state.section] <= SECTION_ORDER[final.section] or final.conflict


WELL_FORMED = [
    c
    for c in CASES
    if c["status"] == "complete" and get_grammar(c["protocol"]).header_re.match(c["text"])
]


@pytest.mark.parametrize("case", WELL_FORMED, ids=case_id)
def test_streamed_sections_only_move_forward_through_a_well_formed_output(case: dict) -> None:
    parser = StreamingParser(case["protocol"])
    order = [SECTION_ORDER[parser.feed(ch).section] for ch in case["text"]]
    assert order == sorted(order), "sections went backwards"
    assert order[-1] == SECTION_ORDER[Section.VERDICT]


def test_an_unfinished_header_is_held_back_until_it_is_known() -> None:
    parser = StreamingParser("pairwise")
    parser.feed("Principles: be right.\nCrit")
    state = parser.feed("")
    assert state.section is Section.PRINCIPLES
    assert "Crit" not in state.principles
    state = parser.feed("ique: A wins")
    assert (state.section, state.critique) == (Section.CRITIQUE, "A wins")
    state = parser.feed("\nCritically, B")
    assert "Critically, B" in state.critique  # not a header after all: shown once it is clear


def test_a_line_form_verdict_waits_for_its_line_to_end_while_streaming() -> None:
    parser = StreamingParser("pairwise")
    assert parser.feed("Critique: x\nVerdict: A").verdict is Verdict.NONE
    assert parser.feed(" close call").verdict is Verdict.NONE
    assert parser.finish("stop").verdict is Verdict.NONE
    parser = StreamingParser("pairwise")
    parser.feed("Critique: x\nVerdict: A")
    assert parser.finish("stop").verdict is Verdict.A


def test_bracket_verdict_is_known_as_soon_as_it_closes() -> None:
    parser = StreamingParser("pairwise")
    assert parser.feed("Verdict: [[B").verdict is Verdict.NONE
    state = parser.feed("]]")
    assert (state.verdict, state.section) == (Verdict.B, Section.VERDICT)


def test_decision_offset_points_at_the_verdict_letter() -> None:
    text = "Critique: fine.\nVerdict: [[B]]"
    state = parse("pairwise", text)
    assert state.decision_offset is not None and text[state.decision_offset] == "B"
    text = "Verification: ok.\nIs the answer correct (Yes/No)? No"
    state = parse("verifier", text)
    assert state.decision_offset is not None and text[state.decision_offset :] == "No"


def test_conflict_is_flagged_and_never_resolved_to_a_side() -> None:
    state = parse("pairwise", "Verdict: [[A]]\nVerdict: [[B]]")
    assert state == ParseState(
        section=Section.VERDICT,
        verdict_text="[[A]]\n\n[[B]]",
        conflict=True,
        status=Status.NO_VERDICT,
    )


def test_unknown_protocol_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="nonsense"):
        parse("nonsense", "Verdict: [[A]]")


# --- prompts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [60, 100, 257, 1000])
def test_truncate_middle_keeps_head_and_tail_within_budget(budget: int) -> None:
    text = " ".join(f"word{i}" for i in range(400))
    cut = truncate_middle(text, budget)
    assert len(cut) <= budget
    assert cut.startswith("word0") and cut.endswith("word399")
    head, marker_and_tail = cut.split("\n[... ", 1)
    omitted = int(marker_and_tail.split(" characters omitted", 1)[0])
    tail = marker_and_tail.split("...]\n", 1)[1]
    assert len(head) + omitted + len(tail) == len(text)
    assert text.startswith(head) and text.endswith(tail)


def test_truncate_middle_leaves_short_text_alone() -> None:
    assert truncate_middle("short", 10) == "short"
    with pytest.raises(ValueError, match="budget"):
        truncate_middle("x", 0)


def test_templates_render_long_and_brace_holding_inputs() -> None:
    template = get_prompt("pairwise")
    messages = template.render(
        "Format {this} as JSON" + "x" * 5000, "ref {0}", response_a="{a}" * 2000, response_b="b"
    )
    user = messages[1]["content"]
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "Format {this} as JSON" in user and "[Reference answer]\nref {0}" in user
    assert "characters omitted" in user
    assert len(user) < len(template.user) + template.max_prompt_chars + 2 * 1300 + 900
    assert get_prompt("pairwise-v2") is template


def test_every_template_shows_the_format_its_parser_reads() -> None:
    examples = {
        "pairwise": (Verdict.B, None),
        "pointwise": (Verdict.A, None),
        "verifier": (Verdict.NONE, True),
    }
    for protocol, (verdict, answer) in examples.items():
        example = get_prompt(protocol).user.format(
            prompt="", reference_block="", response_a="", response_b="", response=""
        )
        state = parse(protocol, example.split("Example:\n", 1)[1])
        assert (state.verdict, state.answer, state.status) == (verdict, answer, Status.COMPLETE)
        assert state.critique and (protocol == "verifier" or state.principles)


def test_unknown_prompt_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="pairwise-v1"):
        get_prompt("pairwise-v9")
