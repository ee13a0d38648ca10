"""What a short ``hil run`` imports: the start-up is most of a one-step run's time, so the
modules a run does not use (structlog when nothing is logged, the agent) stay unimported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = '[script]\nname = "one"\n\n[[step]]\nop = "in"\nport = "ch1.page"\n'
PROBE = ("import sys\nfrom hil.cli import main\ncode = main(sys.argv[1:])\n"
         "print(code, 'structlog' in sys.modules, 'hil.agent.server' in sys.modules)\n")


def run(tmp_path: Path, *options: str) -> tuple[list[str], str]:
    path = tmp_path / "one.toml"
    path.write_text(SCRIPT, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-c", PROBE, "run", "-b", "sim", *options, str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    return proc.stdout.splitlines()[-1].split(), proc.stderr


def test_a_quiet_run_imports_neither_structlog_nor_the_agent(tmp_path: Path) -> None:
    (code, structlog, agent), err = run(tmp_path, "-q")
    assert (code, structlog, agent, err) == ("0", "False", "False", "")


def test_a_verbose_run_still_logs_its_events(tmp_path: Path) -> None:
    """structlog is imported at the first event the level lets through, configured as asked."""
    (code, structlog, _), err = run(tmp_path, "-v", "--log-format", "json")
    assert (code, structlog) == ("0", "True")
    assert '"event": "run_start"' in err and '"event": "run_end"' in err
