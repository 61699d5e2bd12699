"""The context encoder (Pathak et al. 2016, §3): AlexNet encoder, channel-wise FC bottleneck, up-conv decoder.

Constructors take explicit keyword arguments only; they never see devices, DDP or data.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.data import IMAGE_STD

# (out_channels, kernel, stride, padding, groups) of conv1..conv5, and whether a max-pool (3/2) follows.
_TRUNKS = {
    # CaffeNet (bvlc_reference_caffenet), the paper's encoder: LRN after pool1/pool2, grouped conv2/4/5.
    "caffenet": [(96, 11, 4, 0, 1), (256, 5, 1, 2, 2), (384, 3, 1, 1, 1), (384, 3, 1, 1, 2), (256, 3, 1, 1, 2)],
    # torchvision.models.alexnet `features`: no LRN, no groups.
    "torchvision": [(64, 11, 4, 2, 1), (192, 5, 1, 2, 1), (384, 3, 1, 1, 1), (256, 3, 1, 1, 1), (256, 3, 1, 1, 1)],
}
_POOL_AFTER = (True, True, False, False, True)

# CaffeNet's LRN (local_size 5, alpha 1e-4, beta 0.75, k 1): b = a / (k + alpha/5 * sum_5ch a^2)^beta.
# Its constants assume Caffe's input, pixels in 0-255 minus the mean. Our input is ImageNet-normalised,
# (p/255 - mean)/std, i.e. Caffe's input divided by s = 255 * std ~ 57.6 (std averaged over RGB: 0.226). With the
# same weights, a ReLU net's activations up to pool1 (and, by the same argument, pool2) are s times smaller than
# Caffe's, so Caffe's alpha sees a sum of squares s^2 ~ 3,300 times too small and the layer is nearly the
# identity. Running it on activations brought back to Caffe's range and scaling back,
#     s * LRN_caffe(a / s) = a / (k + (alpha * s^2)/5 * sum a^2)^beta,
# is one LRN with alpha * s^2: the output/input ratio of every unit is then the one Caffe computes on the
# equivalent 0-255 input. "unscaled" (Caffe's alpha on normalised input) is what ce.pt files written before the
# change ran with; they keep it when loaded.
CAFFE_INPUT_SCALE = 255.0 * sum(IMAGE_STD) / len(IMAGE_STD)
LRN_ALPHA = {"caffe-range": 1e-4 * CAFFE_INPUT_SCALE**2, "unscaled": 1e-4}


def _scaled(channels, width, groups):
    """Channel count scaled by `width`, kept a positive multiple of the group count (and of 2 for LRN groups)."""
    step = max(groups, 2) if width != 1.0 else 1
    return max(step, int(round(channels * width / step)) * step)


class AlexNetEncoder(nn.Module):
    """conv1..conv5 + pool5 of AlexNet; `features` indices match torchvision's for arch='torchvision'."""

    def __init__(self, arch="caffenet", pool_free=False, width=1.0, in_channels=3, lrn="caffe-range"):
        super().__init__()
        if arch not in _TRUNKS:
            raise ValueError(f"unknown encoder arch {arch!r}; use one of {sorted(_TRUNKS)}")
        if lrn not in LRN_ALPHA:
            raise ValueError(f"unknown LRN convention {lrn!r}; use one of {sorted(LRN_ALPHA)}")
        self.arch, self.pool_free, self.width, self.lrn = arch, bool(pool_free), float(width), lrn
        caffe = arch == "caffenet"
        layers, self._conv_idx, channels = [], [], in_channels
        for i, (out, k, s, p, g) in enumerate(_TRUNKS[arch]):
            out = _scaled(out, width, g)
            self._conv_idx.append(len(layers))
            layers += [nn.Conv2d(channels, out, k, s, p, groups=g), nn.ReLU(inplace=True)]
            channels = out
            if _POOL_AFTER[i]:
                layers.append(self._downsample(channels, ceil_mode=caffe))
                if caffe and i < 2:  # CaffeNet normalises after pool1 and pool2
                    layers.append(nn.LocalResponseNorm(5, alpha=LRN_ALPHA[lrn], beta=0.75, k=1.0))
        self.features = nn.Sequential(*layers)
        self.out_channels = channels

    def _downsample(self, channels, ceil_mode):
        """Max-pool 3/2, or for the pool-free variant a learned 3×3 stride-2 convolution (+ReLU) in its place."""
        if not self.pool_free:
            # Caffe rounds pooled sizes up; ceil_mode reproduces its 55->27->13->6 at 227 and 3x3 pool5 at 128.
            return nn.MaxPool2d(3, 2, ceil_mode=ceil_mode)
        return nn.Sequential(nn.Conv2d(channels, channels, 3, 2), nn.ReLU(inplace=True))

    def forward_features(self, x):
        """Images (N, 3, H, W), normalised, -> pool5 (N, C, h, w)."""
        return self.features(x)

    forward = forward_features

    def conv_layers(self):
        """conv1..conv5 in order (the pool-free downsampling convolutions are not among them)."""
        return [self.features[i] for i in self._conv_idx]

    def conv_relus(self):
        """The ReLU after each of conv1..conv5, in order (their outputs are the layers' activations)."""
        return [self.features[i + 1] for i in self._conv_idx]

    def feature_shape(self, input_size):
        """pool5 shape (C, h, w) for a square `input_size` or an (H, W) pair, computed without running the net."""
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        for layer in self.features:
            conv = layer[0] if isinstance(layer, nn.Sequential) else layer
            if isinstance(conv, (nn.Conv2d, nn.MaxPool2d)):
                h, w = _out_size(h, conv), _out_size(w, conv)
        return (self.out_channels, h, w)

    def constructor_args(self):
        """Plain dict that rebuilds this encoder with AlexNetEncoder(**args) (stored as ce.pt `arch`)."""
        return {"arch": self.arch, "pool_free": self.pool_free, "width": self.width, "lrn": self.lrn}


def min_input_size(arch="caffenet", pool_free=False):
    """The smallest square input whose pool5 is at least 1x1 (CaffeNet: 39 px; a smaller one has no features)."""
    encoder = AlexNetEncoder(arch, pool_free=pool_free, width=0.1)  # pool5's size does not depend on the width
    return next(size for size in range(1, 1024) if min(encoder.feature_shape(size)[1:]) >= 1)


def _out_size(size, layer):
    k, s, p = (_pair0(layer.kernel_size), _pair0(layer.stride), _pair0(layer.padding))
    span = size + 2 * p - k
    ceil = isinstance(layer, nn.MaxPool2d) and layer.ceil_mode
    out = (math.ceil(span / s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + p:  # PyTorch's rule: the last window must start inside the input
        out -= 1
    return out


def _pair0(v):
    return v[0] if isinstance(v, tuple) else v


def gaussian_init_(encoder, std=0.01, generator=None):
    """The paper's 'Random Gaussian' baseline: conv weights N(0, std²), zero biases (rescaling comes later)."""
    with torch.no_grad():
        for m in encoder.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0.0, std, generator=generator)
                m.bias.zero_()
    return encoder


class ChannelwiseFC(nn.Module):
    """Per channel an (n², n²) fully-connected map, no connections between channels (paper §3.1)."""

    def __init__(self, channels, height, width):
        super().__init__()
        n2 = height * width
        self.channels, self.height, self.width = channels, height, width
        self.weight = nn.Parameter(torch.empty(channels, n2, n2))  # (C, n², n²): 256·36·36 at 6×6
        self.bias = nn.Parameter(torch.zeros(channels, 1, n2))
        bound = 1.0 / math.sqrt(n2)  # nn.Linear's default fan-in scale, per channel
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x):
        n, c, h, w = x.shape  # (N, C, h, w)
        flat = x.reshape(n, c, h * w).transpose(0, 1)  # (C, N, n²)
        out = torch.baddbmm(self.bias, flat, self.weight)  # one batched matmul over channels: (C, N, n²)
        return out.transpose(0, 1).reshape(n, c, h, w)


class Decoder(nn.Module):
    """Five 4×4 stride-2 up-convolutions (×32), ReLU after the first four; the fifth emits normalised pixels."""

    def __init__(self, in_channels, channels=(128, 64, 64, 32), out_channels=3):
        super().__init__()
        sizes = [in_channels, *channels, out_channels]
        layers = []
        for i in range(5):
            layers.append(nn.ConvTranspose2d(sizes[i], sizes[i + 1], 4, 2, 1))
            if i < 4:  # pixels are mean-subtracted, so a ReLU on the output layer would forbid dark pixels
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x, size):
        y = self.layers(x)  # (N, 3, 32h, 32w): 192×192 from 6×6
        if tuple(y.shape[-2:]) != tuple(size):
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y  # (N, 3, H, W)


class ContextEncoder(nn.Module):
    """Injected encoder -> channel-wise FC (+dropout) -> 1×1 conv across channels -> up-conv decoder."""

    def __init__(self, encoder, input_size=227, dropout=0.5, decoder_width=1.0):
        super().__init__()
        self.encoder = encoder
        self.input_size, self.dropout_p, self.decoder_width = int(input_size), float(dropout), float(decoder_width)
        c, h, w = encoder.feature_shape(self.input_size)
        if h < 1 or w < 1:
            raise ValueError(f"input size {input_size} is too small for the encoder (pool5 {h}×{w})")
        self.channelwise_fc = ChannelwiseFC(c, h, w)
        self.dropout = nn.Dropout(dropout)  # 0.5 on the channel-wise layer (paper §5.2)
        self.mix = nn.Conv2d(c, c, 1)  # stride-1 convolution that propagates information across channels
        dec = tuple(max(8, int(round(ch * decoder_width))) for ch in (128, 64, 64, 32))
        self.decoder = Decoder(c, dec)

    def forward(self, masked_images):
        """(N, 3, H, W) images with the hole set to zero -> reconstruction (N, 3, H, W)."""
        z = self.encoder.forward_features(masked_images)  # (N, 256, 6, 6)
        z = self.dropout(F.relu(self.channelwise_fc(z)))
        z = F.relu(self.mix(z))
        return self.decoder(z, masked_images.shape[-2:])

    def decoder_args(self):
        """Plain dict of the non-encoder constructor arguments (stored as ce.pt `decoder_arch`)."""
        return {"input_size": self.input_size, "dropout": self.dropout_p, "decoder_width": self.decoder_width}

    def decoder_state_dict(self):
        """Weights of everything after pool5 (channel-wise FC, 1×1 conv, decoder)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}


class Discriminator(nn.Module):
    """DCGAN-style critic (4×4 stride-2 convs, LeakyReLU 0.2) for the optional adversarial loss."""

    def __init__(self, in_channels=3, width=64, depth=4):
        super().__init__()
        layers, c = [], in_channels
        for i in range(depth):
            out = width * 2**i
            layers += [nn.Conv2d(c, out, 4, 2, 1), *([nn.BatchNorm2d(out)] if i else []),
                       nn.LeakyReLU(0.2, inplace=True)]
            c = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, 1)

    def forward(self, images):
        """(N, 3, H, W) -> real/fake logits (N,)."""
        return self.head(self.body(images).mean(dim=(2, 3))).squeeze(1)
