"""The training figures: a confusion matrix stays drawable (and readable where it can be) for any number of classes."""
from PIL import Image

import numpy as np
import torch

from vit import explain, plots


def drawn(monkeypatch, n):
    """The figure plot_confusion draws for n classes (not saved) and its first axes."""
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    plots.plot_confusion([[i * n + j for j in range(n)] for i in range(n)], [f"class {i}" for i in range(n)], "x.png")
    return figures[0], figures[0].axes[0]


def test_confusion_counts_and_names_while_readable(monkeypatch):
    fig, ax = drawn(monkeypatch, 3)
    assert sorted(int(t.get_text()) for t in ax.texts) == list(range(9))  # every cell's count
    # in its cell: true class i's row (y = i), predicted class j's column (x = j), as the colours are drawn
    assert {t.get_position(): int(t.get_text()) for t in ax.texts} == {(j, i): 3 * i + j for i in range(3)
                                                                      for j in range(3)}
    assert ax.images[0].get_array().tolist() == [[3 * i + j for j in range(3)] for i in range(3)]
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


def test_long_class_names_are_cut_and_the_matrix_names_its_epoch(monkeypatch):
    """A 61-character class name took three quarters of a prediction figure's width."""
    long = "an_exceptionally_long_category_name_for_dress_number_03_and_on"
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    monkeypatch.setattr(explain, "save_figure", lambda fig, path: figures.append(fig))
    plots.plot_confusion([[1, 0], [0, 1]], [long, "b"], "x.png", epoch=7)
    explain.save_prediction_figure(np.zeros((8, 8, 3)), [long, "b"], [0.6, 0.4], "y.png")
    explain.save_attention_figure(np.zeros((8, 8, 3)), torch.full((2, 2), 0.25), "title", "z.png")
    matrix, prediction, attention = figures
    short = long[:14] + "\u2026" + long[-15:]  # cut in the middle
    assert [t.get_text() for t in matrix.axes[0].get_xticklabels()] == [short, "b"]
    assert matrix.axes[0].get_title() == "confusion matrix (test, after epoch 7, 2 classes)"
    assert [t.get_text() for t in prediction.axes[1].get_yticklabels()] == [short, "b"]
    assert len(attention.axes) == 3  # the photo, the overlay and its colour scale


def test_names_that_cutting_would_make_alike_stay_whole():
    names = ["American Staffordshire terrier (adult)", "American Staffordshire terrier (puppy)", "b"]
    assert plots.short(names) == ["American Staff\u2026terrier (adult)", "American Staff\u2026terrier (puppy)", "b"]
    alike = ["a_very_long_common_prefix_" + "x" * 20 + "_one_a_very_long_common_suffix",
             "a_very_long_common_prefix_" + "y" * 20 + "_one_a_very_long_common_suffix"]
    assert plots.short(alike) == alike  # cut, they would read the same


def test_curves_show_train_and_test_of_each_epoch(monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    metrics = [dict(epoch=e, train_loss=2.0 - e / 10, test_loss=1.5 - e / 10, train_acc=0.5 + e / 10,
                    test_acc=0.6 + e / 20) for e in (1, 2, 3)]
    plots.plot_curves(metrics, "curves.png")
    for ax, key in zip(figures[0].axes, ("loss", "acc")):
        lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}
        assert lines == {split: ([1, 2, 3], [m[f"{split}_{key}"] for m in metrics]) for split in ("train", "test")}
