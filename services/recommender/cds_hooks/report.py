"""The feedback loop across replicas: per pathway × policy version × verdict, how many cards
were shown, accepted and overridden, and the override reasons — counted in the database (the
audit rows of returned cards and the feedback rows), so every replica reports the same figures.
``pinpoint feedback report`` prints it; ``GET /feedback`` shows it."""

from __future__ import annotations

import csv
import io
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
import typer
from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session

from services.recommender.engine import wording
from shared.db.models import AuditLog, CdsFeedback
from shared.db.session import session_scope
from shared.web import RuntimeDep, require_api_token

Key = tuple[str, str, str, str]  # pathway, policy, policy version, verdict

_AUDIT: Any = AuditLog.__table__  # type: ignore[attr-defined]
_FEEDBACK: Any = CdsFeedback.__table__  # type: ignore[attr-defined]


@dataclass
class Line:
    pathway: str
    policy: str
    version: str
    verdict: str
    shown: int = 0
    accepted: int = 0
    overridden: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def answered(self) -> int:
        return self.accepted + self.overridden

    @property
    def override_ratio(self) -> float | None:
        return self.overridden / self.answered if self.answered else None

    def as_json(self) -> dict[str, Any]:
        return {
            "pathway": self.pathway,
            "policy": self.policy,
            "policyVersion": self.version,
            "verdict": self.verdict,
            "shown": self.shown,
            "accepted": self.accepted,
            "overridden": self.overridden,
            "overrideRatio": None if self.override_ratio is None else round(self.override_ratio, 4),
            "overrideReasons": [{"reason": r, "count": n} for r, n in self.reasons.most_common()],
        }


def _text(column: Any, *path: str) -> Any:
    return sa.func.coalesce(column[path].as_string(), "unknown")


def feedback_report(session: Session) -> list[Line]:
    """Every (pathway, policy, version, verdict) with cards or feedback, most cards first."""
    lines: dict[Key, Line] = {}

    def line(key: tuple[Any, ...]) -> Line:
        k: Key = (str(key[0]), str(key[1]), str(key[2]), str(key[3]))
        return lines.setdefault(k, Line(*k))

    audit, feedback = _AUDIT.c, _FEEDBACK.c
    card_key = [_text(audit.detail, p) for p in ("pathway", "policy", "policyVersion", "verdict")]
    cards = sa.select(*card_key, sa.func.count()).where(audit.action == "cds.card").group_by(*card_key)
    for row in session.execute(cards):
        line(tuple(row[:4])).shown += int(row[4])
    body = feedback.body
    fb_key = [_text(body, "pinpoint", p) for p in ("pathway", "policy", "policyVersion", "verdict")]
    reason = sa.func.coalesce(
        body[("overrideReason", "reason", "display")].as_string(),
        body[("overrideReason", "reason", "code")].as_string(),
        "no reason given",
    )
    answers = sa.select(*fb_key, feedback.outcome, reason, sa.func.count()).group_by(
        *fb_key, feedback.outcome, reason
    )
    for row in session.execute(answers):
        item = line(tuple(row[:4]))
        outcome, why, n = row[4], row[5], int(row[6])
        if outcome == "accepted":
            item.accepted += n
        elif outcome == "overridden":
            item.overridden += n
            item.reasons[str(why)] += n
    return sorted(lines.values(), key=lambda x: (-x.shown, x.pathway, x.policy, x.version, x.verdict))


def _pathway(code: str) -> str:
    if code.startswith("alert:"):
        return "Alert: " + wording.ALERTS.get(code.removeprefix("alert:"), code.removeprefix("alert:"))
    return wording.pathway_text(code)


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f} %"


COLUMNS = ("pathway", "policy", "verdict", "shown", "accepted", "overridden", "override ratio", "reasons")


def _cells(line: Line) -> list[str]:
    return [
        _pathway(line.pathway),
        f"{line.policy} {line.version}",
        wording.VERDICTS.get(line.verdict, line.verdict),
        str(line.shown),
        str(line.accepted),
        str(line.overridden),
        _ratio(line.override_ratio),
        "; ".join(f"{r} ({n})" for r, n in line.reasons.most_common()),
    ]


def as_csv(lines: list[Line]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "pathway",
            "policy",
            "policy version",
            "verdict",
            "shown",
            "accepted",
            "overridden",
            "override ratio",
            "override reasons",
        ]
    )
    for x in lines:
        writer.writerow(
            [
                x.pathway,
                x.policy,
                x.version,
                x.verdict,
                x.shown,
                x.accepted,
                x.overridden,
                "" if x.override_ratio is None else f"{x.override_ratio:.4f}",
                "; ".join(f"{r} ({n})" for r, n in x.reasons.most_common()),
            ]
        )
    return out.getvalue()


# ---------------------------------------------------------------------------------- command


def run_command(format: str) -> None:
    """``pinpoint feedback report``: the report in text, JSON or CSV."""
    from shared.cli import NOTHING_DONE, print_table  # lazy
    from shared.db.session import make_engine  # lazy
    from shared.errors import ConfigError  # lazy
    from shared.settings import load_settings  # lazy

    if format not in ("text", "json", "csv"):
        typer.echo("pinpoint: --format must be text, json or csv", err=True)
        raise typer.Exit(code=NOTHING_DONE)
    try:
        settings = load_settings()
    except ConfigError as exc:
        typer.echo(f"pinpoint: {exc}", err=True)
        raise typer.Exit(code=NOTHING_DONE) from None
    engine = make_engine(settings.database_url)
    try:
        with session_scope(engine) as session:
            lines = feedback_report(session)
    except sa.exc.SQLAlchemyError as exc:
        typer.echo(
            f"pinpoint: cannot read the database ({type(exc).__name__}); run `pinpoint db upgrade`", err=True
        )
        raise typer.Exit(code=NOTHING_DONE) from None
    finally:
        engine.dispose()
    if format == "json":
        sys.stdout.write(
            orjson.dumps([x.as_json() for x in lines], option=orjson.OPT_INDENT_2).decode() + "\n"
        )
    elif format == "csv":
        sys.stdout.write(as_csv(lines))
    elif not lines:
        typer.echo("no cards shown and no feedback received yet")
    else:
        print_table("CDS cards and clinicians' feedback", COLUMNS, [_cells(x) for x in lines])


# ---------------------------------------------------------------------------------- page


router = APIRouter(tags=["feedback"])


@router.get("/feedback", response_class=HTMLResponse, dependencies=[Depends(require_api_token)])
def feedback_page(runtime: RuntimeDep) -> Response:
    """Cards shown, accepted and overridden per pathway, policy version and verdict."""
    from services.recommender.worklist.render import PAGE_HEADERS, render  # lazy

    with session_scope(runtime.engine) as session:
        lines = feedback_report(session)
    html = render(
        "feedback.html.j2",
        rows=[_cells(x) for x in lines],
        columns=COLUMNS,
        shown=sum(x.shown for x in lines),
        accepted=sum(x.accepted for x in lines),
        overridden=sum(x.overridden for x in lines),
    )
    return HTMLResponse(html, headers=PAGE_HEADERS)
