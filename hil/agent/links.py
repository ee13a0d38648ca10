"""Byte links between host and agent, behind one small interface, selected by URL.

* ``tcp://host:port``: asyncio streams.
* ``/dev/ttyUSB0``, ``serial:///dev/ttyS0``, a pty: a pyserial port (or a raw fd) driven through
  the event loop's reader/writer callbacks; nothing blocks the loop.
* ``ftdi://…``, ``rfc2217://…``, ``socket://…``, ``loop://``: pyserial URL handlers have no
  usable file descriptor, so each gets one owned I/O thread that does the blocking calls and
  hands bytes to the loop with ``call_soon_threadsafe`` (docs/reference/hil-lessons.md §1.5, §3.8). For FTDI
  devices the latency timer is set to 1 ms and dynamic latency is off (docs/reference/hil-lessons.md §1.4).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import errno
import os
import termios
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from hil import oserrors, streams
from hil.errors import (
    LinkError as LinkError,  # defined there; importable from here as before
)
from hil.log import get_logger
from hil.records import dataclass
from hil.streams import BufferedStreamProtocol

log = get_logger("hil.link")

READ_CHUNK = 65536


@dataclass
class LinkStats:
    bytes_in: int = 0
    bytes_out: int = 0


class Link(abc.ABC):
    """An asynchronous full-duplex byte stream."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = LinkStats()

    @abc.abstractmethod
    async def read(self) -> bytes:
        """Some bytes (at least one); ``b""`` when the far end has gone."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    def write_now(self, data: bytes) -> bool:
        """Write ``data`` without waiting, if the link can take it at once; False: nothing was
        written, use :meth:`write`. A link whose writes always wait keeps this default."""
        return False

    def counted(self, receiver: Receiver) -> Receiver:
        """``receiver``, counting the bytes in ``stats`` first (as :meth:`read` does)."""
        stats = self.stats

        def count(data: bytes) -> None:
            stats.bytes_in += len(data)
            receiver(data)

        return count

    def on_data(self, receiver: Receiver | None) -> bool:
        """Hand arriving bytes to ``receiver`` as they arrive, in the event loop's own callback
        (``b""`` once: the far end has gone), instead of to :meth:`read`: a reader task between
        the bytes and their frame's waiter cost a loop iteration per frame. Called before the
        first read, or not at all; False: this link has only :meth:`read`."""
        return False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


Receiver = Callable[[bytes], None]


class PushProtocol(BufferedStreamProtocol):
    """The streams protocol of a connection whose bytes may go straight to a receiver
    (:meth:`Link.on_data`) rather than into its :class:`asyncio.StreamReader`. It receives
    into a buffer of its own (:mod:`hil.streams`: no 256 KiB allocation per read)."""

    receiver: Receiver | None = None
    counts: LinkStats | None = None  #: where the bytes handed to ``receiver`` are counted (Link.counted's work)
    #: something (bytes, the end) went to the StreamReader: it must be read there, not pushed
    #: (an agent's connection may have bytes before its serving task asks for them)
    buffered = False

    def data_received(self, data: bytes) -> None:
        receiver = self.receiver
        if receiver is not None:
            if self.counts is not None:
                self.counts.bytes_in += len(data)
            receiver(data)
        else:
            self.buffered = True
            super().data_received(data)

    def eof_received(self) -> bool:
        if self.receiver is not None:
            self.receiver(b"")
        else:
            self.buffered = True
        return bool(super().eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.receiver is not None:
            self.receiver(b"")
        else:
            self.buffered = True
        super().connection_lost(exc)


class StreamLink(Link):
    def __init__(self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 push: PushProtocol | None = None) -> None:
        super().__init__(name)
        self._reader, self._writer = reader, writer
        self._push = push

    def on_data(self, receiver: Receiver | None) -> bool:
        if self._push is None or (receiver is not None and self._push.buffered):
            return False  # (bytes already in the StreamReader are read from there, in order)
        self._push.receiver, self._push.counts = receiver, self.stats  # counted as Link.counted does, without its call
        return True

    async def read(self) -> bytes:
        try:
            data = await self._reader.read(READ_CHUNK)
        except (ConnectionError, OSError):
            return b""
        self.stats.bytes_in += len(data)
        return data

    async def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError) as e:
            raise oserrors.failure(self.name, "write failed", e, LinkError) from None
        self.stats.bytes_out += len(data)

    def write_now(self, data: bytes) -> bool:
        """With nothing buffered in the transport (no drain would wait) and the connection up,
        the write is the transport's own: what :meth:`write` does, without its await."""
        transport = self._writer.transport
        if transport.is_closing() or transport.get_write_buffer_size():
            return False
        try:
            transport.write(data)  # what StreamWriter.write does
        except (ConnectionError, OSError) as e:
            raise oserrors.failure(self.name, "write failed", e, LinkError) from None
        self.stats.bytes_out += len(data)
        return True

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


class FdLink(Link):
    """A non-blocking file descriptor (pty master, serial tty) on the event loop."""

    def __init__(self, name: str, fd: int, *, owner: Any = None, close_fd: bool = True) -> None:
        super().__init__(name)
        self.fd = fd
        self._owner, self._close_fd = owner, close_fd
        os.set_blocking(fd, False)
        if os.isatty(fd):  # VMIN=1: an empty non-blocking read is EAGAIN (wait for the loop), not EOF
            attrs = termios.tcgetattr(fd)
            attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self._loop = asyncio.get_running_loop()
        self._closed = False

    async def read(self) -> bytes:
        while not self._closed:
            try:
                data = os.read(self.fd, READ_CHUNK)
            except BlockingIOError:
                await self._wait(readable=True)
                continue
            except OSError as e:
                if e.errno == errno.EIO:  # pty: no process has the other side open right now
                    await asyncio.sleep(0.05)
                    continue
                return b""
            if not data:
                await asyncio.sleep(0.05)  # tty EOF without hang-up: keep listening
                continue
            self.stats.bytes_in += len(data)
            return data
        return b""

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                await self._wait(readable=False)
                continue
            except OSError as e:
                raise oserrors.failure(self.name, "write failed", e, LinkError) from None
            view = view[n:]
            self.stats.bytes_out += n

    async def _wait(self, *, readable: bool) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        add, remove = ((self._loop.add_reader, self._loop.remove_reader) if readable
                       else (self._loop.add_writer, self._loop.remove_writer))

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        add(self.fd, ready)
        try:
            await fut
        finally:
            remove(self.fd)

    async def close(self) -> None:
        if self._closed:  # once: the fd number may already belong to something else
            return
        self._closed = True
        if self._owner is not None:
            with contextlib.suppress(Exception):
                self._owner.close()
        elif self._close_fd:
            with contextlib.suppress(OSError):
                os.close(self.fd)


class ThreadLink(Link):
    """A pyserial object without a file descriptor, serviced by one owned I/O thread."""

    def __init__(self, name: str, port: Any) -> None:
        super().__init__(name)
        self._port = port
        self._loop = asyncio.get_running_loop()
        self._rx: asyncio.Queue[bytes] = asyncio.Queue()
        self._tx_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name=f"hil-link {name}", daemon=True)
        self._thread.start()

    def _read_some(self) -> bytes:
        """Whatever has arrived. pyftdi's UART ``read`` sleeps 10 ms between polls and reports
        nothing waiting (docs/reference/hil-lessons.md §1.4), so its device is asked directly: a bulk read
        returns within the chip's latency timer, data or not."""
        udev = getattr(self._port, "udev", None)
        if udev is not None and hasattr(udev, "read_data"):
            return bytes(udev.read_data(READ_CHUNK))
        return bytes(self._port.read(max(1, getattr(self._port, "in_waiting", 0) or 1)))

    def _pump(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._read_some()
            except Exception as e:  # any driver failure ends the link
                log.warning("link_read_failed", link=self.name, error=str(e))
                data = None
            if data is None:
                self._loop.call_soon_threadsafe(self._rx.put_nowait, b"")
                return
            if data:
                self._loop.call_soon_threadsafe(self._rx.put_nowait, bytes(data))

    async def read(self) -> bytes:
        data = await self._rx.get()
        self.stats.bytes_in += len(data)
        return data

    def _write_blocking(self, data: bytes) -> None:
        with self._tx_lock:
            self._port.write(data)
            self._port.flush()

    async def write(self, data: bytes) -> None:
        try:
            await asyncio.to_thread(self._write_blocking, data)
        except Exception as e:
            raise LinkError(f"{self.name}: write failed: {e}") from None
        self.stats.bytes_out += len(data)

    async def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            self._port.cancel_read()
        await asyncio.to_thread(self._thread.join, 1.0)
        with contextlib.suppress(Exception):
            self._port.close()


class LinkKind(enum.Enum):
    """What carries the bytes of a link URL: decides whether a baud rate means anything (doctor)
    and what the physical minimum of an exchange is (bench)."""

    TCP = "tcp"  #: tcp://, socket:// (pyserial's raw TCP): no baud rate
    SERIAL = "serial"  #: a tty device node (USB-serial adapter, on-board UART)
    PTY = "pty"  #: a pseudo-terminal: a tty without a wire
    FTDI = "ftdi"  #: pyftdi's ftdi:// (the host side's latency timer is set to 1 ms)
    RFC2217 = "rfc2217"  #: a serial port behind a TCP port server (the baud applies at the far end)
    OTHER = "other"  #: loop://, spy://, ...: a pyserial URL without a physical line


def link_kind(url: str) -> LinkKind:
    path = url.removeprefix("serial://")
    scheme = path.split("://", 1)[0] if "://" in path else ""
    match scheme:
        case "":
            real = os.path.realpath(path.partition("?")[0])
            return LinkKind.PTY if real.startswith("/dev/pts/") else LinkKind.SERIAL
        case "tcp" | "socket":
            return LinkKind.TCP
        case "ftdi":
            return LinkKind.FTDI
        case "rfc2217":
            return LinkKind.RFC2217
        case _:
            return LinkKind.OTHER


@dataclass(frozen=True)
class FtdiURL:
    """A pyftdi device URL, ``ftdi://[vendor][:[product][:serial|:index|:bus:address]]/interface``,
    checked without a USB device present (pyftdi's own parser enumerates the bus).

    ``None`` means "any": ``ftdi:///1`` is the one FTDI adapter attached, interface 1. Names
    (``ftdi``, ``232h``) are pyftdi's own tables; numbers are decimal or ``0x`` hex.
    """

    url: str
    vendor: int | None
    product: int | None
    interface: int
    serial: str | None = None
    index: int | None = None  #: 0-based, from pyftdi's 1-based ``:index``
    bus: int | None = None
    address: int | None = None

    def describe(self) -> str:
        """``FTDI 0x0403:0x6014 serial FT1234, interface 1`` (what doctor and bench print)."""
        ids = ":".join("any" if v is None else f"0x{v:04X}" for v in (self.vendor, self.product))
        where = (f" serial {self.serial}" if self.serial else f" #{self.index + 1}" if self.index is not None
                 else f" bus {self.bus:X} address {self.address:X}" if self.bus is not None else "")
        return f"FTDI {ids}{where}, interface {self.interface}"


def parse_ftdi_url(url: str) -> FtdiURL:
    """Check ``url`` against pyftdi's URL grammar and name tables; :class:`LinkError` says what is wrong."""
    from pyftdi.ftdi import Ftdi  # its vendor and product names, no USB access
    from pyftdi.misc import to_int

    parts = urlsplit(url)
    if parts.scheme != "ftdi":
        raise LinkError(f"{url}: not an ftdi:// URL")
    path = parts.path.strip("/")
    if not path:
        raise LinkError(f"{url}: needs the FTDI interface after the device, e.g. ftdi://ftdi:232h/1 "
                        f"(pyftdi's ftdi_urls.py lists attached adapters)")
    try:
        interface = to_int(path)
    except ValueError:
        raise LinkError(f"{url}: interface {path!r} is not a number (1 for the first UART)") from None
    if not 0 <= interface <= 4:
        raise LinkError(f"{url}: interface {interface}: FTDI parts have interfaces 1 to 4")
    fields = parts.netloc.split(":")
    vendor_text, product_text, locators = fields[0], (fields[1] if len(fields) > 1 else ""), fields[2:]

    def number(text: str, names: dict[str, int], what: str) -> int | None:
        if not text:
            return None
        if text in names:
            return names[text]
        try:
            value = to_int(text)
        except ValueError:
            known = ", ".join(sorted(n for n in names if not n.startswith("ft") or n == "ft-x"))
            raise LinkError(f"{url}: unknown {what} {text!r}; pyftdi knows {known} or a number like 0x6014") from None
        if not 0 <= value <= 0xFFFF:
            raise LinkError(f"{url}: {what} {text!r} is not a 16-bit USB id")
        return value

    vendor = number(vendor_text, Ftdi.VENDOR_IDS, "vendor")
    product = number(product_text, Ftdi.PRODUCT_IDS.get(vendor or Ftdi.DEFAULT_VENDOR, {}), "product")
    result = FtdiURL(url, vendor, product, interface)
    if len(locators) >= 2:  # bus:address, in hex as lsusb prints them
        try:
            bus, address = int(locators[0], 16), int(locators[1], 16)
        except ValueError:
            raise LinkError(f"{url}: bus:address {':'.join(locators)!r} must be hex numbers") from None
        return FtdiURL(url, vendor, product, interface, bus=bus, address=address)
    if locators and locators[0]:
        try:
            index = to_int(locators[0])
        except ValueError:
            index = -1
        if 0 <= index <= 255:  # a small number is pyftdi's 1-based device index, anything else a serial
            return FtdiURL(url, vendor, product, interface, index=max(0, index - 1))
        return FtdiURL(url, vendor, product, interface, serial=locators[0])
    return result


def _serial_kwargs(baud: int, url: str = "") -> dict[str, Any]:
    # pyserial's rfc2217 client refuses any write timeout (NotImplementedError at open)
    if url.startswith("rfc2217://"):
        return {"baudrate": baud, "timeout": 0.05}
    return {"baudrate": baud, "timeout": 0.05, "write_timeout": 5}


async def open_link(url: str, *, baud: int = 115200) -> Link:
    """Open the host side of a link. Raises :class:`LinkError` with the reason."""
    if url.startswith("tcp://"):
        parts = urlsplit(url)
        if not parts.hostname or not parts.port:
            raise LinkError(f"{url}: expected tcp://HOST:PORT")
        loop = asyncio.get_running_loop()
        try:  # with a protocol that can hand bytes on directly
            reader, writer, protocol = await streams.open_connection(
                parts.hostname, parts.port, limit=READ_CHUNK, protocol=lambda r: PushProtocol(r, loop=loop))
        except OSError as e:
            raise oserrors.connect_error(url, e, LinkError) from None
        return StreamLink(url, reader, writer, protocol)
    import serial  # pyserial: imported only for serial links

    path = url[len("serial://"):] if url.startswith("serial://") else url
    if "://" not in path:  # a device node: fd-driven
        try:
            port = serial.Serial(path, **_serial_kwargs(baud))
        except (serial.SerialException, OSError) as e:
            raise oserrors.failure(path, "cannot open serial device", e, LinkError) from None
        return FdLink(path, port.fileno(), owner=port)
    if path.startswith("ftdi://"):
        parse_ftdi_url(path.partition("?")[0])  # a malformed URL is named before any USB access
        try:
            import pyftdi.serialext  # noqa: F401 - registers the ftdi:// URL handler
        except ImportError as e:  # pragma: no cover - pyftdi is a declared dependency
            raise LinkError(f"{path}: pyftdi is not available: {e}") from None
    try:  # in a thread: rfc2217 and socket open a TCP connection and negotiate before returning
        port = await asyncio.to_thread(serial.serial_for_url, path, **_serial_kwargs(baud, path))
    except (serial.SerialException, OSError, ValueError) as e:
        err = oserrors.failure(path, "cannot open", e, LinkError)
        err.device_missing = "No USB device" in str(e)  # pyftdi says so in a plain exception: read here, once
        raise err from None
    ftdi = getattr(port, "udev", None)
    if ftdi is not None and hasattr(ftdi, "set_latency_timer"):
        # USB latency: 16 ms by default, and pyftdi's UART adds dynamic latency up to 200 ms when
        # idle; a request/reply link wants a fixed 1 ms (docs/reference/hil-lessons.md §1.4)
        with contextlib.suppress(Exception):
            ftdi.set_dynamic_latency(0, 0, 0)  # threshold 0: off
        with contextlib.suppress(Exception):
            ftdi.set_latency_timer(1)
        log.info("ftdi_latency_set", link=path, latency_ms=1)
    return ThreadLink(path, port)


def split_query(url: str, ours: set[str]) -> tuple[str, dict[str, str]]:
    """Remove our options from a link URL's query, leave the rest for pyserial."""
    base, _, query = url.partition("?")
    keep, mine = [], {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in ours:
            mine[key] = value
        else:
            keep.append(f"{key}={value}")
    return base + ("?" + "&".join(keep) if keep else ""), mine
