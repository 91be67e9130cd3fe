"""Preprocessing: dark, flat, masks, binning and its coordinate map, thresholds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import erf

from braggtrack.errors import OptionError
from braggtrack.preprocess import (
    PreparedFrame,
    Preprocessor,
    apply_flat,
    apply_threshold,
    auto_mask,
    bin_frame,
    binned_to_full,
    full_to_binned,
    load_dark,
    load_mask,
    robust_threshold,
    subtract_dark,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def gaussian(shape, x0, y0, sigma, amplitude=1.0):
    """Pixel-integrated 2-D Gaussian (exact erf integral over each pixel)."""
    h, w = shape
    s = sigma * np.sqrt(2.0)
    fx = np.diff(0.5 * erf((np.arange(w + 1) - 0.5 - x0) / s))
    fy = np.diff(0.5 * erf((np.arange(h + 1) - 0.5 - y0) / s))
    return amplitude * np.outer(fy, fx)


# ------------------------------------------------------------------ dark, flat, mask


def test_subtract_dark_clips_and_is_float32():
    frame = np.array([[10, 3], [7, 65535]], np.uint16)
    dark = np.array([[4.0, 5.0], [7.0, 0.5]])
    out = subtract_dark(frame, dark)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[6.0, 0.0], [0.0, 65534.5]])
    with pytest.raises(OptionError, match="shape"):
        subtract_dark(frame, np.zeros((3, 3)))


def test_load_dark_median_of_files(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    values = [5.0, 100.0, 7.0, 6.0, 1.0]  # median 6, robust to the 100 (a zinger frame)
    paths = []
    for k, v in enumerate(values):
        p = tmp_path / f"dark_{k}.tif"
        tifffile.imwrite(p, np.full((4, 5), v, np.float32))
        paths.append(p)
    np.testing.assert_array_equal(load_dark(paths), np.full((4, 5), 6.0))
    stack = tmp_path / "darks.npy"
    np.save(stack, np.stack([np.full((3, 3), v) for v in values]))
    np.testing.assert_array_equal(load_dark(stack), np.full((3, 3), 6.0))


def test_load_dark_refuses_no_finite_pixel_and_says_how_many_are_not(tmp_path, logged):
    from braggtrack.errors import InputFileError

    np.save(tmp_path / "nan.npy", np.full((8, 8), np.nan, np.float32))
    with pytest.raises(InputFileError, match="no finite value") as exc:
        load_dark(tmp_path / "nan.npy")
    assert "nan.npy" in str(exc.value)
    some = np.zeros((10, 10), np.float32)
    some[0, :5] = np.nan  # 5 % of the pixels: each is masked
    np.save(tmp_path / "some.npy", some)
    assert np.isnan(load_dark(tmp_path / "some.npy")).sum() == 5
    assert any("5.0 % of the dark's pixels are not finite" in m for m in logged)


def test_apply_flat_normalised_and_bad_pixels():
    frame = np.full((2, 3), 12.0)
    flat = np.array([[1.0, 2.0, 4.0], [2.0, 0.0, np.nan]])
    out = apply_flat(frame, flat)
    # median of the valid flat pixels is 2 -> gains 0.5, 1, 2, 1
    np.testing.assert_allclose(out, [[24.0, 12.0, 6.0], [12.0, 0.0, 0.0]])
    with pytest.raises(OptionError):
        apply_flat(frame, np.zeros((2, 3)))


def test_load_mask_formats(tmp_path):
    mask = np.zeros((6, 7), np.uint8)
    mask[2, 3] = 1
    mask[5, 0] = 255
    expected = mask != 0
    np.save(tmp_path / "m.npy", mask)
    np.testing.assert_array_equal(load_mask(tmp_path / "m.npy"), expected)
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "m.tif", mask)
    np.testing.assert_array_equal(load_mask(tmp_path / "m.tif"), expected)
    fabio = pytest.importorskip("fabio")
    fabio.edfimage.EdfImage(data=mask).write(str(tmp_path / "m.edf"))
    np.testing.assert_array_equal(load_mask(tmp_path / "m.edf"), expected)
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["/mask"] = mask.astype(bool)
    np.testing.assert_array_equal(load_mask(tmp_path / "m.h5"), expected)
    np.testing.assert_array_equal(load_mask(tmp_path / "m.npy", invert=True), ~expected)


# ------------------------------------------------------------------ auto mask


def test_auto_mask_hot_saturated_nonfinite_but_not_sharp_peaks():
    rng = np.random.default_rng(1)
    frame = rng.poisson(100, (64, 64)).astype(np.float64)
    # sharp real peaks (sigma 0.35 and 0.5 px) centred on a pixel: must NOT be masked
    frame += gaussian(frame.shape, 20, 20, 0.35, 40000)
    frame += gaussian(frame.shape, 40, 12, 0.5, 40000)
    frame = frame.astype(np.uint16)
    frame[50, 50] = 30000  # hot pixel
    frame[5, 60] = 65535  # saturated
    frame[0, 0] = 20000  # hot pixel in a corner
    bad = auto_mask(frame)
    assert bad[50, 50] and bad[5, 60] and bad[0, 0]
    assert not bad[20, 20] and not bad[12, 40]
    assert bad.sum() == 3
    bad = auto_mask(frame, saturation=10000)  # the peak cores count as saturated now
    assert bad[20, 20] and bad[12, 40]

    f = frame.astype(np.float32)
    f[3, 3], f[4, 4] = np.nan, -np.inf
    bad = auto_mask(f)
    assert bad[3, 3] and bad[4, 4] and bad[50, 50] and not bad[20, 20]


def test_negative_flags_of_signed_integer_frames_are_masked():
    # Pilatus convention: -1 marks module gaps, -2 bad pixels; neither is a count.
    rng = np.random.default_rng(2)
    frame = (rng.poisson(20, (40, 50)) + gaussian((40, 50), 30.3, 10.6, 1.0, 4000)).astype(
        np.int32)
    frame[25, :] = -1  # an isolated gap row
    frame[10, 31] = -2  # a bad pixel beside the peak's maximum
    for bad in (auto_mask(frame), Preprocessor()(frame).mask):
        assert bad[25].all() and bad[10, 31]
        assert bad.sum() == frame.shape[1] + 1
    prep = Preprocessor()(frame)
    assert not prep.full[25].any() and prep.full[10, 31] == 0
    # the same with an explicit saturation level, and none without the automatic mask
    assert auto_mask(frame, saturation=1e6)[25].all()
    assert not Preprocessor(auto_mask=False)(frame).mask.any()
    # float frames (e.g. dark-subtracted) keep their negative values as they are
    f = frame.astype(np.float32)
    f[25, :] = -3.5
    f[10, 31] = -2.0
    assert not auto_mask(f)[25].any() and not auto_mask(f)[10, 31]
    out = Preprocessor(threshold=100)(f)
    assert not out.mask.any()
    np.testing.assert_array_equal(out.full, f)


def test_auto_mask_sparse_thresholded_frame():
    # a frame thresholded upstream at 6: a real peak whose wings were zeroed is kept,
    # an isolated single bright pixel (far above anything its zeroed neighbours held) is hot
    frame = np.zeros((40, 40), np.uint16)
    peak = gaussian(frame.shape, 10, 10, 0.6, 600)
    frame[:] = np.where(peak >= 6, peak, 0).astype(np.uint16)
    frame[30, 30] = 400
    frame[30, 10] = 8  # a faint isolated pixel near the floor: could be real, kept
    bad = auto_mask(frame)
    assert bad[30, 30]
    assert not bad[10, 10] and not bad[30, 10]


# ------------------------------------------------------------------ binning


def test_bin_frame_sum_and_crop():
    frame = np.arange(5 * 7, dtype=np.uint16).reshape(5, 7)
    out = bin_frame(frame, 2)
    assert out.shape == (2, 3) and out.dtype == np.float32
    assert out[1, 2] == frame[2:4, 4:6].sum()
    np.testing.assert_array_equal(bin_frame(frame, 1), frame.astype(np.float32))
    big = np.full((4, 4), 60000, np.uint16)
    assert bin_frame(big, 2)[0, 0] == 240000  # no uint16 overflow
    for bad in (0, -1, 1.5, 9):
        with pytest.raises(OptionError):
            bin_frame(frame, bad)


def test_binned_to_full_known_values():
    assert binned_to_full(0, 2) == 0.5
    assert binned_to_full(3, 2) == 6.5
    assert binned_to_full(0, 3) == 1.0
    assert binned_to_full(5, 1) == 5.0
    np.testing.assert_array_equal(binned_to_full(np.array([0, 1]), 4), [1.5, 5.5])
    assert full_to_binned(6.5, 2) == 3.0


@settings(max_examples=60, deadline=None)
@given(b=st.integers(0, 5000), factor=st.integers(1, 8), frac=st.floats(-0.49, 0.49))
def test_full_to_binned_inverts_binned_to_full(b, factor, frac):
    assert full_to_binned(binned_to_full(b, factor), factor) == b
    x = b + frac
    assert abs(full_to_binned(binned_to_full(x, factor), factor) - x) < 1e-9


@settings(max_examples=40, deadline=None)
@given(
    x0=st.floats(40.0, 55.0),
    y0=st.floats(40.0, 55.0),
    width=st.floats(0.8, 1.5),
    factor=st.integers(2, 4),
)
def test_binning_preserves_centroid(x0, y0, width, factor):
    """The centroid of a blob in binned pixels, mapped back, is the full-res centroid.

    The blob is at least as wide as a bin (sigma >= 0.8 * factor): a narrower blob is
    undersampled by the binned grid and its binned centroid is biased by up to a
    fraction of a bin whatever the coordinate map (aliasing, not a mapping error).
    """
    sigma = width * factor
    frame = gaussian((96, 97), x0, y0, sigma, 1e4)
    yy, xx = np.indices(frame.shape)
    cx, cy = (frame * xx).sum() / frame.sum(), (frame * yy).sum() / frame.sum()
    binned = bin_frame(frame, factor).astype(np.float64)
    by, bx = np.indices(binned.shape)
    bcx, bcy = (binned * bx).sum() / binned.sum(), (binned * by).sum() / binned.sum()
    # the cropped remainder holds a negligible tail (blob far from the edges)
    assert abs(binned_to_full(bcx, factor) - cx) < 2e-3
    assert abs(binned_to_full(bcy, factor) - cy) < 2e-3
    assert abs(cx - x0) < 2e-3 and abs(cy - y0) < 2e-3  # analytic truth


# ------------------------------------------------------------------ thresholds


def test_apply_threshold_dtype_and_values():
    frame = np.array([[3, 5, 8, 4]], np.uint32)
    out = apply_threshold(frame, 4.5)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, [[0, 5, 8, 0]])
    np.testing.assert_array_equal(apply_threshold(frame, 4), [[0, 5, 8, 4]])
    np.testing.assert_array_equal(apply_threshold(frame, 1e12), [[0, 0, 0, 0]])
    np.testing.assert_array_equal(frame, [[3, 5, 8, 4]])  # input untouched
    f = np.array([[0.5, 1.5]], np.float32)
    assert apply_threshold(f, 1.0).dtype == np.float32


def test_robust_threshold_gaussian_noise_with_peaks():
    rng = np.random.default_rng(5)
    frame = rng.normal(1000.0, 10.0, (256, 256))
    for k in range(40):  # bright peaks (6 % of the pixels) barely move the threshold
        frame += gaussian(frame.shape, 10 + 6 * k, 20 + 5 * k, 1.5, 2e5)
    t = robust_threshold(frame, nsigma=5)
    # MAD rises by about the outlier fraction; a plain mean + 5 std would be ~1e4 off
    assert 1000 + 5 * 10 * 0.95 < t < 1000 + 5 * 10 * 1.12
    assert frame.mean() + 5 * frame.std() > 2000


def test_robust_threshold_sparse_frame():
    frame = np.zeros((100, 100), np.uint16)
    frame[10:13, 10:13] = [[6, 9, 6], [9, 300, 9], [6, 9, 6]]
    frame[50, 60:64] = [7, 40, 40, 7]
    assert robust_threshold(frame) == 6.0
    assert robust_threshold(np.zeros((5, 5))) == 0.0


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared real data absent")
def test_robust_threshold_on_real_frames():
    from braggtrack.io import open_frames

    laue = open_frames(SHARED_DATA / "laue_gan_nanowire_nw1_0000.tif")[0]
    t = robust_threshold(laue)
    assert 1010 < t < 1200  # above the ~1000-count pedestal, far below the spots
    assert (laue > t).mean() < 0.1
    hedm = open_frames(SHARED_DATA / "hedm_zr_dac_ge2_framecache.npz")[3]
    t = robust_threshold(hedm)
    assert t == hedm[hedm > 0].min()  # keeps what the upstream threshold kept
    assert np.count_nonzero(apply_threshold(hedm, t)) == np.count_nonzero(hedm)


# ------------------------------------------------------------------ Preprocessor


def test_preprocessor_chain():
    rng = np.random.default_rng(2)
    dark = np.full((32, 32), 50.0)
    frame = (rng.poisson(60, (32, 32)) + gaussian((32, 32), 15.0, 16.0, 1.2, 30000)).astype(
        np.uint16
    )
    frame[3, 3] = 40000  # hot
    mask = np.zeros((32, 32), bool)
    mask[0, 5] = True
    prep = Preprocessor(dark=dark, mask=mask, bin=2, threshold=30.0)
    out = prep(frame)
    assert isinstance(out, PreparedFrame)
    assert out.full.dtype == np.float32 and out.full.shape == (32, 32)
    assert out.image.shape == (16, 16) and out.bin == 2 and out.threshold == 30.0
    assert out.mask[3, 3] and out.mask[0, 5] and out.full[3, 3] == 0
    np.testing.assert_allclose(out.full[16, 15], frame[16, 15] - 50.0)
    thresholded = np.where(out.full < 30, 0, out.full)
    np.testing.assert_allclose(out.image, bin_frame(thresholded, 2), rtol=1e-6)
    # robust default threshold per frame
    auto = Preprocessor(dark=dark)(frame)
    assert 10 < auto.threshold < 60
    with pytest.raises(OptionError, match="shape"):
        prep(np.zeros((10, 10)))
    with pytest.raises(OptionError):
        Preprocessor(bin=0)
    with pytest.raises(OptionError):
        Preprocessor(threshold=-1)


def test_preprocessor_nan_masked_and_paths(tmp_path):
    frame = np.full((8, 8), 10.0, np.float32)
    frame[2, 2] = np.nan
    out = Preprocessor(auto_mask=False, threshold=0)(frame)
    assert out.mask[2, 2] and out.full[2, 2] == 0 and np.isfinite(out.image).all()
    np.save(tmp_path / "dark.npy", np.full((8, 8), 4.0))
    np.save(tmp_path / "mask.npy", np.eye(8))
    prep = Preprocessor(dark=tmp_path / "dark.npy", mask=str(tmp_path / "mask.npy"), threshold=0)
    out = prep(np.full((8, 8), 10, np.uint16))
    assert out.full[0, 1] == 6.0 and out.full[3, 3] == 0 and out.mask[3, 3]


# ------------------------------------------------------------------ fused pass == the chain


def _dense_chain(prep: Preprocessor, frame: np.ndarray):
    """The corrections as a chain of the public functions, one full-frame step at a time
    (what Preprocessor computed before its single compiled pass)."""
    from braggtrack.preprocess import hot_pixels, robust_sigma, saturated_mask

    bad = np.zeros(frame.shape, bool) if prep.mask is None else prep.mask.copy()
    if prep.auto_mask:
        bad |= saturated_mask(frame, prep.saturation)
    elif frame.dtype.kind == "f":
        bad |= ~np.isfinite(frame)
    full = subtract_dark(frame, prep.dark) if prep.dark is not None else frame.astype(np.float32)
    if prep.flat is not None:
        full = apply_flat(full, prep.flat)
        bad |= ~(np.isfinite(prep.flat) & (prep.flat > 0))
    bad |= ~np.isfinite(full)
    full[bad] = 0
    # The statistics see the dark-subtracted values before the clip to 0.
    unclipped = full
    if prep.dark is not None:
        unclipped = frame.astype(np.float32) - prep.dark.astype(np.float32)
        if prep.flat is not None:
            unclipped = apply_flat(unclipped, prep.flat)
        unclipped[bad] = 0
    stats = robust_sigma(unclipped, bad)
    if prep.auto_mask:
        hot = hot_pixels(full, stats=stats, bad=bad, hot_sigma=prep.hot_sigma)
        bad |= hot
        full[hot] = 0
    t = (robust_threshold(full, prep.nsigma, mask=bad, stats=stats) if prep.threshold is None
         else float(prep.threshold))
    image = bin_frame(apply_threshold(full, t) if t > 0 else full.copy(), prep.bin)
    return full, bad, t, image


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from([np.uint8, np.uint16, np.uint32, np.int32, np.float32, np.float64]),
       large=st.booleans(), sparse=st.booleans(), dark=st.booleans(), flat=st.booleans(),
       mask=st.booleans(), threshold=st.sampled_from([None, None, 0.0, 10.0, 30.5]),
       auto=st.booleans(), binning=st.sampled_from([1, 1, 2]))
def test_fused_pass_equals_the_dense_chain(seed, dtype, large, sparse, dark, flat, mask,
                                           threshold, auto, binning):
    rng = np.random.default_rng(seed)
    # "large" frames are statistically subsampled (more than 32,768 pixels).
    h, w = (rng.integers(190, 400), rng.integers(190, 400)) if large else rng.integers(3, 40, 2)
    base = rng.poisson(rng.uniform(0, 100), (h, w)).astype(np.float64)
    if sparse:
        base[rng.random((h, w)) < 0.7] = 0
    for _ in range(rng.integers(0, 6)):
        base[rng.integers(h), rng.integers(w)] += rng.uniform(100, 5000)  # hot or bright
    base += 800 * gaussian((h, w), w / 2.3, h / 1.7, 1.3)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        base = np.clip(base, info.min, info.max)
        if rng.random() < 0.5:
            base[rng.integers(h), rng.integers(w)] = info.max  # saturated
        if info.min < 0 and rng.random() < 0.5:
            base[rng.integers(h), :] = -1  # detector flags (Pilatus module gap, bad pixel)
            base[rng.integers(h), rng.integers(w)] = -2
    elif rng.random() < 0.5:
        base[rng.integers(h), rng.integers(w)] = rng.choice([np.nan, np.inf])
    frame = base.astype(dtype)
    prep = Preprocessor(
        dark=rng.uniform(0, 20, (h, w)) if dark else None,
        flat=rng.uniform(0.5, 1.5, (h, w)) if flat else None,
        mask=rng.random((h, w)) < 0.03 if mask else None,
        threshold=threshold, auto_mask=auto, bin=binning, background="global",
    )
    out = prep(frame)
    full, bad, t, image = _dense_chain(prep, frame)
    np.testing.assert_array_equal(out.full, full)
    np.testing.assert_array_equal(out.mask, bad)
    assert out.threshold == t
    np.testing.assert_array_equal(out.image, image)
    if binning == 1:
        np.testing.assert_array_equal(out.above, np.flatnonzero(full.ravel().astype(np.float64) > t))
        if out.intensity_range is not None:
            assert out.intensity_range == float(image.max()) - float(image.min())
    else:
        assert out.above is None


def test_a_dark_level_frame_keeps_its_noise_and_only_its_peaks():
    # Frames at the dark's level (offset 100 +- 3 counts): after subtraction half the
    # background is below 0. Clipped before the statistics, the frame had looked sparse
    # (median and MAD 0): threshold ~0.2 counts, and every noise pixel a candidate.
    rng = np.random.default_rng(7)
    shape = (256, 256)
    dark = 100 + rng.normal(0, 1, shape)  # the mean of 10 dark frames
    peaks = [(60.3, 70.6), (180.8, 40.2), (128.4, 200.9)]
    signal = sum(3000 * gaussian(shape, x, y, 1.2) for x, y in peaks)
    frame = np.round(100 + rng.normal(0, 3, shape) + signal).astype(np.uint16)
    prepared = Preprocessor(dark=dark)(frame)
    assert 2.7 < prepared.noise < 3.6  # sqrt(3**2 + 1**2) = 3.16
    assert 10 < prepared.threshold < 25  # 5 sigma above a median of ~0
    from braggtrack.pipeline import Calibration, find_peaks

    table = find_peaks(frame, calibration=Calibration(dark=dark), localizer="centroid")
    assert len(table) == 3 and table.ok.all()


def test_foreign_byte_order_and_odd_dtypes_give_the_native_result():
    rng = np.random.default_rng(4)
    frame = (rng.poisson(50, (300, 310)) + 4000 * gaussian((300, 310), 150.2, 80.7, 1.1)).astype(
        np.uint16)
    native = Preprocessor()(frame)
    for other in (frame.astype(">u2"), frame.astype(np.float16), np.asfortranarray(frame)):
        out = Preprocessor()(other)
        np.testing.assert_array_equal(out.full, native.full)
        np.testing.assert_array_equal(out.above, native.above)
        assert out.threshold == native.threshold
    # every pixel masked: no crash, nothing above the threshold
    out = Preprocessor(mask=np.ones(frame.shape, bool))(frame)
    assert out.above.size == 0 and not out.full.any()


def test_mask_from_an_eiger_master_is_its_pixel_mask(tmp_path):
    import h5py

    from braggtrack.preprocess import load_mask

    pixel_mask = np.zeros((16, 16), np.uint32)
    pixel_mask[3, :] = 1  # a gap row
    path = tmp_path / "master.h5"
    with h5py.File(path, "w") as f:
        f["/entry/data/data"] = np.full((4, 16, 16), 7, np.uint32)  # frames, not a mask
        f["/entry/instrument/detector/pixel_mask"] = pixel_mask
    bad = load_mask(path)
    assert bad.sum() == 16 and bad[3].all()


# ------------------------------------------------------------------ local background


def _ramp_frame(seed=1, size=384, low=10.0, high=1000.0, peaks=()):
    """Poisson frame on a left-to-right ramp of background (air scatter), with peaks."""
    rng = np.random.default_rng(seed)
    ramp = low + (high - low) * np.arange(size)[None, :] / (size - 1) * np.ones((size, 1))
    lam = ramp + sum(a * gaussian((size, size), x, y, 1.2) for x, y, a in peaks)
    return rng.poisson(lam).astype(np.uint32), ramp


def test_local_background_follows_a_ramp_and_measures_poisson_noise():
    from braggtrack.preprocess import local_background

    frame, ramp = _ramp_frame()
    bg = local_background(frame)
    centres = (np.arange(bg.level.shape[1]) + 0.5) * bg.tile - 0.5
    expected = 10 + 990 * centres / 383  # the ramp at the tile centres
    np.testing.assert_allclose(np.median(bg.level, axis=0), expected, rtol=0.03, atol=2)
    # Poisson: sigma = sqrt(level); the tile's MAD alone would measure the slope (~3x).
    np.testing.assert_allclose(np.median(bg.noise, axis=0), np.sqrt(expected), rtol=0.25)
    # threshold_at and threshold_map agree, and `above` is the map compared with the frame
    from braggtrack.preprocess import Preprocessor

    prepared = Preprocessor(background="local")(frame)
    tmap = prepared.background.threshold_map(frame.shape)
    rows, cols = np.divmod(np.arange(0, frame.size, 997), frame.shape[1])
    np.testing.assert_allclose(prepared.background.threshold_at(rows, cols), tmap[rows, cols],
                               rtol=1e-5)
    expected_above = np.flatnonzero((prepared.full > tmap) & ~prepared.mask)
    np.testing.assert_array_equal(prepared.above, expected_above)


def test_peaks_on_a_ramp_are_found_where_one_global_threshold_misses_them():
    # 36 peaks of local SNR 30 (peak height 30 sqrt(local background)) on a 10 -> 1,000
    # count ramp: the frame's MAD measures the slope, and its median + 5 sigma lies above
    # every peak on the dim two thirds of the frame.
    from braggtrack.pipeline import find_peaks

    grid = [(32.3 + 64 * i, 32.7 + 64 * j) for i in range(6) for j in range(6)]
    ramp = 10 + 990 * np.array([x for x, _ in grid]) / 383
    volume = 30 * np.sqrt(ramp) / (gaussian((9, 9), 4, 4, 1.2)[4, 4])  # height -> volume
    frame, _ = _ramp_frame(peaks=[(x, y, v) for (x, y), v in zip(grid, volume, strict=True)])
    truth = np.array(grid)

    def recall(table):
        ok = table[table.ok]
        if ok.empty:
            return 0.0, 0
        d = np.hypot(ok.x.to_numpy()[:, None] - truth[:, 0], ok.y.to_numpy()[:, None] - truth[:, 1])
        return (d.min(axis=0) < 1.0).mean(), int((d.min(axis=1) > 3).sum())

    found, false = recall(find_peaks(frame, localizer="centroid"))
    assert found == 1.0 and false == 0
    found_global, _ = recall(find_peaks(frame, localizer="centroid", background="global"))
    assert found_global < 0.5


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), level=st.sampled_from([3.0, 50.0, 1000.0]),
       dtype=st.sampled_from([np.uint16, np.float32]))
def test_a_flat_frame_keeps_the_global_threshold(seed, level, dtype):
    # The local estimate must cost nothing and change nothing where the background is flat
    # (here with up to one peak per ~100 x 100 pixels).
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(96, 400, 2))
    lam = np.full(shape, level)
    for _ in range(rng.integers(0, 1 + shape[0] * shape[1] // 10_000)):
        lam += rng.uniform(50, 5000) * gaussian(shape, rng.uniform(0, shape[1]),
                                                rng.uniform(0, shape[0]), rng.uniform(0.5, 2.5))
    frame = rng.poisson(lam).astype(dtype)
    auto = Preprocessor()(frame)
    assert auto.background is None
    plain = Preprocessor(background="global")(frame)
    assert auto.threshold == plain.threshold and auto.noise == plain.noise
    np.testing.assert_array_equal(auto.above, plain.above)


def test_unsigned_counts_stored_as_int16_are_warned_about_and_flags_are_not():
    from braggtrack.preprocess import negative_flag_warning

    rng = np.random.default_rng(3)
    counts = rng.poisson(20, (64, 64)) + (400000 * gaussian((64, 64), 30.2, 31.7, 1.1)).astype(int)
    assert counts.max() > 32767
    wrapped = counts.astype(np.uint16).astype(np.int16)  # what a signed writer stores
    message = negative_flag_warning(wrapped, "w.tif")
    assert message.startswith("w.tif: ") and "convert the file to uint16" in message
    # Pilatus module gaps (-1) and bad pixels (-2) beside bright counts: flags, no warning
    pilatus = np.clip(counts, 0, 30000).astype(np.int16)
    pilatus[:, 20:27] = -1
    pilatus[5, 5] = -2
    assert negative_flag_warning(pilatus, "p.tif") is None


@pytest.mark.parametrize("scale", [1e-6, 1 / 1.37e5, 3.3e-3])
def test_photon_counts_in_scaled_units_find_the_same_peaks(scale):
    # A photon-counting frame (background 0, most pixels exactly 0) normalized to flux or a
    # monitor: the noise of a sparse frame was sqrt(threshold) in whatever units, 1e-3 at
    # scale 1e-6 = 3,000 photons of persistence asked of every peak.
    from braggtrack.pipeline import find_peaks

    rng = np.random.default_rng(5)
    centres = [(16.4 + 32 * i, 16.8 + 32 * j) for i in range(4) for j in range(4)]
    lam = sum(v * gaussian((128, 128), x, y, 1.0)
              for (x, y), v in zip(centres, np.geomspace(30, 3000, 16), strict=True))
    counts = rng.poisson(lam).astype(np.float32)
    # gauss: its errors need no units (the centroid's Poisson errors assume counts).
    in_counts = find_peaks(counts, localizer="gauss")
    scaled = find_peaks((counts * np.float32(scale)).astype(np.float32), localizer="gauss")
    assert in_counts.ok.sum() >= 14
    np.testing.assert_array_equal(scaled[["x_det", "y_det", "ok"]].to_numpy(),
                                  in_counts[["x_det", "y_det", "ok"]].to_numpy())


def _peaks_on(background, n_side, volume, seed):
    """Poisson frame: ``background`` plus a grid of n_side x n_side peaks (sigma 1.2)."""
    rng = np.random.default_rng(seed)
    h, w = background.shape
    centres = [(w * (i + 0.5) / n_side + rng.uniform(-2, 2), h * (j + 0.5) / n_side
                + rng.uniform(-2, 2)) for i in range(n_side) for j in range(n_side)]
    lam = background + sum(volume * gaussian((h, w), x, y, 1.2) for x, y in centres)
    return rng.poisson(lam).astype(np.uint16), np.array(centres)


def _recall_false(table, truth):
    ok = table[table.ok]
    if ok.empty:
        return 0.0, 0
    d = np.hypot(ok.x.to_numpy()[:, None] - truth[:, 0], ok.y.to_numpy()[:, None] - truth[:, 1])
    return float((d.min(axis=0) < 1.5).mean()), int((d.min(axis=1) > 3).sum())


@pytest.mark.parametrize("shape", [(256, 256), (48, 200)])
def test_a_step_in_the_background_takes_the_tiles(shape):
    # Half the frame at 300 counts (air scatter, a filter's edge), half at 10: the frame's
    # sigma grows with the step itself, so the flatness test must use the blocks' own noise.
    from braggtrack.pipeline import find_peaks

    h, w = shape
    background = np.where(np.arange(w)[None, :] < w / 2, 300.0, 10.0) * np.ones((h, 1))
    frame, truth = _peaks_on(background, 4 if h > 100 else 2, 2000.0, seed=3)
    assert Preprocessor()(frame).background is not None
    found, false = _recall_false(find_peaks(frame, localizer="gauss"), truth)
    assert found >= 0.9 and false <= 1
    found_global, _ = _recall_false(find_peaks(frame, localizer="gauss", background="global"),
                                    truth)
    assert found_global <= 0.6


@pytest.mark.parametrize("seed", [3, 7])
def test_the_bright_side_of_a_background_step_keeps_its_own_threshold(seed):
    # Interpolating the tiles across a sharp edge of the background (a step, a beam stop,
    # an unmasked module gap of zeros) lowered the threshold of the bright pixels beside it
    # towards the dark tile's: 10-11 false peaks along this step, none with the floor.
    from braggtrack.pipeline import find_peaks

    background = np.where(np.arange(384)[None, :] < 192, 300.0, 10.0) * np.ones((384, 1))
    frame, truth = _peaks_on(background, 6, 2000.0, seed=seed)
    found, false = _recall_false(find_peaks(frame, localizer="gauss", background="local"),
                                 truth)
    assert found == 1.0 and false == 0


def test_a_tile_of_exact_zeros_does_not_take_single_photons_for_peaks():
    # Photon counting: 60 % of the frame at 3 counts a pixel, the rest ~empty. A tile of
    # zeros has MAD 0; at noise 0 every photon passed persistence >= 3 x 0.
    from braggtrack.pipeline import find_peaks

    h, w = 256, 256
    background = np.where(np.arange(w)[None, :] < 0.6 * w, 3.0, 0.01) * np.ones((h, 1))
    frame, truth = _peaks_on(background, 4, 800.0, seed=6)
    found, false = _recall_false(find_peaks(frame, localizer="gauss", background="local"),
                                 truth)
    assert found == 1.0 and false <= 3  # 2 measured, on the bright side of the step's edge
