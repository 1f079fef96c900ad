"""Sharing the CPU (vit/threads.py): the OpenMP wait setting the scripts make before torch loads, the measure of
what other programs take, and the note a run prints once."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from vit import threads

REPO = Path(__file__).resolve().parent.parent
CLEAN = {k: v for k, v in os.environ.items() if k not in threads.OWN}


def env_after(code, env=CLEAN):
    """The GOMP_SPINCOUNT that a fresh Python sees after running `code` (None: unset)."""
    out = subprocess.run([sys.executable, "-c", code + "\nimport os; print(os.environ.get('GOMP_SPINCOUNT'))"],
                         cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()[-1]


def test_share_cores_sets_the_spin_before_torch_only():
    assert env_after("from vit.threads import share_cores; share_cores()") == threads.SPIN["GOMP_SPINCOUNT"]
    # once torch has loaded its OpenMP library the setting would do nothing: left unset, not pretended
    assert env_after("import torch; from vit.threads import share_cores; share_cores()") == "None"
    # the user's own choice wins
    assert env_after("from vit.threads import share_cores; share_cores()",
                     dict(CLEAN, OMP_WAIT_POLICY="ACTIVE")) == "None"
    assert env_after("from vit.threads import share_cores; share_cores()", dict(CLEAN, GOMP_SPINCOUNT="5")) == "5"


@pytest.mark.parametrize("script", ["train.py", "predict.py", "vit/inspect.py"])
def test_scripts_share_cores_before_importing_torch(script):
    """Run as a script (here up to its --help), each sets the spin; share_cores refuses after torch is imported, so
    being set proves it came first."""
    code = (f"import runpy, sys; sys.argv = [{script!r}, '--help']\n"
            f"try: runpy.run_path({script!r}, run_name='__main__')\nexcept SystemExit: pass")
    assert env_after(code) == threads.SPIN["GOMP_SPINCOUNT"]


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="CpuShare reads Linux's /proc/stat")
def test_cpu_share_sees_another_program():
    share = threads.CpuShare()
    time.sleep(0.5)
    quiet = share.others()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # started
        share.others()
        time.sleep(1.0)
        loaded = share.others()
    finally:
        busy.kill()
        busy.wait()
    assert loaded > quiet and loaded > 0.7  # one busy loop keeps one core busy
    assert threads.busy_note(loaded, threads.LONG, 2, 1) is not None


def test_busy_note():
    long = threads.LONG
    assert threads.busy_note(None, long, 2, 1) is None
    assert threads.busy_note(threads.BUSY / 2, long, 2, 1) is None
    assert threads.busy_note(1.8, long / 2, 2, 1) is None  # a short epoch is not judged
    note = threads.busy_note(1.8, long, 2, 3)
    assert "epoch 3" in note and "--threads 1" in note and "docs/performance.md" in note
    assert "--threads" not in threads.busy_note(1.8, long, 1, 3)  # already on one thread: nothing to suggest


def test_a_run_beside_a_busy_program_says_so_once(tmp_path, monkeypatch, capsys):
    """train.py, with the measure saying that other programs hold 1.5 cores and every epoch counted as long."""
    import train
    for split in ("train", "test"):
        for name, value in (("light", 200), ("dark", 20)):
            (tmp_path / "ds" / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (16, 16), (value + i,) * 3).save(tmp_path / "ds" / split / name / f"{i}.png")
    monkeypatch.setattr(threads.CpuShare, "others", lambda self: 1.5)
    monkeypatch.setattr(threads, "LONG", 0.0)
    train.main(["--data", str(tmp_path / "ds"), "--out-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache"),
                "--device", "cpu", "--image-size", "16", "--patch-size", "4", "--num-layers", "1", "--epochs", "2"])
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: other programs")]
    assert notes == [threads.busy_note(1.5, 0.0, torch.get_num_threads(), 1)]  # after epoch 1, not again
