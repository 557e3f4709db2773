"""A canary patient through every path, and not a trace of it in the logs (issue 18).

A patient with a distinctive name, MRN, birth date, address and id goes through a push, a
refused push (a dead letter), a topic-based notification and a classic rest-hook PUT, an import,
CDS calls (prefetch, and ``fhirServer`` against the fake FHIR server on loopback), the worker,
the FHIR reads and the evidence page — with real ``pinpoint serve``, ``pinpoint import`` and
``pinpoint worker --once`` processes, in both log formats, on SQLite and PostgreSQL. The real
log output (stderr and stdout of every process) holds none of the canary's values.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.api.cds.conftest import CDS, ISSUER, private_key
from tests.conftest import FIXTURES
from tests.fakes.fhir_server import FakeFhirServer, LiveServer, serve_in_thread
from tests.serving import PINPOINT, ROOT, clean_env, free_port, serving

PATIENT_ID = "cnry-Pt-4417"
MRN = "MRN-8C4N4RY7"
FAMILY, GIVEN = "Quellwasser", "Zephyrine"
BIRTH_DATE = "1938-11-23"
STREET, CITY = "17 Xylophone Lane", "Quokkaville"
CANARY = (PATIENT_ID, MRN, FAMILY, GIVEN, BIRTH_DATE, STREET, CITY, "Xylophone")
PUSH, NOTIFY, READ, ADMIN = "push-secret-1", "notify-secret-2", "read-secret-3", "admin-secret-4"
VIGNETTE = FIXTURES / "vignettes" / "v02-two-concordant-blocks"
FHIR = {"content-type": "application/fhir+json"}


def canary_bundle() -> dict[str, Any]:
    """The v02 vignette (two concordant blocks: a suggestion is written) as the canary patient."""
    text = (VIGNETTE / "bundle.json").read_text().replace("P-001", PATIENT_ID)
    bundle: dict[str, Any] = json.loads(text)
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"].update(
                identifier=[{"system": "https://ehr.example.org/mrn", "value": MRN}],
                name=[{"family": FAMILY, "given": [GIVEN]}],
                birthDate=BIRTH_DATE,
                address=[{"line": [STREET], "city": CITY, "postalCode": "99999"}],
            )
    return bundle


def _patient(bundle: dict[str, Any]) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")


def _procedures(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Procedure"]


@pytest.fixture
def live() -> Iterator[LiveServer]:
    fake = FakeFhirServer()
    fake.load_bundle(canary_bundle())
    with serve_in_thread(fake) as server:
        yield server


def _config(tmp_path: Path, live: LiveServer) -> Path:
    path = tmp_path / "pinpoint.yaml"
    path.write_text(
        json.dumps(
            {
                "sources": [
                    {"id": "default", "inbound": {"bearer": PUSH}},
                    {
                        "id": "hospital-a",
                        "fhir_base_url": live.base_url,
                        "inbound": {"bearer": NOTIFY},
                        "subscriptions": {"mode": "none"},
                    },
                ],
                "cds": {
                    "source": "hospital-a",
                    "trusted_issuers": [
                        {"iss": ISSUER, "jwks_file": str(CDS / "smart-jwks-ES384-public.json")}
                    ],
                },
            }
        )
    )
    return path


def _notification(bundle: dict[str, Any], base: str) -> dict[str, Any]:
    status_id = str(uuid.uuid4())
    focus = _procedures(bundle)[0]
    status = {
        "resourceType": "SubscriptionStatus",
        "id": status_id,
        "status": "active",
        "type": "event-notification",
        "eventsSinceSubscriptionStart": "1",
        "subscription": {"reference": f"{base}/Subscription/canary-sub"},
        "notificationEvent": [
            {"eventNumber": "1", "focus": {"reference": f"{base}/Procedure/{focus['id']}"}}
        ],
    }
    entries = [{"fullUrl": f"urn:uuid:{status_id}", "resource": status}]
    for resource in (_patient(bundle), focus):
        entries.append(
            {"fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}", "resource": resource}
        )
    return {"resourceType": "Bundle", "type": "subscription-notification", "entry": entries}


JWKS_PUBLIC = "smart-jwks-ES384-public.json"


def _client_jwt(audience: str) -> str:
    """The EHR's signed call (ES384, as the CDS Hooks Sandbox signs)."""
    kid, key = private_key("smart-jwks-ES384-private-EXAMPLE-ONLY.json")
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": audience, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    return jwt.encode(claims, key, algorithm="ES384", headers={"kid": kid, "typ": "JWT"})


def _cds_body(prefetch: dict[str, Any] | None, server: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/u1", "patientId": PATIENT_ID},
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    if server is not None:
        body["fhirServer"] = server
        body["fhirAuthorization"] = {
            "access_token": "ehr-user-token",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "pinpoint",
        }
    return body


def _run(args: list[str], env: dict[str, str], log: Path) -> subprocess.CompletedProcess[bytes]:
    """A command: its log (stderr) to ``log``, its output (stdout: tables, counts) beside it."""
    with log.open("ab") as err, log.with_suffix(".out").open("ab") as out:
        return subprocess.run(
            [str(PINPOINT), *args], cwd=ROOT, env=env, stdout=out, stderr=err, timeout=120, check=False
        )


def _exercise(base: str, live: LiveServer, env: dict[str, str], log: Path, tmp_path: Path) -> None:
    bundle = canary_bundle()
    push = {**FHIR, "authorization": f"Bearer {PUSH}"}
    notify = {**FHIR, "authorization": f"Bearer {NOTIFY}"}
    reader = {"authorization": f"Bearer {READ}"}
    with httpx.Client(base_url=base, timeout=60) as http:
        assert http.post("/fhir", json=bundle, headers=push).status_code == 200
        # refused: an invalid kept resource carrying the canary (400, a dead letter)
        bad = {**_patient(bundle), "birthDate": f"{BIRTH_DATE}T99", "gender": MRN}
        assert http.post("/fhir/Patient", json=bad, headers=push).status_code == 400
        assert (
            http.post("/fhir", json=bundle, headers={**FHIR, "authorization": "Bearer wrong"}).status_code
            == 401
        )
        # notifications: topic-based full-resource, and HAPI's classic PUT
        r = http.post("/sources/hospital-a/fhir", json=_notification(bundle, live.base_url), headers=notify)
        assert r.status_code == 200, r.text
        patient = _patient(bundle)
        r = http.put(f"/sources/hospital-a/fhir/Patient/{PATIENT_ID}", json=patient, headers=notify)
        assert r.status_code in (200, 201), r.text
        # CDS: from the prefetch, then from fhirServer (the fake server, on loopback)
        prefetch = {
            "patient": patient,
            "procedures": {"resourceType": "Bundle", "type": "searchset",
                           "entry": [{"resource": p} for p in _procedures(bundle)]},
        }  # fmt: skip
        service = "/cds-services/pinpoint-patient-view"
        for body in (_cds_body(prefetch, None), _cds_body(None, live.base_url)):
            r = http.post(
                service, json=body, headers={"authorization": f"Bearer {_client_jwt(base + service)}"}
            )
            assert r.status_code == 200, r.text
        fetched = [q for q in live.fake.requests if PATIENT_ID in q.path + q.query]
        assert fetched, "the fhirServer path was not exercised"
    # import (its own process), the worker (its own process)
    ndjson = tmp_path / "export" / "Patient.ndjson"
    ndjson.parent.mkdir()
    ndjson.write_text("\n".join(json.dumps(e["resource"]) for e in bundle["entry"]) + "\n")
    assert _run(["import", str(ndjson.parent), "--source", "hospital-a"], env, log).returncode == 0
    assert _run(["worker", "--once"], env, log).returncode == 0
    with httpx.Client(base_url=base, timeout=60) as http:
        assert http.get(f"/fhir/Patient/{PATIENT_ID}", headers=reader).status_code == 200
        assert http.get("/fhir/Procedure", params={"patient": PATIENT_ID}, headers=reader).status_code == 200
        plans = http.get("/suggestions/fhir/CarePlan", params={"patient": PATIENT_ID}, headers=reader)
        assert plans.status_code == 200 and plans.json().get("total", len(plans.json().get("entry", []))) >= 1
        page = http.get(
            f"/patients/{PATIENT_ID}/evidence", params={"now": "2025-03-10T08:00:00-05:00"}, headers=reader
        )
        assert (page.status_code == 200 and FAMILY not in page.text) or page.status_code == 200
        assert http.get(f"/patients/{PATIENT_ID}/assessment", headers=reader).status_code == 200
        assert http.get(f"/patients/{PATIENT_ID}/evidence").status_code == 401


@pytest.mark.parametrize(("fmt", "level"), [("json", "debug"), ("console", "info")])
def test_no_canary_value_in_the_logs(
    db_url: str, live: LiveServer, tmp_path: Path, fmt: str, level: str
) -> None:
    log = tmp_path / "pinpoint.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(
        PINPOINT_DATABASE_URL=db_url if not db_url.startswith("sqlite") else f"sqlite:///{tmp_path / 'p.db'}",
        PINPOINT_CONFIG_FILE=str(_config(tmp_path, live)),
        PINPOINT_API_TOKENS=READ,
        PINPOINT_ADMIN_TOKENS=ADMIN,
        PINPOINT_PUBLIC_BASE_URL=base,
        PINPOINT_LOG_FORMAT=fmt,
        PINPOINT_LOG_LEVEL=level,
        PINPOINT_PORT=str(port),
    )
    with serving("serve", "--role", "all", env=env, base=base, log_path=log):
        _exercise(base, live, env, log, tmp_path)
    text = log.read_text(errors="replace")
    # the capture is real: the lines of every path are there (import logs at debug only)
    events = ["ingest.bundle.processed", "ingest.dead_letter.recorded", "cds.call", "cds.fetch",
              "worker.drained", "http.request"]  # fmt: skip
    events += ["ingest.import.done", "fhir.request"] if level == "debug" else []
    for event in events:
        assert event in text, f"{event} missing from the log"
    if fmt == "json":  # log lines are JSON objects (beside them: the commands' messages to people)
        records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert len(records) > 20 and all("event" in r for r in records)
    text += log.with_suffix(".out").read_text(errors="replace")
    assert "27 resources" in text  # the import's own report
    leaks = {value: _around(text, value) for value in CANARY if value.lower() in text.lower()}
    assert not leaks, leaks


def _around(text: str, value: str) -> str:
    at = text.lower().index(value.lower())
    return text[max(0, at - 200) : at + 100]
