"""Outbound FHIR R4 REST client: one :class:`FhirClient` per source.

The client wraps ONE injected :class:`httpx.AsyncClient` (the transport is the test seam: respx,
``httpx.MockTransport``, or the loopback fake server in ``tests/fakes``) and adds what every call to
a hospital's FHIR server needs:

- **a fixed base**: every request — including ``next`` paging links and parsed ``Location``
  headers — must stay within the base URL's scheme, host, port and path prefix, otherwise
  :class:`ForeignUrlError` is raised and nothing is sent. Redirects are never followed.
- **retries** with full-jitter exponential backoff, honouring ``Retry-After`` (seconds or HTTP date)
  and a bounded attempt count (:class:`RetryPolicy`). What is retried depends on whether the
  request is safe to repeat: connection failures, 429 and 503 always (the server did not process
  it); read timeouts and 502/504 (and 500 when configured) only for idempotent requests — GET,
  PUT, DELETE, conditional create (``If-None-Exist``) and transactions whose every POST is
  conditional.
- ``Accept: application/fhir+json``, ``X-Request-ID`` from an injected callable, optional
  ``auth`` (e.g. :class:`shared.fhir.smart.SmartBackendAuth`).
- errors mapped to :mod:`shared.fhir.errors`, keeping the server's OperationOutcome.

Logs carry the source, the interaction, the resource type, status, attempt and timing only —
never a path id, a query string or a body.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx
import orjson
import structlog

from shared.errors import ConfigError
from shared.fhir.errors import (
    FhirAuthError,
    FhirClientError,
    FhirHttpError,
    FhirInvalidResponse,
    FhirNotFound,
    FhirTransportError,
    FhirVersionConflict,
    ForeignUrlError,
    PagingLimitExceeded,
    SmartAuthError,
)
from shared.humanize import plural
from shared.jsonlimits import TOO_DEEP, too_deep

__all__ = [
    "DEFAULT_TIMEOUT",
    "FHIR_JSON",
    "FhirAuthError",
    "FhirClient",
    "FhirClientError",
    "FhirHttpError",
    "FhirInvalidResponse",
    "FhirNotFound",
    "FhirTransportError",
    "FhirVersionConflict",
    "ForeignUrlError",
    "PagingLimitExceeded",
    "RetryPolicy",
    "SearchParams",
    "SmartAuthError",
    "WriteResult",
    "parse_retry_after",
]

FHIR_JSON = "application/fhir+json"
#: Applied when neither the FhirClient nor its AsyncClient sets any timeout: never wait forever.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)

#: Search / operation parameters: a mapping (a sequence value repeats the parameter) or pairs.
SearchParams = Mapping[str, str | int | Sequence[str]] | Sequence[tuple[str, str]]

_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_OPERATION_RE = re.compile(
    r"^(?:[A-Z][A-Za-z]{1,63}/(?:[A-Za-z0-9\-.]{1,64}/)?)?\$[A-Za-z][A-Za-z0-9\-]{0,63}$"
)
_ETAG_RE = re.compile(r'^(?:W/)?"([^"]*)"$')

_ALWAYS_RETRY_STATUS = frozenset({429, 503})
_IDEMPOTENT_RETRY_STATUS = frozenset({502, 504})
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# Nothing reached the server: safe to retry whatever the method.
_NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# The server may have processed the request: retry only idempotent requests.
_MAYBE_SENT_ERRORS = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)

_log = structlog.get_logger("shared.fhir.client")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    ``max_attempts`` counts every attempt including the first. The n-th retry waits a uniformly
    random time in ``[0, min(max_delay, base_delay * 2**(n-1))]`` ("full jitter"), unless the
    server sent ``Retry-After``, which is honoured as is. A ``Retry-After`` longer than
    ``max_retry_after`` is not waited for: the error is raised at once (with ``retry_after`` set).
    ``retry_server_error`` adds 500 to the statuses retried for idempotent requests.
    """

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_retry_after: float = 60.0
    retry_server_error: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 10:
            raise ConfigError("RetryPolicy.max_attempts must be between 1 and 10")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ConfigError("RetryPolicy delays must not be negative")

    def backoff(self, retry_number: int, rng: random.Random) -> float:
        """Full-jitter delay before retry number ``retry_number`` (1-based)."""
        cap = min(self.max_delay, self.base_delay * (2 ** (retry_number - 1)))
        return rng.uniform(0.0, cap)


@dataclass(frozen=True)
class WriteResult:
    """What the server said about a create / update.

    ``created`` is true for 201 (false when a conditional create matched an existing resource, or
    an update changed one). ``version_id`` comes from the ETag, else ``meta.versionId``, else the
    ``Location``. ``resource`` is the returned body, when the server sent one.
    """

    status: int
    created: bool
    resource_type: str
    id: str | None
    version_id: str | None
    etag: str | None
    location: str | None
    last_modified: str | None
    resource: dict[str, Any] | None


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or HTTP date); None if unusable.

    ``now`` should be the server's ``Date`` when it sent one (avoids clock skew).
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 and seconds != float("inf") else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = now or datetime.now(UTC)
    return max(0.0, (when - reference).total_seconds())


def _server_date(response: httpx.Response) -> datetime | None:
    raw = response.headers.get("Date")
    if not raw:
        return None
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _query_pairs(params: SearchParams | None) -> list[tuple[str, str]]:
    if params is None:
        return []
    if isinstance(params, Mapping):
        pairs: list[tuple[str, str]] = []
        for key, value in params.items():
            if isinstance(value, str | int):
                pairs.append((key, str(value)))
            else:
                pairs.extend((key, str(v)) for v in value)
        return pairs
    return [(str(k), str(v)) for k, v in params]


def _criteria_string(criteria: str | SearchParams) -> str:
    if isinstance(criteria, str):
        return criteria.lstrip("?")
    return str(httpx.QueryParams(tuple(_query_pairs(criteria))))


def _etag_version(etag: str | None) -> str | None:
    if not etag:
        return None
    match = _ETAG_RE.match(etag.strip())
    return match.group(1) if match else None


def _if_match_value(if_match: str | int) -> str:
    text = str(if_match).strip()
    if text.startswith(('W/"', '"')):
        return text
    if not _ID_RE.match(text):
        raise ValueError("If-Match needs a version id or an ETag")
    return f'W/"{text}"'


def _transaction_is_idempotent(bundle: Mapping[str, Any]) -> bool:
    """True when replaying the bundle cannot duplicate anything: every POST is conditional."""
    for entry in bundle.get("entry") or ():
        request = entry.get("request") if isinstance(entry, Mapping) else None
        if not isinstance(request, Mapping):
            return False
        method = str(request.get("method", "")).upper()
        if method == "POST":
            if not request.get("ifNoneExist"):
                return False
        elif method not in _IDEMPOTENT_METHODS:
            return False
    return True


def _without_ids(path: str) -> str:
    """``Subscription/7/$events`` → ``Subscription/$events``: log lines name types, never ids."""
    parts = path.split("/")
    return "/".join(p for i, p in enumerate(parts) if i == 0 or p.startswith("$"))


def _check_type(resource_type: str) -> str:
    if not isinstance(resource_type, str) or not _TYPE_RE.match(resource_type):
        raise ValueError(f"not a FHIR resource type: {resource_type!r}")
    return resource_type


def _check_id(resource_id: object) -> str:
    if not isinstance(resource_id, str) or not _ID_RE.match(resource_id):
        raise ValueError("not a FHIR logical id")
    return resource_id


class FhirClient:
    """FHIR R4 REST client bound to one base URL.

    ``http`` is the injected :class:`httpx.AsyncClient` (its timeouts apply unless ``timeout`` is
    given, or :data:`DEFAULT_TIMEOUT` if it has none at all; the caller owns and closes it). The
    SMART token request (see ``auth``) is the one request that goes elsewhere: to the configured
    token URL, never to a URL taken from a server response. ``auth`` is applied to every request except
    :meth:`smart_configuration`. ``request_id`` returns the current correlation id (or None);
    it is sent as ``X-Request-ID``. ``sleep`` and ``rng`` are injectable for tests.
    ``max_pages`` bounds how many pages one search may follow.
    """

    def __init__(
        self,
        base_url: str,
        http: httpx.AsyncClient,
        *,
        auth: httpx.Auth | None = None,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | float | None = None,
        request_id: Callable[[], str | None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        max_pages: int = 100,
        source: str | None = None,
    ) -> None:
        try:
            url = httpx.URL(base_url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ConfigError(f"fhir_base_url is not a URL: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError("fhir_base_url must be an absolute http(s) URL")
        if url.userinfo or url.query or url.fragment:
            raise ConfigError("fhir_base_url must not contain credentials, a query or a fragment")
        if max_pages < 1:
            raise ConfigError("max_pages must be at least 1")
        self._scheme = url.scheme
        self._host = url.host
        self._port = url.port or _default_port(url.scheme)
        self._prefix = url.path.rstrip("/")
        if any(seg in (".", "..") for seg in self._prefix.split("/")):
            raise ConfigError("fhir_base_url must not contain dot segments")
        self._base = str(url.copy_with(path=self._prefix or "/")).rstrip("/")
        self._http = http
        self._auth = auth
        self._retry = retry or RetryPolicy()
        self._timeout: httpx.Timeout | None = (
            timeout if isinstance(timeout, httpx.Timeout) or timeout is None else httpx.Timeout(timeout)
        )
        client_timeout = http.timeout
        if self._timeout is None and all(
            t is None
            for t in (client_timeout.connect, client_timeout.read, client_timeout.write, client_timeout.pool)
        ):
            self._timeout = DEFAULT_TIMEOUT
        self._request_id = request_id
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._max_pages = max_pages
        self._source = source or "-"

    @property
    def base_url(self) -> str:
        """The base URL without a trailing slash."""
        return self._base

    # ------------------------------------------------------------------ URL safety

    def url_for(self, relative: str = "") -> httpx.URL:
        """Absolute URL for a path relative to the base (checked to stay within it)."""
        url = httpx.URL(f"{self._base}/{relative}" if relative else self._base)
        self.ensure_within_base(url)
        return url

    def ensure_within_base(self, url: httpx.URL | str) -> httpx.URL:
        """Return ``url`` (resolved against the base if relative) or raise :class:`ForeignUrlError`."""
        target = httpx.URL(url) if isinstance(url, str) else url
        if target.is_relative_url:
            target = httpx.URL(f"{self._base}/").join(target)
        where = f"{target.scheme}://{target.host}:{target.port or _default_port(target.scheme)}{target.path}"
        same_origin = (
            target.scheme == self._scheme
            and target.host == self._host
            and (target.port or _default_port(target.scheme)) == self._port
            and not target.userinfo
        )
        path = target.path
        segments = path.split("/")
        inside = (
            path == self._prefix or path == self._prefix + "/" or path.startswith(self._prefix + "/")
        ) and ("." not in segments and ".." not in segments)
        if not (same_origin and inside):
            raise ForeignUrlError(f"refusing URL outside the FHIR base {self._base}: {where}")
        return target

    # ------------------------------------------------------------------ transport

    def _headers(self, extra: Mapping[str, str] | None, *, accept: str = FHIR_JSON) -> dict[str, str]:
        headers = {"Accept": accept}
        if self._request_id is not None:
            rid = self._request_id()
            if rid:
                headers["X-Request-ID"] = rid
        if extra:
            headers.update(extra)
        return headers

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        *,
        what: str,
        idempotent: bool,
        params: SearchParams | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        accept: str = FHIR_JSON,
        authenticate: bool = True,
    ) -> httpx.Response:
        """Send with retries; returns the final response (any status) or raises transport errors."""
        self.ensure_within_base(url)
        all_headers = self._headers(headers, accept=accept)
        content: bytes | None = None
        if body is not None:
            content = orjson.dumps(body)
            all_headers["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
        # Without an explicit value httpx falls back to the AsyncClient's own auth / timeout;
        # auth=None disables auth even when the AsyncClient has a default.
        send_options: dict[str, Any] = {"follow_redirects": False}
        if not authenticate:
            send_options["auth"] = None
        elif self._auth is not None:
            send_options["auth"] = self._auth
        build_options: dict[str, Any] = {}
        if self._timeout is not None:
            build_options["timeout"] = self._timeout
        pairs = _query_pairs(params)
        attempts = self._retry.max_attempts
        for attempt in range(1, attempts + 1):
            request = self._http.build_request(
                method,
                url,
                params=tuple(pairs) or None,
                content=content,
                headers=all_headers,
                **build_options,
            )
            self.ensure_within_base(request.url)
            started = time.monotonic()
            delay: float | None = None
            try:
                response = await self._http.send(request, **send_options)
            except _NOT_SENT_ERRORS + _MAYBE_SENT_ERRORS as exc:
                timed_out = isinstance(exc, httpx.TimeoutException)
                retryable = isinstance(exc, _NOT_SENT_ERRORS) or idempotent
                if not retryable or attempt == attempts:
                    _log.warning(
                        "fhir.request.failed",
                        source=self._source,
                        what=what,
                        error=type(exc).__name__,
                        attempt=attempt,
                    )
                    kind = "timed out" if timed_out else "could not reach the FHIR server"
                    raise FhirTransportError(
                        f"{what}: {kind} ({type(exc).__name__}) after {plural(attempt, 'attempt')}",
                        timeout=timed_out,
                    ) from exc
                reason = type(exc).__name__
            except SmartAuthError as exc:
                if not exc.retryable or attempt == attempts:
                    raise
                reason = "token-endpoint"
            except httpx.TransportError as exc:
                raise FhirTransportError(f"{what}: transport error ({type(exc).__name__})") from exc
            else:
                elapsed_ms = round((time.monotonic() - started) * 1000, 1)
                status = response.status_code
                retryable = status in _ALWAYS_RETRY_STATUS or (
                    idempotent
                    and (
                        status in _IDEMPOTENT_RETRY_STATUS
                        or (status == 500 and self._retry.retry_server_error)
                    )
                )
                if not retryable or attempt == attempts:
                    _log.debug(
                        "fhir.request",
                        source=self._source,
                        what=what,
                        status=status,
                        attempt=attempt,
                        elapsed_ms=elapsed_ms,
                    )
                    return response
                retry_after = parse_retry_after(
                    response.headers.get("Retry-After"), now=_server_date(response)
                )
                if retry_after is not None:
                    if retry_after > self._retry.max_retry_after:
                        _log.warning(
                            "fhir.retry.too_long",
                            source=self._source,
                            what=what,
                            status=status,
                            retry_after=retry_after,
                        )
                        return response
                    delay = retry_after
                reason = str(status)
            if delay is None:
                delay = self._retry.backoff(attempt, self._rng)
            _log.warning(
                "fhir.retry",
                source=self._source,
                what=what,
                reason=reason,
                attempt=attempt,
                delay_s=round(delay, 3),
            )
            await self._sleep(delay)
        raise AssertionError("unreachable: the retry loop always returns or raises")  # pragma: no cover

    def _raise_for_status(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        outcome = _operation_outcome(response)
        codes = _issue_codes(outcome)
        message = f"{what}: FHIR server answered {status}"
        if 300 <= status < 400:
            message += " (redirects are not followed)"
        if codes:
            message += f" [{', '.join(codes)}]"
        cls: type[FhirHttpError]
        if status in (404, 410):
            cls = FhirNotFound
        elif status in (409, 412):
            cls = FhirVersionConflict
        elif status in (401, 403):
            cls = FhirAuthError
        else:
            cls = FhirHttpError
        raise cls(
            message,
            upstream_status=status,
            upstream_outcome=outcome,
            retry_after=parse_retry_after(response.headers.get("Retry-After"), now=_server_date(response)),
        )

    @staticmethod
    def _json(response: httpx.Response, what: str, *, resource_type: str | None = None) -> dict[str, Any]:
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise FhirInvalidResponse(f"{what}: the server's answer is not JSON") from exc
        if not isinstance(data, dict):
            raise FhirInvalidResponse(f"{what}: the server's answer is not a JSON object")
        if too_deep(data):
            raise FhirInvalidResponse(f"{what}: the server's answer is not FHIR ({TOO_DEEP})")
        if resource_type is not None and data.get("resourceType") != resource_type:
            raise FhirInvalidResponse(f"{what}: expected a {resource_type}, got {data.get('resourceType')!r}")
        return data

    async def _get_json(
        self,
        relative: str,
        what: str,
        *,
        params: SearchParams | None = None,
        resource_type: str | None = None,
    ) -> dict[str, Any]:
        response = await self._send("GET", self.url_for(relative), what=what, idempotent=True, params=params)
        self._raise_for_status(response, what)
        return self._json(response, what, resource_type=resource_type)

    # ------------------------------------------------------------------ reads

    async def capabilities(self) -> dict[str, Any]:
        """``GET [base]/metadata``: the CapabilityStatement."""
        return await self._get_json("metadata", "capabilities", resource_type="CapabilityStatement")

    async def smart_configuration(self) -> dict[str, Any]:
        """``GET [base]/.well-known/smart-configuration`` (unauthenticated, ``application/json``)."""
        what = "smart-configuration"
        response = await self._send(
            "GET",
            self.url_for(".well-known/smart-configuration"),
            what=what,
            idempotent=True,
            accept="application/json",
            authenticate=False,
        )
        self._raise_for_status(response, what)
        return self._json(response, what)

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """``GET [base]/{type}/{id}``; raises :class:`FhirNotFound` for 404/410."""
        _check_type(resource_type)
        _check_id(resource_id)
        return await self._get_json(
            f"{resource_type}/{resource_id}", f"read {resource_type}", resource_type=resource_type
        )

    async def vread(self, resource_type: str, resource_id: str, version_id: str) -> dict[str, Any]:
        """``GET [base]/{type}/{id}/_history/{vid}``."""
        _check_type(resource_type)
        _check_id(resource_id)
        _check_id(version_id)
        return await self._get_json(
            f"{resource_type}/{resource_id}/_history/{version_id}",
            f"vread {resource_type}",
            resource_type=resource_type,
        )

    async def read_reference(self, reference: str) -> dict[str, Any]:
        """Read ``Type/id`` or an absolute URL within the base (``_history`` suffix honoured)."""
        if "://" in reference:
            url = self.ensure_within_base(reference)
            reference = url.path[len(self._prefix) :].lstrip("/")
        parts = reference.split("/")
        if len(parts) == 2:
            return await self.read(parts[0], parts[1])
        if len(parts) == 4 and parts[2] == "_history":
            return await self.vread(parts[0], parts[1], parts[3])
        raise ValueError("not a literal FHIR reference (Type/id)")

    async def pages(
        self, resource_type: str, params: SearchParams | None = None, *, max_pages: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Search ``GET [base]/{type}?params`` and yield each searchset Bundle page.

        Follows ``next`` links only within the base; raises :class:`PagingLimitExceeded` when more
        than ``max_pages`` pages (default: the client's) would be needed or a link repeats.
        """
        _check_type(resource_type)
        limit = max_pages or self._max_pages
        what = f"search {resource_type}"
        url = self.url_for(resource_type)
        page_params: SearchParams | None = params
        seen: set[str] = set()
        for page_number in range(1, limit + 1):
            response = await self._send("GET", url, what=what, idempotent=True, params=page_params)
            self._raise_for_status(response, what)
            bundle = self._json(response, what, resource_type="Bundle")
            yield bundle
            next_url = _next_link(bundle)
            if next_url is None:
                return
            url = self.ensure_within_base(next_url)
            page_params = None
            key = str(url)
            if key in seen:
                raise PagingLimitExceeded(f"{what}: the server's next links loop (page {page_number})")
            seen.add(key)
        raise PagingLimitExceeded(f"{what}: more than {limit} pages")

    async def search(
        self, resource_type: str, params: SearchParams | None = None, *, max_pages: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield every ``entry.resource`` of every page (matches and ``_include``/``_revinclude``).

        An OperationOutcome entry with ``search.mode = outcome`` is skipped.
        """
        async for bundle in self.pages(resource_type, params, max_pages=max_pages):
            for entry in bundle.get("entry") or ():
                if not isinstance(entry, dict):
                    continue
                resource = entry.get("resource")
                if not isinstance(resource, dict):
                    continue
                search = entry.get("search")
                if isinstance(search, dict) and search.get("mode") == "outcome":
                    continue
                yield resource

    async def search_all(
        self, resource_type: str, params: SearchParams | None = None, *, max_pages: int | None = None
    ) -> list[dict[str, Any]]:
        """All resources of :meth:`search` as a list (still bounded by ``max_pages``)."""
        return [r async for r in self.search(resource_type, params, max_pages=max_pages)]

    # ------------------------------------------------------------------ writes

    async def create(
        self,
        resource: Mapping[str, Any],
        *,
        if_none_exist: str | SearchParams | None = None,
    ) -> WriteResult:
        """``POST [base]/{type}``; with ``if_none_exist`` (e.g. ``{"identifier": "sys|val"}``) a
        conditional create: 201 created, 200 when one match exists (``created`` false), 412 → error.
        """
        resource_type = _check_type(str(resource.get("resourceType")))
        what = f"create {resource_type}"
        headers = {"Prefer": "return=representation"}
        if if_none_exist is not None:
            headers["If-None-Exist"] = _criteria_string(if_none_exist)
        response = await self._send(
            "POST",
            self.url_for(resource_type),
            what=what,
            idempotent=if_none_exist is not None,
            body=resource,
            headers=headers,
        )
        self._raise_for_status(response, what)
        return self._write_result(response, resource_type, what)

    async def update(self, resource: Mapping[str, Any], *, if_match: str | int | None = None) -> WriteResult:
        """``PUT [base]/{type}/{id}`` (id from the resource); ``if_match`` is a version id or an
        ETag, sent as ``If-Match: W/"n"`` — a mismatch raises :class:`FhirVersionConflict`.
        """
        resource_type = _check_type(str(resource.get("resourceType")))
        resource_id = _check_id(resource.get("id"))
        what = f"update {resource_type}"
        headers = {"Prefer": "return=representation"}
        if if_match is not None:
            headers["If-Match"] = _if_match_value(if_match)
        response = await self._send(
            "PUT",
            self.url_for(f"{resource_type}/{resource_id}"),
            what=what,
            idempotent=True,
            body=resource,
            headers=headers,
        )
        self._raise_for_status(response, what)
        return self._write_result(response, resource_type, what)

    async def conditional_update(
        self, resource: Mapping[str, Any], criteria: str | SearchParams, *, if_match: str | int | None = None
    ) -> WriteResult:
        """``PUT [base]/{type}?criteria``: creates on no match, updates one match, 412 on several."""
        resource_type = _check_type(str(resource.get("resourceType")))
        what = f"conditional update {resource_type}"
        headers = {"Prefer": "return=representation"}
        if if_match is not None:
            headers["If-Match"] = _if_match_value(if_match)
        query = _criteria_string(criteria)
        if not query:
            raise ValueError("conditional update needs search criteria")
        response = await self._send(
            "PUT",
            self.url_for(resource_type),
            what=what,
            idempotent=True,
            params=list(httpx.QueryParams(query).multi_items()),
            body=resource,
            headers=headers,
        )
        self._raise_for_status(response, what)
        return self._write_result(response, resource_type, what)

    async def delete(self, resource_type: str, resource_id: str) -> None:
        """``DELETE [base]/{type}/{id}`` (404/410 are raised as :class:`FhirNotFound`)."""
        _check_type(resource_type)
        _check_id(resource_id)
        what = f"delete {resource_type}"
        response = await self._send(
            "DELETE", self.url_for(f"{resource_type}/{resource_id}"), what=what, idempotent=True
        )
        self._raise_for_status(response, what)

    async def transaction(
        self, bundle: Mapping[str, Any], *, idempotent: bool | None = None
    ) -> dict[str, Any]:
        """``POST [base]`` a ``transaction`` (or ``batch``) Bundle; returns the response Bundle.

        A failing transaction raises :class:`FhirHttpError` with the server's OperationOutcome.
        ``idempotent`` defaults to "every POST entry carries ``ifNoneExist``", which makes
        read-timeouts and 502/504 retryable.
        """
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") not in ("transaction", "batch"):
            raise ValueError("transaction() needs a Bundle of type transaction or batch")
        kind = str(bundle["type"])
        what = kind
        safe = _transaction_is_idempotent(bundle) if idempotent is None else idempotent
        response = await self._send(
            "POST",
            self.url_for(),
            what=what,
            idempotent=safe,
            body=bundle,
            headers={"Prefer": "return=representation"},
        )
        self._raise_for_status(response, what)
        result = self._json(response, what, resource_type="Bundle")
        if result.get("type") != f"{kind}-response":
            raise FhirInvalidResponse(
                f"{what}: expected a {kind}-response Bundle, got {result.get('type')!r}"
            )
        return result

    def transaction_results(self, response: Mapping[str, Any]) -> list[WriteResult]:
        """One :class:`WriteResult` per entry of a transaction/batch response, in bundle order.

        ``entry.response.status`` ("201 Created") gives ``status``; ``location`` (relative or
        absolute within the base) the type, id and version; a ``location`` elsewhere raises
        :class:`ForeignUrlError`. For failed batch entries ``id`` is None and ``status`` >= 400.
        """
        results: list[WriteResult] = []
        for entry in response.get("entry") or ():
            entry_response = entry.get("response") if isinstance(entry, Mapping) else None
            if not isinstance(entry_response, Mapping):
                raise FhirInvalidResponse("transaction response entry without a response")
            try:
                status = int(str(entry_response.get("status", "")).split(" ", 1)[0])
            except ValueError as exc:
                raise FhirInvalidResponse("transaction response entry without a numeric status") from exc
            resource = entry.get("resource") if isinstance(entry.get("resource"), dict) else None
            resource_type, rid, version = "", None, None
            location = entry_response.get("location")
            if isinstance(location, str) and location:
                url = self.ensure_within_base(location)
                location = str(url)
                parts = url.path[len(self._prefix) :].strip("/").split("/")
                resource_type = parts[0]
                rid = parts[1] if len(parts) >= 2 else None
                version = parts[3] if len(parts) >= 4 and parts[2] == "_history" else None
            elif resource is not None:
                resource_type, rid = str(resource.get("resourceType", "")), resource.get("id")
            etag = entry_response.get("etag")
            results.append(
                WriteResult(
                    status=status,
                    created=status == 201,
                    resource_type=resource_type,
                    id=rid,
                    version_id=_etag_version(etag) or version,
                    etag=etag,
                    location=location if isinstance(location, str) else None,
                    last_modified=entry_response.get("lastModified"),
                    resource=resource,
                )
            )
        return results

    async def update_with(
        self,
        resource_type: str,
        resource_id: str,
        change: Callable[[dict[str, Any]], dict[str, Any] | None],
        *,
        attempts: int = 3,
    ) -> WriteResult | None:
        """Read-modify-write with ``If-Match``: read, apply ``change`` (returns the new resource, or
        None for "nothing to do"), update; on 409/412 start again, at most ``attempts`` times.
        """
        for attempt in range(1, attempts + 1):
            current = await self.read(resource_type, resource_id)
            version = (current.get("meta") or {}).get("versionId")
            changed = change(current)
            if changed is None:
                return None
            try:
                return await self.update(changed, if_match=str(version) if version else None)
            except FhirVersionConflict:
                if attempt == attempts:
                    raise
                _log.info(
                    "fhir.update.conflict_retry",
                    source=self._source,
                    what=f"update {resource_type}",
                    attempt=attempt,
                )
        raise AssertionError("unreachable")  # pragma: no cover

    async def operation(
        self,
        path: str,
        params: SearchParams | None = None,
        *,
        method: Literal["GET", "POST"] = "GET",
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Invoke ``[base]/[Type/[id/]]$op`` — e.g. ``operation("Subscription/7/$events",
        {"eventsSinceNumber": "3"})``. GET operations are retried as idempotent; POST ones are not.
        """
        if not _OPERATION_RE.match(path):
            raise ValueError("operation path must look like [Type/[id/]]$name")
        what = f"operation {_without_ids(path)}"
        response = await self._send(
            method, self.url_for(path), what=what, idempotent=method == "GET", params=params, body=body
        )
        self._raise_for_status(response, what)
        return self._json(response, what)

    # ------------------------------------------------------------------ helpers

    def _write_result(self, response: httpx.Response, resource_type: str, what: str) -> WriteResult:
        body: dict[str, Any] | None = None
        if response.content:
            data = self._json(response, what)
            if data.get("resourceType") == resource_type:
                body = data
        location_header = response.headers.get("Location") or response.headers.get("Content-Location")
        location: str | None = None
        loc_id: str | None = None
        loc_version: str | None = None
        if location_header:
            url = self.ensure_within_base(location_header)
            location = str(url)
            parts = url.path[len(self._prefix) :].strip("/").split("/")
            if len(parts) >= 2 and parts[0] == resource_type:
                loc_id = parts[1]
                if len(parts) >= 4 and parts[2] == "_history":
                    loc_version = parts[3]
        meta = body.get("meta") if body else None
        meta_version = meta.get("versionId") if isinstance(meta, dict) else None
        etag = response.headers.get("ETag")
        return WriteResult(
            status=response.status_code,
            created=response.status_code == 201,
            resource_type=resource_type,
            id=(str(body["id"]) if body and body.get("id") else None) or loc_id,
            version_id=_etag_version(etag) or (str(meta_version) if meta_version else None) or loc_version,
            etag=etag,
            location=location,
            last_modified=response.headers.get("Last-Modified"),
            resource=body,
        )


def _operation_outcome(response: httpx.Response) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        return None
    if isinstance(parsed, dict) and parsed.get("resourceType") == "OperationOutcome":
        return parsed
    return None


def _issue_codes(outcome: Mapping[str, Any] | None) -> list[str]:
    issues = outcome.get("issue") if outcome else None
    if not isinstance(issues, list):
        return []
    return [str(i["code"]) for i in issues if isinstance(i, dict) and "code" in i]


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    for link in bundle.get("link") or ():
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None
