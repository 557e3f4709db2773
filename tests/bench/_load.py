"""Load for the serving benchmarks: wrk at saturation, a paced open-loop driver, a bare no-op server.

- :func:`wrk` runs Debian's ``wrk`` (a native closed-loop generator: each connection sends as soon
  as its previous answer arrives) with a Lua script that builds each request from a template
  (``{i}`` → a per-request counter, ``{n}`` → counter + 1), and returns throughput, p50/p99 and
  the CPU the generator itself used.
- :func:`paced` is an open-loop generator (Debian has no ``wrk2``): request ``i`` is due at
  ``t0 + i / rate`` whatever the answers; it goes out on an idle keep-alive connection (or waits
  for one) and its latency counts from its due time, so a server that falls behind is charged for
  the backlog (no coordinated omission). The report says whether the driver kept its schedule.
- :func:`noop_server` starts a bare FastAPI app (reads the body, answers ``{"cards": []}``) under
  uvicorn: the ceiling the same machine, framework and generator allow, measured in the same run.
- :func:`measure` wraps a load run with the server's CPU (``/proc/<pid>/stat``) and the load
  average.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request  # module level: the no-op's annotations must resolve

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.serving import clean_env, cpu_seconds, free_port, run_pinpoint, wait_up  # noqa: E402

WRK_MISSING = "wrk (the HTTP load generator) is not installed; on Debian/Ubuntu: sudo apt-get install -y wrk"


def require_wrk() -> str:
    exe = shutil.which("wrk")
    if exe is None:
        raise SystemExit(WRK_MISSING)
    return exe


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


@dataclass(frozen=True)
class Template:
    """One HTTP request; ``{i}`` in the path or body becomes a per-request counter, ``{n}`` i + 1."""

    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    first: int = 0  # the counter's first value (a later run continues where an earlier stopped)
    #: Request i sends ``bodies[i % len(bodies)]`` instead of ``body`` (many distinct patients).
    bodies: tuple[bytes, ...] = ()
    #: Request i carries ``Authorization: Bearer tokens[i % len(tokens)]`` (each a one-use JWT:
    #: give at least as many as the run sends, or the repeats are refused as replays).
    tokens: tuple[str, ...] = ()

    def substitutes(self) -> bool:
        return any(t in s for s in (self.path, self.body.decode("latin-1")) for t in ("{i}", "{n}"))

    def varies(self) -> bool:
        return bool(self.bodies or self.tokens) or self.substitutes()

    def render(self, i: int) -> bytes:
        i += self.first
        path, body = self.path, self.body
        if self.bodies:
            body = self.bodies[i % len(self.bodies)]
        if self.substitutes():
            path = path.replace("{i}", str(i)).replace("{n}", str(i + 1))
            body = body.replace(b"{i}", str(i).encode()).replace(b"{n}", str(i + 1).encode())
        head = [f"{self.method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in self.headers.items()]
        if self.tokens:
            head.append(f"Authorization: Bearer {self.tokens[i % len(self.tokens)]}")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Run:
    """One load run against one server."""

    label: str
    seconds: float
    ok: int
    errors: int
    p50_ms: float
    p99_ms: float
    server_cpu_ms: float = float("nan")  # per successful call
    server_busy: float = float("nan")  # server CPU seconds / wall seconds (1.0 = one core)
    generator_busy: float = float("nan")  # generator CPU seconds / wall seconds
    offered: float | None = None  # paced: the scheduled rate
    late_sends: float = 0.0  # paced: share of requests sent > 1 ms after their due time
    loadavg: str = ""

    @property
    def rps(self) -> float:
        return self.ok / self.seconds

    def line(self) -> str:
        offered = f" of {self.offered:.0f} offered" if self.offered else ""
        return (
            f"{self.label:24s} {self.rps:7.0f} req/s{offered}"
            f"  p50 {self.p50_ms:6.1f} ms  p99 {self.p99_ms:6.1f} ms"
            f"  server CPU {self.server_cpu_ms:5.2f} ms/call ({self.server_busy:4.0%} of a core)"
            f"  generator {self.generator_busy:4.0%} of a core  ({self.ok} ok, {self.errors} errors)"
        )


# ----------------------------------------------------------------------------- wrk (closed loop)

_LUA = r"""
local template = {method = %(method)s, path = %(path)s, body = %(body)s, headers = {%(headers)s}}
local varies = %(varies)s
local substitutes = %(substitutes)s
local bodies = {%(bodies)s}
local tokens = {%(tokens)s}
local counter = 0
local step = 1
local threads = {}
errors = 0  -- a global: done() reads each thread's with thread:get (a local would read as nil)

function setup(thread)
  thread:set("offset", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = (tonumber(offset) or 0) + %(first)d
  step = %(threads)d
  if not varies then
    req = wrk.format(template.method, template.path, template.headers, template.body)
  end
end

function request()
  if not varies then return req end
  local i = counter
  counter = counter + step
  local path, body, headers = template.path, template.body, template.headers
  if #bodies > 0 then body = bodies[(i %% #bodies) + 1] end
  if #tokens > 0 then headers["Authorization"] = "Bearer " .. tokens[(i %% #tokens) + 1] end
  if substitutes then
    local n = tostring(i + 1)
    local s = tostring(i)
    path = path:gsub("{i}", s):gsub("{n}", n)
    body = body:gsub("{i}", s):gsub("{n}", n)
  end
  return wrk.format(template.method, path, headers, body)
end

function response(status, headers, body)
  if status < 200 or status > 299 then errors = errors + 1 end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + (tonumber(t:get("errors")) or 0) end
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\": %%d, \"non2xx\": %%d, \"socket\": %%d, "
    .. "\"p50_us\": %%d, \"p99_us\": %%d, \"us\": %%d}\n",
    summary.requests, bad, e.connect + e.read + e.write + e.timeout, latency:percentile(50),
    latency:percentile(99), summary.duration))
end
"""


def _lua_str(b: bytes | str) -> str:
    s = b.decode("latin-1") if isinstance(b, bytes) else b
    return "[==[" + s + "]==]"


def wrk_script(t: Template, threads: int) -> str:
    headers = ", ".join(f"[ {_lua_str(k)} ] = {_lua_str(v)}" for k, v in t.headers.items())
    return _LUA % {
        "method": _lua_str(t.method),
        "path": _lua_str(t.path),
        "body": _lua_str(t.body),
        "headers": headers,
        "varies": "true" if t.varies() else "false",
        "substitutes": "true" if t.substitutes() else "false",
        "bodies": ",\n".join(_lua_str(b) for b in t.bodies),
        "tokens": ",\n".join(_lua_str(k) for k in t.tokens),
        "threads": threads,
        "first": t.first,
    }


def wrk(
    base: str, t: Template, seconds: float, *, connections: int = 32, threads: int = 1, label: str = ""
) -> Run:
    """``wrk`` for ``seconds`` at saturation; the generator's own CPU is read from /proc."""
    exe = require_wrk()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(wrk_script(t, threads))
    try:
        cmd = [
            exe,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            f.name,
        ]
        cmd.append(base)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.05)
        try:
            cpu0 = cpu_seconds(proc.pid)
        except FileNotFoundError:
            cpu0 = 0.0
        t0 = time.perf_counter()
        gen_cpu = 0.0
        # wrk's CPU is read just before it exits: /proc/<pid> exists until it is reaped.
        while proc.poll() is None and time.perf_counter() - t0 < seconds + 30:
            try:
                gen_cpu = cpu_seconds(proc.pid) - cpu0
            except (FileNotFoundError, ProcessLookupError, IndexError):
                break
            time.sleep(0.1)
        out, err = proc.communicate(timeout=60)
    finally:
        os.unlink(f.name)
    line = next((x for x in out.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {err.strip() or out.strip()}")
    r = json.loads(line[len("WRKJSON ") :])
    wall = r["us"] / 1e6
    errors = r["non2xx"] + r["socket"]
    return Run(
        label=label,
        seconds=wall,
        ok=r["requests"] - r["non2xx"],
        errors=errors,
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        generator_busy=gen_cpu / wall,
    )


# ----------------------------------------------------------------------------- paced (open loop)


async def _read_status(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    at = head.lower().find(b"content-length:")
    if at >= 0:
        end = head.find(b"\r\n", at)
        length = int(head[at + 15 : end])
        if length:
            await reader.readexactly(length)
    return status


async def _paced(
    port: int, t: Template, rate: float, seconds: float, warmup: float, connections: int, start_at: float
) -> dict[str, Any]:
    total = int((warmup + seconds) * rate)
    measured_from = int(warmup * rate)
    constant = None if t.varies() else t.render(0)
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    latencies: list[float] = []
    late = 0
    errors = 0
    finished: list[float] = []

    async def worker() -> None:
        nonlocal errors, late
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (item := await queue.get()) is not None:
                i, due = item
                sent = time.perf_counter()
                writer.write(constant or t.render(i))
                try:
                    ok = 200 <= await _read_status(reader) < 300
                except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                    ok = False
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                end = time.perf_counter()
                if i >= measured_from:
                    if sent - due > 0.001:
                        late += 1
                    if ok:
                        latencies.append(end - due)
                        finished.append(end)
                    else:
                        errors += 1
        finally:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    await asyncio.sleep(max(0.0, start_at - time.time()))
    t0 = time.perf_counter()
    for i in range(total):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((i, due))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return {
        "latencies": latencies,
        "errors": errors,
        "late": late,
        "sent": total - measured_from,
        "window": (t0 + warmup, max(finished, default=t0 + warmup)),
    }


def _paced_process(args: tuple[Any, ...], out: Any) -> None:
    import uvloop

    uvloop.install()
    out.put(asyncio.run(_paced(*args)))


def paced(
    port: int,
    t: Template,
    rate: float,
    seconds: float,
    *,
    warmup: float = 2.0,
    connections: int = 32,
    server_pid: int | None = None,
    label: str = "",
) -> Run:
    """Offer ``rate`` req/s on a fixed schedule (one generator process, uvloop)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    start_at = time.time() + 1.5  # the generator imports and connects first
    job = (port, t, rate, seconds, warmup, connections, start_at)
    proc = ctx.Process(target=_paced_process, args=(job, q))
    proc.start()
    time.sleep(max(0.0, start_at + warmup - time.time()))
    cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
    gen0 = cpu_seconds(proc.pid)
    w0 = time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - w0
    cpu = (cpu_seconds(server_pid) - cpu0) if server_pid else float("nan")
    gen = cpu_seconds(proc.pid) - gen0
    r = q.get(timeout=seconds + 120)
    proc.join(timeout=10)
    lat = sorted(r["latencies"])
    if not lat:
        raise SystemExit(f"paced load on port {port}: no successful request ({r['errors']} errors)")
    span = r["window"][1] - r["window"][0]
    return Run(
        label=label,
        seconds=span,
        ok=len(lat),
        errors=r["errors"],
        p50_ms=lat[len(lat) // 2] * 1000,
        p99_ms=lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        server_cpu_ms=cpu * 1000 / (min(rate, len(lat) / span) * wall),
        server_busy=cpu / wall,
        generator_busy=gen / wall,
        offered=rate,
        late_sends=r["late"] / max(1, r["sent"]),
        loadavg=loadavg(),
    )


# ----------------------------------------------------------------------------- measuring


def measure(server_pid: int, run: Callable[[], Run]) -> Run:
    """``run()`` with the server's CPU per successful call and the load average at the end."""
    cpu0 = cpu_seconds(server_pid)
    result = run()
    cpu = cpu_seconds(server_pid) - cpu0
    result.server_cpu_ms = cpu * 1000 / max(1, result.ok)
    result.server_busy = cpu / result.seconds
    result.loadavg = loadavg()
    return result


def generator_verdict(noop: Run) -> str:
    """Whether the no-op measured the server (one core busy) or the generator."""
    if noop.generator_busy >= 0.9:
        return (
            f"the generator SATURATES ({noop.generator_busy:.0%} of a core) before the no-op does"
            f" ({noop.server_busy:.0%}): ratios understate the gap"
        )
    if noop.server_busy >= 0.85:
        return (
            f"the no-op server is the bottleneck ({noop.server_busy:.0%} of a core), not the generator"
            f" ({noop.generator_busy:.0%}): the generator's rate exceeds the no-op's"
        )
    return (
        f"neither the no-op ({noop.server_busy:.0%} of a core) nor the generator ({noop.generator_busy:.0%})"
        " is saturated: the shared machine limits both"
    )


def paced_verdict(noop: Run) -> str:
    """Whether the driver paced the no-op at the offered rate: the no-op's latency (counted from
    the scheduled send, so it includes the driver's own lag) is the floor of every paced figure."""
    kept = noop.rps >= 0.97 * (noop.offered or 0)
    return (
        f"the driver {'kept' if kept else 'did NOT keep'} its schedule against the no-op"
        f" ({noop.rps:.0f} of {noop.offered:.0f} req/s; {noop.late_sends:.1%} sent > 1 ms late;"
        f" the no-op's p99 {noop.p99_ms:.1f} ms is the floor the driver and host add)"
    )


@contextmanager
def pinpoint_server(role: str, database_url: str, **settings: str) -> Iterator[tuple[int, int]]:
    """``pinpoint serve --role <role>`` on a free loopback port, JSON logs to /dev/null (as in
    production): ``(port, pid)``. ``settings`` are extra ``PINPOINT_*`` environment variables."""
    port = free_port()
    env = clean_env(
        **{
            "PINPOINT_DATABASE_URL": database_url,
            "PINPOINT_PORT": str(port),
            "PINPOINT_HOST": "127.0.0.1",
            "PINPOINT_LOG_FORMAT": "json",
            "PINPOINT_LOG_LEVEL": "warning",
            **settings,  # may override the log level
        }
    )
    with open(os.devnull, "wb") as devnull:
        proc = run_pinpoint("serve", "--role", role, env=env, log=devnull)
    try:
        wait_up(f"http://127.0.0.1:{port}", proc)
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def database(postgres: bool, source: Path | None = None) -> Iterator[str]:
    """A throw-away database URL: PostgreSQL (created at migration head, dropped after) or SQLite.
    ``source``: the source tree of an earlier commit whose server will use it (PostgreSQL: taken
    to that commit's head; SQLite: migrated by that server at its start)."""
    if not postgres:
        with tempfile.TemporaryDirectory(prefix="pinpoint-bench-") as tmp:
            yield f"sqlite:///{tmp}/bench.db"
        return
    from tests.bench._pg import at_head_of, drop_db, fresh_db

    name, url = fresh_db()
    if source is not None:
        at_head_of(source, url)
    try:
        yield url
    finally:
        drop_db(name)


def _noop_app() -> Any:
    app = FastAPI()

    async def answer(request: Request) -> dict[str, list[Any]]:
        await request.body()
        return {"cards": []}

    app.add_api_route("/{path:path}", answer, methods=["GET", "POST", "PUT"])
    return app


@contextmanager
def noop_server() -> Iterator[tuple[int, int]]:
    """A bare FastAPI app under uvicorn on a free loopback port: ``(port, pid)``."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "noop", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_up(f"http://127.0.0.1:{port}", proc, "/docs")
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__" and sys.argv[1:2] == ["noop"]:
    import uvicorn

    uvicorn.run(_noop_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
