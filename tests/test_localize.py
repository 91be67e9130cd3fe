"""Tests of braggtrack.localize on analytic peaks whose centres are known exactly.

Golden data are computed here, independently of the code under test: Gaussians integrated
exactly over each pixel with ``erf`` differences, pseudo-Voigts integrated by 16 x 16
supersampling of each pixel.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import erf

from braggtrack import localize as L
from braggtrack.errors import OptionError
from braggtrack.patches import extract_patches

N = 11
C = N // 2
FLOAT_COLUMNS = ["dx", "dy", "dx_err", "dy_err", "sigma_x", "sigma_y", "amplitude",
                 "background", "intensity"]


def erf_gauss(shape, x0, y0, sx, sy, volume, background=0.0):
    """Pixel-integrated axis-aligned Gaussian; pixel (row 0, col 0) is centred at (0, 0)."""
    h, w = shape
    xe = np.arange(w + 1) - 0.5
    ye = np.arange(h + 1) - 0.5
    fx = np.diff(0.5 * erf((xe - x0) / (sx * math.sqrt(2))))
    fy = np.diff(0.5 * erf((ye - y0) / (sy * math.sqrt(2))))
    return volume * np.outer(fy, fx) + background


def supersampled_pvoigt(shape, x0, y0, hwhm_u, hwhm_v, angle, eta, height, background=0.0,
                        sub=16):
    """Pseudo-Voigt averaged over ``sub x sub`` points per pixel."""
    h, w = shape
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    ys = (np.arange(h)[:, None] + offs[None, :]).ravel()
    xs = (np.arange(w)[:, None] + offs[None, :]).ravel()
    yy, xx = np.meshgrid(ys - y0, xs - x0, indexing="ij")
    cu, su = math.cos(angle), math.sin(angle)
    uu = cu * xx + su * yy
    vv = -su * xx + cu * yy
    q = (uu / hwhm_u) ** 2 + (vv / hwhm_v) ** 2
    prof = eta / (1 + q) + (1 - eta) * np.exp(-math.log(2) * q)
    return height * prof.reshape(h, sub, w, sub).mean(axis=(1, 3)) + background


def gauss_patches(dx, dy, sx, sy, volume, background):
    return np.stack([
        erf_gauss((N, N), C + a, C + b, s1, s2, v, bg)
        for a, b, s1, s2, v, bg in zip(dx, dy, sx, sy, volume, background, strict=True)
    ])


def assert_clean_table(table, n):
    assert list(table.columns) == list(L.COLUMNS)
    assert len(table) == n
    for c in FLOAT_COLUMNS:
        assert np.isfinite(table[c].to_numpy(dtype=float)).all(), c
    assert table.converged.dtype == bool
    assert all(isinstance(r, str) for r in table.reason)


# --------------------------------------------------------------------------- noise-free


@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_gauss_noise_free_recovers_centre(engine):
    rng = np.random.default_rng(3)
    n = 40
    dx, dy = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    sx, sy = rng.uniform(0.5, 2.0, n), rng.uniform(0.5, 2.0, n)
    p = gauss_patches(dx, dy, sx, sy, rng.uniform(100, 1e5, n), rng.uniform(0, 50, n))
    t = L.fit_gauss(p, engine=engine)
    assert_clean_table(t, n)
    assert t.converged.all()
    assert np.abs(t.dx - dx).max() < 1e-3
    assert np.abs(t.dy - dy).max() < 1e-3
    assert np.abs(t.sigma_x - sx).max() < 1e-3


def test_gauss_amplitude_background_intensity():
    bg, vol, s = 20.0, 5000.0, 1.3
    p = erf_gauss((N, N), C + 0.2, C - 0.3, s, s, vol, bg)[None]
    t = L.fit_gauss(p).iloc[0]
    inside = vol * np.diff(0.5 * erf((np.array([-C - 0.5, C + 0.5]) - 0.2) / (s * 2**0.5)))[0] \
        * np.diff(0.5 * erf((np.array([-C - 0.5, C + 0.5]) + 0.3) / (s * 2**0.5)))[0]
    assert t.background == pytest.approx(bg, rel=1e-4)
    assert t.amplitude == pytest.approx(vol / (2 * math.pi * s * s), rel=1e-4)
    assert t.intensity == pytest.approx(inside, rel=1e-4)


def pvoigt_cases(n, seed):
    rng = np.random.default_rng(seed)
    dx, dy = rng.uniform(-0.8, 0.8, n), rng.uniform(-0.8, 0.8, n)
    p = np.stack([
        supersampled_pvoigt((N, N), C + a, C + b, rng.uniform(0.9, 2.2), rng.uniform(0.9, 2.2),
                            rng.uniform(0, math.pi), rng.uniform(0, 1), rng.uniform(50, 5000),
                            rng.uniform(0, 30))
        for a, b in zip(dx, dy, strict=True)
    ])
    return p, dx, dy


@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_pvoigt_noise_free_recovers_centre(engine):
    p, dx, dy = pvoigt_cases(30, seed=5)
    t = L.fit_pvoigt(p, engine=engine)
    assert_clean_table(t, len(dx))
    assert t.converged.all()
    assert np.abs(t.dx - dx).max() < 1e-3
    assert np.abs(t.dy - dy).max() < 1e-3


def test_engines_agree():
    p, _, _ = pvoigt_cases(10, seed=9)
    a = L.fit_pvoigt(p, engine="numba")
    b = L.fit_pvoigt(p, engine="numpy")
    np.testing.assert_allclose(a.dx, b.dx, atol=1e-5)
    np.testing.assert_allclose(a.dx_err, b.dx_err, rtol=1e-3, atol=1e-9)


# --------------------------------------------------------------------------- pixel locking


def slide(render, steps=np.arange(-0.5, 0.5001, 0.05)):
    return np.stack([render(C + s, C + 0.3 * s) for s in steps]), steps


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.8])
def test_pixel_locking_gauss_and_pvoigt(sigma):
    """Slide a peak across a pixel in 0.05 px steps: the error must stay flat."""
    p, steps = slide(lambda x, y: erf_gauss((N, N), x, y, sigma, sigma * 1.2, 3000.0, 10.0))
    for name, fit in [("gauss", L.fit_gauss), ("pvoigt", L.fit_pvoigt)]:
        t = fit(p)
        bias = np.concatenate([t.dx - steps, t.dy - 0.3 * steps])
        assert np.abs(bias).max() < 0.02, (name, sigma, np.abs(bias).max())
    # The centroid is reported, not held to the same standard: its background clipping
    # and truncation make it lock for sharp peaks.
    t = L.centroid(p)
    bias = np.abs(t.dx - steps).max()
    print(f"centroid pixel-locking max |bias| at sigma={sigma}: {bias:.4f} px")
    assert bias < 0.2


def test_pixel_locking_pvoigt_sharp_pvoigt_data():
    p, steps = slide(lambda x, y: supersampled_pvoigt((N, N), x, y, 0.7, 0.9, 0.4, 0.5, 1000.0, 5))
    t = L.fit_pvoigt(p)
    assert np.abs(t.dx - steps).max() < 0.02
    assert np.abs(t.dy - 0.3 * steps).max() < 0.02


@pytest.mark.parametrize("method", ["gauss", "pvoigt"])
def test_patch_cut_around_neighbours_does_not_move_position(method):
    """Cut the patch around each of the 8 neighbours of the maximum: same detector position."""
    x0, y0 = 20.23, 17.61
    if method == "gauss":
        frame = erf_gauss((40, 40), x0, y0, 1.1, 1.3, 4000.0, 15.0)
    else:
        frame = supersampled_pvoigt((40, 40), x0, y0, 1.3, 1.6, 0.5, 0.4, 800.0, 15.0)
    r0, c0 = np.unravel_index(np.argmax(frame), frame.shape)
    dr, dc = np.meshgrid([-1, 0, 1], [-1, 0, 1], indexing="ij")
    ps = extract_patches(frame, r0 + dr.ravel(), c0 + dc.ravel(), size=N)
    t = L.localize(ps, method)
    assert t.converged.all()
    x = ps.cols + t.dx.to_numpy()
    y = ps.rows + t.dy.to_numpy()
    assert np.ptp(x) < 0.01 and np.ptp(y) < 0.01
    assert abs(np.median(x) - x0) < 0.01 and abs(np.median(y) - y0) < 0.01


# --------------------------------------------------------------------------- noise


@pytest.mark.parametrize("method", ["centroid", "gauss", "pvoigt"])
def test_reported_errors_match_scatter_under_poisson_noise(method):
    rng = np.random.default_rng(11)
    n = 300
    dx, dy = rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n)
    clean = gauss_patches(dx, dy, np.full(n, 1.2), np.full(n, 1.0), np.full(n, 3000.0),
                          np.full(n, 20.0))
    noisy = rng.poisson(clean).astype(np.float32)
    t = L.localize(noisy, method)
    assert_clean_table(t, n)
    assert t.converged.mean() > 0.98
    for err, reported in [(t.dx - dx, t.dx_err), (t.dy - dy, t.dy_err)]:
        ratio = np.sqrt(np.mean(err**2)) / np.median(reported)
        assert 0.5 < ratio < 2.0, (method, ratio)


@pytest.mark.parametrize("method", ["centroid", "gauss", "pvoigt"])
def test_precision_near_cramer_rao_bound(method):
    """RMS error under Poisson noise within 1.6x of the Cramer-Rao bound of x alone."""
    rng = np.random.default_rng(12)
    n, vol, bg, s = 400, 2000.0, 50.0, 1.0
    dx, dy = rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n)
    clean = gauss_patches(dx, dy, np.full(n, s), np.full(n, s), np.full(n, vol), np.full(n, bg))
    noisy = rng.poisson(clean).astype(np.float32)
    # Fisher information of x for Poisson pixels, d mu / dx by central differences.
    h = 1e-5
    fisher = []
    for a, b in zip(dx[:50], dy[:50], strict=True):
        mu = erf_gauss((N, N), C + a, C + b, s, s, vol, bg)
        d = (erf_gauss((N, N), C + a + h, C + b, s, s, vol, bg)
             - erf_gauss((N, N), C + a - h, C + b, s, s, vol, bg)) / (2 * h)
        fisher.append((d**2 / mu).sum())
    bound = 1 / math.sqrt(np.mean(fisher))
    rms = math.sqrt(np.mean((L.localize(noisy, method).dx - dx) ** 2))
    assert 0.9 * bound < rms < 1.6 * bound, (method, rms, bound)


def hc3_position_errors(patch, dx, dy, sx, sy, volume, background, step=1e-6):
    """HC3 sandwich errors of (dx, dy), dense, from a finite-difference Jacobian of
    :func:`erf_gauss` (independent of the fitter's separable formulas)."""
    theta = np.array([C + dx, C + dy, sx, sy, volume, background], dtype=np.float64)

    def model(t):
        return erf_gauss((N, N), *t).ravel()

    scale = np.maximum(np.abs(theta), 1.0)
    jac = np.empty((N * N, 6))
    for k in range(6):
        h = step * scale[k]
        up, down = theta.copy(), theta.copy()
        up[k] += h
        down[k] -= h
        jac[:, k] = (model(up) - model(down)) / (2 * h)
    resid = patch.ravel() - model(theta)
    bread = np.linalg.inv(jac.T @ jac)
    lev = np.clip(np.einsum("pk,kl,pl->p", jac, bread, jac), 0.0, 0.99)
    meat = (jac * (resid**2 / (1 - lev) ** 2)[:, None]).T @ jac
    cov = bread @ meat @ bread
    return math.sqrt(cov[0, 0]), math.sqrt(cov[1, 1])


def test_gauss_errors_equal_dense_sandwich():
    """The fused, separable HC3 sandwich of the numba fit equals the dense textbook one."""
    rng = np.random.default_rng(21)
    n = 8
    dx, dy = rng.uniform(-0.7, 0.7, n), rng.uniform(-0.7, 0.7, n)
    sx, sy = rng.uniform(0.8, 1.8, n), rng.uniform(0.8, 1.8, n)
    clean = gauss_patches(dx, dy, sx, sy, rng.uniform(2e3, 2e4, n), rng.uniform(5, 40, n))
    noisy = rng.poisson(clean).astype(np.float64)
    for engine in ("numba", "numpy"):
        t = L.fit_gauss(noisy, engine=engine)
        assert t.converged.all()
        for k in range(n):
            row = t.iloc[k]
            volume = row.amplitude * 2 * math.pi * row.sigma_x * row.sigma_y
            ex, ey = hc3_position_errors(noisy[k], row.dx, row.dy, row.sigma_x, row.sigma_y,
                                         volume, row.background)
            assert row.dx_err == pytest.approx(ex, rel=1e-7), (engine, k)
            assert row.dy_err == pytest.approx(ey, rel=1e-7), (engine, k)


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("method", ["centroid", "gauss", "pvoigt"])
def test_flat_patches_are_flagged_not_nan(method):
    p = np.stack([np.full((N, N), 7.0), np.zeros((N, N)),
                  erf_gauss((N, N), C, C, 1.0, 1.0, 1000.0, 5.0)])
    t = L.localize(p, method)
    assert_clean_table(t, 3)
    assert t.converged.tolist() == [False, False, True]
    assert t.reason.tolist()[:2] == ["flat", "flat"]
    assert t.reason[2] == ""


def test_edge_patch_is_flagged_by_patches():
    frame = erf_gauss((30, 30), 1.0, 15.0, 1.0, 1.0, 1000.0, 5.0)
    ps = extract_patches(frame, [15, 15], [1, 15], size=N)
    assert ps.edge.tolist() == [True, False]
    assert_clean_table(L.localize(ps, "pvoigt"), 2)


def test_failed_fit_falls_back_to_centroid():
    # Only one iteration allowed: the fit cannot converge; position is the centroid's.
    p = erf_gauss((N, N), C + 0.3, C - 0.2, 1.0, 1.0, 1000.0, 5.0)[None]
    t = L.fit_pvoigt(p, max_iter=1, ftol=1e-15, xtol=1e-15)
    c = L.centroid(p)
    assert not t.converged[0]
    assert t.reason[0] == "not_converged"
    assert t.dx[0] == pytest.approx(c.dx[0])


patch_arrays = st.integers(0, 2**32 - 1).flatmap(
    lambda seed: st.sampled_from(["uniform", "huge", "constant", "negative", "spiky", "tiny"]).map(
        lambda kind: (seed, kind)
    )
)


def garbage(seed, kind, n=6, size=7):
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        p = rng.uniform(-1e6, 1e6, (n, size, size))
    elif kind == "huge":
        p = rng.choice([-3e38, 3e38, 0.0, 1e-38], (n, size, size))
    elif kind == "constant":
        p = np.full((n, size, size), rng.normal() * 1e30)
    elif kind == "negative":
        p = -rng.exponential(1e3, (n, size, size))
    elif kind == "spiky":
        p = np.zeros((n, size, size))
        p[np.arange(n), rng.integers(0, size, n), rng.integers(0, size, n)] = 1e20
    else:
        p = rng.normal(0, 1e-30, (n, size, size))
    return p.astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(patch_arrays)
def test_garbage_never_gives_nan_or_raises(case):
    p = garbage(*case)
    for method in ("centroid", "gauss", "pvoigt"):
        assert_clean_table(L.localize(p, method), len(p))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=25,
                max_size=25))
def test_arbitrary_finite_floats_never_nan(values):
    p = np.array(values, dtype=np.float32).reshape(1, 5, 5)
    for method in ("centroid", "gauss", "pvoigt"):
        assert_clean_table(L.localize(p, method), 1)


def test_non_finite_pixels_are_flagged():
    p = erf_gauss((N, N), C, C, 1.0, 1.0, 1000.0, 5.0)[None].copy()
    p[0, 0, 0] = np.nan
    t = L.fit_gauss(p)
    assert_clean_table(t, 1)
    assert t.reason[0] == "non_finite"


# --------------------------------------------------------------------------- API


def test_empty_input_gives_empty_table():
    for method in ("centroid", "gauss", "pvoigt"):
        t = L.localize(np.zeros((0, N, N)), method)
        assert list(t.columns) == list(L.COLUMNS) and len(t) == 0


def test_bad_input_raises_option_error():
    with pytest.raises(OptionError):
        L.localize(np.zeros((3, 10, 10)), "gauss")  # even
    with pytest.raises(OptionError):
        L.localize(np.zeros((3, 9, 7)), "gauss")
    with pytest.raises(OptionError):
        L.localize(np.zeros((3, 9, 9)), "magic")
    with pytest.raises(OptionError):
        L.localize(np.zeros((3, 9, 9)), "gauss", oversample=2)  # not a Gaussian option
    with pytest.raises(OptionError):
        L.fit_pvoigt(np.zeros((3, 9, 9)), oversample=0)
    with pytest.raises(OptionError):
        L.fit_gauss(np.zeros((3, 9, 9)), engine="cuda")


def test_single_patch_and_blocks():
    p, dx, _ = pvoigt_cases(7, seed=2)
    whole = L.fit_pvoigt(p)
    blocked = L.fit_pvoigt(p, block=3)
    pd.testing.assert_frame_equal(whole, blocked)
    one = L.localize(p[0], "gauss")
    assert len(one) == 1


def test_braggnn_dispatch(monkeypatch):
    braggnn = pytest.importorskip("braggtrack.braggnn")
    seen = {}

    def fake_predict(model, patches, *, device="cpu", **opts):
        seen.update(model=model, shape=patches.shape, device=device, opts=opts)
        return L.centroid(patches)

    monkeypatch.setattr(braggnn, "predict", fake_predict)
    p = erf_gauss((N, N), C, C, 1.0, 1.0, 1000.0, 5.0)[None]
    model = object()
    t = L.localize(p, "braggnn", model=model, batch_size=8)
    assert seen["model"] is model
    assert seen["shape"] == (1, N, N) and seen["device"] == "cpu"
    assert seen["opts"] == {"batch_size": 8}
    assert_clean_table(t, 1)
