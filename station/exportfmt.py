"""The on-disk export format of one run (a sweep or an aging test of one pixel).

An export is a directory holding:

* ``run.json`` - the sidecar: ``schema_version``, ``run_id``, ``kind`` ("sweep" | "aging"),
  ``station``, ``pixel``, ``device``, ``preset``, ``started``, ``ended`` (ISO 8601), the
  ``calibration`` (:meth:`station.analysis.photometry.Calibration.to_dict`), the ``spectra``
  (``[{voltage_v | t_s, kind, wavelength_nm[], counts_or_power[], used, raw_counts[],
  dark_counts, integration_ms, flags, seq}]``: an entry with ``"used": false`` — an
  auto-exposure probe, or a spectrum without emission, which has no processed fields — is
  recorded, not analysed), ``records_lost`` and the ``summary`` dict (a sweep summary or a
  lifetime result). Further keys are kept as they are.
* ``points.csv`` (sweep) or ``samples.csv`` (aging): a header line of column names, then one row
  per point; floats written as Python's shortest exact repr (exact round trip), NaN as ``nan``, an empty
  field read as NaN. Required columns: see :data:`REQUIRED_COLUMNS`. Integer columns: ``seq``;
  text columns: ``direction``; every other column is a float.

Files are written to a temporary name and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "INT_COLUMNS",
    "REQUIRED_COLUMNS",
    "SCHEMA_VERSION",
    "TABLE_FILES",
    "TEXT_COLUMNS",
    "ExportError",
    "calibration_from_meta",
    "read_export",
    "spectra_from_meta",
    "table_from_columns",
    "write_export",
]

SCHEMA_VERSION = 1
KINDS = ("sweep", "aging")
TABLE_FILES = {"sweep": "points.csv", "aging": "samples.csv"}
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "sweep": (
        "voltage_v",
        "current_a",
        "current_density_ma_cm2",
        "photodiode_a",
        "luminance_cd_m2",
        "eqe_pct",
        "ce_cd_a",
        "pe_lm_w",
    ),
    "aging": (
        "t_s",
        "current_a",
        "voltage_v",
        "photodiode_a",
        "luminance_cd_m2",
        "l_rel",
        "eqe_pct",
        "temperature_c",
        "seq",
    ),
}
#: Preferred column order when writing (others follow in the table's order).
COLUMN_ORDER: dict[str, tuple[str, ...]] = {
    "sweep": (
        "seq",
        "direction",
        "voltage_v",
        "current_a",
        "current_density_ma_cm2",
        "photodiode_a",
        "dark_a",
        "luminance_cd_m2",
        "eqe_pct",
        "ce_cd_a",
        "pe_lm_w",
    ),
    "aging": (
        "seq",
        "t_s",
        "current_a",
        "voltage_v",
        "photodiode_a",
        "dark_a",
        "luminance_cd_m2",
        "l_rel",
        "eqe_pct",
        "temperature_c",
    ),
}
INT_COLUMNS = frozenset({"seq", "epoch"})
TEXT_COLUMNS = frozenset({"direction"})
_NAN_TEXT = frozenset({"", "nan", "NaN", "NAN"})


class ExportError(ValueError):
    """A malformed or unreadable export. The message names the file (and line/field)."""


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars/arrays -> Python, so run.json is strict JSON."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def table_from_columns(columns: Mapping[str, Any]) -> np.ndarray:
    """Build a structured array from equal-length columns (``seq`` -> int64, ``direction`` ->
    text, others -> float64)."""
    if not columns:
        raise ValueError("no columns")
    arrays: dict[str, np.ndarray] = {}
    for name, col in columns.items():
        if name in TEXT_COLUMNS:
            arrays[name] = np.asarray(col, dtype=str)
        elif name in INT_COLUMNS:
            arrays[name] = np.asarray(col, dtype=np.int64)
        else:
            arrays[name] = np.asarray(col, dtype=float)
    lengths = {a.shape[0] if a.ndim else 1 for a in arrays.values()}
    if len(lengths) != 1:
        raise ValueError(f"columns of different lengths: { {k: a.size for k, a in arrays.items()} }")
    n = lengths.pop()
    dtype = np.dtype([(k, a.dtype) for k, a in arrays.items()])
    out = np.empty(n, dtype=dtype)
    for k, a in arrays.items():
        out[k] = a
    return out


def _validate_meta(meta: Mapping[str, Any], where: str) -> str:
    kind = meta.get("kind")
    if kind not in KINDS:
        raise ExportError(f"{where}: field 'kind' must be one of {KINDS}, got {kind!r}")
    return str(kind)


def _format_column(col: np.ndarray, name: str) -> list[str]:
    if name in TEXT_COLUMNS or col.dtype.kind in "US":
        return [str(v) for v in col.tolist()]
    if col.dtype.kind in "iub":
        return [str(int(v)) for v in col.tolist()]
    return list(map(repr, col.astype(float).tolist()))  # shortest exact repr; 'nan', 'inf'


def write_export(directory: str | os.PathLike[str], meta: Mapping[str, Any], table: np.ndarray) -> Path:
    """Write ``run.json`` and the table (``points.csv`` or ``samples.csv`` by ``meta['kind']``)
    into ``directory`` (created if needed). ``table`` is a structured array; the kind's required
    columns must be present. ``schema_version`` is set if missing. Returns the directory."""
    d = Path(directory)
    where = str(d / "run.json")
    kind = _validate_meta(meta, where)
    names = tuple(table.dtype.names or ())
    missing = [c for c in REQUIRED_COLUMNS[kind] if c not in names]
    if missing:
        raise ExportError(f"{d / TABLE_FILES[kind]}: table lacks required column(s) {missing}")
    d.mkdir(parents=True, exist_ok=True)
    order = [c for c in COLUMN_ORDER[kind] if c in names] + [c for c in names if c not in COLUMN_ORDER[kind]]
    cols = [_format_column(np.asarray(table[c]), c) for c in order]
    buf = io.StringIO()
    buf.write(",".join(order) + "\n")
    if any(c in TEXT_COLUMNS for c in order):
        w = csv.writer(buf, lineterminator="\n")
        w.writerows(zip(*cols, strict=True))
    else:
        buf.write("\n".join(map(",".join, zip(*cols, strict=True))))
        if cols and cols[0]:
            buf.write("\n")
    _atomic_write_text(d / TABLE_FILES[kind], buf.getvalue())
    full = {"schema_version": SCHEMA_VERSION, **dict(meta)}
    _atomic_write_text(d / "run.json", json.dumps(_json_safe(full), indent=2, allow_nan=False) + "\n")
    return d


def _parse_float(text: str, path: Path, line: int, name: str) -> float:
    t = text.strip()
    if t in _NAN_TEXT:
        return math.nan
    try:
        return float(t)
    except ValueError:
        raise ExportError(f"{path}:{line}: field {name!r}: cannot read {text!r} as a number") from None


def _read_table(path: Path, kind: str) -> np.ndarray:
    text = _read_text(path, kind)
    first = text.split("\n", 1)[0]
    head = [h.strip() for h in next(csv.reader([first]), [])]
    fast = _fast_numeric(text, head, kind, path)
    if fast is not None:
        return fast
    header, body = _csv_body(text, kind, path)
    columns = {name: _parse_column([r[j] for _, r in body], name, body, path)
               for j, name in enumerate(header)}
    return table_from_columns(columns) if columns else np.empty(0)


def _read_text(path: Path, kind: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExportError(f"{path}: missing ({kind} exports keep their data in {path.name})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: cannot read ({exc})") from None


def _csv_body(text: str, kind: str, path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the non-blank rows (with their line numbers) of a table, checked: unique
    column names, the required ones present, as many fields in each row as in the header."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or not rows[0]:
        raise ExportError(f"{path}:1: empty file (expected a header of column names)")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header):
        raise ExportError(f"{path}:1: repeated column name in header")
    missing = [c for c in REQUIRED_COLUMNS[kind] if c not in header]
    if missing:
        raise ExportError(f"{path}:1: missing required column(s) {missing}")
    body = [(i + 2, r) for i, r in enumerate(rows[1:]) if r and any(f.strip() for f in r)]
    for line, r in body:
        if len(r) != len(header):
            raise ExportError(f"{path}:{line}: {len(r)} fields, header has {len(header)}")
    return header, body


def _parse_column(raw: list[str], name: str, body: list[tuple[int, list[str]]], path: Path) -> np.ndarray:
    """One column's fields as text, floats or integers (by its name); an error names the line."""
    if name in TEXT_COLUMNS:
        return np.asarray([v.strip() for v in raw], dtype=str) if raw else np.array([], dtype="U1")
    try:
        arr = np.asarray(raw, dtype=float) if raw else np.array([], dtype=float)
    except ValueError:
        # slow path only to name the bad line
        arr = np.asarray(
            [_parse_float(v, path, line, name) for (line, _), v in zip(body, raw, strict=True)]
        )
    if name in INT_COLUMNS:
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            k = int(np.argmax(bad))
            raise ExportError(f"{path}:{body[k][0]}: field {name!r}: {raw[k]!r} is not an integer")
        return arr.astype(np.int64)
    return arr


def _fast_numeric(text: str, header: list[str], kind: str, path: Path) -> np.ndarray | None:
    """np.loadtxt for all-numeric, well-formed files; None sends the caller to the careful path
    (which also produces the precise error message)."""
    if (
        not header
        or any(h in TEXT_COLUMNS for h in header)
        or len(set(header)) != len(header)
        or any(c not in header for c in REQUIRED_COLUMNS[kind])
    ):
        return None
    try:
        data = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, ndmin=2, dtype=float)
    except ValueError:
        return None
    if data.shape[0] and data.shape[1] != len(header):
        return None
    columns: dict[str, Any] = {}
    for j, name in enumerate(header):
        col = data[:, j] if data.shape[0] else np.array([], dtype=float)
        if name in INT_COLUMNS:
            if not np.all(np.isfinite(col) & (col == np.round(col))):
                return None
            col = col.astype(np.int64)
        columns[name] = col
    return table_from_columns(columns)


def read_export(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], np.ndarray]:
    """Read an export directory: ``(meta, table)``. Raises :class:`ExportError` naming the file
    and the line or field at fault."""
    d = Path(directory)
    if not d.is_dir():
        raise ExportError(f"{d}: not a directory (expected an export with run.json)")
    side = d / "run.json"
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{side}: missing (not an export directory?)") from None
    except json.JSONDecodeError as exc:
        raise ExportError(f"{side}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"{side}: cannot read ({exc})") from None
    if not isinstance(meta, dict):
        raise ExportError(f"{side}: expected a JSON object at the top level")
    version = meta.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ExportError(f"{side}: field 'schema_version' missing or not an integer")
    if version > SCHEMA_VERSION:
        raise ExportError(f"{side}: schema_version {version} is newer than this reader ({SCHEMA_VERSION})")
    kind = _validate_meta(meta, str(side))
    for key in ("calibration", "summary"):
        if key in meta and meta[key] is not None and not isinstance(meta[key], dict):
            raise ExportError(f"{side}: field {key!r} must be an object")
    if "spectra" in meta and not isinstance(meta["spectra"], list):
        raise ExportError(f"{side}: field 'spectra' must be a list")
    table = _read_table(d / TABLE_FILES[kind], kind)
    return meta, table


def spectra_from_meta(meta: Mapping[str, Any], where: str = "run.json") -> list[Any]:
    """The sidecar's spectra the run's analysis used (``used`` not false), as
    :class:`~station.analysis.photometry.Spectrum` objects."""
    from station.analysis.photometry import Spectrum

    out = []
    for i, s in enumerate(meta.get("spectra") or []):
        if isinstance(s, Mapping) and s.get("used") is False:
            continue  # recorded but not analysed (an auto-exposure probe)
        try:
            out.append(Spectrum.from_dict(s))
        except ValueError as exc:
            raise ExportError(f"{where}: spectra[{i}]: {exc}") from None
    return out


def calibration_from_meta(meta: Mapping[str, Any], where: str = "run.json") -> Any:
    """The sidecar's calibration as a :class:`~station.analysis.photometry.Calibration`."""
    from station.analysis.photometry import Calibration

    cal = meta.get("calibration")
    if cal is None:
        raise ExportError(f"{where}: no 'calibration' (pass one with --calibration)")
    try:
        return Calibration.from_dict(cal)
    except ValueError as exc:
        raise ExportError(f"{where}: {exc}") from None
