"""Functional instruments (issue 19): which Observation or QuestionnaireResponse carries one, and
its total score. Pure and stdlib-only, like the rest of ``shared.domain``.

Instruments (codes and displays in :mod:`shared.domain.terminology`): Oswestry Disability Index
(ODI, percent 0-100), Neck Disability Index (NDI, 0-50 points or percent; kept as percent),
PROMIS Pain Interference and Physical Function (T-scores), PEG (mean 0-10), KOOS JR (interval
score 0-100), KOOS activities of daily living (0-100) and WOMAC (total 0-96).

Encodings read, in order:

- Observation: a LOINC total-score code; a LOINC panel code whose ``component`` holds the total
  (a panel's ``hasMember`` totals are Observations of their own) or whose own value is the total;
  else the instrument named in the code text (the local encodings clinics use, e.g. "Oswestry
  Disability Index (ODI) total score"). Value: ``valueQuantity``, ``valueInteger``, or a
  ``valueString`` holding a number (optionally followed by ``%``). A PEG panel holding only its
  three item components (as Synthea writes it) is scored as their mean.
- QuestionnaireResponse (status completed or amended): the instrument named by its
  ``questionnaire`` canonical, its items' ``definition`` / linkId codes or linkId prefixes
  (``odi-``, ``ndi-``, ``koosjr-``); the total from the total item (linkId or definition naming
  the total code, or linkId ``score`` / ``total-score`` / ``total-interval-score`` / ``total``);
  when no total item is given, the total computed from the items' ordinal values
  (``ordinalValue`` extension, or integer answers) by the instrument's scoring rule:

  - ODI: sum / (5 × sections answered) × 100; at most one section unanswered (Fairbank & Pynsent,
    Spine 2000;25:2940: "if one section is missed or not applicable"); otherwise not scored.
  - NDI: the same rule (it is a modification of the ODI); at most two items unanswered (Vernon,
    J Manipulative Physiol Ther 2008;31:491 — more missing items invalidate the form).
  - KOOS JR: all seven items answered; raw sum converted by the published interval table.
  - PEG: all three items answered; their mean.
  - PROMIS and WOMAC totals are never computed here (PROMIS uses item-response-theory
    calibrations; WOMAC needs its licensed scoring) — only a given total counts.

  A response that cannot be scored this way yields no score: it is never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from shared.domain import _json as j
from shared.domain import terminology as t

# Instrument names in free text (code text, questionnaire canonicals, titles). KOOS JR before KOOS.
_TEXT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (t.ODI, re.compile(r"oswestry|\bODI\b", re.I)),
    (t.NDI, re.compile(r"neck\s*disability|\bNDI\b", re.I)),
    (t.PROMIS_PI, re.compile(r"promis.*pain\s*interference|pain\s*interference.*promis", re.I)),
    (t.PROMIS_PF, re.compile(r"promis.*physical\s*function|physical\s*function.*promis", re.I)),
    (
        t.PEG,
        re.compile(
            r"\bPEG\b.*\b(score|scale)|pain,? enjoyment(,| and)? (of life,? )?(and )?general activity", re.I
        ),
    ),
    (t.KOOS_JR, re.compile(r"KOOS\s*[,-]?\s*JR", re.I)),
    (t.KOOS_ADL, re.compile(r"KOOS.*(\bADL\b|daily\s*living)|(\bADL\b|daily\s*living).*KOOS", re.I)),
    (t.WOMAC, re.compile(r"WOMAC|western\s*ontario\s*and\s*mcmaster", re.I)),
)
_LINKID_PREFIX = {"odi-": t.ODI, "ndi-": t.NDI, "koosjr-": t.KOOS_JR, "peg-": t.PEG}
_TOTAL_LINKIDS = frozenset({"score", "total-score", "total", "total-interval-score", "totalscore"})
_NUMBER_TEXT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%)?\s*$")

#: canonical range of each instrument's value as Pinpoint keeps it
RANGES: dict[str, tuple[float, float]] = {
    t.ODI: (0.0, 100.0),
    t.NDI: (0.0, 100.0),  # percent (points × 2)
    t.PROMIS_PI: (10.0, 90.0),
    t.PROMIS_PF: (10.0, 90.0),
    t.PEG: (0.0, 10.0),
    t.KOOS_JR: (0.0, 100.0),
    t.KOOS_ADL: (0.0, 100.0),
    t.WOMAC: (0.0, 96.0),
}
#: what the kept value is
SCALES: dict[str, str] = {
    t.ODI: "percent",
    t.NDI: "percent",
    t.PROMIS_PI: "t-score",
    t.PROMIS_PF: "t-score",
    t.PEG: "score",
    t.KOOS_JR: "interval-score",
    t.KOOS_ADL: "score",
    t.WOMAC: "points",
}
# KOOS JR raw sum (0-28) → interval score (KOOS JR user's guide conversion table, as encoded in the
# PACIO / CMS ACCESS sample KOOS JR Questionnaire's calculatedExpression).
_KOOS_JR_INTERVAL = (
    100.000, 91.116, 84.984, 79.944, 75.437, 71.257, 67.285, 63.578, 60.015, 56.566, 53.280,
    50.012, 46.760, 43.544, 40.339, 37.159, 33.941, 30.731, 27.490, 24.185, 20.781, 17.307,
    13.761, 10.248, 6.879, 3.656, 0.544, 0.000, 0.000,
)  # fmt: skip
# items, maximum ordinal per item, unanswered items allowed
_ITEM_RULES: dict[str, tuple[int, int, int]] = {
    t.ODI: (10, 5, 1),
    t.NDI: (10, 5, 2),
    t.KOOS_JR: (7, 4, 0),
    t.PEG: (3, 10, 0),
}


@dataclass(frozen=True, slots=True)
class Total:
    """A total score as read: the instrument, the value on its canonical scale, and how it was read."""

    instrument: str
    value: float
    code: str | None  # LOINC code of the total (or panel) read; None for a local text encoding
    raw: float | None = None  # the value as recorded when it was converted (NDI points)
    computed: bool = False  # computed from the items (no total item given)
    answered: int | None = None  # items answered, when computed
    unit_assumed: bool = False  # NDI without a unit read as points (LOINC "Total score [NDI]")


def instrument_in_text(*texts: str) -> str | None:
    """The instrument a free text names (code text, questionnaire canonical), or None."""
    for text in texts:
        if not text:
            continue
        spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)  # "NeckDisabilityIndex" → "Neck Disability Index"
        for inst, pattern in _TEXT_PATTERNS:
            if pattern.search(text) or pattern.search(spaced):
                return inst
    return None


def observation_instrument(obs: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """(instrument, LOINC code or None) of a functional Observation, else None."""
    code = obs.get("code")
    loinc = j.code_set(code, t.LOINC)
    for c in sorted(loinc & t.FUNCTION_TOTAL_CODES):
        return t.FUNCTION_CODES[c], c
    for c in sorted(loinc):
        if c in t.FUNCTION_CODES:
            return t.FUNCTION_CODES[c], c
    if loinc & t.PAIN_SCALES:
        return None
    inst = instrument_in_text(*j.texts(code))
    return (inst, None) if inst else None


def _canonical(inst: str, value: float, percent: bool, code: str | None) -> Total | None:
    raw: float | None = None
    assumed = False
    if inst == t.NDI:
        if not percent and value <= 50:
            raw, value = value, value * 2
            assumed = True
    elif inst == t.WOMAC and percent:
        raw, value = value, value * 0.96
    low, high = RANGES[inst]
    if not low <= value <= high:
        return None
    return Total(inst, round(value, 3), code, raw, unit_assumed=assumed)


def _value_of(element: Mapping[str, Any], prefix: str = "value") -> tuple[float, bool] | None:
    """(number, stated as percent) from valueQuantity / valueInteger / valueDecimal / valueString."""
    q = element.get(prefix + "Quantity")
    if (
        isinstance(q, Mapping)
        and isinstance(q.get("value"), int | float)
        and not isinstance(q.get("value"), bool)
    ):
        unit = str(q.get("code") or q.get("unit") or "").strip().lower()
        return float(q["value"]), unit in ("%", "percent")
    for key in ("Integer", "Decimal"):
        v = element.get(prefix + key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v), False
    s = element.get(prefix + "String")
    if isinstance(s, str):
        m = _NUMBER_TEXT.match(s)
        if m:
            return float(m.group(1)), m.group(2) == "%"
    return None


def observation_total(obs: Mapping[str, Any]) -> Total | None:
    """The total score an Observation carries (see the module docstring), or None."""
    found = observation_instrument(obs)
    if found is None:
        return None
    inst, code = found
    totals = t.FUNCTION_TOTALS[inst]
    if code is not None and code not in totals:  # a panel: its component total first, then its own value
        for comp in j.as_list(obs.get("component")):
            if isinstance(comp, Mapping):
                ccodes = j.code_set(comp.get("code"), t.LOINC) & set(totals)
                if ccodes:
                    read = _value_of(comp)
                    if read is not None:
                        return _canonical(inst, read[0], read[1], sorted(ccodes)[0])
    read = _value_of(obs)
    if read is None and inst == t.PEG:  # a PEG panel of its three items: their mean (all three needed)
        items: dict[str, float] = {}
        for comp in j.as_list(obs.get("component")):
            if isinstance(comp, Mapping):
                for c in j.code_set(comp.get("code"), t.LOINC) & t.PEG_ITEMS:
                    value = _value_of(comp)
                    if value is not None and 0 <= value[0] <= 10:
                        items[c] = value[0]
        if len(items) == len(t.PEG_ITEMS):
            mean = round(sum(items.values()) / len(items), 3)
            return Total(inst, mean, code, computed=True, answered=len(items))
    if read is None:
        return None
    return _canonical(inst, read[0], read[1], code)


# --- QuestionnaireResponse -------------------------------------------------------------------------
def _items(items: Any) -> Iterator[Mapping[str, Any]]:
    """Every item of a response, nested ones (item.item, answer.item) included."""
    for item in j.as_list(items):
        if not isinstance(item, Mapping):
            continue
        yield item
        yield from _items(item.get("item"))
        for ans in j.as_list(item.get("answer")):
            if isinstance(ans, Mapping):
                yield from _items(ans.get("item"))


def _codes_in(text: str) -> set[str]:
    return {c for c in t.FUNCTION_CODES if c in text}


def questionnaire_instrument(qr: Mapping[str, Any]) -> str | None:
    """The instrument of a QuestionnaireResponse, or None when it is not one of them."""
    canonical = qr.get("questionnaire")
    if isinstance(canonical, str):
        codes = _codes_in(canonical)
        if codes:
            return t.FUNCTION_CODES[sorted(codes)[0]]
        inst = instrument_in_text(canonical.rsplit("/", 1)[-1].split("|")[0], canonical)
        if inst:
            return inst
    for item in _items(qr.get("item")):
        for key in ("definition", "linkId"):
            value = item.get(key)
            if isinstance(value, str):
                codes = _codes_in(value)
                if codes:
                    return t.FUNCTION_CODES[sorted(codes)[0]]
        link = str(item.get("linkId") or "").lower()
        for prefix, inst in _LINKID_PREFIX.items():
            if link.startswith(prefix):
                return inst
    return None


def _is_total_item(item: Mapping[str, Any], inst: str) -> str | None:
    """The total code (or "" for a local total item) when ``item`` is the instrument's total."""
    totals = t.FUNCTION_TOTALS[inst]
    for key in ("definition", "linkId"):
        value = item.get(key)
        if isinstance(value, str):
            for code in totals:
                if code in value:
                    return code
    link = str(item.get("linkId") or "").strip().lower()
    if link in _TOTAL_LINKIDS:
        return ""
    return None


def _ordinal(answer: Mapping[str, Any]) -> float | None:
    for holder in (answer.get("valueCoding"), answer):
        if isinstance(holder, Mapping):
            for ext in j.as_list(holder.get("extension")):
                if isinstance(ext, Mapping) and ext.get("url") in t.ORDINAL_VALUE_EXT:
                    for key in ("valueDecimal", "valueInteger"):
                        v = ext.get(key)
                        if isinstance(v, int | float) and not isinstance(v, bool):
                            return float(v)
    for key in ("valueInteger", "valueDecimal"):
        v = answer.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
    return None


def _computed(inst: str, items: list[Mapping[str, Any]]) -> Total | None:
    rule = _ITEM_RULES.get(inst)
    if rule is None:
        return None
    expected, top, missing_allowed = rule
    values: list[float] = []
    for item in items:
        link = str(item.get("linkId") or "").lower()
        if "category" in link or "severity" in link or _is_total_item(item, inst) is not None:
            continue
        answers = [a for a in j.as_list(item.get("answer")) if isinstance(a, Mapping)]
        if not answers:
            continue
        value = _ordinal(answers[0])
        if value is None:
            continue
        if not 0 <= value <= top:
            return None
        values.append(value)
    answered = len(values)
    if answered > expected or answered < expected - missing_allowed or answered == 0:
        return None
    total = sum(values)
    if inst in (t.ODI, t.NDI):
        score = total / (5 * answered) * 100
    elif inst == t.KOOS_JR:
        score = _KOOS_JR_INTERVAL[round(total)]
    else:  # PEG
        score = total / answered
    return Total(inst, round(score, 3), None, None, computed=True, answered=answered)


def questionnaire_total(qr: Mapping[str, Any]) -> Total | None:
    """The total score of a functional QuestionnaireResponse (see the module docstring), or None."""
    inst = questionnaire_instrument(qr)
    if inst is None:
        return None
    items = list(_items(qr.get("item")))
    for item in items:
        code = _is_total_item(item, inst)
        if code is None:
            continue
        for ans in j.as_list(item.get("answer")):
            if isinstance(ans, Mapping):
                read = _value_of(ans)
                if read is not None:
                    value, percent = read
                    if inst == t.NDI and not percent:  # points or percent? the items tell
                        items_score = _computed(inst, items)
                        if items_score is not None:
                            percent = abs(value - items_score.value) <= abs(value * 2 - items_score.value)
                    return _canonical(inst, value, percent, code or None)
    return _computed(inst, items)
