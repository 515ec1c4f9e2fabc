"""A dataset's guidelines and stored prompt versions, through the services (on SQLite and
PostgreSQL): guidelines reach the judge's stored prompt, a version made from a copy judges and
its judgments carry its name, and whatever is refused says why and leaves nothing behind."""

from __future__ import annotations

import json

import pytest
from seeding import add_pairs

from judges.judge import JudgeOptions
from judges.prompts import PROMPTS
from services import PromptRefused, Services
from services.prompts import MAX_GUIDELINES_CHARS
from storage import queries
from tests.fakes import FakeBackend, user_text

GUIDELINES = "# Support team\n\n- **Cite the docs** for every claim.\n- Never promise dates {soon}."
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)> {response_a} }{ {{'
ANSWER = " Be right.\nCritique: A cites the docs.\nVerdict: [[A]]"


def add_dataset(services: Services, name: str, count: int) -> list[int]:
    """A dataset of `count` pairs ("question i": A is right); the pair ids."""
    return add_pairs(
        services.sessions,
        name,
        count,
        lambda i: {
            "prompt": f"{name} question {i}",
            "response_a": f"right answer {i}",
            "response_b": f"wrong answer {i}",
        },
    )


@pytest.fixture
def services(db, settings) -> Services:
    opened = Services(settings, db.factory)
    judge = FakeBackend(script=lambda messages: ANSWER)
    judge.supports_prefill = True
    opened.use_backend(judge)
    return opened


def stored_prompt(services: Services, pair_id: int) -> list[dict[str, str]]:
    (sample,) = services.latest_judgment_run(pair_id)
    return sample["prompt_messages"]


def test_guidelines_reach_the_judges_stored_prompt_for_a_pair_of_that_dataset(services):
    (team_pair,) = add_dataset(services, "team", 1)
    (other_pair,) = add_dataset(services, "other", 1)
    services.set_dataset_guidelines("team", GUIDELINES)
    list(services.stream_pair_judgment(team_pair))
    _, user, prefill = stored_prompt(services, team_pair)
    # right before the instructions of the default prompt (pairwise-v2)
    instructions = "Judge by what the question asks for"
    assert f"[Team guidelines]\n{GUIDELINES}\n\n{instructions}" in user["content"]
    assert prefill == {"role": "assistant", "content": "Principles: Cite the docs for every claim."}
    (sample,) = services.latest_judgment_run(team_pair)
    assert sample["principles"] == "Cite the docs for every claim. Be right."

    report = services.judge_pending()  # a batch: each dataset's pairs with their own guidelines
    assert report.judged == 1
    assert "[Team guidelines]" not in stored_prompt(services, other_pair)[1]["content"]


def test_the_verifier_reads_the_guidelines_in_both_of_its_calls(services):
    (pair_id,) = add_dataset(services, "team", 1)
    services.set_dataset_guidelines("team", GUIDELINES)
    services.judge_pending(options=JudgeOptions(protocol="verifier"))
    sent = stored_prompt(services, pair_id)
    users = [m["content"] for m in sent if m["role"] == "user"]
    assert len(users) == 2 and all(f"[Team guidelines]\n{GUIDELINES}" in u for u in users)
    assert [m["content"] for m in sent if m["role"] == "assistant"] == ["Verification:"] * 2


def test_the_page_can_tell_what_the_judge_saw_when_it_had_guidelines(services):
    (pair_id,) = add_dataset(services, "team", 1)
    services.set_dataset_guidelines("team", GUIDELINES)
    list(services.stream_pair_judgment(pair_id))
    run = services.latest_judgment_run(pair_id)
    assert services.prompt_cuts(services.pair(pair_id), run) == []
    services.set_dataset_guidelines("team", "Other rules.")  # not what that judge was given
    assert services.prompt_cuts(services.pair(pair_id), run) is None


def test_hostile_guidelines_are_kept_as_written_and_oversized_ones_refused_unchanged(services):
    add_dataset(services, "team", 1)
    services.set_dataset_guidelines("team", HOSTILE)
    assert services.dataset_guidelines("team") == HOSTILE
    with pytest.raises(PromptRefused, match="at most 20,000"):
        services.set_dataset_guidelines("team", "x" * (MAX_GUIDELINES_CHARS + 1))
    with pytest.raises(PromptRefused, match="control characters"):
        services.set_dataset_guidelines("team", "a\x00b")
    assert services.dataset_guidelines("team") == HOSTILE  # nothing half-saved
    services.set_dataset_guidelines(services.datasets()[0].id, "  \n")  # by id; blank clears
    assert services.dataset_guidelines("team") == ""
    with pytest.raises(queries.NotFoundError, match="dataset 'nope' not found"):
        services.set_dataset_guidelines("nope", "x")


def test_built_in_templates_are_stored_read_only_once(services):
    versions = services.prompt_versions()
    assert [v["version"] for v in versions] == list(PROMPTS)
    assert all(v["read_only"] for v in versions)
    assert services.prompt_version("pairwise-v3")["user"] == PROMPTS["pairwise-v3"].user
    assert len(services.prompt_versions()) == len(PROMPTS)
    assert {v["protocol"] for v in services.prompt_versions("verifier")} == {"verifier"}


def test_a_version_made_from_a_copy_judges_and_its_judgments_carry_its_name(services):
    (pair_id,) = add_dataset(services, "team", 1)
    user = PROMPTS["pairwise-v3"].user.replace("Which response", "Which support answer")
    made = services.new_prompt_version(
        "pairwise-team-1", "pairwise-v3", user=user, note="support wording"
    )
    assert (made["parent_version"], made["read_only"], made["note"]) == (
        "pairwise-v3",
        False,
        "support wording",
    )
    options = JudgeOptions(prompt_version="pairwise-team-1")
    report = services.judge_pending(options=options)
    assert report.judged == 1
    (sample,) = services.latest_judgment_run(pair_id)
    assert sample["prompt_version"] == "pairwise-team-1"
    assert services.latest_judgment_run_record(pair_id)["run"]["prompt_version"] == (
        "pairwise-team-1"
    )
    assert user_text(sample["prompt_messages"]).startswith("Which support answer")
    list(services.stream_pair_judgment(pair_id, options))  # live judging resolves it too
    assert services.latest_judgment_run(pair_id)[0]["prompt_version"] == "pairwise-team-1"


@pytest.mark.parametrize(
    ("edits", "reason"),
    [
        ({"user": "Compare {response_b} for {prompt}. {reference_block}"}, "misses {response_a}"),
        ({"user": PROMPTS["pairwise-v3"].user + " {"}, "stray brace"),
        ({"user": PROMPTS["pairwise-v3"].user + " {score}"}, "unknown placeholder {score}"),
        ({"user": "x" * 16_001}, "at most 16,000"),
        ({"budgets": {"max_response_chars": 5}}, "max_response_chars must be"),
        ({"budgets": {"max_tokens": 5}}, "cannot edit ['max_tokens']"),
        ({}, "unchanged: edit something"),
    ],
)
def test_a_malformed_version_is_refused_with_its_reason_and_nothing_stored(services, edits, reason):
    with pytest.raises(PromptRefused) as refused:
        services.new_prompt_version("pairwise-team-1", "pairwise-v3", **edits)
    assert reason in str(refused.value)
    assert "pairwise-team-1" not in {v["version"] for v in services.prompt_versions()}


def test_versions_are_never_replaced_and_built_in_names_stay_built_in(services):
    services.new_prompt_version("team", "pairwise-v3", answer_prefix="Principles: ")
    with pytest.raises(PromptRefused, match="already exists; versions are never replaced"):
        services.new_prompt_version("team", "pairwise-v2", answer_prefix="Principles: ")
    with pytest.raises(PromptRefused, match="built-in version's name"):
        services.new_prompt_version("pairwise-v1", "pairwise-v3", answer_prefix="P:")
    with pytest.raises(queries.NotFoundError, match="'nope' not found"):
        services.new_prompt_version("team-2", "nope", answer_prefix="P:")
    # a copy of a stored version keeps its edits and names its parent
    child = services.new_prompt_version("team-2", "team", system="Judge support answers.")
    assert (child["answer_prefix"], child["parent_version"]) == ("Principles: ", "team")


def test_a_version_travels_as_a_small_json_file(services, tmp_path):
    system = '<script>alert("x")</script> }{ {{ not a placeholder'  # sent as written
    services.new_prompt_version("team", "pairwise-v3", system=system, note="<b>why</b>")
    path = services.export_prompt_version("team", tmp_path / "team.json")
    record = json.loads(path.read_text(encoding="utf-8"))
    assert (record["format"], record["version"], record["system"]) == (
        "grm-prompt-version/1",
        "team",
        system,
    )
    assert path.stat().st_size < 4_000
    assert services.import_prompt_version(path) == {"version": "team", "stored": False}

    path.write_text(json.dumps({**record, "user": record["user"] + " More."}), encoding="utf-8")
    with pytest.raises(PromptRefused, match="already here with other text"):
        services.import_prompt_version(path)
    path.write_text(json.dumps({**record, "version": "team-copy"}), encoding="utf-8")
    assert services.import_prompt_version(path) == {"version": "team-copy", "stored": True}
    assert services.prompt_version("team-copy")["parent_version"] == "pairwise-v3"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not JSON"),
        ('{"version": "x"}', "not an exported prompt version"),
        ('{"format": "grm-prompt-version/1", "version": "x"}', "'protocol' must be text"),
        (
            '{"format": "grm-prompt-version/1", "version": "x", "protocol": "pairwise", '
            '"system": "s", "user": "{response_a}"}',
            "misses {prompt}",
        ),
        ("[" + "0," * 40_000 + "0]", "over 64,000 bytes"),
    ],
)
def test_a_bad_prompt_file_is_refused_with_its_reason(services, tmp_path, text, reason):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PromptRefused, match=reason):
        services.import_prompt_version(path)
    assert len(services.prompt_versions()) == len(PROMPTS)
