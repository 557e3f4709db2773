"""Test infrastructure: databases on SQLite and on the real PostgreSQL, apps, clients.

- ``db_url`` / ``engine`` are parametrised over both backends: every database test runs twice.
- PostgreSQL: one database per test session at migration head, created and dropped here; tables
  are truncated after each test. With ``CI=true`` an unreachable PostgreSQL fails the run.
- SQLite: a template file migrated once, copied per test.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from shared.db.session import make_engine, upgrade
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SHARED = ROOT.parent / "shared"
PG_ADMIN_URL = os.environ.get("PINPOINT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


#: The copies of ../shared files the suite needs, at the same relative paths (tests/fixtures/README.md).
SHARED_COPIES = FIXTURES / "shared"


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(what)
    pytest.skip(what)


def shared_path(*parts: str) -> Path:
    """A file of ../shared from its copy under tests/fixtures/shared (a clone without ../shared
    passes), else from ../shared. A folder lists the copies. Missing: a failure under CI=true, a
    skip on a developer's machine."""
    copy = SHARED_COPIES.joinpath(*parts)
    if copy.exists():
        return copy
    path = SHARED.joinpath(*parts)
    if not path.exists():
        _missing(f"../shared/{'/'.join(parts)} is not present (and has no copy in tests/fixtures/shared)")
    return path


def shared_corpus(*parts: str) -> Path:
    """A large corpus folder of ../shared (not copied: the ``corpus`` tests read it in place)."""
    path = SHARED.joinpath(*parts)
    if not path.is_dir():
        _missing(f"the corpus ../shared/{'/'.join(parts)} is not beside this clone")
    return path


def _pg_available() -> str | None:
    try:
        eng = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        eng.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def _admin_execute(sql: str) -> None:
    eng = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(sa.text(sql))
    eng.dispose()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database at migration head for this test session; dropped after."""
    problem = _pg_available()
    if problem:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI and unreachable: {problem}")
        pytest.skip(f"PostgreSQL unreachable: {problem}")
    name = f"pinpoint_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    _admin_execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url, poolclass=sa.pool.NullPool)
    upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


def _truncate_all(url: str) -> None:
    engine = make_engine(url, poolclass=sa.pool.NullPool)
    names = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database at migration head, empty, for one test — on each backend."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "pinpoint.db"
        shutil.copy(template, path)
        yield f"sqlite:///{path}"
        return
    url: str = request.getfixturevalue("pg_database")
    try:
        yield url
    finally:
        _truncate_all(url)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database_url=db_url, _env_file=None)  # type: ignore[call-arg]


@pytest.fixture
def app(settings: Settings, engine: Engine):  # type: ignore[no-untyped-def]
    from services.server import Role, build_app

    return build_app(settings, Role.all, engine)


@pytest.fixture
async def client(app) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://pinpoint.test") as c:
        yield c
    for hook in app.state.runtime.on_shutdown:  # as the lifespan's shutdown: flush, close clients
        await hook()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never inherit PINPOINT_ variables from the developer's shell."""
    for key in list(os.environ):
        if key.startswith("PINPOINT_") and key != "PINPOINT_TEST_PG_URL":
            monkeypatch.delenv(key, raising=False)
