"""VCD waveforms of a ``sim:`` backend, written with pyvcd, and a GTKWave view beside them.

The signals are :mod:`hil.sim.trace`'s (what each shows: README.md "Waveforms"), one ``module``
scope per controller, channel, bus, interrupt controller and device under the top scope ``pc``,
on the virtual-time axis in nanoseconds (timescale ``1 ns``: a magnitude of 1, 10 or 100 is
what every viewer reads, docs/reference/devices.md §7). The header is what Surfer and
GTKWave expect: ``$scope module NAME $end`` ... ``$upscope $end``.

The simulator runs inside the event loop, so the file is not written there: pyvcd writes into
memory, and chunks of :data:`CHUNK` characters go to a writer thread this module owns; a
failure of that thread is raised when the waveform ends.
"""

from __future__ import annotations

import asyncio
import importlib.util
import queue
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any, cast

from hil.backends.base import Backend
from hil.errors import JournalError, WaveformError
from hil.log import get_logger
from hil.oserrors import file_reason
from hil.sim.trace import Kind, SignalTrace, Value

log = get_logger("hil.waves")

CHUNK = 1 << 16
TIMESCALE = "1 ns"
#: the default view: (group, signal paths); one transfer's handshake, then its registers and data
DEFAULT_VIEW: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("events", ("pc.dma1.event", "pc.dma2.event", "pc.fdc.event", "pc.sb16.event")),
    ("bus", ("pc.dma2.hrq", "pc.dma2.hlda", "pc.bus.memr", "pc.bus.memw", "pc.bus.address", "pc.bus.data")),
    *((f"ch{ch}", tuple(f"pc.{'dma2' if ch >= 4 else 'dma1'}.ch{ch}.{s}"
                        for s in ("dreq", "dack", "eop", "tc", "mask", "addr", "count")))
      for ch in (1, 2, 3, 5)),
    ("irq", ("pc.pic.irq5", "pc.pic.irq6", "pc.pic.irq7")),
)


def sim_backend(backend: Backend) -> Any:
    """The in-process simulator behind ``backend`` (through ``record:`` and recording wrappers),
    or None."""
    from hil.backends.sim import SimBackend

    seen = backend
    while not isinstance(seen, SimBackend):
        inner = getattr(seen, "inner", None)
        if not isinstance(inner, Backend):
            return None
        seen = inner
    return seen


def require_simulator(backend: Backend) -> None:
    """Refuse a waveform of ``backend`` (opened or not) unless it has a simulator in process and
    pyvcd is installed (a dependency of the package; a checkout on PYTHONPATH may lack it)."""
    if sim_backend(backend) is None:
        raise WaveformError(f"a waveform needs a simulator backend (sim:...); {backend.url} has none in process")
    if importlib.util.find_spec("vcd") is None:
        raise WaveformError("waveforms are written with pyvcd, which is not installed: pip install pyvcd")


class _Sink:
    """pyvcd's output: text collected in memory, handed to the writer thread in chunks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.parts: list[str] = []
        self.size = 0
        self.queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._run, name=f"vcd {path.name}", daemon=True)
        self.thread.start()

    def write(self, text: str) -> int:
        self.parts.append(text)
        self.size += len(text)
        if self.size >= CHUNK:
            self._hand_over()
        return len(text)

    def _hand_over(self) -> None:
        if self.parts:
            self.queue.put("".join(self.parts))
            self.parts, self.size = [], 0

    def flush(self) -> None:
        """pyvcd's flush: keep collecting (the thread writes at its own pace)."""

    def _run(self) -> None:
        try:
            with self.path.open("w", encoding="utf-8") as f:
                while (chunk := self.queue.get()) is not None:
                    f.write(chunk)
        except OSError as e:
            self.error = e
            while self.queue.get() is not None:  # drain, so the owner's close returns
                pass

    async def close(self) -> None:
        self._hand_over()
        self.queue.put(None)
        await asyncio.to_thread(self.thread.join)
        if self.error is not None:
            raise JournalError(f"waveform {self.path}: cannot write: {file_reason(self.error)}")


def write_gtkw(path: Path, vcd_path: Path, widths: dict[str, int]) -> None:
    """The GTKWave save file of :data:`DEFAULT_VIEW` (the signals the trace has, ``path ->
    width``), for ``vcd_path``. GTKWave names a vector ``NAME[MSB:0]``."""
    from vcd.gtkw import GTKWSave

    with path.open("w", encoding="utf-8") as f:
        save = GTKWSave(f)
        save.dumpfile(str(vcd_path.resolve()))
        save.savefile(str(path.resolve()))
        save.treeopen("pc")
        save.signals_width(260)
        save.zoom_markers(-10.0)
        for group, names in DEFAULT_VIEW:
            shown = [n for n in names if n in widths]
            if not shown:
                continue
            with save.group(group):
                for name in shown:
                    width = widths[name]
                    save.trace(f"{name}[{width - 1}:0]" if width > 1 else name, datafmt="hex")


@asynccontextmanager
async def waveform(backend: Backend, path: str | Path, *, title: str = "", required: bool = True,
                   gtkw: bool = True) -> AsyncIterator[SignalTrace | None]:
    """Trace ``backend``'s simulator into the VCD file ``path`` while the block runs (and a
    ``.gtkw`` view beside it). Without a simulator: :class:`WaveformError` when ``required``,
    else a warning and nothing."""
    sim = sim_backend(backend)
    if sim is None and not required:
        log.warning("waveform_skipped", backend=backend.url, note="no simulator in process")
        yield None
        return
    require_simulator(backend)
    from vcd import VCDWriter

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JournalError(f"waveform {path}: cannot create {path.parent}: {file_reason(e)}") from None
    sink = _Sink(path)  # a file to pyvcd, which calls only its write() and flush()
    variables: list[Any] = []
    writer_box: list[Any] = []

    def emit(t: int, index: int, value: Value) -> None:
        writer_box[0].change(variables[index], t, value)

    tracer = sim.signal_trace(emit)
    start = sim.virtual_time_ns() or 0
    writer = VCDWriter(cast(IO[str], sink), timescale=TIMESCALE, date="", comment=title, version="lpc-hil",
                       init_timestamp=start)
    writer_box.append(writer)
    for sig in tracer.signals:
        scope = ".".join(sig.scope)
        if sig.kind is Kind.TEXT:
            variables.append(writer.register_var(scope, sig.name, "string", init=""))
        else:
            variables.append(writer.register_var(scope, sig.name, "wire", size=sig.width, init=0))
    tracer.attach()
    try:
        yield tracer
    finally:
        tracer.detach()
        end = max(start, sim.virtual_time_ns() or 0)
        writer.close(end)
        await sink.close()
        if gtkw:
            save = path.with_suffix(".gtkw")
            await asyncio.to_thread(write_gtkw, save, path, {s.path: s.width for s in tracer.signals})
        log.info("waveform_written", file=str(path), signals=len(tracer.signals), end_ns=end)


__all__ = ["DEFAULT_VIEW", "require_simulator", "sim_backend", "waveform", "write_gtkw"]
