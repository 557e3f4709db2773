"""What the practice's outcomes summary needs of one patient (issue 19): the outcome of each
definitive or therapeutic procedure, and whether its pathway's criteria were met on the day before.

The same answer as evaluating the patient in full now (the ``outcomes`` of the assessment
document) and again in full on the day before each procedure, keeping the assessments of that
pathway whose target overlaps the procedure's — computed with the work that answer needs only:

- one :class:`PatientContext` for the patient (its indexes and judged blocks depend on the facts
  and the policy, never on the date judged), shared by every date;
- the outcomes alone at ``now`` (no assessments, order checks, alerts or documentation: none of
  them changes an outcome);
- on the day before a procedure, only the proactive assessments of its family (``facet`` for the
  facet pathways, ``dispatch`` for the others: each only ever yields its own pathways), once per
  distinct day; verdicts are final there (cautions and documentation are added after, and never
  change a verdict).

``tests/recommender/test_outcomes_fast.py`` holds it to the full evaluation on every vignette and
a varied synthetic set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from services.recommender.engine import outcomes as _outcomes
from services.recommender.engine.model import Assessment
from services.recommender.engine.pathways import dispatch, facet
from services.recommender.engine.relief import PatientContext
from shared.domain.facts import PatientFacts


def overlaps(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Two targets (``region``, ``side``, ``joints``) share a region, a compatible side and a joint
    (no joints named on either: the whole region)."""
    if a.get("region") != b.get("region"):
        return False
    sides = {a.get("side"), b.get("side")}
    if None not in sides and "bilateral" not in sides and len(sides) > 1:
        return False
    ja, jb = set(a.get("joints") or []), set(b.get("joints") or [])
    return not ja or not jb or bool(ja & jb)


def procedure_outcomes(ctx: PatientContext, now: datetime) -> list[tuple[Mapping[str, Any], bool | None]]:
    """``(outcome, criteria met the day before)`` per definitive or therapeutic procedure up to
    ``now``, oldest first; the flag is None when no assessment of that pathway covered the target.
    ``ctx``: the patient's context (one evaluation of the patient at ``now`` may have used it
    already: its outcomes are then reused)."""
    judged: dict[tuple[bool, datetime], list[Assessment]] = {}
    out: list[tuple[Mapping[str, Any], bool | None]] = []
    for outcome in _outcomes.outcomes(ctx, now):
        pathway = str(outcome.get("pathway"))
        day_before = datetime.fromisoformat(str(outcome["performed"])) - timedelta(days=1)
        is_facet = pathway.startswith("facet")
        key = (is_facet, day_before)
        found = judged.get(key)
        if found is None:
            found = judged[key] = (
                facet.assessments(ctx, day_before) if is_facet else dispatch.assessments(ctx, day_before)
            )
        wanted = {pathway, f"{pathway}-repeat"}
        target = outcome.get("target") or {}
        verdicts = [a.verdict for a in found if a.pathway in wanted and overlaps(a.target.as_json(), target)]
        out.append((outcome, ("supported" in verdicts) if verdicts else None))
    return out


def unchanged_until(
    facts: PatientFacts, rows: Sequence[tuple[Mapping[str, Any], bool | None]], now: datetime
) -> datetime | None:
    """The first instant after ``now`` at which :func:`procedure_outcomes` of the same facts could
    differ (None: never) — what a stored copy of the rows may be reused until.

    With the facts unchanged, ``now`` enters the outcomes only through: which procedures have
    ended (a later one joins), which readings and functional scores are up to ``now`` (a later one
    joins a milestone or a relief run) and which milestones are ``pending`` (their date passes;
    taken a day early, so that a ``now`` in any time zone is covered). The verdicts on the day
    before each procedure do not depend on ``now`` at all."""
    times = [iv.end for iv in facts.interventions if iv.end > now]
    times += [r.time for r in facts.readings if r.time > now]
    times += [s.time for s in facts.function_scores if s.time > now]
    for outcome, _ in rows:
        for m in outcome.get("milestones") or []:
            if m.get("status") == "pending":
                day = date.fromisoformat(str(m["date"])) - timedelta(days=1)
                times.append(datetime(day.year, day.month, day.day, tzinfo=UTC))
    return min(times, default=None)
