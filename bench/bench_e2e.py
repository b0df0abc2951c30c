"""End-to-end benchmark of the station: stream, wire, sweep, MQTT latency, daemon CPU.

    python bench/bench_e2e.py [--quick] [--json]        (or: station bench [--quick] [--json])

Every figure is measured over real loopback sockets against the simulator, which runs in its
own process (its CPU is not the station's). Ratios are against baselines measured in the same
run, so they compare across machines; the absolute figures depend on the machine.

(a) ``stream_samples_per_s``: the simulator holds a backlog of N aging samples (32 channels)
    in its ring; the station connects, the link replays the backlog over an unpaced socket and
    every sample goes board → COBS/CRC decode → routing → photometry (AgingCollector with a
    spectrum, stop conditions t50) → SQLite store (batched commits, acks) → InfluxDB line
    protocol written to VictoriaMetrics by the Influx sink (if ``victoria-metrics`` is missing:
    the batch is only encoded, and the JSON says so). Rate = N / (connect → last line written).
    ``stream_vs_raw_ratio``: that rate over a raw baseline in the same process, same simulator,
    same socket: one stream_replay request, then only StreamDecoder into numpy.
(b) ``wire_fraction``: 921600 baud, 32 channels offering more than the wire carries; delivered
    samples/s at the station over (baud/10 B/s ÷ 32 B per raw sample) — framing counts against.
(c) ``sweep_overhead_pct``: a 121-point sweep (0…6 V, 10 ms dwell, 20 ms integration, no
    spectra) with 1 ms USB latency, simulator in real time: wall time of ``run_sweep`` over
    Σ(dwell + integration) − 1. The photodiode's dark reading is the one the warm-up sweep of
    the same pixel took seconds before (reused while younger than ``dark_max_age_s``, 300 s);
    ``detail_sweep`` also gives the overhead of a sweep that measures it first (16 × 20 ms).
    ``sweep_speedup_vs_per_point``: a naive loop (smu_configure,
    then per point smu_output, sleep(dwell), smu_measure; one round trip each) over the same
    link and points, its time over the sweep's.
(d) ``mqtt_latency_p50_ms``/``p99``: during (e), a subscriber receives the aging samples the
    daemon's MQTT sink publishes (default decimation, 1 Hz per pixel); latency = receipt time
    − the time the board produced the sample (board ``t_us`` mapped to wall time through the
    simulator's clock, speed 1, checked for slip). Null when Mosquitto is not installed.
(e) ``cpu_pct_256ch_10hz``/``rss_mb_256ch_10hz``: a separate station process (store, 256
    ``run_aging`` loops, MQTT + Influx sinks) aging 256 pixels at 10 Hz each (2,560 samples/s)
    on a simulated 256-channel board — measured, not scaled (pixel and channel numbers are u16
    on the wire since protocol version 2). CPU time (getrusage) of that process over ~10 s
    (``--quick``: ~4 s), % of one core.

Progress goes to stderr; ``--json`` prints one JSON object. No assertion: it reports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firmware_protocol.codec import StreamDecoder, encode_frame  # noqa: E402
from firmware_protocol.messages import (  # noqa: E402
    AgingSamples,
    AgingStart,
    AgingStop,
    MuxSelect,
    SmuConfigure,
    SmuMeasure,
    SmuOutput,
    SmuReading,
    StreamReplay,
)
from firmware_protocol.spec import SmuMode, Stream  # noqa: E402

KEYS = ("stream_samples_per_s", "stream_vs_raw_ratio", "wire_fraction", "sweep_overhead_pct",
        "sweep_speedup_vs_per_point", "mqtt_latency_p50_ms", "mqtt_latency_p99_ms",
        "cpu_pct_256ch_10hz", "rss_mb_256ch_10hz")
GOALS = {
    "stream_samples_per_s": (">=", 100_000.0),
    "stream_vs_raw_ratio": (">=", 0.5),
    "wire_fraction": (">=", 0.9),
    "sweep_overhead_pct": ("<=", 5.0),
    "sweep_speedup_vs_per_point": (">=", 1.2),
    "mqtt_latency_p99_ms": ("<=", 50.0),
    "cpu_pct_256ch_10hz": ("<=", 25.0),
}
N_CH = 32  # aging channels of (a) and (b)
DAEMON_CH = 256  # (d, e): every channel of a 256-channel board, one pixel each
DAEMON_BOARD_CH = 256
AGING_J_MA_CM2 = 2.0
AREA_MM2 = 4.0
BAUD = 921600
RAW_SAMPLE_BYTES = 32
WIRE_CH = 30  # 3,000 samples/s offered: just above the 2,880/s a 921,600 baud wire carries


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------
# child processes: the simulator, and the station of (d)/(e)
# -------------------------------------------------------------------------------------------


def _prefill(board: Any, n: int, interval_ms: int) -> int:
    """Age every channel with no host attached until the ring holds >= n samples; stop them."""
    caps = board.capabilities()
    i_a = AGING_J_MA_CM2 * 10.0 * AREA_MM2 * 1e-6
    board.receive(b"".join(
        encode_frame(AgingStart(channel=c, pixel=c + 1, current_a=i_a, interval_ms=interval_ms,
                                compliance_v=caps.aging_compliance_v, pd_gain=2), c + 1)
        for c in range(board.n_channels)), 0.0)
    t = board.t_us
    while board.aging_ring.head < n:
        t = board.advance(t + 1_000_000)
    board.receive(b"".join(encode_frame(AgingStop(channel=c), 100 + c)
                           for c in range(board.n_channels)), 0.0)
    for _ in range(5):
        t = board.advance(t + 1000)
    board.take_frames()
    return int(board.aging_ring.head)


async def _sim_child(opts: dict[str, Any]) -> None:
    from sim.server import SimServer

    kw: dict[str, Any] = {}
    if opts.get("ring_depth"):
        kw["ring_depth"] = opts["ring_depth"]
    if opts.get("tx_buffer_bytes"):
        kw["tx_buffer_bytes"] = opts["tx_buffer_bytes"]
    server = SimServer(opts["layout"], listen="tcp://127.0.0.1:0", speed=opts["speed"], seed=1,
                       baud=opts.get("baud"), usb_latency_ms=opts.get("usb_latency_ms", 0.0),
                       n_aging_channels=opts.get("channels"), **kw)
    server.board.warm_up()
    head = _prefill(server.board, opts["prefill"], 10) if opts.get("prefill") else 0
    url = await server.start()
    assert server.clock is not None
    clock = server.clock
    offset = time.time() - clock.now_us() / (clock.speed * 1e6)
    print(json.dumps({"url": url, "head": head, "epoch_offset_s": offset,
                      "aging_compliance_v": server.board.capabilities().aging_compliance_v}),
          flush=True)
    await asyncio.to_thread(sys.stdin.read)  # until the parent closes our stdin
    print(json.dumps({"slipped_us": clock.slipped_us,
                      "tx_frames_dropped": server.stats.tx_frames_dropped}), flush=True)
    await server.stop()


def _config(store: Path, n_pixels: int, **extra: Any) -> Any:
    from station.config import load_config

    return load_config(None, station={"id": "bench"}, store={"path": str(store)},
                       substrates=[{"id": "S1", "pixels": [
                           {"number": i + 1, "label": f"P{i + 1}", "area_mm2": AREA_MM2,
                            "device": "dbsa"} for i in range(n_pixels)]}], **extra)


def _spectrum() -> Any:
    from station.analysis.photometry import Spectrum

    wl = np.arange(400.0, 700.0, 0.5)
    return Spectrum(wl, np.exp(-0.5 * ((wl - 508.0) / 9.0) ** 2), "photon", t_s=0.0)


def _collectors(ctx: Any, channels: range, params: Any, compliance_v: float) -> dict[int, Any]:
    """One aging run + collector (with a spectrum: photometry runs) per channel, routed."""
    from station.procedures import AgingCollector, calibration_for

    cols = {}
    area = AREA_MM2 * 1e-6
    i_a = AGING_J_MA_CM2 * 10.0 * area
    for ch in channels:
        cal = calibration_for(ctx.config, area)
        run_id = ctx.store.create_run(
            kind="aging", station="bench", pixel=ch + 1, area_m2=area, channel=ch,
            calibration=cal.to_dict(),
            params={"current_a": i_a, "current_density_ma_cm2": AGING_J_MA_CM2,
                    "channel": ch, "compliance_v": compliance_v})
        col = AgingCollector(ctx, run_id, ch, cal, 2e-11, params, None)
        col.pixel = ch + 1
        col.add_spectrum(_spectrum())
        ctx.acq.aging[ch] = col
        cols[ch] = col
    return cols


async def _station_child(opts: dict[str, Any]) -> None:
    """(e): the station side only — store, run_aging loops, sinks — and its CPU time."""
    import logging

    from station.procedures import AgingParams, run_aging
    from station.session import open_station
    from station.sinks.runner import SinkRunner, run_sinks

    logging.basicConfig(level=logging.ERROR)
    n_ch = int(opts.get("channels", N_CH))
    cfg = _config(Path(opts["store"]), n_ch, **opts["extra"])
    params = AgingParams(current_density_ma_cm2=AGING_J_MA_CM2, interval_s=opts["interval_s"],
                         until="t50", spectrum_every_h=1e6)
    stop = asyncio.Event()
    runner = SinkRunner(cfg, cfg.store.path)
    async with open_station(cfg, url=opts["url"]) as ctx:
        # where the MQTT latency (d) goes: board time -> received by the station -> committed
        offset = opts["epoch_offset_s"]
        recv_lag: list[float] = []
        commit_lag: list[float] = []
        pending: list[float] = []

        def on_stream(ev: Any) -> None:
            if getattr(ev, "stream", None) is Stream.AGING and len(ev.records):
                now = time.time()
                t = offset + float(ev.records["t_us"].min()) / 1e6
                recv_lag.append(now - t)
                pending.append(t)

        def on_commit() -> None:
            now = time.time()
            commit_lag.extend(now - t for t in pending)
            pending.clear()
            runner.notify()  # as `station run` does: sinks publish right after a commit

        ctx.link.add_stream_consumer(on_stream)
        ctx.acq.on_commit = on_commit
        publish_lag: list[float] = []
        for sink in runner.sinks:
            if hasattr(sink, "_publish_all"):
                orig = sink._publish_all

                async def timed(conn: Any, out: list[Any], orig: Any = orig) -> Any:
                    now = time.time()
                    for o in out:
                        if o.topic and o.topic.endswith("/aging"):
                            publish_lag.append(now - (offset + json.loads(o.payload)["t_us"] / 1e6))
                    return await orig(conn, out)

                sink._publish_all = timed  # type: ignore[method-assign]
        sinks = asyncio.create_task(run_sinks(cfg, cfg.store.path, stop, runner=runner))
        cols = _collectors(ctx, range(n_ch), params, opts["compliance_v"])
        # the daemon's resume path: run_aging finds the channel stopped and starts it
        tasks = [asyncio.create_task(run_aging(ctx, ch + 1, params, resume=col))
                 for ch, col in cols.items()]
        await asyncio.sleep(opts["settle_s"])
        n0 = ctx.acq.received[Stream.AGING]
        recv_lag.clear()
        commit_lag.clear()
        publish_lag.clear()
        r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        print(json.dumps({"window": "start"}), flush=True)
        await asyncio.sleep(opts["window_s"])
        r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        n1 = ctx.acq.received[Stream.AGING]
        rss_kb = 0
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss_kb = int(line.split()[1])
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        print(json.dumps({"cpu_pct": 100.0 * cpu / (w1 - w0), "rss_mb": rss_kb / 1024.0,
                          "samples_per_s": (n1 - n0) / (w1 - w0),
                          "received_lag_ms_p50_p99": [float(np.percentile(recv_lag, q)) * 1e3
                                                      for q in (50, 99)] if recv_lag else None,
                          "committed_lag_ms_p50_p99": [float(np.percentile(commit_lag, q)) * 1e3
                                                       for q in (50, 99)] if commit_lag else None,
                          "publishing_lag_ms_p50_p99": [float(np.percentile(publish_lag, q)) * 1e3
                                                        for q in (50, 99)] if publish_lag else None,
                          "sinks_behind": {k: v.get("rows_behind") for k, v in
                                           runner.health().items()}}), flush=True)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sinks, 10.0)


class Child:
    """A child process of this script speaking one JSON object per stdout line."""

    def __init__(self, kind: str, opts: dict[str, Any], log: Path) -> None:
        self.log = log
        self._logf = open(log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(opts)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._logf, cwd=str(ROOT))

    async def line(self, timeout_s: float = 120.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout_s)
        if not raw:
            self.proc.wait()
            raise RuntimeError(f"child exited ({self.proc.returncode}): "
                               f"{self.log.read_text()[-2000:]}")
        return dict(json.loads(raw))

    async def close(self) -> dict[str, Any] | None:
        last = None
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        with contextlib.suppress(Exception):
            last = await self.line(15.0)
        try:
            await asyncio.to_thread(self.proc.wait, 15.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._logf.close()
        return last


@contextlib.asynccontextmanager
async def sim_child(tmp: Path, name: str, **opts: Any) -> AsyncIterator[tuple[Child, dict[str, Any]]]:
    c = Child("sim", opts, tmp / f"sim-{name}.log")
    try:
        ready = await c.line()
        yield c, ready
    finally:
        await c.close()


# -------------------------------------------------------------------------------------------
# servers (as tests/services.py starts them)
# -------------------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on 127.0.0.1:{port}")


class Servers:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.mqtt_url: str | None = None
        self.influx_url: str | None = None
        self.notes: list[str] = []

    def start(self) -> None:
        mosq = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                             if os.path.exists("/usr/sbin/mosquitto") else None)
        if mosq:
            port = free_port()
            conf = self.tmp / "mosquitto.conf"
            conf.write_text(f"persistence false\nallow_anonymous true\nlistener {port} 127.0.0.1\n")
            p = subprocess.Popen([mosq, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                 stderr=open(self.tmp / "mosquitto.log", "wb"))  # noqa: SIM115
            self.procs.append(p)
            _wait_port(port, p)
            self.mqtt_url = f"mqtt://127.0.0.1:{port}"
        else:
            self.notes.append("mosquitto not installed: MQTT latency not measured (null)")
        vm = shutil.which("victoria-metrics") or ("/usr/bin/victoria-metrics"
                                                  if os.path.exists("/usr/bin/victoria-metrics")
                                                  else None)
        if vm:
            port = free_port()
            p = subprocess.Popen([vm, f"-httpListenAddr=127.0.0.1:{port}",
                                  f"-storageDataPath={self.tmp / 'vm'}", "-loggerLevel=ERROR"],
                                 stdout=subprocess.DEVNULL,
                                 stderr=open(self.tmp / "victoria.log", "wb"))  # noqa: SIM115
            self.procs.append(p)
            _wait_port(port, p)
            self.influx_url = f"http://127.0.0.1:{port}"
        else:
            self.notes.append("victoria-metrics not installed: (a) and (e) encode the line-protocol"
                              " batches but do not write them over HTTP")

    def pids(self) -> dict[str, int]:
        """The database's pid (the broker idles during (a))."""
        return {"database": self.procs[-1].pid} if self.influx_url else {}

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def sink_config(self, mqtt: bool) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.influx_url:
            extra["influxdb"] = {"enabled": True, "url": self.influx_url, "token": "x",
                                 "bucket": "bench", "org": "lab"}
        if mqtt and self.mqtt_url:
            extra["mqtt"] = {"enabled": True, "url": self.mqtt_url}
        return extra


# -------------------------------------------------------------------------------------------
# (a) stream throughput
# -------------------------------------------------------------------------------------------


async def raw_drain(url: str, n: int) -> float:
    """Baseline: replay the ring over the socket, only StreamDecoder into numpy. Returns s."""
    host, port = url.removeprefix("socket://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    dec = StreamDecoder()
    blocks: list[np.ndarray] = []
    got = 0
    t0 = time.perf_counter()
    writer.write(encode_frame(StreamReplay(stream=int(Stream.AGING), from_seq=0,
                                           to_seq=0xFFFFFFFF), 1))
    while got < n:
        data = await reader.read(1 << 20)
        if not data:
            raise RuntimeError("simulator closed the socket")
        for ev in dec.feed(data):
            msg = getattr(ev, "message", None)
            if isinstance(msg, AgingSamples):
                blocks.append(msg.records)
                got += len(msg.records)
    arr = np.concatenate(blocks)
    dt = time.perf_counter() - t0
    assert len(arr) >= n
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return dt


async def e2e_drain(url: str, n: int, tmp: Path, servers: Servers) -> dict[str, Any]:
    from station.procedures import AgingParams
    from station.session import open_station
    from station.sinks.influx import InfluxSink
    from station.sinks.runner import SinkRunner, run_sinks
    from station.store import Store

    store_path = tmp / "stream.db"
    with contextlib.suppress(FileNotFoundError):
        store_path.unlink()
    st = Store(store_path)
    st.set_stream_next(int(Stream.AGING), 0)  # the host "has" nothing: replay the whole ring
    st.flush()
    st.close()
    cfg = _config(store_path, N_CH, **servers.sink_config(mqtt=False))
    params = AgingParams(current_density_ma_cm2=AGING_J_MA_CM2, interval_s=0.01, until="t50")
    stop = asyncio.Event()
    sink: InfluxSink | None = None
    sink_task = None
    runner: SinkRunner | None = None
    if cfg.influxdb.enabled:
        runner = SinkRunner(cfg, store_path)
        sink = next(s for s in runner.sinks if isinstance(s, InfluxSink))
        sink_task = asyncio.create_task(run_sinks(cfg, store_path, stop, runner=runner))
        for _ in range(200):
            if runner.health().get("influx", {}).get("connected"):
                break
            await asyncio.sleep(0.02)
    encoded = 0
    stored_s: float | None = None
    # a daemon loads colour-science's tables once at start (open_station does it while the link
    # comes up); load them before the clock starts so (a) times the stream, not an import
    from station.analysis.photometry import load_reference_tables
    load_reference_tables()
    t0 = time.perf_counter()
    try:
        async with open_station(cfg, url=url,
                                prepare=lambda ctx: _collectors(ctx, range(N_CH), params, 15.0)
                                ) as ctx:
            if runner is not None:  # as `station run` does: the sinks wake after a commit
                ctx.acq.on_commit = runner.notify
            if sink is not None:
                while sink.sent < n:
                    if stored_s is None and ctx.acq.received[Stream.AGING] >= n:
                        stored_s = time.perf_counter() - t0
                        progress(f"(a) all received after {stored_s:.2f} s; "
                                 f"{sink.sent:,} written to the database by then")
                    await asyncio.sleep(0.005)
            else:  # no database: encode the line-protocol batches only, as the sink would
                enc = InfluxSink(store_path, cfg.influxdb, "bench")
                while encoded < n:
                    after, last, lines = await asyncio.to_thread(enc._prepare, "aging_samples")
                    if last == after:
                        ctx.acq.flush()
                        await asyncio.sleep(0.005)
                        continue
                    "\n".join(lines).encode()
                    encoded += len(lines)
                    enc.db.advance(enc.name, "aging_samples", last)
            dt = time.perf_counter() - t0
            stored = ctx.store.count("aging_samples")
    finally:
        stop.set()
        if sink_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sink_task, 10.0)
    return {"seconds": dt, "stored": stored, "received_s": stored_s,
            "database": "victoria-metrics" if sink else None}


async def bench_stream(tmp: Path, quick: bool, servers: Servers) -> dict[str, Any]:
    n = 150_000 if quick else 600_000
    progress(f"(a) stream: simulator pre-fills {n:,} aging samples ...")
    async with sim_child(tmp, "stream", layout=f"dbsa*{N_CH}", speed=1.0, channels=N_CH,
                         prefill=n, ring_depth=n + 100_000, tx_buffer_bytes=1 << 30) as (_c, ready):
        url, head = ready["url"], int(ready["head"])
        progress(f"(a) raw baseline: replay {head:,} samples, StreamDecoder into numpy ...")
        t_raw = await raw_drain(url, head)
        await asyncio.sleep(0.3)  # the simulator notices the client left
        progress(f"(a) raw {head / t_raw:,.0f} samples/s; end-to-end through the station ...")
        procs = {"station": os.getpid(), "simulator": _c.proc.pid, **servers.pids()}
        cpu0 = {k: proc_cpu_s(pid) for k, pid in procs.items()}
        e2e = await e2e_drain(url, head, tmp, servers)
        cpu = {k: proc_cpu_s(pid) - cpu0[k] for k, pid in procs.items()}
    rate = head / e2e["seconds"]
    progress(f"(a) end-to-end {rate:,.0f} samples/s (stored {e2e['stored']:,}); CPU per sample: "
             + ", ".join(f"{k} {1e6 * v / head:.1f} µs" for k, v in cpu.items()))
    return {"stream_samples_per_s": rate, "stream_vs_raw_ratio": rate / (head / t_raw),
            "detail_stream": {"samples": head, "raw_samples_per_s": head / t_raw,
                              "e2e_seconds": e2e["seconds"], "raw_seconds": t_raw,
                              "stored": e2e["stored"], "database": e2e["database"],
                              "all_received_after_s": e2e["received_s"],
                              "cpu_us_per_sample": {k: 1e6 * v / head for k, v in cpu.items()},
                              "cores": os.cpu_count()}}


# -------------------------------------------------------------------------------------------
# (b) wire fraction
# -------------------------------------------------------------------------------------------


async def bench_wire(tmp: Path, quick: bool) -> dict[str, Any]:
    from station.procedures import AgingParams
    from station.session import open_station

    window = 3.0 if quick else 8.0
    progress(f"(b) wire: {BAUD} baud, {WIRE_CH} channels at 10 ms "
             f"({WIRE_CH * 100} samples/s offered), {window:g} s ...")
    async with sim_child(tmp, "wire", layout=f"dbsa*{N_CH}", speed=1.0, channels=N_CH,
                         baud=BAUD) as (_c, ready):
        store = tmp / "wire.db"
        cfg = _config(store, N_CH)
        params = AgingParams(current_density_ma_cm2=AGING_J_MA_CM2, interval_s=0.01, until="t50")
        async with open_station(cfg, url=ready["url"]) as ctx:
            _collectors(ctx, range(N_CH), params, float(ready["aging_compliance_v"]))
            i_a = AGING_J_MA_CM2 * 10.0 * AREA_MM2 * 1e-6
            # all at once: replies queue behind stream data on a saturated wire
            await asyncio.gather(*(ctx.link.request(AgingStart(
                channel=ch, pixel=ch + 1, current_a=i_a, interval_ms=10, pd_gain=2,
                compliance_v=ready["aging_compliance_v"])) for ch in range(WIRE_CH)))
            await asyncio.sleep(1.0)
            n0, t0 = ctx.acq.received[Stream.AGING], time.perf_counter()
            await asyncio.sleep(window)
            n1, t1 = ctx.acq.received[Stream.AGING], time.perf_counter()
            await asyncio.gather(*(ctx.link.request(AgingStop(channel=ch))
                                   for ch in range(WIRE_CH)), return_exceptions=True)
    limit = BAUD / 10.0 / RAW_SAMPLE_BYTES
    rate = (n1 - n0) / (t1 - t0)
    progress(f"(b) delivered {rate:,.0f} samples/s of a {limit:,.0f}/s wire limit")
    return {"wire_fraction": rate / limit,
            "detail_wire": {"delivered_samples_per_s": rate, "wire_limit_samples_per_s": limit}}


# -------------------------------------------------------------------------------------------
# (c) sweep overhead and the naive loop
# -------------------------------------------------------------------------------------------


async def bench_sweep(tmp: Path, quick: bool) -> dict[str, Any]:
    from station.procedures import SweepParams, check_sweep_limits, run_sweep
    from station.session import open_station

    dwell, integ = 10.0, 20.0
    params = SweepParams(start_v=0.0, stop_v=6.0, step_v=0.05, dwell_ms=dwell,
                         integration_ms=integ, spectrum_at_v=[])
    prog = params.program()
    progress(f"(c) sweep: {len(prog)} points, {dwell:g} ms dwell + {integ:g} ms integration, "
             "1 ms USB latency, real time ...")
    reps = 1 if quick else 2
    async with sim_child(tmp, "sweep", layout="dbsa", speed=1.0, usb_latency_ms=1.0) as (_c, ready):
        cfg = _config(tmp / "sweep.db", 1)
        async with open_station(cfg, url=ready["url"]) as ctx:
            await run_sweep(ctx, 1, SweepParams(start_v=0, stop_v=1, step_v=0.5,  # warm-up
                                                spectrum_at_v=[]))
            sweeps, naive = [], []
            for _ in range(reps):
                t0 = time.perf_counter()
                out = await run_sweep(ctx, 1, params)
                sweeps.append((time.perf_counter() - t0, out.n_points))
                _, pixel = ctx.pixel(1)
                compliance_a = check_sweep_limits(ctx, pixel, params)
                link = ctx.link
                t0 = time.perf_counter()
                await link.request(MuxSelect(pixel=1))
                await link.request(SmuConfigure(mode=int(SmuMode.SOURCE_V), range_index=0xFF,
                                                compliance=compliance_a, integration_ms=integ))
                for v in prog:
                    await link.request(SmuOutput(enable=1, level=v))
                    await asyncio.sleep(dwell / 1000.0)
                    await link.request(SmuMeasure(), SmuReading)
                await link.request(SmuOutput(enable=0, level=0.0))
                await link.request(MuxSelect(pixel=0))
                naive.append(time.perf_counter() - t0)
            # the same sweep measuring the photodiode's dark current first (16 x 20 ms), as a
            # sweep does when the pixel has no dark reading younger than dark_max_age_s
            t0 = time.perf_counter()
            await run_sweep(ctx, 1, replace(params, dark_max_age_s=0.0))
            t_fresh = time.perf_counter() - t0
    t_sweep, n_pts = min(sweeps)
    ideal = n_pts * (dwell + integ) / 1000.0
    t_naive = min(naive)
    progress(f"(c) sweep {t_sweep:.3f} s for {n_pts} points (ideal {ideal:.3f} s); "
             f"naive loop {t_naive:.3f} s")
    return {"sweep_overhead_pct": 100.0 * (t_sweep / ideal - 1.0),
            "sweep_speedup_vs_per_point": t_naive / t_sweep,
            "detail_sweep": {"points": n_pts, "sweep_s": t_sweep, "dwell_plus_integration_s": ideal,
                             "naive_s": t_naive, "repeats": reps,
                             "dark_reading": "reused from the warm-up sweep (dark_max_age_s)",
                             "sweep_s_with_fresh_dark": t_fresh,
                             "overhead_pct_with_fresh_dark": 100.0 * (t_fresh / ideal - 1.0)}}


# -------------------------------------------------------------------------------------------
# (d) MQTT latency and (e) daemon CPU/RSS, one run
# -------------------------------------------------------------------------------------------


async def bench_daemon(tmp: Path, quick: bool, servers: Servers) -> dict[str, Any]:
    window = 4.0 if quick else 10.0
    interval_s = 0.1
    progress(f"(d,e) daemon: {DAEMON_CH} channels at {interval_s * 1e3:g} ms "
             f"({DAEMON_CH / interval_s:,.0f} samples/s) of a {DAEMON_BOARD_CH}-channel board, "
             f"speed 1, {window:g} s window ...")
    lat: list[float] = []
    sub_task = None
    stop_sub = asyncio.Event()
    layout = f"dbsa*{DAEMON_CH}"
    async with sim_child(tmp, "daemon", layout=layout, speed=1.0,
                         channels=DAEMON_BOARD_CH) as (sc, ready):
        offset = float(ready["epoch_offset_s"])
        in_window = asyncio.Event()
        if servers.mqtt_url:
            import aiomqtt

            host, port = servers.mqtt_url.removeprefix("mqtt://").rsplit(":", 1)
            subscribed = asyncio.Event()

            async def subscriber() -> None:
                async with aiomqtt.Client(host, int(port), identifier="bench-sub") as client:
                    await client.subscribe("ledstation/bench/pixel/+/aging", qos=1)
                    subscribed.set()
                    async for msg in client.messages:
                        now = time.time()
                        if not in_window.is_set():
                            continue
                        d = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                        lat.append(now - (offset + d["t_us"] / 1e6))
                        if stop_sub.is_set():
                            return

            sub_task = asyncio.create_task(subscriber())
            await asyncio.wait_for(subscribed.wait(), 10.0)
        st = Child("station", {"url": ready["url"], "store": str(tmp / "daemon.db"),
                               "extra": servers.sink_config(mqtt=True), "interval_s": interval_s,
                               "channels": DAEMON_CH,
                               "compliance_v": ready["aging_compliance_v"], "settle_s": 2.0,
                               "epoch_offset_s": offset,
                               "window_s": window}, tmp / "station.log")
        try:
            await st.line()  # window start
            in_window.set()
            res = await st.line(window + 60.0)
            stop_sub.set()
        finally:
            await st.close()
        sim_end = await sc.close()
        if sub_task is not None:
            sub_task.cancel()
            with contextlib.suppress(BaseException):
                await sub_task
    out: dict[str, Any] = {"cpu_pct_256ch_10hz": res["cpu_pct"], "rss_mb_256ch_10hz": res["rss_mb"],
                           "detail_daemon": {"samples_per_s": res["samples_per_s"],
                                             "channels": DAEMON_CH, "interval_s": interval_s,
                                             "board_channels": DAEMON_BOARD_CH,
                                             "sinks_rows_behind": res["sinks_behind"],
                                             "received_lag_ms_p50_p99": res["received_lag_ms_p50_p99"],
                                             "committed_lag_ms_p50_p99": res["committed_lag_ms_p50_p99"],
                                             "publishing_lag_ms_p50_p99": res["publishing_lag_ms_p50_p99"],
                                             "sim_clock_slipped_us": (sim_end or {}).get("slipped_us"),
                                             "mqtt_messages": len(lat)}}
    if lat:
        arr = np.array(lat) * 1e3
        out["mqtt_latency_p50_ms"] = float(np.percentile(arr, 50))
        out["mqtt_latency_p99_ms"] = float(np.percentile(arr, 99))
    else:
        out["mqtt_latency_p50_ms"] = out["mqtt_latency_p99_ms"] = None
    progress(f"(d,e) cpu {res['cpu_pct']:.1f} % of a core, rss {res['rss_mb']:.0f} MB, "
             f"{res['samples_per_s']:,.0f} samples/s; mqtt p50/p99 "
             f"{out['mqtt_latency_p50_ms']} / {out['mqtt_latency_p99_ms']} ms ({len(lat)} msgs)")
    return out


# -------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform()}


async def run_all(quick: bool) -> dict[str, Any]:
    res: dict[str, Any] = dict.fromkeys(KEYS)
    res["machine"] = machine()
    res["quick"] = quick
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    servers = Servers(tmp)
    errors: dict[str, str] = {}
    try:
        servers.start()
        for name, fn in (("stream", lambda: bench_stream(tmp, quick, servers)),
                         ("wire", lambda: bench_wire(tmp, quick)),
                         ("sweep", lambda: bench_sweep(tmp, quick)),
                         ("daemon", lambda: bench_daemon(tmp, quick, servers))):
            try:
                res.update(await fn())
            except Exception as e:  # report the others
                errors[name] = f"{type(e).__name__}: {e}"
                progress(f"{name} FAILED: {errors[name]}")
    finally:
        servers.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    res["notes"] = servers.notes
    if errors:
        res["errors"] = errors
    res["goals"] = {k: {"goal": f"{op} {v:g}", "met": None if res.get(k) is None else
                        (res[k] >= v if op == ">=" else res[k] <= v)}
                    for k, (op, v) in GOALS.items()}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (under a minute)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "OPTS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, opts = args.child[0], json.loads(args.child[1])
        asyncio.run(_sim_child(opts) if kind == "sim" else _station_child(opts))
        return 0
    t0 = time.perf_counter()
    res = asyncio.run(run_all(args.quick))
    progress(f"done in {time.perf_counter() - t0:.1f} s")
    if args.json:
        print(json.dumps(res))
        return 0 if "errors" not in res else 1
    for k in KEYS:
        v = res.get(k)
        goal = res["goals"].get(k)
        g = "" if goal is None else f"   goal {goal['goal']}: {'met' if goal['met'] else 'NOT met'}"
        print(f"{k:28} {'null' if v is None else f'{v:,.3f}':>14}{g}")
    for n in res["notes"]:
        print(f"note: {n}")
    for k, e in res.get("errors", {}).items():
        print(f"error in {k}: {e}")
    return 0 if "errors" not in res else 1


if __name__ == "__main__":
    sys.exit(main())
