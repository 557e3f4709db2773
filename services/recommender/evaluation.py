"""The one place the worker and the read API call the criteria engine.

:class:`Evaluator` holds the configured policy; :meth:`Evaluator.patient_entry` turns one
patient's stored raw resources into that patient's entry of the assessment document (CONTRACT
§3), with each alert's evidence references added (``alerts[].evidence``) for the DetectedIssues.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.recommender.engine import Policy, PolicyError, assessment_document, evaluate, load_policy
from services.recommender.suggestions import PolicyRef
from shared.domain.normalize import normalize
from shared.errors import ConfigError
from shared.settings import Settings


def empty_entry(patient_ref: str) -> dict[str, Any]:
    return {"patient": patient_ref, "assessments": [], "orderChecks": [], "alerts": []}


@dataclass(frozen=True)
class Evaluator:
    policy: Policy

    @classmethod
    def load(cls, name_or_path: str) -> Evaluator:
        return cls(load_policy(name_or_path))

    @classmethod
    def from_settings(cls, settings: Settings) -> Evaluator:
        """The configured policy (``PINPOINT_POLICY``); an invalid one is a :class:`ConfigError`."""
        try:
            return cls.load(settings.policy)
        except PolicyError as exc:
            raise ConfigError(f"PINPOINT_POLICY: {exc}") from None

    @property
    def ref(self) -> PolicyRef:
        return PolicyRef(self.policy.id, str(self.policy.version))

    def patient_entry(
        self, resources: Iterable[Mapping[str, Any]], patient_ref: str, now: datetime
    ) -> dict[str, Any]:
        """The §3 entry of ``patient_ref`` (``Patient/<id>``); empty lists when nothing applies."""
        facts = normalize(resources).get(patient_ref)
        if facts is None:
            return empty_entry(patient_ref)
        result = evaluate(facts, self.policy, now=now)
        entry: dict[str, Any] = assessment_document([result], self.policy, now)["patients"][0]
        for doc_alert, alert in zip(entry["alerts"], result.alerts, strict=True):
            if alert.evidence:
                doc_alert["evidence"] = list(alert.evidence)
        return entry

    def document(
        self, resources: Iterable[Mapping[str, Any]], patient_ref: str, now: datetime
    ) -> dict[str, Any]:
        """The whole §3 document for one patient (alerts exactly as §3: code, severity, text)."""
        entry = self.patient_entry(resources, patient_ref, now)
        for alert in entry["alerts"]:
            alert.pop("evidence", None)
        return {
            "policy": {"id": self.policy.id, "version": str(self.policy.version)},
            "evaluatedAt": now.isoformat(),
            "patients": [entry],
        }
