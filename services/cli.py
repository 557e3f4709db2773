"""The ``pinpoint`` command (CONTRACT §1): the command line's composition root.

Each command imports what it uses when it runs: ``pinpoint --help`` and ``pinpoint evaluate``
never load the web server, the database layer or the delivery loop (the imports inside the
commands below are that deliberate lazy loading).
"""

from __future__ import annotations

import gc
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated

import typer

from services.ingest import cli as ingest_cli
from services.recommender import cli as recommender_cli
from shared.cli import EXIT_CODES_HELP, NOTHING_DONE, engine_or_exit, fail, plain_help_types, settings_or_exit
from shared.errors import ConfigError
from shared.humanize import plural
from shared.paths import default_database_path

if TYPE_CHECKING:
    import socket

    import uvicorn

    from services.recommender.worker import DrainStats
    from services.recommender.writeback import DeliveryStats
    from shared.db.deadletters import Replayer  # lazy
    from shared.settings import Settings  # lazy

plain_help_types()

app = typer.Typer(
    no_args_is_help=True,
    add_completion=True,
    help="Pinpoint: confirm pain generators from FHIR data.",
    epilog=(
        f"Data: unless PINPOINT_DATABASE_URL says otherwise, the database is {default_database_path()}."
        f" {EXIT_CODES_HELP}"
    ),
    rich_markup_mode=None,  # plain help: rendering it with rich costs half a second of imports
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.", rich_markup_mode=None)
app.add_typer(db_app, name="db")


def _replayers() -> Mapping[str, Replayer]:
    from services.server import replayers  # lazy: only a replay of another service's kind needs it

    return replayers()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # lazy

    try:
        return version("pinpoint")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"pinpoint {_version()}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Pinpoint: confirm pain generators from FHIR data."""
    ctx.obj = ingest_cli.CliParts(replayers=_replayers)


#: Young-generation threshold for a long-running process (``serve``, ``worker``): one CDS call
#: allocates thousands of containers (parsed prefetch, facts, cards); at CPython's default (700)
#: that meant several collections per call and a full collection every few hundred calls.
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Once the process has imported and built everything: move the startup heap (~140 k
    objects: modules, models, routes) out of the collector's sight and collect less often.
    Measured on the CDS benchmark: full collections of ~85 ms each, a quarter of the CPU under
    load and the source of the latency tail, are gone (Python docs, gc.freeze)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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

    from services.server import Role, build_app  # lazy

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
    config = uvicorn.Config(
        application, host=settings.host, port=settings.port, log_config=None, proxy_headers=False
    )
    server = _announcing_server(config, _open_these(settings, chosen.value))
    # uvicorn stops gracefully on SIGTERM, then raises the signal again with the handler it found
    # installed: this one, so the process exits 0 after the graceful stop instead of 143.
    signal.signal(signal.SIGTERM, _exit_zero)
    server.run()
    if not server.started:
        raise typer.Exit(code=NOTHING_DONE)


def _open_these(settings: Settings, role: str) -> str:
    """What ``serve`` prints once it answers: where it listens, where its data is, what to open."""
    from sqlalchemy.engine import make_url  # lazy

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base = f"http://{host}:{settings.port}"
    database = make_url(settings.database_url).render_as_string(hide_password=True)
    lines = [f"pinpoint {_version()} ({role}) ready on port {settings.port}; database {database}"]
    pages = [("landing page", "/"), ("worklist", "/patients")] if role in ("all", "recommender") else []
    pages += [("API docs", "/docs"), ("health", "/readyz")]
    lines += [f"  {label:<14}{base}{path}" for label, path in pages]
    return "\n".join(lines)


def _announcing_server(config: uvicorn.Config, message: str) -> uvicorn.Server:
    """uvicorn's server, printing ``message`` once it is listening."""
    import uvicorn  # lazy

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                typer.echo(message, err=True)

    return Server(config)


@app.command()
def worker(
    once: Annotated[bool, typer.Option("--once", help="evaluate every dirty patient, then exit")] = False,
) -> None:
    """Evaluate dirty patients: drain once and exit, or keep running."""
    import asyncio  # lazy

    from services.recommender.evaluation import Evaluation  # lazy: not the web server's modules

    settings = settings_or_exit()
    engine = engine_or_exit(settings)
    try:
        evaluation = Evaluation.build(settings, engine)
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
    typer.echo(
        f"evaluated {plural(stats.evaluated, 'patient')}: {stats.stored} stored, {stats.failed} failed"
        f" in {stats.seconds:.1f} s ({stats.cpu_seconds:.1f} s CPU)"
    )
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
app.command("whatif")(recommender_cli.whatif_command)
feedback_app = typer.Typer(
    no_args_is_help=True, help="The clinicians' feedback on Pinpoint's cards.", rich_markup_mode=None
)
feedback_app.command("report")(recommender_cli.feedback_report_command)
app.add_typer(feedback_app, name="feedback")


@app.command()
def outcomes(
    since: Annotated[str | None, typer.Option("--since", help="only procedures on or after DATE")] = None,
    format: Annotated[str, typer.Option("--format", help="text, json or csv")] = "text",
) -> None:
    """What the definitive procedures achieved across the practice, per pathway."""
    from datetime import UTC, date, datetime  # lazy

    from services.recommender.assessor import Assessor  # lazy
    from services.recommender.outcomes.summary import practice_summary, render  # lazy

    if format not in ("text", "json", "csv"):
        raise fail("--format must be text, json or csv")
    try:
        start = date.fromisoformat(since) if since else None
    except ValueError:
        raise fail(f"--since: not a date (YYYY-MM-DD): {since!r}") from None
    settings = settings_or_exit()
    engine = engine_or_exit(settings)
    try:
        assessor = Assessor.configured(settings.policy)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    try:
        summary = practice_summary(engine, assessor, datetime.now(UTC), start)
    finally:
        engine.dispose()
    typer.echo(render(summary, format), nl=False)


app.add_typer(recommender_cli.policy_app, name="policy")
ingest_cli.register(app)
