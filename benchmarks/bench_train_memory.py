"""Peak resident memory of braggtrack.train on a large and a 10x smaller BraggNN-layout file.

Writes two frames HDF5 files in the BraggNN layout (dataset ``frames``, float32
N x H x W, about 3 GB and 0.3 GB by default) plus their peak files into a temporary
folder, trains one short epoch on each in a fresh subprocess and prints each
subprocess's peak RSS and their ratio (target: within 1.5x, i.e. memory does not grow
with the data set).  The files are deleted afterwards.

Run: ``.venv/bin/python benchmarks/bench_train_memory.py [--gb 3.0] [--folder /tmp]``
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = 512  # frame side, pixels
PEAKS_PER_FRAME = 2

CHILD = r"""
import resource, sys, time
from braggtrack.train import BraggNNLayoutSource, train_model
frames, peaks, out = sys.argv[1:4]
t = time.perf_counter()
r = train_model(BraggNNLayoutSource(frames, peaks, chunk_frames=16), out, epochs=1,
                batch_size=256, val_fraction=0.05, progress=False, threads=1, buffer_size=4096)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB on Linux
print(f"{rss:.1f} {time.perf_counter() - t:.1f} {len(r.history)}")
"""


def write_layout(folder: Path, n_frames: int, seed: int) -> tuple[Path, Path]:
    """Frames with a flat background and two Gaussian peaks each, written in blocks."""
    import h5py

    rng = np.random.default_rng(seed)
    fpath, ppath = folder / f"frames-{n_frames}.h5", folder / f"peaks-{n_frames}.h5"
    yy, xx = np.mgrid[:15, :15]
    fidx, rows, cols = [], [], []
    with h5py.File(fpath, "w") as f:
        data = f.create_dataset("frames", (n_frames, SIZE, SIZE), dtype="f4", chunks=(1, SIZE, SIZE))
        block = 32
        # One noise block reused throughout: drawing 3 GB of Poisson noise would dominate
        # the run, and the content does not matter for memory.
        noise = rng.poisson(5.0, (block, SIZE, SIZE)).astype(np.float32)
        for a in range(0, n_frames, block):
            b = min(a + block, n_frames)
            frames = noise[: b - a].copy()
            for k in range(b - a):
                for _ in range(PEAKS_PER_FRAME):
                    r, c = rng.integers(20, SIZE - 20, 2)
                    sr, sc = rng.uniform(-0.5, 0.5, 2)
                    frames[k, r - 7:r + 8, c - 7:c + 8] += 2000 * np.exp(
                        -((xx - 7 - sc) ** 2 + (yy - 7 - sr) ** 2) / 2
                    )
                    fidx.append(a + k)
                    rows.append(r + sr)
                    cols.append(c + sc)
            data[a:b] = frames
    with h5py.File(ppath, "w") as f:
        f["peak_fidx"] = np.asarray(fidx)
        f["peak_row"] = np.asarray(rows, np.float32)
        f["peak_col"] = np.asarray(cols, np.float32)
        f["npeaks"] = np.full(n_frames, PEAKS_PER_FRAME)
    return fpath, ppath


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=3.0, help="size of the large frames file")
    ap.add_argument("--folder", default=None, help="where to write the temporary files")
    args = ap.parse_args()
    frame_bytes = SIZE * SIZE * 4
    n_large = int(args.gb * 1e9 / frame_bytes)
    n_small = max(n_large // 10, 32)
    tmp = Path(tempfile.mkdtemp(prefix="bt-trainmem-", dir=args.folder))
    try:
        results = {}
        for label, n in (("small", n_small), ("large", n_large)):
            t = time.perf_counter()
            fpath, ppath = write_layout(tmp, n, seed=n)
            gb = fpath.stat().st_size / 1e9
            print(f"{label}: wrote {n} frames of {SIZE}x{SIZE} float32 ({gb:.2f} GB) in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(fpath), str(ppath), str(tmp / f"m-{label}.safetensors")],
                capture_output=True, text=True, check=True,
            )
            rss, seconds, _ = out.stdout.split()
            results[label] = float(rss)
            print(f"{label}: peak RSS {float(rss):.0f} MB, one epoch in {float(seconds):.0f} s "
                  f"({n * PEAKS_PER_FRAME} peaks)", flush=True)
            fpath.unlink()
        ratio = results["large"] / results["small"]
        verdict = "OK" if ratio <= 1.5 else "FAIL"
        print(f"peak RSS large / small = {ratio:.2f}  (target <= 1.5: {verdict})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
