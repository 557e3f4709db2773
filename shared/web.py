"""What every Pinpoint HTTP role shares: the runtime, errors as OperationOutcome, request ids,
metrics, the operations endpoints and token checks.

``services/server.py`` (the composition root) builds one :class:`Runtime` per process and adds the
services' routers, readiness checks, background tasks, shutdown hooks and metrics collectors.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.db.session import migrations_at_head
from shared.errors import (
    Forbidden,
    Issue,
    PinpointError,
    TooLarge,
    Unauthorized,
    operation_outcome,
)
from shared.fhir.text import refuse_unstorable_json
from shared.logging import describe_exception, get_logger, new_request_id, request_id_var
from shared.settings import Settings

log = get_logger("pinpoint.http")

ModelT = TypeVar("ModelT", bound=BaseModel)

FHIR_JSON = "application/fhir+json"

REQUESTS = Counter("pinpoint_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "pinpoint_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

Check = Callable[[], str]
"""A readiness check: returns ``"ok"`` or a short description of the problem (no patient data)."""

BackgroundTask = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class Runtime:
    """One process's lifecycle: settings, database engine, readiness checks, background tasks,
    shutdown hooks and the registry of its scrape-time collectors (``/metrics`` serves it with
    the global counters). The services' parts live in their own typed containers."""

    settings: Settings
    engine: Engine
    checks: dict[str, Check] = field(default_factory=dict)
    background: list[tuple[str, BackgroundTask]] = field(default_factory=list)
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    metrics: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))


class FhirResponse(Response):
    """JSON rendered with orjson and the FHIR media type."""

    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def outcome_response(status: int, issues: list[Issue], headers: dict[str, str] | None = None) -> FhirResponse:
    return FhirResponse(operation_outcome(issues), status_code=status, headers=headers)


_STATUS_CODES = {404: "not-found", 405: "not-supported", 401: "login", 403: "forbidden", 413: "too-costly"}


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    """Every non-2xx is an OperationOutcome (the probes set their own bodies)."""

    @app.exception_handler(PinpointError)
    async def _pinpoint(_: Request, exc: PinpointError) -> Response:
        return FhirResponse(exc.outcome(), status_code=exc.status, headers=exc.headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = _STATUS_CODES.get(exc.status_code, "processing")
        text = str(exc.detail)
        if exc.status_code == 404 and text == "Not Found":
            text = f"No such endpoint: {request.method} {request.url.path}"
        if exc.status_code == 405:
            text = f"Method {request.method} is not allowed here"
        return outcome_response(
            exc.status_code, [Issue(code=code, diagnostics=text)], dict(exc.headers or {})
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        issues = [
            Issue(
                code="invalid" if err.get("type") != "json_invalid" else "structure",
                diagnostics=str(err.get("msg", "invalid")),
                expression=(_loc(tuple(err.get("loc", ()))),),
            )
            for err in exc.errors()
        ]
        return outcome_response(400, issues or [Issue(code="invalid", diagnostics="Invalid request")])

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Class and SQLSTATE only; the traceback is rendered without messages (shared.logging).
        log.exception("http.unhandled", method=request.method, error=describe_exception(exc))
        return outcome_response(
            500,
            [Issue(code="exception", diagnostics="Internal error; see the server log for this request id")],
        )


#: The request metrics' children per (method, route template, status): a bounded set (routes are
#: templates, ``<unmatched>`` for the rest).
_SERIES: dict[tuple[str, str, int], tuple[Any, Any]] = {}


class RequestContextMiddleware:
    """Correlation id (``X-Request-ID``, echoed back) and per-route metrics, as pure ASGI."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope.get("headers") or ():
            if name == b"x-request-id":  # the last one, as before (a dict of the headers)
                incoming = value.decode("latin-1")
        rid = incoming if incoming and len(incoming) <= 128 and incoming.isprintable() else new_request_id()
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status = 500

        async def _send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or "<unmatched>"
            method = scope.get("method", "")
            elapsed = time.perf_counter() - start
            series = _SERIES.get((method, template, status))
            if series is None:  # prometheus_client's labels(): validation and a lock, once a series
                series = _SERIES[(method, template, status)] = (
                    REQUESTS.labels(method, template, str(status)),
                    LATENCY.labels(method, template),
                )
            series[0].inc()
            series[1].observe(elapsed)
            if template not in ("/livez", "/readyz", "/metrics"):
                log.info(
                    "http.request", method=method, route=template, status=status, ms=round(elapsed * 1000, 1)
                )
            request_id_var.reset(token)


class UnstorableUrlGuard:
    """A URL whose path or query holds a NUL (``%00``) is a 400 before any route sees it: a NUL
    cannot be a FHIR id or search value, and PostgreSQL refuses it in a query parameter where
    SQLite would not (the same answer on both backends)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b"")
        ):
            where = "path" if "\x00" in scope.get("path", "") else "query"
            response = outcome_response(
                400, [Issue("invalid", f"The URL's {where} holds a NUL character (%00)", expression=(where,))]
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def database_check(engine: Engine) -> Check:
    def check() -> str:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception as exc:
            return f"unreachable: {type(exc).__name__}"
        return "ok"

    return check


def migrations_check(engine: Engine) -> Check:
    def check() -> str:
        try:
            return "ok" if migrations_at_head(engine) else "not at head: run `pinpoint db upgrade`"
        except Exception as exc:
            return f"unknown: {type(exc).__name__}"

    return check


def ops_router(runtime: Runtime) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    def readyz() -> JSONResponse:
        results = {name: check() for name, check in runtime.checks.items()}
        ok = all(v == "ok" for v in results.values())
        return JSONResponse(
            {"status": "ok" if ok else "fail", "checks": results}, status_code=200 if ok else 503
        )

    @router.get("/metrics")
    def metrics() -> Response:
        body = generate_latest(REGISTRY) + generate_latest(runtime.metrics)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router


#: What a body refused for its size leaves to look at (its dead letter's payload): its first bytes.
HEAD_BYTES = 64 * 1024


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 (:class:`TooLarge`, an OperationOutcome) past ``limit`` bytes —
    refused on the declared Content-Length after reading only its first :data:`HEAD_BYTES`,
    else as soon as the stream passes the limit. Memory stays within ``limit``; the error
    carries the body's first bytes and its size. The one way Pinpoint reads a request body."""
    declared = request.headers.get("content-length", "")
    head = bytearray()
    if declared.isdigit() and int(declared) > limit:
        async for chunk in request.stream():
            head += chunk[: HEAD_BYTES - len(head)]
            if len(head) >= HEAD_BYTES:
                break
        raise TooLarge(
            f"The body ({int(declared):,} bytes) is over this endpoint's limit of {limit:,} bytes",
            head=bytes(head),
            size=int(declared),
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            for part in (*chunks, chunk):
                head += part[: HEAD_BYTES - len(head)]
                if len(head) >= HEAD_BYTES:
                    break
            raise TooLarge(
                f"The body is over this endpoint's limit of {limit:,} bytes",
                head=bytes(head),
                size=size,
                size_exact=False,
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, model: type[ModelT], limit: int) -> ModelT | None:
    """A small JSON body (an admin command) read by :func:`read_body` and validated by ``model``;
    ``None`` when empty. Routes use this instead of a FastAPI ``Body`` parameter, which would read
    the body without a limit."""
    raw = await read_body(request, limit)
    if not raw.strip():
        return None
    refuse_unstorable_json(raw)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None


def json_request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` describing the optional JSON body a route reads with :func:`read_json`."""
    return {
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


async def get_runtime(request: Request) -> Runtime:
    """Async on purpose: FastAPI runs a sync dependency in its thread pool, a hop per request."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def token_matches(token: str | None, allowed: list[str]) -> bool:
    """Constant-time membership test of a bearer token."""
    if token is None:
        return False
    found = False
    for candidate in allowed:
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


def check_api_token(request: Request, settings: Settings) -> None:
    """Patient-data reads need an API (or admin) token once any credential is configured (with
    none, only loopback binding is allowed and everything is open — CONTRACT §2). A deployment
    with source or CDS credentials but no API tokens has its reads closed, not open."""
    allowed = [*settings.api_tokens, *settings.admin_tokens]
    if not allowed and not settings.auth_configured:
        return
    if not token_matches(_bearer(request), allowed):
        raise Unauthorized("A valid API bearer token is required")


async def require_api_token(request: Request, runtime: RuntimeDep) -> None:
    """Dependency form of :func:`check_api_token` (async: no thread-pool hop)."""
    check_api_token(request, runtime.settings)


async def require_admin_token(request: Request, runtime: RuntimeDep) -> None:
    settings = runtime.settings
    if not settings.admin_tokens and not settings.api_tokens and not settings.auth_configured:
        return
    token = _bearer(request)
    if not token_matches(token, settings.admin_tokens):
        if token_matches(token, settings.api_tokens):
            raise Forbidden("An admin token is required")
        raise Unauthorized("A valid admin bearer token is required")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # lazy

    try:
        return version("pinpoint")
    except PackageNotFoundError:
        return "unknown"


def create_app(runtime: Runtime, title: str) -> FastAPI:
    """A FastAPI app with the shared middleware, handlers, probes and lifespan."""
    runtime.checks.setdefault("database", database_check(runtime.engine))
    runtime.checks.setdefault("migrations", migrations_check(runtime.engine))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(task(), name=name) for name, task in runtime.background]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with suppress(asyncio.CancelledError, Exception):
                    await t
            for hook in runtime.on_shutdown:
                await hook()

    # API docs with Swagger UI's assets served from the fastapi-offline package: no CDN, so the
    # page works on a hospital network without internet access (validator badge off: it calls out).
    app: FastAPI = FastAPIOffline(
        title=title,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        swagger_ui_parameters={"validatorUrl": None},
        version=_version(),
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    if runtime.settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=runtime.settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["*"],
        )
    app.add_middleware(UnstorableUrlGuard)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(ops_router(runtime))
    return app
