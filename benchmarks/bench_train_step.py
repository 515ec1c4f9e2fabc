"""How close one `verdict` training step comes to this CPU's matmul peak, by what it trains.

    .venv/bin/python benchmarks/bench_train_step.py [--full-blocks 0 15] [--blocks 30 10 6]
        [--batches 6]

Measures the machine's bf16 (or fp32, as training would choose) matmul peak with a 2048 x 2048
product, then times training steps of the product's `verdict` method on the embedded judge:
the model as `judges.verdict_training` builds it, with LoRA (rank 16 / alpha 32, every linear
layer of the last N blocks, --blocks) or every weight of the last N blocks (--full-blocks; 0:
every block), on its left-padded batches of 8 real verdict prompts from the pooled
human-labeled sets (../shared/data/llmbar), longest first as the Trainer's length-grouped
sampler reads them (so later, shorter steps reuse memory the first one took, and do not pay
page faults the product's runs do not), forward with logits at the verdict position only,
backward, AdamW step. The first batch warms up and is not counted.

Share of peak counts the matmul work a step must do, in units of 2 x (parameters of the
transformer blocks) per token: 1 forward, plus for each trained block its share of 1 for the
gradient of its input, and (every weight) 1 more for its weight gradients (LoRA's own are
small). Before 2026-12-05 this counted one unit too many (4 for every weight, 3 for LoRA on
every block), so the shares saved then read a third (LoRA: a half) high; and its batches grew
in length, so it under-reported examples/s. Prints and saves
benchmarks/results/bench_train_step.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_learning_curve import load, records, split_by_prompt  # noqa: E402

from judges.embedded import resolve_model_path  # noqa: E402
from judges.train import load_tokenizer, plan_run  # noqa: E402
from judges.train_config import TrainConfig  # noqa: E402
from judges.trainer import use_bf16  # noqa: E402
from judges.verdict_training import (  # noqa: E402
    _LeftPadding,
    autocasts,
    verdict_logits,
    verdict_model,
    verdict_rows,
)
from settings import load_settings  # noqa: E402
from vocabulary import TrainedWeights  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_train_step.json"
SETS = ("Processed_MT-Bench", "Processed_LLMEval_2", "Processed_FairEval")
BATCH = 8


def matmul_peak_gflops(bf16: bool, size: int = 2048, runs: int = 20) -> float:
    import torch

    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(runs):
        a @ b
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e9


def training_rows(base: Path) -> tuple[list[dict], object]:
    pool = [row for name in SETS for row in load(name)]
    train_pool, _ = split_by_prompt(pool, 150, 0)  # the curve's training side
    tokenizer = load_tokenizer(base)
    config = TrainConfig(method="verdict", heldout_share=1 / len(train_pool), min_labels=2)
    plan = plan_run(config, records(train_pool))
    return verdict_rows(plan.training_side(), tokenizer, config), tokenizer


def trained_model(base: Path, weights: TrainedWeights, blocks: int | None, bf16: bool):
    """The verdict method's model: LoRA, or every weight (fp32 weights computing under bf16
    autocast where bf16 is chosen, as the Trainer runs it), on the last `blocks` blocks (None:
    all)."""
    import torch

    config = TrainConfig(method="verdict", weights=weights, trained_layers=blocks).resolved()
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if autocasts(config, bf16)
        else contextlib.nullcontext()
    )
    return config, verdict_model(config, base, None, bf16), autocast


def time_steps(
    base: Path, rows: list[dict], tokenizer, weights: TrainedWeights, blocks: int | None, bf16: bool
) -> dict:
    import torch

    config, model, autocast = trained_model(base, weights, blocks, bf16)
    block_params = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate)
    collate = _LeftPadding(tokenizer.pad_token_id)
    seconds, tokens = [], 0
    for index in range(0, len(rows), BATCH):
        batch = collate(rows[index : index + BATCH])
        labels = batch.pop("labels")
        start = time.perf_counter()
        with autocast:
            loss = torch.nn.functional.cross_entropy(verdict_logits(model, batch), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if index:  # the first batch warms up
            seconds.append(time.perf_counter() - start)
            tokens += batch["input_ids"].numel()
    total_blocks = model.config.num_hidden_layers
    trained = total_blocks if blocks is None else min(blocks, total_blocks)
    # Forward, the input gradients through the trained blocks, and (every weight) the weight
    # gradients of the trained blocks.
    backward = (2 if weights == TrainedWeights.FULL else 1) * trained / total_blocks
    flops_per_token = 2 * block_params * (1 + backward)
    tokens_per_s = tokens / sum(seconds)
    return {
        "weights": config.weights,
        "blocks": trained,
        "examples_per_s": round(BATCH * len(seconds) / sum(seconds), 3),
        "tokens_per_s": round(tokens_per_s, 1),
        "step_s_median": round(statistics.median(seconds), 3),
        "gflops": round(tokens_per_s * flops_per_token / 1e9, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--blocks", type=int, nargs="*", default=[30, 10, 6], help="LoRA on the last N blocks"
    )
    parser.add_argument(
        "--full-blocks",
        type=int,
        nargs="*",
        default=[],
        help="every weight of the last N blocks (0: of every block)",
    )
    parser.add_argument("--batches", type=int, default=6, help="batches of 8, the first warms up")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    import torch

    load_average = os.getloadavg()
    base = Path(resolve_model_path(load_settings()))
    bf16 = use_bf16("auto")
    peak = matmul_peak_gflops(bf16)
    rows, tokenizer = training_rows(base)
    lengths = sorted(len(r["input_ids"]) for r in rows)
    sample = random.Random(0).sample(rows, BATCH * args.batches)
    # Like lengths per batch, the longest first (the Trainer's group_by_length).
    sample.sort(key=lambda row: len(row["input_ids"]), reverse=True)
    runs = []
    plan = [(TrainedWeights.FULL, n or None) for n in args.full_blocks]
    plan += [(TrainedWeights.LORA, n) for n in args.blocks]
    for weights, blocks in plan:
        run = time_steps(base, sample, tokenizer, weights, blocks, bf16)
        run["share_of_peak"] = round(run["gflops"] / peak, 3)
        print(json.dumps(run), flush=True)
        runs.append(run)
    report = {
        "benchmark": "bench_train_step",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_at_start": load_average,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "bf16": bf16,
        "matmul_peak_gflops": round(peak, 1),
        "prompt_tokens": {"median": lengths[len(lengths) // 2], "max": lengths[-1]},
        "batch_size": BATCH,
        "runs": runs,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
