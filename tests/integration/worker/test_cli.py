"""``pinpoint worker --once`` as a command: drains and reports; an invalid policy exits 2."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from shared.db.models import EvaluationQueue
from tests.integration.worker.helpers import seed_store, synthetic, worker_process


def test_once_drains_and_reports(engine: Engine, db_url: str) -> None:
    seed_store(engine, synthetic(5, seed=3))
    proc = worker_process(db_url, "--once")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "evaluated 5 patients: 5 stored, 0 failed" in out
    with Session(engine) as s:
        assert list(s.exec(select(EvaluationQueue))) == []


def test_invalid_policy_exits_2_naming_the_setting(db_url: str) -> None:
    proc = worker_process(db_url, "--once", PINPOINT_POLICY="no-such-policy")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "PINPOINT_POLICY" in err and "Traceback" not in err
