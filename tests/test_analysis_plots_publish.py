"""The figures as a device physicist would publish them (issue 14): J–V–L with a legend, forward
and reverse told apart, nothing drawn below the noise floor; EQE, CE and PE each on its own axis
with its range from the data and nothing below turn-on; spectra cropped to the emission; the CIE
point labelled; the report's title and header in one unit system."""

from __future__ import annotations

import numpy as np

from station.analysis.photometry import Spectrum
from station.analysis.plots import cie_figure, efficiency_figure, jvl_figure, spectra_figure
from station.analysis.report import render_report, report_title
from station.analysis.summary import sweep_summary

DTYPE = [("voltage_v", float), ("current_density_ma_cm2", float), ("luminance_cd_m2", float),
         ("eqe_pct", float), ("ce_cd_a", float), ("pe_lm_w", float), ("current_a", float),
         ("direction", "U8")]
FLOOR = 1e-3


def sweep(reverse_offset: float = 0.1) -> np.ndarray:
    v = np.round(np.arange(0.0, 6.01, 0.1), 3)
    out = []
    for direction, vv, dv in (("forward", v, 0.0), ("reverse", v[::-1], reverse_offset)):
        p = np.zeros(len(vv), dtype=DTYPE)
        p["voltage_v"] = vv
        p["direction"] = direction
        p["current_density_ma_cm2"] = 1e-4 * np.expm1(np.clip(vv - dv, 0, None) * 3)
        on = np.clip(vv - 2.8 - dv, 0, None)
        p["luminance_cd_m2"] = np.where(on > 0, 2000 * (1 - np.exp(-on)) ** 2, 6e-4)
        p["ce_cd_a"] = p["luminance_cd_m2"] * 4e-6 / np.maximum(p["current_density_ma_cm2"] * 4e-2, 1e-12)
        p["eqe_pct"] = p["ce_cd_a"] * 0.3
        p["pe_lm_w"] = np.pi * p["ce_cd_a"] / np.maximum(vv, 0.1)
        p["current_a"] = p["current_density_ma_cm2"] * 4e-5
        out.append(p)
    return np.concatenate(out)


def test_jvl_has_a_legend_tells_branches_apart_and_hides_luminance_below_the_floor() -> None:
    pts = sweep()
    fig = jvl_figure(pts, noise_floor_cd_m2=FLOOR)
    _ax, ax2 = fig.axes
    labels = [t.get_text() for t in ax2.get_legend().get_texts()]
    assert {"|J|, forward", "|J|, reverse", "L, forward", "L, reverse"} <= set(labels)
    assert any("noise floor" in t for t in labels)
    lines = {ln.get_label(): ln for ln in ax2.get_lines()}
    fwd, rev = lines["L, forward"], lines["L, reverse"]
    assert fwd.get_linestyle() != rev.get_linestyle()
    for ln in (fwd, rev):
        y = np.asarray(ln.get_ydata(), dtype=float)
        assert np.all(np.isnan(y) | (y >= FLOOR))  # the 6e-4 cd/m² row is not drawn
        assert np.isfinite(y).sum() > 5


def test_efficiencies_each_on_their_own_axis_from_turn_on_with_ranges_from_the_data() -> None:
    pts = sweep()
    fig = efficiency_figure(pts, threshold_cd_m2=1.0, noise_floor_cd_m2=FLOOR)
    axes = fig.axes
    assert [a.get_ylabel() for a in axes] == ["EQE (%)", "Current efficiency (cd/A)",
                                              "Power efficiency (lm/W)"]
    lit = pts["luminance_cd_m2"] >= 1.0
    for ax, col in zip(axes, ("eqe_pct", "ce_cd_a", "pe_lm_w"), strict=True):
        assert ax.get_legend() is not None
        top = pts[col][lit].max()
        _lo, hi = ax.get_ylim()
        assert top <= hi <= 1.2 * top  # a 2.75 % maximum is not drawn on a 0-35 % axis
        xs = np.concatenate([np.asarray(ln.get_xdata(), dtype=float) for ln in ax.get_lines()])
        assert np.nanmin(xs) >= pts["current_density_ma_cm2"][lit].min() * (1 - 1e-12)


def test_spectra_are_cropped_to_the_emission() -> None:
    wl = np.arange(300.0, 1000.0, 0.5)
    fig = spectra_figure([Spectrum(wl, np.exp(-0.5 * ((wl - 516) / 10) ** 2), voltage_v=v)
                          for v in (3.0, 4.0)])
    lo, hi = fig.axes[0].get_xlim()
    assert 430 < lo < 490 and 540 < hi < 600


def test_cie_point_is_labelled_with_pixel_and_device() -> None:
    fig = cie_figure([("pixel 3 (S1-P3) otac", 0.098, 0.759)])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "pixel 3 (S1-P3) otac" in texts


def test_report_title_and_header_in_one_unit_system() -> None:
    meta = {"kind": "sweep", "run_id": 4, "station": "lab-a", "pixel": 3, "label": "S1-P3",
            "substrate": "S1", "device": "otac", "started": "2026-12-02T09:52:38.088703+00:00",
            "calibration": {"pixel_area_m2": 4e-6, "geometry": {"photodiode_radius_m": 0.00564,
                                                                "distance_m": 0.01}}}
    assert report_title(meta) == "J–V–L sweep — otac, pixel 3 (S1-P3), substrate S1, 2026-12-02"
    pts = sweep()
    wl = np.arange(400.0, 700.0, 1.0)
    spectra = [Spectrum(wl, np.exp(-0.5 * ((wl - 516) / 10) ** 2), voltage_v=5.0)]
    page = render_report(meta, pts, summary=sweep_summary(pts[pts["direction"] == "forward"],
                                                          spectra, 1.0, FLOOR), spectra=spectra)
    head = page[:page.index("<h2>")]
    assert "5.640 mm" in head and "10.00 mm" in head and "4.000 mm²" in head
    assert "_m<" not in head and "0.005640" not in head  # no raw SI keys beside mm
    assert "seed Table S1 (OTAc-PeNCs)" in page
