"""The background checkpoint writer: what it writes is what was saved, and its errors are not lost."""
import os

import pytest
import torch

from vit.checkpoint import CheckpointWriter


def test_saved_checkpoints_are_snapshots(tmp_path):
    weights, metrics = torch.zeros(1000), [{"epoch": 1}]
    writer = CheckpointWriter()
    writer.save({"w": weights, "metrics": metrics}, tmp_path / "last.pt", tmp_path / "best.pt")
    weights += 1  # training goes on changing the tensors and the list in place
    metrics.append({"epoch": 2})
    writer.save({"w": weights, "metrics": metrics}, tmp_path / "last.pt")
    writer.close()
    best, last = (torch.load(tmp_path / f"{name}.pt") for name in ("best", "last"))
    assert best["w"].eq(0).all() and best["metrics"] == [{"epoch": 1}]
    assert last["w"].eq(1).all() and last["metrics"] == [{"epoch": 1}, {"epoch": 2}]
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "last.pt"]  # no temporary files left
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would have made it


def test_one_checkpoint_saved_to_two_paths_is_written_once(tmp_path):
    writer = CheckpointWriter()
    writer.save({"w": torch.arange(10)}, tmp_path / "last.pt", tmp_path / "best.pt")
    writer.close()
    assert (tmp_path / "best.pt").stat().st_ino == (tmp_path / "last.pt").stat().st_ino  # a hard link here
    assert torch.load(tmp_path / "best.pt")["w"].equal(torch.arange(10))


def test_write_error_is_raised_by_close(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    writer = CheckpointWriter()
    writer.save({"w": torch.zeros(3)}, tmp_path / "file" / "last.pt")
    with pytest.raises(OSError):
        writer.close()
    writer.close()  # reported once
