"""Tests of the simulator against independent computations (erf pixel integrals, dense
supersampling, the Bragg relation, Poisson statistics)."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import erf

from braggtrack import simulate as sim
from braggtrack.errors import InputFileError, OptionError

SHAPE = (81, 81)
FLAT = sim.Background(level=1e-9, slope=0.0, hump=0.0)  # effectively no background
EXACT = sim.Noise(poisson=False, hot_pixels=0)


def centroid(img: np.ndarray) -> tuple[float, float]:
    yy, xx = np.indices(img.shape)
    s = img.sum()
    return float((img * xx).sum() / s), float((img * yy).sum() / s)


def one(**kw) -> pd.DataFrame:
    row = dict(x=40.3, y=39.8, amplitude=1e4, sigma_x=0.8, sigma_y=0.8, eta=0.0, angle=0.0)
    row.update(kw)
    return pd.DataFrame({k: [v] for k, v in row.items()})


# One explicit example of every kind (ranges as documented in the module).
KIND_EXAMPLES = {
    "sharp": dict(sigma_x=0.6, sigma_y=0.7, eta=0.3, angle=0.3),
    "broad": dict(sigma_x=3.0, sigma_y=1.6, eta=0.8, angle=1.1),
    "split": dict(sigma_x=0.7, sigma_y=0.9, eta=0.4, angle=0.2, split_dx=1.2, split_dy=-0.9,
                  split_ratio=0.45),
    "streak": dict(sigma_x=6.0, sigma_y=1.0, eta=0.5, angle=2.0),
    "weak": dict(sigma_x=1.0, sigma_y=0.9, eta=0.2, amplitude=300.0),
    "overlapping": dict(sigma_x=0.9, sigma_y=0.8, eta=0.4, angle=0.7),
}


@pytest.mark.parametrize("kind", sim.KINDS)
def test_noise_free_centroid_and_integral_of_every_kind(kind):
    # Large enough for the whole support of the streak (64 px half extent).
    peak = one(**KIND_EXAMPLES[kind]).assign(x=80.3, y=79.8)
    img = sim.render_peaks((161, 161), peak)
    cx, cy = centroid(img)
    # The pixelized centroid of a pixel-integrated profile differs from the continuous centre of
    # mass only by the pixel-binning bias (< 1e-3 px for these widths).
    assert abs(cx - 80.3) < 1e-3 and abs(cy - 79.8) < 1e-3
    assert img.sum() == pytest.approx(peak.amplitude[0], rel=1e-5)
    assert img.min() >= 0


def test_overlapping_pair_each_keeps_its_own_centre():
    a = one(x=38.2, y=40.1, sigma_x=0.9, sigma_y=0.8, eta=0.4, amplitude=1e4)
    b = one(x=42.9, y=41.7, sigma_x=0.8, sigma_y=0.8, eta=0.2, amplitude=6e3)
    both = sim.render_peaks(SHAPE, pd.concat([a, b]))
    ra, rb = sim.render_peaks(SHAPE, a), sim.render_peaks(SHAPE, b)
    np.testing.assert_allclose(both, ra + rb, rtol=1e-12, atol=1e-12)
    assert centroid(ra) == pytest.approx((38.2, 40.1), abs=1e-3)
    assert centroid(rb) == pytest.approx((42.9, 41.7), abs=1e-3)


def test_split_centre_is_intensity_weighted_mean_of_sub_grains():
    q, dx, dy = 0.5, 1.5, 0.5
    split = sim.render_peaks(SHAPE, one(split_ratio=q, split_dx=dx, split_dy=dy))
    # Independent: grain 1 at c - q/(1+q) d with A/(1+q), grain 2 at c + 1/(1+q) d with qA/(1+q).
    g1 = one(x=40.3 - q / (1 + q) * dx, y=39.8 - q / (1 + q) * dy, amplitude=1e4 / (1 + q))
    g2 = one(x=40.3 + dx / (1 + q), y=39.8 + dy / (1 + q), amplitude=1e4 * q / (1 + q))
    np.testing.assert_allclose(split, sim.render_peaks(SHAPE, pd.concat([g1, g2])), atol=1e-9)
    assert centroid(split) == pytest.approx((40.3, 39.8), abs=1e-3)


@pytest.mark.parametrize("sigma", [0.3, 0.6, 1.0, 2.5])
def test_gaussian_equals_analytic_erf_pixel_integral(sigma):
    cx, cy, sx, sy = 40.27, 39.61, sigma, 1.3 * sigma
    img = sim.render_peaks(SHAPE, one(x=cx, y=cy, sigma_x=sx, sigma_y=sy, amplitude=1.0))
    edges = np.arange(SHAPE[1] + 1) - 0.5
    px = np.diff(0.5 * erf((edges - cx) / (math.sqrt(2) * sx)))
    py = np.diff(0.5 * erf((edges - cy) / (math.sqrt(2) * sy)))
    ref = np.outer(py, px)
    big = ref > 1e-4 * ref.max()
    assert np.max(np.abs(img - ref)[big] / ref[big]) < 1e-4
    assert np.max(np.abs(img - ref)) < 1e-6 * ref.max()


def _dense_reference(cx, cy, su, sv, eta, angle, shape=(41, 41), k=48):
    """Independent midpoint supersampling (k x k per pixel) of the documented profile."""
    hw = math.sqrt(2 * math.log(2))
    gu, gv, tm = su * hw, sv * hw, 100.0
    # Normalization of the tapered Lorentzian by brute-force radial integration.
    t = np.linspace(0, tm, 2_000_001)
    f = (1 - (t / tm) ** 3) ** 4 / (1 + t)
    lint = math.pi * float(np.sum((f[1:] + f[:-1]) / 2 * np.diff(t)))
    sub = (np.arange(k) + 0.5) / k - 0.5
    xs = (np.arange(shape[1])[:, None] + sub[None, :]).ravel()
    ys = (np.arange(shape[0])[:, None] + sub[None, :]).ravel()
    dx, dy = xs[None, :] - cx, ys[:, None] - cy
    c, s = math.cos(angle), math.sin(angle)
    u, v = dx * c + dy * s, -dx * s + dy * c
    qg = (u / su) ** 2 + (v / sv) ** 2
    ql = (u / gu) ** 2 + (v / gv) ** 2
    g = np.where(qg < 36, np.exp(-qg / 2), 0) / (2 * math.pi * su * sv * (1 - math.exp(-18)))
    lor = np.where(ql < tm, (1 - (ql / tm) ** 3) ** 4 / (1 + ql), 0) / (gu * gv * lint)
    dense = (1 - eta) * g + eta * lor
    return dense.reshape(shape[0], k, shape[1], k).mean(axis=(1, 3))


def test_rotated_pseudo_voigt_matches_dense_supersampling():
    args = (20.37, 19.72, 1.1, 0.7, 0.6, 0.5)
    ref = _dense_reference(*args)
    img = sim.render_peaks((41, 41), one(x=args[0], y=args[1], sigma_x=args[2], sigma_y=args[3],
                                         eta=args[4], angle=args[5], amplitude=1.0))
    # Midpoint supersampling itself is good to ~1e-4 of the peak at k = 48.
    assert np.max(np.abs(img - ref)) < 3e-4 * ref.max()
    assert ref.sum() == pytest.approx(1.0, abs=2e-4)


@settings(max_examples=40, deadline=None)
@given(
    fx=st.floats(0.0, 1.0, exclude_max=True), fy=st.floats(0.0, 1.0, exclude_max=True),
    sx=st.floats(0.6, 3.0), sy=st.floats(0.6, 3.0), eta=st.floats(0.0, 0.3),
    angle=st.floats(0.0, math.pi),
)
def test_property_any_subpixel_centre_gives_truth_centroid(fx, fy, sx, sy, eta, angle):
    x, y = 40.0 + fx, 39.0 + fy
    img = sim.render_peaks(SHAPE, one(x=x, y=y, sigma_x=sx, sigma_y=sy, eta=eta, angle=angle))
    cx, cy = centroid(img)
    assert abs(cx - x) < 1e-3 and abs(cy - y) < 1e-3
    assert img.sum() == pytest.approx(1e4, rel=1e-5)


def test_series_is_deterministic_by_seed():
    a = sim.simulate_series(frames=3, shape=(128, 128), peaks=12, messy=0.5, seed=3)
    b = sim.simulate_series(frames=3, shape=(128, 128), peaks=12, messy=0.5, seed=3)
    c = sim.simulate_series(frames=3, shape=(128, 128), peaks=12, messy=0.5, seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    pa, ta = sim.simulate_patches(50, seed=9)
    pb, tb = sim.simulate_patches(50, seed=9)
    np.testing.assert_array_equal(pa, pb)
    pd.testing.assert_frame_equal(ta, tb)


def test_poisson_mean_and_variance_on_flat_background():
    bg = sim.Background(level=50.0, slope=0.0, hump=0.0)
    frames, truth = sim.simulate_series(frames=2, shape=(256, 256), peaks=0, seed=0,
                                        background=bg, noise=sim.Noise(hot_pixels=0))
    assert len(truth) == 0
    n = frames.size
    assert frames.mean() == pytest.approx(50.0, abs=4 * math.sqrt(50 / n))
    # Var of the sample variance of Poisson(50) ~ (2 * 50**2 + 50) / n.
    assert frames.var() == pytest.approx(50.0, abs=4 * math.sqrt((2 * 2500 + 50) / n))
    assert np.all(frames == np.round(frames))  # counts
    # Gain and read noise: mean g*lam + pedestal, variance g**2 lam + read**2.
    noisy = sim.Noise(gain=2.0, read_noise=3.0, pedestal=10.0, hot_pixels=0)
    frames, _ = sim.simulate_series(frames=2, shape=(256, 256), peaks=0, seed=1, background=bg,
                                    noise=noisy)
    assert frames.mean() == pytest.approx(110.0, abs=0.2)
    assert frames.var() == pytest.approx(4 * 50 + 9, rel=0.03)


def test_hot_pixels_stand_far_above_their_neighbours():
    bg = sim.Background(level=20.0, slope=0.0, hump=0.0)
    frames, truth = sim.simulate_series(frames=2, shape=(128, 128), peaks=0, seed=2,
                                        background=bg, noise=sim.Noise(hot_pixels=3))
    hot = truth.attrs["hot_pixels"]
    assert len(hot) == 3
    for r, c in hot:
        assert np.all(frames[:, r, c] > 20 * 20)  # persistent and far above a 20-count level


def test_frames_are_the_rendering_of_the_visible_truth():
    frames, truth = sim.simulate_series(frames=4, shape=(160, 160), peaks=10, messy=0.6, seed=5,
                                        background=FLAT, noise=EXACT, appear_fraction=1.0)
    assert not truth.visible.all()  # some particles appear, end or vanish
    assert not truth.clipped.any()
    for f in range(4):
        rows = truth[(truth.frame == f) & truth.visible]
        ref = sim.render_peaks((160, 160), rows)
        np.testing.assert_allclose(frames[f], ref, rtol=1e-6, atol=1e-3)
    assert not truth.isna().any().any()


def test_small_frame_clipped_peaks_have_centre_of_mass_of_the_visible_part():
    frames, truth = sim.simulate_series(frames=1, shape=(96, 96), peaks=6, messy=1.0, seed=3,
                                        background=FLAT, noise=EXACT)
    clipped = truth[truth.clipped & truth.visible]
    assert len(clipped) > 0 and not truth[~truth.clipped].eval("x != x_centre").any()
    for _, row in clipped.iterrows():
        alone = sim.render_peaks((96, 96), row.to_frame().T)
        assert alone.sum() < row.amplitude * (1 - 1e-6)
        # Pixelized centroid of what landed in the frame vs the continuous truth.
        assert centroid(alone) == pytest.approx((row.x, row.y), abs=2e-3)


def test_radial_drift_follows_the_bragg_relation_of_the_true_strain():
    frames, truth = sim.simulate_series(frames=6, shape=(256, 256), peaks=20, messy=0.3, seed=7,
                                        strain_amplitude=(3e-3, 6e-3), beam_centre=(-40.0, 100.0))
    a = truth.attrs
    bx, by = a["beam_centre"]
    assert (bx, by) == (-40.0, 100.0)
    lam, dist, pix = a["wavelength_A"], a["distance_mm"], a["pixel_mm"]
    r0 = np.hypot(truth.x0 - bx, truth.y0 - by)
    r = np.hypot(truth.x_centre - bx, truth.y_centre - by)
    np.testing.assert_allclose(truth.r, r, atol=1e-9)
    # Independent Bragg: d0 from r0, d = d0 (1 + strain), back to a radius.
    d0 = lam / (2 * np.sin(np.arctan(r0 * pix / dist) / 2))
    r_exp = dist * np.tan(2 * np.arcsin(lam / (2 * d0 * (1 + truth.strain)))) / pix
    np.testing.assert_allclose(r, r_exp, atol=1e-8)
    # Direction: d up -> r down, along the radius; small-angle magnitude r0 * strain.
    moving = truth.strain.abs() > 1e-4
    assert np.all(np.sign(r - r0)[moving] == -np.sign(truth.strain[moving]))
    cross = (truth.x0 - bx) * (truth.y_centre - by) - (truth.y0 - by) * (truth.x_centre - bx)
    assert np.max(np.abs(cross / r0)) < 1e-9
    np.testing.assert_allclose((r - r0)[moving], (-r0 * truth.strain)[moving], rtol=0.1)


def test_kinds_follow_messy_and_overlapping_pairs_are_close():
    _, truth = sim.simulate_series(frames=1, shape=(512, 512), peaks=100, messy=0.3, seed=1)
    counts = truth.kind.value_counts()
    assert set(counts.index) == set(sim.KINDS)
    assert 69 <= counts["sharp"] <= 71
    ov = truth[truth.kind == "overlapping"].set_index("particle")
    for p, row in ov.iterrows():
        other = ov.loc[row.partner]
        assert other.partner == p
        assert 2.5 < math.hypot(row.x - other.x, row.y - other.y) < 6.5
    far = truth[truth.kind != "overlapping"]
    d = np.hypot(far.x.to_numpy()[:, None] - far.x.to_numpy(), far.y.to_numpy()[:, None]
                 - far.y.to_numpy())
    np.fill_diagonal(d, np.inf)
    assert d.min() >= 12.0
    weak = truth[truth.kind == "weak"]
    snr = weak.height / np.sqrt(weak.background)
    assert np.all((snr > 3.5) & (snr < 8.5))


def test_simulate_to_file_round_trip(tmp_path):
    path = sim.simulate_to_file(tmp_path / "s.h5", frames=5, shape=(512, 512), peaks=100,
                                messy=0.3, seed=1)
    frames, truth = sim.simulate_series(frames=5, shape=(512, 512), peaks=100, messy=0.3, seed=1)
    with h5py.File(path, "r") as f:
        assert f["/entry"].attrs["NX_class"] == "NXentry"
        data = f["/entry/data/data"]
        assert data.shape == (5, 512, 512) and data.chunks == (1, 512, 512)
        assert f["/entry/instrument/detector/data"] == data  # hard link, same object
        np.testing.assert_array_equal(data[2], frames[2])
        assert f["/entry/truth"].attrs["seed"] == 1
        assert f["/entry/truth/kind"].dtype.kind == "S"
    back = sim.read_truth(path)
    pd.testing.assert_frame_equal(back, truth, check_dtype=False)
    assert back.attrs["parameters"]["peaks"] == 100


def test_write_series_with_metadata_and_compression(tmp_path):
    run = sim.simulate_operando(frames=3, shape=(128, 128), peaks=5, seed=0)
    p = sim.write_series(tmp_path / "o.h5", run.frames, run.truth, metadata=run.frame_meta,
                         cycler_log=run.cycler_log, compression="gzip")
    pd.testing.assert_frame_equal(sim.read_frame_meta(p), run.frame_meta, check_dtype=False)
    pd.testing.assert_frame_equal(sim.read_cycler_log(p), run.cycler_log, check_dtype=False)
    with h5py.File(p, "r") as f:
        assert f["/entry/data/data"].compression == "gzip"


def test_operando_strain_follows_state_of_charge():
    run = sim.simulate_operando(frames=24, shape=(384, 384), peaks=30, seed=2, lag_fraction=0.0,
                                inactive_fraction=0.0)
    meta, truth, log = run.frame_meta, run.truth, run.cycler_log
    assert list(meta.columns) == ["frame", "time_s", "voltage_V", "current_mA", "capacity_mAh",
                                  "state_of_charge", "cycle", "branch"]
    assert np.all(np.diff(meta.time_s) > 0) and len(log) > 10 * len(meta)
    charge = meta[meta.branch == "charge"]
    assert np.all(np.diff(charge.voltage_V) > 0) and np.all(charge.current_mA > 0)
    assert np.all(meta[meta.branch == "discharge"].current_mA < 0)
    # The cycler's own log, interpolated onto the frame times, agrees with the frame metadata.
    v = np.interp(meta.time_s, log.time_s, log.voltage_V)
    assert np.max(np.abs(v - meta.voltage_V)) < 0.02
    # Without lag every particle's SOC is the cell's, and its lattice follows it.
    soc = truth.frame.map(meta.set_index("frame").state_of_charge)
    np.testing.assert_allclose(truth.state_of_charge, soc, atol=1e-12)
    c_shape = (1.6 * soc - 0.9 * soc**3) / 0.8215
    ratio = truth.strain_c / c_shape.where(c_shape > 0.05)
    per = ratio.groupby(truth.particle).agg(["min", "max"]).dropna()
    np.testing.assert_allclose(per["min"], per["max"], rtol=1e-9)
    assert per["min"].between(2e-3, 5e-3).all()
    # Strain of a reflection = d / d0 - 1 from the hexagonal metric (independent formula).
    hkl = np.array([[int(ch) for ch in s] for s in truth.hkl])

    def d_hex(a, c):
        h, k, el = hkl.T
        return 1 / np.sqrt(4 / 3 * (h * h + h * k + k * k) / a**2 + el**2 / c**2)

    a0, c0 = truth.attrs["parameters"]["lattice_a_A"], truth.attrs["parameters"]["lattice_c_A"]
    d = d_hex(a0 * (1 + truth.strain_a), c0 * (1 + truth.strain_c))
    np.testing.assert_allclose(truth.strain, d / d_hex(a0, c0) - 1, atol=1e-12)
    # Visible: the shifts are a fraction of a pixel to about a pixel.
    shift = truth.groupby("particle").r.agg(lambda s: s.max() - s.min())
    assert 0.2 < shift.max() < 5.0


def test_patches_truth_and_kinds():
    patches, truth = sim.simulate_patches(600, patch=11, seed=3)
    assert patches.shape == (600, 11, 11) and patches.dtype == np.float32
    assert set(truth.kind) == set(sim.KINDS)
    assert np.all(np.abs(truth[["x", "y"]].to_numpy() - 5) <= 1.0)
    assert not truth.isna().any().any()
    ov = truth[truth.kind == "overlapping"]
    dist = np.hypot(ov.neighbour_dx, ov.neighbour_dy)
    assert dist.between(3, 6).all() and (ov.neighbour_amplitude > 0).all()
    assert (truth[truth.kind != "overlapping"].neighbour_amplitude == 0).all()
    # Bright sharp peaks: the brightest pixel sits next to the true centre.
    bright = truth[(truth.kind == "sharp") & (truth.height > 30 * np.sqrt(truth.background))
                   & ~truth.hot_pixel]
    idx = patches[bright.patch].reshape(len(bright), -1).argmax(1)
    assert np.all(np.abs(idx % 11 - bright.x) <= 1.0) and np.all(np.abs(idx // 11 - bright.y) <= 1.0)
    # Background level is what the truth says (median of the border pixels of faint patches).
    weak = truth[truth.kind == "weak"]
    border = np.concatenate([patches[weak.patch, 0, :], patches[weak.patch, -1, :]], axis=1)
    np.testing.assert_allclose(np.median(border, axis=1).mean() / weak.background.mean(), 1.0,
                               rtol=0.1)


def test_extra_kinds_only_when_named_and_in_their_ranges():
    patches, truth = sim.simulate_patches(300, patch=11, kinds=sim.EXTRA_KINDS, seed=4)
    assert set(truth.kind) == set(sim.EXTRA_KINDS) and np.isfinite(patches).all()
    by = {k: truth[truth.kind == k] for k in sim.EXTRA_KINDS}
    small = by["undersampled"][["sigma_x", "sigma_y"]].to_numpy()
    assert small.min() >= 0.25 and small.max() <= 0.6
    assert by["wide"].sigma_x.between(3.0, 4.5).all()
    assert (by["wide"].sigma_y <= by["wide"].sigma_x).all()
    assert by["lorentzian"].eta.between(0.8, 1.0).all()
    shadow = by["shadowed"]
    assert (shadow.neighbour_amplitude / shadow.amplitude).between(1.0, 3.0).all()
    assert np.hypot(shadow.neighbour_dx, shadow.neighbour_dy).between(3.0, 6.0).all()
    # A set without them draws exactly what it did before they existed: the same random stream,
    # so patches named by seed (training sets, test seeds) are unchanged.
    # Golden draws made by the simulator before EXTRA_KINDS were added.
    _, old = sim.simulate_patches(50, kinds=("sharp", "streak"), seed=9)
    np.testing.assert_allclose(old.x[:3], [4.991744951026, 5.823308265142, 5.427784974798],
                               atol=1e-11)
    np.testing.assert_allclose(old.sigma_x[:3], [1.14768603107, 3.586664048305, 3.29546213775],
                               atol=1e-11)
    assert not set(sim.simulate_patches(200, seed=1)[1].kind) & set(sim.EXTRA_KINDS)


def test_bad_options_raise_clear_errors(tmp_path):
    with pytest.raises(OptionError, match="messy"):
        sim.simulate_series(frames=1, shape=(64, 64), peaks=2, messy=1.5)
    with pytest.raises(OptionError, match="frames"):
        sim.simulate_series(frames=0, shape=(64, 64), peaks=2)
    with pytest.raises(OptionError, match="cannot place"):
        sim.simulate_series(frames=1, shape=(64, 64), peaks=200)
    with pytest.raises(OptionError, match="patch"):
        sim.simulate_patches(3, patch=10)
    with pytest.raises(OptionError, match="kind"):
        sim.simulate_patches(3, kinds=["blob"])
    with pytest.raises(OptionError, match="compression"):
        sim.write_series(tmp_path / "x.h5", np.zeros((1, 8, 8)), None, compression="zip")
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    with pytest.raises(InputFileError, match="bad.h5"):
        sim.read_truth(bad)
    ok = sim.write_series(tmp_path / "nt.h5", np.zeros((1, 8, 8)), None)
    with pytest.raises(InputFileError, match="truth"):
        sim.read_truth(ok)
