"""What people run from the terminal, on the real embedded judge: `grm judge` over a dataset and
on a pair given as text, and `grm train --wait` to a registered version (slow)."""

from __future__ import annotations

import re

import pytest
from test_cli import ROWS, write_jsonl
from test_retrain_service import add_labeled_pairs

import cli
from services import Services
from storage.models import Judgment

pytestmark = pytest.mark.slow  # each loads the embedded judge (the CLI builds its own)


@pytest.fixture
def short_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRM_MAX_NEW_TOKENS", "12")  # the worker process inherits it too


def stored_judgments(services: Services) -> list[Judgment]:
    with services.sessions.begin() as s:
        return list(s.query(Judgment).order_by(Judgment.pair_id))


def test_grm_judge_stores_one_judgment_per_pending_pair(
    settings, short_answers, tmp_path, capsys
) -> None:
    source = write_jsonl(tmp_path / "few.jsonl", ROWS[:3])
    assert cli.main(["import", str(source), "--dataset", "few"]) == 0
    assert cli.main(["judge", "--dataset", "few", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"judged (\d+) pairs \((\d+) judgments stored, (\d+) without a verdict", out)
    assert found, out
    rows = stored_judgments(Services.open(settings))
    no_verdict = sum(r.verdict == "none" for r in rows)
    assert [int(g) for g in found.groups()] == [2, 2, no_verdict]
    assert len({r.pair_id for r in rows}) == 2
    assert all(r.protocol == "pairwise" and r.raw_text for r in rows)
    # Judged pairs are not pending any more: a second run takes the one left.
    assert cli.main(["judge", "--dataset", "few"]) == 0
    assert "judged 1 pairs (1 judgments stored" in capsys.readouterr().out
    assert len({r.pair_id for r in stored_judgments(Services.open(settings))}) == 3


def test_grm_judge_pair_text_streams_the_sections_and_the_verdict(
    settings, short_answers, capsys
) -> None:
    assert cli.main(["judge", "--pair-text", "What is 2+2?", "4", "5"]) == 0
    out = capsys.readouterr().out
    assert out.lstrip().startswith("--- principles ---"), out
    principles = out.split("--- principles ---", 1)[1].split("---", 1)[0].split("verdict:")[0]
    assert principles.strip(), "no principle text was streamed"
    verdicts = re.findall(r"^verdict: (\S+)  votes: \{'(\w+)': 1\}$", out, flags=re.M)
    assert len(verdicts) == 1 and verdicts[0][0] == verdicts[0][1], out
    assert verdicts[0][0] in {"A", "B", "tie", "none"}


def test_grm_train_wait_follows_the_run_to_a_registered_version(
    settings, short_answers, capsys
) -> None:
    services = Services.open(settings)
    add_labeled_pairs(services, ["A", "B"] * 4)
    base_id = services.judge_version_id()
    command = ["train", "--wait", "--method", "sft", "--max-steps", "1", "--min-labels", "4"]
    # A small step and no extra sampling: following the run is under test, not training.
    command += ["--batch-size", "2", "--rft-samples", "0", "--max-target-tokens", "16"]
    assert cli.main(command) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    run_id = int(re.search(r"training run (\d+) started", out).group(1))
    assert re.search(rf"^run {run_id} done", out, flags=re.M), out
    assert re.search(r"^accuracy\s+\S+\s+\S+$", out, flags=re.M), out  # before and after
    (version,) = [v for v in services.versions() if v["training_run_id"] == run_id]
    assert version["parent_id"] == base_id and not version["is_active"]
    assert version["metrics"]["training"]["steps"] == 1
