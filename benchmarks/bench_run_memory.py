"""Peak RSS of a whole `braggtrack run` on a large series against one 10x smaller.

Writes two HDF5 series of 2048x2048 uint32 frames with ~300 peaks (the large one ~2 GB), runs the
full pipeline (BraggNN, linking, no report) on each in a fresh subprocess, and prints each peak
RSS and their ratio. Bounded memory means the ratio stays near 1: the run holds a chunk of frames
plus the model, never the series. With ``--workers N`` (N > 1) the run goes through Dask worker
processes, which also link and checksum: the driver's peak RSS and the largest worker's are
reported apart.

    python benchmarks/bench_run_memory.py [--frames 128] [--workers 1] [--workdir /tmp]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys
from braggtrack.runner import run, TrackConfig
if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], track=TrackConfig(report=False), workers=int(sys.argv[3]),
        chunk_size=8, progress=False, force=True)
    # Worker processes have ended (and been waited for) when run() returns.
    print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                      / 1024}))
"""


def write_series(path: Path, n: int, size: int = 2048, peaks: int = 300) -> None:
    import h5py
    import numpy as np

    from braggtrack.simulate import simulate_series

    frames, _ = simulate_series(frames=4, shape=(size, size), peaks=peaks, messy=0.3, seed=5)
    frames = frames.astype(np.uint32)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("/entry/data/data", shape=(n, size, size), dtype=np.uint32,
                              chunks=(1, size, size))
        for i in range(n):  # four distinct frames, repeated: the size is what matters here
            ds[i] = frames[i % 4]


def peak_rss(path: Path, out: Path, workers: int = 1) -> tuple[float, float]:
    """(driver, largest worker process) peak RSS in MB; the second is 0 for a serial run."""
    script = out.parent / "child.py"  # a file, so that Dask's spawned workers can import it
    script.write_text(CHILD)
    res = subprocess.run([sys.executable, str(script), str(path), str(out), str(workers)],
                         capture_output=True, text=True, check=True)
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    return rec["maxrss_mb"], rec["workers_mb"] if workers > 1 else 0.0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=128, help="frames of the large series")
    ap.add_argument("--workers", type=int, default=1, help="worker processes (1: serial)")
    ap.add_argument("--size", type=int, default=2048, help="frame edge, px")
    ap.add_argument("--peaks", type=int, default=300, help="peaks per frame")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bt-runmem-") as tmp:
        tmp = Path(tmp)
        small, large = tmp / "small.h5", tmp / "large.h5"
        write_series(small, max(1, args.frames // 10), args.size, args.peaks)
        write_series(large, args.frames, args.size, args.peaks)
        r_small = peak_rss(small, tmp / "run_small", args.workers)
        r_large = peak_rss(large, tmp / "run_large", args.workers)
    size_gb = args.frames * args.size * args.size * 4 / 1e9
    for name, k in (("peak RSS", 0), ("largest worker's peak RSS", 1)):
        if k and args.workers <= 1:
            continue
        print(f"{name}: {r_small[k]:.0f} MB on {size_gb / 10:.2f} GB, {r_large[k]:.0f} MB on "
              f"{size_gb:.2f} GB; ratio {r_large[k] / r_small[k]:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
