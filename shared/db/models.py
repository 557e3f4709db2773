"""The one relational schema (ARCHITECTURE "State"). Alembic migrations mirror these tables.

Keys:
- a patient is ``{source}:{patient id}`` (``patient_key``) wherever it is stored;
- JSON columns are JSON on SQLite and JSONB on PostgreSQL;
- timestamps are timezone-aware UTC on both (:class:`UTCDateTime`).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on SQLite (which has no time zones) and PostgreSQL alike."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime stored; use timezone-aware values")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_type=JSONType, nullable=nullable)


def _ts(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


class Resource(SQLModel, table=True):
    """Latest version of every kept FHIR resource, per source × type × id."""

    __tablename__ = "resource"
    __table_args__ = (
        sa.UniqueConstraint("source", "resource_type", "resource_id", name="uq_resource_identity"),
        sa.Index("ix_resource_patient", "patient_key", "resource_type"),
    )

    pk: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=64)
    resource_type: str = Field(max_length=64)
    resource_id: str = Field(max_length=128)
    patient_key: str | None = Field(default=None, max_length=200)
    version_id: str | None = Field(default=None, max_length=64)
    last_updated: datetime | None = _ts()
    content_hash: str = Field(max_length=64)
    deleted: bool = False
    raw: dict[str, Any] | None = _json()
    received_at: datetime = _ts(nullable=False)


class DeadLetter(SQLModel, table=True):
    """Every rejected payload and every parked delivery, verbatim, with why; replayable."""

    __tablename__ = "dead_letter"

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=64, index=True)
    kind: str = Field(max_length=32)  # push | notification | fetch | import | delivery
    reason: str
    content_type: str | None = Field(default=None, max_length=200)
    payload: bytes = Field(sa_type=sa.LargeBinary)
    outcome: dict[str, Any] | None = _json()
    context: dict[str, Any] | None = _json()
    status: str = Field(default="new", max_length=16, index=True)  # new | replayed | failed
    replay_count: int = 0
    created_at: datetime = _ts(nullable=False, index=True)
    replayed_at: datetime | None = _ts()
    # dl03: the same payload rejected again (a re-delivery, a re-import) counts on its open row
    digest: str | None = Field(default=None, max_length=64, index=True)
    occurrences: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    last_seen_at: datetime | None = _ts()


class EvaluationQueue(SQLModel, table=True):
    """The dirty set: one row per patient to (re-)evaluate; bursts coalesce into one row.

    ``generation`` grows on every mark, so a worker that evaluated generation g deletes the row
    only if no new mark arrived meanwhile (nothing is lost).
    """

    __tablename__ = "evaluation_queue"
    # the claim's order: a claim reads its batch off this index whatever the queue's depth (one
    # instant for everyone marked at once, a re-evaluation of everyone, sorted nothing)
    __table_args__ = (sa.Index("ix_evaluation_queue_claim_order", "dirty_since", "patient_key"),)

    patient_key: str = Field(primary_key=True, max_length=200)
    generation: int = 1
    dirty_since: datetime = _ts(nullable=False)
    claimed_by: str | None = Field(default=None, max_length=100)
    claimed_until: datetime | None = _ts()
    attempts: int = 0
    last_error: str | None = None


class Inbox(SQLModel, table=True):
    """id-only and empty notifications awaiting their fetch from the source."""

    __tablename__ = "inbox"
    __table_args__ = (sa.Index("ix_inbox_due", "status", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=64)
    subscription: str | None = Field(default=None, max_length=200)
    event_number: int | None = None
    kind: str = Field(max_length=16)  # id-only | empty | ping | gap
    reference: str | None = Field(default=None, max_length=300)
    since: datetime | None = _ts()
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = _ts(nullable=False)
    last_error: str | None = None
    received_at: datetime = _ts(nullable=False)


class SubscriptionEvent(SQLModel, table=True):
    """Event numbers received per subscription: an insert-only log (a replay conflicts on the key
    and is no new event), so notifications of one subscription are booked without serialising on
    a shared row; gaps are the holes between numbers (found by the subscription worker)."""

    __tablename__ = "subscription_event"

    source: str = Field(primary_key=True, max_length=64)
    subscription: str = Field(primary_key=True, max_length=200)
    event_number: int = Field(primary_key=True, sa_type=sa.BigInteger)
    received_at: datetime = _ts(nullable=False)


class SubscriptionState(SQLModel, table=True):
    """Per upstream subscription: last event number, heartbeat, status."""

    __tablename__ = "subscription_state"

    source: str = Field(primary_key=True, max_length=64)
    subscription: str = Field(primary_key=True, max_length=200)
    topic: str | None = None
    status: str = Field(default="active", max_length=32)
    last_event_number: int | None = Field(default=None, sa_type=sa.BigInteger)
    heartbeat_period: int | None = None
    last_heartbeat_at: datetime | None = _ts()
    last_notification_at: datetime | None = _ts()
    last_reconciled_at: datetime | None = _ts()
    updated_at: datetime = _ts(nullable=False)
    # subs01: the source's server time up to which reconciliation has read (its "(source)" row),
    # and how many event-number gaps were detected (for ops).
    watermark: datetime | None = _ts()
    gaps_detected: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class Assessment(SQLModel, table=True):
    """Current verdict per patient × pathway × target, with its evidence."""

    __tablename__ = "assessment"

    key: str = Field(primary_key=True, max_length=400)  # the CarePlan identifier value
    patient_key: str = Field(max_length=200, index=True)
    pathway: str = Field(max_length=40)
    verdict: str = Field(max_length=40)
    document: dict[str, Any] | None = _json()
    content_hash: str = Field(max_length=64)
    status: str = Field(default="current", max_length=16)  # current | revoked
    evaluated_at: datetime = _ts(nullable=False)


class Suggestion(SQLModel, table=True):
    """FHIR resources Pinpoint wrote (CarePlan, ServiceRequest, Provenance, DetectedIssue)."""

    __tablename__ = "suggestion"
    __table_args__ = (sa.Index("ix_suggestion_patient", "patient_key", "resource_type"),)

    resource_type: str = Field(primary_key=True, max_length=40)
    resource_id: str = Field(primary_key=True, max_length=64)
    identifier: str = Field(max_length=400)
    patient_key: str = Field(max_length=200)
    version: int = 1
    resource: dict[str, Any] | None = _json()
    content_hash: str = Field(max_length=64)
    remote_id: str | None = Field(default=None, max_length=128)
    remote_version: str | None = Field(default=None, max_length=64)
    updated_at: datetime = _ts(nullable=False)


class Outbox(SQLModel, table=True):
    """FHIR writes to deliver to the write-back server, in order per patient."""

    __tablename__ = "outbox"
    __table_args__ = (sa.Index("ix_outbox_due", "status", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    patient_key: str = Field(max_length=200, index=True)
    payload: dict[str, Any] | None = _json()
    status: str = Field(default="pending", max_length=16)  # pending | sent | local | parked
    attempts: int = 0
    next_attempt_at: datetime = _ts(nullable=False)
    last_error: str | None = None
    created_at: datetime = _ts(nullable=False)
    delivered_at: datetime | None = _ts()


class CdsFeedback(SQLModel, table=True):
    """Feedback from EHRs on cards (CDS Hooks 2.0), stored idempotently."""

    __tablename__ = "cds_feedback"
    __table_args__ = (sa.UniqueConstraint("service_id", "card", "outcome", "outcome_at", name="uq_feedback"),)

    id: int | None = Field(default=None, primary_key=True)
    service_id: str = Field(max_length=100)
    card: str = Field(max_length=100)
    outcome: str = Field(max_length=20)
    outcome_at: str = Field(max_length=40)
    body: dict[str, Any] | None = _json()
    received_at: datetime = _ts(nullable=False)


class SeenJti(SQLModel, table=True):
    """JWT ids already accepted from CDS clients (replay protection) until they expire."""

    __tablename__ = "seen_jti"

    iss: str = Field(primary_key=True, max_length=300)
    jti: str = Field(primary_key=True, max_length=200)
    expires_at: datetime = _ts(nullable=False, index=True)


class AuditLog(SQLModel, table=True):
    """Who called what: actor, action and target ids, never patient data in clear text."""

    __tablename__ = "audit_log"
    # feedback finds the card it is about by (action "cds.card", target card uuid)
    __table_args__ = (sa.Index("ix_audit_log_action_target", "action", "target"),)

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts(nullable=False, index=True)
    actor: str = Field(max_length=200)
    action: str = Field(max_length=100)
    target: str | None = Field(default=None, max_length=400)
    detail: dict[str, Any] | None = _json()


class WorklistEntry(SQLModel, table=True):
    """The clinic's worklist: one row per current assessment (patient × pathway × target), in
    plain words, written with the assessment by the worker. ``attention`` orders the list (0
    needs a clinician first); ``due`` is the earliest date ``9999-12-31`` when there is none, so
    ``(attention, due, key)`` is a total order for keyset paging."""

    __tablename__ = "worklist_entry"
    __table_args__ = (
        sa.Index("ix_worklist_order", "attention", "due", "key"),
        sa.Index("ix_worklist_pathway_order", "pathway", "attention", "due", "key"),
        sa.Index("ix_worklist_verdict_order", "verdict", "attention", "due", "key"),
        sa.Index("ix_worklist_source_order", "source", "attention", "due", "key"),
        # search by any part of a name, identifier or id: a trigram index on PostgreSQL
        sa.Index(
            "ix_worklist_search", "search", postgresql_using="gin", postgresql_ops={"search": "gin_trgm_ops"}
        ),
    )

    key: str = Field(primary_key=True, max_length=400)  # the assessment's key
    patient_key: str = Field(max_length=200, index=True)
    source: str = Field(max_length=64)
    patient_id: str = Field(max_length=128)
    name: str | None = Field(default=None, max_length=300)
    search: str = Field(max_length=1000)  # lower-case name, identifiers and id
    pathway: str = Field(max_length=40)
    target: str = Field(max_length=200)
    verdict: str = Field(max_length=40)
    reason: str = Field(max_length=300)
    attention: int
    due: date
    alerts: str = Field(default="", max_length=400)  # ",code,code," (empty: none)
    evaluated_at: datetime = _ts(nullable=False)


class EvidenceSnapshot(SQLModel, table=True):
    """What a CDS card was drawn from, kept for its evidence link until ``expires_at``
    (``cds.evidence_retention``): the §3 entry, the minimum facts it used (blocks, readings,
    agents), the policy values and the patient's name, birth date and sex — never raw resources."""

    __tablename__ = "evidence_snapshot"

    card: str = Field(primary_key=True, max_length=64)  # the card's uuid
    patient_key: str = Field(max_length=400, index=True)
    service_id: str = Field(max_length=100)
    created_at: datetime = _ts(nullable=False)
    expires_at: datetime = _ts(nullable=False, index=True)
    snapshot: dict[str, Any] | None = _json(nullable=False)


class OutcomeCache(SQLModel, table=True):
    """Per patient, the practice outcomes summary's rows (issue 19) as last computed, reused while
    nothing they were computed from changed: the same ``fingerprint`` (the patient's stored
    resources and those they reference, by content), the same ``engine`` (policy and rule code)
    and a date from ``computed_for`` up to ``valid_until``. A derived cache: dropping it is safe."""

    __tablename__ = "outcome_cache"

    patient_key: str = Field(primary_key=True, max_length=200)
    fingerprint: str = Field(max_length=64)
    engine: str = Field(max_length=300)
    computed_for: datetime = _ts(nullable=False)
    valid_until: datetime | None = _ts()
    refs: list[Any] | None = _json()  # [[type, id], …] referenced resources outside the patient
    rows: list[Any] | None = _json()  # [[outcome, criteria met the day before], …]
