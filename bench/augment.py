"""Training augmentation speed: the per-sample path against vit.augment's batched, device-resident one.

    python bench/augment.py [--device cpu|cuda] [--image-size 224] [--batch-size 128] [--workers 0] [--threads N]

(a) per-sample: vit.loaders.ImageDataset + train_transform through a DataLoader with --workers processes, the
batch then moved to --device; (b) batched: vit.augment.DeviceLoader + BatchAugment on --device. Both on the
same synthetic decoded images (random uint8, shorter side 256, aspect ratios 3:4 to 3:2, as vit.decoding.decode
leaves photos). Each repeat times (a), then (b); the table gives the median of the repeats in images/s.
(b) augments one batch per call: train.py's DeviceLoader augments several small batches in one call, and
timing batch by batch would then charge the whole call to the first batch and nothing to the others.
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import timed  # noqa: E402
from vit.augment import BatchAugment, DeviceLoader  # noqa: E402
from vit.decoding import Decoded  # noqa: E402
from vit.loaders import ImageDataset  # noqa: E402
from vit.transforms import train_transform  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--device", default="cpu")
parser.add_argument("--image-size", type=int, default=224)
parser.add_argument("--batch-size", type=int, default=128)
parser.add_argument("--workers", type=int, default=0, help="DataLoader processes of the per-sample path")
parser.add_argument("--images", type=int, default=512, help="synthetic decoded images")
parser.add_argument("--batches", type=int, default=4, help="timed batches per path and repeat")
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
args = parser.parse_args()

if args.threads:
    torch.set_num_threads(args.threads)
device = torch.device(args.device)
sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

g = torch.Generator().manual_seed(0)
shapes = [(256, 256), (256, 341), (341, 256), (256, 384)]  # 1:1, 4:3, 3:4, 3:2 with the shorter side 256
images = [torch.randint(0, 256, (3, *shapes[i % len(shapes)]), dtype=torch.uint8, generator=g)
          for i in range(args.images)]
decoded = Decoded(images, [i % 10 for i in range(args.images)], [f"{i}.png" for i in range(args.images)])


def forever(batches):
    """Batches of one epoch after another, moved to the device."""
    while True:
        for x, y in batches:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


per_sample = torch.utils.data.DataLoader(
    ImageDataset(decoded, train_transform(args.image_size, mean, std)), batch_size=args.batch_size, shuffle=True,
    drop_last=True, num_workers=args.workers, persistent_workers=args.workers > 0, pin_memory=device.type == "cuda")
batched = DeviceLoader(decoded, BatchAugment(args.image_size, mean, std), args.batch_size, device,
                       torch.Generator().manual_seed(0), drop_last=True, floats_per_call=0)  # see the docstring
paths = {f"per-sample, DataLoader {args.workers} workers": forever(per_sample),
         f"BatchAugment on {device}": forever(batched)}
times = {name: [] for name in paths}
for _ in range(args.repeats):
    for name, it in paths.items():
        times[name].append(timed(lambda: next(it), args.batches, warmup=1, sync=sync))

print(f"# {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.images} images, "
      f"batch {args.batch_size}, {args.image_size} px, {args.batches} batches x {args.repeats} repeats")
print("| path | images/s (median) | min | max |")
print("|---|---|---|---|")
for name, ts in times.items():
    ips = sorted(args.batch_size / t for t in ts)
    print(f"| {name} | {args.batch_size / statistics.median(ts):.0f} | {ips[0]:.0f} | {ips[-1]:.0f} |")
