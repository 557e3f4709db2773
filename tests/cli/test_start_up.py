"""What ``pinpoint import`` and ``pinpoint worker`` load when they start: neither the web server's
stack nor, with the database at head, alembic and its scripts — a person waits for every module
(docs/ingest.md, docs/worker.md; ``tests/bench/startup.py`` times them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.api.ingest.helpers import pain, patient
from tests.serving import ROOT, clean_env

#: The serving stack: the web framework, its server, templates, and our modules built on them.
SERVING = ("fastapi", "starlette", "uvicorn", "jinja2", "services.server", "shared.web")
#: Migrating: only a database behind this version's head needs it.
MIGRATING = ("alembic", "mako")

_RUN = """
import json, sys
out, sys.argv = sys.argv[1], ["pinpoint", *sys.argv[2:]]
from services.cli import app
code = 0
try:
    app()
except SystemExit as exc:
    code = exc.code
with open(out, "w") as fh:
    json.dump({"code": code, "modules": sorted(sys.modules)}, fh)
"""


def _loaded(db_url: str, tmp_path: Path, *args: str) -> list[str]:
    """The modules loaded once ``pinpoint ARGS`` has run, in a process of its own."""
    out = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(out), *args],
        cwd=ROOT,
        env=clean_env(PINPOINT_DATABASE_URL=db_url, PINPOINT_LOG_LEVEL="warning"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["code"] == 0, done.stderr
    return list(result["modules"])


def _of(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in packages or m in packages]


def test_import_loads_neither_the_web_server_nor_the_migrations(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "Observation.ndjson"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in (patient("P-1"), pain("obs-1"))) + b"\n")
    modules = _loaded(db_url, tmp_path, "import", str(path), "--jobs", "2")
    assert "services.ingest.bulk" in modules  # it did import
    assert _of(modules, SERVING) == []
    assert _of(modules, MIGRATING) == []
    assert [m for m in modules if m.startswith("fhir.resources.")] == []  # validated by schema


def test_the_worker_loads_neither_the_web_server_nor_the_migrations(db_url: str, tmp_path: Path) -> None:
    modules = _loaded(db_url, tmp_path, "worker", "--once")
    assert "services.recommender.worker" in modules
    assert _of(modules, SERVING) == []
    assert _of(modules, MIGRATING) == []
    assert [m for m in modules if m.startswith("fhir.resources.")] == []  # no FHIR models


@pytest.mark.parametrize("command", [("import",), ("worker", "--once")])
def test_a_database_not_yet_migrated_is_still_migrated_on_sqlite(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """The embedded database of a first run is migrated on the spot, as before."""
    from shared.db.session import HEAD_REVISION, current_revision, make_engine

    url = f"sqlite:///{tmp_path / 'first.db'}"
    path = tmp_path / "Patient.ndjson"
    path.write_bytes(orjson.dumps(patient("P-1")) + b"\n")
    modules = _loaded(url, tmp_path, *command, *([str(path)] if command == ("import",) else []))
    assert "alembic" in modules
    engine = make_engine(url)
    assert current_revision(engine) == HEAD_REVISION
    engine.dispose()
