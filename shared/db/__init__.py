"""Database layer: one schema (``models``), engines and sessions (``session``), one Alembic history."""
