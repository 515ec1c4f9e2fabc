"""A real model server in its own process for a test: started on a free loopback port, polled
until it answers (never a fixed sleep), and stopped however the test ended."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    """A loopback port no one listens on now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(
    command: list[str], ready_url: str, log: Path, limit_s: float, env: dict | None = None
) -> subprocess.Popen:
    """Run `command` with its output in `log`; return once `ready_url` answers 200, or fail the
    test with the log's tail when the process dies or `limit_s` passes."""
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{command[:3]} exited ({process.returncode}):\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(process)
    pytest.fail(f"{command[:3]} not ready in {limit_s} s:\n{log.read_text()[-4000:]}")


def stop_server(process: subprocess.Popen, grace_s: float = 30) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
