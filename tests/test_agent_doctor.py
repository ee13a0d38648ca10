"""hil doctor for agent URLs: each bench failure gets its own diagnosis and fix."""

from __future__ import annotations

import pytest

from hil.agent.server import AgentCore, start
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.doctor import Status, run_doctor
from hil.doctor.agent import Env


def by_check(report):
    return {r.check: r for r in report.results}


async def test_missing_adapter():
    report = await run_doctor("agent+serial:///dev/ttyUSB-nope?baud=3000000", Env())
    r = by_check(report)["device"]
    assert r.status is Status.FAIL and "does not exist" in r.message and "ftdi_sio" in r.fix
    assert report.exit_code == 1


async def test_permission_denied_names_the_group_and_the_fix(tmp_path):
    node = tmp_path / "ttyUSB0"
    node.write_bytes(b"")
    env = Env(access=lambda path, mode: False, user_groups=["users"])
    env.node_group = lambda path: "dialout"  # type: ignore[method-assign]
    report = await run_doctor(f"agent+serial://{node}", env)
    r = by_check(report)["permissions"]
    assert r.status is Status.FAIL and "dialout" in r.message and "usermod -aG dialout" in r.fix


async def test_latency_timer_warning(tmp_path):
    node = tmp_path / "ttyUSB7"
    node.write_bytes(b"")
    sysfs = tmp_path / "sys"
    (sysfs / "class" / "tty" / "ttyUSB7" / "device").mkdir(parents=True)
    (sysfs / "class" / "tty" / "ttyUSB7" / "device" / "latency_timer").write_text("16\n")
    report = await run_doctor(f"agent+serial://{node}?timeout=0.05&retries=0", Env(sysfs=str(sysfs)))
    r = by_check(report)["latency"]
    assert r.status is Status.WARN and "16 ms" in r.message and "99-lpc-hil.rules" in r.fix
    assert by_check(report)["agent"].status is Status.FAIL  # a plain file never answers


async def test_working_agent_over_a_pty():
    async with open_backend("sim") as io:
        listener = await start(AgentCore(io, AllowList.default([range(0x10000, 0x90000)])), "pty")
        try:
            report = await run_doctor(f"agent+serial://{listener.address}?baud=3000000", Env())
        finally:
            listener.close()
    checks = by_check(report)
    assert checks["agent"].status is Status.OK and "hil-agent" in checks["agent"].message
    assert checks["round trip"].status is Status.OK
    assert report.exit_code == 0


async def test_token_refusal_says_to_give_the_token():
    async with open_backend("sim") as io:
        listener = await start(AgentCore(io, AllowList.default(), token=b"t0k"), "tcp://127.0.0.1:0")
        try:
            report = await run_doctor(f"agent+{listener.address}")
        finally:
            listener.close()
    r = by_check(report)["agent"]
    assert r.status is Status.FAIL and "AUTH" in r.message and "token" in r.fix


@pytest.mark.parametrize("url", ["agent+bogus", "agent+tcp://127.0.0.1:1?retries=-3"])
async def test_bad_urls(url):
    report = await run_doctor(url)
    assert report.exit_code == 1
