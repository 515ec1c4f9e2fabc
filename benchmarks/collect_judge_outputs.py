"""Collect real outputs of the judge model as draft rows for the parser's table of test cases.

    .venv/bin/python benchmarks/collect_judge_outputs.py --pairs 6 --max-new-tokens 200

Judges LLMBar pairs (read in place from ../shared/data/llmbar/) with every protocol, greedy and
sampled, through the configured backend (the embedded SmolLM2-135M-Instruct by default), and
writes one JSON line per generation in the format of tests/data/judge_outputs.jsonl, with the
expected fields filled from today's parser. They are drafts: a person reads each output, corrects
`verdict`, `status`, `scores`/`answer` and `sections` where the parse is wrong, and appends the
rows to tests/data/judge_outputs.jsonl (origin "smollm2-135m"). Prints the status counts.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from judges.backends import make_backend
from judges.backends.base import GenerationOptions
from judges.parsing import ParseState, parse
from judges.protocols import get_protocol
from judges.types import PairInput
from settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
LLMBAR = ROOT.parent / "shared" / "data" / "llmbar"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "judge_outputs_raw.jsonl"
SNIPPET = 40  # characters of each section kept as the expected substring


def load_pairs(name: str, start: int, count: int) -> list[tuple[str, PairInput]]:
    with open(LLMBAR / f"{name}.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle][start : start + count]
    return [
        (f"{name} #{start + i}", PairInput(r["input"], r["output_1"], r["output_2"]))
        for i, r in enumerate(rows)
    ]


def draft_row(protocol: str, text: str, finish_reason: str, note: str) -> dict:
    """A table row whose expectations are what the parser says now (to be checked by a person)."""
    state: ParseState = parse(protocol, text, finish_reason)
    row = {
        "protocol": protocol,
        "text": text,
        "finish_reason": finish_reason,
        "verdict": state.verdict.value,
        "status": state.status.value if state.status else None,
        "sections": {
            name: (getattr(state, name)[:SNIPPET] or None)
            for name in ("principles", "critique", "verdict_text")
        },
        "origin": "smollm2-135m",
        "note": note,
    }
    if protocol == "pointwise":
        row["scores"] = list(state.scores) if state.scores else None
    if protocol == "verifier":
        row["answer"] = {True: "yes", False: "no", None: None}[state.answer]
    return row


def collect(backend, pairs, protocols, temperatures, max_new_tokens: int, seed: int) -> list[dict]:
    rows = []
    for protocol_name in protocols:
        protocol = get_protocol(protocol_name)
        for temperature in temperatures:
            requests = [
                (f"{where}, {protocol_name}, T={temperature}, call {i}", messages)
                for where, pair in pairs
                for i, messages in enumerate(protocol.conversations(pair))
            ]
            options = GenerationOptions(
                max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
            )
            started = time.perf_counter()
            generations = backend.generate_batch([m for _, m in requests], options)
            print(
                f"{protocol_name} T={temperature}: {len(requests)} generations "
                f"in {time.perf_counter() - started:.0f} s",
                flush=True,
            )
            for (note, _), generation in zip(requests, generations, strict=True):
                rows.append(
                    draft_row(protocol_name, generation.text, generation.finish_reason, note)
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="LLMBar_Natural", help="LLMBar file name without .jsonl")
    parser.add_argument("--start", type=int, default=0, help="first pair of the set")
    parser.add_argument("--pairs", type=int, default=6, help="pairs per protocol")
    parser.add_argument("--protocols", nargs="+", default=["pairwise", "pointwise", "verifier"])
    parser.add_argument("--temperatures", nargs="+", type=float, default=[0.0, 0.7])
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    backend = make_backend(load_settings())
    pairs = load_pairs(args.set, args.start, args.pairs)
    rows = collect(
        backend, pairs, args.protocols, args.temperatures, args.max_new_tokens, args.seed
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    counts = Counter((r["protocol"], r["status"]) for r in rows)
    for (protocol, status), count in sorted(counts.items()):
        print(f"{protocol:10s} {status:11s} {count}")
    print(f"wrote {len(rows)} draft rows to {args.out}")


if __name__ == "__main__":
    main()
