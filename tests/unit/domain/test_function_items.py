"""Scoring from items (issue 19): the KOOS full form (five subscales, the 2012 missing-item rule),
the PROMIS Pain Interference / Physical Function 4a short forms (raw sum → HealthMeasures T-score,
prorating) and WOMAC Likert 3.1 (subscale sums, mean substitution within the allowed missing
items) — from QuestionnaireResponses shaped as clinics record them (ordinalValue extensions on
the answer codings, nested groups) and from Observation panels with item components."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from shared.domain import function as fn
from shared.domain import terminology as t
from shared.domain.normalize import normalize
from shared.domain.relevance import classify
from shared.fhir.resources import validate_r4
from tests.unit.fhirfactory import LN, patient, subj

ORDINAL = "http://hl7.org/fhir/StructureDefinition/ordinalValue"


def answer(value: int) -> dict[str, Any]:
    """A coded answer with its ordinal value, as SDC / PACIO responses carry it."""
    return {
        "valueCoding": {
            "extension": [{"url": ORDINAL, "valueDecimal": value}],
            "system": LN,
            "code": f"LA-{value}",
            "display": f"option {value}",
        }
    }


def response(canonical: str, items: dict[str, int | None], rid: str = "qr1") -> dict[str, Any]:
    """A completed QuestionnaireResponse; ``None`` leaves an item unanswered (no ``answer``)."""
    out = []
    for link, value in items.items():
        item: dict[str, Any] = {"linkId": link, "text": f"item {link}"}
        if value is not None:
            item["answer"] = [answer(value)]
        out.append(item)
    qr = {
        "resourceType": "QuestionnaireResponse",
        "id": rid,
        "questionnaire": canonical,
        "status": "completed",
        "subject": subj("P-1"),
        "authored": "2025-01-20T10:00:00-05:00",
        "item": [{"linkId": "section-1", "text": "Questions", "item": out}],  # a group, as forms nest
    }
    validate_r4(qr)
    return qr


# --- KOOS ---------------------------------------------------------------------------------------------
def koos_items(**values: Sequence[int | None]) -> dict[str, int | None]:
    labels = {"pain": "P", "symptoms": "S", "adl": "A", "sport": "SP", "qol": "Q"}
    out: dict[str, int | None] = {}
    for name, (_, count, _) in fn.KOOS_SUBSCALES.items():
        row = list(values.get(name) or [1] * count)
        assert len(row) == count
        for n, v in enumerate(row, start=1):
            out[f"koos-{labels[name].lower()}{n}"] = v
    return out


def test_koos_five_subscales_100_minus_mean_times_25() -> None:
    items = koos_items(
        pain=[1] * 9,  # mean 1 → 75
        symptoms=[2] * 7,  # → 50
        adl=[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 0],  # sum 30 / 17 → 100 - 44.118 = 55.882
        sport=[4] * 5,  # → 0
        qol=[0, 0, 1, 1],  # → 87.5
    )
    (total,) = fn.questionnaire_totals(response("http://example.org/Questionnaire/KOOS", items))
    assert total.instrument == t.KOOS_ADL and total.computed and total.answered == 42
    assert total.value == pytest.approx(55.882, abs=0.001)
    assert dict(total.subscales) == pytest.approx(
        {"pain": 75.0, "symptoms": 50.0, "adl": 55.882, "sport": 0.0, "qol": 87.5}, abs=0.001
    )


def test_koos_missing_item_rule_at_least_half_of_each_subscale() -> None:
    adl_9 = [2] * 9 + [None] * 8  # 9 of 17 answered: scored
    sport_2 = [3, 3, None, None, None]  # 2 of 5: Sport/Rec not scored, the others are
    (total,) = fn.questionnaire_totals(response("KOOS", koos_items(adl=adl_9, sport=sport_2)))
    assert total.value == 50.0
    assert "sport" not in dict(total.subscales) and dict(total.subscales)["pain"] == 75.0
    adl_8 = [2] * 8 + [None] * 9  # 8 of 17: ADL (the score Pinpoint keeps) not scored
    assert fn.questionnaire_totals(response("KOOS", koos_items(adl=adl_8))) == []
    # the 1998 rule (at most two missing) would have refused 9 of 17; a value out of 0-4 refuses all
    assert fn.questionnaire_totals(response("KOOS", koos_items(adl=[5] + [1] * 16))) == []


def test_koos_jr_is_not_taken_for_the_full_koos() -> None:
    jr = response(
        "http://example.org/fhir/Questionnaire/KOOSJRQuestionnaire", {f"koosjr-{n}": 1 for n in range(1, 8)}
    )
    (total,) = fn.questionnaire_totals(jr)
    assert total.instrument == t.KOOS_JR and total.value == pytest.approx(63.578)  # raw 7, its own table


def test_koos_panel_observation_with_item_components() -> None:
    comps = [
        {"code": {"coding": [{"system": "urn:clinic:koos", "code": f"A{n}"}]}, "valueInteger": 1}
        for n in range(1, 18)
    ]
    panel = {
        "resourceType": "Observation",
        "id": "koos-panel",
        "status": "final",
        "code": {"coding": [{"system": LN, "code": "72091-2", "display": "KOOS"}]},
        "subject": subj("P-1"),
        "effectiveDateTime": "2025-01-20T10:00:00-05:00",
        "component": comps,
    }
    (total,) = fn.observation_totals(panel)
    assert (total.instrument, total.value, total.code) == (t.KOOS_ADL, 75.0, "72091-2")
    (score,) = normalize([patient("P-1"), panel])["Patient/P-1"].function_scores
    assert (score.instrument, score.value, score.computed) == (t.KOOS_ADL, 75.0, True)


# --- PROMIS 4a --------------------------------------------------------------------------------------
PI = ("PAININ9", "PAININ22", "PAININ31", "PAININ34")
PF = ("PFA11", "PFA21", "PFA23", "PFA53")
PF_4A = "http://example.org/Questionnaire/PROMIS-SF-v2.0-PhysicalFunction-4a"


def promis(
    values: list[int | None],
    ids: tuple[str, ...] = PI,
    canonical: str = "http://example.org/Questionnaire/PROMIS-SF-v1.0-PainInterference-4a",
) -> dict[str, Any]:
    return response(canonical, dict(zip(ids, values, strict=True)))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1, 1, 1, 1], 41.6),  # lowest raw sum 4
        ([2, 3, 3, 2], 58.5),  # raw 10
        ([5, 5, 5, 5], 75.6),  # raw 20
        ([3, 3, 3, 3], 61.2),  # raw 12
        ([4, 4, 3, 3], 63.8),  # raw 14
    ],
)
def test_promis_pain_interference_4a_t_score(values: list[int | None], expected: float) -> None:
    (total,) = fn.questionnaire_totals(promis(values))
    assert (total.instrument, total.value, total.computed) == (t.PROMIS_PI, expected, True)


def test_promis_not_scored_with_an_item_missing_or_out_of_range_or_a_longer_form() -> None:
    # HealthMeasures: a precise score needs at least 4 answered items (all of a 4a form); the
    # summed-score table is never applied to a partial form
    assert fn.questionnaire_totals(promis([3, 3, 3, None])) == []
    assert fn.questionnaire_totals(promis([3, None, None, None])) == []
    assert fn.questionnaire_totals(promis([0, 2, 2, 2])) == []  # PROMIS items are 1-5
    six_a = response(
        "http://example.org/Questionnaire/PROMIS-PainInterference-6a",
        {"PAININ3": 2, **dict(zip(PI, [2, 2, 2, 2], strict=True))},
    )
    assert fn.questionnaire_totals(six_a) == []  # the 4a table does not apply to the 6a form


def test_promis_physical_function_4a_t_score() -> None:
    (total,) = fn.questionnaire_totals(promis([4, 4, 3, 5], PF, PF_4A))
    assert (total.instrument, total.value) == (t.PROMIS_PF, 41.9)  # raw 16
    (low,) = fn.questionnaire_totals(promis([1, 1, 1, 1], PF, PF_4A))
    assert low.value == 22.5


def test_promis_29_response_gives_both_domains_kept_and_normalised() -> None:
    items: dict[str, int | None] = {
        **dict(zip(PF, [5, 5, 4, 4], strict=True)),  # raw 18 → 45.5
        "EDANX01": 2, "EDANX40": 2, "EDANX41": 1, "EDANX53": 1,  # anxiety: not Pinpoint's
        **dict(zip(PI, [2, 2, 2, 2], strict=True)),  # raw 8 → 55.6
        "PAININ_NRS": 6,
    }  # fmt: skip
    qr = response("http://www.healthmeasures.net/Questionnaire/PROMIS-29-v2.1", items)
    assert classify(qr).kept  # a functional instrument: kept at ingest (minimum necessary)
    totals = {x.instrument: x.value for x in fn.questionnaire_totals(qr)}
    assert totals == {t.PROMIS_PF: 45.5, t.PROMIS_PI: 55.6}
    scores = normalize([patient("P-1"), qr])["Patient/P-1"].function_scores
    assert sorted((s.instrument, s.value) for s in scores) == [(t.PROMIS_PF, 45.5), (t.PROMIS_PI, 55.6)]


def test_promis_panel_observation_with_item_components() -> None:
    panel = {
        "resourceType": "Observation",
        "id": "pi-4a",
        "status": "final",
        "code": {"text": "PROMIS Pain Interference 4a"},
        "subject": subj("P-1"),
        "effectiveDateTime": "2025-01-20T10:00:00-05:00",
        "component": [
            {"code": {"text": i}, "valueInteger": v} for i, v in zip(PI, [4, 4, 4, 4], strict=True)
        ],
    }
    (total,) = fn.observation_totals(panel)
    assert (total.instrument, total.value) == (t.PROMIS_PI, 66.6)  # raw 16


# --- WOMAC ------------------------------------------------------------------------------------------
def womac(pain: list[int | None], stiffness: list[int | None], function: list[int | None]) -> dict[str, Any]:
    items: dict[str, int | None] = {}
    for prefix, row in (("P", pain), ("S", stiffness), ("F", function)):
        items.update({f"womac-{prefix}{n}": v for n, v in enumerate(row, start=1)})
    return response("http://example.org/Questionnaire/WOMAC-3.1-Likert", items)


def test_womac_subscale_sums_and_total() -> None:
    (total,) = fn.questionnaire_totals(womac([1, 2, 1, 0, 2], [1, 1], [1] * 17))
    assert (total.instrument, total.value) == (t.WOMAC, 25.0)
    assert dict(total.subscales) == {"pain": 6.0, "stiffness": 2.0, "function": 17.0}


def test_womac_missing_items_replaced_by_the_subscale_mean_within_the_rule() -> None:
    (one_pain,) = fn.questionnaire_totals(womac([1, 2, 1, 2, None], [1, 1], [1] * 17))
    assert dict(one_pain.subscales)["pain"] == 7.5 and one_pain.value == 26.5  # mean 1.5 × 5
    (three_fn,) = fn.questionnaire_totals(womac([1] * 5, [1, 1], [2] * 14 + [None] * 3))
    assert dict(three_fn.subscales)["function"] == 34.0
    assert fn.questionnaire_totals(womac([1, 2, 1, None, None], [1, 1], [1] * 17)) == []  # 2 pain missing
    assert fn.questionnaire_totals(womac([1] * 5, [1, None], [1] * 17)) == []  # a stiffness item missing
    assert fn.questionnaire_totals(womac([1] * 5, [1, 1], [1] * 13 + [None] * 4)) == []  # 4 function
    assert fn.womac_scores({"P1": 1, "P2": 1, "P3": 1, "P4": 1, "P5": 1}) == {"pain": 5.0}


def test_a_given_total_item_is_used_as_recorded() -> None:
    qr = womac([1] * 5, [1, 1], [1] * 17)
    qr["item"].append({"linkId": "total-score", "answer": [{"valueInteger": 30}]})
    (total,) = fn.questionnaire_totals(qr)
    assert total.value == 30 and not total.computed


def test_promis_29_response_shaped_like_the_mii_pro_example() -> None:
    """As the Medizininformatik-Initiative PRO IG's example PROMIS-29 response records it: items
    grouped per domain, linkIds ``promis-pfa11`` …, answers as LOINC answer codes without an
    ordinalValue (LL1022-4 / LL1017-4)."""

    def coded(code: str, display: str) -> list[dict[str, Any]]:
        return [{"valueCoding": {"system": LN, "code": code, "display": display}}]

    pf = [
        ("promis-pfa11", "LA13920-6", "With some difficulty"),  # 3
        ("promis-pfa21", "LA13920-6", "With some difficulty"),  # 3
        ("promis-pfa23", "LA13918-0", "With a little difficulty"),  # 4
        ("promis-pfa53", "LA13920-6", "With some difficulty"),
    ]  # 3 → raw 13 → 37.9
    pi = [
        ("promis-painin9", "LA13909-9", "Somewhat"),  # 3
        ("promis-painin22", "LA13902-4", "Quite a bit"),  # 4
        ("promis-painin31", "LA13863-8", "A little bit"),  # 2
        ("promis-painin34", "LA13909-9", "Somewhat"),
    ]  # 3 → raw 12 → 61.2
    anxiety = [("promis-edanx01", "LA10066-1", "Rarely"), ("promis-edanx40", "LA10082-8", "Sometimes")]
    qr: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "id": "mii-exa-pro-promis-29-response",
        "questionnaire": "http://www.medizininformatik-initiative.de/fhir/ext/modul-pro/Questionnaire/mii-qst-pro-promis-29-de",
        "status": "completed",
        "subject": subj("P-1"),
        "authored": "2025-01-30T14:30:00Z",
        "item": [
            {"linkId": f"PROMIS-29.{name}",
             "item": [{"linkId": link, "answer": coded(code, display)} for link, code, display in rows]}
            for name, rows in (("PhysicalFunction", pf), ("Anxiety", anxiety), ("PainInterference", pi))
        ],
    }  # fmt: skip
    validate_r4(qr)
    assert classify(qr).kept
    assert {x.instrument: x.value for x in fn.questionnaire_totals(qr)} == {
        t.PROMIS_PF: 37.9,
        t.PROMIS_PI: 61.2,
    }
    # an answer code outside the instrument's list leaves the item unanswered: no score for PI
    qr["item"][2]["item"][0]["answer"] = coded("LA10066-1", "Rarely")
    assert [x.instrument for x in fn.questionnaire_totals(qr)] == [t.PROMIS_PF]
