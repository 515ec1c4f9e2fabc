"""Load on the running web app: simulated annotators saving labels through gradio_client.

    .venv/bin/python benchmarks/bench_load.py --db sqlite
    .venv/bin/python benchmarks/bench_load.py --db postgresql --database-url postgresql+psycopg://...

Starts the app as a subprocess (`python -m cli serve`) on a free loopback port over a fresh data
directory (SQLite), or over a fresh database created in the given PostgreSQL server and dropped
afterwards, with a few thousand generated pairs imported first. Then N annotator processes, each
with its own gradio_client Client and name, save a label every few seconds (jittered) for the
steady phase, K of them streaming the judge (/judge, the embedded model) before each label;
then all of them save as fast as they can for the burst phase. Every acknowledged save goes to
a client-side log; at the end the app is stopped and the database is compared with that log:
a label acknowledged but not current in the database is lost (must be 0).

Prints a table and saves benchmarks/results/bench_load_<sqlite|postgresql>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.load_clients import (  # noqa: E402
    ANNOTATOR_PREFIX,
    APP_START_TIMEOUT_S,
    ERROR_SAMPLES,
    WorkerReport,
    read_logs,
    run_annotators,
)

RESULTS_DIR = ROOT / "benchmarks" / "results"
POSTGRES_URL_ENV = "GRM_TEST_POSTGRES_URL"
# Hard bounds: the benchmark never starts more processes or runs longer than this.
MAX_ANNOTATORS = 64
MAX_PHASE_S = 1800.0


@dataclass
class LoadConfig:
    """One load run. `pairs` 0: enough for every annotator never to run out."""

    db: str = "sqlite"
    database_url: str | None = None  # a PostgreSQL server (a fresh database is made in it)
    annotators: int = 20
    duration: float = 180.0  # steady phase, seconds
    burst: float = 20.0  # burst phase, seconds
    judging: int = 3  # annotators that stream the judge before each steady-phase label
    interval: float = 3.0  # mean seconds between a steady annotator's saves (jittered +-50%)
    pairs: int = 0
    max_new_tokens: int = 128  # judge length: the embedded model on a shared CPU
    request_timeout: float = 120.0  # one save or one judgment, client side
    seed: int = 0

    def checked(self) -> LoadConfig:
        if self.db not in ("sqlite", "postgresql"):
            raise ValueError(f"--db must be sqlite or postgresql, not {self.db!r}")
        if not 1 <= self.annotators <= MAX_ANNOTATORS:
            raise ValueError(f"--annotators must be 1..{MAX_ANNOTATORS}")
        if not 0 <= self.judging <= self.annotators:
            raise ValueError("--judging must be between 0 and --annotators")
        for name in ("duration", "burst"):
            if not 0 <= getattr(self, name) <= MAX_PHASE_S:
                raise ValueError(f"--{name} must be 0..{MAX_PHASE_S:.0f} seconds")
        if self.db == "postgresql" and not self.database_url:
            raise ValueError(f"--db postgresql needs --database-url or {POSTGRES_URL_ENV}")
        return self

    def pair_count(self) -> int:
        """Pairs to import: each annotator labels its own queue (every pair), so this bounds
        one annotator's saves: steady saves (+50%) and a generous burst rate."""
        needed = self.duration / max(self.interval, 0.1) * 1.5 + self.burst * 25 + 100
        return self.pairs or int(needed)


# --- the app under test ----------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_pairs(path: Path, count: int, seed: int = 0) -> None:
    """`count` distinct generated pairs (a few hundred bytes each) in the `pairs` JSONL format."""
    rng = random.Random(seed)
    topics = ("tides", "rainbows", "compound interest", "photosynthesis", "sorting", "vaccines")
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            topic = topics[i % len(topics)]
            row = {
                "id": f"load-{i}",
                "prompt": f"Question {i}: explain {topic} to a curious twelve-year-old.",
                "response_a": f"Answer {i}: {topic} in two clear sentences, with an example "
                f"from everyday life (number {rng.randint(1, 10**6)}).",
                "response_b": f"Answer {i}: a long, vague paragraph about {topic} that never "
                "quite answers the question and repeats itself.",
                "label": "A",
                "category": "chat",
            }
            out.write(json.dumps(row) + "\n")


def app_env(home: Path, port: int, db_url: str | None, max_new_tokens: int) -> dict[str, str]:
    """The app's environment: its own data directory and port; no login, embedded judge."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRM_")}
    env.update(
        GRM_HOME=str(home),
        GRM_HOST="127.0.0.1",
        GRM_PORT=str(port),
        GRM_JUDGE_BACKEND="transformers",
        GRM_MAX_NEW_TOKENS=str(max_new_tokens),
        GRADIO_ANALYTICS_ENABLED="False",
        OMP_WAIT_POLICY="PASSIVE",
        PYTHONUNBUFFERED="1",
    )
    if "GRM_MODEL_CACHE" in os.environ:
        env["GRM_MODEL_CACHE"] = os.environ["GRM_MODEL_CACHE"]
    if db_url:
        env["GRM_DATABASE_URL"] = db_url
    return env


def import_pairs(env: dict[str, str], path: Path, dataset: str = "load") -> str:
    """Import the generated pairs through the CLI (the same front door a person uses)."""
    done = subprocess.run(
        [sys.executable, "-m", "cli", "import", str(path), "--dataset", dataset],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"import failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


@contextmanager
def running_app(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, int]]:
    """`python -m cli serve` with `env`; yields (URL, pid) once it answers; always stopped."""
    url = f"http://127.0.0.1:{env['GRM_PORT']}/"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole below
        )
        try:
            wait_until_answering(url, proc, log_path)
            yield url, proc.pid
        finally:
            stop_app(proc)


def wait_until_answering(url: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + APP_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the app exited ({proc.returncode}) while starting:\n{tail}")
        with suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise RuntimeError(f"the app did not answer on {url} within {APP_START_TIMEOUT_S:.0f} s")


def stop_app(proc: subprocess.Popen) -> None:
    """Ctrl-C first (Gradio closes cleanly), then SIGTERM, then SIGKILL for the whole group."""
    for sig, wait_s in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything it left behind in its group


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a running process has used (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def app_log_problems(log_path: Path, limit: int = 5) -> dict[str, Any]:
    """Tracebacks and ERROR/WARNING lines the app logged during the run."""
    lines = log_path.read_text(errors="replace").splitlines()
    bad = [ln for ln in lines if " ERROR " in ln or " WARNING " in ln or "Traceback" in ln]
    return {"tracebacks": sum("Traceback" in ln for ln in lines), "lines": bad[:limit]}


@contextmanager
def fresh_postgres_database(server_url: str) -> Iterator[str]:
    """A new, empty database in `server_url`'s server (dropped afterwards), so the benchmark
    never touches the data of the database the URL names."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"grm_load_{secrets.token_hex(4)}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


# --- the run ---------------------------------------------------------------------------------


def compare_with_database(db_url: str, acks: list[dict]) -> dict[str, Any]:
    """Acknowledged saves against the labels current in the database (opened with the
    project's storage code after the app stopped)."""
    from sqlalchemy import func, select

    from storage import queries
    from storage.db import make_engine, make_session_factory, reading
    from storage.models import LabelEvent

    engine = make_engine(db_url)
    try:
        with reading(make_session_factory(engine)) as s:
            records = queries.labeled_records(s)
            events = s.scalar(
                select(func.count(LabelEvent.id)).where(
                    LabelEvent.annotator.startswith(ANNOTATOR_PREFIX)
                )
            )
            integrity = None
            if engine.dialect.name == "sqlite":
                integrity = s.connection().exec_driver_sql("PRAGMA integrity_check").scalar()
    finally:
        engine.dispose()
    stored = {
        (r["pair_id"], r["annotator"]): r["label"]
        for r in records
        if r["annotator"].startswith(ANNOTATOR_PREFIX)
    }
    acked: dict[tuple[int, str], dict] = {}
    for ack in sorted(acks, key=lambda a: a["at"]):  # a later ack of the same pair wins
        acked[(ack["pair_id"], ack["annotator"])] = ack
    lost = [a for key, a in acked.items() if stored.get(key) != a["label"]]
    return {
        "acked_labels": len(acked),
        "labels_in_db": len(stored),
        "label_events_in_db": events,
        "lost_labels": len(lost),
        "lost_examples": lost[:5],
        "stored_not_acked": len(set(stored) - set(acked)),  # e.g. a save that timed out
        "sqlite_integrity_check": integrity,
    }


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def summarize(
    config: LoadConfig, acks: list[dict], reports: list[WorkerReport | None]
) -> dict[str, Any]:
    """Saves per second and latencies per phase, judge latencies, errors by kind."""
    errors: Counter = Counter()
    samples: dict[str, list[str]] = {}
    for report in reports:
        if report is None:
            errors["worker_died"] += 1
            continue
        errors.update(report.errors)
        for kind, texts in report.error_samples.items():
            samples.setdefault(kind, []).extend(texts[: ERROR_SAMPLES - len(samples.get(kind, []))])
    phases = {}
    for phase, seconds in (("steady", config.duration), ("burst", config.burst)):
        latencies = [a["latency_s"] for a in acks if a["phase"] == phase]
        attempted = sum(r.attempted[phase] for r in reports if r is not None)
        phases[phase] = {
            "seconds": seconds,
            "saves_attempted": attempted,
            "saves_acked": len(latencies),
            "saves_per_s": round(len(latencies) / seconds, 2) if seconds else None,
            "latency_p50_ms": _ms(percentile(latencies, 50)),
            "latency_p99_ms": _ms(percentile(latencies, 99)),
            "latency_max_ms": _ms(max(latencies, default=None)),
        }
    judged = [r for r in reports if r is not None]
    first_text = [v for r in judged for v in r.judge_first_text_s]
    first_update = [v for r in judged for v in r.judge_first_update_s]
    totals = [v for r in judged for v in r.judge_total_s]
    start_to_text = [v for r in judged for v in r.judge_start_to_text_s]
    return {
        "phases": phases,
        "judge": {
            "judgments": len(totals),
            "first_update_p50_ms": _ms(percentile(first_update, 50)),
            "first_text_p50_ms": _ms(percentile(first_text, 50)),
            "first_text_p99_ms": _ms(percentile(first_text, 99)),
            # The first update comes when the judge lane takes the request (the wait behind
            # other judgments); from there to the first reasoning text is the model's part.
            "start_to_first_text_p50_ms": _ms(percentile(start_to_text, 50)),
            "total_p50_s": round(statistics.median(totals), 2) if totals else None,
        },
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors),
        "error_samples": samples,
        "annotators_out_of_pairs": sum(1 for r in judged if r.queue_ran_out),
    }


def run_load(config: LoadConfig, workdir: Path | None = None) -> dict[str, Any]:
    """The whole benchmark: app up, pairs in, annotators through both phases, app down,
    database checked against the ack log. Returns the figures (nothing printed or saved)."""
    config.checked()
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="grm-bench-load-")) if own_dir else workdir
    started = time.perf_counter()
    try:
        if config.db == "postgresql":
            with fresh_postgres_database(config.database_url) as db_url:
                return _run(config, workdir, db_url, started)
        return _run(config, workdir, None, started)
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(config: LoadConfig, workdir: Path, db_url: str | None, started: float) -> dict[str, Any]:
    home, log_dir = workdir / "home", workdir / "client-log"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = app_env(home, free_port(), db_url, config.max_new_tokens)
    pairs_file = workdir / "load-pairs.jsonl"
    write_pairs(pairs_file, config.pair_count(), config.seed)
    imported = import_pairs(env, pairs_file)
    app_log = workdir / "app.log"
    with running_app(env, app_log) as (url, pid):
        if config.judging:
            _warm_judge(url)  # the model loads once, before the clock starts
        floor = round_trip_floor(url)
        cpu: dict[str, float | None] = {}
        run_annotators(url, config, log_dir, on_start=lambda: cpu.update(start=cpu_seconds(pid)))
        cpu["end"] = cpu_seconds(pid)
    names = [f"{ANNOTATOR_PREFIX}{i:02d}" for i in range(config.annotators)]
    acks, reports = read_logs(log_dir, names)
    db_url = db_url or f"sqlite:///{(home / 'grm.sqlite3').resolve()}"
    result = {
        "db": config.db,
        "config": {k: v for k, v in asdict(config).items() if k != "database_url"},
        "pairs_imported": imported,
        "round_trip_floor_ms": floor,
        **summarize(config, acks, reports),
        "database": compare_with_database(db_url, acks),
        "app_log": app_log_problems(app_log),
        "cpu_seconds": {
            "app_during_phases": _difference(cpu.get("end"), cpu.get("start")),
            "clients": round(sum(r.cpu_s for r in reports if r is not None), 1),
        },
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    return result


def _difference(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else round(after - before, 1)


def round_trip_floor(url: str, calls: int = 20) -> float:
    """p50 ms of the cheapest endpoint (/set_annotator) from one client on the idle app: what
    any call costs through Gradio's queue and gradio_client (which polls its messages every
    50 ms), before the label work itself."""
    from gradio_client import Client

    client = Client(url, verbose=False, analytics_enabled=False, download_files=False)
    latencies = []
    try:
        for _ in range(calls):
            started = time.perf_counter()
            client.predict("floor", api_name="/set_annotator")
            latencies.append(time.perf_counter() - started)
    finally:
        client.close()
    return _ms(statistics.median(latencies))


def _warm_judge(url: str) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False, analytics_enabled=False, download_files=False)
    try:
        client.predict(api_name="/load_judge")
    finally:
        client.close()


# --- command line ----------------------------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    """The figures as a small text table."""
    lines = [f"bench_load on {result['db']}  ({result['config']['annotators']} annotators, "
             f"{result['config']['judging']} judging)"]  # fmt: skip
    lines.append(f"{'phase':8} {'seconds':>8} {'acked':>7} {'saves/s':>8} {'p50 ms':>8} "
                 f"{'p99 ms':>8} {'max ms':>8}")  # fmt: skip
    for name, p in result["phases"].items():
        lines.append(
            f"{name:8} {p['seconds']:>8.0f} {p['saves_acked']:>7} {p['saves_per_s'] or 0:>8.2f} "
            f"{p['latency_p50_ms'] or 0:>8.1f} {p['latency_p99_ms'] or 0:>8.1f} "
            f"{p['latency_max_ms'] or 0:>8.1f}"
        )
    judge, db = result["judge"], result["database"]
    lines.append(f"round-trip floor (idle app, cheapest call): {result['round_trip_floor_ms']} ms")
    lines.append(
        f"judge: {judge['judgments']} judgments, first text p50 {judge['first_text_p50_ms']} ms "
        f"(lane wait: first update p50 {judge['first_update_p50_ms']} ms; from start "
        f"{judge['start_to_first_text_p50_ms']} ms), whole p50 {judge['total_p50_s']} s"
    )
    lines.append(f"errors: {result['errors']} {result['errors_by_kind']}")
    lines.append(
        f"database: {db['acked_labels']} acked, {db['labels_in_db']} stored, "
        f"LOST {db['lost_labels']}, stored but not acked {db['stored_not_acked']}"
        + (f", integrity {db['sqlite_integrity_check']}" if db["sqlite_integrity_check"] else "")
    )
    cpu = result["cpu_seconds"]
    lines.append(
        f"CPU seconds during the phases: app {cpu['app_during_phases']}, "
        f"clients {cpu['clients']}; load average {result['load_average'][0]:.1f} "
        f"on {result['cpu_count']} CPUs"
    )
    lines.append(f"app log: {result['app_log']['tracebacks']} tracebacks")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[LoadConfig, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--database-url", default=os.environ.get(POSTGRES_URL_ENV),
                        help=f"PostgreSQL server (default ${POSTGRES_URL_ENV}); a fresh "
                        "database is created in it and dropped afterwards")  # fmt: skip
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--duration", type=float, default=180.0, help="steady phase, seconds")
    parser.add_argument("--burst", type=float, default=20.0, help="burst phase, seconds")
    parser.add_argument("--judging", type=int, default=3, help="annotators streaming the judge")
    parser.add_argument("--interval", type=float, default=3.0, help="mean s between saves")
    parser.add_argument("--pairs", type=int, default=0, help="pairs to import (0: enough)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="judge length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON path (default results/bench_load_DB.json)")
    args = parser.parse_args(argv)
    config = LoadConfig(
        db=args.db,
        database_url=args.database_url if args.db == "postgresql" else None,
        annotators=args.annotators,
        duration=args.duration,
        burst=args.burst,
        judging=args.judging,
        interval=args.interval,
        pairs=args.pairs,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    return config, args.out


def main(argv: list[str] | None = None) -> int:
    try:
        config, out = parse_args(argv)
        config.checked()
    except ValueError as exc:
        print(f"bench_load: {exc}", file=sys.stderr)
        return 2
    result = run_load(config)
    out = (out or RESULTS_DIR / f"bench_load_{config.db}.json").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(table(result))
    print(f"saved {out}")
    return 0 if result["database"]["lost_labels"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
