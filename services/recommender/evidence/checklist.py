"""The criteria checklist of one assessment: met / not met / missing data, each with its policy
citation (policy id and version, the policy key and value, and the source the policy file names
for it).

A criterion is *not met* (or *missing data*) when the engine gave a reason that belongs to it,
otherwise *met*; a reason no listed criterion owns gets a row of its own, so nothing the engine
said is hidden. Citations are the policy's own (``sources`` and ``cite`` of the policy file,
docs/policies.md): every row names the public source of its value, or of its rule when it has
no number; a row that is not met says measured vs required.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.recommender.engine import Policy
from services.recommender.engine.wording import reason_text, sentence
from shared.humanize import duration

MET, NOT_MET, MISSING, NOT_ASSESSED = "met", "not-met", "missing-data", "not-assessed"
NOT_YET = "not-yet"  # a deferral: met once time has passed (CONTRACT §6 "deferred")
STATUS_TEXT = {
    MET: "Met",
    NOT_MET: "Not met",
    MISSING: "Missing data",
    NOT_ASSESSED: "Not assessed",
    NOT_YET: "Not yet",
}
_MISSING_REASONS = frozenset({"no-baseline", "no-follow-up", "scale-mismatch"})
_FACET = ("facet-diagnostic", "facet-rfa", "facet-rfa-repeat", "facet-therapeutic")
_BLOCK_PATHWAYS = ("facet-rfa", "facet-therapeutic", "sij-therapeutic", "genicular-rfa", "sij-rfa")
_REPEAT_PATHWAYS = ("facet-therapeutic", "sij-therapeutic", "esi")


@dataclass(frozen=True, slots=True)
class Citation:
    key: str  # e.g. pathways.facet-rfa.threshold, or rules.<reason> for a rule without a number
    value: str
    source: str  # the source's short label ("LCD L38773")
    url: str = ""
    title: str = ""

    @property
    def link(self) -> str:
        """The source's web address when it has one (else "": shown as text)."""
        return self.url if self.url.startswith("https://") else ""


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    status: str
    reasons: tuple[str, ...]  # plain words of the reasons behind a status other than met
    detail: str
    citations: tuple[Citation, ...]

    @property
    def status_text(self) -> str:
        return STATUS_TEXT[self.status]


@dataclass(frozen=True, slots=True)
class _Criterion:
    label: Callable[[Policy, str], str]
    keys: tuple[str, ...]  # pathway parameters cited (and required non-null for the row to apply)
    reasons: frozenset[str]
    applies: Callable[[str], bool] = lambda _p: True
    agents: bool = False  # cite the agent durations
    repeat_only: bool = False  # shown for a repeat (a prior therapeutic procedure in the evidence)


def _months_or_days(policy: Policy, pathway: str, stem: str) -> str:
    months = policy.opt(pathway, f"{stem}_months")
    if months is not None:
        return f"{months:g} months"
    return f"{policy.opt(pathway, f'{stem}_days') or 0:g} days"


def _agents_text(policy: Policy) -> str:
    return ", ".join(f"{name} {a.minimum_minutes:g} min" for name, a in policy.agents.items())


def _c(
    label: Callable[[Policy, str], str],
    keys: tuple[str, ...],
    reasons: Sequence[str],
    applies: Callable[[str], bool] = lambda _p: True,
    agents: bool = False,
    repeat_only: bool = False,
) -> _Criterion:
    return _Criterion(label, keys, frozenset(reasons), applies, agents, repeat_only)


CRITERIA: tuple[_Criterion, ...] = (
    _c(lambda p, w: "The policy covers this procedure", ("covered",), ["not-covered-by-policy"]),
    _c(
        lambda p, w: f"Index pain for at least {_months_or_days(p, w, 'pain')}",
        ("pain_months|pain_days",),
        ["pain-duration-too-short"],
    ),
    _c(
        lambda p, w: f"Conservative care for at least {_months_or_days(p, w, 'conservative_care')}",
        ("conservative_care_months|conservative_care_days",),
        ["conservative-care-too-short"],
    ),
    _c(
        lambda p, w: "No untreated radiculopathy",
        (),
        ["untreated-radiculopathy"],
        applies=lambda w: w in _FACET,
    ),
    _c(
        lambda p, w: "A radicular indication is documented",
        (),
        ["indication-missing"],
        applies=lambda w: w == "esi",
    ),
    _c(
        lambda p, w: (
            f"{p.num(w, 'blocks_required'):g} positive diagnostic block"
            f"{'s' if p.num(w, 'blocks_required') != 1 else ''} at the same joints and side"
        ),
        ("blocks_required",),
        [
            "second-block-required",
            "not-confirmed-same-side",
            "not-confirmed-same-joint",
            "joint-not-blocked",
            "discordant-blocks",
        ],
        applies=lambda w: w in _BLOCK_PATHWAYS,
    ),
    _c(
        lambda p, w: f"Relief of at least {p.num(w, 'threshold'):g} % after each block",
        ("threshold",),
        ["relief-below-threshold", "low-baseline", *_MISSING_REASONS],
        applies=lambda w: w in _BLOCK_PATHWAYS,
    ),
    _c(
        lambda p, w: f"Relief lasts as long as the anaesthetic ({_agents_text(p)}), not far longer",
        (),
        ["duration-inconsistent-with-agent", "prolonged-response"],
        applies=lambda w: w in _BLOCK_PATHWAYS,
        agents=True,
    ),
    _c(
        lambda p, w: "Blocks done without sedation",
        (),
        ["sedation-confounded"],
        applies=lambda w: w in _BLOCK_PATHWAYS or w == "facet-diagnostic",
    ),
    _c(
        lambda p, w: f"Diagnostic blocks at least {p.num(w, 'min_interval_days'):g} days apart",
        ("min_interval_days",),
        ["diagnostic-interval-too-short"],
        applies=lambda w: w != "knee-steroid",
    ),
    _c(
        lambda p, w: f"At most {p.num(w, 'session_cap'):g} sessions per region in 12 months",
        ("session_cap",),
        ["diagnostic-session-cap", "rfa-session-cap", "therapeutic-session-cap", "esi-session-cap"],
    ),
    _c(
        lambda p, w: f"At most {p.num(w, 'max_joints_per_side'):g} joints per side in one session",
        ("max_joints_per_side",),
        ["levels-exceed-session-limit"],
    ),
    _c(
        lambda p, w: (
            f"At most {p.num(w, 'max_levels_transforaminal'):g} transforaminal or "
            f"{p.num(w, 'max_levels_interlaminar'):g} interlaminar level per injection"
        ),
        ("max_levels_transforaminal", "max_levels_interlaminar"),
        ["levels-exceed-session-limit"],
    ),
    _c(
        lambda p, w: (
            f"The previous ablation gave at least {p.num(w, 'threshold'):g} % relief for "
            f"{p.num(w, 'relief_months'):g} months"
        ),
        ("threshold", "relief_months"),
        ["prior-relief-insufficient", "relief-period-not-ended", *_MISSING_REASONS],
        applies=lambda w: w == "facet-rfa-repeat",
    ),
    _c(
        lambda p, w: (
            f"New diagnostic blocks after {p.num(w, 'repeat_diagnostics_after_years'):g} years "
            "when the pain source is in question"
        ),
        ("repeat_diagnostics_after_years",),
        ["repeat-diagnostics-required"],
    ),
    _c(
        lambda p, w: (
            f"A repeat needs at least {p.num(w, 'repeat_threshold'):g} % relief for "
            f"{p.num(w, 'repeat_months'):g} months from the previous one"
        ),
        ("repeat_threshold", "repeat_months"),
        ["prior-relief-insufficient", "relief-period-not-ended"],
        applies=lambda w: w in _REPEAT_PATHWAYS,
        repeat_only=True,
    ),
    _c(
        lambda p, w: "A reason ablation is not possible is documented",
        (),
        ["rfa-alternative-undocumented"],
        applies=lambda w: w == "facet-therapeutic",
    ),
    _c(
        lambda p, w: "The level was not ablated successfully before",
        (),
        ["level-previously-ablated"],
        applies=lambda w: w == "facet-diagnostic",
    ),
    _c(
        lambda p, w: (
            f"At most {p.num(w, 'max_injections'):g} injections in {p.num(w, 'window_days'):g} days, "
            f"at least {p.num(w, 'min_interval_days'):g} days apart"
        ),
        ("max_injections", "window_days"),
        ["steroid-frequency"],
        applies=lambda w: w == "knee-steroid",
    ),
)


# --- citations from the policy ------------------------------------------------------------------
def _cited(policy: Policy, key: str, value: str) -> Citation:
    source = policy.source(key)
    if source is None:
        return Citation(key, value, "")
    return Citation(key, value, source.label, source.url, source.title)


def _citation(policy: Policy, pathway: str, key: str) -> Citation:
    dotted = f"pathways.{pathway}.{key}"
    value = policy.pathways.get(pathway, {}).get(key)
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else f"{value:g}"
    return _cited(policy, dotted, text)


def _rule_citation(policy: Policy, reasons: frozenset[str]) -> Citation | None:
    """A criterion without a number cites the source its rule follows (``rules.<reason>``)."""
    for reason in sorted(reasons):
        if policy.source_id(f"rules.{reason}"):
            return _cited(policy, f"rules.{reason}", "rule")
    return None


def _present(policy: Policy, pathway: str, key: str) -> str | None:
    """The first alternative of ``a|b`` that the policy sets (non-null), else None."""
    for alt in key.split("|"):
        if policy.pathways.get(pathway, {}).get(alt) is not None:
            return alt
    return None


# --- evidence details ----------------------------------------------------------------------------
def _block_details(
    evidence: Sequence[Mapping[str, Any]], policy: Policy, kind: str, threshold: float | None
) -> str:
    parts = []
    for i, e in enumerate(evidence, 1):
        peak = e.get("peakReliefPercent")
        if kind == "relief":
            parts.append(f"block {i}: {'no reading' if peak is None else f'{peak:g} %'}")
        elif peak is None or (threshold is not None and peak < threshold):
            parts.append(f"block {i}: never reached the threshold")
        else:
            minutes = e.get("sustainedMinutes")
            need = policy.agent(str(e.get("agent") or "unknown")).minimum_minutes
            shown = duration(minutes, "no time")
            agent = str(e.get("agent") or "anaesthetic not named")
            parts.append(f"block {i} ({agent}): {shown} (needs {duration(need)})")
    return sentence("; ".join(parts))


def checklist(
    assessment: Mapping[str, Any], policy: Policy, policy_setting: str, *, repeat: bool = False
) -> tuple[Row, ...]:
    """The rows for one §3 assessment (or order check) under ``policy``; ``repeat`` when the
    evidence holds a prior therapeutic or definitive procedure (the repeat criteria apply)."""
    pathway = str(assessment["pathway"])
    reasons = [str(r) for r in assessment.get("reasons") or []]
    evidence = list(assessment.get("evidence") or [])
    measured = {
        str(d.get("code")): str(d.get("text") or "")
        for d in assessment.get("reasonDetails") or []
        if isinstance(d, Mapping)
    }
    not_covered = assessment.get("verdict") == "not-covered"
    deferred = assessment.get("verdict") == "deferred"  # every clinical criterion met; time remains
    owned: set[str] = set()
    rows: list[Row] = []
    for crit in CRITERIA:
        if not crit.applies(pathway):
            continue
        keys = [_present(policy, pathway, k) for k in crit.keys]
        if any(k is None for k in keys) and crit.keys != ("covered",):
            continue
        if crit.keys == ("covered",):
            keys = ["covered"]
        mine = [r for r in reasons if r in crit.reasons]
        if crit.repeat_only and not repeat and not mine:
            continue
        owned.update(mine)
        if mine:
            status = MISSING if all(r in _MISSING_REASONS for r in mine) else NOT_MET
            if deferred and status == NOT_MET:
                status = NOT_YET
        elif not_covered and crit.keys != ("covered",):
            status = NOT_ASSESSED
        else:
            status = MET
        citations = [_citation(policy, pathway, k) for k in keys if k is not None]
        if not citations:
            rule = _rule_citation(policy, crit.reasons)
            citations = [rule] if rule else []
        label = crit.label(policy, pathway)
        if crit.agents:
            used = sorted({str(e.get("agent")) for e in evidence if e.get("agent") in policy.agents})
            names = used or list(policy.agents)
            label = (
                "Relief lasts at least the anaesthetic's minimum ("
                + ", ".join(f"{n} {policy.agents[n].minimum_minutes:g} min" for n in names)
                + ") and not far longer"
            )
            citations += [
                _cited(policy, f"agents.{n}.minimum_minutes", f"{policy.agents[n].minimum_minutes:g}")
                for n in names
            ]
        detail = ""
        threshold = policy.opt(pathway, "threshold")
        if evidence and "relief-below-threshold" in crit.reasons:
            detail = _block_details(evidence, policy, "relief", threshold)
        elif evidence and crit.agents:
            detail = _block_details(evidence, policy, "duration", threshold)
        elif "blocks_required" in keys:
            required = int(policy.num(pathway, "blocks_required"))
            positives = sum(1 for e in evidence if e.get("positive"))
            detail = f"{positives} of the {required} required {'is' if positives == 1 else 'are'} positive"
            if positives < required and status == MET:  # the failing block's reason is on its row
                status = MISSING if assessment.get("verdict") == "not-evaluable" else NOT_MET
        said = [measured[r] for r in mine if measured.get(r)]
        if said:  # measured vs required, as the engine computed it, before the per-block figures
            detail = sentence("; ".join(said)) + (f". {detail}" if detail else "")
        rows.append(
            Row(
                label,
                status,
                tuple(sentence(reason_text(r)) for r in mine),
                detail,
                tuple(citations),
            )
        )
    for reason in reasons:
        if reason not in owned:
            owned.add(reason)
            status = MISSING if reason in _MISSING_REASONS else NOT_MET
            rule = _rule_citation(policy, frozenset({reason}))
            rows.append(
                Row(
                    sentence(reason_text(reason)),
                    status,
                    (),
                    sentence(measured.get(reason, "")),
                    (rule,) if rule else (),
                )
            )
    return tuple(rows)
