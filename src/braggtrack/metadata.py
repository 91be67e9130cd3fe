"""Per-frame metadata: read it, put a cycler log on the frames' time base, join it to peaks.

Operando experiments record, beside the frames, per-frame values (time stamps, temperature,
motor positions) and an electrochemical cycler log (time, voltage, current, capacity) on the
cycler's own clock.  This module turns them into one row per ``frame`` that can be joined to a
peak or track table, and labels the charge/discharge branches and cycle numbers.

Policy for frames without metadata (never NaN in a table)
---------------------------------------------------------
* :func:`load_frame_meta` with ``n_frames``: a table without a ``frame`` column must have
  exactly ``n_frames`` rows (else :class:`~braggtrack.errors.InputFileError`); duplicate frame
  numbers are an ``InputFileError``; frames outside ``0..n_frames-1`` are dropped and frames
  missing inside it are filled (numeric columns linearly interpolated in frame, held constant
  beyond the ends; integer, boolean and text columns from the nearest frame) with a :class:`FrameMetaWarning`
  naming how many, and flagged ``meta_filled=True``.
* :func:`join_frame_meta` fills the frames of the table that the metadata lacks the same way
  (warning + ``meta_filled``).
* :func:`interpolate_cycler` clips frame times outside the log to its first/last value, warns,
  and flags those frames ``cycler_outside=True`` (``outside="error"`` raises instead).

Policy for cells without a value (blank, or text such as ``--`` in a column of numbers)
---------------------------------------------------------------------------------------
A column counts as numeric when at least half of its non-blank cells are numbers (``time_s``,
``voltage_V``, ``current_mA`` and ``capacity_mAh`` always do), and is read as numbers; the other
cells are missing.  In a frame table they are filled from neighbouring frames like missing frames
(numbers interpolated in frame, others from the nearest frame) and flagged ``meta_filled``; in a
cycler log those rows are left out of that column and interpolated over (the capacity integrated
from the current with them).  Either way one warning line, through the ``braggtrack`` logger,
names the file, the column and the number of rows.  Frame times must not decrease (an
:class:`~braggtrack.errors.InputFileError` naming the file).

Plain numpy/pandas (``np.interp``, a cumulative trapezoid) is enough here; no library adds
anything for this.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputFileError, OptionError

__all__ = [
    "FrameMetaWarning",
    "load_frame_meta",
    "interpolate_cycler",
    "join_frame_meta",
    "branches",
]

_HDF5_SUFFIXES = (".h5", ".hdf5", ".nxs", ".nx5", ".hdf")
# groups of a NeXus file that are not per-frame metadata
_SKIP_GROUPS = ("truth", "cycler_log", "data", "instrument")


# Command-line users see these warnings as one "warning: ..." line (see braggtrack.cli.main),
# as io.py and pipeline.py warn.
_log = logging.getLogger("braggtrack")
#: Columns read as numbers whatever their cells hold.
_NUMERIC = ("time_s", "voltage_V", "current_mA", "capacity_mAh")


class FrameMetaWarning(UserWarning):
    """Per-frame metadata that had to be filled, dropped or clipped."""


def _as_numbers(table: pd.DataFrame, always: tuple[str, ...] = _NUMERIC) -> pd.DataFrame:
    """``table`` with its columns of numbers as float64, stray text cells (``--``) as NaN.

    A column is one of numbers when at least half of its non-blank cells parse (or it is
    named in ``always``): a column of labels (``charge``, ``CC-CV``) stays text.  pandas reads
    a column with one text cell as text, which would otherwise reach a table as text and fail
    later (``rank_particles``), far from the file at fault.
    """
    out = table.copy()
    for col in out.columns:
        values = out[col]
        if values.dtype.kind in "biufcmM":
            continue
        given_values = values.dropna()
        if len(given_values) and all(isinstance(v, (bool, np.bool_)) for v in given_values):
            continue  # flags with a blank cell: filled from the nearest row, not interpolated
        parsed = pd.to_numeric(values, errors="coerce")
        given = len(given_values)
        numbers = int(parsed.notna().sum())
        if col in always or (numbers > 0 and 2 * numbers >= given):
            out[col] = parsed.astype(float)
    return out


def _missing_cells(table: pd.DataFrame, col: str) -> np.ndarray:
    values = table[col]
    if values.dtype.kind in "fc":
        return ~np.isfinite(values.to_numpy())
    return values.isna().to_numpy()


def _fill_blanks(meta: pd.DataFrame, where: str) -> pd.DataFrame:
    """Cells of a frame table without a value, filled from neighbouring frames.

    Numbers are interpolated linearly in frame (held beyond the ends), other values taken from
    the nearest frame that has one, as :func:`_fill_frames` fills missing frames; those rows are
    flagged ``meta_filled``.  A column without any value is left out.  One warning per column.
    """
    frame = meta["frame"].to_numpy(np.int64)
    filled = (meta["meta_filled"].to_numpy(bool) if "meta_filled" in meta.columns
              else np.zeros(len(meta), bool))
    out = meta.copy()
    for col in meta.columns:
        if col in ("frame", "meta_filled"):
            continue
        missing = _missing_cells(meta, col)
        if not missing.any():
            continue
        if missing.all():
            _log.warning("%s: column %s holds no value; left out", where, col)
            out = out.drop(columns=col)
            continue
        have = ~missing
        values = meta[col].to_numpy()
        if values.dtype.kind in "fc":
            out[col] = np.interp(frame, frame[have], values[have].astype(float))
        else:
            known = np.flatnonzero(have)
            pos = np.clip(np.searchsorted(frame[known], frame), 0, len(known) - 1)
            left = np.clip(pos - 1, 0, len(known) - 1)
            closer_left = np.abs(frame[known][left] - frame) <= np.abs(frame[known][pos] - frame)
            nearest = known[np.where(closer_left, left, pos)]
            out[col] = values[nearest]
        filled |= missing
        _log.warning("%s: column %s: %d row(s) without a value (blank, or not a number) filled "
                     "from neighbouring frames (meta_filled=True)", where, col,
                     int(missing.sum()))
    if filled.any() or "meta_filled" in meta.columns:
        out["meta_filled"] = filled
    return out


def _check_times(frame: np.ndarray, t: np.ndarray, where: str, time_col: str,
                 error: type = OptionError) -> None:
    """Frame times (in frame order) must be finite and must not decrease."""
    order = np.argsort(frame, kind="stable")
    frame, t = frame[order], t[order]
    bad = ~np.isfinite(t)
    if bad.any():
        raise _error(error, where, f"frame times ({time_col}) must be finite; "
                                   f"{int(bad.sum())} are not, the first at frame {frame[bad][0]}")
    back = np.flatnonzero(np.diff(t) < 0)
    if len(back):
        i = int(back[0])
        raise _error(error, where, f"frame times ({time_col}) decrease, from {t[i]:g} s at "
                                   f"frame {frame[i]} to {t[i + 1]:g} s at frame {frame[i + 1]}; "
                                   "they must follow the frames in time order")


def _error(kind: type, where: str, problem: str) -> Exception:
    return InputFileError(where, problem) if kind is InputFileError else kind(
        f"{where}: {problem}")


def _read_hdf5_meta(path: Path, n_frames: int | None, group: str | None) -> pd.DataFrame:
    import h5py

    with h5py.File(path, "r", locking=False) as f:
        if group is None:
            group = "/entry/frame_meta" if "/entry/frame_meta" in f else None
        if group is not None:
            if group not in f or not isinstance(f[group], h5py.Group):
                raise InputFileError(path, f"has no group {group}")
            g = f[group]
            names = json.loads(g.attrs["columns"]) if "columns" in g.attrs else list(g.keys())
            data = {}
            for name in names:
                d = g[name]
                if not isinstance(d, h5py.Dataset) or d.ndim != 1:
                    continue
                v = d[()]
                data[name] = v.astype(str).astype(object) if v.dtype.kind in "SO" else v
            lengths = {len(v) for v in data.values()}
            if len(lengths) > 1:
                raise InputFileError(path, f"{group}: columns of different lengths {sorted(lengths)}")
            return pd.DataFrame(data)
        # no table: 1-D datasets under /entry with one value per frame
        if n_frames is None:
            for stack in ("/entry/data/data", "/entry/instrument/detector/data"):
                if stack in f and f[stack].ndim == 3:
                    n_frames = int(f[stack].shape[0])
                    break
        if n_frames is None:
            raise InputFileError(path, "no /entry/frame_meta table and no frame stack to "
                                       "count frames; give n_frames")
        data: dict[str, np.ndarray] = {}

        def visit(name, obj):
            parts = name.split("/")
            if any(p in _SKIP_GROUPS for p in parts):
                return
            if isinstance(obj, h5py.Dataset) and obj.ndim == 1 and len(obj) == n_frames:
                if obj.dtype.kind in "biuf":
                    key = parts[-1] if parts[-1] not in data else name.replace("/", "_")
                    data[key] = obj[()]

        if "entry" in f:
            f["entry"].visititems(visit)
        if not data:
            raise InputFileError(path, f"no per-frame datasets of length {n_frames} under /entry")
        return pd.DataFrame(data)


def load_frame_meta(
    path: str | os.PathLike,
    *,
    n_frames: int | None = None,
    group: str | None = None,
) -> pd.DataFrame:
    """Read per-frame metadata from CSV, Parquet or a NeXus/HDF5 file.

    Parameters
    ----------
    path : path-like
        ``.csv``, ``.parquet`` or HDF5 (``.h5``, ``.nxs``, ...).  In HDF5 the table is
        ``/entry/frame_meta`` (one 1-D dataset per column, as the simulator writes it) or the
        group named by ``group``; without either, every numeric 1-D dataset under ``/entry``
        with one value per frame (length ``n_frames``, or the frame count of
        ``/entry/data/data``) becomes a column.
    n_frames : int, optional
        Number of frames of the series, to check the table against (see the module notes).
    group : str, optional
        HDF5 group holding the table.

    Returns
    -------
    DataFrame
        One row per frame, sorted, with an int64 ``frame`` column (added as 0..n-1 when the
        file has none) and, when ``n_frames`` is given or a cell was filled, ``meta_filled``
        (bool).  Blank cells and stray text in columns of numbers are filled (see the module
        notes); a ``time_s`` column that decreases is an
        :class:`~braggtrack.errors.InputFileError`.  ``attrs["source"]`` is the path, for
        messages of :func:`interpolate_cycler`.

    Examples
    --------
    >>> import tempfile, os, pandas as pd
    >>> p = os.path.join(tempfile.mkdtemp(), "meta.csv")
    >>> pd.DataFrame({"time_s": [0.0, 10.0, 20.0]}).to_csv(p, index=False)
    >>> load_frame_meta(p, n_frames=3)["frame"].tolist()
    [0, 1, 2]
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "no such metadata file")
    if n_frames is not None and (int(n_frames) != n_frames or n_frames < 1):
        raise OptionError(f"n_frames must be a positive integer, got {n_frames}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            from .tables import read_csv

            meta = read_csv(path)
        elif suffix == ".parquet":
            meta = pd.read_parquet(path)
        elif suffix in _HDF5_SUFFIXES:
            meta = _read_hdf5_meta(path, n_frames, group)
        else:
            raise InputFileError(path, f"unknown metadata format {suffix!r}; use .csv, "
                                       ".parquet or HDF5")
    except InputFileError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputFileError(path, f"not a readable metadata table ({exc.__class__.__name__})") \
            from None
    if len(meta) == 0:
        raise InputFileError(path, "metadata table is empty")
    if "frame" not in meta.columns:
        if n_frames is not None and len(meta) != n_frames:
            raise InputFileError(path, f"{len(meta)} metadata rows for {n_frames} frames and no "
                                       "frame column to align them")
        meta.insert(0, "frame", np.arange(len(meta), dtype=np.int64))
    frame = pd.to_numeric(meta["frame"], errors="coerce").to_numpy(float)
    if not np.isfinite(frame).all() or np.any(frame != np.round(frame)) or np.any(frame < 0):
        raise InputFileError(path, "frame column must hold non-negative integers")
    meta["frame"] = frame.astype(np.int64)
    dup = meta["frame"].duplicated()
    if dup.any():
        raise InputFileError(path, f"duplicate frame numbers, e.g. {int(meta['frame'][dup].iloc[0])}")
    meta = meta.sort_values("frame").reset_index(drop=True)
    if n_frames is not None:
        extra = meta["frame"] >= n_frames
        if extra.any():
            warnings.warn(f"{path}: {int(extra.sum())} metadata rows for frames >= {n_frames} "
                          "dropped", FrameMetaWarning, stacklevel=2)
            meta = meta[~extra].reset_index(drop=True)
        if len(meta) == 0:
            raise InputFileError(path, f"no metadata for frames 0..{n_frames - 1}")
    meta = _fill_blanks(_as_numbers(meta), str(path))
    if "time_s" in meta.columns:
        _check_times(meta["frame"].to_numpy(np.int64), meta["time_s"].to_numpy(float),
                     str(path), "time_s", InputFileError)
    if n_frames is not None:
        meta = _fill_frames(meta, np.arange(n_frames), str(path))
    meta = meta.reset_index(drop=True)
    meta.attrs["source"] = str(path)
    return meta


def _fill_frames(meta: pd.DataFrame, frames: np.ndarray, where: str) -> pd.DataFrame:
    """Rows of ``meta`` for ``frames``; missing frames filled and flagged ``meta_filled``."""
    frames = np.unique(np.asarray(frames, dtype=np.int64))
    have = meta["frame"].to_numpy(np.int64)
    missing = ~np.isin(frames, have)
    base = meta.drop(columns=["meta_filled"], errors="ignore")
    if not missing.any():
        out = base[np.isin(have, frames)].copy()
        out["meta_filled"] = meta["meta_filled"].to_numpy(bool)[np.isin(have, frames)] \
            if "meta_filled" in meta.columns else False
        return out.reset_index(drop=True)
    warnings.warn(f"{where}: no metadata for {int(missing.sum())} of {len(frames)} frames; "
                  "filled from neighbouring frames (meta_filled=True)", FrameMetaWarning,
                  stacklevel=3)
    out = pd.DataFrame({"frame": frames})
    nearest = np.clip(np.searchsorted(have, frames), 0, len(have) - 1)
    left = np.clip(nearest - 1, 0, len(have) - 1)
    closer_left = np.abs(have[left] - frames) <= np.abs(have[nearest] - frames)
    nearest = np.where(closer_left, left, nearest)
    for col in base.columns:
        if col == "frame":
            continue
        values = base[col].to_numpy()
        if values.dtype.kind == "f":
            ok = np.isfinite(values)
            out[col] = (np.interp(frames, have[ok], values[ok]) if ok.any()
                        else np.zeros(len(frames)))
        else:  # counters, flags, labels: the nearest frame's value
            out[col] = values[nearest]
    prev = meta["meta_filled"].to_numpy(bool)[nearest] if "meta_filled" in meta.columns else False
    out["meta_filled"] = missing | prev
    return out


def interpolate_cycler(
    log: pd.DataFrame,
    frame_times,
    *,
    time_col: str = "time_s",
    voltage_col: str = "voltage_V",
    current_col: str = "current_mA",
    capacity_col: str = "capacity_mAh",
    outside: str = "clip",
    source: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Put a cycler log on the frames' time base.

    Cells without a number (blank, or text such as ``--``) in a numeric column leave that
    row out of that column, which is interpolated over (with one warning line naming the
    file, the column and the number of rows); the capacity integrated from the current skips
    them the same way.

    Parameters
    ----------
    log : DataFrame
        Cycler log with ``time_col`` (seconds, same clock as the frames) and any of
        ``voltage_col`` (V), ``current_col`` (mA, positive = charge), ``capacity_col`` (mAh).
    frame_times : array_like or DataFrame
        Time of each frame (seconds), frame ``i`` at position ``i``; or a table with ``frame``
        and ``time_col`` (e.g. from :func:`load_frame_meta`).
    time_col, voltage_col, current_col, capacity_col : str
        Column names.
    outside : {"clip", "hold", "error"}
        Frame times outside the log: hold the first/last logged values and flag
        ``cycler_outside=True`` with a :class:`FrameMetaWarning` ("clip"; but when no frame
        at all falls within the log, an :class:`~braggtrack.errors.OptionError`: the two
        clocks differ), the same without that error ("hold": a live run whose first frames
        come before the cycler's log starts), or raise an OptionError ("error").
    source : path-like, optional
        The log's file, named in warnings and errors (default: ``log.attrs["source"]``, else
        "cycler log").  Frame times are named by ``frame_times.attrs["source"]`` (set by
        :func:`load_frame_meta`).  Frame times that are not finite, or decrease, are an
        :class:`~braggtrack.errors.OptionError`.

    Returns
    -------
    DataFrame
        ``frame``, ``time_col``, every numeric column of the log linearly interpolated (other
        columns: the last logged value at or before the frame time), ``capacity_col`` integrated
        from the current (trapezoid, mAh, net charge since the start of the log) when the log
        has none, and ``cycler_outside`` (bool).

    Examples
    --------
    >>> import pandas as pd
    >>> log = pd.DataFrame({"time_s": [0.0, 3600.0], "voltage_V": [3.0, 4.0],
    ...                     "current_mA": [1.0, 1.0]})
    >>> out = interpolate_cycler(log, [1800.0])
    >>> float(out.voltage_V[0]), float(out.capacity_mAh[0])
    (3.5, 0.5)
    """
    if outside not in ("clip", "hold", "error"):
        raise OptionError(f"outside must be 'clip', 'hold' or 'error', got {outside!r}")
    if not isinstance(log, pd.DataFrame):
        raise OptionError(f"cycler log must be a table, not {type(log).__name__}")
    where = str(source) if source is not None else str(log.attrs.get("source", "cycler log"))
    if time_col not in log.columns:
        raise OptionError(f"{where}: the cycler log has no {time_col!r} column (columns: "
                          f"{', '.join(map(str, log.columns))})")
    if isinstance(frame_times, pd.DataFrame):
        frame_where = str(frame_times.attrs.get("source", "frame table"))
        if time_col not in frame_times.columns:
            raise OptionError(f"{frame_where}: no {time_col!r} column")
        frames = (frame_times["frame"].to_numpy(np.int64) if "frame" in frame_times.columns
                  else np.arange(len(frame_times)))
        t = pd.to_numeric(frame_times[time_col], errors="coerce").to_numpy(float)
    else:
        frame_where = "frame times"
        try:
            t = np.atleast_1d(np.asarray(frame_times, dtype=float))
        except (TypeError, ValueError):
            raise OptionError("frame times must be numbers (seconds)") from None
        frames = np.arange(len(t))
    _check_times(frames, t, frame_where, time_col)
    log = _as_numbers(log, (time_col, voltage_col, current_col, capacity_col))
    no_time = _missing_cells(log, time_col)
    if no_time.any():
        _log.warning("%s: column %s: %d row(s) without a number (blank, or text) dropped",
                     where, time_col, int(no_time.sum()))
    log = log[~no_time]
    log = log.sort_values(time_col, kind="stable")
    repeated = log[time_col].duplicated()
    if repeated.any():
        _log.warning("%s: %d row(s) repeat an earlier row's %s; the first of each kept",
                     where, int(repeated.sum()), time_col)
        log = log[~repeated.to_numpy()]
    if len(log) < 2:
        raise OptionError(f"{where}: the cycler log needs at least two time points")
    lt = log[time_col].to_numpy(float)
    numeric = [c for c in log.columns if c != time_col and log[c].dtype.kind in "iuf"]
    usable = {}
    for col in numeric:
        ok = np.isfinite(log[col].to_numpy(float))
        if not ok.any():
            _log.warning("%s: column %s holds no number; left out", where, col)
        elif not ok.all():
            _log.warning("%s: column %s: %d row(s) without a number (blank, or text) left "
                         "out and interpolated over", where, col, int((~ok).sum()))
        if ok.any():
            usable[col] = ok
    if capacity_col not in usable and current_col in usable:
        # Net charge since the start of the log; rows without a current are skipped, i.e. the
        # current is interpolated over them (held at the ends), as it is in the output.
        ok = usable[current_col]
        current = log[current_col].to_numpy(float)[ok]
        tt = np.r_[lt[0], lt[ok], lt[-1]]
        cc = np.r_[current[0], current, current[-1]]
        cap = np.concatenate([[0.0], np.cumsum(0.5 * (cc[1:] + cc[:-1]) * np.diff(tt))])
        log[capacity_col] = np.interp(lt, tt, cap) / 3600.0
        usable[capacity_col] = np.ones(len(lt), bool)
    out_of_range = (t < lt[0]) | (t > lt[-1])
    if out_of_range.any():
        msg = (f"{where}: {int(out_of_range.sum())} of {len(t)} frame times outside the log "
               f"({lt[0]:g}..{lt[-1]:g} s)")
        if outside == "error":
            raise OptionError(msg)
        if out_of_range.all() and outside == "clip":
            # Every frame would get the log's first or last values: the two clocks differ
            # (another start time, or hours against seconds), not an experiment that ran on.
            raise OptionError(msg + ": every frame; are the log and the frames on the same "
                              "clock (start time, seconds)?")
        warnings.warn(msg + "; values held at the log's ends (cycler_outside=True)",
                      FrameMetaWarning, stacklevel=2)
    out = pd.DataFrame({"frame": frames, time_col: t})
    step = np.clip(np.searchsorted(lt, t, side="right") - 1, 0, len(lt) - 1)
    for col in log.columns:
        if col == time_col:
            continue
        if col in usable:
            ok = usable[col]
            out[col] = np.interp(t, lt[ok], log[col].to_numpy(float)[ok])
        elif col not in numeric:
            # labels (branch, step name): a blank cell takes the label logged before it
            labels = log[col].ffill().bfill()
            if labels.notna().all():
                out[col] = labels.to_numpy()[step]
    out["cycler_outside"] = out_of_range
    return out


def join_frame_meta(table: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Left-join per-frame metadata to a peak or track table on ``frame``.

    Parameters
    ----------
    table : DataFrame
        Any table with ``frame``.
    meta : DataFrame
        One row per frame with ``frame`` (e.g. :func:`load_frame_meta`,
        :func:`interpolate_cycler`).  Columns that the table already has (other than
        ``frame``) are added with the suffix ``_meta``.

    Returns
    -------
    DataFrame
        ``table``'s rows in order with the metadata columns; frames that the metadata lacks
        are filled from neighbouring frames (warning, ``meta_filled=True``).

    Examples
    --------
    >>> import pandas as pd
    >>> peaks = pd.DataFrame({"frame": [0, 1, 1], "x": [1.0, 2.0, 3.0]})
    >>> meta = pd.DataFrame({"frame": [0, 1], "voltage_V": [3.7, 3.8]})
    >>> join_frame_meta(peaks, meta)["voltage_V"].tolist()
    [3.7, 3.8, 3.8]
    """
    for name, t in (("table", table), ("metadata", meta)):
        if not isinstance(t, pd.DataFrame) or "frame" not in t.columns:
            raise OptionError(f"{name} must be a table with a frame column")
    if meta["frame"].duplicated().any():
        raise OptionError("metadata has duplicate frame numbers")
    out = table.reset_index(drop=True)
    if len(meta) == 0:
        raise OptionError("metadata table is empty")
    meta = meta.copy()
    meta["frame"] = meta["frame"].astype(np.int64)
    meta = _fill_blanks(meta.sort_values("frame").reset_index(drop=True), "join_frame_meta")
    clash = [c for c in meta.columns if c != "frame" and c in out.columns]
    meta = meta.rename(columns={c: f"{c}_meta" for c in clash})
    if len(out):
        meta = _fill_frames(meta, out["frame"].to_numpy(np.int64), "join_frame_meta")
    elif "meta_filled" not in meta.columns:
        meta["meta_filled"] = False
    left = out.assign(frame=out["frame"].astype(np.int64))
    joined = left.merge(meta, on="frame", how="left", sort=False)
    return joined


def branches(
    meta: pd.DataFrame,
    *,
    current_col: str = "current_mA",
    voltage_col: str = "voltage_V",
    time_col: str = "time_s",
    rest_fraction: float = 0.01,
    window: int = 5,
) -> pd.DataFrame:
    """Label charge / discharge / rest and number the cycles.

    With a current column: ``charge`` where current > ``rest_fraction`` * max |current|,
    ``discharge`` where it is below minus that, ``rest`` between.  Without one, the sign of the
    voltage slope (after a running median over ``window`` rows, against ``time_col`` or row
    order) gives charge (rising) or discharge (falling); no rest is detected that way.  A cycle
    starts at every charge that follows a discharge (rests in between do not count); cycles
    count from 1.

    Parameters
    ----------
    meta : DataFrame
        Per-frame (or per-log-row) table in time order.
    current_col, voltage_col, time_col : str
        Column names (current positive on charge).
    rest_fraction : float
        Relative current below which the cell is at rest.
    window : int
        Running-median window for the voltage slope.

    Returns
    -------
    DataFrame
        Same index as ``meta``: ``branch`` (str: charge, discharge, rest) and ``cycle`` (int64).

    Examples
    --------
    >>> import pandas as pd
    >>> m = pd.DataFrame({"current_mA": [1.0, 1.0, 0.0, -1.0, -1.0, 1.0]})
    >>> b = branches(m)
    >>> b["branch"].tolist(), b["cycle"].tolist()
    (['charge', 'charge', 'rest', 'discharge', 'discharge', 'charge'], [1, 1, 1, 1, 1, 2])
    """
    if not isinstance(meta, pd.DataFrame):
        raise OptionError("branches needs a table")
    if not 0 <= rest_fraction < 1 or int(window) != window or window < 1:
        raise OptionError("rest_fraction must lie in [0, 1) and window be a positive integer")
    n = len(meta)
    if current_col in meta.columns:
        current = meta[current_col].to_numpy(float)
        current = np.where(np.isfinite(current), current, 0.0)
        limit = rest_fraction * (np.abs(current).max() if n else 0.0)
        label = np.where(current > limit, "charge", np.where(current < -limit, "discharge",
                                                            "rest"))
    elif voltage_col in meta.columns:
        volt = pd.Series(meta[voltage_col].to_numpy(float)).interpolate(limit_direction="both")
        smooth = volt.rolling(int(window), center=True, min_periods=1).median().to_numpy()
        t = meta[time_col].to_numpy(float) if time_col in meta.columns else np.arange(n, dtype=float)
        slope = np.gradient(smooth, t) if n > 1 else np.zeros(n)
        sign = pd.Series(np.sign(slope)).replace(0.0, np.nan).ffill().bfill().fillna(1.0)
        label = np.where(sign.to_numpy() > 0, "charge", "discharge")
    else:
        raise OptionError(f"branches needs a {current_col!r} or {voltage_col!r} column")
    label = np.asarray(label, dtype=object)
    # a new cycle at each charge whose last non-rest predecessor was a discharge
    active = pd.Series(np.where(label == "rest", None, label), dtype=object).ffill()
    prev = active.shift(1)
    starts = (label == "charge") & (prev.to_numpy() == "discharge")
    cycle = 1 + np.cumsum(starts)
    return pd.DataFrame({"branch": label.astype(str), "cycle": cycle.astype(np.int64)},
                        index=meta.index)


def _frame_meta_joiner(meta: pd.DataFrame) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """``join_frame_meta(table, meta)`` for the tables of many chunks, ``meta`` holding every
    frame of the series once, in order (as :func:`join_frame_meta`
    makes it for all the frames): its rows are looked up by frame number, instead of a merge
    that copies, sorts and checks all of ``meta`` for every chunk (which grew as chunks x
    frames).  A table with a frame ``meta`` lacks, or no rows, takes the full join."""
    frames = meta["frame"].to_numpy(np.int64)
    values = meta.drop(columns=["frame"])

    def join(table: pd.DataFrame) -> pd.DataFrame:
        wanted = np.asarray(table["frame"], dtype=np.int64) if len(table) else None
        pos = None if wanted is None else np.searchsorted(frames, wanted)
        if pos is None or (pos >= len(frames)).any() or (frames[pos] != wanted).any():
            return join_frame_meta(table, meta)
        out = table.reset_index(drop=True).assign(frame=wanted)
        extra = values.take(pos).reset_index(drop=True)
        extra = extra.rename(columns={c: f"{c}_meta" for c in extra.columns if c in out.columns})
        return pd.concat([out, extra], axis=1)

    return join
