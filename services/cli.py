"""The ``pinpoint`` command (CONTRACT §1): the command line's composition root.

Each command imports what it uses when it runs: ``pinpoint --help`` and ``pinpoint evaluate``
never load the web server, the database layer or the delivery loop (the imports inside the
commands below are that deliberate lazy loading).
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated

import typer

from services.ingest import cli as ingest_cli
from services.recommender import cli as recommender_cli
from shared.cli import engine_or_exit, fail, settings_or_exit
from shared.errors import ConfigError

if TYPE_CHECKING:
    from services.recommender.worker import DrainStats
    from services.recommender.writeback import DeliveryStats
    from shared.db.deadletters import Replayer
    from shared.settings import Settings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Pinpoint: confirm pain generators from FHIR data.",
    rich_markup_mode=None,  # plain help: rendering it with rich costs half a second of imports
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.", rich_markup_mode=None)
app.add_typer(db_app, name="db")


def _replayers() -> Mapping[str, Replayer]:
    from services.server import replayers  # lazy: only a replay of another service's kind needs it

    return replayers()


@app.callback()
def main(ctx: typer.Context) -> None:
    """Pinpoint: confirm pain generators from FHIR data."""
    ctx.obj = ingest_cli.CliParts(replayers=_replayers)


def _exit_zero(signum: int, frame: object) -> None:
    raise SystemExit(0)


@app.command()
def serve(
    role: Annotated[str, typer.Option(help="all | ingest | recommender | worker")] = "all",
    host: Annotated[str | None, typer.Option(help="bind address (default PINPOINT_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default PINPOINT_PORT)")] = None,
) -> None:
    """Serve the HTTP roles (and the worker) in one process."""
    import uvicorn  # lazy

    from services.server import Role, build_app, tune_gc  # lazy

    overrides: dict[str, object] = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = settings_or_exit(overrides)
    try:
        chosen = Role(role)
    except ValueError:
        raise fail(f"--role must be one of {', '.join(r.value for r in Role)}") from None
    try:
        settings.check_bind()
    except ConfigError as exc:
        raise fail(str(exc)) from None
    engine = engine_or_exit(settings)
    try:
        application = build_app(settings, chosen, engine)
    except ConfigError as exc:
        engine.dispose()
        raise fail(str(exc)) from None
    tune_gc()
    # uvicorn stops gracefully on SIGTERM, then raises the signal again with the handler it found
    # installed: this one, so the process exits 0 after the graceful stop instead of 143.
    signal.signal(signal.SIGTERM, _exit_zero)
    uvicorn.run(application, host=settings.host, port=settings.port, log_config=None, proxy_headers=False)


@app.command()
def worker(
    once: Annotated[bool, typer.Option("--once", help="evaluate every dirty patient, then exit")] = False,
) -> None:
    """Evaluate dirty patients: drain once and exit, or keep running."""
    import asyncio  # lazy

    from services.server import build_evaluation, tune_gc  # lazy

    settings = settings_or_exit()
    engine = engine_or_exit(settings)
    try:
        evaluation = build_evaluation(settings, engine)
    except ConfigError as exc:
        engine.dispose()
        raise fail(str(exc)) from None
    tune_gc()

    async def run() -> None:
        if not once:  # SIGTERM/SIGINT: a graceful stop (the patient in hand finishes), exit 0
            for sig in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(sig, evaluation.request_stop)
        try:
            if once:
                stats, delivered = await evaluation.once()
                _report_once(settings, stats, delivered)
            else:
                await evaluation.run()
        finally:
            await evaluation.aclose()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        evaluation.request_stop()
    finally:
        engine.dispose()


def _report_once(settings: Settings, stats: DrainStats, delivered: DeliveryStats) -> None:
    typer.echo(f"evaluated {stats.evaluated} patient(s): {stats.stored} stored, {stats.failed} failed")
    if settings.config.writeback is None:
        typer.echo("write-back not configured: suggestions kept locally")
        return
    typer.echo(
        f"delivered {delivered.handled} outbox entr{'y' if delivered.handled == 1 else 'ies'}:"
        f" {delivered.sent} sent, {delivered.retry} to retry, {delivered.parked} parked"
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations."""
    from shared.db.session import current_revision, make_engine, upgrade  # lazy

    settings = settings_or_exit()
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        typer.echo(f"database at revision {current_revision(engine)}")
    finally:
        engine.dispose()


# Commands owned by the services, registered here so `pinpoint` is one command.
app.command("evaluate")(recommender_cli.evaluate_command)
ingest_cli.register(app)
