"""The torch engine of the batched fits against the numpy and numba engines.

The torch engine is the numpy engine's algorithm on a torch device (for GPUs), so on the CPU
device it must give the numpy engine's table: same positions, errors, flags and reasons, to
rounding. These tests run on the CPU; ``test_cuda_equals_numpy`` repeats the comparison on
CUDA where a GPU is present.
"""

from __future__ import annotations

import functools
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from braggtrack import localize as L
from braggtrack.errors import OptionError
from test_localize import (  # the golden-data helpers
    FLOAT_COLUMNS,
    C,
    N,
    assert_clean_table,
    erf_gauss,
    garbage,
    gauss_patches,
    hc3_position_errors,
    pvoigt_cases,
)

FITS = {"gauss": L.fit_gauss, "pvoigt": L.fit_pvoigt}
POSITION = ["dx", "dy", "sigma_x", "sigma_y"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    # The machine is shared and the blocks are small: one thread, as in worker processes.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def assert_same_table(a: pd.DataFrame, b: pd.DataFrame, *, atol=1e-6, rtol=1e-6):
    """Same flags and reasons; positions and widths within ``atol`` px, errors within
    ``rtol``; amplitudes, backgrounds and intensities (counts) within ``rtol`` where the fit
    converged (a failed fit reports the centroid's position, but the amplitude and background
    of wherever its iterations stopped)."""
    assert a.reason.tolist() == b.reason.tolist()
    assert a.converged.tolist() == b.converged.tolist()
    for c in POSITION:
        np.testing.assert_allclose(a[c], b[c], rtol=0, atol=atol, err_msg=c)
    for c in ("dx_err", "dy_err"):
        np.testing.assert_allclose(a[c], b[c], rtol=rtol, atol=1e-12, err_msg=c)
    ok = a.converged.to_numpy()
    for c in ("amplitude", "background", "intensity"):
        x, y = a[c].to_numpy()[ok], b[c].to_numpy()[ok]
        scale = max(1.0, float(np.abs(x).max(initial=0.0)))
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale, err_msg=c)


def noisy_gauss(n, seed):
    rng = np.random.default_rng(seed)
    dx, dy = rng.uniform(-0.8, 0.8, n), rng.uniform(-0.8, 0.8, n)
    clean = gauss_patches(dx, dy, rng.uniform(0.6, 2.0, n), rng.uniform(0.6, 2.0, n),
                          rng.uniform(500, 2e4, n), rng.uniform(2, 50, n))
    return rng.poisson(clean).astype(np.float64), dx, dy


# --------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("method", ["gauss", "pvoigt"])
def test_noise_free_equals_numpy_and_numba(method):
    if method == "gauss":
        rng = np.random.default_rng(4)
        dx, dy = rng.uniform(-1, 1, 30), rng.uniform(-1, 1, 30)
        p = gauss_patches(dx, dy, rng.uniform(0.5, 2, 30), rng.uniform(0.5, 2, 30),
                          rng.uniform(100, 1e5, 30), rng.uniform(0, 50, 30))
    else:
        p, dx, dy = pvoigt_cases(30, seed=5)
    fit = FITS[method]
    t = fit(p, engine="torch")
    assert_clean_table(t, len(p))
    assert t.converged.all()
    assert np.abs(t.dx - dx).max() < 1e-3 and np.abs(t.dy - dy).max() < 1e-3
    assert_same_table(t, fit(p, engine="numpy"))
    assert_same_table(t, fit(p, engine="numba"))


@pytest.mark.parametrize("method", ["gauss", "pvoigt"])
@pytest.mark.parametrize("seed", [1, 2])
def test_poisson_noise_equals_numpy_and_numba(method, seed):
    p, _, _ = noisy_gauss(200, seed)
    fit = FITS[method]
    t = fit(p, engine="torch")
    assert t.converged.mean() > 0.98
    assert_same_table(t, fit(p, engine="numpy"))
    assert_same_table(t, fit(p, engine="numba"))


@pytest.mark.parametrize("method", ["gauss", "pvoigt"])
def test_simulated_messy_patches_equal_numpy_and_numba(method):
    """The simulator's patches (broadened, split, streaked, weak peaks, neighbours): the
    same reasons, and positions within 1e-6 px wherever the fits converge."""
    from braggtrack.simulate import simulate_patches

    p, _ = simulate_patches(300, patch=11, seed=7)
    fit = FITS[method]
    t = fit(p, engine="torch")
    assert_clean_table(t, len(p))
    assert t.converged.mean() > 0.9
    # Errors to 1e-5: a few fits are badly conditioned enough to move them by a few 1e-6.
    assert_same_table(t, fit(p, engine="numpy"), rtol=1e-5)
    assert_same_table(t, fit(p, engine="numba"), rtol=1e-5)


@pytest.mark.parametrize("oversample", [1, 3])
def test_pvoigt_oversample_equals_numpy(oversample):
    p, _, _ = pvoigt_cases(12, seed=8)
    p = np.random.default_rng(0).poisson(p).astype(np.float64)
    t = L.fit_pvoigt(p, engine="torch", oversample=oversample)
    assert_same_table(t, L.fit_pvoigt(p, engine="numpy", oversample=oversample))


def test_gauss_errors_equal_dense_sandwich():
    """The torch engine's HC3 errors equal the dense textbook sandwich (as the others do)."""
    p, _, _ = noisy_gauss(8, seed=21)
    t = L.fit_gauss(p, engine="torch")
    assert t.converged.all()
    for k in range(len(p)):
        row = t.iloc[k]
        volume = row.amplitude * 2 * math.pi * row.sigma_x * row.sigma_y
        ex, ey = hc3_position_errors(p[k], row.dx, row.dy, row.sigma_x, row.sigma_y, volume,
                                     row.background)
        assert row.dx_err == pytest.approx(ex, rel=1e-7), k
        assert row.dy_err == pytest.approx(ey, rel=1e-7), k


def test_blocks_do_not_change_the_result():
    p, _, _ = noisy_gauss(9, seed=6)
    p[4] = 7.0  # a flat patch: the live subset of its block is not the whole block
    whole = L.fit_pvoigt(p, engine="torch")
    pd.testing.assert_frame_equal(whole, L.fit_pvoigt(p, engine="torch", block=4))
    assert whole.reason[4] == "flat"


# --------------------------------------------------------------------------- failures


def failure_patches():
    """Flat, zero, a NaN pixel, an infinite pixel, a peak on the patch edge, a good peak."""
    good = erf_gauss((N, N), C + 0.2, C - 0.1, 1.0, 1.2, 1000.0, 5.0)
    nan = good.copy()
    nan[0, 0] = np.nan
    inf = good.copy()
    inf[3, 7] = np.inf
    edge = erf_gauss((N, N), N - 0.4, C, 0.8, 0.8, 1000.0, 5.0)
    return np.stack([np.full((N, N), 7.0), np.zeros((N, N)), nan, inf, edge, good])


@pytest.mark.parametrize("method", ["gauss", "pvoigt"])
def test_failures_give_the_numpy_engines_reasons(method):
    p = failure_patches()
    fit = FITS[method]
    t = fit(p, engine="torch")
    assert_clean_table(t, len(p))
    assert t.reason[0] == t.reason[1] == "flat"
    assert t.reason[2] == t.reason[3] == "non_finite"
    assert not t.converged[4] and t.reason[4] != ""
    assert t.converged[5] and t.reason[5] == ""
    assert_same_table(t, fit(p, engine="numpy"))
    assert t.reason.tolist() == fit(p, engine="numba").reason.tolist()


@pytest.mark.parametrize("method", ["gauss", "pvoigt"])
def test_not_converged_falls_back_to_centroid(method):
    p = erf_gauss((N, N), C + 0.3, C - 0.2, 1.0, 1.0, 1000.0, 5.0)[None]
    opts = dict(max_iter=1, ftol=1e-15, xtol=1e-15)
    t = FITS[method](p, engine="torch", **opts)
    assert t.reason[0] == "not_converged"
    assert t.dx[0] == pytest.approx(L.centroid(p).dx[0])
    assert_same_table(t, FITS[method](p, engine="numpy", **opts))


@pytest.mark.parametrize("kind", ["uniform", "huge", "constant", "negative", "spiky", "tiny"])
def test_garbage_gives_clean_tables_and_the_same_input_flags(kind):
    """Garbage never gives NaN, and the flags decided by the input alone (``flat``,
    ``non_finite``) are the numpy engine's. Whether a degenerate fit of garbage (a one-pixel
    spike, widths on their bound) converges within ``max_iter`` is decided by rounding: the
    numba and numpy engines disagree on it as often as torch and numpy do, so it is not
    compared."""
    for seed in (17, 18):
        p = garbage(seed, kind)
        for method, fit in FITS.items():
            t = fit(p, engine="torch")
            assert_clean_table(t, len(p))
            ref = fit(p, engine="numpy").reason
            for flag in ("flat", "non_finite"):
                assert ((t.reason == flag) == (ref == flag)).all(), (method, kind, seed)


def test_empty_input():
    for fit in FITS.values():
        assert len(fit(np.zeros((0, N, N)), engine="torch")) == 0


# --------------------------------------------------------------------------- dispatch


def test_engine_and_device_options_are_checked():
    p = np.zeros((2, N, N))
    with pytest.raises(OptionError):
        L.fit_gauss(p, engine="jax")
    with pytest.raises(OptionError):  # the CPU engines cannot honour a GPU request
        L.fit_pvoigt(p, engine="numba", device="cuda")
    with pytest.raises(OptionError):
        L.fit_gauss(p, engine="numpy", device="cuda:0")
    with pytest.raises(OptionError):
        L.fit_gauss(p, engine="torch", device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_cuda_without_gpu_is_an_option_error():
    p = np.zeros((2, N, N))
    with pytest.raises(OptionError, match="CUDA"):
        L.localize(p, "pvoigt", device="cuda")
    with pytest.raises(OptionError, match="CUDA"):
        L.fit_gauss(p, engine="torch", device="cuda")


def spy_on(monkeypatch, name):
    """Replace ``L.<name>`` by a wrapper (same signature) that records its options."""
    seen = {}
    original = getattr(L, name)

    @functools.wraps(original)
    def spy(patches, **opts):
        seen.update(opts)
        if "device" in opts:  # no GPU here: the pretended CUDA fit runs on the CPU device
            opts = {**opts, "device": "cpu"}
        return original(patches, **opts)

    monkeypatch.setattr(L, name, spy)
    return seen


@pytest.mark.parametrize("method, name", [("gauss", "fit_gauss"), ("pvoigt", "fit_pvoigt")])
def test_localize_device_chooses_the_engine(monkeypatch, method, name):
    p = erf_gauss((N, N), C + 0.2, C, 1.0, 1.0, 1000.0, 5.0)[None]
    seen = spy_on(monkeypatch, name)
    L.localize(p, method)
    assert seen == {}  # the CPU default: the numba engine
    L.localize(p, method, device="cpu", engine="numpy")
    assert seen == {"engine": "numpy"}
    seen.clear()
    if not torch.cuda.is_available():
        L.localize(p, method, device="auto")
        assert seen == {}  # 'auto' without a GPU stays on numba
    # 'auto' with a GPU (pretended: the spy runs the fit on the CPU) is the torch engine.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for device in ("auto", "cuda", "cuda:0"):
        seen.clear()
        t = L.localize(p, method, device=device)
        assert seen["engine"] == "torch"
        assert torch.device(seen["device"]).type == "cuda"
        assert t.converged.all()
    with pytest.raises(OptionError, match="engine='torch'"):
        L.localize(p, method, device="cuda", engine="numba")
    seen.clear()
    L.localize(p, "centroid", device="cuda")  # the centroid has no device
    assert seen == {}


def test_cpu_engines_do_not_import_torch():
    code = (
        "import sys, numpy as np; from braggtrack import localize as L; "
        "p = np.random.default_rng(0).poisson(50 * np.ones((3, 7, 7))) + 0.0; p[:, 3, 3] += 500; "
        "L.localize(p, 'gauss'); L.localize(p, 'pvoigt'); L.fit_gauss(p, engine='numpy'); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


# --------------------------------------------------------------------------- bench, GPU


def test_bench_gpu_without_cuda_is_empty(monkeypatch):
    from braggtrack.bench import BenchSizes, bench_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_gpu(BenchSizes.quick()) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["gauss", "pvoigt"])
def test_cuda_equals_numpy(method):
    p, _, _ = noisy_gauss(300, seed=3)
    p = np.concatenate([p, failure_patches()])
    t = L.localize(p, method, device="cuda")
    assert_clean_table(t, len(p))
    assert_same_table(t, FITS[method](p, engine="numpy"))


def test_float_columns_are_the_table_columns():
    # assert_same_table compares every float column of the table.
    assert sorted(POSITION + ["dx_err", "dy_err", "amplitude", "background", "intensity"]) \
        == sorted(FLOAT_COLUMNS)
