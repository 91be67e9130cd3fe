"""braggtrack: find, localize to sub-pixel precision, and track X-ray Bragg peaks.

The pipeline is a short chain of verbs on numpy arrays and pandas DataFrames::

    >>> import braggtrack as bt
    >>> series = bt.open_frames(bt.data.sample())          # doctest: +SKIP
    >>> peaks = bt.find(series)                            # doctest: +SKIP
    >>> tracks = bt.link(peaks, search_range=3)            # doctest: +SKIP

Submodules are imported lazily so that ``import braggtrack`` (and the CLI) start fast;
torch is only imported when the BraggNN localizer or training is used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "open_frames": "io",
    "FindConfig": "config",
    "BraggTrackError": "errors",
    "find_peaks": "pipeline",
    "find": "pipeline",
    "persistence": "detect",
    "select_peaks": "detect",
    "extract_patches": "patches",
    "localize": "localize",
    "simulate_series": "simulate",
    "link": "track",
    "particles": "track",
    "Geometry": "geometry",
    "add_geometry": "geometry",
    "run": "runner",
    "RunResult": "runner",
    "make_report": "report",
    "train_model": "train",
    "read_table": "tables",
    "write_table": "tables",
}

_SUBMODULES = {
    "io", "preprocess", "simulate", "detect", "patches", "localize", "braggnn", "train",
    "pipeline", "track", "geometry", "runner", "report", "metadata", "compare", "bench", "data",
    "config", "errors", "tables", "parallel", "cli",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'braggtrack' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
