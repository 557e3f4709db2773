"""The evidence page as a SMART on FHIR app (SMART App Launch 2.x, EHR launch; CONTRACT §8).

Per source with a ``smart_app`` registration (``client_id``, ``scopes``, optional
``redirect_uri`` and ``client_secret``):

1. ``GET /smart/{source}/launch?launch=…&iss=…`` — the EHR opens it. ``iss`` must be the
   source's ``fhir_base_url`` (no other server is contacted). Pinpoint reads
   ``{iss}/.well-known/smart-configuration`` (``authorization_endpoint``, ``token_endpoint``;
   ``S256`` must be offered when ``code_challenge_methods_supported`` is listed), draws a
   ``state`` and a PKCE ``code_verifier`` (RFC 7636: 64 random bytes, base64url; the challenge is
   base64url(SHA-256(verifier)), method ``S256``) and redirects the browser to the authorization
   endpoint with ``response_type=code``, ``client_id``, ``redirect_uri``, ``launch``, ``scope``,
   ``state``, ``aud`` = ``iss`` and the challenge.
2. ``GET /smart/{source}/callback?code=…&state=…`` — the state must be one Pinpoint issued (once,
   within 10 minutes); the code is exchanged at the token endpoint with the verifier (HTTP Basic
   with ``client_secret`` for a confidential client, else ``client_id`` in the form). The token
   response must name the ``patient``. A server-side session (in this process, bounded, as long
   as the token lives and at most an hour) is bound to that patient, source and token; the
   browser gets only an unguessable id in an HttpOnly cookie scoped to ``/smart``.
3. ``GET /smart/evidence`` — the page of the session's patient, read from the EHR's FHIR server
   with the access token (the tokens are never logged or stored in the database).

Sessions and pending launches live in the process that made them: behind several replicas, send
``/smart/`` to one replica per browser (sticky sessions) or launch again.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import orjson
from pydantic import SecretStr

from shared.errors import InvalidInput, NotFound, Unauthorized, UpstreamError
from shared.logging import get_logger
from shared.settings import Settings, SmartApp, Source

log = get_logger("pinpoint.evidence.smart")

COOKIE = "pinpoint_smart"
PENDING_SECONDS = 600.0
MAX_SESSION_SECONDS = 3600.0
MAX_ENTRIES = 2000
TIMEOUT = httpx.Timeout(10.0, connect=5.0)


def code_verifier() -> str:
    """RFC 7636 §4.1: 43–128 characters of [A-Z a-z 0-9 - . _ ~]; 64 random bytes give 86."""
    return secrets.token_urlsafe(64)


def code_challenge(verifier: str) -> str:
    """RFC 7636 §4.2 ``S256``: BASE64URL-ENCODE(SHA256(ASCII(code_verifier))), no padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _same_base(a: str, b: str) -> bool:
    def norm(url: str) -> str:
        u = httpx.URL(url.strip())
        port = u.port or {"http": 80, "https": 443}.get(u.scheme)
        return f"{u.scheme}://{u.host}:{port}{u.path.rstrip('/')}"

    try:
        return norm(a) == norm(b)
    except (httpx.InvalidURL, TypeError):
        return False


@dataclass
class PendingLaunch:
    source: str
    iss: str
    verifier: str
    token_endpoint: str
    redirect_uri: str
    created: float


@dataclass
class SmartSession:
    """A launched evidence page: the patient from the token response, the token to read with."""

    source: str
    iss: str
    patient: str
    access_token: SecretStr
    expires: float
    app_context: str | None = None
    scope: str = ""

    @property
    def card(self) -> str | None:
        """The card named by ``appContext`` (``card=<uuid>``, as Pinpoint's SMART links set it)."""
        ctx = self.app_context or ""
        for part in ctx.replace("&", " ").split():
            if part.startswith("card="):
                return part.removeprefix("card=")
        return None


@dataclass
class SmartLaunch:
    """The SMART app side of the evidence page for a process (built by the container)."""

    settings: Settings
    http: httpx.AsyncClient
    clock: Any = field(default=time.monotonic)
    pending: OrderedDict[str, PendingLaunch] = field(default_factory=OrderedDict)
    sessions: OrderedDict[str, SmartSession] = field(default_factory=OrderedDict)

    @classmethod
    def build(cls, settings: Settings) -> SmartLaunch:
        return cls(settings, httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False))

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- configuration
    def app(self, source_id: str) -> tuple[Source, SmartApp]:
        for source in self.settings.config.sources:
            if source.id == source_id and source.smart_app is not None:
                return source, source.smart_app
        raise NotFound(f"No SMART app is registered for source {source_id!r}")

    def redirect_uri(self, source: Source, app: SmartApp) -> str:
        if app.redirect_uri is not None:
            return str(app.redirect_uri)
        return f"{self.settings.base_url}/smart/{source.id}/callback"

    def _prune(self) -> None:
        now = self.clock()
        for key in [k for k, p in self.pending.items() if now - p.created > PENDING_SECONDS]:
            del self.pending[key]
        for key in [k for k, s in self.sessions.items() if s.expires <= now]:
            del self.sessions[key]
        while len(self.pending) > MAX_ENTRIES:
            self.pending.popitem(last=False)
        while len(self.sessions) > MAX_ENTRIES:
            self.sessions.popitem(last=False)

    # -- 1. launch
    async def discover(self, iss: str) -> dict[str, Any]:
        url = iss.rstrip("/") + "/.well-known/smart-configuration"
        try:
            response = await self.http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            log.warning("smart.discovery_failed", error=type(exc).__name__)
            raise UpstreamError("The EHR's SMART configuration could not be read") from None
        if response.status_code != 200:
            log.warning("smart.discovery_failed", status=response.status_code)
            raise UpstreamError(f"The EHR's SMART configuration answered {response.status_code}")
        try:
            config = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise UpstreamError("The EHR's SMART configuration is not JSON") from None
        if not isinstance(config, dict) or not all(
            isinstance(config.get(k), str) for k in ("authorization_endpoint", "token_endpoint")
        ):
            raise UpstreamError("The EHR's SMART configuration names no authorization and token endpoints")
        methods = config.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise UpstreamError("The EHR does not offer PKCE S256, which Pinpoint requires")
        return config

    async def begin(self, source_id: str, launch: str | None, iss: str | None) -> str:
        """The authorization URL to redirect the browser to."""
        source, app = self.app(source_id)
        if not launch or not iss:
            raise InvalidInput(
                "An EHR launch needs the launch and iss parameters; open Pinpoint from the EHR"
            )
        if source.fhir_base_url is None or not _same_base(iss, str(source.fhir_base_url)):
            log.warning("smart.launch_refused", source=source_id, reason="iss-not-the-source")
            raise InvalidInput(f"iss is not the FHIR server of source {source_id}")
        config = await self.discover(iss)
        state = secrets.token_urlsafe(32)
        verifier = code_verifier()
        redirect_uri = self.redirect_uri(source, app)
        self._prune()
        self.pending[state] = PendingLaunch(
            source_id, iss, verifier, str(config["token_endpoint"]), redirect_uri, self.clock()
        )
        query = urlencode(
            {
                "response_type": "code",
                "client_id": app.client_id,
                "redirect_uri": redirect_uri,
                "launch": launch,
                "scope": app.scopes,
                "state": state,
                "aud": iss,
                "code_challenge": code_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        log.info("smart.launch", source=source_id)
        endpoint = str(config["authorization_endpoint"])
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    # -- 2. callback
    async def complete(self, source_id: str, code: str | None, state: str | None, error: str | None) -> str:
        """Exchange the code; the new session's id (for the cookie)."""
        _, app = self.app(source_id)
        if error:
            log.warning("smart.authorize_refused", source=source_id, error=error[:40])
            raise Unauthorized(f"The EHR refused the launch ({error[:40]}); open Pinpoint from the EHR again")
        self._prune()
        pending = self.pending.pop(state or "", None)
        if pending is None or pending.source != source_id:
            log.warning("smart.callback_refused", source=source_id, reason="unknown-state")
            raise Unauthorized("This launch is unknown or has expired; open Pinpoint from the EHR again")
        if not code:
            raise InvalidInput("The EHR's answer has no authorization code")
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": pending.redirect_uri,
            "code_verifier": pending.verifier,
        }
        headers = {"Accept": "application/json"}
        if app.client_secret is not None:  # client_secret_basic (RFC 6749 §2.3.1)
            pair = f"{quote(app.client_id, safe='')}:{quote(app.client_secret.get_secret_value(), safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form["client_id"] = app.client_id
        try:
            response = await self.http.post(pending.token_endpoint, data=form, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("smart.token_failed", source=source_id, error=type(exc).__name__)
            raise UpstreamError("The EHR's token endpoint could not be reached") from None
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = {}
        if response.status_code != 200 or not isinstance(body, dict) or not body.get("access_token"):
            oauth_error = str(body.get("error", "")) if isinstance(body, dict) else ""
            log.warning(
                "smart.token_refused", source=source_id, status=response.status_code, error=oauth_error[:40]
            )
            raise Unauthorized("The EHR did not grant access; open Pinpoint from the EHR again")
        patient = body.get("patient")
        if not isinstance(patient, str) or not patient:
            log.warning("smart.token_refused", source=source_id, reason="no-patient")
            raise Unauthorized("The EHR gave no patient context; open Pinpoint from a patient's chart")
        lifetime = body.get("expires_in")
        seconds = (
            float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 else MAX_SESSION_SECONDS
        )
        session = SmartSession(
            source_id,
            pending.iss,
            patient,
            SecretStr(str(body["access_token"])),
            self.clock() + min(seconds, MAX_SESSION_SECONDS),
            body.get("appContext") if isinstance(body.get("appContext"), str) else None,
            str(body.get("scope") or ""),
        )
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = session
        self._prune()
        log.info("smart.session", source=source_id)
        return sid

    # -- 3. the page
    def session(self, sid: str | None) -> SmartSession:
        self._prune()
        found = self.sessions.get(sid or "")
        if found is None:
            raise Unauthorized(
                "The session has ended; open Pinpoint again from the patient's chart in the EHR"
            )
        return found

    def cookie_secure(self) -> bool:
        return self.settings.base_url.startswith("https://")
