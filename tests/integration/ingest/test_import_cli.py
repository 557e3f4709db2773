"""``pinpoint import`` and ``pinpoint dead-letters`` against a real database (both backends)."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session
from typer.testing import CliRunner

from services.cli import app
from shared.db.models import DeadLetter, utcnow
from tests.api.ingest.helpers import body, dead_letters, dirty, pain, stored
from tests.conftest import FIXTURES

runner = CliRunner()
NDJSON = FIXTURES / "ingest" / "ndjson"


@pytest.fixture(autouse=True)
def _db_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINPOINT_DATABASE_URL", db_url)


def _pain_lines() -> set[str]:
    import orjson

    ids = set()
    for line in (NDJSON / "Observation.ndjson").read_bytes().splitlines():
        obs = orjson.loads(line)
        if any(c.get("code") == "72514-3" for c in obs["code"].get("coding", [])):
            ids.add(obs["id"])
    return ids


def test_import_ndjson_folder_keeps_pain_scores_and_dead_letters_bad_lines(engine: Engine) -> None:
    result = runner.invoke(app, ["import", str(NDJSON)])
    assert result.exit_code == 1, result.output  # ran, but part of the input was refused
    assert "Observation" in result.output and "total" in result.output
    assert "4 payloads kept as dead letters" in result.output
    rows = stored(engine)
    kept_obs = {rid for (rtype, rid) in rows if rtype == "Observation"}
    assert kept_obs == _pain_lines() and kept_obs
    assert sum(1 for (rtype, _) in rows if rtype == "Patient") == 9
    bad = dead_letters(engine)
    assert len(bad) == 4  # log.ndjson: Bulk Data export log lines, no resourceType
    assert all(d.kind == "import" and d.context and d.context["file"].endswith("log.ndjson") for d in bad)
    assert [d.context["line"] for d in bad if d.context] == [1, 2, 3, 4]
    assert dirty(engine)

    again = runner.invoke(app, ["import", str(NDJSON / "Observation.ndjson"), str(NDJSON / "Patient.ndjson")])
    assert again.exit_code == 0, again.output  # nothing refused
    assert "kept as dead letters" not in again.output and "0 dead letters" in again.output
    assert set(stored(engine)) == set(rows)

    # the bad lines imported again are counted on their dead letters, not recorded twice
    assert runner.invoke(app, ["import", str(NDJSON / "log.ndjson")]).exit_code == 1
    assert sorted((d.id, d.occurrences) for d in dead_letters(engine)) == [(d.id, 2) for d in bad]


def test_import_bundle_file_and_a_missing_path(engine: Engine) -> None:
    bundle = FIXTURES / "ingest" / "realdata" / "candle-transaction-01.json"
    result = runner.invoke(app, ["import", str(bundle)])
    assert result.exit_code == 0, result.output
    types = {rtype for (rtype, _) in stored(engine)}
    assert "Encounter" not in types and "Patient" in types
    missing = runner.invoke(app, ["import", "/nonexistent/file.ndjson"])
    assert missing.exit_code == 2


def test_dead_letters_list_show_replay(engine: Engine) -> None:
    """A payload an earlier version rejected replays into the store once the cause is gone."""
    payload = body(pain("late-1", subject="Patient/P-5"))
    with Session(engine) as s:
        s.add(
            DeadLetter(
                source="default", kind="push", reason="earlier failure", payload=payload, created_at=utcnow()
            )
        )
        s.add(DeadLetter(source="default", kind="push", reason="junk", payload=b"junk", created_at=utcnow()))
        s.commit()
    listed = runner.invoke(app, ["dead-letters", "list"])
    assert listed.exit_code == 0 and "earlier failure" in listed.output
    shown = runner.invoke(app, ["dead-letters", "show", "1"])
    assert shown.exit_code == 0 and '"late-1"' in shown.output
    replayed = runner.invoke(app, ["dead-letters", "replay", "1"])
    assert replayed.exit_code == 0, replayed.output
    assert '"replayed"' in replayed.output
    assert ("Observation", "late-1") in stored(engine)
    failed = runner.invoke(app, ["dead-letters", "replay", "2"])
    assert failed.exit_code == 1
    statuses = {d.id: d.status for d in dead_letters(engine)}
    assert statuses == {1: "replayed", 2: "failed"}
    assert runner.invoke(app, ["dead-letters", "show", "99"]).exit_code == 1


def test_the_same_bad_line_twice_in_one_file_is_one_dead_letter(engine: Engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "twice.ndjson"
    path.write_bytes(b'{"not": "fhir"}\n{"not": "fhir"}\n')
    assert runner.invoke(app, ["import", str(path)]).exit_code == 1
    [dl] = dead_letters(engine)
    assert (dl.payload, dl.occurrences) == (b'{"not": "fhir"}', 2)


def test_import_with_two_processes_stores_what_one_does_and_numbers_bad_lines(
    engine: Engine, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """``--jobs 2`` cuts the file at line boundaries (tiny units here): the same resources are
    kept, irrelevant types are counted as dropped, and a bad line's dead letter has its line."""
    import orjson

    from services.ingest.bulk import import_paths
    from shared.settings import Source

    lines = [orjson.dumps({"resourceType": "Claim", "id": f"cl{i}", "status": "active"}) for i in range(30)]
    for i in range(30):
        lines.insert(2 * i, orjson.dumps(pain(f"obs-{i}", subject=f"Patient/P-{i % 4}")))
    lines.insert(47, b"{not json")
    path = tmp_path / "Mixed.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = import_paths(engine, Source(id="default"), [path], jobs=2, unit_bytes=1500)
    assert report.resources == 61
    assert report.tally.counts["Claim"]["dropped"] == 30
    assert report.tally.total("kept") == 30
    assert {rid for rtype, rid in stored(engine) if rtype == "Observation"} == {f"obs-{i}" for i in range(30)}
    assert [d.context["line"] for d in dead_letters(engine) if d.context] == [48]
    assert dirty(engine)


def test_a_reimport_validates_only_what_changed_and_still_refuses_the_invalid(
    engine: Engine, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The same file again: what is stored unchanged was validated when it was stored and is not
    validated again (nor re-marked); a changed resource is, and an invalid one is still refused."""
    import orjson

    import services.ingest.intake.pipeline as pipeline
    from services.ingest.bulk import import_paths
    from shared.settings import Source

    lines = [orjson.dumps(pain(f"obs-{i}", subject=f"Patient/P-{i % 3}")) for i in range(12)]
    path = tmp_path / "Observation.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert import_paths(engine, Source(id="default"), [path], batch_size=5).tally.total("kept") == 12
    before = {rid: row.content_hash for (_, rid), row in stored(engine).items()}
    marks = dirty(engine)

    validated: list[str] = []
    real = pipeline.validate_r4
    monkeypatch.setattr(pipeline, "validate_r4", lambda r: (validated.append(r["id"]), real(r))[1])
    changed = pain("obs-3", value=2, subject="Patient/P-0")
    invalid = pain("obs-7", subject="Patient/P-1", effectiveDateTime="last Tuesday")
    lines[3], lines[7] = orjson.dumps(changed), orjson.dumps(invalid)
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = import_paths(engine, Source(id="default"), [path], batch_size=5)
    assert sorted(validated) == ["obs-3", "obs-7"]
    assert report.tally.total("kept") == 11 and report.tally.total("rejected") == 1
    after = {rid: row.content_hash for (_, rid), row in stored(engine).items()}
    assert {rid for rid in after if after[rid] != before[rid]} == {"obs-3"}
    assert [d.context["line"] for d in dead_letters(engine) if d.context] == [8]
    assert dirty(engine) == marks


def test_a_json_file_too_deep_or_not_a_resource_is_one_dead_letter_saying_why(
    engine: Engine, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from services.ingest.bulk import import_paths
    from shared.jsonlimits import TOO_DEEP
    from shared.settings import Source

    deep = tmp_path / "deep.json"
    deep.write_bytes(b'{"resourceType": "Bundle", "type": "batch", "x": ' + b"[" * 150 + b"]" * 150 + b"}")
    listed = tmp_path / "list.json"
    listed.write_bytes(b'[{"resourceType": "Patient", "id": "P-1"}]')
    report = import_paths(engine, Source(id="default"), [deep, listed])
    assert report.dead_letters == 2 and not stored(engine)
    reasons = {d.context["file"].rsplit("/", 1)[1]: d.reason for d in dead_letters(engine) if d.context}
    assert reasons == {"deep.json": TOO_DEEP, "list.json": "file is not a FHIR resource"}


@pytest.mark.parametrize("jobs", [1, 2])
def test_lines_of_a_type_never_kept_are_counted_by_the_block_and_the_others_read_with_their_numbers(
    engine: Engine, tmp_path, monkeypatch: pytest.MonkeyPatch, jobs: int
) -> None:  # type: ignore[no-untyped-def]
    """A Bulk Data export's ``Claim.ndjson`` is counted a block at a time; a kept line, a bad line
    and a blank line among the claims are read as ever, numbered as in the file, whichever blocks
    (and, with two processes, units) they fall in."""
    import orjson

    import services.ingest.bulk as bulk
    from shared.settings import Source

    monkeypatch.setattr(bulk, "_PIECE", 300)  # blocks of about five lines
    claims = [orjson.dumps({"resourceType": "Claim", "id": f"cl{i}", "status": "active"}) for i in range(40)]
    obs = [orjson.dumps(pain(f"obs-{i}", subject="Patient/P-1")) for i in range(2)]
    lines = [*claims[:20], obs[0], b"{not json", b"", *claims[20:], obs[1]]
    path = tmp_path / "Claim.ndjson"
    path.write_bytes(b"\r\n".join(lines))  # CRLF, and no newline after the last line
    report = bulk.import_paths(engine, Source(id="default"), [path], jobs=jobs, unit_bytes=700)
    assert report.tally.counts["Claim"]["dropped"] == 40 and report.tally.total("rejected") == 1
    assert report.tally.total("kept") == 2 and report.resources == 43  # the blank line is no resource
    assert {rid for rtype, rid in stored(engine) if rtype == "Observation"} == {"obs-0", "obs-1"}
    assert [d.context["line"] for d in dead_letters(engine) if d.context] == [22]


def test_an_import_of_one_unit_runs_in_the_command_s_own_process(
    engine: Engine, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Starting processes costs more than a small file takes: ``--jobs`` gives no more processes
    than the files make units."""
    import orjson

    import services.ingest.bulk as bulk
    from shared.settings import Source

    def no_processes(*args: object, **kwargs: object) -> None:
        raise AssertionError("processes started for one unit")

    monkeypatch.setattr(bulk, "import_parallel", no_processes)
    path = tmp_path / "Observation.ndjson"
    path.write_bytes(b"\n".join(orjson.dumps(pain(f"obs-{i}")) for i in range(5)) + b"\n")
    report = bulk.import_paths(engine, Source(id="default"), [path], jobs=4)
    assert report.tally.total("kept") == 5


@pytest.mark.parametrize("lines", [4, 5])
def test_only_a_file_s_last_batch_waits_for_the_disk_and_it_makes_the_earlier_ones_durable(
    engine: Engine, tmp_path, monkeypatch: pytest.MonkeyPatch, lines: int
) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL: every batch but a file's last commits without waiting for its WAL flush; the
    last one waits, with a commit record of its own (a transaction id) even when its lines are all
    refused, so that once the file is reported every batch of it is on disk. Nothing is lost."""
    from contextlib import contextmanager

    import orjson
    import sqlalchemy as sa

    import services.ingest.bulk as bulk
    from shared.settings import Source

    commits: list[tuple[str, bool]] = []
    scope = bulk.session_scope

    @contextmanager
    def watched(eng: Engine):  # type: ignore[no-untyped-def]
        with scope(eng) as session:
            yield session
            if eng.dialect.name == "postgresql":
                setting = session.execute(sa.text("SHOW synchronous_commit")).scalar_one()
                xid = session.execute(sa.text("SELECT pg_current_xact_id_if_assigned()")).scalar_one()
                commits.append((setting, xid is not None))

    monkeypatch.setattr(bulk, "session_scope", watched)
    path = tmp_path / "Observation.ndjson"
    # the last line's patient cannot be resolved: with 5 lines the last batch writes nothing
    body_lines = [orjson.dumps(pain(f"obs-{i}")) for i in range(lines - 1)]
    body_lines.append(orjson.dumps(pain("obs-x", subject="Group/G-1")))
    path.write_bytes(b"\n".join(body_lines) + b"\n")
    report = bulk.import_paths(engine, Source(id="default"), [path], batch_size=2)
    assert report.tally.total("kept") == lines - 1 and report.tally.total("unresolved") == 1
    assert {rid for rtype, rid in stored(engine) if rtype == "Observation"} == {
        f"obs-{i}" for i in range(lines - 1)
    }
    if engine.dialect.name == "postgresql":
        assert commits == [("off", True)] * (-(-lines // 2) - 1) + [("on", True)]
        with engine.connect() as conn:  # the import's pooled connection, back to waiting
            assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "on"
