"""Tests of braggtrack.metadata: reading per-frame metadata, cycler interpolation, joins, branches."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from braggtrack.errors import InputFileError, OptionError
from braggtrack.metadata import (
    FrameMetaWarning,
    branches,
    interpolate_cycler,
    join_frame_meta,
    load_frame_meta,
)


def test_csv_and_parquet(tmp_path):
    meta = pd.DataFrame({"frame": [2, 0, 1], "time_s": [20.0, 0.0, 10.0], "T_K": [300, 301, 302]})
    meta.to_csv(tmp_path / "m.csv", index=False)
    meta.to_parquet(tmp_path / "m.parquet")
    for name in ("m.csv", "m.parquet"):
        out = load_frame_meta(tmp_path / name, n_frames=3)
        assert out["frame"].tolist() == [0, 1, 2]
        assert out["time_s"].tolist() == [0.0, 10.0, 20.0]
        assert not out["meta_filled"].any()


def test_missing_and_extra_frames_warn_and_fill(tmp_path):
    meta = pd.DataFrame({"frame": [0, 1, 4, 9], "time_s": [0.0, 10.0, 40.0, 90.0],
                         "cycle": [1, 1, 2, 2]})
    meta.to_csv(tmp_path / "m.csv", index=False)
    with pytest.warns(FrameMetaWarning) as record:
        out = load_frame_meta(tmp_path / "m.csv", n_frames=6)
    messages = " ".join(str(w.message) for w in record)
    assert "dropped" in messages and "3 of 6 frames" in messages
    assert out["frame"].tolist() == list(range(6))
    np.testing.assert_allclose(out["time_s"], [0, 10, 20, 30, 40, 40])  # held past the end
    assert out["meta_filled"].tolist() == [False, False, True, True, False, True]
    assert out["cycle"].tolist() == [1, 1, 1, 2, 2, 2]  # nearest frame, not interpolated
    assert not out.isna().any().any()


def test_frame_count_mismatch_without_frame_column(tmp_path):
    pd.DataFrame({"time_s": [0.0, 1.0]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(InputFileError, match="2 metadata rows for 3 frames"):
        load_frame_meta(tmp_path / "m.csv", n_frames=3)


def test_bad_files(tmp_path):
    with pytest.raises(InputFileError, match="no such"):
        load_frame_meta(tmp_path / "nope.csv")
    (tmp_path / "m.txt").write_text("a,b\n")
    with pytest.raises(InputFileError, match="unknown metadata format"):
        load_frame_meta(tmp_path / "m.txt")
    pd.DataFrame({"frame": [0, 0], "t": [1.0, 2.0]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(InputFileError, match="duplicate"):
        load_frame_meta(tmp_path / "d.csv")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(InputFileError):
        load_frame_meta(tmp_path / "bad.h5")


def test_nexus_frame_meta_table(tmp_path):
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("entry/frame_meta")
        g.create_dataset("frame", data=np.arange(4))
        g.create_dataset("time_s", data=np.arange(4) * 5.0)
        g.create_dataset("branch", data=np.array([b"charge"] * 4))
    out = load_frame_meta(path, n_frames=4)
    assert out["time_s"].tolist() == [0.0, 5.0, 10.0, 15.0]
    assert out["branch"].tolist() == ["charge"] * 4


def test_nexus_per_frame_datasets(tmp_path):
    path = tmp_path / "s.nxs"
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data/data", data=np.zeros((5, 4, 4), dtype=np.uint16))
        f.create_dataset("entry/time_stamp", data=np.arange(5) * 2.0)
        f.create_dataset("entry/sample/temperature", data=np.linspace(300, 310, 5))
        f.create_dataset("entry/other", data=np.arange(7))  # not one value per frame
        f.create_dataset("entry/truth/x", data=np.arange(5.0))  # truth is not metadata
    out = load_frame_meta(path)
    assert set(out.columns) == {"frame", "time_stamp", "temperature"}
    assert out["temperature"].tolist()[-1] == 310.0
    with pytest.raises(InputFileError, match="no per-frame datasets"):
        load_frame_meta(path, n_frames=11)


def test_simulator_file_if_available(tmp_path):
    simulate = pytest.importorskip("braggtrack.simulate")
    if not all(hasattr(simulate, n) for n in ("simulate_operando", "write_series")):
        pytest.skip("simulator has no operando series yet")
    run = simulate.simulate_operando(frames=4, shape=(256, 256), peaks=3, seed=0)
    path = tmp_path / "op.h5"
    simulate.write_series(path, run.frames, run.truth, metadata=run.frame_meta)
    out = load_frame_meta(path, n_frames=4)
    np.testing.assert_allclose(out["time_s"], run.frame_meta["time_s"])
    assert (out["branch"] == run.frame_meta["branch"]).all()


def test_interpolate_cycler_by_hand():
    # current ramps from 2 mA to -2 mA over 2 h: I(t) = 2 - t / 1800 (mA, t in s), so the charge
    # passed is (2 t - t^2 / 3600) / 3600 mAh (the trapezoid rule is exact for a ramp)
    t = np.arange(0, 7201, 60.0)
    log = pd.DataFrame({"time_s": t, "voltage_V": 3.0 + t / 7200, "current_mA": 2 - t / 1800})
    out = interpolate_cycler(log, [900.0, 3600.0, 5400.0])
    np.testing.assert_allclose(out["voltage_V"], [3.125, 3.5, 3.75])
    np.testing.assert_allclose(out["current_mA"], [1.5, 0.0, -1.0], atol=1e-12)
    np.testing.assert_allclose(out["capacity_mAh"], [0.4375, 1.0, 0.75], atol=1e-9)
    assert not out["cycler_outside"].any()


def test_interpolate_cycler_outside_and_frame_table():
    log = pd.DataFrame({"time_s": [10.0, 20.0], "voltage_V": [3.0, 4.0],
                        "capacity_mAh": [0.0, 1.0], "branch": ["charge", "discharge"]})
    frames = pd.DataFrame({"frame": [5, 6, 7], "time_s": [0.0, 15.0, 30.0]})
    with pytest.warns(FrameMetaWarning, match="2 of 3"):
        out = interpolate_cycler(log, frames)
    assert out["frame"].tolist() == [5, 6, 7]
    assert out["voltage_V"].tolist() == [3.0, 3.5, 4.0]
    assert out["cycler_outside"].tolist() == [True, False, True]
    assert out["branch"].tolist() == ["charge", "charge", "discharge"]
    assert not out.isna().any().any()
    with pytest.raises(OptionError):
        interpolate_cycler(log, [100.0], outside="error")
    with pytest.raises(OptionError):
        interpolate_cycler(log.iloc[:1], [10.0])
    # No frame within the log at all: another clock, not an experiment that ran on
    with pytest.raises(OptionError, match="every frame; are the log and the frames on the same"):
        interpolate_cycler(log, [3600.0, 7200.0], source="cycler.csv")
    with pytest.warns(FrameMetaWarning, match="2 of 2"):  # a live run before the log starts
        held = interpolate_cycler(log, [0.0, 5.0], outside="hold")
    assert held["cycler_outside"].all() and held["voltage_V"].tolist() == [3.0, 3.0]


def test_interpolate_cycler_says_it_dropped_repeated_times(logged):
    log = pd.DataFrame({"time_s": [0.0, 10.0, 10.0, 20.0], "voltage_V": [3.0, 3.5, 9.9, 4.0]})
    out = interpolate_cycler(log, [10.0], source="cycler.csv")
    assert float(out["voltage_V"][0]) == 3.5
    assert "cycler.csv: 1 row(s) repeat an earlier row's time_s; the first of each kept" in logged


def test_join_frame_meta():
    peaks = pd.DataFrame({"frame": [0, 2, 2, 3], "x": [1.0, 2.0, 3.0, 4.0],
                          "time_s": [9.0, 9.0, 9.0, 9.0]})
    meta = pd.DataFrame({"frame": [0, 1, 2], "time_s": [0.0, 10.0, 20.0],
                         "voltage_V": [3.0, 3.1, 3.2]})
    with pytest.warns(FrameMetaWarning):
        out = join_frame_meta(peaks, meta)
    assert len(out) == len(peaks) and out["x"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert out["time_s"].tolist() == [9.0] * 4  # the table's own column is kept
    assert out["time_s_meta"].tolist() == [0.0, 20.0, 20.0, 20.0]
    assert out["voltage_V"].tolist() == [3.0, 3.2, 3.2, 3.2]
    assert out["meta_filled"].tolist() == [False, False, False, True]
    assert not out.isna().any().any()


def test_branches_from_current_and_cycles():
    current = [0, 1, 1, 0, -1, -1, 0, 1, 1, -1]
    b = branches(pd.DataFrame({"current_mA": np.array(current, dtype=float)}))
    assert b["branch"].tolist() == ["rest", "charge", "charge", "rest", "discharge",
                                    "discharge", "rest", "charge", "charge", "discharge"]
    assert b["cycle"].tolist() == [1, 1, 1, 1, 1, 1, 1, 2, 2, 2]


def test_branches_from_voltage_slope():
    t = np.arange(200.0)
    rng = np.random.default_rng(0)
    v = 4.0 - 0.5 * np.abs(((t / 50) % 2) - 1)  # rises 0..50, falls 50..100, ...
    v = v + rng.normal(0, 1e-4, t.size)
    b = branches(pd.DataFrame({"time_s": t, "voltage_V": v}))
    expected = np.where(((t // 50) % 2) == 0, "charge", "discharge")
    agree = (b["branch"].to_numpy() == expected)
    # the turning points themselves are ambiguous
    assert agree.mean() > 0.95
    assert b["cycle"].max() == 2


def test_branches_against_simulator_if_available():
    simulate = pytest.importorskip("braggtrack.simulate")
    if not hasattr(simulate, "simulate_operando"):
        pytest.skip("no simulate_operando")
    run = simulate.simulate_operando(frames=4, shape=(256, 256), peaks=3, seed=0, cycles=2,
                                     rest_s=600.0)
    log = run.cycler_log
    b = branches(log)
    assert (b["branch"].to_numpy() == log["branch"].to_numpy()).mean() > 0.99
    assert (b["cycle"].to_numpy() == log["cycle"].to_numpy()).mean() > 0.99


# -------------------------------------------------------------------- review 6 defects
def charge_discharge_log(path, blank=None, text=None):
    """Cycler CSV: 2 mA for t <= 600 s, then -2 mA, every 10 s to 1200 s; voltage 3 + t/4800.

    ``blank``: a time whose current cell is left empty; ``text``: one whose voltage is "--"."""
    t = np.arange(0, 1201, 10.0)
    lines = ["time_s,voltage_V,current_mA"]
    for ti in t:
        cur = "" if ti == blank else f"{2.0 if ti <= 600 else -2.0}"
        volt = "--" if ti == text else f"{3 + ti / 4800}"
        lines.append(f"{ti},{volt},{cur}")
    path.write_text("\n".join(lines) + "\n")
    return path


def expected_capacity(t):
    # by hand: 2 mA for 600 s is 1/3 mAh; the trapezoid from 600 to 610 s (2 -> -2 mA) adds 0;
    # then -2 mA
    t = np.asarray(t, float)
    return np.where(t <= 600, 2 * t, 1200 - 2 * (t - 610)) / 3600


def test_blank_current_cell_is_interpolated_over(tmp_path, logged):
    from braggtrack.tables import read_table

    frames = pd.DataFrame({"frame": [0, 1, 2, 3], "time_s": [100.0, 300.0, 640.0, 1000.0]})
    good = interpolate_cycler(read_table(charge_discharge_log(tmp_path / "good.csv")), frames)
    np.testing.assert_allclose(good["capacity_mAh"], expected_capacity(frames["time_s"]))
    path = charge_discharge_log(tmp_path / "log.csv", blank=50.0)
    out = interpolate_cycler(read_table(path), frames, source=path)
    # one blank current cell used to make every later capacity NaN, then held
    np.testing.assert_allclose(out["capacity_mAh"], expected_capacity(frames["time_s"]))
    np.testing.assert_allclose(out["current_mA"], [2.0, 2.0, -2.0, -2.0])
    assert not out.isna().any().any()
    [message] = logged
    assert str(path) in message and "current_mA: 1 row" in message


def test_text_cell_in_voltage_keeps_the_column_numeric(tmp_path, logged):
    from braggtrack.tables import read_table

    path = charge_discharge_log(tmp_path / "log.csv", text=300.0)
    frames = pd.DataFrame({"frame": [0, 1, 2], "time_s": [100.0, 300.0, 305.0]})
    out = interpolate_cycler(read_table(path), frames, source=path)
    assert out["voltage_V"].dtype == np.float64
    # the row at 300 s is left out and interpolated over: voltage is linear in time anyway
    np.testing.assert_allclose(out["voltage_V"], 3 + frames["time_s"] / 4800)
    [message] = logged
    assert "voltage_V: 1 row" in message and str(path) in message


def test_cycler_labels_with_a_blank_cell_take_the_previous_label():
    log = pd.DataFrame({"time_s": [0.0, 10.0, 20.0, 30.0],
                        "step": ["CC", None, "rest", "rest"], "voltage_V": [3.0, 3.1, 3.2, 3.3]})
    out = interpolate_cycler(log, [5.0, 15.0, 25.0])
    assert out["step"].tolist() == ["CC", "CC", "rest"]


def test_frame_meta_blank_cell_is_filled_and_flagged(tmp_path, logged):
    path = tmp_path / "fm.csv"
    path.write_text("frame,time_s,temp_C,note\n0,100,25,a\n1,160,26,\n2,220,,b\n3,280,28,b\n")
    meta = load_frame_meta(path, n_frames=4)
    assert meta["temp_C"].tolist() == [25.0, 26.0, 27.0, 28.0]  # (26 + 28) / 2
    assert meta["note"].tolist() == ["a", "a", "b", "b"]  # nearest frame; ties to the left
    assert meta["meta_filled"].tolist() == [False, True, True, False]
    assert not meta.isna().any().any()
    assert len(logged) == 2  # one line per column
    assert any("temp_C: 1 row" in m and str(path) in m for m in logged)
    # the same through join_frame_meta, for a table handed over in Python
    joined = join_frame_meta(pd.DataFrame({"frame": [0, 2]}),
                             pd.DataFrame({"frame": [0, 1, 2], "T": [1.0, np.nan, np.nan]}))
    assert joined["T"].tolist() == [1.0, 1.0] and joined["meta_filled"].tolist() == [False, True]


def test_frame_times_finite_and_increasing_name_the_file(tmp_path):
    path = tmp_path / "fm.csv"
    pd.DataFrame({"frame": range(4), "time_s": [300.0, 200.0, 100.0, 0.0]}).to_csv(
        path, index=False)
    with pytest.raises(InputFileError, match=r"fm.csv: frame times \(time_s\) decrease"):
        load_frame_meta(path, n_frames=4)
    pd.DataFrame({"frame": range(4), "time_s": [0.0, 1.0, 2.0, 3.0]}).to_csv(path, index=False)
    meta = load_frame_meta(path, n_frames=4)
    meta.loc[2, "time_s"] = np.nan  # e.g. edited after loading
    log = pd.DataFrame({"time_s": [0.0, 10.0], "voltage_V": [3.0, 4.0]})
    with pytest.raises(OptionError, match=r"fm.csv: frame times \(time_s\) must be finite"):
        interpolate_cycler(log, meta[["frame", "time_s"]])
    with pytest.raises(OptionError, match="decrease"):
        interpolate_cycler(log, [5.0, 4.0])
    with pytest.raises(OptionError, match="c.csv: the cycler log has no 'time_s'"):
        interpolate_cycler(log.rename(columns={"time_s": "Time"}), [1.0], source="c.csv")


def test_frame_meta_from_a_european_spreadsheet(tmp_path):
    # ";" between cells and "," as the decimal mark: read as one text column before
    p = tmp_path / "meta.csv"
    p.write_text("frame;voltage_V;step\n0;3,5;CC,CV\n1;3,75;CC,CV\n2;4;rest\n")
    meta = load_frame_meta(p, n_frames=3)
    assert meta["voltage_V"].tolist() == [3.5, 3.75, 4.0]
    assert meta["step"].tolist() == ["CC,CV", "CC,CV", "rest"]
