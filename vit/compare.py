"""Compare training runs: overlay their accuracy and loss curves and print a summary table.

    python -m vit.compare results/RUN_A results/RUN_B [...] [--out results/compare.png]

Each argument is a run folder (holding metrics.json, as train.py writes it) or a metrics.json path.
"""
from vit.errors import interrupt_quietly

if __name__ == "__main__":  # first: Ctrl-C while matplotlib imports (seconds) is one line, not a traceback
    interrupt_quietly()

import argparse
import json
import sys
from pathlib import Path

from matplotlib.figure import Figure

from vit.errors import UserError, exit_status, printable_output
from vit.plots import figure_format, save_figure, whole_epochs

KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")  # needed per epoch record


def load_run(arg):
    """(run folder, list of epoch records) from a run folder or its metrics.json; UserError if unusable."""
    path = Path(arg)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise UserError(f"{path}: no such metrics file; pass a run folder written by train.py or its metrics.json")
    try:
        records = json.loads(path.read_text())
    except OSError as e:  # no permission, a device that fails
        raise UserError(f"{path}: cannot read it ({e.strerror or e}); check its permissions") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); pass a metrics.json written by train.py") from None
    if not isinstance(records, list) or not records or not all(
            isinstance(r, dict) and all(is_number(r.get(k)) for k in KEYS) for r in records):
        raise UserError(f"{path}: expected a non-empty list of epoch records with the numbers {', '.join(KEYS)}; "
                        "pass a metrics.json written by train.py")
    return path.parent, records


def is_number(value):
    """Whether a JSON value is a number (not a string, null or true/false, which the table and figure cannot use)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def run_names(folders):
    """Each run's folder name, with as many of the folders above it as it takes to tell it from the other runs
    (a/results/run and b/results/run, not run twice)."""
    parts = [Path(folder).resolve().parts for folder in folders]

    def name(mine):  # the same run given twice (run/ and run/metrics.json) is one name
        others = [p for p in parts if p != mine]
        depth = next((d for d in range(1, len(mine)) if all(p[-d:] != mine[-d:] for p in others)), len(mine) - 1)
        return "/".join(mine[-depth:])

    return [name(mine) for mine in parts]


def plot_runs(runs, path):
    """Save test (solid) and train (dashed, lighter) accuracy and loss per epoch, one colour per run."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    for i, (name, records) in enumerate(runs):
        colour = f"C{i % 10}"
        epochs, dot = [r["epoch"] for r in records], "o" if len(records) == 1 else None  # one epoch: no line to see
        for ax, key in ((ax_acc, "acc"), (ax_loss, "loss")):
            ax.plot(epochs, [r[f"test_{key}"] for r in records], color=colour, marker=dot, label=f"{name} test")
            ax.plot(epochs, [r[f"train_{key}"] for r in records], color=colour, alpha=0.45, linestyle="--",
                    marker=dot, label=f"{name} train")
    for ax, label in ((ax_acc, "accuracy"), (ax_loss, "loss")):
        ax.set_xlabel("epoch")
        whole_epochs(ax)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize="small")
    save_figure(fig, path)


def summary(runs):
    """Aligned table: run, best and final test accuracy, epochs, total training time."""
    width = max([len("run")] + [len(name) for name, _ in runs])
    lines = [f"{'run':<{width}}  best acc  final acc  epochs  time"]
    for name, records in runs:
        seconds = sum(r["seconds"] for r in records)
        lines.append(f"{name:<{width}}  {max(r['test_acc'] for r in records):8.4f}  {records[-1]['test_acc']:9.4f}  "
                     f"{len(records):6d}  {int(seconds // 60)}m{seconds % 60:04.1f}s")
    return "\n".join(lines)


def main(argv=None):
    printable_output()
    parser = argparse.ArgumentParser(prog="python -m vit.compare", description="Compare training runs' metrics.json "
                                     "curves.")
    parser.add_argument("runs", nargs="+", help="run folders or metrics.json files")
    parser.add_argument("--out", default="results/compare.png", help="figure path (.png, .pdf, .svg, ...)")
    return exit_status(run, parser.parse_args(argv))


def run(args):
    """Everything python -m vit.compare does: the figure, then the table; returns the exit status."""
    figure_format(args.out)
    folders, records = zip(*(load_run(arg) for arg in args.runs))
    runs = list(zip(run_names(folders), records))
    plot_runs(runs, args.out)
    print(summary(runs))
    print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
