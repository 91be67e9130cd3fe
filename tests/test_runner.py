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
from braggtrack.errors import InputFileError, OptionError
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


def _reference_cli_run(path, tmp_path):
    """The CLI arguments of a one-frame-chunk serial run, and its undisturbed run folder (what
    an interrupted run of the same arguments must reproduce)."""
    args = ["run", path, "--localizer", "gauss", "--chunk-size", "1", "--no-report", "--quiet",
            "--workers", "1"]
    ref = tmp_path / "ref"
    subprocess.run(_cli(*args, "-o", ref), check=True, capture_output=True)
    return args, ref


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_gives_identical_tables(drifting_series, tmp_path):
    path, _ = drifting_series
    args, ref = _reference_cli_run(path, tmp_path)
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
def test_two_dask_workers_give_the_serial_result(drifting_series, tmp_path, monkeypatch):
    import functools

    import braggtrack.track as trk

    path, _ = drifting_series
    # One segment per chunk (a real run makes them >= 30 frames) and memory 1, a 6-frame
    # warm-up: the last of the 4 segments is joined at a real seam (the others reach back to
    # frame 0).
    monkeypatch.setattr(trk, "plan_segments", functools.partial(trk.plan_segments, min_length=1))
    track = TrackConfig(report=False, memory=1)
    serial = run(path, tmp_path / "s", config=FAST, track=track, chunk_size=3, progress=False)
    par = run(path, tmp_path / "p", config=FAST, track=track, chunk_size=3, workers=2,
              progress=False)
    for name in ("peaks", "tracks", "particles"):
        pd.testing.assert_frame_equal(getattr(serial, name), getattr(par, name))
    # The workers linked every segment; the driver only joined them.
    assert par.info["linking"] == {"segments": 4, "linked_on_workers": 4, "seams_relinked": 0}
    # The input checksum, computed on a worker, is the one the serial run computed here.
    assert par.info["inputs"][0]["xxh3_128"] == serial.info["inputs"][0]["xxh3_128"]
    assert "linking" not in serial.info


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


# ----------------------------------------------------------------------------- input identity


def _interrupt_after(monkeypatch, n_chunks):
    """Make the run stop (as on Ctrl-C) while localizing chunk ``n_chunks`` + 1."""
    import braggtrack.runner as runner

    real = runner._localize_task
    calls = {"n": 0}

    def localize(task, detected):
        calls["n"] += 1
        if calls["n"] > n_chunks:
            raise KeyboardInterrupt
        return real(task, detected)

    monkeypatch.setattr(runner, "_localize_task", localize)


def _replace_input(path, seed=11):
    """Another series of the same shape (and file size) at the same path, with a later
    mtime (set explicitly: a file rewritten within the clock's resolution keeps its mtime).
    Written beside it and renamed over it, as copying tools do (and HDF5 refuses to open a
    file for writing that this process still reads)."""
    import shutil

    import h5py

    before = path.stat()
    tmp = path.with_name("replacement.h5")
    shutil.copyfile(path, tmp)
    rng = np.random.default_rng(seed)
    with h5py.File(tmp, "r+") as h:
        data = h["/entry/data/data"]
        data[...] = rng.poisson(30.0, data.shape).astype(data.dtype)
    os.replace(tmp, path)
    assert path.stat().st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 2_000_000_000))
    return before


def test_interrupted_run_resumes_to_the_uninterrupted_tables(drifting_series, tmp_path,
                                                            monkeypatch):
    path, _ = drifting_series
    ref = run(path, tmp_path / "ref", config=FAST, track=NOREPORT, chunk_size=2, progress=False)
    out = tmp_path / "r"
    with monkeypatch.context() as m:
        _interrupt_after(m, 3)
        with pytest.raises(KeyboardInterrupt):
            run(path, out, config=FAST, track=NOREPORT, chunk_size=2, progress=False)
    info = json.loads((out / "run.json").read_text())
    assert 1 <= len(info["chunks"]) <= 3 and info["finished"] is None
    # size and mtime are in run.json from the start, before the checksum is done
    st = path.stat()
    assert info["inputs"] == [{"path": str(path.resolve()), "size": st.st_size,
                               "mtime_ns": st.st_mtime_ns}]
    res = run(path, out, config=FAST, track=NOREPORT, chunk_size=2, progress=False)
    assert res.info["resumed"] and res.info["inputs"][0]["xxh3_128"]
    assert res.info["inputs"][0]["mtime_ns"] == st.st_mtime_ns
    for name in ("peaks", "tracks", "particles", "frames"):
        pd.testing.assert_frame_equal(getattr(ref, name), getattr(res, name))


def test_resume_refuses_an_input_replaced_after_some_chunks(drifting_series, tmp_path,
                                                            monkeypatch):
    path, _ = drifting_series
    out = tmp_path / "r"
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            run(path, out, config=FAST, track=NOREPORT, chunk_size=2, progress=False)
    kept = sorted((out / "chunks").iterdir())
    _replace_input(path)
    with pytest.raises(OptionError, match=r"series\.h5 changed since this run started "
                       r"\(size/modification time differ\); use --force to start again"):
        run(path, out, config=FAST, track=NOREPORT, chunk_size=2, progress=False)
    assert sorted((out / "chunks").iterdir()) == kept  # refused: nothing touched
    res = run(path, out, config=FAST, track=NOREPORT, chunk_size=2, progress=False, force=True)
    assert not res.info["resumed"]


def test_rerun_of_a_finished_run_refuses_a_replaced_input(drifting_series, tmp_path):
    path, _ = drifting_series
    out = tmp_path / "r"
    run(path, out, config=FAST, track=NOREPORT, chunk_size=4, progress=False)
    # unchanged: the rerun is accepted and keeps the recorded checksum
    again = run(path, out, config=FAST, track=NOREPORT, chunk_size=4, progress=False)
    assert again.info["resumed"]
    _replace_input(path)
    with pytest.raises(OptionError, match="changed since this run started"):
        run(path, out, config=FAST, track=NOREPORT, chunk_size=4, progress=False)


def test_run_recorded_without_mtime_compares_the_checksum(drifting_series, tmp_path):
    # A run.json written before size and mtime were recorded at the start has the size and
    # checksum only: a same-size replacement is caught by the checksum at the end.
    path, _ = drifting_series
    out = tmp_path / "r"
    run(path, out, config=FAST, track=NOREPORT, chunk_size=4, progress=False)
    info = json.loads((out / "run.json").read_text())
    for rec in info["inputs"]:
        del rec["mtime_ns"]
    (out / "run.json").write_text(json.dumps(info))
    _replace_input(path)
    with pytest.raises(OptionError, match="changed since this run started .checksum differs"):
        run(path, out, config=FAST, track=NOREPORT, chunk_size=4, progress=False)


def test_input_changed_during_the_run_is_refused_at_the_end(drifting_series, tmp_path,
                                                           monkeypatch):
    from braggtrack.runner import _RunState

    path, _ = drifting_series
    real = _RunState.record

    def record(self, result, bar=None):
        # Between two chunks, on the thread that reads the frames: a replacement by another
        # program, seen by the chunks after it.
        if result["start"] == 0:
            _replace_input(path)
        return real(self, result, bar)

    monkeypatch.setattr(_RunState, "record", record)
    with pytest.raises(OptionError, match="changed since this run started"):
        run(path, tmp_path / "r", config=FAST, track=NOREPORT, chunk_size=4, progress=False)


# ----------------------------------------------------------------------------- options up front


def _no_frame_work(monkeypatch):
    import braggtrack.runner as runner

    monkeypatch.setattr(runner, "_detect_task",
                        lambda *a, **k: pytest.fail("frames were processed"))


@pytest.mark.parametrize("options, needle", [
    (dict(search_range=float("nan")), "--search-range"),
    (dict(distance_mm=100.0, beam_x=30.0, beam_y=30.0, pixel_um=-75.0), "--pixel must be"),
    (dict(distance_mm=0.0, beam_x=30.0, beam_y=30.0, pixel_um=75.0), "--distance must be"),
    (dict(distance_mm=100.0, beam_x=30.0, beam_y=30.0, pixel_um=75.0,
          wavelength_A=float("inf")), "--wavelength must be"),
    (dict(beam_x=float("nan")), "--beam-x must be"),
    (dict(distance_mm=100.0, beam_x=30.0, beam_y=30.0, pixel_um=75.0, wavelength_A=1.0,
          d_ref=-1.0), "--d-ref must be"),
    (dict(distance_mm=100.0, beam_x=30.0, beam_y=30.0, pixel_um=75.0, wavelength_A=1.0,
          hkl=(0, 0, 0)), "--hkl 0 0 0"),
    (dict(distance_mm=100.0, beam_x=30.0, beam_y=30.0, pixel_um=75.0, wavelength_A=1.0,
          hkl=(1, 1, 1), crystal_system="cubik"), "--system must be one of"),
    (dict(distance_mm=100.0, beam_x=30.0, beam_y=30.0, pixel_um=75.0, wavelength_A=1.0,
          hkl=(1, 1, 1), crystal_system="hexagonal", c_over_a=0.0), "--c-over-a must be"),
    (dict(distance_mm=100.0, beam_x=30.0, beam_y=30.0, pixel_um=75.0, wavelength_A=1.0,
          hkl=(1, 1, 1), c_over_a=1.6), "--c-over-a applies to"),
    (dict(reference_frame=-1), "--reference-frame"),
    (dict(wavelength_A=1.0), "--wavelength needs a detector geometry"),
    (dict(hkl=(1, 1, 1), d_ref=2.0), "--d-ref, --hkl need a detector geometry"),
    (dict(poni="x.poni", distance_mm=100.0), "--poni holds the geometry"),
])
def test_bad_track_values_are_one_line_option_errors(options, needle):
    with pytest.raises(OptionError, match=re_escape(needle)):
        TrackConfig(**options)


def re_escape(text):
    import re

    return re.escape(text)


def _poni(tmp_path, wavelength_A=1.0):
    from braggtrack.geometry import Geometry

    g = Geometry.simple(100.0, 31.5, 31.5, 75.0, wavelength_A=wavelength_A)
    return str(g.to_poni(tmp_path / "det.poni"))


@pytest.mark.parametrize("case, needle", [
    ("missing_poni", "no such PONI file"),
    ("no_beam_y", "missing --beam-y"),
    ("d_ref_no_wavelength", "--d-ref needs d-spacings"),
    ("hkl_poni_no_wavelength", "(the PONI file has none)"),
    ("tetragonal_l_without_c_over_a", "--hkl 1 0 1 --system tetragonal"),
    ("missing_meta", "no such metadata file"),
    ("short_meta", "5 metadata rows for 12 frames"),
    ("cycler_without_time", "no time_s column"),
    ("cycler_without_columns", "log.csv: branches needs"),
    ("reference_frame_beyond", "--reference-frame 12: the series has 12 frames (0..11)"),
    ("poni_wavelength_disagrees", "disagree"),
])
def test_bad_geometry_or_metadata_fails_before_any_frame_work(drifting_series, tmp_path,
                                                              monkeypatch, case, needle):
    path, _ = drifting_series
    simple = dict(distance_mm=100.0, beam_x=31.5, pixel_um=75.0)
    meta = tmp_path / "meta.csv"
    pd.DataFrame({"frame": range(12), "voltage_V": np.linspace(3, 4, 12)}).to_csv(meta,
                                                                                   index=False)
    log = tmp_path / "log.csv"
    pd.DataFrame({"time_s": [0.0, 100.0], "voltage_V": [3.0, 4.0]}).to_csv(log, index=False)
    if case == "cycler_without_columns":  # a log of temperatures only
        pd.DataFrame({"time_s": [0.0, 100.0], "T_K": [300.0, 310.0]}).to_csv(log, index=False)
    timed = tmp_path / "timed.csv"
    pd.DataFrame({"frame": range(12), "time_s": np.linspace(0, 99, 12)}).to_csv(timed,
                                                                                index=False)
    short = tmp_path / "short.csv"
    pd.DataFrame({"voltage_V": np.linspace(3, 4, 5)}).to_csv(short, index=False)
    options = {
        "missing_poni": dict(poni=str(tmp_path / "missing.poni")),
        "no_beam_y": simple,
        "d_ref_no_wavelength": dict(simple, beam_y=31.5, d_ref=2.0),
        "hkl_poni_no_wavelength": dict(poni=None, hkl=(1, 1, 1)),
        "tetragonal_l_without_c_over_a": dict(simple, beam_y=31.5, wavelength_A=1.0,
                                              hkl=(1, 0, 1), crystal_system="tetragonal"),
        "missing_meta": dict(frame_meta=str(tmp_path / "nope.csv")),
        "short_meta": dict(frame_meta=str(short)),
        "cycler_without_time": dict(frame_meta=str(meta), cycler_log=str(log)),
        "cycler_without_columns": dict(frame_meta=str(timed), cycler_log=str(log)),
        "reference_frame_beyond": dict(reference_frame=12),
        "poni_wavelength_disagrees": dict(poni=None, wavelength_A=0.7),
    }[case]
    if case == "hkl_poni_no_wavelength":
        options["poni"] = _poni(tmp_path, wavelength_A=None)
    if case == "poni_wavelength_disagrees":
        options["poni"] = _poni(tmp_path, wavelength_A=1.0)
    _no_frame_work(monkeypatch)
    out = tmp_path / "r"
    with pytest.raises((OptionError, InputFileError), match=re_escape(needle)):
        run(path, out, config=FAST, track=TrackConfig(report=False, **options),
            progress=False)
    assert not out.exists()


def test_wavelength_supplies_a_poni_file_without_one(drifting_series, tmp_path):
    path, _ = drifting_series
    res = run(path, tmp_path / "r", config=FAST, progress=False,
              track=TrackConfig(report=False, poni=_poni(tmp_path, None), wavelength_A=0.7,
                                d_ref=2.0))
    t = res.tracks
    wl = 2 * t.d_spacing * np.sin(np.radians(t.two_theta) / 2)
    assert np.allclose(wl, 0.7) and "strain" in t


def test_other_track_options_on_a_finished_run_redo_only_the_end(drifting_series, tmp_path,
                                                                 monkeypatch):
    from braggtrack.runner import link_and_measure

    path, _ = drifting_series
    out = tmp_path / "r"
    first = run(path, out, config=FAST, track=NOREPORT, chunk_size=4, progress=False)
    chunks = {p.name: p.stat().st_mtime_ns for p in (out / "chunks").iterdir()}
    other = TrackConfig(report=False, min_length=20, beam_x=10.0, beam_y=12.0)
    with monkeypatch.context() as m:
        _no_frame_work(m)
        res = run(path, out, config=FAST, track=other, chunk_size=4, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "chunks").iterdir()} == chunks
    assert len(res.tracks) == 0 and len(first.tracks) > 0  # min_length 20 > 12 frames
    assert res.info["parameters"]["min_length"] == 20
    assert res.info["fingerprint"]["track"]["beam_x"] == 10.0
    back = run(path, out, config=FAST, track=TrackConfig(report=False, beam_x=10.0,
               beam_y=12.0), chunk_size=4, progress=False)
    expected, _, _ = link_and_measure(first.peaks, TrackConfig(report=False, beam_x=10.0,
                                                               beam_y=12.0), (64, 64))
    pd.testing.assert_frame_equal(back.tracks, expected)
    # a find option still decides the chunks: refused, and the message says which
    with pytest.raises(OptionError, match=r"find\.patch"):
        run(path, out, config=FAST.replace(patch=9), track=NOREPORT, chunk_size=4,
            progress=False)


# ----------------------------------------------------------------------------- scheduler, Ctrl-C


def test_unreachable_scheduler_is_one_line(drifting_series, tmp_path, monkeypatch):
    import braggtrack.runner as runner

    path, _ = drifting_series
    with pytest.raises(OptionError, match="cannot reach the Dask scheduler at notanaddress: "):
        run(path, tmp_path / "a", config=FAST, track=NOREPORT, scheduler="notanaddress",
            progress=False)
    monkeypatch.setattr(runner, "SCHEDULER_TIMEOUT_S", 1.0)
    t0 = time.time()
    with pytest.raises(OptionError, match=r"at tcp://127\.0\.0\.1:1: .*after 1 s"):
        run(path, tmp_path / "b", config=FAST, track=NOREPORT, scheduler="tcp://127.0.0.1:1",
            progress=False)
    assert time.time() - t0 < 10
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_bad_scheduler_is_one_line_exit_2(drifting_series, tmp_path):
    path, _ = drifting_series
    res = subprocess.run(_cli("run", path, "-o", tmp_path / "r", "-q", "--scheduler",
                              "notanaddress"), capture_output=True, text=True, timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: cannot reach the Dask scheduler at notanaddress")


@pytest.mark.slow
def test_ctrl_c_says_what_is_kept_exits_130_and_resumes(drifting_series, tmp_path):
    path, _ = drifting_series
    args, ref = _reference_cli_run(path, tmp_path)
    out = tmp_path / "int"
    # Slow every chunk down so that the signal lands in the middle of the run.
    slow = ("import time, runpy, sys, braggtrack.runner as r; real = r._localize_task; "
            "r._localize_task = lambda t, d: (time.sleep(0.3), real(t, d))[1]; "
            "sys.argv = ['braggtrack'] + sys.argv[1:]; runpy.run_module('braggtrack.cli', "
            "run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", slow, *map(str, args), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if len(json.loads((out / "run.json").read_text())["chunks"]) >= 3:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 130, err
    assert len(lines) == 1 and "Traceback" not in err, err
    import re

    m = re.fullmatch(r"interrupted: (\d+) of 12 chunks kept in (.+); rerun the same command "
                     r"to resume", lines[0])
    assert m and m.group(2) == str(out), lines[0]
    kept = int(m.group(1))
    assert 3 <= kept < 12
    assert len(json.loads((out / "run.json").read_text())["chunks"]) == kept
    final = subprocess.run(_cli(*args, "-o", out), capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    a, b = _tables(ref), _tables(out)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])


# ----------------------------------------------------------------------------- track command


def test_track_command_measures_radial_shift_from_a_known_centre_only(drifting_series,
                                                                      tmp_path):
    import shutil

    from braggtrack.runner import link_and_measure

    path, _ = drifting_series
    res = run(path, tmp_path / "r", config=FAST, track=NOREPORT, progress=False)

    # A run folder's peak table: the run's own centre (its frame centre here), said so.
    out = tmp_path / "t.parquet"
    done = subprocess.run(_cli("track", tmp_path / "r" / "peaks.parquet", "-o", out),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "radial_shift measured from (31.5, 31.5) px, the centre of the run's 64x64 frames" \
        in done.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(out), res.tracks)

    # A table alone: no frame size, no centre given: no radial_shift rather than a guess.
    alone = tmp_path / "elsewhere" / "peaks.parquet"
    alone.parent.mkdir()
    shutil.copy(tmp_path / "r" / "peaks.parquet", alone)
    done = subprocess.run(_cli("track", alone, "-o", out, "--force"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [ln for ln in done.stderr.splitlines() if ln.strip()] == [
        "note: no radial_shift column: the beam centre is unknown (give --beam-x and --beam-y)"]
    assert "radial_shift" not in pd.read_parquet(out)

    # The centre given: measured from it, as run() does with the same options.
    done = subprocess.run(_cli("track", alone, "-o", out, "--force", "--beam-x", 10,
                               "--beam-y", 12), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    expected, _, _ = link_and_measure(res.peaks, TrackConfig(beam_x=10.0, beam_y=12.0))
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)

    done = subprocess.run(_cli("track", alone, "-o", out, "--force", "--beam-x", 10),
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and lines == [
        "error: --beam-x needs --beam-y too: the frame size, whose centre would stand in, is "
        "unknown"], done.stderr


def test_force_with_a_bad_option_keeps_the_old_run(drifting_series, tmp_path):
    # The options are checked before --force deletes the folder: a typo costs nothing.
    path, _ = drifting_series
    out = tmp_path / "r"
    run(path, out, config=FAST, track=NOREPORT, progress=False)
    with pytest.raises(InputFileError, match="no such PONI file"):
        run(path, out, config=FAST, track=TrackConfig(report=False, poni=str(tmp_path / "x")),
            progress=False, force=True)
    assert json.loads((out / "run.json").read_text())["finished"]


def test_geometry_without_wavelength_gives_strain_from_two_theta(drifting_series, tmp_path):
    path, _ = drifting_series
    res = run(path, tmp_path / "r", config=FAST, progress=False, track=TrackConfig(
        report=False, distance_mm=100.0, beam_x=31.5, beam_y=31.5, pixel_um=75.0))
    assert {"two_theta", "strain", "strain_err"} <= set(res.tracks.columns)
    assert "d_spacing" not in res.tracks and "radial_shift" not in res.tracks
    assert (res.tracks.groupby("particle").strain.first() == 0).all()


def test_link_segment_reads_its_chunk_files_and_reports_a_missing_one(tmp_path):
    from braggtrack.runner import LinkTask, link_segment
    from braggtrack.track import link_arrays

    rng = np.random.default_rng(4)
    files = []
    for a in (0, 4, 8):
        frame = np.repeat(np.arange(a, a + 4), 5)
        table = pd.DataFrame({"frame": frame, "x": np.tile(np.arange(5) * 20.0, 4)
                              + rng.normal(0, 0.1, 20), "y": 10.0, "ok": True})
        table.loc[3, "ok"] = False  # rejected rows are not linked
        files.append(str(tmp_path / f"peaks-{a:06d}.parquet"))
        table.to_parquet(files[-1])
    task = LinkTask(index=1, files=tuple(files[1:]), warm=6, stop=12, search_range=5.0, memory=2)
    out = link_segment(task)
    rows = pd.concat([pd.read_parquet(f) for f in files[1:]], ignore_index=True)
    rows = rows[rows["ok"] & (rows["frame"] >= 6)]
    assert out["segment"] == 1
    np.testing.assert_array_equal(out["labels"], link_arrays(
        rows["frame"].to_numpy(), rows["x"].to_numpy(), rows["y"].to_numpy(), search_range=5.0,
        memory=2))
    # A chunk file gone: no labels (the driver links the segment itself), not a dead run.
    gone = link_segment(LinkTask(index=2, files=(str(tmp_path / "nope.parquet"),), warm=8,
                                 stop=12, search_range=5.0, memory=2))
    assert gone["labels"] is None and "nope.parquet" in gone["error"]


def test_peak_table_written_chunk_by_chunk_equals_the_chunks_joined(drifting_series, tmp_path,
                                                                    monkeypatch):
    # peaks.parquet is streamed from the chunk files a few at a time (with the frame metadata
    # joined batch by batch), never concatenated in memory: it must equal the whole-table
    # computation.
    import pyarrow.parquet as pq

    import braggtrack.runner as runner
    from braggtrack.metadata import join_frame_meta, load_frame_meta

    monkeypatch.setattr(runner, "_PEAK_BATCH_ROWS", 40)  # 30 peaks a chunk: batches of 2

    path, _ = drifting_series
    meta = tmp_path / "meta.csv"
    pd.DataFrame({"frame": range(12), "voltage_V": np.linspace(3.5, 4.1, 12),
                  "label": ["a", "b"] * 6, "score": 1.0}).to_csv(meta, index=False)
    res = run(path, tmp_path / "r", config=FAST, progress=False, chunk_size=5,
              track=TrackConfig(report=False, frame_meta=str(meta)))
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    chunks = [pd.read_parquet(tmp_path / "r" / c["file"]) for c in info["chunks"]]
    expected = join_frame_meta(pd.concat(chunks, ignore_index=True),
                               load_frame_meta(meta, n_frames=12))
    written = pd.read_parquet(tmp_path / "r" / "peaks.parquet")
    pd.testing.assert_frame_equal(written, expected)
    assert pq.ParquetFile(tmp_path / "r" / "peaks.parquet").num_row_groups == 2  # 2 + 1 chunks
    assert "score_meta" in written  # a metadata column named like a peak column
    # RunResult reads the table back when asked for it
    pd.testing.assert_frame_equal(res.peaks, expected)
    assert info["counts"]["peaks"] == len(expected)
    assert info["counts"]["peaks_ok"] == int(expected["ok"].sum())


def test_peak_table_writer_falls_back_to_one_table_for_chunks_that_do_not_fit(tmp_path):
    from braggtrack.runner import _PeakTableWriter

    a = pd.DataFrame({"frame": [0, 0], "x": [1.0, 2.0], "ok": [True, False]})
    b = pd.DataFrame({"frame": [1], "x": [3.0], "ok": [True], "extra": ["new"]})
    whole = pd.concat([a, b], ignore_index=True)
    w = _PeakTableWriter(tmp_path / "peaks.parquet")
    for t in (a, pd.DataFrame({"frame": [], "x": [], "ok": []}), b):
        w.add(t)
    assert (w.n_peaks, w.n_ok) == (3, 2)
    w.close(lambda: whole)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "peaks.parquet"), whole)
    assert [p.name for p in tmp_path.iterdir()] == ["peaks.parquet"]  # no temporary left
    # no chunk with peaks: the fallback's (empty) table is written
    w = _PeakTableWriter(tmp_path / "empty.parquet")
    w.add(a.iloc[:0])
    w.close(lambda: a.iloc[:0])
    assert list(pd.read_parquet(tmp_path / "empty.parquet").columns) == ["frame", "x", "ok"]


def test_a_replaced_calibration_file_is_not_resumed_against(drifting_series, tmp_path):
    # The chunks already done were made with the old dark: going on with the new one would
    # mix two calibrations in one table without a word.
    path, _ = drifting_series
    dark = tmp_path / "dark.npy"
    np.save(dark, np.zeros((64, 64), np.float32))
    run(path, tmp_path / "r", config=FAST, track=NOREPORT, dark=dark, progress=False)
    run(path, tmp_path / "r", config=FAST, track=NOREPORT, dark=dark, progress=False)  # same
    np.save(dark, np.full((64, 64), 5.0, np.float32))  # same size, other content
    with pytest.raises(OptionError, match=r"calibration\.dark.*--force"):
        run(path, tmp_path / "r", config=FAST, track=NOREPORT, dark=dark, progress=False)
    res = run(path, tmp_path / "r", config=FAST, track=NOREPORT, dark=dark, progress=False,
              force=True)
    assert res.info["fingerprint"]["calibration"]["dark"][0]["path"] == str(dark.resolve())


def test_a_run_json_that_is_not_an_object_is_one_line(drifting_series, tmp_path):
    path, _ = drifting_series
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text("[]")
    with pytest.raises(OptionError, match="not a JSON object"):
        run(path, tmp_path / "r", config=FAST, track=NOREPORT, progress=False)


def test_a_damaged_chunk_file_is_redone_on_resume(drifting_series, tmp_path):
    path, _ = drifting_series
    ref = run(path, tmp_path / "ref", config=FAST, track=NOREPORT, chunk_size=5, progress=False)
    out = tmp_path / "r"
    run(path, out, config=FAST, track=NOREPORT, chunk_size=5, progress=False)
    info = json.loads((out / "run.json").read_text())
    (out / info["chunks"][1]["file"]).write_bytes(b"garbage")  # e.g. cut short by a full disk
    res = run(path, out, config=FAST, track=NOREPORT, chunk_size=5, progress=False)
    for name in ("tracks", "particles"):
        pd.testing.assert_frame_equal(getattr(res, name), getattr(ref, name))
    pd.testing.assert_frame_equal(res.peaks, ref.peaks)


def test_a_chunk_table_damaged_inside_is_a_one_line_error(drifting_series, tmp_path,
                                                          monkeypatch):
    import braggtrack.runner as runner

    path, _ = drifting_series
    out = tmp_path / "r"
    run(path, out, config=FAST, track=NOREPORT, chunk_size=5, progress=False)
    info = json.loads((out / "run.json").read_text())
    bad = out / info["chunks"][0]["file"]
    monkeypatch.setattr(runner, "_chunk_intact", lambda *a: True)  # footer intact, data not
    bad.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    with pytest.raises(InputFileError, match=r"damaged chunk table.*delete it") as exc:
        run(path, out, config=FAST, track=NOREPORT, chunk_size=5, progress=False)
    assert str(bad) in str(exc.value)


def test_a_poni_of_another_detector_shape_warns(drifting_series, tmp_path, logged):
    import pyFAI.detectors
    from pyFAI.geometry import Geometry as PyFAIGeometry

    path, _ = drifting_series
    poni = tmp_path / "pilatus.poni"
    PyFAIGeometry(dist=0.1, poni1=0.01, poni2=0.01, wavelength=1e-10,
                  detector=pyFAI.detectors.detector_factory("Pilatus1M")).save(str(poni))
    run(path, tmp_path / "r", config=FAST, progress=False,
        track=TrackConfig(report=False, poni=str(poni)))
    assert any("its detector is 1043 x 981 pixels, the frames 64 x 64" in m for m in logged)


def test_run_result_refuses_peaks_rewritten_by_a_later_run(drifting_series, tmp_path):
    path, _ = drifting_series
    first = run(path, tmp_path / "r", config=FAST, track=NOREPORT, progress=False)
    run(path, tmp_path / "r", config=FindConfig(localizer="centroid"), track=NOREPORT,
        progress=False, force=True)
    with pytest.raises(InputFileError, match="rewritten since this result was made"):
        first.peaks  # noqa: B018 - the property reads the file
    assert "peaks" in repr(first)  # the counts come from run.json's record, no file read


def test_no_temporary_peak_file_is_left_by_an_interrupted_end(drifting_series, tmp_path,
                                                              monkeypatch):
    import braggtrack.runner as runner

    path, _ = drifting_series
    seen = []

    def interrupted(self, fallback):  # Ctrl-C once every chunk is in the temporary file
        seen.append(self.tmp.exists())
        raise KeyboardInterrupt

    monkeypatch.setattr(runner._PeakTableWriter, "close", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(path, tmp_path / "r", config=FAST, track=NOREPORT, progress=False)
    assert seen == [True]
    assert not list((tmp_path / "r").glob(".peaks.parquet.tmp-*"))


def test_a_run_begun_before_background_existed_says_how_to_resume(drifting_series, tmp_path):
    # run.json of an earlier version has no find.background; its chunks used one global
    # threshold. The default (auto) may not give the same chunks, so it is refused with the
    # way out; --background global resumes it.
    path, _ = drifting_series
    out = tmp_path / "r"
    run(path, out, config=FAST.replace(background="global"), track=NOREPORT, chunk_size=5,
        progress=False)
    info = json.loads((out / "run.json").read_text())
    del info["fingerprint"]["find"]["background"]
    (out / "run.json").write_text(json.dumps(info))
    with pytest.raises(OptionError, match=r"find\.background.*--background global resumes it"):
        run(path, out, config=FAST, track=NOREPORT, chunk_size=5, progress=False)
    res = run(path, out, config=FAST.replace(background="global"), track=NOREPORT,
              chunk_size=5, progress=False)
    assert len(res.tracks)
