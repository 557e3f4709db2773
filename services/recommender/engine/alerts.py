"""Patient-level alerts at ``--now`` over the previous ``alert_window_days`` (CONTRACT §6)."""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import datetime, timedelta

from services.recommender.engine import why
from services.recommender.engine.model import Alert, Detail
from services.recommender.engine.relief import POSITIVE, PatientContext
from services.recommender.engine.sessions import family
from shared.domain import terminology as t
from shared.humanize import day, listing, plural

_DIAGNOSTIC_KINDS = frozenset(
    {t.FACET_BLOCK, t.FACET_BLOCK_US, t.SIJ_BLOCK, t.SIJ_NERVE_BLOCK, t.GENICULAR_BLOCK}
)
_THRESHOLD_PATHWAY = {
    t.FACET_BLOCK: "facet-rfa",
    t.FACET_BLOCK_US: "facet-rfa",
    t.SIJ_BLOCK: "sij-therapeutic",
    t.SIJ_NERVE_BLOCK: "sij-therapeutic",
    t.GENICULAR_BLOCK: "genicular-rfa",
}


def _threshold(ctx: PatientContext, kind: str) -> float:
    return ctx.policy.num(_THRESHOLD_PATHWAY[kind], "threshold")


def block_alerts(ctx: PatientContext, now: datetime) -> list[Alert]:
    """``sedation`` (a sedated diagnostic block; NGS/CGS [S6][S7]), ``prolonged-response`` (relief
    beyond the agent's pharmacology; CRITERIA §9.2 step 7) and ``discordant-blocks`` (lidocaine
    relief outlasting bupivacaine at the same joint and side; CRITERIA §6, §9.2 step 8)."""
    since = now - timedelta(days=ctx.policy.g("alert_window_days"))
    blocks = [
        iv
        for iv in ctx.completed
        if iv.kind in _DIAGNOSTIC_KINDS and iv.diagnostic and since <= iv.end <= now
    ]
    alerts: list[Alert] = []
    sedated_blocks = [iv for iv in blocks if ctx.sedated(iv)]
    sedated = [iv.ref for iv in sedated_blocks]
    if sedated:
        alerts.append(
            Alert(
                "sedation",
                "warning",
                "IV sedation or anaesthesia during a diagnostic block: the block cannot confirm the pain "
                "generator (moderate sedation is not reasonable and necessary for diagnostic blocks).",
                tuple(sedated),
                Detail(
                    "sedation",
                    len(sedated),
                    0,
                    "blocks",
                    "rules.sedation-confounded",
                    f"IV sedation during the block on {listing([day(iv.end) for iv in sedated_blocks])}"
                    "; diagnostic blocks without sedation required",
                ),
            )
        )
    results = [ctx.block(iv, _threshold(ctx, iv.kind)) for iv in blocks]
    long = [r for r in results if r.status == POSITIVE and r.prolonged]
    prolonged = [r.block.ref for r in long]
    if prolonged:
        alerts.append(
            Alert(
                "prolonged-response",
                "warning",
                "Relief lasted far longer than the local anaesthetic acts: possible placebo or other "
                "response; review before relying on the block.",
                tuple(prolonged),
                why.block(
                    long[-1], "prolonged-response", _THRESHOLD_PATHWAY[long[-1].block.kind], ctx.policy
                ),
            )
        )
    by_site: dict[tuple[str, str, str | None], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    refs: dict[tuple[str, str, str | None], list[str]] = defaultdict(list)
    for r in results:
        if not r.interpretable or r.agent not in ("lidocaine", "bupivacaine"):
            continue
        for joint in r.block.joints:
            key = (r.block.kind, joint, r.block.side)
            by_site[key][r.agent].append(r.sustained or 0)
            refs[key].append(r.block.ref)
    discordant = sorted(
        {
            ref
            for key, agents in by_site.items()
            if agents.get("lidocaine")
            and agents.get("bupivacaine")
            and max(agents["lidocaine"]) > max(agents["bupivacaine"])
            for ref in refs[key]
        }
    )
    if discordant:
        alerts.append(
            Alert(
                "discordant-blocks",
                "warning",
                "Comparative blocks are discordant: relief after lidocaine outlasted relief after "
                "bupivacaine at the same joint and side (possible placebo response).",
                tuple(discordant),
                Detail(
                    "discordant-blocks",
                    "lidocaine relief longer",
                    "bupivacaine relief longer",
                    "",
                    "rules.discordant-blocks",
                    "relief after lidocaine outlasted relief after bupivacaine; the longer-acting agent "
                    "should give the longer relief",
                ),
            )
        )
    return alerts


def steroid_frequency_alert(ctx: PatientContext, now: datetime) -> Alert | None:
    """A joint with ``steroid_alert_max_injections`` or more steroid injections in the window, or two
    less than ``steroid_alert_min_interval_days`` apart (CONTRACT §6; CRITERIA §4.2)."""
    p = ctx.policy
    since = now - timedelta(days=p.g("alert_window_days"))
    by_joint: dict[tuple[str, str, str | None], list[datetime]] = defaultdict(list)
    refs: dict[tuple[str, str, str | None], list[str]] = defaultdict(list)
    for iv in ctx.completed:
        if not iv.injectate.steroid or not (since <= iv.end <= now):
            continue
        fam = family(iv)
        if fam is None or fam in ("esi",):
            continue
        for joint in iv.joints or (iv.region,):
            key = (iv.region, joint, iv.side)
            by_joint[key].append(iv.end)
            refs[key].append(iv.ref)
    hits: set[str] = set()
    for key, times in by_joint.items():
        times.sort()
        close = any(
            (b - a).days < p.g("steroid_alert_min_interval_days") for a, b in itertools.pairwise(times)
        )
        if len(times) >= p.g("steroid_alert_max_injections") or close:
            hits.update(refs[key])
    if not hits:
        return None
    most = max(len(times) for times in by_joint.values())
    detail = Detail(
        "steroid-frequency",
        most,
        int(p.g("steroid_alert_max_injections")),
        "injections",
        "general.steroid_alert_max_injections",
        f"{plural(most, 'steroid injection')} into one joint in 12 months; alert at "
        f"{int(p.g('steroid_alert_max_injections'))} or more, or two less than "
        f"{int(p.g('steroid_alert_min_interval_days'))} days apart",
    )
    return Alert(
        "steroid-frequency",
        "warning",
        "Repeated corticosteroid injections into the same joint within 12 months (4 or more, or less "
        "than 12 weeks apart): repeated injections can damage cartilage and tissue.",
        tuple(sorted(hits)),
        detail,
    )
