"""The learning curve resumed: saved runs kept, the rest planned, other settings refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_learning_curve as bench


def args_for(out: Path, *argv: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("sys.argv", ["bench_learning_curve.py", "--out", str(out), *argv])
    return bench.parse_args()


def saved(out: Path, args, points: list[tuple[str, int, int]], diverged=()) -> None:
    runs = [{"order": o, "seed": s, "labels": n} for o, s, n in points]
    failed = [{"order": o, "seed": s, "labels": n, "error": "NaN"} for o, s, n in diverged]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    out.write_text(json.dumps({"args": settings, "runs": runs, "diverged": failed}))


def test_a_resumed_curve_keeps_saved_runs_and_plans_only_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "curve.json"
    argv = ["--sizes", "100", "300", "--seeds", "0", "1", "2", "--replicate-orders", "random"]
    args = args_for(out, *argv, "--resume", monkeypatch=monkeypatch)
    first_seed = [("random", 0, 100), ("random", 0, 300), ("least-sure", 0, 100)]
    saved(out, args, first_seed, diverged=[("random", 1, 300)])
    kept, diverged = bench.saved_runs(args)
    left = bench.points_left(args, kept, diverged)
    assert [r["labels"] for r in kept] == [100, 300, 100]
    # a diverged run is not retried: the same seed would diverge again
    assert left == [("least-sure", 0, 300), ("random", 2, 300)]
    # without --resume the saved runs are not taken
    assert bench.saved_runs(args_for(out, *argv, monkeypatch=monkeypatch)) == ([], [])


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


def curve_run(order: str, labels: int, accuracy: float, p: float, guard: float) -> dict:
    return {
        "order": order,
        "labels": labels,
        "examples_per_s": 0.5 if labels == 300 else 0.25,
        "train_and_eval_seconds": 1000.0 + labels,
        "figures": {
            "heldout": {
                "second_accuracy": accuracy,
                "p_value": p,
                "difference_ci_low": -0.05,
                "difference_ci_high": 0.2,
            },
            "LLMBar_Natural": {"difference": guard},
        },
    }


def test_the_settings_table_has_one_row_per_order_and_size_with_seed_figures() -> None:
    from benchmarks import curve_table

    report: dict = {
        "args": {"trained_layers": 20, "learning_rate": 3e-4, "lora_rank": 16, "batch_size": 8},
        "base": {"heldout": 0.4, "LLMBar_Natural": 0.5},
        "load_average_at_start": [0.5, 0.4, 0.3],
        "load_average_at_end": [1.75, 1.7, 1.6],
        "stopped_early": "stopped after seed 1",
        "runs": [
            curve_run("random", 300, 0.55, 0.04, 0.02),
            curve_run("random", 100, 0.42, 0.7, -0.01),
            curve_run("random", 300, 0.45, 0.6, 0.04),
        ],
    }
    report["args"]["epochs"] = 1.0
    small, large = curve_table.setting_rows("curve.json", report)
    assert large["ran on"] == "CPU, ? cores"  # no machine recorded
    report["machine"] = {"cpus": 2, "platform": "Linux"}  # before the GPU was recorded
    assert curve_table.setting_rows("curve.json", report)[1]["ran on"] == "CPU, 2 cores"
    report["machine"] = {"cpus": 16, "gpu": "NVIDIA H200"}
    assert curve_table.setting_rows("curve.json", report)[1]["ran on"] == "NVIDIA H200"
    # A --resume on the CPU kept a GPU run: each run says where it ran.
    report["runs"][2]["machine"] = {"cpus": 2, "gpu": None}
    assert (
        curve_table.setting_rows("curve.json", report)[1]["ran on"] == "CPU, 2 cores / NVIDIA H200"
    )
    report["runs"][2].pop("machine")
    assert (small["N"], small["held-out per seed"], small["mean (gain)"]) == (
        "100",
        "0.420",
        "0.420 (+2.0)",
    )
    assert large["held-out per seed"] == "0.550 / 0.450"
    assert large["mean (gain)"] == "0.500 (+10.0)"
    assert large["McNemar p per seed"] == "0.04 / 0.6"
    assert large["LLMBar_Natural change"] == "+3.0"
    assert (large["weights trained"], large["lr"], large["examples/s"]) == (
        "LoRA, last 20 blocks",
        "0.0003",
        "0.500",
    )
    assert (large["orders per label"], large["rank"]) == ("2 (swap)", "16")
    assert (large["train + eval s"], large["load avg start / end"]) == ("1300", "0.50 / 1.75")
    loop = {
        "labels": {"MT-Bench": 20, "LLMEval": 20},
        "timings": {"wall_s": 1203.1},
        "training": {"method": "sft", "train_examples": 78, "examples_per_s": 0.1106},
        "llmbar_natural_before": {"accuracy": 0.425, "n": 40},
        "llmbar_natural_after": {"accuracy": 0.075, "n": 40},
    }
    paired = {"n": 150, "first_accuracy": 0.44, "second_accuracy": 0.6, "p_value": 0.00123}
    paired_loop = loop | {"heldout_paired": paired, "provenance": "the product's defaults"}
    loops = {"loop.json": loop, "loop_paired.json": paired_loop}
    text = curve_table.markdown({"curve.json": report}, loops)
    assert "| curve.json | NVIDIA H200 | random | 300 | LoRA, last 20 blocks | 2 (swap) |" in text
    assert "- `curve.json`: stopped after seed 1" in text
    assert "| loop.json | sft | 40 | 78 | 0.111 | - | 0.425 -> 0.075 (40 pairs) | 1203 |" in text
    assert "| 0.111 | 0.440 -> 0.600 (150 pairs, p 0.0012) | 0.425 -> 0.075" in text
    assert "- `loop_paired.json`: the product's defaults" in text
    report["diverged"] = [{"order": "random", "labels": 200, "seed": 0, "error": "NaN weights"}]
    text = curve_table.markdown({"curve.json": report}, {})
    assert "- `curve.json`: diverged, no figures: random N=200 seed 0 (NaN weights)" in text
    report.pop("diverged")
    report["args"]["trained_layers"] = None
    row = curve_table.setting_rows("curve.json", report)[0]
    assert row["weights trained"] == "LoRA, all blocks"
    old_file = report | {"args": report["args"] | {"lora_layers": 10}}  # the setting's old name
    assert curve_table.setting_rows("curve.json", old_file)[0]["weights trained"] == (
        "LoRA, last 10 blocks"
    )
    report["args"] |= {"weights": "full", "one_order": True}
    row = curve_table.setting_rows("curve.json", report)[0]
    assert (row["weights trained"], row["orders per label"], row["rank"]) == (
        "all (full fine-tuning)",
        "1 (seeded coin)",
        "-",
    )
    report["args"]["trained_layers"] = 15
    row = curve_table.setting_rows("curve.json", report)[0]
    assert row["weights trained"] == "all weights, last 15 blocks"
    report["args"]["trained_layers"] = None
    # A file from before full fine-tuning was a setting of the product names it its own way.
    report["args"] = {k: v for k, v in report["args"].items() if k != "weights"}
    report["args"]["full_finetune"] = True
    assert curve_table.setting_rows("curve.json", report)[0]["weights trained"] == (
        "all (full fine-tuning)"
    )


def test_one_order_shows_each_pair_once_and_keeps_the_labeled_response_right() -> None:
    rows = [
        {"id": f"set:{i}", "pair": bench.PairInput(f"q{i}", f"good{i}", f"bad{i}"), "label": "A"}
        for i in range(200)
    ]
    shown = bench.one_order(rows, seed=1)
    assert shown == bench.one_order(rows, seed=1)  # seeded: the same order every run
    assert shown != bench.one_order(rows, seed=2)
    better = [r["pair"].response_a if r["label"] == "A" else r["pair"].response_b for r in shown]
    assert better == [f"good{i}" for i in range(200)]
    flipped = sum(r["label"] == "B" for r in shown)
    assert 70 < flipped < 130  # a fair coin: about half are shown swapped


def test_the_summary_takes_the_best_order_and_quotes_its_worst_seed() -> None:
    runs = [
        curve_run("random", 300, 0.60, 0.01, 0.02),
        curve_run("random", 300, 0.50, 0.30, 0.04),
        curve_run("least-sure", 300, 0.52, 0.20, 0.00),
        curve_run("random", 100, 0.70, 0.001, 0.0),  # not the largest N
    ]
    runs[1]["figures"]["heldout"]["difference_ci_low"] = -0.08
    report = {
        "orders": ["random", "least-sure"],
        "runs": runs,
        "base": {"heldout": 0.4, "LLMBar_Natural": 0.5},
    }
    for run in runs:  # the forced-choice figures, as the benchmark saves them
        run["figures"]["heldout_forced"] = run["figures"]["heldout"]
        run["figures"]["LLMBar_Natural_forced"] = run["figures"]["LLMBar_Natural"]
    report["base"] |= {"heldout_forced": 0.4, "LLMBar_Natural_forced": 0.5}
    found = bench.summary(report)["product_rule"]
    assert (found["order"], found["labels"], found["seeds"]) == ("random", 300, 2)
    assert (found["accuracy"], found["gain_points"]) == (0.55, 15.0)
    assert found["p_values_per_seed"] == [0.01, 0.30]
    # the test of the seed that did worst, with its own interval: not the first seed's
    assert (found["p_value"], found["difference_ci"]) == (0.30, [-0.08, 0.2])
    assert found["llmbar_natural_delta_points"] == 3.0
