"""Backend registry keyed by URL scheme, in the manner of pyserial's URL handlers.

``open_backend("sim:?profile=qemu")`` looks up the scheme, imports the implementing module only
then (so optional heavy dependencies such as pyftdi load only for the schemes that need them),
and returns an unopened :class:`Backend`; ``async with`` opens and closes it.

Schemes are registered as ``"module:factory"`` strings so that later backends (``agent+serial``,
``agent+tcp``, ``agent+ftdi``, ``devport``, ``qemu``, ``replay``) add one line here, and third
parties can call :func:`register_backend` with their own factory.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import field
from urllib.parse import parse_qsl, urlsplit

from hil.backends.base import Backend, Capabilities, Capability
from hil.errors import BackendOptionError, UnknownBackendError
from hil.records import dataclass

__all__ = [
    "HOST_PORT_SCHEMES",
    "Backend",
    "BackendURL",
    "Capabilities",
    "Capability",
    "available_backends",
    "open_backend",
    "register_backend",
]


#: Schemes whose ``//authority`` is ``host[:port]``. Every other scheme's authority is opaque to
#: the registry and goes to its factory as written: pyftdi's ``ftdi://ftdi:232h:SERIAL/1`` names a
#: vendor, product and serial number, not a host and a port, and QEMU or the simulator take none.
HOST_PORT_SCHEMES: set[str] = {"tcp", "agent+tcp", "agent+socket", "agent+rfc2217"}


@dataclass(frozen=True)
class BackendURL:
    """A parsed backend URL: ``scheme:[//authority][path][?opt=val&...]``.

    ``authority`` is always the text between ``//`` and the path. For the schemes in
    :data:`HOST_PORT_SCHEMES` it is split into ``host`` and ``port`` (a bad port is an error);
    for any other scheme ``host`` is the authority unsplit and ``port`` is None, so a factory
    that takes no authority refuses any ``host`` and one that does (``agent+ftdi``) reads it.
    """

    raw: str
    scheme: str
    host: str = ""
    port: int | None = None
    path: str = ""
    options: dict[str, str] = field(default_factory=dict)
    authority: str = ""

    @classmethod
    def parse(cls, url: str) -> BackendURL:
        text = url.strip()
        if ":" not in text:
            text += ":"
        try:
            parts = urlsplit(text)
        except ValueError as e:  # e.g. an unbalanced '[' in the authority
            raise BackendOptionError(url, str(e)) from None
        scheme = (parts.scheme or text.split(":", 1)[0]).lower()
        options: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
            if key in options:
                raise BackendOptionError(url, f"option {key!r} given twice")
            options[key] = value
        if scheme not in HOST_PORT_SCHEMES:
            return cls(url, scheme, parts.netloc, None, parts.path, options, parts.netloc)
        try:
            port = parts.port
        except ValueError as e:
            raise BackendOptionError(url, f"bad port number: {e}") from None
        return cls(url, scheme, parts.hostname or "", port, parts.path, options, parts.netloc)

    def flag(self, name: str, default: bool = False) -> bool:
        """A boolean option: ``1/true/yes/on`` (or bare ``?name``) or ``0/false/no/off``."""
        text = self.options.get(name)
        if text is None:
            return default
        if text.lower() in ("1", "true", "yes", "on", ""):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise BackendOptionError(self.raw, f"option {name}={text!r}: expected 0 or 1")

    def take(self, allowed: dict[str, str]) -> dict[str, str]:
        """Return the options, refusing any not in ``allowed`` (name -> help text)."""
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            known = ", ".join(f"{k} ({v})" for k, v in allowed.items()) or "none"
            raise BackendOptionError(self.raw, f"unknown option {unknown[0]!r}; {self.scheme}: accepts {known}")
        return dict(self.options)


Factory = Callable[[BackendURL], Backend]

_REGISTRY: dict[str, str | Factory] = {
    "sim": "hil.backends.sim:from_url",
    "devport": "hil.backends.devport:from_url",
    "qemu": "hil.backends.qemu:from_url",
    "vm": "hil.vm:from_url",
    "agent+serial": "hil.agent.client:from_url",
    "agent+tcp": "hil.agent.client:from_url",
    "agent+ftdi": "hil.agent.client:from_url",
    "labgrid": "hil.labgrid.backend:from_url",
    "record": "hil.backends.record:from_url",
    "replay": "hil.backends.replay:from_url",
}
_DESCRIPTIONS: dict[str, str] = {
    "sim": "in-process PC/AT 8237A model (profiles: intel, qemu); no hardware",
    "devport": "this Linux machine's own 8237s via /dev/port and a /dev/mem window (root, allow-listed)",
    "qemu": "QEMU's PC (i8257, FDC, SB16) over qtest; needs qemu-system-x86_64 7.2+",
    "vm": "a Linux VM under QEMU running hil agent --io devport, reached over its UART (a rehearsed bench)",
    "agent+serial": "agent on a serial line: agent+serial:///dev/ttyUSB0?baud=3000000",
    "agent+tcp": "agent on a TCP socket: agent+tcp://127.0.0.1:7777[?token=...]",
    "agent+ftdi": "agent behind an FTDI UART via pyftdi: agent+ftdi://ftdi:232h/1?baud=3000000",
    "labgrid": "an agent on a labgrid place: labgrid:?place=NAME (LG_COORDINATOR) or labgrid://HOST:PORT/NAME",
    "record": "record the session of any backend to JSONL: record:sim:?floppy=generate#run.jsonl",
    "replay": "play a recorded session back, failing at the first op that differs: replay:run.jsonl",
}
#: ``agent+<any pyserial URL scheme>`` (socket, rfc2217, loop, spy, ...) also reaches the agent backend
_PREFIXES: dict[str, str] = {"agent+": "hil.agent.client:from_url"}


def register_backend(scheme: str, factory: str | Factory, description: str = "", *, host_port: bool = False) -> None:
    """Register ``factory`` (a callable or a ``"module:attr"`` string) for ``scheme``;
    ``host_port`` when its URLs' authority is ``host:port`` (see :data:`HOST_PORT_SCHEMES`)."""
    _REGISTRY[scheme.lower()] = factory
    _DESCRIPTIONS[scheme.lower()] = description
    if host_port:
        HOST_PORT_SCHEMES.add(scheme.lower())


def available_backends() -> dict[str, str]:
    """Scheme -> one-line description."""
    return {s: _DESCRIPTIONS.get(s, "") for s in sorted(_REGISTRY)}


def _resolve(entry: str | Factory) -> Factory:
    if callable(entry):
        return entry
    module, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module), attr)


def open_backend(url: str = "sim") -> Backend:
    """Create the backend for ``url`` (not yet opened: use ``async with``)."""
    if not isinstance(url, str) or not url.strip():
        raise UnknownBackendError(str(url), str(url), sorted(_REGISTRY))
    parsed = BackendURL.parse(url)
    entry = _REGISTRY.get(parsed.scheme)
    if entry is None:
        entry = next((f for prefix, f in _PREFIXES.items() if parsed.scheme.startswith(prefix)), None)
    if entry is None:
        raise UnknownBackendError(url, parsed.scheme, sorted(_REGISTRY))
    return _resolve(entry)(parsed)


async def connect(url: str = "sim") -> Backend:
    """Create and open the backend for ``url``; the caller closes it."""
    backend = open_backend(url)
    await backend.open()
    return backend
