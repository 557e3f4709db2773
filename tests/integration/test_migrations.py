"""The Alembic history builds exactly the schema the models declare, on SQLite and PostgreSQL,
and downgrades cleanly to nothing (so a model change without its migration fails here)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

import shared.db.models  # noqa: F401  (registers every table)
from shared.db.session import alembic_config, head_revision, upgrade


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
