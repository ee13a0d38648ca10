"""Test helpers for suites that need optional facilities (QEMU, a serial port, a real board).

Locally such a test skips with the reason; in CI, where ``HIL_REQUIRE_ALL=1`` is set, a missing
facility is a failure, so a skip can never hide a test that was supposed to run.
"""

from __future__ import annotations

import os

REQUIRE_ALL_ENV = "HIL_REQUIRE_ALL"


def require_all() -> bool:
    return os.environ.get(REQUIRE_ALL_ENV, "").strip() not in ("", "0", "false", "no")


def require(available: bool, what: str, hint: str = "") -> None:
    """Skip (or, under ``HIL_REQUIRE_ALL=1``, fail) the calling test unless ``available``."""
    if available:
        return
    import pytest

    reason = f"needs {what}" + (f" ({hint})" if hint else "")
    if require_all():
        pytest.fail(f"{reason}, and {REQUIRE_ALL_ENV}=1 forbids skipping it", pytrace=False)
    pytest.skip(reason)
