"""Tests for vit/optim.py: which parameters decay, and the warm-up + cosine schedule."""
import math

from vit import build_model
from vit.optim import adamw_warmup_cosine, lr_factor


def test_only_weight_matrices_decay():
    model = build_model("vit_ti_16", image_size=32, patch_size=8, num_layers=1, num_classes=3)
    model.head.requires_grad_(False)  # frozen parameters are left out
    optimizer, _ = adamw_warmup_cosine(model, 1e-3, 0.05, warmup=2, total=10)
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = ([names[id(p)] for p in g["params"]] for g in optimizer.param_groups)
    assert optimizer.param_groups[0]["weight_decay"] == 0.05 and optimizer.param_groups[1]["weight_decay"] == 0.0
    assert "blocks.0.attn.qkv.weight" in decay and "embed.proj.weight" in decay
    assert {"embed.cls_token", "embed.pos_embed", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"} <= set(no_decay)
    assert all(not n.endswith("bias") and "norm" not in n for n in decay)
    assert not any(n.startswith("head.") for n in decay + no_decay)


def test_linear_warmup_then_cosine_to_zero():
    assert [lr_factor(s, 4, 12) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 12) == 1.0 and math.isclose(lr_factor(8, 4, 12), 0.5)
    assert lr_factor(12, 4, 12) == 0.0 and lr_factor(20, 4, 12) == 0.0  # stays at 0 past the end
    model = build_model("vit_ti_16", image_size=32, patch_size=8, num_layers=1, num_classes=3)
    optimizer, scheduler = adamw_warmup_cosine(model, 1e-3, 0.05, warmup=4, total=12)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert math.isclose(lrs[0], 2.5e-4) and math.isclose(max(lrs), 1e-3) and lrs.index(max(lrs)) == 3
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))  # decays every step after the warm-up
