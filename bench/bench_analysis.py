"""Benchmark of the analysis hot paths.

* the summary (a Table S1 row) of a 10,000-point sweep            - goal < 20 ms
* the lifetime analysis incl. the stretched-exponential T50 fit
  of a 1,000,000-sample aging trace                                - goal < 1 s

Each is timed with time.perf_counter over several repeats (after one warm-up call), and reported
beside a baseline measured in the same run on the same arrays, as a ratio, so numbers from
machines of different speed can be compared:

* sweep baseline: a plain numpy pass over the same columns (nanargmax of L, CE, EQE, PE and the
  first threshold crossing) - the least any summary must do;
* aging baseline: one np.median over the 1,000,000 luminance samples.

Run: ``python bench/bench_analysis.py [--json] [--repeats N]``. No assertion: it reports.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from station.analysis.lifetime import analyze_lifetime
from station.analysis.photometry import Calibration, Spectrum, compute_points, prepare_spectra
from station.analysis.summary import sweep_summary

GOAL_SWEEP_S = 0.020
GOAL_AGING_S = 1.0


def timeit(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    fn()  # warm-up (imports, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"min_s": min(times), "median_s": statistics.median(times), "repeats": repeats}


def make_sweep(n: int = 10_000) -> tuple[np.ndarray, list[Spectrum], Calibration]:
    cal = Calibration(
        pixel_area_m2=4e-6,
        responsivity_wavelength_nm=[350.0, 450.0, 550.0, 650.0, 800.0],
        responsivity_a_per_w=[0.10, 0.22, 0.31, 0.38, 0.45],
        photodiode_radius_m=5e-3,
        distance_m=0.03,
    )
    wl = np.arange(400.0, 700.0, 0.5)
    spectra = [
        Spectrum(wl, np.exp(-0.5 * ((wl - 507.0 - 0.3 * k) / 8.5) ** 2), "photon", voltage_v=2.0 + k)
        for k in range(6)
    ]
    rng = np.random.default_rng(0)
    v = np.linspace(0.0, 7.0, n)
    i = np.minimum(1e-12 * np.expm1(v / 0.2), 0.02)
    i_pd = 1e-3 * i * np.exp(-0.5 * ((v - 4.0) / 1.5) ** 2) + 2e-11 + 1e-13 * rng.standard_normal(n)
    pts = compute_points(v, i, i_pd, cal, spectra, 2e-11)
    return pts, spectra, cal


def make_aging(n: int = 1_000_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    t = np.linspace(0.0, 1000.0 * 3600.0, n)
    th = t / 3600.0
    rel = (1 + 0.2 * (1 - np.exp(-th / 5.0))) * np.exp(-((th / 300.0) ** 0.7))
    return t, 1000.0 * rel * (1 + 0.01 * rng.standard_normal(n))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--repeats", type=int, default=0, help="repeats (default 30 sweep / 5 aging)")
    args = ap.parse_args(argv)

    pts, spectra, cal = make_sweep()
    prepared = prepare_spectra(spectra, cal)
    lum, ce, eqe, pe = pts["luminance_cd_m2"], pts["ce_cd_a"], pts["eqe_pct"], pts["pe_lm_w"]

    def sweep_baseline() -> None:
        for a in (lum, ce, eqe, pe):
            np.nanargmax(a)
        np.argmax(lum >= 1.0)

    cols = (pts["voltage_v"], pts["current_a"], pts["photodiode_a"])
    r_sweep = args.repeats or 30
    res: dict[str, Any] = {
        "sweep_summary_10k": timeit(lambda: sweep_summary(pts, spectra), r_sweep),
        "sweep_baseline_numpy_pass": timeit(sweep_baseline, r_sweep),
        "compute_points_10k": timeit(lambda: compute_points(*cols, cal, prepared, 2e-11), r_sweep),
    }
    t, lum_age = make_aging()
    r_age = args.repeats or 5
    res["aging_lifetime_fit_1M"] = timeit(lambda: analyze_lifetime(t, lum_age), r_age)
    res["aging_baseline_np_median_1M"] = timeit(lambda: np.median(lum_age), r_age)
    res["ratios"] = {
        "sweep_summary_vs_baseline": res["sweep_summary_10k"]["median_s"]
        / res["sweep_baseline_numpy_pass"]["median_s"],
        "aging_fit_vs_baseline": res["aging_lifetime_fit_1M"]["median_s"]
        / res["aging_baseline_np_median_1M"]["median_s"],
    }
    res["goals"] = {
        "sweep_summary_10k_s": GOAL_SWEEP_S,
        "aging_lifetime_fit_1M_s": GOAL_AGING_S,
        "sweep_met": res["sweep_summary_10k"]["median_s"] < GOAL_SWEEP_S,
        "aging_met": res["aging_lifetime_fit_1M"]["median_s"] < GOAL_AGING_S,
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    for name in (
        "sweep_summary_10k",
        "sweep_baseline_numpy_pass",
        "compute_points_10k",
        "aging_lifetime_fit_1M",
        "aging_baseline_np_median_1M",
    ):
        r = res[name]
        print(
            f"{name:30} median {r['median_s'] * 1e3:9.3f} ms   "
            f"min {r['min_s'] * 1e3:9.3f} ms   ({r['repeats']}x)"
        )
    rt = res["ratios"]
    g = res["goals"]
    print(
        f"sweep summary / numpy pass: {rt['sweep_summary_vs_baseline']:.1f}x; goal < 20 ms: "
        f"{'met' if g['sweep_met'] else 'NOT met'}"
    )
    print(
        f"aging fit / np.median:      {rt['aging_fit_vs_baseline']:.1f}x; goal < 1 s: "
        f"{'met' if g['aging_met'] else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
