"""Figures of a run, built with matplotlib's object API (no pyplot, no global state; rendered
by the Agg and SVG canvases). Each function returns a :class:`matplotlib.figure.Figure`;
:func:`figure_bytes` renders it to PNG or SVG bytes in memory (writing files is the caller's job).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure
from matplotlib.path import Path as MplPath

from .lifetime import LEVELS, AccelerationFit, LifetimeResult, binned_trace
from .photometry import Spectrum, cmfs_1931

__all__ = [
    "acceleration_figure",
    "aging_figure",
    "cie_figure",
    "efficiency_figure",
    "figure_bytes",
    "jvl_figure",
    "spectra_figure",
]

_SIZE = (6.4, 4.4)
_DPI = 120


def figure_bytes(fig: Figure, fmt: Literal["png", "svg"] = "png", dpi: int = _DPI) -> bytes:
    """Render ``fig`` to PNG or SVG bytes."""
    buf = io.BytesIO()
    meta: dict[str, Any] = {"Software": "led-test-station"} if fmt == "png" else {"Date": None}
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", metadata=meta)
    return buf.getvalue()


def _new(title: str | None) -> tuple[Figure, Any]:
    fig = Figure(figsize=_SIZE, dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    if title:
        ax.set_title(title, fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    return fig, ax


def _positive(y: npt.ArrayLike) -> np.ndarray:
    a = np.asarray(y, dtype=float)
    return np.where(a > 0, a, np.nan)


# forward: filled markers, solid; reverse (the scan back down): open markers, dashed
_BRANCH_STYLE: dict[str, dict[str, str | None]] = {
    "forward": {"ls": "-", "mfc": None},
    "reverse": {"ls": "--", "mfc": "white"},
}


def _branches(points: np.ndarray) -> list[tuple[str | None, np.ndarray]]:
    """The points split by ``direction`` (forward first), or all of them when there is none."""
    names = points.dtype.names or ()
    if "direction" not in names:
        return [(None, np.ones(points.shape[0], dtype=bool))]
    d = np.asarray(points["direction"]).astype(str)
    out: list[tuple[str | None, np.ndarray]] = [
        (b, d == b) for b in ("forward", "reverse") if np.any(d == b)]
    rest = ~np.isin(d, ("forward", "reverse"))
    if np.any(rest):
        out.append((None, rest))
    return out


def _style(branch: str | None) -> dict[str, Any]:
    """Reverse: larger open markers underneath, so that a reverse branch lying on the forward
    one (no hysteresis) still shows both."""
    st = _BRANCH_STYLE.get(branch or "forward", _BRANCH_STYLE["forward"])
    rev = branch == "reverse"
    return {"ls": st["ls"], "ms": 5.5 if rev else 3, "zorder": 2 if rev else 3,
            **({"mfc": st["mfc"]} if st["mfc"] else {})}


def _label(what: str, branch: str | None, n_branches: int) -> str:
    return f"{what}, {branch}" if branch and n_branches > 1 else what


def jvl_figure(points: np.ndarray, title: str | None = None, log_j: bool = True,
               noise_floor_cd_m2: float | None = None) -> Figure:
    """Current density (left) and luminance (right, log) against voltage. Forward and reverse
    branches are told apart (filled/solid and open/dashed); luminance below the detector's noise
    floor is not data and is not drawn (the floor is drawn as a line)."""
    fig, ax = _new(title or "J–V–L")
    ax2 = ax.twinx()
    branches = _branches(points)
    lum_all = np.asarray(points["luminance_cd_m2"], dtype=float)
    floor = noise_floor_cd_m2 if noise_floor_cd_m2 is not None and noise_floor_cd_m2 > 0 else None
    for branch, sel in branches:
        v = points["voltage_v"][sel]
        j = np.asarray(points["current_density_ma_cm2"][sel], dtype=float)
        st = _style(branch)
        if log_j:
            ax.semilogy(v, _positive(np.abs(j)), marker="o", lw=1.2, color="tab:blue",
                        label=_label("|J|", branch, len(branches)), **st)
        else:
            ax.plot(v, j, marker="o", lw=1.2, color="tab:blue",
                    label=_label("J", branch, len(branches)), **st)
        lum = _positive(lum_all[sel])
        if floor is not None:
            lum = np.where(lum >= floor, lum, np.nan)
        ax2.semilogy(v, lum, marker="s", lw=1.2, color="tab:red",
                     label=_label("L", branch, len(branches)), **st)
    if floor is not None:
        ax2.axhline(floor, color="tab:red", lw=0.8, ls=":", alpha=0.7,
                    label=f"L noise floor ({floor:.2g} cd/m²)")
        good = lum_all[np.isfinite(lum_all) & (lum_all >= floor)]
        if good.size:
            ax2.set_ylim(floor / 3, float(good.max()) * 3)
    ax.set_xlabel("Voltage (V)")
    ax.set_ylabel("Current density (mA/cm²)", color="tab:blue")
    ax.tick_params(axis="y", labelcolor="tab:blue")
    ax2.set_ylabel("Luminance (cd/m²)", color="tab:red")
    ax2.tick_params(axis="y", labelcolor="tab:red")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax2.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    return fig


_EFFICIENCIES = (  # column, axis label, colour
    ("eqe_pct", "EQE (%)", "tab:green"),
    ("ce_cd_a", "Current efficiency (cd/A)", "tab:purple"),
    ("pe_lm_w", "Power efficiency (lm/W)", "tab:brown"),
)


def efficiency_figure(points: np.ndarray, title: str | None = None, threshold_cd_m2: float = 1.0,
                      noise_floor_cd_m2: float | None = None) -> Figure:
    """EQE, current efficiency and power efficiency against current density (log), one panel
    each with its own axis and range from the data, over the points at or above turn-on
    (L >= ``threshold_cd_m2`` and above the noise floor): below it the ratios are noise."""
    names = points.dtype.names or ()
    cols = [c for c in _EFFICIENCIES if c[0] in names]
    fig = Figure(figsize=(6.4, 2.2 + 1.9 * len(cols)), dpi=_DPI, layout="constrained")
    axes = fig.subplots(len(cols), 1, sharex=True, squeeze=False)[:, 0]
    fig.suptitle(title or "Efficiencies vs. current density", fontsize=11)
    lum = np.asarray(points["luminance_cd_m2"], dtype=float)
    lit = np.isfinite(lum) & (lum >= max(threshold_cd_m2, noise_floor_cd_m2 or 0.0))
    branches = _branches(points)
    for ax, (col, label, colour) in zip(axes, cols, strict=True):
        ax.grid(True, which="major", alpha=0.3)
        top = 0.0
        for branch, sel in branches:
            m = sel & lit
            j = _positive(points["current_density_ma_cm2"][m])
            y = np.asarray(points[col][m], dtype=float)
            if y.size:
                top = max(top, float(np.nanmax(y)) if np.isfinite(y).any() else 0.0)
            ax.semilogx(j, y, marker="o", lw=1.2, color=colour,
                        label=_label(label.split(" (")[0], branch, len(branches)), **_style(branch))
        ax.set_ylabel(label, color=colour)
        ax.tick_params(axis="y", labelcolor=colour)
        if top > 0:
            ax.set_ylim(0, top * 1.1)
        ax.legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("Current density (mA/cm²)")
    if not lit.any():
        axes[0].text(0.5, 0.5, f"no point reaches {threshold_cd_m2:g} cd/m²", ha="center",
                     transform=axes[0].transAxes)
    else:
        axes[0].set_title(f"points with L ≥ {max(threshold_cd_m2, noise_floor_cd_m2 or 0):.3g} cd/m² "
                          "(at and above turn-on)", fontsize=8, color="0.35")
    return fig


def _emission_range(spectra: Sequence[Spectrum], level: float = 0.01, pad_nm: float = 15.0
                    ) -> tuple[float, float] | None:
    """The wavelengths where any spectrum is above ``level`` of its maximum, padded."""
    lo, hi = math.inf, -math.inf
    for s in spectra:
        p = np.asarray(s.power(), dtype=float)
        if not p.size or not np.nanmax(p) > 0:
            continue
        on = np.nonzero(p >= level * np.nanmax(p))[0]
        lo = min(lo, float(s.wavelength_nm[on[0]]))
        hi = max(hi, float(s.wavelength_nm[on[-1]]))
    if not math.isfinite(lo):
        return None
    span = max(hi - lo, 20.0)
    return lo - max(pad_nm, 0.15 * span), hi + max(pad_nm, 0.15 * span)


def spectra_figure(spectra: Sequence[Spectrum], title: str | None = None, normalise: bool = True) -> Figure:
    """EL spectra (power) at several voltages (or times), each normalised to its maximum; the
    wavelength axis cropped to the emission."""
    fig, ax = _new(title or "EL spectra")
    keyed = sorted(spectra, key=lambda s: s.voltage_v if s.voltage_v is not None else (s.t_s or 0.0))
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    for k, s in enumerate(keyed):
        p = s.power()
        if normalise and np.max(p) > 0:
            p = p / np.max(p)
        if s.voltage_v is not None:
            label = f"{s.voltage_v:.2f} V"
        elif s.t_s is not None:
            label = f"{s.t_s / 3600:.3g} h"
        else:
            label = None
        ax.plot(s.wavelength_nm, p, lw=1.3, color=cmap(k / max(len(keyed) - 1, 1) * 0.9), label=label)
    rng = _emission_range(keyed)
    if rng is not None:
        ax.set_xlim(*rng)
    ax.set_xlabel("Wavelength (nm)")
    ax.set_ylabel("Normalised EL intensity" if normalise else "EL intensity (a.u.)")
    if normalise:
        ax.set_ylim(bottom=0)
    if keyed and any(s.voltage_v is not None or s.t_s is not None for s in keyed):
        ax.legend(fontsize=8, ncols=2 if len(keyed) > 6 else 1)
    return fig


@functools.cache
def _locus() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    wl = np.arange(380.0, 701.0, 1.0)
    cm = cmfs_1931(wl)
    s = cm.sum(axis=1)
    return wl, cm[:, 0] / s, cm[:, 1] / s


@functools.cache
def _horseshoe_image(n: int = 300) -> np.ndarray:
    """RGBA image of the chromaticity diagram (sRGB, Y normalised), transparent outside the locus."""
    import colour

    _, lx, ly = _locus()
    xs = np.linspace(0.0, 0.8, n)
    ys = np.linspace(0.0, 0.9, n)
    gx, gy = np.meshgrid(xs, ys)
    gyy = np.maximum(gy, 1e-6)
    xyz = np.stack([gx / gyy, np.ones_like(gx), (1 - gx - gy) / gyy], axis=-1)
    rgb = np.asarray(colour.XYZ_to_sRGB(xyz), dtype=float)
    rgb = np.clip(rgb, 0, None)
    rgb = rgb / np.maximum(rgb.max(axis=-1, keepdims=True), 1e-9)
    rgb = np.clip(rgb, 0, 1)
    poly = MplPath(np.column_stack([np.append(lx, lx[0]), np.append(ly, ly[0])]))
    inside = poly.contains_points(np.column_stack([gx.ravel(), gy.ravel()])).reshape(gx.shape)
    rgba = np.concatenate([rgb, inside[..., None].astype(float) * 0.85], axis=-1)
    return rgba


def cie_figure(devices: Sequence[tuple[str, float, float]], title: str | None = None) -> Figure:
    """CIE 1931 chromaticity diagram (spectral locus from the colour-science CMFs) with a marker
    for each ``(label, x, y)``."""
    fig = Figure(figsize=(5.6, 5.6), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title or "CIE 1931 chromaticity", fontsize=11)
    wl, lx, ly = _locus()
    ax.imshow(_horseshoe_image(), origin="lower", extent=(0.0, 0.8, 0.0, 0.9), interpolation="bilinear")
    ax.plot(np.append(lx, lx[0]), np.append(ly, ly[0]), color="black", lw=1.0)
    for lab in (460, 480, 490, 500, 510, 520, 540, 560, 580, 600, 620, 700):
        i = int(np.searchsorted(wl, lab))
        ax.plot(lx[i], ly[i], "k.", ms=3)
        dx = -0.05 if lab < 510 else (0.015 if lab > 520 else 0.0)
        dy = 0.0 if lab != 510 and lab != 520 else 0.02
        ax.annotate(f"{lab}", (lx[i], ly[i]), xytext=(max(lx[i] + dx, 0.004), ly[i] + dy), fontsize=7)
    # sRGB gamut for reference
    srgb = np.array([[0.64, 0.33], [0.30, 0.60], [0.15, 0.06], [0.64, 0.33]])
    ax.plot(srgb[:, 0], srgb[:, 1], color="0.4", lw=0.8, ls="--", label="sRGB")
    markers = "o^sDvP*X"
    for k, (label, x, y) in enumerate(devices):
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            continue
        ax.plot(
            x,
            y,
            markers[k % len(markers)],
            ms=8,
            mec="black",
            mfc="white",
            mew=1.5,
            label=f"{label} ({x:.4f}, {y:.4f})",
        )
        # the point itself is labelled too (several points close together: staggered)
        ax.annotate(label, (x, y), xytext=(28, -22 - 20 * k), textcoords="offset points",
                    fontsize=8, ha="left",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.5", "alpha": 0.9},
                    arrowprops={"arrowstyle": "-", "color": "0.2", "lw": 0.8})
    ax.set_xlim(0, 0.8)
    ax.set_ylim(0, 0.9)
    ax.set_aspect("equal")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(True, alpha=0.3)
    return fig


def aging_figure(
    t_s: npt.ArrayLike,
    luminance_cd_m2: npt.ArrayLike,
    result: LifetimeResult,
    voltage_v: npt.ArrayLike | None = None,
    title: str | None = None,
    max_points: int = 4000,
) -> Figure:
    """L/L0 (left) and, if given, V (right) against time; T95..T50 marked; the stretched-exponential
    fit drawn solid over the data and dashed where it extrapolates."""
    fig, ax = _new(title or "Operational lifetime")
    t_h = np.asarray(t_s, dtype=float) / 3600.0
    y = np.asarray(luminance_cd_m2, dtype=float) / result.l0_cd_m2
    tb, yb = binned_trace(t_h, y, max_points)
    ax.plot(tb, yb, lw=2.6, color="tab:blue", alpha=0.55, label=f"L/L0 (L0 = {result.l0_cd_m2:.4g} cd/m²)")
    t_end = float(tb[-1]) if tb.size else 0.0
    fit = result.fit
    marks = []
    for name, x in LEVELS:
        tx = result.tx_h.get(name)
        if tx is not None:
            marks.append((name, x, tx, False))
        elif fit is not None:
            ex = result.extrapolated.get(f"{name}_h")
            if ex is not None:
                marks.append((name, x, ex, True))
    t_far = max([t_end] + [m[2] for m in marks if m[3] and m[2] < 20 * max(t_end, 1e-9)])
    if fit is not None:
        tf = np.linspace(fit.t_start_h, t_end, 300)
        ax.plot(
            tf,
            fit.predict(tf),
            color="tab:orange",
            lw=1.5,
            label=f"fit: {fit.a:.3f}·exp(−(t/{fit.tau_h:.3g} h)^{fit.beta:.3f})",
        )
        if t_far > t_end:
            te = np.linspace(t_end, t_far * 1.05, 200)
            ax.plot(te, fit.predict(te), color="tab:orange", lw=1.5, ls="--", label="extrapolation")
    for name, x, tx, extrap in marks:
        if tx > 1.1 * t_far:
            continue
        ax.axhline(x, color="0.6", lw=0.6, ls=":")
        ax.plot([tx], [x], "v" if extrap else "o", color="black", ms=6, mfc="white" if extrap else "black")
        ax.annotate(
            f"{name.upper()}{'*' if extrap else ''} = {tx:.3g} h",
            (tx, x),
            xytext=(4, 4),
            textcoords="offset points",
            fontsize=8,
        )
    if result.positive_aging:
        ax.plot(
            [result.t_peak_h],
            [result.l_peak_cd_m2 / result.l0_cd_m2],
            "*",
            color="tab:red",
            ms=10,
            label=f"peak {result.l_peak_cd_m2 / result.l0_cd_m2:.3f}·L0 at {result.t_peak_h:.3g} h",
        )
    ax.set_xlabel("Time (h)")
    ax.set_ylabel("L / L0")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    if voltage_v is not None:
        vb = binned_trace(t_h, np.asarray(voltage_v, dtype=float), max_points)[1]
        ax2 = ax.twinx()
        ax2.plot(tb, vb, lw=1.0, color="tab:gray", alpha=0.8, label="voltage (right axis)")
        ax2.set_ylabel("Voltage (V)", color="tab:gray")
        ax2.tick_params(axis="y", labelcolor="tab:gray")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax2.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower left")
    else:
        ax.legend(fontsize=8, loc="lower left")
    return fig


def acceleration_figure(fit: AccelerationFit, title: str | None = None) -> Figure:
    """Lifetime against initial luminance (log-log) with the fitted acceleration law."""
    fig, ax = _new(title or "Acceleration law")
    metric = fit.metric.removesuffix("_h").upper()
    x = np.asarray(fit.l0_cd_m2)
    y = np.asarray(fit.t_h)
    ax.loglog(x, y, "o", color="tab:blue", label="pixels")
    lo = min(float(x.min()), fit.reference_cd_m2) / 1.5
    hi = max(float(x.max()), fit.reference_cd_m2) * 1.5
    xs = np.geomspace(lo, hi, 100)
    ax.loglog(
        xs,
        fit.predict(xs),
        color="tab:orange",
        label=f"T ∝ L0^−n, n = {fit.n:.3g}" + (f" ± {fit.n_err:.2g}" if fit.n_err else " (given)"),
    )
    yerr = None
    if fit.ci_low_h is not None and fit.ci_high_h is not None:
        yerr = [[fit.t_ref_h - fit.ci_low_h], [fit.ci_high_h - fit.t_ref_h]]
    ax.errorbar(
        [fit.reference_cd_m2],
        [fit.t_ref_h],
        yerr=yerr,
        fmt="D",
        color="tab:red",
        capsize=4,
        label=f"{metric} at {fit.reference_cd_m2:g} cd/m² = {fit.t_ref_h:.3g} h",
    )
    ax.set_xlabel("Initial luminance L0 (cd/m²)")
    ax.set_ylabel(f"{fit.metric.removesuffix('_h').upper()} (h)")
    ax.legend(fontsize=8)
    return fig
