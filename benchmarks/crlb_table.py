"""How close the localizers come to the Cramer-Rao lower bound, per peak kind, as Markdown.

The patches are those of ``benchmarks/accuracy_table.py`` (``simulate_patches``, kind ``k`` of
``KINDS`` with seed ``seed + k``).  For each patch :func:`braggtrack.crlb.centre_crlb` gives the
bound on the covariance of the centre with every parameter of the simulated peak estimated
(shape, eta, amplitude, background level and tilt, split and neighbour parameters), and with the
shape known (only centre, amplitude and background estimated: the most that prior knowledge of
the shape could buy).  The per-patch read noise, background tilt and neighbour shapes come from
the simulator's truth table (``tests/test_crlb.py`` checks that they rebuild the exact mean the
simulator drew its counts from).

Columns: the pooled median / p90 distance an efficient unbiased localizer would reach
(:func:`braggtrack.crlb.radial_error_quantiles`), the measured medians, pvoigt's median over the
bound's, and what "20 % better than pvoigt" would need.

Run: ``.venv/bin/python benchmarks/crlb_table.py [--n-per-kind 1000] [--seed 12345] [--out F]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from braggtrack import crlb
from braggtrack import simulate as S

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_table import SEED, default_localizers  # noqa: E402


def _errors(localizers, patches, truth, patch):
    c = patch // 2
    tx, ty = truth.x.to_numpy() - c, truth.y.to_numpy() - c
    out = {}
    for name, func in localizers.items():
        table = func(patches)
        out[name] = np.hypot(table.dx.to_numpy() - tx, table.dy.to_numpy() - ty)
    return out


def crlb_table(n_per_kind: int = 1000, seed: int = SEED, *, patch: int = 11,
               kinds=S.KINDS, localizers=None, prior_sigma: float = 1 / np.sqrt(3)):
    """One row per kind: bound quantiles, measured medians, ratios (see the module notes)."""
    if localizers is None:
        localizers = default_localizers()
    rows = []
    # Seed seed + k for the k-th of KINDS + EXTRA_KINDS, as in accuracy_table with those kinds.
    for k, kind in enumerate(S.KINDS + S.EXTRA_KINDS):
        if kind not in kinds:
            continue
        t0 = time.perf_counter()
        patches, truth = S.simulate_patches(n_per_kind, patch, kind, seed + k)
        args = crlb.simulated_nuisance(truth)
        cov = crlb.centre_crlb(truth, patch, **args)
        cov_known = crlb.centre_crlb(truth, patch, known=("shape", "eta", "split", "neighbour"),
                                     **args)
        # Gaussian stand-in for a centre prior of sd prior_sigma per axis: C -> (C^-1 + P^-1)^-1.
        post = np.linalg.inv(np.linalg.inv(cov) + np.eye(2) / prior_sigma**2)
        b50, b90 = crlb.radial_error_quantiles(cov, (0.5, 0.9))
        k50 = crlb.radial_error_quantiles(cov_known, (0.5,))[0]
        p50 = crlb.radial_error_quantiles(post, (0.5,))[0]
        err = _errors(localizers, patches, truth, patch)
        clean = ~truth.hot_pixel.to_numpy(bool)
        # The same peaks without hot pixels (the noise draws differ: the stream is shifted).
        patches0, truth0 = S.simulate_patches(n_per_kind, patch, kind, seed + k,
                                              hot_pixel_probability=0.0)
        pv0 = _errors({"pvoigt": localizers["pvoigt"]}, patches0, truth0, patch)["pvoigt"]
        row = {"kind": kind, "n": n_per_kind, "crlb_median": b50, "crlb_p90": b90,
               "crlb_known_shape_median": k50, "crlb_with_prior_median": p50,
               "crlb_sigma_axis_median": float(np.median(np.sqrt(cov[:, [0, 1], [0, 1]]))),
               "hot_fraction": float(1 - clean.mean()),
               "pvoigt_median_no_hot_subset": float(np.median(err["pvoigt"][clean])),
               "pvoigt_median_hot_off": float(np.median(pv0))}
        for name, e in err.items():
            row[f"{name}_median"] = float(np.median(e))
            row[f"{name}_p90"] = float(np.quantile(e, 0.9))
        # Median error over the bound's median by thirds of the peak's SNR (height / noise).
        snr = truth.height.to_numpy() / np.sqrt(truth.background.to_numpy()
                                                 + truth.read_noise.to_numpy() ** 2)
        edges = np.quantile(snr, [0, 1 / 3, 2 / 3, 1])
        third = np.clip(np.searchsorted(edges, snr, side="right") - 1, 0, 2)
        for j in range(3):
            m = third == j
            bound = crlb.radial_error_quantiles(cov[m], (0.5,))[0]
            row[f"snr_{j}"] = f"{edges[j]:.0f}-{edges[j + 1]:.0f}"
            row[f"crlb_median_snr_{j}"] = bound
            for name, e in err.items():
                row[f"{name}_median_snr_{j}"] = float(np.median(e[m]))
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    """The main table and the hot-pixel / prior side table."""
    names = [n for n in ("braggnn", "pvoigt", "gauss", "centroid") if f"{n}_median" in table]
    lines = ["| kind | CRLB median / p90 | " + " | ".join(f"{n} median" for n in names)
             + " | pvoigt / CRLB | 0.8 x pvoigt | 0.8 x pvoigt / CRLB | braggnn / CRLB |",
             "|---|---|" + "---|" * len(names) + "---|---|---|---|"]
    for r in table.itertuples():
        cells = [f"{getattr(r, n + '_median'):.3f}" for n in names]
        bn = f"{r.braggnn_median / r.crlb_median:.2f}" if "braggnn" in names else "-"
        lines.append(f"| {r.kind} | {r.crlb_median:.3f} / {r.crlb_p90:.3f} | "
                     + " | ".join(cells)
                     + f" | {r.pvoigt_median / r.crlb_median:.2f} | {0.8 * r.pvoigt_median:.3f}"
                     f" | {0.8 * r.pvoigt_median / r.crlb_median:.2f} | {bn} |")
    lines += ["", "| kind | CRLB sigma per axis, median | CRLB median, shape known | CRLB "
              "median with centre prior | hot-pixel patches | pvoigt median: all / no-hot "
              "subset / hot pixels off |", "|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.kind} | {r.crlb_sigma_axis_median:.4f} | "
                     f"{r.crlb_known_shape_median:.3f} | {r.crlb_with_prior_median:.3f} | "
                     f"{100 * r.hot_fraction:.1f} % | {r.pvoigt_median:.4f} / "
                     f"{r.pvoigt_median_no_hot_subset:.4f} / {r.pvoigt_median_hot_off:.4f} |")
    bn = ["braggnn"] if "braggnn" in names else []
    lines += ["", "| kind | SNR thirds | CRLB median | "
              + " | ".join(f"{n} / CRLB" for n in ["pvoigt", *bn]) + " |",
              "|---|---|---|" + "---|" * (1 + len(bn))]
    for r in table.to_dict("records"):
        cells = [" / ".join(r[f"snr_{j}"] for j in range(3)),
                 " / ".join(f"{r[f'crlb_median_snr_{j}']:.3f}" for j in range(3))]
        for n in ["pvoigt", *bn]:
            cells.append(" / ".join(f"{r[f'{n}_median_snr_{j}'] / r[f'crlb_median_snr_{j}']:.2f}"
                                    for j in range(3)))
        lines.append(f"| {r['kind']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-kind", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", default=None, help="also write the Markdown here")
    parser.add_argument("--csv", default=None, help="write the full table as CSV here")
    parser.add_argument("--extra-kinds", action="store_true",
                        help="also the wide and lorentzian shapes of simulate.EXTRA_KINDS "
                        "(not undersampled: its sigma reaches the renderer's 0.25 px floor, "
                        "below which the bound's numerical derivative cannot step)")
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    kinds = S.KINDS + (("wide", "lorentzian") if args.extra_kinds else ())
    table = crlb_table(args.n_per_kind, args.seed, kinds=kinds)
    text = (f"Centre error against the Cramer-Rao bound, {args.n_per_kind} patches per kind, "
            f"seed {args.seed} (px):\n\n" + to_markdown(table))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
