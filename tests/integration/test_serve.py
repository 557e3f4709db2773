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


def test_every_answered_cds_call_is_in_the_audit_log_after_a_graceful_stop(tmp_path: Path) -> None:
    """60 concurrent calls on the real server, then SIGTERM: each answered call has its audit row
    (rows are committed by the writer thread after the answer; the stop flushes what is queued)."""
    import asyncio
    import uuid

    import sqlalchemy as sa

    db = tmp_path / "pinpoint.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    patient = {"resourceType": "Patient", "id": "P-1", "gender": "female"}

    async def calls(n: int) -> list[int]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:

            async def one() -> int:
                body = {
                    "hook": "patient-view",
                    "hookInstance": str(uuid.uuid4()),
                    "context": {"userId": "Practitioner/dr-1", "patientId": "P-1"},
                    "prefetch": {"patient": patient},
                }
                return (await client.post("/cds-services/pinpoint-patient-view", json=body)).status_code

            return list(await asyncio.gather(*(one() for _ in range(n))))

    env = clean_env(PINPOINT_DATABASE_URL=f"sqlite:///{db}")
    with serving(
        "serve", "--role", "recommender", "--port", str(port), env=env, base=base, log_path=tmp_path / "s.log"
    ):
        statuses = asyncio.run(calls(60))
    assert statuses == [200] * 60
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        logged = conn.execute(sa.text("SELECT count(*) FROM audit_log WHERE action = 'cds.call'")).scalar()
    engine.dispose()
    assert logged == 60
