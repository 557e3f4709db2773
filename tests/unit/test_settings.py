"""Settings as CONTRACT §7: environment, the YAML config file, one-line errors, bind safety."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.settings import Settings, load_settings


def test_defaults_are_the_embedded_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded database is in the user's data folder, whatever the current folder."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    s = load_settings(_env_file=None)
    assert s.database_url == f"sqlite:///{tmp_path / 'data' / 'pinpoint' / 'pinpoint.db'}"
    monkeypatch.chdir("/")
    assert load_settings(_env_file=None).database_url == s.database_url
    monkeypatch.setenv("PINPOINT_DATABASE_URL", "sqlite:////srv/pinpoint.db")
    assert load_settings(_env_file=None).database_url == "sqlite:////srv/pinpoint.db"
    monkeypatch.delenv("PINPOINT_DATABASE_URL")
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.base_url == "http://127.0.0.1:8080"
    assert s.policy == "cms-lcd"
    assert (s.log_level, s.log_format) == ("info", "console")
    assert s.api_tokens == [] and s.admin_tokens == [] and s.cors_origins == []


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINPOINT_PORT", "9000")
    monkeypatch.setenv("PINPOINT_API_TOKENS", "a, b ,c")
    monkeypatch.setenv("PINPOINT_CORS_ORIGINS", "https://ehr.example")
    monkeypatch.setenv("PINPOINT_LOG_FORMAT", "JSON")
    monkeypatch.setenv("PINPOINT_PUBLIC_BASE_URL", "https://pinpoint.example/")
    monkeypatch.setenv("PINPOINT_DATABASE_URL", "postgresql://postgres@db/pinpoint")
    s = load_settings(_env_file=None)
    assert s.port == 9000
    assert s.api_tokens == ["a", "b", "c"]
    assert s.cors_origins == ["https://ehr.example"]
    assert s.log_format == "json"
    assert s.base_url == "https://pinpoint.example"
    assert s.database_url == "postgresql+psycopg://postgres@db/pinpoint"


@pytest.mark.parametrize(
    ("var", "value", "named"),
    [
        pytest.param("PINPOINT_PORT", "eighty", "PINPOINT_PORT", id="port-not-int"),
        pytest.param("PINPOINT_PORT", "70000", "PINPOINT_PORT", id="port-range"),
        pytest.param("PINPOINT_LOG_FORMAT", "xml", "PINPOINT_LOG_FORMAT", id="log-format"),
        pytest.param("PINPOINT_DATABASE_URL", "mysql://x", "PINPOINT_DATABASE_URL", id="db-scheme"),
        pytest.param("PINPOINT_PUBLIC_BASE_URL", "not a url", "PINPOINT_PUBLIC_BASE_URL", id="base-url"),
    ],
)
def test_invalid_variable_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, named: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as exc:
        load_settings(_env_file=None)
    message = str(exc.value)
    assert named in message
    assert "\n" not in message


CONFIG = """
sources:
  - id: hospital-a
    fhir_base_url: https://fhir.hospital-a.example/R4
    inbound: {bearer: env:HOSP_A_TOKEN}
    outbound:
      smart: {client_id: pinpoint, token_url: https://auth.hospital-a.example/token,
              private_key: "file:KEYFILE", alg: RS384, scopes: "system/CarePlan.cu"}
    subscriptions: {mode: backport, reconcile_every: 15m}
    smart_app: {client_id: pinpoint-evidence, client_secret: env:HOSP_A_TOKEN}
  - id: engine
    inbound: {hmac_secret: s3cret, header: X-Signature}
writeback: {source: hospital-a, fhir_version: R4}
cds:
  source: hospital-a
  trusted_issuers:
    - {iss: https://ehr.example/cds-client, jwks_url: https://ehr.example/jwks.json}
  evidence_link_ttl: 15m
  evidence_retention: 30d
"""


def test_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key = tmp_path / "a.pem"
    key.write_text("PEM DATA\n")
    path = tmp_path / "pinpoint.yaml"
    path.write_text(CONFIG.replace("KEYFILE", str(key)))
    monkeypatch.setenv("HOSP_A_TOKEN", "tok")
    monkeypatch.setenv("PINPOINT_CONFIG_FILE", str(path))
    s = load_settings(_env_file=None)
    a = s.config.source("hospital-a")
    assert a.inbound is not None and a.inbound.bearer is not None
    assert a.inbound.bearer.get_secret_value() == "tok"
    assert a.outbound is not None and a.outbound.smart is not None
    assert a.outbound.smart.private_key.get_secret_value() == "PEM DATA"
    assert a.subscriptions.reconcile_every == timedelta(minutes=15)
    assert s.config.writeback is not None and s.config.writeback.source == "hospital-a"
    assert s.config.cds.evidence_link_ttl == timedelta(minutes=15)
    assert s.config.cds.evidence_retention == timedelta(days=30)
    assert a.smart_app is not None and a.smart_app.client_id == "pinpoint-evidence"
    assert a.smart_app.client_secret is not None and a.smart_app.client_secret.get_secret_value() == "tok"
    assert "launch" in a.smart_app.scopes.split() and a.smart_app.redirect_uri is None
    assert s.config.source("engine").smart_app is None
    assert s.auth_configured


def test_evidence_defaults_cover_a_clinic_session_and_a_week() -> None:
    cds = Settings(_env_file=None).config.cds  # type: ignore[call-arg]
    assert cds.evidence_link_ttl == timedelta(hours=12)
    assert cds.evidence_retention == timedelta(days=7)


@pytest.mark.parametrize(
    ("yaml_text", "named"),
    [
        pytest.param(
            "sources: [{id: a, inbound: {bearer: env:NOPE_UNSET}}]",
            "sources.0.inbound.bearer",
            id="env-unset",
        ),
        pytest.param("writeback: {source: ghost}", "writeback.source", id="writeback-unknown-source"),
        pytest.param(
            "sources: [{id: a, smart_app: {client_id: x}}]",
            "sources.0: smart_app needs",
            id="smart-app-no-base",
        ),
        pytest.param("sources: [{id: a, colour: blue}]", "sources.0.colour", id="unknown-key"),
        pytest.param(
            "sources: [{id: a, subscriptions: {reconcile_every: soon}}]", "reconcile_every", id="duration"
        ),
        pytest.param("cds: {trusted_issuers: [{iss: x}]}", "trusted_issuers", id="issuer-without-jwks"),
        pytest.param("sources: [: bad", "not valid YAML", id="yaml-syntax"),
    ],
)
def test_invalid_config_file_names_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, yaml_text: str, named: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    monkeypatch.setenv("PINPOINT_CONFIG_FILE", str(path))
    with pytest.raises(ConfigError) as exc:
        load_settings(_env_file=None)
    assert named in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("host", "tokens", "allowed"),
    [
        pytest.param("127.0.0.1", [], True, id="loopback-open"),
        pytest.param("::1", [], True, id="ipv6-loopback-open"),
        pytest.param("0.0.0.0", [], False, id="all-interfaces-without-credentials"),
        pytest.param("0.0.0.0", ["t"], True, id="all-interfaces-with-tokens"),
    ],
)
def test_bind_requires_credentials_beyond_loopback(host: str, tokens: list[str], allowed: bool) -> None:
    s = Settings(host=host, api_tokens=tokens, _env_file=None)  # type: ignore[call-arg]
    if allowed:
        s.check_bind()
    else:
        with pytest.raises(ConfigError, match="refusing to bind"):
            s.check_bind()
