"""The ``pinpoint`` command (CONTRACT §1)."""

from __future__ import annotations

from typing import Annotated

import typer

from shared.errors import ConfigError
from shared.logging import configure_logging
from shared.settings import Settings, load_settings

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Pinpoint: confirm pain generators from FHIR data."
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db_app, name="db")


def settings_or_exit(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        typer.echo(f"pinpoint: {exc}", err=True)
        raise typer.Exit(code=2) from None


@app.command()
def serve(
    role: Annotated[str, typer.Option(help="all | ingest | recommender | worker")] = "all",
    host: Annotated[str | None, typer.Option(help="bind address (default PINPOINT_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default PINPOINT_PORT)")] = None,
) -> None:
    """Serve the HTTP roles (and the worker) in one process."""
    import uvicorn

    from services.server import Role, build_app, prepare_database, tune_gc

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = settings_or_exit(**overrides)
    try:
        chosen = Role(role)
    except ValueError:
        typer.echo(f"pinpoint: --role must be one of {', '.join(r.value for r in Role)}", err=True)
        raise typer.Exit(code=2) from None
    configure_logging(settings.log_level, settings.log_format)
    try:
        settings.check_bind()
        engine = prepare_database(settings)
    except ConfigError as exc:
        typer.echo(f"pinpoint: {exc}", err=True)
        raise typer.Exit(code=2) from None
    application = build_app(settings, chosen, engine)
    tune_gc()
    uvicorn.run(application, host=settings.host, port=settings.port, log_config=None, proxy_headers=False)


@app.command()
def worker(
    once: Annotated[bool, typer.Option("--once", help="evaluate every dirty patient, then exit")] = False,
) -> None:
    """Evaluate dirty patients: drain once and exit, or keep running."""
    from services.recommender.worker import run_cli
    from services.server import prepare_database, tune_gc

    settings = settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    try:
        engine = prepare_database(settings)
    except ConfigError as exc:
        typer.echo(f"pinpoint: {exc}", err=True)
        raise typer.Exit(code=2) from None
    tune_gc()
    try:
        stats, delivered = run_cli(settings, engine, once=once)
    except ConfigError as exc:
        typer.echo(f"pinpoint: {exc}", err=True)
        raise typer.Exit(code=2) from None
    finally:
        engine.dispose()
    if once:
        typer.echo(f"evaluated {stats.evaluated} patient(s): {stats.stored} stored, {stats.failed} failed")
        if settings.config.writeback is None:
            typer.echo("write-back not configured: suggestions kept locally")
        else:
            typer.echo(
                f"delivered {delivered.handled} outbox entr{'y' if delivered.handled == 1 else 'ies'}:"
                f" {delivered.sent} sent, {delivered.retry} to retry, {delivered.parked} parked"
            )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations."""
    from shared.db.session import current_revision, make_engine, upgrade

    settings = settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        typer.echo(f"database at revision {current_revision(engine)}")
    finally:
        engine.dispose()


# Commands owned by the services, registered here so `pinpoint` is one command.
from services.ingest import cli as _ingest_cli  # noqa: E402
from services.recommender import delivery as _delivery  # noqa: E402,F401  (replays parked deliveries)
from services.recommender.evaluate import evaluate_command  # noqa: E402

app.command("evaluate")(evaluate_command)
_ingest_cli.register(app)
