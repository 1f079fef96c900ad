"""Explaining predictions: attention rollout and the per-image figures predict.py saves.

Figures are drawn on a bare matplotlib Figure (no pyplot, no display needed).
"""
import math

import torch
from matplotlib.figure import Figure

from vit.model import ConvStem
from vit.plots import save_figure, short


@torch.no_grad()
def attention_rollout(model, images):
    """Attention rollout of Abnar & Zuidema, "Quantifying Attention Flow in Transformers" (ACL 2020).

    Runs model(images, return_attn=True) in eval mode (no dropout; BatchNorm's running statistics are left as they
    are), each module's mode restored afterwards, and returns rollout() of its attention weights.
    """
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, torch.nn.Module) else []
    for m, _ in modes:
        m.training = False
    try:
        return rollout(model(images, return_attn=True)[1])
    finally:
        for m, training in modes:
            m.training = training


def rollout(attentions):
    """Per layer average the heads, add the identity for the residual connection and renormalise the rows,
    then multiply the layers (later @ earlier). Returns the class token's row over the patch tokens as
    (B, grid, grid) maps, each >= 0 summing to 1."""
    joint = None
    for attn in attentions:
        layer = attn.float().mean(dim=1)
        layer = layer + torch.eye(layer.shape[-1], device=layer.device)
        layer = layer / layer.sum(dim=-1, keepdim=True)
        joint = layer if joint is None else layer @ joint
    patches = joint[:, 0, 1:].clamp(min=0)
    patches = patches / patches.sum(dim=-1, keepdim=True)
    grid = math.isqrt(patches.shape[-1])
    return patches.reshape(-1, grid, grid)


def model_view(tensor, preprocess):
    """Undo the normalisation of a (3, H, W) model input: an (H, W, 3) float array in [0, 1] to draw."""
    mean = torch.tensor(preprocess["mean"]).view(3, 1, 1)
    std = torch.tensor(preprocess["std"]).view(3, 1, 1)
    return (tensor.detach().cpu().float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def token_shift(model):
    """How far, in input pixels, each token's receptive field is centred up and left of its patch's centre: 0 for
    the patch stem; (patch - 1) / 2 for the conv stem, whose stride-2 3x3 convolutions (padding 1) centre token
    (i, j) on pixel (patch * i, patch * j), the top-left corner of its patch, not on patch * (i + 1/2) - 1/2."""
    return (model.patch_size - 1) / 2 if isinstance(getattr(model.embed, "stem", None), ConvStem) else 0.0


def _bilinear_weights(n_out, n_in, shift):
    """(n_out, n_in) weights of a 1-D bilinear resize with edges clamped: F.interpolate's (align_corners=False) at
    shift 0; shift moves every source sample `shift` output pixels up/left."""
    y = torch.arange(n_out, dtype=torch.float64)
    src = ((y + 0.5 + shift) * n_in / n_out - 0.5).clamp(0, n_in - 1)
    lo = src.floor().long()
    hi, frac = (lo + 1).clamp(max=n_in - 1), src - lo
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    weights[torch.arange(n_out), lo] += 1 - frac
    weights[torch.arange(n_out), hi] += frac
    return weights


def upsample(attn_map, size, shift=0.0):
    """Bilinearly resize a (grid, grid) map to size=(H, W), scaled so its maximum is 1; each cell drawn on its
    tokens' receptive-field centre: `shift` pixels (token_shift) up and left of its patch's centre."""
    attn_map = attn_map.detach().double().cpu()
    heat = _bilinear_weights(size[0], attn_map.shape[0], shift) @ attn_map @ _bilinear_weights(
        size[1], attn_map.shape[1], shift).T
    return (heat / heat.max().clamp(min=1e-12)).float().numpy()


def save_prediction_figure(image, names, probs, path):
    """Save the image (H, W, 3) beside horizontal bars of its top-K classes (names, probs best first)."""
    fig = Figure(figsize=(8, 3.5), layout="constrained")
    ax_image, ax_bars = fig.subplots(1, 2, width_ratios=[1, 1.3])
    ax_image.imshow(image)
    ax_image.axis("off")
    rows = range(len(names))
    ax_bars.barh(rows, probs, color="tab:blue")
    ax_bars.set_yticks(rows, short(names))
    ax_bars.invert_yaxis()
    ax_bars.set_xlim(0, 1)
    ax_bars.set_xlabel("probability")
    for row, p in zip(rows, probs):  # the label right of its bar, or inside it in white when the bar is long
        inside = p > 0.8
        ax_bars.text(p - 0.02 if inside else p + 0.02, row, f"{p:.1%}", va="center",
                     ha="right" if inside else "left", color="white" if inside else "black")
    fig.suptitle(f"{short(names[:1], 60)[0]} ({probs[0]:.1%})")
    save_figure(fig, path)


def save_attention_figure(image, attn_map, title, path, shift=0.0):
    """Save the image (H, W, 3) beside it with its attention map upsampled and overlaid (shift: token_shift of the
    model, for an image at the model's input size)."""
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax_image, ax_overlay = fig.subplots(1, 2)
    ax_image.imshow(image)
    ax_image.set_title("model input")
    ax_overlay.imshow(image)
    shown = ax_overlay.imshow(upsample(attn_map, tuple(image.shape[:2]), shift), cmap="inferno", alpha=0.55)
    fig.colorbar(shown, ax=ax_overlay, fraction=0.046, pad=0.04, label="attention (1: the most)")
    ax_overlay.set_title("attention rollout")
    for ax in (ax_image, ax_overlay):
        ax.axis("off")
    fig.suptitle(title)
    save_figure(fig, path)
