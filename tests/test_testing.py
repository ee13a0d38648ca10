"""hil.testing.require: skip locally, fail under HIL_REQUIRE_ALL=1 (the project's CI rule)."""

from __future__ import annotations

import pytest

from hil.testing import REQUIRE_ALL_ENV, require


def test_available_does_nothing(monkeypatch):
    monkeypatch.setenv(REQUIRE_ALL_ENV, "1")
    require(True, "anything")


def test_missing_skips_locally(monkeypatch):
    monkeypatch.delenv(REQUIRE_ALL_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"needs qemu-system-x86_64 \(apt-get install"):
        require(False, "qemu-system-x86_64", "apt-get install qemu-system-x86")


@pytest.mark.parametrize("value", ["1", "yes", "true"])
def test_missing_fails_when_everything_is_required(monkeypatch, value):
    monkeypatch.setenv(REQUIRE_ALL_ENV, value)
    with pytest.raises(pytest.fail.Exception, match="forbids skipping"):
        require(False, "a serial port")
