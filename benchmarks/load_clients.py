"""The simulated annotators of benchmarks/bench_load.py: one process each, saving labels through
gradio_client against the running app and logging every acknowledged save; then their logs read
back. Each process gets plain values only (it is spawned, not forked).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.bench_load import LoadConfig

ANNOTATOR_PREFIX = "load-"
LABELS = ("A", "B", "tie", "both_bad")  # never "skip": skips are not labels in labeled_records
SAVED = re.compile(r"Saved #(\d+): ([A-Za-z_]+)\.")
APP_START_TIMEOUT_S = 180.0  # also how long an annotator waits to sign in and to be started
ERROR_SAMPLES = 3  # example texts kept per error kind


# --- one simulated annotator (a process of its own) -----------------------------------------


@dataclass
class WorkerSpec:
    """What one annotator process needs; all plain values (sent to a spawned process)."""

    index: int
    url: str
    name: str
    judges: bool
    interval: float
    request_timeout: float
    log_dir: str
    seed: int


@dataclass
class WorkerReport:
    """What one annotator saw, written as JSON next to its ack log when it ends."""

    name: str
    attempted: dict[str, int] = field(default_factory=lambda: {"steady": 0, "burst": 0})
    errors: Counter = field(default_factory=Counter)
    error_samples: dict[str, list[str]] = field(default_factory=dict)
    judge_first_update_s: list[float] = field(default_factory=list)
    judge_first_text_s: list[float] = field(default_factory=list)
    judge_start_to_text_s: list[float] = field(default_factory=list)  # minus the lane wait
    judge_total_s: list[float] = field(default_factory=list)
    queue_ran_out: bool = False
    cpu_s: float = 0.0  # CPU time of this client process in the phases (client vs server cost)

    def error(self, kind: str, text: str) -> None:
        self.errors[kind] += 1
        samples = self.error_samples.setdefault(kind, [])
        if len(samples) < ERROR_SAMPLES:
            samples.append(text[:500])


def annotator_process(spec: WorkerSpec, ready: Any, go: Any, times: Any) -> None:
    """Sign in, tell the parent, wait for the start, then label through both phases."""
    from gradio_client import Client

    report = WorkerReport(spec.name)
    rng = random.Random(spec.seed)
    log_dir = Path(spec.log_dir)
    try:
        client = Client(spec.url, verbose=False, analytics_enabled=False, download_files=False)
        client.predict(spec.name, api_name="/set_annotator")
        client.predict(0, api_name="/next_pair")
    except Exception as exc:  # noqa: BLE001 - reported to the parent as this worker's error
        report.error("sign_in", f"{type(exc).__name__}: {exc}")
        ready.put(spec.name)
        _write_report(log_dir, report)
        return
    ready.put(spec.name)
    go.wait(timeout=APP_START_TIMEOUT_S)
    start, steady_end, burst_end = times[0], times[1], times[2]
    cpu_at_start = _own_cpu_seconds()
    with (log_dir / f"acks-{spec.name}.jsonl").open("a", encoding="utf-8") as acks:
        time.sleep(max(0.0, start - time.time()) + rng.uniform(0, spec.interval))
        while time.time() < steady_end and not report.queue_ran_out:
            tick = time.time()
            verdict_ready = spec.judges and judge_once(client, spec, report)
            kind = "agree" if verdict_ready else rng.choice(LABELS)
            save_once(client, kind, "steady", spec, report, acks)
            pause = spec.interval * rng.uniform(0.5, 1.5) - (time.time() - tick)
            time.sleep(max(0.0, min(pause, steady_end - time.time())))
        while time.time() < burst_end and not report.queue_ran_out:
            save_once(client, rng.choice(LABELS), "burst", spec, report, acks)
    with suppress(Exception):
        client.close()
    report.cpu_s = round(_own_cpu_seconds() - cpu_at_start, 2)
    _write_report(log_dir, report)


def save_once(
    client: Any, kind: str, phase: str, spec: WorkerSpec, report: WorkerReport, acks: Any
) -> None:
    """One label button press; an acknowledged save (the app said "Saved #id") is logged."""
    report.attempted[phase] += 1
    started, wall = time.perf_counter(), time.time()
    job = client.submit(0, "", "", api_name=f"/label_{kind}")
    try:
        screen = job.result(timeout=spec.request_timeout)
    except FutureTimeout:
        job.cancel()
        report.error("save_timeout", f"no answer in {spec.request_timeout:.0f} s")
        return
    except Exception as exc:  # noqa: BLE001 - any failure is counted by its kind
        report.error(f"save_{type(exc).__name__}", str(exc))
        return
    latency = time.perf_counter() - started
    status = str(screen[-1] or "")
    found = SAVED.search(status)
    if found is None:
        if "Nothing to label" in status:
            report.queue_ran_out = True
            report.error("queue_empty", status)
        elif "Not saved" in status:
            report.error("not_saved", status)
        else:
            report.error("save_unexpected_status", status)
        return
    ack = {
        "pair_id": int(found.group(1)),
        "annotator": spec.name,
        "label": found.group(2),
        "latency_s": round(latency, 5),
        "phase": phase,
        "at": wall,
    }
    acks.write(json.dumps(ack) + "\n")
    acks.flush()  # the log holds every ack even if this process dies right after


def judge_once(client: Any, spec: WorkerSpec, report: WorkerReport) -> bool:
    """Stream the judge on the pair on screen; True when it ended with a verdict to agree with.
    Polls the job's outputs (Job iteration busy-waits, which would steal the shared CPU)."""
    started = time.perf_counter()
    job = client.submit(api_name="/judge")
    first_update = first_text = None
    while not job.done():
        elapsed = time.perf_counter() - started
        outputs = job.outputs()
        if outputs and first_update is None:
            first_update = elapsed
        if first_text is None and any(_has_text(o[0] + o[1]) for o in outputs):
            first_text = elapsed
        if elapsed > spec.request_timeout:
            job.cancel()
            report.error("judge_timeout", f"no verdict in {spec.request_timeout:.0f} s")
            return False
        time.sleep(0.02)
    try:
        final = job.result(timeout=1)
    except Exception as exc:  # noqa: BLE001
        report.error(f"judge_{type(exc).__name__}", str(exc))
        return False
    total = time.perf_counter() - started
    outputs = job.outputs()
    if first_text is None and any(_has_text(o[0] + o[1]) for o in outputs):
        first_text = total  # the whole judgment arrived within one poll
    report.judge_first_update_s.append(round(first_update or total, 4))
    if first_text is not None:
        report.judge_first_text_s.append(round(first_text, 4))
        report.judge_start_to_text_s.append(round(first_text - (first_update or total), 4))
    report.judge_total_s.append(round(total, 4))
    if "The judge failed" in str(final[-1] or ""):
        report.error("judge_failed", str(final[-1]))
        return False
    return bool(re.search(r'data-state="done"', str(final[3] or "")))


def _has_text(panels_html: str) -> bool:
    """Some reasoning is on screen: fewer empty placeholders than panels. (Count the panel
    class exactly: "grm-panel" alone also matches each panel's "grm-panel-title".)"""
    panels = panels_html.count('class="grm-panel"')
    return panels > 0 and panels_html.count('class="grm-empty"') < panels


def _own_cpu_seconds() -> float:
    times = os.times()
    return round(times.user + times.system, 2)


def _write_report(log_dir: Path, report: WorkerReport) -> None:
    path = log_dir / f"report-{report.name}.json"
    # asdict would rebuild the Counter from (kind, count) pairs, counting the pairs themselves.
    path.write_text(json.dumps({**asdict(report), "errors": dict(report.errors)}), encoding="utf-8")


# --- all of them together -------------------------------------------------------------------


def run_annotators(
    url: str, config: LoadConfig, log_dir: Path, on_start: Callable[[], None] = lambda: None
) -> tuple[float, float, float]:
    """Start the annotator processes, release them together (then call `on_start`), wait for
    both phases to end. Returns (start, steady_end, burst_end) as wall-clock times."""
    ctx = mp.get_context("spawn")  # no fork of a parent that may hold threads (pytest, app)
    ready, go, times = ctx.Queue(), ctx.Event(), ctx.Array("d", 3)
    specs = [
        WorkerSpec(
            index=i,
            url=url,
            name=f"{ANNOTATOR_PREFIX}{i:02d}",
            judges=i < config.judging,
            interval=config.interval,
            request_timeout=config.request_timeout,
            log_dir=str(log_dir),
            seed=config.seed * 1000 + i,
        )
        for i in range(config.annotators)
    ]
    procs = [ctx.Process(target=annotator_process, args=(s, ready, go, times)) for s in specs]
    try:
        for proc in procs:
            proc.start()
        _wait_ready(ready, procs)
        start = time.time() + 1.0
        times[0], times[1] = start, start + config.duration
        times[2] = start + config.duration + config.burst
        go.set()
        on_start()
        # Phases end on the clock; a request in flight may add one request timeout.
        deadline = times[2] + config.request_timeout + 30
        for proc in procs:
            proc.join(timeout=max(1.0, deadline - time.time()))
        return times[0], times[1], times[2]
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=10)


def _wait_ready(ready: Any, procs: list) -> None:
    """Every annotator signed in (or died trying: its report says why)."""
    import queue

    waiting, deadline = len(procs), time.monotonic() + APP_START_TIMEOUT_S
    while waiting and time.monotonic() < deadline:
        try:
            ready.get(timeout=1.0)
            waiting -= 1
        except queue.Empty:
            if sum(p.is_alive() for p in procs) < waiting:
                return  # one died before signing in; the rest are ready or never will be


def read_logs(log_dir: Path, names: list[str]) -> tuple[list[dict], list[WorkerReport | None]]:
    acks: list[dict] = []
    reports: list[WorkerReport | None] = []
    for name in names:
        ack_path = log_dir / f"acks-{name}.jsonl"
        if ack_path.exists():
            lines = ack_path.read_text(encoding="utf-8").splitlines()
            acks += [json.loads(line) for line in lines if line.strip()]
        report_path = log_dir / f"report-{name}.json"
        if report_path.exists():
            raw = json.loads(report_path.read_text(encoding="utf-8"))
            raw["errors"] = Counter(raw["errors"])
            reports.append(WorkerReport(**raw))
        else:
            reports.append(None)  # the process died before writing its report
    return acks, reports
