"""One place mapping a configured source (``shared.settings.Source``) onto an outbound FHIR client.

    http = source_http_client()                     # one httpx.AsyncClient per source
    fhir = client_for(source, http)                 # FhirClient bound to source.fhir_base_url

or, in a process, one :class:`SourceClients` (built by the composition root, closed on shutdown)::

    clients = SourceClients()
    fhir = clients.get(source)

``outbound.smart`` becomes :class:`~shared.fhir.smart.SmartBackendAuth` (client_credentials with a
private_key_jwt assertion, token cached until expiry); ``outbound.bearer`` a static bearer token.
Every request stays within ``fhir_base_url`` (the client refuses any other host).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import httpx

from shared.errors import ConfigError
from shared.fhir.client import FhirClient, RetryPolicy
from shared.fhir.smart import SmartBackendAuth, SmartCredentials
from shared.logging import current_request_id
from shared.settings import Source

__all__ = ["SourceClients", "auth_for", "client_for", "source_http_client"]

#: Timeouts for calls to a hospital's FHIR server.
SOURCE_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class _StaticBearer(httpx.Auth):
    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


def source_http_client(**options: Any) -> httpx.AsyncClient:
    """The httpx client for one source: timeouts, no redirects, bounded pool."""
    options.setdefault("timeout", SOURCE_TIMEOUT)
    options.setdefault("follow_redirects", False)
    options.setdefault("limits", httpx.Limits(max_connections=20, max_keepalive_connections=10))
    return httpx.AsyncClient(**options)


def auth_for(source: Source) -> httpx.Auth | None:
    """The outbound credential of a source: SMART Backend Services, a bearer token, or none."""
    outbound = source.outbound
    if outbound is None:
        return None
    if outbound.smart is not None:
        smart = outbound.smart
        return SmartBackendAuth(
            SmartCredentials(
                client_id=smart.client_id,
                token_url=str(smart.token_url),
                private_key_pem=smart.private_key.get_secret_value(),
                alg=smart.alg,
                scopes=smart.scopes,
                kid=smart.kid,
            )
        )
    if outbound.bearer is not None:
        return _StaticBearer(outbound.bearer.get_secret_value())
    return None


def client_for(
    source: Source,
    http: httpx.AsyncClient,
    *,
    retry: RetryPolicy | None = None,
    auth: httpx.Auth | None = None,
) -> FhirClient:
    """A :class:`FhirClient` on ``source.fhir_base_url`` with the source's outbound credential.

    ``auth`` overrides the configured credential (a caller that keeps one SMART token cache per
    source passes it in). Raises :class:`ConfigError` when the source has no ``fhir_base_url``.
    """
    if source.fhir_base_url is None:
        raise ConfigError(f"source {source.id!r} has no fhir_base_url")
    return FhirClient(
        str(source.fhir_base_url).rstrip("/"),
        http,
        auth=auth if auth is not None else auth_for(source),
        retry=retry,
        request_id=current_request_id,
        source=source.id,
    )


class SourceClients:
    """Per process: one httpx client, one credential (token cache) and one FhirClient per source.

    ``http_factory`` builds the httpx client of a source (tests inject a transport).
    """

    def __init__(
        self,
        *,
        http_factory: Callable[[Source], httpx.AsyncClient] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._factory = http_factory or (lambda _source: source_http_client())
        self._retry = retry
        self._clients: dict[str, tuple[Source, httpx.AsyncClient, FhirClient, httpx.Auth | None]] = {}
        self._retired: list[httpx.AsyncClient] = []

    def get(self, source: Source) -> FhirClient:
        held = self._clients.get(source.id)
        if held is not None and held[0] == source:
            return held[2]
        if held is not None:  # the source's configuration changed: close the old client later
            self._retired.append(held[1])
        http = self._factory(source)
        auth = auth_for(source)
        fhir = client_for(source, http, retry=self._retry, auth=auth)
        self._clients[source.id] = (source, http, fhir, auth)
        return fhir

    def credential(self, source: Source) -> httpx.Auth | None:
        """The source's outbound credential, sharing the token cache of :meth:`get`'s client (a
        CDS call that reads ``fhirServer`` with the source's own credentials uses it)."""
        self.get(source)
        return self._clients[source.id][3]

    async def aclose(self) -> None:
        held, self._clients = list(self._clients.values()), {}
        retired, self._retired = self._retired, []
        for http in [*(h[1] for h in held), *retired]:
            await http.aclose()
