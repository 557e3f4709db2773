"""Policy what-if: every stored patient judged under a baseline policy and a candidate one; per
pathway, the matrix of verdict changes (baseline verdict → candidate verdict, with counts) and
the assessments that change. Streams over the store a batch of patients at a time (memory holds
one batch, the matrix and the list of changes). ``pinpoint whatif`` and ``GET /whatif``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import typer
from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse
from sqlalchemy.engine import Engine

from services.recommender.assessor import Assessor
from services.recommender.container import RecommenderDep
from services.recommender.engine import wording
from services.recommender.patients.repository import load_resources, patient_keys_with_data
from shared.db.session import session_scope
from shared.humanize import plural
from shared.web import require_api_token

NONE = "none"  # no assessment for that pathway and target under this policy


@dataclass(frozen=True)
class Change:
    patient_key: str
    pathway: str
    target: str
    before: str
    after: str

    @property
    def evidence_href(self) -> str:
        source, _, pid = self.patient_key.partition(":")
        return f"/patients/{pid if source == 'default' else self.patient_key}/evidence"


@dataclass
class WhatIf:
    baseline: tuple[str, str]  # policy id, version
    candidate: tuple[str, str]
    evaluated_at: datetime
    patients: int = 0
    matrix: dict[str, Counter[tuple[str, str]]] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)

    def changed(self, pathway: str) -> int:
        return sum(n for (b, a), n in self.matrix[pathway].items() if b != a)

    def as_json(self) -> dict[str, Any]:
        return {
            "baseline": {"id": self.baseline[0], "version": self.baseline[1]},
            "candidate": {"id": self.candidate[0], "version": self.candidate[1]},
            "evaluatedAt": self.evaluated_at.isoformat(),
            "patients": self.patients,
            "pathways": [
                {
                    "pathway": p,
                    "assessments": sum(self.matrix[p].values()),
                    "changed": self.changed(p),
                    "matrix": [
                        {"from": b, "to": a, "count": n} for (b, a), n in sorted(self.matrix[p].items())
                    ],
                }
                for p in sorted(self.matrix)
            ],
            "changes": [
                {
                    "patient": c.patient_key,
                    "pathway": c.pathway,
                    "target": c.target,
                    "from": c.before,
                    "to": c.after,
                    "evidence": c.evidence_href,
                }
                for c in self.changes
            ],
        }


def _verdicts(assessor: Assessor, facts: Any, ref: str, now: datetime) -> dict[tuple[str, str], str]:
    entry = assessor.entry(facts, ref, now)
    return {
        (str(a["pathway"]), wording.target_text(a.get("target"))): str(a["verdict"])
        for a in entry.get("assessments") or []
    }


def _batches(keys: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(keys), size):
        yield keys[i : i + size]


def run_whatif(
    engine: Engine,
    baseline: Assessor,
    candidate: Assessor,
    now: datetime,
    *,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 200,
) -> WhatIf:
    """Judge every stored patient under both policies at ``now`` (``progress(done, total)``)."""
    with session_scope(engine) as session:
        keys = patient_keys_with_data(session)
    out = WhatIf(
        (baseline.policy.id, str(baseline.policy.version)),
        (candidate.policy.id, str(candidate.policy.version)),
        now,
    )
    done = 0
    for chunk in _batches(keys, batch):
        with session_scope(engine) as session:
            resources = load_resources(session, chunk)
        for key in chunk:
            ref = f"Patient/{key.partition(':')[2]}"
            facts = baseline.facts(resources[key]).get(ref)  # normalised once, judged twice
            done += 1
            if facts is None:
                continue
            out.patients += 1
            before = _verdicts(baseline, facts, ref, now)
            after = _verdicts(candidate, facts, ref, now)
            for pathway, target in sorted(before.keys() | after.keys()):
                b, a = before.get((pathway, target), NONE), after.get((pathway, target), NONE)
                out.matrix.setdefault(pathway, Counter())[(b, a)] += 1
                if b != a:
                    out.changes.append(Change(key, pathway, target, b, a))
        if progress is not None:
            progress(done, len(keys))
    return out


def verdict_words(code: str) -> str:
    return "no assessment" if code == NONE else wording.VERDICTS.get(code, code)


# ---------------------------------------------------------------------------------- command


def _matrix_text(result: WhatIf) -> str:
    lines = [
        f"What-if: {result.candidate[0]} {result.candidate[1]} instead of {result.baseline[0]} "
        f"{result.baseline[1]}: {result.patients:,} patient{'' if result.patients == 1 else 's'} judged at "
        f"{result.evaluated_at:%Y-%m-%d %H:%M}.",
    ]
    for pathway in sorted(result.matrix):
        cells = result.matrix[pathway]
        lines += [
            "",
            f"{wording.pathway_text(pathway)}: {plural(sum(cells.values()), 'assessment')}, "
            f"{plural(result.changed(pathway), 'change')}",
        ]
        for (b, a), n in sorted(cells.items(), key=lambda kv: (kv[0][0] == kv[0][1], -kv[1])):
            mark = "  =" if b == a else "  →"
            lines.append(
                f"{mark} {n:>6}  {verdict_words(b)} → {verdict_words(a)}"
                if b != a
                else f"{mark} {n:>6}  {verdict_words(b)} (unchanged)"
            )
    if result.changes:
        lines += ["", "Assessments that change:"]
        lines += [
            f"  {c.patient_key}  {wording.pathway_text(c.pathway)} {c.target}: {verdict_words(c.before)} → "
            f"{verdict_words(c.after)}  {c.evidence_href}"
            for c in result.changes
        ]
    return "\n".join(lines) + "\n"


def _changes_csv(result: WhatIf) -> str:
    import csv  # lazy
    import io  # lazy

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["patient", "pathway", "target", "baseline verdict", "candidate verdict", "evidence"])
    for c in result.changes:
        writer.writerow([c.patient_key, c.pathway, c.target, c.before, c.after, c.evidence_href])
    return out.getvalue()


def run_command(policy: str, baseline: str | None, now: str | None, format: str) -> None:
    """How every stored patient's verdicts would change under another policy."""
    import sys  # lazy

    import orjson  # lazy
    from rich.console import Console  # lazy
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn  # lazy

    from services.recommender.offline import InputError, parse_now  # lazy
    from services.recommender.policies import PolicyError  # lazy
    from shared.cli import NOTHING_DONE  # lazy
    from shared.db.session import make_engine, migrations_at_head  # lazy
    from shared.errors import ConfigError  # lazy
    from shared.settings import load_settings  # lazy

    def fail(message: str) -> typer.Exit:
        typer.echo(f"pinpoint whatif: {message}", err=True)
        return typer.Exit(code=NOTHING_DONE)

    if format not in ("text", "json", "csv"):
        raise fail("--format must be text, json or csv")
    try:
        settings = load_settings()
        candidate = Assessor.load(policy)
        base = Assessor.load(baseline or settings.policy)
        when = parse_now(now)
    except (ConfigError, PolicyError, InputError) as exc:
        raise fail(str(exc)) from None
    engine = make_engine(settings.database_url)
    try:
        if not migrations_at_head(engine):
            raise fail("the database is not at the current schema: run `pinpoint db upgrade`")
        console = Console(stderr=True)
        if console.is_terminal:
            columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn())
            with Progress(*columns, TimeRemainingColumn(), console=console) as bar:
                task = bar.add_task("judging patients", total=None)
                result = run_whatif(
                    engine,
                    base,
                    candidate,
                    when,
                    progress=lambda d, t: bar.update(task, completed=d, total=t),
                )
        else:
            result = run_whatif(engine, base, candidate, when)
    finally:
        engine.dispose()
    if format == "json":
        sys.stdout.write(orjson.dumps(result.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    elif format == "csv":
        sys.stdout.write(_changes_csv(result))
    else:
        sys.stdout.write(_matrix_text(result))


# ---------------------------------------------------------------------------------- page


router = APIRouter(tags=["whatif"])


@router.get("/whatif", response_class=HTMLResponse, dependencies=[Depends(require_api_token)])
def whatif_page(
    parts: RecommenderDep,
    policy: Annotated[str | None, Query()] = None,
    baseline: Annotated[str | None, Query()] = None,
) -> HTMLResponse:
    """Verdict changes over every stored patient between two built-in policies."""
    from services.recommender.policies import BUILTIN  # lazy
    from services.recommender.worklist.render import PAGE_HEADERS, render  # lazy
    from shared.db.models import utcnow  # lazy
    from shared.errors import InvalidInput  # lazy

    configured = parts.settings.policy
    default_candidate = next((b for b in BUILTIN if b != configured), BUILTIN[0])
    chosen = {"policy": policy or default_candidate, "baseline": baseline or configured}
    for name, value in chosen.items():
        if value not in BUILTIN and not (name == "baseline" and value == configured):
            names = ", ".join(BUILTIN)
            raise InvalidInput(f"{name}: not a built-in policy (one of {names})", code="value")
    result = None
    if policy:
        base = parts.assessor if chosen["baseline"] == configured else Assessor.load(chosen["baseline"])
        result = run_whatif(parts.engine, base, Assessor.load(chosen["policy"]), utcnow())
    html = render(
        "whatif.html.j2",
        builtin=[*BUILTIN, *([configured] if configured not in BUILTIN else [])],
        chosen=chosen,
        result=result,
        pathway_text=wording.pathway_text,
        verdict_words=verdict_words,
    )
    return HTMLResponse(html, headers=PAGE_HEADERS)
