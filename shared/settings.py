"""Settings: environment variables (``PINPOINT_``) and the structured YAML config file.

CONTRACT §7 is the authority. Everything is validated at start; :func:`load_settings` turns any
problem into a :class:`~shared.errors.ConfigError` whose message is one line naming the variable
or key.
"""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.errors import ConfigError
from shared.logging import get_logger
from shared.paths import default_database_path

_log = get_logger("pinpoint.settings")

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> timedelta:
    """``15m``, ``90s``, ``2h``, ``1d``, a number of seconds, or a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 15m, 2h)")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def resolve_secret(value: Any) -> Any:
    """``env:VAR`` reads an environment variable, ``file:/path`` a file; else the value itself."""
    if not isinstance(value, str):
        return value
    if value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    if value.startswith("file:"):
        path = Path(value[5:])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Secret = Annotated[SecretStr, BeforeValidator(resolve_secret)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InboundAuth(_Strict):
    """How a source proves a push is its own: a bearer token or an HMAC over the raw body."""

    bearer: Secret | None = None
    hmac_secret: Secret | None = None
    header: str = "X-Signature"

    @model_validator(mode="after")
    def _one_kind(self) -> InboundAuth:
        if self.bearer is not None and self.hmac_secret is not None:
            raise ValueError("give either bearer or hmac_secret, not both")
        return self


class SmartConfig(_Strict):
    client_id: str
    token_url: HttpUrl
    private_key: Secret
    alg: Literal["RS384", "ES384"] = "RS384"
    scopes: str
    kid: str | None = None


class OutboundAuth(_Strict):
    smart: SmartConfig | None = None
    bearer: Secret | None = None


class SmartApp(_Strict):
    """The evidence page registered as a SMART on FHIR app in this source's EHR (EHR launch,
    authorization code with PKCE S256). ``redirect_uri`` defaults to
    ``{PINPOINT_PUBLIC_BASE_URL}/smart/{source id}/callback``; a confidential client also gives
    ``client_secret`` (sent with HTTP Basic), a public one leaves it out."""

    client_id: str
    scopes: str = "launch openid fhirUser patient/Patient.rs patient/Procedure.rs patient/Observation.rs"
    redirect_uri: HttpUrl | None = None
    client_secret: Secret | None = None


class SubscriptionConfig(_Strict):
    mode: Literal["classic", "backport", "r5", "none"] = "none"
    reconcile_every: Duration = timedelta(minutes=15)
    topic: str | None = None


class Source(_Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    fhir_base_url: HttpUrl | None = None
    inbound: InboundAuth | None = None
    # Writes without a credential although credentials are configured: only when said here
    # (README "Security"); a non-loopback bind then logs a warning naming the source.
    open: bool = False
    outbound: OutboundAuth | None = None
    subscriptions: SubscriptionConfig = SubscriptionConfig()
    patient_identifier_system: str | None = None
    smart_app: SmartApp | None = None

    @model_validator(mode="after")
    def _smart_app_needs_base(self) -> Source:
        if self.smart_app is not None and self.fhir_base_url is None:
            raise ValueError(
                "smart_app needs the source's fhir_base_url (the EHR's FHIR server, the launch iss)"
            )
        return self

    @model_validator(mode="after")
    def _open_or_inbound(self) -> Source:
        if self.open and self.inbound is not None:
            raise ValueError("give either inbound or open: true, not both")
        return self


class Writeback(_Strict):
    source: str
    fhir_version: Literal["R4", "R5"] = "R4"
    max_attempts: int = Field(default=8, ge=1)
    # Delivery knobs (README "Write-back"): per-request timeout, first retry delay (doubling,
    # full jitter, at most max_backoff; a server's Retry-After wins).
    timeout: Duration = timedelta(seconds=30)
    backoff: Duration = timedelta(seconds=5)
    max_backoff: Duration = timedelta(minutes=30)


class TrustedIssuer(_Strict):
    iss: str
    jwks_url: HttpUrl | None = None
    jwks_file: Path | None = None

    @model_validator(mode="after")
    def _one_jwks(self) -> TrustedIssuer:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("give exactly one of jwks_url or jwks_file")
        return self


class CdsConfig(_Strict):
    source: str | None = None
    trusted_issuers: list[TrustedIssuer] = []
    evidence_link_ttl: Duration = timedelta(hours=12)  # a clinic session: a chart left open still opens it
    evidence_retention: Duration = timedelta(days=7)  # how long a card's evidence snapshot is kept
    clock_skew: Duration = timedelta(minutes=5)


class ConfigFile(_Strict):
    """The structured part of the configuration (``PINPOINT_CONFIG_FILE``)."""

    sources: list[Source] = []
    writeback: Writeback | None = None
    cds: CdsConfig = CdsConfig()

    @field_validator("writeback", mode="before")
    @classmethod
    def _none_writeback(cls, value: Any) -> Any:
        return None if value in ("none", "None") else value

    @model_validator(mode="after")
    def _references(self) -> ConfigFile:
        ids = [s.id for s in self.sources]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise ValueError(f"duplicate source id {sorted(dupes)[0]}")
        if self.writeback and self.writeback.source not in ids:
            raise ValueError(f"writeback.source {self.writeback.source!r} is not a configured source")
        if self.writeback and self.source(self.writeback.source).fhir_base_url is None:
            raise ValueError("writeback.source needs a fhir_base_url")
        if self.cds.source and self.cds.source not in ids and self.cds.source != "default":
            raise ValueError(f"cds.source {self.cds.source!r} is not a configured source")
        return self

    def source(self, source_id: str) -> Source:
        for s in self.sources:
            if s.id == source_id:
                return s
        if source_id == "default":
            return Source(id="default")
        raise KeyError(source_id)


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CsvList = Annotated[list[str], NoDecode, BeforeValidator(_split_csv)]


class Settings(BaseSettings):
    """Process settings. Tests build ``Settings(...)`` explicitly."""

    model_config = SettingsConfigDict(env_prefix="PINPOINT_", env_file=".env", extra="ignore", frozen=True)

    database_url: str = Field(default_factory=lambda: f"sqlite:///{default_database_path()}")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_base_url: HttpUrl | None = None
    policy: str = "cms-lcd"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["console", "json"] = "console"
    cors_origins: CsvList = []
    config_file: Path | None = None
    api_tokens: CsvList = []
    admin_tokens: CsvList = []
    link_secret: Secret | None = None  # signs evidence links; set it when several replicas serve
    # The largest request body any write path reads (413 beyond; CDS calls keep their own, lower cap).
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Operational knobs (not in the contract table; documented in the README).
    worker_poll_interval: Duration = timedelta(seconds=2)
    claim_ttl: Duration = timedelta(minutes=5)
    ready_max_queue_age: Duration = timedelta(minutes=30)
    ready_max_outbox_age: Duration = timedelta(hours=1)

    config: ConfigFile = ConfigFile()

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _db_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql")):
            raise ValueError("use sqlite:///path or postgresql+psycopg://…")
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value.removeprefix("postgresql://")
        return value

    @model_validator(mode="after")
    def _load_config_file(self) -> Settings:
        if self.config_file is not None and not self.config.sources and self.config.writeback is None:
            object.__setattr__(self, "config", read_config_file(self.config_file))
        return self

    @property
    def base_url(self) -> str:
        if self.public_base_url is not None:
            return str(self.public_base_url).rstrip("/")
        return f"http://{self.host}:{self.port}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def auth_configured(self) -> bool:
        """Any credential at all: from then on every read needs an API token and every write its
        source's credential (unless the source says ``open: true``)."""
        return self.data_credentials_configured or bool(self.config.cds.trusted_issuers)

    @property
    def data_credentials_configured(self) -> bool:
        """Credentials that protect the read and write paths: API or admin tokens, a source's
        inbound credential. CDS trusted issuers protect the CDS endpoints only."""
        inbound = any(s.inbound for s in self.config.sources)
        return bool(self.api_tokens or self.admin_tokens or inbound)

    def writes_open(self, source: Source) -> bool:
        """Whether ``source`` accepts writes without a credential: when it says ``open: true``,
        or while no credential at all is configured (loopback only)."""
        return source.inbound is None and (source.open or not self.auth_configured)

    def check_bind(self, host: str | None = None) -> list[str]:
        """Binding beyond loopback needs credentials on the read and write paths (CONTRACT §2);
        returns the sources then open for writes (``open: true``), each logged as a warning."""
        host = host or self.host
        if _is_loopback(host):
            return []
        if not self.data_credentials_configured:
            issuers_only = " (cds.trusted_issuers guards the CDS endpoints only)" * bool(
                self.config.cds.trusted_issuers
            )
            raise ConfigError(
                f"refusing to bind {host}: no credentials protect the data{issuers_only} (set "
                "PINPOINT_API_TOKENS and PINPOINT_ADMIN_TOKENS, or bind 127.0.0.1)"
            )
        exposed = [s.id for s in self.config.sources if s.open]
        for source_id in exposed:
            _log.warning("config.source.open", source=source_id, host=host, writes="without a credential")
        return exposed


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_config_file(path: Path) -> ConfigFile:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"PINPOINT_CONFIG_FILE: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"PINPOINT_CONFIG_FILE: {path} is not valid YAML: {exc}".splitlines()[0]) from None
    try:
        return ConfigFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"PINPOINT_CONFIG_FILE {path}: {_first_error(exc, '')}") from None


def _first_error(exc: ValidationError, prefix: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if p != "config")
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{prefix}{loc.upper() if prefix else loc}: {msg}" if loc else f"{prefix.rstrip('_')}: {msg}"


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and overrides); a one-line ConfigError on any problem."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid setting {_first_error(exc, 'PINPOINT_')}") from None
