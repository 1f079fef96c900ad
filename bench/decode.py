"""How fast vit.cache.load_split decodes a split (the one-time decoding before training), by thread count.

    python bench/decode.py SPLIT_DIR [--sizes 73 256] [--threads 1 2] [--repeats 3]

SPLIT_DIR holds <class>/<images>, e.g. ../shared/data/pizza_steak_sushi_20_percent/train. No cache: every
repeat decodes every image; the cases take turns, and each reports its median.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vit import cache, folders  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("split_dir")
parser.add_argument("--sizes", type=int, nargs="+", default=[73, 256], help="shorter side after decoding (px)")
parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
parser.add_argument("--repeats", type=int, default=3)
args = parser.parse_args()
if not Path(args.split_dir).is_dir():
    parser.error(f"{args.split_dir}: no such folder (a split folder: <class>/<images>)")

classes = folders.class_folders(Path(args.split_dir))
times = {(size, threads): [] for size in args.sizes for threads in args.threads}
for _ in range(args.repeats):
    for size, threads in times:
        start = time.perf_counter()
        decoded = cache.load_split(args.split_dir, classes, dict(resize_size=size, interpolation="bilinear"),
                                  threads=threads)
        times[size, threads].append(time.perf_counter() - start)
n = len(decoded.images)
print(f"# {n} images of {args.split_dir}, {os.cpu_count()} cores, median of {args.repeats}")
print("| size | threads | seconds | img/s | against 1 thread |")
print("|---|---|---|---|---|")
for (size, threads), seconds in times.items():
    median = statistics.median(seconds)
    one = statistics.median(times[size, 1]) if (size, 1) in times else float("nan")
    print(f"| {size} | {threads} | {median:.2f} | {n / median:,.0f} | {one / median:.2f} |")
