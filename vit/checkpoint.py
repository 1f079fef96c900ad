"""Checkpoints that hold everything needed to rebuild, evaluate and resume a model (as nanoGPT's do)."""
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from vit.errors import UserError
from vit.model import VisionTransformer
from vit.weights import CHECKPOINT_FORMAT, safe_load


def save_checkpoint(obj, path):
    """Write atomically: a temporary file in the same folder, then a rename, so a crash leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_checkpoint(path):
    """A checkpoint written by train.py; anything else is refused with a message naming the file."""
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a checkpoint of this project (written by train.py); "
                        "for plain weights use build_model(name, pretrained=PATH)")
    ckpt["path"] = str(path)
    return ckpt


def model_checkpoint(model):
    """The part of a checkpoint that model_from_checkpoint rebuilds the model from (train.py adds its state)."""
    return {"format": CHECKPOINT_FORMAT, "model": {"name": model.name, "config": model.config},
            "state_dict": model.state_dict(), "classes": model.classes, "preprocess": model.preprocess}


def model_from_checkpoint(ckpt):
    """Rebuild the model from the checkpoint's configuration and load its weights strictly."""
    try:
        model = VisionTransformer(**ckpt["model"]["config"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{ckpt.get('path', 'checkpoint')}: incomplete or invalid model description ({e!r}); "
                        "the file is damaged or was edited") from None
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise UserError(f"{ckpt.get('path', 'checkpoint')}: its weights do not match its model configuration "
                        f"({first}); the file is damaged or was edited") from None
    model.name = ckpt["model"].get("name")
    model.classes = list(ckpt["classes"]) if ckpt.get("classes") else None
    if ckpt.get("preprocess"):
        model.preprocess = dict(ckpt["preprocess"])
    return model


def git_commit():
    """The project's current git commit, recorded in checkpoints; None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None
