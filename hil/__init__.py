"""lpc-hil: an asyncio hardware-in-the-loop bridge to the PC/AT ISA/LPC 8237A DMA controller."""

import logging as _logging
import sys as _sys

import structlog as _structlog

__version__ = "0.1.0"

# structlog's unconfigured default prints every level to stdout, which would mix debug events
# into a script's own output. Until the application configures structlog itself (the CLI does,
# see hil.logconfig), library events at WARNING and above go to stderr.
if not _structlog.is_configured():
    _structlog.configure(
        wrapper_class=_structlog.make_filtering_bound_logger(_logging.WARNING),
        logger_factory=lambda *_: _structlog.PrintLogger(file=_sys.stderr),  # stderr as it is at each event
        cache_logger_on_first_use=False,
    )
