"""What the host dispatches per training step, by origin: the count of aten operators that train.py's step sends to
PyTorch's dispatcher (each one host time, and on a GPU usually one kernel launch), for a model small enough that the
host, not the GPU, sets its speed.

    python bench/host_ops.py [--device cpu] [--model vit_ti_16] [--image-size 32] [--patch-size 16] [--num-layers N]
                             [--stem patch] [--batch-size 32] [--trivial-augment 0] [--mixup 1]
                             [--precision auto|bf16|fp32] [--fused] [--top N]

One epoch of train.train_epoch over random decoded images, batches augmented by vit.augment (train.py's GPU path),
Mixup/CutMix, label smoothing, clipping and AdamW (fused on CUDA, single-tensor on the CPU: the optimizer row
differs most between the two), counted by a TorchDispatchMode after one warm-up epoch. On the CPU, --precision bf16
(autocast's casts, as on a GPU) and --fused (AdamW's fused kernel, as train.py's on CUDA) count about what a GPU's
host dispatches; --top N also lists the N most frequent operators (aten._to_copy: mostly autocast's casts). The
counts do not depend on the image size, so the default is a small one that runs in under a minute on a CPU. Also
counts vit.augment.to_device calls (host-to-device copies on a GPU).
"""
import argparse
import collections
import os
import sys
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
import vit.augment  # noqa: E402
from vit import build_model, list_models  # noqa: E402
from vit.decoding import Decoded  # noqa: E402
from vit.transforms import mixing  # noqa: E402
from vit.device import mixed_precision  # noqa: E402
from vit.optim import adamw_warmup_cosine  # noqa: E402

ORIGINS = (  # the innermost stack frame whose file path contains one of these names the row
    ("vit/augment.py", "augmentation (vit/augment.py)"), ("vit/transforms.py", "Mixup/CutMix (vit/transforms.py)"),
    ("vit/model.py", "model forward (vit/model.py)"), ("torch/autograd/", "backward (autograd)"),
    ("torch/optim/", "optimizer step"), ("torch/nn/utils/clip_grad.py", "gradient clipping"),
    ("train.py", "train.py: loss, zero_grad, totals"))


class Counter(TorchDispatchMode):
    """Counts every operator that reaches the dispatcher under it, by ORIGINS."""

    def __init__(self):
        super().__init__()
        self.counts, self.ops = collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        files = [f.filename.replace(os.sep, "/") for f in reversed(traceback.extract_stack()[:-1])]
        origin = next((row for f in files for end, row in ORIGINS if end in f), "backward (autograd)")
        self.counts[origin] += 1
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


parser = argparse.ArgumentParser()
parser.add_argument("--device", default="cpu")
parser.add_argument("--model", default="vit_ti_16", choices=list_models())
parser.add_argument("--image-size", type=int, default=32)
parser.add_argument("--patch-size", type=int, default=16)
parser.add_argument("--num-layers", type=int)
parser.add_argument("--stem", default="patch", choices=("patch", "conv"))
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--trivial-augment", type=float, default=0.0)
parser.add_argument("--mixup", type=float, default=1.0)
parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"), help="train.py's --precision")
parser.add_argument("--fused", action="store_true", help="fused AdamW also off CUDA")
parser.add_argument("--top", type=int, default=0, metavar="N", help="also the N most frequent operators")
args = parser.parse_args()

torch.manual_seed(0)  # the counts depend on Mixup/CutMix's and drop path's draws: the same ones every run
device = torch.device(args.device)
layers = {"num_layers": args.num_layers} if args.num_layers else {}
model = build_model(args.model, num_classes=3, image_size=args.image_size, patch_size=args.patch_size,
                    stem=args.stem, drop_path=0.1, **layers).to(device)
n, size = 4 * args.batch_size, round(args.image_size * 1.15)
images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8) for _ in range(n)]
augment = vit.augment.BatchAugment(args.image_size, (0.5,) * 3, (0.25,) * 3, trivial_augment=args.trivial_augment)
loader = vit.augment.DeviceLoader(Decoded(images, [i % 3 for i in range(n)], [""] * n), augment.to(device),
                                  args.batch_size, device, torch.Generator())
optimizer, scheduler = adamw_warmup_cosine(model, 3e-4, 0.05, 2, 100, fused=args.fused or device.type == "cuda")
autocast, scaler = mixed_precision(device, args.precision)
mix = mixing(3, p=args.mixup) if args.mixup > 0 else None
trainer = train.Trainer(model, model, optimizer, scheduler, scaler, mix, device, autocast, label_smoothing=0.1,
                        clip_grad=1.0)
copies, to_device = [0], vit.augment.to_device


def counting_to_device(t, dev):
    copies[0] += 1
    return to_device(t, dev)


def epoch():
    train.train_epoch(trainer, loader, desc="")


vit.augment.to_device = counting_to_device
epoch()  # warm-up
copies[0] = 0
with Counter() as counter:
    epoch()
steps = len(loader)
print(f"{args.model} {args.image_size}px patch {args.patch_size}, {sum(1 for _ in model.blocks)} layers, batch "
      f"{args.batch_size}, trivial_augment {args.trivial_augment}, mixup {args.mixup}, precision {args.precision}, "
      f"{'fused' if args.fused or device.type == 'cuda' else 'single-tensor'} AdamW, on {device}, torch "
      f"{torch.__version__}\n\n| origin | operators per step | share |\n|---|---|---|")
total = sum(counter.counts.values())
for origin, count in counter.counts.most_common():
    print(f"| {origin} | {count / steps:.0f} | {count / total:.0%} |")
print(f"| all | {total / steps:.0f} | |\n\nvit.augment.to_device calls per step: {copies[0] / steps:.1f}")
if args.top:
    print("\n| operator | per step |\n|---|---|")
    for op, count in counter.ops.most_common(args.top):
        print(f"| {op} | {count / steps:.0f} |")
