"""The push use cases behind the FHIR bases: parse, process in one unit of work, keep what was
rejected as dead letters, and answer only once the writes are durable."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.ingest.intake.bundles import NOTIFICATION_TYPES, process_payload, process_resource
from services.ingest.intake.notifications import is_notification, is_transaction_notification
from services.ingest.intake.pipeline import Rejection, Result, Tally, informational
from services.ingest.intake.repository import defer_writes, delete_resource, prefetch, write_deferred
from services.ingest.subscriptions.intake import (
    Ahead,
    book_ahead,
    book_ping,
    classic_ahead,
    note_classic,
    status_read_ahead,
    topic_ahead,
)
from services.ingest.subscriptions.state import unclaimed_events
from shared.db.deadletters import record_dead_letter
from shared.db.group_commit import when_settled
from shared.db.session import session_scope
from shared.errors import (
    InvalidInput,
    Issue,
    NotFound,
    PinpointError,
    TooLarge,
    UnsupportedMediaType,
    operation_outcome,
)
from shared.fhir.text import unstorable_in_body, unstorable_message
from shared.jsonlimits import TOO_DEEP, too_deep
from shared.logging import get_logger
from shared.settings import Settings, Source

log = get_logger("pinpoint.ingest")

BOM = b"\xef\xbb\xbf"


class PayloadError(ValueError):
    """The body is not JSON, not FHIR, or holds text that cannot be stored (``expression``:
    where, FHIRPath-like)."""

    def __init__(self, message: str, expression: str | None = None) -> None:
        super().__init__(message)
        self.expression = expression


def parse_body(body: bytes) -> dict[str, Any] | None:
    """The JSON object of a body; ``None`` for an empty body (a ping); :class:`PayloadError` else."""
    if body.startswith(BOM):
        body = body[len(BOM) :]
    if not body.strip():
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"Body is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise PayloadError("Body is JSON but not a FHIR resource (no resourceType)")
    if too_deep(data, body=body):
        raise PayloadError(f"Body is not FHIR: {TOO_DEEP}")
    bad = unstorable_in_body(body, data)
    if bad is not None:
        raise PayloadError(unstorable_message(*bad), expression=bad[0])
    return data


def resolve_source(settings: Settings, source_id: str) -> Source:
    try:
        return settings.config.source(source_id)
    except KeyError:
        raise NotFound(f"No source {source_id!r} is configured") from None


def keep_rejections(
    engine: Engine, source: Source, kind: str, rejections: list[Rejection], ctype: str | None
) -> None:
    for r in rejections:
        dl = record_dead_letter(
            engine,
            source=source.id,
            kind=kind,
            reason=r.reason,
            payload=r.payload,
            content_type=ctype,
            outcome=r.outcome,
            context=r.context or None,
        )
        log.info("ingest.dead_letter.recorded", source=source.id, kind=kind, dead_letter=dl)


def keep_refusal(
    engine: Engine,
    source: Source,
    payload: bytes,
    ctype: str | None,
    err: PinpointError,
    context: dict[str, Any] | None = None,
) -> None:
    """A payload refused before intake (content type, size) kept as a dead letter, with why."""
    keep_rejections(
        engine, source, "push", [Rejection(payload, err.diagnostics, err.outcome(), context or {})], ctype
    )


def keep_too_large(engine: Engine, source: Source, err: TooLarge, ctype: str | None) -> None:
    """A body over the limit: its first bytes and its size (a lower bound when it was streamed
    without a Content-Length). Not replayable: the sender must send it again, smaller."""
    size = f"{err.size:,} bytes" if err.size_exact else f"more than {err.size - 1:,} bytes"
    reason = f"body too large ({size}); its first {len(err.head):,} bytes are kept"
    context = {"truncated": True, "size": err.size, "size_exact": err.size_exact}
    keep_rejections(engine, source, "push", [Rejection(err.head, reason, err.outcome(), context)], ctype)


def _reject_unparsable(
    engine: Engine, source: Source, body: bytes, ctype: str | None, exc: PayloadError
) -> None:
    if exc.expression is None:
        err = InvalidInput(str(exc), code="structure")
    else:
        err = InvalidInput(str(exc), issues=[Issue("invalid", str(exc), expression=(exc.expression,))])
    keep_rejections(engine, source, "push", [Rejection(body, str(exc), err.outcome())], ctype)
    raise err


Handler = Callable[[Session, dict[str, Any], bytes], Result]

#: Bodies up to this size go through the process's group writer (notifications, single
#: resources: one transaction and one commit for all those arriving together); larger ones
#: (bulk Bundles) run in their own transaction so they do not hold back the acks of others.
GROUPED_MAX_BYTES = 256 * 1024


_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class Refused(Exception):
    """A push whose answer is an error (>= 400): raised so that its transaction writes nothing."""

    def __init__(self, result: Result) -> None:
        super().__init__(result.status)
        self.result = result


def wrong_media_type(body: bytes, ctype: str | None) -> UnsupportedMediaType | None:
    if body.strip() and ctype and "json" not in ctype:
        return UnsupportedMediaType(f"Content-Type {ctype} is not supported; send application/fhir+json")
    return None


@dataclass(frozen=True, slots=True)
class PushWork:
    """A push's writes, for :func:`receive` or the group writer: the body parsed (each run from
    its bytes: a run may be repeated after a rollback), processed, booked. A body that is not
    FHIR comes back as its :class:`PayloadError`; an answer >= 400 raises :class:`Refused`."""

    source: Source
    body: bytes
    handler: Handler | None = None
    subscription: str | None = None

    def __call__(self, session: Session) -> Result | PayloadError:
        source, body, subscription = self.source, self.body, self.subscription
        try:
            data = parse_body(body)
        except PayloadError as exc:
            return exc
        if data is None:
            queued = book_ping(session, source, subscription=subscription)
            when_settled(session, partial(log.info, "ingest.ping", source=source.id, catch_up=queued))
            return Result(200, informational("ping received"), Tally())
        if self.handler is None:
            status_read_ahead(session, data, session.info.get(_NOTES, {}).pop(id(self), None))
            result = process_payload(session, source, data, body)
        else:
            result = self.handler(session, data, body)
        if result.status >= 400:
            raise Refused(result)
        if subscription is not None:
            note_classic(session, source, subscription)
        return result

    def peek(self) -> Any:
        """The body's JSON, leniently (a hint for reading and booking ahead: ``None`` for an empty
        body, ``...`` for one that is not JSON); the run itself checks it."""
        body = self.body.removeprefix(BOM)
        if not body.strip():
            return None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            return ...

    def ahead(self, data: Any) -> list[Ahead]:
        """What the run will book on subscription rows and event logs (:func:`book_ahead`)."""
        if data is None:  # a ping
            return [classic_ahead(self.source, self.subscription)]
        found = []
        if self.handler is None and isinstance(data, dict) and data.get("resourceType") == "Bundle":
            btype = data.get("type")
            if (btype in NOTIFICATION_TYPES and is_notification(data)) or (
                btype == "transaction" and is_transaction_notification(data)
            ):
                found.append(topic_ahead(self.source, data))
        if self.subscription is not None:
            found.append(classic_ahead(self.source, self.subscription))
        return found

    def identities(self, data: Any = ...) -> list[tuple[str, str]]:
        """``(type, id)`` of the resources the body (its JSON: ``data``) names (a hint for
        reading ahead)."""
        if data is ...:
            data = self.peek()
        if not isinstance(data, dict):
            return []
        entries = data.get("entry") if data.get("resourceType") == "Bundle" else [{"resource": data}]
        found = []
        for entry in entries if isinstance(entries, list) else ():
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict):
                rtype, rid = resource.get("resourceType"), resource.get("id")
                if (  # FHIR's syntax only: anything else is for the intake to refuse
                    isinstance(rtype, str)
                    and isinstance(rid, str)
                    and rtype != "Bundle"
                    and _TYPE.fullmatch(rtype)
                    and _ID.fullmatch(rid)
                ):
                    found.append((rtype, rid))
        return found


#: The status of each notification of the batch, read ahead (by the work's id): read once.
_NOTES = "pinpoint.notes_ahead"


def begin_batch(session: Session, works: Sequence[Callable[[Session], Any]]) -> None:
    """The group writer's transaction begins: writes deferred to its end; the subscription rows
    and event numbers its deliveries book, booked in key order (:func:`book_ahead`: no deadlock
    between writers); the stored state of every resource its pushes name read in one statement
    per source (none when they name none)."""
    defer_writes(session)
    by_source: dict[str, list[tuple[str, str]]] = {}
    aheads: list[Ahead] = []
    notes = session.info[_NOTES] = {}
    for work in works:
        if isinstance(work, PushWork):
            data = work.peek()
            found = work.ahead(data)
            notes.update((id(work), a.note) for a in found if a.note is not None)
            aheads.extend(found)
            by_source.setdefault(work.source.id, []).extend(work.identities(data))
    if aheads:
        book_ahead(session, aheads)
    for source_id, keys in by_source.items():
        if keys:
            prefetch(session, source_id, keys)


def end_batch(session: Session) -> None:
    """Before the group writer's commit: numbers booked ahead that no delivery claimed taken out
    of the log again, then the deferred upserts and dirty marks (in key order)."""
    unclaimed_events(session)
    write_deferred(session)


def settled(outcome: Result | PayloadError) -> bool:
    """Whether the answer needs nothing more than its transaction (no dead letter to keep)."""
    return isinstance(outcome, Result) and outcome.status < 400 and not outcome.rejections


def settle(
    engine: Engine, source: Source, body: bytes, ctype: str | None, outcome: Result | PayloadError
) -> Result:
    """After the transaction: rejections kept as dead letters; an error answer raised
    (:class:`InvalidInput`, 400) once its dead letter is stored."""
    if isinstance(outcome, PayloadError):
        _reject_unparsable(engine, source, body, ctype, outcome)
        raise outcome  # not reached: _reject_unparsable raises
    keep_rejections(engine, source, "push", outcome.rejections, ctype)
    if outcome.status >= 400:
        issues = [
            Issue(
                i["code"],
                i.get("diagnostics", ""),
                i.get("severity", "error"),
                tuple(i.get("expression", ())),
            )
            for i in outcome.body["issue"]
        ]
        raise InvalidInput(issues[0].diagnostics, issues=issues)
    return outcome


def receive(
    engine: Engine,
    source: Source,
    body: bytes,
    ctype: str | None,
    handler: Handler | None = None,
    subscription: str | None = None,
) -> Result:
    """A push in its own transaction, stored before the answer; rejections kept as dead letters.

    A rejected payload (transaction with an invalid kept entry, invalid single resource) raises
    :class:`InvalidInput` (400) after its dead letter is stored.
    """
    err = wrong_media_type(body, ctype)
    if err is not None:
        keep_refusal(engine, source, body, ctype, err)
        raise err
    outcome: Result | PayloadError
    try:
        with session_scope(engine) as session:
            outcome = PushWork(source, body, handler, subscription)(session)
    except Refused as exc:
        outcome = exc.result
    return settle(engine, source, body, ctype, outcome)


def refused(body: bytes, reason: str, expression: str | None = None) -> Result:
    """A body that does not fit its URL: 400, kept as a dead letter by :func:`receive`."""
    outcome = operation_outcome([Issue("invalid", reason, expression=(expression,) if expression else ())])
    return Result(400, outcome, Tally(), [Rejection(body, reason, outcome)])


def put_handler(source: Source, rtype: str, rid: str) -> Handler:
    """``PUT {base}/{type}/{id}`` (HAPI rest-hook): the body must be that resource."""

    def handle(session: Session, data: dict[str, Any], body: bytes) -> Result:
        if data.get("resourceType") != rtype:
            return refused(body, f"Body is a {data.get('resourceType')}, the URL names {rtype}")
        if data.get("id") not in (None, rid):
            return refused(body, f"Body id {data.get('id')!r} differs from the URL id {rid!r}", f"{rtype}.id")
        data["id"] = rid
        return process_resource(session, source, data, body)

    return handle


def post_type_handler(source: Source, rtype: str) -> Handler:
    """``POST {base}/{type}``: the body must be a resource of that type."""

    def handle(session: Session, data: dict[str, Any], body: bytes) -> Result:
        if data.get("resourceType") != rtype:
            return refused(body, f"Body is a {data.get('resourceType')}, the URL names {rtype}")
        return process_resource(session, source, data, body)

    return handle


def delete(
    engine: Engine, source: Source, rtype: str, rid: str, subscription: str | None = None
) -> dict[str, Any]:
    with session_scope(engine) as session:
        existed = delete_resource(session, source.id, rtype, rid)
        if subscription is not None:
            note_classic(session, source, subscription)
    log.info("ingest.deleted", source=source.id, resource_type=rtype, existed=existed)
    return informational(f"{rtype}/{rid} deleted" if existed else f"{rtype}/{rid} was not stored")
