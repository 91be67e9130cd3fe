"""Find and localize Bragg peaks: one frame (:func:`find_peaks`) or a series (:func:`find`).

The chain is ``preprocess -> detect -> select -> patches -> localize`` (see DESIGN.md).
Localization is batched over every patch of a *chunk* of frames at once, because both the
vectorized Levenberg-Marquardt fits and the BraggNN network are much faster on one large
batch than on many small ones.

Examples
--------
>>> import numpy as np
>>> from braggtrack.pipeline import find_peaks
>>> yy, xx = np.mgrid[:64, :64]
>>> frame = 1000 * np.exp(-((xx - 30.3) ** 2 + (yy - 20.6) ** 2) / 2.0) + 10
>>> peaks = find_peaks(frame, localizer="gauss")
>>> round(float(peaks.x.iloc[0]), 1), round(float(peaks.y.iloc[0]), 1)
(30.3, 20.6)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .config import FindConfig
from .errors import FrameReadError, OptionError

#: Column order of the peak table (later stages append their own columns).
PEAK_COLUMNS = [
    "frame", "x", "y", "x_err", "y_err", "x_det", "y_det", "birth", "death", "persistence",
    "score", "intensity", "background", "sigma_x", "sigma_y", "localizer", "ok", "reason",
]


@dataclass(frozen=True)
class Calibration:
    """Per-detector corrections shared by every frame: dark, flat field and pixel mask.

    Arrays are full-resolution ``(H, W)``; ``None`` means "not used".
    """

    dark: np.ndarray | None = None
    flat: np.ndarray | None = None
    mask: np.ndarray | None = None
    #: The files they were loaded from, for messages (``from_files``).
    files: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def check_shape(self, shape: tuple[int, int]) -> None:
        """Refuse a dark, flat or mask whose shape is not the frames' ``shape``, naming its
        file (an :class:`~braggtrack.errors.InputFileError`), before any frame is read."""
        from .errors import InputFileError

        for name in ("dark", "flat", "mask"):
            image = getattr(self, name)
            if image is None or tuple(image.shape) == tuple(shape):
                continue
            source = self.files.get(name) or name
            if isinstance(source, (list, tuple)):
                source = source[0] if len(source) == 1 else ", ".join(map(str, source))
            raise InputFileError(source, f"{name} shape {image.shape[0]} x {image.shape[1]} "
                                         f"does not match the frames' {shape[0]} x {shape[1]}")

    @classmethod
    def from_files(
        cls,
        dark: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        flat: str | os.PathLike | None = None,
        mask: str | os.PathLike | None = None,
        mask_invert: bool = False,
    ) -> Calibration:
        """Load dark (a file, or the median of several dark frames), flat and mask files;
        ``mask_invert``: the mask file marks the good pixels (nonzero = good)."""
        from . import preprocess
        from .io import load_flat_file

        if mask_invert and mask is None:
            raise OptionError("--mask-invert needs --mask (the file of good pixels)")
        files = {"dark": None if dark is None else
                 ([str(dark)] if isinstance(dark, (str, os.PathLike)) else list(map(str, dark))),
                 "flat": None if flat is None else str(flat),
                 "mask": None if mask is None else str(mask)}
        return cls(
            files=files,
            dark=None if dark is None else preprocess.load_dark(dark),
            flat=None if flat is None else load_flat_file(flat),
            mask=None if mask is None else preprocess.load_mask(mask, invert=mask_invert),
        )


def _preprocessor(config: FindConfig, calibration: Calibration):
    from .preprocess import Preprocessor

    return Preprocessor(
        dark=calibration.dark,
        flat=calibration.flat,
        mask=calibration.mask,
        auto_mask=config.auto_mask,
        bin=config.bin,
        threshold=config.threshold,
        background=config.background,
    )


@dataclass
class _Detected:
    """Peaks of one frame after selection, before localization (columns as arrays: one
    table is built per chunk, since pandas costs ~1 ms per column operation)."""

    columns: dict[str, np.ndarray]  # frame, x_det, y_det (full res), birth, death, ..., reason
    patches: np.ndarray  # (n, N, N) float32

    def __len__(self) -> int:
        return len(self.columns["frame"])


def as_frame(image) -> np.ndarray:
    """Check that ``image`` is one non-empty 2-D frame of real numbers; return it usable.

    bool, int8 and float16 frames are widened (uint8, float32); other integer and float
    types are kept, since thresholds are compared in the frame's own dtype for speed.
    """

    a = np.asarray(image)
    if a.ndim != 2:
        raise OptionError(f"a frame must be a 2-D array, got {a.ndim}-D with shape {a.shape}")
    if a.size == 0:
        raise OptionError(f"a frame must not be empty, got shape {a.shape}")
    kind = a.dtype.kind
    if kind == "b":
        return a.astype(np.uint8)
    if kind not in "iuf":
        raise OptionError(f"frames of dtype {a.dtype} are not supported (need real numbers)")
    if a.dtype in (np.int8, np.float16):
        return a.astype(np.float32)
    return a


def _detect_frame(image: np.ndarray, frame: int, config: FindConfig, prep) -> _Detected:
    from .detect import _as_image, _flag_rows, _intensity_range, _persistence_columns, _select_rows
    from .patches import extract_patches, quality, recentre
    from .preprocess import binned_to_full

    prepared = prep(as_frame(image))
    b = config.bin
    if prepared.above is not None:
        # Unbinned: the image is the thresholded full frame, and preprocessing already
        # listed the pixels above the threshold, so detection never builds it.
        image = prepared.full
        span = prepared.intensity_range
    else:
        image = _as_image(prepared.image)
        span = None
    local = prepared.background
    # With a local threshold, the image passed holds only pixels above it (binned) or
    # `above` lists them, so 0 is below every member and marks the components still alive.
    raw = _persistence_columns(image, prepared.threshold if local is None else 0.0, 8,
                               prepared.above)
    if span is None and len(raw["y"]):
        span = _intensity_range(image)
    # Binning sums b*b pixels, so the noise of a binned pixel is b times larger.
    min_persistence = max(config.min_persistence, config.min_snr * prepared.noise * b)
    selectable = raw["persistence"]
    if local is not None and len(raw["y"]):
        # An isolated peak dies at the threshold where it stands, and must rise min_snr
        # times the noise there, not the frame's median noise.
        fy, fx = binned_to_full(raw["y"], b), binned_to_full(raw["x"], b)
        alive = raw["death"] == 0.0
        raw["death"] = np.where(alive, local.threshold_at(fy, fx), raw["death"])
        raw["persistence"] = raw["birth"] - raw["death"]
        strong = raw["persistence"] >= config.min_snr * local.noise_at(fy, fx) * b
        selectable = np.where(strong, raw["persistence"], 0.0)
        min_persistence = config.min_persistence
    # Edge and mask flags are set below at full resolution: in binned coordinates the
    # bins cropped off a frame that b does not divide would count as outside the frame.
    keep, score, _, _ = _select_rows(
        selectable, raw["y"], raw["x"], image.shape, span or 0.0, None,
        min_persistence=min_persistence,
        min_score=config.min_score,
        edge=0,
        min_distance=config.min_distance / b,
        max_peaks=config.max_peaks,
    )
    n = len(keep)
    rows, cols = raw["y"][keep], raw["x"][keep]
    if b > 1 and n:
        # The binned maximum covers a b x b block: go back to the brightest full-resolution
        # pixel of that block so the patch is centred on the real maximum.
        rows, cols = recentre(prepared.full, rows * b + (b - 1) // 2, cols * b + (b - 1) // 2,
                              radius=b // 2)
    if n == 0:
        return _Detected(columns=_empty_detected(),
                         patches=np.zeros((0, config.patch, config.patch), np.float32))
    mask = prepared.mask if prepared.mask is not None and prepared.mask.any() else None
    _, sel_reason = _flag_rows(rows, cols, prepared.full.shape, mask, config.edge)
    ps = extract_patches(prepared.full, rows, cols, size=config.patch, mask=prepared.mask)
    # Detection's own reasons (edge, mask within --edge) come first, then the patch's.
    # A neighbour up to 2 px outside the patch still spills its core into it.
    pairs = close_pairs(rows, cols, config.patch // 2 + 2)
    birth = raw["birth"][keep]
    others = _other_maxima(rows, cols, birth, pairs)
    patch_reason = quality(ps, config.centre_tolerance, others)["reason"].to_numpy(dtype=object)
    reason = np.where(sel_reason == "", patch_reason, sel_reason)
    columns = {
        "frame": np.full(n, frame, dtype=np.int64),
        "x_det": cols.astype(np.int64),
        "y_det": rows.astype(np.int64),
        "birth": raw["birth"][keep],
        "death": raw["death"][keep],
        "persistence": raw["persistence"][keep],
        "score": score,
        "reason": reason.astype(object),
        "neighbour": neighbour_in_patch(rows, cols, birth, pairs=pairs),
    }
    return _Detected(columns=columns, patches=ps.patches)


def close_pairs(rows: np.ndarray, cols: np.ndarray, half: int) -> np.ndarray:
    """``(k, 2)`` indices of the maxima within ``half`` pixels of each other along both axes
    (each pair once), for :func:`neighbour_in_patch` and the centre filter's close pairs."""
    if len(rows) < 2:
        return np.zeros((0, 2), np.int64)
    from scipy.spatial import cKDTree

    pts = np.column_stack([rows, cols]).astype(np.float64)
    return cKDTree(pts).query_pairs(half, p=np.inf, output_type="ndarray")


def _other_maxima(rows: np.ndarray, cols: np.ndarray, birth: np.ndarray, pairs: np.ndarray):
    """``(index, dy, dx)`` of close pairs, for :func:`braggtrack.patches.centre_filter`: a
    peak whose window holds exactly one other detected maximum (``pairs``, from
    :func:`close_pairs`), a brighter one, gets that maximum's offset from its centre, so that
    the brighter neighbour's pixels do not reject it as off-centre.  A window with several
    other maxima is clutter (noise, a textured background), where the plain centre filter's
    rejection is the point, and a brighter peak needs no exception."""
    if not len(pairs):
        return None
    i = np.concatenate([pairs[:, 0], pairs[:, 1]])
    j = np.concatenate([pairs[:, 1], pairs[:, 0]])
    alone = np.bincount(i, minlength=len(rows)) == 1
    pair = alone[i] & (birth[j] > birth[i])
    i, j = i[pair], j[pair]
    return i, rows[j] - rows[i], cols[j] - cols[i]


#: A neighbour at least this fraction of a peak's height (birth) can bias a one-peak localizer.
NEIGHBOUR_HEIGHT = 0.1


def neighbour_in_patch(rows: np.ndarray, cols: np.ndarray, birth: np.ndarray,
                       half: int | None = None, *, pairs: np.ndarray | None = None) -> np.ndarray:
    """True where another detected maximum, at least ``NEIGHBOUR_HEIGHT`` times as high, lies
    within ``half`` pixels of the peak along both axes (inside a ``(2 half + 1)``-pixel
    window): the patch holds light of two peaks, and a localizer that models one (centroid,
    gauss, pvoigt) may place the centre between them.  ``pairs``: those of
    :func:`close_pairs` already found, instead of ``half``.

    Examples
    --------
    >>> neighbour_in_patch(np.array([10, 10, 40]), np.array([10, 14, 40]),
    ...                    np.array([100.0, 50.0, 80.0]), 5).tolist()
    [True, True, False]
    """
    out = np.zeros(len(rows), bool)
    if pairs is None:
        pairs = close_pairs(rows, cols, half)
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        np.logical_or.at(out, i, birth[j] >= NEIGHBOUR_HEIGHT * birth[i])
        np.logical_or.at(out, j, birth[i] >= NEIGHBOUR_HEIGHT * birth[j])
    return out


def _empty_detected() -> dict[str, np.ndarray]:
    columns = {c: np.zeros(0, np.int64) for c in ("frame", "x_det", "y_det")}
    columns.update({c: np.zeros(0) for c in ("birth", "death", "persistence", "score")})
    columns["reason"] = np.zeros(0, object)
    columns["neighbour"] = np.zeros(0, bool)
    return columns


def _localize_detected(
    detected: list[_Detected], config: FindConfig, frame_shape: tuple[int, int], model=None
) -> pd.DataFrame:
    from .localize import localize

    kept = [d for d in detected if len(d)]
    if not kept:
        return empty_peak_table(config.localizer)
    cols = {k: np.concatenate([d.columns[k] for d in kept]) for k in kept[0].columns}
    patches = np.concatenate([d.patches for d in kept], axis=0)
    loc = localize(patches, config.localizer, model=model, device=config.device)
    # Localizer offsets are relative to the patch's central pixel, i.e. the detected maximum.
    # A centre outside the frame is meaningless (padded edge patches): keep it on the detector.
    h, w = frame_shape
    cols["x"] = np.clip(cols["x_det"] + loc["dx"].to_numpy(np.float64), -0.5, w - 0.5)
    cols["y"] = np.clip(cols["y_det"] + loc["dy"].to_numpy(np.float64), -0.5, h - 0.5)
    cols["x_err"] = loc["dx_err"].to_numpy(np.float64)
    cols["y_err"] = loc["dy_err"].to_numpy(np.float64)
    for col in ("intensity", "background", "sigma_x", "sigma_y"):
        cols[col] = loc[col].to_numpy(np.float64)
    cols["localizer"] = np.full(len(patches), config.localizer, dtype=object)
    loc_reason = loc["reason"].to_numpy(dtype=object).astype(str)
    converged = loc["converged"].to_numpy(dtype=bool)
    reason = cols["reason"].astype(str)
    reason = np.where(reason == "", np.where(converged, "", loc_reason), reason)
    reason = np.where((reason == "") & ~converged, "not_converged", reason)
    reason = np.where((reason == "") & _crowded(config.localizer, cols["neighbour"], loc), "crowded",
                      reason)
    uncertain = np.maximum(cols["x_err"], cols["y_err"]) > config.max_error
    reason = np.where((reason == "") & uncertain, "uncertain", reason)
    duplicate = _duplicates(cols["frame"], cols["x"], cols["y"], cols["birth"],
                            cols["death"], cols["persistence"], reason == "")
    reason = np.where(duplicate, "duplicate", reason)
    cols["reason"] = reason
    cols["ok"] = reason == ""
    table = pd.DataFrame({c: cols[c] for c in PEAK_COLUMNS})
    return _no_nan(table)


def check_chunk_size(chunk_size) -> None:
    """Refuse a chunk size that is not a whole number of frames >= 1 (find and run)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
            or chunk_size < 1:
        raise OptionError(f"--chunk-size must be >= 1 frames, got {chunk_size}")


def _crowded(localizer: str, neighbour: np.ndarray, loc: pd.DataFrame) -> np.ndarray:
    """Peaks a one-peak localizer cannot be trusted on: with a second maximum in the patch,
    the centroid is pulled towards it (by up to ~1.5 px at 4-6 px apart, with an error
    estimate that knows nothing of it), and a fit that moved more than 1 px from its own
    detected maximum has merged the two.  BraggNN was trained on such pairs."""
    if localizer == "braggnn":
        return np.zeros(len(neighbour), bool)
    if localizer == "centroid":
        return neighbour
    moved = np.hypot(loc["dx"].to_numpy(np.float64), loc["dy"].to_numpy(np.float64)) > 1.0
    return neighbour & moved


#: Two accepted peaks of a frame localized closer than this (px) may be one found twice.
DUPLICATE_DISTANCE = 1.5
#: ... when the fainter maximum's persistence is below this fraction of its height ...
SHOULDER = 0.15
#: ... or its height below this fraction of the other's.
FAINTER = 0.8


def _duplicates(frame: np.ndarray, x: np.ndarray, y: np.ndarray, birth: np.ndarray,
                death: np.ndarray, persistence: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """True for the fainter of two accepted peaks of one frame whose localized centres lie
    within :data:`DUPLICATE_DISTANCE` of each other, where the fainter maximum is a mere
    shoulder (persistence below :data:`SHOULDER` of its height) or clearly fainter (below
    :data:`FAINTER` of the other's height). Heights are taken above the level where the
    brighter one's component ends (its ``death``: the threshold or the saddle to a brighter
    peak), not from 0, so that a pedestal does not make equal peaks look like shoulders.

    Detection keeps maxima at least ``min_distance`` (3 px) apart, but two maxima of one
    object (the two ends of a streak, the shoulders of a broad or split peak, an equal pair
    closer than the localizer can resolve) each get a patch holding the whole object, and a
    localizer that finds its centre puts both rows there: the same peak counted twice, and
    two tracks that swap. The brighter maximum (higher ``birth``) keeps the row. Two real
    peaks of equal height 3 px apart can also be placed within 1.5 px (each pulled ~0.9 px
    towards the other); their maxima are deep (persistence 0.18-0.30 of the height against
    0.04-0.19 for a 2:1 pair) and equal, so both are kept.

    Examples
    --------
    >>> _duplicates(np.array([0, 0, 0, 1]), np.array([10.0, 10.8, 30.0, 10.2]),
    ...             np.array([5.0, 5.3, 5.0, 5.0]), np.array([9.0, 7.0, 8.0, 6.0]),
    ...             np.zeros(4), np.array([9.0, 0.5, 8.0, 6.0]), np.ones(4, bool)).tolist()
    [False, True, False, False]
    """
    out = np.zeros(len(x), bool)
    idx = np.flatnonzero(ok)
    if len(idx) < 2:
        return out
    from scipy.spatial import cKDTree

    # Frames far apart along a third axis: a pair is always within one frame.
    span = 4.0 * DUPLICATE_DISTANCE + float(np.ptp(x[idx]) + np.ptp(y[idx]))
    pts = np.column_stack([x[idx], y[idx], frame[idx].astype(np.float64) * span])
    pairs = cKDTree(pts).query_pairs(DUPLICATE_DISTANCE, output_type="ndarray")
    if len(pairs):
        i, j = idx[pairs[:, 0]], idx[pairs[:, 1]]
        first_fainter = (birth[i] < birth[j]) | ((birth[i] == birth[j]) & (i > j))
        fainter = np.where(first_fainter, i, j)
        brighter = np.where(first_fainter, j, i)
        base = death[brighter]
        height = np.maximum(birth[fainter] - base, np.finfo(float).tiny)
        shoulder = persistence[fainter] < SHOULDER * height
        weaker = height < FAINTER * (birth[brighter] - base)
        out[fainter[shoulder | weaker]] = True
    return out


def _no_nan(table: pd.DataFrame) -> pd.DataFrame:
    """Replace any non-finite number by a flag: a NaN must never reach a table."""
    num = table.select_dtypes(include=[np.floating]).columns
    bad = ~np.isfinite(table[num].to_numpy()).all(axis=1) if len(num) else np.zeros(len(table), bool)
    if bad.any():
        table.loc[bad, "ok"] = False
        table.loc[bad & (table["reason"] == ""), "reason"] = "non_finite"
        table[num] = table[num].where(np.isfinite(table[num]), 0.0)
        table.loc[bad, "x"] = table.loc[bad, "x_det"].astype(np.float64)
        table.loc[bad, "y"] = table.loc[bad, "y_det"].astype(np.float64)
    return table


def empty_peak_table(localizer: str = "") -> pd.DataFrame:
    """A peak table with the right columns and dtypes and no rows."""
    dtypes = {c: np.float64 for c in PEAK_COLUMNS}
    dtypes.update(frame=np.int64, x_det=np.int64, y_det=np.int64, ok=bool, localizer=object,
                  reason=object)
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})[PEAK_COLUMNS]


def load_localizer_model(config: FindConfig):
    """Load the BraggNN model once (``None`` for the fitting localizers)."""
    if config.localizer != "braggnn":
        return None
    from .braggnn import DEFAULT_MODEL, load_model

    model = load_model(config.model, device=config.device)
    size = model.config.patch
    if size != config.patch:
        # Refused before any frame is read, with what to do, rather than at the first batch.
        name = config.model or f"the shipped model ({DEFAULT_MODEL.name})"
        raise OptionError(
            f"--patch {config.patch} does not fit {name}, which takes {size}x{size} patches: "
            f"use --patch {size}, a fitting localizer (--localizer pvoigt or gauss), or a model "
            f"trained on {config.patch}x{config.patch} patches (braggtrack train ... --patch "
            f"{config.patch}, then --model)")
    return model


def _option_kind(annotation: str) -> tuple[str, bool]:
    """``(base type name, None allowed)`` of a FindConfig field annotation (a string, as
    the module uses postponed annotations), e.g. ``"float | None"`` -> ``("float", True)``."""
    parts = [p.strip() for p in str(annotation).split("|")]
    return next(p for p in parts if p != "None"), "None" in parts


def _check_option(name: str, value: object, annotation: str) -> None:
    """Refuse an option value of the wrong type with one line naming it.

    FindConfig compares values with numbers, which raises a bare TypeError for a string
    (``threshold='x'``) and lets a bool through as a number (``max_peaks=True`` kept one
    peak per frame); integer options also refuse fractions (``edge=1.5``).
    """
    kind, optional = _option_kind(annotation)
    if value is None and optional:
        return
    if kind == "bool":
        ok, want = isinstance(value, (bool, np.bool_)), "True or False"
    elif kind == "int":
        ok, want = _is_whole(value), "a whole number"
    elif kind == "float":
        ok, want = _is_number(value), "a number"
    else:  # str; a model file may also be given as a path
        ok = isinstance(value, str) or (name == "model" and isinstance(value, os.PathLike))
        want = "a string"
    if not ok:
        flag = "--" + name.replace("_", "-")
        raise OptionError(f"{flag} must be {want}{' or None' if optional else ''}, got {value!r}")


def _is_number(value: object) -> bool:
    """A real number that is not a bool (True is 1 to Python, never to a user)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_))


def _is_whole(value: object) -> bool:
    """A number with no fractional part: ``3``, ``np.int64(3)`` or ``3.0``, not ``3.5``."""
    if not _is_number(value):
        return False
    return isinstance(value, (int, np.integer)) or float(value).is_integer()


def _config_from(config: FindConfig | None, overrides: dict) -> FindConfig:
    """``config`` (default FindConfig()) with the keyword ``overrides`` of find/find_peaks,
    each checked by name and type so that a mistake is one OptionError line."""
    if config is not None and not isinstance(config, FindConfig):
        raise OptionError(f"config must be a FindConfig, got {type(config).__name__}")
    config = config or FindConfig()
    if not overrides:
        return config
    fields = {f.name: f.type for f in dataclasses.fields(FindConfig)}
    clean = {}
    for name, value in overrides.items():
        if name not in fields:
            raise OptionError(
                f"unknown option {name!r}; the options are {', '.join(fields)}")
        _check_option(name, value, fields[name])
        if value is not None and _option_kind(fields[name])[0] == "int":
            value = int(value)  # patch=11.0 is patch 11, not a float in later arithmetic
        elif name == "model" and isinstance(value, os.PathLike):
            value = os.fspath(value)
        clean[name] = value
    return dataclasses.replace(config, **clean)


def _frame_indices(frames: object, n: int) -> list[int]:
    """The frame numbers ``frames`` selects in a series of ``n`` frames.

    ``None`` is every frame and a slice keeps Python's meaning (``slice(-3, None)``: the
    last three, by their real numbers).  A sequence must hold distinct whole numbers
    ``0 <= i < n``: a negative number would label the peaks with it rather than with the
    frame it picks, a boolean mask would be read as frames 0 and 1, and a repeated number
    would put the same peaks in the table twice.

    Raises
    ------
    OptionError
        Naming the first value refused and the length of the series.
    """
    if frames is None:
        return list(range(n))
    if isinstance(frames, slice):
        try:
            return list(range(n))[frames]
        except (TypeError, ValueError) as exc:  # float bounds, step 0
            raise OptionError(f"frames: {frames} is not a usable slice ({exc})") from None
    if (isinstance(frames, (str, bytes)) or not isinstance(frames, Iterable)
            or (isinstance(frames, np.ndarray) and frames.ndim == 0)):
        raise OptionError(
            f"frames must be a sequence of frame numbers or a slice, got {frames!r}")
    where = f"the series has {n} frame{'s' if n != 1 else ''}" + (f", 0..{n - 1}" if n else "")
    seen: set[int] = set()
    indices: list[int] = []
    for value in frames:
        if isinstance(value, (bool, np.bool_)):
            raise OptionError(
                f"frames: {bool(value)} is a boolean, not a frame number (for a mask, give "
                f"np.flatnonzero(mask)); {where}")
        if not _is_whole(value):
            raise OptionError(f"frames: {value!r} is not a whole frame number; {where}")
        index = int(value)
        if index < 0:
            raise OptionError(f"frames: {index} is negative; frames are numbered from 0 "
                              f"(not counted from the end); {where}")
        if index >= n:
            raise OptionError(f"frames: {index} is not a frame of this series; {where}")
        if index in seen:
            raise OptionError(f"frames: {index} is given twice; {where}")
        seen.add(index)
        indices.append(index)
    return indices


def find_peaks(
    image: np.ndarray,
    *,
    config: FindConfig | None = None,
    frame: int = 0,
    calibration: Calibration | None = None,
    model=None,
    **options,
) -> pd.DataFrame:
    """Find, select and localize the Bragg peaks of one 2-D frame.

    Parameters
    ----------
    image : (H, W) array
        Detector counts.
    config : FindConfig, optional
        All options (threshold, min_score, bin, patch, localizer, ...); keyword ``options``
        override single fields, e.g. ``find_peaks(img, localizer="pvoigt")``.
    frame : int
        Frame index written into the ``frame`` column.
    calibration : Calibration, optional
        Dark, flat and mask arrays.
    model : BraggNN, optional
        An already loaded model (saves reloading it for every frame).

    Returns
    -------
    DataFrame
        One row per detected peak, accepted (``ok``) or not (``reason``); positions in
        full-resolution pixels (x = column, y = row, pixel centres at integers).
    """
    config = _config_from(config, options)
    calibration = calibration or Calibration()
    if model is None:
        model = load_localizer_model(config)
    detected = _detect_frame(image, frame, config, _preprocessor(config, calibration))
    return _localize_detected([detected], config, np.shape(image)[-2:], model=model)


@dataclass(frozen=True)
class ChunkResult:
    """Peaks of a chunk of frames plus the frames that could not be read."""

    peaks: pd.DataFrame
    frames: pd.DataFrame  # frame, status, reason, n_peaks, n_ok


def find_chunk(
    series,
    indices: Iterable[int],
    config: FindConfig,
    calibration: Calibration | None = None,
    *,
    model=None,
    strict: bool = False,
) -> ChunkResult:
    """Process the frames ``indices`` of ``series``: one batched localization for all of them.

    A frame that cannot be read (:class:`~braggtrack.errors.FrameReadError`) is recorded with
    its reason and skipped, unless ``strict``.
    """
    detected = detect_chunk(series, indices, config, calibration, strict=strict)
    return localize_chunk(detected, config, model=model)


@dataclass
class DetectedChunk:
    """A chunk after detection (:func:`detect_chunk`), before localization."""

    frames: list  # _Detected, one per frame read
    status: list[tuple[int, str, str]]  # frame, "ok" | "skipped", reason
    frame_shape: tuple[int, int]


def detect_chunk(
    series,
    indices: Iterable[int],
    config: FindConfig,
    calibration: Calibration | None = None,
    *,
    strict: bool = False,
    threads: int = 1,
) -> DetectedChunk:
    """The reading, preprocessing and detection half of :func:`find_chunk`.

    Split from :func:`localize_chunk` so that a serial run can detect the next chunk while
    the current one is localized (BraggNN and the fits release the GIL). With ``threads``
    > 1, frames are read in order here and detected on that many threads (the compiled
    kernels and numpy release the GIL), at most ``2 * threads`` frames in flight.
    """
    calibration = calibration or Calibration()
    shape = getattr(series, "shape", None)
    if shape is not None and len(shape) == 2:
        calibration.check_shape(tuple(shape))
    prep = _preprocessor(config, calibration)
    status: list[tuple[int, str, str]] = []

    def frames():
        for i in indices:
            try:
                image = series[i]
            except FrameReadError as exc:
                if strict:
                    raise
                status.append((int(i), "skipped", f"{exc.path}: {exc.reason}"))
                continue
            if (image.dtype.kind == "f" and image.size and not np.isfinite(image.flat[0])
                    and not np.isfinite(image).any()):
                # A failed readout, not a frame without peaks (the full test runs only when
                # the first pixel is already not finite).
                if strict:
                    raise FrameReadError(getattr(series, "path", None) or "frames", int(i),
                                         "no finite pixel")
                status.append((int(i), "skipped",
                               f"{getattr(series, 'path', None) or 'frames'}: no finite pixel"))
                continue
            status.append((int(i), "ok", ""))
            yield int(i), image

    if threads <= 1:
        detected = [_detect_frame(image, i, config, prep) for i, image in frames()]
    else:
        from concurrent.futures import ThreadPoolExecutor

        pending = []  # futures, in frame order
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="braggtrack-detect") as pool:
            for i, image in frames():
                pending.append(pool.submit(_detect_frame, image, i, config, prep))
                if len(pending) >= 2 * threads:
                    pending[-2 * threads].result()  # bounds the frames held in memory
            detected = [f.result() for f in pending]
    return DetectedChunk(frames=detected, status=status, frame_shape=tuple(series.shape))


def localize_chunk(chunk: DetectedChunk, config: FindConfig, *, model=None) -> ChunkResult:
    """The localization half of :func:`find_chunk`: one batched call for the whole chunk."""
    peaks = _localize_detected(chunk.frames, config, chunk.frame_shape, model=model)
    counts = peaks.groupby("frame")["ok"].agg(["size", "sum"]) if len(peaks) else None
    frames = pd.DataFrame(chunk.status, columns=["frame", "status", "reason"])
    if counts is not None:
        frames["n_peaks"] = frames["frame"].map(counts["size"]).fillna(0).astype(np.int64)
        frames["n_ok"] = frames["frame"].map(counts["sum"]).fillna(0).astype(np.int64)
    else:
        frames["n_peaks"] = np.zeros(len(frames), np.int64)
        frames["n_ok"] = np.zeros(len(frames), np.int64)
    return ChunkResult(peaks=peaks, frames=frames)


def find(
    source,
    *,
    config: FindConfig | None = None,
    dataset: str | None = None,
    calibration: Calibration | None = None,
    frames: Sequence[int] | slice | None = None,
    chunk_size: int = 32,
    strict: bool = False,
    progress: bool = True,
    **options,
) -> pd.DataFrame:
    """Find and localize peaks in every frame of a series.

    Parameters
    ----------
    source : path, FrameSeries or (N, H, W) array
        Anything :func:`braggtrack.io.open_frames` accepts.
    config, options :
        As in :func:`find_peaks`.
    frames : sequence of int or slice, optional
        Which frames to process (default all): distinct frame numbers ``0 <= i < len``
        (negative numbers, booleans, fractions and repeats are refused), or a slice.
    chunk_size : int
        Frames localized together in one batch, >= 1.
    strict : bool
        Stop at the first unreadable frame instead of skipping it.

    Returns
    -------
    DataFrame
        The peak table of all frames; ``table.attrs["frames"]`` holds the per-frame status
        (skipped frames with their reason).

    Examples
    --------
    >>> import numpy as np, braggtrack as bt
    >>> stack = np.zeros((3, 32, 32), np.float32); stack[:, 16, 15:18] = [50, 100, 50]
    >>> len(bt.find(stack, localizer="centroid", progress=False))
    3
    """
    config = _config_from(config, options)
    check_chunk_size(chunk_size)  # before any file is opened
    series = as_series(source, dataset=dataset)
    indices = _frame_indices(frames, len(series))
    if indices:
        warn_about_first_frame(series, indices[0], config,
                               calibration.dark if calibration is not None else None)
    model = load_localizer_model(config)
    bar = _progress(len(indices), progress)
    tables, statuses = [], []
    for start in range(0, len(indices), chunk_size):
        part = indices[start : start + chunk_size]
        res = find_chunk(series, part, config, calibration, model=model, strict=strict)
        for row in res.frames[res.frames["status"] != "ok"].itertuples():
            log_skipped(str(getattr(series, "path", None) or "frames"), row.frame, row.reason)
        tables.append(res.peaks)
        statuses.append(res.frames)
        bar.update(len(part))
        bar.set_postfix(peaks=sum(len(t) for t in tables))
    bar.close()
    peaks = pd.concat(tables, ignore_index=True) if tables else empty_peak_table(config.localizer)
    peaks.attrs["frames"] = (
        pd.concat(statuses, ignore_index=True) if statuses else pd.DataFrame()
    )
    return peaks


def warn_about_first_frame(series, index: int, config: FindConfig,
                           dark: np.ndarray | None = None) -> None:
    """Warn (on the braggtrack logger) when frame ``index`` shows a setting that would hide
    the data without an error: counts that auto-mask would take for detector flags (see
    :func:`braggtrack.preprocess.negative_flag_warning`), or a ``dark`` above the frame
    nearly everywhere (another exposure time or gain: every corrected pixel would be 0).
    A frame that cannot be read is left to the frame work to report."""
    import logging

    from .errors import BraggTrackError
    from .preprocess import negative_flag_warning

    signed = config.auto_mask and np.dtype(getattr(series, "dtype", np.float32)).kind == "i"
    if not 0 <= index < len(series) or not (signed or dark is not None):
        return  # nothing to check: the frame is not even read
    where = str(getattr(series, "path", None) or series)
    try:
        frame = series[index]
    except BraggTrackError:
        return
    log = logging.getLogger("braggtrack")
    message = negative_flag_warning(frame, where) if signed else None
    if message:
        log.warning("%s", message)
    if dark is not None and dark.shape == frame.shape:
        # Over the pixels where either holds something: in sparse photon-counting frames
        # most pixels are 0 in the frame and in the dark alike, which says nothing.
        with np.errstate(invalid="ignore"):
            some = (frame > 0) | (dark > 0)
            n = np.count_nonzero(some)
            below = np.count_nonzero((frame <= dark) & some) / n if n else 0.0
        if n >= 0.1 * frame.size and below > 0.99:
            log.warning("%s: the dark is at or above frame %d at %.1f %% of the pixels that "
                        "hold counts, so almost nothing is left after subtracting it (a dark "
                        "of another exposure time or gain?)", where, index, 100 * below)


def log_skipped(source: str, frame: int, reason: str) -> None:
    """Say on the log (stderr for the CLI) that a frame was skipped, with its index and reason."""
    import logging

    logging.getLogger("braggtrack").warning("%s: frame %d skipped: %s", source, frame, reason)


def as_series(source, dataset: str | None = None):
    """``source`` itself when it is already a frame series, else ``open_frames(source)``."""
    from .io import open_frames

    if not isinstance(source, (str, os.PathLike, np.ndarray)) and hasattr(source, "__getitem__"):
        return source
    return open_frames(source, dataset=dataset)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="frame", disable=not enabled, desc="find", leave=False)
