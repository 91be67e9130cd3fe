"""Cut N x N patches around detected peaks, normalize them and judge their quality.

All functions work on every peak of a frame at once: the patches are gathered with one
fancy-indexing operation on an offset grid (no Python loop over peaks), so cutting a few
thousand patches costs about as much as one copy of them.

Patches that reach beyond the frame are not an error: their indices are clipped to the
frame, which replicates the edge pixels (no padded copy of the frame is made), and the
patch is flagged ``edge=True`` so that later stages can reject it with a reason.
Edge replication rather than zero padding because a zero step next to a bright peak looks
like a sharp intensity gradient to a fit, whereas replicated pixels only flatten the
tail; either way the patch is flagged and should not be trusted.

Coordinates follow the package convention: ``rows`` are y, ``cols`` are x, and the centre
of the patch is the pixel ``(size // 2, size // 2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import OptionError

__all__ = [
    "PatchSet",
    "extract_patches",
    "normalize",
    "centre_filter",
    "quality",
    "recentre",
]


@dataclass(frozen=True)
class PatchSet:
    """Patches cut around peaks of one frame.

    Attributes
    ----------
    patches : ndarray, shape (n, N, N), float32
        Pixel values; ``patches[k, N // 2, N // 2]`` is ``image[rows[k], cols[k]]``.
    rows, cols : ndarray, shape (n,), int64
        Centre pixel of each patch in the frame (y = row, x = column).
    edge : ndarray, shape (n,), bool
        The patch extends beyond the frame; the missing pixels replicate the frame edge.
    masked : ndarray, shape (n,), bool
        The patch contains at least one masked pixel (always False without a mask).
    """

    patches: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    edge: np.ndarray
    masked: np.ndarray

    def __len__(self) -> int:
        return int(self.patches.shape[0])

    @property
    def size(self) -> int:
        """Patch side length N in pixels."""
        return int(self.patches.shape[-1])

    @property
    def flags(self) -> pd.DataFrame:
        """``edge`` and ``masked`` as a DataFrame, one row per patch."""
        return pd.DataFrame({"edge": self.edge, "masked": self.masked})


def _as_centres(rows, cols) -> tuple[np.ndarray, np.ndarray]:
    rows = np.atleast_1d(np.asarray(rows))
    cols = np.atleast_1d(np.asarray(cols))
    if rows.ndim != 1 or cols.ndim != 1 or rows.shape != cols.shape:
        raise OptionError(
            f"rows and cols must be 1-D and of equal length, got shapes {rows.shape} and {cols.shape}"
        )
    for name, v in (("rows", rows), ("cols", cols)):
        if v.size and not np.issubdtype(v.dtype, np.number):
            raise OptionError(f"{name} must be numeric pixel indices, got dtype {v.dtype}")
        if v.size and not np.all(np.isfinite(v)):
            raise OptionError(f"{name} contains NaN or infinite values")
    # Float positions (from a table) go to their nearest pixel.
    return np.rint(rows).astype(np.int64), np.rint(cols).astype(np.int64)


def extract_patches(
    image: np.ndarray,
    rows,
    cols,
    size: int = 11,
    mask: np.ndarray | None = None,
) -> PatchSet:
    """Cut ``size x size`` patches centred on the given pixels.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        The frame.
    rows, cols : array_like of int, shape (n,)
        Centre pixels (y, x). Float values are rounded to the nearest pixel.
    size : int
        Odd patch side N, at most ``min(H, W)``.
    mask : ndarray of bool, shape (H, W), optional
        True marks bad pixels; patches touching one are flagged ``masked``.

    Returns
    -------
    PatchSet
        Patches as float32 with their centres and ``edge``/``masked`` flags.

    Raises
    ------
    OptionError
        For an even or too large ``size``, a non 2-D image, a mask of another shape, or
        mismatched ``rows``/``cols``.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.arange(100, dtype=float).reshape(10, 10)
    >>> ps = extract_patches(img, [5, 0], [5, 9], size=3)
    >>> ps.patches[0]
    array([[44., 45., 46.],
           [54., 55., 56.],
           [64., 65., 66.]], dtype=float32)
    >>> ps.edge.tolist()
    [False, True]
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise OptionError(f"image must be a 2-D frame, got {image.ndim} dimensions")
    if int(size) != size or size < 1 or size % 2 == 0:
        raise OptionError(f"patch size must be an odd positive integer, got {size}")
    size = int(size)
    h, w = image.shape
    if size > min(h, w):
        raise OptionError(f"patch size {size} is larger than the frame ({h} x {w})")
    rows, cols = _as_centres(rows, cols)
    half = size // 2
    offsets = np.arange(-half, half + 1, dtype=np.int64)
    r = rows[:, None] + offsets  # (n, N)
    c = cols[:, None] + offsets
    edge = (rows - half < 0) | (rows + half >= h) | (cols - half < 0) | (cols + half >= w)
    np.clip(r, 0, h - 1, out=r)
    np.clip(c, 0, w - 1, out=c)
    patches = image[r[:, :, None], c[:, None, :]].astype(np.float32, copy=False)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape:
            raise OptionError(
                f"mask shape {mask.shape} does not match the frame shape {image.shape}"
            )
        masked = mask[r[:, :, None], c[:, None, :]].any(axis=(1, 2))
    else:
        masked = np.zeros(rows.shape, dtype=bool)
    return PatchSet(patches=patches, rows=rows, cols=cols, edge=edge, masked=masked)


def as_patch_stack(patches, dtype=None) -> np.ndarray:
    """A ``PatchSet``, one ``(N, N)`` patch or an ``(n, N, N)`` stack as an ``(n, N, N)`` array.

    Parameters
    ----------
    patches : PatchSet or array_like
    dtype : dtype, optional
        Convert to it (e.g. float64 for fits, float32 for the network).

    Examples
    --------
    >>> as_patch_stack(np.zeros((5, 5)), np.float32).shape
    (1, 5, 5)
    """
    if isinstance(patches, PatchSet):
        patches = patches.patches
    try:
        p = np.asarray(patches, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise OptionError(f"patches must be a numeric array of shape (n, N, N): {exc}") from None
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.shape[1] != p.shape[2]:
        raise OptionError(f"patches must have shape (n, N, N), got {p.shape}")
    return p


def normalize(patches) -> tuple[np.ndarray, np.ndarray]:
    """Min-max normalize each patch to [0, 1].

    Non-finite pixels are treated as the patch minimum. A flat patch (max == min, or no
    finite pixel) becomes all zeros and is flagged; no NaN is ever produced.

    Parameters
    ----------
    patches : ndarray, shape (n, N, N), or PatchSet

    Returns
    -------
    normed : ndarray, shape (n, N, N), float32
    flat : ndarray, shape (n,), bool

    Examples
    --------
    >>> import numpy as np
    >>> normed, flat = normalize(np.array([[[1.0, 3.0], [2.0, 5.0]], [[7.0, 7.0], [7.0, 7.0]]]))
    >>> normed[0].tolist(), flat.tolist()
    ([[0.0, 0.5], [0.25, 1.0]], [False, True])
    """
    p = as_patch_stack(patches, np.float64)
    finite = np.isfinite(p)
    lo = np.where(finite, p, np.inf).min(axis=(1, 2), initial=np.inf)
    hi = np.where(finite, p, -np.inf).max(axis=(1, 2), initial=-np.inf)
    span = hi - lo
    flat = ~(np.isfinite(span) & (span > 0))
    safe_lo = np.where(flat, 0.0, lo)
    safe_span = np.where(flat, 1.0, span)
    normed = (np.where(finite, p, safe_lo[:, None, None]) - safe_lo[:, None, None]) / safe_span[
        :, None, None
    ]
    normed[flat] = 0.0
    np.clip(normed, 0.0, 1.0, out=normed)
    return normed.astype(np.float32), flat


def _argmax_rc(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, size, _ = p.shape
    filled = np.where(np.isfinite(p), p, -np.inf).reshape(n, -1)
    idx = np.argmax(filled, axis=1)
    return idx // size, idx % size


def centre_filter(patches, tolerance: float = 2.0, others=None) -> np.ndarray:
    """True where the brightest pixel lies within ``tolerance`` pixels of the patch centre.

    Parameters
    ----------
    patches : ndarray, shape (n, N, N), or PatchSet
    tolerance : float
        Maximum Euclidean distance in pixels.
    others : (index, dy, dx) arrays, optional
        Other detected maxima, as offsets ``dy, dx`` from the centre of patch ``index``.
        Pixels nearer to one of them than to the centre belong to that peak and are not
        searched, so the fainter peak of a close pair is not rejected for its brighter
        neighbour's maximum.

    Returns
    -------
    ndarray, shape (n,), bool

    Examples
    --------
    >>> import numpy as np
    >>> p = np.zeros((2, 5, 5)); p[0, 2, 3] = 1; p[1, 0, 0] = 1
    >>> centre_filter(p, tolerance=1.5).tolist()
    [True, False]
    """
    if not (tolerance >= 0):
        raise OptionError(f"centre tolerance must be >= 0 pixels, got {tolerance}")
    p = as_patch_stack(patches)
    half = p.shape[-1] // 2
    if others is not None and len(others[0]):
        index, dy, dx = (np.asarray(a) for a in others)
        yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
        # Nearer to the other maximum than to the centre: (y-dy)^2+(x-dx)^2 < y^2+x^2.
        theirs = (dy[:, None, None] * (2 * yy - dy[:, None, None])
                  + dx[:, None, None] * (2 * xx - dx[:, None, None])) > 0
        drop = np.zeros(p.shape, bool)
        np.logical_or.at(drop, index, theirs)
        p = np.where(drop, -np.inf, p)
    r, c = _argmax_rc(p)
    return np.hypot(r - half, c - half) <= tolerance


def quality(patchset: PatchSet, tolerance: float = 2.0, others=None) -> pd.DataFrame:
    """Per-patch ``ok`` flag and the first failing ``reason``.

    Reasons, in order of precedence: ``edge`` (patch reaches beyond the frame), ``mask``
    (touches a masked pixel), ``flat`` (max == min), ``off_centre`` (brightest pixel
    farther than ``tolerance`` px from the centre, not counting pixels nearer to one of
    ``others``, see :func:`centre_filter`). ``reason`` is ``''`` when ``ok``.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((20, 20)); img[10, 10] = 5; img[3, 12] = 5
    >>> quality(extract_patches(img, [10, 1, 15], [10, 12, 5], size=5)).reason.tolist()
    ['', 'edge', 'flat']
    """
    _, flat = normalize(patchset.patches)
    centred = centre_filter(patchset.patches, tolerance, others)
    reason = np.full(len(patchset), "", dtype=object)
    for name, bad in (
        ("off_centre", ~centred),
        ("flat", flat),
        ("mask", patchset.masked),
        ("edge", patchset.edge),
    ):
        reason[np.asarray(bad, dtype=bool)] = name  # later (higher precedence) overwrite
    reason = reason.astype(str)
    return pd.DataFrame({"ok": reason == "", "reason": reason})


def recentre(image: np.ndarray, rows, cols, radius: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Move each centre to the brightest pixel of its ``(2 radius + 1)^2`` neighbourhood.

    Used after detection on a binned frame, whose maxima map back to a full-resolution
    pixel that need not be the brightest. Ties keep the current centre; neighbourhoods are
    clipped to the frame.

    Returns
    -------
    rows, cols : ndarray of int64

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((6, 6)); img[2, 3] = 9
    >>> recentre(img, [3], [3])
    (array([2]), array([3]))
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise OptionError(f"image must be a 2-D frame, got {image.ndim} dimensions")
    if int(radius) != radius or radius < 0:
        raise OptionError(f"recentre radius must be a non-negative integer, got {radius}")
    rows, cols = _as_centres(rows, cols)
    h, w = image.shape
    rows = np.clip(rows, 0, h - 1)
    cols = np.clip(cols, 0, w - 1)
    if radius == 0 or rows.size == 0:
        return rows, cols
    off = np.arange(-radius, radius + 1)
    r = np.clip(rows[:, None] + off, 0, h - 1)
    c = np.clip(cols[:, None] + off, 0, w - 1)
    vals = image[r[:, :, None], c[:, None, :]].astype(np.float64)
    vals = np.where(np.isfinite(vals), vals, -np.inf).reshape(rows.size, -1)
    best = np.argmax(vals, axis=1)
    centre_val = vals[:, (vals.shape[1] - 1) // 2]
    keep = centre_val >= vals[np.arange(rows.size), best]
    k = 2 * radius + 1
    new_r = r[np.arange(rows.size), best // k]
    new_c = c[np.arange(rows.size), best % k]
    return np.where(keep, rows, new_r), np.where(keep, cols, new_c)
