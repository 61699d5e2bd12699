"""Fast R-CNN (Girshick 2015) on the shared AlexNet backbone: conv5 -> RoI max-pooling -> fc6/fc7 -> two heads.

    backbone, info = transfer.backbone.build_backbone(spec, input_size=227)   # pool5 6×6 sets the RoI grid
    model = FastRCNN(backbone, num_classes=21)
    class_logits, box_deltas = model(images, rois)   # rois (R, 5): batch index, x1, y1, x2, y2 in input pixels

The trunk is the backbone's encoder without its last pooling (pool5): RoI max-pooling takes its place, onto
the grid fc6 was built for (6×6 for AlexNet at 227), at the trunk's stride (16, the Fast R-CNN convention).
"""

import torch
from torch import nn
from torchvision.ops import roi_pool

# Fast R-CNN's fills for the new heads (train_net prototxts): small, zero bias.
CLS_STD, BOX_STD = 0.01, 0.001


def conv5_layers(encoder):
    """The encoder's layers up to conv5's ReLU, i.e. all but the final pool5 (or its pool-free stand-in)."""
    layers = list(encoder.features)
    last = layers[-1]
    if not (isinstance(last, nn.MaxPool2d) or (isinstance(last, nn.Sequential) and isinstance(last[0], nn.Conv2d))):
        raise ValueError(f"expected the encoder to end with pool5, found {type(last).__name__}")
    return layers[:-1]


def trunk_stride(encoder):
    """Product of the strides up to conv5: the pixels per conv5 cell (16 for AlexNet)."""
    stride = 1
    for layer in conv5_layers(encoder):
        conv = layer[0] if isinstance(layer, nn.Sequential) else layer
        if isinstance(conv, (nn.Conv2d, nn.MaxPool2d)):
            s = conv.stride
            stride *= s[0] if isinstance(s, tuple) else s
    return stride


class FastRCNN(nn.Module):
    """Backbone trunk + RoI pooling + the backbone's fc6/fc7 + softmax classifier and class-specific boxes."""

    def __init__(self, backbone, num_classes=21, generator=None):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self._conv5 = conv5_layers(backbone.encoder)  # a plain list: the modules are registered via backbone
        self.spatial_scale = 1.0 / trunk_stride(backbone.encoder)
        self.pool_size = tuple(backbone.pool_shape[1:])  # (6, 6) at 227: the grid fc6 expects
        self.cls_score = nn.Linear(backbone.out_features, num_classes)
        self.bbox_pred = nn.Linear(backbone.out_features, 4 * num_classes)
        with torch.no_grad():
            self.cls_score.weight.normal_(0.0, CLS_STD, generator=generator)
            self.bbox_pred.weight.normal_(0.0, BOX_STD, generator=generator)
            self.cls_score.bias.zero_()
            self.bbox_pred.bias.zero_()

    def conv5(self, images):
        """Normalised images (N, 3, H, W) -> conv5 features (N, C, H/16, W/16)."""
        x = images
        for layer in self._conv5:
            x = layer(x)
        return x

    def forward(self, images, rois):
        """Images (N, 3, H, W) and rois (R, 5) -> class logits (R, C) and box deltas (R, 4·C)."""
        features = self.conv5(images)  # (N, 256, h, w)
        # float32: torchvision's CPU roi_pool has no bfloat16 kernel (under autocast fc6/fc7 cast back down)
        features = features.float()
        pooled = roi_pool(features, rois.to(features.dtype), self.pool_size, self.spatial_scale)  # (R, 256, 6, 6)
        fc7 = self.backbone.forward_fc(pooled)  # (R, fc_dim)
        return self.cls_score(fc7), self.bbox_pred(fc7)
