"""The repository's batched writes (one lookup and one upsert a batch; on PostgreSQL the rows
travel as one JSON document): what a batch stores, on both backends."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from services.ingest.intake.repository import Prepared, store_resources
from shared.db.models import EvaluationQueue
from tests.api.ingest.helpers import pain, patient, stored


def _prepared(resource: dict[str, Any]) -> Prepared:
    pid = resource["id"] if resource["resourceType"] == "Patient" else resource["subject"]["reference"][8:]
    return Prepared(resource["resourceType"], resource["id"], resource, f"default:{pid}")


def _store(engine: Engine, *resources: dict[str, Any]) -> list[str]:
    with Session(engine) as session:
        results = store_resources(session, "default", [_prepared(r) for r in resources])
        session.commit()
    return [r.outcome for r in results]


def _generations(engine: Engine) -> dict[str, int]:
    with Session(engine) as s:
        return {q.patient_key: q.generation for q in s.exec(select(EvaluationQueue))}


def test_a_batch_stores_each_identity_once_with_its_last_version(engine: Engine) -> None:
    first = pain("obs-1", value=3, meta={"lastUpdated": "2025-02-03T10:00:00Z", "versionId": "1"})
    second = pain("obs-1", value=8, meta={"lastUpdated": "2025-02-03T11:00:00Z", "versionId": "2"})
    assert _store(engine, patient("P-1", gender="female"), first, second) == ["created", "created", "updated"]
    rows = stored(engine)
    assert rows[("Observation", "obs-1")].raw["valueInteger"] == 8  # type: ignore[index]
    assert rows[("Observation", "obs-1")].version_id == "2"
    assert rows[("Observation", "obs-1")].last_updated is not None
    assert rows[("Observation", "obs-1")].last_updated.hour == 11
    assert rows[("Patient", "P-1")].raw == patient("P-1", gender="female")
    assert _generations(engine) == {"default:P-1": 1}


def test_the_same_batch_again_changes_nothing_and_marks_no_one(engine: Engine) -> None:
    batch = [patient("P-1"), pain("obs-1"), pain("obs-2", subject="Patient/P-2")]
    _store(engine, *batch)
    before = _generations(engine)
    assert _store(engine, *batch) == ["unchanged", "unchanged", "unchanged"]
    assert _generations(engine) == before
    # an older version arriving late is stale: the newer one stays
    newer = pain("obs-3", value=9, meta={"lastUpdated": "2025-03-01T00:00:00Z"})
    older = pain("obs-3", value=1, meta={"lastUpdated": "2025-01-01T00:00:00Z"})
    assert _store(engine, newer) == ["created"]
    assert _store(engine, older) == ["stale"]
    assert stored(engine)[("Observation", "obs-3")].raw["valueInteger"] == 9  # type: ignore[index]
