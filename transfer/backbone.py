"""A transfer backbone from a weights spec: the AlexNet trunk of `pretrain.weights.load_encoder` plus fc6/fc7.

    backbone, info = build_backbone("results/voc-mini/ce.pt", input_size=128)
    summary = rescale_backbone_(backbone, info, calib_images)       # Krähenbühl et al., as the paper
    pool5 = backbone.forward_features(x)                            # (N, 256, 6, 6) at 227
    fc7 = backbone(x)                                               # (N, 4096), after ReLU and dropout

The paper transfers conv1–pool5 and re-initialises the fully-connected layers (PAPER.md): fc6/fc7 start from
N(0, 0.01) with bias 0.1 (the rule of Krähenbühl's voc-classification for re-initialised layers) unless the
weights carry fitting ones (a torchvision AlexNet state_dict at a 6×6 pool5). With rescaling, layers without
pretrained weights (fc6/fc7, the task's classifier layer fc8, and for `random` every layer) are normalised on
data, then all are rescaled.
"""

import torch
import torch.nn.functional as F
from torch import nn

from cebench.errors import CebenchError
from pretrain import data as pretrain_data
from pretrain.health import health_record
from cebench.flags import KMEANS, RANDOM
from pretrain.weights import load_encoder
from transfer.rescale import krahenbuhl_rescale_, parameter_layers

FC_STD, FC_BIAS = 0.01, 0.1  # voc-classification's fill for layers initialised at random
# The input every backbone expects (as timm's pretrained_cfg): RGB scaled to [0, 1], standardised by the statistics
# the encoder was pretrained with (pretrain.data); a uint8 image padded with pad_rgb is 0 there once normalised.
PRETRAINED_CFG = {"mean": pretrain_data.IMAGE_MEAN, "std": pretrain_data.IMAGE_STD,
                  "pad_rgb": tuple(int(round(255 * m)) for m in pretrain_data.IMAGE_MEAN)}


def normalize(images, device):
    """uint8 (N, 3, H, W) -> the backbone's float input on `device` (pretraining's normalisation, the same function)."""
    return pretrain_data.normalize(images, device)


class Backbone(nn.Module):
    """AlexNet conv1–pool5 (`encoder`) followed by fc6 and fc7 with ReLU and dropout; `pretrained_cfg` and
    `normalize` say what input it expects."""

    pretrained_cfg = PRETRAINED_CFG

    def __init__(self, encoder, pool_shape, fc_dim=4096, dropout=0.5):
        super().__init__()
        self.encoder = encoder
        self.pool_shape = tuple(int(v) for v in pool_shape)  # (C, h, w) of pool5 that fc6 expects
        c, h, w = self.pool_shape
        self.fc6 = nn.Linear(c * h * w, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.dropout = nn.Dropout(dropout)
        self.out_features = fc_dim

    def normalize(self, images):
        """uint8 (N, 3, H, W) -> normalised float input on the backbone's device."""
        return normalize(images, self.fc6.weight.device)

    def forward_features(self, x):
        """Normalised images (N, 3, H, W) -> pool5 (N, C, h, w)."""
        return self.encoder.forward_features(x)

    def forward_fc(self, pool5):
        """pool5 (N, C, h, w) -> fc7 activations (N, fc_dim)."""
        z = self.dropout(F.relu(self.fc6(pool5.flatten(1))))
        return self.dropout(F.relu(self.fc7(z)))

    def forward(self, x):
        return self.forward_fc(self.forward_features(x))

    def parameter_layers(self):
        """Every Conv2d/Linear in forward order: conv1..conv5 (and pool-free downsamplers), fc6, fc7."""
        return [*parameter_layers(self.encoder), self.fc6, self.fc7]


def gaussian_fill_(layer, std=FC_STD, bias=FC_BIAS, generator=None):
    """Weights N(0, std²), constant bias."""
    with torch.no_grad():
        layer.weight.normal_(0.0, std, generator=generator)
        layer.bias.fill_(bias)
    return layer


def build_backbone(spec, *, arch=None, input_size=227, fc_dim=4096, dropout=0.5, seed=0, train_images=None):
    """Weights spec -> (Backbone, info); `arch` (AlexNetEncoder kwargs) and `train_images` (paths: what `kmeans`
    clusters, at `input_size`) as `pretrain.weights.load_encoder` reads them."""
    encoder, info = load_encoder(spec, arch=arch, seed=seed, train_images=train_images, image_size=input_size)
    pool_shape = encoder.feature_shape(input_size)
    if min(pool_shape[1:]) < 1:
        raise CebenchError(f"input size {input_size} is too small for the {info['arch']} encoder")
    backbone = Backbone(encoder, pool_shape, fc_dim=fc_dim, dropout=dropout)
    gen = torch.Generator().manual_seed(seed + 1)
    fc = info.get("fc")
    fits = fc is not None and tuple(fc["fc6.weight"].shape) == tuple(backbone.fc6.weight.shape) and tuple(
        fc["fc7.weight"].shape) == tuple(backbone.fc7.weight.shape)
    if fits:
        with torch.no_grad():
            for name in ("fc6", "fc7"):
                getattr(backbone, name).weight.copy_(fc[f"{name}.weight"])
                getattr(backbone, name).bias.copy_(fc[f"{name}.bias"])
    else:
        gaussian_fill_(backbone.fc6, generator=gen)
        gaussian_fill_(backbone.fc7, generator=gen)
    info = dict(info, fc=None, fc_init="pretrained" if fits else "gaussian", pool5_shape=list(pool_shape),
                fc_dim=fc_dim, input_size=input_size)
    return backbone, info


def fresh_layers(backbone, info):
    """Layers without pretrained weights: every layer for `random` and `kmeans` (Krähenbühl et al. normalise their
    k-means layers on the task's data too), else fc6/fc7 unless they were loaded."""
    if info["init"] in (RANDOM, KMEANS):
        return backbone.parameter_layers()
    return [] if info["fc_init"] == "pretrained" else [backbone.fc6, backbone.fc7]


def rescale_layers(backbone, info, top=None):
    """(layers, fresh) of Krähenbühl's rescaling: the backbone's, plus the task's classifier layer `top` (fc8).

    voc-classification runs magic_init on the whole classifier, so fc8 is initialised from data and rescaled with
    the rest for every init (its Gaussian fill is only a starting point); without `top`, fc7 is the top layer.
    """
    top = [] if top is None else [top]
    return [*backbone.parameter_layers(), *top], [*fresh_layers(backbone, info), *top]


def rescale_backbone_(backbone, info, images, *, model=None, top=None, iterations=10, seed=0):
    """Krähenbühl's data-dependent init + between-layer rescaling on a batch of normalised training images.

    `model` (default: the backbone) is what the images go through; `top` is its classifier layer (fc8).
    """
    model = backbone if model is None else model
    layers, fresh = rescale_layers(backbone, info, top)
    summary = krahenbuhl_rescale_(model, model, layers, fresh, images, iterations=iterations, seed=seed)
    summary["normalised_layers"] = len(fresh)
    summary["classifier_layer_rescaled"] = top is not None
    return summary


def measure_health(backbone, image_paths, size, device, *, n_images, seed, source, rescaled):
    """The record's feature_health of the init: `n_images` (--health-images) fixed seeded views of the task's
    training images at `size`."""
    weights = "after Krähenbühl rescaling" if rescaled else "as loaded (no rescaling)"
    return health_record(backbone.encoder, image_paths, n_images, size, seed=seed, device=device, source=source,
                         weights=weights)


def health_of_init(rescaling, measure):
    """feature_health of the init as the task fine-tunes it: the one measured right after rescaling (kept in the
    rescaling summary, so a resumed run still has it), else `measure(rescaled=False)` on the loaded weights."""
    if rescaling.get("applied"):
        return rescaling.pop("feature_health", None)
    return measure(rescaled=False)
