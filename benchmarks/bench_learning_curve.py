"""Does retraining on people's labels make the embedded judge agree with people more? The curve.

    .venv/bin/python benchmarks/bench_learning_curve.py --sizes 50 100 200 300 --seeds 0 1 2
    ... --resume   # after a stop: keeps the runs saved so far and runs the rest of the plan

Pools the human-labeled shared sets Processed_MT-Bench, Processed_LLMEval_2 and
Processed_FairEval (466 pairs), holds out about 150 pairs by a seeded hash of the *prompt*
(MT-Bench repeats prompts: no prompt is on both sides), and for each label order ("random", or
"least-sure": the base judge's least decided pairs first, |mean log-odds of A over B| smallest,
the two orders' disagreements among them), each number of labels N and each seed: trains the
base judge with the product's own job (judges.train.main, method `verdict`, `--weights` as the
product's setting: every weight by default, or a LoRA adapter) on the first N
labels, then judges the held-out pairs and all of LLMBar_Natural (never trained on: a regression
guard) with the judge's verdict-only prompt in both orders (swap, mean rule). Paired against the
base judge on the same pairs: McNemar's exact p and a paired bootstrap CI of the difference.

Reads ../shared/data/llmbar/ (never copied into the project). Saves every (method, order, N,
seed) and a `summary` for the best setting at the largest N to
benchmarks/results/bench_learning_curve.json, and the curve to bench_learning_curve.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from judges.backends.transformers_backend import TransformersBackend  # noqa: E402
from judges.embedded import resolve_model_path  # noqa: E402
from judges.judge import JudgeOptions, judge_pairs  # noqa: E402
from judges.metrics import paired_comparison  # noqa: E402
from judges.train import VERDICT_NEW_TOKENS, TrainingDiverged, plan_run  # noqa: E402
from judges.train import main as train  # noqa: E402
from judges.train_config import TrainConfig, config_choices, config_default  # noqa: E402
from judges.types import PairInput  # noqa: E402
from judges.verdict_training import VERDICT_PROMPT  # noqa: E402
from settings import load_settings  # noqa: E402

LLMBAR = ROOT.parent / "shared" / "data" / "llmbar"
POOL = ["Processed_MT-Bench", "Processed_LLMEval_2", "Processed_FairEval"]
GUARD = "LLMBar_Natural"
# The base judge's verdicts, outside the project (never committed)
BASE_CACHE = Path.home() / ".cache" / "grm-studio" / "bench_learning_curve_base.json"
RESULTS = ROOT / "benchmarks" / "results"
# A verdict alone is decoded without a repetition penalty (JudgeOptions.generation_options):
# the options say so, so the saved figures record what ran.
OPTIONS = JudgeOptions(
    prompt_version=VERDICT_PROMPT,
    max_new_tokens=VERDICT_NEW_TOKENS,
    swap=True,
    logprobs=True,
    repetition_penalty=1.0,
)


def load(name: str) -> list[dict[str, Any]]:
    rows = []
    for index, line in enumerate((LLMBAR / f"{name}.jsonl").read_text().splitlines()):
        row = json.loads(line)
        pair = PairInput(row["input"], row["output_1"], row["output_2"])
        rows.append(
            {"id": f"{name}:{index}", "pair": pair, "label": "A" if row["label"] == 1 else "B"}
        )
    return rows


def split_by_prompt(rows: list[dict[str, Any]], heldout: int, seed: int) -> tuple[list, list]:
    """Held-out pairs by a seeded hash of their prompt, whole prompts at a time, until at least
    `heldout` pairs are out; no prompt is on both sides."""

    def key(row: dict[str, Any]) -> str:
        return hashlib.sha256(f"{seed}:{row['pair'].prompt}".encode()).hexdigest()

    out, chosen = [], set()
    for row in sorted(rows, key=key):
        if len(out) >= heldout and row["pair"].prompt not in chosen:
            break
        chosen.add(row["pair"].prompt)
        out.append(row)
    held = {r["id"] for r in out}
    return [r for r in rows if r["id"] not in held], out


def judged(backend: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each pair's combined verdict (both orders, mean log-odds) and its margin."""
    results = judge_pairs(backend, [r["pair"] for r in rows], OPTIONS)
    return [
        {"verdict": r.verdict.value, "margin": r.margin, "consistent": r.position_consistent}
        for r in results
    ]


def right(verdicts: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[bool]:
    return [v["verdict"] == r["label"] for v, r in zip(verdicts, rows, strict=True)]


def forced(verdicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same judgments forced to choose: the sign of the margin, no tie band. The shared
    sets have no tie labels, and a bf16 judge's margins come in steps of about 0.06, so a tie
    band of 0.1 (the product's default when these figures were taken; 0 since) makes a judge
    with a small lean say "tie": both figures are kept."""

    def choice(margin: float | None) -> str:
        return "none" if margin is None else "A" if margin > 0 else "B" if margin < 0 else "tie"

    return [{**v, "verdict": choice(v["margin"])} for v in verdicts]


def label_order(train_pool: list[dict], base_verdicts: list[dict], order: str, seed: int) -> list:
    rng = random.Random(seed)
    indices = list(range(len(train_pool)))
    rng.shuffle(indices)  # the seed breaks ties (and is the whole order for "random")
    if order == "least-sure":

        def doubt(i: int) -> tuple[bool, float]:
            v = base_verdicts[i]
            return (v["consistent"] is not False, abs(v["margin"] or 0.0))

        indices.sort(key=doubt)
    return [train_pool[i] for i in indices]


def one_order(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Each pair in one order, chosen by a seeded coin (the label flips with it): trained with
    no swap copy, so half the examples, and response position still tells nothing on average."""
    coin = random.Random(f"one-order:{seed}")
    flipped = {"A": "B", "B": "A"}
    return [
        {**r, "pair": r["pair"].swapped(), "label": flipped[r["label"]]} if coin.random() < 0.5
        else r
        for r in rows
    ]  # fmt: skip


def records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "pair_id": i + 1,
            "label": r["label"],
            "prompt": r["pair"].prompt,
            "response_a": r["pair"].response_a,
            "response_b": r["pair"].response_b,
        }
        for i, r in enumerate(rows)
    ]


def train_and_judge(args, base_model: Path, rows: list[dict], seed: int, evals: dict) -> dict:
    # The trained weights are removed once judged: a whole model is 0.27 GB (--weights full).
    work = Path(tempfile.mkdtemp(prefix="grm-curve-"))
    try:
        return _train_and_judge(args, base_model, rows, seed, evals, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _train_and_judge(
    args, base_model: Path, rows: list[dict], seed: int, evals: dict, work: Path
) -> dict:
    config = TrainConfig(
        method="verdict",
        weights=args.weights,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lora_rank=args.lora_rank,
        trained_layers=args.trained_layers,
        lora_alpha=2 * args.lora_rank,
        include_swapped=not args.one_order,
        heldout_share=1 / len(rows),
        min_labels=2,
        seed=seed,
        output_dir=str(work / "adapter"),
    )
    started = time.perf_counter()
    # The run's own held-out share is a single pair: the curve's held-out set is separate.
    plan = plan_run(config, records(one_order(rows, seed) if args.one_order else rows))
    result = train(plan, base_model)
    backend = TransformersBackend(base_model, adapter_path=result.adapter_path, max_batch_size=8)
    try:
        verdicts = {name: judged(backend, rows_) for name, (rows_, _) in evals.items()}
    finally:
        backend.close()
    return {
        "train_examples": result.train_examples,
        "examples_per_s": round(result.examples_per_s, 3),
        "bf16": result.bf16,
        "train_and_eval_seconds": round(time.perf_counter() - started, 1),
        "verdicts": verdicts,
    }


def figures(verdicts: dict, evals: dict, base: dict) -> dict:
    """Per evaluation set: the product's rule, and the same judgments forced to choose."""
    out = {}
    for name, (rows, _) in evals.items():
        for suffix, pick in (("", lambda v: v), ("_forced", forced)):
            comparison = paired_comparison(
                right(pick(base[name]), rows), right(pick(verdicts[name]), rows)
            )
            out[name + suffix] = {
                k: (round(v, 4) if isinstance(v, float) else v) for k, v in comparison.items()
            }
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for suffix, style, what in (("", "-", "product rule"), ("_forced", ":", "forced choice")):
        base = report["base"]["heldout" + suffix]
        ax.axhline(base, color="grey", linestyle=style, label=f"base judge, {what} ({base:.3f})")
        for order in report["orders"]:
            runs = [r for r in report["runs"] if r["order"] == order]
            if not runs:
                continue
            sizes = sorted({r["labels"] for r in runs})
            accs = [
                [
                    r["figures"]["heldout" + suffix]["second_accuracy"]
                    for r in runs
                    if r["labels"] == n
                ]
                for n in sizes
            ]
            means = [statistics.mean(a) for a in accs]
            spread = [(max(a) - min(a)) / 2 for a in accs]
            label = f"verdict, {order}, {what}"
            ax.errorbar(
                sizes, means, yerr=spread, marker="o", capsize=3, linestyle=style, label=label
            )
    ax.set_xlabel("human labels trained on")
    ax.set_ylabel(f"held-out accuracy ({report['heldout_pairs']} pairs)")
    ax.set_title("Embedded judge retrained on human labels (bars: min-max over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def summary(report: dict) -> dict:
    largest = max(r["labels"] for r in report["runs"])
    best = None
    for order in report["orders"]:
        runs = [r for r in report["runs"] if r["order"] == order and r["labels"] == largest]
        if not runs:  # a partial report: this order has not reached the largest N yet
            continue
        acc = statistics.mean(r["figures"]["heldout"]["second_accuracy"] for r in runs)
        if best is None or acc > best[0]:
            best = (acc, order, runs)
    acc, order, runs = best
    return {
        "product_rule": _summary_of(report, "", order, largest, runs),
        # The conservative figure: both judges forced to choose (no tie band, see `forced`).
        "forced_choice": _summary_of(report, "_forced", order, largest, runs),
    }


def _summary_of(report: dict, suffix: str, order: str, largest: int, runs: list) -> dict:
    key, guard = "heldout" + suffix, GUARD + suffix
    acc = statistics.mean(r["figures"][key]["second_accuracy"] for r in runs)
    # A paired test is per trained judge: the summary quotes the test of the seed whose judge
    # did worst (a user's one run may be that one), not the first seed's.
    worst = min(
        (r["figures"][key] for r in runs), key=lambda f: (f["second_accuracy"], -f["p_value"])
    )
    return {
        "method": "verdict",
        "order": order,
        "labels": largest,
        "seeds": len(runs),
        "base_accuracy": round(report["base"][key], 4),
        "accuracy": round(acc, 4),
        "gain_points": round(100 * (acc - report["base"][key]), 2),
        "p_value": worst["p_value"],
        "p_values_per_seed": [r["figures"][key]["p_value"] for r in runs],
        "difference_ci": [worst["difference_ci_low"], worst["difference_ci_high"]],
        "llmbar_natural_base": round(report["base"][guard], 4),
        "llmbar_natural_delta_points": round(
            100 * statistics.mean(r["figures"][guard]["difference"] for r in runs), 2
        ),
        "train_and_eval_seconds": round(
            statistics.mean(r["train_and_eval_seconds"] for r in runs), 1
        ),
        "examples_per_s": round(statistics.mean(r["examples_per_s"] for r in runs), 3),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 300])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--orders", nargs="+", default=["random", "least-sure"])
    parser.add_argument(
        "--replicate-orders",
        nargs="+",
        default=["random", "least-sure"],
        help="orders whose later seeds are run (at the largest N only)",
    )
    parser.add_argument("--heldout", type=int, default=150)
    parser.add_argument(
        "--split-seed", type=int, default=0, help="which pairs are held out (the hash's seed)"
    )
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--weights",
        choices=config_choices("weights"),
        default=config_default("weights"),
        help="what a run trains (the product's setting): every weight, or a LoRA adapter",
    )
    parser.add_argument(
        "--learning-rate", type=float, default=None, help="unset: the product's, for --weights"
    )
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument(
        "--trained-layers",
        type=int,
        default=None,
        help="train the last N blocks only (LoRA there, or their weights)",
    )
    parser.add_argument(
        "--one-order",
        action="store_true",
        help="train each label once, in a seeded random order, with no swap copy",
    )
    parser.add_argument("--pool-limit", type=int, default=None, help="a quick try: fewer pairs")
    parser.add_argument("--guard-limit", type=int, default=None, help="a quick try: fewer pairs")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_learning_curve.json")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs --out holds (same training settings) and run the rest of the plan",
    )
    args = parser.parse_args()
    if args.learning_rate is None:  # recorded as it runs, so a resumed run compares the rate
        args.learning_rate = TrainConfig(weights=args.weights).resolved().learning_rate
    return args


# What a run's figures depend on besides its place in the plan: a resumed run must match them.
SETTINGS_KEYS = ("heldout", "epochs", "batch_size", "learning_rate", "lora_rank",
                 "trained_layers", "pool_limit", "guard_limit", "one_order", "weights")  # fmt: skip


def saved_runs(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """--resume: the runs, and the diverged runs, a stopped run with the same settings saved
    in --out."""
    if not args.resume or not args.out.exists():
        return [], []
    saved = json.loads(args.out.read_text())
    differ = [k for k in SETTINGS_KEYS if saved["args"].get(k) != getattr(args, k)]
    if differ:
        raise SystemExit(f"--resume: {args.out} was made with other settings ({differ})")
    return saved["runs"], saved.get("diverged", [])


def base_cache_key(base_model: Path, evals: dict, train_pool: list) -> str:
    """What the base judge's verdicts depend on: its files, the judge options, the pairs."""
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in base_model.iterdir())
    pairs = {name: [r["id"] for r in rows] for name, (rows, _) in evals.items()}
    pairs["train_pool"] = [r["id"] for r in train_pool]
    text = json.dumps([files, OPTIONS.model_dump(mode="json"), pairs], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def judge_with_base(base_model: Path, evals: dict, train_pool: list) -> tuple[dict, list, dict]:
    """The base judge's verdicts on the evaluation sets and on the training pool (for the
    "least-sure" order), and its accuracies: the product's rule, and forced to choose. The
    verdicts are cached (about 13 min of judging here), so a resumed run does not redo them."""
    key = base_cache_key(base_model, evals, train_pool)
    cache = BASE_CACHE.with_name(f"{BASE_CACHE.stem}-{key[:16]}.json")
    if cache.exists():
        base, base_on_pool = json.loads(cache.read_text())
    else:
        base_backend = TransformersBackend(base_model, max_batch_size=8)
        base = {name: judged(base_backend, rows) for name, (rows, _) in evals.items()}
        base_on_pool = judged(base_backend, train_pool)
        base_backend.close()
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps([base, base_on_pool]))
    base_acc = {n: sum(right(base[n], rows)) / len(rows) for n, (rows, _) in evals.items()}
    base_acc |= {
        f"{n}_forced": sum(right(forced(base[n]), rows)) / len(rows)
        for n, (rows, _) in evals.items()
    }
    return base, base_on_pool, base_acc


def run_point(
    args,
    base_model: Path,
    ordered: list,
    evals: dict,
    base: dict,
    *,
    order: str,
    seed: int,
    size: int,
) -> dict:
    """Train on the first `size` labels of `ordered` and judge: the run's entry, printed."""
    run = train_and_judge(args, base_model, ordered[:size], seed, evals)
    entry = {
        "method": "verdict",
        "order": order,
        "labels": size,
        "seed": seed,
        # Per run: a --resume may run on another machine than the runs it keeps.
        "machine": machine(),
        "figures": figures(run.pop("verdicts"), evals, base),
        **run,
    }
    held, fo = entry["figures"]["heldout"], entry["figures"]["heldout_forced"]
    print(
        f"{order:10s} seed {seed} N={size:3d}: held-out {held['second_accuracy']:.3f} "
        f"(base {held['first_accuracy']:.3f}, p={held['p_value']:.3g}); forced "
        f"{fo['second_accuracy']:.3f} (base {fo['first_accuracy']:.3f}, "
        f"p={fo['p_value']:.3g}); "
        f"{GUARD} forced {entry['figures'][GUARD + '_forced']['second_accuracy']:.3f}, "
        f"{run['examples_per_s']} ex/s, {run['train_and_eval_seconds']} s",
        flush=True,
    )
    return entry


def main() -> None:
    args = parse_args()
    base_model = Path(str(resolve_model_path(load_settings())))
    pool = [row for name in POOL for row in load(name)][: args.pool_limit]
    train_pool, heldout = split_by_prompt(pool, args.heldout, seed=args.split_seed)
    evals = {"heldout": (heldout, None), GUARD: (load(GUARD)[: args.guard_limit], None)}
    print(f"pool {len(pool)}, train {len(train_pool)}, held out {len(heldout)}", flush=True)

    started = time.perf_counter()
    # The base judge's doubt orders the labels for "least-sure" only (judging the pool: ~10 min).
    judged_pool = train_pool if "least-sure" in args.orders else []
    base, base_on_pool, base_acc = judge_with_base(base_model, evals, judged_pool)
    print(f"base judge: {base_acc} ({time.perf_counter() - started:.0f} s)", flush=True)

    report: dict[str, Any] = {
        "benchmark": "bench_learning_curve",
        "load_average_at_start": os.getloadavg(),
        "machine": machine(),
        "options": OPTIONS.model_dump(mode="json"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "pool": len(pool),
        "train_pool": len(train_pool),
        "heldout_pairs": len(heldout),
        "base": base_acc,
        "orders": args.orders,
    }
    report["runs"], report["diverged"] = saved_runs(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for order, seed, size in points_left(args, report["runs"], report["diverged"]):
        ordered = label_order(train_pool, base_on_pool, order, seed)
        try:
            entry = run_point(
                args, base_model, ordered, evals, base, order=order, seed=seed, size=size
            )
        except TrainingDiverged as exc:
            print(f"{order:10s} seed {seed} N={size:3d}: {exc}", flush=True)
            point = {"order": order, "labels": size, "seed": seed, "error": str(exc)}
            report["diverged"].append(point)
            continue
        report["runs"].append(entry)
        # Summary, plot and figures are rewritten after every run: a run stopped part-way
        # (the whole plan takes hours on 2 cores) still leaves what it measured, complete.
        report["summary"] = summary(report)
        report["seconds"] = round(time.perf_counter() - started, 1)
        report["load_average_at_end"] = os.getloadavg()
        args.out.write_text(json.dumps(report, indent=2))
        plot(report, args.out.with_suffix(".png"))
    print(json.dumps(report.get("summary"), indent=2))
    print(f"saved {args.out} and {args.out.with_suffix('.png')}")


def machine() -> dict[str, Any]:
    """Where the figures were taken: the CPU count, and the GPU the trainer used, if any."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "gpu": gpu}


def points_left(args: argparse.Namespace, runs: list, diverged: list) -> list[tuple]:
    """The plan's points not run yet. A diverged run (TrainingDiverged: NaN weights, nothing
    saved) is recorded apart from the runs, with no figures, and not retried on --resume: the
    same seed would diverge again."""
    done = {(r["order"], r["seed"], r["labels"]) for r in runs + diverged}
    return [point for point in run_plan(args) if point not in done]


def run_plan(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(order, seed, labels) in the order they run: each order's curve with the first seed,
    then the later seeds at the largest N (the summary's) for the replicated orders."""
    first, largest = args.seeds[0], args.sizes[-1]
    curves = [(order, first, size) for order in args.orders for size in args.sizes]
    later = [
        (order, seed, largest)
        for seed in args.seeds[1:]
        for order in args.orders
        if order in args.replicate_orders
    ]
    return curves + later


if __name__ == "__main__":
    main()
