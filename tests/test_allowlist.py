"""Allow-lists refuse anything outside their ports and memory windows (docs/reference/hil-lessons.md §3.21)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from hil.allowlist import AllowList, AllowListError, parse_window
from hil.errors import AccessDeniedError
from hil.ops import In, MemRead, MemWrite, Out

EXAMPLE = Path(__file__).resolve().parent.parent / "configs" / "allowlist.example.toml"


def test_default_allows_the_dma_subsystem_only():
    al = AllowList.default()
    for port in (0x00, 0x0F, 0x10, 0x1F, 0x80, 0x8F, 0xC0, 0xDE, 0xDF):
        assert al.port_allowed(port)
    for port in (0x20, 0x7F, 0x90, 0xBF, 0xE0, 0x3F0, 0x480):
        assert not al.port_allowed(port)
    assert not al.port_allowed(0x1F, 16)  # a word access spilling into 0x20
    with pytest.raises(AccessDeniedError, match=r"0x03F0.*allow-list"):
        al.check_port(0x3F0, write=True)


def test_memory_windows():
    al = AllowList.default([range(0x10000, 0x90000)])
    assert al.mem_allowed(0x10000, 0x80000)
    assert not al.mem_allowed(0xFFFF, 2)
    assert not al.mem_allowed(0x8FFFF, 2)
    with pytest.raises(AccessDeniedError, match="0x10000-0x90000"):
        al.check_mem(0x90000, 1)
    with pytest.raises(AccessDeniedError, match="none configured"):
        AllowList.default().check_mem(0x10000, 1)


def test_example_file_loads():
    al = AllowList.from_toml(EXAMPLE)
    assert al.port_allowed(0x81) and not al.port_allowed(0x3F0)
    assert al.mem_allowed(0x10000, 0x80000)


def test_extra_ports_and_bad_files(tmp_path: Path):
    f = tmp_path / "a.toml"
    f.write_text('[ports]\ndma = false\nextra = ["0x3F0-0x3F7"]\n')
    al = AllowList.from_toml(f)
    assert al.port_allowed(0x3F5) and not al.port_allowed(0x08)
    f.write_text('[ports]\nextra = ["0x3F7-0x3F0"]\n')
    with pytest.raises(AllowListError, match="ends before it starts"):
        AllowList.from_toml(f)
    f.write_text('[bogus]\n')
    with pytest.raises(AllowListError, match="unknown table"):
        AllowList.from_toml(f)
    with pytest.raises(AllowListError, match="not found"):
        AllowList.from_toml(tmp_path / "missing.toml")


def test_program_refused_as_a_whole_before_it_runs():
    al = AllowList.default([range(0x10000, 0x20000)])
    al.check([Out(0x0A, 6), In(0x08), MemRead(0x10000, 16)])
    with pytest.raises(AccessDeniedError):
        al.check([Out(0x0A, 6), MemWrite(0x20000, b"x")])


@given(st.integers(0, 0xFFFF), st.sampled_from([8, 16]), st.booleans())
def test_default_allows_exactly_the_at_dma_ports(port, width, write):
    """docs/reference/hil-lessons.md §3.21 / docs/reference/8237.md §1: DMA1 with its mirror 0x00-0x1F, the page file 0x80-0x8F,
    DMA2 0xC0-0xDF; every byte of the access must be inside, and check_port agrees with it."""
    spec = [(0x00, 0x1F), (0x80, 0x8F), (0xC0, 0xDF)]
    last = port + width // 8 - 1
    expected = any(lo <= port and last <= hi for lo, hi in spec)
    al = AllowList.default()
    assert al.port_allowed(port, width) == expected
    if expected:
        al.check_port(port, width, write=write)
    else:
        with pytest.raises(AccessDeniedError):
            al.check_port(port, width, write=write)

def test_window_notation_end_exclusive_or_size():
    """Memory windows are END-exclusive everywhere (URL window=, --window, [memory] windows)."""
    assert parse_window("0x10000-0x90000") == range(0x10000, 0x90000)
    assert parse_window("0x10000+0x80000") == range(0x10000, 0x90000)
    assert parse_window("0x10000 0x80000") == range(0x10000, 0x90000)  # "+" decoded from a URL
    with pytest.raises(AllowListError, match="empty"):
        parse_window("0x9000-0x9000")
    with pytest.raises(AllowListError, match="16 MiB"):
        parse_window("0xFF0000-0x1000001")
