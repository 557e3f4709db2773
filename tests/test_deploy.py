"""Deploy manifests parse, run only commands the image has, and probe the real endpoints."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.server import Role

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _containers() -> list[dict]:  # type: ignore[type-arg]
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "pinpoint.yaml").read_text()))
    found = []
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        found.extend(spec.get("containers", []))
    return found


def test_k8s_roles_and_probes_exist() -> None:
    containers = _containers()
    roles = {c["args"][c["args"].index("--role") + 1] for c in containers if "--role" in c["args"]}
    assert roles == {Role.ingest.value, Role.recommender.value, Role.worker.value}
    for c in containers:
        if c["args"][0] == "serve":
            assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_compose_runs_migrations_before_roles() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for role in ("ingest", "recommender", "worker"):
        assert services[role]["command"] == ["serve", "--role", role]
        assert services[role]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
