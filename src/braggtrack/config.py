"""The one configuration object of the find stage.

:class:`FindConfig` is a frozen dataclass: every option of ``find_peaks``/``find``/``run``
lives here once, with its unit, and is validated in one place, so that a nonsense value
(negative threshold, even patch size) is refused before any frame is read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import OptionError

LOCALIZERS = ("braggnn", "pvoigt", "gauss", "centroid")
BACKGROUNDS = ("auto", "global", "local")


def check_background(background: object) -> None:
    """Refuse a ``--background`` that is not one of :data:`BACKGROUNDS`, in one line."""
    if background not in BACKGROUNDS:
        raise OptionError(f"--background must be one of {', '.join(BACKGROUNDS)}, "
                          f"got {background!r}")


@dataclass(frozen=True)
class FindConfig:
    """Options of peak finding and localization.

    Parameters
    ----------
    threshold : float
        Counts (after dark subtraction, before binning) below which pixels are set to 0.
        ``None`` picks a robust default per frame: median + 5 * MAD-based sigma of the frame.
    min_score : float
        Minimum persistence score on the 0..255 scale of the frame's intensity range (the
        classic notebook filter used 10; it drops weak peaks in frames with one very bright
        peak, so the default relies on ``min_snr`` instead).
    min_snr : float
        Minimum persistence in units of the background noise (robust sigma): the frame's,
        or the tile's where ``background`` takes tiles.
    min_persistence : float
        Minimum persistence in counts (image units after preprocessing).
    bin : int
        N x N binning (sum) before detection; positions are always reported in
        full-resolution pixels.
    patch : int
        Odd patch size in pixels (full resolution) for localization.
    localizer : str
        One of ``braggnn``, ``pvoigt``, ``gauss``, ``centroid``.
    edge : int
        Minimum distance in pixels from a peak maximum to the frame edge or a masked pixel;
        closer peaks are flagged (``ok=False``, reason ``edge`` or ``mask``), not dropped
        silently.  The patch must also fit: the distance to the frame's border is at least
        ``patch // 2`` whatever ``edge`` is, and a masked pixel anywhere in the patch flags it.
    min_distance : float
        Of two peaks closer than this (pixels), only the more persistent one is kept.
    centre_tolerance : float
        Maximum distance in pixels between the brightest pixel of a patch and its centre.
    max_peaks : int
        Upper bound on peaks per frame (most persistent first) to protect against noise.
    max_error : float
        Largest accepted 1-sigma position uncertainty, pixels: a fit that converged but cannot
        place the centre better than this (e.g. a one-pixel spot, whose widths hit their bound)
        is flagged ``uncertain`` rather than trusted.
    model : str or None
        Path of a trained BraggNN model; ``None`` is the shipped one.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available, else the CPU). BraggNN
        inference and the ``gauss``/``pvoigt`` fits run on it (on the CPU the fits use the
        numba engine, on CUDA the torch engine); the centroid always runs on the CPU.
    auto_mask : bool
        Mask saturated and hot pixels automatically.
    background : str
        ``auto`` (default): where a frame's background is not flat (air scatter, a diffuse
        halo, a beam-stop shadow), the automatic threshold and the noise of ``min_snr`` are
        taken per 16 x 16 pixel tile instead of once for the frame; ``local``: always;
        ``global``: never (one median and sigma per frame).
    """

    threshold: float | None = None
    min_score: float = 0.0
    min_snr: float = 3.0
    min_persistence: float = 0.0
    bin: int = 1
    patch: int = 11
    localizer: str = "braggnn"
    edge: int = 2
    min_distance: float = 3.0
    centre_tolerance: float = 2.0
    max_peaks: int = 5000
    max_error: float = 1.0
    model: str | None = None
    device: str = "cpu"
    auto_mask: bool = True
    background: str = "auto"

    def __post_init__(self) -> None:
        if self.threshold is not None and not (self.threshold >= 0):
            raise OptionError(f"--threshold must be >= 0 counts, got {self.threshold}")
        if not (0 <= self.min_score <= 255):
            raise OptionError(f"--min-score must be in 0..255, got {self.min_score}")
        if not (self.min_snr >= 0):
            raise OptionError(f"--min-snr must be >= 0, got {self.min_snr}")
        if not (self.min_persistence >= 0):
            raise OptionError(f"--min-persistence must be >= 0, got {self.min_persistence}")
        if int(self.bin) != self.bin or self.bin < 1:
            raise OptionError(f"--bin must be a positive integer, got {self.bin}")
        if int(self.patch) != self.patch or self.patch < 3 or self.patch % 2 == 0:
            raise OptionError(f"--patch must be an odd integer >= 3, got {self.patch}")
        if self.localizer not in LOCALIZERS:
            raise OptionError(
                f"--localizer must be one of {', '.join(LOCALIZERS)}, got {self.localizer!r}"
            )
        if self.edge < 0:
            raise OptionError(f"--edge must be >= 0 pixels, got {self.edge}")
        if not (self.min_distance >= 0):
            raise OptionError(f"--min-distance must be >= 0 pixels, got {self.min_distance}")
        if not (self.centre_tolerance >= 0):
            raise OptionError(
                f"--centre-tolerance must be >= 0 pixels, got {self.centre_tolerance}"
            )
        if not (self.max_error > 0):
            raise OptionError(f"--max-error must be > 0 pixels, got {self.max_error}")
        if self.max_peaks < 1:
            raise OptionError(f"--max-peaks must be >= 1, got {self.max_peaks}")
        check_background(self.background)
        if self.device not in ("cpu", "cuda", "auto") and not str(self.device).startswith("cuda:"):
            raise OptionError(f"--device must be cpu, cuda or auto, got {self.device!r}")

    def replace(self, **changes) -> FindConfig:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
