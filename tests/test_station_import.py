"""`station import`: CSV data of another setup become an export that analyze, report and lifetime
accept, with figures checked against the device model that produced the data (the example files
are written by examples/import/make_examples.py from the simulator's OTAc model)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from sim.physics import operating_point
from sim.presets import get_preset
from station.cli import main as cli_main
from station.exportfmt import read_export

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "import"
GEOMETRY = ["--area-mm2", "4", "--photodiode-radius-mm", "5.64", "--photodiode-distance-mm", "10"]


def run_cli(argv: list[str]) -> int:
    return cli_main(argv)


def test_imported_sweep_gives_the_models_luminance_and_eqe_at_every_point(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    assert run_cli(["import", "sweep", "--data", str(EXAMPLES / "jvl.csv"),
                    "--spectra", str(EXAMPLES / "spectra.csv"), *GEOMETRY, "--device", "otac",
                    "--out", str(out)]) == 0
    meta, table = read_export(out)
    op = operating_point(get_preset("otac"), table["voltage_v"], area_m2=4e-6)
    lit = op.luminance_cd_m2 > 1.0
    # photodiode -> luminance through the calibration vs the model's own photometry: the spectra
    # are 0.5 V apart and the line shifts with voltage, hence 0.3 %, not round-off
    np.testing.assert_allclose(table["luminance_cd_m2"][lit], op.luminance_cd_m2[lit], rtol=3e-3)
    np.testing.assert_allclose(table["eqe_pct"][lit], 100 * op.eqe[lit], rtol=1e-3)
    s = meta["summary"]
    assert s["l_max_cd_m2"] == pytest.approx(float(op.luminance_cd_m2.max()), rel=3e-3)
    assert s["eqe_max_pct"] == pytest.approx(float(100 * op.eqe[lit].max()), rel=1e-3)
    assert meta["device"] == "otac" and meta["kind"] == "sweep"


def test_imported_export_re_analyses_to_its_own_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    assert run_cli(["import", "sweep", "--data", str(EXAMPLES / "jvl.csv"),
                    "--spectra", str(EXAMPLES / "spectra.csv"), *GEOMETRY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert run_cli(["analyze", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for key, value in doc["recorded_summary"].items():
        if isinstance(value, float):
            assert doc["summary"][key] == pytest.approx(value, rel=1e-9, nan_ok=True), key
    assert run_cli(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0


def test_imported_aging_run_gives_the_closed_form_lifetime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "aging"
    assert run_cli(["import", "aging", "--data", str(EXAMPLES / "aging.csv"),
                    "--spectra", str(EXAMPLES / "aging-spectrum.csv"), "--area-mm2", "4",
                    "--config", str(EXAMPLES.parent / "sim-station.toml"), "--out", str(out)]) == 0
    capsys.readouterr()
    tau_h, beta = 30.0, 0.7  # the generator's stretched exponential
    assert run_cli(["lifetime", str(out), "--json"]) == 0
    (pixel,) = json.loads(capsys.readouterr().out)["pixels"]
    assert pixel["t50_h"] == pytest.approx(tau_h * math.log(2) ** (1 / beta), rel=2e-3)
    assert not pixel["extrapolated"]


def test_bad_csv_is_refused_naming_the_problem_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "jvl.csv"
    bad.write_text("voltage_v,current_a\n1,2\n")
    out = tmp_path / "never"
    argv = ["import", "sweep", "--data", str(bad), "--spectra", str(EXAMPLES / "spectra.csv"), *GEOMETRY,
            "--out", str(out)]
    assert run_cli(argv) == 2
    assert "missing column(s) photodiode_a" in capsys.readouterr().err
    assert not out.exists()
    shutil.copy(EXAMPLES / "jvl.csv", bad)
    bad.write_text(bad.read_text().replace("\n3.0,", "\n3.0x,", 1))
    assert run_cli(argv) == 2
    assert "voltage_v is not a number: '3.0x'" in capsys.readouterr().err
    assert not out.exists()
    assert run_cli(["import", "sweep", "--data", str(EXAMPLES / "jvl.csv"), "--spectra",
                    str(EXAMPLES / "spectra.csv"), "--area-mm2", "4", "--out", str(out)]) == 2
    assert "photodiode geometry" in capsys.readouterr().err
    assert not out.exists()
