"""``braggtrack bench``: speed ratios against baselines measured in one run on this machine.

Machines are noisy, so every figure is a *ratio* between our code and a baseline timed in the
same process a moment apart, on the same data:

- detection vs findpeaks' topology method (when installed) on one frame;
- batched ``pvoigt`` / ``gauss`` fits vs scipy ``curve_fit`` one peak at a time;
- ``braggnn`` inference vs scipy pseudo-Voigt one peak at a time;
- end-to-end ``run`` frames/s vs just reading and thresholding the same frames (the floor);
- end-to-end vs the classic notebook pipeline (findpeaks on 2x2-binned frames, then one
  BraggNN call per patch in a Python loop);
- scaling from 1 to 2 worker processes.

Baselines that are very slow (findpeaks: ~47 s per 2048x2048 frame) are timed on fewer items
and compared per item.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class BenchSizes:
    """Problem sizes of one benchmark run."""

    frame: int = 2048
    peaks: int = 300
    fit_patches: int = 2000
    baseline_fits: int = 300
    nn_patches: int = 20000
    run_frames: int = 48
    classic_frames: int = 1

    @classmethod
    def quick(cls) -> BenchSizes:
        return cls(frame=256, peaks=30, fit_patches=200, baseline_fits=40, nn_patches=2000,
                   run_frames=4, classic_frames=1)


def _best_time(fn: Callable[[], object], repeat: int = 3) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return float(best)


def _row(name, ours, ours_unit, base, base_name, ratio, target, note=""):
    return {"benchmark": name, "ours": ours, "unit": ours_unit, "baseline": base,
            "baseline_name": base_name, "ratio": ratio, "target": target, "note": note}


def _frame(sizes: BenchSizes, seed: int = 0):
    from .simulate import simulate_series

    frames, truth = simulate_series(frames=1, shape=(sizes.frame, sizes.frame),
                                    peaks=sizes.peaks, messy=0.3, seed=seed)
    return frames[0], truth


def bench_detection(sizes: BenchSizes) -> dict:
    from .detect import persistence
    from .preprocess import apply_threshold, robust_threshold

    frame, _ = _frame(sizes)
    img = apply_threshold(frame.astype(np.float32), robust_threshold(frame))
    ours = _best_time(lambda: persistence(img, threshold=0), repeat=5)
    try:
        from findpeaks import findpeaks
    except ImportError:
        return _row("detect: persistence vs findpeaks topology", 1 / ours, "frames/s", None,
                    "findpeaks (not installed)", None, ">= 500x")
    logging.getLogger("findpeaks").setLevel(60)
    fp = findpeaks(method="topology", scale=False, denoise=None, togray=False, imsize=None,
                   limit=None, whitelist=["peak"], verbose=0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp.fit(img)
    base = time.perf_counter() - t0
    return _row(f"detect {sizes.frame}x{sizes.frame}: persistence vs findpeaks topology",
                1 / ours, "frames/s", 1 / base, "findpeaks topology", base / ours, ">= 500x")


def _curve_fit_pvoigt(patches: np.ndarray) -> None:
    from scipy.optimize import curve_fit

    n = patches.shape[1]
    yy, xx = np.mgrid[:n, :n].astype(np.float64)

    def model(coords, x0, y0, sx, sy, eta, amp, bg):
        x, y = coords
        r2 = ((x - x0) / sx) ** 2 + ((y - y0) / sy) ** 2
        g = np.exp(-0.5 * r2)
        lor = 1.0 / (1.0 + r2 * 2 * np.log(2))
        return (amp * (eta * lor + (1 - eta) * g) + bg).ravel()

    c = (n - 1) / 2
    for p in patches:
        p0 = [c, c, 1.0, 1.0, 0.5, float(p.max() - p.min()), float(p.min())]
        try:
            curve_fit(model, (xx, yy), p.ravel().astype(np.float64), p0=p0, method="trf",
                      bounds=([0, 0, 0.2, 0.2, 0, 0, -np.inf], [n, n, n, n, 1, np.inf, np.inf]),
                      maxfev=2000)
        except RuntimeError:
            pass


def _curve_fit_gauss(patches: np.ndarray) -> None:
    from scipy.optimize import curve_fit

    n = patches.shape[1]
    yy, xx = np.mgrid[:n, :n].astype(np.float64)

    def model(coords, x0, y0, sx, sy, amp, bg):
        x, y = coords
        return (amp * np.exp(-0.5 * (((x - x0) / sx) ** 2 + ((y - y0) / sy) ** 2)) + bg).ravel()

    c = (n - 1) / 2
    for p in patches:
        p0 = [c, c, 1.0, 1.0, float(p.max() - p.min()), float(p.min())]
        try:
            curve_fit(model, (xx, yy), p.ravel().astype(np.float64), p0=p0, method="lm",
                      maxfev=2000)
        except RuntimeError:
            pass


def bench_fits(sizes: BenchSizes) -> list[dict]:
    from .localize import localize
    from .simulate import simulate_patches

    patches, _ = simulate_patches(sizes.fit_patches, patch=11, seed=7)
    few = patches[: sizes.baseline_fits]
    rows = []
    for method, baseline in (("pvoigt", _curve_fit_pvoigt), ("gauss", _curve_fit_gauss)):
        localize(patches[:16], method)  # compile / warm up
        ours = _best_time(lambda m=method: localize(patches, m), repeat=2) / len(patches)
        base = _best_time(lambda b=baseline: b(few), repeat=2) / len(few)
        rows.append(_row(f"{method}: batched LM vs scipy curve_fit per peak", 1 / ours,
                         "peaks/s", 1 / base, "scipy curve_fit", base / ours, ">= 50x"))
    return rows


def bench_braggnn(sizes: BenchSizes) -> dict:
    from .braggnn import load_model, predict
    from .simulate import simulate_patches

    patches, _ = simulate_patches(sizes.nn_patches, patch=11, seed=8)
    model = load_model()
    predict(model, patches[:256])
    ours = _best_time(lambda: predict(model, patches), repeat=2) / len(patches)
    few = patches[: sizes.baseline_fits]
    base = _best_time(lambda: _curve_fit_pvoigt(few), repeat=1) / len(few)
    return _row("braggnn inference vs scipy pseudo-Voigt per peak", 1 / ours, "patches/s",
                1 / base, "scipy curve_fit pvoigt", base / ours, ">= 200x")


def _write_series(path: Path, sizes: BenchSizes, n: int) -> None:
    import h5py

    from .simulate import simulate_series

    frames, _ = simulate_series(frames=n, shape=(sizes.frame, sizes.frame), peaks=sizes.peaks,
                                messy=0.3, seed=11)
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=frames.astype(np.uint32),
                         chunks=(1, sizes.frame, sizes.frame))


def bench_end_to_end(sizes: BenchSizes, workdir: Path) -> list[dict]:
    """Whole runs, timed warm: model loaded, code compiled, cluster started (each run of a
    beamline series pays those once, not per frame)."""

    from .config import FindConfig
    from .io import open_frames
    from .runner import ChunkTask, TrackConfig, _limit_threads, local_cluster, process_chunk, run

    path = workdir / "series.h5"
    _write_series(path, sizes, sizes.run_frames)
    series = open_frames(path)

    def floor():
        for frame in series:
            np.count_nonzero(frame > frame.dtype.type(15))

    t_floor = _best_time(floor, repeat=3) / len(series)
    chunk = max(1, sizes.run_frames // 4)  # 4 chunks: 2 per worker in the scaling rows

    def timed_run(**kw) -> float:
        t0 = time.perf_counter()
        run(path, workdir / "run", config=FindConfig(), track=TrackConfig(report=False),
            chunk_size=chunk, progress=False, force=True, **kw)
        return (time.perf_counter() - t0) / len(series)

    timed_run(workers=1)  # warm-up: model, numba caches
    t1 = min(timed_run(workers=1) for _ in range(2))

    tasks = [ChunkTask(source=str(path), dataset=None, start=a, stop=min(a + chunk, len(series)),
                       config=FindConfig(), dark=None, flat=None, mask=None,
                       out_file=str(workdir / "stage" / f"peaks-{a:06d}.parquet"))
             for a in range(0, len(series), chunk)]

    def chunk_stage(address: str) -> float:
        """The frame work alone (read, detect, localize, write each chunk), as the workers
        run it inside a run, without the linking and the driver's final tables."""
        from dask.distributed import Client

        with Client(address) as client:
            client.run(_limit_threads)
            t0 = time.perf_counter()
            client.gather(client.map(process_chunk, tasks, pure=False))
            return (time.perf_counter() - t0) / len(series)

    # Scaling compares like with like: worker processes of one thread each, through the one
    # Dask code path. The serial run (--workers 1) is not that baseline: it runs in-process
    # and lets BraggNN use every core, so it is compared with 2 workers on its own row.
    # Both clusters stay up and their runs alternate, so that a slow spell of a noisy machine
    # falls on both sides of a pair, not on one cluster size (the ratio is the median of the
    # pairs' ratios). The idle cluster's scheduler costs the driver ~3 % of a core meanwhile.
    pairs, cpus = [], []
    with warnings.catch_warnings():
        # The second cluster's scheduler finds the first one's HTTP port taken and says so.
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        one, two = local_cluster(1), local_cluster(2)
    with one, two:
        for cluster in (one, two):
            timed_run(scheduler=cluster.scheduler_address)  # warm the workers
        for _ in range(3):
            t_one = timed_run(scheduler=one.scheduler_address)
            c0 = time.process_time()
            t_two = timed_run(scheduler=two.scheduler_address)
            cpus.append((time.process_time() - c0) / len(series))
            pairs.append((t_one, t_two))
        stages = [(chunk_stage(one.scheduler_address), chunk_stage(two.scheduler_address))
                  for _ in range(2)]
    # The same chunk work in plain processes, no Dask and no driver work: what this
    # machine's cores allow at best (a VM's two cores need not be two cores' worth).
    with _process_pool(1) as p1, _process_pool(2) as p2:
        for pool in (p1, p2):
            list(pool.map(process_chunk, tasks[:2]))  # warm: imports, model, numba caches
        plain = []  # (1 process, 2 processes), seconds a frame
        for _ in range(2):
            times = []
            for pool in (p1, p2):
                t0 = time.perf_counter()
                list(pool.map(process_chunk, tasks))
                times.append((time.perf_counter() - t0) / len(series))
            plain.append(tuple(times))
    plain_ratios = sorted(a / b for a, b in plain)
    p_one, p_two = max(plain, key=lambda p: p[0] / p[1])
    t1w, t2 = (float(np.median([p[k] for p in pairs])) for k in (0, 1))
    scaling = sorted(a / b for a, b in pairs)
    driver_cpu = float(np.median(cpus))
    stage1, stage2 = (min(p[k] for p in stages) for k in (0, 1))
    cores = os.cpu_count() or 1
    rows = [
        _row(f"run {sizes.frame}x{sizes.frame} (~{sizes.peaks} peaks, braggnn): frames/s vs "
             "read+threshold floor", 1 / t1, "frames/s", 1 / t_floor, "read + threshold",
             t_floor / t1, "within 5x of floor (>= 0.2)"),
        _row("scaling 1 -> 2 Dask worker processes (1 thread each)", 1 / t2, "frames/s",
             1 / t1w, "1 worker process", float(np.median(scaling)), ">= 1.8x",
             note=f"{cores} cores; median of {len(scaling)} alternating pairs, "
                  f"{scaling[0]:.2f}-{scaling[-1]:.2f}x; the workers link and checksum the "
                  f"input too; the driver's tables and Dask took {1e3 * driver_cpu:.1f} ms "
                  "of CPU a frame beside the workers'"),
        _row("chunk stage alone (read, detect, localize, write) 1 -> 2 Dask workers",
             1 / stage2, "frames/s", 1 / stage1, "1 worker process", stage1 / stage2, "",
             note=f"{cores} cores; no linking"),
        _row("the same chunk work in 1 -> 2 plain processes (no Dask, no driver): this "
             "machine's ceiling", 1 / p_two, "frames/s", 1 / p_one, "1 process",
             plain_ratios[-1], "", note=f"{cores} cores; best of {len(plain)} pairs, "
                                        f"{plain_ratios[0]:.2f}-{plain_ratios[-1]:.2f}x"),
        _row("serial run (--workers 1, all cores) -> 2 worker processes", 1 / t2, "frames/s",
             1 / t1, "serial run", t1 / t2, "", note=f"{cores} cores"),
        bench_classic(sizes, series, t1),
    ]
    return rows


def _process_pool(n: int):
    """``n`` fresh worker processes of one thread each (spawned: no state copied from here)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from .runner import _limit_threads

    return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_limit_threads)


def bench_classic(sizes: BenchSizes, series, t_ours: float) -> dict:
    """The notebook pipeline: findpeaks on 2x2-binned frames, then BraggNN per patch in a loop."""
    try:
        from findpeaks import findpeaks
    except ImportError:
        return _row("run vs classic notebook pipeline", 1 / t_ours, "frames/s", None,
                    "findpeaks (not installed)", None, ">= 200x")
    import torch

    from .braggnn import load_model, predict
    from .patches import extract_patches
    from .preprocess import bin_frame

    logging.getLogger("findpeaks").setLevel(60)
    model = load_model()
    fp = findpeaks(method="topology", scale=False, denoise=None, togray=False, imsize=None,
                   limit=None, whitelist=["peak"], verbose=0)

    def classic(frame):
        img = bin_frame(frame.astype(np.float32), 2)
        img[img < 50] = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = fp.fit(img)
        pers = res["persistence"]
        rng = float(img.max() - img.min()) or 1.0
        pers = pers[(pers["score"] / rng * 255 > 10) & pers["peak"]]
        ps = extract_patches(img, pers["y"].to_numpy(np.int64), pers["x"].to_numpy(np.int64),
                             size=11)
        with torch.inference_mode():
            for p in ps.patches:  # one call per patch, as in the notebooks
                predict(model, p[None], batch_size=1)

    t0 = time.perf_counter()
    for i in range(sizes.classic_frames):
        classic(series[i])
    t_classic = (time.perf_counter() - t0) / sizes.classic_frames
    return _row("run vs classic notebook pipeline (findpeaks + per-patch BraggNN)", 1 / t_ours,
                "frames/s", 1 / t_classic, "classic pipeline", t_classic / t_ours, ">= 200x")


def bench_gpu(sizes: BenchSizes) -> list[dict]:
    """BraggNN inference and the batched fits on a CUDA device against the CPU, when a GPU
    is present (the fits: torch engine on the GPU vs the default numba engine)."""
    import torch

    if not torch.cuda.is_available():
        return []
    from .braggnn import load_model, predict
    from .localize import localize
    from .simulate import simulate_patches

    patches, _ = simulate_patches(sizes.nn_patches, patch=11, seed=9)
    name = torch.cuda.get_device_name(0)
    cpu = load_model(device="cpu")
    gpu = load_model(device="cuda")
    predict(gpu, patches[:1024], device="cuda")
    t_gpu = _best_time(lambda: predict(gpu, patches, device="cuda"), repeat=3) / len(patches)
    t_cpu = _best_time(lambda: predict(cpu, patches), repeat=2) / len(patches)
    rows = [_row("braggnn inference on GPU vs CPU", 1 / t_gpu, "patches/s", 1 / t_cpu, "CPU",
                 t_cpu / t_gpu, "", note=name)]
    # The fits on the same patches as BraggNN: thousands per block is where a GPU pays off.
    for method in ("pvoigt", "gauss"):
        localize(patches[:256], method, device="cuda")  # CUDA context, kernels
        localize(patches[:256], method)  # numba compilation / cache
        t_gpu = _best_time(lambda m=method: localize(patches, m, device="cuda"),
                           repeat=2) / len(patches)
        t_cpu = _best_time(lambda m=method: localize(patches, m), repeat=2) / len(patches)
        rows.append(_row(f"{method} fit on GPU vs numba CPU", 1 / t_gpu, "patches/s",
                         1 / t_cpu, "numba CPU", t_cpu / t_gpu, "", note=name))
    return rows


def format_table(table: pd.DataFrame) -> str:
    """The benchmark table as Markdown, ratios first, with the machine it ran on."""
    lines = ["| benchmark | ratio | target | ours | baseline |", "|---|---|---|---|---|"]
    for r in table.itertuples():
        if r.ratio is None or pd.isna(r.ratio):
            ratio = "n/a"
        else:
            ratio = f"{r.ratio:,.2f}x" if r.ratio < 10 else f"{r.ratio:,.1f}x"
        base = "n/a" if r.baseline is None or pd.isna(r.baseline) else \
            f"{r.baseline:,.3g} {r.unit} ({r.baseline_name})"
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.benchmark}{note} | {ratio} | {r.target} | {r.ours:,.3g} {r.unit} | "
                     f"{base} |")
    lines.append("")
    lines.append(f"Machine: {table.attrs.get('machine', 'unknown')}")
    return "\n".join(lines)


def run_bench(quick: bool = False, *, sizes: BenchSizes | None = None) -> pd.DataFrame:
    """Run every benchmark and return one table of ratios (higher is better).

    Parameters
    ----------
    quick : bool
        Small sizes (a few seconds): the smoke test of the test suite.
    sizes : BenchSizes, optional
        Explicit sizes.
    """
    sizes = sizes or (BenchSizes.quick() if quick else BenchSizes())
    rows: list[dict] = [bench_detection(sizes)]
    rows += bench_fits(sizes)
    rows.append(bench_braggnn(sizes))
    rows += bench_gpu(sizes)
    with tempfile.TemporaryDirectory(prefix="braggtrack-bench-") as tmp:
        rows += bench_end_to_end(sizes, Path(tmp))
    table = pd.DataFrame(rows)
    table.attrs["machine"] = f"{platform.processor() or platform.machine()}, " \
                             f"{os.cpu_count()} cores, {platform.platform()}"
    return table
