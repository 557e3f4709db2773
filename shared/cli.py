"""What every ``pinpoint`` command shares: settings and the database engine, or a clear exit;
exit codes; help text; table output.

Exit codes, the same for every command:

- ``0`` (:data:`OK`) — done;
- ``1`` (:data:`PARTLY`) — the command ran, but part of its work was refused or failed: an import
  with rejected resources, a replay that still fails, a source whose sync failed, no such row;
- ``2`` (:data:`EXIT_CONFIG`, :data:`NOTHING_DONE`) — nothing was done: a bad argument or
  setting, an unreadable input, a database that is not ready.

Light on purpose: ``pinpoint --help`` imports this module, so it loads the settings, logging and
database layers only when a command asks for them (the imports inside the functions below are
that deliberate lazy loading).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_origin

import typer

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from shared.settings import Settings

OK = 0
#: The command ran, but part of its work was refused or failed.
PARTLY = 1
#: Exit code for unusable configuration or arguments: nothing was done.
EXIT_CONFIG = NOTHING_DONE = 2

EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 ran, but part of the work was refused or failed; "
    "2 nothing done (bad argument, setting or input)."
)


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


_WORDS = {str: "TEXT", int: "INTEGER", float: "NUMBER", Path: "PATH", datetime: "DATETIME"}


def _plain_type(param: Any, ctx: Any) -> str:
    """A parameter's value in help as a word (``PATH``, ``TEXT``, ``INTEGER``, the choices)
    instead of a Python annotation (``<list[Path]>``, ``<str>``); flags show none."""
    desc = param.type_descriptor
    annotation = desc.annotation
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation)
    if annotation is bool:
        return ""
    if desc.is_choice:
        return "|".join(str(getattr(c, "value", c)) for c in desc.choices or ())
    for kind, word in _WORDS.items():
        if isinstance(annotation, type) and issubclass(annotation, kind):
            return word
    return "VALUE"


def plain_help_types() -> None:
    """Make typer's help show click's value words instead of Python type hints (typer ≥ 0.20
    prints ``<list[Path]>`` and ``<str>`` beside each parameter). ``tests/cli`` checks every
    command's help, so a typer upgrade that changes this is caught."""
    from typer import core  # lazy

    core._TyperParameter.display_type = _plain_type  # type: ignore[assignment]


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table on standard output: drawn with rich on a terminal; tab-separated with a header
    line when piped or redirected (no box characters, no colour), so ``cut``/``awk``/``grep``
    and spreadsheets read it. The title goes to standard error when piped."""
    if sys.stdout.isatty():
        from rich.console import Console  # lazy
        from rich.table import Table  # lazy

        table = Table(*columns, title=title)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    if title:
        print(title, file=sys.stderr)
    out = sys.stdout
    out.write("\t".join(columns) + "\n")
    for row in rows:
        out.write("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in row) + "\n")
    out.flush()
