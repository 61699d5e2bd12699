"""Data-dependent initialisation and between-layer rescaling (Krähenbühl et al., ICLR 2016, code `magic_init`).

The paper's transfer numbers start from this (PAPER.md, "Rescaling"): layers without pretrained weights are
scaled so every unit's pre-activation has zero mean and unit variance on a batch of training images
(`normalize_layers_`), then all layers are rescaled together until the ratio of gradient to weight magnitude
is the same for every layer (`equalize_gradient_ratios_`), with random Gaussian gradients at the top.

Both work on any network through `forward(images)` plus its parameter layers (Conv2d/Linear) in forward order,
so classification, detection and segmentation use them alike. They run in eval mode (no dropout).
"""

import math

import torch
from torch import nn


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


def _unit_stats(output):
    """Per output unit (channel) mean and std over samples and positions of (N, C[, H, W])."""
    flat = output.transpose(0, 1).reshape(output.shape[1], -1)  # (C, N*H*W)
    return flat.mean(dim=1), flat.std(dim=1)


def _layer_output(forward, layer, images):
    """The output (pre-activation) of `layer` when `images` go through `forward`; stops there."""
    out = _top_output(forward, layer, images, grad=False)
    return out.detach()


@torch.no_grad()
def normalize_layers_(forward, layers, images, bias=0.0, eps=1e-8):
    """Scale each layer (in order) so its units' pre-activations on `images` have mean `bias` and unit std."""
    stats = []
    for layer in layers:
        mean, std = _unit_stats(_layer_output(forward, layer, images))
        std = std.clamp_min(eps)
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        layer.weight.div_(std.view(shape))
        layer.bias.copy_((layer.bias - mean) / std + bias)
        stats.append({"mean_before": float(mean.mean()), "std_before": float(std.mean())})
    return stats


def _top_output(forward, top_layer, images, grad):
    """Output of the top layer, stopping there (an in-place ReLU after it would otherwise overwrite it)."""
    captured = {}

    def hook(module, inputs, output):
        captured["out"] = output
        raise _Stop

    handle = top_layer.register_forward_hook(hook)
    try:
        with torch.set_grad_enabled(grad):
            forward(images)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "out" not in captured:
        raise ValueError("forward() does not use the layer")
    return captured["out"]


def _ratios_and_scales(forward, layers, images, generator, draws=4):
    """One forward/backward: gradient/weight ratios, top-output std and mean |input| of every layer."""
    params = [layer.weight for layer in layers]
    scales = {}
    def record(i, inputs):
        scales[i] = float(inputs[0].detach().abs().mean())

    hooks = [layer.register_forward_pre_hook(lambda m, inp, i=i: record(i, inp)) for i, layer in enumerate(layers)]
    try:
        top = _top_output(forward, layers[-1], images, grad=True)
    finally:
        for h in hooks:
            h.remove()
    # Mean squared gradient over a few draws of G: one draw alone is noisy when the top layer is small.
    grad_sq = [0.0] * len(params)
    for d in range(draws):
        noise = torch.randn(top.shape, generator=generator).to(top.device)
        grads = torch.autograd.grad((top * noise).sum(), params, allow_unused=True, retain_graph=d < draws - 1)
        if any(g is None for g in grads):
            raise ValueError("a layer receives no gradient from the top layer")
        grad_sq = [acc + float(g.pow(2).mean()) / draws for acc, g in zip(grad_sq, grads, strict=True)]
    weight_sq = [max(float(w.detach().pow(2).mean()), 1e-30) for w in params]
    ratios = [math.sqrt(g2 / w2) for g2, w2 in zip(grad_sq, weight_sq, strict=True)]
    output_std = float(_unit_stats(top.detach())[1].mean())
    return ratios, output_std, [scales[i] for i in range(len(layers))]


def gradient_weight_ratios(forward, layers, images, generator=None, draws=4):
    """Per layer sqrt(E[mean(dL/dW^2)] / mean(W^2)) for L = <top, G>, G ~ N(0, 1) at the last layer's output."""
    return _ratios_and_scales(forward, layers, images, generator, draws)[0]


@torch.no_grad()
def _apply_scales(forward, layers, images, scales, bottom_scale):
    """One forward pass that rescales each layer just before it runs, seeing the already rescaled input."""

    def rescale(module, inputs, i):
        # The layer's input changed scale by adj (layers below were rescaled): keep the bias in step with it.
        current = float(inputs[0].abs().mean())
        module.bias.mul_(current / bottom_scale[i] * scales[i])
        module.weight.mul_(scales[i])
        bottom_scale[i] = current

    hooks = [layer.register_forward_pre_hook(lambda m, inp, i=i: rescale(m, inp, i)) for i, layer in enumerate(layers)]
    try:
        _top_output(forward, layers[-1], images, grad=False)
    finally:
        for h in hooks:
            h.remove()


def equalize_gradient_ratios_(forward, layers, images, iterations=10, tol=0.01, generator=None):
    """Rescale layers until their gradient/weight ratios agree within `tol` (in log) and the top std is ~1."""
    ratios, output_std, bottom_scale = _ratios_and_scales(forward, layers, images, generator)
    history = []
    for it in range(iterations + 1):
        if it:
            ratios, output_std, _ = _ratios_and_scales(forward, layers, images, generator)
        # Geometric mean of the ratios, corrected by the output scale so a homogeneous net converges to top std 1.
        target = math.exp(sum(math.log(r) for r in ratios) / len(ratios)) * output_std ** (1.0 / len(ratios))
        history.append({"ratios": ratios, "target": target, "output_std": output_std})
        if it == iterations or all(abs(math.log(r / target)) < tol for r in ratios):
            break
        _apply_scales(forward, layers, images, [math.sqrt(r / target) for r in ratios], bottom_scale)
    return history


def parameter_layers(module):
    """Conv2d and Linear layers of a module in registration order (forward order for sequential nets)."""
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def krahenbuhl_rescale_(model, forward, layers, fresh_layers, images, *, iterations=10, bias=0.0, seed=0):
    """Both steps on `model` in eval mode: normalise `fresh_layers`, then equalise all `layers`; returns a summary."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    try:
        normalize_layers_(forward, [m for m in layers if any(m is f for f in fresh_layers)], images, bias=bias)
        history = equalize_gradient_ratios_(forward, layers, images, iterations=iterations, generator=gen)
    finally:
        model.train(was_training)
    first, last = history[0], history[-1]
    return {"iterations": len(history) - 1, "n_images": int(images.shape[0]),
            "ratio_spread_before": max(first["ratios"]) / min(first["ratios"]),
            "ratio_spread_after": max(last["ratios"]) / min(last["ratios"]),
            "output_std_after": last["output_std"]}
