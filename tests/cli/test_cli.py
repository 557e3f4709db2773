"""The `pinpoint` command: db upgrade, serve refusals, one-line setting errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from services.cli import app
from shared.db.session import make_engine, migrations_at_head

runner = CliRunner()


def test_db_upgrade_brings_a_new_database_to_head(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'new.db'}"
    monkeypatch.setenv("PINPOINT_DATABASE_URL", url)
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "database at revision" in result.output
    assert migrations_at_head(make_engine(url))


@pytest.mark.postgres
def test_db_upgrade_on_postgres(pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINPOINT_DATABASE_URL", pg_database)
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    engine = make_engine(pg_database)
    assert migrations_at_head(engine)
    engine.dispose()


def test_invalid_setting_stops_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINPOINT_PORT", "eighty")
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "PINPOINT_PORT" in lines[0]


def test_serve_refuses_public_bind_without_credentials(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PINPOINT_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "refusing to bind 0.0.0.0" in result.output


def test_serve_rejects_unknown_role() -> None:
    result = runner.invoke(app, ["serve", "--role", "everything"])
    assert result.exit_code == 2
    assert "--role" in result.output


@pytest.mark.postgres
def test_serve_refuses_postgres_not_at_head(monkeypatch: pytest.MonkeyPatch, pg_database: str) -> None:
    from tests.conftest import _admin_execute

    name = pg_database.rsplit("/", 1)[1] + "_empty"
    _admin_execute(f'CREATE DATABASE "{name}"')
    try:
        url = pg_database.rsplit("/", 1)[0] + f"/{name}"
        monkeypatch.setenv("PINPOINT_DATABASE_URL", url)
        result = runner.invoke(app, ["serve"])
        assert result.exit_code == 2
        assert "pinpoint db upgrade" in result.output
    finally:
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_installed_command_evaluates_a_vignette() -> None:
    """`.venv/bin/pinpoint evaluate` as an operator runs it (CONTRACT §1)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import FIXTURES

    exe = Path(sys.executable).parent / "pinpoint"
    bundle = FIXTURES / "vignettes" / "v02-two-concordant-blocks" / "bundle.json"
    done = subprocess.run(
        [str(exe), "evaluate", str(bundle), "--now", "2025-03-10T08:00:00-05:00"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["policy"]["id"] == "cms-lcd"
    [patient] = doc["patients"]
    assert patient["orderChecks"][0]["verdict"] == "supported"


def test_installed_command_exit_2_on_unreadable_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    from pathlib import Path

    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    exe = Path(sys.executable).parent / "pinpoint"
    done = subprocess.run(
        [str(exe), "evaluate", str(bad)], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 2
    assert "bad.json" in done.stderr
