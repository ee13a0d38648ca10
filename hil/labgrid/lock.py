"""Whether a labgrid place lock still has a living holder: the rule, without any I/O.

labgrid 26.x keeps a place acquired until someone releases it: the coordinator records only
the holder's ``host/user`` name, not the session, so a run that is killed or loses its
network leaves the place locked for good (docs/reference/labgrid.md §3). lpc-hil therefore
records on the place, right after acquiring it, two tags of its own:

* ``hil-pid=N``: the process that holds it, on the host named in labgrid's ``host/user``;
* ``hil-lease=T``: Unix time (whole seconds) until which the holder vouches for itself. The
  holder renews it every third of the lease while it runs.

A lock is **stale** when the place is acquired and carries these tags and either the holder's
host is this host and process N is gone, or the lease ended more than :data:`GRACE_S` ago (the
holder stopped renewing: killed on another host, hung, or cut off from the coordinator). A
lock without the tags was taken by someone else's tool (``labgrid-client acquire``): it is
never stale by this rule, only an explicit ``hil labgrid release --force`` frees it. The
tags are removed before the place is released, so a place freed normally carries none.
"""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Callable, Mapping

from hil.records import dataclass

PID_TAG = "hil-pid"  #: the holding process's id on the holder's host
LEASE_TAG = "hil-lease"  #: Unix time (s) until which the holder vouches for itself
DEFAULT_LEASE_S = 30.0  #: lease length; renewed every third of it
GRACE_S = 5.0  #: an ended lease counts only this long after its end: clocks of lab hosts differ a little


class LockState(enum.Enum):
    FREE = "free"  #: nobody holds it
    OURS = "ours"  #: this user on this host holds it outside any lpc-hil run (or allowed us): use it as it is
    LIVE = "live"  #: someone holds it and may still be using it
    STALE = "stale"  #: an lpc-hil run held it and is gone: it may be taken over


@dataclass(frozen=True)
class Verdict:
    state: LockState
    holder: str = ""  #: labgrid's ``host/user`` of the holder, "" when free
    reason: str = ""  #: one line for a message: who holds it and why it counts as live or stale

    @property
    def usable(self) -> bool:
        """This run may use the place now (taking over a stale lock first)."""
        return self.state is not LockState.LIVE


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def judge(acquired: str | None, tags: Mapping[str, str], me: str, now: float, *,
          allowed: frozenset[str] = frozenset(), alive: Callable[[int], bool] = pid_alive) -> Verdict:
    """The state of a place lock held by ``acquired`` (labgrid's ``host/user``, None: free)
    with ``tags``, seen by ``me`` (this process's ``host/user``) at Unix time ``now``."""
    if not acquired:
        return Verdict(LockState.FREE)
    host = acquired.split("/", 1)[0]
    pid, lease = _int(tags.get(PID_TAG)), _int(tags.get(LEASE_TAG))
    if pid is None and lease is None:  # not an lpc-hil run's lock
        if acquired == me or me in allowed:
            return Verdict(LockState.OURS, acquired, f"acquired by {acquired} (you) outside lpc-hil")
        return Verdict(LockState.LIVE, acquired, f"acquired by {acquired} (not by lpc-hil: no {PID_TAG} tag)")
    who = f"{acquired} (lpc-hil pid {pid})" if pid is not None else acquired
    if pid is not None and host == me.split("/", 1)[0] and not alive(pid):
        return Verdict(LockState.STALE, acquired, f"acquired by {who}, which has exited")
    if lease is not None and now > lease + GRACE_S:
        return Verdict(LockState.STALE, acquired, f"acquired by {who}, whose lease ended {now - lease:.0f} s ago")
    left = ("" if lease is None else f", lease {lease - now:.0f} s more" if lease >= now
            else f", lease ended {now - lease:.0f} s ago (stale {GRACE_S:g} s after its end)")
    return Verdict(LockState.LIVE, acquired, f"acquired by {who}{left}")
