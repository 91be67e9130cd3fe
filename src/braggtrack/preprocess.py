"""Frame corrections before peak detection: dark, flat, mask, binning, threshold.

Plain functions on 2-D numpy arrays, and :class:`Preprocessor`, a frozen dataclass that
chains them for every frame of a series:

``frame -> mask (file | saturated | flagged | hot | non-finite) -> dark subtraction ->
flat field -> masked pixels set to 0 -> full`` (float32, full resolution, what patches
are cut from) and ``full -> threshold (counts below -> 0) -> N x N binning (sum) -> image``
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .config import check_background
from .detect import _above, _jit
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
    "negative_flag_warning",
]

_MAD_TO_SIGMA = 1.4826
# Default of ``hot_ratio`` (see :func:`auto_mask`), also what :class:`Preprocessor` uses.
_HOT_RATIO = 0.05
# Pixels the robust statistics look at (a regular grid over larger frames).
_STAT_SAMPLES = 32_768


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
    dark = frames[0] if len(frames) == 1 else np.median(np.stack(frames), axis=0).astype(
        np.float32)
    where = paths[0] if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} more)"
    finite = np.isfinite(dark)
    if not finite.any():
        raise InputFileError(where, "the dark holds no finite value")
    if finite.mean() < 0.99:
        # Each such pixel is masked (a NaN dark pixel makes the corrected pixel NaN).
        import logging

        logging.getLogger("braggtrack").warning(
            "%s: %.1f %% of the dark's pixels are not finite; they are masked", where,
            100 * (1 - finite.mean()))
    return dark


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
        TIFF, npy, EDF, HDF5, ... (first frame; for HDF5 a ``pixel_mask`` or other
        mask-named dataset first, see :func:`braggtrack.io.load_mask_file`) or a 2-D array.
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
    from .io import load_mask_file

    # The file reader knows masks (an Eiger master's pixel_mask, not its first frame) and
    # warns about one that marks most pixels bad, for arrays as for files.
    if isinstance(path, np.ndarray):
        path = _as_2d(np.asarray(path), "mask")
    return load_mask_file(path, invert=invert)


def robust_sigma(frame: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """Median and MAD-based sigma (1.4826 * MAD) of the finite, unmasked pixels.

    Large frames are subsampled on a regular grid (at least ~32,000 pixels: the
    estimate's own relative error is then under 1 %, a 0.05-sigma shift of a 5-sigma
    threshold), which keeps it fast.

    Examples
    --------
    >>> import numpy as np
    >>> robust_sigma(np.array([[1.0, 2.0, 3.0, 100.0]]))
    (2.5, 1.4826)
    """
    frame = _as_2d(frame)
    step = _sample_step(frame.shape)
    sub = frame[::step, ::step]
    if mask is not None:
        sub = sub[~np.asarray(mask, bool)[::step, ::step]]
    sub = sub.ravel()
    if sub.dtype.kind == "f":
        sub = sub[np.isfinite(sub)]
    return _median_mad(sub)


def _sample_step(shape: tuple[int, int]) -> int:
    return max(1, int(np.sqrt(shape[0] * shape[1] / _STAT_SAMPLES)))


def _median_mad(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return 0.0, 0.0
    med = float(np.median(values))
    mad = float(np.median(np.abs(values.astype(np.float64) - med)))
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


@_jit
def _neighbour_range(frame, cand):  # pragma: no cover - compiled
    """For each candidate (flat index): is it above all its 8 neighbours, and their lowest
    and highest value. Neighbours outside the frame or not finite take no part; with none
    left, the pixel is not a maximum."""
    height, width = frame.shape
    n = cand.size
    is_max = np.zeros(n, np.bool_)
    low = np.zeros(n)
    high = np.zeros(n)
    for k in range(n):
        r = cand[k] // width
        c = cand[k] - r * width
        lo = np.inf
        hi = -np.inf
        for dr in range(-1, 2):
            for dc in range(-1, 2):
                rr = r + dr
                cc = c + dc
                if (dr == 0 and dc == 0) or rr < 0 or rr >= height or cc < 0 or cc >= width:
                    continue
                v = np.float64(frame[rr, cc])
                if not np.isfinite(v):
                    continue
                lo = min(lo, v)
                hi = max(hi, v)
        if hi >= lo:
            is_max[k] = np.float64(frame[r, c]) > hi
            low[k] = lo
            high[k] = hi
    return is_max, low, high


#: Above this fraction of negative pixels, a signed integer frame's negative values are
#: unlikely to be detector flags (a Pilatus 6M's module gaps are ~8 % of its pixels).
NEGATIVE_FLAGS_MAX_FRACTION = 0.2


def negative_flag_warning(frame: np.ndarray, where: str) -> str | None:
    """A one-line warning when a signed integer frame has so many negative pixels that
    masking them as detector flags (what ``auto_mask`` does) would hide data, e.g. frames
    dark-subtracted upstream and stored as integers, or when a 8- or 16-bit frame looks like
    unsigned counts written as signed (values near both ends of its range); None otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> noise = np.random.default_rng(0).normal(0, 5, (32, 32)).round().astype(np.int32)
    >>> negative_flag_warning(noise, "scan.h5").split(":")[0]
    'scan.h5'
    >>> negative_flag_warning(np.abs(noise), "scan.h5") is None
    True
    >>> wrapped = np.array([[5, 40000, 12, 32000]], np.uint16).astype(np.int16)  # -> -25536
    >>> "convert the file to uint16" in negative_flag_warning(wrapped, "s.h5")
    True
    """
    frame = np.asarray(frame)
    if frame.dtype.kind != "i" or frame.size == 0:
        return None
    if frame.dtype.itemsize <= 2:
        low, high = int(frame.min()), int(frame.max())
        info = np.iinfo(frame.dtype)
        if low < info.min // 4 and high > info.max // 2:
            # Flags are small (-1, -2); values near both ends of the range are counts that
            # went past the top and wrapped: an unsigned detector written as signed.
            return (f"{where}: the first frame ({frame.dtype}) holds values down to {low} "
                    f"beside values up to {high}: unsigned counts stored as signed wrap above "
                    f"{info.max}, and auto-mask masks them as detector flags, so the brightest "
                    f"peaks are lost; convert the file to uint{8 * frame.dtype.itemsize}")
    fraction = np.count_nonzero(frame < 0) / frame.size
    if fraction <= NEGATIVE_FLAGS_MAX_FRACTION:
        return None
    return (f"{where}: {100 * fraction:.0f} % of the pixels of the first frame are negative; "
            "auto-mask takes a signed integer frame's negative values for detector flags and "
            "masks them (use --no-auto-mask if they are counts, e.g. dark-subtracted frames)")


def saturated_mask(frame: np.ndarray, saturation: float | None = None) -> np.ndarray:
    """Saturated (``>= saturation``, or the integer dtype's maximum), flagged (negative
    values of a signed integer frame) and non-finite pixels (see :func:`auto_mask`)."""
    frame = _as_2d(frame)
    bad = np.zeros(frame.shape, bool)
    if frame.dtype.kind == "f":
        bad |= ~np.isfinite(frame)
    elif frame.dtype.kind == "i":
        # Detectors that store signed integers (Pilatus: -1 module gap, -2 bad pixel) use
        # negative values as flags; a count is never negative.
        bad |= frame < 0
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
    hot_ratio: float = _HOT_RATIO,
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
    stats = robust_sigma(frame, bad) if stats is None else stats
    pre, all_below, sparse, sigma = _hot_level(frame.dtype, stats, hot_sigma, hot_ratio)
    if all_below:
        return out
    cand = np.flatnonzero(frame > pre)
    smallest = None
    if sparse:
        pos = frame[frame > 0]
        smallest = float(pos.min()) if pos.size else 0.0
    hot = _hot_among(frame, cand, bad, sigma, smallest, hot_sigma, hot_ratio)
    out.ravel()[hot] = True
    return out


def _hot_level(dtype, stats, hot_sigma: float, hot_ratio: float):
    """Level (in ``dtype``) above which a pixel can be hot; whether none can; sparse frame?
    and the noise sigma the test uses (at least 1 count for integer frames)."""
    med, sigma = stats
    if dtype.kind in "iub":
        sigma = max(sigma, 1.0)
    sparse = med == 0 and dtype.kind in "iuf" and sigma <= 1.0
    pre, all_below = _dtype_threshold(np.empty(0, dtype), med + (1.0 - hot_ratio) * hot_sigma * sigma)
    return pre, all_below, sparse, sigma


def _hot_among(frame, cand, bad, sigma, smallest_positive, hot_sigma, hot_ratio) -> np.ndarray:
    """Flat indices of the hot pixels among the candidates ``cand`` (flat indices above the
    :func:`_hot_level`, whose ``sigma`` this takes); ``smallest_positive``: the frame's
    smallest value > 0 (sparse frames)."""
    if bad is not None and cand.size:
        cand = cand[~bad.ravel()[cand]]
    if cand.size == 0:
        return cand
    frame = np.ascontiguousarray(frame)
    if frame.dtype == np.bool_ or frame.dtype == np.float16:
        frame = frame.astype(np.float32)
    centre = frame.ravel()[cand].astype(np.float64)
    local_max, bg, top = _neighbour_range(frame, cand)
    cand, centre, bg, top = cand[local_max], centre[local_max], bg[local_max], top[local_max]
    if cand.size == 0:
        return cand
    if smallest_positive is not None:
        # A neighbour stored as 0 may have been anything below the upstream threshold.
        top = np.maximum(top, smallest_positive)
    height = centre - bg
    hot = (height > hot_sigma * sigma) & ((top - bg) < hot_ratio * height)
    return cand[hot]


def auto_mask(
    frame: np.ndarray,
    saturation: float | None = None,
    hot_sigma: float = 10.0,
    hot_ratio: float = _HOT_RATIO,
) -> np.ndarray:
    """Mask of saturated, flagged, hot and non-finite pixels (True = bad).

    - saturated: ``frame >= saturation``, or, when ``saturation`` is None and the frame
      is an integer type, pixels at the dtype maximum (e.g. 65535 for uint16; detectors
      also use it as a bad-pixel flag);
    - flagged: negative pixels of a signed integer frame (int16, int32, int64), whatever
      ``saturation`` says: detectors that store signed integers mark pixels that hold no
      count with negative values (Pilatus: -1 in module gaps, -2 for bad pixels), so they
      are never counts.  Floating-point frames keep their negative values (after an
      upstream dark subtraction they are noise, not flags);
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
    >>> pilatus = np.full((3, 4), 20, np.int32); pilatus[1, :] = -1     # module gap
    >>> auto_mask(pilatus).any(axis=1).tolist()
    [False, True, False]
    """
    frame = _as_2d(frame)
    bad = saturated_mask(frame, saturation)
    return bad | hot_pixels(frame, bad=bad, hot_sigma=hot_sigma, hot_ratio=hot_ratio)


# ----------------------------------------------------------------------------- fused pass
# Preprocessing a frame used to be a dozen full-frame numpy passes (copy to float32,
# saturation, non-finite, mask, statistics, hot-pixel candidates, threshold copy, the
# detector's own comparison and index list), each a memory stream of the whole frame:
# ~40 ms for 2048 x 2048 while reading it takes ~4 ms. One compiled pass does the
# per-pixel corrections and collects the few pixels above the threshold; everything after
# it works on those pixels only. numpy has no fused elementwise kernels and numexpr
# cannot emit an index list, hence numba. The statistics come first, from the same
# regular grid of pixels robust_sigma uses, corrected the same way.


@_jit
def _corrected_frame(frame, dark, gain, gain_bad, file_mask, sat, use_sat, use_neg, clip,
                     level, below, full, bad, hit):  # pragma: no cover - compiled
    """Fill ``full``, ``bad`` and ``hit`` (``full > level``), all flat; return the numbers of
    pixels above ``level`` and below ``below``.

    Empty ``dark``, ``gain`` or ``file_mask`` mean "not used"; ``use_neg``: negative raw
    values are flags (signed integer frames); ``clip``: dark-subtracted values below 0 become
    0 (the frame detection sees), else they are kept (the statistics: see ``_corrected``).
    Written with bitwise logic and no calls or early exits so that the loop vectorizes.
    """
    inf = np.float32(np.inf)
    zero = np.float32(0.0)
    n_hit = 0
    n_below = 0
    for p in range(frame.size):
        raw = frame[p]
        b = (use_sat & (raw >= sat)) | (use_neg & (raw < 0))
        if file_mask.size > 0:
            b = b | file_mask[p]
        v = np.float32(raw)
        if dark.size > 0:
            d = v - dark[p]
            v = zero if (clip & (d < zero)) else d  # NaN stays NaN, and is flagged below
        if gain.size > 0:
            b = b | gain_bad[p]
            v = v / gain[p]
        b = b | (not (abs(v) < inf))
        v = zero if b else v
        h = v > level
        full[p] = v
        bad[p] = b
        hit[p] = h
        n_hit += h
        n_below += v < below
    return n_hit, n_below


@_jit
def _hit_indices(words, n_hit):  # pragma: no cover - compiled
    """Flat indices of the nonzero bytes of a bool array seen as uint64 words: the array is
    mostly False, so whole words are skipped eight pixels at a time."""
    out = np.empty(n_hit, np.int64)
    k = 0
    for w in range(words.size):
        if words[w] != 0:
            for b in range(8):
                # Byte order of the view does not matter: each byte is tested on its own.
                if (words[w] >> np.uint64(8 * b)) & np.uint64(0xFF):
                    out[k] = 8 * w + b if _LITTLE else 8 * w + 7 - b
                    k += 1
    return out


_LITTLE = np.little_endian


def _corrected(raw, corr, level, below, clip=True):
    """``(full, bad, above, n_below)`` of a contiguous raw frame (:func:`_corrected_frame`);
    ``above``: flat indices (ascending) of the pixels ``> level``.

    The background statistics are taken with ``clip=False``: after a dark, about half the
    background pixels are below 0, and clipped to 0 they made the median and MAD 0, so the
    frame passed for a sparse one (threshold its smallest positive value, noise
    ``sqrt(threshold)``) and every noise pixel became a peak candidate (10,608 rows instead
    of 12 on a dark at 100 +- 3 counts)."""
    full = np.empty(raw.shape, np.float32)
    bad = np.empty(raw.shape, np.bool_)
    n = raw.size
    hit = np.zeros(-(-n // 8) * 8, np.bool_)  # whole uint64 words, tail stays False
    n_hit, n_below = _corrected_frame(raw.reshape(-1), *corr, clip, level, below, full.reshape(-1),
                                      bad.reshape(-1), hit[:n])
    above = _hit_indices(hit.view(np.uint64), n_hit)
    return full, bad, above, n_below


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


#: Side of the tiles of the local background estimate, pixels: larger than a Bragg peak's
#: core (so an isolated peak moves its tile's median little), small enough to follow air
#: scatter, a beam-stop shadow and most of a diffuse ring 20 px wide (32 px tiles spread a
#: ring's level over the peaks beside it: recall 262 against 279 of 300 there).
BACKGROUND_TILE = 16
# A frame takes the tiles when its 8 x 8 block medians span more than this many of the
# blocks' own robust sigmas. Flat frames score < 1.4 (240 frames in a review); the
# project's simulated series (20 % slope and a diffuse hump of half the level) 3.0-3.5,
# where one threshold is off by at most ~4 sigma and the tiles would cost a 2048 x 2048 run
# ~75 ms a frame (3x slower); a ramp of 10 to 100 counts scores 10.7, a diffuse ring 9-57,
# a halo 121, a step 30: there one threshold misses most peaks or takes noise for them.
_FLAT_SPAN = 5.0
# Samples per tile side for the local estimate (8 x 8 = 64 a tile: medians good to ~0.15
# sigma, at a quarter of the pixels).
_TILE_SAMPLES = 8


@dataclass(frozen=True, eq=False)
class LocalBackground:
    """Background level and noise that vary over a frame, on a grid of tile centres.

    Attributes
    ----------
    level, noise : ndarray
        ``(ny, nx)`` median and noise of each tile, counts: the noise is the robust sigma
        of the residual from the interpolated level, or the scaled neighbour-difference
        sigma where that is smaller, with a Poisson floor for tiles of one value
        (:func:`local_background`).
    tile : int
        Tile side, pixels; tile ``(i, j)`` is centred on pixel ``((i + 0.5) * tile - 0.5,
        (j + 0.5) * tile - 0.5)``; values between centres are interpolated bilinearly and
        continued linearly beyond the outer ones (within the grid's range).
    nsigma : float
        The threshold is ``level + nsigma * noise``.
    """

    level: np.ndarray
    noise: np.ndarray
    tile: int
    nsigma: float

    def _at(self, grid: np.ndarray, rows, cols, own_floor: bool = False) -> np.ndarray:
        r0, rf = _interp_index(np.asarray(rows, np.float64).ravel(), grid.shape[0], self.tile)
        c0, cf = _interp_index(np.asarray(cols, np.float64).ravel(), grid.shape[1], self.tile)
        r1 = np.minimum(r0 + 1, grid.shape[0] - 1)
        c1 = np.minimum(c0 + 1, grid.shape[1] - 1)
        out = ((1 - rf) * ((1 - cf) * grid[r0, c0] + cf * grid[r0, c1])
               + rf * ((1 - cf) * grid[r1, c0] + cf * grid[r1, c1]))
        out = np.clip(out, grid.min(), grid.max())
        if own_floor:
            out = np.maximum(out, grid[self._tile_of(rows, grid.shape[0]),
                                       self._tile_of(cols, grid.shape[1])])
        return out.reshape(np.shape(rows))

    @property
    def threshold_grid(self) -> np.ndarray:
        """``(ny, nx)`` threshold of each tile, ``level + nsigma * noise``."""
        return self.level + self.nsigma * self.noise

    def _tile_of(self, pixels, m: int) -> np.ndarray:
        return np.clip(np.floor(np.asarray(pixels, np.float64).ravel() / self.tile), 0,
                       m - 1).astype(np.int64)

    def threshold_at(self, rows, cols) -> np.ndarray:
        """Local threshold at full-resolution pixel positions: interpolated between tile
        centres, but never below the threshold of the pixel's own tile. Near a sharp edge
        of the background (a module gap of zeros, a beam stop, a step) the interpolation
        alone lowered the bright side's threshold towards the dark tile's, and its noise
        maxima passed (43 false peaks beside unmasked gaps, 0 with the floor: 3)."""
        return self._at(self.threshold_grid, rows, cols, own_floor=True)

    def noise_at(self, rows, cols) -> np.ndarray:
        """Local background noise (robust sigma) at full-resolution pixel positions."""
        return self._at(self.noise, rows, cols)

    def above(self, full: np.ndarray, bad: np.ndarray) -> np.ndarray:
        """Flat indices (ascending) of the pixels of ``full`` above the local threshold and
        not ``bad``: :meth:`threshold_map` compared with the frame, without building it."""
        grid = self.threshold_grid
        r0, rf = _interp_index(np.arange(full.shape[0]), grid.shape[0], self.tile)
        c0, cf = _interp_index(np.arange(full.shape[1]), grid.shape[1], self.tile)
        n = full.size
        hit = np.zeros(-(-n // 8) * 8, np.bool_)
        count = _above_map(np.ascontiguousarray(full), np.ascontiguousarray(bad), grid, r0, rf,
                           c0, cf, float(grid.min()), float(grid.max()), int(self.tile),
                           hit[:n])
        return _hit_indices(hit.view(np.uint64), count)

    def threshold_map(self, shape: tuple[int, int]) -> np.ndarray:
        """The local threshold at every pixel of a frame of ``shape`` (float32)."""
        grid = self.threshold_grid.astype(np.float32)
        # Continued beyond the outer centres, but never outside the tiles' own range, nor
        # below the pixel's own tile (threshold_at).
        out = np.clip(_bilinear(grid, np.arange(shape[0]), np.arange(shape[1]), self.tile),
                      grid.min(), grid.max())
        own = grid[self._tile_of(np.arange(shape[0]), grid.shape[0])][
            :, self._tile_of(np.arange(shape[1]), grid.shape[1])]
        return np.maximum(out, own)


def _interp_index(pixels: np.ndarray, m: int, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower tile-centre index and fraction of linear interpolation from ``m`` tile centres
    to the pixel positions ``pixels``. Beyond the outer centres (the outer half tiles) the
    line through the last two is continued (fraction < 0 or > 1), so a ramp stays a ramp up
    to the frame's edge."""
    pos = (np.asarray(pixels, np.float64) + 0.5) / tile - 0.5
    if m == 1:
        return np.zeros(pos.shape, np.int64), np.zeros(pos.shape)
    low = np.clip(np.floor(pos).astype(np.int64), 0, m - 2)
    return low, pos - low


@_jit
def _above_map(full, bad, grid, r0, rf, c0, cf, lo, hi, tile, hit):  # pragma: no cover
    """Fill ``hit`` (flat) with ``full > threshold`` where the threshold is ``grid``
    interpolated bilinearly (indices and fractions of :func:`_interp_index`, clipped to
    ``lo .. hi``) and the pixel is not bad; return how many. The threshold map is never
    stored: one row of it at a time."""
    height, width = full.shape
    ny, nx = grid.shape
    row = np.empty(nx, np.float64)
    n = 0
    for y in range(height):
        a = r0[y]
        b = min(a + 1, ny - 1)
        f = rf[y]
        ty = min(y // tile, ny - 1)
        for j in range(nx):
            row[j] = grid[a, j] * (1.0 - f) + grid[b, j] * f
        for x in range(width):
            c = c0[x]
            d = min(c + 1, nx - 1)
            g = cf[x]
            t = row[c] * (1.0 - g) + row[d] * g
            t = max(min(max(t, lo), hi), grid[ty, min(x // tile, nx - 1)])
            h = (full[y, x] > t) & (not bad[y, x])
            hit[y * width + x] = h
            n += h
    return n


def _bilinear(grid: np.ndarray, rows: np.ndarray, cols: np.ndarray, tile: int) -> np.ndarray:
    """``grid`` of tile centres interpolated to the grid of pixels ``rows`` x ``cols``:
    separable, along the rows and then along the columns, with two gathers each (a
    2048 x 2048 map in a few ms, where the weight matrices' product took 50)."""
    dtype = grid.dtype
    r0, rf = _interp_index(rows, grid.shape[0], tile)
    c0, cf = _interp_index(cols, grid.shape[1], tile)
    r1 = np.minimum(r0 + 1, grid.shape[0] - 1)
    c1 = np.minimum(c0 + 1, grid.shape[1] - 1)
    rf = rf.astype(dtype)[:, None]
    by_rows = grid[r0] * (1 - rf) + grid[r1] * rf
    cf = cf.astype(dtype)[None, :]
    return by_rows[:, c0] * (1 - cf) + by_rows[:, c1] * cf


def local_background(frame: np.ndarray, mask: np.ndarray | None = None, *,
                     tile: int = BACKGROUND_TILE, nsigma: float = 5.0,
                     count_unit: float = 1.0) -> LocalBackground:
    """Tile-wise median and robust sigma of a frame's background.

    The one global ``median + 5 sigma`` threshold fails on a background that varies over
    the frame: on a gradient of 10 to 1,000 counts the MAD measures the slope, the threshold
    lands at 2,357 counts and the peaks on the dim three quarters are never seen; on a
    diffuse ring the global sigma is below the ring's own noise and the ring's noise maxima
    pass as peaks. Each tile of ``tile`` x ``tile`` pixels gets its own median and MAD (of
    8 x 8 pixels on a regular grid, the masked ones left out), like the background
    meshes of astronomical source extraction. Hand-written because scipy's filters would
    take the median over every pixel's window (seconds for a 2048 x 2048 frame) where a
    coarse grid is enough for a background that varies over tens of pixels.

    Parameters
    ----------
    frame : ndarray
        2-D corrected frame (dark-subtracted values not clipped, for the statistics).
    mask : ndarray of bool, optional
        Pixels to leave out (True = bad).
    tile : int
        Tile side, pixels.
    nsigma : float
        For :meth:`LocalBackground.threshold_at`.
    count_unit : float
        The value of one count (1 for counts; see ``_count_unit``), for the Poisson floor of
        tiles of one value.

    Returns
    -------
    LocalBackground

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ramp = np.linspace(10, 1000, 256)[None, :] * np.ones((256, 1))
    >>> bg = local_background(rng.poisson(ramp).astype(np.float32))
    >>> bg.level.shape  # 16 x 16 pixel tiles
    (16, 16)
    >>> bool(abs(bg.level[0, 0] - 40) < 5), bool(abs(bg.noise[0, 0] - 6.3) < 2.5)
    (True, True)
    """
    frame = _as_2d(frame)
    h, w = frame.shape
    tile = max(2, int(tile))
    ny, nx = max(1, -(-h // tile)), max(1, -(-w // tile))
    step = max(1, tile // _TILE_SAMPLES)
    values = frame[::step, ::step].astype(np.float64)
    good = np.isfinite(values)
    if mask is not None:
        good &= ~np.asarray(mask, bool)[::step, ::step]
    if not good.any():
        zero = np.zeros((ny, nx))
        return LocalBackground(level=zero, noise=zero, tile=tile, nsigma=float(nsigma))
    values[~good] = np.nan
    level = _fill_missing(_tile_medians(values, tile // step, ny, nx))
    # The noise from what is left once the interpolated level is taken away: a tile's own
    # MAD would measure the slope across it (a 10 -> 1,000 count ramp over 256 px gave
    # sigma 46 where the Poisson noise is 8).
    resid = np.abs(values - _bilinear(level, np.arange(0, h, step), np.arange(0, w, step), tile))
    noise = _fill_missing(_MAD_TO_SIGMA * _tile_medians(resid, tile // step, ny, nx))
    # Where the background has structure finer than the tiles (a powder or amorphous ring a
    # few pixels wide) that residual still measures the structure: a ring of 300 counts
    # over 50 gave sigma 80-120 where the Poisson noise is 19, and the threshold rose over
    # the peaks beside it. Each sample minus the mean of its four neighbours follows such
    # structure; it is scaled to the residual's sigma on the tiles where the two agree best
    # (the flat ones), which also corrects it for noise correlated between neighbouring
    # pixels (a phosphor's blur), and the smaller of the two is the tile's noise.
    fine = _fill_missing(_neighbour_sigma(values, tile // step, ny, nx))
    ratio = noise / np.where(fine > 0, fine, np.nan)
    ratio = ratio[np.isfinite(ratio)]
    if ratio.size:
        scale = max(float(np.quantile(ratio, 0.25)), 0.5)
        noise = np.minimum(noise, scale * fine)
    # A tile of one value (photon counting: mostly exact zeros) has no measurable noise;
    # at 0 it took single photons for peaks (40 false in 2 frames). Its floor is the Poisson
    # noise of its level, at least one count (``count_unit``: the value of one count).
    q = float(count_unit)
    floor = np.sqrt(np.maximum(level, q) * q)
    noise = np.where(noise > 0, noise, floor)
    return LocalBackground(level=level, noise=noise, tile=tile, nsigma=float(nsigma))


def _neighbour_sigma(values: np.ndarray, side: int, ny: int, nx: int) -> np.ndarray:
    """Per-tile robust sigma of each sample minus the mean of its 4 neighbours, scaled to
    the sigma of white noise (the difference has variance 1.25 sigma^2)."""
    centre = values[1:-1, 1:-1]
    around = 0.25 * (values[:-2, 1:-1] + values[2:, 1:-1] + values[1:-1, :-2]
                     + values[1:-1, 2:])
    diff = np.full(values.shape, np.nan)
    diff[1:-1, 1:-1] = np.abs(centre - around)
    return _MAD_TO_SIGMA / np.sqrt(1.25) * _tile_medians(diff, side, ny, nx)


def _tile_medians(values: np.ndarray, side: int, ny: int, nx: int) -> np.ndarray:
    """``(ny, nx)`` medians of the finite values of ``side`` x ``side`` tiles of a grid (the
    last row and column of tiles may be partial); NaN for tiles with fewer than 8 (a module
    gap, the beam stop)."""
    padded = np.full((ny * side, nx * side), np.nan)
    part = values[: ny * side, : nx * side]
    padded[: part.shape[0], : part.shape[1]] = part
    tiles = np.sort(padded.reshape(ny, side, nx, side).swapaxes(1, 2).reshape(ny, nx, -1),
                    axis=2)  # NaN sort last
    count = np.isfinite(tiles).sum(axis=2)
    lo = np.take_along_axis(tiles, (np.maximum(count - 1, 0) // 2)[..., None], axis=2)[..., 0]
    hi = np.take_along_axis(tiles, np.minimum(count // 2, tiles.shape[2] - 1)[..., None],
                            axis=2)[..., 0]
    return np.where(count >= 8, 0.5 * (lo + hi), np.nan)


def _fill_missing(grid: np.ndarray) -> np.ndarray:
    """NaN tiles take the value of the nearest tile that has one."""
    missing = np.isnan(grid)
    if not missing.any() or missing.all():
        return np.where(missing, 0.0, grid)
    from scipy.ndimage import distance_transform_edt

    near = distance_transform_edt(missing, return_distances=False, return_indices=True)
    return grid[tuple(near)]


def _tile_median_span(sample: np.ndarray, bad: np.ndarray, median: float, sigma: float) -> float:
    """Span of the medians of 8 x 8 blocks of the statistics grid, in units of the blocks'
    own noise (the median of their robust sigmas): the cheap test (a few hundred
    microseconds) of whether a frame needs :func:`local_background`.

    Not in units of the frame's sigma, which grows with the very structure tested for: a
    ramp then scored ~2.4 whatever its height, a step over half the frame ~1.0, and both
    stayed on the global threshold (recall 0 on the step's dim half)."""
    h, w = sample.shape
    if h < 8 or w < 8 or not sigma > 0:
        return 0.0
    k = 8 if min(h, w) >= 64 else 4
    if min(h, w) >= 128:  # 64 blocks of ~128 pixels: a median good to ~0.1 sigma
        sample, bad = sample[::2, ::2], bad[::2, ::2]
        h, w = sample.shape
    # Masked pixels take the frame's median: neutral, and no NaN-aware median (5x slower).
    vals = np.where(bad | ~np.isfinite(sample), np.float32(median), sample)
    blocks = vals[: h // k * k, : w // k * k].reshape(k, h // k, k, w // k).swapaxes(1, 2)
    blocks = blocks.reshape(k * k, -1).astype(np.float64)
    med = np.median(blocks, axis=1)
    noise = _MAD_TO_SIGMA * float(np.median(np.median(np.abs(blocks - med[:, None]), axis=1)))
    if not noise > 0:  # blocks of one value each (counts near 0): the frame's sigma
        noise = sigma
    return float((med.max() - med.min()) / noise)


@dataclass(frozen=True, eq=False)
class PreparedFrame:
    """One frame after :class:`Preprocessor`.

    Attributes
    ----------
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
        sparse frame with no measurable noise, the Poisson noise at the threshold,
        ``sqrt(threshold * unit)`` with ``unit`` the value of one count (1 for counts).
    above : ndarray of int64, optional
        Flat indices (ascending) of the full-resolution pixels strictly above
        ``threshold``, when known: detection on an unbinned frame visits only these.
    intensity_range : float, optional
        ``image.max() - image.min()`` when known without building ``image``.
    background : LocalBackground, optional
        Set when the frame's background is not flat (:func:`local_background`): the
        threshold and the noise then vary over the frame, ``threshold`` and ``noise`` are
        their lowest and median values, and ``above`` the pixels above the local threshold.
    image : ndarray
        float32, thresholded (counts below ``threshold`` -> 0) then binned (sum): what
        detection runs on. Built on first use (an unbinned run never needs it).
    """

    full: np.ndarray
    mask: np.ndarray
    threshold: float
    bin: int = 1
    noise: float = 0.0
    above: np.ndarray | None = None
    intensity_range: float | None = None
    background: LocalBackground | None = None

    @cached_property
    def image(self) -> np.ndarray:
        if self.background is not None:
            kept = np.where(self.full > self.background.threshold_map(self.full.shape),
                            self.full, np.float32(0))
            return bin_frame(kept, self.bin)
        t = self.threshold
        return bin_frame(apply_threshold(self.full, t) if t > 0 else self.full.copy(), self.bin)


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


def _count_quantum(values: np.ndarray) -> float | None:
    """The value of one count when ``values`` are whole multiples of one (photon counts
    scaled to flux or to a monitor: 1e-6, 2e-6, ...), else None.

    The step between the smallest distinct values is the quantum candidate; the values
    must then be whole multiples of it (within 2 % of a step)."""
    positive = values[values > 0]
    if positive.size < 3:
        return None
    unique = np.unique(positive[:200_000].astype(np.float64))[:1000]
    if unique.size < 3:
        return None
    q = float(np.median(np.diff(unique[:50])))
    if not q > 0:
        return None
    ratio = unique / q
    whole = np.abs(ratio - np.round(ratio)) < 0.02
    return q if whole.mean() >= 0.9 else None


def _count_unit(values: np.ndarray) -> float:
    """The value of one count: the quantum of ``_count_quantum`` where it is below 1 (counts
    scaled to flux or a monitor), else 1. Only for frames without a dark: a dark that is
    the mean or median of integer frames makes multiples of 0.05 or 0.5 out of counts."""
    q = _count_quantum(values)
    return q if q is not None and q < 1.0 else 1.0


def _sparse_noise(threshold: float, count_unit: float = 1.0) -> float:
    """Noise of a sparse frame (no measurable background): the Poisson noise at the
    threshold, ``sqrt(threshold * count_unit)`` (``sqrt(threshold)`` in counts). Taken as
    ``sqrt(threshold)`` in every unit, it was 1e-3 for a frame of counts x 1e-6, i.e. 3,000
    photons of persistence asked of every peak (recall 0.01 against 1.00 in counts)."""
    return float(np.sqrt(max(threshold, 0.0) * count_unit))


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
        Also mask saturated and hot pixels, and the negative (flag) values of signed
        integer frames, of each frame (:func:`auto_mask`). Non-finite pixels are masked
        whatever this says.
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
    background : {"auto", "global", "local"}
        How the automatic threshold and the noise follow the background: ``global``, one
        median and sigma for the frame; ``local``, per tile (:func:`local_background`);
        ``auto`` (default), local only where the frame's background is far from flat (its
        8 x 8 block medians span more than 5 of the blocks' robust sigmas), so a flat frame
        costs nothing more.
        Ignored with a fixed ``threshold`` and for sparse frames (no measurable noise).

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
    background: str = "auto"
    _flat_gain_bad: np.ndarray | None = field(default=None, repr=False, init=False)
    _flat_gain: np.ndarray | None = field(default=None, repr=False, init=False)

    def __post_init__(self) -> None:
        from .io import load_flat_file

        if isinstance(self.bin, bool) or int(self.bin) != self.bin or self.bin < 1:
            raise OptionError(f"bin must be a positive integer, got {self.bin}")
        if self.threshold is not None and not (np.isfinite(self.threshold) and self.threshold >= 0):
            raise OptionError(f"threshold must be >= 0 counts, got {self.threshold}")
        if not (self.nsigma >= 0):
            raise OptionError(f"nsigma must be >= 0, got {self.nsigma}")
        check_background(self.background)
        dark = _load_optional(self.dark, "dark", load_dark)
        flat = _load_optional(self.flat, "flat", load_flat_file)
        mask = _load_optional(self.mask, "mask", load_mask)
        if dark is not None:
            dark = np.ascontiguousarray(_as_2d(dark, "dark"), np.float32)
        if flat is not None:
            flat = _as_2d(flat, "flat").astype(np.float32, copy=False)
            good = np.isfinite(flat) & (flat > 0)
            if not good.any():
                raise OptionError("flat field has no positive pixel")
            object.__setattr__(self, "_flat_gain_bad", ~good)
            # The gain of apply_flat, computed once instead of for every frame.
            gain = np.where(good, flat / np.float32(np.median(flat[good])), np.float32(1.0))
            object.__setattr__(self, "_flat_gain", np.ascontiguousarray(gain, np.float32))
        if mask is not None:
            mask = _as_2d(mask, "mask")
            mask = np.ascontiguousarray(mask if mask.dtype == bool else (mask != 0))
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
        raw = np.ascontiguousarray(frame)
        if raw.dtype.kind not in "iuf" or raw.dtype == np.float16:
            raw = raw.astype(np.float32)
        elif not raw.dtype.isnative:
            raw = raw.astype(raw.dtype.newbyteorder("="))
        use_sat, sat = False, raw.dtype.type(0)
        if self.auto_mask:
            if self.saturation is not None:
                sat, above_all = _dtype_threshold(raw, float(self.saturation))
                use_sat = not above_all
            elif raw.dtype.kind in "iu":
                use_sat, sat = True, raw.dtype.type(np.iinfo(raw.dtype).max)
        # Negative values of signed integer frames are detector flags (see auto_mask).
        use_neg = self.auto_mask and raw.dtype.kind == "i"
        per_pixel = (self.dark, self._flat_gain, self._flat_gain_bad, self.mask)

        def corr(step: int) -> tuple:
            # Per-pixel corrections of the pixel grid [::step, ::step]; empty: not used.
            arrays = tuple(np.empty(0, np.bool_ if k > 1 else np.float32) if a is None
                           else (a if step == 1 else a[::step, ::step].copy()).reshape(-1)
                           for k, a in enumerate(per_pixel))
            return (*arrays, sat, use_sat, use_neg)

        t_given = self.threshold is not None

        def levels(stats):
            med, sigma = stats
            t_level = float(self.threshold) if t_given else (
                med + self.nsigma * sigma if sigma > 0 else med)
            hot_pre, no_hot, sparse, hot_noise = _hot_level(
                np.dtype(np.float32), stats, self.hot_sigma, _HOT_RATIO)
            check_hot = self.auto_mask and not no_hot and min(raw.shape) >= 3 and self.hot_sigma > 0
            # Everything after the pass works on the few pixels above the lower level.
            level = min(t_level, float(hot_pre)) if check_hot else t_level
            return t_level, hot_pre, sparse, hot_noise, check_hot, level

        # One robust estimate per frame serves the hot-pixel test, the threshold and the
        # noise: from the grid of pixels robust_sigma samples, corrected the same way.
        step = _sample_step(raw.shape)
        if step > 1:
            s_full, s_bad, _, _ = _corrected(raw[::step, ::step].copy(), corr(step), np.inf, 0.0,
                                             clip=False)
            stats = _median_mad(s_full[~s_bad])
        else:  # a small frame: the statistics look at every pixel of the corrected frame
            full, bad, _, _ = _corrected(raw, corr(1), np.inf, 0.0)
            if self.dark is not None:
                s_full, s_bad, _, _ = _corrected(raw, corr(1), np.inf, 0.0, clip=False)
            else:
                s_full, s_bad = full, bad
            stats = _median_mad(s_full[~s_bad])
        if self._local(s_full, s_bad, stats, t_given):
            # A small frame is already corrected (with and without the clip): reuse it.
            done = (full, bad, s_full) if step == 1 else None
            return self._prepare_local(raw, corr, stats, done)
        t_level, hot_pre, sparse, hot_noise, check_hot, level = levels(stats)
        if step > 1:
            full, bad, above, n_below = _corrected(raw, corr(1), level, t_level)
        else:
            above = np.flatnonzero(_above(full, level).reshape(-1))
            n_below = int(np.count_nonzero(full.astype(np.float64) < t_level))
        med, sigma = stats
        values = full.reshape(-1)[above]
        hot = np.empty(0, np.int64)
        if check_hot:
            # On the corrected frame: a pixel hot in the dark too is no longer hot here.
            smallest = None
            if sparse:  # the median is 0 here, so every positive pixel is in `above`
                pos = values[values > 0]
                smallest = float(pos.min()) if pos.size else 0.0
            hot = self._mask_hot(full, bad, above[values > hot_pre], hot_noise, smallest)
            if hot.size:
                keep = ~np.isin(above, hot, assume_unique=True)
                above, values = above[keep], values[keep]
        if t_given:
            t = float(self.threshold)
        elif sigma > 0:
            t = t_level
        else:
            good = values[~bad.reshape(-1)[above]]
            t = float(good.min()) if good.size else med
        if sigma > 0:
            noise = sigma
        else:
            noise = _sparse_noise(t, _count_unit(values) if self.dark is None else 1.0)
        detect = _above(values, t)
        above = above[detect]
        span = None
        if self.bin == 1 and above.size:
            # image = full with the values below t set to 0 (when t > 0): its maximum is the
            # brightest pixel above t, its minimum 0 as soon as one pixel is below t.
            if t > 0 and (n_below > 0 or hot.size > 0 or (not t_given and not sigma > 0)):
                bottom = 0.0  # (a sparse frame's threshold lies above its median)
            else:
                bottom = float(full.min())
            span = float(values[detect].max()) - bottom
        return PreparedFrame(full=full, mask=bad, threshold=float(t), bin=self.bin, noise=noise,
                             above=above if self.bin == 1 else None, intensity_range=span)

    def _local(self, sample: np.ndarray, sample_bad: np.ndarray, stats, t_given: bool) -> bool:
        """Whether this frame's threshold and noise are taken per tile."""
        if t_given or self.background == "global" or not stats[1] > 0:
            return False
        if self.background == "local":
            return True
        return _tile_median_span(sample, sample_bad, *stats) > _FLAT_SPAN

    def _prepare_local(self, raw, corr, stats, done=None) -> PreparedFrame:
        """:meth:`__call__` for a frame whose background is not flat: the threshold is
        ``level + nsigma * noise`` of :func:`local_background`, pixel by pixel. ``done``:
        ``(full, bad, unclipped)`` when the whole frame is already corrected."""
        if done is not None:
            full, bad, src = done
        else:
            full, bad, _, _ = _corrected(raw, corr(1), np.inf, 0.0)
            src = (full if self.dark is None
                   else _corrected(raw, corr(1), np.inf, 0.0, clip=False)[0])
        unit = 1.0 if self.dark is not None else _count_unit(src[::4, ::4][~bad[::4, ::4]])
        background = local_background(src, bad, nsigma=self.nsigma, count_unit=unit)
        if self.auto_mask and min(raw.shape) >= 3 and self.hot_sigma > 0:
            # The hot-pixel test of the global path, with the frame's median and sigma (it
            # compares a pixel with its own neighbours, whatever the background does).
            hot_pre, no_hot, _, hot_noise = _hot_level(np.dtype(np.float32), stats,
                                                      self.hot_sigma, _HOT_RATIO)
            if not no_hot:
                self._mask_hot(full, bad, np.flatnonzero(full.reshape(-1) > hot_pre),
                               hot_noise, None)
        above, span = None, None
        if self.bin == 1:  # binned: `image` compares with the threshold map itself
            above = background.above(full, bad)
            if above.size:
                span = float(full.reshape(-1)[above].max())  # the image's minimum is 0 here
        return PreparedFrame(full=full, mask=bad, threshold=float(background.threshold_grid.min()),
                             bin=self.bin,
                             noise=float(np.median(background.noise)),
                             above=above, intensity_range=span, background=background)

    def _mask_hot(self, full, bad, cand, noise, smallest) -> np.ndarray:
        """Mask (in place: ``bad`` True, ``full`` 0) the hot pixels among the candidates
        ``cand`` (:func:`_hot_among`); return their flat indices."""
        hot = _hot_among(full, cand, bad, noise, smallest, self.hot_sigma, _HOT_RATIO)
        if hot.size:
            bad.reshape(-1)[hot] = True
            full.reshape(-1)[hot] = 0
        return hot
