"""Tests of braggtrack.detect: persistence against analytic answers, a brute-force
level-by-level reference (scipy.ndimage.label), findpeaks' topology method, and the
selection rules of select_peaks."""

from __future__ import annotations

import importlib.util
import logging
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage

from braggtrack import detect
from braggtrack.detect import persistence, select_peaks
from braggtrack.errors import OptionError

# ----------------------------------------------------------------------------- helpers


def as_dict(table: pd.DataFrame) -> dict:
    """{(y, x): (birth, death, persistence)} of a persistence table."""
    return {
        (int(y), int(x)): (float(b), float(d), float(p))
        for y, x, b, d, p in zip(table.y, table.x, table.birth, table.death, table.persistence,
                                 strict=True)
    }


def gaussian(shape, y0, x0, sigma, amplitude):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return amplitude * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2.0 * sigma**2))


def reference_persistence(img, threshold=None, connectivity=8):
    """Brute force, independent of the union-find: label the super-level set at every level.

    Pixels are ranked by (value, raster index) - the documented tie rule - so the ranks
    are unique.  A local maximum dies at the highest level at which its connected
    component of ``{rank >= level}`` holds a higher pixel; a maximum that never meets a
    higher pixel dies at the threshold, or at its island's lowest value.
    """
    img = np.asarray(img, dtype=np.float64)
    h, w = img.shape
    flat = img.ravel()
    valid = np.isfinite(flat)
    if threshold is not None:
        valid &= flat > threshold
    n = flat.size
    by_rank = np.lexsort((np.arange(n), np.where(valid, flat, -np.inf)))
    rank = np.empty(n, np.int64)
    rank[by_rank] = np.arange(n)
    rank_img = np.where(valid, rank, -1).reshape(h, w)
    valid_img = valid.reshape(h, w)
    structure = np.ones((3, 3), bool) if connectivity == 8 else ndimage.generate_binary_structure(2, 1)

    # Local maxima: no valid neighbour of higher rank.
    padded = np.pad(rank_img, 1, constant_values=-1)
    is_max = valid_img.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if (dy, dx) == (0, 0) or not structure[dy + 1, dx + 1]:
                continue
            is_max &= rank_img > padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    maxima = {(int(y), int(x)): rank_img[y, x] for y, x in zip(*np.nonzero(is_max), strict=True)}

    death = {}
    for level in sorted(rank[valid], reverse=True):
        pending = [p for p in maxima if p not in death and maxima[p] > level]
        if not pending:
            continue
        labels, _ = ndimage.label(rank_img >= level, structure)
        idx = [labels[p] for p in pending]
        top = ndimage.maximum(rank_img, labels, idx)
        for p, t in zip(pending, np.atleast_1d(top), strict=True):
            if t > maxima[p]:
                death[p] = flat[by_rank[level]]
    islands, _ = ndimage.label(valid_img, structure)
    out = {}
    for p, r in maxima.items():
        birth = flat[by_rank[r]]
        if p in death:
            d = death[p]
        elif threshold is not None:
            d = float(threshold)
        else:
            d = img[islands == islands[p]].min()
        out[p] = (float(birth), float(d), float(birth - d))
    return out


def assert_same(got: pd.DataFrame, expected: dict):
    g = as_dict(got)
    assert set(g) == set(expected)
    for p, values in expected.items():
        np.testing.assert_allclose(g[p], values, rtol=1e-12, atol=0, err_msg=str(p))


# ------------------------------------------------------------------ analytic answers


def test_row_profile_by_hand():
    t = persistence(np.array([[0, 5, 1, 3, 0]]))
    assert as_dict(t) == {(0, 1): (5.0, 0.0, 5.0), (0, 3): (3.0, 1.0, 2.0)}
    assert list(t.columns) == ["y", "x", "birth", "death", "persistence"]
    assert t.y.dtype == np.int64 and t.birth.dtype == np.float64


def two_gaussians_with_bridge():
    """Peaks of 100 and 60 counts joined only by a ridge whose lowest point is 7.5."""
    img = gaussian((21, 41), 10, 10, 2.0, 100.0) + gaussian((21, 41), 10, 30, 2.0, 60.0)
    img[img < 1.0] = 0.0
    img[10, 10:31] = np.maximum(img[10, 10:31], 7.5)
    return img


def test_two_gaussians_known_saddle():
    img = two_gaussians_with_bridge()
    # Off the bridge row the two blobs are far apart (> 5 sigma), so the only way from
    # one maximum to the other at a level above 1 runs along the bridge: saddle = 7.5.
    assert_same(persistence(img, threshold=0.0),
                {(10, 10): (100.0, 0.0, 100.0), (10, 30): (60.0, 7.5, 52.5)})
    t = persistence(img)  # whole frame: the floor is 0, so same values
    assert as_dict(t)[(10, 10)] == (100.0, 0.0, 100.0)
    assert as_dict(t)[(10, 30)] == (60.0, 7.5, 52.5)
    assert t.persistence.iloc[0] == 100.0 and t.persistence.iloc[1] == 52.5


def test_single_peak_island_dies_at_threshold_or_floor():
    img = gaussian((31, 31), 15, 15, 2.5, 80.0) + 5.0
    assert_same(persistence(img), {(15, 15): (85.0, 5.0 + img.min() - 5.0, 85.0 - img.min())})
    assert_same(persistence(img, threshold=20.0), {(15, 15): (85.0, 20.0, 65.0)})
    assert persistence(img, threshold=85.0).empty


def test_thresholded_islands():
    img = np.zeros((40, 40))
    heights = {(8, 8): 30.0, (8, 30): 50.0, (30, 20): 70.0}
    for (y, x), a in heights.items():
        img += gaussian(img.shape, y, x, 1.5, a)
    img[img <= 2.0] = 0.0
    # With the zero background (threshold 0) every island's maximum dies at 0.
    assert_same(persistence(img, threshold=0.0), {p: (a, 0.0, a) for p, a in heights.items()})
    # Raw (not zeroed) frame, threshold 10: each island's maximum dies at 10.
    raw = sum(gaussian(img.shape, y, x, 1.5, a) for (y, x), a in heights.items())
    assert_same(persistence(raw, threshold=10.0),
                {p: (a, 10.0, a - 10.0) for p, a in heights.items()})
    # Threshold None on the zeroed frame: islands meet at 0; the zero background adds
    # one persistence-0 maximum at its last pixel in raster order.
    t = as_dict(persistence(img))
    assert t.pop((39, 39)) == (0.0, 0.0, 0.0)
    assert t == {p: (a, 0.0, a) for p, a in heights.items()}


# --------------------------------------------------------------------- ties, plateaus


def test_plateau_maximum_is_its_last_pixel_in_raster_order():
    img = np.zeros((8, 8), np.uint16)
    img[2:5, 3:6] = 7
    assert as_dict(persistence(img, threshold=0)) == {(4, 5): (7.0, 0.0, 7.0)}


def test_equal_peaks_later_raster_pixel_is_higher():
    t = persistence(np.array([[0, 5, 1, 5, 0]]))
    assert as_dict(t) == {(0, 3): (5.0, 0.0, 5.0), (0, 1): (5.0, 1.0, 4.0)}
    # Equal persistence: the higher maximum (later in raster order) comes first.
    t = persistence(np.array([[4, 0, 0, 4]]), threshold=0)
    assert list(zip(t.y, t.x, strict=True)) == [(0, 3), (0, 0)]
    assert list(t.persistence) == [4.0, 4.0]


def test_non_convex_plateau_gives_zero_persistence_extra_maximum():
    # A "V" of 3s: (1,0) and (1,2) have no later-raster neighbour on the plateau.
    img = np.zeros((3, 3), np.int32)
    img[1, 0] = img[0, 1] = img[1, 2] = 3
    t = as_dict(persistence(img, threshold=0))
    assert t == {(1, 2): (3.0, 0.0, 3.0), (1, 0): (3.0, 3.0, 0.0)}


# -------------------------------------------------------------- edge cases, bad input


def test_empty_all_zero_and_one_pixel_frames():
    for shape in [(0, 0), (0, 5), (4, 0)]:
        t = persistence(np.zeros(shape))
        assert t.empty and list(t.columns) == ["y", "x", "birth", "death", "persistence"]
    assert as_dict(persistence(np.zeros((4, 5)))) == {(3, 4): (0.0, 0.0, 0.0)}
    assert persistence(np.zeros((4, 5)), threshold=0).empty
    assert as_dict(persistence(np.array([[7.0]]))) == {(0, 0): (7.0, 7.0, 0.0)}
    assert as_dict(persistence(np.array([[7]]), threshold=2)) == {(0, 0): (7.0, 2.0, 5.0)}


def test_nan_and_inf_pixels_take_no_part():
    row = np.array([[1.0, 5.0, np.nan, 3.0, 2.0]])
    expected = {(0, 1): (5.0, 1.0, 4.0), (0, 3): (3.0, 2.0, 1.0)}
    assert as_dict(persistence(row)) == expected
    row[0, 2] = np.inf
    assert as_dict(persistence(row)) == expected
    assert as_dict(persistence(row, threshold=0.0)) == {(0, 1): (5.0, 0.0, 5.0),
                                                        (0, 3): (3.0, 0.0, 3.0)}
    assert persistence(np.full((3, 3), np.nan)).empty
    table = persistence(np.where(np.eye(6) > 0, np.nan, np.arange(36.0).reshape(6, 6)))
    assert np.isfinite(table[["birth", "death", "persistence"]].to_numpy()).all()


def test_bad_input_raises_option_error():
    with pytest.raises(OptionError, match="2-D"):
        persistence(np.zeros((2, 3, 4)))
    with pytest.raises(OptionError, match="connectivity"):
        persistence(np.zeros((3, 3)), connectivity=6)
    with pytest.raises(OptionError, match="threshold"):
        persistence(np.zeros((3, 3)), threshold=float("nan"))
    with pytest.raises(OptionError, match="threshold"):
        persistence(np.zeros((3, 3)), threshold="high")
    with pytest.raises(OptionError, match="real numbers"):
        persistence(np.zeros((3, 3), complex))
    with pytest.raises(OptionError, match="real numbers"):
        persistence(np.array([["a", "b"]]))


def test_threshold_compared_in_the_frame_dtype():
    rng = np.random.default_rng(2)
    for dtype in [np.uint8, np.uint16, np.int32, np.uint32, np.float16, np.float32, np.float64]:
        img = rng.integers(0, 60, (6, 7)).astype(dtype)
        if img.dtype.kind == "f":
            img = (img / np.float32(7.0)).astype(dtype)  # values that 0.1 steps do not hit
        for t in [-3.0, 0.0, 0.1, 2.5, 3.0, 15.5, 1e9, -1e30, 1e300]:
            exact = img.astype(np.float64) > t
            np.testing.assert_array_equal(detect._above(detect._as_image(img), t), exact,
                                          err_msg=f"{img.dtype} > {t}")
    f32 = np.array([[0.1, 0.3, 0.2]], np.float32)
    # float32(0.1) > 0.1 in float64, so that pixel is above a threshold of 0.1.
    assert set(persistence(f32, threshold=0.1).x) == {1}
    assert as_dict(persistence(f32, threshold=0.25)) == {
        (0, 1): (float(np.float32(0.3)), 0.25, float(np.float32(0.3)) - 0.25)}
    table = persistence(np.arange(30, dtype=np.uint16).reshape(5, 6), threshold=15.5)
    assert as_dict(table) == {(4, 5): (29.0, 15.5, 13.5)}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.uint32,
                                   np.int64, np.uint64, np.float16, np.float32, np.float64,
                                   bool])
def test_same_answer_for_every_dtype(dtype):
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2, (12, 14)) if dtype is bool else rng.integers(0, 40, (12, 14))
    expected = reference_persistence(base)
    assert_same(persistence(base.astype(dtype)), expected)


def test_negative_values_and_radix_digits():
    rng = np.random.default_rng(6)
    img = rng.normal(0.0, 1e6, (9, 11))  # float keys span many 11-bit digits
    assert_same(persistence(img), reference_persistence(img))
    ints = rng.integers(-(2**62), 2**62, (7, 9))
    table = as_dict(persistence(ints))
    ref = reference_persistence(ints.astype(np.float64))
    assert set(table) == set(ref)


def test_radix_order_matches_lexsort():
    rng = np.random.default_rng(7)
    for high in [3, 5000, 2**40, 2**63]:
        keys = rng.integers(0, high, 5000, dtype=np.uint64)
        order = detect._radix_order_descending(keys)
        n = keys.size
        expected = np.lexsort((-np.arange(n), -keys.astype(np.float64)))
        # float64 loses low bits of huge keys; compare through the keys themselves.
        assert (np.diff(keys[order].astype(object)) <= 0).all()
        ties = keys[order][1:] == keys[order][:-1]
        assert (order[1:][ties] < order[:-1][ties]).all()
        if high < 2**52:
            np.testing.assert_array_equal(order, expected)
    assert detect._radix_order_descending(np.zeros(0, np.uint64)).size == 0


# -------------------------------------------------------- brute-force reference + properties

small_images = hnp.arrays(
    dtype=st.sampled_from([np.int16, np.float64]),
    shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=7),
    elements=st.integers(-3, 4),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(img=small_images, threshold=st.sampled_from([None, -1.5, 0, 2]),
       connectivity=st.sampled_from([4, 8]))
def test_matches_brute_force_reference_with_ties(img, threshold, connectivity):
    got = persistence(img, threshold, connectivity=connectivity)
    assert_same(got, reference_persistence(img, threshold, connectivity))
    # Sorted most persistent first.
    assert (np.diff(got.persistence.to_numpy()) <= 0).all()


def distinct_image(seed, h, w):
    """Values without ties (a random permutation), as floats."""
    rng = np.random.default_rng(seed)
    return rng.permutation(h * w).reshape(h, w).astype(np.float64) * 0.5 + 3.25


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(1, 12), w=st.integers(1, 12),
       shift=st.integers(-1000, 1000))
def test_invariant_to_constant_offset(seed, h, w, shift):
    img = distinct_image(seed, h, w)
    a = persistence(img)
    b = persistence(img + shift)
    pd.testing.assert_frame_equal(a[["y", "x", "persistence"]], b[["y", "x", "persistence"]])
    np.testing.assert_array_equal(b.birth, a.birth + shift)
    # With a threshold moved along with the frame the answer is the same too.
    c, d = persistence(img, 10.0), persistence(img + shift, 10.0 + shift)
    pd.testing.assert_frame_equal(c[["y", "x", "persistence"]], d[["y", "x", "persistence"]])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(1, 12), w=st.integers(1, 12),
       connectivity=st.sampled_from([4, 8]))
def test_invariant_to_transpose_and_flips(seed, h, w, connectivity):
    img = distinct_image(seed, h, w)
    base = as_dict(persistence(img, connectivity=connectivity))
    transforms = [
        (img.T, lambda y, x: (x, y)),
        (img[::-1], lambda y, x: (h - 1 - y, x)),
        (img[:, ::-1], lambda y, x: (y, w - 1 - x)),
        (img[::-1, ::-1], lambda y, x: (h - 1 - y, w - 1 - x)),
    ]
    for moved, where in transforms:
        expected = {where(*p): v for p, v in base.items()}
        assert as_dict(persistence(moved, connectivity=connectivity)) == expected


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(1, 12), w=st.integers(2, 12))
def test_peaks_count_equals_strict_local_maxima(seed, h, w):
    img = distinct_image(seed, h, w)
    padded = np.pad(img, 1, constant_values=-np.inf)
    neighbours = ndimage.maximum_filter(padded, footprint=[[1, 1, 1], [1, 0, 1], [1, 1, 1]],
                                        mode="constant", cval=-np.inf)[1:-1, 1:-1]
    table = persistence(img)
    assert (table.persistence > 0).sum() == (img > neighbours).sum()
    expected = set(zip(*np.nonzero(img > neighbours), strict=True))
    assert set(zip(table.y, table.x, strict=True)) == expected


# ---------------------------------------------------------------- findpeaks equality

def findpeaks_topology(img):
    fp_mod = pytest.importorskip("findpeaks")
    for name in ("findpeaks", "findpeaks.stats", "findpeaks.findpeaks"):
        logging.getLogger(name).setLevel(60)
    fp = fp_mod.findpeaks(method="topology", scale=False, denoise=None, togray=False,
                          imsize=None, limit=None, whitelist=["peak"], verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fp.fit(img)["persistence"]
    return {(int(y), int(x)): (float(b), float(d), float(s))
            for y, x, b, d, s in zip(res.y, res.x, res.birth_level, res.death_level, res.score,
                                     strict=True)}


def assert_matches_findpeaks(img, threshold=None, missing_zero_peak=False):
    """Same maxima and persistence; findpeaks nudges nonzero pixels by index * eps to break
    ties (so an absolute slack of a few ``size * eps`` ulps), and puts the global
    maximum's death at 0 where persistence() puts the floor."""
    theirs = findpeaks_topology(img)
    ours = as_dict(persistence(img, threshold))
    slack = 4 * img.size * np.finfo(np.float64).eps * max(1.0, float(np.max(img)))
    # findpeaks with limit=None keeps only maxima with persistence > min(frame) - 1 (its
    # nudged values decide the borderline cases, which are left out of the comparison).
    top = max(ours, key=lambda p: (ours[p][0], p[0] * img.shape[1] + p[1]))
    limit = float(np.min(img)) - 1.0
    ours = {p: v for p, v in ours.items() if v[2] > limit + slack or p == top}
    theirs = {p: v for p, v in theirs.items() if v[2] > limit + slack or p == top}
    if missing_zero_peak:  # the zero background's own maximum is not above a threshold of 0
        zero = [p for p, v in theirs.items() if v[0] == 0.0]
        assert len(zero) <= 1
        for p in zero:
            del theirs[p]
    assert set(ours) == set(theirs)
    for p, (b, d, s) in ours.items():
        tb, td, ts = theirs[p]
        assert abs(b - tb) <= slack
        if p == top:
            assert td == 0.0
            assert d == (0.0 if threshold is not None else float(np.min(img)))
            continue
        assert abs(s - ts) <= 1e-9 * abs(s) + slack, (p, ours[p], theirs[p])
        assert abs(d - td) <= 1e-9 * abs(d) + slack


def test_findpeaks_random_floats():
    rng = np.random.default_rng(11)
    assert_matches_findpeaks(rng.random((40, 40)))


def test_findpeaks_blobs_and_noise():
    rng = np.random.default_rng(12)
    img = sum(gaussian((64, 64), y, x, s, a) for y, x, s, a in
              [(20, 20, 3, 10), (40, 45, 4, 6), (30, 10, 2, 8), (41, 49, 2, 5.5)])
    assert_matches_findpeaks(img + 0.05 * rng.random(img.shape))


def test_findpeaks_thresholded_sum_of_gaussians():
    rng = np.random.default_rng(13)
    img = np.zeros((96, 96))
    for _ in range(25):
        y, x = rng.uniform(3, 93, 2)
        img += gaussian(img.shape, y, x, rng.uniform(0.8, 2.5), rng.uniform(20, 400))
    img += rng.normal(5.0, 1.0, img.shape)
    img[img <= 8.0] = 0.0  # as users threshold: low pixels set to 0 (ties at 0)
    assert_matches_findpeaks(img)
    assert_matches_findpeaks(img, threshold=0.0, missing_zero_peak=True)


def test_findpeaks_on_a_high_background_drops_shallow_maxima():
    # Background ~ 30 counts: findpeaks (limit=None) keeps persistence > min - 1 only.
    rng = np.random.default_rng(15)
    img = rng.poisson(gaussian((40, 40), 20, 18, 2.5, 200) + 30).astype(np.uint32)
    assert float(img.min()) - 1 > 2
    assert_matches_findpeaks(img)
    assert (persistence(img).persistence <= float(img.min()) - 1).any()  # the filter bites


def test_findpeaks_integer_counts_with_ties():
    rng = np.random.default_rng(14)
    img = rng.poisson(gaussian((48, 48), 24, 20, 3, 40) + 6).astype(np.uint16)
    assert_matches_findpeaks(img)
    img[img < 9] = 0
    assert_matches_findpeaks(img)
    assert_matches_findpeaks(img, threshold=0, missing_zero_peak=True)


# ------------------------------------------------------------------- select_peaks

def peak_table(rows):
    t = pd.DataFrame(rows, columns=["y", "x", "persistence"])
    t["y"] = t["y"].astype(np.int64)
    t["x"] = t["x"].astype(np.int64)
    return t


def test_select_score_and_thresholds():
    img = np.zeros((20, 20))
    img[0, 0] = 510.0  # range 0..510: score = persistence / 2
    peaks = peak_table([(10, 10, 100.0), (12, 5, 30.0), (5, 12, 10.0), (15, 15, 0.0)])
    got = select_peaks(peaks, img, min_score=10.0, min_distance=0)
    assert list(got.persistence) == [100.0, 30.0]
    np.testing.assert_allclose(got.score, [50.0, 15.0])
    got = select_peaks(peaks, img, min_score=0.0, min_persistence=15.0, min_distance=0)
    assert list(got.persistence) == [100.0, 30.0]
    got = select_peaks(peaks, img, min_score=0.0, min_distance=0)
    assert list(got.persistence) == [100.0, 30.0, 10.0]  # zero persistence never kept
    assert list(got.columns) == ["y", "x", "persistence", "score", "ok", "reason"]
    assert got.ok.all() and (got.reason == "").all()


def test_select_flat_frame_scores_zero_not_nan():
    img = np.full((10, 10), 3.0)
    got = select_peaks(persistence(img), img, min_score=0.0)
    assert got.empty
    peaks = peak_table([(5, 5, 2.0)])
    got = select_peaks(peaks, img, min_score=0.0)
    assert got.score.tolist() == [0.0]
    nan_img = np.full((10, 10), np.nan)
    nan_img[5, 5] = 1.0
    got = select_peaks(peaks, nan_img, min_score=0.0)
    assert np.isfinite(got.score).all()
    inf_img = np.zeros((10, 10))
    inf_img[0, 0], inf_img[1, 1] = np.inf, 4.0
    got = select_peaks(peaks, inf_img, min_score=0.0)
    assert got.score.tolist() == [2.0 / 4.0 * 255]


def test_select_edge_flags():
    img = np.zeros((10, 12))
    img[0, 0] = 100
    peaks = peak_table([(5, 0, 90.0), (5, 1, 80.0), (5, 2, 70.0), (0, 6, 60.0), (9, 6, 50.0),
                        (5, 11, 40.0), (5, 9, 30.0), (7, 6, 20.0)])
    got = select_peaks(peaks, img, edge=2, min_distance=0, min_score=0)
    assert got.reason.tolist() == ["edge", "edge", "", "edge", "edge", "edge", "", ""]
    assert got.ok.tolist() == [False, False, True, False, False, False, True, True]
    got = select_peaks(peaks, img, edge=0, min_distance=0, min_score=0)
    assert got.ok.all()


def test_select_mask_flags():
    img = np.zeros((30, 30))
    img[0, 0] = 100
    mask = np.zeros((30, 30), bool)
    mask[15, 15] = True
    peaks = peak_table([(15, 17, 90.0), (15, 18, 80.0), (17, 17, 70.0), (16, 16, 60.0),
                        (15, 15, 50.0), (3, 15, 40.0), (0, 15, 30.0)])
    got = select_peaks(peaks, img, edge=2, mask=mask, min_distance=0, min_score=0)
    # distance 2 -> flagged; 3 -> ok; sqrt(8) > 2 -> ok; sqrt(2) -> flagged; on it -> flagged
    assert got.reason.tolist() == ["mask", "", "", "mask", "mask", "", "edge"]
    assert got.ok.tolist() == [False, True, True, False, False, True, False]
    with pytest.raises(OptionError, match="mask shape"):
        select_peaks(peaks, img, mask=np.zeros((3, 3), bool))


def test_select_suppression_greedy_and_strict():
    img = np.zeros((40, 40))
    img[0, 0] = 255
    # A (100) - B (80) - C (60) in a chain 5 px apart: B is dropped by A, so C, 10 px
    # from A, stays (greedy suppression); (5, 8) is 3 px from the stronger (5, 5).
    peaks = peak_table([(20, 15, 60.0), (20, 25, 100.0), (20, 20, 80.0), (5, 5, 50.0), (5, 8, 40.0)])
    got = select_peaks(peaks, img, min_distance=5.5, min_score=0, edge=0)
    assert list(zip(got.y, got.x, strict=True)) == [(20, 25), (20, 15), (5, 5)]
    # Exactly min_distance apart is not closer than min_distance: both kept.
    got = select_peaks(peaks, img, min_distance=3.0, min_score=0, edge=0)
    assert list(zip(got.y, got.x, strict=True)) == [(20, 25), (20, 20), (20, 15), (5, 5), (5, 8)]
    got = select_peaks(peaks, img, min_distance=3.01, min_score=0, edge=0)
    assert list(zip(got.y, got.x, strict=True)) == [(20, 25), (20, 20), (20, 15), (5, 5)]


def test_select_max_peaks_keeps_most_persistent():
    rng = np.random.default_rng(3)
    img = np.zeros((100, 100))
    img[0, 0] = 255
    peaks = peak_table([(y, x, p) for (y, x), p in zip(rng.integers(5, 95, (50, 2)),
                                                       rng.permutation(50) + 1.0, strict=True)])
    got = select_peaks(peaks, img, max_peaks=7, min_score=0, min_distance=0)
    assert got.persistence.tolist() == [50.0, 49, 48, 47, 46, 45, 44]


def test_select_many_peaks_suppression_matches_naive():
    rng = np.random.default_rng(4)
    img = rng.random((200, 200))
    peaks = persistence(img)
    got = select_peaks(peaks, img, min_score=0, min_distance=4.0, edge=0)
    # Naive greedy suppression in Python, an independent check on this small case.
    kept = []
    for y, x, p in zip(peaks.y, peaks.x, peaks.persistence, strict=True):
        if p > 0 and all((y - ky) ** 2 + (x - kx) ** 2 >= 16.0 for ky, kx in kept):
            kept.append((y, x))
    assert list(zip(got.y, got.x, strict=True)) == kept


def test_select_end_to_end_on_frame():
    img = two_gaussians_with_bridge()
    got = select_peaks(persistence(img, 0.0), img)
    assert list(zip(got.y, got.x, strict=True)) == [(10, 10), (10, 30)]
    np.testing.assert_allclose(got.score, [255.0, 52.5 / 100 * 255])
    assert got.ok.all()
    assert not got.isna().any().any()


def test_select_bad_options():
    img = np.zeros((5, 5))
    peaks = peak_table([(2, 2, 1.0)])
    for kwargs in [dict(min_distance=-1), dict(min_score=float("nan")), dict(edge=-1),
                   dict(edge=1.5), dict(max_peaks=0), dict(min_persistence=-2)]:
        with pytest.raises(OptionError):
            select_peaks(peaks, img, **kwargs)
    with pytest.raises(OptionError, match="column"):
        select_peaks(peaks.drop(columns="persistence"), img)
    with pytest.raises(OptionError, match="DataFrame"):
        select_peaks([(2, 2, 1.0)], img)
    assert select_peaks(peaks.iloc[:0], img).empty


# ----------------------------------------------------------------------- numba cache

def _load_module_from(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jit_without_writable_cache_only_warns(tmp_path, monkeypatch):
    # A regular file where numba wants its cache folders makes every cache location
    # unwritable, even for root (chmod would not stop root).
    src = tmp_path / "pkg"
    src.mkdir()
    (src / "__pycache__").write_text("not a folder")
    (src / "kernel.py").write_text("def add_one(x):\n    return x + 1\n")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))
    monkeypatch.setenv("HOME", str(blocker / "home"))
    import numba

    monkeypatch.setattr(numba.config, "CACHE_DIR", "", raising=False)
    func = _load_module_from(src / "kernel.py", "bt_test_kernel_ro").add_one
    with pytest.warns(RuntimeWarning, match="cannot cache"):
        compiled = detect._jit(func)
    assert compiled(41) == 42


def test_jit_read_only_package_falls_back_to_user_cache(tmp_path, monkeypatch):
    src = tmp_path / "pkg"
    src.mkdir()
    (src / "__pycache__").write_text("not a folder")  # the package folder cannot hold a cache
    (src / "kernel.py").write_text("def add_two(x):\n    return x + 2\n")
    cache_home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    import numba

    monkeypatch.setattr(numba.config, "CACHE_DIR", "", raising=False)
    func = _load_module_from(src / "kernel.py", "bt_test_kernel_user").add_two
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled = detect._jit(func)
    assert compiled(40) == 42
    assert any(p.suffix == ".nbi" for p in cache_home.rglob("*"))


# -------------------------------------------------------- sparse path (pixels listed upstream)

sparse_images = hnp.arrays(
    dtype=st.sampled_from([np.uint16, np.float32]),
    shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=16),
    # Mostly background, a few bright pixels with ties: the compact union-find's case.
    elements=st.sampled_from([0] * 40 + [3, 5, 5, 9]),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(img=sparse_images, threshold=st.sampled_from([0, 2, 4.5]),
       connectivity=st.sampled_from([4, 8]))
def test_listed_pixels_match_brute_force_reference(img, threshold, connectivity):
    pixels = np.flatnonzero(img.ravel() > threshold)
    got = persistence(img, threshold, connectivity=connectivity, pixels=pixels)
    assert_same(got, reference_persistence(img, threshold, connectivity))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(1, 40), w=st.integers(1, 40),
       fill=st.floats(0.01, 0.5), connectivity=st.sampled_from([4, 8]))
def test_compact_union_find_equals_frame_sized_one(seed, h, w, fill, connectivity):
    """Both union-finds give the same births, deaths and last members on sparse frames,
    including pixels on every edge (row wrap-around must not make neighbours)."""
    rng = np.random.default_rng(seed)
    img = np.where(rng.random((h, w)) < fill, rng.integers(1, 6, (h, w)), 0).astype(np.float64)
    idx = np.flatnonzero(img.ravel() > 0)
    if idx.size == 0:
        return
    order = detect._radix_order_descending(detect._order_keys(img.ravel()[idx]))
    member = np.zeros(h * w, bool)
    member[idx] = True
    dense = detect._union_find(idx[order], member, h, w, connectivity == 8)
    compact = detect._union_find_sparse(
        idx, order, np.searchsorted(idx, idx - w - 1), np.searchsorted(idx, idx + w - 1), w,
        connectivity == 8)
    np.testing.assert_array_equal(compact[0], dense[0])
    np.testing.assert_array_equal(compact[1], dense[1])
    born = dense[0]
    np.testing.assert_array_equal(compact[2][born], dense[2][born])


def test_pixels_need_a_threshold():
    with pytest.raises(OptionError, match="threshold"):
        persistence(np.zeros((3, 3)), pixels=np.array([0]))
