"""Benchmark: how long a person waits for Pinpoint to start (not a test).

Run: ``.venv/bin/python tests/bench/startup.py [RUNS]`` (default 7). Side by side in one run, each
command as a whole process, the median and min-max of wall time:

- the environment's bare interpreter, ``python -c pass`` (the floor);
- ``pinpoint --help``;
- ``pinpoint evaluate <one vignette>``;
- ``pinpoint serve`` (SQLite, a fresh database each run) until ``/readyz`` answers 200.

Targets on the 2-core development machine, with bytecode compiled (``make install`` does):
``--help`` <= 0.3 s and <= 20 x the bare interpreter; ``evaluate`` <= 0.6 s; serve ready <= 2 s.
The machine's load average is printed with the figures: a loaded machine stretches them all.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.serving import PINPOINT, ROOT, clean_env, free_port

VIGNETTE = ROOT / "tests/fixtures/vignettes/v02-two-concordant-blocks/bundle.json"
TARGETS = {"pinpoint --help": 0.3, "pinpoint evaluate (one vignette)": 0.6, "pinpoint serve until ready": 2.0}


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=clean_env(), stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def serve_ready() -> float:
    """Start ``pinpoint serve`` on a fresh SQLite file; seconds until /readyz is 200; stop it."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = clean_env(PINPOINT_DATABASE_URL=f"sqlite:///{tmp}/pinpoint.db", PINPOINT_LOG_LEVEL="warning")
        started = time.perf_counter()
        proc = subprocess.Popen(
            [str(PINPOINT), "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = started + 60
            while time.perf_counter() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        return time.perf_counter() - started
                except httpx.TransportError:
                    pass
                time.sleep(0.01)
            raise SystemExit("pinpoint serve did not become ready within 60 s")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    cases: dict[str, Callable[[], float]] = {
        "python -c pass (bare interpreter)": lambda: timed([sys.executable, "-c", "pass"]),
        "pinpoint --help": lambda: timed([str(PINPOINT), "--help"]),
        "pinpoint evaluate (one vignette)": lambda: timed(
            [str(PINPOINT), "evaluate", str(VIGNETTE), "--now", "2025-06-01"]
        ),
        "pinpoint serve until ready": serve_ready,
    }
    for case in cases.values():  # warm-up: page cache, bytecode
        case()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):  # interleaved, so drift in the machine's speed hits every case alike
        for name, case in cases.items():
            times[name].append(case())
    bare = statistics.median(times["python -c pass (bare interpreter)"])
    print(f"start-up, {runs} runs each, interleaved; load average {os.getloadavg()[0]:.2f}")
    print(f"{'command':<36} {'median':>8} {'min':>8} {'max':>8} {'x bare':>8} {'target':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        target = TARGETS.get(name)
        print(
            f"{name:<36} {median:>7.3f}s {min(values):>7.3f}s {max(values):>7.3f}s "
            f"{median / bare:>8.1f} {f'{target:.1f}s' if target else '':>8}"
        )


if __name__ == "__main__":
    main()
