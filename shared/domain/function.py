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
  - KOOS (full form, 42 items labelled P1-P9, S1-S7, A1-A17, SP1-SP5, Q1-Q4 as in the KOOS
    user's guide): each subscale 100 - mean × 25 (items 0-4), scored when at least half of its
    items are answered (the 2012 rule of the KOOS scoring guide: Pain 5 of 9, Symptoms 4 of 7,
    ADL 9 of 17, Sport/Rec 3 of 5, QOL 2 of 4 — it replaced the 1998 rule of at most 2 missing).
    Pinpoint keeps the ADL subscale (``koos-adl``); all five are on :attr:`Total.subscales`.
  - PROMIS short forms Pain Interference 4a and Physical Function 4a (the PROMIS-29 domains,
    items PAININ9/22/31/34 and PFA11/21/23/53, each 1-5): the raw sum converted to a T-score by
    the HealthMeasures conversion table (:data:`PROMIS_4A`); all four items needed (HealthMeasures
    scoring instructions: at least 4 answered items for a precise score; partial forms need
    response-pattern scoring); a PROMIS-29 response yields both domains.
  - WOMAC (Likert 3.1: 24 items 0-4, labelled P1-P5, S1-S2, F1-F17): subscale sums Pain 0-20,
    Stiffness 0-8, Physical Function 0-68, total 0-96 (the instrument Pinpoint keeps); a missing
    item is replaced by the mean of its subscale's answered items when at most 1 Pain, 0 Stiffness
    and 3 Function items are missing (the "standard protocol", Whitehouse 2004, for Function;
    Pain and Stiffness as the WOMAC 3.1 User Guide is commonly reported — the guide itself is
    licensed and was not available to verify); the total only when all three subscales are
    valid.

  A response that cannot be scored this way yields no score: it is never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
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
_LINKID_PREFIX = {
    "odi-": t.ODI,
    "ndi-": t.NDI,
    "koosjr-": t.KOOS_JR,
    "peg-": t.PEG,
    "koos-": t.KOOS_ADL,
    "womac-": t.WOMAC,
    "promis-pi": t.PROMIS_PI,
    "promis-pf": t.PROMIS_PF,
}
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
# --- item-scored instruments: KOOS (full), PROMIS 4a short forms, WOMAC ---------------------------
#: KOOS subscales: item label prefix, items, answers needed (KOOS Scoring 2012, koos.nu: "at least
#: 50% of the subscale items": Pain 5, Symptoms 4, ADL 9, Sport/Rec 3, QOL 2).
KOOS_SUBSCALES: dict[str, tuple[str, int, int]] = {
    "pain": ("P", 9, 5),
    "symptoms": ("S", 7, 4),
    "adl": ("A", 17, 9),
    "sport": ("SP", 5, 3),
    "qol": ("Q", 4, 2),
}
#: WOMAC Likert 3.1 subscales: item label prefix, items, missing items allowed (replaced by the
#: mean of the answered items of the subscale).
WOMAC_SUBSCALES: dict[str, tuple[str, int, int]] = {
    "pain": ("P", 5, 1),
    "stiffness": ("S", 2, 0),
    "function": ("F", 17, 3),
}
#: PROMIS short forms Pain Interference 4a (v1.0, the PROMIS-29 v2.0/v2.1 domain) and Physical
#: Function 4a (v2.0): item IDs, then the T-score of each raw sum 4..20. Source: HealthMeasures,
#: "PROMIS Adult Profile Instruments" scoring manual, conversion tables of the PROMIS-29 v2.0/2.1
#: short forms (values cross-checked against two independent transcriptions of the manual's
#: tables in public analysis code).
PROMIS_4A: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    t.PROMIS_PI: (
        ("PAININ9", "PAININ22", "PAININ31", "PAININ34"),
        (41.6, 49.6, 52.0, 53.9, 55.6, 57.1, 58.5, 59.9, 61.2,
         62.5, 63.8, 65.2, 66.6, 68.0, 69.7, 71.6, 75.6),
    ),
    t.PROMIS_PF: (
        ("PFA11", "PFA21", "PFA23", "PFA53"),
        (22.5, 26.6, 28.9, 30.5, 31.9, 33.2, 34.4, 35.6, 36.7,
         37.9, 39.2, 40.5, 41.9, 43.5, 45.5, 48.3, 57.0),
    ),
}  # fmt: skip
#: PROMIS item answers as LOINC answer codes without an ``ordinalValue`` (e.g. the MII PRO
#: PROMIS-29 responses): LL1017-4 (Pain Interference: Not at all 1 … Very much 5, as the CQF
#: cds4cpm IG lists it) and LL1022-4 (Physical Function: Without any difficulty 5 … Unable to do 1,
#: as the MII PRO IG lists it).
PROMIS_ANSWERS: dict[str, dict[str, int]] = {
    t.PROMIS_PI: {"LA6568-5": 1, "LA13863-8": 2, "LA13909-9": 3, "LA13902-4": 4, "LA13914-9": 5},
    t.PROMIS_PF: {"LA13921-4": 5, "LA13918-0": 4, "LA13920-6": 3, "LA13919-8": 2, "LA13912-3": 1},
}
_KOOS_LABEL = re.compile(r"^(?:koos[-_ .]?)?(sp|p|s|a|q)[-_ .]?0*(\d{1,2})$", re.I)
_WOMAC_LABEL = re.compile(r"^(?:womac[-_ .]?)?(pain|stiffness|function|pf|p|s|f)[-_ .]?0*(\d{1,2})$", re.I)
_WOMAC_PREFIX = {"pain": "P", "stiffness": "S", "function": "F", "pf": "F", "p": "P", "s": "S", "f": "F"}
_PROMIS_ITEM = re.compile(r"\b(PAININ\d+|PFA\d+)\b", re.I)
_PROMIS_LINK = re.compile(r"^promis[-_ .]?(pi|pf)[-_ .]?(\d)$", re.I)


def item_label(inst: str, *names: str) -> str | None:
    """The instrument's item label (``A3``, ``SP1``, ``F17``, ``PAININ9``) a linkId, definition
    or component code names, or None."""
    for name in names:
        if not name:
            continue
        tail = name.rsplit("#", 1)[-1].rsplit("/", 1)[-1].strip()
        if inst == t.KOOS_ADL:
            m = _KOOS_LABEL.match(tail)
            if m:
                return f"{m.group(1).upper()}{int(m.group(2))}"
        elif inst == t.WOMAC:
            m = _WOMAC_LABEL.match(tail)
            if m:
                return f"{_WOMAC_PREFIX[m.group(1).lower()]}{int(m.group(2))}"
        elif inst in PROMIS_4A:
            m = _PROMIS_ITEM.search(tail)
            if m:
                return m.group(1).upper()
            m = _PROMIS_LINK.match(tail)
            if m and (t.PROMIS_PI if m.group(1).lower() == "pi" else t.PROMIS_PF) == inst:
                index = int(m.group(2)) - 1
                items = PROMIS_4A[inst][0]
                return items[index] if 0 <= index < len(items) else None
    return None


def koos_scores(items: Mapping[str, float]) -> dict[str, float]:
    """KOOS subscale scores (0-100, 100 = no problems) of the subscales the 2012 missing-item
    rule allows; ``items``: label → 0-4."""
    out: dict[str, float] = {}
    for name, (prefix, count, needed) in KOOS_SUBSCALES.items():
        values = [items[f"{prefix}{n}"] for n in range(1, count + 1) if f"{prefix}{n}" in items]
        if len(values) >= needed:
            out[name] = round(100 - sum(values) / len(values) * 25, 3)
    return out


def womac_scores(items: Mapping[str, float]) -> dict[str, float]:
    """WOMAC Likert 3.1 subscale sums (a missing item replaced by its subscale's mean, within the
    allowed number) and the total when all three are valid; ``items``: label → 0-4."""
    out: dict[str, float] = {}
    for name, (prefix, count, allowed) in WOMAC_SUBSCALES.items():
        values = [items[f"{prefix}{n}"] for n in range(1, count + 1) if f"{prefix}{n}" in items]
        if values and count - len(values) <= allowed:
            out[name] = round(sum(values) / len(values) * count, 3)
    if len(out) == len(WOMAC_SUBSCALES):
        out["total"] = round(sum(out.values()), 3)
    return out


def promis_t_score(inst: str, items: Mapping[str, float]) -> float | None:
    """T-score of a PROMIS 4a short form from its items (1-5): the raw sum → the HealthMeasures
    table. Every item must be answered: HealthMeasures' scoring instructions require at least 4
    answered items for a precise score on a measure of 4 or more items (a short form with items
    missing needs response-pattern scoring, which Pinpoint does not do), so no score otherwise."""
    ids, table = PROMIS_4A[inst]
    if any(i not in items for i in ids):
        return None
    raw = round(sum(items[i] for i in ids))
    low = len(ids)  # every item answered 1
    if not low <= raw <= 5 * len(ids):
        return None
    return table[raw - low]


def _scored(inst: str, items: Mapping[str, float], code: str | None, answered: int) -> Total | None:
    """The Total of an item-scored instrument, or None when its rule does not allow a score."""
    if inst == t.KOOS_ADL:
        if any(not 0 <= v <= 4 for v in items.values()):
            return None
        koos = koos_scores(items)
        if "adl" not in koos:
            return None
        subs = tuple(koos.items())
        return Total(inst, koos["adl"], code, computed=True, answered=answered, subscales=subs)
    if inst == t.WOMAC:
        if any(not 0 <= v <= 4 for v in items.values()):
            return None
        womac = womac_scores(items)
        if "total" not in womac:
            return None
        subs = tuple((k, v) for k, v in womac.items() if k != "total")
        return Total(inst, womac["total"], code, computed=True, answered=answered, subscales=subs)
    if inst in PROMIS_4A:
        if any(not 1 <= v <= 5 for v in items.values()):
            return None
        score = promis_t_score(inst, items)
        return None if score is None else Total(inst, score, code, computed=True, answered=answered)
    return None


def _labelled(inst: str, entries: list[tuple[tuple[str, ...], float | None]]) -> dict[str, float] | None:
    """label → value of the instrument's items among ``entries`` (names, value); None when an
    item of a longer form of the same domain is present (a PROMIS 6a/8a item beside the 4a ones:
    the 4a table does not apply) or an item repeats."""
    found: dict[str, float] = {}
    for names, value in entries:
        label = item_label(inst, *names)
        if label is None:
            continue
        if inst in PROMIS_4A:
            if (t.PROMIS_PI if label.startswith("PAININ") else t.PROMIS_PF) != inst:
                continue  # the other PROMIS-29 domain
            if label not in PROMIS_4A[inst][0]:
                return None
        if value is None:
            continue
        if label in found:
            return None
        found[label] = value
    return found


_ITEM_SCORED = frozenset({t.KOOS_ADL, t.WOMAC, *PROMIS_4A})


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
    subscales: tuple[tuple[str, float], ...] = ()  # KOOS / WOMAC subscale scores, when computed


def instrument_in_text(*texts: str) -> str | None:
    """The instrument a free text names (code text, questionnaire canonical), or None."""
    for text in texts:
        if text:
            found = _instrument_in(text)
            if found is not None:
                return found
    return None


_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


@lru_cache(maxsize=4096)  # code texts and canonicals repeat across resources and patients
def _instrument_in(text: str) -> str | None:
    spaced = _CAMEL.sub(" ", text)  # "NeckDisabilityIndex" → "Neck Disability Index"
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
    if read is None and inst in _ITEM_SCORED:
        return _observation_items(inst, obs, code)
    if read is None:
        return None
    return _canonical(inst, read[0], read[1], code)


def _component_value(comp: Mapping[str, Any]) -> float | None:
    read = _value_of(comp)
    if read is not None:
        return read[0]
    concept = comp.get("valueCodeableConcept")
    for coding in j.as_list(concept.get("coding")) if isinstance(concept, Mapping) else []:
        if isinstance(coding, Mapping):
            value = _ordinal({"valueCoding": coding})
            if value is not None:
                return value
    return None


def _observation_items(inst: str, obs: Mapping[str, Any], code: str | None) -> Total | None:
    """An item-scored instrument from a panel's item components (component code: the item label,
    e.g. ``A1`` or ``PAININ9``, as a code of any system or the code text)."""
    entries: list[tuple[tuple[str, ...], float | None]] = []
    for comp in j.as_list(obs.get("component")):
        if isinstance(comp, Mapping):
            concept = comp.get("code")
            codings = j.as_list(concept.get("coding")) if isinstance(concept, Mapping) else []
            names = tuple(str(c.get("code") or "") for c in codings if isinstance(c, Mapping))
            entries.append(((*names, *j.texts(concept)), _component_value(comp)))
    labelled = _labelled(inst, entries)
    return None if not labelled else _scored(inst, labelled, code, len(labelled))


def observation_totals(obs: Mapping[str, Any]) -> list[Total]:
    """Every total an Observation carries: its own (:func:`observation_total`), and a PROMIS-29
    panel's second domain from its item components."""
    first = observation_total(obs)
    out = [first] if first is not None else []
    found = observation_instrument(obs)
    promis = found is not None and found[0] in PROMIS_4A
    if found is None and any(_PROMIS_ANY.search(x) for x in j.texts(obs.get("code"))):
        found, promis = (t.PROMIS_PI, None), True  # "PROMIS-29": the domains from the items
    if found is not None and promis:
        for inst in PROMIS_4A:
            if first is None or inst != first.instrument:
                other = _observation_items(inst, obs, found[1])
                if other is not None:
                    out.append(other)
    return out


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


_KOOS_FULL = re.compile(r"\bKOOS\b(?![\s,_-]*JR)", re.I)
_PROMIS_ANY = re.compile(r"PROMIS", re.I)


def questionnaire_instruments(qr: Mapping[str, Any]) -> list[str]:
    """Every instrument a QuestionnaireResponse carries (a PROMIS-29 response: Pain Interference
    and Physical Function), the principal first; empty when it is none of them."""
    first = questionnaire_instrument(qr)
    found = [first] if first else []
    canonical = str(qr.get("questionnaire") or "")
    names = [str(i.get(k) or "") for i in _items(qr.get("item")) for k in ("linkId", "definition")]
    if first is None and _KOOS_FULL.search(canonical):
        found.append(t.KOOS_ADL)
    if first in PROMIS_4A or first is None:
        for inst in PROMIS_4A:
            if inst not in found and any(item_label(inst, n) for n in names):
                found.append(inst)
    return found


def questionnaire_instrument(qr: Mapping[str, Any]) -> str | None:
    """The principal instrument of a QuestionnaireResponse, or None when it is not one of them."""
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
        for inst in PROMIS_4A:
            if item_label(inst, str(item.get("linkId") or ""), str(item.get("definition") or "")):
                return inst
    if isinstance(canonical, str) and _KOOS_FULL.search(canonical):
        return t.KOOS_ADL
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


def _item_answer(inst: str, answer: Mapping[str, Any]) -> float | None:
    """An item's value: its ordinal, else (PROMIS) the LOINC answer code's place in its list."""
    value = _ordinal(answer)
    if value is None and inst in PROMIS_ANSWERS:
        coding = answer.get("valueCoding")
        if isinstance(coding, Mapping) and coding.get("system") == t.LOINC:
            found = PROMIS_ANSWERS[inst].get(str(coding.get("code")))
            return None if found is None else float(found)
    return value


def _computed(inst: str, items: list[Mapping[str, Any]]) -> Total | None:
    if inst in _ITEM_SCORED:
        entries: list[tuple[tuple[str, ...], float | None]] = []
        for item in items:
            answers = [a for a in j.as_list(item.get("answer")) if isinstance(a, Mapping)]
            names = (str(item.get("linkId") or ""), str(item.get("definition") or ""))
            entries.append((names, _item_answer(inst, answers[0]) if answers else None))
        labelled = _labelled(inst, entries)
        return None if not labelled else _scored(inst, labelled, None, len(labelled))
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


def questionnaire_totals(qr: Mapping[str, Any]) -> list[Total]:
    """The total score of every instrument a functional QuestionnaireResponse carries."""
    items = list(_items(qr.get("item")))
    out = []
    for inst in questionnaire_instruments(qr):
        total = _questionnaire_total(inst, items)
        if total is not None:
            out.append(total)
    return out


def questionnaire_total(qr: Mapping[str, Any]) -> Total | None:
    """The total score of a functional QuestionnaireResponse (see the module docstring), or None."""
    totals = questionnaire_totals(qr)
    return totals[0] if totals else None


def _questionnaire_total(inst: str, items: list[Mapping[str, Any]]) -> Total | None:
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
