"""What ``hil`` imports for one command (issue 16: a one-step ``hil run`` is mostly start-up).

The command line imports only the chosen subcommand's module, and a ``sim:`` run only the
simulator's device models its URL asks for. These are behaviour checks on ``sys.modules`` in a
fresh interpreter, not timings; and the lazily built command line must read exactly as the
whole one built at once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hil.cli import COMMANDS, Subcommands, build_parser

SCRIPT = '[script]\nname = "one"\n\n[[step]]\nop = "in"\nport = "ch1.page"\n'
PROBE = """
import contextlib, io, json, sys
from hil.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(sys.argv[1:])
watched = {"structlog", "xml.etree.ElementTree"}
modules = sorted(m for m in sys.modules if m.startswith("hil") or m in watched)
print(json.dumps({"code": code, "out": out.getvalue(), "modules": modules}))
"""


def hil_modules(*argv: str) -> tuple[int, str, set[str]]:
    """(exit status, stdout, the hil modules and the watched others imported) of ``hil ARGV``
    in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout.splitlines()[-1])
    return record["code"], record["out"], set(record["modules"])


def subcommands(parser: argparse.ArgumentParser) -> Subcommands:
    return next(a for a in parser._actions if isinstance(a, Subcommands))


@pytest.fixture
def one_step(tmp_path: Path) -> Path:
    path = tmp_path / "one.toml"
    path.write_text(SCRIPT, encoding="utf-8")
    return path


def test_a_sim_run_imports_only_the_run_command(one_step: Path) -> None:
    code, out, modules = hil_modules("run", "-q", "-b", "sim", str(one_step))
    assert code == 0 and "PASSED" in out
    assert sorted(m for m in modules if m.startswith("hil.cli.")) == ["hil.cli.common", "hil.cli.run"]
    assert not {m for m in modules if m.startswith(("hil.agent", "hil.labgrid", "hil.vm", "hil.qemu", "hil.diff",
                                                      "hil.workers", "hil.doctor", "hil.probe", "hil.waves"))}


DEVICE_MODELS = {"hil.sim.fdc", "hil.sim.sb16", "hil.sim.ecp", "hil.sim.trace"}


def test_a_plain_sim_run_imports_no_device_model(one_step: Path) -> None:
    code, _, modules = hil_modules("run", "-q", "-b", "sim", str(one_step))
    assert code == 0
    assert "hil.sim.machine" in modules and not modules & DEVICE_MODELS
    # nor what only some scripts or reports use: the buffer allocator (zone buffers), JUnit's XML
    assert not modules & {"hil.buffers", "xml.etree.ElementTree", "structlog"}


def test_a_run_with_zone_buffers_and_a_report_imports_what_they_need(tmp_path: Path) -> None:
    path = tmp_path / "buf.toml"
    path.write_text(SCRIPT + '\n[buffers.buf]\nsize = 512\nchannel = 1\n', encoding="utf-8")
    code, _, modules = hil_modules("run", "-q", "-b", "sim", "--junit", str(tmp_path / "r.xml"), str(path))
    assert code == 0
    assert {"hil.buffers", "xml.etree.ElementTree"} <= modules
    assert (tmp_path / "r.xml").read_text(encoding="utf-8").startswith("<testsuites")


@pytest.mark.parametrize(("options", "wanted"), [("floppy=generate", {"hil.sim.fdc"}), ("sb16=1", {"hil.sim.sb16"}),
                                                 ("ecp=1", {"hil.sim.ecp"}), ("ecp_dma=1", {"hil.sim.ecp"})])
def test_a_url_that_asks_for_a_device_gets_its_model(options: str, wanted: set[str], one_step: Path) -> None:
    """``ecp_dma`` without ``ecp`` still reaches the ECP options' check (a one-line error)."""
    code, out, modules = hil_modules("run", "-q", "--json", "-b", f"sim:?{options}", str(one_step))
    assert modules & DEVICE_MODELS == wanted
    if options == "ecp_dma=1":
        assert code == 2 and "option ecp_dma needs ecp=1" in out
    else:
        assert code == 0 and json.loads(out)[0]["status"] == "passed"


def test_help_imports_no_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    proc = subprocess.run([sys.executable, "-c", "import sys\nfrom hil.cli import main\ntry:\n    main(['--help'])\n"
                           "except SystemExit:\n    pass\nprint(sorted(m for m in sys.modules if m.startswith('hil.')))"],
                          capture_output=True, text=True, timeout=120, check=True)
    listed = proc.stdout.splitlines()[-1]
    assert "'hil.cli.run'" not in listed and "'hil.backends'" not in listed, listed
    assert all(name in proc.stdout for name, _, _ in COMMANDS)


def test_the_lazy_command_line_reads_as_the_whole_one() -> None:
    """``hil --help``, every command's --help and its options: the same text and actions whether
    the command's parser was built at once or when chosen."""
    eager, lazy = build_parser(), build_parser(lazy=True)
    assert lazy.format_help() == eager.format_help()
    lazy_sub, eager_sub = subcommands(lazy), subcommands(eager)
    assert list(lazy_sub.choices) == list(eager_sub.choices) == [name for name, _, _ in COMMANDS]
    for name in lazy_sub.choices:
        lazy_sub.load(name)
        mine, theirs = lazy_sub.choices[name], eager_sub.choices[name]
        assert mine.format_help() == theirs.format_help(), name
        assert [a.option_strings or a.dest for a in mine._actions] == [a.option_strings or a.dest for a in theirs._actions]
        assert mine.prog == theirs.prog == f"hil {name}"


def test_a_chosen_command_gets_its_real_parser() -> None:
    """Parsing loads the chosen command only; its defaults (the function it runs) are there."""
    parser = build_parser(lazy=True)
    sub = subcommands(parser)
    args = parser.parse_args(["peek", "0x0f"])
    assert (args.command, args.port.number, args.width) == ("peek", 0x0F, 8)
    assert args.func.__module__ == "hil.cli.registers"
    assert sub._pending.keys() == {name for name, module, _ in COMMANDS if module != "registers"}


def test_every_listed_command_is_added_by_its_module() -> None:
    """A table entry whose module does not add that command would leave a placeholder parser."""
    sub = subcommands(build_parser())
    assert not sub._pending
    assert [name for name, parser in sub.choices.items() if parser is sub.unloaded] == []
