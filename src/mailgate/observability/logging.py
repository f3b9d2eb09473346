"""Structured logs: one JSON object per line (or text for humans), request id bound per request.

Standard-library loggers (uvicorn, sqlalchemy, alembic) are routed through the same renderer, so an
operator's log pipeline sees one format.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

import structlog

NOISY_LOGGERS = ("uvicorn.access", "sqlalchemy.engine", "alembic.runtime.migration", "mail.log")
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


def _add_request_id(_logger: object, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    rid = request_id_var.get()
    if rid is not None:
        event.setdefault("request_id", rid)
    return event


def configure_logging(fmt: str = "json", level: str = "info") -> None:
    """mailgate's own loggers render straight to stderr; standard-library records are rendered by the
    same processors through a logging handler. (Routing our lines through the standard library too cost
    a tenth of an API request: a record, a handler lock and a formatter per line.)"""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    rendering: list[structlog.types.Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if fmt == "json"
        else [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]  # it renders tracebacks itself
    )
    threshold = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[_add_logger_name, *shared, *rendering],
        logger_factory=_writer,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(threshold)
    # per-request and per-statement lines that mailgate logs better itself; "mail.log" is aiosmtpd's,
    # which writes every SMTP command of every session (a fifth of a submission's cost)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("uvicorn.error").propagate = True


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger whose lines say ``"logger": name``, as the standard library's do. It stays a lazy
    proxy until its first line: modules make theirs at import, before ``configure_logging`` runs, and a
    logger bound then would keep structlog's defaults (debug level, console lines on stdout)."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's plain writer, remembering the name ``get_logger`` gave (its factory argument)."""

    def __init__(self, file: TextIO, name: str | None) -> None:
        super().__init__(file)
        self.name = name


def _writer(*args: Any) -> _NamedWriteLogger:
    return _NamedWriteLogger(sys.stderr, args[0] if args and isinstance(args[0], str) else None)


def _add_logger_name(logger: object, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    name = getattr(logger, "name", None)
    if name:
        event.setdefault("logger", name)
    return event
