"""structlog set-up: JSON in production, console in development, a correlation id per request.

Never log patient data: resource ids, codes, counts and timings only. Library loggers that write
request URLs (paths and query strings carry patient ids: ``GET …/Patient/{id}``,
``…/Procedure?patient={id}``) are held at WARNING, uvicorn's access log is off, and every line a
library logs through the standard ``logging`` module has its URLs cut to scheme and host.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
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


def _json(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (psycopg), or SQLite's error name; else ``None``."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
    return code if isinstance(code, str) else None


def describe_exception(exc: BaseException) -> str:
    """``module.Class`` and, for a database error, its SQLSTATE: what may be logged of an error.
    Its message is never logged: a driver quotes the offending value (a patient's address line
    around a NUL, a duplicate key) and the code that raised it may quote its input."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    code = sqlstate_of(exc)
    return f"{name} [SQLSTATE {code}]" if code else name


def render_exception(exc: BaseException, limit: int = 8) -> str:
    """A traceback without messages: each exception of the chain as :func:`describe_exception`
    and the frames (file, line, function, source line) that raised it."""
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen and len(chain) < limit:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, "The above exception was the direct cause of the following:"
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, "During handling of the above, another exception occurred:"
        else:
            current = None
    parts: list[str] = []
    for i, (item, _) in enumerate(reversed(chain)):
        if i:
            parts.append(chain[len(chain) - i][1])
        frames = "".join(traceback.format_list(traceback.extract_tb(item.__traceback__)))
        parts.append(
            f"Traceback (most recent call last):\n{frames}{describe_exception(item)} (message not logged)"
        )
    return "\n\n".join(parts)


def _exception_without_messages(
    _: object, __: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """Replaces structlog's ``format_exc_info``: the traceback is rendered by
    :func:`render_exception`, so no exception text (which may quote patient data) is logged."""
    exc_info = event_dict.pop("exc_info", None)
    if not exc_info:
        return event_dict
    if exc_info is True:
        exc_info = sys.exc_info()
    exc = exc_info if isinstance(exc_info, BaseException) else exc_info[1]
    if exc is not None:
        event_dict["exception"] = render_exception(exc)
    return event_dict


# Until configure_logging runs (tests, library use): close to structlog's defaults, but to stderr
# — stdout belongs to the CLI's output (JSON assessments, tables) — and without exception text.
structlog.configure(
    processors=[
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
        _exception_without_messages,
        structlog.dev.ConsoleRenderer(colors=False),
    ],
    logger_factory=_StderrLogger,
)


#: Loggers of libraries that log request URLs at INFO/DEBUG (httpx: one line per request).
QUIET_LIBRARIES = ("httpx", "httpcore", "urllib3", "hpack", "h2", "h11", "websockets", "uvicorn.access")
_URL = re.compile(r"\b((?:https?|wss?)://[^/\s'\"<>?#]+)[/?#][^\s'\"<>]*")
_PATH = re.compile(r"(?<![\w/:])/[\w.\-~%]*[/?][^\s'\"<>]*")


def redact_urls(text: str) -> str:
    """``https://host/R4/Patient/123?x=y`` → ``https://host/…``; a bare path or query (``/fhir/
    Patient/123``, ``/x?patient=…``) → ``/…``."""
    return _PATH.sub("/…", _URL.sub(r"\1/…", text))


class RedactUrls(logging.Filter):
    """Cuts URLs, paths and query strings out of a library's log record (message and arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a library's malformed format string: keep its template only
            message = str(record.msg)
        record.msg = redact_urls(message)
        record.args = None
        return True


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """Our own loggers render straight to stderr (structlog's fast path: no stdlib LogRecord per
    line); stdlib loggers (uvicorn, alembic) go through a handler rendering the same format."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_json)
        if fmt == "json"
        # plain tracebacks: rich's would print every frame's local variables (payloads, patients)
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_request_id,
    ]
    structlog.configure(
        processors=[*shared, _exception_without_messages, renderer],
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
                _exception_without_messages,
                renderer,
            ],
        )
    )
    handler.addFilter(RedactUrls())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Request URLs carry patient ids: WARNING whatever PINPOINT_LOG_LEVEL says.
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # Access logs carry raw paths (patient ids); our middleware logs route templates instead.
    logging.getLogger("uvicorn.access").disabled = True


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger whose lines carry ``logger=<name>``; lazy, so modules may create it at import."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
