"""Link peaks across frames into trajectories, and judge the result.

One *particle* is one trajectory: the same Bragg reflection (the same grain, the same hkl) seen in
consecutive frames.  :func:`link` adds an integer ``particle`` column to a peak table
(:class:`FrameLinker` does the same fed chunk by chunk; :func:`link_in_segments` joins segments
linked apart, e.g. on Dask workers, into exactly the same trajectories);
:func:`filter_tracks` drops short trajectories; :func:`split_on_shape_change` cuts a trajectory
where the peak shape jumps (another reflection took the place of the first one);
:func:`particles` summarises each trajectory; :func:`evaluate_tracking` scores a linking
against a simulator's ground truth.

Why trackpy
-----------
Linking is delegated to trackpy (0.7, Crocker-Grier linking), not hand-written, because it
already has what Bragg-peak tracking needs and is well tested:

* a bounded search range (``search_range``, pixels), with adaptive shrinking of the range inside
  dense clusters (``adaptive_stop``) instead of giving up;
* ``memory``: a peak that vanishes for a few frames (rocking curve edge, beam dump, a frame
  dropped by the find stage) keeps its identity when it comes back nearby;
* prediction from recent motion through trackpy's predictor hook: each trajectory moves on with
  the velocity of its last two points (a new one with the median velocity of the others), so
  steady drift (sample stage, thermal expansion, strain during a battery cycle) does not eat into
  the search range.  The small predictor is written here because trackpy's own
  ``NearestVelocityPredict`` spends about 80 ms a frame in pandas;
* global assignment: competing candidates are resolved by solving each *subnetwork* of mutually
  reachable peaks exactly (minimum total squared displacement), not greedily.

Measured on this project's machine (2 cores) with ``benchmarks/bench_track.py``: 2000
particles x 200 frames (about 350,000 peaks) link in 5-12 s with prediction (machine-dependent), which is
small next to the find stage, so a hand-written cKDTree + ``linear_sum_assignment`` linker was
not worth its maintenance.

Notes
-----
``memory`` counts frame numbers, not the frames that hold peaks: frames with no accepted peak
at all (a beam dump, a shutter closed) count against it, so a frame table must number the
frames of the series (a table of every 10th frame would need renumbering 0, 1, 2, ... first).
trackpy counts only the frames it is fed, so :class:`FrameLinker` feeds it an empty frame for
each missing frame number (at most ``memory + 1`` in a row: by then every trajectory has ended
anyway).  Only ``ok`` peaks are linked by default (rejected peaks have unreliable positions);
the returned table holds the linked peaks only.
"""

from __future__ import annotations

import itertools
import numbers
import queue
import threading
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from .errors import OptionError, checked_number

__all__ = [
    "link",
    "FrameLinker",
    "Segment",
    "SegmentLinking",
    "plan_segments",
    "segment_warmup",
    "link_arrays",
    "link_in_segments",
    "filter_tracks",
    "split_on_shape_change",
    "particles",
    "evaluate_tracking",
]

_POS = ["y", "x"]


def _check_columns(table: pd.DataFrame, columns: list[str], what: str) -> None:
    if not isinstance(table, pd.DataFrame):
        raise OptionError(f"{what} must be a pandas DataFrame, not {type(table).__name__}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise OptionError(f"{what} lacks column(s) {', '.join(missing)}")


def _shown(value) -> str:
    """A cell value for a message: ``0.5``, ``'abc'``, not ``np.float64(0.5)``."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _numeric_column(table: pd.DataFrame, column: str, what: str) -> np.ndarray:
    """A column as float64; a text value in it is an OptionError naming it (missing values,
    NaN, stay NaN for the caller to handle)."""
    col = table[column]
    if col.dtype.kind in "biuf":
        return col.to_numpy(float)
    values = pd.to_numeric(col, errors="coerce")
    bad = values.isna() & col.notna()
    if bad.any():
        example = col[bad].iloc[0]
        raise OptionError(f"{what}: column {column} must hold numbers, found {_shown(example)} "
                          f"in {int(bad.sum())} row(s)")
    return values.to_numpy(float)


def _bool_column(table: pd.DataFrame, column: str, what: str) -> np.ndarray:
    """A True/False column (bool, 0/1, or the words true/false) as a bool array; anything else
    ("no", blank) is an OptionError: ``astype(bool)`` would call every non-empty string True."""
    col = table[column]
    if col.dtype.kind == "b":
        return col.to_numpy(bool)
    values = col.to_numpy(object)
    out = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)):
            out[i] = bool(v)
        elif isinstance(v, numbers.Integral) and v in (0, 1):
            out[i] = bool(v)
        elif isinstance(v, numbers.Real) and np.isfinite(v) and v in (0.0, 1.0):
            out[i] = bool(v)
        elif isinstance(v, str) and v.strip().lower() in ("true", "false"):
            out[i] = v.strip().lower() == "true"
        else:
            raise OptionError(f"{what}: column {column} must hold True/False, found {_shown(v)}")
    return out


def _relabel(particle: np.ndarray, frame: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Consecutive ids 0..n-1 in order of first appearance (frame, then y, then x)."""
    if len(particle) == 0:
        return particle.astype(np.int64)
    order = np.lexsort((x, y, frame))
    _, first = np.unique(particle[order], return_index=True)
    # first[k] is the position (in sorted order) of the first row of the k-th unique label
    uniq = np.unique(particle)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
    return rank[np.searchsorted(uniq, particle)]


class _VelocityPredictor:
    """trackpy predictor: each trajectory moves on with the velocity of its last two points.

    A trajectory with a single point yet takes the median velocity of those that have two
    (common drift of the sample or detector), so a peak that appears during a drift is
    followed from its second frame.  trackpy calls the predictor with the last point of each
    trajectory (and the points held in memory); the previous point is remembered on the
    trajectory object itself, not by its id: trackpy numbers trajectories with a counter
    shared by the whole process, which another linking starting in another thread resets
    (see :class:`FrameLinker`).  This replaces trackpy's ``NearestVelocityPredict``, whose
    per-frame pandas work cost about 80 ms a frame (25 times the linking itself) with
    pandas 3.
    """

    def __call__(self, t1: float, points: list) -> list[np.ndarray]:
        n = len(points)
        if n == 0:
            return []
        # Python does only the per-trajectory bookkeeping; the arithmetic is done on arrays
        # (numpy on 2-element arrays costs ~1 us a call, which adds up at 300 points/frame).
        with_prev, last_t, last_pos, prev_t, prev_pos = [], [], [], [], []
        for i, p in enumerate(points):
            track = p.track
            state = track.__dict__
            last = state.get("_bt_last")
            if last is None or p.t > last[0]:
                if last is not None:
                    state["_bt_prev"] = last
                last = state["_bt_last"] = (p.t, p.pos)
            prev = state.get("_bt_prev")
            if prev is not None:
                with_prev.append(i)
                last_t.append(last[0])
                last_pos.append(last[1])
                prev_t.append(prev[0])
                prev_pos.append(prev[1])
        pos = np.array([p.pos for p in points], dtype=float).reshape(n, 2)
        dt = t1 - np.array([p.t for p in points], dtype=float)
        vel = np.full((n, 2), np.nan)
        if with_prev:
            step = np.array(last_t, float) - np.array(prev_t, float)
            vel[with_prev] = (np.array(last_pos, float) - np.array(prev_pos, float)) / step[:, None]
        known = np.isfinite(vel[:, 0])
        if not known.all():
            vel[~known] = np.median(vel[known], axis=0) if known.any() else 0.0
        return list(pos + vel * dt[:, None])


def link(
    peaks: pd.DataFrame,
    *,
    search_range: float = 3.0,
    memory: int = 3,
    predict: bool = True,
    min_length: int = 1,
    only_ok: bool = True,
    adaptive_stop: float | None = None,
    adaptive_step: float = 0.95,
) -> pd.DataFrame:
    """Link peaks of consecutive frames into trajectories.

    Parameters
    ----------
    peaks : DataFrame
        Peak table with at least ``frame``, ``x``, ``y`` (pixels); ``ok`` is honoured when present.
    search_range : float
        Largest displacement (pixels) between two frames, after prediction.
    memory : int
        Number of frames a peak may vanish and still keep its identity when it comes back.
        Frame numbers count, including frames without any peak (see the module notes).
    predict : bool
        Predict each peak's next position from its trajectory's last two points (a trajectory
        with one point yet: the median velocity of the others).
    min_length : int
        Drop trajectories with fewer frames than this.
    only_ok : bool
        Link only rows with ``ok == True`` (when the column exists); other rows are left out.
    adaptive_stop : float or None
        In a subnetwork too large to solve exactly, shrink the search range by ``adaptive_step``
        until it is solvable or falls below ``adaptive_stop`` pixels.  ``None``: a tenth of
        ``search_range``.
    adaptive_step : float
        Factor (0 < step < 1) by which the search range shrinks in that case.

    Returns
    -------
    DataFrame
        The linked peaks (all input columns) plus ``particle`` (int64, 0..n-1 in order of first
        appearance), sorted by ``frame`` then ``particle``, with a fresh index.

    Examples
    --------
    >>> import pandas as pd
    >>> peaks = pd.DataFrame({"frame": [0, 0, 1, 1], "x": [10.0, 50.0, 10.4, 50.3],
    ...                       "y": [20.0, 20.0, 20.1, 19.9]})
    >>> link(peaks, search_range=2.0)["particle"].tolist()
    [0, 1, 0, 1]
    """
    _check_columns(peaks, ["frame", "x", "y"], "peak table")
    linker = FrameLinker(search_range=search_range, memory=memory, predict=predict,
                         adaptive_stop=adaptive_stop, adaptive_step=adaptive_step)
    min_length = checked_number(min_length, "min_length", integer=True, low=1)
    table = linkable(peaks, only_ok=only_ok)
    # trackpy takes the frames in order; a stable sort keeps each frame's row order.
    order = np.argsort(table["frame"].to_numpy(), kind="stable")
    linker.add(table.iloc[order])
    labels = np.empty(len(table), dtype=np.int64)
    labels[order] = linker.close()
    return linked_table(table, labels, min_length=min_length)


def linkable(peaks: pd.DataFrame, *, only_ok: bool = True,
             what: str = "peak table") -> pd.DataFrame:
    """The rows :func:`link` links: accepted (``ok``, when ``only_ok``) with finite x, y.

    Only ``frame``, ``x`` and ``y`` are needed; ``ok`` is honoured when present and must hold
    True/False.  A frame that is not a whole number, a text value in ``x``/``y`` or a ``ok``
    value such as ``"no"`` is an :class:`~braggtrack.errors.OptionError` naming ``what`` (the
    file, for a command line) and the column; a NaN position is not an error (a peak that
    could not be localized) and its row is left out.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"frame": [0, 0, 1], "x": [1.0, float("nan"), 1.2], "y": 2.0,
    ...                   "ok": [True, True, False]})
    >>> len(linkable(t))
    1
    """
    _check_columns(peaks, ["frame", "x", "y"], what)
    # (Each pandas step costs ~0.2-0.4 ms however small the table: a run calls this for
    # every chunk, so steps with nothing to do are skipped.)
    table = peaks.drop(columns=["particle"]) if "particle" in peaks.columns else peaks
    frame = _numeric_column(table, "frame", what)
    whole = np.isfinite(frame) & (frame == np.round(frame))
    if not whole.all():
        raise OptionError(f"{what}: column frame must hold whole frame numbers, found "
                          f"{_shown(table['frame'].to_numpy()[~whole][0])}")
    x = _numeric_column(table, "x", what)
    y = _numeric_column(table, "y", what)
    keep = np.isfinite(x) & np.isfinite(y)
    if only_ok and "ok" in table.columns:
        keep &= _bool_column(table, "ok", what)
    table = table[keep].reset_index(drop=True)
    if table["frame"].dtype != np.int64:
        table["frame"] = frame[keep].astype(np.int64)
    for name, values in (("x", x), ("y", y)):
        if table[name].dtype.kind not in "iuf":  # numbers written as text
            table[name] = values[keep]
    return table


def _reordered(table: pd.DataFrame, order: np.ndarray) -> pd.DataFrame:
    """``table``'s rows in ``order``, index reset; no copy when that is the order they are in
    (copy-on-write shares the columns)."""
    if np.array_equal(order, np.arange(len(table))):
        return table.reset_index(drop=True)
    return table.take(order).reset_index(drop=True)


def linked_table(table: pd.DataFrame, labels: np.ndarray, *, min_length: int = 1) -> pd.DataFrame:
    """``table`` (from :func:`linkable`) with trajectory ``labels``: ids renumbered in order of
    first appearance, rows sorted by frame and particle, short trajectories dropped."""
    particle = _relabel(
        np.asarray(labels, dtype=np.int64), table["frame"].to_numpy(),
        table["y"].to_numpy(float), table["x"].to_numpy(float),
    )
    # One reordered copy of the table (sorting a copy would make two: a long run's
    # table is most of the driver's memory at its end).
    order = np.lexsort((particle, table["frame"].to_numpy()))  # stable: frame, then particle
    out = _reordered(table, order)
    out["particle"] = particle[order]
    if min_length > 1:
        out = filter_tracks(out, min_length=min_length)
    return out


class FrameLinker:
    """Link peaks frame by frame as they arrive, in a background thread (trackpy's
    ``link_iter``): a run links each chunk of frames while the next ones are processed,
    instead of all frames at the end. :func:`link` is this with one :meth:`add`.

    Feed rows with :meth:`add` (frames in increasing order, each frame's rows together);
    :meth:`close` returns the trajectory label of every row fed, in feeding order.

    Examples
    --------
    >>> import pandas as pd
    >>> linker = FrameLinker(search_range=2.0)
    >>> linker.add(pd.DataFrame({"frame": [0, 0], "x": [10.0, 50.0], "y": [20.0, 20.0]}))
    >>> linker.add(pd.DataFrame({"frame": [1, 1], "x": [50.3, 10.4], "y": [19.9, 20.1]}))
    >>> linker.close().tolist()
    [0, 1, 1, 0]
    """

    _DONE = object()
    _FLUSH = object()

    def __init__(self, *, search_range: float = 3.0, memory: int = 3, predict: bool = True,
                 adaptive_stop: float | None = None, adaptive_step: float = 0.95) -> None:
        search_range = checked_number(search_range, "search_range (pixels)", low=0, low_open=True)
        memory = checked_number(memory, "memory (frames)", integer=True, low=0)
        adaptive_step = checked_number(adaptive_step, "adaptive_step", low=0, low_open=True,
                                       high=1, high_open=True)
        adaptive_stop = (0.1 * search_range if adaptive_stop is None
                         else checked_number(adaptive_stop, "adaptive_stop (pixels)", low=0,
                                         low_open=True))
        self.search_range = search_range
        self.memory = memory
        self.options = dict(
            memory=memory,
            adaptive_stop=adaptive_stop,
            adaptive_step=adaptive_step,
            predictor=_VelocityPredictor() if predict else None,
        )
        self._queue: queue.Queue = queue.Queue()
        self._labels: list[np.ndarray] = []
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._last_frame: int | None = None
        self._drained = False
        self.rows_fed = 0

    def add(self, rows: pd.DataFrame) -> None:
        """Queue the rows of one or more whole frames (``frame``, ``x``, ``y``)."""
        if len(rows) == 0:
            return
        frames = rows["frame"].to_numpy(np.int64)
        if (np.diff(frames) < 0).any() or (
                self._last_frame is not None and frames[0] <= self._last_frame):
            raise OptionError("FrameLinker.add: frames must come in increasing order, "
                              "each frame whole")
        coords = np.column_stack([rows[c].to_numpy(float) for c in _POS])
        cuts = np.flatnonzero(np.diff(frames)) + 1
        if self._thread is None:
            self._thread = threading.Thread(target=self._link, name="braggtrack-link",
                                            daemon=True)
            self._thread.start()
        empty = np.zeros((0, 2))
        last = self._last_frame
        for frame, block in zip(frames[np.r_[0, cuts]], np.split(coords, cuts), strict=True):
            frame = int(frame)
            if last is not None:
                # trackpy's memory counts the frames it is fed: feed the missing ones empty,
                # so that a gap of frames without peaks counts as frames.  memory + 1 of them
                # end every trajectory; more would change nothing.
                for missing in range(last + 1, min(frame, last + 2 + self.memory)):
                    self._queue.put((missing, empty))
            self._queue.put((frame, block))
            last = frame
        self._last_frame = last
        self.rows_fed += len(rows)  # last: an interrupted add() leaves it behind (see runner)

    def labels(self) -> np.ndarray:
        """Wait until every row fed so far is linked; their labels, in order. The linker goes
        on (a live run's tables are updated while frames keep coming): a later label never
        changes an earlier one."""
        if self._thread is None:
            return np.zeros(0, np.int64)
        linked = threading.Event()
        self._queue.put((self._FLUSH, linked))
        while not linked.wait(0.05):
            if self._error is not None or not self._thread.is_alive():  # ended by an error
                break
        if self._error is not None:
            raise self._error
        return self._linked_labels()

    def close(self) -> np.ndarray:
        """Wait for the linking to finish; the label of every row fed, in order."""
        if self._thread is None:
            return np.zeros(0, np.int64)
        self._queue.put(self._DONE)
        self._thread.join()
        self._thread = None
        if self._error is not None:
            raise self._error
        return self._linked_labels()

    def _linked_labels(self) -> np.ndarray:
        return np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64)

    def _frames(self):
        while (item := self._queue.get()) is not self._DONE:
            if item[0] is self._FLUSH:
                # trackpy asks for the next frame only once the labels of the last one were
                # taken (appended in _link), so every frame before this mark is linked.
                item[1].set()
                continue
            yield item
        self._drained = True

    def _link(self) -> None:
        import trackpy as tp
        from trackpy.linking import Linker
        from trackpy.linking.utils import SubnetOversizeException

        tp.quiet()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*inplace keyword.*")  # pandas 3
                # trackpy's link_iter, but labels taken from the trajectory objects: the ids
                # trackpy gives them come from a counter shared by the process, which every
                # linking resets when it starts, so two linkings in two threads (a Dask worker
                # with several threads linking two segments) would hand out the same ids.
                linker, number = Linker(self.search_range, **self.options), itertools.count()
                for i, (t, coords) in enumerate(self._frames()):
                    try:
                        if i == 0:
                            linker.init_level(coords, t)
                        else:
                            linker.next_level(coords, t)
                    except SubnetOversizeException as exc:
                        raise OptionError(
                            f"linking stopped at frame {t}: too many peaks within "
                            f"search_range = {self.search_range:g} px of each other for trackpy "
                            f"to resolve ({' '.join(str(exc).split())[:80]}); use a smaller "
                            "search range (--search-range)") from None
                    ids = []
                    for p in linker.hash.points:
                        state = p.track.__dict__  # kept on the trajectory: ends with it
                        if "_bt_label" not in state:
                            state["_bt_label"] = next(number)
                        ids.append(state["_bt_label"])
                    self._labels.append(np.asarray(ids, dtype=np.int64))
        except BaseException as exc:  # noqa: BLE001 - handed to close() in the caller's thread
            self._error = exc
            while not self._drained and (item := self._queue.get()) is not self._DONE:
                if item[0] is self._FLUSH:
                    item[1].set()  # labels() raises the error


# ----------------------------------------------------------------------------- segments
#
# Linking in segments lets a run link on its worker processes instead of in the one
# process that gathers the chunks, where it was the bottleneck of a cluster (trackpy spends
# ~13 us a peak in Python: ~3.5 ms a 2048x2048 frame of 265 peaks, i.e. one driver can link
# about 290 frames/s while 16 worker processes find peaks in ~500 frames/s).  trackpy's linker
# cannot be handed from one process to the next (class-level id counters, a lambda in its
# hash), so each segment is linked on its own after a warm-up of earlier frames, and the
# segments are joined where their links provably agree.
#
# Why the join is exact: trackpy decides the links into frame t from the frame's peaks and the
# linker's state after frame t-1 alone.  That state is every trajectory whose last point is in
# frames t-1-memory .. t-1 (older ones can no longer be continued), with the point before it
# (the velocity predictor uses the last two).  So if, on the frames s-1-memory .. s-1 before a
# segment's first frame s, every peak has the same predecessor in the warmed-up segment as in
# the trusted linking of the frames before, both linkers are in the same state at s and make
# the same links from there on.  A seam where they differ (the warm-up was too short to
# forget its cold start) is linked again with twice the warm-up, back to frame 0 at worst.
# Exact ties between two assignments of equal total cost, which trackpy breaks by its
# internal order, are the one case left out.


@dataclass(frozen=True)
class Segment:
    """Frames ``start .. stop-1`` linked after feeding frames ``warm .. start-1`` first."""

    warm: int
    start: int
    stop: int


def segment_warmup(memory: int) -> int:
    """Warm-up frames a segment is linked with: the ``2 * memory + 2`` frames the seam test
    looks at (the last ``memory + 1`` frames and their peaks' predecessors) and two more for
    the cold start's predictions to settle.

    Examples
    --------
    >>> segment_warmup(3)
    10
    """
    return 2 * int(memory) + 4


def plan_segments(bounds, memory: int = 3, warmup: int | None = None,
                  min_length: int | None = None) -> list[Segment]:
    """Segments along ``bounds`` (increasing frame numbers: the chunk starts and the end of the
    series), each warmed up on up to ``warmup`` frames before it (default
    :func:`segment_warmup`) and made of whole intervals of ``bounds`` until it is at least
    ``min_length`` frames long (default ``3 * warmup``, so the warm-up adds at most a third to
    the linking; ``1``: one segment per interval); the last one may be shorter.

    Examples
    --------
    >>> [(s.warm, s.start, s.stop) for s in plan_segments([0, 16, 32, 40], memory=3,
    ...                                                   min_length=1)]
    [(0, 0, 16), (6, 16, 32), (22, 32, 40)]
    >>> [(s.warm, s.start, s.stop) for s in plan_segments(range(0, 100, 10), memory=3)]
    [(0, 0, 30), (20, 30, 60), (50, 60, 90)]
    """
    bounds = [int(b) for b in bounds]
    if any(b >= c for b, c in zip(bounds, bounds[1:], strict=False)):
        raise OptionError(f"plan_segments: bounds must increase, got {bounds}")
    warmup = segment_warmup(memory) if warmup is None else int(warmup)
    if warmup < 0:
        raise OptionError(f"plan_segments: warmup must be >= 0 frames, got {warmup}")
    min_length = 3 * warmup if min_length is None else int(min_length)
    cuts = bounds[:1]
    for b in bounds[1:]:
        if b - cuts[-1] >= min_length or b == bounds[-1]:
            cuts.append(b)
    return [Segment(max(bounds[0], a - warmup), a, b)
            for a, b in zip(cuts, cuts[1:], strict=False)]


def link_arrays(frame: np.ndarray, x: np.ndarray, y: np.ndarray, *, search_range: float = 3.0,
                memory: int = 3, predict: bool = True, adaptive_stop: float | None = None,
                adaptive_step: float = 0.95) -> np.ndarray:
    """Trajectory labels of peaks given as arrays sorted by frame (what :func:`link` does to
    a table, without the table): the unit of work of a segment.

    Examples
    --------
    >>> import numpy as np
    >>> link_arrays(np.array([0, 0, 1, 1]), np.array([10.0, 50, 50.3, 10.4]),
    ...             np.array([20.0, 20, 19.9, 20.1]), search_range=2.0).tolist()
    [0, 1, 1, 0]
    """
    linker = FrameLinker(search_range=search_range, memory=memory, predict=predict,
                         adaptive_stop=adaptive_stop, adaptive_step=adaptive_step)
    linker.add(pd.DataFrame({"frame": np.asarray(frame, np.int64), "x": x, "y": y}))
    return linker.close()


def _predecessors(labels: np.ndarray, first_row: int = 0) -> np.ndarray:
    """For rows in frame order (the first being row ``first_row`` of the whole table): the
    row number of the previous row of the same label, or -1."""
    order = np.lexsort((np.arange(len(labels)), labels))
    pred = np.full(len(labels), -1, dtype=np.int64)
    same = labels[order[1:]] == labels[order[:-1]]
    pred[order[1:][same]] = order[:-1][same] + first_row
    return pred


class SegmentLinking(NamedTuple):
    """What :func:`link_in_segments` did: the labels, and how many seams had to be linked
    again with a longer warm-up."""

    labels: np.ndarray
    seams: int
    relinked: int


def link_in_segments(frame: np.ndarray, x: np.ndarray, y: np.ndarray, segments: list[Segment],
                     *, segment_labels: list | None = None, search_range: float = 3.0,
                     memory: int = 3, predict: bool = True, adaptive_stop: float | None = None,
                     adaptive_step: float = 0.95) -> SegmentLinking:
    """Link peaks segment by segment and join the segments: the same trajectories as linking
    all frames at once (see the notes above :class:`Segment` for why, and the one exception).

    Parameters
    ----------
    frame, x, y : arrays
        The peaks to link, sorted by frame.
    segments : list of Segment
        Contiguous segments covering every frame of ``frame`` (:func:`plan_segments`); the
        first one without warm-up.
    segment_labels : list, optional
        Labels already computed elsewhere (worker processes) for segment ``k``: those of
        :func:`link_arrays` on the rows with ``warm <= frame < stop``. ``None`` entries (or
        arrays of the wrong length) are computed here.
    search_range, memory, predict, adaptive_stop, adaptive_step
        As for :func:`link`; they must be those the segment labels were made with.

    Returns
    -------
    SegmentLinking
        ``labels`` of every row (not yet renumbered: :func:`linked_table` does that),
        ``seams`` joined and ``relinked`` seams that needed a longer warm-up.

    Examples
    --------
    >>> import numpy as np
    >>> frame = np.repeat(np.arange(6), 2)
    >>> x = np.tile([10.0, 40.0], 6) + 0.1 * frame
    >>> y = np.full(12, 5.0)
    >>> out = link_in_segments(frame, x, y, plan_segments([0, 3, 6], memory=0), memory=0)
    >>> out.labels.tolist(), out.relinked
    ([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1], 0)
    """
    frame = np.asarray(frame, dtype=np.int64)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(frame) and (np.diff(frame) < 0).any():
        raise OptionError("link_in_segments: rows must be sorted by frame")
    opts = dict(search_range=search_range, memory=memory, predict=predict,
                adaptive_stop=adaptive_stop, adaptive_step=adaptive_step)
    memory = int(memory)
    segment_labels = list(segment_labels or []) + [None] * len(segments)

    def row(f: int) -> int:
        return int(np.searchsorted(frame, f, side="left"))

    def linked(lo: int, hi: int, given=None) -> np.ndarray:
        if given is not None and len(given) == hi - lo:
            return np.asarray(given, dtype=np.int64)
        return link_arrays(frame[lo:hi], x[lo:hi], y[lo:hi], **opts)

    labels = np.full(len(frame), -1, dtype=np.int64)
    if not segments and not len(frame):
        return SegmentLinking(labels, 0, 0)
    if any(not (g.warm <= g.start < g.stop) for g in segments):
        raise OptionError("link_in_segments: each segment needs warm <= start < stop")
    if not segments or (len(frame) and (frame[0] < segments[0].start
                                        or frame[-1] >= segments[-1].stop)) or any(
            a.stop != b.start for a, b in zip(segments, segments[1:], strict=False)):
        raise OptionError("link_in_segments: the segments must be contiguous and cover every "
                          "frame")
    first = segments[0]
    lo, hi = row(first.start), row(first.stop)
    labels[lo:hi] = linked(lo, hi, segment_labels[0])
    next_id = int(labels[lo:hi].max()) + 1 if hi > lo else 0
    relinked = 0
    for seg, given in zip(segments[1:], segment_labels[1:], strict=False):
        s = seg.start
        start_row, stop_row = row(s), row(seg.stop)
        win_row = row(s - 1 - memory)  # the rows whose links make the state at s
        # The trusted side's predecessors of those rows (they lie at most memory + 1 frames
        # before them).
        base = row(s - 2 - 2 * memory)
        trusted = _predecessors(labels[base:start_row], base)[win_row - base:]
        warm = seg.warm
        while True:
            lo = row(warm)
            try:
                seg_labels = linked(lo, stop_row, given)
            except Exception:
                # A cold start can fail where the one pass does not (trackpy gives up on a
                # dense cluster whose motion it cannot predict yet): a longer warm-up.
                if lo == 0:
                    raise
                seg_labels = None
            if seg_labels is not None and win_row >= lo:
                mine = _predecessors(seg_labels[:start_row - lo], lo)[win_row - lo:]
                if np.array_equal(mine, trusted):
                    break
            if lo == 0:
                break  # linked from the first frame: the state is exact by construction
            relinked += int(warm == seg.warm)
            back = max(2 * (s - warm), segment_warmup(memory))
            warm, given = max(segments[0].start, s - back), None
        # Continue each trajectory alive at s under its trusted id; the rest are new.
        window = seg_labels[win_row - lo:start_row - lo]
        ids = dict(zip(window.tolist(), labels[win_row:start_row].tolist(), strict=True))
        tail = seg_labels[start_row - lo:]
        uniq, inverse = np.unique(tail, return_inverse=True)
        mapped = np.array([ids.get(u, -1) for u in uniq.tolist()], dtype=np.int64)
        new = mapped < 0
        mapped[new] = next_id + np.arange(int(new.sum()))
        next_id += int(new.sum())
        labels[start_row:stop_row] = mapped[inverse]
    return SegmentLinking(labels, len(segments) - 1, relinked)


def filter_tracks(
    tracks: pd.DataFrame, *, min_length: int = 1, min_coverage: float = 0.0
) -> pd.DataFrame:
    """Keep trajectories seen in at least ``min_length`` frames.

    Parameters
    ----------
    tracks : DataFrame
        Output of :func:`link` (``particle``, ``frame``).
    min_length : int
        Minimum number of frames a particle must be seen in.
    min_coverage : float
        Minimum fraction (0..1) of the frames between its first and last one in which the
        particle was seen.

    Returns
    -------
    DataFrame
        The rows of the kept particles (index reset; particle ids unchanged).

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"frame": [0, 1, 2, 0], "particle": [0, 0, 0, 1],
    ...                   "x": [1.0, 1, 1, 9], "y": [1.0, 1, 1, 9]})
    >>> filter_tracks(t, min_length=2)["particle"].unique().tolist()
    [0]
    """
    _check_columns(tracks, ["frame", "particle"], "track table")
    if int(min_length) != min_length or min_length < 1:
        raise OptionError(f"min_length must be a positive integer, got {min_length}")
    if not 0.0 <= min_coverage <= 1.0:
        raise OptionError(f"min_coverage must lie between 0 and 1, got {min_coverage}")
    if len(tracks) == 0:
        return tracks.reset_index(drop=True)
    g = tracks.groupby("particle")["frame"]
    n = g.transform("nunique")
    span = g.transform("max") - g.transform("min") + 1
    keep = (n >= min_length) & (n / span >= min_coverage)
    if keep.all():
        return tracks.reset_index(drop=True)  # copy-on-write: no copy of a table kept whole
    return tracks[keep.to_numpy()].reset_index(drop=True)


def _robust_sigma(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _rolling_median(values: np.ndarray, groups: np.ndarray, window: int,
                    forward: bool) -> np.ndarray:
    """Median of the ``window`` values before (or from, when ``forward``) each row, per group.

    Rows keep their table order within a group; NaN values are left out (all NaN: NaN), as
    in pandas' ``groupby().rolling(window, min_periods=1).median()``, which this replaces:
    it cost a third of the whole linking step.
    """
    v = np.asarray(values, dtype=float)
    g = np.asarray(groups)
    if forward:
        v, g = v[::-1], g[::-1]
    order = np.argsort(g, kind="stable")
    vs, gs = v[order], g[order]
    n = len(vs)
    lagged = np.full((n, window), np.nan)
    for k in range(min(window, n)):
        same = gs[k:] == gs[: n - k]  # sorted by group: equal ends mean one group between
        lagged[k:, k] = np.where(same, vs[: n - k], np.nan)
    # The median of each row's finite values, by sorting (NaN sorts last) and picking the
    # middle of the first `count`: what np.nanmedian gives, several times faster on these
    # short rows (it goes through masked arrays there).
    lagged.sort(axis=1)
    count = np.count_nonzero(~np.isnan(lagged), axis=1)
    rows = np.arange(n)
    lo = lagged[rows, np.maximum(count - 1, 0) // 2]
    hi = lagged[rows, count // 2 - (count == 0)]
    med = np.where(count > 0, (lo + hi) / 2, np.nan)
    out = np.empty(n)
    out[order] = med
    return out[::-1] if forward else out


def split_on_shape_change(
    tracks: pd.DataFrame,
    *,
    intensity_ratio: float = 2.0,
    width_ratio: float = 1.5,
    nsigma: float = 6.0,
    window: int = 3,
    min_common: int = 3,
) -> pd.DataFrame:
    """Split trajectories where the peak shape changes abruptly.

    When a reflection fades out and another one appears at nearly the same place, the linker
    may join them into one trajectory.  The tell-tale is a step in the peak's shape: the
    integrated intensity or the width jumps and stays there.  A split is made between two
    consecutive points of a trajectory when, for ``log(intensity)`` or ``log(sigma_x *
    sigma_y) / 2``, both the single-step change and the change of the medians of the
    ``window`` points before and after exceed the threshold
    ``max(log(ratio), nsigma * robust sigma)``, the robust sigma (1.4826 MAD) being taken
    over all single steps of the table.  Requiring the median step too ignores one-frame
    outliers.

    A change shared by the peaks of a frame is not a change of one particle (an attenuator
    or exposure time changed, the beam current dropped, the detector refocused), so each
    signal is taken relative to the frame-wide change first: between two consecutive frames
    of the table, the median step of all trajectories present in both (when there are at
    least ``min_common`` of them; with fewer, nothing is removed) is subtracted from every
    point after it.  All peaks x3 from one frame on thus splits nothing, while one peak x3
    among unchanged ones is split.  A change shared by most of the trajectories of a frame
    counts as frame-wide.

    Parameters
    ----------
    tracks : DataFrame
        Output of :func:`link`; uses ``intensity`` and/or ``sigma_x``, ``sigma_y`` when present.
    intensity_ratio : float
        Smallest intensity ratio (> 1) that can count as a jump.
    width_ratio : float
        Smallest ratio of the mean width (> 1) that can count as a jump.
    nsigma : float
        Threshold in robust standard deviations of the frame-to-frame changes.
    window : int
        Number of points on each side used for the median step.
    min_common : int
        Fewest trajectories seen in both of two consecutive frames for their median step to
        be taken as the frame-wide change (>= 2; the median of fewer than 3 is pulled by the
        peak that did change).

    Returns
    -------
    DataFrame
        A copy with ``particle`` renumbered 0..n-1 (order of first appearance); a split
        trajectory continues under a new id.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"frame": range(8), "particle": 0, "x": 5.0, "y": 5.0,
    ...                   "intensity": [100.0, 101, 99, 100, 400, 402, 398, 401]})
    >>> split_on_shape_change(t)["particle"].tolist()
    [0, 0, 0, 0, 1, 1, 1, 1]
    """
    _check_columns(tracks, ["frame", "particle", "x", "y"], "track table")
    intensity_ratio = checked_number(intensity_ratio, "intensity_ratio", low=1, low_open=True)
    width_ratio = checked_number(width_ratio, "width_ratio", low=1, low_open=True)
    nsigma = checked_number(nsigma, "nsigma", low=0, low_open=True)
    window = checked_number(window, "window", integer=True, low=1)
    min_common = checked_number(min_common, "min_common", integer=True, low=2)
    if len(tracks) == 0:
        return tracks.sort_values(["particle", "frame"]).reset_index(drop=True)
    # The computation runs on arrays in trajectory order; the whole table is reordered once,
    # at the end (a long run's track table is most of the driver's memory by then).
    order = np.lexsort((_numeric_column(tracks, "frame", "track table"),
                        tracks["particle"].to_numpy()))  # stable: particle, then frame
    signals: list[tuple[np.ndarray, float]] = []
    if "intensity" in tracks.columns:
        inten = _numeric_column(tracks, "intensity", "track table")[order]
        with np.errstate(divide="ignore", invalid="ignore"):
            signals.append((np.where(inten > 0, np.log(inten), np.nan), np.log(intensity_ratio)))
    if "sigma_x" in tracks.columns and "sigma_y" in tracks.columns:
        w = (_numeric_column(tracks, "sigma_x", "track table")
             * _numeric_column(tracks, "sigma_y", "track table"))[order]
        with np.errstate(divide="ignore", invalid="ignore"):
            signals.append((np.where(w > 0, 0.5 * np.log(w), np.nan), np.log(width_ratio)))

    part = tracks["particle"].to_numpy()[order]
    frame = tracks["frame"].to_numpy()[order]
    n = len(order)
    same = np.r_[False, part[1:] == part[:-1]]  # row i continues the trajectory of row i-1
    cut = np.zeros(n, dtype=bool)
    for raw, floor in signals:
        values = raw - _frame_wide_change(raw, frame, same, min_common)
        step = np.full(n, np.nan)
        step[1:] = values[1:] - values[:-1]
        step[~same] = np.nan
        threshold = max(floor, nsigma * _robust_sigma(step))
        before = _rolling_median(values, part, int(window), forward=False)
        after = _rolling_median(values, part, int(window), forward=True)
        median_step = np.full(n, np.nan)
        median_step[1:] = after[1:] - before[:-1]
        with np.errstate(invalid="ignore"):
            cut |= same & (np.abs(step) > threshold) & (np.abs(median_step) > threshold)
    # every cut starts a new segment; segments are numbered across the whole table
    segment = np.cumsum(~same | cut) - 1
    particle = _relabel(segment, frame, tracks["y"].to_numpy(float)[order],
                        tracks["x"].to_numpy(float)[order])
    final = np.lexsort((particle, frame))  # stable: frame, then particle
    out = _reordered(tracks, order[final])
    out["particle"] = particle[final]
    return out


def _frame_wide_change(values: np.ndarray, frame: np.ndarray, same: np.ndarray,
                       min_common: int) -> np.ndarray:
    """Per row, the change of ``values`` common to all trajectories since the first frame.

    Rows are sorted by trajectory then frame (``same[i]``: row i continues row i-1).  Between
    two consecutive frames of the table, the common change is the median step of the
    trajectories present in both (0 with fewer than ``min_common`` of them); summed over the
    frames, it is a per-frame offset.  Trajectories that skip frames need no pairing of
    their own: the offsets of the frames they skip are summed in.
    """
    frames = np.unique(frame)
    index = np.searchsorted(frames, frame)
    step = values[1:] - values[:-1]
    paired = same[1:] & (index[1:] == index[:-1] + 1) & np.isfinite(step)
    offset = np.zeros(len(frames))
    if paired.any():
        steps = pd.Series(step[paired]).groupby(index[1:][paired])
        median, count = steps.median(), steps.size()
        common = median[count >= min_common]
        offset[common.index.to_numpy()] = common.to_numpy()
    return np.cumsum(offset)[index]


def _smooth_fit_rms(
    particle: np.ndarray, frame: np.ndarray, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """Per particle, rms distance (px) of the positions from a quadratic fit in frame.

    Vectorized: normal equations from per-particle sums (np.bincount), frames centred and
    scaled per particle to keep them well conditioned.  Particles with 3 points or fewer are
    fitted exactly and get 0.
    """
    uniq, inv = np.unique(particle, return_inverse=True)
    n_part = len(uniq)
    count = np.bincount(inv, minlength=n_part).astype(float)
    f = frame.astype(float)
    fmin = np.full(n_part, np.inf)
    fmax = np.full(n_part, -np.inf)
    np.minimum.at(fmin, inv, f)
    np.maximum.at(fmax, inv, f)
    half = np.maximum((fmax - fmin) / 2.0, 0.5)
    t = (f - (fmin + fmax)[inv] / 2.0) / half[inv]
    powers = np.stack([np.ones_like(t), t, t * t], axis=1)  # (n, 3)
    normal = np.zeros((n_part, 3, 3))
    for i in range(3):
        for j in range(3):
            normal[:, i, j] = np.bincount(inv, powers[:, i] * powers[:, j], minlength=n_part)
    fitted = count > 3
    normal[~fitted] = np.eye(3)
    rss = np.zeros(n_part)
    for values in (x, y):
        rhs = np.stack(
            [np.bincount(inv, powers[:, i] * values, minlength=n_part) for i in range(3)], axis=1
        )
        rhs[~fitted] = 0.0
        coef = np.linalg.solve(normal, rhs[..., None])[..., 0]
        resid = values - np.einsum("ij,ij->i", powers, coef[inv])
        rss += np.bincount(inv, resid * resid, minlength=n_part)
    rms = np.sqrt(np.where(fitted, rss / np.maximum(count, 1), 0.0))
    return rms


def particles(tracks: pd.DataFrame) -> pd.DataFrame:
    """One row per trajectory: extent, coverage, mean position and intensity, fit quality.

    Parameters
    ----------
    tracks : DataFrame
        Output of :func:`link` (``particle``, ``frame``, ``x``, ``y``; ``intensity``,
        ``strain`` or ``radial_shift`` and ``d_spacing``/``two_theta`` are summarised when
        present).

    Returns
    -------
    DataFrame
        Columns ``particle, n_frames, first_frame, last_frame, coverage`` (n_frames over
        last - first + 1), ``x_mean, y_mean`` (px), ``mean_intensity`` (counts, 0 when the
        table has no intensity), ``fit_rms`` (rms distance in px of the positions from a
        quadratic fit in frame: 0 for 3 frames or fewer), and when present
        ``strain_min, strain_max, strain_range``, ``radial_shift_min, radial_shift_max``,
        ``two_theta_mean``, ``d_spacing_mean``.  Sorted by particle.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"frame": [0, 1, 3], "particle": 0, "x": [1.0, 1.1, 1.3],
    ...                   "y": [2.0, 2.0, 2.0], "intensity": [10.0, 12.0, 14.0]})
    >>> row = particles(t).iloc[0]
    >>> int(row.n_frames), float(row.coverage), float(row.mean_intensity)
    (3, 0.75, 12.0)
    """
    _check_columns(tracks, ["frame", "particle", "x", "y"], "track table")
    columns = [
        "particle", "n_frames", "first_frame", "last_frame", "coverage",
        "x_mean", "y_mean", "mean_intensity", "fit_rms",
    ]
    if len(tracks) == 0:
        empty = pd.DataFrame({c: pd.Series(dtype=float) for c in columns})
        return empty.astype({"particle": np.int64, "n_frames": np.int64,
                             "first_frame": np.int64, "last_frame": np.int64})
    g = tracks.groupby("particle", sort=True)
    summary = pd.DataFrame({
        "n_frames": g["frame"].nunique().astype(np.int64),
        "first_frame": g["frame"].min().astype(np.int64),
        "last_frame": g["frame"].max().astype(np.int64),
    })
    summary["coverage"] = summary["n_frames"] / (
        summary["last_frame"] - summary["first_frame"] + 1
    )
    summary["x_mean"] = g["x"].mean()
    summary["y_mean"] = g["y"].mean()
    if "intensity" in tracks.columns:
        summary["mean_intensity"] = g["intensity"].mean().fillna(0.0)
    else:
        summary["mean_intensity"] = 0.0
    rms = _smooth_fit_rms(
        tracks["particle"].to_numpy(), tracks["frame"].to_numpy(),
        tracks["x"].to_numpy(float), tracks["y"].to_numpy(float),
    )
    summary["fit_rms"] = rms  # np.unique order == sorted groupby order
    for col in ("strain", "radial_shift"):
        if col in tracks.columns:
            summary[f"{col}_min"] = g[col].min().fillna(0.0)
            summary[f"{col}_max"] = g[col].max().fillna(0.0)
            summary[f"{col}_range"] = summary[f"{col}_max"] - summary[f"{col}_min"]
    for col in ("two_theta", "d_spacing"):
        if col in tracks.columns:
            summary[f"{col}_mean"] = g[col].mean().fillna(0.0)
    return summary.reset_index()


def evaluate_tracking(
    tracks: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    match_radius: float = 1.0,
    coverage: float = 0.95,
    separation: float | None = None,
) -> dict[str, float]:
    """Score a linking against ground truth (simulator output).

    Each tracked peak is matched, frame by frame, to the nearest true peak within
    ``match_radius`` (one to one).  A true particle is *recovered* when a single trajectory
    holds at least ``coverage`` of the frames the particle appears in.  An *identity swap* is a
    trajectory whose matched true particle changes between two of its points, counted only when
    both true particles are well separated (their nearest other true peak is never closer than
    ``separation`` px).  Displacement error: for each recovered particle, the tracked
    displacement from its first matched frame minus the true one.

    Parameters
    ----------
    tracks : DataFrame
        ``frame, x, y, particle``.
    truth : DataFrame
        ``frame, x, y, particle`` (true identities).
    match_radius : float
        Largest distance (px) between a tracked and a true peak that counts as a match.
    coverage : float
        Fraction of its frames a true particle must be held by one trajectory to be recovered.
    separation : float or None
        Distance (px) that makes two true particles "well separated"; ``None``: 5 *
        match_radius.

    Returns
    -------
    dict
        ``n_true`` (true particles), ``n_tracks``, ``recovered`` (fraction of true particles
        recovered), ``matched`` (fraction of true peaks matched), ``identity_swaps`` (count),
        ``displacement_rms`` (px, rms length of the displacement error over all points),
        ``drift_rms`` (px, rms over frames of the mean displacement error of that frame).

    Examples
    --------
    >>> import pandas as pd
    >>> truth = pd.DataFrame({"frame": [0, 1], "x": [1.0, 1.5], "y": [1.0, 1.0], "particle": 7})
    >>> tracks = truth.assign(particle=0, x=truth.x + 0.01)
    >>> evaluate_tracking(tracks, truth)["recovered"]
    1.0
    """
    from scipy.spatial import cKDTree

    _check_columns(tracks, ["frame", "x", "y", "particle"], "track table")
    _check_columns(truth, ["frame", "x", "y", "particle"], "truth table")
    if match_radius <= 0 or not 0 < coverage <= 1:
        raise OptionError("match_radius must be positive and coverage in (0, 1]")
    separation = 5.0 * match_radius if separation is None else float(separation)
    n_true = int(truth["particle"].nunique())
    result = {
        "n_true": n_true, "n_tracks": int(tracks["particle"].nunique()), "recovered": 0.0,
        "matched": 0.0, "identity_swaps": 0, "displacement_rms": 0.0, "drift_rms": 0.0,
    }
    if n_true == 0 or len(tracks) == 0:
        return result

    # frames far apart in a 3-D (frame * big, y, x) tree: one query matches every frame at once
    big = 1e6 + 10 * (separation + match_radius)
    tpos = np.column_stack([truth["frame"].to_numpy(float) * big,
                            truth["y"].to_numpy(float), truth["x"].to_numpy(float)])
    kpos = np.column_stack([tracks["frame"].to_numpy(float) * big,
                            tracks["y"].to_numpy(float), tracks["x"].to_numpy(float)])
    tree = cKDTree(tpos)
    dist, idx = tree.query(kpos, distance_upper_bound=match_radius)
    hit = np.isfinite(dist)
    pairs = pd.DataFrame({"track_row": np.nonzero(hit)[0], "truth_row": idx[hit], "d": dist[hit]})
    pairs = pairs.sort_values("d").drop_duplicates("truth_row").drop_duplicates("track_row")
    t_part = truth["particle"].to_numpy()
    k_part = tracks["particle"].to_numpy()
    pairs["true_p"] = t_part[pairs["truth_row"].to_numpy()]
    pairs["track_p"] = k_part[pairs["track_row"].to_numpy()]
    pairs["frame"] = truth["frame"].to_numpy()[pairs["truth_row"].to_numpy()]
    result["matched"] = len(pairs) / len(truth)

    # recovered: the best trajectory of each true particle holds >= coverage of its frames
    frames_true = truth.groupby("particle")["frame"].nunique()
    held = pairs.groupby(["true_p", "track_p"])["frame"].nunique().rename("n").reset_index()
    best = held.sort_values("n", ascending=False).drop_duplicates("true_p").set_index("true_p")
    frac = best["n"] / frames_true.reindex(best.index)
    result["recovered"] = float((frac >= coverage).sum() / n_true)

    # well-separated true particles: nearest other true peak of the same frame never too close
    nn, _ = tree.query(tpos, k=2)
    nearest = pd.Series(nn[:, 1], index=truth.index).groupby(truth["particle"].to_numpy()).min()
    separated = nearest.index[nearest.to_numpy() > separation].to_numpy()
    seq = pairs.sort_values(["track_p", "frame"])
    tp_ = seq["true_p"].to_numpy()
    kp_ = seq["track_p"].to_numpy()
    change = (kp_[1:] == kp_[:-1]) & (tp_[1:] != tp_[:-1])
    is_sep = np.isin(tp_, separated)
    both = is_sep[1:] & is_sep[:-1]
    result["identity_swaps"] = int(np.count_nonzero(change & both))

    # displacement error along each recovered particle's best trajectory
    good = best[frac >= coverage].reset_index()[["true_p", "track_p"]]
    on = seq.merge(good, on=["true_p", "track_p"])
    if len(on):
        on = on.sort_values(["true_p", "frame"])
        tr = truth.iloc[on["truth_row"].to_numpy()]
        tk = tracks.iloc[on["track_row"].to_numpy()]
        ex = tk["x"].to_numpy(float) - tr["x"].to_numpy(float)
        ey = tk["y"].to_numpy(float) - tr["y"].to_numpy(float)
        err = pd.DataFrame({"p": on["true_p"].to_numpy(), "frame": on["frame"].to_numpy(),
                            "ex": ex, "ey": ey})
        first = err.groupby("p")[["ex", "ey"]].transform("first")
        err["dx"] = err["ex"] - first["ex"]
        err["dy"] = err["ey"] - first["ey"]
        not_ref = err.groupby("p").cumcount() > 0
        e = err[not_ref.to_numpy()]
        if len(e):
            result["displacement_rms"] = float(np.sqrt(np.mean(e["dx"] ** 2 + e["dy"] ** 2)))
            per_frame = e.groupby("frame")[["dx", "dy"]].mean()
            result["drift_rms"] = float(
                np.sqrt(np.mean(per_frame["dx"] ** 2 + per_frame["dy"] ** 2))
            )
    return result
