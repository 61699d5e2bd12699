"""Inpainting error over the hole (paper Table 1): mean L1, mean L2 (fractions of the [0, 1] pixel range) and PSNR.

Per image: the mean over hole pixels and colour channels of |prediction - target| (L1) and of its square (L2);
PSNR = 10 log10(1 / L2) in dB. Table values are means over images (every image has the same hole, so the mean
L1/L2 equals the pooled mean over all hole pixels); PSNR is the mean of per-image PSNRs. Context pixels never count.
"""

import numpy as np

from evaluation.metrics import bootstrap_ci

MIN_MSE = 1e-10  # a perfect fill would have infinite PSNR; cap it at 100 dB so that means stay finite


def _as_float(x):
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return x.astype(np.float64, copy=False)


def hole_errors(prediction, target, mask):
    """Per-image hole errors: dict of l1, l2 (fractions) and psnr (dB), each an array [N].

    prediction, target: (N, C, H, W) in [0, 1]; mask: (N or 1, 1, H, W) bool, True inside the hole.
    """
    pred, tgt = _as_float(prediction), _as_float(target)
    hole = np.broadcast_to(_as_float(mask) > 0, (pred.shape[0], 1, *pred.shape[2:]))
    if pred.shape != tgt.shape or pred.ndim != 4:
        raise ValueError(f"prediction and target must be (N, C, H, W) of one shape, got {pred.shape}, {tgt.shape}")
    count = hole.sum(axis=(1, 2, 3)) * pred.shape[1]  # hole pixels x channels, per image
    if np.any(count == 0):
        raise ValueError("every image needs at least one hole pixel")
    diff = np.where(hole, pred - tgt, 0.0)
    l1 = np.abs(diff).sum(axis=(1, 2, 3)) / count
    l2 = np.square(diff).sum(axis=(1, 2, 3)) / count
    return {"l1": l1, "l2": l2, "psnr": psnr(l2)}


def psnr(mse, peak=1.0):
    """Peak signal-to-noise ratio in dB of a mean squared error (pixels in [0, peak])."""
    return 10.0 * np.log10(peak**2 / np.maximum(np.asarray(mse, dtype=np.float64), MIN_MSE))


def summarize(per_image, n_boot=1000, seed=0):
    """{name: (mean, ci_low, ci_high)}: means over images with BCa bootstrap 95% intervals over images."""
    out = {}
    for name, values in per_image.items():
        values = np.asarray(values, dtype=np.float64)
        low, high = bootstrap_ci(lambda counts, v=values: float(np.dot(counts, v) / counts.sum()), len(values),
                                 n_boot=n_boot, seed=seed)
        out[name] = (float(values.mean()), low, high)
    return out
