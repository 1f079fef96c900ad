"""CPU speed of our ViT against torchvision's VisionTransformer of the same configuration.

    python bench/cpu.py [--models vit_ti_16 vit_b_16] [--repeats 5]

Interleaved: each repeat times ours, then torchvision's, so both see the same machine state; the
median of the repeats is reported. Training step = forward, backward and an AdamW step, fp32.
"""
import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import make, timed  # noqa: E402
from vit.model import list_models  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--models", nargs="+", default=["vit_ti_16", "vit_b_16"], choices=list_models())
parser.add_argument("--batch", type=int, default=8)
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--steps", type=int, default=2)  # timed steps per repeat
args = parser.parse_args()


def steps(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(args.batch, 3, 224, 224), torch.randint(0, 1000, (args.batch,))

    def train():
        model.train()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer():
        model.eval()
        with torch.inference_mode():
            model(x)
    return train, infer


print(f"# cpu, {torch.get_num_threads()} threads, torch {torch.__version__}, batch {args.batch}, fp32")
print("| model | impl | train img/s | inference img/s |")
print("|---|---|---|---|")
for name in args.models:
    torch.manual_seed(0)
    cases = {impl: steps(make(impl, name)) for impl in ("ours", "torchvision")}
    times = {(impl, kind): [] for impl in cases for kind in ("train", "infer")}
    for _ in range(args.repeats):
        for impl, (train, infer) in cases.items():
            times[impl, "train"].append(timed(train, args.steps, warmup=1))
            times[impl, "infer"].append(timed(infer, args.steps, warmup=1))
    for impl in cases:
        ips = [args.batch / statistics.median(times[impl, kind]) for kind in ("train", "infer")]
        print(f"| {name} | {impl} | {ips[0]:.3g} | {ips[1]:.3g} |", flush=True)
