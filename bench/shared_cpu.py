"""An epoch of train.py alone, and beside another program that keeps the cores busy: how OpenMP's waiting threads
share the CPU (vit/threads.py).

    python bench/shared_cpu.py                                  # the default run and the photo recipe
    python bench/shared_cpu.py --photos ../shared/data/pizza_steak_sushi --epochs 3

For each setting of how PyTorch's threads wait, and each recipe, runs `train.py --epochs N` three times: alone,
beside a plain busy loop (one Python process per core), and beside a second train.py (the default run, with the
same setting). Prints a markdown table of the median epoch time (metrics.json's seconds) and its ratio to the
same setting alone, and to the project's default alone. The settings:
  libgomp       libgomp's own default spin (GOMP_SPINCOUNT=300000), what runs got before vit/threads.py
  project       nothing set: train.py's share_cores() (GOMP_SPINCOUNT=1000)
  passive       OMP_WAIT_POLICY=PASSIVE: threads sleep at once
  threads 1     the project's default with --threads 1
Run it with nothing else on the machine; it takes about 15 minutes on 2 cores.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {  # name: (environment, extra train.py flags)
    "libgomp": ({"GOMP_SPINCOUNT": "300000"}, []),
    "project": ({}, []),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, []),
    "threads 1": ({}, ["--threads", "1"]),
}
WAITING = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS")


def environment(extra):
    """This process's environment without any setting of how threads wait, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in WAITING}
    return dict(env, **extra)


def epoch_seconds(recipe, setting, epochs, out, cache):
    """Median seconds per epoch of `train.py RECIPE --epochs N` under a setting of SETTINGS."""
    env, flags = SETTINGS[setting]
    name = f"r{time.monotonic_ns()}"
    subprocess.run([sys.executable, str(REPO / "train.py"), *recipe, *flags, "--epochs", str(epochs),
                    "--out-dir", out, "--cache-dir", cache, "--name", name], env=environment(env), cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = json.loads((Path(out) / "results" / name / "metrics.json").read_text())
    return statistics.median(m["seconds"] for m in metrics)


def start_load(kind, setting, out, cache):
    """The processes that keep the cores busy: a busy loop per core, or a long default train.py run."""
    if kind == "busy loop":
        return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    env, flags = SETTINGS[setting]
    return [subprocess.Popen([sys.executable, str(REPO / "train.py"), *flags, "--epochs", "1000", "--out-dir", out,
                              "--cache-dir", cache, "--name", f"load{time.monotonic_ns()}"], env=environment(env),
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "pizza_steak_sushi"),
                   help="a photo folder for the photo recipe (../shared/data/pizza_steak_sushi; or "
                        "data/pizza_steak_sushi after train.py --data pizza_steak_sushi)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per timed run (2)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--warmup", type=float, default=20, help="seconds a training load runs before the timing (20)")
    args = p.parse_args()
    recipes = {"default run": [], "photo recipe": ["--data", args.photos]}
    if not Path(args.photos).is_dir():
        del recipes["photo recipe"]
        print(f"{args.photos}: not a folder; the photo recipe is left out", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out, cache = str(Path(tmp) / "out"), str(Path(tmp) / "cache")
        for recipe in recipes.values():  # decode and cache the images once, untimed
            epoch_seconds(recipe, "project", 1, out, cache)
        for setting in args.settings:
            for label, recipe in recipes.items():
                alone = epoch_seconds(recipe, setting, args.epochs, out, cache)
                times = {"alone": alone}
                for kind in ("busy loop", "training"):
                    load = start_load(kind, setting, out, cache)
                    try:
                        time.sleep(args.warmup if kind == "training" else 1)
                        times[kind] = epoch_seconds(recipe, setting, args.epochs, out, cache)
                    finally:
                        for proc in load:
                            proc.kill()
                            proc.wait()
                rows.append((setting, label, times))
                print(f"{setting}, {label}: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()),
                      file=sys.stderr, flush=True)
    base = {label: times["alone"] for setting, label, times in rows if setting == "project"}
    print(f"\n{os.cpu_count()} cores, {args.epochs} epochs per run, median epoch seconds "
          "(ratio to the same setting alone; to the project's default alone)\n")
    print("| setting | recipe | alone | beside a busy loop | beside a training run |")
    print("|---|---|---|---|---|")
    for setting, label, t in rows:
        ref = base.get(label)
        cells = [f"{t['alone']:.2f}" + (f" ({t['alone'] / ref:.2f})" if ref and setting != "project" else "")]
        cells += [f"{t[k]:.2f} ({t[k] / t['alone']:.1f}x" + (f"; {t[k] / ref:.1f}x" if ref else "") + ")"
                  for k in ("busy loop", "training")]
        print(f"| {setting} | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
