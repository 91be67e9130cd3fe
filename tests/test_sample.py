"""The embedded real samples: present, small, licensed, readable, and full of spots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from braggtrack.data import SAMPLES, sample, sample_info
from braggtrack.errors import OptionError
from braggtrack.io import open_frames

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA_DIR = Path(sample()).parent


def test_sample_paths_and_info():
    assert sample() == sample("series")
    for kind in SAMPLES:
        path = sample(kind)
        assert path.is_file()
        info = sample_info(kind)
        assert info["path"] == path
        assert info["licence_file"].is_file()
        assert info["copyright"] in info["licence_file"].read_text()
        assert info["pixel_size_mm"] > 0 and info["origin"]
    with pytest.raises(OptionError, match="unknown sample"):
        sample("nope")
    with pytest.raises(OptionError):
        sample_info("nope")


def test_samples_are_small():
    total = sum(p.stat().st_size for p in DATA_DIR.iterdir() if p.is_file()
                and p.name.startswith(("hedm_", "laue_", "LICENSE_", "README")))
    assert total < 3_000_000
    assert (DATA_DIR / "LICENSE_laue_lauetoolsnn_MIT.txt").read_text().startswith("MIT License")
    assert "BSD 3-Clause" in (DATA_DIR / "LICENSE_hedm_hexrd_examples_BSD3.txt").read_text()
    assert "origin" in (DATA_DIR / "README.md").read_text().lower() or "From" in (
        DATA_DIR / "README.md"
    ).read_text()


def test_laue_sample_has_many_spots():
    series = open_frames(sample("laue"))
    assert len(series) == 1 and series.shape == (768, 768) and series.dtype == np.uint16
    frame = series[0].astype(np.float32)
    assert 900 < np.median(frame) < 1100  # the ~1000-count pedestal
    background = ndi.uniform_filter(ndi.minimum_filter(frame, size=9), size=9)
    spots, n = ndi.label((frame - background) > 300)
    assert n >= 15


def test_series_sample_spots_persist_over_frames():
    series = open_frames(sample("series"))
    assert len(series) == 100 and series.shape == (384, 384) and series.dtype == np.uint16
    assert series.meta["omega"].shape == (100, 2)
    # 3-D connected components over (frame, row, col): spots spanning >= 3 frames
    volume = np.stack([series[i] for i in range(30)]) > 0
    labels, n = ndi.label(volume, structure=np.ones((3, 3, 3)))
    spans = [s[0].stop - s[0].start for s in ndi.find_objects(labels)]
    assert sum(sp >= 3 for sp in spans) >= 20


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared real data absent")
def test_samples_are_unchanged_crops_of_the_originals():
    info = sample_info("laue")
    c = info["crop"]
    full = open_frames(SHARED_DATA / "laue_gan_nanowire_nw1_0000.tif")[0]
    np.testing.assert_array_equal(
        open_frames(sample("laue"))[0],
        full[c["row0"]: c["row0"] + c["rows"], c["col0"]: c["col0"] + c["cols"]],
    )
    info = sample_info("series")
    c = info["crop"]
    original = open_frames(SHARED_DATA / "hedm_zr_dac_ge2_framecache.npz")
    crop = open_frames(sample("series"))
    for i in (0, 37, 99):
        np.testing.assert_array_equal(
            crop[i], original[i][c["row0"]: c["row0"] + c["rows"], c["col0"]: c["col0"] + c["cols"]]
        )
