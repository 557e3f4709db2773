"""Data the rules need that could not be retrieved (CONTRACT §8 ``data-unavailable``).

When a CDS call could not get some of the patient's data from the EHR (a prefetch key the EHR
left out and a fetch that failed or was not possible), a verdict drawn from the rest could read
as a clinical finding ("there is no pain score before the block") when the truth is that the pain
scores never reached Pinpoint. :func:`mark_unavailable` turns every target that needs the missing
kind of data into ``not-evaluable`` with the one reason ``data-unavailable`` and the list of what
is missing (``unavailable``), never a clinical reason. Pure: the §3 entry in, a new entry out.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from services.recommender.engine.model import PATHWAYS

#: The kinds of data a rule may need, in the words a clinician reads ("… could not be retrieved").
DATA_KINDS: dict[str, str] = {
    "procedures": "procedures",
    "pain-scores": "pain scores",
    "diagnoses": "diagnoses",
    "medication-administrations": "medication administrations (anaesthetics, sedation, steroids)",
    "medication-history": "medication history (conservative care)",
    "function-scores": "function scores",
    "patient": "the patient's record (name, birth date, sex)",
}

_ALL = frozenset(PATHWAYS)
_RELIEF = _ALL - {"knee-steroid"}  # every pathway judged on pain relief or pain before/after
_CONSERVATIVE = frozenset(
    {
        "facet-diagnostic",
        "facet-rfa",
        "facet-therapeutic",
        "sij-diagnostic",
        "sij-therapeutic",
        "sij-rfa",
        "esi",
    }
)

#: Which pathways each kind of data decides (a pathway not listed does not read that kind).
NEEDED_BY: dict[str, frozenset[str]] = {
    "procedures": _ALL,
    "pain-scores": _RELIEF,
    "diagnoses": _ALL,  # pain duration (onset), radiculopathy, indication, joint disease
    "medication-administrations": _ALL,  # anaesthetic agent, sedation, steroid doses
    "medication-history": _CONSERVATIVE,
    # function can carry a repeat where the policy gives a function threshold (issue 19)
    "function-scores": frozenset({"facet-rfa-repeat", "facet-therapeutic", "sij-therapeutic", "esi"}),
    "patient": frozenset(),  # the header of the evidence page only
}


#: The kind of data each documentation requirement is judged on: when it could not be retrieved the
#: requirement is ``unknown`` — never reported as a documentation gap the data may well fill.
DOCUMENTED_BY: dict[str, str] = {
    "baseline-pain-scale": "pain-scores",
    "same-scale-each-block": "pain-scores",
    "baseline-disability-scale": "function-scores",
    "imaging-guidance": "procedures",
    "no-sedation": "medication-administrations",
}


def unavailable_text(kinds: Collection[str]) -> str:
    """``pain scores could not be retrieved from the EHR`` (kinds in :data:`DATA_KINDS` order)."""
    names = [DATA_KINDS[k] for k in DATA_KINDS if k in kinds] or ["some of the data"]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{listed} could not be retrieved from the EHR"


def _mark(item: Mapping[str, Any], missing: frozenset[str]) -> dict[str, Any]:
    needed = sorted(k for k in missing if str(item.get("pathway")) in NEEDED_BY.get(k, frozenset()))
    out = dict(item)
    if not needed or item.get("verdict") == "not-covered":
        return out
    out["verdict"] = "not-evaluable"
    out["reasons"] = ["data-unavailable"]
    text = unavailable_text(needed)
    out["reasonDetails"] = [  # as the engine's details: what is missing, in words
        {
            "code": "data-unavailable",
            "measured": None,
            "required": [DATA_KINDS[k] for k in needed],
            "unit": "",
            "policyKey": "rules.data-unavailable",
            "source": None,
            "sourceLabel": None,  # no policy criterion: nothing to cite (explain.uncited)
            "text": text,
            "summary": text,
        }
    ]
    # a block's own reasons were drawn from the partial data too ("no pain score before the block")
    out["evidence"] = [
        {**e, "reasons": ["data-unavailable"]} if isinstance(e, Mapping) and e.get("reasons") else e
        for e in item.get("evidence") or []
    ]
    out["unavailable"] = needed
    if "documentation" in item:
        out["documentation"] = [
            {**d, "status": "unknown", "detail": unavailable_text([DOCUMENTED_BY[str(d.get("requirement"))]])}
            if isinstance(d, Mapping)
            and d.get("status") == "missing"
            and DOCUMENTED_BY.get(str(d.get("requirement"))) in missing
            else d
            for d in item.get("documentation") or []
        ]
    out["earliestDate"] = None
    if "nextStep" in out:
        out["nextStep"] = None
    if "supportedTargets" in out:
        out["supportedTargets"] = []
    return out


def mark_unavailable(entry: Mapping[str, Any], missing: Collection[str]) -> dict[str, Any]:
    """The §3 patient entry with every target that needs a ``missing`` kind made
    ``not-evaluable`` / ``data-unavailable`` (``unavailable``: the kinds, in :data:`DATA_KINDS`
    codes). ``not-covered`` stays: the policy does not cover the pathway whatever the data."""
    wanted = frozenset(missing)
    out = dict(entry)
    if not wanted:
        return out
    out["assessments"] = [_mark(a, wanted) for a in entry.get("assessments") or []]
    out["orderChecks"] = [_mark(o, wanted) for o in entry.get("orderChecks") or []]
    return out
