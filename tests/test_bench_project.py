"""The example bench project (issue 17 item 4) runs as its README says, on the simulator and on
QEMU: its conftest, the script collected as an item, the script run from Python, and the FDC
test with ``hil_dma`` (skipped, naming the capability, where there is no floppy controller)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hil.backends.qemu.process import qemu_available
from hil.testing import require

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "examples" / "bench-project"


def run_project(*backends: str) -> subprocess.CompletedProcess[str]:
    args = [a for url in backends for a in ("--hil-backend", url)]
    return subprocess.run([sys.executable, "-m", "pytest", str(PROJECT), "-v", "-rs", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HIL_BACKEND": ""})


def test_on_the_simulator() -> None:
    proc = run_project("sim:?floppy=generate", "sim")
    assert proc.returncode == 0, proc.stdout[-3000:]
    out = proc.stdout
    assert "5 passed, 1 skipped" in out
    for line in ("test_floppy.py::test_read_sector[sim:?floppy=generate] PASSED",
                 "scripts/channel-registers.toml::channel-registers[sim] PASSED",
                 "test_script.py::test_channel_registers_script[sim] PASSED"):
        assert line in out, line
    assert "backend sim lacks capability 'fdc'" in out


@pytest.mark.needs("qemu")
def test_on_qemu() -> None:
    ok, why = qemu_available()
    require(ok, "qemu-system-x86_64 (QEMU 7.2 or later)", why)
    proc = run_project("qemu:?floppy=generate")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "3 passed" in proc.stdout
    assert "test_floppy.py::test_read_sector[qemu:?floppy=generate] PASSED" in proc.stdout
