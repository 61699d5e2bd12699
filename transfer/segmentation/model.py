"""Fully convolutional network on the AlexNet trunk (Long et al. 2015, `voc-fcn-alexnet`; PAPER.md "Segmentation").

FCN-32s: trunk conv1..pool5 -> fc6 as a k×k convolution -> fc7 as 1×1 -> 1×1 class scores -> one up-sampling by 32
(kernel 63, bilinear) -> crop to the input. FCN-16s/8s add 1×1 scores of the stride-16 (relu5) and stride-8 (relu2)
maps, fused after ×2 up-samplings. Caffe pads conv1 by 100 so that any input gives a big enough score map; here
the input is zero-padded (zero is the mean after normalisation, exactly what conv padding adds) by
`pad - conv1.padding`, which is the same computation for the CaffeNet (pad 0) and torchvision (pad 2) trunks.
Crop offsets come from the layers' coordinate maps, as Caffe's `coord_map.crop` computes them (18 for 32s).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transfer.segmentation.choices import VARIANTS

TAPS = {"16s": ("conv5",), "8s": ("conv5", "conv2")}  # stride-16 and stride-8 maps of the AlexNet trunk


def bilinear_kernel(channels, kernel_size):
    """(C, C, k, k) weights of a per-channel bilinear up-sampling (FCN's `upsample_filt`), zero across channels."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    grid = np.arange(kernel_size)
    filt = 1 - np.abs(grid - center) / factor
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = torch.from_numpy(np.outer(filt, filt)).float()
    return weight


def _pair0(value):
    return value[0] if isinstance(value, tuple) else value


def _through(layer, scale, offset):
    """Coordinate map image_x = scale * index + offset carried through one layer to its output."""
    if isinstance(layer, nn.Sequential):
        for sub in layer:
            scale, offset = _through(sub, scale, offset)
        return scale, offset
    if isinstance(layer, nn.ConvTranspose2d):
        k, s, p = _pair0(layer.kernel_size), _pair0(layer.stride), _pair0(layer.padding)
        return scale / s, offset - scale * ((k - 1) / 2 - p) / s
    if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        k, s, p = _pair0(layer.kernel_size), _pair0(layer.stride), _pair0(layer.padding)
        return scale * s, offset + scale * ((k - 1) / 2 - p)
    return scale, offset  # ReLU, LRN, dropout: pointwise


def _crop(x, top_left, size):
    """x[..., o:o+h, o:o+w], checking the map is big enough (it is with FCN's padding of 100)."""
    h, w = size
    if top_left < 0 or x.shape[-2] < top_left + h or x.shape[-1] < top_left + w:
        raise ValueError(f"score map {tuple(x.shape[-2:])} too small to crop {h}x{w} at {top_left}; raise the padding")
    return x[..., top_left:top_left + h, top_left:top_left + w]


def _offset(value):
    rounded = round(value)
    if abs(value - rounded) > 1e-6:
        raise ValueError(f"layers give a non-integer crop offset {value}; use odd up-sampling kernels")
    return int(rounded)


def _tent(length, n_in, stride, kernel, start, like):
    """(length, n_in) weights of a bilinear transposed convolution from its output row `start` on (FCN's filter)."""
    factor = (kernel + 1) // 2
    center = factor - 1 if kernel % 2 == 1 else factor - 0.5
    out = torch.arange(start, start + length, dtype=like.dtype, device=like.device)[:, None]
    taps = out - stride * torch.arange(n_in, dtype=like.dtype, device=like.device)[None, :] - center
    return (1 - taps.abs() / factor).clamp_min(0)  # zero exactly outside the kernel's support


def bilinear_upsample_crop(x, stride, kernel, top_left, size):
    """The [top_left, top_left + size) window of a fixed bilinear ConvTranspose2d(stride, kernel) applied to x.

    The kernel is separable and per-class, so two small matrix products give the same numbers as the transposed
    convolution followed by the crop; on a CPU, PyTorch's 63x63 transposed convolution is the slowest layer.
    """
    full = [(n - 1) * stride + kernel for n in x.shape[-2:]]
    if top_left < 0 or any(top_left + s > f for s, f in zip(size, full, strict=True)):
        raise ValueError(f"score map {tuple(full)} too small to crop {tuple(size)} at {top_left}; raise the padding")
    rows = _tent(size[0], x.shape[-2], stride, kernel, top_left, x)  # (H, h)
    cols = _tent(size[1], x.shape[-1], stride, kernel, top_left, x)  # (W, w)
    return rows @ x @ cols.T  # (N, C, H, W)


def _upsampler(classes, factor):
    """Bias-free transposed convolution by `factor`, odd kernel 2f-1 (voc-fcn-alexnet's 63 for 32) so crops align."""
    up = nn.ConvTranspose2d(classes, classes, 2 * factor - 1, stride=factor, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(classes, up.kernel_size[0]))
    return up


class FCN(nn.Module):
    """FCN-32s/16s/8s over an injected AlexNetEncoder; forward (N, 3, H, W) -> class scores (N, classes, H, W)."""

    def __init__(self, encoder, *, num_classes=21, variant="32s", fc_channels=4096, fc6_kernel=6, pad=100,
                 learn_upsampling=False, dropout=0.5):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown FCN variant {variant!r}; use one of {VARIANTS}")
        self.encoder, self.variant, self.num_classes = encoder, variant, num_classes
        convs = encoder.conv_layers()
        self.input_pad = pad - _pair0(convs[0].padding)  # conv1's own padding counts towards FCN's 100
        if self.input_pad < 0:
            raise ValueError(f"pad {pad} is smaller than conv1's own padding {_pair0(convs[0].padding)}")
        # Caffe rounds pooled sizes up; a trunk that rounds down (torchvision's, pool-free) can come out a few
        # pixels short, so it gets one stride of extra bottom/right padding, which shifts no coordinate.
        ceil = all(m.ceil_mode for m in encoder.modules() if isinstance(m, nn.MaxPool2d))
        self.extra_pad = 0 if ceil and not getattr(encoder, "pool_free", False) else 32
        channels = encoder.out_channels
        self.fc6 = nn.Conv2d(channels, fc_channels, fc6_kernel)  # fc6 as a convolution over pool5
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.dropout = nn.Dropout(dropout)  # 0.5 after fc6 and fc7, as voc-fcn-alexnet
        self.score = nn.Conv2d(fc_channels, num_classes, 1)
        self._tap_layers = {}  # tap name -> index in encoder.features of the ReLU after that conv
        for name in TAPS.get(variant, ()):
            conv = convs[int(name[-1]) - 1]
            index = next(i for i, m in enumerate(encoder.features) if m is conv) + 1
            self._tap_layers[name] = index
            self.add_module(f"score_{name}", nn.Conv2d(conv.out_channels, num_classes, 1))
        strides = {"32s": (32,), "16s": (2, 16), "8s": (2, 2, 8)}[variant]
        self.upsample = nn.ModuleList(_upsampler(num_classes, f) for f in strides)
        for up in self.upsample:
            up.weight.requires_grad_(bool(learn_upsampling))
        self.reset_head()
        self._plan_crops()

    def reset_head(self):
        """Fresh fc6/fc7 (He-normal for ReLU) and zero class scores, as FCN zero-initialises its score layers."""
        for fc in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
            nn.init.zeros_(fc.bias)
        for name, module in self.named_children():
            if name == "score" or name.startswith("score_"):
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)

    def load_fc(self, fc):
        """Copy pretrained fc6/fc7 (torchvision classifier.1/.4 as in pretrain.weights info['fc']) into the convs."""
        for name in ("fc6", "fc7"):
            conv, weight = getattr(self, name), fc[f"{name}.weight"]
            if weight.numel() != conv.weight.numel():
                raise ValueError(f"pretrained {name} has {tuple(weight.shape)} weights; the FCN's {name} is "
                                 f"{tuple(conv.weight.shape)} (use 4096 fc channels and a 6x6 fc6)")
            with torch.no_grad():
                conv.weight.copy_(weight.reshape(conv.weight.shape))  # (4096, 9216) -> (4096, 256, 6, 6)
                conv.bias.copy_(fc[f"{name}.bias"])

    def _plan_crops(self):
        """Integer crop offsets of every fusion and of the final crop, from the coordinate maps (constants)."""
        scale, offset = 1.0, -float(self.input_pad)  # padded index i is image pixel i - pad
        tap_maps = {}
        for i, layer in enumerate(self.encoder.features):
            scale, offset = _through(layer, scale, offset)
            tap_maps.update({name: (scale, offset) for name, idx in self._tap_layers.items() if idx == i})
        for layer in (self.fc6, self.fc7, self.score):
            scale, offset = _through(layer, scale, offset)
        self.crop_offsets = []  # one per fusion: where the up-sampled map starts inside the tap's score map
        for up, name in zip(self.upsample[:-1], self._tap_layers, strict=True):
            scale, offset = _through(up, scale, offset)
            tap_scale, tap_offset = tap_maps[name]
            assert tap_scale == scale, (name, tap_scale, scale)
            self.crop_offsets.append(_offset((offset - tap_offset) / scale))
        scale, offset = _through(self.upsample[-1], scale, offset)
        assert scale == 1.0, scale
        self.final_offset = _offset(-offset)  # output index of image pixel 0 (18 for voc-fcn-alexnet)

    def forward(self, images):
        size = images.shape[-2:]
        pad = self.input_pad
        x = F.pad(images, [pad, pad + self.extra_pad, pad, pad + self.extra_pad])  # (N, 3, H + 2p, W + 2p)
        taps = {}
        for i, layer in enumerate(self.encoder.features):
            x = layer(x)
            for name, idx in self._tap_layers.items():
                if idx == i:
                    taps[name] = x
        x = self.dropout(F.relu(self.fc6(x)))  # (N, 4096, h, w)
        x = self.dropout(F.relu(self.fc7(x)))
        scores = self.score(x)  # (N, classes, h, w) at stride 32
        for up, name, top_left in zip(self.upsample[:-1], self._tap_layers, self.crop_offsets, strict=True):
            scores = up(scores)
            skip = getattr(self, f"score_{name}")(taps[name])
            scores = scores + _crop(skip, top_left, scores.shape[-2:])
        final = self.upsample[-1]
        if final.weight.requires_grad:
            return _crop(final(scores), self.final_offset, size)  # (N, classes, H, W)
        return bilinear_upsample_crop(scores, final.stride[0], final.kernel_size[0], self.final_offset, size)

    def describe(self):
        """Plain dict for the record's protocol."""
        return {"variant": f"FCN-{self.variant}", "input_pad": self.input_pad, "extra_pad": self.extra_pad,
                "fc6_kernel": self.fc6.kernel_size[0], "fc_channels": self.fc6.out_channels,
                "upsampling": "learned, bilinear init" if self.upsample[0].weight.requires_grad else "fixed bilinear",
                "upsample_kernels": [u.kernel_size[0] for u in self.upsample], "final_crop": self.final_offset}


def fcn_from_backbone(backbone, **kwargs):
    """An FCN on a transfer Backbone's trunk whose fc6/fc7 (Linear, over a k×k pool5) become convolutions."""
    fc6, fc7 = backbone.fc6, backbone.fc7
    model = FCN(backbone.encoder, fc_channels=fc6.out_features, fc6_kernel=backbone.pool_shape[1], **kwargs)
    model.load_fc({"fc6.weight": fc6.weight, "fc6.bias": fc6.bias, "fc7.weight": fc7.weight, "fc7.bias": fc7.bias})
    return model
