"""structlog configuration: JSON lines with request and trace ids bound through contextvars."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog

# Levels that `tierline dev` still shows on the terminal when its logs go to a file.
_CONSOLE_LEVELS = frozenset({"warning", "error", "critical", "exception", "fatal"})


class _TeeLogger:
    """Every line to a file; warnings and worse to stderr too (structlog calls it by level)."""

    def __init__(self, sink: TextIO) -> None:
        self._sink = sink

    def __getattr__(self, level: str) -> Any:
        console = level in _CONSOLE_LEVELS

        def write(message: str) -> None:
            self._sink.write(message + "\n")
            self._sink.flush()
            if console:
                print(message, file=sys.stderr, flush=True)

        return write


def configure_logging(level: str = "INFO", fmt: str = "json", file: Path | None = None) -> None:
    """Route structlog and stdlib logging as one JSON object per line.

    To stderr; or, with `file`, everything to that file and only warnings and worse to stderr.
    """
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        # Plain tracebacks: rich ones print local variables, and locals hold keys and secrets.
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    factory: Any = structlog.PrintLoggerFactory(sys.stderr)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file is not None:
        sink = file.open("a", encoding="utf-8", buffering=1)
        tee = _TeeLogger(sink)
        factory = lambda *_: tee  # noqa: E731
        handlers[0].setLevel(logging.WARNING)
        handlers.append(logging.StreamHandler(sink))
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(
        level=level.upper(), handlers=handlers, format="%(name)s %(message)s", force=True
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
