"""What every ``pinpoint`` command shares: settings and the database engine, or a clear exit.

Light on purpose: ``pinpoint --help`` imports this module, so it loads the settings, logging and
database layers only when a command asks for them (the imports inside the functions below are
that deliberate lazy loading).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from shared.settings import Settings

#: Exit code for unusable configuration or arguments (CONTRACT §1).
EXIT_CONFIG = 2


def fail(message: str, code: int = EXIT_CONFIG) -> typer.Exit:
    """Print ``pinpoint: message`` on stderr; raise the returned exit."""
    typer.echo(f"pinpoint: {message}", err=True)
    return typer.Exit(code=code)


def settings_or_exit(overrides: Mapping[str, object] | None = None, *, quiet: bool = False) -> Settings:
    """The settings with logging configured (``quiet``: info becomes warning, for commands whose
    output is the point); invalid configuration exits 2 with the reason."""
    from shared.errors import ConfigError  # lazy
    from shared.logging import configure_logging  # lazy
    from shared.settings import load_settings  # lazy

    try:
        settings = load_settings(**(overrides or {}))
    except ConfigError as exc:
        raise fail(str(exc)) from None
    level = "warning" if quiet and settings.log_level == "info" else settings.log_level
    configure_logging(level, settings.log_format)
    return settings


def engine_or_exit(settings: Settings) -> Engine:
    """The database engine: SQLite migrated on the spot; PostgreSQL must be at head (exit 2)."""
    from shared.db.session import prepare_database  # lazy
    from shared.errors import ConfigError  # lazy

    try:
        return prepare_database(settings.database_url, embedded=settings.is_sqlite)
    except ConfigError as exc:
        raise fail(str(exc)) from None
