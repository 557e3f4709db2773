"""The three CDS services and their prefetch templates — CONTRACT §2, with the functional
instruments of issue 19 (their LOINC codes on ``observations``; ``questionnaireResponses``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.domain import terminology as t

# pain scales first (CONTRACT §2), then the functional instruments' LOINC codes (issue 19)
_OBSERVATION_CODES = ",".join(
    f"http://loinc.org|{c}" for c in ("72514-3", "38208-5", "38214-3", *sorted(t.FUNCTION_CODES))
)

PREFETCH: dict[str, str] = {
    "patient": "Patient/{{context.patientId}}",
    "procedures": "Procedure?patient={{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}&code=" + _OBSERVATION_CODES,
    "conditions": "Condition?patient={{context.patientId}}",
    "medications": "MedicationAdministration?patient={{context.patientId}}",
    "medicationStatements": "MedicationStatement?patient={{context.patientId}}",
    "medicationRequests": "MedicationRequest?patient={{context.patientId}}",
    "questionnaireResponses": "QuestionnaireResponse?patient={{context.patientId}}&status=completed,amended",
}

#: The kind of data each prefetch key carries (``engine.completeness.DATA_KINDS``): what is named
#: when a key could be neither prefetched nor fetched.
PREFETCH_DATA: dict[str, tuple[str, ...]] = {
    "patient": ("patient",),
    "procedures": ("procedures",),
    "observations": ("pain-scores", "function-scores"),  # function instruments' totals too (issue 19)
    "conditions": ("diagnoses",),
    "medications": ("medication-administrations",),
    "medicationStatements": ("medication-history",),
    "medicationRequests": ("medication-history",),
    "questionnaireResponses": ("function-scores",),
}


@dataclass(frozen=True)
class CdsService:
    id: str
    hook: str
    title: str
    description: str

    def discovery(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(PREFETCH),
        }


SERVICES: dict[str, CdsService] = {
    s.id: s
    for s in (
        CdsService(
            "pinpoint-patient-view",
            "patient-view",
            "Pinpoint: interventional pain next steps",
            "Whether the pain generator is confirmed and which procedure (nerve block, radiofrequency "
            "ablation, steroid injection) the evidence supports next, with patient-level alerts.",
        ),
        CdsService(
            "pinpoint-order-select",
            "order-select",
            "Pinpoint: early check of a selected pain procedure order",
            "Checks a selected RFA, facet, SIJ, epidural or knee injection order against the coverage "
            "criteria while the order is being composed.",
        ),
        CdsService(
            "pinpoint-order-sign",
            "order-sign",
            "Pinpoint: criteria check of a pain procedure order before signing",
            "Checks an RFA, facet, SIJ, epidural or knee injection order against the coverage criteria "
            "and proposes the right next step when they are not met.",
        ),
    )
}


def discovery_document() -> dict[str, Any]:
    return {"services": [s.discovery() for s in SERVICES.values()]}
