"""Fuzz the reference agent with mutated frames, against a reference model.

    python fuzz/fuzz_agent.py [--frames 1000000] [--seed 1] [--io-thread]

An in-process :class:`~hil.agent.server.AgentCore` on a simulator serves two connections: the
host's, which says HELLO with the token and then sends programs, and a stranger's, which never
authenticates. Every frame is sent as it is or mutated (bit flips, truncation, duplication,
garbage before it, random opcodes, oversized programs, programs outside the allow-list or over
the time limits, frames out of order, retransmissions of old ones, HELLOs with a wrong token,
EXECs on the stranger's connection). A second simulator, the reference model, is fed only the
programs the agent acknowledged as executed, in the order it executed them; their results must
be the agent's.

Counted, and all must be 0: **divergences** (a result the reference model does not give),
**outside** (an op reaching the agent's I/O outside its allow-list, or any op run while a
stranger's frame was handled), **double** (a program executed twice: more executions than
distinct sequence numbers acknowledged, or a replayed reply that differs from the first).
``tests/test_agent_fuzz.py`` runs a few thousand frames in the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hil.agent.protocol import (
    ErrorReply,
    ExecReply,
    Frame,
    FrameReader,
    Hello,
    MsgType,
    ProtocolError,
    Status,
    decode_program,
    encode_program,
)
from hil.agent.server import AgentCore, Connection
from hil.allowlist import AllowList
from hil.backends.base import Backend, Capabilities
from hil.backends.sim import SimBackend
from hil.errors import AccessDeniedError, HilError
from hil.ops import (
    ALL_OPS,
    Delay,
    In,
    MemFill,
    MemRead,
    MemWrite,
    Op,
    Out,
    Poll,
    Result,
    Settle,
)

TOKEN = b"fuzz-token"
WINDOW = range(0x10000, 0x90000)
PORTS_IN = [0x00, 0x02, 0x04, 0x08, 0x0A, 0x0B, 0x0C, 0x0F, 0x81, 0x82, 0x83, 0x87, 0xC0, 0xC4, 0xD4, 0xD6]
PORTS_OUT = [0x3F0, 0x3F2, 0x60, 0x64, 0x20, 0x1F0, 0xFFFF]


class Guard(Backend):
    """The agent's I/O: counts executions and every op outside the allow-list that reaches it."""

    OPS = ALL_OPS

    def __init__(self, inner: SimBackend, allow: AllowList) -> None:
        super().__init__("guard")
        self.inner, self.allow = inner, allow
        self.executions = 0
        self.outside = 0
        self.armed = True  #: False while a stranger's frame is handled: nothing may run then

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    async def execute(self, ops: Sequence[Op]) -> list[Result]:
        self.executions += 1
        if not self.armed:
            self.outside += len(ops)
        for op in ops:
            try:
                self.allow.check([op])
            except AccessDeniedError:
                self.outside += 1
        return await self.inner.execute(ops)

    async def _execute(self, ops: Sequence[Op]) -> list[Result]:
        return await self.inner.execute(ops)

    async def _settle(self, timeout_s: float | None) -> None:
        await self.inner.settle(timeout_s)


@dataclass
class Counts:
    frames: int = 0
    programs: int = 0
    executed: int = 0
    refused: int = 0
    replays_checked: int = 0
    io_errors: int = 0
    divergences: int = 0
    outside: int = 0
    double: int = 0
    mutations: dict[str, int] = field(default_factory=dict)


class Fuzzer:
    def __init__(self, seed: int, io_thread: bool) -> None:
        self.rng = random.Random(seed)
        self.sim = SimBackend()
        self.ref = SimBackend()
        allow = AllowList.default([WINDOW])
        self.guard = Guard(self.sim, allow)
        self.core = AgentCore(self.guard, allow, token=TOKEN, max_payload=1024, io_thread=io_thread)
        self.host, self.stranger = Connection("host"), Connection("stranger")
        self.readers = {self.host: FrameReader(1024), self.stranger: FrameReader(1024)}
        self.counts = Counts()
        self.epoch = 0
        self.nonce = 1
        self.seq = 0  #: next sequence number of the host
        self.sent: dict[int, bytes] = {}  #: seq -> the one valid payload sent for it (this epoch)
        self.replies: dict[tuple[int, int], bytes] = {}  #: (epoch, seq) -> first reply payload
        self.fresh = 0  #: distinct (epoch, seq) the agent executed (OK or IO_ERROR)
        self.verbose = False

    # --- programs -------------------------------------------------------------------------
    def program(self) -> bytes:
        r = self.rng
        kind = r.random()
        if kind < 0.05:
            return r.randbytes(r.randrange(1, 40))  # random opcodes and operands
        if kind < 0.07:
            return encode_program([MemWrite(0x20000, r.randbytes(1100))])  # larger than max_payload
        ops: list[Op] = []
        for _ in range(r.randrange(1, 12)):
            ops.append(self.op())
        return encode_program(ops)

    def op(self) -> Op:
        r = self.rng
        outside = r.random() < 0.03
        match r.randrange(9):
            case 0:
                return Out(r.choice(PORTS_OUT) if outside else r.choice(PORTS_IN), r.randrange(256))
            case 1:
                return In(r.choice(PORTS_OUT) if outside else r.choice(PORTS_IN))
            case 2:
                addr = r.choice([0x8FFF0, 0x100, 0xFFFFFF]) if outside else r.randrange(WINDOW.start, WINDOW.stop - 64)
                return MemWrite(addr, r.randbytes(r.randrange(1, 32)))
            case 3:
                addr = r.choice([0x8FFF0, 0x0]) if outside else r.randrange(WINDOW.start, WINDOW.stop - 64)
                return MemRead(addr, r.randrange(1, 48))
            case 4:
                return MemFill(r.randrange(WINDOW.start, WINDOW.stop - 256), 0x80000 if outside else r.randrange(256),
                               r.randrange(256))
            case 5:
                return Delay(0xFFFFFFFF if outside else r.randrange(0, 500))
            case 6:
                return Poll(r.choice(PORTS_IN), 0xFF, r.randrange(256), 0xFFFFFFFF if outside else r.randrange(0, 200),
                            r.randrange(1, 20))
            case 7:
                return Settle(0xFFFFFFFF if outside else r.randrange(0, 1000))
            case _:
                return Out(0x0C, 0)

    # --- frames -------------------------------------------------------------------------------
    async def feed(self, conn: Connection, wire: bytes) -> None:
        """What serve_link does with bytes from ``conn``; replies are checked."""
        self.guard.armed = conn is self.host
        before = self.guard.executions
        for frame in self.readers[conn].feed(wire):
            self.counts.frames += 1
            reply = await self.core.handle(frame, conn)
            if reply is not None:
                for out in FrameReader().feed(reply):
                    await self.check(conn, out)
        if conn is not self.host and self.guard.executions != before:
            self.counts.outside += self.guard.executions - before
        self.guard.armed = True

    async def check(self, conn: Connection, reply: Frame) -> None:
        if conn is self.stranger:
            if reply.type == MsgType.EXEC_REPLY:
                self.counts.outside += 1  # a stranger got an answer to a program (run or replayed)
            return
        if reply.type != MsgType.EXEC_REPLY:
            if reply.type == MsgType.ERROR and ErrorReply.decode(reply.payload).status == Status.NO_SESSION:
                await self.hello()  # as a host does
            return
        key = (self.epoch, reply.seq)
        first = self.replies.get(key)
        if first is not None:
            self.counts.replays_checked += 1
            if first != reply.payload:
                self.counts.double += 1
            return
        self.replies[key] = reply.payload
        payload = self.sent.get(reply.seq)
        if payload is None:
            self.counts.double += 1  # a reply to a program this host never sent in this session
            return
        status = Status(reply.payload[0])
        if status not in (Status.OK, Status.IO_ERROR):
            self.counts.refused += 1
            return
        self.fresh += 1
        ops = decode_program(payload)
        if status == Status.IO_ERROR:  # the model is deterministic: it must fail the same way, there
            self.counts.io_errors += 1
            try:
                await self.ref.execute(ops)
            except HilError as e:
                if ExecReply.decode(reply.payload, ops).reason != str(e):
                    self.counts.divergences += 1
            else:
                self.counts.divergences += 1
            return
        self.counts.executed += 1
        try:
            got = ExecReply.decode(reply.payload, ops).results
        except ProtocolError:
            self.counts.divergences += 1
            return
        try:
            want = await self.ref.execute(ops)
        except HilError as e:
            want = [f"reference failed: {e}"]  # type: ignore[list-item]
        if got != want:
            self.counts.divergences += 1
            if self.verbose:
                print(f"divergence at seq {reply.seq}: {ops}\n agent {got}\n model {want}", file=sys.stderr)

    async def hello(self, *, new: bool = False) -> None:
        if new:
            self.nonce += 1
            self.epoch += 1
            self.sent.clear()
        wire = Frame(MsgType.HELLO, self.seq, Hello(self.nonce, 1024, TOKEN, "fuzz").encode()).encode()
        for frame in self.readers[self.host].feed(wire):
            await self.core.handle(frame, self.host)

    def mutate(self, wire: bytes) -> tuple[str, bytes]:
        r = self.rng
        choice = r.randrange(6)
        match choice:
            case 0:
                b = bytearray(wire)
                for _ in range(r.randrange(1, 4)):
                    i = r.randrange(len(b))
                    b[i] ^= 1 << r.randrange(8)
                return "bitflip", bytes(b)
            case 1:
                return "truncate", wire[: r.randrange(1, len(wire))] + b"\x00"
            case 2:
                return "duplicate", wire + wire
            case 3:
                return "garbage", r.randbytes(r.randrange(1, 64)) + wire
            case 4:
                return "split", wire  # fed in pieces below
            case _:
                return "delimiters", b"\x00" * r.randrange(1, 4) + wire

    async def step(self) -> None:
        r = self.rng
        c = self.counts
        roll = r.random()
        if roll < 0.01:
            await self.hello(new=True)
            return
        if roll < 0.03:  # a stranger: EXEC of the host's seq numbers, HELLO with a wrong token
            seq = r.randrange(max(1, self.seq + 1))
            await self.feed(self.stranger, Frame(MsgType.EXEC, seq, encode_program([Out(0x81, 0x99)])).encode())
            bad = Hello(r.randrange(1 << 32), 1024, b"wrong", "x").encode()
            await self.feed(self.stranger, Frame(MsgType.HELLO, 0, bad).encode())
            c.mutations["stranger"] = c.mutations.get("stranger", 0) + 1
            return
        if roll < 0.05 and self.seq:  # a retransmission of an old frame: answered from the cache, never run
            seq = (self.seq - 1 - r.randrange(min(self.seq, 8))) & 0xFFFF
            if seq in self.sent:
                await self.feed(self.host, Frame(MsgType.EXEC, seq, self.sent[seq]).encode())
            return
        seq = self.seq
        payload = self.program()
        self.sent[seq] = payload
        self.seq = (self.seq + 1) & 0xFFFF
        c.programs += 1
        wire = Frame(MsgType.EXEC, seq, payload).encode()
        if roll < 0.10:  # out of order: the next one first (held), then this one
            nxt_payload = self.program()
            self.sent[self.seq] = nxt_payload
            await self.feed(self.host, Frame(MsgType.EXEC, self.seq, nxt_payload).encode())
            self.seq = (self.seq + 1) & 0xFFFF
            c.programs += 1
        for _ in range(r.randrange(0, 3)):
            name, bad = self.mutate(wire)
            c.mutations[name] = c.mutations.get(name, 0) + 1
            if name == "split":
                cut = r.randrange(1, len(bad))
                await self.feed(self.host, bad[:cut])
                await self.feed(self.host, bad[cut:])
            else:
                await self.feed(self.host, bad)
        await self.feed(self.host, b"\x00" + wire)  # the host's own (re)transmission, intact
        if len(self.sent) > 64:
            for old in sorted(self.sent, key=lambda s: (self.seq - s) & 0xFFFF, reverse=True)[:16]:
                del self.sent[old]  # far behind the replay cache: never asked again

    async def run(self, frames: int) -> Counts:
        for backend in (self.sim, self.ref, self.guard):  # every backend refuses use before open
            await backend.open()
        await self.hello()
        while self.counts.frames < frames:
            await self.step()
        # every execution must belong to a distinct acknowledged (epoch, seq)
        self.counts.double += max(0, self.guard.executions - self.fresh)
        self.counts.outside += self.guard.outside
        await self.core.aclose()
        return self.counts


async def fuzz(frames: int, seed: int = 1, io_thread: bool = False) -> Counts:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        return await Fuzzer(seed, io_thread).run(frames)
    finally:
        structlog.reset_defaults()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--io-thread", action="store_true", help="run programs in the agent's I/O thread (slower)")
    args = ap.parse_args()
    t0 = time.monotonic()
    c = asyncio.run(fuzz(args.frames, args.seed, args.io_thread))
    dt = time.monotonic() - t0
    print(f"{c.frames} frames, {c.programs} programs in {dt:.1f} s ({c.frames / dt:,.0f} frames/s)")
    print(f"executed and compared {c.executed}, refused {c.refused}, io errors {c.io_errors}, "
          f"replays checked {c.replays_checked}")
    print("mutations: " + ", ".join(f"{k} {v}" for k, v in sorted(c.mutations.items())))
    print(f"divergences {c.divergences}, outside the allow-list {c.outside}, double executions {c.double}")
    return 0 if c.divergences == c.outside == c.double == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
