"""The `pinpoint` command: db upgrade, serve refusals, one-line setting errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services.cli import app
from shared.db.session import make_engine, migrations_at_head
from tests.conftest import FIXTURES
from tests.serving import clean_env

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


# --- a five-minute start: version, completion, help, exit codes, piped output ----------------------
def _pinpoint(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "pinpoint"
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def test_version() -> None:
    from importlib.metadata import version

    result = _pinpoint("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"pinpoint {version('pinpoint')}"


def test_shell_completion_is_offered() -> None:
    result = _pinpoint("--help")
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout
    shown = _pinpoint("--show-completion", "bash", env={**os.environ, "SHELL": "/bin/bash"})
    assert shown.returncode == 0 and "complete" in shown.stdout and "pinpoint" in shown.stdout


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in getattr(group, "commands", {}).items():
        found += _commands(command, (*prefix, name))
    return found


def test_every_command_help_is_free_of_type_hints() -> None:
    """No ``<str>``, ``<list[Path]>``, ``<bool>``: values are named in words (TEXT, PATH…)."""
    from typer.main import get_command

    commands = _commands(get_command(app))
    assert ("dead-letters", "list") in commands and ("evaluate",) in commands and len(commands) > 10
    for command in commands:
        result = runner.invoke(app, [*command, "--help"], terminal_width=120)
        assert result.exit_code == 0, (command, result.output)
        assert not re.search(r"<[a-z_\[\], |]+>", result.output), (command, result.output)
        assert "CONTRACT" not in result.output and "§" not in result.output, (command, result.output)
    evaluate = runner.invoke(app, ["evaluate", "--help"], terminal_width=120).output
    assert "PATH" in evaluate and "TEXT" in evaluate


def test_top_level_help_names_the_data_folder_and_the_exit_codes(tmp_path: Path) -> None:
    env = {**clean_env(), "XDG_DATA_HOME": str(tmp_path), "COLUMNS": "400"}
    result = _pinpoint("--help", env=env)
    assert result.returncode == 0
    unwrapped = "".join(result.stdout.split())  # help text is wrapped to the terminal
    assert str(tmp_path / "pinpoint" / "pinpoint.db") in unwrapped
    assert "Exitcodes:0done;1ran,butpartoftheworkwasrefusedorfailed" in unwrapped


def test_dead_letters_list_piped_is_plain_tab_separated(tmp_path: Path) -> None:
    from shared.db.models import DeadLetter, utcnow
    from shared.db.session import session_scope

    url = f"sqlite:///{tmp_path / 'dl.db'}"
    env = clean_env(PINPOINT_DATABASE_URL=url)
    assert _pinpoint("db", "upgrade", env=env).returncode == 0
    engine = make_engine(url)
    with session_scope(engine) as s:
        s.add(
            DeadLetter(source="default", kind="push", reason="not JSON", payload=b"junk", created_at=utcnow())
        )
    engine.dispose()
    result = _pinpoint("dead-letters", "list", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split("\t") == ["id", "created", "source", "kind", "status", "replays", "reason"]
    row = lines[1].split("\t")
    assert row[0] == "1" and row[2:5] == ["default", "push", "new"] and row[-1] == "not JSON"
    assert "\x1b[" not in result.stdout and not set(result.stdout) & set("│─┃━┏┡╭╰")


def test_exit_codes_are_the_documented_ones(tmp_path: Path) -> None:
    """2: nothing done (bad setting, argument or input); 1: ran, part refused; 0: done."""
    env = clean_env(PINPOINT_DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}")
    assert _pinpoint("import", str(tmp_path / "missing.ndjson"), env=env).returncode == 2
    assert _pinpoint("evaluate", str(tmp_path / "missing.json"), env=env).returncode == 2
    assert _pinpoint("serve", "--role", "nope", env=env).returncode == 2
    assert _pinpoint("db", "upgrade", env={**env, "PINPOINT_PORT": "eighty"}).returncode == 2
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"not": "fhir"}\n')
    partly = _pinpoint("import", str(bad), env=env)
    assert partly.returncode == 1
    assert "1 payload kept as dead letters: see `pinpoint dead-letters list`" in partly.stderr
    assert _pinpoint("dead-letters", "show", "99", env=env).returncode == 1
    good = FIXTURES / "ingest" / "ndjson" / "Patient.ndjson"
    assert _pinpoint("import", str(good), env=env).returncode == 0
