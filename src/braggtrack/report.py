"""The self-contained HTML report of a run: one page that opens straight from disk.

:func:`make_report` reads a run folder (``run.json``, ``peaks.parquet``, ``tracks.parquet``,
``particles.parquet``; the frames named in ``run.json``) or a single peak table, and writes
``report/index.html`` with every image embedded as a base64 PNG data URI and the movie as a base64
MP4 (H.264, yuv420p; an animated GIF when ffmpeg fails).  There is no external script, style
sheet or font: the page works offline, from a mail attachment or an archive.  The few lines of
inline JavaScript sort the tables, zoom the full-resolution view and write a load-status line
that tests (and a suspicious user) can read.

Plots are drawn with matplotlib's object API (no pyplot state); movie frames are drawn with
Pillow directly on colour-mapped arrays because one matplotlib figure per frame would be ten
times slower.  HTML is written by hand: a template engine would be a dependency for a page
this small.
"""

from __future__ import annotations

import base64
import functools
import html
import io as _io
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import BraggTrackError, InputFileError, OptionError

TABLE_SUFFIXES = (".parquet", ".csv", ".h5", ".hdf5")
DETECTOR_CMAP = "magma"


# --------------------------------------------------------------------------- loading


@dataclass
class RunData:
    """Everything the report needs from a run folder or a single table.

    ``series`` is None when the frames are unavailable; ``frames_note`` then says why.
    """

    root: Path
    source_label: str
    info: dict
    peaks: pd.DataFrame
    tracks: pd.DataFrame | None = None
    particles: pd.DataFrame | None = None
    frame_table: pd.DataFrame | None = None
    series: object | None = None
    frames_note: str = ""
    table_only: bool = False
    notes: list = field(default_factory=list)

    @property
    def accepted(self) -> pd.DataFrame:
        """Accepted peaks (``ok`` True), the rows localizers are compared on."""
        if "ok" in self.peaks.columns:
            return self.peaks[self.peaks["ok"].astype(bool)]
        return self.peaks

    @property
    def n_frames(self) -> int:
        if self.series is not None:
            return len(self.series)
        n = self.info.get("n_frames") or self.info.get("counts", {}).get("frames")
        if n:
            return int(n)
        return int(self.peaks["frame"].max()) + 1 if len(self.peaks) else 0


def _read(path: Path) -> pd.DataFrame:
    from .tables import read_table

    return read_table(path)


def frames_source(info: dict) -> str | None:
    """Path of the frames of a run from its ``run.json`` contents."""
    for key in ("source", "input"):
        if isinstance(info.get(key), str):
            return info[key]
    inputs = info.get("inputs") or []
    if len(inputs) == 1:
        return inputs[0].get("path")
    if inputs:
        # A folder of single-frame files: open_frames takes the folder.
        return str(Path(inputs[0]["path"]).parent)
    return None


def _open_series(frames, dataset: str | None):
    if frames is None:
        return None
    if isinstance(frames, np.ndarray):
        if frames.ndim == 2:
            frames = frames[None]
        if frames.ndim != 3:
            raise OptionError(f"frames array must be (n, H, W), got shape {frames.shape}")
        return frames
    if hasattr(frames, "__getitem__") and hasattr(frames, "__len__") and not isinstance(
            frames, (str, os.PathLike)):
        return frames
    from .io import open_frames

    return open_frames(frames, dataset=dataset)


def load_run(run_dir_or_table, *, frames=None, dataset: str | None = None) -> RunData:
    """Read a run folder (or a single peak/track table) for the report and the comparison.

    Parameters
    ----------
    run_dir_or_table : path or DataFrame
        A folder written by :func:`braggtrack.run`, or a table file (``.parquet``, ``.csv``,
        ``.h5``) or DataFrame of peaks or tracks.
    frames : path, FrameSeries or ndarray, optional
        Frames to use instead of the ones ``run.json`` names (for a table: the only way to
        get frame images).
    dataset : str, optional
        HDF5 dataset of the frames; default the run's ``dataset`` parameter.

    Returns
    -------
    RunData

    Examples
    --------
    >>> run = load_run("RUN_DIR")                           # doctest: +SKIP
    """
    if isinstance(run_dir_or_table, pd.DataFrame):
        table, root, label, info = run_dir_or_table, Path.cwd(), "<table>", {}
        table_only = True
    else:
        path = Path(run_dir_or_table)
        if not path.exists():
            raise InputFileError(path, "no such run folder or table")
        if path.is_dir():
            return _load_run_dir(path, frames=frames, dataset=dataset)
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise InputFileError(
                path, "not a run folder or a peak table (.parquet, .csv, .h5)")
        table, root, label, info = _read(path), path.parent, str(path), {}
        table_only = True
    if "frame" not in table.columns or not {"x", "y"} <= set(table.columns):
        raise InputFileError(label, "not a peak table: needs the columns frame, x, y")
    tracks = None
    if "particle" in table.columns:
        tracks = table[table["ok"].astype(bool)] if "ok" in table.columns else table
    run = RunData(root=root, source_label=label, info=info, peaks=table, tracks=tracks,
                  table_only=table_only)
    if frames is not None:
        run.series = _open_series(frames, dataset)
    else:
        run.frames_note = "only a peak table was given, without its frames"
    return run


def _load_run_dir(path: Path, *, frames, dataset) -> RunData:
    run_json = path / "run.json"
    if not run_json.exists():
        raise InputFileError(path, "not a run folder: no run.json (give a run folder or a table)")
    try:
        info = json.loads(run_json.read_text())
    except (OSError, ValueError) as exc:
        raise InputFileError(run_json, f"unreadable run.json ({exc.__class__.__name__})") from None
    if not isinstance(info, dict):
        raise InputFileError(run_json, "not a braggtrack run.json (not a JSON object)")
    peaks_path = path / "peaks.parquet"
    if not peaks_path.exists():
        raise InputFileError(path, "run folder without peaks.parquet (is the run finished?)")
    run = RunData(root=path, source_label=str(path), info=info, peaks=_read(peaks_path))
    for attr, name in (("tracks", "tracks.parquet"), ("particles", "particles.parquet"),
                       ("frame_table", "frames.parquet")):
        if (path / name).exists():
            setattr(run, attr, _read(path / name))
    dataset = dataset or info.get("parameters", {}).get("dataset")
    # A watch in progress reads its growing input as it is now; any other run is checked
    # against what run.json recorded.
    recorded = frames is None and not info.get("live")
    if frames is None:
        frames = frames_source(info)
        if frames is None:
            run.frames_note = "run.json names no input frames"
            return run
        if not Path(frames).exists() and not any(ch in str(frames) for ch in "*?["):
            run.frames_note = f"the input {frames} is no longer there"
            return run
        # Whatever file is now at the recorded path may be another one: its peaks would be
        # drawn on (and compared in) frames they were not found in.
        note = _recorded_input_note(info) if recorded else ""
        if note:
            run.frames_note = note
            return run
    try:
        run.series = _open_series(frames, dataset)
    except BraggTrackError as exc:
        run.frames_note = f"the frames could not be opened ({exc})"
        return run
    n_run = info.get("n_frames")
    if recorded and n_run is not None and len(run.series) != int(n_run):
        run.frames_note = (f"the input {frames} now has {len(run.series)} frames, the run had "
                           f"{int(n_run)}")
        run.series = None
    return run


def _recorded_input_note(info: dict) -> str:
    """Why the input files ``run.json`` recorded are not the ones on disk now, or ``""``:
    size and modification time are compared (the size alone for runs recorded before the
    modification time was)."""
    from .runner import input_changes

    change = input_changes(info.get("inputs"))
    if change is None:
        return ""
    file, problem = change
    if problem == "missing":
        return f"the input {file} is no longer there"
    return f"the input {file} changed since the run (size/modification time differ)"


# --------------------------------------------------------------------------- helpers


def figure_to_data_uri(fig, *, dpi: int = 100, fmt: str = "png") -> str:
    """Render a matplotlib figure to a ``data:image/png;base64,...`` URI.

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> figure_to_data_uri(Figure(figsize=(1, 1)))[:22]
    'data:image/png;base64,'
    """
    buf = _io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def display_norm(image: np.ndarray):
    """Colour normalisation for a detector frame: asinh stretch when counts span decades.

    Below about one noise level the scale is linear, above it logarithmic, so faint spots and
    the brightest peak are both visible; frames with a small dynamic range stay linear.

    Examples
    --------
    >>> import numpy as np
    >>> norm = display_norm(np.r_[np.zeros(90), np.logspace(1, 5, 10)].reshape(10, 10))
    >>> type(norm).__name__
    'AsinhNorm'
    """
    from matplotlib.colors import AsinhNorm, Normalize

    a = np.asarray(image, dtype=np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return Normalize(0, 1)
    sample = finite if finite.size <= 1_000_000 else finite[:: finite.size // 1_000_000 + 1]
    lo = float(np.percentile(sample, 1))
    hi = float(max(np.percentile(sample, 99.99), finite.max() * 0.5))
    if hi <= lo:
        return Normalize(lo, lo + 1)
    med = float(np.median(sample))
    sigma = 1.4826 * float(np.median(np.abs(sample - med)))
    if sigma == 0:
        # Thresholded or sparse frames (most pixels at one level): the scale turns
        # logarithmic at half the faintest recorded signal instead of at the noise.
        above = sample[sample > med]
        if above.size:
            sigma = 0.5 * (float(np.percentile(above, 5)) - med)
    width = max(sigma, (hi - lo) * 1e-4)
    if (hi - lo) / width < 10:
        return Normalize(lo, hi)
    return AsinhNorm(linear_width=width, vmin=lo, vmax=hi)


def _max_pool(image: np.ndarray, factor: int) -> np.ndarray:
    """Block maximum: keeps one-pixel spots visible when a large frame is shrunk."""
    if factor <= 1:
        return image
    h, w = image.shape
    hh, ww = -(-h // factor) * factor, -(-w // factor) * factor
    if (hh, ww) != (h, w):
        padded = np.full((hh, ww), np.nanmin(image) if image.size else 0, dtype=image.dtype)
        padded[:h, :w] = image
        image = padded
    # Element-wise maximum of the factor**2 strided sub-images: several times faster than
    # a reduction over the non-contiguous axes of a reshaped view.
    out = image[0::factor, 0::factor].copy()
    for i in range(factor):
        for j in range(factor):
            if i or j:
                np.maximum(out, image[i::factor, j::factor], out=out)
    return out


def _score(table: pd.DataFrame) -> pd.Series:
    for name in ("score", "persistence", "intensity"):
        if name in table.columns:
            return table[name].astype(float)
    return pd.Series(np.ones(len(table)), index=table.index)


def _ok(table: pd.DataFrame) -> np.ndarray:
    return table["ok"].to_numpy(bool) if "ok" in table.columns else np.ones(len(table), bool)


def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return ""
        if v == 0:
            return "0"
        if 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    if v is None:
        return ""
    return html.escape(str(v))


def table_html(df: pd.DataFrame, *, sortable: bool = True, max_rows: int | None = None,
               cls: str = "") -> str:
    """An HTML table; numeric cells carry ``data-v`` so the inline script sorts them by value."""
    if max_rows is not None:
        df = df.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
                    v, (bool, np.bool_)) and np.isfinite(v):
                cells.append(f'<td data-v="{float(v)!r}">{_fmt(v)}</td>')
            else:
                cells.append(f"<td>{_fmt(v)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    classes = " ".join(c for c in (("sortable" if sortable else ""), cls) if c)
    return (f'<table class="{classes}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _figure(src: str, caption: str, alt: str) -> str:
    return (f'<figure><img alt="{html.escape(alt)}" src="{src}">'
            f"<figcaption>{caption}</figcaption></figure>")


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;
 color:#1d232a;background:#f4f5f7;line-height:1.45}
header{background:#1f2a37;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:1.5em}header .sub{color:#c9d3de;font-size:.9em}
nav{background:#fff;border-bottom:1px solid #d9dde3;padding:6px 28px;position:sticky;top:0;z-index:5;
 font-size:.88em}
nav a{margin-right:14px;color:#1f5fa8;text-decoration:none}
main{max-width:1280px;margin:0 auto;padding:10px 28px 40px}
section{background:#fff;border:1px solid #dfe3e8;border-radius:6px;padding:14px 20px;margin:16px 0}
h2{margin:4px 0 8px;font-size:1.25em;color:#1f2a37}h3{font-size:1.02em;margin:14px 0 6px}
figure{margin:10px 0}figure img{max-width:100%;height:auto;border:1px solid #e3e6ea}
figcaption{font-size:.88em;color:#4a5560;max-width:980px;margin-top:4px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0}
.card{background:#f0f4f8;border:1px solid #dbe3ec;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:1.35em;color:#1f2a37}.card span{font-size:.8em;color:#4a5560}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 12px;margin:8px 0;font-size:.92em}
table{border-collapse:collapse;font-size:.82em;margin:6px 0}
th,td{border:1px solid #dfe3e8;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#eef2f6;position:sticky;top:0}
table.sortable th{cursor:pointer}table.sortable th:hover{background:#dde6ef}
td:first-child,th:first-child{text-align:left}
table.kv td{text-align:left;white-space:normal;word-break:break-all}
.scroll{max-height:480px;overflow:auto;border:1px solid #dfe3e8;display:inline-block;max-width:100%}
.zoombox{max-height:820px;max-width:100%;overflow:auto;border:1px solid #cfd5dc;display:inline-block}
img.zoomable{display:block;width:800px;max-width:none;image-rendering:pixelated;cursor:zoom-in}
img.zoomable.zoomed{width:2400px;cursor:zoom-out}
.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em}
video,img.movie{max-width:100%;border:1px solid #cfd5dc;background:#000}
#load-status{font-size:.8em;color:#66717c;margin-top:20px}
"""

_SCRIPT = """
(function(){
  // Sort a table by the clicked column: numeric cells by data-v, others as text.
  document.querySelectorAll('table.sortable').forEach(function(t){
    t.querySelectorAll('th').forEach(function(th, col){
      th.addEventListener('click', function(){
        var body = t.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        var asc = th.getAttribute('data-dir') !== 'asc';
        t.querySelectorAll('th').forEach(function(h){h.removeAttribute('data-dir');
          h.textContent = h.textContent.replace(/ [\\u25B2\\u25BC]$/, '');});
        th.setAttribute('data-dir', asc ? 'asc' : 'desc');
        th.textContent += asc ? ' \\u25B2' : ' \\u25BC';
        rows.sort(function(a, b){
          var x = a.cells[col], y = b.cells[col];
          var vx = x.getAttribute('data-v'), vy = y.getAttribute('data-v');
          var r = (vx !== null && vy !== null) ? parseFloat(vx) - parseFloat(vy)
                  : x.textContent.localeCompare(y.textContent, undefined, {numeric: true});
          return asc ? r : -r;});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  // Click to zoom the full-resolution view, keeping the clicked point under the pointer.
  document.querySelectorAll('img.zoomable').forEach(function(img){
    img.addEventListener('click', function(ev){
      var box = img.parentElement, r = img.getBoundingClientRect();
      var fx = (ev.clientX - r.left) / r.width, fy = (ev.clientY - r.top) / r.height;
      img.classList.toggle('zoomed');
      box.scrollLeft = fx * img.width - (ev.clientX - box.getBoundingClientRect().left);
      box.scrollTop = fy * img.height - (ev.clientY - box.getBoundingClientRect().top);
    });
  });
  // Load status: how many images decoded, and whether the movie loaded.
  var status = document.getElementById('load-status');
  var video = document.querySelector('video');
  var vstate = video ? (video.readyState >= 2 ? 'ok' : 'pending') : 'none';
  function update(){
    var ok = 0, bad = 0;
    Array.prototype.forEach.call(document.images, function(im){
      if (im.complete && im.naturalWidth > 0) ok++; else bad++;});
    status.textContent = 'Page check: images: ' + ok + ' ok, ' + bad + ' broken; video: ' + vstate;
  }
  if (video){
    video.addEventListener('loadeddata', function(){vstate = 'ok'; update();});
    video.addEventListener('error', function(){vstate = 'error'; update();}, true);
  }
  window.addEventListener('load', update);
  update();
})();
"""


def page_html(title: str, sections: Sequence[tuple[str, str, str]], *, subtitle: str = "",
              intro: str = "") -> str:
    """Assemble a self-contained page from ``(anchor, heading, body_html)`` sections.

    Examples
    --------
    >>> page = page_html("t", [("a", "A", "<p>x</p>")])
    >>> page.startswith("<!DOCTYPE html>") and 'id="load-status"' in page
    True
    """
    nav = "".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{html.escape(h)}</h2>{b}</section>'
                   for a, h, b in sections)
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><div class=\"sub\">{subtitle}</div></header>"
        f"<nav>{nav}</nav><main>{intro}{body}"
        "<div id=\"load-status\">Page check: not run (JavaScript disabled?)</div></main>"
        f"<script>{_SCRIPT}</script></body></html>"
    )


# --------------------------------------------------------------------------- figures


def _peak_sizes(score: np.ndarray, lo: float = 12, hi: float = 110) -> np.ndarray:
    if score.size == 0:
        return score
    top = float(np.max(score)) or 1.0
    return lo + (hi - lo) * np.clip(score / top, 0, 1)


def plot_frame_peaks(image: np.ndarray, peaks: pd.DataFrame, *, frame: int, norm=None,
                     box: tuple[int, int, int, int] | None = None, width_px: int = 1000):
    """The frame with every detected peak: accepted circles sized by score, rejected crosses.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> fig = plot_frame_peaks(np.random.rand(32, 32), pd.DataFrame(
    ...     {"x": [5.0], "y": [6.0], "ok": [True], "score": [50.0]}), frame=0)
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    image = np.asarray(image, dtype=np.float32)
    h, w = image.shape
    norm = norm or display_norm(image)
    factor = max(1, math.ceil(max(h, w) / width_px))
    shown = _max_pool(image, factor)
    aspect = h / w
    fig = Figure(figsize=(9.5, max(3.5, 8.2 * aspect)), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap=DETECTOR_CMAP, norm=norm, interpolation="nearest",
                   extent=(-0.5, shown.shape[1] * factor - 0.5, shown.shape[0] * factor - 0.5, -0.5))
    ok = _ok(peaks)
    score = _score(peaks).to_numpy()
    sizes = _peak_sizes(score)
    acc, rej = peaks[ok], peaks[~ok]
    ax.scatter(acc["x"], acc["y"], s=sizes[ok], facecolors="none", edgecolors="#00e5ff",
               linewidths=0.9, label=f"accepted ({len(acc)})")
    if len(rej):
        ax.scatter(rej["x"], rej["y"], s=np.maximum(sizes[~ok] * 0.5, 10), marker="x",
                   color="#ff3b30", linewidths=0.9, label=f"rejected ({len(rej)})")
    if box is not None:
        x0, y0, x1, y1 = box
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                               edgecolor="#ffd400", lw=1.2, ls="--",
                               label="full-resolution view below"))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xlabel("x, detector column (px)")
    ax.set_ylabel("y, detector row (px)")
    shrink = f"; shown {factor}x{factor}-block maximum" if factor > 1 else ""
    ax.set_title(f"Frame {frame}: {len(acc)} accepted and {len(rej)} rejected peaks{shrink}")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    label = "counts (asinh scale)" if type(norm).__name__ == "AsinhNorm" else "counts"
    fig.colorbar(im, ax=ax, label=label, shrink=0.85)
    return fig


def densest_box(peaks: pd.DataFrame, shape: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """Square window (x0, y0, x1, y1) of side ``size`` holding the most peaks."""
    h, w = shape
    sy, sx = min(size, h), min(size, w)
    if not len(peaks):
        return (0, 0, sx, sy)
    step = max(1, min(sx, sy) // 4)
    xs = np.arange(0, max(1, w - sx + 1), step)
    ys = np.arange(0, max(1, h - sy + 1), step)
    px, py = peaks["x"].to_numpy(float), peaks["y"].to_numpy(float)
    best, best_n = (0, 0), -1
    for y0 in ys:
        iny = (py >= y0 - 0.5) & (py < y0 + sy - 0.5)
        if not iny.any():
            continue
        pxs = px[iny]
        for x0 in xs:
            n = int(np.count_nonzero((pxs >= x0 - 0.5) & (pxs < x0 + sx - 0.5)))
            if n > best_n:
                best, best_n = (int(x0), int(y0)), n
    x0, y0 = best
    return (x0, y0, x0 + sx, y0 + sy)


def plot_zoom(image: np.ndarray, peaks: pd.DataFrame, box, *, norm=None, target_px: int = 800):
    """Full-resolution crop (each detector pixel a visible square) with peak positions."""
    from matplotlib.figure import Figure

    x0, y0, x1, y1 = box
    crop = np.asarray(image[y0:y1, x0:x1], dtype=np.float32)
    ch, cw = crop.shape
    scale = max(1, target_px // max(ch, cw))
    dpi = 100
    fig = Figure(figsize=(cw * scale / dpi, ch * scale / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(crop, cmap=DETECTOR_CMAP, norm=norm or display_norm(crop), interpolation="nearest",
              extent=(x0 - 0.5, x1 - 0.5, y1 - 0.5, y0 - 0.5))
    inside = peaks[(peaks["x"] >= x0 - 0.5) & (peaks["x"] < x1 - 0.5)
                   & (peaks["y"] >= y0 - 0.5) & (peaks["y"] < y1 - 0.5)]
    ok = _ok(inside)
    radius_pt = 3.0 * scale * 72 / dpi
    ax.scatter(inside["x"][ok], inside["y"][ok], s=(2 * radius_pt) ** 2, facecolors="none",
               edgecolors="#00e5ff", linewidths=1.0)
    ax.scatter(inside["x"][ok], inside["y"][ok], s=(0.6 * radius_pt) ** 2, marker="+",
               color="#00e5ff", linewidths=0.8)
    ax.scatter(inside["x"][~ok], inside["y"][~ok], s=(1.2 * radius_pt) ** 2, marker="x",
               color="#ff3b30", linewidths=1.0)
    ax.set_xlim(x0 - 0.5, x1 - 0.5)
    ax.set_ylim(y1 - 0.5, y0 - 0.5)
    ax.axis("off")
    return fig, dpi


def plot_counts(run: RunData):
    """Peaks per frame (accepted / rejected, skipped frames marked) and score histograms."""
    from matplotlib.figure import Figure

    peaks = run.peaks
    n = max(run.n_frames, int(peaks["frame"].max()) + 1 if len(peaks) else 0)
    frames = np.arange(n)
    ok = _ok(peaks)
    acc = np.bincount(peaks["frame"].to_numpy(int)[ok], minlength=n)[:n] if n else np.zeros(0)
    rej = np.bincount(peaks["frame"].to_numpy(int)[~ok], minlength=n)[:n] if n else np.zeros(0)
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    a1, a2, a3 = fig.subplots(1, 3, width_ratios=(2.2, 1.3, 1.2))
    a1.plot(frames, acc, color="#1f77b4", lw=1.3, label="accepted", drawstyle="steps-mid")
    a1.plot(frames, rej, color="#d62728", lw=1.0, label="rejected", drawstyle="steps-mid")
    skipped = [s["frame"] for s in run.info.get("skipped_frames", [])]
    for i, f in enumerate(skipped[:500]):
        a1.axvline(f, color="0.5", lw=0.8, ls=":", label="skipped frame" if i == 0 else None)
    a1.set_xlabel("frame")
    a1.set_ylabel("peaks in the frame")
    a1.set_title("Peaks per frame")
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    score = _score(peaks).to_numpy()
    sname = next((c for c in ("score", "persistence", "intensity") if c in peaks.columns), "score")
    top = float(score.max()) if score.size else 1.0
    bins = np.linspace(0, top if top > 0 else 1, 41)
    a2.hist(score[ok], bins=bins, color="#1f77b4", alpha=0.75, label="accepted")
    a2.hist(score[~ok], bins=bins, color="#d62728", alpha=0.6, label="rejected")
    if score.size:  # a log axis of empty histograms only draws a matplotlib warning
        a2.set_yscale("log")
    unit = " (0-255 of the frame's range)" if sname == "score" else ""
    a2.set_xlabel(f"{sname}{unit}")
    a2.set_ylabel("peaks")
    a2.set_title(f"Peak {sname}")
    a2.legend(fontsize=8)
    if "reason" in peaks.columns and (~ok).any():
        reasons = peaks.loc[~ok, "reason"].astype(str).replace("", "(none)").value_counts()
        a3.barh(reasons.index[::-1], reasons.to_numpy()[::-1], color="#d62728", alpha=0.75)
        a3.set_xlabel("rejected peaks")
        a3.set_title("Why peaks were rejected")
    else:
        a3.text(0.5, 0.5, "no rejected peaks", ha="center", va="center", transform=a3.transAxes)
        a3.set_axis_off()
    return fig


@functools.cache
def _tab20() -> np.ndarray:
    import matplotlib

    colours = np.asarray(matplotlib.colormaps["tab20"].colors)
    return np.c_[colours, np.ones(len(colours))]


def _particle_colours(particles: np.ndarray) -> np.ndarray:
    """RGBA colour of each particle id (tab20, cycling), looked up without a colormap call."""
    table = _tab20()
    return table[np.asarray(particles, dtype=np.int64) % len(table)]


def plot_trajectories(tracks: pd.DataFrame, *, image=None, shape=None, norm=None,
                      max_tracks: int = 400):
    """Trajectories over the detector, one colour per particle, on a faint frame."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    lengths = tracks.groupby("particle").size().sort_values(ascending=False)
    chosen = lengths.index[:max_tracks]
    if shape is None:
        shape = (image.shape if image is not None
                 else (int(tracks["y"].max()) + 2, int(tracks["x"].max()) + 2))
    h, w = shape
    fig = Figure(figsize=(9.5, max(3.5, 8.2 * h / w)), layout="constrained")
    ax = fig.add_subplot()
    if image is not None:
        factor = max(1, math.ceil(max(h, w) / 1000))
        shown = _max_pool(np.asarray(image, np.float32), factor)
        ax.imshow(shown, cmap="gray_r", norm=norm or display_norm(image), alpha=0.35,
                  interpolation="nearest",
                  extent=(-0.5, shown.shape[1] * factor - 0.5, shown.shape[0] * factor - 0.5, -0.5))
    sub = tracks[tracks["particle"].isin(chosen)].sort_values(["particle", "frame"])
    segs, ids = [], []
    starts = []
    for p, g in sub.groupby("particle", sort=False):
        xy = g[["x", "y"]].to_numpy(float)
        starts.append(xy[0])
        ids.append(p)
        segs.append(xy if len(xy) > 1 else np.vstack([xy, xy]))
    if segs:
        colours = _particle_colours(np.asarray(ids))
        ax.add_collection(LineCollection(segs, colors=colours, linewidths=1.4))
        st = np.asarray(starts)
        ax.scatter(st[:, 0], st[:, 1], s=6, c=colours, label="start of a trajectory")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xlabel("x, detector column (px)")
    ax.set_ylabel("y, detector row (px)")
    more = f" (the {len(chosen)} longest shown)" if len(lengths) > len(chosen) else ""
    ax.set_title(f"{len(lengths)} trajectories{more}")
    return fig


def plot_response_vs_frame(tracks: pd.DataFrame, y: str, *, n: int = 8):
    """Strain (or radial shift) against frame for the ``n`` longest trajectories, with errors."""
    from matplotlib.figure import Figure

    from .analysis import axis_label

    lengths = tracks.groupby("particle").size().sort_values(ascending=False)
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax = fig.add_subplot()
    err = f"{y}_err"
    colours = _particle_colours(lengths.index[:n].to_numpy())
    for c, p in zip(colours, lengths.index[:n], strict=True):
        g = tracks[tracks["particle"] == p].sort_values("frame")
        ax.errorbar(g["frame"], g[y], yerr=g[err] if err in g.columns else None, color=c,
                    lw=1.2, marker="o", ms=2.5, elinewidth=0.8, capsize=0,
                    label=f"particle {p} ({len(g)} frames)")
    ax.set_xlabel("frame")
    ax.set_ylabel(axis_label(y))
    ax.set_title(f"{axis_label(y)} of the {min(n, len(lengths))} longest trajectories")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2)
    return fig


# --------------------------------------------------------------------------- movie


class _ColourMap:
    """Frame -> RGB through a 65536-level table of the norm: one table look-up per pixel
    instead of evaluating asinh on every pixel of every movie frame."""

    levels = 65536

    def __init__(self, norm, cmap: str = DETECTOR_CMAP) -> None:
        import matplotlib

        self.lo, self.hi = float(norm.vmin), float(norm.vmax)
        values = np.linspace(self.lo, self.hi, self.levels)
        scaled = np.clip(np.ma.filled(norm(values), 0.0), 0, 1)
        self.table = (matplotlib.colormaps[cmap](scaled)[:, :3] * 255).astype(np.uint8)
        self.step = (self.levels - 1) / (self.hi - self.lo) if self.hi > self.lo else 0.0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        idx = (np.asarray(image, np.float32) - np.float32(self.lo)) * np.float32(self.step)
        # Non-finite pixels (a float detector's gaps and dead rows) get the lowest colour;
        # cast to int as they are, they would index anywhere.
        np.nan_to_num(idx, copy=False, nan=0.0, posinf=self.levels - 1, neginf=0.0)
        np.clip(idx, 0, self.levels - 1, out=idx)
        return self.table[idx.astype(np.int32)]


def write_movie(
    series,
    peaks: pd.DataFrame,
    tracks: pd.DataFrame | None,
    path,
    *,
    frames: Sequence[int] | None = None,
    norm=None,
    max_size: int = 720,
    fps: float = 8.0,
    trail: int = 8,
) -> tuple[Path, str]:
    """Write a movie of the series with peaks and short trails; MP4, else a GIF.

    Each movie frame is one input frame (those in ``frames``; default all): the frame
    colour-mapped (block maximum when it is larger than ``max_size``), accepted peaks as cyan
    circles, rejected as red crosses, and each particle's last ``trail`` positions as a line.

    Returns
    -------
    (path, mime) : the file written (``.mp4`` or ``.gif``) and its MIME type.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> frames = np.random.rand(3, 32, 32).astype("float32")
    >>> peaks = pd.DataFrame({"frame": [0], "x": [5.0], "y": [5.0], "ok": [True]})
    >>> write_movie(frames, peaks, None, "/tmp/bt-doctest.mp4")[1]
    'video/mp4'
    """
    from PIL import Image, ImageDraw, ImageFont

    path = Path(path)
    n = len(series)
    frames = list(range(n)) if frames is None else [int(f) for f in frames]
    if not frames:
        raise OptionError("no frames to put in the movie")
    first = np.asarray(series[frames[0]], dtype=np.float32)
    h, w = first.shape
    norm = norm or display_norm(first)
    factor = max(1, math.ceil(max(h, w) / max_size))
    # Small frames are enlarged (whole pixels) so that markers and trails stay legible.
    side = max(math.ceil(h / factor), math.ceil(w / factor))
    up = math.ceil(640 / side) if side < 400 else 1
    colour_map = _ColourMap(norm)
    font = ImageFont.load_default(size=max(11, min(22, (w // factor) * up // 40)))
    by_frame = {f: g for f, g in peaks.groupby("frame")} if len(peaks) else {}
    def to_display(x, y):
        return (((np.asarray(x) - (factor - 1) / 2) / factor) * up + (up - 1) / 2,
                ((np.asarray(y) - (factor - 1) / 2) / factor) * up + (up - 1) / 2)

    trails = None
    if tracks is not None and len(tracks) and "particle" in tracks.columns:
        t = tracks[["frame", "particle", "x", "y"]].sort_values(["particle", "frame"])
        tp, tf = t["particle"].to_numpy(np.int64), t["frame"].to_numpy(np.int64)
        tx, ty = to_display(t["x"].to_numpy(float), t["y"].to_numpy(float))
        trails = (tp, tf, tx, ty, _particle_colours(tp)[:, :3] * 255)

    def render(f: int) -> np.ndarray:
        image = np.asarray(series[f], dtype=np.float32)
        rgb = colour_map(_max_pool(image, factor))
        if up > 1:
            rgb = np.repeat(np.repeat(rgb, up, axis=0), up, axis=1)
        hh, ww = rgb.shape[:2]
        canvas = np.zeros((hh + hh % 2, ww + ww % 2, 3), np.uint8)
        canvas[:hh, :ww] = rgb
        im = Image.fromarray(canvas)
        draw = ImageDraw.Draw(im)
        r = max(3.0, 2.5 * up / factor + 2)
        if trails is not None:
            tp, tf, tx, ty, tc = trails
            idx = np.flatnonzero((tf > f - trail) & (tf <= f))
            # Rows are sorted by particle then frame: split the selection where particle changes.
            for seg in np.split(idx, np.flatnonzero(np.diff(tp[idx])) + 1):
                if len(seg) < 2:
                    continue
                draw.line(list(zip(tx[seg].tolist(), ty[seg].tolist(), strict=True)),
                          fill=tuple(int(c) for c in tc[seg[0]]), width=max(1, up // 3))
        g = by_frame.get(f)
        if g is not None and len(g):
            ok = _ok(g)
            dx, dy = to_display(g["x"].to_numpy(), g["y"].to_numpy())
            for x, y, good in zip(dx, dy, ok, strict=True):
                if good:
                    draw.ellipse((x - r, y - r, x + r, y + r), outline=(0, 229, 255), width=1)
                else:
                    s = r * 0.7
                    draw.line((x - s, y - s, x + s, y + s), fill=(255, 59, 48), width=1)
                    draw.line((x - s, y + s, x + s, y - s), fill=(255, 59, 48), width=1)
        label = f"frame {f} / {n - 1}"
        box = draw.textbbox((4, 4), label, font=font)
        draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=(0, 0, 0))
        draw.text((4, 4), label, fill=(255, 255, 255), font=font)
        return np.asarray(im)

    mp4 = path.with_suffix(".mp4")
    try:
        import imageio_ffmpeg

        sample = render(frames[0])
        writer = imageio_ffmpeg.write_frames(
            str(mp4), (sample.shape[1], sample.shape[0]), fps=fps, codec="libx264",
            pix_fmt_in="rgb24", pix_fmt_out="yuv420p", quality=None, macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=["-crf", "27", "-preset", "veryfast", "-movflags", "+faststart"])
        writer.send(None)
        writer.send(np.ascontiguousarray(sample))
        for f in frames[1:]:
            writer.send(np.ascontiguousarray(render(f)))
        writer.close()
        return mp4, "video/mp4"
    except (ImportError, OSError, RuntimeError, BrokenPipeError):
        if mp4.exists():
            mp4.unlink()
    gif = path.with_suffix(".gif")
    images = [Image.fromarray(render(f)) for f in frames]
    images[0].save(gif, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return gif, "image/gif"


# --------------------------------------------------------------------------- patches


def _cut(run: RunData, table: pd.DataFrame, size: int, cache: dict) -> np.ndarray:
    from .compare import _centres
    from .patches import extract_patches

    rows, cols = _centres(table)
    out = np.zeros((len(table), size, size), np.float32)
    fr = table["frame"].to_numpy(int)
    for f in np.unique(fr):
        if f not in cache:
            cache[f] = np.asarray(run.series[int(f)])
        sel = np.nonzero(fr == f)[0]
        out[sel] = extract_patches(cache[f], rows[sel], cols[sel], size).patches
    return out


def _gallery_sections(run: RunData, showcase: int, image: np.ndarray, gallery_size: int,
                      localizers: Sequence[str]) -> str:
    from .compare import _centres, plot_patch_gallery, run_localizers

    size = int(run.info.get("parameters", {}).get("patch") or 11)
    size = min(size, *image.shape) if min(image.shape) >= 3 else 3
    size -= 1 - size % 2
    parts = []
    cache = {showcase: image}
    accepted = run.accepted
    # Patches from the overview frame first, then from the frames with most accepted peaks;
    # at most 8 frames are read, because reading frames is what costs here.
    counts = accepted["frame"].value_counts()
    order_frames = [showcase] + [f for f in counts.index if f != showcase]
    frames_used, total = [], 0
    for f in order_frames[:8]:
        frames_used.append(f)
        total += int(counts.get(f, 0))
        if total >= gallery_size:
            break
    acc = accepted[accepted["frame"].isin(frames_used)]
    if len(acc):
        order = _score(acc).sort_values(ascending=False).index
        pick = order[np.unique(np.linspace(0, len(order) - 1, min(gallery_size, len(order))).round().astype(int))]
        chosen = acc.loc[pick]
        patches = _cut(run, chosen, size, cache)
        results, skipped = run_localizers(patches, localizers)
        markers = {name: (t["dx"].to_numpy(float), t["dy"].to_numpy(float),
                          t["converged"].to_numpy(bool) & np.isfinite(t["dx"].to_numpy(float)))
                   for name, t in results.items()}
        score = _score(chosen).to_numpy()
        titles = [f"f{int(r.frame)} ({r.x:.1f}, {r.y:.1f})\nscore {s:.0f}"
                  for r, s in zip(chosen.itertuples(), score, strict=True)]
        fig = plot_patch_gallery(patches, markers, titles, ncols=8)
        note = ""
        if skipped:
            note = "<br>Not shown: " + "; ".join(
                f"<b>{html.escape(k)}</b>: {html.escape(v)}" for k, v in skipped.items())
        parts.append("<h3>Accepted peaks</h3>" + _figure(
            figure_to_data_uri(fig),
            f"{len(chosen)} accepted peaks "
            + (f"of frame {showcase}" if frames_used == [showcase] else
               f"of frames {', '.join(str(int(f)) for f in sorted(frames_used))}")
            + ", "
            f"from the strongest (top left) to the weakest, each a {size}x{size}-pixel patch "
            "around the detected maximum (own linear colour scale). The markers are the centres "
            "found by each localizer; where they coincide the peak is well described by all. "
            "Under each patch: frame, position (x, y) in detector pixels and score." + note,
            "accepted patches"))
    rej = run.peaks[~_ok(run.peaks)]
    if len(rej):
        # A few of every reason, from as few frames as possible (reading frames is the cost).
        rej = rej.assign(_here=(rej["frame"] != showcase)).sort_values(["_here", "frame"])
        reason = rej["reason"].astype(str) if "reason" in rej.columns else pd.Series(
            "rejected", index=rej.index)
        per_reason = max(2, gallery_size // 2 // max(1, reason.nunique()))
        chosen = rej.groupby(reason, sort=True).head(per_reason).head(gallery_size // 2)
        frames_needed = chosen["frame"].unique()
        if len(frames_needed) > 8:
            chosen = chosen[chosen["frame"].isin(frames_needed[:8])]
        patches = _cut(run, chosen, size, cache)
        markers = {"run position": ((chosen["x"] - _centres(chosen)[1]).to_numpy(float),
                                    (chosen["y"] - _centres(chosen)[0]).to_numpy(float),
                                    np.ones(len(chosen), bool))}
        titles = [f"{(getattr(r, 'reason', '') or 'rejected')}\nf{int(r.frame)} ({r.x:.0f}, {r.y:.0f})"
                  for r in chosen.itertuples()]
        fig = plot_patch_gallery(patches, markers, titles, ncols=8, frame_colour="#d62728")
        parts.append("<h3>Rejected peaks</h3>" + _figure(
            figure_to_data_uri(fig),
            "Examples of rejected peaks, a few of each reason, labelled with the reason: "
            "<i>edge</i> = too close to the frame edge or a masked pixel; <i>off_centre</i> = the "
            "brightest pixel is not near the patch centre; <i>flat</i> = no contrast; "
            "<i>not_converged</i> = the localizer failed; <i>crowded</i> = a second peak in the "
            "patch pulled a one-peak localizer (centroid, gauss, pvoigt) off; "
            "<i>duplicate</i> = the same peak found from a second maximum (a streak's other end); "
            "<i>min_score</i>/<i>low_score</i> = too "
            "weak; <i>too_close</i> = a stronger peak nearby. The diamond is the position the "
            "run recorded.", "rejected patches"))
    return "".join(parts) or "<p>No peaks to show.</p>"


# --------------------------------------------------------------------------- report


def _cards(items: Sequence[tuple[str, str]]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"><b>{html.escape(v)}</b><span>{html.escape(k)}</span></div>'
        for k, v in items) + "</div>"


def _details_section(run: RunData) -> str:
    info = run.info
    parts = []
    params = info.get("parameters") or {}
    if params:
        values = [json.dumps(v) if isinstance(v, (list, dict, type(None))) else str(v)
                  for v in params.values()]
        # Three parameter/value column pairs: a long single column wastes the page.
        n = len(values)
        rows = -(-n // 3)
        kv = pd.DataFrame(index=range(rows))
        for k in range(3):
            keys = list(params)[k * rows:(k + 1) * rows]
            vals = values[k * rows:(k + 1) * rows]
            kv[f"parameter{' ' * k}"] = pd.Series(keys + [""] * (rows - len(keys)), dtype=object)
            kv[f"value{' ' * k}"] = pd.Series(vals + [""] * (rows - len(vals)), dtype=object)
        parts.append("<h3>Parameters</h3><p>As given to the run (null = automatic or not "
                     "used).</p>" + table_html(kv, sortable=False, cls="kv"))
    counts = info.get("counts") or {}
    if counts:
        parts.append("<h3>Counts</h3>" + table_html(
            pd.DataFrame({"count": list(counts), "value": list(counts.values())}), sortable=False))
    inputs = info.get("inputs") or []
    if inputs:
        df = pd.DataFrame(inputs)
        parts.append(f"<h3>Input files ({len(df)})</h3><div class=\"scroll\">"
                     + table_html(df.head(500), cls="kv mono") + "</div>")
    if info.get("model"):
        parts.append("<h3>Model</h3>" + table_html(pd.DataFrame([info["model"]]), sortable=False,
                                                    cls="kv mono"))
    skipped = info.get("skipped_frames") or []
    parts.append(f"<h3>Skipped frames ({len(skipped)})</h3>")
    if skipped:
        parts.append('<div class="scroll">' + table_html(pd.DataFrame(skipped).head(1000)) + "</div>")
    else:
        parts.append("<p>None: every frame was read and processed.</p>")
    other = {k: info.get(k) for k in ("braggtrack_version", "command", "started", "finished",
                                      "elapsed_s", "python", "platform", "frame_meta")
             if info.get(k) is not None}
    if info.get("geometry"):
        other["geometry"] = json.dumps(info["geometry"])
    if other:
        parts.append("<h3>Provenance</h3>" + table_html(
            pd.DataFrame({"item": list(other), "value": [str(v) for v in other.values()]}),
            sortable=False, cls="kv"))
    if not parts:
        parts.append("<p>No run.json: only a table was given.</p>")
    return "".join(parts)


def _operando_section(tracks: pd.DataFrame, y: str) -> str:
    from . import analysis

    xs = analysis.x_columns(tracks)
    parts = ["<p>The frames carry cell metadata (" + ", ".join(xs) + "). Below: each particle's "
             f"{html.escape(analysis.axis_label(y))} against it, over the population median and "
             "16-84 % band, then the hysteresis between charge and discharge, and the particles "
             "ranked by how much and how early they respond.</p>"]
    for x in [c for c in ("voltage_V", "state_of_charge", "capacity_mAh", "time_s") if c in xs][:2]:
        try:
            fig = analysis.plot_response(tracks, x, y=y)
        except BraggTrackError as exc:
            parts.append(f'<p class="note">{html.escape(str(exc))}</p>')
            continue
        parts.append(_figure(figure_to_data_uri(fig),
                             f"{html.escape(analysis.axis_label(y))} against "
                             f"{html.escape(analysis.axis_label(x))}. Coloured: the particles with "
                             "the largest response, with 1-sigma error bars. Black line and grey "
                             "band: median and 16-84 percentile of all particles (solid: charge, "
                             "dashed: discharge).", f"{y} vs {x}"))
    x = next((c for c in ("voltage_V", "state_of_charge", "capacity_mAh") if c in xs), xs[0])
    try:
        hyst = analysis.hysteresis(tracks, x, y=y)
    except BraggTrackError as exc:
        hyst = None
        parts.append(f'<p class="note">Hysteresis not computed: {html.escape(str(exc))}</p>')
    if hyst is not None and hyst["ok"].any():
        summary = hyst[hyst["ok"]].groupby("cycle")["area"].agg(
            particles="size", median="median", p16=lambda v: np.percentile(v, 16),
            p84=lambda v: np.percentile(v, 84)).reset_index()
        parts.append(_figure(figure_to_data_uri(analysis.plot_hysteresis(hyst, x=x, y=y)),
                             f"Area between the charge and discharge branches of {y} against "
                             f"{x}, per particle and cycle: zero for a particle that follows the "
                             "same curve both ways.", "hysteresis"))
        parts.append("<h3>Hysteresis per cycle</h3>" + table_html(summary))
    elif hyst is not None:
        parts.append("<p>Hysteresis: no particle was seen on both a charge and a discharge "
                     "branch of the same cycle.</p>")
    xr = "state_of_charge" if "state_of_charge" in xs else x
    try:
        ranks = analysis.rank_particles(tracks, xr, y=y)
    except BraggTrackError:
        ranks = None
    if ranks is not None and len(ranks):
        parts.append(_figure(figure_to_data_uri(analysis.plot_ranking(ranks, x=xr)),
                             f"Each particle's response amplitude against its onset (the {xr} at "
                             "which half of its change is reached on charge), coloured by its lag "
                             f"behind {xr} in frames (cross-correlation).", "ranking"))
        parts.append(f"<h3>Particles ranked by amplitude (against {html.escape(xr)})</h3>"
                     '<div class="scroll">' + table_html(ranks.head(200)) + "</div>")
    return "".join(parts)


def _resolve_out(run: RunData, out) -> Path:
    if out is None:
        return run.root / "report" / "index.html"
    out = Path(out)
    if out.suffix.lower() in (".html", ".htm"):
        return out
    return out / "index.html"


def make_report(
    run_dir,
    out=None,
    *,
    frame: int | None = None,
    max_movie_frames: int = 300,
    gallery_size: int = 48,
    localizers: Sequence[str] = ("braggnn", "pvoigt", "gauss", "centroid"),
    compare_peaks: int = 300,
    movie: bool = True,
    movie_fps: float = 8.0,
    zoom_size: int = 192,
    max_table_rows: int = 2000,
    frames=None,
    dataset: str | None = None,
) -> Path:
    """Write the self-contained HTML report of a run (or of a single peak table).

    Parameters
    ----------
    run_dir : path
        Run folder written by :func:`braggtrack.run`, or a peak/track table file (then
        without the parts that need frames, unless ``frames`` is given).
    out : path, optional
        Output ``.html`` file or folder (``index.html`` inside); default ``RUN_DIR/report/``.
    frame : int, optional
        Frame shown in the overview; default the frame with the most peaks.
    max_movie_frames : int
        At most this many movie frames (input frames evenly subsampled beyond it).
    gallery_size : int
        Accepted patches in the gallery (half as many rejected ones).
    localizers : sequence of str
        Localizers marked in the gallery and compared (those that fail to load are skipped).
    compare_peaks : int
        Accepted peaks (random sample) for the localizer comparison; 0 leaves it out.
    movie : bool
        Make the movie (the slowest part for long series).
    movie_fps : float
        Movie frames per second.
    zoom_size : int
        Side in detector pixels of the full-resolution view.
    max_table_rows : int
        Rows of the particle table in the page (the longest trajectories first).
    frames : path, optional
        Frames to use instead of those ``run.json`` names.
    dataset : str, optional
        HDF5 dataset of the frames.

    Returns
    -------
    Path of ``index.html``; the movie is written beside it (``movie.mp4`` or ``movie.gif``).

    Examples
    --------
    >>> make_report("RUN_DIR")                              # doctest: +SKIP
    PosixPath('RUN_DIR/report/index.html')
    """
    t0 = time.perf_counter()
    if max_movie_frames < 1:
        raise OptionError(f"max_movie_frames must be >= 1, got {max_movie_frames}")
    if gallery_size < 0:
        raise OptionError(f"gallery_size must be >= 0, got {gallery_size}")
    run = load_run(run_dir, frames=frames, dataset=dataset)
    if run.series is None and not run.table_only:
        # Said on the console too: the page alone would hide it from the one who asked.
        logging.getLogger("braggtrack").warning("%s: %s; the report has no frame images",
                                                run_dir, run.frames_note)
    path = _resolve_out(run, out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"{path.parent}: cannot create the report folder ({exc.strerror})") from None
    peaks = run.peaks
    ok = _ok(peaks)
    tracks = run.tracks if run.tracks is not None and len(run.tracks) else None
    n_particles = int(tracks["particle"].nunique()) if tracks is not None else 0
    params = run.info.get("parameters") or {}
    sections: list[tuple[str, str, str]] = []
    notes = []
    if run.table_only:
        notes.append(f"Only a peak table was given ({html.escape(run.source_label)}), "
                     + ("so the parts that need the frames (overview frame, patch galleries, "
                        "localizer comparison, movie) are left out. Run "
                        "<span class=\"mono\">braggtrack report RUN_DIR</span> on the run folder "
                        "for the full report." if run.series is None else "with frames given."))
    elif run.series is None:
        notes.append(f"No frame images: {html.escape(run.frames_note)}. Pass the frames "
                     "(<span class=\"mono\">frames=</span>) for the overview, galleries and movie.")

    # Summary cards.
    n_frames = run.n_frames
    counts = run.info.get("counts") or {}
    skipped = run.info.get("skipped_frames") or []
    cards = [("frames", str(n_frames)), ("frames skipped", str(counts.get("frames_skipped", len(skipped)))),
             ("peaks detected", str(len(peaks))), ("peaks accepted", str(int(ok.sum()))),
             ("particles (trajectories)", str(n_particles))]
    if params.get("localizer"):
        cards.append(("localizer", str(params["localizer"])))
    if run.info.get("elapsed_s") is not None:
        cards.append(("run time", f"{float(run.info['elapsed_s']):.1f} s"))
    intro_note = "".join(f'<div class="note">{n}</div>' for n in notes)
    overview = (_cards(cards) + intro_note +
                "<p>Peaks are local maxima of each frame ranked by <i>persistence</i> (how far "
                "they stand above the saddle to a brighter neighbour); <i>score</i> is persistence "
                "on a 0-255 scale of the frame's range. Accepted peaks passed every filter and "
                "were localized to sub-pixel precision; rejected ones are kept in peaks.parquet "
                "with the reason. Accepted peaks are linked across frames into trajectories "
                "(one <i>particle</i> each). Coordinates: x = detector column, y = row, in "
                "full-resolution pixels, pixel (0,0) centred at (0.0, 0.0).</p>")
    sections.append(("summary", "Summary", overview))

    image = norm = None
    showcase = None
    if run.series is not None and len(run.series):
        if frame is not None:
            if not 0 <= frame < len(run.series):
                raise OptionError(f"frame {frame} is outside the series (0..{len(run.series) - 1})")
            showcase = int(frame)
        else:
            per_frame = peaks["frame"].value_counts()
            valid = per_frame[(per_frame.index >= 0) & (per_frame.index < len(run.series))]
            showcase = int(valid.idxmax()) if len(valid) else 0
        try:
            image = np.asarray(run.series[showcase], dtype=np.float32)
        except BraggTrackError as exc:
            sections.append(("frame", "Overview frame", f'<p class="note">Frame {showcase} could '
                             f"not be read: {html.escape(str(exc))}</p>"))
            image = None
    if image is not None:
        norm = display_norm(image)
        in_frame = peaks[peaks["frame"] == showcase]
        box = densest_box(in_frame[_ok(in_frame)] if _ok(in_frame).any() else in_frame,
                          image.shape, zoom_size)
        fig = plot_frame_peaks(image, in_frame, frame=showcase, norm=norm, box=box)
        zfig, zdpi = plot_zoom(image, in_frame, box, norm=norm)
        x0, y0, x1, y1 = box
        body = _figure(
            figure_to_data_uri(fig),
            f"Frame {showcase} (the frame with the most peaks{'' if frame is None else ', as chosen'}"
            "). Colour: detector counts "
            + ("on an asinh scale (linear near the background, logarithmic for bright spots) so "
               "that weak and strong peaks are both visible. " if type(norm).__name__ == "AsinhNorm"
               else "on a linear scale (the counts span less than a decade). ")
            + "Cyan circles: "
            "accepted peaks, the larger the higher their score; red crosses: rejected peaks. "
            "Dashed yellow box: the region shown at full resolution below.", "frame with peaks")
        where = ("the whole frame" if (x1 - x0, y1 - y0) == (image.shape[1], image.shape[0])
                 else "the region with the most accepted peaks")
        body += (f"<h3>Full-resolution view: x {x0}..{x1 - 1}, y {y0}..{y1 - 1} ({where})</h3>"
                 f'<div class="zoombox"><img class="zoomable" alt="full-resolution region" '
                 f'src="{figure_to_data_uri(zfig, dpi=zdpi)}"></div>'
                 "<figcaption>Every detector pixel is a square. Click to magnify 3x (and again to "
                 "go back); scroll to pan. Cyan circle and cross: accepted peak at its sub-pixel "
                 "position; red cross: rejected peak.</figcaption>")
        sections.append(("frame", "Overview frame", body))

    # Movie.
    movie_note = ""
    if movie and run.series is not None and image is not None:
        n = len(run.series)
        if n > max_movie_frames:
            chosen_frames = np.unique(np.linspace(0, n - 1, max_movie_frames).round().astype(int))
            movie_note = (f" The series has {n} frames; the movie shows {len(chosen_frames)} of "
                          f"them, evenly spaced (every {n / len(chosen_frames):.1f}th).")
        else:
            chosen_frames = np.arange(n)
            movie_note = " One movie frame per input frame."
        try:
            mpath, mime = write_movie(run.series, peaks, tracks, path.parent / "movie.mp4",
                                      frames=chosen_frames, norm=norm, fps=movie_fps)
            data = base64.b64encode(mpath.read_bytes()).decode("ascii")
            if mime == "video/mp4":
                player = (f'<video controls loop muted autoplay playsinline preload="auto" '
                          f'src="data:video/mp4;base64,{data}"></video>')
            else:
                player = f'<img class="movie" alt="movie" src="data:image/gif;base64,{data}">'
                movie_note += " (ffmpeg was not usable; an animated GIF is shown instead.)"
            body = (player + "<figcaption>The series frame by frame, same colour scale as the "
                    "overview. Cyan circles: accepted peaks; red crosses: rejected peaks; coloured "
                    "lines: the last positions of each particle (trail), one colour per particle. "
                    f"Frame number top left.{movie_note} Also saved as "
                    f"<span class=\"mono\">{html.escape(mpath.name)}</span> beside this page."
                    "</figcaption>")
        except BraggTrackError as exc:
            body = f'<p class="note">No movie: {html.escape(str(exc))}</p>'
        sections.append(("movie", "Movie", body))

    sections.append(("counts", "Peaks per frame and scores", _figure(
        figure_to_data_uri(plot_counts(run)),
        "Left: number of accepted (blue) and rejected (red) peaks in each frame; dotted grey "
        "lines mark frames that could not be read or processed. Middle: distribution of the "
        "score (log scale) - accepted peaks should sit clearly above the noise. Right: how many "
        "peaks each rejection reason removed.", "counts and scores")))

    if image is not None and gallery_size > 0:
        sections.append(("patches", "Patch galleries",
                         _gallery_sections(run, showcase, image, gallery_size, localizers)))

    if compare_peaks > 0 and run.series is not None and ok.any():
        from .compare import compare_localizers, comparison_section

        try:
            result = compare_localizers(run, localizers=localizers, max_peaks=compare_peaks)
            sections.append(("compare", "Localizer comparison",
                             comparison_section(result, n_worst=min(18, len(result.peaks)))))
        except BraggTrackError as exc:
            sections.append(("compare", "Localizer comparison",
                             f'<p class="note">Not run: {html.escape(str(exc))}</p>'))

    if tracks is not None:
        from .analysis import axis_label, x_columns

        body = _figure(figure_to_data_uri(plot_trajectories(
            tracks, image=image, shape=image.shape if image is not None else
            tuple(run.info.get("frame_shape") or ()) or None, norm=norm)),
            "Each line is one particle's path over the detector, from the frame where it was first "
            "found (dot) to the last; colours only tell particles apart. The faint background is "
            "the overview frame. Long straight trajectories with a radial direction are what "
            "lattice strain looks like; erratic ones are worth a look in the movie.",
            "trajectories")
        y = next((c for c in ("strain", "radial_shift") if c in tracks.columns
                  and tracks[c].notna().any()), None)
        if y is not None:
            what = ("strain = d/d_ref - 1 from the detector geometry" if y == "strain" else
                    "radial shift = change of the distance to the beam centre in pixels (no "
                    "geometry was given, so no strain)")
            body += _figure(figure_to_data_uri(plot_response_vs_frame(tracks, y)),
                            f"The longest trajectories: {what}, against frame, with 1-sigma error "
                            "bars from the localizer. A common trend is a real lattice change; a "
                            "step in a single particle is often a peak jumping pixel or "
                            "overlapping a neighbour.", f"{y} vs frame")
            if x_columns(tracks):
                sections.append(("trajectories", "Trajectories", body))
                sections.append(("operando", f"{axis_label(y)} against cell state",
                                 _operando_section(tracks, y)))
                body = None
        else:
            body += "<p>No strain or radial shift column: the tracks carry positions only.</p>"
        if body is not None:
            sections.append(("trajectories", "Trajectories", body))

    if run.particles is not None and len(run.particles):
        parts_df = run.particles
        if "n_frames" in parts_df.columns:
            parts_df = parts_df.sort_values("n_frames", ascending=False)
        shown = min(len(parts_df), max_table_rows)
        sections.append(("particles", f"Particles ({len(parts_df)})",
                         "<p>One row per trajectory. Click a column header to sort."
                         + (f" The {shown} longest of {len(parts_df)} are listed; all are in "
                            "particles.parquet." if shown < len(parts_df) else "")
                         + '</p><div class="scroll">'
                         + table_html(parts_df.head(shown)) + "</div>"))

    sections.append(("details", "Run details", _details_section(run)))
    elapsed = time.perf_counter() - t0
    name = Path(frames_source(run.info) or run.source_label).name
    subtitle = html.escape(
        f"{name} | {run.source_label} | braggtrack {run.info.get('braggtrack_version', '')} | "
        f"report written {time.strftime('%Y-%m-%d %H:%M')} in {elapsed:.1f} s")
    page = page_html(f"braggtrack report: {name}", sections, subtitle=subtitle)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
