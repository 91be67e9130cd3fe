"""Frame readers, format by format: what a reader must not get silently wrong.

Each test builds its files in ``tmp_path``; the expected frames are the arrays written.
"""

from __future__ import annotations

import bz2
import gzip
import os
import pickle
import struct
import uuid
from pathlib import Path

import numpy as np
import pytest

from braggtrack.errors import FrameReadError, InputFileError
from braggtrack.io import load_flat_file, load_mask_file, open_frames
from test_io import _assert_names_file, _assert_series, _eiger

from conftest import braggtrack_warnings as _warnings

h5py = pytest.importorskip("h5py")
tifffile = pytest.importorskip("tifffile")
fabio = pytest.importorskip("fabio")


@pytest.fixture
def stack():
    rng = np.random.default_rng(11)
    return rng.integers(0, 60000, size=(4, 24, 20)).astype(np.uint16)


# ------------------------------------------------------------------ D2: dtypes in a folder


@pytest.mark.parametrize(
    "odd", [np.arange(24 * 20, dtype=np.int32).reshape(24, 20) + 70000,
            np.full((24, 20), -20.5, np.float32)],
    ids=["int32-above-65535", "float32-negative"],
)
def test_folder_tiff_of_another_dtype_is_refused_before_reading(tmp_path, stack, odd):
    for i, fr in enumerate(stack):
        tifffile.imwrite(tmp_path / f"img_{i:03d}.tif", odd if i == 2 else fr)
    with pytest.raises(InputFileError) as exc:
        open_frames(tmp_path)
    _assert_names_file(exc, tmp_path / "img_002.tif")
    msg = str(exc.value)
    assert f"dtype {odd.dtype}" in msg and "uint16" in msg and "img_000.tif" in msg


def test_folder_file_of_another_dtype_is_a_frame_error_naming_it(tmp_path, stack):
    # .npy headers are not inspected upfront: the frame is refused when read, not wrapped
    for i, fr in enumerate(stack):
        np.save(tmp_path / f"f{i}.npy", fr.astype(np.int32) * 40 if i == 1 else fr)
    series = open_frames(tmp_path)
    assert series.dtype == np.uint16
    with pytest.raises(FrameReadError) as exc:
        series[1]
    _assert_names_file(exc, tmp_path / "f1.npy")
    assert exc.value.index == 1 and "int32" in str(exc.value) and "uint16" in str(exc.value)
    np.testing.assert_array_equal(series[2], stack[2])
    with pytest.raises(FrameReadError):
        series[0:3]


def test_folder_file_of_a_dtype_that_fits_is_read(tmp_path, stack):
    small = (np.arange(24 * 20) % 251).astype(np.uint8).reshape(24, 20)
    for i, fr in enumerate(stack):
        tifffile.imwrite(tmp_path / f"img_{i}.tif", small if i == 3 else fr)
    expected = stack.copy()
    expected[3] = small
    _assert_series(open_frames(tmp_path), expected)


# ------------------------------------------------------------------ D1: which HDF5 dataset


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str-attrs", "bytes-attrs"])
def test_nexus_default_and_signal_choose_the_stack(tmp_path, stack, as_bytes):
    def text(v):
        return np.bytes_(v) if as_bytes else v

    path = tmp_path / "scan.nxs"
    with h5py.File(path, "w") as f:
        f.attrs["default"] = text("scan")
        f.create_group("other").attrs["NX_class"] = text("NXentry")
        e = f.create_group("scan")
        e.attrs["NX_class"] = text("NXentry")
        e.attrs["default"] = text("plot")
        d = e.create_group("plot")
        d.attrs["NX_class"] = text("NXdata")
        d.attrs["signal"] = text("frames")
        d["frames"] = stack
        e["instrument/detector/dark_stack"] = np.zeros((9, 24, 20), np.uint16)  # larger
        f["entry/data/data"] = np.zeros((2, 24, 20), np.uint16)  # a NeXus path, not default
    with _warnings() as messages:
        series = open_frames(path)
    _assert_series(series, stack)
    assert series.dataset == "/scan/plot/frames" and messages == []


def test_nexus_entry_default_without_root_default(tmp_path, stack):
    path = tmp_path / "one_entry.nxs"
    with h5py.File(path, "w") as f:
        e = f.create_group("measurement")
        e.attrs["NX_class"] = "NXentry"
        e.attrs["default"] = "data"
        e.create_group("data").attrs["signal"] = "image"
        e["data/image"] = stack
        f["big"] = np.zeros((9, 24, 20), np.uint16)
    assert open_frames(path).dataset == "/measurement/data/image"


@pytest.mark.parametrize("padded", ["N1HW", "1NHW"])
def test_default_stack_padded_with_a_singleton_axis_is_read_as_frames(tmp_path, stack, padded):
    data = stack[:, None] if padded == "N1HW" else stack[None]
    path = tmp_path / "padded.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=data, chunks=(1, 1, 24, 20))
        f["/entry/instrument/detector/flatfield_stack"] = np.ones((2, 8, 8), np.float32)
    series = open_frames(path)
    _assert_series(series, stack)
    assert series.dataset == "/entry/data/data"
    assert "stored as " + " x ".join(str(v) for v in data.shape) in series.source
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(series))[2], stack[2])
    np.testing.assert_array_equal(open_frames(path, dataset="/entry/data/data")[3], stack[3])


def test_padded_stack_frame_never_written_is_a_frame_error(tmp_path, stack):
    path = tmp_path / "aborted.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("/entry/data/data", shape=(4, 1, 24, 20), dtype=np.uint16,
                              chunks=(1, 1, 24, 20))
        ds[:2] = stack[:2, None]
    series = open_frames(path)
    np.testing.assert_array_equal(series[1], stack[1])
    with pytest.raises(FrameReadError, match="never written"):
        series[3]
    assert series.written_until() == 2


def test_several_stacks_without_a_default_warn_naming_the_choice(tmp_path, stack):
    path = tmp_path / "bliss.h5"
    with h5py.File(path, "w") as f:
        f["1.1/measurement/eiger"] = stack[:2]
        f["2.1/measurement/eiger"] = stack
        f["10.1/measurement/eiger"] = stack[:3]
    with _warnings() as messages:
        series = open_frames(path)
    _assert_series(series, stack)
    assert series.dataset == "/2.1/measurement/eiger"
    assert len(messages) == 1
    msg = messages[0]
    assert "\n" not in msg and str(path) in msg and "--dataset" in msg
    assert "/2.1/measurement/eiger" in msg and "/1.1/measurement/eiger" in msg
    assert "/10.1/measurement/eiger" in msg
    with _warnings() as messages:
        open_frames(path, dataset="/1.1/measurement/eiger")
        one = tmp_path / "one.h5"
        with h5py.File(one, "w") as f:
            f["scan/frames"] = stack
            f["scan/image"] = stack[0]
        open_frames(one)
    assert messages == []


def test_series_dataset_names_what_was_read(tmp_path, stack):
    master = _eiger(tmp_path, [stack[:2], stack[2:]])
    assert open_frames(master).dataset == "/entry/data"
    npz = tmp_path / "one.npz"
    np.savez(npz, frames=stack)
    assert open_frames(npz).dataset == "frames"
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, stack, photometric="minisblack")
    assert open_frames(tif).dataset is None
    h5 = tmp_path / "plain.h5"
    with h5py.File(h5, "w") as f:
        f["g/frames"] = stack
    series = open_frames(h5)
    _assert_series(open_frames(h5, dataset=series.dataset), stack)


# ------------------------------------------------------------------ D8: flat field


def test_flat_from_eiger_master_is_its_flatfield(tmp_path, stack):
    master = _eiger(tmp_path, [stack[:2], stack[2:]],
                    pixel_mask=np.zeros((24, 20), np.uint32))
    flat = np.linspace(0.5, 1.5, 24 * 20, dtype=np.float32).reshape(24, 20)
    with h5py.File(master, "a") as f:
        f["/entry/instrument/detector/detectorSpecific/flatfield"] = flat
    got = load_flat_file(master)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, flat)
    assert not load_mask_file(master).any()  # the mask search still finds pixel_mask


def test_flat_file_of_several_frames_is_refused(tmp_path, stack):
    tif = tmp_path / "frames.tif"
    tifffile.imwrite(tif, stack, photometric="minisblack")
    h5 = tmp_path / "frames.h5"
    with h5py.File(h5, "w") as f:
        f["/entry/data/data"] = stack
    for path in (tif, h5):
        with pytest.raises(InputFileError, match="holds 4 frames; a flat field is one image") as exc:
            load_flat_file(path)
        _assert_names_file(exc, path)


def test_flat_from_single_frame_files(tmp_path, stack):
    tif = tmp_path / "flat.tif"
    tifffile.imwrite(tif, stack[0])
    got = load_flat_file(tif)
    assert got.dtype == np.float32 and got.shape == (24, 20)
    np.testing.assert_array_equal(got, stack[0].astype(np.float32))
    h5 = tmp_path / "flat.h5"
    with h5py.File(h5, "w") as f:
        f["/calib/image"] = stack[1]
    np.testing.assert_array_equal(load_flat_file(h5), stack[1].astype(np.float32))


# ------------------------------------------------------------------ D5: SPE, GE frame counts


def _write_spe(path: Path, frames: np.ndarray, declared: int | None = None) -> None:
    """Princeton SPE 2.x: 4100-byte header (uint16 data type 3), then the frames."""
    header = bytearray(4100)
    n, h, w = frames.shape
    struct.pack_into("<hh", header, 0, 4, 1)  # as cameras write it (zeros read as a GE file)
    struct.pack_into("<h", header, 42, w)
    struct.pack_into("<h", header, 656, h)
    struct.pack_into("<H", header, 108, 3)
    struct.pack_into("<i", header, 1446, n if declared is None else declared)
    header[20:29] = b"01Jan2024"
    header[172:178] = b"120000"
    path.write_bytes(bytes(header) + frames.astype("<u2").tobytes())


def test_multiframe_spe_reads_every_frame(tmp_path, stack):
    path = tmp_path / "three.spe"
    _write_spe(path, stack[:3])
    series = open_frames(path)
    _assert_series(series, stack[:3])


def test_spe_declaring_more_frames_than_it_holds_is_refused(tmp_path, stack):
    path = tmp_path / "cut.spe"
    _write_spe(path, stack[:2], declared=3)
    with pytest.raises(InputFileError, match="truncated") as exc:
        open_frames(path)
    _assert_names_file(exc, path)
    assert "3 frames" in str(exc.value) and "data for 2" in str(exc.value)


def _write_ge_header(path: Path, declared: int, frames: np.ndarray, cut: int = 0) -> None:
    """GE file with a real (not blanked) 8192-byte header declaring ``declared`` frames."""
    header = bytearray(8192)
    n, h, w = frames.shape
    struct.pack_into("<10sHLHLHHHH", header, 0, b"ADEPT     ", 1, 8192, 1, 0, declared, h, w, 16)
    data = frames.astype("<u2").tobytes()
    path.write_bytes(bytes(header) + (data[:-cut] if cut else data))


def test_ge_header_frame_count_disagreeing_with_the_file_size(tmp_path, stack):
    more = tmp_path / "more.ge2"
    _write_ge_header(more, 2, stack[:3])
    with _warnings() as messages:
        series = open_frames(more)
    _assert_series(series, stack[:2])
    assert len(messages) == 1 and str(more) in messages[0]
    assert "data for 3 frames" in messages[0] and "declares 2" in messages[0]

    zero = tmp_path / "zero.ge2"
    _write_ge_header(zero, 0, stack[:3])
    with _warnings() as messages:
        series = open_frames(zero)
    _assert_series(series, stack[:3])
    assert len(messages) == 1 and "declares 0 frames" in messages[0] and "3 frames" in messages[0]

    cut = tmp_path / "cut.ge2"
    _write_ge_header(cut, 3, stack[:3], cut=100)
    with pytest.raises(InputFileError, match="truncated") as exc:
        open_frames(cut)
    _assert_names_file(exc, cut)
    assert "cannot reshape" not in str(exc.value)


# ------------------------------------------------------------------ D10, D11: TIFF axes, OME


def test_tiff_hyperstack_is_refused_naming_its_axes(tmp_path, stack):
    planes = np.stack([stack, stack // 2], 1)  # T=4, C=2
    ij = tmp_path / "ij.tif"
    tifffile.imwrite(ij, planes, imagej=True, metadata={"axes": "TCYX"})
    ome = tmp_path / "hyper.ome.tif"
    tifffile.imwrite(ome, planes, metadata={"axes": "TCYX"}, photometric="minisblack")
    for path in (ij, ome):
        with pytest.raises(InputFileError, match="TCYX") as exc:
            open_frames(path)
        _assert_names_file(exc, path)
        assert "T (time, 4)" in str(exc.value) and "C (channel, 2)" in str(exc.value)


@pytest.mark.parametrize("axes", ["TYX", "ZYX", "TCYX"])
def test_tiff_with_one_axis_besides_the_frame_is_read(tmp_path, stack, axes):
    data = stack[:, None] if axes == "TCYX" else stack  # a channel axis of length 1
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": axes})
    _assert_series(open_frames(path), stack)


def _multifile_ome(folder: Path, frames: np.ndarray) -> tuple[Path, Path]:
    """Two OME-TIFF files of two planes each, one series of 4 time points."""
    ua, ub = (f"urn:uuid:{uuid.uuid4()}" for _ in range(2))
    h, w = frames.shape[1:]
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="{ua}">'
        '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" '
        f'SizeX="{w}" SizeY="{h}" SizeC="1" SizeZ="1" SizeT="4">'
        '<Channel ID="Channel:0:0" SamplesPerPixel="1"/>'
        f'<TiffData FirstT="0" IFD="0" PlaneCount="2"><UUID FileName="a.ome.tif">{ua}</UUID></TiffData>'
        f'<TiffData FirstT="2" IFD="0" PlaneCount="2"><UUID FileName="b.ome.tif">{ub}</UUID></TiffData>'
        "</Pixels></Image></OME>"
    )
    paths = folder / "a.ome.tif", folder / "b.ome.tif"
    for path, desc, pair in ((paths[0], xml, frames[:2]),
                             (paths[1], xml.replace(f'UUID="{ua}"', f'UUID="{ub}"', 1), frames[2:])):
        with tifffile.TiffWriter(path) as t:
            t.write(pair[0], description=desc, metadata=None, photometric="minisblack")
            t.write(pair[1], metadata=None, photometric="minisblack")
    return paths


def test_multifile_ome_tiff_reads_every_plane(tmp_path, stack):
    a, b = _multifile_ome(tmp_path, stack)
    series = open_frames(a)
    _assert_series(series, stack)
    assert [Path(p).name for p in series.files] == ["a.ome.tif", "b.ome.tif"]
    series.close()
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(series))[3], stack[3])


def test_multifile_ome_tiff_names_a_missing_companion(tmp_path, stack):
    a, b = _multifile_ome(tmp_path, stack)
    b.unlink()
    with pytest.raises(InputFileError, match="companion file b.ome.tif missing") as exc:
        open_frames(a)
    _assert_names_file(exc, a)


# ------------------------------------------------------------------ D12, D15: folders


def test_folder_of_tif_and_tiff_files_is_one_series(tmp_path, stack):
    for i, fr in enumerate(stack):
        tifffile.imwrite(tmp_path / f"img_{i:03d}.{'tif' if i % 2 else 'tiff'}", fr)
    _assert_series(open_frames(tmp_path), stack)
    fabio.edfimage.EdfImage(data=stack[0]).write(str(tmp_path / "img_004.edf"))
    with pytest.raises(InputFileError, match="mixes frame formats"):
        open_frames(tmp_path)


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress], ids=["gz", "bz2"])
def test_folder_of_compressed_edf_files(tmp_path, stack, compress):
    suffix = ".gz" if compress is gzip.compress else ".bz2"
    raw = tmp_path / "raw.edf"
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, fr in enumerate(stack):
        fabio.edfimage.EdfImage(data=fr).write(str(raw))
        (folder / f"img_{i:04d}.edf{suffix}").write_bytes(compress(raw.read_bytes()))
    series = open_frames(folder)
    _assert_series(series, stack)
    assert series.frame_names[0] == f"img_0000.edf{suffix}"


# ------------------------------------------------------------------ D13: symlinked data file


def test_eiger_data_file_symlinked_into_the_master_folder_is_followed(tmp_path, stack):
    scan = tmp_path / "scan"
    scan.mkdir()
    store = tmp_path / "store"
    store.mkdir()
    master = _eiger(scan, [stack[:2], stack[2:]])
    moved = store / "series_data_000001.h5"
    os.replace(scan / "series_data_000001.h5", moved)
    (scan / "series_data_000001.h5").symlink_to(moved)
    _assert_series(open_frames(master), stack)
    # a link stored in the file that climbs out of the folder is still refused
    with h5py.File(master, "a") as f:
        del f["/entry/data/data_000002"]
        f["/entry/data/data_000002"] = h5py.ExternalLink("../store/series_data_000001.h5",
                                                          "/entry/data/data")
    with pytest.raises(InputFileError, match="outside") as exc:
        open_frames(master)
    _assert_names_file(exc, master)


# ------------------------------------------------------------------ D14: packed HDF5 values


def test_hdf5_scale_factor_and_add_offset_are_applied(tmp_path, stack):
    path = tmp_path / "packed.h5"
    packed = (stack // 4).astype(np.uint16)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("/entry/data/data", data=packed)
        ds.attrs["scale_factor"] = 4.0
        ds.attrs["add_offset"] = np.float32(-2.5)
        only = f.create_dataset("/scaled/data", data=packed)
        only.attrs["scale_factor"] = np.array([0.5])
    expected = packed.astype(np.float32) * np.float32(4.0) + np.float32(-2.5)
    with open_frames(path) as series:
        assert "scale_factor 4" in series.source
        _assert_series(series, expected)
    with open_frames(path, dataset="/scaled/data") as series:
        _assert_series(series, packed.astype(np.float32) * np.float32(0.5))
    with h5py.File(path, "a") as f:
        f["/entry/data/data"].attrs["scale_factor"] = "four"
    with pytest.raises(InputFileError, match="scale_factor") as exc:
        open_frames(path)
    _assert_names_file(exc, path)


@pytest.mark.parametrize("compression", ["lzw", "zlib", "packbits"])
def test_compressed_tiffs_are_read(tmp_path, stack, compression):
    # LZW is what PIL, ImageJ and many camera programs write; tifffile needs imagecodecs
    # for it, which is a dependency (without it: "requires the 'imagecodecs' package").
    one = tmp_path / "one.tif"
    tifffile.imwrite(one, stack, compression=compression, photometric="minisblack")
    _assert_series(open_frames(one), stack)
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, frame in enumerate(stack):
        tifffile.imwrite(folder / f"img_{i:03d}.tif", frame, compression=compression)
    _assert_series(open_frames(folder), stack)
