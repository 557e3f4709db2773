"""FHIR R4 raw JSON → clinical facts (CONTRACT §4), pure (the standard library and orjson).

:func:`normalize` takes reference-resolved resources of one or several patients (see
:mod:`shared.fhir.bundle`) and returns ``{"Patient/<id>": PatientFacts}``. Each fact is read from
the first encoding present, in the order of CONTRACT §4. Entered-in-error, cancelled and
preliminary resources never count; an amended or corrected Observation replaces its original
(same id, same identifier, or named in ``derivedFrom``).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from functools import lru_cache
from operator import attrgetter
from typing import Any

import orjson

from shared.domain import _json as j
from shared.domain import terminology as t
from shared.domain.facts import (
    ConditionFact,
    ConservativeCare,
    FunctionScore,
    Injectate,
    Intervention,
    Order,
    PainReading,
    PatientFacts,
    Sedation,
    SteroidExposure,
    by_end_ref,
    by_start_ref,
    by_time_ref,
)
from shared.domain.function import SCALES, Total, observation_totals, questionnaire_totals
from shared.domain.relevance import classify, patient_reference

# types whose facts are filtered while building (a dropped one yields no fact, but its patient an entry)
_SELF_FILTERED = frozenset({"Patient", "Condition"})
_KEPT_PROCEDURE_CODES = frozenset(t.PROCEDURE_KINDS) | t.SEDATION_CPT | t.PHYSICAL_THERAPY_CPT
_VOID_STATUS = frozenset({"entered-in-error", "cancelled", "preliminary", "not-done", "stopped-in-error"})
_ORDER_INTENTS = frozenset({"order", "original-order", "plan"})
_INACTIVE_CONDITION = frozenset({"inactive", "resolved", "remission"})
_VOID_VERIFICATION = frozenset({"entered-in-error", "refuted"})

# --- joints and levels --------------------------------------------------------------------------
_LETTERS = "CTLS"
_COUNTS = {"C": 7, "T": 12, "L": 5, "S": 1}
_VERTEBRAE = [f"{letter}{n}" for letter in _LETTERS for n in range(1, _COUNTS[letter] + 1)]
_INDEX = {v: i for i, v in enumerate(_VERTEBRAE)}
_LEVEL = re.compile(r"(?<![A-Za-z])([CTLS])\s?(\d{1,2})\s*(?:-|/|–|to)\s*([CTLS])?\s?(\d{1,2})(?!\d)", re.I)
_JOINT_REGION = {"C": "cervical", "T": "thoracic", "L": "lumbar", "S": "lumbar"}


def _vertebra_index(letter: str, number: int) -> int | None:
    return _INDEX.get(f"{letter.upper()}{number}")


@lru_cache(maxsize=4096)  # body-site and procedure texts repeat across patients
def parse_levels(text: str) -> tuple[str, ...]:
    """Spinal joints named in free text: "Right L4-5 and L5-S1", "L4/5", "C2-3", "L4-L5".

    A range spanning several segments ("L3-L5") names each joint in it. Joints are returned
    cranial to caudal, without duplicates.
    """
    found: set[int] = set()
    for m in _LEVEL.finditer(text):
        a = _vertebra_index(m.group(1), int(m.group(2)))
        if a is None:
            continue
        b: int | None
        if m.group(3):
            b = _vertebra_index(m.group(3), int(m.group(4)))
        else:
            b = _vertebra_index(m.group(1), int(m.group(4)))
            if b is None or b <= a:  # "L5-1" → L5-S1, "C7-1" → C7-T1
                nxt = _LETTERS.find(m.group(1).upper()) + 1
                b = _vertebra_index(_LETTERS[nxt], int(m.group(4))) if nxt < len(_LETTERS) else None
        if b is None or not 0 < b - a <= 4:
            continue
        found.update(range(a, b))
    return tuple(f"{_VERTEBRAE[i]}-{_VERTEBRAE[i + 1]}" for i in sorted(found))


def joint_region(joint: str) -> str:
    """Anatomical region of a spinal joint: its upper vertebra's (C7-T1 cervical, L5-S1 lumbar)."""
    return _JOINT_REGION.get(joint[:1].upper(), "other")


def joint_order(joint: str) -> int:
    """Cranial → caudal position of a spinal joint (unknown joints sort last)."""
    return _INDEX.get(joint.split("-")[0], 99)


# --- laterality ------------------------------------------------------------------------------------
_SIDE_WORDS = re.compile(r"\b(right|left|bilateral|bilaterally|bilat)\b", re.I)
_SIDE_LETTERS = re.compile(r"(?<![A-Za-z0-9-])([RL])(?![A-Za-z0-9])")
_SIDE_MODIFIERS = re.compile(r"-(RT|LT|50)\b")


def _combine_sides(sides: set[str]) -> str | None:
    if not sides:
        return None
    if "bilateral" in sides or {"left", "right"} <= sides:
        return "bilateral"
    return next(iter(sides))


def side_from_codings(concepts: Any) -> str | None:
    """SNOMED laterality, R4 (419161000, 419465000) or R5 (7771000, 24028007), and 51440002."""
    sides = {t.LATERALITY[c] for c in j.code_set(concepts, t.SNOMED) if c in t.LATERALITY}
    return _combine_sides(sides)


def side_from_text(*texts: str) -> str | None:
    """ "right"/"left"/"bilateral" (any case), "R"/"L" as whole upper-case words, -RT/-LT/-50."""
    sides: set[str] = set()
    for text in texts:
        for m in _SIDE_WORDS.finditer(text):
            word = m.group(1).lower()
            sides.add("bilateral" if word.startswith("bilat") else word)
        for m in _SIDE_LETTERS.finditer(text):
            sides.add("right" if m.group(1) == "R" else "left")
        for m in _SIDE_MODIFIERS.finditer(text):
            sides.add({"RT": "right", "LT": "left", "50": "bilateral"}[m.group(1)])
    return _combine_sides(sides)


# --- values -----------------------------------------------------------------------------------------
_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*$")
_MG = re.compile(r"(\d+(?:\.\d+)?)\s*mg\b", re.I)
_IA = re.compile(r"intra-?articular", re.I)
_IA_WORD = re.compile(r"\bIA\b")
_HIP = re.compile(r"\bhip\b")


def reading_value(obs: Mapping[str, Any], scale: str) -> float | None:
    """valueInteger, valueQuantity (VAS in cm × 10), valueString holding a number, LOINC answers."""
    if "valueInteger" in obs and isinstance(obs["valueInteger"], int | float):
        return float(obs["valueInteger"])
    q = obs.get("valueQuantity")
    if q is not None and isinstance(q, Mapping) and isinstance(q.get("value"), int | float):
        value = float(q["value"])
        if scale == t.VAS and str(q.get("code") or q.get("unit") or "").lower() == "cm":
            value *= 10
        return value
    s = obs.get("valueString")
    if isinstance(s, str):
        m = _NUMBER.match(s)
        if m:
            return float(m.group(1))
        return None
    cc = obs.get("valueCodeableConcept")
    if cc is not None:
        for c in j.codings(cc):
            code = c.get("code")
            if isinstance(code, str) and code in t.LOINC_ANSWERS:
                return float(t.LOINC_ANSWERS[code])
    return None


def _icd(code: str) -> str:
    return code.replace(".", "").strip().upper()


_ICD_REGION_DIGIT = {"1": "cervical", "2": "cervical", "3": "cervical", "4": "thoracic", "5": "thoracic"}
_ICD_REGION_DIGIT |= {"6": "lumbar", "7": "lumbar", "8": "lumbar", "9": None}  # type: ignore[dict-item]


@lru_cache(maxsize=4096)
def condition_region(icd: str) -> str | None:
    """Anatomical region an ICD-10-CM code names (spine codes by their region character)."""
    if icd.startswith(("M461", "M533")):
        return "sacroiliac"
    if icd.startswith(("M17", "M2556")):
        return "knee"
    if icd.startswith("M2555"):
        return "hip"
    if icd.startswith("M542"):
        return "cervical"
    if icd.startswith("M546"):
        return "thoracic"
    if icd.startswith(("M545", "M543", "M544")):
        return "lumbar"
    if icd.startswith(("M4806", "M961")):
        return "lumbar"
    if icd.startswith(("M47", "M48", "M51", "M54", "M53")) and len(icd) >= 5:
        digit = icd[-1]
        if icd.startswith("M51"):  # M51.1x: 4 thoracic, 5 thoracolumbar, 6 lumbar, 7 lumbosacral
            return {"4": "thoracic", "5": "thoracic", "6": "lumbar", "7": "lumbar"}.get(icd[4:5])
        return _ICD_REGION_DIGIT.get(digit)
    return None


# --- helpers on resources -------------------------------------------------------------------------
def _ref(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def _status(resource: Mapping[str, Any]) -> str:
    s = resource.get("status")
    return s if isinstance(s, str) else "unknown"


def _kind(codes: Iterable[str]) -> tuple[str, str | None] | None:
    for code in codes:
        if code in t.PROCEDURE_KINDS:
            return t.PROCEDURE_KINDS[code]
    return None


def _injectate_from(names: Iterable[str], steroid_mg: float | None) -> Injectate:
    anaesthetics = tuple(sorted({n for n in names if n in t.ANAESTHETIC_NAMES}))
    steroids = sorted({n for n in names if n in t.STEROID_NAMES})
    agent = anaesthetics[0] if len(anaesthetics) == 1 else ("mixed" if anaesthetics else "unknown")
    return Injectate(agent, anaesthetics, steroids[0] if steroids else None, steroid_mg if steroids else None)


def _used_injectate(used: Any) -> Injectate:
    """The injectate a Procedure's ``usedCode`` names (RxNorm codings or text)."""
    names: set[str] = set()
    for cc in j.as_list(used):
        names |= j.rxnorm_names(cc)
    return _injectate_from(names, _mg_in(j.texts(used)))


def _mg_in(texts: Iterable[str]) -> float | None:
    for text in texts:
        if any(w in text.lower() for w in t.STEROID_WORDS):
            m = _MG.search(text)
            if m:
                return float(m.group(1))
    return None


_NO_INJECTATE = _used_injectate(None)


def _dose_mg(dosage: Any) -> float | None:
    if not isinstance(dosage, Mapping):
        return None
    dose = dosage.get("dose")
    if isinstance(dose, Mapping) and isinstance(dose.get("value"), int | float):
        unit = str(dose.get("code") or dose.get("unit") or "mg").lower()
        if unit == "mg":
            return float(dose["value"])
        if unit == "g":
            return float(dose["value"]) * 1000
        if unit in ("ug", "mcg", "µg"):
            return float(dose["value"]) / 1000
    return None


class _Site:
    """Where a Procedure / ServiceRequest acts: region, joints, side, intra-articular."""

    __slots__ = ("intra_articular", "joints", "region", "side")

    def __init__(self, region: str, joints: tuple[str, ...], side: str | None, intra_articular: bool) -> None:
        self.region, self.joints, self.side, self.intra_articular = region, joints, side, intra_articular


def _body_structures(
    resource: Mapping[str, Any], index: Mapping[str, Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    out: list[Mapping[str, Any]] = []
    for ext in j.as_list(resource.get("extension")):
        if isinstance(ext, Mapping) and ext.get("url") == t.TARGET_BODY_STRUCTURE_EXT:
            ref = j.reference(ext.get("valueReference"))
            if not ref:
                continue
            if ref.startswith("#"):
                for c in j.as_list(resource.get("contained")):
                    if isinstance(c, Mapping) and c.get("id") == ref[1:]:
                        out.append(c)
            elif ref in index:
                out.append(index[ref])
    return out


def _structure_concepts(bs: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
    """(location-like concepts, laterality concepts) of an R4 or R5 BodyStructure."""
    locations = list(j.as_list(bs.get("location")))  # copies: the resource's lists stay as read
    qualifiers = list(j.as_list(bs.get("locationQualifier")))
    for inc in j.as_list(bs.get("includedStructure")):
        if isinstance(inc, Mapping):
            locations += j.as_list(inc.get("structure"))
            qualifiers += j.as_list(inc.get("laterality"))
    return locations, qualifiers


_SITES: dict[tuple[str, str | None, str, str, str], _Site] = {}
_USED: dict[str, Injectate] = {}
_REMEMBERED = 4096  # entries of each of these caches (cleared when full)


def _remember(cache: dict[Any, Any], key: Any, compute: Any) -> Any:
    """``cache[key]``, computed by ``compute()`` the first time (the cache is bounded)."""
    found = cache.get(key)
    if found is None:
        if len(cache) >= _REMEMBERED:
            cache.clear()
        found = cache[key] = compute()
    return found


def _site(
    resource: Mapping[str, Any], kind: str, default_region: str | None, bs_index: Mapping[str, Any]
) -> _Site:
    """Where the resource acts. Body sites and codes repeat across patients (a patient's blocks,
    a clinic's templates): without a BodyStructure extension the answer depends only on the
    ``bodySite``, ``code`` and ``note`` read, so it is remembered by their text (bounded)."""
    if "extension" in resource:
        return _site_of(resource, kind, default_region, bs_index)
    read = (resource.get("bodySite"), resource.get("code"), resource.get("note"))
    try:
        text = orjson.dumps(read)  # a tenth of repr's cost
    except TypeError:  # not plain JSON (a key that is not a string, a huge integer): as written
        text = repr(read).encode()
    key = (kind, default_region, text)
    site: _Site = _remember(_SITES, key, lambda: _site_of(resource, kind, default_region, bs_index))
    return site


def _site_of(
    resource: Mapping[str, Any], kind: str, default_region: str | None, bs_index: Mapping[str, Any]
) -> _Site:
    body_sites = j.as_list(resource.get("bodySite"))
    code = resource.get("code")
    structures = _body_structures(resource, bs_index) if "extension" in resource else []
    locations: list[Any] = []
    qualifiers: list[Any] = []
    for bs in structures:
        loc, qual = _structure_concepts(bs)
        locations += loc
        qualifiers += qual
    # joints: BodyStructure, else urn:pinpoint:spinal-joint codings, else free text
    joints: tuple[str, ...] = ()
    for concepts in (locations, body_sites):
        coded = j.code_set(concepts, t.SPINAL_JOINT)
        if coded:
            joints = parse_levels(" ".join(sorted(coded)))
            break
    body_texts = [x for cc in body_sites + locations if isinstance(cc, Mapping) for x in j.texts(cc)]
    code_texts = j.texts(code)
    if not joints:
        joints = parse_levels(" ".join(body_texts + [x for x in code_texts if isinstance(x, str)]))
    side = side_from_codings(locations + qualifiers) or side_from_codings(body_sites)
    if side is None:
        side = side_from_text(*body_texts, *code_texts)
    snomed = j.code_set(body_sites + locations, t.SNOMED)
    all_text = " ".join(body_texts + code_texts).lower()
    notes = [n.get("text", "") for n in j.as_list(resource.get("note")) if isinstance(n, Mapping)]
    ia_texts = [*body_texts, *code_texts, *[n for n in notes if isinstance(n, str)]]
    intra_articular = any(_IA.search(x) or _IA_WORD.search(x) for x in ia_texts)
    region: str
    if kind in (t.FACET_BLOCK, t.FACET_BLOCK_US, t.FACET_RFA, t.ESI_INTERLAMINAR, t.ESI_TRANSFORAMINAL):
        region = joint_region(joints[0]) if joints else (default_region or "other")
        if default_region == "cervical" and not joints:
            region = "cervical"
    elif kind in (t.SIJ_BLOCK, t.SIJ_NERVE_BLOCK, t.SIJ_RFA):
        region, joints = "sacroiliac", ("SIJ",)
    elif kind in (t.GENICULAR_BLOCK, t.GENICULAR_RFA) or t.KNEE in snomed or "knee" in all_text:
        region, joints = "knee", ("knee",)
    elif snomed & t.HIP_SNOMED or _HIP.search(all_text):
        region, joints = "hip", ("hip",)
    elif t.SACROILIAC_JOINT in snomed or "sacroiliac" in all_text:
        region, joints = "sacroiliac", ("SIJ",)
    elif joints:
        region = joint_region(joints[0])
    else:
        region = default_region or "other"
    return _Site(region, joints, side, intra_articular)


def _diagnostic(resource: Mapping[str, Any], injectate: Injectate) -> bool:
    """Category 103693007 / 277132007; else a corticosteroid means therapeutic; else diagnostic."""
    cats = j.code_set(resource.get("category"), t.SNOMED)
    if t.DIAGNOSTIC_CATEGORY in cats:
        return True
    if t.THERAPEUTIC_CATEGORY in cats:
        return False
    return injectate.steroid is None


def _medication_concept(resource: Mapping[str, Any], meds: Mapping[str, Mapping[str, Any]]) -> Any:
    concept = resource.get("medicationCodeableConcept")
    if concept is not None:
        return concept
    med = resource.get("medication")
    if isinstance(med, Mapping) and "concept" in med:
        return med["concept"]
    ref = j.reference(resource.get("medicationReference")) or (
        j.reference(med.get("reference")) if isinstance(med, Mapping) else None
    )
    if ref:
        if ref.startswith("#"):
            for c in j.as_list(resource.get("contained")):
                if isinstance(c, Mapping) and c.get("id") == ref[1:]:
                    return c.get("code")
        elif ref in meds:
            return meds[ref].get("code")
    return None


# --- per patient -------------------------------------------------------------------------------------
_BY_DAY_REF = attrgetter("start", "ref")  # conservative care: a date
_BY_REF = attrgetter("ref")


class _Builder:
    def __init__(
        self, patient: str, bs_index: Mapping[str, Any], meds: Mapping[str, Mapping[str, Any]]
    ) -> None:
        self.patient = patient
        self.bs_index = bs_index
        self.meds = meds
        self.sex: str | None = None
        self.birth: date | None = None
        self.procedures: list[Mapping[str, Any]] = []
        self.codes: dict[int, list[str]] = {}
        self.observations: dict[str, Mapping[str, Any]] = {}
        self.scales: dict[str, str] = {}
        self.conditions: list[ConditionFact] = []
        self.care: list[ConservativeCare] = []
        self.admins: list[Mapping[str, Any]] = []
        self.requests: list[Mapping[str, Any]] = []
        self.function_resources: dict[str, Mapping[str, Any]] = {}

    def add_procedure(self, proc: Mapping[str, Any], codes: list[str]) -> None:
        self.procedures.append(proc)
        self.codes[id(proc)] = codes

    # observations: amended/corrected replace their original ---------------------------------
    def add_observation(self, obs: Mapping[str, Any], scale: str) -> None:
        ref = _ref(obs)
        current = self.observations.get(ref)
        if current is None or _newer(obs, current):
            self.observations[ref] = obs
            self.scales[ref] = scale

    def add_function(self, res: Mapping[str, Any]) -> None:
        ref = _ref(res)
        current = self.function_resources.get(ref)
        if current is None or _newer(res, current):
            self.function_resources[ref] = res

    def function_scores(self) -> list[FunctionScore]:
        """Function scores of kept Observations and QuestionnaireResponses; an amended one
        replaces what it names in ``derivedFrom``; one score per instrument, time and value."""
        replaced = {
            r
            for res in self.function_resources.values()
            if _status(res) in ("amended", "corrected")
            for r in j.references(res.get("derivedFrom"))
        }
        out: dict[tuple[str, datetime, float], FunctionScore] = {}
        for ref, res in sorted(self.function_resources.items()):
            if ref in replaced:
                continue
            totals: list[Total]
            if res.get("resourceType") == "QuestionnaireResponse":
                if _status(res) not in t.QR_OK_STATUS:
                    continue
                totals = questionnaire_totals(res)  # a PROMIS-29 response: two domains
                time = j.parse_datetime(res.get("authored"))
            else:
                if _status(res) not in t.OBSERVATION_OK_STATUS:
                    continue
                totals = observation_totals(res)
                time = j.period_start_end(res, "effective")[0]
            if not totals or time is None:
                continue
            body = res.get("bodySite")
            side = side_from_codings(body) or side_from_text(*j.texts(body)) if body is not None else None
            for total in totals:
                score = FunctionScore(
                    ref=ref,
                    instrument=total.instrument,
                    value=total.value,
                    scale=SCALES[total.instrument],
                    time=time,
                    code=total.code,
                    raw=total.raw,
                    computed=total.computed,
                    answered=total.answered,
                    unit_assumed=total.unit_assumed,
                    part_of=tuple(j.references(res.get("partOf"))),
                    side=side,
                )
                key = (score.instrument, score.time, score.value)
                if key not in out or (score.code is not None and out[key].code is None):
                    out[key] = score
        return sorted(out.values(), key=by_time_ref)

    def readings(self) -> list[PainReading]:
        replaced: set[str] = set()
        by_identifier: dict[str, Mapping[str, Any]] = {}
        for obs in self.observations.values():
            if "derivedFrom" not in obs and "identifier" not in obs:
                continue  # names no other version (most readings)
            if _status(obs) in ("amended", "corrected"):
                replaced.update(j.references(obs.get("derivedFrom")))
            for ident in j.as_list(obs.get("identifier")):
                if isinstance(ident, Mapping) and ident.get("value"):
                    key = f"{ident.get('system')}|{ident.get('value')}"
                    prev = by_identifier.get(key)
                    if prev is None:
                        by_identifier[key] = obs
                    elif _newer(obs, prev):
                        replaced.add(_ref(prev))
                        by_identifier[key] = obs
                    else:
                        replaced.add(_ref(obs))
        out = []
        for ref, obs in self.observations.items():
            if ref in replaced or _status(obs) not in t.OBSERVATION_OK_STATUS:
                continue
            reading = _reading(obs, self.scales[ref], ref)
            if reading is not None:
                out.append(reading)
        return out

    def build(self) -> PatientFacts:
        proc_index = _dedupe(self.procedures)
        admins = _dedupe(self.admins)
        requests = _dedupe(self.requests)
        part_of: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        sedations: list[Sedation] = []
        steroids: list[SteroidExposure] = []
        linked: set[str] = set()
        for ma_ref, ma in admins.items():
            if _status(ma) in _VOID_STATUS:
                continue
            names = j.rxnorm_names(_medication_concept(ma, self.meds) or {})
            parents = [r for r in j.references(ma.get("partOf")) if r in proc_index]
            for parent in parents:
                part_of[parent].append(ma)
                linked.add(ma_ref)
            start, end = j.period_start_end(ma, "effective")
            routes = j.dosage_routes(ma)
            if start and end and names & t.SEDATIVE_NAMES and not any(j.route_is_oral(r) for r in routes):
                sedations.append(Sedation(ma_ref, start, end, sorted(names & t.SEDATIVE_NAMES)[0]))
            steroid_names = sorted(names & t.STEROID_NAMES)
            if steroid_names and not parents and start and not any(j.route_is_oral(r) for r in routes):
                steroids.append(
                    SteroidExposure(
                        ma_ref, start, steroid_names[0], _dose_mg(ma.get("dosage")), "other", (), None
                    )
                )
        interventions: list[Intervention] = []
        for ref, proc in proc_index.items():
            status = _status(proc)
            if status in _VOID_STATUS:
                continue
            codes = self.codes.get(id(proc)) or j.procedure_codes(proc.get("code"))
            start, end = j.period_start_end(proc, "performed")
            if start is None or end is None:
                continue
            if not t.SEDATION_CPT.isdisjoint(codes) and status == "completed":
                sedations.append(Sedation(ref, start, end, "procedure"))
                continue
            if not t.PHYSICAL_THERAPY_CPT.isdisjoint(codes) and status in ("completed", "in-progress"):
                self.care.append(ConservativeCare(ref, "physical-therapy", start.date()))
                continue
            kind = _kind(codes)
            injectate = self._procedure_injectate(proc, part_of.get(ref, []))
            if kind is None:
                if injectate.steroid and status == "completed":
                    site = _site(proc, "", None, self.bs_index)
                    steroids.append(
                        SteroidExposure(
                            ref,
                            end,
                            injectate.steroid,
                            injectate.steroid_mg,
                            site.region,
                            site.joints,
                            site.side,
                        )
                    )
                continue
            site = _site(proc, kind[0], kind[1], self.bs_index)
            iv = Intervention(
                ref=ref,
                kind=kind[0],
                codes=tuple(sorted(set(codes))),
                status=status,
                diagnostic=_diagnostic(proc, injectate),
                intra_articular=site.intra_articular,
                region=site.region,
                joints=site.joints,
                side=site.side,
                start=start,
                end=end,
                injectate=injectate,
                based_on=tuple(j.references(proc.get("basedOn"))),
            )
            interventions.append(iv)
            if injectate.steroid and status == "completed":
                steroids.append(
                    SteroidExposure(
                        iv.ref, end, injectate.steroid, injectate.steroid_mg, iv.region, iv.joints, iv.side
                    )
                )
        performed_based_on = {r for iv in interventions for r in iv.based_on}
        orders = [
            o for o in (self._order(r, sr, performed_based_on) for r, sr in requests.items()) if o is not None
        ]
        return PatientFacts(
            patient=self.patient,
            sex=self.sex,
            birth_date=self.birth,
            interventions=tuple(sorted(interventions, key=by_end_ref)),
            readings=tuple(sorted(self.readings(), key=by_time_ref)),
            function_scores=tuple(self.function_scores()) if self.function_resources else (),
            conditions=tuple(sorted(self.conditions, key=_BY_REF)),
            conservative_care=tuple(sorted(self.care, key=_BY_DAY_REF)),
            steroids=tuple(sorted(steroids, key=by_time_ref)),
            sedations=tuple(sorted(sedations, key=by_start_ref)),
            orders=tuple(sorted(orders, key=_BY_REF)),
        )

    def _procedure_injectate(self, proc: Mapping[str, Any], admins: list[Mapping[str, Any]]) -> Injectate:
        """MedicationAdministration.partOf first (ingredient + dose mg), else usedCode RxNorm or text."""
        if admins:
            names: set[str] = set()
            mg: float | None = None
            for ma in admins:
                concept = _medication_concept(ma, self.meds) or {}
                found = j.rxnorm_names(concept)
                names |= found
                if found & t.STEROID_NAMES:
                    mg = _dose_mg(ma.get("dosage")) or _mg_in(j.texts(concept))
            if names:
                return _injectate_from(names, mg)
        used = proc.get("usedCode")
        if used is None:
            return _NO_INJECTATE
        # clinics' templates repeat: remembered by the text of what was used (bounded)
        injectate: Injectate = _remember(_USED, repr(used), lambda: _used_injectate(used))
        return injectate

    def _order(self, ref: str, sr: Mapping[str, Any], performed_based_on: set[str]) -> Order | None:
        status, intent = _status(sr), sr.get("intent")
        if intent not in _ORDER_INTENTS or j.is_own_proposal(sr):
            return None
        if not (status == "draft" or (status == "active" and ref not in performed_based_on)):
            return None
        codes = j.procedure_codes(sr.get("code"))
        kind = _kind(codes)
        if kind is None:
            return None
        names: set[str] = set()
        detail_texts: list[str] = []
        for cc in j.as_list(sr.get("orderDetail")):
            names |= j.rxnorm_names(cc)
            detail_texts += j.texts(cc)
        if not names:
            notes = [n.get("text", "") for n in j.as_list(sr.get("note")) if isinstance(n, Mapping)]
            for text in notes:
                if isinstance(text, str):
                    names |= j.words_in(text)
                    detail_texts.append(text)
        injectate = _injectate_from(names, _mg_in(detail_texts))
        site = _site(sr, kind[0], kind[1], self.bs_index)
        requested = j.parse_date(sr.get("occurrenceDateTime"))
        if requested is None and isinstance(sr.get("occurrencePeriod"), Mapping):
            requested = j.parse_date(sr["occurrencePeriod"].get("start"))
        if requested is None:
            requested = j.parse_date(sr.get("authoredOn"))
        reasons = tuple(sorted(_icd(c) for c in j.code_set(sr.get("reasonCode"), t.ICD10CM)))
        return Order(
            ref=ref,
            kind=kind[0],
            codes=tuple(sorted(set(codes))),
            status=status,
            intent=str(intent),
            diagnostic=_diagnostic(sr, injectate),
            intra_articular=site.intra_articular,
            region=site.region,
            joints=site.joints,
            side=site.side,
            requested=requested,
            injectate=injectate,
            reason_codes=reasons,
        )


def _newer(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Which of two versions of one resource wins, independent of arrival order: amended or
    corrected first, then the newer ``meta.lastUpdated`` / ``versionId``, then content."""
    ra, rb = _obs_rank(a), _obs_rank(b)
    if ra != rb:
        return ra > rb
    return json.dumps(a, sort_keys=True, default=str) > json.dumps(b, sort_keys=True, default=str)


def _dedupe(resources: list[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """One version per ``Type/id`` (see :func:`_newer`): ``{"Type/id": resource}``."""
    best: dict[str, Mapping[str, Any]] = {}
    for res in resources:
        ref = _ref(res)
        current = best.get(ref)
        if current is None or _newer(res, current):
            best[ref] = res
    return best


def _obs_rank(obs: Mapping[str, Any]) -> tuple[int, str, str]:
    meta = obs.get("meta") if isinstance(obs.get("meta"), Mapping) else {}
    assert isinstance(meta, Mapping)
    return (
        1 if _status(obs) in ("amended", "corrected") else 0,
        str(meta.get("lastUpdated") or ""),
        str(meta.get("versionId") or ""),
    )


def _pain_scale(obs: Mapping[str, Any]) -> str | None:
    """The LOINC pain scale of an Observation (72514-3, 38208-5, 38214-3), or None."""
    code_cc = obs.get("code")
    if type(code_cc) is not dict:
        return None
    coding = code_cc.get("coding")
    if type(coding) is not list:
        return None
    best = None
    for c in coding:
        if type(c) is dict:
            code = c.get("code")
            if code in t.PAIN_SCALES and c.get("system") == t.LOINC and (best is None or code < best):
                best = code
    return best


def _reading(obs: Mapping[str, Any], scale: str, ref: str) -> PainReading | None:
    value = reading_value(obs, scale)
    if value is None or value < 0:
        return None
    time = j.parse_datetime(obs.get("effectiveDateTime")) or j.period_start_end(obs, "effective")[0]
    if time is None:
        return None
    body = obs.get("bodySite")
    side = None
    if body is not None:
        side = side_from_codings(body) or side_from_text(*j.texts(body))
    part_of = tuple(j.references(obs["partOf"])) if "partOf" in obs else ()
    return PainReading(ref, scale, value, time, part_of, side)


_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"


@lru_cache(maxsize=4096)  # a chart's codes come from a small vocabulary
def _condition_code(system: str, code: str) -> str | None:
    """A Condition coding as a fact code: ICD-10-CM without dots, upper case; SNOMED ``SCT:<code>``."""
    if system == t.ICD10CM:
        return _icd(code)
    if system == t.SNOMED:
        return f"SCT:{code.strip()}"
    return None


def _condition(cond: Mapping[str, Any]) -> ConditionFact | None:
    verification = cond.get("verificationStatus")
    if verification is not None and not _VOID_VERIFICATION.isdisjoint(
        j.code_set(verification, _VERIFICATION)
    ):
        return None
    clinical = cond.get("clinicalStatus")
    inactive = clinical is not None and not _INACTIVE_CONDITION.isdisjoint(j.code_set(clinical, _CLINICAL))
    icd: set[str] = set()
    codes: set[str] = set()
    concept = cond.get("code")
    for cc in concept if type(concept) is list else (concept,):
        coding = cc.get("coding") if type(cc) is dict else None
        if type(coding) is list:
            for c in coding:
                system = c.get("system") if type(c) is dict and "code" in c else None
                if type(system) is str:
                    found = _condition_code(system, str(c["code"]))
                    if found is not None:
                        codes.add(found)
                        if not found.startswith("SCT:"):
                            icd.add(found)
    onset = j.parse_date(cond.get("onsetDateTime"))
    if onset is None:
        period = cond.get("onsetPeriod")
        if period is not None and isinstance(period, Mapping):
            onset = j.parse_date(period.get("start"))
        if onset is None:
            onset = j.parse_date(cond.get("recordedDate"))
    body = cond.get("bodySite")
    side = side_from_codings(body) or side_from_text(*j.texts(body)) if body is not None else None
    # the first ICD-10-CM code (in code order) naming a region decides
    region = None
    for code in sorted(icd) if len(icd) > 1 else icd:
        region = condition_region(code)
        if region:
            break
    if region is None and body is not None:
        snomed = j.code_set(body, t.SNOMED)
        if t.SACROILIAC_JOINT in snomed:
            region = "sacroiliac"
        elif t.KNEE in snomed:
            region = "knee"
    return ConditionFact(  # positional: the fields' order (ref, codes, onset, active, side, region)
        f"{cond.get('resourceType')}/{cond.get('id')}",
        tuple(sorted(codes)),
        onset,
        not inactive,
        side,
        region,
    )


def _patient_key(resource: Mapping[str, Any]) -> str | None:
    ref = patient_reference(resource)
    return None if ref is None else _key_of(ref)


@lru_cache(maxsize=4096)  # a patient's resources all name it
def _key_of(ref: str) -> str | None:
    if ref.startswith("urn:uuid:"):
        return f"Patient/{ref[len('urn:uuid:') :]}"
    if "://" in ref:
        parts = ref.rstrip("/").split("/")
        ref = "/".join(parts[-2:])
    return ref if ref.startswith("Patient/") else None


def normalize(resources: Iterable[Mapping[str, Any]]) -> dict[str, PatientFacts]:
    """Facts per patient (``{"Patient/<id>": PatientFacts}``) from reference-resolved raw resources.

    Only resources Pinpoint keeps (:func:`shared.domain.relevance.classify`) are read; a resource
    whose patient cannot be told is ignored. A patient appears when any kept resource names it.
    """
    items = [r for r in resources if type(r) is dict or isinstance(r, Mapping)]
    bs_index: dict[str, Mapping[str, Any]] = {}
    meds: dict[str, Mapping[str, Any]] = {}
    for r in items:
        rtype = r.get("resourceType")
        if rtype == "BodyStructure":
            bs_index[_ref(r)] = r
        elif rtype == "Medication":
            meds[_ref(r)] = r
    builders: dict[str, _Builder] = {}

    def builder(key: str) -> _Builder:
        b = builders.get(key)
        if b is None:
            b = builders[key] = _Builder(key, bs_index, meds)
        return b

    for res in items:
        rtype = res.get("resourceType")
        if rtype in ("BodyStructure", "Medication"):
            continue
        subject = res.get("subject")  # most resources name their patient here (fast path)
        ref = subject.get("reference") if type(subject) is dict and rtype != "Patient" else None
        key = _key_of(ref) if type(ref) is str and ref else _patient_key(res)
        if key is None:
            continue
        if rtype == "Observation":
            # fast path: pain scores are most of the data
            scale = _pain_scale(res)
            if scale is not None:
                builder(key).add_observation(res, scale)
                continue
            relevance = classify(res)
            if relevance.category == "function-score":
                builder(key).add_function(res)
            elif key not in builders and relevance.kept:  # other observations only make an entry
                builder(key)
            continue
        if rtype == "QuestionnaireResponse":
            if classify(res).kept:
                builder(key).add_function(res)
            continue
        if rtype == "Procedure":
            codes = j.procedure_codes(res.get("code"))
            if not _KEPT_PROCEDURE_CODES.isdisjoint(codes) or classify(res).kept:
                builder(key).add_procedure(res, codes)
            continue
        if rtype not in _SELF_FILTERED and not classify(res).kept:
            continue
        b = builder(key)
        if rtype == "Patient":
            b.sex = res.get("gender") if isinstance(res.get("gender"), str) else None
            b.birth = j.parse_date(res.get("birthDate"))
        elif rtype == "Condition":
            cond = _condition(res)
            if cond is not None:
                b.conditions.append(cond)
        elif rtype == "MedicationAdministration":
            b.admins.append(res)
        elif rtype in ("MedicationStatement", "MedicationRequest"):
            if _status(res) in _VOID_STATUS:
                continue
            names = j.rxnorm_names(_medication_concept(res, meds) or {})
            if names & t.NSAID_WORDS:
                start = j.period_start_end(res, "effective")[0] or j.parse_datetime(res.get("authoredOn"))
                if start is None:
                    start = j.parse_datetime(res.get("dateAsserted"))
                if start is not None:
                    b.care.append(ConservativeCare(_ref(res), "medication", start.date()))
        elif rtype == "ServiceRequest":
            b.requests.append(res)
    return {key: b.build() for key, b in sorted(builders.items())}
