"""Every figure renders to PNG and SVG (the report embeds both), including edge cases."""

from __future__ import annotations

import numpy as np

from station.analysis.lifetime import analyze_lifetime, fit_acceleration
from station.analysis.photometry import POINT_DTYPE, Spectrum
from station.analysis.plots import (
    acceleration_figure,
    aging_figure,
    cie_figure,
    efficiency_figure,
    figure_bytes,
    jvl_figure,
    spectra_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check(fig: object) -> None:
    png = figure_bytes(fig, "png")  # type: ignore[arg-type]
    svg = figure_bytes(fig, "svg")  # type: ignore[arg-type]
    assert png[:8] == PNG_MAGIC and len(png) > 5000
    assert b"<svg" in svg[:2000]


def test_sweep_figures_render_even_with_nan_and_non_positive_values() -> None:
    pts = np.zeros(20, dtype=POINT_DTYPE)
    pts["voltage_v"] = np.linspace(-1, 6, 20)
    pts["current_density_ma_cm2"] = np.linspace(-1, 100, 20)
    pts["luminance_cd_m2"] = np.linspace(-0.1, 1e4, 20)
    pts["eqe_pct"] = np.nan
    pts["ce_cd_a"] = np.linspace(0, 20, 20)
    _check(jvl_figure(pts))
    _check(jvl_figure(pts, log_j=False))
    _check(efficiency_figure(pts))
    wl = np.arange(400.0, 700.0, 1.0)
    _check(
        spectra_figure([Spectrum(wl, np.exp(-0.5 * ((wl - 516) / 9) ** 2), voltage_v=v) for v in (3, 4, 5)])
    )
    _check(cie_figure([("a", 0.0669, 0.6765), ("b", 0.0981, 0.7592), ("nan", float("nan"), 0.3)]))


def test_aging_figures_render_with_extrapolation_and_brightening() -> None:
    t = np.arange(0.0, 80 * 3600.0, 60.0)
    th = t / 3600
    lum = 500 * (1 + 0.2 * (1 - np.exp(-th / 3))) * np.exp(-((th / 150) ** 0.7))
    res = analyze_lifetime(t, lum)
    assert res.positive_aging and res.t50_h is None
    _check(aging_figure(t, lum, res, voltage_v=3 + th / 100))
    _check(acceleration_figure(fit_acceleration([300, 1000, 3000], [900.0, 100.0, 12.0])))
    _check(acceleration_figure(fit_acceleration([1000], [100.0], n=1.8)))
