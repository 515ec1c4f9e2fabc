"""Storage speed: import rate, concurrent label saves, and next-item latency at 1k vs 100k pairs.

Run: .venv/bin/python benchmarks/bench_storage.py [--pairs 100000] [--threads 8]
Prints the figures and saves them to benchmarks/results/bench_storage.json. Databases are
SQLite files in a temporary directory (the same engine set-up the app uses: WAL,
synchronous=FULL, BEGIN IMMEDIATE for writes); nothing is left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import insert, select  # noqa: E402

from services.labeling import Labeling  # noqa: E402
from storage import queries as q  # noqa: E402
from storage.db import open_database, reading  # noqa: E402
from storage.importer import import_file  # noqa: E402
from storage.models import Label, Pair, utcnow  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "bench_storage.json"
CATEGORIES = ("chat", "reasoning", "coding", "safety", "instruction-following")


def write_pairs_jsonl(path: Path, count: int) -> None:
    """`count` distinct generated pairs in the `pairs` format (about 400 bytes each)."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            row = {
                "id": f"gen-{i}",
                "prompt": f"Question {i}: explain why the sky looks blue at noon but red at dusk.",
                "response_a": f"Answer A {i}: Rayleigh scattering favours short wavelengths; "
                "at dusk light crosses more air, so blue is scattered away and red remains.",
                "response_b": f"Answer B {i}: The sky reflects the ocean, which is blue; at "
                "dusk the sun is closer to the sea and heats it red.",
                "label": "A",
                "category": CATEGORIES[i % len(CATEGORIES)],
            }
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def bench_import(workdir: Path, count: int, name: str) -> tuple[dict, tuple]:
    """Import `count` generated pairs through storage.importer.import_file into a new DB."""
    source = workdir / f"{name}.jsonl"
    write_pairs_jsonl(source, count)
    engine, factory = open_database(f"sqlite:///{workdir / name}.sqlite3")
    start = time.perf_counter()
    report = import_file(factory, source, dataset=name, format="pairs")
    seconds = time.perf_counter() - start
    assert report.new == count, report
    figures = {
        "pairs": count,
        "seconds": round(seconds, 3),
        "pairs_per_s": round(count / seconds),
        "file_mb": round(source.stat().st_size / 1e6, 1),
        "path": "storage.importer.import_file (format=pairs, one transaction)",
    }
    source.unlink()
    return figures, (engine, factory)


def bench_label_saves(factory, threads: int, per_thread: int) -> dict:
    """`threads` annotators saving labels at once, one transaction per save (as the UI does)."""
    with factory.begin() as s:
        synchronous = s.connection().exec_driver_sql("PRAGMA synchronous").scalar()
        pair_ids = list(s.scalars(select(Pair.id).order_by(Pair.id).limit(per_thread)))
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def annotate(index: int) -> None:
        try:
            barrier.wait()
            for pair_id in pair_ids:
                t0 = time.perf_counter()
                with factory.begin() as s:
                    q.save_label(s, pair_id, f"bench-{index}", "AB"[pair_id % 2])
                latencies[index].append(time.perf_counter() - t0)
        except BaseException as exc:  # noqa: BLE001 - counted and reported
            errors.append(exc)

    workers = [threading.Thread(target=annotate, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - start
    flat = sorted(x for per in latencies for x in per)
    with factory.begin() as s:
        stored = sum(q.queue_counts(s, f"bench-{i}").done for i in range(threads))
    return {
        "threads": threads,
        "saves": len(flat),
        "stored": stored,
        "lost": threads * per_thread - stored,
        "errors": len(errors),
        "seconds": round(seconds, 3),
        "saves_per_s": round(len(flat) / seconds, 1),
        "latency_ms_p50": round(1000 * flat[len(flat) // 2], 2),
        "latency_ms_p99": round(1000 * flat[int(len(flat) * 0.99) - 1], 2),
        "pragma_synchronous": synchronous,  # 2 = FULL
        "journal_mode": "wal",
    }


def seed_labels(factory, annotator: str, count: int) -> None:
    """Give `annotator` labels on the first `count` pairs (bulk set-up, not what is timed)."""
    with factory.begin() as s:
        ids = list(s.scalars(select(Pair.id).order_by(Pair.id).limit(count)))
        now = utcnow()
        rows = [
            {
                "pair_id": i,
                "annotator": annotator,
                "verdict": "A",
                "created_at": now,
                "updated_at": now,
            }
            for i in ids
        ]
        if rows:
            s.execute(insert(Label), rows)


def time_next_pair(factory, annotator: str, repeats: int, dataset_id: int | None = None) -> dict:
    """Median and p95 of one UI step: open a read session and fetch the next pair."""
    timings = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with reading(factory) as s:
            view = q.next_pair(s, annotator, dataset_id)
        timings.append(time.perf_counter() - t0)
    assert view is not None
    timings.sort()
    return {
        "median_ms": round(1000 * statistics.median(timings), 3),
        "p95_ms": round(1000 * timings[int(len(timings) * 0.95) - 1], 3),
    }


def time_next_item(factory, annotator: str, repeats: int) -> dict:
    """The same step as people get it, through the labeling room: its first call (the walk
    from the start) and the median of the calls after it (the walk from its frontier)."""
    labels = Labeling(factory)
    t0 = time.perf_counter()
    first = labels.next_item(annotator)
    first_s = time.perf_counter() - t0
    timings = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        view = labels.next_item(annotator)
        timings.append(time.perf_counter() - t0)
    assert view is not None and view.id == first.id
    return {
        "first_call_ms": round(1000 * first_s, 3),
        "median_ms": round(1000 * statistics.median(timings), 3),
    }


def bench_next_pair(small, large, repeats: int, done: int, deep_done: int) -> dict:
    """next_pair at 1k vs 100k pairs, for a fresh annotator and one with `done` labels."""
    results: dict = {}
    for size_name, (_, factory) in (("small", small), ("large", large)):
        seed_labels(factory, "some-done", done)
        with factory.begin() as s:
            (dataset,) = q.list_datasets(s)
        results[size_name] = {
            "pairs": dataset.pair_count,
            "fresh_annotator": time_next_pair(factory, "fresh", repeats),
            f"annotator_with_{done}_done": time_next_pair(factory, "some-done", repeats),
            "fresh_annotator_dataset_filter": time_next_pair(factory, "fresh", repeats, dataset.id),
        }
    ratio = {
        key: round(results["large"][key]["median_ms"] / results["small"][key]["median_ms"], 2)
        for key in results["small"]
        if key != "pairs"
    }
    # The queue walks pair ids from the lowest, probing the (pair, annotator) index: its cost
    # grows with how far this annotator has got, not with the table. Measured, not hidden.
    seed_labels(large[1], "deep", deep_done)
    deep = time_next_pair(large[1], "deep", max(10, repeats // 10))
    service = {
        "annotator_with_0_done": time_next_item(large[1], "fresh", repeats),
        f"annotator_with_{deep_done}_done": time_next_item(large[1], "deep", repeats),
    }
    zero, many = service.values()
    service["ratio_deep_over_zero"] = round(many["median_ms"] / zero["median_ms"], 2)
    return {
        **results,
        "ratio_large_over_small": ratio,
        f"large_annotator_with_{deep_done}_done": deep,
        "labeling_room_large": service,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000, help="pairs in the large database")
    parser.add_argument("--small-pairs", type=int, default=1_000, help="pairs in the small one")
    parser.add_argument("--threads", type=int, default=8, help="concurrent annotators")
    parser.add_argument("--saves-per-thread", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=300, help="next_pair calls timed per case")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="grm-bench-") as tmp:
        workdir = Path(tmp)
        print(f"importing {args.pairs} generated pairs ...", flush=True)
        import_figures, large = bench_import(workdir, args.pairs, "large")
        print(json.dumps(import_figures), flush=True)
        _, small = bench_import(workdir, args.small_pairs, "small")
        print("next item latency ...", flush=True)
        next_figures = bench_next_pair(small, large, args.repeats, 500, args.pairs // 2)
        print(json.dumps(next_figures, indent=1), flush=True)
        print(f"label saves, {args.threads} threads ...", flush=True)
        save_figures = bench_label_saves(large[1], args.threads, args.saves_per_thread)
        print(json.dumps(save_figures), flush=True)
        for engine, _ in (large, small):
            engine.dispose()

    results = {
        "benchmark": "bench_storage",
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "note": "shared CPU (other jobs running); SQLite file in the system temp dir",
        },
        "import": import_figures,
        "label_saves": save_figures,
        "next_pair": next_figures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
