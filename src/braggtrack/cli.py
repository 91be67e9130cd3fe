"""The ``braggtrack`` command line: a thin typer layer over the Python API.

Every command calls one API function (named in its help).  Problems with the user's input
raise :class:`braggtrack.errors.BraggTrackError`; :func:`main` prints them as one line on
stderr and exits with status 2, and so it does for an ``OSError`` (a disk that is full or
read-only, a folder that cannot be made): ``error: <path>: <reason>``.  Output paths are
checked before any work starts (:func:`_check_output_file`, :func:`_check_output_folder`),
so that a bad ``-o`` does not throw away a finished computation.  Exit status 3 means the
run finished but skipped frames that could not be read.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .config import FindConfig
from .errors import BraggTrackError

app = typer.Typer(
    name="braggtrack",
    help="Find, localize (sub-pixel) and track X-ray Bragg peaks through area-detector frames.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXIT_SKIPPED = 3
_D = FindConfig()  # option defaults come from the API's, so the two cannot drift apart

# ----------------------------------------------------------------------------- shared options
Input = Annotated[str, typer.Argument(help="Frames: HDF5/NeXus, TIFF (file, folder or glob), "
                                      "GE/EDF/CBF/MarCCD (fabio), .npy, HEXRD frame-cache .npz.")]
Dataset = Annotated[str | None, typer.Option(
    "--dataset", help="HDF5 dataset of the frame stack [default: found automatically].")]
Bin = Annotated[int, typer.Option("--bin", help="N x N binning (sum) before detection, pixels.")]
Threshold = Annotated[float | None, typer.Option(
    "--threshold", help="Counts below which pixels are zeroed [default: median + 5 robust "
    "sigma of each frame].")]
MinScore = Annotated[float, typer.Option(
    "--min-score", help="Minimum persistence score, 0..255 of the frame's intensity range.")]
MinSnr = Annotated[float, typer.Option(
    "--min-snr", help="Minimum persistence in units of the background noise (robust sigma): "
    "the frame's, or the tile's where --background takes tiles.")]
MinPersistence = Annotated[float, typer.Option(
    "--min-persistence", help="Minimum persistence, counts.")]
Patch = Annotated[int, typer.Option("--patch", help="Odd patch size for localization, pixels.")]
Localizer = Annotated[str, typer.Option(
    "--localizer", help="Sub-pixel localizer: braggnn, pvoigt, gauss or centroid. The "
    "positions of all four do not depend on the intensity unit; centroid's x_err/y_err "
    "assume the pixels are counts (Poisson), so frames scaled to other units get wrong "
    "centroid errors (and 'uncertain' rejections) there.")]
Edge = Annotated[int, typer.Option(
    "--edge", help="A peak is rejected 'edge' when its maximum is closer than max(--edge, "
    "--patch // 2) pixels to the frame's border (its patch must fit inside the frame), and "
    "'mask' when a masked pixel lies in its patch or within --edge pixels of the maximum.")]
MinDistance = Annotated[float, typer.Option(
    "--min-distance", help="Of two peaks closer than this, keep the more persistent, pixels.")]
CentreTol = Annotated[float, typer.Option(
    "--centre-tolerance", help="Max distance of a patch's brightest pixel from its centre, "
    "pixels.")]
MaxPeaks = Annotated[int, typer.Option("--max-peaks", help="Most peaks kept per frame.")]
MaxError = Annotated[float, typer.Option(
    "--max-error", help="Largest accepted 1-sigma position uncertainty (else reason "
    "'uncertain'), pixels.")]
Model = Annotated[str | None, typer.Option(
    "--model", help="Trained BraggNN model file [default: the shipped model].")]
Device = Annotated[str, typer.Option(
    "--device", help="cpu, cuda, cuda:N or auto (cuda when available, else cpu). BraggNN "
    "inference and the gauss/pvoigt fits run on it (the fits with numba on cpu, with torch on "
    "cuda); the centroid always runs on the CPU.")]
TrainDevice = Annotated[str, typer.Option(
    "--device", help="Where the network trains: cpu, cuda, cuda:N or auto (cuda when "
    "available, else cpu).")]
AutoMask = Annotated[bool, typer.Option(
    "--auto-mask/--no-auto-mask", help="Mask saturated and hot pixels automatically.")]
Background = Annotated[str, typer.Option(
    "--background", help="auto, local or global: how the automatic threshold and the noise "
    "of --min-snr follow the background. auto: per 16 x 16 pixel tile where a frame's "
    "background is not flat (air scatter, a diffuse ring, a beam-stop shadow), else one value "
    "per frame; local: always per tile; global: always one value per frame.")]
Dark = Annotated[list[str] | None, typer.Option(
    "--dark", help="Dark frame file; repeat for several (their median is used).")]
Flat = Annotated[str | None, typer.Option("--flat", help="Flat-field file.")]
Mask = Annotated[str | None, typer.Option("--mask", help="Pixel mask file (non-zero = bad).")]
MaskInvert = Annotated[bool, typer.Option(
    "--mask-invert", help="The --mask file marks the good pixels (non-zero = good), as "
    "Cheetah/CrystFEL and some HEXRD masks do.")]
Strict = Annotated[bool, typer.Option(
    "--strict", help="Stop at the first unreadable frame instead of skipping it.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]
ChunkSize = Annotated[int, typer.Option("--chunk-size", help="Frames per chunk of work, frames.")]
SearchRange = Annotated[float, typer.Option(
    "--search-range", help="Largest peak displacement between linked frames, pixels.")]
Memory = Annotated[int, typer.Option(
    "--memory", help="Frames a peak may vanish for and still be linked, frames.")]
MinLength = Annotated[int, typer.Option("--min-length", help="Shortest trajectory kept, frames.")]


def _find_config(options: dict) -> FindConfig:
    """The FindConfig of a command's options (its ``locals()``): every field taken by name."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(FindConfig)}
    return FindConfig(**{k: v for k, v in options.items() if k in names})


def _calibration(dark, flat, mask, mask_invert=False):
    from .pipeline import Calibration

    if not (dark or flat or mask or mask_invert):
        return None
    return Calibration.from_files(dark=dark, flat=flat, mask=mask, mask_invert=mask_invert)


def _command_line() -> str:
    return " ".join(["braggtrack", *sys.argv[1:]])


def _check_output_file(path: Path) -> None:
    """Refuse, before any work, an output file that could not be written.

    Parameters
    ----------
    path : Path
        The file a command will write (its folder is created when missing).

    Raises
    ------
    OptionError
        One line naming ``path`` and why it cannot be written.
    """
    from .errors import OptionError

    if path.is_dir():
        raise OptionError(f"{path}: is a folder; give a file name")
    _check_output_folder(path.parent, path)


def _check_output_folder(folder: Path, target: Path | None = None) -> None:
    """Refuse, before any work, a folder that cannot be created or written in.

    The writers create missing folders (``mkdir(parents=True)``), so the nearest existing
    path at or above ``folder`` must be a folder in which a file (``folder`` itself exists)
    or a sub-folder (it does not) can be created.  That is tried for real, with a temporary
    entry removed at once: ``os.access`` says yes to root on file systems that refuse every
    new file, such as ``/sys``.

    Parameters
    ----------
    folder : Path
        The folder the output goes into (or, for a run folder, the output itself).
    target : Path, optional
        The output named in the message [default: ``folder``].

    Raises
    ------
    OptionError
        One line naming ``target`` and the folder that is in the way.
    """
    from .errors import OptionError
    from .tables import try_creating_in

    target = folder if target is None else target
    existing = folder
    # lexists: a dangling symlink is in the way of mkdir as much as a file is
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        if existing == target:
            raise OptionError(f"{target}: exists and is not a folder")
        raise OptionError(f"{target}: {existing} exists and is not a folder")
    try:
        try_creating_in(existing, folder_entry=existing != folder)
    except OSError as exc:
        raise OptionError(
            f"{target}: cannot write in folder {existing} ({exc.strerror or exc})") from None


def _os_error_line(exc: OSError) -> str:
    """``<path>: <reason>`` of an ``OSError``, on one line.

    The second file name of a two-path call (``os.replace(tmp, out)``) is the one the user
    asked for, so it is preferred; errors without a file name (h5py, pyarrow) keep their
    own text, with its line breaks folded.
    """
    path = exc.filename2 if exc.filename2 is not None else exc.filename
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    if path is None:
        return reason
    return f"{os.fsdecode(path) if isinstance(path, bytes) else path}: {reason}"


# ----------------------------------------------------------------------------- commands


@app.command()
def simulate(
    out: Annotated[Path, typer.Argument(help="Output NeXus-style HDF5 file.")],
    frames: Annotated[int, typer.Option("--frames", help="Number of frames.")] = 10,
    shape: Annotated[tuple[int, int], typer.Option("--shape", help="Frame height and width, "
                                                    "pixels.")] = (512, 512),
    peaks: Annotated[int, typer.Option("--peaks", help="Particles (peaks) per frame.")] = 100,
    messy: Annotated[float, typer.Option("--messy", help="Fraction of messy peaks (broad, "
                                         "split, streak, weak, overlapping), 0..1.")] = 0.3,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT.")] = False,
) -> None:
    """Write a simulated frame series with its exact truth table (braggtrack.simulate.simulate_to_file)."""
    from .errors import OptionError
    from .simulate import simulate_to_file

    if out.exists() and not force:
        raise OptionError(f"{out}: exists; use --force to overwrite")
    _check_output_file(out)
    path = simulate_to_file(out, frames=frames, shape=tuple(shape), peaks=peaks, messy=messy,
                            seed=seed)
    typer.echo(f"wrote {path} ({frames} frames of {shape[0]}x{shape[1]}, truth in /entry/truth)")


@app.command()
def find(
    input: Input,
    out: Annotated[Path, typer.Option("-o", "--out", help="Peak table: .parquet, .csv or .h5.")],
    dataset: Dataset = None,
    bin: Bin = _D.bin,
    threshold: Threshold = None,
    min_score: MinScore = _D.min_score,
    min_snr: MinSnr = _D.min_snr,
    min_persistence: MinPersistence = _D.min_persistence,
    patch: Patch = _D.patch,
    localizer: Localizer = _D.localizer,
    edge: Edge = _D.edge,
    min_distance: MinDistance = _D.min_distance,
    centre_tolerance: CentreTol = _D.centre_tolerance,
    max_peaks: MaxPeaks = _D.max_peaks,
    max_error: MaxError = _D.max_error,
    model: Model = None,
    device: Device = _D.device,
    auto_mask: AutoMask = _D.auto_mask,
    background: Background = _D.background,
    dark: Dark = None,
    flat: Flat = None,
    mask: Mask = None,
    mask_invert: MaskInvert = False,
    chunk_size: ChunkSize = 32,
    strict: Strict = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT.")] = False,
    quiet: Quiet = False,
) -> None:
    """Find and localize peaks in every frame; write one table (braggtrack.find)."""
    from .errors import InputFileError, OptionError
    from .pipeline import find as find_api
    from .tables import table_format, write_table

    table_format(out)
    if out.exists() and not force:
        raise OptionError(f"{out}: exists; use --force to overwrite")
    _check_output_file(out)  # before the frames are processed, not after
    config = _find_config(locals())
    peaks = find_api(input, config=config, dataset=dataset,
                     calibration=_calibration(dark, flat, mask, mask_invert),
                     chunk_size=chunk_size,
                     strict=strict, progress=not quiet)
    frames = peaks.attrs.pop("frames", None)
    if frames is not None and len(frames) and (frames["status"] != "ok").all():
        # Nothing was read: an empty table and the threshold hint would point the wrong way.
        first = frames.iloc[0]
        reason = str(first["reason"]).removeprefix(f"{input}: ")
        raise InputFileError(input, f"none of its {len(frames)} frame(s) could be read (frame "
                                    f"{int(first['frame'])}: {reason}); no table written")
    write_table(peaks, out)
    n_ok = int(peaks["ok"].sum()) if len(peaks) else 0
    skipped = 0 if frames is None or not len(frames) else int((frames["status"] != "ok").sum())
    typer.echo(f"wrote {out}: {len(peaks)} peaks ({n_ok} accepted{_rejections(peaks)})"
               + (f"; {skipped} frame(s) skipped" if skipped else ""))
    _hint_if_empty(len(peaks))
    if skipped:
        raise typer.Exit(EXIT_SKIPPED)


@app.command()
def track(
    peaks: Annotated[Path, typer.Argument(help="Peak table from `braggtrack find` (or a run "
                                          "folder's peaks.parquet).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Tracks table: .parquet, .csv or .h5.")],
    search_range: SearchRange = 5.0,
    memory: Memory = 3,
    min_length: MinLength = 1,
    beam_x: Annotated[float | None, typer.Option(
        "--beam-x", help="Beam centre column, pixels, where radial_shift is measured from "
        "(give it with --beam-y) [default: for a run folder's peaks.parquet, the run's own "
        "centre (its --beam-x/--beam-y, else its frame centre, said on stderr); otherwise "
        "no radial_shift column, as the frame size is not in a peak table]. Pixel centres "
        "are whole numbers: a Fit2D or pyFAI centre, counted from the pixel's corner, is 0.5 "
        "more.")] = None,
    beam_y: Annotated[float | None, typer.Option(
        "--beam-y", help="Beam centre row, pixels (see --beam-x).")] = None,
    particles_out: Annotated[Path | None, typer.Option(
        "--particles", help="Also write the per-particle summary table here.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT.")] = False,
) -> None:
    """Link peaks across frames into trajectories and measure radial_shift
    (braggtrack.runner.link_and_measure)."""
    from .errors import OptionError
    from .runner import TrackConfig, link_and_measure
    from .tables import read_table, table_format, write_table

    table_format(out)
    if out.exists() and not force:
        raise OptionError(f"{out}: exists; use --force to overwrite")
    _check_output_file(out)
    if particles_out:
        table_format(particles_out)
        _check_output_file(particles_out)
    table = read_table(peaks)
    missing = {"frame", "x", "y", "ok"} - set(table.columns)
    if missing:
        raise OptionError(f"{peaks}: not a peak table (missing columns {sorted(missing)})")
    from .track import linkable

    linkable(table, what=str(peaks))  # text or fractional cells: one line naming this file
    shape, note = None, None
    if beam_x is None and beam_y is None:
        beam_x, beam_y, shape, note = _run_beam_centre(peaks)
    tracks, parts, info = link_and_measure(
        table, TrackConfig(search_range=search_range, memory=memory, min_length=min_length,
                           beam_x=beam_x, beam_y=beam_y, report=False), shape)
    write_table(tracks, out)
    if particles_out:
        write_table(parts, particles_out)
    if info.get("beam_centre_px") is None:
        typer.echo("note: no radial_shift column: the beam centre is unknown (give --beam-x "
                   "and --beam-y)", err=True)
    elif note:
        bx, by = info["beam_centre_px"]
        typer.echo(f"note: radial_shift measured from ({bx:g}, {by:g}) px, {note}", err=True)
    typer.echo(f"wrote {out}: {tracks['particle'].nunique() if len(tracks) else 0} trajectories")


def _run_beam_centre(peaks: Path):
    """``(beam_x, beam_y, frame_shape, note)`` of the run folder a peak table lies in (its
    run.json), so that ``track`` measures radial_shift as ``run`` did; all None elsewhere.
    ``note`` says where a centre not given to the run came from."""
    import json

    run_json = Path(peaks).resolve().parent / "run.json"
    try:
        info = json.loads(run_json.read_text())
        shape = tuple(int(v) for v in info["frame_shape"][-2:])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None, None, None
    params = info.get("parameters") or {}
    bx, by = params.get("beam_x"), params.get("beam_y")
    if bx is not None and by is not None:
        return bx, by, shape, None
    return bx, by, shape, f"the centre of the run's {shape[0]}x{shape[1]} frames ({run_json})"


@app.command()
def run(
    input: Input,
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder to write.")],
    dataset: Dataset = None,
    bin: Bin = _D.bin,
    threshold: Threshold = None,
    min_score: MinScore = _D.min_score,
    min_snr: MinSnr = _D.min_snr,
    min_persistence: MinPersistence = _D.min_persistence,
    patch: Patch = _D.patch,
    localizer: Localizer = _D.localizer,
    edge: Edge = _D.edge,
    min_distance: MinDistance = _D.min_distance,
    centre_tolerance: CentreTol = _D.centre_tolerance,
    max_peaks: MaxPeaks = _D.max_peaks,
    max_error: MaxError = _D.max_error,
    model: Model = None,
    device: Device = _D.device,
    auto_mask: AutoMask = _D.auto_mask,
    background: Background = _D.background,
    dark: Dark = None,
    flat: Flat = None,
    mask: Mask = None,
    mask_invert: MaskInvert = False,
    search_range: SearchRange = 5.0,
    memory: Memory = 3,
    min_length: MinLength = 1,
    poni: Annotated[str | None, typer.Option(
        "--poni", help="pyFAI PONI file with the detector geometry.")] = None,
    distance: Annotated[float | None, typer.Option(
        "--distance", help="Sample-detector distance (simple geometry, no tilt), mm.")] = None,
    beam_x: Annotated[float | None, typer.Option(
        "--beam-x", help="Beam centre column, pixels: required with --distance; without a "
        "geometry, where radial_shift is measured from [default: frame centre]. Pixel "
        "centres are whole numbers (pixel 0 spans -0.5..0.5): a Fit2D or pyFAI beam centre, "
        "counted from the pixel's corner, is 0.5 more.")] = None,
    beam_y: Annotated[float | None, typer.Option(
        "--beam-y", help="Beam centre row, pixels: required with --distance; without a "
        "geometry, where radial_shift is measured from [default: frame centre]. Pixel "
        "centres are whole numbers, as for --beam-x.")] = None,
    pixel: Annotated[float | None, typer.Option("--pixel", help="Pixel size, micrometres.")] = None,
    wavelength: Annotated[float | None, typer.Option(
        "--wavelength", help="X-ray wavelength, angstrom.")] = None,
    reference_frame: Annotated[int | None, typer.Option(
        "--reference-frame", help="Strain reference frame [default: each particle's first].")] = None,
    d_ref: Annotated[float | None, typer.Option(
        "--d-ref", help="Reference d-spacing for strain, angstrom.")] = None,
    hkl: Annotated[tuple[int, int, int] | None, typer.Option(
        "--hkl", help="Reflection h k l, for lattice parameters.")] = None,
    crystal_system: Annotated[str, typer.Option(
        "--system", help="cubic, tetragonal or hexagonal.")] = "cubic",
    c_over_a: Annotated[float | None, typer.Option(
        "--c-over-a", help="Fixed c/a ratio for tetragonal/hexagonal lattice parameters.")] = None,
    frame_meta: Annotated[str | None, typer.Option(
        "--frame-meta", help="CSV/Parquet of per-frame quantities with a `frame` column.")] = None,
    cycler_log: Annotated[str | None, typer.Option(
        "--cycler-log", help="Cycler export (time_s, voltage_V, current_mA) on its own clock, "
        "interpolated onto the frame times of --frame-meta.")] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write report/index.html.")] = True,
    table_format: Annotated[list[str] | None, typer.Option(
        "--format", help="Also write the tables as csv or h5 (repeat for both); Parquet always.")] = None,
    chunk_size: ChunkSize = 16,
    workers: Annotated[int, typer.Option(
        "--workers", help="Worker processes on this machine [default: all cores: one process "
        "with threads up to 4 cores, one worker process per 4 cores beyond].")] = 0,
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", help="Address of an existing Dask scheduler, e.g. tcp://host:8786 "
        "(one that does not answer within 10 s stops the run before any frame work).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Delete an existing run folder first.")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue a previous run (also automatic when the input and the find "
        "options match; other linking, geometry, metadata or report options redo only those "
        "steps; an input file whose size or modification time changed is refused).")] = False,
    strict: Strict = False,
    watch: Annotated[bool, typer.Option(
        "--watch", help="Follow a growing series (folder receiving files, HDF5 being appended "
        "to) and process frames as they arrive (braggtrack.runner.watch).")] = False,
    quiet_period: Annotated[float, typer.Option(
        "--quiet-period", help="With --watch: stop after this long without a new frame, "
        "seconds.")] = 60.0,
    quiet: Quiet = False,
) -> None:
    """Frames to answers: find, localize, link, geometry, report (braggtrack.run)."""
    from .runner import TrackConfig, default_workers
    from .runner import run as run_api

    config = _find_config(locals())
    track_cfg = TrackConfig(
        search_range=search_range, memory=memory, min_length=min_length, poni=poni,
        distance_mm=distance, beam_x=beam_x, beam_y=beam_y, pixel_um=pixel,
        wavelength_A=wavelength, reference_frame=reference_frame, d_ref=d_ref,
        hkl=tuple(hkl) if hkl else None, crystal_system=crystal_system, c_over_a=c_over_a,
        frame_meta=frame_meta, cycler_log=cycler_log, report=report,
        formats=tuple(table_format or ()),
    )
    common = dict(
        config=config, track=track_cfg, dataset=dataset,
        dark=dark, flat=flat, mask=mask, mask_invert=mask_invert,
        chunk_size=chunk_size, workers=workers or default_workers(), scheduler=scheduler,
        force=force, strict=strict, progress=not quiet, command=_command_line(),
    )
    if watch and not (quiet_period > 0):
        from .errors import OptionError

        raise OptionError(f"--quiet-period must be > 0 seconds, got {quiet_period}")
    # runner makes the folder only after it opened the input; a file in the way of -o
    # would then end in a NotADirectoryError traceback.
    _check_output_folder(out)
    try:
        if watch:  # Ctrl-C ends a watch normally; a second one, while it finishes, lands below
            from .runner import watch as watch_api

            result = watch_api(input, out, quiet_s=quiet_period, **common)
        else:
            result = run_api(input, out, resume=True if resume else None, **common)
    except KeyboardInterrupt:
        # typer turns Ctrl-C into a silent exit 130: say what is kept and how to go on.
        typer.echo(f"interrupted: {_chunks_kept(out)} kept in {out}; rerun the same command "
                   "to resume", err=True)
        raise typer.Exit(130) from None
    _print_run_summary(result)
    n_frames = result.info.get("counts", {}).get("frames", 0)
    if n_frames and result.frames_skipped >= n_frames:
        typer.echo(f"error: {input}: none of its {n_frames} frame(s) could be read (the "
                   "warnings above and frames.parquet say why)", err=True)
        raise typer.Exit(2)
    if result.frames_skipped:
        raise typer.Exit(EXIT_SKIPPED)


def _chunks_kept(out: Path) -> str:
    """``N of M chunks`` finished in the run folder ``out`` (from its run.json)."""
    import json
    import math

    try:
        info = json.loads((out / "run.json").read_text())
        done = len(info.get("chunks") or [])
        total = math.ceil(int(info["n_frames"]) / int(info["parameters"]["chunk_size"]))
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return "no chunks"
    return f"{done} of {total} chunks"


def _rejections(peaks) -> str:
    """``; rejected: uncertain 308, off_centre 7`` (the three commonest reasons), so that a
    run that accepts few peaks says why on the console, not only in the table."""
    if not len(peaks) or "reason" not in peaks:
        return ""
    reasons = peaks.loc[~peaks["ok"].astype(bool), "reason"].astype(str)
    counts = reasons[reasons != ""].value_counts()
    if counts.empty:
        return ""
    return "; rejected: " + ", ".join(f"{r} {n}" for r, n in counts.head(3).items())


def _hint_if_empty(n_peaks: int) -> None:
    if n_peaks == 0:
        typer.echo("no peak found: no pixel rose above --threshold (median + 5 robust sigmas "
                   "by default) by --min-snr, or every candidate was masked (saturated values "
                   "count as masked); try a lower --threshold / --min-snr, or check --mask")


def _print_run_summary(result) -> None:
    c = result.info.get("counts", {})
    typer.echo(
        f"{c.get('frames', 0)} frames ({c.get('frames_skipped', 0)} skipped), "
        f"{c.get('peaks', 0)} peaks ({c.get('peaks_ok', 0)} accepted"
        f"{_rejections(result.peaks)}), "
        f"{c.get('particles', 0)} particles"
    )
    _hint_if_empty(c.get("peaks", 0) if c.get("frames", 0) > c.get("frames_skipped", 0) else 1)
    typer.echo(f"results in {result.run_dir}/")
    for name, path in result.paths.items():
        typer.echo(f"  {name:10s} {path}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder to write.")] = Path(
        "braggtrack-demo"),
    sample: Annotated[str, typer.Option(
        "--sample", help="Embedded sample: series (real HEDM crop) or laue.")] = "series",
    force: Annotated[bool, typer.Option("--force", help="Delete an existing run folder first.")] = False,
    quiet: Quiet = False,
) -> None:
    """Run the whole pipeline on an embedded real sample (braggtrack.runner.demo)."""
    from .runner import demo as demo_api

    _check_output_folder(out)
    result = demo_api(out, sample=sample, force=force, progress=not quiet)
    _print_run_summary(result)
    report = result.paths.get("report")
    if report:
        typer.echo(f"open {report} in a browser to see the report")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (or a peak table).")],
    out: Annotated[Path | None, typer.Option(
        "-o", "--out", help="Report folder [default: RUN_DIR/report].")] = None,
) -> None:
    """Write the self-contained HTML report of a run (braggtrack.make_report)."""
    from .report import make_report

    if out is not None:
        _check_output_folder(out)
    path = make_report(run_dir, out)
    typer.echo(f"wrote {path}")


@app.command()
def compare(
    run_dir: Annotated[Path, typer.Argument(help="Run folder.")],
    out: Annotated[Path | None, typer.Option(
        "-o", "--out", help="Output folder [default: RUN_DIR/compare].")] = None,
    max_peaks: Annotated[int, typer.Option("--max-peaks", help="Peaks compared at most.")] = 5000,
) -> None:
    """Compare the localizers peak by peak on a run's own frames (braggtrack.compare)."""
    from .compare import compare_localizers, compare_report

    out = out or Path(run_dir) / "compare"
    if Path(run_dir).is_dir():  # else compare_localizers says what is wrong with RUN_DIR
        _check_output_folder(out)
    result = compare_localizers(run_dir, max_peaks=max_peaks)
    path = compare_report(result, out)
    typer.echo(f"wrote {path}")


@app.command()
def train(
    data: Annotated[str, typer.Argument(
        help="Training data: 'simulate' (our simulator), a frames HDF5 in BraggNN layout "
        "(with --peaks), or a frames file with a braggtrack peak table (--peaks).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Model file to write (.safetensors).")],
    peaks: Annotated[str | None, typer.Option(
        "--peaks", help="Peaks HDF5 (BraggNN layout) or braggtrack peak table.")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Patches per batch.")] = 512,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    device: TrainDevice = _D.device,
    resume: Annotated[bool, typer.Option("--resume", help="Resume from the last checkpoint.")] = False,
    init: Annotated[str | None, typer.Option(
        "--init", help="Start from these weights ('default': the shipped model) to fine-tune.")] = None,
    patch: Annotated[int | None, typer.Option(
        "--patch", help="Odd patch size in pixels the network takes (find/run must then use "
        "the same --patch) [default: 11, or that of the --init model].")] = None,
    dataset: Dataset = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite OUT and its .json if they exist.")] = False,
    quiet: Quiet = False,
) -> None:
    """Train a BraggNN model with streamed data and bounded memory (braggtrack.train_model)."""
    from .braggnn import BraggNNConfig
    from .errors import OptionError
    from .train import train_model

    config = None
    if init is None:
        # From scratch: the shipped model's architecture (gated centroid included), at the
        # patch size asked for.
        config = BraggNNConfig(patch=11 if patch is None else patch, gated_centroid=True)
    elif patch is not None:
        raise OptionError("--patch cannot change the patch size of an --init model: "
                          "fine-tuning keeps that model's patch size; leave out --patch")
    source = _training_source(data, peaks, dataset)
    result = train_model(source, out, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                         device=device, resume=resume, progress=not quiet, init=init,
                         config=config, checkpoint_dir=out.with_suffix(".checkpoints"),
                         force=force)
    typer.echo(f"wrote {result.model_path}: best epoch {result.best_epoch} of "
               f"{result.epochs_run}, validation median error {result.val_median_px:.3f} px "
               f"(90th percentile {result.val_p90_px:.3f} px)")


def _training_source(data: str, peaks: str | None, dataset: str | None):
    """'simulate', a BraggNN-layout pair of HDF5 files, or frames + a braggtrack peak table."""
    from .errors import InputFileError, OptionError
    from .train import BraggNNLayoutSource, PeakTableSource

    if data == "simulate":
        if peaks:
            raise OptionError("--peaks is not used with 'simulate'")
        return "simulate"
    if not Path(data).exists():
        raise InputFileError(data, "no such file")
    if peaks is None:
        raise OptionError("training on frames needs --peaks (a peaks HDF5 in BraggNN layout, "
                          "or a braggtrack peak table)")
    if not Path(peaks).exists():
        raise InputFileError(peaks, "no such file")
    if Path(peaks).suffix.lower() in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(peaks, "r", locking=False) as f:
                braggnn_layout = "peak_fidx" in f
        except OSError:
            raise InputFileError(peaks, "not a readable HDF5 file") from None
        if braggnn_layout:
            return BraggNNLayoutSource(frames=data, peaks=peaks,
                                       frames_dataset=(dataset or "frames").lstrip("/"))
    return PeakTableSource(frames=data, peaks=peaks, dataset=dataset)


@app.command()
def export(
    out: Annotated[Path, typer.Argument(help="Output file: .onnx or .pt (TorchScript).")],
    model: Model = None,
) -> None:
    """Export a BraggNN model to ONNX or TorchScript (braggtrack.braggnn.export_model)."""
    from .braggnn import export_model, load_model
    from .errors import OptionError

    fmt = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}.get(out.suffix.lower())
    if fmt is None:
        raise OptionError(f"{out}: use a .onnx or .pt (TorchScript) file name")
    _check_output_file(out)
    export_model(load_model(model), out, format=fmt)
    typer.echo(f"wrote {out} ({fmt})")


@app.command()
def bench(
    quick: Annotated[bool, typer.Option("--quick", help="Small sizes (seconds, for smoke tests).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Measure speed ratios against baselines in one run on this machine (braggtrack.bench)."""
    from .bench import format_table, run_bench

    table = run_bench(quick=quick)
    if json_out:
        typer.echo(table.to_json(orient="records", indent=2))
    else:
        typer.echo(format_table(table))


def main() -> None:
    """Entry point: run the app, turning user and OS errors into one line and exit status 2."""
    import logging

    # Skipped frames and similar warnings: one line each on stderr.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    logger = logging.getLogger("braggtrack")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    # Readers of damaged files log their own tracebacks-in-words; our one-line errors say it.
    for name in ("tifffile", "fabio", "fabio.edfimage", "fabio.cbfimage", "fabio.openimage"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    _one_line_warnings(logger)
    try:
        # Without standalone mode click returns typer.Exit's code instead of exiting.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except BraggTrackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:
        # A write that failed after the up-front checks (disk full, a folder made read-only
        # meanwhile) or a reader's OS error: the path and the reason, not a traceback.
        print(f"error: {_os_error_line(exc)}", file=sys.stderr)
        sys.exit(BraggTrackError.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted: finished chunks are kept; rerun the same command to resume",
              file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # click usage errors and aborts
        usage, abort = _click_exception_types()
        if isinstance(exc, usage):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, abort):
            sys.exit(1)
        raise


def _one_line_warnings(logger) -> None:
    """braggtrack's own Python warnings (FrameMetaWarning: metadata filled or dropped) as one
    ``warning:`` line, like the logged ones, instead of a file name, line number and source
    line; other libraries' warnings are shown as Python shows them."""
    import warnings

    from .metadata import FrameMetaWarning

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, FrameMetaWarning):
            logger.warning("%s", message)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Click's usage-error and abort classes, from click itself and from the copy of click
    that typer >= 0.22 carries inside it (``typer._click``), whose classes are not click's:
    an unknown option raised one of those and printed a traceback instead of the usage line."""
    import importlib

    usage: list[type] = []
    abort: list[type] = [typer.Abort]
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        usage.append(module.ClickException)
        if hasattr(module, "Abort"):  # typer's copy raises typer.Abort instead
            abort.append(module.Abort)
    return tuple(usage), tuple(abort)


if __name__ == "__main__":
    main()
