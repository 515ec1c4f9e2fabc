"""Judge the shared LLMBar sets once in both orders and compare the aggregation rules on them.

    .venv/bin/python benchmarks/bench_judge_accuracy.py --protocol pairwise --limit 40 \
        --max-new-tokens 256

Every pair is judged once per order (swap on, k samples per order); the same judgments are then
combined three ways (judges.scaling.aggregate, nothing is judged twice):

- one-order: the original order's samples alone, by vote (with k = 1, the stated verdict);
- swap-vote: both orders by vote (two orders that disagree make a tie; FastChat / MT-Bench);
- swap-mean: both orders by the mean rule (mean verdict log-odds; mean score difference or mean
  P(Yes) for the other protocols), falling back to vote for a pair without probabilities.

Per set and over all sets: accuracy with a 95% bootstrap interval, tie rate, no-verdict rate,
the share of A verdicts, how often swap-mean had to fall back to vote, position consistency
(how often the two orders' stated verdicts agree), and McNemar's exact test of swap-mean against
one-order (pairs where exactly one of the two is right). Reads ../shared/data/llmbar/ (never
copied into the project). A missing verdict and a tie both count as wrong (LLMBar has no ties).
Prints a table and writes JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from judges.copying import MOSTLY_COPIED, copied_share
from judges.metrics import accuracy_with_interval, mcnemar_exact
from judges.prompts import PromptTemplate, get_prompt
from judges.scaling import TIE_BAND, aggregate
from judges.types import AggregateJudgment, Aggregation, PairInput, Verdict

ROOT = Path(__file__).resolve().parent.parent
LLMBAR = ROOT.parent / "shared" / "data" / "llmbar"
DEFAULT_SETS = [
    "LLMBar_Natural",
    "LLMBar_Adversarial_Neighbor",
    "LLMBar_Adversarial_GPTInst",
    "Processed_MT-Bench",
]


@dataclass(frozen=True)
class Rule:
    """One way to combine a pair's judgments: which orders it reads and how it combines them."""

    name: str
    aggregation: Aggregation
    both_orders: bool


RULES = (
    Rule("one-order", Aggregation.VOTE, both_orders=False),
    Rule("swap-vote", Aggregation.VOTE, both_orders=True),
    Rule("swap-mean", Aggregation.MEAN, both_orders=True),
)
BASELINE, CANDIDATE = "one-order", "swap-mean"  # the paired test's two rules


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


def combine(result: AggregateJudgment, rule: Rule, tie_band: float = TIE_BAND) -> AggregateJudgment:
    """The pair's judgments (both orders, as judged) combined by `rule`."""
    samples = result.samples if rule.both_orders else [j for j in result.samples if not j.swapped]
    return aggregate(samples, rule.aggregation, tie_band=tie_band)


def score_rule(
    verdicts: Sequence[AggregateJudgment], gold: Sequence[Verdict], rule: Rule
) -> dict[str, Any]:
    """Accuracy (95% bootstrap interval), the shares of ties, no verdicts and A verdicts, and for
    a mean rule the share of pairs it combined by vote because they had no probabilities."""
    n = len(gold)
    said = [v.verdict.value for v in verdicts]
    accuracy = accuracy_with_interval(said, [g.value for g in gold])
    voted = sum(1 for v in verdicts if v.aggregation == Aggregation.VOTE.value)
    asked_mean = rule.aggregation is Aggregation.MEAN
    return {
        "pairs": n,
        "accuracy": accuracy["accuracy"],
        "ci_low": accuracy["ci_low"],
        "ci_high": accuracy["ci_high"],
        "tie_rate": said.count("tie") / n if n else None,
        "no_verdict_rate": said.count("none") / n if n else None,
        "chose_a_rate": said.count("A") / n if n else None,
        "fell_back_to_vote": voted / n if n and asked_mean else None,
    }


def copying(results: Sequence[AggregateJudgment], template: PromptTemplate) -> dict[str, Any]:
    """How much of the judgments' text is the prompt's own words (judges.copying)."""
    shares = [copied_share(j.raw_text, template) for r in results for j in r.samples]
    return {
        "copied_share": sum(shares) / len(shares) if shares else None,
        "mostly_copied_rate": sum(s > MOSTLY_COPIED for s in shares) / len(shares)
        if shares
        else None,
    }


def report_set(
    results: Sequence[AggregateJudgment],
    gold: Sequence[Verdict],
    tie_band: float = TIE_BAND,
    template: PromptTemplate | None = None,
) -> dict[str, Any]:
    """Every rule's figures on one set of judgments, position consistency, the paired test and
    (given the template) how much of the judgments was copied from the prompt."""
    by_rule = {rule.name: [combine(r, rule, tie_band) for r in results] for rule in RULES}
    rules = {rule.name: score_rule(by_rule[rule.name], gold, rule) for rule in RULES}
    checked = [r.position_consistent for r in results if r.position_consistent is not None]
    right = {
        name: [v.verdict is g for v, g in zip(verdicts, gold, strict=True)]
        for name, verdicts in by_rule.items()
    }
    paired = mcnemar_exact(right[CANDIDATE], right[BASELINE])
    return {
        "pairs": len(gold),
        **(copying(results, template) if template is not None else {}),
        "rules": rules,
        "position_consistency": sum(checked) / len(checked) if checked else None,
        "orders_compared": len(checked),
        "paired_test": {
            "test": "McNemar exact (two-sided binomial on discordant pairs)",
            "first": CANDIDATE,
            "second": BASELINE,
            **paired,
        },
        "per_pair": [
            {"gold": g.value, **{name: by_rule[name][i].verdict.value for name in by_rule}}
            | {"margin": by_rule[CANDIDATE][i].margin}
            for i, g in enumerate(gold)
        ],
    }


def format_table(sets: dict[str, dict[str, Any]]) -> str:
    """One row per set and rule, then each set's position consistency and paired test."""

    def pct(value: float | None) -> str:
        return "   -" if value is None else f"{value:4.2f}"

    head = (
        f"{'set':30s} {'rule':10s} {'n':>4s} {'acc':>5s} {'95% CI':>11s} "
        f"{'tie':>5s} {'none':>5s} {'A':>5s} {'voted':>5s}"
    )
    lines = [head, "-" * len(head)]
    for name, report in sets.items():
        for rule, f in report["rules"].items():
            ci = f"{pct(f['ci_low'])}-{pct(f['ci_high'])}"
            lines.append(
                f"{name:30s} {rule:10s} {f['pairs']:4d} {pct(f['accuracy']):>5s} {ci:>11s} "
                f"{pct(f['tie_rate']):>5s} {pct(f['no_verdict_rate']):>5s} "
                f"{pct(f['chose_a_rate']):>5s} {pct(f['fell_back_to_vote']):>5s}"
            )
        test = report["paired_test"]
        if report.get("copied_share") is not None:
            lines.append(
                f"{'':30s} copied from the prompt: {pct(report['copied_share'])} of the words; "
                f"{pct(report['mostly_copied_rate'])} of judgments mostly copied"
            )
        lines.append(
            f"{'':30s} position consistency {pct(report['position_consistency'])} "
            f"({report['orders_compared']} compared); {test['first']} vs {test['second']}: "
            f"{test['only_first']} vs {test['only_second']} discordant, "
            f"McNemar exact p = {test['p_value']:.3g}"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="pairwise")
    parser.add_argument("--prompt-version", default=None, help="default: the protocol's latest")
    parser.add_argument("--k", type=int, default=1, help="samples per order")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--limit", type=int, default=40, help="pairs per set (0: all)")
    parser.add_argument("--sets", nargs="+", default=DEFAULT_SETS)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--tie-band", type=float, default=TIE_BAND, help="swap-mean's tie band")
    parser.add_argument("--out", default=None)
    return parser.parse_args()


def main() -> None:
    from judges.backends import make_backend
    from judges.judge import JudgeOptions, judge_pairs
    from settings import load_settings

    args = parse_args()
    settings = load_settings()
    backend = make_backend(settings)
    temperature = args.temperature if args.temperature is not None else (0.7 if args.k > 1 else 0)
    options = JudgeOptions(
        protocol=args.protocol,
        k=args.k,
        swap=True,  # both orders judged once; every rule reads the same judgments
        temperature=temperature,
        max_new_tokens=args.max_new_tokens,
        prompt_version=args.prompt_version,
    )
    template = get_prompt(args.prompt_version or args.protocol)
    report: dict[str, Any] = {
        "model": backend.model_name,
        "engine": backend.name,
        "prompt_version": template.version,
        "options": options.model_dump(mode="json"),
        "tie_band": args.tie_band,
        "rules": {
            r.name: {"aggregation": r.aggregation.value, "both_orders": r.both_orders}
            for r in RULES
        },
        "sets": {},
    }
    started = time.perf_counter()
    everything: list[AggregateJudgment] = []
    all_gold: list[Verdict] = []
    for name in args.sets:
        pairs, gold = load_set(name, args.limit or None)
        set_started = time.perf_counter()
        results = judge_pairs(backend, pairs, options)
        figures = report_set(results, gold, args.tie_band, template)
        figures["seconds"] = round(time.perf_counter() - set_started, 1)
        report["sets"][name] = figures
        everything += results
        all_gold += gold
        print(format_table({name: figures}), flush=True)
    if len(args.sets) > 1:
        report["sets"]["all"] = report_set(everything, all_gold, args.tie_band, template)
    report["seconds"] = round(time.perf_counter() - started, 1)
    print()
    print(format_table(report["sets"]))

    tag = f"{template.version}_k{args.k}_rules"
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"bench_judge_accuracy_{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
