"""Writes the example CSV files of this folder from the simulator's device model (the seed's OTAc
pixel), as another setup would have measured them: a J-V-L sweep with its EL spectra, and an aging
run whose luminance follows a stretched exponential. Run from the repository root:

    .venv/bin/python examples/import/make_examples.py

The files are what `station import` reads (see `station import --help`); the model's own figures
are printed so the imported analysis can be compared with them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sim.optics import photodiode_current_a
from sim.physics import operating_point, spectrum_w_per_nm
from sim.presets import get_preset

HERE = Path(__file__).parent
AREA_M2 = 4e-6  # --area-mm2 4
RADIUS_M, DISTANCE_M = 5.64e-3, 10e-3  # --photodiode-radius-mm 5.64 --photodiode-distance-mm 10
DARK_A = 2e-11
WL = np.arange(400.0, 701.0, 1.0)


def unit_spectrum(preset, v: float) -> np.ndarray:
    s = spectrum_w_per_nm(preset, WL, v)
    return s / np.trapezoid(s, WL)


def main() -> None:
    pre = get_preset("otac")
    v = np.round(np.arange(0.0, 7.0001, 0.1), 3)
    op = operating_point(pre, v, area_m2=AREA_M2)
    i_pd = np.array([float(photodiode_current_a(p, WL, unit_spectrum(pre, float(sv)), RADIUS_M, DISTANCE_M))
                     for p, sv in zip(op.optical_power_w, op.spectrum_voltage_v, strict=True)])
    with (HERE / "jvl.csv").open("w") as f:
        f.write("# OTAc pixel (sim preset), 4 mm², photodiode r = 5.64 mm at 10 mm; dark 20 pA\n")
        f.write("voltage_v,current_a,photodiode_a,dark_a\n")
        for vv, ii, pd in zip(v, op.current_a, i_pd, strict=True):
            f.write(f"{vv!r},{float(ii)!r},{float(pd) + DARK_A!r},{DARK_A!r}\n")
    spec_v = [3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0]
    cols = [unit_spectrum(pre, float(operating_point(pre, sv, area_m2=AREA_M2).spectrum_voltage_v))
            for sv in spec_v]
    with (HERE / "spectra.csv").open("w") as f:
        f.write("wavelength_nm," + ",".join(f"v_{sv:g}" for sv in spec_v) + "\n")
        for k, w in enumerate(WL):
            f.write(f"{w:g}," + ",".join(f"{c[k]:.6e}" for c in cols) + "\n")
    # aging at 1 mA (25 mA/cm²): L = L0 exp(-(t/tau)^beta), photocurrent in proportion
    k = int(np.argmin(np.abs(op.current_a - 1e-3)))
    l0, pd0, v0 = float(op.luminance_cd_m2[k]), float(i_pd[k]), float(v[k])
    tau_h, beta = 30.0, 0.7
    t_s = np.arange(0.0, 60 * 3600.0 + 1, 120.0)
    rel = np.exp(-((t_s / 3600.0 / tau_h) ** beta))
    with (HERE / "aging.csv").open("w") as f:
        f.write(f"# L/L0 = exp(-(t/{tau_h:g} h)^{beta:g}); T50 = {tau_h * math.log(2) ** (1 / beta):.6g} h\n")
        f.write("t_s,current_a,voltage_v,photodiode_a,dark_a\n")
        for t, r in zip(t_s, rel, strict=True):
            v_t = v0 + 0.3 * t / t_s[-1]
            f.write(f"{t:g},{float(op.current_a[k])!r},{v_t!r},{pd0 * r + DARK_A!r},{DARK_A!r}\n")
    with (HERE / "aging-spectrum.csv").open("w") as f:
        f.write("wavelength_nm,t_0\n")
        s0 = unit_spectrum(pre, float(op.spectrum_voltage_v[k]))
        for w, s in zip(WL, s0, strict=True):
            f.write(f"{w:g},{s:.6e}\n")
    print(f"model: L0 {l0:.6g} cd/m² at {float(op.current_a[k]) * 1e3:.4g} mA; "
          f"T50 {tau_h * math.log(2) ** (1 / beta):.6g} h")


if __name__ == "__main__":
    main()
