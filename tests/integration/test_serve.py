"""`pinpoint serve` as a real process on loopback: the embedded default end to end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import FIXTURES, ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINPOINT_")}
    env["PINPOINT_DATABASE_URL"] = f"sqlite:///{tmp_path / 'var' / 'pinpoint.db'}"
    exe = Path(sys.executable).parent / "pinpoint"
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [str(exe), "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/livez", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        proc.kill()
        log.close()
        pytest.fail("server did not start: " + (tmp_path / "serve.log").read_text()[-2000:])
    try:
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_embedded_server_end_to_end(server: str) -> None:
    assert httpx.get(f"{server}/livez").json() == {"status": "ok"}
    ready = httpx.get(f"{server}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["migrations"] == "ok"
    body = (FIXTURES / "realdata" / "synthea-weston-fay.json").read_bytes()
    pushed = httpx.post(
        f"{server}/fhir", content=body, headers={"content-type": "application/fhir+json"}, timeout=30
    )
    assert pushed.status_code == 200
    metrics = httpx.get(f"{server}/metrics").text
    assert 'pinpoint_http_requests_total{method="POST",route="/fhir",status="200"}' in metrics
