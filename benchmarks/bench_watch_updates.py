"""Benchmark of live mode's table updates: linking only the new frames vs everything again.

``braggtrack run --watch`` rewrites the tables after every new chunk.  This drives the same
steps as :func:`braggtrack.runner.watch` between polls (process one chunk, then update the
tables) over a simulated series, twice in one process:

* incremental (what watch does): one linker for the whole watch, each chunk table read once;
* baseline: every update reads every chunk table and links every frame again (what it did
  before; the cost of an update then grows with the frames so far, the whole watch with their
  square).

Prints the update time every 100 frames and the total of each, and their ratio.  Centroid
localizer and 512x512 frames, so the peak work does not hide the update.

Usage::

    .venv/bin/python benchmarks/bench_watch_updates.py [--frames 400] [--peaks 100] [--chunk 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from braggtrack.bench import BenchSizes, _write_series
from braggtrack.config import FindConfig
from braggtrack.runner import TrackConfig, _execute, _RunState


def updates(path: Path, out: Path, n: int, chunk: int, incremental: bool) -> list[float]:
    state = _RunState.open(path, out, config=FindConfig(localizer="centroid"),
                           track=TrackConfig(report=False), dataset=None, dark=None, flat=None,
                           mask=None, chunk_size=chunk, workers=1, scheduler=None, force=True,
                           resume=None, strict=False, command=None, live=True)
    if incremental:
        state.start_linking()
    times = []
    try:
        for a in range(0, n, chunk):
            _execute(state.tasks(a, min(a + chunk, n)), 1, None, state.record)
            t0 = time.perf_counter()
            state.finish(report=False)
            times.append(time.perf_counter() - t0)
        state.finish()
    finally:
        state.series.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--peaks", type=int, default=100)
    ap.add_argument("--chunk", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / "series.h5"
        sizes = dataclasses.replace(BenchSizes(), frame=512, peaks=args.peaks,
                                    run_frames=args.frames)
        _write_series(path, sizes, args.frames)
        result = {}
        for name, incremental in (("incremental", True), ("relink all", False)):
            times = updates(path, work / name.replace(" ", "_"), args.frames, args.chunk,
                            incremental)
            result[name] = times
            marks = [f"{(i + 1) * args.chunk}: {1e3 * t:.0f} ms" for i, t in enumerate(times)
                     if ((i + 1) * args.chunk) % 100 == 0]
            print(f"{name:12s} update after {'; '.join(marks)}; all updates {sum(times):.1f} s")
        ratio = sum(result["relink all"]) / sum(result["incremental"])
        print(f"all updates: relink-all / incremental = {ratio:.1f}x; last update "
              f"{result['relink all'][-1] / result['incremental'][-1]:.1f}x")


if __name__ == "__main__":
    main()
