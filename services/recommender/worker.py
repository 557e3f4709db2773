"""The recommender worker: claim dirty patients → load → evaluate → store → release.

The evaluation queue is a dirty set (``shared/db/queue.py``). A worker *claims* rows — sets
``claimed_by`` and ``claimed_until = now + claim_ttl`` and commits — so no other worker evaluates
those patients meanwhile (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serialises the one
UPDATE). It then evaluates outside any lock and, in ONE transaction, deletes the row only if its
``generation`` is still the claimed one and stores the results. A mark that arrived during the
evaluation bumped the generation: the results are dropped and the claim cleared, so the patient
is evaluated again with the new data — no mark is ever lost. A crashed worker's claims expire
after ``claim_ttl`` and are taken over.

With the results, the same transaction stores each patient's entry of the outcome cache (the rows
of the practice's outcomes summary, ``services/recommender/outcomes/cache.py``), computed from the
facts the evaluation has just normalised: the summary that follows a backfill finds every patient
the workers have evaluated warm.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter, Histogram
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from services.recommender.assessor import Assessor
from services.recommender.outcomes import cache as outcome_cache
from services.recommender.patients.ids import patient_ref
from services.recommender.patients.repository import Loaded, load_patients
from services.recommender.suggestions.repository import apply_entry, preload
from shared.db.models import AuditLog, EvaluationQueue, utcnow
from shared.db.session import NewRows, session_scope
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger("pinpoint.worker")

EVALUATIONS = Counter(
    "pinpoint_evaluations_total",
    "Patient evaluations by outcome (stored, superseded by a newer mark, lost claim, failed)",
    ["outcome"],
)
EVALUATION_SECONDS = Histogram(
    "pinpoint_evaluation_duration_seconds",
    "Load + evaluate + store of one patient",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SUGGESTION_WRITES = Counter("pinpoint_suggestion_writes_total", "Suggestion groups written", ["action"])

_QUEUE = EvaluationQueue.__table__  # type: ignore[attr-defined]
#: the claims still ours at the generation evaluated, deleted (one cached statement for any batch)
_DONE = (
    sa.delete(_QUEUE)
    .where(
        _QUEUE.c.claimed_by == sa.bindparam("ident"),
        sa.tuple_(_QUEUE.c.patient_key, _QUEUE.c.generation).in_(sa.bindparam("claimed", expanding=True)),
    )
    .returning(_QUEUE.c.patient_key)
)


def _patient_resources(loaded: dict[str, Loaded]) -> dict[str, dict[str, Any] | None]:
    """Each patient's stored Patient resource among what was loaded for its evaluation (None: none
    stored), so that the store does not read it again; a patient with several is left out (the
    store reads the latest)."""
    out: dict[str, dict[str, Any] | None] = {}
    for key, patient in loaded.items():
        found = [r for r in patient.resources if r.get("resourceType") == "Patient"]
        if len(found) <= 1:
            out[key] = found[0] if found else None
    return out


@dataclass(frozen=True)
class Claim:
    patient_key: str
    generation: int


@dataclass
class DrainStats:
    stored: int = 0
    superseded: int = 0
    lost: int = 0
    failed: int = 0
    changed_groups: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # of the whole process meanwhile

    @property
    def evaluated(self) -> int:
        return self.stored + self.superseded + self.lost


def worker_id() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Worker:
    """One worker: claims a batch of patients, reads their stored resources in one query,
    evaluates them one at a time and stores the batch's results in one transaction."""

    engine: Engine
    settings: Settings
    assessor: Assessor
    ident: str = field(default_factory=worker_id)
    batch: int = 64
    clock: Callable[[], datetime] = utcnow

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @property
    def deliver(self) -> bool:
        return self.settings.config.writeback is not None

    @cached_property
    def outcome_tag(self) -> str:
        """The outcome cache's engine tag of this worker's policy and code (computed once)."""
        return outcome_cache.engine_tag(self.assessor)

    def load(
        self, session: Session, keys: list[str], now: datetime
    ) -> tuple[dict[str, Loaded], dict[str, str]]:
        """The patients' stored input with their fingerprints, and the fingerprints of their outcome
        cache entries still usable at ``now`` (an entry whose fingerprint is unchanged is current)."""
        loaded = load_patients(session, keys, fingerprint=True)
        return loaded, outcome_cache.usable_fingerprints(session, keys, self.outcome_tag, now)

    def evaluate(
        self, key: str, patient: Loaded, now: datetime, cached_fingerprint: str | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The patient's §3 entry and its outcome cache entry, from one normalisation. The cache
        entry is None for a patient with no stored resource left (the summary does not list it),
        when the stored entry is still usable (``cached_fingerprint``, from :meth:`load`, is the
        patient's: nothing to write) or when computing it failed (logged by type; the summary will
        evaluate that patient itself)."""
        facts = self.assessor.facts(patient.resources)
        contexts = self.assessor.contexts(facts)  # one per patient, for the entry and the outcomes
        ref = patient_ref(key)
        entry = self.assessor.entry(facts.get(ref), ref, now, contexts.get(ref))
        if not patient.resources or (
            cached_fingerprint is not None and cached_fingerprint == patient.fingerprint
        ):
            return entry, None
        try:
            _, cached = outcome_cache.evaluate(self.assessor, self.outcome_tag, key, patient, now, contexts)
        except Exception as exc:
            log.warning("worker.outcomes_failed", error=type(exc).__name__)
            return entry, None
        return entry, cached

    def claim(self, limit: int | None = None) -> list[Claim]:
        """Claim up to ``limit`` unclaimed (or expired) dirty patients, oldest first; commits."""
        now = self.clock()
        pick = (
            sa.select(_QUEUE.c.patient_key)
            .where(sa.or_(_QUEUE.c.claimed_until.is_(None), _QUEUE.c.claimed_until < now))
            .order_by(_QUEUE.c.dirty_since, _QUEUE.c.patient_key)
            .limit(limit or self.batch)
        )
        if self.is_postgres:
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            sa.update(_QUEUE)
            .where(_QUEUE.c.patient_key.in_(pick.scalar_subquery()))
            .values(claimed_by=self.ident, claimed_until=now + self.settings.claim_ttl)
            .returning(_QUEUE.c.patient_key, _QUEUE.c.generation)
        )
        with session_scope(self.engine) as session:
            rows = session.execute(stmt).all()
        return sorted((Claim(k, g) for k, g in rows), key=lambda c: c.patient_key)

    def release(self, claims: list[Claim]) -> None:
        """Give claims back unprocessed (shutdown): another worker may take them at once."""
        if not claims:
            return
        with session_scope(self.engine) as session:
            session.execute(
                sa.update(_QUEUE)
                .where(
                    _QUEUE.c.patient_key.in_([c.patient_key for c in claims]),
                    _QUEUE.c.claimed_by == self.ident,
                )
                .values(claimed_by=None, claimed_until=None)
            )

    def process(self, claim: Claim, now: datetime | None = None) -> str:
        """Evaluate one claimed patient and store the result; returns the outcome."""
        started = time.perf_counter()
        when = now or utcnow()
        try:
            outcome = self._process(claim, when)
        except Exception as exc:
            self._failed(claim, exc)
            outcome = "failed"
        EVALUATIONS.labels(outcome).inc()
        EVALUATION_SECONDS.observe(time.perf_counter() - started)
        return outcome

    def _process(self, claim: Claim, now: datetime) -> str:
        key = claim.patient_key
        with session_scope(self.engine) as session:
            loaded, stored = self.load(session, [key], now)
        entry, cached = self.evaluate(key, loaded[key], now, stored.get(key))
        with session_scope(self.engine) as session:
            return self._store(
                session, [(claim, entry)], {key: cached} if cached else {}, _patient_resources(loaded)
            )[key]

    def _store(
        self,
        session: Session,
        results: list[tuple[Claim, dict[str, Any]]],
        outcome_entries: dict[str, dict[str, Any]] | None = None,
        patients: dict[str, dict[str, Any] | None] | None = None,
    ) -> dict[str, str]:
        """In the caller's transaction: drop the queue rows still at the evaluated generation and
        store their results (and their outcome cache entries); clear the claims of the others (a
        newer mark came in). ``patients``: their Patient resources as loaded for the evaluation
        (:func:`_patient_resources`; a patient whose mark did not move still has them)."""
        if not results:
            return {}
        gone = session.execute(
            _DONE, {"ident": self.ident, "claimed": [(c.patient_key, c.generation) for c, _ in results]}
        )
        current = {k for (k,) in gone}
        others = [c.patient_key for c, _ in results if c.patient_key not in current]
        kept: set[str] = set()
        if others:
            cleared = session.execute(
                sa.update(_QUEUE)
                .where(_QUEUE.c.patient_key.in_(others), _QUEUE.c.claimed_by == self.ident)
                .values(claimed_by=None, claimed_until=None)
                .returning(_QUEUE.c.patient_key)
            )
            kept = {k for (k,) in cleared}
        keys = sorted(current)
        pre = preload(session, keys, {k: v for k, v in (patients or {}).items() if k in current})
        new_rows = NewRows()
        outcomes: dict[str, str] = {}
        written_at = utcnow()
        ref = self.assessor.ref
        for claim, entry in results:
            key = claim.patient_key
            if key not in current:
                outcomes[key] = "superseded" if key in kept else "lost"
                continue
            applied = apply_entry(
                session,
                key,
                entry,
                ref,
                deliver=self.deliver,
                written_at=written_at,
                preloaded=pre,
                new_rows=new_rows,
            )
            new_rows.add(
                AuditLog,
                at=written_at,
                actor=f"worker:{self.ident}",
                action="evaluate",
                target=key,
                detail={
                    "generation": claim.generation,
                    "policy": f"{ref.id}|{ref.version}",
                    "assessments": len(entry.get("assessments") or []),
                    "created": applied.created,
                    "updated": applied.updated,
                    "withdrawn": applied.withdrawn,
                },
            )
            for action, n in (
                ("create", applied.created),
                ("update", applied.updated),
                ("revoke", applied.withdrawn),
            ):
                if n:
                    SUGGESTION_WRITES.labels(action).inc(n)
            outcomes[key] = "stored"
        new_rows.insert(session)
        entries = outcome_entries or {}
        outcome_cache.upsert(session.connection(), [entries[k] for k in keys if k in entries])
        return outcomes

    def process_batch(self, claims: list[Claim], now: datetime | None = None) -> dict[str, str]:
        """Evaluate a batch of claimed patients with one load and one store transaction.

        A patient whose evaluation raises is backed off on its own; if the store transaction
        fails, the batch is retried patient by patient so one bad patient cannot block the rest.
        """
        started = time.perf_counter()
        when = now or utcnow()
        outcomes: dict[str, str] = {}
        try:
            with session_scope(self.engine) as session:
                loaded, stored = self.load(session, [c.patient_key for c in claims], when)
        except Exception:
            return {c.patient_key: self.process(c, now) for c in claims}
        results: list[tuple[Claim, dict[str, Any]]] = []
        cached: dict[str, dict[str, Any]] = {}
        for c in claims:
            try:
                key = c.patient_key
                entry, outcome_entry = self.evaluate(key, loaded[key], when, stored.get(key))
            except Exception as exc:
                self._failed(c, exc)
                outcomes[c.patient_key] = "failed"
                continue
            results.append((c, entry))
            if outcome_entry is not None:
                cached[c.patient_key] = outcome_entry
        try:
            with session_scope(self.engine) as session:
                outcomes.update(self._store(session, results, cached, _patient_resources(loaded)))
        except Exception as exc:
            log.warning("worker.batch_store_failed", size=len(results), error=type(exc).__name__)
            return {**outcomes, **{c.patient_key: self.process(c, now) for c, _ in results}}
        elapsed = time.perf_counter() - started
        for outcome in outcomes.values():
            EVALUATIONS.labels(outcome).inc()
            EVALUATION_SECONDS.observe(elapsed / max(len(claims), 1))
        return outcomes

    def _failed(self, claim: Claim, exc: Exception) -> None:
        """Keep the mark, back off (5 s doubling, at most the claim TTL), record the error type."""
        log.warning("worker.evaluation_failed", patient_key=claim.patient_key, error=type(exc).__name__)
        try:
            with session_scope(self.engine) as session:
                row = session.get(EvaluationQueue, claim.patient_key)
                if row is None or row.claimed_by != self.ident:
                    return
                row.attempts += 1
                delay = min(timedelta(seconds=5 * 2 ** min(row.attempts - 1, 10)), self.settings.claim_ttl)
                row.claimed_by = None
                row.claimed_until = self.clock() + delay
                row.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                session.add(row)
        except Exception as inner:  # the database itself failed: the claim simply expires
            log.error("worker.release_failed", error=type(inner).__name__)

    def drain(self, stop: threading.Event | None = None, now: datetime | None = None) -> DrainStats:
        """Evaluate until nothing is claimable (or ``stop`` is set). ``now``: evaluation instant."""
        stats = DrainStats()
        started, cpu_started = time.perf_counter(), time.process_time()
        while not (stop and stop.is_set()):
            claims = self.claim()
            if not claims:
                break
            if stop and stop.is_set():
                self.release(claims)
                break
            for outcome in self.process_batch(claims, now).values():
                setattr(stats, outcome, getattr(stats, outcome) + 1)
        stats.seconds = time.perf_counter() - started
        stats.cpu_seconds = time.process_time() - cpu_started
        if stats.evaluated or stats.failed:
            log.info(
                "worker.drained",
                stored=stats.stored,
                superseded=stats.superseded,
                lost=stats.lost,
                failed=stats.failed,
                seconds=round(stats.seconds, 3),
            )
        return stats


class DirtyListener:
    """LISTEN ``pinpoint_dirty`` on PostgreSQL: :meth:`wait` returns on a NOTIFY or after a timeout."""

    def __init__(self, engine: Engine) -> None:
        self._url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._conn: Any = None
        self._lock = threading.Lock()
        self._closed = False

    def wait(self, timeout: float) -> bool:
        import psycopg  # lazy on purpose: only a PostgreSQL deployment loads the driver

        with self._lock:
            if self._closed:
                return False
            try:
                if self._conn is None:
                    self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
                    self._conn.execute("LISTEN pinpoint_dirty")
                woke = False
                for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                    woke = True
                return woke
            except psycopg.Error as exc:
                log.warning("worker.listen_failed", error=type(exc).__name__)
                self._drop()
                time.sleep(min(timeout, 1.0))
                return False
            finally:
                if self._closed:
                    self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def close(self) -> None:
        self._closed = True
        if self._lock.acquire(blocking=False):
            try:
                self._drop()
            finally:
                self._lock.release()


async def _pause(stop: threading.Event, poll: float, listener: DirtyListener | None) -> None:
    """Until a NOTIFY (PostgreSQL), the poll interval, or ``stop``: waited in slices of at most a
    second, so a graceful stop (SIGTERM) is not held up by a long poll interval."""
    deadline = time.monotonic() + poll
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        if listener is not None:
            if await asyncio.to_thread(listener.wait, min(left, 1.0)):
                return
        else:
            await asyncio.sleep(min(left, 1.0))


async def run_forever(worker: Worker, stop: threading.Event | None = None) -> None:
    """The background loop: drain, then wait for a NOTIFY (PostgreSQL) or the poll interval."""
    stop = stop or threading.Event()
    poll = max(worker.settings.worker_poll_interval.total_seconds(), 0.05)
    listener = DirtyListener(worker.engine) if worker.is_postgres else None
    log.info("worker.started", worker=worker.ident, listen=listener is not None)
    try:
        while not stop.is_set():
            try:
                await asyncio.to_thread(worker.drain, stop)
            except Exception as exc:  # database down: keep trying, bounded by the poll interval
                log.error("worker.drain_failed", error=type(exc).__name__)
            await _pause(stop, poll, listener)
    finally:
        stop.set()
        if listener is not None:
            listener.close()
        log.info("worker.stopped", worker=worker.ident)


def queue_state(engine: Engine) -> tuple[int, datetime | None, int]:
    """Depth, oldest ``dirty_since`` and how many rows are claimed right now."""
    now = utcnow()
    with session_scope(engine) as session:
        depth, oldest = session.execute(sa.select(sa.func.count(), sa.func.min(_QUEUE.c.dirty_since))).one()
        active = session.execute(
            sa.select(sa.func.count()).where(col(EvaluationQueue.claimed_until) > now)
        ).scalar_one()
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return int(depth), oldest, int(active)


def queue_check(engine: Engine, max_age: timedelta) -> Callable[[], str]:
    """Readiness: fails when the oldest dirty mark is older than ``max_age`` and none is claimed."""

    def check() -> str:
        try:
            depth, oldest, active = queue_state(engine)
        except Exception as exc:
            return f"unknown: {type(exc).__name__}"
        if oldest is None or active:
            return "ok"
        age = utcnow() - oldest
        if age > max_age:
            return f"stuck: {depth} dirty, oldest {int(age.total_seconds())}s old, none being evaluated"
        return "ok"

    return check
