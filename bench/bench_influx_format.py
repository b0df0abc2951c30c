"""Influx line formatter benchmark: the sink's plain field formatter against the eval-built one
it replaced (issue 13), on the same rows in the same run.

    python bench/bench_influx_format.py [--json] [--rows N] [--repeat R]

For each table (``sweep_points``, ``aging_samples``) and mode (fields as measured, and the
``live_<field>`` names of ``revisions = "live_fields"``) it formats ``N`` realistic full rows
with :func:`station.sinks.influx._query`'s formatter (``template % row[first:-1]``) and with
the baseline, a copy of the former code that compiled one f-string lambda per table with
``eval``. It checks that both give the same bytes, and reports the best of ``R`` timings of
each as ns per row and the ratio plain / eval (< 1: the plain one is faster): the median of
``R`` paired timings, each pair back to back on the same rows. ``line`` times
the whole line the sink writes for a row (tag prefix + fields + timestamp), where the
formatter is one part of the cost.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from station.sinks.influx import _QUERIES, FLOAT_FIELDS, INT_FIELDS, field_name


def eval_formatter(table: str, live: bool) -> Callable[[tuple[Any, ...]], str]:
    """The former formatter (station/sinks/influx.py before issue 13), verbatim in effect."""
    q = _QUERIES[table]
    pos = {n: i + 1 for i, n in enumerate(q.names)}
    parts = ([f"{field_name(table, k, live)}={{r[{pos[k]}]!r}}" for k in FLOAT_FIELDS[table]]
             + [f"{k}={{r[{pos[k]}]}}i" for k in INT_FIELDS[table]])
    return eval(f"lambda r: f'{','.join(parts)}'")  # the code this benchmark replaced


def make_rows(table: str, n: int) -> list[tuple[Any, ...]]:
    """``(id, *names, flag)`` rows as SQLite returns them: measured floats, small ints."""
    rng = random.Random(0)
    q = _QUERIES[table]
    rows = []
    for i in range(n):
        d: dict[str, Any] = {"run_id": 1 + i // 1000, "t_us": 5_000_000 + 100_000 * i,
                             "pixel": 1 + i % 8, "direction": "forward" if i % 2 else None}
        for k in FLOAT_FIELDS[table]:
            d[k] = rng.uniform(1e-9, 10.0) * 10 ** rng.randint(-6, 3)
        for k in INT_FIELDS[table]:
            d[k] = rng.randint(0, 10**6) if k in ("seq", "idx") else rng.randint(0, 3)
        rows.append((i + 1, *(d[c] for c in q.names), 0))
    return rows


def ns_per_row(loop: Callable[[list[tuple[Any, ...]]], object],
               rows: list[tuple[Any, ...]]) -> float:
    t0 = time.perf_counter_ns()
    loop(rows)
    return (time.perf_counter_ns() - t0) / len(rows)


Loops = tuple[Callable[[list[tuple[Any, ...]]], object], Callable[[list[tuple[Any, ...]]], object]]


def loops(table: str, live: bool) -> dict[str, Loops]:
    """(plain, eval) loops over rows, each as the sink calls the formatter: the fields alone,
    and the whole line (tag prefix, fields, timestamp)."""
    q = _QUERIES[table]
    fmt, first = (q.live_fields if live else q.fields), q.first
    base = eval_formatter(table, live)
    prefix = f"{table},station=lab-a,run=1,pixel=3 "

    def fields_plain(rows: list[tuple[Any, ...]]) -> object:
        return [fmt(r[first:-1]) for r in rows]

    def fields_eval(rows: list[tuple[Any, ...]]) -> object:
        return [base(r) for r in rows]

    def line_plain(rows: list[tuple[Any, ...]]) -> object:
        return [f"{prefix}{fmt(r[first:-1])} {r[2] + 1_700_000_000_000_000}" for r in rows]

    def line_eval(rows: list[tuple[Any, ...]]) -> object:
        return [f"{prefix}{base(r)} {r[2] + 1_700_000_000_000_000}" for r in rows]

    return {"fields": (fields_plain, fields_eval), "line": (line_plain, line_eval)}


def measure(rows_n: int, repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": platform.platform(), "python": platform.python_version(),
                           "rows": rows_n, "repeat": repeat, "cases": {}}
    ratios = []
    for table in _QUERIES:
        rows = make_rows(table, rows_n)
        for live in (False, True):
            cases = loops(table, live)
            for plain, base in cases.values():
                assert plain(rows) == base(rows), "outputs differ"
            # paired and alternated: each repeat times both on the same rows back to back (who
            # goes first alternates), and the ratio is the median of the pairs' ratios, so a
            # busy moment of a shared machine slows both sides of a pair alike
            pairs: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
            for k in range(repeat):
                for what, (plain, base) in cases.items():
                    if k % 2:
                        te, tp = ns_per_row(base, rows), ns_per_row(plain, rows)
                    else:
                        tp, te = ns_per_row(plain, rows), ns_per_row(base, rows)
                    pairs[what].append((tp, te))
            ratio = statistics.median(tp / te for tp, te in pairs["fields"])
            name = f"{table}{'/live' if live else ''}"
            out["cases"][name] = {
                "eval_ns_per_row": round(min(te for _, te in pairs["fields"]), 1),
                "plain_ns_per_row": round(min(tp for tp, _ in pairs["fields"]), 1),
                "ratio_plain_over_eval": round(ratio, 3),
                "line_ratio_plain_over_eval": round(
                    statistics.median(tp / te for tp, te in pairs["line"]), 3)}
            ratios.append(ratio)
    out["ratio_plain_over_eval_worst"] = round(max(ratios), 3)
    out["goal"] = "ratio <= 1.05 (issue 13: a plain formatter within 5 %)"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--rows", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=60)
    args = ap.parse_args()
    res = measure(args.rows, args.repeat)
    if args.json:
        print(json.dumps(res))
        return
    print(f"{'case':28} {'eval ns/row':>12} {'plain ns/row':>13} {'ratio':>7} {'line ratio':>11}")
    for name, c in res["cases"].items():
        print(f"{name:28} {c['eval_ns_per_row']:12.1f} {c['plain_ns_per_row']:13.1f} "
              f"{c['ratio_plain_over_eval']:7.3f} {c['line_ratio_plain_over_eval']:11.3f}")
    print(f"worst ratio plain/eval: {res['ratio_plain_over_eval_worst']:.3f} ({res['goal']})")


if __name__ == "__main__":
    main()
