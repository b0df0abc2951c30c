"""The README's "Using it" block, run as written, in order, in a directory holding only what a
fresh clone has (examples/ and the .venv): the simulator, a sweep, three aging runs, analyze with
the example calibration, report, lifetime across the three runs, the daemon and its jobs over a
real Mosquitto (issue 14).

What the test changes, and only that: the simulator's port (a free one instead of 7000, in the
block and in the copied examples/), the broker and database URLs of the copied configuration,
and the two background commands, whose start it waits for (the simulator's first line; the
daemon answering `station status`) before the next command runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def readme_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Using it"):]
    m = re.search(r"```sh\n(.*?)```", section, re.S)
    assert m, "no ```sh block under 'Using it'"
    return [line for line in m.group(1).splitlines() if line.strip()]


def as_script(lines: list[str], port: int) -> str:
    out = ["set -euo pipefail"]
    for line in lines:
        cmd = line.split("  #")[0].rstrip()  # the block's comments
        cmd = cmd.replace("127.0.0.1:7000", f"127.0.0.1:{port}")
        if cmd.endswith("&") and re.search(r"\bstation sim\b", cmd):
            out += [f"{cmd[:-1].rstrip()} > sim.url &",
                    "until [ -s sim.url ]; do kill -0 $! || exit 1; sleep 0.1; done"]
        elif cmd.endswith("&") and re.search(r"\bstation run\b", cmd):
            out += [f"{cmd[:-1].rstrip()} 2> daemon.log &",
                    "until .venv/bin/station status --timeout 2 > /dev/null 2>&1; do kill -0 $! || exit 1; "
                    "sleep 0.2; done"]
        else:
            out.append(f"echo {shlex.quote('>>> ' + cmd)}")
            out.append(cmd)
    return "\n".join(out) + "\n"


def test_readme_block_is_runnable_text() -> None:
    lines = readme_block()
    assert not any("[" in line.split("#")[0] and "--" in line for line in lines if "*" not in line), \
        "optional arguments in brackets do not run"
    cmds = " ".join(lines)
    # the calibration file it names is in examples/, the runs lifetime names are made above it
    for name in re.findall(r"--calibration (\S+)", cmds):
        assert (ROOT / name).is_file(), name
    made = set(re.findall(r"--out (\S+)", cmds))
    for args in re.findall(r"station lifetime ((?:\S+ )+)--", cmds):
        assert set(args.split()) <= made, args


def test_simulated_pixels_match_the_example_config() -> None:
    from sim.layout import layout_from_presets
    from station.config import load_config

    (preset,) = re.findall(r"station sim --preset '([^']+)'", " ".join(readme_block()))
    layout = layout_from_presets(preset)
    cfg = load_config(ROOT / "examples" / "sim-station.toml")
    assert [p.preset.name for p in layout.pixels] == [p.device for _, p in cfg.all_pixels()]
    assert f"--preset '{preset}'" in (ROOT / "examples" / "sim-station.toml").read_text()
    import tomllib

    for job in (ROOT / "examples" / "jobs").glob("*.toml"):
        spec = tomllib.loads(job.read_text())
        pixels = set(spec.get("pixels", []))
        for step in spec.get("steps", []):
            pixels |= set(step.get("pixels", []))
        assert pixels <= set(range(1, layout.n_pixels + 1)), job.name


def test_readme_using_it_block_runs_as_written(tmp_path) -> None:
    mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                              if Path("/usr/sbin/mosquitto").exists() else None)
    if mosquitto is None:
        pytest.skip("mosquitto is not installed (scripts/bootstrap.sh --test installs it)")
    port, mqtt_port, db_port = free_port(), free_port(), free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    work = tmp_path / "clone"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    shutil.copytree(ROOT / "examples", work / "examples")
    cfg = work / "examples" / "sim-station.toml"
    cfg.write_text(cfg.read_text().replace("127.0.0.1:7000", f"127.0.0.1:{port}")
                   .replace("mqtt://127.0.0.1:1883", f"mqtt://127.0.0.1:{mqtt_port}")
                   .replace("http://127.0.0.1:8086", f"http://127.0.0.1:{db_port}"))
    script = work / "readme.sh"
    script.write_text(as_script(readme_block(), port))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATION_")}
    env["HOME"] = str(tmp_path)  # no user configuration
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as fo, err.open("w") as fe:
        p = subprocess.Popen(["bash", str(script)], cwd=work, env=env, stdout=fo, stderr=fe,
                             start_new_session=True)
    try:
        rc = p.wait(900)
    finally:
        # the background commands the block left running (the simulator, the daemon)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        broker.terminate()
        broker.wait(10)
    stdout, stderr = out.read_text(), err.read_text()
    log = f"--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- daemon\n" + (
        (work / "daemon.log").read_text() if (work / "daemon.log").exists() else "")
    assert rc == 0, log
    assert "Traceback" not in stdout + stderr, log
    assert (work / "run1" / "points.csv").exists() and (work / "run1" / "report.html").exists()
    for a in ("age1", "age2", "age3"):
        assert (work / a / "samples.csv").exists(), a
    # lifetime fitted the acceleration law across the three runs
    assert "n =" in stdout or "acceleration" in stdout, log
    # the schedule ran to its end on the daemon
    assert re.search(r"(completed|finished)", stdout), log


def _numbers(line: str) -> list[float]:
    """The figures of a table line, "—" (none) as NaN."""
    return [float("nan") if x == "—" else float(x)
            for x in re.findall(r"—|-?\d+(?:\.\d+)?(?:e-?\d+)?", line.split(None, 1)[1])]


def test_readme_demo_table_is_what_the_demo_prints(tmp_path) -> None:
    """Same lines, same labels, the seed's and the model's figures exactly; the measured ones
    within the 10 % the simulator's noise and the channels' start times move them."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("```\nTable S1, measured"):]
    readme = block[4:block.index("```", 4)].strip().splitlines()
    r = subprocess.run([sys.executable, "-m", "station", "demo", "--out", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    start = out.index(readme[0])
    printed = out[start:start + len(readme)]
    assert [ln.split()[:1] for ln in printed] == [ln.split()[:1] for ln in readme]
    for mine, theirs in zip(readme, printed, strict=True):
        if not re.match(r"^[a-z]\w*_", mine):  # titles and the header: verbatim
            assert mine == theirs
            continue
        a, b = _numbers(mine), _numbers(theirs)
        assert len(a) == len(b), (mine, theirs)
        measured = {0, 3} if "[" in mine else {0, 2}  # "m [seed] / model" or "m / model"
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            if k in measured:
                assert x == pytest.approx(y, rel=0.1, abs=0.05), (mine, theirs)
            else:
                assert x == pytest.approx(y, rel=1e-3, nan_ok=True), (mine, theirs)
