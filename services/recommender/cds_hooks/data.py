"""The data behind one hook call (CONTRACT §2 "Data for a hook", STANDARDS §1.3 Prefetch).

In order: the prefetch (a ``null`` key is "no data"; an OperationOutcome is a failed key; a
paged searchset is completed from ``fhirServer`` when allowed); for keys that are absent or
failed, ``fhirServer`` — only when it is the ``fhir_base_url`` of a configured source (no other
host is ever contacted) — read with the hook's ``fhirAuthorization`` token when given, else with
the source's own outbound credential (SMART Backend Services or bearer), else without a token
(an open source); then the resources stored for the patient, read in the id space of that
source, else of ``cds.source``, else of ``default``. The same resource from the EHR wins over the
stored one.

``available`` is False only when none of the three yielded anything (→ 412, whose text says
why each source failed: :meth:`HookData.unavailable_reason`). With nothing stored, a key that was
neither prefetched nor fetched is data the rules lack: ``unavailable`` names its kind, and the
targets that need it become ``not-evaluable`` / ``data-unavailable``. Every refused or failed
fetch is logged with the reason (source id, key, error class, status; no patient data).
The access token is used for the requests and forgotten: it is never logged or stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import orjson
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from services.recommender.cds_hooks.discovery import PREFETCH, PREFETCH_DATA
from services.recommender.cds_hooks.models import HookCall
from shared.db.models import Resource
from shared.fhir.client import FhirClient, FhirClientError, FhirNotFound, RetryPolicy
from shared.fhir.sources import SourceClients, auth_for
from shared.logging import current_request_id, get_logger
from shared.settings import Settings, Source

log = get_logger("pinpoint.cds.data")

RECOMMENDATION_SYSTEM = "urn:pinpoint:recommendation"
ORDER_INTENTS = ("order", "original-order", "plan")
FETCH_TIMEOUT = httpx.Timeout(4.0, connect=2.0)
#: All fetches of one call end by then (CRD: answer within 5 s); late keys count as failed.
FETCH_DEADLINE = 4.5


@dataclass
class HookData:
    """Resources for the engine, and where they came from (ids and counts only)."""

    resources: list[dict[str, Any]]
    available: bool
    id_space: str
    patient_key: str
    used: list[str] = field(default_factory=list)  # "prefetch", "fhirServer", "store"
    fetched_keys: list[str] = field(default_factory=list)
    failed_keys: list[str] = field(default_factory=list)
    #: Why a source gave nothing, by "prefetch" / "fhirServer" / "store" (no patient data).
    problems: dict[str, str] = field(default_factory=dict)
    #: Kinds of data (``engine.completeness.DATA_KINDS``) that could not be retrieved.
    unavailable: frozenset[str] = frozenset()

    def unavailable_reason(self) -> str:
        """The 412 text: which of the three sources failed and why."""
        order = ("prefetch", "fhirServer", "store")
        parts = [f"{name}: {self.problems[name]}" for name in order if name in self.problems]
        return "No data for this patient could be read. " + "; ".join(parts) + "."


def normalise_base(url: str) -> str:
    """Scheme and host lower-cased, default port dropped, no trailing slash."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    port = parts.port
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


def source_for_server(settings: Settings, fhir_server: str | None) -> str | None:
    """The configured source whose ``fhir_base_url`` is ``fhir_server``, or None."""
    if not fhir_server:
        return None
    wanted = normalise_base(fhir_server)
    for source in settings.config.sources:
        if source.fhir_base_url is not None and normalise_base(str(source.fhir_base_url)) == wanted:
            return source.id
    return None


def id_space(settings: Settings, fhir_server: str | None) -> str:
    return source_for_server(settings, fhir_server) or settings.config.cds.source or "default"


class UserToken(httpx.Auth):
    """The hook's ``fhirAuthorization`` bearer token, applied per request, never logged."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        request.headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        yield request


def _is_ours(resource: dict[str, Any]) -> bool:
    identifiers = resource.get("identifier")
    if not identifiers:  # most resources of a chart: no generator to build
        return False
    return any(isinstance(i, dict) and i.get("system") == RECOMMENDATION_SYSTEM for i in identifiers)


def bundle_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """Entry resources of a Bundle, without OperationOutcomes (search.mode outcome or not)."""
    out = []
    for entry in bundle.get("entry") or ():
        res = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(res, dict) and res.get("resourceType") not in (None, "OperationOutcome"):
            out.append(res)
    return out


def _has_next(bundle: dict[str, Any]) -> bool:
    return any(isinstance(link, dict) and link.get("relation") == "next" for link in bundle.get("link") or ())


@dataclass
class _KeyState:
    resources: list[dict[str, Any]] = field(default_factory=list)
    satisfied: bool = False  # the client answered the key (data, empty Bundle or null)
    needs_fetch: bool = False  # absent, OperationOutcome, or a searchset with more pages


def read_prefetch(prefetch: dict[str, Any] | None) -> dict[str, _KeyState]:
    """Our keys only: unknown keys (e.g. the spec's ``patientToGreet``) are not our templates."""
    states: dict[str, _KeyState] = {}
    for key in PREFETCH:
        state = _KeyState()
        states[key] = state
        if prefetch is None or key not in prefetch:
            state.needs_fetch = True
            continue
        value = prefetch[key]
        if value is None:
            state.satisfied = True
            continue
        rtype = value.get("resourceType")
        if rtype == "OperationOutcome":
            state.needs_fetch = True
        elif rtype == "Bundle":
            state.resources = bundle_resources(value)
            state.satisfied = True
            state.needs_fetch = _has_next(value)
        else:
            state.resources = [value]
            state.satisfied = True
    return states


def render(template: str, patient_id: str) -> str:
    return template.replace("{{context.patientId}}", patient_id)


async def _fetch_key(client: FhirClient, template: str, patient_id: str) -> list[dict[str, Any]]:
    query = render(template, patient_id)
    path, _, qs = query.partition("?")
    if not qs and path.count("/") == 1:
        rtype, rid = path.split("/")
        try:
            return [await client.read(rtype, rid)]
        except FhirNotFound:
            return []
    params = parse_qsl(qs, keep_blank_values=True)
    return await client.search_all(path, params)


def _fhir_client(
    http: httpx.AsyncClient, base: str, auth: httpx.Auth | None, source: str | None = None
) -> FhirClient:
    return FhirClient(
        base,
        http,
        auth=auth,
        retry=RetryPolicy(max_attempts=2, base_delay=0.1, max_delay=0.3, max_retry_after=1.0),
        timeout=FETCH_TIMEOUT,
        request_id=current_request_id,
        max_pages=20,
        source=source,
    )


_RESOURCE = Resource.__table__  # type: ignore[attr-defined]
#: Built once: constructing the expression per call costs more than the indexed read itself.
_STORED = sa.select(_RESOURCE.c.raw).where(
    _RESOURCE.c.patient_key == sa.bindparam("key"), _RESOURCE.c.deleted.is_(False)
)


#: The same statement as each driver reads it (one positional parameter, the key).
_STORED_SQLITE = str(_STORED.compile(dialect=sqlite.dialect()))
_STORED_PG = str(_STORED.compile(dialect=postgresql.psycopg.dialect())).replace(  # type: ignore[no-untyped-call]
    "%(key)s", "%s"
)


def stored_resources(engine: Engine, space: str, patient_id: str) -> list[dict[str, Any]]:
    """The raw resources stored for ``{space}:{patient_id}`` (deleted ones excluded)."""
    key = f"{space}:{patient_id}"
    # The driver's connection straight from the pool: a Core execution costs more CPU than the
    # read itself (SQLite: 0.1 of 0.5 ms per call under load; PostgreSQL: 0.05 of 0.14 ms, measured).
    raw = engine.raw_connection()
    try:
        if engine.dialect.name == "sqlite":
            texts = raw.cursor().execute(_STORED_SQLITE, (key,)).fetchall()
            rows: list[Any] = [orjson.loads(t) for (t,) in texts if t is not None]
        else:
            # One statement, no transaction to end: autocommit (a client-side switch in psycopg)
            # spares PostgreSQL the ROLLBACK round trip the pool would send on the connection's
            # return; switched back before the pool has it again. jsonb arrives decoded (the
            # engine's loader, registered on each connection).
            driver: Any = raw.driver_connection
            try:
                driver.autocommit = True
                rows = [r for (r,) in driver.execute(_STORED_PG, (key,)).fetchall()]
                driver.autocommit = False
            except Exception:
                raw.invalidate()  # a broken connection goes no further than this read
                raise
    finally:
        raw.close()
    return [r for r in rows if isinstance(r, dict)]


def as_draft_orders(drafts: Iterable[dict[str, Any]], patient_id: str) -> list[dict[str, Any]]:
    """Draft ServiceRequests of the context, as the engine checks them: status draft, an order
    intent, the patient as subject, an id (CRD clients give one; else a stable position id)."""
    out = []
    for i, res in enumerate(drafts):
        if res.get("resourceType") != "ServiceRequest" or _is_ours(res):
            continue
        order = dict(res)
        order["status"] = "draft"
        if order.get("intent") not in ORDER_INTENTS:
            order["intent"] = "order"
        order.setdefault("id", f"draft-{i + 1}")
        order.setdefault("subject", {"reference": f"Patient/{patient_id}"})
        out.append(order)
    return out


def merge(*layers: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Later layers win for the same type/id; resources without an id are all kept."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    anonymous: list[dict[str, Any]] = []
    for layer in layers:
        for res in layer:
            if _is_ours(res):
                continue
            rid = res.get("id")
            if isinstance(rid, str) and rid:
                merged[(res["resourceType"], rid)] = res
            else:
                anonymous.append(res)
    return [*merged.values(), *anonymous]


async def read_patient(
    http: httpx.AsyncClient, base: str, auth: httpx.Auth | None, patient_id: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every prefetch template of the patient read from ``base`` (the SMART-launched evidence
    page reads the EHR this way): the resources, and the keys that could not be read."""
    client = _fhir_client(http, base, auth)
    tasks = [asyncio.ensure_future(_fetch_key(client, t, patient_id)) for t in PREFETCH.values()]
    done, pending = await asyncio.wait(tasks, timeout=FETCH_DEADLINE * 2)
    for task in pending:
        task.cancel()
    resources: list[dict[str, Any]] = []
    failed: list[str] = []
    for key, task in zip(PREFETCH, tasks, strict=True):
        error = task.exception() if task in done else TimeoutError("deadline")
        if error is not None:
            if not isinstance(error, FhirClientError | httpx.HTTPError | ValueError | TimeoutError):
                raise error
            failed.append(key)
            log.warning(
                "evidence.fetch.failed",
                key=key,
                error=type(error).__name__,
                status=getattr(error, "upstream_status", None),
            )
            continue
        resources = merge(resources, task.result())
    return resources, failed


def _why_failed(error: BaseException) -> str:
    """A failed fetch in words without patient data: the error class and the server's status."""
    status = getattr(error, "upstream_status", None)
    if isinstance(error, TimeoutError):
        return "no answer within the call's deadline"
    if status is not None:
        return f"the server answered {status}"
    return type(error).__name__


def _credential(
    call: HookCall, source: Source, sources: SourceClients | None
) -> tuple[httpx.Auth | None, str]:
    """How to read ``fhirServer``: the hook's ``fhirAuthorization``, else the source's own
    outbound credential, else no token (an open source)."""
    if call.access_token is not None:
        return UserToken(call.access_token), "fhirAuthorization"
    if source.outbound is not None and (source.outbound.smart or source.outbound.bearer):
        if sources is not None:
            return sources.credential(source), "source-credential"
        return auth_for(source), "source-credential"
    return None, "none"


async def _fetch_missing(
    call: HookCall,
    settings: Settings,
    http: httpx.AsyncClient | None,
    sources: SourceClients | None,
    states: dict[str, _KeyState],
    missing: list[str],
    data: HookData,
) -> str | None:
    """Fetch ``missing`` keys from ``fhirServer`` when allowed; the reason when nothing was read."""
    if not call.fhir_server:
        log.info("cds.fetch.refused", reason="no-fhir-server", keys=len(missing))
        return "the request names no fhirServer"
    source_id = source_for_server(settings, call.fhir_server)
    if source_id is None:
        log.warning("cds.fetch.refused", reason="fhir-server-not-a-source", keys=len(missing))
        return "fhirServer is not the fhir_base_url of a configured source (no other host is contacted)"
    if http is None:
        return "Pinpoint has no outbound HTTP client in this process"
    source = settings.config.source(source_id)
    auth, credential = _credential(call, source, sources)
    client = _fhir_client(http, call.fhir_server, auth, source_id)
    started = time.perf_counter()
    tasks = [asyncio.ensure_future(_fetch_key(client, PREFETCH[k], call.patient_id)) for k in missing]
    done, pending = await asyncio.wait(tasks, timeout=FETCH_DEADLINE)
    for task in pending:  # past the deadline: answer with what we have
        task.cancel()
    results: list[Any] = [
        (t.exception() or t.result()) if t in done else TimeoutError("fetch deadline") for t in tasks
    ]
    whys: list[str] = []
    for key, result in zip(missing, results, strict=True):
        if isinstance(result, FhirClientError | httpx.HTTPError | ValueError | TimeoutError):
            data.failed_keys.append(key)
            why = _why_failed(result)
            whys.append(f"{key}: {why}")
            log.warning(
                "cds.fetch.failed",
                source=source_id,
                key=key,
                credential=credential,
                error=type(result).__name__,
                status=getattr(result, "upstream_status", None),
            )
        elif isinstance(result, BaseException):
            raise result
        else:
            states[key].resources = merge(states[key].resources, result)
            states[key].satisfied = True
            states[key].needs_fetch = False
            data.fetched_keys.append(key)
    if data.fetched_keys:
        data.used.append("fhirServer")
    log.info(
        "cds.fetch",
        source=source_id,
        credential=credential,
        fetched=len(data.fetched_keys),
        failed=len(data.failed_keys),
        ms=round((time.perf_counter() - started) * 1000, 1),
    )
    if data.fetched_keys:
        return None
    how = {"fhirAuthorization": "with fhirAuthorization", "source-credential": "with the source's credential"}
    return f"reading {source_id} {how.get(credential, 'without a token')} failed ({'; '.join(whys)})"


class Slot:
    """A call's place among the calls :class:`Admission` lets work on a parsed prefetch at once."""

    def __init__(self, places: asyncio.Semaphore) -> None:
        self._places = places
        self._held = False

    async def take(self) -> None:
        await self._places.acquire()
        self._held = True

    def give(self) -> None:
        if self._held:
            self._held = False
            self._places.release()


class Admission:
    """At most ``places`` CDS calls between parsing their body and rendering their cards.

    Without it, at saturation every call that arrives is parsed at once and then waits, its
    prefetch parsed, at its first ``await`` (PostgreSQL's stored-data read, in a thread) behind
    the others: measured at 32 connections, a call ran beside 12–14 others on average (up to
    32), each holding its parsed prefetch, against none with one connection — memory grows with
    the connections (a prefetch may be megabytes), and a call resumes on data other calls have
    long pushed out of the processor's caches. A call waiting for its place holds its body's
    bytes only. A place is given back while the call waits for an EHR's ``fhirServer``
    (seconds, possibly), so that a slow server never holds the others up."""

    def __init__(self, places: int) -> None:
        self.places = places
        self._semaphore = asyncio.Semaphore(places)

    def slot(self) -> Slot:
        return Slot(self._semaphore)


async def gather(
    call: HookCall,
    settings: Settings,
    engine: Engine,
    http: httpx.AsyncClient | None,
    sources: SourceClients | None = None,
    slot: Slot | None = None,
) -> HookData:
    """Prefetch, then allowed fetches, then the store; see the module docstring. ``slot``: the
    call's place (:class:`Admission`), given back while the keys are fetched."""
    space = id_space(settings, call.fhir_server)
    states = read_prefetch(call.prefetch)
    data = HookData(resources=[], available=False, id_space=space, patient_key=f"{space}:{call.patient_id}")
    if any(s.satisfied for s in states.values()):
        data.used.append("prefetch")
    else:
        data.problems["prefetch"] = (
            "the request has no prefetch"
            if call.prefetch is None
            else "the prefetch has none of this service's keys (or only OperationOutcomes)"
        )
    missing = [k for k, s in states.items() if s.needs_fetch]
    if missing:
        if slot is not None:
            slot.give()
        try:
            why = await _fetch_missing(call, settings, http, sources, states, missing, data)
        finally:
            if slot is not None:
                await slot.take()
        if why is not None:
            data.problems["fhirServer"] = why
    if engine.dialect.name == "sqlite":
        # Embedded SQLite reads in-process (WAL: readers never wait for the writer); a thread hop
        # would cost more CPU than the read itself (measured: 0.3 ms per call under load).
        stored = stored_resources(engine, space, call.patient_id)
    else:  # a network round trip: off the event loop
        stored = await asyncio.to_thread(stored_resources, engine, space, call.patient_id)
    if stored:
        data.used.append("store")
    else:
        data.problems["store"] = f"Pinpoint stores nothing for this patient (source {space})"
        # Without a stored copy, a key neither prefetched nor fetched is data the rules lack.
        data.unavailable = frozenset(
            kind for k, s in states.items() if not s.satisfied or s.needs_fetch for kind in PREFETCH_DATA[k]
        )
    ehr = [r for s in states.values() for r in s.resources]
    data.resources = merge(stored, ehr, as_draft_orders(call.draft_orders, call.patient_id))
    data.available = bool(data.used)
    return data
