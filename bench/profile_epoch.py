"""Where one epoch of train.py spends its time, and every place it makes the CPU wait for the GPU.

    python bench/profile_epoch.py [--epoch K] [--rows N] -- TRAIN_ARGS...

Runs `train.py TRAIN_ARGS` unchanged, except that the training pass of epoch K (numbered as train.py numbers
them, also with --resume; default: the session's last, --stop-after included) runs under torch.profiler and,
on CUDA, under sync debug mode "warn". Prints the operators with the most self time, the share of the epoch's
wall time the GPU was busy, and each line of train.py or vit/ that synchronised with the GPU, with its count (a
step should have none: the loss and accuracy sums are read once per epoch).
"""
import argparse
import collections
import os
import sys
import time
import traceback
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--epoch", type=int, help="the epoch to profile, from 1 (default: the session's last)")
parser.add_argument("--rows", type=int, default=20, help="operators to list")
args, train_args = parser.parse_known_args()
train_args = [a for a in train_args if a != "--"]
stop_after = train.parse_args(train_args).get("stop_after")
cuda = torch.cuda.is_available()
original, epochs, syncs = train.train_epoch, [], collections.Counter()  # epochs: (K, N) of "epoch K/N" so far


def our_frame():
    """file:line of the innermost frame in train.py or vit/ (where a sync was asked for)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = os.path.relpath(frame.filename, REPO)
        if path == "train.py" or path.startswith("vit" + os.sep):
            return f"{path}:{frame.lineno} {frame.line}"
    return "outside train.py and vit/"


def record_sync(message, category, *rest, **kwargs):
    if "synchronizing" in str(message):
        syncs[our_frame()] += 1
    else:
        print(warnings.formatwarning(message, category, *rest[:2]), file=sys.stderr, end="")


def session_target(total):
    """The epoch to profile: --epoch, else the session's last (a resumed session starts at its first epoch)."""
    first = epochs[0][0]
    return args.epoch or (min(total, first + stop_after - 1) if stop_after else total)


def profiled_epoch(*a, **kw):
    epoch, total = map(int, kw["desc"].split()[1].split("/"))  # train.py's progress label, "epoch K/N"
    epochs.append((epoch, total))
    target = session_target(total)
    if epoch != target:
        return original(*a, **kw)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    with warnings.catch_warnings(), profile(activities=activities) as prof:
        warnings.simplefilter("always")  # every sync, not only the first from each line
        warnings.showwarning = record_sync  # catch_warnings puts the old one back
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        t0 = time.perf_counter()
        result = original(*a, **kw)
        if cuda:
            torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    ops = prof.key_averages()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(f"\n# epoch {target}, training pass: {wall:.3f} s wall (profiled)")
    print(ops.table(sort_by=sort, row_limit=args.rows))
    if cuda:
        # the GPU's own rows: an operator's row repeats the time of the kernels it launched
        busy = sum(e.self_device_time_total for e in ops if e.device_type == torch.autograd.DeviceType.CUDA) / 1e6
        print(f"GPU busy {busy:.3f} s of {wall:.3f} s: {100 * busy / wall:.0f}%")
        print("syncs (count, where):" if syncs else "syncs: none")
        for where, n in syncs.most_common():
            print(f"  {n:5d}  {where}")
    return result


train.train_epoch = profiled_epoch
train.main(train_args)
if epochs and session_target(epochs[-1][1]) not in [k for k, _ in epochs]:
    sys.exit(f"profile_epoch.py: epoch {session_target(epochs[-1][1])} did not run in this session "
             f"(it ran epochs {epochs[0][0]}..{epochs[-1][0]}); give --epoch K within them")
