"""The agent link's COBS in pure Python, for an install where the ``cobs`` package's C extension
was not built (no C compiler): that package then falls back to a byte-by-byte codec some 50x
slower than its extension, and about 15x slower than this one, which works per block (C-speed
``bytes.split`` and ``count``). Same wire bytes as docs/agent-protocol.md §1 (the final ``0x01``
after a full block written); :mod:`hil.agent.protocol` picks the extension when it is there
and turns a ``ValueError`` from :func:`decode` into its ``ProtocolError``.
"""

from __future__ import annotations

import re

_RUNS = re.compile(b"([^\x00]*)(\x00*)")


_CODES = [bytes((n,)) for n in range(256)]  #: a COBS block's code byte, by value


def encode(data: bytes) -> bytes:
    """Per block, not per byte: a frame is cut at its zeros by ``bytes.split`` (C speed) and each
    piece becomes one block (or several, past 254 bytes); data whose zeros come mostly in long
    runs (cleared memory, IRQ counts) is encoded per run of zeros instead
    (:func:`_cobs_encode_runs`), where splitting would make a block of every zero. Which one is
    decided by the zeros in runs of 8 or more (C-speed counts); isolated zeros, such as the high
    byte of every port number in a request, stay with the split, which is the faster there. Both
    give the same bytes (tests/test_agent_wire_properties.py)."""
    data = bytes(data)
    zeros = data.count(0)
    if zeros > 16 and data.count(_ZERO_RUN) * len(_ZERO_RUN) * 4 >= zeros * 3:
        return _cobs_encode_runs(data)
    return _cobs_encode_split(data)


_ZERO_RUN = bytes(8)


def _cobs_encode_split(data: bytes) -> bytes:
    codes = _CODES
    out: list[bytes] = []
    for piece in data.split(b"\x00"):  # a zero after every piece but the last
        n = len(piece)
        if n < 254:
            out.append(codes[n + 1])
            out.append(piece)
            continue
        while n >= 254:  # a full block: code 0xFF, no zero implied after it
            out.append(b"\xff")
            out.append(piece[:254])
            piece, n = piece[254:], n - 254
        out.append(codes[n + 1])
        out.append(piece)
    return b"".join(out)


def _cobs_encode_runs(data: bytes) -> bytes:
    """Per run of non-zero bytes and per run of zeros, not per byte: long zero runs stay cheap."""
    out = bytearray()
    for m in _RUNS.finditer(data):
        segment, zeros = m.group(1), len(m.group(2))
        if not segment and not zeros:
            continue  # the empty match at the very end
        while len(segment) >= 254:  # a full block: code 0xFF, no zero implied after it
            out.append(0xFF)
            out += segment[:254]
            segment = segment[254:]
        out.append(len(segment) + 1)  # this block's code implies the first zero of the run
        out += segment
        if zeros > 1:
            out += b"\x01" * (zeros - 1)  # each further zero is an empty block
    if not data or data.endswith(b"\x00"):
        out.append(1)  # the (empty) segment after the last zero
    return bytes(out)


_ONES = re.compile(b"\x01+")


def decode(data: bytes) -> bytes:
    """Walks the chain of code bytes only (a run of empty blocks, a run of zeros, in one step)
    and turns each code into the zero it stands for, in a copy of the frame: the decoded bytes
    are that copy from its second byte on. A block of 254 (code 0xFF) implies no zero, so a
    frame with one is decoded block by block (:func:`_cobs_decode_blocks`); both give the same
    bytes (tests/test_agent_wire_properties.py)."""
    out = bytearray(data)
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 1:  # a run of empty blocks: a run of zeros
            ones = _ONES.match(data, i)
            assert ones is not None  # data[i] is 1: the run has at least that byte
            end = ones.end()
            out[i:end] = bytes(end - i)
            i = end
            continue
        if code == 0:
            raise ValueError("zero byte inside a COBS frame")
        if code == 0xFF:
            return _cobs_decode_blocks(data)
        out[i] = 0
        i += code
    if i > n:
        raise ValueError("COBS block runs past the end of the frame")
    return bytes(out[1:])


def _cobs_decode_blocks(data: bytes) -> bytes:
    """Block by block: the general decoder (and the one for frames with 254-byte blocks)."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 1:  # a run of empty blocks is a run of zeros (zero-filled memory is common)
            ones = _ONES.match(data, i)
            assert ones is not None  # data[i] is 1: the run has at least that byte
            run = ones.end() - i
            end = i + run
            out += bytes(run if end < n else run - 1)
            i = end
            continue
        if code == 0:
            raise ValueError("zero byte inside a COBS frame")
        end = i + code
        if end > n:
            raise ValueError("COBS block runs past the end of the frame")
        out += data[i + 1 : end]
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)
