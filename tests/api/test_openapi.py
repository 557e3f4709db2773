"""The OpenAPI describes every route it serves, path parameters included (issue 18, finding 8)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from services.server import Role, build_app
from shared.settings import Settings


@pytest.fixture
def app(tmp_path: Path) -> Any:
    """The whole app; the schema needs no database (nothing is called)."""
    return build_app(Settings(database_url=f"sqlite:///{tmp_path / 'p.db'}", _env_file=None), Role.all)  # type: ignore[call-arg]


def test_every_path_parameter_is_declared_on_every_operation(app: Any) -> None:
    paths = app.openapi()["paths"]
    missing = []
    for path, operations in paths.items():
        wanted = set(re.findall(r"{(\w+)}", path))
        for method, op in operations.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            if wanted - declared:
                missing.append(f"{method.upper()} {path}: {sorted(wanted - declared)}")
    assert missing == []


def test_the_sources_operations_take_source_id(app: Any) -> None:
    ops = [
        op
        for path, operations in app.openapi()["paths"].items()
        if path.startswith("/sources/{source_id}/")
        for op in operations.values()
    ]
    assert len(ops) >= 8
    for op in ops:
        [param] = [p for p in op["parameters"] if p["name"] == "source_id"]
        assert param["in"] == "path" and param["required"] is True
