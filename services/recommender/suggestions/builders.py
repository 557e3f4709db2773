"""What Pinpoint writes (CONTRACT §5), built from one patient's assessment entry (§3). Pure.

Per assessment one *group*: a ServiceRequest (the next step, or the advice not to do it) and the
CarePlan pointing at it, both identified by
``urn:pinpoint:recommendation|{source}:{patient id}:{pathway}:{region}:{side}:{joints}``
(the ServiceRequest with ``:request`` appended). Per alert one DetectedIssue group. Per entry of
the ``outcomes`` section one Observation group (:mod:`.outcome_obs`), listed first so that it
reaches the server before the CarePlans whose ``activity.outcomeReference`` points at it (one
activity per procedure on the assessment's target: the Procedure and its outcome Observation).
Resource ids are UUIDv5 of the identifier, so every replica and every re-run derives the same ids.

:func:`desired_groups` gives what should exist now (bodies without ``meta``); the store diffs them
against what it holds, bumps versions, revokes what vanished and adds a :func:`provenance` per
write.
"""

from __future__ import annotations

import hashlib
import html
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from services.recommender.engine import explain
from services.recommender.engine.policy import PolicyRef
from services.recommender.engine.relief import sides_compatible
from services.recommender.engine.wording import (
    VERDICT_SENTENCES,
    documentation_gaps,
    pathway_text,
    target_text,
)
from services.recommender.suggestions import outcome_obs
from shared.humanize import day, plural

SYSTEM = "urn:pinpoint:recommendation"
ALERT_SYSTEM = "urn:pinpoint:alert"
JOINT_SYSTEM = "urn:pinpoint:spinal-joint"
SNOMED = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"
_NAMESPACE = uuid.UUID("6f1c2b8e-9a4d-5b7e-8c3f-0d2a1e4b5c6d")

PINPOINT_DEVICE: dict[str, Any] = {
    "type": "Device",
    "identifier": {"system": "urn:pinpoint", "value": "pinpoint"},
    "display": "Pinpoint clinical decision support",
}

# CONTRACT §4 side: R4 SNOMED laterality codes.
LATERALITY = {
    "left": ("419161000", "Unilateral left"),
    "right": ("419465000", "Unilateral right"),
    "bilateral": ("51440002", "Right and left"),
}
SITE = {
    "SIJ": (SNOMED, "39723000", "Sacroiliac joint structure"),
    "knee": (SNOMED, "72696002", "Knee region structure"),
    "hip": (SNOMED, "24136001", "Hip joint structure"),
}

# The definitive procedure of each pathway: the code a "do not perform" advice names when the
# engine gives no next step. region → (code, display); "*" for any region.
DEFINITIVE: dict[str, dict[str, tuple[str, str]]] = {
    "facet-rfa": {
        "lumbar": ("64635", "Lumbar facet radiofrequency ablation, first joint"),
        "*": ("64633", "Cervical or thoracic facet radiofrequency ablation, first joint"),
    },
    "facet-therapeutic": {
        "lumbar": ("64493", "Lumbar facet joint injection, first level"),
        "*": ("64490", "Cervical or thoracic facet joint injection, first level"),
    },
    "facet-diagnostic": {
        "lumbar": ("64493", "Lumbar facet joint injection, first level"),
        "*": ("64490", "Cervical or thoracic facet joint injection, first level"),
    },
    "sij-diagnostic": {"*": ("27096", "Sacroiliac joint injection with imaging guidance")},
    "sij-therapeutic": {"*": ("27096", "Sacroiliac joint injection with imaging guidance")},
    "sij-rfa": {"*": ("64625", "Sacroiliac joint radiofrequency ablation")},
    "esi": {
        "lumbar": ("62323", "Lumbar or sacral interlaminar epidural injection with imaging guidance"),
        "*": ("62321", "Cervical or thoracic interlaminar epidural injection with imaging guidance"),
    },
    "genicular-rfa": {"*": ("64624", "Genicular nerve radiofrequency ablation")},
    "knee-steroid": {"*": ("20610", "Major joint injection (knee)")},
}
DEFINITIVE["facet-rfa-repeat"] = DEFINITIVE["facet-rfa"]
_AVOID = frozenset({"not-met", "not-covered"})
_SEVERITY = {"info": "low", "information": "low", "warning": "moderate", "critical": "high", "error": "high"}


@dataclass(frozen=True)
class Desired:
    """One resource Pinpoint should hold now (body without ``meta``)."""

    resource_type: str
    resource_id: str
    identifier: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Group:
    """Resources written together (one transaction upstream); ``members[0]`` carries the version."""

    key: str
    kind: str  # assessment | alert | outcome
    members: tuple[Desired, ...]
    inputs: tuple[str, ...]
    assessment: Mapping[str, Any] | None = None


def resource_id(identifier: str) -> str:
    """The id of the resource identified by ``urn:pinpoint:recommendation|identifier``."""
    return str(uuid.uuid5(_NAMESPACE, f"{SYSTEM}|{identifier}"))


def content_hash(body: Mapping[str, Any]) -> str:
    """Hash of a resource's content, ``meta`` excluded."""
    clean = {k: v for k, v in body.items() if k != "meta"}
    return hashlib.sha256(orjson.dumps(clean, option=orjson.OPT_SORT_KEYS)).hexdigest()


def split_patient_key(patient_key: str) -> tuple[str, str]:
    source, _, pid = patient_key.partition(":")
    return source, pid


def assessment_key(patient_key: str, assessment: Mapping[str, Any]) -> str:
    """``{source}:{patient id}:{pathway}:{region}:{side}:{joints sorted, joined by +}``."""
    target = assessment.get("target") or {}
    joints = "+".join(sorted(str(j) for j in target.get("joints") or []))
    return f"{patient_key}:{assessment['pathway']}:{target.get('region')}:{target.get('side')}:{joints}"


def desired_groups(patient_key: str, entry: Mapping[str, Any], policy: PolicyRef) -> list[Group]:
    """Everything Pinpoint should hold for one patient's §3 entry: the outcome Observations first
    (the CarePlans refer to them), then one group per assessment and per alert."""
    outcomes = [o for o in entry.get("outcomes") or [] if isinstance(o, Mapping) and o.get("procedure")]
    groups = [_outcome_group(patient_key, o) for o in outcomes]
    groups += [_assessment_group(patient_key, a, policy, outcomes) for a in entry.get("assessments") or []]
    seen: dict[str, int] = {}
    for alert in entry.get("alerts") or []:
        code = str(alert.get("code"))
        seen[code] = seen.get(code, 0) + 1
        key = f"{patient_key}:alert:{code}" + (f":{seen[code]}" if seen[code] > 1 else "")
        groups.append(_alert_group(patient_key, key, alert, policy))
    unique: dict[str, Group] = {}
    for g in groups:
        unique.setdefault(g.key, g)
    return list(unique.values())


def _identifier(value: str) -> list[dict[str, str]]:
    return [{"system": SYSTEM, "value": value}]


def _patient_ref(patient_key: str) -> dict[str, str]:
    return {"reference": f"Patient/{split_patient_key(patient_key)[1]}"}


def evidence_refs(evidence: Iterable[Any]) -> tuple[str, ...]:
    """References of the Procedures and Observations an assessment or alert used, in order."""
    found: list[str] = []

    def add(value: Any) -> None:
        if isinstance(value, str) and "/" in value and value.split("/", 1)[0][:1].isupper():
            if value not in found:
                found.append(value)
        elif isinstance(value, list | tuple):
            for v in value:
                add(v)

    for item in evidence:
        if isinstance(item, Mapping):
            add(item.get("procedure"))
            for key, value in item.items():
                if key != "procedure" and key not in ("agent", "scale", "performed"):
                    add(value)
        else:
            add(item)
    return tuple(found)


def describe(assessment: Mapping[str, Any]) -> str:
    """The verdict and why in plain language, each reason with measured vs required and its
    source (no patient identifiers)."""
    pathway = str(assessment.get("pathway"))
    verdict = str(assessment.get("verdict"))
    sentence = f"{pathway_text(pathway)} at the {target_text(assessment.get('target') or {})} "
    sentence += VERDICT_SENTENCES.get(verdict, verdict)
    if verdict == "deferred" and assessment.get("earliestDate"):
        sentence += f", from {day(assessment['earliestDate'])}"
    whys = explain.reasons(assessment, {})
    if whys:
        sentence += ": " + "; ".join(w[:1].lower() + w[1:] for w in whys)
    sentence += "."
    cautions = explain.cautions(assessment, {})
    if cautions:
        sentence += " Caution: " + "; ".join(cautions) + "."
    evidence = [e for e in assessment.get("evidence") or [] if isinstance(e, Mapping)]
    positive = sum(1 for e in evidence if e.get("positive") is True)
    if verdict == "supported" and positive:
        met = explain.decisive(assessment, {})
        label = (assessment.get("reliefThreshold") or {}).get("sourceLabel")
        if met:
            sentence += f" Met: {met}{f' ({label})' if label else ''}."
    elif evidence:
        sentence += f" Based on {plural(len(evidence), 'block')}, {positive} positive."
    step = assessment.get("nextStep")
    if isinstance(step, Mapping) and step.get("code"):
        where = "; ".join(target_text(t) for t in assessment.get("nextStepTargets") or [])
        at = f" at the {where}" if where and assessment.get("nextStepLimit") else ""
        sentence += f" Next step: {step.get('display') or step.get('code')} (CPT {step['code']}){at}."
        limit = assessment.get("nextStepLimit")
        if isinstance(limit, Mapping):
            sentence += f" {explain.because(limit)[:1].upper()}{explain.because(limit)[1:]}."
    for gap in documentation_gaps(assessment.get("documentation")):
        sentence += f" {gap}."
    return sentence


def _narrative(text: str) -> dict[str, str]:
    return {
        "status": "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{html.escape(text)}</p></div>',
    }


def body_sites(target: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One bodySite per joint: the joint coding (CONTRACT §4) and the R4 laterality coding."""
    side = str(target.get("side") or "")
    lat = LATERALITY.get(side)
    sites = []
    for joint in target.get("joints") or []:
        j = str(joint)
        system, code, display = SITE.get(j, (JOINT_SYSTEM, j, f"{j} joint"))
        codings = [{"system": system, "code": code, "display": display}]
        if lat:
            codings.append({"system": SNOMED, "code": lat[0], "display": lat[1]})
        label = "sacroiliac joint" if j == "SIJ" else j
        sites.append({"coding": codings, "text": f"{side.capitalize()} {label}".strip()})
    return sites


def _request_code(assessment: Mapping[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The ServiceRequest's code and whether avoiding that procedure is the advice."""
    pathway = str(assessment.get("pathway"))
    verdict = str(assessment.get("verdict"))
    region = str((assessment.get("target") or {}).get("region"))
    table = DEFINITIVE.get(pathway, {})
    definitive = table.get(region) or table.get("*")
    step = assessment.get("nextStep")
    if isinstance(step, Mapping) and step.get("code"):
        coding = {k: str(step[k]) for k in ("system", "code", "display") if step.get(k)}
        coding.setdefault("system", CPT)
        avoid = verdict in _AVOID and definitive is not None and coding["code"] == definitive[0]
        return {"coding": [coding], "text": coding.get("display", coding["code"])}, avoid
    if definitive is None:
        return {"text": pathway_text(pathway)}, verdict in _AVOID
    coding = {"system": CPT, "code": definitive[0], "display": definitive[1]}
    return {"coding": [coding], "text": definitive[1]}, verdict in _AVOID


def _policy_note(policy: PolicyRef, assessment: Mapping[str, Any]) -> str:
    reasons = [str(r) for r in assessment.get("reasons") or []]
    criterion = reasons[0] if reasons else "all criteria met"
    return (
        f"Pinpoint policy {policy.id} version {policy.version}; pathway {assessment.get('pathway')}; "
        f"verdict {assessment.get('verdict')}; criterion: {criterion}."
    )


def _on_target(target: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """The same target as the engine's outcomes use: region, a shared joint, a compatible side."""
    if target.get("region") != other.get("region"):
        return False
    if not sides_compatible(target.get("side"), other.get("side")):
        return False
    a, b = set(target.get("joints") or []), set(other.get("joints") or [])
    return not a or not b or bool(a & b)


def _outcome_group(patient_key: str, outcome: Mapping[str, Any]) -> Group:
    key = outcome_obs.outcome_key(patient_key, str(outcome["procedure"]))
    rid = resource_id(key)
    body = outcome_obs.observation(_patient_ref(patient_key), rid, _identifier(key), outcome, PINPOINT_DEVICE)
    inputs = (str(outcome["procedure"]), *outcome_obs.sources(outcome))
    return Group(key=key, kind="outcome", members=(Desired("Observation", rid, key, body),), inputs=inputs)


def outcome_activities(
    patient_key: str, target: Mapping[str, Any], outcomes: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One CarePlan activity per procedure done on ``target``: ``outcomeReference`` → the Procedure
    (the event that carried the activity out) and Pinpoint's outcome Observation of it."""
    activities = []
    for o in outcomes:
        if not _on_target(target, o.get("target") or {}):
            continue
        obs_id = resource_id(outcome_obs.outcome_key(patient_key, str(o["procedure"])))
        label = outcome_obs.title(o)
        activities.append(
            {
                "outcomeReference": [
                    {"reference": str(o["procedure"]), "display": label.removeprefix("Outcome of ")},
                    {"reference": f"Observation/{obs_id}", "display": label},
                ]
            }
        )
    return activities


def _assessment_group(
    patient_key: str,
    assessment: Mapping[str, Any],
    policy: PolicyRef,
    outcomes: Sequence[Mapping[str, Any]] = (),
) -> Group:
    key = assessment_key(patient_key, assessment)
    plan_id = resource_id(key)
    request_key = f"{key}:request"
    request_id = resource_id(request_key)
    inputs = evidence_refs(assessment.get("evidence") or [])
    supporting = [{"reference": r} for r in inputs]
    description = describe(assessment)
    code, avoid = _request_code(assessment)
    target = assessment.get("target") or {}
    step_targets = [t for t in assessment.get("nextStepTargets") or [] if isinstance(t, Mapping)]
    sites = [site for t in step_targets for site in body_sites(t)] if step_targets else body_sites(target)
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": request_id,
        "identifier": _identifier(request_key),
        "status": "draft",
        "intent": "proposal",
        "category": [{"coding": [{"system": SNOMED, "code": "387713003", "display": "Surgical procedure"}]}],
        "code": code,
        "subject": _patient_ref(patient_key),
        "requester": PINPOINT_DEVICE,
        "bodySite": sites,
        "note": [{"text": description}],
    }
    if avoid:
        request["doNotPerform"] = True
    if assessment.get("verdict") == "deferred" and assessment.get("earliestDate"):
        request["occurrencePeriod"] = {"start": str(assessment["earliestDate"])}
    if supporting:
        request["supportingInfo"] = supporting
    request = {k: v for k, v in request.items() if v not in (None, [])}
    verdict = str(assessment.get("verdict"))
    what = pathway_text(str(assessment.get("pathway")))
    plan: dict[str, Any] = {
        "resourceType": "CarePlan",
        "id": plan_id,
        "text": _narrative(description),
        "identifier": _identifier(key),
        "status": "draft",
        "intent": "proposal",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category",
                        "code": "assess-plan",
                    }
                ]
            }
        ],
        "title": f"{what}, {target_text(target)}: {verdict}",
        "description": description,
        "subject": _patient_ref(patient_key),
        "author": PINPOINT_DEVICE,
        "activity": [
            {"reference": {"reference": f"ServiceRequest/{request_id}"}},
            *outcome_activities(patient_key, target, outcomes),
        ],
        "note": [{"text": _policy_note(policy, assessment)}],
    }
    if supporting:
        plan["supportingInfo"] = supporting
    members = (
        Desired("CarePlan", plan_id, key, plan),
        Desired("ServiceRequest", request_id, request_key, request),
    )
    return Group(key=key, kind="assessment", members=members, inputs=inputs, assessment=assessment)


def _alert_group(patient_key: str, key: str, alert: Mapping[str, Any], policy: PolicyRef) -> Group:
    inputs = evidence_refs(alert.get("evidence") or [])
    code = str(alert.get("code"))
    issue: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "id": resource_id(key),
        "identifier": _identifier(key),
        "status": "final",
        "code": {"coding": [{"system": ALERT_SYSTEM, "code": code}], "text": code},
        "severity": _SEVERITY.get(str(alert.get("severity")), "moderate"),
        "patient": _patient_ref(patient_key),
        "author": PINPOINT_DEVICE,
        "detail": str(alert.get("text") or code),
        "reference": policy.uri,
    }
    if inputs:
        issue["evidence"] = [{"detail": [{"reference": r} for r in inputs]}]
    return Group(
        key=key, kind="alert", members=(Desired("DetectedIssue", issue["id"], key, issue),), inputs=inputs
    )


def withdrawn(body: Mapping[str, Any]) -> dict[str, Any]:
    """The resource as it reads once its assessment or alert no longer exists."""
    out = {k: v for k, v in body.items() if k != "meta"}
    if out.get("resourceType") == "DetectedIssue":
        out["status"] = "cancelled"
    elif out.get("resourceType") == "Observation":  # its procedure is no longer in the data
        out["status"] = "entered-in-error"
    else:
        out["status"] = "revoked"
    if out.get("resourceType") == "CarePlan":
        text = "Withdrawn: this assessment no longer applies to the current data."
        out["description"] = f"{text} Was: {body.get('description', '')}".strip()
        out["text"] = _narrative(out["description"])
    return out


def is_withdrawn(body: Mapping[str, Any]) -> bool:
    return body.get("status") in ("revoked", "cancelled", "entered-in-error")


def with_meta(body: Mapping[str, Any], version: int, now: datetime) -> dict[str, Any]:
    out = dict(body)
    out["meta"] = {"versionId": str(version), "lastUpdated": now.isoformat()}
    # keep resourceType and id first for readers
    return {
        "resourceType": out.pop("resourceType"),
        "id": out.pop("id"),
        "meta": out.pop("meta"),
        **out,
    }


def provenance(
    group_key: str,
    revision: int,
    targets: Sequence[tuple[str, str, int]],
    inputs: Sequence[str],
    policy: PolicyRef,
    now: datetime,
    *,
    created: bool,
) -> dict[str, Any]:
    """Provenance of one write: targets are ``(type, id, version)``; entities the inputs used."""
    prov: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": resource_id(f"{group_key}:provenance:{revision}"),
        "meta": {"versionId": "1", "lastUpdated": now.isoformat()},
        "target": [{"reference": f"{t}/{i}/_history/{v}"} for t, i, v in targets],
        "recorded": now.isoformat(),
        "policy": [policy.uri],
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "CREATE" if created else "UPDATE",
                }
            ]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "assembler",
                        }
                    ]
                },
                "who": PINPOINT_DEVICE,
            }
        ],
    }
    if inputs:
        prov["entity"] = [{"role": "source", "what": {"reference": r}} for r in inputs]
    return prov
