"""Operando analysis of tracked peaks: strain (or radial shift) against cell metadata.

A track table from :func:`braggtrack.run` may carry per-frame metadata joined by
:mod:`braggtrack.metadata` (``voltage_V``, ``capacity_mAh``, ``state_of_charge``, ``time_s``,
``current_mA``, ``branch``, ``cycle``).  This module turns it into the numbers an operando
battery study asks for:

* :func:`assign_branches` tells charge from discharge (a ``branch`` column if the cycler gave
  one, else the sign of the current, else the sign of d(x)/d(frame)) and numbers the cycles;
* :func:`population_band` gives the median and 16-84 percentile band of all particles;
* :func:`hysteresis` measures, per particle and cycle, the area between the charge and the
  discharge branch of strain against ``x`` and the largest vertical gap;
* :func:`rank_particles` ranks particles by response amplitude, by onset (the ``x`` at which half
  of the particle's strain change is reached) and by lag (cross-correlation lag against ``x``).

Every function returns a DataFrame without NaN (quantities that cannot be computed are flagged
with ``ok=False`` and a ``reason``); the ``plot_*`` functions return matplotlib figures.  The
statistics are a few lines of numpy each, written here rather than taken from a library because
none of the well-kept ones (scipy, pandas) knows about charge/discharge branches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .errors import OptionError

#: Metadata columns that can drive charge/discharge, in order of preference.
DRIVERS = ("state_of_charge", "voltage_V", "capacity_mAh", "time_s")
#: Current columns whose sign tells charge (> 0) from discharge (< 0).
CURRENTS = ("current_mA", "current_A", "current")
#: Columns that :func:`x_columns` offers as abscissae.
X_CANDIDATES = ("voltage_V", "capacity_mAh", "state_of_charge", "time_s")


def response_column(table: pd.DataFrame) -> str:
    """Name of the per-peak response column: ``strain`` if present, else ``radial_shift``.

    Examples
    --------
    >>> import pandas as pd
    >>> response_column(pd.DataFrame({"radial_shift": [0.1]}))
    'radial_shift'
    """
    for name in ("strain", "radial_shift"):
        if name in table.columns and table[name].notna().any():
            return name
    raise OptionError(
        "table has neither a strain nor a radial_shift column; run the geometry stage "
        "(braggtrack run ... --poni FILE) or track the peaks first"
    )


def x_columns(table: pd.DataFrame) -> list[str]:
    """Metadata columns of ``table`` usable as abscissa (present and not constant).

    Examples
    --------
    >>> import pandas as pd
    >>> x_columns(pd.DataFrame({"voltage_V": [3.0, 4.1], "time_s": [0.0, 0.0]}))
    ['voltage_V']
    """
    out = []
    for name in X_CANDIDATES:
        if name in table.columns:
            values = pd.to_numeric(table[name], errors="coerce")
            if values.notna().sum() > 1 and values.nunique() > 1:
                out.append(name)
    return out


def _check_columns(table: pd.DataFrame, *names: str) -> None:
    missing = [n for n in names if n not in table.columns]
    if missing:
        raise OptionError(f"table has no column {', '.join(missing)} (columns: {', '.join(map(str, table.columns))})")


def _numbers(table: pd.DataFrame, *names: str) -> pd.DataFrame:
    """``table`` with the columns ``names`` as float64 (a copy when any is converted).

    Numbers stored as text (a CSV column with one stray ``--`` is read as text) are converted;
    a value that is not a number is an :class:`~braggtrack.errors.OptionError` naming the
    column, not a ``TypeError`` from deep inside pandas.
    """
    out = table
    for name in dict.fromkeys(names):
        col = table[name]
        if col.dtype.kind in "iuf":
            continue
        values = pd.to_numeric(col, errors="coerce") if col.dtype.kind != "b" else None
        bad = col.notna() & values.isna() if values is not None else col.notna()
        if bad.any():
            raise OptionError(
                f"column {name} must hold numbers, found {col[bad].iloc[0]!r} in "
                f"{int(bad.sum())} row(s); clean the metadata it came from")
        if out is table:
            out = table.copy()
        out[name] = values.astype(float)
    return out


def _fill_sign(sign: np.ndarray) -> np.ndarray:
    """Replace zeros (flat steps, turning points) by the previous non-zero sign."""
    s = pd.Series(np.where(sign == 0, np.nan, sign))
    s = s.ffill().bfill()
    return s.fillna(1.0).to_numpy()


def assign_branches(
    table: pd.DataFrame, x: str | None = None, *, smooth: int = 1
) -> pd.DataFrame:
    """Add ``branch`` ('charge'/'discharge') and ``cycle`` columns when they are missing.

    The branch comes from, in this order: an existing ``branch`` column; the sign of a current
    column (``current_mA``, ``current_A``, ``current``; > 0 is charge); the sign of
    d(x)/d(frame) of the driver column ``x`` (default: the first of ``state_of_charge``,
    ``voltage_V``, ``capacity_mAh`` present).  A new cycle starts whenever a charge branch
    follows a discharge branch; cycles are numbered from 1.

    Parameters
    ----------
    table : DataFrame
        Peaks or tracks with a ``frame`` column and per-frame metadata.
    x : str, optional
        Driver column for the derivative rule.
    smooth : int
        Running-median window (frames) applied to the driver before differencing, against
        noisy voltage readings.

    Returns
    -------
    DataFrame
        A copy of ``table`` with ``branch`` and ``cycle``.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"frame": range(6), "voltage_V": [3.0, 3.5, 4.0, 3.6, 3.2, 3.6]})
    >>> assign_branches(t)[["branch", "cycle"]].values.tolist()[:4]
    [['charge', 1], ['charge', 1], ['charge', 1], ['discharge', 1]]
    """
    _check_columns(table, "frame")
    out = table.copy()
    if "branch" in out.columns and "cycle" in out.columns:
        return out
    frames = np.sort(out["frame"].unique())
    if "branch" in out.columns:
        per_frame = out.groupby("frame")["branch"].first().reindex(frames).astype(str)
        branch = per_frame.to_numpy()
    else:
        current = next((c for c in CURRENTS if c in out.columns), None)
        if current is not None:
            numeric = _numbers(out, current)
            values = numeric.groupby("frame")[current].mean().reindex(frames).to_numpy(float)
            sign = _fill_sign(np.sign(np.nan_to_num(values)))
        else:
            driver = x if x is not None else next((c for c in DRIVERS if c in out.columns), None)
            if driver is None:
                raise OptionError(
                    "cannot tell charge from discharge: no branch, current or "
                    f"{'/'.join(DRIVERS)} column in the table"
                )
            _check_columns(out, driver)
            values = _numbers(out, driver).groupby("frame")[driver].mean().reindex(frames)
            if smooth > 1:
                values = values.rolling(int(smooth), center=True, min_periods=1).median()
            values = values.to_numpy(float)
            if len(values) < 2:
                sign = np.ones(len(values))
            else:
                sign = _fill_sign(np.sign(np.gradient(values)))
        branch = np.where(sign > 0, "charge", "discharge")
    if "cycle" in out.columns:
        cycle = out.groupby("frame")["cycle"].first().reindex(frames).to_numpy()
    else:
        is_charge = branch == "charge"
        starts = np.zeros(len(branch), dtype=int)
        starts[1:] = is_charge[1:] & ~is_charge[:-1]
        cycle = 1 + np.cumsum(starts)
    frame_branch = dict(zip(frames.tolist(), branch.tolist(), strict=True))
    frame_cycle = dict(zip(frames.tolist(), np.asarray(cycle).tolist(), strict=True))
    if "branch" not in out.columns:
        out["branch"] = out["frame"].map(frame_branch)
    out["cycle"] = out["frame"].map(frame_cycle).astype(int)
    return out


def _response(table: pd.DataFrame, y: str | None) -> str:
    if y is None:
        return response_column(table)
    _check_columns(table, y)
    return y


def population_band(
    table: pd.DataFrame,
    x: str = "voltage_V",
    *,
    y: str | None = None,
    bins: int = 20,
    by_branch: bool = True,
    min_particles: int = 1,
) -> pd.DataFrame:
    """Population median and 16-84 percentile band of ``y`` against ``x``.

    ``x`` is cut into ``bins`` equal bins; each particle first contributes the mean of its points
    in a bin (so a particle seen in many frames does not outweigh the others), then the
    median and the 16th and 84th percentiles are taken across particles.

    Returns
    -------
    DataFrame
        ``branch`` (``all`` when ``by_branch`` is False), ``x`` (bin centre), ``median``,
        ``p16``, ``p84``, ``n_particles``; only bins with at least ``min_particles``.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"frame": [0, 1, 0, 1], "particle": [0, 0, 1, 1],
    ...                   "voltage_V": [3.0, 4.0, 3.0, 4.0], "strain": [0.0, 1e-3, 0.0, 3e-3]})
    >>> population_band(t, bins=2, by_branch=False)["median"].round(4).tolist()
    [0.0, 0.002]
    """
    y = _response(table, y)
    _check_columns(table, x, "particle")
    table = _numbers(table, x, y)
    t = assign_branches(table, x) if by_branch else table.assign(branch="all")
    t = t[np.isfinite(t[x].to_numpy(float)) & np.isfinite(t[y].to_numpy(float))]
    columns = ["branch", "x", "median", "p16", "p84", "n_particles"]
    if t.empty:
        return pd.DataFrame(columns=columns)
    lo, hi = float(t[x].min()), float(t[x].max())
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, int(bins) + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    idx = np.clip(np.digitize(t[x].to_numpy(float), edges) - 1, 0, len(centres) - 1)
    t = t.assign(_bin=idx)
    per_particle = t.groupby(["branch", "_bin", "particle"])[y].mean().reset_index()
    rows = []
    for (branch, b), g in per_particle.groupby(["branch", "_bin"]):
        v = g[y].to_numpy(float)
        if len(v) < min_particles:
            continue
        p16, med, p84 = np.percentile(v, [16, 50, 84])
        rows.append((branch, centres[b], med, p16, p84, len(v)))
    return pd.DataFrame(rows, columns=columns)


def _branch_curve(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by x and average repeated x values, so the branch can be interpolated."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    ux, inverse = np.unique(x, return_inverse=True)
    uy = np.bincount(inverse, weights=y) / np.bincount(inverse)
    return ux, uy


def hysteresis(
    table: pd.DataFrame,
    x: str = "voltage_V",
    *,
    y: str | None = None,
    n_grid: int = 200,
    min_points: int = 3,
) -> pd.DataFrame:
    """Per particle and cycle: area between the charge and discharge branches of ``y`` vs ``x``.

    Both branches are sorted by ``x`` and interpolated onto a common grid over the ``x`` range
    they share; ``area`` is the integral of the absolute gap (units of ``y`` times ``x``),
    ``signed_area`` the integral of charge minus discharge, ``max_gap`` the largest absolute
    vertical gap and ``x_max_gap`` where it occurs.

    Returns
    -------
    DataFrame
        ``particle, cycle, area, signed_area, max_gap, x_max_gap, x_lo, x_hi, n_charge,
        n_discharge, ok, reason``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> v = np.r_[np.linspace(3, 4, 11), np.linspace(4, 3, 11)]
    >>> s = np.r_[np.linspace(0, 1, 11) + 0.5, np.linspace(1, 0, 11) - 0.5] * 1e-3
    >>> t = pd.DataFrame({"frame": range(22), "particle": 0, "voltage_V": v, "strain": s})
    >>> round(float(hysteresis(t)["area"].iloc[0]), 6)
    0.001
    """
    y = _response(table, y)
    _check_columns(table, x, "particle", "frame")
    t = assign_branches(_numbers(table, x, y), x)
    rows = []
    for (particle, cycle), g in t.groupby(["particle", "cycle"]):
        g = g[np.isfinite(g[x].astype(float)) & np.isfinite(g[y].astype(float))]
        ch = g[g["branch"] == "charge"]
        dis = g[g["branch"] == "discharge"]
        row = dict(particle=particle, cycle=int(cycle), area=0.0, signed_area=0.0, max_gap=0.0,
                   x_max_gap=0.0, x_lo=0.0, x_hi=0.0, n_charge=len(ch), n_discharge=len(dis),
                   ok=False, reason="")
        if len(ch) < min_points or len(dis) < min_points:
            row["reason"] = "branch_too_short"
            rows.append(row)
            continue
        xc, yc = _branch_curve(ch[x].to_numpy(float), ch[y].to_numpy(float))
        xd, yd = _branch_curve(dis[x].to_numpy(float), dis[y].to_numpy(float))
        lo, hi = max(xc[0], xd[0]), min(xc[-1], xd[-1])
        if not hi > lo:
            row["reason"] = "no_common_x_range"
            rows.append(row)
            continue
        grid = np.linspace(lo, hi, int(n_grid))
        gap = np.interp(grid, xc, yc) - np.interp(grid, xd, yd)
        k = int(np.argmax(np.abs(gap)))
        row.update(area=float(np.trapezoid(np.abs(gap), grid)),
                   signed_area=float(np.trapezoid(gap, grid)), max_gap=float(abs(gap[k])),
                   x_max_gap=float(grid[k]), x_lo=float(lo), x_hi=float(hi), ok=True)
        rows.append(row)
    columns = ["particle", "cycle", "area", "signed_area", "max_gap", "x_max_gap", "x_lo", "x_hi",
               "n_charge", "n_discharge", "ok", "reason"]
    return pd.DataFrame(rows, columns=columns)


def _onset(x: np.ndarray, y: np.ndarray, fraction: float, end_fraction: float) -> float | None:
    """x at which ``fraction`` of the change of y (sorted by x) is first reached."""
    xs, ys = _branch_curve(x, y)
    n = len(xs)
    if n < 4:
        return None
    window = max(1, min(5, n // 5)) | 1
    if window > 1:
        ys = pd.Series(ys).rolling(window, center=True, min_periods=1).median().to_numpy()
    m = max(1, int(round(end_fraction * n)))
    y0, y1 = ys[:m].mean(), ys[-m:].mean()
    if y1 == y0:
        return None
    frac = (ys - y0) / (y1 - y0)
    above = np.nonzero(frac >= fraction)[0]
    if len(above) == 0:
        return None
    i = int(above[0])
    if i == 0:
        return float(xs[0])
    f0, f1 = frac[i - 1], frac[i]
    return float(xs[i - 1] + (fraction - f0) / (f1 - f0) * (xs[i] - xs[i - 1]))


def _lag(x: np.ndarray, y: np.ndarray, max_lag: int) -> tuple[float, float]:
    """Cross-correlation lag (frames) of y behind x, refined to sub-frame, and its correlation."""
    n = len(x)
    max_lag = int(min(max_lag, n - 3))
    lags = np.arange(-max_lag, max_lag + 1)

    def pearson(a: np.ndarray, b: np.ndarray) -> float:
        # Each overlap is standardised on its own: the global mean of a series that covers a
        # fraction of a cycle would otherwise bias the lag.
        a, b = a - a.mean(), b - b.mean()
        denom = np.sqrt((a * a).sum() * (b * b).sum())
        return float((a * b).sum() / denom) if denom > 0 else 0.0

    corr = np.array([
        pearson(x[: n - L], y[L:]) if L >= 0 else pearson(x[-L:], y[: n + L]) for L in lags
    ])
    # The sign of the zero-lag correlation says whether y follows x or -x; maximising the
    # signed correlation keeps a periodic drive from being matched half a period away.
    sign = 1.0 if corr[max_lag] >= 0 else -1.0
    k = int(np.argmax(sign * corr))
    shift = 0.0
    if 0 < k < len(lags) - 1:
        a, b, c = sign * corr[k - 1 : k + 2]
        denom = a - 2 * b + c
        if denom != 0:
            shift = float(np.clip(0.5 * (a - c) / denom, -0.5, 0.5))
    return float(lags[k] + shift), float(corr[k])


def rank_particles(
    table: pd.DataFrame,
    x: str = "state_of_charge",
    *,
    y: str | None = None,
    fraction: float = 0.5,
    min_points: int = 5,
    max_lag: int | None = None,
    branch: str | None = "charge",
    end_fraction: float = 0.1,
) -> pd.DataFrame:
    """Rank particles by response amplitude, onset and lag against ``x``.

    * ``amplitude``: 98th minus 2nd percentile of ``y`` (robust peak-to-peak);
      ``slope``: least-squares dy/dx;
    * ``onset_x``: the ``x`` at which ``fraction`` (default half) of the particle's change of
      ``y`` is first reached, on the points of ``branch`` (default the charge branches; ``None``
      uses all points) sorted by ``x``; the change runs from the mean of the first to the mean
      of the last ``end_fraction`` of the points;
    * ``lag_frames``: lag of ``y`` behind ``x`` (both as series over frame, linearly interpolated
      over missing frames) that maximises the cross-correlation (of the sign it has at zero lag),
      refined by a parabola;
      positive means the particle responds later; ``correlation`` is its value (sign says
      whether ``y`` grows or shrinks with ``x``).

    Ranks start at 1: largest amplitude, earliest onset, smallest lag.

    Returns
    -------
    DataFrame
        ``particle, n_points, amplitude, slope, onset_x, lag_frames, correlation,
        rank_amplitude, rank_onset, rank_lag, ok, reason``, sorted by ``rank_amplitude``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> f = np.arange(40)
    >>> soc = np.abs(((f / 20.0) % 2) - 1)
    >>> t = pd.DataFrame({"frame": f, "particle": 0, "state_of_charge": soc,
    ...                   "strain": 1e-3 * np.abs((((f - 3) / 20.0) % 2) - 1)})
    >>> round(rank_particles(t)["lag_frames"].iloc[0])
    3
    """
    y = _response(table, y)
    _check_columns(table, x, "particle", "frame")
    table = _numbers(table, x, y)
    t = table
    if branch is not None:
        t = assign_branches(table, x)
    rows = []
    for particle, g in t.groupby("particle"):
        g = g[np.isfinite(g[x].astype(float)) & np.isfinite(g[y].astype(float))]
        row = dict(particle=particle, n_points=len(g), amplitude=0.0, slope=0.0, onset_x=0.0,
                   lag_frames=0.0, correlation=0.0, ok=False, reason="")
        if len(g) < min_points:
            row["reason"] = "too_few_points"
            rows.append(row)
            continue
        xv, yv = g[x].to_numpy(float), g[y].to_numpy(float)
        q02, q98 = np.percentile(yv, [2, 98])
        row["amplitude"] = float(q98 - q02)
        if np.ptp(xv) > 0:
            row["slope"] = float(np.polyfit(xv, yv, 1)[0])
        sel = g if branch is None else g[g["branch"] == branch]
        onset = None
        if len(sel) >= min_points:
            onset = _onset(sel[x].to_numpy(float), sel[y].to_numpy(float), fraction, end_fraction)
        per_frame = g.groupby("frame")[[x, y]].mean()
        frames = per_frame.index.to_numpy()
        grid = np.arange(frames.min(), frames.max() + 1)
        xs = np.interp(grid, frames, per_frame[x].to_numpy(float))
        ys = np.interp(grid, frames, per_frame[y].to_numpy(float))
        reasons = []
        if len(grid) >= 4 and xs.std() > 0 and ys.std() > 0:
            lag_limit = max_lag if max_lag is not None else max(1, min(len(grid) // 4, 50))
            lag, row["correlation"] = _lag(xs, ys, int(lag_limit))
            # Sub-frame digits beyond 1e-3 are round-off, not information.
            row["lag_frames"] = round(lag, 3) + 0.0
        else:
            reasons.append("flat_or_short_series")
        if onset is None:
            reasons.append("no_onset")
        else:
            row["onset_x"] = onset
        row["ok"] = not reasons
        row["reason"] = ",".join(reasons)
        rows.append(row)
    columns = ["particle", "n_points", "amplitude", "slope", "onset_x", "lag_frames",
               "correlation", "ok", "reason"]
    out = pd.DataFrame(rows, columns=columns)
    if out.empty:
        return out.assign(rank_amplitude=[], rank_onset=[], rank_lag=[])
    out["rank_amplitude"] = out["amplitude"].rank(ascending=False, method="first").astype(int)
    # Particles without an onset/lag rank last rather than first.
    onset_key = out["onset_x"].where(out["ok"], np.inf)
    lag_key = out["lag_frames"].where(out["reason"].str.find("flat") < 0, np.inf)
    out["rank_onset"] = onset_key.rank(method="first").astype(int)
    out["rank_lag"] = lag_key.rank(method="first").astype(int)
    return out.sort_values("rank_amplitude").reset_index(drop=True)


_LABELS = {
    "voltage_V": "cell voltage (V)",
    "capacity_mAh": "capacity (mAh)",
    "state_of_charge": "state of charge",
    "time_s": "time (s)",
    "frame": "frame",
    "strain": "strain (d/d$_{ref}$ - 1)",
    "radial_shift": "radial shift (px)",
}


def axis_label(name: str) -> str:
    """Readable axis label with unit for a table column."""
    return _LABELS.get(name, name)


def plot_response(
    table: pd.DataFrame,
    x: str = "voltage_V",
    *,
    y: str | None = None,
    particles: Sequence | None = None,
    n_particles: int = 6,
    band: bool = True,
    bins: int = 20,
):
    """Strain (or radial shift) against ``x``: single particles over the population band.

    The population median (black; solid on charge, dashed on discharge) and its 16-84
    percentile band (grey) sit behind up to ``n_particles`` single particles (the largest
    amplitudes unless ``particles`` names them), drawn with their error bars.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"frame": [0, 1, 2], "particle": 0, "voltage_V": [3.0, 3.5, 4.0],
    ...                   "strain": [0.0, 1e-3, 2e-3]})
    >>> fig = plot_response(t)
    """
    from matplotlib.figure import Figure

    y = _response(table, y)
    _check_columns(table, x, "particle")
    table = _numbers(table, x, y)
    t = assign_branches(table, x) if "frame" in table.columns else table.assign(branch="all")
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    if band:
        pb = population_band(t, x, y=y, bins=bins, by_branch="frame" in t.columns)
        for br, g in pb.groupby("branch"):
            g = g.sort_values("x")
            ax.fill_between(g["x"], g["p16"], g["p84"], color="0.6", alpha=0.3, lw=0,
                            label=f"population 16-84 % ({br})")
            ax.plot(g["x"], g["median"], color="k", lw=2, ls="--" if br == "discharge" else "-",
                    label=f"population median ({br})")
    if particles is None:
        amp = t.groupby("particle")[y].agg(lambda v: np.ptp(v.to_numpy(float)))
        particles = amp.sort_values(ascending=False).index[:n_particles].tolist()
    err = f"{y}_err"
    import matplotlib

    colours = matplotlib.colormaps["tab10"]
    for i, p in enumerate(particles):
        g = t[t["particle"] == p].sort_values("frame" if "frame" in t.columns else x)
        yerr = g[err].to_numpy(float) if err in g.columns else None
        ax.errorbar(g[x], g[y], yerr=yerr, color=colours(i % 10), lw=1, ms=3, marker="o",
                    alpha=0.8, capsize=0, label=f"particle {p}")
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    ax.set_title(f"{axis_label(y)} against {axis_label(x)}")
    ax.legend(fontsize=7, ncols=2, loc="best")
    ax.grid(alpha=0.3)
    return fig


def plot_hysteresis(hyst: pd.DataFrame, *, x: str = "voltage_V", y: str = "strain"):
    """Histogram of per-particle hysteresis areas, one colour per cycle.

    Examples
    --------
    >>> import pandas as pd
    >>> h = pd.DataFrame({"particle": [0, 1], "cycle": [1, 1], "area": [1e-4, 2e-4],
    ...                   "ok": [True, True]})
    >>> fig = plot_hysteresis(h)
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.8), layout="constrained")
    ax = fig.add_subplot()
    ok = hyst[hyst["ok"]] if "ok" in hyst.columns else hyst
    for cycle, g in ok.groupby("cycle"):
        ax.hist(g["area"], bins=min(30, max(5, len(g) // 2)), alpha=0.6, label=f"cycle {cycle}")
    unit = {"voltage_V": "V", "capacity_mAh": "mAh", "time_s": "s"}.get(x, "")
    yunit = "px" if y == "radial_shift" else ""
    ax.set_xlabel(f"hysteresis area ({' x '.join(u for u in (yunit, unit) if u) or 'a.u.'})")
    ax.set_ylabel("particles")
    ax.set_title("Hysteresis between charge and discharge, per particle")
    if len(ok):
        ax.legend(fontsize=8)
    return fig


def plot_ranking(ranks: pd.DataFrame, *, x: str = "state_of_charge"):
    """Amplitude against onset (``x`` at half change) for every ranked particle.

    Examples
    --------
    >>> import pandas as pd
    >>> r = pd.DataFrame({"particle": [0], "amplitude": [1e-3], "onset_x": [0.5],
    ...                   "lag_frames": [2.0], "ok": [True]})
    >>> fig = plot_ranking(r)
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.8), layout="constrained")
    ax = fig.add_subplot()
    ok = ranks[ranks["ok"]] if "ok" in ranks.columns else ranks
    sc = ax.scatter(ok["onset_x"], ok["amplitude"], c=ok["lag_frames"], cmap="coolwarm", s=18)
    fig.colorbar(sc, ax=ax, label="lag behind x (frames)")
    ax.set_xlabel(f"onset: {axis_label(x)} at half of the change")
    ax.set_ylabel("response amplitude (98th - 2nd percentile)")
    ax.set_title("Particles by onset and amplitude")
    ax.grid(alpha=0.3)
    return fig
