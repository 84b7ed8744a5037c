"""The DenseNet factory: reference size, head layout, MONAI-style names and the CAM identity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from murakit.model import (
    ARCHS,
    build_model,
    classifier_params,
    count_parameters,
    feature_maps,
)


@pytest.fixture(scope="module")
def densenet169() -> nn.Module:
    return build_model("densenet169").eval()


def test_archs_listed() -> None:
    assert ARCHS == ("densenet121", "densenet169", "densenet201", "densenet-mini")


def test_unknown_arch_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="densenet121, densenet169, densenet201, densenet-mini"):
        build_model("resnet50")


@pytest.mark.parametrize("kwargs", [{"dropout": 1.0}, {"dropout": -0.1}, {"num_outputs": 0}])
def test_bad_head_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        build_model("densenet-mini", **kwargs)


def test_densenet169_has_reference_parameter_count(densenet169: nn.Module) -> None:
    assert count_parameters(densenet169) == 12_486_145


def test_mini_is_tiny_and_runs() -> None:
    model = build_model("densenet-mini").eval()
    assert count_parameters(model) < 1_000_000
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 1)


def test_head_is_dropout_then_linear(densenet169: nn.Module) -> None:
    head = densenet169.class_layers
    assert list(head._modules) == ["relu", "pool", "flatten", "dropout", "out"]
    assert isinstance(head.dropout, nn.Dropout) and head.dropout.p == 0.2
    assert isinstance(head.out, nn.Linear) and head.out.out_features == 1
    # The reference has no dropout inside the dense layers.
    dropouts = [name for name, m in densenet169.named_modules() if isinstance(m, nn.Dropout)]
    assert dropouts == ["class_layers.dropout"]


def test_state_dict_keys_are_monai_style(densenet169: nn.Module) -> None:
    keys = list(densenet169.state_dict())
    assert keys[0] == "features.conv0.weight"
    assert "features.denseblock1.denselayer1.layers.norm1.weight" in keys
    assert "features.transition3.conv.weight" in keys
    assert "features.norm5.running_var" in keys
    assert keys[-2:] == ["class_layers.out.weight", "class_layers.out.bias"]
    assert not any("dropout" in k for k in keys)


def test_transitions_pool_first_and_compute_monai_densenet() -> None:
    """Pooling before a transition's 1x1 conv is the same network as MONAI's conv-then-pool:
    same parameter names (old checkpoints load), same logits and gradients in float64, and
    the transition conv runs on a quarter of the pixels."""
    torch.manual_seed(0)
    ours = build_model("densenet-mini").double()
    monai_order = build_model("densenet-mini", pool_first=False).double()
    assert list(monai_order.features.transition1._modules) == ["norm", "relu", "conv", "pool"]
    assert list(ours.features.transition1._modules) == ["norm", "relu", "pool", "conv"]
    monai_order.load_state_dict(ours.state_dict())  # strict: the names are the same
    x = torch.randn(4, 3, 96, 96, dtype=torch.float64)
    for model in (ours, monai_order):
        torch.manual_seed(1)  # the same dropout mask in the head
        model(x).sum().backward()
    for (name, a), b in zip(ours.named_parameters(), monai_order.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-12), name
    ours.eval(), monai_order.eval()
    with torch.no_grad():
        assert torch.allclose(ours(x), monai_order(x), rtol=1e-12, atol=1e-12)
    seen = []
    hook = ours.features.transition1.conv.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        ours(x)
    hook.remove()
    assert seen[0].shape[-2:] == (12, 12)  # 96 px: 24x24 after the stem, pooled to 12x12


def test_dropout_active_only_in_training() -> None:
    torch.manual_seed(0)
    model = build_model("densenet-mini", dropout=0.5)
    x = torch.rand(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.class_layers.dropout.train()  # dropout alone: batch-norm stats stay fixed
        assert not torch.equal(model(x), model(x))


def test_feature_maps_and_classifier_reproduce_logits() -> None:
    torch.manual_seed(0)
    model = build_model("densenet-mini", num_outputs=3).eval()
    nn.init.normal_(model.class_layers.out.bias)  # a zero bias would hide a missing term
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        maps = feature_maps(model, x)
        weight, bias = classifier_params(model)
        logits = model(x)
    assert maps.shape == (2, weight.shape[1], 3, 3)
    assert (maps >= 0).all()  # after the final ReLU
    assert weight.shape == (3, maps.shape[1]) and bias.shape == (3,)
    torch.testing.assert_close(maps.mean((2, 3)) @ weight.T + bias, logits)


def test_feature_maps_size_for_cam(densenet169: nn.Module) -> None:
    with torch.no_grad():
        assert feature_maps(densenet169, torch.rand(1, 3, 224, 224)).shape == (1, 1664, 7, 7)


def test_feature_maps_see_through_wrappers() -> None:
    model = build_model("densenet-mini").eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(feature_maps(nn.DataParallel(model), x), feature_maps(model, x))
    assert classifier_params(nn.DataParallel(model))[0] is model.class_layers.out.weight
