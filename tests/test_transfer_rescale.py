"""Krähenbühl rescaling and backbones from each kind of weights spec."""

import math

import pytest
import torch
import torchvision
from torch import nn

from transfer.backbone import build_backbone, fresh_layers, rescale_backbone_
from transfer.rescale import _unit_stats, gradient_weight_ratios, normalize_layers_, equalize_gradient_ratios_


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 64), nn.ReLU(), nn.Linear(64, 256))


def layers_of(net):
    return [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]


def pre_activations(net, layer, x):
    out = {}
    handle = layer.register_forward_hook(lambda m, i, o: out.__setitem__("y", o.detach().clone()))
    with torch.no_grad():
        net(x)
    handle.remove()
    return out["y"]


def test_normalised_layers_have_zero_mean_unit_variance_units():
    net, x = small_net(), torch.randn(32, 3, 16, 16) * 5 + 2
    with torch.no_grad():
        for layer in layers_of(net):
            layer.weight.mul_(0.01)  # a badly scaled Gaussian start, as the paper's random baseline
    normalize_layers_(net, layers_of(net), x)
    for layer in layers_of(net):
        mean, std = _unit_stats(pre_activations(net, layer, x))
        assert mean.abs().max() < 1e-4
        assert (std - 1).abs().max() < 1e-3


def test_equalised_layers_share_one_gradient_ratio_and_unit_top_std():
    net, x = small_net(), torch.randn(64, 3, 16, 16)
    with torch.no_grad():
        for k, layer in enumerate(layers_of(net)):
            layer.weight.mul_(10.0 ** (k - 2))  # ratios spread over orders of magnitude
    gen = torch.Generator().manual_seed(0)
    before = gradient_weight_ratios(net, layers_of(net), x, gen)
    history = equalize_gradient_ratios_(net, layers_of(net), x, iterations=10, generator=gen)
    after = history[-1]["ratios"]
    assert max(before) / min(before) > 100
    assert max(after) / min(after) < 1.5  # what remains is the noise of the random top gradients
    top = pre_activations(net, layers_of(net)[-1], x)
    assert _unit_stats(top)[1].mean() == pytest.approx(1.0, rel=0.05)


def test_rescaling_leaves_the_function_of_a_homogeneous_net_up_to_scale():
    # ReLU nets are positively homogeneous: equalising rescales outputs but keeps their direction.
    net, x = small_net(), torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        y0 = net(x)
    equalize_gradient_ratios_(net, layers_of(net), x, iterations=3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y1 = net(x)
    cos = nn.functional.cosine_similarity(y0.flatten(), y1.flatten(), dim=0)
    assert cos > 0.999


def test_random_backbone_rescaled_on_images():
    backbone, info = build_backbone("random", arch={"arch": "caffenet", "width": 0.25}, input_size=67, fc_dim=32)
    assert info["init"] == "random" and info["fc_init"] == "gaussian" and info["pool5_shape"] == [64, 1, 1]
    assert len(fresh_layers(backbone, info)) == 7
    summary = rescale_backbone_(backbone, info, torch.randn(24, 3, 67, 67), iterations=10)
    assert summary["ratio_spread_before"] > 3 and summary["ratio_spread_after"] < 1.5
    assert math.isfinite(summary["output_std_after"])


def alexnet_state_dict(fc_dim=64):
    """torchvision AlexNet keys and trunk; fc layers narrowed to `fc_dim` to keep the test light."""
    state = {f"features.{k}": v for k, v in torchvision.models.alexnet(weights=None).features.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    for name, shape in (("classifier.1", (fc_dim, 256 * 6 * 6)), ("classifier.4", (fc_dim, fc_dim)),
                        ("classifier.6", (1000, fc_dim))):
        state[f"{name}.weight"], state[f"{name}.bias"] = torch.randn(shape, generator=gen), torch.randn(shape[0])
    return state


def test_torchvision_state_dict_brings_fc_layers_when_they_fit(tmp_path):
    state = alexnet_state_dict()
    path = tmp_path / "alexnet.pth"
    torch.save(state, path)
    backbone, info = build_backbone(str(path), input_size=224, fc_dim=64)
    assert info["init"] == "supervised" and info["arch"]["arch"] == "torchvision"
    assert info["fc_init"] == "pretrained" and fresh_layers(backbone, info) == []
    assert torch.equal(backbone.fc6.weight, state["classifier.1.weight"])
    assert torch.equal(backbone.encoder.features[0].weight, state["features.0.weight"])
    small, small_info = build_backbone(str(path), input_size=128, fc_dim=64)  # pool5 3x3: fc6 cannot be reused
    assert small_info["fc_init"] == "gaussian" and len(fresh_layers(small, small_info)) == 2


def test_fc8_is_initialised_from_data_and_rescaled_for_every_init(tmp_path):
    # voc-classification's magic_init covers the whole classifier: fc8 is fresh for every init, even when the
    # weights bring fc6/fc7, and it is the top layer whose gradient ratio the others are equalised to.
    from transfer.backbone import rescale_layers
    from transfer.classification.model import Classifier

    path = tmp_path / "alexnet.pth"
    torch.save(alexnet_state_dict(), path)
    supervised, info = build_backbone(str(path), input_size=224, fc_dim=64)
    fc8 = Classifier(supervised).fc8
    layers, fresh = rescale_layers(supervised, info, top=fc8)
    assert layers[-1] is fc8 and fresh == [fc8]  # fc6/fc7 came with the weights; fc8 never does

    backbone, info = build_backbone("random", arch={"arch": "caffenet", "width": 0.25}, input_size=67, fc_dim=32)
    model = Classifier(backbone, generator=torch.Generator().manual_seed(2))
    before, x = model.fc8.weight.detach().clone(), torch.randn(16, 3, 67, 67)
    summary = rescale_backbone_(backbone, info, x, model=model, top=model.fc8, iterations=10)
    assert summary["normalised_layers"] == 8 and summary["classifier_layer_rescaled"]
    assert not torch.allclose(model.fc8.weight, before)
    assert summary["ratio_spread_after"] < 1.5
    # fc8's output ends at unit std per class, the target of the equalisation (within its tolerance)
    top_std = _unit_stats(pre_activations(model.eval(), model.fc8, x))[1].mean()  # eval: no dropout
    assert top_std == pytest.approx(summary["output_std_after"], rel=1e-4)
    assert top_std == pytest.approx(1.0, rel=0.1)
