"""Context-encoder model: shapes, parameter counts, gradients, pool-free variant, torchvision key layout."""

import pytest
import torch
import torchvision

from pretrain.model import AlexNetEncoder, ChannelwiseFC, ContextEncoder, Discriminator, gaussian_init_


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_caffenet_227_gives_256x6x6_pool5_with_caffenet_parameter_count():
    enc = AlexNetEncoder("caffenet")
    # CaffeNet conv1..conv5 (96/256/384/384/256, groups 1/2/1/2/2): 2,334,080 weights and biases
    assert _count(enc) == 2_334_080
    assert [c.out_channels for c in enc.conv_layers()] == [96, 256, 384, 384, 256]
    assert [c.groups for c in enc.conv_layers()] == [1, 2, 1, 2, 2]
    assert any(isinstance(m, torch.nn.LocalResponseNorm) for m in enc.modules())
    out = enc(torch.randn(1, 3, 227, 227))
    assert out.shape == (1, 256, 6, 6) and enc.feature_shape(227) == (256, 6, 6)
    assert enc.out_channels == 256 and enc.feature_shape(128) == (256, 3, 3)


@pytest.mark.parametrize("arch,pool_free,size", [("caffenet", True, 227), ("torchvision", False, 224),
                                                 ("torchvision", True, 227), ("caffenet", False, 128)])
def test_feature_shape_matches_forward(arch, pool_free, size):
    enc = AlexNetEncoder(arch, pool_free=pool_free)
    out = enc.forward_features(torch.randn(1, 3, size, size))
    assert tuple(out.shape[1:]) == enc.feature_shape(size)
    if pool_free:
        assert not any(isinstance(m, torch.nn.MaxPool2d) for m in enc.modules())
        downs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
                 and m.stride == (2, 2)]
        assert len(downs) == 3  # pool1, pool2, pool5 each replaced by a 3x3 stride-2 convolution
        assert len(enc.conv_layers()) == 5


def test_pool_free_caffenet_227_still_gives_6x6():
    assert AlexNetEncoder("caffenet", pool_free=True)(torch.randn(1, 3, 227, 227)).shape == (1, 256, 6, 6)


def test_torchvision_arch_loads_alexnet_features_unchanged():
    tv = torchvision.models.alexnet(weights=None)
    enc = AlexNetEncoder("torchvision")
    features = {k.removeprefix("features."): v for k, v in tv.state_dict().items() if k.startswith("features.")}
    enc.features.load_state_dict(features, strict=True)
    x = torch.randn(2, 3, 224, 224)
    assert torch.equal(enc(x), tv.features(x))


def test_channelwise_fc_has_m_n4_weights_and_matches_per_channel_matmul():
    fc = ChannelwiseFC(256, 6, 6)
    assert fc.weight.shape == (256, 36, 36) and fc.weight.numel() == 256 * 36 * 36
    x = torch.randn(3, 256, 6, 6)
    y = fc(x)
    # reference: each channel's 36 values times its own 36x36 matrix, no mixing between channels
    for c in (0, 17, 255):
        ref = x[:, c].reshape(3, 36) @ fc.weight[c] + fc.bias[c]
        torch.testing.assert_close(y[:, c].reshape(3, 36), ref)
    x2 = x.clone()
    x2[:, 5] += 1.0
    assert torch.equal(fc(x2)[:, 6], y[:, 6])  # channel 5 cannot influence channel 6


def test_context_encoder_output_finite_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = ContextEncoder(AlexNetEncoder(width=0.25), input_size=96)
    x = torch.randn(2, 3, 96, 96)
    out = model(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_paper_context_encoder_at_227():
    model = ContextEncoder(AlexNetEncoder(), input_size=227).eval()
    assert model.channelwise_fc.weight.numel() == 331_776  # 256 * 6^4 (paper §3.1)
    assert sum(1 for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)) == 5
    with torch.no_grad():
        assert model(torch.randn(1, 3, 227, 227)).shape == (1, 3, 227, 227)


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="too small"):
        ContextEncoder(AlexNetEncoder(), input_size=32)


def test_gaussian_init_is_seeded():
    a = gaussian_init_(AlexNetEncoder(width=0.25), generator=torch.Generator().manual_seed(1))
    b = gaussian_init_(AlexNetEncoder(width=0.25), generator=torch.Generator().manual_seed(1))
    w = a.conv_layers()[2].weight
    assert torch.equal(w, b.conv_layers()[2].weight)
    assert abs(float(w.detach().std()) - 0.01) < 0.001 and float(a.conv_layers()[0].bias.detach().abs().sum()) == 0


def test_discriminator_logits():
    assert Discriminator(width=8)(torch.randn(3, 3, 64, 64)).shape == (3,)


def caffe_lrn(a, local_size=5, alpha=1e-4, beta=0.75, k=1.0):
    """Caffe's LRNLayer (ACROSS_CHANNELS) written out: a / (k + alpha/size * sum of a^2 over `size` channels)^beta."""
    pad = local_size // 2
    squares = torch.nn.functional.pad(a.pow(2), (0, 0, 0, 0, pad, pad))  # zero channels at both ends, as Caffe
    window = sum(squares[:, i:i + a.shape[1]] for i in range(local_size))
    return a * (k + alpha / local_size * window).pow(-beta)


def _lrn_of(encoder):
    return next(m for m in encoder.modules() if isinstance(m, torch.nn.LocalResponseNorm))


def test_lrn_acts_as_caffe_does_on_0_255_input():
    from pretrain.data import IMAGE_MEAN, normalize

    gen = torch.Generator().manual_seed(0)
    # A smooth uint8 image (noise up-sampled: neighbouring pixels correlate, as in photos).
    pixels = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 12, generator=gen) * 255, size=(67, 67),
                                             mode="bicubic", align_corners=False).clamp(0, 255).round().byte()
    ours = normalize(pixels, torch.device("cpu"))  # (p/255 - mean)/std
    caffe = pixels.float() - 255 * torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)  # Caffe: 0-255 minus the mean
    # The same conv1 on both, weights large enough that Caffe's LRN visibly acts (as in a trained CaffeNet).
    conv1 = torch.nn.Conv2d(3, 96, 11, 4, bias=False)
    with torch.no_grad():
        conv1.weight.normal_(0.0, 0.05, generator=gen)
        pool1 = [torch.nn.functional.max_pool2d(torch.relu(conv1(x)), 3, 2, ceil_mode=True) for x in (ours, caffe)]
        active = pool1[1] > 1.0  # output/input ratios of units that fire
        caffe_ratio = (caffe_lrn(pool1[1]) / pool1[1])[active]
        our_ratio = (_lrn_of(AlexNetEncoder("caffenet"))(pool1[0]) / pool1[0])[active]
        old_ratio = (_lrn_of(AlexNetEncoder("caffenet", lrn="unscaled"))(pool1[0]) / pool1[0])[active]
    assert caffe_ratio.mean() < 0.9  # Caffe's LRN matters at this scale
    # Equal up to the spread of the RGB stds (0.224-0.229) that one scalar input scale stands for.
    assert (our_ratio - caffe_ratio).abs().max() < 0.02
    assert old_ratio.min() > 0.99  # Caffe's alpha on normalised input: nearly the identity, the old behaviour
