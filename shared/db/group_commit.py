"""Group commit: rows of many concurrent requests inserted in one transaction.

A request hands its rows to :meth:`GroupCommit.write`. One writer thread per instance takes
everything queued since its last transaction and writes it in the next one: at low load a batch
is one request (no added delay), under load one insert and one commit serve many requests, and
the process never writes to its database from two threads at once (on SQLite that would be
busy-waiting on the write lock). The thread is started on demand and ends after a second
without work. With ``writers=n`` (PostgreSQL), once ``HELP_BACKLOG`` writes wait, helper threads
(up to n in all) take what waits while the others wait for their round trips and their commits'
flush to disk; a helper ends when nothing waits.

``write(rows)`` waits until its rows are committed (an insert failure reaches the caller).
``write(rows, wait=False)`` returns once the rows are queued — the caller answers its client
without waiting for another thread to get the interpreter lock and commit (measured on the CDS
benchmark: server-side p50 8.6 ms → 1.4 ms at 470 calls/s) — except under backlog: past
``BACKPRESSURE_ITEMS`` queued writes every caller waits (back-pressure, nothing dropped).
``flush()`` waits for everything queued before it (feedback reading a card's row, shutdown).
With ``linger``, the writer waits that long after a batch's first write before it writes, so that
under load one transaction serves every call of the interval instead of a few (the writer's CPU
per call falls as the rate rises); a caller that waits (``wait``, ``flush``) waits that much more.
A failed transaction is retried (``RETRY_DELAYS``); rows still failing are counted in
``pinpoint_group_commit_failed_rows_total`` and logged with counts only.

On PostgreSQL a batch's rows go to the driver as ONE JSON text (orjson, in C) read back by
``INSERT … SELECT … FROM json_to_recordset(%s::json)`` on psycopg's cursor
(:func:`shared.db.session.insert_json_rows`), not through SQLAlchemy's executemany (its per-row,
per-column bind processing and statement rendering): the writer threads' CPU a CDS call fell from
0.36-0.42 ms (docs/cds-hooks.md). What that route cannot write as it is (a row whose keys differ
from the batch's first, a value orjson refuses, a column type with its own bind processing) goes
through SQLAlchemy as before; SQLite always does (its executemany is cheap already).

Used by the CDS Hooks audit (one audit row per call plus one per card) and evidence snapshots.
:class:`GroupInsertNew` is the same writer for rows that may already be there (the CDS clients'
JWT ids, the replay cache): ``INSERT … ON CONFLICT DO NOTHING RETURNING`` for the whole batch, and
each caller learns whether its row was new — one transaction for the concurrent calls instead of
one per call. :class:`GroupTransaction` is the same writer for units of work (pushes and
notifications): each caller's function runs on one ORM session with the others of its batch, one
commit for all; a function that raises rolls the batch back and every unit of the batch runs
again alone, so one bad unit fails only its own caller. A unit's logs and metrics go through
:func:`when_settled`: done once, after its last run, however many runs it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from shared.db.session import insert_json_rows
from shared.humanize import plural
from shared.logging import get_logger

log = get_logger("pinpoint.db.group_commit")

FAILED_ROWS = Counter(
    "pinpoint_group_commit_failed_rows_total", "Rows a group commit could not write after retries", ["table"]
)

#: Rows per INSERT statement; a larger backlog is written as several statements, one commit.
MAX_ROWS = 1000
IDLE_SECONDS = 1.0
#: Writes waiting that bring in a helper thread (up to ``writers``); a helper ends once nothing
#: waits, so that at moderate rates one writer gathers what arrives while it writes (a batch).
HELP_BACKLOG = 4
BACKPRESSURE_ITEMS = 1000
RETRY_DELAYS = (0.2, 1.0)

_T = TypeVar("_T")
_Item = tuple[list[Any], "asyncio.Future[Any]"]  # rows, or units of work


class GroupCommit:
    """Batched inserts into one table by one writer thread (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        table: sa.Table | None,
        *,
        linger: float = 0.0,
        max_items: int = 0,
        writers: int = 1,
    ) -> None:
        self._engine = engine
        self._table = table
        self._name = table.name if table is not None else "(units of work)"
        #: Callers per transaction at most (0: no bound beyond MAX_ROWS rows per statement).
        self._max_items = max_items
        #: Seconds the writer waits after a batch's first write for more to join it: one
        #: transaction for every call of that interval (their callers do not wait for it).
        self._linger = linger
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._lock = threading.Lock()  # a put and a thread's decision to stop never interleave
        #: Writer threads at most: while one waits for the database (a round trip, its commit's
        #: flush to disk), another takes what has arrived since. One: writes in arrival order.
        self._writers = writers
        self._threads = 0  # running
        self._tickets = itertools.count()
        self._inflight: dict[int, asyncio.Future[Any]] = {}  # submitted, not settled (for flush)
        self._failing_since: float | None = None  # monotonic time of the first failed batch in a row
        self._failed_rows = 0
        #: PostgreSQL: the driver route's statement per batch shape (its rows' keys), None where
        #: SQLAlchemy must write (see the module docstring); ``_tail`` ends each statement.
        self._recordset = table is not None and engine.dialect.name == "postgresql"
        self._tail = ""

    async def write(self, rows: list[dict[str, Any]], *, wait: bool = True) -> None:
        """Insert ``rows``: committed on return with ``wait``, else queued (see the module)."""
        if not rows:
            return
        done = self._submit(rows)
        if wait or self._queue.qsize() > BACKPRESSURE_ITEMS:
            await done
        else:
            done.add_done_callback(_consume)

    async def flush(self) -> None:
        """Wait until every row queued before this call is committed (or has failed)."""
        loop = asyncio.get_running_loop()
        waiting = [done for done in list(self._inflight.values()) if done.get_loop() is loop]
        if waiting:  # their failures belong to their writers
            await asyncio.wait(waiting)

    close = flush  # shutdown: nothing handed over is left unwritten

    def health(self) -> str:
        """For /readyz: ``ok``; ``failing: …`` while every batch since the last success failed;
        ``behind: …`` past the back-pressure mark."""
        since = self._failing_since
        if since is not None:
            seconds = int(time.monotonic() - since)
            rows = plural(self._failed_rows, "row")
            return f"failing: {rows} not written in the last {plural(seconds, 'second')}"
        queued = self._queue.qsize()
        if queued > BACKPRESSURE_ITEMS:
            return f"behind: {plural(queued, 'write')} queued"
        return "ok"

    def _submit(self, rows: list[Any]) -> asyncio.Future[Any]:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        ticket = next(self._tickets)
        self._inflight[ticket] = done
        done.add_done_callback(lambda _: self._inflight.pop(ticket, None))
        with self._lock:
            self._queue.put((rows, done))
            backlog = self._queue.qsize() >= HELP_BACKLOG
            if self._threads == 0 or (backlog and self._threads < self._writers):
                helper = self._threads > 0
                self._threads += 1
                threading.Thread(target=self._run, args=(helper,), name="group-commit", daemon=True).start()
        return done

    # -- the writer thread ---------------------------------------------------------------------
    def _run(self, helper: bool = False) -> None:
        """The writer (until a second without work), or a helper (until the backlog is gone)."""
        while True:
            try:
                first = self._queue.get_nowait() if helper else self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._threads -= 1
                        return
                continue
            if self._linger:
                time.sleep(self._linger)
            batch = [first]
            while not self._max_items or len(batch) < self._max_items:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            results: list[Any] = []
            try:
                error = self._write(batch, results)
            except Exception as exc:  # never a dead thread with callers waiting on it
                error = exc
            written = sum(len(rows) for rows, _ in batch)
            if written and error is None:
                self._failing_since, self._failed_rows = None, 0
            elif written:
                self._failing_since = self._failing_since or time.monotonic()
                self._failed_rows += written
            _wake(batch, error, results)

    def _insert(self, rows: list[dict[str, Any]]) -> list[Any] | None:
        """Write ``rows`` in one transaction; a result per row for its caller (here: none)."""
        assert self._table is not None
        with self._engine.begin() as conn:
            for start in range(0, len(rows), MAX_ROWS):
                chunk = rows[start : start + MAX_ROWS]
                if self._driver_insert(conn, chunk) is None:
                    conn.execute(sa.insert(self._table), chunk)
        return None

    def _driver_insert(self, conn: Connection, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]] | None:
        """PostgreSQL: ``rows`` through :func:`~shared.db.session.insert_json_rows`, its errors
        as SQLAlchemy raises them (callers, retries); None, having written nothing, where
        SQLAlchemy must write them (SQLite, an odd batch)."""
        if not self._recordset:
            return None
        try:
            return insert_json_rows(conn, self._table, rows, self._tail)  # type: ignore[arg-type]
        except self._engine.dialect.loaded_dbapi.Error as exc:
            raise sa.exc.DBAPIError.instance(
                "INSERT (json_to_recordset)",
                None,
                exc,
                self._engine.dialect.loaded_dbapi.Error,
                hide_parameters=True,
            ) from exc

    def _write(self, batch: list[_Item], results: list[Any]) -> Exception | None:
        """Insert the batch's rows in one transaction (retrying transient errors); the error, if
        any. ``results`` receives one result per row, in the batch's order."""
        rows = [row for rows, _ in batch for row in rows]
        error: Exception | None = None
        for delay in (*RETRY_DELAYS, None):
            try:
                if rows:
                    results[:] = self._insert(rows) or [None] * len(rows)
                return None
            except sa.exc.IntegrityError as exc:  # the rows themselves are wrong: no retry helps
                error = exc
                break
            except Exception as exc:
                error = exc
                if delay is not None:
                    time.sleep(delay)
        FAILED_ROWS.labels(self._name).inc(len(rows))
        log.error("group_commit.failed", table=self._name, rows=len(rows), error=type(error).__name__)
        return error


def _wake(batch: list[_Item], error: Exception | None, results: Sequence[Any] = ()) -> None:
    """Settle each caller's future on its own event loop: the results of its rows (a list), or
    the error."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], list[Any]]]] = {}
    at = 0
    for rows, done in batch:
        mine = list(results[at : at + len(rows)]) if error is None else []
        at += len(rows)
        by_loop.setdefault(done.get_loop(), []).append((done, mine))
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is waiting any more
            loop.call_soon_threadsafe(_settle, futures, error)


def _settle(futures: list[tuple[asyncio.Future[Any], list[Any]]], error: Exception | None) -> None:
    for done, result in futures:
        if done.done():
            continue
        if error is None:
            done.set_result(result)
        else:
            done.set_exception(error)


def _consume(done: asyncio.Future[None]) -> None:
    """A write nobody awaits: its failure is already logged and counted."""
    if not done.cancelled():
        done.exception()


class GroupInsertNew(GroupCommit):
    """Rows keyed by ``key`` (the table's primary key) that may already be stored: each caller
    awaits :meth:`insert_new`, True when its row is new, False when the key was there already (or
    an earlier row of the same batch had it). ``sweep(conn)``, when given, runs in the writer's
    transaction at most every ``sweep_every`` seconds (expired rows)."""

    def __init__(
        self,
        engine: Engine,
        table: sa.Table,
        key: tuple[str, ...],
        *,
        sweep: Callable[[Connection], None] | None = None,
        sweep_every: float = 60.0,
    ) -> None:
        super().__init__(engine, table)
        self._key = key
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        self._statement = (
            dialect.insert(table)
            .on_conflict_do_nothing(index_elements=list(key))
            .returning(*(table.c[k] for k in key))
        )
        self._sweep = sweep
        self._sweep_every = sweep_every
        self._swept = float("-inf")
        quote = postgresql.dialect().identifier_preparer.quote  # type: ignore[no-untyped-call]
        self._tail = (
            f" ON CONFLICT ({', '.join(quote(k) for k in key)}) DO NOTHING"
            f" RETURNING {', '.join(quote(k) for k in key)}"
        )

    async def insert_new(self, row: dict[str, Any]) -> bool:
        """Committed on return; whether ``row``'s key was new (raises the database's error)."""
        (new,) = await self._submit([row])
        return bool(new)

    def _insert(self, rows: list[dict[str, Any]]) -> list[Any]:
        keys = [tuple(row[k] for k in self._key) for row in rows]
        first: dict[tuple[Any, ...], int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        unique = [rows[i] for i in first.values()]
        inserted: set[tuple[Any, ...]] = set()
        with self._engine.begin() as conn:
            now = time.monotonic()
            if self._sweep is not None and now - self._swept > self._sweep_every:
                self._swept = now
                self._sweep(conn)
            for start in range(0, len(unique), MAX_ROWS):
                chunk = unique[start : start + MAX_ROWS]
                returned: Any = self._driver_insert(conn, chunk)
                if returned is None:
                    returned = conn.execute(self._statement, chunk)
                inserted.update(tuple(r) for r in returned)
        return [first[k] == i and k in inserted for i, k in enumerate(keys)]


Effect = Callable[[], None]
_EFFECTS = "pinpoint.unit_effects"


def when_settled(session: Session, effect: Effect) -> None:
    """Do ``effect`` (a log line, a metric) once for the unit of work running on ``session``: at
    once on an ordinary session; on a :class:`GroupTransaction`'s, after the unit's last run (its
    batch committed, or its own failure alone). A unit run again after its batch rolled back is
    then logged and counted once, not once a run."""
    effects: list[Effect] | None = session.info.get(_EFFECTS)
    if effects is None:
        effect()
    else:
        effects.append(effect)


class _Failed:
    """A unit of work's own error, carried in the results to its caller alone."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class GroupTransaction(GroupCommit):
    """Units of work of concurrent callers in shared transactions: :meth:`run` hands a function
    of an ORM session to the writer thread, which runs every function waiting (at most
    ``max_items``) on one session and commits once; each caller gets its own function's return
    value once that commit is done (a 2xx sent after it means stored). When a function raises, or
    the commit fails, the batch is rolled back and each function runs again alone in its own
    transaction: the others succeed, the failing one's error reaches its caller only. A function
    may therefore run twice and must not depend on state it changed in a run rolled back (build
    what it writes from its inputs each time). ``begin(session, functions)`` runs before a batch's
    functions (reading ahead what they will read),
    ``before_commit(session)`` after them in their transaction (writes they deferred to do once
    per batch)."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_items: int = 100,
        linger: float = 0.0,
        writers: int = 1,
        begin: Callable[[Session, list[Callable[[Session], Any]]], None] | None = None,
        before_commit: Callable[[Session], None] | None = None,
    ) -> None:
        super().__init__(engine, None, linger=linger, max_items=max_items, writers=writers)
        self._begin = begin
        self._before_commit = before_commit

    async def run(self, work: Callable[[Session], _T]) -> _T:
        """``work(session)`` committed on return, its value; or its error raised."""
        (result,) = await self._submit([work])
        if isinstance(result, _Failed):
            raise result.error
        return result  # type: ignore[no-any-return]

    def _transaction(self, works: list[Callable[[Session], Any]]) -> tuple[list[Any], list[list[Effect]]]:
        """The works on one session, committed: their results and the effects each deferred
        (:func:`when_settled`); a work's own error as :class:`_UnitFailed`."""
        with Session(self._engine, expire_on_commit=False) as session:
            try:
                if self._begin is not None:
                    self._begin(session, works)
                results, effects = [], []
                for position, work in enumerate(works):
                    mine: list[Effect] = []
                    session.info[_EFFECTS] = mine
                    try:
                        results.append(work(session))
                    except Exception as exc:
                        raise _UnitFailed(position, exc, mine) from exc
                    effects.append(mine)
                del session.info[_EFFECTS]
                try:
                    if self._before_commit is not None:
                        self._before_commit(session)
                    session.commit()
                except Exception as exc:
                    raise _NotOwn(exc, effects) from exc
            except BaseException:
                session.rollback()
                raise
        return results, effects

    def _write(self, batch: list[_Item], results: list[Any]) -> Exception | None:
        """The batch's units in one transaction. A unit that raises is taken out and the others
        run together again; it then runs alone (unless it was alone already), and its error goes
        to its caller only. A failure that is no unit's own (the commit) runs each unit alone.
        Each unit's deferred effects (:func:`when_settled`) are those of its last run, done once."""
        works = [work for works, _ in batch for work in works]
        outcomes: list[Any] = [None] * len(works)
        settled: list[list[Effect]] = [[] for _ in works]
        together = list(range(len(works)))
        alone: list[int] = []
        while together:
            try:
                done, effects = self._transaction([works[i] for i in together])
            except _UnitFailed as failed:
                position = together.pop(failed.position)
                if together:
                    alone.append(position)
                else:  # it ran alone: that error is its own
                    outcomes[position] = _Failed(failed.error)
                    settled[position] = failed.effects
                continue
            except Exception as exc:  # the commit, a hook: no unit's own
                if len(together) == 1:
                    outcomes[together[0]] = _Failed(exc.error if isinstance(exc, _NotOwn) else exc)
                    settled[together[0]] = exc.effects[0] if isinstance(exc, _NotOwn) else []
                else:
                    alone.extend(together)
                together = []
                continue
            for i, result, mine in zip(together, done, effects, strict=True):
                outcomes[i] = result
                settled[i] = mine
            break
        for i in sorted(alone):
            try:
                (outcomes[i],), (settled[i],) = self._transaction([works[i]])
            except _UnitFailed as failed:
                outcomes[i] = _Failed(failed.error)
                settled[i] = failed.effects
            except _NotOwn as failed:
                outcomes[i] = _Failed(failed.error)
                settled[i] = failed.effects[0]
            except Exception as exc:  # the begin hook
                outcomes[i] = _Failed(exc)
        for unit_effects in settled:
            for effect in unit_effects:
                try:
                    effect()
                except Exception as exc:  # a log line or a metric never fails a committed unit
                    log.error("group_commit.effect_failed", error=type(exc).__name__)
        results[:] = outcomes
        return None


class _UnitFailed(Exception):
    """A unit of work raised ``error`` (it was at ``position`` in its transaction)."""

    def __init__(self, position: int, error: Exception, effects: list[Effect]) -> None:
        super().__init__(position)
        self.position = position
        self.error = error
        self.effects = effects


class _NotOwn(Exception):
    """The transaction failed after its units ran (``before_commit``, the commit): ``error``,
    and the effects each unit deferred."""

    def __init__(self, error: Exception, effects: list[list[Effect]]) -> None:
        super().__init__(type(error).__name__)
        self.error = error
        self.effects = effects
