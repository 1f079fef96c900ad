"""Pretrained weights: torchvision's ImageNet weights (through its weights API) or a local file, each opened once
(open_weights), and build_model, which builds a Table 1 model from random weights or from them.

torchvision's parameter names are mapped onto ours once, here; position embeddings are
interpolated when the image size changes (the paper's Section 3.2, fine-tuning at higher resolution).
"""
import math
import os
import pickle
import re
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torchvision.models.vision_transformer import interpolate_embeddings

from vit.errors import UserError
from vit.model import CONFIGS, SHAPE_FLAGS, VisionTransformer, model_config
from vit.settings import FORMATS, saved_settings

# torchvision's VisionTransformer names -> ours (see vit/model.py)
_TORCHVISION_NAMES = [
    (r"^class_token$", "embed.cls_token"),
    (r"^conv_proj\.", "embed.proj."),
    (r"^encoder\.pos_embedding$", "embed.pos_embed"),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.", r"blocks.\1."),
    (r"\.ln_1\.", ".norm1."),
    (r"\.ln_2\.", ".norm2."),
    (r"\.self_attention\.in_proj_(weight|bias)$", r".attn.qkv.\1"),
    (r"\.self_attention\.out_proj\.", ".attn.proj."),
    (r"\.mlp\.(0|linear_1)\.", ".mlp.fc1."),  # linear_1/linear_2: torchvision's older files
    (r"\.mlp\.(3|linear_2)\.", ".mlp.fc2."),
]


@dataclass
class Pretrained:
    """Weights opened once (open_weights): a state dict in our names, and what is known of their preprocessing,
    classes and model."""
    state_dict: dict
    source: str  # a path or torchvision's weights name, for messages
    preprocess: dict = None
    classes: list = None
    checkpoint: dict = None  # the whole checkpoint, where the file is one of train.py's

    @property
    def flags(self):
        """build_model's name and shape arguments for these weights: a checkpoint's own, else the Table 1 model of
        the state dict's shapes (table1_flags), or {}."""
        if self.checkpoint is None:
            return table1_flags(self.state_dict)
        model = self.checkpoint.get("model")
        if not isinstance(model, dict) or not model.get("name") or not isinstance(model.get("config"), dict):
            return {}
        return {"model": model["name"], **{k: v for k, v in model["config"].items() if k in SHAPE_FLAGS}}

    @property
    def from_scratch(self):
        """Whether the weights are a checkpoint of a train.py run from random weights (transfer has its own recipe)."""
        run = saved_settings(self.checkpoint) if self.checkpoint is not None else None
        return run is not None and not run.pretrained

    @property
    def image_size(self):
        if self.preprocess:  # the size the weights were trained at
            return self.preprocess["crop_size"]
        return patch_and_stem(self.state_dict)[0] * math.isqrt(self.state_dict["embed.pos_embed"].shape[1] - 1)


def safe_load(path, mmap=False):
    """torch.load with weights_only=True: tensors and plain containers only, nothing is executed. mmap=True maps the
    tensors' bytes instead of reading them (for a look at a file's small entries; torch.save's zip format only)."""
    path = Path(path)
    if path.is_dir():
        run = path.parent.parent / "models" / f"{path.name}.pt"  # OUT/results/RUN -> OUT/models/RUN.pt (run_files)
        if (path / "metrics.json").is_file():
            found = f"pass its checkpoint, {run}" if run.is_file() else "pass its checkpoint, models/RUN.pt"
            raise UserError(f"{path}: a run's results folder, not a checkpoint; {found}")
        raise UserError(f"{path}: a folder, not a file; pass the weights file or checkpoint in it (models/RUN.pt)")
    if not path.is_file():
        raise UserError(f"{path}: no such file; check the path")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head == b"PK\x03\x04" or head[:1] == b"\x80"):  # torch.save's zip archive, or its older pickle format
        raise UserError(f"{path}: not a PyTorch file (an image, text or an incomplete download?); pass a weights "
                        "file (.pt, .pth) or a checkpoint of train.py")
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickle protocols before refusing them
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise UserError(f"{path}: not a plain weights file (it holds pickled Python objects, which are never "
                        "unpickled here); save model.state_dict() or a checkpoint of train.py instead") from None
    except Exception as e:
        raise UserError(f"{path}: cannot be read as a PyTorch file ({e.__class__.__name__}: damaged, incomplete or "
                        "another kind of archive?); save or download it again") from None


def is_checkpoint(obj):
    """Whether a loaded file is one of train.py's checkpoints (of a format this code reads)."""
    return isinstance(obj, dict) and obj.get("format") in FORMATS


def from_torchvision(state_dict):
    """Rename a torchvision VisionTransformer state dict to this project's parameter names."""
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in _TORCHVISION_NAMES:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def open_weights(pretrained, name="vit_b_16"):
    """The weights of --pretrained, read once, one branch per kind: True: torchvision's ImageNet weights for `name`
    (downloaded into its cache); a path: a checkpoint of train.py, a copy of torchvision's weights file, or a state
    dict in our names."""
    if isinstance(pretrained, Pretrained):
        return pretrained
    if pretrained is True:
        return _torchvision_weights(name)
    obj = safe_load(pretrained)
    if is_checkpoint(obj):
        obj["path"] = str(pretrained)
        return Pretrained(obj["state_dict"], str(pretrained), obj.get("preprocess"), obj.get("classes"), obj)
    if isinstance(obj, dict) and "conv_proj.weight" in obj:  # a copy of torchvision's weights: their classes too
        state_dict = from_torchvision(obj)
        own = table1_flags(state_dict).get("model", name)  # the weights of the model of its shapes, else of `name`
        meta = _meta_of_file(own, pretrained, state_dict)
        meta = meta if meta[0] else _meta_of_file(name, pretrained, state_dict)
        return Pretrained(state_dict, str(pretrained), *meta)
    if isinstance(obj, dict) and "embed.proj.weight" in obj:
        return Pretrained(obj, str(pretrained))
    raise UserError(f"{pretrained}: not a ViT state dict (neither torchvision's nor this project's); "
                    "pass a torchvision VisionTransformer state_dict or a checkpoint written by train.py")


def _torchvision_weights(name):
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except ValueError:
        raise UserError(f"torchvision publishes no ImageNet weights for {name}; use pretrained=PATH "
                        "with a weights file, or one of vit_b_16, vit_b_32, vit_l_16, vit_l_32, vit_h_14") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if cached.is_file():
        state_dict = safe_load(cached)
    else:  # torchvision's own download: progress bar, hash check, cache file
        timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        try:
            state_dict = weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
        except Exception as e:
            raise UserError(
                f"could not download {name} weights from {weights.url} ({e.__class__.__name__}: {e}); without a "
                f"network, place that file at {cached}, or load a copy from elsewhere with pretrained=PATH "
                "(--pretrained PATH)") from None
        finally:
            socket.setdefaulttimeout(timeout)
    return Pretrained(from_torchvision(state_dict), f"torchvision {weights}", *_meta(weights))


def _meta(weights):
    """(preprocess, class names) of one of torchvision's weights."""
    t = weights.transforms()
    preprocess = dict(resize_size=t.resize_size[0], crop_size=t.crop_size[0], mean=list(t.mean), std=list(t.std),
                      interpolation=t.interpolation.value)
    return preprocess, list(weights.meta["categories"])


def _meta_of_file(name, path, state_dict):
    """(preprocess, class names) of the torchvision weights for `name` that a file holds: those of its file name,
    else the default's, else others', where the head's classes and the image size agree; else (None, None)."""
    try:
        default = torchvision.models.get_model_weights(name).DEFAULT
    except ValueError:
        return None, None
    choices = [default, *(w for w in type(default) if w is not default)]
    named = [w for w in choices if os.path.basename(w.url) == Path(path).name]
    classes = len(state_dict["head.bias"]) if "head.bias" in state_dict else None
    shape = (classes, Pretrained(state_dict, path).image_size)
    for weights in named + choices:
        if (len(weights.meta["categories"]), weights.transforms().crop_size[0]) == shape:
            return _meta(weights)
    return None, None


def interpolate_pos_embed(pos_embed, grid_size):
    """Sec. 3.2: resize (1, 1 + g*g, D) position embeddings to a new patch grid: torchvision's interpolate_embeddings
    (bicubic, the corner patches' embeddings kept, the class token's aside), in float32 (bicubic needs it on a CPU)."""
    state = interpolate_embeddings(grid_size, 1, {"encoder.pos_embedding": pos_embed.float()})  # 1 px "patches"
    return state["encoder.pos_embedding"].to(pos_embed.dtype)


def depth(state):
    """The number of encoder blocks (layers) of a state dict in this project's names."""
    return len({k.split(".")[1] for k in state if k.startswith("blocks.")})


def patch_and_stem(state):
    """(patch size, stem) of a state dict in this project's names: "conv" with 2**k px patches after the k stride-2
    convolutions of Sec. 3.1's hybrid (its projection is 1x1), else "patch" with the projection's kernel size."""
    convs = sum(k.startswith("embed.stem.") and getattr(v, "ndim", 0) == 4 for k, v in state.items())
    return (2**convs, "conv") if convs else (state["embed.proj.weight"].shape[-1], "patch")


def table1_name(state):
    """The Table 1 model with a state dict's (this project's names) width and MLP size, the one with its patch size
    if there are two (vit_b_16, vit_b_32), or None."""
    keys = ("embed.proj.weight", "blocks.0.mlp.fc1.weight")
    if not isinstance(state, dict) or not all(isinstance(state.get(k), torch.Tensor) for k in keys):
        return None
    widths, patch = (state[keys[0]].shape[0], state[keys[1]].shape[0]), patch_and_stem(state)[0]
    names = [name for name, (_, _, _, hidden, mlp) in CONFIGS.items() if (hidden, mlp) == widths]
    return min(names, key=lambda name: CONFIGS[name][0] != patch, default=None)


def table1_flags(state):
    """build_model's arguments for a state dict (this project's names): {"model": its table1_name} plus patch_size,
    num_layers where they differ from the name's and stem="conv" for the hybrid; {} when no Table 1 model fits."""
    name = table1_name(state)
    if name is None:
        return {}
    (patch, stem), (own_patch, own_depth, *_) = patch_and_stem(state), CONFIGS[name]
    default = {"patch_size": own_patch, "num_layers": own_depth, "stem": "patch"}
    return {"model": name, **{k: v for k, v in zip(default, (patch, depth(state), stem)) if v != default[k]}}


def _what_fits(state, own):
    """What to change so that a model has the shapes of the weights `state` (own: the model's state dict)."""
    (patch, stem), (own_patch, own_stem) = patch_and_stem(state), patch_and_stem(own)
    if own_stem != stem:
        return (f"they are for the {'conv stem' if stem == 'conv' else 'plain patch embedding'}: build the model "
                f"with stem={stem!r} (--stem {stem})")
    width, flags = state["embed.proj.weight"].shape[0], table1_flags(state)
    if width != own["embed.proj.weight"].shape[0]:
        if not flags:
            return f"they are {width} wide: build the model with hidden_dim={width}"
        python = ", ".join(f"{k}={v!r}" for k, v in flags.items() if k != "model")
        command = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in flags.items())
        return f"they are {width} wide: build {flags['model']}{' with ' + python if python else ''} ({command})"
    if depth(own) != depth(state):
        return f"they have {depth(state)} layers: build the model with num_layers={depth(state)} (--num-layers)"
    if patch != own_patch:
        return f"their patches are {patch} px: build the model with patch_size={patch} (--patch-size)"
    return "build the model these weights are for (--model NAME, or the flags its run was trained with)"


def load_pretrained(model, pretrained, classes=None):
    """Copy weights into `model`: strict, except a head of another size, or (given the model's class names) one for
    other class names, is left freshly initialised (a run's head of 3 classes would score another's 3 as its own)."""
    state = dict(pretrained.state_dict)
    own = model.state_dict()
    if "embed.pos_embed" in state and state["embed.pos_embed"].shape[-1] == own["embed.pos_embed"].shape[-1]:
        state["embed.pos_embed"] = interpolate_pos_embed(state["embed.pos_embed"], model.grid_size)
    other = classes is not None and pretrained.classes is not None and list(pretrained.classes) != list(classes)
    new_head = "head.weight" in state and (state["head.weight"].shape != own["head.weight"].shape or other)
    if new_head:
        del state["head.weight"], state["head.bias"]
    missing = [k for k in own if k not in state and not (new_head and k.startswith("head."))]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    for problem, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)):
        if keys:
            raise UserError(f"{pretrained.source}: weights do not fit {model.name or 'this model'} "
                            f"({len(keys)} {problem}: {', '.join(keys[:5])}); {_what_fits(state, own)}")
    model.load_state_dict(state, strict=not new_head)
    if pretrained.preprocess:
        p = pretrained.preprocess
        scale = model.image_size / p["crop_size"]
        model.preprocess = dict(p, crop_size=model.image_size, resize_size=round(p["resize_size"] * scale))
    if not new_head and pretrained.classes:
        model.classes = list(pretrained.classes)
    return model


def build_model(name, *, num_classes=1000, image_size=None, pretrained=False, classes=None, **overrides):
    """A Table 1 model by name; pretrained=True for torchvision's weights, a path to a weights file, or weights that
    open_weights has read. `classes` (names, num_classes of them) keeps a pretrained head only where the weights name
    the same classes in order.

    overrides take torchvision's argument names (patch_size, num_layers, num_heads, hidden_dim,
    mlp_dim) plus dropout, attention_dropout, drop_path and stem ("patch", or "conv" for Sec. 3.1's hybrid).
    """
    source = open_weights(pretrained, name) if pretrained else None
    config = model_config(name, **overrides)
    if image_size is None:
        image_size = source.image_size if source else 224
    if config.get("stem") == "conv" and image_size == config["patch_size"]:
        # batch norm over a 1 x 1 map fails on a batch of one image (an epoch's last); checked for new models only,
        # so that checkpoints made before still load
        raise ValueError(f"image_size {image_size} is one patch of {config['patch_size']} px; the conv stem needs at "
                         "least 2 x 2: use a smaller patch_size")
    model = VisionTransformer(image_size=image_size, num_classes=num_classes, **config)
    model.name = name
    if source:
        load_pretrained(model, source, classes)
        model.weights_from = source.source  # e.g. "torchvision ViT_B_16_Weights.IMAGENET1K_V1", or the file
    if classes is not None:
        model.classes = list(classes)
    return model
