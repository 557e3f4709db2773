"""Minimum necessary (CONTRACT §2): does Pinpoint keep this raw resource?

Runs on the raw JSON dict before any model validation, so it must stay cheap. Kept: Patient,
Condition, the resources of CONTRACT §4's value sets (pain interventions, sedation and
anaesthesia, physical therapy, pain and function scores, provocation tests, anaesthetic,
sedative and NSAID medications, corticosteroid injections of any site or route other than
oral, orders whose code maps to a pathway), BodyStructure and Medication. Function scores are
Observations and QuestionnaireResponses of the functional instruments of
:mod:`shared.domain.function` only (minimum necessary: any other questionnaire is dropped). Never kept:
Pinpoint's own proposals (identifier system ``urn:pinpoint:recommendation``). SNOMED procedure
codes are never mapped, so cardiac ablation (18286008) or a labour epidural (18946005) is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from shared.domain import _json as j
from shared.domain import terminology as t
from shared.domain.function import instrument_in_text, questionnaire_instrument


@dataclass(frozen=True, slots=True)
class Relevance:
    kept: bool
    category: str
    reason: str = ""


_PROVOCATION = re.compile(
    r"(thigh thrust|compression test|distraction test|gaenslen|faber|patrick|sacral thrust|provocation)", re.I
)
_PATIENT_KEYS = ("subject", "patient", "beneficiary")
_MEDICATION_TYPES = frozenset({"MedicationAdministration", "MedicationStatement", "MedicationRequest"})

#: Every resource type Pinpoint may keep (CONTRACT §2 "Minimum necessary"); ``classify`` decides
#: per resource. Readers and upstream searches use this list, in this order.
KEPT_TYPES = (
    "Patient",
    "Condition",
    "Procedure",
    "Observation",
    "QuestionnaireResponse",
    "MedicationAdministration",
    "MedicationStatement",
    "MedicationRequest",
    "ServiceRequest",
    "BodyStructure",
    "Medication",
)


@lru_cache(maxsize=256)  # frozen: one instance per answer, not one per resource classified
def _relevance(kept: bool, category: str, reason: str = "") -> Relevance:
    return Relevance(kept, category, reason)


def _drop(category: str, reason: str) -> Relevance:
    return _relevance(False, category, reason)


def _medication_names(resource: Mapping[str, Any]) -> set[str] | None:
    """Agent names of a medication resource; ``None`` when they sit in an unresolvable Medication."""
    concept = resource.get("medicationCodeableConcept")
    if concept is None and isinstance(resource.get("medication"), Mapping):  # R5 CodeableReference
        concept = resource["medication"].get("concept")
    if concept is not None:
        return j.rxnorm_names(concept)
    ref = j.reference(resource.get("medicationReference"))
    if ref and ref.startswith("#"):
        for contained in j.as_list(resource.get("contained")):
            if isinstance(contained, Mapping) and contained.get("id") == ref[1:]:
                return j.rxnorm_names(contained.get("code"))
        return set()
    return None if ref else set()


def _classify_medication(resource: Mapping[str, Any]) -> Relevance:
    names = _medication_names(resource)
    if names is None:
        return _relevance(True, "medication", "agent in a referenced Medication")
    if not names:  # most of a chart's medications: no agent the rules know
        return _drop("medication", "not a medication Pinpoint's rules use")
    steroids = names & t.STEROID_NAMES
    if steroids and not any(j.route_is_oral(r) for r in j.dosage_routes(resource)):
        return _relevance(True, "steroid-injection")
    if names & t.ANAESTHETIC_NAMES:
        return _relevance(True, "anaesthetic")
    if names & t.SEDATIVE_NAMES:
        return _relevance(True, "sedation")
    if names & t.NSAID_WORDS:
        return _relevance(True, "conservative-care")
    if steroids:
        return _drop("medication", "oral corticosteroid")
    return _drop("medication", "not a medication Pinpoint's rules use")


def _classify_procedure(resource: Mapping[str, Any]) -> Relevance:
    codes = j.procedure_codes(resource.get("code"))
    for code in codes:
        if code in t.PROCEDURE_KINDS:
            return _relevance(True, "intervention")
    for code in codes:
        if code in t.SEDATION_CPT:
            return _relevance(True, "sedation")
        if code in t.PHYSICAL_THERAPY_CPT:
            return _relevance(True, "conservative-care")
    used = resource.get("usedCode")
    if used is not None and j.rxnorm_names(used) & t.STEROID_NAMES:
        return _relevance(True, "steroid-injection")
    if j.code_set(resource.get("code"), t.SNOMED) & t.NOT_PAIN_SNOMED:
        return _drop("procedure", "not a pain intervention (SNOMED procedure codes are never mapped)")
    return _drop("procedure", "no code of a pain intervention, sedation or physical therapy")


_PAIN_SCORE = Relevance(True, "pain-score")
_FUNCTION_SCORE = Relevance(True, "function-score")
_NOT_USED_OBSERVATION = Relevance(False, "observation", "not a pain, function or provocation observation")


def _classify_observation(resource: Mapping[str, Any]) -> Relevance:
    # one pass over the code: what ``observation_instrument`` would find (a functional LOINC
    # code, else an instrument named in the code's text) without reading the codings again
    code = resource.get("code")
    loinc = j.code_set(code, t.LOINC)
    if loinc & t.PAIN_SCALES:
        return _PAIN_SCORE
    if loinc & t.FUNCTION_SCALES or not loinc.isdisjoint(t.FUNCTION_CODES):
        return _FUNCTION_SCORE
    names = j.texts(code)
    if instrument_in_text(*names) is not None:
        return _FUNCTION_SCORE
    if any(_PROVOCATION.search(x) for x in names):
        return _relevance(True, "provocation-test")
    return _NOT_USED_OBSERVATION


def classify(resource: Mapping[str, Any]) -> Relevance:
    """Decide whether Pinpoint keeps ``resource`` (raw JSON); see the module docstring."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return _drop("unknown", "no resourceType")
    if j.is_own_proposal(resource):
        return _drop("own-proposal", "Pinpoint's own proposal (urn:pinpoint:recommendation)")
    if rtype == "Patient":
        return _relevance(True, "patient")
    if rtype == "Condition":
        return _relevance(True, "condition")
    if rtype == "BodyStructure":
        return _relevance(True, "body-structure")
    if rtype == "Procedure":
        return _classify_procedure(resource)
    if rtype == "Observation":
        return _classify_observation(resource)
    if rtype == "QuestionnaireResponse":
        if questionnaire_instrument(resource) is not None:
            return _relevance(True, "function-score")
        return _drop("questionnaire-response", "not a functional instrument Pinpoint's rules use")
    if rtype in _MEDICATION_TYPES:
        return _classify_medication(resource)
    if rtype == "Medication":
        if j.rxnorm_names(resource.get("code")):
            return _relevance(True, "medication")
        return _drop("medication", "not a medication Pinpoint's rules use")
    if rtype == "ServiceRequest":
        if any(c in t.PROCEDURE_KINDS for c in j.procedure_codes(resource.get("code"))):
            return _relevance(True, "order")
        return _drop("order", "code maps to no pathway")
    return _drop(rtype.lower(), f"{rtype} is not used by Pinpoint's rules")


def patient_reference(resource: Mapping[str, Any]) -> str | None:
    """Where the resource points at its patient (``Patient/<id>`` as written); a Patient itself."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return f"Patient/{rid}" if isinstance(rid, str) and rid else None
    for key in _PATIENT_KEYS:
        value = resource.get(key)
        if type(value) is dict:
            ref = value.get("reference")
            if type(ref) is str and ref:
                return ref
    return None
