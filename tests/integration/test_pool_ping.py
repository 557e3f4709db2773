"""PostgreSQL pooled connections: checked before use only after sitting idle, replaced if dead."""

from __future__ import annotations

import time

import sqlalchemy as sa

from shared.db.session import make_engine


def test_a_connection_killed_while_idle_in_the_pool_is_replaced_before_use(pg_database: str) -> None:
    engine = make_engine(pg_database, pool_size=1, max_overflow=0, ping_idle_seconds=0.05)
    admin = make_engine(pg_database, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        with admin.connect() as conn:  # a database restart, a proxy's idle timeout…
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
        time.sleep(0.2)
        with engine.connect() as conn:  # the same pooled slot: pinged, found dead, reconnected
            assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() != pid
            conn.execute(sa.text("SELECT 1"))
    finally:
        engine.dispose()
        admin.dispose()


def test_a_busy_connection_is_reused_without_a_ping(pg_database: str) -> None:
    engine = make_engine(pg_database, pool_size=1, max_overflow=0, ping_idle_seconds=60)
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    pings: list[int] = []
    original = engine.dialect.do_ping
    engine.dialect.do_ping = lambda c: pings.append(1) or original(c)  # type: ignore[method-assign]
    try:
        for _ in range(3):
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        assert pings == [] and len(statements) == 3
    finally:
        engine.dispose()
