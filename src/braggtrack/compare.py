"""Compare sub-pixel localizers on the same peaks and explain where they disagree.

:func:`compare_localizers` cuts the patch of every accepted peak of a run (or of a peak table
with its frames) and localizes it with each localizer (``braggnn``, ``pvoigt``, ``gauss``,
``centroid``; a localizer that cannot be loaded is skipped and the reason kept).  The result
holds the positions, the pairwise distance of every pair of localizers on every peak, and
shape measures of each patch (:func:`patch_shape`: second moments, skewness, centroid-to-maximum
offset, number of separate maxima, FWHM, signal-to-noise) which usually explain a disagreement:
a second maximum, an asymmetric or streaked spot, a spot broader than the patch, a weak one.
:func:`compare_report` writes the plots and a self-contained HTML page;
:func:`comparison_section` gives the same as an HTML fragment for the main report.

The shape measures are plain numpy moments on small patches; no library computes this set.
"""

from __future__ import annotations

import html
import itertools
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import BraggTrackError, OptionError

#: Marker, colour and label of each localizer in every figure of the report.
LOCALIZER_STYLE: dict[str, dict] = {
    "braggnn": dict(marker="*", color="#00e5ff", s=70, label="BraggNN (CNN)"),
    "pvoigt": dict(marker="o", color="#7CFC00", s=55, facecolors="none", label="pseudo-Voigt fit"),
    "gauss": dict(marker="x", color="#ff4fd8", s=45, label="Gaussian fit"),
    "centroid": dict(marker="+", color="#ffd400", s=70, label="centroid"),
}
_EXTRA_COLOURS = ("#ffffff", "#ff8c00", "#9acd32", "#1e90ff")

Localizer = Callable[[np.ndarray], pd.DataFrame]


def localizer_style(name: str, i: int = 0) -> dict:
    """Matplotlib scatter style of a localizer (a default for unknown names)."""
    style = LOCALIZER_STYLE.get(name)
    if style is None:
        style = dict(marker="D", color=_EXTRA_COLOURS[i % len(_EXTRA_COLOURS)], s=40,
                     facecolors="none", label=name)
    return dict(style)


def _named_localizers(localizers) -> tuple[dict[str, Localizer], dict[str, str]]:
    """Callables for the requested localizers; names that cannot be loaded go to ``skipped``."""
    if isinstance(localizers, Mapping):
        return dict(localizers), {}
    if isinstance(localizers, str):
        localizers = (localizers,)
    funcs: dict[str, Localizer] = {}
    skipped: dict[str, str] = {}
    try:
        from .localize import localize
    except ImportError as exc:
        return {}, {name: f"braggtrack.localize cannot be imported ({exc})" for name in localizers}
    for name in localizers:
        if name == "braggnn":
            try:
                from .braggnn import load_model

                model = load_model()
            except (ImportError, BraggTrackError, OSError, RuntimeError) as exc:
                skipped[name] = f"BraggNN model not available ({str(exc).splitlines()[0][:120]})"
                continue
            funcs[name] = lambda p, _m=model: localize(p, "braggnn", model=_m)
        else:
            funcs[name] = lambda p, _n=name: localize(p, _n)
    return funcs, skipped


def run_localizers(
    patches: np.ndarray, localizers: Sequence[str] | Mapping[str, Localizer] = (
        "braggnn", "pvoigt", "gauss", "centroid")
) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Localize ``patches`` with every localizer that loads.

    Parameters
    ----------
    patches : ndarray, shape (n, N, N)
    localizers : names or mapping name -> callable(patches) -> DataFrame with ``dx``, ``dy``
        and ``converged``.

    Returns
    -------
    results : dict name -> DataFrame (one row per patch)
    skipped : dict name -> reason the localizer was not run

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[-5:6, -5:6]
    >>> p = (100 * np.exp(-((x - 0.3) ** 2 + y ** 2) / 2))[None].astype("float32")
    >>> res, skipped = run_localizers(p, ["centroid"])
    >>> round(float(res["centroid"]["dx"].iloc[0]), 1)
    0.3
    """
    funcs, skipped = _named_localizers(localizers)
    results = {}
    for name, func in funcs.items():
        try:
            table = func(np.asarray(patches, dtype=np.float32))
        except (BraggTrackError, ImportError, RuntimeError, ValueError) as exc:
            skipped[name] = f"failed: {str(exc).splitlines()[0][:120]}"
            continue
        if len(table) != len(patches) or not {"dx", "dy"} <= set(table.columns):
            skipped[name] = "returned a table of the wrong shape"
            continue
        table = table.reset_index(drop=True)
        if "converged" not in table.columns:
            table["converged"] = True
        results[name] = table
    return results, skipped


def _count_maxima(patch: np.ndarray, fraction: float) -> int:
    """Separate maxima whose persistence exceeds ``fraction`` of the patch's peak height."""
    height = float(patch.max() - np.median(np.r_[patch[0], patch[-1], patch[:, 0], patch[:, -1]]))
    if height <= 0:
        return 0
    try:
        from .detect import persistence

        table = persistence(patch.astype(np.float64))
        pers = table["persistence"].to_numpy(float)
        # The global maximum never dies; its persistence is reported as its height or inf.
        pers = np.where(np.isfinite(pers), pers, height)
        return int(max(1, np.sum(pers >= fraction * height)))
    except (ImportError, BraggTrackError, KeyError):
        from scipy import ndimage

        local = (patch == ndimage.maximum_filter(patch, size=3)) & (
            patch >= patch.max() - (1 - fraction) * height)
        _, n = ndimage.label(local)
        return int(max(1, n))


def _fwhm_1d(profile: np.ndarray, i: int, half: float) -> tuple[float, bool]:
    """Full width at ``half`` of a profile around index ``i``; True when it leaves the patch."""
    n = len(profile)
    left = i
    while left > 0 and profile[left - 1] > half:
        left -= 1
    right = i
    while right < n - 1 and profile[right + 1] > half:
        right += 1
    truncated = left == 0 or right == n - 1
    lx = float(left)
    if left > 0:
        a, b = profile[left - 1], profile[left]
        lx = left - (b - half) / (b - a) if b != a else float(left)
    rx = float(right)
    if right < n - 1:
        a, b = profile[right], profile[right + 1]
        rx = right + (a - half) / (a - b) if a != b else float(right)
    return max(rx - lx, 0.0), truncated


def patch_shape(patches: np.ndarray, *, second_max_fraction: float = 0.2) -> pd.DataFrame:
    """Shape measures of each patch that explain why localizers disagree.

    Background is the median of the border pixels; the moments use the background-subtracted,
    non-negative pixels; coordinates are offsets from the central pixel (x = column, y = row).

    Parameters
    ----------
    patches : ndarray, shape (n, N, N)
    second_max_fraction : float
        A maximum counts as separate when its persistence (height above the saddle joining it
        to a higher one) is at least this fraction of the peak height.

    Returns
    -------
    DataFrame
        ``background``, ``height`` (max - background), ``snr`` (height / border noise),
        ``cx``, ``cy`` (centroid), ``sigma_x``, ``sigma_y``, ``ellipticity`` (1 - minor/major
        axis of the second moments), ``skew_x``, ``skew_y`` (standardised third moments),
        ``max_offset`` (px between the centroid and the brightest pixel), ``n_maxima``,
        ``fwhm_x``, ``fwhm_y`` (px, through the brightest pixel), ``truncated`` (half maximum
        not reached inside the patch), ``cause`` (short text: likely reason of a disagreement).

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[-5:6, -5:6]
    >>> p = 100 * np.exp(-(x ** 2 + y ** 2) / (2 * 1.5 ** 2))
    >>> s = patch_shape(p[None])
    >>> round(float(s["fwhm_x"].iloc[0]), 1), int(s["n_maxima"].iloc[0])
    (3.5, 1)
    """
    p = np.asarray(patches, dtype=np.float64)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.shape[1] != p.shape[2]:
        raise OptionError(f"patches must have shape (n, N, N), got {p.shape}")
    n, size, _ = p.shape
    c = size // 2
    border = np.concatenate([p[:, 0, :], p[:, -1, :], p[:, 1:-1, 0], p[:, 1:-1, -1]], axis=1)
    background = np.median(border, axis=1)
    mad = np.median(np.abs(border - background[:, None]), axis=1)
    noise = np.maximum(1.4826 * mad, 1e-12)
    w = np.clip(p - background[:, None, None], 0, None)
    total = w.sum(axis=(1, 2))
    safe = np.where(total > 0, total, 1.0)
    offsets = np.arange(size) - c
    wx = w.sum(axis=1)  # (n, N) profile over columns
    wy = w.sum(axis=2)
    cx = (wx * offsets).sum(1) / safe
    cy = (wy * offsets).sum(1) / safe
    dx = offsets[None, :] - cx[:, None]
    dy = offsets[None, :] - cy[:, None]
    vxx = (wx * dx**2).sum(1) / safe
    vyy = (wy * dy**2).sum(1) / safe
    vxy = (w * dy[:, :, None] * dx[:, None, :]).sum((1, 2)) / safe
    sx, sy = np.sqrt(vxx), np.sqrt(vyy)
    skew_x = (wx * dx**3).sum(1) / safe / np.maximum(sx, 1e-12) ** 3
    skew_y = (wy * dy**3).sum(1) / safe / np.maximum(sy, 1e-12) ** 3
    tr, det = vxx + vyy, vxx * vyy - vxy**2
    disc = np.sqrt(np.maximum(tr**2 / 4 - det, 0))
    major, minor = tr / 2 + disc, np.maximum(tr / 2 - disc, 0)
    ellipticity = np.where(major > 0, 1 - np.sqrt(minor / np.where(major > 0, major, 1)), 0.0)
    flat_idx = p.reshape(n, -1).argmax(1)
    mr, mc = np.divmod(flat_idx, size)
    max_offset = np.hypot(cx - (mc - c), cy - (mr - c))
    height = p.reshape(n, -1).max(1) - background
    rows = []
    for i in range(n):
        half = background[i] + height[i] / 2
        fx, tx = _fwhm_1d(p[i, mr[i], :], int(mc[i]), half)
        fy, ty = _fwhm_1d(p[i, :, mc[i]], int(mr[i]), half)
        rows.append((fx, fy, tx or ty, _count_maxima(p[i], second_max_fraction)))
    fwhm_x, fwhm_y, truncated, n_max = (np.array(v) for v in zip(*rows, strict=True)) if rows else (
        np.zeros(0), np.zeros(0), np.zeros(0, bool), np.zeros(0, int))
    snr = height / noise
    out = pd.DataFrame({
        "background": background, "height": height, "snr": np.minimum(snr, 1e6),
        "cx": cx, "cy": cy, "sigma_x": sx, "sigma_y": sy, "ellipticity": ellipticity,
        "skew_x": skew_x, "skew_y": skew_y, "max_offset": max_offset,
        "n_maxima": n_max.astype(int), "fwhm_x": fwhm_x.astype(float),
        "fwhm_y": fwhm_y.astype(float), "truncated": truncated.astype(bool),
    })
    out["cause"] = [_cause(r, size) for r in out.itertuples()]
    return out


def _cause(r, size: int) -> str:
    causes = []
    if r.n_maxima > 1:
        causes.append(f"{r.n_maxima} maxima")
    if r.truncated or max(r.fwhm_x, r.fwhm_y) > 0.6 * size:
        causes.append("broader than patch")
    if max(abs(r.skew_x), abs(r.skew_y)) > 0.5 or r.max_offset > 0.5:
        causes.append("asymmetric")
    if r.ellipticity > 0.5:
        causes.append("elongated")
    if r.snr < 5:
        causes.append("weak")
    return ", ".join(causes) or "compact"


@dataclass(frozen=True)
class ComparisonResult:
    """Positions of the same peaks from several localizers.

    Attributes
    ----------
    peaks : DataFrame
        One row per compared peak: ``peak`` (row label in the source table), ``frame``, ``row``,
        ``col`` (patch centre pixel), for each localizer ``x_<name>``, ``y_<name>`` (detector
        pixels) and ``ok_<name>`` (converged), ``max_distance`` (largest pairwise distance among
        the converged localizers, px) and the :func:`patch_shape` measures.
    distances : DataFrame
        Long table ``peak, pair, a, b, distance, dx, dy`` (b minus a, px) for pairs where both
        converged.
    summary : DataFrame
        Per pair: ``n, median, mean, p90, p99, max`` of the distance (px).
    patches : ndarray, shape (n, N, N)
        The patches, aligned with ``peaks``.
    localizers : tuple of str
        Localizers that ran.
    skipped : dict
        Localizer -> why it did not run.
    n_available : int
        Accepted peaks available before subsampling to ``max_peaks``.
    """

    peaks: pd.DataFrame
    distances: pd.DataFrame
    summary: pd.DataFrame
    patches: np.ndarray
    localizers: tuple[str, ...]
    skipped: dict = field(default_factory=dict)
    n_available: int = 0

    def worst(self, n: int = 24) -> pd.DataFrame:
        """The ``n`` peaks where the localizers disagree most."""
        return self.peaks.sort_values("max_distance", ascending=False).head(n)


def _summary(distances: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for pair, g in distances.groupby("pair", sort=False):
        d = g["distance"].to_numpy(float)
        rows.append((pair, len(d), np.median(d), d.mean(), np.percentile(d, 90),
                     np.percentile(d, 99), d.max()))
    return pd.DataFrame(rows, columns=["pair", "n", "median", "mean", "p90", "p99", "max"])


def compare_patches(
    patches: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    frames: np.ndarray | None = None,
    peak_ids: np.ndarray | None = None,
    localizers: Sequence[str] | Mapping[str, Localizer] = ("braggnn", "pvoigt", "gauss",
                                                            "centroid"),
    second_max_fraction: float = 0.2,
) -> ComparisonResult:
    """Compare localizers on given patches centred on pixels ``rows``, ``cols``.

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[-5:6, -5:6]
    >>> p = (100 * np.exp(-((x - 0.3) ** 2 + y ** 2) / 2))[None].astype("float32")
    >>> res = compare_patches(p, np.array([20]), np.array([30]), localizers=["centroid", "gauss"])
    >>> round(float(res.peaks["x_gauss"].iloc[0]), 1)
    30.3
    """
    patches = np.asarray(patches, dtype=np.float32)
    n = len(patches)
    rows, cols = np.asarray(rows, int), np.asarray(cols, int)
    results, skipped = run_localizers(patches, localizers)
    if not results:
        raise OptionError(
            "no localizer could be run: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    peaks = pd.DataFrame({
        "peak": np.arange(n) if peak_ids is None else np.asarray(peak_ids),
        "frame": np.zeros(n, int) if frames is None else np.asarray(frames, int),
        "row": rows, "col": cols,
    })
    names = tuple(results)
    for name, table in results.items():
        peaks[f"x_{name}"] = cols + table["dx"].to_numpy(float)
        peaks[f"y_{name}"] = rows + table["dy"].to_numpy(float)
        peaks[f"ok_{name}"] = table["converged"].to_numpy(bool) & np.isfinite(
            table["dx"].to_numpy(float)) & np.isfinite(table["dy"].to_numpy(float))
        # A failed fit may leave NaN; keep the table NaN-free and let ok_<name> say so.
        peaks[f"x_{name}"] = peaks[f"x_{name}"].where(peaks[f"ok_{name}"], cols.astype(float))
        peaks[f"y_{name}"] = peaks[f"y_{name}"].where(peaks[f"ok_{name}"], rows.astype(float))
    parts = []
    max_distance = np.zeros(n)
    for a, b in itertools.combinations(names, 2):
        both = (peaks[f"ok_{a}"] & peaks[f"ok_{b}"]).to_numpy()
        ddx = (peaks[f"x_{b}"] - peaks[f"x_{a}"]).to_numpy()
        ddy = (peaks[f"y_{b}"] - peaks[f"y_{a}"]).to_numpy()
        dist = np.hypot(ddx, ddy)
        max_distance = np.where(both, np.maximum(max_distance, dist), max_distance)
        parts.append(pd.DataFrame({
            "peak": peaks["peak"].to_numpy()[both], "pair": f"{a} vs {b}", "a": a, "b": b,
            "distance": dist[both], "dx": ddx[both], "dy": ddy[both],
        }))
    distances = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["peak", "pair", "a", "b", "distance", "dx", "dy"])
    peaks["max_distance"] = max_distance
    shape = patch_shape(patches, second_max_fraction=second_max_fraction) if n else patch_shape(
        np.zeros((0, 3, 3)))
    peaks = pd.concat([peaks, shape.reset_index(drop=True)], axis=1)
    return ComparisonResult(peaks=peaks, distances=distances, summary=_summary(distances),
                            patches=patches, localizers=names, skipped=skipped, n_available=n)


def compare_localizers(
    run_dir_or_table,
    *,
    localizers: Sequence[str] | Mapping[str, Localizer] = ("braggnn", "pvoigt", "gauss",
                                                            "centroid"),
    max_peaks: int = 5000,
    patch: int | None = None,
    frames=None,
    dataset: str | None = None,
    seed: int = 0,
    second_max_fraction: float = 0.2,
) -> ComparisonResult:
    """Localize every accepted peak of a run with several localizers and compare them.

    Parameters
    ----------
    run_dir_or_table : path, DataFrame or :class:`braggtrack.report.RunData`
        A run folder (``run.json`` names the frames), or a peak/track table (path or
        DataFrame), which then needs ``frames``.
    localizers : names or mapping name -> callable(patches) -> DataFrame
        Names that cannot be loaded (e.g. no BraggNN model) are skipped; see ``.skipped``.
    max_peaks : int
        Accepted peaks are subsampled (uniformly at random with ``seed``) to at most this many.
    patch : int, optional
        Patch size; default the run's ``patch`` parameter, else 11.
    frames : path, FrameSeries or ndarray (n, H, W), optional
        The frames, when ``run_dir_or_table`` is a table or the run's input has moved.
    dataset : str, optional
        HDF5 dataset of the frames.

    Returns
    -------
    ComparisonResult

    Examples
    --------
    >>> res = compare_localizers("RUN_DIR")                 # doctest: +SKIP
    >>> res.summary                                         # doctest: +SKIP
    """
    from .report import RunData, load_run

    run = run_dir_or_table if isinstance(run_dir_or_table, RunData) else load_run(
        run_dir_or_table, frames=frames, dataset=dataset)
    if run.series is None:
        raise OptionError(
            f"{run.source_label}: the frames are needed to compare localizers "
            f"({run.frames_note}); in Python, pass frames=PATH to compare_localizers")
    if max_peaks < 1:
        raise OptionError(f"max_peaks must be >= 1, got {max_peaks}")
    table = run.accepted
    size = int(patch or run.info.get("parameters", {}).get("patch") or 11)
    n_available = len(table)
    if n_available == 0:
        raise OptionError(f"{run.source_label}: no accepted peaks to compare")
    if n_available > max_peaks:
        rng = np.random.default_rng(seed)
        table = table.iloc[np.sort(rng.choice(n_available, max_peaks, replace=False))]
    rows_c, cols_c = _centres(table)
    from .patches import extract_patches

    patches = np.zeros((len(table), size, size), np.float32)
    frame_idx = table["frame"].to_numpy(int)
    n_frames = len(run.series)
    keep = (frame_idx >= 0) & (frame_idx < n_frames)
    for f in np.unique(frame_idx[keep]):
        sel = np.nonzero(frame_idx == f)[0]
        image = np.asarray(run.series[int(f)])
        patches[sel] = extract_patches(image, rows_c[sel], cols_c[sel], size).patches
    result = compare_patches(
        patches[keep], rows_c[keep], cols_c[keep], frames=frame_idx[keep],
        peak_ids=table.index.to_numpy()[keep], localizers=localizers,
        second_max_fraction=second_max_fraction)
    return ComparisonResult(**{**result.__dict__, "n_available": n_available})


def _centres(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Patch centres: the detected pixel when known, else the rounded position."""
    if {"x_det", "y_det"} <= set(table.columns):
        return table["y_det"].to_numpy().round().astype(int), table["x_det"].to_numpy().round().astype(int)
    return table["y"].to_numpy().round().astype(int), table["x"].to_numpy().round().astype(int)


def plot_distances(result: ComparisonResult):
    """Histograms of the pairwise distances (px), one panel per pair of localizers.

    Examples
    --------
    >>> fig = plot_distances(res)                           # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    pairs = result.summary["pair"].tolist()
    ncols = min(3, max(1, len(pairs)))
    nrows = max(1, int(np.ceil(len(pairs) / ncols)))
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    for ax, row in zip(axes, result.summary.itertuples(), strict=False):
        d = result.distances.loc[result.distances["pair"] == row.pair, "distance"].to_numpy()
        top = max(float(np.percentile(d, 99.5)), 1e-3) if len(d) else 1.0
        ax.hist(np.clip(d, 0, top), bins=40, range=(0, top), color="#4c72b0")
        ax.axvline(row.median, color="k", ls="--", lw=1)
        ax.set_title(f"{row.pair}\nmedian {row.median:.3f} px, 90% < {row.p90:.3f} px", fontsize=9)
        ax.set_xlabel("distance between centres (px)")
        ax.set_ylabel("peaks")
    fig.suptitle("How far apart the localizers put the same peak")
    return fig


def plot_patch_gallery(
    patches: np.ndarray,
    markers: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    titles: Sequence[str] | None = None,
    *,
    ncols: int = 8,
    title: str = "",
    frame_colour: str | None = None,
    panel_size: float = 1.6,
):
    """Grid of patches with each localizer's centre marked.

    Parameters
    ----------
    patches : ndarray (n, N, N)
    markers : dict name -> (dx, dy, ok) arrays of offsets from the central pixel
    titles : per-patch caption (small text under each patch)

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> fig = plot_patch_gallery(np.random.rand(3, 11, 11), {"centroid": (np.zeros(3),
    ...                          np.zeros(3), np.ones(3, bool))})
    """
    import matplotlib
    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    # One mosaic image in one axes: dozens of small axes would cost seconds to draw.
    patches = np.asarray(patches, dtype=np.float64)
    n = len(patches)
    ncols = max(1, min(ncols, n))
    nrows = max(1, int(np.ceil(n / ncols)))
    size = patches.shape[-1] if n else 11
    c = size // 2
    lines = max((str(t).count("\n") + 1 for t in titles), default=0) if titles is not None else 0
    unit = panel_size / (size + 1.0)  # inches per data unit (one pixel)
    caption = (0.12 * lines + 0.06) / unit  # data units of caption text under each patch
    gap = 1.0
    cell_w, cell_h = size + gap, size + gap + caption
    width, height = ncols * cell_w, nrows * cell_h
    legend_in = 0.45 if markers else 0.1
    fig_w, fig_h = width * unit, height * unit + legend_in
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((0, 0, 1, 1 - legend_in / fig_h))
    lut = (matplotlib.colormaps["magma"](np.linspace(0, 1, 256))[:, :3])
    mosaic = np.ones((int(np.ceil(height)), int(np.ceil(width)), 3))
    x0 = (np.arange(n) % ncols) * cell_w + gap / 2
    y0 = (np.arange(n) // ncols) * cell_h + gap / 2
    for i in range(n):
        p = patches[i]
        lo, hi = np.percentile(p, [1, 100])
        scaled = np.clip((p - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
        r0, c0 = int(round(y0[i])), int(round(x0[i]))
        y0[i], x0[i] = r0, c0
        mosaic[r0:r0 + size, c0:c0 + size] = lut[(scaled * 255).astype(int)]
    ax.imshow(mosaic, interpolation="nearest", extent=(-0.5, mosaic.shape[1] - 0.5,
                                                      mosaic.shape[0] - 0.5, -0.5))
    if frame_colour and n:
        boxes = [Rectangle((x0[i] - 0.5, y0[i] - 0.5), size, size) for i in range(n)]
        ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor=frame_colour,
                                          linewidth=2))
    handles, labels = [], []
    for j, (name, (dx, dy, ok)) in enumerate((markers or {}).items()):
        ok = np.asarray(ok, bool)[:n]
        style = localizer_style(name, j)
        label = style.pop("label")
        # Markers scale with the panel so they stay readable in large galleries.
        style["s"] = style["s"] * 1.6 * (panel_size / 1.6) ** 2
        h = ax.scatter((x0 + c + np.asarray(dx)[:n])[ok], (y0 + c + np.asarray(dy)[:n])[ok],
                       linewidths=1.6, **style)
        handles.append(h)
        labels.append(label)
    if titles is not None:
        for i in range(n):
            ax.text(x0[i] + c, y0[i] + size - 0.2, str(titles[i]), ha="center", va="top",
                    fontsize=6.5, linespacing=1.1)
    ax.set_xlim(-0.5, mosaic.shape[1] - 0.5)
    ax.set_ylim(mosaic.shape[0] - 0.5, -0.5)
    ax.set_axis_off()
    if handles:
        # Dark legend box: the marker colours are chosen for the dark colour map.
        fig.legend(handles, labels, loc="upper center", ncols=len(handles), fontsize=8,
                   frameon=True, facecolor="0.15", edgecolor="0.15", labelcolor="white",
                   bbox_to_anchor=(0.5, 1.0))
    if title:
        fig.text(0.01, 1 - 0.05 / fig_h, title, fontsize=9, va="top")
    return fig


def plot_worst(result: ComparisonResult, n: int = 24, *, ncols: int = 6):
    """Gallery of the ``n`` patches where the localizers disagree most, with shape captions."""
    worst = result.worst(n)
    idx = worst.index.to_numpy()
    markers = {
        name: ((worst[f"x_{name}"] - worst["col"]).to_numpy(),
               (worst[f"y_{name}"] - worst["row"]).to_numpy(), worst[f"ok_{name}"].to_numpy())
        for name in result.localizers
    }
    titles = [
        f"frame {r.frame}, spread {r.max_distance:.2f} px\n"
        f"FWHM {r.fwhm_x:.1f}x{r.fwhm_y:.1f} px, skew {max(abs(r.skew_x), abs(r.skew_y)):.2f}\n"
        + textwrap.fill(r.cause, 34)
        for r in worst.itertuples()
    ]
    return plot_patch_gallery(result.patches[idx], markers, titles, ncols=ncols,
                              panel_size=2.0)


def _table_html(df: pd.DataFrame, digits: int = 3) -> str:
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>" for row in df.itertuples(index=False)
    )
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def cause_counts(result: ComparisonResult, n: int = 100) -> pd.DataFrame:
    """How often each likely cause appears among the ``n`` worst peaks and among all peaks."""
    def count(df):
        return pd.Series([c.strip() for s in df["cause"] for c in s.split(",")]).value_counts()

    all_ = count(result.peaks)
    worst = count(result.worst(n))
    out = pd.DataFrame({"worst": worst, "all": all_}).fillna(0).astype(int)
    out["worst_%"] = (100 * out["worst"] / max(1, min(n, len(result.peaks)))).round(1)
    out["all_%"] = (100 * out["all"] / max(1, len(result.peaks))).round(1)
    return out.sort_values("worst", ascending=False).rename_axis("cause").reset_index()


def comparison_section(result: ComparisonResult, *, n_worst: int = 24) -> str:
    """HTML fragment (images as data URIs) comparing the localizers, for the main report.

    Examples
    --------
    >>> fragment = comparison_section(res)                  # doctest: +SKIP
    """
    from .report import figure_to_data_uri

    parts = [
        f"<p>{len(result.peaks)} accepted peaks"
        + (f" (random sample of {result.n_available})" if result.n_available > len(result.peaks)
           else "")
        + f" localized by {', '.join(result.localizers)}."
    ]
    if result.skipped:
        parts.append(" Not run: " + "; ".join(
            f"<b>{html.escape(k)}</b> ({html.escape(v)})" for k, v in result.skipped.items()))
    parts.append("</p>")
    if len(result.summary):
        parts.append(
            f'<figure><img alt="pairwise distance histograms" src="{figure_to_data_uri(plot_distances(result))}">'
            "<figcaption>Distance between the centres that two localizers give for the same "
            "peak, for every pair. Sub-pixel agreement (most peaks well under 0.1 px) means the "
            "choice of localizer does not matter for these peaks; a long tail points at peaks "
            "whose shape the simple models do not describe (see the gallery below).</figcaption>"
            "</figure>")
        parts.append("<h3>Distance statistics per pair (px)</h3>" + _table_html(result.summary))
        parts.append(
            f'<figure><img alt="worst patches" src="{figure_to_data_uri(plot_worst(result, n_worst))}">'
            "<figcaption>The patches where the localizers disagree most, each localizer's centre "
            "marked. Under each patch: its frame, the largest distance between two localizers "
            "(spread), the full width at half maximum through the brightest pixel, the largest "
            "skewness, and the likely cause (several maxima = overlapping or split spot; "
            "asymmetric = skewed or centroid away from the maximum; broader than patch = the "
            "spot does not fit in the patch; weak = signal-to-noise below 5).</figcaption>"
            "</figure>")
        parts.append("<h3>Likely causes among the worst 100 peaks and among all</h3>"
                     + _table_html(cause_counts(result)))
    return "\n".join(parts)


def compare_report(result: ComparisonResult, out_dir, *, n_worst: int = 24) -> Path:
    """Write the comparison plots, tables and a self-contained ``compare.html`` to ``out_dir``.

    Files: ``distances.png``, ``worst_patches.png``, ``summary.csv``, ``positions.parquet``,
    ``compare.html``.  Returns the path of ``compare.html``.

    Examples
    --------
    >>> compare_report(compare_localizers("RUN_DIR"), "RUN_DIR/compare")   # doctest: +SKIP
    """
    from .report import page_html
    from .tables import write_table

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    if len(result.summary):
        plot_distances(result).savefig(out / "distances.png", dpi=100)
        plot_worst(result, n_worst).savefig(out / "worst_patches.png", dpi=100)
    result.summary.to_csv(out / "summary.csv", index=False)
    write_table(result.peaks, out / "positions.parquet")
    page = page_html("braggtrack localizer comparison",
                     [("compare", "Localizer comparison", comparison_section(result, n_worst=n_worst))])
    path = out / "compare.html"
    path.write_text(page, encoding="utf-8")
    return path
