"""The recommender's commands of ``pinpoint``: ``evaluate`` (CONTRACT §1)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def evaluate_command(
    paths: Annotated[list[Path], typer.Argument(help="FHIR Bundles, resources or NDJSON files (or folders)")],
    policy: Annotated[
        str, typer.Option("--policy", help="cms-lcd, consensus-2020 or a YAML file")
    ] = "cms-lcd",
    now: Annotated[
        str | None, typer.Option("--now", help="evaluation instant (ISO 8601); default: now")
    ] = None,
    format: Annotated[str, typer.Option("--format", help="json or text")] = "json",
) -> None:
    """Evaluate FHIR data offline and print the assessment document."""
    from services.recommender.offline import InputError, run  # lazy
    from services.recommender.policies import PolicyError  # lazy

    try:
        out = run(paths, policy, now, format)
    except (InputError, PolicyError) as exc:
        typer.echo(f"pinpoint evaluate: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(out, nl=False)
