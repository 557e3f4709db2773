"""Benchmark: how long a person waits for Pinpoint to start (not a test).

Run: ``.venv/bin/python tests/bench/startup.py [RUNS]`` (default 7). Side by side in one run, each
command as a whole process, the median and min-max of wall time and the median CPU time (user +
system, its child processes included), which a loaded machine stretches less:

- the environment's bare interpreter, ``python -c pass`` (the floor);
- ``pinpoint --help``;
- ``pinpoint evaluate <one vignette>``;
- ``pinpoint serve`` (SQLite, a fresh database each run) until ``/readyz`` answers 200;
- ``pinpoint import`` of a 5-line NDJSON file with ``--jobs 2`` (PostgreSQL, a throw-away
  database at head: all start-up, the lines themselves take milliseconds);
- ``pinpoint worker --once`` on an empty queue (the same database): the worker's start-up.

``--before REF`` (e.g. ``main``): the ``pinpoint`` commands of that commit too (its source,
``git archive``, bytecode compiled, on this environment; a database of its own at its head),
interleaved with these. ``--no-postgres``: without the last two.

Targets on the 2-core development machine, with bytecode compiled (``make install`` does):
``--help`` <= 0.3 s and <= 20 x the bare interpreter; ``evaluate`` <= 0.6 s; serve ready <= 2 s.
The machine's load average is printed with the figures: a loaded machine stretches them all.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench._load import loadavg
from tests.serving import PINPOINT, ROOT, clean_env, free_port

VIGNETTE = ROOT / "tests/fixtures/vignettes/v02-two-concordant-blocks/bundle.json"
TARGETS = {"pinpoint --help": 0.3, "pinpoint evaluate (one vignette)": 0.6, "pinpoint serve until ready": 2.0}


#: (wall seconds, CPU seconds) of one run
Run = tuple[float, float]


def _children_cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def timed(command: list[str], src: Path | None = None, **settings: str) -> Run:
    env = clean_env(**settings, **({"PYTHONPATH": str(src)} if src else {}))
    cpu = _children_cpu()
    started = time.perf_counter()
    subprocess.run(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
    )
    return time.perf_counter() - started, _children_cpu() - cpu


def serve_ready(src: Path | None = None) -> Run:
    """Start ``pinpoint serve`` on a fresh SQLite file; seconds until /readyz is 200; stop it (the
    CPU time is the whole process's, its stop included)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = clean_env(PINPOINT_DATABASE_URL=f"sqlite:///{tmp}/pinpoint.db", PINPOINT_LOG_LEVEL="warning")
        if src:
            env["PYTHONPATH"] = str(src)
        cpu = _children_cpu()
        started = time.perf_counter()
        proc = subprocess.Popen(
            [str(PINPOINT), "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ready = 0.0
        try:
            deadline = started + 60
            while time.perf_counter() < deadline and not ready:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        ready = time.perf_counter() - started
                except httpx.TransportError:
                    time.sleep(0.01)
            if not ready:
                raise SystemExit("pinpoint serve did not become ready within 60 s")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        return ready, _children_cpu() - cpu


def five_lines(folder: Path) -> Path:
    """A 5-line Synthea-shaped NDJSON file: a patient, a condition, a procedure, an observation
    and a claim (the backfill benchmark's generator)."""
    from tests.bench.backfill import write_export

    export = folder / "export"
    export.mkdir()
    write_export(export, 1)
    lines = [(export / f"{t}.ndjson").read_bytes().split(b"\n", 1)[0] + b"\n" for t in FIVE_TYPES]
    path = folder / "five.ndjson"
    path.write_bytes(b"".join(lines))
    return path


FIVE_TYPES = ("Patient", "Condition", "Procedure", "Observation", "Claim")


def source_of(ref: str, into: Path) -> Path:
    """The source tree of git ``ref`` under ``into``, bytecode compiled as ``make install`` does."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(into / "services"), str(into / "shared")], check=True
    )
    return into


def alternate(
    script: str, n: int, before: str, rounds: int, this: str = "this tree"
) -> Iterator[tuple[str, str]]:
    """``script N --tree SRC`` over git ``before``'s source and this tree's, alternately,
    ``rounds`` times each, every run a fresh process: each run's (label, output) as it ends (the
    in-process benchmarks' ``--before``; the script itself runs from this tree, over the older
    source, so it may import only what that source has once ``--tree`` is on its path)."""
    with tempfile.TemporaryDirectory(prefix="pinpoint-before-") as tmp:
        sides = [(before, source_of(before, Path(tmp))), (this, ROOT)]
        for _ in range(rounds):
            for label, src in sides:
                run = [sys.executable, script, str(n), "--tree", str(src)]
                yield label, subprocess.run(run, cwd=src, capture_output=True, text=True, check=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("runs", nargs="?", type=int, default=7)
    parser.add_argument("--before", metavar="REF", help="also time the commands of git REF, interleaved")
    parser.add_argument("--no-postgres", action="store_true", help="without the import and worker cases")
    args = parser.parse_args()
    runs = args.runs
    cases: dict[str, Callable[[], Run]] = {
        "python -c pass (bare interpreter)": lambda: timed([sys.executable, "-c", "pass"]),
    }
    tmp = tempfile.TemporaryDirectory(prefix="pinpoint-startup-")
    sources: list[tuple[str, Path | None]] = [("", None)]
    if args.before:
        into = Path(tmp.name) / "before"
        into.mkdir()
        sources.insert(0, (f" [{args.before}]", source_of(args.before, into)))
    databases: list[str] = []
    five = None if args.no_postgres else five_lines(Path(tmp.name))
    try:
        for label, src in sources:
            cases[f"pinpoint --help{label}"] = lambda src=src: timed([str(PINPOINT), "--help"], src)
            cases[f"pinpoint evaluate (one vignette){label}"] = lambda src=src: timed(
                [str(PINPOINT), "evaluate", str(VIGNETTE), "--now", "2025-06-01"], src
            )
            cases[f"pinpoint serve until ready{label}"] = lambda src=src: serve_ready(src)
            if five is None:
                continue
            from tests.bench._pg import at_head_of, fresh_db

            name, url = fresh_db()
            databases.append(name)
            if src is not None:
                at_head_of(src, url)
            db = {"PINPOINT_DATABASE_URL": url, "PINPOINT_LOG_LEVEL": "warning"}
            cases[f"pinpoint import (5 lines, --jobs 2){label}"] = lambda src=src, db=db: timed(
                [str(PINPOINT), "import", str(five), "--jobs", "2"], src, **db
            )
            cases[f"pinpoint worker --once (empty queue){label}"] = lambda src=src, db=db: timed(
                [str(PINPOINT), "worker", "--once"], src, **db
            )
        for case in cases.values():  # warm-up: page cache, bytecode
            case()
        runs_of: dict[str, list[Run]] = {name: [] for name in cases}
        for _ in range(runs):  # interleaved, so drift in the machine's speed hits every case alike
            for name, case in cases.items():
                runs_of[name].append(case())
    finally:
        if databases:
            from tests.bench._pg import drop_db

            for name in databases:
                drop_db(name)
        tmp.cleanup()
    bare = statistics.median(wall for wall, _ in runs_of["python -c pass (bare interpreter)"])
    print(f"start-up, {runs} runs each, interleaved; /proc/loadavg {loadavg()}")
    print(f"{'command':<48} {'median':>8} {'min':>8} {'max':>8} {'x bare':>7} {'CPU':>8} {'target':>7}")
    for name, values in runs_of.items():
        walls = [wall for wall, _ in values]
        median = statistics.median(walls)
        cpu = statistics.median(c for _, c in values)
        target = TARGETS.get(name) if "[" not in name else None
        print(
            f"{name:<48} {median:>7.3f}s {min(walls):>7.3f}s {max(walls):>7.3f}s "
            f"{median / bare:>7.1f} {cpu:>7.3f}s {f'{target:.1f}s' if target else '':>7}"
        )


if __name__ == "__main__":
    main()
