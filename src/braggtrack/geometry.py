"""Detector geometry: pixel positions -> two_theta, chi, q, d-spacing, strain, lattice parameters.

The pixel-to-angle transforms are pyFAI's (``AzimuthalIntegrator.tth``, ``chi``, ``qFunction``),
not re-derived here, so that a PONI file from pyFAI-calib2 means exactly what it means in pyFAI
(tilts, detector orientation, distortion splines of named detectors).

Pixel convention
----------------
braggtrack puts the centre of pixel (row 0, col 0) at (x=0.0, y=0.0).  pyFAI's point functions
``tth(d1, d2)``, ``chi(d1, d2)`` and ``qFunction(d1, d2)`` also take the *centre* of pixel
(i, j) as d1=i, d2=j (they add the half pixel internally, ``calc_cartesian_positions(...,
center=True)``), so a peak at (x, y) is evaluated at d1=y (row, slow axis), d2=x (column),
without any shift.  The PONI offsets ``poni1``/``poni2`` however are measured from the outer
corner of the detector, so a beam centre at pixel position (bx, by) is
``poni1 = (by + 0.5) * pixel1``, ``poni2 = (bx + 0.5) * pixel2`` (see :meth:`Geometry.simple`).
Both are checked against hand-computed angles in ``tests/test_geometry.py``.

chi follows pyFAI (default detector orientation of PONI version 2.1): chi = 0 along +x (increasing
column), +90 degrees along +y (increasing row), range (-180, 180].

Uncertainties (``*_err``) are propagated from ``x_err``, ``y_err`` (taken as independent) with a
numerical Jacobian: central differences of the pyFAI transforms, vectorized over all peaks.

White-beam Laue frames have no single wavelength: a :class:`Geometry` with ``wavelength_m=None``
gives two_theta and chi only; ``q`` and ``d_spacing`` are then absent from the table.

:meth:`Geometry.from_lauetools_det` reads a LaueTools ``.det`` calibration.  LaueTools describes
the detector (usually on top, near 2-theta = 90 degrees) by two small angles ``xbet``, ``xgam``
in its own convention; the equivalent pyFAI rotations are found by a least-squares fit of
pyFAI's two_theta to LaueTools' on a grid of pixels (the LaueTools two_theta formula is written
out here for that fit only).  The result is approximate: LaueTools' pixel origin may differ from
ours by up to one pixel, and chi keeps pyFAI's convention, not LaueTools'.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import numbers
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputFileError, OptionError

__all__ = [
    "Geometry",
    "add_geometry",
    "add_strain",
    "add_radial_shift",
    "lattice_parameter",
    "HC_KEV_ANGSTROM",
]

#: h c in keV * angstrom: wavelength (angstrom) = HC_KEV_ANGSTROM / energy (keV)
HC_KEV_ANGSTROM = 12.398419843320026

# central-difference step (pixels) of the numerical Jacobian: far above float64 rounding of
# the transforms, far below the curvature scale of any real geometry
_STEP = 1e-3
# A wavelength given beside a PONI file that has one must agree to this relative tolerance:
# what a user types (0.6888 A) matches a calibrated 6.8877e-11 m to about 1e-4.
_WAVELENGTH_RTOL = 1e-4
# Wavelengths a PONI file may hold, metres: 0.01 .. 100 angstrom spans every X-ray source
# (hard X-rays to soft); outside it the file's number is in the wrong unit (0.5 for 0.5 A).
_PONI_WAVELENGTH_M = (1e-12, 1e-8)


@contextlib.contextmanager
def _quiet_pyfai() -> Iterator[None]:
    """Silence pyFAI's loggers ("pyFAI" and its children) while a PONI file is read.

    On a malformed file pyFAI logs whole tracebacks before it raises; braggtrack's own
    one-line error says what is wrong, so those would only bury it.  Levels are restored.
    """
    names = ["pyFAI"] + [n for n in logging.root.manager.loggerDict if n.startswith("pyFAI.")]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _poni_wavelength(path: Path, value: object) -> float | None:
    """The wavelength (metres) pyFAI read from the PONI file ``path``, checked.

    ``None`` when the file has no ``Wavelength:`` line.  pyFAI reads ``Wavelength: 0`` as
    0.0 (and old versions give 0 for a missing line, hence the look at the file itself);
    a zero, a non-finite number or one outside 0.01..100 angstrom is an InputFileError:
    ``--wavelength 0`` is refused too, and ``Wavelength: 0.5`` (angstrom written where
    metres belong) gave d-spacings of 1e11 angstrom.
    """
    if value is None:
        return None
    wavelength = float(value)
    if wavelength == 0:
        text = path.read_text(errors="replace")
        if not re.search(r"^\s*wavelength\s*:", text, re.IGNORECASE | re.MULTILINE):
            return None
        raise InputFileError(path, "Wavelength: 0 is not a wavelength; give the X-ray "
                             "wavelength in metres (0.5 angstrom is 5e-11), or remove the "
                             "line for a geometry without one")
    low, high = _PONI_WAVELENGTH_M
    if not (low <= wavelength <= high):
        raise InputFileError(
            path, f"Wavelength: {wavelength:g} m is outside the X-ray range {low:g}..{high:g} "
            "m (0.01..100 angstrom); PONI wavelengths are in metres (0.5 angstrom is 5e-11)")
    return wavelength


def _finite(value, name: str, *, positive: bool = False) -> float:
    """``value`` as a finite float (positive when asked), or a one-line OptionError."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    number = float(value) if ok else float("nan")
    if not np.isfinite(number) or (positive and number <= 0):
        kind = "a positive number" if positive else "a finite number"
        raise OptionError(f"geometry: {name} must be {kind}, got {value!r}")
    return number


@dataclass(frozen=True)
class Geometry:
    """Detector geometry in pyFAI's parameters (SI units, radians).

    Build one with :meth:`from_poni`, :meth:`simple` or :meth:`from_lauetools_det`.

    Parameters
    ----------
    distance_m : float
        Sample to detector distance along the detector normal, metres (pyFAI ``dist``).
    poni1_m, poni2_m : float
        Point of normal incidence measured from the detector's outer corner along the rows
        (slow axis) and the columns, metres.
    rot1, rot2, rot3 : float
        pyFAI detector rotations, radians.
    pixel1_m, pixel2_m : float
        Pixel size along the rows (y) and the columns (x), metres.
    wavelength_m : float or None
        X-ray wavelength, metres; ``None`` for white beam (no q, no d-spacing).
    shape : tuple of int or None
        Detector shape (rows, columns) when known.
    poni_path : str or None
        The PONI file this came from; when set, pyFAI loads it itself (so that named detectors
        keep their distortion and orientation).
    """

    distance_m: float
    poni1_m: float
    poni2_m: float
    pixel1_m: float
    pixel2_m: float
    rot1: float = 0.0
    rot2: float = 0.0
    rot3: float = 0.0
    wavelength_m: float | None = None
    shape: tuple[int, int] | None = None
    poni_path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("distance_m", "pixel1_m", "pixel2_m"):
            _finite(getattr(self, name), name, positive=True)
        for name in ("poni1_m", "poni2_m", "rot1", "rot2", "rot3"):
            _finite(getattr(self, name), name)
        if self.wavelength_m is not None:
            _finite(self.wavelength_m, "wavelength_m", positive=True)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def simple(
        cls,
        distance_mm: float,
        beam_x_px: float,
        beam_y_px: float,
        pixel_size_um: float | None = None,
        *,
        pixel_x_um: float | None = None,
        pixel_y_um: float | None = None,
        wavelength_A: float | None = None,
        energy_keV: float | None = None,
        shape: tuple[int, int] | None = None,
    ) -> Geometry:
        """Flat detector perpendicular to the beam (no tilt).

        Parameters
        ----------
        distance_mm : float
            Sample to detector distance, mm.
        beam_x_px, beam_y_px : float
            Direct-beam position in braggtrack pixel coordinates (column, row; pixel centre at
            the integer).
        pixel_size_um : float, optional
            Square pixel size, micrometres; or give ``pixel_x_um`` and ``pixel_y_um``.
        wavelength_A, energy_keV : float, optional
            One of them (or neither for white beam).
        shape : tuple of int, optional
            Detector shape (rows, columns).

        Examples
        --------
        >>> g = Geometry.simple(100.0, 50.0, 40.0, 100.0, energy_keV=12.398419843320026)
        >>> round(g.wavelength_A, 6)
        1.0
        >>> import numpy as np
        >>> float(np.round(g.two_theta([60.0], [40.0])[0], 4))  # atan(1 mm / 100 mm)
        0.5729
        """
        px = pixel_x_um if pixel_x_um is not None else pixel_size_um
        py = pixel_y_um if pixel_y_um is not None else pixel_size_um
        if px is None or py is None:
            raise OptionError("geometry: give pixel_size_um or both pixel_x_um and pixel_y_um")
        if wavelength_A is not None and energy_keV is not None:
            raise OptionError("geometry: give wavelength_A or energy_keV, not both")
        # Every number is checked here, by the name the caller used: a NaN beam centre would
        # otherwise give NaN angles in every row of the table.
        distance_mm = _finite(distance_mm, "distance_mm (sample-detector distance)",
                              positive=True)
        beam_x_px = _finite(beam_x_px, "beam_x_px (beam centre x)")
        beam_y_px = _finite(beam_y_px, "beam_y_px (beam centre y)")
        px = _finite(px, "pixel size x (um)", positive=True)
        py = _finite(py, "pixel size y (um)", positive=True)
        if energy_keV is not None:
            wavelength_A = HC_KEV_ANGSTROM / _finite(energy_keV, "energy_keV", positive=True)
        elif wavelength_A is not None:
            wavelength_A = _finite(wavelength_A, "wavelength_A", positive=True)
        return cls(
            distance_m=distance_mm * 1e-3,
            poni1_m=(beam_y_px + 0.5) * py * 1e-6,
            poni2_m=(beam_x_px + 0.5) * px * 1e-6,
            pixel1_m=py * 1e-6,
            pixel2_m=px * 1e-6,
            wavelength_m=None if wavelength_A is None else wavelength_A * 1e-10,
            shape=None if shape is None else (int(shape[0]), int(shape[1])),
        )

    @classmethod
    def from_poni(cls, path: str | os.PathLike, *, wavelength_A: float | None = None) -> Geometry:
        """Read a pyFAI PONI file.

        Parameters
        ----------
        path : path-like
            The ``.poni`` file (pyFAI-calib2 output, any PONI version pyFAI reads).
        wavelength_A : float, optional
            The wavelength, angstrom, for a PONI file without a ``Wavelength:`` line.  When
            the file has one, the two must agree (relative 1e-4) or an
            :class:`~braggtrack.errors.OptionError` says they disagree: a calibration made at
            another wavelength is not silently reused.  Neither: a geometry without a
            wavelength (two_theta and chi only; strain from two_theta, see :func:`add_strain`).

        Raises
        ------
        InputFileError
            A missing or malformed file (pyFAI's own log output is silenced meanwhile),
            non-finite or nonsense values, or a ``Wavelength:`` of 0 or outside 1e-12 ..
            1e-8 m (0.01 .. 100 angstrom; PONI wavelengths are in metres).

        Examples
        --------
        >>> import tempfile, os
        >>> g = Geometry.simple(100.0, 50.0, 40.0, 100.0, wavelength_A=1.0)
        >>> path = os.path.join(tempfile.mkdtemp(), "g.poni")
        >>> g2 = Geometry.from_poni(g.to_poni(path))
        >>> round(g2.distance_m, 6), round(g2.beam_centre[0], 6)
        (0.1, 50.0)
        >>> Geometry.from_poni(path, wavelength_A=1.0).wavelength_A == g2.wavelength_A
        True
        """
        path = Path(path)
        if not path.is_file():
            raise InputFileError(path, "no such PONI file")
        with _quiet_pyfai():
            import pyFAI

            try:
                ai = pyFAI.load(str(path))
                det = ai.detector
                pixel1, pixel2 = float(det.pixel1), float(det.pixel2)
                # The shape of the pixels the frames have: a binned detector (pyFAI's Perkin
                # is 2048 x 2048 at 2 x 2) has max_shape unbinned but pixel1/2 binned.
                shape = getattr(det, "shape", None) or det.max_shape
                values = dict(
                    distance_m=float(ai.dist), poni1_m=float(ai.poni1),
                    poni2_m=float(ai.poni2), pixel1_m=pixel1, pixel2_m=pixel2,
                    rot1=float(ai.rot1), rot2=float(ai.rot2), rot3=float(ai.rot3),
                )
                raw_wavelength = ai.wavelength
            except Exception as exc:  # pyFAI raises many kinds on a malformed file
                raise InputFileError(
                    path, f"not a readable PONI file ({exc.__class__.__name__})") from None
        wavelength = _poni_wavelength(path, raw_wavelength)
        if wavelength_A is not None:
            given = _finite(wavelength_A, "wavelength_A", positive=True) * 1e-10
            if wavelength is not None and abs(given - wavelength) > _WAVELENGTH_RTOL * wavelength:
                raise OptionError(
                    f"{path}: the PONI file's wavelength {wavelength * 1e10:.6g} A and the "
                    f"wavelength given, {given * 1e10:.6g} A, disagree; give none to use the "
                    "file's, or fix the file")
            wavelength = wavelength if wavelength is not None else given
        try:
            return cls(
                **values, wavelength_m=wavelength,
                shape=None if shape is None else (int(shape[0]), int(shape[1])),
                poni_path=str(path.resolve()),
            )
        except OptionError as exc:  # a NaN or negative distance in the file: name the file
            raise InputFileError(path, str(exc)) from None

    @classmethod
    def from_lauetools_det(
        cls, path: str | os.PathLike, *, wavelength_A: float | None = None
    ) -> Geometry:
        """Read a LaueTools ``.det`` calibration (approximate, see the module notes).

        The first line holds ``distance (mm), xcen, ycen (px), xbet, xgam (deg), pixel size
        (mm), dim1, dim2``.  LaueTools' point O (xcen, ycen) at distance dd is the foot of the
        normal from the sample, i.e. pyFAI's PONI; its tilts are converted by fitting pyFAI's
        rot1, rot2 so that both give the same two_theta over the detector (rms difference
        about 1e-6 degrees).

        Examples
        --------
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "c.det")
        >>> _ = open(p, "w").write("70.0, 1000.0, 1000.0, 0.0, 0.0, 0.08, 2048, 2048\\n")
        >>> g = Geometry.from_lauetools_det(p)
        >>> float(np.round(g.two_theta([1000.0], [1000.0])[0], 3))  # normal at 90 deg
        90.0
        """
        path = Path(path)
        if not path.is_file():
            raise InputFileError(path, "no such LaueTools .det file")
        try:
            first = path.read_text(errors="replace").splitlines()[0]
            values = [float(v) for v in first.replace(",", " ").split()[:8]]
            if len(values) < 6:
                raise ValueError("fewer than 6 numbers")
        except (ValueError, IndexError, OSError):
            raise InputFileError(
                path, "not a LaueTools .det file (first line: dd, xcen, ycen, xbet, xgam, "
                "pixelsize, dim1, dim2)"
            ) from None
        dd, xcen, ycen, xbet, xgam, pixel_mm = values[:6]
        if not np.isfinite(values).all():
            raise InputFileError(path, "first line holds a value that is not a finite number")
        shape = (int(values[6]), int(values[7])) if len(values) >= 8 else None
        if dd <= 0 or pixel_mm <= 0:
            raise InputFileError(path, f"distance {dd} mm and pixel {pixel_mm} mm must be > 0")
        base = dict(
            distance_m=dd * 1e-3, poni1_m=(ycen + 0.5) * pixel_mm * 1e-3,
            poni2_m=(xcen + 0.5) * pixel_mm * 1e-3, pixel1_m=pixel_mm * 1e-3,
            pixel2_m=pixel_mm * 1e-3,
            wavelength_m=None if wavelength_A is None else wavelength_A * 1e-10, shape=shape,
        )
        rot1, rot2 = _fit_lauetools_rotations(dd, xcen, ycen, xbet, xgam, pixel_mm, shape, base)
        return cls(rot1=rot1, rot2=rot2, **base)

    def to_poni(self, path: str | os.PathLike) -> Path:
        """Write this geometry as a pyFAI PONI file (through pyFAI) and return its path."""
        path = Path(path)
        if path.exists():
            path.unlink()  # pyFAI appends to an existing file
        self.integrator.save(str(path))
        return path

    # ------------------------------------------------------------------ properties
    @functools.cached_property
    def integrator(self):
        """The pyFAI ``AzimuthalIntegrator`` doing the transforms (built once)."""
        import pyFAI
        from pyFAI.detectors import Detector
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator

        if self.poni_path is not None and Path(self.poni_path).is_file():
            with _quiet_pyfai():
                ai = pyFAI.load(self.poni_path)
            if self.wavelength_m is not None:  # pyFAI refuses None (a PONI without one)
                ai.wavelength = self.wavelength_m
            return ai
        det = Detector(pixel1=self.pixel1_m, pixel2=self.pixel2_m, max_shape=self.shape)
        return AzimuthalIntegrator(
            dist=self.distance_m, poni1=self.poni1_m, poni2=self.poni2_m,
            rot1=self.rot1, rot2=self.rot2, rot3=self.rot3, detector=det,
            wavelength=self.wavelength_m,
        )

    @property
    def wavelength_A(self) -> float | None:
        """Wavelength in angstrom, or ``None`` (white beam)."""
        return None if self.wavelength_m is None else self.wavelength_m * 1e10

    @property
    def energy_keV(self) -> float | None:
        """Photon energy in keV, or ``None``."""
        wl = self.wavelength_A
        return None if wl is None else HC_KEV_ANGSTROM / wl

    @property
    def beam_centre(self) -> tuple[float, float]:
        """Point of normal incidence (x, y) in braggtrack pixels (the beam centre without tilt)."""
        return (self.poni2_m / self.pixel2_m - 0.5, self.poni1_m / self.pixel1_m - 0.5)

    def as_dict(self) -> dict:
        """Plain values for run.json."""
        return {
            "distance_m": self.distance_m, "poni1_m": self.poni1_m, "poni2_m": self.poni2_m,
            "rot1": self.rot1, "rot2": self.rot2, "rot3": self.rot3,
            "pixel1_m": self.pixel1_m, "pixel2_m": self.pixel2_m,
            "wavelength_m": self.wavelength_m,
            "shape": None if self.shape is None else list(self.shape),
            "poni_path": self.poni_path,
        }

    # ------------------------------------------------------------------ transforms
    def two_theta(self, x, y) -> np.ndarray:
        """Scattering angle 2-theta in degrees at braggtrack pixel positions (x, y)."""
        d1, d2 = _as_pixels(x, y)
        return np.degrees(np.asarray(self.integrator.tth(d1, d2), dtype=float)).reshape(d1.shape)

    def chi(self, x, y) -> np.ndarray:
        """Azimuthal angle chi in degrees, (-180, 180] (pyFAI convention)."""
        d1, d2 = _as_pixels(x, y)
        chi = np.degrees(np.asarray(self.integrator.chi(d1, d2), dtype=float)).reshape(d1.shape)
        return np.where(chi <= -180.0, chi + 360.0, chi)

    def q(self, x, y) -> np.ndarray:
        """Scattering vector magnitude in 1/nm (needs a wavelength)."""
        if self.wavelength_m is None:
            raise OptionError("geometry has no wavelength (white beam): q is undefined")
        d1, d2 = _as_pixels(x, y)
        return np.asarray(self.integrator.qFunction(d1, d2), dtype=float).reshape(d1.shape)

    def d_spacing(self, x, y) -> np.ndarray:
        """Lattice-plane spacing in angstrom, 2 pi / q = 20 pi / (q in 1/nm); inf at the beam
        centre."""
        q = self.q(x, y)
        with np.errstate(divide="ignore"):
            return np.where(q > 0, 20.0 * np.pi / np.where(q > 0, q, 1.0), np.inf)


def _as_pixels(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    d1, d2 = np.broadcast_arrays(y, x)
    return np.ascontiguousarray(d1, dtype=float), np.ascontiguousarray(d2, dtype=float)


def _lauetools_two_theta(x, y, dd, xcen, ycen, xbet, xgam, pixel_mm) -> np.ndarray:
    """2-theta (deg) of LaueTools' reflection geometry (kf_direction Z>0), for fitting only.

    Lab frame: y along the beam, z up; the detector normal makes an angle xbet with z and the
    pixel axes are turned by xgam in the detector plane (LaueTools documentation of
    LaueGeometry.calc_uflab).
    """
    b, g = np.radians(xbet), np.radians(xgam)
    xc = (np.asarray(x) - xcen) * pixel_mm
    yc = (np.asarray(y) - ycen) * pixel_mm
    xa = np.cos(-g) * xc - np.sin(-g) * yc
    ya = np.sin(-g) * xc + np.cos(-g) * yc
    mx = xa
    my = dd * np.sin(b) + ya * np.cos(b)
    mz = dd * np.cos(b) - ya * np.sin(b)
    return np.degrees(np.arccos(my / np.sqrt(mx * mx + my * my + mz * mz)))


def _fit_lauetools_rotations(dd, xcen, ycen, xbet, xgam, pixel_mm, shape, base):
    from scipy.optimize import least_squares

    rows, cols = shape if shape is not None else (2 * ycen, 2 * xcen)
    gy, gx = np.meshgrid(np.linspace(0, rows - 1, 15), np.linspace(0, cols - 1, 15),
                         indexing="ij")
    gx, gy = gx.ravel(), gy.ravel()
    target = _lauetools_two_theta(gx, gy, dd, xcen, ycen, xbet, xgam, pixel_mm)

    def residual(r):
        g = Geometry(rot1=r[0], rot2=r[1], **base)
        return g.two_theta(gx, gy) - target

    best = None
    for start in ((0.0, np.pi / 2), (0.0, -np.pi / 2), (np.pi / 2, 0.0), (-np.pi / 2, 0.0)):
        fit = least_squares(residual, np.array(start), xtol=1e-14, ftol=1e-14)
        if best is None or fit.cost < best.cost:
            best = fit
    return float(best.x[0]), float(best.x[1])


# ---------------------------------------------------------------------- tables
def _jacobian_err(func, x, y, x_err, y_err, angle=False) -> np.ndarray:
    """1-sigma error of func(x, y) from independent x_err, y_err (central differences)."""
    fx = func(x + _STEP, y) - func(x - _STEP, y)
    fy = func(x, y + _STEP) - func(x, y - _STEP)
    if angle:  # chi jumps by 360 degrees across the -x axis
        fx = (fx + 180.0) % 360.0 - 180.0
        fy = (fy + 180.0) % 360.0 - 180.0
    fx /= 2 * _STEP
    fy /= 2 * _STEP
    return np.sqrt((fx * x_err) ** 2 + (fy * y_err) ** 2)


def add_geometry(table: pd.DataFrame, geometry: Geometry) -> pd.DataFrame:
    """Add two_theta, chi (and q, d_spacing with a wavelength) with their uncertainties.

    Parameters
    ----------
    table : DataFrame
        Peak or track table with ``x``, ``y`` (braggtrack pixels) and optionally ``x_err``,
        ``y_err`` (missing: taken as 0).
    geometry : Geometry
        The detector geometry.

    Returns
    -------
    DataFrame
        A copy with ``two_theta``, ``two_theta_err``, ``chi``, ``chi_err`` (degrees) and, when
        the geometry has a wavelength, ``q``, ``q_err`` (1/nm), ``d_spacing``,
        ``d_spacing_err`` (angstrom).  Rows whose position is not finite, or (for d) that sit
        on the beam centre, get 0 and ``ok=False`` with reason ``no_position`` /
        ``beam_centre``.

    Examples
    --------
    >>> import pandas as pd
    >>> g = Geometry.simple(100.0, 0.0, 0.0, 100.0, wavelength_A=1.0)
    >>> t = pd.DataFrame({"x": [10.0], "y": [0.0], "x_err": [0.1], "y_err": [0.1]})
    >>> out = add_geometry(t, g)
    >>> round(float(out.two_theta[0]), 4), round(float(out.chi[0]), 1)
    (0.5729, 0.0)
    """
    if not isinstance(geometry, Geometry):
        raise OptionError(f"geometry must be a braggtrack Geometry, not {type(geometry).__name__}")
    missing = [c for c in ("x", "y") if c not in table.columns]
    if missing:
        raise OptionError(f"table lacks column(s) {', '.join(missing)}")
    out = table.copy(deep=False)  # copy-on-write: the caller's table is never changed
    x = out["x"].to_numpy(float)
    y = out["y"].to_numpy(float)
    good = np.isfinite(x) & np.isfinite(y)
    xg, yg = np.where(good, x, 0.0), np.where(good, y, 0.0)

    def err_col(name):
        if name not in out.columns:
            return np.zeros(len(out))
        e = out[name].to_numpy(float)
        return np.where(np.isfinite(e), e, 0.0)

    xe, ye = err_col("x_err"), err_col("y_err")
    bad = ~good
    out["two_theta"] = np.where(good, geometry.two_theta(xg, yg), 0.0)
    out["two_theta_err"] = np.where(good, _jacobian_err(geometry.two_theta, xg, yg, xe, ye), 0.0)
    out["chi"] = np.where(good, geometry.chi(xg, yg), 0.0)
    out["chi_err"] = np.where(good, _jacobian_err(geometry.chi, xg, yg, xe, ye, angle=True), 0.0)
    reasons = np.where(bad, "no_position", "")
    if geometry.wavelength_m is not None:
        q = geometry.q(xg, yg)
        q_err = _jacobian_err(geometry.q, xg, yg, xe, ye)
        at_centre = good & ~(q > 0)
        ok_d = good & (q > 0)
        safe_q = np.where(ok_d, q, 1.0)
        d = 20.0 * np.pi / safe_q
        out["q"] = np.where(good, q, 0.0)
        out["q_err"] = np.where(good, q_err, 0.0)
        out["d_spacing"] = np.where(ok_d, d, 0.0)
        out["d_spacing_err"] = np.where(ok_d, d * q_err / safe_q, 0.0)
        reasons = np.where(at_centre, "beam_centre", reasons)
    flagged = reasons != ""
    if flagged.any():
        ok = out["ok"].to_numpy(bool) if "ok" in out.columns else np.ones(len(out), bool)
        old = (out["reason"].astype(str).to_numpy() if "reason" in out.columns
               else np.full(len(out), "", dtype=object))
        out["ok"] = ok & ~flagged
        out["reason"] = np.where(flagged & (old == ""), reasons, old)
    return out


def _reference_rows(tracks: pd.DataFrame, reference_frame: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Row position of each row's reference (same particle) and the reference frame used."""
    frame = tracks["frame"].to_numpy()
    if reference_frame is None:
        key = frame.astype(float)
    else:
        key = np.abs(frame.astype(float) - float(reference_frame))
    order = pd.DataFrame({"p": tracks["particle"].to_numpy(), "k": key, "f": frame,
                          "row": np.arange(len(tracks))})
    ref = order.sort_values(["p", "k", "f"], kind="stable").drop_duplicates("p")
    ref_row = ref.set_index("p")["row"]
    rows = ref_row.reindex(order["p"]).to_numpy()
    return rows, frame[rows]


def add_strain(
    tracks: pd.DataFrame,
    *,
    reference_frame: int | None = None,
    d_ref: float | pd.Series | dict | None = None,
) -> pd.DataFrame:
    """Add lattice strain ``d / d_ref - 1`` along each trajectory.

    Strain against a reference frame needs no wavelength: at a fixed wavelength d is
    proportional to ``1 / sin(theta)`` (Bragg), so ``strain = sin(theta_ref) / sin(theta) - 1``
    from ``two_theta`` alone, and that is what is computed when the table has no
    ``d_spacing`` (a geometry without a wavelength).  Only ``d_ref`` (an absolute d-spacing)
    needs a wavelength.

    Parameters
    ----------
    tracks : DataFrame
        Linked table with ``particle``, ``frame`` and ``d_spacing`` (+ ``d_spacing_err``) from
        :func:`add_geometry`, or without ``d_spacing`` ``two_theta`` (+ ``two_theta_err``,
        degrees).  Not meaningful for white-beam Laue spots, whose wavelength differs from
        spot to spot (use :func:`add_radial_shift`).
    reference_frame : int, optional
        Frame whose d is the reference of each particle; ``None``: each particle's first frame.
        A particle absent from that frame uses its frame nearest to it (column
        ``strain_ref_frame`` says which).
    d_ref : float, Series or dict, optional
        Unstrained d-spacing (angstrom), one value or one per particle id; overrides
        ``reference_frame``.

    Returns
    -------
    DataFrame
        A copy with ``strain``, ``strain_err`` (dimensionless) and ``strain_ref_frame`` (int,
        -1 when ``d_ref`` was given).  The reference point itself has strain 0 and error 0.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"particle": [0, 0], "frame": [0, 1], "d_spacing": [2.0, 2.002],
    ...                   "d_spacing_err": [0.0, 0.0]})
    >>> [round(v, 6) for v in add_strain(t)["strain"]]
    [0.0, 0.001]

    Without a wavelength, from two_theta (20 -> 19.98 degrees: d grew by
    sin(10 deg) / sin(9.99 deg) - 1):

    >>> t = pd.DataFrame({"particle": [0, 0], "frame": [0, 1], "two_theta": [20.0, 19.98]})
    >>> [round(v, 6) for v in add_strain(t)["strain"]]
    [0.0, 0.000991]
    """
    for col in ("particle", "frame"):
        if col not in tracks.columns:
            raise OptionError(f"track table lacks column {col}")
    out = tracks.reset_index(drop=True)  # copy-on-write: columns are shared until replaced
    if "d_spacing" in out.columns:
        value = out["d_spacing"].to_numpy(float)
        err = out["d_spacing_err"].to_numpy(float) if "d_spacing_err" in out.columns else 0 * value
    elif "two_theta" in out.columns:
        if d_ref is not None:
            raise OptionError("d_ref (an absolute d-spacing) needs a wavelength; without one, "
                              "strain is taken against a reference frame (reference_frame)")
        # d is proportional to 1 / sin(theta) at fixed wavelength
        theta = np.radians(out["two_theta"].to_numpy(float)) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            value = 1.0 / np.sin(theta)
            tt_err = (np.radians(out["two_theta_err"].to_numpy(float)) / 2
                      if "two_theta_err" in out.columns else 0 * value)
            err = np.abs(value * np.cos(theta) / np.sin(theta)) * tt_err
    else:
        raise OptionError("add_strain needs d_spacing or two_theta (run add_geometry first)")
    valid = np.isfinite(value) & (value > 0)
    err = np.where(np.isfinite(err), err, 0.0)
    if d_ref is not None:
        if np.isscalar(d_ref):
            ref = np.full(len(out), float(d_ref))
        else:
            ref = pd.Series(d_ref).reindex(out["particle"]).to_numpy(float)
            if not np.isfinite(ref).all():
                raise OptionError("d_ref lacks a value for some particles")
        if not (ref > 0).all():
            raise OptionError("d_ref must be positive")
        strain = value / ref - 1.0
        strain_err = err / ref
        ref_frame = np.full(len(out), -1, dtype=np.int64)
    else:
        rows, ref_frame = _reference_rows(out, reference_frame)
        ref, ref_err = value[rows], err[rows]
        valid &= np.isfinite(ref) & (ref > 0)
        safe = np.where(valid, ref, 1.0)
        strain = value / safe - 1.0
        strain_err = np.sqrt((err / safe) ** 2 + (value * ref_err / safe**2) ** 2)
        is_ref = rows == np.arange(len(out))
        strain_err = np.where(is_ref, 0.0, strain_err)
    out["strain"] = np.where(valid, strain, 0.0)
    out["strain_err"] = np.where(valid, strain_err, 0.0)
    out["strain_ref_frame"] = np.asarray(ref_frame, dtype=np.int64)
    if not valid.all():
        ok = out["ok"].to_numpy(bool) if "ok" in out.columns else np.ones(len(out), bool)
        old = (out["reason"].astype(str).to_numpy() if "reason" in out.columns
               else np.full(len(out), "", dtype=object))
        out["ok"] = ok & valid
        out["reason"] = np.where(~valid & (old == ""), "no_strain", old)
    return out


def add_radial_shift(
    tracks: pd.DataFrame,
    beam_centre: tuple[float, float],
    *,
    reference_frame: int | None = None,
) -> pd.DataFrame:
    """Add the change of distance from the beam centre along each trajectory (no geometry).

    Parameters
    ----------
    tracks : DataFrame
        Linked table with ``particle``, ``frame``, ``x``, ``y`` (and ``x_err``, ``y_err``).
    beam_centre : (float, float)
        Beam centre (x, y) in braggtrack pixels.
    reference_frame : int, optional
        As in :func:`add_strain`; ``None``: each particle's first frame.

    Returns
    -------
    DataFrame
        A copy with ``radial_shift``, ``radial_shift_err`` (pixels; positive = away from the
        beam, i.e. larger two_theta, smaller d) and ``radial_shift_ref_frame``.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"particle": 0, "frame": [0, 1], "x": [110.0, 110.5], "y": [50.0, 50.0]})
    >>> add_radial_shift(t, (10.0, 50.0))["radial_shift"].tolist()
    [0.0, 0.5]
    """
    for col in ("particle", "frame", "x", "y"):
        if col not in tracks.columns:
            raise OptionError(f"track table lacks column {col}")
    bx, by = (float(v) for v in beam_centre)
    out = tracks.reset_index(drop=True)  # copy-on-write: columns are shared until replaced
    dx = out["x"].to_numpy(float) - bx
    dy = out["y"].to_numpy(float) - by
    r = np.hypot(dx, dy)
    xe = out["x_err"].to_numpy(float) if "x_err" in out.columns else np.zeros(len(out))
    ye = out["y_err"].to_numpy(float) if "y_err" in out.columns else np.zeros(len(out))
    safe_r = np.where(r > 0, r, 1.0)
    r_err = np.sqrt((dx * xe) ** 2 + (dy * ye) ** 2) / safe_r
    r_err = np.where(np.isfinite(r_err), r_err, 0.0)
    rows, ref_frame = _reference_rows(out, reference_frame)
    shift = r - r[rows]
    err = np.sqrt(r_err**2 + r_err[rows] ** 2)
    err = np.where(rows == np.arange(len(out)), 0.0, err)
    valid = np.isfinite(shift)
    out["radial_shift"] = np.where(valid, shift, 0.0)
    out["radial_shift_err"] = np.where(valid, err, 0.0)
    out["radial_shift_ref_frame"] = np.asarray(ref_frame, dtype=np.int64)
    return out


_SYSTEMS = ("cubic", "tetragonal", "hexagonal")


def lattice_parameter(
    d_spacing,
    hkl,
    system: str = "cubic",
    *,
    c_over_a: float | None = None,
    d_err=None,
    parameter: str = "a",
) -> tuple[np.ndarray, np.ndarray]:
    """Lattice parameter from d-spacings of indexed reflections, with its uncertainty.

    Cubic: ``a = d sqrt(h2 + k2 + l2)``.  Tetragonal: ``1/d2 = (h2 + k2)/a2 + l2/c2``.
    Hexagonal: ``1/d2 = 4/3 (h2 + hk + k2)/a2 + l2/c2``.  One reflection gives one number, so for
    tetragonal and hexagonal cells:

    * (hk0) reflections give ``a`` directly;
    * (00l) reflections give ``c = l d`` directly (``parameter="c"``);
    * mixed reflections (h or k, and l, non-zero) need a known ``c_over_a``; then either
      parameter can be returned (``c = a * c_over_a``).

    Parameters
    ----------
    d_spacing : array_like
        d-spacings, angstrom.
    hkl : array_like
        One (h, k, l) for all, or one per d-spacing, shape (n, 3).
    system : {"cubic", "tetragonal", "hexagonal"}
    c_over_a : float, optional
        Known axial ratio c/a.
    d_err : array_like, optional
        1-sigma uncertainty of d (angstrom); the result's error is ``d_err * a / d``.
    parameter : {"a", "c"}

    Returns
    -------
    (value, err) : tuple of ndarray
        Lattice parameter and its 1-sigma uncertainty, angstrom.

    Examples
    --------
    >>> a, a_err = lattice_parameter(3.1356, (1, 1, 1), d_err=0.0001)
    >>> round(float(a[0]), 3), round(float(a_err[0]), 5)
    (5.431, 0.00017)
    """
    if system not in _SYSTEMS:
        raise OptionError(f"unknown crystal system {system!r}; use one of {', '.join(_SYSTEMS)}")
    if parameter not in ("a", "c"):
        raise OptionError(f"parameter must be 'a' or 'c', got {parameter!r}")
    try:
        d = np.atleast_1d(np.asarray(d_spacing, dtype=float))
        hkl = np.asarray(hkl, dtype=float)
    except (TypeError, ValueError):
        raise OptionError("d_spacing and hkl must be numbers") from None
    if d.ndim != 1:
        raise OptionError(f"d_spacing must be one value or a 1-D array, got shape {d.shape}")
    if hkl.shape == (3,):
        hkl = np.broadcast_to(hkl, (len(d), 3))
    if hkl.shape != (len(d), 3):
        raise OptionError(f"hkl must be three integers (h, k, l) or of shape ({len(d)}, 3), "
                          f"got shape {hkl.shape}")
    if not np.isfinite(hkl).all():
        raise OptionError("hkl must hold finite numbers")
    if np.any(np.all(hkl == 0, axis=1)):
        raise OptionError("hkl (0, 0, 0) is not a reflection")
    if c_over_a is not None and not c_over_a > 0:
        raise OptionError(f"c_over_a must be positive, got {c_over_a}")
    h, k, l_ = hkl.T
    if system == "cubic":
        if parameter == "c":
            raise OptionError("a cubic cell has only the parameter a")
        factor = np.sqrt(h * h + k * k + l_ * l_)
    else:
        in_plane = h * h + k * k if system == "tetragonal" else 4.0 / 3.0 * (h * h + h * k + k * k)
        if c_over_a is None:
            if parameter == "a" and np.any(l_ != 0):
                raise OptionError(
                    f"{system}: a from reflections with l != 0 needs c_over_a (use (hk0) "
                    "reflections, or parameter='c' with (00l))"
                )
            if parameter == "c" and np.any(in_plane > 0):
                raise OptionError(
                    f"{system}: c from reflections with h or k != 0 needs c_over_a "
                    "(use (00l) reflections)"
                )
            factor = np.sqrt(in_plane) if parameter == "a" else np.abs(l_)
        else:
            # d * sqrt(in_plane + l^2 / r^2) = a ; c = r a
            factor = np.sqrt(in_plane + (l_ / c_over_a) ** 2)
            if parameter == "c":
                factor = factor * c_over_a
    value = d * factor
    if d_err is None:
        return value, np.zeros_like(value)
    try:
        d_err = np.broadcast_to(np.asarray(d_err, dtype=float), d.shape)
    except (TypeError, ValueError):
        raise OptionError(f"d_err must be one number or one per d-spacing ({len(d)})") from None
    return value, np.abs(d_err * factor)
