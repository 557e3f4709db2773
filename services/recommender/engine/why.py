"""The numbers behind each reason (:class:`~services.recommender.engine.model.Detail`): what
was measured, what the policy requires, and the policy key that names the source.

One function per kind of criterion; the pathways call them where they make a finding, so the
detail is computed from the same numbers as the verdict.
"""

from __future__ import annotations

from datetime import date

from services.recommender.engine.model import Detail
from services.recommender.engine.policy import Policy
from services.recommender.engine.relief import BlockResult
from shared.domain import terminology as t
from shared.humanize import day, days, duration, number, percent, plural

_AGENT_NAMES = {"unknown": "an unnamed anaesthetic", "mixed": "mixed anaesthetics"}


def agent_name(agent: str | None) -> str:
    return _AGENT_NAMES.get(str(agent or "unknown"), str(agent or "unknown"))


def rule(code: str, measured: str, required: str) -> Detail:
    """A criterion without a number: its source is ``rules.<code>``."""
    return Detail(code, measured, required, "", f"rules.{code}", f"{measured}; {required}", short=measured)


def block(result: BlockResult, reason: str, pathway: str, policy: Policy) -> Detail:
    """Why one diagnostic block is not positive (or is flagged)."""
    on = day(result.block.end)
    if reason == "relief-below-threshold":
        return Detail(
            reason,
            None if result.peak is None else round(result.peak, 1),
            result.threshold,
            "%",
            f"pathways.{pathway}.threshold",
            f"{percent(result.peak)} relief after the block on {on} < {percent(result.threshold)} required",
            short=f"{percent(result.peak)} relief < {percent(result.threshold)}",
        )
    if reason in ("duration-inconsistent-with-agent", "prolonged-response"):
        name = result.agent if result.agent in policy.agents else "lidocaine"
        spec = policy.agent(result.agent, result.block.injectate.anaesthetics)
        if reason == "prolonged-response":
            return Detail(
                reason,
                result.sustained,
                spec.prolonged_minutes,
                "min",
                f"agents.{name}.prolonged_minutes",
                f"relief after the block on {on} lasted {duration(result.sustained)} > "
                f"{duration(spec.prolonged_minutes)} expected of {agent_name(result.agent)}",
            )
        return Detail(
            reason,
            result.sustained,
            spec.minimum_minutes,
            "min",
            f"agents.{name}.minimum_minutes",
            f"relief ≥ {percent(result.threshold)} after the block on {on} lasted "
            f"{duration(result.sustained, 'no time')} < {duration(spec.minimum_minutes)} required "
            f"for {agent_name(result.agent)}",
            short=f"relief lasted {duration(result.sustained, 'no time')} < {duration(spec.minimum_minutes)} "
            f"({agent_name(result.agent)})",
        )
    if reason == "sedation-confounded":
        return rule(
            reason, f"IV sedation during the block on {on}", "diagnostic blocks without sedation required"
        )
    if reason == "no-baseline":
        hours = policy.g("baseline_window_hours")
        return Detail(
            reason,
            None,
            hours,
            "h",
            "general.baseline_window_hours",
            f"no pain score in the {number(hours)} hours before the block on {on}; one required",
            short=f"no pain score in the {number(hours)} h before the block",
        )
    if reason == "low-baseline":
        vas = result.scale == t.VAS
        key = "low_baseline_below_vas_mm" if vas else "low_baseline_below"
        cut = policy.g(key)
        unit = " mm" if vas else "/10"
        return Detail(
            reason,
            result.baseline,
            cut,
            "mm" if vas else "/10",
            f"general.{key}",
            f"pain before the block on {on} {number(result.baseline)}{unit} < {number(cut)}{unit} required",
        )
    if reason == "no-follow-up":
        hours = policy.g("post_window_hours")
        return Detail(
            reason,
            None,
            hours,
            "h",
            "general.post_window_hours",
            f"no pain score within {number(hours)} hours after the block on {on}; one required",
        )
    if reason == "scale-mismatch":
        return rule(
            reason,
            f"pain after the block on {on} scored on another scale than before it",
            "the same scale required",
        )
    return rule(reason, f"the block on {on}", "see the policy")


def blocks_required(code: str, positive: int, needed: float, pathway: str, where: str = "") -> Detail:
    at = f" {where}" if where else ""
    return Detail(
        code,
        positive,
        int(needed),
        "blocks",
        f"pathways.{pathway}.blocks_required",
        f"{plural(positive, 'positive block')}{at} < {number(needed)} required",
    )


def not_blocked(pathway: str, needed: float, where: str) -> Detail:
    return Detail(
        "joint-not-blocked",
        0,
        int(needed),
        "blocks",
        f"pathways.{pathway}.blocks_required",
        f"no diagnostic block at {where} < {plural(needed, 'positive block')} required",
        short=f"no block at {where}",
    )


_SESSIONS = {
    "diagnostic-session-cap": "diagnostic block",
    "rfa-session-cap": "ablation",
    "therapeutic-session-cap": "therapeutic injection",
    "esi-session-cap": "ESI",
}


def session_cap(code: str, dates: list[date], cap: float, release: date, key: str) -> Detail:
    """``yearly limit of 4 ESI sessions reached — earliest 3 Dec 2025``: the limit first."""
    what = _SESSIONS.get(code, "")
    sessions = plural(cap, f"{what} session" if what else "session")
    return Detail(
        code,
        len(dates),
        int(cap),
        "sessions",
        key,
        f"yearly limit of {sessions} reached — earliest {day(release)}",
        tuple(dates),
        release,
    )


def interval(code: str, apart: int, gap: float, key: str) -> Detail:
    return Detail(code, apart, gap, "days", key, f"blocks {days(apart)} apart < {days(gap)} required")


def since(code: str, what: str, start: date | None, due: date, required: str, key: str, on: date) -> Detail:
    """A time-based prerequisite (pain duration, conservative care) still running at ``on``."""
    if start is None:
        return Detail(code, None, required, "", key, f"no {what} documented; {required} required")
    return Detail(
        code,
        (on - start).days,
        required,
        "days",
        key,
        f"{what} since {day(start)} ({days((on - start).days)}) < {required} required — from {day(due)}",
        earliest=due,
        short=f"{what} {days((on - start).days)} < {required} — from {day(due)}",
    )


def levels(count: int, limit: float, key: str) -> Detail:
    return Detail(
        "levels-exceed-session-limit",
        count,
        int(limit),
        "joints",
        key,
        f"{count} joints or levels on one side > {number(limit)} allowed per session",
        short=f"{count} joints on one side > {number(limit)} per session",
    )


def not_covered(pathway_name: str, key: str) -> Detail:
    return Detail(
        "not-covered-by-policy",
        "ordered",
        False,
        "",
        key,
        f"{pathway_name} is not covered by this policy",
        short="not covered by this policy",
    )


def long_term(
    code: str,
    performed: date,
    peak: float | None,
    threshold: float,
    months: int,
    keys: tuple[str, str],
    until: date | None = None,
) -> Detail:
    if code == "relief-period-not-ended":
        return Detail(
            code,
            peak,
            months,
            "months",
            keys[1],
            f"the {plural(months, 'month')} of relief after {day(performed)} have not passed — ends "
            f"{day(until)}",
            earliest=until,
        )
    return Detail(
        code,
        peak,
        threshold,
        "%",
        keys[0],
        f"relief after {day(performed)} ({percent(peak)} at best) not sustained ≥ {percent(threshold)} "
        f"for {plural(months, 'month')} as required",
    )
