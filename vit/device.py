"""Choosing the device from a --device flag (train.py and predict.py) and its training precision."""
import os
from contextlib import nullcontext

import torch

from vit.errors import UserError


def pick_device(name):
    """--device -> torch.device; UserError when the asked-for device is not there."""
    if name == "auto":
        mps = torch.backends.mps.is_available()
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name}: unknown device; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu (or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s); use cuda:0 .. "
                        f"cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS (Apple GPU) is not available; use --device cpu (or auto)")
    return device


def mixed_precision(device, precision="auto"):
    """(autocast, scaler) for training on `device` at --precision. auto: bf16 autocast on CUDA (fp16 with a gradient
    scaler where bf16 is missing; the scaler does nothing otherwise), full precision elsewhere; bf16: bf16 autocast
    on CUDA or the CPU (faster on CPUs with native bf16, e.g. AVX512-BF16); fp32: full precision, no TF32 either."""
    dtype = None
    if precision == "bf16":
        if device.type not in ("cpu", "cuda") or device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError(f"--precision bf16: not supported on {device}; use --precision auto or fp32")
        dtype = torch.bfloat16
    elif precision == "auto" and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
    return autocast, torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)


def physical_memory():
    """This machine's memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
