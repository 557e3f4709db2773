"""`pinpoint serve --role ingest` as a real process: the fake hospital server delivers id-only
notifications over loopback HTTP, Pinpoint's background task reads the focuses back, and
`pinpoint subscriptions sync` set the Subscription up. No ASGI shortcuts anywhere."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT
from tests.fakes.fhir_server import FakeFhirServer, LiveServer
from tests.integration.subscriptions.conftest import TOKEN, TOPIC, mbb, patient
from tests.serving import clean_env, free_port, serving


@pytest.fixture
def pinpoint_env(tmp_path: Path, live: LiveServer) -> tuple[dict[str, str], str]:
    port = free_port()
    config = {
        "sources": [
            {
                "id": "hosp",
                "fhir_base_url": live.base_url,
                "inbound": {"bearer": TOKEN},
                "subscriptions": {"mode": "backport", "topic": TOPIC},
            }
        ]
    }
    (tmp_path / "pinpoint.yaml").write_text(yaml.safe_dump(config))
    env = clean_env(
        PINPOINT_DATABASE_URL=f"sqlite:///{tmp_path / 'pinpoint.db'}",
        PINPOINT_CONFIG_FILE=str(tmp_path / "pinpoint.yaml"),
        PINPOINT_PORT=str(port),
        PINPOINT_API_TOKENS="reader",
    )
    return env, f"http://127.0.0.1:{port}"


@pytest.fixture
def served(tmp_path: Path, pinpoint_env: tuple[dict[str, str], str]) -> Iterator[str]:
    env, base = pinpoint_env
    with serving("serve", "--role", "ingest", env=env, base=base, log_path=tmp_path / "serve.log") as url:
        yield url


async def test_sync_then_live_id_only_notifications(
    fake: FakeFhirServer, pinpoint_env: tuple[dict[str, str], str], served: str
) -> None:
    env, base = pinpoint_env
    exe = Path(sys.executable).parent / "pinpoint"
    done = subprocess.run(
        [str(exe), "subscriptions", "sync"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    [sub] = fake.all("Subscription")
    assert sub["channel"]["endpoint"] == f"{base}/sources/hosp/fhir" and sub["criteria"] == TOPIC

    fake.put(patient())
    fake.put(mbb("proc-1"))
    fake.emit_event(sub["id"], "Patient/p1")
    fake.emit_event(sub["id"], "Procedure/proc-1")
    async with httpx.AsyncClient(timeout=5.0) as http:
        assert await fake.deliver(sub["id"], http, kind="handshake") == [200]
        assert await fake.deliver(sub["id"], http) == [200]
        reader = {"Authorization": "Bearer reader"}
        for _ in range(100):  # bounded: the background task polls every second
            r = await http.get(f"{base}/sources/hosp/fhir/Procedure/proc-1", headers=reader)
            if r.status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert r.status_code == 200 and r.json()["code"]["coding"][0]["code"] == "64493"
        assert (await http.get(f"{base}/sources/hosp/fhir/Patient/p1", headers=reader)).status_code == 200
        metrics = (await http.get(f"{base}/metrics")).text
        assert (
            'pinpoint_subscription_notifications_total{source="hosp",type="event-notification"} 1.0'
            in metrics
        )
    status = subprocess.run(
        [str(exe), "subscriptions", "status"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0 and sub["id"] in status.stdout
