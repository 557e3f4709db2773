"""PostgreSQL for the benchmarks: a throw-away database at migration head, created and dropped."""

from __future__ import annotations

import os
import uuid

import sqlalchemy as sa

from shared.db.session import make_engine, upgrade

ADMIN_URL = os.environ.get("PINPOINT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def admin(pg: str, sql: str) -> None:
    """Run ``sql`` outside a transaction on the server's admin database (CREATE/DROP DATABASE)."""
    eng = sa.create_engine(pg, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(sa.text(sql))
    eng.dispose()


def fresh_db(pg: str = ADMIN_URL) -> tuple[str, str]:
    """A new database migrated to head: ``(name, url)``; drop it with ``drop_db``."""
    name = f"pinpoint_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin(pg, f'CREATE DATABASE "{name}"')
    url = pg.rsplit("/", 1)[0] + f"/{name}"
    eng = make_engine(url)
    upgrade(eng)
    eng.dispose()
    return name, url


def drop_db(name: str, pg: str = ADMIN_URL) -> None:
    admin(pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
