"""Subscription notification benchmark (issue 6 §8): ack latency at a fixed rate.

One ``pinpoint serve --role ingest`` process on PostgreSQL (a fresh database); a loopback load
generator (this process, open loop: request i is due at t0 + i/rate whatever the answers) sends
single-resource notifications over keep-alive connections and measures the time from each
request's due time to its 2xx. ``--client raw`` (default) is a minimal HTTP/1.1 client on asyncio
streams; ``--client httpx`` costs several times more CPU, which on a 2-CPU machine competes with
the server being measured.

    .venv/bin/python tests/bench/notify.py [--rate 200] [--seconds 20] [--shape hapi|medplum|backport]
                                          [--client raw|httpx] [--connections 32]
                                          [--pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Shapes: ``hapi`` = ``PUT /sources/hosp/fhir/Observation/{id}`` (classic rest-hook, stored before
the answer); ``medplum`` = ``POST /sources/hosp/fhir`` with ``X-Medplum-*`` headers and an
``X-Signature`` HMAC; ``backport`` = a Backport R4 ``history`` Bundle with one full resource and an
event number. Target: p99 <= 20 ms at 200 notifications/s. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TOKEN = "bench-token"
SECRET = "bench-secret"


from tests.bench._pg import admin as _admin  # noqa: E402
from tests.bench._pg import fresh_db as _fresh_db  # noqa: E402
from tests.serving import cpu_seconds, free_port  # noqa: E402


def _summary(
    latencies: list[float],
    errors: dict[str, int],
    total: int,
    measured_from: int,
    done_at: list[float],
    window_start: float,
) -> dict[str, Any]:
    """Latency percentiles and the achieved rate over the measured window (after warm-up)."""
    latencies = sorted(latencies)

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")
        )

    return {
        "total": total,
        "sent": total - measured_from,
        "ok": len(latencies),
        "errors": errors,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
        "achieved_per_s": len(latencies) / (max(done_at) - window_start) if done_at else 0.0,
    }


def observation(i: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"obs-{i}",
        "meta": {"versionId": "1", "lastUpdated": "2025-02-03T10:00:00Z"},
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
        "subject": {"reference": f"Patient/p{i % 500}"},
        "effectiveDateTime": "2025-02-03T10:00:00Z",
        "valueInteger": i % 11,
    }


def request_for(shape: str, i: int) -> tuple[str, str, bytes, dict[str, str]]:
    import orjson

    headers = {"Content-Type": "application/fhir+json"}
    resource = observation(i)
    if shape == "hapi":
        headers["Authorization"] = f"Bearer {TOKEN}"
        return "PUT", f"/sources/hosp/fhir/Observation/obs-{i}", orjson.dumps(resource), headers
    if shape == "medplum":
        body = orjson.dumps(resource)
        headers.update(
            {
                "X-Medplum-Subscription": "bench-sub",
                "X-Medplum-Interaction": "create",
                "X-Signature": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
            }
        )
        return "POST", "/sources/medplum/fhir", body, headers
    headers["Authorization"] = f"Bearer {TOKEN}"
    status = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": "Subscription/bench"}},
            {"name": "status", "valueCode": "active"},
            {"name": "type", "valueCode": "event-notification"},
            {"name": "events-since-subscription-start", "valueString": str(i + 1)},
            {
                "name": "notification-event",
                "part": [
                    {"name": "event-number", "valueString": str(i + 1)},
                    {"name": "focus", "valueReference": {"reference": f"Observation/obs-{i}"}},
                ],
            },
        ],
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {"resource": status, "request": {"method": "GET", "url": "Subscription/bench/$status"}},
            {
                "fullUrl": f"Observation/obs-{i}",
                "resource": resource,
                "request": {"method": "PUT", "url": f"Observation/obs-{i}"},
            },
        ],
    }
    return "POST", "/sources/hosp/fhir", orjson.dumps(bundle), headers


async def load(base: str, shape: str, rate: float, seconds: float, warmup: float) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10.0) as http:
        latencies: list[float] = []
        errors: dict[str, int] = {}
        total = int((warmup + seconds) * rate)
        measured_from = int(warmup * rate)
        done_at: list[float] = []

        async def one(i: int, when: float) -> None:
            method, path, body, headers = request_for(shape, i)
            delay = when - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            start = time.perf_counter()
            try:
                r = await http.request(method, path, content=body, headers=headers)
                ok = r.is_success
                key = str(r.status_code)
            except httpx.HTTPError as exc:
                ok, key = False, type(exc).__name__
            end = time.perf_counter()
            if i >= measured_from:
                if ok:
                    latencies.append(end - start)
                    done_at.append(end)
                else:
                    errors[key] = errors.get(key, 0) + 1

        t0 = time.perf_counter() + 0.2
        tasks = [asyncio.create_task(one(i, t0 + i / rate)) for i in range(total)]
        await asyncio.gather(*tasks)
    return _summary(latencies, errors, total, measured_from, done_at, t0 + warmup)


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def load_raw(
    host: str, port: int, shape: str, rate: float, seconds: float, warmup: float, connections: int
) -> dict[str, Any]:
    """The same open-loop load with a minimal HTTP/1.1 keep-alive client on asyncio streams (a
    fraction of httpx's CPU, which matters on a small machine). Latency counts from the moment
    the request was due, so queueing in the generator is not hidden."""
    total = int((warmup + seconds) * rate)
    measured_from = int(warmup * rate)
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    latencies: list[float] = []
    done_at: list[float] = []
    errors: dict[str, int] = {}

    def raw_request(i: int) -> bytes:
        method, path, body, headers = request_for(shape, i)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (item := await queue.get()) is not None:
                i, due = item
                writer.write(raw_request(i))
                try:
                    status = await _read_response(reader)
                    key = str(status)
                    ok = 200 <= status < 300
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    ok, key = False, type(exc).__name__
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                end = time.perf_counter()
                if i >= measured_from:
                    if ok:
                        latencies.append(end - due)
                        done_at.append(end)
                    else:
                        errors[key] = errors.get(key, 0) + 1
        finally:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    t0 = time.perf_counter() + 0.5
    for i in range(total):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((i, due))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return _summary(latencies, errors, total, measured_from, done_at, t0 + warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pg",
        default=os.environ.get(
            "PINPOINT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--shape", choices=["hapi", "medplum", "backport"], default="hapi")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw", help="load generator client")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()

    name, url = _fresh_db(args.pg)
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="pinpoint-bench-"))
    config = workdir / "pinpoint.yaml"
    config.write_text(
        "sources:\n"
        f"  - {{id: hosp, inbound: {{bearer: {TOKEN}}}}}\n"
        f"  - {{id: medplum, inbound: {{hmac_secret: {SECRET}, header: X-Signature}}}}\n"
    )
    env = {
        **os.environ,
        "PINPOINT_DATABASE_URL": url,
        "PINPOINT_CONFIG_FILE": str(config),
        "PINPOINT_LOG_LEVEL": "warning",
        "PINPOINT_LOG_FORMAT": "json",
    }
    exe = str(ROOT / ".venv" / "bin" / "pinpoint")
    server = subprocess.Popen(
        [exe, "serve", "--role", "ingest", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(200):
            try:
                if httpx.get(base + "/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("the server did not become ready")
        cpu_before = cpu_seconds(server.pid)
        if args.client == "raw":
            run = load_raw(
                "127.0.0.1", port, args.shape, args.rate, args.seconds, args.warmup, args.connections
            )
        else:
            run = load(base, args.shape, args.rate, args.seconds, args.warmup)
        result = asyncio.run(run)
        server_cpu = cpu_seconds(server.pid) - cpu_before
        result["server_cpu_ms"] = server_cpu * 1000 / result["total"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        _admin(args.pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(
        f"client={args.client} shape={args.shape} rate={args.rate:.0f}/s for {args.seconds:.0f}s "
        f"(after {args.warmup:.0f}s warm-up), cpus={os.cpu_count()}"
    )
    print(
        f"ack latency p50={result['p50_ms']:.1f} ms p99={result['p99_ms']:.1f} ms "
        f"max={result['max_ms']:.1f} ms "
        f"mean={result['mean_ms']:.1f} ms; achieved {result['achieved_per_s']:.0f}/s; "
        f"ok {result['ok']}/{result['sent']}; errors {result['errors'] or 'none'}"
    )
    print(
        f"server process CPU {result['server_cpu_ms']:.2f} ms per notification; "
        f"1-min load average at the end {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (shared machine)"
    )
    ok = result["p99_ms"] <= 20 and result["achieved_per_s"] >= 0.95 * args.rate and not result["errors"]
    print("target p99 <= 20 ms at 200/s:", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
