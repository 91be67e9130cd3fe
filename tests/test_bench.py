"""`braggtrack bench --quick`: a smoke run of every benchmark row (the real figures are in the
README, measured with the full sizes)."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_quick_prints_every_ratio():
    res = subprocess.run([sys.executable, "-m", "braggtrack.cli", "bench", "--quick", "--json"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout)
    names = " ".join(r["benchmark"] for r in rows)
    for part in ("findpeaks", "pvoigt", "gauss", "braggnn", "floor", "classic", "worker"):
        assert part in names
    for r in rows:
        assert r["ours"] > 0
        if r["ratio"] is not None:
            assert r["ratio"] > 0
