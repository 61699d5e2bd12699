"""FCN head: output size equals input size, bilinear up-sampling, Caffe's crop offsets, gradients, fc transplant."""

import pytest
import torch
import torch.nn.functional as F

from pretrain.model import AlexNetEncoder
from transfer.segmentation.model import FCN, bilinear_kernel


def _fcn(arch="caffenet", variant="32s", **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("fc_channels", 16)
    return FCN(AlexNetEncoder(arch=arch, width=0.125), variant=variant, **kwargs)


@pytest.mark.parametrize("arch", ["caffenet", "torchvision"])
@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
@pytest.mark.parametrize("learn", [True, False])
def test_output_has_the_input_size_for_odd_sizes(arch, variant, learn):
    model = _fcn(arch, variant, learn_upsampling=learn).eval()
    for h, w in [(1, 1), (17, 33), (47, 101), (63, 65), (129, 95)]:
        with torch.no_grad():
            out = model(torch.randn(2, 3, h, w))
        assert out.shape == (2, 21, h, w)
        assert torch.isfinite(out).all()


def test_crop_offsets_match_voc_fcn_alexnet():
    # Caffe's coord_map gives offset 18 for voc-fcn-alexnet (conv1 pad 100, 63x63 up-sampling by 32).
    assert _fcn("caffenet").final_offset == 18
    assert _fcn("torchvision").input_pad == 98  # its conv1 pads by 2 itself: 100 in total
    model = _fcn("caffenet", "8s")
    assert model.final_offset == 18 and all(isinstance(o, int) and o >= 0 for o in model.crop_offsets)


def test_bilinear_kernel_is_separable_tent_on_the_diagonal():
    w = bilinear_kernel(3, 5)  # factor 3, centre 2: taps 1/3, 2/3, 1, 2/3, 1/3
    tent = torch.tensor([1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3])
    assert torch.allclose(w[1, 1], torch.outer(tent, tent))
    assert w[0, 1].abs().sum() == 0 and w[2, 0].abs().sum() == 0


@pytest.mark.parametrize("upsampling", [False, True])
def test_upsampling_starts_bilinear(upsampling):
    model = _fcn(learn_upsampling=upsampling)
    up = model.upsample[0]
    assert up.kernel_size == (63, 63) and up.stride == (32, 32) and up.bias is None
    assert up.weight.requires_grad is upsampling
    # Up-sampling a linear ramp with a bilinear kernel gives a linear ramp (away from the borders).
    ramp = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 21, 6, 6)
    with torch.no_grad():
        out = up(ramp)[0, 4, 40, 40:150]
    steps = out[1:] - out[:-1]
    assert torch.allclose(steps, torch.full_like(steps, 1 / 32), atol=1e-5)
    with torch.no_grad():  # and a constant stays that constant, with no leak between classes
        flat = up(torch.ones(1, 21, 6, 6))[0, :, 40:150, 40:150]
    assert torch.allclose(flat, torch.ones_like(flat), atol=1e-5)


def test_score_layers_start_at_zero_and_every_parameter_gets_a_gradient():
    model = _fcn(variant="8s")
    assert model.score.weight.abs().sum() == 0 and model.score_conv2.weight.abs().sum() == 0
    with torch.no_grad():  # zero scores pass no gradient below them; give them values for this check
        for name in ("score", "score_conv5", "score_conv2"):
            getattr(model, name).weight.normal_(0, 0.1)
    images, target = torch.randn(2, 3, 45, 37), torch.randint(0, 21, (2, 45, 37))
    F.cross_entropy(model(images), target).backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing


def test_pretrained_fc_layers_become_convolutions():
    model = FCN(AlexNetEncoder(arch="torchvision"), fc_channels=64, fc6_kernel=6)
    fc = {"fc6.weight": torch.randn(64, 256 * 36), "fc6.bias": torch.randn(64),
          "fc7.weight": torch.randn(64, 64), "fc7.bias": torch.randn(64)}
    model.load_fc(fc)
    pool5 = torch.randn(1, 256, 6, 6)
    # a 6x6 convolution against a 9,216-term dot product: float32 sums of values up to ~200 in another order (and
    # with other SIMD widths on another CPU) differ by ~1e-5 relative, so the tolerance is relative, not 1e-4 absolute
    assert torch.allclose(model.fc6(pool5).flatten(), fc["fc6.weight"] @ pool5.flatten() + fc["fc6.bias"],
                          rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="fc6"):
        FCN(AlexNetEncoder(arch="torchvision"), fc_channels=32).load_fc(fc)


def test_fixed_upsampling_fast_path_equals_the_transposed_convolution():
    from transfer.segmentation.model import _crop, bilinear_upsample_crop

    model = _fcn(learn_upsampling=False)
    up = model.upsample[-1]
    scores = torch.randn(2, 21, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        reference = _crop(up.double()(scores), 18, (101, 157))
    fast = bilinear_upsample_crop(scores, 32, 63, 18, (101, 157))
    assert torch.allclose(fast, reference, atol=1e-10)
    even = torch.nn.ConvTranspose2d(3, 3, 4, stride=2, bias=False).double()
    with torch.no_grad():
        even.weight.copy_(bilinear_kernel(3, 4))
        x = torch.randn(1, 3, 6, 4, dtype=torch.float64)
        assert torch.allclose(bilinear_upsample_crop(x, 2, 4, 1, (9, 7)), even(x)[..., 1:10, 1:8], atol=1e-10)
    with pytest.raises(ValueError, match="too small"):
        bilinear_upsample_crop(scores, 32, 63, 18, (200, 10))
