"""Judge speed on this machine, every local engine side by side in one run: time to first
token, decode tokens/s at batch 1, prefill of a ~500-token prompt, pairs/minute sequential vs
batched.

Run: .venv/bin/python benchmarks/bench_judge_speed.py [--pairs 8] [--max-new-tokens 192]
     [--rounds 2] [--engines transformers:float32,transformers:bfloat16,llamacpp,vllm:2]
Engines: `transformers:DTYPE` (the transformers backend on the embedded model converted to
safetensors), `llamacpp[:THREADS]` (llama.cpp on the embedded GGUF as the app runs it: a
BF16 copy on a CPU with native bf16, else the shipped file; THREADS decode and every core
reads a prompt, as in the app, which names cores - 1; without THREADS it measures its own,
as `grm judge` does), `llamacpp-shipped[:THREADS]` (the Q4_1 file as the wheel ships it),
`llamacpp-q8[:THREADS]` (a Q8_0 copy of it, made once: a candidate for the app's copy)
and `vllm[:THREADS]` (vLLM's CPU build on the same safetensors, in bf16 with its compiled
graphs; without THREADS its worker leaves a core free for the engine's own loop, as vLLM does
by default; it lives in .venv-vllm, `make install-vllm`, so this script runs itself there for
that engine and takes its figures into the same report).
An engine name ending in `+lora` judges with an adapter shaped like retraining's (rank 16 on
every linear layer) applied as LoRA; `vllm+merged` loads it merged into the weights, as the app
does on vLLM's CPU build (its load time then includes the merge).
Judge prompts are the real pairwise prompt (judges.prompts) over the demo pairs shipped in
assets/. Greedy decoding; sequential = one pair per call, batched = all pairs in batches of
`--batch-size` (each engine's own batching: llama.cpp decodes a batch together in a second
context, one token of each sequence per step; vLLM schedules them continuously). Prints
the figures and saves them to benchmarks/results/bench_judge_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from assets import asset_path  # noqa: E402
from judges.backends.base import Generation, GenerationOptions, Messages  # noqa: E402
from judges.embedded import ensure_embedded_model  # noqa: E402
from judges.prompts import get_prompt  # noqa: E402
from settings import load_settings  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "bench_judge_speed.json"
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"  # made by `make install-vllm`
DEMO_PAIRS = asset_path("demo_pairs.jsonl")


@dataclass
class SpeedConfig:
    pairs: int = 8  # judged sequentially and then batched
    batch_size: int = 8
    max_new_tokens: int = 192
    ttft_runs: int = 3  # streamed single pairs for time to first token / decode speed
    rounds: int = 2  # sequential and batched alternate, so both see the same machine load
    engines: tuple[str, ...] = (
        "transformers:float32",
        "transformers:bfloat16",
        "llamacpp",
        "llamacpp-shipped",
        "llamacpp:2",
        "llamacpp:1",
        "vllm",
        "vllm:2",
    )
    full_engines: tuple[str, ...] = (
        "transformers:float32",
        "llamacpp",
        "llamacpp-shipped",
        "vllm",
        "vllm:2",
    )
    model_dir: str | None = None
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    output: str = str(RESULTS)


def judge_messages(count: int) -> list[Messages]:
    """Pairwise judge prompts over the demo pairs (repeated if more are asked for)."""
    rows = [json.loads(line) for line in DEMO_PAIRS.read_text().splitlines() if line.strip()]
    template = get_prompt("pairwise")
    return [
        template.render(row["prompt"], response_a=row["response_a"], response_b=row["response_b"])
        for row in (rows[i % len(rows)] for i in range(count))
    ]


def measure_stream(backend, messages: Messages, options: GenerationOptions) -> dict:
    """Time to first piece and decode speed after it, for one streamed answer."""
    start = time.perf_counter()
    first = None
    summary: Generation | None = None
    for item in backend.stream(messages, options):
        if isinstance(item, Generation):
            summary = item
        elif first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    decode_tokens = max(summary.completion_tokens - 1, 0)
    return {
        "ttft_s": first - start,
        "decode_tokens_per_s": decode_tokens / (end - first) if end > first else 0.0,
        "prompt_tokens": summary.prompt_tokens,
        "completion_tokens": summary.completion_tokens,
    }


def measure_throughput(backend, conversations: list[Messages], options, batched: bool) -> dict:
    start = time.perf_counter()
    if batched:
        results = backend.generate_batch(conversations, options)
    else:
        results = [backend.generate_batch([c], options)[0] for c in conversations]
    seconds = time.perf_counter() - start
    tokens = sum(r.completion_tokens for r in results)
    return {
        "seconds": round(seconds, 2),
        "pairs_per_minute": round(60 * len(conversations) / seconds, 2),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 2),
        "texts": [r.text for r in results],
    }


def compare_throughput(backend, conversations, options, rounds: int) -> dict:
    """Sequential vs batched in alternating rounds (A B, B A, ...); medians and their ratio."""
    runs: dict[str, list[dict]] = {"sequential": [], "batched": []}
    for index in range(rounds):
        modes = ["sequential", "batched"] if index % 2 == 0 else ["batched", "sequential"]
        for mode in modes:
            run = measure_throughput(backend, conversations, options, batched=mode == "batched")
            run["load_average_1m"] = round(os.getloadavg()[0], 2)
            runs[mode].append(run)
            print(f"  round {index + 1} {mode}: {run['seconds']}s", flush=True)
    texts = {tuple(run.pop("texts")) for mode in runs.values() for run in mode}
    ratios = [
        b["pairs_per_minute"] / s["pairs_per_minute"]
        for s, b in zip(runs["sequential"], runs["batched"], strict=True)
    ]
    return {
        "same_texts_batched_and_sequential": len(texts) == 1,
        "sequential": _median_run(runs["sequential"]),
        "batched": _median_run(runs["batched"]),
        "batched_over_sequential": round(statistics.median(ratios), 2),
        "rounds": runs,
    }


def _median_run(runs: list[dict]) -> dict:
    return {
        key: round(statistics.median(run[key] for run in runs), 2)
        for key in ("seconds", "pairs_per_minute", "tokens_per_s")
    } | {"completion_tokens": runs[0]["completion_tokens"]}


def load_engine(engine: str, model_dir: Path, config: SpeedConfig, adapter_dir: Path):
    spec, _, adapter = engine.partition("+")
    kind, _, arg = spec.partition(":")
    if adapter not in ADAPTER_FORMS:
        raise SystemExit(f"unknown adapter form {adapter!r} in {engine!r}: +lora or +merged")
    adapter_path = retraining_like_adapter(model_dir, adapter_dir) if adapter else None
    if kind == "transformers":
        from judges.backends.transformers_backend import TransformersBackend

        return TransformersBackend(
            model_dir, dtype=arg, max_batch_size=config.batch_size, adapter_path=adapter_path
        )
    if kind in ("llamacpp", "llamacpp-shipped", "llamacpp-q8"):
        from judges.backends.llamacpp_backend import (
            LlamaCppBackend,
            fastest_embedded_gguf,
            gguf_copy,
        )
        from judges.embedded import embedded_gguf_path

        gguf = embedded_gguf_path()  # llamacpp-shipped: the Q4_1 file as the wheel ships it
        if kind == "llamacpp":  # the file the app runs on this CPU
            gguf = fastest_embedded_gguf(gguf, load_settings().model_cache)
        if kind == "llamacpp-q8":  # a Q8_0 copy of the shipped file, made once
            gguf = gguf_copy(gguf, load_settings().model_cache, "q8_0")
        threads = int(arg or 0) or None
        return LlamaCppBackend(
            gguf,
            model_dir,
            threads,
            adapter_path=adapter_path,
            max_batch_size=config.batch_size,
        )
    if kind == "vllm":
        from judges.backends.vllm_backend import VLLMBackend

        if arg:  # vLLM's CPU worker keeps one core for itself unless told to leave fewer
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(
                max((os.cpu_count() or 1) - int(arg), 0)
            )

        return VLLMBackend(
            model_dir,
            max_batch_size=config.batch_size,
            max_model_len=4096,
            adapter_path=adapter_path,
            merge_adapter=adapter == "merged" if adapter else None,
        )
    raise SystemExit(
        f"unknown engine {engine!r}: transformers:DTYPE, llamacpp[-shipped|-q8]:THREADS or vllm"
    )


# An engine name may end in +lora (the adapter applied as LoRA) or +merged (vLLM: merged into
# the weights first, as the app does on vLLM's CPU build).
ADAPTER_FORMS = ("", "lora", "merged")


def retraining_like_adapter(model_dir: Path, out: Path) -> Path:
    """A LoRA adapter shaped like those retraining saves (rank 16, every linear layer), with
    non-zero weights; its values do not matter for speed, its shapes do."""
    if (out / "adapter_model.safetensors").is_file():
        return out
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.01)
    peft_model.save_pretrained(out)
    return out


def vllm_here() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def bench_in_vllm_venv(engine: str, model_dir: Path, config: SpeedConfig) -> dict:
    """This script run by .venv-vllm's Python for one engine; its one run, as measured there."""
    if not VLLM_PYTHON.exists():
        raise SystemExit(f"{engine}: {VLLM_PYTHON} is missing; run `make install-vllm` first")
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "vllm.json"
        options = {"--pairs": config.pairs, "--batch-size": config.batch_size,
                   "--max-new-tokens": config.max_new_tokens, "--ttft-runs": config.ttft_runs,
                   "--rounds": config.rounds, "--engines": engine, "--model-dir": model_dir,
                   "--full-engines": ",".join(config.full_engines), "--output": output}  # fmt: skip
        argv = [str(VLLM_PYTHON), __file__, *(str(x) for item in options.items() for x in item)]
        subprocess.run(argv, check=True)
        return json.loads(output.read_text())["runs"][0]


def measure_prefill(backend, messages: Messages, target_tokens: int = 500) -> dict:
    """Seconds to read a ~500-token prompt and give the next token's log-probs (nothing of it
    cached: each run's prompt differs from the last in its first words). The demo prompt is
    lengthened to about `target_tokens` with more of its own text."""
    tokens = measure_stream(backend, messages, GenerationOptions(max_new_tokens=1))
    user = messages[-1]["content"]
    extra = max(0, int(len(user) * (target_tokens / tokens["prompt_tokens"] - 1)))
    longer = [*messages[:-1], {**messages[-1], "content": user + "\n" + (user * 2)[:extra]}]
    seconds = []
    for run in range(3):
        fresh = [{"role": "system", "content": f"Run {run}. {longer[0]['content']}"}]
        fresh += longer[1:]
        start = time.perf_counter()
        backend.next_token_logprobs([(fresh, "")], top_k=5)
        seconds.append(time.perf_counter() - start)
    tokens = measure_stream(backend, longer, GenerationOptions(max_new_tokens=1))
    return {
        "prefill_s": round(statistics.median(seconds), 3),
        "prefill_tokens": tokens["prompt_tokens"],
    }


def bench_engine(engine: str, model_dir: Path, config: SpeedConfig) -> dict:
    if engine.startswith("vllm") and not vllm_here():
        return bench_in_vllm_venv(engine, model_dir, config)
    with tempfile.TemporaryDirectory(prefix="grm-bench-adapter-") as adapter_dir:
        backend = load_engine(engine, model_dir, config, Path(adapter_dir))
        return bench_loaded(engine, backend, config)


def bench_loaded(engine: str, backend, config: SpeedConfig) -> dict:
    options = GenerationOptions(max_new_tokens=config.max_new_tokens)
    conversations = judge_messages(config.pairs)
    backend.generate_batch(conversations[:1], GenerationOptions(max_new_tokens=4))  # warm-up
    print(f"{engine}: loaded in {backend.load_seconds:.1f}s; streaming", flush=True)
    streams = [measure_stream(backend, m, options) for m in conversations[: config.ttft_runs]]
    figures = {
        "engine": engine,
        "threads": list(getattr(backend, "threads", ()) or ()),
        "load_s": round(backend.load_seconds, 2),
        "ttft_s": round(statistics.median(s["ttft_s"] for s in streams), 3),
        "decode_tokens_per_s_batch1": round(
            statistics.median(s["decode_tokens_per_s"] for s in streams), 2
        ),
        "prompt_tokens_median": statistics.median(s["prompt_tokens"] for s in streams),
        **measure_prefill(backend, judge_messages(1)[0]),
    }
    if engine in config.full_engines:
        print(f"{engine}: {streams}; throughput rounds", flush=True)
        figures.update(compare_throughput(backend, conversations, options, config.rounds))
    backend.close()
    return figures


def main(config: SpeedConfig) -> dict:
    # The backend module sets OpenMP's wait policy before torch loads: take torch from it.
    from judges.backends import transformers_backend

    torch = transformers_backend.torch
    if config.threads:
        torch.set_num_threads(config.threads)

    model_dir = Path(config.model_dir or ensure_embedded_model(load_settings().model_cache))
    runs = [bench_engine(engine, model_dir, config) for engine in config.engines]
    report = {
        "benchmark": "bench_judge_speed",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        "model": model_dir.name,
        "config": asdict(config),
        "runs": runs,
    }
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    return report


def print_report(report: dict) -> None:
    print(f"model {report['model']}  machine {report['machine']}")
    for run in report["runs"]:
        print(
            f"{run['engine']:>22}: load {run['load_s']}s  TTFT {run['ttft_s']}s "
            f"(prompt ~{run['prompt_tokens_median']} tokens)  "
            f"decode {run['decode_tokens_per_s_batch1']} tokens/s at batch 1  "
            f"prefill {run['prefill_tokens']} tokens {run['prefill_s']}s"
        )
        if "batched" in run:
            seq, bat = run["sequential"], run["batched"]
            print(
                f"{'':>22}  sequential {seq['pairs_per_minute']} pairs/min "
                f"({seq['tokens_per_s']} tok/s)  batched {bat['pairs_per_minute']} pairs/min "
                f"({bat['tokens_per_s']} tok/s)  ratio {run['batched_over_sequential']}x  "
                f"same texts: {run['same_texts_batched_and_sequential']}"
            )
    print(f"saved {report['config']['output']}")


def parse_args(argv: list[str] | None = None) -> SpeedConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=SpeedConfig.pairs)
    parser.add_argument("--batch-size", type=int, default=SpeedConfig.batch_size)
    parser.add_argument("--max-new-tokens", type=int, default=SpeedConfig.max_new_tokens)
    parser.add_argument("--ttft-runs", type=int, default=SpeedConfig.ttft_runs)
    parser.add_argument("--rounds", type=int, default=SpeedConfig.rounds)
    parser.add_argument("--engines", default=",".join(SpeedConfig.engines))
    parser.add_argument(
        "--full-engines",
        default=",".join(SpeedConfig.full_engines),
        help="engines that also get the sequential vs batched throughput runs",
    )
    parser.add_argument("--model-dir", default=None, help="default: the embedded model")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    return SpeedConfig(
        pairs=args.pairs,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        ttft_runs=args.ttft_runs,
        rounds=args.rounds,
        engines=tuple(args.engines.split(",")),
        full_engines=tuple(args.full_engines.split(",")),
        model_dir=args.model_dir,
        threads=args.threads,
        output=args.output,
    )


if __name__ == "__main__":
    main(parse_args())
