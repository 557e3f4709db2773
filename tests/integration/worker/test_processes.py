"""Real worker processes: two on one PostgreSQL evaluate each patient exactly once; a worker
killed mid-run loses nothing (its claims expire and are taken over)."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from shared.db.models import AuditLog, EvaluationQueue, Suggestion
from tests.integration.worker.helpers import seed_store, synthetic, worker_process


def _evaluations(engine: Engine) -> list[AuditLog]:
    with Session(engine) as s:
        return list(s.exec(select(AuditLog).where(AuditLog.action == "evaluate")))


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_two_worker_processes_evaluate_each_patient_exactly_once(engine: Engine, db_url: str) -> None:
    keys = seed_store(engine, synthetic(500))
    procs = [worker_process(db_url, "--once") for _ in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert "evaluated" in out

    evaluations = _evaluations(engine)
    per_patient = Counter(e.target for e in evaluations)
    assert set(per_patient) == set(keys)
    assert max(per_patient.values()) == 1  # exactly once each
    assert len({e.actor for e in evaluations}) == 2, "both processes should have taken a share"
    with Session(engine) as s:
        assert list(s.exec(select(EvaluationQueue))) == []
        plans = s.execute(
            sa.select(sa.func.count(sa.distinct(Suggestion.patient_key))).where(
                Suggestion.resource_type == "CarePlan"
            )
        ).scalar_one()
    assert plans > 400  # nearly every synthetic patient has an assessment, hence a CarePlan


def test_worker_killed_mid_run_loses_nothing(engine: Engine, db_url: str) -> None:
    keys = seed_store(engine, synthetic(300, seed=7))
    victim = worker_process(db_url, PINPOINT_CLAIM_TTL="3s", PINPOINT_WORKER_POLL_INTERVAL="1s")
    deadline = time.monotonic() + 60
    while len(_evaluations(engine)) < 20 and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.05)
    orphaned: list[EvaluationQueue] = []
    while not orphaned and time.monotonic() < deadline and victim.poll() is None:
        victim.send_signal(signal.SIGSTOP)  # frozen: does it hold claims right now?
        with Session(engine) as s:
            orphaned = [q for q in s.exec(select(EvaluationQueue)) if q.claimed_by is not None]
        if not orphaned:
            victim.send_signal(signal.SIGCONT)
            time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)  # dies holding its claims, mid-evaluation
    victim.communicate(timeout=10)
    done_before = {e.target for e in _evaluations(engine)}
    assert 0 < len(done_before) < len(keys), "the worker should die mid-run"
    assert orphaned, "claims of the dead worker are still held"

    time.sleep(3.5)  # the dead worker's claims expire (claim TTL 3 s)
    rescuer = worker_process(db_url, "--once")
    _, err = rescuer.communicate(timeout=240)
    assert rescuer.returncode == 0, err[-2000:]

    with Session(engine) as s:
        assert list(s.exec(select(EvaluationQueue))) == []
    evaluated = {e.target for e in _evaluations(engine)}
    assert evaluated == set(keys)
    rescued = {e.target for e in _evaluations(engine) if e.target in {q.patient_key for q in orphaned}}
    assert rescued == {q.patient_key for q in orphaned}


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_worker_wakes_on_notify_not_on_the_poll(engine: Engine, db_url: str) -> None:
    proc = worker_process(db_url, PINPOINT_WORKER_POLL_INTERVAL="60s")
    try:
        time.sleep(3)  # started, drained the empty queue, now LISTENing for up to 60 s
        seed_store(engine, synthetic(1))  # commits resources + dirty mark + NOTIFY
        t0 = time.monotonic()
        while not _evaluations(engine) and time.monotonic() - t0 < 20:
            time.sleep(0.05)
        assert _evaluations(engine), "the NOTIFY did not wake the worker"
        assert time.monotonic() - t0 < 20
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
