"""Judging LLMBar_Natural with swap from the command line, as a user does, on each local engine:
pairs/minute before (transformers, the old default) and after (llama.cpp, today's default; vLLM's
CPU build).

Run: .venv/bin/python benchmarks/bench_cli_judge.py [--engines transformers:20,llamacpp,vllm]
     [--merge]  (keeps the saved runs of the engines not run now)
An engine is `NAME[:PAIRS]`: without PAIRS it judges all 100 pairs, with it the first PAIRS (the
transformers engine would take about 14 min for all 100 here, so its rate is taken on fewer). Each
engine gets a fresh data directory: `grm import` of the set, then `grm judge --dataset natural
--swap` (batched jobs, as the Batch tab runs them), timed from the command's start (model load
included) and by the job's own clock. vLLM lives in .venv-vllm (`make install-vllm`), so its
`grm` is that venv's. Prints the figures and saves benchmarks/results/bench_cli_judge.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "llmbar" / "LLMBar_Natural.jsonl"
RESULTS = REPO / "benchmarks" / "results" / "bench_cli_judge.json"
GRM = {"vllm": REPO / ".venv-vllm" / "bin" / "grm"}  # every other engine: .venv's grm
# cli.cmd_judge's summary line
JUDGED = re.compile(
    r"judged (\d+) pairs \((\d+) judgments stored, (\d+) without a verdict\) in ([\d.]+) s"
)


def run_engine(engine: str, workdir: Path) -> dict:
    name, _, pairs = engine.partition(":")
    grm = str(GRM.get(name, REPO / ".venv" / "bin" / "grm"))
    env = {**os.environ, "GRM_HOME": str(workdir / name), "GRM_JUDGE_BACKEND": name}
    subprocess.run([grm, "import", str(DATA), "--dataset", "natural"], env=env, check=True)
    command = [grm, "judge", "--dataset", "natural", "--swap"]
    command += ["--limit", pairs] if pairs else []
    started = time.perf_counter()
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    print(done.stdout, end="")
    found = JUDGED.search(done.stdout)
    if found is None:
        raise SystemExit(f"{engine}: no summary line in grm judge's output:\n{done.stdout}")
    judged, stored, no_verdict, seconds = found.groups()
    judged, seconds = int(judged), float(seconds)
    return {
        "engine": name,
        "pairs": judged,
        "judgments": int(stored),
        "no_verdict": int(no_verdict),
        "job_seconds": round(seconds, 1),
        "command_seconds": round(wall, 1),
        "pairs_per_min": round(60 * judged / seconds, 2),
        "pairs_per_min_with_load": round(60 * judged / wall, 2),
    }


def saved_runs(engines: str) -> list[dict]:
    """The runs saved before, of the engines not in `engines`."""
    if not RESULTS.exists():
        return []
    names = {engine.partition(":")[0] for engine in engines.split(",")}
    return [run for run in json.loads(RESULTS.read_text())["runs"] if run["engine"] not in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="transformers:20,llamacpp,vllm")
    parser.add_argument(
        "--merge", action="store_true", help="keep the saved runs of the engines not run now"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    runs = saved_runs(args.engines) if args.merge else []
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines.split(","):
            run = run_engine(engine, Path(tmp))
            runs.append({**run, "load_average_after": os.getloadavg()})
            print(json.dumps(run), flush=True)
    report = {
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor()},
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "dataset": DATA.name,
        "runs": runs,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    for run in runs:
        print(
            f"{run['engine']:>12}: {run['pairs_per_min']:6.2f} pairs/min ({run['pairs']} pairs, "
            f"{run['judgments']} judgments, {run['no_verdict']} without a verdict, "
            f"{run['job_seconds']} s; {run['command_seconds']} s with load)"
        )
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
