"""Rules shared by the pathways: block histories, per-joint results and how they combine."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from services.recommender.engine.functional import MET, long_term_function
from services.recommender.engine.model import (
    NEEDS_REVIEW,
    NOT_COVERED,
    NOT_EVALUABLE,
    NOT_MET,
    PARTIAL,
    SUPPORTED,
    Finding,
    Outcome,
    Target,
    combine,
)
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
from shared.domain.facts import Intervention
from shared.domain.normalize import joint_order


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


def judge_history(results: Sequence[BlockResult], needed: int) -> tuple[list[Finding], list[BlockResult]]:
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
        return [Finding(NOT_MET, negatives[-1].reasons[0])], []
    last = results[-1] if results else None
    if last is not None and last.status == INVALID:
        return [Finding(NOT_MET, "sedation-confounded")], []
    if last is not None and last.status == UNEVALUABLE:
        return [Finding(NOT_EVALUABLE, last.reasons[0])], []
    return [Finding(NOT_MET, "second-block-required")], []


def confirming_flags(confirming: Sequence[BlockResult], min_interval_days: float | None) -> list[Finding]:
    """Low baseline and prolonged response cap the verdict at ``needs-review``; so does a second
    block under ``min_interval_days`` after the first (CONTRACT §6)."""
    out: list[Finding] = []
    if any(r.low_baseline for r in confirming):
        out.append(Finding(NEEDS_REVIEW, "low-baseline"))
    if any(r.prolonged for r in confirming):
        out.append(Finding(NEEDS_REVIEW, "prolonged-response"))
    if min_interval_days is not None:
        dates = sorted(r.block.end.date() for r in confirming)
        if any((b - a).days < min_interval_days for a, b in itertools.pairwise(dates)):
            out.append(Finding(NEEDS_REVIEW, "diagnostic-interval-too-short"))
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


def combine_order(evals: Sequence[JointEval], region: str, max_per_side: float | None) -> Combined:
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
        e.add(Finding(NOT_COVERED, "not-covered-by-policy"))


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
        pathway=pathway,
    )


def long_term_finding(
    ctx: PatientContext,
    prior: Intervention,
    threshold: float,
    months: int,
    side: str | None,
    e: JointEval,
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
            e.add(Finding(NEEDS_REVIEW, "function-only-improvement"))
        return
    if status == "failed":
        e.add(Finding(NOT_MET, "prior-relief-insufficient"))
    elif status in ("no-baseline", "no-follow-up"):
        e.add(Finding(NOT_EVALUABLE, reason or status))
    elif status == "pending":
        e.add(Finding("deferred", "relief-period-not-ended", until))


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
    if not history:
        e.add(Finding(NOT_MET, "joint-not-blocked"))
        return
    results = [ctx.block(iv, p.num(params, "threshold")) for iv in history]
    e.evidence += [ctx.evidence(r) for r in results]
    findings, confirming = judge_history(results, int(p.num(params, "blocks_required")))
    for f in findings:
        e.add(f)
    for f in confirming_flags(confirming, None):
        e.add(f)
