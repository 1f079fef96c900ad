"""train.py with DataLoader workers started by another method: spawn is macOS's and Windows's default.

    python bench/start_method.py spawn|fork|forkserver -- TRAIN_ARGS...

Runs `train.py TRAIN_ARGS` in this process after torch.multiprocessing.set_start_method(METHOD), so a Linux machine
shows what the workers (--workers N) cost where they are spawned; prints the wall time of the whole run. Each
epoch's seconds are in train.py's own log lines.
"""
import argparse
import os
import sys
import time

import torch.multiprocessing as mp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

if __name__ == "__main__":  # spawned workers import this file again: only the parent runs train.py
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=mp.get_all_start_methods())
    args, train_args = parser.parse_known_args()
    mp.set_start_method(args.method, force=True)
    import train
    start = time.perf_counter()
    train.main([a for a in train_args if a != "--"])
    print(f"{args.method}: {time.perf_counter() - start:.1f} s in all", flush=True)
