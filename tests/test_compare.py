"""vit.compare: a figure and a summary table from metrics.json files; clear errors for bad ones."""
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from vit import compare

REPO = Path(__file__).parents[1]


def write_metrics(folder, test_accs, seconds):
    """Write a metrics.json with one record per test accuracy, as train.py does."""
    folder.mkdir(parents=True)
    records = [{"epoch": i + 1, "train_loss": 2.0 - 0.1 * i, "train_acc": acc - 0.05, "test_loss": 1.5 - 0.1 * i,
                "test_acc": acc, "lr": 1e-3, "seconds": seconds} for i, acc in enumerate(test_accs)]
    (folder / "metrics.json").write_text(json.dumps(records))


def run_compare(*args):
    """Run python -m vit.compare as a user would."""
    return subprocess.run([sys.executable, "-m", "vit.compare", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_compare_writes_figure_and_table(tmp_path):
    write_metrics(tmp_path / "run_a", [0.5, 0.7, 0.6], seconds=30.0)
    write_metrics(tmp_path / "run_b", [0.4, 0.8], seconds=90.5)
    out = tmp_path / "figs" / "compare.png"
    result = run_compare(tmp_path / "run_a", tmp_path / "run_b" / "metrics.json", "--out", out)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.width > 500 and image.height > 200
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()}
    assert rows["run_a"][1:5] == ["0.7000", "0.6000", "3", "1m30.0s"]  # best, final, epochs, 3 x 30 s
    assert rows["run_b"][1:5] == ["0.8000", "0.8000", "2", "3m01.0s"]


def test_a_run_of_one_epoch_is_drawn_as_points(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(compare, "save_figure", lambda fig, path: figures.append(fig))
    write_metrics(tmp_path / "one", [0.5], seconds=1.0)
    write_metrics(tmp_path / "two", [0.5, 0.6], seconds=1.0)
    runs = [(folder.name, records) for folder, records in map(compare.load_run, (tmp_path / "one", tmp_path / "two"))]
    compare.plot_runs(runs, tmp_path / "x.png")
    markers = {line.get_label(): line.get_marker() for line in figures[0].axes[0].get_lines()}
    assert markers == {"one test": "o", "one train": "o", "two test": "None", "two train": "None"}


def test_runs_of_the_same_name_are_told_apart_and_epochs_are_whole(tmp_path, monkeypatch):
    assert compare.run_names([tmp_path / "a" / "results" / "run", tmp_path / "b" / "results" / "run",
                              tmp_path / "other"]) == ["a/results/run", "b/results/run", "other"]
    assert compare.run_names([tmp_path / "x", tmp_path / "y"]) == ["x", "y"]
    assert compare.run_names([tmp_path / "x", tmp_path / "x"]) == ["x", "x"]  # one run given twice
    figures = []
    monkeypatch.setattr(compare, "save_figure", lambda fig, path: figures.append(fig))
    write_metrics(tmp_path / "a" / "run", [0.5, 0.6], seconds=1.0)
    write_metrics(tmp_path / "b" / "run", [0.4], seconds=1.0)
    assert compare.main([str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run"), "--out", "x.png"]) == 0
    labels = [line.get_label() for line in figures[0].axes[0].get_lines()]
    assert labels == ["a/run test", "a/run train", "b/run test", "b/run train"]
    ticks = figures[0].axes[0].xaxis.get_major_locator().tick_values(0.9, 2.1)
    assert all(t == int(t) for t in ticks)  # 1 and 2, not 1.25, 1.5, ...


def test_compare_bad_metrics(tmp_path, capsys):
    write_metrics(tmp_path / "good", [0.5], seconds=1.0)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("[{")
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "metrics.json").write_text(json.dumps({"epoch": 1}))
    for bad in ("missing", "broken", "wrong"):
        assert compare.main([str(tmp_path / "good"), str(tmp_path / bad), "--out", str(tmp_path / "c.png")]) == 2
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert out == "" and len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / bad}"), lines
    assert not (tmp_path / "c.png").exists()


def test_a_figure_that_cannot_be_written_is_one_line(tmp_path, capsys):
    write_metrics(tmp_path / "good", [0.5], seconds=1.0)
    (tmp_path / "afile").write_text("a file where a folder should be")
    for out, says in ((tmp_path / "c.xyz", "cannot write a figure as .xyz; use one of ."),
                      (tmp_path / "afile" / "c.png", f"cannot write ({tmp_path / 'afile'} is a file, not a folder)")):
        assert compare.main([str(tmp_path / "good"), "--out", str(out)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith(f"error: {out}: {says}") and captured.err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "good"]


def test_metrics_of_other_types_or_unreadable_are_one_line(tmp_path, monkeypatch, capsys):
    record = {"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.5, "seconds": 1.0}
    for name, bad in (("text", {"test_acc": "0.5"}), ("null", {"seconds": None}), ("bool", {"epoch": True})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps([dict(record, **bad)]))
    write_metrics(tmp_path / "locked", [0.5], seconds=1.0)
    read_text = Path.read_text

    def no_permission(path, *args, **kwargs):
        if path.parent.name == "locked":
            raise PermissionError(13, "Permission denied")
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", no_permission)
    for bad, says in (("text", "expected"), ("null", "expected"), ("bool", "expected"),
                      ("locked", "cannot read it (Permission denied)")):
        assert compare.main([str(tmp_path / bad), "--out", str(tmp_path / "c.png")]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(f"error: {tmp_path / bad / 'metrics.json'}: {says}"), captured.err
        assert captured.out == "" and captured.err.count("\n") == 1
    assert not (tmp_path / "c.png").exists()


def test_ctrl_c_while_plotting_is_one_line(tmp_path, monkeypatch, capsys):
    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(compare, "plot_runs", interrupted)
    write_metrics(tmp_path / "run", [0.5], seconds=1.0)
    assert compare.main([str(tmp_path / "run"), "--out", str(tmp_path / "c.png")]) == 130
    assert capsys.readouterr() == ("", "\ninterrupted\n")
