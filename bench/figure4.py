"""The paper's Figure 4 in miniature: transfer accuracy against the number of pretraining photos.

    python bench/figure4.py --out docs/figure4.png

Reads OUT/results/PREFIX-<photos>-<kind>-s<seed>/metrics.json for every run of that form (kind: probe or ft,
`--pretrained ... --freeze` and fine-tuned; photos: how many training photos the pretraining had, e.g. 6030), and
PREFIX-<photos>-<kind>-<label>-s<seed> for points drawn apart (e.g. f4-5250-probe-food7-s0: pretrained on another
set, labelled food7); a run with fewer epochs than the longest of its kind (one still running) is left out.
Plots each kind's mean over the seeds of the last 10 epochs' test accuracy, every seed as a dot, against the
photos (log scale), and prints the table.
"""
import argparse
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from matplotlib.figure import Figure  # noqa: E402

from vit.compare import load_run  # noqa: E402
from vit.plots import save_figure  # noqa: E402

KINDS = {"ft": "fine-tuned", "probe": "linear probe (--freeze)"}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=".", help="where results/ is (.)")
    p.add_argument("--prefix", default="f4", help="the runs' name prefix (f4)")
    p.add_argument("--title", default="transfer to pizza_steak_sushi (225 photos)")
    p.add_argument("--out", help="figure file (none: the table only)")
    args = p.parse_args()
    form = re.compile(rf"{re.escape(args.prefix)}-(\d+)-(ft|probe)(?:-([a-z0-9]+))?-s(\d+)")
    runs = defaultdict(list)  # (kind, label, photos) -> each seed's test accuracies
    for run in sorted((Path(args.out_dir) / "results").glob(f"{args.prefix}-*")):
        if (m := form.fullmatch(run.name)) and (run / "metrics.json").is_file():
            runs[(m[2], m[3] or "", int(m[1]))].append((run.name, [e["test_acc"] for e in load_run(run)[1]]))
    epochs = defaultdict(int)  # kind -> the most epochs a run of that kind has
    for (kind, _, _), seeds in runs.items():
        epochs[kind] = max(epochs[kind], *(len(acc) for _, acc in seeds))
    points = defaultdict(list)  # (kind, label, photos) -> last-10 means of the finished runs, one per seed
    for key, seeds in runs.items():
        for name, acc in seeds:
            if len(acc) < epochs[key[0]]:  # still running, or stopped: not a point yet
                print(f"left out: {name}, {len(acc)} of {epochs[key[0]]} epochs", file=sys.stderr)
            else:
                points[key].append(statistics.mean(acc[-10:]))
    points = {key: values for key, values in points.items() if values}
    if not points:
        sys.exit(f"figure4.py: no runs {args.prefix}-<photos>-<ft|probe>-s<seed> in {Path(args.out_dir) / 'results'}")
    print("| pretraining photos | set | kind | last 10, per seed | mean |\n|---|---|---|---|---|")
    for (kind, label, photos), values in sorted(points.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        print(f"| {photos:,} | {label or 'tiny_imagenet_50k'} | {KINDS[kind]} | "
              f"{', '.join(f'{v:.3f}' for v in values)} | {statistics.mean(values):.3f} |")
    if not args.out:
        return
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for colour, kind in zip(("C0", "C1"), KINDS):
        line = sorted((photos, values) for (k, label, photos), values in points.items() if k == kind and not label)
        if line:
            ax.plot([x for x, _ in line], [statistics.mean(v) for _, v in line], "-o", color=colour, label=KINDS[kind])
            for x, values in line:
                ax.plot([x] * len(values), values, ".", color=colour, alpha=0.4)
        for (k, label, photos), values in points.items():
            if k == kind and label:
                ax.plot(photos, statistics.mean(values), "s", color=colour, mfc="none", ms=9)
                ax.annotate(label, (photos, statistics.mean(values)), textcoords="offset points", xytext=(6, -12))
    ax.set_xscale("log")
    ticks = sorted({photos for _, label, photos in points if not label})  # a labelled point says its own
    ax.set_xticks(ticks, [f"{x:,}" for x in ticks], minor=False)
    ax.minorticks_off()
    ax.set_xlabel("pretraining photos (201 Tiny ImageNet classes; same number of steps)")
    ax.set_ylabel("test accuracy, mean of last 10 epochs")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
