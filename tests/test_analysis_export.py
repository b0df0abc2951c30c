"""Export format round trips, clear errors on malformed exports, and the analyze / lifetime /
report subcommands on synthetic exports."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from station.analysis.photometry import Calibration, Spectrum, compute_points
from station.analysis.summary import sweep_summary
from station.commands import analyze, lifetime_cmd, report_cmd
from station.exportfmt import ExportError, read_export, table_from_columns, write_export

H_C = 6.62607015e-34 * 299792458.0
Q = 1.602176634e-19


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="station")
    sub = parser.add_subparsers(dest="command", required=True)
    for mod in (analyze, lifetime_cmd, report_cmd):
        mod.register(sub)
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


def calibration(distance_m: float = 0.03) -> Calibration:
    return Calibration(
        pixel_area_m2=4e-6,
        responsivity_wavelength_nm=[350.0, 450.0, 550.0, 650.0, 800.0],
        responsivity_a_per_w=[0.10, 0.22, 0.31, 0.38, 0.45],
        photodiode_radius_m=5e-3,
        distance_m=distance_m,
    )


def spectra_dbsa_like() -> list[Spectrum]:
    wl = np.arange(400.0, 700.0, 0.5)
    out = []
    for k, v in enumerate((3.0, 4.0, 5.0, 6.0)):
        p = np.exp(-0.5 * ((wl - 507.0 - 0.5 * k) / 8.5) ** 2) + 0.12 * np.exp(
            -0.5 * ((wl - 535.0) / 25.0) ** 2
        )
        counts = p * wl * 1e-9 / H_C * 1e-12  # the board reports photon counts
        out.append(Spectrum(wl, counts, "photon", voltage_v=v))
    return out


def sweep_export(tmp: Path, preset: str = "dbsa") -> tuple[Path, dict[str, Any], np.ndarray]:
    """A DBSA-like sweep: diode I-V, EQE peaking at ~9 % near 1 mA/cm^2, photodiode currents from
    that EQE through the inverse formula (uniform-grid sums)."""
    cal = calibration()
    spectra = spectra_dbsa_like()
    v = np.round(np.arange(0.0, 6.0001, 0.05), 10)
    i = 1e-12 * np.expm1(v / 0.2) + 1e-9 * v
    i = np.minimum(i, 0.02)
    j = i * 1e3 / (cal.pixel_area_m2 * 1e4)
    eqe = 9.0 * np.exp(-0.5 * (np.log10(np.maximum(j, 1e-12)) / 1.2) ** 2) * (v > 2.2)
    wl = spectra[-1].wavelength_nm
    s = spectra[-1].values / wl  # photon counts -> power (relative)
    s = s / s.sum()
    e_photon = 1.0 / np.sum(s * wl * 1e-9 / H_C)
    r_eff = np.sum(s * cal.responsivity_at(wl))
    dark = 2e-11 + 1e-13 * np.random.default_rng(3).standard_normal(v.size)
    i_pd = (eqe / 100) * (i / Q) * e_photon * cal.collection_fraction * r_eff + dark
    pts = compute_points(v, i, i_pd, cal, spectra, dark)
    table = table_from_columns(
        {
            "seq": np.arange(v.size),
            "direction": np.where(np.arange(v.size) % 2 == 0, "fwd", "fwd"),
            **{
                name: pts[name]
                for name in ("voltage_v", "current_a", "current_density_ma_cm2", "photodiode_a")
            },
            "dark_a": dark,
            **{name: pts[name] for name in ("luminance_cd_m2", "eqe_pct", "ce_cd_a", "pe_lm_w")},
        }
    )
    meta = {
        "run_id": f"sweep-{preset}-1",
        "kind": "sweep",
        "station": "st-1",
        "pixel": 3,
        "device": "CsPbBr3 NC LED",
        "preset": preset,
        "started": "2024-05-01T10:00:00Z",
        "ended": "2024-05-01T10:02:00Z",
        "calibration": cal.to_dict(),
        "spectra": [sp.to_dict() for sp in spectra],
        "summary": sweep_summary(pts, spectra).to_dict(),
    }
    d = tmp / f"sweep-{preset}"
    write_export(d, meta, table)
    return d, meta, table


def aging_export(tmp: Path, name: str, l0: float, t50_h: float, beta: float = 0.8) -> Path:
    cal = calibration()
    wl = np.arange(400.0, 700.0, 1.0)
    spec = Spectrum(wl, np.exp(-0.5 * ((wl - 516.0) / 9.0) ** 2), "energy", t_s=0.0)
    tau = t50_h / math.log(2.0) ** (1 / beta)
    t = np.arange(0.0, 1.3 * t50_h * 3600.0, 60.0)
    lum_true = l0 * np.exp(-((t / 3600.0 / tau) ** beta))
    k = compute_points([3.5], [1e-3], [1.0], cal, [spec])["luminance_cd_m2"][0]  # cd/m^2 per A
    i_pd = lum_true / k
    pts = compute_points(np.full(t.size, 3.5), np.full(t.size, 1e-3), i_pd, cal, [spec], t_s=t)
    table = table_from_columns(
        {
            "seq": np.arange(t.size),
            "t_s": t,
            "current_a": pts["current_a"],
            "voltage_v": 3.5 + 0.3 * (t / t[-1]),
            "photodiode_a": i_pd,
            "dark_a": np.zeros(t.size),
            "luminance_cd_m2": pts["luminance_cd_m2"],
            "l_rel": pts["luminance_cd_m2"] / l0,
            "eqe_pct": pts["eqe_pct"],
            "temperature_c": np.where(np.arange(t.size) % 7 == 0, np.nan, 25.0),
        }
    )
    meta = {
        "run_id": name,
        "kind": "aging",
        "pixel": name[-1],
        "preset": "otac",
        "calibration": cal.to_dict(),
        "spectra": [spec.to_dict()],
        "summary": {},
    }
    d = tmp / name
    write_export(d, meta, table)
    return d


def assert_tables_equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype.names == b.dtype.names
    for name in a.dtype.names or ():
        if a[name].dtype.kind == "f":
            np.testing.assert_array_equal(a[name], b[name])  # NaN == NaN here, bit-exact otherwise
        else:
            assert a[name].tolist() == b[name].tolist()


def test_sweep_export_round_trips_exactly(tmp_path: Path) -> None:
    d, meta, table = sweep_export(tmp_path)
    meta2, table2 = read_export(d)
    assert meta2["schema_version"] == 1
    assert {k: meta2[k] for k in meta} == json.loads(json.dumps(meta))
    assert_tables_equal(table, table2)
    assert table2["seq"].dtype == np.int64
    assert (d / "points.csv").read_text().splitlines()[0].startswith("seq,direction,voltage_v")


def test_aging_export_round_trips_with_nan(tmp_path: Path) -> None:
    d = aging_export(tmp_path, "age-a", 1000.0, 100.0)
    _, table = read_export(d)
    assert np.isnan(table["temperature_c"][0]) and table["temperature_c"][1] == 25.0
    _, again = read_export(write_export(tmp_path / "copy", {"kind": "aging", "run_id": "x"}, table))
    assert_tables_equal(table, again)


def test_write_refuses_a_table_without_required_columns(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="required column"):
        write_export(tmp_path / "x", {"kind": "sweep"}, table_from_columns({"voltage_v": [1.0]}))
    with pytest.raises(ExportError, match="kind"):
        write_export(tmp_path / "x", {"kind": "nope"}, table_from_columns({"voltage_v": [1.0]}))


def _corrupt(path: Path, line_no: int, col: str, value: str) -> None:
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    fields = lines[line_no - 1].split(",")
    fields[header.index(col)] = value
    lines[line_no - 1] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")


def test_malformed_exports_get_errors_naming_file_line_and_field(tmp_path: Path) -> None:
    d, _, _ = sweep_export(tmp_path)
    csv_path = d / "points.csv"
    good = csv_path.read_text()
    _corrupt(csv_path, 5, "current_a", "abc")
    with pytest.raises(ExportError, match=r"points\.csv:5: field 'current_a'.*'abc'"):
        read_export(d)
    csv_path.write_text(good.replace("\n", ",extra\n", 3).replace(",extra", "", 1))
    with pytest.raises(ExportError, match=r"points\.csv:\d+: \d+ fields, header has"):
        read_export(d)
    csv_path.write_text(good.replace("luminance_cd_m2", "lum"))
    with pytest.raises(ExportError, match=r"points\.csv:1: missing required column.*luminance_cd_m2"):
        read_export(d)
    csv_path.write_text(good.replace("\n1,fwd,", "\n1.5,fwd,", 1))
    with pytest.raises(ExportError, match=r"points\.csv:3: field 'seq'.*not an integer"):
        read_export(d)
    csv_path.unlink()
    with pytest.raises(ExportError, match=r"points\.csv: missing"):
        read_export(d)
    (d / "run.json").write_text('{"kind": "sweep",\n "schema_version": }')
    with pytest.raises(ExportError, match=r"run\.json:2: invalid JSON"):
        read_export(d)
    (d / "run.json").unlink()
    with pytest.raises(ExportError, match=r"run\.json: missing"):
        read_export(d)


def test_analyze_reproduces_the_recorded_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d, meta, _ = sweep_export(tmp_path)
    assert run_cli(["analyze", str(d), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for key in ("von_v", "l_max_cd_m2", "eqe_max_pct", "ce_max_cd_a", "pe_max_lm_w", "cie_x", "el_peak_nm"):
        assert doc["summary"][key] == pytest.approx(meta["summary"][key], rel=1e-12), key
    # the EQE the data were built from (with the 6 V spectrum; the 3-5 V ones peak 0.5-1.5 nm bluer)
    assert doc["summary"]["eqe_max_pct"] == pytest.approx(9.0, rel=5e-3)


def test_analyze_with_a_new_calibration_scales_luminance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, meta, _ = sweep_export(tmp_path)
    old, new = calibration(0.03), calibration(0.045)  # the photodiode was further away than recorded
    cal_file = tmp_path / "cal.json"
    cal_file.write_text(json.dumps(new.to_dict()))
    assert (
        run_cli(["analyze", str(d), "--calibration", str(cal_file), "--json", "--out", str(tmp_path / "re")])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    ratio = old.collection_fraction / new.collection_fraction
    s_old, s_new = meta["summary"], doc["summary"]
    for key in ("l_max_cd_m2", "ce_max_cd_a", "eqe_max_pct", "pe_max_lm_w"):
        assert s_new[key] == pytest.approx(ratio * s_old[key], rel=1e-9), key
    assert s_new["cie_x"] == pytest.approx(s_old["cie_x"], rel=1e-12)
    assert s_new["von_v"] < s_old["von_v"]  # brighter -> turns on earlier
    meta2, table2 = read_export(tmp_path / "re")
    _, table1 = read_export(d)
    np.testing.assert_allclose(table2["luminance_cd_m2"], ratio * table1["luminance_cd_m2"], rtol=1e-9)
    assert meta2["calibration"]["geometry"]["distance_m"] == 0.045
    assert meta2["reanalysis_of"] == meta["run_id"]


def test_analyze_text_output_names_threshold_and_noise_floor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, _, _ = sweep_export(tmp_path)
    assert run_cli(["analyze", str(d), "--threshold", "10"]) == 0
    out = capsys.readouterr().out
    assert "recomputed" in out and "recorded" in out and "10 cd/m²" in out and "noise floor" in out


def test_cli_bad_input_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, _, _ = sweep_export(tmp_path)
    assert run_cli(["analyze", str(tmp_path / "nope")]) == 2
    assert "no such export directory" in capsys.readouterr().err
    assert run_cli(["lifetime", str(d)]) == 2
    assert "expected 'aging'" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"pixel_area_m2": 1e-6}')
    assert run_cli(["analyze", str(d), "--calibration", str(bad)]) == 2
    assert "responsivity" in capsys.readouterr().err
    assert run_cli(["analyze", str(d), "--calibration", str(tmp_path / "missing.json")]) == 2
    assert "not found" in capsys.readouterr().err
    _corrupt(d / "points.csv", 4, "voltage_v", "x")
    assert run_cli(["report", str(d)]) == 2
    assert "points.csv:4" in capsys.readouterr().err


def test_lifetime_cli_recovers_the_acceleration_exponent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n_true, t50_at_100 = 1.7, 20000.0
    dirs = []
    for k, l0 in enumerate((500.0, 1000.0, 2000.0)):
        dirs.append(str(aging_export(tmp_path, f"age-{k}", l0, t50_at_100 * (100.0 / l0) ** n_true)))
    assert run_cli(["lifetime", *dirs, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    acc = doc["acceleration"]
    assert acc["n"] == pytest.approx(n_true, abs=0.01)
    assert acc["t50_at_reference_h"] == pytest.approx(t50_at_100, rel=0.02)
    assert acc["ci_low_h"] <= acc["t_ref_h"] <= acc["ci_high_h"]
    assert not any(p["extrapolated"] for p in doc["pixels"])
    # two L0 cannot fit n: each run's lifetime is still reported, and why there is no fit
    assert run_cli(["lifetime", *dirs[:2]]) == 0
    out = capsys.readouterr().out
    assert "acceleration law not fitted" in out and "distinct L0" in out
    assert run_cli(["lifetime", *dirs[:2], "--n", "1.7", "--reference-luminance", "1000"]) == 0
    assert "T50 at 1000 cd/m²" in capsys.readouterr().out


def test_lifetime_cli_on_a_single_run_reports_that_runs_lifetimes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`station lifetime RUN` on one run (issue 12): its L0 and T50, no acceleration law."""
    l0, t50 = 1000.0, 40.0
    d = aging_export(tmp_path, "age-one", l0, t50)
    assert run_cli(["lifetime", str(d), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["acceleration"] is None
    assert "distinct L0" in doc["acceleration_not_fitted"]
    (pixel,) = doc["pixels"]
    assert pixel["l0_cd_m2"] == pytest.approx(l0, rel=0.01)
    assert pixel["t50_h"] == pytest.approx(t50, rel=0.02)
    assert run_cli(["lifetime", str(d)]) == 0
    assert "acceleration law not fitted" in capsys.readouterr().out


def test_report_embeds_figures_and_the_seed_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d, _, _ = sweep_export(tmp_path, preset="dbsa")
    out = tmp_path / "r.html"
    assert run_cli(["report", str(d), "--out", str(out), "--figures", str(tmp_path / "figs")]) == 0
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "seed Table S1 (DBSA-PeNCs)" in page and "4452" in page
    assert page.count("data:image/svg+xml;base64,") == 4 and "data:image/png;base64," in page
    assert 'src="http' not in page  # self-contained
    pngs = sorted(p.name for p in (tmp_path / "figs").glob("*.png"))
    assert pngs == ["cie.png", "efficiency.png", "jvl.png", "spectra.png"]
    assert (tmp_path / "figs" / "jvl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "figs" / "cie.svg").read_text().lstrip().startswith("<?xml")
    age = aging_export(tmp_path, "age-r", 1000.0, 50.0)
    assert run_cli(["report", str(age)]) == 0
    page = (age / "report.html").read_text()
    assert "T50 vs L_peak" in page and "seed Table S1" not in page


def test_analyze_summarises_the_forward_branch_and_uses_the_recorded_dark_std(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, meta, table = sweep_export(tmp_path)
    # append a reverse branch that is brighter at every voltage (hysteresis): it must not count
    rev = table[::-1].copy()
    rev["photodiode_a"] = rev["photodiode_a"] * 2.0
    rev["seq"] = table["seq"][-1] + 1 + np.arange(rev.size)
    joined = np.concatenate([table, rev])
    cols: dict[str, Any] = {name: joined[name] for name in joined.dtype.names or ()}
    cols["direction"] = ["forward"] * table.size + ["reverse"] * rev.size
    both = table_from_columns(cols)
    meta = {**meta, "summary": {**meta["summary"], "dark_std_a": 1e-13}}
    write_export(d, meta, both)
    assert run_cli(["analyze", str(d), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["l_max_cd_m2"] == pytest.approx(meta["summary"]["l_max_cd_m2"], rel=1e-12)
    assert doc["summary"]["von_v"] == pytest.approx(meta["summary"]["von_v"], rel=1e-12)
    assert doc["summary"]["noise_floor_source"] == "given"
    assert doc["summary"]["noise_floor_cd_m2"] > 0
    assert any("forward" in n for n in doc["notes"]) and any("dark_std_a" in n for n in doc["notes"])


def test_analyze_floors_the_noise_at_one_recorded_adc_step(tmp_path: Path) -> None:
    """A recorded dark_std_a of 0 (every dark reading on one ADC code) with the board's ADC step
    recorded gives a noise floor of one step converted to luminance (issue 12), not 0."""
    from station.analysis.photometry import luminance_per_photodiode_amp, prepare_spectra
    from station.commands.analyze import reanalyze
    from station.exportfmt import calibration_from_meta, spectra_from_meta

    d, _, _ = sweep_export(tmp_path)
    m, table = read_export(d)
    step_a = 10.0 / 2**16 / 1e6  # a 16-bit ADC of ±10 V full scale behind 1 MV/A
    m["dark_std_a"] = 0.0
    m["pd_adc_step_a"] = step_a
    m.pop("dark_samples_a", None)
    res = reanalyze(m, table)
    cal = calibration_from_meta(m, "meta")
    prepared = prepare_spectra(spectra_from_meta(m, "meta"), cal, "voltage_v")
    k = luminance_per_photodiode_amp(cal, prepared, len(prepared.key) - 1)
    assert res.summary is not None
    assert res.summary.noise_floor_cd_m2 == pytest.approx(step_a * k, rel=1e-12)


async def test_a_sweep_export_copied_without_the_store_reanalyses_to_its_summary(tmp_path):
    """The export stands alone: copied away from the store, station analyze reproduces the
    sweep's summary to 1e-9, and every spectrum the board sent for the run is in it with its
    raw integer counts, dark level, integration time and flags."""
    import json
    import shutil
    import subprocess
    import sys

    from station.export import export_run
    from station.procedures import SweepParams, run_sweep

    from .stationkit import sim_station

    async with sim_station(tmp_path, ["otac"], speed=1e4) as (_server, ctx):
        res = await run_sweep(ctx, 1, SweepParams(start_v=0.0, stop_v=6.0, step_v=0.05))
        out = export_run(ctx.store, res.run_id, tmp_path / "exp")
        stored = ctx.store.spectra_of(res.run_id)
    alone = tmp_path / "elsewhere" / "sweep"
    shutil.copytree(out, alone)
    meta = json.loads((alone / "run.json").read_text())
    assert [s["seq"] for s in meta["spectra"]] == [s["seq"] for s in stored]
    for s, row in zip(meta["spectra"], stored, strict=True):
        assert s["raw_counts"] == [int(c) for c in row["counts"]]
        assert all(isinstance(c, int) for c in s["raw_counts"])
        assert (s["dark_counts"], s["integration_ms"], s["flags"]) == (
            row["dark_counts"], row["integration_ms"], row["flags"])
    assert sum(s["used"] for s in meta["spectra"]) == res.summary["spectra_used"] >= 8
    r = subprocess.run([sys.executable, "-m", "station", "analyze", str(alone), "--json"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path / "elsewhere")
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)
    again = again.get("summary", again)
    compared = 0
    for k, v in res.summary.items():
        if isinstance(v, float) and k in again and again[k] is not None:
            assert again[k] == pytest.approx(v, rel=1e-9, abs=1e-300), k
            compared += 1
    assert compared >= 10 and again["n_points"] == res.summary["n_points"]
