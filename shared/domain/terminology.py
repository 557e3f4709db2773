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
# Observations kept as documentation (function, provocation, PEG); they never change a verdict.
FUNCTION_SCALES: Final = frozenset(
    {"91147-9", "91148-7", "75893-8", "91145-3", "91146-1", "91351-7", "38221-8"}
)
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
