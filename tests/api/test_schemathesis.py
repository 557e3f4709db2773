"""Schemathesis over the app's own OpenAPI, with tokens configured (issue 18, hostile-input suite).

Every operation the OpenAPI describes gets schema-conforming and schema-violating requests
(bounded, derandomized: the same requests every run) carrying a token that passes every check, so
the requests reach the handlers. Asserted: no 5xx, and every error is a FHIR OperationOutcome.
Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from sqlalchemy.engine import Engine

from services.server import Role, build_app
from shared.settings import ConfigFile, Settings

#: Examples per operation and mode: 29 operations x 2 modes x 2 backends stay near a minute on 2 cores.
EXAMPLES = 12
TOKEN = "hostile-suite-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
PROBES = ("/livez", "/readyz")  # their own JSON bodies in every case (CONTRACT §2)


@pytest.fixture
async def secured_client(db_url: str, engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    """One token is the API, admin and every source's inbound credential, so that requests pass
    authentication and reach the handlers."""
    config = ConfigFile.model_validate(
        {
            "sources": [
                {"id": "default", "inbound": {"bearer": TOKEN}},
                {"id": "hospital-a", "inbound": {"bearer": TOKEN}},
            ]
        }
    )
    settings = Settings(
        database_url=db_url,
        api_tokens=[TOKEN],
        admin_tokens=[TOKEN],
        config=config,
        _env_file=None,  # type: ignore[call-arg]
    )
    app = build_app(settings, Role.all, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client
    for hook in app.state.runtime.on_shutdown:
        await hook()


def _schema(client: httpx.AsyncClient) -> Any:
    return schemathesis.openapi.from_dict(client._transport.app.openapi())  # type: ignore[attr-defined]


async def _send(client: httpx.AsyncClient, kwargs: dict[str, Any]) -> httpx.Response:
    options: dict[str, Any] = {
        "headers": {k: v for k, v in kwargs["headers"].items() if k.lower() != "connection"},
        "params": kwargs.get("params") or None,
        "cookies": kwargs.get("cookies") or None,
    }
    if "json" in kwargs:
        options["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        options["content"] = data.encode() if isinstance(data, str) else data
    return await client.request(kwargs["method"], kwargs["url"], **options)


def _check(response: httpx.Response, label: str) -> None:
    status = response.status_code
    assert status < 500, f"{label}: {status} {response.text[:300]}"
    if status >= 400 and not response.request.url.path.startswith(PROBES):
        assert response.headers.get("content-type", "").startswith("application/fhir+json"), label
        assert response.json()["resourceType"] == "OperationOutcome", label


def _label(operation: Any) -> str:
    return f"{operation.method.upper()} {operation.path}"


def _violable(operation: Any) -> bool:
    """Whether a request can violate the operation's schema: a body, a query parameter, or a path
    parameter that is not a free string."""
    params = operation.definition.raw.get("parameters") or []
    return bool(operation.body) or any(
        p.get("in") != "path" or p.get("schema", {}).get("type") != "string" for p in params
    )


def _cases(
    schema: Any, mode: GenerationMode, chosen: Callable[[str], bool]
) -> list[tuple[str, dict[str, Any]]]:
    """The requests, generated up front (deterministic: derandomized, no example database)."""
    every = sorted(
        (result.ok() for result in schema.get_all_operations()), key=lambda op: (op.path, op.method)
    )
    assert len(every) >= 25  # the walk is not vacuous
    operations = [op for op in every if chosen(_label(op))]
    if mode is GenerationMode.NEGATIVE:  # a free-string path parameter cannot violate the schema
        operations = [op for op in operations if _violable(op)]
    cases: list[tuple[str, dict[str, Any]]] = []
    unsatisfiable: list[str] = []
    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def generate(case: Any) -> None:
            request = case.as_transport_kwargs(base_url="http://testserver", headers=AUTH)
            cases.append((_label(case.operation), request))

        try:
            generate()
        except Unsatisfiable:
            unsatisfiable.append(_label(operation))
    assert not unsatisfiable, unsatisfiable
    assert {label for label, _ in cases} == {_label(op) for op in operations}
    return cases


async def _probe(client: httpx.AsyncClient, mode: GenerationMode, chosen: Callable[[str], bool]) -> None:
    problems: dict[str, str] = {}
    for label, kwargs in _cases(_schema(client), mode, chosen):
        if label in problems:  # one problem per operation is enough to report
            continue
        try:
            _check(await _send(client, kwargs), label)
        except AssertionError as exc:
            problems.setdefault(label, str(exc).splitlines()[0][:300])
    assert not problems, problems


MODES = pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)


@MODES
async def test_no_5xx_and_every_error_an_operation_outcome(
    secured_client: httpx.AsyncClient, mode: GenerationMode
) -> None:
    await _probe(secured_client, mode, lambda label: True)
