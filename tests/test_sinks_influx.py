"""The InfluxDB sink against a real line-protocol database (VictoriaMetrics), read back through
the database's own query API."""
# ruff: noqa: F811  (pytest fixtures imported from tests.services are test arguments)

from __future__ import annotations

import math

from station.config import InfluxSection
from station.sinks import InfluxSink
from station.sinks.cursor import RunMeta, SinkDB
from station.sinks.influx import line_of
from station.store import AGING_COLUMNS, SWEEP_COLUMNS, Store
from tests.services import (  # noqa: F401  (fixtures)
    Victoria,
    aging_row,
    caught_up,
    free_port,
    running,
    sweep_row,
    victoria,
    victoria_factory,
    wait_until,
)


def influx_cfg(url: str, **kw: object) -> InfluxSection:
    base: dict[str, object] = dict(enabled=True, url=url, token="t", org="lab", bucket="b",
                                   poll_s=0.02, retry_min_s=0.05, retry_max_s=0.3, timeout_s=5)
    base.update(kw)
    return InfluxSection.model_validate(base)


def fill(store: Store, station: str, *, sweep: int, aging: int) -> tuple[int, int]:
    s = store.create_run(kind="sweep", station=station, pixel=3, area_m2=4e-6, substrate="S 01",
                         device="pero,A", job_id="job=9")
    a = store.create_run(kind="aging", station=station, pixel=4, area_m2=4e-6, substrate="S-02")
    store.add_rows("sweep_points", SWEEP_COLUMNS, [sweep_row(i, s, 3) for i in range(sweep)])
    store.add_rows("aging_samples", AGING_COLUMNS, [aging_row(100_000 + i, a, 4) for i in range(aging)])
    store.flush()
    return s, a


def series(v: Victoria, name: str, station: str) -> list[dict]:
    return v.export(f'{{__name__="{name}",station="{station}"}}')


def samples(v: Victoria, name: str, station: str) -> list[tuple[int, float]]:
    return sorted((t, x) for s in series(v, name, station)
                  for t, x in zip(s["timestamps"], s["values"], strict=True))


async def test_points_land_with_tags_unit_fields_and_board_timestamps(tmp_path, victoria):
    store = Store(tmp_path / "s.db")
    sweep_run, aging_run = fill(store, "inf1", sweep=30, aging=20)
    sink = InfluxSink(store.path, influx_cfg(victoria.url), "inf1")
    async with running(sink):
        await wait_until(caught_up(sink), what="cursor at head")
    assert sink.failures == 0

    seqs = samples(victoria, "sweep_point_seq", "inf1")
    assert sorted(int(x) for _, x in seqs) == list(range(30))  # every point, exactly once
    (s,) = [s for s in series(victoria, "sweep_point_voltage_v", "inf1")
            if s["metric"]["direction"] == "forward"]
    assert s["metric"] == {"__name__": "sweep_point_voltage_v", "station": "inf1",
                           "run": str(sweep_run), "pixel": "3", "substrate": "S 01",
                           "device": "pero,A", "job": "job=9", "direction": "forward"}
    # timestamps: board time + one fixed per-run offset to Unix time (VictoriaMetrics keeps ms)
    off = SinkDB(store.path).anchor_us(sweep_run, 0)
    t_us = [sweep_row(i, sweep_run, 3)[SWEEP_COLUMNS.index("t_us")] for i in range(30)]
    assert [t for t, _ in seqs] == [(t + off) // 1000 for t in t_us]
    for name in ("current_a", "current_density_ma_cm2", "luminance_cd_m2", "photodiode_a",
                 "ce_cd_a", "pe_lm_w", "voltage_set_v"):
        assert len(samples(victoria, f"sweep_point_{name}", "inf1")) == 30, name
    # NaN EQE is left out rather than written as a bogus number
    assert len(samples(victoria, "sweep_point_eqe_pct", "inf1")) == 30 - len(range(0, 30, 7))

    aging = samples(victoria, "aging_sample_l_rel", "inf1")
    assert len(aging) == 20 and math.isclose(aging[0][1], 1.0 - 100_000 * 1e-4)
    (a,) = series(victoria, "aging_sample_temperature_c", "inf1")
    assert a["metric"]["run"] == str(aging_run) and "device" not in a["metric"]
    assert sorted(int(x) for _, x in samples(victoria, "aging_sample_seq", "inf1")) == [
        100_000 + i for i in range(20)]
    store.close()


async def test_replay_rewrites_identical_points_instead_of_adding(tmp_path, victoria):
    store = Store(tmp_path / "s.db")
    fill(store, "inf2", sweep=25, aging=0)
    cfg = influx_cfg(victoria.url, batch_size=10)
    sink = InfluxSink(store.path, cfg, "inf2")
    async with running(sink):
        await wait_until(caught_up(sink), what="first pass")
    before = samples(victoria, "sweep_point_current_a", "inf2")
    rows_in = victoria.metric('vm_rows_inserted_total{type="influx"}')
    SinkDB(store.path).reset("influx")  # replay everything from the start
    sink2 = InfluxSink(store.path, cfg, "inf2")
    async with running(sink2):
        await wait_until(caught_up(sink2), what="replay")
    assert sink2.sent == 25  # the database really received every point again ...
    await wait_until(lambda: victoria.metric('vm_rows_inserted_total{type="influx"}') >= rows_in + 25,
                     what="the database counting the replayed rows", step_s=0.2)
    assert samples(victoria, "sweep_point_current_a", "inf2") == before  # ... at the same keys


async def test_unreachable_database_delays_but_keeps_every_row(tmp_path):
    store = Store(tmp_path / "s.db")
    fill(store, "inf3", sweep=7, aging=3)
    sink = InfluxSink(store.path, influx_cfg(f"http://127.0.0.1:{free_port()}"), "inf3")
    async with running(sink):
        await wait_until(lambda: sink.failures >= 2, what="failed writes")
        await sink.refresh_backlog(force=True)
        h = sink.health()
    assert h["state"] == "retrying" and "does not answer" in (h["last_error"] or "")
    assert h["rows_behind"] == 10 and h["tables"]["sweep_points"]["seconds_behind"] > 0
    assert SinkDB(store.path).cursor("influx", "sweep_points") == 0


def test_line_protocol_escapes_tags_and_types_fields():
    d = {c: None for c in SWEEP_COLUMNS}
    d.update(seq=5, t_us=10, pixel=2, direction="forward", voltage_v=2.5, current_a=1e-9, flags=0,
             eqe_pct=float("nan"))
    meta = RunMeta(id=3, pixel=2, substrate="a b", device="x,y", job_id="k=v")
    line = line_of("sweep_points", "st 1", meta, d, 1_700_000_000_000_010)
    assert line == (r"sweep_point,station=st\ 1,run=3,pixel=2,substrate=a\ b,device=x\,y,job=k\=v,"
                    r"direction=forward voltage_v=2.5,current_a=1e-09,seq=5i,flags=0i "
                    "1700000000000010")


def test_batch_lines_leave_out_missing_and_infinite_fields_and_rows_without_board_time(tmp_path):
    """The sink's batch path (column-wise, one f-string per full row) against lines typed here."""
    store = Store(tmp_path / "s.db")
    run = store.create_run(kind="aging", station="st", pixel=7, area_m2=4e-6, substrate="S 1",
                           device="dbsa")
    base = dict.fromkeys(AGING_COLUMNS)
    full = dict(base, seq=1, run_id=run, t_us=1_000, channel=6, pixel=7, flags=0, pd_gain=2,
                current_a=8e-05, voltage_v=3.25, photodiode_a=1.5e-07, temperature_c=25.5,
                luminance_cd_m2=123.0, l_rel=0.5, eqe_pct=4.125, dark_a=1e-11)
    rows = [full,
            dict(full, seq=2, t_us=2_000, luminance_cd_m2=float("nan"), voltage_v=float("inf")),
            dict(full, seq=3, t_us=None),
            dict(full, seq=4, t_us=3_000, flags=None)]
    store.add_rows("aging_samples", AGING_COLUMNS, [tuple(r[c] for c in AGING_COLUMNS) for r in rows])
    store.flush()
    sink = InfluxSink(store.path, influx_cfg("http://127.0.0.1:1"), "st")
    off = sink.db.anchor_us(run, 1_000)
    after, last, lines = sink._prepare("aging_samples")
    tags = r"aging_sample,station=st,run=1,pixel=7,substrate=S\ 1,device=dbsa "
    assert (after, last) == (0, 4) and sink.skipped_no_time == 1
    assert lines == [
        tags + "current_a=8e-05,voltage_v=3.25,photodiode_a=1.5e-07,temperature_c=25.5,"
        f"luminance_cd_m2=123.0,l_rel=0.5,eqe_pct=4.125,seq=1i,channel=6i,flags=0i {1_000 + off}",
        tags + "current_a=8e-05,photodiode_a=1.5e-07,temperature_c=25.5,"
        f"l_rel=0.5,eqe_pct=4.125,seq=2i,channel=6i,flags=0i {2_000 + off}",
        tags + "current_a=8e-05,voltage_v=3.25,photodiode_a=1.5e-07,temperature_c=25.5,"
        f"luminance_cd_m2=123.0,l_rel=0.5,eqe_pct=4.125,seq=4i,channel=6i {3_000 + off}",
    ]


def test_batch_lines_of_full_sweep_rows_are_the_bytes_typed_here_in_both_revision_modes(tmp_path):
    """The plain field formatter (``template % fields``, which replaced an eval-built f-string)
    on values whose text is easy to get wrong: repr of floats (exponents, a negative value, the
    smallest subnormal, 17 significant digits, integral floats keep ".0"), large ints with their
    "i"; the lines are typed here, and line_of (the general path) agrees with them."""
    store = Store(tmp_path / "s.db")
    run = store.create_run(kind="sweep", station="st", pixel=2, area_m2=4e-6, substrate="S1",
                           device="dbsa", job_id="j1")
    base = dict.fromkeys(SWEEP_COLUMNS)
    row = dict(base, seq=2**40 + 1, run_id=run, sweep_id=7, idx=0, t_us=1_000, pixel=2, flags=3,
               pd_gain=1, direction="reverse", voltage_set_v=3.0, voltage_v=-0.0025,
               current_a=5e-324, current_density_ma_cm2=1e16, photodiode_a=1.0000000000000002,
               luminance_cd_m2=123456789012.5, eqe_pct=0.1, ce_cd_a=1e-05, pe_lm_w=2.5e-07,
               epoch=2, rev=0)
    revised = dict(row, seq=2**40 + 2, t_us=2_000, rev=1)
    store.add_rows("sweep_points", SWEEP_COLUMNS,
                   [tuple(r[c] for c in SWEEP_COLUMNS) for r in (row, revised)])
    store.flush()
    tags = "sweep_point,station=st,run=1,pixel=2,substrate=S1,device=dbsa,job=j1,direction=reverse "
    values = ("voltage_set_v=3.0,voltage_v=-0.0025,current_a=5e-324,current_density_ma_cm2=1e+16,"
              "photodiode_a=1.0000000000000002,{live}luminance_cd_m2=123456789012.5,"
              "{live}eqe_pct=0.1,{live}ce_cd_a=1e-05,{live}pe_lm_w=2.5e-07,"
              "seq={seq}i,sweep_id=7i,idx=0i,flags=3i,epoch=2i,rev={rev}i")
    for mode, live in (("overwrite", ""), ("live_fields", "live_")):
        sink = InfluxSink(store.path, influx_cfg("http://127.0.0.1:1", revisions=mode), "st")
        off = sink.db.anchor_us(run, 1_000)
        _after, _last, lines = sink._prepare("sweep_points")
        assert lines == [
            tags + values.format(live=live, seq=2**40 + 1, rev=0) + f" {1_000 + off}",
            # a revision (rev > 0) always carries the final names
            tags + values.format(live="", seq=2**40 + 2, rev=1) + f" {2_000 + off}",
        ], mode
        meta = sink.db.run_meta(run)
        assert [line_of("sweep_points", "st", meta, r, r["t_us"] + off, mode == "live_fields"
                        and not r["rev"]) for r in (row, revised)] == lines


async def test_resend_gives_a_restored_database_the_points_back_idempotently(
        tmp_path, victoria, victoria_factory):
    """`station sinks resend influx`: the daemon's sink delivered everything to one database;
    a second one (a restore from an old backup: empty) gets every point of the last 10 days,
    then of one run, with the same timestamps and values; resending twice changes nothing; a
    selection that matches nothing writes nothing; bad arguments write nothing and say why."""
    import subprocess
    import sys

    store = Store(tmp_path / "s.db")
    _sweep_run, aging_run = fill(store, "inf-rs", sweep=25, aging=40)
    store.close()
    sink = InfluxSink(tmp_path / "s.db", influx_cfg(victoria.url), "inf-rs")

    async with running(sink):
        await wait_until(caught_up(sink), what="cursor at head")
    first = {n: samples(victoria, n, "inf-rs") for n in ("sweep_point_luminance_cd_m2",
                                                        "aging_sample_l_rel", "aging_sample_seq")}
    restored = victoria_factory()
    cfg = tmp_path / "station.toml"
    cfg.write_text(f'[station]\nid = "inf-rs"\n[store]\npath = "{tmp_path / "s.db"}"\n'
                   f'[influxdb]\nenabled = true\nurl = "{restored.url}"\ntoken = "t"\n'
                   f'org = "lab"\nbucket = "b"\n')

    def resend(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "station", "sinks", "resend", "influx",
                               "--config", str(cfg), "--no-progress", *args],
                              capture_output=True, text=True, timeout=120)

    bad = resend("--since", "yesterday")
    assert bad.returncode == 2 and "cannot read duration 'yesterday'" in bad.stderr
    r = resend("--run", str(aging_run))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("40 points written again")
    # (a series new to VictoriaMetrics can take a moment to be searchable: wait for it)
    await wait_until(lambda: samples(restored, "aging_sample_l_rel", "inf-rs")
                     == first["aging_sample_l_rel"], what="the aging run's points")
    assert samples(restored, "sweep_point_luminance_cd_m2", "inf-rs") == []
    for _ in range(2):  # twice: the same points, nothing added
        r = resend("--since", "10d")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("65 points written again")
        for name, pts in first.items():
            await wait_until(lambda name=name, pts=pts: samples(restored, name, "inf-rs") == pts,
                             what=name)
            assert samples(restored, name, "inf-rs") == pts, name
    r = resend("--run", "999")
    assert r.returncode == 0 and r.stdout.startswith("0 points")


async def test_health_stays_current_while_the_sink_waits_to_retry(tmp_path):
    """The database is unreachable and the sink waits 30 s between attempts: rows that arrive
    meanwhile show in health's rows_behind within a health period, without a new attempt
    (the issue: rows_behind stayed at 133,654 for over 40 s of an outage while rows came in)."""
    store = Store(tmp_path / "s.db")
    run = store.create_run(kind="aging", station="inf-h", pixel=1, area_m2=4e-6)
    store.add_rows("aging_samples", AGING_COLUMNS, [aging_row(i, run, 1) for i in range(10)])
    store.flush()
    sink = InfluxSink(store.path, influx_cfg(f"http://127.0.0.1:{free_port()}", retry_min_s=30.0,
                                             retry_max_s=30.0), "inf-h")
    async with running(sink):
        await wait_until(lambda: sink.failures >= 1 and sink.health()["rows_behind"] == 10,
                         what="the first failure, 10 rows behind")
        failures = sink.failures
        store.add_rows("aging_samples", AGING_COLUMNS, [aging_row(i, run, 1) for i in range(10, 25)])
        store.flush()
        await wait_until(lambda: sink.health()["rows_behind"] == 25, what="health follows the store")
        assert sink.failures == failures and sink.state == "retrying"  # still the same wait
