"""A plain-PyTorch Vision Transformer (Dosovitskiy et al., ICLR 2021): model, weights, data, training helpers."""
from vit.errors import UserError
from vit.model import CONFIGS, VisionTransformer, build_model, list_models

__all__ = ["CONFIGS", "UserError", "VisionTransformer", "build_model", "list_models"]
