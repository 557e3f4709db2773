"""``NewRows``: the rows a unit of work creates, inserted together, stored the same on SQLite and
PostgreSQL (where they travel as one JSON array) as the models would store them one by one."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from sqlmodel import col, select

from shared.db.models import AuditLog, Outbox, Suggestion, WorklistEntry
from shared.db.session import NewRows, make_engine, session_scope


def test_rows_are_stored_with_their_values_and_the_column_defaults(db_url: str) -> None:
    engine = make_engine(db_url)
    at = datetime(2026, 3, 17, 9, 30, 1, 123456, tzinfo=UTC)
    paris = at.astimezone(timezone(timedelta(hours=1)))
    rows = NewRows()
    for i in range(3):
        rows.add(
            Outbox,
            patient_key=f"default:P-{i}",
            payload={"n": i, "text": 'é \u2028 "quoted"', "nested": [1.5, None, True, {"big": 2**62}]},
            status="local",
            next_attempt_at=paris,
            created_at=at,
        )
        rows.add(AuditLog, at=at, actor="worker:x", action="evaluate", target=None, detail={"i": i})
    rows.add(
        Suggestion,
        resource_type="CarePlan",
        resource_id="c-1",
        identifier="default:P-0:facet-rfa",
        patient_key="default:P-0",
        version=2,
        resource={"resourceType": "CarePlan", "id": "c-1"},
        content_hash="h" * 64,
        updated_at=at,
    )
    rows.add(
        WorklistEntry,
        key="default:P-0:facet-rfa",
        patient_key="default:P-0",
        source="default",
        patient_id="P-0",
        name=None,
        search="p-0",
        pathway="facet",
        target="lumbar",
        verdict="eligible",
        reason="ready",
        attention=1,
        due=date(2026, 4, 1),
        evaluated_at=at,
    )
    with session_scope(engine) as session:
        rows.insert(session)
    with session_scope(engine) as session:
        listed = session.exec(select(WorklistEntry)).one()
        outbox = session.exec(select(Outbox).order_by(col(Outbox.id))).all()
        audit = session.exec(select(AuditLog).order_by(col(AuditLog.id))).all()
        plan = session.exec(select(Suggestion)).one()
    assert [o.payload["n"] for o in outbox] == [0, 1, 2]  # type: ignore[index]
    assert outbox[0].payload == {
        "n": 0,
        "text": 'é \u2028 "quoted"',
        "nested": [1.5, None, True, {"big": 2**62}],
    }
    assert {(o.status, o.attempts, o.last_error, o.delivered_at) for o in outbox} == {
        ("local", 0, None, None)
    }
    assert {o.next_attempt_at for o in outbox} == {at} and {o.created_at for o in outbox} == {at}
    assert [(a.detail, a.target, a.at) for a in audit] == [({"i": i}, None, at) for i in range(3)]
    assert len({a.id for a in audit}) == 3 and len({o.id for o in outbox}) == 3
    assert (plan.version, plan.remote_id, plan.remote_version, plan.resource) == (
        2,
        None,
        None,
        {"resourceType": "CarePlan", "id": "c-1"},
    )
    assert (listed.due, listed.name, listed.alerts, listed.evaluated_at) == (date(2026, 4, 1), None, "", at)
    engine.dispose()


def test_a_naive_datetime_is_refused_and_nothing_is_stored(db_url: str) -> None:
    engine = make_engine(db_url)
    rows = NewRows()
    rows.add(AuditLog, at=datetime(2026, 3, 17, 9, 30), actor="worker:x", action="evaluate", detail={})
    with pytest.raises(Exception, match="naive datetime"), session_scope(engine) as session:
        rows.insert(session)
    with session_scope(engine) as session:
        assert session.exec(select(AuditLog)).all() == []
    engine.dispose()
