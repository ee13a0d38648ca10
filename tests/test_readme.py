"""The README's Python examples and set-up commands stay true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("code", BLOCKS, ids=[f"example{i + 1}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code: str, tmp_path: Path):
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_readme_demo_command_runs():
    """The first set-up command's demo: the data matches and TC was reached (exit 0)."""
    proc = subprocess.run([sys.executable, "-m", "hil", "demo"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "terminal count: yes; residue 0 bytes" in proc.stdout
    assert "match what the device sent" in proc.stdout
    assert "DMA1: status" in proc.stdout and "page file:" in proc.stdout


def test_library_logs_go_to_stderr_at_warning_until_configured(tmp_path: Path):
    """A script using the library sees only its own output on stdout (structlog unconfigured)."""
    code = (
        "import structlog, hil\n"
        "log = structlog.get_logger('t')\n"
        "log.debug('quiet'); log.info('quiet'); log.warning('loud')\n"
        "print('data')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout == "data\n"
    assert "loud" in proc.stderr and "quiet" not in proc.stderr
