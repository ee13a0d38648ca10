"""udev/99-lpc-hil.rules: the rules the README promises (docs/reference/hil-lessons.md §1.4, §1.11, §3.18)."""

from __future__ import annotations

from pathlib import Path

RULES = (Path(__file__).resolve().parent.parent / "udev" / "99-lpc-hil.rules").read_text(encoding="utf-8")
LINES = [line for line in RULES.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_every_rule_is_well_formed():
    for line in LINES:
        for clause in (c.strip() for c in line.split(",")):
            assert any(op in clause for op in ("==", "+=", "=")), clause
            key = clause.split("=", 1)[0].rstrip("+!=")
            assert key.replace("{", "").replace("}", "").replace("_", "").isalnum(), clause


def test_plugdev_access_for_ftdi_usb_and_tty():
    usb = [line for line in LINES if 'SUBSYSTEM=="usb"' in line]
    tty = [line for line in LINES if 'SUBSYSTEM=="tty"' in line and 'GROUP=' in line]
    assert usb and tty
    for line in usb + tty:
        assert '"0403"' in line and 'GROUP="plugdev"' in line and 'MODE="0660"' in line


def test_latency_timer_one_ms():
    assert any('ATTR{latency_timer}="1"' in line and 'DRIVERS=="ftdi_sio"' in line for line in LINES)


def test_stable_symlink_by_serial_number():
    links = [line for line in LINES if "SYMLINK+=" in line]
    assert any('"hil-agent-$env{ID_SERIAL_SHORT}"' in link for link in links)
    assert all("ID_SERIAL_SHORT" in link for link in links)
