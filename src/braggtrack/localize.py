"""Sub-pixel localization of Bragg peaks in N x N patches.

Four localizers share one output table (one row per patch, see :func:`localize`):

``centroid``
    Background-subtracted centre of mass (background = median of the patch border;
    pixels count with their height above background + 3 border-noise sigmas), with
    Poisson-propagated uncertainty.
``gauss``
    Least-squares fit of an axis-aligned 2-D Gaussian *integrated over each pixel*
    (differences of ``erf``) plus a constant background. Pixel integration makes the
    model exact for pixel-integrated data, so the centre has no pixel-locking bias even
    for sharp peaks; being separable, its Jacobian is a sum of outer products and the
    normal equations cost O(N p^2) instead of O(N^2 p^2).
``pvoigt``
    Least-squares fit of a rotated 2-D pseudo-Voigt ``eta * L + (1 - eta) * G`` (shared
    elliptical half-width, quadratic-form parameterization, no angle degeneracy for
    round peaks) plus a background, sampled at ``oversample x oversample`` points per
    pixel (default 2) to approximate pixel integration.
``braggnn``
    The CNN of :mod:`braggtrack.braggnn` (imported only when asked for).

Why a hand-written fitter rather than ``scipy.optimize.curve_fit``/``least_squares``: those
fit one peak per call, with Python overhead per iteration per peak (a few to a few
thousand peaks per second). Here one bounded Levenberg-Marquardt handles all patches of a
block: analytic Jacobians, per-patch damping, a per-patch convergence test, starting
values from moments in a 5 x 5 window around the centre. Three engines run the same
algorithm: ``numba`` (default) compiles a per-patch loop that releases the GIL and runs on
a few threads (for the Gaussian, start values, fit and error estimate are fused into one
pass per patch), ``numpy`` vectorizes over the block (batched ``(n, p, p)`` solves, only the
still-running patches carried to the next iteration), and ``torch`` is the numpy engine's
algorithm written with PyTorch tensors on a chosen device. The torch engine exists for GPUs
(``localize(..., device='cuda')``, ``--device cuda|auto``): a block of fits is thousands of
small independent problems, which a GPU runs side by side; on the CPU it is a little slower
than the numpy engine (and about ten times slower than numba, which stays the default there).
torch is imported only when it is used. Bounds (centre inside the patch, widths >= 0.2 px,
``0 <= eta <= 1``, amplitude >= 0) are kept by projection with an active set: a parameter
on its bound whose descent direction points outward is held there.
Uncertainties are leverage-corrected sandwich (HC3) estimates, right under Poisson noise
whatever the units.

Each patch is min-max scaled to [0, 1] before fitting (results are scaled back), so that
arbitrary finite input is numerically safe and the tolerances are scale free. Every
output value is finite: a fit that fails or ends on a bound gets ``converged=False``, a
``reason`` and the centroid's position; a flat patch gets ``reason='flat'``.

Offsets ``dx`` (column) and ``dy`` (row) are measured from the centre of the patch's
central pixel ``(N // 2, N // 2)``, in pixels.
"""

from __future__ import annotations

import inspect
import math
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numba
import numpy as np
import pandas as pd
from scipy.special import erf

from .errors import OptionError
from .patches import as_patch_stack

if TYPE_CHECKING:  # torch is imported at run time only by the torch engine
    import torch

__all__ = ["COLUMNS", "localize", "centroid", "fit_gauss", "fit_pvoigt"]

#: Output columns of every localizer, in order.
COLUMNS = (
    "dx",
    "dy",
    "dx_err",
    "dy_err",
    "sigma_x",
    "sigma_y",
    "amplitude",
    "background",
    "intensity",
    "converged",
    "reason",
)

METHODS = ("braggnn", "pvoigt", "gauss", "centroid")

_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)
#: Smallest allowed Gaussian-equivalent width, pixels.
MIN_SIGMA = 0.2
_HWHM_PER_SIGMA = math.sqrt(2.0 * _LN2)
_CROSS = 0.98
#: Half-size of the window around the central pixel that gives the fits' starting values.
_START_WINDOW = 2


# --------------------------------------------------------------------------- input


def _as_patches(patches) -> np.ndarray:
    p = as_patch_stack(patches, np.float64)
    size = p.shape[-1]
    if size < 3 or size % 2 == 0:
        raise OptionError(f"patch size must be odd and >= 3, got {size}")
    return p


def _scale(p: np.ndarray):
    """Min-max scale each patch to [0, 1]; non-finite pixels become the minimum."""
    finite = np.isfinite(p)
    lo = np.where(finite, p, np.inf).min(axis=(1, 2))
    hi = np.where(finite, p, -np.inf).max(axis=(1, 2))
    with np.errstate(over="ignore", invalid="ignore"):
        span = hi - lo
    flat = ~(np.isfinite(span) & (span > 0))
    lo = np.where(np.isfinite(lo), lo, 0.0)
    span = np.where(flat, 1.0, span)
    u = (np.where(finite, p, lo[:, None, None]) - lo[:, None, None]) / span[:, None, None]
    u[flat] = 0.0
    return u, lo, span, flat, ~finite.all(axis=(1, 2))


def _empty() -> pd.DataFrame:
    cols = {c: np.zeros(0) for c in COLUMNS}
    cols["converged"] = np.zeros(0, dtype=bool)
    cols["reason"] = np.zeros(0, dtype=object)
    return pd.DataFrame(cols)


def _table(cols: dict, reason: np.ndarray) -> pd.DataFrame:
    out = {}
    bad = np.zeros(reason.shape, dtype=bool)
    for c in COLUMNS[:9]:
        v = np.asarray(cols[c], dtype=np.float64)
        nonfinite = ~np.isfinite(v)
        bad |= nonfinite
        out[c] = np.where(nonfinite, 0.0, v)
    converged = np.asarray(cols["converged"], dtype=bool) & ~bad
    reason = reason.astype(object)
    reason[bad & (reason == "")] = "bad_fit"
    out["converged"] = converged
    out["reason"] = reason.astype(str)
    return pd.DataFrame(out)


def _blocks(n: int, block: int):
    if int(block) != block or block < 1:
        raise OptionError(f"block must be a positive integer, got {block}")
    for start in range(0, n, int(block)):
        yield slice(start, min(n, start + int(block)))


# --------------------------------------------------------------------------- centroid


def _moments(u: np.ndarray, window: int | None = None, nsigma: float = 0.0):
    """Background, centre of mass and second moments of scaled patches ``u``.

    Pixels count with their height above ``background + nsigma * noise`` (median and
    MAD-based sigma of the patch border); lower pixels count as zero.

    With ``window``, only the ``(2 window + 1)^2`` pixels around the central pixel count:
    starting values for the fits that are not dragged towards a neighbouring peak.
    """
    n, size, _ = u.shape
    c = size // 2
    border = np.concatenate(
        [u[:, 0, :], u[:, -1, :], u[:, 1:-1, 0], u[:, 1:-1, -1]], axis=1
    )
    bg = np.median(border, axis=1)
    level = bg
    if nsigma > 0:
        noise = 1.4826 * np.median(np.abs(border - bg[:, None]), axis=1)
        level = bg + nsigma * noise
    w = np.clip(u - level[:, None, None], 0.0, None)
    if window is not None and window < c:
        w[:, : c - window] = 0.0
        w[:, c + window + 1 :] = 0.0
        w[:, :, : c - window] = 0.0
        w[:, :, c + window + 1 :] = 0.0
    total = w.sum(axis=(1, 2))
    empty = ~(total > 0)
    safe = np.where(empty, 1.0, total)
    grid = np.arange(size, dtype=np.float64) - c
    wx = w.sum(axis=1)  # (n, N) over rows -> profile along x
    wy = w.sum(axis=2)
    x0 = (wx @ grid) / safe
    y0 = (wy @ grid) / safe
    dxg = grid[None, :] - x0[:, None]
    dyg = grid[None, :] - y0[:, None]
    mxx = (wx * dxg**2).sum(axis=1) / safe
    myy = (wy * dyg**2).sum(axis=1) / safe
    mxy = np.einsum("nji,nj,ni->n", w, dyg, dxg) / safe
    x0[empty] = 0.0
    y0[empty] = 0.0
    return bg, w, total, empty, x0, y0, mxx, myy, mxy


def centroid(patches, *, threshold: float = 3.0, block: int = 4096) -> pd.DataFrame:
    """Background-subtracted centre of mass of each patch.

    The background is the median of the patch border and its noise the MAD-based sigma of
    the border; each pixel counts with its height above ``background + threshold * noise``
    (lower pixels count as zero), which keeps background noise from pulling the centre
    towards the middle of the patch (on simulated sharp peaks the median error drops about
    fourfold against ``threshold=0``). Noise-free patches are unaffected.
    ``dx_err``/``dy_err`` propagate Poisson noise (variance = pixel value, so the patches
    should be in counts; the fits' errors need no units). ``sigma_x``/``sigma_y`` are the square roots of the second
    moments. ``converged`` is False only for patches without signal above the border
    (``reason`` ``flat``), whose position is the central pixel.

    Parameters
    ----------
    patches : ndarray, shape (n, N, N), or PatchSet
    threshold : float
        Level above the border median, in units of the border noise, below which pixels
        do not count.
    block : int
        Patches processed together (bounds memory).

    Returns
    -------
    DataFrame with columns :data:`COLUMNS`.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.zeros((1, 5, 5)); p[0, 2, 2] = 3.0; p[0, 2, 3] = 1.0
    >>> float(centroid(p).dx[0])
    0.25
    """
    if not (threshold >= 0):
        raise OptionError(f"centroid threshold must be >= 0 (noise sigmas), got {threshold}")
    p = _as_patches(patches)
    if p.shape[0] == 0:
        return _empty()
    return pd.concat(
        [_centroid_block(p[s], threshold) for s in _blocks(p.shape[0], block)],
        ignore_index=True,
    )


def _centroid_block(p: np.ndarray, threshold: float = 3.0) -> pd.DataFrame:
    u, lo, span, flat, nonfinite = _scale(p)
    size = p.shape[-1]
    c = size // 2
    bg, w, total, empty, x0, y0, mxx, myy, _ = _moments(u, nsigma=threshold)
    grid = np.arange(size, dtype=np.float64) - c
    # Poisson: variance of a pixel is its value in counts. (Guessing other units from the
    # values misfired: means of integer darks are multiples of 0.05 too, and a chunk pools
    # frames normalized to different monitor counts.)
    var = np.clip(np.where(np.isfinite(p), p, 0.0), 0.0, None) / span[:, None, None] ** 2
    used = w > 0
    safe = np.where(empty, 1.0, total)
    ex = ((grid[None, None, :] - x0[:, None, None]) ** 2 * var * used).sum(axis=(1, 2))
    ey = ((grid[None, :, None] - y0[:, None, None]) ** 2 * var * used).sum(axis=(1, 2))
    dx_err = np.sqrt(ex) / safe
    dy_err = np.sqrt(ey) / safe
    no_signal = empty | flat
    uniform_err = size / math.sqrt(12.0)
    dx_err = np.where(no_signal, uniform_err, dx_err)
    dy_err = np.where(no_signal, uniform_err, dy_err)
    reason = np.where(no_signal, "flat", np.where(nonfinite, "non_finite", "")).astype(object)
    cols = {
        "dx": np.where(no_signal, 0.0, x0),
        "dy": np.where(no_signal, 0.0, y0),
        "dx_err": dx_err,
        "dy_err": dy_err,
        "sigma_x": np.sqrt(np.clip(mxx, 0.0, None)),
        "sigma_y": np.sqrt(np.clip(myy, 0.0, None)),
        "amplitude": np.where(flat, 0.0, (u.max(axis=(1, 2)) - bg) * span),
        "background": lo + np.where(flat, 0.0, bg * span),
        "intensity": np.where(flat, 0.0, (u - bg[:, None, None]).sum(axis=(1, 2)) * span),
        "converged": ~no_signal,
    }
    return _table(cols, reason)


# --------------------------------------------------------------------------- LM engine


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        x = np.linalg.solve(a, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        x = (np.linalg.pinv(a) @ b[..., None])[..., 0]
    return np.where(np.isfinite(x), x, 0.0)


class _NumpyOps:
    """What the batched LM needs beyond operators and indexing, in numpy; :func:`_torch_ops`
    is the same in torch, so both engines run one copy of the algorithm."""

    where = staticmethod(np.where)
    maximum = staticmethod(np.maximum)
    isfinite = staticmethod(np.isfinite)
    abs = staticmethod(np.abs)
    clip = staticmethod(np.clip)
    solve = staticmethod(_solve)

    @staticmethod
    def nonzero(mask):
        return np.flatnonzero(mask)

    @staticmethod
    def floor_at(x, value: float):
        return np.maximum(x, value)

    @staticmethod
    def rowmax(d):
        return d.max(axis=1, keepdims=True)

    @staticmethod
    def rowall(m):
        return m.all(axis=1)

    @staticmethod
    def full(n: int, value: float, like):
        return np.full(n, value)

    @staticmethod
    def zeros(n: int, kind: str, like):
        return np.zeros(n, dtype=bool if kind == "bool" else np.int64)

    @staticmethod
    def arange(k: int, like):
        return np.arange(k)


def _levenberg_marquardt(normal, bounds, p0, data, *, max_iter, xtol, ftol, ops=_NumpyOps):
    """Batched, bounded Levenberg-Marquardt over a stack of patches.

    ``normal(params, data) -> (JtJ, Jtr, chi2)`` for a stack of patches;
    ``bounds(params) -> (lower, upper)`` per parameter (they may depend on the others);
    ``ops``: the array library's functions (:class:`_NumpyOps`, or :func:`_torch_ops` for
    tensors on a device). Returns ``(params, JtJ, chi2, converged, n_iter)``.
    """
    n, k = p0.shape

    def project(q):
        return ops.clip(q, *bounds(ops.clip(q, *bounds(q))))

    p = project(p0)
    jtj, jtr, chi2 = normal(p, data)
    lam = ops.full(n, 1e-3, p)
    done = ops.zeros(n, "bool", p)
    converged = ops.zeros(n, "bool", p)
    n_iter = ops.zeros(n, "int", p)
    diag = ops.arange(k, p)
    # An exact fit stops here; the scaled data are O(1), so this is far below any noise.
    # (1e-26 per pixel, as in the numba engine.)
    exact = 1e-26 * math.prod(data.shape[1:])
    done |= chi2 <= exact
    converged |= chi2 <= exact
    for _ in range(int(max_iter)):
        # Only the still-running patches are carried on (on a GPU the emptiness test is one
        # device-to-host sync per iteration).
        act = ops.nonzero(~done)
        if len(act) == 0:
            break
        n_iter[act] += 1
        a = jtj[act]  # integer indexing copies, in numpy and torch alike
        g = jtr[act]
        p_old = p[act]
        # Active set: a parameter on a bound whose descent direction points outward is
        # held there; clipping its step instead would zig-zag the correlated others.
        lo, hi = bounds(p_old)
        pinned = ((p_old <= lo) & (g < 0)) | ((p_old >= hi) & (g > 0))
        a[pinned[:, :, None] | pinned[:, None, :]] = 0.0
        g[pinned] = 0.0
        d = a[:, diag, diag]
        floor = 1e-12 * ops.rowmax(d) + 1e-30
        a[:, diag, diag] = ops.where(pinned, 1.0, d + lam[act, None] * ops.maximum(d, floor))
        step = ops.solve(a, g)
        p_try = project(p_old + step)
        jtj_t, jtr_t, chi2_t = normal(p_try, data[act])
        chi2_old = chi2[act]
        better = ops.isfinite(chi2_t) & (chi2_t < chi2_old)
        moved = ops.abs(p_try - p_old)
        # Parameters are O(1) in the scaled problem, so |p| + 1 is their natural scale.
        small_step = ops.rowall(moved <= xtol * (ops.abs(p_old) + 1.0))
        small_gain = better & (chi2_old - chi2_t <= ftol * chi2_old)
        acc = act[better]
        p[acc] = p_try[better]
        jtj[acc] = jtj_t[better]
        jtr[acc] = jtr_t[better]
        chi2[acc] = chi2_t[better]
        lam[acc] = ops.floor_at(lam[acc] * 0.3, 1e-9)
        rej = act[~better]
        lam[rej] = lam[rej] * 5.0
        # No descent left (damping huge or step below precision) is a numerical optimum.
        stop = small_gain | small_step | (chi2[act] <= exact) | (lam[act] > 1e12)
        done[act[stop]] = True
        converged[act[stop]] = True
    return p, jtj, chi2, converged, n_iter


def _finish(p_raw, u, lo, span, flat, nonfinite, fit: dict, converged, size, max_iter_hit):
    """Assemble the table: fall back to the centroid where the fit failed."""
    c = size // 2
    dx, dy = fit["dx"], fit["dy"]
    on_edge = (np.abs(dx) >= c + 0.5 - 1e-6) | (np.abs(dy) >= c + 0.5 - 1e-6)
    no_peak = fit["height"] <= 1e-6
    bad = on_edge | no_peak | ~np.isfinite(dx) | ~np.isfinite(dy)
    err_bad = ~(np.isfinite(fit["dx_err"]) & np.isfinite(fit["dy_err"]))
    reason = np.full(u.shape[0], "", dtype=object)
    reason[nonfinite] = "non_finite"
    reason[err_bad] = "bad_fit"
    reason[bad] = "bad_fit"
    reason[~converged & max_iter_hit] = "not_converged"
    reason[flat] = "flat"
    failed = flat | bad | err_bad | ~converged
    cols = {k: np.array(fit[k], dtype=np.float64) for k in ("dx", "dy", "dx_err", "dy_err",
                                                            "sigma_x", "sigma_y")}
    if failed.any():
        # Only the failed patches need the centroid they fall back to.
        cen = _centroid_block(p_raw[failed])
        for k in cols:
            cols[k][failed] = cen[k].to_numpy()
    cols.update({
        "amplitude": np.where(flat, 0.0, fit["height"] * span),
        "background": lo + np.where(flat, 0.0, fit["background"] * span),
        "intensity": np.where(
            flat, 0.0, (u - fit["background"][:, None, None]).sum(axis=(1, 2)) * span
        ),
        "converged": ~failed,
    })
    return _table(cols, reason)


ENGINES = ("numba", "numpy", "torch")


def _check_fit_options(max_iter, xtol, ftol, engine="numba", device="cpu"):
    if engine not in ENGINES:
        raise OptionError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine != "torch" and str(device) != "cpu":
        # The numba and numpy engines only run on the CPU: silently ignoring a GPU request
        # would hide a slow run.
        raise OptionError(f"device {str(device)!r} needs engine='torch', got engine={engine!r}")
    if int(max_iter) != max_iter or max_iter < 1:
        raise OptionError(f"max_iter must be a positive integer, got {max_iter}")
    if not (0 < xtol < 1) or not (0 < ftol < 1):
        raise OptionError(f"xtol and ftol must be in (0, 1), got {xtol} and {ftol}")


# --------------------------------------------------------------------------- Gaussian


def _gauss_axis(t, centre, sigma, xp=np, erf_=erf):
    """Pixel integrals of a unit Gaussian along one axis and their derivatives.

    ``t`` (N,) pixel centres; returns E, dE/dcentre, dE/dsigma, each (n, N). ``xp`` and
    ``erf_``: the array module and its erf (numpy and scipy's, or torch's for the torch
    engine).
    """
    s = sigma[:, None]
    hi = t[None, :] + 0.5 - centre[:, None]
    lo = t[None, :] - 0.5 - centre[:, None]
    e = 0.5 * (erf_(hi / (_SQRT2 * s)) - erf_(lo / (_SQRT2 * s)))
    phi_hi = xp.exp(-0.5 * (hi / s) ** 2) / (_SQRT2PI * s)
    phi_lo = xp.exp(-0.5 * (lo / s) ** 2) / (_SQRT2PI * s)
    de_dc = phi_lo - phi_hi
    de_ds = -(hi * phi_hi - lo * phi_lo) / s
    return e, de_dc, de_ds


def _gauss_parts(params, data, t, xp=np, erf_=erf):
    """Row vectors ``u`` and column vectors ``v`` (n, 6, N) of the separable Gaussian's
    Jacobian columns (``J_k = u_k x v_k``) and the residuals (n, N, N); ``t`` the pixel
    centres, ``xp``/``erf_`` as in :func:`_gauss_axis` (one copy for numpy and torch)."""
    x0, y0, sx, sy, vol, bg = params.T
    ex, ex_c, ex_s = _gauss_axis(t, x0, sx, xp, erf_)
    ey, ey_c, ey_s = _gauss_axis(t, y0, sy, xp, erf_)
    v = vol[:, None]
    ones = xp.ones_like(ex)
    u_rows = xp.stack([v * ey, v * ey_c, v * ey, v * ey_s, ey, ones], axis=1)  # (n, 6, N)
    v_cols = xp.stack([ex_c, ex, ex_s, ex, ex, ones], axis=1)
    resid = data - bg[:, None, None] - v[:, :, None] * ey[:, :, None] * ex[:, None, :]
    return u_rows, v_cols, resid


def _gauss_normal(params: np.ndarray, data: np.ndarray):
    """Normal equations of the separable pixel-integrated Gaussian.

    params: x0, y0, sigma_x, sigma_y, volume, background. Every Jacobian column is an
    outer product ``u_k (rows) x v_k (columns)``, so ``JtJ[k, l] = (u_k.u_l)(v_k.v_l)``.
    """
    size = data.shape[1]
    t = np.arange(size, dtype=np.float64) - size // 2
    u_rows, v_cols, resid = _gauss_parts(params, data, t)
    jtj = (u_rows @ u_rows.transpose(0, 2, 1)) * (v_cols @ v_cols.transpose(0, 2, 1))
    jtr = ((u_rows @ resid) * v_cols).sum(axis=2)
    chi2 = (resid**2).sum(axis=(1, 2))
    return jtj, jtr, chi2


def _gauss_bounds(size: int):
    half = size // 2 + 0.5
    lower = np.array([-half, -half, MIN_SIGMA, MIN_SIGMA, 0.0, -1.0])
    upper = np.array([half, half, float(size), float(size), 10.0 * size * size, 2.0])
    return lower, upper


def fit_gauss(
    patches,
    *,
    max_iter: int = 300,
    xtol: float = 1e-8,
    ftol: float = 1e-6,
    block: int = 4096,
    engine: str = "numba",
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Fit a pixel-integrated, axis-aligned 2-D Gaussian plus background to each patch.

    The model of pixel ``(row j, column i)`` is ``B + V * Ey[j] * Ex[i]`` where ``Ex`` is
    the integral over the pixel of a unit Gaussian of centre ``dx`` and width
    ``sigma_x`` (``erf`` differences), likewise ``Ey``. All patches are fitted by one
    batched Levenberg-Marquardt (see the module notes).

    Parameters
    ----------
    patches : ndarray, shape (n, N, N), or PatchSet
    max_iter : int
        Iterations before a patch is declared ``not_converged``.
    xtol, ftol : float
        Relative parameter-step and chi-square-decrease tolerances of the stop test.
    block : int
        Patches fitted together (bounds memory to a few MB per 1000 patches).
    engine : {'numba', 'numpy', 'torch'}
        ``numba``: per-patch LM compiled, threads over patches (fast; the first call
        in a fresh installation compiles for about 20 s, then cached);
        ``numpy``: the same LM vectorized over the block (no compilation);
        ``torch``: the numpy engine's LM in PyTorch on ``device`` (for GPUs).
    device : str or torch.device
        Torch device of ``engine='torch'``: ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'auto'``
        (CUDA when available). The other engines run on the CPU and need ``'cpu'``.

    Returns
    -------
    DataFrame with columns :data:`COLUMNS`; ``amplitude`` is the peak height
    ``V / (2 pi sigma_x sigma_y)``, ``dx_err``/``dy_err`` are the leverage-corrected
    sandwich (HC3) estimates of the module notes.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.special import erf
    >>> t = np.arange(11) - 5
    >>> e = lambda c, s: 0.5 * (erf((t + 0.5 - c) / (s * 2**0.5)) - erf((t - 0.5 - c) / (s * 2**0.5)))
    >>> patch = 100 * np.outer(e(-0.3, 1.2), e(0.25, 1.0)) + 2
    >>> row = fit_gauss(patch[None]).iloc[0]
    >>> round(float(row.dx), 6), round(float(row.dy), 6), bool(row.converged)
    (0.25, -0.3, True)
    """
    _check_fit_options(max_iter, xtol, ftol, engine, device)
    p = _as_patches(patches)
    if p.shape[0] == 0:
        return _empty()
    dev = _torch_device(device) if engine == "torch" else None
    return pd.concat(
        [
            _fit_gauss_block(p[s], max_iter, xtol, ftol, engine, dev)
            for s in _blocks(p.shape[0], block)
        ],
        ignore_index=True,
    )


def _fit_gauss_block(p, max_iter, xtol, ftol, engine, dev=None):
    n, size, _ = p.shape
    u, lo, span, flat, nonfinite = _scale(p)
    live = np.flatnonzero(~flat)
    converged = np.zeros(n, dtype=bool)
    n_iter = np.zeros(n, dtype=np.int64)
    if engine == "numba":
        # Start values, fit and errors in one compiled pass (see _nb_fit_gauss).
        params = np.tile([0.0, 0.0, 0.5, 0.5, 1e-3, 0.0], (n, 1))  # flat patches' start
        var = np.full((n, 2), np.inf)
        if live.size:
            lower, upper = _gauss_bounds(size)
            res = _threaded(
                _nb_fit_gauss, (u if live.size == n else u[live],), lower, upper,
                int(max_iter), float(xtol), float(ftol),
            )
            params[live], converged[live], n_iter[live], var[live] = res
    else:
        bg, _, total, _, x0, y0, mxx, myy, _ = _moments(u, window=_START_WINDOW, nsigma=3.0)
        p0 = np.column_stack(
            [
                x0,
                y0,
                np.sqrt(np.clip(mxx, 0.25, size * size / 9.0)),
                np.sqrt(np.clip(myy, 0.25, size * size / 9.0)),
                np.maximum(total, 1e-3),
                bg,
            ]
        )
        params = p0.copy()
        if engine == "torch":
            params, converged, n_iter, var = _torch_fit(
                _GAUSS, _gauss_bounds(size), p0, u, live, 1, dev, max_iter, xtol, ftol
            )
        else:
            if live.size:
                res = _run_lm(
                    _GAUSS, _gauss_normal, _gauss_bounds(size), p0[live], u[live], 1, engine,
                    max_iter, xtol, ftol,
                )
                params[live], converged[live], n_iter[live] = res
            var = _threaded(lambda q, d: _nb_sandwich_var(_GAUSS, q, d, 1), (params, u))
    sx, sy, vol = params[:, 2], params[:, 3], params[:, 4]
    fit = {
        "dx": params[:, 0],
        "dy": params[:, 1],
        "dx_err": np.sqrt(var[:, 0]),
        "dy_err": np.sqrt(var[:, 1]),
        "sigma_x": sx,
        "sigma_y": sy,
        "height": vol / (2.0 * np.pi * sx * sy),
        "background": params[:, 5],
    }
    return _finish(p, u, lo, span, flat, nonfinite, fit, converged, size, n_iter >= max_iter)


# --------------------------------------------------------------------------- pseudo-Voigt


def _subpixel_grid(size: int, oversample: int) -> np.ndarray:
    t = np.arange(size, dtype=np.float64) - size // 2
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    return (t[:, None] + sub[None, :]).ravel()


def _pvoigt_jacobian_factory(size: int, oversample: int, xp=np, grid=None):
    """``f(params) -> (model, J)`` of the pseudo-Voigt, shapes (n, N*N) and (n, N*N, 8).

    ``xp`` is the array module (numpy, or torch for the torch engine, with ``grid``, the
    sub-pixel grid, already on its device): one copy of the model for both engines.
    """
    g = _subpixel_grid(size, oversample) if grid is None else grid

    def pixel_mean(a):
        if oversample == 1:
            return a.reshape(a.shape[0], -1)
        return a.reshape(a.shape[0], size, oversample, size, oversample).mean(axis=(2, 4)).reshape(
            a.shape[0], -1
        )

    def jacobian(params):
        x0, y0, a, b, c, eta, amp, bg = (params[:, i, None, None] for i in range(8))
        xx = g[None, None, :] - x0  # (n, 1, m)
        yy = g[None, :, None] - y0  # (n, m, 1)
        ax_by = a * xx + b * yy
        bx_cy = b * xx + c * yy
        q = xx * ax_by + yy * bx_cy
        gauss = xp.exp(-_LN2 * q)
        lor = 1.0 / (1.0 + q)
        prof = eta * lor + (1.0 - eta) * gauss
        dq = -amp * (eta * lor * lor + (1.0 - eta) * _LN2 * gauss)
        model_prof = pixel_mean(prof)
        jac = xp.stack(
            [
                pixel_mean(-2.0 * dq * ax_by),
                pixel_mean(-2.0 * dq * bx_cy),
                pixel_mean(dq * (xx * xx)),
                pixel_mean(2.0 * dq * (xx * yy)),
                pixel_mean(dq * (yy * yy)),
                pixel_mean(amp * (lor - gauss)),
                model_prof,
                xp.ones_like(model_prof),
            ],
            axis=2,
        )
        return bg[:, :, 0] + amp[:, :, 0] * model_prof, jac

    return jacobian


def _pvoigt_normal_factory(size: int, oversample: int):
    jacobian = _pvoigt_jacobian_factory(size, oversample)

    def normal(params, data):
        model, jac = jacobian(params)
        resid = data.reshape(params.shape[0], -1) - model
        jt = jac.transpose(0, 2, 1)
        return jt @ jac, (jt @ resid[:, :, None])[:, :, 0], (resid * resid).sum(axis=1)

    return normal


def _pvoigt_bounds(size: int):
    half = size // 2 + 0.5
    # q = 1 at the half maximum, so a = 1 / hwhm^2 along an axis.
    qmax = 1.0 / (MIN_SIGMA * _HWHM_PER_SIGMA) ** 2
    qmin = 1.0 / (2.0 * size) ** 2
    lower = np.array([-half, -half, qmin, -qmax, qmin, 0.0, 0.0, -1.0])
    upper = np.array([half, half, qmax, qmax, qmax, 1.0, 10.0, 2.0])
    return lower, upper


def _bounds_numpy(lower, upper, cross: bool):
    def bounds(p):
        lo = np.broadcast_to(lower, p.shape).copy()
        hi = np.broadcast_to(upper, p.shape).copy()
        if cross:  # |b| < sqrt(a c): the quadratic form stays positive definite
            lim = _CROSS * np.sqrt(np.clip(p[:, 2], lower[2], upper[2]) * np.clip(p[:, 4], lower[4], upper[4]))
            lo[:, 3], hi[:, 3] = -lim, lim
        return lo, hi

    return bounds


def fit_pvoigt(
    patches,
    *,
    oversample: int = 2,
    max_iter: int = 300,
    xtol: float = 1e-8,
    ftol: float = 1e-8,
    block: int = 4096,
    engine: str = "numba",
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Fit a rotated 2-D pseudo-Voigt plus background to each patch.

    Model: ``B + A * (eta / (1 + q) + (1 - eta) * exp(-ln2 q))`` with the quadratic form
    ``q = a X^2 + 2 b X Y + c Y^2`` of ``X = x - dx``, ``Y = y - dy`` (``q = 1`` at half
    maximum), averaged over ``oversample^2`` points per pixel. Bounds: centre inside the
    patch, Gaussian-equivalent widths >= 0.2 px, ``0 <= eta <= 1``, ``A >= 0``.

    Parameters
    ----------
    patches : ndarray, shape (n, N, N), or PatchSet
    oversample : int
        Sample points per pixel along each axis (1 = point-sampled model).
    max_iter, xtol, ftol, block, engine, device
        As in :func:`fit_gauss`.

    Returns
    -------
    DataFrame with columns :data:`COLUMNS`; ``sigma_x``/``sigma_y`` are the
    Gaussian-equivalent widths along x and y of the fitted quadratic form, ``amplitude``
    is ``A``.

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[-5:6, -5:6]
    >>> q = ((x - 0.2) ** 2 + (y + 0.1) ** 2) / 1.5**2
    >>> patch = 50 * (0.3 / (1 + q) + 0.7 * np.exp(-np.log(2) * q)) + 1
    >>> row = fit_pvoigt(patch[None], oversample=1).iloc[0]
    >>> round(float(row.dx), 6), round(float(row.dy), 6), bool(row.converged)
    (0.2, -0.1, True)
    """
    _check_fit_options(max_iter, xtol, ftol, engine, device)
    if int(oversample) != oversample or not 1 <= oversample <= 16:
        raise OptionError(f"oversample must be an integer in 1..16, got {oversample}")
    p = _as_patches(patches)
    if p.shape[0] == 0:
        return _empty()
    dev = _torch_device(device) if engine == "torch" else None
    return pd.concat(
        [
            _fit_pvoigt_block(p[s], int(oversample), max_iter, xtol, ftol, engine, dev)
            for s in _blocks(p.shape[0], block)
        ],
        ignore_index=True,
    )


def _fit_pvoigt_block(p, oversample, max_iter, xtol, ftol, engine, dev=None):
    n, size, _ = p.shape
    u, lo, span, flat, nonfinite = _scale(p)
    bg, _, _, _, x0, y0, mxx, myy, mxy = _moments(u, window=_START_WINDOW, nsigma=3.0)
    # Start from the moments' covariance: quadratic form = inverse covariance / (2 ln2).
    vxx = np.clip(mxx, 0.25, size * size / 9.0)
    vyy = np.clip(myy, 0.25, size * size / 9.0)
    vxy = np.clip(mxy, -0.9 * np.sqrt(vxx * vyy), 0.9 * np.sqrt(vxx * vyy))
    det = vxx * vyy - vxy**2
    k = 1.0 / (2.0 * _LN2 * det)
    p0 = np.column_stack(
        [x0, y0, vyy * k, -vxy * k, vxx * k, np.full(n, 0.5), u.max(axis=(1, 2)) - bg, bg]
    )
    params = p0.copy()
    converged = np.zeros(n, dtype=bool)
    n_iter = np.zeros(n, dtype=np.int64)
    live = np.flatnonzero(~flat)
    if engine == "torch":
        params, converged, n_iter, var = _torch_fit(
            _PVOIGT, _pvoigt_bounds(size), p0, u, live, oversample, dev, max_iter, xtol, ftol
        )
    else:
        if live.size:
            res = _run_lm(
                _PVOIGT, _pvoigt_normal_factory(size, oversample), _pvoigt_bounds(size),
                p0[live], u[live], oversample, engine, max_iter, xtol, ftol,
            )
            params[live], converged[live], n_iter[live] = res
        var = _threaded(lambda p, d: _nb_sandwich_var(_PVOIGT, p, d, oversample), (params, u))
    a, b, c = params[:, 2], params[:, 3], params[:, 4]
    det_q = np.maximum(a * c - b * b, 1e-300) * 2.0 * _LN2
    fit = {
        "dx": params[:, 0],
        "dy": params[:, 1],
        "dx_err": np.sqrt(var[:, 0]),
        "dy_err": np.sqrt(var[:, 1]),
        "sigma_x": np.sqrt(c / det_q),
        "sigma_y": np.sqrt(a / det_q),
        "height": params[:, 6],
        "background": params[:, 7],
    }
    return _finish(p, u, lo, span, flat, nonfinite, fit, converged, size, n_iter >= max_iter)


# --------------------------------------------------------------------------- numba engine
# The same bounded Levenberg-Marquardt, one patch at a time in compiled code. It fuses
# model, Jacobian and normal equations into one pass over the pixels and lets each patch
# stop on its own, which on small patches is several times faster than the numpy engine
# (whose cost is dominated by temporaries); see benchmarks/bench_fits.py. The kernels
# release the GIL and run on a few threads over slices of the block: numba's own
# ``parallel=True`` costs tens of seconds more compilation for the same speed.

_GAUSS, _PVOIGT = 0, 1
# Fast-math without the no-NaN/no-inf assumptions, which the failure checks rely on.
_FAST = {"contract", "reassoc", "arcp", "nsz"}


@numba.njit(cache=True, fastmath=_FAST)
def _nb_gauss_axes(p, size, ex, exc, exs, ey, eyc, eys):
    half = size // 2
    erf_edge = np.empty(size + 1)
    phi_edge = np.empty(size + 1)
    for axis in range(2):
        c = p[0] if axis == 0 else p[1]
        s = p[2] if axis == 0 else p[3]
        e = ex if axis == 0 else ey
        ec = exc if axis == 0 else eyc
        es = exs if axis == 0 else eys
        # Neighbouring pixels share an edge: N + 1 erf/exp evaluations, not 2 N.
        for i in range(size + 1):
            z = i - half - 0.5 - c
            erf_edge[i] = math.erf(z / (_SQRT2 * s))
            phi_edge[i] = math.exp(-0.5 * (z / s) ** 2) / (_SQRT2PI * s)
        for i in range(size):
            hi = i - half + 0.5 - c
            lo = i - half - 0.5 - c
            e[i] = 0.5 * (erf_edge[i + 1] - erf_edge[i])
            ec[i] = phi_edge[i] - phi_edge[i + 1]
            es[i] = -(hi * phi_edge[i + 1] - lo * phi_edge[i]) / s


@numba.njit(cache=True, fastmath=_FAST)
def _nb_gauss_uv(p, size):
    """Jacobian column k of the Gaussian is the outer product u[k] (rows) x v[k] (cols)."""
    ex = np.empty(size)
    exc = np.empty(size)
    exs = np.empty(size)
    ey = np.empty(size)
    eyc = np.empty(size)
    eys = np.empty(size)
    _nb_gauss_axes(p, size, ex, exc, exs, ey, eyc, eys)
    vol = p[4]
    u = np.empty((6, size))
    v = np.empty((6, size))
    for j in range(size):
        u[0, j] = vol * ey[j]
        u[1, j] = vol * eyc[j]
        u[2, j] = vol * ey[j]
        u[3, j] = vol * eys[j]
        u[4, j] = ey[j]
        u[5, j] = 1.0
        v[0, j] = exc[j]
        v[1, j] = ex[j]
        v[2, j] = exs[j]
        v[3, j] = ex[j]
        v[4, j] = ex[j]
        v[5, j] = 1.0
    return u, v


@numba.njit(cache=True, fastmath=_FAST)
def _nb_gauss_normal(p, data, jtj, jtr):
    size = data.shape[0]
    u, v = _nb_gauss_uv(p, size)
    for k in range(6):
        for m in range(k, 6):
            su = 0.0
            sv = 0.0
            for j in range(size):
                su += u[k, j] * u[m, j]
                sv += v[k, j] * v[m, j]
            jtj[k, m] = su * sv
            jtj[m, k] = su * sv
    chi2 = 0.0
    ur = np.zeros((6, size))
    for j in range(size):
        for i in range(size):
            r = data[j, i] - p[5] - u[4, j] * p[4] * v[4, i]
            chi2 += r * r
            for k in range(6):
                ur[k, i] += u[k, j] * r
    for k in range(6):
        acc = 0.0
        for i in range(size):
            acc += ur[k, i] * v[k, i]
        jtr[k] = acc
    return chi2


@numba.njit(cache=True, fastmath=_FAST)
def _nb_pvoigt_row(p, size, oversample, j, i, row):
    """Jacobian row of pixel (j, i) (averaged over sub-pixel samples); returns the model."""
    half = size // 2
    x0, y0, a, b, c, eta, amp, bg = p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
    for k in range(6):
        row[k] = 0.0
    prof = 0.0
    for sj in range(oversample):
        yy = j - half + (sj + 0.5) / oversample - 0.5 - y0
        for si in range(oversample):
            xx = i - half + (si + 0.5) / oversample - 0.5 - x0
            axby = a * xx + b * yy
            bxcy = b * xx + c * yy
            q = xx * axby + yy * bxcy
            g = math.exp(-_LN2 * q)
            lor = 1.0 / (1.0 + q)
            prof += eta * lor + (1.0 - eta) * g
            dq = -amp * (eta * lor * lor + (1.0 - eta) * _LN2 * g)
            row[0] += -2.0 * dq * axby
            row[1] += -2.0 * dq * bxcy
            row[2] += dq * xx * xx
            row[3] += 2.0 * dq * xx * yy
            row[4] += dq * yy * yy
            row[5] += amp * (lor - g)
    inv = 1.0 / (oversample * oversample)
    for k in range(6):
        row[k] *= inv
    row[6] = prof * inv
    row[7] = 1.0
    return bg + amp * row[6]


@numba.njit(cache=True, fastmath=_FAST)
def _nb_pvoigt_normal(p, data, oversample, jtj, jtr):
    size = data.shape[0]
    jtj[:, :] = 0.0
    jtr[:] = 0.0
    row = np.empty(8)
    chi2 = 0.0
    for j in range(size):
        for i in range(size):
            r = data[j, i] - _nb_pvoigt_row(p, size, oversample, j, i, row)
            chi2 += r * r
            for k in range(8):
                jtr[k] += row[k] * r
                for m in range(k, 8):
                    jtj[k, m] += row[k] * row[m]
    for k in range(8):
        for m in range(k):
            jtj[k, m] = jtj[m, k]
    return chi2


@numba.njit(cache=True, fastmath=_FAST)
def _nb_normal(model, p, data, oversample, jtj, jtr):
    if model == _GAUSS:
        return _nb_gauss_normal(p, data, jtj, jtr)
    return _nb_pvoigt_normal(p, data, oversample, jtj, jtr)


@numba.njit(cache=True, fastmath=_FAST)
def _nb_rows(model, p, data, oversample, rows, resid):
    """Dense Jacobian rows (M, k) and residuals (M,) at ``p``."""
    size = data.shape[0]
    if model == _GAUSS:
        u, v = _nb_gauss_uv(p, size)
        for j in range(size):
            for i in range(size):
                pix = j * size + i
                for k in range(6):
                    rows[pix, k] = u[k, j] * v[k, i]
                resid[pix] = data[j, i] - p[5] - p[4] * u[4, j] * v[4, i]
    else:
        for j in range(size):
            for i in range(size):
                pix = j * size + i
                resid[pix] = data[j, i] - _nb_pvoigt_row(p, size, oversample, j, i, rows[pix])


@numba.njit(cache=True, fastmath=_FAST)
def _nb_project(model, p, lower, upper):
    for k in range(p.shape[0]):
        p[k] = min(max(p[k], lower[k]), upper[k])
    if model == _PVOIGT:
        lim = _CROSS * math.sqrt(p[2] * p[4])
        p[3] = min(max(p[3], -lim), lim)


@numba.njit(cache=True, fastmath=_FAST)
def _nb_cholesky(a, low):
    """Lower Cholesky factor of symmetric ``a`` into ``low``; False if not positive definite."""
    k = a.shape[0]
    for i in range(k):
        for j in range(k):
            low[i, j] = 0.0
    for i in range(k):
        for j in range(i + 1):
            s = a[i, j]
            for m in range(j):
                s -= low[i, m] * low[j, m]
            if i == j:
                if not s > 0.0:
                    return False
                low[i, i] = math.sqrt(s)
            else:
                low[i, j] = s / low[j, j]
    return True


@numba.njit(cache=True, fastmath=_FAST)
def _nb_forward(low, g, x):
    for i in range(low.shape[0]):
        s = g[i]
        for m in range(i):
            s -= low[i, m] * x[m]
        x[i] = s / low[i, i]


@numba.njit(cache=True, fastmath=_FAST)
def _nb_chol_solve(low, g, x):
    _nb_forward(low, g, x)
    for i in range(low.shape[0] - 1, -1, -1):
        s = x[i]
        for m in range(i + 1, low.shape[0]):
            s -= low[m, i] * x[m]
        x[i] = s / low[i, i]


@numba.njit(cache=True, fastmath=_FAST)
def _nb_damped_system(p, jtj, jtr, lo, hi, lam, pinned, a, g):
    """Levenberg-Marquardt system ``a step = g`` at ``p``: the normal equations damped by
    ``lam`` (Marquardt scaling), parameters held on a bound while the descent points out."""
    k = p.shape[0]
    dmax = 0.0
    for m in range(k):
        dmax = max(dmax, jtj[m, m])
    for m in range(k):
        pinned[m] = (p[m] <= lo[m] and jtr[m] < 0.0) or (p[m] >= hi[m] and jtr[m] > 0.0)
    for m in range(k):
        for m2 in range(k):
            a[m, m2] = 0.0 if (pinned[m] or pinned[m2]) else jtj[m, m2]
        g[m] = 0.0 if pinned[m] else jtr[m]
        if pinned[m]:
            a[m, m] = 1.0
        else:
            a[m, m] = jtj[m, m] + lam * max(jtj[m, m], 1e-12 * dmax + 1e-30)


@numba.njit(cache=True, fastmath=_FAST)
def _nb_small_step(p, p_try, xtol):
    for m in range(p.shape[0]):
        if abs(p_try[m] - p[m]) > xtol * (abs(p[m]) + 1.0):
            return False
    return True


@numba.njit(cache=True, fastmath=_FAST)
def _nb_verdict(chi2, chi2_t, lam, small_step, ftol, exact):
    """Accept the trial step or not; the new damping; whether the fit has converged."""
    if chi2_t < chi2:
        done = chi2 - chi2_t <= ftol * chi2 or small_step or chi2_t <= exact
        return True, max(lam * 0.3, 1e-9), done
    lam *= 5.0
    # No descent left: a numerical optimum.
    return False, lam, small_step or lam > 1e12


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _nb_levenberg_marquardt(model, p0, data, lower, upper, oversample, max_iter, xtol, ftol):
    n, k = p0.shape
    params = p0.copy()
    chi2_out = np.zeros(n)
    converged = np.zeros(n, dtype=np.bool_)
    n_iter = np.zeros(n, dtype=np.int64)
    exact = 1e-26 * data.shape[1] * data.shape[2]
    # Work arrays once per call, not per patch.
    jtj = np.empty((k, k))
    jtr = np.empty(k)
    jtj_t = np.empty((k, k))
    jtr_t = np.empty(k)
    a = np.empty((k, k))
    low = np.empty((k, k))
    g = np.empty(k)
    step = np.empty(k)
    p_try = np.empty(k)
    pinned = np.zeros(k, dtype=np.bool_)
    lo = lower.copy()
    hi = upper.copy()
    for t in range(n):
        d = data[t]
        p = params[t]
        _nb_project(model, p, lower, upper)
        chi2 = _nb_normal(model, p, d, oversample, jtj, jtr)
        lam = 1e-3
        done = chi2 <= exact
        it = 0
        while not done and it < max_iter:
            it += 1
            if model == _PVOIGT:  # the cross term's bound moves with the widths
                lim = _CROSS * math.sqrt(p[2] * p[4])
                lo[3], hi[3] = -lim, lim
            _nb_damped_system(p, jtj, jtr, lo, hi, lam, pinned, a, g)
            if not _nb_cholesky(a, low):
                lam *= 5.0
                if lam > 1e12:
                    done = True
                continue
            _nb_chol_solve(low, g, step)
            for m in range(k):
                p_try[m] = p[m] + step[m]
            _nb_project(model, p_try, lower, upper)
            chi2_t = _nb_normal(model, p_try, d, oversample, jtj_t, jtr_t)
            accept, lam, done = _nb_verdict(chi2, chi2_t, lam, _nb_small_step(p, p_try, xtol),
                                            ftol, exact)
            if accept:
                for m in range(k):
                    p[m] = p_try[m]
                    jtr[m] = jtr_t[m]
                    for m2 in range(k):
                        jtj[m, m2] = jtj_t[m, m2]
                chi2 = chi2_t
        converged[t] = done
        n_iter[t] = it
        chi2_out[t] = chi2
    return params, chi2_out, converged, n_iter


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _nb_sandwich_var(model, params, data, oversample):
    """Variance of (dx, dy): leverage-corrected (HC3) sandwich covariance, per patch.

    ``(J^T J)^-1 J^T diag(r_i^2 / (1 - h_i)^2) J (J^T J)^-1`` with the leverage ``h_i`` of
    each pixel. Unlike ``(J^T J)^-1`` times the reduced chi-square it stays right when the
    noise varies over the patch (Poisson: bright peak pixels, dim background) and needs no
    assumption about the units; the leverage term keeps it from being optimistic when a
    few peak pixels carry the position. Only two entries of the diagonal are needed:
    ``var_k = sum_i w_i ((J^T J)^-1 J_i)_k^2``.
    """
    n, k = params.shape
    size = data.shape[1]
    npix = size * size
    out = np.full((n, 2), np.inf)
    rows = np.empty((npix, k))
    resid = np.empty(npix)
    bread = np.empty((k, k))
    low = np.empty((k, k))
    inv = np.empty((k, k))
    e = np.zeros(k)
    col = np.empty(k)
    for t in range(n):
        _nb_rows(model, params[t], data[t], oversample, rows, resid)
        bread[:, :] = 0.0
        for pix in range(npix):
            for m in range(k):
                rm = rows[pix, m]
                for m2 in range(m, k):
                    bread[m, m2] += rm * rows[pix, m2]
        trace = 0.0
        for m in range(k):
            trace += bread[m, m]
            for m2 in range(m):
                bread[m, m2] = bread[m2, m]
        for m in range(k):
            bread[m, m] += 1e-12 * trace / k + 1e-300
        if not _nb_cholesky(bread, low):
            continue
        for m in range(k):
            e[:] = 0.0
            e[m] = 1.0
            _nb_chol_solve(low, e, col)
            for m2 in range(k):
                inv[m2, m] = col[m2]
        var0 = 0.0
        var1 = 0.0
        for pix in range(npix):
            h = 0.0
            c0 = 0.0
            c1 = 0.0
            for m in range(k):
                acc = 0.0
                for m2 in range(k):
                    acc += inv[m, m2] * rows[pix, m2]
                h += rows[pix, m] * acc
                if m == 0:
                    c0 = acc
                elif m == 1:
                    c1 = acc
            h = min(max(h, 0.0), 0.99)
            w = resid[pix] * resid[pix] / ((1.0 - h) * (1.0 - h))
            var0 += w * c0 * c0
            var1 += w * c1 * c1
        out[t, 0] = var0
        out[t, 1] = var1
    return out



# Fused Gaussian path: start values, LM and sandwich in one compiled pass per patch, with
# every work array allocated once per thread. The Gaussian is separable, so each Jacobian
# column is an outer product ``Y_a (rows) x X_b (columns)`` of four row vectors
# (``Ey, dEy/dy0, dEy/dsy, 1``) and four column vectors, possibly times the volume:
# ``JtJ`` comes from two 4 x 4 Gram matrices and ``Jtr`` from four residual projections,
# with no per-pixel Jacobian rows. Parameter k = (x0, y0, sx, sy, vol, bg) uses row vector
# _GY[k], column vector _GX[k] and the volume factor if _GV[k].
_GY = (0, 1, 0, 2, 0, 3)
_GX = (1, 0, 2, 0, 0, 3)
_GV = (1, 1, 1, 1, 0, 0)


@numba.njit(cache=True, fastmath=_FAST, error_model="numpy")
def _nb_cholesky_r(a, low, rdiag):
    """:func:`_nb_cholesky` that also keeps the reciprocal diagonal (no divisions later)."""
    k = a.shape[0]
    for i in range(k):
        for j in range(i + 1):
            s = a[i, j]
            for m in range(j):
                s -= low[i, m] * low[j, m]
            if i == j:
                if not s > 0.0:
                    return False
                low[i, i] = math.sqrt(s)
                rdiag[i] = 1.0 / low[i, i]
            else:
                low[i, j] = s * rdiag[j]
    return True


@numba.njit(cache=True, fastmath=_FAST, error_model="numpy")
def _nb_chol_solve_r(low, rdiag, g, x):
    k = low.shape[0]
    for i in range(k):
        s = g[i]
        for m in range(i):
            s -= low[i, m] * x[m]
        x[i] = s * rdiag[i]
    for i in range(k - 1, -1, -1):
        s = x[i]
        for m in range(i + 1, k):
            s -= low[m, i] * x[m]
        x[i] = s * rdiag[i]


@numba.njit(cache=True, fastmath=_FAST, error_model="numpy")
def _nb_chol_inverse(low, rdiag, w, inv):
    """``inv = (L L^T)^-1 = W^T W`` with ``W = L^-1`` (lower triangular, in ``w``)."""
    k = low.shape[0]
    for c in range(k):
        for i in range(c):
            w[i, c] = 0.0
        w[c, c] = rdiag[c]
        for i in range(c + 1, k):
            s = 0.0
            for m in range(c, i):
                s -= low[i, m] * w[m, c]
            w[i, c] = s * rdiag[i]
    for r in range(k):
        for c in range(r, k):
            s = 0.0
            for m in range(c, k):
                s += w[m, r] * w[m, c]
            inv[r, c] = s
            inv[c, r] = s


@numba.njit(cache=True, fastmath=_FAST, error_model="numpy")
def _nb_median(b, m):
    """Median of ``b[:m]`` as ``np.median`` computes it; reorders ``b`` (quickselect)."""
    h = m // 2
    k = h if m % 2 else h - 1
    lo = 0
    hi = m - 1
    while hi > lo:
        x, y, z = b[lo], b[(lo + hi) // 2], b[hi]
        pivot = max(min(x, y), min(max(x, y), z))
        i = lo
        j = hi
        while i <= j:
            while b[i] < pivot:
                i += 1
            while b[j] > pivot:
                j -= 1
            if i <= j:
                b[i], b[j] = b[j], b[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    # b[k] is the k-th smallest and nothing after it is smaller.
    if m % 2:
        return b[k]
    nxt = b[k + 1]
    for q in range(k + 2, m):
        nxt = min(nxt, b[q])
    return (b[k] + nxt) / 2.0


@numba.njit(cache=True, fastmath=_FAST)
def _nb_border_median(d, border):
    """Median of the ``4 N - 4`` border pixels of the square patch ``d``, which are left
    (reordered) in ``border``: the patch's background level."""
    size = d.shape[0]
    m = 0
    for i in range(size):
        border[m] = d[0, i]
        border[m + 1] = d[size - 1, i]
        m += 2
    for j in range(1, size - 1):
        border[m] = d[j, 0]
        border[m + 1] = d[j, size - 1]
        m += 2
    return _nb_median(border, m)


@numba.njit(cache=True, fastmath=_FAST, error_model="numpy")
def _nb_start(d, window, nsigma, border, out):
    """:func:`_moments` of one patch: out = (bg, total, x0, y0, mxx, myy, mxy)."""
    size = d.shape[0]
    c = size // 2
    bg = _nb_border_median(d, border)
    m = 4 * size - 4
    level = bg
    if nsigma > 0:
        # The border was reordered by the median: same values, same deviations.
        for q in range(m):
            border[q] = abs(border[q] - bg)
        level = bg + nsigma * (1.4826 * _nb_median(border, m))
    lo = c - window if window < c else 0
    hi = c + window + 1 if window < c else size
    total = 0.0
    sx = 0.0
    sy = 0.0
    for j in range(lo, hi):
        for i in range(lo, hi):
            w = max(d[j, i] - level, 0.0)
            total += w
            sx += w * (i - c)
            sy += w * (j - c)
    safe = total if total > 0 else 1.0
    x0 = sx / safe
    y0 = sy / safe
    mxx = 0.0
    myy = 0.0
    mxy = 0.0
    for j in range(lo, hi):
        for i in range(lo, hi):
            w = max(d[j, i] - level, 0.0)
            mxx += w * (i - c - x0) ** 2
            myy += w * (j - c - y0) ** 2
            mxy += w * (j - c - y0) * (i - c - x0)
    out[0] = bg
    out[1] = total
    out[2] = x0 if total > 0 else 0.0
    out[3] = y0 if total > 0 else 0.0
    out[4] = mxx / safe
    out[5] = myy / safe
    out[6] = mxy / safe


@numba.njit(cache=True, fastmath=_FAST, error_model="numpy")
def _nb_gauss_vectors(p, size, vec, edge_erf, edge_phi):
    """Row and column vectors of the Jacobian at ``p`` into ``vec`` (2, 4, size).

    ``vec[0]`` along x (columns): E, dE/dx0, dE/dsx, 1; ``vec[1]`` the same along y.
    """
    half = size // 2
    for axis in range(2):
        c = p[axis]
        s = p[2 + axis]
        inv_s = 1.0 / s
        a = inv_s / _SQRT2
        b = inv_s / _SQRT2PI
        # Neighbouring pixels share an edge: N + 1 erf/exp evaluations, not 2 N.
        for i in range(size + 1):
            z = i - half - 0.5 - c
            edge_erf[i] = math.erf(z * a)
            zs = z * inv_s
            edge_phi[i] = math.exp(-0.5 * zs * zs) * b
        for i in range(size):
            lo = i - half - 0.5 - c
            hi = lo + 1.0
            vec[axis, 0, i] = 0.5 * (edge_erf[i + 1] - edge_erf[i])
            vec[axis, 1, i] = edge_phi[i] - edge_phi[i + 1]
            vec[axis, 2, i] = -(hi * edge_phi[i + 1] - lo * edge_phi[i]) * inv_s
            vec[axis, 3, i] = 1.0


@numba.njit(cache=True, fastmath=_FAST, error_model="numpy")
def _nb_gauss_chi2(p, d, vec, jtr, with_jtr):
    """Chi-square at ``p`` (vectors ``vec`` already at ``p``); with ``with_jtr``, also Jtr."""
    size = d.shape[0]
    vol = p[4]
    bg = p[5]
    chi2 = 0.0
    if not with_jtr:
        for j in range(size):
            a = vol * vec[1, 0, j]
            for i in range(size):
                r = d[j, i] - bg - a * vec[0, 0, i]
                chi2 += r * r
        return chi2
    # Per image row j, projections of the residuals on the column vectors; then
    # Jtr_k = sum_j U[k, j] (X_k . r_j). Only scalar reductions in the inner loop, so it
    # vectorizes.
    j0 = j1 = j2 = j3 = j4 = j5 = 0.0
    for j in range(size):
        a = vol * vec[1, 0, j]
        t0 = t1 = t2 = t3 = 0.0
        for i in range(size):
            r = d[j, i] - bg - a * vec[0, 0, i]
            chi2 += r * r
            t0 += vec[0, 1, i] * r
            t1 += vec[0, 0, i] * r
            t2 += vec[0, 2, i] * r
            t3 += r
        j0 += a * t0
        j1 += vec[1, 1, j] * t1
        j2 += a * t2
        j3 += vec[1, 2, j] * t1
        j4 += vec[1, 0, j] * t1
        j5 += t3
    jtr[0] = j0
    jtr[1] = vol * j1
    jtr[2] = j2
    jtr[3] = vol * j3
    jtr[4] = j4
    jtr[5] = j5
    return chi2


@numba.njit(cache=True, fastmath=_FAST, error_model="numpy")
def _nb_gauss_jtj(p, vec, gram, jtj):
    size = vec.shape[2]
    for axis in range(2):
        for a in range(4):
            for b in range(a, 4):
                acc = 0.0
                for i in range(size):
                    acc += vec[axis, a, i] * vec[axis, b, i]
                gram[axis, a, b] = acc
                gram[axis, b, a] = acc
    vol = p[4]
    for k in range(6):
        for m in range(k, 6):
            f = gram[1, _GY[k], _GY[m]] * gram[0, _GX[k], _GX[m]]
            if _GV[k]:
                f *= vol
            if _GV[m]:
                f *= vol
            jtj[k, m] = f
            jtj[m, k] = f


@numba.njit(cache=True, fastmath=_FAST, error_model="numpy")
def _nb_gauss_sandwich(p, d, vec, jtj, bread, low, rdiag, w, inv, b):
    """Variance of (x0, y0) at the fit: the HC3 sandwich of :func:`_nb_sandwich_var`.

    Pixel (j, i) has the Jacobian row ``J_k = U[k, j] X[k, i]`` (outer products of the
    row and column vectors), so ``(J^T J)^-1 J`` is a combination of the three column
    vectors with coefficients that depend on the image row alone: 24 multiply-adds per
    pixel and no Jacobian rows. ``b`` (6, 4) is work space. Returns ``(var_x0, var_y0)``, ``inf`` where
    ``J^T J`` is singular.
    """
    size = d.shape[0]
    k = 6
    trace = 0.0
    for m in range(k):
        trace += jtj[m, m]
        for m2 in range(k):
            bread[m, m2] = jtj[m, m2]
    for m in range(k):
        bread[m, m] += 1e-12 * trace / k + 1e-300
    if not _nb_cholesky_r(bread, low, rdiag):
        return np.inf, np.inf
    _nb_chol_inverse(low, rdiag, w, inv)
    vol = p[4]
    bg = p[5]
    var0 = 0.0
    var1 = 0.0
    for j in range(size):
        # Pixel (j, i): J = (U0 Xc, U1 Xe, U0 Xs, U3 Xe, U4 Xe, 1) with U0 = V Ey[j],
        # U1 = V dEy/dy0[j], U3 = V dEy/dsy[j], U4 = Ey[j] and Xe, Xc, Xs = Ex[i],
        # dEx/dx0[i], dEx/dsx[i], so c = (J^T J)^-1 J = b[:, 0] Xc + b[:, 1] Xe + b[:, 2] Xs
        # + b[:, 3] with b from the inverse and this row's U alone.
        u4 = vec[1, 0, j]
        u0 = vol * u4
        u1 = vol * vec[1, 1, j]
        u3 = vol * vec[1, 2, j]
        for m in range(k):
            b[m, 0] = inv[m, 0] * u0
            b[m, 1] = inv[m, 1] * u1 + inv[m, 3] * u3 + inv[m, 4] * u4
            b[m, 2] = inv[m, 2] * u0
            b[m, 3] = inv[m, 5]
        for i in range(size):
            xe = vec[0, 0, i]
            xc = vec[0, 1, i]
            xs = vec[0, 2, i]
            c0 = b[0, 0] * xc + b[0, 1] * xe + b[0, 2] * xs + b[0, 3]
            c1 = b[1, 0] * xc + b[1, 1] * xe + b[1, 2] * xs + b[1, 3]
            c2 = b[2, 0] * xc + b[2, 1] * xe + b[2, 2] * xs + b[2, 3]
            c3 = b[3, 0] * xc + b[3, 1] * xe + b[3, 2] * xs + b[3, 3]
            c4 = b[4, 0] * xc + b[4, 1] * xe + b[4, 2] * xs + b[4, 3]
            c5 = b[5, 0] * xc + b[5, 1] * xe + b[5, 2] * xs + b[5, 3]
            # Leverage of the pixel: J . c.
            h = u0 * (xc * c0 + xs * c2) + xe * (u1 * c1 + u3 * c3 + u4 * c4) + c5
            h = min(max(h, 0.0), 0.99)
            r = d[j, i] - bg - u0 * xe
            w = r * r / ((1.0 - h) * (1.0 - h))
            var0 += w * c0 * c0
            var1 += w * c1 * c1
    return var0, var1


@numba.njit(cache=True, nogil=True, fastmath=_FAST, error_model="numpy")
def _nb_fit_gauss(data, lower, upper, max_iter, xtol, ftol):
    """Start values, bounded LM (as :func:`_nb_levenberg_marquardt`) and sandwich variance
    of the Gaussian for each patch. Returns ``(params, converged, n_iter, var)``."""
    n, size, _ = data.shape
    k = 6
    params = np.empty((n, k))
    converged = np.zeros(n, dtype=np.bool_)
    n_iter = np.zeros(n, dtype=np.int64)
    var = np.full((n, 2), np.inf)
    exact = 1e-26 * size * size
    # Work arrays, once per call (one call per thread).
    border = np.empty(4 * size)
    start = np.empty(7)
    vec = np.empty((2, 2, 4, size))  # current and trial
    edge_erf = np.empty(size + 1)
    edge_phi = np.empty(size + 1)
    gram = np.empty((2, 4, 4))
    b = np.empty((k, 4))
    jtj = np.empty((k, k))
    jtr = np.empty(k)
    jtr_t = np.empty(k)
    a = np.empty((k, k))
    low = np.empty((k, k))
    inv = np.empty((k, k))
    w = np.empty((k, k))
    rdiag = np.empty(k)
    g = np.empty(k)
    step = np.empty(k)
    p_try = np.empty(k)
    pinned = np.zeros(k, dtype=np.bool_)
    sig_hi = size * size / 9.0
    for t in range(n):
        d = data[t]
        p = params[t]
        _nb_start(d, _START_WINDOW, 3.0, border, start)
        p[0] = start[2]
        p[1] = start[3]
        p[2] = math.sqrt(min(max(start[4], 0.25), sig_hi))
        p[3] = math.sqrt(min(max(start[5], 0.25), sig_hi))
        p[4] = max(start[1], 1e-3)
        p[5] = start[0]
        for m in range(k):
            p[m] = min(max(p[m], lower[m]), upper[m])
        cur = 0
        _nb_gauss_vectors(p, size, vec[cur], edge_erf, edge_phi)
        chi2 = _nb_gauss_chi2(p, d, vec[cur], jtr, True)
        _nb_gauss_jtj(p, vec[cur], gram, jtj)
        lam = 1e-3
        done = chi2 <= exact
        it = 0
        while not done and it < max_iter:
            it += 1
            _nb_damped_system(p, jtj, jtr, lower, upper, lam, pinned, a, g)
            if not _nb_cholesky_r(a, low, rdiag):
                lam *= 5.0
                if lam > 1e12:
                    done = True
                continue
            _nb_chol_solve_r(low, rdiag, g, step)
            for m in range(k):
                p_try[m] = min(max(p[m] + step[m], lower[m]), upper[m])
            trial = 1 - cur
            _nb_gauss_vectors(p_try, size, vec[trial], edge_erf, edge_phi)
            chi2_t = _nb_gauss_chi2(p_try, d, vec[trial], jtr_t, True)
            accept, lam, done = _nb_verdict(chi2, chi2_t, lam, _nb_small_step(p, p_try, xtol),
                                            ftol, exact)
            if accept:
                for m in range(k):
                    p[m] = p_try[m]
                    jtr[m] = jtr_t[m]
                cur = trial
                _nb_gauss_jtj(p, vec[cur], gram, jtj)
                chi2 = chi2_t
        converged[t] = done
        n_iter[t] = it
        var[t, 0], var[t, 1] = _nb_gauss_sandwich(
            p, d, vec[cur], jtj, a, low, rdiag, w, inv, b
        )
    return params, converged, n_iter, var


def _threaded(kernel, sliced: tuple, *args):
    """Run a GIL-free kernel on slices (along axis 0) of the ``sliced`` arrays in a few
    threads, the ``args`` whole; concatenate its outputs."""
    n = sliced[0].shape[0]
    threads = max(1, min(numba.config.NUMBA_NUM_THREADS, n // 256))
    if threads == 1:
        return kernel(*sliced, *args)
    cuts = np.linspace(0, n, threads + 1).astype(int)
    with ThreadPoolExecutor(threads) as pool:
        parts = list(
            pool.map(
                lambda k: kernel(*(a[cuts[k]:cuts[k + 1]] for a in sliced), *args),
                range(threads),
            )
        )
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(items) for items in zip(*parts, strict=True))
    return np.concatenate(parts)


def _run_lm(model, normal, limits, p0, u, oversample, engine, max_iter, xtol, ftol):
    """Fit with the chosen engine; returns ``(params, converged, n_iter)``."""
    lower, upper = limits
    if engine == "numpy":
        params, _, _, converged, n_iter = _levenberg_marquardt(
            normal, _bounds_numpy(lower, upper, model == _PVOIGT), p0, u,
            max_iter=max_iter, xtol=xtol, ftol=ftol,
        )
        return params, converged, n_iter
    params, _, converged, n_iter = _threaded(
        lambda p, d: _nb_levenberg_marquardt(
            model, p, d, lower, upper, int(oversample), int(max_iter), float(xtol), float(ftol)
        ),
        (np.ascontiguousarray(p0, dtype=np.float64), np.ascontiguousarray(u)),
    )
    return params, converged, n_iter


# --------------------------------------------------------------------------- torch engine
# The numpy engine's algorithm on PyTorch tensors: the same _levenberg_marquardt (with
# _torch_ops), pseudo-Voigt Jacobian and Gaussian parts (_gauss_parts), and the HC3
# sandwich of _nb_sandwich_var written in torch, so that a
# block of fits runs on a GPU: thousands of small independent problems side by side. Start
# values and the table stay in numpy on the CPU (one pass over the block each); the fit
# (tens of iterations) and the error estimate run on the device. float64 on every device:
# the tolerances (xtol 1e-8, ftol 1e-6 to 1e-8, exact fits at chi2 ~1e-26) assume it. torch is imported
# inside these functions only, like braggnn, so the CPU engines never load it.


def _torch_device(device):
    """``device`` ('cpu', 'cuda', 'cuda:N', 'auto') as a torch.device, resolved as BraggNN's."""
    from .braggnn import resolve_device  # imports torch: only when the torch engine is used

    return resolve_device(device)


def _torch_gauss_parts(params, data):
    """:func:`_gauss_parts` on tensors (pixel centres on ``data``'s device)."""
    import torch

    size = data.shape[1]
    t = torch.arange(size, dtype=data.dtype, device=data.device) - size // 2
    return _gauss_parts(params, data, t, xp=torch, erf_=torch.special.erf)


def _torch_gauss_normal(params, data):
    """:func:`_gauss_normal` in torch."""
    u_rows, v_cols, resid = _torch_gauss_parts(params, data)
    jtj = (u_rows @ u_rows.mT) * (v_cols @ v_cols.mT)
    jtr = ((u_rows @ resid) * v_cols).sum(dim=2)
    return jtj, jtr, (resid * resid).sum(dim=(1, 2))


def _torch_gauss_rows(params, data):
    """Dense Jacobian (n, N * N, 6), pixel ``(j, i)`` at ``j N + i``, and residuals (n, N * N)."""
    u_rows, v_cols, resid = _torch_gauss_parts(params, data)
    n, k, size = u_rows.shape
    jac = (u_rows[:, :, :, None] * v_cols[:, :, None, :]).reshape(n, k, size * size).mT
    return jac, resid.reshape(n, -1)


def _torch_pvoigt_factory(size: int, oversample: int, device):
    """``(normal, rows)`` of the pseudo-Voigt in torch (:func:`_pvoigt_normal_factory`)."""
    import torch

    g = torch.as_tensor(_subpixel_grid(size, oversample), dtype=torch.float64, device=device)
    jacobian = _pvoigt_jacobian_factory(size, oversample, xp=torch, grid=g)

    def rows(params, data):
        model, jac = jacobian(params)
        return jac, data.reshape(params.shape[0], -1) - model

    def normal(params, data):
        jac, resid = rows(params, data)
        jt = jac.mT
        return jt @ jac, (jt @ resid[:, :, None])[:, :, 0], (resid * resid).sum(dim=1)

    return normal, rows


def _torch_bounds(lower: np.ndarray, upper: np.ndarray, cross: bool, device):
    """:func:`_bounds_numpy` in torch."""
    import torch

    lower_t = torch.as_tensor(lower, dtype=torch.float64, device=device)
    upper_t = torch.as_tensor(upper, dtype=torch.float64, device=device)

    def bounds(p):
        lo = lower_t.expand_as(p).clone()
        hi = upper_t.expand_as(p).clone()
        if cross:  # |b| < sqrt(a c): the quadratic form stays positive definite
            lim = _CROSS * torch.sqrt(
                p[:, 2].clamp(float(lower[2]), float(upper[2]))
                * p[:, 4].clamp(float(lower[4]), float(upper[4]))
            )
            lo[:, 3], hi[:, 3] = -lim, lim
        return lo, hi

    return bounds


def _torch_solve(a, b):
    """:func:`_solve` in torch. A singular system falls back to the pseudo-inverse for that
    patch alone (numpy's ``solve`` can only fail the whole batch), so a patch's fit never
    depends on the others in its block."""
    import torch

    x, info = torch.linalg.solve_ex(a, b[..., None])
    x = x[..., 0]
    bad = info != 0
    if bool(bad.any()):  # rare: the damped diagonal is positive
        x[bad] = (torch.linalg.pinv(a[bad]) @ b[bad][..., None])[..., 0]
    return torch.where(torch.isfinite(x), x, 0.0)


def _torch_ops():
    """:class:`_NumpyOps` in torch: the LM of :func:`_levenberg_marquardt` on tensors, every
    new one on the device of ``like``."""
    import torch

    class _TorchOps:
        where = staticmethod(torch.where)
        maximum = staticmethod(torch.maximum)
        isfinite = staticmethod(torch.isfinite)
        abs = staticmethod(torch.abs)
        clip = staticmethod(torch.clamp)
        solve = staticmethod(_torch_solve)

        @staticmethod
        def nonzero(mask):
            return torch.nonzero(mask).squeeze(1)

        @staticmethod
        def floor_at(x, value: float):
            return torch.clamp(x, min=value)

        @staticmethod
        def rowmax(d):
            return d.amax(dim=1, keepdim=True)

        @staticmethod
        def rowall(m):
            return m.all(dim=1)

        @staticmethod
        def full(n: int, value: float, like):
            return torch.full((n,), value, dtype=like.dtype, device=like.device)

        @staticmethod
        def zeros(n: int, kind: str, like):
            dtype = torch.bool if kind == "bool" else torch.int64
            return torch.zeros(n, dtype=dtype, device=like.device)

        @staticmethod
        def arange(k: int, like):
            return torch.arange(k, device=like.device)

    return _TorchOps


def _torch_sandwich_var(jac, resid):
    """Variance of (dx, dy) from dense Jacobians (n, M, k) and residuals (n, M): the HC3
    sandwich of :func:`_nb_sandwich_var`, same ridge, same leverage clip; ``inf`` where
    ``J^T J`` is not positive definite."""
    import torch

    k = jac.shape[-1]
    bread = jac.mT @ jac
    ridge = 1e-12 * torch.diagonal(bread, dim1=1, dim2=2).sum(dim=1) / k + 1e-300
    bread = bread + ridge[:, None, None] * torch.eye(k, dtype=jac.dtype, device=jac.device)
    low, info = torch.linalg.cholesky_ex(bread)
    inv = torch.cholesky_inverse(low)
    coef = jac @ inv  # row p: ((J^T J)^-1 J_p)^T, the inverse being symmetric
    h = (jac * coef).sum(dim=2).clamp(0.0, 0.99)  # leverage of each pixel
    w = resid * resid / ((1.0 - h) * (1.0 - h))
    var = (w[:, :, None] * coef[:, :, :2] ** 2).sum(dim=1)
    return torch.where((info == 0)[:, None], var, torch.inf)


def _torch_fit(model, limits, p0, u, live, oversample, dev, max_iter, xtol, ftol):
    """Fit the ``live`` patches of the block and estimate the errors of all of them (as the
    numpy engine does) on ``dev``. Returns numpy ``(params, converged, n_iter, var)``."""
    import torch

    n, size, _ = u.shape
    if model == _GAUSS:
        normal, rows = _torch_gauss_normal, _torch_gauss_rows
    else:
        normal, rows = _torch_pvoigt_factory(size, oversample, dev)
    bounds = _torch_bounds(*limits, model == _PVOIGT, dev)
    ops = _torch_ops()
    data = torch.as_tensor(u, dtype=torch.float64).to(dev)
    params = torch.as_tensor(p0, dtype=torch.float64).to(dev)
    converged = torch.zeros(n, dtype=torch.bool, device=dev)
    n_iter = torch.zeros(n, dtype=torch.int64, device=dev)
    if live.size == n:
        params, _, _, converged, n_iter = _levenberg_marquardt(
            normal, bounds, params, data, max_iter=max_iter, xtol=xtol, ftol=ftol, ops=ops
        )
    elif live.size:
        idx = torch.as_tensor(live, device=dev)
        fitted, _, _, conv, iters = _levenberg_marquardt(
            normal, bounds, params[idx], data[idx], max_iter=max_iter, xtol=xtol, ftol=ftol,
            ops=ops,
        )
        params = params.clone()  # p0 is the caller's array on the CPU device
        params[idx], converged[idx], n_iter[idx] = fitted, conv, iters
    var = _torch_sandwich_var(*rows(params, data))
    return tuple(t.cpu().numpy() for t in (params, converged, n_iter, var))



# --------------------------------------------------------------------------- dispatch


def localize(
    patches,
    method: str = "pvoigt",
    *,
    model=None,
    device: str | torch.device = "cpu",
    **opts,
) -> pd.DataFrame:
    """Sub-pixel centre of the peak in each patch.

    Parameters
    ----------
    patches : ndarray, shape (n, N, N), or PatchSet
        Patches in counts, peak near the central pixel ``(N // 2, N // 2)``.
    method : {'pvoigt', 'gauss', 'centroid', 'braggnn'}
    model : torch.nn.Module or str or None
        BraggNN model (or path) for ``method='braggnn'``; ``None`` loads the shipped one.
    device : str
        ``'cpu'`` (default), ``'cuda'``, ``'cuda:N'`` or ``'auto'`` (CUDA when available,
        else the CPU; resolved as :func:`braggtrack.braggnn.resolve_device`). ``braggnn``
        runs on it; ``gauss`` and ``pvoigt`` run on a CUDA device with the torch engine and
        on the CPU with the engine asked for (numba by default); ``centroid`` runs on the
        CPU.
    **opts
        Options of the chosen function (:func:`fit_pvoigt`, :func:`fit_gauss`,
        :func:`centroid`, :func:`braggtrack.braggnn.predict`).

    Returns
    -------
    DataFrame, one row per patch, columns :data:`COLUMNS`: ``dx``, ``dy`` (offset of the
    centre from the central pixel, px; x = column, y = row), ``dx_err``, ``dy_err``
    (1-sigma, px), ``sigma_x``, ``sigma_y`` (px), ``amplitude``, ``background`` (counts),
    ``intensity`` (background-subtracted sum over the patch, counts), ``converged``,
    ``reason`` (``''``, ``'flat'``, ``'not_converged'``, ``'bad_fit'``,
    ``'non_finite'``). Never NaN.

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[-5:6, -5:6]
    >>> patch = 100 * np.exp(-((x - 0.3) ** 2 + (y - 0.1) ** 2) / 2) + 5
    >>> table = localize(patch[None], "centroid")
    >>> list(table.columns)[:4]
    ['dx', 'dy', 'dx_err', 'dy_err']
    """
    funcs = {"pvoigt": fit_pvoigt, "gauss": fit_gauss, "centroid": centroid}
    if method == "braggnn":
        from . import braggnn  # torch is imported only when the CNN is asked for

        if model is None or isinstance(model, str):
            model = braggnn.load_model(model, device=device)
        return braggnn.predict(model, _as_patches(patches).astype(np.float32), device=device, **opts)
    if method not in funcs:
        raise OptionError(f"localizer must be one of {', '.join(METHODS)}, got {method!r}")
    func = funcs[method]
    allowed = set(inspect.signature(func).parameters) - {"patches"}
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise OptionError(
            f"unknown option(s) {', '.join(unknown)} for localizer {method!r}; "
            f"known: {', '.join(sorted(allowed))}"
        )
    if method != "centroid" and str(device) != "cpu":
        dev = _torch_device(device)  # 'auto' without a GPU is the CPU: numba stays
        if dev.type != "cpu":
            engine = opts.get("engine", "torch")
            if engine != "torch":
                raise OptionError(
                    f"device {str(device)!r} runs the fits with engine='torch', got {engine!r}"
                )
            opts = {**opts, "engine": "torch", "device": dev}
    return func(patches, **opts)
