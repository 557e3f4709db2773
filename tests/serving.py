"""`pinpoint` as a real process on loopback, for the tests that need a real server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import pytest
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
PINPOINT = Path(sys.executable).parent / "pinpoint"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): a server's own cost under load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_up(base: str, proc: subprocess.Popen[bytes], path: str = "/livez", seconds: float = 30) -> None:
    """Wait (bounded) until ``base + path`` answers; raises RuntimeError if the process exits or
    the time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            httpx.get(f"{base}{path}", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not answer {path} within {seconds:.0f} s")


def clean_env(**settings: str) -> dict[str, str]:
    """The process environment without the developer's PINPOINT_ variables, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINPOINT_")}
    env.update(settings)
    return env


def run_pinpoint(*args: str, env: Mapping[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(PINPOINT), *args], cwd=ROOT, env=dict(env), stdout=log, stderr=log)


@contextmanager
def serving(*args: str, env: Mapping[str, str], base: str, log_path: Path) -> Iterator[str]:
    """``pinpoint <args>`` (a serve command) until the block ends; waits (bounded) for /livez."""
    with log_path.open("ab") as log:
        proc = run_pinpoint(*args, env=env, log=log)
        try:
            try:
                wait_up(base, proc)
            except RuntimeError as exc:
                pytest.fail(f"{exc}: " + log_path.read_text()[-2000:])
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextmanager
def serve_app(app: object, *, port: int = 0, startup_timeout: float = 30.0) -> Iterator[str]:
    """An ASGI app (e.g. ``build_app(...)`` with a seam replaced) served by uvicorn on 127.0.0.1
    in a background thread, lifespan included (background tasks, graceful stop); yields its
    origin. For tests that need a real loopback server *and* an in-process seam (the clock)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="on",
        loop="asyncio",
        http="h11",
        ws="none",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"pinpoint-{port}", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("pinpoint did not start in its thread")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=startup_timeout)
        sock.close()


#: The push credential of the default source (``/fhir``) in :func:`push_config`: once API tokens
#: are configured, writes need their source's credential.
PUSH_TOKEN = "pusher"
PUSH_HEADERS = {"content-type": "application/fhir+json", "authorization": f"Bearer {PUSH_TOKEN}"}


def push_config(folder: Path) -> str:
    """A config file giving ``/fhir`` (source ``default``) the push credential; its path."""
    path = folder / "pinpoint-push.yaml"
    path.write_text('sources: [{id: default, inbound: {bearer: "' + PUSH_TOKEN + '"}}]\n')
    return str(path)
