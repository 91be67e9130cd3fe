"""Reading and writing peak/track tables (Parquet, CSV, HDF5) and the column reference.

Parquet is the default: typed, compressed and fast.  HDF5 tables go through pandas'
``to_hdf`` only when PyTables is installed; otherwise a plain h5py layout (one dataset
per column under ``/table``) is written, which any HDF5 tool can read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputFileError, OptionError

#: Every column braggtrack writes, with its unit and meaning (docs/reference.md is built from this).
COLUMNS: dict[str, str] = {
    "frame": "frame index, 0-based in input order",
    "x": "sub-pixel peak centre, column (fast axis), full-resolution detector pixels; pixel (0,0) centre is x=0",
    "y": "sub-pixel peak centre, row, full-resolution detector pixels",
    "x_err": "1-sigma uncertainty of x, pixels",
    "y_err": "1-sigma uncertainty of y, pixels",
    "x_det": "column of the detected maximum, integer full-resolution pixel",
    "y_det": "row of the detected maximum, integer full-resolution pixel",
    "birth": "height of the local maximum (counts after preprocessing)",
    "death": "level of the saddle where the peak merges into a higher one (counts)",
    "persistence": "birth - death, counts after preprocessing",
    "score": "persistence rescaled to 0..255 of the frame's intensity range",
    "intensity": "background-subtracted integrated intensity in the patch, counts",
    "background": "local background level, counts per pixel",
    "sigma_x": "peak width (Gaussian sigma equivalent) along x, pixels",
    "sigma_y": "peak width (Gaussian sigma equivalent) along y, pixels",
    "localizer": "method that gave x, y: braggnn, pvoigt, gauss or centroid",
    "ok": "True when the peak passed every filter and the localizer converged",
    "reason": "why ok is False: edge, mask, flat, off_centre, not_converged, bad_fit, crowded (a second peak in the patch moved a one-peak localizer), out_of_distribution, uncertain (error above --max-error), duplicate (a brighter accepted peak of the frame localized within 1.5 px: one peak detected twice), non_finite; empty when ok",
    "particle": "trajectory id after linking (one particle = one trajectory)",
    "two_theta": "scattering angle 2-theta, degrees",
    "two_theta_err": "1-sigma uncertainty of two_theta, degrees",
    "chi": "azimuthal angle, degrees",
    "q": "scattering vector magnitude, 1/nm",
    "q_err": "1-sigma uncertainty of q, 1/nm",
    "d_spacing": "lattice-plane spacing d = 2 pi / q (q in 1/nm gives nm), in angstrom: 20 pi / q",
    "d_spacing_err": "1-sigma uncertainty of d_spacing, angstrom",
    "strain": "d / d_ref - 1 against the particle's reference frame or a given d_ref (dimensionless)",
    "strain_err": "1-sigma uncertainty of strain",
    "radial_shift": "radial distance from the beam centre minus its reference-frame value, pixels (no geometry)",
    "radial_shift_err": "1-sigma uncertainty of radial_shift, pixels",
    "lattice_a": "lattice parameter a from d_spacing and hkl, angstrom",
    "lattice_a_err": "1-sigma uncertainty of lattice_a, angstrom",
    "chi_err": "1-sigma uncertainty of chi, degrees",
    "strain_ref_frame": "frame used as the particle's strain reference (-1 when d_ref was given)",
    "radial_shift_ref_frame": "frame used as the particle's radial_shift reference",
    "status": "frames table: ok, or skipped when the frame could not be read",
    "file": "frames table: the frame's file, relative to the folder (folder and glob inputs only)",
    "n_peaks": "frames table: peaks detected in the frame",
    "n_ok": "frames table: peaks accepted in the frame",
    "meta_filled": "True when the frame's metadata was filled from neighbouring frames",
    "cycler_outside": "True when the frame time lay outside the cycler log (values held at its ends)",
    "time_s": "frame time, seconds",
    "voltage_V": "cell voltage at the frame, volts",
    "current_mA": "cell current at the frame, mA (positive = charge)",
    "capacity_mAh": "charge passed, mAh (net charge since the log start when integrated from current)",
    "state_of_charge": "state of charge, 0..1",
    "branch": "charge, discharge or rest",
    "cycle": "electrochemical cycle number, from 1",
    "n_frames": "particles table: frames in which the particle was seen",
    "first_frame": "particles table: first frame of the trajectory",
    "last_frame": "particles table: last frame of the trajectory",
    "coverage": "particles table: fraction of frames between first and last in which it was seen",
    "x_mean": "particles table: mean x, pixels",
    "y_mean": "particles table: mean y, pixels",
    "mean_intensity": "particles table: mean intensity, counts",
    "fit_rms": "particles table: RMS distance of positions from a quadratic fit in frame, pixels",
    "strain_min": "particles table: smallest strain",
    "strain_max": "particles table: largest strain",
    "strain_range": "particles table: strain_max - strain_min",
    "radial_shift_min": "particles table: smallest radial shift, pixels",
    "radial_shift_max": "particles table: largest radial shift, pixels",
    "radial_shift_range": "particles table: radial_shift_max - radial_shift_min, pixels",
    "two_theta_mean": "particles table: mean two_theta, degrees",
    "d_spacing_mean": "particles table: mean d_spacing, angstrom",
}

TABLE_SUFFIXES = (".parquet", ".csv", ".h5", ".hdf5")


def table_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise OptionError(
            f"{path}: unknown table format {suffix!r}; use .parquet, .csv or .h5"
        )
    return {".hdf5": ".h5"}.get(suffix, suffix)


def try_creating_in(folder: str | os.PathLike, *, folder_entry: bool = False) -> None:
    """Create a file (a sub-folder when ``folder_entry``) in ``folder`` and remove it at once,
    raising the OSError that a writer would meet there.  Tried for real because
    ``os.access`` says yes to root on file systems that refuse every new file (``/sys``)."""
    import tempfile

    if folder_entry:
        os.rmdir(tempfile.mkdtemp(prefix=".braggtrack-probe-", dir=folder))
    else:
        fd, probe = tempfile.mkstemp(prefix=".braggtrack-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` atomically (temporary file, then rename) in the format of ``path``'s suffix."""
    path = Path(path)
    fmt = table_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if fmt == ".parquet":
            df.to_parquet(tmp, index=False)
        elif fmt == ".csv":
            df.to_csv(tmp, index=False)
        else:
            _write_h5_table(df, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _write_h5_table(df: pd.DataFrame, path: Path) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        g = f.create_group("table")
        g.attrs["columns"] = list(df.columns)
        for col in df.columns:
            values = df[col].to_numpy()
            if values.dtype == object or pd.api.types.is_string_dtype(df[col]):
                g.create_dataset(col, data=np.asarray(values, dtype=str).astype("S"))
                g[col].attrs["kind"] = "str"
            else:
                g.create_dataset(col, data=values)


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV file as a table, also when a spreadsheet in a European locale wrote it (``;``
    between cells, ``,`` as the decimal mark), which a plain read takes for one column of
    text.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.csv"
    >>> _ = p.write_text("frame;voltage_V\\n0;3,5\\n1;3,75\\n")
    >>> read_csv(p)["voltage_V"].tolist()
    [3.5, 3.75]
    """
    table = pd.read_csv(path)
    if table.shape[1] != 1 or ";" not in str(table.columns[0]):
        return table
    table = pd.read_csv(path, sep=";")
    for col in table.columns:
        if table[col].dtype.kind in "biufcmM":
            continue
        # "3,5": a decimal comma, when every cell of the column reads as a number with it
        text = table[col].astype("string").str.strip()
        numbers = pd.to_numeric(text.str.replace(",", ".", regex=False), errors="coerce")
        if numbers[text.notna() & (text != "")].notna().all():
            table[col] = numbers.astype(float)
    return table


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_table`."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "no such file")
    fmt = table_format(path)
    try:
        if fmt == ".parquet":
            return pd.read_parquet(path)
        if fmt == ".csv":
            return read_csv(path)
        import h5py

        with h5py.File(path, "r", locking=False) as f:
            g = f["table"]
            cols = [str(c) for c in g.attrs["columns"]]
            data = {}
            for c in cols:
                v = g[c][()]
                data[c] = v.astype(str) if g[c].attrs.get("kind") == "str" else v
            return pd.DataFrame(data, columns=cols)
    except (OSError, ValueError, KeyError) as exc:
        raise InputFileError(path, f"not a readable {fmt[1:]} table ({exc.__class__.__name__})") from None
