"""structlog set-up for the command line: human console lines or JSON, to stderr.

The set-up is applied when the first event at its level is logged (:func:`hil.log.defer`):
a quiet command never imports structlog. What it depends on (the stderr of the moment, whether
that is a terminal) is taken now, as an immediate set-up would.
"""

from __future__ import annotations

import logging
import sys

from hil.log import defer


def configure(fmt: str = "console", verbosity: int = 0) -> None:
    level = max(logging.WARNING - 10 * verbosity, logging.DEBUG)
    stderr = sys.stderr
    colors = fmt != "json" and stderr.isatty()

    def apply() -> None:
        import structlog

        renderer: structlog.typing.Processor
        if fmt == "json":
            renderer = structlog.processors.JSONRenderer()
        else:
            renderer = structlog.dev.ConsoleRenderer(colors=colors)
        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso"),
                renderer,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_factory=structlog.PrintLoggerFactory(file=stderr),
            cache_logger_on_first_use=False,
        )

    defer(level, apply)
