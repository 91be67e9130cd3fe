"""Cramer-Rao lower bound on the centre of a simulated Bragg peak in a patch.

How well *can* any unbiased localizer find a peak's centre, given the simulator's peak model
and noise?  :func:`centre_crlb` answers it per patch: the 2 x 2 block ``(x, y)`` of the inverse
Fisher information matrix of all the parameters of the expected patch, so that the shape,
amplitude and background, which a localizer must estimate too, are paid for (holding them known
gives a smaller, optimistic bound; ``known=`` does that on purpose, to bound what prior
knowledge of them could buy).

Model
-----
The expected patch is the simulator's own: pixel-integrated, rotated pseudo-Voigt peaks
(:mod:`braggtrack.simulate`'s renderer, so split sub-grains, truncated Lorentzians and the
quadrature are exactly those of :func:`braggtrack.simulate.simulate_patches`) plus a background
``level + gx * (column - c) + gy * (row - c)`` with ``c = patch // 2``.  Parameters of a peak:
centre ``x, y`` (its centre of mass, as in the truth tables), ``amplitude`` (integrated counts),
the Gaussian covariance ``cxx, cyy, cxy`` (equivalent to ``sigma_x, sigma_y, angle`` but smooth
where ``sigma_x = sigma_y``, where the angle is undefined; the bound on ``x, y`` does not depend
on how the nuisance parameters are written), ``eta``, and for split peaks ``split_dx, split_dy,
split_ratio``; an overlapping neighbour adds its own ``x, y, amplitude, cxx, cyy, cxy, eta``.
``amplitude``, ``eta`` and the background terms enter linearly and are differentiated exactly;
the others by central differences (steps 2e-3 px, 2e-3 of the variance, 2e-3 of the ratio).

Noise
-----
Pixel value = Poisson(mu) + Normal(0, r**2) (read noise ``r`` in counts, as in
``simulate_patches``).  Pixels are independent and each depends on the parameters only through
``mu``, so ``F = J^T diag(w(mu)) J`` with the per-pixel information ``w``.  The default,
``noise="shifted-poisson"``, is ``w = 1 / (mu + r**2)``: the data plus ``r**2`` treated as
Poisson of mean ``mu + r**2`` (the usual sCMOS approximation, Huang et al., Nat. Methods 10
(2013) 653).  Against the exact information of the Poisson-Gaussian mixture (numerical
integration) it is 1.3 % / 1.9 % low at ``mu = 2`` with ``r = 0.3`` / ``1``, 0.5 % at ``mu = 5``
and < 0.1 % from ``mu = 20``: a bound that is, if anything, slightly conservative.  The full
Gaussian formula (``noise="gaussian"``: ``w = 1/v + 1/(2 v**2)``, ``v = mu + r**2``, the second
term from the variance's dependence on ``mu``) is *not* the default because it over-counts: at
``mu = 2`` it exceeds the exact information by 14 % (``r = 1``) to 22 % (``r = 0.3``), and for
small ``r`` even the information of pure Poisson counting (``1/mu``), which no added noise can
reach.  ``noise="poisson"`` is ``w = 1 / mu`` (read
noise ignored).

Why hand-written: no well-kept library computes Fisher information for this pixel-integrated,
truncated pseudo-Voigt model with these nuisance parameters (localization-microscopy packages
bound pixelated Gaussians or measured PSFs); the model is the simulator's renderer, reused here,
and the rest is twenty lines of linear algebra.

What the bound does not cover: hot pixels and anything else outside the model (a localizer
that does not model them is shifted by them; the bound is that of the clean peak); biased or
Bayesian estimators (a network trained on the simulator's parameter ranges uses a prior and can
go below it, by roughly ``C -> (C^-1 + P^-1)^-1`` for a prior covariance ``P``); and at low
signal-to-noise the bound is local and usually not reached.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy.special import erf

from . import simulate as _sim
from .errors import OptionError

__all__ = ["GROUPS", "NOISE_MODELS", "centre_crlb", "expected_patches", "fisher_information",
           "pixel_information", "radial_error_quantiles", "simulated_nuisance"]

NOISE_MODELS = ("shifted-poisson", "gaussian", "poisson")
#: Parameter groups that ``known=`` may hold fixed (x, y are always estimated).
GROUPS = ("amplitude", "shape", "eta", "split", "background", "gradient", "neighbour")

_PEAK_COLUMNS = ("x", "y", "amplitude", "sigma_x", "sigma_y", "eta", "angle", "split_dx",
                 "split_dy", "split_ratio")
_STEP_POS = 2e-3
_STEP_REL = 2e-3


def pixel_information(mu, read_noise=0.0, noise: str = "shifted-poisson") -> np.ndarray:
    """Fisher information per pixel about its own mean, ``w(mu)`` (see the module notes).

    Parameters
    ----------
    mu : array_like
        Expected counts per pixel (>= 0; pixels with ``mu = 0`` carry no information here).
    read_noise : array_like
        Gaussian read-noise sigma, counts, broadcast against ``mu``.
    noise : {'shifted-poisson', 'gaussian', 'poisson'}

    Returns
    -------
    ndarray
        ``w`` with the shape of ``mu``.

    Examples
    --------
    >>> float(pixel_information(4.0, 1.0))
    0.2
    """
    if noise not in NOISE_MODELS:
        raise OptionError(f"noise must be one of {', '.join(NOISE_MODELS)}, got {noise!r}")
    mu = np.asarray(mu, dtype=float)
    r2 = np.asarray(read_noise, dtype=float) ** 2
    if noise == "poisson":
        v = mu
    else:
        v = mu + r2
    w = np.divide(1.0, v, out=np.zeros(np.broadcast(mu, v).shape), where=(v > 0) & (mu > 0))
    if noise == "gaussian":
        w = w + 0.5 * w**2
    return w


def fisher_information(mu, jacobian, read_noise=0.0, noise: str = "shifted-poisson"):
    """Fisher information matrix ``J diag(w) J^T`` of independent pixels.

    Parameters
    ----------
    mu : ndarray (..., npix)
        Expected counts.
    jacobian : ndarray (..., nparam, npix)
        ``d mu / d theta`` per parameter.
    read_noise : array_like
        Read-noise sigma, broadcast against ``mu[..., 0]``.
    noise : str
        See :func:`pixel_information`.

    Returns
    -------
    ndarray (..., nparam, nparam)

    Examples
    --------
    >>> import numpy as np
    >>> fisher_information(np.full(4, 2.0), np.ones((1, 4)))   # 4 pixels, 1/2 each
    array([[2.]])
    """
    mu = np.asarray(mu, dtype=float)
    r = np.asarray(read_noise, dtype=float)[..., None]
    w = pixel_information(mu, r, noise)
    jac = np.asarray(jacobian, dtype=float)
    return np.einsum("...ip,...jp->...ij", jac * w[..., None, :], jac)


def _as_table(peaks) -> pd.DataFrame:
    table = pd.DataFrame(peaks).reset_index(drop=True)
    missing = [c for c in ("x", "y", "amplitude") if c not in table.columns]
    if missing:
        raise OptionError(f"peak table lacks column(s) {', '.join(missing)}")
    defaults = {"sigma_x": 1.0, "sigma_y": 1.0, "eta": 0.0, "angle": 0.0, "split_dx": 0.0,
                "split_dy": 0.0, "split_ratio": 0.0}
    out = {c: (table[c].to_numpy(float) if c in table.columns
               else np.full(len(table), defaults[c])) for c in _PEAK_COLUMNS}
    return pd.DataFrame(out)


def _per_patch(value, n: int, name: str, width: int | None = None) -> np.ndarray:
    a = np.asarray(value, dtype=float)
    shape = (n,) if width is None else (n, width)
    try:
        return np.broadcast_to(a, shape).astype(float)
    except ValueError:
        raise OptionError(f"{name} must broadcast to {shape}, got shape {a.shape}") from None


def _covariance(t: pd.DataFrame):
    c, s = np.cos(t.angle.to_numpy()), np.sin(t.angle.to_numpy())
    u2, v2 = t.sigma_x.to_numpy() ** 2, t.sigma_y.to_numpy() ** 2
    return u2 * c * c + v2 * s * s, u2 * s * s + v2 * c * c, (u2 - v2) * c * s


def _from_covariance(t: pd.DataFrame, cxx, cyy, cxy) -> pd.DataFrame:
    mean, half = (cxx + cyy) / 2, (cxx - cyy) / 2
    root = np.hypot(half, cxy)
    return t.assign(sigma_x=np.sqrt(mean + root), sigma_y=np.sqrt(mean - root),
                    angle=0.5 * np.arctan2(2 * cxy, cxx - cyy))


def _render(tables: list[pd.DataFrame], images: list[np.ndarray], count: int, patch: int):
    """Render the rows of ``tables`` into ``count`` zero patches (row k into ``images[k]``)."""
    out = np.zeros((count, patch, patch))
    table = pd.concat(tables, ignore_index=True)
    if len(table):
        comp = _sim._expand(table, np.concatenate(images).astype(np.int64))
        _sim._render_components(out, comp)
    return out


def expected_patches(peaks, patch: int = 11, *, background=0.0, gradient=0.0,
                     neighbours=None) -> np.ndarray:
    """Noise-free expected patches of the simulator's model (no hot pixels).

    Parameters
    ----------
    peaks : DataFrame
        One peak per patch, in patch pixel coordinates: ``x, y, amplitude`` and optionally
        ``sigma_x, sigma_y, eta, angle, split_dx, split_dy, split_ratio`` (a
        :func:`braggtrack.simulate.simulate_patches` truth table works as it is).
    patch : int
        Patch size.
    background : float or array (n,)
        Background level at the patch centre, counts per pixel.
    gradient : float or array (n, 2)
        Background tilt ``(gx, gy)``, counts per pixel per pixel along x (columns) and y (rows).
    neighbours : DataFrame or None
        One row per peak (same order) with the neighbour's ``x, y, amplitude`` and shape
        columns; rows with ``amplitude == 0`` have no neighbour.

    Returns
    -------
    ndarray (n, patch, patch) float64
        ``max(peaks + background, 0)``, as ``simulate_patches`` computes it before its noise.

    Examples
    --------
    >>> import pandas as pd
    >>> mu = expected_patches(pd.DataFrame({"x": [5.0], "y": [5.0], "amplitude": [100.0]}),
    ...                       background=2.0)
    >>> round(float(mu.sum()), 3)   # 100 counts of the peak + 121 pixels x 2
    342.0
    """
    t = _as_table(peaks)
    n = len(t)
    idx = np.arange(n)
    tables, images = [t], [idx]
    if neighbours is not None:
        nb = _as_table(neighbours)
        has = nb.amplitude.to_numpy() > 0
        tables.append(nb[has])
        images.append(idx[has])
    out = _render(tables, images, n, patch)
    out += _background(n, patch, background, gradient)
    np.maximum(out, 0.0, out=out)
    return out


def simulated_nuisance(truth: pd.DataFrame) -> dict:
    """The nuisance arguments of :func:`expected_patches` and :func:`centre_crlb` for the
    patches of a :func:`braggtrack.simulate.simulate_patches` truth table.

    Returns
    -------
    dict
        ``background`` (n,), ``gradient`` (n, 2), ``read_noise`` (n,) and ``neighbours`` (a
        table, amplitude 0 where a patch has none; ``None`` when no patch has one).

    Examples
    --------
    >>> from braggtrack.simulate import simulate_patches
    >>> patches, truth = simulate_patches(3, patch=11, kinds="overlapping", seed=1)
    >>> nuisance = simulated_nuisance(truth)
    >>> mu = expected_patches(truth, 11, **{k: v for k, v in nuisance.items()
    ...                                     if k != "read_noise"})
    >>> mu.shape, len(nuisance["neighbours"])
    ((3, 11, 11), 3)
    """
    t = pd.DataFrame(truth).reset_index(drop=True)
    needed = ["x", "y", "background", "gradient_x", "gradient_y", "read_noise",
              "neighbour_dx", "neighbour_dy", "neighbour_amplitude", "neighbour_sigma_x",
              "neighbour_sigma_y", "neighbour_eta", "neighbour_angle"]
    missing = [c for c in needed if c not in t.columns]
    if missing:
        raise OptionError("not a simulate_patches truth table: it lacks column(s) "
                          + ", ".join(missing))
    nb_amp = t["neighbour_amplitude"].to_numpy(float)
    neighbours = None
    if (nb_amp > 0).any():
        neighbours = pd.DataFrame({
            "x": t.x.to_numpy(float) + t["neighbour_dx"].to_numpy(float),
            "y": t.y.to_numpy(float) + t["neighbour_dy"].to_numpy(float),
            "amplitude": nb_amp,
            **{col: t[f"neighbour_{col}"].to_numpy(float)
               for col in ("sigma_x", "sigma_y", "eta", "angle")},
        })
    return {"background": t.background.to_numpy(float),
            "gradient": t[["gradient_x", "gradient_y"]].to_numpy(float),
            "read_noise": t.read_noise.to_numpy(float), "neighbours": neighbours}


def _background(n, patch, background, gradient):
    level = _per_patch(background, n, "background")
    g = _per_patch(gradient, n, "gradient", 2)
    ramp = np.arange(patch) - patch // 2
    return (level[:, None, None] + g[:, 0, None, None] * ramp[None, None, :]
            + g[:, 1, None, None] * ramp[None, :, None])


def _variants(t: pd.DataFrame, prefix: str, split: bool):
    """(name, plus table, minus table, step) for the nonlinear parameters of ``t``."""
    out = []
    for col in ("x", "y"):
        h = np.full(len(t), _STEP_POS)
        out.append((prefix + col, t.assign(**{col: t[col] + h}), t.assign(**{col: t[col] - h}), h,
                    "centre" if not prefix else "neighbour"))
    cov = _covariance(t)
    scale = (cov[0] + cov[1]) / 2
    for k, name in enumerate(("cxx", "cyy", "cxy")):
        h = _STEP_REL * scale
        plus = list(cov)
        minus = list(cov)
        plus[k] = cov[k] + h
        minus[k] = cov[k] - h
        out.append((prefix + name, _from_covariance(t, *plus), _from_covariance(t, *minus), h,
                    "shape" if not prefix else "neighbour"))
    if split:
        for col, rel in (("split_dx", False), ("split_dy", False), ("split_ratio", True)):
            h = np.full(len(t), _STEP_REL if rel else _STEP_POS)
            out.append((col, t.assign(**{col: t[col] + h}), t.assign(**{col: t[col] - h}), h,
                        "split"))
    return out


def centre_crlb(peaks, patch: int = 11, *, background=0.0, gradient=0.0, read_noise=0.0,
                neighbours=None, known: Iterable[str] = (), noise: str = "shifted-poisson",
                return_fisher: bool = False):
    """Cramer-Rao lower bound on the covariance of the peak centre ``(x, y)``, per patch.

    Parameters
    ----------
    peaks, patch, background, gradient, neighbours
        The expected patch, as in :func:`expected_patches`.
    read_noise : float or array (n,)
        Gaussian read-noise sigma, counts.
    known : iterable of str
        Parameter groups held known instead of estimated, from ``amplitude, shape`` (the
        covariance ``cxx, cyy, cxy``), ``eta, split`` (``split_dx, split_dy, split_ratio``),
        ``background`` (level), ``gradient`` (``gx, gy``), ``neighbour`` (all its parameters).
        Default: none, the honest bound for a localizer that estimates everything.  The
        split group is only estimated for peaks with ``split_ratio > 0``, the neighbour only where
        one is given.
    noise : {'shifted-poisson', 'gaussian', 'poisson'}
        Per-pixel information (module notes); the default is the accurate one.
    return_fisher : bool
        Also return the Fisher matrices and the parameter names.

    Returns
    -------
    ndarray (n, 2, 2)
        Lower bound on the covariance of ``(x, y)``, px**2.  With ``return_fisher``:
        ``(cov, fisher (n, p, p), names)``; parameters not estimated for a patch have a unit
        row and column there (they drop out of the bound).

    Examples
    --------
    A round Gaussian spot of 10,000 counts, sigma 1.5 px, on no background: the bound on x is
    close to ``sigma**2 / N`` = 2.25e-4 px**2 (a bit above it: pixels and the 11 x 11 window).

    >>> import pandas as pd
    >>> spot = pd.DataFrame({"x": [5.1], "y": [4.8], "amplitude": [1e4],
    ...                      "sigma_x": [1.5], "sigma_y": [1.5]})
    >>> cov = centre_crlb(spot, known=("eta", "background", "gradient"))
    >>> round(float(cov[0, 0, 0]) * 1e4, 2)
    2.34
    """
    known = set(known)
    bad = known - set(GROUPS)
    if bad:
        raise OptionError(f"unknown parameter group(s) {sorted(bad)}; choose from "
                          f"{', '.join(GROUPS)}")
    t = _as_table(peaks)
    n = len(t)
    idx = np.arange(n)
    rn = _per_patch(read_noise, n, "read_noise")
    is_split = t.split_ratio.to_numpy() > 0
    nb = None
    has_nb = np.zeros(n, bool)
    if neighbours is not None:
        nb = _as_table(neighbours)
        if len(nb) != n:
            raise OptionError("neighbours must have one row per peak")
        has_nb = nb.amplitude.to_numpy() > 0

    # Linear pieces: the peak at eta = 0 and eta = 1, the neighbour likewise.
    tables, images = [], []

    def add(table, rows):
        tables.append(table[rows] if rows is not None else table)
        images.append(len(images) * n + (idx if rows is None else idx[rows]))
        return len(images) - 1

    slots = {}
    slots["peak"] = add(t, None)
    slots["g0"] = add(t.assign(eta=0.0), None)
    slots["g1"] = add(t.assign(eta=1.0), None)
    if nb is not None:
        slots["nb"] = add(nb, has_nb)
        slots["nb0"] = add(nb.assign(eta=0.0), has_nb)
        slots["nb1"] = add(nb.assign(eta=1.0), has_nb)
    nonlinear = []
    for name, plus, minus, h, group in _variants(t, "", bool(is_split.any())):
        rows = is_split if group == "split" else None
        nonlinear.append((name, group, add(plus, rows), add(minus, rows), h, rows))
    if nb is not None:
        for name, plus, minus, h, group in _variants(nb, "neighbour_", False):
            nonlinear.append((name, group, add(plus, has_nb), add(minus, has_nb), h, has_nb))
    img = _render(tables, images, len(images) * n, patch).reshape(len(images), n, patch * patch)

    mu_peaks = img[slots["peak"]] + (img[slots["nb"]] if nb is not None else 0.0)
    mu = mu_peaks + _background(n, patch, background, gradient).reshape(n, -1)
    np.maximum(mu, 0.0, out=mu)

    names, columns, active = [], [], []

    def column(name, group, values, rows=None):
        names.append(name)
        columns.append(values)
        on = np.ones(n, bool) if rows is None else rows.copy()
        if group in known:
            on[:] = False
        active.append(on)

    amp = t.amplitude.to_numpy()
    for name, group, ip, im, h, rows in nonlinear[:2]:
        column(name, group, (img[ip] - img[im]) / (2 * h[:, None]), rows)
    column("amplitude", "amplitude", img[slots["peak"]] / np.where(amp > 0, amp, 1.0)[:, None])
    for name, group, ip, im, h, rows in nonlinear[2:]:
        if not name.startswith("neighbour_"):
            column(name, group, (img[ip] - img[im]) / (2 * h[:, None]), rows)
    column("eta", "eta", img[slots["g1"]] - img[slots["g0"]])
    ramp = np.arange(patch) - patch // 2
    column("background", "background", np.ones((n, patch * patch)))
    column("gx", "gradient", np.broadcast_to(np.tile(ramp, patch), (n, patch * patch)))
    column("gy", "gradient", np.broadcast_to(np.repeat(ramp, patch), (n, patch * patch)))
    if nb is not None:
        namp = nb.amplitude.to_numpy()
        for name, group, ip, im, h, rows in nonlinear:
            if name.startswith("neighbour_"):
                column(name, group, (img[ip] - img[im]) / (2 * h[:, None]), rows)
        column("neighbour_amplitude", "neighbour",
               img[slots["nb"]] / np.where(namp > 0, namp, 1.0)[:, None], has_nb)
        column("neighbour_eta", "neighbour", img[slots["nb1"]] - img[slots["nb0"]], has_nb)

    jac = np.stack(columns, axis=1)                   # (n, p, npix)
    on = np.stack(active, axis=1)                     # (n, p)
    jac = np.where(on[:, :, None], jac, 0.0)
    fisher = fisher_information(mu, jac, rn, noise)
    # Parameters left out get a unit diagonal (they decouple); scale to unit diagonal and invert.
    p = len(names)
    eye = np.eye(p, dtype=bool)
    fisher = np.where(eye & ~on[:, :, None], 1.0, fisher)
    d = np.sqrt(np.diagonal(fisher, axis1=1, axis2=2))
    if np.any(d[:, :2] <= 0):
        raise OptionError("a patch carries no information on its centre (zero peak?)")
    scaled = fisher / (d[:, :, None] * d[:, None, :])
    inv = np.linalg.inv(scaled) / (d[:, :, None] * d[:, None, :])
    cov = inv[:, :2, :2]
    if return_fisher:
        return cov, fisher, names
    return cov


def _radial_cdf(t, l1, l2, nodes, weights):
    """P(|e| <= t) for e ~ N(0, diag(l1, l2)), l1 >= l2 > 0; t (m,), l (n,) -> (n, m).

    ``int phi(z1) erf(sqrt(t**2 - l1 z1**2) / sqrt(2 l2)) dz1`` over ``|z1| < t / sqrt(l1)``
    (and ``|z1| < 8``: beyond, phi < 1e-14), with ``z1 = a sin(theta)``, ``a = t / sqrt(l1)``,
    which takes the square-root edge out of the integrand; ``nodes`` lie in (-1, 1).
    """
    a = t[None, :, None] / np.sqrt(l1)[:, None, None]
    th_max = np.arcsin(np.minimum(1.0, 8.0 / np.maximum(a, 1e-300)))
    th = nodes[None, None, :] * th_max
    z1 = a * np.sin(th)
    rest = t[None, :, None] * np.cos(th) / np.sqrt(2 * l2)[:, None, None]
    f = np.exp(-0.5 * z1**2) / np.sqrt(2 * np.pi) * erf(rest) * a * np.cos(th)
    return (f * weights[None, None, :]).sum(axis=2) * th_max[..., 0]


def radial_error_quantiles(cov, quantiles=(0.5, 0.9)) -> np.ndarray:
    """Quantiles of the distance ``|e|`` pooled over patches with ``e ~ N(0, cov_i)``.

    What an efficient unbiased localizer's median (or p90) distance to the truth would be
    over a set of patches, when each patch's error is Gaussian with its CRLB covariance.
    Computed from the exact distribution of the distance per patch (a 1-D Gauss-Legendre
    integral), averaged over patches and inverted by bisection, not by sampling.

    Parameters
    ----------
    cov : ndarray (n, 2, 2)
        Covariances, e.g. from :func:`centre_crlb`.
    quantiles : sequence of float
        In (0, 1).

    Returns
    -------
    ndarray
        One distance per quantile (units of ``sqrt(cov)``).

    Examples
    --------
    Isotropic sigma 1: the distance is Rayleigh, median ``sqrt(2 ln 2)`` = 1.1774.

    >>> import numpy as np
    >>> round(float(radial_error_quantiles(np.eye(2)[None], [0.5])[0]), 4)
    1.1774
    """
    cov = np.asarray(cov, dtype=float).reshape(-1, 2, 2)
    lam = np.linalg.eigvalsh(cov)                   # ascending
    l2, l1 = np.maximum(lam[:, 0], 1e-300), lam[:, 1]
    x, w = np.polynomial.legendre.leggauss(48)
    nodes, weights = x, w
    q = np.asarray(quantiles, dtype=float)
    lo = np.zeros_like(q)
    hi = np.full_like(q, 10.0 * np.sqrt(l1.max()))
    for _ in range(60):
        mid = (lo + hi) / 2
        cdf = np.concatenate([_radial_cdf(mid, l1[i:i + 2048], l2[i:i + 2048], nodes, weights)
                              .sum(axis=0)[None] for i in range(0, len(l1), 2048)]).sum(0)
        below = cdf / len(l1) < q
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return (lo + hi) / 2
