"""Benchmark of braggtrack.track.link on a large simulated series.

Positions only (no images): N particles on a W x W detector, a common drift (sinusoidal in x,
linear in y) plus a small own velocity per particle, Gaussian position noise, particles that
appear late or vanish early, and random drop-outs of single frames.  Prints the tracking
figures of :func:`braggtrack.track.evaluate_tracking` and the time of each step.

Usage::

    .venv/bin/python benchmarks/bench_track.py [--particles 2000] [--frames 200] [--noise 0.02]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from braggtrack.track import evaluate_tracking, link, particles


def simulate_positions(
    n_particles: int, n_frames: int, *, size: float = 2048.0, noise: float = 0.02,
    vanish: float = 0.03, seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(peaks, truth): noisy detected positions and the true ones, same rows."""
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(20, size - 20, n_particles)
    y0 = rng.uniform(20, size - 20, n_particles)
    vel = rng.normal(0, 0.02, (n_particles, 2))
    start = np.where(rng.random(n_particles) < 0.7, 0, rng.integers(0, n_frames // 3, n_particles))
    stop = np.where(rng.random(n_particles) < 0.7, n_frames,
                    rng.integers(2 * n_frames // 3, n_frames, n_particles))
    frame, part = np.meshgrid(np.arange(n_frames), np.arange(n_particles), indexing="ij")
    frame, part = frame.ravel(), part.ravel()
    present = (frame >= start[part]) & (frame < stop[part]) & (rng.random(frame.size) > vanish)
    frame, part = frame[present], part[present]
    x = x0[part] + 1.5 * np.sin(frame / 15.0) + vel[part, 0] * frame
    y = y0[part] + 0.05 * frame + vel[part, 1] * frame
    truth = pd.DataFrame({"frame": frame, "particle": part, "x": x, "y": y})
    peaks = pd.DataFrame({
        "frame": frame, "x": x + rng.normal(0, noise, x.size),
        "y": y + rng.normal(0, noise, y.size), "ok": True, "intensity": 1000.0,
    })
    return peaks, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--search-range", type=float, default=3.0)
    parser.add_argument("--memory", type=int, default=3)
    args = parser.parse_args()

    peaks, truth = simulate_positions(args.particles, args.frames, noise=args.noise)
    import trackpy  # noqa: F401  (import time is not linking time)

    t0 = time.perf_counter()
    tracks = link(peaks, search_range=args.search_range, memory=args.memory)
    t_link = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = particles(tracks)
    t_summary = time.perf_counter() - t0
    t0 = time.perf_counter()
    score = evaluate_tracking(tracks, truth, match_radius=0.5)
    t_eval = time.perf_counter() - t0

    print(f"peaks: {len(peaks)} ({args.particles} particles x {args.frames} frames, "
          f"noise {args.noise} px)")
    print(f"link: {t_link:.2f} s ({len(peaks) / t_link:,.0f} peaks/s); particles(): "
          f"{t_summary:.2f} s; evaluate_tracking(): {t_eval:.2f} s")
    print(f"trajectories: {len(summary)} for {score['n_true']} true particles")
    print(f"recovered (one trajectory >= 95% of frames): {100 * score['recovered']:.2f} %")
    print(f"identity swaps between well-separated particles: {score['identity_swaps']}")
    print(f"displacement rms error: {score['displacement_rms']:.4f} px; "
          f"per-frame drift rms error: {score['drift_rms']:.4f} px")


if __name__ == "__main__":
    main()
