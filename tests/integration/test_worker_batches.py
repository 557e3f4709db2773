"""The worker's batches (both backends): a batch stores what evaluating its patients one at a time
stores, on every vignette; a patient whose mark moves while the batch is evaluated is left dirty
and evaluated again, the others stored; a patient whose write fails does not hold back the
others."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from typer.testing import CliRunner

import services.recommender.worker as worker_module
from services.cli import app
from services.recommender.assessor import Assessor
from services.recommender.worker import Worker
from shared.db.models import (
    Assessment,
    AuditLog,
    EvaluationQueue,
    Outbox,
    OutcomeCache,
    Suggestion,
    WorklistEntry,
)
from shared.db.queue import mark_dirty
from shared.db.session import session_scope
from shared.settings import Settings
from tests.api.recommender.helpers import stable
from tests.conftest import FIXTURES

VIGNETTES = sorted((FIXTURES / "vignettes").glob("*/bundle.json"))
NOW = datetime(2025, 9, 22, 14, tzinfo=UTC)  # after every vignette's data
THREE = ("v02", "v05", "f05")  # each gets suggestions at WHEN
WHEN = datetime(2025, 3, 10, 13, tzinfo=UTC)
_DERIVED = (Suggestion, Outbox, Assessment, WorklistEntry, OutcomeCache, AuditLog)


@pytest.fixture(autouse=True)
def _db_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINPOINT_DATABASE_URL", db_url)


def _own_ids(node: Any, tag: str) -> Any:
    """A vignette's resources with ids of their own (``P-001-v02``, ``mbb-1-v02`` …): every id,
    full URL and reference of the bundle given the suffix (they are all ``Type/id``)."""
    if isinstance(node, list):
        return [_own_ids(item, tag) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _own_ids(v, tag) for k, v in node.items()}
    for name in ("fullUrl", "reference"):
        if isinstance(out.get(name), str):
            out[name] = f"{out[name]}-{tag}"
    if "resourceType" in out and isinstance(out.get("id"), str) and out["resourceType"] != "Bundle":
        out["id"] = f"{out['id']}-{tag}"
    return out


def _import(engine: Engine, folder: Path, bundles: list[Path]) -> list[str]:
    """The vignettes imported with ids of their own: their patient keys."""
    folder.mkdir()
    for path in bundles:
        tag = path.parent.name.split("-")[0]
        (folder / f"{tag}.json").write_text(json.dumps(_own_ids(json.loads(path.read_text()), tag)))
    result = CliRunner().invoke(app, ["import", str(folder)])
    assert result.exit_code == 0, result.output
    with Session(engine) as session:
        return sorted(session.exec(select(EvaluationQueue.patient_key)))


def _stored(engine: Engine) -> dict[str, Any]:
    """Everything the worker wrote, write instants left out."""
    with Session(engine) as s:
        return {
            "suggestions": {
                (r.resource_type, r.resource_id): (
                    r.patient_key,
                    r.version,
                    r.content_hash if r.resource_type != "Provenance" else "",  # hashes its instant
                    stable(r.resource or {}),
                )
                for r in s.exec(select(Suggestion))
            },
            "outbox": sorted(
                (
                    o.patient_key,
                    o.status,
                    repr(
                        {
                            **(o.payload or {}),
                            "resources": [stable(r) for r in (o.payload or {})["resources"]],
                        }
                    ),
                )
                for o in s.exec(select(Outbox))
            ),
            "assessments": {
                a.key: (a.patient_key, a.pathway, a.verdict, a.document, a.content_hash, a.status)
                for a in s.exec(select(Assessment))
            },
            "worklist": {
                w.key: {k: v for k, v in w.model_dump().items() if k != "evaluated_at"}
                for w in s.exec(select(WorklistEntry))
            },
            "outcomes": {
                c.patient_key: (c.fingerprint, c.engine, c.refs, c.rows, c.valid_until)
                for c in s.exec(select(OutcomeCache))
            },
            "audit": sorted(  # the generation evaluated left out: each import bumps it
                (a.actor, a.target or "", repr({**(a.detail or {}), "generation": None}))
                for a in s.exec(select(AuditLog))
            ),
            "queue": list(s.exec(select(EvaluationQueue.patient_key))),
        }


def _suggested(engine: Engine) -> set[str]:
    with Session(engine) as s:
        return set(s.exec(select(Suggestion.patient_key)))


def test_a_batch_stores_what_one_patient_at_a_time_stores(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    keys = _import(engine, tmp_path / "vignettes", VIGNETTES)
    assert len(keys) == len(VIGNETTES) + 1  # r12: two patients
    worker = Worker(engine, settings, Assessor.load("cms-lcd"), ident="w")
    claims = worker.claim()
    assert [c.patient_key for c in claims] == keys  # one batch
    assert set(worker.process_batch(claims, NOW).values()) == {"stored"}
    batched = _stored(engine)
    assert len({a[0] for a in batched["assessments"].values()}) >= 10
    assert len(batched["outcomes"]) == len(keys)
    assert batched["queue"] == []

    with session_scope(engine) as session:  # the same patients again, from nothing, one at a time
        for model in _DERIVED:
            session.execute(sa.delete(model))
        mark_dirty(session, keys)
    assert [worker.process(c, NOW) for c in worker.claim()] == ["stored"] * len(keys)
    assert _stored(engine) == batched


class _MarkedMidway(Assessor):
    """New data for one patient arrives while its batch is being evaluated."""

    engine: Engine
    patient_ref = "Patient/P-001-v05"
    fired = False

    def entry(self, facts: Any, patient_ref: str, now: datetime, ctx: Any = None) -> dict[str, Any]:
        if patient_ref == self.patient_ref and not self.fired:
            self.fired = True
            with session_scope(self.engine) as session:
                mark_dirty(session, ["default:P-001-v05"])
        return super().entry(facts, patient_ref, now, ctx)


def test_a_mark_moving_mid_batch_leaves_that_patient_dirty_and_stores_the_others(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    picked = [p for p in VIGNETTES if p.parent.name.split("-")[0] in THREE]
    keys = _import(engine, tmp_path / "vignettes", picked)
    assessor = _MarkedMidway(Assessor.load("cms-lcd").policy)
    assessor.engine = engine
    worker = Worker(engine, settings, assessor)
    claims = worker.claim()
    outcomes = worker.process_batch(claims, WHEN)
    assert outcomes == {k: "superseded" if k == "default:P-001-v05" else "stored" for k in keys}
    assert _suggested(engine) == {"default:P-001-f05", "default:P-001-v02"}
    with Session(engine) as s:
        (row,) = s.exec(select(EvaluationQueue))
    generation = {c.patient_key: c.generation for c in claims}["default:P-001-v05"]
    assert row.patient_key == "default:P-001-v05" and row.generation == generation + 1
    assert row.claimed_by is None  # … claimable at once: evaluated again with the new data
    assert worker.drain(now=WHEN).stored == 1
    assert _suggested(engine) == {"default:P-001-f05", "default:P-001-v02", "default:P-001-v05"}


def test_a_patient_whose_write_fails_does_not_hold_back_the_others(
    engine: Engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picked = [p for p in VIGNETTES if p.parent.name.split("-")[0] in THREE]
    keys = _import(engine, tmp_path / "vignettes", picked)
    real = worker_module.apply_entry

    def failing(session: Session, patient_key: str, *args: Any, **kwargs: Any) -> Any:
        if patient_key == "default:P-001-v05":
            raise sa.exc.DataError("INSERT", {}, ValueError("value out of range"))
        return real(session, patient_key, *args, **kwargs)

    monkeypatch.setattr(worker_module, "apply_entry", failing)
    worker = Worker(engine, settings, Assessor.load("cms-lcd"))
    outcomes = worker.process_batch(worker.claim(), WHEN)
    assert outcomes == {k: "failed" if k == "default:P-001-v05" else "stored" for k in keys}
    assert _suggested(engine) == {"default:P-001-f05", "default:P-001-v02"}
    with Session(engine) as s:
        (row,) = s.exec(select(EvaluationQueue))
        outcome_keys = set(s.exec(select(OutcomeCache.patient_key)))
    assert row.patient_key == "default:P-001-v05" and row.attempts == 1  # kept, retried after a back-off
    assert row.last_error is not None and row.last_error.startswith("DataError")
    assert outcome_keys == {"default:P-001-f05", "default:P-001-v02"}
