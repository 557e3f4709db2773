"""`pinpoint` as a real process on loopback, for the tests that need a real server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PINPOINT = Path(sys.executable).parent / "pinpoint"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): a server's own cost under load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def clean_env(**settings: str) -> dict[str, str]:
    """The process environment without the developer's PINPOINT_ variables, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINPOINT_")}
    env.update(settings)
    return env


def run_pinpoint(*args: str, env: Mapping[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(PINPOINT), *args], cwd=ROOT, env=dict(env), stdout=log, stderr=log)


@contextmanager
def serving(*args: str, env: Mapping[str, str], base: str, log_path: Path) -> Iterator[str]:
    """``pinpoint <args>`` (a serve command) until the block ends; waits (bounded) for /livez."""
    with log_path.open("ab") as log:
        proc = run_pinpoint(*args, env=env, log=log)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{base}/livez", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            else:
                pytest.fail("server did not start: " + log_path.read_text()[-2000:])
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
