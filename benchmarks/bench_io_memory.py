"""Peak memory while iterating a large HDF5 series with ``open_frames``.

Writes a ~2 GB and a ~200 MB HDF5 series (2048 x 2048 uint16 frames, one chunk per
frame, no compression) in a temporary folder, iterates each through
:func:`braggtrack.io.open_frames` in a fresh process, and prints the peak resident set
size (RSS) of each reader process and their ratio.  A reader that holds a few frames at
a time has the same peak for both files (ratio near 1; target <= 1.5).

    python benchmarks/bench_io_memory.py [--big-gb 2.0] [--small-mb 200] [--keep]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FRAME = (2048, 2048)
FRAME_BYTES = FRAME[0] * FRAME[1] * 2


def write_series(path: Path, n_frames: int) -> None:
    import h5py

    frame = np.zeros(FRAME, np.uint16)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("/entry/data/data", shape=(n_frames, *FRAME), dtype=np.uint16,
                              chunks=(1, *FRAME))
        for i in range(n_frames):  # frame by frame: the writer's memory stays small too
            frame[:] = i % 65535
            frame[i % FRAME[0], :] = 60000
            ds[i] = frame


def read_child(path: str) -> None:
    """Run in a fresh process: iterate every frame, report RSS before and at peak."""
    import psutil

    from braggtrack.io import open_frames

    proc = psutil.Process()
    series = open_frames(path)
    _ = series[0]
    base = proc.memory_info().rss
    peak = base
    checksum = 0
    t0 = time.perf_counter()
    for frame in series:
        checksum += int(frame[0, 0])
        peak = max(peak, proc.memory_info().rss)
    elapsed = time.perf_counter() - t0
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    print(json.dumps({"frames": len(series), "rss_after_first_frame": base,
                      "rss_peak_sampled": peak, "ru_maxrss": maxrss,
                      "seconds": elapsed, "checksum": checksum}))


def measure(path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(path)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-gb", type=float, default=2.0)
    parser.add_argument("--small-mb", type=float, default=200.0)
    parser.add_argument("--dir", default=None, help="where to write the temporary files")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        read_child(args.child)
        return 0

    n_big = max(2, int(round(args.big_gb * 1e9 / FRAME_BYTES)))
    n_small = max(2, int(round(args.small_mb * 1e6 / FRAME_BYTES)))
    tmp = Path(tempfile.mkdtemp(prefix="bench_io_memory_", dir=args.dir))
    need = (n_big + n_small) * FRAME_BYTES * 1.05
    free = shutil.disk_usage(tmp).free
    if free < need + 1e9:
        print(f"not enough disk in {tmp}: need {need / 1e9:.1f} GB, have {free / 1e9:.1f} GB")
        shutil.rmtree(tmp, ignore_errors=True)
        return 1
    try:
        rows = {}
        for name, n in (("small", n_small), ("big", n_big)):
            path = tmp / f"{name}.h5"
            t0 = time.perf_counter()
            write_series(path, n)
            wrote = time.perf_counter() - t0
            r = measure(path)
            r["file_bytes"] = path.stat().st_size
            r["write_seconds"] = wrote
            rows[name] = r
            print(f"{name:5s}: {r['frames']:4d} frames, {r['file_bytes'] / 1e6:8.0f} MB, "
                  f"peak RSS {r['ru_maxrss'] / 2**20:7.1f} MiB "
                  f"(after first frame {r['rss_after_first_frame'] / 2**20:7.1f} MiB), "
                  f"read {r['file_bytes'] / 1e6 / r['seconds']:6.0f} MB/s")
        ratio = rows["big"]["ru_maxrss"] / rows["small"]["ru_maxrss"]
        extra = (rows["big"]["ru_maxrss"] - rows["big"]["rss_after_first_frame"]) / FRAME_BYTES
        print(f"peak RSS ratio big/small: {ratio:.3f} (target <= 1.5); "
              f"big file's peak is {extra:.1f} frames above its first-frame RSS")
        return 0 if ratio <= 1.5 else 1
    finally:
        if args.keep:
            print(f"files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
