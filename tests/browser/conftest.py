"""The ``chromium`` fixture: Debian's headless Chromium, installed when absent.

Chromium is installed with ``apt-get install -y chromium`` when absent and the test runs as root;
otherwise the test is skipped with the reason — except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import IN_CI


def _find() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"headless Chromium is required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> str:
    found = _find()
    if found:
        return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        _unavailable("chromium is not installed and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:  # stale package lists: refresh once and retry
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300, check=False)
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    found = _find()
    if result.returncode != 0 or found is None:
        _unavailable(f"apt-get install chromium failed: {result.stderr[-500:]}")
    assert found is not None
    return found
