"""What each definitive or therapeutic procedure achieved, as a FHIR R4 Observation (issue 19).

One Observation per entry of the assessment document's ``outcomes`` section, identified by
``urn:pinpoint:recommendation|{source}:{patient id}:outcome:{procedure id}`` (so a re-evaluation
updates it in place and a re-delivery finds it: conditional create / update like the CarePlan):

- ``code``: ``urn:pinpoint:outcome#procedure-outcome`` — LOINC has no code for "outcome of an
  interventional pain procedure against its baseline" (LOINC codes the instruments' scores, which
  Pinpoint reads, not a derived follow-up summary), so the code system is Pinpoint's own, in the
  ``urn:pinpoint:`` namespace of its other systems; every code is listed in
  docs/function-and-outcomes.md and never changes meaning;
- ``focus`` → the Procedure (the observation is *about* the procedure's outcome, its subject is
  the patient); not ``partOf``, which R4 defines as "a larger event of which this Observation is
  a component or step" — a reading months later is not a step of the procedure;
- ``derivedFrom`` → the baseline and follow-up Observations / QuestionnaireResponses used;
- ``effectivePeriod``: from the procedure to the last reading used;
- ``status``: ``preliminary`` while a milestone is still to come, ``final`` once all are past;
  ``entered-in-error`` when the outcome no longer exists (its procedure vanished from the data);
- ``component``: baseline pain and functional scores, per milestone (1, 3, 6, 12 months) the pain
  relief in % and the pain score, per instrument its score and its change towards better (a
  milestone without a reading carries a ``dataAbsentReason``: ``temp-unknown`` still to come,
  ``not-performed`` no reading in the window, ``not-applicable`` the next procedure came first),
  the relief duration in days with its censoring (``valueBoolean``), the relief threshold and the
  days to the next procedure on the same target. Units are UCUM (``%``, ``d``, ``{score}``,
  ``{T-score}``).

Pure: built from the outcome entry alone.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from services.recommender.engine.wording import pathway_text, target_text
from shared.domain import terminology as t
from shared.humanize import day, number, plural

#: Pinpoint's code system for outcome observations (documented in docs/function-and-outcomes.md).
OUTCOME_SYSTEM = "urn:pinpoint:outcome"
UCUM = "http://unitsofmeasure.org"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
MILESTONES = (1, 3, 6, 12)
_ABSENT = {
    "pending": ("temp-unknown", "Temporarily Unknown"),
    "due": ("not-performed", "Not Performed"),
    "after-next-procedure": ("not-applicable", "Not Applicable"),
}
#: UCUM unit of each instrument's kept value
_UNITS: dict[str, tuple[str, str]] = {
    t.ODI: ("%", "%"),
    t.NDI: ("%", "%"),
    t.PROMIS_PI: ("{T-score}", "T-score"),
    t.PROMIS_PF: ("{T-score}", "T-score"),
}


def outcome_key(patient_key: str, procedure: str) -> str:
    """``{source}:{patient id}:outcome:{procedure id}``."""
    return f"{patient_key}:outcome:{procedure.split('/', 1)[-1]}"


def _quantity(value: float | int, code: str, unit: str | None = None) -> dict[str, Any]:
    return {"value": value, "unit": unit or code, "system": UCUM, "code": code}


def _score(instrument: str, value: float | int) -> dict[str, Any]:
    code, unit = _UNITS.get(instrument, ("{score}", "score"))
    return _quantity(value, code, unit)


def _code(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": OUTCOME_SYSTEM, "code": code, "display": display}], "text": display}


def _absent(status: str) -> dict[str, Any]:
    code, display = _ABSENT.get(status, _ABSENT["due"])
    return {"coding": [{"system": DATA_ABSENT, "code": code, "display": display}]}


def _name(instrument: str) -> str:
    return t.FUNCTION_NAMES.get(instrument, instrument)


_MCID_TEXT = {
    True: ", reaching the minimal clinically important difference",
    False: ", below the minimal clinically important difference",
}


def _months(m: int) -> str:
    return plural(m, "month")


def components(outcome: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The outcome's components (see the module docstring), in a stable order."""
    out: list[dict[str, Any]] = []
    baseline = outcome.get("baseline") or {}
    pain = baseline.get("pain")
    if isinstance(pain, Mapping):
        out.append(
            {
                "code": _code("baseline-pain", "Baseline pain score"),
                "valueQuantity": _quantity(pain["value"], "{score}", "score"),
            }
        )
    instruments = []
    for f in baseline.get("function") or []:
        inst = str(f["instrument"])
        instruments.append(inst)
        out.append(
            {
                "code": _code(f"baseline-{inst}", f"Baseline {_name(inst)}"),
                "valueQuantity": _score(inst, f["value"]),
            }
        )
    for ms in outcome.get("milestones") or []:
        m = int(ms["months"])
        status = str(ms.get("status") or "due")
        point = ms.get("pain")
        relief = _code(f"pain-relief-{m}m", f"Pain relief at {_months(m)}")
        if isinstance(point, Mapping):
            out.append({"code": relief, "valueQuantity": _quantity(point["reliefPercent"], "%")})
            out.append(
                {
                    "code": _code(f"pain-{m}m", f"Pain score at {_months(m)}"),
                    "valueQuantity": _quantity(point["value"], "{score}", "score"),
                }
            )
        elif isinstance(pain, Mapping):
            out.append({"code": relief, "dataAbsentReason": _absent(status)})
        points = {str(p["instrument"]): p for p in ms.get("function") or []}
        for inst in instruments:
            p = points.get(inst)
            value_code = _code(f"{inst}-{m}m", f"{_name(inst)} at {_months(m)}")
            if p is None:
                out.append({"code": value_code, "dataAbsentReason": _absent(status)})
                continue
            out.append({"code": value_code, "valueQuantity": _score(inst, p["value"])})
            if p.get("change") is not None:
                out.append(
                    {
                        "code": _code(
                            f"{inst}-change-{m}m", f"{_name(inst)} change towards better at {_months(m)}"
                        ),
                        "valueQuantity": _score(inst, p["change"]),
                    }
                )
    if outcome.get("reliefThresholdPercent") is not None:
        out.append(
            {
                "code": _code("relief-threshold", "Relief threshold"),
                "valueQuantity": _quantity(outcome["reliefThresholdPercent"], "%"),
            }
        )
    if outcome.get("reliefDays") is not None:
        out.append(
            {
                "code": _code("relief-duration", "Duration of relief at or above the threshold"),
                "valueQuantity": _quantity(outcome["reliefDays"], "d", "days"),
            }
        )
        out.append(
            {
                "code": _code("relief-censored", "Relief still ongoing at the last reading (censored)"),
                "valueBoolean": bool(outcome.get("censored")),
            }
        )
    if outcome.get("daysToNextProcedure") is not None:
        out.append(
            {
                "code": _code("days-to-next-procedure", "Time to the next procedure on the same target"),
                "valueQuantity": _quantity(outcome["daysToNextProcedure"], "d", "days"),
            }
        )
    return out


def sources(outcome: Mapping[str, Any]) -> list[str]:
    """The Observations / QuestionnaireResponses the outcome was derived from, in order."""
    found: list[str] = []

    def add(ref: Any) -> None:
        kind = ref.split("/", 1)[0] if isinstance(ref, str) else None
        if kind in ("Observation", "QuestionnaireResponse") and ref not in found:
            found.append(ref)

    baseline = outcome.get("baseline") or {}
    if isinstance(baseline.get("pain"), Mapping):
        add(baseline["pain"].get("observation"))
    for f in baseline.get("function") or []:
        add(f.get("observation"))
    for ms in outcome.get("milestones") or []:
        if isinstance(ms.get("pain"), Mapping):
            add(ms["pain"].get("observation"))
        for p in ms.get("function") or []:
            add(p.get("observation"))
    return found


def _last_reading(outcome: Mapping[str, Any]) -> str | None:
    dates = [
        str(ms["pain"]["date"])
        for ms in outcome.get("milestones") or []
        if isinstance(ms.get("pain"), Mapping)
    ]
    dates += [str(p["date"]) for ms in outcome.get("milestones") or [] for p in ms.get("function") or []]
    return max(dates) if dates else None


def title(outcome: Mapping[str, Any]) -> str:
    """``Outcome of facet radiofrequency ablation at the right lumbar L4-L5, L5-S1 on 8 Jan 2024``."""
    what = pathway_text(str(outcome.get("pathway")))
    where = target_text(outcome.get("target") or {})
    return f"Outcome of {what[:1].lower()}{what[1:]} at the {where} on {day(outcome.get('performed'))}"


def describe(outcome: Mapping[str, Any]) -> str:
    """The outcome in plain language (no patient identifiers)."""
    parts = [title(outcome) + "."]
    baseline = outcome.get("baseline") or {}
    pain = baseline.get("pain")
    if isinstance(pain, Mapping):
        parts.append(f"Baseline pain {number(pain['value'])} on {day(pain['date'])}.")
    else:
        parts.append("No baseline pain score, so no relief can be measured.")
    for f in baseline.get("function") or []:
        parts.append(f"Baseline {_name(str(f['instrument']))} {number(f['value'])} on {day(f['date'])}.")
    for ms in outcome.get("milestones") or []:
        m = int(ms["months"])
        status = ms.get("status")
        bits = []
        point = ms.get("pain")
        if isinstance(point, Mapping):
            pain_now = f"pain {number(point['value'])} on {day(point['date'])}"
            bits.append(f"{number(point['reliefPercent'])} % pain relief ({pain_now})")
        for p in ms.get("function") or []:
            change = p.get("change")
            mcid = _MCID_TEXT.get(p.get("meetsMcid"), "")
            moved = f", change {number(change)} towards better{mcid}" if change is not None else ""
            bits.append(f"{_name(str(p['instrument']))} {number(p['value'])}{moved}")
        if bits:
            parts.append(f"At {_months(m)}: " + "; ".join(bits) + ".")
        elif status == "pending":
            parts.append(f"At {_months(m)}: still to come ({day(ms.get('date'))}).")
        elif status == "after-next-procedure":
            parts.append(f"At {_months(m)}: the next procedure came first.")
        else:
            parts.append(f"At {_months(m)}: no reading.")
    threshold = number(outcome.get("reliefThresholdPercent"))
    if outcome.get("reliefDays") is not None:
        ongoing = " and still ongoing at the last reading" if outcome.get("censored") else ""
        parts.append(
            f"Relief of at least {threshold} % lasted {plural(outcome['reliefDays'], 'day')}{ongoing}."
        )
    if outcome.get("daysToNextProcedure") is not None:
        parts.append(
            f"Next procedure on the same target after {plural(outcome['daysToNextProcedure'], 'day')}."
        )
    return " ".join(parts)


def observation(
    patient_ref: Mapping[str, str],
    resource_id: str,
    identifier: list[dict[str, str]],
    outcome: Mapping[str, Any],
    device: Mapping[str, Any],
) -> dict[str, Any]:
    """The R4 Observation of one ``outcomes`` entry (body without ``meta``)."""
    text = describe(outcome)
    pending = any(ms.get("status") == "pending" for ms in outcome.get("milestones") or [])
    period: dict[str, str] = {"start": str(outcome["performed"])}
    last = _last_reading(outcome)
    if last is not None and last >= period["start"][:10]:
        period["end"] = last
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": resource_id,
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{html.escape(text)}</p></div>',
        },
        "identifier": identifier,
        "status": "preliminary" if pending else "final",
        "category": [{"coding": [{"system": CATEGORY, "code": "procedure", "display": "Procedure"}]}],
        "code": {
            "coding": [
                {
                    "system": OUTCOME_SYSTEM,
                    "code": "procedure-outcome",
                    "display": "Outcome of an interventional pain procedure against its baseline",
                }
            ],
            "text": title(outcome),
        },
        "subject": dict(patient_ref),
        "focus": [
            {"reference": str(outcome["procedure"]), "display": title(outcome).removeprefix("Outcome of ")}
        ],
        "effectivePeriod": period,
        "device": dict(device),
        "note": [{"text": text}],
        "component": components(outcome),
    }
    derived = sources(outcome)
    if derived:
        obs["derivedFrom"] = [{"reference": r} for r in derived]
    return obs
