"""The journal's record encoder writes exactly what ``json.dumps`` writes (hypothesis).

The journal formats flat records itself because ``json.dumps`` sets up an encoder per call, a
third of a short step's cost; what a journal holds must not depend on that shortcut.
"""

from __future__ import annotations

import json
import math

from hypothesis import given, strategies as st

from hil.journal import _encode

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(1 << 80), 1 << 80), st.text(),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e16, 1.5e-7, math.inf, math.nan]),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=3), SCALARS, max_size=2))
KEYS = st.one_of(st.text(), st.sampled_from(["step", "op", "ok", "t", "vt_ns", "naïve", "\x00", '"']))


@given(st.dictionaries(KEYS, SCALARS, max_size=12))
def test_flat_records_match_json_dumps(record):
    assert _encode(record) == json.dumps(record, separators=(",", ":"))


@given(st.dictionaries(st.one_of(KEYS, st.integers(), st.booleans(), st.none()), VALUES, max_size=6))
def test_any_record_matches_json_dumps(record):
    """Nested values and keys that are not strings are json.dumps's own (it converts the keys)."""
    assert _encode(record) == json.dumps(record, separators=(",", ":"))
