"""``hil diff``'s workers (issue 16): a backend's journals are read as soon as its worker ends,
while slower backends still run, and off the event loop; the grid is the same as before."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from hil import workers
from hil.script import load_script
from hil.workers import run_on_backends

SCRIPT = '[script]\nname = "one"\n\n[[step]]\nop = "in"\nport = "dma1.status"\n'


class HeldWorker:
    """A worker process that ends when the test says so (``release``), with exit status 0."""

    def __init__(self, release: asyncio.Event | None) -> None:
        self.release = release
        self.returncode: int | None = None

    async def communicate(self) -> tuple[bytes, bytes]:
        if self.release is not None:
            await self.release.wait()
        self.returncode = 0
        return b"", b""


async def test_a_finished_workers_journals_are_read_while_another_runs(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "one.toml").write_text(SCRIPT, encoding="utf-8")
    script = load_script(tmp_path / "one.toml")
    release = asyncio.Event()
    started = iter([HeldWorker(None), HeldWorker(release)])  # backend 1 ends at once, backend 2 when released

    async def spawn(*cmd: str, **kw: object) -> HeldWorker:
        return next(started)

    loop = asyncio.get_running_loop()
    reads: list[tuple[str, bool, bool]] = []  # (backend dir, backend 2 still held, on the loop's thread)
    read_row = workers._read_row

    def spy(paths: list[Path]) -> tuple[list[object], object]:
        reads.append((paths[0].parent.name, not release.is_set(), threading.current_thread() is threading.main_thread()))
        loop.call_soon_threadsafe(release.set)
        return read_row(paths)  # type: ignore[return-value]  # the real reader's row

    monkeypatch.setattr(workers.asyncio, "create_subprocess_exec", spawn)
    monkeypatch.setattr(workers, "_read_row", spy)
    grid = await asyncio.wait_for(run_on_backends([script], ["sim", "sim:?profile=qemu"], journal_dir=tmp_path / "j"), 30)
    assert reads == [("backend1", True, False), ("backend2", False, False)]
    assert grid == [[None], [None]]  # no journal written: no run, for each backend in its place


async def test_the_grid_holds_every_backends_runs_in_order(tmp_path: Path) -> None:
    """Real workers: script s on backend b at grid[b][s], each read from its own journal."""
    paths = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.toml"
        path.write_text(SCRIPT.replace('"one"', f'"{name}"'), encoding="utf-8")
        paths.append(path)
    scripts = [load_script(p) for p in paths]
    urls = ["sim", "sim:?profile=qemu"]
    grid = await run_on_backends(scripts, urls, journal_dir=tmp_path / "j")
    assert [[(r.script, r.backend, r.status) if r else None for r in row] for row in grid] == [
        [(s, url, "passed") for s in ("a", "b")] for url in urls]
