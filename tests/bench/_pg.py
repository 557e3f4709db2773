"""PostgreSQL for the benchmarks: a throw-away database at migration head, created and dropped
(named ``$PINPOINT_BENCH_DB_PREFIX_…``, default ``pinpoint_bench_…``)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from alembic import command

from shared.db.session import alembic_config, current_revision, make_engine, upgrade
from tests.serving import clean_env

ADMIN_URL = os.environ.get("PINPOINT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def admin(pg: str, sql: str) -> None:
    """Run ``sql`` outside a transaction on the server's admin database (CREATE/DROP DATABASE)."""
    eng = sa.create_engine(pg, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(sa.text(sql))
    eng.dispose()


def fresh_db(pg: str = ADMIN_URL) -> tuple[str, str]:
    """A new database migrated to head: ``(name, url)``; drop it with ``drop_db``."""
    prefix = os.environ.get("PINPOINT_BENCH_DB_PREFIX", "pinpoint_bench")
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin(pg, f'CREATE DATABASE "{name}"')
    url = pg.rsplit("/", 1)[0] + f"/{name}"
    eng = make_engine(url)
    upgrade(eng)
    eng.dispose()
    return name, url


def at_head_of(src: Path, url: str) -> None:
    """The database's schema taken down to the migration head of the source tree ``src`` (a
    ``git archive`` of an earlier commit: its processes refuse a database at a later revision),
    with this tree's migrations, which know both."""
    head = subprocess.run(
        [sys.executable, "-c", "from shared.db.session import head_revision; print(head_revision())"],
        env=clean_env(PYTHONPATH=str(src)),
        cwd=src,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    engine = make_engine(url)
    if current_revision(engine) != head:
        cfg = alembic_config(url)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, head)
    engine.dispose()


def drop_db(name: str, pg: str = ADMIN_URL) -> None:
    admin(pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def raw_copy(url: str, root: Path) -> tuple[int, float]:
    """The floor of any import: every line (every resource of a Bundle file) parsed only for its
    type and id and COPYed, as it stands, into a table like ``resource`` (same columns, indexes
    and constraints: ``LIKE resource INCLUDING ALL``) with its patient and a hash of its bytes;
    one ``COPY`` stream, one transaction, nothing validated, classified or dropped."""
    import hashlib

    import orjson
    import psycopg

    from services.ingest.bulk import expand
    from services.ingest.intake.bundles import flatten
    from shared.domain.relevance import patient_reference
    from shared.fhir.bundle import resource_id

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    start = time.perf_counter()
    n = 0
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE raw_copy (LIKE resource INCLUDING ALL)")
        columns = "source, resource_type, resource_id, patient_key, content_hash, deleted, raw, received_at"
        now = datetime.now(UTC)
        with conn.cursor() as cur, cur.copy(f"COPY raw_copy ({columns}) FROM STDIN") as copy:
            seen: set[tuple[str, str]] = set()
            for path in expand([root]):
                if path.name.endswith(".ndjson"):
                    lines = (line for line in path.open("rb") if line.strip())
                    pairs = ((None, line.rstrip(b"\r\n"), orjson.loads(line)) for line in lines)
                else:
                    data = orjson.loads(path.read_bytes().removeprefix(b"\xef\xbb\xbf"))
                    pairs = (
                        (c.full_url, orjson.dumps(c.resource), c.resource) for c in flatten(data, None, 0)
                    )
                for full_url, text, res in pairs:
                    rtype = res.get("resourceType") if isinstance(res, dict) else None
                    if not isinstance(rtype, str):
                        continue
                    rid = resource_id(res, full_url)
                    n += 1
                    if (rtype, rid) in seen:
                        continue
                    seen.add((rtype, rid))
                    ref = patient_reference(res)
                    pkey = f"default:{ref[8:]}" if ref and ref.startswith("Patient/") else None
                    digest = hashlib.sha256(text).hexdigest()
                    copy.write_row(("default", rtype, rid, pkey, digest, False, text.decode(), now))
        conn.commit()
    return n, time.perf_counter() - start


class BackendCPU:
    """CPU seconds of the server processes serving database ``name`` while the block runs: each
    backend's user + system time read from ``/proc`` every 0.1 s (the server runs on this machine;
    its title names the database). A backend's last 0.1 s before it exits may be missed.

    Beside a client's own CPU this is what a stage costs whatever the scheduler gives it: on a
    shared machine the server's processes are scheduled in a group of their own (Linux autogroups
    by session), so a stage whose work runs mostly in the server gets more of the machine than
    one whose work runs in its client."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.ticks: dict[int, int] = {}
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _sample(self) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    title = fh.read()
                if not title.startswith(b"postgres") or self.name not in title.split():
                    continue
                with open(f"/proc/{entry.name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid = int(entry.name)
            self.ticks[pid] = max(self.ticks.get(pid, 0), int(fields[11]) + int(fields[12]))

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def __enter__(self) -> BackendCPU:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()
        self.seconds = sum(self.ticks.values()) / os.sysconf("SC_CLK_TCK")
