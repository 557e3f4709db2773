"""``pinpoint worker --once`` with write-back configured: a real process evaluates, delivers to
the fake FHIR server on loopback once, and reports what it delivered."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from tests.fakes.fhir_server import FakeFhirServer, LiveServer
from tests.integration.worker.helpers import worker_process
from tests.integration.writeback.helpers import (
    KEY,
    SOURCE,
    V02,
    app_client,
    by_identifier,
    push,
    vignette,
    wb_settings,
)


async def test_once_delivers_and_reports(
    engine: Engine, db_url: str, live: LiveServer, fake: FakeFhirServer, tmp_path: Path
) -> None:
    async with await app_client(wb_settings(db_url, live), engine) as client:
        await push(client, vignette(V02))
    config = tmp_path / "pinpoint.yaml"
    config.write_text(
        f"sources:\n  - id: {SOURCE}\n    fhir_base_url: {live.base_url}\n"
        f"writeback:\n  source: {SOURCE}\n  timeout: 2s\n  backoff: 0s\n"
    )
    proc = worker_process(db_url, "--once", PINPOINT_CONFIG_FILE=str(config))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "evaluated 1 patient: 1 stored, 0 failed" in out
    assert "delivered 1 outbox entry: 1 sent, 0 to retry, 0 parked" in out
    assert len(by_identifier(fake, "CarePlan", KEY)) == 1


def test_once_without_write_back_says_so(engine: Engine, db_url: str) -> None:
    proc = worker_process(db_url, "--once")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "write-back not configured: suggestions kept locally" in out
