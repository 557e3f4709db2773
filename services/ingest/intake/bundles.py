"""Pushed payloads (CONTRACT §2 Ingest): Bundles by type and single resources.

- ``transaction``: all-or-nothing for the kept resources; ``transaction-response``. An invalid
  kept entry rejects the whole Bundle (400; the Bundle becomes a dead letter).
- ``batch`` / ``collection`` / ``searchset`` / ``message`` / ``document`` / anything else: entry by
  entry, ``batch-response`` with a status per entry (dropped entries: 200 with an informational
  OperationOutcome); nested Bundles are unwrapped into their entry.
- ``history`` / ``subscription-notification``: notifications (:mod:`.notifications`).

Nothing here commits: the caller's unit of work makes the writes durable before it answers.
Rejected parts come back as :class:`Rejection` for the caller to keep as dead letters.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlmodel import Session

from services.ingest.intake import notifications
from services.ingest.intake.pipeline import (
    Candidate,
    Decision,
    Rejection,
    Result,
    Tally,
    check,
    informational,
    prepare,
)
from services.ingest.intake.references import ReferenceResolver
from services.ingest.intake.repository import StoreResult, delete_resource, store_resources
from shared.errors import Issue, operation_outcome
from shared.fhir.bundle import local_reference
from shared.logging import get_logger
from shared.settings import Source

log = get_logger("pinpoint.ingest")

NOTIFICATION_TYPES = frozenset({"history", "subscription-notification"})


@dataclass
class Slot:
    """One top-level Bundle entry: its resources (nested Bundles unwrapped) or a delete."""

    index: int
    entry: Mapping[str, Any]
    candidates: list[Candidate] = field(default_factory=list)
    delete: tuple[str, str] | None = None
    note: str | None = None
    decisions: list[Decision] = field(default_factory=list)


def flatten(resource: Mapping[str, Any], full_url: str | None, slot: int) -> Iterator[Candidate]:
    """The resources of a (possibly nested) Bundle entry; entries without ``resource`` skipped."""
    if resource.get("resourceType") != "Bundle":
        yield Candidate(slot, resource if isinstance(resource, dict) else dict(resource), full_url)
        return
    for entry in resource.get("entry") or ():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("resource"), Mapping):
            continue
        url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
        yield from flatten(entry["resource"], url, slot)


def explode(bundle: Mapping[str, Any]) -> list[Slot]:
    slots: list[Slot] = []
    entries = bundle.get("entry")
    for index, entry in enumerate(entries if isinstance(entries, list) else ()):
        if not isinstance(entry, Mapping):
            slots.append(Slot(index, {}, note="entry is not an object"))
            continue
        slot = Slot(index, entry)
        resource = entry.get("resource")
        request: Mapping[str, Any] = entry["request"] if isinstance(entry.get("request"), Mapping) else {}
        full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
        if isinstance(resource, Mapping):
            slot.candidates = list(flatten(resource, full_url, index))
        elif str(request.get("method", "")).upper() == "DELETE" and isinstance(request.get("url"), str):
            target = local_reference(request["url"]).split("?")[0]
            rtype, _, rid = target.partition("/")
            if rtype and rid and "/" not in rid:
                slot.delete = (rtype, rid)
            else:
                slot.note = "conditional DELETE is not supported; nothing done"
        else:
            slot.note = "entry without a resource: nothing to store"
        slots.append(slot)
    return slots


def _resolver(session: Session, source: Source, slots: list[Slot]) -> ReferenceResolver:
    return ReferenceResolver(session, source, ((c.full_url, c.resource) for s in slots for c in s.candidates))


def _issues(decisions: list[Decision]) -> list[Issue]:
    out: list[Issue] = []
    for d in decisions:
        if d.status == "rejected":
            where = f"{d.candidate.resource_type}/{d.candidate.resource.get('id', '?')}"
            out.extend(Issue(i.code, f"{where}: {i.diagnostics}", expression=i.expression) for i in d.issues)
    return out or [Issue("invalid", "invalid entry")]


def _count(tally: Tally, decisions: list[Decision]) -> None:
    for d in decisions:
        tally.add(d.candidate.resource_type, d.status)


def _entry_response(slot: Slot, results: dict[int, StoreResult]) -> dict[str, Any]:
    if slot.note:
        return {"response": {"status": "200 OK", "outcome": informational(slot.note)}}
    if slot.delete:
        return {
            "response": {
                "status": "200 OK",
                "outcome": informational(f"{slot.delete[0]}/{slot.delete[1]} deleted"),
            }
        }
    stored = [results[id(d)] for d in slot.decisions if id(d) in results]
    if stored:
        first = stored[0]
        status = "201 Created" if any(r.outcome == "created" for r in stored) else "200 OK"
        response: dict[str, Any] = {
            "status": status,
            "location": f"{first.resource_type}/{first.resource_id}",
        }
        if first.version:
            response["etag"] = f'W/"{first.version}"'
        if any(r.outcome == "stale" for r in stored):
            response["outcome"] = informational("a newer version is already stored; kept that one")
        return {"response": response}
    reasons = sorted({d.reason for d in slot.decisions if d.reason}) or ["no resource Pinpoint keeps"]
    return {"response": {"status": "200 OK", "outcome": informational("Not kept: " + "; ".join(reasons))}}


def _store(session: Session, source: Source, slots: list[Slot]) -> dict[int, StoreResult]:
    kept = [d for s in slots for d in s.decisions if d.prepared is not None]
    results = store_resources(session, source.id, [d.prepared for d in kept if d.prepared is not None])
    return {id(d): r for d, r in zip(kept, results, strict=True)}


def _deletes(session: Session, source: Source, slots: list[Slot]) -> None:
    for slot in slots:
        if slot.delete:
            delete_resource(session, source.id, *slot.delete)


def _explicit_identity(slot: Slot, candidate: Candidate, resolver: ReferenceResolver) -> str | None:
    """``Type/id`` an entry writes when the sender named it: ``resource.id``, a ``urn:uuid:``
    fullUrl, or a conditional update/create (``request.url``/``ifNoneExist``) resolved against the
    payload and the store. ``None`` for a content-hash identity (nothing named, nothing to clash)."""
    rtype = candidate.resource.get("resourceType")
    if not isinstance(rtype, str):
        return None
    rid = candidate.resource.get("id")
    if isinstance(rid, str) and rid:
        return f"{rtype}/{rid}"
    if candidate.full_url and candidate.full_url.startswith("urn:uuid:"):
        return f"{rtype}/{candidate.full_url[len('urn:uuid:') :]}"
    request = slot.entry.get("request")
    if isinstance(request, Mapping):
        url, if_none = request.get("url"), request.get("ifNoneExist")
        for conditional in (url, f"{rtype}?{if_none}" if isinstance(if_none, str) else None):
            if isinstance(conditional, str) and "?" in conditional:
                resolved = resolver.conditional_identity(conditional, candidate.resource, candidate.full_url)
                if resolved is not None:
                    return resolved
    return None


def overlaps(slots: list[Slot], resolver: ReferenceResolver) -> list[Issue]:
    """FHIR transaction rules: a resource appears in a transaction once — no two entries with
    the same fullUrl, none writing or deleting the same ``Type/id`` (conditional identities
    resolved). One issue per clash, naming the entries."""
    by_url: dict[str, list[int]] = defaultdict(list)
    by_identity: dict[str, list[int]] = defaultdict(list)
    for slot in slots:
        url = slot.entry.get("fullUrl")
        if isinstance(url, str) and url:
            by_url[url].append(slot.index)
        if slot.delete:
            by_identity["/".join(slot.delete)].append(slot.index)
        for candidate in slot.candidates:
            identity = _explicit_identity(slot, candidate, resolver)
            if identity is not None:
                by_identity[identity].append(slot.index)
    issues: list[Issue] = []
    for what, groups in (("have the same fullUrl", by_url), ("write", by_identity)):
        for key, indexes in groups.items():
            if len(indexes) < 2:
                continue
            where = tuple(f"Bundle.entry[{i}]" for i in indexes)
            names = ", ".join(where[:-1]) + f" and {where[-1]}"
            text = f"{names} {what} {key}"
            issues.append(
                Issue("invalid", f"{text}: a transaction names each resource once", expression=where)
            )
    return issues


def process_transaction(session: Session, source: Source, bundle: Mapping[str, Any], raw: bytes) -> Result:
    """All-or-nothing for the kept resources (deletes first, then the writes, as FHIR orders them).
    Overlapping identities fail it whole (:func:`overlaps`)."""
    tally = Tally()
    slots = explode(bundle)
    resolver = _resolver(session, source, slots)
    clashes = overlaps(slots, resolver)
    if clashes:
        outcome = operation_outcome([Issue("invalid", "transaction rejected: nothing was stored"), *clashes])
        reason = f"transaction rejected: {clashes[0].diagnostics}"
        return Result(400, outcome, tally, [Rejection(raw, reason, outcome, {"bundle": "transaction"})])
    for slot in slots:
        slot.decisions = [check(c) for c in slot.candidates]
    rejected = [d for s in slots for d in s.decisions if d.status == "rejected"]
    if rejected:
        _count(tally, [d for s in slots for d in s.decisions])
        issues = _issues(rejected)
        outcome = operation_outcome([Issue("invalid", "transaction rejected: nothing was stored"), *issues])
        reason = f"transaction rejected: {rejected[0].reason}"
        return Result(400, outcome, tally, [Rejection(raw, reason, outcome, {"bundle": "transaction"})])
    for slot in slots:
        slot.decisions = [prepare(d, resolver) for d in slot.decisions]
        _count(tally, slot.decisions)
    _deletes(session, source, slots)
    results = _store(session, source, slots)
    entries = [_entry_response(slot, results) for slot in slots]
    return Result(
        200,
        {"resourceType": "Bundle", "type": "transaction-response", "entry": entries},
        tally,
        stored=list(results.values()),
    )


def process_entries(session: Session, source: Source, slots: list[Slot]) -> Result:
    """Entry by entry: an invalid entry is a 400 in its place and a dead letter; others stored."""
    tally = Tally()
    rejections: list[Rejection] = []
    bad: dict[int, list[Issue]] = {}
    for slot in slots:
        slot.decisions = [check(c) for c in slot.candidates]
        rejected = [d for d in slot.decisions if d.status == "rejected"]
        if rejected:
            issues = _issues(rejected)
            bad[slot.index] = issues
            outcome = operation_outcome(issues)
            rejections.append(
                Rejection(orjson.dumps(slot.entry), rejected[0].reason, outcome, {"entry": slot.index})
            )
            _count(tally, slot.decisions)
            slot.decisions = []
    resolver = _resolver(session, source, [s for s in slots if s.index not in bad])
    for slot in slots:
        if slot.index in bad:
            continue
        slot.decisions = [prepare(d, resolver) for d in slot.decisions]
        _count(tally, slot.decisions)
    _deletes(session, source, slots)
    results = _store(session, source, slots)
    entries = []
    for slot in slots:
        if slot.index in bad:
            entries.append(
                {"response": {"status": "400 Bad Request", "outcome": operation_outcome(bad[slot.index])}}
            )
        else:
            entries.append(_entry_response(slot, results))
    body = {"resourceType": "Bundle", "type": "batch-response", "entry": entries}
    return Result(200, body, tally, rejections, stored=list(results.values()))


def process_bundle(session: Session, source: Source, bundle: Mapping[str, Any], raw: bytes) -> Result:
    btype = bundle.get("type")
    if btype == "transaction" and not notifications.is_transaction_notification(bundle):
        result = process_transaction(session, source, bundle, raw)
    elif btype in (*NOTIFICATION_TYPES, "transaction") and notifications.is_notification(bundle):
        result = notifications.handle(
            session, source, bundle, lambda rest: process_entries(session, source, explode(rest))
        )
    else:
        result = process_entries(session, source, explode(bundle))
    log.info(
        "ingest.bundle.processed",
        source=source.id,
        bundle_type=str(btype),
        status=result.status,
        kept=result.tally.total("kept"),
        dropped=result.tally.total("dropped"),
        unresolved=result.tally.total("unresolved"),
        rejected=result.tally.total("rejected"),
    )
    return result


def process_resource(session: Session, source: Source, resource: dict[str, Any], raw: bytes) -> Result:
    """One resource pushed on its own: stored (201/200, the stored resource echoed), dropped
    (200, informational OperationOutcome) or rejected (400, a dead letter)."""
    slot = Slot(0, {"resource": resource}, [Candidate(0, resource)])
    result = process_entries(session, source, [slot])
    if result.rejections:
        outcome = result.rejections[0].outcome
        result.rejections[0] = Rejection(raw, result.rejections[0].reason, outcome, {})
        return Result(400, outcome, result.tally, result.rejections)
    response = result.body["entry"][0]["response"]
    if result.stored and result.stored[0].outcome != "stale":
        stored = result.stored[0]
        headers = {"Location": f"{stored.resource_type}/{stored.resource_id}"}
        if stored.version:
            headers["ETag"] = f'W/"{stored.version}"'
        status = 201 if stored.outcome == "created" else 200
        return Result(status, resource, result.tally, headers=headers, stored=result.stored)
    return Result(200, response.get("outcome") or informational("stored"), result.tally, stored=result.stored)


def process_payload(session: Session, source: Source, data: dict[str, Any], raw: bytes) -> Result:
    if data.get("resourceType") == "Bundle":
        return process_bundle(session, source, data, raw)
    return process_resource(session, source, data, raw)
