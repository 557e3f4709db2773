"""The README's "Quick start" run as written: every command of its shell blocks in a shell at the
repository root, ``make run`` as the server it starts, then every link it asks to open.

The one change is the port: the README's 8765 becomes a free port (so parallel runs and a
developer's own server do not collide) — still not 8080, the default the quick start avoids.
The database goes to a fresh ``XDG_DATA_HOME``, the user data folder the README names.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serving import ROOT, clean_env, free_port

README_PORT = "8765"


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Quick start\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert match, "README has no 'Quick start' section"
    return match.group(1)


def _commands(section: str) -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _links(section: str) -> list[str]:
    prose = re.sub(r"```.*?```", "", section, flags=re.S)
    return re.findall(r"http://127\.0\.0\.1:\d+/\S*", prose)


def test_the_section_is_what_this_test_expects() -> None:
    """The parser sees the quick start's steps (a test that could pass on an empty section fails)."""
    section = _section()
    commands = _commands(section)
    assert any(c.startswith(".venv/bin/pinpoint evaluate examples/") and "--now" in c for c in commands)
    assert sum(c.startswith("make run PORT=") for c in commands) == 1
    assert any(c.startswith("curl -X POST") for c in commands)
    assert {link.split("?")[0].rsplit(":", 1)[1].split("/", 1)[1] for link in _links(section)} >= {
        "patients/example-facet-rfa/evidence",
        "patients",
        "docs",
    }
    assert README_PORT in section and "8080" not in "".join(commands)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return clean_env(XDG_DATA_HOME=str(tmp_path / "data"))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop ``make run`` and the server it started (its own process group, started here)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def port() -> Iterator[str]:
    chosen = str(free_port())
    assert chosen != "8080"
    yield chosen


def test_quick_start_as_written(env: dict[str, str], port: str, tmp_path: Path) -> None:
    section = _section()
    server: subprocess.Popen[bytes] | None = None
    log_path = tmp_path / "make-run.log"
    try:
        for command in _commands(section):
            command = command.replace(README_PORT, port)
            if command.startswith("make run"):
                with log_path.open("wb") as log:
                    server = subprocess.Popen(
                        ["bash", "-c", command],
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                deadline = time.monotonic() + 120
                while f"ready on port {port}" not in log_path.read_text():
                    assert server.poll() is None, log_path.read_text()[-3000:]
                    assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                    time.sleep(0.2)
                startup = log_path.read_text()
                assert str(tmp_path / "data" / "pinpoint" / "pinpoint.db") in startup
                assert f"http://127.0.0.1:{port}/patients" in startup
                continue
            result = subprocess.run(
                ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
            )
            assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            if "pinpoint evaluate" in command:
                assert "criteria met" in result.stdout and "Patient/example-facet-rfa" in result.stdout
            if command.startswith("curl"):
                assert '"transaction-response"' in result.stdout, result.stdout[-2000:]
        assert server is not None
        links = [link.replace(README_PORT, port) for link in _links(section)]
        deadline = time.monotonic() + 60
        evidence = links[0]
        assert "/evidence" in evidence
        # the in-process worker judges the posted patient within a poll interval or two
        while "On record: CarePlan/" not in (page := httpx.get(evidence, timeout=30)).text:
            assert time.monotonic() < deadline, page.text[-2000:]
            time.sleep(0.5)
        for link in links:
            page = httpx.get(link, timeout=30)
            assert page.status_code == 200, (link, page.text[-1000:])
            assert page.headers["content-type"].startswith("text/html")
        assert "Lindqvist" in httpx.get(links[1], timeout=30).text  # the worklist names the patient
    finally:
        if server is not None:
            _stop(server)
