"""Relief computation (CRITERIA §9.2; CONTRACT §6 "Readings and relief").

A block's baseline is the latest pain reading in the 24 h before its start (its scale becomes the
block's scale); post-block readings are those after its end within 72 h — with ``partOf`` the
block, or without ``partOf`` (then the reading belongs to the latest block that ended before it,
on the reading's side when it states one). Readings on another scale are ignored.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from services.recommender.engine.policy import Policy
from shared.domain import terminology as t
from shared.domain._frozen import quick_init
from shared.domain._json import add_months
from shared.domain.facts import Intervention, PainReading, PatientFacts, by_end_ref, since_epoch

POSITIVE, NEGATIVE, INVALID, UNEVALUABLE = "positive", "negative", "invalid", "unevaluable"


def sides_compatible(reading_side: str | None, block_side: str | None) -> bool:
    """A reading stating a side belongs to blocks on that side (or bilateral / unstated ones)."""
    if reading_side is None or block_side is None or reading_side == "bilateral" or block_side == "bilateral":
        return True
    return reading_side == block_side


@quick_init
@dataclass(frozen=True, slots=True)
class BlockResult:
    """One diagnostic block judged at one threshold (CRITERIA §9.2 steps 1-8)."""

    block: Intervention
    threshold: float
    status: str  # positive | negative | invalid | unevaluable
    reasons: tuple[str, ...]
    agent: str
    scale: str | None
    baseline: float | None
    peak: float | None
    sustained: int | None  # minutes at or above the threshold from the block's end
    low_baseline: bool = False
    prolonged: bool = False
    sedated: bool = False

    @property
    def interpretable(self) -> bool:
        return self.status in (POSITIVE, NEGATIVE)

    def evidence(self) -> dict[str, Any]:
        """The CONTRACT §3 evidence item (a fresh dict; see :meth:`PatientContext.evidence`)."""
        return {
            "procedure": self.block.ref,
            "performed": self.block.end.isoformat(),
            "agent": self.agent,
            "scale": self.scale,
            "baseline": _num(self.baseline),
            "peakReliefPercent": None if self.peak is None else round(self.peak, 1),
            "sustainedMinutes": self.sustained,
            "positive": self.status == POSITIVE,
            "reasons": list(self.reasons),
        }


def _num(value: float | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def relief_percent(baseline: float, value: float) -> float:
    """(baseline − post) / baseline × 100, never negative; no rounding before comparing (§9.2 step 4)."""
    return max(0.0, (baseline - value) / baseline * 100.0)


def sustained_minutes(
    end: datetime, post: Sequence[PainReading], baseline: float, threshold: float, run_start_minutes: float
) -> int:
    """From the block's end to the last reading of the contiguous run at or above the threshold
    that starts within ``run_start_minutes`` of the end (CONTRACT §6); 0 when there is none."""
    run_last: datetime | None = None
    started = False
    for reading in post:
        ok = relief_percent(baseline, reading.value) >= threshold
        if not started:
            if ok:
                if (reading.time - end).total_seconds() / 60 > run_start_minutes:
                    return 0
                started, run_last = True, reading.time
            continue
        if not ok:
            break
        run_last = reading.time
    if run_last is None:
        return 0
    return int((run_last - end).total_seconds() // 60)


class PatientContext:
    """Per-patient indexes shared by every pathway: post-block readings, block results, sides."""

    def __init__(self, facts: PatientFacts, policy: Policy) -> None:
        self.facts = facts
        self.policy = policy
        self.completed = tuple(iv for iv in facts.interventions if iv.completed)
        #: each reading's time since the epoch (:func:`~shared.domain.facts.since_epoch`), in order
        self.reading_times = [since_epoch(r.time) for r in facts.readings]
        self._post = self._assign_post_readings()
        self._cache: dict[tuple[str, float], BlockResult] = {}
        self.sides_cache: dict[tuple[str | None, str], tuple[str, ...]] = {}
        self._evidence: dict[tuple[str, float], dict[str, Any]] = {}
        #: results the pathways compute more than once for one patient (an assessment and an
        #: order check of the same joint), keyed by what they depend on
        self.memo: dict[tuple[Any, ...], Any] = {}
        self._baselines: dict[tuple[str, datetime, str | None, timedelta], PainReading | None] = {}

    # readings --------------------------------------------------------------------------------
    def _assign_post_readings(self) -> dict[str, list[PainReading]]:
        """Times are compared as time since the epoch (:func:`~shared.domain.facts.since_epoch`:
        exact, and cheap when the offsets of a chart's times differ)."""
        window = timedelta(hours=self.policy.g("post_window_hours"))
        by_ref = {iv.ref: iv for iv in self.completed}
        ordered = sorted(self.completed, key=by_end_ref)  # by end, then ref
        ends = [since_epoch(iv.end) for iv in ordered]
        out: dict[str, list[PainReading]] = defaultdict(list)
        for reading, time in zip(self.facts.readings, self.reading_times, strict=True):
            if reading.part_of:
                linked = [by_ref[r] for r in reading.part_of if r in by_ref]
                if linked:
                    for iv in linked:
                        if iv.end < reading.time <= iv.end + window:
                            out[iv.ref].append(reading)
                    continue
                if any(r.startswith("Procedure/") for r in reading.part_of):
                    continue  # linked to a procedure that is not a kept block
            # the latest block (by end, then ref) ended before the reading, within the window,
            # on a compatible side: from the last that ended before it, backwards
            for i in range(bisect_left(ends, time) - 1, -1, -1):
                if time > ends[i] + window:
                    break  # and every block before it ended earlier still
                if sides_compatible(reading.side, ordered[i].side):
                    out[ordered[i].ref].append(reading)
                    break
        return out

    def post_readings(self, block: Intervention) -> list[PainReading]:
        return self._post.get(block.ref, [])

    def baseline(self, block: Intervention, window: timedelta) -> PainReading | None:
        """Latest reading of any accepted scale in ``window`` before the block's start (once per
        block and window: each threshold's judgement and the evidence snapshot ask again)."""
        key = (block.ref, block.start, block.side, window)
        if key in self._baselines:
            return self._baselines[key]
        best = self._baselines[key] = self._baseline(block, window)
        return best

    def _baseline(self, block: Intervention, window: timedelta) -> PainReading | None:
        """The last reading (in time, then ref order) in ``[start - window, start]`` on a
        compatible side: found from the window's end backwards (readings are in time order)."""
        readings = self.facts.readings
        times = self.reading_times
        start = since_epoch(block.start)
        first = bisect_left(times, start - window)
        for i in range(bisect_right(times, start) - 1, first - 1, -1):
            reading = readings[i]
            if sides_compatible(reading.side, block.side):
                return reading
        return None

    def sedated(self, block: Intervention) -> bool:
        """IV sedation from ``sedation_lookback_minutes`` before the start to the end (CONTRACT §4)."""
        if not self.facts.sedations:
            return False
        lo = block.start - timedelta(minutes=self.policy.g("sedation_lookback_minutes"))
        return any(s.start <= block.end and s.end >= lo for s in self.facts.sedations)

    def evidence(self, result: BlockResult) -> dict[str, Any]:
        """Evidence of a judged block, computed once per (block, threshold)."""
        key = (result.block.ref, result.threshold)
        item = self._evidence.get(key)
        if item is None:
            item = self._evidence[key] = result.evidence()
        return item

    # blocks ------------------------------------------------------------------------------------
    def block(self, block: Intervention, threshold: float) -> BlockResult:
        key = (block.ref, threshold)
        result = self._cache.get(key)
        if result is None:
            result = self._cache[key] = self._judge(block, threshold)
        return result

    def _judge(self, block: Intervention, threshold: float) -> BlockResult:
        """Positive, negative (relief-below-threshold / duration-inconsistent-with-agent), invalid
        (sedation-confounded) or unevaluable (no-baseline, low-baseline at 0, no-follow-up,
        scale-mismatch) — CRITERIA §9.2 steps 2-7, CONTRACT §6."""
        p = self.policy
        inj = block.injectate
        agent = inj.agent
        sedated = self.sedated(block)
        base = self.baseline(block, timedelta(hours=p.g("baseline_window_hours")))
        lead: tuple[str, ...] = ("sedation-confounded",) if sedated else ()
        status_if = INVALID if sedated else None

        def result(status: str, reasons: tuple[str, ...], **kw: Any) -> BlockResult:
            return BlockResult(
                block, threshold, status_if or status, lead + reasons, agent, sedated=sedated, **kw
            )

        if base is None:
            return result(UNEVALUABLE, ("no-baseline",), scale=None, baseline=None, peak=None, sustained=None)
        scale, b = base.scale, base.value
        if b <= 0:
            return result(UNEVALUABLE, ("low-baseline",), scale=scale, baseline=b, peak=None, sustained=None)
        post = self.post_readings(block)
        if not post:
            return result(UNEVALUABLE, ("no-follow-up",), scale=scale, baseline=b, peak=None, sustained=None)
        same = [r for r in post if r.scale == scale]
        if not same:
            return result(
                UNEVALUABLE, ("scale-mismatch",), scale=scale, baseline=b, peak=None, sustained=None
            )
        peak = max(relief_percent(b, r.value) for r in same)
        sustained = sustained_minutes(block.end, same, b, threshold, p.g("run_start_minutes"))
        low_cut = p.g("low_baseline_below_vas_mm") if scale == t.VAS else p.g("low_baseline_below")
        low = b < low_cut
        spec = p.agent(agent, inj.anaesthetics)
        prolonged = sustained > spec.prolonged_minutes
        kw: dict[str, Any] = {
            "scale": scale,
            "baseline": b,
            "peak": peak,
            "sustained": sustained,
            "low_baseline": low,
            "prolonged": prolonged,
        }
        if peak < threshold:
            return result(NEGATIVE, ("relief-below-threshold",), **kw)
        if sustained < spec.minimum_minutes:
            return result(NEGATIVE, ("duration-inconsistent-with-agent",), **kw)
        extra = tuple(r for r, on in (("low-baseline", low), ("prolonged-response", prolonged)) if on)
        return result(POSITIVE, extra, **kw)

    # long-term relief ---------------------------------------------------------------------------
    def long_term(
        self, procedure: Intervention, threshold: float, months: int, side: str | None
    ) -> tuple[str, str | None, date | None, dict[str, Any]]:
        """Relief sustained for ``months`` after a definitive procedure (CONTRACT §6 "Repeat RFA";
        CRITERIA §9.2 long-term relief). Returns (status, reason, date, evidence) where status is
        ``met``, ``failed`` (prior-relief-insufficient), ``pending`` (relief-period-not-ended, with
        the date it ends), ``no-baseline`` or ``no-follow-up``."""
        p = self.policy
        base = self.baseline(procedure, timedelta(days=p.g("long_term_baseline_days")))
        evidence: dict[str, Any] = {
            "procedure": procedure.ref,
            "performed": procedure.end.isoformat(),
            "agent": procedure.injectate.agent,
            "scale": base.scale if base else None,
            "baseline": _num(base.value) if base else None,
            "peakReliefPercent": None,
            "sustainedMinutes": None,
            "positive": False,
            "reasons": [],
        }
        period_end = add_months(procedure.end.date(), months)
        if base is None or base.value <= 0:
            evidence["reasons"] = ["no-baseline"]
            return "no-baseline", "no-baseline", None, evidence
        start = procedure.end + timedelta(days=p.g("follow_up_start_days"))
        readings = [
            r
            for r in self.facts.readings
            if r.scale == base.scale
            and r.time >= start
            and (r.side is None or side is None or r.side == side)
        ]
        if not readings:
            evidence["reasons"] = ["no-follow-up"]
            return "no-follow-up", "no-follow-up", None, evidence
        reliefs = [relief_percent(base.value, r.value) for r in readings]
        dip_used = False
        last_ok: datetime | None = None
        for i, (reading, relief) in enumerate(zip(readings, reliefs, strict=True)):
            ok = relief >= threshold
            if ok:
                last_ok = reading.time
                if reading.time.date() >= period_end:
                    evidence.update(
                        peakReliefPercent=round(max(reliefs[: i + 1]), 1),
                        sustainedMinutes=int((reading.time - procedure.end).total_seconds() // 60),
                        positive=True,
                    )
                    return "met", None, None, evidence
                continue
            recovers = i + 1 < len(readings) and reliefs[i + 1] >= threshold
            if dip_used or not recovers:
                evidence.update(
                    peakReliefPercent=round(max(reliefs[: i + 1]), 1), reasons=["prior-relief-insufficient"]
                )
                if last_ok is not None:
                    evidence["sustainedMinutes"] = int((last_ok - procedure.end).total_seconds() // 60)
                return "failed", "prior-relief-insufficient", None, evidence
            dip_used = True
        evidence["peakReliefPercent"] = round(max(reliefs), 1)
        evidence["reasons"] = ["relief-period-not-ended"]
        return "pending", "relief-period-not-ended", period_end, evidence


def index_sides(facts: PatientFacts, regions: frozenset[str]) -> set[str]:
    """Sides on which the index pain is documented: active pain Conditions of these regions, else
    pain readings that state a side (CONTRACT §6 "A bilateral block confirms both sides ...")."""
    sides = {c.side for c in facts.conditions if c.active and c.side and c.region in regions}
    if not sides:
        sides = {r.side for r in facts.readings if r.side}
    return {s for s in sides if s}


def expand_sides(side: str | None, documented: set[str]) -> tuple[str, ...]:
    """Sides a block or order covers. A bilateral (or unlateralised) one covers both sides when the
    index pain is documented bilateral or not at all, else only the documented side."""
    if side in ("left", "right"):
        return (side,)
    if not documented or "bilateral" in documented or {"left", "right"} <= documented:
        return ("left", "right")
    return tuple(sorted(documented & {"left", "right"}))


def evidence_list(results: Sequence[BlockResult]) -> list[Mapping[str, Any]]:
    return [r.evidence() for r in results]
