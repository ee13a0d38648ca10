"""The ``qemu:`` backend itself: a QEMU PC it starts, owns and stops, speaking qtest over a unix
socket QEMU connects to (docs/reference/qemu-qtest.md §2). The process rules live in
:mod:`~hil.backends.qemu.process`, the program's translation in :mod:`~hil.backends.qemu.translate`,
settling and IRQ waits in :mod:`~hil.backends.qemu.settle`; this class ties them to the
:class:`~hil.backends.base.Backend` interface."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from hil import oserrors, streams
from hil.allowlist import AllowList
from hil.backends import BackendURL
from hil.backends.base import Backend, Capabilities, Capability
from hil.backends.qemu.config import QemuConfig, parse_config
from hil.backends.qemu.firmware import floppy_image, halt_firmware
from hil.backends.qemu.process import (
    BINARY_ENV,
    DEFAULT_BINARY,
    INSTALL_HINT,
    LIVE,
    MIN_VERSION,
    OWNER_FILE,
    WORKDIR_PREFIX,
    QemuNotFoundError,
    QemuStartError,
    QemuVersionError,
    die_with_parent,
    find_binary,
    probe_version,
    stop_process,
    sweep_stale_workdirs,
)
from hil.backends.qemu.settle import settle_on, wait_irq as wait_irq_line
from hil.backends.qemu.translate import RUNNABLE_OPS, SIM_DEVICE_OPS, check_program, irq_lines, run_program
from hil.backends.qtest import IrqEvent, QemuExitedError, QtestClient
from hil.errors import BackendNotOpenError
from hil.log import get_logger
from hil.ops import IrqLines, Op, Result, WaitIrq

log = get_logger("hil.qemu")


def from_url(url: BackendURL) -> QemuBackend:
    return QemuBackend(url.raw, parse_config(url))


class QemuBackend(Backend):
    """A QEMU PC this backend starts, owns and stops. ``.pid``, ``.floppy_path``, IRQ tracking."""

    scheme = "qemu"
    OPS = RUNNABLE_OPS + SIM_DEVICE_OPS  #: Settle natively; device ops reach its own, clearer refusal

    def __init__(self, url: str = "qemu:", config: QemuConfig | None = None) -> None:
        super().__init__(url)
        self.config = config or QemuConfig()
        self.allowlist = AllowList(self.config.ports(), (range(0, self.config.mem),))
        self.workdir: Path | None = None
        self.floppy_path: Path | None = None
        self.log_path: Path | None = None
        self.version: tuple[int, ...] | None = None
        self.binary: str | None = None
        self.startup_s: float | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._server: asyncio.AbstractServer | None = None
        self._client: QtestClient | None = None
        self._log_file: BinaryIO | None = None

    # --- life cycle ---------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def command_line(self, sock: str, bios: str) -> list[str]:
        """The QEMU invocation (docs/reference/qemu-qtest.md §2)."""
        cfg = self.config
        argv = [self.binary or DEFAULT_BINARY, "-machine", "pc", "-display", "none", "-nodefaults",
                "-serial", "none", "-monitor", "none", "-parallel", "none",
                "-m", f"{cfg.mem >> 20}M", "-qtest-log", "none", "-qtest", f"unix:{sock}"]
        argv += ["-S"] if cfg.cpu == "stopped" else ["-bios", bios]
        if self.floppy_path is not None:
            image = str(self.floppy_path).replace(",", ",,")  # QEMU's option syntax: a comma is doubled
            argv += ["-drive", f"if=floppy,index=0,file={image},format=raw"]
        if cfg.sb16:
            argv += ["-audiodev", "none,id=snd0", "-device", "sb16,audiodev=snd0"]
        return argv + list(cfg.args)

    async def _open(self) -> None:
        cfg = self.config
        binary = find_binary(cfg.binary)
        if binary is None:
            raise QemuNotFoundError(f"qemu: {cfg.binary or os.environ.get(BINARY_ENV) or DEFAULT_BINARY} "
                                    f"not found; {INSTALL_HINT}")
        version = await probe_version(binary)
        if version is None:
            raise QemuNotFoundError(f"qemu: {binary} --version did not report a version; {INSTALL_HINT}")
        if version[:2] < MIN_VERSION:
            raise QemuVersionError(f"qemu: {binary} is QEMU {'.'.join(map(str, version))}; the qemu backend "
                                   f"needs {'.'.join(map(str, MIN_VERSION))} or later; {INSTALL_HINT}")
        self.binary, self.version = binary, version
        t0 = time.perf_counter()
        sweep_stale_workdirs()
        try:
            with self._start_step(f"cannot create a private directory in {tempfile.gettempdir()}"):
                self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
                (self.workdir / OWNER_FILE).write_text(str(os.getpid()))
            await self._start(t0)
        except BaseException:
            await self._shutdown()
            raise

    def _write_files(self, workdir: Path) -> Path:
        """The firmware and the generated floppy image; blocking (1.44 MB), so run in a thread."""
        bios = workdir / "halt.bin"
        bios.write_bytes(halt_firmware())
        if self.config.floppy == "generate":
            assert self.floppy_path is not None
            self.floppy_path.write_bytes(floppy_image())
        return bios

    async def _start(self, t0: float) -> None:
        cfg = self.config
        assert self.workdir is not None
        if cfg.floppy == "generate":
            self.floppy_path = self.workdir / "floppy.img"
        elif cfg.floppy:
            self.floppy_path = Path(cfg.floppy)
        with self._start_step(f"cannot write the firmware{' and floppy image' if cfg.floppy == 'generate' else ''} "
                              f"in {self.workdir}"):
            bios = await asyncio.to_thread(self._write_files, self.workdir)
        sock = str(self.workdir / "qtest.sock")
        self.log_path = Path(cfg.log) if cfg.log else self.workdir / "qemu.log"
        connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future())

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if connected.done():
                writer.close()  # a second connection is not QEMU's: refuse it
                return
            connected.set_result((reader, writer))

        with self._start_step(f"cannot listen on the qtest socket {sock}"):
            self._server = await streams.start_unix_server(on_connect, sock, limit=1 << 20)
            os.chmod(sock, 0o600)
        argv = self.command_line(sock, str(bios))
        with self._start_step(f"cannot write its log {self.log_path}"):
            log_file = await asyncio.to_thread(open, self.log_path, "wb")  # closed in _shutdown
        self._log_file = log_file
        parent = os.getpid()
        with self._start_step(f"cannot run {argv[0]}"):
            self._proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                preexec_fn=functools.partial(die_with_parent, parent), start_new_session=True)
        LIVE[self._proc.pid] = str(self.workdir)
        log.debug("qemu_spawned", pid=self._proc.pid, argv=" ".join(argv))
        exited = asyncio.ensure_future(self._proc.wait())
        try:
            waiting: set[asyncio.Future[Any]] = {connected, exited}
            done, _ = await asyncio.wait(waiting, timeout=cfg.timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not exited.done():
                exited.cancel()
        if connected not in done:
            why = (f"exited with status {self._proc.returncode}" if self._proc.returncode is not None
                   else f"did not connect to the qtest socket within {cfg.timeout:g} s")
            raise QemuStartError(f"qemu: {self.binary} {why}{self._log_tail()}")
        self._server.close()  # one connection only; the socket file is no longer needed
        reader, writer = connected.result()
        self._client = QtestClient(reader, writer)
        self._client.start()
        reply = await asyncio.wait_for(self._client.command("endianness\n"), cfg.timeout)
        if reply != "OK little":
            raise QemuStartError(f"qemu: unexpected answer to endianness: {reply!r}")
        await self._client.command("irq_intercept_in ioapic\n")
        self.startup_s = time.perf_counter() - t0
        log.info("qemu_started", pid=self._proc.pid, version=".".join(map(str, self.version or ())),
                 cpu=cfg.cpu, floppy=str(self.floppy_path) if self.floppy_path else None, sb16=cfg.sb16,
                 startup_s=round(self.startup_s, 4))

    @contextlib.contextmanager
    def _start_step(self, action: str) -> Iterator[None]:
        """An OSError in this step of starting is a :class:`QemuStartError` that names the step
        (:func:`hil.oserrors.start_error`), not a traceback."""
        try:
            yield
        except OSError as e:
            raise oserrors.start_error(f"qemu: {self.binary}", action, e, QemuStartError) from None

    def _log_tail(self, limit: int = 1500) -> str:
        try:
            text = self.log_path.read_bytes()[-limit:].decode(errors="replace").strip() if self.log_path else ""
        except OSError:
            text = ""
        return f"; QEMU said: {text}" if text else ""

    def _exit_detail(self) -> str:
        proc = self._proc
        status = f"exit status {proc.returncode}" if proc is not None and proc.returncode is not None else ""
        return (status + self._log_tail(600)).strip("; ")

    async def _close(self) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        """Stop what we started: socket, then the process by its PID (SIGTERM, then SIGKILL)."""
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._server is not None:
            self._server.close()
            self._server = None
        proc = self._proc
        if proc is not None:
            await stop_process(proc)
            log.debug("qemu_stopped", pid=proc.pid, status=proc.returncode)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            if self.config.floppy == "generate":
                self.floppy_path = None

    # --- capabilities -------------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        cfg = self.config
        features = {Capability.IRQ}
        if cfg.floppy:
            features.add(Capability.FDC)
        if cfg.sb16:
            features.add(Capability.SB16)
        version = ".".join(map(str, self.version)) if self.version else "?"
        parts = [f"qemu {version if self.version else '(not started)'}", f"cpu={cfg.cpu}", f"mem={cfg.mem >> 20}MiB"]
        if cfg.floppy:
            parts.append("floppy=" + ("generated" if cfg.floppy == "generate" else Path(cfg.floppy).name))
        if cfg.sb16:
            parts.append("sb16")
        return Capabilities(
            backend="qemu",
            identity=" ".join(parts),
            features=frozenset(features),
            memory_window=(0, cfg.mem),
            details={"version": version, "cpu": cfg.cpu, "floppy": cfg.floppy, "sb16": cfg.sb16},
        )


    # --- programs -----------------------------------------------------------------------
    def check(self, ops: Sequence[Op]) -> None:
        """Refuse the whole program before anything is sent (:func:`~hil.backends.qemu.translate.check_program`)."""
        super().check(ops)
        check_program(ops, self.config, self.allowlist)

    def _live_client(self) -> QtestClient:
        if self._client is None:
            raise BackendNotOpenError(self.url)
        return self._client

    async def _execute(self, ops: Sequence[Op]) -> list[Result]:
        try:
            return await self._run(self._live_client(), ops)
        except QemuExitedError as e:
            raise await self._exited(e) from None

    async def _exited(self, error: QemuExitedError) -> QemuExitedError:
        """The connection is gone: say how QEMU ended (waiting briefly to learn its status)."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 1.0)
            except TimeoutError:
                pass
        detail = self._exit_detail()
        log.error("qemu_gone", pid=self.pid, detail=detail)
        return QemuExitedError(f"qemu: {self.binary} (pid {self.pid}) went away: {error}" + (f"; {detail}" if detail else ""))


    async def _run(self, client: QtestClient, ops: Sequence[Op]) -> list[Result]:
        return await run_program(client, ops, self.url)

    async def _settle(self, timeout_s: float | None) -> None:
        """Return once no count register moves any more (wall time; FDC transfers complete inside
        the triggering port write, SB16 playback runs at its sample rate)."""
        try:
            await self._settle_on(self._live_client(), timeout_s)
        except QemuExitedError as e:
            raise await self._exited(e) from None


    async def _settle_on(self, client: QtestClient, timeout_s: float | None) -> None:
        await settle_on(client, timeout_s, self.url)

    # --- IRQ lines (capability ``irq``) ---------------------------------------------------
    def _irq_lines(self) -> IrqLines:
        """IOAPIC inputs 0-15 (FDC 6, SB16 5) as QEMU last reported them: the qtest event stream
        is read as it arrives, so this may be newer than the end of the last program."""
        return irq_lines(self._live_client())

    @property
    def irq_events(self) -> list[IrqEvent]:
        """Raise/lower events in arrival order (the PIT's IRQ 0 is counted but not kept)."""
        return list(self._live_client().irq_events)

    def clear_irq_events(self) -> None:
        self._live_client().irq_events.clear()

    async def wait_irq(self, line: int, level: bool = True, timeout: float = 1.0) -> bool:
        """Wait until ``line`` is at ``level``; False on timeout. Outside the backend's lock,
        unlike a :class:`~hil.ops.WaitIrq` in a program: another task's program may be what
        raises the line (QEMU runs in wall time, so nothing needs this wait to drive it)."""
        self._require_irq("wait_irq")
        WaitIrq(line, bool(level), timeout * 1e6)  # the op's own checks of line and timeout
        return await wait_irq_line(self._live_client(), line, level, timeout)
