"""The labgrid: backend's rules without a coordinator: URLs, selectors, the stale-lock rule
(hil/labgrid/lock.py, README "Sharing benches"), the port URL, and what happens without labgrid.
The same code against a real coordinator is tests/test_labgrid_bench.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hil.backends import BackendURL, open_backend
from hil.errors import BackendOptionError, LabgridMissingError
from hil.labgrid.address import Selector, coordinator_address, parse_place_url
from hil.labgrid.backend import LabgridBackend
from hil.labgrid.lock import GRACE_S, LEASE_TAG, PID_TAG, LockState, judge
from hil.labgrid.session import SerialPort

ROOT = Path(__file__).resolve().parent.parent
ME = "bench-pc/alice"
NOW = 1_800_000_000.0


def test_the_contract_url_takes_the_coordinator_from_lg_coordinator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LG_COORDINATOR", raising=False)
    be = open_backend("labgrid:?place=board-a")
    assert isinstance(be, LabgridBackend) and not be.opened
    assert (be.place.coordinator, be.place.place) == ("127.0.0.1:20408", "board-a")
    monkeypatch.setenv("LG_COORDINATOR", "lab.example:5000")
    assert open_backend("labgrid:?place=board-a").place.coordinator == "lab.example:5000"
    monkeypatch.setenv("LG_COORDINATOR", "lab.example")  # no port: labgrid's 20408
    assert open_backend("labgrid:?place=board-a").place.coordinator == "lab.example:20408"


def test_the_url_can_name_the_coordinator_and_pass_agent_options() -> None:
    p = parse_place_url(BackendURL.parse("labgrid://10.1.2.3:7000/board-b?wait=5&timeout=2&keep=1"))
    assert (p.coordinator, p.place, p.wait_s, p.agent_options) == ("10.1.2.3:7000", "board-b", 5.0,
                                                                  {"timeout": "2", "keep": "1"})
    assert p.canonical == "labgrid://10.1.2.3:7000/board-b?timeout=2&keep=1"
    assert coordinator_address("[::1]") == "[::1]:20408"


@pytest.mark.parametrize(("url", "message"), [
    ("labgrid:", "needs a place"),
    ("labgrid://h/a?place=b", "two places"),
    ("labgrid:?place=a&baud=9600", "unknown option 'baud'"),
    ("labgrid:?place=a&wait=-1", "wait must be >= 0"),
    ("labgrid:?place=a&lease=1", "lease >= 3"),
    ("labgrid:?place=a&wait=soon", "bad option value"),
])
def test_bad_urls_are_one_line_errors_before_anything_is_contacted(url: str, message: str) -> None:
    with pytest.raises(BackendOptionError, match=message):
        open_backend(url)


def test_selectors() -> None:
    s = Selector.parse("tag=ich10,hil-io=sim,name=board-*")
    assert s.matches("board-a", {"ich10": "1", "hil-io": "sim"})
    assert not s.matches("board-a", {"hil-io": "sim"})  # no ich10 tag
    assert not s.matches("board-a", {"ich10": "1", "hil-io": "devport"})
    assert not s.matches("rack-1", {"ich10": "1", "hil-io": "sim"})
    with pytest.raises(BackendOptionError, match="selector term 'ich10'"):
        Selector.parse("ich10")


# --- the stale-lock rule --------------------------------------------------------------------


def test_a_free_place_is_free() -> None:
    assert judge(None, {PID_TAG: "1"}, ME, NOW).state is LockState.FREE  # tags of nobody count for nothing


def test_a_lock_taken_outside_lpc_hil_is_ours_or_live_never_stale() -> None:
    assert judge(ME, {}, ME, NOW).state is LockState.OURS
    assert judge("other/bob", {}, ME, NOW, allowed=frozenset({ME})).state is LockState.OURS
    v = judge("other/bob", {}, ME, NOW + 1e9)
    assert v.state is LockState.LIVE and "not by lpc-hil" in v.reason


def test_a_holder_on_this_host_is_stale_once_its_process_is_gone() -> None:
    tags = {PID_TAG: "4242", LEASE_TAG: str(int(NOW + 30))}
    assert judge("bench-pc/bob", tags, ME, NOW, alive=lambda pid: True).state is LockState.LIVE
    v = judge("bench-pc/bob", tags, ME, NOW, alive=lambda pid: pid != 4242)
    assert v.state is LockState.STALE and "pid 4242" in v.reason and "exited" in v.reason


def test_a_holder_elsewhere_is_stale_only_after_its_lease_and_the_grace() -> None:
    tags = {PID_TAG: "4242", LEASE_TAG: str(int(NOW))}
    dead = {"alive": lambda pid: False}  # a pid on another host is not looked up here
    assert judge("lab-2/bob", tags, ME, NOW, **dead).state is LockState.LIVE
    assert judge("lab-2/bob", tags, ME, NOW + GRACE_S, **dead).state is LockState.LIVE
    v = judge("lab-2/bob", tags, ME, NOW + GRACE_S + 1, **dead)
    assert v.state is LockState.STALE and "lease ended" in v.reason


def test_our_own_other_live_run_is_busy_not_ours() -> None:
    tags = {PID_TAG: "4242", LEASE_TAG: str(int(NOW + 30))}
    assert judge(ME, tags, ME, NOW, alive=lambda pid: True).state is LockState.LIVE


# --- ports and the missing package ----------------------------------------------------------


def test_rfc2217_ports_ignore_set_control_and_raw_ports_use_tcp() -> None:
    def port(protocol: str) -> SerialPort:
        return SerialPort("ex", "g", "NetworkSerialPort", "p", "10.0.0.5", 4000, 3000000, protocol, True)

    assert port("rfc2217").agent_url({"timeout": "2"}) == \
        "agent+rfc2217://10.0.0.5:4000?ign_set_control&baud=3000000&timeout=2"
    assert port("raw").agent_url({}) == "agent+tcp://10.0.0.5:4000"
    assert open_backend(port("raw").agent_url({"retries": "1"})).url == "agent+tcp://10.0.0.5:4000?retries=1"


async def test_without_labgrid_opening_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "labgrid.remote", None)  # as if not installed
    be = open_backend("labgrid:?place=board-a")
    with pytest.raises(LabgridMissingError, match=r"lpc-hil\[labgrid\]"):
        await be.open()


def test_run_place_refuses_a_backend_too() -> None:
    r = subprocess.run([sys.executable, "-m", "hil", "run", "--place", "tag=x", "-b", "qemu:",
                        "configs/scripts/mem-to-mem.toml"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "--place runs on the matching places" in r.stderr
