"""The training figures: a confusion matrix stays drawable (and readable where it can be) for any number of classes."""
from PIL import Image

from vit import plots


def drawn(monkeypatch, n):
    """The figure plot_confusion draws for n classes (not saved) and its first axes."""
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    plots.plot_confusion([[i * n + j for j in range(n)] for i in range(n)], [f"class {i}" for i in range(n)], "x.png")
    return figures[0], figures[0].axes[0]


def test_confusion_counts_and_names_while_readable(monkeypatch):
    fig, ax = drawn(monkeypatch, 3)
    assert sorted(int(t.get_text()) for t in ax.texts) == list(range(9))  # every cell's count
    assert [t.get_text() for t in ax.get_xticklabels()] == ["class 0", "class 1", "class 2"]
    fig, ax = drawn(monkeypatch, 40)
    assert len(ax.texts) == 0 and len(ax.get_yticklabels()) == 40  # names, no counts
    fig, ax = drawn(monkeypatch, 300)
    assert len(ax.texts) == 0 and ax.get_xlabel() == "predicted (class index)"
    assert max(fig.get_size_inches()) <= 17


def test_confusion_of_many_classes_is_a_bounded_png(tmp_path):
    """1000 classes drew 60,000 pixels a side (about 15 GB) and a million cell texts before the bound."""
    n = 1000
    plots.plot_confusion([[int(i == j) for j in range(n)] for i in range(n)], [str(i) for i in range(n)],
                         tmp_path / "cm.png")
    with Image.open(tmp_path / "cm.png") as image:
        assert max(image.size) <= 17 * 120 and image.format == "PNG"
