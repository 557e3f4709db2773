"""Clinical facts: what the rules read, independent of how FHIR encoded it.

Frozen dataclasses built by :mod:`shared.domain.normalize`. Times are timezone-aware datetimes
in the offset the source wrote (a date-only value is midnight UTC of that date, so its calendar
date is the date written; CONTRACT §6 "Time"). ``ref`` is always ``Type/id``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from shared.domain._frozen import quick_init

Side = str  # "left" | "right" | "bilateral"


@quick_init
@dataclass(frozen=True, slots=True)
class Injectate:
    """What was injected: local anaesthetic agent class, steroid and its dose (CONTRACT §4)."""

    agent: str = "unknown"  # lidocaine | bupivacaine | ropivacaine | mixed | unknown
    anaesthetics: tuple[str, ...] = ()
    steroid: str | None = None
    steroid_mg: float | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class Intervention:
    """A completed (or otherwise stated) pain procedure: a block, an ablation or an injection."""

    ref: str
    kind: str  # terminology.FACET_BLOCK, FACET_RFA, ...
    codes: tuple[str, ...]
    status: str
    diagnostic: bool
    intra_articular: bool
    region: str  # cervical | thoracic | lumbar | sacroiliac | knee | hip | other
    joints: tuple[str, ...]
    side: Side | None
    start: datetime
    end: datetime
    injectate: Injectate = field(default_factory=Injectate)
    based_on: tuple[str, ...] = ()

    @property
    def completed(self) -> bool:
        return self.status == "completed"


@quick_init
@dataclass(frozen=True, slots=True)
class PainReading:
    """One pain score on its own scale (0-10, or VAS 0-100 mm)."""

    ref: str
    scale: str  # LOINC code
    value: float
    time: datetime
    part_of: tuple[str, ...] = ()
    side: Side | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class FunctionScore:
    """One total score of a functional instrument (issue 19; :mod:`shared.domain.function`).

    ``value`` is on the instrument's kept scale (``scale``): ODI and NDI percent, PROMIS T-scores,
    PEG 0-10, KOOS JR interval score and KOOS ADL 0-100, WOMAC points 0-96. ``raw`` is the value
    as recorded when it was converted (NDI points); ``computed`` when the total was computed from
    a QuestionnaireResponse's items (``answered`` of them); ``code`` the LOINC code read (None for
    a local text encoding). ``ref`` is the Observation or QuestionnaireResponse.
    """

    ref: str
    instrument: str  # terminology.ODI, NDI, PROMIS_PI, PROMIS_PF, PEG, KOOS_JR, KOOS_ADL, WOMAC
    value: float
    scale: str  # percent | t-score | score | interval-score | points
    time: datetime
    code: str | None = None
    raw: float | None = None
    computed: bool = False
    answered: int | None = None
    unit_assumed: bool = False
    part_of: tuple[str, ...] = ()
    side: Side | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class ConditionFact:
    ref: str
    codes: tuple[str, ...]  # ICD-10-CM without dots, upper case; SNOMED as "SCT:<code>"
    onset: date | None
    active: bool
    side: Side | None
    region: str | None  # anatomical region when the code tells it


@quick_init
@dataclass(frozen=True, slots=True)
class ConservativeCare:
    ref: str
    kind: str  # "physical-therapy" | "medication"
    start: date


@quick_init
@dataclass(frozen=True, slots=True)
class Sedation:
    """IV sedation or anaesthesia: a sedative given IV (or with no route) or a 99152/0193x procedure."""

    ref: str
    start: datetime
    end: datetime
    agent: str  # midazolam | fentanyl | propofol | procedure


@quick_init
@dataclass(frozen=True, slots=True)
class SteroidExposure:
    """A corticosteroid given by a route other than oral (CONTRACT §6 "Cumulative steroid")."""

    ref: str
    time: datetime
    steroid: str
    mg: float | None  # None: dose not documented
    region: str
    joints: tuple[str, ...]
    side: Side | None


@quick_init
@dataclass(frozen=True, slots=True)
class Order:
    """A ServiceRequest under check (CONTRACT §1 "Orders to check")."""

    ref: str
    kind: str
    codes: tuple[str, ...]
    status: str
    intent: str
    diagnostic: bool
    intra_articular: bool
    region: str
    joints: tuple[str, ...]
    side: Side | None
    requested: date | None  # occurrence, else authoredOn; None: judged at --now
    injectate: Injectate = field(default_factory=Injectate)
    reason_codes: tuple[str, ...] = ()


@quick_init
@dataclass(frozen=True, slots=True)
class PatientFacts:
    patient: str  # "Patient/<id>"
    sex: str | None = None
    birth_date: date | None = None
    interventions: tuple[Intervention, ...] = ()
    readings: tuple[PainReading, ...] = ()
    function_scores: tuple[FunctionScore, ...] = ()  # time order
    conditions: tuple[ConditionFact, ...] = ()
    conservative_care: tuple[ConservativeCare, ...] = ()
    steroids: tuple[SteroidExposure, ...] = ()
    sedations: tuple[Sedation, ...] = ()
    orders: tuple[Order, ...] = ()


# Sort keys: facts in time order, then by reference. Aware datetimes compare slowly when their
# offsets differ (a chart mixes "Z" and "-05:00": each comparison asks both for their offset); the
# time since the epoch (a timedelta, exact) orders alike at a fraction of the cost.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def since_epoch(time: datetime) -> timedelta:
    """An aware datetime as time since the epoch: orders and compares as the datetime does."""
    return time - _EPOCH


def by_time_ref(fact: PainReading | SteroidExposure | FunctionScore) -> tuple[timedelta, str]:
    return fact.time - _EPOCH, fact.ref


def by_end_ref(fact: Intervention) -> tuple[timedelta, str]:
    return fact.end - _EPOCH, fact.ref


def by_start_ref(fact: Sedation) -> tuple[timedelta, str]:
    return fact.start - _EPOCH, fact.ref
