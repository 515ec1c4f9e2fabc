"""The shipped pairwise prompts v2 and v3 compared on the shared human-labeled sets, from the CLI.

    .venv/bin/python benchmarks/bench_compare_prompts.py            # all four sets
    .venv/bin/python benchmarks/bench_compare_prompts.py --limit 20 # the first 20 pairs of each

Each LLMBar set is imported into its own dataset (`grm import`), then `grm compare --a
prompt=pairwise-v2 --b prompt=pairwise-v3 --dataset SET --gold --json` judges every pair with
both prompts (the embedded judge on the engine GRM_JUDGE_BACKEND names, one order, greedy, the
judge's default token budget) and
scores both against the set's human labels. The per-set reports are saved; the pooled figures
add up the per-set counts (accuracy over all pairs, McNemar's exact test on the summed
discordant pairs). The data directory is kept (--home), so a second run reuses the stored
judgments instead of judging again. Reads ../shared/data/llmbar/ (never copied into the project).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_judge_accuracy import DEFAULT_SETS as SETS  # run as a script: benchmarks/ is on the path
from bench_judge_accuracy import LLMBAR, ROOT

from judges.metrics import mcnemar_exact

A, B = "prompt=pairwise-v2", "prompt=pairwise-v3"


def grm(home: Path, *args: str) -> str:
    env = {**os.environ, "GRM_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-m", "cli", *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"grm {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def compare_set(home: Path, name: str, limit: int | None) -> dict[str, Any]:
    """Import the set once (a second import adds nothing) and compare both prompts on it."""
    grm(home, "import", str(LLMBAR / f"{name}.jsonl"), "--dataset", name)
    extra = ["--limit", str(limit)] if limit else []
    args = ["compare", "--a", A, "--b", B, "--dataset", name, "--gold", "--json", *extra]
    started = time.perf_counter()
    report = json.loads(grm(home, *args))
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def pooled(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy over all sets' pairs and McNemar's test on the summed discordant pairs."""
    only_a = sum(r["mcnemar"]["only_first"] for r in reports)
    only_b = sum(r["mcnemar"]["only_second"] for r in reports)
    test = mcnemar_exact([True] * only_a + [False] * only_b, [False] * only_a + [True] * only_b)
    n = sum(r["a"]["n"] for r in reports)
    return {
        "pairs": n,
        **{side: sum(r[side]["correct"] for r in reports) / n for side in ("a", "b")},
        **{f"no_verdict_{s}": sum(r[s]["no_verdict"] for r in reports) for s in ("a", "b")},
        "mcnemar": test,
    }


def row(name: str, a: float | None, b: float | None, test: dict[str, Any], extra: str) -> str:
    return (
        f"{name:30}{a:>8.3f}{b:>8.3f}{test['only_first']:>8}{test['only_second']:>8}"
        f"{test['p_value']:>9.3g}  {extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=SETS)
    parser.add_argument("--limit", type=int, help="the first N pairs of each set")
    parser.add_argument("--home", type=Path, default=Path("/tmp/grm-compare-prompts"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args()
    reports = {name: compare_set(args.home, name, args.limit) for name in args.sets}
    total = pooled(list(reports.values()))
    print(f"{'set':30}{'v2':>8}{'v3':>8}{'only v2':>8}{'only v3':>8}{'p':>9}  kappa v2/v3")
    for name, r in reports.items():
        kappas = f"{r['a']['kappa']:.3f} / {r['b']['kappa']:.3f}"
        print(row(name, r["a"]["accuracy"], r["b"]["accuracy"], r["mcnemar"], kappas))
    nv = f"no verdict {total['no_verdict_a']} / {total['no_verdict_b']}"
    print(row(f"pooled ({total['pairs']} pairs)", total["a"], total["b"], total["mcnemar"], nv))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "bench_compare_prompts.json"
    engine = os.environ.get("GRM_JUDGE_BACKEND", "transformers")
    saved = {"engine": engine, "sets": reports, "pooled": total}
    out.write_text(json.dumps(saved, indent=2, default=str) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
