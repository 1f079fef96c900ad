"""How much of its own memory a process holds while vit.cache.load_split decodes and caches a split, by cache part size.

    python bench/cache_memory.py SPLIT_DIR [--size 256] [--part-mib 16 256]

Each case runs in a fresh process with a fresh cache: it decodes the split into parts of PART_MIB, then reads every
image. Linux only (/proc/self/status): RssAnon is the process's own memory, RssFile the file pages it has mapped,
which the system may drop and read again from the disk.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import vit.cache  # noqa: E402
from vit.folders import class_folders  # noqa: E402


def resident():
    """(RssAnon, RssFile) of this process in MiB."""
    status = Path("/proc/self/status").read_text()
    return [int(re.search(rf"{key}:\s+(\d+)", status).group(1)) / 1024 for key in ("RssAnon", "RssFile")]


def case(split_dir, size, part_mib):
    """Decode into a fresh cache with parts of part_mib, then touch every image: the growth of both figures."""
    vit.cache.PART_BYTES = part_mib * 2**20
    with tempfile.TemporaryDirectory() as cache:
        before = resident()
        preprocess = dict(resize_size=size, interpolation="bilinear")
        decoded = vit.cache.load_split(split_dir, class_folders(Path(split_dir)), preprocess, cache_dir=cache)
        after_decode = resident()
        for image in decoded.images:  # read every pixel once
            image.max()
        after_read = resident()
    mib = sum(image.numel() for image in decoded.images) / 2**20
    print(f"| {part_mib} | {len(decoded.images)} | {mib:.0f} | {after_decode[0] - before[0]:.0f} | "
          f"{after_read[0] - before[0]:.0f} | {after_read[1] - before[1]:.0f} |")


parser = argparse.ArgumentParser()
parser.add_argument("split_dir")
parser.add_argument("--size", type=int, default=256, help="shorter side after decoding (px)")
parser.add_argument("--part-mib", type=int, nargs="+", default=[16, 256])
parser.add_argument("--case", type=int, help=argparse.SUPPRESS)  # one case, in a child process
args = parser.parse_args()
if not Path(args.split_dir).is_dir():
    parser.error(f"{args.split_dir}: no such folder (a split folder: <class>/<images>)")
if args.case is not None:
    case(args.split_dir, args.size, args.case)
else:
    print(f"# {args.split_dir} at {args.size} px, each case in a fresh process; growth in MiB")
    print("| part MiB | images | decoded MiB | own memory after decoding | own memory after reading | file pages |")
    print("|---|---|---|---|---|---|")
    for part in args.part_mib:
        subprocess.run([sys.executable, __file__, args.split_dir, "--size", str(args.size), "--case", str(part)],
                       check=True)
