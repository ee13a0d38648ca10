"""A transfer script run from a Python test, through the runner's API (the plugin also collects
every ``*.toml`` script as a test item of its own: ``pytest scripts``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil.backends.base import Backend
from hil.runner import run_script
from hil.script import load_script

HERE = Path(__file__).parent
pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_channel_registers_script(hil_backend: Backend) -> None:
    result = await run_script(load_script(HERE / "scripts" / "channel-registers.toml"), hil_backend)
    assert result.status == "passed", result.error or [o.describe() for o in result.failures]
    assert len(result.observations) == 5
