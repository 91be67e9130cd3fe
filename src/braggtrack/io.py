"""Read series of area-detector frames, lazily, from the formats beamlines write.

:func:`open_frames` turns a path (HDF5/NeXus file, TIFF file, folder or glob of
single-frame files, GE/EDF/CBF/MarCCD/... file, ``.npy`` stack, HEXRD frame-cache
``.npz``) or an in-memory array into a :class:`FrameSeries`: a sequence of 2-D frames
that reads one frame from disk when it is indexed, so that a series of any size is
processed with a few frames in memory.

The format libraries do the decoding: h5py (+ hdf5plugin for bitshuffle, LZ4, Blosc,
... filters), tifffile, fabio and numpy.  What is hand-written here is only what they
do not provide: locating the frame stack in an HDF5 file (and joining an Eiger master's
``data_NNNNNN`` files into one series), the HEXRD frame-cache
layout (a documented sparse ``.npz`` that has no reader outside HEXRD), the safety
checks on HDF5 links, and the translation of every library's exceptions into
one-line :class:`~braggtrack.errors.InputFileError` messages that name the file.

Dtypes: frames keep their stored dtype, except ``int8`` and ``float16`` (converted to
``float32``, which numba kernels and numpy reductions handle without overflow or
precision surprises), ``bool`` (converted to ``uint8``, for masks) and HDF5 datasets
with CF ``scale_factor``/``add_offset`` attributes (``float32`` values, the attributes
applied).  Complex, string and structured data are refused, and so is a frame of a
folder series whose dtype the series' dtype (the first file's) cannot hold without
changing values.  NaN and inf pixels are returned as stored;
:mod:`braggtrack.preprocess` masks them.

Safety (paths in input files never lead outside what the user named): an HDF5 external
link, external-storage dataset, virtual dataset or OME-TIFF companion file is only
followed when its path, as stored and normalised (``..`` climbing out counts, symlinks
do not: a symlink in the folder is the user's doing), lies inside the directory of the
file the user named (or below it); otherwise :func:`open_frames` raises
:class:`~braggtrack.errors.InputFileError`.

Data that was never written: HDF5 returns its fill value (zeros) without an error for a
virtual dataset's missing source file, for the part of an external raw file beyond its
end and for chunks an aborted acquisition never wrote.  The first two refuse the series
when it is opened; a frame whose chunks were never written raises
:class:`~braggtrack.errors.FrameReadError` when it is read (a run skips it and says so).
"""

from __future__ import annotations

import base64
import bisect
import glob as _glob
import hashlib
import logging
import mmap
import os
import re
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FrameReadError, InputFileError, OptionError

__all__ = [
    "FrameSeries",
    "open_frames",
    "as_series",
    "load_image",
    "load_mask_file",
    "load_flat_file",
    "file_checksum",
    "HDF5_SUFFIXES",
    "TIFF_SUFFIXES",
    "FABIO_SUFFIXES",
    "MAX_FRAME_PIXELS",
]

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".nexus", ".cxi", ".he5")
TIFF_SUFFIXES = (".tif", ".tiff")
FABIO_SUFFIXES = (
    ".edf", ".cbf", ".mccd", ".mar3450", ".mar2300", ".img", ".sfrm", ".ge", ".ge1", ".ge2",
    ".ge3", ".ge4", ".ge5", ".gesum", ".sum", ".avg", ".raw", ".kcd", ".pnm", ".xsm",
    ".spr", ".esperanto", ".mrc", ".gfrm", ".eiger",
)
#: Suffixes that make a file part of a folder or glob series (one frame per file).
FOLDER_SUFFIXES = TIFF_SUFFIXES + FABIO_SUFFIXES + (".npy",)

#: Frames with more pixels than this are refused: a corrupt header claiming a huge frame
#: must not make the reader allocate (and zero-fill) tens of gigabytes.
MAX_FRAME_PIXELS = 1 << 28

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK"
_NEXUS_PATHS = ("/entry/data/data", "/entry/instrument/detector/data")
_GLOB_CHARS = set("*?[")
#: More than this fraction of bad pixels in a mask file is most likely an inverted mask.
_MASK_WARN_FRACTION = 0.5
# Warnings reach command-line users as one "warning: ..." line through this logger
# (as skipped frames do, see braggtrack.pipeline); API users see them on stderr.
_log = logging.getLogger("braggtrack")


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    name = type(exc).__name__
    return f"{name}: {msg}" if msg else name


def _output_dtype(dtype: np.dtype, where: object) -> np.dtype:
    """Dtype that frames of stored dtype ``dtype`` are returned in (see module docs)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return np.dtype(np.uint8)
    if dtype.kind == "c":
        raise InputFileError(where, f"complex data ({dtype}) is not detector counts")
    if dtype.kind not in "iuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise InputFileError(where, f"non-numeric data ({dtype}) cannot be read as frames")
    if dtype == np.int8 or dtype == np.float16 or dtype.itemsize > 8:
        return np.dtype(np.float32)
    return dtype.newbyteorder("=")


def _joins_series(dtype: np.dtype, stored: np.dtype, out: np.dtype) -> bool:
    """Whether a frame of ``dtype`` can be returned in a series stored as ``stored`` and
    returned as ``out`` (:func:`_output_dtype`): it is the stored dtype (converted as
    documented: int8, float16, bool, ...) or casts to ``out`` without changing any value.
    Any other cast (int32 counts above 65535 into uint16, negative floats into unsigned)
    would wrap values into wrong numbers without an error."""
    return np.dtype(dtype) == stored or np.can_cast(dtype, out, "safe")


def _check_frame_shape(shape: tuple[int, ...], where: object) -> tuple[int, int]:
    if len(shape) != 2:
        raise InputFileError(where, f"frames must be 2-D, got shape {tuple(shape)}")
    h, w = (int(s) for s in shape)
    if h == 0 or w == 0:
        raise InputFileError(where, f"zero-sized frames (shape {h} x {w})")
    if h * w > MAX_FRAME_PIXELS:
        raise InputFileError(where, f"implausible frame size {h} x {w} (corrupt header?)")
    return h, w


def _stack_shape(shape: tuple[int, ...], where: object, what: str) -> tuple[int, int, int]:
    """(n, H, W) of a 2-D frame or 3-D stack, or a one-line error."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        n, fs = 1, shape
    elif len(shape) == 3:
        n, fs = shape[0], shape[1:]
    else:
        raise InputFileError(
            where, f"{what} is {len(shape)}-D (shape {shape}); need a 2-D frame or a 3-D stack"
        )
    if n == 0:
        raise InputFileError(where, f"{what} holds no frames (shape {shape})")
    h, w = _check_frame_shape(fs, where)
    return n, h, w


def _natural_key(path: Path) -> list:
    parts = re.split(r"(\d+)", str(path))
    return [int(p) if p.isdigit() else p.lower() for p in parts]


def _read_magic(path: Path, n: int = 8) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError as exc:
        raise InputFileError(path, f"cannot be read ({_first_line(exc)})") from None


def _lexical_root(path: Path) -> Path:
    """The folder of ``path`` as named (absolute, normalised, symlinks kept)."""
    return Path(os.path.normpath(os.path.abspath(path))).parent


def _inside(target: Path, root: Path) -> bool:
    """Whether ``target`` names a path inside folder ``root``, compared as written.

    Lexically (``..`` resolved against the names, symlinks not followed): a path stored
    in a file may not climb out of the folder the user named (``../x.h5``, ``/abs/x.h5``),
    but a symlink that the user placed in that folder is the user's choice, as it is
    for a folder of symlinked TIFF files.  HDF5 itself opens relative link targets
    against the name the file was opened by, not its resolved path.
    """
    try:
        Path(os.path.normpath(os.path.abspath(target))).relative_to(
            os.path.normpath(os.path.abspath(root))
        )
    except (ValueError, OSError):
        return False
    return True


# --------------------------------------------------------------------------------------
# backends: each knows its frame count, frame shape, stored dtype and reads frame i
# --------------------------------------------------------------------------------------


class _Backend:
    """One storage layout.  Subclasses open their handle lazily and drop it when pickled."""

    path: Path | None = None
    n: int
    shape: tuple[int, int]
    stored_dtype: np.dtype
    source: str
    frame_names: list[str] | None = None
    files: list[Path]
    meta: dict

    def read(self, i: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_range(self, start: int, stop: int) -> np.ndarray | None:
        """Contiguous block of frames in one call, or None when not faster than one by one."""
        return None

    def written(self, i: int) -> bool:
        """Whether frame ``i`` has been stored (False only where the format can tell: an
        HDF5 frame whose chunks were never written)."""
        return True

    def close(self) -> None:
        pass

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"] = None
        return state


class _ArrayBackend(_Backend):
    def __init__(self, array: np.ndarray, name: str = "<in-memory array>") -> None:
        array = np.asarray(array)
        _output_dtype(array.dtype, name)
        n, h, w = _stack_shape(array.shape, name, "array")
        self._array = array.reshape(n, h, w)
        self.n, self.shape, self.stored_dtype = n, (h, w), array.dtype
        self.source = f"in-memory array ({n} x {h} x {w} {array.dtype})"
        self.files = []
        self.meta = {}
        self.name = name

    def read(self, i: int) -> np.ndarray:
        return np.array(self._array[i])

    def read_range(self, start: int, stop: int) -> np.ndarray:
        return np.array(self._array[start:stop])


class _NpyBackend(_Backend):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = None
        arr = self._open()
        _output_dtype(arr.dtype, path)
        self.n, h, w = _stack_shape(arr.shape, path, "the array")
        self.shape, self.stored_dtype = (h, w), arr.dtype
        self.source = f"npy {path} ({self.n} x {h} x {w} {arr.dtype}, memory-mapped)"
        self.files = [path]
        self.meta = {}

    def _open(self) -> np.ndarray:
        if self._handle is None:
            try:
                arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except Exception as exc:  # numpy raises ValueError/OSError/EOFError/... on bad files
                raise InputFileError(self.path, f"not a readable .npy file ({_first_line(exc)})") from None
            if not isinstance(arr, np.ndarray):
                raise InputFileError(self.path, "not a .npy array file")
            self._handle = arr.reshape((1, *arr.shape)) if arr.ndim == 2 else arr
        return self._handle

    def read(self, i: int) -> np.ndarray:
        return np.array(self._open()[i])

    def read_range(self, start: int, stop: int) -> np.ndarray:
        return np.array(self._open()[start:stop])

    def close(self) -> None:
        self._handle = None


class _FrameCacheBackend(_Backend):
    """HEXRD frame-cache ``.npz``: keys shape, nframes, dtype, and {i}_row/{i}_col/{i}_data."""

    def __init__(self, path: Path, key: str | None = None) -> None:
        self.path = path
        self._handle = None
        self.key = key
        z = self._open()
        files = set(z.files)
        self.files = [path]
        self.meta = {}
        if key is None and {"shape", "nframes"} <= files:
            self.kind = "framecache"
            try:
                shape = tuple(int(s) for s in np.asarray(z["shape"]).ravel())
                n = int(np.asarray(z["nframes"]).ravel()[0])
                dt = z["dtype"] if "dtype" in files else np.array("float32")
                dt = np.asarray(dt).ravel()[0]
                dt = np.dtype(dt.decode() if isinstance(dt, bytes) else str(dt))
            except InputFileError:
                raise
            except Exception as exc:
                raise InputFileError(path, f"bad frame-cache header ({_first_line(exc)})") from None
            _output_dtype(dt, path)
            if len(shape) != 2 or n < 0 or 3 * n > len(files):
                raise InputFileError(
                    path, f"frame cache header (shape {shape}, {n} frames) does not match its "
                    f"{len(files)} arrays"
                )
            self.n, h, w = _stack_shape((n, *shape), path, "the frame cache")
            missing = [
                f"{i}_{k}" for i in range(self.n) for k in ("row", "col", "data")
                if f"{i}_{k}" not in files
            ]
            if missing:
                raise InputFileError(
                    path, f"frame cache of {self.n} frames lacks {len(missing)} keys (first: {missing[0]})"
                )
            self.shape, self.stored_dtype = (h, w), dt
            if "omega" in files:
                try:
                    omega = np.asarray(z["omega"], dtype=np.float64)
                    if omega.shape[:1] == (self.n,):
                        self.meta["omega"] = omega
                except Exception:  # optional metadata: a bad omega table is ignored
                    pass
            self.source = f"HEXRD frame-cache npz {path} ({self.n} x {h} x {w} {dt}, sparse)"
        else:
            # An ordinary .npz: one array (or the one named by ``dataset=``) is the stack.
            arrays = sorted(files)
            if key is None:
                if len(arrays) != 1:
                    raise InputFileError(
                        path,
                        "not a frame-cache .npz and holds several arrays "
                        f"({', '.join(arrays[:10])}); name one with --dataset (API: dataset=)",
                    )
                key = arrays[0]
            if key not in files:
                raise InputFileError(
                    path, f"no array {key!r}; arrays here: {', '.join(arrays[:10]) or 'none'}"
                )
            self.kind = "array"
            self.key = key
            try:
                arr = z[key]
            except Exception as exc:
                raise InputFileError(path, f"array {key!r} unreadable ({_first_line(exc)})") from None
            _output_dtype(arr.dtype, path)
            self.n, h, w = _stack_shape(arr.shape, path, f"array {key!r}")
            self.shape, self.stored_dtype = (h, w), arr.dtype
            self._array = arr.reshape(self.n, h, w)
            self.source = f"npz {path}:{key} ({self.n} x {h} x {w} {arr.dtype})"

    def _open(self):
        if self._handle is None:
            try:
                self._handle = np.load(self.path, allow_pickle=False)
            except Exception as exc:
                raise InputFileError(self.path, f"not a readable .npz file ({_first_line(exc)})") from None
            if not hasattr(self._handle, "files"):
                raise InputFileError(self.path, "not an .npz archive")
        return self._handle

    def read(self, i: int) -> np.ndarray:
        if self.kind == "array":
            return np.array(self._array[i])
        z = self._open()
        try:
            row = np.asarray(z[f"{i}_row"]).ravel()
            col = np.asarray(z[f"{i}_col"]).ravel()
            data = np.asarray(z[f"{i}_data"]).ravel()
        except Exception as exc:
            raise FrameReadError(self.path, i, f"sparse arrays unreadable ({_first_line(exc)})") from None
        if not (row.size == col.size == data.size):
            raise FrameReadError(self.path, i, "row, col and data arrays differ in length")
        if row.size and (row.dtype.kind not in "iu" or col.dtype.kind not in "iu"):
            raise FrameReadError(self.path, i, "row/col indices are not integers")
        h, w = self.shape
        if row.size and (row.min() < 0 or row.max() >= h or col.min() < 0 or col.max() >= w):
            raise FrameReadError(self.path, i, f"pixel indices outside the {h} x {w} frame")
        if data.dtype.kind not in "iufb":
            raise FrameReadError(self.path, i, f"data of dtype {data.dtype} is not numeric")
        img = np.zeros(self.shape, dtype=self.stored_dtype)
        img[row, col] = data
        return img

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = None


def _tiff_chain_break(tif, n_pages: int) -> str | None:
    """Why the chain of page headers (IFDs) stops before its end, or None.

    tifffile ends the page list at a "next page" offset beyond the end of the file (or an
    unreadable header) and only logs it; the pages after it would silently be missing.
    The last page that tifffile found must end the chain (next-page offset 0).
    """
    fmt, fh = tif.tiff, tif.filehandle
    try:
        offset = int(tif.pages[n_pages - 1].offset)
        fh.seek(offset)
        (tagno,) = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))
        fh.seek(offset + fmt.tagnosize + tagno * fmt.tagsize)
        (nxt,) = struct.unpack(fmt.offsetformat, fh.read(fmt.offsetsize))
    except (struct.error, OSError, IndexError, ValueError):
        return f"the header of page {n_pages - 1} is unreadable (truncated file?)"
    if nxt == 0:
        return None
    if nxt >= fh.size:
        return (
            f"page {n_pages} lies beyond the end of the file (offset {nxt}, file size "
            f"{fh.size}); only {n_pages} page{'s' if n_pages != 1 else ''} readable "
            "(truncated file?)"
        )
    return (
        f"the header of page {n_pages} (offset {nxt}) is unreadable; only {n_pages} "
        f"page{'s' if n_pages != 1 else ''} readable (corrupt file?)"
    )


def _tiff_page_described(page) -> str:
    shape = tuple(int(s) for s in page.shape)
    spp = int(getattr(page, "samplesperpixel", 1))
    what = " x ".join(str(s) for s in shape)
    return f"{what} {np.dtype(page.dtype)}" + (f" ({spp} samples per pixel)" if spp > 1 else "")


class _TiffBackend(_Backend):
    """A TIFF file: the pages of its one image series, or every page.

    tifffile groups pages into series by their metadata; a stack written page by page
    (``TiffWriter.write`` per frame) is one series per page, of which the first alone
    would be one frame of many.  So a file of several series is read page by page, all
    pages one frame each, and refused when they differ in shape or dtype.  A series
    stored as one header plus contiguous data (tifffile's ``truncate=True``, ImageJ's
    virtual stacks) is read at its data offsets.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = None
        # "series": tifffile series 0; "pages": every page; "contiguous"; "multifile": the
        # pages of a multi-file OME-TIFF series, each read from its own file
        self._mode = "series"
        self._offset = 0
        self._companions: list[Path] = []
        self._planes: list[tuple[int, int]] = []  # multi-file OME-TIFF: (file, page)
        self._extra: dict[int, Any] = {}  # open companion files
        tif = self._open()
        try:
            self._inspect(tif)
        except InputFileError:
            self.close()
            raise
        self.files = [path, *self._companions]
        self.meta = {}

    def _inspect(self, tif) -> None:
        """Frame count, shape, dtype and reading mode, or a one-line error."""
        path = self.path
        try:
            all_series = list(tif.series)
            n_pages = len(tif.pages)  # reads every page header (not the data)
            page = tif.pages.first
            page_shape = tuple(page.shape)
            dtype = np.dtype(page.dtype)
            spp = int(getattr(page, "samplesperpixel", 1))
            imagej = tif.imagej_metadata if tif.is_imagej else None
        except Exception as exc:
            raise InputFileError(path, f"not a readable TIFF file ({_first_line(exc)})") from None
        if spp > 1:
            raise InputFileError(path, f"colour TIFF ({spp} samples per pixel), not detector counts")
        _output_dtype(dtype, path)
        h, w = _check_frame_shape(page_shape, path)
        if n_pages == 0 or not all_series:
            raise InputFileError(path, "TIFF holds no frames")

        def frames_of(series) -> int:
            size = int(np.prod(series.shape, dtype=np.int64))
            return size // (h * w) if size % (h * w) == 0 else len(series)

        # What the metadata promises, against which the pages found are checked: tifffile
        # drops what a truncated file lacks (a series of 6 becomes one page) and only logs.
        promised = sum(frames_of(s) for s in all_series)
        if imagej:
            try:
                promised = max(promised, int(imagej.get("images", 1)))
            except (TypeError, ValueError):
                pass
        if len(all_series) == 1:
            series = all_series[0]
            self._check_axes(series)
            n = frames_of(series)
            spread = self._companion_files(tif, series)
            if spread:
                # A multi-file OME-TIFF: the series' pages lie in this and other files;
                # each frame is read from its file's page (tifffile's series reads pages
                # of closed companion files, warning each time).
                self._mode = "multifile"
                n = len(self._planes)
                self._companions = spread
            elif n > n_pages:
                # One header for the whole stack: the frames lie one after the other.
                offset = series.dataoffset
                frame_bytes = h * w * dtype.itemsize
                if (
                    offset is not None and n == promised
                    and offset + n * frame_bytes <= tif.filehandle.size
                ):
                    self._mode, self._offset = "contiguous", int(offset)
                else:
                    n = n_pages
        else:
            # Several series (one per page when written page by page): every page a frame.
            self._mode = "pages"
            n = n_pages
            self._check_pages(tif, n_pages)
        if promised > n:
            raise InputFileError(
                path,
                f"TIFF metadata promises {promised} frames but only {n} "
                f"{'is' if n == 1 else 'are'} readable (truncated file?)",
            )
        broken = _tiff_chain_break(tif, n_pages)
        if broken:
            raise InputFileError(path, broken)
        self.n, self.shape, self.stored_dtype = n, (h, w), dtype
        self._file_dtype = dtype.newbyteorder(tif.byteorder)
        spread = f", {len(self._companions) + 1} files" if self._companions else ""
        self.source = f"TIFF {path} ({self.n} x {h} x {w} {dtype}{spread})"

    def _check_axes(self, series) -> None:
        """Refuse a hyperstack: a series with more than one axis besides the frame's two.

        An ImageJ or OME hyperstack (axes ``TCYX``, ``TZCYX``, ...) stores its planes
        interleaved (frame 0 channel 0, frame 0 channel 1, ...); read plane by plane, the
        channels would become frames of the series.  Axes of length 1 do not count, and
        one extra axis of any name (``TYX``, ``ZYX``, ``IYX``, ``QYX``) is the frame axis.
        """
        axes = str(getattr(series, "axes", "") or "")
        shape = tuple(int(v) for v in series.shape)
        if len(axes) != len(shape):
            return
        extra = [(a, v) for a, v in zip(axes, shape, strict=True) if a not in "YXS" and v > 1]
        if len(extra) <= 1:
            return
        names = {"T": "time", "C": "channel", "Z": "depth", "I": "image", "Q": "unknown",
                 "R": "tile", "H": "lifetime", "E": "lambda", "A": "angle", "P": "phase"}
        listed = ", ".join(f"{a} ({names.get(a, 'other')}, {v})" for a, v in extra)
        n = int(np.prod([v for _, v in extra]))
        raise InputFileError(
            self.path,
            f"TIFF hyperstack with axes {axes} ({' x '.join(str(v) for v in shape)}): "
            f"{len(extra)} axes besides the frame's ({listed}) would be read interleaved "
            f"as {n} frames; save a stack with one axis besides Y and X (e.g. one channel)",
        )

    def _companion_files(self, tif, series) -> list[Path]:
        """Other files holding pages of ``series`` (a multi-file OME-TIFF), in page order.

        tifffile fills the pages of a missing companion file with zeros (and only logs),
        so a missing file is named and refused; so is one outside this file's folder.
        """
        try:
            xml = (tif.ome_metadata or "") if tif.is_ome else ""
        except Exception:  # noqa: BLE001 - unreadable OME metadata: read as one file
            xml = ""
        named = sorted(set(re.findall(r'FileName="([^"]+)"', xml)))
        if not [f for f in named if f != self.path.name]:
            return []  # one file (listing each page of a large stack is not free)
        pages = list(series.pages)
        own = os.path.normcase(os.path.abspath(self.path))
        files: list[Path] = []
        planes: list[tuple[int, int]] = []
        missing = 0
        for page in pages:
            if page is None:
                missing += 1
                continue
            try:
                f, index = Path(page.parent.filehandle.path), int(page.index)
            except (AttributeError, TypeError, ValueError):
                return []
            if os.path.normcase(os.path.abspath(f)) == own:
                planes.append((0, index))
                continue
            if f not in files:
                files.append(f)
            planes.append((files.index(f) + 1, index))
        if not files and not missing:
            return []
        if missing:
            absent = [f for f in named if not (self.path.parent / f).is_file()]
            which = f"companion file {', '.join(absent)} missing" if absent else "planes missing"
            raise InputFileError(
                self.path,
                f"multi-file OME-TIFF: {which}; {missing} of its {len(pages)} planes "
                "cannot be read",
            )
        root = _lexical_root(self.path)
        for f in files:
            if not _inside(f, root):
                raise InputFileError(
                    self.path, f"OME-TIFF companion file {f} lies outside {root}; refused"
                )
        self._planes = planes
        return files

    def _file_handle(self, k: int):
        """TiffFile of this file (``k`` 0) or of companion file ``k`` of a multi-file
        OME-TIFF (opened on first use, without parsing its own series)."""
        if k == 0:
            return self._open()
        import tifffile

        handle = self._extra.get(k)
        if handle is None:
            f = self._companions[k - 1]
            try:
                handle = tifffile.TiffFile(f)
            except Exception as exc:
                raise InputFileError(f, f"not a readable TIFF file ({_first_line(exc)})") from None
            handle.pages.cache = False
            handle.pages.useframes = False
            self._extra[k] = handle
        return handle

    def _check_pages(self, tif, n_pages: int) -> None:
        """Every page must be a frame like page 0 (headers only: no data is read)."""
        pages = tif.pages
        pages.cache = False
        pages.useframes = False  # each page's own tags, not those of a key frame
        try:
            first = pages[0]
            ref = (tuple(first.shape), np.dtype(first.dtype), int(first.samplesperpixel))
            for k in range(1, n_pages):
                page = pages[k]
                if (tuple(page.shape), np.dtype(page.dtype), int(page.samplesperpixel)) != ref:
                    raise InputFileError(
                        self.path,
                        f"page {k} is {_tiff_page_described(page)}, page 0 "
                        f"{_tiff_page_described(first)}; the pages of a frame series must "
                        "share shape and dtype",
                    )
        except InputFileError:
            raise
        except Exception as exc:
            raise InputFileError(
                self.path, f"not a readable TIFF file ({_first_line(exc)})"
            ) from None

    def _open(self):
        if self._handle is None:
            import tifffile

            try:
                self._handle = tifffile.TiffFile(self.path)
            except Exception as exc:
                raise InputFileError(self.path, f"not a readable TIFF file ({_first_line(exc)})") from None
            if self._mode == "pages":
                self._handle.pages.cache = False
                self._handle.pages.useframes = False
        return self._handle

    def read(self, i: int) -> np.ndarray:
        try:
            tif = self._open()
            if self._mode == "pages":
                arr = tif.pages[i].asarray()
            elif self._mode == "multifile":
                k, index = self._planes[i]
                handle = self._file_handle(k)
                if k == 0:
                    handle.pages.useframes = False
                arr = handle.pages[index].asarray()
            elif self._mode == "contiguous":
                h, w = self.shape
                frame_bytes = h * w * self._file_dtype.itemsize
                arr = tif.filehandle.read_array(
                    self._file_dtype, h * w, offset=self._offset + i * frame_bytes
                ).reshape(h, w)
            else:
                arr = tif.asarray(key=i, series=0)
        except InputFileError as exc:
            raise FrameReadError(self.path, i, exc.problem) from None
        except Exception as exc:
            raise FrameReadError(self.path, i, _first_line(exc)) from None
        arr = np.asarray(arr)
        if arr.shape != self.shape:
            arr = arr.reshape(-1, *self.shape)[0] if arr.size % (self.shape[0] * self.shape[1]) == 0 and arr.size else arr
        if arr.shape != self.shape:
            raise FrameReadError(self.path, i, f"page shape {arr.shape} differs from {self.shape}")
        return arr

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = None
        for handle in self._extra.values():
            handle.close()
        self._extra = {}

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_extra"] = {}
        return state


_FABIO_DIM_KEYS = (
    ("Dim_1", "Dim_2"),
    ("X-Binary-Size-Fastest-Dimension", "X-Binary-Size-Second-Dimension"),
    ("NumberOfColsInFrame", "NumberOfRowsInFrame"),
)


_CBF_BINARY_STARTER = b"\x0c\x1a\x04\xd5"


def _cbf_has_binary_section(path: Path) -> bool:
    """The binary marker follows the ``_array_data.data`` block, where fabio looks for it."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    block = data.find(b"_array_data.data")
    return data.find(_CBF_BINARY_STARTER, max(block, 0)) >= 0


def _is_cbf(path: Path) -> bool:
    return path.suffix.lower() == ".cbf" or _read_magic(path, 6) == b"###CBF"


def _safe_cbf_image():
    """A fabio CbfImage whose search for the binary section stops at the end of the file,
    and that records whether the binary section matches its Content-MD5.

    fabio (2026.6) appends ``read(PADDING)`` to its buffer until the binary-section marker
    appears, which never ends on a damaged file whose marker lies outside that buffer.
    On a checksum mismatch it only logs "Checksum of binary data mismatch" and decodes
    the damaged bytes into a frame; ``md5_mismatch`` lets the reader refuse that frame.
    """
    from fabio.cbfimage import CbfImage

    class _SafeCbfImage(CbfImage):
        md5_mismatch = False

        def read(self, fname, frame=None, check_MD5=True, only_raw=False):
            # The checksum is compared in read_raw_data, once, instead of fabio's log line.
            return super().read(fname, frame, check_MD5=False, only_raw=only_raw)

        def read_raw_data(self, infile):
            raw = super().read_raw_data(infile)
            expected = str(self.header.get("Content-MD5", "")).strip()
            # As fabio computes it: base64 of the MD5 digest of the (compressed) binary data.
            self.md5_mismatch = bool(expected) and (
                base64.b64encode(hashlib.md5(raw).digest()).decode() != expected
            )
            return raw

        def _read_binary_section_header(self, inStream):
            if self.cbs is None:
                raise ValueError("no binary section")
            if self.cbs.find(self.STARTER) < 0:
                self.cbs += inStream.read()
                if self.cbs.find(self.STARTER) < 0:
                    raise ValueError("no binary section marker (truncated?)")
            return super()._read_binary_section_header(inStream)

    return _SafeCbfImage()


def _fabio_precheck(path: Path, cbf: bool) -> None:
    """Checks fabio does not do on damaged files.

    - fabio (2026.6) loops forever on a CBF file whose binary section marker is missing
      (a truncated file), so the marker must be present before fabio sees the file;
    - a header that claims an implausibly large frame is refused before fabio
      allocates it.
    """
    import fabio

    if cbf and not _cbf_has_binary_section(path):
        raise InputFileError(path, "not a readable CBF file (no binary section; truncated?)")
    try:
        if cbf:
            header = dict(_safe_cbf_image().readheader(str(path)).header)
        else:
            header = dict(fabio.openheader(str(path)).header)
    except Exception:
        return  # fabio.open below gives the real diagnosis
    for kx, ky in _FABIO_DIM_KEYS:
        try:
            nx, ny = int(float(header[kx])), int(float(header[ky]))
        except (KeyError, TypeError, ValueError, OverflowError):
            continue
        if nx < 0 or ny < 0 or nx * ny > MAX_FRAME_PIXELS:
            raise InputFileError(path, f"implausible frame size {ny} x {nx} in header (corrupt?)")


def _fabio_open(path: Path):
    import fabio

    cbf = _is_cbf(path)
    _fabio_precheck(path, cbf)
    try:
        img = _safe_cbf_image().read(str(path)) if cbf else fabio.open(str(path))
        data = None if img is None else getattr(img, "data", None)
    except Exception as exc:  # fabio raises many types (and MemoryError) on damaged files
        if "GE file size is incorrect" in str(exc):
            # fabio's check of a GE file with a blanked header: not header + whole frames
            raise InputFileError(
                path, "GE file is not a header plus whole 2048 x 2048 frames (truncated file?)"
            ) from None
        raise InputFileError(path, f"not a readable detector image ({_first_line(exc)})") from None
    if data is None:
        raise InputFileError(path, "not a readable detector image (no data)")
    return img


def _edf_incomplete(img, i: int, path: Path) -> str | None:
    """Why frame ``i`` of an EDF file lacks data bytes (truncated file), or None.

    fabio (2026.6) pads a short EDF data block with zeros and only logs "Data stream is
    incomplete", so a truncated frame would be processed as a frame of zeros.  Its
    header parser flags a data block that runs past the end of the file; a block that
    its header declares shorter than the frame needs is caught by comparing sizes.
    """
    from fabio.edfimage import EdfImage

    if not isinstance(img, EdfImage):
        return None
    frames = getattr(img, "_frames", None) or []
    if i >= len(frames):
        return None
    frame = frames[i]
    start, size, blob = frame.start, frame.size, frame.blobsize
    # Sizes in bytes are only comparable for a raw block inside this (uncompressed) file.
    raw = (
        frame._data_compression is None and frame.bfname is None
        and path.suffix.lower() not in (".gz", ".bz2", ".z")
        and all(isinstance(v, int) for v in (start, size, blob))
    )
    if raw:
        try:
            available = min(blob, max(path.stat().st_size - start, 0))
        except OSError:
            available = size
        if available < size:
            return f"EDF data block incomplete: {available} of {size} bytes (truncated file?)"
    if getattr(frame, "incomplete_data", False):
        return "EDF data block incomplete (truncated file?)"
    return None


def _raw_layout(img) -> tuple[int, np.dtype, int, int | None] | None:
    """Where the frames of a fixed-frame raw file lie, or None for other formats.

    (offset of frame 0, dtype as stored, number of frames the header declares, end of
    the frame data or None for the end of the file).  GE and SPE files are a header
    followed by frames of one size; fabio takes the frame count from the header alone
    (SPE: not at all, one frame is read), so frames the header does not count, or
    counts but the file lacks, would go unnoticed.
    """
    from fabio.GEimage import GeImage
    from fabio.speimage import SpeImage

    header = img.header
    try:
        if isinstance(img, GeImage):
            depth = int(header["ImageDepthInBits"])
            dtype = np.dtype(GeImage.BITDEPTH_TO_DATATYPES[depth]).newbyteorder("<")
            offset = int(header["StandardHeaderSizeInBytes"]) + int(header["UserHeaderSizeInBytes"])
            return offset, dtype, int(header["NumberOfFrames"]), None
        if isinstance(img, SpeImage):
            dtype = np.dtype(SpeImage.DATA_TYPES[int(header["data_type"])]).newbyteorder("<")
            xml = int(getattr(img, "xml_offset", 0) or 0)  # SPE 3: an XML footer follows
            return 4100, dtype, int(header["num_frames"]), xml or None
    except (KeyError, TypeError, ValueError):
        return None
    return None


def _ge_header_only(path: Path):
    """A fabio GeImage of a GE file whose header declares 0 frames, or None.

    fabio refuses to read such a file ("Bad image number"); its frames are read at their
    offsets instead (:class:`_FabioBackend`), so only the header is needed.  ``data`` is
    a zero frame giving the frame shape and dtype.
    """
    from fabio.GEimage import GeImage

    img = GeImage()
    try:
        with open(path, "rb") as fh:
            img._readheader(fh)
        header = img.header
        if int(header["NumberOfFrames"]) != 0:
            return None
        dtype = GeImage.BITDEPTH_TO_DATATYPES[int(header["ImageDepthInBits"])]
        rows, cols = int(header["NumberOfRowsInFrame"]), int(header["NumberOfColsInFrame"])
        if rows * cols > MAX_FRAME_PIXELS:
            return None
    except Exception:  # noqa: BLE001 - not a GE file: fabio's error stands
        return None
    img.data = np.zeros((rows, cols), dtype)
    return img


class _FabioBackend(_Backend):
    """GE, EDF, CBF, MarCCD, ... through fabio; multi-frame files via fabio's getframe,
    GE and SPE frames at their offsets (see :func:`_raw_layout`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = None
        self._raw: tuple[int, np.dtype] | None = None
        try:
            img = self._open()
        except InputFileError:
            img = _ge_header_only(path)
            if img is None:
                raise
        try:
            n = int(getattr(img, "nframes", 1) or 1)
            data = np.asarray(img.data)
        except Exception as exc:
            raise InputFileError(path, f"not a readable detector image ({_first_line(exc)})") from None
        _output_dtype(data.dtype, path)
        h, w = _check_frame_shape(data.shape, path)
        layout = _raw_layout(img)
        if layout is not None:
            n = self._raw_frames(layout, (h, w))
            data = data.astype(layout[1].newbyteorder("="), copy=False)
        self.n, self.shape, self.stored_dtype = n, (h, w), data.dtype
        self.format = type(img).__name__
        self.source = f"{self.format} (fabio) {path} ({n} x {h} x {w} {data.dtype})"
        self.files = [path]
        self.meta = {}

    def _raw_frames(self, layout: tuple[int, np.dtype, int, int | None],
                    shape: tuple[int, int]) -> int:
        """Frame count of a raw file: the header's, checked against the file's size."""
        offset, dtype, declared, end = layout
        frame_bytes = shape[0] * shape[1] * dtype.itemsize
        try:
            size = self.path.stat().st_size
        except OSError as exc:
            raise InputFileError(self.path, f"cannot be read ({_first_line(exc)})") from None
        end = size if end is None else min(end, size)
        held = max(end - offset, 0) // frame_bytes
        what = f"{shape[0]} x {shape[1]} {dtype.newbyteorder('=')}"
        if declared > held:
            raise InputFileError(
                self.path,
                f"truncated: the header declares {declared} frames of {what} but the file "
                f"({size} bytes) holds data for {held}",
            )
        n = declared
        if declared <= 0:
            if held == 0:
                raise InputFileError(self.path, "holds no frames (header: 0 frames, no data)")
            n = held
            _log.warning(
                "%s: the header declares %d frames; reading the %d frames of %s that the "
                "file size implies", self.path, declared, held, what,
            )
        elif held > declared:
            _log.warning(
                "%s: the file holds data for %d frames of %s but its header declares %d; "
                "reading %d", self.path, held, what, declared, declared,
            )
        self._raw = (offset, dtype)
        return n

    def _read_raw(self, i: int) -> np.ndarray:
        offset, dtype = self._raw
        h, w = self.shape
        frame_bytes = h * w * dtype.itemsize
        with open(self.path, "rb") as fh:
            fh.seek(offset + i * frame_bytes)
            buf = fh.read(frame_bytes)
        if len(buf) < frame_bytes:
            raise FrameReadError(
                self.path, i, f"{len(buf)} of {frame_bytes} bytes in the file (truncated?)"
            )
        return np.frombuffer(buf, dtype).reshape(h, w).astype(dtype.newbyteorder("="))

    def _open(self):
        if self._handle is None:
            self._handle = _fabio_open(self.path)
        return self._handle

    def read(self, i: int) -> np.ndarray:
        if self._raw is not None:
            try:
                return self._read_raw(i)
            except OSError as exc:
                raise FrameReadError(self.path, i, _first_line(exc)) from None
        try:
            img = self._open()
            if i == 0 or self.n == 1:
                # fabio.open already decoded frame 0; reopen if another frame replaced it
                if getattr(img, "currentframe", 0) not in (0, None):
                    self._handle = None
                    img = self._open()
                arr = np.asarray(img.data)
            else:
                arr = np.asarray(img.getframe(i).data)
            incomplete = _edf_incomplete(img, i, self.path)
            if getattr(img, "md5_mismatch", False):
                incomplete = "binary section does not match its Content-MD5 (corrupt file)"
        except InputFileError as exc:
            raise FrameReadError(self.path, i, exc.problem) from None
        except Exception as exc:
            raise FrameReadError(self.path, i, _first_line(exc)) from None
        if incomplete:
            raise FrameReadError(self.path, i, incomplete)
        if arr.shape != self.shape:
            raise FrameReadError(self.path, i, f"frame shape {arr.shape} differs from {self.shape}")
        return arr.copy()

    def close(self) -> None:
        self._handle = None


def _read_single(path: Path) -> np.ndarray:
    """The one frame of a single-frame file (folder series)."""
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        backend: _Backend = _TiffBackend(path)
    elif suffix == ".npy":
        backend = _NpyBackend(path)
    else:
        backend = _FabioBackend(path)
    try:
        if backend.n != 1:
            raise InputFileError(
                path, f"holds {backend.n} frames; a folder series takes one frame per file"
            )
        return backend.read(0)
    finally:
        backend.close()


class _FilesBackend(_Backend):
    """One frame per file: a folder, a glob pattern or an explicit list of files."""

    def __init__(self, files: list[Path], described: str, where: Path | str) -> None:
        self.path = Path(where) if not isinstance(where, Path) else where
        if not files:
            raise InputFileError(where, "no frame files found")
        self.files = list(files)
        self.n = len(files)
        # The series' frame shape and dtype come from the first file that reads; an
        # unreadable file before it is then skipped as one bad frame, like a later one.
        # Only when no file reads is the series itself unreadable (the first file's error).
        first_error: InputFileError | None = None
        for k, f in enumerate(files):
            try:
                first = _read_single(f)
            except InputFileError as exc:
                first_error = first_error or exc
                continue
            self._ref = k
            break
        else:
            assert first_error is not None
            raise first_error
        k = self._ref
        _output_dtype(first.dtype, files[k])
        self.shape = _check_frame_shape(first.shape, files[k])
        self.stored_dtype = first.dtype
        self.meta = {}
        try:
            common = Path(os.path.commonpath([str(f.parent) for f in files]))
            self.frame_names = [str(f.relative_to(common)) for f in files]
        except ValueError:
            self.frame_names = [str(f) for f in files]
        h, w = self.shape
        self.source = f"{described} ({self.n} files, {h} x {w} {first.dtype})"
        self._check_tiff_shapes()

    def _check_tiff_shapes(self) -> None:
        """Frames of different shapes, or of a dtype the series' dtype cannot hold, in one
        folder are an error of the series, not of one frame: TIFF headers are cheap to
        read, so check them all before any work starts."""
        import tifffile

        for k, f in enumerate(self.files):
            if k == self._ref or f.suffix.lower() not in TIFF_SUFFIXES:
                continue
            try:
                with tifffile.TiffFile(f) as tif:
                    shape = tuple(tif.pages[0].shape)
                    dtype = np.dtype(tif.pages[0].dtype)
            except Exception:  # noqa: BLE001 - an unreadable file is skipped later, per frame
                continue
            if shape[:2] != self.shape and len(shape) == 2:
                raise InputFileError(
                    f, f"frame shape {shape[0]} x {shape[1]} differs from the series' "
                    f"{self.shape[0]} x {self.shape[1]} ({self._ref_described()}); "
                    "frames of one series must have one shape"
                )
            problem = self._dtype_problem(dtype)
            if problem:
                raise InputFileError(f, f"{problem}; frames of one series must fit one dtype")

    def _dtype_problem(self, dtype: np.dtype) -> str | None:
        """Why a frame of ``dtype`` cannot join this series, or None.

        Frames are returned in the series' dtype (that of the first file); casting an
        int32 frame with counts above 65535, or a float frame with negative values, to a
        uint16 series would wrap them into wrong numbers without any error.  A cast that
        keeps every value (a uint8 file in a uint16 series) is fine.
        """
        dtype = np.dtype(dtype)
        out = _output_dtype(self.stored_dtype, self.path)
        if _joins_series(dtype, self.stored_dtype, out):
            return None
        return (
            f"dtype {dtype} differs from the series' {out} ({self._ref_described()}) and "
            "cannot be converted without changing values"
        )

    def _ref_described(self) -> str:
        """The file the series' shape was taken from, for error messages."""
        name = self.files[self._ref].name
        return f"first file {name}" if self._ref == 0 else f"first readable file {name}"

    def read(self, i: int) -> np.ndarray:
        path = self.files[i]
        try:
            arr = _read_single(path)
        except FrameReadError as exc:
            raise FrameReadError(path, i, exc.problem.split(": ", 1)[-1]) from None
        except InputFileError as exc:
            raise FrameReadError(path, i, exc.problem) from None
        if arr.shape != self.shape:
            raise FrameReadError(
                path, i, f"shape {arr.shape[0]} x {arr.shape[1]} differs from the series' "
                f"{self.shape[0]} x {self.shape[1]} ({self._ref_described()})"
                if arr.ndim == 2 else f"shape {arr.shape} differs from {self.shape}",
            )
        problem = self._dtype_problem(arr.dtype)
        if problem:
            raise FrameReadError(path, i, problem)
        return arr


# ---------------------------------------------------------------- HDF5


def _h5_describe(item) -> str:
    name, ds = item
    return f"{name} ({' x '.join(str(s) for s in ds.shape)} {ds.dtype})"


def _h5_text_attr(obj, key: str) -> str | None:
    """A string attribute, or None: h5py returns str, bytes (fixed-length strings) or a
    one-element array of either, depending on how the writer stored it."""
    try:
        value = obj.attrs.get(key)
    except Exception:  # noqa: BLE001 - an unreadable attribute designates nothing
        return None
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.ravel()[0]
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value or None


def _is_stack(shape: tuple[int, ...]) -> bool:
    """Whether a dataset of ``shape`` is a non-empty stack of frames (3-D, or padded)."""
    layout = _frame_layout(shape)
    return len(shape) >= 3 and layout is not None and len(layout[0]) == 3 and min(layout[0]) > 0


def _frame_layout(shape: tuple[int, ...]) -> tuple[tuple[int, ...], int] | None:
    """How a dataset of ``shape`` holds frames, or None when it does not.

    Returns the shape as read, ``(H, W)`` or ``(N, H, W)``, and the position of the
    frame axis among the axes before the frame's two.  A stack padded with singleton
    axes, ``(N, 1, H, W)`` or ``(1, N, H, W)`` as some writers store one detector or one
    scan point, is N frames: read as stored it would be refused, and the search would
    then take some other (smaller) 3-D dataset of the file instead.
    """
    shape = tuple(int(v) for v in shape)
    if len(shape) < 2:
        return None
    if len(shape) <= 3:
        return shape, 0
    lead = shape[:-2]
    long_axes = [a for a, v in enumerate(lead) if v != 1]
    if len(long_axes) > 1:
        return None
    axis = long_axes[0] if long_axes else 0
    return (lead[axis], *shape[-2:]), axis


def _cf_scaling(ds, where: object, name: str) -> tuple[float, float] | None:
    """(scale_factor, add_offset) of a dataset that has them (CF convention), or None.

    Packed data (integers that stand for value * scale_factor + add_offset) read as
    stored would be counts off by the scale factor without any error.
    """
    attrs = {}
    for key in ("scale_factor", "add_offset"):
        try:
            if key not in ds.attrs:
                continue
            value = np.asarray(ds.attrs[key])
        except Exception:  # noqa: BLE001 - an unreadable attribute is refused below
            value = np.asarray(None)
        if value.size != 1 or value.dtype.kind not in "iuf" or not np.isfinite(value).all():
            raise InputFileError(
                where, f"dataset {name}: attribute {key} is not one finite number ({value!r})"
            )
        attrs[key] = float(value.ravel()[0])
    if not attrs:
        return None
    return attrs.get("scale_factor", 1.0), attrs.get("add_offset", 0.0)


class _H5Backend(_Backend):
    """One HDF5 dataset, or an Eiger series: the ``data_NNNNNN`` stacks of a master file.

    The frames are those of ``self._parts`` (dataset paths) one after the other;
    ``self._starts[k]`` is the series index of the first frame of part ``k``.
    """

    def __init__(self, path: Path, dataset: str | None) -> None:
        import h5py

        self.path = path
        self._root = _lexical_root(path)
        self._handle = None
        self._ds = None
        self.meta = {}
        self.files = [path]
        self._data_files: list[Path] = []
        self._chunk_grids: dict[int, Any] = {}
        f = self._open()
        try:
            parts: list[tuple[str, Any]] | None = None
            if dataset is not None:
                name = dataset if dataset.startswith("/") else "/" + dataset
                ds = self._get_dataset(f, name)
                if ds is None:
                    listing = ", ".join(_h5_describe(d) for d in self._walk(f, limit=12)[0][:10])
                    raise InputFileError(
                        path, f"no dataset {name!r}; datasets here: {listing or 'none'}"
                    )
                what = f"dataset {name}"
                if isinstance(ds, h5py.Group):
                    parts = self._eiger_parts(ds, name)
                    if parts is None:
                        raise InputFileError(path, f"{what} is a group, not a dataset")
            else:
                ds = None
                for name in (self._nexus_signal(f), *_NEXUS_PATHS):
                    ds = self._get_dataset(f, name) if name else None
                    if isinstance(ds, h5py.Dataset) and _frame_layout(ds.shape) is not None:
                        break
                    ds = None
                if ds is None:
                    # An Eiger master: /entry/data holds links data_000001, data_000002, ...
                    group = self._get_dataset(f, "/entry/data")
                    if isinstance(group, h5py.Group):
                        name = "/entry/data"
                        parts = self._eiger_parts(group, name)
                if ds is None and parts is None:
                    found, refused = self._walk(f)
                    cube = [(n, d) for n, d in found if _is_stack(d.shape)]
                    if not cube:
                        listing = ", ".join(_h5_describe(d) for d in found[:10])
                        extra = f"; refused: {'; '.join(refused[:3])}" if refused else ""
                        raise InputFileError(
                            path,
                            f"no 3-D dataset (frame stack) found; datasets here: "
                            f"{listing or 'none'}{extra}; name one with --dataset (API: dataset=)",
                        )
                    name, ds = max(cube, key=lambda item: int(np.prod(item[1].shape, dtype=np.int64)))
                    if len(cube) > 1:
                        self._warn_chosen(name, ds, [n for n, _ in cube if n != name])
                what = f"dataset {name}"
            if parts is None:
                if not isinstance(ds, h5py.Dataset):
                    raise InputFileError(path, f"{what} is a group, not a dataset")
                self._check_storage(ds, name)
                self._check_filters(ds, name)
                _output_dtype(ds.dtype, path)
                layout = _frame_layout(ds.shape)
                shape, axis = layout if layout is not None else (tuple(ds.shape), 0)
                self.n, h, w = _stack_shape(shape, path, what)
                self._warn_frames_last(shape, name)
                parts = [(name, ds)]
                self._starts = [0]
                # (axes before the frame's two, which of them counts frames) per part
                self._leads = [(ds.ndim - 2, axis)]
                described = (
                    f", stored as {' x '.join(str(v) for v in ds.shape)}" if ds.ndim > 3 else ""
                )
            else:
                ds = parts[0][1]
                h, w = (int(v) for v in ds.shape[1:])
                self._starts = [0]
                for _, d in parts:
                    self._starts.append(self._starts[-1] + int(d.shape[0]))
                self.n = self._starts.pop()
                if self.n == 0:
                    raise InputFileError(path, f"the Eiger data stacks of {name} hold no frames")
                self._leads = [(1, 0)] * len(parts)
                described = f", Eiger series of {len(parts)} data stacks"
            self._parts = [n for n, _ in parts]
            for _, d in parts:
                # Every file a frame is read from, for the run record's checksums.
                target = Path(d.file.filename).absolute()
                if target not in self.files and target != path.absolute():
                    self.files.append(target)
            for target in self._data_files:  # VDS sources, external raw files
                if target not in self.files and target != path.absolute():
                    self.files.append(target)
            self.shape, self.stored_dtype = (h, w), np.dtype(ds.dtype)
            self._scales = [_cf_scaling(d, path, n) for n, d in parts]
            if any(self._scales):
                # Packed values: frames are value * scale_factor + add_offset, as floats.
                self.stored_dtype = np.dtype(np.float32)
                sf, off = next(v for v in self._scales if v)
                described += f", scale_factor {sf:g} and add_offset {off:g} applied"
            self.name = name
            self.ndim = 3 if len(parts) > 1 else (2 if ds.ndim == 2 else 3)
            comp = ds.compression if ds.compression in ("gzip", "lzf", "szip") else ""
            if not comp:
                try:
                    plist = ds.id.get_create_plist()
                    comp = ",".join(
                        plist.get_filter(k)[3].decode(errors="replace").split(";")[0].strip()
                        for k in range(plist.get_nfilters())
                    )
                except Exception:
                    comp = ""
            comp = f", {comp}" if comp else ""
            self.source = f"HDF5 {path}:{name} ({self.n} x {h} x {w} {ds.dtype}{comp}{described})"
        except InputFileError:
            self.close()
            raise
        except Exception as exc:  # h5py raises OSError/KeyError/RuntimeError/... on damaged files
            self.close()
            raise InputFileError(path, f"HDF5 file unreadable (truncated or corrupt?) ({_first_line(exc)})") from None
        self._ds = None

    @classmethod
    def unopened(cls, path: Path) -> _H5Backend:
        """A backend for ``path`` with no dataset chosen: for walking the file's tree
        (``_open``, ``_walk``, ``close``) without looking for a frame stack."""
        backend = cls.__new__(cls)
        backend.path, backend._root, backend._handle, backend._ds = (
            path, _lexical_root(path), None, None)
        backend._data_files, backend._chunk_grids = [], {}
        return backend

    def _warn_chosen(self, name: str, ds, others: list[str]) -> None:
        """Say which of several frame stacks was taken when nothing designates one.

        Files holding one stack per scan (ESRF Bliss: ``/1.1/...``, ``/2.1/...``) have no
        right answer a reader can guess; the largest is taken, and the user told.
        """
        shown = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
        _log.warning(
            "%s: %d frame stacks and no NeXus default; using the largest, %s, not %s; "
            "pass --dataset (API: dataset=) to choose",
            self.path, len(others) + 1, _h5_describe((name, ds)), shown,
        )

    def _nexus_signal(self, f) -> str | None:
        """The dataset the NeXus defaults designate: root ``@default`` (or the file's one
        NXentry) -> NXentry ``@default`` -> NXdata ``@signal``; None when they do not."""
        import h5py

        path, group = "", f
        for _ in range(4):  # root -> entry -> (subentry) -> data
            signal = _h5_text_attr(group, "signal") if path else None
            if signal:
                return f"{path}/{signal.strip('/')}"
            child = _h5_text_attr(group, "default")
            if child is None and not path:
                entries = []
                for key in f:
                    link = f.get(key, getlink=True)
                    if isinstance(link, h5py.HardLink) and isinstance(f.get(key), h5py.Group) \
                            and _h5_text_attr(f[key], "NX_class") == "NXentry":
                        entries.append(key)
                child = entries[0] if len(entries) == 1 else None
            if child is None or ".." in child.split("/"):
                return None
            path = f"{path}/{child.strip('/')}"
            group = self._get_dataset(f, path)
            if not isinstance(group, h5py.Group):
                return None
        return None

    def _warn_frames_last(self, shape: tuple[int, ...], name: str) -> None:
        """Warn when a stack looks stored frames-last, (H, W, N), not frames-first.

        A square frame size on the first two axes and a much shorter last axis is how a
        stack written from a (rows, columns, frames) array looks; read frames-first it
        becomes H frames of W x N, on which peak finding runs without an error.  The
        file is read as stored: only the user knows which layout it has.
        """
        if len(shape) != 3:
            return
        a, b, c = (int(s) for s in shape)
        if a == b and 4 * c <= a:
            _log.warning(
                "%s: dataset %s is %d x %d x %d and is read as %d frames of %d x %d; if it "
                "holds %d frames of %d x %d (frames on the last axis), store it frames-first "
                "(%d x %d x %d, e.g. numpy.moveaxis(data, -1, 0))",
                self.path, name, a, b, c, a, b, c, c, a, b, c, a, b,
            )

    def _eiger_parts(self, group, gname: str) -> list[tuple[str, Any]] | None:
        """The data stacks of an Eiger master's ``data_NNNNNN`` links, in numeric order.

        None when ``group`` holds no such link.  Eiger detectors split one series into
        files of a fixed number of frames; reading only one of them would silently drop
        the rest, so a missing or mismatched part refuses the whole series.
        """
        numbered = []
        for key in group.keys():
            m = re.fullmatch(r"data_(\d+)", key)
            if m:
                numbered.append((int(m.group(1)), key))
        if not numbered:
            return None
        numbered.sort()
        gname = gname.rstrip("/")
        numbers = [k for k, _ in numbered]
        if len(set(numbers)) < len(numbers):
            dup = next(k for k in numbers if numbers.count(k) > 1)
            names = ", ".join(key for k, key in numbered if k == dup)
            raise InputFileError(self.path, f"Eiger data links {names} in {gname} share a number")
        gaps = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
        if gaps:
            width = len(numbered[0][1]) - len("data_")
            raise InputFileError(
                self.path,
                f"{gname}/data_{gaps[0]:0{width}d} is missing between the Eiger data links "
                f"{numbered[0][1]} .. {numbered[-1][1]}; the series would have a gap",
            )
        parts: list[tuple[str, Any]] = []
        for _, key in numbered:
            full = f"{gname}/{key}"
            ds = self._get_dataset(self._open(), full)
            if ds is None or not hasattr(ds, "shape"):
                raise InputFileError(self.path, f"{full}: not a dataset (Eiger data link)")
            if ds.ndim != 3:
                raise InputFileError(
                    self.path, f"{full} is {ds.ndim}-D ({_h5_describe((full, ds))}); "
                    "Eiger data links must be 3-D frame stacks"
                )
            self._check_storage(ds, full)
            self._check_filters(ds, full)
            _output_dtype(ds.dtype, self.path)
            if parts:
                first_name, first = parts[0]
                if ds.shape[1:] != first.shape[1:] or ds.dtype != first.dtype:
                    raise InputFileError(
                        self.path,
                        f"Eiger data stack {_h5_describe((full, ds))} differs in frame shape or "
                        f"dtype from {_h5_describe((first_name, first))}",
                    )
            else:
                _check_frame_shape(tuple(ds.shape[1:]), self.path)
            parts.append((full, ds))
        return parts

    # -- opening and safety

    def _open(self):
        if self._handle is None:
            import h5py
            import hdf5plugin  # noqa: F401  (registers bitshuffle, LZ4, Blosc, ... filters)

            try:
                try:
                    self._handle = h5py.File(self.path, "r", locking=False)
                except OSError as exc:
                    if "already open for write" not in str(exc):
                        raise
                    # A detector or writer is appending in SWMR mode (live data): read it so.
                    self._handle = h5py.File(self.path, "r", locking=False, swmr=True)
            except Exception as exc:
                raise InputFileError(
                    self.path, f"not a readable HDF5 file (truncated or corrupt?) ({_first_line(exc)})"
                ) from None
        return self._handle

    def _link_target_ok(self, link) -> tuple[bool, str]:
        target = Path(link.filename)
        if not target.is_absolute():
            target = self._root / target
        ok = _inside(target, self._root)
        return ok, f"{link.filename}:{link.path}"

    def _broken_link(self, link) -> str | None:
        """Why an external link's target file cannot be used, or None.

        Checked before HDF5 follows the link: HDF5's own error for a missing file is a
        generic "unable to open object", and a search that skips it finds no stack at all.
        """
        target = Path(link.filename)
        if not target.is_absolute():
            target = self._root / target
        if not target.exists():
            return "linked file missing"
        if not target.is_file():
            return "linked path is not a file"
        return None

    def _get_dataset(self, f, name: str):
        """Follow ``name`` link by link, refusing external links that leave the folder."""
        import h5py

        obj = f
        for part in [p for p in name.split("/") if p]:
            if not isinstance(obj, h5py.Group):
                return None
            try:
                link = obj.get(part, getlink=True)
            except Exception:
                return None
            if link is None:
                return None
            if isinstance(link, h5py.ExternalLink):
                ok, desc = self._link_target_ok(link)
                if not ok:
                    raise InputFileError(
                        self.path,
                        f"external link {obj.name.rstrip('/')}/{part} -> {desc} points outside "
                        f"{self._root}; refused",
                    )
                broken = self._broken_link(link)
                if broken:
                    raise InputFileError(
                        self.path, f"{obj.name.rstrip('/')}/{part} -> {link.filename}: {broken}"
                    )
            try:
                nxt = self._open_child(obj, part)
            except Exception as exc:
                if isinstance(link, h5py.ExternalLink):
                    raise InputFileError(
                        self.path,
                        f"{obj.name.rstrip('/')}/{part} -> {link.filename}:{link.path}: external "
                        f"link cannot be followed ({_first_line(exc)})",
                    ) from None
                return None
            if nxt is None:
                return None
            if isinstance(link, h5py.ExternalLink) and not _inside(Path(nxt.file.filename), self._root):
                raise InputFileError(
                    self.path, f"external link {part} resolved outside {self._root}; refused"
                )
            obj = nxt
        return obj if obj is not f else None

    def _walk(self, f, limit: int = 10000) -> tuple[list, list[str]]:
        """Datasets reachable by hard links and safe external links (cycle-proof)."""
        import h5py

        found: list = []
        refused: list[str] = []
        seen: set = set()
        stack = [(f, "")]
        while stack and len(found) < limit:
            group, prefix = stack.pop()
            try:
                key = (group.file.filename, h5py.h5o.get_info(group.id).addr)
            except Exception:
                continue
            if key in seen:
                continue
            seen.add(key)
            try:
                names = list(group.keys())
            except Exception:
                continue
            for name in names:
                try:
                    link = group.get(name, getlink=True)
                except Exception:
                    continue
                if isinstance(link, h5py.SoftLink):
                    continue
                if isinstance(link, h5py.ExternalLink):
                    ok, desc = self._link_target_ok(link)
                    if not ok:
                        refused.append(f"{prefix}/{name} -> {desc}")
                        continue
                    broken = self._broken_link(link)
                    if broken:
                        refused.append(f"{prefix}/{name} -> {link.filename}: {broken}")
                        continue
                try:
                    obj = self._open_child(group, name)
                except Exception:
                    continue
                if obj is None:
                    continue
                if isinstance(link, h5py.ExternalLink) and not _inside(
                    Path(obj.file.filename), self._root
                ):
                    refused.append(f"{prefix}/{name}")
                    continue
                if isinstance(obj, h5py.Group):
                    stack.append((obj, f"{prefix}/{name}"))
                elif isinstance(obj, h5py.Dataset):
                    try:
                        if obj.dtype.kind in "iufb" and obj.ndim >= 1:
                            found.append((f"{prefix}/{name}", obj))
                        elif obj.ndim == 3:  # a stack we cannot use: say so, not "none"
                            refused.append(f"{prefix}/{name} ({obj.dtype}: not real numbers)")
                    except Exception:
                        continue
        found.sort(key=lambda item: item[0])
        return found, refused

    def _check_storage(self, ds, name: str) -> None:
        """External-storage and virtual datasets may only read files inside the folder,
        and those files must be there.

        HDF5 reads a missing virtual-dataset source, and the part of an external raw file
        beyond its end, as the fill value (zeros) without any error: frames of zeros that
        would be processed as real data.  The files found are appended to
        ``self._data_files`` (for the run record's checksums).
        """
        external = ds.external
        if external:
            # The bytes the dataset needs, taken from the raw files in order (each entry
            # reserves ``size`` bytes from ``offset`` on, H5F_UNLIMITED for "to the end").
            remaining = int(np.prod(ds.shape, dtype=np.int64)) * ds.dtype.itemsize
            for entry in external:
                ext, offset, size = entry[0], int(entry[1]), int(entry[2])
                ext = ext.decode(errors="replace") if isinstance(ext, bytes) else str(ext)
                target = Path(ext)
                if not target.is_absolute():
                    target = self._root / target  # the efile prefix this reader sets
                if not _inside(target, self._root):
                    raise InputFileError(
                        self.path,
                        f"dataset {name} stores its data in external file {ext}, outside "
                        f"{self._root}; refused",
                    )
                if remaining <= 0:
                    continue  # not read from: its place is checked, not its size
                take = min(size, remaining)
                remaining -= take
                try:
                    have = target.stat().st_size if target.is_file() else None
                except OSError:
                    have = None
                if have is None:
                    raise InputFileError(
                        self.path, f"dataset {name} stores its data in external file {ext}, "
                        "which is missing",
                    )
                if have < offset + take:
                    raise InputFileError(
                        self.path,
                        f"dataset {name} needs {offset + take} bytes of its external file "
                        f"{ext}, which holds {have} (truncated?)",
                    )
                self._add_data_file(target)
        if ds.is_virtual:
            missing: list[str] = []
            for vs in ds.virtual_sources():
                src = vs.file_name
                if src == ".":
                    continue
                target = Path(src)
                if not target.is_absolute():
                    target = self._root / target
                pattern = "%" in target.name  # printf-style: one file per block (%b)
                if not _inside(target.parent if pattern else target, self._root):
                    raise InputFileError(
                        self.path,
                        f"virtual dataset {name} maps file {src}, outside {self._root}; refused",
                    )
                if pattern:
                    continue  # how many blocks exist is not recorded; they cannot be checked
                found = self._vds_source_file(src, ds)
                if found is None:
                    if src not in missing:
                        missing.append(src)
                else:
                    self._add_data_file(found)
            if missing:
                more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
                raise InputFileError(
                    self.path,
                    f"virtual dataset {name} maps source file{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(missing[:3])}{more}, which {'are' if len(missing) > 1 else 'is'} "
                    "missing (HDF5 would read zeros there)",
                )

    def _vds_source_file(self, src: str, ds) -> Path | None:
        """The file HDF5 opens for virtual source file name ``src``, or None if missing.

        HDF5 tries an absolute name as is, then (for an absolute name: its last component)
        under the virtual prefix (this reader sets the named file's folder), then beside
        the file holding the virtual dataset; the working directory (its last resort) is
        not a place this reader reads from.
        """
        name = Path(src)
        tail = Path(name.name) if name.is_absolute() else name
        candidates = [name] if name.is_absolute() else []
        candidates.append(self._root / tail)
        try:
            candidates.append(Path(ds.file.filename).absolute().parent / tail)
        except Exception:  # noqa: BLE001 - the folder of the named file is enough
            pass
        for target in candidates:
            if target.is_file() and _inside(target, self._root):
                return target
        return None

    def _add_data_file(self, target: Path) -> None:
        target = target.absolute()
        if target not in self._data_files:
            self._data_files.append(target)

    def _check_filters(self, ds, name: str) -> None:
        import h5py

        try:
            plist = ds.id.get_create_plist()
            for k in range(plist.get_nfilters()):
                code, _flags, _vals, fname = plist.get_filter(k)
                if not h5py.h5z.filter_avail(code):
                    raise InputFileError(
                        self.path,
                        f"dataset {name} uses compression filter {code} "
                        f"({fname.decode(errors='replace')}) that is not available",
                    )
        except InputFileError:
            raise
        except Exception:  # filter introspection is advisory; reading reports real problems
            return

    def _open_child(self, group, name: str):
        """``group[name]``, opening datasets with this reader's dataset-access prefixes.

        Relative external-storage and virtual-source file names must resolve against the
        named file's folder (not the working directory), matching the safety checks.
        HDF5 refuses to reopen a dataset with a different prefix, so every dataset this
        module opens gets the same one.  The dataset is opened before its class is asked
        for: asking (``getclass``) opens a dataset behind an external link with the default
        prefix, which HDF5 refuses while another series of this process holds it open.
        """
        import h5py

        dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
        prefix = (str(self._root) + os.sep).encode()
        dapl.set_efile_prefix(prefix)
        dapl.set_virtual_prefix(prefix)
        try:
            return h5py.Dataset(h5py.h5d.open(group.id, name.encode(), dapl=dapl))
        except Exception as exc:
            if group.get(name, getclass=True) is h5py.Dataset:
                raise exc from None  # a dataset that cannot be opened, not a group
        return group.get(name)

    def _dataset(self, k: int = 0):
        if self._ds is None:
            self._ds = [None] * len(self._parts)
        if self._ds[k] is None:
            name = self._parts[k]
            ds = self._get_dataset(self._open(), name)
            if ds is None:
                raise InputFileError(self.path, f"dataset {name} disappeared")
            self._ds[k] = ds
        return self._ds[k]

    def _part(self, i: int) -> tuple[int, int]:
        """(part, index within it) of series frame ``i``."""
        k = bisect.bisect_right(self._starts, i) - 1
        return k, i - self._starts[k]

    def _chunk_grid(self, k: int, ds) -> tuple[int | None, list, set] | None:
        """How to find the unwritten chunks of a frame of part ``k``, or None when no chunk
        can be missing (not chunked, virtual, or every chunk written).

        (frames per chunk, or None for a 2-D dataset; the (row, column) offsets of a
        frame's chunks; the offsets of the chunks known to be written).
        """
        if k in self._chunk_grids:
            return self._chunk_grids[k]
        grid = None
        try:
            chunks = ds.chunks
            if chunks is not None and not ds.is_virtual and ds.size:
                total = int(np.prod([-(-s // c) for s, c in zip(ds.shape, chunks, strict=True)]))
                # One count for the dataset: a complete file (the usual case) then costs
                # nothing per frame.  A written chunk stays written, so this is cached.
                if ds.id.get_num_chunks() < total:
                    h, w = ds.shape[-2:]
                    ch, cw = chunks[-2:]
                    tiles = [(y, x) for y in range(0, h, ch) for x in range(0, w, cw)]
                    # The written chunks in one pass over the chunk index: a lookup per
                    # chunk costs ~10 us, 0.6 ms per frame of 64 tiles.
                    written: set = set()
                    try:
                        ds.id.chunk_iter(lambda info: written.add(tuple(info.chunk_offset)))
                    except Exception:  # noqa: BLE001 - older HDF5: look each chunk up instead
                        written = set()
                    nlead, axis = self._leads[k]
                    grid = (int(chunks[axis]) if nlead else None, tiles, written)
        except Exception:  # noqa: BLE001 - chunk introspection is advisory, reading is not
            grid = None
        self._chunk_grids[k] = grid
        return grid

    def _unwritten(self, k: int, ds, j: int) -> str | None:
        """Why frame ``j`` of part ``k`` holds no data, or None.

        A dataset allocated for N frames of which an aborted acquisition wrote k has no
        chunks for the rest; HDF5 returns its fill value (zeros) for them, which would be
        processed as frames without peaks.  Contiguous storage cannot be told apart.
        """
        grid = self._chunk_grid(k, ds)
        if grid is None:
            return None
        per_chunk, tiles, written = grid
        first = () if per_chunk is None else self._key(k, j - j % per_chunk)
        missing = 0
        try:
            for yx in tiles:
                coord = (*first, *yx)
                if coord in written:
                    continue
                # Not written when the index was read: ask again, a live file grows.
                if ds.id.get_chunk_info_by_coord(coord).byte_offset is None:
                    missing += 1
                else:
                    written.add(coord)
        except Exception:  # noqa: BLE001 - as in _chunk_grid: reading decides
            return None
        if not missing:
            return None
        if missing == len(tiles):
            return "never written (the file holds the HDF5 fill value there)"
        return (
            f"{missing} of its {len(tiles)} chunks never written (the file holds the HDF5 "
            "fill value there)"
        )

    def _key(self, k: int, j: int | slice) -> tuple:
        """The index of frame(s) ``j`` of part ``k`` on the axes before the frame's two
        (0 on singleton axes of a padded stack, ``()`` for a 2-D dataset)."""
        nlead, axis = self._leads[k]
        return tuple(j if a == axis else 0 for a in range(nlead))

    def _scaled(self, k: int, arr: np.ndarray) -> np.ndarray:
        """Frames of part ``k`` as values: ``scale_factor`` and ``add_offset`` applied
        (as float32 for every part, when any part of the series has them)."""
        if not any(self._scales):
            return arr
        out = arr.astype(np.float32)
        scale = self._scales[k]
        if scale is not None:
            out *= np.float32(scale[0])
            out += np.float32(scale[1])
        return out

    def written(self, i: int) -> bool:
        try:
            k, j = self._part(i)
            return self._unwritten(k, self._dataset(k), j) is None
        except Exception:  # noqa: BLE001 - reading the frame will say what is wrong
            return True

    def read(self, i: int) -> np.ndarray:
        try:
            k, j = self._part(i)
            ds = self._dataset(k)
            unwritten = self._unwritten(k, ds, j)
            arr = None if unwritten else ds[self._key(k, j)]
        except InputFileError as exc:
            raise FrameReadError(self.path, i, exc.problem) from None
        except Exception as exc:
            raise FrameReadError(self.path, i, _first_line(exc)) from None
        if unwritten:
            raise FrameReadError(self.path, i, unwritten)
        return self._scaled(k, np.asarray(arr))

    def read_range(self, start: int, stop: int) -> np.ndarray | None:
        if self.ndim == 2:
            return None
        try:
            blocks = []
            i = start
            while i < stop:
                k, j = self._part(i)
                end = self._starts[k + 1] if k + 1 < len(self._starts) else self.n
                take = min(stop, end) - i
                ds = self._dataset(k)
                if self._chunk_grid(k, ds) is not None and any(
                    self._unwritten(k, ds, jj) for jj in range(j, j + take)
                ):
                    return None  # frame by frame names each frame that was never written
                blocks.append(self._scaled(k, np.asarray(ds[self._key(k, slice(j, j + take))])))
                i += take
            return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        except Exception:
            return None  # fall back to frame by frame, which names the bad frame

    def close(self) -> None:
        self._ds = None
        if self._handle is not None:
            try:
                self._handle.close()
            except Exception:
                pass
        self._handle = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_ds"] = None
        state["_chunk_grids"] = {}  # rebuilt on first read: one chunk count per part
        return state


# --------------------------------------------------------------------------------------
# the series
# --------------------------------------------------------------------------------------


class FrameSeries(Sequence):
    """A lazy, sliceable sequence of 2-D frames.

    Indexing reads from disk: ``series[i]`` is a new 2-D array, ``series[a:b]`` and
    ``series[[i, j, ...]]`` are new 3-D arrays ``(n, H, W)``.  Nothing but the open file
    handle (and the format library's own small caches) is kept between reads.  A frame
    that cannot be read raises :class:`~braggtrack.errors.FrameReadError` (with the file
    and index) so that a caller can skip it; iteration stops at such a frame, so callers
    that want to skip bad frames index ``series[i]`` in a loop instead.

    Series are picklable (file handles are reopened on first use), so they can be sent
    to worker processes.

    Attributes
    ----------
    path : pathlib.Path or None
        What the user named (file, folder or glob pattern); ``None`` for arrays.
    shape : tuple of int
        Frame shape ``(H, W)``.
    dtype : numpy.dtype
        Dtype of the returned frames (see the module notes on conversions).
    source : str
        Human-readable description: format, file, dataset, size, dtype.
    frame_names : list of str or None
        For folder/glob series, the file of each frame (relative to their common folder).
    files : list of pathlib.Path
        Files the series reads (for checksums in run records), HDF5 data files reached
        through external links, virtual-dataset source files and external raw files
        included.
    meta : dict
        Per-series metadata found in the file (e.g. ``omega`` of a frame cache).
    dataset : str or None
        The HDF5 dataset the frames are read from (``/entry/data`` for an Eiger master's
        ``data_NNNNNN`` stacks) or the ``.npz`` key, whether named or found: passing it as
        ``open_frames(path, dataset=...)`` reads the same frames.  None for other formats.

    Examples
    --------
    >>> import numpy as np
    >>> series = as_series(np.zeros((3, 4, 5), dtype=np.uint16))
    >>> len(series), series.shape, series[1].shape, series[0:2].shape
    (3, (4, 5), (4, 5), (2, 4, 5))
    """

    def __init__(self, backend: _Backend, path: Path | None = None) -> None:
        self._backend = backend
        self.path = path
        self.dtype = _output_dtype(backend.stored_dtype, path or "<array>")

    # -- description

    def __len__(self) -> int:
        return self._backend.n

    @property
    def shape(self) -> tuple[int, int]:
        return self._backend.shape

    @property
    def source(self) -> str:
        return self._backend.source

    @property
    def frame_names(self) -> list[str] | None:
        return self._backend.frame_names

    @property
    def files(self) -> list[Path]:
        return list(self._backend.files)

    def written_until(self, start: int = 0) -> int:
        """The first frame from ``start`` on that has not been stored yet, or ``len(self)``:
        a file allocated for the whole scan up front (HDF5, chunked) holds frames the
        detector has not written yet, which read as the fill value.  Live mode processes
        frames up to here only."""
        i = max(0, start)
        while i < len(self) and self._backend.written(i):
            i += 1
        return i

    @property
    def meta(self) -> dict:
        return self._backend.meta

    @property
    def dataset(self) -> str | None:
        backend = self._backend
        if isinstance(backend, _H5Backend):
            return backend.name
        if isinstance(backend, _FrameCacheBackend) and backend.kind == "array":
            return backend.key
        return None

    def __repr__(self) -> str:
        return f"FrameSeries({self.source})"

    # -- reading

    def _convert(self, arr: np.ndarray) -> np.ndarray:
        if arr.dtype != self.dtype:
            arr = arr.astype(self.dtype)
        return arr

    def _castable(self, dtype: np.dtype) -> bool:
        """Whether frames of ``dtype`` convert to :attr:`dtype` as documented: from the
        stored dtype (int8, float16, bool, ...) or without changing any value.  Any other
        cast (a frame of another dtype than the rest of its series) could wrap values."""
        return _joins_series(dtype, self._backend.stored_dtype, self.dtype)

    def _index(self, i: Any) -> int:
        try:
            i = int(i)
        except (TypeError, ValueError):
            raise TypeError(f"frame index must be an integer, got {i!r}") from None
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"frame {i} out of range for a series of {n} frames")
        return i

    def read(self, i: int) -> np.ndarray:
        """Frame ``i`` as a new 2-D array (same as ``series[i]``)."""
        i = self._index(i)
        arr = self._backend.read(i)
        if arr.shape != self.shape:
            raise FrameReadError(self.path or "<array>", i, f"frame shape {arr.shape} differs from {self.shape}")
        if not self._castable(arr.dtype):
            raise FrameReadError(
                self.path or "<array>", i,
                f"dtype {arr.dtype} differs from the series' {self.dtype} and cannot be "
                "converted without changing values",
            )
        return self._convert(arr)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1 and stop > start:
                block = self._backend.read_range(start, stop)
                if (
                    block is not None and block.shape[1:] == self.shape
                    and self._castable(block.dtype)
                ):
                    return self._convert(block)
            indices = list(range(start, stop, step))
        elif isinstance(key, (list, tuple, np.ndarray)):
            arr = np.asarray(key)
            if arr.dtype == bool:
                if arr.shape != (len(self),):
                    raise IndexError("boolean frame selection must have one entry per frame")
                arr = np.flatnonzero(arr)
            indices = [int(k) for k in arr.ravel()]
        else:
            return self.read(key)
        out = np.empty((len(indices), *self.shape), dtype=self.dtype)
        for k, i in enumerate(indices):
            out[k] = self.read(i)
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.read(i)

    def close(self) -> None:
        """Close the underlying file (it is reopened if the series is read again)."""
        self._backend.close()

    def __enter__(self) -> FrameSeries:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def as_series(array: np.ndarray | FrameSeries, name: str = "<in-memory array>") -> FrameSeries:
    """Wrap an in-memory 2-D frame or 3-D stack ``(n, H, W)`` as a :class:`FrameSeries`.

    Parameters
    ----------
    array : ndarray or FrameSeries
        A 2-D frame (a one-frame series) or a 3-D stack; a FrameSeries is returned as is.
    name : str
        Name used in error messages.

    Returns
    -------
    FrameSeries

    Examples
    --------
    >>> import numpy as np
    >>> len(as_series(np.ones((8, 8))))
    1
    """
    if isinstance(array, FrameSeries):
        return array
    return FrameSeries(_ArrayBackend(array, name), None)


def _sniff(path: Path) -> str:
    """Format of a file from its suffix, checked against its first bytes."""
    suffix = path.suffix.lower()
    magic = _read_magic(path)
    if not magic:
        raise InputFileError(path, "empty file")
    is_h5 = magic.startswith(_HDF5_MAGIC)
    if suffix in HDF5_SUFFIXES:
        if not is_h5:
            # HDF5 allows a user block: the signature may sit at 512, 1024, ... bytes
            if not _hdf5_signature_later(path):
                raise InputFileError(path, "not an HDF5 file (no HDF5 signature)")
        return "hdf5"
    if suffix in TIFF_SUFFIXES:
        if not magic.startswith(_TIFF_MAGICS):
            raise InputFileError(path, "not a TIFF file (no TIFF signature)")
        return "tiff"
    if suffix == ".npy":
        if not magic.startswith(_NPY_MAGIC):
            raise InputFileError(path, "not a .npy file (no NumPy signature)")
        return "npy"
    if suffix == ".npz":
        if not magic.startswith(_ZIP_MAGIC):
            raise InputFileError(path, "not an .npz file (not a zip archive)")
        return "npz"
    if suffix in FABIO_SUFFIXES:
        return "fabio"
    if is_h5:
        return "hdf5"
    if magic.startswith(_TIFF_MAGICS):
        return "tiff"
    if magic.startswith(_NPY_MAGIC):
        return "npy"
    return "fabio"


def _hdf5_signature_later(path: Path) -> bool:
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            off = 512
            while off + 8 <= size and off <= 1 << 20:
                fh.seek(off)
                if fh.read(8) == _HDF5_MAGIC:
                    return True
                off *= 2
    except OSError:
        return False
    return False


#: Suffixes of compressed files that fabio decompresses itself (``img_0001.edf.gz``).
COMPRESSION_SUFFIXES = (".gz", ".bz2")


def _frame_format(path: Path) -> str | None:
    """The frame format of a folder's file, as a suffix, or None for other files.

    ``.tif`` and ``.tiff`` are one format (a folder may hold both, as cameras and tools
    name them differently); ``name.edf.gz`` is a compressed EDF file, which fabio reads
    (tifffile and numpy do not read compressed files), a format of its own: the same
    frames compressed and uncompressed beside each other would be read twice.
    """
    suffixes = [s.lower() for s in path.suffixes]
    if not suffixes:
        return None
    if suffixes[-1] in COMPRESSION_SUFFIXES and len(suffixes) > 1:
        inner = suffixes[-2]
        return inner + suffixes[-1] if inner in FABIO_SUFFIXES else None
    if suffixes[-1] in TIFF_SUFFIXES:
        return ".tif"
    return suffixes[-1] if suffixes[-1] in FOLDER_SUFFIXES else None


def _files_in_folder(folder: Path) -> list[Path]:
    try:
        entries = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    except OSError as exc:
        raise InputFileError(folder, f"folder cannot be listed ({_first_line(exc)})") from None
    frames = [p for p in entries if _frame_format(p) is not None]
    if not frames:
        raise InputFileError(folder, "folder holds no frame files (.tif, .edf, .cbf, ...)")
    kinds: dict[str, int] = {}
    for p in frames:
        kind = _frame_format(p)
        kinds[kind] = kinds.get(kind, 0) + 1
    if len(kinds) > 1:
        listing = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
        raise InputFileError(folder, f"folder mixes frame formats ({listing}); name a glob pattern")
    return sorted(frames, key=_natural_key)


def _literal_folders(pattern: str) -> str:
    """``pattern`` with its folder part escaped where that folder exists as written.

    ``scan[1]/*.tif`` is, as a glob, the files of ``scan1/``; when a folder literally named
    ``scan[1]`` exists, that is the one meant (the longest such leading folder counts).
    """
    head = os.path.dirname(pattern)
    while head and _GLOB_CHARS & set(head):
        if os.path.isdir(head):
            return _glob.escape(head) + pattern[len(head):]
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    return pattern


def open_frames(
    path: str | os.PathLike | np.ndarray | FrameSeries | Sequence[str | os.PathLike],
    dataset: str | None = None,
) -> FrameSeries:
    """Open a series of detector frames for lazy reading.

    Parameters
    ----------
    path : str, path-like, ndarray, FrameSeries or list of paths
        - HDF5/NeXus file (``.h5``, ``.hdf5``, ``.nxs``, ...): the frame stack is
          ``dataset`` if given, else the NeXus default (root ``@default`` -> NXentry
          ``@default`` -> NXdata ``@signal``), else ``/entry/data/data``, else
          ``/entry/instrument/detector/data``, else an Eiger master's
          ``/entry/data/data_NNNNNN`` stacks, else the largest 3-D dataset (with a
          warning naming the others when there are several).  A stack padded with
          singleton axes (``N x 1 x H x W``, ``1 x N x H x W``) is N frames; CF
          ``scale_factor``/``add_offset`` attributes are applied.  The Eiger
          stacks (usually external links to one data file each) are one series, in
          numeric order of ``NNNNNN``; a missing data file, a gap in the numbering or a
          stack of another frame shape or dtype refuses the series.  A 2-D dataset is a
          one-frame series.  Compressed data (gzip, bitshuffle, LZ4, Blosc, ... via
          hdf5plugin) is decompressed per frame.  Virtual-dataset source files and
          external raw files must be present (and long enough); a frame whose chunks
          were never written raises FrameReadError.  A stack that looks stored
          frames-last (H x H x N, N much smaller) is read as stored, with a warning.
        - TIFF file, single- or multi-page (each page a frame; a file written page by
          page is read page by page, and its pages must share shape and dtype).  A
          file with fewer pages than its metadata promises (truncated) is refused, as
          is a hyperstack (more than one axis besides Y and X, e.g. ImageJ/OME
          ``TCYX``).  A multi-file OME-TIFF is read across its files.
        - A file fabio reads: GE ``.ge2``/``.ge3``/``.ge5`` and SPE (all frames; a
          header frame count the file size contradicts is refused when the file is
          shorter, warned about otherwise), EDF, CBF, MarCCD, ...
        - ``.npy`` (2-D or 3-D, memory-mapped) or ``.npz`` (HEXRD frame cache, read one
          sparse frame at a time; or an archive holding one stack, or ``dataset=`` key).
        - A folder or glob pattern of single-frame files (natural sort: ``img2`` before
          ``img10``), or a list of such files, one frame per file.  A folder's files
          are of one format (``.tif`` and ``.tiff`` are one; ``.edf.gz``, ``.cbf.bz2``
          compressed fabio files count).  A pattern's folder
          that exists as written (``scan[1]/*.tif``) is taken literally.
        - A 2-D or 3-D ndarray, or a FrameSeries (returned as is).
    dataset : str, optional
        HDF5 dataset path (or ``.npz`` key) of the frame stack; a group holding Eiger
        ``data_NNNNNN`` stacks (``/entry/data``) means all of them.

    Returns
    -------
    FrameSeries

    Raises
    ------
    InputFileError
        One line naming the file: missing, not the format its suffix claims, truncated,
        no frame stack, unsafe or dangling HDF5 link, missing virtual-dataset source or
        external raw file, TIFF pages of different shapes, non-numeric or empty data.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "stack.npy"
    >>> np.save(p, np.arange(24, dtype=np.uint16).reshape(2, 3, 4))
    >>> series = open_frames(p)
    >>> len(series), series.shape, int(series[1][0, 0])
    (2, (3, 4), 12)
    """
    if isinstance(path, FrameSeries):
        return path
    if isinstance(path, np.ndarray):
        return as_series(path)
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
        if not files:
            raise InputFileError("<file list>", "empty list of frame files")
        for f in files:
            if not f.is_file():
                raise InputFileError(f, "file not found")
        return FrameSeries(_FilesBackend(files, "file list", files[0].parent), files[0].parent)
    if not isinstance(path, (str, os.PathLike)):
        raise InputFileError(repr(path)[:80], "not a path, array or frame series")

    p = Path(os.fspath(path)).expanduser()
    text = os.fspath(path)
    if not p.exists() and _GLOB_CHARS & set(text):
        pattern = _literal_folders(os.path.expanduser(text))
        files = sorted(
            (Path(f) for f in _glob.glob(pattern) if Path(f).is_file()),
            key=_natural_key,
        )
        if not files:
            raise InputFileError(text, "glob pattern matches no files")
        return FrameSeries(_FilesBackend(files, f"glob {text}", text), Path(text))
    if not p.exists():
        raise InputFileError(p, "file not found")
    if p.is_dir():
        if dataset is not None:
            raise InputFileError(p, "dataset= applies to HDF5/npz files, not folders")
        return FrameSeries(_FilesBackend(_files_in_folder(p), f"folder {p}", p), p)
    if not p.is_file():
        raise InputFileError(p, "not a regular file")

    kind = _sniff(p)
    if dataset is not None and kind not in ("hdf5", "npz"):
        raise InputFileError(p, f"dataset= applies to HDF5/npz files, not {kind} files")
    if kind == "hdf5":
        backend: _Backend = _H5Backend(p, dataset)
    elif kind == "tiff":
        backend = _TiffBackend(p)
    elif kind == "npy":
        backend = _NpyBackend(p)
    elif kind == "npz":
        backend = _FrameCacheBackend(p, dataset)
    else:
        backend = _FabioBackend(p)
    return FrameSeries(backend, p)


def load_image(
    path: str | os.PathLike | np.ndarray,
    *,
    dataset: str | None = None,
    reduce: str = "first",
) -> np.ndarray:
    """Read one 2-D image (dark, flat, mask) from any supported file.

    Parameters
    ----------
    path : str, path-like or ndarray
        File in any format :func:`open_frames` reads; an HDF5 file holding only 2-D
        datasets uses the largest one.  A 2-D array is returned as is.
    dataset : str, optional
        HDF5 dataset path.
    reduce : {"first", "median", "mean"}
        For a multi-frame file: the first frame, or the per-pixel median/mean of all
        frames (all frames are held in memory for the median).

    Returns
    -------
    ndarray
        2-D array; dtype as :class:`FrameSeries` returns it (``float32`` for median/mean).

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "dark.npy"
    >>> np.save(p, np.stack([np.full((2, 2), 1.0), np.full((2, 2), 3.0)]))
    >>> load_image(p, reduce="median").tolist()
    [[2.0, 2.0], [2.0, 2.0]]
    """
    from .errors import OptionError

    if reduce not in ("first", "median", "mean"):
        raise OptionError(f"reduce must be 'first', 'median' or 'mean', got {reduce!r}")
    if isinstance(path, np.ndarray) and path.ndim == 2:
        series = as_series(path)
    else:
        series = _open_image_series(path, dataset)
    with series:
        if reduce == "first" or len(series) == 1:
            img = series[0]
            return img if reduce == "first" else img.astype(np.float32)
        stack = np.empty((len(series), *series.shape), dtype=np.float32)
        for i in range(len(series)):
            stack[i] = series[i]
        return (np.median(stack, axis=0) if reduce == "median" else stack.mean(axis=0)).astype(
            np.float32
        )


def load_mask_file(
    path: str | os.PathLike | np.ndarray,
    *,
    dataset: str | None = None,
    invert: bool = False,
) -> np.ndarray:
    """Bad-pixel mask from a file: nonzero (or NaN) = bad pixel.

    Like :func:`load_image`, except for HDF5 files without ``dataset``: a dataset named
    ``pixel_mask`` (an Eiger master's ``/entry/instrument/detector/pixel_mask``), or
    else one whose name contains ``mask``, is taken before any frame stack, and a file
    that holds no such dataset but a stack of several frames is refused (its first
    frame is data, not a mask).  A mask that marks more than half of the pixels bad is
    most likely inverted: it is used, with a warning naming the file and the fraction.

    Parameters
    ----------
    path : path or ndarray
        Any file :func:`load_image` reads (multi-frame files other than HDF5: the first
        frame), or a 2-D array.
    dataset : str, optional
        HDF5 dataset path (or ``.npz`` key) of the mask.
    invert : bool
        For masks where nonzero means *good* pixel.

    Returns
    -------
    ndarray
        2-D bool, True = bad.

    Raises
    ------
    InputFileError
        One line naming the file: unreadable, or an HDF5 file with frames but no mask.

    Examples
    --------
    >>> import numpy as np
    >>> load_mask_file(np.array([[0, 1], [2, 0]])).tolist()
    [[False, True], [True, False]]
    """
    if isinstance(path, np.ndarray):
        img, where = path, "mask array"
        if img.ndim != 2:
            raise OptionError(f"mask must be a 2-D array, got shape {img.shape}")
    else:
        p = Path(os.fspath(path)).expanduser()
        where = str(p)
        if dataset is None and p.is_file() and _sniff(p) == "hdf5":
            dataset = _h5_mask_dataset(p)
        img = load_image(p, dataset=dataset)
    bad = img != 0
    if img.dtype.kind == "f":
        bad |= np.isnan(img)
    if invert:
        bad = ~bad
    fraction = float(bad.mean()) if bad.size else 0.0
    if fraction > _MASK_WARN_FRACTION:
        rule = ("zero pixels (inverted mask)" if invert
                else "nonzero pixels (1 = bad; --mask-invert if this file marks good pixels)")
        _log.warning(
            "%s: the mask marks %.1f %% of the pixels as bad; braggtrack masks %s",
            where, 100 * fraction, rule,
        )
    return bad


def _h5_mask_dataset(path: Path) -> str | None:
    """The mask dataset of an HDF5 file, or None to read it as :func:`load_image` does.

    Raises when the file holds no dataset named like a mask but a stack of several
    frames: an Eiger master's first data frame taken as a mask masks almost every pixel.
    """
    # pixel_mask first, the NeXus detector's own before detectorSpecific's
    found = _h5_named_image(path, lambda leaf: None if "mask" not in leaf else leaf != "pixel_mask")
    if found is not None:
        return found
    try:
        series = open_frames(path)
    except InputFileError as exc:
        if "no 3-D dataset" in exc.problem:
            return None  # only 2-D images: load_image takes the largest
        raise
    with series:
        if len(series) > 1:
            h, w = series.shape
            raise InputFileError(
                path,
                f"holds no mask dataset (pixel_mask, or a name containing 'mask'), only the "
                f"frame stack {series._backend.name} ({len(series)} x {h} x {w}); a mask file "
                "must hold one 2-D image (nonzero = bad pixel)",
            )
    return None


def _h5_named_image(path: Path, rank) -> str | None:
    """The one-image dataset (2-D, or 1 x H x W) of an HDF5 file chosen by its name.

    ``rank(leaf)`` gives the lowercase last name component a sort key (lower is better),
    or None for a dataset that does not qualify; among equals the shortest path wins.
    """
    backend = _H5Backend.unopened(path)
    f = backend._open()
    try:
        found, _ = backend._walk(f)
        chosen = []
        for name, ds in found:
            shape = tuple(ds.shape)
            if not (len(shape) == 2 or (len(shape) == 3 and shape[0] == 1)):
                continue
            key = rank(name.rsplit("/", 1)[-1].lower())
            if key is not None:
                chosen.append(((key, len(name), name), name))
        return min(chosen)[1] if chosen else None
    finally:
        backend.close()


def load_flat_file(
    path: str | os.PathLike | np.ndarray,
    *,
    dataset: str | None = None,
) -> np.ndarray:
    """Flat-field image from a file, as float32.

    Like :func:`load_image`, except that the file must hold one image: in an HDF5 file
    without ``dataset``, a dataset named ``flatfield`` (an Eiger master's
    ``/entry/instrument/detector/detectorSpecific/flatfield``) or ``flat_field`` is
    taken before any frame stack; any other file (or dataset) that holds several frames
    is refused, since its first frame is data, not a flat field.

    Parameters
    ----------
    path : path or ndarray
        Any file :func:`open_frames` reads, or a 2-D array.
    dataset : str, optional
        HDF5 dataset path (or ``.npz`` key) of the flat field.

    Returns
    -------
    ndarray
        2-D float32.

    Raises
    ------
    InputFileError
        One line naming the file: unreadable, or holding several frames.

    Examples
    --------
    >>> import numpy as np
    >>> load_flat_file(np.array([[1, 2], [3, 4]], np.uint16)).dtype
    dtype('float32')
    """
    if isinstance(path, np.ndarray):
        if path.ndim != 2:
            raise OptionError(f"flat field must be a 2-D array, got shape {path.shape}")
        return path.astype(np.float32)
    p = Path(os.fspath(path)).expanduser()
    if dataset is None and p.is_file() and _sniff(p) == "hdf5":
        dataset = _h5_named_image(
            p, lambda leaf: {"flatfield": 0, "flat_field": 1}.get(leaf)
        )
    series = _open_image_series(p, dataset)
    with series:
        if len(series) != 1:
            if dataset is not None:
                where = f" (dataset {series.dataset})"
            elif series.dataset is not None:
                where = f" (the frame stack {series.dataset}; no dataset named flatfield)"
            else:
                where = ""
            raise InputFileError(
                p, f"holds {len(series)} frames; a flat field is one image: pass a "
                f"single-frame file{where}",
            )
        return series[0].astype(np.float32)


def _open_image_series(path, dataset: str | None) -> FrameSeries:
    """:func:`open_frames`, or for an HDF5 file holding only 2-D datasets (a dark, flat or
    mask saved as one image) its largest one (:func:`_largest_2d_h5`)."""
    try:
        return open_frames(path, dataset=dataset)
    except InputFileError as exc:
        if "no 3-D dataset" not in exc.problem:
            raise
        return _largest_2d_h5(Path(os.fspath(path)))


def _largest_2d_h5(path: Path) -> FrameSeries:
    backend = _H5Backend.unopened(path)
    f = backend._open()
    try:
        found, _ = backend._walk(f)
        flat = [(n, d) for n, d in found if d.ndim == 2 and min(d.shape) > 0]
        if not flat:
            listing = ", ".join(_h5_describe(d) for d in found[:10])
            raise InputFileError(path, f"no 2-D or 3-D image dataset; datasets here: {listing or 'none'}")
        name = max(flat, key=lambda item: item[1].size)[0]
    finally:
        backend.close()
    return FrameSeries(_H5Backend(path, name), path)


#: Bytes of a file mapped at a time by :func:`file_checksum` (a multiple of any page size).
_CHECKSUM_WINDOW = 64 << 20


def file_checksum(path: str | os.PathLike, chunk_size: int = 1 << 20,
                  algorithm: str = "sha256") -> str:
    """Checksum of a file, read in chunks (constant memory).

    Parameters
    ----------
    path : str or path-like
        A regular file.
    chunk_size : int
        Bytes hashed at a time.
    algorithm : {'sha256', 'xxh3_128'}
        ``sha256`` (cryptographic: model files, where tampering matters) or ``xxh3_128``
        (the xxHash package: about 7x faster, ~7 GB/s, for recording which input data a
        run read; it tells files apart and catches any change, but is not meant to
        resist deliberate forgery).

    Returns
    -------
    str
        Hexadecimal digest.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
    >>> _ = p.write_bytes(b"abc")
    >>> file_checksum(p)[:16]
    'ba7816bf8f01cfea'
    """
    if algorithm == "sha256":
        new_digest = hashlib.sha256
    elif algorithm == "xxh3_128":
        import xxhash

        new_digest = xxhash.xxh3_128
    else:
        raise OptionError(f"unknown checksum algorithm {algorithm!r}; use 'sha256' or 'xxh3_128'")
    digest = new_digest()
    p = Path(os.fspath(path))
    if not p.is_file():
        raise InputFileError(p, "file not found" if not p.exists() else "not a regular file")
    try:
        with open(p, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            try:
                # Hashing the page cache in place (read-only maps) instead of copying it block
                # by block into new bytes objects: 0.05 instead of 0.08 s CPU per 800 MB
                # cached file. One window at a time: every page of a map counts in the
                # process's RSS while it is mapped, and a whole-file map of a 2 GB input put
                # a Dask worker at 2.7 GB, where a nanny's memory limit restarts it.
                for offset in range(0, size, _CHECKSUM_WINDOW):
                    length = min(_CHECKSUM_WINDOW, size - offset)
                    with mmap.mmap(fh.fileno(), length, access=mmap.ACCESS_READ,
                                   offset=offset) as view, memoryview(view) as data:
                        for start in range(0, length, chunk_size):
                            digest.update(data[start:start + chunk_size])
            except (ValueError, OSError):  # a file that cannot be mapped: read it instead
                digest = new_digest()
                fh.seek(0)
                while block := fh.read(chunk_size):
                    digest.update(block)
    except OSError as exc:
        raise InputFileError(p, f"cannot be read ({_first_line(exc)})") from None
    return digest.hexdigest()
