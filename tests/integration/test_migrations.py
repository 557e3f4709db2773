"""The Alembic history builds exactly the schema the models declare, on SQLite and PostgreSQL,
and downgrades cleanly to nothing (so a model change without its migration fails here)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

import shared.db.models  # noqa: F401  (registers every table)
from shared.db.session import (
    HEAD_REVISION,
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    prepare_database,
    upgrade,
)
from shared.errors import ConfigError


def test_the_head_known_at_start_up_is_the_head_of_the_migration_history() -> None:
    """Commands check the database against HEAD_REVISION without loading alembic's scripts."""
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert heads == [HEAD_REVISION], (
        f"a migration was added: set HEAD_REVISION in shared/db/session.py to {heads}"
    )


def test_the_revision_read_without_alembic_is_alembics(engine: Engine) -> None:
    with engine.connect() as conn:
        assert current_revision(engine) == MigrationContext.configure(conn).get_current_revision()
    assert current_revision(engine) == HEAD_REVISION


def test_a_database_behind_or_ahead_is_refused_on_postgres_and_migrated_on_sqlite(
    engine: Engine, db_url: str
) -> None:
    """A server database not at this version's head stops the command with the way out; the
    embedded one is brought up to head."""
    refused = pytest.raises(ConfigError, match="run `pinpoint db upgrade`")
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:  # ahead: a revision of a newer version
            conn.execute(sa.text("UPDATE alembic_version SET version_num = 'zz99_newer'"))
        try:
            with refused:
                prepare_database(db_url, embedded=False)
        finally:
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": HEAD_REVISION})
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:  # behind: the previous revision
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "-1")
    try:
        assert current_revision(engine) not in (None, HEAD_REVISION)
        if engine.dialect.name == "sqlite":
            prepare_database(db_url, embedded=True).dispose()
            assert current_revision(engine) == HEAD_REVISION
        else:
            with refused:
                prepare_database(db_url, embedded=False)
    finally:
        upgrade(engine)


def test_a_database_never_migrated_has_no_revision(tmp_path) -> None:  # type: ignore[no-untyped-def]
    empty = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    assert current_revision(empty) is None
    empty.dispose()


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, SQLModel.metadata) == []


def test_downgrade_to_base_and_back(engine: Engine) -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()
    assert "ix_audit_log_action_target" in {i["name"] for i in sa.inspect(engine).get_indexes("audit_log")}


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # TOAST compression is PostgreSQL's
def test_the_workers_large_json_is_compressed_with_lz4_where_the_server_has_it(engine: Engine) -> None:
    with engine.connect() as conn:
        methods = conn.execute(
            sa.text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
        ).scalar()
        if "lz4" not in (methods or []):
            pytest.skip("this server was built without lz4")
        found = conn.execute(
            sa.text(
                "SELECT c.relname || '.' || a.attname, a.attcompression FROM pg_attribute a"
                " JOIN pg_class c ON c.oid = a.attrelid"
                " WHERE (c.relname, a.attname) IN (('suggestion', 'resource'), ('outbox', 'payload'),"
                " ('assessment', 'document'), ('outcome_cache', 'rows'))"
            )
        ).all()
    assert sorted(found) == [
        ("assessment.document", "l"),
        ("outbox.payload", "l"),
        ("outcome_cache.rows", "l"),
        ("suggestion.resource", "l"),
    ]
