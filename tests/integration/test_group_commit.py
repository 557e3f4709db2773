"""Group commit (shared/db/group_commit.py) on SQLite and PostgreSQL: a waiting caller's rows
are committed when its write returns, concurrent callers share transactions, a failed insert
reaches the callers of its batch and not the next ones; unawaited writes are committed by the
next flush, wait under backlog, are retried on transient errors and counted when they fail."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.engine import Engine

from shared.db import group_commit
from shared.db import session as session_module
from shared.db.group_commit import GroupCommit
from shared.db.models import AuditLog

AUDIT = AuditLog.__table__  # type: ignore[attr-defined]


def _row(actor: str, **extra: Any) -> dict[str, Any]:
    return {"at": datetime.now(UTC), "actor": actor, "action": "test", "detail": {"n": 1}, **extra}


def _count(engine: Engine, actor: str | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(AUDIT)
    if actor is not None:
        query = query.where(AUDIT.c.actor == actor)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_concurrent_writers_share_commits_and_each_sees_its_rows(engine: Engine) -> None:
    commits: list[int] = []
    sa.event.listen(engine, "commit", lambda _conn: commits.append(1))
    writer = GroupCommit(engine, AUDIT)
    seen_after_return: dict[str, int] = {}

    async def call(i: int) -> None:
        actor = f"caller-{i}"
        await writer.write([_row(actor), _row(actor)])
        seen_after_return[actor] = _count(engine, actor)

    async def main() -> None:
        await asyncio.gather(*(call(i) for i in range(60)))

    asyncio.run(main())
    assert seen_after_return == {f"caller-{i}": 2 for i in range(60)}
    assert _count(engine) == 120
    assert len(commits) < 60, "concurrent calls were not grouped"


def test_a_failed_insert_reaches_its_callers_and_success_means_committed(engine: Engine) -> None:
    writer = GroupCommit(engine, AUDIT)

    async def main() -> list[Any]:
        bad = writer.write([_row("bad", action=None)])  # action is NOT NULL
        maybe_same_batch = writer.write([_row("neighbour")])
        outcomes = await asyncio.gather(bad, maybe_same_batch, return_exceptions=True)
        await writer.write([_row("after")])
        return outcomes

    bad, neighbour = asyncio.run(main())
    assert isinstance(bad, sa.exc.IntegrityError)
    assert _count(engine, "bad") == 0
    # whichever batch the neighbour landed in: returned normally exactly when its row is there
    assert (neighbour is None) == (_count(engine, "neighbour") == 1)
    assert neighbour is None or isinstance(neighbour, sa.exc.IntegrityError)
    assert _count(engine, "after") == 1


def test_each_event_loop_gets_a_working_writer(engine: Engine) -> None:
    writer = GroupCommit(engine, AUDIT)
    for i in range(3):
        asyncio.run(writer.write([_row(f"loop-{i}")]))
    assert [_count(engine, f"loop-{i}") for i in range(3)] == [1, 1, 1]


def test_close_waits_for_rows_handed_over(engine: Engine) -> None:
    writer = GroupCommit(engine, AUDIT)

    async def main() -> None:
        tasks = [asyncio.ensure_future(writer.write([_row("shutdown")])) for _ in range(5)]
        await asyncio.sleep(0)
        await writer.close()
        assert _count(engine, "shutdown") == 5  # committed when close returns
        await asyncio.gather(*tasks)

    asyncio.run(main())


def test_unawaited_writes_are_committed_by_the_next_flush(engine: Engine) -> None:
    writer = GroupCommit(engine, AUDIT)

    async def main() -> None:
        for i in range(20):
            await writer.write([_row(f"queued-{i}")], wait=False)
        await writer.flush()
        assert sum(_count(engine, f"queued-{i}") for i in range(20)) == 20

    asyncio.run(main())


def test_backlog_makes_unawaited_writers_wait(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_commit, "BACKPRESSURE_ITEMS", -1)  # always "backlogged"
    writer = GroupCommit(engine, AUDIT)

    async def main() -> None:
        await writer.write([_row("pressed")], wait=False)
        assert _count(engine, "pressed") == 1  # committed on return

    asyncio.run(main())


def test_a_transient_failure_is_retried(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_commit, "RETRY_DELAYS", (0.01,))
    writer = GroupCommit(engine, AUDIT)
    real = writer._insert
    calls = []

    def flaky(rows: list[dict[str, Any]]) -> None:
        calls.append(len(rows))
        if len(calls) == 1:
            raise sa.exc.OperationalError("INSERT", {}, Exception("database is locked"))
        real(rows)

    monkeypatch.setattr(writer, "_insert", flaky)
    asyncio.run(writer.write([_row("retried")]))
    assert calls == [1, 1]
    assert _count(engine, "retried") == 1


def test_an_unawaited_failure_is_counted_not_raised(engine: Engine) -> None:
    writer = GroupCommit(engine, AUDIT)
    before = _failed_rows()

    async def main() -> None:
        await writer.write([_row("bad", action=None)], wait=False)  # NOT NULL violated
        await writer.flush()

    asyncio.run(main())
    assert _failed_rows() - before == 1
    assert _count(engine, "bad") == 0


def _failed_rows() -> float:
    return REGISTRY.get_sample_value("pinpoint_group_commit_failed_rows_total", {"table": "audit_log"}) or 0.0


def test_health_reports_failing_writes_until_one_succeeds(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group_commit, "RETRY_DELAYS", ())
    writer = GroupCommit(engine, AUDIT)
    real = writer._insert

    def down(rows: list[dict[str, Any]]) -> None:
        raise sa.exc.OperationalError("INSERT", {}, Exception("server closed the connection"))

    async def main() -> None:
        assert writer.health() == "ok"
        monkeypatch.setattr(writer, "_insert", down)
        await writer.write([_row("a"), _row("b")], wait=False)
        await writer.flush()
        assert writer.health().startswith("failing: 2 rows not written")
        monkeypatch.setattr(writer, "_insert", real)
        await writer.write([_row("c")])
        assert writer.health() == "ok"

    asyncio.run(main())


def test_insert_new_tells_each_caller_whether_its_key_was_new(engine: Engine) -> None:
    """The JWT replay cache's writer: concurrent ids share transactions; a key seen before (in an
    earlier transaction, by another writer — another replica — or earlier in the same batch) is
    not new, exactly one of several concurrent callers with the same key is told it is new, and
    the expired rows are swept in the writer's transaction."""
    from services.recommender.cds_hooks.auth import SEEN_JTI, jti_ledger  # lazy: a test of the shared writer

    commits: list[int] = []
    sa.event.listen(engine, "commit", lambda _conn: commits.append(1))
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(SEEN_JTI).values(iss="old", jti="gone", expires_at=datetime(2000, 1, 1, tzinfo=UTC))
        )

    def row(jti: str) -> dict[str, Any]:
        return {"iss": "https://ehr.example", "jti": jti, "expires_at": now}

    async def main() -> tuple[list[bool], list[bool], list[bool]]:
        ledger, replica = jti_ledger(engine), jti_ledger(engine)
        fresh = await asyncio.gather(*(ledger.insert_new(row(f"j-{i}")) for i in range(40)))
        twice = await asyncio.gather(*(ledger.insert_new(row("same")) for _ in range(5)))
        again = await asyncio.gather(replica.insert_new(row("j-3")), ledger.insert_new(row("j-7")))
        return fresh, twice, again

    fresh, twice, again = asyncio.run(main())
    assert fresh == [True] * 40
    assert sorted(twice) == [False, False, False, False, True]
    assert again == [False, False]
    assert len(commits) < 40, "concurrent ids were not grouped"
    with engine.connect() as conn:
        kept = {r[0] for r in conn.execute(sa.select(SEEN_JTI.c.jti))}
    assert "gone" not in kept and len(kept) == 41


def test_units_of_work_share_commits_and_a_failing_one_fails_only_its_caller(engine: Engine) -> None:
    """The push writer (GroupTransaction): concurrent units run on one session and commit once;
    a unit that raises is rolled back and reaches its own caller, the others of its batch are
    committed; before_commit runs in each transaction."""
    from sqlmodel import Session

    from shared.db.group_commit import GroupTransaction

    commits: list[int] = []
    sa.event.listen(engine, "commit", lambda _conn: commits.append(1))
    hooked: list[int] = []
    writer = GroupTransaction(engine, before_commit=lambda _s: hooked.append(1))

    def unit(actor: str, fail: bool = False) -> Any:
        def work(session: Session) -> str:
            session.execute(sa.insert(AUDIT), [_row(actor)])
            if fail:
                raise ValueError(f"{actor} is bad")
            return actor

        return work

    async def main() -> list[Any]:
        calls = [writer.run(unit(f"u-{i}", fail=i in (7, 23))) for i in range(40)]
        return await asyncio.gather(*calls, return_exceptions=True)

    answers = asyncio.run(main())
    for i, answer in enumerate(answers):
        if i in (7, 23):
            assert isinstance(answer, ValueError) and str(answer) == f"u-{i} is bad"
            assert _count(engine, f"u-{i}") == 0
        else:
            assert answer == f"u-{i}" and _count(engine, f"u-{i}") == 1
    assert len(commits) < 20, "concurrent units were not grouped"
    assert len(hooked) >= len(commits)


def test_rows_read_back_as_written_whichever_route_wrote_them(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a batch goes to the driver as one JSON text (json_to_recordset); what is read
    back is what SQLAlchemy's insert writes: nested JSON, strings holding quotes, backslashes and
    non-ASCII, NULLs, an aware timestamp in another zone (stored as the same instant). A value
    orjson refuses is written all the same (through SQLAlchemy)."""
    from datetime import timedelta, timezone

    at = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=-5)))
    detail = {"quote": 'a "b" \\c', "n": [1, 2.5, None, True], "deep": {"é": "ü\u2028"}, "x": None}
    writer = GroupCommit(engine, AUDIT)
    by_driver: list[str] = []
    real = session_module.driver_rows
    monkeypatch.setattr(session_module, "driver_rows", lambda *a: by_driver.append(a[1]) or real(*a))

    async def main() -> None:
        await writer.write(
            [{"at": at, "actor": 'o"k\\', "action": "same", "target": None, "detail": detail}] * 3
        )
        await writer.write([_row("huge", detail={"n": 2**70})])  # beyond orjson's 64-bit integers

    asyncio.run(main())
    with engine.connect() as conn:
        got = conn.execute(
            sa.select(AUDIT.c.at, AUDIT.c.actor, AUDIT.c.target, AUDIT.c.detail).where(
                AUDIT.c.action == "same"
            )
        ).all()
    assert [tuple(r) for r in got] == [(at.astimezone(UTC), 'o"k\\', None, detail)] * 3
    with engine.connect() as conn:
        huge = conn.execute(sa.select(AUDIT.c.detail).where(AUDIT.c.actor == "huge")).scalar_one()
    assert huge == {"n": 2**70}
    # PostgreSQL: the first batch went through the driver, the 2**70 one could not
    assert len(by_driver) == (1 if engine.dialect.name == "postgresql" else 0)


def test_rows_the_columns_refuse_are_refused_not_cut_short(engine: Engine) -> None:
    """A string longer than its column, or a naive timestamp, fails its batch on either route:
    nothing truncated, nothing stored in an unknown zone."""
    writer = GroupCommit(engine, AUDIT)

    async def main() -> list[Any]:
        return await asyncio.gather(
            writer.write([_row("x" * 201)]),  # actor is VARCHAR(200) (SQLite does not enforce it)
            writer.write([_row("naive", at=datetime(2026, 1, 1))]),
            return_exceptions=True,
        )

    long_actor, naive = asyncio.run(main())
    assert naive is not None and _count(engine, "naive") == 0
    if engine.dialect.name == "postgresql":
        assert long_actor is not None and _count(engine, "x" * 201) == 0
