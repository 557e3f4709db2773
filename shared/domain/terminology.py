"""Code sets Pinpoint reads (CONTRACT §4; CRITERIA §7).

Plain constants only: the normaliser and the relevance filter look codes up here, so a new
encoding is added in one place. Systems are compared exactly as FHIR writes them.
"""

from __future__ import annotations

from typing import Final

# --- systems ---------------------------------------------------------------------------------
CPT: Final = "http://www.ama-assn.org/go/cpt"
HCPCS_SYSTEMS: Final = frozenset(
    {"https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets", "urn:oid:2.16.840.1.113883.6.285"}
)
SNOMED: Final = "http://snomed.info/sct"
LOINC: Final = "http://loinc.org"
RXNORM: Final = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10CM: Final = "http://hl7.org/fhir/sid/icd-10-cm"
SPINAL_JOINT: Final = "urn:pinpoint:spinal-joint"
PINPOINT_RECOMMENDATION: Final = "urn:pinpoint:recommendation"
TARGET_BODY_STRUCTURE_EXT: Final = "http://hl7.org/fhir/StructureDefinition/procedure-targetBodyStructure"

# --- procedure kinds (CONTRACT §4 "Procedure and order codes → pathway") ----------------------
# kind: (family, anatomical region or None when it depends on the body site)
FACET_BLOCK: Final = "facet-block"
FACET_BLOCK_US: Final = "facet-block-us"
FACET_RFA: Final = "facet-rfa"
SIJ_BLOCK: Final = "sij-block"  # 27096 / G0260: diagnostic or therapeutic by injectate
SIJ_NERVE_BLOCK: Final = "sij-nerve-block"  # 64451: diagnostic
SIJ_RFA: Final = "sij-rfa"
ESI_INTERLAMINAR: Final = "esi-interlaminar"
ESI_TRANSFORAMINAL: Final = "esi-transforaminal"
GENICULAR_BLOCK: Final = "genicular-block"
GENICULAR_RFA: Final = "genicular-rfa"
JOINT_INJECTION: Final = "joint-injection"  # 20610 / 20611

PROCEDURE_KINDS: Final[dict[str, tuple[str, str | None]]] = {
    "64490": (FACET_BLOCK, "cervical"),
    "64491": (FACET_BLOCK, "cervical"),
    "64492": (FACET_BLOCK, "cervical"),
    "64493": (FACET_BLOCK, "lumbar"),
    "64494": (FACET_BLOCK, "lumbar"),
    "64495": (FACET_BLOCK, "lumbar"),
    "0213T": (FACET_BLOCK_US, "cervical"),
    "0214T": (FACET_BLOCK_US, "cervical"),
    "0215T": (FACET_BLOCK_US, "cervical"),
    "0216T": (FACET_BLOCK_US, "lumbar"),
    "0217T": (FACET_BLOCK_US, "lumbar"),
    "0218T": (FACET_BLOCK_US, "lumbar"),
    "64633": (FACET_RFA, "cervical"),
    "64634": (FACET_RFA, "cervical"),
    "64635": (FACET_RFA, "lumbar"),
    "64636": (FACET_RFA, "lumbar"),
    "27096": (SIJ_BLOCK, "sacroiliac"),
    "G0260": (SIJ_BLOCK, "sacroiliac"),
    "64451": (SIJ_NERVE_BLOCK, "sacroiliac"),
    "64625": (SIJ_RFA, "sacroiliac"),
    "62320": (ESI_INTERLAMINAR, "cervical"),
    "62321": (ESI_INTERLAMINAR, "cervical"),
    "62322": (ESI_INTERLAMINAR, "lumbar"),
    "62323": (ESI_INTERLAMINAR, "lumbar"),
    "64479": (ESI_TRANSFORAMINAL, "cervical"),
    "64480": (ESI_TRANSFORAMINAL, "cervical"),
    "64483": (ESI_TRANSFORAMINAL, "lumbar"),
    "64484": (ESI_TRANSFORAMINAL, "lumbar"),
    "64454": (GENICULAR_BLOCK, "knee"),
    "64624": (GENICULAR_RFA, "knee"),
    "20610": (JOINT_INJECTION, None),
    "20611": (JOINT_INJECTION, None),
}

# Sedation / anaesthesia procedures (CONTRACT §4 "sedation").
SEDATION_CPT: Final = frozenset({"99152", "99153", "01937", "01938", "01939", "01940", "01941", "01942"})
# Physical therapy (CONTRACT §4 "conservative care").
PHYSICAL_THERAPY_CPT: Final = frozenset({"97110", "97112", "97140", "97530", "97161", "97162", "97163"})

# SNOMED procedure codes that look like pain procedures but are not (realdata README).
NOT_PAIN_SNOMED: Final = frozenset({"18286008", "18946005"})

# --- categories --------------------------------------------------------------------------------
DIAGNOSTIC_CATEGORY: Final = "103693007"
THERAPEUTIC_CATEGORY: Final = "277132007"

# --- laterality (CONTRACT §4 "side") -------------------------------------------------------------
LATERALITY: Final[dict[str, str]] = {
    "419161000": "left",  # R4 bodysite-laterality
    "419465000": "right",
    "51440002": "bilateral",
    "7771000": "left",  # R5 bodystructure-laterality
    "24028007": "right",
}

# --- body sites ------------------------------------------------------------------------------------
SACROILIAC_JOINT: Final = "39723000"
KNEE: Final = "72696002"
HIP_SNOMED: Final = frozenset({"24136001", "29836001", "287679003"})

# --- pain scales (CONTRACT §4 "pain score") -------------------------------------------------------
NRS_0_10: Final = "72514-3"
SEVERITY_0_10: Final = "38208-5"
VAS: Final = "38214-3"
PAIN_SCALES: Final = frozenset({NRS_0_10, SEVERITY_0_10, VAS})
# Observations kept as documentation before issue 19 (PEG items, Wong-Baker faces and others);
# the functional instruments themselves are in ``FUNCTION_INSTRUMENTS`` below.
FUNCTION_SCALES: Final = frozenset(
    {"91147-9", "91148-7", "75893-8", "91145-3", "91146-1", "91351-7", "38221-8"}
)

# --- functional instruments (issue 19) ----------------------------------------------------------
# LOINC codes verified against loinc.org term pages and the CMS eCQM value sets that list them
# (CMS90 / CMS66 functional status assessment measures) and the CMS ACCESS Model / PACIO sample
# questionnaires (which carry the panel and total codes as Questionnaire.code / item.code).
# Each instrument: its panel code(s), the code(s) of its total score, and the display LOINC gives.
ODI: Final = "odi"
NDI: Final = "ndi"
PROMIS_PI: Final = "promis-pi"
PROMIS_PF: Final = "promis-pf"
PEG: Final = "peg"
KOOS_JR: Final = "koos-jr"
KOOS_ADL: Final = "koos-adl"
WOMAC: Final = "womac"

#: instrument → {LOINC total-score code: display}
FUNCTION_TOTALS: Final[dict[str, dict[str, str]]] = {
    ODI: {"97909-6": "Oswestry disability index score ODI"},  # percent 0-100
    NDI: {"82237-9": "Total score [NDI]"},  # 0-50 points (or a percent)
    PROMIS_PI: {"71961-7": "PROMIS-29 Pain interference score T-score"},
    PROMIS_PF: {"71959-1": "PROMIS-29 Physical function score T-score"},
    PEG: {"91147-9": "Mean score [PEG]"},  # 0-10
    KOOS_JR: {"82332-8": "Total interval score [KOOSJR]"},  # 0-100, 100 = no difficulty
    KOOS_ADL: {"72100-1": "Activities of daily living score [KOOS]"},  # 0-100, 100 = no difficulty
    WOMAC: {},  # no LOINC code verified: recognised by its name in the code text only
}
#: instrument → {LOINC panel code: display}. A panel carries its total as ``hasMember``, as a
#: ``component`` or (a local shortcut) as its own value.
FUNCTION_PANELS: Final[dict[str, dict[str, str]]] = {
    ODI: {"97908-8": "Oswestry Disability Index"},
    NDI: {"82226-2": "Neck Disability Index [NDI]"},
    PROMIS_PI: {
        "90973-9": "PROMIS Pain Interference Short Form 6a",  # CMS ACCESS Model section code
        "89923-7": "PROMIS Pain Interference CAT",  # CMS ACCESS Model section code
    },
    PROMIS_PF: {
        "76804-4": "PROMIS Physical Function Short Form 6b",  # CMS ACCESS Model section code
        "91722-9": "PROMIS Physical Function CAT",  # CMS ACCESS Model section code
    },
    PEG: {"91148-7": "Pain intensity, Enjoyment of life, General activity (PEG) 3 item pain scale"},
    KOOS_JR: {"82324-5": "Knee injury and osteoarthritis outcome score for joint replacement [KOOSJR]"},
    KOOS_ADL: {"72091-2": "Knee injury and Osteoarthritis Outcome Score [KOOS]"},
    WOMAC: {},
}
FUNCTION_NAMES: Final[dict[str, str]] = {
    ODI: "Oswestry Disability Index",
    NDI: "Neck Disability Index",
    PROMIS_PI: "PROMIS Pain Interference",
    PROMIS_PF: "PROMIS Physical Function",
    PEG: "PEG pain, enjoyment and general activity scale",
    KOOS_JR: "KOOS JR",
    KOOS_ADL: "KOOS activities of daily living",
    WOMAC: "WOMAC",
}
#: LOINC total / panel code → instrument
FUNCTION_CODES: Final[dict[str, str]] = {
    code: inst
    for table in (FUNCTION_TOTALS, FUNCTION_PANELS)
    for inst, codes in table.items()
    for code in codes
}
FUNCTION_TOTAL_CODES: Final = frozenset(c for codes in FUNCTION_TOTALS.values() for c in codes)
#: the three PEG items (0-10 each): average pain, interference with enjoyment of life, with general
#: activity — a PEG panel without its mean score (as Synthea writes it) is scored as their mean
PEG_ITEMS: Final = frozenset({"75893-8", "91145-3", "91146-1"})
ORDINAL_VALUE_EXT: Final = frozenset(
    {
        "http://hl7.org/fhir/StructureDefinition/ordinalValue",
        "http://hl7.org/fhir/StructureDefinition/itemWeight",
        "http://hl7.org/fhir/StructureDefinition/iso21090-CO-value",
    }
)
QR_OK_STATUS: Final = frozenset({"completed", "amended"})
LOINC_ANSWERS: Final[dict[str, int]] = {
    "LA6111-4": 0,
    "LA6112-2": 1,
    "LA6113-0": 2,
    "LA6114-8": 3,
    "LA6115-5": 4,
    "LA10137-0": 5,
    "LA10138-8": 6,
    "LA10139-6": 7,
    "LA10140-4": 8,
    "LA10141-2": 9,
    "LA13942-0": 10,
}
OBSERVATION_OK_STATUS: Final = frozenset({"final", "amended", "corrected"})

# --- medications (RxNorm ingredients) --------------------------------------------------------------
LOCAL_ANAESTHETICS: Final[dict[str, str]] = {
    "6387": "lidocaine",
    "1815": "bupivacaine",
    "35780": "ropivacaine",
}
STEROIDS: Final[dict[str, str]] = {
    "10759": "triamcinolone",
    "6902": "methylprednisolone",
    "3264": "dexamethasone",
    "1514": "betamethasone",
}
SEDATIVES: Final[dict[str, str]] = {"6960": "midazolam", "4337": "fentanyl", "8782": "propofol"}
NSAIDS: Final[dict[str, str]] = {
    "5640": "ibuprofen",
    "7258": "naproxen",
    "3355": "diclofenac",
    "41493": "meloxicam",
    "140587": "celecoxib",
    "35827": "ketorolac",
    "4258": "etodolac",
    "31448": "nabumetone",
    "5781": "indomethacin",
    "161": "acetaminophen",
}
ANAESTHETIC_NAMES: Final = frozenset(LOCAL_ANAESTHETICS.values())
STEROID_NAMES: Final = frozenset(STEROIDS.values())
SEDATIVE_NAMES: Final = frozenset(SEDATIVES.values())
#: RxNorm ingredient code → name, over the four tables above.
RXNORM_NAMES: Final[dict[str, str]] = {**LOCAL_ANAESTHETICS, **STEROIDS, **SEDATIVES, **NSAIDS}

# Names searched in free text (lower case) → ingredient name.
AGENT_WORDS: Final[dict[str, str]] = {
    "lidocaine": "lidocaine",
    "lignocaine": "lidocaine",
    "xylocaine": "lidocaine",
    "bupivacaine": "bupivacaine",
    "marcaine": "bupivacaine",
    "sensorcaine": "bupivacaine",
    "ropivacaine": "ropivacaine",
    "naropin": "ropivacaine",
}
STEROID_WORDS: Final[dict[str, str]] = {
    "triamcinolone": "triamcinolone",
    "kenalog": "triamcinolone",
    "methylprednisolone": "methylprednisolone",
    "depo-medrol": "methylprednisolone",
    "dexamethasone": "dexamethasone",
    "decadron": "dexamethasone",
    "betamethasone": "betamethasone",
    "celestone": "betamethasone",
}
SEDATIVE_WORDS: Final[dict[str, str]] = {
    "midazolam": "midazolam",
    "fentanyl": "fentanyl",
    "propofol": "propofol",
}
NSAID_WORDS: Final = frozenset(NSAIDS.values())

ORAL_ROUTE_SNOMED: Final = frozenset({"26643006"})
IV_ROUTE_SNOMED: Final = frozenset({"47625008"})

# --- diagnoses (ICD-10-CM prefixes, dots removed, upper case) --------------------------------------
RADICULAR_INDICATION: Final = ("M541", "M511", "M4806", "M961")
RADICULOPATHY: Final = ("M541", "M511")
PAIN_CONDITIONS: Final = ("M461", "M47", "M48", "M51", "M53", "M54", "M17", "M2555", "M2556", "G89")
RFA_NOT_POSSIBLE: Final = ("M960", "Z950", "Z95810", "Z9682")
POSTMENOPAUSAL: Final = ("Z780", "M80", "M81", "M858")
DIABETES: Final = ("E10", "E11")
