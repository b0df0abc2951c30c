"""Hypothesis strategies that build any message of the spec with random, representable values."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from firmware_protocol.messages import MESSAGE_CLASSES, RECORD_DTYPES
from firmware_protocol.spec import MESSAGES, RECORDS_BY_NAME, SCALAR_TYPES, Field

_INT_RANGES = {
    "u8": (0, 2**8 - 1), "u16": (0, 2**16 - 1), "u32": (0, 2**32 - 1), "u64": (0, 2**64 - 1),
    "i8": (-(2**7), 2**7 - 1), "i16": (-(2**15), 2**15 - 1), "i32": (-(2**31), 2**31 - 1),
}


def scalar(t: str) -> st.SearchStrategy:
    if t in _INT_RANGES:
        lo, hi = _INT_RANGES[t]
        return st.integers(lo, hi)
    width = 32 if t == "f32" else 64
    return st.floats(width=width, allow_nan=False)


def field_value(f: Field) -> st.SearchStrategy:
    if f.is_scalar:
        return scalar(f.type)
    if f.type == "str":
        # text whose UTF-8 encoding fits max_len bytes
        # NUL-free text (C strings) whose UTF-8 encoding fits max_len bytes
        return st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                       max_size=f.max_len).filter(
            lambda s: len(s.encode()) <= f.max_len)
    if f.type == "records":
        rec = RECORDS_BY_NAME[f.record]
        dtype = RECORD_DTYPES[f.record]

        def build(rows: list[tuple]) -> np.ndarray:
            return np.array(rows, dtype=dtype)

        row = st.tuples(*(scalar(x.type) for x in rec.fields))
        return st.lists(row, max_size=f.max_len).map(build)
    assert f.is_array and f.elem_type in SCALAR_TYPES
    return st.lists(scalar(f.elem_type), max_size=min(f.max_len, 40)).map(tuple)


def message(spec=None) -> st.SearchStrategy:
    if spec is None:
        return st.sampled_from(MESSAGES).flatmap(message)
    cls = MESSAGE_CLASSES[spec.id]
    return st.fixed_dictionaries({f.name: field_value(f) for f in spec.fields}).map(
        lambda kw: cls(**kw))
