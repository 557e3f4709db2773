"""The outcome cache (issue 19; both backends): a patient's stored rows are reused only while they
are provably what evaluating the patient again would give — a changed resource, another policy, a
milestone falling due or an earlier date all make the patient evaluated again, and the summary is
always the one computed from scratch."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from services.cli import app
from services.recommender.assessor import Assessor
from services.recommender.outcomes.summary import collect, summarize
from services.recommender.worker import Worker
from shared.db.queue import mark_dirty
from shared.db.session import session_scope
from shared.settings import Settings
from tests.conftest import FIXTURES

runner = CliRunner()
VIGNETTES = FIXTURES / "vignettes"
F05 = VIGNETTES / "f05-outcomes-relief-duration-censoring" / "bundle.json"
F03 = VIGNETTES / "f03-esi-repeat-carried-by-function" / "bundle.json"
NOW = datetime(2025, 2, 1, 14, tzinfo=UTC)  # f05's second ablation: 6-month milestone pending


@pytest.fixture(autouse=True)
def _db_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINPOINT_DATABASE_URL", db_url)


def _change_f05_follow_up(tmp_path: Path, value: int) -> None:
    """f05's follow-up score o-6 imported again with ``value``."""
    bundle = json.loads(F05.read_text())
    [obs] = [e for e in bundle["entry"] if e["resource"].get("id") == "o-6"]
    obs["resource"]["valueInteger"] = value
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(bundle))
    _import(changed)


def _import(path: Path) -> None:
    result = runner.invoke(app, ["import", str(path)])
    assert result.exit_code == 0, result.output


class Counting:
    """Counts the patients whose outcome rows are computed (by the summary: the cache's misses;
    by the worker: every patient it evaluates) — both through ``cache.evaluate``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = Assessor.outcomes_of

        def counted(assessor: Assessor, facts: Any, now: datetime) -> Any:
            self.calls += 1
            return real(assessor, facts, now)

        monkeypatch.setattr(Assessor, "outcomes_of", counted)

    def take(self) -> int:
        n, self.calls = self.calls, 0
        return n


def _from_scratch(engine: Engine, assessor: Assessor, now: datetime) -> dict[str, Any]:
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM outcome_cache"))
    return summarize(collect(engine, assessor, now))


def test_reused_only_while_the_same(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _import(F03)
    _import(F05)
    cms = Assessor.load("cms-lcd")
    count = Counting(monkeypatch)

    cold = summarize(collect(engine, cms, NOW))
    assert count.take() == 2
    assert summarize(collect(engine, cms, NOW)) == cold
    assert count.take() == 0  # nothing changed: every row from the cache

    # a later follow-up score of f05 changes: that patient alone is evaluated again
    _change_f05_follow_up(tmp_path, 6)
    after = summarize(collect(engine, cms, NOW))
    assert count.take() == 1
    assert after != cold
    assert after == _from_scratch(engine, cms, NOW)
    count.take()

    # another policy: every patient evaluated with it, and the answer is that policy's
    consensus = Assessor.load("consensus-2020")
    other = summarize(collect(engine, consensus, NOW))
    assert count.take() == 2
    assert other == _from_scratch(engine, consensus, NOW)
    count.take()

    # time: f05's 6-month milestone falls due on 2025-04-21; before it the rows are reused,
    # after it they are computed again (and an earlier date is never served from a later entry)
    summarize(collect(engine, cms, NOW))
    count.take()
    assert summarize(collect(engine, cms, datetime(2025, 3, 1, tzinfo=UTC))) == _from_scratch(
        engine, cms, datetime(2025, 3, 1, tzinfo=UTC)
    )
    count.take()
    collect(engine, cms, datetime(2025, 3, 1, tzinfo=UTC))
    assert count.take() == 0
    due = datetime(2025, 5, 1, tzinfo=UTC)
    later = summarize(collect(engine, cms, due))
    assert count.take() >= 1  # f05 at least (its milestone fell due)
    assert later == _from_scratch(engine, cms, due)
    count.take()
    collect(engine, cms, due)
    collect(engine, cms, NOW)
    assert count.take() == 2  # the entries are for May: February is computed again

    # a patient's resources all deleted: its entry is forgotten
    with engine.begin() as conn:
        gone = sa.text("UPDATE resource SET deleted = :t WHERE patient_key = 'default:P-016'")
        conn.execute(gone, {"t": True})
    collect(engine, cms, NOW)
    with engine.connect() as conn:
        keys = conn.execute(sa.text("SELECT patient_key FROM outcome_cache")).scalars().all()
    assert keys == ["default:P-001"]


def _entries(engine: Engine) -> dict[str, tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT patient_key, fingerprint, engine, computed_for, valid_until FROM outcome_cache")
        )
        return {r[0]: tuple(r[1:]) for r in rows}


def _drained_once(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> tuple[Assessor, Counting, Worker]:
    """f03 and f05 imported and evaluated by a worker (the rows computed counted)."""
    _import(F03)
    _import(F05)
    cms = Assessor.load("cms-lcd")
    count = Counting(monkeypatch)
    worker = Worker(engine, settings, cms)
    assert worker.drain(now=NOW).stored == 2
    return cms, count, worker


def test_the_worker_leaves_every_patient_warm(
    engine: Engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker stores each patient's entry as it evaluates it (the first summary after a
    backfill is warm): the summary then evaluates nobody and gives the summary from scratch; the
    entries are the ones the summary itself writes; a patient changed after the worker ran is
    evaluated again by the summary, and by the worker once it drains the new mark."""
    cms, count, worker = _drained_once(engine, settings, monkeypatch)
    assert count.take() == 2  # the worker computed both patients' rows
    by_worker = _entries(engine)
    assert sorted(by_worker) == ["default:P-001", "default:P-016"]

    warm = summarize(collect(engine, cms, NOW))
    assert count.take() == 0  # every patient warm
    assert _entries(engine) == by_worker
    # the same summary and the same entries, key for key, as the summary computes from scratch
    assert _from_scratch(engine, cms, NOW) == warm
    assert count.take() == 2
    assert _entries(engine) == by_worker

    # f05 changed after the worker ran (its new mark not yet drained): the summary evaluates it
    _change_f05_follow_up(tmp_path, 6)
    count.take()
    after = summarize(collect(engine, cms, NOW))
    assert count.take() == 1
    assert after != warm and after == _from_scratch(engine, cms, NOW)

    # changed again, and this time the worker drains the mark first: the summary is warm again
    _change_f05_follow_up(tmp_path, 1)
    count.take()
    assert worker.drain(now=NOW).stored == 1
    assert count.take() == 1
    again = summarize(collect(engine, cms, NOW))
    assert count.take() == 0
    assert again != after and again == _from_scratch(engine, cms, NOW)


def test_the_worker_rewrites_no_entry_still_current(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-evaluating unchanged data leaves a current entry as it is (its rows are not computed
    again nor written); an entry that has expired meanwhile (a milestone fell due) is replaced."""
    cms, count, worker = _drained_once(engine, settings, monkeypatch)
    count.take()
    first = _entries(engine)
    with session_scope(engine) as session:
        mark_dirty(session, list(first))
    assert worker.drain(now=NOW).stored == 2
    assert count.take() == 0
    assert _entries(engine) == first

    def aware(value: datetime | str) -> datetime:  # SQLite gives the text back
        value = datetime.fromisoformat(value) if isinstance(value, str) else value
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    expiring = {k: aware(e[3]) for k, e in first.items() if e[3] is not None}
    assert expiring  # f05's pending milestone
    later = min(expiring.values())
    with session_scope(engine) as session:
        mark_dirty(session, list(first))
    assert worker.drain(now=later).stored == 2
    replaced = {k for k, until in expiring.items() if until <= later}
    assert replaced and count.take() == len(replaced)
    now_stored = _entries(engine)
    assert {k for k in first if now_stored[k] != first[k]} == replaced
    assert summarize(collect(engine, cms, later)) == _from_scratch(engine, cms, later)


def test_a_patient_whose_rows_fail_is_still_evaluated_by_the_worker(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outcome rows failing for a patient never hold back its evaluation: the suggestions are
    stored, the mark is cleared, no entry is written, and the summary evaluates it itself."""
    _import(F05)
    cms = Assessor.load("cms-lcd")
    real = Assessor.outcomes_of

    def broken(assessor: Assessor, facts: Any, now: datetime) -> Any:
        raise ValueError("cannot compute the rows")

    monkeypatch.setattr(Assessor, "outcomes_of", broken)
    assert Worker(engine, settings, cms).drain(now=NOW).stored == 1
    assert _entries(engine) == {}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM evaluation_queue")).scalar_one() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM suggestion")).scalar_one() > 0
    monkeypatch.setattr(Assessor, "outcomes_of", real)
    count = Counting(monkeypatch)
    assert summarize(collect(engine, cms, NOW)) == _from_scratch(engine, cms, NOW)
    assert count.take() == 2  # the summary, then the one from scratch


def test_worker_processes_give_the_same_rows(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parallel path (PostgreSQL: spawned processes over ranges of patients) gives the rows of
    the in-process one, and fills the same cache."""
    from services.recommender.outcomes import summary

    _import(F03)
    _import(F05)
    cms = Assessor.load("cms-lcd")
    alone = summarize(collect(engine, cms, NOW, jobs=1))
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM outcome_cache"))
    monkeypatch.setattr(summary, "PARALLEL_MIN", 0)
    monkeypatch.setattr(summary, "BATCH", 1)  # two ranges, one patient each
    assert summarize(collect(engine, cms, NOW, jobs=2)) == alone
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM outcome_cache")).scalar_one() == 2
    assert summarize(collect(engine, cms, NOW, jobs=2)) == alone  # from the cache


def test_the_engine_tag_is_the_same_in_every_process() -> None:
    """Entries written by one process are found by the next: the tag (policy content and rule code)
    does not depend on the interpreter's hash seed or on object addresses."""
    import os
    import subprocess
    import sys

    code = (
        "from services.recommender.assessor import Assessor\n"
        "from services.recommender.outcomes.cache import engine_tag\n"
        "print(engine_tag(Assessor.load('cms-lcd')), engine_tag(Assessor.load('consensus-2020')))"
    )
    tags = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(tags) == 1
    cms, consensus = tags.pop().split()
    assert cms != consensus
