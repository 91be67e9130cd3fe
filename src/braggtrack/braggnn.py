"""BraggNN-family CNN localizer: sub-pixel peak centres from N x N patches.

The network follows BraggNN (Liu et al., IUCrJ 9 (2022) 104-113): a min-max normalized
N x N patch goes through 3x3 convolutions with LeakyReLU, optionally a non-local
(self-attention) block after the first convolution, and a small dense head.  Two things
differ from the published model, both chosen by measurement (see ``MODEL_CARD.md``):

* the default widths are slim (16-24-16 channels, about 0.3 M multiply-adds a patch
  against 2.1 M for the published 64-32-8 + non-local model).  Trained on exact-truth
  simulated patches it is as accurate and about 10x faster; the published widths
  remain available through :class:`BraggNNConfig`.
* the head predicts, besides the offset ``(dx, dy)`` of the peak centre from the patch's
  central pixel (pixels, x = column, y = row), a log-variance per axis trained with a
  Gaussian (beta-)negative log-likelihood.  ``exp(logvar / 2)`` is the 1-sigma error
  reported as ``dx_err``/``dy_err``; an error above the model's ``ood_sigma`` (set from
  the validation set at training time) or, for patches that are not sparse
  (zero-background frame-cache data), an SNR below ``min_snr`` flags the patch as
  ``out_of_distribution``.

Optionally the forward pass averages the predictions over symmetries of the square
(``BraggNNConfig.symmetries``, test-time augmentation inside the model, so exports
include it).  For large inputs :func:`predict` runs the network through ONNX Runtime when
it is installed (its CPU kernels are several times faster than eager PyTorch on these
small convolutions); the session is built from the model's own export and cached on it.

Weights are read only from safetensors files (+ a JSON config) or from torch files with
``torch.load(weights_only=True)``, so loading a model never executes code from the file.
The network is written here (rather than imported) because no maintained package ships
a BraggNN; it is a few dozen lines of PyTorch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import pandas as pd
import torch
from torch import nn

from .errors import ModelError, OptionError
from .localize import _nb_border_median, _nb_median
from .patches import as_patch_stack

__all__ = [
    "BraggNN",
    "BraggNNConfig",
    "NonLocalBlock",
    "DEFAULT_MODEL",
    "load_model",
    "save_model",
    "predict",
    "export_model",
    "normalize_patches",
    "patch_stats",
    "relative_noise",
    "patch_centroid",
    "sparse_patches",
    "resolve_device",
    "count_macs",
]

#: The shipped model (safetensors) and its JSON config with the sha256 of the weights.
DEFAULT_MODEL = Path(__file__).parent / "data" / "braggnn_default.safetensors"

#: Columns of :func:`predict`, the same as :func:`braggtrack.localize.localize`.
PREDICT_COLUMNS = (
    "dx", "dy", "dx_err", "dy_err", "sigma_x", "sigma_y",
    "amplitude", "background", "intensity", "converged", "reason",
)


@dataclass(frozen=True)
class BraggNNConfig:
    """Architecture and input-domain description of a :class:`BraggNN`.

    Parameters
    ----------
    patch : int
        Patch size N (odd); the network sees N x N patches.
    channels : tuple of int
        Output channels of the 3x3 convolutions (valid padding, so each shrinks the map by 2).
    nonlocal_block : bool
        Insert a non-local (self-attention) block after the first convolution, as in BraggNN.
    dense : tuple of int
        Hidden widths of the fully connected head.
    ood_sigma : float
        Predicted 1-sigma error (px) above which a patch is flagged out of distribution.
    max_offset : float
        Largest |dx| or |dy| (px) from the centre of the maximum of the 3x3-smoothed
        patch seen in training; patches whose maximum is further out are flagged.
    min_snr : float
        Smallest signal-to-noise ratio (see :func:`patch_stats`) seen in training;
        patches below it are flagged, except sparse (zero-background) patches, whose
        noise cannot be measured.
    noise_channel : bool
        Feed the network a second, constant input plane with the patch's noise relative
        to its range (see :func:`relative_noise`), the information min-max normalization
        removes.  It is computed inside :meth:`BraggNN.forward`, so the input of the
        network (and of exported models) stays one normalized plane.
    gated_centroid : bool
        The centre is the network's own output plus a gate it predicts (a sigmoid, 0..1)
        times the patch's centroid (:func:`patch_centroid`, computed inside
        :meth:`BraggNN.forward`, so exports are unchanged): the network can lean on the
        centroid for bright isolated peaks, where it is already close, and ignore it for
        weak or crowded ones, where it is not.
    symmetries : int
        Test-time averaging over this many symmetries of the square (1, 2, 4 or 8:
        identity; + 180-degree rotation; + the two transposes; + the four remaining
        flips/rotations), with labels mapped back.  Costs that many forward passes at
        inference (training uses one view); the predicted variance becomes the mean of
        the views' variances plus their spread.
    """

    patch: int = 11
    channels: tuple[int, ...] = (16, 24, 16)
    nonlocal_block: bool = False
    dense: tuple[int, ...] = (64, 32)
    ood_sigma: float = 1.0
    max_offset: float = 2.0
    min_snr: float = 0.0
    noise_channel: bool = False
    symmetries: int = 1
    gated_centroid: bool = False

    def __post_init__(self) -> None:
        if self.patch < 5 or self.patch % 2 == 0:
            raise OptionError(f"patch size must be odd and >= 5, got {self.patch}")
        if self.patch - 2 * len(self.channels) < 1:
            raise OptionError(
                f"{len(self.channels)} valid 3x3 convolutions do not fit a {self.patch}-pixel patch"
            )
        if not self.channels or min(self.channels) < 1 or (self.dense and min(self.dense) < 1):
            raise OptionError("channel and dense widths must be positive")
        if self.symmetries not in (1, 2, 4, 8):
            raise OptionError(f"symmetries must be 1, 2, 4 or 8, got {self.symmetries}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> BraggNNConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            # A setting this version does not know may change what the network computes
            # (as gated_centroid does): refuse rather than build a different network.
            raise OptionError(f"unknown model setting(s) {', '.join(unknown)} (a model from "
                              "another braggtrack version?)")
        kw = dict(d)
        for k in ("channels", "dense"):
            if k in kw:
                kw[k] = tuple(int(v) for v in kw[k])
        return cls(**kw)


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al. 2018), as used by BraggNN.

    Every position attends to every other one; the output is added to the input.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(channels // 2, 1)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # n, hw, c'
        phi = self.phi(x).flatten(2)  # n, c', hw
        g = self.g(x).flatten(2).transpose(1, 2)  # n, hw, c'
        attn = torch.softmax(theta @ phi, dim=-1)
        y = (attn @ g).transpose(1, 2).reshape(n, -1, h, w)
        return x + self.out(y)


def relative_noise(normed: torch.Tensor) -> torch.Tensor:
    """Pixel noise of min-max normalized patches ``(n, 1, N, N)`` as a fraction of their range.

    Robust estimate: 1.4826 x the median absolute difference of neighbouring pixels
    (rows and columns) over sqrt(2); the peak's own slopes touch few of the differences.
    Zero-background (thresholded) patches give 0.  Written with ``sort`` rather than
    ``median`` so that the ONNX export holds only standard operators.

    Examples
    --------
    >>> import torch
    >>> float(relative_noise(torch.zeros(1, 1, 5, 5))[0])
    0.0
    """
    dy = (normed[:, :, 1:, :] - normed[:, :, :-1, :]).abs().flatten(1)
    dx = (normed[:, :, :, 1:] - normed[:, :, :, :-1]).abs().flatten(1)
    diffs = torch.cat([dy, dx], dim=1)
    med = torch.sort(diffs, dim=1).values[:, diffs.shape[1] // 2]
    return med * (1.4826 / math.sqrt(2.0))


def patch_centroid(normed: torch.Tensor) -> torch.Tensor:
    """Centroid ``(dx, dy)`` (px from the central pixel) of min-max normalized patches
    ``(n, 1, N, N)``, weighted by the square of what rises above the patch's median.

    The square keeps the peak's core in charge against a sloping background; the median
    is the background level of a patch the peak covers less than half of (taken with
    ``topk`` of the smaller half, which exports to one ONNX operator and is 1.45x faster
    than a full ``sort``).  A flat patch gives 0.

    Examples
    --------
    >>> import torch
    >>> p = torch.zeros(1, 1, 5, 5)
    >>> p[0, 0, 2, 3] = 1.0
    >>> patch_centroid(p).tolist()
    [[1.0, 0.0]]
    """
    n, _, h, w = normed.shape
    flat = normed.flatten(1)
    level = torch.topk(flat, flat.shape[1] // 2 + 1, dim=1, largest=False).values[:, -1]
    weight = (torch.relu(flat - level[:, None]) ** 2).reshape(n, h, w)
    total = weight.flatten(1).sum(dim=1)
    rows = torch.arange(h, dtype=normed.dtype, device=normed.device) - (h // 2)
    cols = torch.arange(w, dtype=normed.dtype, device=normed.device) - (w // 2)
    cx = (weight.sum(dim=1) * cols).sum(dim=1)
    cy = (weight.sum(dim=2) * rows).sum(dim=1)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return torch.stack([cx / safe, cy / safe], dim=1)


class BraggNN(nn.Module):
    """BraggNN-family localizer.

    ``forward`` takes min-max normalized patches ``(n, 1, N, N)`` and returns ``(n, 4)``:
    ``dx, dy`` (px from the central pixel; x = column, y = row) and the log-variances of
    ``dx`` and ``dy`` (px^2).  With ``config.noise_channel`` the first convolution also
    sees a constant plane, ``log10`` of :func:`relative_noise` scaled to about -1..1.

    Examples
    --------
    >>> import torch
    >>> net = BraggNN(BraggNNConfig(patch=11))
    >>> net(torch.zeros(2, 1, 11, 11)).shape
    torch.Size([2, 4])
    """

    def __init__(self, config: BraggNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or BraggNNConfig()
        cfg = self.config
        layers: list[nn.Module] = []
        cin = 2 if cfg.noise_channel else 1
        for i, cout in enumerate(cfg.channels):
            layers.append(nn.Conv2d(cin, cout, 3))
            if i == 0 and cfg.nonlocal_block:
                layers.append(NonLocalBlock(cout))
            layers.append(nn.LeakyReLU(0.01))
            cin = cout
        self.features = nn.Sequential(*layers)
        side = cfg.patch - 2 * len(cfg.channels)
        head: list[nn.Module] = [nn.Flatten()]
        width = cin * side * side
        for hidden in cfg.dense:
            head += [nn.Linear(width, hidden), nn.LeakyReLU(0.01)]
            width = hidden
        # With gated_centroid a fifth output, the gate's logit.
        head.append(nn.Linear(width, 5 if cfg.gated_centroid else 4))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.config.symmetries
        if k == 1 or self.training:
            return self._single(x)
        # Views: (flip columns, flip rows, transpose); the sequence makes every prefix of
        # length 2 and 4 a group (identity + rot180; + both transposes).
        views = ((0, 0, 0), (1, 1, 0), (0, 0, 1), (1, 1, 1), (1, 0, 0), (0, 1, 0), (1, 0, 1), (0, 1, 1))[:k]
        batch = []
        for fx, fy, sw in views:
            v = x
            if fx:
                v = torch.flip(v, dims=[3])
            if fy:
                v = torch.flip(v, dims=[2])
            if sw:
                v = v.transpose(2, 3)
            batch.append(v)
        out = self._single(torch.cat(batch, dim=0)).reshape(k, -1, 4)
        dxs, dys, lvx, lvy = [], [], [], []
        for i, (fx, fy, sw) in enumerate(views):
            dx, dy, vx, vy = out[i, :, 0], out[i, :, 1], out[i, :, 2], out[i, :, 3]
            if sw:
                dx, dy, vx, vy = dy, dx, vy, vx
            dxs.append(-dx if fx else dx)
            dys.append(-dy if fy else dy)
            lvx.append(vx)
            lvy.append(vy)
        mx, my = torch.stack(dxs).mean(0), torch.stack(dys).mean(0)
        var_x = torch.stack(lvx).exp().mean(0) + torch.stack(dxs).var(0, unbiased=False)
        var_y = torch.stack(lvy).exp().mean(0) + torch.stack(dys).var(0, unbiased=False)
        return torch.stack([mx, my, var_x.log().clamp(-14.0, 8.0), var_y.log().clamp(-14.0, 8.0)], dim=1)

    def __getstate__(self) -> dict:
        # The ONNX Runtime session cached by predict() cannot be pickled; it is rebuilt.
        state = self.__dict__.copy()
        state.pop("_ort_cache", None)
        return state

    def _single(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        centre = patch_centroid(x) if cfg.gated_centroid else None
        if cfg.noise_channel:
            level = (torch.log10(relative_noise(x).clamp(min=1e-3)) + 1.5) / 1.5
            x = torch.cat([x, level[:, None, None, None].expand_as(x)], dim=1)
        out = self.head(self.features(x))
        xy = out[:, :2] if centre is None else out[:, :2] + torch.sigmoid(out[:, 4:5]) * centre
        # Clamp the log-variance so that exp() stays finite on garbage input.
        return torch.cat([xy, out[:, 2:4].clamp(-14.0, 8.0)], dim=1)


def count_macs(config: BraggNNConfig) -> int:
    """Multiply-adds per patch of a :class:`BraggNN` with ``config`` (convolutions + dense,
    times the number of test-time symmetry views; the gated centroid's few hundred additions
    and its top-k for the patch median are not counted).

    Examples
    --------
    >>> count_macs(BraggNNConfig()) > 0
    True
    """
    macs = 0
    side = config.patch
    cin = 2 if config.noise_channel else 1
    for i, cout in enumerate(config.channels):
        side -= 2
        macs += side * side * cout * cin * 9
        if i == 0 and config.nonlocal_block:
            hw = side * side
            inner = max(cout // 2, 1)
            macs += 3 * hw * cout * inner + 2 * hw * hw * inner + hw * inner * cout
        cin = cout
    width = cin * side * side
    for hidden in (*config.dense, 5 if config.gated_centroid else 4):
        macs += width * hidden
        width = hidden
    return int(macs) * config.symmetries


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``'auto'`` -> CUDA when available, else CPU; ``'cuda'`` without a GPU is an OptionError.

    Examples
    --------
    >>> resolve_device("cpu").type
    'cpu'
    """
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError(f"device {name!r} requested but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise OptionError(f"unknown device {name!r}; use 'cpu', 'cuda' or 'auto'") from None


# ----------------------------------------------------------------------------- I/O


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _config_path(path: Path) -> Path:
    return path.with_suffix(".json")


def save_model(model: BraggNN, path: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Save weights as ``path`` (.safetensors) plus ``path.with_suffix('.json')``.

    The JSON holds the :class:`BraggNNConfig`, the sha256 of the weights file and any
    ``extra`` JSON-able information (training summary).  A ``.pt`` path writes a plain
    dict of tensors and strings that ``torch.load(weights_only=True)`` can read.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = save_model(BraggNN(), pathlib.Path(tempfile.mkdtemp()) / "m.safetensors")
    >>> p.with_suffix(".json").exists()
    True
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    cfg = model.config.to_json()
    if path.suffix == ".pt":
        torch.save({"state_dict": state, "config": cfg, "format": "braggtrack-braggnn"}, path)
    else:
        save_file(state, str(path), metadata={"config": cfg, "format": "braggtrack-braggnn"})
    info = {"config": json.loads(cfg), "weights": path.name, "sha256": _sha256(path)}
    if extra:
        info.update(extra)
    _config_path(path).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return path


#: Protobuf tags that may follow ONNX's leading ``ir_version`` field (fields 2-8 of ModelProto).
_ONNX_NEXT_TAGS = frozenset({0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42})


def _export_kind(path: Path) -> str | None:
    """``'a TorchScript'`` or ``'an ONNX'`` when ``path`` is an export, else None.

    Recognised by content as well as by name, since ``braggtrack export`` writes
    TorchScript as ``.pt`` (the suffix :func:`save_model` also uses for plain weights)
    and a renamed file keeps its content.  A TorchScript archive is a zip holding
    ``code/`` and ``constants.pkl``; a ``torch.save`` zip holds neither.  ONNX is a
    protobuf opening with its ``ir_version`` varint (tag 0x08) and a further field tag;
    a pickle opens with 0x80, and a safetensors file is told apart by the ``{`` of its
    JSON header at byte 8.
    """
    import zipfile

    if path.suffix.lower() == ".onnx":
        return "an ONNX"
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "a TorchScript"
        return None
    looks_safetensors = len(head) > 8 and head[8:9] == b"{"
    if (
        not looks_safetensors and len(head) >= 3 and head[0] == 0x08
        and 1 <= head[1] <= 0x7F and head[2] in _ONNX_NEXT_TAGS
    ):
        return "an ONNX"
    return None


def _looks_safetensors(path: Path) -> bool:
    """True when ``path`` opens like a safetensors file (u64 header length, then ``{``).

    Lets a model saved under another suffix (``model.txt`` from before ``train`` checked
    the name) be read as what it is instead of as a torch pickle.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = path.stat().st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < size


def _torch_load_problem(exc: Exception) -> str:
    """One line from a ``torch.load`` error, without torch's advice to drop weights_only."""
    import re

    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it would import {found.group(1)} (unsafe pickle)"
    if text.startswith("Weights only load failed"):
        return "not a plain dict of tensors and strings"
    return text.splitlines()[0]


def load_model(path: str | os.PathLike | None = None, device: str = "cpu") -> BraggNN:
    """Load a BraggNN safely: the shipped model by default, or a user's file.

    Accepted files: ``.safetensors`` (config from the file's metadata or the sidecar
    ``.json``), or a torch file (``.pt``/``.pth``) read with ``torch.load(weights_only=True)``
    holding ``{"state_dict": ..., "config": json}``.  No code from the file is ever run.
    When the sidecar JSON records a sha256 (always for the shipped model) it is checked.

    Raises
    ------
    ModelError
        Missing or unreadable file, unsafe pickle, checksum mismatch, wrong or non-finite
        (NaN, inf) tensors, or a TorchScript / ONNX file from :func:`export_model` (those
        are for other tools).

    Examples
    --------
    >>> model = load_model()
    >>> model.config.patch
    11
    """
    shipped = path is None
    path = DEFAULT_MODEL if shipped else Path(path)
    dev = resolve_device(device)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    kind = _export_kind(path)
    if kind is not None:
        # Refused before torch.load, which would warn and suggest weights_only=False.
        raise ModelError(
            f"{path} is {kind} export for other tools; --model needs the .safetensors file "
            "(with its .json) that braggtrack train or the shipped model provides"
        )
    sidecar = _config_path(path)
    info: dict = {}
    if sidecar.is_file() and sidecar != path:
        try:
            info = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            raise ModelError(f"{sidecar}: model config is not valid JSON") from None
    if shipped and "sha256" not in info:
        raise ModelError(f"{sidecar}: shipped model config lacks its sha256")
    if "sha256" in info and _sha256(path) != info["sha256"]:
        raise ModelError(f"{path}: sha256 does not match {sidecar.name} (corrupted or replaced)")

    cfg_json = None
    if path.suffix.lower() == ".safetensors" or _looks_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several private error types
            raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None
        cfg_json = meta.get("config")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for unsafe globals, RuntimeError, ...
            first = _torch_load_problem(exc)
            raise ModelError(
                f"{path}: refused or unreadable torch file (only weights are loaded): {first}"
            ) from None
        if isinstance(obj, dict) and "state_dict" in obj:
            state = obj["state_dict"]
            cfg_json = obj.get("config")
        elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            state = obj
        else:
            raise ModelError(f"{path}: torch file holds no BraggNN state_dict")
    cfg_dict = info.get("config")
    if cfg_dict is None and cfg_json:
        cfg_dict = json.loads(cfg_json) if isinstance(cfg_json, str) else cfg_json
    if cfg_dict is None:
        raise ModelError(f"{path}: no model config (neither in the file nor in {sidecar.name})")
    try:
        config = BraggNNConfig.from_dict(cfg_dict)
        model = BraggNN(config)
        model.load_state_dict(state)
    except (OptionError, RuntimeError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path}: model config or weights refused: {first}") from None
    # A NaN weight makes every prediction NaN, which the out-of-distribution flag then
    # marks on every peak: refuse the file instead (a diverged training writes such files).
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{path}: weights hold NaN or infinite values (tensor {name}); "
                             "the model is unusable (did its training diverge?)")
    return model.to(dev).eval()


# ------------------------------------------------------------------------ inference


def normalize_patches(patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min-max normalize each patch to 0..1; flat patches become zeros.

    Returns ``(normed float32 (n, N, N), flat bool (n,))``.  Non-finite pixels are set
    to the patch minimum first so that one hot/NaN pixel cannot poison the output.

    Examples
    --------
    >>> import numpy as np
    >>> normed, flat = normalize_patches(np.stack([np.eye(3), np.ones((3, 3))]))
    >>> float(normed[0].max()), bool(flat[1])
    (1.0, True)
    """
    p = np.asarray(patches, dtype=np.float32)
    if p.ndim != 3:
        raise OptionError(f"patches must be a (n, N, N) array, got shape {p.shape}")
    finite = np.isfinite(p)
    if not finite.all():
        lo = np.where(finite, p, np.inf).min(axis=(1, 2), keepdims=True)
        p = np.where(finite, p, np.where(np.isfinite(lo), lo, 0.0)).astype(np.float32)
    lo = p.min(axis=(1, 2), keepdims=True)
    hi = p.max(axis=(1, 2), keepdims=True)
    span = hi - lo
    # Flat relative to the patch's own magnitude (float32 rounding), not to 1 count: frames
    # normalized to the incident flux (values ~1e-10) are no flatter than counts.
    flat = (span <= 1e-6 * np.maximum(np.abs(lo), np.abs(hi)))[:, 0, 0]
    normed = np.where(flat[:, None, None], 0.0, (p - lo) / np.where(span > 0, span, 1.0))
    return normed.astype(np.float32), flat


@numba.njit(cache=True, nogil=True)
def _patch_summaries(p):  # pragma: no cover - compiled
    """Per patch (finite float32), in one pass: border median, pixel noise (1.4826 x median
    absolute neighbour difference / sqrt 2), the 3x3-box maximum and its flat index (edges
    repeated, rows then columns, as ``scipy.ndimage.uniform_filter`` with ``mode='nearest'``),
    the background-subtracted sums (total, x, y, x^2, y^2) and the maximum.

    Compiled because the numpy version (medians by partition, a filter, a dozen
    temporaries) cost as much as the network itself on chunk-sized batches.
    """
    n, size, _ = p.shape
    out = np.empty((n, 10))
    # float64 scratch: the medians average their two middle values in float64, as before
    border = np.empty(4 * size - 4)
    diffs = np.empty(2 * size * (size - 1))
    rows = np.empty((size, size), np.float32)
    last = size - 1
    for t in range(n):
        q = p[t]
        bg = _nb_border_median(q, border)
        k = 0
        for j in range(last):
            for i in range(size):
                diffs[k] = abs(q[j + 1, i] - q[j, i])  # float32 difference, as numpy
                k += 1
        for j in range(size):
            for i in range(last):
                diffs[k] = abs(q[j, i + 1] - q[j, i])
                k += 1
        noise = 1.4826 * _nb_median(diffs, k) / np.sqrt(2.0)
        for j in range(size):
            for i in range(size):
                s3 = (np.float64(q[max(j - 1, 0), i]) + np.float64(q[j, i])
                      + np.float64(q[min(j + 1, last), i]))
                rows[j, i] = np.float32(s3 / 3.0)
        best = -np.inf
        arg = 0
        for j in range(size):
            for i in range(size):
                s3 = (np.float64(rows[j, max(i - 1, 0)]) + np.float64(rows[j, i])
                      + np.float64(rows[j, min(i + 1, last)]))
                v = np.float32(s3 / 3.0)
                if v > best:
                    best = v
                    arg = j * size + i
        total = 0.0
        sx = 0.0
        sy = 0.0
        sxx = 0.0
        syy = 0.0
        top = -np.inf
        for j in range(size):
            for i in range(size):
                v = np.float64(q[j, i])
                top = max(top, v)
                s = v - bg
                if s > 0:
                    total += s
                    sx += s * i
                    sy += s * j
                    sxx += s * i * i
                    syy += s * j * j
        out[t, 0] = bg
        out[t, 1] = noise
        out[t, 2] = best
        out[t, 3] = arg
        out[t, 4] = total
        out[t, 5] = top
        out[t, 6] = sx
        out[t, 7] = sy
        out[t, 8] = sxx
        out[t, 9] = syy
    return out


def _summaries(patches: np.ndarray) -> np.ndarray:
    """:func:`_patch_summaries` of raw patches, non-finite pixels counted as 0."""
    p = np.asarray(patches, dtype=np.float32)
    if not np.isfinite(p).all():
        p = np.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0)
    return _patch_summaries(np.ascontiguousarray(p))


def _snr_offset(summ: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    noise = summ[:, 1]
    idx = summ[:, 3].astype(np.int64)
    c = size // 2
    offset = np.maximum(np.abs(idx // size - c), np.abs(idx % size - c))
    height = summ[:, 2] - summ[:, 0]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        snr = np.where(noise > 0, height / (noise / 3.0), np.where(height > 0, np.inf, 0.0))
    return snr, offset


def patch_stats(patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Input statistics used for the out-of-distribution flag.

    Returns ``(snr, offset)``: the height of the 3x3-smoothed maximum above the border
    median, over the noise of a 3x3 mean (pixel noise from the median absolute
    neighbour difference, divided by 3); and the Chebyshev distance (px) of that
    smoothed maximum from the central pixel.  Smoothing keeps single hot pixels from
    passing as peaks.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[:11, :11]
    >>> peak = rng.poisson(10 + 500 * np.exp(-((xx - 5) ** 2 + (yy - 5) ** 2) / 2))
    >>> snr, offset = patch_stats(peak[None])
    >>> bool(snr[0] > 20), int(offset[0])
    (True, 0)
    """
    p = np.asarray(patches, dtype=np.float32)
    return _snr_offset(_summaries(p), p.shape[-1])


def sparse_patches(patches: np.ndarray, fraction: float = 0.4) -> np.ndarray:
    """True for thresholded (zero-background) patches: at least ``fraction`` of the pixels
    equal the patch minimum, as in sparse frame-cache data where pixels below a threshold
    are stored as exactly 0.

    Examples
    --------
    >>> import numpy as np
    >>> spot = np.zeros((1, 11, 11)); spot[0, 5, 5] = 8.0
    >>> bool(sparse_patches(spot)[0])
    True
    """
    p = np.asarray(patches)
    lo = p.min(axis=(1, 2), keepdims=True)
    return (p == lo).mean(axis=(1, 2)) >= fraction


def _moments(summ: np.ndarray) -> dict[str, np.ndarray]:
    """Background (border median), amplitude, intensity and second-moment widths, from
    :func:`_patch_summaries`."""
    background, total = summ[:, 0], summ[:, 4]
    safe = np.where(total > 0, total, 1.0)
    mx, my = summ[:, 6] / safe, summ[:, 7] / safe
    vx = summ[:, 8] / safe - mx**2
    vy = summ[:, 9] / safe - my**2
    return {
        "background": background,
        "amplitude": np.clip(summ[:, 5] - background, 0.0, None),
        "intensity": total,
        "sigma_x": np.sqrt(np.clip(vx, 0.0, None)) * (total > 0),
        "sigma_y": np.sqrt(np.clip(vy, 0.0, None)) * (total > 0),
    }


#: Smallest number of patches for which :func:`predict` runs the network through ONNX
#: Runtime (when installed): its CPU kernels are 2-4x faster than eager PyTorch on these
#: small convolutions (measured: 2.0x at 600 patches, 2.4x at 2,000), and the one-off export
#: (about 0.5 s) pays off from a chunk of frames on; one interactive frame stays on PyTorch.
ORT_MIN_PATCHES = 1024


def _ort_session(model: BraggNN, threads: int | None):
    """An ONNX Runtime session of ``model``, cached on the model object.

    The cache key holds the version counters of the weights (bumped by every in-place
    update, e.g. an optimizer step) and the thread count, so a changed model is
    re-exported.  Returns None when onnxruntime is missing or the export fails.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    nthreads = int(threads) if threads is not None else torch.get_num_threads()
    key = (tuple(t._version for t in model.state_dict(keep_vars=True).values()), nthreads,
           model.config)
    cached = getattr(model, "_ort_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    import io
    import warnings

    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Exportable(model).eval(), (torch.rand(2, 1, model.config.patch, model.config.patch),),
                buffer, input_names=["patches"], output_names=["dx_dy_logvar"],
                dynamic_axes={"patches": {0: "n"}, "dx_dy_logvar": {0: "n"}},
                opset_version=17, dynamo=False,
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = nthreads
        options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: in a run the network shares the cores
        # with detection threads, and spinning took ~7 % of the CPU for nothing.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    except Exception:  # an exporter or runtime gap: eager PyTorch still works
        return None
    model._ort_cache = (key, session)
    return session


def predict(
    model: BraggNN,
    patches: np.ndarray,
    *,
    batch_size: int = 4096,
    device: str = "cpu",
    threads: int | None = None,
) -> pd.DataFrame:
    """Localize peaks in raw-count patches ``(n, N, N)`` with a BraggNN.

    Parameters
    ----------
    model : BraggNN
        From :func:`load_model`.
    patches : ndarray
        Raw counts; min-max normalization (flat-safe) happens here.
    batch_size : int
        Patches per forward pass.
    device : str
        ``'cpu'`` (default), ``'cuda'`` or ``'auto'``.
    threads : int, optional
        Threads for CPU inference; default: torch's current setting (left unchanged).
        From ``ORT_MIN_PATCHES`` patches on, the CPU network runs through ONNX Runtime
        when it is installed (same weights, same results to ~1e-6 px, 2-4x faster).

    Returns
    -------
    DataFrame
        One row per patch with the columns of :func:`braggtrack.localize.localize`:
        ``dx, dy`` (px from the central pixel), ``dx_err, dy_err`` (predicted 1-sigma),
        ``sigma_x, sigma_y`` (second moments), ``amplitude, background, intensity``
        (from the raw counts), ``converged`` and ``reason`` (``''``, ``'flat'``,
        ``'non_finite'`` or ``'out_of_distribution'``).  Never NaN: flagged rows have
        ``converged=False`` and keep the network's best guess (0 offsets when flat).

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:11, :11]
    >>> patch = 100 * np.exp(-((xx - 5.3) ** 2 + (yy - 4.8) ** 2) / 2) + 5
    >>> table = predict(load_model(), patch[None])
    >>> bool(abs(table.dx[0] - 0.3) < 0.1 and abs(table.dy[0] + 0.2) < 0.1)
    True
    """
    p = as_patch_stack(patches, np.float32)
    size = model.config.patch
    if p.ndim != 3 or p.shape[1:] != (size, size):
        raise OptionError(f"patches must have shape (n, {size}, {size}), got {p.shape}")
    if batch_size < 1:
        raise OptionError(f"batch_size must be >= 1, got {batch_size}")
    n = len(p)
    dev = resolve_device(device)
    normed, flat = normalize_patches(p)
    out = np.zeros((n, 4), dtype=np.float32)
    model = model.to(dev).eval()
    session = _ort_session(model, threads) if dev.type == "cpu" and n >= ORT_MIN_PATCHES else None
    if session is not None:
        for a in range(0, n, batch_size):
            out[a:a + batch_size] = session.run(None, {"patches": normed[a:a + batch_size, None]})[0]
    else:
        old_threads = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(int(threads))
        try:
            with torch.inference_mode():
                for a in range(0, n, batch_size):
                    x = torch.from_numpy(normed[a:a + batch_size, None]).to(dev)
                    out[a:a + batch_size] = model(x).float().cpu().numpy()
        finally:
            if threads is not None:
                torch.set_num_threads(old_threads)
    out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    dx, dy = out[:, 0].astype(np.float64), out[:, 1].astype(np.float64)
    dx_err = np.exp(0.5 * out[:, 2].astype(np.float64))
    dy_err = np.exp(0.5 * out[:, 3].astype(np.float64))

    # Out of distribution: a predicted error above the calibrated ood_sigma, an offset
    # outside the patch, a smoothed maximum further out than training ever put it, or a
    # signal weaker than any in training.  The SNR floor is not applied to sparse
    # (thresholded, zero-background) patches: their noise cannot be measured, and a
    # frame-cache spot of a few pixels above the users' threshold is real data.
    c = (size - 1) // 2
    summ = _summaries(p)
    snr, offset = _snr_offset(summ, size)
    weak = (snr < model.config.min_snr) & ~sparse_patches(p)
    ood = (
        weak
        | (offset > model.config.max_offset)
        | (np.maximum(dx_err, dy_err) > model.config.ood_sigma)
        | (np.abs(dx) > c)
        | (np.abs(dy) > c)
    ) & ~flat
    nonfinite = ~np.isfinite(p).all(axis=(1, 2))
    reason = np.where(
        flat, "flat", np.where(nonfinite, "non_finite", np.where(ood, "out_of_distribution", ""))
    )
    bad = flat | ood | nonfinite
    moments = _moments(summ)
    table = pd.DataFrame(
        {
            "dx": np.where(flat, 0.0, dx),
            "dy": np.where(flat, 0.0, dy),
            "dx_err": np.where(flat, 0.0, dx_err),
            "dy_err": np.where(flat, 0.0, dy_err),
            "sigma_x": moments["sigma_x"],
            "sigma_y": moments["sigma_y"],
            "amplitude": moments["amplitude"],
            "background": moments["background"],
            "intensity": moments["intensity"],
            "converged": ~bad,
            "reason": reason.astype(str),
        }
    )
    return table


# --------------------------------------------------------------------------- export


class _Exportable(nn.Module):
    """Wraps a BraggNN so the exported graph returns (n, 4) with positional names."""

    def __init__(self, model: BraggNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def export_model(model: BraggNN, path: str | os.PathLike, format: str = "onnx") -> Path:
    """Export for deployment without braggtrack: ONNX (onnxruntime) or TorchScript.

    The exported graph takes min-max normalized patches ``(n, 1, N, N)`` float32
    (see :func:`normalize_patches`) and returns ``(n, 4)``: dx, dy (px from the central
    pixel), log-variance of dx, dy.  The batch axis is dynamic.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = export_model(load_model(), pathlib.Path(tempfile.mkdtemp()) / "m.pt", "torchscript")
    >>> p.exists()
    True
    """
    path = Path(path)
    if format not in ("onnx", "torchscript"):
        raise OptionError(f"unknown export format {format!r}; use 'onnx' or 'torchscript'")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way of the folder, a read-only place
        raise OptionError(
            f"{path}: cannot create folder {path.parent} ({exc.strerror or exc})") from None
    net = _Exportable(model.to("cpu").eval()).eval()
    size = model.config.patch
    example = torch.rand(2, 1, size, size)
    if format == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(net, example)
        traced.save(str(path))
    else:  # onnx
        with torch.no_grad():
            torch.onnx.export(
                net,
                (example,),
                str(path),
                input_names=["patches"],
                output_names=["dx_dy_logvar"],
                dynamic_axes={"patches": {0: "n"}, "dx_dy_logvar": {0: "n"}},
                opset_version=17,
                dynamo=False,
            )
    return path
