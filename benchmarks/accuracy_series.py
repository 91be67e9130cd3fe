"""Detection + localization accuracy on a simulated series, by peak kind and localizer.

For each localizer the whole `find` pipeline runs with default options on a simulated series
(seed different from any training seed); every accepted peak is matched to the nearest visible
true peak within ``--match`` px. Reported per kind: recall (true peaks found and accepted),
median and 90th-percentile position error (px) of the matched peaks; and per localizer the
number of false peaks (accepted detections with no true peak within ``--match`` px).

    python benchmarks/accuracy_series.py [--frames 8] [--size 512] [--peaks 150] [--messy 0.5]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

import braggtrack as bt
from braggtrack.simulate import simulate_series

LOCALIZERS = ("braggnn", "pvoigt", "gauss", "centroid")


def evaluate(frames: np.ndarray, truth: pd.DataFrame, localizer: str, match: float,
             model: str | None = None) -> tuple:
    extra = {"model": model} if model and localizer == "braggnn" else {}
    peaks = bt.find(frames, localizer=localizer, progress=False, **extra)
    ok = peaks[peaks.ok]
    rows, false_peaks = [], 0
    for f in range(len(frames)):
        t = truth[(truth.frame == f) & truth.visible].reset_index(drop=True)
        p = ok[ok.frame == f]
        if len(p) == 0:
            rows.append(pd.DataFrame({"kind": t.kind, "found": False, "err": np.inf}))
            continue
        d, j = cKDTree(p[["x", "y"]].to_numpy()).query(t[["x", "y"]].to_numpy())
        rows.append(pd.DataFrame({"kind": t.kind, "found": d <= match, "err": d}))
        dt, _ = cKDTree(t[["x", "y"]].to_numpy()).query(p[["x", "y"]].to_numpy())
        false_peaks += int((dt > match).sum())
    res = pd.concat(rows, ignore_index=True)
    table = res.groupby("kind").apply(
        lambda g: pd.Series({
            "recall": g.found.mean(),
            "median_err_px": g.err[g.found].median(),
            "p90_err_px": g.err[g.found].quantile(0.9),
        }), include_groups=False)
    table["localizer"] = localizer
    return table.reset_index(), false_peaks


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--peaks", type=int, default=150)
    ap.add_argument("--messy", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--match", type=float, default=1.5)
    ap.add_argument("--model", default=None, help="BraggNN model (default: shipped)")
    args = ap.parse_args(argv)
    frames, truth = simulate_series(frames=args.frames, shape=(args.size, args.size),
                                    peaks=args.peaks, messy=args.messy, seed=args.seed)
    tables, false = [], {}
    for loc in LOCALIZERS:
        t, fp = evaluate(frames, truth, loc, args.match, args.model)
        tables.append(t)
        false[loc] = fp
    table = pd.concat(tables, ignore_index=True)
    wide = table.pivot(index="kind", columns="localizer",
                       values=["median_err_px", "p90_err_px", "recall"])
    n_true = int(truth.visible.sum())
    print(f"{args.frames} frames {args.size}x{args.size}, {n_true} visible true peaks, "
          f"messy {args.messy}, seed {args.seed}, match radius {args.match} px\n")
    print("| kind | " + " | ".join(f"{loc} median / p90 (px)" for loc in LOCALIZERS)
          + " | recall (braggnn / pvoigt / gauss / centroid) |")
    print("|---" * (len(LOCALIZERS) + 2) + "|")
    for kind in wide.index:
        cells = [f"{wide.loc[kind, ('median_err_px', loc)]:.3f} / "
                 f"{wide.loc[kind, ('p90_err_px', loc)]:.3f}" for loc in LOCALIZERS]
        rec = " / ".join(f"{wide.loc[kind, ('recall', loc)]:.2f}" for loc in LOCALIZERS)
        print(f"| {kind} | " + " | ".join(cells) + f" | {rec} |")
    print("\nfalse peaks (accepted, no true peak within the match radius): "
          + ", ".join(f"{loc} {false[loc]}" for loc in LOCALIZERS))
    return table


if __name__ == "__main__":
    main()
