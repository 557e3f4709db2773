"""The suggestions' repository: what Pinpoint wrote for each patient — suggestions, assessments and
outbox entries. Everything runs in the caller's transaction; nothing here commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from services.recommender.engine.policy import PolicyRef
from services.recommender.suggestions import builders as sg
from services.recommender.worklist.repository import load_state, sync_worklist
from shared.db.models import Assessment, Outbox, Suggestion, WorklistEntry, utcnow
from shared.db.session import NewRows
from shared.fhir.resources import validate_r4

SUGGESTION_TYPES = ("CarePlan", "ServiceRequest", "Provenance", "DetectedIssue", "Observation")


@dataclass
class Preloaded:
    """The stored suggestions (Provenance excluded), assessments, worklist rows and Patient
    resources of a batch of patients."""

    suggestions: dict[str, list[Suggestion]]
    assessments: dict[str, list[Assessment]]
    worklist: dict[str, list[WorklistEntry]]
    patients: dict[str, dict[str, Any]]


def preload(
    session: Session,
    patient_keys: Sequence[str],
    patients: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> Preloaded:
    """One query per table for a whole batch of patients (nothing is read per patient after).
    ``patients``: the Patient resources already read (:func:`load_state`'s ``known``)."""
    suggestions: dict[str, list[Suggestion]] = {k: [] for k in patient_keys}
    assessments: dict[str, list[Assessment]] = {k: [] for k in patient_keys}
    if patient_keys:
        for row in session.exec(
            select(Suggestion).where(
                col(Suggestion.patient_key).in_(patient_keys), Suggestion.resource_type != "Provenance"
            )
        ):
            suggestions[row.patient_key].append(row)
        for arow in session.exec(select(Assessment).where(col(Assessment.patient_key).in_(patient_keys))):
            assessments[arow.patient_key].append(arow)
    worklist, found = load_state(session, patient_keys, patients)
    return Preloaded(suggestions, assessments, worklist, found)


@dataclass
class Applied:
    """What one evaluation changed: counts per kind of write."""

    created: int = 0
    updated: int = 0
    withdrawn: int = 0
    unchanged: int = 0
    outbox: int = 0
    groups: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.withdrawn)


def apply_entry(
    session: Session,
    patient_key: str,
    entry: Mapping[str, Any],
    policy: PolicyRef,
    *,
    deliver: bool,
    written_at: datetime | None = None,
    preloaded: Preloaded | None = None,
    new_rows: NewRows | None = None,
) -> Applied:
    """Make the stored suggestions, assessments and outbox match one patient's §3 entry.

    Unchanged groups are not touched; a changed group gets a new version of every member, a
    Provenance and one outbox entry; a group no longer wanted is withdrawn (CarePlan and
    ServiceRequest ``revoked``, DetectedIssue ``cancelled``) the same way. ``new_rows``: where a
    batch collects the rows it creates (the caller inserts them); without it they are inserted
    before this returns.
    """
    batch = new_rows
    new_rows = new_rows or NewRows()
    applied = Applied()
    at = written_at or utcnow()
    pre = preloaded or preload(session, [patient_key])
    existing = {(row.resource_type, row.resource_id): row for row in pre.suggestions.get(patient_key, [])}
    wanted = sg.desired_groups(patient_key, entry, policy)
    wanted_ids: set[tuple[str, str]] = set()
    for group in wanted:
        members = [(m, existing.get((m.resource_type, m.resource_id))) for m in group.members]
        wanted_ids.update((m.resource_type, m.resource_id) for m in group.members)
        hashes = [sg.content_hash(m.body) for m in group.members]
        if all(
            row is not None and row.content_hash == h for (_, row), h in zip(members, hashes, strict=True)
        ):
            applied.unchanged += 1
            continue
        created = members[0][1] is None
        _write_group(
            session,
            patient_key,
            group.key,
            [
                (m.resource_type, m.resource_id, m.identifier, m.body, h, row)
                for (m, row), h in zip(members, hashes, strict=True)
            ],
            group.inputs,
            policy,
            at,
            new_rows,
            deliver=deliver,
            action="create" if created else "update",
        )
        applied.created += created
        applied.updated += not created
        applied.outbox += 1
        applied.groups.append(group.key)
    _sync_assessments(
        session,
        patient_key,
        [g for g in wanted if g.assessment is not None],
        policy,
        at,
        pre.assessments.get(patient_key, []),
        new_rows,
    )
    sync_worklist(
        session,
        patient_key,
        [(g.key, g.assessment) for g in wanted if g.assessment is not None],
        entry.get("alerts") or [],
        at,
        current=pre.worklist.get(patient_key, []),
        patient=pre.patients.get(patient_key),
        new_rows=new_rows,
    )

    stale: dict[str, list[Suggestion]] = {}
    for ident, row in existing.items():
        if ident in wanted_ids or row.resource is None or sg.is_withdrawn(row.resource):
            continue
        stale.setdefault(row.identifier.removesuffix(":request"), []).append(row)
    for key, rows in sorted(stale.items()):
        rows.sort(key=lambda r: SUGGESTION_TYPES.index(r.resource_type))
        items = []
        for r in rows:
            body = sg.withdrawn(r.resource or {})
            items.append((r.resource_type, r.resource_id, r.identifier, body, sg.content_hash(body), r))
        _write_group(
            session, patient_key, key, items, (), policy, at, new_rows, deliver=deliver, action="revoke"
        )
        applied.withdrawn += 1
        applied.outbox += 1
        applied.groups.append(key)
    if batch is None:
        new_rows.insert(session)
    return applied


def _write_group(
    session: Session,
    patient_key: str,
    key: str,
    items: Sequence[tuple[str, str, str, dict[str, Any], str, Suggestion | None]],
    inputs: Iterable[str],
    policy: PolicyRef,
    now: datetime,
    new_rows: NewRows,
    *,
    deliver: bool,
    action: str,
) -> None:
    """Write every member with one new version (the group's revision), its Provenance, an outbox row.
    ``items``: (type, id, identifier, body, its content hash, the stored row or None)."""
    revision = max((row.version for *_, row in items if row is not None), default=0) + 1
    written: list[dict[str, Any]] = []
    for rtype, rid, identifier, body, digest, row in items:
        resource = sg.with_meta(body, revision, now)
        validate_r4(resource)
        if row is None:
            new_rows.add(
                Suggestion,
                resource_type=rtype,
                resource_id=rid,
                identifier=identifier,
                patient_key=patient_key,
                version=revision,
                resource=resource,
                content_hash=digest,
                updated_at=now,
            )
        else:
            row.patient_key = patient_key
            row.version = revision
            row.resource = resource
            row.content_hash = digest
            row.updated_at = now
            session.add(row)
        written.append(resource)
    prov = sg.provenance(
        key,
        revision,
        [(r["resourceType"], r["id"], revision) for r in written],
        list(inputs),
        policy,
        now,
        created=action == "create",
    )
    validate_r4(prov)
    new_rows.add(
        Suggestion,
        resource_type="Provenance",
        resource_id=prov["id"],
        identifier=f"{key}:provenance:{revision}",
        patient_key=patient_key,
        version=1,
        resource=prov,
        content_hash=sg.content_hash(prov),
        updated_at=now,
    )
    # Upstream order: the request first so the CarePlan's activity can point at it.
    ordered = sorted(written, key=lambda r: 0 if r["resourceType"] == "ServiceRequest" else 1)
    new_rows.add(
        Outbox,
        patient_key=patient_key,
        payload={
            "patient": patient_key,
            "group": key,
            "action": action,
            "revision": revision,
            "resources": [*ordered, prov],
        },
        status="pending" if deliver else "local",
        next_attempt_at=now,
        created_at=now,
    )


def _sync_assessments(
    session: Session,
    patient_key: str,
    groups: list[sg.Group],
    policy: PolicyRef,
    now: datetime,
    current: list[Assessment],
    new_rows: NewRows,
) -> None:
    rows = {row.key: row for row in current}
    keep: set[str] = set()
    for g in groups:
        assert g.assessment is not None
        keep.add(g.key)
        doc = {"policy": {"id": policy.id, "version": policy.version}, **dict(g.assessment)}
        digest = sg.content_hash(doc)
        row = rows.get(g.key)
        if row is not None and row.content_hash == digest and row.status == "current":
            continue
        if row is None:
            new_rows.add(
                Assessment,
                key=g.key,
                patient_key=patient_key,
                pathway=str(g.assessment.get("pathway")),
                verdict=str(g.assessment.get("verdict")),
                document=doc,
                content_hash=digest,
                status="current",
                evaluated_at=now,
            )
            continue
        row.pathway = str(g.assessment.get("pathway"))
        row.verdict = str(g.assessment.get("verdict"))
        row.document = doc
        row.content_hash = digest
        row.status = "current"
        row.evaluated_at = now
        session.add(row)
    for key, row in rows.items():
        if key not in keep and row.status != "revoked":
            row.status = "revoked"
            row.evaluated_at = now
            session.add(row)


def search_suggestions(
    session: Session,
    resource_type: str,
    *,
    patient_key: str | None = None,
    identifier: str | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    query = select(Suggestion.resource).where(Suggestion.resource_type == resource_type)
    if patient_key is not None:
        query = query.where(Suggestion.patient_key == patient_key)
    if identifier is not None:
        query = query.where(Suggestion.identifier == identifier)
    query = query.order_by(col(Suggestion.identifier)).limit(limit)
    return [dict(r) for r in session.exec(query).all() if r]


def read_suggestion(session: Session, resource_type: str, resource_id: str) -> Suggestion | None:
    return session.get(Suggestion, (resource_type, resource_id))
