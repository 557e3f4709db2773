"""Notifications in the group writer's shared transactions (SQLite and PostgreSQL): re-deliveries
landing in two writers at once, in opposite orders, both complete on their first run (the rows
and event numbers of a transaction are booked in one key order: no deadlock for PostgreSQL to
break); a notification run again alone after its batch rolled back is counted and logged once."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.ingest.intake.push import PushWork, begin_batch, end_batch
from services.ingest.subscriptions import intake, state
from shared.db.group_commit import GroupTransaction
from shared.settings import ConfigFile, Source
from tests.api.ingest.helpers import body, stored
from tests.api.ingest.test_grouped_writes import notification


@pytest.fixture
def source() -> Source:
    config = ConfigFile.model_validate({"sources": [{"id": "hosp", "inbound": {"bearer": "t"}}]})
    return config.source("hosp")


def _logged(engine: Engine) -> list[int]:
    with Session(engine) as s:
        rows = s.execute(sa.select(state.EVENTS.c.event_number).where(state.EVENTS.c.subscription == "s1"))
        return sorted(rows.scalars())


class _Paused(PushWork):
    """A delivery that, once run, waits (a little) for the other transaction to have run its
    first delivery too: the interleaving in which units booking their own numbers deadlock."""

    barrier: threading.Barrier

    def __init__(self, work: PushWork, barrier: threading.Barrier) -> None:
        super().__init__(work.source, work.body)
        object.__setattr__(self, "barrier", barrier)

    def __call__(self, session: Session) -> Any:
        result = super().__call__(session)
        with contextlib.suppress(threading.BrokenBarrierError):  # booked ahead: the other one waits
            self.barrier.wait(timeout=0.5)
        return result


def _batch(engine: Engine, works: list[PushWork], errors: list[BaseException]) -> None:
    """One transaction of the group writer (its hooks, its units in order, its commit)."""
    try:
        with Session(engine, expire_on_commit=False) as session:
            begin_batch(session, works)
            for work in works:
                work(session)
            end_batch(session)
            session.commit()
    except BaseException as exc:
        errors.append(exc)


def test_duplicate_redeliveries_in_two_writers_in_opposite_orders_do_not_deadlock(
    engine: Engine, source: Source
) -> None:
    five, six = (PushWork(source, body(notification(n, f"obs-{n}"))) for n in (5, 6))
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    writers = [
        threading.Thread(target=_batch, args=(engine, [_Paused(five, barrier), six], errors)),
        threading.Thread(target=_batch, args=(engine, [_Paused(six, barrier), five], errors)),
    ]
    for t in writers:
        t.start()
    for t in writers:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in writers)
    assert errors == []  # both committed on their first run: no deadlock, no retry
    assert _logged(engine) == [5, 6]
    assert set(stored(engine)) == {("Observation", "obs-5"), ("Observation", "obs-6")}


def test_many_concurrent_redeliveries_through_several_writers_book_each_number_once(
    engine: Engine, source: Source
) -> None:
    """Through the writer itself (several threads on PostgreSQL): every call answered on its
    first run, each number booked once."""
    writers = 4 if engine.dialect.name == "postgresql" else 1
    writer = GroupTransaction(engine, writers=writers, begin=begin_batch, before_commit=end_batch)
    order = [*range(1, 31), *range(30, 0, -1), *range(1, 31, 3)]

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(writer.run(PushWork(source, body(notification(n, f"obs-{n}")))) for n in order),
            return_exceptions=True,
        )

    answers = asyncio.run(main())
    assert [getattr(a, "status", a) for a in answers] == [200] * len(order)
    assert _logged(engine) == list(range(1, 31))


class _Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        return lambda event, **_: self.events.append(event)


def _count(source: str, kind: str) -> float:
    labels = {"source": source, "type": kind}
    return REGISTRY.get_sample_value("pinpoint_subscription_notifications_total", labels) or 0.0


def test_a_notification_run_again_after_its_batch_rolled_back_is_counted_and_logged_once(
    engine: Engine, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = _Log()
    monkeypatch.setattr(intake, "log", recorded)
    writer = GroupTransaction(engine, linger=0.2, begin=begin_batch, before_commit=end_batch)
    first = PushWork(source, body(notification(1, "obs-1")))

    def broken(session: Session) -> None:
        raise ValueError("a unit of the same batch fails")

    async def main() -> list[Any]:
        await writer.run(first)  # stored; its re-delivery below is a replay
        before = _count("hosp", "event-notification")
        answers = await asyncio.gather(writer.run(first), writer.run(broken), return_exceptions=True)
        return [before, *answers]

    before, replay, failed = asyncio.run(main())
    assert getattr(replay, "status", None) == 200 and isinstance(failed, ValueError)
    assert _count("hosp", "event-notification") == before + 1
    assert recorded.events == ["subscriptions.replay"]
    assert _logged(engine) == [1]
