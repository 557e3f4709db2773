"""`pinpoint serve` as a real process on loopback: the embedded default end to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FIXTURES
from tests.serving import clean_env, free_port, serving


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = clean_env(PINPOINT_DATABASE_URL=f"sqlite:///{tmp_path / 'var' / 'pinpoint.db'}")
    with serving(
        "serve",
        "--port",
        str(port),
        env=env,
        base=f"http://127.0.0.1:{port}",
        log_path=tmp_path / "serve.log",
    ) as base:
        yield base


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
