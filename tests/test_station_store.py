"""The store: WAL, dedup on replay, batch commit, cursors survive a reopen."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from station.store import AGING_COLUMNS, Store


def row(seq: int, run_id: int | None = None) -> tuple:
    vals = {c: None for c in AGING_COLUMNS}
    vals.update(seq=seq, run_id=run_id, t_us=seq * 1_000_000, channel=0, pixel=1, flags=0,
                current_a=1e-3, voltage_v=3.0, photodiode_a=1e-6)
    return tuple(vals[c] for c in AGING_COLUMNS)


def test_replayed_rows_are_not_duplicated(tmp_path):
    st = Store(tmp_path / "s.db")
    st.add_rows("aging_samples", AGING_COLUMNS, [row(i) for i in range(100)])
    assert st.flush() == 100
    st.add_rows("aging_samples", AGING_COLUMNS, [row(i) for i in range(50, 150)])
    assert st.flush() == 50
    assert st.count("aging_samples") == 150
    mode = st.db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    st.close()


def test_unflushed_batch_is_lost_on_kill_but_committed_data_and_stream_state_survive(tmp_path):
    db = tmp_path / "s.db"
    code = f"""
import os
from station.store import Store, AGING_COLUMNS
from tests.test_station_store import row
st = Store({str(db)!r})
st.add_rows("aging_samples", AGING_COLUMNS, [row(i) for i in range(10)])
st.set_stream_next(0, 10)
st.flush()
st.add_rows("aging_samples", AGING_COLUMNS, [row(i) for i in range(10, 20)])
st.set_stream_next(0, 20)
os.kill(os.getpid(), 9)
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path.parent.parent), capture_output=True,
                       env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).parent.parent)})
    assert p.returncode == -9
    st = Store(db)
    assert st.count("aging_samples") == 10
    assert st.stream_next(0) == 10  # the host resumes (asks the board to replay) from here
    st.close()


def test_runs_round_trip_json(tmp_path):
    st = Store(tmp_path / "s.db")
    rid = st.create_run(kind="sweep", station="s1", pixel=3, area_m2=4e-6, params={"a": [1, 2]})
    st.finish_run(rid, "completed", "completed", {"von_v": 2.8})
    r = st.run(rid)
    assert r["params"] == {"a": [1, 2]} and r["summary"] == {"von_v": 2.8}
    assert r["status"] == "completed" and r["ended_at"] >= r["started_at"]
    st.close()
    # the file is a plain SQLite database anyone can read
    con = sqlite3.connect(tmp_path / "s.db")
    assert con.execute("SELECT pixel FROM runs").fetchone() == (3,)


def test_a_store_written_by_the_previous_release_opens_and_upgrades(tmp_path):
    """tests/data/store-v1.db was written by the release before board epochs (schema 1): a
    run, five aging samples, the AGING stream's next seq. It opens, upgrades to the current
    schema in place, keeps every row, and takes new rows with the new columns."""
    import shutil

    from station.store import SCHEMA_VERSION

    path = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "data" / "store-v1.db", path)
    assert sqlite3.connect(str(path)).execute("PRAGMA user_version").fetchone()[0] == 1
    st = Store(path)
    assert st.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    d = st.fetch("aging_samples", 1)
    assert d["seq"].tolist() == [100, 101, 102, 103, 104]
    assert d["luminance_cd_m2"].tolist() == [200.0, 199.0, 198.0, 197.0, 196.0]
    assert d["epoch"].tolist() == [0] * 5 and d["rev"].tolist() == [0] * 5
    assert st.stream_next(0) == 105 and st.stream_base(0) == 0
    assert st.records_lost() == []
    st.add_rows("aging_samples", AGING_COLUMNS, [row(105, 1)])
    st.set_stream_next(0, 106, base=0)
    assert st.flush() == 1
    assert st.revise("aging_samples", 1, [100], {"l_rel": [0.5]}) == 1
    assert st.fetch("aging_samples", 1)["rev"].tolist()[:5] == [1, 0, 0, 0, 0]
    st.close()
    # and a second open finds nothing to do
    st = Store(path)
    assert st.count("aging_samples") == 6
    st.close()


def test_a_store_from_a_newer_release_is_refused_with_a_clear_error(tmp_path):
    import pytest

    from station.store import StoreError

    path = tmp_path / "new.db"
    Store(path).close()
    con = sqlite3.connect(str(path))
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(StoreError, match="newer than this release"):
        Store(path)


def test_a_store_written_by_todays_release_opens_with_every_table_and_row(tmp_path):
    """tests/data/store-v2.db was written by the release before the store package (schema 2,
    commit b7a9d88): runs, aging samples, sweep points, a spectrum, a loss, a job, an event, a
    sink cursor, a time anchor and a published run. It opens with this release, keeps every
    row, and its jobs, events and sink state read as before."""
    import shutil

    from station.store import SCHEMA_VERSION, JobTable
    from station.store.sinks import SinkDB

    path = tmp_path / "v2.db"
    shutil.copy(Path(__file__).parent / "data" / "store-v2.db", path)
    st = Store(path)
    assert st.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert [r["kind"] for r in st.runs()] == ["aging", "sweep"]
    assert st.fetch("aging_samples", 1)["seq"].tolist() == [10, 11, 12, 13, 14]
    assert st.fetch("sweep_points", 2)["direction"].tolist() == ["fwd"] * 3
    (spec,) = st.spectra_of(2)
    assert spec["counts"].tolist() == list(range(8)) and spec["probe"] is False
    assert st.stream_next(0) == 15
    assert [(x["from_seq"], x["to_seq"], x["count"]) for x in st.records_lost()] == [(5, 9, 5)]
    assert st.last_turn_on_v(3) == 2.5 and st.last_turn_on_v(2) is None
    jobs = JobTable(st.db)
    assert jobs.ids_in_states(("running",)) == ["j1"] and jobs.runs_of("j1")[0]["pixel"] == 2
    assert jobs.row("j1")["progress"] == {"step": 0, "done": []}
    st.close()
    db = SinkDB(path)
    assert db.cursor("mqtt", "aging_samples") == 3
    assert db.backlog("mqtt", "events")["rows_behind"] == 1
    assert db.records_lost() == {"aging": 5}
    assert [r["id"] for r in db.completed_runs_to_publish("mqtt")] == [2]  # digest "abc" is stale
    db.close()


def test_a_new_store_has_every_table_of_the_schema(tmp_path):
    """The store creates every table (the jobs' and the sinks' too): one schema, one place."""
    st = Store(tmp_path / "s.db")
    names = {r[0] for r in st.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"meta", "runs", "sweep_points", "aging_samples", "spectra", "stream_state",
            "records_lost", "jobs", "sink_cursors", "events", "sink_delivered_runs",
            "sink_time_anchors"} <= names
    st.close()


def test_last_turn_on_v_is_the_latest_completed_sweeps(tmp_path):
    st = Store(tmp_path / "s.db")
    for von, status in ((2.4, "completed"), (2.6, "completed"), (9.9, "failed")):
        rid = st.create_run(kind="sweep", station="s1", pixel=1, area_m2=4e-6)
        st.finish_run(rid, status, status, {"von_v": von})
    rid = st.create_run(kind="sweep", station="s1", pixel=2, area_m2=4e-6)
    st.finish_run(rid, "completed", "completed", {"von_v": float("nan")})
    assert st.last_turn_on_v(1) == 2.6
    assert st.last_turn_on_v(2) is None and st.last_turn_on_v(3) is None
    st.close()
