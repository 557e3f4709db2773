"""Where Pinpoint keeps its files by default (light: ``pinpoint --help`` imports it)."""

from __future__ import annotations

from pathlib import Path

import platformdirs


def default_database_path() -> Path:
    """Where the embedded database lives unless ``PINPOINT_DATABASE_URL`` says otherwise: the
    user's data folder (``$XDG_DATA_HOME/pinpoint``, by default ``~/.local/share/pinpoint``),
    the same whichever folder a command is started from."""
    return Path(platformdirs.user_data_dir("pinpoint", appauthor=False)) / "pinpoint.db"
