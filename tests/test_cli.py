"""The `grm` command: import, export and stats through cli.main, on SQLite and PostgreSQL, and
one real run of the installed console script."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import cli
from services import Services

ROWS = [
    {"id": f"p{i}", "prompt": f"prompt {i} ✓", "response_a": f"a {i}", "response_b": f"b {i}"}
    for i in range(4)
]
# One label of each kind; which formats carry which (see storage/exporter.py).
VERDICTS = ("A", "B", "tie", "both_bad")
EXPORTED = {"jsonl": 4, "csv": 4, "parquet": 4, "trl-preference": 2, "trl-sft": 3}


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def good_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "good.jsonl", ROWS)


@pytest.fixture
def labeled(db, settings, good_file, capsys) -> Services:
    """The good file imported through the CLI and labeled once with each verdict."""
    assert cli.main(["import", str(good_file), "--dataset", "demo"]) == 0
    capsys.readouterr()
    services = Services(settings, db.factory)
    for verdict in VERDICTS:
        pair = services.next_item("alice")
        services.save_label(pair.id, "alice", verdict)
    return services


def test_import_prints_the_counts(db, good_file, capsys):
    assert cli.main(["import", str(good_file)]) == 0
    assert capsys.readouterr().out == "good: 4 new, 0 duplicate, 0 rejected (pairs)\n"
    assert cli.main(["import", str(good_file)]) == 0  # same file again: deduplicated
    assert capsys.readouterr().out == "good: 0 new, 4 duplicate, 0 rejected (pairs)\n"


def test_bad_file_exits_2_names_the_line_and_stores_nothing(db, tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], ROWS[1], {"prompt": "p"}])
    assert cli.main(["import", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("import failed, nothing stored: bad.jsonl line 3: response_a is missing")
    assert cli.main(["stats"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["datasets"], stats["pairs"]) == (0, 0)


def test_missing_file_exits_2(db, tmp_path, capsys):
    assert cli.main(["import", str(tmp_path / "nowhere.jsonl")]) == 2
    assert "nowhere.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", sorted(EXPORTED))
def test_export_writes_each_format(labeled, tmp_path, capsys, fmt):
    out = tmp_path / f"labels.{fmt}"
    assert cli.main(["export", "--format", fmt, "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {EXPORTED[fmt]} rows to {out}\n"
    rows = read_export(out, fmt)
    assert len(rows) == EXPORTED[fmt]
    if fmt in ("jsonl", "csv", "parquet"):
        assert [r["human_label"] for r in rows] == list(VERDICTS)
        assert rows[0]["prompt"] == "prompt 0 ✓"  # text survives every format
    if fmt == "trl-preference":  # chosen = what the person chose
        assert [(r["chosen"], r["rejected"]) for r in rows] == [("a 0", "b 0"), ("b 1", "a 1")]


def read_export(path: Path, fmt: str) -> list[dict]:
    if fmt == "csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if fmt == "parquet":
        return pd.read_parquet(path).to_dict("records")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_of_one_dataset(labeled, tmp_path, capsys):
    other = write_jsonl(tmp_path / "other.jsonl", [{**ROWS[0], "prompt": "another"}])
    assert cli.main(["import", str(other)]) == 0
    pair = labeled.next_item("alice")
    labeled.save_label(pair.id, "alice", "A")
    out = tmp_path / "demo.jsonl"
    assert cli.main(["export", "--format", "jsonl", "--out", str(out), "--dataset", "demo"]) == 0
    assert {row["dataset"] for row in read_export(out, "jsonl")} == {"demo"}


def test_stats_reports_datasets_pairs_labels_and_annotators(labeled, capsys):
    assert cli.main(["stats"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["datasets"], stats["pairs"], stats["labeled"], stats["judged"]) == (1, 4, 4, 0)
    (alice,) = stats["per_annotator"]
    assert (alice["annotator"], alice["labeled"], alice["skipped"]) == ("alice", 4, 0)


def test_train_options_are_the_config_fields(monkeypatch, capsys):
    """`grm train` has one option per TrainConfig field (the old ones among them) and builds
    the config from them; nothing is copied by hand."""
    from judges.train import TrainConfig

    options = set(vars(cli.build_parser().parse_args(["train"])))
    options -= {"verbose", "command", "func", "wait"}
    assert options == {f.name for f in dataclasses.fields(TrainConfig)} - {"output_dir"}
    started: list[TrainConfig] = []
    services = SimpleNamespace(
        start_training_run=lambda config: started.append(config) or 7,
        training_run=lambda run_id: {"log_path": f"runs/{run_id}/train.log"},
    )
    monkeypatch.setattr(cli, "_services", lambda: services)
    old_flags = ["--method", "sft", "--epochs", "2", "--lora-rank", "4", "--learning-rate", "0.01"]
    old_flags += ["--heldout-share", "0.3", "--max-steps", "5", "--min-labels", "4"]
    assert cli.main(["train", *old_flags, "--no-include-swapped"]) == 0
    assert capsys.readouterr().out == "training run 7 started (log: runs/7/train.log)\n"
    assert started == [
        TrainConfig(
            method="sft",
            epochs=2.0,
            lora_rank=4,
            learning_rate=0.01,
            heldout_share=0.3,
            max_steps=5,
            min_labels=4,
            include_swapped=False,
        )
    ]


def test_judge_closes_the_judge_it_loaded_before_returning(db, good_file, monkeypatch, capsys):
    """A judge whose engine runs in child processes (vLLM's) keeps `grm` from exiting unless
    the command closes it."""
    from fakes import FakeBackend

    class ClosingBackend(FakeBackend):
        closed = 0

        def close(self) -> None:
            self.closed += 1

    assert cli.main(["import", str(good_file), "--dataset", "demo"]) == 0
    backend = ClosingBackend(script=lambda messages: "The answer.\nVerdict: [[A]]")
    opened = Services.open

    def open_with_the_fake(settings):
        services = opened(settings)
        services.use_backend(backend)
        return services

    monkeypatch.setattr(Services, "open", open_with_the_fake)
    assert cli.main(["judge", "--dataset", "demo"]) == 0
    assert "judged 4 pairs" in capsys.readouterr().out
    assert backend.closed == 1
    assert backend.streamed or backend.batches  # it was the judge that judged


def test_serve_closes_the_judge_when_the_server_stops(db, monkeypatch):
    """`grm serve` (app.main) closes its judge on the way out, here after a Ctrl-C."""
    from fakes import FakeBackend

    import app

    class ClosingBackend(FakeBackend):
        closed = 0

        def close(self) -> None:
            self.closed += 1

    backend = ClosingBackend(script=lambda messages: "Verdict: [[A]]")
    opened = Services.open
    served: list = []

    def open_with_the_fake(settings):
        services = opened(settings)
        services.use_backend(backend)
        return services

    def stopped_by_ctrl_c(blocks, settings):
        served.append(blocks)
        raise KeyboardInterrupt

    monkeypatch.setattr(Services, "open", open_with_the_fake)
    monkeypatch.setattr(app, "build_app", lambda services: services)
    monkeypatch.setattr(app, "serve", stopped_by_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["serve"])
    assert len(served) == 1  # the server ran, then stopped
    assert backend.closed == 1


@pytest.mark.slow
def test_installed_console_script_imports(db, good_file, tmp_path):
    grm = Path(sys.executable).with_name("grm")
    assert grm.is_file(), f"console script missing: {grm} (pip install -e .)"
    done = subprocess.run(
        [str(grm), "import", str(good_file), "--dataset", "from-script"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),  # GRM_HOME and GRM_DATABASE_URL of this test
        cwd=tmp_path,
        timeout=120,
    )
    assert (done.returncode, done.stdout) == (
        0,
        "from-script: 4 new, 0 duplicate, 0 rejected (pairs)\n",
    )
    with db.factory() as s:
        from storage import queries

        assert [(d.name, d.pair_count) for d in queries.list_datasets(s)] == [("from-script", 4)]
