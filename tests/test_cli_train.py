"""Training on a user's own data from the command line, then using the model (issue 5)."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import render_frame


def cli(*args):
    return subprocess.run([sys.executable, "-m", "braggtrack.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def braggnn_layout(tmp_path):
    """Frames + peaks in the original BraggNN layout (frames float32 N x H x W; peak_* arrays)."""
    rng = np.random.default_rng(0)
    frames, fidx, rows, cols = [], [], [], []
    for f in range(6):
        peaks = []
        for _ in range(12):
            x, y = rng.uniform(8, 56, 2)
            peaks.append((x, y, rng.uniform(0.8, 1.5), rng.uniform(3e3, 2e4)))
            fidx.append(f)
            rows.append(y)
            cols.append(x)
        frames.append(rng.poisson(render_frame((64, 64), peaks, 30.0)).astype(np.float32))
    with h5py.File(tmp_path / "frames.h5", "w") as h:
        h["frames"] = np.stack(frames)
    with h5py.File(tmp_path / "peaks.h5", "w") as h:
        h["peak_fidx"] = np.array(fidx)
        h["peak_row"] = np.array(rows)
        h["peak_col"] = np.array(cols)
    return tmp_path


@pytest.mark.slow
def test_train_on_braggnn_layout_then_find_with_the_model(braggnn_layout):
    d = braggnn_layout
    model = d / "mine.safetensors"
    res = cli("train", d / "frames.h5", "--peaks", d / "peaks.h5", "-o", model,
              "--epochs", "2", "--batch-size", "64", "-q")
    assert res.returncode == 0, res.stderr[-2000:]
    assert model.exists() and "validation median error" in res.stdout
    out = d / "peaks.parquet"
    res = cli("find", d / "frames.h5", "--dataset", "frames", "--model", model, "-o", out, "-q")
    assert res.returncode == 0, res.stderr[-2000:]
    import pandas as pd

    table = pd.read_parquet(out)
    assert len(table) > 0 and (table.localizer == "braggnn").all()


def test_train_needs_peaks_for_frames(braggnn_layout):
    res = cli("train", braggnn_layout / "frames.h5", "-o", braggnn_layout / "m.safetensors")
    assert res.returncode == 2 and "--peaks" in res.stderr and "Traceback" not in res.stderr


def _one_line_error(res, *needles):
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert str(needle) in lines[0], lines[0]


def test_train_on_2d_frames_is_one_line(braggnn_layout):
    d = braggnn_layout
    with h5py.File(d / "frames2d.h5", "w") as h:
        h["frames"] = np.zeros((64, 64), np.float32)
    res = cli("train", d / "frames2d.h5", "--peaks", d / "peaks.h5", "-o", d / "m.safetensors", "-q")
    _one_line_error(res, "frames2d.h5", "'frames'", "(64, 64)", "N x H x W")


def test_train_output_refused_before_training(braggnn_layout):
    """An unusable -o is refused at once, not after the epochs (and nothing is written)."""
    d = braggnn_layout
    (d / "emptydir").mkdir()
    (d / "old.safetensors").write_bytes(b"keep me")
    args = ("train", d / "frames.h5", "--peaks", d / "peaks.h5", "--epochs", "50", "-q", "-o")
    for out, needle in [
        (d / "emptydir", "is a directory"),
        (d / "model.txt", "must end in .safetensors"),
        (d / "old.safetensors", "exists"),
        (d / "nowhere" / "m.safetensors", "does not exist"),
    ]:
        _one_line_error(cli(*args, out), out, needle)
    assert (d / "old.safetensors").read_bytes() == b"keep me"
    assert not (d / "model.txt").exists() and not (d / "model.checkpoints").exists()
    assert not (d / "emptydir.checkpoints").exists() and not (d / "nowhere").exists()


def test_find_with_an_exported_model_is_one_line(braggnn_layout, tmp_path):
    from braggtrack.braggnn import BraggNN, export_model

    d = braggnn_layout
    ts = export_model(BraggNN(), tmp_path / "ex_default.pt", format="torchscript")
    res = cli("find", d / "frames.h5", "--dataset", "frames", "--model", ts, "-o",
              d / "p.parquet", "-q")
    _one_line_error(res, f"{ts} is a TorchScript export for other tools",
                    "--model needs the .safetensors file")
    assert "Warning" not in res.stderr and "weights_only" not in res.stderr
