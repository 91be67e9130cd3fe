"""braggtrack.crlb: the Cramer-Rao bound against analytic values and Monte-Carlo fits.

Golden values come from closed forms (sigma**2 / N, the Rayleigh distribution), from an
independent erf computation of the pixel-integrated Gaussian, and from a numerical integration
of the Poisson-Gaussian likelihood; never from the code under test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import erf
from scipy.stats import norm, poisson

from braggtrack import crlb
from braggtrack import simulate as S
from braggtrack.errors import OptionError
from braggtrack.localize import fit_pvoigt


def _erf_gaussian(shape, x0, y0, sigma, amplitude):
    """Pixel-integrated Gaussian and its exact x, y derivatives (erf, independent of the code)."""
    h, w = shape
    s = sigma * np.sqrt(2.0)
    xe, ye = np.arange(w + 1) - 0.5, np.arange(h + 1) - 0.5
    fx, fy = np.diff(0.5 * erf((xe - x0) / s)), np.diff(0.5 * erf((ye - y0) / s))
    gx = -np.diff(norm.pdf((xe - x0) / sigma) / sigma)      # d fx / d x0
    gy = -np.diff(norm.pdf((ye - y0) / sigma) / sigma)
    return (amplitude * np.outer(fy, fx), amplitude * np.outer(fy, gx),
            amplitude * np.outer(gy, fx))


def test_round_gaussian_bound_is_sigma2_over_n():
    # sigma 3 px in 31 x 31, no background, pure Poisson: var(x) >= sigma^2 / N, and for
    # 1-px pixels (sigma^2 + 1/12) / N (Mortensen et al., Nat. Methods 7 (2010) 377).
    n_photons, sigma = 1e4, 3.0
    spot = pd.DataFrame({"x": [15.2], "y": [14.7], "amplitude": [n_photons],
                         "sigma_x": [sigma], "sigma_y": [sigma], "angle": [0.3]})
    cov = crlb.centre_crlb(spot, patch=31, known=("background", "gradient"), noise="poisson")
    assert cov.shape == (1, 2, 2)
    for axis in (0, 1):
        assert cov[0, axis, axis] == pytest.approx(9.0e-4, rel=0.02)        # sigma^2 / N
        assert cov[0, axis, axis] == pytest.approx(9.0833e-4, rel=2e-3)     # pixelated
    assert abs(cov[0, 0, 1]) < 1e-3 * cov[0, 0, 0]


def test_numerical_derivatives_match_erf():
    # Centre only (everything else known): Fisher = sum (d mu / d x_j)(d mu / d x_k) / mu with
    # the exact erf derivatives; background 10 counts, read noise 0.8 (shifted Poisson).
    x0, y0, sigma, amp, bg, r = 5.3, 4.6, 1.3, 5000.0, 10.0, 0.8
    mu, dx, dy = _erf_gaussian((11, 11), x0, y0, sigma, amp)
    mu = mu + bg
    w = 1.0 / (mu + r * r)
    fisher = np.array([[np.sum(dx * dx * w), np.sum(dx * dy * w)],
                       [np.sum(dx * dy * w), np.sum(dy * dy * w)]])
    golden = np.linalg.inv(fisher)
    spot = pd.DataFrame({"x": [x0], "y": [y0], "amplitude": [amp], "sigma_x": [sigma],
                         "sigma_y": [sigma]})
    np.testing.assert_allclose(crlb.expected_patches(spot, background=bg)[0], mu,
                               rtol=0, atol=1e-6 * mu.max())
    cov = crlb.centre_crlb(spot, background=bg, read_noise=r, known=crlb.GROUPS)
    np.testing.assert_allclose(cov[0], golden, rtol=1e-5, atol=1e-5 * golden[0, 0])
    # Estimating the nuisance parameters can only widen the bound.
    full = crlb.centre_crlb(spot, background=bg, read_noise=r)
    assert full[0, 0, 0] >= cov[0, 0, 0] and full[0, 1, 1] >= cov[0, 1, 1]


def _exact_information(mu, r):
    """Fisher information about mu of Poisson(mu) + Normal(0, r^2), by quadrature."""
    k = np.arange(0, int(mu + 20 * np.sqrt(mu) + 30))
    x = np.linspace(-8 * r - 1, k[-1] + 8 * r, 40001)
    pk, dpk = poisson.pmf(k, mu), poisson.pmf(k - 1, mu) - poisson.pmf(k, mu)
    kernel = norm.pdf((x[:, None] - k[None, :]) / r) / r
    p, dp = kernel @ pk, kernel @ dpk
    keep = p > 1e-300
    return np.sum(dp[keep] ** 2 / p[keep]) * (x[1] - x[0])


@pytest.mark.parametrize("mu", [2.0, 5.0, 20.0])
@pytest.mark.parametrize("r", [0.3, 1.0])
def test_shifted_poisson_information_is_close_and_conservative(mu, r):
    exact = _exact_information(mu, r)
    w = float(crlb.pixel_information(mu, r))
    assert w <= exact * 1.001
    assert w == pytest.approx(exact, rel=0.025)
    # The full Gaussian formula over-counts at low counts (>= 14 % at mu = 2), for small read
    # noise even beyond what Poisson counting alone carries.
    if mu == 2.0:
        assert float(crlb.pixel_information(mu, r, "gaussian")) > 1.12 * exact
        assert (float(crlb.pixel_information(mu, r, "gaussian")) > 1.0 / mu) == (r < 0.5)


def test_radial_quantiles_closed_forms():
    # Isotropic: Rayleigh, quantile sigma sqrt(-2 ln(1 - q)); one axis only: |N(0, s^2)|.
    q = crlb.radial_error_quantiles(np.eye(2)[None] * 0.04, (0.5, 0.9))
    np.testing.assert_allclose(q, 0.2 * np.sqrt([2 * np.log(2), 2 * np.log(10)]), rtol=1e-6)
    one = crlb.radial_error_quantiles(np.diag([0.09, 1e-12])[None], (0.5,))
    assert one[0] == pytest.approx(0.3 * norm.ppf(0.75), rel=1e-4)
    # Pooled: the median of a 50/50 mixture solves mean CDF = 0.5.
    both = crlb.radial_error_quantiles(np.stack([np.eye(2) * 0.01, np.eye(2) * 0.04]), (0.5,))
    cdf = 0.5 * (1 - np.exp(-both[0] ** 2 / 0.02)) + 0.5 * (1 - np.exp(-both[0] ** 2 / 0.08))
    assert cdf == pytest.approx(0.5, abs=1e-6)


class _Recorder:
    """A numpy Generator that remembers the means it draws Poisson counts from."""

    def __init__(self, rng, seen):
        self._rng, self._seen = rng, seen

    def poisson(self, lam, *args, **kwargs):
        self._seen.append(np.array(lam, dtype=float))
        return self._rng.poisson(lam, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._rng, name)


@pytest.mark.parametrize("kind", S.KINDS)
def test_expected_patch_is_the_simulators_mean(kind, monkeypatch):
    # The mean the simulator drew its Poisson counts from, rebuilt from the truth table alone.
    seen: list = []
    real = np.random.default_rng
    monkeypatch.setattr(np.random, "default_rng", lambda seed: _Recorder(real(seed), seen))
    patches, truth = S.simulate_patches(40, 11, kind, 5, hot_pixel_probability=0.3)
    monkeypatch.undo()
    (lam,) = seen
    nuisance = crlb.simulated_nuisance(truth)
    assert (nuisance["neighbours"] is not None) == (kind == "overlapping")
    expected = crlb.expected_patches(truth, 11, background=nuisance["background"],
                                     gradient=nuisance["gradient"],
                                     neighbours=nuisance["neighbours"])
    hot = np.flatnonzero(truth.hot_pixel)
    assert hot.size > 0 and (truth.hot_x[~truth.hot_pixel] == -1).all()
    expected[hot, truth.hot_y[hot], truth.hot_x[hot]] += truth.hot_counts[hot]
    assert np.max(np.abs(expected - lam)) <= 1e-9 * lam.max()
    # And the read noise is what was added on top of the counts (sigma in [0, 1]).
    assert truth.read_noise.between(0, 1).all()
    # The same seed still gives the same patches as before these columns were recorded.
    again, _ = S.simulate_patches(40, 11, kind, 5, hot_pixel_probability=0.3)
    np.testing.assert_array_equal(again, patches)


def test_simulated_nuisance_needs_a_patch_truth_table():
    with pytest.raises(OptionError, match="simulate_patches truth table"):
        crlb.simulated_nuisance(pd.DataFrame({"x": [5.0], "y": [5.0], "amplitude": [1.0]}))


def test_pvoigt_fit_variance_reaches_the_bound():
    # One bright broad peak (the pseudo-Voigt shape the fit assumes) on a background that
    # dominates the noise, the simulator's noise model (Poisson + read noise), 500 realizations:
    # an efficient fit has the CRLB variance.  (fit_pvoigt is unweighted least squares, which
    # is efficient only where the pixel variance is about uniform, i.e. background-dominated;
    # on a 20-count background the same peak's fitted variance is ~1.3x the bound.)
    peak = pd.DataFrame({"x": [5.2], "y": [4.9], "amplitude": [1.0e4], "sigma_x": [2.0],
                         "sigma_y": [1.4], "eta": [0.5], "angle": [0.6]})
    level, r = 100.0, 0.7
    mu = crlb.expected_patches(peak, background=level)[0]
    rng = np.random.default_rng(3)
    noisy = rng.poisson(mu, (500, 11, 11)) + rng.normal(0.0, r, (500, 11, 11))
    fit = fit_pvoigt(noisy.astype(np.float32))
    assert fit.converged.all()
    # The fit estimates no background tilt (here truly 0), so neither does the bound.
    cov = crlb.centre_crlb(peak, background=level, read_noise=r, known=("gradient",))[0]
    measured = np.var(fit.dx) + np.var(fit.dy)
    assert measured == pytest.approx(np.trace(cov), rel=0.15)


def test_options_are_checked():
    spot = pd.DataFrame({"x": [5.0], "y": [5.0], "amplitude": [100.0]})
    with pytest.raises(OptionError, match="unknown parameter group"):
        crlb.centre_crlb(spot, known=("width",))
    with pytest.raises(OptionError, match="noise must be"):
        crlb.pixel_information(1.0, noise="cauchy")
    with pytest.raises(OptionError, match="lacks column"):
        crlb.expected_patches(pd.DataFrame({"x": [1.0]}))
