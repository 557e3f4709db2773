"""The repository's batched writes (one lookup and one upsert a batch; on PostgreSQL the rows
travel as one JSON document): what a batch stores, on both backends."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, delete, select

from services.ingest.intake.repository import Prepared, store_resources
from shared.db.models import EvaluationQueue, Resource
from tests.api.ingest.helpers import pain, patient, stored


def _prepared(resource: dict[str, Any]) -> Prepared:
    pid = resource["id"] if resource["resourceType"] == "Patient" else resource["subject"]["reference"][8:]
    return Prepared(resource["resourceType"], resource["id"], resource, f"default:{pid}")


def _store(engine: Engine, *resources: dict[str, Any], expect_new: bool = False) -> list[str]:
    with Session(engine) as session:
        results = store_resources(
            session, "default", [_prepared(r) for r in resources], expect_new=expect_new
        )
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


def _state(engine: Engine) -> tuple[dict[tuple[str, str], tuple[Any, ...]], dict[str, int]]:
    rows = {
        key: (r.raw, r.version_id, r.last_updated, r.content_hash, r.patient_key, r.deleted)
        for key, r in stored(engine).items()
    }
    return rows, _generations(engine)


def _batches(expect_new: bool, engine: Engine) -> list[list[str]]:
    """A first batch, then one mixing new identities, repeats, a newer, a stale and a same-version
    resource, and an Observation that moves to another patient."""
    v1 = {"lastUpdated": "2025-02-03T10:00:00Z", "versionId": "1"}
    v2 = {"lastUpdated": "2025-02-03T11:00:00Z", "versionId": "2"}
    old = {"lastUpdated": "2025-01-01T00:00:00Z", "versionId": "0"}
    outcomes = [
        _store(
            engine,
            patient("P-1"),
            pain("obs-1", meta=v1),
            pain("obs-2"),
            pain("obs-3", meta=v2),
            expect_new=expect_new,
        ),
        _store(
            engine,
            pain("obs-4", value=2),
            pain("obs-4", value=3),  # the same identity twice in one batch: applied in order
            pain("obs-1", value=9, meta=v2),  # newer: updated
            pain("obs-3", value=1, meta=old),  # older: stale
            pain("obs-2"),  # the same content: unchanged
            pain("obs-5", subject="Patient/P-2"),
            pain("obs-2", value=4, subject="Patient/P-3"),  # moves: both patients marked
            expect_new=expect_new,
        ),
    ]
    return outcomes


def test_a_batch_inserted_first_stores_and_marks_what_the_look_up_first_does(engine: Engine) -> None:
    """``expect_new`` (a first import's batches, PostgreSQL: inserted without a look-up, what is
    stored already then through the look-up) changes no outcome, stored row or dirty mark."""
    looked = _batches(False, engine)
    looked_state = _state(engine)
    with Session(engine) as s:  # the same again on an empty store
        s.exec(delete(Resource))  # type: ignore[call-overload]
        s.exec(delete(EvaluationQueue))  # type: ignore[call-overload]
        s.commit()
    assert (
        _batches(True, engine)
        == looked
        == [
            ["created"] * 4,
            ["created", "updated", "updated", "stale", "unchanged", "created", "updated"],
        ]
    )
    rows, generations = _state(engine)
    assert rows == looked_state[0]
    assert generations == looked_state[1] == {"default:P-1": 2, "default:P-2": 1, "default:P-3": 1}
    assert rows[("Observation", "obs-4")][0]["valueInteger"] == 3
    assert rows[("Observation", "obs-1")][0]["valueInteger"] == 9
    assert rows[("Observation", "obs-3")][0]["valueInteger"] == 7
