"""DenseNet factory: MONAI's DenseNet-BC with the reference's head (dropout before the classifier).

Module names stay MONAI's (`features`, `class_layers.{relu,pool,flatten,out}`), so checkpoints
are plain MONAI-style state dicts; the added `class_layers.dropout` has no parameters.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from monai.networks.nets import DenseNet
from torch import nn

# name -> (init_features, growth_rate, block_config); all DenseNet-BC (bn_size 4, compression 0.5).
_CONFIGS: dict[str, tuple[int, int, tuple[int, ...]]] = {
    "densenet121": (64, 32, (6, 12, 24, 16)),
    "densenet169": (64, 32, (6, 12, 32, 32)),
    "densenet201": (64, 32, (6, 12, 48, 32)),
    # Same structure, tiny: fast CPU demos and tests, never pretrained.
    "densenet-mini": (32, 16, (2, 4, 6, 4)),
}
ARCHS: tuple[str, ...] = tuple(_CONFIGS)


def check_arch(arch: str) -> str:
    """Return `arch` if known, else raise a ValueError that lists the valid names."""
    if arch not in _CONFIGS:
        raise ValueError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")
    return arch


def build_model(
    arch: str = "densenet169",
    dropout: float = 0.2,
    num_outputs: int = 1,
    *,
    pool_first: bool = True,
) -> nn.Module:
    """A 2-D, 3-channel DenseNet-BC whose head is ReLU -> avg pool -> flatten -> Dropout -> Linear.

    MONAI's own `dropout_prob` acts inside every dense layer; the reference drops out only the
    pooled features before the classifier, so that one is 0 and an nn.Dropout joins the head.
    Returns raw logits of shape (N, num_outputs). ``pool_first``: transitions pool before
    their conv (:func:`pool_before_transition_conv`; False keeps MONAI's order, the same
    function at a higher cost, as a baseline).
    """
    init_features, growth_rate, block_config = _CONFIGS[check_arch(arch)]
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
    model = _make_densenet(init_features, growth_rate, block_config, num_outputs)
    if pool_first:
        pool_before_transition_conv(model)
    head = model.class_layers
    model.class_layers = nn.Sequential(
        OrderedDict(
            [
                ("relu", head.relu),
                ("pool", head.pool),
                ("flatten", head.flatten),
                ("dropout", nn.Dropout(dropout)),
                ("out", head.out),
            ]
        )
    )
    model.arch = arch  # lets checkpoints and reports say what they hold
    return model


def _make_densenet(
    init_features: int, growth_rate: int, block_config: Sequence[int], num_outputs: int
) -> DenseNet:
    return DenseNet(
        spatial_dims=2,
        in_channels=3,
        out_channels=num_outputs,
        init_features=init_features,
        growth_rate=growth_rate,
        block_config=block_config,
        bn_size=4,
        dropout_prob=0.0,
    )


def pool_before_transition_conv(model: DenseNet) -> None:
    """Run each transition as norm -> ReLU -> 2x2 average pool -> 1x1 conv, not conv then pool.

    The 1x1 conv (no bias) and the average pool are both linear and act per pixel, so they
    commute: the same function (equal in float64 to 1e-10), with the conv on a quarter of
    the pixels, about 8% of DenseNet-169's FLOPs saved in training and inference alike. Only
    the order changes: parameter names, and so checkpoints, stay MONAI's."""
    for name, block in model.features.named_children():
        if name.startswith("transition"):
            block._modules["conv"] = block._modules.pop("conv")  # now after "pool"


def unwrap(model: nn.Module) -> nn.Module:
    """The DenseNet inside DistributedDataParallel/DataParallel or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def feature_maps(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Last conv feature maps after the final norm and ReLU, (N, C, h, w): what CAM weights.

    In eval mode, model(x) == feature_maps(model, x).mean((2, 3)) @ weight.T + bias.
    """
    net = unwrap(model)
    return torch.relu(net.features(x))  # not in-place: callers may keep the maps for backward


def logits_and_cams(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N,), CAMs (N, h, w)) from one forward pass. A CAM cell is the classifier
    applied to that cell's features, bias included: the logit of an image whose every cell
    looked like it. Global pooling is a mean and the classifier is linear, so in eval mode a
    CAM's mean is the logit exactly (dropout acts on the pooled features only in training)."""
    net = unwrap(model)
    maps = feature_maps(net, x)
    weight, bias = classifier_params(net)
    cams = torch.einsum("c,nchw->nhw", weight[0], maps) + bias[0]
    head = net.class_layers[1:]  # its first layer is the (in-place) ReLU the maps already had
    return head(maps)[:, 0], cams


def classifier_params(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (num_outputs, C), bias (num_outputs,)) of the final Linear layer."""
    out = unwrap(model).class_layers.out
    return out.weight, out.bias


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
