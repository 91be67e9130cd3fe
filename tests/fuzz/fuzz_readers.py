"""Long fuzz run of the frame readers (a script, not collected by pytest).

Feeds random bytes, and truncated / byte-flipped versions of small valid files, with
the suffixes .h5 .tif .edf .cbf .ge2 .npz .npy to :func:`braggtrack.io.open_frames`
and reads every frame; anything but a :class:`~braggtrack.errors.BraggTrackError`
(or an example slower than ``--slow`` seconds) is a finding.

    python tests/fuzz/fuzz_readers.py --examples 2000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_io import SUFFIXES, _valid_bytes, exercise  # noqa: E402


class _Factory:
    """Enough of pytest's tmp_path_factory for ``_valid_bytes``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        d = Path(tempfile.mkdtemp(prefix=name, dir=self.root))
        return d


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--slow", type=float, default=5.0, help="seconds per example")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fuzz_readers_"))
    valid = _valid_bytes(_Factory(root))
    work = root / "work"
    work.mkdir()
    worst = [0.0, None]

    def run(path: Path) -> None:
        t0 = time.perf_counter()
        exercise(path)
        dt = time.perf_counter() - t0
        if dt > worst[0]:
            worst[0], worst[1] = dt, path.read_bytes()[:64]
        assert dt < args.slow, f"{path.name} took {dt:.1f} s"

    common = settings(max_examples=args.examples, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))

    @common
    @given(suffix=st.sampled_from(SUFFIXES), data=st.binary(min_size=0, max_size=4096))
    def random_bytes(suffix, data):
        path = work / f"fuzz{suffix}"
        path.write_bytes(data)
        run(path)

    @common
    @given(suffix=st.sampled_from(SUFFIXES), cut=st.floats(0.0, 1.0),
           flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=32))
    def corrupted(suffix, cut, flips):
        data = bytearray(valid[suffix])
        if suffix == ".ge2":
            data = data[: 8192 + 4096]
        for where, value in flips:
            data[int(where * (len(data) - 1))] = value
        data = data[: max(1, int(cut * len(data)))]
        path = work / f"fuzz{suffix}"
        path.write_bytes(bytes(data))
        run(path)

    t0 = time.perf_counter()
    random_bytes()
    print(f"random bytes: {args.examples} examples in {time.perf_counter() - t0:.1f} s", flush=True)
    corrupted()
    print(f"{2 * args.examples} examples in {time.perf_counter() - t0:.1f} s; "
          f"slowest {worst[0]:.3f} s; no finding")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
