"""Tests of braggtrack.patches against naive per-peak loops and hand-made frames."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from braggtrack.errors import OptionError
from braggtrack.patches import (
    PatchSet,
    centre_filter,
    extract_patches,
    normalize,
    quality,
    recentre,
)


def naive_patches(image, rows, cols, size, mask):
    """One peak at a time, pixel by pixel, edge pixels replicated."""
    h, w = image.shape
    half = size // 2
    out = np.zeros((len(rows), size, size), dtype=np.float32)
    edge = np.zeros(len(rows), dtype=bool)
    masked = np.zeros(len(rows), dtype=bool)
    for k, (r, c) in enumerate(zip(rows, cols, strict=True)):
        for i in range(size):
            for j in range(size):
                rr, cc = r - half + i, c - half + j
                if not (0 <= rr < h and 0 <= cc < w):
                    edge[k] = True
                rr = min(max(rr, 0), h - 1)
                cc = min(max(cc, 0), w - 1)
                out[k, i, j] = image[rr, cc]
                if mask is not None and mask[rr, cc]:
                    masked[k] = True
    return out, edge, masked


@st.composite
def frames_and_centres(draw):
    h = draw(st.integers(3, 24))
    w = draw(st.integers(3, 24))
    size = draw(st.sampled_from([s for s in (1, 3, 5, 7, 9, 11) if s <= min(h, w)]))
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(0, 12))
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(h, w)) * 100
    rows = rng.integers(-2, h + 2, n)
    cols = rng.integers(-2, w + 2, n)
    mask = rng.random((h, w)) < 0.05 if draw(st.booleans()) else None
    return image, rows, cols, size, mask


@settings(max_examples=60, deadline=None)
@given(frames_and_centres())
def test_extract_patches_matches_naive_loop(case):
    image, rows, cols, size, mask = case
    ps = extract_patches(image, rows, cols, size=size, mask=mask)
    expected, edge, masked = naive_patches(image, rows, cols, size, mask)
    assert ps.patches.dtype == np.float32
    assert ps.patches.shape == (len(rows), size, size)
    np.testing.assert_array_equal(ps.patches, expected)
    np.testing.assert_array_equal(ps.edge, edge)
    np.testing.assert_array_equal(ps.masked, masked)
    np.testing.assert_array_equal(ps.rows, rows)
    np.testing.assert_array_equal(ps.cols, cols)
    assert len(ps) == len(rows)


def test_patch_centre_is_the_requested_pixel():
    image = np.arange(30 * 40, dtype=float).reshape(30, 40)
    ps = extract_patches(image, [10, 20], [5, 33], size=7)
    assert ps.patches[0, 3, 3] == image[10, 5]
    assert ps.patches[1, 3, 3] == image[20, 33]
    assert ps.patches[0, 0, 0] == image[7, 2]
    assert ps.size == 7
    assert not ps.edge.any()
    assert list(ps.flags.columns) == ["edge", "masked"]


def test_float_centres_are_rounded():
    image = np.arange(100, dtype=float).reshape(10, 10)
    ps = extract_patches(image, [4.6], [5.2], size=3)
    assert ps.rows.tolist() == [5] and ps.cols.tolist() == [5]


@pytest.mark.parametrize("size", [0, 2, 4, 13, 3.5])
def test_bad_sizes_raise_option_error(size):
    with pytest.raises(OptionError):
        extract_patches(np.zeros((12, 12)), [6], [6], size=size)


def test_bad_inputs_raise_option_error():
    with pytest.raises(OptionError):
        extract_patches(np.zeros((4, 4, 4)), [1], [1], size=3)
    with pytest.raises(OptionError):
        extract_patches(np.zeros((8, 8)), [1, 2], [1], size=3)
    with pytest.raises(OptionError):
        extract_patches(np.zeros((8, 8)), [np.nan], [1], size=3)
    with pytest.raises(OptionError):
        extract_patches(np.zeros((8, 8)), [1], [1], size=3, mask=np.zeros((4, 4), bool))


def test_normalize_golden_and_flat():
    p = np.array([[[2.0, 4.0], [6.0, 10.0]], [[3.0, 3.0], [3.0, 3.0]]])
    normed, flat = normalize(p)
    np.testing.assert_allclose(normed[0], [[0.0, 0.25], [0.5, 1.0]])
    assert normed.dtype == np.float32
    assert flat.tolist() == [False, True]
    np.testing.assert_array_equal(normed[1], 0.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=9, max_size=9
    ).map(lambda v: np.array(v, dtype=np.float32).reshape(1, 3, 3))
)
def test_normalize_never_nan(p):
    normed, flat = normalize(p)
    assert np.isfinite(normed).all()
    assert (normed >= 0).all() and (normed <= 1).all()
    finite = p[np.isfinite(p)]
    if finite.size == 0 or finite.max() == finite.min():
        assert flat[0]


def test_centre_filter():
    p = np.zeros((4, 7, 7))
    p[0, 3, 3] = 1  # centre
    p[1, 3, 5] = 1  # 2 px away
    p[2, 1, 1] = 1  # 2.83 px away
    p[3, 0, 3] = 1  # 3 px away
    assert centre_filter(p, tolerance=2.0).tolist() == [True, True, False, False]
    assert centre_filter(p, tolerance=3.0).tolist() == [True, True, True, True]
    with pytest.raises(OptionError):
        centre_filter(p, tolerance=-1)


def test_quality_reasons_and_precedence():
    image = np.zeros((30, 30))
    image[15, 15] = 10.0  # good peak
    image[15, 25] = 10.0
    image[16, 22] = 20.0  # brighter pixel off the centre of a patch at (15, 25)
    mask = np.zeros_like(image, dtype=bool)
    mask[5, 15] = True
    ps = extract_patches(image, [15, 1, 5, 25, 15], [15, 15, 15, 5, 25], size=7, mask=mask)
    q = quality(ps, tolerance=2.0)
    assert q.reason.tolist() == ["", "edge", "mask", "flat", "off_centre"]
    assert q.ok.tolist() == [True, False, False, False, False]


def test_recentre_moves_to_brightest_neighbour():
    image = np.zeros((10, 10))
    image[4, 5] = 7.0
    image[0, 0] = 3.0
    image[9, 9] = 1.0
    image[9, 8] = 1.0  # tie with the current centre (9, 9): keep it
    rows, cols = recentre(image, [5, 1, 9, 2], [5, 1, 9, 2])
    assert rows.tolist() == [4, 0, 9, 2]
    assert cols.tolist() == [5, 0, 9, 2]
    r2, c2 = recentre(image, [5], [5], radius=0)
    assert (r2.tolist(), c2.tolist()) == ([5], [5])


def test_patchset_is_frozen():
    ps = extract_patches(np.zeros((5, 5)), [2], [2], size=3)
    assert isinstance(ps, PatchSet)
    with pytest.raises(AttributeError):
        ps.rows = np.array([1])


def test_centre_filter_leaves_a_close_neighbours_pixels_to_it():
    # The patch's brightest pixel (9) belongs to a neighbour 4 px to the right; this patch's
    # own maximum (5) is at its centre.  Plain: off-centre.  Told of the neighbour: centred.
    p = np.zeros((1, 11, 11))
    p[0, 5, 5] = 5.0
    p[0, 5, 9] = 9.0
    assert not centre_filter(p, 2.0)[0]
    assert centre_filter(p, 2.0, others=(np.array([0]), np.array([0]), np.array([4])))[0]
    # A neighbour elsewhere does not hide the bright pixel.
    assert not centre_filter(p, 2.0, others=(np.array([0]), np.array([-4]), np.array([0])))[0]
