"""Engines, sessions and migrations for SQLite (embedded) and PostgreSQL (production).

A command's start-up checks the schema with one query (:func:`current_revision` against
:data:`HEAD_REVISION`); alembic and the migration scripts are loaded only to migrate.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
from psycopg import pq
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, SQLModel

from shared.errors import ConfigError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
#: The revision of the newest migration (``migrations/versions``): what ``alembic_version`` holds
#: in a database at the current schema. Written here so that start-up does not load alembic and
#: every script to learn it; a new migration changes it too (a test compares it with alembic's
#: own head).
HEAD_REVISION = "wk09"

_TUPLES_OK = pq.ExecStatus.TUPLES_OK  # a statement that returned rows (driver_rows)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine tuned per backend: SQLite in WAL mode with a busy timeout; PostgreSQL pooled.

    Bound parameters (patient data) never appear in a database error's text or SQLAlchemy's
    logs (``hide_parameters``)."""
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    ping_idle = kwargs.pop("ping_idle_seconds", PING_IDLE_SECONDS)
    kwargs.setdefault("json_serializer", _json_text)
    kwargs.setdefault("json_deserializer", _json_value)
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 10)
    engine = sa.create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        _ping_when_idle(engine, ping_idle)
    # An engine dropped without dispose() (a one-shot command, a test) still closes its pooled
    # connections instead of leaving them to the garbage collector mid-way through other work.
    weakref.finalize(engine, engine.pool.dispose)
    return engine


def _json_text(value: Any) -> str:
    """JSON columns on PostgreSQL (jsonb: the text's layout is not kept) written with orjson, a
    several times cheaper encoder than the standard library's; what orjson refuses (integers
    beyond 64 bits…) falls back to it."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


def _json_value(text: str | bytes) -> Any:
    """JSON columns on PostgreSQL read with orjson, several times cheaper than the standard
    library's decoder (the worker decodes every stored resource of a batch of patients); what
    orjson refuses falls back to it."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


#: A pooled PostgreSQL connection idle longer than this is checked (one round trip) before use; a
#: busy server reuses its connections without the extra round trip per request.
PING_IDLE_SECONDS = 5.0


def _ping_when_idle(engine: Engine, idle: float) -> None:
    """Pessimistic disconnect handling, only after idleness: a connection that sat in the pool
    for more than ``idle`` seconds (a database restart may have closed it) is pinged at checkout
    and replaced if dead; one just returned by another request is used as is."""

    @sa.event.listens_for(engine, "checkin")
    def _checked_in(dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since <= idle:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
            dbapi_conn.rollback()  # back to idle: the caller may switch it to autocommit
        except Exception as exc:
            raise sa.exc.DisconnectionError() from exc  # the pool retries with a new connection


class NewRows:
    """Rows created by a unit of work, inserted together (one ``executemany`` per table) instead
    of one ORM object each through the unit of work: a worker batch creates thousands. Each table's
    rows must name the same columns (the others take their column defaults). Rows that change
    existing ones still go through the session."""

    def __init__(self) -> None:
        self._rows: dict[type[SQLModel], list[dict[str, Any]]] = {}

    def add(self, model: type[SQLModel], **values: Any) -> None:
        self._rows.setdefault(model, []).append(values)

    def insert(self, session: Session) -> None:
        """INSERT everything added so far (in the session's transaction), then forget it."""
        for model, rows in self._rows.items():
            session.execute(sa.insert(model.__table__), rows)  # type: ignore[attr-defined]
        self._rows.clear()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One unit of work: commits on success, rolls back on any exception."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def alembic_config(url: str) -> Config:
    from alembic.config import Config  # lazy: only migrating needs alembic

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` on the engine's database."""
    from alembic import command  # lazy

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def head_revision() -> str:
    return HEAD_REVISION


def current_revision(engine: Engine) -> str | None:
    """The revision the database's schema is at (``alembic_version``), None before any
    migration; one query, without loading alembic."""
    with engine.connect() as connection:
        if not engine.dialect.has_table(connection, "alembic_version"):
            return None
        found = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    return " ".join(sorted(found)) or None


def migrations_at_head(engine: Engine) -> bool:
    return current_revision(engine) == HEAD_REVISION


def prepare_database(url: str, *, embedded: bool) -> Engine:
    """The engine of a process. The embedded database (SQLite) is migrated at start; a server
    database (PostgreSQL) must already be at head — a deploy job runs ``pinpoint db upgrade`` —
    else :class:`~shared.errors.ConfigError`."""
    engine = make_engine(url)
    if embedded:
        if not migrations_at_head(engine):
            upgrade(engine)
    elif not migrations_at_head(engine):
        engine.dispose()
        raise ConfigError("database migrations are not at head: run `pinpoint db upgrade` first")
    return engine


def driver_rows(db: Session | Connection, sql: str, params: Any) -> list[tuple[Any, ...]]:
    """PostgreSQL: one statement on the session's (or connection's) connection, in its
    transaction, through the driver's cursor (``sql`` in its parameter style, ``%(name)s`` or
    ``%s``); its rows. None of SQLAlchemy's per-statement result machinery: measured at 45-60 µs
    of CPU a statement against 110-145 µs through ``session.execute`` (the hot statements of the
    push writer). The group writers' batched inserts use it too
    (shared/db/group_commit.py)."""
    connection = db.connection() if isinstance(db, Session) else db
    raw = connection.connection.driver_connection
    with raw.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(sql, params)
        # Whether rows came back, read from the result's status: ``cursor.description`` builds
        # a Column object per column on every call (~5 % of the writer's CPU at 200/s).
        result = cursor.pgresult
        return list(cursor.fetchall()) if result is not None and result.status == _TUPLES_OK else []
