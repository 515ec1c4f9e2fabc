"""`grm guidelines` and `grm prompts` through cli.main: what people type, what they read back,
and refusals that say why (exit 2) and change nothing."""

from __future__ import annotations

import json

import pytest

import cli
from judges.prompts import PROMPTS
from services import Services
from storage import queries

GUIDELINES = "# Team\n\n- Cite the docs.\n- <b>No</b> {dates}.\n"


@pytest.fixture
def services(db, settings, monkeypatch) -> Services:
    opened = Services(settings, db.factory)
    with opened.sessions.begin() as s:
        queries.get_or_create_dataset(s, "demo")
    monkeypatch.setattr(cli, "_services", lambda: opened)
    return opened


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_guidelines_set_show_and_clear(services, tmp_path, capsys):
    path = tmp_path / "guide.md"
    path.write_text(GUIDELINES, encoding="utf-8")
    assert run(capsys, "guidelines", "set", "demo", str(path)) == (
        0,
        f"demo: guidelines set ({len(GUIDELINES)} characters)\n",
        "",
    )
    assert run(capsys, "guidelines", "show", "demo") == (0, GUIDELINES + "\n", "")
    assert run(capsys, "guidelines", "clear", "demo")[1] == "demo: guidelines cleared\n"
    assert run(capsys, "guidelines", "show", "demo")[1] == "(no guidelines for demo)\n"


def test_guidelines_that_cannot_be_stored_are_refused_with_the_reason(services, tmp_path, capsys):
    services.set_dataset_guidelines("demo", GUIDELINES)
    huge = tmp_path / "huge.md"
    huge.write_text("rule\n" * 5_000, encoding="utf-8")  # 25,000 characters
    code, _, err = run(capsys, "guidelines", "set", "demo", str(huge))
    assert code == 2 and "guidelines not changed: guidelines have 25,000 characters" in err
    enormous = tmp_path / "enormous.md"
    enormous.write_bytes(b"x" * 100_000)
    code, _, err = run(capsys, "guidelines", "set", "demo", str(enormous))
    assert code == 2 and "is over 80,000 bytes" in err
    fine = tmp_path / "fine.md"
    fine.write_text("Cite the docs.", encoding="utf-8")
    code, _, err = run(capsys, "guidelines", "set", "nope", str(fine))
    assert code == 2 and "dataset 'nope' not found" in err
    code, _, err = run(capsys, "guidelines", "set", "demo", str(tmp_path / "missing.md"))
    assert code == 2 and "No such file" in err
    assert services.dataset_guidelines("demo") == GUIDELINES


def test_prompts_list_and_show(services, capsys):
    code, out, _ = run(capsys, "prompts", "list")
    assert code == 0
    assert all(version in out for version in PROMPTS)
    assert out.count("built in, read-only") == len(PROMPTS)
    code, out, _ = run(capsys, "prompts", "list", "--protocol", "verifier")
    assert "verifier-v3" in out and "pairwise-v3" not in out
    code, out, _ = run(capsys, "prompts", "show", "pairwise-v3")
    assert out.startswith("pairwise-v3 (pairwise, read-only)\n")
    assert f"--- user ---\n{PROMPTS['pairwise-v3'].user}\n" in out
    assert run(capsys, "prompts", "show", "nope")[0] == 2


def test_prompts_new_export_and_import(services, tmp_path, capsys):
    user = tmp_path / "user.txt"
    user.write_text(PROMPTS["pairwise-v3"].user.replace("better?", "better for support?"))
    code, out, err = run(
        capsys,
        "prompts",
        "new",
        "team-1",
        "--from",
        "pairwise-v3",
        "--user",
        str(user),
        "--budget",
        "max_response_chars=2000",
        "--note",
        "support",
    )
    assert (code, out, err) == (0, "prompt version team-1 (pairwise) made from pairwise-v3\n", "")
    made = services.prompt_version("team-1")
    assert made["budgets"]["max_response_chars"] == 2000 and "for support?" in made["user"]
    assert json.loads(run(capsys, "prompts", "show", "team-1", "--json")[1])["note"] == "support"

    out_file = tmp_path / "team-1.json"
    assert run(capsys, "prompts", "export", "team-1", "--out", str(out_file))[0] == 0
    assert run(capsys, "prompts", "import", str(out_file))[1] == (
        "prompt version team-1 already here\n"
    )
    record = json.loads(out_file.read_text(encoding="utf-8"))
    out_file.write_text(json.dumps({**record, "version": "team-2"}), encoding="utf-8")
    assert run(capsys, "prompts", "import", str(out_file))[1] == "prompt version team-2 imported\n"


@pytest.mark.parametrize(
    ("user_text", "extra", "reason"),
    [
        ("Compare {response_b} for {prompt}. {reference_block}", [], "misses {response_a}"),
        ("{prompt} {response_a} {response_b} {reference_block} {", [], "stray brace"),
        (None, ["--budget", "max_response_chars"], "is not NAME=CHARACTERS"),
        (None, ["--answer-prefix", "Principles:", "--from", "nope"], "'nope' not found"),
    ],
)
def test_prompts_new_refuses_a_malformed_template_with_its_reason(
    services, tmp_path, capsys, user_text, extra, reason
):
    argv = ["prompts", "new", "team-1", "--from", "pairwise-v3", *extra]
    if user_text is not None:
        (tmp_path / "user.txt").write_text(user_text, encoding="utf-8")
        argv += ["--user", str(tmp_path / "user.txt")]
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("prompt version not made: ") and reason in err
    assert "team-1" not in {v["version"] for v in services.prompt_versions()}
