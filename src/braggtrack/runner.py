"""``braggtrack.run``: frames to answers in one resumable, chunked, parallel run.

The run folder layout is documented in ``docs/architecture.md``.  Frames are processed in
chunks; each finished chunk is written to ``chunks/`` through a temporary file and an atomic
rename, and then recorded in ``run.json`` (itself rewritten atomically).  A run that dies,
however it dies, therefore loses at most the chunks in flight: rerunning the same command
(or ``--resume``) skips every recorded chunk and ends with tables identical to an
uninterrupted run.

Work is spread over processes with Dask: ``workers > 1`` starts a ``LocalCluster`` and
``scheduler=ADDRESS`` connects a ``Client`` to an existing cluster.  Both go through the same
code path: each task names a file and a frame range, and the worker reads the frames itself,
so frames are never shipped through the scheduler.  Chunk files are gathered in frame order,
so the output does not depend on the number of workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .config import FindConfig
from .errors import BraggTrackError, InputFileError, OptionError
from .pipeline import (
    Calibration,
    _is_number,
    detect_chunk,
    empty_peak_table,
    load_localizer_model,
    localize_chunk,
    log_skipped,
    warn_about_first_frame,
)
from .tables import read_table, write_table

RUN_JSON = "run.json"
CHUNK_DIR = "chunks"


@dataclass(frozen=True)
class TrackConfig:
    """Options of linking, geometry and the report.

    Parameters
    ----------
    search_range : float
        Largest displacement of a peak between linked frames, pixels.
    memory : int
        Frames a peak may vanish for and still be linked to its trajectory.
    min_length : int
        Shortest trajectory kept, frames.
    split_on_shape_change : bool
        Split a trajectory where the peak's intensity or width jumps (another particle).
    poni : str, optional
        pyFAI PONI file with the detector geometry.
    distance_mm, beam_x, beam_y, pixel_um, wavelength_A :
        Simple geometry (no tilt) when no PONI file is given; ``beam_x``/``beam_y`` in pixels
        are also the centre of the radial shift reported without a full geometry.
    reference_frame : int, optional
        Frame whose d-spacing (or radius) is the strain reference; default each particle's first.
    d_ref : float, optional
        Reference d-spacing in angstrom instead of a reference frame.
    hkl, crystal_system, c_over_a :
        Reflection and crystal system for lattice parameters.
    frame_meta : str, optional
        CSV/Parquet table of per-frame quantities (voltage, capacity, ...) joined on ``frame``,
        or a NeXus/HDF5 file with per-frame datasets (e.g. time stamps).
    cycler_log : str, optional
        Cycler export (CSV/Parquet: ``time_s``, ``voltage_V``, ``current_mA``[, ``capacity_mAh``])
        on its own time base; interpolated onto the frame times (``time_s`` of ``frame_meta``),
        capacity integrated from current when absent, charge/discharge branches from the current.
    report : bool
        Write ``report/index.html``.
    formats : tuple of str
        Extra table formats (``csv``, ``h5``) written beside the Parquet tables.
    """

    search_range: float = 5.0
    memory: int = 3
    min_length: int = 1
    split_on_shape_change: bool = True
    poni: str | None = None
    distance_mm: float | None = None
    beam_x: float | None = None
    beam_y: float | None = None
    pixel_um: float | None = None
    wavelength_A: float | None = None
    reference_frame: int | None = None
    d_ref: float | None = None
    hkl: tuple[int, int, int] | None = None
    crystal_system: str = "cubic"
    c_over_a: float | None = None
    frame_meta: str | None = None
    cycler_log: str | None = None
    report: bool = True
    formats: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (self.search_range > 0):
            raise OptionError(f"--search-range must be > 0 pixels, got {self.search_range}")
        if self.memory < 0:
            raise OptionError(f"--memory must be >= 0 frames, got {self.memory}")
        if self.min_length < 1:
            raise OptionError(f"--min-length must be >= 1 frames, got {self.min_length}")
        bad = [f for f in self.formats if f not in ("csv", "h5", "parquet")]
        if bad:
            raise OptionError(f"--format must be csv, h5 or parquet, got {', '.join(bad)}")
        if self.cycler_log is not None and self.frame_meta is None:
            raise OptionError("--cycler-log needs --frame-meta with the frames' time stamps "
                              "(a time_s column)")
        if not np.isfinite(self.search_range):
            raise OptionError(f"--search-range must be finite, got {self.search_range}")
        # Physical quantities: a zero, negative or non-finite value would only surface as
        # NaN columns (or a pyFAI error) after every frame had been processed.
        for name, option in (("distance_mm", "--distance"), ("pixel_um", "--pixel"),
                             ("wavelength_A", "--wavelength"), ("d_ref", "--d-ref"),
                             ("c_over_a", "--c-over-a")):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and np.isfinite(value)
                                          and value > 0):
                raise OptionError(f"{option} must be a finite number > 0, got {value}")
        for name, option in (("beam_x", "--beam-x"), ("beam_y", "--beam-y")):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and np.isfinite(value)):
                raise OptionError(f"{option} must be a finite number of pixels, got {value}")
        if self.reference_frame is not None and not (
                _is_integer(self.reference_frame) and self.reference_frame >= 0):
            raise OptionError(f"--reference-frame must be a frame number >= 0, got "
                              f"{self.reference_frame}")
        if self.hkl is not None:
            hkl = tuple(self.hkl)
            if len(hkl) != 3 or not all(_is_integer(v) for v in hkl):
                raise OptionError(f"--hkl must be three integers h k l, got {self.hkl}")
            if not any(hkl):
                raise OptionError("--hkl 0 0 0 is not a reflection")
        from .geometry import _SYSTEMS

        if self.crystal_system not in _SYSTEMS:
            raise OptionError(f"--system must be one of {', '.join(_SYSTEMS)}, got "
                              f"{self.crystal_system!r}")
        if self.c_over_a is not None and self.crystal_system == "cubic":
            # Silently ignored it would look like a c/a that had been used.
            raise OptionError("--c-over-a applies to --system tetragonal or hexagonal, "
                              "not cubic")
        if self.poni is not None:
            mixed = [o for n, o in (("distance_mm", "--distance"), ("beam_x", "--beam-x"),
                                    ("beam_y", "--beam-y"), ("pixel_um", "--pixel"))
                     if getattr(self, n) is not None]
            if mixed:
                # The PONI file holds these; taking one of the two silently would be a guess.
                raise OptionError(f"--poni holds the geometry; {', '.join(mixed)} cannot be "
                                  "given with it")
        elif self.distance_mm is None:
            unused = [o for n, o in (("pixel_um", "--pixel"), ("wavelength_A", "--wavelength"),
                                     ("d_ref", "--d-ref"), ("hkl", "--hkl"),
                                     ("c_over_a", "--c-over-a"))
                      if getattr(self, n) is not None]
            if unused:
                verb = "needs" if len(unused) == 1 else "need"
                raise OptionError(f"{', '.join(unused)} {verb} a detector geometry: --poni, "
                                  "or --distance with --beam-x, --beam-y and --pixel")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["hkl"] is not None:
            d["hkl"] = list(d["hkl"])
        d["formats"] = list(d["formats"])
        return d


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class ChunkTask:
    """One unit of work: a frame range of a file, processed by whichever worker gets it."""

    source: str
    dataset: str | None
    start: int
    stop: int
    config: FindConfig
    dark: tuple[str, ...] | None
    flat: str | None
    mask: str | None
    out_file: str
    strict: bool = False
    threads: int = 1  # detection threads inside the worker that takes it
    mask_invert: bool = False  # the mask file marks good pixels


@dataclass(frozen=True)
class LinkTask:
    """Link one segment of a run's frames (``warm .. stop-1``, see
    :class:`braggtrack.track.Segment`) on a worker, from the chunk files that hold them."""

    index: int
    files: tuple[str, ...]
    warm: int
    stop: int
    search_range: float
    memory: int


def link_segment(task: LinkTask, *_chunks: object) -> dict:
    """Trajectory labels of the accepted peaks of one segment (worker side).

    ``_chunks``: the results of the chunk tasks it waits for, passed by Dask only to order the
    work; the peaks are read from the chunk files, which stay on the shared disk.
    """
    from .track import link_arrays, linkable

    try:
        parts = [linkable(pd.read_parquet(f, columns=["frame", "x", "y", "ok"]), what=f)
                 for f in task.files]
        rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
            {"frame": [], "x": [], "y": []})
        frame = rows["frame"].to_numpy(np.int64)
        keep = (frame >= task.warm) & (frame < task.stop)
        labels = link_arrays(frame[keep], rows["x"].to_numpy(float)[keep],
                             rows["y"].to_numpy(float)[keep], search_range=task.search_range,
                             memory=task.memory)
    except Exception as exc:  # noqa: BLE001 - the driver links this segment itself instead
        return {"segment": task.index, "labels": None, "error": f"{type(exc).__name__}: {exc}"}
    return {"segment": task.index, "labels": labels}


#: Cores one process keeps busy (detection threads, BraggNN, linking); more cores are better
#: used by more worker processes (two processes on 2 cores were slower than one).
CORES_PER_PROCESS = 4


def default_workers(cores: int | None = None) -> int:
    """Worker processes for ``--workers`` left at its default (all cores): one process with
    threads up to :data:`CORES_PER_PROCESS` cores, then one process per that many cores.

    Examples
    --------
    >>> default_workers(2), default_workers(4), default_workers(16)
    (1, 1, 4)
    """
    cores = cores or os.cpu_count() or 1
    return 1 if cores <= CORES_PER_PROCESS else cores // CORES_PER_PROCESS


def _threads_per_worker(workers: int, scheduler: str | None) -> int:
    if scheduler is not None:  # a remote cluster: its workers' cores are unknown here
        return 1
    return max(1, min(CORES_PER_PROCESS, (os.cpu_count() or 1) // max(workers, 1)))


@dataclass
class RunResult:
    """What :func:`run` produced: the tables and where they are on disk."""

    run_dir: Path
    tracks: pd.DataFrame
    particles: pd.DataFrame
    frames: pd.DataFrame
    paths: dict[str, Path] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    _peaks: pd.DataFrame | None = field(default=None, repr=False)
    _peaks_stat: tuple[int, int, str] | None = field(default=None, repr=False)

    @property
    def peaks(self) -> pd.DataFrame:
        """Every detected peak, rejected ones included: read from ``peaks.parquet`` when first
        asked for, because a long run does not keep it in memory while its tracks are made.
        A file rewritten since (another run into the same folder) is refused, not read."""
        if self._peaks is None:
            from .io import file_checksum

            path = Path(self.paths["peaks"])
            try:
                st = path.stat()
            except OSError:
                raise InputFileError(path, "no longer there (the run folder was removed or "
                                     "overwritten since this result was made)") from None
            if self._peaks_stat is not None and (
                    (st.st_size, st.st_mtime_ns) != self._peaks_stat[:2]
                    and file_checksum(path, algorithm="xxh3_128") != self._peaks_stat[2]):
                # (Rewritten with the same bytes, as a rerun that changes only the linking
                # does, is fine.)
                raise InputFileError(path, "rewritten since this result was made (another run "
                                     "into the same folder)")
            self._peaks = read_table(path)
        return self._peaks

    @property
    def frames_skipped(self) -> int:
        return int((self.frames["status"] != "ok").sum()) if len(self.frames) else 0

    def __repr__(self) -> str:
        counts = self.info.get("counts", {})
        return (
            f"RunResult({self.run_dir}: {len(self.frames)} frames, {counts.get('peaks')} peaks, "
            f"{counts.get('peaks_ok')} accepted, {len(self.particles)} particles)"
        )


# ----------------------------------------------------------------------------- workers


@lru_cache(maxsize=4)
def _calibration(dark: tuple[str, ...] | None, flat: str | None, mask: str | None,
                 mask_invert: bool = False) -> Calibration:
    return Calibration.from_files(
        dark=None if dark is None else list(dark),
        flat=flat, mask=mask, mask_invert=mask_invert,
    )


@lru_cache(maxsize=2)
def _model(config: FindConfig):
    return load_localizer_model(config)


def _limit_threads() -> None:
    # One worker process per core: nested BLAS/torch/numba threads would oversubscribe.
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:  # noqa: BLE001 - torch is optional at this point
        pass


def process_chunk(task: ChunkTask) -> dict:
    """Process one chunk and write its peak table atomically; return the frame status rows.

    This runs inside worker processes: it opens the file itself, so only the task (a few
    hundred bytes) travels through the scheduler.
    """
    return _localize_task(task, _detect_task(task, task.threads))


def _detect_task(task: ChunkTask, threads: int = 1):
    from .io import open_frames

    calib = _calibration(task.dark, task.flat, task.mask, task.mask_invert)
    # Closed at once: HDF5 shares one open file per process, and a handle left open would
    # hide frames appended later (live mode).
    with open_frames(task.source, dataset=task.dataset) as series:
        return detect_chunk(series, range(task.start, task.stop), task.config, calib,
                            strict=task.strict, threads=threads)


def _localize_task(task: ChunkTask, detected) -> dict:
    res = localize_chunk(detected, task.config, model=_model(task.config))
    write_table(res.peaks, task.out_file)
    write_table(res.frames, _frames_file(task.out_file))
    return {
        "start": task.start,
        "stop": task.stop,
        "file": os.path.relpath(task.out_file, Path(task.out_file).parent.parent),
        "peaks": int(len(res.peaks)),
        "frames": res.frames.to_dict(orient="records"),
    }


def _pipelined(tasks: list[ChunkTask], on_done) -> None:
    """Serial run on two threads: chunk k is localized and written while chunk k + 1 is
    read and detected. Results still reach ``on_done`` in order, one chunk at a time, so
    run.json and resuming see exactly what the plain loop would give."""
    from concurrent.futures import ThreadPoolExecutor

    # Detection also spreads its frames over the cores (one process has them all here).
    threads = _threads_per_worker(1, None)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="braggtrack-localize") as pool:
        pending = None
        try:
            for task in tasks:
                detected = _detect_task(task, threads)
                if pending is not None:
                    on_done(pending.result())
                pending = pool.submit(_localize_task, task, detected)
            if pending is not None:
                on_done(pending.result())
                pending = None
        finally:
            if pending is not None:  # an error: let the chunk in flight finish cleanly
                pending.cancel() or pending.exception()


def _read_chunk_table(path: Path) -> pd.DataFrame:
    """A chunk's table, or a one-line error naming the damaged file."""
    from .io import _first_line

    try:
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
        raise InputFileError(path, f"damaged chunk table ({_first_line(exc)}); delete it and "
                             "run again to redo its frames") from None


def _chunk_intact(out: Path, chunk: dict) -> bool:
    """Whether a finished chunk's files are still there and their parquet footers readable
    (a file cut short or overwritten since, e.g. by a full disk: its frames are redone)."""
    import pyarrow.parquet as pq

    files = [out / chunk["file"]]
    if _frames_file(files[0]).exists():
        files.append(_frames_file(files[0]))
    try:
        for f in files:
            pq.read_metadata(f)
    except Exception:  # noqa: BLE001 - missing, truncated, not parquet
        return False
    return True


def _frames_file(chunk_file: str | Path) -> Path:
    p = Path(chunk_file)
    return p.with_name(p.name.replace("peaks-", "frames-"))


# ----------------------------------------------------------------------------- run state


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=_json_default)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj)}")


def _stat_record(files: Sequence[Path]) -> list[dict]:
    """Path, size and modification time (ns) of every input file: what a resumed run, the
    report and the comparison check to notice an input replaced since the run started (a
    stat per file, so it costs nothing beside the frame work)."""
    records = []
    for q in files:
        st = Path(q).stat()
        records.append({"path": str(Path(q).resolve()), "size": st.st_size,
                        "mtime_ns": st.st_mtime_ns})
    return records


def _input_record(files: Sequence[Path]) -> list[dict]:
    """:func:`_stat_record` plus the checksum (xxh3-128: a multi-GB input is read at
    ~7 GB/s, so recording it costs little beside the frame work) of every input file."""
    from .io import file_checksum

    return [{**rec, "xxh3_128": file_checksum(rec["path"], algorithm="xxh3_128")}
            for rec in _stat_record(files)]


def input_changes(records: Sequence[dict] | None,
                  files: Sequence[str | os.PathLike] | None = None) -> tuple[str, str] | None:
    """The first input file that is not what a run recorded, or None.

    Parameters
    ----------
    records : list of dict
        ``run.json``'s ``inputs``: ``path``, ``size`` and, since size and modification time
        are recorded at the start of a run, ``mtime_ns`` (older runs: the size alone is
        compared).
    files : list of path, optional
        The files the input consists of now (a folder may have gained or lost files); by
        default only the recorded files are checked.

    Returns
    -------
    (path, problem) or None
        ``problem`` is ``"changed"`` (size or modification time differ), ``"missing"``,
        or ``"added"`` (a file of ``files`` the run did not read).
    """
    if not records:
        return None
    for rec in records:
        path = Path(rec["path"])
        try:
            st = path.stat()
        except OSError:
            return str(path), "missing"
        if st.st_size != rec.get("size") or (
                rec.get("mtime_ns") is not None and st.st_mtime_ns != rec["mtime_ns"]):
            return str(path), "changed"
    if files is not None:
        known = {rec["path"] for rec in records}
        for q in files:
            if str(Path(q).resolve()) not in known:
                return str(Path(q).resolve()), "added"
    return None


def _refuse_changed_input(records: Sequence[dict] | None, files, when: str) -> None:
    change = input_changes(records, files)
    if change is None:
        return
    path, problem = change
    what = {"changed": "changed", "missing": "is no longer there",
            "added": "was added to the input"}[problem]
    detail = " (size/modification time differ)" if problem == "changed" else ""
    raise OptionError(f"{path} {what} since this run {when}{detail}; use --force to start "
                      "again")


def _background(func):
    """``func`` run at the lowest CPU priority: checksumming a big input should use the
    cores the frame work leaves idle, not slow it down (Linux: a thread has its own nice
    value; elsewhere the priority stays as it is)."""

    def low_priority(*args, **kwargs):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        return func(*args, **kwargs)

    return low_priority


def _model_record(config: FindConfig) -> dict | None:
    if config.localizer != "braggnn":
        return None
    from .io import file_checksum

    if config.model is None:
        from .braggnn import DEFAULT_MODEL

        path = DEFAULT_MODEL
    else:
        path = Path(config.model)
    return {"path": str(path), "sha256": file_checksum(path)}


#: Fingerprint entries that only the end of a run (linking, geometry, metadata, report)
#: reads: a run resumed or rerun with other values keeps its chunks and redoes that end.
_FINISH_ONLY = ("track",)


def _calibration_record(files: dict) -> dict:
    """Each calibration file (dark, flat, mask) by resolved path, size, modification time and
    checksum: a dark replaced before a run is resumed would change only the chunks still to
    come, and a relative path given from another folder may name another file.  (They are
    single frames: hashing them costs milliseconds.)"""
    def record(name: str) -> dict:
        # a pattern is recorded as given; a file as an input is (_input_record)
        return _input_record([Path(name)])[0] if Path(name).is_file() else {"path": name}

    return {kind: given if given is None or isinstance(given, bool)
            else [record(g) for g in given] if isinstance(given, list) else record(given)
            for kind, given in files.items()}


def _fingerprint(
    source: str, dataset: str | None, config: FindConfig, calibration: dict, chunk_size: int,
    track: TrackConfig,
) -> dict:
    """The parameters of a run. All but ``track`` decide the chunk files, and a resumed run
    must match them exactly; ``track`` is recorded but only decides the final tables."""
    return {
        "input": source,
        "dataset": dataset,
        "chunk_size": chunk_size,
        "find": config.to_dict(),
        "calibration": calibration,
        "track": track.to_dict(),
    }


def _fingerprint_differences(previous: dict, current: dict) -> list[str]:
    """Names of the chunk-deciding parameters that differ (``find.patch``, ``input``, ...)."""
    diff = []
    for key in sorted(set(previous) | set(current)):
        if key in _FINISH_ONLY or previous.get(key) == current.get(key):
            continue
        a, b = previous.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diff += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            diff.append(key)
    return diff


def _prepare_run_dir(
    out: Path, source: str, fingerprint: dict, *, force: bool, resume: bool | None
) -> dict | None:
    """Check the output folder; return the previous run.json to resume from, or None."""
    src = Path(source).resolve()
    out_r = out.resolve()
    # --force deletes the folder: it must never hold (or be) the input.
    if out_r == src or src.is_relative_to(out_r):
        raise OptionError(f"{out}: the output folder may not be the input or contain it")
    if out.exists() and not out.is_dir():
        raise OptionError(f"{out}: exists and is not a folder")
    run_json = out / RUN_JSON
    if not out.exists() or not any(out.iterdir()):
        return None
    if force:
        shutil.rmtree(out)
        return None
    if not run_json.exists():
        raise OptionError(
            f"{out}: folder exists and is not a braggtrack run; choose another -o or use --force"
        )
    try:
        previous = json.loads(run_json.read_text())
    except (OSError, ValueError):
        raise OptionError(f"{run_json}: unreadable run.json; use --force to start over") from None
    if not isinstance(previous, dict):
        raise OptionError(f"{run_json}: not a braggtrack run.json (not a JSON object); use "
                          "--force to start over")
    old = previous.get("fingerprint") or {}
    if isinstance(old.get("find"), dict) and "background" not in old["find"]:
        # Written before --background existed, when the threshold was always global.
        old = {**old, "find": {**old["find"], "background": "global"}}
    diff = _fingerprint_differences(old, fingerprint)
    if diff:
        shown = ", ".join(diff[:4]) + (", ..." if len(diff) > 4 else "")
        hint = ""
        if "find.background" in diff and "background" not in (previous.get("fingerprint")
                                                              or {}).get("find", {}):
            hint = (" (begun by an earlier version, whose threshold was always global: "
                    "--background global resumes it)")
        raise OptionError(
            f"{out}: holds a run with other input or parameters ({shown}){hint}; use --force "
            "to overwrite it or choose another -o"
        )
    if resume is False:
        raise OptionError(f"{out}: a run is already there; use --resume to continue or --force")
    return previous


# ----------------------------------------------------------------------------- executors


def local_cluster(n_workers: int):
    """A Dask ``LocalCluster`` of ``n_workers`` single-threaded worker processes, tuned for
    frame work.

    Two Dask defaults cost this workload dearly (measured on 2048x2048 frames, one worker:
    48 -> 33 ms a frame without both): ``MALLOC_TRIM_THRESHOLD_=65536``, which Dask puts in
    each worker's environment and which stops glibc from reusing the frame-sized buffers
    (every frame's arrays are fresh pages again), and the 10 ms statistical profiler that
    samples the task thread for a dashboard nobody opens here.
    """
    import dask
    from dask.distributed import LocalCluster

    quiet_dask()
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ,
                          "distributed.worker.profile.enabled": False}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                            dashboard_address=None, host="127.0.0.1", silence_logs=40)


def quiet_dask() -> None:
    """Silence Dask's INFO chatter (nannies starting and closing), which buries the progress."""
    import logging

    import dask

    dask.config.set({"logging.distributed": "error"})
    for name in ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.core",
                 "distributed.worker", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(logging.ERROR)


#: Seconds to wait for a Dask scheduler to answer (Dask's own default is 30 s).
SCHEDULER_TIMEOUT_S = 10.0


def connect(scheduler: str, timeout_s: float | None = None):
    """A Dask ``Client`` of the scheduler at ``scheduler``, or a one-line
    :class:`~braggtrack.errors.OptionError` saying why there is none (a malformed address
    raises ValueError inside Dask, an unreachable one OSError after ``timeout_s``, default
    :data:`SCHEDULER_TIMEOUT_S`)."""
    from dask.distributed import Client

    quiet_dask()
    try:
        return Client(scheduler, timeout=SCHEDULER_TIMEOUT_S if timeout_s is None else timeout_s)
    except (ValueError, TypeError, OSError) as exc:
        reason = " ".join(str(exc).split()) or exc.__class__.__name__
        raise OptionError(f"cannot reach the Dask scheduler at {scheduler}: {reason}") from None


def _in_process(tasks: list[ChunkTask], workers: int, scheduler: str | None, client) -> bool:
    """Whether :func:`_execute` runs ``tasks`` in this process rather than on Dask workers."""
    return client is None and scheduler is None and (workers <= 1 or len(tasks) <= 1)


def _run_jobs_here(jobs: Sequence[tuple[Callable, tuple, Callable]]) -> None:
    """Start each ``(func, args, on_future)`` job on a low-priority thread of this process and
    hand its Future to ``on_future`` at once."""
    from concurrent.futures import ThreadPoolExecutor

    for func, args, on_future in jobs:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="braggtrack-checksum")
        on_future(pool.submit(_background(func), *args))
        pool.shutdown(wait=False)


def _execute(tasks: list[ChunkTask], workers: int, scheduler: str | None, on_done,
             client=None, links: Sequence[LinkTask] = (), on_linked=None,
             jobs: Sequence[tuple[Callable, tuple, Callable]] = ()) -> None:
    """Run ``tasks``, calling ``on_done`` with each result: in this process (pipelined), on
    ``client`` when given, on the scheduler at ``scheduler``, or on a local cluster.
    ``links``: segment-linking tasks for the Dask workers, each run as soon as the chunks
    whose files it reads are written; ``on_linked`` gets their results. ``jobs``:
    ``(func, args, on_future)`` run beside the tasks (on a worker first thing, or on a thread
    here), ``on_future`` given a ``concurrent.futures.Future`` of the result (done, on Dask)."""
    if not tasks or _in_process(tasks, workers, scheduler, client):
        _run_jobs_here(jobs)
        if tasks:
            _pipelined(tasks, on_done)
        return
    from dask.distributed import Client, as_completed

    cluster = None
    own = client is None
    if client is None and scheduler is None:
        cluster = local_cluster(min(workers, len(tasks)))  # quiets Dask itself
        client = Client(cluster)
    elif client is None:
        client = connect(scheduler)
    import logging

    futures, callbacks, level = [], logging.getLogger("tornado.application"), None
    try:
        client.run(_limit_threads)
        futures = client.map(process_chunk, tasks, pure=False)
        by_file = {t.out_file: f for t, f in zip(tasks, futures, strict=True)}
        # Ahead of the chunks still waiting: a segment's link runs while the cluster works on
        # later frames, and its chunks' results leave the workers' memory early.
        link_futures = {client.submit(link_segment, lt, *[by_file[f] for f in lt.files
                                                          if f in by_file],
                                      pure=False, priority=1) for lt in links}
        futures += list(link_futures)
        job_futures = {client.submit(func, *args, pure=False, priority=2): on_future
                       for func, args, on_future in jobs}
        futures += list(job_futures)
        # with_results: fetched in batches by the event loop (a .result() per future costs the
        # driver a round trip each); errors come back as results and are sorted out here.
        for fut, result in as_completed(futures, with_results=True, raise_errors=False):
            failed = fut.status == "error"
            if fut in job_futures:
                from concurrent.futures import Future

                local = Future()
                try:
                    local.set_result(fut.result() if failed else result)
                except Exception as exc:  # noqa: BLE001 - raised where the result is used
                    local.set_exception(exc)
                job_futures[fut](local)
            elif fut in link_futures:
                if not failed:  # else (e.g. its worker died) the driver links it at the end
                    on_linked(result)
            else:
                on_done(fut.result() if failed else result)  # a failed chunk raises here
    except BaseException:
        # Ctrl-C or an error: the chunks in flight are dropped (a resumed run redoes them).
        # Dask's callbacks still waiting for them print tracebacks while the client closes.
        level = callbacks.level
        callbacks.setLevel(logging.CRITICAL)
        with contextlib.suppress(Exception):
            client.cancel(futures)
        raise
    finally:
        try:
            if own:
                client.close()
            if cluster is not None:
                cluster.close()
        finally:
            if level is not None:
                callbacks.setLevel(level)


# ----------------------------------------------------------------------------- run


def run(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    config: FindConfig | None = None,
    track: TrackConfig | None = None,
    dataset: str | None = None,
    dark: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    flat: str | os.PathLike | None = None,
    mask: str | os.PathLike | None = None,
    mask_invert: bool = False,
    chunk_size: int = 16,
    workers: int = 1,
    scheduler: str | None = None,
    force: bool = False,
    resume: bool | None = None,
    strict: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> RunResult:
    """Run the whole pipeline on a frame series and write a run folder.

    read -> preprocess -> detect -> localize (chunks, in parallel) -> link -> geometry or
    radial shift -> per-frame metadata -> report.

    Parameters
    ----------
    source : path
        Frame series: HDF5/NeXus, TIFF, folder or glob, fabio formats, .npy, frame-cache .npz.
    out_dir : path
        Run folder (created).  An existing run with the same input and find parameters is
        resumed (finished chunks are kept; other ``track`` options only redo the linking,
        geometry and report); anything else there is refused unless ``force``, and so is
        an input file whose size or modification time changed since the run started.
    config : FindConfig
        Options of the find stage.
    track : TrackConfig
        Options of linking, geometry, metadata and the report.
    dataset : str, optional
        HDF5 dataset of the frames (found automatically when ``None``).
    dark, flat, mask : path, optional
        Dark frame file(s) (their median), flat-field file, bad-pixel mask file (nonzero =
        bad; ``mask_invert=True``: nonzero = good).
    chunk_size : int
        Frames per chunk (the unit of work, of parallelism and of resumption).
    workers : int
        Worker processes on this machine (``1`` runs in this process).
    scheduler : str, optional
        Address of an existing Dask scheduler (``tcp://host:8786``); one that does not
        answer within :data:`SCHEDULER_TIMEOUT_S` seconds is an OptionError.
    force : bool
        Delete whatever is in ``out_dir`` first.
    resume : bool, optional
        ``None`` (default) resumes a matching incomplete run; ``False`` refuses to.
    strict : bool
        Stop at the first unreadable frame instead of skipping it.

    Returns
    -------
    RunResult
        Tables (peaks, tracks, particles, frames) and the paths written; ``peaks`` is read
        from ``peaks.parquet`` when first asked for (a long run's peak table is not kept in
        memory), and refused if a later run has rewritten that file.

    Examples
    --------
    >>> import braggtrack as bt                                           # doctest: +SKIP
    >>> res = bt.run(bt.data.sample(), "myrun", progress=False)           # doctest: +SKIP
    >>> res.tracks.groupby("particle").size().max()                       # doctest: +SKIP
    """
    # Before the run folder is touched: a wrong address fails at once, in one line.
    client = connect(scheduler) if scheduler is not None else None
    state = None
    try:
        state = _RunState.open(
            source, out_dir, config=config, track=track, dataset=dataset, dark=dark,
            flat=flat, mask=mask, mask_invert=mask_invert, chunk_size=chunk_size,
            workers=workers, scheduler=scheduler,
            force=force, resume=resume, strict=strict, command=command,
        )
        n = len(state.series)
        bar = _run_progress(n, state.frames_done(), progress)
        tasks = state.tasks(0, n)
        # On worker processes, they link too (in segments, joined exactly at the end): one
        # process linking every frame could not keep up with many workers.
        # (With no chunk left to do, as in a rerun for other track options, one pass here.)
        state.start_linking(on_workers=bool(tasks)
                            and not _in_process(tasks, workers, scheduler, client))
        try:
            _execute(tasks, workers, scheduler, lambda r: state.record(r, bar), client=client,
                     links=state.link_tasks(), on_linked=state.record_links,
                     jobs=state.checksum_jobs())
        except BaseException:
            # End the linker's thread; the chunks written so far are kept. Its own error, if
            # any, must not hide the one that stopped the run.
            with contextlib.suppress(Exception):
                state.linker.close()
            raise
        finally:
            bar.close()
        # Replaced while the chunks were computed: the tables would mix two inputs.
        _refuse_changed_input(state.info["inputs"], state.series.files, "started")
        return state.finish()
    finally:
        # An HDF5 file left open in this process could not be rewritten by it afterwards.
        if state is not None:
            state.series.close()
        if client is not None:
            client.close()


def watch(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    config: FindConfig | None = None,
    track: TrackConfig | None = None,
    dataset: str | None = None,
    dark: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    flat: str | os.PathLike | None = None,
    mask: str | os.PathLike | None = None,
    mask_invert: bool = False,
    chunk_size: int = 4,
    workers: int = 1,
    scheduler: str | None = None,
    force: bool = False,
    strict: bool = False,
    poll_s: float = 1.0,
    quiet_s: float = 30.0,
    report_every_s: float = 60.0,
    progress: bool = True,
    command: str | None = None,
) -> RunResult:
    """Follow a growing series (a folder receiving files, or an HDF5 file being appended to).

    Frames are processed in chunks as they arrive; the tables are rewritten after every new
    chunk and the report at most every ``report_every_s`` seconds.  The watch ends after
    ``quiet_s`` seconds without a new frame, or on Ctrl-C, and then processes the last partial
    chunk and writes the final tables and report, so the output is always consistent.

    In a folder series the newest file may still be being written, so it is only read once a
    newer file exists or the series has been quiet for ``quiet_s``.
    """
    from .io import open_frames

    deadline = time.time() + quiet_s
    while True:  # the first frame may not exist yet
        try:
            open_frames(source, dataset=dataset).close()
            break
        except BraggTrackError:
            if time.time() > deadline:
                raise
            time.sleep(poll_s)
    # A wrong scheduler address fails now, not when the first frames have arrived.
    client = connect(scheduler) if scheduler is not None else None
    try:
        state = _RunState.open(
            source, out_dir, config=config, track=track, dataset=dataset, dark=dark,
            flat=flat, mask=mask, mask_invert=mask_invert, chunk_size=chunk_size,
            workers=workers, scheduler=scheduler,
            force=force, resume=None, strict=strict, command=command, live=True,
        )
    except BaseException:
        if client is not None:
            client.close()
        raise
    folder = not Path(source).is_file()
    state.start_linking()
    cluster = None
    try:
        if client is None and workers > 1:
            # One cluster (and client) for the whole watch, not one per batch of new frames.
            from dask.distributed import Client

            cluster = local_cluster(workers)
            client = Client(cluster)
        bar = _run_progress(None, state.frames_done(), progress)
        last_new, last_report, seen = time.time(), 0.0, None
        processed: list[str] = []  # a folder's files of the frames done, in frame order
        try:
            while True:
                try:
                    state.series.close()
                    state.series = open_frames(source, dataset=dataset)
                except BraggTrackError:
                    time.sleep(poll_s)  # being rewritten right now: look again
                    continue
                if folder:
                    _refuse_reordered_files(source, processed, state.series.files)
                n = len(state.series)
                # An HDF5 file allocated for the whole scan up front holds frames not yet
                # written (they would read as zeros): what arrives is frames written.
                written = n if folder else state.series.written_until(state.done_until())
                if (n, written) != seen:
                    seen, last_new = (n, written), time.time()
                quiet = time.time() - last_new > quiet_s
                # A folder's newest file may be half written. Once quiet, every frame is
                # processed: one still unwritten then is skipped, with that reason.
                ready = n if quiet else max(n - 1, 0) if folder else written
                tasks = state.tasks(state.done_until(), ready, partial=quiet)
                if tasks:
                    _execute(tasks, workers, scheduler, lambda r: state.record(r, bar),
                             client=client)
                    processed = [str(f) for f in state.series.files[:state.done_until()]]
                    # What the tables now come from (the input grows by design: not checked).
                    state.info["inputs"] = _stat_record(state.series.files)
                    due = time.time() - last_report > report_every_s
                    state.finish(report=due and state.track.report)
                    last_report = time.time() if due else last_report
                if quiet and not state.tasks(0, n):
                    break
                time.sleep(poll_s)
        except KeyboardInterrupt:
            pass
        finally:
            bar.close()
    except BaseException:
        # The chunks written so far are kept (a rerun resumes); the linker's thread ends.
        with contextlib.suppress(Exception):
            state.linker.close()
        state.series.close()
        raise
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    # The input grew during the watch: checksum what it finally is, not what it was at start.
    try:
        state.info["inputs"] = _input_record(state.series.files)
        state.info["live"] = False
        return state.finish()
    except BaseException:
        with contextlib.suppress(Exception):
            state.linker.close()
        raise
    finally:
        state.series.close()


def _refuse_reordered_files(source, processed: Sequence[str], files: Sequence) -> None:
    """A folder's frame numbers are its files' places in name order: a file that arrives
    after later ones were processed would shift every frame number after it, and the frames
    done would be relabelled with other files' names."""
    now = [str(f) for f in files[:len(processed)]]
    if now == list(processed):
        return
    k = next((i for i, (a, b) in enumerate(zip(now, processed, strict=False)) if a != b),
             len(now))
    late = Path(now[k]).name if k < len(now) else "a file"
    raise OptionError(f"{source}: {late} arrived after later files were processed (frame "
                      f"{k} would change); the frames done so far are kept: rerun with "
                      "--force once the folder is complete")


@dataclass
class _RunState:
    """The run folder while a run is in progress: which chunks are done, and run.json."""

    source: str
    out: Path
    series: object  # FrameSeries; reopened by watch() as the input grows
    info: dict  # the content of run.json
    config: FindConfig
    track: TrackConfig
    dataset: str | None
    dark: tuple[str, ...] | None
    calib_files: dict
    chunk_size: int
    strict: bool
    started: float
    checksums: object = None  # Future of the input checksums, until finish() collects it
    unhashed: list | None = None  # input files whose checksum is still to be started
    expected_checksums: dict = field(default_factory=dict)  # path -> xxh3 an earlier part saw
    meta: pd.DataFrame | None = None  # per-frame metadata, read when the run started
    threads: int = 1  # detection threads per chunk task (worker processes on this machine)
    linker: object = None  # track.FrameLinker fed chunk by chunk
    # (chunk record, peak table, linkable rows, frames table) of each chunk read, in order
    fed: list = field(default_factory=list)
    segments: list | None = None  # track.Segment per chunk, when the workers link
    segment_labels: dict = field(default_factory=dict)  # segment index -> labels

    @classmethod
    def open(cls, source, out_dir, *, config, track, dataset, dark, flat, mask, chunk_size,
             workers, scheduler, force, resume, strict, command, live=False, mask_invert=False):
        """Check everything that can be checked before any frame work, then create or
        resume the run folder. ``live`` (watch): the input grows by design, so it is not
        compared with what a previous run recorded, and it is checksummed at the end."""
        from .io import open_frames

        config = config or FindConfig()
        track = track or TrackConfig()
        from .pipeline import check_chunk_size

        check_chunk_size(chunk_size)
        if workers < 1:
            raise OptionError(f"--workers must be >= 1, got {workers}")
        source = str(source)
        out = Path(out_dir)
        series = open_frames(source, dataset=dataset)
        try:
            return cls._open(series, source, out, config=config, track=track, dataset=dataset,
                             dark=dark, flat=flat, mask=mask, mask_invert=mask_invert,
                             chunk_size=chunk_size,
                             workers=workers, scheduler=scheduler, force=force, resume=resume,
                             strict=strict, command=command, live=live)
        except BaseException:
            series.close()
            raise

    @classmethod
    def _open(cls, series, source, out, *, config, track, dataset, dark, flat, mask,
              chunk_size, workers, scheduler, force, resume, strict, command, live,
              mask_invert=False):
        dark_t = None
        if dark is not None:
            dark_t = (str(dark),) if isinstance(dark, (str, os.PathLike)) else tuple(map(str, dark))
        calib_files = {"dark": list(dark_t) if dark_t else None,
                       "flat": None if flat is None else str(flat),
                       "mask": None if mask is None else str(mask)}
        if mask_invert:
            # Only when used, so that the fingerprints of earlier runs stay valid.
            calib_files["mask_invert"] = True
        # Fail on a bad dark/mask/model, geometry or metadata file now: not inside a worker,
        # not after every frame was processed, and before --force deletes the old run.
        calibration = _calibration(dark_t, calib_files["flat"], calib_files["mask"],
                                   bool(calib_files.get("mask_invert")))
        calibration.check_shape(tuple(series.shape))
        warn_about_first_frame(series, 0, config, calibration.dark)
        model_rec = _model_record(config)
        _model(config)
        meta = check_track(track, None if live else len(series), tuple(series.shape))
        resolved = str(Path(source).resolve()) if Path(source).exists() else source
        fingerprint = _fingerprint(resolved, dataset, config, _calibration_record(calib_files),
                                   chunk_size, track)
        previous = _prepare_run_dir(out, source, fingerprint, force=force, resume=resume)
        inputs = _stat_record(series.files)
        expected = {}
        if previous is not None and not live:
            old = previous.get("inputs") or []
            _refuse_changed_input(old, series.files, "started")
            if old and all(r.get("xxh3_128") and r.get("mtime_ns") is not None for r in old):
                inputs = old  # unchanged since it was checksummed
            else:
                # Recorded before size and mtime were, or killed before the checksum was
                # done: the checksum computed now must be the one recorded, if any.
                expected = {r["path"]: r["xxh3_128"] for r in old if r.get("xxh3_128")}
        (out / CHUNK_DIR).mkdir(parents=True, exist_ok=True)
        info = {
            "braggtrack_version": __version__,
            "command": command or "braggtrack.run(...)",
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "fingerprint": fingerprint,
            "source": resolved,
            "dataset": dataset,
            "parameters": {**config.to_dict(), **track.to_dict(), "dataset": dataset,
                           "chunk_size": chunk_size, "workers": workers,
                           "scheduler": scheduler, "strict": strict, **calib_files},
            # Size and mtime now; the checksums are added when done (checksum_jobs;
            # see finish()).
            "inputs": inputs,
            "model": model_rec,
            "n_frames": len(series),
            # The HDF5 dataset actually read (found automatically when `dataset` is None).
            "dataset_read": getattr(series, "dataset", None),
            "frame_shape": list(series.shape),
            "started": (previous or {}).get("started") or _now(),
            "resumed": previous is not None,
            # A watch in progress: its input grows, so the report takes it as it is now.
            "live": live,
            "finished": None,
            "chunks": [],
            "skipped_frames": [],
            "counts": {},
        }
        done = [c for c in (previous or {}).get("chunks", []) if _chunk_intact(out, c)]
        info["chunks"] = sorted(done, key=lambda c: c["start"])
        _write_json_atomic(out / RUN_JSON, info)
        # Hashing a multi-GB input takes seconds to minutes: it is done beside the frame work
        # (checksum_jobs) instead of before it.
        unhashed = (list(series.files) if not live and not all(r.get("xxh3_128") for r in inputs)
                    else None)
        return cls(source=source, out=out, series=series, info=info, config=config, track=track,
                   dataset=dataset, dark=dark_t, calib_files=calib_files, chunk_size=chunk_size,
                   strict=strict, started=time.time(), unhashed=unhashed,
                   expected_checksums=expected, meta=meta,
                   threads=_threads_per_worker(workers, scheduler))

    def checksum_jobs(self) -> list[tuple[Callable, tuple, Callable]]:
        """The input checksum as a job for :func:`_execute` (once): on a Dask worker when
        the run has them (the driver's CPU is what a cluster runs short of first; the
        workers read the input anyway), else on a low-priority thread here."""
        files, self.unhashed = self.unhashed, None
        if not files:
            return []

        def done(future) -> None:
            self.checksums = future

        return [(_input_record, (files,), done)]

    def collect_checksums(self) -> None:
        """Put the background checksums into run.json's ``inputs``, refusing an input that
        changed between the start of the run and its hashing, or whose checksum is not the
        one a previous part of this run recorded."""
        records, self.checksums = self.checksums.result(), None
        _refuse_changed_input(self.info["inputs"], None, "started")
        for rec in records:
            want = self.expected_checksums.get(rec["path"])
            if want is not None and want != rec["xxh3_128"]:
                raise OptionError(f"{rec['path']} changed since this run started (checksum "
                                  "differs); use --force to start again")
        # The stat taken at the start, so a change after the hashing is still seen.
        start = {r["path"]: r for r in self.info["inputs"]}
        self.info["inputs"] = [{**rec, **{k: start[rec["path"]][k] for k in ("size", "mtime_ns")
                                          if rec["path"] in start}} for rec in records]

    def frames_done(self) -> int:
        return sum(c["stop"] - c["start"] for c in self.info["chunks"])

    def done_until(self) -> int:
        """First frame not covered by a contiguous run of finished chunks from frame 0."""
        end = 0
        for c in self.info["chunks"]:
            if c["start"] != end:
                break
            end = c["stop"]
        return end

    def chunk_file(self, start: int, stop: int) -> str:
        return str(self.out / CHUNK_DIR / f"peaks-{start:06d}-{stop:06d}.parquet")

    def tasks(self, start: int, stop: int, *, partial: bool = True) -> list[ChunkTask]:
        """Tasks for the unfinished chunks of frames ``start..stop`` (chunk-aligned)."""
        done = {(c["start"], c["stop"]) for c in self.info["chunks"]}
        tasks = []
        cs = self.chunk_size
        for a in range(start - start % cs, stop, cs):
            b = min(a + cs, stop)
            if (a, b) in done or (b - a < cs and not partial):
                continue
            tasks.append(ChunkTask(
                source=self.source, dataset=self.dataset, start=a, stop=b, config=self.config,
                dark=self.dark, flat=self.calib_files["flat"], mask=self.calib_files["mask"],
                mask_invert=bool(self.calib_files.get("mask_invert")),
                out_file=self.chunk_file(a, b),
                strict=self.strict, threads=self.threads,
            ))
        return tasks

    def record(self, result: dict, bar=None) -> None:
        """A chunk is finished: note it in run.json (atomically) so it is never redone."""
        record = {k: result[k] for k in ("start", "stop", "file", "peaks")}
        for row in result.get("frames", []):
            if row.get("status") != "ok":
                log_skipped(self.source, row["frame"], row["reason"])
        self.info["chunks"] = sorted(
            [c for c in self.info["chunks"] if c["start"] != record["start"]] + [record],
            key=lambda c: c["start"],
        )
        _write_json_atomic(self.out / RUN_JSON, self.info)
        self.feed_linker()
        if bar is not None:
            bar.update(record["stop"] - record["start"])
            bar.set_postfix(peaks=sum(int(c["peaks"]) for c in self.info["chunks"]))

    def start_linking(self, *, on_workers: bool = False) -> None:
        """Link each chunk as soon as it and all chunks before it are done, in a background
        thread, instead of every frame at the end. ``on_workers``: the worker processes link
        one segment per chunk instead (:meth:`link_tasks`), and :meth:`finish` joins them."""
        from .track import plan_segments

        if on_workers:
            n, cs = len(self.series), self.chunk_size
            self.segments = plan_segments([*range(0, n, cs), n], self.track.memory) if n else []
        else:
            self.linker = self._new_linker()
        self.feed_linker()

    def _new_linker(self):
        from .track import FrameLinker

        return FrameLinker(search_range=self.track.search_range, memory=self.track.memory)

    def link_tasks(self) -> list[LinkTask]:
        """One task per segment: the chunk files that hold its frames, warm-up included."""
        if not self.segments:
            return []
        cs, n = self.chunk_size, len(self.series)
        return [LinkTask(index=k, warm=seg.warm, stop=seg.stop,
                         files=tuple(self.chunk_file(a, min(a + cs, n))
                                     for a in range(seg.warm - seg.warm % cs, seg.stop, cs)),
                         search_range=self.track.search_range, memory=self.track.memory)
                for k, seg in enumerate(self.segments)]

    def record_links(self, result: dict) -> None:
        if result.get("labels") is not None:  # else finish() links that segment here
            self.segment_labels[int(result["segment"])] = result["labels"]

    def feed_linker(self) -> None:
        """Read the chunks finished in order since the last call (kept for the tables) and
        feed their accepted peaks to the linker, when this process links."""
        if self.linker is None and self.segments is None:
            return
        from .track import linkable

        current = {c["start"]: c for c in self.info["chunks"]}
        stale = any(current.get(c["start"]) != c for c, *_ in self.fed)
        # Rows fed to the linker that the cache does not know of: a Ctrl-C between the two.
        torn = self.linker is not None and self.linker.rows_fed != sum(
            len(r) for _, _, r, _ in self.fed)
        if stale or torn:
            # (Stale: a partial last chunk redone whole, in live mode.) What was linked is no
            # longer what the cache holds: link again from frame 0, the new linker in place
            # before the old one is closed, so that an interrupt here leaves a torn state
            # again, which the next call repairs.
            self.fed = []
            if self.linker is not None:
                old, self.linker = self.linker, self._new_linker()
                with contextlib.suppress(Exception):
                    old.close()
        end = self.fed[-1][0]["stop"] if self.fed else 0
        for c in self.info["chunks"]:
            if c["start"] < end:
                continue
            if c["start"] != end:
                break
            table = _read_chunk_table(self.out / c["file"])
            rows = linkable(table)
            frames_file = _frames_file(self.out / c["file"])
            frames = _read_chunk_table(frames_file) if frames_file.exists() else None
            if self.linker is not None:
                self.linker.add(rows)
            self.fed.append((c, table, rows[["frame", "x", "y"]], frames))
            end = c["stop"]

    def finish(self, *, report: bool | None = None) -> RunResult:
        if self.unhashed:
            _run_jobs_here(self.checksum_jobs())
        if self.checksums is not None and (report is None or self.checksums.done()):
            self.collect_checksums()
        self.info["n_frames"] = len(self.series)
        track = self.track if report is None else dataclasses.replace(self.track, report=report)
        read, linked = None, None
        if self.linker is not None or self.segments is not None:
            self.feed_linker()
            read = {c["file"]: (t, f) for c, t, _, f in self.fed}
            rows = (pd.concat([r for _, _, r, _ in self.fed], ignore_index=True) if self.fed
                    else pd.DataFrame({"frame": [], "x": [], "y": []}))
            if report is None:
                # The end of the run: _finish takes the chunk tables out of `read` as it
                # concatenates them, so that they are not held twice from then on.
                self.fed = []
            fed_x = rows["x"].to_numpy(float)
            if self.linker is not None and report is not None:
                # An update of a live run: the linker goes on with the next frames, so each
                # update links only the new ones and reads only the new chunks.
                linked = (self.linker.labels, fed_x)
            elif self.linker is not None:
                linker, self.linker = self.linker, None
                # Closed inside _finish, once the peak table is being written: the last
                # chunks' linking then overlaps that write instead of preceding it.
                linked = (linker.close, fed_x)
            else:
                linked = (self._join_segments(rows), fed_x)
        meta = self.meta if self.meta is not None and len(self.meta) == len(self.series) else None
        return _finish(self.out, self.info, self.config, track, self.series, self.started,
                       read=read, linked=linked, meta=meta)

    def _join_segments(self, rows: pd.DataFrame) -> Callable[[], np.ndarray]:
        """The call that joins the workers' segment labels (any missing one, e.g. of a run
        stopped and resumed, is linked here) and notes in run.json how it went."""
        from .track import link_in_segments

        segments, given = self.segments, self.segment_labels
        self.segments = None

        def join() -> np.ndarray:
            out = link_in_segments(
                rows["frame"].to_numpy(np.int64), rows["x"].to_numpy(float),
                rows["y"].to_numpy(float), segments,
                segment_labels=[given.get(k) for k in range(len(segments))],
                search_range=self.track.search_range, memory=self.track.memory)
            self.info["linking"] = {"segments": len(segments), "linked_on_workers": len(given),
                                    "seams_relinked": out.relinked}
            return out.labels

        return join


def _run_progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="frame", desc="braggtrack run",
                disable=not enabled, dynamic_ncols=True)


def _chunk_tables(out: Path, info: dict, read: dict | None = None):
    """Each finished chunk's (peak table, frames table or None), in frame order: from ``read``
    (taken out of it, so that it holds no table twice) or from the chunk files."""
    for c in info["chunks"]:
        if read and c["file"] in read:
            yield read.pop(c["file"])
        else:
            f, ff = out / c["file"], _frames_file(out / c["file"])
            yield _read_chunk_table(f), (_read_chunk_table(ff) if ff.exists() else None)


#: Rows of the peak table written (and made linkable) at a time at the end of a run: enough
#: that per-step costs vanish, few enough (~10 MB) not to matter beside the track table.
_PEAK_BATCH_ROWS = 65_536


class _PeakTableWriter:
    """``peaks.parquet`` written a batch of chunks at a time (one row group each), never
    concatenated whole in memory: a long run's peak table would otherwise be held whole,
    twice while it is built, beside the tracks made from it.  A batch whose columns do not
    fit the first one's (a chunk file of another version of braggtrack) makes :meth:`close`
    fall back to concatenating them all."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.writer = None
        self.schema = None
        self.mixed = False
        self.n_peaks = self.n_ok = 0

    def add(self, table: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.n_peaks += len(table)
        self.n_ok += int(table["ok"].sum()) if len(table) else 0
        if self.mixed or not len(table):
            return
        try:
            if self.writer is None:
                arrow = pa.Table.from_pandas(table, preserve_index=False)
                self.schema = arrow.schema
                self.writer = pq.ParquetWriter(self.tmp, self.schema)
            else:
                if list(table.columns) != self.schema.names:
                    raise ValueError("columns differ")
                arrow = pa.Table.from_pandas(table, schema=self.schema, preserve_index=False)
            self.writer.write_table(arrow)
        except (ValueError, TypeError, pa.ArrowException):
            self.mixed = True

    def discard(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        self.tmp.unlink(missing_ok=True)

    def close(self, fallback: Callable[[], pd.DataFrame]) -> Path:
        """Finish the file; ``fallback()``: the whole table, when it has to be written at once
        (no chunk with peaks, or chunks that do not fit one schema)."""
        if self.writer is not None:
            self.writer.close()
        try:
            if self.writer is None or self.mixed:
                return write_table(fallback(), self.path)
            os.replace(self.tmp, self.path)
        finally:
            if self.tmp.exists():
                self.tmp.unlink()
        return self.path


def _finish(out: Path, info: dict, config: FindConfig, track: TrackConfig, series,
            started: float, read: dict | None = None,
            linked: tuple[Callable[[], np.ndarray], np.ndarray] | None = None,
            meta: pd.DataFrame | None = None) -> RunResult:
    """Gather the chunks, link, measure and write. ``read``: (peak table, frames table) of
    chunks already read, by file; ``linked``: ``(labels, x)``, a call that returns the labels
    of the rows linked during the run (a :class:`~braggtrack.track.FrameLinker`'s, or the
    joined segments of the workers) and the x they were fed (see
    :func:`link_and_measure`); ``meta``: the per-frame metadata when already read (by
    :func:`check_track`).

    The peak table goes to ``peaks.parquet`` ~:data:`_PEAK_BATCH_ROWS` rows at a time and
    is never whole in memory (:class:`_PeakTableWriter`); only the linkable rows of each
    batch are kept, for the tracks.
    This is the serial tail of a parallel run (every worker is idle by now), so the other
    tables are written on threads (pyarrow and h5py release the GIL) while the next one is
    computed.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .track import linkable

    if track.frame_meta:
        from .metadata import _frame_meta_joiner, join_frame_meta

        if meta is None:
            meta = frame_metadata(track, int(info["n_frames"]), live=bool(info.get("live")))
        # Filled once for every frame of the series, so that joining it chunk by chunk gives
        # what joining the whole table gives (and warns once about frames it lacks).
        meta = join_frame_meta(pd.DataFrame({"frame": np.arange(int(info["n_frames"]))}), meta)
        join_meta = _frame_meta_joiner(meta)

    def whole_peak_table() -> pd.DataFrame:
        tables = [t for t, _ in _chunk_tables(out, info)]
        peaks = (pd.concat(tables, ignore_index=True) if tables
                 else empty_peak_table(config.localizer))
        return join_frame_meta(peaks, meta) if meta is not None else peaks

    peak_writer = _PeakTableWriter(out / "peaks.parquet")
    rows, frame_tables, batch = [], [], []

    def flush() -> None:
        # A few chunks at a time: each pandas/arrow step costs ~1 ms however small its table,
        # which a live run's many small chunks (4 frames) would pay at every update.
        table = pd.concat(batch, ignore_index=True) if len(batch) > 1 else batch[0]
        batch.clear()
        if meta is not None:
            table = join_meta(table)
        peak_writer.add(table)
        rows.append(linkable(table))

    try:
        peak_table = None
        for peak_table, frame_table in _chunk_tables(out, info, read):
            if len(peak_table):
                batch.append(peak_table)
                if sum(map(len, batch)) >= _PEAK_BATCH_ROWS:
                    flush()
            if frame_table is not None:
                frame_tables.append(frame_table)
        if not batch and not rows and peak_table is not None:
            batch.append(peak_table)  # no peak at all: the columns still come from a chunk
        peak_table = None  # the last chunk's: not held while the tracks are made
        if batch:
            flush()
        peaks_path = peak_writer.close(whole_peak_table)
    except BaseException:
        peak_writer.discard()  # no temporary file left behind, whatever stopped it
        raise

    frames = pd.concat(frame_tables, ignore_index=True) if frame_tables else pd.DataFrame(
        {"frame": [], "status": [], "reason": [], "n_peaks": [], "n_ok": []})
    names = getattr(series, "frame_names", None)
    if names and len(frames):
        # A folder or glob series: which file each frame index is (a stray file in the
        # folder shifts every index after it, and this is where a user sees that).
        idx = frames["frame"].to_numpy(np.int64)
        lookup = np.asarray(names, dtype=object)
        frames["file"] = np.where(idx < len(lookup), lookup[np.minimum(idx, len(lookup) - 1)], "")
    if meta is not None:
        frames = join_frame_meta(frames, meta)
    extra = list(dict.fromkeys(f for f in track.formats if f != "parquet"))
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="braggtrack-write") as pool:
        writes = {}

        def write(name: str, table: pd.DataFrame) -> None:
            writes[name] = pool.submit(write_table, table, out / f"{name}.parquet")
            for fmt in extra:
                writes[f"{name}_{fmt}"] = pool.submit(write_table, table, out / f"{name}.{fmt}")

        def peaks_as(fmt: str) -> Path:  # from the parquet file: the table is not in memory
            return write_table(read_table(peaks_path), out / f"peaks.{fmt}")

        for fmt in extra:
            writes[f"peaks_{fmt}"] = pool.submit(peaks_as, fmt)
        n_peaks, n_ok = peak_writer.n_peaks, peak_writer.n_ok
        write("frames", frames)
        if linked is not None:
            linked = (linked[0](), linked[1])
        nonempty = [r for r in rows if len(r)] or rows[:1]
        rows = [pd.concat(nonempty, ignore_index=True) if nonempty
                else linkable(empty_peak_table(config.localizer))]
        del nonempty
        # The linkable rows go to _link_rows as their only reference, which drops them once
        # the track table is made from them.
        tracks, particles, geometry_info = _link_rows(
            rows.pop(), track, tuple(series.shape), linked=linked)
        write("tracks", tracks)
        write("particles", particles)
        # Every write is awaited, and the first error raised, before run.json says finished.
        paths = {"peaks": peaks_path, **{name: fut.result() for name, fut in writes.items()}}
    skipped = frames[frames["status"] != "ok"] if len(frames) else frames
    info["skipped_frames"] = [
        {"frame": int(r.frame), "reason": str(r.reason)} for r in skipped.itertuples()
    ]
    info["geometry"] = geometry_info
    info["frame_meta"] = track.frame_meta
    info["counts"] = {
        "frames": int(info["n_frames"]),
        "frames_skipped": len(info["skipped_frames"]),
        "peaks": n_peaks,
        "peaks_ok": n_ok,
        "particles": int(len(particles)),
    }
    info["finished"] = _now()
    info["elapsed_s"] = round(time.time() - started, 3)
    _write_json_atomic(out / RUN_JSON, info)
    paths["run_json"] = out / RUN_JSON
    if track.report:
        from .report import make_report

        paths["report"] = make_report(out)
    from .io import file_checksum

    st = Path(paths["peaks"]).stat()
    return RunResult(run_dir=out, tracks=tracks, particles=particles,
                     frames=frames, paths=paths, info=info,
                     _peaks_stat=(st.st_size, st.st_mtime_ns,
                                  file_checksum(paths["peaks"], algorithm="xxh3_128")))


def frame_metadata(track: TrackConfig, n_frames: int | None,
                   live: bool = False) -> pd.DataFrame:
    """Per-frame metadata of a run: the frame table, with a cycler log put on its time base
    (``live``: frames so far of a watch, which may all come before the log starts)."""
    from .metadata import branches, interpolate_cycler, load_frame_meta

    meta = load_frame_meta(track.frame_meta, n_frames=n_frames)
    if track.cycler_log is None:
        return meta
    if "time_s" not in meta:
        raise OptionError(f"{track.frame_meta}: no time_s column to put the cycler log on")
    log = read_table(track.cycler_log)
    cycler = interpolate_cycler(log, meta[["frame", "time_s"]], source=track.cycler_log,
                                outside="hold" if live else "clip")
    keep = [c for c in meta.columns if c == "frame" or c not in cycler.columns]
    merged = cycler.merge(meta[keep], on="frame", how="left")
    if "branch" not in merged:
        try:
            labels = branches(merged)
        except OptionError as exc:
            raise OptionError(f"{track.cycler_log}: {exc}") from None
        merged = pd.concat([merged, labels.reset_index(drop=True)], axis=1)
    return merged


def make_geometry(track: TrackConfig):
    """The detector geometry of ``track`` (PONI file or simple options), or None."""
    from .geometry import Geometry

    if track.poni:
        # --wavelength supplies one to a PONI file without it; beside the PONI's own it must
        # agree (from_poni refuses otherwise, and check_track makes that happen up front).
        return Geometry.from_poni(track.poni, wavelength_A=track.wavelength_A)
    if track.distance_mm is not None:
        missing = [n for n in ("beam_x", "beam_y", "pixel_um") if getattr(track, n) is None]
        if missing:
            raise OptionError(
                "a simple geometry needs --distance, --beam-x, --beam-y and --pixel; missing "
                + ", ".join("--" + m.replace("_um", "").replace("_", "-") for m in missing)
                + " (the frame centre is not assumed: a beam centre off by a few pixels shifts "
                "two_theta)"
            )
        return Geometry.simple(
            distance_mm=track.distance_mm, beam_x_px=track.beam_x, beam_y_px=track.beam_y,
            pixel_size_um=track.pixel_um, wavelength_A=track.wavelength_A,
        )
    return None


def check_track(track: TrackConfig, n_frames: int | None,
                frame_shape: tuple[int, int] | None = None) -> pd.DataFrame | None:
    """Check what ``track`` names before any frame work, so that a bad PONI file, a
    lattice that cannot be computed or a bad metadata file fails in a second, not after
    every frame was processed.

    Parameters
    ----------
    track : TrackConfig
        The options (their values alone are checked by ``TrackConfig`` itself).
    n_frames : int or None
        Frames of the series, to check ``--frame-meta`` / ``--cycler-log`` against; None
        for a growing series (watch), whose metadata files are then only read, their
        alignment with the frames being checked each time the tables are written.
    frame_shape : (int, int), optional
        The frames' rows and columns: a geometry file whose detector has another shape
        (a PONI file of another detector, or frames cropped to a region) is warned about,
        since positions are then taken as pixels of that detector counted from its corner.

    Returns
    -------
    DataFrame or None
        The per-frame metadata (:func:`frame_metadata`) when ``n_frames`` is given.
    """
    if n_frames is not None and track.reference_frame is not None \
            and track.reference_frame >= n_frames:
        raise OptionError(f"--reference-frame {track.reference_frame}: the series has "
                          f"{n_frames} frames (0..{n_frames - 1})")
    geometry = make_geometry(track)
    if (geometry is not None and geometry.shape is not None and frame_shape is not None
            and tuple(geometry.shape) != tuple(frame_shape)):
        import logging

        logging.getLogger("braggtrack").warning(
            "%s: its detector is %d x %d pixels, the frames %d x %d; positions are taken as "
            "that detector's pixels from its corner (a cropped frame shifts every angle)",
            track.poni, *geometry.shape, *frame_shape)
    needs_d = [o for o, v in (("--d-ref", track.d_ref), ("--hkl", track.hkl)) if v is not None]
    if needs_d and (geometry is None or geometry.wavelength_A is None):
        verb = "needs" if len(needs_d) == 1 else "need"
        raise OptionError(f"{' and '.join(needs_d)} {verb} d-spacings, so a wavelength: give "
                          "--wavelength" + (" (the PONI file has none)" if track.poni else ""))
    if track.hkl is not None:
        from .geometry import lattice_parameter

        try:
            # A stand-in d-spacing: the errors depend only on hkl, system and c/a.
            lattice_parameter([1.0], track.hkl, track.crystal_system, c_over_a=track.c_over_a)
        except OptionError as exc:
            hkl = " ".join(map(str, track.hkl))
            raise OptionError(f"--hkl {hkl} --system {track.crystal_system}: {exc}") from None
    if track.frame_meta is None:
        return None
    if n_frames is not None:
        return frame_metadata(track, n_frames)
    import warnings

    from .metadata import FrameMetaWarning

    if Path(track.frame_meta).suffix.lower() in (".csv", ".parquet"):
        with warnings.catch_warnings():
            # Said when the tables are written, for the frames there are by then.
            warnings.simplefilter("ignore", FrameMetaWarning)
            frame_metadata(track, None, live=True)
    elif not Path(track.frame_meta).is_file():
        raise InputFileError(track.frame_meta, "no such metadata file")
    elif track.cycler_log is not None:
        from .tables import read_table

        read_table(track.cycler_log)
    return None


def link_and_measure(
    peaks: pd.DataFrame, track: TrackConfig, frame_shape: tuple[int, int] | None = None,
    linked: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Link accepted peaks into trajectories, then add geometry and strain (or radial shift).

    Parameters
    ----------
    peaks : DataFrame
        Peak table (``frame``, ``x``, ``y``, ``ok``, ...).
    track : TrackConfig
        Linking and geometry options; without a geometry, ``beam_x``/``beam_y`` are the
        centre ``radial_shift`` is measured from.
    frame_shape : (int, int), optional
        Frame rows and columns: without a geometry, a beam coordinate not given is taken as
        the frame centre's. When it is unknown and the beam centre is not given either,
        there is no ``radial_shift`` column (it would be measured from a guess);
        ``geometry_info["radial_shift"]`` says so.
    linked : (labels, x), optional
        When the linkable rows (:func:`braggtrack.track.linkable`) were already linked during
        the run (by a :class:`~braggtrack.track.FrameLinker`, or in segments joined by
        :func:`braggtrack.track.link_in_segments`): their trajectory labels and the x they
        were fed; used only when those are exactly these rows' x.

    Returns
    -------
    (tracks, particles, geometry_info)
        The tracks table, the particles summary and a description of the geometry used.
    """
    from . import track as trk

    return _link_rows(trk.linkable(peaks), track, frame_shape, linked)


def _link_rows(ok: pd.DataFrame, track: TrackConfig, frame_shape: tuple[int, int] | None,
               linked: tuple[np.ndarray, np.ndarray] | None = None,
               ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """:func:`link_and_measure` of the linkable rows ``ok``."""
    from . import track as trk

    if linked is not None and np.array_equal(ok["x"].to_numpy(), linked[1]):
        tracks = trk.linked_table(ok, linked[0])
    else:
        tracks = trk.link(ok, search_range=track.search_range, memory=track.memory)
    del ok  # a copy of most of the peak table: freed (when the caller holds none) before
    # the next steps copy the tracks
    if track.split_on_shape_change and len(tracks):
        tracks = trk.split_on_shape_change(tracks)
    tracks = trk.filter_tracks(tracks, min_length=track.min_length)
    geometry = make_geometry(track)
    if geometry is not None:
        from .geometry import add_geometry, add_strain

        tracks = add_geometry(tracks, geometry)
        if "d_spacing" in tracks or "two_theta" in tracks:
            # Without a wavelength, strain against a reference frame from two_theta alone
            # (d_ref and hkl, which need d, are refused up front by check_track).
            tracks = add_strain(tracks, reference_frame=track.reference_frame, d_ref=track.d_ref)
            if track.hkl is not None and "d_spacing" in tracks:
                from .geometry import lattice_parameter

                a, a_err = lattice_parameter(
                    tracks["d_spacing"].to_numpy(), track.hkl, track.crystal_system,
                    c_over_a=track.c_over_a, d_err=tracks["d_spacing_err"].to_numpy())
                tracks["lattice_a"], tracks["lattice_a_err"] = a, a_err
        geometry_info = {"kind": "poni" if track.poni else "simple", **geometry.as_dict()}
    else:
        from .geometry import add_radial_shift

        assumed = track.beam_x is None or track.beam_y is None
        if assumed and frame_shape is None:
            given = [o for o, v in (("--beam-x", track.beam_x), ("--beam-y", track.beam_y))
                     if v is not None]
            if given:
                other = "--beam-y" if given[0] == "--beam-x" else "--beam-x"
                raise OptionError(f"{given[0]} needs {other} too: the frame size, whose "
                                  "centre would stand in, is unknown")
            geometry_info = {"kind": "none", "beam_centre_px": None, "beam_centre_assumed": False,
                             "radial_shift": "not measured: beam centre and frame size unknown"}
        else:
            h, w = frame_shape if frame_shape is not None else (0, 0)
            centre = (track.beam_x if track.beam_x is not None else (w - 1) / 2,
                      track.beam_y if track.beam_y is not None else (h - 1) / 2)
            tracks = add_radial_shift(tracks, beam_centre=centre,
                                      reference_frame=track.reference_frame)
            geometry_info = {"kind": "none", "beam_centre_px": list(map(float, centre)),
                             "beam_centre_assumed": assumed}
    return tracks, trk.particles(tracks), geometry_info


def demo(
    out_dir: str | os.PathLike = "braggtrack-demo",
    *,
    sample: str = "series",
    force: bool = False,
    progress: bool = True,
) -> RunResult:
    """Run the whole pipeline on an embedded real sample (what ``make demo`` runs).

    Parameters
    ----------
    out_dir : path
        Run folder to write.
    sample : str
        ``"series"`` (100 real HEDM frames, cropped) or ``"laue"`` (one real Laue frame).
    """
    from .data import sample as sample_path

    return run(sample_path(sample), out_dir, force=force, progress=progress,
               command=f"braggtrack demo -o {out_dir} --sample {sample}")
