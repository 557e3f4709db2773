"""Group commit: rows of many concurrent requests inserted in one transaction.

A request hands its rows to :meth:`GroupCommit.write` and waits until the transaction holding
them has committed (so nothing it answered is left unrecorded, and an insert failure reaches it
as an exception). While one batch is being written, the rows of every request that arrives
meanwhile wait together for the next one: at low load a batch is one request (no added delay),
under load one insert and one commit serve many requests, and a process never writes to its
database from two threads at once (on SQLite that would be busy-waiting on the write lock).

Used by the CDS Hooks audit (one audit row per call plus one per card).
"""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from shared.logging import get_logger

log = get_logger("pinpoint.db.group_commit")

#: Rows per INSERT statement; a larger backlog is written as several statements, one commit.
MAX_ROWS = 1000


class GroupCommit:
    """Batched inserts into one table, one writer per event loop (see the module docstring)."""

    def __init__(self, engine: Engine, table: sa.Table) -> None:
        self._engine = engine
        self._table = table
        self._pending: list[tuple[list[dict[str, Any]], asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def write(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows``; returns once they are committed, raises if the insert failed."""
        if not rows:
            return
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests run one per client): fresh state
            self._loop, self._pending, self._task = loop, [], None
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((rows, done))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain(), name="group-commit")
        await done  # a cancelled caller cancels only its own wait: the batch is the drain task's

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            rows = [row for rows, _ in batch for row in rows]
            try:
                await asyncio.to_thread(self._insert, rows)
            except Exception as exc:  # every waiter of the batch sees the failure
                log.error(
                    "group_commit.failed", table=self._table.name, rows=len(rows), error=type(exc).__name__
                )
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with self._engine.begin() as conn:
            for start in range(0, len(rows), MAX_ROWS):
                conn.execute(sa.insert(self._table), rows[start : start + MAX_ROWS])

    async def close(self) -> None:
        """Wait for the rows already handed over (shutdown)."""
        task = self._task
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            await task
