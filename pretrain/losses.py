"""Reconstruction loss masked to the hole (paper Eq. 1), with the optional overlap band, and the adversarial loss."""

import torch
import torch.nn.functional as F

from pretrain.masks import overlap_band


def loss_weights(mask, overlap=0, overlap_weight=10.0):
    """Per-pixel L2 weights (N, 1, H, W): 1 in the hole, `overlap_weight` in the band around it, 0 elsewhere."""
    weights = mask.float()
    if overlap > 0:  # paper §3.2: the prediction overlaps the context by a few px, weighted 10×
        weights = weights + overlap_weight * overlap_band(mask, overlap).float()
    return weights


def masked_l2(prediction, target, mask, overlap=0, overlap_weight=10.0):
    """Weighted squared error over the hole, averaged per hole pixel and channel; context pixels contribute 0."""
    weights = loss_weights(mask.to(prediction.device), overlap, overlap_weight)  # (N, 1, H, W)
    squared = (prediction.float() - target.float()).pow(2)  # (N, 3, H, W)
    # torch.where, not a product: a non-finite value outside the weighted region must not leak in as 0·inf
    weighted = torch.where(weights > 0, squared * weights, torch.zeros((), device=squared.device))
    count = (weights > 0).sum() * prediction.shape[1]
    return weighted.sum() / count.clamp(min=1)


def generator_adversarial_loss(fake_logits):
    """Non-saturating GAN loss for the context encoder: make the discriminator call its output real."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_loss(real_logits, fake_logits):
    """Standard GAN discriminator loss: real images -> 1, reconstructions -> 0."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return 0.5 * (real + fake)
