"""Speed of the simulator: noise-free rendering, full frames, training patches.

Run: ``.venv/bin/python benchmarks/bench_simulate.py`` (single-threaded numba; the first call
compiles or loads the cached kernel and is not timed).
"""

from __future__ import annotations

import time

import numpy as np

from braggtrack import simulate as sim


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    sim.simulate_series(frames=1, shape=(64, 64), peaks=1, seed=0)  # compile / load cache
    sim.simulate_patches(8, seed=0)
    _, truth = sim.simulate_series(frames=1, shape=(2048, 2048), peaks=300, messy=0.3, seed=1)
    rows = truth[truth.visible]
    t_render = best_of(lambda: sim.render_peaks((2048, 2048), rows))
    t_frame = best_of(lambda: sim.simulate_series(frames=1, shape=(2048, 2048), peaks=300,
                                                  messy=0.3, seed=1), repeat=2)
    rng = np.random.default_rng(0)
    lam = np.full((2048, 2048), 100.0)
    t_poisson = best_of(lambda: rng.poisson(lam))
    n = 20000
    t_patch = best_of(lambda: sim.simulate_patches(n, patch=11, seed=2), repeat=2)
    t_sharp = best_of(lambda: sim.simulate_patches(n, patch=11, kinds="sharp", seed=2), repeat=2)
    print(f"render 300 peaks (messy 0.3) on 2048x2048, noise-free: {t_render * 1e3:8.1f} ms")
    print(f"numpy Poisson draw of one 2048x2048 frame (floor):      {t_poisson * 1e3:8.1f} ms")
    print(f"simulate_series, 1 frame 2048x2048, 300 peaks, all in:  {t_frame * 1e3:8.1f} ms")
    print(f"simulate_patches 11x11, all kinds:   {n / t_patch:10.0f} patches/s")
    print(f"simulate_patches 11x11, sharp only:  {n / t_sharp:10.0f} patches/s")


if __name__ == "__main__":
    main()
