"""``hil doctor agent+…``: why the host cannot reach its agent, and what to change.

The usual bench failures, each with its own fix: the adapter is not there (unplugged, driver not
bound), the device node belongs to a group the user is not in, the FTDI latency timer is at its
16 ms default (every round trip pays it), nothing answers (agent not running, wrong baud rate),
or the agent refuses the HELLO (token). The system lookups go through :class:`Env` so tests can
stand in for /dev and /sys.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import field
from pathlib import Path
from typing import Any

from hil.agent.links import LinkKind, link_kind, parse_ftdi_url
from hil.agent.protocol import Status as ProtocolStatus
from hil.doctor import CheckResult, Status, fail, ok
from hil.errors import HilError, LinkError
from hil.records import dataclass


@dataclass
class Env:
    sysfs: str = "/sys"
    exists: Any = os.path.exists
    access: Any = os.access
    user_groups: list[str] = field(default_factory=lambda: _user_groups())

    def node_group(self, path: str) -> str:
        try:
            return grp.getgrgid(os.stat(path).st_gid).gr_name
        except (KeyError, OSError):
            return "?"

    def latency_timer(self, path: str) -> int | None:
        name = Path(os.path.realpath(path)).name
        try:
            return int((Path(self.sysfs) / "class" / "tty" / name / "device" / "latency_timer").read_text().strip())
        except (OSError, ValueError):
            return None


def _user_groups() -> list[str]:
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
        return [g.gr_name for g in grp.getgrall() if user in g.gr_mem] + [grp.getgrgid(os.getgid()).gr_name]
    except (KeyError, OSError):
        return []


async def agent_checks(url: Any, env: Any = None) -> list[CheckResult]:
    from hil.agent.client import AgentRefusedError, AgentTimeoutError, from_url

    e = env if isinstance(env, Env) else Env()
    try:
        backend = from_url(url)
    except HilError as err:
        return [fail("url", str(err))]
    results = [ok("url", describe_link(backend.link_url, backend.baud))]
    link = backend.link_url
    if "://" not in link:
        results += _serial_node_checks(link, e)
        if any(r.status is Status.FAIL for r in results):
            return results
    elif link.startswith("ftdi://"):
        results.append(_ftdi_check())
    try:
        async with backend:
            info = backend.agent
            assert info is not None
            results.append(ok("agent", f"{info.agent_name} {info.agent_version}, boot nonce 0x{info.boot_nonce:08X}, "
                                       f"window {info.window}, max payload {info.max_payload}"))
            rtt = await backend.ping()
            results.append(ok("round trip", f"{rtt * 1e3:.2f} ms"))
    except AgentRefusedError as err:
        fix = {ProtocolStatus.AUTH: "give the agent's token: ?token=...",
               ProtocolStatus.BUSY: "another host is connected; close it first"}.get(ProtocolStatus(err.status), "")
        results.append(fail("agent", str(err), fix))
    except AgentTimeoutError as err:
        results.append(fail("agent", str(err), "start `hil agent` on the target (same baud rate), "
                                               "check the cable (TX/RX crossed, common ground)"))
    except HilError as err:
        fix = ("plug the adapter in, or name the one you mean (pyftdi's ftdi_urls.py lists attached adapters)"
               if isinstance(err, LinkError) and err.device_missing else "")
        results.append(fail("agent", str(err), fix))
    return results


def describe_link(link: str, baud: int) -> str:
    """The link and, only where one applies, its baud rate (a TCP link has none)."""
    match link_kind(link):
        case LinkKind.TCP:
            return f"link {link} (TCP: no baud rate)"
        case LinkKind.PTY:
            return f"link {link} (a pty: no wire, the baud rate is not used)"
        case LinkKind.FTDI:
            return f"link {link}: {parse_ftdi_url(link.partition('?')[0]).describe()}, {baud} baud"
        case LinkKind.RFC2217:
            return f"link {link}, {baud} baud at the port server"
        case LinkKind.SERIAL:
            return f"link {link}, {baud} baud"
        case LinkKind.OTHER:
            return f"link {link} (no physical line)"


def _serial_node_checks(path: str, e: Env) -> list[CheckResult]:
    if not e.exists(path):
        return [fail("device", f"{path} does not exist",
                     "plug the adapter in; check `dmesg` for ftdi_sio/cp210x/ch341 and `lsmod`; with "
                     "udev/99-lpc-hil.rules installed FTDI adapters appear as /dev/hil-agent-<serial>")]
    results = [ok("device", f"{path} exists")]
    if not e.access(path, os.R_OK | os.W_OK):
        group = e.node_group(path)
        member = group in e.user_groups
        fix = (f"add yourself to group {group!r} (sudo usermod -aG {group} $USER, then log in again)" if not member
               else "the node's mode denies the group: install udev/99-lpc-hil.rules (MODE 0660, group plugdev)")
        results.append(fail("permissions", f"no read/write access to {path} (group {group!r})", fix))
        return results
    results.append(ok("permissions", "read/write access"))
    latency = e.latency_timer(path)
    if latency is None:
        results.append(CheckResult("latency", Status.SKIP, "no ftdi_sio latency_timer for this device"))
    elif latency > 1:
        results.append(CheckResult("latency", Status.WARN, f"ftdi_sio latency_timer is {latency} ms: every round "
                                   f"trip waits for it", "install udev/99-lpc-hil.rules (sets 1 ms) or "
                                   f"echo 1 > /sys/class/tty/{Path(os.path.realpath(path)).name}/device/latency_timer"))
    else:
        results.append(ok("latency", f"ftdi_sio latency_timer {latency} ms"))
    return results


def _ftdi_check() -> CheckResult:
    try:
        import usb.core  # noqa: F401 - pyusb, pulled in by pyftdi
    except ImportError as err:
        return fail("ftdi", f"pyusb is not importable: {err}", "pip install pyftdi")
    try:
        import usb.backend.libusb1 as libusb1

        if libusb1.get_backend() is None:
            return fail("ftdi", "libusb-1.0 is not installed", "apt-get install libusb-1.0-0")
    except Exception as err:  # any backend probe failure is the diagnosis
        return fail("ftdi", f"libusb probe failed: {err}", "apt-get install libusb-1.0-0")
    return ok("ftdi", "pyusb and libusb available (if access is denied: udev/99-lpc-hil.rules, group plugdev)")
