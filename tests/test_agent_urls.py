"""Agent URLs: every pyftdi device URL form parses (its authority is vendor:product[:serial],
not host:port), through the same path ``hil regs -b URL`` and ``hil doctor URL`` take."""

from __future__ import annotations

import pytest
import serial

from hil.agent.links import FtdiURL, LinkKind, link_kind, parse_ftdi_url
from hil.backends import BackendURL, open_backend
from hil.cli import main
from hil.doctor import Status, run_doctor
from hil.errors import BackendOptionError

FT232H = 0x6014


FORMS = [
    ("agent+ftdi://ftdi:232h/1?baud=3000000", FtdiURL("ftdi://ftdi:232h/1", 0x0403, FT232H, 1), 3_000_000),
    ("agent+ftdi://ftdi:232h:FT1234AB/1", FtdiURL("ftdi://ftdi:232h:FT1234AB/1", 0x0403, FT232H, 1, serial="FT1234AB"),
     115200),
    ("agent+ftdi://::/1", FtdiURL("ftdi://::/1", None, None, 1), 115200),
    ("agent+ftdi:///1", FtdiURL("ftdi:///1", None, None, 1), 115200),
    ("agent+ftdi://0x403:0x6014/1?baud=3000000&timeout=0.5", FtdiURL("ftdi://0x403:0x6014/1", 0x0403, FT232H, 1),
     3_000_000),
    ("agent+ftdi://1027:24596/2", FtdiURL("ftdi://1027:24596/2", 0x0403, FT232H, 2), 115200),
    ("agent+ftdi://ftdi:2232h:2/2", FtdiURL("ftdi://ftdi:2232h:2/2", 0x0403, 0x6010, 2, index=1), 115200),
    ("agent+ftdi://ftdi:232h:1:1f/1", FtdiURL("ftdi://ftdi:232h:1:1f/1", 0x0403, FT232H, 1, bus=1, address=0x1F),
     115200),
]


@pytest.mark.parametrize(("url", "expected", "baud"), FORMS, ids=[f[0] for f in FORMS])
def test_every_pyftdi_url_form_parses(url, expected, baud):
    be = open_backend(url)  # no USB device is needed to parse
    assert be.link_url == expected.url and be.baud == baud  # our options are taken off the link URL
    assert parse_ftdi_url(be.link_url) == expected
    assert link_kind(be.link_url) is LinkKind.FTDI
    parsed = BackendURL.parse(url)
    assert parsed.port is None and parsed.authority == expected.url.split("/")[2]


def test_options_reach_the_backend():
    be = open_backend("agent+ftdi://0x403:0x6014/1?baud=3000000&timeout=0.5&retries=2")
    assert (be.baud, be.timeout, be.retries) == (3_000_000, 0.5, 2)


@pytest.mark.parametrize(("url", "words"), [
    ("agent+ftdi://ftdi:232x/1", "unknown product '232x'"),
    ("agent+ftdi://acme:232h/1", "unknown vendor 'acme'"),
    ("agent+ftdi://ftdi:232h", "needs the FTDI interface"),
    ("agent+ftdi://ftdi:232h/a", "interface 'a' is not a number"),
    ("agent+ftdi://ftdi:232h/9", "interfaces 1 to 4"),
    ("agent+ftdi://ftdi:232h:1:zz/1", "must be hex"),
    ("agent+ftdi://0x403:0x16014/1", "16-bit"),
])
def test_bad_ftdi_urls_say_what_is_wrong(url, words):
    with pytest.raises(BackendOptionError, match=words):
        open_backend(url)


def test_host_port_schemes_still_check_their_port():
    assert BackendURL.parse("agent+tcp://127.0.0.1:7777").port == 7777
    with pytest.raises(BackendOptionError, match="bad port number"):
        open_backend("agent+tcp://127.0.0.1:77x")
    with pytest.raises(BackendOptionError, match="takes options only"):  # an opaque authority is still refused
        open_backend("qemu://host")


@pytest.fixture
def no_usb(monkeypatch):
    """pyserial's URL opener stands in for the USB bus: it records what it was asked to open."""
    opened: list[tuple[str, int]] = []

    def serial_for_url(url, **kw):
        opened.append((url, kw["baudrate"]))
        raise serial.SerialException(f"No USB device matches URL {url}")

    monkeypatch.setattr(serial, "serial_for_url", serial_for_url)
    return opened


@pytest.mark.parametrize("url", [f[0] for f in FORMS])
def test_hil_regs_reaches_the_adapter(url, no_usb, capsys):
    """The README's agent+ftdi example gets as far as opening the adapter, not a URL error."""
    assert main(["regs", "-b", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hil regs: error: ") and "No USB device matches" in err and "\n" not in err
    assert no_usb == [(parse_ftdi_url(open_backend(url).link_url).url, open_backend(url).baud)]


async def test_hil_doctor_describes_the_adapter(no_usb):
    report = await run_doctor("agent+ftdi://ftdi:232h:FT1234AB/1?baud=3000000")
    checks = {r.check: r for r in report.results}
    assert checks["url"].status is Status.OK
    assert checks["url"].message == ("link ftdi://ftdi:232h:FT1234AB/1: FTDI 0x0403:0x6014 serial FT1234AB, "
                                     "interface 1, 3000000 baud")
    assert checks["agent"].status is Status.FAIL and "ftdi_urls.py" in checks["agent"].fix
