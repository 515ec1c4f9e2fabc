"""The learning curve resumed: saved runs kept, the rest planned, other settings refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_learning_curve as bench


def args_for(out: Path, *argv: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("sys.argv", ["bench_learning_curve.py", "--out", str(out), *argv])
    return bench.parse_args()


def saved(out: Path, args, points: list[tuple[str, int, int]]) -> None:
    runs = [{"order": o, "seed": s, "labels": n} for o, s, n in points]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    out.write_text(json.dumps({"args": settings, "runs": runs}))


def test_a_resumed_curve_keeps_saved_runs_and_plans_only_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "curve.json"
    argv = ["--sizes", "100", "300", "--seeds", "0", "1", "2", "--replicate-orders", "random"]
    args = args_for(out, *argv, "--resume", monkeypatch=monkeypatch)
    first_seed = [("random", 0, 100), ("random", 0, 300), ("least-sure", 0, 100)]
    saved(out, args, first_seed)
    kept = bench.saved_runs(args)
    done = {(r["order"], r["seed"], r["labels"]) for r in kept}
    left = [point for point in bench.run_plan(args) if point not in done]
    assert [r["labels"] for r in kept] == [100, 300, 100]
    assert left == [("least-sure", 0, 300), ("random", 1, 300), ("random", 2, 300)]
    # without --resume the saved runs are not taken
    assert bench.saved_runs(args_for(out, *argv, monkeypatch=monkeypatch)) == []


def test_a_curve_made_with_other_training_settings_is_not_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "curve.json"
    saved(out, args_for(out, "--learning-rate", "1e-4", monkeypatch=monkeypatch), [])
    with pytest.raises(SystemExit, match="learning_rate"):
        bench.saved_runs(args_for(out, "--resume", monkeypatch=monkeypatch))


def test_the_base_cache_key_changes_with_the_pairs_judged(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    rows = [{"id": f"set:{i}"} for i in range(3)]
    key = bench.base_cache_key(tmp_path, {"heldout": (rows, None)}, rows[:1])
    assert key == bench.base_cache_key(tmp_path, {"heldout": (rows, None)}, rows[:1])
    assert key != bench.base_cache_key(tmp_path, {"heldout": (rows[:2], None)}, rows[:1])
    assert key != bench.base_cache_key(tmp_path, {"heldout": (rows, None)}, rows[1:2])
