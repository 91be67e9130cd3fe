# %% [markdown]
# # Tutorial: strain of every particle against state of charge
#
# This tutorial follows a (simulated) operando experiment on a layered NMC cathode from raw
# frames to each particle's lattice strain against voltage and state of charge. It runs as a
# script (`python docs/tutorial.py`, about a minute with the defaults; `--small` for a quick
# check) or cell by cell in Jupyter or VS Code (the `# %%` markers).
#
# What happens in a real experiment: the cell is charged and discharged on a cycler while the
# X-ray beam hits the cathode; every frame is one exposure; each primary particle in the beam
# gives a Bragg spot on the detector whose distance from the beam centre measures the spacing
# d of its lattice planes. As lithium leaves and re-enters the layers, d changes by a few parts
# per thousand and the spot moves by a fraction of a pixel: sub-pixel localization and reliable
# linking are the whole game.

# %%
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import braggtrack as bt
from braggtrack import analysis
from braggtrack.config import FindConfig
from braggtrack.metadata import interpolate_cycler
from braggtrack.runner import TrackConfig
from braggtrack.simulate import simulate_operando, write_series


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="tutorial-output", help="working folder")
    parser.add_argument("--small", action="store_true", help="a tiny series, for a quick check")
    parser.add_argument("--localizer", default="braggnn")
    return parser.parse_args(argv)


args = parse_args(None if "ipykernel" not in sys.modules else [])
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
n_frames, size, n_particles = (12, 192, 12) if args.small else (40, 384, 40)

# %% [markdown]
# ## 1. The data: frames, and a cycler log on its own clock
#
# `simulate_operando` makes what a beamline gives you: a stack of frames (written here as a
# NeXus-style HDF5 file, as most detectors do) and the cycler's log (time, voltage, current)
# sampled every 10 s on the cycler's clock. Each simulated particle is one spot of one NMC
# reflection; its true strain follows its own state of charge, some particles lag, a few are
# inactive. The truth table is kept aside to check our answer at the end.

# %%
sim = simulate_operando(frames=n_frames, shape=(size, size), peaks=n_particles, seed=2,
                        messy=0.2, cycles=1)
frames_file = write_series(out / "operando.h5", sim.frames, sim.truth)
sim.cycler_log[["time_s", "voltage_V", "current_mA"]].to_csv(out / "cycler.csv", index=False)
# Frame time stamps usually come from the detector's own file or the beamline log:
sim.frame_meta[["frame", "time_s"]].to_csv(out / "frame_times.csv", index=False)
geometry = sim.truth.attrs  # distance, pixel size, wavelength, beam centre of the set-up
print(f"{n_frames} frames of {size}x{size} written to {frames_file}")

# %% [markdown]
# ## 2. Tie every frame to the electrochemistry
#
# The cycler log and the frames have different time bases. `interpolate_cycler` puts voltage
# and current on the frame times and integrates the current into capacity (mAh) when the log
# has no capacity column. The result is a plain table with a `frame` column: exactly what
# `--frame-meta` takes on the command line. `branch` (charge / discharge) and `cycle` follow
# from the sign of the current: `analysis.assign_branches` adds them (section 5), as
# `braggtrack run --cycler-log` does on the command line.

# %%
log = pd.read_csv(out / "cycler.csv")
times = pd.read_csv(out / "frame_times.csv")
meta = interpolate_cycler(log, times)
meta["state_of_charge"] = meta["capacity_mAh"] / meta["capacity_mAh"].max()
meta.to_csv(out / "frame_meta.csv", index=False)
print(meta.head())

# %% [markdown]
# ## 3. Choose the options, and why
#
# - **threshold**: counts below it are zeroed before peak detection. The default (`None`) is
#   the frame's median plus 5 robust standard deviations, which follows the background of
#   every frame; set a number when the background is structured.
# - **min_snr** (default 3): a peak must rise above the saddle joining it to a higher peak
#   (its persistence) by at least 3 times the frame's background noise; this is the default
#   filter against noise bumps.
# - **min_score = 10**: in addition, that persistence must reach 10 on a 0-255 scale of the
#   frame's intensity range. Off by default (on messy series it discarded 46 % of the true
#   peaks, README); here, on bright spots, it is a choice that trims faint bumps on the flanks
#   of big peaks.
# - **patch = 11**: the network and fits see an 11 x 11 pixel patch around each maximum; use a
#   larger odd size when peaks are broader than sigma ~2 px.
# - **localizer = "braggnn"**: the shipped network, trained on sharp *and* messy simulated
#   peaks; `pvoigt` is the conventional fit, useful as a cross-check (see `braggtrack compare`).
# - **geometry**: distance, beam centre, pixel size and wavelength turn positions into 2-theta
#   and d-spacing (a pyFAI PONI file, `--poni`, is the usual way with a tilted detector).
# - **search_range / memory**: a particle moves far less than a pixel per frame here, so a
#   search range of 3 px is generous; memory 3 bridges frames where a spot is too weak.

# %%
config = FindConfig(localizer=args.localizer, min_score=10, patch=11)
bx, by = geometry["beam_centre"]
track = TrackConfig(
    search_range=3.0, memory=3,
    distance_mm=geometry["distance_mm"], beam_x=bx, beam_y=by,
    pixel_um=geometry["pixel_mm"] * 1000, wavelength_A=geometry["wavelength_A"],
    frame_meta=str(out / "frame_meta.csv"), report=True,
)
result = bt.run(frames_file, out / "run", config=config, track=track, force=True,
                progress=not args.small)
print(result)

# %% [markdown]
# ## 4. Check the answer against the truth
#
# Every trajectory (`particle`) is matched to the simulated particle nearest to its mean
# position; braggtrack's strain is relative to each particle's first frame, so the truth is
# put on the same reference. The uncertainty `strain_err` comes from the localizer's position
# uncertainty propagated through the geometry: if it is honest, about 95 % of the errors are
# within two of it.

# %%
truth = sim.truth[sim.truth.visible]
tracks = result.tracks
centres = truth.groupby("particle")[["x", "y"]].mean()
rows = []
for pid, tr in tracks.groupby("particle"):
    d = np.hypot(centres.x - tr.x.mean(), centres.y - tr.y.mean())
    true_id = d.idxmin()
    t = truth[truth.particle == true_id].set_index("frame")
    tr = tr[tr.frame.isin(t.index)].sort_values("frame")
    if len(tr) < 3:
        continue
    ref = tr.frame.iloc[0]
    true_strain = (1 + t.loc[tr.frame, "strain"].to_numpy()) / (1 + t.loc[ref, "strain"]) - 1
    err = tr.strain.to_numpy() - true_strain
    rows.append({"particle": pid, "true_particle": true_id, "frames": len(tr),
                 "rms_error": float(np.sqrt(np.mean(err[1:] ** 2))),
                 "within_2_sigma": float(np.mean(np.abs(err[1:]) <= 2 * tr.strain_err.iloc[1:]
                                                 + 1e-12))})
check = pd.DataFrame(rows)
print(check.describe().loc[["mean", "50%"]].to_string())
print(f"median strain error {check.rms_error.median():.2e} "
      f"(true strains are a few 1e-3); {check.within_2_sigma.mean():.0%} within 2 sigma")

# %% [markdown]
# ## 5. Strain against voltage and state of charge
#
# With metadata joined, every track row carries `voltage_V` and `capacity_mAh`;
# `analysis.assign_branches` adds `branch` and `cycle`. `braggtrack.analysis` separates charge and discharge branches, computes per-cycle
# hysteresis, the population's median and spread, and ranks particles by how much and how early
# they respond (a lagging particle reaches half of its strain change at a higher state of
# charge).

# %%
table = analysis.assign_branches(tracks)
band = analysis.population_band(table, "voltage_V", y="strain")
hyst = analysis.hysteresis(table, "voltage_V", y="strain")
ranks = analysis.rank_particles(table, "state_of_charge", y="strain")
print(ranks.head(8).to_string())
fig = analysis.plot_response(table, "voltage_V", y="strain")
fig.savefig(out / "strain_vs_voltage.png", dpi=120)
print(f"figure: {out / 'strain_vs_voltage.png'}")

# %% [markdown]
# ## 6. Look before you trust
#
# Open `run/report/index.html` in a browser: the frame overlay shows accepted (cyan circles) and
# rejected (red crosses) peaks, the galleries show where each localizer put the centre on real patches,
# the movie shows the peaks moving over the series, and the strain plots carry error bars.
# `braggtrack compare run` puts the localizers side by side on your own patches and shows where
# they disagree most.

# %%
print(f"report: {result.paths.get('report')}")
