"""Small builders of raw FHIR R4 JSON for the engine and normaliser tests (Base-L by default:
67-year-old woman, right axial low-back pain M47.816 since 2024-09-01, PT and naproxen)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

CPT = "http://www.ama-assn.org/go/cpt"
SCT = "http://snomed.info/sct"
LN = "http://loinc.org"
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SJ = "urn:pinpoint:spinal-joint"
SIDE = {"right": "24028007", "left": "7771000", "bilateral": "51440002"}
SIDE_R4 = {"right": "419465000", "left": "419161000", "bilateral": "51440002"}
RXCODE = {"lidocaine": "6387", "bupivacaine": "1815", "ropivacaine": "35780", "triamcinolone": "10759"}
TZ = "-05:00"


def ts(value: str) -> str:
    """'2025-02-03 09:00' → ISO with the local offset."""
    return value.replace(" ", "T") + ":00" + TZ


def at(value: str, minutes: float = 0) -> str:
    dt = datetime.fromisoformat(ts(value)) + timedelta(minutes=minutes)
    return dt.isoformat()


def patient(pid: str = "P-1", gender: str = "female", birth: str = "1957-06-12") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": gender, "birthDate": birth}


def subj(pid: str) -> dict[str, str]:
    return {"reference": f"Patient/{pid}"}


def condition(
    cid: str, icd: str, onset: str, side: str | None = "right", pid: str = "P-1", status: str = "active"
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {"coding": [{"code": status}]},
        "code": {"coding": [{"system": ICD, "code": icd}]},
        "subject": subj(pid),
        "onsetDateTime": onset,
    }
    if side:
        res["bodySite"] = [{"coding": [{"system": SCT, "code": SIDE[side]}]}]
    return res


def pt(pid: str = "P-1", day: str = "2024-10-01", rid: str | None = None) -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": rid or f"pt-{day}",
        "status": "completed",
        "code": {"coding": [{"system": CPT, "code": "97110"}]},
        "subject": subj(pid),
        "performedDateTime": day,
    }


def base_l(
    pid: str = "P-1", onset: str = "2024-09-01T09:00:00-05:00", side: str = "right"
) -> list[dict[str, Any]]:
    return [
        patient(pid),
        condition(f"{pid}-cond", "M47.816", onset, side, pid),
        pt(pid, "2024-10-01", f"{pid}-pt"),
    ]


def block(
    bid: str,
    start: str,
    *,
    pid: str = "P-1",
    joints: tuple[str, ...] = ("L4-L5", "L5-S1"),
    side: str | None = "right",
    agent: str | None = "lidocaine",
    codes: tuple[str, ...] = ("64493", "64494"),
    minutes: int = 20,
    category: str | None = "103693007",
    text: str = "Lumbar medial branch block",
    steroid: str | None = None,
    status: str = "completed",
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Procedure",
        "id": bid,
        "status": status,
        "code": {"coding": [{"system": CPT, "code": c} for c in codes], "text": text},
        "subject": subj(pid),
        "performedPeriod": {"start": ts(start), "end": at(start, minutes)},
        "bodySite": [
            {"coding": [{"system": SJ, "code": j}] + ([{"system": SCT, "code": SIDE[side]}] if side else [])}
            for j in joints
        ],
    }
    if category:
        res["category"] = {"coding": [{"system": SCT, "code": category}]}
    used = []
    if agent:
        used.append({"coding": [{"system": RX, "code": RXCODE[agent]}], "text": agent})
    if steroid:
        used.append({"text": steroid})
    if used:
        res["usedCode"] = used
    return res


def reading(
    oid: str,
    when: str,
    value: float,
    *,
    pid: str = "P-1",
    part_of: str | None = None,
    scale: str = "72514-3",
    side: str | None = None,
    status: str = "final",
    minutes: float = 0,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "code": {"coding": [{"system": LN, "code": scale}]},
        "subject": subj(pid),
        "effectiveDateTime": at(when, minutes),
        "valueInteger": value,
    }
    if part_of:
        res["partOf"] = [{"reference": f"Procedure/{part_of}"}]
    if side:
        res["bodySite"] = {"coding": [{"system": SCT, "code": SIDE[side]}]}
    return res


def scored_block(
    bid: str,
    start: str,
    baseline: float,
    posts: list[tuple[float, float]],
    **kw: Any,
) -> list[dict[str, Any]]:
    """A block with a baseline 15 min before its start and post readings (minutes after the end, value)."""
    pid = kw.get("pid", "P-1")
    minutes = kw.get("minutes", 20)
    out = [block(bid, start, **kw), reading(f"{bid}-pre", start, baseline, pid=pid, part_of=bid, minutes=-15)]
    for i, (after, value) in enumerate(posts):
        out.append(reading(f"{bid}-post{i}", start, value, pid=pid, part_of=bid, minutes=minutes + after))
    return out


# V2's pair: lidocaine 85.7 % for 60 min, bupivacaine 100 % for 240 min
def v2_pair(
    pid: str = "P-1", side: str = "right", joints: tuple[str, ...] = ("L4-L5", "L5-S1")
) -> list[dict[str, Any]]:
    return scored_block(
        "mbb-1",
        "2025-02-03 09:00",
        7,
        [(15, 1), (60, 1), (120, 2), (240, 6)],
        pid=pid,
        side=side,
        joints=joints,
    ) + scored_block(
        "mbb-2",
        "2025-02-24 09:00",
        7,
        [(20, 0), (120, 1), (240, 1), (360, 3)],
        pid=pid,
        side=side,
        joints=joints,
        agent="bupivacaine",
    )


def order(
    oid: str,
    codes: tuple[str, ...],
    when: str,
    *,
    pid: str = "P-1",
    joints: tuple[str, ...] = ("L4-L5", "L5-S1"),
    side: str | None = "right",
    category: str | None = None,
    detail: str | None = None,
    site: str | None = None,
    status: str = "draft",
    reason: str | None = None,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": oid,
        "status": status,
        "intent": "order",
        "code": {"coding": [{"system": CPT, "code": c} for c in codes]},
        "subject": subj(pid),
        "occurrenceDateTime": when,
    }
    body: list[dict[str, Any]]
    lat = [{"system": SCT, "code": SIDE[side]}] if side else []
    if site:
        body = [{"coding": [{"system": SCT, "code": site}, *lat]}]
    else:
        body = [{"coding": [{"system": SJ, "code": j}, *lat]} for j in joints]
    res["bodySite"] = body
    if category:
        res["category"] = [{"coding": [{"system": SCT, "code": category}]}]
    if detail:
        res["orderDetail"] = [{"text": detail}]
    if reason:
        res["reasonCode"] = [{"coding": [{"system": ICD, "code": reason}]}]
    return res


def rfa_order(when: str = "2025-03-17", **kw: Any) -> dict[str, Any]:
    return order("req-rfa", ("64635", "64636"), when, **kw)
