"""Judge the shared LLMBar sets and save accuracy per set, position consistency, no-verdict rate.

    .venv/bin/python benchmarks/bench_judge_accuracy.py --protocol pairwise --swap --limit 40

Reads ../shared/data/llmbar/ (never copied into the project). Accuracy counts a missing verdict
as wrong; ties count as wrong too (LLMBar has none).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from judges.backends import make_backend
from judges.judge import JudgeOptions, judge_pairs
from judges.types import PairInput, Verdict
from settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
LLMBAR = ROOT.parent / "shared" / "data" / "llmbar"
DEFAULT_SETS = [
    "LLMBar_Natural",
    "LLMBar_Adversarial_Neighbor",
    "LLMBar_Adversarial_GPTInst",
    "Processed_MT-Bench",
]


def load_set(name: str, limit: int | None) -> tuple[list[PairInput], list[Verdict]]:
    pairs, gold = [], []
    with open(LLMBAR / f"{name}.jsonl", encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if limit is not None and index >= limit:
                break
            row = json.loads(line)
            pairs.append(PairInput(row["input"], row["output_1"], row["output_2"], pair_id=index))
            gold.append(Verdict.A if int(row["label"]) == 1 else Verdict.B)
    return pairs, gold


def score_set(results, gold: list[Verdict]) -> dict:
    correct = sum(r.verdict == g for r, g in zip(results, gold, strict=True))
    no_verdict = sum(r.verdict == Verdict.NONE for r in results)
    checked = [r.position_consistent for r in results if r.position_consistent is not None]
    return {
        "pairs": len(gold),
        "accuracy": correct / len(gold),
        "no_verdict_rate": no_verdict / len(gold),
        "position_consistency": (sum(checked) / len(checked)) if checked else None,
        "chose_a_rate": sum(r.verdict == Verdict.A for r in results) / len(gold),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="pairwise")
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--swap", action="store_true")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--limit", type=int, default=40, help="pairs per set (None: all)")
    parser.add_argument("--sets", nargs="+", default=DEFAULT_SETS)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    settings = load_settings()
    backend = make_backend(settings)
    temperature = args.temperature if args.temperature is not None else (0.7 if args.k > 1 else 0)
    options = JudgeOptions(
        protocol=args.protocol,
        k=args.k,
        swap=args.swap,
        temperature=temperature,
        max_new_tokens=args.max_new_tokens,
    )
    report = {"model": backend.model_name, "options": options.model_dump(), "sets": {}}
    started = time.perf_counter()
    for name in args.sets:
        pairs, gold = load_set(name, args.limit)
        set_started = time.perf_counter()
        results = judge_pairs(backend, pairs, options)
        figures = score_set(results, gold)
        figures["seconds"] = round(time.perf_counter() - set_started, 1)
        report["sets"][name] = figures
        print(f"{name:32s} " + "  ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)

    tag = f"{args.protocol}_k{args.k}{'_swap' if args.swap else ''}"
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"bench_judge_accuracy_{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
