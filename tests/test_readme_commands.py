"""Every command line in README.md and docs/*.md runs as written, in the order the page gives.

Lines are taken from the ``sh`` blocks (backslash continuations joined, trailing ``# comments``
dropped; a comment that says ``exit N`` is the status the line must end with) and run with bash in a
scratch copy of ``configs/``, the set-up lines in the checkout itself, with this interpreter's
``bin/`` first on PATH so ``python`` and ``hil`` are the ones under test. A line that cannot run on
a build machine (it needs a Linux target's ``/dev/port``, or a serial device) must be listed in
``NOT_RUN`` with the reason; a listed line that is no longer in the docs fails too, so the list
cannot go stale. Background servers the pages start (``hil agent``) are started the same way and
stopped at the end; a device path the agent prints (``/dev/pts/N``) is put into the lines that name
one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hil.backends.qemu import qemu_available
from hil.testing import require

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: lines that need something a build machine does not have, with the reason
NOT_RUN = {
    "python -m pip install -e '.[test]' && python -m pytest -q":
        "the test command itself: .ci/run runs it (test_ci_runs_readmes_test_command)",
    "sudo hil agent --io 'devport:?allow=/etc/hil/allow.toml' --listen 'serial:///dev/ttyS0?baud=3000000'":
        "a Linux target with /dev/port and a UART",
    "sudo hil doctor 'devport:?allow=/etc/hil/allow.toml'": "a Linux target's allow-list in /etc/hil",
    "sudo hil regs -v -b 'devport:?allow=/etc/hil/allow.toml&dry_run=1'": "a Linux target's allow-list in /etc/hil",
    "sudo hil regs -b 'devport:?allow=/etc/hil/allow.toml'": "a Linux target with /dev/port",
    "sudo hil probe 'devport:?allow=/etc/hil/allow.toml'": "a Linux target with /dev/port",
    "sudo hil agent --io 'devport:?allow=/etc/hil/allow.toml' --allow /etc/hil/allow.toml "
    "--listen tcp://0.0.0.0:7777 --token SECRET": "a Linux target with /dev/port",
    "python -m pip wheel --no-deps -w dist .": "builds a wheel of the checkout for a board (fetches hatchling); "
                                               "the install at the top is the tested path",
    "sudo python3 -m pip install lpc_hil-0.1.0-py3-none-any.whl": "a board: installs into its system Python",
    "sudo hil doctor 'devport:?window=0x10000-0x90000&devices=fdc&irq=pic'": "a board with an FDC and /dev/port",
    "sudo hil agent --io 'devport:?window=0x10000-0x90000&devices=fdc&irq=pic' "
    "--listen 'serial:///dev/ttyS0?baud=115200'": "a board with an FDC, /dev/port and a UART",
    "hil run -b 'agent+serial:///dev/ttyUSB0?baud=115200' configs/scripts/floppy-read.toml":
        "a USB-serial adapter wired to a board's agent",
    **dict.fromkeys([
        "hil doctor 'labgrid:?place=board-a'",
        "hil run -b 'labgrid:?place=board-a' configs/scripts/mem-to-mem.toml",
        "hil diff configs/scripts/mem-to-mem.toml -b 'labgrid:?place=board-a' -b 'labgrid:?place=board-b' -b sim",
        "hil run --place tag=ich10 configs/scripts/mem-to-mem.toml",
        "hil labgrid places",
        "hil labgrid release board-a",
    ], "a labgrid coordinator with places board-a and board-b: tests/test_labgrid_bench.py runs these on a real one"),
}


#: files a line reads that an earlier documented step on a bench would have made
PREPARED = {
    "bench/floppy.jsonl": ["hil", "run", "configs/scripts/floppy-read.toml", "-b", "sim:?floppy=generate",
                           "--journal", "bench/floppy.jsonl", "-q"],
}


@dataclass(frozen=True)
class Line:
    page: str
    text: str
    exit: int = 0  #: the exit status the line's comment documents ("... exit 1"), else 0

    @property
    def background(self) -> bool:
        return self.text.startswith("hil agent ")

    @property
    def needs_qemu(self) -> bool:
        return "qemu:" in self.text

    @property
    def needs_vm(self) -> bool:
        return "vm:" in self.text or self.text.startswith("hil vm ")

    @property
    def setup(self) -> bool:
        return self.text.startswith("python -m pip install")


def doc_lines() -> list[Line]:
    out: list[Line] = []
    for page in PAGES:
        for block in re.findall(r"```(?:sh|bash)\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            joined = re.sub(r"\\\n\s*", "", block)
            for raw in joined.splitlines():
                text, _, comment = raw.partition(" # ")
                text = text.strip()
                documented = re.search(r"\bexit (?:status )?(\d+)\b", comment)
                if text and not text.startswith("#"):
                    out.append(Line(page.name, re.sub(r"\s+", " ", text), int(documented[1]) if documented else 0))
    return out


LINES = doc_lines()


def test_the_pages_have_command_lines() -> None:
    assert sum(line.page == "README.md" for line in LINES) >= 15


def test_not_run_list_is_current() -> None:
    texts = {line.text for line in LINES}
    stale = [t for t in NOT_RUN if t not in texts]
    assert not stale, f"NOT_RUN names lines no page has any more: {stale}"


def test_ci_runs_readmes_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    test_cmd = next(line.text for line in LINES if line.page == "README.md" and "pytest" in line.text)
    assert test_cmd in {line.text for line in LINES if line.page == "README.md"}
    assert test_cmd in (ROOT / ".ci" / "run").read_text(encoding="utf-8"), (
        f"README's test command {test_cmd!r} is not what .ci/run runs")
    assert readme.index(test_cmd) < readme.index("## "), "the test command is one of the two set-up commands at the top"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("HIL_BACKEND", None)
    return env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "configs", work / "configs")
    for name, argv in PREPARED.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "hil", *argv[1:]], cwd=work, env=_env(), check=True,
                       capture_output=True, timeout=60)
    yield work


def _run(line: Line, cwd: Path, pty: str | None) -> subprocess.CompletedProcess[str]:
    text = line.text
    if pty is not None:
        text = re.sub(r"/dev/pts/\d+", pty, text)
    return subprocess.run(["bash", "-c", text], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


def test_every_documented_command_line_runs(workdir: Path) -> None:
    """One test, in page order: later lines rely on earlier ones (an agent started, a journal
    written), exactly as a reader following the page would."""
    if any(line.needs_qemu for line in LINES if line.text not in NOT_RUN):
        ok, why = qemu_available()
        require(ok, "qemu-system-x86_64", why)
    if any(line.needs_vm for line in LINES if line.text not in NOT_RUN):
        from hil.errors import VmKernelError
        from hil.vm.kernel import find_kernel

        try:
            find_kernel()
        except VmKernelError as e:
            require(False, "a kernel for the vm: backend", str(e))
    servers: list[subprocess.Popen[str]] = []
    pty: str | None = None
    ran = 0
    try:
        for line in LINES:
            if line.text in NOT_RUN:
                continue
            if line.background:
                proc = subprocess.Popen(["bash", "-c", f"exec {line.text}"], cwd=workdir, env=_env(),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
                assert proc.stdout is not None
                first = proc.stdout.readline().strip()  # the agent prints where it listens once it does
                assert first, f"{line.page}: {line.text!r} printed nothing: {proc.stderr.read() if proc.stderr else ''}"
                if first.startswith("/dev/pts/"):
                    pty = first
                servers.append(proc)
                ran += 1
                continue
            cwd = ROOT if line.setup else workdir
            proc_done = _run(line, cwd, pty)
            want = line.exit
            assert proc_done.returncode == want, (
                f"{line.page}: {line.text!r} exited {proc_done.returncode}, documented {want}\n"
                f"stdout: {proc_done.stdout[-2000:]}\nstderr: {proc_done.stderr[-2000:]}")
            assert "Traceback" not in proc_done.stderr, f"{line.page}: {line.text!r}\n{proc_done.stderr[-3000:]}"
            ran += 1
    finally:
        for proc in servers:
            os.killpg(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + 5
        for proc in servers:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert ran == sum(line.text not in NOT_RUN for line in LINES)
