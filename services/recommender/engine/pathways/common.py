"""Rules shared by the pathways: block histories, per-joint results and how they combine."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from services.recommender.engine import why
from services.recommender.engine.functional import MET, long_term_function
from services.recommender.engine.model import (
    NEEDS_REVIEW,
    NOT_COVERED,
    NOT_EVALUABLE,
    NOT_MET,
    PARTIAL,
    SUPPORTED,
    Detail,
    Finding,
    Outcome,
    Target,
    combine,
    details_for,
)
from services.recommender.engine.policy import Policy
from services.recommender.engine.relief import (
    INVALID,
    NEGATIVE,
    POSITIVE,
    UNEVALUABLE,
    BlockResult,
    PatientContext,
    expand_sides,
    index_sides,
)
from services.recommender.engine.sessions import regions_of_group
from services.recommender.engine.wording import pathway_text
from shared.domain.facts import Intervention
from shared.domain.normalize import joint_order
from shared.humanize import day, number


@dataclass(slots=True)
class JointEval:
    """The findings for one (joint, side) and the evidence they used."""

    joint: str
    side: str
    findings: list[Finding] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    pathway: str = ""

    def add(self, finding: Finding | None) -> None:
        if finding is not None:
            self.findings.append(finding)

    @property
    def outcome(self) -> Outcome:
        return combine(self.findings)


def sides_of(ctx: PatientContext, iv_side: str | None, region: str) -> tuple[str, ...]:
    key = (iv_side, region)
    cached = ctx.sides_cache.get(key)
    if cached is None:
        cached = ctx.sides_cache[key] = expand_sides(
            iv_side, index_sides(ctx.facts, regions_of_group(region))
        )
    return cached


def order_sides(ctx: PatientContext, side: str | None, region: str) -> tuple[str, ...]:
    """Sides an order asks for: as written (bilateral = both); unstated → the index pain's side(s)."""
    if side == "bilateral":
        return ("left", "right")
    if side in ("left", "right"):
        return (side,)
    return sides_of(ctx, None, region)


def blocks_at(
    ctx: PatientContext, accept: Callable[[Intervention], bool], joint: str, side: str, on: date
) -> list[Intervention]:
    """Completed procedures accepted by ``accept`` that covered (joint, side) on or before ``on``."""
    return [
        iv
        for iv in ctx.completed
        if accept(iv)
        and joint in iv.joints
        and iv.end.date() <= on
        and side in sides_of(ctx, iv.side, iv.region)
    ]


def judge_history(
    results: Sequence[BlockResult], needed: int, pathway: str, policy: Policy
) -> tuple[list[Finding], list[BlockResult]]:
    """CONTRACT §6 "Blocks toward a procedure": confirmed when the N most recent interpretable
    blocks are all positive. Otherwise, in order: one of those N negative → ``not-met`` with its
    reason; the most recent block invalid → ``not-met``, ``sedation-confounded``; unevaluable →
    ``not-evaluable`` with its reason; else ``not-met``, ``second-block-required`` (the caller may
    refine it to ``not-confirmed-same-side`` / ``-same-joint``). Returns (findings, confirming)."""
    interpretable = [r for r in results if r.interpretable]
    recent = interpretable[-needed:] if needed > 0 else []
    if needed <= 0 or (len(recent) == needed and all(r.status == POSITIVE for r in recent)):
        return [], recent
    negatives = [r for r in recent if r.status == NEGATIVE]
    if negatives:
        bad = negatives[-1]
        return [Finding(NOT_MET, bad.reasons[0], None, why.block(bad, bad.reasons[0], pathway, policy))], []
    last = results[-1] if results else None
    if last is not None and last.status == INVALID:
        detail = why.block(last, "sedation-confounded", pathway, policy)
        return [Finding(NOT_MET, "sedation-confounded", None, detail)], []
    if last is not None and last.status == UNEVALUABLE:
        return [
            Finding(NOT_EVALUABLE, last.reasons[0], None, why.block(last, last.reasons[0], pathway, policy))
        ], []
    positive = len([r for r in recent if r.status == POSITIVE])
    detail = why.blocks_required("second-block-required", positive, needed, pathway)
    return [Finding(NOT_MET, "second-block-required", None, detail)], []


def confirming_flags(
    confirming: Sequence[BlockResult], min_interval_days: float | None, pathway: str, policy: Policy
) -> list[Finding]:
    """Low baseline and prolonged response cap the verdict at ``needs-review``; so does a second
    block under ``min_interval_days`` after the first (CONTRACT §6)."""
    out: list[Finding] = []
    low = [r for r in confirming if r.low_baseline]
    if low:
        out.append(
            Finding(NEEDS_REVIEW, "low-baseline", None, why.block(low[-1], "low-baseline", pathway, policy))
        )
    long = [r for r in confirming if r.prolonged]
    if long:
        detail = why.block(long[-1], "prolonged-response", pathway, policy)
        out.append(Finding(NEEDS_REVIEW, "prolonged-response", None, detail))
    if min_interval_days is not None:
        dates = sorted(r.block.end.date() for r in confirming)
        gaps = [(b - a).days for a, b in itertools.pairwise(dates)]
        short = [g for g in gaps if g < min_interval_days]
        if short:
            detail = why.interval(
                "diagnostic-interval-too-short",
                min(short),
                min_interval_days,
                f"pathways.{pathway}.min_interval_days",
            )
            out.append(Finding(NEEDS_REVIEW, "diagnostic-interval-too-short", None, detail))
    return out


def caudal_first(joints: Iterable[str]) -> list[str]:
    return sorted(set(joints), key=joint_order, reverse=True)


def cranial_first(joints: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(joints), key=joint_order))


def merge_sides(by_side: dict[str, tuple[str, ...]], region: str) -> list[Target]:
    """Targets from joints per side; the same joints on both sides become one bilateral target."""
    left, right = by_side.get("left"), by_side.get("right")
    if left and right and set(left) == set(right):
        return [Target(region, cranial_first(left), "bilateral")]
    return [Target(region, cranial_first(j), s) for s, j in sorted(by_side.items()) if j]


@dataclass(frozen=True, slots=True)
class Combined:
    verdict: str
    reasons: tuple[str, ...]
    earliest: date | None
    supported: tuple[Target, ...]
    details: tuple[Detail, ...] = ()


def combine_order(
    evals: Sequence[JointEval], region: str, max_per_side: float | None, limit_key: str = ""
) -> Combined:
    combined = _combine_order(evals, region, max_per_side)
    findings = [f for e in evals for f in e.findings]
    if "levels-exceed-session-limit" in combined.reasons and max_per_side is not None:
        per_side: dict[str, set[str]] = defaultdict(set)
        for e in evals:
            per_side[e.side].add(e.joint)
        count = max(len(j) for j in per_side.values())
        findings.append(
            Finding(NOT_MET, "levels-exceed-session-limit", None, why.levels(count, max_per_side, limit_key))
        )
    winners = [f for f in findings if f.verdict == combined.verdict]
    ordered = sorted(winners, key=lambda f: -(f.until or date.min).toordinal()) + findings
    return Combined(
        combined.verdict,
        combined.reasons,
        combined.earliest,
        combined.supported,
        details_for(combined.reasons, ordered),
    )


def _combine_order(evals: Sequence[JointEval], region: str, max_per_side: float | None) -> Combined:
    """CONTRACT §6 "Verdicts": per ordered joint and side, then combined. All the same → that
    verdict; some supported → ``partially-supported`` with the supported ones (at most
    ``max_per_side`` per side, caudal first) and the others' reasons. More joints on one side than
    the limit adds ``levels-exceed-session-limit`` (first when at least 2 of them are confirmed)
    and makes the order at best partially supported."""
    outcomes = [(e, e.outcome) for e in evals]
    per_side: dict[str, list[str]] = defaultdict(list)
    for e in evals:
        per_side[e.side].append(e.joint)
    over = max_per_side is not None and any(len(set(j)) > max_per_side for j in per_side.values())
    supported_by_side: dict[str, list[str]] = defaultdict(list)
    for e, o in outcomes:
        if o.verdict == SUPPORTED:
            supported_by_side[e.side].append(e.joint)
    limited = {
        s: tuple(caudal_first(j)[: int(max_per_side)] if max_per_side is not None else caudal_first(j))
        for s, j in supported_by_side.items()
    }
    supported_targets = tuple(merge_sides(limited, region)) if limited else ()
    n_supported = max((len(set(j)) for j in supported_by_side.values()), default=0)
    verdicts = {o.verdict for _, o in outcomes}
    if not over and len(verdicts) == 1:
        merged = combine(f for e, _ in outcomes for f in e.findings)
        return Combined(merged.verdict, merged.reasons, merged.earliest, supported_targets)
    others = [f for e, o in outcomes if o.verdict != SUPPORTED for f in e.findings]
    if n_supported:
        rest = combine(others)
        reasons = list(rest.reasons)
        if over:
            reasons.insert(0 if n_supported >= 2 else len(reasons), "levels-exceed-session-limit")
        return Combined(PARTIAL, tuple(dict.fromkeys(reasons)), None, supported_targets)
    merged = combine(f for e, _ in outcomes for f in e.findings)
    reasons = list(merged.reasons)
    if over:
        reasons.append("levels-exceed-session-limit")
    return Combined(merged.verdict, tuple(dict.fromkeys(reasons)), merged.earliest, ())


def group_assessments(
    evals: Sequence[JointEval], region: str
) -> list[tuple[str, Target, Outcome, list[dict[str, Any]]]]:
    """CONTRACT §6 "Which assessments": joints of one region × side with different verdicts get
    one assessment per verdict, each listing its joints; equal results on both sides → bilateral."""
    groups: dict[tuple[str, str, str], list[JointEval]] = defaultdict(list)
    for e in evals:
        groups[(e.pathway, e.outcome.verdict, e.side)].append(e)
    by_key: dict[tuple[str, str], dict[str, list[JointEval]]] = defaultdict(dict)
    for (pathway, verdict, side), items in groups.items():
        by_key[(pathway, verdict)][side] = items
    out: list[tuple[str, Target, Outcome, list[dict[str, Any]]]] = []
    for (pathway, _verdict), sides in sorted(by_key.items()):
        joint_sets = {s: cranial_first(e.joint for e in items) for s, items in sides.items()}
        for target in merge_sides(joint_sets, region):
            members = [e for s, items in sides.items() for e in items if target.side in (s, "bilateral")]
            outcome = combine(f for e in members for f in e.findings)
            evidence = [ev for e in members for ev in e.evidence]
            out.append((pathway, target, outcome, evidence))
    return out


def negative_reason_sources(statuses: Iterable[str]) -> bool:
    return any(s == NEGATIVE for s in statuses)


def covered_finding(ctx: PatientContext, pathway: str, e: JointEval) -> None:
    if not ctx.policy.covered(pathway):
        e.add(Finding(NOT_COVERED, "not-covered-by-policy", None, not_covered_detail(pathway)))


def not_covered_detail(pathway: str, key: str = "covered") -> Detail:
    return why.not_covered(pathway_text(pathway), f"pathways.{pathway}.{key}")


def repeat_finding(
    ctx: PatientContext, pathway: str, prior: Intervention, side: str | None, e: JointEval
) -> None:
    """A repeat needs >= ``repeat_threshold`` % for ``repeat_months`` on the same scale after the
    prior one (SIJ [S18], ESI [S19]; CRITERIA §9.2 long-term relief), in pain or in function."""
    p = ctx.policy
    long_term_finding(
        ctx,
        prior,
        p.num(pathway, "repeat_threshold"),
        int(p.num(pathway, "repeat_months")),
        side,
        e,
        (f"pathways.{pathway}.repeat_threshold", f"pathways.{pathway}.repeat_months"),
        pathway=pathway,
    )


def long_term_finding(
    ctx: PatientContext,
    prior: Intervention,
    threshold: float,
    months: int,
    side: str | None,
    e: JointEval,
    keys: tuple[str, str] | None = None,
    *,
    pathway: str | None = None,
) -> None:
    """The prior procedure's relief: >= ``threshold`` % sustained for ``months`` on the same scale
    (CRITERIA §9.2); a shortfall is ``not-met``, missing data ``not-evaluable``, a period still
    running ``deferred`` to its end.

    Where the ``pathway`` accepts function (its ``function_threshold``; issue 19), a functional
    improvement on the same instrument as baseline sustained for the period meets it too; when the
    policy marks the pathway ``function_only_review`` (repeat RFA: the LCD gives no percentage for
    function), a repeat carried by function alone is ``needs-review``,
    ``function-only-improvement``. Function only carries a repeat whose pain criterion is not met;
    it never turns a met one down."""
    p = ctx.policy
    status, reason, until, evidence = ctx.long_term(prior, threshold, months, side)
    f_threshold = p.opt(pathway, "function_threshold") if pathway else None
    f_status = None
    if f_threshold is not None:
        f_status, f_evidence = long_term_function(ctx.facts, p, prior, f_threshold, months, side)
        if f_evidence is not None:
            evidence["function"] = f_evidence
    e.evidence.append(evidence)
    if status == "met":
        return
    if f_status == MET and pathway is not None:
        if p.flag(pathway, "function_only_review"):
            detail = why.rule(
                "function-only-improvement",
                "the improvement was in function only, not in pain",
                "a clinician's review (no percentage for function is published)",
            )
            e.add(Finding(NEEDS_REVIEW, "function-only-improvement", None, detail))
        return
    if keys is None:
        keys = (f"pathways.{pathway}.threshold", f"pathways.{pathway}.relief_months")
    for f in long_term_findings(ctx, prior, status, reason, until, evidence, threshold, months, keys):
        e.add(f)


def long_term_findings(
    ctx: PatientContext,
    prior: Intervention,
    status: str,
    reason: str | None,
    until: date | None,
    evidence: dict[str, Any],
    threshold: float,
    months: int,
    keys: tuple[str, str],
) -> list[Finding]:
    """The finding of a prior procedure's long-term relief, with its numbers."""
    performed = prior.end.date()
    peak = evidence.get("peakReliefPercent")
    if status == "failed":
        detail = why.long_term("prior-relief-insufficient", performed, peak, threshold, months, keys)
        return [Finding(NOT_MET, "prior-relief-insufficient", None, detail)]
    if status in ("no-baseline", "no-follow-up"):
        code = reason or status
        if code == "no-baseline":
            days_ = ctx.policy.g("long_term_baseline_days")
            detail = Detail(
                code,
                None,
                days_,
                "days",
                "general.long_term_baseline_days",
                f"no pain score in the {number(days_)} days before the procedure on "
                f"{day(performed)}; one required",
            )
        else:
            start = ctx.policy.g("follow_up_start_days")
            detail = Detail(
                code,
                None,
                start,
                "days",
                "general.follow_up_start_days",
                f"no pain score from {number(start)} days after the procedure on {day(performed)}; "
                "follow-up scores required",
            )
        return [Finding(NOT_EVALUABLE, code, None, detail)]
    if status == "pending":
        detail = why.long_term("relief-period-not-ended", performed, peak, threshold, months, keys, until)
        return [Finding("deferred", "relief-period-not-ended", until, detail)]
    return []


def block_history_findings(
    ctx: PatientContext,
    is_block: Callable[[Intervention], bool],
    joint: str,
    side: str,
    on: date,
    params: str,
    e: JointEval,
) -> None:
    """The diagnostic blocks of ``joint`` × ``side`` before ``on``: none is ``joint-not-blocked``;
    else each judged against the ``params`` pathway's ``threshold`` and together against its
    ``blocks_required`` (with the confirming block's flags)."""
    p = ctx.policy
    history = blocks_at(ctx, is_block, joint, side, on)
    needed = p.num(params, "blocks_required")
    if not history:
        where = f"the {side} {joint}" if joint in ("SIJ", "knee") else f"{side} {joint}"
        e.add(Finding(NOT_MET, "joint-not-blocked", None, why.not_blocked(params, needed, where)))
        return
    results = [ctx.block(iv, p.num(params, "threshold")) for iv in history]
    e.evidence += [ctx.evidence(r) for r in results]
    findings, confirming = judge_history(results, int(needed), params, p)
    for f in findings:
        e.add(f)
    for f in confirming_flags(confirming, None, params, p):
        e.add(f)


def limit_step(
    target: Target, limit: float | None, key: str, what: str = "joints per side"
) -> tuple[tuple[Target, ...], Detail | None]:
    """The next step within the policy's per-session limit: at most ``limit`` joints (caudal
    first, as an order is reduced); the rest wait for a later session."""
    joints = list(target.joints)
    if limit is None or len(joints) <= limit:
        return (target,), None
    keep = cranial_first(caudal_first(joints)[: int(limit)])
    rest = [j for j in joints if j not in keep]
    detail = Detail(
        "levels-exceed-session-limit",
        len(joints),
        int(limit),
        "joints",
        key,
        f"at most {number(limit)} {what} in one session: {', '.join(keep)} first, {', '.join(rest)} later",
    )
    return (Target(target.region, keep, target.side),), detail
