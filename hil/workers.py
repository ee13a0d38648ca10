"""Run scripts on several backends at once, one worker process per backend.

A simulator run is CPU-bound, so tasks in one event loop would take the *sum* of the backends'
times; a process per backend takes the slowest one's on a multi-core machine, and a crash or
hang in one backend cannot take the others down. Workers are ``hil run`` itself, writing
journals, so comparing fresh runs and comparing saved journals are the same code path.
Scripts run one after another within a backend (a link or a board is one resource).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from hil.errors import HilError, error_from_record
from hil.journal import JournalError, RunResult, journal_names, read_journal
from hil.log import get_logger
from hil.script.model import Script

log = get_logger("hil.workers")

STOP_GRACE_S = 2.0  #: an interrupted worker gets this long to end its journal before it is killed


async def run_on_backends(
    scripts: Sequence[Script],
    urls: Sequence[str],
    *,
    journal_dir: str | Path | None = None,
    variables: Sequence[str] = (),
    allow_paths: Sequence[str] = (),
    on_done: Callable[[str, int], None] | None = None,
    errors: dict[int, HilError] | None = None,
) -> list[list[RunResult | None]]:
    """``result[b][s]``: script ``s`` on backend ``b`` (None if its journal never appeared).
    ``errors``, if given, receives backend index -> the worker's error, typed as it was raised
    in the worker (which writes it as a JSON record: see :func:`hil.errors.error_record`)."""
    base = Path(journal_dir) if journal_dir else Path(tempfile.mkdtemp(prefix="hil-diff-"))
    names = journal_names([s.file for s in scripts])  # what each ``hil run`` worker names them

    async def worker(b: int, url: str) -> list[RunResult | None]:
        out = base / f"backend{b + 1}"
        out.mkdir(parents=True, exist_ok=True)
        for name in names:  # a reused --journal-dir must not yield a stale run
            (out / name).unlink(missing_ok=True)
        error_file = out / "worker-error.json"
        error_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "hil", "--error-file", str(error_file), "run", "--backend", url,
               "--journal-dir", str(out), "-q", "--log-format", "json", *(f"--var={v}" for v in variables),
               *(f"--allow-path={d}" for d in allow_paths), *(s.file for s in scripts)]
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            _, stderr = await proc.communicate()
        except asyncio.CancelledError:
            await _stop(proc, url)
            raise
        rc = proc.returncode or 0
        log.info("worker_done", backend=url, rc=rc)
        if rc == 2:
            log.warning("worker_error", backend=url, stderr=stderr.decode(errors="replace")[-2000:])
            if errors is not None:
                errors[b] = await asyncio.to_thread(_worker_error, error_file, rc)
        if on_done is not None:
            on_done(url, rc)
        # Read this backend's journals now, in a thread: while the slower backends still run,
        # not all of them one after another at the end, on the event loop.
        row, error = await asyncio.to_thread(_read_row, [out / name for name in names])
        if error is not None and errors is not None:
            errors.setdefault(b, error)
        return row

    async with asyncio.TaskGroup() as group:  # interrupted, it waits until every worker is stopped
        tasks = [group.create_task(worker(b, url)) for b, url in enumerate(urls)]
    return [task.result() for task in tasks]


def _read_row(paths: list[Path]) -> tuple[list[RunResult | None], JournalError | None]:
    """One backend's runs (None where a journal never appeared, or is not one) and the first
    journal that is not one."""
    row: list[RunResult | None] = []
    first: JournalError | None = None
    for path in paths:
        try:
            row.append(read_journal(path) if path.exists() else None)
        except JournalError as e:  # a worker's journal that is not one: no run to compare
            row.append(None)
            first = first or e
    return row, first


def _worker_error(path: Path, rc: int) -> HilError:
    """The error a worker wrote (its record, back as the typed error), or what its exit says."""
    try:
        return error_from_record(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):  # no record (killed, or died before main), or a torn one
        return HilError(f"exit status {rc}")


async def _stop(proc: asyncio.subprocess.Process, url: str) -> None:
    """The diff was interrupted: interrupt the worker as Ctrl-C would (it ends its journal as
    ``interrupted``), and kill it if it does not exit in time. A worker outlives its diff never."""
    try:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.communicate(), STOP_GRACE_S)  # to the end of its output: closes the pipes
    except ProcessLookupError:
        pass
    except TimeoutError:
        proc.kill()
        await proc.communicate()
    log.info("worker_stopped", backend=url, rc=proc.returncode)
