"""Every learning-curve setting tried, side by side: one table from the curve's saved results.

    .venv/bin/python benchmarks/curve_table.py

Reads every benchmarks/results/bench_learning_curve*.json (each is one setting of
bench_learning_curve.py, run with its own --out) and writes one row per (file, label order, N):
the training setting, each seed's held-out accuracy and McNemar p against the base judge, their
mean and gain, LLMBar_Natural's change (the regression guard), examples/s and train + evaluate
seconds (means over seeds), and the load average when the file was started and last written.
A file's own note (a trial since reverted, a run stopped early) is listed under the table.
The whole loop's runs through the product (benchmarks/bench_retrain_loop*.json: labels
imported, a training run in its own worker, the new version judged) follow in a second table.
Prints both and saves them to benchmarks/results/learning_curve_settings.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import bench_learning_curve as curve  # noqa: E402

RESULTS = curve.RESULTS
OUT = RESULTS / "learning_curve_settings.md"
GUARD = curve.GUARD
NOTES = ("provenance", "trial", "stopped_early")
COLUMNS = (
    "file", "ran on", "order", "N", "weights trained", "orders per label", "lr", "rank", "batch",
    "epochs", "held-out per seed",
    "mean (gain)", "McNemar p per seed", f"{GUARD} change", "examples/s", "train + eval s",
    "load avg start / end",
)  # fmt: skip


def setting_rows(name: str, report: dict[str, Any]) -> list[dict[str, str]]:
    """One row per (label order, N) of one results file, seeds in the order they ran; the
    means are bench_learning_curve's own summary of those runs."""
    args = report["args"]
    points = sorted({(r["order"], r["labels"]) for r in report["runs"]}, key=lambda p: (p[1], p[0]))
    rows = []
    for order, size in points:
        runs = [r for r in report["runs"] if (r["order"], r["labels"]) == (order, size)]
        summary = curve._summary_of(report, "", order, size, runs)
        accuracies = [r["figures"]["heldout"]["second_accuracy"] for r in runs]
        rows.append(
            {
                "file": name,
                "ran on": _machines(report, runs),
                "order": order,
                "N": str(size),
                "weights trained": _weights(args),
                "orders per label": "1 (seeded coin)" if args.get("one_order") else "2 (swap)",
                "lr": f"{args['learning_rate']:g}",
                "rank": "-" if _every_weight(args) else str(args["lora_rank"]),
                "batch": str(args["batch_size"]),
                "epochs": f"{args['epochs']:g}",
                "held-out per seed": " / ".join(f"{a:.3f}" for a in accuracies),
                "mean (gain)": f"{summary['accuracy']:.3f} ({summary['gain_points']:+.1f})",
                "McNemar p per seed": " / ".join(f"{p:.3g}" for p in summary["p_values_per_seed"]),
                f"{GUARD} change": f"{summary['llmbar_natural_delta_points']:+.1f}",
                "examples/s": f"{summary['examples_per_s']:.3f}",
                "train + eval s": f"{summary['train_and_eval_seconds']:.0f}",
                "load avg start / end": _load(report),
            }
        )
    return rows


def _machines(report: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """Where the runs ran: each run's own machine, or the file's for runs that predate it."""
    return " / ".join(sorted({_where(r.get("machine") or report.get("machine", {})) for r in runs}))


def _where(machine: dict[str, Any]) -> str:
    return machine.get("gpu") or f"CPU, {machine.get('cpus', '?')} cores"


def _every_weight(args: dict[str, Any]) -> bool:
    # Files from before full fine-tuning was a product setting name it `full_finetune`, and
    # the oldest name neither: they trained LoRA.
    return args.get("weights") == "full" or bool(args.get("full_finetune"))


def _weights(args: dict[str, Any]) -> str:
    # Files from before full runs could train the top blocks only name the setting lora_layers.
    blocks = args.get("trained_layers") or args.get("lora_layers")
    if _every_weight(args):
        return f"all weights, last {blocks} blocks" if blocks else "all (full fine-tuning)"
    return f"LoRA, last {blocks} blocks" if blocks else "LoRA, all blocks"


def _load(report: dict[str, Any]) -> str:
    start, end = report.get("load_average_at_start"), report.get("load_average_at_end")
    return " / ".join(f"{value[0]:.2f}" if value else "?" for value in (start, end))


LOOP_COLUMNS = (
    "file",
    "method",
    "labels",
    "train examples",
    "examples/s",
    "held-out before -> after (McNemar p)",
    f"{GUARD} before -> after",
    "wall s",
)


def loop_row(name: str, report: dict[str, Any]) -> dict[str, str]:
    """bench_retrain_loop's one run: the method, its speed, the run's own held-out pairs and the
    guard set before and after (runs saved before the paired figures show "-" there)."""
    training, before, after = (
        report["training"],
        report["llmbar_natural_before"],
        report["llmbar_natural_after"],
    )
    paired = report.get("heldout_paired")
    return {
        "file": name,
        "method": training["method"],
        "labels": str(sum(report["labels"].values())),
        "train examples": str(training["train_examples"]),
        "examples/s": f"{training['examples_per_s']:.3f}",
        "held-out before -> after (McNemar p)": (
            f"{paired['first_accuracy']:.3f} -> {paired['second_accuracy']:.3f} "
            f"({paired['n']} pairs, p {paired['p_value']:.2g})"
            if paired
            else "-"
        ),
        f"{GUARD} before -> after": (
            f"{before['accuracy']:.3f} -> {after['accuracy']:.3f} ({after['n']} pairs)"
        ),
        "wall s": f"{report['timings']['wall_s']:.0f}",
    }


def _table(columns: tuple[str, ...], rows: list[dict[str, str]]) -> list[str]:
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(row[c] for c in columns) + " |" for row in rows),
    ]


def markdown(reports: dict[str, dict[str, Any]], loops: dict[str, dict[str, Any]]) -> str:
    rows = [row for name, report in reports.items() for row in setting_rows(name, report)]
    bases = {f"{r['base']['heldout']:.3f}" for r in reports.values()}
    lines = [
        "# The learning curve: every setting tried",
        "",
        f"Held-out accuracy of the base judge: {', '.join(sorted(bases))}. Gains are in points.",
        "Generated by `benchmarks/curve_table.py` from `bench_learning_curve*.json`.",
        "",
        *_table(COLUMNS, rows),
    ]
    notes = [
        f"- `{name}`: {report[key]}"
        for name, report in reports.items()
        for key in NOTES
        if report.get(key)
    ]
    notes += [
        f"- `{name}`: diverged, no figures: {d['order']} N={d['labels']} seed {d['seed']} "
        f"({d['error']})"
        for name, report in reports.items()
        for d in report.get("diverged", [])
    ]
    lines += [""] + notes if notes else []
    if loops:
        lines += ["", "## The whole loop through the product (bench_retrain_loop)", ""]
        lines += _table(LOOP_COLUMNS, [loop_row(name, r) for name, r in loops.items()])
        loop_notes = [
            f"- `{name}`: {r[key]}" for name, r in loops.items() for key in NOTES if r.get(key)
        ]
        lines += [""] + loop_notes if loop_notes else []
    return "\n".join(lines) + "\n"


def _read(pattern: str) -> dict[str, dict[str, Any]]:
    return {f.name: json.loads(f.read_text()) for f in sorted(RESULTS.glob(pattern))}


def main() -> None:
    text = markdown(_read("bench_learning_curve*.json"), _read("bench_retrain_loop*.json"))
    OUT.write_text(text)
    print(text)
    print(f"saved {OUT}")


if __name__ == "__main__":
    main()
