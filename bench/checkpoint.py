"""How long a training loop waits for its checkpoints: written in place, or by vit's background writer.

    python bench/checkpoint.py [--model vit_b_16] [--repeats 3] [--dir DIR]

One checkpoint as train.py saves it after a best epoch (weights and AdamW state, to RUN.pt and
RUN-best.pt). Reported: seconds the loop is blocked per save, and for the writer also the seconds until
both files are on disk.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vit import build_model  # noqa: E402
from vit.checkpoint import CheckpointWriter, model_checkpoint, save_checkpoint  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="vit_b_16")
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--dir", default=None, help="where to write (a temporary folder)")
args = parser.parse_args()

model = build_model(args.model, num_classes=3)
optimizer = torch.optim.AdamW(model.parameters())
model(torch.randn(1, 3, 224, 224)).sum().backward()
optimizer.step()  # creates the two moment tensors per parameter
ckpt = {**model_checkpoint(model), "optimizer": optimizer.state_dict()}
size = sum(t.numel() * t.element_size() for t in [*model.state_dict().values(),
                                                   *(v for s in optimizer.state.values() for v in s.values())])

with tempfile.TemporaryDirectory(dir=args.dir) as folder:
    last, best = os.path.join(folder, "run.pt"), os.path.join(folder, "run-best.pt")
    blocked = {"in place": [], "writer": []}
    on_disk = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        save_checkpoint(ckpt, last)
        save_checkpoint(ckpt, best)
        blocked["in place"].append(time.perf_counter() - t)
        writer = CheckpointWriter()
        t = time.perf_counter()
        writer.save(ckpt, last, best)
        blocked["writer"].append(time.perf_counter() - t)
        writer.close()
        on_disk.append(time.perf_counter() - t)

print(f"# {args.model}: {size / 2**30:.2f} GiB of tensors, {torch.get_num_threads()} threads, median of {args.repeats}")
print("| checkpoint after a best epoch | loop blocked, s | on disk, s |")
print("|---|---|---|")
print(f"| written in place, twice | {statistics.median(blocked['in place']):.2f} | "
      f"{statistics.median(blocked['in place']):.2f} |")
print(f"| CheckpointWriter | {statistics.median(blocked['writer']):.2f} | {statistics.median(on_disk):.2f} |")
