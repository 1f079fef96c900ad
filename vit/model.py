"""The Vision Transformer of Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021).

Read top to bottom: Eq. 1 (patch embedding, or Sec. 3.1's hybrid conv stem), the encoder block of Eq. 2-3 built from
multi-head self-attention and an MLP, Eq. 4 (class-token head), then the sizes of Table 1.
Parameter names are our own; vit/weights.py maps torchvision's names onto them, and the
initialisation follows torchvision's (except the conv stem's 3x3 convolutions: He-normal, where torchvision keeps
PyTorch's default), and both models are the same function of their weights.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import StochasticDepth

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class PatchEmbedding(nn.Module):
    """Eq. 1: z0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos (patches, class token, positions)."""

    def __init__(self, image_size, patch_size, hidden_dim, dropout=0.0, stem="patch"):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size = image_size, patch_size
        self.grid_size = image_size // patch_size
        # E is held as a convolution's weight (hidden_dim, channels, k, k), torchvision's layout and init
        if stem == "patch":  # E projects every p x p patch of the image
            self.stem, channels = nn.Identity(), 3
            self.proj = nn.Conv2d(3, hidden_dim, kernel_size=patch_size, stride=patch_size)
        elif stem == "conv":  # Sec. 3.1's hybrid: E projects each 1 x 1 patch of a CNN feature map
            self.stem = ConvStem(patch_size, hidden_dim)
            channels = self.stem.channels
            self.proj = nn.Conv2d(channels, hidden_dim, kernel_size=1)
        else:
            raise ValueError(f"stem must be 'patch' or 'conv', not {stem!r}")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.pos_embed = nn.Parameter(torch.empty(1, self.grid_size**2 + 1, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        fan_in = channels * self.proj.kernel_size[0] ** 2
        nn.init.trunc_normal_(self.proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        s = self.image_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            if x.ndim != 4 or x.shape[1] != 3:
                fix = "give a batch of RGB images"
            elif x.shape[-1] == x.shape[-2]:
                fix = f"resize the images or build the model with image_size={x.shape[-1]}"
            else:
                fix = f"resize and crop them to {s} x {s} px, e.g. with vit.transforms.eval_transform(model.preprocess)"
            raise ValueError(f"expected images of shape (batch, 3, {s}, {s}), got {tuple(x.shape)}; {fix}")
        if not x.is_floating_point():
            raise ValueError(f"expected float images, got {x.dtype}; scale and normalise them as "
                             "vit.transforms.eval_transform(model.preprocess) does")
        x = self.stem(x)
        if self.proj.kernel_size == (1, 1):  # the hybrid: E on each position of the CNN's feature map
            x = self.proj(x).flatten(2).transpose(1, 2)
        else:  # x_p E as one matrix product over the flattened p x p patches: a stride-p convolution's numbers
            # (cuDNN ran ViT-B/16's convolution on an H200 at about 1/20 of the FLOP rate of its matrix products)
            x = F.linear(patches(x, self.patch_size), self.proj.weight.flatten(1), self.proj.bias)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return self.dropout(torch.cat([cls, x], dim=1) + self.pos_embed)


def patches(x, k):
    """x_p of Eq. 1: images (B, C, H, W) -> (B, N, C * k * k), each row one k x k patch flattened in the order of
    a convolution weight's (C, k, k), patches in raster order."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // k, k, W // k, k).permute(0, 2, 4, 1, 3, 5)  # (B, H/k, W/k, C, k, k)
    return x.reshape(B, (H // k) * (W // k), C * k * k)


class ConvStem(nn.Module):
    """Sec. 3.1, hybrid architecture, with a small CNN (stride-2 3x3 convolutions, Xiao et al. 2021; the paper's
    hybrids use a ResNet-50) that turns the image into a feature map with one position per patch."""

    def __init__(self, patch_size, hidden_dim):
        super().__init__()
        stages = int(math.log2(patch_size))
        if 2**stages != patch_size or patch_size < 2:
            raise ValueError(f"the conv stem needs a power-of-two patch_size, not {patch_size}")
        widths = [max(hidden_dim >> (stages - i), 16) for i in range(stages)]  # ... D/4, D/2
        layers = []
        for c_in, c_out in zip([3] + widths, widths):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.layers, self.channels = nn.Sequential(*layers), widths[-1]
        for m in self.layers:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.layers(x)


class Attention(nn.Module):
    """Multi-head self-attention, MSA in Eq. 2 (Appendix A, Eq. 5-8)."""

    def __init__(self, hidden_dim, num_heads, attention_dropout=0.0):
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not a multiple of num_heads {num_heads}")
        self.num_heads, self.attention_dropout = num_heads, attention_dropout
        self.qkv = nn.Linear(hidden_dim, 3 * hidden_dim)  # U_qkv of Eq. 5, all heads at once
        self.proj = nn.Linear(hidden_dim, hidden_dim)  # U_msa of Eq. 8
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, return_attn=False):
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        p = self.attention_dropout if self.training else 0.0
        if return_attn:  # explicit softmax(q k^T / sqrt(d)) so the weights can be looked at
            attn = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)
            out = F.dropout(attn, p) @ v
        else:  # fused kernel (flash / memory-efficient), same numbers
            attn, out = None, F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.proj(out.transpose(1, 2).reshape(B, N, D)), attn


class MLP(nn.Module):
    """The MLP of Eq. 3: two layers with a GELU non-linearity."""

    def __init__(self, hidden_dim, mlp_dim, dropout=0.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(hidden_dim, mlp_dim), nn.Linear(mlp_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)

    def forward(self, x):
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Encoder block, Eq. 2-3: z' = MSA(LN(z)) + z, then z = MLP(LN(z')) + z'."""

    def __init__(self, hidden_dim, num_heads, mlp_dim, dropout=0.0, attention_dropout=0.0, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.attn = Attention(hidden_dim, num_heads, attention_dropout)
        self.norm2 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.mlp = MLP(hidden_dim, mlp_dim, dropout)
        self.dropout = nn.Dropout(dropout)
        self.drop_path = StochasticDepth(drop_path, "row")  # Huang et al. 2016: a sample's whole branch dropped

    def forward(self, x, return_attn=False):
        a, attn = self.attn(self.norm1(x), return_attn)
        x = x + self.drop_path(self.dropout(a))  # Eq. 2
        x = x + self.drop_path(self.mlp(self.norm2(x)))  # Eq. 3
        return x, attn


class VisionTransformer(nn.Module):
    """ViT, Eq. 1-4: patch embedding, L encoder blocks, y = LN(z_L^0), then a linear head (the paper's fine-tuning
    head, Sec. 3.1; the MLP head it pre-trains with is not built, as in torchvision's weights)."""

    def __init__(self, image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim,
                 num_classes=1000, dropout=0.0, attention_dropout=0.0, drop_path=0.0, stem="patch"):
        super().__init__()
        self.config = dict(image_size=image_size, patch_size=patch_size, num_layers=num_layers,
                           num_heads=num_heads, hidden_dim=hidden_dim, mlp_dim=mlp_dim, num_classes=num_classes,
                           dropout=dropout, attention_dropout=attention_dropout, drop_path=drop_path, stem=stem)
        self.name, self.classes = None, None
        self.preprocess = default_preprocess(image_size)
        self.embed = PatchEmbedding(image_size, patch_size, hidden_dim, dropout, stem)
        # stochastic depth grows linearly with depth, from 0 in the first block to drop_path in the last
        rates = [drop_path * i / max(num_layers - 1, 1) for i in range(num_layers)]
        self.blocks = nn.ModuleList(
            Block(hidden_dim, num_heads, mlp_dim, dropout, attention_dropout, r) for r in rates)
        self.norm = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.head = nn.Linear(hidden_dim, num_classes)  # the classifier on y, zero-initialised (Sec. 3.2)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    image_size = property(lambda self: self.embed.image_size)
    patch_size = property(lambda self: self.embed.patch_size)
    grid_size = property(lambda self: self.embed.grid_size)

    def forward_features(self, x, return_attn=False):
        """The class token's final representation y = LN(z_L^0) of Eq. 4, shape (batch, hidden_dim)."""
        x, attns = self.embed(x), []
        for block in self.blocks:
            x, attn = block(x, return_attn)
            attns.append(attn)
        y = self.norm(x[:, 0])
        return (y, attns) if return_attn else y

    def forward(self, x, return_attn=False):
        """Logits; with return_attn=True also each layer's attention weights (B, heads, N, N)."""
        if return_attn:
            y, attns = self.forward_features(x, return_attn=True)
            return self.head(y), attns
        return self.head(self.forward_features(x))


def default_preprocess(image_size):
    """Evaluation preprocessing when no weights say otherwise: resize to 256/224 of the crop, centre crop."""
    return dict(resize_size=round(image_size * 256 / 224), crop_size=image_size,
                mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), interpolation="bilinear")


# Table 1 of the paper (Base, Large, Huge), plus DeiT's Tiny and Small (Touvron et al. 2021).
# name: (patch_size, num_layers, num_heads, hidden_dim, mlp_dim)
CONFIGS = {
    "vit_ti_16": (16, 12, 3, 192, 768),
    "vit_s_16": (16, 12, 6, 384, 1536),
    "vit_b_16": (16, 12, 12, 768, 3072),
    "vit_b_32": (32, 12, 12, 768, 3072),
    "vit_l_16": (16, 24, 16, 1024, 4096),
    "vit_l_32": (32, 24, 16, 1024, 4096),
    "vit_h_14": (14, 32, 16, 1280, 5120),
}

SHAPE_FLAGS = ("patch_size", "num_layers", "stem")  # the overrides train.py offers as flags (and checkpoints name)


def list_models():
    """The names build_model accepts."""
    return list(CONFIGS)


def model_config(name, **overrides):
    """The Table 1 sizes of `name` as VisionTransformer keyword arguments, with overrides applied."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(CONFIGS)}")
    config = dict(zip(("patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim"), CONFIGS[name]))
    unknown = set(overrides) - set(config) - {"dropout", "attention_dropout", "drop_path", "stem"}
    if unknown:
        raise TypeError(f"unknown override(s) {sorted(unknown)} for build_model")
    return dict(config, **overrides)
