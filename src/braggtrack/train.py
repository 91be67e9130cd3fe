"""Train a BraggNN localizer with bounded memory, from simulated or measured peaks.

Three kinds of training data (``source`` of :func:`train_model`):

* :class:`SimulatorSource` -- patches drawn on the fly from
  :func:`braggtrack.simulate.simulate_patches` (a fresh, seeded set every epoch; labels
  are the exact truth).  This is how the shipped model is trained.
* :class:`PeakTableSource` -- a braggtrack peak table (``frame, x, y``, e.g. pseudo-Voigt
  fits) plus the frames file it came from, read through :func:`braggtrack.io.open_frames`.
* :class:`BraggNNLayoutSource` -- the original BraggNN layout: a frames HDF5 (dataset
  ``frames``, N x H x W) and a peaks HDF5 (``peak_fidx``, ``peak_row``, ``peak_col``).
  Row/column are read in braggtrack's convention (centre of pixel 0 is 0.0).

Frames are never loaded whole: :class:`PatchStream` (a torch ``IterableDataset``) reads
``chunk_frames`` consecutive frames at a time, cuts the patches of the peaks on those
frames and passes them through a shuffle buffer of ``buffer_size`` patches, so resident
memory is bounded by ``chunk_frames * H * W + buffer_size * N * N`` whatever the data
set's size.  The validation split is by frame (whole frames held out), so neighbouring
peaks of one frame never leak between training and validation.

Patches are cut two pixels larger than the model's N so that the integer-shift
augmentation is an exact crop (no padding), followed by flips/transposes (labels
transformed with them) and added noise; optionally a share of the patches is thresholded
to zero background like sparse frame-cache data (``sparse``) and a share replaced by
peak-free noise with random targets (``garbage``), which teaches the variance head to
flag such input.  Training is seeded and deterministic on CPU:
every random draw of epoch ``e`` comes from ``numpy.random.default_rng([seed, e])``, so
a run resumed from a checkpoint continues exactly as an uninterrupted one.

The loss is a mean-squared error for the first ``warmup_epochs`` and then a beta
negative log-likelihood (Seitzer et al. 2022, beta = 0.5) that also trains the
log-variance head.  The training loop is written here rather than with a framework
(Lightning, ignite) to keep the dependency list to torch alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import IterableDataset

from .braggnn import BraggNN, BraggNNConfig, normalize_patches, resolve_device, save_model
from .errors import InputFileError, ModelError, OptionError, checked_number
from .tables import try_creating_in

__all__ = [
    "SimulatorSource",
    "PeakTableSource",
    "BraggNNLayoutSource",
    "PatchStream",
    "SimulatedStream",
    "TrainResult",
    "train_model",
    "augment_batch",
    "sparsify",
    "calibrate_flags",
]

#: Extra pixels cut on each side of a training patch so integer shifts are exact crops.
MARGIN = 1


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class SimulatorSource:
    """Patches from :func:`braggtrack.simulate.simulate_patches`, new ones every epoch.

    Parameters
    ----------
    n_train : int
        Training patches per epoch.
    n_val : int
        Validation patches (one fixed set, drawn from a seed distinct from training).
    kinds : tuple of str, optional
        Peak kinds to draw (``None``: the simulator's default mix).
    chunk : int
        Patches simulated at a time (bounds memory).
    simulate : callable, optional
        Replacement for ``simulate_patches(n, patch, kinds, seed)`` (tests).
    """

    n_train: int = 65536
    n_val: int = 4096
    kinds: tuple[str, ...] | None = None
    chunk: int = 4096
    simulate: Callable | None = None


@dataclass(frozen=True)
class PeakTableSource:
    """A peak table (``frame, x, y`` columns; ``ok`` respected if present) + its frames file."""

    frames: str | os.PathLike
    peaks: str | os.PathLike | pd.DataFrame
    dataset: str | None = None
    chunk_frames: int = 16


@dataclass(frozen=True)
class BraggNNLayoutSource:
    """The original BraggNN layout: frames HDF5 + peaks HDF5.

    ``frames`` holds dataset ``frames_dataset`` (N x H x W); ``peaks`` holds ``peak_fidx``
    (frame index), ``peak_row`` and ``peak_col`` (sub-pixel centre, pixel centre = integer).
    """

    frames: str | os.PathLike
    peaks: str | os.PathLike
    frames_dataset: str = "frames"
    chunk_frames: int = 16


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train_model`.

    ``history`` has one row per epoch: epoch, train_loss, val_loss, val_median_px,
    val_p90_px, val_mean_px, seconds.  ``model_path`` holds the best epoch's weights.
    """

    model_path: Path
    config_path: Path
    epochs_run: int
    best_epoch: int
    val_median_px: float
    val_p90_px: float
    stopped_early: bool
    history: pd.DataFrame
    config: BraggNNConfig


# ---------------------------------------------------------------------- frame access


class _H5Frames:
    """Chunked reads of an HDF5 frame stack with a small chunk cache; counts what it reads."""

    def __init__(self, path: Path, dataset: str) -> None:
        import h5py

        try:
            import hdf5plugin  # noqa: F401  (registers compression filters)
        except ImportError:  # pragma: no cover - optional at run time
            pass
        self.path = path
        try:
            # A 4 MiB chunk cache: h5py's default would otherwise grow with the data set.
            self._file = h5py.File(path, "r", locking=False, rdcc_nbytes=4 << 20)
        except OSError as exc:
            raise InputFileError(path, f"not a readable HDF5 file ({exc})") from None
        if dataset not in self._file:
            self._file.close()
            raise InputFileError(path, f"no dataset {dataset!r} (BraggNN layout needs N x H x W frames)")
        data = self._file[dataset]
        if not isinstance(data, h5py.Dataset):
            self._file.close()
            raise InputFileError(path, f"{dataset!r} is a group, not an N x H x W frames dataset")
        # Shape and dtype are read before any close: a closed file's dataset cannot report them.
        shape, kind = tuple(int(v) for v in data.shape), data.dtype.kind
        if len(shape) != 3:
            self._file.close()
            raise InputFileError(
                path, f"dataset {dataset!r} has shape {shape} ({len(shape)}-D), expected N x H x W frames"
            )
        if kind not in "biuf":
            self._file.close()
            raise InputFileError(path, f"dataset {dataset!r} holds {data.dtype} values, not numbers")
        self._data = data
        self.n_frames, self.height, self.width = shape

    def read(self, start: int, stop: int) -> np.ndarray:
        try:
            return np.asarray(self._data[start:stop], dtype=np.float32)
        except (OSError, ValueError) as exc:
            raise InputFileError(self.path, f"cannot read frames {start}..{stop - 1} ({exc})") from None

    def close(self) -> None:
        self._file.close()


class _SeriesFrames:
    """Chunked reads through :func:`braggtrack.io.open_frames`."""

    def __init__(self, path: Path, dataset: str | None) -> None:
        from .io import open_frames

        self.path = path
        self._series = open_frames(path, dataset=dataset)
        self.n_frames = len(self._series)
        self.height, self.width = (int(v) for v in self._series.shape)

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._series[start:stop], dtype=np.float32)

    def close(self) -> None:
        close = getattr(self._series, "close", None)
        if close is not None:
            close()


def _read_braggnn_peaks(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as f:
            missing = [k for k in ("peak_fidx", "peak_row", "peak_col") if k not in f]
            if missing:
                raise InputFileError(path, f"missing BraggNN peak datasets {missing}")
            frame = np.asarray(f["peak_fidx"][()], dtype=np.int64).ravel()
            row = np.asarray(f["peak_row"][()], dtype=np.float64).ravel()
            col = np.asarray(f["peak_col"][()], dtype=np.float64).ravel()
    except OSError as exc:
        raise InputFileError(path, f"not a readable HDF5 file ({exc})") from None
    if not (len(frame) == len(row) == len(col)):
        raise InputFileError(path, "peak_fidx, peak_row and peak_col differ in length")
    return frame, row, col


def _read_table_peaks(peaks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from .tables import read_table

    table = peaks if isinstance(peaks, pd.DataFrame) else read_table(peaks)
    name = "peak table" if isinstance(peaks, pd.DataFrame) else peaks
    missing = [c for c in ("frame", "x", "y") if c not in table.columns]
    if missing:
        raise InputFileError(name, f"peak table lacks columns {missing}")
    if "ok" in table.columns:
        table = table[table["ok"].astype(bool)]
    frame = table["frame"].to_numpy(dtype=np.int64)
    return frame, table["y"].to_numpy(dtype=np.float64), table["x"].to_numpy(dtype=np.float64)


def _open_frame_source(source):
    """Return (reader, frame, row, col) for the two file-based sources."""
    if isinstance(source, BraggNNLayoutSource):
        peaks_path = Path(source.peaks)
        if not peaks_path.is_file():
            raise InputFileError(peaks_path, "no such file")
        frames_path = Path(source.frames)
        if not frames_path.is_file():
            raise InputFileError(frames_path, "no such file")
        frame, row, col = _read_braggnn_peaks(peaks_path)
        reader = _H5Frames(frames_path, source.frames_dataset)
    else:
        frames_path = Path(source.frames)
        if not frames_path.exists():
            raise InputFileError(frames_path, "no such file")
        frame, row, col = _read_table_peaks(source.peaks)
        reader = _SeriesFrames(frames_path, source.dataset)
    ok = np.isfinite(row) & np.isfinite(col) & (frame >= 0) & (frame < reader.n_frames)
    return reader, frame[ok], row[ok], col[ok]


# ------------------------------------------------------------------------- datasets


class PatchStream(IterableDataset):
    """Stream ``(raw_patch, xy)`` pairs cut on the fly from frames read in chunks.

    ``raw_patch`` is ``(M, M)`` float32 with ``M = patch + 2 * margin``; ``xy`` the
    peak centre (x = column, y = row) in that patch's pixel coordinates.  Peaks whose
    patch would leave the frame are skipped.

    Memory is bounded: at most ``chunk_frames`` frames and ``buffer_size`` patches are
    held at once.  ``frames_read``, ``max_frames_held`` and ``max_buffer_held`` record
    what the last iteration did (tests check the bound with them).

    Parameters
    ----------
    reader : object
        Has ``read(start, stop) -> (k, H, W)``, ``n_frames``, ``height``, ``width``.
    frame, row, col : ndarray
        Peak frame index and sub-pixel centre (row = y, col = x).
    patch : int
        Model patch size N.
    frames : ndarray of int
        Frame indices this stream uses (its split).
    seed : int
        With :attr:`epoch`, seeds the chunk order and buffer shuffle.
    shuffle : bool
        Shuffle chunk order and patches (training); off for validation.

    Examples
    --------
    >>> import numpy as np
    >>> class Frames:
    ...     n_frames, height, width = 4, 32, 32
    ...     def read(self, a, b):
    ...         return np.random.default_rng(a).random((b - a, 32, 32), dtype=np.float32)
    >>> stream = PatchStream(Frames(), np.array([0, 3]), np.array([10.2, 16.0]),
    ...                      np.array([12.0, 9.7]), patch=11, frames=np.arange(4))
    >>> [p.shape for p, xy in stream]
    [(13, 13), (13, 13)]
    """

    def __init__(
        self,
        reader,
        frame: np.ndarray,
        row: np.ndarray,
        col: np.ndarray,
        *,
        patch: int,
        frames: np.ndarray,
        margin: int = MARGIN,
        chunk_frames: int = 16,
        buffer_size: int = 8192,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        self.reader = reader
        self.patch = int(patch)
        self.margin = int(margin)
        self.chunk_frames = max(int(chunk_frames), 1)
        self.buffer_size = max(int(buffer_size), 1)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        half = self.patch // 2 + self.margin
        r0 = np.rint(row).astype(np.int64)
        c0 = np.rint(col).astype(np.int64)
        inside = (r0 - half >= 0) & (c0 - half >= 0) & (r0 + half < reader.height) & (
            c0 + half < reader.width
        )
        keep = inside & np.isin(frame, frames)
        order = np.argsort(frame[keep], kind="stable")
        self.frame = frame[keep][order]
        self.row = row[keep][order]
        self.col = col[keep][order]
        self.r0 = r0[keep][order]
        self.c0 = c0[keep][order]
        self.frames_read = 0
        self.max_frames_held = 0
        self.max_buffer_held = 0

    def __len__(self) -> int:
        return len(self.frame)

    def _chunks(self) -> list[tuple[int, int]]:
        """Runs of at most chunk_frames consecutive frames that hold peaks of this split."""
        used = np.unique(self.frame)
        chunks: list[tuple[int, int]] = []
        i = 0
        while i < len(used):
            start = int(used[i])
            stop = start + self.chunk_frames
            j = int(np.searchsorted(used, stop))
            chunks.append((start, min(stop, int(used[j - 1]) + 1)))
            i = j
        return chunks

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        chunks = self._chunks()
        if self.shuffle:
            chunks = [chunks[k] for k in rng.permutation(len(chunks))]
        self.frames_read = self.max_frames_held = self.max_buffer_held = 0
        half = self.patch // 2 + self.margin
        size = 2 * half + 1
        buffer: list[tuple[np.ndarray, np.ndarray]] = []
        for start, stop in chunks:
            block = self.reader.read(start, stop)
            self.frames_read += stop - start
            self.max_frames_held = max(self.max_frames_held, len(block))
            a, b = np.searchsorted(self.frame, [start, stop])
            for k in range(a, b):
                r, c = self.r0[k] - half, self.c0[k] - half
                raw = np.array(block[self.frame[k] - start, r:r + size, c:c + size], dtype=np.float32)
                xy = np.array([self.col[k] - c, self.row[k] - r], dtype=np.float32)
                if not self.shuffle:
                    yield raw, xy
                    continue
                buffer.append((raw, xy))
                self.max_buffer_held = max(self.max_buffer_held, len(buffer))
                if len(buffer) >= self.buffer_size:
                    j = int(rng.integers(len(buffer)))
                    buffer[j], buffer[-1] = buffer[-1], buffer[j]
                    yield buffer.pop()
            del block
        if self.shuffle:
            for j in rng.permutation(len(buffer)):
                yield buffer[j]


class SimulatedStream(IterableDataset):
    """Stream ``(raw_patch, xy)`` pairs from the simulator, ``chunk`` patches at a time.

    Epoch ``e`` draws ``n`` patches with seeds derived from ``(seed, e)``; the patches are
    ``patch + 2 * margin`` wide and ``xy`` is the exact truth in their pixel coordinates.
    """

    def __init__(
        self,
        n: int,
        *,
        patch: int,
        kinds=None,
        seed: int = 0,
        chunk: int = 4096,
        margin: int = MARGIN,
        simulate: Callable | None = None,
    ) -> None:
        super().__init__()
        self.n = int(n)
        self.patch = int(patch)
        self.kinds = kinds
        self.seed = int(seed)
        self.chunk = max(int(chunk), 1)
        self.margin = int(margin)
        self.simulate = simulate
        self.epoch = 0

    def __len__(self) -> int:
        return self.n

    def _simulate(self):
        if self.simulate is not None:
            return self.simulate
        from .simulate import simulate_patches

        return simulate_patches

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The epoch's patches, ``(k, size, size)`` float32, and truths, ``(k, 2)``, one
        simulated chunk at a time.

        The next chunk is simulated on a background thread while the caller trains on this
        one: the simulator's kernel (numba, ``nogil``) and torch both release the GIL, so with
        one torch thread the two share two cores instead of taking turns (simulating was
        about half of an epoch's time).  Every chunk's seed is fixed in advance, so the
        patches, and the trained weights, are the same as without the thread.
        """
        from concurrent.futures import ThreadPoolExecutor

        simulate = self._simulate()
        size = self.patch + 2 * self.margin
        sizes = [min(self.chunk, self.n - a) for a in range(0, self.n, self.chunk)]

        def draw(part: int) -> tuple[np.ndarray, np.ndarray]:
            # One integer seed per (seed, epoch, part): chunks never repeat across epochs.
            sub = int(np.random.default_rng([self.seed, self.epoch, part, 7]).integers(2**31 - 1))
            patches, truth = simulate(sizes[part], patch=size, kinds=self.kinds, seed=sub)
            xy = np.stack([truth["x"].to_numpy(), truth["y"].to_numpy()], axis=1)
            return np.asarray(patches, dtype=np.float32), xy.astype(np.float32)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="braggtrack-simulate") as pool:
            pending = pool.submit(draw, 0) if sizes else None
            try:
                for part in range(len(sizes)):
                    current = pending.result()
                    pending = pool.submit(draw, part + 1) if part + 1 < len(sizes) else None
                    yield current
            finally:
                if pending is not None:  # the consumer stopped early
                    pending.cancel()

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for patches, xy in self.chunks():
            yield from zip(patches, xy, strict=True)


def _batches(stream, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Consecutive batches of ``batch_size`` ``(raw, xy)`` pairs (the last one may be short).

    A stream with ``chunks()`` (the simulator) is cut by slicing its chunk arrays: the same
    batches as pair by pair, without a Python step per patch.
    """
    if hasattr(stream, "chunks"):
        yield from _batches_of_chunks(stream.chunks(), batch_size)
        return
    raws: list[np.ndarray] = []
    xys: list[np.ndarray] = []
    for raw, xy in stream:
        raws.append(raw)
        xys.append(xy)
        if len(raws) == batch_size:
            yield np.stack(raws), np.stack(xys)
            raws, xys = [], []
    if raws:
        yield np.stack(raws), np.stack(xys)


def _batches_of_chunks(chunks, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    held_raw: list[np.ndarray] = []
    held_xy: list[np.ndarray] = []
    held = 0
    for raw, xy in chunks:
        start = 0
        if held:  # complete the batch begun in the previous chunk
            take = min(batch_size - held, len(raw))
            held_raw.append(raw[:take])
            held_xy.append(xy[:take])
            held += take
            start = take
            if held < batch_size:
                continue
            yield np.concatenate(held_raw), np.concatenate(held_xy)
            held_raw, held_xy, held = [], [], 0
        while len(raw) - start >= batch_size:
            yield raw[start:start + batch_size], xy[start:start + batch_size]
            start += batch_size
        if start < len(raw):
            held_raw, held_xy, held = [raw[start:]], [xy[start:]], len(raw) - start
    if held:
        yield np.concatenate(held_raw), np.concatenate(held_xy)


# ---------------------------------------------------------------------- augmentation


def sparsify(
    patches: np.ndarray, rng: np.random.Generator, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Threshold a random ``fraction`` of patches the way sparse frame caches are made.

    For each chosen patch the background (border median) is subtracted and pixels below a
    threshold are set to exactly 0; pixels above keep their background-subtracted value.
    The threshold is, with equal odds, 1.5-6 times the pixel noise (robust estimate from
    neighbour differences) or 10-70 % of the peak height, but never above the brightest
    pixel, so at least one pixel survives.  Returns the patches and the chosen mask.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> p = rng.poisson(50, (4, 11, 11)).astype(np.float32); p[:, 5, 5] += 400
    >>> out, chosen = sparsify(p, rng, 1.0)
    >>> bool(chosen.all() and (out == 0).mean() > 0.5 and (out[:, 5, 5] > 0).all())
    True
    """
    p = np.asarray(patches, dtype=np.float32).copy()
    n = len(p)
    chosen = rng.random(n) < fraction
    if not chosen.any():
        return p, chosen
    q = p[chosen].astype(np.float64)
    m = len(q)
    border = np.concatenate([q[:, 0, :], q[:, -1, :], q[:, 1:-1, 0], q[:, 1:-1, -1]], axis=1)
    q = q - np.median(border, axis=1)[:, None, None]
    diffs = np.concatenate([np.diff(q, axis=1).reshape(m, -1), np.diff(q, axis=2).reshape(m, -1)], axis=1)
    noise = 1.4826 * np.median(np.abs(diffs), axis=1) / np.sqrt(2)
    top = q.max(axis=(1, 2))
    by_noise = rng.random(m) < 0.5
    thr = np.where(by_noise, rng.uniform(1.5, 6.0, m) * noise, rng.uniform(0.1, 0.7, m) * top)
    thr = np.minimum(np.maximum(thr, 1e-6), top)
    q = np.where(q >= thr[:, None, None], q, 0.0)
    p[chosen] = q.astype(np.float32)
    return p, chosen


def augment_batch(
    raw: np.ndarray,
    xy: np.ndarray,
    patch: int,
    rng: np.random.Generator | None,
    *,
    noise: float = 0.03,
    sparse: float = 0.0,
    garbage: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop, flip/transpose and add noise; return normalized patches and (dx, dy) targets.

    ``raw`` is ``(n, M, M)`` with ``M = patch + 2 * margin`` and ``xy`` the centre in its
    coordinates.  With ``rng=None`` the central crop is taken and nothing else changes
    (validation).  Otherwise each patch gets a random integer shift of up to ``margin``
    pixels (an exact crop), a random flip/transpose from the 8 symmetries of the square
    and, for half of them, Gaussian noise of up to ``noise`` times the patch's range.
    A fraction ``sparse`` of the patches is then thresholded to zero background
    (:func:`sparsify`, as in sparse frame-cache data) instead of getting noise.  A
    fraction ``garbage`` is replaced by peak-free patches (Poisson noise of a random
    level, or uniform random values) with a target drawn uniformly in +-2 px: no
    position can be learnt from them, so the network learns to predict a large variance
    (about 1.15 px 1-sigma) for such input, which the out-of-distribution flag then catches.
    Labels follow every transform.

    Examples
    --------
    >>> import numpy as np
    >>> raw = np.zeros((1, 13, 13), np.float32); raw[0, 7, 5] = 1   # x=5, y=7
    >>> normed, d = augment_batch(raw, np.array([[5.0, 7.0]]), 11, None)
    >>> d.tolist()   # offset from the centre of the 11 x 11 crop
    [[-1.0, 1.0]]
    """
    n, size, _ = raw.shape
    margin = (size - patch) // 2
    c = (patch - 1) / 2
    if rng is None:
        ox = oy = np.full(n, margin)
    else:
        ox = rng.integers(0, 2 * margin + 1, n)
        oy = rng.integers(0, 2 * margin + 1, n)
    idx = np.arange(patch)
    rows = (oy[:, None] + idx)[:, :, None]
    cols = (ox[:, None] + idx)[:, None, :]
    p = raw[np.arange(n)[:, None, None], rows, cols].astype(np.float32)
    x = xy[:, 0] - ox
    y = xy[:, 1] - oy
    if rng is not None:
        flip_x = rng.random(n) < 0.5
        flip_y = rng.random(n) < 0.5
        swap = rng.random(n) < 0.5
        p[flip_x] = p[flip_x, :, ::-1]
        x = np.where(flip_x, patch - 1 - x, x)
        p[flip_y] = p[flip_y, ::-1, :]
        y = np.where(flip_y, patch - 1 - y, y)
        p[swap] = p[swap].transpose(0, 2, 1)
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        chosen = np.zeros(n, bool)
        if sparse > 0:
            p, chosen = sparsify(p, rng, sparse)
        if noise > 0:
            span = p.max(axis=(1, 2)) - p.min(axis=(1, 2))
            level = rng.uniform(0, noise, n) * (rng.random(n) < 0.5) * span * ~chosen
            p = p + rng.standard_normal(p.shape).astype(np.float32) * level[:, None, None].astype(np.float32)
        if garbage > 0:
            junk = rng.random(n) < garbage
            k = int(junk.sum())
            level = np.exp(rng.uniform(0.0, np.log(300.0), k))[:, None, None]
            noise_only = rng.poisson(np.broadcast_to(level, (k, patch, patch))).astype(np.float32)
            uniform = rng.uniform(0.0, 1.0, (k, patch, patch)).astype(np.float32)
            p[junk] = np.where(rng.random(k)[:, None, None] < 0.7, noise_only, uniform)
            x = np.where(junk, c + rng.uniform(-2.0, 2.0, n), x)
            y = np.where(junk, c + rng.uniform(-2.0, 2.0, n), y)
    normed, _ = normalize_patches(p)
    target = np.stack([x - c, y - c], axis=1).astype(np.float32)
    return normed, target


# -------------------------------------------------------------------------- training


def _loss(out: torch.Tensor, target: torch.Tensor, nll: bool, beta: float) -> torch.Tensor:
    mean, logvar = out[:, :2], out[:, 2:]
    if not nll:
        return ((mean - target) ** 2).mean()
    var = logvar.exp()
    per = 0.5 * (logvar + (target - mean) ** 2 / var)
    if beta > 0:
        per = per * var.detach() ** beta
    return per.mean()


def _split_frames(frame: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    used = np.unique(frame)
    if len(used) == 0:
        raise OptionError("no peaks inside the frames to train on")
    n_val = int(round(val_fraction * len(used)))
    if val_fraction > 0 and len(used) > 1:
        n_val = min(max(n_val, 1), len(used) - 1)
    perm = np.random.default_rng([seed, 99]).permutation(len(used))
    val = np.sort(used[perm[:n_val]])
    train = np.sort(used[perm[n_val:]])
    return train, val


def _val_sparsify(raw: np.ndarray, sparse: float, index: int) -> np.ndarray:
    """The validation set's thresholded share: fixed (seeded by batch index), not per epoch."""
    if sparse <= 0:
        return raw
    return sparsify(raw, np.random.default_rng([index, 11]), sparse)[0]


def _evaluate(model, batches, device, patch, nll, beta, sparse=0.0):
    model.eval()
    errs, stds, losses, weights = [], [], [], []
    with torch.inference_mode():
        for i, (raw, xy) in enumerate(batches):
            normed, target = augment_batch(_val_sparsify(raw, sparse, i), xy, patch, None)
            x = torch.from_numpy(normed[:, None]).to(device)
            t = torch.from_numpy(target).to(device)
            out = model(x)
            losses.append(float(_loss(out, t, nll, beta)))
            weights.append(len(raw))
            o = out.cpu().numpy()
            errs.append(np.hypot(o[:, 0] - target[:, 0], o[:, 1] - target[:, 1]))
            stds.append(np.exp(0.5 * o[:, 2:]).max(axis=1))
    if not errs:
        return math.inf, np.zeros(0), np.zeros(0)
    return float(np.average(losses, weights=weights)), np.concatenate(errs), np.concatenate(stds)


def _checkpoint_path(checkpoint_dir: Path) -> Path:
    return checkpoint_dir / "checkpoint.pt"


def _check_output(
    out: str | os.PathLike, force: bool, checkpoint_dir: str | os.PathLike | None
) -> Path:
    """Refuse an output path that :func:`~braggtrack.braggnn.save_model` would fail on.

    The weights are written only after the last epoch, so every problem that can be seen
    now (wrong suffix, a directory, a missing or read-only folder, a file in the way) is
    raised before training starts rather than after minutes of it.

    Parameters
    ----------
    out : path
        The weights file asked for.
    force : bool
        Overwrite an existing weights file and its ``.json`` sidecar.
    checkpoint_dir : path, optional
        Checkpoint folder; must not be an existing file.

    Returns
    -------
    Path
        ``out`` as a path.

    Raises
    ------
    OptionError
        One line naming the path and the problem.
    """
    path = Path(out)
    if path.is_dir():
        raise OptionError(f"{path}: is a directory; give a .safetensors file name")
    if path.suffix.lower() != ".safetensors":
        # Under other names save_model writes files that --model cannot load (.txt is
        # read as a torch pickle) or that share .pt with TorchScript exports.
        raise OptionError(f"{path}: the model file must end in .safetensors")
    parent = path.parent
    if not parent.is_dir():
        raise OptionError(f"{path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OptionError(f"{path}: folder {parent} is not writable")
    try:
        try_creating_in(parent)  # os.access says yes to root where no file can be made (/sys)
    except OSError as exc:
        raise OptionError(f"{path}: folder {parent} is not writable ({exc.strerror or exc})") from None
    sidecar = path.with_suffix(".json")
    if sidecar.is_dir():
        raise OptionError(f"{sidecar}: is a directory, but the model's .json config goes there")
    existing = [p for p in (path, sidecar) if p.exists()]
    if existing and not force:
        raise OptionError(f"{existing[0]}: exists; use --force (force=True) to overwrite")
    for p in existing:
        if not os.access(p, os.W_OK):
            raise OptionError(f"{p}: exists and is not writable")
    if checkpoint_dir is not None and Path(checkpoint_dir).exists() and not Path(checkpoint_dir).is_dir():
        raise OptionError(f"{checkpoint_dir}: exists and is not a folder (checkpoints go there)")
    return path


def train_model(
    source,
    out: str | os.PathLike,
    *,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    val_fraction: float = 0.1,
    patience: int = 5,
    augment: bool = True,
    noise: float = 0.03,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    config: BraggNNConfig | None = None,
    warmup_epochs: int | None = None,
    beta: float = 0.5,
    buffer_size: int = 8192,
    chunk_frames: int | None = None,
    threads: int | None = None,
    max_minutes: float | None = None,
    cosine: bool = True,
    init: str | os.PathLike | None = None,
    sparse: float = 0.0,
    garbage: float = 0.0,
    noise_channel: bool | None = None,
    symmetries: int | None = None,
    force: bool = False,
) -> TrainResult:
    """Train a BraggNN and save the best epoch's weights to ``out``.

    Parameters
    ----------
    source : SimulatorSource, PeakTableSource, BraggNNLayoutSource or "simulate"
        Training data (see the module docstring).
    out : path
        Weights file, ``.safetensors``; a ``.json`` config with the sha256 of the weights
        and the training summary is written beside it.  Checked before training starts:
        its folder must exist and be writable, and neither file may exist unless ``force``.
    epochs, batch_size, lr, seed : int, int, float, int
        Optimisation settings (Adam); ``lr`` must be finite and > 0.
    val_fraction : float
        Fraction of frames held out for validation (file sources).  For the simulator
        the validation set is ``SimulatorSource.n_val`` patches from an independent seed.
    patience : int
        Stop after this many epochs without a better validation mean error (0: never).
    augment : bool
        Integer shifts, flips/transposes (labels transformed) and noise of up to
        ``noise`` times each patch's range.
    checkpoint_dir : path, optional
        Write ``checkpoint.pt`` there after every epoch.
    resume : bool
        Continue from ``checkpoint_dir/checkpoint.pt`` when it exists.
    device : str
        ``'cpu'``, ``'cuda'`` or ``'auto'``.
    progress : bool
        Show a tqdm bar with the loss and the validation error in pixels.
    config : BraggNNConfig, optional
        Architecture (default: slim 16-24-16, 11 x 11).
    warmup_epochs : int, optional
        Epochs of plain MSE before the beta-NLL (default ``max(1, epochs // 4)``).
    beta : float
        Beta of the beta-NLL (0: plain Gaussian NLL).
    buffer_size, chunk_frames : int
        Shuffle-buffer patches and frames read at a time (memory bound of file sources).
    threads : int, optional
        Torch intra-op threads while training.
    max_minutes : float, optional
        Stop (after the current epoch) once this much wall time has passed (the result
        then depends on the machine's speed; use ``epochs`` for reproducible runs).
    cosine : bool
        Cosine decay of the learning rate from ``lr`` to ``lr / 50`` over ``epochs``.
    init : path or "default", optional
        Start from these weights (fine-tuning, e.g. the shipped model on a user's data);
        the architecture then comes from that model and ``config`` must be None.
    sparse : float
        Fraction of training (and, fixed, validation) patches thresholded to zero
        background as in sparse frame-cache data (:func:`sparsify`).
    garbage : float
        Fraction of training patches replaced by peak-free noise with random targets
        (see :func:`augment_batch`), so that the predicted variance flags such input.
    noise_channel : bool, optional
        With ``init``: add the relative-noise input plane (``BraggNNConfig.noise_channel``)
        to a model that lacks it; its first-layer weights start at zero, so training
        starts from exactly the given model's predictions.
    symmetries : int, optional
        Test-time symmetry views of the saved model (``BraggNNConfig.symmetries``);
        validation and the flag calibration use them, training uses one view.
    force : bool
        Overwrite an existing ``out`` and its ``.json`` (``braggtrack train --force``).

    Returns
    -------
    TrainResult

    Raises
    ------
    OptionError
        Before any data is read: an unusable ``out``, or a float option that is not a
        finite number in its range (``lr``, ``max_minutes`` > 0; ``noise``, ``beta`` >= 0;
        ``val_fraction``, ``garbage`` in [0, 1); ``sparse`` in [0, 1]).

    Examples
    --------
    >>> result = train_model("simulate", "model.safetensors", epochs=1)   # doctest: +SKIP
    >>> result.val_median_px                                              # doctest: +SKIP
    0.05
    """
    if isinstance(source, str) and source == "simulate":
        source = SimulatorSource()
    if not isinstance(source, SimulatorSource | PeakTableSource | BraggNNLayoutSource):
        raise OptionError(
            "source must be 'simulate', SimulatorSource, PeakTableSource or BraggNNLayoutSource"
        )
    if epochs < 1 or batch_size < 1:
        raise OptionError("epochs and batch_size must be >= 1")
    # Every float option, before the output is checked or any data read.
    lr = checked_number(lr, "--lr", low=0.0, low_open=True)
    val_fraction = checked_number(val_fraction, "val_fraction", low=0.0, high=1.0,
                                  high_open=True)
    noise = checked_number(noise, "--noise", low=0.0)
    beta = checked_number(beta, "--beta", low=0.0)
    sparse = checked_number(sparse, "--sparse", low=0.0, high=1.0)
    garbage = checked_number(garbage, "--garbage", low=0.0, high=1.0, high_open=True)
    if max_minutes is not None:
        max_minutes = checked_number(max_minutes, "--max-minutes", low=0.0, low_open=True)
    out = _check_output(out, force, checkpoint_dir)
    init_state = None
    if init is not None:
        from .braggnn import load_model

        if config is not None:
            raise OptionError("give either config or init, not both")
        start = load_model(None if str(init) == "default" else init)
        config = start.config
        init_state = {k: v.detach().clone() for k, v in start.state_dict().items()}
        if noise_channel and not config.noise_channel:
            config = dataclasses.replace(config, noise_channel=True)
            w = init_state["features.0.weight"]
            init_state["features.0.weight"] = torch.cat([w, torch.zeros_like(w)], dim=1)
    elif noise_channel is not None:
        config = dataclasses.replace(config or BraggNNConfig(), noise_channel=bool(noise_channel))
    config = config or BraggNNConfig()
    if symmetries is not None:
        config = dataclasses.replace(config, symmetries=int(symmetries))
    dev = resolve_device(device)
    warmup = max(1, epochs // 4) if warmup_epochs is None else int(warmup_epochs)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    reader = None
    try:
        if isinstance(source, SimulatorSource):
            train_stream = SimulatedStream(
                source.n_train, patch=config.patch, kinds=source.kinds, seed=seed,
                chunk=source.chunk, simulate=source.simulate,
            )
            # Validation uses a seed stream disjoint from training: seed + 10**6, epoch 0.
            val_stream = SimulatedStream(
                source.n_val, patch=config.patch, kinds=source.kinds, seed=seed + 10**6,
                chunk=source.chunk, simulate=source.simulate,
            )
            val_batches = list(_batches(val_stream, 4096))  # small, fixed
        else:
            reader, frame, row, col = _open_frame_source(source)
            train_frames, val_frames = _split_frames(frame, val_fraction, seed)
            cf = chunk_frames or source.chunk_frames
            train_stream = PatchStream(
                reader, frame, row, col, patch=config.patch, frames=train_frames,
                chunk_frames=cf, buffer_size=buffer_size, seed=seed, shuffle=True,
            )
            val_stream = PatchStream(
                reader, frame, row, col, patch=config.patch, frames=val_frames,
                chunk_frames=cf, buffer_size=buffer_size, seed=seed, shuffle=False,
            )
            if len(train_stream) == 0:
                raise OptionError("no peak of the training frames lies far enough from the frame edge")
            val_batches = None
        return _fit(
            train_stream, val_stream, val_batches, out, config=config, epochs=epochs,
            batch_size=batch_size, lr=lr, seed=seed, patience=patience, augment=augment,
            noise=noise, checkpoint_dir=checkpoint_dir, resume=resume, dev=dev,
            progress=progress, warmup=warmup, beta=beta, max_minutes=max_minutes,
            source=source, cosine=cosine, init_state=init_state, sparse=float(sparse),
            garbage=float(garbage),
        )
    finally:
        if reader is not None:
            reader.close()
        if threads is not None:
            torch.set_num_threads(old_threads)


def _fit(
    train_stream, val_stream, val_batches, out, *, config, epochs, batch_size, lr, seed,
    patience, augment, noise, checkpoint_dir, resume, dev, progress, warmup, beta,
    max_minutes, source, cosine, init_state=None, sparse=0.0, garbage=0.0,
) -> TrainResult:
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    model = BraggNN(config)
    if init_state is not None:
        model.load_state_dict(init_state)
    model = model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[dict] = []
    best_metric = math.inf
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best_epoch = 0
    bad_epochs = 0
    start_epoch = 1
    ckpt = None
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        ckpt = _checkpoint_path(checkpoint_dir)
        if resume and ckpt.is_file():
            try:
                state = torch.load(ckpt, map_location="cpu", weights_only=True)
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
            except Exception as exc:
                raise ModelError(f"{ckpt}: cannot resume from checkpoint ({exc})") from None
            best_state = state["best_model"]
            best_metric = float(state["best_metric"])
            best_epoch = int(state["best_epoch"])
            bad_epochs = int(state["bad_epochs"])
            history = json.loads(state["history"])
            start_epoch = int(state["epoch"]) + 1
    elif resume:
        raise OptionError("resume=True needs a checkpoint_dir")

    n_batches = math.ceil(len(train_stream) / batch_size)
    t_start = time.perf_counter()
    stopped_early = False
    epoch = start_epoch - 1
    bar = tqdm(total=epochs, initial=start_epoch - 1, disable=not progress, desc="train", unit="epoch")
    for epoch in range(start_epoch, epochs + 1):
        if patience and bad_epochs >= patience:
            stopped_early = True
            epoch -= 1
            break
        t0 = time.perf_counter()
        nll = epoch > warmup
        if cosine:
            # A function of the epoch alone, so resumed runs follow the same schedule.
            scale = 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))
            for group in opt.param_groups:
                group["lr"] = lr * scale
        rng = np.random.default_rng([seed, epoch, 2])
        train_stream.epoch = epoch
        model.train()
        total, count = 0.0, 0
        inner = tqdm(
            _batches(train_stream, batch_size), total=n_batches, leave=False,
            disable=not progress, desc=f"epoch {epoch}", unit="batch",
        )
        for raw, xy in inner:
            normed, target = augment_batch(
                raw, xy, config.patch, rng if augment else None, noise=noise, sparse=sparse,
                garbage=garbage,
            )
            x = torch.from_numpy(normed[:, None]).to(dev)
            t = torch.from_numpy(target).to(dev)
            loss = _loss(model(x), t, nll, beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(raw)
            count += len(raw)
            inner.set_postfix(loss=f"{total / count:.4g}")
        inner.close()
        batches = val_batches if val_batches is not None else _batches(val_stream, 4096)
        val_loss, errs, _ = _evaluate(model, batches, dev, config.patch, nll, beta, sparse)
        row = {
            "epoch": epoch,
            "train_loss": total / max(count, 1),
            "val_loss": val_loss,
            "val_median_px": float(np.median(errs)) if len(errs) else math.nan,
            "val_p90_px": float(np.quantile(errs, 0.9)) if len(errs) else math.nan,
            "val_mean_px": float(np.mean(errs)) if len(errs) else math.nan,
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        # Judge on the mean pixel error (not the loss, whose meaning changes at warm-up end).
        metric = row["val_mean_px"] if len(errs) else row["train_loss"]
        if metric < best_metric:
            best_metric, best_epoch, bad_epochs = metric, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        bar.update(1)
        bar.set_postfix(loss=f"{row['train_loss']:.4g}", val_px=f"{row['val_median_px']:.3f}")
        if ckpt is not None:
            tmp = ckpt.with_name(ckpt.name + ".tmp")
            torch.save(
                {
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": opt.state_dict(),
                    "best_model": best_state,
                    "best_metric": best_metric,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "epoch": epoch,
                    "history": json.dumps(history),
                    "config": config.to_json(),
                },
                tmp,
            )
            os.replace(tmp, ckpt)
        if max_minutes is not None and time.perf_counter() - t_start > 60 * max_minutes:
            stopped_early = epoch < epochs
            break
    bar.close()

    model.load_state_dict(best_state)
    model.to(dev)
    # Out-of-distribution thresholds from the validation set of the best weights.
    batches = val_batches if val_batches is not None else _batches(val_stream, 4096)
    final, errs_all = calibrate_flags(model, batches, augment=augment, device=dev, sparse=sparse)
    model.config = final
    history_df = pd.DataFrame(history)
    summary = {
        "training": {
            "source": _describe(source),
            "epochs_run": int(epoch),
            "best_epoch": int(best_epoch),
            "seed": int(seed),
            "batch_size": int(batch_size),
            "lr": float(lr),
            "cosine": bool(cosine),
            "init": None if init_state is None else "given weights (fine-tuned)",
            "warmup_epochs": int(warmup),
            "beta": float(beta),
            "noise": float(noise),
            "sparse": float(sparse),
            "garbage": float(garbage),
            "config": dataclasses.asdict(config),
            "augment": bool(augment),
            "val_median_px": float(np.median(errs_all)),
            "val_p90_px": float(np.quantile(errs_all, 0.9)),
            "history": history,
        }
    }
    path = save_model(model.cpu(), out, extra=summary)
    return TrainResult(
        model_path=path,
        config_path=path.with_suffix(".json"),
        epochs_run=int(epoch),
        best_epoch=int(best_epoch),
        val_median_px=float(np.median(errs_all)),
        val_p90_px=float(np.quantile(errs_all, 0.9)),
        stopped_early=stopped_early,
        history=history_df,
        config=final,
    )


def calibrate_flags(
    model: BraggNN,
    batches,
    *,
    augment: bool = True,
    device: str | torch.device = "cpu",
    sparse: float = 0.0,
) -> tuple[BraggNNConfig, np.ndarray]:
    """Set the out-of-distribution thresholds of ``model.config`` from validation data.

    ``batches`` yields ``(raw, xy)`` as the training streams do (central crops are used).
    ``ood_sigma`` becomes the 99.5th percentile of the predicted 1-sigma error (so 0.5 %
    of in-distribution patches are flagged by it), ``min_snr`` the 0.1st percentile of
    :func:`~braggtrack.braggnn.patch_stats` SNR, and ``max_offset`` the 99.9th percentile
    of the smoothed maximum's distance from the centre (+1 px when shifts were augmented).
    ``sparse`` thresholds the same fixed share of the validation patches as training
    validation does (:func:`sparsify`); the SNR floor is taken from the other patches,
    since it does not apply to sparse ones.
    Returns the new config and the validation position errors (px).
    """
    from .braggnn import patch_stats, sparse_patches

    config = model.config
    patch = config.patch
    dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    errs, stds, snrs, offsets = [], [], [], []
    for i, (raw, xy) in enumerate(batches):
        raw = _val_sparsify(raw, sparse, i)
        _, e, sd = _evaluate(model, [(raw, xy)], dev, patch, True, 0.0)
        margin = (raw.shape[-1] - patch) // 2
        crop = raw[:, margin:margin + patch, margin:margin + patch]
        snr, off = patch_stats(crop)
        snr = np.where(sparse_patches(crop), np.nan, snr)
        errs.append(e)
        stds.append(sd)
        snrs.append(snr)
        offsets.append(off)
    errs_all = np.concatenate(errs) if errs else np.zeros(1)
    std_all = np.concatenate(stds) if stds else np.ones(1)
    snr_all = np.concatenate(snrs) if snrs else np.zeros(1)
    off_all = np.concatenate(offsets) if offsets else np.zeros(1)
    snr_all = snr_all[np.isfinite(snr_all)] if np.isfinite(snr_all).any() else np.zeros(1)
    final = dataclasses.replace(
        config,
        ood_sigma=float(max(np.quantile(std_all, 0.995), 0.05)),
        min_snr=float(np.quantile(snr_all, 0.001)),
        max_offset=float(min(np.ceil(np.quantile(off_all, 0.999)) + (MARGIN if augment else 0), patch // 2)),
    )
    return final, errs_all


def _describe(source) -> dict:
    d = {"type": type(source).__name__}
    for f in dataclasses.fields(source):
        v = getattr(source, f.name)
        if callable(v) or isinstance(v, pd.DataFrame):
            v = "<in memory>" if v is not None else None
        elif isinstance(v, os.PathLike):
            v = str(v)
        d[f.name] = v
    return d


def main(argv: list[str] | None = None) -> TrainResult:
    """``python -m braggtrack.train``: train from the simulator (reproduces the shipped model).

    The ``braggtrack train`` command of the CLI is the user-facing entry point; this one
    exists so that ``benchmarks/train_default_model.sh`` needs nothing but the package.
    Unlike ``braggtrack train`` it overwrites ``out``: the recipe rewrites its stage files
    and the shipped model whenever it is rerun or resumed.
    """
    import argparse

    ap = argparse.ArgumentParser(prog="python -m braggtrack.train", description=main.__doc__.splitlines()[0])
    ap.add_argument("out", help="weights file (.safetensors); overwritten if it exists")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--n-train", type=int, default=32768, help="simulated patches per epoch")
    ap.add_argument("--n-val", type=int, default=4096)
    ap.add_argument("--kinds", default=None, help="comma-separated peak kinds, repeats weighting "
                    "them (default: the six of simulate.KINDS; simulate.EXTRA_KINDS may be named)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--warmup-epochs", type=int, default=None)
    ap.add_argument("--channels", default="16,24,16")
    ap.add_argument("--dense", default="64,32")
    ap.add_argument("--nonlocal-block", action="store_true")
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--noise", type=float, default=0.03, help="augmentation noise, fraction of range")
    ap.add_argument("--init", default=None, help="start from these weights ('default': shipped)")
    ap.add_argument("--beta", type=float, default=0.5, help="beta of the beta-NLL loss")
    ap.add_argument("--sparse", type=float, default=0.0,
                    help="fraction of patches thresholded to zero background (frame-cache-like)")
    ap.add_argument("--garbage", type=float, default=0.0,
                    help="fraction of peak-free noise patches with random targets (teaches a large variance)")
    ap.add_argument("--symmetries", type=int, default=None,
                    help="test-time symmetry views of the saved model (1, 2, 4 or 8)")
    ap.add_argument("--noise-channel", action="store_true",
                    help="second input plane: patch noise relative to its range")
    ap.add_argument("--gated-centroid", action="store_true",
                    help="add a learned gate times the patch centroid to the network's centre")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    config = None if args.init else BraggNNConfig(
        channels=tuple(int(v) for v in args.channels.split(",")),
        dense=tuple(int(v) for v in args.dense.split(",")) if args.dense else (),
        nonlocal_block=args.nonlocal_block,
        noise_channel=args.noise_channel,
        gated_centroid=args.gated_centroid,
    )
    kinds = tuple(args.kinds.split(",")) if args.kinds else None
    result = train_model(
        SimulatorSource(n_train=args.n_train, n_val=args.n_val, kinds=kinds),
        args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        patience=args.patience, warmup_epochs=args.warmup_epochs, config=config,
        checkpoint_dir=args.checkpoint_dir, resume=args.resume, threads=args.threads,
        max_minutes=args.max_minutes, device=args.device, progress=not args.no_progress,
        noise=args.noise, init=args.init, sparse=args.sparse, beta=args.beta,
        garbage=args.garbage, symmetries=args.symmetries,
        noise_channel=True if (args.init and args.noise_channel) else None,
        # The recipe rewrites its stage files and the shipped model on every (resumed) run.
        force=True,
    )
    print(result.history.to_string(index=False))
    print(f"best epoch {result.best_epoch}: validation median {result.val_median_px:.4f} px, "
          f"p90 {result.val_p90_px:.4f} px -> {result.model_path}")
    return result


if __name__ == "__main__":
    main()
