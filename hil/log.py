"""Library loggers that leave structlog's configuration to the application.

structlog's unconfigured default prints every level to stdout, which would mix debug events into
a script's own output; configuring structlog at import would take that choice away from the
application that imports us. So a library logger decides at each event: once the application
(or the ``hil`` command, see :mod:`hil.logconfig`) has configured structlog, events go where it
said; until then only WARNING and above are rendered, to stderr as it is at that moment.

structlog itself (a tenth of a second of imports) is imported at the first event that is
rendered: until then an event below the level in force is dropped here, without it. Where
structlog is already imported, every event goes through it, as before.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

#: the level of each logging method of structlog's filtering loggers
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
          "error": logging.ERROR, "exception": logging.ERROR, "critical": logging.CRITICAL,
          "fatal": logging.CRITICAL}

#: the configuration :func:`hil.logconfig.configure` asked for before structlog was imported:
#: (its least level, the function that applies it), applied at the first event it renders
_pending: tuple[int, Callable[[], None]] | None = None
_fallback: Any = None


def defer(level: int, apply: Callable[[], None]) -> None:
    """Apply ``apply`` (a structlog configuration rendering ``level`` and above) at the first
    event that reaches ``level``, or now where structlog is already imported."""
    global _pending
    if "structlog" in sys.modules:
        _pending = None
        apply()
    else:
        _pending = (level, apply)


class _Stderr:
    """structlog's rendered line to whatever ``sys.stderr`` is now (a test may replace it)."""

    def msg(self, message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    debug = info = warning = warn = error = critical = exception = fatal = msg


def _fallback_logger() -> Any:
    global _fallback
    if _fallback is None:
        import structlog

        _fallback = structlog.wrap_logger(
            _Stderr(),
            wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso"),
                structlog.dev.ConsoleRenderer(colors=False),
            ],
            cache_logger_on_first_use=False,
        )
    return _fallback


def _drop(*args: object, **kw: object) -> None:
    """An event below the level in force, structlog not imported: nothing to render."""


class LibraryLogger:
    """A named logger that follows the application's structlog configuration once there is one."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, method: str) -> Any:
        global _pending
        if "structlog" not in sys.modules:
            level = LEVELS.get(method)
            if level is not None and level < (logging.WARNING if _pending is None else _pending[0]):
                return _drop
        import structlog

        if _pending is not None:  # configured by the command before structlog was imported
            apply, _pending = _pending[1], None
            if not structlog.is_configured():  # else the application configured it since
                apply()
        if structlog.is_configured():
            return getattr(structlog.get_logger(self._name), method)
        return getattr(_fallback_logger(), method)


def get_logger(name: str) -> LibraryLogger:
    return LibraryLogger(name)
