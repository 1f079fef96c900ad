"""Training figures saved as PNG files: loss/accuracy curves and a confusion matrix (no display needed)."""
from pathlib import Path

from matplotlib.figure import Figure  # the object API draws with Agg; pyplot and a display are never touched
from matplotlib.ticker import MaxNLocator

from vit.errors import UserError
from vit.files import replace_atomically


FORMATS = sorted(Figure().canvas.get_supported_filetypes())  # what matplotlib can write: png, pdf, svg, jpg, ...


def figure_format(path):
    """The format a figure at path is written in, from its suffix (none: PNG); UserError for one matplotlib lacks."""
    fmt = Path(path).suffix[1:].lower() or "png"
    if fmt not in FORMATS:
        raise UserError(f"{path}: cannot write a figure as .{fmt}; use one of .{', .'.join(FORMATS)} (e.g. .png)")
    return fmt


def short(names, width=30):
    """Class names as figures show them: longer ones cut to `width` characters in the middle (a long one would
    squeeze the plot; the ends tell most names apart), unless that makes two alike: then all in full."""
    cut = [n if len(n) <= width else n[:(width - 1) // 2] + "\u2026" + n[-(width // 2):] for n in names]
    return cut if len(set(cut)) == len(set(names)) else list(names)


def whole_epochs(ax):
    """Ticks on whole epochs only (a run of one or a few epochs would get 0.96, 1.04 or 1.25)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def save_figure(fig, path):
    """Write the figure to path (figure_format), atomically."""
    fmt = figure_format(path)
    replace_atomically(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight"))


def plot_curves(metrics, path):
    """Loss and accuracy per epoch, train vs test, from metrics.json records."""
    epochs = [m["epoch"] for m in metrics]
    fig = Figure(figsize=(10, 4))
    for ax, key, title in zip(fig.subplots(1, 2), ("loss", "acc"), ("loss", "accuracy")):
        for split in ("train", "test"):
            ax.plot(epochs, [m[f"{split}_{key}"] for m in metrics], marker="o", markersize=3, label=split)
        ax.set(xlabel="epoch", ylabel=title, title=title)
        whole_epochs(ax)
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)


def plot_confusion(matrix, classes, path, epoch=None, counted=30, named=60):
    """Confusion matrix (rows: true class, columns: predicted class) of the test pass after `epoch` (when given, in
    the title). Up to `counted` classes each cell shows its
    count and up to `named` the axes name the classes; beyond, colours only, at a bounded size (a cell of text per
    pair took 50 s to draw for 200 classes and would need gigabytes for 1000)."""
    matrix = [[int(v) for v in row] for row in matrix]
    n = len(classes)
    size = min(max(4.0, 0.5 * n + 2), 0.5 * counted + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    axes = ("predicted", "true")
    if n <= named:
        font, names = 10 if n <= counted else 6, short(classes)
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=font)
        ax.set_yticks(range(n), names, fontsize=font)
    else:  # matplotlib's own ticks: class indices, in the order of the class list
        axes = tuple(f"{name} (class index)" for name in axes)
    after = f"after epoch {epoch}, " if epoch else ""
    ax.set(xlabel=axes[0], ylabel=axes[1], title=f"confusion matrix (test, {after}{n} classes)")
    top = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix if n <= counted else []):
        for j, count in enumerate(row):
            ax.text(j, i, count, ha="center", va="center", fontsize=8,
                    color="white" if count > top / 2 else "black")
    save_figure(fig, path)


def plot_run(metrics, matrix, classes, folder):
    """A training run's figures in `folder`: curves.png of its epochs so far (metrics.json records) and
    confusion_matrix.png of its latest test pass (matrix: a tensor, or None before the first)."""
    plot_curves(metrics, folder / "curves.png")
    if matrix is not None:
        plot_confusion(matrix.tolist(), classes, folder / "confusion_matrix.png", len(metrics))
