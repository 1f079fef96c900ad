"""How long a training loop waits for its checkpoints: written in place, or by vit's background writer.

    python bench/checkpoint.py [--model vit_b_16] [--repeats 3] [--dir DIR]

One checkpoint as train.py saves it after a best epoch (weights and AdamW state, to RUN.pt and
RUN-best.pt). Reported: seconds the loop is blocked per save, and for the writer also the seconds until
both files are on disk and how long a busy Python thread (a loop of tiny tensor operations, as a training
loop launching GPU kernels) was held up while the writer wrote: its pauses over 5 ms, summed, and the longest.
The writer is timed twice: as it writes (through a Python file object) and with torch.save given the file name,
as an earlier writer did (torch.save then holds Python's global lock while it opens and closes the file).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vit import build_model, list_models  # noqa: E402
import vit.checkpoint  # noqa: E402
from vit.checkpoint import CheckpointWriter, model_checkpoint  # noqa: E402
from vit.files import save_atomically  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="vit_b_16", choices=list_models())
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


def by_file_name(obj, path):
    """save_atomically with torch.save given the file name instead of an open file, as an earlier version wrote."""
    vit.checkpoint.replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def busy_until_written(writer):
    """Tiny tensor operations in this thread until the writer's thread is done -> (pauses over 5 ms, longest), s."""
    x, pauses, last = torch.zeros(4), [], time.perf_counter()
    while writer.thread is not None:
        x.add_(1)
        now = time.perf_counter()
        pauses.append(now - last)
        last = now
    return sum(p for p in pauses if p > 0.005), max(pauses, default=0.0)


writers = {"CheckpointWriter": save_atomically, "CheckpointWriter, torch.save given the file name": by_file_name}
if args.dir:
    Path(args.dir).mkdir(parents=True, exist_ok=True)
with tempfile.TemporaryDirectory(dir=args.dir) as folder:
    last, best = os.path.join(folder, "run.pt"), os.path.join(folder, "run-best.pt")
    blocked = {"in place": [], **{name: [] for name in writers}}
    on_disk, held = {name: [] for name in writers}, {name: [] for name in writers}
    for repeat in range(args.repeats):
        t = time.perf_counter()
        save_atomically(ckpt, last)
        save_atomically(ckpt, best)
        blocked["in place"].append(time.perf_counter() - t)
        for name, save in list(writers.items())[::1 if repeat % 2 else -1]:  # in turn first
            vit.checkpoint.save_atomically = save  # what the writer's thread calls
            writer = CheckpointWriter()
            t = time.perf_counter()
            writer.save(ckpt, last, best)
            blocked[name].append(time.perf_counter() - t)
            held[name].append(busy_until_written(writer))
            writer.close()
            on_disk[name].append(time.perf_counter() - t)
        vit.checkpoint.save_atomically = save_atomically

print(f"# {args.model}: {size / 2**30:.2f} GiB of tensors, {torch.get_num_threads()} threads, median of {args.repeats}")
print("| checkpoint after a best epoch | loop blocked, s | on disk, s | busy thread held up, s | longest pause, s |")
print("|---|---|---|---|---|")
print(f"| written in place, twice | {statistics.median(blocked['in place']):.2f} | "
      f"{statistics.median(blocked['in place']):.2f} | | |")
for name in writers:
    print(f"| {name} | {statistics.median(blocked[name]):.2f} | {statistics.median(on_disk[name]):.2f} | "
          f"{statistics.median(h[0] for h in held[name]):.2f} | {statistics.median(h[1] for h in held[name]):.2f} |")
