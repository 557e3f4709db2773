"""An in-memory FHIR R4 server for integration tests and demos.

    fake = FakeFhirServer()                         # or FakeFhirServer(auth=FakeSmartAuth(...))
    with serve_in_thread(fake) as live:             # uvicorn on 127.0.0.1, a free port
        live.base_url                               # "http://127.0.0.1:PORT/fhir"
        live.token_url                              # "http://127.0.0.1:PORT/auth/token"
        fake.inject("GET", "Patient/*", Fault.error(503), Fault.throttle(retry_after="0"))
        ... drive a FhirClient against live.base_url ...
        fake.requests                               # what arrived, in order

Without a socket: ``httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app),
base_url="http://fake")`` and the base ``http://fake/fhir``.

What it does (deliberately small, but strict where Pinpoint relies on the standard):

- CRUD with ``meta.versionId``/``meta.lastUpdated``, ``ETag: W/"n"``, ``Last-Modified`` and
  ``Location`` headers; vread; delete (then 410 Gone).
- conditional create (``If-None-Exist``), conditional update (``PUT {type}?criteria``) and
  ``If-Match`` version checks (mismatch → 412).
- ``transaction`` Bundles (all-or-nothing: processed on a copy of the store that replaces it only
  on success; DELETE, POST, PUT, GET order; ``urn:uuid`` references resolved; ``ifNoneExist`` /
  ``ifMatch``) and ``batch`` Bundles (entry by entry).
- search ``{type}?`` with ``_id``, ``identifier``, ``patient``, ``subject``, ``status``, ``code``,
  ``_lastUpdated`` (gt/ge/lt/le/eq), ``_count`` and paging by ``next`` links (``_offset``);
  any other parameter is answered 400 ``not-supported`` so a test cannot pass by accident.
- ``GET metadata`` (CapabilityStatement) and ``GET .well-known/smart-configuration``.
- Subscriptions: a Subscription created as ``requested`` becomes ``active``; a classic criteria
  (``Observation?patient=…``) records an event for every matching create/update; topic-based ones
  get events from :meth:`FakeFhirServer.emit_event`. ``Subscription/{id}/$events`` answers a
  Backport-R4 notification-shaped ``history`` Bundle (``query-event``) for
  ``eventsSinceNumber``..``eventsUntilNumber``; ``$status`` a searchset with the status.
  Nothing is pushed by itself: a test calls :meth:`FakeFhirServer.deliver` (topic-based: POST of
  the notification Bundle; classic: HAPI-style ``PUT {endpoint}/{type}/{id}`` or an empty POST)
  or builds a Bundle with :meth:`FakeFhirServer.notification_bundle` (handshake, heartbeat, …).
- SMART Backend Services: with ``auth=FakeSmartAuth(clients={client_id: public_jwks})`` the token
  endpoint verifies the client assertion (registered client, ``kid``, RS384/ES384 signature,
  ``aud`` = token URL, ``iss`` = ``sub``, ``exp`` ≤ 5 min ahead, ``jti`` not replayed) and every
  resource route (not ``metadata`` / ``.well-known``) then requires a valid bearer token.
- SMART App Launch (the EHR's authorization server): with ``ehr=FakeEhrAuth(apps={client_id:
  [redirect_uri, ...]})`` the smart-configuration lists ``authorization_endpoint`` and
  ``code_challenge_methods_supported: ["S256"]``; ``GET /auth/authorize`` checks the client,
  redirect URI, ``aud`` (this FHIR base), ``state``, a launch made by
  :meth:`FakeFhirServer.new_launch` and a PKCE S256 challenge, then redirects back with a one-time
  code; the token endpoint exchanges it (same redirect URI, the verifier hashing to the challenge,
  HTTP Basic for a client with a secret) for a bearer token with ``patient`` (and the launch's
  ``appContext``); resource routes then need that token (``require_token``).
- fault injection: :meth:`FakeFhirServer.inject` queues scripted :class:`Fault` answers for a
  method and path pattern, consumed before normal handling (even before auth).
- a request log (:attr:`FakeFhirServer.requests`) for assertions; :meth:`FakeFhirServer.put`,
  :meth:`FakeFhirServer.load_bundle` (e.g. a clinical vignette) and :meth:`FakeFhirServer.get` /
  :meth:`FakeFhirServer.all` to arrange and inspect state directly.
- a demo: ``python -m tests.fakes.fhir_server --port 8090 --load bundle.json``.

Errors are OperationOutcomes. Thread-safe: the test thread may inspect and script it while
uvicorn serves from another thread.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import fnmatch
import hashlib
import hmac
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode

import httpx
import jwt
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

from shared.errors import (
    Gone,
    InvalidInput,
    Issue,
    NotFound,
    PinpointError,
    PreconditionFailed,
    Unauthorized,
    operation_outcome,
)

FHIR_JSON = "application/fhir+json"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SUPPORTED_SEARCH = frozenset(
    {"_id", "identifier", "patient", "subject", "status", "code", "url", "_lastUpdated", "_count", "_offset"}
)
PAGING = frozenset({"_count", "_offset"})


class NotSupported(PinpointError):
    def __init__(self, diagnostics: str) -> None:
        super().__init__(diagnostics, 400, "not-supported")


# ---------------------------------------------------------------------------------- public knobs


@dataclass(frozen=True)
class Fault:
    """A scripted answer. ``status=None`` only delays, then the request is handled normally."""

    status: int | None = None
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0

    @classmethod
    def error(cls, status: int, code: str = "transient", headers: Mapping[str, str] | None = None) -> Fault:
        """An error status with an OperationOutcome body."""
        body = operation_outcome([Issue(code=code, diagnostics=f"injected {status}")])
        return cls(status=status, body=body, headers=dict(headers or {}))

    @classmethod
    def throttle(cls, retry_after: str = "1") -> Fault:
        """429 Too Many Requests with ``Retry-After`` (seconds or an HTTP date)."""
        return cls.error(429, "throttled", {"Retry-After": retry_after})

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Answer normally, but only after ``seconds`` (e.g. longer than the client's timeout)."""
        return cls(delay=seconds)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it. ``path`` is relative to the base ("Patient/1", "" for the
    base itself); paths outside the base keep their leading slash ("/auth/token")."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def params(self) -> list[tuple[str, str]]:
        return parse_qsl(self.query, keep_blank_values=True)


@dataclass
class FakeSmartAuth:
    """SMART Backend Services on the fake: registered clients (client_id → public JWKS)."""

    clients: dict[str, dict[str, Any]]
    token_lifetime: int = 300
    leeway: float = 5.0


@dataclass
class FakeEhrAuth:
    """The EHR's authorization server for SMART App Launch (EHR launch, authorization code with
    PKCE S256): registered apps (client_id → redirect URIs, and a secret for a confidential
    client); launches made with :meth:`FakeFhirServer.new_launch` carry the patient (and the
    card's ``appContext``) into the token response. ``require_token``: resource routes then need
    a token this server issued (as a real EHR's FHIR server)."""

    apps: dict[str, list[str]]
    secrets: dict[str, str] = field(default_factory=dict)
    token_lifetime: int = 3600
    require_token: bool = True


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    patient: str
    app_context: str | None
    scope: str
    used: bool = False


# ---------------------------------------------------------------------------------- the store


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _now_instant(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_instant(value: str) -> datetime:
    text = value.strip()
    if len(text) == 10:  # a date
        d = date.fromisoformat(text)
        return datetime(d.year, d.month, d.day, tzinfo=UTC)
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def dicts_in(value: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object inside ``value`` (itself included), depth first."""
    if isinstance(value, dict):
        yield value
        for child in value.values():
            yield from dicts_in(child)
    elif isinstance(value, list):
        for child in value:
            yield from dicts_in(child)


def _references(value: Any) -> Iterator[dict[str, Any]]:
    """Every Reference-like dict (has a string ``reference``) inside a resource. A resource is
    never one (DetectedIssue has a top-level ``reference`` uri)."""
    return (d for d in dicts_in(value) if isinstance(d.get("reference"), str) and "resourceType" not in d)


def _token_matches(codings: list[dict[str, Any]], token: str) -> bool:
    if "|" in token:
        system, _, code = token.partition("|")
        return any(
            (not system or c.get("system") == system) and (not code or c.get("value", c.get("code")) == code)
            for c in codings
        )
    return any(c.get("value", c.get("code")) == token for c in codings)


@dataclass
class _Entry:
    versions: list[dict[str, Any]]
    deleted: bool = False

    @property
    def current(self) -> dict[str, Any]:
        return self.versions[-1]


@dataclass
class _Event:
    number: int
    timestamp: str
    focus: str
    interaction: str = "update"  # create | update | delete (classic subscriptions)


@dataclass
class _Store:
    """All state that a transaction must change all-or-nothing."""

    resources: dict[str, dict[str, _Entry]] = field(default_factory=dict)
    events: dict[str, list[_Event]] = field(default_factory=dict)
    last_ts: datetime = field(default_factory=lambda: datetime(2000, 1, 1, tzinfo=UTC))
    next_id: int = 1

    # -- bookkeeping

    def tick(self) -> str:
        """A strictly increasing lastUpdated (so _lastUpdated=gt… never loses a write)."""
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # instants carry milliseconds
        if now <= self.last_ts:
            now = self.last_ts + timedelta(milliseconds=1)
        self.last_ts = now
        return _now_instant(now)

    def new_id(self) -> str:
        value = str(self.next_id)
        self.next_id += 1
        return value

    def entry(self, rtype: str, rid: str) -> _Entry | None:
        return self.resources.get(rtype, {}).get(rid)

    # -- interactions

    def read(self, rtype: str, rid: str) -> dict[str, Any]:
        entry = self.entry(rtype, rid)
        if entry is None:
            raise NotFound(f"{rtype}/{rid} is not known")
        if entry.deleted:
            raise Gone(f"{rtype}/{rid} was deleted")
        return entry.current

    def vread(self, rtype: str, rid: str, vid: str) -> dict[str, Any]:
        entry = self.entry(rtype, rid)
        for version in entry.versions if entry else []:
            if version["meta"]["versionId"] == vid:
                return version
        raise NotFound(f"{rtype}/{rid}/_history/{vid} is not known")

    def _write(self, rtype: str, rid: str, body: dict[str, Any]) -> dict[str, Any]:
        entry = self.entry(rtype, rid)
        version = len(entry.versions) + 1 if entry else 1
        resource = copy.deepcopy(body)
        resource["id"] = rid
        meta = dict(resource.get("meta") or {})
        meta.update(versionId=str(version), lastUpdated=self.tick())
        resource["meta"] = meta
        if rtype == "Subscription" and resource.get("status") == "requested":
            resource["status"] = "active"  # no handshake in the fake: activate at once
        if entry is None:
            self.resources.setdefault(rtype, {})[rid] = _Entry([resource])
        else:
            entry.versions.append(resource)
            entry.deleted = False
        self._record_events(resource)
        return resource

    def create(
        self, rtype: str, body: dict[str, Any], if_none_exist: str | None = None, rid: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        _check_body(rtype, body)
        if if_none_exist:
            matches = self.search(rtype, parse_qsl(if_none_exist, keep_blank_values=True))
            if len(matches) > 1:
                raise PreconditionFailed(f"If-None-Exist matched {len(matches)} {rtype} resources")
            if matches:
                return 200, matches[0]
        return 201, self._write(rtype, rid or self.new_id(), body)

    def update(
        self, rtype: str, rid: str, body: dict[str, Any], if_match: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        _check_body(rtype, body)
        if body.get("id") != rid:
            raise InvalidInput(f"the resource id does not match the URL {rtype}/{rid}")
        entry = self.entry(rtype, rid)
        exists = entry is not None and not entry.deleted
        if if_match is not None:
            current = entry.current["meta"]["versionId"] if exists and entry else None
            if current is None or if_match not in (f'W/"{current}"', f'"{current}"'):
                raise PreconditionFailed(f"If-Match {if_match} does not match the current version of {rtype}")
        return (200 if exists else 201), self._write(rtype, rid, body)

    def conditional_update(
        self, rtype: str, criteria: list[tuple[str, str]], body: dict[str, Any], if_match: str | None
    ) -> tuple[int, dict[str, Any]]:
        _check_body(rtype, body)
        matches = self.search(rtype, criteria)
        if len(matches) > 1:
            raise PreconditionFailed(f"conditional update matched {len(matches)} {rtype} resources")
        if not matches:
            if if_match is not None:
                raise PreconditionFailed("If-Match on a conditional update that matched nothing")
            return 201, self._write(rtype, str(body.get("id") or self.new_id()), body)
        rid = matches[0]["id"]
        if body.get("id") not in (None, rid):
            raise InvalidInput("the resource id does not match the resource the criteria found")
        return self.update(rtype, rid, {**body, "id": rid}, if_match)

    def delete(self, rtype: str, rid: str) -> None:
        entry = self.entry(rtype, rid)
        if entry is None:
            raise NotFound(f"{rtype}/{rid} is not known")
        entry.deleted = True
        self._record_events(entry.current, interaction="delete")

    # -- search

    def search(self, rtype: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        for name, _ in params:
            if name.split(":")[0] not in SUPPORTED_SEARCH:
                raise NotSupported(f"search parameter {name} is not supported by the fake server")
        found = [
            e.current
            for e in self.resources.get(rtype, {}).values()
            if not e.deleted and all(_matches(e.current, n, v) for n, v in params if n not in PAGING)
        ]
        return sorted(found, key=lambda r: (r["meta"]["lastUpdated"], r["id"]))

    # -- subscriptions

    def _record_events(self, resource: dict[str, Any], interaction: str | None = None) -> None:
        rtype = resource["resourceType"]
        if interaction is None:
            interaction = "create" if resource.get("meta", {}).get("versionId") == "1" else "update"
        for sid, entry in self.resources.get("Subscription", {}).items():
            sub = entry.current
            criteria = str(sub.get("criteria", ""))
            if entry.deleted or sub.get("status") != "active" or criteria.split("?")[0] != rtype:
                continue
            query = parse_qsl(criteria.partition("?")[2], keep_blank_values=True)
            if all(_matches(resource, n, v) for n, v in query):
                self.add_event(sid, f"{rtype}/{resource['id']}", interaction)

    def add_event(self, subscription_id: str, focus: str, interaction: str = "update") -> int:
        events = self.events.setdefault(subscription_id, [])
        number = len(events) + 1
        events.append(_Event(number, self.tick(), focus, interaction))
        return number


def _payload_content(subscription: Mapping[str, Any]) -> str:
    """The Backport ``backport-payload-content`` of a Subscription (default ``id-only``)."""
    extensions = ((subscription.get("channel") or {}).get("_payload") or {}).get("extension") or []
    for ext in extensions:
        if str(ext.get("url", "")).endswith("backport-payload-content") and ext.get("valueCode"):
            return str(ext["valueCode"])
    return "id-only"


def _check_body(rtype: str, body: Any) -> None:
    if not isinstance(body, dict) or body.get("resourceType") != rtype:
        raise InvalidInput(f"the body is not a {rtype} resource")


def _matches(resource: dict[str, Any], name: str, value: str) -> bool:
    """One search parameter against one resource (comma = OR). Only what the tests need."""
    alternatives = value.split(",")
    if name == "_id":
        return resource.get("id") in alternatives
    if name == "identifier":
        idents = [i for i in resource.get("identifier") or [] if isinstance(i, dict)]
        return any(_token_matches(idents, alt) for alt in alternatives)
    if name in ("patient", "subject"):
        fields = ("subject", "patient") if name == "patient" else ("subject",)
        refs = [str((resource.get(f) or {}).get("reference", "")) for f in fields]
        wanted = [a if "/" in a else f"Patient/{a}" for a in alternatives]
        return any(ref == w or ref.endswith("/" + w) for ref in refs for w in wanted)
    if name == "status":
        return resource.get("status") in alternatives
    if name == "url":  # Subscription: its channel endpoint
        return (resource.get("channel") or {}).get("endpoint") in alternatives or resource.get(
            "url"
        ) in alternatives
    if name == "code":
        codings = [c for c in (resource.get("code") or {}).get("coding") or [] if isinstance(c, dict)]
        return any(_token_matches(codings, alt) for alt in alternatives)
    if name == "_lastUpdated":
        prefix, stamp = (
            (value[:2], value[2:]) if value[:2] in ("gt", "ge", "lt", "le", "eq") else ("eq", value)
        )
        have, bound = _parse_instant(resource["meta"]["lastUpdated"]), _parse_instant(stamp)
        return {
            "gt": have > bound,
            "ge": have >= bound,
            "lt": have < bound,
            "le": have <= bound,
            "eq": have == bound,
        }[prefix]
    raise NotSupported(f"search parameter {name} is not supported by the fake server")


# ---------------------------------------------------------------------------------- the server


def _fhir(status: int, body: Any = None, headers: Mapping[str, str] | None = None) -> Response:
    content = b"" if body is None else orjson.dumps(body)
    return Response(content, status_code=status, headers=dict(headers or {}), media_type=FHIR_JSON)


def _version_headers(base: str, resource: dict[str, Any]) -> dict[str, str]:
    vid = resource["meta"]["versionId"]
    modified = _parse_instant(resource["meta"]["lastUpdated"])
    return {
        "ETag": f'W/"{vid}"',
        "Last-Modified": format_datetime(modified, usegmt=True),
        "Location": f"{base}/{resource['resourceType']}/{resource['id']}/_history/{vid}",
    }


class FakeFhirServer:
    """State, scripting and the FastAPI app (:attr:`app`) of the fake FHIR server."""

    def __init__(
        self,
        *,
        base_path: str = "/fhir",
        token_path: str = "/auth/token",
        auth: FakeSmartAuth | None = None,
        ehr: FakeEhrAuth | None = None,
        authorize_path: str = "/auth/authorize",
        default_page_size: int = 20,
        next_link_base: str | None = None,
    ) -> None:
        self.base_path = "/" + base_path.strip("/")
        self.token_path = token_path
        self.auth = auth
        self.ehr = ehr
        self.authorize_path = authorize_path
        self._launches: dict[str, tuple[str, str | None]] = {}  # launch id -> (patient, appContext)
        self._grants: dict[str, _Grant] = {}  # authorization code -> what it grants
        self.token_patients: dict[str, str] = {}  # access token -> patient (EHR launches)
        self.default_page_size = default_page_size
        self.next_link_base = next_link_base
        """Write ``next`` links with this base instead of the real one (to play a misconfigured proxy)."""
        self._lock = threading.RLock()
        self._store = _Store()
        self._faults: list[tuple[str, str, list[Fault]]] = []
        self._requests: list[RecordedRequest] = []
        self._tokens: dict[str, float] = {}  # token -> expiry (epoch seconds)
        self._seen_jti: set[str] = set()
        self._delivered: dict[str, int] = {}  # subscription id -> last event number pushed
        self.app = self._build_app()

    # -- for tests: scripting and inspection

    def inject(self, method: str, path: str, *faults: Fault) -> None:
        """Queue ``faults`` for requests whose method and path (relative to the base, glob allowed,
        e.g. ``"Patient/*"``; ``"/auth/token"`` for the token endpoint) match. Each fault answers
        one request, in order; afterwards requests are handled normally."""
        with self._lock:
            self._faults.append((method.upper(), path, list(faults)))

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        """The logged requests matching a method and a path glob."""
        return [r for r in self.requests if r.method == method.upper() and fnmatch.fnmatchcase(r.path, path)]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def put(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Store a resource directly (its ``id`` kept or assigned); returns the stored version."""
        with self._lock:
            rid = str(resource.get("id") or self._store.new_id())
            return copy.deepcopy(self._store._write(resource["resourceType"], rid, {**resource, "id": rid}))

    def load_bundle(self, bundle: Mapping[str, Any]) -> int:
        """Store every ``entry.resource`` of a Bundle (e.g. a vignette), keeping ids; returns the count."""
        count = 0
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
                self.put(resource)
                count += 1
        return count

    def get(self, rtype: str, rid: str) -> dict[str, Any] | None:
        """The current version, or None when unknown or deleted."""
        with self._lock:
            entry = self._store.entry(rtype, rid)
            return None if entry is None or entry.deleted else copy.deepcopy(entry.current)

    def all(self, rtype: str) -> list[dict[str, Any]]:
        """Every live resource of a type, oldest first."""
        with self._lock:
            return copy.deepcopy(self._store.search(rtype, []))

    def emit_event(self, subscription_id: str, focus: str) -> int:
        """Record a subscription event (for topic-based subscriptions); returns its event number."""
        with self._lock:
            self._store.read("Subscription", subscription_id)
            return self._store.add_event(subscription_id, focus)

    def new_launch(self, patient: str, app_context: str | None = None) -> str:
        """An EHR launch id for ``patient`` (what the EHR puts in ``launch=`` when it opens an app)."""
        launch = secrets.token_urlsafe(12)
        with self._lock:
            self._launches[launch] = (patient, app_context)
        return launch

    def revoke_tokens(self) -> None:
        """Invalidate every issued bearer token (the next resource request gets 401)."""
        with self._lock:
            self._tokens.clear()

    @property
    def tokens_issued(self) -> int:
        """How many token requests succeeded."""
        return sum(1 for r in self.requests_to("POST", self.token_path) if r.status == 200)

    # -- plumbing

    def _relative(self, path: str) -> str:
        if path == self.base_path or path.startswith(self.base_path + "/"):
            return path[len(self.base_path) :].strip("/")
        return path

    def _take_fault(self, method: str, rel: str) -> Fault | None:
        with self._lock:
            for fault_method, pattern, queue in self._faults:
                if queue and fault_method == method and fnmatch.fnmatchcase(rel, pattern):
                    return queue.pop(0)
        return None

    def _base_url(self, request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}{self.base_path}"

    def _requires_token(self, rel: str, path: str) -> bool:
        guarded = self.auth is not None or (self.ehr is not None and self.ehr.require_token)
        if not guarded or path in (self.token_path, self.authorize_path):
            return False
        return rel not in ("metadata", ".well-known/smart-configuration") and (
            path == self.base_path or path.startswith(self.base_path + "/")
        )

    def _check_bearer(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        with self._lock:
            expiry = self._tokens.get(token) if scheme.lower() == "bearer" else None
        if expiry is None or expiry <= time.time():
            raise Unauthorized("a valid bearer token is required")

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="Pinpoint fake FHIR server", openapi_url=None, docs_url=None, redoc_url=None)
        base = self.base_path

        @app.exception_handler(PinpointError)
        async def on_error(_: Request, exc: PinpointError) -> Response:
            return _fhir(exc.status, exc.outcome(), exc.headers)

        @app.middleware("http")
        async def faults_auth_and_log(request: Request, call_next: Callable[[Request], Any]) -> Response:
            body = await request.body()
            path = request.url.path
            rel = self._relative(path)
            fault = self._take_fault(request.method, rel)
            response: Response
            if fault is not None and fault.delay:
                await asyncio.sleep(fault.delay)
            if fault is not None and fault.status is not None:
                response = _fhir(fault.status, fault.body, fault.headers)
            else:
                try:
                    if self._requires_token(rel, path):
                        self._check_bearer(request)
                    response = await call_next(request)
                except PinpointError as exc:
                    response = _fhir(exc.status, exc.outcome(), exc.headers)
            with self._lock:
                self._requests.append(
                    RecordedRequest(
                        request.method,
                        rel,
                        request.url.query,
                        dict(request.headers),
                        body,
                        response.status_code,
                    )
                )
            return response

        @app.get(base + "/metadata")
        async def metadata(request: Request) -> Response:
            return _fhir(200, self._capability_statement(request))

        @app.get(base + "/.well-known/smart-configuration")
        async def smart_configuration(request: Request) -> Response:
            origin = f"{request.url.scheme}://{request.url.netloc}"
            config: dict[str, Any] = {
                "token_endpoint": origin + self.token_path,
                "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
                "scopes_supported": ["system/*.cruds"],
                "capabilities": ["client-confidential-asymmetric", "permission-v2"],
            }
            if self.ehr is not None:
                config["authorization_endpoint"] = origin + self.authorize_path
                config["grant_types_supported"].append("authorization_code")
                config["token_endpoint_auth_methods_supported"] += ["client_secret_basic", "none"]
                config["code_challenge_methods_supported"] = ["S256"]
                config["scopes_supported"] += ["launch", "openid", "fhirUser", "patient/*.rs"]
                config["capabilities"] += ["launch-ehr", "client-public", "client-confidential-symmetric"]
            return Response(orjson.dumps(config), media_type="application/json")

        @app.get(self.authorize_path)
        async def authorize(request: Request) -> Response:
            return self._authorize(request)

        @app.post(self.token_path)
        async def token(request: Request) -> Response:
            return self._token_endpoint(request, await request.body())

        @app.post(base)
        @app.post(base + "/")
        async def bundle(request: Request) -> Response:
            return self._bundle(request, await _json_body(request))

        @app.get(base + "/Subscription/{sid}/$events")
        @app.post(base + "/Subscription/{sid}/$events")
        async def events(request: Request, sid: str) -> Response:
            return _fhir(200, self._events_bundle(request, sid))

        @app.get(base + "/Subscription/{sid}/$status")
        async def status(request: Request, sid: str) -> Response:
            return _fhir(200, self._status_bundle(request, sid))

        @app.get(base + "/{rtype}")
        async def search(request: Request, rtype: str) -> Response:
            return _fhir(200, self._search_bundle(request, rtype))

        @app.post(base + "/{rtype}")
        async def create(request: Request, rtype: str) -> Response:
            body = await _json_body(request)
            with self._lock:
                status, resource = self._store.create(rtype, body, request.headers.get("if-none-exist"))
            return self._write_response(request, status, resource)

        @app.put(base + "/{rtype}")
        async def conditional_update(request: Request, rtype: str) -> Response:
            criteria = parse_qsl(request.url.query, keep_blank_values=True)
            if not criteria:
                raise InvalidInput("conditional update needs search criteria")
            body = await _json_body(request)
            with self._lock:
                status, resource = self._store.conditional_update(
                    rtype, criteria, body, request.headers.get("if-match")
                )
            return self._write_response(request, status, resource)

        @app.get(base + "/{rtype}/{rid}")
        async def read(request: Request, rtype: str, rid: str) -> Response:
            with self._lock:
                resource = copy.deepcopy(self._store.read(rtype, rid))
            return _fhir(200, resource, _version_headers(self._base_url(request), resource))

        @app.get(base + "/{rtype}/{rid}/_history/{vid}")
        async def vread(request: Request, rtype: str, rid: str, vid: str) -> Response:
            with self._lock:
                resource = copy.deepcopy(self._store.vread(rtype, rid, vid))
            return _fhir(200, resource, _version_headers(self._base_url(request), resource))

        @app.put(base + "/{rtype}/{rid}")
        async def update(request: Request, rtype: str, rid: str) -> Response:
            body = await _json_body(request)
            with self._lock:
                status, resource = self._store.update(rtype, rid, body, request.headers.get("if-match"))
            return self._write_response(request, status, resource)

        @app.delete(base + "/{rtype}/{rid}")
        async def delete(rtype: str, rid: str) -> Response:
            with self._lock:
                self._store.delete(rtype, rid)
            return Response(status_code=204)

        return app

    def _write_response(self, request: Request, status: int, resource: dict[str, Any]) -> Response:
        headers = _version_headers(self._base_url(request), resource)
        minimal = "return=minimal" in request.headers.get("prefer", "")
        return _fhir(status, None if minimal else copy.deepcopy(resource), headers)

    # -- search and paging

    def _search_bundle(self, request: Request, rtype: str) -> dict[str, Any]:
        params = parse_qsl(request.url.query, keep_blank_values=True)
        paging = dict(p for p in params if p[0] in PAGING)
        try:
            count = int(paging.get("_count", self.default_page_size))
            offset = int(paging.get("_offset", 0))
        except ValueError as exc:
            raise InvalidInput("_count and _offset must be integers") from exc
        if count < 0 or offset < 0:
            raise InvalidInput("_count and _offset must not be negative")
        with self._lock:
            matches = copy.deepcopy(self._store.search(rtype, params))
        base = self._base_url(request)
        page = matches[offset : offset + count]
        criteria = [p for p in params if p[0] not in PAGING]
        links = [{"relation": "self", "url": f"{base}/{rtype}?{request.url.query}"}]
        if offset + count < len(matches) and count > 0:
            next_query = urlencode([*criteria, ("_count", str(count)), ("_offset", str(offset + count))])
            links.append({"relation": "next", "url": f"{self.next_link_base or base}/{rtype}?{next_query}"})
        return {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "searchset",
            "total": len(matches),
            "link": links,
            "entry": [
                {"fullUrl": f"{base}/{rtype}/{r['id']}", "resource": r, "search": {"mode": "match"}}
                for r in page
            ],
        }

    # -- transactions and batches

    def _bundle(self, request: Request, bundle: Any) -> Response:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise InvalidInput("POST to the base needs a Bundle")
        kind = bundle.get("type")
        if kind not in ("transaction", "batch"):
            raise InvalidInput("only transaction and batch Bundles can be posted to the base")
        entries = bundle.get("entry") or []
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("request"), dict) for e in entries
        ):
            raise InvalidInput("every entry needs a request")
        representation = "return=representation" in request.headers.get("prefer", "")
        base = self._base_url(request)
        with self._lock:
            if kind == "batch":
                responses = [self._batch_entry(base, e, representation) for e in entries]
            else:
                work = copy.deepcopy(self._store)
                responses = _run_transaction(work, base, entries, representation)
                self._store = work  # reached only when every entry succeeded
        return _fhir(200, {"resourceType": "Bundle", "type": f"{kind}-response", "entry": responses})

    def _batch_entry(self, base: str, entry: dict[str, Any], representation: bool) -> dict[str, Any]:
        try:
            return _run_transaction(self._store, base, [entry], representation)[0]
        except PinpointError as exc:
            return {"response": {"status": str(exc.status), "outcome": exc.outcome()}}

    # -- subscriptions

    def notification_bundle(
        self,
        subscription_id: str,
        *,
        kind: str = "event-notification",
        base_url: str = "http://fake/fhir",
        since: int = 1,
        until: int | None = None,
        content: str | None = None,
        shape: str = "r4-backport",
        numbers_as_int: bool = False,
        only: Collection[int] | None = None,
    ) -> dict[str, Any]:
        """A notification Bundle: the status first, then one entry per focus (``id-only``:
        ``fullUrl`` + ``request``; ``full-resource``: with the resource).

        ``shape`` ``r4-backport``: a ``history`` Bundle with a Backport-R4 ``Parameters`` status;
        ``r5``: a ``subscription-notification`` Bundle with an R5 ``SubscriptionStatus``
        (integer64 as JSON strings, or numbers with ``numbers_as_int`` as some servers write them).
        ``kind`` is ``event-notification``, ``query-event`` (what ``$events`` answers),
        ``handshake`` or ``heartbeat`` (these two carry no events). Events ``since``..``until``
        (inclusive; ``only`` restricts to those numbers) are listed; ``content`` defaults to the
        Subscription's ``backport-payload-content`` or id-only.
        """
        if shape not in ("r4-backport", "r5"):
            raise InvalidInput("shape must be r4-backport or r5")
        with self._lock:
            subscription = self._store.read("Subscription", subscription_id)
            content = content or _payload_content(subscription)
            if content not in ("empty", "id-only", "full-resource"):
                raise InvalidInput("content must be empty, id-only or full-resource")
            all_events = self._store.events.get(subscription_id, [])
            events = (
                []
                if kind in ("handshake", "heartbeat")
                else [
                    e
                    for e in all_events
                    if e.number >= since
                    and (until is None or e.number <= until)
                    and (only is None or e.number in only)
                ]
            )

            def number(value: int) -> int | str:
                return value if numbers_as_int else str(value)

            topic = str(subscription.get("criteria", ""))
            topic = topic if topic.startswith("http") else str(subscription.get("topic") or "")
            status_id = str(uuid.uuid4())
            status_resource: dict[str, Any]
            if shape == "r5":
                status_resource = {
                    "resourceType": "SubscriptionStatus",
                    "id": status_id,
                    "status": subscription.get("status", "active"),
                    "type": kind,
                    "eventsSinceSubscriptionStart": number(len(all_events)),
                    "subscription": {"reference": f"{base_url}/Subscription/{subscription_id}"},
                }
                if topic:
                    status_resource["topic"] = topic
                if events:
                    status_resource["notificationEvent"] = [
                        {
                            "eventNumber": number(e.number),
                            "timestamp": e.timestamp,
                            **(
                                {"focus": {"reference": f"{base_url}/{e.focus}"}}
                                if content != "empty"
                                else {}
                            ),
                        }
                        for e in events
                    ]
            else:
                parameters: list[dict[str, Any]] = [
                    {
                        "name": "subscription",
                        "valueReference": {"reference": f"{base_url}/Subscription/{subscription_id}"},
                    },
                    {"name": "status", "valueCode": subscription.get("status", "active")},
                    {"name": "type", "valueCode": kind},
                    {"name": "events-since-subscription-start", "valueString": str(len(all_events))},
                ]
                if topic:
                    parameters.insert(1, {"name": "topic", "valueCanonical": topic})
                for event in events:
                    parts: list[dict[str, Any]] = [
                        {"name": "event-number", "valueString": str(event.number)},
                        {"name": "timestamp", "valueInstant": event.timestamp},
                    ]
                    if content != "empty":
                        parts.append(
                            {"name": "focus", "valueReference": {"reference": f"{base_url}/{event.focus}"}}
                        )
                    parameters.append({"name": "notification-event", "part": parts})
                status_resource = {"resourceType": "Parameters", "id": status_id, "parameter": parameters}
            entries: list[dict[str, Any]] = [
                {
                    "fullUrl": f"urn:uuid:{status_id}",
                    "resource": status_resource,
                    "request": {"method": "GET", "url": f"{base_url}/Subscription/{subscription_id}/$status"},
                    "response": {"status": "200"},
                }
            ]
            for focus in dict.fromkeys(e.focus for e in events) if content != "empty" else ():
                rtype, rid = focus.split("/", 1)
                stored = self._store.entry(rtype, rid)
                item: dict[str, Any] = {
                    "fullUrl": f"{base_url}/{focus}",
                    "request": {"method": "PUT", "url": focus},
                    "response": {"status": "200"},
                }
                if stored is not None and stored.deleted:
                    item["request"] = {"method": "DELETE", "url": focus}
                elif content == "full-resource" and stored is not None:
                    item["resource"] = copy.deepcopy(stored.current)
                entries.append(item)
        return {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "subscription-notification" if shape == "r5" else "history",
            "timestamp": _now_instant(datetime.now(UTC)),
            "entry": entries,
        }

    async def deliver(
        self,
        subscription_id: str,
        http: httpx.AsyncClient,
        *,
        kind: str = "event-notification",
        base_url: str = "http://fake/fhir",
        style: str = "auto",
        shape: str = "r4-backport",
        numbers_as_int: bool = False,
        per_event: bool = False,
        drop: Collection[int] = (),
        duplicate: bool = False,
        reverse: bool = False,
    ) -> list[int]:
        """Push what a real server would push to the Subscription's ``channel.endpoint``, using
        ``http`` (e.g. a client on ``ASGITransport(pinpoint_app)``); returns the answer statuses.

        - topic-based (``criteria`` is a topic URL): one POST of :meth:`notification_bundle` with
          the events not yet delivered (``per_event``: one POST per event), or a ``handshake`` /
          ``heartbeat``; ``Content-Type`` = ``channel.payload``; ``shape`` ``r4-backport`` or ``r5``;
        - classic with a payload, ``style="auto"`` (HAPI): ``PUT {endpoint}/{type}/{id}`` per new
          event, ``DELETE {endpoint}/{type}/{id}`` for a delete;
        - classic, ``style="medplum"``: ``POST {endpoint}`` with the resource and the headers
          ``X-Medplum-Subscription``, ``X-Medplum-Interaction``; a delete sends ``{}`` with
          ``X-Medplum-Deleted-Resource``; with the Subscription extension
          ``…/subscription-secret`` an ``X-Signature`` HMAC-SHA256 hex — over the resource, also
          for deletes, as Medplum does;
        - classic without a payload: ``POST {endpoint}`` with no body per new event.

        Faults: ``drop`` (event numbers never sent, as if lost), ``duplicate`` (every message
        twice), ``reverse`` (messages in reverse order). ``channel.header`` entries ("Name: value")
        are sent as headers. A non-2xx answer or a transport error stops delivery and sets the
        Subscription's status to ``error``. Only loopback, ``localhost`` and single-label hosts
        (test transports) are contacted.
        """
        with self._lock:
            subscription = copy.deepcopy(self._store.read("Subscription", subscription_id))
            events = self._store.events.get(subscription_id, [])
            pending = [e for e in events if e.number > self._delivered.get(subscription_id, 0)]
        channel = subscription.get("channel") or {}
        endpoint = str(channel.get("endpoint", ""))
        host = httpx.URL(endpoint).host if endpoint else ""
        if host not in ("127.0.0.1", "::1", "localhost") and (not host or "." in host):
            raise InvalidInput("the fake server only delivers to loopback or test-transport endpoints")
        headers = {}
        for line in channel.get("header") or []:
            name, _, value = str(line).partition(":")
            headers[name.strip()] = value.strip()
        payload = channel.get("payload")
        secret = next(
            (
                str(ext.get("valueString"))
                for ext in subscription.get("extension") or []
                if str(ext.get("url", "")).endswith("subscription-secret")
            ),
            None,
        )
        sends: list[tuple[str, str, bytes, dict[str, str], list[_Event]]] = []
        if str(subscription.get("criteria", "")).startswith("http"):
            batch = pending if kind == "event-notification" else []
            if kind == "event-notification" and not batch:
                return []  # nothing new to notify
            groups = [[e] for e in batch] if per_event else [batch]
            for group in groups:
                since = group[0].number if group else len(events) + 1
                sent = [e.number for e in group if e.number not in drop]
                if group and not sent:
                    sends.append(("SKIP", "", b"", {}, group))
                    continue
                bundle = self.notification_bundle(
                    subscription_id,
                    kind=kind,
                    base_url=base_url,
                    since=since,
                    until=since + len(group) - 1,
                    shape=shape,
                    numbers_as_int=numbers_as_int,
                    only=set(sent) if group else None,
                )
                sends.append(
                    (
                        "POST",
                        endpoint,
                        orjson.dumps(bundle),
                        {"Content-Type": str(payload or FHIR_JSON)},
                        group,
                    )
                )
        else:
            for event in pending:
                if event.number in drop:
                    sends.append(("SKIP", "", b"", {}, [event]))
                    continue
                rtype, rid = event.focus.split("/", 1)
                with self._lock:
                    entry = self._store.entry(rtype, rid)
                    last = copy.deepcopy(entry.current) if entry else None
                current = None if event.interaction == "delete" else self.get(rtype, rid)
                if style == "medplum":
                    extra = {
                        "Content-Type": FHIR_JSON,
                        "X-Medplum-Subscription": subscription_id,
                        "X-Medplum-Interaction": event.interaction,
                    }
                    body = orjson.dumps(current) if current else b"{}"
                    if event.interaction == "delete":
                        extra["X-Medplum-Deleted-Resource"] = event.focus
                    if secret:
                        signed = orjson.dumps(current or last or {})
                        extra["X-Signature"] = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
                    sends.append(("POST", endpoint, body, extra, [event]))
                elif payload and event.interaction == "delete":
                    sends.append(("DELETE", f"{endpoint.rstrip('/')}/{event.focus}", b"", {}, [event]))
                elif payload:
                    body = orjson.dumps(current) if current else b""
                    sends.append(
                        (
                            "PUT",
                            f"{endpoint.rstrip('/')}/{event.focus}",
                            body,
                            {"Content-Type": str(payload)},
                            [event],
                        )
                    )
                else:
                    sends.append(("POST", endpoint, b"", {}, [event]))
        if reverse:
            sends.reverse()
        statuses: list[int] = []
        for method, url, body, extra, delivered in sends:
            if method == "SKIP":  # dropped on the way: the sender believes it delivered
                with self._lock:
                    self._delivered[subscription_id] = max(
                        self._delivered.get(subscription_id, 0), delivered[-1].number
                    )
                continue
            ok = False
            for _ in range(2 if duplicate else 1):
                try:
                    response = await http.request(method, url, content=body, headers={**headers, **extra})
                    statuses.append(response.status_code)
                    ok = response.is_success
                except httpx.HTTPError:
                    ok = False
                if not ok:
                    break
            with self._lock:
                if not ok:
                    self._store._write("Subscription", subscription_id, {**subscription, "status": "error"})
                    break
                if delivered:
                    self._delivered[subscription_id] = max(
                        self._delivered.get(subscription_id, 0), delivered[-1].number
                    )
        return statuses

    def _events_bundle(self, request: Request, sid: str) -> dict[str, Any]:
        query = dict(parse_qsl(request.url.query))
        try:
            since = int(query.get("eventsSinceNumber", "1"))
            until = int(query["eventsUntilNumber"]) if "eventsUntilNumber" in query else None
        except ValueError as exc:
            raise InvalidInput("eventsSinceNumber / eventsUntilNumber must be integers") from exc
        return self.notification_bundle(
            sid,
            kind="query-event",
            base_url=self._base_url(request),
            since=since,
            until=until,
            content=query.get("content"),
        )

    def _status_bundle(self, request: Request, sid: str) -> dict[str, Any]:
        notification = self.notification_bundle(sid, kind="query-status", base_url=self._base_url(request))
        status = notification["entry"][0]
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": 1,
            "entry": [{"fullUrl": status["fullUrl"], "resource": status["resource"]}],
        }

    # -- SMART

    def _token_endpoint(self, request: Request, raw: bytes) -> Response:
        def refuse(error: str, description: str, status: int = 400) -> Response:
            body = {"error": error, "error_description": description}
            return Response(orjson.dumps(body), status_code=status, media_type="application/json")

        form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        if form.get("grant_type") == "authorization_code" and self.ehr is not None:
            return self._code_token(request, form, refuse)
        if self.auth is None:
            return refuse("invalid_request", "this fake server has auth disabled")
        if form.get("grant_type") != "client_credentials":
            return refuse("unsupported_grant_type", "only client_credentials")
        if form.get("client_assertion_type") != JWT_BEARER:
            return refuse("invalid_request", "client_assertion_type must be jwt-bearer")
        assertion = form.get("client_assertion", "")
        token_url = f"{request.url.scheme}://{request.url.netloc}{self.token_path}"
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return refuse("invalid_client", "the client assertion is not a JWT", 401)
        alg, kid, client_id = header.get("alg"), header.get("kid"), unverified.get("iss")
        if alg not in ("RS384", "ES384"):
            return refuse("invalid_client", "alg must be RS384 or ES384", 401)
        if header.get("typ", "JWT") != "JWT" or not kid:
            return refuse("invalid_client", "the assertion header needs kid and typ JWT", 401)
        jwks = self.auth.clients.get(str(client_id))
        jwk = next((k for k in (jwks or {}).get("keys", []) if k.get("kid") == kid), None)
        if jwk is None or jwk.get("alg", alg) != alg:
            return refuse("invalid_client", "unknown client or key", 401)
        try:
            claims = jwt.decode(
                assertion,
                jwt.PyJWK(jwk, alg).key,
                algorithms=[alg],
                audience=token_url,
                issuer=client_id,
                leeway=self.auth.leeway,
                options={"require": ["iss", "sub", "aud", "exp", "jti"]},
            )
        except jwt.PyJWTError as exc:
            return refuse("invalid_client", f"assertion rejected: {type(exc).__name__}", 401)
        now = time.time()
        if claims["sub"] != client_id:
            return refuse("invalid_client", "sub must equal iss", 401)
        if claims["exp"] > now + 300 + self.auth.leeway:
            return refuse("invalid_client", "exp is more than five minutes ahead", 401)
        with self._lock:
            if claims["jti"] in self._seen_jti:
                return refuse("invalid_client", "jti replayed", 401)
            self._seen_jti.add(claims["jti"])
            access_token = secrets.token_urlsafe(24)
            self._tokens[access_token] = now + self.auth.token_lifetime
        body = {
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": self.auth.token_lifetime,
            "scope": form.get("scope", ""),
        }
        return Response(
            orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"}
        )

    def _authorize(self, request: Request) -> Response:
        """The authorize endpoint of an EHR launch: checks the request (registered client and
        redirect URI, a known launch, ``aud`` = this FHIR base, PKCE S256) and redirects back
        with a one-time code, as an EHR does once its user is signed in."""
        ehr = self.ehr
        if ehr is None:
            raise NotFound("this fake server has no EHR authorization server")
        q = dict(parse_qsl(request.url.query, keep_blank_values=True))
        client_id, redirect_uri = q.get("client_id", ""), q.get("redirect_uri", "")
        if client_id not in ehr.apps or redirect_uri not in ehr.apps[client_id]:
            raise InvalidInput("unknown client_id or redirect_uri")  # never redirect to an unknown URI

        def back(**params: str) -> Response:
            state = {"state": q["state"]} if "state" in q else {}
            return Response(
                status_code=302, headers={"Location": f"{redirect_uri}?{urlencode({**params, **state})}"}
            )

        if q.get("response_type") != "code":
            return back(error="unsupported_response_type")
        if not q.get("state"):
            return back(error="invalid_request", error_description="state is required")
        if q.get("aud", "").rstrip("/") != self._base_url(request):
            return back(error="invalid_request", error_description="aud is not this FHIR server")
        if q.get("code_challenge_method") != "S256" or len(q.get("code_challenge", "")) != 43:
            return back(error="invalid_request", error_description="PKCE S256 is required")
        with self._lock:
            launch = self._launches.get(q.get("launch", ""))
            if launch is None:
                return back(error="invalid_request", error_description="unknown launch")
            code = secrets.token_urlsafe(24)
            self._grants[code] = _Grant(
                client_id, redirect_uri, q["code_challenge"], launch[0], launch[1], q.get("scope", "")
            )
        return back(code=code)

    def _code_token(
        self, request: Request, form: dict[str, str], refuse: Callable[..., Response]
    ) -> Response:
        """The token endpoint for an authorization code: one use, same redirect URI, the PKCE
        verifier hashing to the challenge, the client's secret (HTTP Basic) when it has one."""
        assert self.ehr is not None
        client_id = form.get("client_id", "")
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            user, _, password = base64.b64decode(basic[6:]).decode().partition(":")
            user, password = unquote_plus(user), unquote_plus(password)  # RFC 6749 §2.3.1
            if self.ehr.secrets.get(user) != password:
                return refuse("invalid_client", "wrong client secret", 401)
            client_id = user
        elif client_id in self.ehr.secrets:
            return refuse("invalid_client", "a confidential client authenticates with HTTP Basic", 401)
        with self._lock:
            grant = self._grants.get(form.get("code", ""))
            if grant is None or grant.used:
                return refuse("invalid_grant", "unknown or used code")
            grant.used = True
            if grant.client_id != client_id or grant.redirect_uri != form.get("redirect_uri"):
                return refuse(
                    "invalid_grant", "client_id or redirect_uri differs from the authorization request"
                )
            verifier = form.get("code_verifier", "")
            digest = hashlib.sha256(verifier.encode()).digest()
            if not 43 <= len(verifier) <= 128 or _b64url(digest) != grant.challenge:
                return refuse("invalid_grant", "code_verifier does not match the code_challenge")
            access_token = secrets.token_urlsafe(24)
            self._tokens[access_token] = time.time() + self.ehr.token_lifetime
            self.token_patients[access_token] = grant.patient
        body: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": self.ehr.token_lifetime,
            "scope": grant.scope,
            "patient": grant.patient,
        }
        if grant.app_context is not None:
            body["appContext"] = grant.app_context
        return Response(
            orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"}
        )

    def _capability_statement(self, request: Request) -> dict[str, Any]:
        interactions = [{"code": c} for c in ("read", "vread", "update", "delete", "create", "search-type")]
        resource_types = ("Patient", "Procedure", "Observation", "CarePlan", "ServiceRequest", "Provenance")
        resources: list[dict[str, Any]] = [
            {
                "type": t,
                "interaction": interactions,
                "versioning": "versioned-update",
                "conditionalCreate": True,
                "conditionalUpdate": True,
                "searchParam": [{"name": n, "type": "token"} for n in sorted(SUPPORTED_SEARCH - PAGING)],
            }
            for t in resource_types
        ]
        resources.append(
            {
                "type": "Subscription",
                "interaction": interactions,
                "operation": [
                    {
                        "name": "events",
                        "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events",
                    },
                    {
                        "name": "status",
                        "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status",
                    },
                ],
            }
        )
        rest: dict[str, Any] = {
            "mode": "server",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }
        if self.auth is not None:
            origin = f"{request.url.scheme}://{request.url.netloc}"
            rest["security"] = {
                "extension": [
                    {
                        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                        "extension": [{"url": "token", "valueUri": origin + self.token_path}],
                    }
                ],
                "service": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                "code": "SMART-on-FHIR",
                            }
                        ]
                    }
                ],
            }
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2024-01-01",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "software": {"name": "Pinpoint fake FHIR server"},
            "rest": [rest],
        }


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput("the body is not JSON") from exc


# ---------------------------------------------------------------------------------- transactions

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


def _run_transaction(
    store: _Store, base: str, entries: list[dict[str, Any]], representation: bool
) -> list[dict[str, Any]]:
    """Apply entries to ``store`` (raising on the first failure); response entries in bundle order."""
    requests = [e["request"] for e in entries]
    for request in requests:
        if str(request.get("method", "")).upper() not in _ORDER or not isinstance(request.get("url"), str):
            raise InvalidInput("every entry.request needs a method (GET/POST/PUT/DELETE) and a url")
    # 1. settle the identity of every POST (conditional match or a new id), then resolve urn:uuid refs
    aliases: dict[str, str] = {}
    post_targets: dict[int, tuple[str | None, str]] = {}  # entry index -> (existing id or None, new id)
    for index, entry in enumerate(entries):
        request = entry["request"]
        if request["method"].upper() != "POST":
            continue
        rtype = request["url"].split("?")[0].strip("/")
        existing: str | None = None
        if request.get("ifNoneExist"):
            matches = store.search(rtype, parse_qsl(request["ifNoneExist"], keep_blank_values=True))
            if len(matches) > 1:
                raise PreconditionFailed(f"ifNoneExist matched {len(matches)} {rtype} resources")
            existing = matches[0]["id"] if matches else None
        rid = existing or store.new_id()
        post_targets[index] = (existing, rid)
        if str(entry.get("fullUrl", "")).startswith("urn:"):
            aliases[entry["fullUrl"]] = f"{rtype}/{rid}"
    for entry in entries:
        for ref in _references(entry.get("resource")):
            if ref["reference"].startswith("urn:"):
                if ref["reference"] not in aliases:
                    raise InvalidInput("a urn: reference does not name an entry of the transaction")
                ref["reference"] = aliases[ref["reference"]]
            elif "?" in ref["reference"]:  # a conditional reference (R4 http.html): exactly one match
                rtype, _, query = ref["reference"].partition("?")
                found = store.search(rtype, parse_qsl(query, keep_blank_values=True))
                if len(found) != 1:
                    raise InvalidInput(f"the conditional reference {rtype}?… matched {len(found)} resources")
                ref["reference"] = f"{rtype}/{found[0]['id']}"
    # 2. run in the FHIR order: DELETE, POST, PUT/PATCH, GET
    touched: set[str] = set()
    results: dict[int, dict[str, Any]] = {}
    for index in sorted(range(len(entries)), key=lambda i: _ORDER[entries[i]["request"]["method"].upper()]):
        entry, request = entries[index], entries[index]["request"]
        method = request["method"].upper()
        path, _, query = request["url"].strip("/").partition("?")
        parts = path.split("/")
        raw = entry.get("resource")
        resource: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if method in ("POST", "PUT") and not resource:
            raise InvalidInput(f"the {method} entry for {path} has no resource")
        if method in ("PUT", "DELETE") and len(parts) == 2:
            if path in touched:
                raise InvalidInput(f"{path} appears twice in the transaction")
            touched.add(path)
        status: int
        result: dict[str, Any] | None
        if method == "POST":
            existing, rid = post_targets[index]
            if existing:
                status, result = 200, store.read(parts[0], existing)
            else:
                status, result = store.create(parts[0], resource, rid=rid)
        elif method == "PUT" and len(parts) == 2:
            status, result = store.update(parts[0], parts[1], resource, request.get("ifMatch"))
        elif method == "PUT" and len(parts) == 1 and query:
            criteria = parse_qsl(query, keep_blank_values=True)
            status, result = store.conditional_update(parts[0], criteria, resource, request.get("ifMatch"))
        elif method == "DELETE" and len(parts) == 2:
            store.delete(parts[0], parts[1])
            status, result = 204, None
        elif method in ("GET", "HEAD") and len(parts) == 2:
            status, result = 200, store.read(parts[0], parts[1])
        else:
            raise NotSupported(f"{method} {path} is not supported in a transaction by the fake server")
        results[index] = _entry_response(base, status, result, representation)
    return [results[i] for i in range(len(entries))]


def _entry_response(
    base: str, status: int, resource: dict[str, Any] | None, representation: bool
) -> dict[str, Any]:
    text = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}[status]
    if resource is None:
        return {"response": {"status": text}}
    vid = resource["meta"]["versionId"]
    out: dict[str, Any] = {
        "fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
        "response": {
            "status": text,
            "location": f"{resource['resourceType']}/{resource['id']}/_history/{vid}",
            "etag": f'W/"{vid}"',
            "lastModified": resource["meta"]["lastUpdated"],
        },
    }
    if representation:
        out["resource"] = copy.deepcopy(resource)
    return out


# ---------------------------------------------------------------------------------- running it


@dataclass(frozen=True)
class LiveServer:
    """A running fake: where to reach it."""

    fake: FakeFhirServer
    origin: str

    @property
    def base_url(self) -> str:
        return self.origin + self.fake.base_path

    @property
    def token_url(self) -> str:
        return self.origin + self.fake.token_path


@contextmanager
def serve_in_thread(fake: FakeFhirServer, *, startup_timeout: float = 10.0) -> Iterator[LiveServer]:
    """Serve ``fake.app`` with uvicorn on 127.0.0.1 (a free port) in a background thread.

    Waits (at most ``startup_timeout``) until it accepts requests; stops it on exit.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it: no 40 ms stalls
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        fake.app,
        log_config=None,  # leave the test's logging alone
        log_level="warning",
        access_log=False,
        lifespan="off",
        loop="asyncio",
        http="h11",
        ws="none",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"fake-fhir-{port}", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake FHIR server did not start")
            time.sleep(0.005)
        yield LiveServer(fake, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=startup_timeout)
        sock.close()


# ---------------------------------------------------------------------------------- demo


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.fakes.fhir_server [--port N] [--load bundle.json ...] [--smart JWKS CLIENT_ID]``

    Serves the fake on 127.0.0.1 in the foreground (Ctrl-C stops it), e.g. for a demo of the
    ingest and write-back flows against a FHIR server that shows every request it gets.
    """
    import argparse
    import json
    import logging

    parser = argparse.ArgumentParser(prog="python -m tests.fakes.fhir_server", description=main.__doc__)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument(
        "--load", action="append", default=[], help="a Bundle JSON file whose resources to store"
    )
    parser.add_argument(
        "--smart", nargs=2, metavar=("PUBLIC_JWKS", "CLIENT_ID"), help="require SMART Backend Services tokens"
    )
    args = parser.parse_args(argv)
    auth = None
    if args.smart:
        with open(args.smart[0], encoding="utf-8") as handle:
            auth = FakeSmartAuth(clients={args.smart[1]: json.load(handle)})
    fake = FakeFhirServer(auth=auth)
    for path in args.load:
        with open(path, encoding="utf-8") as handle:
            print(f"loaded {fake.load_bundle(json.load(handle))} resources from {path}")
    logging.basicConfig(level=logging.INFO)
    print(
        f"FHIR base http://127.0.0.1:{args.port}{fake.base_path}  token URL http://127.0.0.1:{args.port}{fake.token_path}"
    )
    uvicorn.run(fake.app, host="127.0.0.1", port=args.port, log_level="info")


if __name__ == "__main__":
    main()
