"""train.py end to end by the wall clock, against the model alone (issue 5's second goal).

    python bench/e2e.py [--alone GPU_JSON] [--no-checkpoint] -- TRAIN_ARGS...

Runs `train.py TRAIN_ARGS` unchanged and times each epoch from its start to the next one's start: the training
pass, the test pass and the checkpoint's copy, all that the loop waits for (metrics.json's seconds leave the
checkpoint out). Prints one markdown row: the run's name, those seconds, their median from the second epoch on
(the first also warms up; the last is not timed, as the run's end follows it), images/s over the training and test
images, and, with --alone (the file `bench/gpu.py --json` wrote for the same model and batch), the share of the
time the model alone would take for those images (training images / its training img/s + test images / its
inference img/s). --no-checkpoint skips the checkpoints, to see what they cost (train.py's lines still name
them; they are not written).
"""
import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train  # noqa: E402
from vit import folders  # noqa: E402
from vit.checkpoint import CheckpointWriter  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--alone", metavar="GPU_JSON", help="bench/gpu.py --json output: its first row is the yardstick")
parser.add_argument("--no-checkpoint", action="store_true", help="write no checkpoints")
args, train_args = parser.parse_known_args()
train_args = [a for a in train_args if a != "--"]
given = train.parse_args(train_args)
if "resume" in given:  # its images and name are the checkpoint's, not these flags'
    sys.exit("e2e.py: time a new run, not --resume (the images counted would be the default --data's)")
if args.alone and not os.path.isfile(args.alone):
    sys.exit(f"e2e.py: {args.alone}: no such file; write it with bench/gpu.py --json")
run, _, _, splits = train.new_run(given)  # the settings train.py will run with: its recipe's and the flags'
if min(run.epochs, run.stop_after or run.epochs) < 3:  # said before the run, not after it
    sys.exit("e2e.py: run 3 epochs or more (--epochs, --stop-after): the first warms up, the last is not timed")
n_train, n_test = (sum(folders.is_image(p) for p in folders.list_files(d)) for d in (splits.train_dir, splits.test_dir))

if args.no_checkpoint:
    CheckpointWriter.save = lambda self, obj, *paths: None
starts, original = [], train.train_epoch


def timed_epoch(*a, **kw):
    starts.append(time.perf_counter())
    return original(*a, **kw)


train.train_epoch = timed_epoch
train.main(train_args)
if args.no_checkpoint:
    print("e2e.py: --no-checkpoint: the checkpoints named above were not written")
seconds = [b - a for a, b in zip(starts, starts[1:])]
median = statistics.median(seconds[1:])
share = ""
if args.alone:
    with open(args.alone) as f:
        alone = json.load(f)[0]
    share = f" | {(n_train / alone['train_img_s'] + n_test / alone['infer_img_s']) / median:.0%}"
name = given.get("name", "run") + (" (no checkpoints)" if args.no_checkpoint else "")
print(f"| {name} | {' '.join(f'{s:.3f}' for s in seconds)} | {median:.3f} s | "
      f"{(n_train + n_test) / median:,.0f} img/s{share} |")
