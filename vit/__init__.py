"""A plain-PyTorch Vision Transformer (Dosovitskiy et al., ICLR 2021): model, weights, data, training helpers."""
from vit.errors import UserError

__all__ = ["CONFIGS", "UserError", "VisionTransformer", "build_model", "list_models"]


def __getattr__(name):
    """The model's names on first use: vit.model imports torch, which takes seconds, and the scripts load vit.errors
    before it (interrupt_quietly)."""
    if name == "build_model":
        from vit import weights
        return weights.build_model
    if name in __all__:
        from vit import model
        return getattr(model, name)
    raise AttributeError(f"module 'vit' has no attribute {name!r}")
