"""Files written atomically, the background checkpoint writer (what it writes is what was saved, and its errors
are not lost), and the training state a checkpoint keeps for --resume."""
import io
import os
import shlex
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from vit import UserError
import vit.checkpoint
import vit.files
from vit.checkpoint import (TRAINING_STATE, CheckpointWriter, check_run_files, cpu_copy, load_checkpoint,
                            model_checkpoint, open_run, restore_training, training_checkpoint)
from vit.files import replace_atomically, save_atomically, write_text
from vit.plots import save_figure
from vit.settings import Settings, as_data
from vit.weights import build_model

SETTINGS = Settings(data="/data", pretrained=None, freeze=False, model="vit_ti_16", image_size=16, patch_size=8,
                    num_layers=1, stem="patch", epochs=10, batch_size=2, lr=1e-3, weight_decay=0.05, warmup_epochs=2,
                    label_smoothing=0.1, drop_path=0.0, trivial_augment=0.0, mixup=0.0, clip_grad=1.0, name="run")


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_checkpoint_holds_the_values_at_save(tmp_path):
    """From a GPU the copy goes to pinned memory without waiting: the file must still hold the values at save(),
    neither a half-finished copy nor the update the GPU makes next."""
    big = torch.randn(64, 1024, 1024, device="cuda")  # 256 MB: its copy is still running when the update is queued
    expected = big.cpu()
    writer = CheckpointWriter()
    writer.save({"w": big, "step": torch.tensor(3.0, device="cuda")}, tmp_path / "last.pt")
    big.mul_(2)
    writer.close()
    saved = torch.load(tmp_path / "last.pt")
    assert saved["w"].equal(expected) and saved["step"].item() == 3.0 and big.cpu().equal(expected * 2)


def test_a_tensor_refused_pinned_memory_gets_a_plain_copy(monkeypatch):
    """Where pinned memory cannot be had (scarce under WSL), a GPU tensor is copied the plain way, complete on
    return, instead of failing the checkpoint (here a CPU tensor that says it is on CUDA)."""
    class OnCuda(torch.Tensor):
        is_cuda = True

    def refused(*args, **kwargs):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(torch, "empty_like", refused)
    weights, devices = torch.arange(6.0).as_subclass(OnCuda), set()
    copy = cpu_copy({"w": weights}, devices)
    weights += 1
    assert copy["w"].equal(torch.arange(6.0)) and devices == set()  # nothing to wait for


def test_write_error_is_raised_by_close(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    writer = CheckpointWriter()
    writer.save({"w": torch.zeros(3)}, tmp_path / "file" / "last.pt")
    with pytest.raises(UserError, match=f"^{tmp_path / 'file' / 'last.pt'}: cannot write"):
        writer.close()
    writer.close()  # reported once


def test_a_figure_interrupted_mid_write_leaves_the_old_one_whole(tmp_path, monkeypatch):
    path = tmp_path / "curves.png"
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    save_figure(fig, path)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")

    def killed(self, fname, **kwargs):  # half a file, then Ctrl-C
        Path(fname).write_bytes(before[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", killed)
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["curves.png"]  # no temporary file left


def test_text_files_keep_their_line_endings(tmp_path):
    write_text(tmp_path / "sub" / "predictions.csv", "image,class_1\r\na.jpg,pizza\r\n")
    assert (tmp_path / "sub" / "predictions.csv").read_bytes() == b"image,class_1\r\na.jpg,pizza\r\n"


def test_a_full_disk_is_one_clear_error_and_leaves_no_temporary_file(tmp_path):
    def no_room(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match=f"^{tmp_path / 'm.json'}: cannot write \\(No space left on device\\); check"):
        replace_atomically(tmp_path / "m.json", no_room)
    assert os.listdir(tmp_path) == []


def test_a_full_disk_while_saving_a_checkpoint_is_one_clear_error(tmp_path, monkeypatch):
    """torch.save writes through an open file, whose OSError reaches the user as one line (given a file name,
    torch.save reported a full disk as "RuntimeError: [enforce fail at inline_container.cc...] unexpected pos")."""
    class Full(io.FileIO):
        def write(self, data):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(vit.files, "open", lambda path, mode: Full(path, mode), raising=False)
    with pytest.raises(UserError, match=f"^{tmp_path / 'last.pt'}: cannot write \\(No space left on device\\)"):
        save_atomically({"w": torch.zeros(1000)}, tmp_path / "last.pt")
    assert os.listdir(tmp_path) == []


def test_ctrl_c_while_torch_save_writes_is_a_keyboard_interrupt(tmp_path, monkeypatch):
    """Ctrl-C in the middle of torch.save made its zip writer fail as it unwound ("RuntimeError: [enforce fail at
    inline_container.cc] unexpected pos"), which hid the interruption from the scripts' one-line handling."""
    class Interrupted(io.FileIO):
        hit = False

        def write(self, data):
            if not Interrupted.hit and self.tell() > 1000:
                Interrupted.hit = True
                raise KeyboardInterrupt
            return super().write(data)

    monkeypatch.setattr(vit.files, "open", lambda path, mode: Interrupted(path, mode), raising=False)
    with pytest.raises(KeyboardInterrupt):
        save_atomically({"w": torch.zeros(10_000)}, tmp_path / "cache.pt")
    assert os.listdir(tmp_path) == []


def test_ctrl_c_while_copying_keeps_the_checkpoint_still_waiting(tmp_path, monkeypatch):
    """While the disk lags, a newer save replaces a copy still waiting; Ctrl-C during the newer one's copy left
    neither, so the file on disk was older than the epoch train.py said it had saved."""
    import threading
    release, real_save = threading.Event(), vit.checkpoint.save_atomically
    monkeypatch.setattr(vit.checkpoint, "save_atomically", lambda obj, path: release.wait() and real_save(obj, path))
    writer = CheckpointWriter()
    writer.save({"epoch": 1}, tmp_path / "last.pt")  # being written (held back by the event)
    writer.save({"epoch": 2}, tmp_path / "last.pt")  # waiting for the writer

    def interrupted(obj, devices=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(vit.checkpoint, "cpu_copy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.save({"epoch": 3}, tmp_path / "last.pt")
    release.set()
    writer.close()
    assert torch.load(tmp_path / "last.pt")["epoch"] == 2


def test_resuming_restores_the_optimiser_schedule_and_gradient_scaler(tmp_path):
    """What --resume needs to go on as if never stopped: the fp16 gradient scaler's scale too (CUDA without bf16;
    its CPU kind here)."""
    from vit.optim import adamw_warmup_cosine
    from vit.weights import build_model
    model = build_model("vit_ti_16", num_classes=2, image_size=16, patch_size=8, num_layers=1)
    optimizer, scheduler = adamw_warmup_cosine(model, 1e-3, 0.05, warmup=2, total=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(model(torch.randn(2, 3, 16, 16)).sum()).backward()
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    scaler.update(new_scale=256.0)
    objects = dict(optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    save_atomically(training_checkpoint(model, objects, dict(epoch=3, metrics=[{"epoch": 3}], best_acc=0.5),
                                        SETTINGS, commit=None), tmp_path / "run.pt")
    fresh_optimizer, fresh_scheduler = adamw_warmup_cosine(model, 1e-3, 0.05, warmup=2, total=10)
    fresh_scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ckpt = torch.load(tmp_path / "run.pt", weights_only=True)
    fresh = dict(optimizer=fresh_optimizer, scheduler=fresh_scheduler, scaler=fresh_scaler)
    assert restore_training(ckpt, fresh) == ([{"epoch": 3}], 0.5, 3)
    assert Settings(**ckpt["settings"]) == SETTINGS  # plain data in the file, the same settings back
    assert fresh_scheduler.last_epoch == 3 and fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert fresh_optimizer.state_dict()["state"][0]["step"] == 3 and fresh_scaler.get_scale() == 256.0


def test_run_file_refusals_suggest_flags_a_shell_reads_back(tmp_path):
    """The --resume / --pretrained that check_run_files suggests, pasted into a shell, name the file even where its
    path holds a space (unquoted, `--resume my runs/models/run.pt` resumes `my`)."""
    models = tmp_path / "my runs" / "models"
    models.mkdir(parents=True)
    last, best, earlier, moved = (models / name for name in ("run.pt", "run-best.pt", "epoch1.pt", "moved.pt"))
    for path in (last, earlier):
        path.write_bytes(b"x")
    for resume, flags in ((None, {"--resume": last}), (earlier, {"--pretrained": earlier})):
        with pytest.raises(UserError) as e:
            check_run_files(last, best, resume)
        for flag, path in flags.items():
            assert shlex.split(str(e.value).split(f" {flag} ")[1])[0] == str(path), str(e.value)
    assert shlex.split(str(e.value).split("; resume ")[1])[0] == str(last) + ","  # the file to resume instead
    last.unlink()
    with pytest.raises(UserError) as e:
        check_run_files(last, best, moved)
    assert shlex.split(str(e.value).split(" --pretrained ")[1]) == [str(moved)]


def test_resume_and_load_refusals_suggest_flags_a_shell_reads_back(tmp_path):
    """open_run's and load_checkpoint's suggested --pretrained / --resume, pasted into a shell, name the file where
    its path holds a space; a checkpoint missing part of a run's training state is refused naming that part."""
    path = tmp_path / "my runs" / "models" / "run.pt"
    path.parent.mkdir(parents=True)
    model = model_checkpoint(build_model("vit_ti_16", num_classes=2, image_size=16, patch_size=8, num_layers=1))
    run = {**model, **dict.fromkeys(TRAINING_STATE, 0), "settings": as_data(SETTINGS)}
    for ckpt, missing in ((model, ", ".join(TRAINING_STATE) + ", settings"),
                          ({k: v for k, v in run.items() if k != "scheduler"}, "scheduler")):
        save_atomically(ckpt, path)
        with pytest.raises(UserError) as e:
            open_run(path)
        assert f"training state that --resume continues ({missing} missing)" in str(e.value), str(e.value)
        assert shlex.split(str(e.value).split(" --pretrained ")[1]) == [str(path)], str(e.value)
    save_atomically(run, path)
    assert open_run(path)[1] == SETTINGS
    torch.save({"weight": torch.zeros(1)}, path)  # plain weights, not a checkpoint
    with pytest.raises(UserError) as e:
        load_checkpoint(path)
    assert shlex.split(str(e.value).split(" --pretrained ")[1])[0] == str(path), str(e.value)
