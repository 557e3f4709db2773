"""Benchmark: how long a person waits for Pinpoint to start (not a test).

Run: ``.venv/bin/python tests/bench/startup.py [RUNS]`` (default 7). Side by side in one run, each
command as a whole process, the median and min-max of wall time:

- the environment's bare interpreter, ``python -c pass`` (the floor);
- ``pinpoint --help``;
- ``pinpoint evaluate <one vignette>``;
- ``pinpoint serve`` (SQLite, a fresh database each run) until ``/readyz`` answers 200.

``--before REF`` (e.g. ``main``): the three ``pinpoint`` commands of that commit too (its source,
``git archive``, bytecode compiled, on this environment), interleaved with these.

Targets on the 2-core development machine, with bytecode compiled (``make install`` does):
``--help`` <= 0.3 s and <= 20 x the bare interpreter; ``evaluate`` <= 0.6 s; serve ready <= 2 s.
The machine's load average is printed with the figures: a loaded machine stretches them all.
"""

from __future__ import annotations

import argparse
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


def timed(command: list[str], src: Path | None = None) -> float:
    env = clean_env(**({"PYTHONPATH": str(src)} if src else {}))
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def serve_ready(src: Path | None = None) -> float:
    """Start ``pinpoint serve`` on a fresh SQLite file; seconds until /readyz is 200; stop it."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = clean_env(PINPOINT_DATABASE_URL=f"sqlite:///{tmp}/pinpoint.db", PINPOINT_LOG_LEVEL="warning")
        if src:
            env["PYTHONPATH"] = str(src)
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


def source_of(ref: str, into: Path) -> Path:
    """The source tree of git ``ref`` under ``into``, bytecode compiled as ``make install`` does."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(into / "services"), str(into / "shared")], check=True
    )
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("runs", nargs="?", type=int, default=7)
    parser.add_argument("--before", metavar="REF", help="also time the commands of git REF, interleaved")
    args = parser.parse_args()
    runs = args.runs
    cases: dict[str, Callable[[], float]] = {
        "python -c pass (bare interpreter)": lambda: timed([sys.executable, "-c", "pass"]),
    }
    tmp = tempfile.TemporaryDirectory(prefix="pinpoint-startup-")
    sources: list[tuple[str, Path | None]] = [("", None)]
    if args.before:
        sources.insert(0, (f" [{args.before}]", source_of(args.before, Path(tmp.name))))
    for label, src in sources:
        cases[f"pinpoint --help{label}"] = lambda src=src: timed([str(PINPOINT), "--help"], src)
        cases[f"pinpoint evaluate (one vignette){label}"] = lambda src=src: timed(
            [str(PINPOINT), "evaluate", str(VIGNETTE), "--now", "2025-06-01"], src
        )
        cases[f"pinpoint serve until ready{label}"] = lambda src=src: serve_ready(src)
    for case in cases.values():  # warm-up: page cache, bytecode
        case()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):  # interleaved, so drift in the machine's speed hits every case alike
        for name, case in cases.items():
            times[name].append(case())
    bare = statistics.median(times["python -c pass (bare interpreter)"])
    tmp.cleanup()
    print(f"start-up, {runs} runs each, interleaved; load average {os.getloadavg()[0]:.2f}")
    print(f"{'command':<44} {'median':>8} {'min':>8} {'max':>8} {'x bare':>8} {'target':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        target = TARGETS.get(name) if "[" not in name else None
        print(
            f"{name:<44} {median:>7.3f}s {min(values):>7.3f}s {max(values):>7.3f}s "
            f"{median / bare:>8.1f} {f'{target:.1f}s' if target else '':>8}"
        )


if __name__ == "__main__":
    main()
