"""Booking event numbers without serialising a subscription's notifications (issue 21): the log of
event numbers takes concurrent deliveries of one subscription side by side, a replay is no new
event even while the first delivery is still uncommitted, and the gaps come from the log."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.ingest.subscriptions import state
from shared.db.models import utcnow


def test_a_replay_is_not_new_and_numbers_are_logged_once(engine: Engine) -> None:
    now = utcnow()
    with Session(engine) as s:
        assert state.log_events(s, "hosp", "s1", [1, 2, 2, 3], now=now) == {1, 2, 3}
        assert state.log_events(s, "hosp", "s1", [3, 4], now=now) == {4}
        assert state.log_events(s, "hosp", "s2", [3], now=now) == {3}  # another subscription's own numbers
        s.commit()
    with Session(engine) as s:
        assert state.logged(s, "hosp", "s1", 1, 10) == {1, 2, 3, 4}
        assert state.last_event(s, "hosp", "s1") == 4


# SQLite has one writer at a time by design; on PostgreSQL deliveries run side by side
@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_concurrent_deliveries_of_one_subscription_do_not_wait_for_each_other(engine: Engine) -> None:
    now = utcnow()
    with Session(engine) as first, Session(engine) as second:
        state.note_topic(first, "hosp", "s1", now=now, status="active", topic=None)
        assert state.log_events(first, "hosp", "s1", [1], now=now) == {1}
        # the first delivery has not committed; the second must not wait for it
        second.execute(sa.text("SET LOCAL lock_timeout = '500ms'"))
        state.note_topic(second, "hosp", "s1", now=now, status="active", topic=None)
        assert state.log_events(second, "hosp", "s1", [2], now=now) == {2}
        second.commit()
        first.commit()
    with Session(engine) as s:
        assert state.logged(s, "hosp", "s1", 1, 2) == {1, 2}


def test_the_sweep_passes_consecutive_numbers_at_once_and_waits_out_the_grace_below_a_hole(
    engine: Engine,
) -> None:
    now = utcnow()
    grace = timedelta(seconds=5)
    with Session(engine) as s:
        state.ensure_state(s, "hosp", "s1")
        state.log_events(s, "hosp", "s1", [1, 2, 4], now=now)
        s.commit()
    with Session(engine) as s:
        assert state.unswept(s) == [("hosp", "s1")]
        row, gaps = state.sweep(s, "hosp", "s1", now=now, grace=grace)
        assert gaps == [] and row.last_event_number == 2  # 3 may still be on its way
        s.commit()
    with Session(engine) as s:
        row, gaps = state.sweep(s, "hosp", "s1", now=now + 2 * grace, grace=grace)
        assert gaps == [(3, 3)] and row.last_event_number == 4
        s.commit()
    with Session(engine) as s:
        assert state.unswept(s) == []


def test_pruning_forgets_only_old_numbers_gap_detection_has_passed(engine: Engine) -> None:
    old, now = utcnow() - timedelta(days=8), utcnow()
    with Session(engine) as s:
        state.ensure_state(s, "hosp", "s1")
        state.log_events(s, "hosp", "s1", [1, 2, 3], now=old)
        state.log_events(s, "hosp", "s1", [5], now=old)  # beyond a hole not yet passed
        state.log_events(s, "hosp", "s1", [6], now=now)
        s.commit()
    with Session(engine) as s:
        state.sweep(s, "hosp", "s1", now=old, grace=timedelta(seconds=5))  # passes 1..3
        s.commit()
    with Session(engine) as s:
        assert state.prune_events(s, before=now - timedelta(days=7)) == 3
        s.commit()
    with Session(engine) as s:
        assert state.logged(s, "hosp", "s1", 1, 10) == {5, 6}
