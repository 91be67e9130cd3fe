"""Live mode: frames appended by another process while braggtrack watches are all processed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from braggtrack.config import FindConfig
from braggtrack.runner import TrackConfig, watch

WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import render_frame
    kind, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(0)
    def frame(i):
        peaks = [(15.2 + 0.1 * i, 20.3, 1.0, 5000.0), (40.7, 44.1 - 0.1 * i, 1.1, 7000.0)]
        return rng.poisson(render_frame((64, 64), peaks, 20.0)).astype(np.uint16)
    if kind == "h5_allocated":  # the whole scan's dataset made first, frames written later
        import h5py
        with h5py.File(path, "w", libver="latest") as f:
            ds = f.create_dataset("/entry/data/data", shape=(n, 64, 64), dtype=np.uint16,
                                  chunks=(1, 64, 64))
            f.swmr_mode = True
            for i in range(n):
                time.sleep(0.3)
                ds[i] = frame(i)
                ds.flush()
    elif kind == "h5":
        import h5py
        with h5py.File(path, "w", libver="latest") as f:
            ds = f.create_dataset("/entry/data/data", shape=(1, 64, 64), maxshape=(None, 64, 64),
                                  dtype=np.uint16, chunks=(1, 64, 64))
            ds[0] = frame(0)
            f.swmr_mode = True
            for i in range(1, n):
                time.sleep(0.3)
                ds.resize((i + 1, 64, 64))
                ds[i] = frame(i)
                ds.flush()
    else:
        import tifffile
        for i in range(n):
            tifffile.imwrite(f"{{path}}/frame_{{i:05d}}.tif", frame(i))
            time.sleep(0.3)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["h5", "h5_allocated", "folder"])
def test_watch_processes_every_frame_appended_by_another_process(tmp_path, kind):
    import tests_path  # noqa: F401  (see conftest: makes the tests folder importable)

    n = 10
    if kind.startswith("h5"):
        source = tmp_path / "live.h5"
    else:
        source = tmp_path / "live"
        source.mkdir()
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(tests_path.HERE)))
    writer = subprocess.Popen([sys.executable, str(script), kind, str(source), str(n)])
    try:
        res = watch(source, tmp_path / "run", config=FindConfig(localizer="gauss"),
                    track=TrackConfig(report=False), chunk_size=3, poll_s=0.2, quiet_s=3.0,
                    progress=False)
    finally:
        writer.wait(timeout=60)
    frames = pd.read_parquet(tmp_path / "run" / "frames.parquet")
    assert sorted(frames.frame) == list(range(n))
    assert (frames.status == "ok").all()
    # run.json checksums the input as it was at the end of the watch
    import json

    from braggtrack.io import file_checksum

    inputs = json.loads((tmp_path / "run" / "run.json").read_text())["inputs"]
    assert len(inputs) == (1 if kind.startswith("h5") else n)
    assert all(rec["xxh3_128"] == file_checksum(rec["path"], algorithm="xxh3_128") for rec in inputs)
    assert (res.peaks.groupby("frame").ok.sum() == 2).all()
    assert res.particles.shape[0] == 2


@pytest.mark.slow
def test_cli_watch_on_a_folder(tmp_path):
    source = tmp_path / "live"
    source.mkdir()
    script = tmp_path / "writer.py"
    import tests_path

    script.write_text(WRITER.format(tests=str(tests_path.HERE)))
    writer = subprocess.Popen([sys.executable, str(script), "folder", str(source), "6"])
    res = subprocess.run(
        [sys.executable, "-m", "braggtrack.cli", "run", str(source), "-o", str(tmp_path / "run"),
         "--watch", "--quiet-period", "3", "--workers", "1", "--localizer", "gauss",
         "--chunk-size", "2", "--no-report", "-q"],
        capture_output=True, text=True, timeout=300)
    writer.wait(timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    frames = pd.read_parquet(tmp_path / "run" / "frames.parquet")
    assert sorted(frames.frame) == list(range(6))


def _h5_series(path, n, start=0):
    """``n`` frames of two drifting peaks in an appendable HDF5 stack (appended to when it
    exists)."""
    import h5py
    import numpy as np

    import tests_path  # noqa: F401
    from conftest import render_frame

    rng = np.random.default_rng(start)
    frames = [rng.poisson(render_frame((64, 64), [(15.2 + 0.1 * i, 20.3, 1.0, 5000.0),
                                                  (40.7, 44.1 - 0.1 * i, 1.1, 7000.0)], 20.0))
              .astype(np.uint16) for i in range(start, start + n)]
    with h5py.File(path, "a") as f:
        if "/entry/data/data" not in f:
            f.create_dataset("/entry/data/data", shape=(0, 64, 64), maxshape=(None, 64, 64),
                             dtype=np.uint16, chunks=(1, 64, 64))
        ds = f["/entry/data/data"]
        ds.resize((start + n, 64, 64))
        ds[start:] = np.stack(frames)


def test_watch_resumes_a_grown_input_and_a_plain_rerun_checks_it(tmp_path):
    # The input of a watch grows by design: it is not refused as changed. A plain run on the
    # finished watch's folder is, once the input changes again.
    import os

    from braggtrack.errors import OptionError
    from braggtrack.runner import run

    source = tmp_path / "live.h5"
    _h5_series(source, 4)
    opts = dict(config=FindConfig(localizer="centroid"), track=TrackConfig(report=False),
                chunk_size=2, poll_s=0.05, quiet_s=0.3, progress=False)
    first = watch(source, tmp_path / "run", **opts)
    assert sorted(first.frames.frame) == [0, 1, 2, 3]
    _h5_series(source, 3, start=4)
    again = watch(source, tmp_path / "run", **opts)
    assert sorted(again.frames.frame) == list(range(7)) and again.info["resumed"]
    rec = again.info["inputs"][0]
    assert rec["size"] == source.stat().st_size and rec["mtime_ns"] == source.stat().st_mtime_ns
    plain = {k: v for k, v in opts.items() if k not in ("poll_s", "quiet_s")}
    rerun = run(source, tmp_path / "run", **plain)
    pd.testing.assert_frame_equal(rerun.tracks, again.tracks)
    _h5_series(source, 1, start=7)
    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    with pytest.raises(OptionError, match="live.h5 changed since this run started"):
        run(source, tmp_path / "run", **plain)


@pytest.mark.parametrize("track, needle", [
    (dict(poni="missing.poni"), "no such PONI file"),
    (dict(frame_meta="missing.csv"), "no such metadata file"),
])
def test_watch_checks_geometry_and_metadata_before_any_frame(tmp_path, monkeypatch, track,
                                                             needle):
    import braggtrack.runner as runner
    from braggtrack.errors import BraggTrackError

    source = tmp_path / "live.h5"
    _h5_series(source, 2)
    monkeypatch.setattr(runner, "_detect_task",
                        lambda *a, **k: pytest.fail("frames were processed"))
    track = {k: str(tmp_path / v) for k, v in track.items()}
    with pytest.raises(BraggTrackError, match=needle):
        watch(source, tmp_path / "run", config=FindConfig(localizer="centroid"),
              track=TrackConfig(report=False, **track), poll_s=0.05, quiet_s=0.3,
              progress=False)
    assert not (tmp_path / "run").exists()


def test_watch_bad_scheduler_fails_at_once(tmp_path):
    from braggtrack.errors import OptionError

    source = tmp_path / "live.h5"
    _h5_series(source, 2)
    with pytest.raises(OptionError, match="cannot reach the Dask scheduler at notanaddress"):
        watch(source, tmp_path / "run", config=FindConfig(localizer="centroid"),
              track=TrackConfig(report=False), scheduler="notanaddress", poll_s=0.05,
              quiet_s=0.3, progress=False)


def test_live_updates_read_and_link_only_new_chunks_and_survive_a_redone_partial_chunk(
        tmp_path, monkeypatch):
    # What watch() does between polls, step by step: each update must cost the new chunks
    # only (a long experiment would otherwise relink every frame at every update), and a
    # partial last chunk redone whole (frames came after a quiet spell) must not leave stale
    # rows in the linking.
    from braggtrack.io import open_frames
    from braggtrack.runner import _execute, _RunState, run

    source = tmp_path / "live.h5"
    _h5_series(source, 5)
    config, track = FindConfig(localizer="centroid"), TrackConfig(report=False)
    state = _RunState.open(source, tmp_path / "run", config=config, track=track, dataset=None,
                           dark=None, flat=None, mask=None, chunk_size=2, workers=1,
                           scheduler=None, force=False, resume=None, strict=False,
                           command=None, live=True)
    state.start_linking()
    _execute(state.tasks(0, 5), 1, None, state.record)  # (0, 2), (2, 4), (4, 5)
    first = state.finish(report=False)
    assert sorted(first.frames.frame) == [0, 1, 2, 3, 4] and state.linker is not None
    # As if a Ctrl-C fell between feeding a chunk to the linker and caching it: rows the
    # cache does not know of. The next update must link again, not keep them.
    state.linker.add(pd.DataFrame({"frame": [99], "x": [1.0], "y": [1.0]}))

    reads = []
    real_read = pd.read_parquet
    monkeypatch.setattr(pd, "read_parquet", lambda f, *a, **k: reads.append(str(f))
                        or real_read(f, *a, **k))
    state.series.close()  # as watch() does between polls (HDF5 allows one writer)
    _h5_series(source, 2, start=5)
    state.series = open_frames(source)
    _execute(state.tasks(state.done_until(), 7, partial=False), 1, None, state.record)
    assert [c["stop"] for c in state.info["chunks"]] == [2, 4, 6]  # (4, 5) redone as (4, 6)
    second = state.finish(report=False)
    assert sorted(second.frames.frame) == list(range(6))
    # The redone chunk forced one re-read of everything; the next update reads its own only.
    reads.clear()
    _execute(state.tasks(0, 7), 1, None, state.record)
    final = state.finish()
    assert {r.rsplit("/", 1)[-1] for r in reads} == {"peaks-000006-000007.parquet",
                                                      "frames-000006-000007.parquet"}
    monkeypatch.undo()
    fresh = run(source, tmp_path / "fresh", config=config, track=track, chunk_size=2,
                progress=False)
    for name in ("peaks", "tracks", "particles"):
        pd.testing.assert_frame_equal(getattr(final, name), getattr(fresh, name))
    state.series.close()


def test_a_watch_stopped_by_an_error_leaves_no_linker_thread(tmp_path, monkeypatch):
    import threading

    import braggtrack.runner as runner
    from braggtrack.errors import InputFileError

    source = tmp_path / "live.h5"
    _h5_series(source, 6)
    real, calls = runner._detect_task, []

    def failing(task, threads=1):
        calls.append(task.start)
        if len(calls) == 2:
            raise InputFileError(str(source), "simulated: frame read failed")
        return real(task, threads)

    monkeypatch.setattr(runner, "_detect_task", failing)
    before = set(threading.enumerate())  # other tests' linkers may live in this process
    with pytest.raises(InputFileError, match="simulated"):
        watch(source, tmp_path / "run", config=FindConfig(localizer="centroid"),
              track=TrackConfig(report=False), chunk_size=2, poll_s=0.05, quiet_s=0.3,
              progress=False)
    assert not [t for t in set(threading.enumerate()) - before if t.name == "braggtrack-link"]


def test_a_file_arriving_before_processed_ones_stops_the_watch(tmp_path, monkeypatch):
    # Frame numbers are places in name order: frame_00001.tif arriving after frame_00002.tif
    # was processed would shift every later frame and mislabel the frames done.
    import numpy as np
    import tifffile

    import braggtrack.runner as runner
    from braggtrack.errors import OptionError

    folder = tmp_path / "scan"
    folder.mkdir()
    frame = np.random.default_rng(0).poisson(20.0, (64, 64)).astype(np.uint16)
    for i in (0, 2, 3, 4, 5):
        tifffile.imwrite(folder / f"frame_{i:05d}.tif", frame)
    real = runner._detect_task

    def detect_then_a_late_file(task, threads=1):
        tifffile.imwrite(folder / "frame_00001.tif", frame)
        return real(task, threads)

    monkeypatch.setattr(runner, "_detect_task", detect_then_a_late_file)
    with pytest.raises(OptionError, match=r"frame_00001\.tif arrived after later files"):
        watch(folder, tmp_path / "run", config=FindConfig(localizer="centroid"),
              track=TrackConfig(report=False), chunk_size=2, poll_s=0.05, quiet_s=5,
              progress=False)
