"""Generate ``firmware_protocol/messages.py`` (typed message classes) from the spec."""

from __future__ import annotations

from .spec import MESSAGES, RECORDS, SCALAR_TYPES, SPEC_HASH, Field

_NP = {"u8": "u1", "u16": "<u2", "u32": "<u4", "u64": "<u8", "i8": "i1", "i16": "<i2",
       "i32": "<i4", "f32": "<f4", "f64": "<f8"}


def camel(name: str) -> str:
    return "".join(p.capitalize() for p in name.split("_"))


def _pytype(f: Field) -> str:
    if f.is_scalar:
        return "float" if f.type.startswith("f") else "int"
    if f.type == "str":
        return "str"
    if f.type == "records":
        return "np.ndarray"
    return "tuple[float, ...]" if f.elem_type.startswith("f") else "tuple[int, ...]"


def _default(f: Field) -> str:
    if f.is_scalar:
        return "0.0" if f.type.startswith("f") else "0"
    if f.type == "str":
        return '""'
    if f.type == "records":
        return f"field(default_factory=lambda: np.zeros(0, dtype={f.record.upper()}_DTYPE))"
    return "()"


def generate() -> str:
    out: list[str] = []
    w = out.append
    w('"""Message classes of the board protocol. GENERATED from spec.py: do not edit.')
    w("")
    w("Regenerate with ``python -m firmware_protocol python > firmware_protocol/messages.py``.")
    w('"""')
    w("")
    w("from __future__ import annotations")
    w("")
    w("from dataclasses import dataclass, field")
    w("from typing import ClassVar")
    w("")
    w("import numpy as np")
    w("")
    w("from .base import BaseMessage")
    w("")
    w(f"SPEC_HASH = 0x{SPEC_HASH:08X}")
    w("")
    for r in RECORDS:
        w(f"{r.name.upper()}_DTYPE = np.dtype(")
        w("    [")
        for f in r.fields:
            w(f'        ("{f.name}", "{_NP[f.type]}"),  # {f.unit or "-"}: {f.doc}'.rstrip())
        w("    ]")
        w(")")
        w(f'"""{r.doc} {r.size} bytes, packed little-endian."""')
        w("")
    w("RECORD_DTYPES: dict[str, np.dtype] = {")
    for r in RECORDS:
        w(f'    "{r.name}": {r.name.upper()}_DTYPE,')
    w("}")
    w("")
    for m in MESSAGES:
        w("")
        w("@dataclass(frozen=True, eq=False)")
        w(f"class {camel(m.name)}(BaseMessage):")
        w(f'    """{m.doc}"""')
        w("")
        w(f"    MSG_ID: ClassVar[int] = 0x{m.id:02X}")
        w(f'    NAME: ClassVar[str] = "{m.name}"')
        for f in m.fields:
            unit = f"  # {f.unit}" if f.unit else ""
            if f.extension:
                unit = f"  # extension field{(': ' + f.unit) if f.unit else ''}"
            w(f"    {f.name}: {_pytype(f)} = {_default(f)}{unit}")
        w("")
    w("")
    w("MESSAGE_CLASSES: dict[int, type[BaseMessage]] = {")
    for m in MESSAGES:
        w(f"    0x{m.id:02X}: {camel(m.name)},")
    w("}")
    w("MESSAGE_CLASSES_BY_NAME: dict[str, type[BaseMessage]] = {c.NAME: c for c in MESSAGE_CLASSES.values()}")
    w("")
    return "\n".join(out)


__all__ = ["SCALAR_TYPES", "camel", "generate"]
