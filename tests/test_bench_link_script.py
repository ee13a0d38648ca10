"""``benchmarks/bench_link.py``'s TCP figures run and measure what they name (issue 16), at a
few round trips each: the README's table is regenerated from this script, so a figure that no
longer runs would only show when someone regenerates it. Nothing here is timed against a bound."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench_link() -> Any:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_link  # type: ignore[import-not-found]  # a script beside the package, not in it

        yield bench_link
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_the_bare_exchange_waits_for_the_whole_answer_and_leaves_nothing_behind(bench_link: Any) -> None:
    async def run() -> tuple[int, int]:
        async with bench_link.BareExchange() as bare:
            for out, back in ((16, 51), (16, 51), (3, 70000), (200, 1)):
                await bare.exchange(out, back)
                assert bare.near.got == 0  # all of this answer taken, none of the next one yet
            return bare.near.got, bare.near.want

    assert asyncio.run(asyncio.wait_for(run(), 30)) == (0, 1)


def test_the_in_process_tcp_figures_name_their_floors(bench_link: Any) -> None:
    figures = asyncio.run(asyncio.wait_for(bench_link.tcp_figures(2, 20), 60))
    one, beside, bulk = figures
    assert one.name.startswith("agent one-op program over loopback TCP (16 + 51 wire bytes)")
    assert one.target == "ratio <= 1.3" and "streams echo" in one.floor_name
    assert beside.samples == one.samples and "BareExchange" in beside.floor_name and not beside.target
    assert bulk.higher and bulk.target == "value >= 100"
    for figure in figures:
        assert len(figure.samples) == len(figure.floor) == 2
        assert all(x > 0 for x in figure.samples + figure.floor)


def test_the_cross_process_figure_runs_hil_agent_and_an_echo_server_and_ends_both(
        bench_link: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[asyncio.subprocess.Process] = []
    spawn = asyncio.create_subprocess_exec

    async def spawned(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        proc = await spawn(*args, **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawned)
    figure = asyncio.run(asyncio.wait_for(bench_link.cross_process_figure(2, 20), 120))
    assert len(started) == 2 and all(proc.returncode is not None for proc in started)
    assert "`hil agent` in a process of its own" in figure.name and "(16 + 51 wire bytes)" in figure.name
    assert figure.floor_name == "the same echo served by a process of its own" and not figure.target
    assert len(figure.samples) == len(figure.floor) == 2
    assert all(x > 0 for x in figure.samples + figure.floor)
