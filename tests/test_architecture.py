"""Dependency rules of STYLE.md, checked on the import statements of every module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB_DB_HTTP = ("fastapi", "starlette", "sqlmodel", "sqlalchemy", "httpx", "alembic", "uvicorn", "psycopg")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in modules(folder):
        for name in imports_of(path):
            if name.split(".")[0] in forbidden or any(
                name == f or name.startswith(f + ".") for f in forbidden
            ):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


@pytest.mark.parametrize("folder", ["shared/domain", "services/recommender/engine"])
def test_pure_core_imports_no_web_database_or_http(folder: str) -> None:
    assert _violations(folder, WEB_DB_HTTP) == []


def test_shared_never_imports_services() -> None:
    assert _violations("shared", ("services",)) == []


def test_services_never_import_each_other() -> None:
    assert _violations("services/ingest", ("services.recommender",)) == []
    assert _violations("services/recommender", ("services.ingest",)) == []


def test_the_rule_checker_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("import httpx\nfrom sqlalchemy import orm\nfrom . import sibling\n")
    assert imports_of(sample) == {"httpx", "sqlalchemy"}


def test_fhir_models_imported_only_as_r4b() -> None:
    """The package top level is R5: anything else must name R4B (or R5 for R5 output) explicitly."""
    bad = []
    for folder in ("shared", "services"):
        for path in modules(folder):
            for name in imports_of(path):
                allowed = name == "fhir.resources" or name.startswith(
                    ("fhir.resources.R4B", "fhir.resources.R5")
                )
                if name.startswith("fhir.resources") and not allowed:
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert bad == []
