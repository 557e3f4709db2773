"""Benchmark: CDS Hooks patient-view under load, beside a bare FastAPI no-op (not a test).

Run: ``.venv/bin/python tests/bench/cds_hooks.py [SECONDS] [--postgres] [--no-auth] [--rs384]
[--profile] [--before REV]`` (default 8 s per target; ``--postgres``: Pinpoint on a throw-away
PostgreSQL database instead of SQLite; ``--no-auth``: no trusted issuers, calls unsigned;
``--rs384``: the EHR signs with RS384 (RSA 2048) instead of ES384 — the two algorithms CDS Hooks
recommends, whose verification costs ~0.05 and ~1 ms on this machine; ``--profile``: a
further saturation run recorded by py-spy, the file named on the output; ``--before REV``: a
second Pinpoint server running git REV's source (``git archive``, on this environment, its own
database) measured beside this one — saturation before, after, before, after, then one
connection each — so that both sides see the shared machine's load of the same minutes).

Starts, on 127.0.0.1 (free ports), ONE ``pinpoint serve --role recommender`` process configured as
deployed — a trusted EHR issuer (ES384 JWKS file), the default log level, JSON logs to /dev/null —
and ONE uvicorn process serving a bare FastAPI app that reads the body and answers
``{"cards": []}``. Both get the same bytes: 1,000 distinct patients' patient-view requests, each an
80-resource prefetch (vignette v02's pain history — two concordant medial branch blocks, a card —
plus unrelated conditions, medications and scores whose ids, dates and values differ per patient,
all eight prefetch keys answered), rotated request by request, each carrying a fresh one-use
ES384 client JWT (signed before the run; Pinpoint verifies each signature and refuses a replayed
``jti``: nothing a cache could make cheaper than an EHR's real load).

- at saturation with ``wrk`` (32 connections, one thread; requires Debian's ``wrk`` package): req/s,
  p50/p99, each server's CPU per call (``/proc/<pid>/stat``) and share of a core, and whether the
  no-op or the generator was the bottleneck;
- paced, open loop, at 0.25 x the no-op's throughput (tests/bench/_load.py ``paced``: latency from
  each request's scheduled send time), first against the no-op to show the driver keeps the
  schedule, then against Pinpoint (skipped when its saturation rate is below the offered rate:
  the latency would be the growing backlog's);
- paced, open loop, at 0.8 x Pinpoint's own measured saturation rate (with ``--before``: of the
  slower side's, both sides offered that rate): the latency under a load it sustains, printed
  with its rate;
- one connection back to back (the latency of a lone call).

Each Pinpoint run at saturation or on one connection also prints the server's CPU per call split
between its main thread (the event loop) and its other threads (the group-commit writers,
PostgreSQL's stored-data read in the thread pool): where a difference between the modes lives.

Targets (issue 21): throughput >= 0.25 x the no-op's; p99 <= 40 ms at the paced rate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench._load import (  # noqa: E402
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

CONNECTIONS = 32
#: The paced rate a reader can compare with the target's: this share of Pinpoint's own measured
#: saturation rate (open loop, as the 0.25 x no-op figure), a load it sustains.
SUSTAINED = 0.8
PATH = "/cds-services/pinpoint-patient-view"
V02 = ROOT / "tests" / "fixtures" / "vignettes" / "v02-two-concordant-blocks"


PATIENTS = 1000  # distinct patients' requests wrk and the paced driver rotate over
BASE_URL = "https://pinpoint.bench.example"  # PINPOINT_PUBLIC_BASE_URL: the JWT audience's base
ISSUER = "https://ehr.bench.example/cds-client"
KID = "bench-key"


def request_body(k: int = 1) -> dict[str, Any]:
    """patient-view for patient ``P-{k}`` with 80 prefetched resources: vignette v02's pain history
    (two concordant medial branch blocks: cards) plus unrelated conditions, medications and
    scores that differ per patient (ids, dates, values), all eight prefetch keys answered."""
    pid = f"P-{k:04d}"
    raw = (V02 / "bundle.json").read_text().replace("P-001", pid)
    bundle = json.loads(raw)
    res = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] != "ServiceRequest"]
    subj = {"reference": f"Patient/{pid}"}
    n = 0
    while len(res) < 80:
        n += 1
        kind = (n + k) % 3
        day = 1 + (n * 7 + k) % 28
        if kind == 0:
            code = ("I10", "E11.9", "J45.909", "M17.11", "F41.1")[(n + k) % 5]
            res.append(
                {
                    "resourceType": "Condition",
                    "id": f"c-{k}-{n}",
                    "subject": subj,
                    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code}]},
                    "clinicalStatus": {"coding": [{"code": "active"}]},
                    "recordedDate": f"{2015 + (n + k) % 8}-{1 + k % 12:02d}-{day:02d}",
                }
            )
        elif kind == 1:
            rx = (
                ("314076", "lisinopril 10 MG"),
                ("860975", "metformin 500 MG"),
                ("197361", "amlodipine 5 MG"),
            )
            code, display = rx[(n + k) % 3]
            res.append(
                {
                    "resourceType": "MedicationRequest",
                    "id": f"m-{k}-{n}",
                    "status": "active",
                    "intent": "order",
                    "subject": subj,
                    "authoredOn": f"2024-{1 + n % 12:02d}-{day:02d}",
                    "medicationCodeableConcept": {
                        "coding": [
                            {
                                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                "code": code,
                                "display": display,
                            }
                        ]
                    },
                }
            )
        else:
            res.append(
                {
                    "resourceType": "Observation",
                    "id": f"o-{k}-{n}",
                    "status": "final",
                    "subject": subj,
                    "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
                    "effectiveDateTime": f"2023-{(n % 12) + 1:02d}-{day:02d}T{8 + (n + k) % 9:02d}:00:00Z",
                    "valueInteger": (n + k) % 11,
                }
            )
    keys = {
        "Procedure": "procedures",
        "Observation": "observations",
        "Condition": "conditions",
        "MedicationAdministration": "medications",
        "MedicationStatement": "medicationStatements",
        "MedicationRequest": "medicationRequests",
    }
    prefetch: dict[str, Any] = {
        k: {"resourceType": "Bundle", "type": "searchset", "entry": []}
        for k in (*keys.values(), "questionnaireResponses")
    }
    for r in res:
        if r["resourceType"] == "Patient":
            prefetch["patient"] = r
        else:
            prefetch[keys[r["resourceType"]]]["entry"].append({"resource": r})
    assert len(res) == 80
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.UUID(int=k)),
        "context": {"userId": "Practitioner/dr-1", "patientId": pid},
        "prefetch": prefetch,
    }


# ----------------------------------------------------------------------------- the EHR's JWTs


@dataclass
class Issuer:
    """The benchmark's EHR: an ES384 (or RS384) key whose public JWKS Pinpoint trusts (a config
    file), and one-use client JWTs (``jti`` unique: Pinpoint refuses a replay) minted before each
    run."""

    directory: Path
    alg: str = "ES384"
    pem: bytes = b""

    def __post_init__(self) -> None:
        if self.alg == "RS384":
            rsa_key = rsa.generate_private_key(65537, 2048)
            key: Any = rsa_key
            public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
        else:
            key = ec.generate_private_key(ec.SECP384R1())
            public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        self.pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        public.update(kid=KID, alg=self.alg, use="sig")
        jwks = self.directory / "jwks.json"
        jwks.write_text(json.dumps({"keys": [public]}))
        self.config = self.directory / "pinpoint.yaml"
        self.config.write_text(
            json.dumps({"cds": {"trusted_issuers": [{"iss": ISSUER, "jwks_file": str(jwks)}]}})
        )

    def mint(self, count: int) -> tuple[str, ...]:
        """``count`` fresh tokens (signed on both cores: ES384 signing costs ~0.5 ms each)."""
        chunks = [(self.pem, self.alg, 1000) for _ in range(count // 1000)] + [
            (self.pem, self.alg, count % 1000)
        ]
        with ProcessPoolExecutor(os.cpu_count() or 2) as pool:
            return tuple(t for part in pool.map(_sign, chunks) for t in part)


def _sign(job: tuple[bytes, str, int]) -> list[str]:
    pem, alg, count = job
    key = serialization.load_pem_private_key(pem, None)
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": BASE_URL + PATH, "iat": now, "exp": now + 300}
    head = {"kid": KID, "typ": "JWT"}
    return [
        jwt.encode({**claims, "jti": str(uuid.uuid4())}, key, algorithm=alg, headers=head)  # type: ignore[arg-type]
        for _ in range(count)
    ]


def _before_source(rev: str, into: Path) -> Path:
    """REV's source tree (``git archive``) under ``into``: run with it first on PYTHONPATH."""
    src = into / "before-src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    return src


def main() -> None:
    before = sys.argv[sys.argv.index("--before") + 1] if "--before" in sys.argv else None
    args = [a for a in sys.argv[1:] if not a.startswith("--") and a != before]
    seconds = float(args[0]) if args else 8.0
    postgres = "--postgres" in sys.argv
    signed = "--no-auth" not in sys.argv
    alg = "RS384" if "--rs384" in sys.argv else "ES384"
    profile = "--profile" in sys.argv
    require_wrk()
    bodies = tuple(json.dumps(request_body(k)).encode() for k in range(1, PATIENTS + 1))
    assert len(set(bodies)) == PATIENTS
    size = sum(len(b) for b in bodies) / len(bodies)
    plain = Template("POST", PATH, headers={"Content-Type": "application/json"}, bodies=bodies)
    with tempfile.TemporaryDirectory(prefix="pinpoint-bench-jwks-") as tmp:
        issuer = Issuer(Path(tmp), alg) if signed else None
        # as deployed: the default log level (each call logs its line, JSON to /dev/null here)
        env = {"PINPOINT_PUBLIC_BASE_URL": BASE_URL, "PINPOINT_LOG_LEVEL": "info"}
        if issuer is not None:
            env["PINPOINT_CONFIG_FILE"] = str(issuer.config)

        def template(count: int) -> Template:
            """The rotation with ``count`` fresh JWTs (none without auth)."""
            return replace(plain, tokens=issuer.mint(count)) if issuer is not None else plain

        # the no-op verifies nothing: the same bytes on the wire, tokens reused
        noop_t = template(2000)
        with (
            database(postgres) as url,
            pinpoint_server("recommender", url, **env) as (p_port, p_pid),
            noop_server() as (n_port, n_pid),
            ExitStack() as stack,
        ):
            side: list[Any] = []  # --before: (label, Run) in the order measured
            if before is not None:
                src = _before_source(before, Path(tmp))
                b_url = stack.enter_context(database(postgres, src))
                b_port, b_pid = stack.enter_context(
                    pinpoint_server("recommender", b_url, PYTHONPATH=str(src), **env)
                )
                b_base = f"http://127.0.0.1:{b_port}"
            p_base, n_base = f"http://127.0.0.1:{p_port}", f"http://127.0.0.1:{n_port}"
            first = template(1)
            auth_header = {"Authorization": f"Bearer {first.tokens[0]}"} if first.tokens else {}
            check = httpx.post(
                p_base + PATH, content=bodies[0], headers={**first.headers, **auth_header}, timeout=10
            )
            cards = check.json().get("cards", [])
            print(
                f"patient-view answer: HTTP {check.status_code}, {len(cards)} card(s): "
                + "; ".join(c["summary"] for c in cards)
            )
            wrk(n_base, noop_t, 2, connections=CONNECTIONS)  # warm-up
            warm = wrk(p_base, template(6000), 2, connections=CONNECTIONS)
            noop = measure(
                n_pid, lambda: wrk(n_base, noop_t, seconds, connections=CONNECTIONS, label="no-op FastAPI")
            )
            main_t = template(int(max(warm.rps, 200) * seconds * 2) + 500)
            if before is not None:
                wrk(b_base, template(6000), 2, connections=CONNECTIONS)  # warm-up
                for rnd in (1, 2):  # before, after, before, after: the same minutes' load on both
                    b_t = template(int(max(warm.rps, 200) * seconds * 2) + 500)
                    side.append(
                        _measure(
                            b_pid,
                            lambda b_t=b_t, rnd=rnd: wrk(
                                b_base, b_t, seconds, connections=CONNECTIONS, label=f"{before[:12]} #{rnd}"
                            ),
                        )
                    )
                    a_t = main_t if rnd == 1 else template(int(max(warm.rps, 200) * seconds * 2) + 500)
                    side.append(
                        _measure(
                            p_pid,
                            lambda a_t=a_t, rnd=rnd: wrk(
                                p_base, a_t, seconds, connections=CONNECTIONS, label=f"this tree #{rnd}"
                            ),
                        )
                    )
                cds = replace(side[1], label="pinpoint patient-view")
            else:
                cds = _measure(
                    p_pid,
                    lambda: wrk(
                        p_base, main_t, seconds, connections=CONNECTIONS, label="pinpoint patient-view"
                    ),
                )
            rate = 0.25 * noop.rps
            noop_paced = paced(n_port, noop_t, rate, seconds, server_pid=n_pid, label="no-op FastAPI")
            if cds.rps >= 0.9 * rate:
                paced_t = template(int(rate * (seconds + 2)) + 200)
                cds_paced = paced(
                    p_port, paced_t, rate, seconds, server_pid=p_pid, label="pinpoint patient-view"
                )
            else:  # its queue would grow for the whole run: the latency would be the backlog's
                cds_paced = None
            # the latency under a load it sustains: 0.8 x its measured saturation rate (with
            # --before, of the slower side's, both sides offered the same rate)
            capacity = min([cds.rps, *(r.rps for r in side[:4])])
            sustained_rate = SUSTAINED * capacity
            sustained = [
                paced(
                    port,
                    template(int(sustained_rate * (seconds + 2)) + 200),
                    sustained_rate,
                    seconds,
                    server_pid=pid,
                    label=label,
                )
                for port, pid, label in (
                    ((b_port, b_pid, f"{before[:12]}, paced"),) if before is not None else ()
                )
                + ((p_port, p_pid, "pinpoint patient-view" if before is None else "this tree, paced"),)
            ]
            single_t = template(int(max(warm.rps, 200) * seconds) + 200)
            single = _measure(
                p_pid,
                lambda: wrk(p_base, single_t, seconds / 2, connections=1, label="pinpoint, 1 connection"),
            )
            if before is not None:
                single_b = template(int(max(warm.rps, 200) * seconds) + 200)
                side.append(
                    _measure(
                        b_pid,
                        lambda: wrk(
                            b_base, single_b, seconds / 2, connections=1, label=f"{before[:12]}, 1 conn."
                        ),
                    )
                )
                side.append(replace(single, label="this tree, 1 conn."))
                THREADS["this tree, 1 conn."] = THREADS[single.label]
            if profile:  # a separate saturation run: the sampler's own cost stays out of the figures
                spy_t = template(int(cds.rps * seconds * 2) + 500)
                spy = _py_spy(p_pid, seconds)
                wrk(p_base, spy_t, seconds, connections=CONNECTIONS)
                if spy is not None:
                    spy.wait()
    store = "PostgreSQL" if postgres else "SQLite"
    auth = (
        f"each call signed ({alg} JWT, one-use jti) and verified" if signed else "no JWT (no trusted issuers)"
    )
    print(
        f"80-resource prefetch ({size:,.0f} bytes on average), {PATIENTS} distinct patients rotated;"
        f" one `pinpoint serve` process on {store}; {auth}"
    )
    print(f"  saturation: wrk, {CONNECTIONS} connections, 1 thread, {seconds:.0f} s each")
    for r in (noop, cds):
        print("    " + r.line())
    print("    " + _split(side[1].label if side else cds.label))
    print("    " + generator_verdict(noop))
    print("  paced open loop at 0.25 x the no-op's throughput, latency from each scheduled send:")
    print("    " + noop_paced.line())
    if cds_paced is not None:
        print("    " + cds_paced.line())
    else:
        print(
            f"    pinpoint patient-view    not run: its capacity ({cds.rps:.0f} req/s)"
            " is below the offered rate"
        )
    print("    " + paced_verdict(noop_paced))
    print(
        f"  paced open loop at {SUSTAINED} x Pinpoint's measured saturation rate"
        f" ({sustained[-1].offered:.0f} req/s: a load it sustains), latency from each scheduled send:"
    )
    for r in sustained:
        print(f"    {r.line()}  load {r.loadavg}")
    print("    " + single.line())
    print("    " + _split(single.label))
    ratio = cds.rps / noop.rps
    print(
        f"  throughput ratio {ratio:.3f} (target >= 0.25); server CPU per call no-op/pinpoint"
        f" {noop.server_cpu_ms / cds.server_cpu_ms:.3f}; p99 at 0.25 x no-op"
        f" {f'{cds_paced.p99_ms:.1f} ms' if cds_paced else 'beyond capacity'}"
        f" (target <= 40 ms); p99 at {SUSTAINED} x its own capacity ({sustained[-1].offered:.0f} req/s)"
        f" {sustained[-1].p99_ms:.1f} ms"
    )
    if side:
        print(f"  before ({before}) and after (this tree), alternating, {CONNECTIONS} connections then 1:")
        for r in side:
            print(f"    {r.line()}  load {r.loadavg}")
            print("    " + _split(r.label))
        b_cpu = [r.server_cpu_ms for r in side[:4:2]]
        a_cpu = [r.server_cpu_ms for r in side[1:4:2]]
        print(
            f"    server CPU per call at saturation: before {min(b_cpu):.2f}-{max(b_cpu):.2f} ms,"
            f" after {min(a_cpu):.2f}-{max(a_cpu):.2f} ms"
            f" ({sum(a_cpu) / sum(b_cpu):.2f} x)"
        )
    print(f"  /proc/loadavg after the runs: {loadavg()} ({os.cpu_count()} CPUs, shared with the generators)")


#: Per run label: the server's main thread's CPU per call (the event loop: parsing, the engine,
#: cards) and its other threads' (the writers' transactions, the PostgreSQL read's thread pool).
THREADS: dict[str, tuple[float, float]] = {}


def _thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds so far of ``pid``'s main thread and of its other threads (``/proc``)."""
    main = others = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            seconds = _cpu_seconds_of(task / "stat")
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        if task.name == str(pid):
            main += seconds
        else:
            others += seconds
    return main, others


def _cpu_seconds_of(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(pid: int, run: Any) -> Any:
    """:func:`measure` plus the split of the server's CPU between its threads (``THREADS``); a
    thread that ended during the run is missed (the writers end after a second idle)."""
    main0, others0 = _thread_cpu(pid)
    result = measure(pid, run)
    main1, others1 = _thread_cpu(pid)
    calls = max(1, result.ok)
    THREADS[result.label] = ((main1 - main0) * 1000 / calls, (others1 - others0) * 1000 / calls)
    return result


def _split(label: str) -> str:
    main, others = THREADS.get(label, (float("nan"), float("nan")))
    return f"  main thread {main:.2f} ms/call, other threads {others:.2f} ms/call"


def _py_spy(pid: int, seconds: float) -> subprocess.Popen[bytes] | None:
    """``--profile``: py-spy records the server (only the thread holding the interpreter lock: the
    CPU a call costs, not a thread waiting for work) for ``seconds`` (needs py-spy in the venv)."""
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        print("--profile: py-spy is not installed in this venv")
        return None
    out = Path(tempfile.gettempdir()) / f"pinpoint-cds-{pid}.txt"
    print(f"py-spy: recording the server for {seconds:.0f} s into {out}")
    return subprocess.Popen(
        [
            str(exe),
            "record",
            "--gil",
            "-p",
            str(pid),
            "-d",
            str(int(seconds)),
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


if __name__ == "__main__":
    main()
