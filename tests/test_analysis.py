"""Tests of braggtrack.analysis on synthetic operando data with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from braggtrack import analysis
from braggtrack.errors import OptionError


def triangle(frame: np.ndarray, period: float) -> np.ndarray:
    """State of charge going 0 -> 1 -> 0 once per ``period`` frames."""
    phase = (frame / period) % 1.0
    return np.where(phase < 0.5, 2 * phase, 2 - 2 * phase)


def operando_table(n_frames=200, period=100, particles=((0, 1e-3, 0), (1, 2e-3, 7)), noise=0.0):
    """Particles whose strain follows the state of charge with a given amplitude and lag."""
    rng = np.random.default_rng(0)
    frame = np.arange(n_frames)
    soc = triangle(frame, period)
    rows = []
    for particle, amplitude, lag in particles:
        strain = amplitude * triangle(frame - lag, period) + noise * rng.standard_normal(n_frames)
        rows.append(pd.DataFrame({
            "frame": frame, "particle": particle, "state_of_charge": soc,
            "voltage_V": 3.0 + 1.2 * soc, "strain": strain, "strain_err": np.full(n_frames, 1e-5),
        }))
    return pd.concat(rows, ignore_index=True)


def test_branches_from_derivative_and_cycles():
    t = operando_table(n_frames=200, period=100)
    b = analysis.assign_branches(t, "state_of_charge")
    per_frame = b.groupby("frame")[["branch", "cycle"]].first()
    # Charge while the triangle rises (frames 1..49 of each period), discharge while it falls.
    assert (per_frame.loc[1:49, "branch"] == "charge").all()
    assert (per_frame.loc[51:99, "branch"] == "discharge").all()
    assert (per_frame.loc[101:149, "branch"] == "charge").all()
    assert per_frame.loc[10, "cycle"] == 1 and per_frame.loc[120, "cycle"] == 2
    assert set(b["cycle"]) == {1, 2}


def test_branches_from_current_sign_and_given_column_kept():
    t = pd.DataFrame({"frame": range(6), "current_mA": [1, 1, 0, -1, -1, 1], "voltage_V": 3.5})
    b = analysis.assign_branches(t)
    assert b["branch"].tolist() == ["charge", "charge", "charge", "discharge", "discharge", "charge"]
    assert b["cycle"].tolist() == [1, 1, 1, 1, 1, 2]
    given_branch = t.assign(branch=["discharge"] * 6, cycle=5)
    kept = analysis.assign_branches(given_branch)
    assert (kept["branch"] == "discharge").all() and (kept["cycle"] == 5).all()


def test_branches_without_driver_raises():
    with pytest.raises(OptionError, match="charge from discharge"):
        analysis.assign_branches(pd.DataFrame({"frame": [0, 1], "strain": [0.0, 1.0]}))


def test_hysteresis_parallel_branches_known_area():
    # Charge branch h/2 above discharge over 1 V: area = h * 1 V exactly (linear branches).
    v_up = np.linspace(3.0, 4.0, 41)
    v_down = v_up[::-1]
    h = 4e-4
    strain = np.r_[1e-3 * (v_up - 3) + h / 2, 1e-3 * (v_down - 3) - h / 2]
    t = pd.DataFrame({"frame": np.arange(82), "particle": 3, "voltage_V": np.r_[v_up, v_down],
                      "strain": strain})
    res = analysis.hysteresis(t, "voltage_V")
    assert len(res) == 1 and bool(res["ok"].iloc[0])
    assert res["area"].iloc[0] == pytest.approx(h * 1.0, rel=1e-6)
    assert res["signed_area"].iloc[0] == pytest.approx(h, rel=1e-6)
    assert res["max_gap"].iloc[0] == pytest.approx(h, rel=1e-6)


def test_hysteresis_ellipse_loop_area():
    # x = cos t, y = b sin t traced once: the loop encloses pi * 1 * b.
    b = 2e-3
    tt = np.linspace(np.pi, 3 * np.pi, 2001)[:-1]
    t = pd.DataFrame({"frame": np.arange(len(tt)), "particle": 0, "voltage_V": np.cos(tt),
                      "strain": b * np.sin(tt)})
    res = analysis.hysteresis(t, "voltage_V", n_grid=4001)
    assert res["area"].iloc[0] == pytest.approx(np.pi * b, rel=0.01)
    # Charge (x rising, t in (pi, 2 pi)) runs below discharge: negative signed area.
    assert res["signed_area"].iloc[0] < 0


def test_hysteresis_flags_incomplete_cycle_without_nan():
    t = pd.DataFrame({"frame": range(5), "particle": 0, "voltage_V": [3.0, 3.2, 3.4, 3.6, 3.8],
                      "strain": [0.0, 1e-4, 2e-4, 3e-4, 4e-4]})
    res = analysis.hysteresis(t)
    assert not res["ok"].iloc[0] and res["reason"].iloc[0] == "branch_too_short"
    assert not res.isna().any().any()


def test_rank_particles_known_amplitude_and_lag():
    t = operando_table(particles=((0, 1e-3, 0), (1, 2e-3, 7), (2, 0.5e-3, 3)))
    r = analysis.rank_particles(t, "state_of_charge").set_index("particle")
    assert r.loc[1, "amplitude"] == pytest.approx(2e-3, rel=0.05)
    assert r.loc[0, "amplitude"] == pytest.approx(1e-3, rel=0.05)
    assert r.loc[0, "lag_frames"] == pytest.approx(0.0, abs=0.3)
    assert r.loc[1, "lag_frames"] == pytest.approx(7.0, abs=0.3)
    assert r.loc[2, "lag_frames"] == pytest.approx(3.0, abs=0.3)
    assert r.loc[1, "rank_amplitude"] == 1 and r.loc[2, "rank_amplitude"] == 3
    assert r.loc[0, "rank_lag"] == 1 and r.loc[1, "rank_lag"] == 3
    assert r.loc[0, "slope"] > 0 and r.loc[0, "correlation"] > 0.9
    assert not r.isna().any().any()


def test_rank_particles_known_onset():
    # Strain switches (logistic step) at a known state of charge per particle.
    soc = np.linspace(0, 1, 101)
    rows = []
    for particle, soc50 in [(0, 0.3), (1, 0.6)]:
        strain = 1e-3 / (1 + np.exp(-(soc - soc50) / 0.03))
        rows.append(pd.DataFrame({"frame": np.arange(101), "particle": particle,
                                  "state_of_charge": soc, "strain": strain}))
    r = analysis.rank_particles(pd.concat(rows), "state_of_charge").set_index("particle")
    assert r.loc[0, "onset_x"] == pytest.approx(0.3, abs=0.01)
    assert r.loc[1, "onset_x"] == pytest.approx(0.6, abs=0.01)
    assert r.loc[0, "rank_onset"] == 1 and r.loc[1, "rank_onset"] == 2


@settings(max_examples=15, deadline=None)
@given(st.floats(0.2, 0.8), st.floats(1e-4, 1e-2))
def test_onset_invariant_under_amplitude_and_offset(soc50, amplitude):
    soc = np.linspace(0, 1, 81)
    strain = 0.01 + amplitude * np.clip((soc - soc50) / 0.2 + 0.5, 0, 1)
    t = pd.DataFrame({"frame": np.arange(81), "particle": 0, "state_of_charge": soc,
                      "strain": strain})
    r = analysis.rank_particles(t, "state_of_charge")
    assert r["onset_x"].iloc[0] == pytest.approx(soc50, abs=0.02)


def test_population_band_median_and_percentiles():
    # Ten particles with strain = k * 1e-4 at every voltage: median 4.5e-4, p16/p84 known.
    rows = [pd.DataFrame({"frame": np.arange(10), "particle": k, "voltage_V": np.linspace(3, 4, 10),
                          "strain": np.full(10, k * 1e-4)}) for k in range(10)]
    band = analysis.population_band(pd.concat(rows), "voltage_V", bins=5)
    expected = np.percentile(np.arange(10) * 1e-4, [16, 50, 84])
    assert (band["branch"] == "charge").all() and len(band) == 5
    assert np.allclose(band[["p16", "median", "p84"]].to_numpy(), expected)
    assert (band["n_particles"] == 10).all()


def test_response_column_and_radial_shift_fallback():
    t = operando_table().drop(columns=["strain", "strain_err"])
    t["radial_shift"] = t["state_of_charge"] * 0.5
    assert analysis.response_column(t) == "radial_shift"
    r = analysis.rank_particles(t, "state_of_charge")
    assert r["amplitude"].iloc[0] == pytest.approx(0.5, rel=0.05)
    with pytest.raises(OptionError):
        analysis.response_column(pd.DataFrame({"frame": [0]}))


def test_x_columns_and_plots():
    t = operando_table()
    t["time_s"] = 0.0
    assert analysis.x_columns(t) == ["voltage_V", "state_of_charge"]
    fig = analysis.plot_response(t, "voltage_V")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "cell voltage (V)" and "strain" in ax.get_ylabel()
    assert len(ax.lines) >= 2
    h = analysis.hysteresis(t, "voltage_V")
    assert len(analysis.plot_hysteresis(h).axes) == 1
    r = analysis.rank_particles(t)
    assert len(analysis.plot_ranking(r).axes) == 2  # scatter + colour bar


def test_numbers_stored_as_text_and_stray_text_in_x():
    # A cycler column with one "--" cell used to arrive as text and raise TypeError deep in
    # pandas; numbers as text give the same ranks as numbers, a word is one line naming it.
    t = operando_table()
    as_text = t.assign(voltage_V=t["voltage_V"].map(repr))
    pd.testing.assert_frame_equal(analysis.rank_particles(as_text, "voltage_V"),
                                  analysis.rank_particles(t, "voltage_V"))
    pd.testing.assert_frame_equal(analysis.hysteresis(as_text, "voltage_V"),
                                  analysis.hysteresis(t, "voltage_V"))
    bad = as_text.copy()
    bad.loc[5, "voltage_V"] = "--"
    for f in (analysis.rank_particles, analysis.hysteresis, analysis.population_band):
        with pytest.raises(OptionError, match="column voltage_V must hold numbers, found '--'"):
            f(bad, "voltage_V")
