"""Tests of braggtrack.geometry against hand-computed geometry, pyFAI files and Monte Carlo."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from braggtrack.errors import InputFileError, OptionError
from braggtrack.geometry import (
    Geometry,
    add_geometry,
    add_radial_shift,
    add_strain,
    lattice_parameter,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def simple():
    # 100 mm, pixels 100 um (x) by 150 um (y), beam on the centre of pixel (col 50, row 40)
    return Geometry.simple(100.0, 50.0, 40.0, pixel_x_um=100.0, pixel_y_um=150.0,
                           wavelength_A=1.0)


def test_simple_two_theta_by_hand(simple):
    # 10 px along x = 1.0 mm; 10 px along y = 1.5 mm; the beam pixel itself is at 2-theta 0
    tt = simple.two_theta([60.0, 50.0, 50.0, 40.0, 53.0], [40.0, 50.0, 40.0, 40.0, 44.0])
    expected = np.degrees([math.atan(1.0 / 100), math.atan(1.5 / 100), 0.0,
                           math.atan(1.0 / 100), math.atan(math.hypot(0.3, 0.6) / 100)])
    np.testing.assert_allclose(tt, expected, atol=1e-9)
    assert simple.beam_centre == pytest.approx((50.0, 40.0))


def test_sub_pixel_positions_are_pixel_centre_convention(simple):
    # half a pixel to the right of the beam pixel centre is 0.05 mm away, not 0 or 0.1 mm
    tt = simple.two_theta([50.5], [40.0])
    assert tt[0] == pytest.approx(math.degrees(math.atan(0.05 / 100)), abs=1e-10)


def test_chi_quadrants(simple):
    chi = simple.chi([60.0, 50.0, 40.0, 50.0, 60.0], [40.0, 50.0, 40.0, 30.0, 50.0])
    # +x -> 0, +y (down the rows) -> 90, -x -> 180, -y -> -90; (1 mm, 1.5 mm) -> atan2(1.5, 1)
    np.testing.assert_allclose(
        chi, [0.0, 90.0, 180.0, -90.0, math.degrees(math.atan2(1.5, 1.0))], atol=1e-9
    )


def test_q_and_d_by_hand(simple):
    theta = math.atan(1.0 / 100) / 2
    q_hand = 4 * math.pi / 0.1 * math.sin(theta)  # 1/nm with lambda = 0.1 nm
    d_hand = 1.0 / (2 * math.sin(theta))  # angstrom
    assert simple.q([60.0], [40.0])[0] == pytest.approx(q_hand, rel=1e-9)
    assert simple.d_spacing([60.0], [40.0])[0] == pytest.approx(d_hand, rel=1e-9)


def test_energy_and_options():
    g = Geometry.simple(200.0, 0, 0, 75.0, energy_keV=20.0)
    assert g.wavelength_A == pytest.approx(12.398419843320026 / 20.0)
    assert g.energy_keV == pytest.approx(20.0)
    with pytest.raises(OptionError):
        Geometry.simple(100.0, 0, 0, 75.0, energy_keV=20.0, wavelength_A=1.0)
    with pytest.raises(OptionError):
        Geometry.simple(-1.0, 0, 0, 75.0)
    with pytest.raises(OptionError):
        Geometry.simple(100.0, 0, 0)


def test_poni_round_trip_against_hand(tmp_path):
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    # written by pyFAI itself; beam at the centre of pixel (row 100, col 200), 172 um pixels
    p = 172e-6
    ai = AzimuthalIntegrator(dist=0.25, poni1=100.5 * p, poni2=200.5 * p,
                             detector=Detector(pixel1=p, pixel2=p, max_shape=(512, 512)),
                             wavelength=0.7e-10)
    path = tmp_path / "det.poni"
    ai.save(str(path))
    g = Geometry.from_poni(path)
    assert g.shape == (512, 512)
    assert g.wavelength_A == pytest.approx(0.7)
    assert g.beam_centre == pytest.approx((200.0, 100.0))
    tt = g.two_theta([230.0, 200.0], [100.0, 60.0])
    np.testing.assert_allclose(
        tt, np.degrees([math.atan(30 * p / 0.25), math.atan(40 * p / 0.25)]), atol=1e-9
    )
    # and our writer gives back the same geometry
    g2 = Geometry.from_poni(g.to_poni(tmp_path / "again.poni"))
    np.testing.assert_allclose(g2.two_theta([230.0], [100.0]), tt[:1], atol=1e-12)


def test_poni_with_tilt_matches_pyfai(tmp_path):
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    ai = AzimuthalIntegrator(dist=0.2, poni1=0.02, poni2=0.03, rot1=0.05, rot2=-0.03, rot3=0.1,
                             detector=Detector(pixel1=1e-4, pixel2=1e-4), wavelength=1e-10)
    path = tmp_path / "tilt.poni"
    ai.save(str(path))
    g = Geometry.from_poni(path)
    x, y = np.array([10.0, 300.5]), np.array([20.0, 150.25])
    np.testing.assert_allclose(g.two_theta(x, y), np.degrees(ai.tth(y, x)), atol=1e-12)


def test_bad_poni_files(tmp_path):
    with pytest.raises(InputFileError, match="no such"):
        Geometry.from_poni(tmp_path / "missing.poni")
    bad = tmp_path / "bad.poni"
    bad.write_bytes(b"\x00\x01 this is not a poni\nDistance: banana\n")
    with pytest.raises(InputFileError):
        Geometry.from_poni(bad)


def test_add_geometry_columns_and_flags(simple):
    t = pd.DataFrame({"x": [60.0, 50.0, np.nan], "y": [40.0, 40.0, 1.0],
                      "x_err": [0.1, 0.1, 0.1], "y_err": [0.1, 0.1, 0.1],
                      "ok": True, "reason": ""})
    out = add_geometry(t, simple)
    for col in ("two_theta", "two_theta_err", "chi", "chi_err", "q", "q_err", "d_spacing",
                "d_spacing_err"):
        assert col in out.columns
        assert np.isfinite(out[col]).all()
    assert out["ok"].tolist() == [True, False, False]
    assert out["reason"].tolist() == ["", "beam_centre", "no_position"]
    # analytic error along x for a point on the x axis: d(2theta)/dx = p / D / (1 + (r/D)^2)
    slope = math.degrees(0.1 / 100 / (1 + (1.0 / 100) ** 2))
    assert out["two_theta_err"][0] == pytest.approx(slope * 0.1, rel=1e-5)


def test_white_beam_has_no_d():
    g = Geometry.simple(80.0, 100.0, 100.0, 73.4)
    out = add_geometry(pd.DataFrame({"x": [150.0], "y": [100.0]}), g)
    assert "two_theta" in out.columns and "d_spacing" not in out.columns and "q" not in out
    with pytest.raises(OptionError):
        g.q([1.0], [1.0])


def test_error_propagation_matches_monte_carlo():
    from pyFAI.detectors import Detector  # noqa: F401 (pyFAI present)

    g = Geometry(distance_m=0.15, poni1_m=0.01, poni2_m=0.012, pixel1_m=1e-4, pixel2_m=1e-4,
                 rot1=0.1, rot2=-0.05, wavelength_m=1.2e-10)
    x0, y0, xe, ye = 300.0, 260.0, 0.3, 0.2
    out = add_geometry(pd.DataFrame({"x": [x0], "y": [y0], "x_err": [xe], "y_err": [ye]}), g)
    rng = np.random.default_rng(0)
    xs = x0 + rng.normal(0, xe, 20000)
    ys = y0 + rng.normal(0, ye, 20000)
    for col, func in (("two_theta", g.two_theta), ("chi", g.chi), ("q", g.q),
                      ("d_spacing", g.d_spacing)):
        mc = np.std(func(xs, ys))
        assert out[f"{col}_err"][0] == pytest.approx(mc, rel=0.03), col


def test_lattice_parameters_of_known_reflections():
    # silicon a = 5.431 A: d(111) = 3.1356, d(220) = 1.9201, d(311) = 1.6375
    a, _ = lattice_parameter([3.1356, 1.9201, 1.6375], [[1, 1, 1], [2, 2, 0], [3, 1, 1]])
    np.testing.assert_allclose(a, 5.431, atol=1e-3)
    # hexagonal NMC-like a = 2.87, c = 14.2: d(003) = 4.73333, d(110) = 1.435,
    # d(104) = 1 / sqrt(4/3 / 2.87^2 + 16 / 14.2^2) = 2.036062
    c, c_err = lattice_parameter(4.733333, (0, 0, 3), "hexagonal", parameter="c", d_err=0.001)
    assert c[0] == pytest.approx(14.2, rel=1e-6) and c_err[0] == pytest.approx(0.003)
    a, _ = lattice_parameter(1.435, (1, 1, 0), "hexagonal")
    assert a[0] == pytest.approx(2.87, rel=1e-6)
    a, _ = lattice_parameter(2.036062, (1, 0, 4), "hexagonal", c_over_a=14.2 / 2.87)
    assert a[0] == pytest.approx(2.87, rel=1e-5)
    c, _ = lattice_parameter(2.036062, (1, 0, 4), "hexagonal", c_over_a=14.2 / 2.87,
                             parameter="c")
    assert c[0] == pytest.approx(14.2, rel=1e-5)
    # tetragonal a = 4, c = 6: d(101) = 1 / sqrt(1/16 + 1/36) = 3.328201
    a, _ = lattice_parameter(3.328201, (1, 0, 1), "tetragonal", c_over_a=1.5)
    assert a[0] == pytest.approx(4.0, rel=1e-6)
    with pytest.raises(OptionError, match="c_over_a"):
        lattice_parameter(2.0, (1, 0, 4), "hexagonal")
    with pytest.raises(OptionError):
        lattice_parameter(2.0, (0, 0, 0))
    with pytest.raises(OptionError):
        lattice_parameter(2.0, (1, 1, 1), "monoclinic")


def test_add_strain_reference_frames():
    t = pd.DataFrame({
        "particle": [0, 0, 0, 1, 1],
        "frame": [0, 1, 2, 1, 2],
        "d_spacing": [2.0, 2.002, 1.999, 3.0, 3.003],
        "d_spacing_err": [0.0002, 0.0002, 0.0002, 0.0003, 0.0003],
    })
    out = add_strain(t)
    np.testing.assert_allclose(out["strain"], [0, 1e-3, -5e-4, 0, 1e-3], atol=1e-12)
    assert out["strain_ref_frame"].tolist() == [0, 0, 0, 1, 1]
    assert out["strain_err"][0] == 0.0
    assert out["strain_err"][1] == pytest.approx(math.hypot(1e-4, 2.002 * 0.0002 / 4), rel=1e-9)
    out = add_strain(t, reference_frame=2)
    assert out["strain"][2] == 0.0 and out["strain"][0] == pytest.approx(2.0 / 1.999 - 1)
    out = add_strain(t, d_ref={0: 2.0, 1: 2.997})
    assert out["strain"][3] == pytest.approx(3.0 / 2.997 - 1)
    assert out["strain_ref_frame"].eq(-1).all()


def test_add_strain_from_two_theta_without_wavelength():
    # at fixed wavelength d ~ 1/sin(theta): strain = sin(theta_ref)/sin(theta) - 1
    t = pd.DataFrame({"particle": 0, "frame": [0, 1], "two_theta": [20.0, 19.98],
                      "two_theta_err": [0.001, 0.001]})
    out = add_strain(t)
    expected = math.sin(math.radians(10.0)) / math.sin(math.radians(9.99)) - 1
    assert out["strain"][1] == pytest.approx(expected, rel=1e-9)


def test_add_radial_shift():
    t = pd.DataFrame({"particle": [0, 0, 1, 1], "frame": [0, 1, 0, 1],
                      "x": [110.0, 110.3, 10.0, 10.0], "y": [50.0, 50.0, 20.0, 19.0],
                      "x_err": 0.1, "y_err": 0.1})
    out = add_radial_shift(t, (10.0, 50.0))
    np.testing.assert_allclose(out["radial_shift"], [0.0, 0.3, 0.0, 1.0], atol=1e-12)
    # along a radial direction the radius error equals the position error; two points: sqrt 2
    assert out["radial_shift_err"][1] == pytest.approx(0.1 * math.sqrt(2))


def test_lauetools_det_file():
    det = DATA / "laue_gan_nanowire_calib.det"
    if not det.exists():
        pytest.skip("shared data not available")
    g = Geometry.from_lauetools_det(det)
    assert g.wavelength_m is None and g.shape == (2018, 2016)
    # LaueTools: the detector normal through (xcen, ycen) is at 90 deg - xbet from the beam
    assert g.two_theta([977.81], [932.17])[0] == pytest.approx(90.0 - 0.477, abs=1e-4)
    # along the column through the normal's foot (xgam small), 2-theta changes by the angle
    # subtended: 200 px * 0.0734 mm at 79.612 mm -> about atan(14.68 / 79.612) = 10.45 deg
    tt = g.two_theta([977.81, 977.81], [732.17, 1132.17])
    assert abs(tt[0] - tt[1]) == pytest.approx(2 * math.degrees(math.atan(14.68 / 79.612)),
                                               rel=0.02)
    with pytest.raises(InputFileError):
        Geometry.from_lauetools_det(DATA / "README.md")


# -------------------------------------------------------------------- review 6 defects
def _poni(tmp_path, name, wavelength=None):
    """A PONI file written by pyFAI: 0.25 m, 172 um pixels, beam on pixel (row 100, col 200)."""
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    p = 172e-6
    ai = AzimuthalIntegrator(dist=0.25, poni1=100.5 * p, poni2=200.5 * p,
                             detector=Detector(pixel1=p, pixel2=p, max_shape=(512, 512)))
    if wavelength is not None:
        ai.wavelength = wavelength
    path = tmp_path / name
    ai.save(str(path))
    return path


def test_poni_without_wavelength_and_wavelength_given_beside_it(tmp_path):
    p = 172e-6
    path = _poni(tmp_path, "nowl.poni")
    assert "Wavelength" not in path.read_text()
    g = Geometry.from_poni(path)
    assert g.wavelength_m is None
    theta = math.atan(30 * p / 0.25) / 2  # 30 px right of the beam
    assert g.two_theta([230.0], [100.0])[0] == pytest.approx(math.degrees(2 * theta), abs=1e-9)
    t = add_geometry(pd.DataFrame({"x": [230.0], "y": [100.0]}), g)
    assert "d_spacing" not in t and "q" not in t
    # a wavelength given separately: d from Bragg's law by hand, lambda / (2 sin theta)
    g07 = Geometry.from_poni(path, wavelength_A=0.7)
    assert g07.wavelength_A == pytest.approx(0.7)
    assert g07.d_spacing([230.0], [100.0])[0] == pytest.approx(0.7 / (2 * math.sin(theta)),
                                                               rel=1e-9)
    # a file with a wavelength: the same one given again is fine, another one is refused
    with_wl = _poni(tmp_path, "wl.poni", wavelength=0.7e-10)
    assert Geometry.from_poni(with_wl, wavelength_A=0.70001).wavelength_A == pytest.approx(0.7)
    with pytest.raises(OptionError, match=r"wl.poni: .*0\.7 A.*1\.4 A, disagree"):
        Geometry.from_poni(with_wl, wavelength_A=1.4)
    with pytest.raises(OptionError, match="wavelength_A"):
        Geometry.from_poni(path, wavelength_A=float("nan"))


def test_strain_from_two_theta_of_a_geometry_without_wavelength(tmp_path):
    p = 172e-6
    g = Geometry.from_poni(_poni(tmp_path, "nowl.poni"))
    t = pd.DataFrame({"particle": 0, "frame": [0, 1], "x": [250.0, 251.0], "y": [100.0, 100.0]})
    out = add_strain(add_geometry(t, g))
    th0, th1 = math.atan(50 * p / 0.25) / 2, math.atan(51 * p / 0.25) / 2
    assert out["strain"].tolist() == pytest.approx([0.0, math.sin(th0) / math.sin(th1) - 1],
                                                   rel=1e-7)
    # and it equals d / d_ref - 1 with any wavelength
    with_wl = add_strain(add_geometry(t, Geometry.from_poni(_poni(tmp_path, "nowl.poni"),
                                                            wavelength_A=0.5)))
    np.testing.assert_allclose(out["strain"], with_wl["strain"], rtol=1e-9, atol=1e-15)
    with pytest.raises(OptionError, match="d_ref .* needs a wavelength"):
        add_strain(add_geometry(t, g), d_ref=2.0)


@pytest.mark.parametrize("bad", [
    {"beam_x_px": float("nan")}, {"beam_y_px": float("inf")}, {"distance_mm": float("nan")},
    {"pixel_size_um": float("nan")}, {"wavelength_A": float("nan")},
    {"energy_keV": float("inf")}, {"distance_mm": "100"},
])
def test_simple_refuses_non_finite_numbers(bad):
    args = dict(distance_mm=100.0, beam_x_px=50.0, beam_y_px=40.0, pixel_size_um=75.0)
    args.update(bad)
    with pytest.raises(OptionError, match=next(iter(bad)).split("_")[0]):
        Geometry.simple(**args)


def test_poni_with_non_finite_values_names_the_file(tmp_path):
    good = _poni(tmp_path, "ok.poni", wavelength=1e-10).read_text()
    for key, line in (("Distance", "Distance: nan"), ("Poni1", "Poni1: inf"),
                      ("Wavelength", "Wavelength: nan")):
        path = tmp_path / f"bad_{key}.poni"
        path.write_text("\n".join(line if ln.startswith(key + ":") else ln
                                  for ln in good.splitlines()) + "\n")
        with pytest.raises(InputFileError, match=f"bad_{key}.poni"):
            Geometry.from_poni(path)


def test_lattice_parameter_bad_hkl_is_one_line():
    for hkl in ((1, 1), [(1, 1, 1)] * 2, "abc", (1, 1, float("nan"))):
        with pytest.raises(OptionError, match="hkl"):
            lattice_parameter([2.0], hkl)
    with pytest.raises(OptionError, match="d_err"):
        lattice_parameter([2.0, 3.0], (1, 1, 1), d_err=[0.1, 0.1, 0.1])


def test_table_steps_leave_the_callers_table_unchanged(simple):
    # They share the caller's columns (copy-on-write) instead of copying the table, which
    # must never show through as a change to the caller's table.
    t = pd.DataFrame({"particle": [0, 0, 1], "frame": [0, 1, 1], "x": [50.0, 60.0, np.nan],
                      "y": [40.0, 41.0, 2.0], "x_err": 0.1, "y_err": 0.1,
                      "ok": True, "reason": ""}, index=[5, 6, 7])
    before = t.copy(deep=True)
    geo = add_geometry(t, simple)
    assert not geo["ok"].all()  # the NaN row is flagged in the copy, not in t
    add_strain(geo)
    add_radial_shift(t, (10.0, 50.0))
    pd.testing.assert_frame_equal(t, before)


# -------------------------------------------------------------------- review 7 defects
def _with_line(tmp_path, name, key, line):
    """A copy of a good pyFAI PONI file with its ``key:`` line replaced by ``line``."""
    good = _poni(tmp_path, "good.poni", wavelength=1e-10).read_text()
    assert f"{key}:" in good
    path = tmp_path / name
    path.write_text("\n".join(line if ln.startswith(key + ":") else ln
                              for ln in good.splitlines()) + "\n")
    return path


def test_poni_wavelength_zero_is_an_error_not_no_wavelength(tmp_path):
    path = _with_line(tmp_path, "zero.poni", "Wavelength", "Wavelength: 0")
    with pytest.raises(InputFileError, match=r"zero.poni: Wavelength: 0 is not a wavelength"):
        Geometry.from_poni(path)
    # a file without the line is still a geometry without a wavelength
    assert Geometry.from_poni(_poni(tmp_path, "nowl.poni")).wavelength_m is None


@pytest.mark.parametrize("value", ["0.5", "-5e-11", "1e-13", "2e-8"])
def test_poni_wavelength_outside_the_x_ray_range_says_metres(tmp_path, value):
    # 0.5: a wavelength in angstrom where metres belong gave d-spacings of 1e11 angstrom
    path = _with_line(tmp_path, "unit.poni", "Wavelength", f"Wavelength: {value}")
    with pytest.raises(InputFileError, match="unit.poni: Wavelength: .* m is outside the X-ray "
                       r"range 1e-12\.\.1e-08 m") as info:
        Geometry.from_poni(path)
    assert "PONI wavelengths are in metres (0.5 angstrom is 5e-11)" in str(info.value)


@pytest.mark.parametrize("value", ["1.5e-12", "5e-11", "9e-9"])
def test_poni_wavelengths_of_real_sources_are_read(tmp_path, value):
    path = _with_line(tmp_path, "ok.poni", "Wavelength", f"Wavelength: {value}")
    assert Geometry.from_poni(path).wavelength_m == pytest.approx(float(value))


def test_malformed_poni_gives_no_pyfai_log_output(tmp_path, caplog):
    """pyFAI logged two whole tracebacks before braggtrack's one-line error."""
    import logging

    path = _with_line(tmp_path, "badcfg.poni", "Detector_config", "Detector_config: {garbage")
    child = logging.getLogger("pyFAI.detectors._common")
    child.setLevel(logging.INFO)  # a child with a level of its own is silenced too
    parent_level = logging.getLogger("pyFAI").level
    try:
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(InputFileError, match="badcfg.poni: not a readable PONI file"):
                Geometry.from_poni(path)
        assert not [r for r in caplog.records if r.name.startswith("pyFAI")], caplog.text
        assert child.level == logging.INFO  # levels are put back
        assert logging.getLogger("pyFAI").level == parent_level
    finally:
        child.setLevel(logging.NOTSET)


def test_poni_of_a_binned_detector_has_the_binned_shape(tmp_path):
    # pyFAI's Perkin is 2048 x 2048 pixels of 200 um at 2 x 2 binning (max_shape 4096 x 4096):
    # the frames have the binned shape, the one the pixel size belongs to
    import pyFAI.detectors
    from pyFAI.geometry import Geometry as PyFAIGeometry

    poni = tmp_path / "perkin.poni"
    PyFAIGeometry(dist=0.5, poni1=0.2, poni2=0.2, wavelength=1e-10,
                  detector=pyFAI.detectors.detector_factory("Perkin")).save(str(poni))
    g = Geometry.from_poni(poni)
    assert g.shape == (2048, 2048)
    assert g.pixel1_m == pytest.approx(200e-6)
