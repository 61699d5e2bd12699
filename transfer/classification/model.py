"""The classification model: the shared backbone (conv1-fc7) and fc8, one sigmoid per VOC class."""

from torch import nn

from transfer.backbone import gaussian_fill_


class Classifier(nn.Module):
    """Backbone (conv1–fc7) + fc8: 20 logits, one sigmoid per VOC class."""

    def __init__(self, backbone, num_classes=20, generator=None):
        super().__init__()
        self.backbone = backbone
        self.fc8 = gaussian_fill_(nn.Linear(backbone.out_features, num_classes), generator=generator)

    def forward(self, x):
        return self.fc8(self.backbone(x))  # (N, 20)
