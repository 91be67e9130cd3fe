"""Tests of braggtrack.report on a small fake run folder (no dependence on the runner)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from braggtrack import report
from braggtrack.errors import InputFileError, OptionError

N_FRAMES, SHAPE = 10, (128, 128)


def make_fake_run(root: Path, *, n_frames=N_FRAMES, shape=SHAPE, metadata=True, seed=0) -> Path:
    """A run folder like braggtrack.run writes: frames.npy, run.json and the three tables."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    h, w = shape
    n_particles = 14
    x0 = rng.uniform(12, w - 12, n_particles)
    y0 = rng.uniform(12, h - 12, n_particles)
    amp = rng.uniform(200, 5000, n_particles)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((n_frames, h, w), np.float32)
    peak_rows = []
    # State of charge: 0 -> 1 -> 0 over the series (one charge, one discharge).
    soc = 1 - np.abs(((np.arange(n_frames) / (n_frames / 2)) % 2) - 1)[::-1]
    for f in range(n_frames):
        img = rng.poisson(20, size=shape).astype(np.float32)
        for p in range(n_particles):
            # Particles drift radially by a strain-like amount that follows state of charge.
            x = x0[p] + 0.6 * soc[f] * (x0[p] - w / 2) / (w / 2)
            y = y0[p] + 0.6 * soc[f] * (y0[p] - h / 2) / (h / 2)
            img += amp[p] * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.3**2))
            peak_rows.append(dict(frame=f, x=x, y=y, x_det=int(round(x)), y_det=int(round(y)),
                                  persistence=amp[p], score=255 * amp[p] / 5200,
                                  intensity=amp[p] * 2 * np.pi * 1.69, localizer="centroid",
                                  ok=True, reason="", particle=p))
        # Rejected peaks: one on the edge, one weak blob.
        img[1, w // 2] += 900
        peak_rows.append(dict(frame=f, x=float(w // 2), y=1.0, x_det=w // 2, y_det=1, persistence=900.0,
                              score=44.0, intensity=900.0, localizer="centroid", ok=False,
                              reason="edge", particle=-1))
        xw = int(0.78 * w) - f
        peak_rows.append(dict(frame=f, x=float(xw), y=20.0, x_det=xw, y_det=20,
                              persistence=15.0, score=0.7, intensity=30.0, localizer="centroid",
                              ok=False, reason="min_score", particle=-1))
        frames[f] = img
    np.save(root / "frames.npy", frames)
    peaks = pd.DataFrame(peak_rows)
    tracks = peaks[peaks["ok"]].copy()
    r = np.hypot(tracks["x"] - w / 2, tracks["y"] - h / 2)
    r0 = r.groupby(tracks["particle"]).transform("first")
    tracks["radial_shift"] = r - r0
    tracks["radial_shift_err"] = 0.02
    if metadata:
        tracks["state_of_charge"] = soc[tracks["frame"].to_numpy()]
        tracks["voltage_V"] = 3.0 + 1.2 * tracks["state_of_charge"]
    particles = tracks.groupby("particle").agg(
        n_frames=("frame", "size"), first_frame=("frame", "min"), last_frame=("frame", "max"),
        x_mean=("x", "mean"), y_mean=("y", "mean"), mean_intensity=("intensity", "mean"),
        radial_shift_min=("radial_shift", "min"), radial_shift_max=("radial_shift", "max"),
    ).reset_index()
    peaks.drop(columns="particle").to_parquet(root / "peaks.parquet")
    tracks.to_parquet(root / "tracks.parquet")
    particles.to_parquet(root / "particles.parquet")
    info = {
        "braggtrack_version": "0.1.0", "command": "braggtrack run frames.npy -o run",
        "parameters": {"threshold": None, "min_score": 10.0, "bin": 1, "patch": 11,
                       "localizer": "centroid", "dataset": None},
        "inputs": [{"path": str((root / "frames.npy").resolve()),
                    "size": (root / "frames.npy").stat().st_size,
                    "mtime_ns": (root / "frames.npy").stat().st_mtime_ns,
                    "sha256": "ab" * 32}],
        "model": None, "n_frames": n_frames, "frame_shape": list(shape),
        "started": "2024-01-01T00:00:00", "finished": "2024-01-01T00:00:05", "elapsed_s": 5.0,
        "skipped_frames": [{"frame": 3, "reason": "unreadable: checksum error"}],
        "counts": {"frames": n_frames, "frames_skipped": 1, "peaks": len(peaks),
                   "peaks_ok": int(peaks["ok"].sum()), "particles": n_particles},
        "geometry": None, "frame_meta": None,
    }
    (root / "run.json").write_text(json.dumps(info))
    return root


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> Path:
    return make_fake_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Path:
    """A smaller run without cell metadata, for the tests of single behaviours."""
    return make_fake_run(tmp_path_factory.mktemp("plain") / "run", n_frames=6, shape=(64, 64),
                         metadata=False)


@pytest.fixture(scope="module")
def built_report(fake_run) -> Path:
    return report.make_report(fake_run, localizers=("centroid", "gauss"),
                              gallery_size=16, compare_peaks=40)


def _data_uris(page: str) -> list[tuple[str, bytes]]:
    return [(m.group(1), base64.b64decode(m.group(2)))
            for m in re.finditer(r'src="data:([a-z]+/[a-z0-9]+);base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_is_self_contained(built_report, fake_run):
    assert built_report == fake_run / "report" / "index.html"
    page = built_report.read_text()
    # Nothing fetched from anywhere: no http(s) URLs in src/href, no external script or link tag.
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<link" not in page and not re.search(r"<script[^>]+src=", page)
    uris = _data_uris(page)
    kinds = [k for k, _ in uris]
    assert kinds.count("image/png") >= 6
    assert "video/mp4" in kinds
    for kind, data in uris:
        if kind == "image/png":
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # The sections a scientist looks for, with their explanations.
    for anchor in ("summary", "frame", "movie", "counts", "patches", "compare", "trajectories",
                   "operando", "particles", "details"):
        assert f'id="{anchor}"' in page, anchor
    assert page.count("<figcaption>") >= 6
    assert "unreadable: checksum error" in page  # skipped frame with its reason
    assert "ab" * 32 in page  # input checksum
    assert "min_score" in page and "edge" in page  # rejection reasons
    assert 'class="sortable"' in page and "data-v=" in page
    assert "One movie frame per input frame" in page


def test_movie_decodes_with_one_frame_per_input_frame(built_report):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    movie = built_report.parent / "movie.mp4"
    assert movie.exists()
    reader = imageio_ffmpeg.read_frames(str(movie))
    meta = reader.__next__()
    frames = [np.frombuffer(f, np.uint8) for f in reader]
    w, h = meta["size"]
    assert w % 2 == 0 and h % 2 == 0
    assert len(frames) == N_FRAMES
    assert all(f.size == w * h * 3 for f in frames)
    # Not a black movie: the bright peaks make it past the encoder.
    assert max(int(f.max()) for f in frames) > 200
    # The embedded copy is the same file.
    page = built_report.read_text()
    assert base64.b64encode(movie.read_bytes()).decode() in page


def test_movie_subsampled_and_said_so(plain_run, tmp_path):
    out = report.make_report(plain_run, tmp_path / "sub", max_movie_frames=4, gallery_size=0,
                             compare_peaks=0, localizers=("centroid",))
    page = out.read_text()
    assert "the movie shows 4 of" in page
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(out.parent / "movie.mp4"))
    next(reader)
    assert sum(1 for _ in reader) == 4


def test_report_from_table_only(fake_run, tmp_path):
    table = tmp_path / "peaks.parquet"
    shutil.copy(fake_run / "peaks.parquet", table)
    out = report.make_report(table, localizers=("centroid",))
    assert out == tmp_path / "report" / "index.html"
    page = out.read_text()
    assert "Only a peak table was given" in page
    assert 'id="movie"' not in page and 'id="frame"' not in page
    assert 'id="counts"' in page


def test_report_without_frames_says_why(plain_run, tmp_path):
    run = tmp_path / "moved"
    shutil.copytree(plain_run, run, ignore=shutil.ignore_patterns("report", "frames.npy"))
    info = json.loads((run / "run.json").read_text())
    info["inputs"][0]["path"] = str(run / "frames.npy")
    (run / "run.json").write_text(json.dumps(info))
    page = report.make_report(run, localizers=("centroid",), compare_peaks=0).read_text()
    assert "is no longer there" in page and 'id="movie"' not in page


@pytest.mark.parametrize("change", ["same_size", "other_size", "old_record_same_size"])
def test_report_of_a_replaced_input_draws_no_frames_and_says_why(plain_run, tmp_path, change,
                                                                 caplog):
    # Peaks drawn on (or patches cut from) frames they were not found in would be nonsense,
    # and a shorter replacement raised IndexError.
    run = tmp_path / "replaced"
    shutil.copytree(plain_run, run, ignore=shutil.ignore_patterns("report"))
    frames_path = run / "frames.npy"
    info = json.loads((run / "run.json").read_text())
    info["inputs"] = [{"path": str(frames_path), "size": frames_path.stat().st_size,
                       "mtime_ns": frames_path.stat().st_mtime_ns}]
    frames = np.load(frames_path)
    if change == "other_size":
        frames = frames[:2]
    if change == "old_record_same_size":
        del info["inputs"][0]["mtime_ns"]  # recorded before the mtime was: size only
        frames = frames[:2]
    (run / "run.json").write_text(json.dumps(info))
    np.save(frames_path, np.random.default_rng(5).poisson(3, frames.shape).astype(np.float32))
    st = frames_path.stat()
    os.utime(frames_path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    with caplog.at_level("WARNING", logger="braggtrack"):
        page = report.make_report(run, localizers=("centroid",), compare_peaks=0).read_text()
    assert f"the input {frames_path} changed since the run (size/modification time differ)" \
        in page
    assert 'id="movie"' not in page and 'id="frame"' not in page
    assert any("the report has no frame images" in r.getMessage() for r in caplog.records)
    assert report.load_run(run).series is None


def test_report_of_an_input_with_other_frame_count_draws_no_frames(plain_run, tmp_path):
    run = tmp_path / "fewer"
    shutil.copytree(plain_run, run, ignore=shutil.ignore_patterns("report"))
    info = json.loads((run / "run.json").read_text())
    # Nothing recorded to compare (a run killed early, an old run): the path alone.
    info["inputs"] = None
    info["source"] = str(run / "frames.npy")
    info["n_frames"] = 7
    (run / "run.json").write_text(json.dumps(info))
    loaded = report.load_run(run)
    assert loaded.series is None and "now has 6 frames, the run had 7" in loaded.frames_note


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(InputFileError, match="no run.json"):
        report.make_report(tmp_path)
    with pytest.raises(InputFileError, match="no such"):
        report.make_report(tmp_path / "missing")
    (tmp_path / "run.json").write_text("[]")
    with pytest.raises(InputFileError, match="not a JSON object"):
        report.make_report(tmp_path)
    (tmp_path / "run.json").unlink()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputFileError, match="not a run folder or a peak table"):
        report.make_report(tmp_path / "notes.txt")
    with pytest.raises(OptionError):
        report.make_report(tmp_path, max_movie_frames=0)


def test_display_norm_stretches_only_wide_ranges():
    flat = np.random.default_rng(1).normal(100, 5, (64, 64))
    assert type(report.display_norm(flat)).__name__ == "Normalize"
    spotty = flat.copy()
    spotty[10, 10] = 1e6
    norm = report.display_norm(spotty)
    assert type(norm).__name__ == "AsinhNorm"
    # The background sits low and the spot at the top of the colour scale.
    assert float(norm(np.array([100.0]))[0]) < 0.2 and float(norm(np.array([1e6]))[0]) > 0.99


def test_movie_colours_of_non_finite_pixels():
    # A float frame with a dead (NaN) row and an infinite pixel: lowest and highest colour.
    frame = np.random.default_rng(2).normal(100, 5, (32, 32)).astype(np.float32)
    frame[4] = np.nan
    frame[8, 8] = np.inf
    cmap = report._ColourMap(report.display_norm(frame))
    rgb = cmap(frame)
    assert rgb.shape == (32, 32, 3)
    np.testing.assert_array_equal(rgb[4], np.broadcast_to(cmap.table[0], (32, 3)))
    np.testing.assert_array_equal(rgb[8, 8], cmap.table[-1])


def test_densest_box_finds_the_cluster():
    peaks = pd.DataFrame({"x": [100.0, 102, 104, 10], "y": [50.0, 52, 55, 200]})
    x0, y0, x1, y1 = report.densest_box(peaks, (256, 256), 32)
    assert x1 - x0 == 32 and y1 - y0 == 32
    assert all(x0 <= x < x1 and y0 <= y < y1 for x, y in [(100, 50), (104, 55)])


def test_write_movie_gif_fallback(tmp_path, monkeypatch):
    import imageio_ffmpeg

    def broken(*args, **kwargs):
        raise OSError("no ffmpeg here")

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", broken)
    frames = np.random.default_rng(0).random((3, 40, 40)).astype(np.float32)
    peaks = pd.DataFrame({"frame": [0, 1], "x": [5.0, 6.0], "y": [5.0, 5.0], "ok": [True, False]})
    path, mime = report.write_movie(frames, peaks, None, tmp_path / "m.mp4")
    assert mime == "image/gif" and path.suffix == ".gif"
    from PIL import Image

    with Image.open(path) as im:
        assert im.n_frames == 3


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("headless browser test needs the chromium binary (apt install chromium)")
    return exe


def _chromium_args(tmp_path: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", "--mute-audio", f"--user-data-dir={tmp_path / 'profile'}"]


@pytest.mark.browser
def test_report_renders_in_headless_chromium(built_report, tmp_path):
    exe = _chromium()
    url = built_report.resolve().as_uri()
    dom = subprocess.run(
        [exe, *_chromium_args(tmp_path), "--virtual-time-budget=10000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    status = re.search(r'<div id="load-status">([^<]*)</div>', dom.stdout)
    assert status, f"no load status in the DOM (stderr: {dom.stderr[-500:]})"
    m = re.search(r"images: (\d+) ok, (\d+) broken; video: (\w+)", status.group(1))
    assert m, status.group(1)
    assert int(m.group(1)) >= 6 and int(m.group(2)) == 0, status.group(1)
    assert m.group(3) == "ok", status.group(1)

    shot = tmp_path / "report.png"
    subprocess.run([exe, *_chromium_args(tmp_path), f"--screenshot={shot}",
                    "--window-size=1400,3000", url], capture_output=True, timeout=120)
    assert shot.exists(), "chromium wrote no screenshot"
    from PIL import Image

    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float32)
    assert pixels.shape == (3000, 1400)
    # Not blank: many distinct grey levels and real contrast (figures, text, dark header).
    assert pixels.std() > 20 and len(np.unique(pixels)) > 50
