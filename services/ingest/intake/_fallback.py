"""Stand-in for ``shared.domain.relevance`` / ``normalize`` / ``shared.fhir.bundle`` until the
facet engine's modules are merged (same signatures, a deliberately small rule set)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CPT = "http://www.ama-assn.org/go/cpt"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
PAIN_SCALES = {"72514-3", "38208-5", "38214-3"}
INTERVENTIONS = {
    *(str(c) for c in range(64490, 64496)),
    *(f"021{i}T" for i in range(3, 9)),
    *(str(c) for c in range(64633, 64637)),
    "27096",
    "G0260",
    "64451",
    "64625",
    *(str(c) for c in range(62320, 62324)),
    *(str(c) for c in range(64479, 64485)),
    "64624",
    "64454",
    "20610",
    "20611",
}
OTHER_PROCEDURES = {"99152", "99153", *(f"0{c}" for c in range(1937, 1943))} | {
    "97110",
    "97112",
    "97140",
    "97530",
    "97161",
    "97162",
    "97163",
}
RX = {"6387", "1815", "35780", "10759", "6902", "3264", "1514", "6960", "4337", "8782"} | {
    "5640",
    "7258",
    "3355",
    "41493",
    "140587",
    "35827",
    "4258",
    "31448",
    "5781",
    "161",
}


@dataclass(frozen=True, slots=True)
class Relevance:
    kept: bool
    category: str
    reason: str = ""


def _codes(concept: Any, system: str) -> set[str]:
    if not isinstance(concept, Mapping):
        return set()
    return {
        str(c.get("code"))
        for c in concept.get("coding") or ()
        if isinstance(c, Mapping) and c.get("system") == system
    }


def classify(resource: Mapping[str, Any]) -> Relevance:
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return Relevance(False, "unknown", "no resourceType")
    for ident in resource.get("identifier") or ():
        if isinstance(ident, Mapping) and ident.get("system") == "urn:pinpoint:recommendation":
            return Relevance(False, "own-proposal", "Pinpoint's own proposal")
    if rtype in ("Patient", "Condition", "BodyStructure"):
        return Relevance(True, rtype.lower())
    if rtype == "Observation":
        kept = bool(_codes(resource.get("code"), LOINC) & PAIN_SCALES)
        return Relevance(kept, "pain-score" if kept else "observation")
    if rtype in ("Procedure", "ServiceRequest"):
        codes = _codes(resource.get("code"), CPT)
        kept = bool(codes & INTERVENTIONS) or (rtype == "Procedure" and bool(codes & OTHER_PROCEDURES))
        return Relevance(kept, "intervention" if kept else rtype.lower())
    if rtype in ("MedicationAdministration", "MedicationStatement", "MedicationRequest", "Medication"):
        concept = resource.get("code") if rtype == "Medication" else resource.get("medicationCodeableConcept")
        if concept is None and rtype != "Medication" and resource.get("medicationReference"):
            return Relevance(True, "medication", "agent in a referenced Medication")
        kept = bool(_codes(concept, RXNORM) & RX)
        return Relevance(kept, "medication")
    return Relevance(False, rtype.lower(), f"{rtype} is not used by Pinpoint's rules")


def patient_reference(resource: Mapping[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return f"Patient/{rid}" if isinstance(rid, str) and rid else None
    for key in ("subject", "patient", "beneficiary"):
        value = resource.get(key)
        if isinstance(value, Mapping) and isinstance(value.get("reference"), str):
            return str(value["reference"])
    return None


def normalize_resource(resource: Mapping[str, Any]) -> dict[str, Any] | None:
    rel = classify(resource)
    if not rel.kept:
        return None
    return {
        "kind": rel.category,
        "resourceType": resource.get("resourceType"),
        "status": resource.get("status"),
    }


def resource_id(resource: Mapping[str, Any], full_url: str | None = None) -> str:
    rid = resource.get("id")
    if isinstance(rid, str) and rid:
        return rid
    if full_url and full_url.startswith("urn:uuid:"):
        return full_url[len("urn:uuid:") :]
    raw = json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]
