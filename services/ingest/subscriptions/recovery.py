"""Background work of the subscription intake (a task on ``runtime.background``).

- **gaps**: the event numbers each subscription received are walked in order (``state.sweep``);
  a hole that a later number has waited past the grace for becomes a ``gap`` row.
- **inbox**: ``id-only`` rows are read from the source (``GET {type}/{id}``; 404/410 → a
  tombstone); ``empty`` and ``ping`` rows run a catch-up search; ``gap`` rows ask
  ``Subscription/{id}/$events`` for what of the range is still missing (late deliveries received
  since are left out; nothing missing any more, nothing asked) and fall back to the catch-up
  search when the server does not offer it. Failures retry with jittered exponential backoff; after
  ``max_attempts`` the row becomes a dead letter (kind ``fetch``).
- **catch-up search**: every type Pinpoint keeps, ``_lastUpdated=gt<watermark − overlap>``,
  paged; the watermark is the newest ``meta.lastUpdated`` the source's server returned (its
  clock, never ours).
- **reconciliation** per source every ``subscriptions.reconcile_every``: a catch-up search, then
  ``_id`` searches over what is stored, so deletes the subscriptions never announced are noticed.
- **heartbeats**: a subscription silent for longer than its heartbeat period (× 1.5 + 10 s) is
  asked for its ``$status``; a counter ahead of ours is a gap; ``error``/``off`` is recovered and
  the Subscription set back to ``requested``.

Only the source's ``fhir_base_url`` is contacted (the FhirClient refuses any other host).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson
from prometheus_client import Counter, Gauge
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from services.ingest.subscriptions import state
from services.ingest.subscriptions.intake import GAP_GRACE, record_gaps
from services.ingest.subscriptions.status import carried_resources, listed_without_resource, read_status
from shared.db.deadletters import record_dead_letter
from shared.db.models import Inbox, Resource, SubscriptionState, utcnow
from shared.db.session import session_scope
from shared.domain._json import parse_instant
from shared.domain.relevance import KEPT_TYPES
from shared.fhir.client import FhirClient
from shared.fhir.errors import FhirClientError, FhirHttpError, FhirNotFound
from shared.fhir.sources import SourceClients
from shared.logging import get_logger
from shared.settings import Settings, Source

log = get_logger("pinpoint.ingest.subscriptions")

FETCHES = Counter(
    "pinpoint_subscription_fetches_total", "Inbox rows processed", ["source", "kind", "outcome"]
)
LAG = Gauge(
    "pinpoint_subscription_lag_seconds",
    "Seconds since the last notification or heartbeat of a subscription",
    ["source", "subscription"],
)
INBOX_PENDING = Gauge("pinpoint_subscription_inbox_pending", "Inbox rows waiting to be fetched")
INBOX_AGE = Gauge("pinpoint_subscription_inbox_oldest_seconds", "Age of the oldest pending inbox row")
MISSED_HEARTBEATS = Counter(
    "pinpoint_subscription_missed_heartbeats_total",
    "Subscriptions found silent past their heartbeat",
    ["source"],
)
RECONCILED = Counter(
    "pinpoint_subscription_reconciled_total",
    "Resources changed by catch-up or reconciliation",
    ["source", "what"],
)

_NOT_OFFERED = frozenset({400, 404, 405, 501})


@dataclass
class Options:
    poll_interval: float = 1.0
    batch: int = 50
    max_attempts: int = 8
    base_delay: float = 2.0
    max_delay: float = 600.0
    lease: timedelta = timedelta(minutes=5)
    overlap: timedelta = timedelta(minutes=2)
    page_size: int = 100
    id_chunk: int = 50
    heartbeat_margin: timedelta = timedelta(seconds=10)
    keep_done: timedelta = timedelta(days=7)  # done inbox rows and event numbers passed
    prune_every: timedelta = timedelta(hours=1)
    max_events_range: int = 500  # larger gaps are closed by the catch-up search
    max_pages: int = 1000  # per type and catch-up search


@dataclass
class RunReport:
    processed: int = 0
    failed: int = 0
    reconciled: list[str] = field(default_factory=list)
    heartbeat_checks: int = 0


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


class FetchedStore(Protocol):
    """How the worker stores what it read from a source: intake's pipeline, handed in by the
    composition root (``services/ingest/container.py``), so subscriptions never import intake."""

    def store_fetched(self, source: Source, resources: Iterable[dict[str, Any]]) -> int:
        """Store like a batch; rejections become dead letters; returns created + updated."""
        ...

    def delete_gone(self, source: Source, keys: list[tuple[str, str]]) -> None:
        """Mark resources deleted upstream as deleted."""
        ...


class SubscriptionWorker:
    """Drains the inbox, reconciles sources and watches heartbeats; :meth:`run_once` for tests."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        clients: SourceClients,
        intake: FetchedStore,
        *,
        options: Options | None = None,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.clients = clients
        self.intake = intake
        self.options = options or Options()
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self._pruned_at: datetime | None = None

    # ------------------------------------------------------------------ the loop

    def sources(self) -> list[Source]:
        return [s for s in self.settings.config.sources if s.fhir_base_url is not None]

    def source(self, source_id: str) -> Source | None:
        return next((s for s in self.sources() if s.id == source_id), None)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the loop alive; the next round retries
                log.error("subscriptions.worker.error", error=type(exc).__name__)
            await self.sleep(self.options.poll_interval)

    async def watch_gaps(self) -> None:
        """Gap detection alone, where no source has a server to ask (nothing can be recovered):
        gaps are counted and logged, and the log of event numbers is pruned."""
        while True:
            try:
                await asyncio.to_thread(self.find_gaps)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the loop alive; the next round retries
                log.error("subscriptions.gaps.error", error=type(exc).__name__)
            await self.sleep(self.options.poll_interval * 5)

    async def run_once(self, *, reconcile: bool = True, heartbeats: bool = True) -> RunReport:
        report = RunReport()
        await asyncio.to_thread(self.find_gaps)
        await self.drain(report)
        if heartbeats:
            await self.check_heartbeats(report)
            await self.drain(report)
        if reconcile:
            for source in self.sources():
                if source.subscriptions.mode != "none" and await asyncio.to_thread(
                    self._reconcile_due, source
                ):
                    await self.reconcile(source)
                    report.reconciled.append(source.id)
        await asyncio.to_thread(self._gauges)
        return report

    async def drain(self, report: RunReport | None = None) -> RunReport:
        """Process every due inbox row (bounded rounds of ``batch`` rows)."""
        report = report or RunReport()
        for _ in range(100):
            rows = await asyncio.to_thread(
                state.claim_due,
                self.engine,
                now=self.clock(),
                limit=self.options.batch,
                lease=self.options.lease,
            )
            if not rows:
                break
            await asyncio.gather(*(self._process(row, report) for row in rows))
        return report

    # ------------------------------------------------------------------ inbox rows

    async def _process(self, row: Inbox, report: RunReport) -> None:
        assert row.id is not None
        source = self.source(row.source)
        if source is None:
            await asyncio.to_thread(self._finish, row.id, state.FAILED, "source no longer configured")
            return
        try:
            if row.kind == state.ID_ONLY and row.reference:
                await self.fetch(source, row.reference)
            elif row.kind == state.GAP and row.subscription and (span := state.gap_range(row.reference)):
                missing = await asyncio.to_thread(self._still_missing, source, row.subscription, *span)
                if any(high - low >= self.options.max_events_range for low, high in missing):
                    await self.catch_up(source)  # once, however many large holes
                else:
                    for low, high in missing:
                        await self.recover_events(source, row.subscription, low, high)
            else:
                await self.catch_up(source)
        except (FhirClientError, OSError, ValueError) as exc:
            await asyncio.to_thread(self._failed, source, row, exc, report)
            return
        await asyncio.to_thread(self._finish, row.id, state.DONE, None)
        FETCHES.labels(source.id, row.kind, "done").inc()
        report.processed += 1

    def _finish(self, row_id: int, status: str, error: str | None) -> None:
        with session_scope(self.engine) as session:
            state.finish(session, row_id, status=status, error=error)

    def _failed(self, source: Source, row: Inbox, exc: BaseException, report: RunReport) -> None:
        assert row.id is not None
        attempts = row.attempts + 1
        error = _error_text(exc)
        report.failed += 1
        if attempts >= self.options.max_attempts:
            with session_scope(self.engine) as session:
                state.finish(session, row.id, status=state.FAILED, error=error)
            payload = {"kind": row.kind, "reference": row.reference, "subscription": row.subscription}
            record_dead_letter(
                self.engine,
                source=source.id,
                kind="fetch",
                reason=f"gave up after {attempts} attempts: {type(exc).__name__}",
                payload=orjson.dumps(payload),
                content_type="application/json",
                outcome=None,
                context={"inbox": row.id, "event_number": row.event_number},
            )
            FETCHES.labels(source.id, row.kind, "failed").inc()
            log.warning("subscriptions.fetch.gave_up", source=source.id, kind=row.kind, inbox=row.id)
            return
        cap = min(self.options.max_delay, self.options.base_delay * (2 ** (attempts - 1)))
        delay = self.rng.uniform(cap / 2, cap)
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after > delay:
            delay = float(retry_after)
        with session_scope(self.engine) as session:
            state.retry_later(
                session, row.id, attempts=attempts, due=self.clock() + timedelta(seconds=delay), error=error
            )
        FETCHES.labels(source.id, row.kind, "retry").inc()
        log.info(
            "subscriptions.fetch.retry",
            source=source.id,
            kind=row.kind,
            attempt=attempts,
            delay=round(delay, 1),
        )

    # ------------------------------------------------------------------ reads from the source

    def client(self, source: Source) -> FhirClient:
        return self.clients.get(source)

    async def fetch(self, source: Source, reference: str) -> None:
        """Read ``Type/id`` from the source and store it (gone upstream → a tombstone)."""
        rtype, _, rid = reference.partition("/")
        if rtype not in KEPT_TYPES:
            return
        try:
            resource = await self.client(source).read(rtype, rid)
        except FhirNotFound:
            await asyncio.to_thread(self._delete, source, [(rtype, rid)])
            return
        await asyncio.to_thread(self.store, source, [resource])

    async def recover_events(self, source: Source, subscription: str, low: int, high: int) -> None:
        """Missing events ``low..high``: ``$events`` where offered, else a catch-up search."""
        fhir = self.client(source)
        if high - low >= self.options.max_events_range:
            await self.catch_up(source)
            return
        try:
            bundle = await fhir.operation(
                f"Subscription/{subscription}/$events",
                {"eventsSinceNumber": str(low), "eventsUntilNumber": str(high), "content": "full-resource"},
            )
        except FhirNotFound:
            bundle = None
        except FhirHttpError as exc:
            if exc.upstream_status not in _NOT_OFFERED:
                raise
            bundle = None
        if bundle is None or bundle.get("resourceType") != "Bundle":
            log.info("subscriptions.events.not_offered", source=source.id, subscription=subscription)
            await self.catch_up(source)
            return
        resources = [
            e["resource"]
            for e in (bundle.get("entry") or [])[1:]
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
        if resources:
            await asyncio.to_thread(self.store, source, resources)
        carried = carried_resources(bundle)
        focuses = [
            e.focus for e in read_status((bundle.get("entry") or [{}])[0].get("resource") or {}).events
        ]
        missing = dict.fromkeys(
            ref for ref in [*focuses, *listed_without_resource(bundle)] if ref and ref not in carried
        )
        for ref in missing:
            await self.fetch(source, ref)
        log.info(
            "subscriptions.events.recovered",
            source=source.id,
            subscription=subscription,
            first=low,
            last=high,
        )

    async def catch_up(self, source: Source) -> int:
        """Search every kept type changed since the watermark; store; advance the watermark."""
        watermark = await asyncio.to_thread(self._watermark, source)
        fhir = self.client(source)
        newest = watermark
        changed = 0
        for rtype in KEPT_TYPES:
            params: dict[str, str] = {"_count": str(self.options.page_size)}
            if watermark is not None:
                since = watermark - self.options.overlap
                params["_lastUpdated"] = "gt" + since.isoformat().replace("+00:00", "Z")
            try:
                async for page in fhir.pages(rtype, params, max_pages=self.options.max_pages):
                    resources = [
                        e["resource"]
                        for e in page.get("entry") or []
                        if isinstance(e, dict)
                        and isinstance(e.get("resource"), dict)
                        and e["resource"].get("resourceType") == rtype
                    ]
                    for r in resources:
                        stamp = parse_instant((r.get("meta") or {}).get("lastUpdated"))
                        if stamp is not None and (newest is None or stamp > newest):
                            newest = stamp
                    if resources:
                        changed += await asyncio.to_thread(self.store, source, resources)
            except FhirHttpError as exc:
                if exc.upstream_status not in _NOT_OFFERED:
                    raise
                log.info("subscriptions.catch_up.type_skipped", source=source.id, resource_type=rtype)
        if newest is not None and newest != watermark:
            await asyncio.to_thread(self._set_watermark, source, newest)
        RECONCILED.labels(source.id, "stored").inc(changed)
        log.info("subscriptions.catch_up", source=source.id, changed=changed)
        return changed

    async def reconcile(self, source: Source) -> None:
        """Catch-up search, then notice deletes: stored ids the source no longer has."""
        started = self.clock()
        await self.catch_up(source)
        stored = await asyncio.to_thread(self._stored_ids, source)
        fhir = self.client(source)
        gone: list[tuple[str, str]] = []
        for rtype, ids in stored.items():
            for start in range(0, len(ids), self.options.id_chunk):
                chunk = ids[start : start + self.options.id_chunk]
                try:
                    found = await fhir.search_all(rtype, {"_id": ",".join(chunk), "_count": str(len(chunk))})
                except FhirHttpError as exc:
                    if exc.upstream_status not in _NOT_OFFERED:
                        raise
                    break
                present = {r.get("id") for r in found if r.get("resourceType") == rtype}
                gone.extend((rtype, rid) for rid in chunk if rid not in present)
        if gone:
            await asyncio.to_thread(self._delete, source, gone)
            RECONCILED.labels(source.id, "deleted").inc(len(gone))
        await asyncio.to_thread(self._reconciled_at, source, started)
        log.info("subscriptions.reconciled", source=source.id, deleted=len(gone))

    # ------------------------------------------------------------------ heartbeats

    async def learn_heartbeats(self) -> None:
        """Subscriptions Pinpoint did not create: read each once for its heartbeat period (Backport
        ``backport-heartbeat-period`` or R5 ``heartbeatPeriod``; 0 = none) and status."""
        unknown = await asyncio.to_thread(self._unknown_heartbeats)
        for source_id, subscription in unknown:
            source = self.source(source_id)
            if source is None:
                continue
            try:
                resource = await self.client(source).read("Subscription", subscription)
            except (FhirClientError, ValueError) as exc:
                log.info("subscriptions.heartbeat.unknown", source=source_id, error=type(exc).__name__)
                resource = {}
            period = heartbeat_period(resource)
            status = resource.get("status") if isinstance(resource.get("status"), str) else None
            await asyncio.to_thread(self._set_heartbeat, source_id, subscription, period or 0, status)

    async def check_heartbeats(self, report: RunReport) -> None:
        await self.learn_heartbeats()
        now = self.clock()
        silent = await asyncio.to_thread(self._silent, now)
        for row in silent:
            source = self.source(row.source)
            if source is None:
                continue
            report.heartbeat_checks += 1
            MISSED_HEARTBEATS.labels(source.id).inc()
            log.warning("subscriptions.heartbeat.missed", source=source.id, subscription=row.subscription)
            await self.status_check(source, row.subscription)

    async def status_check(self, source: Source, subscription: str) -> str | None:
        """Ask ``$status``; a counter ahead of ours becomes a gap; ``error``/``off`` is repaired."""
        fhir = self.client(source)
        try:
            bundle = await fhir.operation(f"Subscription/{subscription}/$status")
        except FhirClientError as exc:
            log.info("subscriptions.status.unavailable", source=source.id, error=type(exc).__name__)
            await asyncio.to_thread(self._queue_catch_up, source, subscription)
            return None
        entries = [
            e
            for e in bundle.get("entry") or []
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
        if bundle.get("type") != "searchset" or not entries:
            status_resource: dict[str, Any] = bundle
        else:
            status_resource = entries[0]["resource"]
        note = read_status(status_resource)
        await asyncio.to_thread(
            self._after_status, source, subscription, note.status, note.events_since_start
        )
        if note.status in ("error", "off"):
            await self.reactivate(source, subscription)
        return note.status

    async def reactivate(self, source: Source, subscription: str) -> None:
        """Set the Subscription back to ``requested`` (re-activation is the subscriber's job)."""
        fhir = self.client(source)
        current = await fhir.read("Subscription", subscription)
        current["status"] = "requested"
        current.pop("error", None)
        await fhir.update(current)
        log.info("subscriptions.reactivated", source=source.id, subscription=subscription)

    # ------------------------------------------------------------------ database helpers (threads)

    def find_gaps(self) -> int:
        """Walk the event numbers received past where gap detection has got to (per
        subscription, its row locked briefly); queue the gaps found. Returns how many."""
        now = self.clock()
        found = 0
        if self._pruned_at is None or now - self._pruned_at >= self.options.prune_every:
            with session_scope(self.engine) as session:
                state.prune_events(session, before=now - self.options.keep_done)
            self._pruned_at = now
        with Session(self.engine) as session:
            pending = state.unswept(session)
        for source_id, subscription in pending:
            source = self.settings_source(source_id)
            with session_scope(self.engine) as session:
                row, gaps = state.sweep(session, source_id, subscription, now=now, grace=GAP_GRACE)
                if gaps and source is not None:
                    record_gaps(session, source, row, gaps, now=now, due=now)
                    session.add(row)
                found += len(gaps)
        return found

    def settings_source(self, source_id: str) -> Source | None:
        """A configured source (with or without a server to ask)."""
        return next((s for s in self.settings.config.sources if s.id == source_id), None)

    def _still_missing(self, source: Source, subscription: str, low: int, high: int) -> list[tuple[int, int]]:
        with Session(self.engine) as session:
            return state.holes(low, high, state.logged(session, source.id, subscription, low, high))

    def store(self, source: Source, resources: Iterable[dict[str, Any]]) -> int:
        """Store resources read from the source like a batch (rejections become dead letters)."""
        return self.intake.store_fetched(source, resources)

    def _delete(self, source: Source, keys: list[tuple[str, str]]) -> None:
        self.intake.delete_gone(source, keys)
        log.info("subscriptions.deleted_upstream", source=source.id, count=len(keys))

    def _stored_ids(self, source: Source) -> dict[str, list[str]]:
        with Session(self.engine) as session:
            rows = session.exec(
                select(Resource.resource_type, Resource.resource_id).where(
                    Resource.source == source.id,
                    col(Resource.deleted).is_(False),
                    col(Resource.resource_type).in_(KEPT_TYPES),
                )
            ).all()
        out: dict[str, list[str]] = {}
        for rtype, rid in rows:
            out.setdefault(rtype, []).append(rid)
        return out

    def _source_row(self, session: Session, source: Source) -> SubscriptionState:
        return state.lock_state(session, source.id, state.SOURCE_ROW)

    def _watermark(self, source: Source) -> datetime | None:
        """Where the catch-up search starts (the server's clock). None: a full first search —
        `subscriptions sync` sets it to the creation of the source's first Subscription, so only
        unmanaged sources pay for one; load older data with `pinpoint import` of a Bulk export."""
        with Session(self.engine) as session:
            row = session.get(SubscriptionState, (source.id, state.SOURCE_ROW))
            return row.watermark if row else None

    def _set_watermark(self, source: Source, value: datetime) -> None:
        with session_scope(self.engine) as session:
            row = self._source_row(session, source)
            if row.watermark is None or value > row.watermark:
                row.watermark = value
            row.updated_at = self.clock()
            session.add(row)

    def _reconcile_due(self, source: Source) -> bool:
        with Session(self.engine) as session:
            row = session.get(SubscriptionState, (source.id, state.SOURCE_ROW))
        if row is None or row.last_reconciled_at is None:
            return True
        return self.clock() - row.last_reconciled_at >= source.subscriptions.reconcile_every

    def _reconciled_at(self, source: Source, when: datetime) -> None:
        with session_scope(self.engine) as session:
            row = self._source_row(session, source)
            row.last_reconciled_at = when
            row.updated_at = self.clock()
            session.add(row)
            state.prune_done(session, before=self.clock() - self.options.keep_done)

    def _silent(self, now: datetime) -> list[SubscriptionState]:
        out = []
        with Session(self.engine) as session:
            for row in state.states(session):
                if not row.heartbeat_period or row.subscription.startswith("("):
                    continue
                seen = max(
                    (t for t in (row.last_notification_at, row.last_heartbeat_at) if t is not None),
                    default=None,
                )
                limit = timedelta(seconds=row.heartbeat_period * 1.5) + self.options.heartbeat_margin
                if seen is None or now - seen > limit:
                    out.append(row)
        return out

    def _unknown_heartbeats(self) -> list[tuple[str, str]]:
        with Session(self.engine) as session:
            return [
                (row.source, row.subscription)
                for row in state.states(session)
                if row.heartbeat_period is None
                and not row.subscription.startswith("(")
                # topic-based ones (classic subscriptions have no heartbeat)
                and (row.topic is not None or row.last_event_number is not None)
            ]

    def _set_heartbeat(self, source_id: str, subscription: str, period: int, status: str | None) -> None:
        with session_scope(self.engine) as session:
            row = state.lock_state(session, source_id, subscription)
            row.heartbeat_period = period
            if status and row.status in (None, "active", "requested"):
                row.status = status[:32]
            session.add(row)

    def _after_status(
        self, source: Source, subscription: str, status: str | None, counter: int | None
    ) -> None:
        now = self.clock()
        with session_scope(self.engine) as session:
            row = state.lock_state(session, source.id, subscription)
            row.last_heartbeat_at = now  # checked: do not ask again before the next period
            if status:
                row.status = status[:32]
            if counter is not None and row.last_event_number is not None:
                record_gaps(session, source, row, state.announce(session, row, counter), now=now, due=now)
            elif counter is not None:  # unknown history: from the counter on
                row.last_event_number = counter
            row.updated_at = now
            session.add(row)

    def _queue_catch_up(self, source: Source, subscription: str) -> None:
        now = self.clock()
        with session_scope(self.engine) as session:
            row = state.lock_state(session, source.id, subscription)
            row.last_heartbeat_at = now
            session.add(row)
            if state.pending_of_kind(session, source.id, [state.EMPTY, state.PING]) is None:
                state.enqueue(session, source.id, state.EMPTY, now=now, subscription=subscription)

    def _gauges(self) -> None:
        now = self.clock()
        with Session(self.engine) as session:
            counts = state.inbox_counts(session)
            oldest = state.oldest_pending(session)
            rows = state.states(session)
        INBOX_PENDING.set(counts.get(state.PENDING, 0) + counts.get(state.WORKING, 0))
        INBOX_AGE.set((now - oldest).total_seconds() if oldest else 0)
        for row in rows:
            seen = max(
                (t for t in (row.last_notification_at, row.last_heartbeat_at) if t is not None), default=None
            )
            if seen is not None and not row.subscription.startswith("(source"):
                LAG.labels(row.source, row.subscription).set((now - seen).total_seconds())


def heartbeat_period(subscription: dict[str, Any]) -> int | None:
    """Seconds between heartbeats a Subscription asks for (Backport extension or R5 element)."""
    value = subscription.get("heartbeatPeriod")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    for ext in (subscription.get("channel") or {}).get("extension") or ():
        if isinstance(ext, dict) and str(ext.get("url", "")).endswith("backport-heartbeat-period"):
            period = ext.get("valueUnsignedInt")
            return period if isinstance(period, int) else None
    return None
