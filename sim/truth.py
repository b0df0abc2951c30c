"""Ground truth straight from the device model: Table S1 figures and lifetime figures.

No measurement chain and no noise: these are the numbers a perfect station would report for a
simulated pixel, so tests of the real measurement chain can be scored against them.

Run ``python -m sim.truth --preset dbsa`` to print them as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from sim.optics import CIE_WAVELENGTH_NM, spectrum_xy
from sim.physics import (
    A_M2_PER_MA_CM2,
    A_M2_PER_MM2,
    T_REF_K,
    DevicePreset,
    failure_time_h,
    lifetime_tau_h,
    luminance_ratio,
    operating_point,
    operating_point_at_current,
    spectrum_fwhm_nm,
    spectrum_peak_nm,
    spectrum_w_per_nm,
)
from sim.presets import PRESETS, get_preset

__all__ = ["LIFETIME_KEYS", "SWEEP_KEYS", "V_ON_THRESHOLD_CD_M2", "lifetime_truth", "main", "sweep_truth"]

V_ON_THRESHOLD_CD_M2 = 1.0
SWEEP_KEYS = (
    "von_v",
    "l_max_cd_m2",
    "ce_max_cd_a",
    "eqe_max_pct",
    "pe_max_lm_w",
    "el_peak_nm",
    "el_fwhm_nm",
    "cie_x",
    "cie_y",
)
LIFETIME_KEYS = (
    "l0_cd_m2",
    "l_peak_cd_m2",
    "t_peak_h",
    "t95_h",
    "t90_h",
    "t80_h",
    "t50_h",
    "t50_from_peak_h",
)


def _refine_max(f: Callable[[float], float], grid: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """(argmax, max) of f, starting from the best grid point and refining between its neighbours."""
    k = int(np.nanargmax(values))
    lo = grid[max(k - 1, 0)]
    hi = grid[min(k + 1, len(grid) - 1)]
    if hi <= lo:
        return float(grid[k]), float(values[k])
    res = minimize_scalar(lambda x: -f(x), bounds=(lo, hi), method="bounded", options={"xatol": 1e-9})
    x_best, f_best = float(res.x), -float(res.fun)
    if f_best < values[k]:
        return float(grid[k]), float(values[k])
    return x_best, f_best


def sweep_truth(
    preset: DevicePreset,
    area_m2: float | None = None,
    temperature_k: float = T_REF_K,
    step_v: float = 0.002,
) -> dict[str, float]:
    """Table S1 of the seed, computed from the model on a fine voltage grid (0 → sweep max).

    - ``von_v``: the voltage where L first reaches 1 cd/m² (the grid bracket refined by brentq on
      the model, i.e. exact interpolation at the threshold);
    - ``l_max_cd_m2``, ``ce_max_cd_a`` (CE = L·A/I), ``eqe_max_pct`` (forward photons per
      electron, %), ``pe_max_lm_w`` (PE = π·L·A/(I·V)): maxima over the sweep, each refined by a
      bounded scalar search around its best grid point (CE, EQE and PE maxima sit at different
      voltages, as in the seed);
    - ``el_peak_nm``, ``el_fwhm_nm``, ``cie_x``, ``cie_y``: from the spectrum at the voltage of
      maximum luminance (CIE 1931 2°, CIE 015:2018).
    """
    area = preset.area_m2 if area_m2 is None else area_m2
    v = np.arange(step_v, preset.sweep_max_voltage_v + 0.5 * step_v, step_v)
    op = operating_point(preset, v, area, temperature_k)
    lum = op.luminance_cd_m2
    cur = op.current_a
    pos = (cur > 0) & (lum > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ce = np.where(pos, lum * area / cur, np.nan)
        eqe_pct = np.where(pos, 100.0 * op.eqe, np.nan)
        pe = np.where(pos, math.pi * lum * area / (cur * v), np.nan)

    def at(x: float) -> tuple[float, float, float]:
        p = operating_point(preset, x, area, temperature_k)
        return float(p.luminance_cd_m2), float(p.current_a), float(p.eqe)

    def lum_at(x: float) -> float:
        return at(x)[0]

    def ce_at(x: float) -> float:
        lv, i, _ = at(x)
        return lv * area / i if i > 0 else 0.0

    def eqe_at(x: float) -> float:
        return 100.0 * at(x)[2]

    def pe_at(x: float) -> float:
        lv, i, _ = at(x)
        return math.pi * lv * area / (i * x) if i > 0 and x > 0 else 0.0

    above = np.nonzero(lum >= V_ON_THRESHOLD_CD_M2)[0]
    if above.size == 0 or above[0] == 0:
        von = math.nan
    else:
        k = int(above[0])
        von = float(brentq(lambda x: lum_at(x) - V_ON_THRESHOLD_CD_M2, v[k - 1], v[k], xtol=1e-9))
    v_lmax, l_max = _refine_max(lum_at, v, lum)
    _, ce_max = _refine_max(ce_at, v, ce)
    _, eqe_max = _refine_max(eqe_at, v, eqe_pct)
    _, pe_max = _refine_max(pe_at, v, pe)

    wl = CIE_WAVELENGTH_NM
    x, y = spectrum_xy(wl, spectrum_w_per_nm(preset, wl, v_lmax))
    return {
        "von_v": von,
        "l_max_cd_m2": l_max,
        "ce_max_cd_a": ce_max,
        "eqe_max_pct": eqe_max,
        "pe_max_lm_w": pe_max,
        "el_peak_nm": float(spectrum_peak_nm(preset, v_lmax)),
        "el_fwhm_nm": float(spectrum_fwhm_nm(preset, v_lmax)),
        "cie_x": float(x),
        "cie_y": float(y),
    }


def _first_crossing(
    ratio: Callable[[np.ndarray], np.ndarray],
    level: float,
    t_start: float,
    t_end: float,
    t_fail: float = math.inf,
) -> float:
    """First t in [t_start, t_end] where ratio(t) <= level (log grid, then brentq); inf if none.

    ``t_fail`` is a known downward jump (sudden failure): a crossing by the jump returns it exactly.
    """
    grid = np.geomspace(max(t_start, t_end * 1e-9), t_end, 20001)
    extra = [t_start] + ([t_fail] if t_start <= t_fail <= t_end else [])
    grid = np.unique(np.concatenate((extra, grid)))
    grid = grid[grid >= t_start]
    r = ratio(grid)
    below = np.nonzero(r <= level)[0]
    if below.size == 0:
        return math.inf
    k = int(below[0])
    if k == 0:
        return float(grid[0])
    if grid[k] == t_fail and float(ratio(np.asarray(math.nextafter(t_fail, 0.0)))) > level:
        return float(t_fail)

    def g(t: float) -> float:
        return float(ratio(np.asarray(t))) - level

    return float(brentq(g, grid[k - 1], grid[k], xtol=1e-12, rtol=1e-13))


def lifetime_truth(
    preset: DevicePreset,
    current_density_ma_cm2: float,
    area_m2: float | None = None,
    positive_aging: bool = True,
    temperature_k: float = T_REF_K,
) -> dict[str, float]:
    """Lifetime figures at constant current density, straight from the aging law.

    ``l0_cd_m2`` is the luminance at t = 0. ``t95_h`` … ``t50_h`` are the first times at which
    L falls to 95 … 50 % of L0, counted from t = 0. ``l_peak_cd_m2``/``t_peak_h`` are the
    maximum of L(t) (positive aging; L0 and 0 without it). ``t50_from_peak_h`` is the time,
    counted from t = 0 (not from the peak), at which L falls to 50 % of L_peak. A sudden failure
    takes L to 0, so any Tx not reached before it equals the failure time.
    """
    if not current_density_ma_cm2 > 0:
        raise ValueError("current_density_ma_cm2 must be positive")
    area = preset.area_m2 if area_m2 is None else area_m2
    j = current_density_ma_cm2 * A_M2_PER_MA_CM2
    l0 = float(operating_point_at_current(preset, j * area, area, temperature_k).luminance_cd_m2)

    def ratio(t: np.ndarray) -> np.ndarray:
        return luminance_ratio(preset, t, j, positive_aging)

    ag = preset.aging
    tau = float(lifetime_tau_h(preset, j))
    b = ag.brightening if positive_aging else 0.0
    t_end = tau * math.log((1.0 + b) / 0.25) ** (1.0 / ag.beta) * 1.5
    t_fail = float(failure_time_h(preset, j))
    t_peak, r_peak = 0.0, 1.0
    if b > 0:
        tb = ag.brightening_tau_ref_h * tau / ag.tau_ref_h
        grid = np.geomspace(tb * 1e-6, t_end, 20001)
        r = ratio(grid)
        k = int(np.argmax(r))
        lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
        res = minimize_scalar(
            lambda t: -float(ratio(np.asarray(t))),
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-10 * hi},
        )
        if -float(res.fun) > 1.0:
            t_peak, r_peak = float(res.x), -float(res.fun)
    out = {"l0_cd_m2": l0, "l_peak_cd_m2": l0 * r_peak, "t_peak_h": t_peak}
    for pct in (95, 90, 80, 50):
        out[f"t{pct}_h"] = _first_crossing(ratio, pct / 100.0, 0.0, t_end, t_fail)
    out["t50_from_peak_h"] = _first_crossing(ratio, 0.5 * r_peak, t_peak, t_end, t_fail)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sim.truth --preset NAME [--area-mm2 A] [--current-density-ma-cm2 J]``."""
    parser = argparse.ArgumentParser(prog="python -m sim.truth", description=__doc__)
    parser.add_argument("--preset", required=True, help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument("--area-mm2", type=float, default=None, help="pixel area (default: preset's)")
    parser.add_argument(
        "--current-density-ma-cm2",
        type=float,
        default=None,
        help="aging current density for the lifetime truth (default: the preset's reference)",
    )
    args = parser.parse_args(argv)
    try:
        preset = get_preset(args.preset)
    except ValueError as exc:
        parser.error(str(exc))
    area = preset.area_m2 if args.area_mm2 is None else args.area_mm2 * A_M2_PER_MM2
    j_ma_cm2 = (
        preset.aging.j_ref_a_m2 / A_M2_PER_MA_CM2
        if args.current_density_ma_cm2 is None
        else args.current_density_ma_cm2
    )
    doc = {
        "preset": preset.name,
        "description": preset.description,
        "area_m2": area,
        "sweep": sweep_truth(preset, area_m2=area),
        "lifetime": {"current_density_ma_cm2": j_ma_cm2, **lifetime_truth(preset, j_ma_cm2, area_m2=area)},
    }
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
