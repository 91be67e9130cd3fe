"""Shared fixtures: small analytic frames and series whose answers are known independently."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from scipy.special import erf

# CI runs the property tests on a fixed sequence of examples (reproducible failures, no flakes);
# locally every run explores new ones.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def gaussian_pixel_integral(shape, x0, y0, sigma, amplitude):
    """A 2-D Gaussian of integral ``amplitude`` integrated exactly over each pixel (erf)."""
    h, w = shape
    xe = np.arange(w + 1) - 0.5
    ye = np.arange(h + 1) - 0.5
    s = sigma * np.sqrt(2.0)
    fx = np.diff(0.5 * erf((xe - x0) / s))
    fy = np.diff(0.5 * erf((ye - y0) / s))
    return amplitude * np.outer(fy, fx)


def render_frame(shape, peaks, background=10.0):
    """Sum of pixel-integrated Gaussians ``(x, y, sigma, amplitude)`` on a flat background."""
    img = np.full(shape, background, dtype=np.float64)
    for x, y, s, a in peaks:
        img += gaussian_pixel_integral(shape, x, y, s, a)
    return img


@pytest.fixture
def three_peak_frame():
    peaks = [(20.3, 15.7, 1.0, 5000.0), (45.6, 40.2, 1.2, 8000.0), (12.1, 50.45, 0.9, 3000.0)]
    return render_frame((64, 64), peaks), peaks


@pytest.fixture
def drifting_series(tmp_path):
    """A 12-frame HDF5 series of 6 peaks drifting by 0.1 px per frame, plus its truth."""
    import h5py

    rng = np.random.default_rng(3)
    base = [(15.2, 14.8), (48.3, 16.1), (30.6, 33.3), (14.4, 50.2), (50.1, 49.7), (33.0, 12.0)]
    frames, truth = [], []
    for f in range(12):
        peaks = [(x + 0.1 * f, y - 0.05 * f, 1.0, 6000.0) for x, y in base]
        img = rng.poisson(render_frame((64, 64), peaks, background=20.0)).astype(np.uint16)
        frames.append(img)
        truth += [(f, i, x, y) for i, (x, y, _, _) in enumerate(peaks)]
    path = tmp_path / "series.h5"
    with h5py.File(path, "w") as h:
        h.create_dataset("/entry/data/data", data=np.stack(frames), chunks=(1, 64, 64))
    return path, np.array(truth)


@contextmanager
def braggtrack_warnings():
    """Messages of the braggtrack logger (the one-line warnings the command line prints),
    caught on it directly: the command line turns off its propagation to the root logger
    (where caplog listens) once main() has run."""
    import logging

    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("braggtrack")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def logged():
    """:func:`braggtrack_warnings` for a whole test."""
    with braggtrack_warnings() as messages:
        yield messages
