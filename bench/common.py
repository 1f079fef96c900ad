"""Shared by the benchmarks: the models to compare, FLOP counts and a timer."""
import math
import time

import torchvision

from vit import build_model
from vit.model import model_config

TIMM_NAMES = {"vit_ti_16": "vit_tiny_patch16_224", "vit_s_16": "vit_small_patch16_224",
              "vit_b_16": "vit_base_patch16_224", "vit_b_32": "vit_base_patch32_224"}


def make(impl, name, image_size=224, **overrides):
    """Our model, torchvision's VisionTransformer or timm's, all with the same configuration."""
    if impl == "ours":
        return build_model(name, image_size=image_size, **overrides)
    if impl == "torchvision":
        return torchvision.models.vision_transformer.VisionTransformer(image_size=image_size,
                                                                        **model_config(name, **overrides))
    if impl == "timm":
        import timm
        assert not overrides, "timm is compared on the named sizes only"
        return timm.create_model(TIMM_NAMES[name], img_size=image_size, num_classes=1000)
    raise ValueError(impl)


def forward_flops(config):
    """FLOPs of one image's forward pass (2 per multiply-add): patch projection, attention, MLP, head."""
    d, m, p = config["hidden_dim"], config["mlp_dim"], config["patch_size"]
    n = (config["image_size"] // p) ** 2 + 1
    per_layer = 4 * n * d * d + 2 * n * n * d + 2 * n * d * m  # qkv + proj, q k^T and a v, two MLP layers
    macs = (n - 1) * 3 * p * p * d + config["num_layers"] * per_layer + d * config["num_classes"]
    return 2 * macs


def timed(fn, steps, warmup, sync=lambda: None, min_seconds=0.0):
    """Seconds per call of fn, after warm-up calls (synchronised where the device is asynchronous).

    min_seconds: if `steps` calls took less, time again with enough calls to last that long (fast GPU
    steps are otherwise dominated by the timer's and the launch queue's jitter).
    """
    for _ in range(warmup):
        fn()
    sync()
    while True:
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / steps
        steps = math.ceil(steps * 1.2 * min_seconds / max(elapsed, 1e-6))
