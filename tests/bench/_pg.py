"""PostgreSQL for the benchmarks: a throw-away database at migration head, created and dropped."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

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


def raw_copy(url: str, root: Path) -> tuple[int, float]:
    """Parse the same files and COPY (source, type, id, json) rows: the floor of any import."""
    import orjson
    import psycopg

    from services.ingest.bulk import expand
    from services.ingest.intake.bundles import flatten
    from shared.fhir.bundle import resource_id

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    start = time.perf_counter()
    n = 0
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "CREATE TABLE raw_copy (source text, resource_type text, resource_id text, raw jsonb, "
            "UNIQUE (source, resource_type, resource_id))"
        )
        with conn.cursor() as cur, cur.copy("COPY raw_copy FROM STDIN") as copy:
            seen: set[tuple[str, str]] = set()
            for path in expand([root]):
                if path.name.endswith(".ndjson"):
                    items = (orjson.loads(line) for line in path.open("rb") if line.strip())
                    pairs = ((None, r) for r in items)
                else:
                    data = orjson.loads(path.read_bytes().removeprefix(b"\xef\xbb\xbf"))
                    pairs = ((c.full_url, c.resource) for c in flatten(data, None, 0))
                for full_url, res in pairs:
                    rtype = res.get("resourceType") if isinstance(res, dict) else None
                    if not isinstance(rtype, str):
                        continue
                    rid = resource_id(res, full_url)
                    n += 1
                    if (rtype, rid) in seen:
                        continue
                    seen.add((rtype, rid))
                    copy.write_row(("default", rtype, rid, orjson.dumps(res).decode()))
        conn.commit()
    return n, time.perf_counter() - start
