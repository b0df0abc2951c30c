"""Protocol benchmark: aging-sample blocks decoded into numpy per second, and wire overhead.

    python bench/bench_protocol.py [--json] [--blocks N]

Decodes a stream of full ``aging_samples`` frames with :class:`StreamDecoder` (COBS, CRC-32,
header checks, ``np.frombuffer``) and reports samples/s. The baseline, measured in the same
run on the same machine, is ``np.frombuffer`` over the bare concatenated records (no framing,
no checks): the ratio says what framing and checking cost. Overhead is wire bytes per sample
against the raw record payload, for full blocks.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from firmware_protocol.codec import StreamDecoder, encode_frame
from firmware_protocol.messages import AGING_SAMPLE_DTYPE, AgingSamples
from firmware_protocol.spec import MESSAGES_BY_NAME


def make_wire(n_blocks: int) -> tuple[bytes, bytes, int]:
    per = MESSAGES_BY_NAME["aging_samples"].fields[0].max_len
    rng = np.random.default_rng(0)
    frames = []
    raws = []
    for b in range(n_blocks):
        rec = np.zeros(per, AGING_SAMPLE_DTYPE)
        rec["seq"] = np.arange(b * per, (b + 1) * per)
        rec["t_us"] = rec["seq"].astype(np.uint64) * 1_000_000
        rec["current_a"] = rng.normal(1e-3, 1e-7, per)
        rec["voltage_v"] = rng.normal(3.2, 1e-3, per)
        rec["photodiode_a"] = rng.normal(2e-6, 1e-9, per)
        rec["temperature_c"] = 25.0
        frames.append(encode_frame(AgingSamples(records=rec)))
        raws.append(rec.tobytes())
    return b"".join(frames), b"".join(raws), per


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--blocks", type=int, default=20000, help="frames per run (default 20000)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    wire, raw, per = make_wire(args.blocks)
    n = args.blocks * per

    def decode() -> None:
        dec = StreamDecoder()
        evs = dec.feed(wire)
        arr = np.concatenate([e.message.records for e in evs])  # type: ignore[union-attr]
        assert len(arr) == n and dec.frames_ok == args.blocks

    def baseline() -> None:
        arr = np.frombuffer(raw, AGING_SAMPLE_DTYPE).copy()
        assert len(arr) == n

    t_dec = best_of(decode, args.repeats)
    t_base = best_of(baseline, args.repeats)
    res = {
        "machine": f"{platform.machine()} {platform.processor() or ''} {platform.python_version()}".strip(),
        "samples": n,
        "samples_per_frame": per,
        "decode_samples_per_s": n / t_dec,
        "baseline_frombuffer_samples_per_s": n / t_base,
        "decode_vs_baseline_ratio": t_base / t_dec,
        "wire_bytes_per_sample": len(wire) / n,
        "raw_bytes_per_sample": AGING_SAMPLE_DTYPE.itemsize,
        "framing_overhead_pct": 100 * (len(wire) - len(raw)) / len(wire),
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(f"decode: {res['decode_samples_per_s']:,.0f} samples/s into numpy "
              f"({per} samples/frame; goal >= 1,000,000)")
        print(f"baseline np.frombuffer on bare records: {res['baseline_frombuffer_samples_per_s']:,.0f} "
              f"samples/s (decode is {res['decode_vs_baseline_ratio']:.3f} of it)")
        print(f"wire: {res['wire_bytes_per_sample']:.2f} bytes/sample for {res['raw_bytes_per_sample']} "
              f"raw; framing overhead {res['framing_overhead_pct']:.2f} % of wire bytes (goal <= 10 %)")


if __name__ == "__main__":
    main()
