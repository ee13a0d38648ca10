"""Programs, results and capabilities as JSON: the one encoding of a bench session's record.

An op is ``{"op": "Out", "port": 10, "value": 6, "width": 8}``: its class name and its fields
(the op vocabulary of :mod:`hil.ops`, so a new op needs no code here); bytes are
``{"hex": "..."}``. Results are a plain int, ``{"hex": ...}`` for bytes, or a tagged object
(``{"type": "DeviceState", ...}``, ``{"type": "IrqLines", ...}``). Decoding builds the op
through its class, so a record edited by hand is validated as a program written in Python is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hil.backends.base import Capabilities, Capability
from hil.errors import RecordFormatError
from hil.ops import ALL_OPS, DeviceState, IrqLines, Op, Result

_OPS: dict[str, type] = {cls.__name__: cls for cls in ALL_OPS}


def _value(v: object) -> object:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"hex": bytes(v).hex()}
    if isinstance(v, tuple):
        return list(v)
    return v


def _unvalue(v: object) -> object:
    if isinstance(v, dict) and set(v) == {"hex"} and isinstance(v["hex"], str):
        return bytes.fromhex(v["hex"])
    return v


def op_to_json(op: Op) -> dict[str, Any]:
    out: dict[str, Any] = {"op": type(op).__name__}
    for f in dataclasses.fields(op):
        out[f.name] = _value(getattr(op, f.name))
    return out


def op_from_json(data: object) -> Op:
    if not isinstance(data, dict) or data.get("op") not in _OPS:
        raise RecordFormatError(f"not an op: {str(data)[:80]!r}")
    cls = _OPS[data["op"]]
    try:
        op: Op = cls(**{k: _unvalue(v) for k, v in data.items() if k != "op"})
        return op
    except (TypeError, ValueError) as e:
        raise RecordFormatError(f"op {data['op']}: {e}") from None


def result_to_json(result: Result) -> object:
    match result:
        case DeviceState():
            return {"type": "DeviceState", **{f.name: _value(getattr(result, f.name))
                                              for f in dataclasses.fields(result)}}
        case IrqLines():
            return {"type": "IrqLines", "levels": result.levels, "counts": list(result.counts)}
        case bytes() | bytearray() | memoryview():
            return {"hex": bytes(result).hex()}
    return result


def result_from_json(data: object) -> Result:
    match data:
        case int():
            return data
        case {"hex": str(text)}:
            return bytes.fromhex(text)
        case {"type": "IrqLines", "levels": int(levels), "counts": list(counts)}:
            return IrqLines(levels, tuple(int(c) for c in counts))
        case {"type": "DeviceState", **rest}:
            fields = {k: _unvalue(v) for k, v in rest.items()}
            try:
                return DeviceState(**fields)  # type: ignore[arg-type]  # the recorded fields
            except TypeError as e:
                raise RecordFormatError(f"DeviceState: {e}") from None
    raise RecordFormatError(f"not a result: {str(data)[:80]!r}")


def capabilities_from_json(data: object) -> Capabilities:
    """The inverse of :meth:`Capabilities.to_json` (unknown feature names are refused)."""
    if not isinstance(data, dict):
        raise RecordFormatError(f"not capabilities: {str(data)[:80]!r}")
    try:
        features = frozenset(Capability(f) for f in data.get("features", ()))
        lo, hi = data.get("memory_window", (0, 0))
        return Capabilities(str(data["backend"]), str(data["identity"]), features, (int(lo), int(hi)),
                            dict(data.get("details", {})))
    except (KeyError, ValueError, TypeError) as e:
        raise RecordFormatError(f"capabilities: {e}") from None


def describe_op(op: Op) -> str:
    """One op for a message: its class and fields, ports and values in hex."""
    parts = []
    for f in dataclasses.fields(op):
        v = getattr(op, f.name)
        if isinstance(v, (bytes, bytearray)):
            text = bytes(v[:16]).hex() + ("..." if len(v) > 16 else "") + f" ({len(v)} bytes)"
        elif isinstance(v, int) and not isinstance(v, bool) and f.name in ("port", "value", "addr", "mask", "expect"):
            text = f"0x{v:X}"
        else:
            text = repr(v)
        parts.append(f"{f.name}={text}")
    return f"{type(op).__name__}({', '.join(parts)})"
