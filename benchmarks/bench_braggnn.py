"""Inference throughput of the shipped BraggNN against a per-peak scipy pseudo-Voigt fit.

Both localize the same simulated 11 x 11 patches in the same run.  The fit is the
classic one: ``scipy.optimize.curve_fit`` (bounded, 'trf') of a 2-D pseudo-Voigt plus
background, one peak at a time.  ``predict()`` is timed as users call it (batch 4096; from
``braggnn.ORT_MIN_PATCHES`` patches on it runs the network through ONNX Runtime when that is
installed, with the model's test-time symmetry views); the network alone is also timed in
PyTorch eager mode and through an ONNX export.  Target: predict() >= 200x the fit.

Run: ``.venv/bin/python benchmarks/bench_braggnn.py [--n-fit 300] [--n-nn 100000] [--model PATH]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.special import erf

from braggtrack.braggnn import export_model, load_model, normalize_patches, predict


def make_patches(n: int, seed: int) -> np.ndarray:
    try:
        from braggtrack.simulate import simulate_patches

        return simulate_patches(n, patch=11, kinds=["sharp"], seed=seed)[0]
    except ImportError:
        rng = np.random.default_rng(seed)
        x, y = 5 + rng.uniform(-0.5, 0.5, (2, n))
        edges = np.arange(12) - 0.5
        ax = 0.5 * np.diff(erf((edges[None] - x[:, None]) / np.sqrt(2)), axis=1)
        ay = 0.5 * np.diff(erf((edges[None] - y[:, None]) / np.sqrt(2)), axis=1)
        return rng.poisson(10 + 5000 * ay[:, :, None] * ax[:, None, :]).astype(np.float32)


def _pvoigt(coords, amp, x0, y0, sx, sy, eta, bg):
    x, y = coords
    r2 = ((x - x0) / sx) ** 2 + ((y - y0) / sy) ** 2
    gauss = np.exp(-0.5 * r2)
    lorentz = 1.0 / (1.0 + r2 * (2 * np.log(2)))
    return bg + amp * (eta * lorentz + (1 - eta) * gauss)


def fit_one_at_a_time(patches: np.ndarray) -> np.ndarray:
    size = patches.shape[-1]
    yy, xx = np.mgrid[:size, :size].astype(float)
    coords = (xx.ravel(), yy.ravel())
    c = (size - 1) / 2
    out = np.zeros((len(patches), 2))
    lower = [0, 0, 0, 0.2, 0.2, 0, -np.inf]
    upper = [np.inf, size - 1, size - 1, size, size, 1, np.inf]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        for i, p in enumerate(patches.astype(float)):
            p0 = [p.max() - p.min(), c, c, 1.0, 1.0, 0.5, p.min()]
            try:
                popt, _ = curve_fit(_pvoigt, coords, p.ravel(), p0=p0, bounds=(lower, upper), method="trf")
                out[i] = popt[1] - c, popt[2] - c
            except RuntimeError:
                out[i] = 0.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-fit", type=int, default=300)
    ap.add_argument("--n-nn", type=int, default=100_000)
    ap.add_argument("--model", default=None, help="BraggNN model file (default: shipped)")
    args = ap.parse_args()

    patches = make_patches(args.n_nn, seed=2024)
    fit_patches = patches[: args.n_fit]
    model = load_model(args.model)

    t = time.perf_counter()
    fit_one_at_a_time(fit_patches)
    fit_rate = len(fit_patches) / (time.perf_counter() - t)

    predict(model, patches[:16384])  # warm-up (also builds the cached ONNX Runtime session)
    t = time.perf_counter()
    predict(model, patches, batch_size=4096)
    nn_rate = len(patches) / (time.perf_counter() - t)

    # Network alone (normalized input, no table), the ceiling of the full predict().
    import torch

    normed, _ = normalize_patches(patches)
    x = torch.from_numpy(normed[:, None])
    with torch.inference_mode():
        model(x[:4096])
        t = time.perf_counter()
        for a in range(0, len(x), 4096):
            model(x[a:a + 4096])
        net_rate = len(x) / (time.perf_counter() - t)

    ort_rate = None
    try:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = export_model(model, Path(tmp) / "m.onnx", format="onnx")
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            xs = normed[:, None]
            sess.run(None, {"patches": xs[:4096]})
            t = time.perf_counter()
            for a in range(0, len(xs), 4096):
                sess.run(None, {"patches": xs[a:a + 4096]})
            ort_rate = len(xs) / (time.perf_counter() - t)
    except ImportError:
        pass

    print(f"torch threads: {torch.get_num_threads()}; symmetry views: {model.config.symmetries}")
    print(f"pseudo-Voigt curve_fit, one peak at a time: {fit_rate:10.0f} patches/s  (n={len(fit_patches)})")
    print(f"BraggNN predict() (batch 4096):              {nn_rate:10.0f} patches/s  (n={len(patches)})")
    print(f"BraggNN network only (eager):                {net_rate:10.0f} patches/s")
    if ort_rate:
        print(f"BraggNN network only (ONNX Runtime):         {ort_rate:10.0f} patches/s")
    print(f"speed-up predict() / curve_fit: {nn_rate / fit_rate:.0f}x  (target >= 200x)")


if __name__ == "__main__":
    main()
