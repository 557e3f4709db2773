"""Dead-letter replay: run a kept payload through intake again, as its source.

A replay that still fails leaves the dead letter ``failed`` (with the new reason in its
context) and creates no new dead letter; one that succeeds marks it ``replayed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.ingest.intake.bundles import process_payload
from services.ingest.intake.pipeline import Rejection, Result
from services.ingest.intake.push import PayloadError, parse_body
from services.ingest.subscriptions import state
from shared.db.deadletters import Replayer
from shared.db.models import DeadLetter, utcnow
from shared.db.session import session_scope
from shared.errors import Conflict, NotFound
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger("pinpoint.ingest")

REPLAYABLE = frozenset({"push", "notification", "import"})

#: ``dead_letter.id`` is an INTEGER column: 32-bit signed on PostgreSQL (a larger value is a
#: database error there, not a miss), so a larger one names no row on either backend.
MAX_ROW_ID = 2**31 - 1


@dataclass(frozen=True)
class ReplayOutcome:
    id: int
    status: str
    reason: str | None
    kept: int
    dropped: int
    rejected: int

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "reason": self.reason,
            "kept": self.kept,
            "dropped": self.dropped,
            "rejected": self.rejected,
        }


def replay(
    engine: Engine, settings: Settings, dead_letter_id: int, others: Mapping[str, Replayer]
) -> ReplayOutcome:
    """Replay a dead letter: ingest's own kinds here, any other kind through ``others``."""
    if not 1 <= dead_letter_id <= MAX_ROW_ID:
        raise NotFound(f"No dead letter {dead_letter_id}")
    with session_scope(engine) as session:
        row = session.get(DeadLetter, dead_letter_id)
        if row is None:
            raise NotFound(f"No dead letter {dead_letter_id}")
        if row.kind == "fetch":  # a notification's fetch that gave up: queue it again
            return requeue_fetch(session, row)
        if (row.context or {}).get("truncated"):
            raise Conflict(
                f"Dead letter {dead_letter_id} holds only the first bytes of a body refused as too large; "
                "the sender must send it again"
            )
        payload, source_id, kind = row.payload, row.source, row.kind
    if kind not in REPLAYABLE:  # another service's kind (e.g. a parked delivery): its replayer
        other = others.get(kind)
        if other is None:
            raise Conflict(f"Dead letter {dead_letter_id} is a {kind!r}; replay it with its own service")
        done = other(engine, settings, dead_letter_id)
        return ReplayOutcome(dead_letter_id, str(done["status"]), done.get("reason"), 0, 0, 0)
    try:
        source = settings.config.source(source_id)
    except KeyError:
        raise Conflict(
            f"Source {source_id!r} of dead letter {dead_letter_id} is no longer configured"
        ) from None

    failure: str | None = None
    result: Result | None = None
    try:
        data = parse_body(payload)
    except PayloadError as exc:
        data, failure = None, str(exc)
    if data is None and failure is None:
        failure = "empty payload"
    if data is not None:
        with session_scope(engine) as session:
            result = process_payload(session, source, data, payload)
            rejections: list[Rejection] = result.rejections
            if result.status >= 400 or rejections:
                failure = rejections[0].reason if rejections else "rejected"
                session.rollback()
    with session_scope(engine) as session:
        row = session.get(DeadLetter, dead_letter_id)
        assert row is not None
        row.replay_count += 1
        row.replayed_at = utcnow()
        row.status = "failed" if failure else "replayed"
        row.context = {**(row.context or {}), "last_replay_error": failure}
        session.add(row)
    tally = result.tally if result is not None else None
    outcome = ReplayOutcome(
        dead_letter_id,
        "failed" if failure else "replayed",
        failure,
        tally.total("kept") if tally else 0,
        (tally.total("dropped") + tally.total("unresolved")) if tally else 0,
        tally.total("rejected") if tally else 0,
    )
    log.info("ingest.dead_letter.replayed", dead_letter=dead_letter_id, status=outcome.status)
    return outcome


def requeue_fetch(session: Session, row: DeadLetter) -> ReplayOutcome:
    """A ``fetch`` dead letter (id-only / catch-up / gap work that exhausted its retries) goes back
    to the inbox; the subscription worker does it again."""
    assert row.id is not None
    try:
        work = orjson.loads(row.payload)
        kind = str(work["kind"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise Conflict(f"Dead letter {row.id} does not describe a fetch") from None
    now = utcnow()
    state.enqueue(
        session,
        row.source,
        kind,
        now=now,
        subscription=work.get("subscription"),
        reference=work.get("reference"),
        event_number=(row.context or {}).get("event_number"),
    )
    row.replay_count += 1
    row.replayed_at = now
    row.status = "replayed"
    session.add(row)
    log.info("ingest.dead_letter.requeued", dead_letter=row.id, kind=kind)
    return ReplayOutcome(row.id, "replayed", None, 0, 0, 0)
