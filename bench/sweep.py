"""Run train.py over several from-scratch recipes and data sets at once, then tabulate test accuracy.

    python bench/sweep.py --data ROOT [ROOT ...] --out runs/ [--parallel 8] [--only NAME ...]
    python bench/sweep.py --out runs/ --table        # the table of runs already done

Used to choose train.py's from-scratch defaults (every measurement is in docs/from-scratch.md). Reports the final
epoch's test accuracy and the mean of the last 10 epochs, not the best epoch (that would pick on test).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# name: train.py flags on top of the from-scratch defaults
S64_P8_L6 = ["--image-size", "64", "--patch-size", "8", "--num-layers", "6"]  # docs/from-scratch.md's command
RECIPES = {
    "s64-p8-l6": S64_P8_L6,
    "s64-p8-l6-seed1": [*S64_P8_L6, "--seed", "1"],
    "s64-p8-l6-seed2": [*S64_P8_L6, "--seed", "2"],
    "s64-p8-l6-patch": [*S64_P8_L6, "--stem", "patch"],
    "s96-p8-l6": ["--image-size", "96", "--patch-size", "8", "--num-layers", "6"],
    "s64-p8-l12": ["--image-size", "64", "--patch-size", "8", "--num-layers", "12"],
    "s128-p16-l6": ["--image-size", "128", "--patch-size", "16", "--num-layers", "6"],
}


def run(root, name, flags, out, extra, timeout, threads):
    """One train.py run, its output in OUT/NAME.log; stopped after `timeout` seconds (its metrics stay).

    threads: torch's CPU threads for this run (OMP_NUM_THREADS, unless already set). Runs that each take every
    core crawl: on a 16-core GPU machine 10 of them took 4.5 s an epoch; 3 with 4 threads each took 0.41 s,
    about what one run alone takes (0.37 s).
    """
    log = out / f"{name}.log"
    cmd = [sys.executable, str(REPO / "train.py"), "--data", str(root), "--name", name, "--out-dir", str(out),
           "--cache-dir", str(out / "cache"), *flags, *extra]
    with open(log, "w") as f:
        try:
            env = {"OMP_NUM_THREADS": str(threads), **os.environ}
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, env=env).returncode
            return f"exited with status {code}" if code else None
        except subprocess.TimeoutExpired:
            return "was stopped at --timeout"


def table(out):
    print("| run | epochs | final test acc | mean of last 10 | best | minutes |")
    print("|---|---|---|---|---|---|")
    for path in sorted(out.glob("results/*/metrics.json")):
        m = json.loads(path.read_text())
        last = [r["test_acc"] for r in m[-10:]]
        print(f"| {path.parent.name} | {m[-1]['epoch']} | {m[-1]['test_acc']:.3f} | {statistics.mean(last):.3f} | "
              f"{max(r['test_acc'] for r in m):.3f} | {sum(r['seconds'] for r in m) / 60:.1f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="*", default=[])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--only", nargs="*", help="recipe names to run (default: all)")
    p.add_argument("--timeout", type=float, help="stop each run after this many seconds")
    p.add_argument("--table", action="store_true", help="only print the table of finished runs")
    args, extra = p.parse_known_args()  # anything else goes to every train.py
    unknown = sorted(set(args.only or []) - set(RECIPES))
    if unknown or not (args.data or args.table):
        p.error(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}" if unknown else
                "give --data ROOT (or --table)")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        jobs = [(Path(root), f"{Path(root).name}--{name}", flags) for root in args.data
                for name, flags in RECIPES.items() if not args.only or name in args.only]
        threads = max(1, (os.cpu_count() or 1) // max(1, min(args.parallel, len(jobs))))
        with ThreadPoolExecutor(args.parallel) as pool:
            codes = list(pool.map(lambda j: run(*j, args.out, extra, args.timeout, threads), jobs))
        for (_, name, _), code in zip(jobs, codes):
            if code:
                print(f"{name}: train.py {code}, see {args.out / (name + '.log')}")
    table(args.out)


if __name__ == "__main__":
    main()
