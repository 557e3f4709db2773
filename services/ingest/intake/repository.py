"""The ingest repository: kept resources (raw JSON) and the patients' dirty marks.

Everything here runs in the caller's transaction and never commits, so a push's resources
and dirty marks land together or not at all. Writes are batched: one SELECT of the identities
already stored and one multi-row upsert per batch, whatever the number of resources. A session
given :func:`defer_writes` (the group writer's, shared by concurrent pushes) keeps the upserts
and dirty marks of all its :func:`store_resources` calls for :func:`write_deferred` before its
commit: one upsert and one dirty mark per transaction; a later call of the same transaction
sees what an earlier one decided.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from shared.db.models import Resource, utcnow
from shared.db.queue import MARK_PG_CTE, mark_dirty, mark_params, mark_pg_cte
from shared.db.session import driver_rows
from shared.domain._json import parse_instant

RESOURCE = Resource.__table__  # type: ignore[attr-defined]
_CHUNK = 500
_LOOKUP_CHUNK = 900


def content_hash(resource: dict[str, Any]) -> str:
    """Hash of a resource's content, ignoring ``meta`` (a re-delivery with new meta is the same)."""
    body = {k: v for k, v in resource.items() if k != "meta"} if "meta" in resource else resource
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class Prepared:
    """A kept resource ready to store: identity, raw JSON (references resolved), patient."""

    resource_type: str
    resource_id: str
    raw: dict[str, Any]
    patient_key: str | None

    @property
    def version_id(self) -> str | None:
        meta = self.raw.get("meta")
        value = meta.get("versionId") if isinstance(meta, dict) else None
        return str(value)[:64] if value is not None else None

    @property
    def last_updated(self) -> datetime | None:
        meta = self.raw.get("meta")
        return parse_instant(meta.get("lastUpdated")) if isinstance(meta, dict) else None


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What happened to one resource: ``created``, ``updated``, ``unchanged`` or ``stale``."""

    outcome: str
    resource_type: str
    resource_id: str
    version: str | None

    @property
    def written(self) -> bool:
        return self.outcome in ("created", "updated")


@dataclass(slots=True)
class _Current:
    content_hash: str
    version_id: str | None
    last_updated: datetime | None
    deleted: bool
    patient_key: str | None


Key = tuple[str, str]


#: The identities already stored, one statement built once (``ids`` expands to the chunk's list).
_EXISTING = sa.select(
    RESOURCE.c.resource_type,
    RESOURCE.c.resource_id,
    RESOURCE.c.content_hash,
    RESOURCE.c.version_id,
    RESOURCE.c.last_updated,
    RESOURCE.c.deleted,
    RESOURCE.c.patient_key,
).where(
    RESOURCE.c.source == sa.bindparam("source"),
    RESOURCE.c.resource_type == sa.bindparam("rtype"),
    RESOURCE.c.resource_id.in_(sa.bindparam("ids", expanding=True)),
)

#: PostgreSQL: every identity of a batch, all types at once, in one round trip and one statement
#: text. The keys travel as one JSON document of ``[type, id]`` pairs: orjson writes the key tuples
#: as they are, in C, where psycopg would escape an array's items one by one in Python.
#: Run through the driver (:func:`driver_rows`).
_EXISTING_PG = (
    "SELECT r.resource_type, r.resource_id, r.content_hash, r.version_id, r.last_updated,"
    " r.deleted, r.patient_key FROM jsonb_array_elements(CAST(%(keys)s AS jsonb)) AS k(v)"
    " JOIN resource AS r ON r.source = %(source)s AND r.resource_type = k.v ->> 0"
    " AND r.resource_id = k.v ->> 1"
)


def _existing(session: Session, source: str, keys: Iterable[Key]) -> dict[Key, _Current]:
    unique = set(keys)
    found: dict[Key, _Current] = {}
    if session.get_bind().dialect.name == "postgresql":
        keys_json = _json_doc(list(unique))
        for row in driver_rows(session, _EXISTING_PG, {"source": source, "keys": keys_json}):
            found[(row[0], row[1])] = _Current(row[2], row[3], row[4], row[5], row[6])
        return found
    by_type: dict[str, list[str]] = {}
    for rtype, rid in unique:
        by_type.setdefault(rtype, []).append(rid)
    for rtype, ids in by_type.items():
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[start : start + _LOOKUP_CHUNK]
            rows = session.execute(_EXISTING, {"source": source, "rtype": rtype, "ids": chunk})
            for row in rows:
                found[(row[0], row[1])] = _Current(row[2], row[3], row[4], row[5], row[6])
    return found


def stored_digests(session: Session, source: str, keys: Iterable[Key]) -> dict[Key, str]:
    """The content hash of each of these identities stored and not deleted (one lookup)."""
    return {k: cur.content_hash for k, cur in _existing(session, source, keys).items() if not cur.deleted}


def _decide(item: Prepared, digest: str, cur: _Current | None) -> str:
    """Identity and order (CONTRACT §2): a newer ``meta.lastUpdated`` wins, arrival order when
    absent or equal; the same ``versionId`` or content is a duplicate."""
    if cur is None:
        return "created"
    new_lu = item.last_updated
    older = new_lu is not None and cur.last_updated is not None and new_lu < cur.last_updated
    if cur.deleted:
        return "stale" if older else "created"
    if cur.content_hash == digest:
        return "unchanged"
    if item.version_id is not None and item.version_id == cur.version_id:
        return "unchanged"
    return "stale" if older else "updated"


_UPSERTS: dict[str, Any] = {}
_UPDATED = ("patient_key", "version_id", "last_updated", "content_hash", "deleted", "raw", "received_at")


def _upsert_statement(session: Session) -> Any:
    """The upsert of one dialect (built once: it is the same for every write)."""
    dialect = session.get_bind().dialect.name
    cached = _UPSERTS.get(dialect)
    if cached is None:
        cached = _UPSERTS[dialect] = _build_upsert(dialect)
    return cached


def _build_upsert(dialect: str) -> Any:
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(RESOURCE)
    excluded = stmt.excluded
    updated = {name: getattr(excluded, name) for name in _UPDATED}
    # A concurrent writer may have stored a newer version since our SELECT: never go back.
    newer_or_unknown = sa.or_(
        RESOURCE.c.last_updated.is_(None),
        excluded.last_updated.is_(None),
        excluded.last_updated >= RESOURCE.c.last_updated,
    )
    return stmt.on_conflict_do_update(
        index_elements=["source", "resource_type", "resource_id"], set_=updated, where=newer_or_unknown
    )


#: PostgreSQL: a whole batch in one statement, one round trip — the rows as one JSON document
#: (written by orjson in C; the server reads each ``raw`` straight into jsonb), the same conflict
#: rule as :func:`_build_upsert`. Run through the driver (:func:`driver_rows`).
#: The rows of ``%(rows)s`` (one JSON document) inserted into ``resource``: the upsert's and the
#: first import's insert alike.
_INSERT_ROWS_PG = (
    "INSERT INTO resource (source, resource_type, resource_id, patient_key, version_id,"
    " last_updated, content_hash, deleted, raw, received_at)"
    " SELECT %(source)s, t.resource_type, t.resource_id, t.patient_key, t.version_id, t.last_updated,"
    " t.content_hash, false, t.raw, %(now)s FROM jsonb_to_recordset(CAST(%(rows)s AS jsonb)) AS t("
    "resource_type text, resource_id text, patient_key text, version_id text,"
    " last_updated timestamptz, content_hash text, raw jsonb)"
)
_UPSERT_PG = (
    _INSERT_ROWS_PG
    + " ON CONFLICT (source, resource_type, resource_id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in _UPDATED)
    + " WHERE resource.last_updated IS NULL OR excluded.last_updated IS NULL"
    " OR excluded.last_updated >= resource.last_updated"
)
#: PostgreSQL: a transaction's upsert and its patients' dirty marks in one statement, one round
#: trip. The main query reads the upsert, so it runs first; the marks, which nothing reads, run
#: to completion after it: resources then marks, each in key order, as in two statements.
_UPSERT_AND_MARK_PG = (
    "WITH up AS ("
    + _UPSERT_PG
    + " RETURNING 1), "
    + MARK_PG_CTE
    + " SELECT pg_notify('pinpoint_dirty', '') FROM (SELECT count(*) FROM up) AS u"
)
#: PostgreSQL, a batch that is probably new (a first import): its rows inserted where their identity
#: is not stored yet and the patients of those marked, in one statement and one index probe a row
#: (no look-up first); the identities it returns are ``created``. What it leaves (stored already)
#: goes through the look-up and the upsert. Run through the driver (:func:`driver_rows`).
_CREATE_AND_MARK_PG = (
    "WITH up AS (" + _INSERT_ROWS_PG + " ON CONFLICT (source, resource_type, resource_id) DO NOTHING"
    " RETURNING resource_type, resource_id, patient_key), "
    + mark_pg_cte("SELECT DISTINCT patient_key FROM up WHERE patient_key IS NOT NULL ORDER BY 1")
    + " SELECT u.resource_type, u.resource_id, u.patient_key FROM up AS u,"
    " (SELECT pg_notify('pinpoint_dirty', '') FROM (SELECT count(*) FROM marked) AS m) AS n"
)
_PG_FIELDS = (
    "resource_type",
    "resource_id",
    "patient_key",
    "version_id",
    "last_updated",
    "content_hash",
    "raw",
)


def _json_doc(value: Any) -> str:
    """JSON text by orjson, in C (what it cannot write, :func:`content_hash` refused already)."""
    return orjson.dumps(value).decode()


def _write(
    session: Session, source: str, rows: list[dict[str, Any]], now: datetime, dirty: Iterable[str] = ()
) -> bool:
    """Upsert ``rows``; on PostgreSQL with the dirty marks of ``dirty`` in the same statement
    (returns whether they were marked)."""
    if session.get_bind().dialect.name == "postgresql":
        doc = _json_doc(
            [
                {k: r[k] for k in _PG_FIELDS}
                | {"last_updated": r["last_updated"].isoformat() if r["last_updated"] else None}
                for r in rows
            ]
        )
        keys = sorted(set(dirty))
        params = {"source": source, "now": now, "rows": doc}
        if keys:
            driver_rows(session, _UPSERT_AND_MARK_PG, params | mark_params(keys, now))
            return True
        driver_rows(session, _UPSERT_PG, params)
        return False
    stmt = _upsert_statement(session)
    for start in range(0, len(rows), _CHUNK):
        session.execute(stmt, rows[start : start + _CHUNK])
    return False


_DEFERRED = "pinpoint.deferred_writes"


@dataclass(slots=True)
class _Deferred:
    """A transaction's upserts and dirty marks not written yet, by (source, type, id)."""

    rows: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    current: dict[tuple[str, str, str], _Current] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    #: Stored state read ahead by :func:`prefetch` (None: not stored).
    known: dict[tuple[str, str, str], _Current | None] = field(default_factory=dict)


def defer_writes(session: Session) -> None:
    """From now on :func:`store_resources` on ``session`` writes at :func:`write_deferred`."""
    session.info[_DEFERRED] = _Deferred()


def prefetch(session: Session, source: str, keys: Iterable[Key]) -> None:
    """On a deferring session: the stored state of these identities in one read, so that the
    :func:`store_resources` calls that follow need none of their own for them."""
    deferred: _Deferred | None = session.info.get(_DEFERRED)
    if deferred is None:
        return
    wanted = {k for k in keys if (source, *k) not in deferred.known and (source, *k) not in deferred.current}
    if not wanted:
        return
    found = _existing(session, source, wanted)
    for key in wanted:
        deferred.known[(source, *key)] = found.get(key)


def write_deferred(session: Session) -> None:
    """The upserts and dirty marks deferred on ``session``: one statement of each per source."""
    deferred: _Deferred | None = session.info.get(_DEFERRED)
    if deferred is None or not (deferred.rows or deferred.dirty):
        return
    session.info[_DEFERRED] = _Deferred()
    by_source: dict[str, list[dict[str, Any]]] = {}
    for key in sorted(deferred.rows):  # key order: no deadlock between writers (see below)
        by_source.setdefault(key[0], []).append(deferred.rows[key])
    now = utcnow()
    if len(by_source) == 1:  # the usual case: one statement (PostgreSQL) for both
        ((source, rows),) = by_source.items()
        if _write(session, source, rows, now, deferred.dirty):
            return
    else:
        for source, rows in by_source.items():
            _write(session, source, rows, now)
    mark_dirty(session, deferred.dirty)


def store_resources(
    session: Session,
    source: str,
    items: Sequence[Prepared],
    *,
    expect_new: bool = False,
    marked: frozenset[str] = frozenset(),
) -> list[StoreResult]:
    """Upsert kept resources of one source and mark their patients dirty; one result per item.

    Items may repeat an identity (a Bundle naming a resource twice): they are applied in order.
    ``expect_new``: most of them are probably not stored yet (a first import's batch); on
    PostgreSQL, outside a deferring session, they are inserted first, without a look-up
    (:func:`_create_first`). The results are the same either way. ``marked``: patients this
    transaction marked dirty already (not marked twice).
    """
    if not items:
        return []
    deferred: _Deferred | None = session.info.get(_DEFERRED)
    if expect_new and deferred is None and session.get_bind().dialect.name == "postgresql":
        return _create_first(session, source, items)
    keys = {(i.resource_type, i.resource_id) for i in items}
    if deferred is None:
        current = _existing(session, source, keys)
    else:  # decided earlier in this transaction, or read ahead, else read now
        current, unknown = {}, []
        for key in keys:
            decided = deferred.current.get((source, *key))
            if decided is None and (source, *key) in deferred.known:
                decided = deferred.known[(source, *key)]
                if decided is None:
                    continue
            if decided is None:
                unknown.append(key)
            else:
                current[key] = decided
        if unknown:
            current.update(_existing(session, source, unknown))
    pending: dict[Key, dict[str, Any]] = {}
    dirty: set[str] = set()
    results: list[StoreResult] = []
    now = utcnow()
    for item in items:
        key = (item.resource_type, item.resource_id)
        digest = content_hash(item.raw)
        cur = current.get(key)
        outcome = _decide(item, digest, cur)
        results.append(StoreResult(outcome, item.resource_type, item.resource_id, item.version_id))
        if outcome in ("unchanged", "stale"):
            continue
        if cur is not None and cur.patient_key:
            dirty.add(cur.patient_key)
        if item.patient_key:
            dirty.add(item.patient_key)
        current[key] = _Current(digest, item.version_id, item.last_updated, False, item.patient_key)
        pending[key] = {
            "source": source,
            "resource_type": item.resource_type,
            "resource_id": item.resource_id,
            "patient_key": item.patient_key,
            "version_id": item.version_id,
            "last_updated": item.last_updated,
            "content_hash": digest,
            "deleted": False,
            "raw": item.raw,
            "received_at": now,
        }
    if deferred is not None:
        for key, row in pending.items():
            deferred.rows[(source, *key)] = row
            deferred.current[(source, *key)] = current[key]
        deferred.dirty |= dirty
        return results
    if pending:
        # in key order: two writers upserting overlapping batches take their row locks in the
        # same order (no deadlock), as mark_dirty does for the queue
        _write(session, source, [pending[k] for k in sorted(pending)], now)
    mark_dirty(session, dirty - marked)
    return results


def _create_first(session: Session, source: str, items: Sequence[Prepared]) -> list[StoreResult]:
    """:func:`store_resources` on PostgreSQL for a batch that is probably new: the first item of
    each identity inserted where the identity is not stored (:data:`_CREATE_AND_MARK_PG`, in key
    order: two writers lock in the same order); every other item, in order, through the look-up
    and the upsert — in this transaction, which sees what the insert stored."""
    first: dict[Key, int] = {}
    for n, item in enumerate(items):
        first.setdefault((item.resource_type, item.resource_id), n)
    rows = []
    for key in sorted(first):
        item = items[first[key]]
        stamp = item.last_updated
        rows.append(
            {
                "resource_type": item.resource_type,
                "resource_id": item.resource_id,
                "patient_key": item.patient_key,
                "version_id": item.version_id,
                "last_updated": stamp.isoformat() if stamp else None,
                "content_hash": content_hash(item.raw),
                "raw": item.raw,
            }
        )
    params = {"source": source, "now": utcnow(), "rows": _json_doc(rows)}
    found = driver_rows(session, _CREATE_AND_MARK_PG, params)
    created = {(row[0], row[1]) for row in found}
    inserted = [
        first[(item.resource_type, item.resource_id)] == n
        and (item.resource_type, item.resource_id) in created
        for n, item in enumerate(items)
    ]
    rest = [item for item, done in zip(items, inserted, strict=True) if not done]
    marked = frozenset(row[2] for row in found if row[2])
    later = iter(store_resources(session, source, rest, marked=marked))
    return [
        StoreResult("created", item.resource_type, item.resource_id, item.version_id) if done else next(later)
        for item, done in zip(items, inserted, strict=True)
    ]


def delete_resource(session: Session, source: str, rtype: str, rid: str) -> bool:
    """Mark (source, type, id) deleted (a tombstone; later reads are 410); True when it existed.

    The tombstone's ``last_updated`` is now, so a late re-delivery of an older version does not
    bring the resource back.
    """
    write_deferred(session)  # a resource stored earlier in this transaction, then deleted
    row = read_resource(session, source, rtype, rid)
    now = utcnow()
    if row is None:
        session.add(
            Resource(
                source=source,
                resource_type=rtype,
                resource_id=rid,
                content_hash="",
                deleted=True,
                last_updated=now,
                received_at=now,
            )
        )
        return False
    existed = not row.deleted
    if row.patient_key:
        mark_dirty(session, [row.patient_key])
    row.deleted = True
    row.raw = None
    row.content_hash = ""
    row.version_id = None
    row.last_updated = now
    row.received_at = now
    session.add(row)
    return existed


def read_resource(session: Session, source: str, rtype: str, rid: str) -> Resource | None:
    return session.exec(
        select(Resource).where(
            Resource.source == source, Resource.resource_type == rtype, Resource.resource_id == rid
        )
    ).first()


def search_by_patient(
    session: Session, source: str, rtype: str, patient_id: str, limit: int
) -> list[Resource]:
    return list(
        session.exec(
            select(Resource)
            .where(
                Resource.patient_key == f"{source}:{patient_id}",
                Resource.resource_type == rtype,
                Resource.source == source,
                col(Resource.deleted).is_(False),
            )
            .order_by(col(Resource.resource_id))
            .limit(limit)
        )
    )


def find_patients_by_identifier(session: Session, source: str, system: str | None, value: str) -> list[str]:
    """Ids of the source's stored Patients carrying identifier ``system|value`` (any system if None)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        needle: dict[str, str] = {"value": value}
        if system:
            needle["system"] = system
        query = sa.text(
            "SELECT resource_id FROM resource WHERE source = :source AND resource_type = 'Patient' "
            "AND NOT deleted AND raw -> 'identifier' @> CAST(:needle AS jsonb) LIMIT 2"
        )
        params: dict[str, Any] = {"source": source, "needle": orjson.dumps([needle]).decode()}
    else:
        query = sa.text(
            "SELECT resource_id FROM resource WHERE source = :source AND resource_type = 'Patient' "
            "AND NOT deleted AND EXISTS (SELECT 1 FROM json_each(resource.raw, '$.identifier') AS i "
            "WHERE json_extract(i.value, '$.value') = :value "
            "AND (:system IS NULL OR json_extract(i.value, '$.system') = :system)) LIMIT 2"
        )
        params = {"source": source, "value": value, "system": system}
    return [row[0] for row in session.execute(query, params)]
