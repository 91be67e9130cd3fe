"""The tutorial runs from a clean clone and reaches the science answer on small data."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tutorial_runs_and_recovers_strain(tmp_path):
    res = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "tutorial.py"), "--small", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("median strain error"))
    median_error = float(line.split()[3])
    assert median_error < 1e-3  # true strains are a few 1e-3
    within = float(line.split(";")[1].split("%")[0]) / 100
    assert within > 0.8  # errors within 2 stated sigmas
    assert (tmp_path / "run" / "report" / "index.html").exists()
    assert (tmp_path / "strain_vs_voltage.png").stat().st_size > 10_000
