"""Tests of braggtrack.compare: localizer comparison and patch shape measures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from braggtrack import compare
from braggtrack.errors import OptionError

YY, XX = np.mgrid[-5:6, -5:6]


def gaussian(x0=0.0, y0=0.0, sx=1.2, sy=1.2, amp=1000.0, bg=10.0):
    return (amp * np.exp(-((XX - x0) ** 2 / (2 * sx**2) + (YY - y0) ** 2 / (2 * sy**2))) + bg)


def shifted_by(dx: float, dy: float):
    """A fake localizer that reports the brightest pixel shifted by a known amount."""
    def localizer(patches: np.ndarray) -> pd.DataFrame:
        n, size, _ = patches.shape
        r, c = np.divmod(patches.reshape(n, -1).argmax(1), size)
        return pd.DataFrame({"dx": c - size // 2 + dx, "dy": r - size // 2 + dy,
                             "converged": np.ones(n, bool)})
    return localizer


def test_patch_shape_gaussian_analytic():
    sigma = 1.5
    s = compare.patch_shape(gaussian(0.0, 0.0, sigma, sigma, bg=0.0)[None]).iloc[0]
    # FWHM of a Gaussian is 2 sqrt(2 ln 2) sigma; linear interpolation on pixels is close.
    assert s["fwhm_x"] == pytest.approx(2 * np.sqrt(2 * np.log(2)) * sigma, abs=0.15)
    assert s["sigma_x"] == pytest.approx(sigma, rel=0.05)
    assert abs(s["skew_x"]) < 1e-6 and abs(s["cx"]) < 1e-9
    assert s["n_maxima"] == 1 and s["ellipticity"] < 1e-6
    assert s["cause"] == "compact"


def test_patch_shape_explains_bad_patches():
    double = gaussian(-2.5, 0, 1.0, 1.0, amp=800) + gaussian(2.5, 0, 1.0, 1.0, amp=600, bg=0)
    streak = gaussian(0, 0, 3.5, 0.8)
    skewed = gaussian(0, 0, 1.0, 1.0) + gaussian(1.8, 0, 1.6, 1.0, amp=500, bg=0)
    weak = gaussian(amp=4.0) + np.random.default_rng(0).normal(0, 1.5, (11, 11))
    s = compare.patch_shape(np.stack([double, streak, skewed, weak]))
    assert s.loc[0, "n_maxima"] == 2 and "2 maxima" in s.loc[0, "cause"]
    assert s.loc[1, "ellipticity"] > 0.5 and "elongated" in s.loc[1, "cause"]
    assert s.loc[1, "fwhm_x"] > 3 * s.loc[1, "fwhm_y"]
    assert s.loc[2, "skew_x"] > 0.3 and s.loc[2, "max_offset"] > 0.3
    assert "asymmetric" in s.loc[2, "cause"]
    assert "weak" in s.loc[3, "cause"]
    assert not s.drop(columns="cause").isna().any().any()


@settings(max_examples=20, deadline=None)
@given(st.floats(-1.5, 1.5), st.floats(-1.5, 1.5))
def test_patch_shape_centroid_follows_a_symmetric_peak(x0, y0):
    s = compare.patch_shape(gaussian(x0, y0, 1.0, 1.0, bg=0.0)[None]).iloc[0]
    assert s["cx"] == pytest.approx(x0, abs=0.02) and s["cy"] == pytest.approx(y0, abs=0.02)


def test_compare_patches_known_pairwise_distances():
    patches = np.stack([gaussian(0.2, -0.1), gaussian(-0.3, 0.4)]).astype(np.float32)
    loc = {"a": shifted_by(0.0, 0.0), "b": shifted_by(0.3, 0.4), "c": shifted_by(-0.6, 0.0)}
    res = compare.compare_patches(patches, np.array([50, 60]), np.array([70, 80]), localizers=loc)
    assert res.localizers == ("a", "b", "c")
    summary = res.summary.set_index("pair")
    assert summary.loc["a vs b", "median"] == pytest.approx(0.5)
    assert summary.loc["a vs c", "median"] == pytest.approx(0.6)
    assert summary.loc["b vs c", "max"] == pytest.approx(np.hypot(0.9, 0.4))
    assert res.peaks["max_distance"].to_numpy() == pytest.approx([np.hypot(0.9, 0.4)] * 2)
    # Detector coordinates: patch centre pixel + offset (x = column).
    assert res.peaks.loc[0, "x_b"] == pytest.approx(70.3)
    assert res.peaks.loc[0, "y_b"] == pytest.approx(50.4)


def test_failed_localizer_is_flagged_not_nan():
    def half_fails(patches):
        n = len(patches)
        return pd.DataFrame({"dx": np.r_[0.1, np.nan][:n], "dy": np.zeros(n),
                             "converged": np.r_[True, False][:n]})

    patches = np.stack([gaussian(), gaussian()]).astype(np.float32)
    res = compare.compare_patches(patches, np.array([5, 5]), np.array([5, 5]),
                                  localizers={"ok": shifted_by(0, 0), "half": half_fails})
    assert res.peaks["ok_half"].tolist() == [True, False]
    assert len(res.distances) == 1
    assert not res.peaks.drop(columns="cause").isna().any().any()


def test_named_localizers_real_module_and_skip():
    pytest.importorskip("braggtrack.localize")
    patches = np.stack([gaussian(0.3, -0.2)]).astype(np.float32)
    results, skipped = compare.run_localizers(patches, ("centroid", "gauss"))
    assert set(results) == {"centroid", "gauss"}
    assert results["gauss"]["dx"].iloc[0] == pytest.approx(0.3, abs=0.02)
    funcs, skipped = compare._named_localizers(["no_such_method"])
    res, skipped = compare.run_localizers(patches, ["no_such_method"])
    assert "no_such_method" in skipped and not res


def test_no_localizer_raises():
    with pytest.raises(OptionError, match="no localizer"):
        compare.compare_patches(np.zeros((1, 11, 11), np.float32), [5], [5],
                                localizers=["no_such_method"])


def fake_run(root: Path, n_frames=3, shape=(64, 64)) -> Path:
    """Frames with a few Gaussian peaks and a run folder pointing at them."""
    rng = np.random.default_rng(3)
    root.mkdir(parents=True)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    rows, frames = [], []
    for f in range(n_frames):
        img = rng.poisson(5, shape).astype(np.float32)
        for x, y in [(15.3, 20.6), (40.8, 12.1), (30.2, 45.7), (50.5, 50.5)]:
            img += 900 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.2**2))
            rows.append(dict(frame=f, x=x, y=y, x_det=int(round(x)), y_det=int(round(y)),
                             score=200.0, ok=True, reason=""))
        # A split peak: two maxima 3 px apart, the localizers must disagree here.
        img += 700 * np.exp(-((xx - 8) ** 2 + (yy - 50) ** 2) / 2)
        img += 500 * np.exp(-((xx - 11.5) ** 2 + (yy - 50) ** 2) / 2)
        rows.append(dict(frame=f, x=8.0, y=50.0, x_det=8, y_det=50, score=150.0, ok=True,
                         reason=""))
        rows.append(dict(frame=f, x=1.0, y=1.0, x_det=1, y_det=1, score=3.0, ok=False,
                         reason="edge"))
        frames.append(img)
    np.save(root / "frames.npy", np.stack(frames))
    pd.DataFrame(rows).to_parquet(root / "peaks.parquet")
    (root / "run.json").write_text(json.dumps({
        "parameters": {"patch": 11, "dataset": None},
        "inputs": [{"path": str(root / "frames.npy"), "size": (root / "frames.npy").stat().st_size,
                    "mtime_ns": (root / "frames.npy").stat().st_mtime_ns}]}))
    return root


def test_compare_localizers_on_a_run_folder(tmp_path):
    pytest.importorskip("braggtrack.localize")
    run = fake_run(tmp_path / "run")
    res = compare.compare_localizers(run, localizers=("centroid", "gauss"))
    assert len(res.peaks) == 15 and res.n_available == 15  # rejected peak left out
    worst = res.worst(3)
    assert (worst["col"] == 8).all() and (worst["row"] == 50).all()
    assert (worst["n_maxima"] == 2).all()
    good = res.peaks[res.peaks["col"] != 8]
    # On clean isolated Gaussians the two agree to a few hundredths of a pixel.
    assert good["max_distance"].max() < 0.1
    assert good["x_gauss"].to_numpy() == pytest.approx(
        np.tile([15.3, 40.8, 30.2, 50.5], 3), abs=0.05)

    sub = compare.compare_localizers(run, localizers=("centroid",), max_peaks=4)
    assert len(sub.peaks) == 4 and sub.n_available == 15

    out = compare.compare_report(res, tmp_path / "cmp", n_worst=6)
    assert out.name == "compare.html"
    for name in ("distances.png", "worst_patches.png", "summary.csv", "positions.parquet"):
        assert (out.parent / name).stat().st_size > 0
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 2 and "2 maxima" in page


def test_compare_table_without_frames_raises(tmp_path):
    run = fake_run(tmp_path / "run")
    with pytest.raises(OptionError, match="frames are needed"):
        compare.compare_localizers(run / "peaks.parquet", localizers={"a": shifted_by(0, 0)})
    frames = np.load(run / "frames.npy")
    res = compare.compare_localizers(run / "peaks.parquet", frames=frames,
                                     localizers={"a": shifted_by(0, 0), "b": shifted_by(0.1, 0)})
    assert res.summary["median"].iloc[0] == pytest.approx(0.1)


def test_compare_refuses_a_replaced_or_missing_input(tmp_path):
    # Patches cut from another file at the recorded path compared nonsense, silently.
    import os
    import subprocess
    import sys

    run = fake_run(tmp_path / "run")
    frames = np.load(run / "frames.npy")
    np.save(run / "frames.npy", frames[:, ::-1].copy())  # same size, other frames
    st = (run / "frames.npy").stat()
    os.utime(run / "frames.npy", ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    with pytest.raises(OptionError, match=r"frames\.npy changed since the run "
                       r"\(size/modification time differ\)"):
        compare.compare_localizers(run, localizers=("centroid",))
    res = subprocess.run([sys.executable, "-m", "braggtrack.cli", "compare", str(run)],
                         capture_output=True, text=True, timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "changed since the run" in lines[0], \
        res.stderr
    (run / "frames.npy").unlink()
    with pytest.raises(OptionError, match="is no longer there"):
        compare.compare_localizers(run, localizers=("centroid",))
    # the frames given explicitly are the caller's choice: no check
    res = compare.compare_localizers(run, frames=frames, localizers=("centroid",))
    assert len(res.peaks) == 15
