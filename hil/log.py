"""Library loggers that leave structlog's configuration to the application.

structlog's unconfigured default prints every level to stdout, which would mix debug events into
a script's own output; configuring structlog at import would take that choice away from the
application that imports us. So a library logger decides at each event: once the application
(or the ``hil`` command, see :mod:`hil.logconfig`) has configured structlog, events go where it
said; until then only WARNING and above are rendered, to stderr as it is at that moment.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


class _Stderr:
    """structlog's rendered line to whatever ``sys.stderr`` is now (a test may replace it)."""

    def msg(self, message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    debug = info = warning = warn = error = critical = exception = fatal = msg


_FALLBACK = structlog.wrap_logger(
    _Stderr(),
    wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    processors=[
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
        structlog.dev.ConsoleRenderer(colors=False),
    ],
    cache_logger_on_first_use=False,
)


class LibraryLogger:
    """A named logger that follows the application's structlog configuration once there is one."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, method: str) -> Any:
        if structlog.is_configured():
            return getattr(structlog.get_logger(self._name), method)
        return getattr(_FALLBACK, method)


def get_logger(name: str) -> LibraryLogger:
    return LibraryLogger(name)
