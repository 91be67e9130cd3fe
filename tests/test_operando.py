"""Operando workflow from the command line: frames + a cycler log on its own clock -> strain of
every particle against voltage, matching the simulated strain within the stated uncertainty."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from braggtrack.simulate import simulate_operando, write_series


@pytest.mark.slow
def test_cycler_log_to_strain_vs_voltage(tmp_path):
    sim = simulate_operando(frames=10, shape=(192, 192), peaks=10, seed=4, messy=0.0)
    h5 = write_series(tmp_path / "op.h5", sim.frames, sim.truth)
    sim.cycler_log[["time_s", "voltage_V", "current_mA"]].to_csv(tmp_path / "cycler.csv",
                                                                 index=False)
    sim.frame_meta[["frame", "time_s"]].to_csv(tmp_path / "times.csv", index=False)
    g = sim.truth.attrs
    bx, by = g["beam_centre"]
    res = subprocess.run(
        [sys.executable, "-m", "braggtrack.cli", "run", str(h5), "-o", str(tmp_path / "run"),
         "--localizer", "pvoigt", "--no-report", "-q", "--workers", "1",
         "--frame-meta", str(tmp_path / "times.csv"), "--cycler-log", str(tmp_path / "cycler.csv"),
         "--distance", str(g["distance_mm"]), "--beam-x", str(bx), "--beam-y", str(by),
         "--pixel", str(g["pixel_mm"] * 1000), "--wavelength", str(g["wavelength_A"])],
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    tracks = pd.read_parquet(tmp_path / "run" / "tracks.parquet")
    for col in ("voltage_V", "current_mA", "capacity_mAh", "branch", "strain", "strain_err",
                "d_spacing", "two_theta"):
        assert col in tracks, col
    # the cycler's voltage at each frame, interpolated from its own clock
    v = tracks.groupby("frame").voltage_V.first()
    np.testing.assert_allclose(v.to_numpy(), sim.frame_meta.set_index("frame").loc[v.index,
                               "voltage_V"].to_numpy(), atol=0.01)
    assert set(tracks.branch) >= {"charge", "discharge"}
    # strain of each particle against the truth, on the same reference frame
    truth = sim.truth[sim.truth.visible]
    centres = truth.groupby("particle")[["x", "y"]].mean()
    within, errors = [], []
    for _, tr in tracks.groupby("particle"):
        true_id = np.hypot(centres.x - tr.x.mean(), centres.y - tr.y.mean()).idxmin()
        t = truth[truth.particle == true_id].set_index("frame")
        tr = tr[tr.frame.isin(t.index)].sort_values("frame")
        ref = tr.frame.iloc[0]
        true = (1 + t.loc[tr.frame, "strain"].to_numpy()) / (1 + t.loc[ref, "strain"]) - 1
        err = (tr.strain.to_numpy() - true)[1:]
        errors += list(np.abs(err))
        within += list(np.abs(err) <= 2 * tr.strain_err.to_numpy()[1:] + 1e-12)
    assert len(errors) > 30
    assert np.median(errors) < 5e-4          # simulated strains are a few 1e-3
    assert np.mean(within) > 0.85            # the stated uncertainty is honest
