"""Pretrained weights: find torchvision's ImageNet DenseNet checkpoints and load them strictly.

A torchvision checkpoint fits MONAI's DenseNet after renaming keys. Loading is strict on the
backbone: a missing, unexpected or misshapen tensor is an error that names the keys, because a
lenient load (strict=False) can silently keep almost nothing and train from scratch instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .densenet import check_arch, unwrap

OFFICIAL_BASE_URL = "https://download.pytorch.org/models/"
OFFICIAL_FILES: dict[str, str] = {
    "densenet121": "densenet121-a639ec97.pth",
    "densenet169": "densenet169-b2777c0a.pth",
    "densenet201": "densenet201-c1103571.pth",
}
HEAD_KEYS = ("class_layers.out.weight", "class_layers.out.bias")
DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation: an offline machine fails instead of hanging

# Old torchvision checkpoints name dense-layer modules "norm.1", "conv.2", ...
_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_DENSE_LAYER = re.compile(r"^(.*denselayer\d+)\.((?:norm|relu|conv)[12]\..*)$")
_HASH = re.compile(r"-([a-f0-9]{8,})\.")  # torch.hub's convention: name-<sha256 prefix>.pth


class WeightsError(RuntimeError):
    """Weights cannot be found, fetched or fitted to the model; the message says what to do."""


def torchvision_to_monai(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Rename torchvision DenseNet keys (modern or legacy) to MONAI's; MONAI keys pass unchanged."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        new = _LEGACY.sub(r"\1\2", key)
        new = _DENSE_LAYER.sub(r"\1.layers.\2", new)
        if new.startswith("classifier."):
            new = "class_layers.out." + new[len("classifier.") :]
        out[new] = value
    return out


def _read_state_dict(source: Mapping[str, Any] | str | os.PathLike) -> tuple[dict, str]:
    """(state dict, description for messages) from a file or an in-memory dict."""
    if isinstance(source, Mapping):
        obj, where = source, "<state dict>"
    else:
        where = str(Path(source))
        try:
            obj = torch.load(where, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise WeightsError(f"weights file not found: {where}") from None
        except Exception as exc:
            raise WeightsError(f"cannot read weights file {where}: {exc}") from exc
    for entry in ("model", "state_dict"):  # training checkpoints wrap the state dict
        if isinstance(obj, Mapping) and isinstance(obj.get(entry), Mapping):
            obj = obj[entry]
            break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{where} holds a {type(obj).__name__}, not a state dict")
    tensors = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{where}: entry {key!r} is a {type(value).__name__}, not a tensor")
        tensors[key.removeprefix("module.")] = value  # DistributedDataParallel prefix
    return tensors, where


def _listing(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)}: {shown}{more}"


def load_backbone(model: nn.Module, source: Mapping[str, Any] | str | os.PathLike) -> list[str]:
    """Load every backbone tensor of `source` into `model`; the model's own head is kept.

    `source` is a path or a state dict in torchvision or MONAI/murakit form, possibly wrapped in
    a {"model": ...} or {"state_dict": ...} checkpoint. The source's classifier is dropped on
    purpose (ImageNet's has 1000 outputs, ours 1). Anything else that does not fit raises
    WeightsError naming the keys. BatchNorm `num_batches_tracked` may be absent (old
    checkpoints predate it). Returns the loaded keys.
    """
    net = unwrap(model)
    raw, where = _read_state_dict(source)
    given = {k: v for k, v in torchvision_to_monai(raw).items() if k not in HEAD_KEYS}
    current = net.state_dict()
    backbone = {k: v for k, v in current.items() if k not in HEAD_KEYS}

    missing = [k for k in backbone if k not in given and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in given if k not in backbone]
    mismatched = [
        f"{k} {tuple(v.shape)} vs model {tuple(backbone[k].shape)}"
        for k, v in given.items()
        if k in backbone and v.shape != backbone[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"missing keys {_listing(missing)}" if missing else "",
            f"unexpected keys {_listing(unexpected)}" if unexpected else "",
            f"shape mismatches {_listing(mismatched)}" if mismatched else "",
        ]
        arch = getattr(net, "arch", type(net).__name__)
        raise WeightsError(
            f"weights in {where} do not fit the {arch} backbone: "
            + "; ".join(p for p in problems if p)
        )

    full = dict(current)  # head and any absent num_batches_tracked keep the model's values
    full.update(given)
    net.load_state_dict(full, strict=True)
    return sorted(given)


def _download_target(arch: str, url: str | None) -> tuple[str, str]:
    """(url, file name): `url` may be a full file url or a base to append the official name to."""
    name = OFFICIAL_FILES[arch]
    if url is None:
        return OFFICIAL_BASE_URL + name, name
    last = url.rstrip("/").rsplit("/", 1)[-1]
    if last.endswith((".pth", ".pt")):
        return url, last
    return url.rstrip("/") + "/" + name, name


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torch.hub's download has no timeout; bound each socket operation for its duration."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def resolve_weights(
    spec: str,
    arch: str,
    *,
    hub_dir: Path | None = None,
    url: str | None = None,
    progress: bool = True,
) -> Path | None:
    """Turn a --weights value into a checkpoint file: "none", "imagenet" or a path.

    "imagenet" uses torch hub's cache (`<hub_dir>/checkpoints/<file>`, hub_dir defaulting to
    torch.hub.get_dir()) and downloads there, sha256-checked against the hash in the file name,
    when the file is absent. `url` overrides the download location (a file url or a base).
    """
    check_arch(arch)
    if spec.lower() == "none":
        return None
    if spec.lower() != "imagenet":
        path = Path(spec).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        return path
    if arch not in OFFICIAL_FILES:
        raise WeightsError(
            f"there are no ImageNet weights for {arch} (only {', '.join(OFFICIAL_FILES)}); "
            "use --weights none to train from scratch or --weights PATH"
        )
    src, name = _download_target(arch, url)
    dst = Path(hub_dir if hub_dir is not None else torch.hub.get_dir()) / "checkpoints" / name
    if dst.is_file():
        return dst
    match = _HASH.search(name)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            torch.hub.download_url_to_file(
                src, str(dst), hash_prefix=match.group(1) if match else None, progress=progress
            )
    except Exception as exc:
        raise WeightsError(
            f"could not download ImageNet weights for {arch} from {src} ({exc}). "
            f"Fetch that file on a machine with internet access and put it at {dst} "
            f"(or pass --weights PATH), or use --weights none to train from scratch."
        ) from exc
    return dst


def load_weights(
    model: nn.Module,
    spec: str,
    arch: str,
    *,
    hub_dir: Path | None = None,
    url: str | None = None,
    progress: bool = True,
) -> Path | None:
    """resolve_weights + load_backbone; returns the file loaded, or None for "none"."""
    path = resolve_weights(spec, arch, hub_dir=hub_dir, url=url, progress=progress)
    if path is not None:
        load_backbone(model, path)
    return path
