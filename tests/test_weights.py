"""Pretrained weights: torchvision checkpoints (modern and legacy keys) load strictly and fully;
misfits fail loudly; "imagenet" downloads through a real HTTP server into the hub cache."""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from murakit.model import (
    WeightsError,
    build_model,
    load_backbone,
    load_weights,
    resolve_weights,
    torchvision_to_monai,
)

HEAD = ("class_layers.out.weight", "class_layers.out.bias")


def randomized(model: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """Fill every tensor (buffers too) with random values so a skipped key cannot pass unseen."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                value.fill_(7)
            else:
                value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
    return {k: v.clone() for k, v in model.state_dict().items()}


def to_torchvision(monai_sd: dict[str, torch.Tensor], legacy: bool) -> dict[str, torch.Tensor]:
    """Inverse key map; legacy mimics pre-0.4 files (norm.1 names, no num_batches_tracked)."""
    out = {}
    for key, value in monai_sd.items():
        if key in HEAD:
            continue
        if legacy and key.endswith("num_batches_tracked"):
            continue
        key = re.sub(r"(denselayer\d+)\.layers\.", r"\1.", key)
        if legacy:
            key = re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key)
        out[key] = value
    features = monai_sd["class_layers.out.weight"].shape[1]
    out["classifier.weight"] = torch.randn(1000, features)
    out["classifier.bias"] = torch.randn(1000)
    return out


def assert_backbone_loaded(model: nn.Module, source: dict, head_before: dict, legacy: bool):
    loaded = model.state_dict()
    for key, value in source.items():
        if key in HEAD or (legacy and key.endswith("num_batches_tracked")):
            continue
        assert torch.equal(loaded[key], value), key
    for key in HEAD:
        assert torch.equal(loaded[key], head_before[key]), key


@pytest.fixture(scope="module")
def mini_source() -> dict[str, torch.Tensor]:
    return randomized(build_model("densenet-mini"))


@pytest.fixture(scope="module")
def tv169(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A legacy-style torchvision DenseNet-169 file, like densenet169-b2777c0a.pth."""
    source = randomized(build_model("densenet169"))
    path = tmp_path_factory.mktemp("tv") / "densenet169-legacy.pth"
    torch.save(to_torchvision(source, legacy=True), path)
    return path, source


def test_key_map_examples() -> None:
    keys = {
        "features.denseblock1.denselayer1.norm.1.weight": (
            "features.denseblock1.denselayer1.layers.norm1.weight"
        ),
        "features.denseblock3.denselayer12.conv.2.weight": (
            "features.denseblock3.denselayer12.layers.conv2.weight"
        ),
        "features.denseblock2.denselayer3.norm2.running_var": (
            "features.denseblock2.denselayer3.layers.norm2.running_var"
        ),
        "features.transition1.norm.weight": "features.transition1.norm.weight",
        "features.norm5.bias": "features.norm5.bias",
        "classifier.weight": "class_layers.out.weight",
    }
    mapped = torchvision_to_monai(dict.fromkeys(keys, 0))
    assert list(mapped) == list(keys.values())
    assert torchvision_to_monai(mapped) == mapped  # MONAI keys pass through


@pytest.mark.parametrize("legacy", [False, True], ids=["modern", "legacy"])
def test_torchvision_file_loads_every_backbone_tensor(tmp_path, mini_source, legacy) -> None:
    path = tmp_path / "tv.pth"
    torch.save(to_torchvision(mini_source, legacy), path)
    model = build_model("densenet-mini")
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k in HEAD}
    load_backbone(model, path)
    assert_backbone_loaded(model, mini_source, head_before, legacy)
    if legacy:  # absent counters keep the fresh model's value
        assert model.state_dict()["features.norm0.num_batches_tracked"] == 0


def test_legacy_densenet169_file_loads(tv169) -> None:
    path, source = tv169
    model = build_model("densenet169")
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k in HEAD}
    load_backbone(model, path)
    assert_backbone_loaded(model, source, head_before, legacy=True)


@pytest.mark.parametrize("wrap", ["model", "state_dict", "module."])
def test_murakit_checkpoints_load(tmp_path, mini_source, wrap) -> None:
    sd = dict(mini_source)
    obj = {f"module.{k}": v for k, v in sd.items()} if wrap == "module." else {wrap: sd, "epoch": 3}
    torch.save(obj, tmp_path / "ckpt.pt")
    model = build_model("densenet-mini")
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k in HEAD}
    load_backbone(model, tmp_path / "ckpt.pt")
    assert_backbone_loaded(model, mini_source, head_before, legacy=False)


def _rename(sd):
    sd["features.norm5.wieght"] = sd.pop("features.norm5.weight")
    return ["features.norm5.wieght", "features.norm5.weight"]


def _drop(sd):
    del sd["features.denseblock2.denselayer1.conv1.weight"]
    return ["features.denseblock2.denselayer1.layers.conv1.weight"]


def _extra(sd):
    sd["features.denseblock9.conv.weight"] = torch.zeros(1)
    return ["features.denseblock9.conv.weight"]


def _reshape(sd):
    sd["features.conv0.weight"] = torch.zeros(32, 3, 3, 3)
    return ["features.conv0.weight (32, 3, 3, 3) vs model (32, 3, 7, 7)"]


@pytest.mark.parametrize("corrupt", [_rename, _drop, _extra, _reshape])
def test_misfit_file_names_bad_keys(tmp_path, mini_source, corrupt) -> None:
    sd = to_torchvision(mini_source, legacy=False)
    bad_keys = corrupt(sd)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    model = build_model("densenet-mini")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError) as info:
        load_backbone(model, path)
    message = str(info.value)
    assert str(path) in message
    for key in bad_keys:
        assert key in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_wrong_arch_lists_first_keys_and_count(tv169) -> None:
    with pytest.raises(WeightsError, match=r"more\)") as info:
        load_backbone(build_model("densenet-mini"), tv169[0])
    assert "densenet-mini" in str(info.value)


def test_unreadable_file_is_weights_error(tmp_path) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=re.escape(str(path))):
        load_backbone(build_model("densenet-mini"), path)


def test_resolve_none_and_paths(tmp_path) -> None:
    assert resolve_weights("none", "densenet169") is None
    assert load_weights(build_model("densenet-mini"), "none", "densenet-mini") is None
    existing = tmp_path / "w.pth"
    existing.write_bytes(b"")
    assert resolve_weights(str(existing), "densenet-mini") == existing
    with pytest.raises(WeightsError, match=re.escape(str(tmp_path / "nope.pth"))):
        resolve_weights(str(tmp_path / "nope.pth"), "densenet169")
    with pytest.raises(WeightsError, match="no ImageNet weights for densenet-mini"):
        resolve_weights("imagenet", "densenet-mini", hub_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown arch"):
        resolve_weights("none", "vgg16")


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/models/"


def test_cached_file_is_used_without_network(tmp_path) -> None:
    cached = tmp_path / "checkpoints" / "densenet121-a639ec97.pth"
    cached.parent.mkdir()
    cached.write_bytes(b"x")
    got = resolve_weights("imagenet", "densenet121", hub_dir=tmp_path, url=closed_port_url())
    assert got == cached


def test_offline_says_where_to_put_the_file(tmp_path) -> None:
    with pytest.raises(WeightsError) as info:
        resolve_weights("imagenet", "densenet169", hub_dir=tmp_path, url=closed_port_url())
    message = str(info.value)
    assert str(tmp_path / "checkpoints" / "densenet169-b2777c0a.pth") in message
    assert "--weights none" in message


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on 127.0.0.1 serving a fresh folder: (folder, base url)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_download_lands_in_hub_cache_and_loads(tmp_path, http_dir, tv169) -> None:
    root, base = http_dir
    src_path, source = tv169
    data = src_path.read_bytes()
    name = f"densenet169-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (root / name).write_bytes(data)
    hub = tmp_path / "hub"

    model = build_model("densenet169")
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k in HEAD}
    got = load_weights(
        model, "imagenet", "densenet169", hub_dir=hub, url=base + name, progress=False
    )

    assert got == hub / "checkpoints" / name
    assert got.read_bytes() == data
    assert_backbone_loaded(model, source, head_before, legacy=True)


def test_download_with_wrong_hash_fails_and_leaves_nothing(tmp_path, http_dir) -> None:
    root, base = http_dir
    (root / "densenet169-b2777c0a.pth").write_bytes(b"not the real weights")
    hub = tmp_path / "hub"
    with pytest.raises(WeightsError, match="invalid hash"):
        resolve_weights("imagenet", "densenet169", hub_dir=hub, url=base, progress=False)
    assert list((hub / "checkpoints").iterdir()) == []
