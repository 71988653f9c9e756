import math

import pytest
import torch

from bmb_stream.models import build_model
from bmb_stream.models.heads import Predictor


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_wrn28_2_matches_the_reference_size():
    model = build_model("wrn28_2", 10)
    assert model.feature_dim == 128
    # 1,467,610 parameters with one 10-class head in the FixMatch-family WRN-28-2
    assert n_params(model.backbone) + 128 * 10 + 10 == 1_467_610
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(m.momentum == 0.001 for m in bn)


@pytest.mark.parametrize("name,options,size,dim", [
    ("small_cnn", {}, 32, 64), ("wrn28_2", {}, 32, 128), ("resnet50", {"small_stem": True}, 32, 2048),
])
def test_backbones_give_features_and_two_heads(name, options, size, dim):
    model = build_model(name, 7, **options).eval()
    with torch.no_grad():
        feats = model(torch.randn(2, 3, size, size))
        assert feats.shape == (2, dim)
        assert model.head_std(feats).shape == model.head_bal(feats).shape == (2, 7)


@pytest.mark.parametrize("name", ["small_cnn", "wrn28_2"])
def test_heads_are_xavier_normal_with_zero_bias_and_independent(name):
    """Each head's weights are drawn from Xavier's normal N(0, 2 / (fan_in + fan_out)), not from
    nn.Linear's default U(+-1/sqrt(fan_in)), Xavier's uniform variant (the same variance) or another
    scale: the Kolmogorov-Smirnov distance of both heads' weights to that normal is within its 0.1%
    critical value (about 0.017 here; Xavier uniform is at 0.06, a gain of 1.2 at 0.05)."""
    torch.manual_seed(0)
    model = build_model(name, 100)
    assert torch.all(model.head_bal.bias == 0) and torch.all(model.head_std.bias == 0)
    assert not torch.equal(model.head_bal.weight, model.head_std.weight)
    fan_in, fan_out = model.feature_dim, 100
    std = math.sqrt(2 / (fan_in + fan_out))
    weights = torch.cat([model.head_std.weight.flatten(), model.head_bal.weight.flatten()]).detach().double()
    n = len(weights)
    cdf = 0.5 * (1 + torch.erf(weights.sort().values / (std * math.sqrt(2))))  # N(0, std^2) at each weight
    distance = torch.maximum(torch.arange(1, n + 1) / n - cdf, cdf - torch.arange(n) / n).max()
    assert distance < 1.95 / math.sqrt(n), float(distance)


def test_predictor_gives_the_algorithms_logits_of_prepared_input():
    model = build_model("small_cnn", 3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        predictor = Predictor(model, lambda m, inputs: m.head_bal(m(inputs)), prepare=lambda t: 2 * t)
        assert torch.allclose(predictor(x), model.head_bal(model(2 * x)))


def test_unknown_model_lists_the_registry():
    with pytest.raises(ValueError, match="small_cnn"):
        build_model("vgg", 10)
