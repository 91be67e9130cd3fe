"""Frame readers: round trips through every format, bad input, HDF5 link safety, fuzzing."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from braggtrack.errors import BraggTrackError, FrameReadError, InputFileError, OptionError
from braggtrack.io import as_series, file_checksum, load_image, load_mask_file, open_frames

from conftest import braggtrack_warnings

h5py = pytest.importorskip("h5py")
hdf5plugin = pytest.importorskip("hdf5plugin")
tifffile = pytest.importorskip("tifffile")
fabio = pytest.importorskip("fabio")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def stack():
    rng = np.random.default_rng(7)
    return rng.integers(0, 60000, size=(4, 24, 20)).astype(np.uint16)


def _assert_series(series, expected):
    assert len(series) == expected.shape[0]
    assert series.shape == expected.shape[1:]
    assert series.dtype == expected.dtype
    for i in range(len(series)):
        np.testing.assert_array_equal(series[i], expected[i])
    n = len(expected)
    np.testing.assert_array_equal(series[1:3], expected[1:3])
    np.testing.assert_array_equal(series[[n - 1, 0]], expected[[n - 1, 0]])
    np.testing.assert_array_equal(series[-1], expected[-1])
    np.testing.assert_array_equal(np.stack(list(series)), expected)


def _assert_names_file(exc_info, path):
    msg = str(exc_info.value)
    assert "\n" not in msg
    assert str(path) in msg


# ------------------------------------------------------------------ round trips: HDF5


@pytest.mark.parametrize(
    "compression",
    [
        {},
        {"compression": "gzip", "compression_opts": 4},
        "bitshuffle",
        "blosc",
    ],
    ids=["plain", "gzip", "bitshuffle-lz4", "blosc"],
)
def test_hdf5_round_trip(tmp_path, stack, compression):
    if compression == "bitshuffle":
        compression = dict(hdf5plugin.Bitshuffle(cname="lz4"))
    elif compression == "blosc":
        compression = dict(hdf5plugin.Blosc(cname="lz4", shuffle=hdf5plugin.Blosc.SHUFFLE))
    path = tmp_path / "series.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=stack, chunks=(1, 24, 20), **compression)
    series = open_frames(path)
    _assert_series(series, stack)
    assert "/entry/data/data" in series.source and str(path) in series.source
    assert series.path == path and series.files == [path] and series.frame_names is None


def test_hdf5_nexus_detector_path_and_largest_3d(tmp_path, stack):
    path = tmp_path / "det.nxs"
    with h5py.File(path, "w") as f:
        f["/entry/instrument/detector/data"] = stack
        f["/other/big"] = np.zeros((9, 24, 20), np.uint16)  # larger, but NeXus path wins
    assert open_frames(path).source.split(":")[1].startswith("/entry/instrument/detector/data")

    path2 = tmp_path / "plain.h5"
    with h5py.File(path2, "w") as f:
        f["/small"] = np.zeros((2, 5, 5), np.float32)
        f["/g/frames"] = stack
        f["/g/image2d"] = np.zeros((100, 100), np.float32)
    series = open_frames(path2)
    _assert_series(series, stack)
    # a named 2-D dataset is a one-frame series
    one = open_frames(path2, dataset="g/image2d")
    assert len(one) == 1 and one.shape == (100, 100)


def test_hdf5_dataset_option_and_pickle(tmp_path, stack):
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["/a"] = stack
        f["/b"] = stack[:2] + 1
    series = open_frames(path, dataset="/b")
    np.testing.assert_array_equal(series[1], stack[1] + 1)
    clone = pickle.loads(pickle.dumps(series))
    np.testing.assert_array_equal(clone[0], stack[0] + 1)
    series.close()
    np.testing.assert_array_equal(series[0], stack[0] + 1)  # reopens after close


def test_hdf5_safe_external_link_inside_folder_is_followed(tmp_path, stack):
    with h5py.File(tmp_path / "data_000001.h5", "w") as f:
        f["/data"] = stack
    master = tmp_path / "master.h5"
    with h5py.File(master, "w") as f:
        f["/entry/data/data"] = h5py.ExternalLink("data_000001.h5", "/data")
    _assert_series(open_frames(master), stack)


# ------------------------------------------------------------------ HDF5 safety (issue 9)


@pytest.fixture
def outside(tmp_path, stack):
    """A data file in one folder and the user's folder beside it."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    target = other / "secret.h5"
    with h5py.File(target, "w") as f:
        f["/data"] = stack
    user = tmp_path / "user"
    user.mkdir()
    return target, user


def test_hdf5_external_link_outside_is_refused(outside):
    target, user = outside
    for name, link in (("abs.h5", str(target)), ("rel.h5", "../elsewhere/secret.h5")):
        path = user / name
        with h5py.File(path, "w") as f:
            f["/entry/data/data"] = h5py.ExternalLink(link, "/data")
        with pytest.raises(InputFileError, match="outside") as exc:
            open_frames(path)
        _assert_names_file(exc, path)
        with pytest.raises(InputFileError, match="outside"):
            open_frames(path, dataset="/entry/data/data")


def test_hdf5_external_link_outside_is_not_found_by_search(outside):
    target, user = outside
    path = user / "hidden.h5"
    with h5py.File(path, "w") as f:
        f["/deep/stack"] = h5py.ExternalLink(str(target), "/data")
        f["/small"] = np.zeros((2, 2), np.uint8)
    with pytest.raises(InputFileError, match="refused") as exc:
        open_frames(path)
    _assert_names_file(exc, path)


def test_hdf5_external_storage_outside_is_refused(outside, tmp_path):
    _, user = outside
    raw = tmp_path / "elsewhere" / "raw.bin"
    np.arange(2 * 4 * 4, dtype="<u2").tofile(raw)
    path = user / "ext.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", shape=(2, 4, 4), dtype="<u2",
                         external=[(str(raw), 0, h5py.h5f.UNLIMITED)])
    with pytest.raises(InputFileError, match="external file") as exc:
        open_frames(path)
    _assert_names_file(exc, path)


def test_hdf5_external_storage_inside_is_read(tmp_path):
    raw = tmp_path / "raw.bin"
    data = np.arange(2 * 4 * 4, dtype="<u2").reshape(2, 4, 4)
    data.tofile(raw)
    path = tmp_path / "ext.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", shape=(2, 4, 4), dtype="<u2",
                         external=[("raw.bin", 0, h5py.h5f.UNLIMITED)])
    cwd = os.getcwd()
    try:
        os.chdir("/")  # relative names resolve against the file's folder, not the cwd
        _assert_series(open_frames(path), data)
    finally:
        os.chdir(cwd)


def test_hdf5_virtual_dataset_outside_is_refused(outside, stack):
    target, user = outside
    path = user / "vds.h5"
    layout = h5py.VirtualLayout(shape=stack.shape, dtype=stack.dtype)
    layout[:] = h5py.VirtualSource(str(target), "/data", shape=stack.shape)
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("/entry/data/data", layout)
    with pytest.raises(InputFileError, match="virtual") as exc:
        open_frames(path)
    _assert_names_file(exc, path)


def test_hdf5_virtual_dataset_inside_is_read(tmp_path, stack):
    src = tmp_path / "part.h5"
    with h5py.File(src, "w") as f:
        f["/data"] = stack
    path = tmp_path / "vds.h5"
    layout = h5py.VirtualLayout(shape=stack.shape, dtype=stack.dtype)
    layout[:] = h5py.VirtualSource("part.h5", "/data", shape=stack.shape)
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("/entry/data/data", layout)
    _assert_series(open_frames(path), stack)


# ------------------------------------------------------------------ TIFF, folders, globs


def test_tiff_single_and_multipage(tmp_path, stack):
    single = tmp_path / "one.tif"
    tifffile.imwrite(single, stack[0])
    s = open_frames(single)
    assert len(s) == 1
    np.testing.assert_array_equal(s[0], stack[0])
    multi = tmp_path / "multi.tiff"
    tifffile.imwrite(multi, stack, photometric="minisblack")
    _assert_series(open_frames(multi), stack)


def test_folder_and_glob_natural_sort(tmp_path, stack):
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = np.concatenate([stack, stack[::-1] + 1])  # 8 frames
    for i, fr in enumerate(frames):
        tifffile.imwrite(folder / f"img_{i}.tif", fr)
    (folder / "notes.txt").write_text("not a frame")
    series = open_frames(folder)
    _assert_series(series, frames)
    assert series.frame_names[:3] == ["img_0.tif", "img_1.tif", "img_2.tif"]
    for i in range(8, 12):  # img_10 must sort after img_9, not after img_1
        tifffile.imwrite(folder / f"img_{i}.tif", frames[0] + i)
    series = open_frames(folder)
    assert series.frame_names[9:11] == ["img_9.tif", "img_10.tif"]
    np.testing.assert_array_equal(series[10], frames[0] + 10)
    glob = open_frames(str(folder / "img_1*.tif"))
    assert glob.frame_names == ["img_1.tif", "img_10.tif", "img_11.tif"]
    np.testing.assert_array_equal(glob[1], frames[0] + 10)
    listed = open_frames([folder / "img_3.tif", folder / "img_0.tif"])
    np.testing.assert_array_equal(listed[0], frames[3])


def test_folder_of_edf_files(tmp_path, stack):
    for i, fr in enumerate(stack):
        fabio.edfimage.EdfImage(data=fr).write(str(tmp_path / f"f{i:03d}.edf"))
    _assert_series(open_frames(tmp_path), stack)


# ------------------------------------------------------------------ fabio formats, npy, npz


def test_edf_and_cbf(tmp_path, stack):
    edf = tmp_path / "frame.edf"
    fabio.edfimage.EdfImage(data=stack[0]).write(str(edf))
    s = open_frames(edf)
    assert len(s) == 1
    np.testing.assert_array_equal(s[0], stack[0])
    cbf = tmp_path / "frame.cbf"
    data = stack[1].astype(np.int32) - 30000  # CBF stores signed ints
    fabio.cbfimage.CbfImage(data=data).write(str(cbf))
    s = open_frames(cbf)
    np.testing.assert_array_equal(s[0], data)
    np.testing.assert_array_equal(load_image(cbf), data)


def _write_ge(path: Path, frames: np.ndarray) -> None:
    """GE a-Si file as written at APS: 8192-byte (blanked) header + little-endian uint16 frames."""
    with open(path, "wb") as fh:
        fh.write(bytes(8192))
        fh.write(frames.astype("<u2").tobytes())


def test_ge2_multiframe(tmp_path):
    # the blanked-header GE layout fixes 2048 x 2048 frames; 2 frames = 16 MB
    frames = np.zeros((2, 2048, 2048), np.uint16)
    frames[0, 100, 200] = 1234
    frames[1, 2000, 5] = 4321
    frames[1, :, 7] = np.arange(2048)
    path = tmp_path / "scan_00001.ge2"
    _write_ge(path, frames)
    series = open_frames(path)
    assert len(series) == 2 and series.shape == (2048, 2048) and series.dtype == np.uint16
    f1 = series[1]
    assert f1[2000, 5] == 4321 and f1[100, 200] == 0
    np.testing.assert_array_equal(f1[:, 7], np.arange(2048))
    assert series[0][100, 200] == 1234


def test_npy_memmap(tmp_path, stack):
    path = tmp_path / "stack.npy"
    np.save(path, stack)
    series = open_frames(path)
    _assert_series(series, stack)
    frame = series[0]
    frame[0, 0] = 1  # a returned frame is a private copy, not the file
    assert open_frames(path)[0][0, 0] == stack[0, 0, 0]


def _write_framecache(path: Path, frames: np.ndarray, **extra) -> None:
    arrays = {"shape": np.array(frames.shape[1:]), "nframes": np.array(len(frames)),
              "dtype": np.array(str(frames.dtype).encode())}
    for i, fr in enumerate(frames):
        r, c = np.nonzero(fr)
        arrays[f"{i}_row"], arrays[f"{i}_col"], arrays[f"{i}_data"] = r, c, fr[r, c]
    arrays.update(extra)
    np.savez_compressed(path, **arrays)


def test_framecache_npz(tmp_path, stack):
    sparse = np.where(stack > 50000, stack, 0).astype(np.uint16)
    path = tmp_path / "fc.npz"
    omega = np.stack([np.arange(4.0), np.arange(4.0) + 1], axis=1)
    _write_framecache(path, sparse, omega=omega)
    series = open_frames(path)
    _assert_series(series, sparse)
    np.testing.assert_array_equal(series.meta["omega"], omega)


def test_in_memory_arrays(stack):
    _assert_series(open_frames(stack), stack)
    _assert_series(as_series(stack[0]), stack[:1])
    s = as_series(stack)
    assert as_series(s) is s and open_frames(s) is s


def test_dtype_conversions(tmp_path):
    for dtype, expected in ((np.int8, np.float32), (np.float16, np.float32),
                            (np.bool_, np.uint8), (np.int32, np.int32), (np.float64, np.float64)):
        arr = (np.arange(2 * 3 * 4) % 2).reshape(2, 3, 4).astype(dtype)
        series = open_frames(arr)
        assert series.dtype == expected
        assert series[1].dtype == expected
        np.testing.assert_array_equal(series[1], arr[1].astype(expected))
    big_endian = np.arange(12, dtype=">u2").reshape(1, 3, 4)
    path = tmp_path / "be.npy"
    np.save(path, big_endian)
    s = open_frames(path)
    assert s.dtype == np.dtype("=u2") and s[0].dtype.isnative
    np.testing.assert_array_equal(s[0], big_endian[0])


def test_nan_pixels_returned_as_stored():
    arr = np.ones((1, 4, 4), np.float32)
    arr[0, 1, 2], arr[0, 2, 2] = np.nan, np.inf
    out = open_frames(arr)[0]
    assert np.isnan(out[1, 2]) and np.isinf(out[2, 2])


def test_load_image_and_checksum(tmp_path, stack):
    path = tmp_path / "darks.h5"
    with h5py.File(path, "w") as f:
        f["/entry/data/data"] = stack[:3]
    np.testing.assert_array_equal(load_image(path), stack[0])
    np.testing.assert_allclose(load_image(path, reduce="median"),
                               np.median(stack[:3].astype(np.float64), axis=0))
    only2d = tmp_path / "mask.h5"
    with h5py.File(only2d, "w") as f:
        f["/mask"] = (stack[0] > 30000).astype(np.uint8)
    np.testing.assert_array_equal(load_image(only2d), stack[0] > 30000)
    import hashlib

    data = os.urandom(3 * (1 << 20) + 17)
    blob = tmp_path / "blob.bin"
    blob.write_bytes(data)
    assert file_checksum(blob) == hashlib.sha256(data).hexdigest()
    assert file_checksum(blob, chunk_size=1000) == hashlib.sha256(data).hexdigest()
    xxhash = pytest.importorskip("xxhash")
    expected = xxhash.xxh3_128(data).hexdigest()  # one call on the whole bytes
    assert file_checksum(blob, chunk_size=1000, algorithm="xxh3_128") == expected
    with pytest.raises(OptionError, match="algorithm"):
        file_checksum(blob, algorithm="md5")
    empty = tmp_path / "empty.bin"  # cannot be memory-mapped: read instead
    empty.write_bytes(b"")
    assert file_checksum(empty) == hashlib.sha256(b"").hexdigest()
    assert file_checksum(empty, algorithm="xxh3_128") == xxhash.xxh3_128(b"").hexdigest()


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared real data absent")
def test_real_files():
    laue = open_frames(SHARED_DATA / "laue_gan_nanowire_nw1_0000.tif")
    assert len(laue) == 1 and laue.shape == (2018, 2016) and laue.dtype == np.uint16
    hedm = open_frames(SHARED_DATA / "hedm_zr_dac_ge2_framecache.npz")
    assert len(hedm) == 100 and hedm.shape == (2048, 2048)
    z = np.load(SHARED_DATA / "hedm_zr_dac_ge2_framecache.npz")
    frame = hedm[7]
    assert np.count_nonzero(frame) == len(z["7_data"])
    np.testing.assert_array_equal(frame[z["7_row"], z["7_col"]], z["7_data"])


# ------------------------------------------------------------------ bad input


def test_missing_file_and_empty_glob(tmp_path):
    path = tmp_path / "nope.h5"
    with pytest.raises(InputFileError, match="not found") as exc:
        open_frames(path)
    _assert_names_file(exc, path)
    pattern = str(tmp_path / "*.tif")
    with pytest.raises(InputFileError, match="matches no files") as exc:
        open_frames(pattern)
    _assert_names_file(exc, pattern)


@pytest.mark.parametrize("suffix", [".h5", ".nxs", ".tif", ".npy", ".npz", ".edf", ".cbf", ".ge2"])
def test_wrong_format_for_suffix(tmp_path, suffix):
    path = tmp_path / f"text{suffix}"
    path.write_text("this is a text file, not detector data\n" * 20)
    with pytest.raises(InputFileError) as exc:
        open_frames(path)
    _assert_names_file(exc, path)


def test_empty_file_and_empty_folder(tmp_path):
    path = tmp_path / "empty.h5"
    path.write_bytes(b"")
    with pytest.raises(InputFileError, match="empty") as exc:
        open_frames(path)
    _assert_names_file(exc, path)
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "readme.txt").write_text("x")
    with pytest.raises(InputFileError, match="no frame files") as exc:
        open_frames(folder)
    _assert_names_file(exc, folder)


def test_truncated_hdf5(tmp_path, stack):
    path = tmp_path / "cut.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=stack, chunks=(1, 24, 20))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(BraggTrackError) as exc:
        series = open_frames(path)
        for i in range(len(series)):
            series[i]
    _assert_names_file(exc, path)


def test_corrupt_chunk_raises_frame_read_error(tmp_path, stack):
    path = tmp_path / "bad_chunk.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("/entry/data/data", data=stack, chunks=(1, 24, 20),
                              compression="gzip")
        offset, size = ds.id.get_chunk_info(2).byte_offset, ds.id.get_chunk_info(2).size
    raw = bytearray(path.read_bytes())
    raw[offset: offset + size] = b"\x00" * size
    path.write_bytes(bytes(raw))
    series = open_frames(path)
    np.testing.assert_array_equal(series[1], stack[1])
    with pytest.raises(FrameReadError) as exc:
        series[2]
    assert exc.value.index == 2
    _assert_names_file(exc, path)
    np.testing.assert_array_equal(series[3], stack[3])
    with pytest.raises(FrameReadError):
        series[1:4]  # a block read containing the bad frame names it too


def test_no_3d_dataset_and_wrong_dataset(tmp_path):
    path = tmp_path / "flat.h5"
    with h5py.File(path, "w") as f:
        f["/a/image"] = np.zeros((8, 8), np.uint16)
        f["/labels"] = np.array([b"x", b"y"])
    with pytest.raises(InputFileError, match="no 3-D dataset") as exc:
        open_frames(path)
    _assert_names_file(exc, path)
    assert "/a/image" in str(exc.value)
    with pytest.raises(InputFileError, match="no dataset '/missing'") as exc:
        open_frames(path, dataset="/missing")
    _assert_names_file(exc, path)
    assert "/a/image (8 x 8 uint16)" in str(exc.value)
    with pytest.raises(InputFileError, match="group") as exc:
        open_frames(path, dataset="/a")
    with pytest.raises(InputFileError, match="non-numeric") as exc:
        open_frames(path, dataset="/labels")
    _assert_names_file(exc, path)


def test_different_shapes_in_folder(tmp_path, stack):
    tifffile.imwrite(tmp_path / "a_1.tif", stack[0])
    tifffile.imwrite(tmp_path / "a_2.tif", stack[1][:10])
    with pytest.raises(InputFileError, match="differs") as exc:
        open_frames(tmp_path)
    _assert_names_file(exc, tmp_path / "a_2.tif")


def test_different_shape_found_only_when_read_is_a_frame_error(tmp_path, stack):
    # Formats whose headers are not checked at open (here .npy files) fail per frame.
    np.save(tmp_path / "a_1.npy", stack[0])
    np.save(tmp_path / "a_2.npy", stack[1][:10])
    series = open_frames(str(tmp_path / "*.npy"))
    np.testing.assert_array_equal(series[0], stack[0])
    with pytest.raises(FrameReadError, match="differs") as exc:
        series[1]
    _assert_names_file(exc, tmp_path / "a_2.npy")


def test_truncated_file_in_folder(tmp_path, stack):
    for i in range(3):
        tifffile.imwrite(tmp_path / f"f{i}.tif", stack[i])
    bad = tmp_path / "f1.tif"
    bad.write_bytes(bad.read_bytes()[:300])
    series = open_frames(tmp_path)
    assert len(series) == 3
    with pytest.raises(FrameReadError) as exc:
        series[1]
    _assert_names_file(exc, bad)
    np.testing.assert_array_equal(series[2], stack[2])


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros(5), "1-D"),
        (np.zeros((2, 2, 3, 3)), "4-D"),
        (np.zeros((0, 4, 4)), "no frames"),
        (np.zeros((2, 0, 4)), "zero-sized"),
        (np.zeros((2, 4, 4), complex), "complex"),
        (np.array([["a", "b"], ["c", "d"]]), "non-numeric"),
    ],
)
def test_bad_arrays_in_files(tmp_path, array, match):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(InputFileError, match=match) as exc:
        open_frames(path)
    _assert_names_file(exc, path)
    h5 = tmp_path / "bad.h5"
    with h5py.File(h5, "w") as f:
        f["/entry/data/data"] = array.astype("S1") if array.dtype.kind == "U" else array
    with pytest.raises(InputFileError) as exc:
        open_frames(h5, dataset="/entry/data/data")
    _assert_names_file(exc, h5)


def test_empty_hdf5_dataset(tmp_path):
    path = tmp_path / "empty_ds.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", shape=(0, 16, 16), dtype=np.uint16,
                         maxshape=(None, 16, 16), chunks=(1, 16, 16))
    with pytest.raises(InputFileError, match="no frames") as exc:
        open_frames(path)
    _assert_names_file(exc, path)


def test_bad_framecache(tmp_path, stack):
    path = tmp_path / "fc.npz"
    _write_framecache(path, stack[:2])
    z = dict(np.load(path))
    z["1_row"] = z["1_row"] + 1000  # outside the frame
    np.savez(path, **z)
    series = open_frames(path)
    np.testing.assert_array_equal(series[0], stack[0])
    with pytest.raises(FrameReadError, match="outside") as exc:
        series[1]
    _assert_names_file(exc, path)
    del z["1_data"]
    np.savez(path, **z)
    with pytest.raises(InputFileError, match="lacks") as exc:
        open_frames(path)
    _assert_names_file(exc, path)


def test_truncated_ge_and_npy(tmp_path, stack):
    ge = tmp_path / "cut.ge3"
    with open(ge, "wb") as fh:
        fh.write(bytes(8192) + bytes(1000))
    with pytest.raises(InputFileError) as exc:
        open_frames(ge)
    _assert_names_file(exc, ge)
    npy = tmp_path / "cut.npy"
    np.save(npy, stack)
    npy.write_bytes(npy.read_bytes()[:500])
    with pytest.raises(InputFileError) as exc:
        open_frames(npy)
    _assert_names_file(exc, npy)


# ------------------------------------------------------------------ fuzzing


def _valid_bytes(tmp_path_factory):
    """Small valid files of each format, to truncate and corrupt."""
    d = tmp_path_factory.mktemp("valid")
    arr = (np.arange(2 * 12 * 10) % 251).astype(np.uint16).reshape(2, 12, 10)
    out = {}
    with h5py.File(d / "a.h5", "w") as f:
        f.create_dataset("/entry/data/data", data=arr, chunks=(1, 12, 10), compression="gzip")
    tifffile.imwrite(d / "a.tif", arr, photometric="minisblack")
    fabio.edfimage.EdfImage(data=arr[0]).write(str(d / "a.edf"))
    fabio.cbfimage.CbfImage(data=arr[0].astype(np.int32)).write(str(d / "a.cbf"))
    np.save(d / "a.npy", arr)
    _write_framecache(d / "a.npz", arr)
    with open(d / "a.ge2", "wb") as fh:
        fh.write(bytes(8192) + bytes(2048 * 2048 * 2))
    for p in d.iterdir():
        out[p.suffix] = p.read_bytes()
    return out


def exercise(path: Path) -> None:
    """Open ``path`` and read every frame; only BraggTrackError may come out."""
    try:
        series = open_frames(path)
        for i in range(min(len(series), 4)):
            try:
                frame = series[i]
                assert frame.shape == series.shape
            except FrameReadError:
                pass
        series.close()
    except BraggTrackError as exc:
        assert "\n" not in str(exc)


SUFFIXES = [".h5", ".tif", ".edf", ".cbf", ".ge2", ".npz", ".npy"]


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(suffix=st.sampled_from(SUFFIXES), data=st.binary(min_size=0, max_size=600))
def test_fuzz_random_bytes(tmp_path, suffix, data):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    exercise(path)


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory):
    return _valid_bytes(tmp_path_factory)


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(suffix=st.sampled_from(SUFFIXES), cut=st.floats(0.0, 1.0),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8))
def test_fuzz_truncated_and_corrupted(tmp_path, valid_bytes, suffix, cut, flips):
    data = bytearray(valid_bytes[suffix])
    if suffix == ".ge2":  # keep the big GE file short: header + a little
        data = data[: 8192 + 4096]
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    data = data[: int(cut * len(data))]
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(bytes(data))
    exercise(path)


def test_implausible_headers_refused_without_allocating(tmp_path):
    edf = tmp_path / "huge.edf"
    head = (b"{\nHeaderID = EH:000001:000000:000000 ;\nImage = 1 ;\nByteOrder = LowByteFirst ;\n"
            b"DataType = UnsignedShort ;\nDim_1 = 60000 ;\nDim_2 = 60000 ;\nSize = 7200000000 ;\n")
    edf.write_bytes(head + b" " * (510 - len(head)) + b"}\n" + b"\x01" * 1000)
    with pytest.raises(InputFileError, match="implausible") as exc:
        open_frames(edf)  # 7 GB claimed by a 1.5 kB file
    _assert_names_file(exc, edf)
    npz = tmp_path / "fc.npz"
    np.savez(npz, shape=np.array([10, 10]), nframes=np.array(10**9), dtype=np.array(b"uint16"))
    with pytest.raises(InputFileError, match="does not match") as exc:
        open_frames(npz)
    _assert_names_file(exc, npz)
    np.savez(npz, shape=np.array([10**6, 10**6]), nframes=np.array(0), dtype=np.array(b"uint16"))
    with pytest.raises(InputFileError) as exc:
        open_frames(npz)
    _assert_names_file(exc, npz)


def test_truncated_cbf_does_not_hang(tmp_path):
    # fabio loops forever on a CBF cut before its binary section; the reader must refuse it
    full = tmp_path / "full.cbf"
    fabio.cbfimage.CbfImage(data=np.arange(35, dtype=np.int32).reshape(5, 7)).write(str(full))
    data = full.read_bytes()
    cut = tmp_path / "cut.cbf"
    cut.write_bytes(data[: data.find(b"\x0c\x1a\x04\xd5")])
    with pytest.raises(InputFileError, match="CBF") as exc:
        open_frames(cut)
    _assert_names_file(exc, cut)


# ------------------------------------------------------------------ truncated EDF frames


def test_truncated_edf_frame_is_a_frame_read_error(tmp_path, stack):
    # fabio pads a short EDF data block with zeros: the frame must be unreadable, not zeros
    path = tmp_path / "multi.edf"
    img = fabio.edfimage.EdfImage(data=stack[0])
    for fr in stack[1:3]:
        img.append_frame(fabio.edfimage.EdfImage(data=fr))
    img.write(str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - stack[2].nbytes // 2])  # half of frame 2's data
    series = open_frames(path)
    assert len(series) == 3
    np.testing.assert_array_equal(series[0], stack[0])
    np.testing.assert_array_equal(series[1], stack[1])
    with pytest.raises(FrameReadError, match="incomplete") as exc:
        series[2]
    assert exc.value.index == 2
    _assert_names_file(exc, path)


def test_truncated_edf_in_folder_is_skipped_like_tiff(tmp_path, stack):
    for i in range(3):
        fabio.edfimage.EdfImage(data=stack[i]).write(str(tmp_path / f"f{i}.edf"))
    bad = tmp_path / "f1.edf"
    bad.write_bytes(bad.read_bytes()[:-100])
    series = open_frames(tmp_path)
    with pytest.raises(FrameReadError, match="incomplete") as exc:
        series[1]
    assert exc.value.index == 1
    _assert_names_file(exc, bad)
    np.testing.assert_array_equal(series[2], stack[2])


def test_edf_header_declaring_a_short_data_block_is_refused(tmp_path, stack):
    # A Size smaller than Dim_1 x Dim_2 x itemsize: fabio would read it and zero-pad
    path = tmp_path / "short.edf"
    fabio.edfimage.EdfImage(data=stack[0]).write(str(path))
    raw = path.read_bytes()
    size = stack[0].nbytes
    head_end = raw.index(b"}\n") + 2
    head = raw[:head_end].replace(f"Size = {size} ;".encode(), f"Size = {size // 2:<{len(str(size))}} ;".encode())
    assert head != raw[:head_end] and len(head) == head_end
    path.write_bytes(head + raw[head_end: head_end + size // 2])
    with pytest.raises(FrameReadError, match="incomplete") as exc:
        open_frames(path)[0]
    _assert_names_file(exc, path)


def test_truncated_first_file_in_folder_is_one_bad_frame(tmp_path, stack):
    for i in range(3):
        tifffile.imwrite(tmp_path / f"f{i}.tif", stack[i])
    bad = tmp_path / "f0.tif"
    bad.write_bytes(bad.read_bytes()[:300])
    series = open_frames(tmp_path)
    assert len(series) == 3 and series.shape == stack.shape[1:]
    with pytest.raises(FrameReadError) as exc:
        series[0]
    assert exc.value.index == 0
    _assert_names_file(exc, bad)
    np.testing.assert_array_equal(series[1], stack[1])
    for f in tmp_path.glob("*.tif"):  # nothing readable: the series itself is refused
        f.write_bytes(f.read_bytes()[:300])
    with pytest.raises(InputFileError) as exc:
        open_frames(tmp_path)
    _assert_names_file(exc, bad)


# ------------------------------------------------------------------ Eiger master + data files


def _eiger(tmp_path, parts, names=None, missing=(), pixel_mask=None):
    """An Eiger-style master linking data files data_000001.h5, ... (one per part)."""
    names = names or [f"data_{k + 1:06d}" for k in range(len(parts))]
    master = tmp_path / "series_master.h5"
    with h5py.File(master, "w") as f:
        # links written in reverse: the reader must order them by number, not by creation
        for name, part in reversed(list(zip(names, parts, strict=True))):
            target = f"series_{name}.h5"
            if name not in missing:
                with h5py.File(tmp_path / target, "w") as d:
                    d.create_dataset("/entry/data/data", data=part, chunks=(1, *part.shape[1:]))
            f[f"/entry/data/{name}"] = h5py.ExternalLink(target, "/entry/data/data")
        if pixel_mask is not None:
            f["/entry/instrument/detector/pixel_mask"] = pixel_mask
    return master


def test_eiger_master_reads_every_data_file_in_order(tmp_path, stack):
    second = (stack[:2] + 7).astype(stack.dtype)
    master = _eiger(tmp_path, [stack[:3], second])
    expected = np.concatenate([stack[:3], second])
    for series in (open_frames(master), open_frames(master, dataset="/entry/data")):
        assert len(series) == 5
        assert "Eiger series of 2 data stacks" in series.source
        np.testing.assert_array_equal(series[2], stack[2])  # last frame of data_000001
        np.testing.assert_array_equal(series[3], second[0])  # first frame of data_000002
        np.testing.assert_array_equal(series[4], second[1])
        _assert_series(series, expected)
        np.testing.assert_array_equal(series[1:5], expected[1:5])  # a block across both files
        assert [p.name for p in series.files] == [
            "series_master.h5", "series_data_000001.h5", "series_data_000002.h5"
        ]
        clone = pickle.loads(pickle.dumps(series))
        np.testing.assert_array_equal(clone[3], second[0])
        series.close()
    one = open_frames(master, dataset="/entry/data/data_000002")
    assert len(one) == 2
    np.testing.assert_array_equal(one[0], second[0])


def test_eiger_numbering_is_numeric(tmp_path, stack):
    names = [f"data_{k:06d}" for k in (9, 10, 11)]
    master = _eiger(tmp_path, [stack[:1], stack[1:2], stack[2:4]], names=names)
    series = open_frames(master)
    _assert_series(series, stack)


def test_eiger_missing_data_file_is_named(tmp_path, stack):
    master = _eiger(tmp_path, [stack[:2]], missing=("data_000001",))
    with pytest.raises(InputFileError, match="linked file missing") as exc:
        open_frames(master)
    _assert_names_file(exc, master)
    assert "/entry/data/data_000001 -> series_data_000001.h5" in str(exc.value)


def test_eiger_series_with_one_missing_data_file_is_refused(tmp_path, stack):
    master = _eiger(tmp_path, [stack[:2], stack[2:]], missing=("data_000002",))
    for dataset in (None, "/entry/data"):
        with pytest.raises(InputFileError, match="linked file missing") as exc:
            open_frames(master, dataset=dataset)
        _assert_names_file(exc, master)
        assert "/entry/data/data_000002 -> series_data_000002.h5" in str(exc.value)


def test_eiger_gap_or_mismatched_parts_are_refused(tmp_path, stack):
    master = _eiger(tmp_path, [stack[:2], stack[2:]], names=["data_000001", "data_000003"])
    with pytest.raises(InputFileError, match="data_000002 is missing") as exc:
        open_frames(master)
    _assert_names_file(exc, master)
    master = _eiger(tmp_path, [stack[:2], stack[2:, :10]])
    with pytest.raises(InputFileError, match="differs in frame shape") as exc:
        open_frames(master)
    _assert_names_file(exc, master)


def test_dangling_link_named_when_searching(tmp_path, stack):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["/scan/frames"] = h5py.ExternalLink("gone.h5", "/data")
    with pytest.raises(InputFileError, match="gone.h5: linked file missing") as exc:
        open_frames(path)
    _assert_names_file(exc, path)
    with h5py.File(path, "w") as f:
        f["/entry/data/data"] = h5py.ExternalLink("gone.h5", "/data")
    with pytest.raises(InputFileError, match="/entry/data/data -> gone.h5: linked file missing"):
        open_frames(path)


# ------------------------------------------------------------------ masks


def test_mask_from_eiger_master_is_its_pixel_mask(tmp_path, stack):
    pixel_mask = np.zeros(stack.shape[1:], np.uint32)
    pixel_mask[3, 4] = 1
    pixel_mask[0, :] = 8
    master = _eiger(tmp_path, [stack[:2], stack[2:]], pixel_mask=pixel_mask)
    np.testing.assert_array_equal(load_mask_file(master), pixel_mask != 0)
    np.testing.assert_array_equal(load_mask_file(master, invert=True), pixel_mask == 0)
    # a dataset named like a mask is preferred to frame stacks anywhere in the file
    other = tmp_path / "masks.h5"
    with h5py.File(other, "w") as f:
        f["/entry/data/data"] = stack
        f["/calib/bad_pixel_mask"] = pixel_mask.astype(bool)
    np.testing.assert_array_equal(load_mask_file(other), pixel_mask != 0)


def test_mask_file_with_only_a_frame_stack_is_refused(tmp_path, stack):
    path = tmp_path / "frames.h5"
    with h5py.File(path, "w") as f:
        f["/entry/data/data"] = stack
    with pytest.raises(InputFileError, match="no mask dataset") as exc:
        load_mask_file(path)
    _assert_names_file(exc, path)
    np.testing.assert_array_equal(load_mask_file(path, dataset="/entry/data/data"), stack[0] != 0)
    single = tmp_path / "plain.h5"  # one 2-D image, whatever its name: that is the mask
    with h5py.File(single, "w") as f:
        f["/image"] = (stack[0] > 30000).astype(np.uint8)
    np.testing.assert_array_equal(load_mask_file(single), stack[0] > 30000)


def test_mask_marking_most_pixels_warns(tmp_path):
    with braggtrack_warnings() as messages:
        path = tmp_path / "mask.tif"
        tifffile.imwrite(path, np.ones((8, 10), np.uint8))  # 1 = good, as some tools write
        assert load_mask_file(path).all()
        assert len(messages) == 1
        msg = messages[0]
        assert str(path) in msg and "100.0 %" in msg and "nonzero pixels (1 = bad;" in msg
        assert "--mask-invert" in msg
        assert "\n" not in msg
        assert not load_mask_file(path, invert=True).any()  # inverted: no warning
        few = np.zeros((8, 10), np.uint8)
        few[:2] = 1
        tifffile.imwrite(path, few)
        load_mask_file(path)
        assert len(messages) == 1


@pytest.mark.parametrize("size", [1, 4095, 16384, 16385, 3 * 16384 + 7])
def test_checksum_mapped_a_window_at_a_time_equals_hashing_the_whole_file(tmp_path, monkeypatch,
                                                                       size):
    # Windows of 16 KiB here (64 MiB in use, so that a multi-GB input never sits mapped whole
    # in a worker's RSS): the bytes crossing a window edge must be hashed once, in order.
    import hashlib

    import braggtrack.io as bio

    xxhash = pytest.importorskip("xxhash")
    monkeypatch.setattr(bio, "_CHECKSUM_WINDOW", 16384)
    data = os.urandom(size)
    blob = tmp_path / "blob.bin"
    blob.write_bytes(data)
    assert file_checksum(blob, chunk_size=1000) == hashlib.sha256(data).hexdigest()
    assert file_checksum(blob, algorithm="xxh3_128") == xxhash.xxh3_128(data).hexdigest()


# ------------------------------------------------------------------ TIFF written page by page


def _write_page_by_page(path, frames, **kwargs):
    with tifffile.TiffWriter(path, **kwargs) as writer:
        for fr in frames:
            writer.write(fr)


def test_tiff_written_page_by_page_reads_every_page(tmp_path, stack):
    # tifffile reports one series per page here; series 0 alone would be 1 frame of 4
    path = tmp_path / "loop.tif"
    _write_page_by_page(path, stack)
    series = open_frames(path)
    assert "4 x 24 x 20 uint16" in series.source
    _assert_series(series, stack)
    np.testing.assert_array_equal(series.read(2), stack[2])  # read(i) is page i
    clone = pickle.loads(pickle.dumps(series))  # reopened: still page by page
    np.testing.assert_array_equal(clone[3], stack[3])
    # one header for the whole stack (tifffile's truncate=True): the frames are contiguous
    one_ifd = tmp_path / "one_ifd.tif"
    tifffile.imwrite(one_ifd, stack, truncate=True, photometric="minisblack")
    _assert_series(open_frames(one_ifd), stack)


def test_tiff_pages_of_different_shape_or_dtype_are_refused(tmp_path, stack):
    shapes = tmp_path / "shapes.tif"
    _write_page_by_page(shapes, [stack[0], stack[1][:12, :10], stack[2]])
    with pytest.raises(InputFileError, match="page 1 is 12 x 10 uint16, page 0 24 x 20 uint16"
                       ) as exc:
        open_frames(shapes)
    _assert_names_file(exc, shapes)
    dtypes = tmp_path / "dtypes.tif"
    _write_page_by_page(dtypes, [stack[0], stack[1], stack[2].astype(np.float32)])
    with pytest.raises(InputFileError, match="page 2 is 24 x 20 float32, page 0 24 x 20 uint16"
                       ) as exc:
        open_frames(dtypes)
    _assert_names_file(exc, dtypes)


@pytest.mark.parametrize("kind", ["shaped", "imagej"])
def test_truncated_tiff_says_how_many_frames_were_promised(tmp_path, stack, kind):
    # tifffile logs "invalid page offset" and returns the first page alone as the series
    path = tmp_path / f"{kind}.tif"
    tifffile.imwrite(path, stack, imagej=kind == "imagej", photometric="minisblack")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match="promises 4 frames but only 1 is readable") as exc:
        open_frames(path)
    _assert_names_file(exc, path)


def test_truncated_tiff_written_page_by_page_is_refused(tmp_path, stack):
    path = tmp_path / "loop.tif"
    _write_page_by_page(path, stack)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # each page holds only its own shape: no promise
    with pytest.raises(InputFileError, match=r"page 2 lies beyond the end of the file.*only 2 "
                       "pages readable") as exc:
        open_frames(path)
    _assert_names_file(exc, path)


# ------------------------------------------------------------------ HDF5 data never written


def _two_part_vds(folder, stack):
    """``folder/vds.h5``: a virtual dataset of ``stack`` whose halves are ``part0.h5`` and
    ``part1.h5`` beside it, named relative to it."""
    layout = h5py.VirtualLayout(shape=stack.shape, dtype=stack.dtype)
    half = len(stack) // 2
    for k in range(2):
        with h5py.File(folder / f"part{k}.h5", "w") as f:
            f["/data"] = stack[half * k: half * (k + 1)]
        layout[half * k: half * (k + 1)] = h5py.VirtualSource(
            f"part{k}.h5", "/data", shape=(half, *stack.shape[1:]))
    path = folder / "vds.h5"
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("/entry/data/data", layout, fillvalue=0)
    return path


def test_hdf5_virtual_dataset_with_missing_source_is_refused(tmp_path, stack):
    path = _two_part_vds(tmp_path, stack)
    (tmp_path / "part1.h5").unlink()  # HDF5 reads its frames as zeros, without an error
    with pytest.raises(InputFileError, match="source file part1.h5, which is missing") as exc:
        open_frames(path)
    _assert_names_file(exc, path)


def test_hdf5_frames_never_written_are_frame_read_errors(tmp_path, stack):
    # an aborted acquisition: allocated for 4 frames, 2 written; the rest is the fill value
    path = tmp_path / "aborted.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("/entry/data/data", shape=stack.shape, dtype=stack.dtype,
                              chunks=(1, 24, 20))
        ds[:2] = stack[:2]
    series = open_frames(path)
    assert len(series) == 4
    np.testing.assert_array_equal(series[1], stack[1])
    np.testing.assert_array_equal(series[0:2], stack[:2])
    for i in (2, 3):
        with pytest.raises(FrameReadError, match="never written") as exc:
            series[i]
        assert exc.value.index == i and "fill value" in exc.value.reason
        _assert_names_file(exc, path)
    with pytest.raises(FrameReadError, match="frame 2: never written"):
        series[1:4]  # a block read names the first frame never written
    tiles = tmp_path / "tiles.h5"  # a frame of 4 chunks, 1 of them written
    with h5py.File(tiles, "w") as f:
        ds = f.create_dataset("/entry/data/data", shape=stack.shape, dtype=stack.dtype,
                              chunks=(1, 12, 10))
        ds[:3] = stack[:3]
        ds[3, :12, :10] = stack[3, :12, :10]
    with pytest.raises(FrameReadError, match="3 of its 4 chunks never written") as exc:
        open_frames(tiles)[3]
    assert exc.value.index == 3
    np.testing.assert_array_equal(open_frames(tiles)[2], stack[2])


def test_hdf5_external_raw_file_missing_or_short_is_refused(tmp_path, stack):
    path = tmp_path / "ext.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", shape=stack.shape, dtype="<u2",
                         external=[("raw.bin", 0, stack.nbytes)])
    with pytest.raises(InputFileError, match="external file raw.bin, which is missing") as exc:
        open_frames(path)
    _assert_names_file(exc, path)
    (tmp_path / "raw.bin").write_bytes(stack.astype("<u2").tobytes()[: stack.nbytes // 2])
    with pytest.raises(InputFileError, match=f"needs {stack.nbytes} bytes of its external file "
                       f"raw.bin, which holds {stack.nbytes // 2}") as exc:
        open_frames(path)
    _assert_names_file(exc, path)
    (tmp_path / "raw.bin").write_bytes(stack.astype("<u2").tobytes())
    _assert_series(open_frames(path), stack)


def test_hdf5_files_include_virtual_sources_and_external_raw_files(tmp_path, stack,
                                                                  monkeypatch):
    # what a resumed run checks for changes: the files holding the data, not only the index
    _two_part_vds(tmp_path, stack)
    stack.astype("<u2").tofile(tmp_path / "raw.bin")
    with h5py.File(tmp_path / "ext.h5", "w") as f:
        f.create_dataset("/entry/data/data", shape=stack.shape, dtype="<u2",
                         external=[("raw.bin", 0, h5py.h5f.UNLIMITED)])
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative source names resolve against the file's folder
    vds = open_frames(Path("..") / "vds.h5")
    _assert_series(vds, stack)
    assert [p.resolve() for p in vds.files] == [
        tmp_path / "vds.h5", tmp_path / "part0.h5", tmp_path / "part1.h5"]
    ext = open_frames(tmp_path / "ext.h5")
    assert [p.resolve() for p in ext.files] == [tmp_path / "ext.h5", tmp_path / "raw.bin"]


def test_hdf5_stack_stored_frames_last_warns(tmp_path, stack):
    with braggtrack_warnings() as messages:
        path = tmp_path / "hwn.h5"
        with h5py.File(path, "w") as f:
            f["/entry/data/data"] = np.zeros((32, 32, 4), np.uint16)  # 4 frames of 32 x 32
            f["/entry/other/data"] = stack
        series = open_frames(path)
        assert len(series) == 32 and series.shape == (32, 4)  # read as stored
        assert len(messages) == 1
        msg = messages[0]
        assert str(path) in msg and "/entry/data/data" in msg and "frames on the last axis" in msg
        assert "4 x 32 x 32" in msg and "\n" not in msg
        open_frames(path, dataset="/entry/other/data")  # 4 x 24 x 20: frames first, no warning
        assert len(messages) == 1


# ------------------------------------------------------------------ corrupt CBF, bracket globs


def _corrupt_cbf(path):
    """Change one byte of a CBF binary section whose pixels differ by less than 64 from
    their neighbours: every byte is one byte-offset delta, so the damaged file still
    decodes (into wrong pixels) and only the Content-MD5 tells."""
    data = bytearray(path.read_bytes())
    start = data.find(b"\x0c\x1a\x04\xd5") + 4
    data[start + 100] ^= 0x01
    path.write_bytes(bytes(data))


def test_cbf_not_matching_its_content_md5_is_a_frame_read_error(tmp_path, stack):
    frames = (stack % 50).astype(np.int32)
    for i, fr in enumerate(frames[:3]):
        fabio.cbfimage.CbfImage(data=fr).write(str(tmp_path / f"f_{i}.cbf"))
    bad = tmp_path / "f_1.cbf"
    _corrupt_cbf(bad)
    assert not np.array_equal(fabio.open(str(bad)).data, frames[1])  # fabio: garbage, no error
    series = open_frames(tmp_path)
    assert len(series) == 3
    np.testing.assert_array_equal(series[0], frames[0])
    np.testing.assert_array_equal(series[2], frames[2])
    with pytest.raises(FrameReadError, match="does not match its Content-MD5") as exc:
        series[1]
    assert exc.value.index == 1
    _assert_names_file(exc, bad)
    with pytest.raises(FrameReadError, match="Content-MD5") as exc:
        open_frames(bad)[0]
    _assert_names_file(exc, bad)


def test_glob_in_a_folder_whose_name_has_brackets(tmp_path, stack):
    literal, plain = tmp_path / "scan[1]", tmp_path / "scan1"
    for folder, frames in ((literal, stack[:3]), (plain, stack[3:])):
        folder.mkdir()
        for i, fr in enumerate(frames):
            tifffile.imwrite(folder / f"img_{i}.tif", fr)
    series = open_frames(str(literal / "*.tif"))  # the folder named so, not scan1/
    assert len(series) == 3 and series.files[0].parent == literal
    _assert_series(series, stack[:3])
    nested = open_frames(str(literal / "img_[12].tif"))  # the file part is still a pattern
    np.testing.assert_array_equal(nested[0], stack[1])
    assert len(open_frames(str(plain / "*.tif"))) == 1
    assert len(open_frames(str(tmp_path / "scan[12]" / "*.tif"))) == 1  # no such folder: glob
