"""The run folder: outputs, resumption after SIGKILL, refusal to overwrite, workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from braggtrack.config import FindConfig
from braggtrack.errors import OptionError
from braggtrack.runner import TrackConfig, run

FAST = FindConfig(localizer="gauss")
NOREPORT = TrackConfig(report=False)


def _tables(run_dir):
    return {n: pd.read_parquet(run_dir / f"{n}.parquet") for n in ("peaks", "tracks", "particles")}


def test_run_writes_tables_and_run_json(drifting_series, tmp_path):
    path, truth = drifting_series
    res = run(path, tmp_path / "r", config=FAST, track=NOREPORT, chunk_size=5, progress=False)
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["counts"]["frames"] == 12 and info["counts"]["frames_skipped"] == 0
    assert info["inputs"][0]["xxh3_128"] and info["inputs"][0]["size"] > 0
    assert [c["start"] for c in info["chunks"]] == [0, 5, 10]
    assert info["parameters"]["localizer"] == "gauss" and info["finished"]
    assert res.particles.shape[0] == 6
    assert (res.tracks.groupby("particle").size() == 12).all()
    assert "radial_shift" in res.tracks


def test_chunks_linked_during_the_run_equal_linking_at_the_end(drifting_series, tmp_path,
                                                               monkeypatch):
    import braggtrack.track as trk
    from braggtrack.runner import link_and_measure

    path, _ = drifting_series
    with monkeypatch.context() as m:
        # The run links chunk by chunk (FrameLinker); the one-shot link() must not be needed.
        m.setattr(trk, "link", lambda *a, **k: pytest.fail("run() linked at the end"))
        res = run(path, tmp_path / "r", config=FAST, track=NOREPORT, chunk_size=4,
                  progress=False)
    tracks, particles, _ = link_and_measure(res.peaks, NOREPORT, (64, 64))
    pd.testing.assert_frame_equal(res.tracks, tracks)
    pd.testing.assert_frame_equal(res.particles, particles)


def test_existing_run_is_never_overwritten_without_force(drifting_series, tmp_path):
    path, _ = drifting_series
    out = tmp_path / "r"
    run(path, out, config=FAST, track=NOREPORT, progress=False)
    with pytest.raises(OptionError, match="--force"):
        run(path, out, config=FAST.replace(patch=9), track=NOREPORT, progress=False)
    res = run(path, out, config=FAST.replace(patch=9), track=NOREPORT, progress=False, force=True)
    assert res.info["parameters"]["patch"] == 9


def test_output_may_not_be_or_contain_the_input(drifting_series):
    path, _ = drifting_series
    with pytest.raises(OptionError, match="may not be the input"):
        run(path, path.parent, config=FAST, track=NOREPORT, progress=False, force=True)
    assert path.exists()


def _cli(*args):
    return [sys.executable, "-m", "braggtrack.cli", *map(str, args)]


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_gives_identical_tables(drifting_series, tmp_path):
    path, _ = drifting_series
    args = ["run", path, "--localizer", "gauss", "--chunk-size", "1", "--no-report", "--quiet",
            "--workers", "1"]
    ref = tmp_path / "ref"
    subprocess.run(_cli(*args, "-o", ref), check=True, capture_output=True)
    out = tmp_path / "killed"
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(_cli(*args, "-o", out), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(1.5, 4.0)))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    final = subprocess.run(_cli(*args, "-o", out), capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert kills >= 1
    a, b = _tables(ref), _tables(out)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])


@pytest.mark.slow
def test_two_dask_workers_give_the_serial_result(drifting_series, tmp_path):
    path, _ = drifting_series
    serial = run(path, tmp_path / "s", config=FAST, track=NOREPORT, chunk_size=3, progress=False)
    par = run(path, tmp_path / "p", config=FAST, track=NOREPORT, chunk_size=3, workers=2,
              progress=False)
    for name in ("peaks", "tracks", "particles"):
        pd.testing.assert_frame_equal(getattr(serial, name), getattr(par, name))


def test_tables_also_written_as_csv_and_h5(drifting_series, tmp_path):
    from braggtrack.tables import read_table

    path, _ = drifting_series
    res = run(path, tmp_path / "r", config=FAST, track=TrackConfig(report=False,
              formats=("csv", "h5")), progress=False)
    for name in ("peaks", "tracks", "particles"):
        for fmt in ("csv", "h5"):
            other = read_table(tmp_path / "r" / f"{name}.{fmt}")
            assert len(other) == len(getattr(res, name))
            assert list(other.columns) == list(getattr(res, name).columns)
    with pytest.raises(OptionError, match="--format"):
        TrackConfig(formats=("xlsx",))


def test_float_frames_with_dead_rows_run_through_to_the_report(drifting_series, tmp_path):
    # A float detector marks gaps and dead rows NaN: they are masked in the find stage and
    # drawn in the lowest colour in the report and movie, never a crash.
    import h5py

    path, _ = drifting_series
    with h5py.File(path) as h:
        frames = h["/entry/data/data"][()].astype(np.float32)
    frames[:, 40, :] = np.nan
    frames[:, :, 5] = np.inf
    nan_path = tmp_path / "nan.h5"
    with h5py.File(nan_path, "w") as h:
        h["frames"] = frames
    res = run(nan_path, tmp_path / "r", config=FAST, track=TrackConfig(), progress=False)
    assert (res.run_dir / "report" / "index.html").exists()
    assert res.particles.shape[0] == 6
    assert np.isfinite(res.peaks.loc[res.peaks.ok, ["x", "y"]].to_numpy()).all()
