"""End-to-end behaviour of find_peaks / find on frames whose answer is known analytically."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from braggtrack.errors import FrameReadError
from braggtrack.pipeline import PEAK_COLUMNS, find, find_peaks

from conftest import render_frame


def _match(table, peaks):
    ok = table[table.ok]
    errs = []
    for x, y, _, _ in peaks:
        d = np.hypot(ok.x - x, ok.y - y)
        errs.append(d.min())
    return np.array(errs)


@pytest.mark.parametrize("localizer", ["centroid", "gauss", "pvoigt"])
def test_find_peaks_recovers_analytic_centres(three_peak_frame, localizer):
    frame, peaks = three_peak_frame
    table = find_peaks(frame, localizer=localizer)
    assert list(table.columns) == PEAK_COLUMNS
    assert table.ok.sum() == 3
    tol = 0.15 if localizer == "centroid" else 0.02
    assert _match(table, peaks).max() < tol
    assert np.isfinite(table.select_dtypes("number").to_numpy()).all()


def test_binning_reports_full_resolution_positions(three_peak_frame):
    frame, peaks = three_peak_frame
    table = find_peaks(frame, localizer="gauss", bin=2)
    assert table.ok.sum() == 3
    assert _match(table, peaks).max() < 0.02


def test_edge_peak_is_flagged_not_crashing():
    frame = render_frame((48, 48), [(1.2, 24.0, 1.0, 5000.0), (24.0, 24.0, 1.0, 5000.0)])
    table = find_peaks(frame, localizer="gauss")
    edge = table[table.x_det < 5]
    assert len(edge) == 1 and not edge.ok.iloc[0] and edge.reason.iloc[0] == "edge"
    assert table[table.x_det > 5].ok.all()


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_flat_frame_gives_empty_table(value):
    table = find_peaks(np.full((32, 32), value), localizer="pvoigt")
    assert len(table) == 0 and list(table.columns) == PEAK_COLUMNS


def test_nan_pixels_never_reach_the_table(three_peak_frame):
    frame, peaks = three_peak_frame
    frame = frame.copy()
    frame[5, 5] = np.nan
    frame[60, 2] = np.inf
    table = find_peaks(frame, localizer="gauss")
    assert np.isfinite(table.select_dtypes("number").to_numpy()).all()
    assert _match(table, peaks).max() < 0.05


class _BrokenSeries:
    """A series whose frame 1 cannot be read, like a corrupt chunk."""

    def __init__(self, frames):
        self.frames = frames
        self.shape = frames.shape[1:]
        self.dtype = frames.dtype
        self.path = "broken.h5"

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, i):
        if i == 1:
            raise FrameReadError(self.path, 1, "corrupt chunk")
        return self.frames[i]


def test_unreadable_frame_is_skipped_and_reported(three_peak_frame):
    frame, _ = three_peak_frame
    series = _BrokenSeries(np.stack([frame] * 3))
    table = find(series, localizer="centroid", progress=False)
    status = table.attrs["frames"]
    assert list(status.status) == ["ok", "skipped", "ok"]
    assert "corrupt chunk" in status.reason.iloc[1]
    assert sorted(table.frame.unique()) == [0, 2]
    with pytest.raises(FrameReadError):
        find(series, localizer="centroid", progress=False, strict=True)


def test_find_series_from_file(drifting_series):
    path, truth = drifting_series
    table = find(path, localizer="gauss", progress=False)
    assert set(table.frame) == set(range(12))
    ok = table[table.ok]
    assert len(ok) == len(truth)
    # every true peak found within 0.1 px (Poisson noise, 6000 counts)
    for f, _, x, y in truth:
        sel = ok[ok.frame == f]
        assert np.hypot(sel.x - x, sel.y - y).min() < 0.1
    assert isinstance(table, pd.DataFrame)


def test_detecting_on_threads_gives_the_serial_result(drifting_series, three_peak_frame):
    from braggtrack.config import FindConfig
    from braggtrack.io import open_frames
    from braggtrack.pipeline import detect_chunk, localize_chunk

    path, _ = drifting_series
    config = FindConfig(localizer="gauss")
    with open_frames(path) as series:
        one = localize_chunk(detect_chunk(series, range(12), config), config)
        three = localize_chunk(detect_chunk(series, range(12), config, threads=3), config)
    pd.testing.assert_frame_equal(one.peaks, three.peaks)
    pd.testing.assert_frame_equal(one.frames, three.frames)
    # an unreadable frame is still reported in frame order
    frame, _ = three_peak_frame
    broken = _BrokenSeries(np.stack([frame] * 3))
    chunk = detect_chunk(broken, range(3), config, threads=2)
    assert [s[1] for s in chunk.status] == ["ok", "skipped", "ok"]
    assert [d.columns["frame"][0] for d in chunk.frames] == [0, 2]
