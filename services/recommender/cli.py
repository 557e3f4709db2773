"""The recommender's commands of ``pinpoint``: ``evaluate``, ``whatif`` and ``feedback report``
(the command bodies live with their features: ``offline``, ``whatif``, ``cds_hooks.report``)."""

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
        str | None,
        typer.Option(
            "--now",
            help=(
                "the date (and time) to judge the record at, ISO 8601 such as 2025-03-10 or "
                "2025-03-10T08:00:00Z: waiting periods, 'months of pain' and 'within 12 months' "
                "count up to it; default: the current time (give it to replay a past record)"
            ),
        ),
    ] = None,
    format: Annotated[str, typer.Option("--format", help="json or text")] = "json",
) -> None:
    """Evaluate FHIR files offline (no database, no server) and print each patient's assessment.

    Exit 0: evaluated; 1: evaluated, but some input was ignored (named on stderr and in the
    document's "ignored"); 2: an unreadable input or an invalid policy."""
    from services.recommender.offline import InputError, run  # lazy
    from services.recommender.policies import PolicyError  # lazy

    try:
        out, code = run(paths, policy, now, format)
    except (InputError, PolicyError) as exc:
        typer.echo(f"pinpoint evaluate: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(out, nl=False)
    if code:
        typer.echo(f"pinpoint evaluate: some input was ignored (exit {code})", err=True)
        raise typer.Exit(code=code)


def whatif_command(
    policy: Annotated[
        str, typer.Option("--policy", help="the candidate policy: cms-lcd, consensus-2020 or a YAML file")
    ],
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="the policy to compare with (default: PINPOINT_POLICY)")
    ] = None,
    now: Annotated[
        str | None, typer.Option("--now", help="judge at this date (ISO 8601); default: now")
    ] = None,
    format: Annotated[str, typer.Option("--format", help="text, json, or csv (one row per change)")] = "text",
) -> None:
    """How every stored patient's verdicts would change under another policy."""
    from services.recommender.whatif import run_command  # lazy

    run_command(policy, baseline, now, format)


def feedback_report_command(
    format: Annotated[str, typer.Option("--format", help="text, json or csv")] = "text",
) -> None:
    """Cards shown, accepted and overridden (with the reasons) per pathway, policy version and
    verdict, counted over every replica's records in the database."""
    from services.recommender.cds_hooks.report import run_command  # lazy

    run_command(format)


policy_app = typer.Typer(
    no_args_is_help=True, help="Policies: thresholds and their sources.", rich_markup_mode=None
)


@policy_app.command("show")
def policy_show(
    name: Annotated[str, typer.Argument(help="cms-lcd, consensus-2020 or a YAML file")],
) -> None:
    """Print a policy's resolved thresholds, each with the public source it cites."""
    from services.recommender.policies import PolicyError, load_policy  # lazy
    from services.recommender.policies.describe import describe  # lazy

    try:
        policy = load_policy(name)
    except PolicyError as exc:
        typer.echo(f"pinpoint policy show: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(describe(policy), nl=False)


@policy_app.command("check")
def policy_check(
    file: Annotated[str, typer.Argument(help="a policy YAML file (or a built-in name)")],
) -> None:
    """Validate a policy file: known keys (with "did you mean"), types, ranges, a public source
    for every value. Exit 0 when valid, 2 naming the file and key when not."""
    from services.recommender.policies import PolicyError, load_policy  # lazy

    try:
        policy = load_policy(file)
    except PolicyError as exc:
        typer.echo(f"pinpoint policy check: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    cited = sum(1 for params in policy.pathways.values() for v in params.values() if v is not None)
    typer.echo(
        f"{file}: valid — policy {policy.id} version {policy.version}, {cited} pathway values, "
        f"{len(policy.sources)} sources"
    )
