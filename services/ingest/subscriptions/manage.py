"""Pinpoint's own Subscriptions on a source (issue 6 §5): create or repair them, report on them.

Keyed on the endpoint (``{PINPOINT_PUBLIC_BASE_URL}/sources/{id}/fhir``) and the criteria:
running :func:`sync` twice changes nothing the second time. ``subscriptions.mode``:

- ``classic``: R4 criteria Subscriptions (rest-hook, ``application/fhir+json`` payload) for the
  codes of CONTRACT §4 — procedures and orders by CPT, pain and function scores by LOINC,
  medications by RxNorm, Conditions, and completed QuestionnaireResponses (functional
  instruments; the relevance filter drops every other questionnaire);
- ``backport``: one topic-based Subscription (``subscriptions.topic``, ``full-resource``, a
  heartbeat) when the server's CapabilityStatement offers the Backport IG, else ``classic``;
- ``r5`` is not managed yet (configure it on the server; notifications are understood);
- ``none``: nothing is managed (and no reconciliation runs).

The inbound credential travels in the Subscription: a bearer token as ``channel.header``; an
HMAC secret as Medplum's ``subscription-secret`` extension.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from services.ingest.subscriptions import state
from shared.db.models import Inbox, utcnow
from shared.db.session import session_scope
from shared.domain import terminology as t
from shared.domain._json import parse_instant
from shared.fhir.client import FhirClient
from shared.settings import Settings, Source

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
MEDPLUM_SECRET = "https://www.medplum.com/fhir/StructureDefinition/subscription-secret"
REASON = "Pinpoint clinical decision support (managed by `pinpoint subscriptions sync`)"
HEARTBEAT_SECONDS = 300
CPT = "http://www.ama-assn.org/go/cpt"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
#: CONTRACT §4: anaesthetics, steroids and sedatives of the injectate / sedation rows.
RXNORM_CODES = ("6387", "1815", "35780", "10759", "6902", "3264", "1514", "6960", "4337", "8782")


@dataclass(frozen=True)
class SyncResult:
    criteria: str
    subscription: str | None
    action: str  # created | repaired | ok | unmanaged
    status: str | None


def endpoint_for(settings: Settings, source: Source) -> str:
    path = "/fhir" if source.id == "default" else f"/sources/{source.id}/fhir"
    return settings.base_url + path


def _tokens(system: str, codes: Any) -> str:
    return ",".join(f"{system}|{c}" for c in sorted(codes))


def classic_criteria() -> list[str]:
    procedures = set(t.PROCEDURE_KINDS) | set(t.SEDATION_CPT) | set(t.PHYSICAL_THERAPY_CPT)
    return [
        f"Procedure?code={_tokens(CPT, procedures)}",
        f"ServiceRequest?code={_tokens(CPT, t.PROCEDURE_KINDS)}",
        f"Observation?code={_tokens(t.LOINC, t.PAIN_SCALES)}",
        f"Observation?code={_tokens(t.LOINC, t.FUNCTION_CODES)}",
        f"MedicationAdministration?code={_tokens(RXNORM, RXNORM_CODES)}",
        "Condition",
        # R4 has no code search on QuestionnaireResponse: every completed one is sent, and the
        # relevance filter keeps only the functional instruments' (minimum necessary)
        "QuestionnaireResponse?status=completed,amended",
    ]


def offers_backport(capability: Mapping[str, Any]) -> bool:
    text = str(capability)
    if "subscriptions-backport" in text or "subscriptiontopic" in text.lower():
        return True
    for rest in capability.get("rest") or ():
        for resource in rest.get("resource") or ():
            if resource.get("type") == "Subscription":
                names = {op.get("name") for op in resource.get("operation") or ()}
                if {"status", "$status"} & names:
                    return True
    return False


def _channel(source: Source, endpoint: str, *, content: str | None) -> dict[str, Any]:
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"}
    inbound = source.inbound
    if inbound is not None and inbound.bearer is not None:
        channel["header"] = [f"Authorization: Bearer {inbound.bearer.get_secret_value()}"]
    if content is not None:
        channel["_payload"] = {
            "extension": [{"url": BACKPORT + "backport-payload-content", "valueCode": content}]
        }
        channel["extension"] = [
            {"url": BACKPORT + "backport-heartbeat-period", "valueUnsignedInt": HEARTBEAT_SECONDS},
            {"url": BACKPORT + "backport-timeout", "valueUnsignedInt": 5},
        ]
    return channel


def desired(source: Source, endpoint: str, mode: str) -> list[dict[str, Any]]:
    extensions = []
    inbound = source.inbound
    if inbound is not None and inbound.hmac_secret is not None:
        extensions.append({"url": MEDPLUM_SECRET, "valueString": inbound.hmac_secret.get_secret_value()})
    base: dict[str, Any] = {"resourceType": "Subscription", "status": "requested", "reason": REASON}
    if extensions:
        base["extension"] = extensions
    if mode == "backport":
        topic = source.subscriptions.topic
        return [{**base, "criteria": topic, "channel": _channel(source, endpoint, content="full-resource")}]
    return [
        {**base, "criteria": c, "channel": _channel(source, endpoint, content=None)}
        for c in classic_criteria()
    ]


def _needs_repair(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    if current.get("status") in ("error", "off"):
        return True
    have, want = current.get("channel") or {}, wanted["channel"]
    return any(have.get(k) != want.get(k) for k in ("type", "payload", "header"))


def _heartbeat(resource: Mapping[str, Any]) -> int | None:
    for ext in (resource.get("channel") or {}).get("extension") or ():
        if str(ext.get("url", "")).endswith("backport-heartbeat-period"):
            value = ext.get("valueUnsignedInt")
            return int(value) if isinstance(value, int) else None
    return None


async def sync(settings: Settings, engine: Engine, source: Source, fhir: FhirClient) -> list[SyncResult]:
    """Create or repair the Subscriptions Pinpoint needs on ``source``; idempotent."""
    mode = source.subscriptions.mode
    if mode in ("none", "r5"):
        return []
    if mode == "backport" and (
        source.subscriptions.topic is None or not offers_backport(await fhir.capabilities())
    ):
        mode = "classic"
    endpoint = endpoint_for(settings, source)
    existing = [
        s
        for s in await fhir.search_all("Subscription", {"url": endpoint})
        if (s.get("channel") or {}).get("endpoint") == endpoint
    ]
    results: list[SyncResult] = []
    matched: set[str] = set()
    for wanted in desired(source, endpoint, mode):
        criteria = str(wanted["criteria"])
        current = next(
            (s for s in existing if s.get("criteria") == criteria and s.get("id") not in matched), None
        )
        if current is None:
            written = await fhir.create(wanted)
            resource = written.resource or await fhir.read("Subscription", str(written.id))
            action = "created"
        elif _needs_repair(current, wanted):
            written = await fhir.update({**wanted, "id": current["id"]})
            resource = written.resource or await fhir.read("Subscription", str(current["id"]))
            action = "repaired"
        else:
            resource, action = current, "ok"
        sid = str(resource.get("id"))
        matched.add(sid)
        status = resource.get("status") if isinstance(resource.get("status"), str) else None
        _record(engine, source, sid, criteria, status, _heartbeat(resource), new=action == "created")
        _start_watermark(engine, source, resource)
        results.append(SyncResult(criteria, sid, action, status))
    for other in existing:
        if other.get("id") not in matched:
            results.append(
                SyncResult(str(other.get("criteria")), str(other.get("id")), "unmanaged", other.get("status"))
            )
    return results


def _record(
    engine: Engine,
    source: Source,
    sid: str,
    criteria: str,
    status: str | None,
    heartbeat: int | None,
    *,
    new: bool,
) -> None:
    with session_scope(engine) as session:
        row = state.lock_state(session, source.id, sid)
        row.topic = criteria[:2000]
        if status:
            row.status = status[:32]
        row.heartbeat_period = heartbeat
        if new and criteria.startswith("http"):
            row.last_event_number = 0  # a new topic subscription: event 1 is the first
        row.updated_at = utcnow()
        session.add(row)


def _start_watermark(engine: Engine, source: Source, subscription: Mapping[str, Any]) -> None:
    """Catch-up searches of a source without a watermark start where its Subscription began (the
    server's ``meta.lastUpdated``): what changed since is covered; older data is a backfill."""
    created = parse_instant((subscription.get("meta") or {}).get("lastUpdated"))
    if created is None:
        return
    with session_scope(engine) as session:
        row = state.lock_state(session, source.id, state.SOURCE_ROW)
        if row.watermark is None:
            row.watermark = created
            row.updated_at = utcnow()
            session.add(row)


@dataclass(frozen=True)
class StatusRow:
    source: str
    subscription: str
    criteria: str | None
    status: str
    last_event_number: int | None
    last_seen_seconds: float | None
    heartbeat_period: int | None
    gaps_detected: int
    watermark: str | None


def status(engine: Engine, source_id: str | None = None) -> tuple[list[StatusRow], dict[str, int]]:
    """Each known subscription's state and lag (seconds since its last notification or
    heartbeat), and the inbox counts per status."""
    now = utcnow()
    rows = []
    with Session(engine) as session:
        for row in state.states(session, source_id):
            seen = max(
                (x for x in (row.last_notification_at, row.last_heartbeat_at) if x is not None), default=None
            )
            rows.append(
                StatusRow(
                    row.source,
                    row.subscription,
                    row.topic,
                    row.status,
                    state.last_event(session, row.source, row.subscription),
                    round((now - seen).total_seconds(), 1) if seen else None,
                    row.heartbeat_period,
                    row.gaps_detected or 0,
                    row.watermark.isoformat() if row.watermark else None,
                )
            )
        counts = state.inbox_counts(session) if source_id is None else _inbox_counts(session, source_id)
    return rows, counts


def _inbox_counts(session: Session, source_id: str) -> dict[str, int]:
    result = session.exec(
        select(Inbox.status, func.count()).where(Inbox.source == source_id).group_by(Inbox.status)
    )
    return {str(s): int(n) for s, n in result}
