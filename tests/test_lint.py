"""The tree stays formatted and lint-clean (ruff), and typed where strict typing is required."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "args", [["check", "."], ["format", "--check", "."]], ids=["ruff-check", "ruff-format"]
)
def test_ruff(args: list[str]) -> None:
    result = subprocess.run([str(BIN / "ruff"), *args], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    """Strict for shared/ and the engine (pyproject overrides), checked for the services too."""
    targets = ["shared", "services"]
    result = subprocess.run(
        [str(BIN / "mypy"), *targets], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:]
