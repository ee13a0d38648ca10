"""``/init`` of the guest: PID 1 of the Linux VM that rehearses a bench (``vm:`` backend).

It does what a board's boot scripts do before ``hil agent`` runs, and nothing more: mount
``/proc``, ``/sys``, ``devtmpfs`` and a ``/tmp``, set up the interpreter's environment, then run
what the host asked for on the kernel command line (``hil.cfg=``, base64 of a JSON object;
docs/reference/vm.md §4):

* ``{"mode": "agent", "argv": [...]}``: run ``hil agent`` with those arguments (listening on
  ``/dev/ttyS0``) until it exits, then power off;
* ``{"mode": "run", "commands": [{"argv": [...], "drop_caps": [17]}, ...]}``: run each command,
  optionally with capabilities removed from its bounding set first (17 is ``CAP_SYS_RAWIO``: the
  kernel then refuses ``/dev/port`` and ``/dev/mem`` to it as to an unprivileged user), and write
  one ``HILRESULT <base64 JSON>`` line per command to ``/dev/ttyS0``, then power off.

Standard library only: it runs before anything else is known to work, and its failures must reach
the console (``ttyS1``, the host's console log) as text.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import subprocess
import sys
import time

RESULT_TAG = "HILRESULT"
CFG_KEY = "hil.cfg="
_PR_CAPBSET_DROP = 24
_RB_POWER_OFF = 0x4321FEDC
_libc = ctypes.CDLL(None, use_errno=True)


def log(message: str) -> None:
    """One line on the console (the host keeps it in the VM's console log)."""
    sys.stderr.write(f"hil-guest: {message}\n")
    sys.stderr.flush()


def mount(source: str, target: str, fstype: str, data: str = "") -> None:
    os.makedirs(target, exist_ok=True)
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), 0, data.encode() or None) != 0:
        err = ctypes.get_errno()
        if err != 16:  # EBUSY: already mounted (devtmpfs automount)
            log(f"mount {fstype} on {target}: {os.strerror(err)}")


def config(cmdline: str) -> dict[str, object]:
    """The host's request from the kernel command line: the JSON behind ``hil.cfg=``."""
    for word in cmdline.split():
        if word.startswith(CFG_KEY):
            value: object = json.loads(base64.urlsafe_b64decode(word[len(CFG_KEY):] + "=" * (-len(word) % 4)))
            if not isinstance(value, dict):
                raise ValueError("hil.cfg is not a JSON object")
            return value
    return {"mode": "none"}


def encode_config(cfg: dict[str, object]) -> str:
    """The ``hil.cfg=`` word for ``cfg`` (the host side calls this; kept beside its reader)."""
    return CFG_KEY + base64.urlsafe_b64encode(json.dumps(cfg, separators=(",", ":")).encode()).decode().rstrip("=")


def environment(meta: dict[str, str]) -> dict[str, str]:
    bindir = os.path.dirname(meta["python"])
    return {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": "/root", "PYTHONHOME": meta["home"], "PYTHONPATH": meta["site"],
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "TERM": "dumb", "TMPDIR": "/tmp"}


def drop_caps(caps: list[int]) -> None:
    """preexec: remove ``caps`` from the bounding set, so the program exec'd next never has them,
    root or not."""
    for cap in caps:
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            os._exit(126)


def run_commands(commands: list[dict[str, object]], env: dict[str, str], out: int) -> None:
    for index, command in enumerate(commands):
        argv = [str(a) for a in command.get("argv", [])]  # type: ignore[attr-defined]  # JSON list
        caps = [int(c) for c in command.get("drop_caps", [])]  # type: ignore[attr-defined]  # JSON list
        t0 = time.monotonic()
        try:
            proc = subprocess.run(argv, env=env, capture_output=True, timeout=float(command.get("timeout", 120)),  # type: ignore[arg-type]  # JSON number
                                  preexec_fn=(lambda c=caps: drop_caps(c)) if caps else None, check=False)
            record = {"index": index, "rc": proc.returncode, "stdout": proc.stdout.decode(errors="replace"),
                      "stderr": proc.stderr.decode(errors="replace")}
        except (OSError, subprocess.SubprocessError) as e:
            record = {"index": index, "rc": -1, "stdout": "", "stderr": f"{type(e).__name__}: {e}"}
        record["seconds"] = round(time.monotonic() - t0, 3)
        line = f"{RESULT_TAG} {base64.b64encode(json.dumps(record).encode()).decode()}\n"
        os.write(out, line.encode())
    os.write(out, f"{RESULT_TAG} END\n".encode())


def power_off() -> None:
    os.sync()
    _libc.reboot(_RB_POWER_OFF)
    while True:  # PID 1 must not return: the kernel would panic before the power-off lands
        time.sleep(1)


def main() -> None:
    mount("proc", "/proc", "proc")
    mount("sysfs", "/sys", "sysfs")
    mount("devtmpfs", "/dev", "devtmpfs")
    mount("tmpfs", "/tmp", "tmpfs", "mode=1777")
    mount("tmpfs", "/run", "tmpfs", "mode=755")
    mount("securityfs", "/sys/kernel/security", "securityfs")  # lockdown's state, for hil doctor
    with open("/etc/hil-guest.json") as f:
        meta = json.load(f)
    env = environment(meta)
    with open("/proc/cmdline") as f:
        cfg = config(f.read())
    mode = cfg.get("mode")
    for path, text in dict(cfg.get("files", {})).items():  # type: ignore[call-overload]  # JSON object
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    log(f"up in {time.clock_gettime(time.CLOCK_BOOTTIME):.2f} s, mode {mode}")
    if mode == "agent":
        argv = [meta["python"], "-m", "hil", "agent", *[str(a) for a in cfg.get("argv", [])]]  # type: ignore[attr-defined]  # JSON list
        rc = subprocess.call(argv, env=env)
        log(f"agent exited with status {rc}")
    elif mode == "run":
        fd = os.open(str(cfg.get("result", "/dev/ttyS0")), os.O_WRONLY | os.O_NOCTTY)
        if os.isatty(fd):
            import tty

            tty.setraw(fd)  # no newline translation on the way to the host
        run_commands(list(cfg.get("commands", [])), env, fd)  # type: ignore[call-overload]  # JSON list
        os.close(fd)
    else:
        log(f"no hil.cfg= on the kernel command line (mode {mode!r}): nothing to run")
    power_off()


if __name__ == "__main__":
    try:
        main()
    except BaseException as e:  # PID 1: report, then power off rather than panic
        log(f"init failed: {type(e).__name__}: {e}")
        power_off()
