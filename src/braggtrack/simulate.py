"""Simulated Bragg-peak frames with exact ground truth: the source of every test, benchmark
and training set of braggtrack.

What is simulated
-----------------
* **Peak profile.**  A 2-D pseudo-Voigt ``f = (1 - eta) * G + eta * L`` on rotated principal
  axes ``(u, v)`` (``u`` at ``angle`` radians from +x towards +y), with Gaussian sigmas
  ``sigma_x, sigma_y`` along ``u, v`` and a Lorentzian of matching FWHM, i.e. half width
  ``gamma = sigma * sqrt(2 ln 2)``.  ``amplitude`` is the *integrated* number of counts.
* **Why the Lorentzian is truncated, and how.**  A 2-D Lorentzian with Lorentzian cross-sections,
  ``1 / (1 + rho**2)`` with ``rho**2 = (u/gamma_x)**2 + (v/gamma_y)**2``, has a logarithmically
  divergent integral, so *any* unit-integral 2-D Lorentzian is a truncated one (the bivariate
  Cauchy ``(1 + rho**2)**-1.5`` converges, but 13 % of it lies beyond 10 gamma and its first
  moment diverges, so its centre of mass would depend on the window).  Here the Lorentzian is
  rolled off smoothly to zero on the ellipse ``rho = rho_max`` (default 10 half widths) by the
  taper ``(1 - (rho / rho_max)**6)**4`` (0.3 % at 3 half widths, 6 % at 5; three continuous
  derivatives at the edge, so the quadrature below stays spectrally accurate) and normalized
  analytically over that support.  The Gaussian
  is cut on the ellipse ``rho_g = 6`` (``exp(-18)`` = 1.5e-8 of its mass) and renormalized.
  Both supports are centrally symmetric, so **the centre of mass of every rendered peak is its
  nominal centre exactly** and its integral is exactly ``amplitude``, whatever the pixel grid:
  nothing is truncated asymmetrically by a pixel window.  Where ``rho_max * gamma`` would exceed
  ``max_radius`` pixels (long streaks), ``rho_max`` is lowered for that peak, still symmetric.
* **Pixel integration.**  Every pixel value is the integral of the profile over the pixel's
  area, by tensor-product Gauss-Legendre quadrature (not point sampling, not midpoint
  supersampling).  Gauss-Legendre is spectrally accurate on smooth integrands: 6 x 6 nodes
  integrate a sigma = 0.6 px Gaussian to 3e-8 of its peak, where 8 x 8 midpoint sub-samples
  leave 2e-3; the rotated, anisotropic Gaussian needs no separability, and the Lorentzian
  (poles at least ``gamma`` from the pixel) converges as fast.  The node count follows the
  narrowest width (8 below sigma 0.45 px, 6 below 0.9, 5 below 1.4, else 4) and drops to
  3 x 3 in pixels where both components are locally smooth (Gaussian beyond 5 sigma, Lorentzian
  local scale above 2.5 px).  The rendering is a numba kernel over a local window per peak
  that holds both supports; the kernel is hand-written because no well-kept library renders
  pixel-integrated, rotated pseudo-Voigts.
* **Truth centre.**  The truth ``x, y`` is the centre of mass of the noise-free, continuous
  profile actually rendered: the nominal centre for a single peak (exact, see above), the
  intensity-weighted centre of both sub-grains for ``split`` peaks, each peak's own centre for
  ``overlapping`` pairs.  The series places peaks so that no support is clipped by the frame
  edge (``clipped`` is then False) wherever the frame is large enough (supports up to a quarter
  of the frame); in small frames only the core (4 sigma) is kept inside, and a peak whose
  support is cut has ``clipped`` True and ``x, y`` the centre of mass of the part inside the
  frame (from the quadrature nodes, i.e. continuous, not the pixelized centroid), while
  ``x_centre, y_centre`` keep the centre of the whole profile (what :func:`render_peaks` uses).
* **Frame.**  A smooth background (pedestal-free level with a linear gradient and a broad
  Gaussian hump around the beam centre, :class:`Background`), Poisson counting noise from a
  seeded :class:`numpy.random.Generator`, persistent hot pixels, and optional detector gain,
  Gaussian readout noise, pedestal and saturation (:class:`Noise`).
* **Peak kinds** (``messy`` is the fraction of non-sharp peaks, spread evenly over the messy
  kinds): ``sharp`` (sigma 0.6-1.2 px), ``broad`` (1.5-3 px, anisotropic, rotated, eta 0.3-0.8),
  ``split`` (two sub-grains 1-2 px apart, amplitude ratio 0.3-0.7), ``streak`` (one sigma 3-6x
  the other; in series oriented tangentially, as mosaic spread smears spots along the ring),
  ``weak`` (height 4-8x the local background noise), ``overlapping`` (a second peak 3-6 px away,
  each with its own truth).
* **Shapes beyond the six kinds** (``EXTRA_KINDS``, drawn by :func:`simulate_patches` only when
  named, so that the default mix and every seeded set made without them stay as they were):
  ``undersampled`` (sigma 0.25-0.6 px: most counts in a few pixels, as sharp spots on large
  pixels), ``wide`` (sigma 3-4.5 px, filling an 11 px patch), ``lorentzian`` (sigma 0.6-2 px,
  eta 0.8-1: long tails) and ``shadowed`` (a sharp peak with a neighbour 3-6 px away that is 1-3
  times *brighter*: the fainter peak of a close pair, which ``overlapping`` never is).  They train and test a localizer on shapes a user's detector may give
  outside the kinds above.
* **Motion.**  A peak moves radially from the beam centre as its d-spacing changes.  The exact
  Bragg relation is used, ``r = L tan(2 asin(lambda / 2d)) / pixel``; for small angles it is
  ``r ~ r0 / (1 + strain) ~ r0 (1 - strain)`` (d up -> 2 theta down -> r down), with
  ``strain = d / d0 - 1``.  :func:`simulate_series` gives each particle a smooth
  charge/discharge-like strain cycle with its own amplitude, sign and lag;
  :func:`simulate_operando` ties the strain of NMC-like reflections to the state of charge of a
  galvanostatic cycle and returns the cycler's view of the experiment as well.

Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numba
import numpy as np
import pandas as pd

from .errors import InputFileError, OptionError

__all__ = [
    "KINDS",
    "MESSY_KINDS",
    "EXTRA_KINDS",
    "TRUTH_COLUMNS",
    "Background",
    "Noise",
    "DetectorSetup",
    "OperandoSeries",
    "profile_peak",
    "render_peaks",
    "simulate_series",
    "simulate_patches",
    "simulate_operando",
    "write_series",
    "read_truth",
    "read_frame_meta",
    "read_cycler_log",
    "simulate_to_file",
]

KINDS = ("sharp", "broad", "split", "streak", "weak", "overlapping")
MESSY_KINDS = KINDS[1:]
#: Shapes outside the six kinds, drawn only when asked for (see the module notes).
EXTRA_KINDS = ("undersampled", "wide", "lorentzian", "shadowed")

#: Lorentzian half width per Gaussian sigma, so that both components have the same FWHM.
HWHM_PER_SIGMA = math.sqrt(2.0 * math.log(2.0))
#: The Gaussian is cut at this many sigmas (on its ellipse) and renormalized.
GAUSS_CUTOFF = 6.0
#: Default Lorentzian support in half widths (smooth taper to zero there).
LORENTZ_CUTOFF = 10.0
#: Default largest half extent of a peak's rendering window, pixels.
MAX_RADIUS = 64.0
#: Narrowest sigma the quadrature is accurate for (8 Gauss-Legendre nodes: < 1e-7 of the peak).
MIN_SIGMA = 0.25

#: Units and meaning of the truth columns (simulator only; the shared ones are in tables.COLUMNS).
TRUTH_COLUMNS: dict[str, str] = {
    "frame": "frame index, 0-based",
    "particle": "true particle id (one diffracting grain / reflection)",
    "patch": "patch index (simulate_patches)",
    "x": "true centre of mass of the noise-free peak, column, pixels (pixel (0,0) centre = 0.0)",
    "y": "true centre of mass, row, pixels",
    "x0": "unstrained (strain = 0) position of the particle, column, pixels",
    "y0": "unstrained position, row, pixels",
    "x_centre": "centre of the whole (unclipped) profile, column; equals x unless clipped",
    "y_centre": "centre of the whole profile, row; equals y unless clipped",
    "amplitude": "integrated counts of the peak (all sub-grains), before noise",
    "height": "maximum of the continuous noise-free profile, counts per pixel",
    "background": "background level at the peak centre, counts per pixel",
    "kind": "sharp, broad, split, streak, weak or overlapping",
    "sigma_x": "Gaussian sigma along the peak's first principal axis (x rotated by angle), pixels",
    "sigma_y": "Gaussian sigma along the second principal axis, pixels",
    "eta": "Lorentzian fraction of the pseudo-Voigt, 0..1",
    "angle": "rotation of the principal axes from +x towards +y, radians",
    "split_dx": "split peaks: x offset from the first to the second sub-grain, pixels (0 otherwise)",
    "split_dy": "split peaks: y offset from the first to the second sub-grain, pixels",
    "split_ratio": "split peaks: amplitude of the second sub-grain over the first (0 otherwise)",
    "partner": "overlapping peaks: particle id of the neighbour, -1 otherwise",
    "strain": "true lattice strain d / d0 - 1 of the particle in this frame",
    "r": "radial distance of (x_centre, y_centre) from the beam centre, pixels",
    "two_theta": "scattering angle of (x_centre, y_centre), degrees",
    "d_spacing": "true d-spacing in this frame, angstrom",
    "visible": "True when the peak is present in the frame (rows with False are not rendered)",
    "clipped": "True when part of the peak's support lies outside the frame",
    "hkl": "simulate_operando: reflection of the NMC-like layered oxide",
    "strain_a": "simulate_operando: strain of the lattice parameter a",
    "strain_c": "simulate_operando: strain of the lattice parameter c",
    "state_of_charge": "simulate_operando: the particle's own (lagged) state of charge, 0..1",
    "neighbour_dx": "simulate_patches, overlapping: neighbour centre minus peak centre, x, pixels",
    "neighbour_dy": "simulate_patches, overlapping: neighbour centre minus peak centre, y, pixels",
    "neighbour_amplitude": "simulate_patches, overlapping: neighbour integrated counts (0: none)",
    "hot_pixel": "simulate_patches: True when the patch holds a hot pixel",
    "neighbour_sigma_x": "simulate_patches, overlapping: neighbour's sigma_x, pixels (1: none)",
    "neighbour_sigma_y": "simulate_patches, overlapping: neighbour's sigma_y, pixels (1: none)",
    "neighbour_eta": "simulate_patches, overlapping: neighbour's Lorentzian fraction (0: none)",
    "neighbour_angle": "simulate_patches, overlapping: neighbour's axis rotation, radians",
    "gradient_x": "simulate_patches: background tilt along x (columns), counts per pixel per pixel",
    "gradient_y": "simulate_patches: background tilt along y (rows), counts per pixel per pixel",
    "read_noise": "simulate_patches: Gaussian read-noise sigma of the patch, counts",
    "hot_x": "simulate_patches: column of the hot pixel, -1 when none",
    "hot_y": "simulate_patches: row of the hot pixel, -1 when none",
    "hot_counts": "simulate_patches: expected counts the hot pixel adds (0 when none)",
}


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Background:
    """Smooth detector background (counts per pixel, before noise).

    ``level * (1 + slope * g) + hump * level * exp(-r**2 / (2 w**2))`` where ``g`` is a linear
    ramp from -0.5 to 0.5 across the frame along a random direction, ``r`` the distance from the
    beam centre and ``w = hump_width`` times the frame diagonal.

    Parameters
    ----------
    level : float
        Mean flat level, counts per pixel (> 0).
    slope : float
        Relative change of the level across the frame, 0 <= slope < 2.
    hump : float
        Height of the diffuse-scattering hump relative to ``level`` (>= 0).
    hump_width : float
        Sigma of the hump as a fraction of the frame diagonal (> 0).

    Examples
    --------
    >>> Background(level=50.0).level
    50.0
    """

    level: float = 100.0
    slope: float = 0.2
    hump: float = 0.5
    hump_width: float = 0.35

    def __post_init__(self) -> None:
        if not (self.level > 0):
            raise OptionError(f"background level must be > 0 counts, got {self.level}")
        if not (0 <= self.slope < 2):
            raise OptionError(f"background slope must be in [0, 2), got {self.slope}")
        if not (self.hump >= 0) or not (self.hump_width > 0):
            raise OptionError("background hump must be >= 0 and hump_width > 0")


@dataclass(frozen=True)
class Noise:
    """Detector response: ``adu = gain * Poisson(counts) + Normal(0, read_noise) + pedestal``.

    Parameters
    ----------
    gain : float
        Detector units per counted photon (> 0).
    read_noise : float
        Gaussian readout noise, detector units rms (>= 0).
    pedestal : float
        Constant offset added to every pixel, detector units.
    saturation : float or None
        Values are clipped to this (detector units); ``None``: no clipping.
    hot_pixels : int or None
        Number of hot pixels (persistent through a series); ``None``: about one per 100,000
        pixels, at least 2.
    poisson : bool
        Draw counting noise; ``False`` gives the noise-free expectation (still with hot pixels
        unless ``hot_pixels=0``).

    Examples
    --------
    >>> Noise(read_noise=2.0).gain
    1.0
    """

    gain: float = 1.0
    read_noise: float = 0.0
    pedestal: float = 0.0
    saturation: float | None = None
    hot_pixels: int | None = None
    poisson: bool = True

    def __post_init__(self) -> None:
        if not (self.gain > 0) or not (self.read_noise >= 0):
            raise OptionError("noise gain must be > 0 and read_noise >= 0")
        if self.saturation is not None and not (self.saturation > 0):
            raise OptionError(f"saturation must be > 0, got {self.saturation}")
        if self.hot_pixels is not None and self.hot_pixels < 0:
            raise OptionError(f"hot_pixels must be >= 0, got {self.hot_pixels}")


@dataclass(frozen=True)
class DetectorSetup:
    """Flat detector normal to the beam: enough geometry to turn d-spacings into radii.

    Parameters
    ----------
    distance_mm : float or None
        Sample-detector distance; ``None`` picks one from the frame size (see each simulator).
    pixel_mm : float
        Pixel size.
    wavelength_A : float
        X-ray wavelength (0.2066 A is 60 keV).
    beam_centre : tuple of float or None
        ``(x, y)`` of the direct beam in pixels, may lie outside the frame; ``None``: the frame
        centre.

    Examples
    --------
    >>> round(float(DetectorSetup(distance_mm=500.0).radius(2.0)), 2)
    259.29
    """

    distance_mm: float | None = None
    pixel_mm: float = 0.2
    wavelength_A: float = 0.2066
    beam_centre: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.distance_mm is not None and not (self.distance_mm > 0):
            raise OptionError(f"distance_mm must be > 0, got {self.distance_mm}")
        if not (self.pixel_mm > 0) or not (self.wavelength_A > 0):
            raise OptionError("pixel_mm and wavelength_A must be > 0")

    def radius(self, d_spacing):
        """Radius in pixels of the ring of ``d_spacing`` (angstrom), exact Bragg geometry."""
        d = np.asarray(d_spacing, dtype=float)
        two_theta = 2.0 * np.arcsin(self.wavelength_A / (2.0 * d))
        return self.distance_mm * np.tan(two_theta) / self.pixel_mm

    def d_spacing(self, radius):
        """Inverse of :meth:`radius`: d-spacing (angstrom) of a ring of ``radius`` pixels."""
        two_theta = np.arctan(np.asarray(radius, dtype=float) * self.pixel_mm / self.distance_mm)
        return self.wavelength_A / (2.0 * np.sin(two_theta / 2.0))

    def two_theta(self, radius):
        """Scattering angle in degrees of a ring of ``radius`` pixels."""
        r = np.asarray(radius, dtype=float)
        return np.degrees(np.arctan(r * self.pixel_mm / self.distance_mm))


# ----------------------------------------------------------------------------- profile


def _gl_tables(nmax: int = 8) -> tuple[np.ndarray, np.ndarray]:
    nodes = np.zeros((nmax + 1, nmax))
    weights = np.zeros((nmax + 1, nmax))
    for n in range(1, nmax + 1):
        t, w = np.polynomial.legendre.leggauss(n)
        nodes[n, :n] = t / 2.0
        weights[n, :n] = w / 2.0
    return nodes, weights


_GL_NODES, _GL_WEIGHTS = _gl_tables()
_N_TAIL = 3


def _lorentz_integral(tm):
    """Integral of the tapered Lorentzian over the plane, per unit ``gamma_x * gamma_y``.

    With ``t = rho**2`` and ``s = t / tm``: ``pi * int_0^tm (1 - s**3)**4 / (1 + t) dt``, expanded
    binomially into ``int_0^T t**m / (1 + t) dt = sum_j (-1)**j T**(m-j) / (m-j) + (-1)**m
    log(1 + T)``.
    """
    tm = np.asarray(tm, dtype=float)
    total = np.zeros_like(tm)
    for k, binom in enumerate((1, 4, 6, 4, 1)):
        m = 3 * k
        jm = (-1.0) ** m * np.log1p(tm)
        for j in range(m):
            jm = jm + (-1.0) ** j * tm ** (m - j) / (m - j)
        total = total + binom * (-1.0) ** k * jm / tm**m
    return np.pi * total


def _core_nodes(sigma_min):
    # Fewest Gauss-Legendre nodes that integrate a Gaussian of this sigma over the pixel holding
    # its maximum to 1e-7 of the peak pixel (measured; see the module notes).
    s = np.asarray(sigma_min, dtype=float)
    return np.select([s < 0.4, s < 0.55, s < 0.95], [8, 6, 5], 4).astype(np.int64)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=True)
def _render_kernel(out, image, cx, cy, amp, su, sv, eta, ang, tm, gnorm, lnorm, ncore,
                   x0, x1, y0, y1, nodes, weights, ntail, m0, mx, my):  # pragma: no cover - jitted
    g_cut2 = 36.0  # GAUSS_CUTOFF ** 2
    hw = 1.1774100225154747  # sqrt(2 ln 2)
    for k in range(cx.shape[0]):
        img = image[k]
        c = math.cos(ang[k])
        s = math.sin(ang[k])
        agu = 1.0 / (su[k] * su[k])
        agv = 1.0 / (sv[k] * sv[k])
        alu = agu / (hw * hw)
        alv = agv / (hw * hw)
        e = eta[k]
        wg = (1.0 - e) * gnorm[k]
        wl = e * lnorm[k]
        tmk = tm[k]
        gmin = min(su[k], sv[k])
        lmin = gmin * hw
        nc = ncore[k]
        s0 = 0.0
        sx = 0.0
        sy = 0.0
        for iy in range(y0[k], y1[k] + 1):
            dy = iy - cy[k]
            for ix in range(x0[k], x1[k] + 1):
                dx = ix - cx[k]
                u = dx * c + dy * s
                v = -dx * s + dy * c
                # Few nodes where both components are smooth on the pixel scale.
                n = nc
                rg = math.sqrt(u * u * agu + v * v * agv) - 0.7072 / gmin
                if rg > 3.5 and nc > 4:
                    n = nc - 1
                if rg > 5.0:
                    if e == 0.0:
                        n = ntail
                    else:
                        rl = math.sqrt(u * u * alu + v * v * alv) - 0.7072 / lmin
                        if rl * lmin > 2.5:
                            n = ntail
                acc = 0.0
                accx = 0.0
                accy = 0.0
                for j in range(n):
                    ty = dy + nodes[n, j]
                    wy = weights[n, j]
                    for i in range(n):
                        tx = dx + nodes[n, i]
                        u = tx * c + ty * s
                        v = -tx * s + ty * c
                        uu = u * u
                        vv = v * v
                        f = 0.0
                        qg = uu * agu + vv * agv
                        if qg < g_cut2:
                            f = wg * math.exp(-0.5 * qg)
                        if wl > 0.0:
                            ql = uu * alu + vv * alv
                            if ql < tmk:
                                sl = ql / tmk
                                tap = 1.0 - sl * sl * sl
                                tap *= tap
                                f += wl * tap * tap / (1.0 + ql)
                        f *= wy * weights[n, i]
                        acc += f
                        accx += f * tx
                        accy += f * ty
                out[img, iy, ix] += amp[k] * acc
                s0 += acc
                sx += accx
                sy += accy
        m0[k] = s0
        mx[k] = sx
        my[k] = sy


class _Components(NamedTuple):
    """Flat arrays of rendered components (a split peak has two)."""

    owner: np.ndarray  # row of the peak table each component belongs to
    image: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    amp: np.ndarray
    su: np.ndarray
    sv: np.ndarray
    eta: np.ndarray
    ang: np.ndarray


def _profile_constants(su, sv, eta, ang, max_radius):
    """Support size, normalizations and window half extents of each component."""
    gu = su * HWHM_PER_SIGMA
    gv = sv * HWHM_PER_SIGMA
    rho_max = np.minimum(LORENTZ_CUTOFF, max_radius / np.maximum(gu, gv))
    tm = rho_max**2
    gnorm = 1.0 / (2.0 * np.pi * su * sv * (1.0 - np.exp(-0.5 * GAUSS_CUTOFF**2)))
    lnorm = 1.0 / (gu * gv * _lorentz_integral(tm))
    c, s = np.cos(ang), np.sin(ang)
    # Axis-aligned half extents of the support ellipses (Gaussian always, Lorentzian if eta > 0).
    au, av = GAUSS_CUTOFF * su, GAUSS_CUTOFF * sv
    hx = np.hypot(au * c, av * s)
    hy = np.hypot(au * s, av * c)
    lu, lv = rho_max * gu, rho_max * gv
    has_l = eta > 0
    hx = np.where(has_l, np.maximum(hx, np.hypot(lu * c, lv * s)), hx)
    hy = np.where(has_l, np.maximum(hy, np.hypot(lu * s, lv * c)), hy)
    return tm, gnorm, lnorm, hx, hy


def profile_peak(sigma_x, sigma_y, eta, *, max_radius: float = MAX_RADIUS):
    """Height and support half extents of unit-integral pseudo-Voigt profiles.

    Parameters
    ----------
    sigma_x, sigma_y, eta : array_like
        Gaussian sigmas along the principal axes (pixels) and Lorentzian fraction.
    max_radius : float
        Largest support half extent in pixels (see the module notes).

    Returns
    -------
    height : ndarray
        Maximum of the continuous profile per unit integrated count (counts per pixel).
    half_extent : ndarray
        Largest half extent of the support over all rotations, pixels.

    Examples
    --------
    >>> h, r = profile_peak(1.0, 1.0, 0.0)
    >>> round(float(h), 4), float(r)
    (0.1592, 6.0)
    """
    su = np.asarray(sigma_x, dtype=float)
    sv = np.asarray(sigma_y, dtype=float)
    e = np.asarray(eta, dtype=float)
    tm, gnorm, lnorm, _, _ = _profile_constants(su, sv, e, np.zeros_like(su * e), max_radius)
    height = (1 - e) * gnorm + e * lnorm
    radius = np.maximum(GAUSS_CUTOFF * np.maximum(su, sv),
                        np.where(e > 0, np.sqrt(tm) * HWHM_PER_SIGMA * np.maximum(su, sv), 0))
    return height, radius


def _expand(table: pd.DataFrame, image_index: np.ndarray) -> _Components:
    """Peak rows -> components; a split peak becomes two sub-grains around its centre of mass."""
    n = len(table)
    # x_centre / y_centre (profile centre) differ from x, y only for peaks clipped by the frame.
    x = table["x_centre" if "x_centre" in table.columns else "x"].to_numpy(float)
    y = table["y_centre" if "y_centre" in table.columns else "y"].to_numpy(float)
    a = table["amplitude"].to_numpy(float)
    get = lambda name, default: (table[name].to_numpy(float) if name in table.columns  # noqa: E731
                                 else np.full(n, default, float))
    su, sv = get("sigma_x", 1.0), get("sigma_y", 1.0)
    eta, ang = get("eta", 0.0), get("angle", 0.0)
    q = get("split_ratio", 0.0)
    ddx, ddy = get("split_dx", 0.0), get("split_dy", 0.0)
    split = q > 0
    rows = np.arange(n)
    # Sub-grain 1 carries A / (1 + q) at c - q/(1+q) d, sub-grain 2 carries q A / (1 + q) at
    # c + 1/(1+q) d: their intensity-weighted centre is exactly c.
    f1 = 1.0 / (1.0 + q)
    c1x = np.where(split, x - q * f1 * ddx, x)
    c1y = np.where(split, y - q * f1 * ddy, y)
    a1 = np.where(split, a * f1, a)
    s = rows[split]
    return _Components(
        owner=np.concatenate([rows, s]),
        image=np.concatenate([image_index, image_index[s]]).astype(np.int64),
        cx=np.concatenate([c1x, x[s] + f1[s] * ddx[s]]),
        cy=np.concatenate([c1y, y[s] + f1[s] * ddy[s]]),
        amp=np.concatenate([a1, a[s] * q[s] * f1[s]]),
        su=np.concatenate([su, su[s]]),
        sv=np.concatenate([sv, sv[s]]),
        eta=np.concatenate([eta, eta[s]]),
        ang=np.concatenate([ang, ang[s]]),
    )


def _check_shapes(comp: _Components) -> None:
    if not (np.all(np.isfinite(comp.cx)) and np.all(np.isfinite(comp.cy))
            and np.all(np.isfinite(comp.amp))):
        raise OptionError("peak table has non-finite x, y or amplitude")
    if comp.su.size and (min(comp.su.min(), comp.sv.min()) < MIN_SIGMA):
        raise OptionError(f"peak sigma below {MIN_SIGMA} px cannot be pixel-integrated accurately")
    if comp.su.size and max(comp.su.max(), comp.sv.max()) * GAUSS_CUTOFF > 4 * MAX_RADIUS:
        raise OptionError(f"peak sigma above {4 * MAX_RADIUS / GAUSS_CUTOFF:.0f} px is too wide")
    if comp.eta.size and not (np.all(comp.eta >= 0) and np.all(comp.eta <= 1)):
        raise OptionError("eta must lie in [0, 1]")


def _render_components(out: np.ndarray, comp: _Components, max_radius: float = MAX_RADIUS):
    """Add components into ``out`` (K, H, W) float64; return (integral, x_com, y_com) per
    component of the part that landed inside its image (continuous, from the quadrature)."""
    _check_shapes(comp)
    _, h, w = out.shape
    tm, gnorm, lnorm, hx, hy = _profile_constants(comp.su, comp.sv, comp.eta, comp.ang,
                                                  max_radius)
    x0 = np.clip(np.ceil(comp.cx - hx - 0.5), 0, w).astype(np.int64)
    x1 = np.clip(np.floor(comp.cx + hx + 0.5), -1, w - 1).astype(np.int64)
    y0 = np.clip(np.ceil(comp.cy - hy - 0.5), 0, h).astype(np.int64)
    y1 = np.clip(np.floor(comp.cy + hy + 0.5), -1, h - 1).astype(np.int64)
    ncore = _core_nodes(np.minimum(comp.su, comp.sv))
    k = comp.cx.size
    m0, mx, my = np.zeros(k), np.zeros(k), np.zeros(k)
    f = lambda a: np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
    _render_kernel(out, comp.image, f(comp.cx), f(comp.cy), f(comp.amp), f(comp.su),
                   f(comp.sv), f(comp.eta), f(comp.ang), f(tm), f(gnorm), f(lnorm), ncore,
                   x0, x1, y0, y1, _GL_NODES, _GL_WEIGHTS, _N_TAIL, m0, mx, my)
    return m0, comp.cx + np.divide(mx, m0, out=np.zeros(k), where=m0 > 0), \
        comp.cy + np.divide(my, m0, out=np.zeros(k), where=m0 > 0)


def _owner_moments(comp: _Components, n: int, m0, cxm, cym):
    """Per peak: fraction of the integral inside the image and its centre of mass."""
    frac_amp = comp.amp * m0
    total = np.bincount(comp.owner, weights=comp.amp, minlength=n)
    inside = np.bincount(comp.owner, weights=frac_amp, minlength=n)
    sx = np.bincount(comp.owner, weights=frac_amp * cxm, minlength=n)
    sy = np.bincount(comp.owner, weights=frac_amp * cym, minlength=n)
    safe = np.where(inside > 0, inside, 1.0)
    frac = np.divide(inside, total, out=np.ones(n), where=total > 0)
    return frac, sx / safe, sy / safe


def render_peaks(shape: tuple[int, int], peaks: pd.DataFrame, *,
                 max_radius: float = MAX_RADIUS) -> np.ndarray:
    """Noise-free, pixel-integrated pseudo-Voigt peaks on a zero frame.

    Parameters
    ----------
    shape : (int, int)
        Frame height and width.
    peaks : DataFrame
        ``x, y, amplitude`` (integrated counts) and optionally ``sigma_x, sigma_y`` (default 1),
        ``eta`` (0), ``angle`` (0, radians), ``split_dx, split_dy, split_ratio`` (a truth table of
        this module can be passed as it is).
    max_radius : float
        Largest half extent of a peak's support, pixels.

    Returns
    -------
    ndarray (H, W) float64
        Counts per pixel; ``sum`` equals the summed amplitudes of the peaks inside the frame.

    Examples
    --------
    >>> import pandas as pd
    >>> img = render_peaks((21, 21), pd.DataFrame({"x": [10.3], "y": [9.8], "amplitude": [1000.0]}))
    >>> round(float(img.sum()), 3)
    1000.0
    """
    h, w = _check_frame_shape(shape)
    missing = [c for c in ("x", "y", "amplitude") if c not in peaks.columns]
    if missing:
        raise OptionError(f"peak table lacks column(s) {', '.join(missing)}")
    out = np.zeros((1, h, w))
    comp = _expand(peaks, np.zeros(len(peaks), np.int64))
    _render_components(out, comp, max_radius)
    return out[0]


# ----------------------------------------------------------------------------- kinds and shapes


def _check_frame_shape(shape) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise OptionError(f"shape must be (height, width), got {shape!r}") from None
    if h < 8 or w < 8:
        raise OptionError(f"frame shape must be at least 8 x 8 pixels, got {h} x {w}")
    return h, w


def _kind_list(rng: np.random.Generator, n: int, messy: float) -> np.ndarray:
    """``n`` kinds with round(messy * n) messy ones spread evenly over MESSY_KINDS."""
    n_messy = int(round(messy * n))
    per, extra = divmod(n_messy, len(MESSY_KINDS))
    counts = np.full(len(MESSY_KINDS), per)
    counts[rng.choice(len(MESSY_KINDS), extra, replace=False)] += 1
    kinds = ["sharp"] * (n - n_messy)
    for kind, c in zip(MESSY_KINDS, counts, strict=True):
        kinds += [kind] * int(c)
    return rng.permutation(np.array(kinds, dtype=object))


def _draw_shapes(rng: np.random.Generator, kinds: np.ndarray) -> pd.DataFrame:
    """Shape parameters per kind (see the module notes for the ranges)."""
    n = len(kinds)
    u = lambda lo, hi: rng.uniform(lo, hi, n)  # noqa: E731
    sx, sy = u(0.6, 1.2), u(0.6, 1.2)
    eta = u(0.0, 0.3)
    angle = u(0.0, np.pi)
    split_ratio = np.zeros(n)
    split_dx = np.zeros(n)
    split_dy = np.zeros(n)

    m = kinds == "broad"
    major = rng.uniform(1.5, 3.0, n)
    ratio = rng.uniform(1.2, 2.0, n)
    sx[m], sy[m], eta[m] = major[m], np.maximum(major[m] / ratio[m], 1.0), u(0.3, 0.8)[m]

    m = kinds == "streak"
    short = rng.uniform(0.6, 1.2, n)
    sx[m], sy[m], eta[m] = short[m] * u(3.0, 6.0)[m], short[m], u(0.1, 0.5)[m]

    m = kinds == "split"
    sep, phi = u(1.0, 2.0), u(0.0, 2 * np.pi)
    split_ratio[m] = u(0.3, 0.7)[m]
    split_dx[m], split_dy[m] = (sep * np.cos(phi))[m], (sep * np.sin(phi))[m]
    eta[m] = u(0.0, 0.4)[m]

    m = kinds == "overlapping"
    eta[m] = u(0.0, 0.4)[m]

    # Drawn only when present: a set without these kinds takes the random stream it always did.
    m = kinds == "undersampled"
    if m.any():
        k = int(m.sum())
        sx[m], sy[m], eta[m] = rng.uniform(0.25, 0.6, k), rng.uniform(0.25, 0.6, k), \
            rng.uniform(0.0, 0.3, k)
    m = kinds == "wide"
    if m.any():
        k = int(m.sum())
        major = rng.uniform(3.0, 4.5, k)
        sx[m], sy[m], eta[m] = major, major / rng.uniform(1.0, 1.5, k), rng.uniform(0.0, 0.8, k)
    m = kinds == "lorentzian"
    if m.any():
        k = int(m.sum())
        major = rng.uniform(0.6, 2.0, k)
        sx[m], sy[m], eta[m] = major, major / rng.uniform(1.0, 1.5, k), rng.uniform(0.8, 1.0, k)
    return pd.DataFrame({
        "kind": kinds.astype(object), "sigma_x": sx, "sigma_y": sy, "eta": eta, "angle": angle,
        "split_dx": split_dx, "split_dy": split_dy, "split_ratio": split_ratio,
    })


def _draw_amplitudes(rng, shapes: pd.DataFrame, noise_sigma: np.ndarray,
                     amplitude_range: tuple[float, float], *, weak_snr=(4.0, 8.0),
                     min_snr: float = 15.0) -> np.ndarray:
    """Integrated counts: log-uniform in ``amplitude_range`` (raised to ``min_snr`` times the
    local noise in peak height); weak peaks get a height of ``weak_snr`` times the noise."""
    lo, hi = amplitude_range
    if not (0 < lo <= hi):
        raise OptionError(f"amplitude_range must be 0 < low <= high, got {amplitude_range}")
    n = len(shapes)
    height1, _ = profile_peak(shapes["sigma_x"], shapes["sigma_y"], shapes["eta"])
    # A split peak's height is about that of its stronger sub-grain, 1 / (1 + q) of the total.
    per_count = height1 / (1.0 + shapes["split_ratio"].to_numpy())
    amp = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    amp = np.maximum(amp, min_snr * noise_sigma / per_count)
    weak = (shapes["kind"] == "weak").to_numpy()
    target = rng.uniform(*weak_snr, n) * noise_sigma / per_count
    return np.where(weak, target, amp)


# ----------------------------------------------------------------------------- background/noise


def background_image(shape: tuple[int, int], background: Background, *,
                     beam_centre: tuple[float, float], direction: float) -> np.ndarray:
    """The smooth background (float64 counts per pixel) of :class:`Background`.

    Examples
    --------
    >>> bg = background_image((8, 8), Background(slope=0.0, hump=0.0), beam_centre=(3.5, 3.5),
    ...                       direction=0.0)
    >>> float(bg.min()), float(bg.max())
    (100.0, 100.0)
    """
    h, w = _check_frame_shape(shape)
    # Separable pieces combined in place: a 2048 x 2048 frame costs two passes, not ten.
    span = abs(np.cos(direction)) + abs(np.sin(direction))
    k = background.level * background.slope / span
    ramp_x = k * np.cos(direction) * (np.arange(w) - (w - 1) / 2.0) / max(w - 1, 1)
    ramp_y = k * np.sin(direction) * (np.arange(h) - (h - 1) / 2.0) / max(h - 1, 1)
    bg = np.add.outer(ramp_y + background.level, ramp_x)
    if background.hump > 0:
        wid = background.hump_width * math.hypot(h, w)
        bx, by = beam_centre
        gx = np.exp(-((np.arange(w) - bx) ** 2) / (2 * wid**2))
        gy = background.hump * background.level * np.exp(-((np.arange(h) - by) ** 2)
                                                         / (2 * wid**2))
        bg += np.multiply.outer(gy, gx)
    return bg


def _n_hot(noise: Noise, h: int, w: int) -> int:
    return max(2, round(h * w * 1e-5)) if noise.hot_pixels is None else int(noise.hot_pixels)


def _detector(rng: np.random.Generator, expected: np.ndarray, noise: Noise,
              dtype: str = "float32") -> np.ndarray:
    """Counting noise and detector response on an expectation image, as ``dtype``."""
    counts = rng.poisson(expected) if noise.poisson else expected
    plain = (noise.gain == 1.0 and noise.read_noise == 0 and not noise.pedestal
             and noise.saturation is None)
    if plain and noise.poisson:
        # Integer counts convert exactly (float32 holds integers up to 2**24).
        return counts.astype(np.float32 if dtype == "float32" else np.uint32)
    counts = counts.astype(np.float64)
    if noise.gain != 1.0:
        counts *= noise.gain
    if noise.read_noise > 0:
        counts += rng.normal(0.0, noise.read_noise, counts.shape)
    if noise.pedestal:
        counts += noise.pedestal
    if noise.saturation is not None:
        np.minimum(counts, noise.saturation, out=counts)
    if dtype == "float32":
        return counts.astype(np.float32)
    return np.clip(np.rint(counts), 0, np.iinfo(np.uint32).max).astype(np.uint32)


# ----------------------------------------------------------------------------- series


def _check_series_args(frames, shape, peaks, messy, dtype) -> tuple[int, int]:
    if int(frames) != frames or frames < 1:
        raise OptionError(f"--frames must be a positive integer, got {frames}")
    if int(peaks) != peaks or peaks < 0:
        raise OptionError(f"--peaks must be a non-negative integer, got {peaks}")
    if not (0.0 <= messy <= 1.0):
        raise OptionError(f"--messy must be in [0, 1], got {messy}")
    if dtype not in ("float32", "uint32"):
        raise OptionError(f"dtype must be 'float32' or 'uint32', got {dtype!r}")
    return _check_frame_shape(shape)


def _partners(rng, kinds: np.ndarray) -> np.ndarray:
    """Pair up the overlapping peaks: partner index or -1 (an odd one out becomes sharp)."""
    partner = np.full(len(kinds), -1)
    idx = np.flatnonzero(kinds == "overlapping")
    if len(idx) % 2:
        kinds[idx[-1]] = "sharp"
        idx = idx[:-1]
    for a, b in zip(idx[0::2], idx[1::2], strict=True):
        partner[a], partner[b] = b, a
    return partner


def _place(rng, n: int, shape, extent: np.ndarray, partner: np.ndarray, *, min_distance: float,
           margin: np.ndarray, propose, overlap_range=(3.0, 6.0)) -> tuple[np.ndarray, np.ndarray]:
    """Positions keeping well-separated peaks apart and overlapping pairs 3-6 px apart.

    ``propose(i, k)`` returns ``k`` candidate (x, y) for peak ``i``.  Peak ``i`` and ``j`` must
    be at least ``min_distance + 2 (extent_i + extent_j)`` apart unless they are partners.
    """
    h, w = shape
    x = np.full(n, np.nan)
    y = np.full(n, np.nan)
    placed = np.zeros(n, bool)
    # Placed peaks in placement order (contiguous, so each check is one small broadcast).
    px, py, pe, pid = np.empty(n), np.empty(n), np.empty(n), np.empty(n, np.int64)
    count = 0

    def fits(i, cx, cy, ignore=-1):
        ok = (cx >= margin[i]) & (cx <= w - 1 - margin[i]) & (cy >= margin[i]) \
            & (cy <= h - 1 - margin[i])
        if count and ok.any():
            d = np.hypot(cx[:, None] - px[:count], cy[:, None] - py[:count])
            need = min_distance + 2.0 * (extent[i] + pe[:count])
            ok &= np.all((d >= need) | (pid[:count] == ignore), axis=1)
        return ok

    def put(i, cx, cy):
        nonlocal count
        x[i], y[i], placed[i] = cx, cy, True
        px[count], py[count], pe[count], pid[count] = cx, cy, extent[i], i
        count += 1

    # Largest first, so the big ones find room.
    for i in np.argsort(-extent, kind="stable"):
        if placed[i]:
            continue
        j = partner[i]
        for _ in range(200):
            cx, cy = propose(i, 16)
            ok = fits(i, cx, cy)
            if j < 0:
                if ok.any():
                    k = np.flatnonzero(ok)[0]
                    put(i, cx[k], cy[k])
                    break
                continue
            # Overlapping pair: the partner 3-6 px away from each acceptable first position.
            for k in np.flatnonzero(ok)[:8]:
                dist = rng.uniform(*overlap_range)
                phi = rng.uniform(0, 2 * np.pi)
                qx = np.array([cx[k] + dist * np.cos(phi)])
                qy = np.array([cy[k] + dist * np.sin(phi)])
                if fits(j, qx, qy)[0]:
                    put(i, cx[k], cy[k])
                    put(j, qx[0], qy[0])
                    break
            if placed[i]:
                break
        if not placed[i]:
            raise OptionError(
                f"cannot place {n} well-separated peaks in a {h} x {w} frame; "
                "use fewer peaks, a larger frame or a smaller min_distance"
            )
    return x, y


def _visibility(rng, n: int, frames: int, appear_fraction: float) -> np.ndarray:
    """(n, frames) bool: some particles start late, end early, or vanish 1-3 frames."""
    if not (0.0 <= appear_fraction <= 1.0):
        raise OptionError(f"appear_fraction must be in [0, 1], got {appear_fraction}")
    vis = np.ones((n, frames), bool)
    if frames < 2:
        return vis
    chosen = rng.random(n) < appear_fraction
    mode = rng.integers(0, 3, n)
    for i in np.flatnonzero(chosen):
        if mode[i] == 0:
            vis[i, : rng.integers(1, frames)] = False  # starts late
        elif mode[i] == 1:
            vis[i, rng.integers(1, frames):] = False  # ends early
        else:
            gap = int(rng.integers(1, 4))
            if frames < gap + 2:
                gap = max(frames - 2, 1)
            start = int(rng.integers(1, max(frames - gap, 2)))
            vis[i, start: start + gap] = False  # vanishes, then returns
            vis[i, 0] = True
    return vis


def _default_distance(setup: DetectorSetup, shape, beam_centre) -> DetectorSetup:
    """Distance putting the farthest frame corner at 2 theta = 20 degrees."""
    if setup.distance_mm is not None:
        return DetectorSetup(setup.distance_mm, setup.pixel_mm, setup.wavelength_A, beam_centre)
    h, w = shape
    bx, by = beam_centre
    far = max(math.hypot(cx - bx, cy - by) for cx in (0, w - 1) for cy in (0, h - 1))
    dist = far * setup.pixel_mm / math.tan(math.radians(20.0))
    return DetectorSetup(dist, setup.pixel_mm, setup.wavelength_A, beam_centre)


def _positions(setup: DetectorSetup, x0, y0, strain):
    """Radial positions at the given strains (x0, y0: unstrained; strain broadcastable)."""
    bx, by = setup.beam_centre
    r0 = np.hypot(x0 - bx, y0 - by)
    d0 = setup.d_spacing(r0)
    r = setup.radius(d0[..., None] * (1.0 + strain)) if np.ndim(strain) > np.ndim(r0) \
        else setup.radius(d0 * (1.0 + strain))
    scale = np.divide(r, r0[..., None] if np.ndim(r) > np.ndim(r0) else r0)
    ux = (x0 - bx)[..., None] if np.ndim(r) > np.ndim(r0) else x0 - bx
    uy = (y0 - by)[..., None] if np.ndim(r) > np.ndim(r0) else y0 - by
    return bx + ux * scale, by + uy * scale, r, d0


def _build_truth(particles: pd.DataFrame, strain: np.ndarray, visible: np.ndarray,
                 amp_factor: np.ndarray, setup: DetectorSetup, bg: np.ndarray,
                 extra: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Long truth table, one row per particle per frame (invisible rows included)."""
    p, n = strain.shape
    x, y, r, d0 = _positions(setup, particles["x0"].to_numpy(), particles["y0"].to_numpy(),
                             strain)
    rep = lambda a: np.repeat(np.asarray(a), n)  # noqa: E731
    amp = particles["amplitude"].to_numpy()[:, None] * amp_factor
    h, w = bg.shape
    iy = np.clip(np.rint(y), 0, h - 1).astype(int)
    ix = np.clip(np.rint(x), 0, w - 1).astype(int)
    height1, _ = profile_peak(particles["sigma_x"], particles["sigma_y"], particles["eta"])
    height1 = height1 / (1.0 + particles["split_ratio"].to_numpy())
    table = pd.DataFrame({
        "frame": np.tile(np.arange(n), p),
        "particle": rep(particles.index.to_numpy()),
        "x": x.ravel(), "y": y.ravel(),
        "x_centre": x.ravel(), "y_centre": y.ravel(),
        "x0": rep(particles["x0"]), "y0": rep(particles["y0"]),
        "amplitude": amp.ravel(),
        "height": (amp * height1[:, None]).ravel(),
        "background": bg[iy, ix].ravel(),
        "kind": rep(particles["kind"].astype(str)),
        "sigma_x": rep(particles["sigma_x"]), "sigma_y": rep(particles["sigma_y"]),
        "eta": rep(particles["eta"]), "angle": rep(particles["angle"]),
        "split_dx": rep(particles["split_dx"]), "split_dy": rep(particles["split_dy"]),
        "split_ratio": rep(particles["split_ratio"]),
        "partner": rep(particles["partner"]),
        "strain": strain.ravel(),
        "r": r.ravel(),
        "two_theta": setup.two_theta(r).ravel(),
        "d_spacing": (d0[:, None] * (1.0 + strain)).ravel(),
        "visible": visible.ravel(),
        "clipped": np.zeros(p * n, bool),
    })
    for name, values in (extra or {}).items():
        table[name] = np.asarray(values).ravel() if np.ndim(values) == 2 else rep(values)
    return table.sort_values(["frame", "particle"], kind="stable").reset_index(drop=True)


def _render_series(rng, truth: pd.DataFrame, shape, bg: np.ndarray, noise: Noise,
                   dtype: str) -> tuple[np.ndarray, pd.DataFrame, list]:
    """Frames from a truth table; fills ``clipped`` (and x, y of clipped peaks)."""
    h, w = shape
    n = int(truth["frame"].max()) + 1 if len(truth) else 1
    n_hot = _n_hot(noise, h, w)
    hot_y, hot_x = rng.integers(0, h, n_hot), rng.integers(0, w, n_hot)
    hot_level = bg[hot_y, hot_x] * np.exp(rng.uniform(np.log(30), np.log(300), n_hot))
    out = np.empty((n, h, w), np.float32 if dtype == "float32" else np.uint32)
    frame_buf = np.empty((1, h, w))
    x = truth["x"].to_numpy().copy()
    y = truth["y"].to_numpy().copy()
    clipped = np.zeros(len(truth), bool)
    for f in range(n):
        rows = np.flatnonzero((truth["frame"].to_numpy() == f) & truth["visible"].to_numpy())
        frame_buf[0] = bg
        sub = truth.iloc[rows]
        comp = _expand(sub, np.zeros(len(sub), np.int64))
        m0, cxm, cym = _render_components(frame_buf, comp)
        frac, comx, comy = _owner_moments(comp, len(sub), m0, cxm, cym)
        cl = frac < 1.0 - 1e-6
        clipped[rows[cl]] = True
        x[rows[cl]], y[rows[cl]] = comx[cl], comy[cl]
        expected = frame_buf[0]
        expected[hot_y, hot_x] += hot_level
        out[f] = _detector(rng, expected, noise, dtype)
    truth = truth.assign(x=x, y=y, clipped=clipped)
    return out, truth, [[int(a), int(b)] for a, b in zip(hot_y, hot_x, strict=True)]


def _plan_particles(rng, n: int, shape, messy: float, *, amplitude_range, bg: np.ndarray,
                    min_distance: float, max_strain: float, setup: DetectorSetup,
                    propose=None, streak_tangential: bool = True) -> pd.DataFrame:
    """Static per-particle properties: kind, shape, amplitude, unstrained position, partner."""
    h, w = shape
    kinds = _kind_list(rng, n, messy)
    partner = _partners(rng, kinds)
    shapes = _draw_shapes(rng, kinds)
    _, half = profile_peak(shapes["sigma_x"], shapes["sigma_y"], shapes["eta"])
    sep = np.hypot(shapes["split_dx"], shapes["split_dy"]).to_numpy()
    extent = np.maximum(shapes["sigma_x"], shapes["sigma_y"]).to_numpy() + sep
    bx, by = setup.beam_centre
    far = max(math.hypot(cx - bx, cy - by) for cx in (0, w - 1) for cy in (0, h - 1))
    # Margin: the whole support plus the largest radial drift stays inside the frame, where the
    # frame is large enough; in small frames only the core (4 sigma) is kept inside and clipped
    # tails are flagged (truth x, y then the centre of mass of the part inside).
    drift = max_strain * 1.1 * far + 1.0
    full = np.ceil(half + sep + drift)
    core = np.ceil(4.0 * extent + drift)
    margin = np.where(full <= min(h, w) / 4.0, full, core)
    r_min = 0.05 * min(h, w)
    if propose is None:
        def propose(i, k):
            px = rng.uniform(0, w - 1, k)
            py = rng.uniform(0, h - 1, k)
            keep = np.hypot(px - bx, py - by) >= r_min  # no Bragg peaks at the direct beam
            return np.where(keep, px, -1e9), np.where(keep, py, -1e9)
    x0, y0 = _place(rng, n, (h, w), extent, partner, min_distance=min_distance, margin=margin,
                    propose=propose)
    if streak_tangential:
        # Mosaic spread smears a spot along its Debye-Scherrer ring: streaks run tangentially.
        st = (shapes["kind"] == "streak").to_numpy()
        tang = np.arctan2(y0 - by, x0 - bx) + np.pi / 2 + rng.normal(0, np.radians(8), n)
        shapes.loc[st, "angle"] = np.mod(tang[st], np.pi)
    iy = np.clip(np.rint(y0), 0, h - 1).astype(int)
    ix = np.clip(np.rint(x0), 0, w - 1).astype(int)
    noise_sigma = np.sqrt(bg[iy, ix])
    shapes["amplitude"] = _draw_amplitudes(rng, shapes, noise_sigma, amplitude_range)
    shapes["x0"], shapes["y0"], shapes["partner"] = x0, y0, partner
    shapes.index.name = "particle"
    return shapes


def simulate_series(
    frames: int = 5,
    shape: tuple[int, int] = (512, 512),
    peaks: int = 100,
    messy: float = 0.3,
    seed: int = 0,
    *,
    background: Background | float = Background(),
    noise: Noise = Noise(),
    setup: DetectorSetup = DetectorSetup(),
    beam_centre: tuple[float, float] | None = None,
    strain_amplitude: tuple[float, float] = (1e-3, 5e-3),
    contracting_fraction: float = 0.3,
    period: float | None = None,
    lag_fraction: float = 0.3,
    max_lag: float = 0.15,
    appear_fraction: float = 0.2,
    intensity_variation: float = 0.1,
    amplitude_range: tuple[float, float] = (2e3, 2e5),
    min_distance: float = 12.0,
    dtype: str = "float32",
) -> tuple[np.ndarray, pd.DataFrame]:
    """A series of frames of drifting Bragg peaks with the exact truth of every peak.

    Each particle's strain follows a smooth charge/discharge-like cycle,
    ``strain = A * (1 - cos(2 pi (frame - lag) / period)) / 2`` with its own amplitude ``A``
    (``|A|`` uniform in ``strain_amplitude``, negative for ``contracting_fraction`` of the
    particles) and lag (``lag_fraction`` of them lag by up to ``max_lag * period`` frames); its
    peak moves radially from the beam centre by the exact Bragg relation (see the module notes).

    Parameters
    ----------
    frames, shape, peaks, messy, seed
        Number of frames, (height, width), number of particles (peaks per frame before
        appear/disappear), fraction of non-sharp peaks, random seed.
    background : Background or float
        Smooth background; a number is the mean level in counts per pixel.
    noise : Noise
        Counting noise, hot pixels and detector response.
    setup : DetectorSetup
        Detector geometry; ``distance_mm=None`` puts the farthest frame corner at 2 theta = 20
        degrees.
    beam_centre : (float, float) or None
        ``(x, y)`` of the beam in pixels (may be off the frame); overrides ``setup``'s; ``None``:
        ``setup.beam_centre`` or the frame centre.
    strain_amplitude : (float, float)
        Range of ``|A|``.
    contracting_fraction : float
        Fraction of particles whose strain is negative (peaks move outwards).
    period : float or None
        Cycle length in frames; ``None``: ``frames`` (one charge and discharge).
    lag_fraction, max_lag : float
        Fraction of lagging particles and their largest lag as a fraction of ``period``.
    appear_fraction : float
        Fraction of particles that start late, end early or vanish for 1-3 frames.
    intensity_variation : float
        Relative smooth frame-to-frame change of each particle's integrated intensity.
    amplitude_range : (float, float)
        Integrated counts, drawn log-uniform (weak peaks excepted).
    min_distance : float
        Smallest gap in pixels between well-separated peaks (plus twice their widths).
    dtype : str
        ``float32`` or ``uint32`` (rounded, clipped at 0).

    Returns
    -------
    frames : ndarray (N, H, W)
    truth : DataFrame
        One row per particle per frame (see :data:`TRUTH_COLUMNS`); ``truth.attrs`` holds the
        seed, geometry, beam centre, hot pixels (row, col) and parameters.

    Examples
    --------
    >>> frames, truth = simulate_series(frames=2, shape=(128, 128), peaks=5, seed=1)
    >>> frames.shape, sorted(set(truth.frame))
    ((2, 128, 128), [0, 1])
    """
    h, w = _check_series_args(frames, shape, peaks, messy, dtype)
    background = _as_background(background)
    lo, hi = strain_amplitude
    if not (0 <= lo <= hi < 0.1):
        raise OptionError(f"strain_amplitude must be 0 <= low <= high < 0.1, got {strain_amplitude}")
    rng = np.random.default_rng(seed)
    bc = _beam_centre(beam_centre, setup, h, w)
    geo = _default_distance(setup, (h, w), bc)
    bg = background_image((h, w), background, beam_centre=bc, direction=rng.uniform(0, 2 * np.pi))
    particles = _plan_particles(rng, peaks, (h, w), messy, amplitude_range=amplitude_range,
                                bg=bg, min_distance=min_distance, max_strain=hi, setup=geo)
    p = len(particles)
    period = float(frames if period is None else period)
    if not period > 0:
        raise OptionError(f"period must be > 0 frames, got {period}")
    amp_s = rng.uniform(lo, hi, p) * np.where(rng.random(p) < contracting_fraction, -1.0, 1.0)
    lag = np.where(rng.random(p) < lag_fraction, rng.uniform(0, max_lag, p) * period, 0.0)
    f = np.arange(frames)[None, :]
    strain = amp_s[:, None] * 0.5 * (1 - np.cos(2 * np.pi * (f - lag[:, None]) / period))
    vis = _visibility(rng, p, frames, appear_fraction)
    phase = rng.uniform(0, 2 * np.pi, p)[:, None]
    amp_factor = 1.0 + intensity_variation * np.sin(2 * np.pi * f / max(frames, 2) + phase)
    truth = _build_truth(particles, strain, vis, amp_factor, geo, bg)
    out, truth, hot = _render_series(rng, truth, (h, w), bg, noise, dtype)
    truth.attrs.update(_attrs(seed, geo, hot, {
        "simulator": "simulate_series", "frames": frames, "shape": [h, w], "peaks": peaks,
        "messy": messy, "background": asdict(background), "noise": asdict(noise),
        "strain_amplitude": list(strain_amplitude), "contracting_fraction": contracting_fraction,
        "period": period, "lag_fraction": lag_fraction, "max_lag": max_lag,
        "appear_fraction": appear_fraction, "intensity_variation": intensity_variation,
        "amplitude_range": list(amplitude_range), "min_distance": min_distance, "dtype": dtype,
    }))
    return out, truth


def _as_background(background) -> Background:
    if isinstance(background, Background):
        return background
    try:
        return Background(level=float(background))
    except (TypeError, ValueError):
        raise OptionError(f"background must be a Background or a level, got {background!r}") \
            from None


def _beam_centre(beam_centre, setup: DetectorSetup, h: int, w: int) -> tuple[float, float]:
    bc = beam_centre if beam_centre is not None else setup.beam_centre
    if bc is None:
        return ((w - 1) / 2.0, (h - 1) / 2.0)
    bx, by = (float(v) for v in bc)
    if not (np.isfinite(bx) and np.isfinite(by)):
        raise OptionError(f"beam_centre must be finite (x, y), got {bc!r}")
    return (bx, by)


def _attrs(seed, geo: DetectorSetup, hot, parameters: dict) -> dict:
    return {
        "seed": int(seed),
        "beam_centre": [float(v) for v in geo.beam_centre],
        "distance_mm": float(geo.distance_mm),
        "pixel_mm": float(geo.pixel_mm),
        "wavelength_A": float(geo.wavelength_A),
        "hot_pixels": hot,
        "parameters": parameters,
    }


# ----------------------------------------------------------------------------- patches


def simulate_patches(
    n: int,
    patch: int = 11,
    kinds: str | list[str] | tuple[str, ...] | None = None,
    seed: int = 0,
    *,
    background_range: tuple[float, float] = (2.0, 300.0),
    snr_range: tuple[float, float] = (10.0, 500.0),
    weak_snr: tuple[float, float] = (4.0, 8.0),
    offset: float = 1.0,
    read_noise: float = 1.0,
    hot_pixel_probability: float = 0.02,
    gradient: float = 0.01,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Isolated peaks rendered straight into ``patch x patch`` patches, with noise.

    The true centre is uniform within ``+-offset`` px of the central pixel ``(patch // 2,
    patch // 2)``; the background level is log-uniform in ``background_range`` counts per pixel
    with a random tilt of up to ``gradient`` * level per pixel; peak height over the background
    noise is log-uniform in ``snr_range`` (``weak_snr`` for weak peaks); Poisson noise plus
    Gaussian read noise (sigma uniform in ``[0, read_noise]``), and a hot pixel in a fraction
    ``hot_pixel_probability`` of the patches.  Overlapping peaks get a neighbour 3-6 px away,
    0.3-1.0 times as bright, usually only partly inside the patch.

    Parameters
    ----------
    n : int
        Number of patches.
    patch : int
        Odd patch size in pixels (>= 3).
    kinds : str, sequence of str or None
        Peak kinds to draw, uniformly (a kind named twice is drawn twice as often); ``None``:
        the six of ``KINDS``.  ``EXTRA_KINDS`` may be named as well.
    seed : int
        Random seed.

    Returns
    -------
    patches : ndarray (n, patch, patch) float32
        Counts.
    truth : DataFrame
        ``patch, x, y`` (patch pixel coordinates), ``kind``, shape parameters, ``amplitude``,
        ``height``, ``background``, the neighbour (``neighbour_dx/dy/amplitude`` and its
        shape), the background tilt ``gradient_x/y``, ``read_noise`` and the hot pixel
        (``hot_pixel``, ``hot_x/y``, ``hot_counts``): every draw that made the patch.

    Examples
    --------
    >>> patches, truth = simulate_patches(4, patch=11, kinds="sharp", seed=0)
    >>> patches.shape, bool((abs(truth.x - 5) <= 1).all())
    ((4, 11, 11), True)
    """
    if int(n) != n or n < 0:
        raise OptionError(f"n must be a non-negative integer, got {n}")
    if int(patch) != patch or patch < 3 or patch % 2 == 0:
        raise OptionError(f"patch must be an odd integer >= 3, got {patch}")
    if kinds is None:
        kinds = KINDS
    elif isinstance(kinds, str):
        kinds = (kinds,)
    bad = [k for k in kinds if k not in KINDS + EXTRA_KINDS]
    if bad or not kinds:
        raise OptionError(f"unknown peak kind(s) {bad}; choose from "
                          f"{', '.join(KINDS + EXTRA_KINDS)}")
    n = int(n)
    rng = np.random.default_rng(seed)
    kind = np.asarray(kinds, dtype=object)[rng.integers(0, len(kinds), n)]
    shapes = _draw_shapes(rng, kind)
    c = patch // 2
    x = c + rng.uniform(-offset, offset, n)
    y = c + rng.uniform(-offset, offset, n)
    level = np.exp(rng.uniform(*np.log(background_range), n))
    rn = rng.uniform(0.0, read_noise, n)
    noise_sigma = np.sqrt(level + rn**2)
    height1, _ = profile_peak(shapes["sigma_x"], shapes["sigma_y"], shapes["eta"])
    per_count = height1 / (1.0 + shapes["split_ratio"].to_numpy())
    snr = np.where(kind == "weak", rng.uniform(*weak_snr, n),
                   np.exp(rng.uniform(*np.log(snr_range), n)))
    amp = snr * noise_sigma / per_count
    table = shapes.assign(x=x, y=y, amplitude=amp)

    # Neighbours of the overlapping kind: sharp-like, 3-6 px away, 0.3-1 times as bright;
    # of the shadowed kind the same, 1-3 times as bright (mapped from the same draw, so a set
    # without shadowed peaks takes the random stream it always did).
    ov = np.flatnonzero((kind == "overlapping") | (kind == "shadowed"))
    nb = _draw_shapes(rng, np.full(len(ov), "sharp", dtype=object))
    dist, phi = rng.uniform(3.0, 6.0, len(ov)), rng.uniform(0, 2 * np.pi, len(ov))
    nb_dx, nb_dy = np.zeros(n), np.zeros(n)
    nb_amp = np.zeros(n)
    nb_dx[ov], nb_dy[ov] = dist * np.cos(phi), dist * np.sin(phi)
    factor = rng.uniform(0.3, 1.0, len(ov))
    factor = np.where(kind[ov] == "shadowed", 1.0 + (factor - 0.3) / 0.7 * 2.0, factor)
    nb_amp[ov] = amp[ov] * factor
    nb = nb.assign(x=x[ov] + nb_dx[ov], y=y[ov] + nb_dy[ov], amplitude=nb_amp[ov])

    out = np.zeros((n, patch, patch))
    comp = _expand(pd.concat([table, nb], ignore_index=True),
                   np.concatenate([np.arange(n), ov]).astype(np.int64))
    _render_components(out, comp)

    # Background: level plus a random tilt, then noise.
    g = rng.normal(0.0, gradient, (n, 2)) * level[:, None]
    ramp = np.arange(patch) - c
    out += level[:, None, None] + g[:, 0, None, None] * ramp[None, None, :] \
        + g[:, 1, None, None] * ramp[None, :, None]
    np.maximum(out, 0.0, out=out)
    hot = rng.random(n) < hot_pixel_probability
    hi_ = np.flatnonzero(hot)
    hy, hx = rng.integers(0, patch, hi_.size), rng.integers(0, patch, hi_.size)
    hot_add = level[hi_] * np.exp(rng.uniform(np.log(30), np.log(300), hi_.size)) + 50
    out[hi_, hy, hx] += hot_add
    counts = rng.poisson(out).astype(np.float64) + rng.normal(0, 1, out.shape) * rn[:, None, None]
    # Every nuisance draw goes into the truth table, so that the noise-free mean of a patch
    # (braggtrack.crlb.expected_patches) can be rebuilt from it without replaying the draws.
    nb_shape = {"sigma_x": np.ones(n), "sigma_y": np.ones(n), "eta": np.zeros(n),
                "angle": np.zeros(n)}
    for col, values in nb_shape.items():
        values[ov] = nb[col].to_numpy()
    hot_at = {"x": np.full(n, -1, np.int64), "y": np.full(n, -1, np.int64),
              "counts": np.zeros(n)}
    hot_at["x"][hi_], hot_at["y"][hi_], hot_at["counts"][hi_] = hx, hy, hot_add
    truth = pd.DataFrame({
        "patch": np.arange(n), "x": x, "y": y, "kind": kind.astype(str),
        "amplitude": amp, "height": amp * per_count, "background": level,
        "sigma_x": shapes["sigma_x"], "sigma_y": shapes["sigma_y"], "eta": shapes["eta"],
        "angle": shapes["angle"], "split_dx": shapes["split_dx"], "split_dy": shapes["split_dy"],
        "split_ratio": shapes["split_ratio"], "neighbour_dx": nb_dx, "neighbour_dy": nb_dy,
        "neighbour_amplitude": nb_amp,
        **{f"neighbour_{col}": values for col, values in nb_shape.items()},
        "gradient_x": g[:, 0], "gradient_y": g[:, 1], "read_noise": rn,
        "hot_pixel": hot, "hot_x": hot_at["x"], "hot_y": hot_at["y"],
        "hot_counts": hot_at["counts"],
    })
    truth.attrs.update({"seed": int(seed), "patch": int(patch)})
    return counts.astype(np.float32), truth


# ----------------------------------------------------------------------------- operando


class OperandoSeries(NamedTuple):
    """Result of :func:`simulate_operando` (unpacks as a 4-tuple)."""

    frames: np.ndarray
    truth: pd.DataFrame
    frame_meta: pd.DataFrame
    cycler_log: pd.DataFrame


#: NMC811-like layered oxide, hexagonal setting (R-3m): a, c in angstrom.
NMC_A, NMC_C = 2.872, 14.20
NMC_REFLECTIONS = ((0, 0, 3), (1, 0, 1), (0, 0, 6), (0, 1, 2), (1, 0, 4), (0, 1, 5),
                   (1, 0, 7), (0, 1, 8), (1, 1, 0), (1, 1, 3))


def _d_hex(hkl: np.ndarray, a, c):
    h, k, l_ = hkl[..., 0], hkl[..., 1], hkl[..., 2]
    return 1.0 / np.sqrt(4.0 / 3.0 * (h * h + h * k + k * k) / a**2 + l_ * l_ / c**2)


def _ocv(soc):
    """Plausible NMC open-circuit voltage (V) against Li metal; not a model of a given cell."""
    s = np.clip(soc, 0.01, 0.99)
    return 3.75 + 0.45 * (s - 0.5) + 0.05 * np.log(s / (1.0 - s))


def _c_axis(soc):
    """Shape of the NMC c-axis change: expands, peaks near SOC 0.75, partly collapses; max 1."""
    s = np.asarray(soc, dtype=float)
    return (1.6 * s - 0.9 * s**3) / 0.8215


def _cycle_state(t, *, half_s: float, cycles: int, rest_s: float):
    """State of charge, branch, cycle, current sign at times ``t`` (galvanostatic, 0 -> 1 -> 0)."""
    t = np.asarray(t, dtype=float)
    period = 2 * half_s + 2 * rest_s
    cyc = np.minimum(np.floor(t / period), cycles - 1)
    tc = t - cyc * period
    charge = tc < half_s
    rest_top = (tc >= half_s) & (tc < half_s + rest_s)
    discharge = (tc >= half_s + rest_s) & (tc < 2 * half_s + rest_s)
    soc = np.select(
        [charge, rest_top, discharge],
        [tc / half_s, 1.0, 1.0 - (tc - half_s - rest_s) / half_s], 0.0)
    branch = np.select([charge, discharge], ["charge", "discharge"], "rest").astype(object)
    sign = np.select([charge, discharge], [1.0, -1.0], 0.0)
    passed = np.select([charge, discharge], [soc, 1.0 - soc], 0.0)
    return np.clip(soc, 0, 1), branch, cyc.astype(int) + 1, sign, passed


def simulate_operando(
    frames: int = 40,
    shape: tuple[int, int] = (512, 512),
    peaks: int = 60,
    messy: float = 0.2,
    seed: int = 0,
    *,
    cycles: int = 1,
    c_rate: float = 1.0,
    capacity_mAh: float = 2.0,
    resistance_ohm: float = 25.0,
    rest_s: float = 0.0,
    cycler_dt_s: float = 10.0,
    exposure_s: float | None = None,
    strain_amplitude: tuple[float, float] = (2e-3, 5e-3),
    a_axis_ratio: float = 0.4,
    lag_fraction: float = 0.3,
    max_lag: float = 0.12,
    inactive_fraction: float = 0.05,
    background: Background | float = Background(),
    noise: Noise = Noise(),
    setup: DetectorSetup = DetectorSetup(),
    appear_fraction: float = 0.05,
    amplitude_range: tuple[float, float] = (2e3, 2e5),
    min_distance: float = 10.0,
    dtype: str = "float32",
) -> OperandoSeries:
    """An operando charge/discharge experiment on an NMC-like cathode, frames plus cycler data.

    The cell is cycled galvanostatically at ``c_rate`` between state of charge 0 and 1
    (``cycles`` times, with ``rest_s`` rests at the top and bottom).  Each particle is one spot
    of one reflection ``hkl`` on its Debye-Scherrer ring.  Its lattice follows its *own* state of
    charge, the cell's delayed by a particle lag (``lag_fraction`` of particles lag by up to
    ``max_lag`` of a half cycle; ``inactive_fraction`` are electrically isolated and do not
    change): ``strain_c = A * c_axis(soc)`` (expansion, partial collapse above SOC ~0.75) and
    ``strain_a = -a_axis_ratio * A * soc`` with ``A`` uniform in ``strain_amplitude``; the peak's
    strain ``d / d0 - 1`` follows from the hexagonal d-spacing of its hkl and moves it radially
    by the exact Bragg relation.  ``distance_mm=None`` puts the (110) ring at 85 % of the
    distance from the beam centre to the nearest frame edge, so c-axis strains of a few 1e-3 move
    peaks by tenths of a pixel (inner rings) to about a pixel (outer rings, larger frames).

    Parameters
    ----------
    frames, shape, peaks, messy, seed
        As :func:`simulate_series`.
    cycles : int
        Charge/discharge cycles.
    c_rate : float
        Current in units of ``capacity_mAh`` per hour (1C: a full charge in one hour).
    capacity_mAh : float
        Cell capacity.
    resistance_ohm : float
        Internal resistance giving the IR overpotential ``current * R``.
    rest_s : float
        Rest at open circuit after each charge and discharge, seconds.
    cycler_dt_s : float
        Sampling interval of the cycler log (finer than the frames).
    exposure_s : float or None
        Frame time; ``None``: the experiment's duration divided evenly among the frames.
        Frame ``f`` is taken at mid-exposure ``(f + 0.5) * exposure_s``.
    strain_amplitude, a_axis_ratio, lag_fraction, max_lag, inactive_fraction
        Lattice response (see above).
    background, noise, setup, appear_fraction, amplitude_range, min_distance, dtype
        As :func:`simulate_series`.

    Returns
    -------
    OperandoSeries
        ``frames`` (N, H, W); ``truth`` (per particle per frame, with ``hkl``, ``strain``,
        ``strain_a``, ``strain_c``, ``state_of_charge``); ``frame_meta`` (``frame, time_s,
        voltage_V, current_mA, capacity_mAh, state_of_charge, cycle, branch``; ``capacity_mAh``
        is the charge passed since the start of the current charge or discharge, as cyclers
        report it; ``cycle`` counts from 1); ``cycler_log`` (``time_s, voltage_V, current_mA,
        capacity_mAh, state_of_charge, cycle, branch`` every ``cycler_dt_s``, with 1 mV voltage
        noise).

    Examples
    --------
    >>> run = simulate_operando(frames=4, shape=(128, 128), peaks=6, seed=0)
    >>> list(run.frame_meta.columns)[:4]
    ['frame', 'time_s', 'voltage_V', 'current_mA']
    """
    h, w = _check_series_args(frames, shape, peaks, messy, dtype)
    background = _as_background(background)
    if int(cycles) != cycles or cycles < 1:
        raise OptionError(f"cycles must be a positive integer, got {cycles}")
    if not (c_rate > 0 and capacity_mAh > 0 and cycler_dt_s > 0 and rest_s >= 0
            and resistance_ohm >= 0):
        raise OptionError("c_rate, capacity_mAh and cycler_dt_s must be > 0, rest_s and "
                          "resistance_ohm >= 0")
    lo, hi = strain_amplitude
    if not (0 <= lo <= hi < 0.1):
        raise OptionError(f"strain_amplitude must be 0 <= low <= high < 0.1, got {strain_amplitude}")
    rng = np.random.default_rng(seed)
    bc = _beam_centre(None, setup, h, w)
    bx, by = bc
    hkl_all = np.array(NMC_REFLECTIONS, dtype=float)
    d_all = _d_hex(hkl_all, NMC_A, NMC_C)
    if setup.distance_mm is None:
        edge = min(bx, by, w - 1 - bx, h - 1 - by)
        if edge < 20:
            raise OptionError("simulate_operando needs the beam centre inside the frame, at "
                              "least 20 px from its edges, to choose a distance; give distance_mm")
        tt = 2 * np.arcsin(setup.wavelength_A / (2 * d_all.min()))
        geo = DetectorSetup(0.85 * edge * setup.pixel_mm / np.tan(tt), setup.pixel_mm,
                            setup.wavelength_A, bc)
    else:
        geo = DetectorSetup(setup.distance_mm, setup.pixel_mm, setup.wavelength_A, bc)
    ring_r = geo.radius(d_all)
    # Rings that lie at least partly inside the frame; particles spread by ring circumference.
    far = max(math.hypot(cx - bx, cy - by) for cx in (0, w - 1) for cy in (0, h - 1))
    usable = (ring_r > 0.05 * min(h, w)) & (ring_r < far - 10)
    if not usable.any():
        raise OptionError("no NMC reflection falls inside the frame with this geometry")
    weights_r = np.where(usable, ring_r, 0.0)
    ring_of = rng.choice(len(d_all), peaks, p=weights_r / weights_r.sum())

    def propose(i, k):
        phi = rng.uniform(0, 2 * np.pi, k)
        return bx + ring_r[ring_of[i]] * np.cos(phi), by + ring_r[ring_of[i]] * np.sin(phi)

    bg = background_image((h, w), background, beam_centre=bc, direction=rng.uniform(0, 2 * np.pi))
    particles = _plan_particles(rng, peaks, (h, w), messy, amplitude_range=amplitude_range,
                                bg=bg, min_distance=min_distance, max_strain=hi * 1.2, setup=geo,
                                propose=propose)
    p = len(particles)
    hkl = hkl_all[ring_of]

    half_s = 3600.0 / c_rate
    total_s = cycles * (2 * half_s + 2 * rest_s)
    exposure = total_s / frames if exposure_s is None else float(exposure_s)
    if not exposure > 0:
        raise OptionError(f"exposure_s must be > 0, got {exposure_s}")
    t_frame = (np.arange(frames) + 0.5) * exposure
    current = c_rate * capacity_mAh

    def electro(t):
        soc, branch, cyc, sign, passed = _cycle_state(t, half_s=half_s, cycles=cycles,
                                                      rest_s=rest_s)
        i_ma = sign * current
        volt = _ocv(soc) + i_ma * 1e-3 * resistance_ohm
        return soc, branch, cyc, i_ma, volt, passed * capacity_mAh

    soc, branch, cyc, i_ma, volt, cap = electro(t_frame)
    frame_meta = pd.DataFrame({
        "frame": np.arange(frames), "time_s": t_frame, "voltage_V": volt, "current_mA": i_ma,
        "capacity_mAh": cap, "state_of_charge": soc, "cycle": cyc, "branch": branch.astype(str),
    })
    t_log = np.arange(0.0, max(total_s, t_frame[-1]) + cycler_dt_s / 2, cycler_dt_s)
    lsoc, lbranch, lcyc, li, lv, lcap = electro(t_log)
    cycler_log = pd.DataFrame({
        "time_s": t_log, "voltage_V": lv + rng.normal(0, 1e-3, t_log.size), "current_mA": li,
        "capacity_mAh": lcap, "state_of_charge": lsoc, "cycle": lcyc,
        "branch": lbranch.astype(str),
    })

    # The particle's own state of charge: the cell's, delayed; isolated particles stay at 0.
    lag_s = np.where(rng.random(p) < lag_fraction, rng.uniform(0, max_lag, p) * half_s, 0.0)
    active = rng.random(p) >= inactive_fraction
    t_p = np.maximum(t_frame[None, :] - lag_s[:, None], 0.0)
    soc_p = _cycle_state(t_p, half_s=half_s, cycles=cycles, rest_s=rest_s)[0] * active[:, None]
    amp_c = rng.uniform(lo, hi, p)[:, None]
    strain_c = amp_c * _c_axis(soc_p)
    strain_a = -a_axis_ratio * amp_c * soc_p
    d0 = _d_hex(hkl, NMC_A, NMC_C)[:, None]
    d = _d_hex(hkl[:, None, :], NMC_A * (1 + strain_a), NMC_C * (1 + strain_c))
    strain = d / d0 - 1.0
    vis = _visibility(rng, p, frames, appear_fraction)
    amp_factor = 1.0 + 0.05 * np.sin(2 * np.pi * np.arange(frames)[None, :] / max(frames, 2)
                                      + rng.uniform(0, 2 * np.pi, p)[:, None])
    hkl_str = np.array(["".join(str(int(v)) for v in row) for row in hkl], dtype=object)
    truth = _build_truth(particles, strain, vis, amp_factor, geo, bg, extra={
        "hkl": hkl_str, "strain_a": strain_a, "strain_c": strain_c, "state_of_charge": soc_p})
    out, truth, hot = _render_series(rng, truth, (h, w), bg, noise, dtype)
    truth.attrs.update(_attrs(seed, geo, hot, {
        "simulator": "simulate_operando", "frames": frames, "shape": [h, w], "peaks": peaks,
        "messy": messy, "cycles": cycles, "c_rate": c_rate, "capacity_mAh": capacity_mAh,
        "resistance_ohm": resistance_ohm, "rest_s": rest_s, "exposure_s": exposure,
        "strain_amplitude": list(strain_amplitude), "a_axis_ratio": a_axis_ratio,
        "lag_fraction": lag_fraction, "max_lag": max_lag, "inactive_fraction": inactive_fraction,
        "background": asdict(background), "noise": asdict(noise), "lattice_a_A": NMC_A,
        "lattice_c_A": NMC_C, "appear_fraction": appear_fraction,
        "amplitude_range": list(amplitude_range), "min_distance": min_distance, "dtype": dtype,
    }))
    frame_meta.attrs.update({"seed": int(seed), "c_rate": c_rate, "capacity_mAh": capacity_mAh})
    return OperandoSeries(out, truth, frame_meta, cycler_log)


# ----------------------------------------------------------------------------- files


def _compression_args(compression: str | None) -> dict:
    if compression is None or compression == "none":
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if compression in ("lz4", "bitshuffle"):
        import hdf5plugin

        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    raise OptionError(f"compression must be None, gzip, lzf or bitshuffle, got {compression!r}")


def _write_table_group(group, df: pd.DataFrame) -> None:
    group.attrs["columns"] = json.dumps([str(c) for c in df.columns])
    for col in df.columns:
        values = df[col].to_numpy()
        if values.dtype == object or pd.api.types.is_string_dtype(df[col]):
            data = np.array([str(v).encode() for v in values])
            if data.size == 0:
                data = np.zeros(0, dtype="S1")
            group.create_dataset(str(col), data=data)
            group[str(col)].attrs["kind"] = "str"
        else:
            group.create_dataset(str(col), data=values)
    group.attrs["attrs"] = json.dumps(df.attrs, default=_json_default)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def write_series(
    path: str | Path,
    frames: np.ndarray,
    truth: pd.DataFrame | None,
    *,
    metadata: pd.DataFrame | None = None,
    cycler_log: pd.DataFrame | None = None,
    compression: str | None = None,
) -> Path:
    """Write frames and truth as a NeXus-style HDF5 file.

    Layout: ``/entry`` (NXentry) with ``/entry/data`` (NXdata, ``signal="data"``) holding
    ``data`` (N, H, W) chunked one frame per chunk; ``/entry/instrument/detector/data`` is a
    hard link to the same dataset; the truth table under ``/entry/truth`` (one dataset per
    column, strings as fixed-size bytes, ``attrs['seed']`` and ``attrs['parameters']`` as a JSON
    string); the per-frame metadata under ``/entry/frame_meta`` and a cycler log under
    ``/entry/cycler_log`` when given.

    Parameters
    ----------
    path : str or Path
        Output file (overwritten).
    frames : ndarray (N, H, W)
        The frames (a single 2-D frame is stored as N = 1).
    truth : DataFrame or None
        Truth table (e.g. from :func:`simulate_series`).
    metadata, cycler_log : DataFrame or None
        Per-frame metadata and the cycler's own log (:func:`simulate_operando`).
    compression : str or None
        ``None``, ``gzip``, ``lzf`` or ``bitshuffle`` (LZ4, via hdf5plugin).

    Returns
    -------
    Path

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> frames, truth = simulate_series(frames=1, shape=(64, 64), peaks=2, seed=0)
    >>> p = write_series(os.path.join(tempfile.mkdtemp(), "s.h5"), frames, truth)
    >>> len(read_truth(p)) == len(truth)
    True
    """
    import h5py

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3:
        raise OptionError(f"frames must be (N, H, W), got shape {frames.shape}")
    kw = _compression_args(compression)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with h5py.File(path, "w") as f:
            f.attrs["default"] = "entry"
            f.attrs["creator"] = "braggtrack.simulate"
            entry = f.create_group("entry")
            entry.attrs["NX_class"] = "NXentry"
            entry.attrs["default"] = "data"
            data = entry.create_group("data")
            data.attrs["NX_class"] = "NXdata"
            data.attrs["signal"] = "data"
            dset = data.create_dataset("data", data=frames, chunks=(1, *frames.shape[1:]), **kw)
            dset.attrs["units"] = "counts"
            dset.attrs["interpretation"] = "image"
            inst = entry.create_group("instrument")
            inst.attrs["NX_class"] = "NXinstrument"
            det = inst.create_group("detector")
            det.attrs["NX_class"] = "NXdetector"
            det["data"] = dset  # hard link: one dataset, two NeXus paths
            if truth is not None:
                g = entry.create_group("truth")
                g.attrs["NX_class"] = "NXcollection"
                _write_table_group(g, truth)
                g.attrs["seed"] = int(truth.attrs.get("seed", -1))
                g.attrs["parameters"] = json.dumps(truth.attrs.get("parameters", {}),
                                                   default=_json_default)
                if "pixel_mm" in truth.attrs:
                    det.attrs["distance_mm"] = truth.attrs["distance_mm"]
                    det.attrs["pixel_mm"] = truth.attrs["pixel_mm"]
                    det.attrs["wavelength_A"] = truth.attrs["wavelength_A"]
                    det.attrs["beam_centre_xy"] = truth.attrs["beam_centre"]
            for name, table in (("frame_meta", metadata), ("cycler_log", cycler_log)):
                if table is not None:
                    g = entry.create_group(name)
                    g.attrs["NX_class"] = "NXcollection"
                    _write_table_group(g, table)
    except OSError as exc:
        raise InputFileError(path, f"cannot write HDF5 file ({exc})") from None
    return path


def _read_table_group(path: str | Path, name: str) -> pd.DataFrame:
    import h5py

    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "no such file")
    try:
        with h5py.File(path, "r", locking=False) as f:
            if f"/entry/{name}" not in f:
                raise InputFileError(path, f"has no /entry/{name} table")
            g = f[f"/entry/{name}"]
            cols = json.loads(g.attrs["columns"])
            data = {}
            for c in cols:
                v = g[c][()]
                data[c] = v.astype(str).astype(object) if g[c].attrs.get("kind") == "str" else v
            df = pd.DataFrame(data, columns=cols)
            df.attrs.update(json.loads(g.attrs.get("attrs", "{}")))
            return df
    except (OSError, KeyError, ValueError) as exc:
        raise InputFileError(path, f"not a readable simulated series ({exc.__class__.__name__})") \
            from None


def read_truth(path: str | Path) -> pd.DataFrame:
    """Truth table written by :func:`write_series` (``attrs`` restored).

    Examples
    --------
    >>> read_truth("missing.h5")   # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    braggtrack.errors.InputFileError: missing.h5: no such file
    """
    return _read_table_group(path, "truth")


def read_frame_meta(path: str | Path) -> pd.DataFrame:
    """Per-frame metadata written by :func:`write_series` (``/entry/frame_meta``).

    Examples
    --------
    >>> import tempfile, os
    >>> run = simulate_operando(frames=2, shape=(96, 96), peaks=3, seed=0)
    >>> p = write_series(os.path.join(tempfile.mkdtemp(), "o.h5"), run.frames, run.truth,
    ...                  metadata=run.frame_meta)
    >>> list(read_frame_meta(p).frame)
    [0, 1]
    """
    return _read_table_group(path, "frame_meta")


def read_cycler_log(path: str | Path) -> pd.DataFrame:
    """Cycler log written by :func:`write_series` (``/entry/cycler_log``)."""
    return _read_table_group(path, "cycler_log")


def simulate_to_file(
    path: str | Path,
    frames: int = 5,
    shape: tuple[int, int] = (512, 512),
    peaks: int = 100,
    messy: float = 0.3,
    seed: int = 0,
    *,
    operando: bool = False,
    compression: str | None = None,
    background: Background | float = Background(),
    noise: Noise = Noise(),
    dtype: str = "float32",
) -> Path:
    """Simulate a series (or an operando experiment) and write it with :func:`write_series`.

    This is what ``braggtrack simulate OUT.h5 --frames N --shape H W --peaks P --messy F
    --seed S`` runs.

    Examples
    --------
    >>> import tempfile, os, h5py
    >>> p = simulate_to_file(os.path.join(tempfile.mkdtemp(), "s.h5"), frames=2, shape=(64, 64),
    ...                      peaks=3, seed=1)
    >>> h5py.File(p)["/entry/data/data"].shape
    (2, 64, 64)
    """
    if operando:
        run = simulate_operando(frames, shape, peaks, messy, seed, background=background,
                                noise=noise, dtype=dtype)
        return write_series(path, run.frames, run.truth, metadata=run.frame_meta,
                            cycler_log=run.cycler_log, compression=compression)
    stack, truth = simulate_series(frames, shape, peaks, messy, seed, background=background,
                                   noise=noise, dtype=dtype)
    return write_series(path, stack, truth, compression=compression)

