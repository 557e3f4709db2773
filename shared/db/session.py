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
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
import sqlalchemy as sa
from psycopg import pq
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, SQLModel

from shared.db.models import UTCDateTime
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
        """INSERT everything added so far (in the session's transaction), then forget it.

        PostgreSQL: one statement a table, its rows as one JSON text (:func:`insert_json_rows`),
        where an ``executemany`` through SQLAlchemy and psycopg binds every value of every row in
        Python (measured: 18 % of a worker's drain); rows it cannot take that way go the
        ``executemany`` way."""
        postgres = session.get_bind().dialect.name == "postgresql"
        for model, rows in self._rows.items():
            table = model.__table__  # type: ignore[attr-defined]
            if not postgres or insert_json_rows(session, table, rows) is None:
                session.execute(sa.insert(table), rows)
        self._rows.clear()


#: Column types :func:`insert_json_rows` writes as the JSON text gives them (PostgreSQL casts each
#: field to the column's type); UTCDateTime's check (aware datetimes) is the route's own.
_RECORD_TYPES = (
    "VARCHAR",
    "TEXT",
    "INTEGER",
    "BIGINT",
    "SMALLINT",
    "BOOLEAN",
    "FLOAT",
    "DOUBLE PRECISION",
    "JSONB",
    "JSON",
    "DATE",
    "TIMESTAMP WITH TIME ZONE",
)


class _JsonInsert(NamedTuple):
    sql: str
    stamps: tuple[str, ...]  # aware timestamp columns
    json_columns: tuple[str, ...]
    defaults: dict[str, Any]  # the scalar defaults of the columns left out


#: :func:`insert_json_rows`' statements by (table, the rows' columns, tail); None: not that way.
_JSON_INSERTS: dict[tuple[sa.Table, tuple[str, ...], str], _JsonInsert | None] = {}


def insert_json_rows(
    db: Session | Connection, table: sa.Table, rows: list[dict[str, Any]], tail: str = ""
) -> list[tuple[Any, ...]] | None:
    """PostgreSQL: ``rows`` (dicts naming the same columns) inserted in ``db``'s transaction as
    ONE JSON text (orjson, in C) read back by ``INSERT … SELECT … FROM json_to_recordset(%s::json)``
    on the driver's cursor (:func:`driver_rows`), plus ``tail`` (``ON CONFLICT … RETURNING …``);
    the statement's rows. An ``executemany`` through SQLAlchemy and psycopg binds every value of
    every row in Python: measured at 18 % of a worker's drain, and most of the writer threads' CPU
    a CDS call. None, having written nothing, where SQLAlchemy must write them as before: rows
    naming different columns, a column of another type or with its own bind processing, a column
    left out whose default is computed, a JSON column's None (JSON null there, SQL NULL here), a
    value orjson refuses (an integer beyond 64 bits…). Columns left out take their scalar
    defaults, as ``sa.insert`` gives them; the autoincrement key its sequence. A naive datetime
    for an aware column is refused, as :class:`~shared.db.models.UTCDateTime` refuses it."""
    first = rows[0].keys()
    shape = (table, tuple(first), tail)
    if shape not in _JSON_INSERTS:
        _JSON_INSERTS[shape] = _json_insert(table, tuple(first), tail)
    plan = _JSON_INSERTS[shape]
    if plan is None or any(row.keys() != first for row in rows):
        return None
    sql, stamps, json_columns, defaults = plan
    for row in rows:
        for name in stamps:
            value = row[name]
            if value is not None and value.tzinfo is None:
                raise ValueError("naive datetime stored; use timezone-aware values")
        for name in json_columns:
            if row[name] is None:
                return None
    try:
        text = orjson.dumps([{**row, **defaults} for row in rows] if defaults else rows).decode()
    except TypeError:
        return None
    return driver_rows(db, sql, (text,))


def _json_insert(table: sa.Table, named: tuple[str, ...], tail: str) -> _JsonInsert | None:
    from sqlalchemy.dialects import postgresql  # lazy: PostgreSQL's dialect only where it writes

    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    quote = dialect.identifier_preparer.quote
    defaults: dict[str, Any] = {}
    for column in table.columns:  # left out: a scalar default is written, a computed one cannot be
        if column.name not in named and column.default is not None:
            if not (isinstance(column.default, sa.ColumnDefault) and column.default.is_scalar):
                return None
            defaults[column.name] = column.default.arg
    columns = [*named, *defaults]
    fields, stamps, json_columns = [], [], []
    for name in columns:
        found = table.c.get(name)
        if found is None:
            return None
        kind = found.type
        ddl = kind.compile(dialect=dialect)
        if not ddl.startswith(_RECORD_TYPES) or "[]" in ddl:
            return None
        if isinstance(kind, UTCDateTime):
            stamps.append(name)
        elif isinstance(kind, sa.types.TypeDecorator) and type(kind).process_bind_param is not (
            sa.types.TypeDecorator.process_bind_param
        ):
            return None
        if isinstance(kind, sa.JSON):
            json_columns.append(name)
        # strings read as text: the INSERT's own assignment then refuses one too long (a cast
        # to VARCHAR(n) in the record would cut it short silently)
        fields.append(f"{quote(name)} {'TEXT' if ddl.startswith('VARCHAR') else ddl}")
    names = ", ".join(quote(name) for name in columns)
    sql = (
        f"INSERT INTO {dialect.identifier_preparer.format_table(table)} ({names}) SELECT {names}"
        f" FROM json_to_recordset(%s::json) AS r({', '.join(fields)}){tail}"
    )
    return _JsonInsert(sql, tuple(stamps), tuple(json_columns), defaults)


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
