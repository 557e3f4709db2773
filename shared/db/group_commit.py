"""Group commit: rows of many concurrent requests inserted in one transaction.

A request hands its rows to :meth:`GroupCommit.write` and waits until the transaction holding
them has committed (so nothing it answered is left unrecorded, and an insert failure reaches it
as an exception). One writer thread per instance takes everything queued since its last
transaction and writes it in the next one: at low load a batch is one request (no added delay),
under load one insert and one commit serve many requests, and the process never writes to its
database from two threads at once (on SQLite that would be busy-waiting on the write lock). The
thread is started on demand and ends after a second without work.

Used by the CDS Hooks audit (one audit row per call plus one per card).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from shared.logging import get_logger

log = get_logger("pinpoint.db.group_commit")

#: Rows per INSERT statement; a larger backlog is written as several statements, one commit.
MAX_ROWS = 1000
IDLE_SECONDS = 1.0

_Item = tuple[list[dict[str, Any]], "asyncio.Future[None]"]


class GroupCommit:
    """Batched inserts into one table by one writer thread (see the module docstring)."""

    def __init__(self, engine: Engine, table: sa.Table) -> None:
        self._engine = engine
        self._table = table
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._lock = threading.Lock()  # a put and the thread's decision to stop never interleave
        self._thread: threading.Thread | None = None

    async def write(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows``; returns once they are committed, raises if the insert failed."""
        if rows:
            await self._submit(rows)

    async def close(self) -> None:
        """Wait until the rows already handed over are committed (shutdown)."""
        if self._thread is not None:
            await self._submit([])  # written after everything queued before it

    async def _submit(self, rows: list[dict[str, Any]]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._queue.put((rows, done))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
                self._thread.start()
        await done  # a cancelled caller stops waiting; its rows are still written

    # -- the writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            batch = [first]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write(batch)

    def _write(self, batch: list[_Item]) -> None:
        rows = [row for rows, _ in batch for row in rows]
        error: Exception | None = None
        try:
            if rows:
                with self._engine.begin() as conn:
                    for start in range(0, len(rows), MAX_ROWS):
                        conn.execute(sa.insert(self._table), rows[start : start + MAX_ROWS])
        except Exception as exc:  # every caller of the batch sees the failure
            log.error("group_commit.failed", table=self._table.name, rows=len(rows), error=type(exc).__name__)
            error = exc
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for _, done in batch:
            by_loop.setdefault(done.get_loop(), []).append(done)
        for loop, futures in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is waiting any more
                loop.call_soon_threadsafe(_settle, futures, error)


def _settle(futures: list[asyncio.Future[None]], error: Exception | None) -> None:
    for done in futures:
        if done.done():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
