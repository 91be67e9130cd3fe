"""Peak detection by 0-dimensional persistent homology, and peak selection.

:func:`persistence` finds every local maximum of a frame and rates it by how far it
rises above the saddle where it merges into a higher peak (0-dimensional persistent
homology of the super-level sets, Edelsbrunner & Harer, *Computational Topology*,
2010).  Pixels are visited from the brightest down; a union-find structure tracks
the connected "islands" of visited pixels; when two islands touch, the younger one
(lower maximum) dies at the current level (the elder rule).  The answer is the same
as ``findpeaks(method='topology')`` (see :func:`persistence` for the exact
conventions) but thousands of times faster on thresholded frames, because only the
pixels above the threshold are sorted and visited.

:func:`select_peaks` turns that list into a peak table: a 0..255 ``score``, minimum
persistence and score, non-maximum suppression by distance, a cap on the number of
peaks, and ``ok``/``reason`` flags for peaks near the frame edge or a masked pixel.

Why hand-written: the union-find loop is a dozen lines but must run over millions of
pixels; the well-kept libraries either compute it in pure Python (findpeaks, about
47 s per 2048 x 2048 frame), compute every homology dimension of a cubical complex
over the whole frame (gudhi, a heavy compiled dependency), or do not offer it at all
(scikit-image, scipy).  The loop, a stable LSD radix argsort for the visiting order
and the greedy suppression are compiled with numba and cached on disk.
"""

from __future__ import annotations

import warnings

import numba
import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from .errors import OptionError

__all__ = ["persistence", "select_peaks"]

PEAK_COLUMNS = ("y", "x", "birth", "death", "persistence")



def _jit(func):
    """``numba.njit(cache=True)``, or uncached when no cache folder is writable.

    Numba caches beside the source file or, when the package folder is read-only, in the
    user's cache folder (``NUMBA_CACHE_DIR`` overrides both); only when neither can be
    written does it refuse to decorate, and then compiling on every start is the best
    we can do.
    """
    try:
        return numba.njit(cache=True, nogil=True)(func)
    except RuntimeError as exc:  # numba: "cannot cache function ...: no locator available"
        warnings.warn(
            f"braggtrack.detect: numba cannot cache compiled code ({exc}); "
            "set NUMBA_CACHE_DIR to a writable folder to avoid recompiling at every start",
            RuntimeWarning,
            stacklevel=2,
        )
        return numba.njit(nogil=True)(func)


@_jit
def _radix_order_descending(keys):  # pragma: no cover - compiled
    """Indices that visit ``keys`` from the largest down; equal keys by decreasing index.

    A counting sort when the key range is small (integer frames: one pass to count, one
    to place), else a stable LSD radix sort with 11-bit digits, skipping the digits that
    are constant over all keys.
    """
    n = keys.size
    order = np.empty(n, np.int64)
    if n == 0:
        return order
    top = keys.max()
    if top < np.uint64(max(65536, n)):
        # Slot of value v starts after all larger values; filling from the last index
        # down puts equal values in decreasing index order.
        counts = np.zeros(np.int64(top) + 2, np.int64)
        for j in range(n):
            counts[np.int64(keys[j])] += 1
        total = 0
        for v in range(np.int64(top), -1, -1):
            c = counts[v]
            counts[v] = total
            total += c
        for j in range(n - 1, -1, -1):
            v = np.int64(keys[j])
            order[counts[v]] = j
            counts[v] += 1
        return order
    # Complementing the key turns "descending" into the ascending radix order; reading
    # the input backwards makes ties come out by decreasing index.
    ndigits = 1
    while ndigits * 11 < 64 and (top >> np.uint64(ndigits * 11)) != np.uint64(0):
        ndigits += 1
    counts = np.zeros((ndigits, 2048), np.int64)
    mask = np.uint64(2047)
    for j in range(n):
        k = top - keys[j]
        for d in range(ndigits):
            counts[d, np.int64((k >> np.uint64(d * 11)) & mask)] += 1
    src_key = np.empty(n, np.uint64)
    src_idx = np.empty(n, np.int64)
    for j in range(n):
        src_key[j] = top - keys[n - 1 - j]
        src_idx[j] = n - 1 - j
    dst_key = np.empty(n, np.uint64)
    dst_idx = np.empty(n, np.int64)
    offsets = np.empty(2048, np.int64)
    for d in range(ndigits):
        if counts[d].max() == n:
            continue
        total = 0
        for b in range(2048):
            offsets[b] = total
            total += counts[d, b]
        shift = np.uint64(d * 11)
        for j in range(n):
            k = src_key[j]
            b = np.int64((k >> shift) & mask)
            pos = offsets[b]
            offsets[b] = pos + 1
            dst_key[pos] = k
            dst_idx[pos] = src_idx[j]
        src_key, dst_key = dst_key, src_key
        src_idx, dst_idx = dst_idx, src_idx
    order[:] = src_idx
    return order


@_jit
def _find(parent, x):  # pragma: no cover - compiled
    while parent[x] != x:
        parent[x] = parent[parent[x]]  # path halving
        x = parent[x]
    return x


@_jit
def _join(i, roots, nroots, parent, born, death, last):  # pragma: no cover - compiled
    """Pixel of rank ``i`` touches the islands ``roots[:nroots]``: born alone, or joins the
    eldest, and the others die here (elder rule)."""
    if nroots == 0:
        parent[i] = i
        born[i] = True
        last[i] = i
        return
    eldest = roots[0]
    for t in range(1, nroots):
        if roots[t] < eldest:
            eldest = roots[t]
    for t in range(nroots):
        root = roots[t]
        if root != eldest and parent[root] == root:
            death[root] = i
            parent[root] = eldest
    parent[i] = eldest
    last[eldest] = i


@_jit
def _union_find(sidx, member, height, width, eight):  # pragma: no cover - compiled
    """Elder-rule union-find over pixels visited in the order ``sidx`` (flat indices).

    ``member[p]`` says whether pixel ``p`` takes part at all; an empty ``member`` means
    every pixel does (``sidx`` holds them all), which saves one memory stream.  Components are named by
    the visiting rank of their eldest pixel, so "elder" is simply "smaller rank".
    Returns, per rank: whether a component was born there, the rank at which that
    component died (-1: never) and the rank of the last pixel that joined it.
    """
    m = sidx.size
    rank = np.empty(height * width, np.int32)  # read only where member is True
    for i in range(m):
        rank[sidx[i]] = i
    parent = np.empty(m, np.int32)
    born = np.zeros(m, np.bool_)
    death = np.full(m, -1, np.int32)
    last = np.empty(m, np.int32)
    roots = np.empty(8, np.int32)
    dense = member.size == 0
    if eight:
        drs = np.array([-1, -1, -1, 0, 0, 1, 1, 1])
        dcs = np.array([-1, 0, 1, -1, 1, -1, 0, 1])
    else:
        drs = np.array([-1, 0, 0, 1])
        dcs = np.array([0, -1, 1, 0])
    for i in range(m):
        p = sidx[i]
        r = p // width
        c = p - r * width
        k = 0
        for t in range(drs.size):
            rr = r + drs[t]
            cc = c + dcs[t]
            if rr < 0 or rr >= height or cc < 0 or cc >= width:
                continue
            q = rr * width + cc
            if dense or member[q]:
                j = rank[q]
                if j < i:
                    roots[k] = _find(parent, j)
                    k += 1
        _join(i, roots, k, parent, born, death, last)
    return born, death, last


@_jit
def _union_find_sparse(idx, order, up, down, width, eight):  # pragma: no cover - compiled
    """:func:`_union_find` for a few pixels of a large frame, in their own compact space.

    ``idx``: the member pixels' flat indices, ascending; ``order``: positions in ``idx``
    in visiting order; ``up`` / ``down``: for each position, the first position whose
    pixel is at or after ``idx - width - 1`` / ``idx + width - 1`` (``searchsorted``).
    Neighbours are found in ``idx`` itself, so the work stays in a few cache-friendly
    arrays of the members' size instead of frame-sized lookups (cache misses).
    Returns the same arrays as :func:`_union_find`, indexed by visiting rank.
    """
    m = idx.size
    rank = np.empty(m, np.int32)
    for i in range(m):
        rank[order[i]] = i
    parent = np.empty(m, np.int32)
    born = np.zeros(m, np.bool_)
    death = np.full(m, -1, np.int32)
    last = np.empty(m, np.int32)
    roots = np.empty(8, np.int32)
    nbr = np.empty(8, np.int64)
    for i in range(m):
        j = order[i]
        p = idx[j]
        r = p // width
        c = p - r * width
        n = 0
        if c > 0 and j > 0 and idx[j - 1] == p - 1:
            nbr[n] = j - 1
            n += 1
        if c < width - 1 and j + 1 < m and idx[j + 1] == p + 1:
            nbr[n] = j + 1
            n += 1
        for start, row in ((up[j], r - 1), (down[j], r + 1)):
            k = start
            base = row * width
            while k < m and idx[k] <= base + c + 1:
                q = idx[k]
                cc = q - base
                if q >= base and cc < width and (cc == c or (eight and cc >= c - 1)):
                    nbr[n] = k
                    n += 1
                k += 1
        nroots = 0
        for t in range(n):
            jj = rank[nbr[t]]
            if jj < i:
                roots[nroots] = _find(parent, jj)
                nroots += 1
        _join(i, roots, nroots, parent, born, death, last)
    return born, death, last


@_jit
def _greedy_suppress(n, first, second):  # pragma: no cover - compiled
    """Keep flags for peaks ``0..n-1`` (most persistent first) given close pairs.

    ``first < second`` pairwise and ``first`` sorted: a peak removes its close,
    less persistent neighbours only if it is itself kept.
    """
    keep = np.ones(n, np.bool_)
    for t in range(first.size):
        if keep[first[t]]:
            keep[second[t]] = False
    return keep


def _as_image(image, name: str = "image") -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 2:
        raise OptionError(f"{name} must be a 2-D array (H, W), got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.view(np.uint8)
    elif a.dtype.kind == "f" and a.dtype.itemsize < 4:
        a = a.astype(np.float32)
    elif a.dtype.kind not in "uif":
        raise OptionError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return np.ascontiguousarray(a)


def _above(a: np.ndarray, threshold: float) -> np.ndarray:
    """``a > threshold`` computed in ``a``'s own dtype (no float64 copy of the frame)."""
    if a.dtype.kind in "ui":
        info = np.iinfo(a.dtype)
        level = np.floor(threshold)  # integer pixels: v > t  <=>  v > floor(t)
        if level < info.min:
            return np.ones(a.shape, bool)
        if level >= info.max:
            return np.zeros(a.shape, bool)
        return a > a.dtype.type(int(level))
    with np.errstate(over="ignore"):
        level = a.dtype.type(threshold)
    if float(level) > threshold:  # rounded up: v > t  <=>  v > the dtype value just below
        level = np.nextafter(level, a.dtype.type(-np.inf))
    return a > level


def _order_keys(values: np.ndarray) -> np.ndarray:
    """Unsigned 64-bit keys with the same order as ``values`` (finite), offset to start at 0."""
    if values.dtype.kind == "f":
        if values.dtype.itemsize == 4:
            bits = (values + np.float32(0.0)).view(np.uint32).astype(np.uint64)  # -0.0 -> +0.0
            sign = np.uint64(1 << 31)
            full = np.uint64(0xFFFFFFFF)
        else:
            bits = (values.astype(np.float64) + 0.0).view(np.uint64)
            sign = np.uint64(1 << 63)
            full = np.uint64(0xFFFFFFFFFFFFFFFF)
        # IEEE order trick: flip all bits of negatives, set the sign bit of positives.
        keys = np.where(bits & sign, full ^ bits, bits | sign)
    elif values.dtype.kind == "u":
        keys = values.astype(np.uint64)
    else:
        keys = values.astype(np.int64).view(np.uint64) ^ np.uint64(1 << 63)
    if keys.size:
        keys -= keys.min()
    return keys


def _empty_columns() -> dict[str, np.ndarray]:
    return {
        "y": np.empty(0, np.int64),
        "x": np.empty(0, np.int64),
        "birth": np.empty(0, np.float64),
        "death": np.empty(0, np.float64),
        "persistence": np.empty(0, np.float64),
    }


def persistence(
    image: np.ndarray,
    threshold: float | None = None,
    *,
    connectivity: int = 8,
    pixels: np.ndarray | None = None,
) -> pd.DataFrame:
    """Every local maximum of a frame with its birth, death and persistence.

    0-dimensional persistent homology of the super-level sets: pixels are visited from
    the brightest down and grouped into connected islands (union-find); a local maximum
    starts an island at its height (``birth``); when two islands touch at a pixel, the
    island with the lower maximum dies at that pixel's value (``death``, the saddle) and
    joins the other (elder rule).

    Rules, chosen to give the same answer as ``findpeaks(method='topology')`` (with
    ``scale=False, denoise=None, togray=False, imsize=None``) on non-negative frames:

    * Ties: pixels are ordered by value, and among equal values the pixel later in
      raster (row-major) order counts as higher.  A plateau therefore has its maximum at
      its last pixel in raster order; a plateau that is not convex in raster order can
      add extra maxima with persistence 0 (they die at their own level).
    * Islands are the 8-connected (or 4-connected) sets of pixels above ``threshold``, or
      of all pixels when ``threshold`` is None.  The highest maximum of an island never
      meets a higher one: it dies at ``threshold`` when a threshold is given (its
      persistence is its height above the threshold), otherwise at the island's floor,
      the lowest pixel value of the island.  On a frame whose low pixels were set to 0,
      ``threshold=0`` and ``threshold=None`` give the same peaks (the former may miss a
      persistence-0 maximum of the zero background) and findpeaks' values.
    * Non-finite pixels (NaN, +-inf) take no part: they belong to no island, as if they
      were below the threshold.
    * findpeaks reports its global maximum's death as 0 whatever the background; this
      function reports the floor, so the two agree on that peak only when the floor is 0.

    Parameters
    ----------
    image : (H, W) array_like
        Frame, any integer or floating dtype.
    threshold : float, optional
        Only pixels strictly above this value are visited; the work is proportional to
        their number.  The comparison is done in the frame's own dtype.
    connectivity : {8, 4}
        Pixel neighbourhood.  findpeaks uses 8.
    pixels : 1-D int array, optional
        Flat (row-major) indices, ascending, of exactly the pixels strictly above
        ``threshold``, when the caller already has them (preprocessing does): saves the
        pass over the frame.  Requires ``threshold``.

    Returns
    -------
    pandas.DataFrame
        One row per local maximum, most persistent first (equal persistence: higher
        maximum first): ``y`` (row), ``x`` (column) of the maximum pixel (int),
        ``birth``, ``death``, ``persistence = birth - death`` (float, image units).

    Examples
    --------
    >>> import numpy as np
    >>> from braggtrack.detect import persistence
    >>> frame = np.array([[0, 5, 1, 3, 0]])
    >>> persistence(frame)
       y  x  birth  death  persistence
    0  0  1    5.0    0.0          5.0
    1  0  3    3.0    1.0          2.0
    """
    return pd.DataFrame(_persistence_columns(image, threshold, connectivity, pixels))


def _persistence_columns(image, threshold, connectivity, pixels) -> dict[str, np.ndarray]:
    """:func:`persistence` as a dict of columns (the pipeline builds one table per chunk)."""
    if connectivity not in (4, 8):
        raise OptionError(f"connectivity must be 4 or 8, got {connectivity!r}")
    if pixels is not None and threshold is None:
        raise OptionError("persistence: pixels= needs the threshold they are above")
    if threshold is not None:
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise OptionError(f"threshold must be a number, got {threshold!r}") from None
        if np.isnan(threshold):
            raise OptionError("threshold must be a number, got NaN")
    a = _as_image(image)
    height, width = a.shape
    if a.size == 0:
        return _empty_columns()
    if a.size >= 2**31 - 1:
        raise OptionError(f"image of shape {a.shape} is too large (more than 2**31 pixels)")
    flat = a.reshape(-1)
    floating = a.dtype.kind == "f"

    if threshold is None:
        member = np.isfinite(flat) if floating else np.ones(0, bool)
        idx = None
        if floating and member.all():
            member = np.ones(0, bool)
        elif floating:
            idx = np.flatnonzero(member)
    else:
        if pixels is None:
            member = _above(a, threshold).reshape(-1)
            idx = np.flatnonzero(member)
        else:
            idx = np.asarray(pixels, dtype=np.int64)
            member = None  # built below only if the dense union-find needs it
        if floating:
            bad = ~np.isfinite(flat[idx])  # +inf passed the comparison; NaN never does
            if bad.any():
                if member is not None:
                    member[idx[bad]] = False
                idx = idx[~bad]
    values = flat if idx is None else flat[idx]
    if values.size == 0:
        return _empty_columns()

    order = _radix_order_descending(_order_keys(values))
    sidx = order if idx is None else idx[order]
    if idx is not None and 8 * idx.size < flat.size:
        # Few pixels above the threshold (the usual case): stay in their compact space.
        up = np.searchsorted(idx, idx - width - 1)
        down = np.searchsorted(idx, idx + width - 1)
        born, death_rank, last_rank = _union_find_sparse(idx, order, up, down, width,
                                                         connectivity == 8)
    else:
        if member is None:
            member = np.zeros(flat.size, bool)
            member[idx] = True
        born, death_rank, last_rank = _union_find(sidx, member, height, width,
                                                  connectivity == 8)

    peak_rank = np.flatnonzero(born)
    pix = sidx[peak_rank]
    birth = flat[pix].astype(np.float64)
    dr = death_rank[peak_rank].astype(np.int64)
    alive = dr < 0
    death = np.empty(peak_rank.size, np.float64)
    death[~alive] = flat[sidx[dr[~alive]]]
    if threshold is None:
        death[alive] = flat[sidx[last_rank[peak_rank[alive]]]]
    else:
        death[alive] = threshold
    pers = birth - death
    # Stable on the visiting order, so equal persistence keeps the higher maximum first.
    rank = np.argsort(-pers, kind="stable")
    y, x = np.divmod(pix[rank], width)
    return {
        "y": y.astype(np.int64),
        "x": x.astype(np.int64),
        "birth": birth[rank],
        "death": death[rank],
        "persistence": pers[rank],
    }


def _intensity_range(a: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    if a.dtype.kind != "f":
        return float(a.max()) - float(a.min())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN frame
        hi, lo = np.nanmax(a), np.nanmin(a)
    if not (np.isfinite(hi) and np.isfinite(lo)):
        finite = a[np.isfinite(a)]
        if finite.size == 0:
            return 0.0
        hi, lo = finite.max(), finite.min()
    return float(hi) - float(lo)


def _near_bad(y: np.ndarray, x: np.ndarray, bad: np.ndarray, radius: int) -> np.ndarray:
    """True where a ``bad`` pixel lies within Euclidean distance ``radius`` of (y, x)."""
    height, width = bad.shape
    near = np.zeros(y.size, bool)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx > radius * radius:
                continue
            yy, xx = y + dy, x + dx
            inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
            hit = np.zeros(y.size, bool)
            hit[inside] = bad[yy[inside], xx[inside]]
            near |= hit
    return near


def select_peaks(
    peaks: pd.DataFrame,
    image: np.ndarray,
    *,
    min_persistence: float = 0.0,
    min_score: float = 10.0,
    edge: int = 2,
    mask: np.ndarray | None = None,
    min_distance: float = 3.0,
    max_peaks: int = 5000,
    intensity_range: float | None = None,
) -> pd.DataFrame:
    """Score, filter, thin out and flag the maxima found by :func:`persistence`.

    Rules, applied in this order:

    1. ``score = persistence / (max - min) * 255``, the persistence on a 0..255 scale of
       the frame's intensity range (finite pixels only); a flat frame gives score 0.
    2. Keep peaks with ``persistence > 0``, ``persistence >= min_persistence`` and
       ``score >= min_score``.  Zero-persistence maxima are plateau artefacts, never peaks.
    3. Suppression: visiting peaks from the most persistent down (ties: input order), a
       peak is dropped when a kept, more persistent peak lies closer than
       ``min_distance`` pixels (Euclidean, strictly less).  ``min_distance=0`` keeps all.
    4. Keep the ``max_peaks`` most persistent.
    5. Flag, not drop: ``ok=False`` with ``reason='edge'`` when a pixel outside the frame
       lies within ``edge`` pixels of the maximum (that is, ``x < edge`` or
       ``x > W - 1 - edge``, same for ``y``); otherwise ``reason='mask'`` when a masked
       pixel lies within Euclidean distance ``edge`` (a masked maximum is always flagged).
       ``reason`` is ``''`` when ``ok``.

    Parameters
    ----------
    peaks : pandas.DataFrame
        Output of :func:`persistence` (at least ``y``, ``x``, ``persistence``); other
        columns are carried along.
    image : (H, W) array_like
        The frame the peaks were found in (for the intensity range and the edges).
    min_persistence : float
        Minimum persistence, image units (counts).
    min_score : float
        Minimum score on the 0..255 scale.
    edge : int
        Flag distance to the frame edge or to a masked pixel, pixels.
    mask : (H, W) bool array_like, optional
        True marks bad pixels.
    min_distance : float
        Minimum distance between two kept peaks, pixels.
    max_peaks : int
        Maximum number of peaks kept.
    intensity_range : float, optional
        ``max - min`` of ``image`` when already known (saves a pass over the frame).

    Returns
    -------
    pandas.DataFrame
        The kept peaks, most persistent first, with ``score`` (float), ``ok`` (bool) and
        ``reason`` (str) added.

    Examples
    --------
    >>> import numpy as np
    >>> from braggtrack.detect import persistence, select_peaks
    >>> frame = np.zeros((9, 9))
    >>> frame[4, 4], frame[4, 6], frame[0, 0] = 100.0, 60.0, 50.0
    >>> table = select_peaks(persistence(frame), frame, min_distance=3)
    >>> table[["y", "x", "score", "ok"]]
       y  x  score     ok
    0  4  4  255.0   True
    1  0  0  127.5  False
    >>> table["reason"].tolist()
    ['', 'edge']
    """
    a = _as_image(image)
    if not isinstance(peaks, pd.DataFrame):
        raise OptionError(f"peaks must be a pandas DataFrame, got {type(peaks).__name__}")
    missing = [c for c in ("y", "x", "persistence") if c not in peaks.columns]
    if missing:
        raise OptionError(f"peaks table lacks column(s) {', '.join(missing)}")
    for name, value in (("min_persistence", min_persistence), ("min_score", min_score),
                        ("min_distance", min_distance)):
        if not (np.isfinite(value) and value >= 0):
            raise OptionError(f"{name} must be a number >= 0, got {value!r}")
    if int(edge) != edge or edge < 0:
        raise OptionError(f"edge must be an integer >= 0 pixels, got {edge!r}")
    if int(max_peaks) != max_peaks or max_peaks < 1:
        raise OptionError(f"max_peaks must be an integer >= 1, got {max_peaks!r}")
    bad = None
    if mask is not None:
        bad = np.asarray(mask)
        if bad.shape != a.shape:
            raise OptionError(f"mask shape {bad.shape} does not match image shape {a.shape}")
        bad = bad.astype(bool, copy=False)

    table = peaks.reset_index(drop=True)
    span = _intensity_range(a) if intensity_range is None else float(intensity_range)
    rows, score, ok, reason = _select_rows(
        table["persistence"].to_numpy(np.float64), table["y"].to_numpy().astype(np.int64),
        table["x"].to_numpy().astype(np.int64), a.shape, span, bad,
        min_persistence=min_persistence, min_score=min_score, edge=int(edge),
        min_distance=min_distance, max_peaks=int(max_peaks),
    )
    out = table.iloc[rows].reset_index(drop=True)
    return out.assign(score=score, ok=ok, reason=reason)


def _select_rows(pers, all_y, all_x, shape, span, bad, *, min_persistence, min_score, edge,
                 min_distance, max_peaks):
    """The rules of :func:`select_peaks` on arrays (checked options): the kept rows and
    their score, ok flag and reason."""
    score = pers * (255.0 / span) if span > 0 else np.zeros_like(pers)
    score = np.where(np.isfinite(score), score, 0.0)
    rows = np.flatnonzero((pers > 0) & (pers >= min_persistence) & (score >= min_score))
    rows = rows[np.argsort(-pers[rows], kind="stable")]

    if min_distance > 0 and rows.size > 1:
        pos = np.column_stack([all_y[rows], all_x[rows]]).astype(np.float64)
        pairs = cKDTree(pos).query_pairs(float(min_distance), output_type="ndarray")
        if pairs.size:
            d2 = ((pos[pairs[:, 0]] - pos[pairs[:, 1]]) ** 2).sum(axis=1)
            pairs = pairs[d2 < float(min_distance) ** 2]
            pairs = np.sort(pairs, axis=1)  # row = (more persistent, less persistent)
            pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
            kept = _greedy_suppress(rows.size, pairs[:, 0].astype(np.int64),
                                    pairs[:, 1].astype(np.int64))
            rows = rows[kept]
    rows = rows[:max_peaks]
    ok, reason = _flag_rows(all_y[rows], all_x[rows], shape, bad, edge)
    return rows, score[rows], ok, reason


def _flag_rows(y, x, shape, bad, edge):
    """Rule 5 of :func:`select_peaks` for maxima at pixels ``(y, x)`` of a frame of
    ``shape`` with mask ``bad`` (or None): their ok flag and reason."""
    height, width = shape
    e = edge
    at_edge = (x < e) | (y < e) | (x > width - 1 - e) | (y > height - 1 - e)
    near_mask = np.zeros(y.size, bool)
    if bad is not None and bad.any():
        near_mask = _near_bad(y, x, bad, e) & ~at_edge
    reason = np.full(y.size, "", dtype=object)
    reason[at_edge] = "edge"
    reason[near_mask] = "mask"
    return ~(at_edge | near_mask), reason
