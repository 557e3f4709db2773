"""Logs carry no patient identifiers from URLs (issue 18, finding 3).

The probe saw the ``httpx`` logger at INFO write every outbound URL, ``GET …/Patient/MRN-…`` and
``…/Procedure?patient=MRN-…``, seven lines per CDS call with a ``fhirServer``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import orjson
import pytest
import structlog

from shared.fhir import client as client_module
from shared.fhir.client import FhirClient, RetryPolicy
from shared.logging import configure_logging, redact_urls

MRN = "MRN-93417Q"
BASE = "https://fhir.hospital-a.example/R4"


@pytest.fixture
def real_logging() -> Iterator[None]:
    """``configure_logging`` for one test, then the logging set-up as it was (the stdlib root
    handlers and levels, structlog's configuration)."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_levels = {n: logging.getLogger(n).level for n in ("httpx", "httpcore", "urllib3", "uvicorn.access")}
    saved_structlog = structlog.get_config()
    yield
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)
    structlog.configure(**saved_structlog)


def fresh_client_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client module's logger as new: one used earlier in the session (a command run in
    process calls ``configure_logging``, which caches loggers on first use) keeps that set-up."""
    monkeypatch.setattr(client_module, "_log", structlog.get_logger("shared.fhir.client"))


def _searchset() -> dict[str, object]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": []}


def _fhir_server(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/Patient/" + MRN):
        return httpx.Response(200, json={"resourceType": "Patient", "id": MRN})
    return httpx.Response(200, json=_searchset())


async def _outbound_calls() -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(_fhir_server)) as http:
        client = FhirClient(BASE, http, source="hospital-a", retry=RetryPolicy(max_attempts=1))
        await client.read("Patient", MRN)
        await client.search_all("Procedure", {"patient": MRN})
        await http.get(f"{BASE}/Observation?patient={MRN}&code=72514-3")  # httpx itself, directly


@pytest.mark.parametrize(("level", "fmt"), [("debug", "json"), ("info", "console"), ("debug", "console")])
async def test_outbound_urls_never_reach_the_log(
    real_logging: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    level: str,
    fmt: str,
) -> None:
    configure_logging(level, fmt)
    structlog.configure(cache_logger_on_first_use=False)  # leave no logger bound to this set-up
    fresh_client_logger(monkeypatch)
    capsys.readouterr()
    await _outbound_calls()
    logging.getLogger("some.library").warning("fetching %s failed", f"{BASE}/Patient/{MRN}?_format=json")
    logging.getLogger("uvicorn.error").warning("GET /fhir/Patient/%s?patient=%s", MRN, MRN)
    err = capsys.readouterr().err
    assert "fetching https://fhir.hospital-a.example/… failed" in err  # the line is kept, cut
    assert MRN not in err
    assert "patient=" not in err
    if level == "debug":  # Pinpoint's own outbound lines: source, interaction and type, status
        assert "fhir.request" in err and "hospital-a" in err and "read Patient" in err
        if fmt == "json":
            lines = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
            ours = [e for e in lines if e.get("event") == "fhir.request"]
            assert {(e["source"], e["what"], e["status"]) for e in ours} == {
                ("hospital-a", "read Patient", 200),
                ("hospital-a", "search Procedure", 200),
            }


async def test_fhir_client_log_lines_name_types_never_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    fresh_client_logger(monkeypatch)

    def failing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": "0"})

    async def no_sleep(_: float) -> None:
        return None

    async with httpx.AsyncClient(transport=httpx.MockTransport(failing)) as http:
        client = FhirClient(
            BASE, http, source="hospital-a", sleep=no_sleep, retry=RetryPolicy(max_attempts=2)
        )
        with structlog.testing.capture_logs() as logs:
            for call in (
                client.read("Patient", MRN),
                client.search_all("Procedure", {"patient": MRN}),
                client.operation(f"Subscription/{MRN}/$events", {"eventsSinceNumber": "1"}),
            ):
                with pytest.raises(Exception):  # noqa: B017 - any error: the lines are what is tested
                    await call
    assert logs and all(e["source"] == "hospital-a" for e in logs)
    assert MRN not in repr(logs)
    assert {e["what"] for e in logs} == {"read Patient", "search Procedure", "operation Subscription/$events"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'GET http://127.0.0.1:5555/fhir/Patient/X-1?a=b "HTTP/1.1 200 OK"',
            'GET http://127.0.0.1:5555/… "HTTP/1.1 200 OK"',
        ),
        ('127.0.0.1:4444 - "GET /fhir/Patient/X-2 HTTP/1.1" 200', '127.0.0.1:4444 - "GET /… HTTP/1.1" 200'),
        ("broken by x: /R4/Procedure?patient=X-3", "broken by x: /…"),
        ("Uvicorn running on http://127.0.0.1:8080 (Press CTRL+C to quit)", None),
        ("Invalid HTTP request received.", None),
    ],
)
def test_redact_urls(text: str, expected: str | None) -> None:
    assert redact_urls(text) == (expected or text)


def _fails_holding_a_patient() -> None:
    payload = {"identifier": MRN}  # a local variable of the failing frame
    raise ValueError(f"{len(payload)} field(s)")


@pytest.mark.parametrize("configured", ["console", "json", None])
def test_a_logged_exception_does_not_print_the_frames_locals(
    real_logging: None, capsys: pytest.CaptureFixture[str], configured: str | None
) -> None:
    """structlog's default console tracebacks (rich) print every frame's locals: a payload or a
    patient in a local variable went to the log with any unhandled error."""
    if configured:
        configure_logging("info", configured)
        structlog.configure(cache_logger_on_first_use=False)
    capsys.readouterr()
    try:
        _fails_holding_a_patient()
    except ValueError:
        structlog.get_logger("pinpoint.test").exception("http.unhandled", error="ValueError")
    err = capsys.readouterr().err
    assert "_fails_holding_a_patient" in err  # the traceback is there …
    assert MRN not in err  # … without the locals
