"""How close one `verdict` training step comes to this CPU's matmul peak, by where LoRA sits.

    .venv/bin/python benchmarks/bench_train_step.py [--full] [--blocks 30 10 6] [--batches 6]

Measures the machine's bf16 (or fp32, as training would choose) matmul peak with a 2048 x 2048
product, then times training steps of the product's `verdict` method on the embedded judge:
the model and LoRA as `judges.verdict_training` builds them (rank 16 / alpha 32, every linear
layer of the last N blocks), its left-padded batches of 8 real verdict prompts from the pooled
human-labeled sets (../shared/data/llmbar, sorted by length as group_by_length does), forward
with logits at the verdict position only, backward, AdamW step. The first batch warms up and is
not counted.

Share of peak counts the matmul work a step must do: 2 x (parameters of the transformer blocks)
per token forward, and twice that again backward through the blocks that carry LoRA (the
gradient of each input; LoRA's own weight gradients are small); with --full, every weight
trained as the product's default does, the weight gradients of every block once more. Prints
and saves benchmarks/results/bench_train_step.json.
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
    verdict_logits,
    verdict_model,
    verdict_rows,
)
from settings import load_settings  # noqa: E402

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


def trained_model(base: Path, blocks: int | None, bf16: bool):
    """The verdict method's model: LoRA on the last `blocks` blocks, or (None) every weight,
    whose fp32 weights compute under bf16 autocast where bf16 is chosen, as the Trainer runs it."""
    import torch

    weights = "full" if blocks is None else "lora"
    config = TrainConfig(method="verdict", weights=weights, lora_layers=blocks).resolved()
    # LoRA computes in bf16 inside verdict_logits (`_lora_in_base_dtype`) already.
    full_bf16 = bf16 and blocks is None
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if full_bf16 else contextlib.nullcontext()
    )
    return config, verdict_model(config, base, None, bf16), autocast


def time_steps(base: Path, rows: list[dict], tokenizer, blocks: int | None, bf16: bool) -> dict:
    import torch

    config, model, autocast = trained_model(base, blocks, bf16)
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
    # gradients of every block.
    weight_grads = 1 if blocks is None else 0
    flops_per_token = 2 * block_params * (1 + 2 * trained / total_blocks + weight_grads)
    tokens_per_s = tokens / sum(seconds)
    return {
        "weights": config.weights,
        "lora_blocks": None if blocks is None else trained,
        "examples_per_s": round(BATCH * len(seconds) / sum(seconds), 3),
        "tokens_per_s": round(tokens_per_s, 1),
        "step_s_median": round(statistics.median(seconds), 3),
        "gflops": round(tokens_per_s * flops_per_token / 1e9, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="*", default=[30, 10, 6])
    parser.add_argument(
        "--full", action="store_true", help="also every weight (the product's default)"
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
    sample.sort(key=lambda row: len(row["input_ids"]))  # like lengths per batch
    runs = []
    for blocks in [None] * args.full + args.blocks:
        run = time_steps(base, sample, tokenizer, blocks, bf16)
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
