"""The README's Python examples and set-up commands stay true."""

from __future__ import annotations

import json
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
    """A script using the library sees only its own output on stdout: until it configures
    structlog, the library's own events at WARNING and above go to stderr, the rest nowhere."""
    code = (
        "from hil.log import get_logger\n"
        "log = get_logger('hil.t')\n"
        "log.debug('quiet'); log.info('quiet'); log.warning('loud', port=0x1234)\n"
        "print('data')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout == "data\n"
    assert "loud" in proc.stderr and "port=4660" in proc.stderr and "quiet" not in proc.stderr


def test_library_logs_follow_the_applications_configuration(tmp_path: Path):
    """Once the application configures structlog, library events go where it says."""
    code = (
        "import io, json, structlog\n"
        "buf = io.StringIO()\n"
        "structlog.configure(processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],\n"
        "                    logger_factory=structlog.PrintLoggerFactory(file=buf))\n"
        "from hil.log import get_logger\n"
        "get_logger('hil.t').info('seen', n=1)\n"
        "print(buf.getvalue().strip())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"event": "seen", "n": 1, "level": "info"}
    assert proc.stderr == ""


def test_importing_the_library_leaves_structlog_unconfigured() -> None:
    """The application decides how to log: importing every module of ``hil`` configures nothing."""
    code = (
        "import pkgutil, importlib, structlog, hil\n"
        "for m in pkgutil.walk_packages(hil.__path__, 'hil.'):\n"
        "    if not m.name.startswith('hil.cli') and m.name != 'hil.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "print(structlog.is_configured())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "False\n"


def run_example(code: str, tmp_path: Path) -> str:
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def commented_results(code: str) -> list[str]:
    """What the example's comments say each print shows (``print(x)  # 0x4: TC ...`` -> ``0x4``)."""
    found = [re.search(r"#\s*(\S+?)(?::|\s|$)", line) for line in code.splitlines() if "print(" in line]
    assert found and all(found), code
    return [m.group(1) for m in found if m]


def test_first_example_prints_what_its_comments_say(tmp_path: Path):
    assert run_example(BLOCKS[0], tmp_path).splitlines() == commented_results(BLOCKS[0])


def test_sim_handle_of_the_first_example_attaches_the_same_device(tmp_path: Path):
    """The sentence after the first example: on sim: ``be.machine.attach(...)`` (a contract kept
    for model-level work) does what the example's portable DevAttach op does."""
    after = README.read_text(encoding="utf-8").split(BLOCKS[0], 1)[1]
    snippet = re.search(r"`(be\.machine\.attach\(.*?\))`", after)
    attach = re.search(r"^( *)await be\.execute\(\[DevAttach\(.*$", BLOCKS[0], re.M)
    assert snippet and attach and "from hil.ops import DevAttach\n" in BLOCKS[0]
    variant = BLOCKS[0].replace(attach.group(0), attach.group(1) + snippet.group(1)).replace(
        "from hil.ops import DevAttach\n", "from hil.sim.devices import Source\n")
    assert "DevAttach" not in variant and "be.machine.attach(" in variant
    assert run_example(variant, tmp_path).splitlines() == commented_results(BLOCKS[0])
