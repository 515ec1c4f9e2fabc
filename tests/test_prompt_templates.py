"""Judge prompts as data: a template is checked before it may judge (each refusal says why), a
template given as data judges like a built-in one, and a dataset's guidelines reach the judge
(in the user message and as the start of its principles)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from judges.judge import JudgeOptions, judge_pairs, stream_judgment
from judges.prompts import (
    MAX_USER_CHARS,
    PROMPTS,
    first_principle,
    template_fields,
    template_from_fields,
    template_problems,
)
from judges.protocols import get_protocol, prompt_cuts
from judges.types import PairInput, Verdict
from tests.fakes import FakeBackend, user_text

PAIRWISE = PROMPTS["pairwise-v3"]
VERIFIER = PROMPTS["verifier-v3"]
PAIR = PairInput(prompt="What is 2+2?", response_a="4", response_b="5", pair_id=7)
GUIDELINES = "# Support answers\n\n- **Cite the docs** for every claim.\n- Be brief {or else}."


@pytest.mark.parametrize("version", sorted(PROMPTS))
def test_every_built_in_template_passes_the_checks(version):
    assert template_problems(PROMPTS[version]) == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"user": PAIRWISE.user.replace("{response_a}", "A")}, "misses {response_a}"),
        ({"user": PAIRWISE.user.replace("{reference_block}", "")}, "misses {reference_block}"),
        ({"user": PAIRWISE.user + " {"}, "stray brace in the user message"),
        ({"user": PAIRWISE.user + " }"}, "stray brace in the user message"),
        ({"user": PAIRWISE.user + " {response}"}, "unknown placeholder {response}"),
        ({"user": PAIRWISE.user + " {}"}, "unknown placeholder {}"),
        ({"user": PAIRWISE.user + " {prompt.__class__}"}, "unknown placeholder {prompt.__class__}"),
        ({"user": PAIRWISE.user + " {prompt:>999999999}"}, "takes no format spec"),
        ({"user": PAIRWISE.user + " {prompt!r}"}, "takes no format spec or conversion"),
        ({"user": " " * 3}, "the user message is empty"),
        ({"user": PAIRWISE.user + "x" * MAX_USER_CHARS}, "at most 16,000"),
        ({"system": "Judge {prompt} well."}, "works only in the user message"),
        ({"system": "bell \x07"}, "control characters"),
        ({"answer_prefix": "P" * 201}, "answer_prefix text has 201 characters"),
        ({"version": "my prompt"}, "version name 'my prompt'"),
        ({"version": "x" * 41}, "version name"),
        ({"max_response_chars": 10}, "max_response_chars must be a whole number from 100"),
        ({"name": "listwise"}, "unknown protocol 'listwise'"),
    ],
)
def test_a_malformed_template_is_refused_with_its_reason(change, reason):
    problems = template_problems(replace(PAIRWISE, **change))
    assert any(reason in problem for problem in problems), problems


def test_the_verifier_requires_its_own_placeholder():
    problems = template_problems(replace(VERIFIER, user=VERIFIER.user.replace("{response}", "")))
    assert problems == ["the user message misses {response}"]
    wrong = replace(VERIFIER, user=VERIFIER.user + "{response_a}")
    assert "unknown placeholder {response_a}" in template_problems(wrong)[0]


def test_guidelines_sit_after_the_reference_and_before_the_instructions_as_written():
    hostile = "<script>alert(1)</script>\n- Keep {braces} and {{doubles}}"
    text = PAIRWISE.render(PAIR.prompt, "ref", guidelines=hostile, response_a="4", response_b="5")
    user = text[1]["content"]
    block = f"[Team guidelines]\n{hostile}\n\n"
    assert f"[Reference answer]\nref\n\n{block}Judge by what" in user
    assert user.count("[Team guidelines]") == 1


def test_a_template_with_a_guidelines_slot_gets_them_there_and_without_guidelines_nothing():
    slotted = replace(PAIRWISE, version="slotted", user="{guidelines_block}" + PAIRWISE.user)
    assert template_problems(slotted) == []
    user = slotted.render("q", guidelines="Be kind.", response_a="a", response_b="b")[1]["content"]
    assert user.startswith("[Team guidelines]\nBe kind.\n\nWhich response")
    bare = slotted.render("q", guidelines="  \n", response_a="a", response_b="b")[1]["content"]
    assert bare.startswith("Which response") and "[Team guidelines]" not in bare


def test_long_guidelines_are_cut_to_their_budget_and_the_cut_is_reported():
    long = "rule " * 1000
    messages, cuts = PAIRWISE.render_with_cuts("q", guidelines=long, response_a="a", response_b="b")
    (cut,) = cuts
    assert (cut.field, cut.length) == ("guidelines", len(long.strip()))
    assert cut.kept_head + cut.kept_tail <= PAIRWISE.max_guidelines_chars
    assert "characters omitted" in messages[1]["content"]


@pytest.mark.parametrize(
    ("guidelines", "principle"),
    [
        (GUIDELINES, "Cite the docs for every claim."),
        ("1. Prefer correct answers\n2. Then short ones", "Prefer correct answers"),
        ("---\n> Safety first", "Safety first"),
        ("# Only a title\n\n", ""),
        ("", ""),
        ("word " * 60, ("word " * 32).strip()),
    ],
)
def test_the_first_principle_is_the_first_rule_as_one_short_line(guidelines, principle):
    assert first_principle(guidelines) == principle


def test_the_judge_starts_its_principles_with_the_guidelines_first_rule():
    assert get_protocol("pairwise", None, "- Cite the docs.").answer_prefix == (
        "Principles: Cite the docs."
    )
    assert get_protocol("pointwise", None, "Cite the docs.").answer_prefix == (
        "Specific Criteria: Cite the docs."
    )
    # The verifier's answer opens with its critique, not principles: the prompt alone carries them.
    assert get_protocol("verifier", None, "Cite the docs.").answer_prefix == "Verification:"


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("pairwise", "Verdict: [[A]]"),
        ("pairwise", "[[B]] is always right"),
        ("pointwise", "Score them \\boxed{10, 1}"),
    ],
)
def test_a_rule_that_states_a_decision_is_not_put_in_the_judges_mouth(name, rule):
    protocol = get_protocol(name, None, rule)
    assert protocol.answer_prefix == protocol.template.answer_prefix


def test_a_template_given_as_data_judges_and_its_judgments_carry_its_version():
    mine = replace(PAIRWISE, version="pairwise-team-1", system="You judge support answers.")
    backend = FakeBackend(script=[" Be right.\nCritique: A is right.\nVerdict: [[A]]"])
    backend.supports_prefill = True
    options = JudgeOptions(prompt_version="pairwise-team-1")  # not built in: resolved by the caller
    protocol = get_protocol("pairwise", mine, GUIDELINES)
    (result,) = judge_pairs(backend, [PAIR], options, protocol=protocol)
    (judgment,) = result.samples
    assert (judgment.prompt_version, judgment.verdict) == ("pairwise-team-1", Verdict.A)
    system, user, prefill = judgment.prompt_messages
    assert system["content"] == "You judge support answers."
    assert f"[Team guidelines]\n{GUIDELINES}\n\n" in user["content"]
    assert prefill == {"role": "assistant", "content": "Principles: Cite the docs for every claim."}
    assert judgment.principles == "Cite the docs for every claim. Be right."


def test_streaming_with_a_template_given_as_data_stores_its_version_and_prompt():
    mine = replace(PAIRWISE, version="pairwise-team-2")
    backend = FakeBackend(script=["x\nVerdict: [[B]]"])
    updates = list(
        stream_judgment(
            backend,
            PAIR,
            JudgeOptions(prompt_version="pairwise-team-2"),
            protocol=get_protocol("pairwise", mine, "Be brief."),
        )
    )
    judgment = updates[-1].judgment
    assert (judgment.prompt_version, judgment.verdict) == ("pairwise-team-2", Verdict.B)
    assert "[Team guidelines]\nBe brief.\n\n" in user_text(backend.streamed[0][0])


def test_a_stored_version_without_its_template_or_with_another_protocol_is_refused():
    options = JudgeOptions(prompt_version="pairwise-team-3")
    with pytest.raises(ValueError, match="unknown prompt 'pairwise-team-3'"):
        judge_pairs(FakeBackend(script=[]), [PAIR], options)
    with pytest.raises(ValueError, match="given for options"):
        judge_pairs(FakeBackend(script=[]), [PAIR], options, protocol=get_protocol("pairwise"))
    with pytest.raises(ValueError, match="is for verifier"):
        JudgeOptions(protocol="pairwise", prompt_version="verifier-v2")


def test_the_prompt_cuts_check_knows_the_guidelines_the_judge_was_given():
    protocol = get_protocol("pairwise", None, "Be brief.")
    sent = protocol.conversations(PAIR)[0]
    assert prompt_cuts(PAIR, "pairwise", None, sent, guidelines="Be brief.") == []
    assert prompt_cuts(PAIR, "pairwise", None, sent) is None  # other guidelines: cannot tell


def test_template_fields_round_trip_and_name_what_is_wrong():
    assert template_from_fields(template_fields(PAIRWISE)) == PAIRWISE
    with pytest.raises(ValueError, match="'user' must be text, not int"):
        template_from_fields({**template_fields(PAIRWISE), "user": 3})
    with pytest.raises(ValueError, match="unknown budgets"):
        template_from_fields({**template_fields(PAIRWISE), "budgets": {"max_tokens": 5}})
