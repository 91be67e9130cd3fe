"""Frame corrections before peak detection: dark, flat, mask, binning, threshold.

Plain functions on 2-D numpy arrays, and :class:`Preprocessor`, a frozen dataclass that
chains them for every frame of a series:

``frame -> mask (file | saturated | hot | non-finite) -> dark subtraction -> flat field
-> masked pixels set to 0 -> full`` (float32, full resolution, what patches are cut
from) and ``full -> threshold (counts below -> 0) -> N x N binning (sum) -> image``
(what detection runs on).

Conventions:

- Positions in binned images map back to full resolution with
  :func:`binned_to_full` (``f * b + (f - 1) / 2``, DESIGN.md): binned pixel ``b`` covers
  full pixels ``f*b .. f*b + f - 1`` whose centre is that value.
- A binning factor that does not divide the frame crops the last rows/columns that do
  not fill a whole bin (documented choice: binning starts at pixel 0, so positions are
  unaffected; at most ``f - 1`` edge rows/columns are dropped from detection).
- Dark subtraction clips negative results to 0: negative counts are noise around a dark
  level, and detection (persistence of super-level sets) and the 0..255 score assume
  non-negative images.
- Thresholds are compared in the frame's own dtype where the frame is an integer type
  (``img > 15.0`` on uint32 promotes the whole frame to float64).

Hot-pixel detection is hand-written (a few lines of numpy) because no well-kept library
offers the rule needed here: a hot pixel is a single pixel far above *all* of its eight
neighbours, whereas a real Bragg peak, however sharp, raises its neighbours too.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import InputFileError, OptionError

__all__ = [
    "subtract_dark",
    "load_dark",
    "apply_flat",
    "load_mask",
    "auto_mask",
    "bin_frame",
    "apply_threshold",
    "robust_threshold",
    "robust_sigma",
    "binned_to_full",
    "full_to_binned",
    "Preprocessor",
    "PreparedFrame",
]

_MAD_TO_SIGMA = 1.4826


def _as_2d(frame, what: str = "frame") -> np.ndarray:
    arr = np.asarray(frame)
    if arr.ndim != 2:
        raise OptionError(f"{what} must be a 2-D array, got shape {arr.shape}")
    return arr


def _same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise OptionError(
            f"{what} shape {b.shape[0]} x {b.shape[1]} does not match the frame's "
            f"{a.shape[0]} x {a.shape[1]}"
        )


def subtract_dark(frame: np.ndarray, dark: np.ndarray) -> np.ndarray:
    """Frame minus dark, as float32, negative results clipped to 0.

    Parameters
    ----------
    frame, dark : ndarray
        2-D arrays of the same shape.

    Returns
    -------
    ndarray
        float32, ``max(frame - dark, 0)``; NaN stays NaN (masked later).

    Examples
    --------
    >>> import numpy as np
    >>> subtract_dark(np.array([[10, 3]], np.uint16), np.array([[4.0, 5.0]])).tolist()
    [[6.0, 0.0]]
    """
    frame = _as_2d(frame)
    dark = _as_2d(dark, "dark")
    _same_shape(frame, dark, "dark")
    out = np.subtract(frame, dark, dtype=np.float32)
    np.maximum(out, 0, out=out)  # NaN propagates through maximum, so it stays visible
    return out


def load_dark(path: str | os.PathLike | Sequence[str | os.PathLike]) -> np.ndarray:
    """Dark image: per-pixel median of all frames of one file or of several files.

    Parameters
    ----------
    path : path or list of paths
        Any format :func:`braggtrack.io.open_frames` reads; every frame of every file
        takes part in the median (held in memory as float32).

    Returns
    -------
    ndarray
        2-D float32.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for k, v in enumerate((1.0, 9.0, 3.0)):
    ...     np.save(d / f"dark{k}.npy", np.full((2, 2), v))
    >>> load_dark(sorted(d.glob("*.npy")))[0, 0]
    np.float32(3.0)
    """
    from .io import open_frames

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        raise OptionError("load_dark needs at least one file")
    frames: list[np.ndarray] = []
    shape = None
    for p in paths:
        with open_frames(p) as series:
            if shape is None:
                shape = series.shape
            elif series.shape != shape:
                raise InputFileError(
                    p, f"dark frames {series.shape} differ in shape from the first file's {shape}"
                )
            for i in range(len(series)):
                frames.append(series[i].astype(np.float32))
    if len(frames) == 1:
        return frames[0]
    return np.median(np.stack(frames), axis=0).astype(np.float32)


def apply_flat(frame: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Divide by a flat-field (gain) image normalised to median 1.

    The flat is divided by the median of its valid pixels first, so the result stays in
    counts.  Pixels where the flat is not finite or ``<= 0`` become 0 (and
    :class:`Preprocessor` masks them).

    Parameters
    ----------
    frame, flat : ndarray
        2-D arrays of the same shape.

    Returns
    -------
    ndarray
        float32.

    Examples
    --------
    >>> import numpy as np
    >>> apply_flat(np.array([[10.0, 10.0, 10.0]]), np.array([[1.0, 2.0, 0.0]])).tolist()
    [[15.0, 7.5, 0.0]]
    """
    frame = _as_2d(frame)
    flat = _as_2d(flat, "flat").astype(np.float32, copy=False)
    _same_shape(frame, flat, "flat")
    good = np.isfinite(flat) & (flat > 0)
    if not good.any():
        raise OptionError("flat field has no positive pixel")
    gain = flat / np.float32(np.median(flat[good]))
    out = np.zeros(frame.shape, np.float32)
    np.divide(frame, gain, out=out, where=good, dtype=np.float32)
    return out


def load_mask(path: str | os.PathLike | np.ndarray, *, invert: bool = False) -> np.ndarray:
    """Bad-pixel mask from a file: nonzero (or NaN) = bad pixel.

    Parameters
    ----------
    path : path or ndarray
        TIFF, npy, EDF, HDF5, ... (first frame) or a 2-D array.
    invert : bool
        For masks where nonzero means *good* pixel.

    Returns
    -------
    ndarray
        2-D bool, True = bad.

    Examples
    --------
    >>> import numpy as np
    >>> load_mask(np.array([[0, 1], [2, 0]])).tolist()
    [[False, True], [True, False]]
    """
    from .io import load_image

    img = np.asarray(path) if isinstance(path, np.ndarray) else load_image(path)
    img = _as_2d(img, "mask")
    bad = img != 0
    if img.dtype.kind == "f":
        bad |= np.isnan(img)
    return ~bad if invert else bad


def robust_sigma(frame: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """Median and MAD-based sigma (1.4826 * MAD) of the finite, unmasked pixels.

    Large frames are subsampled on a regular grid (at least ~250,000 pixels), which
    changes the estimate by far less than its own noise and keeps it fast.

    Examples
    --------
    >>> import numpy as np
    >>> robust_sigma(np.array([[1.0, 2.0, 3.0, 100.0]]))
    (2.5, 1.4826)
    """
    frame = _as_2d(frame)
    step = max(1, int(np.sqrt(frame.size / 250_000)))
    sub = frame[::step, ::step]
    if mask is not None:
        sub = sub[~np.asarray(mask, bool)[::step, ::step]]
    sub = sub.ravel()
    if sub.dtype.kind == "f":
        sub = sub[np.isfinite(sub)]
    if sub.size == 0:
        return 0.0, 0.0
    med = float(np.median(sub))
    mad = float(np.median(np.abs(sub.astype(np.float64) - med)))
    return med, _MAD_TO_SIGMA * mad


def robust_threshold(
    frame: np.ndarray,
    nsigma: float = 5.0,
    mask: np.ndarray | None = None,
    *,
    stats: tuple[float, float] | None = None,
) -> float:
    """Noise threshold ``median + nsigma * 1.4826 * MAD``, insensitive to the peaks.

    The median and MAD ignore the few bright peak pixels, so the threshold follows the
    background (e.g. about 1,060 counts on the Laue frame with its ~1,000-count pedestal).

    A sparse frame, where more than half the pixels share one value (typically 0 after
    an upstream threshold, as in HEXRD frame caches), has no measurable noise (MAD = 0).
    The threshold is then the smallest value above that common value: every pixel the
    upstream thresholding kept is kept, and persistence decides what is a peak.

    Parameters
    ----------
    frame : ndarray
        2-D frame.
    nsigma : float
        Number of robust standard deviations above the median.
    mask : ndarray of bool, optional
        Pixels to ignore (True = bad).
    stats : (median, sigma), optional
        :func:`robust_sigma` of the frame when already known (saves a pass).

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> frame = rng.normal(100, 2, (64, 64)); frame[30, 30] = 5000
    >>> 105 < robust_threshold(frame) < 115
    True
    >>> robust_threshold(np.array([[0, 0, 0, 6, 9]]))
    6.0
    """
    if not (nsigma >= 0):
        raise OptionError(f"nsigma must be >= 0, got {nsigma}")
    frame = _as_2d(frame)
    med, sigma = robust_sigma(frame, mask) if stats is None else stats
    if sigma > 0:
        return med + nsigma * sigma
    values = frame if mask is None else frame[~np.asarray(mask, bool)]
    above = values[values > med]
    if above.size and above.dtype.kind == "f":
        above = above[np.isfinite(above)]
    return float(above.min()) if above.size else med


def _dtype_threshold(frame: np.ndarray, threshold: float):
    """``threshold`` as a scalar of the frame's dtype with the same ``frame < t`` result."""
    dt = frame.dtype
    if dt.kind in "iu":
        info = np.iinfo(dt)
        t = np.ceil(threshold)  # for integers, v < t  <=>  v < ceil(t)
        return dt.type(min(max(t, info.min), info.max)), t > info.max
    if dt.kind == "f":
        return dt.type(threshold), False
    return threshold, False


def apply_threshold(frame: np.ndarray, threshold: float) -> np.ndarray:
    """Copy of ``frame`` with values below ``threshold`` set to 0 (same dtype).

    The comparison is done in the frame's own dtype (no promotion to float64).

    Examples
    --------
    >>> import numpy as np
    >>> apply_threshold(np.array([[3, 5, 8]], np.uint32), 4.5).tolist()
    [[0, 5, 8]]
    """
    frame = np.asarray(frame)
    if threshold is None or not np.isfinite(threshold):
        raise OptionError(f"threshold must be a finite number, got {threshold}")
    t, all_below = _dtype_threshold(frame, float(threshold))
    out = frame.copy()
    if all_below:
        out[...] = 0
    else:
        out[frame < t] = 0
    return out


def _neighbours8(frame: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Values of the 8 neighbours of each (row, col), NaN outside the frame: (n, 8) float64."""
    h, w = frame.shape
    out = np.empty((len(rows), 8), np.float64)
    k = 0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            r, c = rows + dy, cols + dx
            inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            vals = frame[np.clip(r, 0, h - 1), np.clip(c, 0, w - 1)].astype(np.float64)
            out[:, k] = np.where(inside, vals, np.nan)
            k += 1
    if frame.dtype.kind == "f":
        out[~np.isfinite(out) & ~np.isnan(out)] = np.nan
    return out


def saturated_mask(frame: np.ndarray, saturation: float | None = None) -> np.ndarray:
    """Saturated (``>= saturation``, or the integer dtype's maximum) and non-finite pixels."""
    frame = _as_2d(frame)
    bad = np.zeros(frame.shape, bool)
    if frame.dtype.kind == "f":
        bad |= ~np.isfinite(frame)
    if saturation is not None:
        t, above = _dtype_threshold(frame, float(saturation))
        if not above:
            bad |= frame >= t
    elif frame.dtype.kind in "iu":
        bad |= frame == np.iinfo(frame.dtype).max
    return bad


def hot_pixels(
    frame: np.ndarray,
    *,
    stats: tuple[float, float] | None = None,
    bad: np.ndarray | None = None,
    hot_sigma: float = 10.0,
    hot_ratio: float = 0.05,
) -> np.ndarray:
    """Mask of hot pixels: single pixels far above *all* their 8 neighbours (see :func:`auto_mask`).

    Only pixels that rise ``(1 - hot_ratio) * hot_sigma`` robust sigmas above the median
    can be hot, so only those few are examined: the cost is one comparison pass over the
    frame plus work proportional to the bright pixels.
    """
    frame = _as_2d(frame)
    out = np.zeros(frame.shape, bool)
    if frame.shape[0] < 3 or frame.shape[1] < 3 or not hot_sigma > 0:
        return out
    med, sigma = robust_sigma(frame, bad) if stats is None else stats
    if frame.dtype.kind in "iub":
        sigma = max(sigma, 1.0)
    sparse = med == 0 and frame.dtype.kind in "iuf" and sigma <= 1.0
    pre, all_below = _dtype_threshold(frame, med + (1.0 - hot_ratio) * hot_sigma * sigma)
    if all_below:
        return out
    cand = np.flatnonzero(frame > pre)
    if bad is not None and cand.size:
        cand = cand[~bad.ravel()[cand]]
    if cand.size == 0:
        return out
    rows, cols = np.divmod(cand, frame.shape[1])
    centre = frame.ravel()[cand].astype(np.float64)
    neigh = _neighbours8(frame, rows, cols)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: 1x1 islands at corners
        local_max = centre > np.nanmax(neigh, axis=1)
        rows, cols, centre, neigh = (rows[local_max], cols[local_max], centre[local_max],
                                     neigh[local_max])
        if rows.size == 0:
            return out
        bg = np.nanmin(neigh, axis=1)
        top = np.nanmax(neigh, axis=1)
    if sparse:
        # A neighbour stored as 0 may have been anything below the upstream threshold.
        pos = frame[frame > 0]
        top = np.maximum(top, float(pos.min()) if pos.size else 0.0)
    height = centre - bg
    hot = (height > hot_sigma * sigma) & ((top - bg) < hot_ratio * height)
    out[rows[hot], cols[hot]] = True
    return out


def auto_mask(
    frame: np.ndarray,
    saturation: float | None = None,
    hot_sigma: float = 10.0,
    hot_ratio: float = 0.05,
) -> np.ndarray:
    """Mask of saturated, hot and non-finite pixels (True = bad).

    - saturated: ``frame >= saturation``, or, when ``saturation`` is None and the frame
      is an integer type, pixels at the dtype maximum (e.g. 65535 for uint16; detectors
      also use it as a bad-pixel flag);
    - non-finite: NaN and inf;
    - hot (a single pixel far above *all* its 8 neighbours): with ``bg`` the lowest of
      the 8 neighbours and ``sigma`` the frame's robust noise (at least 1 count for
      integer frames), the pixel stands ``> hot_sigma * sigma`` above ``bg`` and its
      brightest neighbour rises less than ``hot_ratio`` of that height above ``bg``.
      A real peak, even a sharp one (pixel-integrated Gaussian, sigma >= 0.35 px), raises
      its nearest neighbours by more than 8 % of its height, so it is not masked; a hot
      pixel must stand out by about ``1 / hot_ratio`` times the noise spread of its
      neighbours to be caught (conservative on purpose).  In a sparse frame (median 0,
      after an upstream threshold) a neighbour stored as 0 may have been anything below
      that threshold, so it counts as the smallest nonzero value of the frame.

    Parameters
    ----------
    frame : ndarray
        2-D raw frame (its dtype sets the default saturation level).
    saturation : float, optional
        Saturation level in counts.
    hot_sigma : float
        Minimum height of a hot pixel above its neighbours, in robust sigmas.
    hot_ratio : float
        Maximum (brightest neighbour - bg) / (pixel - bg) for a hot pixel.

    Returns
    -------
    ndarray
        2-D bool.

    Examples
    --------
    >>> import numpy as np
    >>> frame = np.full((7, 7), 100, np.uint16)
    >>> frame[1, 1] = 5000                                  # hot pixel
    >>> frame[4:7, 3:6] = [[300, 900, 300], [900, 3000, 900], [300, 900, 300]]  # sharp peak
    >>> frame[0, 6] = 65535                                 # saturated
    >>> np.argwhere(auto_mask(frame)).tolist()
    [[0, 6], [1, 1]]
    """
    frame = _as_2d(frame)
    bad = saturated_mask(frame, saturation)
    return bad | hot_pixels(frame, bad=bad, hot_sigma=hot_sigma, hot_ratio=hot_ratio)


def bin_frame(frame: np.ndarray, factor: int) -> np.ndarray:
    """Sum ``factor x factor`` blocks of pixels (float32).

    A frame whose size is not a multiple of ``factor`` is cropped: the last
    ``H % factor`` rows and ``W % factor`` columns, which do not fill a bin, are dropped.
    Binned pixel ``b`` maps back with :func:`binned_to_full`.

    Parameters
    ----------
    frame : ndarray
        2-D frame.
    factor : int
        Positive integer; 1 returns the frame as float32.

    Returns
    -------
    ndarray
        float32 of shape ``(H // factor, W // factor)``.

    Examples
    --------
    >>> import numpy as np
    >>> bin_frame(np.arange(20).reshape(4, 5), 2).tolist()
    [[12.0, 20.0], [52.0, 60.0]]
    """
    frame = _as_2d(frame)
    if isinstance(factor, bool) or int(factor) != factor or factor < 1:
        raise OptionError(f"binning factor must be a positive integer, got {factor}")
    f = int(factor)
    h, w = frame.shape
    if f > h or f > w:
        raise OptionError(f"binning factor {f} is larger than the {h} x {w} frame")
    if f == 1:
        return frame.astype(np.float32, copy=False)
    hb, wb = h // f, w // f
    blocks = frame[: hb * f, : wb * f].reshape(hb, f, wb, f)
    return blocks.sum(axis=(1, 3), dtype=np.float32)


def binned_to_full(coord, factor: int):
    """Full-resolution coordinate of binned coordinate ``coord``: ``f * b + (f - 1) / 2``.

    Examples
    --------
    >>> binned_to_full(3, 2)
    6.5
    """
    f = int(factor)
    if np.ndim(coord):
        return f * np.asarray(coord, dtype=np.float64) + (f - 1) / 2.0
    return f * float(coord) + (f - 1) / 2.0


def full_to_binned(coord, factor: int):
    """Binned coordinate of full-resolution ``coord``: ``(c - (f - 1) / 2) / f``.

    Examples
    --------
    >>> full_to_binned(6.5, 2)
    3.0
    """
    f = int(factor)
    if np.ndim(coord):
        return (np.asarray(coord, dtype=np.float64) - (f - 1) / 2.0) / f
    return (float(coord) - (f - 1) / 2.0) / f


@dataclass(frozen=True, eq=False)
class PreparedFrame:
    """One frame after :class:`Preprocessor`.

    Attributes
    ----------
    image : ndarray
        float32, thresholded (counts below ``threshold`` -> 0) then binned (sum): what
        detection runs on.
    full : ndarray
        float32, full resolution, dark/flat corrected, masked pixels 0, not thresholded:
        what patches for localization are cut from.
    mask : ndarray
        bool, full resolution, True = bad pixel (file mask | auto mask | non-finite).
    threshold : float
        Threshold used, in full-resolution counts after dark subtraction.
    bin : int
        Binning factor of ``image``.
    noise : float
        Robust standard deviation of the background of ``full`` (1.4826 * MAD), counts; for a
        sparse frame with no measurable noise, the Poisson noise ``sqrt(threshold)``.
    """

    image: np.ndarray
    full: np.ndarray
    mask: np.ndarray
    threshold: float
    bin: int = 1
    noise: float = 0.0


def _load_optional(value, what: str, loader) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (str, os.PathLike)) or (
        what == "dark" and isinstance(value, (list, tuple))
    ):
        return loader(value)
    return _as_2d(np.asarray(value), what)


@dataclass(frozen=True, eq=False)
class Preprocessor:
    """Corrections applied to every frame; call it on a raw frame.

    Parameters
    ----------
    dark : ndarray, path or list of paths, optional
        Dark image (files are loaded once, median of their frames).
    flat : ndarray or path, optional
        Flat-field image (see :func:`apply_flat`).
    mask : ndarray or path, optional
        Bad-pixel mask, nonzero = bad.
    auto_mask : bool
        Also mask saturated and hot pixels of each frame (:func:`auto_mask`).
        Non-finite pixels are masked whatever this says.
    bin : int
        Binning factor for ``image``.
    threshold : float, optional
        Counts (after dark subtraction) below which pixels are set to 0; ``None``:
        :func:`robust_threshold` of each frame with ``nsigma``.
    nsigma : float
        For the automatic threshold.
    saturation : float, optional
        Saturation level for :func:`auto_mask` (default: dtype maximum).
    hot_sigma : float
        For :func:`auto_mask`.

    Examples
    --------
    >>> import numpy as np
    >>> frame = np.full((8, 8), 100, np.uint16)
    >>> frame[3:6, 3:6] = [[300, 500, 300], [500, 900, 500], [300, 500, 300]]
    >>> p = Preprocessor(dark=np.full((8, 8), 90.0), bin=2, threshold=50)(frame)
    >>> p.full[4, 4], p.image.shape, p.image[2, 2]
    (np.float32(810.0), (4, 4), np.float32(1840.0))
    """

    dark: np.ndarray | None = None
    flat: np.ndarray | None = None
    mask: np.ndarray | None = None
    auto_mask: bool = True
    bin: int = 1
    threshold: float | None = None
    nsigma: float = 5.0
    saturation: float | None = None
    hot_sigma: float = 10.0
    _flat_gain_bad: np.ndarray | None = field(default=None, repr=False, init=False)

    def __post_init__(self) -> None:
        from .io import load_image

        if isinstance(self.bin, bool) or int(self.bin) != self.bin or self.bin < 1:
            raise OptionError(f"bin must be a positive integer, got {self.bin}")
        if self.threshold is not None and not (np.isfinite(self.threshold) and self.threshold >= 0):
            raise OptionError(f"threshold must be >= 0 counts, got {self.threshold}")
        if not (self.nsigma >= 0):
            raise OptionError(f"nsigma must be >= 0, got {self.nsigma}")
        dark = _load_optional(self.dark, "dark", load_dark)
        flat = _load_optional(self.flat, "flat", lambda p: load_image(p).astype(np.float32))
        mask = _load_optional(self.mask, "mask", load_mask)
        if dark is not None:
            dark = _as_2d(dark, "dark").astype(np.float32, copy=False)
        if flat is not None:
            flat = _as_2d(flat, "flat").astype(np.float32, copy=False)
            object.__setattr__(self, "_flat_gain_bad", ~(np.isfinite(flat) & (flat > 0)))
        if mask is not None:
            mask = _as_2d(mask, "mask")
            mask = mask if mask.dtype == bool else (mask != 0)
        object.__setattr__(self, "dark", dark)
        object.__setattr__(self, "flat", flat)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "bin", int(self.bin))

    def __call__(self, frame: np.ndarray) -> PreparedFrame:
        frame = _as_2d(frame)
        for name in ("dark", "flat", "mask"):
            ref = getattr(self, name)
            if ref is not None:
                _same_shape(frame, ref, name)
        bad = np.zeros(frame.shape, bool) if self.mask is None else self.mask.copy()
        if self.auto_mask:
            bad |= saturated_mask(frame, self.saturation)
        elif frame.dtype.kind == "f":
            bad |= ~np.isfinite(frame)
        if self.dark is not None:
            full = subtract_dark(frame, self.dark)
        else:
            full = frame.astype(np.float32)  # always a copy: we write into it below
        if self.flat is not None:
            full = apply_flat(full, self.flat)
            bad |= self._flat_gain_bad
        bad |= ~np.isfinite(full)
        full[bad] = 0
        # One robust estimate per frame serves the hot-pixel test, the threshold and the noise.
        stats = robust_sigma(full, bad)
        if self.auto_mask:
            # On the corrected frame: a pixel hot in the dark too is no longer hot here.
            hot = hot_pixels(full, stats=stats, bad=bad, hot_sigma=self.hot_sigma)
            bad |= hot
            full[hot] = 0
        if self.threshold is None:
            t = robust_threshold(full, self.nsigma, mask=bad, stats=stats)
        else:
            t = float(self.threshold)
        sigma = stats[1]
        # A sparse frame (upstream-thresholded, MAD = 0) has no measurable noise: take the
        # Poisson noise of the smallest kept value instead.
        noise = sigma if sigma > 0 else float(np.sqrt(max(t, 0.0)))
        image = bin_frame(apply_threshold(full, t) if t > 0 else full.copy(), self.bin)
        return PreparedFrame(image=image, full=full, mask=bad, threshold=float(t), bin=self.bin,
                             noise=noise)
