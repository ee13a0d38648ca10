"""Run scripts on several backends at once, one worker process per backend.

A simulator run is CPU-bound, so tasks in one event loop would take the *sum* of the backends'
times; a process per backend takes the slowest one's on a multi-core machine, and a crash or
hang in one backend cannot take the others down. Workers are ``hil run`` itself, writing
journals, so comparing fresh runs and comparing saved journals are the same code path.
Scripts run one after another within a backend (a link or a board is one resource).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from hil.journal import RunResult, read_journal
from hil.script.model import Script

log = structlog.get_logger("hil.workers")


def journal_name(i: int, script: Script) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in script.name)
    return f"{i:02d}-{safe}.jsonl"


async def run_on_backends(
    scripts: Sequence[Script],
    urls: Sequence[str],
    *,
    journal_dir: str | Path | None = None,
    variables: Sequence[str] = (),
    on_done: Callable[[str, int], None] | None = None,
    errors: dict[int, str] | None = None,
) -> list[list[RunResult | None]]:
    """``result[b][s]``: script ``s`` on backend ``b`` (None if its journal never appeared).
    ``errors``, if given, receives backend index -> the worker's error line when it exited 2."""
    base = Path(journal_dir) if journal_dir else Path(tempfile.mkdtemp(prefix="hil-diff-"))

    async def worker(b: int, url: str) -> int:
        out = base / f"backend{b + 1}"
        out.mkdir(parents=True, exist_ok=True)
        for i, script in enumerate(scripts):  # a reused --journal-dir must not yield a stale run
            (out / journal_name(i, script)).unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "hil", "run", "--backend", url, "--journal-dir", str(out), "-q",
               "--log-format", "json", *(f"--var={v}" for v in variables), *(s.file for s in scripts)]
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await proc.communicate()
        rc = proc.returncode or 0
        log.info("worker_done", backend=url, rc=rc)
        if rc == 2:
            text = stderr.decode(errors="replace")
            log.warning("worker_error", backend=url, stderr=text[-2000:])
            if errors is not None:
                lines = [ln for ln in text.splitlines() if ln.startswith("hil run: error:")]
                errors[b] = lines[-1].removeprefix("hil run: error:").strip() if lines else f"exit status {rc}"
        if on_done is not None:
            on_done(url, rc)
        return rc

    await asyncio.gather(*(worker(b, url) for b, url in enumerate(urls)))
    results: list[list[RunResult | None]] = []
    for b in range(len(urls)):
        row: list[RunResult | None] = []
        for i, script in enumerate(scripts):
            path = base / f"backend{b + 1}" / journal_name(i, script)
            row.append(read_journal(path) if path.exists() else None)
        results.append(row)
    return results
