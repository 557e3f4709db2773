"""Results of the engine and how findings combine into a verdict (CONTRACT §3, §6 "Verdicts")."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from shared.domain._frozen import quick_init

#: Every pathway the engine judges (a policy's ``pathways`` keys).
PATHWAYS = (
    "facet-diagnostic",
    "facet-rfa",
    "facet-rfa-repeat",
    "facet-therapeutic",
    "sij-diagnostic",
    "sij-therapeutic",
    "sij-rfa",
    "esi",
    "genicular-rfa",
    "knee-steroid",
)

SUPPORTED = "supported"
PARTIAL = "partially-supported"
NOT_MET = "not-met"
NOT_EVALUABLE = "not-evaluable"
NEEDS_REVIEW = "needs-review"
NOT_COVERED = "not-covered"
DEFERRED = "deferred"

# CONTRACT §6: not-covered > not-met > not-evaluable > needs-review > deferred > supported
PRECEDENCE = (NOT_COVERED, NOT_MET, NOT_EVALUABLE, NEEDS_REVIEW, DEFERRED, SUPPORTED)
_RANK = {v: i for i, v in enumerate(PRECEDENCE)}


@quick_init
@dataclass(frozen=True, slots=True)
class Detail:
    """The numbers behind one reason: what was measured, what the policy requires, and the policy
    key whose citation is the source (``rules.<reason>`` for a criterion without a number).
    ``text`` says it in a line: ``71.4 % relief < 80 % required``."""

    code: str
    measured: Any
    required: Any
    unit: str
    policy_key: str
    text: str
    #: the dates counted toward a limit (sessions, injections), oldest first
    counted: tuple[date, ...] = ()
    #: the first date the criterion is met again (a limit or a waiting time), if it has one
    earliest: date | None = None
    #: the numbers in a few words, for a card's summary ("71.4 % relief < 80 %")
    short: str = ""

    def as_json(self, source: str | None, label: str | None = None) -> dict[str, Any]:
        out = {
            "code": self.code,
            "measured": self.measured,
            "required": self.required,
            "unit": self.unit,
            "policyKey": self.policy_key,
            "source": source,
            "sourceLabel": label,
            "text": self.text,
        }
        out["summary"] = self.short or self.text
        if self.counted:
            out["counted"] = [d.isoformat() for d in self.counted]
        if self.earliest is not None:
            out["earliest"] = self.earliest.isoformat()
        return out


@quick_init
@dataclass(frozen=True, slots=True)
class Finding:
    """One criterion that is not (yet) met: the verdict it forces, its reason, for deferrals the
    date it stops applying, and the numbers behind it."""

    verdict: str
    reason: str
    until: date | None = None
    detail: Detail | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class Target:
    region: str
    joints: tuple[str, ...]
    side: str

    def as_json(self) -> dict[str, Any]:
        return {"region": self.region, "joints": list(self.joints), "side": self.side}


@quick_init
@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: str
    reasons: tuple[str, ...]
    earliest: date | None
    details: tuple[Detail, ...] = ()


def details_for(reasons: Iterable[str], findings: Iterable[Finding]) -> tuple[Detail, ...]:
    """One detail per reason (in the reasons' order): the first finding of that reason that has
    one — the binding one for a deferral, as the findings are ordered."""
    found: dict[str, Detail] = {}
    for f in findings:
        if f.detail is not None and f.reason not in found:
            found[f.reason] = f.detail
    return tuple(found[r] for r in reasons if r in found)


def combine(findings: Iterable[Finding]) -> Outcome:
    """Precedence of CONTRACT §6; the winning verdict's reasons first (for a deferral the binding,
    latest date first), then every other reason that applies; ``earliest`` = the last deferral."""
    items = list(findings)
    if not items:
        return Outcome(SUPPORTED, (), None)
    ranks = [_RANK[f.verdict] for f in items]
    best = min(ranks)
    verdict = PRECEDENCE[best]
    if ranks.count(best) == len(ranks):  # one verdict (most outcomes): the findings as they are
        ordered = items
        winners = items
    else:
        winners = [f for f in items if f.verdict == verdict]
        rest = sorted((f for f in items if f.verdict != verdict), key=lambda f: _RANK[f.verdict])
        ordered = winners + rest
    earliest = None
    if verdict == DEFERRED:
        winners = sorted(winners, key=lambda f: f.until or date.min, reverse=True)
        ordered = winners + ordered[len(winners) :]
        dates = [f.until for f in winners if f.until]
        earliest = max(dates) if dates else None
    # each reason once, in order; its detail: the first finding of that reason that has one
    reasons: dict[str, None] = {}
    found: dict[str, Detail] = {}
    for f in ordered:
        reason = f.reason
        if reason not in reasons:
            reasons[reason] = None
        if f.detail is not None and reason not in found:
            found[reason] = f.detail
    details = tuple(found[r] for r in reasons if r in found)
    return Outcome(verdict, tuple(reasons), earliest, details)


@quick_init
@dataclass(frozen=True, slots=True)
class Assessment:
    pathway: str
    target: Target
    verdict: str
    reasons: tuple[str, ...]
    earliest_date: date | None = None
    next_step: Mapping[str, str] | None = None
    evidence: tuple[Mapping[str, Any], ...] = ()
    documentation: tuple[Mapping[str, str], ...] = ()
    details: tuple[Detail, ...] = ()
    #: standing alerts the next step must be weighed against (a steroid step beside the
    #: cumulative-steroid alert)
    cautions: tuple[Detail, ...] = ()
    #: where the next step goes within the policy's per-session limit (empty: the whole target)
    step_targets: tuple[Target, ...] = ()
    #: the limit that cut the next step down, with its numbers
    step_limit: Detail | None = None

    def __post_init__(self) -> None:
        if self.next_step and not self.step_targets:
            object.__setattr__(self, "step_targets", (self.target,))


@quick_init
@dataclass(frozen=True, slots=True)
class OrderCheck:
    order: str
    pathway: str
    verdict: str
    reasons: tuple[str, ...]
    earliest_date: date | None = None
    supported_targets: tuple[Target, ...] = ()
    evidence: tuple[Mapping[str, Any], ...] = ()
    suggestion: Mapping[str, str] | None = None
    documentation: tuple[Mapping[str, str], ...] = ()
    details: tuple[Detail, ...] = ()
    cautions: tuple[Detail, ...] = ()


@quick_init
@dataclass(frozen=True, slots=True)
class Alert:
    code: str
    severity: str
    text: str
    evidence: tuple[str, ...] = ()
    detail: Detail | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class PatientResult:
    patient: str
    assessments: tuple[Assessment, ...] = ()
    order_checks: tuple[OrderCheck, ...] = ()
    alerts: tuple[Alert, ...] = field(default_factory=tuple)
    outcomes: tuple[Mapping[str, Any], ...] = ()


def dedupe_evidence(items: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any], ...]:
    seen: dict[str, Mapping[str, Any]] = {}
    for item in items:
        seen.setdefault(str(item.get("procedure")), item)
    return tuple(sorted(seen.values(), key=lambda e: (str(e.get("performed")), str(e.get("procedure")))))
