"""The optimiser of the recipe: AdamW with decoupled weight decay (Loshchilov & Hutter 2019) on the weight
matrices only, and a learning rate that warms up linearly, then follows a cosine to 0 (stepped per batch)."""
import math

import torch


def param_groups(module, weight_decay):
    """AdamW groups: weight matrices decay; norms, biases, class token and position embeddings do not."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(("cls_token", "pos_embed")) else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def lr_factor(step, warmup, total):
    """Multiplier of the peak lr: linear warmup over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1), 1.0)))


def adamw_warmup_cosine(module, lr, weight_decay, warmup, total, fused=False):
    """(optimizer, scheduler) for the trainable parameters of module; call scheduler.step() after each batch."""
    optimizer = torch.optim.AdamW(param_groups(module, weight_decay), lr=lr, fused=fused)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total))
