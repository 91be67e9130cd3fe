"""The command line as a user meets it: help, one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

COMMANDS = ["simulate", "find", "track", "run", "demo", "report", "compare", "train", "export",
            "bench"]


def cli(*args, check=False):
    return subprocess.run([sys.executable, "-m", "braggtrack.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, check=check)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_option_with_defaults(command):
    res = cli(command, "--help")
    assert res.returncode == 0
    assert "Usage" in res.stdout
    if command in ("find", "run"):
        for opt in ("--threshold", "--min-score", "--patch", "--localizer", "--bin", "--dataset"):
            assert opt in res.stdout
        assert "[default: 11]" in res.stdout


def _assert_one_line_error(res, *needles):
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert str(n) in lines[0]


def _bad_inputs(tmp):
    missing = tmp / "missing.h5"
    fake = tmp / "fake.h5"
    fake.write_bytes(b"this is not hdf5 at all")
    trunc = tmp / "trunc.h5"
    with h5py.File(tmp / "good.h5", "w") as f:
        f.create_dataset("/entry/data/data", data=np.ones((3, 16, 16), np.uint16))
    trunc.write_bytes((tmp / "good.h5").read_bytes()[:700])
    no3d = tmp / "no3d.h5"
    with h5py.File(no3d, "w") as f:
        f.create_dataset("x", data=np.ones(5))
    folder = tmp / "mixed"
    folder.mkdir()
    import tifffile

    tifffile.imwrite(folder / "a_000.tif", np.ones((8, 8), np.uint16))
    tifffile.imwrite(folder / "a_001.tif", np.ones((9, 8), np.uint16))
    empty = tmp / "empty"
    empty.mkdir()
    return {"missing": missing, "fake": fake, "trunc": trunc, "no3d": no3d, "mixed": folder,
            "empty": empty}


@pytest.mark.parametrize("case", ["missing", "fake", "trunc", "no3d", "mixed", "empty"])
def test_bad_input_is_one_line_exit_2(tmp_path, case):
    path = _bad_inputs(tmp_path)[case]
    res = cli("find", path, "-o", tmp_path / "p.parquet", "--localizer", "centroid", "-q")
    _assert_one_line_error(res, path.name)


def test_wrong_dataset_names_the_file(tmp_path):
    path = tmp_path / "good.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=np.ones((3, 16, 16), np.uint16))
    res = cli("find", path, "-o", tmp_path / "p.parquet", "--dataset", "/nope", "-q")
    _assert_one_line_error(res, "good.h5", "/nope")


@pytest.mark.parametrize("opts,needle", [
    (["--threshold", "-1"], "--threshold"),
    (["--patch", "10"], "--patch"),
    (["--localizer", "magic"], "--localizer"),
    (["--bin", "0"], "--bin"),
])
def test_nonsense_options_are_one_line_exit_2(tmp_path, opts, needle):
    path = tmp_path / "good.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=np.ones((2, 16, 16), np.uint16))
    res = cli("find", path, "-o", tmp_path / "p.parquet", *opts, "-q")
    _assert_one_line_error(res, needle)


def test_find_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "good.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=np.ones((2, 16, 16), np.uint16))
    out = tmp_path / "p.parquet"
    out.write_bytes(b"precious")
    res = cli("find", path, "-o", out, "-q")
    _assert_one_line_error(res, "--force")
    assert out.read_bytes() == b"precious"


def test_simulate_writes_a_series_open_frames_reads_back_with_truth(tmp_path):
    from braggtrack.io import open_frames
    from braggtrack.simulate import read_truth

    out = tmp_path / "s.h5"
    res = cli("simulate", out, "--frames", 5, "--shape", 128, 128, "--peaks", 20, "--messy", 0.3,
              "--seed", 1)
    assert res.returncode == 0, res.stderr
    series = open_frames(out)
    assert len(series) == 5 and series.shape == (128, 128)
    truth = read_truth(out)
    assert set(truth.frame) == set(range(5)) and {"x", "y", "kind"} <= set(truth.columns)
    res = cli("simulate", out, "--frames", 2)
    _assert_one_line_error(res, "--force")


def test_unreadable_frame_in_folder_is_logged_and_exit_3(tmp_path):
    import tifffile

    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        img = rng.poisson(20, (32, 32)).astype(np.uint16)
        img[15:18, 15:18] += np.array([[200, 400, 200], [400, 900, 400], [200, 400, 200]],
                                      dtype=np.uint16)
        tifffile.imwrite(folder / f"f_{i}.tif", img)
    bad = folder / "f_1.tif"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated, as a crashed writer leaves it
    res = cli("find", folder, "-o", tmp_path / "p.parquet", "--localizer", "centroid", "-q")
    assert res.returncode == 3, res.stderr
    assert "frame 1 skipped" in res.stderr and "Traceback" not in res.stderr
    res = cli("find", folder, "-o", tmp_path / "q.parquet", "--localizer", "centroid", "-q",
              "--strict")
    assert res.returncode == 2 and "f_1.tif" in res.stderr
    # A run's frames table names each frame's file, so a skipped one is found by name.
    res = cli("run", folder, "-o", tmp_path / "run", "--localizer", "centroid", "-q",
              "--workers", "1", "--no-report")
    assert res.returncode == 3, res.stderr
    import pandas as pd

    frames = pd.read_parquet(tmp_path / "run" / "frames.parquet")
    assert frames.file.tolist() == ["f_0.tif", "f_1.tif", "f_2.tif"]
    assert frames.set_index("file").status["f_1.tif"] != "ok"


@pytest.mark.parametrize("n_darks", [1, 2])
def test_dark_files_are_subtracted(tmp_path, n_darks):
    """One --dark file or several (their median): a peak on a 500-count dark pedestal is found
    where it is, with its background-subtracted intensity."""
    import pandas as pd

    from conftest import render_frame

    frame = render_frame((48, 48), [(20.3, 25.6, 1.0, 8000.0)], background=0.0)
    rng = np.random.default_rng(0)
    darks = []
    for k in range(n_darks):
        d = tmp_path / f"dark{k}.npy"
        np.save(d, np.full((48, 48), 500.0) + rng.normal(0, 0.5, (48, 48)))
        darks += ["--dark", d]
    frames = tmp_path / "frames.npy"
    np.save(frames, rng.poisson(frame + 500.0)[None].astype(np.float32))
    res = cli("find", frames, "-o", tmp_path / "p.parquet", "--localizer", "gauss", "-q", *darks)
    assert res.returncode == 0, res.stderr
    table = pd.read_parquet(tmp_path / "p.parquet")
    ok = table[table.ok]
    assert len(ok) == 1
    assert abs(ok.x.iloc[0] - 20.3) < 0.1 and abs(ok.y.iloc[0] - 25.6) < 0.1
    assert abs(ok.background.iloc[0]) < 20  # the 500-count pedestal is gone


@pytest.mark.parametrize("args", [["find", "--bogus"], ["find"], ["bench", "extra"],
                                  ["track", "a.parquet", "--memory", "many"]])
def test_usage_errors_are_clicks_message_exit_2_never_a_traceback(args):
    # typer >= 0.22 raises the classes of its own copy of click, not click's.
    res = cli(*args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("Error: ")


def test_summary_line_says_why_peaks_were_rejected(tmp_path):
    import pandas as pd

    from braggtrack.cli import _rejections

    table = pd.DataFrame({"ok": [True, False, False, False, False],
                          "reason": ["", "uncertain", "edge", "uncertain", "off_centre"]})
    assert _rejections(table) == "; rejected: uncertain 2, edge 1, off_centre 1"
    assert _rejections(table[table.ok]) == ""
    # From the command line: one peak well inside the frame, one on its edge.
    frames = np.random.default_rng(0).poisson(20, (2, 48, 48)).astype(np.uint16)
    frames[:, 22:25, 22:25] += 4000
    frames[:, 0:2, 10:13] += 4000
    path = tmp_path / "edge.h5"
    with h5py.File(path, "w") as f:
        f["/entry/data/data"] = frames
    res = cli("find", path, "-o", tmp_path / "p.parquet", "-q", "--localizer", "centroid",
              check=True)
    assert "2 accepted; rejected: edge 2" in res.stdout, res.stdout


def test_a_run_that_finds_nothing_says_what_to_try(tmp_path):
    # Every pixel saturated (masked as such): nothing can be found, and the console says why.
    path = tmp_path / "sat.h5"
    with h5py.File(path, "w") as f:
        f["/entry/data/data"] = np.full((2, 40, 40), 65535, np.uint16)
    res = cli("find", path, "-o", tmp_path / "p.parquet", "-q", check=True)
    assert "0 peaks" in res.stdout and "no peak found" in res.stdout, res.stdout
    assert "Warning" not in res.stderr, res.stderr
    res = cli("run", path, "-o", tmp_path / "run", "-q", "--workers", "1", check=True)
    assert "no peak found" in res.stdout and "UserWarning" not in res.stderr, res.stderr


def test_patch_size_must_fit_the_network_and_train_makes_one_that_does(tmp_path):
    series = tmp_path / "s.h5"
    cli("simulate", series, "--frames", 4, "--shape", 128, 128, "--peaks", 25, "--seed", 3,
        check=True)
    # The shipped network takes 11x11 patches: refused before any frame is read, with advice.
    res = cli("find", series, "-o", tmp_path / "p.parquet", "-q", "--patch", 9)
    _assert_one_line_error(res, "--patch 9 does not fit the shipped model")
    assert "--localizer pvoigt" in res.stderr
    # A network trained on 9x9 patches (labels from the pvoigt fits) is then usable with them.
    fits = tmp_path / "fits.parquet"
    cli("find", series, "-o", fits, "-q", "--localizer", "pvoigt", "--patch", 9, check=True)
    model = tmp_path / "m9.safetensors"
    cli("train", series, "--peaks", fits, "-o", model, "--epochs", 1, "--patch", 9, "-q",
        check=True)
    config = json.loads(model.with_suffix(".json").read_text())["config"]
    assert config["patch"] == 9 and config["gated_centroid"]  # the shipped architecture
    res = cli("find", series, "-o", tmp_path / "p9.parquet", "-q", "--patch", 9,
              "--model", model, check=True)
    assert "peaks (" in res.stdout
    res = cli("train", "simulate", "-o", tmp_path / "x.safetensors", "--init", "default",
              "--patch", 9)
    _assert_one_line_error(res, "--patch cannot change")


# -------------------------------------------------------------------- review 7 defects
@pytest.fixture
def main_in_process(monkeypatch, capsys):
    """Run ``braggtrack.cli.main`` here (API functions can then be replaced) and return
    ``(exit status, stderr)``; the logger settings main() makes are undone afterwards."""
    import logging

    from braggtrack import cli as cli_mod

    names = ["braggtrack", "tifffile", "fabio", "fabio.edfimage", "fabio.cbfimage",
             "fabio.openimage"]
    saved = [(lg, lg.level, list(lg.handlers), lg.propagate)
             for lg in map(logging.getLogger, names)]

    def call(*args):
        monkeypatch.setattr(sys, "argv", ["braggtrack", *map(str, args)])
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            cli_mod.main()
        return info.value.code, capsys.readouterr().err

    import warnings

    shown = warnings.showwarning
    yield call
    warnings.showwarning = shown
    for lg, level, handlers, propagate in saved:
        lg.setLevel(level)  # setLevel, not the attribute: it clears the loggers' caches
        lg.handlers[:] = handlers
        lg.propagate = propagate


def _never(*args, **kwargs):
    raise AssertionError("the work started although the output cannot be written")


def _assert_one_line(code, err, *needles):
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert str(n) in lines[0], err


def test_output_under_a_file_is_refused_before_any_work(tmp_path, monkeypatch, main_in_process):
    """``-o afile/x.csv`` used to fail with a FileExistsError traceback after all the work."""
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    series = tmp_path / "good.h5"
    with h5py.File(series, "w") as f:
        f["/entry/data/data"] = np.ones((2, 16, 16), np.uint16)
    peaks = tmp_path / "peaks.csv"
    pd.DataFrame({"frame": [0, 1], "x": [5.0, 5.1], "y": [6.0, 6.0], "ok": True}).to_csv(
        peaks, index=False)
    monkeypatch.setattr("braggtrack.pipeline.find", _never)
    monkeypatch.setattr("braggtrack.runner.link_and_measure", _never)
    monkeypatch.setattr("braggtrack.runner.run", _never)
    monkeypatch.setattr("braggtrack.braggnn.load_model", _never)
    cases = [
        (["find", series, "-o", "afile/x.csv", "-q"], "afile/x.csv"),
        (["find", series, "-o", "afile/deeper/x.csv", "-q"], "afile/deeper/x.csv"),
        (["track", peaks, "-o", "afile/t.csv"], "afile/t.csv"),
        (["track", peaks, "-o", "t.csv", "--particles", "afile/p.csv"], "afile/p.csv"),
        (["export", "afile/x.onnx"], "afile/x.onnx"),
        (["run", series, "-o", "afile/sub", "-q"], "afile/sub"),
    ]
    for args, named in cases:
        code, err = main_in_process(*args)
        _assert_one_line(code, err, f"error: {named}: afile exists and is not a folder")
    code, err = main_in_process("run", series, "-o", "afile", "-q")
    _assert_one_line(code, err, "error: afile: exists and is not a folder")
    assert not (tmp_path / "t.csv").exists()


def _unwritable_folder(tmp_path):
    """A folder in which no file can be made, or None: a read-only one (not for root, who
    writes there anyway), else /sys, where even root cannot create a file."""
    import os

    candidates = [tmp_path / "ro", Path("/sys")]
    candidates[0].mkdir()
    candidates[0].chmod(0o555)
    for folder in candidates:
        try:
            (folder / "probe").write_text("")
        except OSError:
            return folder
        os.unlink(folder / "probe")
    return None


def test_output_in_an_unwritable_folder_is_refused_before_any_work(
        tmp_path, monkeypatch, main_in_process):
    folder = _unwritable_folder(tmp_path)
    if folder is None:
        pytest.skip("no folder here refuses new files")
    series = tmp_path / "good.h5"
    with h5py.File(series, "w") as f:
        f["/entry/data/data"] = np.ones((2, 16, 16), np.uint16)
    monkeypatch.setattr("braggtrack.pipeline.find", _never)
    try:
        code, err = main_in_process("find", series, "-o", folder / "x.csv", "-q")
        _assert_one_line(code, err, f"{folder / 'x.csv'}: cannot write in folder {folder}")
        code, err = main_in_process("find", series, "-o", folder / "new" / "x.csv", "-q")
        _assert_one_line(code, err, f"cannot write in folder {folder}")
    finally:
        (tmp_path / "ro").chmod(0o755)


@pytest.mark.parametrize("exc,line", [
    (PermissionError(13, "Permission denied", "/data/x.csv"), "error: /data/x.csv: Permission denied"),
    # os.replace(tmp, out): the file the user named is the second one
    (IsADirectoryError(21, "Is a directory", "/d/.x.csv.tmp-1", None, "/d/x.csv"),
     "error: /d/x.csv: Is a directory"),
    # h5py and pyarrow raise OSErrors of their own text, sometimes over several lines
    (OSError("Unable to create file\n(disk full)"), "error: Unable to create file (disk full)"),
])
def test_an_os_error_escaping_a_command_is_one_line(tmp_path, monkeypatch, main_in_process,
                                                    exc, line):
    series = tmp_path / "good.h5"
    with h5py.File(series, "w") as f:
        f["/entry/data/data"] = np.ones((2, 16, 16), np.uint16)

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr("braggtrack.pipeline.find", fail)
    code, err = main_in_process("find", series, "-o", tmp_path / "x.csv", "-q")
    _assert_one_line(code, err)
    assert err.strip() == line


@pytest.mark.parametrize("lr", ["nan", "inf", "-1", "0"])
def test_train_refuses_a_learning_rate_that_is_not_finite_and_positive(
        tmp_path, monkeypatch, main_in_process, lr):
    monkeypatch.setattr("braggtrack.train._fit", _never)
    code, err = main_in_process("train", "simulate", "-o", tmp_path / "m.safetensors", "-q",
                                "--lr", lr)
    _assert_one_line(code, err, "--lr must be a finite number > 0", f"got {float(lr)}")
    assert not (tmp_path / "m.safetensors").exists()


def test_metadata_warnings_are_one_line(logged):
    import logging
    import warnings

    from braggtrack.cli import _one_line_warnings
    from braggtrack.metadata import FrameMetaWarning

    shown = warnings.showwarning
    try:
        _one_line_warnings(logging.getLogger("braggtrack"))
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("meta.csv: no metadata for 2 of 12 frames", FrameMetaWarning,
                          stacklevel=1)
    finally:
        warnings.showwarning = shown
    assert logged == ["meta.csv: no metadata for 2 of 12 frames"]


def test_a_series_of_which_no_frame_can_be_read_is_an_error(tmp_path, main_in_process):
    # An aborted acquisition: the file was allocated for 3 frames and none was written.
    # `find` used to write an empty table and blame --threshold, `run` to exit 3 like a
    # series with one bad frame.
    series = tmp_path / "unwritten.h5"
    with h5py.File(series, "w") as f:
        f.create_dataset("entry/data/data", shape=(3, 64, 64), dtype=np.uint16, chunks=(1, 64, 64))
    code, err = main_in_process("find", series, "-o", tmp_path / "p.csv", "-q",
                                "--localizer", "centroid")
    # Each skipped frame is warned about as it is met; the error is the last line.
    assert code == 2 and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("error: ")
    for needle in ("unwritten.h5", "none of its 3 frame(s) could be read", "never written",
                   "no table written"):
        assert needle in last
    assert not (tmp_path / "p.csv").exists()
    code, err = main_in_process("run", series, "-o", tmp_path / "r", "-q", "--workers", "1",
                                "--localizer", "centroid")
    assert code == 2
    assert err.splitlines()[-1].startswith("error: ") and "none of its 3 frame(s)" in err


def test_mask_invert_reads_a_good_pixel_mask(tmp_path, main_in_process):
    # Cheetah/CrystFEL masks mark the good pixels; without the flag such a file masks
    # nearly everything (and says so), with it exactly the zero pixels are bad.
    import pandas as pd
    import tifffile

    from conftest import render_frame

    peaks = [(20.3, 15.7, 1.0, 5000.0), (45.6, 40.2, 1.2, 8000.0), (12.1, 50.45, 0.9, 3000.0)]
    frame = render_frame((64, 64), peaks).astype(np.uint16)
    series = tmp_path / "s.h5"
    with h5py.File(series, "w") as f:
        f["/entry/data/data"] = np.stack([frame, frame])
    good = np.ones((64, 64), np.uint8)
    good[35:46, 40:52] = 0  # a dead region over the second peak
    tifffile.imwrite(tmp_path / "good.tif", good)
    code, err = main_in_process("find", series, "-o", tmp_path / "p.csv", "-q", "--localizer",
                                "centroid", "--mask", tmp_path / "good.tif", "--mask-invert")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "p.csv")
    ok = table[table.ok]
    assert len(ok) == 4 and (np.hypot(ok.x - 45.6, ok.y - 40.2) > 5).all()
    code, err = main_in_process("run", series, "-o", tmp_path / "r", "-q", "--workers", "1",
                                "--localizer", "centroid", "--mask", tmp_path / "good.tif",
                                "--mask-invert", "--no-report")
    assert code == 0, err
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["fingerprint"]["calibration"]["mask_invert"] is True
    run_ok = pd.read_parquet(tmp_path / "r" / "peaks.parquet").query("ok")
    assert len(run_ok) == 4
    # Without the flag the same file is the wrong way round, and the warning says how to fix it.
    code, err = main_in_process("find", series, "-o", tmp_path / "q.csv", "-q", "--localizer",
                                "centroid", "--mask", tmp_path / "good.tif")
    assert "--mask-invert" in err


def test_a_dark_of_another_shape_is_refused_naming_its_file(tmp_path, main_in_process):
    import tifffile

    series = tmp_path / "s.h5"
    with h5py.File(series, "w") as f:
        f["/entry/data/data"] = np.ones((2, 32, 40), np.uint16)
    tifffile.imwrite(tmp_path / "dark.tif", np.zeros((32, 32), np.uint16))
    for command in (["find", series, "-o", tmp_path / "p.csv"],
                    ["run", series, "-o", tmp_path / "r", "--workers", "1"]):
        code, err = main_in_process(*command, "-q", "--dark", tmp_path / "dark.tif")
        _assert_one_line(code, err, "dark.tif", "dark shape 32 x 32 does not match the "
                                                "frames' 32 x 40")


def test_mask_invert_without_a_mask_is_refused(tmp_path, main_in_process):
    series = tmp_path / "s.h5"
    with h5py.File(series, "w") as f:
        f["/entry/data/data"] = np.ones((2, 16, 16), np.uint16)
    for command in (["find", series, "-o", tmp_path / "p.csv"],
                    ["run", series, "-o", tmp_path / "r", "--workers", "1"]):
        code, err = main_in_process(*command, "-q", "--mask-invert")
        _assert_one_line(code, err, "--mask-invert needs --mask")
