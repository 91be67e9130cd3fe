"""End-to-end behaviour of find_peaks / find on frames whose answer is known analytically."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from braggtrack.errors import FrameReadError, OptionError
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


def test_negative_pixels_of_signed_integer_frames_are_flags_not_counts():
    peaks = [(20.3, 15.7, 1.0, 5000.0), (45.6, 40.2, 1.2, 8000.0), (30.4, 48.6, 1.0, 6000.0)]
    clean = np.rint(render_frame((64, 64), peaks)).astype(np.int32)
    saturated = clean.astype(np.uint16)
    saturated[16, 21] = 65535  # beside the maximum of the first peak
    flagged = clean.copy()
    flagged[16, 21] = -2  # Pilatus bad pixel, same place
    flagged[58, :] = -1  # an isolated module-gap row, far from every peak
    want = find_peaks(saturated, localizer="gauss")
    table = find_peaks(flagged, localizer="gauss")
    first = table[np.hypot(table.x - 20.3, table.y - 15.7) < 1.5]
    assert len(first) == 1 and not first.ok.iloc[0]
    assert first.reason.iloc[0] == want[np.hypot(want.x - 20.3, want.y - 15.7) < 1.5].reason.iloc[0]
    assert first.reason.iloc[0] == "mask"
    assert table.ok.sum() == 2 and _match(table[table.ok], peaks[1:]).max() < 0.02
    # float frames keep negative values (dark-subtracted data): no pixel is masked for them
    negative = render_frame((64, 64), peaks, background=0.0).astype(np.float32)
    negative[58, :] = -1.0
    negative[16, 21] -= 0.5
    table = find_peaks(negative, localizer="gauss", threshold=50)
    assert table.ok.sum() == 3 and _match(table, peaks).max() < 0.02


def test_binned_edge_is_decided_at_full_resolution():
    # 515 x 517 with --bin 4: the last 3 rows and 1 column do not fill a bin and are cropped
    # from the binned frame; whether a peak is at the edge must not depend on that.
    peaks = [(200.3, 509.1, 1.0, 6000.0), (100.4, 100.7, 1.0, 6000.0),
             (300.6, 513.2, 1.0, 6000.0), (515.2, 250.3, 1.0, 6000.0)]
    frame = np.rint(render_frame((515, 517), peaks, background=20.0)).astype(np.uint16)
    for b in (1, 4):
        table = find_peaks(frame, localizer="gauss", bin=b, patch=11)
        assert len(table) == 4, (b, table)
        reasons = []
        for x, y, _, _ in peaks:
            d = np.hypot(table.x - x, table.y - y)
            assert d.min() < 2, (b, x, y, table)
            reasons.append(table.reason.iloc[int(np.argmin(d))])
        # y = 509: its 11 x 11 patch (rows 504..514) fits the frame; y = 513 and x = 515 do not
        assert reasons == ["", "", "edge", "edge"], (b, table)
        ok = table[table.ok]
        assert _match(ok, peaks[:2]).max() < 0.02


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5, True])
def test_find_refuses_a_chunk_size_below_one(three_peak_frame, chunk_size):
    frame, _ = three_peak_frame
    with pytest.raises(OptionError, match="--chunk-size must be >= 1 frames"):
        find(np.stack([frame] * 2), localizer="centroid", progress=False, chunk_size=chunk_size)


def _pair_frame(separation: float, seed: int = 3) -> tuple[np.ndarray, float, float]:
    """Two round Gaussian peaks (4000 and 3000 counts high, sigma 1 px) on a 20-count
    background, ``separation`` px apart along x."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:128, :128]
    x1, y1 = 60.3, 64.4
    mean = 20 + 4000 * np.exp(-((xx - x1) ** 2 + (yy - y1) ** 2) / 2) \
        + 3000 * np.exp(-((xx - x1 - separation) ** 2 + (yy - y1) ** 2) / 2)
    return rng.poisson(mean).astype(np.uint16), x1, y1


@pytest.mark.parametrize("separation", [4.0, 5.0, 6.0])
def test_one_peak_localizers_do_not_accept_a_position_pulled_by_a_neighbour(separation):
    frame, x1, y1 = _pair_frame(separation)
    for localizer in ("centroid", "gauss", "pvoigt", "braggnn"):
        table = find_peaks(frame, localizer=localizer)
        ok = table[table.ok]
        # Whatever is accepted is where a true peak is (0.1 px), never between the two.
        d = np.minimum(np.hypot(ok.x - x1, ok.y - y1), np.hypot(ok.x - x1 - separation, ok.y - y1))
        assert (d < 0.1).all(), (localizer, ok[["x", "y", "x_err"]])
        if localizer == "centroid":
            assert "crowded" in set(table.reason)
        if localizer == "braggnn":
            # Trained on pairs, and the fainter one is not rejected as off-centre for its
            # brighter neighbour's maximum: both are found.
            assert len(ok) == 2


def test_far_apart_peaks_are_not_crowded():
    frame, _, _ = _pair_frame(12.0)
    for localizer in ("centroid", "pvoigt"):
        table = find_peaks(frame, localizer=localizer)
        assert table.ok.sum() == 2 and "crowded" not in set(table.reason)


# -------------------------------------------------------------------- review 7 defects
def _stack_of_distinct_frames(three_peak_frame, n=4):
    """``n`` frames, frame ``i`` holding its three peaks shifted right by ``i`` pixels, so
    that a table's x values tell which frame was really processed."""
    frame, _ = three_peak_frame
    return np.stack([np.roll(frame, i, axis=1) for i in range(n)])


def test_frames_selects_by_real_frame_number(three_peak_frame):
    stack = _stack_of_distinct_frames(three_peak_frame)
    every = find(stack, localizer="centroid", progress=False)
    for frames in ([3, 1], np.array([2], np.int64), [2.0], slice(-2, None)):
        table = find(stack, localizer="centroid", progress=False, frames=frames)
        wanted = list(range(4))[frames] if isinstance(frames, slice) else \
            [int(i) for i in frames]
        assert sorted(set(table.frame)) == sorted(wanted)
        for i in wanted:  # the peaks of frame i are those of frame i, labelled i
            np.testing.assert_allclose(np.sort(table[table.frame == i].x),
                                       np.sort(every[every.frame == i].x))
        assert table.attrs["frames"]["frame"].tolist() == wanted


@pytest.mark.parametrize("frames,needle", [
    ([-1], "frames: -1 is negative"),
    ([4], "frames: 4 is not a frame of this series"),
    ([0, 100], "frames: 100 is not a frame"),
    ([0, 0], "frames: 0 is given twice"),
    ([1.5], "frames: 1.5 is not a whole frame number"),
    ([float("nan")], "frames: nan is not a whole frame number"),
    (np.ones(4, bool), "frames: True is a boolean"),
    ([True], "frames: True is a boolean"),
    (["1"], "frames: '1' is not a whole frame number"),
    (3, "frames must be a sequence of frame numbers or a slice"),
    ("01", "frames must be a sequence"),
    (slice(0, 4, 0), "is not a usable slice"),
])
def test_frames_refuses_what_is_not_a_list_of_distinct_frame_numbers(
        three_peak_frame, frames, needle):
    stack = _stack_of_distinct_frames(three_peak_frame)
    with pytest.raises(OptionError, match=needle) as info:
        find(stack, localizer="centroid", progress=False, frames=frames)
    message = str(info.value)
    assert "\n" not in message
    if not isinstance(frames, (int, str, slice)):
        assert "the series has 4 frames, 0..3" in message


@pytest.mark.parametrize("options,needle", [
    ({"threshold": "x"}, "--threshold must be a number or None, got 'x'"),
    ({"min_snr": None}, "--min-snr must be a number, got None"),
    ({"max_peaks": True}, "--max-peaks must be a whole number, got True"),
    ({"edge": 1.5}, "--edge must be a whole number, got 1.5"),
    ({"auto_mask": "no"}, "--auto-mask must be True or False"),
    ({"localizer": 3}, "--localizer must be a string"),
    ({"treshold": 5.0}, "unknown option 'treshold'; the options are threshold, "),
])
def test_wrong_option_types_are_one_line_option_errors(three_peak_frame, options, needle):
    frame, _ = three_peak_frame
    options = {"localizer": "centroid", **options}
    with pytest.raises(OptionError, match=needle):
        find(frame[None], progress=False, **options)
    with pytest.raises(OptionError, match=needle):
        find_peaks(frame, **options)


def test_config_must_be_a_find_config(three_peak_frame):
    frame, _ = three_peak_frame
    with pytest.raises(OptionError, match="config must be a FindConfig, got dict"):
        find_peaks(frame, config={"localizer": "centroid"}, threshold=1.0)


def test_whole_float_options_are_integers(three_peak_frame):
    frame, _ = three_peak_frame
    a = find_peaks(frame, localizer="centroid", patch=11.0, max_peaks=2.0)
    b = find_peaks(frame, localizer="centroid", patch=11, max_peaks=2)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 2


def test_dark_subtracted_integer_frames_warn_that_auto_mask_hides_them(logged):
    # Negative values of a signed integer frame are detector flags to auto-mask (Pilatus gaps
    # -1, bad pixels -2); counts dark-subtracted upstream and stored as int32 have ~half their
    # pixels negative, and masking them silently rejected most peaks.
    rng = np.random.default_rng(1)
    frames = (rng.poisson(20.0, (2, 48, 48)) - 20).astype(np.int32)
    frames[:, 20:23, 20:23] += 500
    find(frames, progress=False, localizer="centroid")
    assert any("% of the pixels of the first frame are negative" in m
               and "--no-auto-mask" in m for m in logged), logged
    logged.clear()
    find(frames, progress=False, localizer="centroid", auto_mask=False)
    find(np.abs(frames), progress=False, localizer="centroid")
    assert not [m for m in logged if "negative" in m]


def test_a_dark_above_the_frames_everywhere_warns(logged):
    # e.g. a dark of a longer exposure: every corrected pixel is 0 and nothing is found
    from braggtrack.pipeline import Calibration

    frames = np.full((2, 32, 32), 20.0, np.float32)
    frames[:, 10:13, 10:13] = 60.0
    dark = Calibration(dark=np.full((32, 32), 100.0, np.float32))
    assert len(find(frames, calibration=dark, progress=False, localizer="centroid")) == 0
    assert any("the dark is at or above frame 0 at 100.0 % of the pixels that hold counts"
               in m for m in logged)
    logged.clear()
    find(frames, calibration=Calibration(dark=np.full((32, 32), 15.0, np.float32)),
         progress=False, localizer="centroid")
    # sparse photon counting: frame and closed-shutter dark are 0 almost everywhere
    sparse = np.zeros((2, 32, 32), np.int32)
    sparse[:, 10:13, 10:13] = 40
    closed = np.zeros((32, 32), np.float32)
    closed[0, 0] = 3.0
    find(sparse, calibration=Calibration(dark=closed), progress=False, localizer="centroid")
    assert not logged


def test_a_frame_of_no_finite_pixel_is_skipped_not_empty():
    # a failed readout is not "a frame without peaks"
    frames = np.full((3, 32, 32), 20.0, np.float32)
    frames[1] = np.nan
    frames[2, 0, 0] = np.nan  # one NaN pixel only: processed
    peaks = find(frames, progress=False, localizer="centroid")
    status = peaks.attrs["frames"].set_index("frame")
    assert status.loc[1, "status"] == "skipped" and "no finite pixel" in status.loc[1, "reason"]
    assert (status.loc[[0, 2], "status"] == "ok").all()
    with pytest.raises(FrameReadError, match="frame 1: no finite pixel"):
        find(frames, progress=False, localizer="centroid", strict=True)


def _streak_frame(seed: int = 8, n: int = 9, size: int = 128):
    """Streaks (sigma 5 x 0.7 px along a random angle, 60,000 counts, background 20, Poisson),
    rendered here by 9 x 9 sub-pixel sampling: each can hold two maxima 3 px or more apart."""
    rng = np.random.default_rng(seed)
    centres = [(24.0 + 40 * i + rng.uniform(-3, 3), 24.0 + 40 * j + rng.uniform(-3, 3))
               for i in range(3) for j in range(3)][:n]
    sub = (np.arange(9) + 0.5) / 9 - 0.5
    ys, xs = np.mgrid[0:size, 0:size]
    fine_x = (xs[..., None, None] + sub[None, None, None, :]).astype(np.float64)
    fine_y = (ys[..., None, None] + sub[None, None, :, None]).astype(np.float64)
    lam = np.full((size, size), 20.0)
    for x0, y0 in centres:
        c, s = np.cos(a := rng.uniform(0, np.pi)), np.sin(a)
        u = c * (fine_x - x0) + s * (fine_y - y0)
        v = -s * (fine_x - x0) + c * (fine_y - y0)
        g = np.exp(-0.5 * (u / 5.0) ** 2 - 0.5 * (v / 0.7) ** 2).mean(axis=(2, 3))
        lam += 60000 * g / (2 * np.pi * 5.0 * 0.7)
    return rng.poisson(lam).astype(np.uint16), np.array(centres)


@pytest.mark.parametrize("seed", [8, 9])
def test_a_streak_found_twice_is_accepted_once(seed):
    frame, centres = _streak_frame(seed)
    table = find_peaks(frame)  # default localizer (braggnn)
    ok = table[table.ok]
    nearest = np.argmin(np.hypot(ok.x.to_numpy()[:, None] - centres[:, 0],
                                 ok.y.to_numpy()[:, None] - centres[:, 1]), axis=1)
    assert np.bincount(nearest, minlength=len(centres)).tolist() == [1] * len(centres)
    gaps = np.hypot(ok.x.to_numpy()[:, None] - ok.x.to_numpy(), ok.y.to_numpy()[:, None] - ok.y.to_numpy())
    assert (gaps[np.triu_indices(len(ok), 1)] >= 1.5).all()
    # The second rows are kept, marked, next to the row that was accepted.
    dup = table[table.reason == "duplicate"]
    for x, y in zip(dup.x, dup.y, strict=True):
        assert np.hypot(ok.x - x, ok.y - y).min() < 1.5


def test_two_real_equal_peaks_placed_close_are_both_kept():
    # Equal peaks 3 px apart: each localized ~0.9 px towards the other, rows 1.2 px apart.
    # Their maxima are deep and equal: two peaks, not one found twice. A shoulder (shallow
    # maximum) or a clearly fainter maximum at the same place is a duplicate.
    from braggtrack.pipeline import _duplicates

    frame = np.zeros(4, np.int64)
    x = np.array([10.0, 11.2, 30.0, 31.0])
    y = np.array([5.0, 5.0, 8.0, 8.0])
    birth = np.array([100.0, 98.0, 100.0, 60.0])  # pair 2: 0.6 of its partner's height
    persistence = np.array([100.0, 22.0, 100.0, 30.0])  # pair 1: 0.22 of its height: deep
    death = np.zeros(4)
    assert _duplicates(frame, x, y, birth, death, persistence, np.ones(4, bool)).tolist() == [
        False, False, False, True]
    # The same peaks on a pedestal of 3,000 counts: heights count from where the brighter
    # one's component ends, so equal peaks stay equal and deep.
    assert _duplicates(frame, x, y, birth + 3000, death + 3000, persistence,
                       np.ones(4, bool)).tolist() == [False, False, False, True]
    shallow = persistence.copy()
    shallow[1] = 9.0  # 0.09 of its height: a shoulder of the first peak
    assert _duplicates(frame, x, y, birth, death, shallow, np.ones(4, bool)).tolist() == [
        False, True, False, True]
