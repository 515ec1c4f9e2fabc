"""Play the whole retraining loop on real human labels and save accuracy before and after.

    .venv/bin/python benchmarks/bench_retrain_loop.py --heldout-share 0.33 --swap  # ~20 min
    .venv/bin/python benchmarks/bench_retrain_loop.py --train-limit 20 --eval-limit 20 \\
        --method sft --max-steps 10 --max-new-tokens 96                # about 15 minutes

1. Import Processed_MT-Bench, Processed_LLMEval_2 and Processed_FairEval (../shared/data/llmbar,
   read in place) and store their human labels as a person's labels (annotator "llmbar-human").
2. For a method that reads the judge's judgments (not `verdict`), judge them with the active
   (embedded) judge, through services, as the Batch tab does.
3. Start a training run through services (its own worker process), follow it to the end: it
   measures the base and the new version on its held-out pairs (whole prompts held out).
4. Evaluate the base and the new version on LLMBar_Natural (never trained on, never labeled):
   accuracy with a bootstrap 95% interval, kappa, position consistency, no-verdict rate.

Saves benchmarks/results/bench_retrain_loop_<method>.json: the before/after figures, wall time
per stage, training examples/s, and (LoRA runs of the judgment methods) training FLOP/s as a
share of this machine's measured matmul peak. The FLOP count is an estimate (see
`training_flops`): tokens per example are bounded by the prompt and target budgets, so the
share is an upper bound on the real utilisation.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli import watch_run  # noqa: E402
from judges.evaluation import evaluate_judge  # noqa: E402
from judges.judge import JudgeOptions  # noqa: E402
from judges.train import TrainConfig, config_from_args, evaluation_options  # noqa: E402
from judges.train_config import add_dataclass_arguments  # noqa: E402
from judges.types import PairInput  # noqa: E402
from services import Services  # noqa: E402
from settings import load_settings  # noqa: E402
from storage import queries  # noqa: E402
from vocabulary import DEFAULT_MAX_NEW_TOKENS, TrainedWeights, TrainingMethod  # noqa: E402
from webui.figures import metric_rows  # noqa: E402

LLMBAR = ROOT.parent / "shared" / "data" / "llmbar"
TRAIN_SETS = ["Processed_MT-Bench", "Processed_LLMEval_2", "Processed_FairEval"]
EVAL_SET = "LLMBar_Natural"
ANNOTATOR = "llmbar-human"
RESULTS = ROOT / "benchmarks" / "results"
log = logging.getLogger("bench_retrain_loop")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-limit", type=int, default=None, help="pairs per training set")
    parser.add_argument("--eval-limit", type=int, default=None, help="LLMBar_Natural pairs")
    add_dataclass_arguments(parser, TrainConfig)  # the run's settings, as `grm train` has them
    # The measured loop holds out less and samples nothing more by default (hours otherwise).
    parser.set_defaults(heldout_share=0.1, rft_samples=0)
    parser.add_argument(
        "--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="judging budget"
    )
    parser.add_argument("--swap", action="store_true", help="judge both orders when evaluating")
    parser.add_argument("--home", default=None, help="data directory (default: a temp dir)")
    parser.add_argument("--out", default=None, help="default: bench_retrain_loop_<method>.json")
    return parser.parse_args()


def matmul_peak_flops(size: int = 1024, seconds: float = 3.0) -> dict[str, float]:
    """This CPU's measured matmul throughput (FLOP/s) in fp32 and bf16."""
    import torch

    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        torch.matmul(a, b)  # warm-up
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            torch.matmul(a, b)
            runs += 1
        peaks[name] = 2 * size**3 * runs / (time.perf_counter() - started)
    return peaks


def import_labeled(services: Services, name: str, limit: int | None, work: Path) -> int:
    """Import the first `limit` pairs of a set and label each with its human label."""
    source = LLMBAR / f"{name}.jsonl"
    lines = source.read_text(encoding="utf-8").splitlines()[:limit]
    subset = work / f"{name}.jsonl"
    subset.write_text("\n".join(lines) + "\n", encoding="utf-8")
    services.import_file(subset, dataset=name, format="llmbar")
    labeled = 0
    for pair in dataset_pairs(services, name):
        services.save_label(pair.id, ANNOTATOR, pair.gold_label)
        labeled += 1
    return labeled


def dataset_pairs(services: Services, name: str) -> list[queries.PairView]:
    with services.sessions.begin() as s:
        dataset_id = queries.dataset_id(s, name)
        pending = queries.pending_pairs(s, None, "__none__", dataset_id=dataset_id)
    return [p for p in pending if p.gold_label in ("A", "B")]


def evaluate_on(services: Services, version: dict, pairs: list, options: JudgeOptions) -> dict:
    """A version's figures on the evaluation pairs against their gold labels."""
    from judges.backends import make_backend

    chosen = services.settings.model_copy(update={"judge_backend": "transformers"})
    extra = {"adapter_path": version["adapter_path"]} if version["adapter_path"] else {}
    backend = make_backend(chosen, **extra)
    try:
        inputs = [PairInput(p.prompt, p.response_a, p.response_b, pair_id=p.id) for p in pairs]
        report = evaluate_judge(backend, inputs, [p.gold_label for p in pairs], options)
    finally:
        backend.close()
    report.pop("per_pair", None)
    return report


def training_flops(result: dict, config: TrainConfig, n_params: int) -> float | None:
    """Estimated training FLOPs of a LoRA run: 4·N per token (forward 2N, activation gradients
    2N; LoRA weight gradients are negligible), plus 2·N per token for DPO's reference forward,
    with sequences at most max_prompt_tokens + max_target_tokens long (an upper bound).

    None for the verdict method and for every weight: its prompts are the judge's own, not cut
    to max_prompt_tokens, so there is no such bound (bench_train_step measures its steps)."""
    if config.method == TrainingMethod.VERDICT or config.weights == TrainedWeights.FULL:
        return None
    sequences = result["steps"] * config.batch_size * config.gradient_accumulation_steps
    per_token = 4 * n_params
    if config.method != TrainingMethod.SFT:
        sequences *= 2  # chosen and rejected
        per_token += 2 * n_params  # the reference model's forward
    return float(sequences * (config.max_prompt_tokens + config.max_target_tokens) * per_token)


def training_figures(services: Services, config: TrainConfig, result: dict) -> dict:
    """The run's training figures, with its estimated FLOP/s against this machine's peak."""
    peaks = matmul_peak_flops()
    flops = training_flops(result, config, n_params=_param_count(services))
    achieved = flops / result["runtime_s"] if flops and result["runtime_s"] else None
    peak = peaks["bf16" if result["bf16"] else "fp32"]
    return {
        "method": config.method,
        "steps": result["steps"],
        "train_examples": result["train_examples"],
        "examples_per_s": result["examples_per_s"],
        "runtime_s": result["runtime_s"],
        "bf16": result["bf16"],
        "data_stats": result["data_stats"],
        "estimated_flops": flops,
        "flops_per_s": achieved,
        "matmul_peak_flops_per_s": peaks,
        "share_of_peak": achieved / peak if achieved else None,
    }


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    home = Path(args.home or tempfile.mkdtemp(prefix="grm-bench-retrain-"))
    services = Services.open(load_settings(home=home, database_url=None))
    options = JudgeOptions(max_new_tokens=args.max_new_tokens, swap=args.swap)
    services.judge.options = options
    timings: dict[str, float] = {}
    started = time.perf_counter()

    labeled = {name: import_labeled(services, name, args.train_limit, home) for name in TRAIN_SETS}
    services.import_file(_subset(EVAL_SET, args.eval_limit, home), EVAL_SET, format="llmbar")
    timings["import_s"] = time.perf_counter() - started

    config = config_from_args(args)
    mark = time.perf_counter()
    # The verdict method trains on the labels alone; the others read the judge's judgments.
    if config.method != TrainingMethod.VERDICT:
        for name in TRAIN_SETS:
            report = services.judge_pending(dataset=name, options=options)
            print(f"judged {name}: {report.judged} pairs in {report.seconds:.0f} s", flush=True)
    timings["judge_s"] = time.perf_counter() - mark
    services.reload_judge()  # free the model before the worker loads its own

    mark = time.perf_counter()
    run = watch_run(services, services.start_training_run(config), every_s=5)
    timings["train_run_s"] = time.perf_counter() - mark
    if run["status"] != "done":
        print(f"run {run['id']} {run['status']}: {run['error']}", file=sys.stderr)
        return 1
    new = next(v for v in services.versions() if v["training_run_id"] == run["id"])
    base = next(v for v in services.versions() if v["id"] == new["parent_id"])

    mark = time.perf_counter()
    eval_pairs = dataset_pairs(services, EVAL_SET)
    # Judged as the run judged its own held-out pairs (the verdict method: its verdict alone).
    eval_options = evaluation_options(config, options)
    before = evaluate_on(services, base, eval_pairs, eval_options)
    after = evaluate_on(services, new, eval_pairs, eval_options)
    timings["evaluate_s"] = time.perf_counter() - mark
    timings["wall_s"] = time.perf_counter() - started

    summary = {
        "config": vars(args),
        "labels": labeled,
        "eval_pairs": len(eval_pairs),
        "timings": timings,
        "training": training_figures(services, config, run["progress"]["result"]),
        "heldout_before": _short(run["metrics_before"]),
        "heldout_after": _short(run["metrics_after"]),
        # As the Retrain tab shows it: McNemar's p and the paired bootstrap interval.
        "heldout_paired": (new["metrics"] or {}).get("paired"),
        "llmbar_natural_before": before,
        "llmbar_natural_after": after,
    }
    _print_table(summary, before, after)
    # One file per method, so a run never replaces another method's figures.
    out = Path(args.out or RESULTS / f"bench_retrain_loop_{config.method}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=str))
    print(f"saved {out}")
    return 0


def _subset(name: str, limit: int | None, work: Path) -> Path:
    lines = (LLMBAR / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()[:limit]
    path = work / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _param_count(services: Services) -> int:
    from transformers import AutoConfig

    from judges.embedded import resolve_model_path

    config = AutoConfig.from_pretrained(str(resolve_model_path(services.settings)))
    hidden, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    mlp = config.intermediate_size
    kv = hidden * config.num_key_value_heads // config.num_attention_heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * mlp
    return layers * per_layer + vocab * hidden  # the tied embedding as the output layer


def _short(metrics: dict | None) -> dict | None:
    return {k: v for k, v in (metrics or {}).items() if k != "per_pair"} or None


def _print_table(summary: dict, before: dict, after: dict) -> None:
    print(f"\nLLMBar_Natural ({summary['eval_pairs']} pairs), base vs retrained")
    for row in metric_rows(before, after):
        print(f"  {row['figure']:24}{row['before']:>18}{row['after']:>18}")
    paired = summary["heldout_paired"] or {}
    print(
        f"held-out ({paired.get('n')} pairs): {paired.get('first_accuracy')} -> "
        f"{paired.get('second_accuracy')}, McNemar p = {paired.get('p_value')}"
    )
    t = summary["training"]
    share = f", ~{t['share_of_peak']:.1%} of matmul peak" if t["share_of_peak"] else ""
    print(
        f"training: {t['steps']} steps, {t['train_examples']} examples, "
        f"{t['examples_per_s']:.3f} examples/s{share}; wall {summary['timings']['wall_s']:.0f} s"
    )


if __name__ == "__main__":
    raise SystemExit(main())
