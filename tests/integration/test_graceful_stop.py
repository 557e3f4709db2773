"""SIGTERM is a graceful stop, and the exit code says so: 0 (issue 18, finding 8). Real
processes: every ``pinpoint serve`` role and ``pinpoint worker``."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.serving import clean_env, free_port, run_pinpoint


def _wait_for(predicate, what: str, log: Path, seconds: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"{what} did not happen: " + log.read_text()[-2000:])


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail("no exit within 30 s of SIGTERM")


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/livez", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("role", ["all", "ingest", "recommender", "worker"])
def test_a_server_exits_0_after_a_graceful_stop_on_sigterm(tmp_path: Path, role: str) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(PINPOINT_DATABASE_URL=f"sqlite:///{tmp_path / 'pinpoint.db'}")
    log_path = tmp_path / "serve.log"
    with log_path.open("ab") as log:
        proc = run_pinpoint("serve", "--role", role, "--port", str(port), env=env, log=log)
        _wait_for(lambda: _up(base), "start", log_path)
        code = _stop(proc)
    text = log_path.read_text()
    assert code == 0, text[-2000:]
    assert "Application shutdown complete" in text
    if role in ("all", "worker"):
        assert "worker.stopped" in text


def test_the_worker_exits_0_after_a_graceful_stop_on_sigterm(tmp_path: Path, db_url: str) -> None:
    """On both backends, with a poll interval far longer than the stop may take (on PostgreSQL
    the worker is LISTENing for a NOTIFY meanwhile)."""
    env = clean_env(PINPOINT_DATABASE_URL=db_url, PINPOINT_WORKER_POLL_INTERVAL="10m")
    log_path = tmp_path / "worker.log"
    with log_path.open("ab") as log:
        proc = run_pinpoint("worker", env=env, log=log)
        _wait_for(lambda: "worker.started" in log_path.read_text(), "worker start", log_path)
        time.sleep(1)  # past the first drain, into the wait
        code = _stop(proc)
    text = log_path.read_text()
    assert code == 0, text[-2000:]
    assert "worker.stopped" in text
