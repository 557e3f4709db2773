"""Ingest commands of ``pinpoint``: ``import PATH...``, ``dead-letters list|show|replay`` and
``subscriptions sync|status``.

Each command imports what it uses when it runs (the ``# lazy`` imports): ``pinpoint --help`` and the
other commands do not pay for the database layer, the bulk loader or the subscription manager.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shared.cli import NOTHING_DONE, PARTLY, engine_or_exit, print_table, settings_or_exit
from shared.errors import PinpointError
from shared.humanize import plural

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from shared.db.deadletters import Replayer
    from shared.settings import Settings

dead_letters_app = typer.Typer(
    no_args_is_help=True, help="Inspect and replay rejected payloads.", rich_markup_mode=None
)


#: dead_letter.id is an INTEGER column (32-bit on PostgreSQL); deadletters/replay.py MAX_ROW_ID.
MAX_DEAD_LETTER_ID = 2**31 - 1


def _redrawn(bar: Progress, task: TaskID) -> Callable[[int], None]:
    """Advance ``task`` by a number of bytes, redrawing ``bar`` at most ten times a second."""
    last = 0.0

    def advance(n: int) -> None:
        nonlocal last
        bar.advance(task, n)
        now = time.monotonic()
        if now - last >= 0.1:
            bar.refresh()
            last = now

    return advance


def import_command(
    paths: Annotated[list[Path], typer.Argument(help="NDJSON files, Bundle JSON files, or folders of them")],
    source: Annotated[str, typer.Option(help="the source the data belongs to")] = "default",
    batch_size: Annotated[int, typer.Option(min=1, max=10000, help="resources per transaction")] = 1000,
    jobs: Annotated[
        int,
        typer.Option(min=0, max=64, help="worker processes on PostgreSQL (0: one per CPU)"),
    ] = 0,
) -> None:
    """Load FHIR Bundles and Bulk Data NDJSON into the store; prints kept / dropped / rejected."""
    from rich.console import Console  # lazy

    from services.ingest.bulk import expand, import_paths, quiet_collector  # lazy

    missing = [p for p in paths if not p.exists()]
    if missing:
        typer.echo(f"pinpoint: no such file or folder: {missing[0]}", err=True)
        raise typer.Exit(code=NOTHING_DONE)
    settings = settings_or_exit(quiet=True)
    try:
        src = settings.config.source(source)
    except KeyError:
        typer.echo(f"pinpoint: source {source!r} is not configured", err=True)
        raise typer.Exit(code=NOTHING_DONE) from None
    engine = engine_or_exit(settings)
    quiet_collector()  # this process only imports from here on
    jobs = jobs or os.cpu_count() or 1
    console = Console(stderr=True)
    files = expand(paths)
    total = sum(f.stat().st_size for f in files)
    try:
        if console.is_terminal:
            from rich.progress import (  # lazy: a bar only on a terminal
                BarColumn,
                DownloadColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn())
            # Redrawn by the import's own thread (no refresh thread: the import may fork workers).
            bar = Progress(
                *columns, TransferSpeedColumn(), TimeRemainingColumn(), console=console, auto_refresh=False
            )
            with bar:
                task = bar.add_task("importing", total=total)
                report = import_paths(
                    engine,
                    src,
                    files,
                    batch_size=batch_size,
                    progress=_redrawn(bar, task),
                    jobs=jobs,
                )
        else:
            report = import_paths(engine, src, files, batch_size=batch_size, jobs=jobs)
    finally:
        engine.dispose()
    t = report.tally
    counts = ("kept", "dropped", "unresolved", "rejected")
    rows = [[rtype, *(str(row[k]) for k in counts)] for rtype, row in t.rows()]
    rows.append(["total", *(str(t.total(k)) for k in counts)])
    print_table(
        f"pinpoint import: {plural(report.files, 'file')} into source {src.id}",
        ("type", "kept", "dropped", "unresolved patient", "rejected"),
        rows,
    )
    rejected = t.total("rejected")
    typer.echo(
        f"{report.resources} resources in {report.seconds:.1f} s ({report.rate:,.0f}/s); "
        f"{plural(report.dead_letters, 'dead letter')}",
        err=not sys.stdout.isatty(),
    )
    if rejected or report.dead_letters:
        typer.echo(
            f"pinpoint: {plural(rejected, 'resource')} rejected, "
            f"{plural(report.dead_letters, 'payload')} kept as dead letters: "
            "see `pinpoint dead-letters list`",
            err=True,
        )
        raise typer.Exit(code=PARTLY)


def dl_list(
    status: Annotated[str | None, typer.Option(help="new | replayed | failed")] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many")] = 50,
) -> None:
    """The most recent dead letters (tab-separated when piped)."""
    from shared.db.deadletters import list_dead_letters  # lazy
    from shared.db.session import session_scope  # lazy

    settings = settings_or_exit(quiet=True)
    engine = engine_or_exit(settings)
    with session_scope(engine) as session:
        rows = list_dead_letters(session, status=status, limit=limit)
    engine.dispose()
    print_table(
        None,
        ("id", "created", "source", "kind", "status", "replays", "reason"),
        [
            [
                str(r.id),
                r.created_at.isoformat(timespec="seconds"),
                r.source,
                r.kind,
                r.status,
                str(r.replay_count),
                r.reason[:80],
            ]
            for r in rows
        ],
    )


def dl_show(
    dead_letter_id: Annotated[int, typer.Argument(help="dead letter id", min=1, max=MAX_DEAD_LETTER_ID)],
) -> None:
    """One dead letter: reason, context and the payload verbatim."""
    import orjson  # lazy

    from shared.db.models import DeadLetter  # lazy
    from shared.db.session import session_scope  # lazy

    settings = settings_or_exit(quiet=True)
    engine = engine_or_exit(settings)
    with session_scope(engine) as session:
        row = session.get(DeadLetter, dead_letter_id)
    engine.dispose()
    if row is None:
        typer.echo(f"pinpoint: no dead letter {dead_letter_id}", err=True)
        raise typer.Exit(code=PARTLY)
    meta = row.model_dump(exclude={"payload"}, mode="json")
    typer.echo(orjson.dumps(meta, option=orjson.OPT_INDENT_2).decode())
    typer.echo("--- payload ---")
    sys.stdout.flush()
    sys.stdout.buffer.write(row.payload)
    sys.stdout.buffer.write(b"\n")


@dataclass(frozen=True)
class CliParts:
    """What the command's composition root (``services/cli.py``) hands ingest's commands: the
    replayers of other services' dead-letter kinds (loaded only when a replay needs them)."""

    replayers: Callable[[], Mapping[str, Replayer]] = dict


def dl_replay(
    ctx: typer.Context,
    dead_letter_id: Annotated[int, typer.Argument(help="dead letter id", min=1, max=MAX_DEAD_LETTER_ID)],
) -> None:
    """Run a dead letter through intake again; exit 1 when it still fails."""
    import orjson  # lazy

    from services.ingest.deadletters.replay import replay  # lazy

    settings = settings_or_exit(quiet=True)
    engine = engine_or_exit(settings)
    try:
        parts = ctx.find_object(CliParts) or CliParts()
        outcome = replay(engine, settings, dead_letter_id, parts.replayers())
    except PinpointError as exc:
        typer.echo(f"pinpoint: {exc.diagnostics}", err=True)
        raise typer.Exit(code=PARTLY) from None
    finally:
        engine.dispose()
    typer.echo(orjson.dumps(outcome.as_json()).decode())
    if outcome.status != "replayed":
        raise typer.Exit(code=PARTLY)


def register(app: typer.Typer) -> None:
    """Add ingest's commands to ``app`` (whose callback puts a :class:`CliParts` in ``ctx.obj``)."""
    app.command("import")(import_command)
    dead_letters_app.command("list")(dl_list)
    dead_letters_app.command("show")(dl_show)
    dead_letters_app.command("replay")(dl_replay)
    app.add_typer(dead_letters_app, name="dead-letters")
    subscriptions_app.command("sync")(subscriptions_sync)
    subscriptions_app.command("status")(subscriptions_status)
    app.add_typer(subscriptions_app, name="subscriptions")


# ---------------------------------------------------------------- subscriptions (issue 6)

subscriptions_app = typer.Typer(
    no_args_is_help=True, help="Pinpoint's FHIR Subscriptions on its sources.", rich_markup_mode=None
)


def _subscription_sources(settings: Settings, source: str | None) -> list[object]:
    sources = [s for s in settings.config.sources if s.fhir_base_url is not None]
    if source is not None:
        sources = [s for s in sources if s.id == source]
        if not sources:
            typer.echo(f"pinpoint: source {source!r} is not configured with a fhir_base_url", err=True)
            raise typer.Exit(code=NOTHING_DONE)
    return list(sources)


def subscriptions_sync(
    source: Annotated[str | None, typer.Option(help="only this source")] = None,
) -> None:
    """Create or repair Pinpoint's Subscriptions on each source (idempotent)."""
    import asyncio  # lazy

    from services.ingest.subscriptions.manage import sync  # lazy
    from shared.fhir.sources import SourceClients  # lazy
    from shared.settings import Source  # lazy

    settings = settings_or_exit(quiet=True)
    chosen = [s for s in _subscription_sources(settings, source) if isinstance(s, Source)]
    engine = engine_or_exit(settings)

    async def run() -> int:
        clients = SourceClients()
        failures = 0
        try:
            for src in chosen:
                try:
                    results = await sync(settings, engine, src, clients.get(src))
                except PinpointError as exc:
                    typer.echo(f"{src.id}: failed: {exc}", err=True)
                    failures += 1
                    continue
                if not results:
                    typer.echo(f"{src.id}: subscriptions.mode is {src.subscriptions.mode}: nothing managed")
                for r in results:
                    criteria = r.criteria if len(r.criteria) <= 70 else r.criteria[:67] + "..."
                    typer.echo(f"{src.id}\t{r.subscription}\t{r.action}\t{r.status}\t{criteria}")
        finally:
            await clients.aclose()
        return failures

    try:
        failures = asyncio.run(run())
    finally:
        engine.dispose()
    if failures:
        raise typer.Exit(code=PARTLY)


def subscriptions_status(
    source: Annotated[str | None, typer.Option(help="only this source")] = None,
) -> None:
    """Report each subscription's state and lag (seconds since it was last heard from)."""
    from services.ingest.subscriptions.manage import status  # lazy

    settings = settings_or_exit(quiet=True)
    engine = engine_or_exit(settings)
    try:
        rows, counts = status(engine, source)
    finally:
        engine.dispose()
    table_rows = []
    for r in rows:
        criteria = (r.criteria or "")[:60]
        if r.subscription == "(source)":
            criteria = f"reconciled up to {r.watermark or 'never'}"
        table_rows.append(
            [
                r.source,
                r.subscription,
                r.status,
                "" if r.last_event_number is None else str(r.last_event_number),
                "" if r.last_seen_seconds is None else f"{r.last_seen_seconds:.0f}",
                "" if r.heartbeat_period is None else str(r.heartbeat_period),
                str(r.gaps_detected),
                criteria,
            ]
        )
    columns = ("source", "subscription", "status", "last event", "lag s", "heartbeat s", "gaps")
    print_table(None, (*columns, "criteria / topic"), table_rows)
    pending = counts.get("pending", 0) + counts.get("working", 0)
    typer.echo(f"inbox: {pending} waiting, {counts.get('failed', 0)} failed, {counts.get('done', 0)} done")
