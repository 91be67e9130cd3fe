"""Small real data samples shipped inside the package (no download needed).

Two crops of real detector data that nobody on this project made, with their licences
beside them in this folder:

- ``"series"`` (default): 100 frames of 384 x 384 pixels cut from a far-field HEDM
  rotation series of alpha-zirconium in a diamond anvil cell (APS 1-ID-C, GE 41RT panel,
  HEXRD examples, BSD-3-Clause), stored in the HEXRD sparse frame-cache ``.npz`` layout.
  About 190 spots in the crop persist over three or more neighbouring frames.
- ``"laue"``: a 768 x 768 crop of one white-beam Laue micro-diffraction frame of GaN
  nanowires on Si (ESRF BM32, from lauetoolsnn, MIT), uint16 TIFF with a pedestal of about
  1000 counts and about two dozen sharp spots.

Use :func:`sample` for the path and :func:`sample_info` for origin, licence and geometry.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import OptionError

__all__ = ["sample", "sample_info", "SAMPLES"]

_HERE = Path(__file__).resolve().parent

_INFO: dict[str, dict] = {
    "series": {
        "file": "hedm_zr_dac_ge2_crop_framecache.npz",
        "format": "HEXRD frame-cache npz (sparse: pixels below the authors' threshold are 0)",
        "frames": 100,
        "shape": (384, 384),
        "dtype": "uint16",
        "crop": {"row0": 864, "col0": 288, "rows": 384, "cols": 384,
                 "of_shape": (2048, 2048)},
        "pixel_size_mm": 0.2,
        "detector": "GE 41RT amorphous-silicon flat panel",
        "facility": "APS 1-ID-C",
        "description": (
            "Far-field HEDM rotation series of alpha-zirconium in a diamond anvil cell, "
            "1 degree per frame; omega of each frame in the file's 'omega' key "
            "(-115..-65 then 65..115 degrees: frames 49 and 50 are not neighbours in "
            "rotation)."
        ),
        "origin": (
            "HEXRD examples repository, DAC/alpha_zirconium_axial_multi/imageseries/"
            "LT1_Ne_zr001_00000-fc_GE2.npz, cropped rows 864:1248, cols 288:672"
        ),
        "licence": "BSD-3-Clause",
        "licence_file": "LICENSE_hedm_hexrd_examples_BSD3.txt",
        "copyright": "Copyright (c) 2020, HEXRD",
    },
    "laue": {
        "file": "laue_gan_nanowire_nw1_0000_crop.tif",
        "format": "TIFF, uint16, uncompressed",
        "frames": 1,
        "shape": (768, 768),
        "dtype": "uint16",
        "crop": {"row0": 416, "col0": 512, "rows": 768, "cols": 768,
                 "of_shape": (2018, 2016)},
        "pixel_size_mm": 0.0734,
        "detector": "sCMOS",
        "facility": "ESRF BM32",
        "description": (
            "White-beam Laue micro-diffraction frame of GaN nanowires on a Si substrate; "
            "pedestal about 1000 counts, broad diffuse background, sharp and streaked spots."
        ),
        "calibration": {
            "distance_mm": 79.612,
            # beam centre of the full frame, in the crop's pixel coordinates
            "beam_centre_x_px": 977.81 - 512,
            "beam_centre_y_px": 932.17 - 416,
            "tilts_deg": (0.477, 0.447),
            "source": "LaueTools calibration laue_gan_nanowire_calib.det",
        },
        "origin": (
            "PyPI package lauetoolsnn 3.0.77, examples/GaN_Si/nw1_0000.tif "
            "(author R. Purushottam Raj Purohit, ESRF), cropped rows 416:1184, cols 512:1280"
        ),
        "licence": "MIT",
        "licence_file": "LICENSE_laue_lauetoolsnn_MIT.txt",
        "copyright": "Copyright (c) 2022 Ravi",
    },
}

#: Names accepted by :func:`sample`.
SAMPLES = tuple(_INFO)


def _check(kind: str) -> dict:
    if kind not in _INFO:
        raise OptionError(f"unknown sample {kind!r}; choose one of {', '.join(SAMPLES)}")
    return _INFO[kind]


def sample(kind: str = "series") -> Path:
    """Path of a shipped sample, readable with :func:`braggtrack.io.open_frames`.

    Parameters
    ----------
    kind : {"series", "laue"}
        ``"series"``: 100-frame HEDM crop (sparse frame-cache ``.npz``);
        ``"laue"``: one Laue frame crop (TIFF).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    OptionError
        For an unknown ``kind``.

    Examples
    --------
    >>> from braggtrack.data import sample
    >>> sample("laue").name
    'laue_gan_nanowire_nw1_0000_crop.tif'
    """
    return _HERE / _check(kind)["file"]


def sample_info(kind: str = "series") -> dict:
    """Origin, licence, detector, pixel size and crop of a shipped sample.

    Parameters
    ----------
    kind : {"series", "laue"}

    Returns
    -------
    dict
        Keys include ``file``, ``path``, ``format``, ``frames``, ``shape``, ``dtype``,
        ``pixel_size_mm``, ``origin``, ``licence``, ``licence_file`` (a path),
        ``copyright``, ``crop``, ``description``.

    Examples
    --------
    >>> from braggtrack.data import sample_info
    >>> sample_info("series")["licence"]
    'BSD-3-Clause'
    """
    info = dict(_check(kind))
    info["path"] = _HERE / info["file"]
    info["licence_file"] = _HERE / info["licence_file"]
    return info
