"""structlog set-up: JSON in production, console in development, a correlation id per request.

Never log patient data: resource ids, codes, counts and timings only.
"""

from __future__ import annotations

import logging
import sys
import uuid
from contextvars import ContextVar
from typing import Any

import orjson
import structlog

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """The correlation id of the request or job being handled (passed on to upstream calls)."""
    return request_id_var.get()


def new_request_id() -> str:
    return uuid.uuid4().hex


def _add_request_id(_: object, __: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    rid = request_id_var.get()
    if rid is not None:
        event_dict.setdefault("request_id", rid)
    return event_dict


class _StderrLogger:
    """structlog's fast path: one write of the rendered line to the current ``sys.stderr`` (looked
    up per line, so a replaced stream is honoured), with the name ``add_logger_name`` reads."""

    def __init__(self, name: str = "pinpoint") -> None:
        self.name = name

    def msg(self, message: str) -> None:
        sys.stderr.write(message + "\n")

    log = debug = info = warn = warning = error = critical = exception = fatal = failure = msg


# Until configure_logging runs (tests, library use): structlog's defaults, but to stderr — stdout
# belongs to the CLI's output (JSON assessments, tables).
structlog.configure(logger_factory=_StderrLogger)


def _json(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """Our own loggers render straight to stderr (structlog's fast path: no stdlib LogRecord per
    line); stdlib loggers (uvicorn, alembic) go through a handler rendering the same format."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_json)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_request_id,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=_StderrLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Access logs carry raw paths (patient ids); our middleware logs route templates instead.
    logging.getLogger("uvicorn.access").disabled = True


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger whose lines carry ``logger=<name>``; lazy, so modules may create it at import."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
