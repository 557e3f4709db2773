"""Issue 6 §5: `pinpoint subscriptions sync|status` against the fake FHIR server on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from services.cli import app
from tests.fakes.fhir_server import FakeFhirServer, LiveServer
from tests.integration.subscriptions.conftest import TOKEN, TOPIC, sub_state

runner = CliRunner()
ENDPOINT = "http://pinpoint.example/sources/hosp/fhir"


@pytest.fixture
def configured(tmp_path: Path, db_url: str, live: LiveServer, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def configure(mode: str, topic: str | None = TOPIC) -> None:
        config = {
            "sources": [
                {
                    "id": "hosp",
                    "fhir_base_url": live.base_url,
                    "inbound": {"bearer": TOKEN},
                    "subscriptions": {"mode": mode, "topic": topic},
                }
            ]
        }
        path = tmp_path / "pinpoint.yaml"
        path.write_text(yaml.safe_dump(config))
        monkeypatch.setenv("PINPOINT_CONFIG_FILE", str(path))
        monkeypatch.setenv("PINPOINT_DATABASE_URL", db_url)
        monkeypatch.setenv("PINPOINT_PUBLIC_BASE_URL", "http://pinpoint.example")

    return configure


def ours(fake: FakeFhirServer) -> list[dict]:  # type: ignore[type-arg]
    return [s for s in fake.all("Subscription") if s["channel"]["endpoint"] == ENDPOINT]


def test_classic_sync_creates_once_and_repairs(configured, fake: FakeFhirServer, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    configured("classic")
    result = runner.invoke(app, ["subscriptions", "sync"])
    assert result.exit_code == 0, result.output
    subs = ours(fake)
    assert len(subs) == 7 and result.output.count("\tcreated\t") == 7
    criteria = {s["criteria"] for s in subs}
    assert "QuestionnaireResponse?status=completed,amended" in criteria  # functional instruments
    assert any(c.startswith("Observation?") and "http://loinc.org|97909-6" in c for c in criteria)  # ODI
    procedures = next(s for s in subs if s["criteria"].startswith("Procedure?"))
    assert "http://www.ama-assn.org/go/cpt|64493" in procedures["criteria"]
    assert procedures["channel"]["header"] == [f"Authorization: Bearer {TOKEN}"]
    assert procedures["channel"]["payload"] == "application/fhir+json"
    assert all(s["status"] == "active" for s in subs)

    again = runner.invoke(app, ["subscriptions", "sync", "--source", "hosp"])
    assert again.exit_code == 0 and again.output.count("\tok\t") == 7
    assert len(ours(fake)) == 7  # idempotent: keyed on the endpoint and criteria

    fake.put({**procedures, "status": "error"})  # the server gave up delivering
    repaired = runner.invoke(app, ["subscriptions", "sync"])
    assert repaired.output.count("\trepaired\t") == 1
    current = fake.get("Subscription", procedures["id"])
    assert current is not None and current["status"] == "active"
    assert len(ours(fake)) == 7


def test_backport_sync_uses_the_topic_when_the_server_offers_it(  # type: ignore[no-untyped-def]
    configured, fake: FakeFhirServer, engine: Engine
) -> None:
    configured("backport")
    result = runner.invoke(app, ["subscriptions", "sync"])
    assert result.exit_code == 0, result.output
    [sub] = ours(fake)
    assert sub["criteria"] == TOPIC
    payload_ext = sub["channel"]["_payload"]["extension"][0]
    assert payload_ext["valueCode"] == "full-resource"
    state = sub_state(engine, sub["id"])
    assert state is not None and state.heartbeat_period == 300 and state.last_event_number == 0
    source_row = sub_state(engine, "(source)")  # catch-up searches start at the subscription's creation
    assert source_row is not None and source_row.watermark is not None
    assert source_row.watermark.isoformat().startswith(sub["meta"]["lastUpdated"][:19])

    status = runner.invoke(app, ["subscriptions", "status", "--source", "hosp"])
    assert status.exit_code == 0, status.output
    assert sub["id"] in status.output and "inbox: 0 waiting" in status.output


def test_sync_of_an_unknown_source_is_a_usage_error(configured) -> None:  # type: ignore[no-untyped-def]
    configured("classic")
    result = runner.invoke(app, ["subscriptions", "sync", "--source", "nope"])
    assert result.exit_code == 2 and "nope" in result.output


def test_sync_reports_an_unreachable_server(configured, fake: FakeFhirServer) -> None:  # type: ignore[no-untyped-def]
    from tests.fakes.fhir_server import Fault

    configured("classic")
    fake.inject("GET", "Subscription", *[Fault.error(500)] * 5)
    result = runner.invoke(app, ["subscriptions", "sync"])
    assert result.exit_code == 1
    assert "hosp: failed" in result.output
