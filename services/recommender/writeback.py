"""Write-back: deliver the outbox to the hospital's FHIR server (CONTRACT §5, STANDARDS §3–§4).

Every outbox entry is one change of one suggestion group (a CarePlan and its ServiceRequest, or
a DetectedIssue) plus its Provenance. It goes upstream as ONE transaction Bundle:

- a member the server has never acknowledged: ``POST {type}`` with
  ``ifNoneExist: identifier=urn:pinpoint:recommendation|{key}`` and an ``urn:uuid`` fullUrl, so a
  repeated delivery cannot create a duplicate;
- a member the server returned before: ``PUT {type}?identifier=…`` with
  ``ifMatch: W/"{the version the server last returned}"`` (``suggestion.remote_version``);
- the Provenance: ``POST Provenance`` pointing at the members (``urn:uuid`` or server ids).

The server's ids and versions from the transaction-response are recorded in
``suggestion.remote_id`` / ``remote_version``.

**Exactly once in effect.** A worker *claims* an entry by bumping ``attempts`` and moving
``next_attempt_at`` a lease ahead (committed before anything is sent). A claim with
``attempts > 1`` means an earlier attempt may have reached the server (timeout, crash, kill):
the members are then *probed* (searched by identifier) first; when the server already holds
exactly what this entry would write, the entry is marked sent without writing again. A 409/412
(someone else changed the resource, or our version is stale) also probes, then retries with the
server's current version (at most :data:`ROUNDS` rounds).

**Order.** An entry is claimable only when no earlier ``pending`` entry of the same patient
exists, so a patient's changes reach the server in the order they were made, while other
patients proceed. A ``parked`` entry does not hold the patient back (it is a dead letter, see
below); when it is replayed after a later change of the same group was delivered, it is
``skipped`` instead of overwriting newer content.

**Faults.** 429, 5xx, timeouts, transport and token failures: ``next_attempt_at`` = now + the
server's ``Retry-After``, else full-jitter exponential backoff (``writeback.backoff`` doubling,
at most ``writeback.max_backoff``). After ``writeback.max_attempts`` attempts — or at once for an
answer that cannot improve (400, 405, 410, 422, an invalid R5 conversion) — the entry is
``parked`` and kept as a dead letter (kind ``delivery``) with the server's OperationOutcome;
replaying it (CLI or admin API, dispatched by kind through ``shared.db.deadletters``) requeues it.

Evaluation never waits for any of this: the worker only appends to the outbox.
"""

from __future__ import annotations

import asyncio
import copy
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx
import orjson
import sqlalchemy as sa
from prometheus_client import Counter, Histogram
from sqlalchemy.engine import Engine

from services.recommender.suggestions.builders import SYSTEM, split_patient_key
from shared.db.deadletters import record_dead_letter
from shared.db.models import DeadLetter, Outbox, Suggestion, utcnow
from shared.db.session import session_scope
from shared.errors import Issue, PinpointError, operation_outcome
from shared.fhir.client import FHIR_JSON, FhirClient, RetryPolicy
from shared.fhir.errors import (
    FhirClientError,
    FhirHttpError,
    FhirInvalidResponse,
    FhirTransportError,
    FhirVersionConflict,
    ForeignUrlError,
    SmartAuthError,
)
from shared.fhir.resources import ResourceInvalid, validate_r5
from shared.humanize import plural
from shared.logging import get_logger
from shared.settings import Settings, Source, Writeback

if TYPE_CHECKING:
    from shared.web import Check  # a type only: the worker process loads no web framework

log = get_logger("pinpoint.writeback")

#: What the delivery client asks the token endpoint for (least privilege; SMART v2 syntax).
WRITEBACK_SCOPES = (
    "system/CarePlan.cu system/ServiceRequest.cu system/Provenance.c system/DetectedIssue.cu"
    " system/Observation.cu"
)
#: Transaction rounds per claim when the server reports a version conflict (409/412).
ROUNDS = 3
#: Statuses that a retry cannot fix: the entry is parked at once.
PERMANENT_STATUS = frozenset({400, 405, 410, 422})

DELIVERIES = Counter(
    "pinpoint_writeback_deliveries_total",
    "Outbox entries handled by write-back, by outcome (sent, retry, parked, skipped, local)",
    ["outcome"],
)
ATTEMPTS = Counter("pinpoint_writeback_attempts_total", "Transactions sent to the write-back server")
FAILURES = Counter(
    "pinpoint_writeback_failures_total",
    "Failed write-back transactions by reason (HTTP status, timeout, transport, auth, conflict, invalid)",
    ["reason"],
)
DELIVERY_SECONDS = Histogram(
    "pinpoint_writeback_delivery_seconds",
    "One outbox entry: probe (if any) + transaction + bookkeeping",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

_OUTBOX = Outbox.__table__  # type: ignore[attr-defined]
_SUGGESTION = Suggestion.__table__  # type: ignore[attr-defined]


class _Parked(Exception):
    """Raised inside a delivery when the entry must be parked whatever the attempt count."""

    def __init__(self, cause: Exception, bundle: dict[str, Any] | None = None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.bundle = bundle


@dataclass(frozen=True)
class Claimed:
    id: int
    patient_key: str
    payload: dict[str, Any]
    attempts: int


@dataclass
class DeliveryStats:
    sent: int = 0
    retry: int = 0
    parked: int = 0
    skipped: int = 0
    local: int = 0

    @property
    def handled(self) -> int:
        return self.sent + self.retry + self.parked + self.skipped + self.local


# ----------------------------------------------------------------------------- pure helpers


def identifier_query(identifier: str) -> str:
    """``identifier=urn:pinpoint:recommendation|{value}``, percent-encoded (values hold ``+``)."""
    return urlencode({"identifier": f"{SYSTEM}|{identifier}"})


def _identifier_of(resource: Mapping[str, Any]) -> str:
    for ident in resource.get("identifier") or []:
        if isinstance(ident, Mapping) and ident.get("system") == SYSTEM:
            return str(ident.get("value"))
    raise ValueError(f"{resource.get('resourceType')} without a {SYSTEM} identifier")


def _walk_references(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str) and "resourceType" not in value:
            yield value  # (a resource is never a Reference: DetectedIssue.reference is a uri)
        for child in value.values():
            yield from _walk_references(child)
    elif isinstance(value, list):
        for child in value:
            yield from _walk_references(child)


def rewrite_references(resource: dict[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    """Point references to Pinpoint's local ids (``Type/id`` or ``Type/id/_history/n``) at what the
    server knows them by (``mapping``: local ``Type/id`` → ``Type/server id`` or ``urn:uuid:…``)."""
    for ref in _walk_references(resource):
        parts = ref["reference"].split("/")
        if len(parts) >= 2:
            local = f"{parts[0]}/{parts[1]}"
            if local in mapping:
                ref["reference"] = mapping[local]
    return resource


def linked_references(members: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``(type, id)`` of every ``Type/id`` reference in ``members`` to something outside them —
    among them Pinpoint's own resources of other groups (a CarePlan's outcome Observations)."""
    own = {(str(m.get("resourceType")), str(m.get("id"))) for m in members}
    found: list[tuple[str, str]] = []
    for member in members:
        for ref in _walk_references(member):
            parts = ref["reference"].split("/")
            if len(parts) == 2 and (parts[0], parts[1]) not in own and (parts[0], parts[1]) not in found:
                found.append((parts[0], parts[1]))
    return found


def to_r5(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The R5 form of what Pinpoint writes (STANDARDS §4.1): CarePlan activities become
    ``plannedActivityReference`` (never ``activity.detail``) and an activity's
    ``outcomeReference`` its ``performedActivity`` (CodeableReferences), ``author`` → ``custodian``;
    ServiceRequest ``code``/``supportingInfo`` become CodeableReferences; DetectedIssue
    ``patient`` → ``subject`` and a withdrawn alert ``mitigated`` (R5 has no ``cancelled``)."""
    out = copy.deepcopy(dict(resource))
    rtype = out.get("resourceType")
    if rtype == "CarePlan":
        activities = []
        for activity in out.pop("activity", None) or []:
            if isinstance(activity, Mapping) and "reference" in activity:
                activities.append({"plannedActivityReference": activity["reference"]})
            elif isinstance(activity, Mapping) and activity.get("outcomeReference"):
                activities.append(
                    {"performedActivity": [{"reference": r} for r in activity["outcomeReference"]]}
                )
        if activities:
            out["activity"] = activities
        if "author" in out:
            out["custodian"] = out.pop("author")
    elif rtype == "ServiceRequest":
        if isinstance(out.get("code"), Mapping):
            out["code"] = {"concept": out["code"]}
        if out.get("supportingInfo"):
            out["supportingInfo"] = [{"reference": r} for r in out["supportingInfo"]]
        if out.get("reasonReference"):
            out["reason"] = [{"reference": r} for r in out.pop("reasonReference")]
    elif rtype == "DetectedIssue":
        if "patient" in out:
            out["subject"] = out.pop("patient")
        if out.get("status") == "cancelled":
            out["status"] = "mitigated"
    return out


def _comparable(resource: Mapping[str, Any]) -> bytes:
    clean = {k: v for k, v in resource.items() if k not in ("meta", "id")}
    return orjson.dumps(clean, option=orjson.OPT_SORT_KEYS)


def backoff_delay(
    attempts: int, writeback: Writeback, rng: random.Random, retry_after: float | None
) -> float:
    """Seconds until the next attempt: the server's ``Retry-After`` when it sent one, else full
    jitter over ``backoff * 2**(attempts-1)`` capped at ``max_backoff``."""
    if retry_after is not None:
        return max(retry_after, 0.0)
    cap = min(
        writeback.max_backoff.total_seconds(),
        writeback.backoff.total_seconds() * 2 ** min(max(attempts - 1, 0), 30),
    )
    return rng.uniform(0.0, cap)


def _failure_reason(exc: Exception) -> str:
    if isinstance(exc, FhirVersionConflict):
        return "conflict"
    if isinstance(exc, FhirHttpError):
        return str(exc.upstream_status)
    if isinstance(exc, FhirTransportError):
        return "timeout" if exc.timeout else "transport"
    if isinstance(exc, SmartAuthError):
        return "auth"
    if isinstance(exc, ResourceInvalid | FhirInvalidResponse | ForeignUrlError | ValueError):
        return "invalid"
    return type(exc).__name__


def _outcome_of(exc: Exception) -> dict[str, Any]:
    """The server's OperationOutcome when it sent one, else one describing the failure."""
    if isinstance(exc, FhirHttpError) and exc.upstream_outcome:
        return exc.upstream_outcome
    if isinstance(exc, PinpointError):
        return exc.outcome()
    if isinstance(exc, ResourceInvalid):
        return operation_outcome(
            [Issue(code="invalid", diagnostics=msg, expression=(loc,)) for loc, msg in exc.issues]
        )
    return operation_outcome([Issue(code="exception", diagnostics=type(exc).__name__)])


# ----------------------------------------------------------------------------- the deliverer


@dataclass
class Delivery:
    """Delivers due outbox entries through one :class:`FhirClient` (the write-back source's)."""

    engine: Engine
    settings: Settings
    client: FhirClient
    clock: Callable[[], datetime] = utcnow
    rng: random.Random = field(default_factory=random.Random)
    batch: int = 16

    @property
    def writeback(self) -> Writeback:
        wb = self.settings.config.writeback
        assert wb is not None, "delivery needs a writeback configuration"
        return wb

    @property
    def lease(self) -> timedelta:
        """How long a claim keeps others off an entry: two request timeouts and a margin."""
        return 2 * self.writeback.timeout + timedelta(seconds=1)

    def delivers_for(self, source_id: str) -> bool:
        """Patients of the write-back source, and of ``/fhir`` (``default``) unless ``default`` is a
        configured source of its own with another server: other sources' Patient and evidence
        references mean nothing on the write-back server, so their entries stay ``local``."""
        if source_id == self.writeback.source:
            return True
        if source_id != "default":
            return False
        own = next((s for s in self.settings.config.sources if s.id == "default"), None)
        return own is None or own.fhir_base_url is None

    # -- database side (sync; called through asyncio.to_thread)

    def claim(self, limit: int | None = None, exclude: Sequence[int] = ()) -> list[Claimed]:
        """Claim due entries, at most one per patient (its earliest pending one); commits.
        ``exclude``: entries already tried in this pass (a retry waits for the next pass)."""
        now = self.clock()
        o = _OUTBOX.alias("o")
        p = _OUTBOX.alias("p")
        earlier = (
            sa.select(p.c.id)
            .where(p.c.patient_key == o.c.patient_key, p.c.status == "pending", p.c.id < o.c.id)
            .exists()
        )
        pick = (
            sa.select(o.c.id)
            .where(
                o.c.status == "pending", o.c.next_attempt_at <= now, ~earlier, o.c.id.not_in(list(exclude))
            )
            .order_by(o.c.id)
            .limit(limit or self.batch)
        )
        if self.engine.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True, of=o)
        # A CTE, not ``id IN (subquery)``: PostgreSQL may re-run an IN subquery, and with
        # SKIP LOCKED + LIMIT each run picks other rows (one claim took every entry).
        picked = pick.cte("picked")
        stmt = (
            sa.update(_OUTBOX)
            .where(_OUTBOX.c.id == picked.c.id, _OUTBOX.c.status == "pending")
            .values(attempts=_OUTBOX.c.attempts + 1, next_attempt_at=now + self.lease)
            .returning(_OUTBOX.c.id, _OUTBOX.c.patient_key, _OUTBOX.c.payload, _OUTBOX.c.attempts)
        )
        with session_scope(self.engine) as session:
            rows = session.execute(stmt).all()
        return sorted((Claimed(i, k, dict(p or {}), a) for i, k, p, a in rows), key=lambda c: c.id)

    def _prepare(
        self, claimed: Claimed, keys: Sequence[tuple[str, str]], linked: Sequence[tuple[str, str]] = ()
    ) -> tuple[bool, dict[tuple[str, str], tuple[str, str | None]], dict[str, str]]:
        """One read: is the entry superseded (a later change of its group was delivered — a
        replayed old entry), what does the server hold of its members (ids, versions), and how
        to refer to Pinpoint's resources of other groups that the members point at (``linked``):
        by the server's id once delivered, else conditionally by identifier (resolved by the
        server inside the transaction — FHIR R4 http.html "conditional references")."""
        group = claimed.payload.get("group")
        t = _SUGGESTION.c
        with session_scope(self.engine) as session:
            later = session.execute(
                sa.select(_OUTBOX.c.payload).where(
                    _OUTBOX.c.patient_key == claimed.patient_key,
                    _OUTBOX.c.id > claimed.id,
                    _OUTBOX.c.status == "sent",
                )
            ).all()
            rows = (
                session.execute(
                    sa.select(t.resource_type, t.resource_id, t.remote_id, t.remote_version).where(
                        sa.tuple_(t.resource_type, t.resource_id).in_(list(keys))
                    )
                ).all()
                if keys
                else []
            )
            others = (
                session.execute(
                    sa.select(t.resource_type, t.resource_id, t.identifier, t.remote_id).where(
                        sa.tuple_(t.resource_type, t.resource_id).in_(list(linked))
                    )
                ).all()
                if linked
                else []
            )
        superseded = any((payload or {}).get("group") == group for (payload,) in later)
        mapping = {
            f"{rt}/{ri}": f"{rt}/{rid}" if rid else f"{rt}?{identifier_query(ident)}"
            for rt, ri, ident, rid in others
        }
        return superseded, {(rt, ri): (rid, ver) for rt, ri, rid, ver in rows if rid}, mapping

    def _settle(
        self,
        claimed: Claimed,
        status: str | None,
        note: str | None = None,
        remote: Mapping[tuple[str, str], tuple[str, str | None]] | None = None,
    ) -> None:
        """In one transaction: record the server's ids and versions, then the entry's status."""
        with session_scope(self.engine) as session:
            for (rtype, rid), (server_id, version) in (remote or {}).items():
                session.execute(
                    sa.update(_SUGGESTION)
                    .where(_SUGGESTION.c.resource_type == rtype, _SUGGESTION.c.resource_id == rid)
                    .values(remote_id=server_id, remote_version=version)
                )
            if status is not None:
                session.execute(
                    sa.update(_OUTBOX)
                    .where(_OUTBOX.c.id == claimed.id)
                    .values(
                        status=status,
                        last_error=note,
                        delivered_at=self.clock() if status == "sent" else None,
                    )
                )

    def _retry_later(self, claimed: Claimed, exc: Exception) -> None:
        retry_after = exc.retry_after if isinstance(exc, FhirHttpError) else None
        delay = backoff_delay(claimed.attempts, self.writeback, self.rng, retry_after)
        if isinstance(exc, FhirTransportError) and exc.timeout:
            # the server may still be applying it: give it a timeout's time before the probe
            delay = max(delay, self.writeback.timeout.total_seconds())
        with session_scope(self.engine) as session:
            session.execute(
                sa.update(_OUTBOX)
                .where(_OUTBOX.c.id == claimed.id, _OUTBOX.c.attempts == claimed.attempts)
                .values(
                    next_attempt_at=self.clock() + timedelta(seconds=delay),
                    last_error=f"{_failure_reason(exc)}: {str(exc)[:300]}",
                )
            )

    def _park(self, claimed: Claimed, exc: Exception, sent: Mapping[str, Any] | None) -> int:
        reason = f"write-back failed after {plural(claimed.attempts, 'attempt')}: {str(exc)[:500]}"
        with session_scope(self.engine) as session:
            session.execute(
                sa.update(_OUTBOX)
                .where(_OUTBOX.c.id == claimed.id)
                .values(status="parked", last_error=f"{_failure_reason(exc)}: {str(exc)[:300]}")
            )
        upstream = exc.upstream_status if isinstance(exc, FhirHttpError) else None
        return record_dead_letter(
            self.engine,
            source=self.writeback.source,
            kind="delivery",
            reason=reason,
            payload=orjson.dumps(sent if sent is not None else claimed.payload),
            content_type=FHIR_JSON,
            outcome=_outcome_of(exc),
            context={
                "outbox_id": claimed.id,
                "attempts": claimed.attempts,
                "upstream_status": upstream,
                "failure": _failure_reason(exc),
            },
        )

    # -- the server side (async)

    async def drain(self, stop: threading.Event | None = None) -> DeliveryStats:
        """Deliver every due entry (patients in parallel, each patient's entries in order)."""
        stats = DeliveryStats()
        tried: list[int] = []
        while not (stop and stop.is_set()):
            claims = await asyncio.to_thread(self.claim, None, tried)
            if not claims:
                break
            tried.extend(c.id for c in claims)
            for outcome in await asyncio.gather(*(self.deliver(c) for c in claims)):
                setattr(stats, outcome, getattr(stats, outcome) + 1)
        if stats.handled:
            log.info(
                "writeback.drained",
                sent=stats.sent,
                retry=stats.retry,
                parked=stats.parked,
                skipped=stats.skipped,
                local=stats.local,
            )
        return stats

    async def deliver(self, claimed: Claimed) -> str:
        """Deliver one claimed entry; returns sent | retry | parked | skipped | local."""
        started = time.perf_counter()
        try:
            outcome = await self._deliver(claimed)
        except Exception as exc:
            cause = exc.cause if isinstance(exc, _Parked) else exc
            FAILURES.labels(_failure_reason(cause)).inc()
            if not isinstance(exc, _Parked | FhirClientError):
                log.error("writeback.unexpected", outbox_id=claimed.id, error=type(exc).__name__)
            if isinstance(exc, _Parked) or claimed.attempts >= self.writeback.max_attempts:
                bundle = exc.bundle if isinstance(exc, _Parked) else None
                dead = await asyncio.to_thread(self._park, claimed, cause, bundle)
                log.warning(
                    "writeback.parked",
                    outbox_id=claimed.id,
                    attempts=claimed.attempts,
                    dead_letter=dead,
                    reason=_failure_reason(cause),
                )
                outcome = "parked"
            else:
                await asyncio.to_thread(self._retry_later, claimed, cause)
                log.info(
                    "writeback.retry",
                    outbox_id=claimed.id,
                    attempts=claimed.attempts,
                    reason=_failure_reason(cause),
                )
                outcome = "retry"
        DELIVERIES.labels(outcome).inc()
        DELIVERY_SECONDS.observe(time.perf_counter() - started)
        return outcome

    async def _deliver(self, claimed: Claimed) -> str:
        if not self.delivers_for(split_patient_key(claimed.patient_key)[0]):
            await asyncio.to_thread(self._settle, claimed, "local", "patient of another source")
            return "local"
        resources = [dict(r) for r in claimed.payload.get("resources") or []]
        members = [r for r in resources if r.get("resourceType") != "Provenance"]
        provenances = [r for r in resources if r.get("resourceType") == "Provenance"]
        keys = [(str(r["resourceType"]), str(r["id"])) for r in members]
        superseded, remote, linked = await asyncio.to_thread(
            self._prepare, claimed, keys, linked_references(members)
        )
        if superseded:
            await asyncio.to_thread(self._settle, claimed, "skipped", "a later change was delivered")
            return "skipped"
        action = claimed.payload.get("action")
        probe = claimed.attempts > 1 or (action != "create" and any(k not in remote for k in keys))
        bundle: dict[str, Any] | None = None
        for _round in range(ROUNDS):
            if probe:
                found = await self._probe(members)
                for key, resource in found.items():
                    remote[key] = (str(resource["id"]), (resource.get("meta") or {}).get("versionId"))
                if found and len(found) == len(members):
                    wanted = self._bundle(members, [], remote, linked)
                    if all(
                        _comparable(found[key]) == _comparable(entry["resource"])
                        for key, entry in zip(keys, wanted["entry"], strict=True)
                    ):
                        await asyncio.to_thread(self._settle, claimed, "sent", None, remote)
                        log.info("writeback.already_there", outbox_id=claimed.id, attempts=claimed.attempts)
                        return "sent"
                if action == "revoke" and not found:
                    await asyncio.to_thread(self._settle, claimed, "skipped", "nothing upstream to withdraw")
                    return "skipped"
            try:
                bundle = self._bundle(members, provenances, remote, linked)
            except (ResourceInvalid, ValueError) as exc:
                raise _Parked(exc) from exc
            ATTEMPTS.inc()
            try:
                response = await self.client.transaction(bundle, idempotent=False)
            except FhirVersionConflict as exc:
                FAILURES.labels("conflict").inc()
                log.info("writeback.conflict", outbox_id=claimed.id, status=exc.upstream_status)
                probe = True
                continue
            except FhirHttpError as exc:
                if exc.upstream_status in PERMANENT_STATUS:
                    raise _Parked(exc, bundle) from exc
                raise
            results = self.client.transaction_results(response)
            if len(results) != len(bundle["entry"]):
                raise _Parked(FhirInvalidResponse("transaction-response has the wrong number of entries"))
            recorded: dict[tuple[str, str], tuple[str, str | None]] = {}
            matched_existing = False
            for resource, entry, result in zip(
                [*members, *provenances], bundle["entry"], results, strict=True
            ):
                if result.id is None:
                    raise _Parked(FhirInvalidResponse("transaction-response entry without a location"))
                recorded[(str(resource["resourceType"]), str(resource["id"]))] = (
                    result.id,
                    result.version_id,
                )
                if entry["request"]["method"] == "POST" and "ifNoneExist" in entry["request"]:
                    matched_existing |= not result.created
            remote.update(recorded)
            if matched_existing:
                # A conditional create found the resource already there (made elsewhere, or by an
                # attempt we did not see succeed): make sure it holds this entry's content.
                await asyncio.to_thread(self._settle, claimed, None, None, recorded)
                probe = True
                continue
            await asyncio.to_thread(self._settle, claimed, "sent", None, recorded)
            return "sent"
        raise FhirVersionConflict(
            f"transaction: still conflicting after {ROUNDS} rounds", upstream_status=412
        )

    async def _probe(self, members: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        """The server's current version of each member (searched by identifier), if it has one."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for resource in members:
            rtype = str(resource["resourceType"])
            hits = await self.client.search_all(
                rtype, [("identifier", f"{SYSTEM}|{_identifier_of(resource)}")], max_pages=1
            )
            if hits:
                found[(rtype, str(resource["id"]))] = hits[0]
        return found

    def _bundle(
        self,
        members: Sequence[Mapping[str, Any]],
        provenances: Sequence[Mapping[str, Any]],
        remote: Mapping[tuple[str, str], tuple[str, str | None]],
        linked: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The transaction for one entry given what the server is known to hold (``linked``: how to
        refer to Pinpoint's resources of other groups, see :meth:`_prepare`)."""
        mapping: dict[str, str] = dict(linked or {})
        for resource in [*members, *provenances]:
            key = (str(resource["resourceType"]), str(resource["id"]))
            known = remote.get(key)
            mapping[f"{key[0]}/{key[1]}"] = f"{key[0]}/{known[0]}" if known else f"urn:uuid:{key[1]}"
        r5 = self.writeback.fhir_version == "R5"
        entries: list[dict[str, Any]] = []
        for resource in members:
            rtype, rid = str(resource["resourceType"]), str(resource["id"])
            body = rewrite_references(
                {k: copy.deepcopy(v) for k, v in resource.items() if k not in ("meta", "id")}, mapping
            )
            if r5:
                body = to_r5(body)
            query = identifier_query(_identifier_of(resource))
            known = remote.get((rtype, rid))
            if known is not None:
                server_id, version = known
                body = {
                    "resourceType": rtype,
                    "id": server_id,
                    **{k: v for k, v in body.items() if k != "resourceType"},
                }
                request: dict[str, Any] = {"method": "PUT", "url": f"{rtype}?{query}"}
                if version:
                    request["ifMatch"] = f'W/"{version}"'
                entries.append(
                    {
                        "fullUrl": f"{self.client.base_url}/{rtype}/{server_id}",
                        "resource": body,
                        "request": request,
                    }
                )
            else:
                entries.append(
                    {
                        "fullUrl": f"urn:uuid:{rid}",
                        "resource": body,
                        "request": {"method": "POST", "url": rtype, "ifNoneExist": query},
                    }
                )
            if r5:
                validate_r5(body)
        for prov in provenances:
            body = rewrite_references(
                {k: copy.deepcopy(v) for k, v in prov.items() if k not in ("meta", "id")}, mapping
            )
            if r5:
                body = to_r5(body)
                validate_r5(body)
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{prov['id']}",
                    "resource": body,
                    "request": {"method": "POST", "url": "Provenance"},
                }
            )
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


# ----------------------------------------------------------------------------- wiring


def writeback_source(settings: Settings) -> Source | None:
    wb = settings.config.writeback
    return settings.config.source(wb.source) if wb is not None else None


def writeback_client(settings: Settings, http: httpx.AsyncClient) -> FhirClient:
    """The write-back source's client: SMART Backend Services asking for :data:`WRITEBACK_SCOPES`
    (or the source's bearer token), no client-side retries (the outbox schedules them)."""
    from shared.fhir.sources import client_for  # lazy: SMART's keys are loaded when write-back is on

    source = writeback_source(settings)
    assert source is not None, "writeback is not configured"
    outbound = source.outbound
    if outbound is not None and outbound.smart is not None:
        smart = outbound.smart.model_copy(update={"scopes": WRITEBACK_SCOPES})
        source = source.model_copy(update={"outbound": outbound.model_copy(update={"smart": smart})})
    return client_for(source, http, retry=RetryPolicy(max_attempts=1))


def http_client_for(settings: Settings) -> httpx.AsyncClient:
    from shared.fhir.sources import source_http_client  # lazy

    wb = settings.config.writeback
    timeout = wb.timeout.total_seconds() if wb is not None else 30.0
    return source_http_client(timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)))


async def deliver_once(
    engine: Engine, settings: Settings, http: httpx.AsyncClient | None = None
) -> DeliveryStats:
    """Deliver every due entry once (``pinpoint worker --once``); nothing when not configured."""
    if settings.config.writeback is None:
        return DeliveryStats()
    own = http is None
    client_http = http or http_client_for(settings)
    try:
        return await Delivery(engine, settings, writeback_client(settings, client_http)).drain()
    finally:
        if own:
            await client_http.aclose()


async def run_delivery(
    engine: Engine,
    settings: Settings,
    stop: threading.Event,
    http: httpx.AsyncClient | None = None,
) -> None:
    """The background loop: deliver what is due, sleep the poll interval, until ``stop``."""
    own = http is None
    client_http = http or http_client_for(settings)
    delivery = Delivery(engine, settings, writeback_client(settings, client_http))
    poll = max(settings.worker_poll_interval.total_seconds(), 0.05)
    log.info(
        "writeback.started", source=delivery.writeback.source, fhir_version=delivery.writeback.fhir_version
    )
    try:
        while not stop.is_set():
            try:
                await delivery.drain(stop)
            except Exception as exc:  # database down: try again after the poll interval
                log.error("writeback.drain_failed", error=type(exc).__name__)
            await asyncio.sleep(poll)
    finally:
        if own:
            await client_http.aclose()
        log.info("writeback.stopped")


def outbox_state(engine: Engine) -> tuple[int, datetime | None]:
    """Undelivered (pending) entries and the creation time of the oldest."""
    with session_scope(engine) as session:
        depth, oldest = session.execute(
            sa.select(sa.func.count(), sa.func.min(_OUTBOX.c.created_at)).where(_OUTBOX.c.status == "pending")
        ).one()
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return int(depth), oldest


def outbox_check(engine: Engine, max_age: timedelta) -> Check:
    """Readiness: fails while the oldest undelivered outbox entry is older than ``max_age``."""

    def check() -> str:
        try:
            depth, oldest = outbox_state(engine)
        except Exception as exc:
            return f"unknown: {type(exc).__name__}"
        if oldest is None:
            return "ok"
        age = utcnow() - oldest
        if age > max_age:
            return f"behind: {depth} undelivered, oldest {int(age.total_seconds())}s old"
        return "ok"

    return check


# ----------------------------------------------------------------------------- replay


def replay_delivery(engine: Engine, settings: Settings, dead_letter_id: int) -> dict[str, Any]:
    """Requeue the parked outbox entry of a ``delivery`` dead letter (the loop delivers it)."""
    now = utcnow()
    with session_scope(engine) as session:
        dead = session.get(DeadLetter, dead_letter_id)
        assert dead is not None
        outbox_id = (dead.context or {}).get("outbox_id")
        row = session.get(Outbox, outbox_id) if isinstance(outbox_id, int) else None
        failure: str | None = None
        if settings.config.writeback is None:
            failure = "write-back is not configured"
        elif row is None:
            failure = "its outbox entry no longer exists"
        elif row.status == "sent":
            failure = "already delivered"
        elif row.status != "pending":
            row.status = "pending"
            row.attempts = 0
            row.next_attempt_at = now
            row.last_error = None
            session.add(row)
        dead.replay_count += 1
        dead.replayed_at = now
        dead.status = "failed" if failure else "replayed"
        dead.context = {**(dead.context or {}), "last_replay_error": failure}
        session.add(dead)
    log.info("writeback.replayed", dead_letter=dead_letter_id, requeued=failure is None)
    return {"status": "failed" if failure else "replayed", "reason": failure}
