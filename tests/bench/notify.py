"""Subscription notification benchmark (issue 21): ack latency at a fixed rate, and throughput.

One ``pinpoint serve --role ingest`` process on a throw-away PostgreSQL database, and a bare
FastAPI no-op measured in the same run. For each shape:

- paced, open loop (tests/bench/_load.py ``paced``: request i is due at t0 + i/rate whatever the
  answers; latency from the due time), first against the no-op (the driver keeps the schedule?)
  then against Pinpoint: p50/p99 and the server's CPU per notification;
- at saturation with ``wrk`` (requires Debian's ``wrk`` package): notifications/s beside the
  no-op's. For ``backport`` every notification belongs to ONE subscription, numbered consecutively
  (wrk's Lua script counts ``{n}`` per request): the rate one subscription can be booked at.

    .venv/bin/python tests/bench/notify.py [--rate 200] [--seconds 20] [--shape hapi|medplum|backport|all]
                                          [--connections 32] [--paths] [--before REV]

Shapes: ``hapi`` = ``PUT /sources/hosp/fhir/Observation/{id}`` (classic rest-hook, stored before
the answer); ``medplum`` = ``POST /sources/medplum/fhir`` with ``X-Medplum-*`` headers and an
``X-Signature`` HMAC (one signed body, so repeats of one resource); ``backport`` = a Backport R4
``history`` Bundle with one full resource and an event number. Targets: p99 <= 20 ms at
200 notifications/s, server CPU <= 1.5 ms per notification, Backport >= 500/s of one subscription.
``--before REV`` (e.g. ``main``): the server of that commit too (its source from ``git archive``,
run with this environment's packages, its own database), measured alternately with this one
shape by shape (before, then this branch): CPU per notification comparable under the same load.
``--warm SECONDS`` (default 6): before any server of a shape is measured, every server gets that
long of the same paced load (its first requests pay one-off costs: first-use validators, the
pool's connections, psycopg's prepared statements; measured first, the before server paid them
in its window, the other did not).
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench._load import (  # noqa: E402
    Run,
    Template,
    database,
    generator_verdict,
    loadavg,
    measure,
    noop_server,
    paced,
    paced_verdict,
    pinpoint_server,
    require_wrk,
    wrk,
)

TOKEN = "bench-token"
SECRET = "bench-secret"


def observation(i: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"obs-{i}",
        "meta": {"versionId": "1", "lastUpdated": "2025-02-03T10:00:00Z"},
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
        "subject": {"reference": f"Patient/p{i}"},
        "effectiveDateTime": "2025-02-03T10:00:00Z",
        "valueInteger": 5,
    }


def template(shape: str) -> Template:
    """The shape's request; ``{i}`` / ``{n}`` become a counter / counter + 1 per request."""
    headers = {"Content-Type": "application/fhir+json"}
    if shape == "hapi":
        headers["Authorization"] = f"Bearer {TOKEN}"
        return Template(
            "PUT", "/sources/hosp/fhir/Observation/obs-{i}", orjson.dumps(observation("{i}")), headers
        )
    if shape == "medplum":
        body = orjson.dumps(observation("1"))
        headers.update(
            {
                "X-Medplum-Subscription": "bench-sub",
                "X-Medplum-Interaction": "create",
                "X-Signature": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
            }
        )
        return Template("POST", "/sources/medplum/fhir", body, headers)
    headers["Authorization"] = f"Bearer {TOKEN}"
    status = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": "Subscription/bench"}},
            {"name": "status", "valueCode": "active"},
            {"name": "type", "valueCode": "event-notification"},
            {"name": "events-since-subscription-start", "valueString": "{n}"},
            {
                "name": "notification-event",
                "part": [
                    {"name": "event-number", "valueString": "{n}"},
                    {"name": "focus", "valueReference": {"reference": "Observation/obs-{i}"}},
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
                "fullUrl": "Observation/obs-{i}",
                "resource": observation("{i}"),
                "request": {"method": "PUT", "url": "Observation/obs-{i}"},
            },
        ],
    }
    return Template("POST", "/sources/hosp/fhir", orjson.dumps(bundle), headers)


def paths(seconds: float, connections: int) -> None:
    """Server CPU per request along a HAPI PUT's path, each at saturation with wrk: the bare
    no-op; ``/livez`` (framework and middleware); a PUT refused for its token after its body is
    read (routing, dependencies, body, credential); one refused for its type (the thread hop, a
    parse and a one-row transaction: the dead letter); a stored PUT."""
    config = Path(tempfile.mkdtemp(prefix="pinpoint-bench-")) / "pinpoint.yaml"
    config.write_text(f"sources:\n  - {{id: hosp, inbound: {{bearer: {TOKEN}}}}}\n")
    t = template("hapi")
    wrong_token = {**t.headers, "Authorization": "Bearer not-the-token"}
    wrong_type = "/sources/hosp/fhir/Patient/x{i}"
    with (
        database(True) as url,
        pinpoint_server("ingest", url, PINPOINT_CONFIG_FILE=str(config)) as (port, pid),
        noop_server() as (n_port, n_pid),
    ):
        base, n_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{n_port}"
        runs = [
            ("no-op PUT", n_pid, n_base, Template("PUT", "/x", t.body, t.headers)),
            ("GET /livez", pid, base, Template("GET", "/livez")),
            ("PUT, 401 token", pid, base, Template("PUT", t.path, t.body, wrong_token)),
            (
                "PUT, 400 + dead letter",
                pid,
                base,
                Template("PUT", wrong_type, t.body, t.headers),
            ),
            ("PUT stored (hapi)", pid, base, t),
        ]
        for label, server, url_base, tt in runs:
            r = measure(server, lambda: wrk(url_base, tt, seconds, connections=connections, label=label))  # noqa: B023
            answered = r.ok + r.errors  # the refusals are the point here: CPU per answer
            cpu_ms = r.server_cpu_ms * max(1, r.ok) / max(1, answered)
            rate = answered / r.seconds
            print(f"  {label:24s} {rate:6.0f} answers/s  server CPU {cpu_ms:5.2f} ms/answer", flush=True)
    print(f"/proc/loadavg at the end: {loadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--shape", choices=["hapi", "medplum", "backport", "all"], default="all")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--before", metavar="REV", help="also the server of git REV, measured alternately")
    parser.add_argument("--saturation-connections", type=int, default=8)
    parser.add_argument(
        "--warm",
        type=float,
        default=6.0,
        metavar="SECONDS",
        help="paced load on every server before any is measured (0: none)",
    )
    parser.add_argument(
        "--paths",
        action="store_true",
        help="instead: server CPU per request of cheaper paths (wrk), to split framework from database work",
    )
    args = parser.parse_args()
    require_wrk()
    if args.paths:
        paths(args.seconds / 2, args.saturation_connections)
        return
    shapes = ["hapi", "medplum", "backport"] if args.shape == "all" else [args.shape]

    config = Path(tempfile.mkdtemp(prefix="pinpoint-bench-")) / "pinpoint.yaml"
    config.write_text(
        "sources:\n"
        f"  - {{id: hosp, inbound: {{bearer: {TOKEN}}}}}\n"
        f"  - {{id: medplum, inbound: {{hmac_secret: {SECRET}, header: X-Signature}}}}\n"
    )
    results: list[tuple[str, str, Run, Run, Run, Run]] = []
    with ExitStack() as stack:
        servers: list[tuple[str, int, int]] = []  # (label, port, pid)
        if args.before:
            src = Path(tempfile.mkdtemp(prefix="pinpoint-bench-before-"))
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.before], capture_output=True, check=True
            )
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
            url_b = stack.enter_context(database(True, src))
            port_b, pid_b = stack.enter_context(
                pinpoint_server("ingest", url_b, PINPOINT_CONFIG_FILE=str(config), PYTHONPATH=str(src))
            )
            servers.append((args.before, port_b, pid_b))
        url = stack.enter_context(database(True))
        port, pid = stack.enter_context(pinpoint_server("ingest", url, PINPOINT_CONFIG_FILE=str(config)))
        servers.append(("this branch" if args.before else "pinpoint", port, pid))
        n_port, n_pid = stack.enter_context(noop_server())
        n_base = f"http://127.0.0.1:{n_port}"
        first = 0
        for shape in shapes:
            t = template(shape)
            nt = Template(t.method, t.path, t.body, t.headers, first)
            noop_paced = paced(
                n_port,
                nt,
                args.rate,
                args.seconds,
                connections=args.connections,
                server_pid=n_pid,
                label="no-op FastAPI",
            )
            sat, half = args.saturation_connections, args.seconds / 2
            noop = measure(n_pid, lambda: wrk(n_base, nt, half, connections=sat, label="no-op FastAPI"))  # noqa: B023
            start = first
            if args.warm > 0:  # every server warmed the same way before any of them is measured
                for name, s_port, s_pid in servers:
                    paced(
                        s_port,
                        Template(t.method, t.path, t.body, t.headers, start),
                        args.rate,
                        args.warm,
                        connections=args.connections,
                        server_pid=s_pid,
                        label=f"{name} {shape} warm-up"[:24],
                    )
                start += int(args.rate * (args.warm + 2) * 1.1) + 1000  # paced's own 2 s lead too
            for name, s_port, s_pid in servers:  # the same numbers on each server: its own database
                first = start
                done = int(args.rate * (args.seconds + 2) * 1.1) + 1000
                pt = Template(t.method, t.path, t.body, t.headers, first)
                first += done
                ours = paced(
                    s_port,
                    pt,
                    args.rate,
                    args.seconds,
                    connections=args.connections,
                    server_pid=s_pid,
                    label=f"{name} {shape}"[:24],
                )
                st = Template(t.method, t.path, t.body, t.headers, first)
                first += 10_000_000  # wrk's counter: far beyond anything sent
                label = f"{name} {shape}"[:24]
                base = f"http://127.0.0.1:{s_port}"
                full = measure(s_pid, lambda: wrk(base, st, half, connections=sat, label=label))  # noqa: B023
                results.append((shape, name, noop_paced, ours, noop, full))
    print(f"`pinpoint serve --role ingest` processes on PostgreSQL; {os.cpu_count()} CPUs (shared)")
    for shape, name, noop_paced, ours, noop, full in results:
        print(f"== {shape}: {name}")
        print(
            f"  paced open loop at {args.rate:.0f}/s, {args.connections} connections, {args.seconds:.0f} s:"
        )
        print("    " + noop_paced.line())
        print("    " + ours.line())
        print("    " + paced_verdict(noop_paced))
        print(f"  saturation: wrk, {args.saturation_connections} connections, {args.seconds / 2:.0f} s:")
        print("    " + noop.line())
        print("    " + full.line())
        print("    " + generator_verdict(noop))
        met = ours.p99_ms <= 20 and ours.rps >= 0.95 * args.rate and not ours.errors
        print(
            f"  targets: p99 {ours.p99_ms:.1f} ms at {args.rate:.0f}/s"
            f" (<= 20 ms: {'met' if met else 'NOT met'});"
            f" server CPU {ours.server_cpu_ms:.2f} ms/notification (<= 1.5 ms:"
            f" {'met' if ours.server_cpu_ms <= 1.5 else 'NOT met'})"
            + (
                f"; one subscription {full.rps:.0f}/s (>= 500/s: {'met' if full.rps >= 500 else 'NOT met'})"
                if shape == "backport"
                else ""
            )
        )
    print(f"/proc/loadavg at the end: {loadavg()}")


if __name__ == "__main__":
    main()
