"""Benchmark of braggtrack.detect.persistence against findpeaks' topology method.

A simulated detector frame: about 200 Gaussian Bragg peaks (heights 30 to 3000 counts,
sigma 0.8 to 2.5 px) on a flat background of 20 counts, Poisson noise, uint32 counts.
Two versions of each frame are timed:

* thresholded, as users run it: pixels at or below background + 5 sigma set to 0, and
  ``persistence(frame, threshold=0)`` (only the pixels above 0 are visited);
* unthresholded: ``persistence(frame)`` over every pixel (hundreds of thousands of
  noise maxima).

findpeaks (``method='topology', scale=False, denoise=None, togray=False, imsize=None,
limit=None, whitelist=['peak']``) is run once per 2048 x 2048 version (about 47 s each
on a 2-core machine); ``persistence`` is the median of several runs after one warm-up
(numba compilation is cached on disk and not counted).  The peaks are checked to be
identical: same maxima, same persistence (up to findpeaks' tie-breaking nudge of
``index * eps``), except the global maximum's death, which findpeaks puts at 0 and
``persistence`` at the frame's floor, and except that findpeaks with ``limit=None``
silently keeps only maxima with persistence > min(frame) - 1 (on an unthresholded frame
with a background of 20 counts that drops the shallow noise maxima).

Usage::

    .venv/bin/python benchmarks/bench_detect.py [--size 2048] [--peaks 200] [--no-findpeaks]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import numpy as np

from braggtrack.detect import persistence, select_peaks

BACKGROUND = 20.0


def simulate_frame(size: int, n_peaks: int, seed: int = 0) -> np.ndarray:
    """Poisson counts (uint32) of ``n_peaks`` Gaussian spots on a flat background."""
    rng = np.random.default_rng(seed)
    mean = np.full((size, size), BACKGROUND)
    half = 10
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    for _ in range(n_peaks):
        cy, cx = rng.uniform(half, size - half - 1, 2)
        iy, ix = int(cy), int(cx)
        sigma = rng.uniform(0.8, 2.5)
        height = np.exp(rng.uniform(np.log(30), np.log(3000)))
        spot = height * np.exp(-((yy + iy - cy) ** 2 + (xx + ix - cx) ** 2) / (2 * sigma**2))
        mean[iy - half : iy + half + 1, ix - half : ix + half + 1] += spot
    return rng.poisson(mean).astype(np.uint32)


class Timing(float):
    """Median wall time in seconds, with the median CPU time of this process as ``.cpu``
    (on a shared machine the CPU time is the steadier figure)."""

    cpu: float

    def __str__(self) -> str:
        return f"{1e3 * self:9.2f} ms wall {1e3 * self.cpu:9.2f} ms cpu"


def median_time(func, repeat: int) -> Timing:
    func()  # warm-up: first call loads the numba cache
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        func()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    out = Timing(statistics.median(wall))
    out.cpu = statistics.median(cpu)
    return out


def run_findpeaks(img: np.ndarray):
    from findpeaks import findpeaks

    for name in ("findpeaks", "findpeaks.stats", "findpeaks.findpeaks"):
        logging.getLogger(name).setLevel(60)
    fp = findpeaks(method="topology", scale=False, denoise=None, togray=False, imsize=None,
                   limit=None, whitelist=["peak"], verbose=0)
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fp.fit(img)["persistence"]
    out = Timing(time.perf_counter() - t0)
    out.cpu = time.process_time() - c0
    return res, out


def compare(ours, theirs, img: np.ndarray, zero_peak_optional: bool) -> str:
    """Differences between our table and findpeaks' (empty string when identical)."""
    a = {(int(y), int(x)): (b, d, p) for y, x, b, d, p in
         zip(ours.y, ours.x, ours.birth, ours.death, ours.persistence, strict=True)}
    b = {(int(y), int(x)): (bb, d, s) for y, x, bb, d, s in
         zip(theirs.y, theirs.x, theirs.birth_level, theirs.death_level, theirs.score,
             strict=True)}
    if zero_peak_optional:  # the zero background's own maximum is not above threshold 0
        for p in [p for p, v in b.items() if v[0] == 0.0 and p not in a]:
            del b[p]
    # findpeaks with limit=None keeps only maxima with persistence > min(frame) - 1 (its
    # nudged values decide the borderline cases, which are left out of the comparison).
    slack = 4 * img.size * np.finfo(np.float64).eps * max(1.0, float(img.max()))
    limit = float(img.min()) - 1.0
    top = (int(ours.y.iloc[0]), int(ours.x.iloc[0]))
    a = {p: v for p, v in a.items() if v[2] > limit + slack or p == top}
    b = {p: v for p, v in b.items() if v[2] > limit + slack or p == top}
    problems = []
    if set(a) != set(b):
        problems.append(f"maxima differ: {len(set(a) - set(b))} only ours, "
                        f"{len(set(b) - set(a))} only findpeaks")
    worst = 0.0
    for p in set(a) & set(b):
        if p == top:
            continue
        worst = max(worst, abs(a[p][2] - b[p][2]))
        if abs(a[p][2] - b[p][2]) > 1e-9 * abs(a[p][2]) + slack:
            problems.append(f"persistence differs at {p}: {a[p]} vs {b[p]}")
            break
    if top in b and abs(a[top][0] - b[top][0]) > slack:
        problems.append(f"global maximum birth differs: {a[top]} vs {b[top]}")
    return "; ".join(problems) or f"identical ({len(a)} maxima, max |diff| {worst:.1e})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--peaks", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--no-findpeaks", action="store_true")
    args = parser.parse_args()

    threshold = int(BACKGROUND + 5 * np.sqrt(BACKGROUND))
    for size in sorted({1024, args.size}):
        n_peaks = max(1, round(args.peaks * (size / args.size) ** 2))
        raw = simulate_frame(size, n_peaks)
        thr = raw.copy()
        thr[thr <= threshold] = 0
        n_above = int((thr > 0).sum())
        print(f"\n{size}x{size} uint32 frame, {n_peaks} peaks, threshold {threshold} counts "
              f"({n_above} pixels above, {100 * n_above / thr.size:.2f} %)")

        t_thr = median_time(lambda thr=thr: persistence(thr, threshold=0), args.repeat)
        t_raw_thr = median_time(lambda raw=raw: persistence(raw, threshold=threshold),
                                args.repeat)
        t_thr_none = median_time(lambda thr=thr: persistence(thr), 3)
        t_raw = median_time(lambda raw=raw: persistence(raw), 3)
        table = persistence(thr, threshold=0)
        t_select = median_time(lambda t=table, thr=thr: select_peaks(t, thr), args.repeat)
        kept = select_peaks(table, thr)
        print(f"  persistence(thresholded, threshold=0): {t_thr} per frame ({len(table)} maxima)")
        print(f"  select_peaks on that table:            {t_select} -> {len(kept)} peaks, "
              f"{int(kept.ok.sum())} ok")
        print(f"  persistence(raw, threshold={threshold}):       {t_raw_thr} per frame")
        print(f"  persistence(thresholded) all pixels:   {t_thr_none} per frame")
        print(f"  persistence(raw) unthresholded:        {t_raw} per frame "
              f"({len(persistence(raw))} maxima)")

        if args.no_findpeaks or size != args.size:
            continue
        theirs, t_fp = run_findpeaks(thr)
        print(f"  findpeaks topology, thresholded frame: {t_fp:.1f} s wall, {t_fp.cpu:.1f} s cpu "
              "(one run)")
        print(f"    speed-up vs persistence(threshold=0): {t_fp / t_thr:,.0f}x wall, "
              f"{t_fp.cpu / t_thr.cpu:,.0f}x cpu (target >= 500x)")
        print(f"    peaks, threshold=0:    {compare(table, theirs, thr, True)}")
        print(f"    peaks, threshold=None: {compare(persistence(thr), theirs, thr, False)}")
        theirs, t_fp_raw = run_findpeaks(raw)
        print(f"  findpeaks topology, unthresholded frame: {t_fp_raw:.1f} s wall, "
              f"{t_fp_raw.cpu:.1f} s cpu (one run)")
        print(f"    speed-up vs persistence(raw): {t_fp_raw / t_raw:,.0f}x wall, "
              f"{t_fp_raw.cpu / t_raw.cpu:,.0f}x cpu")
        print(f"    peaks: {compare(persistence(raw), theirs, raw, False)}")


if __name__ == "__main__":
    main()
