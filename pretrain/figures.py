"""Figures written next to the checkpoint: the loss curve and a grid of inpainted samples."""

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import save_image  # noqa: E402

from cebench.files import atomic_write  # noqa: E402


def save_loss_curve(history, path, title="context encoder: masked L2 (hole pixels)"):
    """Plot per-step loss and a running mean; `history` is a list of (step, loss)."""
    steps = [s for s, _ in history]
    losses = [v for _, v in history]
    window = max(1, len(losses) // 50)
    smooth = torch.tensor(losses).unfold(0, window, 1).mean(1).tolist() if len(losses) >= window else losses
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(steps, losses, lw=0.6, alpha=0.4, label="per step")
    ax.plot(steps[window - 1:], smooth, lw=1.5, label=f"mean of {window}")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png"))  # a full disk leaves no half-written PNG
    finally:
        plt.close(fig)


def save_sample_grid(masked_inputs, outputs, originals, path):
    """Rows: input with its hole, output pasted into the hole, original; images in [0, 1], (N, 3, H, W) each."""
    grid = torch.cat([masked_inputs, outputs, originals]).float().cpu()
    return atomic_write(path, lambda f: save_image(grid, f, format="png", nrow=len(originals), padding=2,
                                                   pad_value=1.0))


@torch.no_grad()
def preview_batch(model, dataset, device, n=8):
    """The first `n` samples of the stream inpainted by `model`: (masked inputs, outputs, originals) in [0, 1]."""
    from pretrain.data import denormalize, normalize
    from pretrain.masks import context_of

    images, masks, _ = zip(*(dataset[i] for i in range(min(n, len(dataset)))), strict=True)
    target = normalize(torch.stack(images), device)
    masks = torch.stack(masks).to(device)
    was_training = model.training
    model.eval()
    seen = context_of(target, masks, dataset.mask_kind)  # the autoencoder (mask none) sees the whole image
    pred = model(seen).float()
    model.train(was_training)
    original = denormalize(target)
    return denormalize(seen), torch.where(masks, denormalize(pred), original), original


def loss_title(mask_kind):
    """The loss curve's title, true to the run: the autoencoder (mask none) reconstructs the whole image."""
    from pretrain.masks import AUTOENCODER

    if mask_kind == AUTOENCODER:
        return "autoencoder (no mask): L2 over the whole image"
    return f"context encoder ({mask_kind} mask): masked L2 (hole pixels)"


def write_figures(model, dataset, history, paths, device):
    """Loss curve and sample grid at the paths of `pretrain.loop.run_paths`."""
    if history:
        save_loss_curve(history, paths["loss_png"], title=loss_title(dataset.mask_kind))
    save_sample_grid(*preview_batch(model, dataset, device), paths["samples_png"])
